//! IPv4 fragments a client transmits, checked as the datagram they make up.
//!
//! A filter sees a fragment's headers only (a later fragment has no ports), so the driver never
//! judges fragments one by one. Each queue has a [`TxGatherer`]: the fragments it transmits are
//! copied into driver-private memory and held, without a completion, until their datagram is
//! whole. The whole datagram is then rebuilt (the first fragment's headers, every fragment's
//! data) and put through the queue's transmit check ([`super::tx::check`]); if it passes, the
//! fragments themselves go on the wire, exactly as held; otherwise none of them does and every
//! one is completed with the datagram's reason. All or none.
//!
//! Guarantees, each tested:
//! - memory: a queue holds at most [`MAX_HELD_BYTES`] of fragments in at most
//!   [`MAX_DATAGRAMS`] datagrams of at most [`MAX_FRAGMENTS_PER_DATAGRAM`] fragments; a fragment
//!   that would exceed a limit is rejected with its whole datagram (and counted as `fragment`);
//! - time: a datagram not whole within [`GATHER_TIMEOUT`] of its first fragment is rejected
//!   whole (new fragments do not extend the time);
//! - consistency: fragments whose data overlap (RFC 5722), that claim a second last fragment,
//!   that reach past 65,535 bytes, whose data (except the last's) is not a multiple of 8 bytes,
//!   or whose link headers (MACs, VLAN tags) differ from the first one's reject the whole
//!   datagram: what was checked is what goes out;
//! - every fragment taken from the ring gets exactly one completion.
//!
//! IPv6 fragments are not gathered: they stay rejected as `fragment`.

use netmux_proto::driver::QueueId;
use netmux_proto::ops::{CaptureSource, FrameDirection, RuleDirection};
use netmux_ring::TxStatus;
use netmux_wire::ethernet::{ethertype, link_layer};
use netmux_wire::ipv4::{self, Ipv4Packet};

use super::instances::{Route, Target};
use super::{send_frames, tx, Offer, Unsent, LINK_BUSY_RETRIES};

/// Bytes of fragments (whole frames) one queue may hold: three of the largest IPv4 datagrams
/// with their per-fragment headers, so a client sending at full speed never waits on itself,
/// while 1,024 queues hold at most 192 MiB at once.
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
    /// Whether it is the last fragment (MF clear).
    last: bool,
    /// Where its IP header starts (after Ethernet and VLAN tags).
    l3: usize,
}

/// What identifies a datagram's fragments (RFC 791): source, destination, protocol and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DatagramKey {
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    ident: u16,
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

/// The parts of an IPv4 fragment the gatherer needs; `None` when it is not an untruncated IPv4
/// fragment.
fn parse(frame: &[u8]) -> Option<(DatagramKey, usize, usize, usize, bool)> {
    let link = link_layer(frame)?;
    if link.ethertype != ethertype::IPV4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(frame.get(link.l3..)?).ok()?;
    if !ip.is_fragment() {
        return None;
    }
    let key = DatagramKey {
        src: ip.src(),
        dst: ip.dst(),
        protocol: ip.protocol(),
        ident: ip.ident(),
    };
    Some((
        key,
        link.l3,
        ip.frag_offset() as usize,
        ip.payload().len(),
        !ip.more_frags(),
    ))
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
        let Some((key, l3, offset, data_len, last)) = parse(frame) else {
            return Gathered::Rejected {
                released: Vec::new(),
            };
        };
        let fragment = HeldFragment {
            tag,
            frame: frame.to_vec(),
            offset,
            data_len,
            last,
            l3,
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
        if !self.fits(index, &fragment) {
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

    /// Whether `fragment` may join datagram `index` (see the module documentation).
    fn fits(&self, index: usize, fragment: &HeldFragment) -> bool {
        let datagram = &self.datagrams[index];
        let ihl = fragment
            .frame
            .get(fragment.l3)
            .map_or(0, |&v| usize::from(v & 0x0f) * 4);
        let end = fragment.offset + fragment.data_len;
        if self.held_bytes + fragment.frame.len() > MAX_HELD_BYTES
            || datagram.fragments.len() >= MAX_FRAGMENTS_PER_DATAGRAM
            || ihl + end > ipv4::MAX_DATAGRAM_LEN
            || (!fragment.last && (fragment.data_len == 0 || !fragment.data_len.is_multiple_of(8)))
        {
            return false;
        }
        datagram.fragments.iter().all(|held| {
            let overlaps = fragment.offset < held.offset + held.data_len && held.offset < end;
            let link_differs = held.frame.get(..held.l3) != fragment.frame.get(..fragment.l3);
            let second_last = held.last && fragment.last;
            let past_last = (held.last && end > held.offset + held.data_len)
                || (fragment.last && held.offset + held.data_len > end);
            !(overlaps || link_differs || second_last || past_last)
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

/// The datagram the fragments (complete, in order of offset) make up: the first fragment's
/// link and IP headers with the total length set, the fragment fields cleared and the header
/// checksum filled, followed by every fragment's data.
fn rebuild(fragments: &[HeldFragment]) -> Option<Vec<u8>> {
    let first = fragments.first()?;
    let first_ip = Ipv4Packet::new_checked(first.frame.get(first.l3..)?).ok()?;
    let ihl = first_ip.header_len();
    let data: usize = fragments.iter().map(|f| f.data_len).sum();
    let total = u16::try_from(ihl + data).ok()?;
    let mut out = Vec::with_capacity(first.l3 + ihl + data);
    out.extend_from_slice(first.frame.get(..first.l3 + ihl)?);
    for f in fragments {
        let ip = Ipv4Packet::new_checked(f.frame.get(f.l3..)?).ok()?;
        out.extend_from_slice(ip.payload());
    }
    let mut ip = Ipv4Packet::new_checked(out.get_mut(first.l3..)?).ok()?;
    ip.set_total_len(total);
    let df = ip.flags_offset() & ipv4::FLAG_DF;
    ip.set_flags_offset(df);
    ip.fill_checksum();
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
    use crate::reassembly::fragmenter::{fragment, ipv4_fragment};

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
}
