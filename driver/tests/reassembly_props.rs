//! Property tests of the reassembler: random datagrams, fragmented at random sizes, duplicated,
//! shuffled and interleaved, come back byte for byte, in agreement with etherparse's
//! `IpDefragPool` frame by frame; and no bytes whatever make it panic or break its budget.

mod reassembly_common;

use etherparse::defrag::IpDefragPool;
use etherparse::SlicedPacket;
use netmux_driver::reassembly::{Config, DropReason, Outcome, Reassembler};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use reassembly_common::*;
use std::cell::Cell;

/// Datagrams per generated batch; with [`CASES`] batches a run checks 10,000 datagrams.
const DATAGRAMS_PER_BATCH: usize = 40;
/// Batches per run (`PROPTEST_CASES` overrides it).
const CASES: u32 = 250;

/// xorshift64*: a small deterministic generator driven by proptest's seed, so a failing case
/// is reported as one number that replays it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// One generated datagram: the whole frame, and where its fragmentable part starts.
struct Datagram {
    whole: Vec<u8>,
    /// Offset of the data after the IP header (IPv4) or the unfragmentable part (IPv6): what
    /// etherparse returns as the defragmented payload.
    payload_at: usize,
    /// How many fragments it was split into.
    fragments: usize,
}

fn random_datagram(rng: &mut Rng, k: usize) -> (Datagram, usize) {
    let len = match rng.below(100) {
        0..=69 => rng.below(1500),
        70..=94 => 1500 + rng.below(7500),
        _ => 9000 + rng.below(30_000),
    };
    let payload = pattern(len, rng.next() as u8);
    let tcp_first = rng.chance(30);
    let l4 = if tcp_first {
        tcp(&payload)
    } else {
        udp(&payload)
    };
    let vlan = rng.chance(20).then(|| rng.below(4095) as u16 + 1);
    // At most 64 fragments, each a multiple of 8 holding the whole transport header.
    let min_size = l4.len().div_ceil(64).max(if tcp_first { 24 } else { 8 });
    let size = (min_size + rng.below(1480)).div_ceil(8) * 8;
    let src = rng.below(4) as u32;
    let (whole, payload_at) = if rng.chance(50) {
        let options: &[u8] = if rng.chance(20) { &[1, 1, 1, 0] } else { &[] };
        let proto = if tcp_first { 6 } else { 17 };
        let l3 = if vlan.is_some() { 18 } else { 14 };
        let f = ipv4(
            [10, 0, 0, src as u8],
            [10, 0, 1, 1],
            proto,
            k as u16,
            options,
            &l4,
            vlan,
        );
        (f, l3 + 20 + options.len())
    } else {
        let l3 = if vlan.is_some() { 18 } else { 14 };
        let proto = if tcp_first { 6 } else { 17 };
        if rng.chance(20) {
            let mut rest = vec![proto, 0, 1, 4, 0, 0, 0, 0]; // Hop-by-Hop, PadN
            rest.extend_from_slice(&l4);
            (ipv6(v6addr(src), v6addr(9), 0, &rest, vlan), l3 + 48)
        } else {
            (ipv6(v6addr(src), v6addr(9), proto, &l4, vlan), l3 + 40)
        }
    };
    (
        Datagram {
            whole,
            payload_at,
            fragments: 0,
        },
        size,
    )
}

/// Feeds one shuffled batch to both reassemblers and checks every outcome. Returns the number
/// of datagrams checked.
fn check_batch(seed: u64) -> Result<usize, TestCaseError> {
    let mut rng = Rng(seed | 1);
    let mut datagrams = Vec::with_capacity(DATAGRAMS_PER_BATCH);
    let mut frames: Vec<(usize, Vec<u8>)> = Vec::new();
    for k in 0..DATAGRAMS_PER_BATCH {
        let (mut d, size) = random_datagram(&mut rng, k);
        let pieces = split(&d.whole, size, k as u32);
        d.fragments = pieces.len();
        for f in pieces {
            let copies = if rng.chance(10) { 2 } else { 1 };
            for _ in 0..copies {
                let f = if f.len() < 60 || rng.chance(5) {
                    pad(f.clone(), rng.below(8), rng.next() as u8)
                } else {
                    f.clone()
                };
                frames.push((k, f));
            }
        }
        datagrams.push(d);
    }
    rng.shuffle(&mut frames);

    let mut ours = Reassembler::new(Config::with_budget(256 << 20));
    let mut theirs = IpDefragPool::<(), ()>::new();
    let mut delivered = vec![0usize; datagrams.len()];
    for (t, (k, frame)) in frames.iter().enumerate() {
        let d = &datagrams[*k];
        let outcome = ours.push(frame, t as u64 * 1000);
        let sliced = SlicedPacket::from_ethernet(frame);
        let reference = match &sliced {
            Ok(s) => theirs.process_sliced_packet(s, (), ()).ok().flatten(),
            Err(e) => return Err(TestCaseError::fail(format!("etherparse: {e:?}"))),
        };
        match outcome {
            Outcome::Deliver(f) => {
                // Only a datagram that fits one IPv4 fragment is not a fragment at all.
                prop_assert_eq!(f, frame.as_slice());
                prop_assert!(f.starts_with(&d.whole));
                prop_assert!(reference.is_none());
                delivered[*k] += 1;
            }
            Outcome::Reassembled(out) => {
                prop_assert!(out == d.whole, "datagram {} differs", k);
                match reference {
                    Some(p) => prop_assert_eq!(&p.payload[..], &out[d.payload_at..]),
                    // etherparse passes IPv6 atomic fragments by as not fragmenting.
                    None => prop_assert!(d.fragments == 1, "etherparse did not complete {}", k),
                }
                delivered[*k] += 1;
                ours.recycle(out);
            }
            Outcome::Held => prop_assert!(reference.is_none()),
            Outcome::Dropped(DropReason::Duplicate) => prop_assert!(reference.is_none()),
            Outcome::Dropped(reason) => {
                return Err(TestCaseError::fail(format!("datagram {k}: {reason}")));
            }
        }
    }
    for (k, n) in delivered.iter().enumerate() {
        // Late duplicates may start the datagram again, and complete it again.
        prop_assert!(*n >= 1, "datagram {} never delivered", k);
    }
    let c = ours.counters();
    prop_assert_eq!(
        c.fragments,
        c.fragments_reassembled + c.total_fragments_dropped() + ours.held_fragments()
    );
    Ok(datagrams.len())
}

#[test]
fn random_fragmented_datagrams_reassemble_byte_exact_and_agree_with_etherparse() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let checked = Cell::new(0usize);
    runner
        .run(&any::<u64>(), |seed| {
            checked.set(checked.get() + check_batch(seed)?);
            Ok(())
        })
        .unwrap();
    if cases >= CASES {
        assert!(checked.get() >= 10_000, "only {} datagrams", checked.get());
    }
}

/// Valid fragments, then damaged: bytes flipped (sometimes with the IPv4 checksum fixed so the
/// damage reaches the reassembly logic), truncated, offsets and flags rewritten.
fn damaged_frames(seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed | 1);
    let mut frames = Vec::new();
    for k in 0..8 {
        let (d, size) = random_datagram(&mut rng, k % 3);
        let size = size.min(512);
        if let Ok(pieces) = netmux_driver::reassembly::fragmenter::fragment(&d.whole, size, 3) {
            frames.extend(pieces.into_iter().take(70));
        }
    }
    for f in frames.iter_mut() {
        let l3 = if f[12] == 0x81 { 18 } else { 14 };
        for _ in 0..rng.below(4) {
            let at = rng.below(f.len().min(l3 + 80));
            f[at] = rng.next() as u8;
        }
        if rng.chance(20) {
            let keep = rng.below(f.len() + 1);
            f.truncate(keep);
        }
        if rng.chance(70) && f.len() >= l3 + 20 && f[l3] >> 4 == 4 {
            let ihl = usize::from(f[l3] & 0xf) * 4;
            if ihl >= 20 && f.len() >= l3 + ihl {
                f[l3 + 10] = 0;
                f[l3 + 11] = 0;
                let sum = checksum(&f[l3..l3 + ihl]);
                f[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
            }
        }
    }
    rng.shuffle(&mut frames);
    frames
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..50)) {
        let mut r = Reassembler::new(Config::with_budget(64 << 10));
        for (t, f) in frames.iter().enumerate() {
            let mut f = f.clone();
            // Make some of them claim IPv4 or IPv6, so the parsers see more than junk.
            if f.len() > 14 && f[0] % 2 == 0 {
                f[12] = if f[1] % 2 == 0 { 0x08 } else { 0x86 };
                f[13] = if f[1] % 2 == 0 { 0x00 } else { 0xdd };
                f[14] = if f[1] % 2 == 0 { 0x45 } else { 0x60 };
            }
            let _ = r.push(&f, t as u64);
            let _ = netmux_driver::reassembly::is_fragment(&f);
            prop_assert!(r.memory_in_use() <= r.config().memory_budget);
        }
        let c = r.counters();
        prop_assert_eq!(c.fragments, c.fragments_reassembled + c.total_fragments_dropped() + r.held_fragments());
    }

    #[test]
    fn damaged_fragments_never_panic_or_break_the_budget(seed in any::<u64>()) {
        let mut r = Reassembler::new(Config {
            timeout_ns: 50_000,
            memory_budget: 48 << 10,
            source_budget: 16 << 10,
        });
        for (t, f) in damaged_frames(seed).iter().enumerate() {
            if let Outcome::Reassembled(out) = r.push(f, t as u64 * 1000) {
                // Whatever comes out is a frame the reassembler itself would pass through.
                prop_assert!(!netmux_driver::reassembly::is_fragment(&out));
            }
            prop_assert!(r.memory_in_use() <= r.config().memory_budget);
        }
        r.expire(u64::MAX);
        prop_assert_eq!(r.memory_in_use(), r.spare_memory(), "only spare buffers remain");
        let c = r.counters();
        prop_assert_eq!(c.fragments, c.fragments_reassembled + c.total_fragments_dropped() + r.held_fragments());
    }
}
