//! Many clients on one host, the whole of them, each program as users run it: the
//! `netmux-driver` binary on a virtual cable and the `netd` binary on it, each a process of its
//! own, and N client sessions held by a few worker processes (this test binary re-run, at most
//! [`SESSIONS_PER_WORKER`] sessions each). Every session binds a UDP port, opens a queue,
//! receives a datagram from the peer at the far end of the cable (this process) and answers
//! it, then ends. Afterwards no descriptor and no ring mapping of theirs is left in the
//! driver, in netd or in the workers, and the driver maps no client queue.
//!
//! 2,000 sessions in the normal suite; 10,000 by name (the name has `soak_`, which
//! `scripts/test` leaves out with the other long tests):
//!
//! ```text
//! cargo test --release -p netmux-netd --test scale -- --ignored soak_ --nocapture
//! ```
//!
//! A descriptor limit is per process: a queue costs the driver one descriptor once handed out
//! (its end of the doorbell) and a session costs netd one (its socket), so 10,000 sessions
//! fit a limit of 20,000 in each; a worker holds two per session (its socket and its end of
//! the doorbell). The test prints what 10,000 clients cost in memory (the driver's and netd's
//! resident memory and the ring memory, per client and in all; the goal is 4 GiB in all), and
//! writes them as JSON to the file `NETMUX_SCALE_MEMORY_FILE` names (`scripts/bench-report`
//! shows them against the goal).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use netmux_client::blocking::Client;
use netmux_client::Transport;
use netmux_ring::ClientQueue;
use netmux_testkit::bins::{spawn_with_fd3, workspace_binary, DriverProcess};
use netmux_testkit::cable::CableEnd;

/// The first port the sessions bind.
const FIRST_PORT: u16 = 20_000;
/// Sessions one worker process holds at most (two descriptors each stay well inside a limit of
/// 20,000); there are at least two workers, one per core of a small machine.
const SESSIONS_PER_WORKER: usize = 2_500;
/// How long any one step may take.
const PATIENCE: Duration = Duration::from_secs(120);
/// Set in a worker: the netd socket it connects to.
const WORKER_SOCKET_ENV: &str = "NETMUX_SCALE_WORKER_SOCKET";
/// Set in a worker: `FIRST_PORT,COUNT`, the ports its sessions bind.
const WORKER_PORTS_ENV: &str = "NETMUX_SCALE_WORKER_PORTS";
/// Set by `scripts/bench-report`: the file the memory figures are written to (JSON).
const MEMORY_FILE_ENV: &str = "NETMUX_SCALE_MEMORY_FILE";
/// The goal for 10,000 clients: driver and netd resident memory and ring memory, in all.
const GOAL_BYTES_FOR_10K: u64 = 4 << 30;

/// A UDP datagram from the peer (host B, port 40000) to `port` of the host whose link has
/// `mac`.
fn to_port(mac: [u8; 6], port: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_B, mac)
        .ipv4(IP_B.octets(), IP_A.octets(), 64)
        .udp(40000, port)
        .write(&mut frame, b"hello")
        .unwrap();
    frame
}

/// The answer to [`to_port`]: from `port` back to the peer.
fn from_port(mac: [u8; 6], port: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac, MAC_B)
        .ipv4(IP_A.octets(), IP_B.octets(), 64)
        .udp(port, 40000)
        .write(&mut frame, b"hello")
        .unwrap();
    frame
}

/// Open descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Ring memory a process maps (queues' memfds).
fn ring_mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| m.lines().filter(|l| l.contains("netmux-queue")).count())
        .unwrap_or(0)
}

/// A field of a process's status, in KiB (`VmRSS`, `RssShmem`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// What a process costs now: descriptors, ring mappings, resident memory and the part of it
/// that is shared memory (ring pages it touched), in KiB.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    fds: usize,
    maps: usize,
    rss_kib: u64,
    shmem_kib: u64,
}

impl Footprint {
    fn of(pid: u32) -> Footprint {
        Footprint {
            fds: fd_count(pid),
            maps: ring_mappings(pid),
            rss_kib: status_kib(pid, "VmRSS"),
            shmem_kib: status_kib(pid, "RssShmem"),
        }
    }
}

/// The driver and netd binaries, each a process of its own, the driver on a virtual cable
/// whose far end this process holds; netd killed and reaped (by pid), then the driver, and
/// their directory removed, on drop.
struct Stack {
    netd: Child,
    driver: DriverProcess,
    wire: CableEnd,
    /// The link's MAC.
    mac: [u8; 6],
}

impl Stack {
    fn start(sessions: usize) -> Stack {
        let driver = DriverProcess::start("scale");
        let dir = driver.dir().to_path_buf();
        // The limits in force for `sessions` clients of one uid (the defaults hold fewer).
        let config = dir.join("netd.toml");
        std::fs::write(
            &config,
            format!(
                "[limits]\nsessions_per_uid = {n}\nports_per_uid = {n}\n\
                 ring_bytes_per_uid = {big}\nring_bytes_per_instance = {big}\n",
                n = sessions + 16,
                big = 1u64 << 40,
            ),
        )
        .unwrap();
        let deadline = Instant::now() + PATIENCE;
        while !driver.control().exists() {
            assert!(Instant::now() < deadline, "the driver opened no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = std::fs::File::create(dir.join("netd.log")).unwrap();
        let mut netd = Command::new(workspace_binary("netd"))
            .arg("--driver-socket")
            .arg(driver.control())
            .arg("--runtime-dir")
            .arg(dir.join("run"))
            .args(["--ip", &format!("{IP_A}/24")])
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting netd");
        let socket = netmux_proto::socket_in(&dir.join("run"));
        let mac = loop {
            if let Ok(c) = Client::connect_socket(&socket) {
                break c.host().link.mac;
            }
            if let Ok(Some(status)) = netd.try_wait() {
                panic!(
                    "netd ended ({status}): {}",
                    std::fs::read_to_string(dir.join("netd.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = netd.kill();
                let _ = netd.wait();
                panic!("netd never took clients");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The peer: the driver's link sends to whoever last sent to it.
        let wire = CableEnd::bind(&dir.join("peer.cable"), &driver.cable());
        Stack {
            netd,
            driver,
            wire,
            mac,
        }
    }

    fn socket(&self) -> PathBuf {
        netmux_proto::socket_in(&self.driver.dir().join("run"))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.netd.kill();
        let _ = self.netd.wait();
    }
}

/// A worker process and the line-by-line conversation with it (over its descriptor 3).
struct Worker {
    child: Child,
    lines: BufReader<UnixStream>,
    to: UnixStream,
}

impl Worker {
    fn spawn(socket: &Path, first: u16, count: usize) -> Worker {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["worker_process_entry_point", "--exact", "--nocapture"])
            .env(WORKER_SOCKET_ENV, socket)
            .env(WORKER_PORTS_ENV, format!("{first},{count}"))
            .stdout(Stdio::null());
        let child = spawn_with_fd3(cmd, theirs);
        ours.set_read_timeout(Some(PATIENCE)).unwrap();
        Worker {
            child,
            lines: BufReader::new(ours.try_clone().unwrap()),
            to: ours,
        }
    }

    /// The worker's next report: `what` followed by numbers.
    fn expect(&mut self, what: &str) -> Vec<u64> {
        let mut line = String::new();
        self.lines
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("waiting for the worker's {what}: {e}"));
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some(what), "the worker said {line:?}");
        words.map(|w| w.parse().unwrap()).collect()
    }

    fn tell(&mut self, what: &str) {
        writeln!(self.to, "{what}").unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A worker's part, when this binary was started as one (see [`Worker::spawn`]): opens its
/// sessions, reports, answers the datagram each receives, reports, and on `close` ends them
/// and reports what it holds afterwards.
#[test]
fn worker_process_entry_point() {
    let (Some(socket), Some(ports)) = (
        std::env::var_os(WORKER_SOCKET_ENV),
        std::env::var(WORKER_PORTS_ENV).ok(),
    ) else {
        return;
    };
    let (first, count) = ports.split_once(',').unwrap();
    let (first, count): (u16, usize) = (first.parse().unwrap(), count.parse().unwrap());
    // SAFETY: descriptor 3 was set up by `Worker::spawn` and is owned by nobody else here.
    let parent = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(3) };
    let mut lines = BufReader::new(parent.try_clone().unwrap());
    let mut parent = parent;
    let me = std::process::id();
    let before = Footprint::of(me);

    let start = Instant::now();
    let mut sessions: Vec<(Client, ClientQueue, u16)> = Vec::with_capacity(count);
    for i in 0..count {
        let port = first + i as u16;
        let mut c = Client::connect_socket(Path::new(&socket))
            .unwrap_or_else(|e| panic!("session on port {port} connects: {e}"));
        c.bind_port(Transport::Udp, port)
            .unwrap_or_else(|e| panic!("session on port {port} binds: {e}"));
        let q = c
            .open_queue()
            .unwrap_or_else(|e| panic!("session on port {port} opens its queue: {e}"));
        sessions.push((c, q, port));
    }
    let mac = sessions
        .first()
        .map_or([0; 6], |(c, _, _)| c.host().link.mac);
    let ring_bytes: u64 = sessions.iter().map(|(_, q, _)| q.layout().total_len).sum();
    // A session's own counters, among thousands of queues.
    if let Some((c, _, port)) = sessions.first_mut() {
        c.stats()
            .unwrap_or_else(|e| panic!("session on port {port} reads its counters: {e}"));
    }
    let open = Footprint::of(me);
    writeln!(
        parent,
        "open {} {} {} {ring_bytes}",
        start.elapsed().as_micros(),
        open.fds - before.fds,
        open.maps - before.maps
    )
    .unwrap();

    // Each session receives the peer's datagram and answers it.
    for (_, q, port) in sessions.iter_mut() {
        let mut got = Vec::new();
        let end = Instant::now() + PATIENCE;
        while got.is_empty() && Instant::now() < end {
            q.recv_owned(1, &mut got).unwrap();
            if got.is_empty() {
                let _ = q.wait_readable(Some(Duration::from_millis(50)));
            }
        }
        assert_eq!(
            got.first(),
            Some(&to_port(mac, *port)),
            "session on port {port}"
        );
        q.send_wait(&[&[&from_port(mac, *port)]], Some(PATIENCE))
            .unwrap_or_else(|e| panic!("session on port {port} answers: {e}"));
    }
    writeln!(parent, "answered {count}").unwrap();

    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "close");
    drop(sessions);
    let after = Footprint::of(me);
    writeln!(
        parent,
        "closed {} {} {} {}",
        before.fds, after.fds, before.maps, after.maps
    )
    .unwrap();
}

fn sessions_exchange_a_frame_each_and_leave_nothing_behind(sessions: usize) {
    // Every process of the test (and the workers, which inherit it) may use the hard limit.
    raise_descriptor_limit(u64::MAX);
    let stack = Stack::start(sessions);
    let (driver_pid, netd_pid) = (stack.driver.pid(), stack.netd.id());
    let (driver_before, netd_before) = (Footprint::of(driver_pid), Footprint::of(netd_pid));

    // The workers open their sessions side by side.
    let start = Instant::now();
    let count = sessions.div_ceil(SESSIONS_PER_WORKER).max(2);
    let share = sessions.div_ceil(count);
    let mut workers: Vec<Worker> = (0..count)
        .map(|w| {
            let first = w * share;
            let count = share.min(sessions - first);
            Worker::spawn(&stack.socket(), FIRST_PORT + first as u16, count)
        })
        .collect();
    let (mut worker_fds, mut ring_bytes) = (0, 0);
    for w in &mut workers {
        let open = w.expect("open");
        worker_fds += open[1];
        assert!(open[2] >= 1, "a worker maps its queues");
        // The ring memory of its queues, as their headers say.
        ring_bytes += open[3];
    }
    let opened = start.elapsed();
    let (driver_open, netd_open) = (Footprint::of(driver_pid), Footprint::of(netd_pid));
    // A listing, with every queue open: it is cut short, but carries its queues' counters
    // (and the driver, asked for them, keeps every queue: the exchange below needs them).
    let listed = {
        let mut watcher = Client::connect_socket(&stack.socket()).unwrap();
        let list = watcher
            .list_sessions()
            .unwrap_or_else(|e| panic!("listing {sessions} sessions: {e}"));
        let with_queue: Vec<_> = list.sessions.iter().filter(|s| s.queue.is_some()).collect();
        assert!(
            !with_queue.is_empty(),
            "the listing shows sessions with queues"
        );
        assert!(
            with_queue.iter().all(|s| s.counters.is_some()),
            "every listed queue has its counters"
        );
        with_queue.len()
    };

    // The peer sends every session a datagram and hears every answer.
    let start = Instant::now();
    let (wire, mac) = (&stack.wire, stack.mac);
    wire.set_nonblocking();
    let mut heard = std::collections::BTreeSet::new();
    let ports = FIRST_PORT..FIRST_PORT + sessions as u16;
    for port in ports.clone() {
        while !wire.try_send(&to_port(mac, port)) {
            while let Some(frame) = wire.try_recv() {
                heard.insert(frame);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        // The peer reads as it goes, so the cable never stays full.
        while let Some(frame) = wire.try_recv() {
            heard.insert(frame);
        }
    }
    let end = Instant::now() + PATIENCE;
    let missing = |heard: &std::collections::BTreeSet<Vec<u8>>| {
        ports
            .clone()
            .filter(|&p| !heard.contains(&from_port(mac, p)))
            .count()
    };
    while missing(&heard) > 0 && Instant::now() < end {
        match wire.try_recv() {
            Some(frame) => {
                heard.insert(frame);
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    for w in &mut workers {
        w.expect("answered");
    }
    let exchanged = start.elapsed();
    for port in ports.clone() {
        assert!(
            heard.contains(&from_port(mac, port)),
            "the answer from port {port}"
        );
    }

    // Every session ends: nothing of theirs stays, in any process.
    let start = Instant::now();
    for w in &mut workers {
        w.tell("close");
    }
    for w in &mut workers {
        let closed = w.expect("closed");
        let (fds_before, fds_after, maps_before, maps_after) =
            (closed[0], closed[1], closed[2], closed[3]);
        assert!(
            fds_after <= fds_before && maps_after <= maps_before,
            "a worker keeps {fds_after} descriptors (before {fds_before}) and {maps_after} ring \
             mappings (before {maps_before})"
        );
    }
    let clean = eventually(PATIENCE, || {
        let (d, n) = (Footprint::of(driver_pid), Footprint::of(netd_pid));
        d.fds <= driver_before.fds
            && d.maps <= driver_before.maps
            && n.fds <= netd_before.fds
            && n.maps <= netd_before.maps
    });
    let closed = start.elapsed();
    let (driver_after, netd_after) = (Footprint::of(driver_pid), Footprint::of(netd_pid));
    assert!(
        clean,
        "left behind: the driver {driver_after:?} (before {driver_before:?}), netd \
         {netd_after:?} (before {netd_before:?})"
    );
    // The driver maps no queue but netd's own: every client queue is gone.
    assert!(
        driver_after.maps <= 1,
        "the driver maps {} queues (netd's own at most)",
        driver_after.maps
    );

    let n = sessions as u64;
    let per = |v: u64| v as f64 / n as f64;
    // Resident memory counts the ring pages a process touched (RssShmem) once more than the
    // ring memory does: the total is an upper bound.
    let driver_rss = driver_open.rss_kib << 10;
    let netd_rss = netd_open.rss_kib << 10;
    let total = driver_rss + netd_rss + ring_bytes;
    let per_client = total / n;
    eprintln!(
        "{sessions} sessions in {} worker processes: bound and opened in {opened:.2?} ({:.0} µs \
         each, the workers side by side; a listing showed {listed} with their counters), \
         exchanged a frame each in {exchanged:.2?}, gone in \
         {closed:.2?}\n\
         descriptors per client: driver {:.2} ({} -> {}), netd {:.2} ({} -> {}), workers {:.2}\n\
         memory with every queue open: driver RSS {} MiB ({} MiB before; {} MiB of it ring \
         pages), netd RSS {} MiB ({} MiB before), ring memory {} MiB; in all {} MiB, {:.1} KiB \
         per client; at that rate 10,000 clients need {} MiB (goal {} MiB)",
        workers.len(),
        opened.as_secs_f64() * 1e6 / n as f64,
        per((driver_open.fds - driver_before.fds) as u64),
        driver_before.fds,
        driver_open.fds,
        per((netd_open.fds - netd_before.fds) as u64),
        netd_before.fds,
        netd_open.fds,
        per(worker_fds),
        driver_rss >> 20,
        driver_before.rss_kib >> 10,
        driver_open.shmem_kib >> 10,
        netd_rss >> 20,
        netd_before.rss_kib >> 10,
        ring_bytes >> 20,
        total >> 20,
        per_client as f64 / 1024.0,
        (per_client * 10_000) >> 20,
        GOAL_BYTES_FOR_10K >> 20,
    );
    // `scripts/bench-report` runs the 10,000-session test and shows these figures against
    // their goal.
    if let Some(path) = std::env::var_os(MEMORY_FILE_ENV) {
        let figures = serde_json::json!({
            "sessions": sessions,
            "driver_rss_bytes": driver_rss,
            "netd_rss_bytes": netd_rss,
            "ring_bytes": ring_bytes,
            "total_bytes": total,
            "per_client_bytes": per_client,
        });
        std::fs::write(&path, format!("{figures}\n"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", Path::new(&path).display()));
    }
    // One descriptor per queue in the driver and per session in netd, and a little slack for
    // what either opens meanwhile (logs, the watcher's session).
    for (who, before, open) in [
        ("driver", driver_before, driver_open),
        ("netd", netd_before, netd_open),
    ] {
        let grew = open.fds.saturating_sub(before.fds);
        assert!(
            grew <= sessions + sessions / 2,
            "{who} holds {grew} more descriptors with {sessions} sessions open"
        );
    }
}

#[test]
fn two_thousand_sessions_exchange_a_frame_each_and_leave_nothing_behind() {
    sessions_exchange_a_frame_each_and_leave_nothing_behind(2_000);
}

#[test]
#[ignore = "10,000 sessions: run by name (see the module documentation)"]
fn soak_ten_thousand_sessions_exchange_a_frame_each_and_leave_nothing_behind() {
    sessions_exchange_a_frame_each_and_leave_nothing_behind(10_000);
}
