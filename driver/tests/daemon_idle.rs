//! Idle queues cost nothing: the transmit path visits only queues with work; an
//! idle queue is parked, woken by its client's send, and its frames go out at once; many
//! parked queues do not disturb an active one; a queue closed while parked is gone cleanly.
//! Driven in-process, turn by turn.

mod daemon_common;

use daemon_common::*;
use netmux_driver::daemon::idle::{PARK_AFTER_IDLE_TURNS, WAKE_CHECK_TURNS};
use netmux_driver::daemon::Driver;
use netmux_proto::driver::{DriverRequest, QueueId};
use netmux_ring::{ClientQueue, Completion, QueueError, TxStatus};

const LINK_MAC: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 1];
const HOST: [u8; 4] = [10, 0, 0, 1];
const REMOTE: [u8; 4] = [10, 0, 0, 2];

fn queue(driver: &mut Driver, id: u32) -> ClientQueue {
    queue_in(driver, id, netmux_proto::driver::DEFAULT_INSTANCE)
}

/// Queue `queue` owns UDP `HOST:port` both ways.
fn bind_udp(driver: &mut Driver, queue: u32, port: u16) {
    bind_udp_in(driver, queue, u64::from(port) * 10, LINK_MAC, HOST, port);
}

fn from_host(port: u16, payload: usize) -> Vec<u8> {
    udp_frame(LINK_MAC, PEER_MAC, HOST, port, REMOTE, 4000, payload)
}

fn to_host(port: u16) -> Vec<u8> {
    udp_frame(PEER_MAC, LINK_MAC, REMOTE, 4000, HOST, port, 20)
}

fn send(q: &mut ClientQueue, frame: &[u8]) {
    q.send(&[&[frame]]).expect("send");
}

fn completions(q: &mut ClientQueue) -> Vec<Completion> {
    let mut out = Vec::new();
    q.completions(1024, &mut out).expect("completions");
    out
}

/// Frames taken in the turns within which the driver looks at its parked queues' wake-ups.
fn wake_turns(driver: &mut Driver) -> usize {
    (0..WAKE_CHECK_TURNS).map(|_| driver.poll_tx()).sum()
}

/// Turns without frames: enough for every idle queue to be parked.
fn idle_turns(driver: &mut Driver) {
    for _ in 0..PARK_AFTER_IDLE_TURNS + 1 {
        driver.poll_tx();
    }
}

#[test]
fn an_idle_queue_is_parked_and_its_clients_send_wakes_it_and_goes_out_within_a_few_turns() {
    let (mut driver, wire) = in_process(LINK_MAC);
    let mut client = queue(&mut driver, 1);
    bind_udp(&mut driver, 1, 5000);
    assert_eq!(driver.active_queue_count(), 1, "a new queue is active");
    idle_turns(&mut driver);
    assert_eq!(
        driver.active_queue_count(),
        0,
        "an idle queue leaves the turns"
    );
    assert_eq!(driver.parked_queue_count(), 1);
    for round in 0..3u8 {
        let frame = from_host(5000, 20 + usize::from(round));
        send(&mut client, &frame);
        // Within the turns between two looks at the wake-ups, the queue wakes and its frame
        // is taken.
        assert_eq!(wake_turns(&mut driver), 1, "round {round}: taken");
        assert_eq!(wire.tx.lock().unwrap().last(), Some(&frame));
        let done = completions(&mut client);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].status, TxStatus::Sent);
        assert_eq!(driver.active_queue_count(), 1, "a woken queue is active");
        assert_eq!(driver.parked_queue_count(), 0);
        idle_turns(&mut driver);
        assert_eq!(driver.parked_queue_count(), 1, "and is parked again");
    }
}

#[test]
fn a_queue_that_keeps_sending_stays_active() {
    let (mut driver, wire) = in_process(LINK_MAC);
    let mut client = queue(&mut driver, 1);
    bind_udp(&mut driver, 1, 5000);
    for i in 0..(3 * PARK_AFTER_IDLE_TURNS as usize) {
        if i % (PARK_AFTER_IDLE_TURNS as usize / 2) == 0 {
            send(&mut client, &from_host(5000, 20));
        }
        driver.poll_tx();
        assert_eq!(driver.parked_queue_count(), 0, "turn {i}");
    }
    assert_eq!(wire.tx.lock().unwrap().len(), 6);
}

#[test]
fn sleeping_parks_every_queue_and_a_send_during_the_sleep_wakes_only_that_queue() {
    let (mut driver, wire) = in_process(LINK_MAC);
    let mut clients: Vec<ClientQueue> = (1..=3).map(|q| queue(&mut driver, q)).collect();
    for q in 1..=3u32 {
        bind_udp(&mut driver, q, 5000 + q as u16);
    }
    assert!(driver.queue_wake_fd().is_some());
    assert!(driver.prepare_sleep(), "nothing to send: sleep");
    assert_eq!(driver.parked_queue_count(), 3);
    // What the control loop's sleep waits for: the one descriptor becomes readable.
    let frame = from_host(5002, 30);
    send(&mut clients[1], &frame);
    let wake = driver.queue_wake_fd().expect("wake fd");
    let mut fds = [rustix::event::PollFd::from_borrowed_fd(
        wake,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    assert_eq!(rustix::event::poll(&mut fds, Some(&zero)).unwrap(), 1);
    driver.end_sleep();
    assert_eq!(driver.active_queue_count(), 1, "only the sender woke");
    assert_eq!(driver.parked_queue_count(), 2);
    assert_eq!(driver.poll_tx(), 1);
    assert_eq!(wire.tx.lock().unwrap().as_slice(), &[frame]);
    // Frames waiting in an active queue's ring: the driver does not sleep, and they go out.
    let frame = from_host(5002, 31);
    send(&mut clients[1], &frame);
    assert!(!driver.prepare_sleep(), "frames wait: no sleep");
    driver.end_sleep();
    assert_eq!(driver.poll_tx(), 1);
    assert_eq!(wire.tx.lock().unwrap().last(), Some(&frame));
    assert!(completions(&mut clients[1])
        .iter()
        .all(|c| c.status == TxStatus::Sent));
}

#[test]
fn two_thousand_idle_queues_and_an_active_one_exchange_frames_correctly() {
    const IDLE: u32 = 2_000;
    let (mut driver, wire) = in_process(LINK_MAC);
    let mut idle: Vec<ClientQueue> = (1..=IDLE).map(|q| queue(&mut driver, q)).collect();
    for q in 1..=IDLE {
        bind_udp(&mut driver, q, 10_000 + q as u16);
    }
    let mut active = queue(&mut driver, 0);
    bind_udp(&mut driver, 0, 5000);
    idle_turns(&mut driver);
    assert_eq!(driver.parked_queue_count() as u32, IDLE + 1);
    // The active client sends and receives, batch after batch; the idle ones stay parked.
    let mut expected = Vec::new();
    let mut received = 0;
    for round in 0..20usize {
        let frames: Vec<Vec<u8>> = (0..8)
            .map(|i| from_host(5000, 20 + round * 8 + i))
            .collect();
        let slices: Vec<[&[u8]; 1]> = frames.iter().map(|f| [f.as_slice()]).collect();
        let batch: Vec<&[&[u8]]> = slices.iter().map(|s| &s[..]).collect();
        active.send(&batch).expect("send");
        // The first round wakes the active queue (parked while everything idled).
        let mut taken = 0;
        for turn in 0..WAKE_CHECK_TURNS {
            taken += driver.poll_tx();
            if turn < 4 {
                wire.rx.lock().unwrap().push(to_host(5000));
            }
            driver.poll_rx();
        }
        assert_eq!(taken, 8, "round {round}");
        received += active.recv_owned(64, &mut Vec::new()).expect("recv");
        expected.extend(frames);
        let done = completions(&mut active);
        assert_eq!(done.len(), 8);
        assert!(done.iter().all(|c| c.status == TxStatus::Sent));
        assert_eq!(driver.active_queue_count(), 1, "round {round}");
        assert_eq!(driver.parked_queue_count() as u32, IDLE);
    }
    assert_eq!(*wire.tx.lock().unwrap(), expected, "in order, nothing else");
    assert_eq!(received, 80, "every frame for the active queue arrived");
    // A few idle clients send at once: each frame goes out within a few turns, once.
    let wakers = [1u32, 777, 1_500, IDLE];
    wire.tx.lock().unwrap().clear();
    for &q in &wakers {
        send(&mut idle[q as usize - 1], &from_host(10_000 + q as u16, 20));
    }
    let taken = wake_turns(&mut driver);
    assert_eq!(taken, wakers.len());
    let sent = wire.tx.lock().unwrap().clone();
    for &q in &wakers {
        assert_eq!(
            sent.iter()
                .filter(|f| **f == from_host(10_000 + q as u16, 20))
                .count(),
            1,
            "queue {q}"
        );
        let done = completions(&mut idle[q as usize - 1]);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].status, TxStatus::Sent);
    }
    // Only the senders woke (the active queue stays active).
    assert_eq!(
        driver.parked_queue_count() as u32,
        IDLE - wakers.len() as u32
    );
}

#[test]
fn a_queue_closed_while_parked_is_gone_cleanly_and_its_id_can_be_used_again() {
    let (mut driver, wire) = in_process(LINK_MAC);
    let mut first = queue(&mut driver, 1);
    let mut other = queue(&mut driver, 2);
    bind_udp(&mut driver, 1, 5000);
    bind_udp(&mut driver, 2, 5001);
    idle_turns(&mut driver);
    assert_eq!(driver.parked_queue_count(), 2);
    ok(
        &mut driver,
        DriverRequest::DestroyQueue { queue: QueueId(1) },
    );
    assert_eq!(driver.parked_queue_count(), 1);
    assert_eq!(driver.queue_count(), 1);
    assert!(first.is_closed());
    assert!(matches!(
        first.send(&[&[&from_host(5000, 20)]]),
        Err(QueueError::Closed)
    ));
    for _ in 0..10 {
        assert_eq!(driver.poll_tx(), 0);
    }
    // The id again, with new rings: active, and its frames go out.
    let mut again = queue(&mut driver, 1);
    bind_udp(&mut driver, 1, 5000);
    assert_eq!(driver.active_queue_count(), 1);
    let frame = from_host(5000, 40);
    send(&mut again, &frame);
    assert_eq!(driver.poll_tx(), 1, "a new queue is active at once");
    assert_eq!(wire.tx.lock().unwrap().as_slice(), &[frame]);
    // The other parked queue was never disturbed, and still wakes.
    let frame = from_host(5001, 40);
    send(&mut other, &frame);
    let taken = wake_turns(&mut driver);
    assert_eq!(taken, 1);
    assert_eq!(wire.tx.lock().unwrap().last(), Some(&frame));
}

#[test]
fn a_queue_destroyed_while_active_or_reconfigured_while_parked_keeps_the_schedule_right() {
    let (mut driver, wire) = in_process(LINK_MAC);
    let _gone = queue(&mut driver, 1);
    ok(
        &mut driver,
        DriverRequest::DestroyQueue { queue: QueueId(1) },
    );
    assert_eq!(driver.poll_tx(), 0);
    assert_eq!(driver.active_queue_count(), 0);
    let client = queue(&mut driver, 2);
    bind_udp(&mut driver, 2, 5000);
    idle_turns(&mut driver);
    assert_eq!(driver.parked_queue_count(), 1);
    // New rings for a parked queue: the old client's queue ends, the new one is active.
    let response = driver.handle(DriverRequest::SetQueueConfig {
        queue: QueueId(2),
        config: SMALL,
    });
    let fds = response.fds.expect("new descriptors");
    assert!(client.is_closed());
    let mut client = attach(vec![fds.memfd, fds.doorbell]);
    assert_eq!(driver.parked_queue_count(), 0);
    let frame = from_host(5000, 50);
    send(&mut client, &frame);
    assert_eq!(driver.poll_tx(), 1);
    assert_eq!(wire.tx.lock().unwrap().as_slice(), &[frame]);
    idle_turns(&mut driver);
    assert_eq!(driver.parked_queue_count(), 1);
    // Failing closed forgets every queue, parked or not.
    driver.fail_closed();
    assert_eq!(driver.parked_queue_count(), 0);
    assert_eq!(driver.active_queue_count(), 0);
    assert!(client.is_closed());
}

#[test]
fn through_the_control_loop_a_parked_queues_send_wakes_the_sleeping_driver_every_time() {
    use netmux_driver::daemon::control::{DriverThread, ServerOptions, IDLE_POLL};
    use std::time::{Duration, Instant};

    let (driver, wire) = in_process(LINK_MAC);
    let dir = netmux_testkit::TempDir::new("netmux-driver-idle-loop");
    let path = dir.join("driver.sock");
    let thread = DriverThread::spawn(&path, driver, ServerOptions::default()).unwrap();
    let (mut netd, _) = Netd::connect(&path);
    let mut client = netd.queue(1);
    netd.bind_udp(1, HOST, 5000, LINK_MAC);
    let _idle: Vec<ClientQueue> = (2..200).map(|q| netd.queue(q)).collect();
    let mut waits = Vec::new();
    for round in 0..20usize {
        // Long enough for the driver to stop spinning and sleep (every queue parked), or
        // short enough to find it spinning.
        std::thread::sleep(Duration::from_millis(if round % 2 == 0 { 30 } else { 0 }));
        let frame = from_host(5000, 20 + round);
        let start = Instant::now();
        send(&mut client, &frame);
        let deadline = start + Duration::from_secs(5);
        while !wire.tx.lock().unwrap().contains(&frame) {
            assert!(
                Instant::now() < deadline,
                "round {round}: the frame never went out"
            );
            std::thread::yield_now();
        }
        waits.push(start.elapsed());
    }
    waits.sort();
    // Woken by the send, not found by a timed-out sleep.
    assert!(
        waits[waits.len() / 2] < IDLE_POLL / 2,
        "median wait {:?}",
        waits[waits.len() / 2]
    );
    let done = completions(&mut client);
    assert_eq!(done.len(), 20);
    assert!(done.iter().all(|c| c.status == TxStatus::Sent));
    thread.stop().unwrap();
}

/// Whether the driver's one wake-up descriptor is readable now.
fn wake_pending(driver: &Driver) -> bool {
    let Some(wake) = driver.queue_wake_fd() else {
        return false;
    };
    let mut fds = [rustix::event::PollFd::from_borrowed_fd(
        wake,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).unwrap() > 0
}

#[test]
fn a_queue_whose_client_hung_up_sends_what_it_sent_and_then_no_longer_wakes_the_driver() {
    let (mut driver, wire) = in_process(LINK_MAC);
    let mut leaving = queue(&mut driver, 1);
    let _staying = queue(&mut driver, 2);
    let silent = queue(&mut driver, 3);
    bind_udp(&mut driver, 1, 5001);
    bind_udp(&mut driver, 3, 5003);
    assert!(driver.prepare_sleep(), "nothing to send: sleep");
    driver.end_sleep();
    assert_eq!(driver.parked_queue_count(), 3);
    // One client sends and leaves at once, another leaves without a word.
    let frame = from_host(5001, 40);
    send(&mut leaving, &frame);
    drop(leaving);
    drop(silent);
    assert!(wake_pending(&driver));
    driver.end_sleep();
    // The frame sent before the hang-up goes out; the silent queue costs nothing more.
    assert_eq!(driver.poll_tx(), 1);
    assert_eq!(wire.tx.lock().unwrap().as_slice(), &[frame]);
    assert_eq!(
        driver.parked_queue_count(),
        1,
        "only the staying client's queue"
    );
    assert_eq!(driver.active_queue_count(), 1, "the sender, until it idles");
    // A closed end stays readable for ever; the driver's wake-up must not.
    assert!(driver.prepare_sleep());
    assert!(
        !wake_pending(&driver),
        "a hung-up queue keeps waking the driver"
    );
    driver.end_sleep();
    assert_eq!(driver.active_queue_count(), 0);
    assert_eq!(driver.parked_queue_count(), 1);
    // Both go away cleanly when netd destroys them.
    for q in [1, 3] {
        ok(
            &mut driver,
            DriverRequest::DestroyQueue { queue: QueueId(q) },
        );
    }
    assert_eq!(driver.queue_count(), 1);
}
