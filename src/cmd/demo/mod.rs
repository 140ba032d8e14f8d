//! `netmux demo`: netmux end to end, with no privileges and no configuration.
//!
//! In a temporary directory it runs what `netmux up` runs — the driver as a child process
//! (`netmux driver` re-executed) and netd in this process — on a `virtual:` cable, and puts a
//! peer host ([`peer::Peer`], a smoltcp stack driven here) at the cable's far end. The two
//! examples run as child processes (`netmux example udp-echo` and `netmux example http`). The
//! peer then resolves the host by ARP, exchanges UDP with udp-echo, fetches the page from http
//! (one after another and several at once), and sends a UDP datagram in fragments, whose echo
//! must come back whole. A third client, in this process through the client library, transmits
//! spoofed frames (udp-echo's source port, another source IP), which the driver's tx check
//! must reject and count, and tries to bind the examples' ports, which netd must refuse.
//!
//! It prints a line per step and a per-client summary table (the driver's counters for each
//! client's queue), and exits 0 only when everything went as expected; otherwise it says what
//! failed and exits 1. Every wait has a timeout ([`STEP_TIMEOUT`], [`CHILD_READY_TIMEOUT`],
//! and [`EXCHANGE_BUDGET`] for the peer's exchanges together);
//! the children are stopped by pid and the temporary directory removed on every path out.

mod peer;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use netmux_client::blocking::Client;
use netmux_client::Transport;
use netmux_netd::config::{Config, HostAddrs};
use netmux_netd::driver_link::{
    ChannelDriver, CreatedQueue, DriverError, DriverLink, FilterSpec, HOST_QUEUE,
};
use netmux_proto::driver::{Counters, FilterId, QueueConfig, QueueId};
use netmux_proto::{ErrorCode, LinkInfo};
use netmux_ring::TxStatus;
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::IpAddress;

use super::example::http::PAGE;
use super::up::{Host, DRIVER_STOP_GRACE};
use super::{driver, Run};
use peer::Peer;

/// The host's address on the demo cable.
const HOST_IP: [u8; 4] = [10, 77, 0, 1];
/// The peer host's address.
const PEER_IP: [u8; 4] = [10, 77, 0, 2];
/// An address that belongs to nobody: the spoofer's forged source.
const FORGED_IP: [u8; 4] = [10, 77, 0, 99];
/// The demo subnet's prefix length.
const PREFIX: u8 = 24;
/// The peer's MAC: locally administered, "peer" in its last bytes.
const PEER_MAC: [u8; 6] = [0x02, 0x00, b'p', b'e', b'e', b'r'];
/// udp-echo's port (unprivileged, so no policy is needed).
const ECHO_PORT: u16 = 7007;
/// http's port.
const HTTP_PORT: u16 = 8080;
/// The peer's UDP port for whole datagrams.
const PEER_UDP_PORT: u16 = 40_000;
/// The peer's UDP port for the fragmented datagram.
const PEER_FRAG_PORT: u16 = 40_001;
/// The peer's first TCP port.
const PEER_TCP_PORT: u16 = 41_000;
/// Datagrams the peer echoes through udp-echo.
const UDP_EXCHANGES: usize = 3;
/// Page fetches one after another, then this many at once.
const SEQUENTIAL_FETCHES: usize = 2;
/// Page fetches at the same time (the http example listens on four sockets).
const CONCURRENT_FETCHES: usize = 3;
/// The fragmented datagram's payload: more than one fragment, yet its echo fits the MTU in one
/// frame (a client may not transmit fragments: the driver rejects them).
const FRAGMENTED_PAYLOAD_LEN: usize = 1400;
/// Data bytes per fragment (a multiple of 8, as IPv4 requires).
const FRAGMENT_DATA_LEN: usize = 512;
/// Bytes the spoofed frames carry, so the peer can tell whether one got through.
const SPOOF_MARKER: &[u8] = b"netmux-demo-spoofed-frame";
/// Longest wait for one step's exchanges.
const STEP_TIMEOUT: Duration = Duration::from_secs(3);
/// Time for all of the peer's exchanges together, however many steps time out.
const EXCHANGE_BUDGET: Duration = Duration::from_secs(8);
/// Longest wait for an example to print its `listening on` line.
const CHILD_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs netmux end to end on a virtual cable with a built-in peer host; no privileges needed.
#[derive(Debug, clap::Args)]
pub struct Demo {}

impl Run for Demo {
    fn run(self) -> anyhow::Result<ExitCode> {
        driver::init_logging_at("warn");
        let start = Instant::now();
        let dir = TempDir::new()?;
        let progress = Progress { start };
        progress.say(&format!("runtime directory {}", dir.0.display()));
        let outcome = run_demo(&dir.0, &progress);
        drop(dir);
        // Whatever failed, the demo failed: exit status 1 with the reason.
        let report = outcome.map_err(|e| super::Refused(format!("demo failed: {e:#}")))?;
        report.print_table();
        if report.failures.is_empty() {
            println!(
                "demo: every exchange succeeded; spoofed frames rejected and port theft refused \
                 ({:.1} s)",
                start.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        } else {
            for failure in &report.failures {
                println!("FAILED: {failure}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// Progress lines, stamped with the time since the start.
struct Progress {
    start: Instant,
}

impl Progress {
    fn say(&self, line: &str) {
        println!("[{:5.2}s] {line}", self.start.elapsed().as_secs_f64());
    }
}

/// A private temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("netmux-demo-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in the temp dir is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The driver connection shared between netd (which owns requests) and the demo (which reads
/// the statistics at the end); one request at a time either way. Every request is passed on
/// as netd made it (a batch of filters stays one request).
#[derive(Clone)]
struct SharedDriver(Arc<Mutex<ChannelDriver>>);

impl SharedDriver {
    fn lock(&self) -> std::sync::MutexGuard<'_, ChannelDriver> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DriverLink for SharedDriver {
    fn link_info(&self) -> LinkInfo {
        self.lock().link_info()
    }
    fn create_queue(
        &mut self,
        queue: QueueId,
        config: QueueConfig,
        instance: netmux_proto::driver::InstanceId,
    ) -> Result<CreatedQueue, DriverError> {
        self.lock().create_queue(queue, config, instance)
    }
    fn set_instance(
        &mut self,
        info: netmux_proto::driver::InstanceInfo,
    ) -> Result<(), DriverError> {
        self.lock().set_instance(info)
    }
    fn remove_instance(
        &mut self,
        instance: netmux_proto::driver::InstanceId,
    ) -> Result<(), DriverError> {
        self.lock().remove_instance(instance)
    }
    fn destroy_queue(&mut self, queue: QueueId) -> Result<(), DriverError> {
        self.lock().destroy_queue(queue)
    }
    fn resize_queue(
        &mut self,
        queue: QueueId,
        config: QueueConfig,
    ) -> Result<CreatedQueue, DriverError> {
        self.lock().resize_queue(queue, config)
    }
    fn install_filter(&mut self, spec: &FilterSpec) -> Result<(), DriverError> {
        self.lock().install_filter(spec)
    }
    fn install_filters(&mut self, specs: &[FilterSpec]) -> Result<(), DriverError> {
        self.lock().install_filters(specs)
    }
    fn remove_filter(&mut self, queue: QueueId, filter: FilterId) -> Result<(), DriverError> {
        self.lock().remove_filter(queue, filter)
    }
    fn remove_filters(&mut self, queue: QueueId, filters: &[FilterId]) -> Result<(), DriverError> {
        self.lock().remove_filters(queue, filters)
    }
    fn stats(&mut self) -> Result<netmux_netd::driver_link::DriverStats, DriverError> {
        self.lock().stats()
    }
    fn stats_of(
        &mut self,
        queues: &[QueueId],
    ) -> Result<netmux_netd::driver_link::DriverStats, DriverError> {
        self.lock().stats_of(queues)
    }
    fn set_netd_queue(&mut self, queue: QueueId) -> Result<(), DriverError> {
        self.lock().set_netd_queue(queue)
    }
    fn set_host_addresses(&mut self, ipv4: Vec<[u8; 4]>) -> Result<(), DriverError> {
        self.lock().set_host_addresses(ipv4)
    }
    fn gone(&mut self) -> Option<String> {
        self.lock().gone()
    }
    fn operator(
        &mut self,
        request: netmux_proto::ops::OperatorRequest,
    ) -> Result<netmux_proto::ops::OperatorReply, DriverError> {
        self.lock().operator(request)
    }
    fn overlay(
        &mut self,
        request: netmux_proto::driver::DriverRequest,
    ) -> Result<netmux_proto::driver::DriverReply, DriverError> {
        self.lock().overlay(request)
    }
}

/// An example running as a child process, its log in a file; stopped by pid when dropped.
struct Example {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Example {
    /// Starts `netmux example KIND --port PORT --runtime-dir DIR` and waits for its
    /// `listening on PROTO port PORT` line.
    fn start(
        name: &'static str,
        proto: &str,
        port: u16,
        runtime_dir: &Path,
        logs: &Path,
    ) -> anyhow::Result<Example> {
        let log = logs.join(format!("{name}.log"));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let exe = std::env::current_exe().context("finding the running netmux binary")?;
        let mut command = Command::new(exe);
        command
            .args([
                "example",
                name,
                "--port",
                &port.to_string(),
                "--runtime-dir",
            ])
            .arg(runtime_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "debug");
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting the {name} example"))?;
        let stdout = child.stdout.take();
        let mut example = Example {
            name,
            child: Some(child),
            log,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(stdout) = stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let want = format!("listening on {proto} port {port}");
        match rx.recv_timeout(CHILD_READY_TIMEOUT) {
            Ok(line) if line == want => Ok(example),
            Ok(line) => {
                let tail = example.stop_and_tail();
                anyhow::bail!("{name} printed {line:?}, not {want:?}\n{tail}")
            }
            Err(_) => {
                let tail = example.stop_and_tail();
                anyhow::bail!("{name} did not start within {CHILD_READY_TIMEOUT:?}\n{tail}")
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM by pid, SIGKILL after [`DRIVER_STOP_GRACE`]; returns whether it exited 0.
    fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        if let Some(pid) = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let start = Instant::now();
        while start.elapsed() < DRIVER_STOP_GRACE {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn stop_and_tail(&mut self) -> String {
        self.stop();
        self.tail()
    }

    /// The last lines of its log.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(10);
        format!(
            "{} log (last lines):\n{}",
            self.name,
            lines[from..].join("\n")
        )
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What happened, per client, and what went wrong.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
    udp_ok: usize,
    fragmented_ok: usize,
    http_ok: usize,
    spoofer_ok: usize,
    spoofs_rejected: usize,
    thefts_refused: usize,
    rows: Vec<Row>,
}

/// One line of the summary table.
struct Row {
    client: String,
    pid: String,
    ports: String,
    counters: Counters,
    ok: String,
    refused: String,
}

impl Report {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }

    fn print_table(&self) {
        println!();
        println!(
            "{:<10} {:>7} {:<10} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8}  refused",
            "client",
            "pid",
            "port",
            "frames in",
            "bytes in",
            "frames out",
            "bytes out",
            "rejected",
            "ok"
        );
        for row in &self.rows {
            let rejected: u64 = row.counters.tx_rejected.iter().map(|(_, n)| n).sum();
            println!(
                "{:<10} {:>7} {:<10} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8}  {}",
                row.client,
                row.pid,
                row.ports,
                row.counters.rx_frames,
                row.counters.rx_bytes,
                row.counters.tx_frames,
                row.counters.tx_bytes,
                rejected,
                row.ok,
                row.refused
            );
        }
        println!();
    }
}

fn run_demo(dir: &Path, progress: &Progress) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let runtime_dir = dir.join("run");
    let cable = dir.join("cable.sock");
    let peer_end = dir.join("peer.sock");
    let mut peer = Peer::bind(
        &peer_end,
        &cable,
        PEER_MAC,
        (PEER_IP, PREFIX),
        SPOOF_MARKER,
        Instant::now() + EXCHANGE_BUDGET,
    )?;

    let mut config = Config::new(&runtime_dir);
    config.addrs = HostAddrs {
        ipv4: Some((Ipv4Addr::from(HOST_IP), PREFIX)),
        gateway: None,
        ipv6_link_local: false,
    };
    let link = format!("virtual:{},{}", cable.display(), peer_end.display());
    let mut kept: Option<SharedDriver> = None;
    let host = Host::start(&link, config, Some("warn"), |channel| {
        let shared = SharedDriver(Arc::new(Mutex::new(channel)));
        kept = Some(shared.clone());
        Box::new(shared)
    })?;
    let mut stats = kept.context("the driver connection was not kept")?;
    progress.say(&format!(
        "driver (pid {}) on {link}; netd listening on {}",
        host.driver_pid(),
        host.socket().display()
    ));

    let mut echo = Example::start("udp-echo", "udp", ECHO_PORT, &runtime_dir, dir)?;
    progress.say(&format!(
        "udp-echo (pid {}) listening on udp port {ECHO_PORT}",
        echo.pid()
    ));
    let mut http = Example::start("http", "tcp", HTTP_PORT, &runtime_dir, dir)?;
    progress.say(&format!(
        "http (pid {}) listening on tcp port {HTTP_PORT}",
        http.pid()
    ));

    // The budget counts from when the clients are up.
    peer.deadline = Instant::now() + EXCHANGE_BUDGET;
    // ARP: the host's address resolves to the link's MAC (netd answers for the host).
    let host_mac = arp(&mut peer);
    let link_mac = stats.link_info().mac;
    match host_mac {
        Some(mac) => {
            progress.say(&format!(
                "peer: ARP says {} is at {}",
                Ipv4Addr::from(HOST_IP),
                mac_text(&mac)
            ));
            report.check(
                mac == link_mac,
                format!(
                    "ARP answered {} but the link's MAC is {}",
                    mac_text(&mac),
                    mac_text(&link_mac)
                ),
            );
        }
        None => report.check(false, "ARP: no reply for the host's address"),
    }
    let host_mac = host_mac.unwrap_or(link_mac);

    report.udp_ok = udp_exchanges(&mut peer);
    progress.say(&format!(
        "peer: {}/{UDP_EXCHANGES} UDP datagrams echoed by udp-echo",
        report.udp_ok
    ));
    report.check(
        report.udp_ok == UDP_EXCHANGES,
        format!("UDP: {}/{UDP_EXCHANGES} echoes came back", report.udp_ok),
    );

    let sequential: usize = (0..SEQUENTIAL_FETCHES)
        .map(|i| fetch_pages(&mut peer, PEER_TCP_PORT + i as u16, 1))
        .sum();
    let concurrent = fetch_pages(
        &mut peer,
        PEER_TCP_PORT + SEQUENTIAL_FETCHES as u16,
        CONCURRENT_FETCHES,
    );
    report.http_ok = sequential + concurrent;
    progress.say(&format!(
        "peer: page fetched over TCP {sequential}/{SEQUENTIAL_FETCHES} times one after another, \
         {concurrent}/{CONCURRENT_FETCHES} at once"
    ));
    report.check(
        sequential == SEQUENTIAL_FETCHES && concurrent == CONCURRENT_FETCHES,
        format!(
            "HTTP: {sequential}/{SEQUENTIAL_FETCHES} sequential and \
             {concurrent}/{CONCURRENT_FETCHES} concurrent fetches got the page"
        ),
    );

    match fragmented_echo(&mut peer, host_mac) {
        Ok(fragments) => {
            report.fragmented_ok = 1;
            progress.say(&format!(
                "peer: a {FRAGMENTED_PAYLOAD_LEN}-byte datagram sent in {fragments} fragments \
                 came back whole"
            ));
        }
        Err(e) => report.check(false, format!("fragmented UDP: {e}")),
    }

    let spoofer = spoof_and_steal(&runtime_dir, &mut report, progress);
    let spoofer_pid = std::process::id();
    // Let anything the driver wrongly let through reach the peer before counting.
    peer.run_until(Duration::from_millis(100), |_| false);
    report.check(
        peer.marked_frames() == 0,
        format!("{} spoofed frames reached the peer", peer.marked_frames()),
    );

    // The driver's counters for every queue, matched to the clients by netd's sessions.
    let sessions = host
        .netd()
        .map(|n| netmux_netd::server::lock(&n.state()).sessions())
        .unwrap_or_default();
    let counters: HashMap<QueueId, Counters> = stats
        .stats()
        .context("reading the driver's counters")?
        .queues
        .into_iter()
        .collect();
    let names: [(u32, &str, String, String); 3] = [
        (
            echo.pid(),
            "udp-echo",
            format!("{}+{} frag", report.udp_ok, report.fragmented_ok),
            "-".into(),
        ),
        (
            http.pid(),
            "http",
            format!("{}", report.http_ok),
            "-".into(),
        ),
        (
            spoofer_pid,
            "spoofer",
            format!("{}", report.spoofer_ok),
            format!(
                "{} spoofs, {} thefts",
                report.spoofs_rejected, report.thefts_refused
            ),
        ),
    ];
    for (pid, name, ok, refused) in names {
        let Some(session) = sessions
            .iter()
            .find(|s| s.creds.pid == pid && s.queue.is_some())
        else {
            report.check(false, format!("{name}: no session with a queue at netd"));
            continue;
        };
        let ports: Vec<String> = session
            .ports
            .iter()
            .map(|(t, p)| format!("{}/{p}", format!("{t:?}").to_lowercase()))
            .collect();
        report.rows.push(Row {
            client: name.into(),
            pid: pid.to_string(),
            ports: ports.join(","),
            counters: session
                .queue
                .and_then(|q| counters.get(&q).cloned())
                .unwrap_or_default(),
            ok,
            refused,
        });
    }
    report.rows.push(Row {
        client: "netd host".into(),
        pid: std::process::id().to_string(),
        ports: "arp,icmp".into(),
        counters: counters.get(&HOST_QUEUE).cloned().unwrap_or_default(),
        ok: "-".into(),
        refused: "-".into(),
    });
    if let Some(row) = report.rows.iter().find(|r| r.client == "spoofer") {
        let rejected: u64 = row.counters.tx_rejected.iter().map(|(_, n)| n).sum();
        let counted = usize::try_from(rejected).unwrap_or(usize::MAX);
        report.check(
            counted == report.spoofs_rejected && counted > 0,
            format!(
                "the driver counted {counted} rejected frames for the spoofer, expected {}",
                report.spoofs_rejected
            ),
        );
    }

    drop(spoofer);
    let echo_clean = echo.stop();
    let http_clean = http.stop();
    report.check(echo_clean, "udp-echo did not exit cleanly on SIGTERM");
    report.check(http_clean, "http did not exit cleanly on SIGTERM");
    if !report.failures.is_empty() {
        for example in [&echo, &http] {
            println!("{}", example.tail());
        }
    }
    host.stop()?;
    progress.say("examples, netd and the driver stopped");
    Ok(report)
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Sends an ARP request for the host's address by hand and returns the MAC in the reply.
fn arp(peer: &mut Peer) -> Option<[u8; 6]> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&peer.mac);
    frame.extend_from_slice(&[0x08, 0x06]); // ARP
    frame.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4 request
    frame.extend_from_slice(&peer.mac);
    frame.extend_from_slice(&peer.ip);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&HOST_IP);
    peer.send_raw(&frame).ok()?;
    peer.recv_raw_until(STEP_TIMEOUT, |f| {
        let is_reply = f.get(12..14) == Some(&[0x08, 0x06][..])
            && f.get(20..22) == Some(&[0x00, 0x02][..])
            && f.get(28..32) == Some(&HOST_IP[..]);
        if is_reply {
            f.get(22..28).and_then(|m| m.try_into().ok())
        } else {
            None
        }
    })
}

fn udp_socket(peer: &mut Peer, port: u16) -> Option<smoltcp::iface::SocketHandle> {
    let buffer =
        || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1024]);
    let mut socket = udp::Socket::new(buffer(), buffer());
    socket.bind(port).ok()?;
    Some(peer.sockets.add(socket))
}

/// Sends [`UDP_EXCHANGES`] datagrams to udp-echo; returns how many came back unchanged.
fn udp_exchanges(peer: &mut Peer) -> usize {
    let Some(handle) = udp_socket(peer, PEER_UDP_PORT) else {
        return 0;
    };
    let host = (
        IpAddress::v4(HOST_IP[0], HOST_IP[1], HOST_IP[2], HOST_IP[3]),
        ECHO_PORT,
    );
    let mut ok = 0;
    for i in 0..UDP_EXCHANGES {
        let message = format!("hello netmux #{i}").into_bytes();
        if peer
            .sockets
            .get_mut::<udp::Socket>(handle)
            .send_slice(&message, host)
            .is_err()
        {
            continue;
        }
        let mut echoed = false;
        peer.run_until(STEP_TIMEOUT, |sockets| {
            let socket = sockets.get_mut::<udp::Socket>(handle);
            if let Ok((data, meta)) = socket.recv() {
                echoed = data == message.as_slice() && meta.endpoint.port == ECHO_PORT;
            }
            echoed
        });
        ok += usize::from(echoed);
    }
    peer.sockets.remove(handle);
    ok
}

/// Opens `count` connections to http at once (from consecutive local ports) and returns how
/// many got the whole page.
fn fetch_pages(peer: &mut Peer, first_port: u16, count: usize) -> usize {
    let host = (
        IpAddress::v4(HOST_IP[0], HOST_IP[1], HOST_IP[2], HOST_IP[3]),
        HTTP_PORT,
    );
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        Ipv4Addr::from(HOST_IP)
    );
    let mut conns = Vec::new();
    for i in 0..count {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 16 * 1024]),
            tcp::SocketBuffer::new(vec![0; 16 * 1024]),
        );
        let local = first_port + i as u16;
        if socket.connect(peer.iface.context(), host, local).is_err() {
            continue;
        }
        conns.push((peer.sockets.add(socket), false, Vec::<u8>::new()));
    }
    peer.run_until(STEP_TIMEOUT, |sockets| {
        let mut all_done = true;
        for (handle, sent, body) in conns.iter_mut() {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            if !*sent && socket.can_send() {
                *sent = socket.send_slice(request.as_bytes()).is_ok();
            }
            while socket.can_recv() {
                let got = socket.recv(|d| (d.len(), d.to_vec())).unwrap_or_default();
                if got.is_empty() {
                    break;
                }
                body.extend_from_slice(&got);
            }
            if *sent && !socket.may_recv() && socket.state() != tcp::State::SynSent {
                socket.close();
            } else {
                all_done = false;
            }
        }
        all_done
    });
    let ok = conns
        .iter()
        .filter(|(_, _, body)| {
            body.starts_with(b"HTTP/1.1 200 OK\r\n") && body.ends_with(PAGE.as_bytes())
        })
        .count();
    // Let the closing handshakes finish, then free the sockets.
    peer.run_until(Duration::from_millis(50), |_| false);
    for (handle, _, _) in conns {
        peer.sockets.remove(handle);
    }
    ok
}

/// Sends one UDP datagram to udp-echo as [`FRAGMENT_DATA_LEN`]-byte IPv4 fragments, built by
/// hand, and waits for the echo; returns the number of fragments sent.
fn fragmented_echo(peer: &mut Peer, host_mac: [u8; 6]) -> anyhow::Result<usize> {
    let handle = udp_socket(peer, PEER_FRAG_PORT).context("binding the peer's socket")?;
    let payload: Vec<u8> = (0..FRAGMENTED_PAYLOAD_LEN)
        .map(|i| (i % 251) as u8)
        .collect();
    let mut whole = Vec::new();
    etherparse::PacketBuilder::ethernet2(peer.mac, host_mac)
        .ipv4(peer.ip, HOST_IP, 64)
        .udp(PEER_FRAG_PORT, ECHO_PORT)
        .write(&mut whole, &payload)
        .context("building the datagram")?;
    let fragments = netmux_driver::reassembly::fragmenter::fragment(&whole, FRAGMENT_DATA_LEN, 0)
        .context("fragmenting the datagram")?;
    for fragment in &fragments {
        peer.send_raw(fragment)?;
    }
    let mut echoed: Option<usize> = None;
    peer.run_until(STEP_TIMEOUT, |sockets| {
        if let Ok((data, _)) = sockets.get_mut::<udp::Socket>(handle).recv() {
            echoed = Some(if data == payload.as_slice() {
                data.len()
            } else {
                0
            });
        }
        echoed.is_some()
    });
    peer.sockets.remove(handle);
    match echoed {
        Some(n) if n == FRAGMENTED_PAYLOAD_LEN => Ok(fragments.len()),
        Some(_) => anyhow::bail!("the echo differs from what was sent"),
        None => anyhow::bail!("no echo within {STEP_TIMEOUT:?}"),
    }
}

/// The third client: transmits frames with udp-echo's source port and a forged source IP
/// (the driver must reject and count both), one frame of its own (must be sent), and tries to
/// bind udp-echo's and http's ports (netd must refuse). Returns the session, kept open until
/// the counters are read.
fn spoof_and_steal(runtime_dir: &Path, report: &mut Report, progress: &Progress) -> Option<Client> {
    let mut client = match Client::connect(runtime_dir) {
        Ok(c) => c,
        Err(e) => {
            report.check(false, format!("spoofer: connecting to netd: {e}"));
            return None;
        }
    };
    let own = match client.get_port(Transport::Udp) {
        Ok(p) => p,
        Err(e) => {
            report.check(false, format!("spoofer: getting a port: {e}"));
            return Some(client);
        }
    };
    let mac = client.host().link.mac;
    let mut queue = match client.open_queue() {
        Ok(q) => q,
        Err(e) => {
            report.check(false, format!("spoofer: opening its queue: {e}"));
            return Some(client);
        }
    };
    let frame = |src_ip: [u8; 4], sport: u16| {
        let mut f = Vec::new();
        let _ = etherparse::PacketBuilder::ethernet2(mac, PEER_MAC)
            .ipv4(src_ip, PEER_IP, 64)
            .udp(sport, PEER_UDP_PORT)
            .write(&mut f, SPOOF_MARKER);
        f
    };
    let mut own_frame = Vec::new();
    let _ = etherparse::PacketBuilder::ethernet2(mac, PEER_MAC)
        .ipv4(HOST_IP, PEER_IP, 64)
        .udp(own, PEER_UDP_PORT + 1)
        .write(&mut own_frame, b"from the spoofer's own port");
    let cases = [
        (
            frame(HOST_IP, ECHO_PORT),
            TxStatus::RejectedUnownedSourcePort,
            "udp-echo's source port",
        ),
        (
            frame(FORGED_IP, own),
            TxStatus::RejectedSourceIp,
            "a forged source IP",
        ),
        (own_frame, TxStatus::Sent, "its own port"),
    ];
    let frames: Vec<[&[u8]; 1]> = cases.iter().map(|(f, _, _)| [f.as_slice()]).collect();
    let refs: Vec<&[&[u8]]> = frames.iter().map(|f| &f[..]).collect();
    let first = match queue.send(&refs) {
        Ok(outcome) => outcome.first_seq,
        Err(e) => {
            report.check(false, format!("spoofer: sending: {e}"));
            return Some(client);
        }
    };
    let mut done = Vec::new();
    let start = Instant::now();
    while done.len() < cases.len() && start.elapsed() < STEP_TIMEOUT {
        if queue.completions(16, &mut done).is_err() {
            break;
        }
        if done.len() < cases.len() {
            let _ = queue.wait_readable(Some(Duration::from_millis(10)));
        }
    }
    for (i, (_, want, what)) in cases.iter().enumerate() {
        let got = done
            .iter()
            .find(|c| c.seq == first + i as u64)
            .map(|c| c.status);
        match got {
            Some(status) if status == *want && status.is_sent() => report.spoofer_ok += 1,
            Some(status) if status == *want => report.spoofs_rejected += 1,
            other => report.check(
                false,
                format!("spoofer: a frame from {what} ended {other:?}, expected {want:?}"),
            ),
        }
    }
    progress.say(&format!(
        "spoofer (udp port {own}): {} spoofed frames rejected by the driver, {} frame of its own sent",
        report.spoofs_rejected, report.spoofer_ok
    ));
    for (transport, port, name) in [
        (Transport::Udp, ECHO_PORT, "udp-echo"),
        (Transport::Tcp, HTTP_PORT, "http"),
    ] {
        match client.bind_port(transport, port) {
            Err(e) if e.refusal().is_some_and(|r| r.code == ErrorCode::InUse) => {
                report.thefts_refused += 1;
                progress.say(&format!("spoofer: netd refused {name}'s port: {e}"));
            }
            Err(e) => report.check(
                false,
                format!("spoofer: binding {name}'s port failed oddly: {e}"),
            ),
            Ok(_) => report.check(
                false,
                format!("spoofer: netd let it bind {name}'s port {port}"),
            ),
        }
    }
    drop(queue);
    Some(client)
}
