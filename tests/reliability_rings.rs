//! Reliability of the shared-memory rings across processes: a client that never drains its rx
//! ring costs the other clients nothing.
//!
//! The test process plays the driver: it creates two queues and passes each one's descriptors
//! (memfd and eventfds, by `SCM_RIGHTS` over `proto::Channel`, as netd would) to a client
//! process of its own — this test binary run again with `NETMUX_RELIABILITY_ROLE` set. One
//! client attaches and never reads; the other drains every batch and reports what it got. The
//! driver writes every frame to both queues. The stuck queue fills and then drops, counting
//! each drop in its own counters; the draining one loses nothing and gets every frame
//! byte-exact.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::time::Duration;

use netmux_proto::Channel;
use netmux_ring::{ClientQueue, DriverQueue, QueueConfig, RxOutcome};

/// Selects the client role when this binary runs as a child process.
const ROLE_ENV: &str = "NETMUX_RELIABILITY_ROLE";
/// Frames per batch: a quarter of the rx ring, so the draining client never falls behind by
/// more than the ring holds.
const BATCH: usize = 64;
/// Batches: the stuck ring (256 one-slot frames) is full after four, the rest all drop.
const BATCHES: usize = 12;
const RX_SLOTS: u32 = 256;
/// How long a client waits for anything before it gives up (a hung test fails, not hangs).
const CLIENT_PATIENCE: Duration = Duration::from_secs(20);

fn frame(seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 128];
    f[..4].copy_from_slice(&seq.to_be_bytes());
    f[4] = (seq % 251) as u8;
    f
}

/// Runs this test binary again as a client in `role`, connected through `sock` (inherited as
/// descriptor 3).
fn spawn_client(role: &str, sock: UnixStream) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "client_process_entry_point",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE_ENV, role)
    .stdout(std::process::Stdio::null());
    netmux_testkit::bins::spawn_with_fd3(cmd, sock)
}

/// The entry point of the client processes; does nothing in an ordinary test run.
#[test]
fn client_process_entry_point() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    // SAFETY: descriptor 3 was set up by `spawn_client` and is owned by nobody else here.
    let sock = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(3) };
    let mut ch = Channel::new(sock);
    let ((), fds) = ch.recv::<()>().expect("queue descriptors");
    let [memfd, doorbell]: [_; 2] = fds.try_into().expect("two descriptors");
    let mut q = ClientQueue::from_fds(memfd, doorbell).expect("attach");
    ch.send(&"attached", &[]).unwrap();
    match role.as_str() {
        "stuck" => {
            // Never reads the ring; waits for the driver to say it is over.
            let _ = ch.recv::<String>();
        }
        "drain" => loop {
            let (n, _): (u32, _) = match ch.recv() {
                Ok(m) => m,
                Err(_) => return,
            };
            let mut got: Vec<Vec<u8>> = Vec::new();
            while got.len() < n as usize {
                q.recv_owned(BATCH, &mut got).expect("recv");
                if got.len() < n as usize {
                    assert!(q.wait_readable(Some(CLIENT_PATIENCE)).unwrap());
                }
            }
            ch.send(&got, &[]).unwrap();
        },
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn a_client_that_never_drains_loses_frames_alone_and_the_others_lose_none() {
    let config = QueueConfig {
        rx_slots: RX_SLOTS,
        ..QueueConfig::default()
    };
    let mut stuck_q = DriverQueue::create(&config).unwrap();
    let mut drain_q = DriverQueue::create(&config).unwrap();
    let mut clients = Vec::new();
    let mut channels = Vec::new();
    for (role, q) in [("stuck", &stuck_q), ("drain", &drain_q)] {
        let (ours, theirs) = UnixStream::pair().unwrap();
        clients.push(spawn_client(role, theirs));
        let mut ch = Channel::new(ours);
        let fds = q.client_fds().unwrap();
        ch.send(&(), &[fds.memfd.as_fd(), fds.doorbell.as_fd()])
            .unwrap();
        assert_eq!(ch.recv::<String>().unwrap().0, "attached");
        channels.push(ch);
    }

    let mut seq = 0u32;
    let mut stuck_queued = 0;
    for _ in 0..BATCHES {
        let frames: Vec<Vec<u8>> = (0..BATCH)
            .map(|_| {
                seq += 1;
                frame(seq)
            })
            .collect();
        for f in &frames {
            if stuck_q.push_rx(&[f]) == RxOutcome::Queued {
                stuck_queued += 1;
            }
            assert_eq!(drain_q.push_rx(&[f]), RxOutcome::Queued);
        }
        stuck_q.flush();
        drain_q.flush();
        channels[1].send(&(BATCH as u32), &[]).unwrap();
        let (got, _): (Vec<Vec<u8>>, _) = channels[1].recv().unwrap();
        assert_eq!(
            got, frames,
            "the draining client gets every frame, byte-exact"
        );
    }

    let stuck = stuck_q.counters();
    let drained = drain_q.counters();
    let total = (BATCH * BATCHES) as u64;
    assert_eq!(stuck.rx_frames, stuck_queued);
    assert_eq!(
        stuck.rx_frames,
        u64::from(RX_SLOTS),
        "the stuck ring holds what fits"
    );
    assert_eq!(
        stuck.rx_dropped_full,
        total - stuck.rx_frames,
        "every other frame is a counted drop"
    );
    assert_eq!(drained.rx_frames, total);
    assert_eq!(
        drained.rx_dropped_full, 0,
        "the draining client's loss stays 0"
    );

    for ch in &mut channels {
        ch.send(&"over".to_string(), &[]).unwrap();
    }
    drop(channels);
    for mut c in clients {
        assert!(c.wait().unwrap().success(), "client processes exit cleanly");
    }
}
