//! Reliability of the IPC layer across processes: malformed messages end only the session of
//! the client that sent them.
//!
//! The test process runs a small server on a Unix socket that speaks the client protocol
//! through `proto::Channel`, one thread per connection, the way netd's shell does: it answers
//! every well-formed request and ends the connection at the first fault. Client processes (this
//! test binary run again with `NETMUX_RELIABILITY_ROLE` set) connect: one well-behaved client
//! that keeps its session across the whole test, and one client per kind of malformed message.
//! The server tells each session's end apart by the peer's process id (`SO_PEERCRED`).
//!
//! Against netd itself and the driver process: not yet (they are not on main); see
//! RELIABILITY.md.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use netmux_proto::channel::ChannelError;
use netmux_proto::client::{ClientReply, ClientRequest};
use netmux_proto::frame::{self, FrameError};
use netmux_proto::{Channel, PROTOCOL_VERSION};

/// Selects the client role when this binary runs as a child process.
const ROLE_ENV: &str = "NETMUX_RELIABILITY_ROLE";
/// The server's socket, for the child processes.
const SOCKET_ENV: &str = "NETMUX_RELIABILITY_SOCKET";
/// How long the test waits for any one event before failing (instead of hanging).
const PATIENCE: Duration = Duration::from_secs(20);

/// The malformed cases: role name, and how the server must describe the session's end.
const MALFORMED: [(&str, &str); 6] = [
    ("truncated", "truncated"),
    ("zero-length", "empty"),
    ("4-GiB-length", "too-long"),
    ("unknown-type", "body"),
    ("missing-fds", "missing-fds"),
    ("extra-fds", "extra-fds"),
];

fn describe(e: &ChannelError) -> &'static str {
    match e {
        ChannelError::Closed => "closed",
        ChannelError::Truncated => "truncated",
        ChannelError::Frame(FrameError::Empty) => "empty",
        ChannelError::Frame(FrameError::TooLong(_)) => "too-long",
        ChannelError::Frame(FrameError::TooManyFds(_)) => "too-many-fds",
        ChannelError::Frame(FrameError::BadHeader) => "bad-header",
        ChannelError::Frame(FrameError::Body(_)) => "body",
        ChannelError::MissingFds { .. } => "missing-fds",
        ChannelError::ExtraFds => "extra-fds",
        ChannelError::Io(_) => "io",
        ChannelError::TimedOut(_) => "timed-out",
        ChannelError::NotAdmitted { .. } => "not-admitted",
    }
}

/// One session of the server: answers requests until the peer closes or faults. Reports
/// (peer pid, requests answered, how it ended).
fn serve(sock: UnixStream, report: mpsc::Sender<(u32, u32, &'static str)>) {
    let mut ch = Channel::new(sock);
    let pid = ch.peer_credentials().map_or(0, |c| c.pid);
    let mut answered = 0;
    let end = loop {
        match ch.recv::<ClientRequest>() {
            Ok((request, _fds)) => {
                let reply = match request {
                    ClientRequest::Hello { .. } => ClientReply::Done,
                    _ => ClientReply::Stats(Default::default()),
                };
                if ch.send(&reply, &[]).is_err() {
                    break "io";
                }
                answered += 1;
                let _ = report.send((pid, answered, "answered"));
            }
            Err(e) => break describe(&e),
        }
    };
    // Dropping the channel closes the connection: that session, and only it, is over.
    let _ = report.send((pid, answered, end));
}

fn socket_path(test: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("reliability-ipc-{test}.sock"));
    let _ = std::fs::remove_file(&p);
    p
}

fn spawn_client(role: &str, socket: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "client_process_entry_point",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, role)
        .env(SOCKET_ENV, socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// The entry point of the client processes; does nothing in an ordinary test run.
#[test]
fn client_process_entry_point() {
    let (Ok(role), Ok(path)) = (std::env::var(ROLE_ENV), std::env::var(SOCKET_ENV)) else {
        return;
    };
    let mut ch = Channel::new(UnixStream::connect(path).unwrap());
    let hello = ClientRequest::Hello {
        version: PROTOCOL_VERSION,
        instance: None,
    };
    let good = frame::encode(&hello, 0).unwrap();
    let memfd = rustix::fs::memfd_create("reliability", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    match role.as_str() {
        "good" => {
            // One request, then wait for the parent's word, then another on the same session.
            ch.send(&hello, &[]).unwrap();
            assert_eq!(ch.recv::<ClientReply>().unwrap().0, ClientReply::Done);
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).unwrap();
            ch.send(&ClientRequest::Stats, &[]).unwrap();
            assert!(matches!(
                ch.recv::<ClientReply>().unwrap().0,
                ClientReply::Stats(_)
            ));
            return;
        }
        "truncated" => {
            // A header announcing the whole message, then half of it, then the close.
            ch.send_raw(&good[..good.len() / 2], &[]).unwrap();
            return;
        }
        "zero-length" => ch.send_raw(&[0; 8], &[]).unwrap(),
        "4-GiB-length" => ch
            .send_raw(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0], &[])
            .unwrap(),
        "unknown-type" => {
            let body = br#"{"Frobnicate":{"level":11}}"#;
            let mut m = (body.len() as u32).to_le_bytes().to_vec();
            m.extend_from_slice(&[0; 4]);
            m.extend_from_slice(body);
            ch.send_raw(&m, &[]).unwrap();
        }
        "missing-fds" => {
            let mut m = good.clone();
            m[4] = 2;
            ch.send_raw(&m, &[]).unwrap();
        }
        "extra-fds" => ch.send_raw(&good, &[memfd.as_fd()]).unwrap(),
        other => panic!("unknown role {other}"),
    }
    // A malformed message gets no reply: the server ends the session.
    assert!(matches!(
        ch.recv::<ClientReply>(),
        Err(ChannelError::Closed)
    ));
}

#[test]
fn malformed_ipc_ends_only_the_senders_session() {
    let path = socket_path("malformed");
    let listener = UnixListener::bind(&path).unwrap();
    let (report_tx, report) = mpsc::channel();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(sock) = sock else { return };
            let tx = report_tx.clone();
            std::thread::spawn(move || serve(sock, tx));
        }
    });

    let mut good = spawn_client("good", &path);
    let good_pid = good.id();
    let (pid, answered, what) = report.recv_timeout(PATIENCE).unwrap();
    assert_eq!((pid, answered, what), (good_pid, 1, "answered"));

    let mut bad: HashMap<u32, (&str, &str, Child)> = HashMap::new();
    for (role, expected) in MALFORMED {
        let child = spawn_client(role, &path);
        bad.insert(child.id(), (role, expected, child));
    }
    let mut ended = HashMap::new();
    while ended.len() < MALFORMED.len() {
        let (pid, answered, what) = report.recv_timeout(PATIENCE).unwrap();
        assert_ne!(pid, good_pid, "the good client's session is untouched");
        let (role, expected, _) = &bad[&pid];
        assert_eq!(answered, 0, "{role}: nothing was answered");
        assert_eq!(
            what, *expected,
            "{role}: the session ends for the right reason"
        );
        ended.insert(pid, what);
    }
    for (_, (role, _, mut child)) in bad {
        assert!(
            child.wait().unwrap().success(),
            "{role}: the client saw its session end"
        );
    }

    // The good client's session is still alive: it is answered again.
    writeln!(good.stdin.as_mut().unwrap(), "go on").unwrap();
    let (pid, answered, what) = report.recv_timeout(PATIENCE).unwrap();
    assert_eq!((pid, answered, what), (good_pid, 2, "answered"));
    assert!(good.wait().unwrap().success());
    let (pid, _, what) = report.recv_timeout(PATIENCE).unwrap();
    assert_eq!(
        (pid, what),
        (good_pid, "closed"),
        "it ends by its own close"
    );
    let _ = std::fs::remove_file(&path);
}
