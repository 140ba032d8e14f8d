//! Reliability of the driver process (`netmux-driver`), across processes.
//!
//! * netd killed with SIGKILL mid-session: the driver fails closed (the client's queue, held
//!   by a third process, is closed and its waiter wakes up), keeps running, and a new netd
//!   connects and creates the queue again.
//! * Malformed IPC from netd, each case: a body the driver cannot read is answered with an
//!   error and the session goes on; a broken frame (truncated, zero or 4 GiB length, missing or
//!   extra descriptors) ends that connection only — the driver fails closed and serves the next
//!   netd.
//!
//! The driver is the real binary on a virtual link ([`DriverProcess`]). It is found next to this
//! test's binary (`target/<profile>/netmux-driver`) and brought up to date with cargo first. netd
//! is this test binary run again with `NETMUX_RELIABILITY_ROLE` set.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netmux_proto::driver::{DriverReply, DriverRequest, QueueConfig, QueueId};
use netmux_proto::{Channel, ErrorCode, PROTOCOL_VERSION};
use netmux_ring::{ClientQueue, QueueError};
use netmux_testkit::bins::DriverProcess;

/// Selects the netd role when this binary runs as a child process.
const ROLE_ENV: &str = "NETMUX_RELIABILITY_ROLE";
/// The driver's control socket, for the child.
const CONTROL_ENV: &str = "NETMUX_RELIABILITY_CONTROL";
/// How long any one expected event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);
/// Small rings: these tests move no frames.
const SMALL: QueueConfig = QueueConfig {
    slot_size: 2048,
    rx_slots: 64,
    tx_slots: 64,
    completion_slots: 64,
};

/// Connects to `driver` as netd and says hello.
fn connect_as_netd(driver: &DriverProcess) -> Channel {
    let mut ch = Channel::new(driver.connect(PATIENCE));
    let (reply, _) = request(&mut ch, &hello());
    assert!(matches!(reply, DriverReply::Hello { .. }), "{reply:?}");
    ch
}

/// Connects to `driver` as netd, retrying while it still serves the previous one.
fn reconnect_as_netd(driver: &DriverProcess) -> Channel {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let sock = UnixStream::connect(driver.control()).unwrap();
        let mut ch = Channel::new(sock);
        if ch.send(&hello(), &[]).is_ok() {
            if let Ok((DriverReply::Hello { .. }, _)) = ch.recv::<DriverReply>() {
                return ch;
            }
        }
        assert!(Instant::now() < deadline, "the driver takes no new netd");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn hello() -> DriverRequest {
    DriverRequest::Hello {
        version: PROTOCOL_VERSION,
    }
}

fn request(ch: &mut Channel, r: &DriverRequest) -> (DriverReply, Vec<OwnedFd>) {
    ch.send(r, &[]).unwrap();
    ch.recv().unwrap()
}

fn create_queue(ch: &mut Channel, id: u32) -> Vec<OwnedFd> {
    let (reply, fds) = request(
        ch,
        &DriverRequest::CreateQueue {
            queue: QueueId(id),
            config: SMALL,
            instance: netmux_proto::driver::DEFAULT_INSTANCE,
        },
    );
    assert!(
        matches!(reply, DriverReply::QueueCreated { .. }),
        "{reply:?}"
    );
    fds
}

fn attach(fds: Vec<OwnedFd>) -> ClientQueue {
    let [memfd, doorbell]: [OwnedFd; 2] = fds.try_into().expect("two fds");
    ClientQueue::from_fds(memfd, doorbell).unwrap()
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The entry point of the netd child process; does nothing in an ordinary test run.
#[test]
fn netd_process_entry_point() {
    let (Ok(role), Ok(control)) = (std::env::var(ROLE_ENV), std::env::var(CONTROL_ENV)) else {
        return;
    };
    assert_eq!(role, "netd");
    // SAFETY: descriptor 3 was set up by `spawn_netd` and is owned by nobody else here.
    let parent = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(3) };
    let mut parent = Channel::new(parent);
    let mut ch = Channel::new(UnixStream::connect(control).unwrap());
    let (reply, _) = request(&mut ch, &hello());
    assert!(matches!(reply, DriverReply::Hello { .. }));
    let fds = create_queue(&mut ch, 1);
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    parent.send(&"queue", &borrowed).unwrap();
    // Holds the session until it is killed.
    let _ = parent.recv::<String>();
    unreachable!("netd is killed before the parent speaks");
}

fn spawn_netd(control: &Path, sock: UnixStream) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "netd_process_entry_point",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE_ENV, "netd")
    .env(CONTROL_ENV, control)
    .stdout(Stdio::null());
    netmux_testkit::bins::spawn_with_fd3(cmd, sock)
}

#[test]
fn netd_killed_mid_session_the_driver_fails_closed_and_a_new_netd_binds_again() {
    let mut driver = DriverProcess::start("netd-killed");
    // Wait for the control socket before handing its path to netd.
    drop(connect_as_netd(&driver));
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut netd = spawn_netd(&driver.control(), theirs);
    let mut from_netd = Channel::new(ours);
    let (what, fds) = from_netd.recv::<String>().unwrap();
    assert_eq!(what, "queue");
    let mut client = attach(fds);
    assert!(!client.is_closed());
    // A client thread waiting for frames when netd dies must wake up.
    let waiter = std::thread::spawn(move || {
        let woke = client.wait_readable(Some(PATIENCE));
        (woke.map_err(|e| e.to_string()), client)
    });

    netd.kill().unwrap();
    netd.wait().unwrap();

    let (woke, mut client) = waiter.join().unwrap();
    assert_eq!(
        woke,
        Ok(true),
        "the waiting client is woken, not left to time out"
    );
    eventually("the queue is closed", || client.is_closed());
    assert!(matches!(
        client.send(&[&[&[0u8; 60]]]),
        Err(QueueError::Closed)
    ));
    assert!(driver.is_running(), "the driver outlives netd");

    // A new netd starts from nothing and can create the same queue again.
    let mut netd = reconnect_as_netd(&driver);
    let (reply, _) = request(&mut netd, &DriverRequest::Stats);
    assert!(
        matches!(reply, DriverReply::Stats { ref queues, .. } if queues.is_empty()),
        "{reply:?}"
    );
    let client = attach(create_queue(&mut netd, 1));
    assert!(!client.is_closed());
}

/// A broken frame from netd: the connection ends, the queue fails closed, the driver lives on.
fn broken_frame_ends_the_connection(tag: &str, send: impl FnOnce(&mut Channel)) {
    let mut driver = DriverProcess::start(tag);
    let mut netd = connect_as_netd(&driver);
    let client = attach(create_queue(&mut netd, 1));
    send(&mut netd);
    assert!(
        netd.recv::<DriverReply>().is_err(),
        "{tag}: the connection ends without a reply"
    );
    eventually("the queue is closed", || client.is_closed());
    assert!(driver.is_running(), "{tag}: the driver lives on");
    let mut next = reconnect_as_netd(&driver);
    let (reply, _) = request(&mut next, &DriverRequest::Stats);
    assert!(
        matches!(reply, DriverReply::Stats { .. }),
        "{tag}: {reply:?}"
    );
}

fn stats_bytes() -> Vec<u8> {
    netmux_proto::frame::encode(&DriverRequest::Stats, 0).unwrap()
}

#[test]
fn a_truncated_message_from_netd_ends_only_that_connection() {
    broken_frame_ends_the_connection("truncated", |ch| {
        let bytes = stats_bytes();
        ch.send_raw(&bytes[..bytes.len() - 2], &[]).unwrap();
        ch.socket().shutdown(std::net::Shutdown::Write).unwrap();
    });
}

#[test]
fn a_zero_length_message_from_netd_ends_only_that_connection() {
    broken_frame_ends_the_connection("zero", |ch| ch.send_raw(&[0; 8], &[]).unwrap());
}

#[test]
fn a_4_gib_length_from_netd_ends_only_that_connection() {
    broken_frame_ends_the_connection("huge", |ch| {
        ch.send_raw(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0], &[])
            .unwrap()
    });
}

#[test]
fn missing_descriptors_from_netd_end_only_that_connection() {
    broken_frame_ends_the_connection("missing-fds", |ch| {
        let mut bytes = stats_bytes();
        bytes[4] = 2;
        ch.send_raw(&bytes, &[]).unwrap();
    });
}

#[test]
fn extra_descriptors_from_netd_end_only_that_connection() {
    broken_frame_ends_the_connection("extra-fds", |ch| {
        let memfd = rustix::fs::memfd_create("extra", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        ch.send_raw(&stats_bytes(), &[memfd.as_fd()]).unwrap();
    });
}

#[test]
fn an_unknown_message_type_from_netd_is_answered_and_the_session_goes_on() {
    let mut driver = DriverProcess::start("unknown");
    let mut netd = connect_as_netd(&driver);
    let client = attach(create_queue(&mut netd, 1));
    let body = br#"{"Frobnicate":{"level":11}}"#;
    let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(body);
    netd.send_raw(&bytes, &[]).unwrap();
    let (reply, _): (DriverReply, _) = netd.recv().unwrap();
    assert!(
        matches!(reply, DriverReply::Error(ref e) if e.code == ErrorCode::Protocol),
        "{reply:?}"
    );
    let (reply, _) = request(&mut netd, &DriverRequest::Stats);
    assert!(matches!(reply, DriverReply::Stats { ref queues, .. } if queues.len() == 1));
    assert!(!client.is_closed(), "the session and its queue go on");
    assert!(driver.is_running());
}
