//! Behaviour of the shared-memory rings through their public API, driver and client in one
//! process (they still talk only through the memfd and the doorbell).

use std::time::Duration;

use netmux_ring::{
    AttachError, ClientQueue, DriverQueue, FrameBatch, QueueConfig, QueueError, RxOutcome,
    TxStatus, MAX_FRAME_LEN,
};

fn small_config() -> QueueConfig {
    // 2048-byte slots: a 64 KiB frame needs 33 slots, so 64 is the smallest frame ring.
    QueueConfig {
        slot_size: 2048,
        rx_slots: 64,
        tx_slots: 64,
        completion_slots: 8,
    }
}

fn pair(config: &QueueConfig) -> (DriverQueue, ClientQueue) {
    let driver = DriverQueue::create(config).expect("create queue");
    let fds = driver.client_fds().expect("dup fds");
    let client = ClientQueue::from_fds(fds.memfd, fds.doorbell).expect("attach client");
    (driver, client)
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn recv_all(client: &mut ClientQueue) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    client.recv_owned(usize::MAX, &mut out).expect("recv");
    out
}

#[test]
fn rx_frames_arrive_in_order_with_their_bytes() {
    let (mut driver, mut client) = pair(&small_config());
    let frames: Vec<Vec<u8>> = (0..10).map(|i| frame(60 + i * 100, i as u8)).collect();
    let views: Vec<[&[u8]; 1]> = frames.iter().map(|f| [f.as_slice()]).collect();
    let batch: Vec<&[&[u8]]> = views.iter().map(|v| &v[..]).collect();
    assert_eq!(driver.deliver(&batch), 10);
    assert_eq!(recv_all(&mut client), frames);
    assert!(recv_all(&mut client).is_empty());
}

#[test]
fn rx_wraps_around_the_ring_many_times() {
    let (mut driver, mut client) = pair(&small_config());
    // 64 slots; 1,000 rounds of 3 frames (one of them two slots long) wrap the indices
    // around the ring dozens of times.
    for round in 0..1000u32 {
        let frames = [frame(100, round as u8), frame(3000, 7), frame(1, 9)];
        for f in &frames {
            assert_eq!(driver.push_rx(&[f]), RxOutcome::Queued, "round {round}");
        }
        driver.flush();
        assert_eq!(recv_all(&mut client), frames, "round {round}");
    }
    assert_eq!(driver.counters().rx_frames, 3000);
    assert_eq!(client.counters().rx_frames, 3000);
}

#[test]
fn frames_up_to_64k_span_slots_and_survive_gather_and_scatter() {
    let (mut driver, mut client) = pair(&small_config());
    let big = frame(MAX_FRAME_LEN, 3);
    // Gather from uneven vectors that straddle slot boundaries.
    let (a, rest) = big.split_at(13);
    let (b, c) = rest.split_at(4000);
    assert_eq!(driver.push_rx(&[a, b, c]), RxOutcome::Queued);
    driver.flush();
    // Scatter into three uneven vectors.
    let mut v1 = vec![0u8; 1];
    let mut v2 = vec![0u8; 40_000];
    let mut v3 = vec![0u8; MAX_FRAME_LEN - 40_001];
    let mut vectors: [&mut [u8]; 3] = [&mut v1, &mut v2, &mut v3];
    let mut frames: [&mut [&mut [u8]]; 1] = [&mut vectors];
    let mut lens = [0usize; 1];
    assert_eq!(client.recv(&mut frames, &mut lens).unwrap(), 1);
    assert_eq!(lens[0], MAX_FRAME_LEN);
    let joined: Vec<u8> = [v1, v2, v3].concat();
    assert_eq!(joined, big);
}

#[test]
fn scatter_into_short_vectors_truncates_and_reports_the_full_length() {
    let (mut driver, mut client) = pair(&small_config());
    let f = frame(3000, 1);
    driver.deliver(&[&[&f]]);
    let mut small = [0u8; 100];
    let mut vectors: [&mut [u8]; 1] = [&mut small];
    let mut frames: [&mut [&mut [u8]]; 1] = [&mut vectors];
    let mut lens = [0usize];
    assert_eq!(client.recv(&mut frames, &mut lens).unwrap(), 1);
    assert_eq!(lens[0], 3000);
    assert_eq!(&small[..], &f[..100]);
}

#[test]
fn oversized_rx_frame_is_dropped_and_counted() {
    let (mut driver, _client) = pair(&small_config());
    let f = vec![0u8; MAX_FRAME_LEN + 1];
    assert_eq!(driver.push_rx(&[&f]), RxOutcome::DroppedTooLarge);
    assert_eq!(driver.counters().rx_dropped_too_large, 1);
}

#[test]
fn full_rx_ring_drops_for_that_queue_only_and_counts() {
    let (mut full, mut full_client) = pair(&small_config());
    let (mut other, mut other_client) = pair(&small_config());
    let f = frame(1500, 0);
    let mut queued = 0;
    for _ in 0..100 {
        if full.push_rx(&[&f]) == RxOutcome::Queued {
            queued += 1;
        }
        assert_eq!(other.push_rx(&[&f]), RxOutcome::Queued);
        other.flush();
        assert_eq!(recv_all(&mut other_client).len(), 1);
    }
    full.flush();
    assert_eq!(queued, 64, "one slot per frame, 64 slots");
    assert_eq!(full.counters().rx_dropped_full, 36);
    assert_eq!(full_client.counters().rx_dropped_full, 36);
    assert_eq!(other.counters().rx_dropped_full, 0);
    // Draining makes room again.
    assert_eq!(recv_all(&mut full_client).len(), 64);
    assert_eq!(full.push_rx(&[&f]), RxOutcome::Queued);
}

#[test]
fn batches_of_every_size_round_trip_through_tx_and_completions() {
    let (mut driver, mut client) = pair(&QueueConfig {
        completion_slots: 64,
        ..small_config()
    });
    let mut batch = FrameBatch::new();
    let mut completions = Vec::new();
    let mut seq = 0u64;
    for size in [1usize, 2, 7, 16, 33, 64] {
        let frames: Vec<Vec<u8>> = (0..size).map(|i| frame(60 + i, i as u8)).collect();
        let views: Vec<[&[u8]; 1]> = frames.iter().map(|f| [f.as_slice()]).collect();
        let refs: Vec<&[&[u8]]> = views.iter().map(|v| &v[..]).collect();
        let outcome = client.send(&refs).unwrap();
        assert_eq!(outcome.sent, size);
        assert_eq!(outcome.first_seq, seq);
        batch.clear();
        assert_eq!(driver.take_tx(&mut batch, usize::MAX).unwrap(), size);
        for (i, (tag, bytes)) in batch.iter_tagged().enumerate() {
            assert_eq!(tag, seq + i as u64);
            assert_eq!(bytes, frames[i].as_slice());
        }
        for (tag, bytes) in batch.iter_tagged() {
            let status = if tag % 2 == 0 {
                TxStatus::Sent
            } else {
                TxStatus::RejectedSourceIp
            };
            driver.complete(tag, status, bytes.len() as u32).unwrap();
        }
        driver.flush();
        completions.clear();
        assert_eq!(
            client.completions(usize::MAX, &mut completions).unwrap(),
            size
        );
        for (i, c) in completions.iter().enumerate() {
            assert_eq!(c.seq, seq + i as u64);
            assert_eq!(c.status.is_sent(), c.seq % 2 == 0);
            assert_eq!(c.len as usize, frames[i].len());
        }
        seq += size as u64;
    }
}

#[test]
fn tx_stops_when_ring_is_full_and_resumes_after_the_driver_drains() {
    let (mut driver, mut client) = pair(&QueueConfig {
        completion_slots: 128,
        ..small_config()
    });
    let f = frame(3000, 0); // two slots each
    let one: [&[u8]; 1] = [&f];
    let frames: Vec<&[&[u8]]> = vec![&one[..]; 40];
    // 40 frames need 80 slots of 64: refused whole, nothing written.
    assert!(matches!(
        client.send(&frames),
        Err(QueueError::BatchTooLarge {
            needed: 80,
            capacity: 64
        })
    ));
    let outcome = client.send(&frames[..32]).unwrap();
    assert_eq!(outcome.sent, 32);
    assert!(matches!(
        client.send(&frames[..1]),
        Err(QueueError::WouldBlock { needed: 2, free: 0 })
    ));
    let mut batch = FrameBatch::new();
    assert_eq!(driver.take_tx(&mut batch, 10).unwrap(), 10);
    // 20 slots free: a batch of 11 frames (22 slots) is refused whole, one of 10 taken.
    assert!(matches!(
        client.send(&frames[..11]),
        Err(QueueError::WouldBlock {
            needed: 22,
            free: 20
        })
    ));
    let outcome = client.send(&frames[..10]).unwrap();
    assert_eq!((outcome.sent, outcome.first_seq), (10, 32));
    assert_eq!(driver.take_tx(&mut batch, usize::MAX).unwrap(), 32);
    for (i, tag) in (0..batch.len()).map(|i| batch.tag(i).unwrap()).enumerate() {
        assert_eq!(
            tag, i as u64,
            "no sequence number was spent on a refused batch"
        );
    }
}

#[test]
fn a_tx_limit_is_the_clients_txbuf_and_waiters_see_it_change() {
    let (mut driver, mut client) = pair(&QueueConfig {
        completion_slots: 128,
        ..small_config()
    });
    let f = frame(1500, 0); // one slot each
    let one: [&[u8]; 1] = [&f];
    driver.set_tx_limit(Some(4));
    assert_eq!((driver.tx_limit(), client.tx_capacity()), (Some(4), 4));
    let frames: Vec<&[&[u8]]> = vec![&one[..]; 5];
    assert!(matches!(
        client.send(&frames),
        Err(QueueError::BatchTooLarge {
            needed: 5,
            capacity: 4
        })
    ));
    assert_eq!(client.send(&frames[..3]).unwrap().sent, 3);
    assert!(client.can_send(1500));
    assert_eq!(client.send(&frames[..1]).unwrap().sent, 1);
    assert!(!client.can_send(1500));
    assert!(matches!(
        client.send(&frames[..1]),
        Err(QueueError::WouldBlock { needed: 1, free: 0 })
    ));
    // A waiter for room is woken when the limit is raised.
    let waiter = std::thread::spawn(move || {
        let room = client
            .wait_writable_slots(2, Some(Duration::from_secs(20)))
            .unwrap();
        (room, client)
    });
    std::thread::sleep(Duration::from_millis(50));
    driver.set_tx_limit(None);
    let (room, mut client) = waiter.join().unwrap();
    assert!(room);
    assert_eq!(client.tx_capacity(), 64);
    assert_eq!(client.send(&frames).unwrap().sent, 5);
}

#[test]
fn send_wait_blocks_until_the_whole_batch_fits_and_times_out_writing_nothing() {
    let (mut driver, mut client) = pair(&QueueConfig {
        completion_slots: 128,
        ..small_config()
    });
    let f = frame(1500, 0);
    let one: [&[u8]; 1] = [&f];
    let frames: Vec<&[&[u8]]> = vec![&one[..]; 64];
    assert_eq!(client.send(&frames).unwrap().sent, 64);
    assert!(matches!(
        client.send_wait(&frames[..3], Some(Duration::from_millis(30))),
        Err(QueueError::WouldBlock { needed: 3, free: 0 })
    ));
    let sender = std::thread::spawn(move || {
        let f = frame(1500, 0);
        let one: [&[u8]; 1] = [&f];
        let outcome = client
            .send_wait(&[&one[..]; 3], Some(Duration::from_secs(20)))
            .unwrap();
        (outcome, client)
    });
    let mut batch = FrameBatch::new();
    // One slot at a time: the sender waits until three are free, then writes all three.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(driver.take_tx(&mut batch, 1).unwrap(), 1);
        driver.flush();
    }
    let (outcome, _client) = sender.join().unwrap();
    assert_eq!((outcome.sent, outcome.first_seq), (3, 64));
}

#[test]
fn the_wake_fd_polls_readable_for_what_was_armed() {
    use rustix::event::{poll, PollFd, PollFlags};
    let (mut driver, mut client) = pair(&QueueConfig {
        completion_slots: 128,
        ..small_config()
    });
    let timeout = |ms: i64| rustix::event::Timespec {
        tv_sec: ms / 1000,
        tv_nsec: ms % 1000 * 1_000_000,
    };
    let readable = |client: &ClientQueue, ms| {
        let mut fds = [PollFd::from_borrowed_fd(client.wake_fd(), PollFlags::IN)];
        poll(&mut fds, Some(&timeout(ms))).unwrap() == 1
    };
    // Armed for rx: nothing yet, then a frame arrives.
    assert!(client.arm(true, None).unwrap(), "nothing there: poll");
    assert!(!readable(&client, 20));
    driver.deliver(&[&[&frame(60, 1)]]);
    assert!(readable(&client, 1000));
    client.disarm().unwrap();
    assert!(!readable(&client, 0), "disarm resets the descriptor");
    assert!(
        !client.arm(true, None).unwrap(),
        "a frame is there: do not sleep"
    );
    client.disarm().unwrap();
    assert_eq!(recv_all(&mut client).len(), 1);
    // Armed for room: the ring is full, then the driver takes a frame.
    let f = frame(1500, 0);
    let one: [&[u8]; 1] = [&f];
    assert_eq!(client.send(&vec![&one[..]; 64]).unwrap().sent, 64);
    assert!(client.arm(false, Some(1)).unwrap());
    assert!(!readable(&client, 20));
    let mut batch = FrameBatch::new();
    assert_eq!(driver.take_tx(&mut batch, 1).unwrap(), 1);
    driver.flush();
    assert!(readable(&client, 1000));
    client.disarm().unwrap();
    assert_eq!(client.send(&[&one[..]]).unwrap().sent, 1);
}

#[test]
fn full_completion_ring_holds_tx_back_and_counts_flow_control() {
    let (mut driver, mut client) = pair(&small_config()); // 8 completion slots
    let f = frame(60, 0);
    let one: [&[u8]; 1] = [&f];
    let frames: Vec<&[&[u8]]> = vec![&one[..]; 20];
    assert_eq!(client.send(&frames).unwrap().sent, 20);
    let mut batch = FrameBatch::new();
    assert_eq!(driver.take_tx(&mut batch, usize::MAX).unwrap(), 8);
    assert_eq!(driver.counters().tx_flow_control, 1);
    // Completing without the client reading completions does not free anything.
    for (tag, _) in batch.iter_tagged() {
        driver.complete(tag, TxStatus::Sent, 60).unwrap();
    }
    driver.flush();
    batch.clear();
    assert_eq!(driver.take_tx(&mut batch, usize::MAX).unwrap(), 0);
    let mut done = Vec::new();
    assert_eq!(client.completions(usize::MAX, &mut done).unwrap(), 8);
    assert_eq!(driver.take_tx(&mut batch, usize::MAX).unwrap(), 8);
}

#[test]
fn completing_a_frame_never_taken_is_refused() {
    let (mut driver, _client) = pair(&small_config());
    assert!(driver.complete(0, TxStatus::Sent, 60).is_err());
}

#[test]
fn closed_flag_is_observed_by_the_client_and_wakes_it() {
    let (mut driver, mut client) = pair(&small_config());
    let waiter = std::thread::spawn(move || {
        let woke = client.wait_readable(Some(Duration::from_secs(20))).unwrap();
        (woke, client)
    });
    std::thread::sleep(Duration::from_millis(50));
    driver.close();
    let (woke, mut client) = waiter.join().unwrap();
    assert!(woke);
    assert!(client.is_closed());
    assert!(matches!(recv_all_err(&mut client), QueueError::Closed));
    let f = frame(60, 0);
    assert!(matches!(client.send(&[&[&f]]), Err(QueueError::Closed)));
    assert_eq!(driver.push_rx(&[&f]), RxOutcome::DroppedClosed);
    let mut batch = FrameBatch::new();
    assert_eq!(driver.take_tx(&mut batch, 10).unwrap(), 0);
}

fn recv_all_err(client: &mut ClientQueue) -> QueueError {
    let mut out = Vec::new();
    client.recv_owned(10, &mut out).unwrap_err()
}

#[test]
fn client_sleeping_for_rx_is_woken_by_a_delivery() {
    let (mut driver, mut client) = pair(&small_config());
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        while got.len() < 500 {
            if client.recv_owned(64, &mut got).unwrap() == 0 {
                assert!(client.wait_readable(Some(Duration::from_secs(20))).unwrap());
            }
        }
        got
    });
    let mut sent = Vec::new();
    let mut i = 0u32;
    while sent.len() < 500 {
        let f = frame(64 + (i as usize % 3000), i as u8);
        if driver.push_rx(&[&f]) == RxOutcome::Queued {
            sent.push(f);
        } else {
            std::thread::yield_now();
        }
        i += 1;
        if i.is_multiple_of(7) {
            driver.flush();
        }
    }
    driver.flush();
    assert_eq!(reader.join().unwrap(), sent);
}

#[test]
fn driver_sleeping_for_tx_is_woken_by_a_send() {
    let (mut driver, mut client) = pair(&QueueConfig {
        completion_slots: 64,
        ..small_config()
    });
    assert!(driver.prepare_tx_wait().unwrap(), "empty ring: may sleep");
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        let f = frame(100, 1);
        assert_eq!(client.send(&[&[&f]]).unwrap().sent, 1);
        client
    });
    let wake_fd = driver.driver_wake_fd().try_clone_to_owned().unwrap();
    let mut fds = [rustix::event::PollFd::new(
        &wake_fd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::event::Timespec {
        tv_sec: 20,
        tv_nsec: 0,
    };
    assert_eq!(rustix::event::poll(&mut fds, Some(&timeout)).unwrap(), 1);
    driver.end_tx_wait();
    let mut batch = FrameBatch::new();
    assert_eq!(driver.take_tx(&mut batch, 10).unwrap(), 1);
    let _client = sender.join().unwrap();
}

#[test]
fn wait_readable_times_out_when_nothing_arrives() {
    let (_driver, mut client) = pair(&small_config());
    assert!(!client
        .wait_readable(Some(Duration::from_millis(10)))
        .unwrap());
}

#[test]
fn send_refuses_a_batch_containing_an_oversized_frame() {
    let (_driver, mut client) = pair(&small_config());
    let ok = frame(10, 0);
    let big = vec![0u8; MAX_FRAME_LEN + 1];
    let err = client.send(&[&[&ok], &[&big]]).unwrap_err();
    assert!(matches!(err, QueueError::FrameTooLarge { index: 1, .. }));
}

#[test]
fn attach_refuses_unsealed_memory() {
    let memfd = rustix::fs::memfd_create("fake", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memfd, 65536).unwrap();
    assert!(matches!(
        ClientQueue::from_fds(memfd, doorbell()),
        Err(AttachError::NotSealed)
    ));
}

fn sealed_memfd(bytes: &[u8], len: u64) -> std::os::fd::OwnedFd {
    use rustix::fs::{MemfdFlags, SealFlags};
    let memfd =
        rustix::fs::memfd_create("fake", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&memfd, len).unwrap();
    rustix::io::pwrite(&memfd, bytes, 0).unwrap();
    rustix::fs::fcntl_add_seals(&memfd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    memfd
}

/// A doorbell end whose peer is gone (attaching never rings it).
fn doorbell() -> std::os::fd::OwnedFd {
    netmux_ring::Doorbell::pair().unwrap().0.into()
}

#[test]
fn attach_refuses_memory_without_the_magic() {
    let memfd = sealed_memfd(b"not a ring", 65536);
    assert!(matches!(
        ClientQueue::from_fds(memfd, doorbell()),
        Err(AttachError::BadMagic(_))
    ));
}

#[test]
fn attach_refuses_memory_smaller_than_a_header() {
    let memfd = sealed_memfd(b"NMXRING1", 64);
    assert!(matches!(
        ClientQueue::from_fds(memfd, doorbell()),
        Err(AttachError::BadSize(64))
    ));
}

#[test]
fn attach_refuses_a_header_whose_geometry_needs_more_than_the_file() {
    // A genuine header copied into a file too short for the geometry it describes.
    let driver = DriverQueue::create(&small_config()).unwrap();
    let mut header = vec![0u8; 512];
    rustix::io::pread(driver.memfd().unwrap(), &mut header[..], 0).unwrap();
    let memfd = sealed_memfd(&header, 8192);
    assert!(matches!(
        ClientQueue::from_fds(memfd, doorbell()),
        Err(AttachError::LengthMismatch { file: 8192, .. })
    ));
}

#[test]
fn attach_refuses_a_header_with_impossible_geometry() {
    let driver = DriverQueue::create(&small_config()).unwrap();
    let mut header = vec![0u8; 512];
    rustix::io::pread(driver.memfd().unwrap(), &mut header[..], 0).unwrap();
    header[12..16].copy_from_slice(&1000u32.to_ne_bytes()); // slot size not a power of two
    let memfd = sealed_memfd(&header, driver.layout().total_len);
    assert!(matches!(
        ClientQueue::from_fds(memfd, doorbell()),
        Err(AttachError::Geometry(_))
    ));
}

#[test]
fn ring_memory_is_sealed_against_shrinking_and_growing() {
    let driver = DriverQueue::create(&small_config()).unwrap();
    let len = driver.layout().total_len;
    assert!(rustix::fs::ftruncate(driver.memfd().unwrap(), len / 2).is_err());
    assert!(rustix::fs::ftruncate(driver.memfd().unwrap(), len * 2).is_err());
    let seals = rustix::fs::fcntl_get_seals(driver.memfd().unwrap()).unwrap();
    assert!(seals.contains(rustix::fs::SealFlags::SEAL));
}

#[test]
fn geometry_too_small_for_a_maximum_frame_is_refused() {
    let config = QueueConfig {
        rx_slots: 16,
        ..small_config()
    };
    assert!(DriverQueue::create(&config).is_err());
    let config = QueueConfig {
        slot_size: 1000,
        ..small_config()
    };
    assert!(DriverQueue::create(&config).is_err());
}

#[test]
fn client_waiting_for_tx_room_is_woken_when_the_driver_drains() {
    let (mut driver, mut client) = pair(&QueueConfig {
        completion_slots: 128,
        ..small_config()
    });
    let f = frame(1500, 0);
    let one: [&[u8]; 1] = [&f];
    let frames: Vec<&[&[u8]]> = vec![&one[..]; 64];
    assert_eq!(client.send(&frames).unwrap().sent, 64, "ring now full");
    let waiter = std::thread::spawn(move || {
        let room = client
            .wait_writable(1500, Some(Duration::from_secs(20)))
            .unwrap();
        (room, client)
    });
    std::thread::sleep(Duration::from_millis(50));
    let mut batch = FrameBatch::new();
    assert_eq!(driver.take_tx(&mut batch, 8).unwrap(), 8);
    driver.flush();
    let (room, mut client) = waiter.join().unwrap();
    assert!(room);
    assert_eq!(client.send(&frames[..8]).unwrap().sent, 8);
}

mod framed_io {
    use super::*;
    use proptest::prelude::*;

    /// Splits `frame` into vectors at the given cut points.
    fn split<'a>(frame: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (frame.len() + 1)).collect();
        points.sort_unstable();
        let mut vectors = Vec::new();
        let mut at = 0;
        for p in points {
            vectors.push(&frame[at..p]);
            at = p;
        }
        vectors.push(&frame[at..]);
        vectors
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn frames_split_any_way_round_trip_through_rx_and_tx(
            lens in prop::collection::vec(0usize..9000, 1..12),
            cuts in prop::collection::vec(0usize..10_000, 0..5),
            scatter in 1usize..3000,
        ) {
            let (mut driver, mut client) = pair(&QueueConfig {
                completion_slots: 64,
                ..small_config()
            });
            let frames: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &l)| frame(l, i as u8)).collect();
            let gathered: Vec<Vec<&[u8]>> = frames.iter().map(|f| split(f, &cuts)).collect();
            let refs: Vec<&[&[u8]]> = gathered.iter().map(Vec::as_slice).collect();

            // rx: gather on the driver side, scatter into fixed-size vectors on the client.
            let queued = driver.deliver(&refs);
            let mut storage: Vec<Vec<u8>> = (0..frames.len() * 4).map(|_| vec![0u8; scatter]).collect();
            let mut per_frame: Vec<Vec<&mut [u8]>> = Vec::new();
            let mut chunks = storage.chunks_mut(4);
            for _ in 0..frames.len() {
                per_frame.push(chunks.next().unwrap().iter_mut().map(|v| &mut v[..]).collect());
            }
            let mut slots: Vec<&mut [&mut [u8]]> = per_frame.iter_mut().map(|v| &mut v[..]).collect();
            let mut out_lens = vec![0usize; frames.len()];
            let got = client.recv(&mut slots, &mut out_lens).unwrap();
            prop_assert_eq!(got, queued);
            drop(slots);
            for (i, f) in frames.iter().take(got).enumerate() {
                prop_assert_eq!(out_lens[i], f.len());
                let joined: Vec<u8> = per_frame[i].iter().flat_map(|v| v.iter().copied()).collect();
                let kept = f.len().min(4 * scatter);
                prop_assert_eq!(&joined[..kept], &f[..kept]);
            }

            // tx: gather on the client side, private copies on the driver side; a batch is
            // taken whole exactly when its slots fit.
            let needed = client.slots_needed(&refs).unwrap();
            let sent = match client.send(&refs) {
                Ok(outcome) => outcome.sent,
                Err(QueueError::BatchTooLarge { .. }) if needed > 64 => 0,
                Err(e) => panic!("{e}"),
            };
            prop_assert_eq!(sent == refs.len(), needed <= 64);
            let mut batch = FrameBatch::new();
            prop_assert_eq!(driver.take_tx(&mut batch, usize::MAX).unwrap(), sent);
            for (i, copy) in batch.iter().enumerate() {
                prop_assert_eq!(copy, frames[i].as_slice());
            }
        }
    }
}

#[test]
fn an_rx_limit_drops_what_would_exceed_it_and_counts_it_as_full() {
    let (mut driver, mut client) = pair(&small_config());
    driver.set_rx_limit(Some(2));
    assert_eq!(driver.rx_limit(), Some(2));
    let f = frame(100, 1);
    let outcomes: Vec<RxOutcome> = (0..4).map(|_| driver.push_rx(&[&f])).collect();
    assert_eq!(
        outcomes,
        [
            RxOutcome::Queued,
            RxOutcome::Queued,
            RxOutcome::DroppedFull,
            RxOutcome::DroppedFull
        ]
    );
    driver.flush();
    assert_eq!(recv_all(&mut client).len(), 2);
    // Read frames make room again; a frame longer than the limit never fits.
    assert_eq!(driver.push_rx(&[&f]), RxOutcome::Queued);
    assert_eq!(driver.push_rx(&[&frame(5000, 2)]), RxOutcome::DroppedFull);
    driver.set_rx_limit(None);
    assert_eq!(driver.rx_limit(), None);
    assert_eq!(driver.push_rx(&[&frame(5000, 2)]), RxOutcome::Queued);
    assert_eq!(driver.counters().rx_dropped_full, 3);
}

#[test]
fn a_flow_control_event_is_counted_once_however_often_the_driver_looks() {
    let (mut driver, mut client) = pair(&small_config()); // 8 completion slots
    let f = frame(60, 0);
    let one: [&[u8]; 1] = [&f];
    let frames: Vec<&[&[u8]]> = vec![&one[..]; 20];
    assert_eq!(client.send(&frames).unwrap().sent, 20);
    let mut batch = FrameBatch::new();
    assert_eq!(driver.take_tx(&mut batch, usize::MAX).unwrap(), 8);
    for _ in 0..5 {
        assert_eq!(driver.take_tx(&mut batch, usize::MAX).unwrap(), 0);
    }
    assert_eq!(
        driver.counters().tx_flow_control,
        1,
        "one event, looked at 6 times"
    );
    // The client reads its completions: transmission resumes, then stops again: a second event.
    for (tag, _) in batch.iter_tagged() {
        driver.complete(tag, TxStatus::Sent, 60).unwrap();
    }
    driver.flush();
    let mut done = Vec::new();
    client.completions(64, &mut done).unwrap();
    assert_eq!(done.len(), 8);
    batch.clear();
    assert_eq!(driver.take_tx(&mut batch, usize::MAX).unwrap(), 8);
    assert_eq!(driver.counters().tx_flow_control, 2);
}

#[test]
fn attach_refuses_a_doorbell_that_is_not_a_stream_socket() {
    let driver = DriverQueue::create(&small_config()).unwrap();
    let fds = driver.client_fds().unwrap();
    let eventfd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    assert!(matches!(
        ClientQueue::from_fds(fds.memfd, eventfd),
        Err(AttachError::Io(_))
    ));
}

/// (Descriptors are counted per process by `netd/tests/scale.rs`: tests here share one.)
#[test]
fn a_handed_out_queue_keeps_no_client_descriptor_and_one_doorbell_wakes_both_ways() {
    let mut driver = DriverQueue::create(&small_config()).unwrap();
    assert!(driver.memfd().is_some());
    let fds = driver.hand_out().expect("the client's descriptors");
    assert!(driver.hand_out().is_none(), "handed out once");
    assert!(driver.memfd().is_none(), "the driver keeps no memfd");
    assert!(
        driver.client_fds().is_err(),
        "nor the client's end of the doorbell"
    );
    let mut client = ClientQueue::from_fds(fds.memfd, fds.doorbell).unwrap();
    // Both ways through one doorbell: the client's send wakes the driver ...
    assert!(driver.prepare_tx_wait().unwrap());
    client.send(&[&[&frame(60, 1)]]).unwrap();
    let mut fds = [rustix::event::PollFd::from_borrowed_fd(
        driver.driver_wake_fd(),
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    assert_eq!(rustix::event::poll(&mut fds, Some(&zero)).unwrap(), 1);
    driver.end_tx_wait();
    let mut batch = FrameBatch::new();
    assert_eq!(driver.take_tx(&mut batch, 10).unwrap(), 1);
    // ... and the driver's delivery wakes the client, without the client's own ring waking it.
    assert!(!client
        .wait_readable(Some(Duration::from_millis(10)))
        .unwrap());
    let f = frame(60, 2);
    driver.deliver(&[&[&f]]);
    assert!(client.wait_readable(Some(Duration::from_secs(5))).unwrap());
}

#[test]
fn a_client_whose_driver_end_is_gone_is_closed_instead_of_waiting() {
    let (driver, mut client) = pair(&small_config());
    drop(driver);
    // Dropped without close(): as if the driver's process had ended.
    assert!(matches!(
        client.wait_readable(Some(Duration::from_secs(5))),
        Err(QueueError::Closed)
    ));
}
