//! The reassembler against the known fragment attacks (teardrop and other overlaps, tiny and
//! zero-length fragments, floods, lying lengths, the clock running backwards), and the
//! ordinary cases.

mod reassembly_common;

use netmux_driver::reassembly::fragmenter::{ipv4_fragment, ipv6_fragment};
use netmux_driver::reassembly::{
    is_fragment, Config, Counters, DropReason, Outcome, Reassembler, MAX_FRAGMENTS_PER_DATAGRAM,
};
use reassembly_common::*;

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];
const C: [u8; 4] = [10, 0, 0, 3];

fn reassembled(outcome: Outcome<'_>) -> Vec<u8> {
    match outcome {
        Outcome::Reassembled(frame) => frame,
        other => panic!("expected a reassembled frame, got {other:?}"),
    }
}

/// Every fragment is reassembled, dropped or held: nothing is lost from the books.
fn assert_accounted(r: &Reassembler) {
    let c: &Counters = r.counters();
    assert_eq!(
        c.fragments,
        c.fragments_reassembled + c.total_fragments_dropped() + r.held_fragments(),
        "{c:?}"
    );
    assert!(r.memory_in_use() <= r.config().memory_budget);
}

#[test]
fn unfragmented_frames_are_delivered_borrowed_and_untouched() {
    let mut r = Reassembler::default();
    let v4 = pad(ipv4_udp(A, B, 7, b"hi"), 4, 0xee);
    let v6 = ipv6_udp(v6addr(1), v6addr(2), b"hello");
    let arp = pad(
        vec![0xff; 12].into_iter().chain([0x08, 0x06]).collect(),
        0,
        0,
    );
    for frame in [&v4, &v6, &arp, &vec![1, 2, 3]] {
        match r.push(frame, 0) {
            Outcome::Deliver(f) => assert!(std::ptr::eq(f, frame.as_slice())),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(r.counters().fragments, 0);
}

#[test]
fn ipv4_fragments_in_order_reassemble_to_the_original_frame() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 0x1234, &pattern(3000, 1));
    let frags = split(&whole, 1480, 0);
    assert_eq!(frags.len(), 3);
    assert_eq!(r.push(&frags[0], 0), Outcome::Held);
    assert_eq!(r.push(&frags[1], 1), Outcome::Held);
    assert_eq!(reassembled(r.push(&frags[2], 2)), whole);
    assert_eq!(r.counters().datagrams_reassembled, 1);
    assert_eq!(r.counters().fragments_reassembled, 3);
    assert_eq!(
        r.memory_in_use(),
        r.spare_memory(),
        "only spare buffers remain"
    );
    assert_eq!(r.datagrams_in_flight(), 0);
    assert_accounted(&r);
}

#[test]
fn ipv6_fragments_reassemble_with_the_fragment_header_removed() {
    let mut r = Reassembler::default();
    let whole = ipv6_udp(v6addr(1), v6addr(2), &pattern(4000, 9));
    let frags = split(&whole, 1232, 77);
    assert!(frags.iter().all(|f| is_fragment(f)));
    let mut out = None;
    for f in &frags {
        match r.push(f, 0) {
            Outcome::Held => {}
            Outcome::Reassembled(frame) => out = Some(frame),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(out.unwrap(), whole);
}

#[test]
fn ipv6_hop_by_hop_header_stays_in_front_and_the_chain_is_fixed() {
    let mut r = Reassembler::default();
    // Hop-by-Hop (8 bytes: next header UDP, length 0, PadN) then UDP.
    let mut rest = vec![17, 0, 1, 4, 0, 0, 0, 0];
    rest.extend_from_slice(&udp(&pattern(2000, 3)));
    let whole = ipv6(v6addr(1), v6addr(2), 0, &rest, None);
    let frags = split(&whole, 1000, 5);
    assert_eq!(
        frags[0][14 + 40],
        44,
        "the Fragment header follows Hop-by-Hop"
    );
    let mut last = None;
    for f in frags.iter().rev() {
        last = Some(r.push(f, 0));
    }
    assert_eq!(reassembled(last.unwrap()), whole);
}

#[test]
fn later_fragments_before_the_first_reassemble() {
    // Barrelfish lost a last fragment that arrived first.
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 9, &pattern(5000, 2));
    let frags = split(&whole, 1480, 0);
    let n = frags.len();
    assert_eq!(r.push(&frags[n - 1], 0), Outcome::Held);
    for f in frags[1..n - 1].iter().rev() {
        assert_eq!(r.push(f, 0), Outcome::Held);
    }
    assert_eq!(reassembled(r.push(&frags[0], 0)), whole);
}

#[test]
fn first_fragment_with_longer_header_arriving_last_moves_the_data() {
    // Non-first fragments carry only copied options; the first carries all of them.
    let mut r = Reassembler::default();
    let options = [0x07, 0x07, 0x04, 0, 0, 0, 0, 0x01]; // record route (not copied) + NOP
    let whole = ipv4(A, B, 17, 3, &options, &udp(&pattern(2000, 4)), None);
    let short = ipv4(A, B, 17, 3, &[], &udp(&pattern(2000, 4)), None);
    let frags = split(&whole, 1000, 0);
    let tail: Vec<Vec<u8>> = split(&short, 1000, 0).split_off(1);
    for f in &tail {
        assert_eq!(r.push(f, 0), Outcome::Held);
    }
    assert_eq!(reassembled(r.push(&frags[0], 0)), whole);
}

#[test]
fn teardrop_overlap_discards_the_whole_datagram() {
    // Teardrop: the second fragment starts inside the first and ends before the first's end.
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 1, &pattern(100, 0));
    let data = &whole[34..];
    let first = ipv4_fragment(&whole, 0, true, &data[..48]).unwrap();
    let inside = ipv4_fragment(&whole, 24, false, &data[24..28]).unwrap();
    assert_eq!(r.push(&first, 0), Outcome::Held);
    assert_eq!(r.push(&inside, 0), Outcome::Dropped(DropReason::Overlap));
    assert_eq!(r.counters().datagrams_dropped(DropReason::Overlap), 1);
    assert_eq!(r.counters().fragments_dropped(DropReason::Overlap), 2);
    assert_eq!(r.held_fragments(), 0);
    assert_accounted(&r);
}

#[test]
fn overlap_rewriting_the_ports_discards_the_datagram_and_its_later_fragments() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 2, &pattern(200, 0));
    let data = whole[34..].to_vec();
    let first = ipv4_fragment(&whole, 0, true, &data[..104]).unwrap();
    let last = ipv4_fragment(&whole, 104, false, &data[104..]).unwrap();
    // An attacker's fragment at offset 0 with other ports, 8 bytes: the UDP header only.
    let mut evil_header = data[..8].to_vec();
    evil_header[2..4].copy_from_slice(&53u16.to_be_bytes());
    let evil = ipv4_fragment(&whole, 0, true, &evil_header).unwrap();

    assert_eq!(r.push(&first, 0), Outcome::Held);
    assert_eq!(r.push(&evil, 0), Outcome::Dropped(DropReason::Overlap));
    // The tombstone catches the rest: nothing of this datagram is ever delivered.
    assert_eq!(
        r.push(&last, 0),
        Outcome::Dropped(DropReason::DiscardedDatagram)
    );
    assert_eq!(
        r.push(&first, 0),
        Outcome::Dropped(DropReason::DiscardedDatagram)
    );
    assert_eq!(r.tombstones(), 1);
    assert_accounted(&r);
}

#[test]
fn overlap_arriving_before_the_real_first_fragment_is_caught_too() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 3, &pattern(200, 0));
    let data = whole[34..].to_vec();
    // Offset 8 overlapping the real first fragment (RFC 1858's rewrite of the header's tail).
    let evil = ipv4_fragment(&whole, 8, true, &[0xaa; 16]).unwrap();
    let first = ipv4_fragment(&whole, 0, true, &data[..104]).unwrap();
    let last = ipv4_fragment(&whole, 104, false, &data[104..]).unwrap();
    assert_eq!(r.push(&evil, 0), Outcome::Held);
    assert_eq!(r.push(&first, 0), Outcome::Dropped(DropReason::Overlap));
    assert_eq!(
        r.push(&last, 0),
        Outcome::Dropped(DropReason::DiscardedDatagram)
    );
}

#[test]
fn exact_duplicates_are_ignored_and_the_datagram_completes() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 4, &pattern(3000, 5));
    let frags = split(&whole, 1480, 0);
    assert_eq!(r.push(&frags[0], 0), Outcome::Held);
    assert_eq!(
        r.push(&frags[0], 0),
        Outcome::Dropped(DropReason::Duplicate)
    );
    assert_eq!(r.push(&frags[2], 0), Outcome::Held);
    assert_eq!(
        r.push(&frags[2], 0),
        Outcome::Dropped(DropReason::Duplicate)
    );
    assert_eq!(reassembled(r.push(&frags[1], 0)), whole);
    assert_eq!(r.counters().fragments_dropped(DropReason::Duplicate), 2);
    assert_eq!(r.counters().total_datagrams_dropped(), 0);
    assert_accounted(&r);
}

#[test]
fn same_range_with_different_bytes_is_an_overlap_not_a_duplicate() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 5, &pattern(3000, 5));
    let other = ipv4_udp(A, B, 5, &pattern(3000, 6));
    let frags = split(&whole, 1480, 0);
    let forged = split(&other, 1480, 0);
    assert_eq!(r.push(&frags[1], 0), Outcome::Held);
    assert_eq!(r.push(&forged[1], 0), Outcome::Dropped(DropReason::Overlap));
}

#[test]
fn tiny_first_fragment_is_dropped() {
    let mut r = Reassembler::default();
    // TCP's 20-byte header split after 16 bytes: the flags and window sit in the second piece.
    let whole = ipv4(A, B, 6, 6, &[], &tcp(&pattern(100, 0)), None);
    let frags = split(&whole, 16, 0);
    assert_eq!(
        r.push(&frags[0], 0),
        Outcome::Dropped(DropReason::IncompleteFirstFragment)
    );
    // A UDP first fragment of 8 bytes holds the whole UDP header and is fine.
    let whole = ipv4_udp(A, B, 7, &pattern(100, 0));
    assert_eq!(r.push(&split(&whole, 8, 0)[0], 0), Outcome::Held);
}

#[test]
fn tcp_first_fragment_must_hold_the_tcp_options_too() {
    let mut r = Reassembler::default();
    let mut seg = tcp(&pattern(100, 0));
    seg[12] = 0xf0; // data offset 15: 60-byte header
    let whole = ipv4(A, B, 6, 8, &[], &seg, None);
    assert_eq!(
        r.push(&split(&whole, 56, 0)[0], 0),
        Outcome::Dropped(DropReason::IncompleteFirstFragment)
    );
    assert_eq!(r.push(&split(&whole, 64, 0)[0], 0), Outcome::Held);
}

#[test]
fn ipv6_first_fragment_without_the_whole_header_chain_is_dropped() {
    // RFC 7112: a Destination Options header of 24 bytes, then UDP, split after 16 bytes.
    let mut r = Reassembler::default();
    let mut rest = vec![17, 2, 1, 20];
    rest.extend_from_slice(&[0; 20]);
    rest.extend_from_slice(&udp(&pattern(100, 0)));
    let whole = ipv6(v6addr(1), v6addr(2), 60, &rest, None);
    let frags = split(&whole, 16, 1);
    assert_eq!(
        r.push(&frags[0], 0),
        Outcome::Dropped(DropReason::IncompleteFirstFragment)
    );
    // 32 bytes hold the options and the UDP header.
    assert_eq!(r.push(&split(&whole, 32, 2)[0], 0), Outcome::Held);
}

#[test]
fn fragment_ending_past_65535_is_dropped() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 9, &pattern(100, 0));
    // Ping of death: offset 65,528 with 16 bytes ends at 65,544 (+ the header).
    let big = ipv4_fragment(&whole, 65_528, false, &[0; 16]).unwrap();
    assert_eq!(r.push(&big, 0), Outcome::Dropped(DropReason::TooLong));
    // Ending at exactly 65,535 counting the 20-byte header is fine.
    let edge = ipv4_fragment(&whole, 65_512, false, &[0; 3]).unwrap();
    assert_eq!(r.push(&edge, 0), Outcome::Held);
    let v6 = ipv6_udp(v6addr(1), v6addr(2), &pattern(100, 0));
    let big6 = ipv6_fragment(&v6, 65_528, false, 3, &[0; 8]).unwrap();
    assert_eq!(r.push(&big6, 0), Outcome::Dropped(DropReason::TooLong));
    assert_accounted(&r);
}

#[test]
fn largest_datagram_reassembles_and_one_byte_more_does_not() {
    let mut r = Reassembler::new(Config::with_budget(1 << 20));
    // 65,535 - 20 (IP) - 8 (UDP) bytes of payload: total length exactly 65,535.
    let whole = ipv4_udp(A, B, 10, &pattern(65_535 - 28, 1));
    let frags = split(&whole, 8192, 0);
    let mut out = None;
    for f in &frags {
        out = Some(r.push(f, 0));
    }
    assert_eq!(reassembled(out.unwrap()), whole);
    // One more byte: the last fragment (offset 65,536 - 20 - 8 ... ) ends past the limit.
    let data = pattern(65_535 - 19, 2);
    let pieces: Vec<Vec<u8>> = data
        .chunks(8192)
        .enumerate()
        .map(|(k, c)| ipv4_fragment(&whole, k * 8192, (k + 1) * 8192 < data.len(), c).unwrap())
        .collect();
    let mut outcomes: Vec<Outcome<'_>> = pieces.iter().map(|f| r.push(f, 0)).collect();
    assert_eq!(outcomes.pop(), Some(Outcome::Dropped(DropReason::TooLong)));
    assert!(outcomes.iter().all(|o| *o == Outcome::Held));
}

#[test]
fn non_last_fragment_not_a_multiple_of_8_is_dropped() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 11, &pattern(100, 0));
    let f = ipv4_fragment(&whole, 0, true, &whole[34..34 + 13]).unwrap();
    assert_eq!(r.push(&f, 0), Outcome::Dropped(DropReason::Misaligned));
    let v6 = ipv6_udp(v6addr(1), v6addr(2), &pattern(100, 0));
    let f6 = ipv6_fragment(&v6, 16, true, 4, &[0; 12]).unwrap();
    assert_eq!(r.push(&f6, 0), Outcome::Dropped(DropReason::Misaligned));
    assert_eq!(
        r.datagrams_in_flight(),
        0,
        "a refused fragment creates no state"
    );
}

#[test]
fn zero_length_fragment_is_dropped() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 12, &pattern(100, 0));
    let empty = ipv4_fragment(&whole, 64, true, &[]).unwrap();
    assert_eq!(r.push(&empty, 0), Outcome::Dropped(DropReason::Empty));
    let empty_last = ipv4_fragment(&whole, 64, false, &[]).unwrap();
    assert_eq!(r.push(&empty_last, 0), Outcome::Dropped(DropReason::Empty));
    assert_eq!(r.counters().fragments_dropped(DropReason::Empty), 2);
}

#[test]
fn two_last_fragments_with_different_ends_discard_the_datagram() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 13, &pattern(200, 0));
    let data = whole[34..].to_vec();
    let last_a = ipv4_fragment(&whole, 104, false, &data[104..]).unwrap();
    let last_b = ipv4_fragment(&whole, 208, false, &[0; 8]).unwrap();
    let first = ipv4_fragment(&whole, 0, true, &data[..104]).unwrap();
    assert_eq!(r.push(&last_a, 0), Outcome::Held);
    assert_eq!(
        r.push(&last_b, 0),
        Outcome::Dropped(DropReason::ConflictingEnd)
    );
    assert_eq!(
        r.push(&first, 0),
        Outcome::Dropped(DropReason::DiscardedDatagram)
    );
}

#[test]
fn data_past_the_known_end_discards_the_datagram() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 14, &pattern(200, 0));
    let data = whole[34..].to_vec();
    let last = ipv4_fragment(&whole, 104, false, &data[104..]).unwrap();
    let beyond = ipv4_fragment(&whole, 208, true, &[0; 8]).unwrap();
    assert_eq!(r.push(&last, 0), Outcome::Held);
    assert_eq!(
        r.push(&beyond, 0),
        Outcome::Dropped(DropReason::ConflictingEnd)
    );
}

#[test]
fn spoofed_ids_from_one_source_stay_within_budget_and_other_sources_still_reassemble() {
    let config = Config::default();
    let mut r = Reassembler::new(config.clone());
    let victim = ipv6_udp(v6addr(3), v6addr(2), &pattern(3000, 3));
    let victim_frags = split(&victim, 1232, 7);
    let victim4 = ipv4_udp(C, B, 1, &pattern(3000, 4));
    let victim4_frags = split(&victim4, 1480, 0);
    assert_eq!(r.push(&victim_frags[0], 0), Outcome::Held);
    assert_eq!(r.push(&victim4_frags[0], 0), Outcome::Held);
    let attack = ipv6_udp(v6addr(1), v6addr(2), &pattern(1400, 0));
    let template = split(&attack, 1024, 0).swap_remove(0);
    let mut frame = template.clone();
    for id in 0..100_000u32 {
        // A first fragment with a fresh 32-bit id each time: 100,000 datagrams that never
        // complete, all from one source.
        frame[58..62].copy_from_slice(&id.to_be_bytes());
        assert_eq!(r.push(&frame, u64::from(id)), Outcome::Held);
        assert!(r.memory_in_use() <= config.memory_budget);
    }
    assert!(r.counters().datagrams_dropped(DropReason::MemoryBudget) > 90_000);
    assert!(r.memory_in_use() <= config.source_budget + 2 * 4096);
    assert_eq!(r.push(&victim_frags[1], 100_000), Outcome::Held);
    assert_eq!(reassembled(r.push(&victim_frags[2], 100_001)), victim);
    assert_eq!(r.push(&victim4_frags[1], 100_002), Outcome::Held);
    assert_eq!(reassembled(r.push(&victim4_frags[2], 100_003)), victim4);
    assert_accounted(&r);
}

#[test]
fn spoofed_sources_stay_within_the_overall_budget() {
    let config = Config::default();
    let mut r = Reassembler::new(config.clone());
    let attack = ipv4_udp(A, B, 0, &pattern(1400, 0));
    let template = split(&attack, 1024, 0).swap_remove(0);
    let mut frame = template.clone();
    for n in 0..100_000u32 {
        frame.copy_from_slice(&template);
        frame[26..30].copy_from_slice(&(0x0a00_0000 | n).to_be_bytes());
        frame[24] = 0;
        frame[25] = 0;
        let sum = checksum(&frame[14..34]);
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(r.push(&frame, u64::from(n)), Outcome::Held);
        assert!(r.memory_in_use() <= config.memory_budget);
    }
    // A datagram whose fragments arrive together still gets through the churn.
    let whole = ipv4_udp(C, B, 99, &pattern(3000, 3));
    let frags = split(&whole, 1480, 0);
    assert_eq!(r.push(&frags[0], 200_000), Outcome::Held);
    assert_eq!(r.push(&frags[1], 200_000), Outcome::Held);
    assert_eq!(reassembled(r.push(&frags[2], 200_000)), whole);
    assert_accounted(&r);
}

#[test]
fn sixty_four_fragments_reassemble_and_a_sixty_fifth_discards_the_datagram() {
    let mut r = Reassembler::default();
    let n = MAX_FRAGMENTS_PER_DATAGRAM;
    // 64 fragments of 8 bytes: exactly at the limit.
    let whole = ipv4_udp(A, B, 15, &pattern(n * 8 - 8, 0));
    let frags = split(&whole, 8, 0);
    assert_eq!(frags.len(), n);
    let mut out = None;
    for f in &frags {
        out = Some(r.push(f, 0));
    }
    assert_eq!(reassembled(out.unwrap()), whole);

    let whole = ipv4_udp(A, B, 16, &pattern((n + 1) * 8 - 8, 0));
    let frags = split(&whole, 8, 0);
    assert_eq!(frags.len(), n + 1);
    for f in &frags[..n] {
        assert_eq!(r.push(f, 0), Outcome::Held);
    }
    assert_eq!(
        r.push(&frags[n], 0),
        Outcome::Dropped(DropReason::TooManyFragments)
    );
    assert_eq!(
        r.counters().fragments_dropped(DropReason::TooManyFragments),
        n as u64 + 1
    );
    assert_accounted(&r);
}

#[test]
fn timeout_discards_the_datagram_and_the_id_can_be_reused() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 17, &pattern(3000, 0));
    let frags = split(&whole, 1480, 0);
    assert_eq!(r.push(&frags[0], 0), Outcome::Held);
    assert_eq!(r.push(&frags[1], 29 * SECOND), Outcome::Held);
    // Later fragments do not extend the timeout: 30 s after the first, it is gone.
    assert_eq!(r.push(&frags[2], 30 * SECOND), Outcome::Held);
    assert_eq!(r.counters().datagrams_dropped(DropReason::Timeout), 1);
    assert_eq!(r.counters().fragments_dropped(DropReason::Timeout), 2);
    // The id starts afresh: the old fragment 2 is now a new datagram's first arrival.
    assert_eq!(r.push(&frags[1], 31 * SECOND), Outcome::Held);
    assert_eq!(reassembled(r.push(&frags[0], 32 * SECOND)), whole);
    assert_accounted(&r);
}

#[test]
fn tombstone_expires_with_the_timeout() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 18, &pattern(3000, 0));
    let frags = split(&whole, 1480, 0);
    assert_eq!(r.push(&frags[0], 0), Outcome::Held);
    let evil = ipv4_fragment(&whole, 8, true, &[0; 8]).unwrap();
    assert_eq!(r.push(&evil, SECOND), Outcome::Dropped(DropReason::Overlap));
    assert_eq!(
        r.push(&frags[1], 29 * SECOND),
        Outcome::Dropped(DropReason::DiscardedDatagram)
    );
    r.expire(30 * SECOND);
    assert_eq!(r.tombstones(), 0);
    for f in &frags[..2] {
        assert_eq!(r.push(f, 31 * SECOND), Outcome::Held);
    }
    assert_eq!(reassembled(r.push(&frags[2], 31 * SECOND)), whole);
}

#[test]
fn clock_going_backwards_does_not_keep_datagrams_alive() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 19, &pattern(3000, 0));
    let frags = split(&whole, 1480, 0);
    assert_eq!(r.push(&frags[0], 10 * SECOND), Outcome::Held);
    r.expire(40 * SECOND);
    assert_eq!(r.datagrams_in_flight(), 0);
    assert_eq!(r.push(&frags[1], 0), Outcome::Held);
    r.expire(SECOND); // earlier than 40 s: treated as 40 s
    assert_eq!(r.datagrams_in_flight(), 1);
}

#[test]
fn permuted_interleaved_flows_with_padding_reassemble() {
    let mut r = Reassembler::default();
    let mut wholes = Vec::new();
    let mut frames = Vec::new();
    for k in 0..40u32 {
        let whole = if k % 2 == 0 {
            ipv4_udp(A, B, k as u16, &pattern(100 + 97 * k as usize, k as u8))
        } else {
            ipv6_udp(
                v6addr(1),
                v6addr(2),
                &pattern(100 + 97 * k as usize, k as u8),
            )
        };
        // Small fragments so that the Ethernet minimum pads many of them, with junk.
        for (n, f) in split(&whole, 8 * (8 + k as usize % 5), k)
            .into_iter()
            .enumerate()
        {
            frames.push((k, pad(f, n % 3, 0xa5)));
        }
        wholes.push(whole);
    }
    // A fixed permutation: interleave by stepping through the list with a stride coprime to it.
    let len = frames.len();
    let stride = (1..len)
        .rev()
        .find(|s| gcd(*s, len) == 1 && *s > len / 3)
        .unwrap();
    let mut got: Vec<Option<Vec<u8>>> = vec![None; wholes.len()];
    for step in 0..len {
        let (k, frame) = &frames[(step * stride) % len];
        match r.push(frame, step as u64) {
            Outcome::Held => {}
            Outcome::Reassembled(out) => {
                assert!(got[*k as usize].replace(out).is_none());
            }
            other => panic!("datagram {k}: {other:?}"),
        }
    }
    for (k, whole) in wholes.iter().enumerate() {
        assert_eq!(got[k].as_ref(), Some(whole), "datagram {k}");
    }
    assert_eq!(
        r.memory_in_use(),
        r.spare_memory(),
        "only spare buffers remain"
    );
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[test]
fn ipv6_atomic_fragment_with_a_colliding_id_is_delivered_alone() {
    let mut r = Reassembler::default();
    let whole = ipv6_udp(v6addr(1), v6addr(2), &pattern(3000, 0));
    let frags = split(&whole, 1232, 42);
    assert_eq!(r.push(&frags[0], 0), Outcome::Held);
    // Same source, destination and id, offset 0 and M clear (RFC 6946).
    let small = ipv6_udp(v6addr(1), v6addr(2), b"atomic");
    let atomic = split(&small, 1232, 42).swap_remove(0);
    assert!(is_fragment(&atomic));
    assert_eq!(reassembled(r.push(&atomic, 0)), small);
    assert_eq!(r.counters().atomic_fragments, 1);
    // The queued datagram is untouched and completes.
    let mut out = None;
    for f in &frags[1..] {
        out = Some(r.push(f, 0));
    }
    assert_eq!(reassembled(out.unwrap()), whole);
}

#[test]
fn fragments_from_different_vlans_do_not_join() {
    let mut r = Reassembler::default();
    let on = |vid| ipv4(A, B, 17, 20, &[], &udp(&pattern(3000, 0)), Some(vid));
    let (v10, v20) = (on(10), on(20));
    let (f10, f20) = (split(&v10, 1480, 0), split(&v20, 1480, 0));
    assert_eq!(r.push(&f10[0], 0), Outcome::Held);
    assert_eq!(r.push(&f20[1], 0), Outcome::Held);
    assert_eq!(r.push(&f20[2], 0), Outcome::Held);
    assert_eq!(r.datagrams_in_flight(), 2);
    assert_eq!(r.push(&f10[1], 0), Outcome::Held);
    assert_eq!(reassembled(r.push(&f10[2], 0)), v10);
    assert_eq!(reassembled(r.push(&f20[0], 0)), v20);
}

#[test]
fn fragment_with_a_bad_ipv4_checksum_is_dropped_as_malformed() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 21, &pattern(3000, 0));
    let mut f = split(&whole, 1480, 0).swap_remove(0);
    f[14 + 8] ^= 1; // TTL changed, checksum not
    assert_eq!(r.push(&f, 0), Outcome::Dropped(DropReason::Malformed));
}

#[test]
fn truncated_fragment_is_dropped_as_malformed() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 22, &pattern(3000, 0));
    let f = split(&whole, 1480, 0).swap_remove(0);
    assert_eq!(
        r.push(&f[..f.len() - 1], 0),
        Outcome::Dropped(DropReason::Malformed)
    );
    let v6 = split(&ipv6_udp(v6addr(1), v6addr(2), &pattern(3000, 0)), 1232, 1).swap_remove(0);
    assert_eq!(
        r.push(&v6[..60], 0),
        Outcome::Dropped(DropReason::Malformed)
    );
}

#[test]
fn is_fragment_sees_ipv4_and_ipv6_fragments_only() {
    let v4 = ipv4_udp(A, B, 1, &pattern(3000, 0));
    let v6 = ipv6_udp(v6addr(1), v6addr(2), &pattern(3000, 0));
    assert!(!is_fragment(&v4));
    assert!(!is_fragment(&v6));
    assert!(split(&v4, 1480, 0).iter().all(|f| is_fragment(f)));
    assert!(split(&v6, 1232, 0).iter().all(|f| is_fragment(f)));
    // A Fragment header hidden behind a Destination Options header is still seen.
    let mut rest = vec![44, 0, 1, 4, 0, 0, 0, 0];
    rest.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 9]); // atomic fragment header
    rest.extend_from_slice(&udp(b"x"));
    assert!(is_fragment(&ipv6(v6addr(1), v6addr(2), 60, &rest, None)));
    // VLAN-tagged fragments too.
    let tagged = ipv4(A, B, 17, 2, &[], &udp(&pattern(3000, 0)), Some(7));
    assert!(is_fragment(&split(&tagged, 1480, 0)[1]));
    assert!(!is_fragment(&[]));
    assert!(!is_fragment(&[0u8; 13]));
    // Three VLAN tags: the reassembler would pass it through unread, so it counts.
    let mut triple = vec![0u8; 12];
    for _ in 0..3 {
        triple.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    }
    triple.extend_from_slice(&v4[12..]);
    assert!(is_fragment(&triple));
}

#[test]
fn memory_returns_to_zero_and_counters_balance_after_mixed_traffic() {
    let mut r = Reassembler::default();
    let whole = ipv4_udp(A, B, 23, &pattern(3000, 0));
    let frags = split(&whole, 1480, 0);
    let _ = r.push(&frags[0], 0);
    let _ = r.push(&frags[0], 0);
    let evil = ipv4_fragment(&whole, 8, true, &[0; 8]).unwrap();
    let _ = r.push(&evil, 0);
    let _ = r.push(&frags[1], 0);
    r.expire(31 * SECOND);
    assert_eq!(
        r.memory_in_use(),
        r.spare_memory(),
        "only spare buffers remain"
    );
    assert_eq!(r.datagrams_in_flight() + r.tombstones(), 0);
    assert_accounted(&r);
}

#[test]
fn nested_ipv6_fragment_headers_are_dropped_not_delivered() {
    let mut r = Reassembler::default();
    // The fragmentable part starts with a second (atomic) Fragment header, then UDP.
    let mut rest = vec![17, 0, 0, 0, 0, 0, 0, 5];
    rest.extend_from_slice(&udp(&pattern(2000, 1)));
    let whole = ipv6(v6addr(1), v6addr(2), 44, &rest, None);
    // As an atomic fragment: the outer header is stripped, the inner one would remain.
    let atomic = split(&whole, 4096, 8).swap_remove(0);
    assert_eq!(r.push(&atomic, 0), Outcome::Dropped(DropReason::Malformed));
    // As real fragments: reassembly completes, but the result still holds a Fragment header.
    let frags = split(&whole, 1232, 9);
    assert_eq!(r.push(&frags[0], 0), Outcome::Held);
    assert_eq!(
        r.push(&frags[1], 0),
        Outcome::Dropped(DropReason::Malformed)
    );
    assert_eq!(r.counters().datagrams_dropped(DropReason::Malformed), 1);
    assert_accounted(&r);
}
