//! F3: fragment streams into the driver's reassembler, against a model of honest and
//! hostile senders.

use arbitrary::Arbitrary;
use netmux_driver::reassembly::fragmenter::{ipv4_fragment, ipv6_fragment};
use netmux_driver::reassembly::{is_fragment, Config, Outcome, Reassembler};

/// Honest datagrams per input: enough for several keys to compete for the budgets.
const MAX_HONEST: usize = 6;
/// Events per input: bounds the time one input takes.
const MAX_EVENTS: usize = 256;
/// Fragments one `HonestWhole` event makes at most: more than the reassembler's limit of 64.
const MAX_WHOLE_FRAGMENTS: usize = 80;
/// Honest IPv4 sources are 192.0.2.S (TEST-NET-1); hostile ones 198.51.100.S (TEST-NET-2).
const HONEST_V4: [u8; 3] = [192, 0, 2];
const HOSTILE_V4: [u8; 3] = [198, 51, 100];
/// Honest IPv6 sources start 2001:db8:1::, hostile ones 2001:db8:2::.
const HONEST_V6: [u8; 6] = [0x20, 0x01, 0x0d, 0xb8, 0, 1];
const HOSTILE_V6: [u8; 6] = [0x20, 0x01, 0x0d, 0xb8, 0, 2];
const ETHERNET_HEADER_LEN: usize = 14;

#[derive(Debug, Arbitrary)]
struct Input {
    timeout_ms: u16,
    budget: Budget,
    honest: Vec<Datagram>,
    events: Vec<Event>,
}

#[derive(Debug, Arbitrary)]
enum Budget {
    Default,
    /// Overall budget in KiB, per-source a quarter.
    Small(u8),
    /// Overall and per-source budgets in bytes.
    Exact(u16, u16),
}

#[derive(Debug, Arbitrary)]
struct Datagram {
    v6: bool,
    /// Low bits pick the source host, so several datagrams share a per-source budget.
    source: u8,
    dest: u8,
    protocol: Protocol,
    /// Payload length (transport header included), clipped to what the family allows.
    len: u16,
    fill: u8,
}

#[derive(Debug, Arbitrary, Clone, Copy)]
enum Protocol {
    Udp,
    /// TCP with this data offset (words; 5..=15 after clipping).
    Tcp(u8),
    Other(u8),
}

#[derive(Debug, Arbitrary)]
enum Event {
    /// A true fragment of honest datagram `which`: offset in 8-byte units, data length.
    Honest { which: u8, offset: u16, len: u16 },
    /// Every fragment of honest datagram `which`, `size`x8 bytes each, in an order given by
    /// `rotate` and `reverse`.
    HonestWhole {
        which: u8,
        size: u8,
        rotate: u8,
        reverse: bool,
    },
    /// A fragment of a hostile datagram: anything goes, with a hostile source.
    Hostile {
        v6: bool,
        source: u8,
        id: u16,
        offset: u16,
        more: bool,
        data: Vec<u8>,
    },
    /// Raw bytes; an IP source address in them is made hostile.
    Raw(Vec<u8>),
    /// The clock moves forwards by this many milliseconds.
    Advance(u16),
    /// The clock moves backwards (the reassembler must ignore that).
    Back(u16),
    /// `expire` at the current time.
    Expire,
    /// Recycle the next delivered buffers, or not.
    Recycle(bool),
}

/// An honest datagram, whole, as the sender built it.
struct Whole {
    frame: Vec<u8>,
    /// Offset of the payload (transport header onwards).
    payload_at: usize,
    v6: bool,
    id: u32,
}

fn build_whole(index: usize, d: &Datagram) -> Whole {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    let proto = match d.protocol {
        Protocol::Udp => 17,
        Protocol::Tcp(_) => 6,
        Protocol::Other(p) => match p {
            // Extension headers and the fragment header itself are not payloads we model.
            0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254 => 254,
            p => p,
        },
    };
    let header_len = if d.v6 { 40 } else { 20 };
    let len = usize::from(d.len).min(65_535 - if d.v6 { 0 } else { header_len });
    let id = 0x1000 + index as u32;
    let host = d.source % 4;
    if d.v6 {
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(len as u16).to_be_bytes());
        f.extend_from_slice(&[proto, 64]);
        f.extend_from_slice(&HONEST_V6);
        f.extend_from_slice(&[0; 9]);
        f.push(host);
        f.extend_from_slice(&HONEST_V6);
        f.extend_from_slice(&[0; 9]);
        f.push(d.dest % 4);
    } else {
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((len + 20) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&(id as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..15].copy_from_slice(&HONEST_V4);
        ip[15] = host;
        ip[16..19].copy_from_slice(&[203, 0, 113]);
        ip[19] = d.dest % 4;
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
    }
    let payload_at = f.len();
    // The payload names its datagram, so no two honest datagrams have the same bytes.
    f.extend((0..len).map(|i| {
        (i as u8)
            .wrapping_mul(31)
            .wrapping_add(d.fill)
            .wrapping_add((index as u8).wrapping_mul(17))
    }));
    if let (Protocol::Tcp(doff), true) = (d.protocol, len > 12) {
        f[payload_at + 12] = (doff % 11 + 5) << 4;
    }
    Whole {
        frame: f,
        payload_at,
        v6: d.v6,
        id,
    }
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A fragment of `w` with the true bytes at `offset` and a true flag, or `None` when the
/// range is outside the payload.
fn honest_fragment(w: &Whole, offset: usize, len: usize) -> Option<Vec<u8>> {
    let payload = &w.frame[w.payload_at..];
    if offset > payload.len() {
        return None;
    }
    let end = (offset + len).min(payload.len());
    let data = &payload[offset..end];
    let more = end < payload.len();
    let built = if w.v6 {
        ipv6_fragment(&w.frame, offset, more, w.id, data)
    } else {
        ipv4_fragment(&w.frame, offset, more, data)
    };
    built.ok()
}

/// Offset of the IP header and the ethertype, past up to two VLAN tags (as the driver parses).
fn l3(frame: &[u8]) -> Option<(usize, u16)> {
    let mut at = 12;
    for _ in 0..=2 {
        let et = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        if !matches!(et, 0x8100 | 0x88a8 | 0x9100) {
            return Some((at + 2, et));
        }
        at += 4;
    }
    None
}

/// Overwrites the IP source address of a raw frame with a hostile one.
fn make_hostile(frame: &mut [u8]) {
    let Some((l3, et)) = l3(frame) else { return };
    match et {
        0x0800 if frame.len() >= l3 + 16 => frame[l3 + 12..l3 + 15].copy_from_slice(&HOSTILE_V4),
        0x86dd if frame.len() >= l3 + 14 => frame[l3 + 8..l3 + 14].copy_from_slice(&HOSTILE_V6),
        _ => {}
    }
}

/// Whether a delivered frame claims an honest source.
fn honest_source(frame: &[u8]) -> bool {
    match l3(frame) {
        Some((l3, 0x0800)) => frame.get(l3 + 12..l3 + 15) == Some(&HONEST_V4[..]),
        Some((l3, 0x86dd)) => frame.get(l3 + 8..l3 + 14) == Some(&HONEST_V6[..]),
        _ => false,
    }
}

/// F3. Fragment streams into the driver's reassembler: no panic, memory within the budget, the
/// counters add up, and every datagram that comes out is byte-exact one that went in.
///
/// The input is structured (`arbitrary`): a configuration, a few *honest* datagrams (IPv4 or
/// IPv6, UDP, TCP or an unknown protocol, any payload length up to the 16-bit limit) and a
/// script of events: fragments of an honest datagram at any offset and length, in any order,
/// overlapping or duplicated; fragments of *hostile* datagrams that lie about everything (bytes,
/// offsets, the last-fragment flag, their identification); raw bytes; clock steps forwards and
/// backwards; explicit expiry; recycled output buffers.
///
/// The model: an honest fragment always carries the true bytes of its datagram at its offset
/// and a true "more fragments" flag, and honest datagrams have distinct keys and distinct
/// contents. Whatever the reassembler decides to drop, anything it delivers with an honest
/// source address must therefore equal one honest datagram exactly. Hostile and raw traffic
/// uses source addresses of its own (raw frames have theirs overwritten), so it can evict or
/// time out honest datagrams but never legitimately change their bytes; what it produces is
/// checked for shape only (a whole frame, not a fragment; IPv4 header checksum valid).
pub fn reassembly(data: &[u8]) {
    let Some(input) = crate::structured::<Input>(data) else {
        return;
    };
    let mut config = Config {
        timeout_ns: u64::from(input.timeout_ms) * 1_000_000,
        ..Config::default()
    };
    match input.budget {
        Budget::Default => {}
        Budget::Small(kib) => {
            config = Config {
                timeout_ns: config.timeout_ns,
                ..Config::with_budget(usize::from(kib) << 10)
            }
        }
        Budget::Exact(all, source) => {
            config.memory_budget = usize::from(all);
            config.source_budget = usize::from(source);
        }
    }
    let budget = config.memory_budget;
    let wholes: Vec<Whole> = input
        .honest
        .iter()
        .take(MAX_HONEST)
        .enumerate()
        .map(|(i, d)| build_whole(i, d))
        .collect();
    let mut r = Reassembler::new(config);
    let mut now: u64 = 0;
    let mut recycle = false;

    let deliver = |r: &mut Reassembler, frame: &[u8], now: u64, recycle: bool| {
        match r.push(frame, now) {
            Outcome::Reassembled(out) => {
                assert!(!is_fragment(&out), "a reassembled frame is not a fragment");
                if honest_source(&out) {
                    assert!(
                        wholes.iter().any(|w| w.frame == out),
                        "a datagram with an honest source came out that nobody sent: {out:02x?}"
                    );
                }
                if let Some((l3, 0x0800)) = l3(&out) {
                    let ihl = usize::from(out[l3] & 0x0f) * 4;
                    assert_eq!(checksum(&out[l3..l3 + ihl]), 0, "IPv4 checksum is valid");
                    let total = u16::from_be_bytes([out[l3 + 2], out[l3 + 3]]);
                    assert_eq!(usize::from(total), out.len() - l3, "total length is exact");
                }
                if recycle {
                    r.recycle(out);
                }
            }
            Outcome::Deliver(f) => assert_eq!(f.as_ptr(), frame.as_ptr(), "whole frames pass"),
            Outcome::Held | Outcome::Dropped(_) => {}
        }
        assert!(r.memory_in_use() <= budget, "memory within the budget");
        let c = r.counters();
        assert_eq!(
            c.fragments,
            c.fragments_reassembled + c.total_fragments_dropped() + r.held_fragments(),
            "every fragment is reassembled, dropped or held, exactly once"
        );
    };

    for event in input.events.into_iter().take(MAX_EVENTS) {
        match event {
            Event::Honest { which, offset, len } => {
                if let Some(w) = wholes.get(usize::from(which) % wholes.len().max(1)) {
                    if let Some(f) = honest_fragment(w, usize::from(offset) * 8, usize::from(len)) {
                        deliver(&mut r, &f, now, recycle);
                    }
                }
            }
            Event::HonestWhole {
                which,
                size,
                rotate,
                reverse,
            } => {
                let Some(w) = wholes.get(usize::from(which) % wholes.len().max(1)) else {
                    continue;
                };
                let payload_len = w.frame.len() - w.payload_at;
                // At most MAX_WHOLE_FRAGMENTS fragments: past the reassembler's own limit, and
                // a bound on the time one event takes.
                let size = (usize::from(size.max(1)) * 8).max(
                    payload_len
                        .div_ceil(MAX_WHOLE_FRAGMENTS)
                        .next_multiple_of(8),
                );
                let mut frags: Vec<Vec<u8>> = (0..payload_len.div_ceil(size).max(1))
                    .filter_map(|k| honest_fragment(w, k * size, size))
                    .collect();
                if reverse {
                    frags.reverse();
                }
                let n = frags.len();
                frags.rotate_left(usize::from(rotate) % n.max(1));
                for f in &frags {
                    deliver(&mut r, f, now, recycle);
                }
            }
            Event::Hostile {
                v6,
                source,
                id,
                offset,
                more,
                data,
            } => {
                let hostile = Datagram {
                    v6,
                    source,
                    dest: 0,
                    protocol: Protocol::Udp,
                    len: 64,
                    fill: 0,
                };
                let mut w = build_whole(usize::from(id), &hostile);
                make_hostile(&mut w.frame);
                if !v6 {
                    // Re-checksum after the address change so the fragments are well-formed.
                    let l3 = ETHERNET_HEADER_LEN;
                    w.frame[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
                    w.frame[l3 + 10..l3 + 12].fill(0);
                    let sum = checksum(&w.frame[l3..l3 + 20]);
                    w.frame[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
                }
                let offset = usize::from(offset) * 8;
                let built = if v6 {
                    ipv6_fragment(&w.frame, offset, more, u32::from(id), &data)
                } else {
                    ipv4_fragment(&w.frame, offset, more, &data)
                };
                if let Ok(f) = built {
                    deliver(&mut r, &f, now, recycle);
                }
            }
            Event::Raw(mut frame) => {
                make_hostile(&mut frame);
                deliver(&mut r, &frame, now, recycle);
            }
            Event::Advance(ms) => now += u64::from(ms) * 1_000_000,
            Event::Back(ms) => now = now.saturating_sub(u64::from(ms) * 1_000_000),
            Event::Expire => {
                r.expire(now);
                assert!(r.memory_in_use() <= budget, "memory within the budget");
            }
            Event::Recycle(on) => recycle = on,
        }
    }
}
