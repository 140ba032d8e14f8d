//! A client that scribbles arbitrary values over its ring memory (indices, wake flags, slot
//! headers, completion entries, anything) never makes the driver panic, never makes it write
//! outside the parts of the memory the driver owns, and never disturbs another queue.
//!
//! The scribbling goes through `pwrite` on the memfd, which changes the very pages both sides
//! have mapped, so no unsafe code is needed to play the hostile client.

use netmux_ring::layout::{Layout, LINE};
use netmux_ring::{ClientQueue, DriverQueue, FrameBatch, QueueConfig, TxStatus, MAX_FRAME_LEN};
use proptest::prelude::*;

fn config() -> QueueConfig {
    QueueConfig {
        slot_size: 2048,
        rx_slots: 64,
        tx_slots: 64,
        completion_slots: 16,
    }
}

/// What the hostile client (or the driver) does next.
#[derive(Debug, Clone)]
enum Step {
    /// Write `value` at a word chosen by `target` (see [`scribble_offset`]).
    Scribble { target: u32, value: u32 },
    /// The client sends frames of these lengths (through the honest API, so later scribbles
    /// corrupt real frames).
    ClientSend(Vec<usize>),
    /// The client reads what it can.
    ClientRecv,
    /// The driver delivers frames of these lengths.
    DriverDeliver(Vec<usize>),
    /// The driver takes tx frames and completes them.
    DriverTakeTx,
    /// The driver prepares to sleep for tx and gives up.
    DriverWaitCycle,
}

fn step() -> impl Strategy<Value = Step> {
    let value = prop_oneof![
        Just(0u32),
        Just(1),
        Just(u32::MAX),
        Just(u32::MAX - 63),
        Just(64),
        Just(65),
        Just(2040),
        Just(2041),
        any::<u32>(),
    ];
    prop_oneof![
        4 => (any::<u32>(), value).prop_map(|(target, value)| Step::Scribble { target, value }),
        2 => prop::collection::vec(0usize..5000, 1..6).prop_map(Step::ClientSend),
        1 => Just(Step::ClientRecv),
        2 => prop::collection::vec(0usize..5000, 1..6).prop_map(Step::DriverDeliver),
        2 => Just(Step::DriverTakeTx),
        1 => Just(Step::DriverWaitCycle),
    ]
}

/// Maps a random `target` to a word offset: mostly the words the driver reads (the client's
/// index lines and tx slot headers), sometimes any aligned word of the whole memory.
fn scribble_offset(layout: &Layout, target: u32) -> u64 {
    let pick = target % 8;
    let n = (target / 8) as usize;
    let offset = match pick {
        0 => layout.rx.consumer_line + 4 * (n % 2),
        1 => layout.tx.producer_line + 4 * (n % 2),
        2 => layout.completion.consumer_line + 4 * (n % 2),
        3..=5 => layout.tx.slot(n as u32) + 4 * (n % 2),
        6 => layout.completion.slot(n as u32) + 4 * (n % 4),
        _ => 4 * (n % (layout.total_len as usize / 4)),
    };
    offset as u64
}

/// The parts of the memory only the client may write: its three index lines and the tx slots.
fn client_owned(layout: &Layout) -> Vec<(u64, usize)> {
    vec![
        (layout.rx.consumer_line as u64, LINE),
        (layout.tx.producer_line as u64, LINE),
        (layout.completion.consumer_line as u64, LINE),
        (
            layout.tx.slots as u64,
            layout.tx.count as usize * layout.tx.slot_size,
        ),
    ]
}

fn snapshot(driver: &DriverQueue, regions: &[(u64, usize)]) -> Vec<Vec<u8>> {
    regions
        .iter()
        .map(|&(offset, len)| {
            let mut bytes = vec![0u8; len];
            rustix::io::pread(driver.memfd().unwrap(), &mut bytes[..], offset).unwrap();
            bytes
        })
        .collect()
}

fn pair() -> (DriverQueue, ClientQueue) {
    let driver = DriverQueue::create(&config()).unwrap();
    let fds = driver.client_fds().unwrap();
    let client = ClientQueue::from_fds(fds.memfd, fds.doorbell).unwrap();
    (driver, client)
}

fn frames_of(lens: &[usize]) -> Vec<Vec<u8>> {
    lens.iter().map(|&len| vec![0xa5; len]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn scribbling_client_never_breaks_the_driver_or_its_neighbour(
        steps in prop::collection::vec(step(), 1..40)
    ) {
        let (mut driver, mut client) = pair();
        let (mut neighbour, mut neighbour_client) = pair();
        let layout = *driver.layout();
        let owned = client_owned(&layout);
        let mut batch = FrameBatch::new();
        for step in &steps {
            match step {
                Step::Scribble { target, value } => {
                    let offset = scribble_offset(&layout, *target);
                    rustix::io::pwrite(driver.memfd().unwrap(), &value.to_ne_bytes(), offset).unwrap();
                }
                Step::ClientSend(lens) => {
                    let frames = frames_of(lens);
                    let vectors: Vec<[&[u8]; 1]> = frames.iter().map(|f| [f.as_slice()]).collect();
                    let refs: Vec<&[&[u8]]> = vectors.iter().map(|v| &v[..]).collect();
                    // The client's own view may be corrupt: errors are its problem.
                    let _ = client.send(&refs);
                }
                Step::ClientRecv => {
                    let mut out = Vec::new();
                    let _ = client.recv_owned(usize::MAX, &mut out);
                    let mut done = Vec::new();
                    let _ = client.completions(usize::MAX, &mut done);
                }
                Step::DriverDeliver(lens) => {
                    let before = snapshot(&driver, &owned);
                    let frames = frames_of(lens);
                    for f in &frames {
                        driver.push_rx(&[f]);
                        neighbour.push_rx(&[f]);
                    }
                    driver.flush();
                    neighbour.flush();
                    prop_assert_eq!(before, snapshot(&driver, &owned), "driver wrote client-owned memory");
                }
                Step::DriverTakeTx => {
                    let before = snapshot(&driver, &owned);
                    batch.clear();
                    if driver.take_tx(&mut batch, usize::MAX).is_ok() {
                        for (seq, frame) in batch.iter_tagged() {
                            prop_assert!(frame.len() <= MAX_FRAME_LEN);
                            driver.complete(seq, TxStatus::Sent, frame.len() as u32).unwrap();
                        }
                    }
                    driver.flush();
                    let after = snapshot(&driver, &owned);
                    // Taking tx frames stores the driver's tx consumer index, which lives on
                    // the driver's line, not in `owned`; everything client-owned is untouched.
                    prop_assert_eq!(before, after, "driver wrote client-owned memory");
                }
                Step::DriverWaitCycle => {
                    let _ = driver.prepare_tx_wait();
                    driver.end_tx_wait();
                }
            }
        }
        // The neighbour, fed the same frames, is unaffected: it can still receive all of
        // them (up to its ring's size) and round-trip a transmission.
        let mut out = Vec::new();
        neighbour_client.recv_owned(usize::MAX, &mut out).unwrap();
        prop_assert_eq!(out.len() as u64, neighbour.counters().rx_frames);
        let f = vec![1u8; 100];
        prop_assert_eq!(neighbour_client.send(&[&[&f]]).unwrap().sent, 1);
        batch.clear();
        prop_assert_eq!(neighbour.take_tx(&mut batch, 10).unwrap(), 1);
        prop_assert_eq!(batch.get(0).unwrap(), &f[..]);
        // And the hostile queue's driver side still closes cleanly.
        driver.close();
        prop_assert!(client.is_closed());
    }
}

#[test]
fn impossible_client_index_is_a_fault_on_that_queue_only() {
    let (mut driver, mut client) = pair();
    let layout = *driver.layout();
    // The client claims to have published 1,000 slots in a 64-slot ring.
    rustix::io::pwrite(
        driver.memfd().unwrap(),
        &1000u32.to_ne_bytes(),
        layout.tx.producer_line as u64,
    )
    .unwrap();
    let mut batch = FrameBatch::new();
    assert!(driver.take_tx(&mut batch, 10).is_err());
    assert_eq!(driver.counters().index_faults, 1);
    // A consumer index ahead of the producer: rx deliveries drop, counted as unusable.
    rustix::io::pwrite(
        driver.memfd().unwrap(),
        &5u32.to_ne_bytes(),
        layout.rx.consumer_line as u64,
    )
    .unwrap();
    let f = vec![0u8; 60];
    assert_eq!(driver.push_rx(&[&f]), netmux_ring::RxOutcome::DroppedFault);
    assert_eq!(driver.counters().rx_dropped_unusable, 1);
    drop(client.send(&[&[&f]]));
}

#[test]
fn malformed_tx_slot_is_rejected_with_a_completion_and_the_ring_moves_on() {
    let (mut driver, mut client) = pair();
    let layout = *driver.layout();
    let f = vec![7u8; 100];
    assert_eq!(client.send(&[&[&f], &[&f]]).unwrap().sent, 2);
    // Corrupt the first frame's length beyond the slot payload.
    rustix::io::pwrite(
        driver.memfd().unwrap(),
        &100_000u32.to_ne_bytes(),
        layout.tx.slot(0) as u64,
    )
    .unwrap();
    let mut batch = FrameBatch::new();
    assert_eq!(driver.take_tx(&mut batch, 10).unwrap(), 1);
    assert_eq!(batch.tag(0), Some(1));
    assert_eq!(batch.get(0).unwrap(), &f[..]);
    driver.complete(1, TxStatus::Sent, 100).unwrap();
    driver.flush();
    let mut done = Vec::new();
    client.completions(10, &mut done).unwrap();
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].seq, 0);
    assert_eq!(done[0].status, TxStatus::RejectedMalformed);
    assert_eq!(done[1].seq, 1);
    assert!(done[1].status.is_sent());
    assert_eq!(driver.counters().tx_malformed, 1);
}

#[test]
fn partial_multi_slot_frame_is_rejected_not_waited_for() {
    let (mut driver, mut client) = pair();
    let layout = *driver.layout();
    let f = vec![7u8; 3000]; // two slots
    assert_eq!(client.send(&[&[&f]]).unwrap().sent, 1);
    // The client pretends it published only the first of the two slots.
    let published = 1u32;
    rustix::io::pwrite(
        driver.memfd().unwrap(),
        &published.to_ne_bytes(),
        layout.tx.producer_line as u64,
    )
    .unwrap();
    let mut batch = FrameBatch::new();
    assert_eq!(driver.take_tx(&mut batch, 10).unwrap(), 0);
    assert_eq!(driver.counters().tx_malformed, 1);
}

#[test]
fn rewriting_a_tx_slot_after_the_driver_took_it_leaves_the_private_copy_alone() {
    let (mut driver, mut client) = pair();
    let layout = *driver.layout();
    let original = vec![0x11u8; 1500];
    assert_eq!(client.send(&[&[&original]]).unwrap().sent, 1);
    let mut batch = FrameBatch::new();
    assert_eq!(driver.take_tx(&mut batch, 1).unwrap(), 1);
    // The client rewrites the payload and the header of the slot it already handed over,
    // as it would to race the tx check.
    let forged = vec![0x66u8; 1500];
    let slot = layout.tx.slot(0) as u64;
    rustix::io::pwrite(driver.memfd().unwrap(), &forged, slot + 8).unwrap();
    rustix::io::pwrite(driver.memfd().unwrap(), &9u32.to_ne_bytes(), slot).unwrap();
    assert_eq!(
        batch.get(0).unwrap(),
        &original[..],
        "the checked copy is private"
    );
}
