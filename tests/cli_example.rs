//! `netmux up` and `netmux example ...`, run as the built binary on a virtual cable (no
//! privileges): the examples' one-line announcement, a refused port reported with netd's reason
//! and exit status 1 (a group netd refuses to `udp-echo --group` alike), clean stops on
//! SIGTERM, and `up`'s errors for a link that cannot open.

use netmux_testkit::TempDir;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const NETMUX: &str = env!("CARGO_BIN_EXE_netmux");
/// Longest wait for a process to print its ready line or exit (debug builds on a busy CI host).
const TIMEOUT: Duration = Duration::from_secs(20);
// Scratch directories have short names (`nmx-...`): Unix socket paths are limited to 107 bytes.

/// A child process with its stdout lines on a channel; killed on drop if still running.
struct Proc {
    child: Child,
    lines: Receiver<String>,
}

impl Proc {
    fn start(args: &[&str], extra: &[&Path]) -> Proc {
        let mut child = Command::new(NETMUX)
            .args(args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(TIMEOUT)
            .expect("a line on stdout in time")
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Waits for exit; returns the status and everything on stderr.
    fn wait(mut self) -> (ExitStatus, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "the process did not exit in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        use std::io::Read;
        let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
        (status, err)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `netmux up FLAGS --link LINK --ip 10.9.0.1/24 --runtime-dir SCRATCH/run`, started.
fn start_up(scratch: &TempDir, flags: &[&str], link: &str) -> Proc {
    let mut args = vec!["up"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--link", link, "--ip", "10.9.0.1/24", "--runtime-dir"]);
    Proc::start(&args, &[&scratch.join("run")])
}

/// `netmux up` on a virtual cable in `scratch`; returns it once netd listens, and the driver's pid.
fn up(scratch: &TempDir) -> (Proc, i32) {
    let link = format!("virtual:{}", scratch.join("cable.sock").display());
    let up = start_up(scratch, &[], &link);
    let line = up.line();
    assert!(line.starts_with("netd listening on "), "{line}");
    (up, driver_pid(&line))
}

/// The driver's pid in `up`'s ready line, as rustix takes it.
fn driver_pid(ready: &str) -> i32 {
    netmux_testkit::netns::driver_pid(ready) as i32
}

fn example(kind: &str, port: u16, scratch: &TempDir) -> Proc {
    Proc::start(
        &[
            "example",
            kind,
            "--port",
            &port.to_string(),
            "--runtime-dir",
        ],
        &[&scratch.join("run")],
    )
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn examples_announce_their_port_and_stop_cleanly_on_sigterm() {
    let scratch = TempDir::new("nmx-announce");
    let (up, _) = up(&scratch);
    let echo = example("udp-echo", 7000, &scratch);
    assert_eq!(echo.line(), "listening on udp port 7000");
    let http = example("http", 8000, &scratch);
    assert_eq!(http.line(), "listening on tcp port 8000");
    for p in [echo, http] {
        p.signal(rustix::process::Signal::TERM);
        let (status, err) = p.wait();
        assert!(status.success(), "{status}: {err}");
    }
    up.signal(rustix::process::Signal::INT);
    assert!(up.wait().0.success());
}

#[test]
fn an_example_refused_a_port_in_use_prints_netds_reason_and_exits_1() {
    let scratch = TempDir::new("nmx-inuse");
    let (_up, _) = up(&scratch);
    let first = example("udp-echo", 7001, &scratch);
    assert_eq!(first.line(), "listening on udp port 7001");
    let (status, err) = example("udp-echo", 7001, &scratch).wait();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("udp port 7001 is in use"), "{err}");
}

#[test]
fn udp_echo_joins_its_groups_and_a_group_netd_refuses_exits_1_with_the_reason() {
    let scratch = TempDir::new("nmx-group");
    let (_up, _) = up(&scratch);
    let run = scratch.join("run");
    let joined = Proc::start(
        &[
            "example",
            "udp-echo",
            "--port",
            "7020",
            "--group",
            "239.1.2.3",
        ],
        &[Path::new("--runtime-dir"), &run],
    );
    assert_eq!(joined.line(), "listening on udp port 7020");
    let (status, err) = Proc::start(
        &[
            "example", "udp-echo", "--port", "7021", "--group", "10.9.0.7",
        ],
        &[Path::new("--runtime-dir"), &run],
    )
    .wait();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("10.9.0.7 is not a multicast address"), "{err}");
}

#[test]
fn an_example_refused_a_privileged_port_exits_1() {
    if rustix::process::geteuid().is_root() {
        eprintln!("skipped: root may bind privileged ports");
        return;
    }
    let scratch = TempDir::new("nmx-privileged");
    let (_up, _) = up(&scratch);
    let (status, err) = example("http", 80, &scratch).wait();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("80"), "{err}");
}

#[test]
fn an_example_without_netd_says_it_cannot_connect() {
    let scratch = TempDir::new("nmx-nonetd");
    let (status, err) = example("udp-echo", 7002, &scratch).wait();
    assert!(!status.success());
    assert!(err.contains("connecting to netd"), "{err}");
}

#[test]
fn an_example_exits_1_when_netd_does_not_come_back_within_its_reconnect_time() {
    let scratch = TempDir::new("nmx-netdstops");
    let (up, _) = up(&scratch);
    let echo = Proc::start(
        &[
            "example",
            "udp-echo",
            "--port",
            "7003",
            "--reconnect-for",
            "1",
            "--runtime-dir",
        ],
        &[&scratch.join("run")],
    );
    assert_eq!(echo.line(), "listening on udp port 7003");
    up.signal(rustix::process::Signal::TERM);
    assert!(up.wait().0.success());
    let (status, err) = echo.wait();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("netd went away"), "it tried again: {err}");
    assert!(
        err.contains("did not take this client back within 1 s"),
        "{err}"
    );
}

#[test]
fn up_stops_netd_and_the_driver_child_and_removes_its_socket_on_sigint() {
    let scratch = TempDir::new("nmx-upstop");
    let (up, driver) = up(&scratch);
    let socket = scratch.join("run").join("netd.sock");
    assert!(socket.exists());
    assert!(alive(driver), "the driver is a process of its own");
    assert_ne!(driver, up.pid());
    up.signal(rustix::process::Signal::INT);
    let (status, err) = up.wait();
    assert!(status.success(), "{status}: {err}");
    assert!(!socket.exists(), "netd's socket is removed");
    let start = Instant::now();
    while alive(driver) && start.elapsed() < TIMEOUT {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(driver), "the driver child is stopped");
}

/// B6: a driver killed under `up` is noticed: `up` says the driver ended and how, stops
/// netd (its socket goes) and exits non-zero, so a supervisor restarts it.
#[test]
fn up_whose_driver_is_killed_says_so_stops_netd_and_exits_non_zero() {
    let scratch = TempDir::new("nmx-upkill");
    let (up, driver) = up(&scratch);
    let socket = scratch.join("run").join("netd.sock");
    assert!(socket.exists());
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(driver).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let (status, err) = up.wait();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("the driver ended by itself"), "{err}");
    assert!(err.contains("signal: 9"), "says how: {err}");
    assert!(!socket.exists(), "netd stopped and removed its socket");
}

/// B11: a second `up` on the runtime directory of a running one is refused, and the running
/// driver keeps its control socket (a new netd could still reach it) and goes on serving.
#[test]
fn a_second_up_on_the_same_runtime_directory_is_refused_and_leaves_the_first_whole() {
    let scratch = TempDir::new("nmx-uptwice");
    let (up, driver) = up(&scratch);
    let control = scratch.join("run").join("driver").join("control.sock");
    let control_before =
        std::fs::metadata(&control).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let link = format!("virtual:{}", scratch.join("cable2.sock").display());
    let (status, err) = start_up(&scratch, &[], &link).wait();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("listening"), "says another one listens: {err}");
    let control_after =
        std::fs::metadata(&control).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    assert_eq!(
        control_before.ok(),
        control_after.ok(),
        "the running driver's control socket is the same file"
    );
    assert!(alive(driver), "the first driver runs on");
    let mut client = netmux_client::blocking::Client::connect(&scratch.join("run")).unwrap();
    client.stats().expect("the first netd still answers");
    up.signal(rustix::process::Signal::TERM);
    assert!(up.wait().0.success());
}

#[test]
fn up_on_a_link_that_cannot_open_says_so_and_exits_1() {
    let scratch = TempDir::new("nmx-badlink");
    let up = start_up(&scratch, &[], "afpacket:nmx-no-such0");
    let (status, err) = up.wait();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("opening link afpacket:nmx-no-such0"), "{err}");
    assert!(
        err.contains("starting a driver on afpacket:nmx-no-such0"),
        "{err}"
    );
}

#[test]
fn up_requires_an_address() {
    let (status, err) = Proc::start(&["up", "--link", "virtual:/tmp/x"], &[]).wait();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--ip"), "{err}");
}

#[test]
fn up_refuses_a_link_spec_that_does_not_parse_before_starting_anything() {
    let (status, err) =
        Proc::start(&["up", "--link", "ethernet0", "--ip", "10.9.0.1/24"], &[]).wait();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("has no kind"), "{err}");
}

/// The far end of a virtual cable, held by the test: sends hand-made frames, answers ARP for
/// its address, and waits for UDP from a port.
struct CableEnd {
    socket: std::os::unix::net::UnixDatagram,
    cable: PathBuf,
}

const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x22];
const PEER_IP: [u8; 4] = [10, 9, 0, 2];
const HOST_IP: [u8; 4] = [10, 9, 0, 1];

impl CableEnd {
    /// The test's end of a virtual cable in `scratch` (`peer.sock`, reads polled every
    /// 50 ms), the link spec of the driver's end (`cable.sock`) and the MAC that link has.
    fn bind(scratch: &TempDir) -> (CableEnd, String, [u8; 6]) {
        let cable = scratch.join("cable.sock");
        let peer = scratch.join("peer.sock");
        let end = CableEnd {
            socket: std::os::unix::net::UnixDatagram::bind(&peer).unwrap(),
            cable: cable.clone(),
        };
        end.socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let spec = format!("virtual:{},{}", cable.display(), peer.display());
        let host_mac = netmux_driver::link::info_for(&spec.parse().unwrap()).mac;
        (end, spec, host_mac)
    }

    fn udp_to_host(&self, host_mac: [u8; 6], dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2(PEER_MAC, host_mac)
            .ipv4(PEER_IP, HOST_IP, 64)
            .udp(5555, dport)
            .write(&mut frame, payload)
            .unwrap();
        frame
    }

    fn send(&self, frame: &[u8]) {
        self.socket.send_to(frame, &self.cable).unwrap();
    }

    /// Sends while the driver at the other end may be gone (nobody bound there: refused).
    fn try_send(&self, frame: &[u8]) {
        let _ = self.socket.send_to(frame, &self.cable);
    }

    /// Answers ARP requests for the peer's address; returns the payload of the first UDP
    /// datagram from `sport` (reassembled when it comes in IPv4 fragments), or `None` after
    /// `timeout`.
    fn udp_from(&self, sport: u16, timeout: Duration) -> Option<Vec<u8>> {
        use netmux_driver::reassembly::{Outcome, Reassembler};
        let mut reassembler = Reassembler::new(Default::default());
        let start = Instant::now();
        let mut buf = vec![0u8; 70_000];
        while start.elapsed() < timeout {
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            let frame = &buf[..n];
            if frame[12..14] == [0x08, 0x06] && frame[20..22] == [0, 1] && frame[38..42] == PEER_IP
            {
                let mut reply = Vec::with_capacity(42);
                reply.extend_from_slice(&frame[6..12]);
                reply.extend_from_slice(&PEER_MAC);
                reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
                reply.extend_from_slice(&PEER_MAC);
                reply.extend_from_slice(&PEER_IP);
                reply.extend_from_slice(&frame[22..32]);
                self.send(&reply);
                continue;
            }
            let now = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let whole = match reassembler.push(frame, now) {
                Outcome::Deliver(f) => f.to_vec(),
                Outcome::Reassembled(d) => d,
                Outcome::Held | Outcome::Dropped(_) => continue,
            };
            let parsed = etherparse::SlicedPacket::from_ethernet(&whole);
            if let Ok(p) = parsed {
                if let Some(etherparse::TransportSlice::Udp(udp)) = p.transport {
                    if udp.source_port() == sport {
                        return Some(udp.payload().to_vec());
                    }
                }
            }
        }
        None
    }
}

#[test]
fn udp_echo_echoes_datagrams_from_the_cable_in_fragments_when_larger_than_the_mtu() {
    let scratch = TempDir::new("nmx-cable");
    let (end, spec, host_mac) = CableEnd::bind(&scratch);
    let up = start_up(&scratch, &[], &spec);
    assert!(up.line().starts_with("netd listening on "));
    let echo = example("udp-echo", 7010, &scratch);
    assert_eq!(echo.line(), "listening on udp port 7010");

    end.send(&end.udp_to_host(host_mac, 7010, b"ping over the cable"));
    assert_eq!(
        end.udp_from(7010, TIMEOUT).as_deref(),
        Some(&b"ping over the cable"[..])
    );

    // 8,000 bytes arrive reassembled by the driver and go back as fragments, which the driver
    // checks as one datagram.
    let payload: Vec<u8> = (0..8000).map(|i| (i % 251) as u8).collect();
    let big = end.udp_to_host(host_mac, 7010, &payload);
    let fragments = netmux_driver::reassembly::fragmenter::fragment(&big, 1024, 0).unwrap();
    for fragment in &fragments {
        end.send(fragment);
    }
    assert_eq!(end.udp_from(7010, TIMEOUT), Some(payload));

    echo.signal(rustix::process::Signal::TERM);
    let (status, err) = echo.wait();
    assert!(status.success(), "{err}");
}

/// B6 with `--restart`: the driver child of `up --restart` killed (SIGKILL) under the UDP echo
/// example is started again in place; netd keeps its socket and installs its state in the new
/// driver, the example connects again and gets a new queue, and it answers on the cable again.
/// The pause, from the kill to the first answer after it, is printed.
#[test]
fn up_restart_restarts_a_killed_driver_in_place_and_the_udp_echo_answers_again() {
    let scratch = TempDir::new("nmx-uprestart");
    let (end, spec, host_mac) = CableEnd::bind(&scratch);
    let up = start_up(&scratch, &["--restart"], &spec);
    let line = up.line();
    let driver = driver_pid(&line);
    let run_dir = scratch.join("run");
    let socket = run_dir.join("netd.sock");
    let socket_ino = std::fs::metadata(&socket).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    // State the new driver must be given again: an instance with a MAC of its own, and a
    // firewall rule that blocks a port a client holds.
    let cli = |args: &[&str], tail: &[&str]| {
        let out = Command::new(NETMUX)
            .args(args)
            .arg("--runtime-dir")
            .arg(&run_dir)
            .args(tail)
            .output()
            .unwrap();
        assert!(out.status.success(), "netmux {args:?} {tail:?}: {out:?}");
    };
    const BLUE_MAC: [u8; 6] = [2, 0, 0, 0, 0x0b, 1];
    const BLUE_IP: [u8; 4] = [10, 9, 0, 5];
    cli(
        &["instance", "create", "blue", "--mac", "02:00:00:00:0b:01"],
        &["--ip", "10.9.0.5/24", "--temporary"],
    );
    cli(
        &["firewall"],
        &["add", "block", "in", "udp", "port", "7021"],
    );
    let echo = example("udp-echo", 7020, &scratch);
    assert_eq!(echo.line(), "listening on udp port 7020");
    let blocked = example("udp-echo", 7021, &scratch);
    assert_eq!(blocked.line(), "listening on udp port 7021");
    let blue = Proc::start(
        &[
            "example",
            "udp-echo",
            "--port",
            "7022",
            "-i",
            "blue",
            "--runtime-dir",
        ],
        &[&run_dir],
    );
    assert_eq!(blue.line(), "listening on udp port 7022");
    let to_blue = |payload: &[u8]| {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2(PEER_MAC, BLUE_MAC)
            .ipv4(PEER_IP, BLUE_IP, 64)
            .udp(5555, 7022)
            .write(&mut frame, payload)
            .unwrap();
        frame
    };
    end.send(&end.udp_to_host(host_mac, 7020, b"before"));
    assert_eq!(end.udp_from(7020, TIMEOUT).as_deref(), Some(&b"before"[..]));
    end.send(&to_blue(b"blue before"));
    assert_eq!(
        end.udp_from(7022, TIMEOUT).as_deref(),
        Some(&b"blue before"[..])
    );
    end.send(&end.udp_to_host(host_mac, 7021, b"blocked"));
    assert_eq!(
        end.udp_from(7021, Duration::from_millis(500)),
        None,
        "the rule holds"
    );

    let killed = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(driver).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let mut answered = None;
    while killed.elapsed() < TIMEOUT {
        end.try_send(&end.udp_to_host(host_mac, 7020, b"after"));
        if end.udp_from(7020, Duration::from_millis(200)).as_deref() == Some(&b"after"[..]) {
            answered = Some(killed.elapsed());
            break;
        }
    }
    let pause = answered.expect("the echo answers again after the driver's restart");
    println!(
        "driver killed under `up --restart`: the UDP echo answered again after {} ms",
        pause.as_millis()
    );
    // The instance is at the new driver (its client answers at its MAC), and so is the rule
    // (the blocked client, back on its port too, still gets nothing).
    let start = Instant::now();
    let mut blue_back = false;
    while !blue_back && start.elapsed() < TIMEOUT {
        end.try_send(&to_blue(b"blue after"));
        blue_back =
            end.udp_from(7022, Duration::from_millis(200)).as_deref() == Some(&b"blue after"[..]);
    }
    assert!(blue_back, "the instance's client answers again");
    let mut status = netmux_client::blocking::Client::connect(&run_dir).unwrap();
    let start = Instant::now();
    while !status
        .list_sessions()
        .unwrap()
        .sessions
        .iter()
        .any(|s| s.ports.iter().any(|&(_, p)| p == 7021))
    {
        assert!(
            start.elapsed() < TIMEOUT,
            "the blocked client never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    end.send(&end.udp_to_host(host_mac, 7021, b"blocked after"));
    assert_eq!(
        end.udp_from(7021, Duration::from_millis(500)),
        None,
        "the firewall rule is in force at the new driver"
    );
    assert!(!alive(driver), "the old driver is gone");
    assert_eq!(
        std::fs::metadata(&socket)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok(),
        socket_ino.ok(),
        "netd kept running: its socket is the same file"
    );
    let mut client = netmux_client::blocking::Client::connect(&scratch.join("run")).unwrap();
    client.stats().expect("netd answers with the new driver");
    drop(client);

    echo.signal(rustix::process::Signal::TERM);
    let (status, err) = echo.wait();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("netd went away"),
        "the example reconnected: {err}"
    );
    up.signal(rustix::process::Signal::TERM);
    let (status, err) = up.wait();
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("restarting it in 0.1 s"), "{err}");
    assert!(err.contains("driver restarted"), "{err}");
}

/// `--restart` gives up after `--restart-limit` driver failures within a minute: `up` says
/// so, stops netd and exits non-zero, so the service manager sees a failure.
#[test]
fn up_restart_gives_up_after_its_limit_of_driver_failures() {
    let scratch = TempDir::new("nmx-upgiveup");
    let link = format!("virtual:{}", scratch.join("cable.sock").display());
    let up = start_up(&scratch, &["--restart", "--restart-limit", "2"], &link);
    let mut driver = driver_pid(&up.line());
    let socket = scratch.join("run").join("netd.sock");
    // The first failure is restarted; find the new driver by its parent, then kill it too.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(driver).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let start = Instant::now();
    let new = loop {
        assert!(start.elapsed() < TIMEOUT, "no new driver");
        if let Some(pid) = child_of(up.pid()).filter(|&p| p != driver) {
            break pid;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Wait until netd took it (it answers clients again), then kill it.
    let start = Instant::now();
    while netmux_client::blocking::Client::connect(&scratch.join("run"))
        .and_then(|mut c| c.stats().map(|_| ()))
        .is_err()
    {
        assert!(
            start.elapsed() < TIMEOUT,
            "netd did not take the new driver"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    driver = new;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(driver).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let (status, err) = up.wait();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("2 driver failures within 60 s, giving up"),
        "{err}"
    );
    assert!(!socket.exists(), "netd stopped and removed its socket");
}

/// A child process of `parent` that is not a zombie, if any.
fn child_of(parent: i32) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{parent}/task"))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .find(|&p| alive(p))
}
