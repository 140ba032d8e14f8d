//! End to end with a real Linux kernel as the peer, as root, on links exactly as Linux makes
//! them: no test changes any offload, except the ones that force GRO *on* at netmux's end.
//!
//! Each test makes namespaces of its own (`netmux_testkit::netns`): `netmux up` runs inside one
//! (`ip netns exec`), on the end of a veth pair (`afpacket:`) whose other end, in a second
//! namespace, is the kernel's with 192.0.2.1/24, or on a TAP device whose kernel side, in
//! netmux's namespace, has that address. netmux is 192.0.2.2. `netmux example udp-echo` and
//! `netmux example http` are client processes (they reach netd by its Unix socket); the
//! kernel's own sockets, on a thread inside the kernel's namespace, are their peers. The
//! kernel's veth end keeps its default offloads (the tests assert transmit checksum offload and
//! TSO are on), so it hands frames over with partial checksums and 64 KiB aggregates.
//!
//! What is proved, per link: the UDP echo answers the kernel, also for a UDP GSO send of
//! several datagrams at once; the HTTP page loads; a 64 MiB upload from the kernel to the
//! client (`POST /sink`, checked by length and FNV-1a hash) and a 64 MiB download from the client
//! to the kernel (`GET /bytes/N`, checked byte by byte) are exact; `netmux ls` shows the link
//! up and what the driver finished (checksums, aggregates). And for links that go away: a veth
//! end set down and up again under a download, one deleted and created again, a TAP deleted
//! and created again, and a TAP deleted for longer than `--link-timeout`: the driver logs each
//! change once, stays idle while the link is away (CPU time from `/proc/PID/stat`), keeps the
//! client sessions, resumes by itself, or ends with a clear error that `netmux up` passes on.
//!
//! Only addresses in 192.0.2.0/24 inside the tests' namespaces are used; only processes these
//! tests started are stopped, by their pid; the namespaces (and every interface in them) are
//! deleted on drop whatever happened. Every test is named `root_*` and `#[ignore]`d:
//! `scripts/test` runs them when it runs as root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use netmux_client::blocking::Client;
use netmux_client::Transport;
use netmux_proto::ErrorCode;
use netmux_testkit::netns::{self, NetNs, Proc};
use netmux_testkit::{http_sink_hash, read_http_head, TempDir, FNV1A64_OFFSET};

/// How long any one expected event may take (process start-up, ARP, builds sharing the CPU).
const PATIENCE: Duration = Duration::from_secs(30);
/// A killed client's port must be free again within this (what RELIABILITY.md promises).
const PORT_FREE_WITHIN: Duration = Duration::from_secs(1);
const UDP_PORT: u16 = 7777;
const HTTP_PORT: u16 = 8080;
/// The bulk transfers' size, each way.
const BULK: u64 = 64 << 20;
const KERNEL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NETMUX: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// netmux's veth end, the kernel's, and the TAP device (names are per namespace).
const MUX_END: &str = "nmx0";
const KERNEL_END: &str = "nmx1";
const TAP: &str = "nmxt0";
/// CPU time the driver may use in [`IDLE_WINDOW`] while its link is away: 1% of a core
/// (clock ticks are 10 ms); a spinning driver uses 100%.
const IDLE_TICKS: u64 = 2;
const IDLE_WINDOW: Duration = Duration::from_secs(2);

fn netmux() -> PathBuf {
    netns::binary_under_test(env!("CARGO_BIN_EXE_netmux"))
}

/// Which link netmux runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A veth pair as `ip link add` makes it; `gro` forces GRO on at netmux's end.
    Veth { gro: bool },
    /// A TAP device `netmux up` creates.
    Tap,
}

/// `netmux up` on a link, with the kernel at the link's far end.
struct Host {
    /// The kernel's namespace (for a veth); declared first, so it goes before `mux`.
    kernel: Option<NetNs>,
    mux: NetNs,
    dir: TempDir,
    up: Proc,
    driver_pid: u32,
}

impl Host {
    fn start(kind: Kind, tag: &str, up_args: &[&str]) -> Host {
        let mux = NetNs::new(&format!("{tag}m"));
        let dir = TempDir::new(&format!("nmx-e2e-{tag}"));
        let kernel = match kind {
            Kind::Veth { gro } => {
                let kernel = NetNs::new(&format!("{tag}k"));
                netns::veth(&mux, MUX_END, &kernel, KERNEL_END);
                let defaults = netns::offloads(&kernel, KERNEL_END);
                assert!(
                    defaults.tx_checksum && defaults.tso,
                    "the kernel's end keeps Linux's defaults: {defaults:?}"
                );
                if gro {
                    netns::set_gro(&mux, MUX_END, true);
                    assert!(netns::offloads(&mux, MUX_END).gro, "GRO forced on");
                }
                mux.ip(&["link", "set", MUX_END, "up"]);
                kernel_side(&kernel, KERNEL_END);
                Some(kernel)
            }
            Kind::Tap => None,
        };
        let spec = match kind {
            Kind::Veth { .. } => format!("afpacket:{MUX_END}"),
            Kind::Tap => format!("tap:{TAP}"),
        };
        let ip = format!("{NETMUX}/24");
        let mut args = vec!["--ip", ip.as_str()];
        args.extend_from_slice(up_args);
        let cmd = netns::up_command(&mux, &netmux(), &spec, &args, &dir.join("run"));
        let mut up = Proc::spawn("netmux up", cmd, &dir.join("up.log"));
        let line = up.expect_line("netd listening", PATIENCE);
        let driver_pid = netns::driver_pid(&line);
        if kind == Kind::Tap {
            kernel_side(&mux, TAP);
        }
        Host {
            kernel,
            mux,
            dir,
            up,
            driver_pid,
        }
    }

    /// Where the kernel's sockets live.
    fn peer(&self) -> &NetNs {
        self.kernel.as_ref().unwrap_or(&self.mux)
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn example(&self, name: &str, kind: &str, port: u16) -> Proc {
        let cmd = netns::example_command(Command::new(netmux()), kind, port, &[], &self.run_dir());
        Proc::spawn(name, cmd, &self.dir.join(format!("{name}.log")))
    }

    fn echo(&self) -> Proc {
        let mut p = self.example("udp-echo", "udp-echo", UDP_PORT);
        p.expect_line(&format!("listening on udp port {UDP_PORT}"), PATIENCE);
        p
    }

    fn http(&self) -> Proc {
        let mut p = self.example("http", "http", HTTP_PORT);
        p.expect_line(&format!("listening on tcp port {HTTP_PORT}"), PATIENCE);
        p
    }

    fn ls(&self) -> String {
        netns::netmux_ok(Command::new(netmux()), &["ls"], &self.run_dir())
    }

    /// Waits until `netmux ls` says the link is `state`.
    fn wait_link(&self, state: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ls = self.ls();
            if ls.contains(&format!("link {state}:")) {
                return ls;
            }
            assert!(
                Instant::now() < deadline,
                "the link never became {state}:\n{ls}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Lines of the driver's (and netd's) log containing `text`.
    fn log_lines(&self, text: &str) -> usize {
        self.up.log().lines().filter(|l| l.contains(text)).count()
    }

    /// The driver's CPU time over [`IDLE_WINDOW`], in clock ticks.
    fn driver_ticks_over_idle_window(&self) -> u64 {
        let before = netns::cpu_ticks(self.driver_pid);
        std::thread::sleep(IDLE_WINDOW);
        netns::cpu_ticks(self.driver_pid) - before
    }
}

/// The kernel's side of the link: 192.0.2.1/24 on `ifname` in `ns`, up.
fn kernel_side(ns: &NetNs, ifname: &str) {
    ns.ip(&["addr", "add", &format!("{KERNEL}/24"), "dev", ifname]);
    ns.ip(&["link", "set", ifname, "up"]);
}

/// Sends a datagram to the echo from the kernel until the same bytes come back (the first ones
/// may wait for ARP, or for the link to come back).
fn udp_echo_from_kernel(ns: &NetNs, payload: &'static [u8]) {
    netns::udp_echo_from(ns, SocketAddr::from((NETMUX, UDP_PORT)), payload, PATIENCE);
}

/// `UDP_SEGMENT` from `<linux/udp.h>`: the socket option of UDP GSO.
const UDP_SEGMENT: libc::c_int = 103;

/// One UDP GSO send of `count` datagrams of `size` bytes (the kernel hands the link a single
/// aggregate where it can); every one must come back from the echo.
fn udp_gso_echo_from_kernel(ns: &NetNs, count: usize, size: usize) {
    let target = SocketAddr::from((NETMUX, UDP_PORT));
    ns.run(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let segment = libc::c_int::try_from(size).unwrap();
        netns::set_socket_option(&sock, libc::SOL_UDP, UDP_SEGMENT, &segment)
            .unwrap_or_else(|e| panic!("UDP_SEGMENT: {e}"));
        let payload: Vec<u8> = (0..count * size).map(|i| (i / size) as u8).collect();
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 2048];
        'attempt: loop {
            sock.send_to(&payload, target).unwrap();
            let mut seen = vec![false; count];
            while seen.iter().any(|s| !s) {
                match sock.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        assert_eq!(n, size, "each segment is echoed as a datagram of its own");
                        seen[usize::from(buf[0])] = true;
                    }
                    Err(e) => {
                        assert!(Instant::now() < deadline, "UDP GSO echo incomplete: {e}");
                        continue 'attempt;
                    }
                }
            }
            return;
        }
    });
}

/// Connects to the HTTP example from the kernel (retrying while ARP or the listener is not
/// there yet).
fn connect_http() -> TcpStream {
    let stream = netns::tcp_connect(SocketAddr::from((NETMUX, HTTP_PORT)), PATIENCE);
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Loads the page over the kernel's TCP.
fn http_page_from_kernel(ns: &NetNs) -> String {
    ns.run(move || {
        let mut stream = connect_http();
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {NETMUX}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let (head, mut body) = read_http_head(&mut stream);
        stream.read_to_end(&mut body).unwrap();
        format!("{head}{}", String::from_utf8_lossy(&body))
    })
}

/// Downloads `GET /bytes/n` from the client to the kernel and checks every byte; returns how
/// long the body took.
fn download(n: u64) -> Duration {
    let mut stream = connect_http();
    write!(
        stream,
        "GET /bytes/{n} HTTP/1.1\r\nHost: {NETMUX}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let start = Instant::now();
    let (head, first) = read_http_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(&format!("Content-Length: {n}\r\n")), "{head}");
    let mut at = 0u64;
    let check = |bytes: &[u8], at: &mut u64| {
        for &b in bytes {
            assert_eq!(
                b,
                netmux_testkit::http_pattern_byte(*at),
                "byte {} of the download",
                *at
            );
            *at += 1;
        }
    };
    check(&first, &mut at);
    let mut buf = vec![0u8; 256 * 1024];
    while at < n {
        let got = stream.read(&mut buf).expect("reading the download");
        assert!(got > 0, "the download ended after {at} of {n} bytes");
        check(&buf[..got], &mut at);
    }
    assert_eq!(at, n);
    start.elapsed()
}

/// Uploads `n` bytes from the kernel to the client's `POST /sink` and checks its length and
/// hash; returns how long it took.
fn upload(n: u64) -> Duration {
    let mut stream = connect_http();
    write!(
        stream,
        "POST /sink HTTP/1.1\r\nHost: {NETMUX}\r\nContent-Length: {n}\r\n\r\n"
    )
    .unwrap();
    let start = Instant::now();
    let mut hash = FNV1A64_OFFSET;
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0u64;
    while at < n {
        let len = (buf.len() as u64).min(n - at) as usize;
        for (k, b) in buf[..len].iter_mut().enumerate() {
            *b = netmux_testkit::http_pattern_byte(at + k as u64) ^ 0x5a;
        }
        hash = http_sink_hash(hash, &buf[..len]);
        stream.write_all(&buf[..len]).expect("writing the upload");
        at += len as u64;
    }
    let (head, mut body) = read_http_head(&mut stream);
    stream.read_to_end(&mut body).unwrap();
    let elapsed = start.elapsed();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("received {n} bytes, fnv1a64 {hash:016x}\n"),
        "the sink saw exactly the bytes sent"
    );
    elapsed
}

/// A 64 MiB transfer each way, byte-exact; prints the rates.
fn bulk_both_ways(host: &Host, tag: &str) {
    let up = host.peer().run(|| upload(BULK));
    let down = host.peer().run(|| download(BULK));
    let rate = |d: Duration| BULK as f64 / d.as_secs_f64() / 1e6;
    eprintln!(
        "{tag}: 64 MiB kernel -> client in {up:.2?} ({:.1} MB/s), client -> kernel in {down:.2?} ({:.1} MB/s)",
        rate(up),
        rate(down)
    );
}

/// The counter `name=N` in `netmux ls`'s link line.
fn link_counter(ls: &str, name: &str) -> u64 {
    let line = ls
        .lines()
        .find(|l| l.starts_with("link "))
        .unwrap_or_else(|| panic!("no link line in\n{ls}"));
    line.split([' ', ','])
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Everything a user does on a link, see the module documentation.
fn scenario(kind: Kind, tag: &str) {
    let host = Host::start(kind, tag, &[]);
    let mut echo = host.echo();
    let web = host.http();

    udp_echo_from_kernel(host.peer(), b"hello from the kernel");
    udp_gso_echo_from_kernel(host.peer(), 8, 1000);
    let page = http_page_from_kernel(host.peer());
    assert!(
        page.starts_with("HTTP/1.") && page.lines().next().unwrap_or("").contains(" 200"),
        "the page loads: {page:?}"
    );
    bulk_both_ways(&host, tag);

    let ls = host.ls();
    eprintln!("{tag}: netmux ls:\n{ls}");
    for needle in [
        format!("udp/{UDP_PORT}"),
        format!("tcp/{HTTP_PORT}"),
        echo.pid().to_string(),
        web.pid().to_string(),
        "link up:".to_string(),
    ] {
        assert!(ls.contains(&needle), "{needle} missing from\n{ls}");
    }
    assert!(
        link_counter(&ls, "csum-completed") > 0,
        "frames left with partial checksums were completed:\n{ls}"
    );
    assert!(
        link_counter(&ls, "gso-split") > 0,
        "aggregates were cut into ordinary frames:\n{ls}"
    );

    // A third client cannot take the echo's port.
    let mut thief = host.example("thief", "udp-echo", UDP_PORT);
    let status = thief.wait_exit(PATIENCE);
    assert!(
        !status.success(),
        "the second bind of udp {UDP_PORT} is refused"
    );

    // kill -9 the echo: its port is free within a second, and a new client binds it.
    echo.kill9();
    let killed = Instant::now();
    let mut probe = Client::connect(&host.run_dir()).expect("netd takes a client");
    loop {
        match probe.bind_port(Transport::Udp, UDP_PORT) {
            Ok(_) => break,
            Err(e) if e.refusal().is_some_and(|r| r.code == ErrorCode::InUse) => {
                assert!(
                    killed.elapsed() < PORT_FREE_WITHIN,
                    "udp {UDP_PORT} still held {:?} after kill -9 of its client",
                    killed.elapsed()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("binding udp {UDP_PORT} after the kill: {e}"),
        }
    }
    eprintln!(
        "{tag}: udp {UDP_PORT} free {:?} after kill -9",
        killed.elapsed()
    );
    drop(probe);
    let _echo2 = host.echo();
    udp_echo_from_kernel(host.peer(), b"and again, from a new client");
}

#[test]
#[ignore]
fn root_kernel_peers_reach_the_examples_over_afpacket_on_a_veth_as_linux_makes_it() {
    netns::require_root();
    scenario(Kind::Veth { gro: false }, "af");
}

#[test]
#[ignore]
fn root_kernel_peers_reach_the_examples_over_afpacket_with_gro_forced_on_at_netmux_end() {
    netns::require_root();
    scenario(Kind::Veth { gro: true }, "gro");
}

#[test]
#[ignore]
fn root_kernel_peers_reach_the_examples_over_a_tap_device() {
    netns::require_root();
    scenario(Kind::Tap, "tap");
}

#[test]
#[ignore]
fn root_a_veth_set_down_and_up_keeps_sessions_idles_and_resumes_a_download_across_it() {
    netns::require_root();
    let host = Host::start(Kind::Veth { gro: false }, "down", &[]);
    let echo = host.echo();
    let web = host.http();
    udp_echo_from_kernel(host.peer(), b"before");

    // Down with nothing to send: the driver must sleep, not spin on the socket's error.
    host.mux.ip(&["link", "set", MUX_END, "down"]);
    let ls = host.wait_link("down");
    let ticks = host.driver_ticks_over_idle_window();
    assert!(
        ticks <= IDLE_TICKS,
        "the driver used {ticks} ticks in {IDLE_WINDOW:?} while the link was down"
    );
    for pid in [echo.pid(), web.pid()] {
        assert!(
            ls.contains(&pid.to_string()),
            "session of {pid} kept:\n{ls}"
        );
    }
    host.mux.ip(&["link", "set", MUX_END, "up"]);
    udp_echo_from_kernel(host.peer(), b"after, from the same client");

    // Down in the middle of a download: the client's transmissions complete with link-down,
    // its connection survives, and the download ends byte-exact once the link is back.
    let download = host.peer().spawn(|| download(16 << 20));
    std::thread::sleep(Duration::from_millis(300));
    host.mux.ip(&["link", "set", MUX_END, "down"]);
    host.wait_link("down");
    std::thread::sleep(Duration::from_secs(1));
    host.mux.ip(&["link", "set", MUX_END, "up"]);
    let took = download.join().expect("the download across the outage");
    eprintln!("16 MiB download across a link down and up: {took:.2?}");
    let ls = host.wait_link("up");
    assert!(
        link_counter(&ls, "link-down") > 0,
        "transmissions while down completed with link-down:\n{ls}"
    );
    assert_eq!(host.log_lines("link is down"), 2, "{}", host.up.log());
    assert_eq!(host.log_lines("link is up again"), 2, "{}", host.up.log());
}

#[test]
#[ignore]
fn root_a_veth_deleted_and_created_again_is_reopened_and_the_driver_idles_meanwhile() {
    netns::require_root();
    let host = Host::start(Kind::Veth { gro: false }, "del", &[]);
    let echo = host.echo();
    udp_echo_from_kernel(host.peer(), b"before");
    let mac = netns::mac_of(&host.mux, MUX_END);

    host.mux.ip(&["link", "del", MUX_END]);
    let ls = host.wait_link("gone");
    assert!(ls.contains(&echo.pid().to_string()), "session kept:\n{ls}");
    let ticks = host.driver_ticks_over_idle_window();
    assert!(
        ticks <= IDLE_TICKS,
        "the driver used {ticks} ticks in {IDLE_WINDOW:?} while the link was gone"
    );

    let kernel = host.kernel.as_ref().unwrap();
    netns::ip(&[
        "link",
        "add",
        MUX_END,
        "netns",
        host.mux.name(),
        "address",
        &mac,
        "type",
        "veth",
        "peer",
        "name",
        KERNEL_END,
        "netns",
        kernel.name(),
    ]);
    host.mux.ip(&["link", "set", MUX_END, "up"]);
    kernel_side(kernel, KERNEL_END);
    udp_echo_from_kernel(host.peer(), b"after, from the same client");
    host.wait_link("up");
    assert_eq!(host.log_lines("link is gone"), 1, "{}", host.up.log());
    assert_eq!(host.log_lines("link is up again"), 1, "{}", host.up.log());
}

#[test]
#[ignore]
fn root_a_tap_deleted_and_created_again_is_attached_again() {
    netns::require_root();
    let host = Host::start(Kind::Tap, "tapdel", &[]);
    let echo = host.echo();
    udp_echo_from_kernel(host.peer(), b"before");
    // The TAP device starts down (netmux up creates it) and comes up once: count after that.
    let ups_before = host.log_lines("link is up again");

    host.mux.ip(&["link", "del", TAP]);
    let ls = host.wait_link("gone");
    assert!(ls.contains(&echo.pid().to_string()), "session kept:\n{ls}");
    let ticks = host.driver_ticks_over_idle_window();
    assert!(
        ticks <= IDLE_TICKS,
        "the driver used {ticks} ticks in {IDLE_WINDOW:?} while the TAP was gone"
    );

    host.mux.ip(&["tuntap", "add", TAP, "mode", "tap"]);
    kernel_side(&host.mux, TAP);
    udp_echo_from_kernel(host.peer(), b"after, from the same client");
    host.wait_link("up");
    assert_eq!(host.log_lines("link is gone"), 1, "{}", host.up.log());
    assert_eq!(
        host.log_lines("link is up again") - ups_before,
        1,
        "{}",
        host.up.log()
    );
}

#[test]
#[ignore]
fn root_a_tap_gone_longer_than_the_link_timeout_ends_the_driver_and_up_says_why() {
    netns::require_root();
    let mut host = Host::start(Kind::Tap, "tapgone", &["--link-timeout", "2"]);
    let _echo = host.echo();
    udp_echo_from_kernel(host.peer(), b"before");
    let deleted = Instant::now();
    host.mux.ip(&["link", "del", TAP]);
    std::thread::sleep(Duration::from_millis(300));
    let before = netns::cpu_ticks(host.driver_pid);
    std::thread::sleep(Duration::from_secs(1));
    let ticks = netns::cpu_ticks(host.driver_pid) - before;
    assert!(ticks <= IDLE_TICKS, "{ticks} ticks in 1 s while gone");

    let status = host.up.wait_exit(PATIENCE);
    let waited = deleted.elapsed();
    let log = host.up.log();
    assert_eq!(
        status.code(),
        Some(2),
        "up passes the driver's status on:\n{log}"
    );
    assert!(
        waited >= Duration::from_secs(2),
        "not before the timeout: {waited:?}"
    );
    assert!(
        log.contains("longer than the link timeout") && log.contains("the TAP device was deleted"),
        "the reason is said:\n{log}"
    );
    assert!(log.contains("the driver ended by itself"), "{log}");
    assert_eq!(host.log_lines("link is gone"), 1, "{log}");
    assert!(
        log.lines().count() < 100,
        "a few lines, not a flood: {} lines",
        log.lines().count()
    );
}
