//! IPv4 and IPv6 fragments a client transmits, checked as the datagram they make up.
//!
//! A filter sees a fragment's headers only (a later fragment has no ports), so the driver never
//! judges fragments one by one. Each queue has a [`TxGatherer`]: the fragments it transmits are
//! copied into driver-private memory and held, without a completion, until their datagram is
//! whole. The whole datagram is then rebuilt and put through the queue's transmit check
//! ([`super::tx::check`]); if it passes, the fragments themselves go on the wire, exactly as
//! held; otherwise none of them does and every one is completed with the datagram's reason.
//! All or none.
//!
//! The rebuilt datagram is what the receiver reassembles:
//! - IPv4 (RFC 791), keyed by source, destination, protocol and identification: the first
//!   fragment's link and IP headers with the total length set, MF and the offset cleared and
//!   the header checksum filled, followed by every fragment's data;
//! - IPv6 (RFC 8200), keyed by source, destination and the 32-bit identification: the first
//!   fragment's link headers and unfragmentable part (the fixed header and the extension
//!   headers before the Fragment header) with the Fragment header removed, the next-header
//!   byte that named it set to the Fragment header's next header, and the payload length
//!   fixed, followed by every fragment's data. An atomic fragment (offset 0, M clear; RFC 6946)
//!   is a whole datagram on its own: it is checked at once, without being held and without
//!   touching a datagram being gathered under the same identification.
//!
//! Guarantees, each tested:
//! - memory: a queue holds at most [`MAX_HELD_BYTES`] of fragments (both families together)
//!   in at most [`MAX_DATAGRAMS`] datagrams of at most [`MAX_FRAGMENTS_PER_DATAGRAM`]
//!   fragments; a fragment that would exceed a limit is rejected with its whole datagram (and
//!   counted as `fragment`);
//! - time: a datagram not whole within [`GATHER_TIMEOUT`] of its first fragment is rejected
//!   whole (new fragments do not extend the time);
//! - consistency: fragments whose data overlap (RFC 5722), that claim a second last fragment,
//!   that reach past 65,535 bytes (the IPv4 total length, or the IPv6 payload length: the
//!   unfragmentable extension headers and the data), whose data (except the last's) is not a
//!   multiple of 8 bytes, or whose link headers (MACs, VLAN tags) differ from the first one's
//!   reject the whole datagram: what was checked is what goes out. IPv6 fragments must also
//!   repeat the first one's unfragmentable part (all but its payload length) and Fragment
//!   header next-header value, and the first fragment must hold the whole header chain up to
//!   the upper-layer header (RFC 7112), as a receiver requires;
//! - every fragment taken from the ring gets exactly one completion.

use netmux_proto::driver::QueueId;
use netmux_proto::ops::{CaptureSource, FrameDirection, RuleDirection};
use netmux_ring::TxStatus;
use netmux_wire::ethernet::{ethertype, link_layer};
use netmux_wire::ip::{holds_header_chain, is_fragment};
use netmux_wire::ipv4::{self, Ipv4Packet};
use netmux_wire::ipv6;

use super::instances::{Route, Target};
use super::{send_frames, tx, Offer, Unsent, LINK_BUSY_RETRIES};
use crate::reassembly::parse::{self as reassembly_parse, Parsed};

/// Bytes of fragments (whole frames) one queue may hold: almost three of the largest IPv4 or
/// IPv6 datagrams with their per-fragment headers (about 68 KB each on a 1,500-byte MTU), so a
/// client sending at full speed never waits on itself, while 1,024 queues hold at most 192 MiB
/// at once.
pub const MAX_HELD_BYTES: usize = 192 * 1024;
/// Datagrams one queue may be gathering at once.
pub const MAX_DATAGRAMS: usize = 16;
/// Fragments of one datagram: OpenBSD's reassembly limit, as on the receive path.
pub const MAX_FRAGMENTS_PER_DATAGRAM: usize = 64;
/// How long a datagram's fragments may take to arrive, from the first one (ns). A stack sends
/// a datagram's fragments back to back; anything slower is holding driver memory.
pub const GATHER_TIMEOUT_NS: u64 = 2_000_000_000;
/// [`GATHER_TIMEOUT_NS`] as a duration, for the documentation.
pub const GATHER_TIMEOUT: std::time::Duration = std::time::Duration::from_nanos(GATHER_TIMEOUT_NS);
/// The largest IPv4 total length and IPv6 payload length: both are 16-bit fields.
const MAX_LEN_FIELD: usize = 65_535;

/// A fragment held: its ring tag and the private copy of its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldFragment {
    /// The tag `take_tx` gave it (its completion's sequence number).
    pub tag: u64,
    /// The frame, exactly as it will go on the wire.
    pub frame: Vec<u8>,
    /// Offset of its data in the datagram, in bytes.
    offset: usize,
    /// Bytes of data it carries.
    data_len: usize,
    /// Whether it is the last fragment (MF or M clear).
    last: bool,
    /// Where its IP header starts (after Ethernet and VLAN tags).
    l3: usize,
    /// Where the headers the rebuilt datagram keeps end: the end of the IPv4 header, or where
    /// the IPv6 Fragment header starts.
    header_end: usize,
    /// Where its data starts in the frame.
    data_at: usize,
    /// What the family needs to rebuild the datagram.
    family: Family,
}

/// How a datagram is rebuilt from its first fragment's headers, by family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6 {
        /// Offset in the frame of the next-header byte that names the Fragment header.
        next_header_at: usize,
        /// The Fragment header's next-header value: the first header of the fragmentable part.
        next_header: u8,
    },
}

impl HeldFragment {
    /// Bytes that count against the 16-bit length field besides the data: the IPv4 header,
    /// or the IPv6 unfragmentable extension headers (the payload length excludes the fixed
    /// header).
    fn length_overhead(&self) -> usize {
        let headers = self.header_end - self.l3;
        match self.family {
            Family::V4 => headers,
            Family::V6 { .. } => headers.saturating_sub(ipv6::HEADER_LEN),
        }
    }

    /// The fragment's data.
    fn data(&self) -> &[u8] {
        self.frame
            .get(self.data_at..self.data_at + self.data_len)
            .unwrap_or(&[])
    }

    /// Whether `other` carries the same headers where a datagram's fragments must agree:
    /// the link headers (both families), and for IPv6 the unfragmentable part but its payload
    /// length and the Fragment header's next-header value.
    fn same_headers(&self, other: &HeldFragment) -> bool {
        match (self.family, other.family) {
            (Family::V4, Family::V4) => self.frame.get(..self.l3) == other.frame.get(..other.l3),
            (
                Family::V6 {
                    next_header_at: a_at,
                    next_header: a_nh,
                },
                Family::V6 {
                    next_header_at: b_at,
                    next_header: b_nh,
                },
            ) => {
                let length = self.l3 + 4..self.l3 + 6;
                let (Some(a), Some(b)) = (
                    self.frame.get(..self.header_end),
                    other.frame.get(..other.header_end),
                ) else {
                    return false;
                };
                a_at == b_at
                    && a_nh == b_nh
                    && self.l3 == other.l3
                    && a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .enumerate()
                        .all(|(i, (x, y))| x == y || length.contains(&i))
            }
            _ => false,
        }
    }
}

/// What identifies a datagram's fragments: source, destination, protocol and identification
/// for IPv4 (RFC 791); source, destination and identification for IPv6 (RFC 8200: the
/// next-header value may differ between fragments, so it is not part of the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DatagramKey {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        protocol: u8,
        ident: u16,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        ident: u32,
    },
}

#[derive(Debug)]
struct Datagram {
    key: DatagramKey,
    first_seen_ns: u64,
    fragments: Vec<HeldFragment>,
}

/// What became of a fragment pushed into a [`TxGatherer`].
#[derive(Debug, PartialEq, Eq)]
pub enum Gathered {
    /// Held until its datagram is whole: no completion yet.
    Held,
    /// Its datagram is whole: the rebuilt datagram (what the check runs on) and every
    /// fragment, this one included, in order of offset (what goes on the wire).
    Whole {
        /// The datagram as one frame: the first fragment's headers and all the data.
        datagram: Vec<u8>,
        /// The fragments, in order of offset.
        fragments: Vec<HeldFragment>,
    },
    /// The fragment cannot be part of a checked datagram: it is rejected, and so are the
    /// fragments of its datagram held earlier (`released`).
    Rejected {
        /// Fragments held earlier that are rejected with it.
        released: Vec<HeldFragment>,
    },
}

/// One queue's fragments in the making. See the module documentation.
#[derive(Debug, Default)]
pub struct TxGatherer {
    datagrams: Vec<Datagram>,
    held_bytes: usize,
}

/// A fragment as parsed: where it belongs and what it is.
enum ParsedFragment {
    /// A fragment of the datagram `key`; `upper` is the IPv6 fragmentable part's first header.
    Fragment {
        key: DatagramKey,
        fragment: HeldFragment,
        upper: Option<u8>,
    },
    /// An IPv6 atomic fragment: a whole datagram on its own.
    Atomic(HeldFragment),
}

/// The parts of an IPv4 or IPv6 fragment the gatherer needs; `None` when it is neither an
/// untruncated IPv4 fragment nor an IPv6 packet with a Fragment header the reassembler would
/// take.
fn parse(tag: u64, frame: &[u8]) -> Option<ParsedFragment> {
    let link = link_layer(frame)?;
    match link.ethertype {
        ethertype::IPV4 => {
            let ip = Ipv4Packet::new_checked(frame.get(link.l3..)?).ok()?;
            if !ip.is_fragment() {
                return None;
            }
            let key = DatagramKey::V4 {
                src: ip.src(),
                dst: ip.dst(),
                protocol: ip.protocol(),
                ident: ip.ident(),
            };
            let header_end = link.l3 + ip.header_len();
            let fragment = HeldFragment {
                tag,
                frame: frame.to_vec(),
                offset: ip.frag_offset() as usize,
                data_len: ip.payload().len(),
                last: !ip.more_frags(),
                l3: link.l3,
                header_end,
                data_at: header_end,
                family: Family::V4,
            };
            Some(ParsedFragment::Fragment {
                key,
                fragment,
                upper: None,
            })
        }
        ethertype::IPV6 => match reassembly_parse::parse(frame) {
            Parsed::Fragment(f) => {
                let reassembly_parse::Family::V6 {
                    next_header_at,
                    next_header,
                } = f.family
                else {
                    return None;
                };
                let l3 = usize::from(f.l3);
                let ip = frame.get(l3..)?;
                let header_end = f.header.len();
                let ident = frame.get(header_end + 4..header_end + 8)?;
                let key = DatagramKey::V6 {
                    src: ip.get(8..24)?.try_into().ok()?,
                    dst: ip.get(24..40)?.try_into().ok()?,
                    ident: u32::from_be_bytes(ident.try_into().ok()?),
                };
                let fragment = HeldFragment {
                    tag,
                    frame: frame.to_vec(),
                    offset: f.offset as usize,
                    data_len: f.data.len(),
                    last: !f.more,
                    l3,
                    header_end,
                    data_at: header_end + ipv6::FRAGMENT_HEADER_LEN,
                    family: Family::V6 {
                        next_header_at: usize::from(next_header_at),
                        next_header,
                    },
                };
                Some(ParsedFragment::Fragment {
                    key,
                    fragment,
                    upper: Some(f.upper),
                })
            }
            Parsed::Atomic {
                fragment_header_at,
                end,
                next_header_at,
                next_header,
                l3,
            } => {
                let data_at = fragment_header_at + ipv6::FRAGMENT_HEADER_LEN;
                Some(ParsedFragment::Atomic(HeldFragment {
                    tag,
                    frame: frame.to_vec(),
                    offset: 0,
                    data_len: end.checked_sub(data_at)?,
                    last: true,
                    l3,
                    header_end: fragment_header_at,
                    data_at,
                    family: Family::V6 {
                        next_header_at,
                        next_header,
                    },
                }))
            }
            Parsed::Whole | Parsed::Malformed => None,
        },
        _ => None,
    }
}

impl TxGatherer {
    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Bytes held.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Takes in a fragment the queue transmitted (`tag` is its ring tag) at `now_ns`.
    pub fn push(&mut self, tag: u64, frame: &[u8], now_ns: u64) -> Gathered {
        let (key, fragment, upper) = match parse(tag, frame) {
            None => {
                return Gathered::Rejected {
                    released: Vec::new(),
                }
            }
            Some(ParsedFragment::Atomic(fragment)) => {
                // Whole on its own: never held, never joined to a datagram being gathered.
                let fragments = vec![fragment];
                return match rebuild(&fragments) {
                    Some(datagram) => Gathered::Whole {
                        datagram,
                        fragments,
                    },
                    None => Gathered::Rejected {
                        released: Vec::new(),
                    },
                };
            }
            Some(ParsedFragment::Fragment {
                key,
                fragment,
                upper,
            }) => (key, fragment, upper),
        };
        let index = match self.datagrams.iter().position(|d| d.key == key) {
            Some(i) => i,
            None => {
                if self.datagrams.len() >= MAX_DATAGRAMS {
                    return Gathered::Rejected {
                        released: Vec::new(),
                    };
                }
                self.datagrams.push(Datagram {
                    key,
                    first_seen_ns: now_ns,
                    fragments: Vec::new(),
                });
                self.datagrams.len() - 1
            }
        };
        if !self.fits(index, &fragment, upper) {
            return Gathered::Rejected {
                released: self.remove(index),
            };
        }
        self.held_bytes += fragment.frame.len();
        let datagram = &mut self.datagrams[index];
        datagram.fragments.push(fragment);
        datagram.fragments.sort_unstable_by_key(|f| f.offset);
        let fragments = &datagram.fragments;
        let complete = fragments.last().is_some_and(|f| f.last)
            && fragments.first().is_some_and(|f| f.offset == 0)
            && fragments
                .windows(2)
                .all(|w| w[0].offset + w[0].data_len == w[1].offset);
        if !complete {
            return Gathered::Held;
        }
        let fragments = self.remove(index);
        match rebuild(&fragments) {
            Some(datagram) => Gathered::Whole {
                datagram,
                fragments,
            },
            None => Gathered::Rejected {
                released: fragments,
            },
        }
    }

    /// Whether `fragment` may join datagram `index` (see the module documentation); `upper`
    /// is its IPv6 fragmentable part's first header.
    fn fits(&self, index: usize, fragment: &HeldFragment, upper: Option<u8>) -> bool {
        let datagram = &self.datagrams[index];
        let end = fragment.offset + fragment.data_len;
        if self.held_bytes + fragment.frame.len() > MAX_HELD_BYTES
            || datagram.fragments.len() >= MAX_FRAGMENTS_PER_DATAGRAM
            || fragment.length_overhead() + end > MAX_LEN_FIELD
            || (!fragment.last && (fragment.data_len == 0 || !fragment.data_len.is_multiple_of(8)))
        {
            return false;
        }
        if let (Family::V6 { .. }, 0, Some(upper)) = (fragment.family, fragment.offset, upper) {
            // RFC 7112: the first fragment holds the whole header chain.
            if !holds_header_chain(true, upper, fragment.data()) {
                return false;
            }
        }
        datagram.fragments.iter().all(|held| {
            let overlaps = fragment.offset < held.offset + held.data_len && held.offset < end;
            let second_last = held.last && fragment.last;
            let past_last = (held.last && end > held.offset + held.data_len)
                || (fragment.last && held.offset + held.data_len > end);
            !(overlaps || !held.same_headers(fragment) || second_last || past_last)
        })
    }

    /// Removes datagram `index`, returning its fragments.
    fn remove(&mut self, index: usize) -> Vec<HeldFragment> {
        let datagram = self.datagrams.swap_remove(index);
        let bytes: usize = datagram.fragments.iter().map(|f| f.frame.len()).sum();
        self.held_bytes -= bytes;
        datagram.fragments
    }

    /// The fragments of datagrams whose first fragment came [`GATHER_TIMEOUT_NS`] or more
    /// before `now_ns`: they are rejected.
    pub fn expire(&mut self, now_ns: u64) -> Vec<HeldFragment> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.datagrams.len() {
            if now_ns.saturating_sub(self.datagrams[i].first_seen_ns) >= GATHER_TIMEOUT_NS {
                out.extend(self.remove(i));
            } else {
                i += 1;
            }
        }
        out
    }
}

/// The datagram the fragments (complete, in order of offset) make up (see the module
/// documentation); `None` when it cannot be one (an IPv6 datagram that would still hold a
/// Fragment header, which no sender makes and no check may see).
fn rebuild(fragments: &[HeldFragment]) -> Option<Vec<u8>> {
    let first = fragments.first()?;
    let data: usize = fragments.iter().map(|f| f.data_len).sum();
    let mut out = Vec::with_capacity(first.header_end + data);
    out.extend_from_slice(first.frame.get(..first.header_end)?);
    for f in fragments {
        out.extend_from_slice(f.frame.get(f.data_at..f.data_at + f.data_len)?);
    }
    match first.family {
        Family::V4 => {
            let ihl = first.header_end - first.l3;
            let total = u16::try_from(ihl + data).ok()?;
            let mut ip = Ipv4Packet::new_checked(out.get_mut(first.l3..)?).ok()?;
            ip.set_total_len(total);
            let df = ip.flags_offset() & ipv4::FLAG_DF;
            ip.set_flags_offset(df);
            ip.fill_checksum();
        }
        Family::V6 {
            next_header_at,
            next_header,
        } => {
            let payload = u16::try_from(first.length_overhead() + data).ok()?;
            *out.get_mut(next_header_at)? = next_header;
            out.get_mut(first.l3 + 4..first.l3 + 6)?
                .copy_from_slice(&payload.to_be_bytes());
            if is_fragment(&out) {
                return None;
            }
        }
    }
    Some(out)
}

impl super::Driver {
    /// Settles a queue's gathered fragments after a transmit turn: each whole datagram is
    /// checked and its fragments sent or rejected together; fragments of refused or expired
    /// datagrams are completed as rejected. Counts, completes and publishes like the batch.
    pub(super) fn settle_fragments(
        &mut self,
        id: QueueId,
        wholes: Vec<(Vec<u8>, Vec<HeldFragment>)>,
        released: Vec<HeldFragment>,
    ) {
        let Some(queue) = self.queues.get_mut(&id) else {
            return;
        };
        let sender = queue.instance;
        let sender_id = self.instances.get(sender).map(|i| i.id).unwrap_or_default();
        // (fragment, status), in the order they are completed.
        let mut done: Vec<(HeldFragment, TxStatus)> = released
            .into_iter()
            .map(|f| (f, TxStatus::RejectedFragment))
            .collect();
        let mut local: Vec<(Vec<u8>, Target)> = Vec::new();
        let mut observed: Vec<Vec<u8>> = Vec::new();
        // Fragments that went out, for the captures.
        let mut captured: Vec<(Vec<u8>, bool)> = Vec::new();
        for (datagram, fragments) in wholes {
            let mut status = tx::check(&datagram, &queue.tx_filters, &queue.mac, &mut self.scratch);
            // The admin firewall judges the whole datagram, as the client's own check does.
            if status.is_sent()
                && self.firewall.has_out()
                && self.firewall.blocks(
                    RuleDirection::Out,
                    sender_id,
                    id,
                    &datagram,
                    &mut self.scratch,
                )
            {
                status = TxStatus::RejectedByFirewall;
            }
            if !status.is_sent() {
                done.extend(fragments.into_iter().map(|f| (f, status)));
                continue;
            }
            let route = self.instances.route(&datagram, sender);
            let to_link = !matches!(route, Route::Local(_));
            let mut status = TxStatus::Sent;
            // Fragments the busy link did not take: held for the queue's next turn.
            let mut waiting = Vec::new();
            if to_link {
                let frames: Vec<&[u8]> = fragments.iter().map(|f| f.frame.as_slice()).collect();
                let offer = if queue.link_held.is_empty() {
                    send_frames(self.link.as_mut(), &frames, LINK_BUSY_RETRIES)
                } else {
                    // Behind frames that wait for the link already: in order, after them.
                    Offer {
                        taken: 0,
                        rest: Unsent::Busy,
                    }
                };
                if offer.taken < frames.len() {
                    match offer.rest {
                        Unsent::Busy => waiting = (offer.taken..frames.len()).collect(),
                        // Some fragments went out: the datagram is lost either way, and the
                        // client learns it from the first one that did not.
                        rest => status = rest.status(),
                    }
                }
            }
            if status.is_sent() {
                match route {
                    Route::Link => {}
                    Route::Local(slot) => local.push((datagram.clone(), Target::One(slot))),
                    Route::LinkAndOthers => {
                        local.push((datagram.clone(), Target::EveryBut(sender)))
                    }
                }
                if !self.captures.is_empty() {
                    captured.extend(fragments.iter().map(|f| (f.frame.clone(), to_link)));
                }
                if to_link {
                    observed.push(datagram);
                }
            }
            if !waiting.is_empty() {
                queue.tx.link_busy += 1;
            }
            for (i, f) in fragments.into_iter().enumerate() {
                if waiting.contains(&i) {
                    queue.link_held.push_back(super::LinkHeld {
                        tag: f.tag,
                        frame: f.frame,
                        seen: true,
                    });
                } else {
                    done.push((f, status));
                }
            }
        }
        let mut faulted = false;
        let mut sent_frames = 0u64;
        let mut sent_bytes = 0u64;
        for (fragment, status) in &done {
            let len = fragment.frame.len();
            queue.tx.record(*status, len);
            self.tx.record(*status, len);
            if status.is_sent() {
                sent_frames += 1;
                sent_bytes += len as u64;
            }
            let len = u32::try_from(len).unwrap_or(u32::MAX);
            if queue.ring.complete(fragment.tag, *status, len).is_err() {
                faulted = true;
                break;
            }
        }
        queue.ring.flush();
        if faulted {
            tracing::warn!(queue = id.0, "closing queue after a ring fault");
            queue.ring.close();
        }
        if let Some(instance) = self.instances.get_mut(sender) {
            instance.counters.tx_frames += sent_frames;
            instance.counters.tx_bytes += sent_bytes;
        }
        for (frame, on_link) in &captured {
            self.capture(CaptureSource::Queue(id), FrameDirection::Out, frame);
            if *on_link {
                self.capture(CaptureSource::Link, FrameDirection::Out, frame);
            }
        }
        for datagram in &observed {
            self.observe(datagram, id, sender);
        }
        for (datagram, to) in &local {
            self.rx.hairpin += 1;
            self.deliver_to(datagram, *to);
        }
        self.flush_touched();
    }

    /// Rejects the fragments of every queue's datagrams that timed out (see
    /// [`GATHER_TIMEOUT`]).
    pub(super) fn expire_fragments(&mut self, now_ns: u64) {
        let expired: Vec<(QueueId, Vec<HeldFragment>)> = self
            .queues
            .iter_mut()
            .filter(|(_, q)| !q.fragments.is_empty())
            .map(|(&id, q)| (id, q.fragments.expire(now_ns)))
            .filter(|(_, e)| !e.is_empty())
            .collect();
        for (id, released) in expired {
            self.settle_fragments(id, Vec::new(), released);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reassembly::fragmenter::{fragment, ipv4_fragment, ipv6_fragment};

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    /// A UDP datagram of `data` payload bytes, as one (oversized) frame.
    fn whole(data: usize, ident: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + data];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&MAC);
        f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        f[14] = 0x45;
        let total = (20 + 8 + data) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[18..20].copy_from_slice(&ident.to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&53u16.to_be_bytes());
        f[36..38].copy_from_slice(&4000u16.to_be_bytes());
        f[38..40].copy_from_slice(&((8 + data) as u16).to_be_bytes());
        for (i, b) in f[42..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut ip = Ipv4Packet::new_checked(&mut f[14..]).unwrap();
        ip.fill_checksum();
        f
    }

    fn push_all(g: &mut TxGatherer, frames: &[Vec<u8>], first_tag: u64) -> Vec<Gathered> {
        frames
            .iter()
            .enumerate()
            .map(|(i, f)| g.push(first_tag + i as u64, f, 0))
            .collect()
    }

    #[test]
    fn fragments_in_any_order_make_the_datagram_they_came_from() {
        let w = whole(8000, 7);
        let mut parts = fragment(&w, 1480, 0).unwrap();
        assert_eq!(parts.len(), 6);
        parts.swap(0, 4);
        let mut g = TxGatherer::default();
        let out = push_all(&mut g, &parts, 10);
        assert!(out[..5].iter().all(|o| *o == Gathered::Held));
        let Gathered::Whole {
            datagram,
            fragments,
        } = &out[5]
        else {
            panic!("not whole: {:?}", out[5]);
        };
        assert_eq!(datagram, &w, "the rebuilt datagram is the original");
        let tags: Vec<u64> = fragments.iter().map(|f| f.tag).collect();
        assert_eq!(tags, vec![14, 11, 12, 13, 10, 15], "in order of offset");
        assert!(g.is_empty() && g.held_bytes() == 0);
    }

    #[test]
    fn overlapping_fragments_reject_the_whole_datagram() {
        let w = whole(3000, 1);
        let parts = fragment(&w, 1480, 0).unwrap();
        let mut g = TxGatherer::default();
        assert_eq!(g.push(1, &parts[0], 0), Gathered::Held);
        // Data at offset 8: inside the first fragment's.
        let overlap = ipv4_fragment(&w, 8, true, &[0; 16]).unwrap();
        let Gathered::Rejected { released } = g.push(2, &overlap, 0) else {
            panic!("an overlap is refused");
        };
        assert_eq!(released.iter().map(|f| f.tag).collect::<Vec<_>>(), vec![1]);
        assert!(g.is_empty() && g.held_bytes() == 0);
    }

    #[test]
    fn a_fragment_with_other_link_headers_rejects_the_whole_datagram() {
        let w = whole(3000, 1);
        let mut parts = fragment(&w, 1480, 0).unwrap();
        parts[1][6] ^= 0x04; // another source MAC on the second fragment
        let mut g = TxGatherer::default();
        assert_eq!(g.push(1, &parts[0], 0), Gathered::Held);
        assert!(
            matches!(g.push(2, &parts[1], 0), Gathered::Rejected { released } if released.len() == 1)
        );
    }

    #[test]
    fn a_datagram_not_whole_in_time_is_rejected_and_new_fragments_do_not_extend_it() {
        let w = whole(4000, 3);
        let parts = fragment(&w, 1480, 0).unwrap();
        let mut g = TxGatherer::default();
        assert_eq!(g.push(1, &parts[0], 0), Gathered::Held);
        assert_eq!(g.push(2, &parts[1], GATHER_TIMEOUT_NS - 1), Gathered::Held);
        assert!(g.expire(GATHER_TIMEOUT_NS - 1).is_empty());
        let expired = g.expire(GATHER_TIMEOUT_NS);
        assert_eq!(
            expired.iter().map(|f| f.tag).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(g.is_empty() && g.held_bytes() == 0);
    }

    #[test]
    fn a_queue_cannot_hold_more_than_its_budget() {
        let mut g = TxGatherer::default();
        let mut ident = 0;
        let mut rejected = 0;
        // First fragments of many datagrams, never completed.
        for _ in 0..(MAX_DATAGRAMS * 4) {
            ident += 1;
            let parts = fragment(&whole(60_000, ident), 1480, 0).unwrap();
            for (i, p) in parts.iter().take(parts.len() - 1).enumerate() {
                if let Gathered::Rejected { .. } = g.push(i as u64, p, 0) {
                    rejected += 1;
                    break;
                }
            }
            assert!(g.held_bytes() <= MAX_HELD_BYTES);
            assert!(g.datagrams.len() <= MAX_DATAGRAMS);
        }
        assert!(rejected > 0, "the budget was reached");
    }

    #[test]
    fn fragments_past_the_largest_datagram_or_a_second_last_one_are_refused() {
        let w = whole(2000, 9);
        let header = &w;
        let mut g = TxGatherer::default();
        let far = ipv4_fragment(header, 65_528, true, &[0; 8]).unwrap();
        assert!(matches!(g.push(1, &far, 0), Gathered::Rejected { .. }));
        let mut g = TxGatherer::default();
        let last = ipv4_fragment(header, 1480, false, &[0; 16]).unwrap();
        let other_last = ipv4_fragment(header, 2960, false, &[0; 16]).unwrap();
        assert_eq!(g.push(1, &last, 0), Gathered::Held);
        assert!(
            matches!(g.push(2, &other_last, 0), Gathered::Rejected { released } if released.len() == 1)
        );
        // Not a fragment, or not IPv4 at all: never held.
        let mut g = TxGatherer::default();
        assert!(matches!(g.push(1, &w, 0), Gathered::Rejected { .. }));
        assert!(matches!(
            g.push(1, &[0u8; 10], 0),
            Gathered::Rejected { .. }
        ));
        assert!(g.is_empty());
    }

    /// An IPv6 UDP datagram of `data` payload bytes, as one (oversized) frame; with a Hop-by-Hop
    /// Options header (8 bytes, unfragmentable) when `hop_by_hop`.
    fn whole_v6(data: usize, hop_by_hop: bool) -> Vec<u8> {
        let hbh = if hop_by_hop { 8 } else { 0 };
        let mut f = vec![0u8; 14 + 40 + hbh + 8 + data];
        f[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&MAC);
        f[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        f[14] = 0x60;
        f[18..20].copy_from_slice(&((hbh + 8 + data) as u16).to_be_bytes());
        f[21] = 64;
        f[22..38].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f[38..54].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let udp = 54 + hbh;
        if hop_by_hop {
            f[20] = 0; // Hop-by-Hop Options
            f[54] = 17; // then UDP; length 0 (8 bytes), PadN filling the rest
            f[56] = 1;
            f[57] = 4;
        } else {
            f[20] = 17;
        }
        f[udp..udp + 2].copy_from_slice(&53u16.to_be_bytes());
        f[udp + 2..udp + 4].copy_from_slice(&4000u16.to_be_bytes());
        f[udp + 4..udp + 6].copy_from_slice(&((8 + data) as u16).to_be_bytes());
        for (i, b) in f[udp + 8..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    #[test]
    fn ipv6_fragments_in_any_order_make_the_datagram_they_came_from() {
        for hop_by_hop in [false, true] {
            let w = whole_v6(8000, hop_by_hop);
            let mut parts = fragment(&w, 1232, 0x1234_5678).unwrap();
            assert_eq!(parts.len(), 7);
            parts.swap(0, 5);
            let mut g = TxGatherer::default();
            let out = push_all(&mut g, &parts, 10);
            assert!(out[..6].iter().all(|o| *o == Gathered::Held));
            let Gathered::Whole {
                datagram,
                fragments,
            } = &out[6]
            else {
                panic!("not whole: {:?}", out[6]);
            };
            assert_eq!(
                datagram, &w,
                "the Fragment header is removed and the chain fixed (hop-by-hop {hop_by_hop})"
            );
            assert!(!is_fragment(datagram));
            let tags: Vec<u64> = fragments.iter().map(|f| f.tag).collect();
            assert_eq!(tags, vec![15, 11, 12, 13, 14, 10, 16], "in order of offset");
            assert_eq!(fragments[1].frame, parts[1], "held exactly as sent");
            assert!(g.is_empty() && g.held_bytes() == 0);
        }
    }

    #[test]
    fn fragments_clients_and_netd_make_are_gathered_into_the_datagram_they_came_from() {
        for (w, parts) in [
            (
                whole_v6(8000, true),
                netmux_wire::fragment::fragment_ipv6(whole_v6(8000, true), 1500, 77),
            ),
            (
                whole(8000, 3),
                netmux_wire::fragment::fragment_ipv4(whole(8000, 3), 1500),
            ),
        ] {
            assert!(parts.len() > 1);
            let mut g = TxGatherer::default();
            let out = push_all(&mut g, &parts, 0);
            let last = out.len() - 1;
            assert!(out[..last].iter().all(|o| *o == Gathered::Held));
            assert!(
                matches!(&out[last], Gathered::Whole { datagram, .. } if *datagram == w),
                "{:?}",
                out[last]
            );
        }
    }

    #[test]
    fn ipv6_datagrams_are_told_apart_by_their_32_bit_identification() {
        let w = whole_v6(3000, false);
        // Identifications that agree in their low 16 bits.
        let a = fragment(&w, 1232, 0x0001_0007).unwrap();
        let b = fragment(&w, 1232, 0x0002_0007).unwrap();
        let mut g = TxGatherer::default();
        assert_eq!(g.push(1, &a[0], 0), Gathered::Held);
        assert_eq!(g.push(2, &b[0], 0), Gathered::Held);
        assert_eq!(g.push(3, &a[1], 0), Gathered::Held);
        assert_eq!(g.push(4, &b[1], 0), Gathered::Held);
        assert!(matches!(g.push(5, &a[2], 0), Gathered::Whole { datagram, .. } if datagram == w));
        assert!(matches!(g.push(6, &b[2], 0), Gathered::Whole { datagram, .. } if datagram == w));
        assert!(g.is_empty());
    }

    #[test]
    fn overlapping_ipv6_fragments_reject_the_whole_datagram() {
        let w = whole_v6(3000, false);
        let parts = fragment(&w, 1232, 9).unwrap();
        let mut g = TxGatherer::default();
        assert_eq!(g.push(1, &parts[0], 0), Gathered::Held);
        // Data at offset 8: inside the first fragment's (it would rewrite the ports' neighbours).
        let overlap = ipv6_fragment(&w, 8, true, 9, &[0; 16]).unwrap();
        let Gathered::Rejected { released } = g.push(2, &overlap, 0) else {
            panic!("an overlap is refused");
        };
        assert_eq!(released.iter().map(|f| f.tag).collect::<Vec<_>>(), vec![1]);
        assert!(g.is_empty() && g.held_bytes() == 0);
    }

    #[test]
    fn ipv6_fragments_with_other_headers_than_the_first_reject_the_whole_datagram() {
        let w = whole_v6(3000, true);
        let parts = fragment(&w, 1232, 9).unwrap();
        type Change = fn(&mut Vec<u8>);
        let changes: [(&str, Change); 4] = [
            ("source MAC", |f| f[6] ^= 0x04),
            ("hop limit", |f| f[21] = 1),
            ("hop-by-hop option", |f| f[14 + 40 + 2] = 0x1e),
            // The Fragment header, after the Hop-by-Hop header.
            ("fragment header next header", |f| f[14 + 40 + 8] = 6),
        ];
        for (what, change) in changes {
            let mut other = parts[1].clone();
            change(&mut other);
            let mut g = TxGatherer::default();
            assert_eq!(g.push(1, &parts[0], 0), Gathered::Held);
            assert!(
                matches!(g.push(2, &other, 0), Gathered::Rejected { released } if released.len() == 1),
                "another {what}"
            );
            assert!(g.is_empty() && g.held_bytes() == 0, "{what}");
        }
    }

    #[test]
    fn an_ipv6_atomic_fragment_is_checked_at_once_on_its_own() {
        let w = whole_v6(100, false);
        let atomic = fragment(&w, 1232, 7).unwrap();
        assert_eq!(atomic.len(), 1);
        // A datagram being gathered under the same identification is not touched.
        let big = whole_v6(3000, false);
        let parts = fragment(&big, 1232, 7).unwrap();
        let mut g = TxGatherer::default();
        assert_eq!(g.push(1, &parts[0], 0), Gathered::Held);
        let held = g.held_bytes();
        let Gathered::Whole {
            datagram,
            fragments,
        } = g.push(2, &atomic[0], 0)
        else {
            panic!("an atomic fragment is whole");
        };
        assert_eq!(datagram, w);
        assert_eq!(fragments.len(), 1);
        assert_eq!(fragments[0].frame, atomic[0], "sent as it came");
        assert_eq!(g.held_bytes(), held);
        assert_eq!(g.push(3, &parts[1], 0), Gathered::Held);
        assert!(
            matches!(g.push(4, &parts[2], 0), Gathered::Whole { datagram, .. } if datagram == big)
        );
        // An atomic fragment hiding another Fragment header is no datagram a check may see.
        let nested = fragment(&atomic[0], 1232, 8).unwrap();
        assert!(matches!(
            g.push(5, &nested[0], 0),
            Gathered::Rejected { released } if released.is_empty()
        ));
    }

    #[test]
    fn ipv6_fragments_past_the_largest_payload_misaligned_or_a_second_last_one_are_refused() {
        let w = whole_v6(2000, false);
        let mut g = TxGatherer::default();
        // Ends at 65,536 bytes of payload.
        let far = ipv6_fragment(&w, 65_528, false, 1, &[0; 8]).unwrap();
        assert!(matches!(g.push(1, &far, 0), Gathered::Rejected { .. }));
        // Ends exactly at 65,535 bytes: held.
        let edge = ipv6_fragment(&w, 65_528, false, 1, &[0; 7]).unwrap();
        assert_eq!(g.push(2, &edge, 0), Gathered::Held);
        let mut g = TxGatherer::default();
        let misaligned = ipv6_fragment(&w, 1232, true, 2, &[0; 12]).unwrap();
        assert!(matches!(
            g.push(1, &misaligned, 0),
            Gathered::Rejected { .. }
        ));
        let mut g = TxGatherer::default();
        let last = ipv6_fragment(&w, 1232, false, 3, &[0; 16]).unwrap();
        let other_last = ipv6_fragment(&w, 2464, false, 3, &[0; 16]).unwrap();
        assert_eq!(g.push(1, &last, 0), Gathered::Held);
        assert!(
            matches!(g.push(2, &other_last, 0), Gathered::Rejected { released } if released.len() == 1)
        );
        // An unfragmented IPv6 datagram is never held.
        let mut g = TxGatherer::default();
        assert!(matches!(g.push(1, &w, 0), Gathered::Rejected { .. }));
        assert!(g.is_empty());
    }

    #[test]
    fn an_ipv6_first_fragment_without_the_whole_header_chain_rejects_the_datagram() {
        let mut w = whole_v6(2000, false);
        w[20] = 6; // TCP: its header is 20 bytes at least
        let mut g = TxGatherer::default();
        let later = ipv6_fragment(&w, 8, false, 4, &w[54 + 8..54 + 100]).unwrap();
        assert_eq!(g.push(1, &later, 0), Gathered::Held);
        let tiny_first = ipv6_fragment(&w, 0, true, 4, &w[54..54 + 8]).unwrap();
        assert!(
            matches!(g.push(2, &tiny_first, 0), Gathered::Rejected { released } if released.len() == 1)
        );
        assert!(g.is_empty());
    }

    #[test]
    fn ipv6_datagrams_share_the_queues_budget_and_time_limit() {
        let mut g = TxGatherer::default();
        let mut rejected = 0;
        for ident in 0..(MAX_DATAGRAMS as u32 * 4) {
            let parts = fragment(&whole_v6(60_000, false), 1232, ident).unwrap();
            for (i, p) in parts.iter().take(parts.len() - 1).enumerate() {
                if let Gathered::Rejected { .. } = g.push(i as u64, p, 0) {
                    rejected += 1;
                    break;
                }
            }
            assert!(g.held_bytes() <= MAX_HELD_BYTES);
            assert!(g.datagrams.len() <= MAX_DATAGRAMS);
        }
        assert!(rejected > 0, "the budget was reached");
        // An IPv4 datagram does not get past it either.
        let v4 = fragment(&whole(60_000, 1), 1480, 0).unwrap();
        let refused = v4
            .iter()
            .enumerate()
            .any(|(i, p)| matches!(g.push(1000 + i as u64, p, 0), Gathered::Rejected { .. }));
        assert!(refused);
        assert!(g.held_bytes() <= MAX_HELD_BYTES);
        let expired = g.expire(GATHER_TIMEOUT_NS);
        assert!(!expired.is_empty());
        assert!(g.is_empty() && g.held_bytes() == 0);
    }
}
