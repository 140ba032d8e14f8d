//! The figures a user of a real link feels, netmux against the kernel in the same run (as
//! root; `scripts/bench-link` builds and runs it):
//!
//! 1. **UDP round trip**, 64-byte payloads, 10,000 exchanges: a kernel peer to `netmux example
//!    udp-echo` (over a veth pair as Linux makes it, `netmux up` on the far end), against the
//!    same peer to a kernel UDP echo across a second veth pair. p50 and p99.
//! 2. **TCP throughput**, 1 GiB each way: the peer's kernel TCP uploading to `netmux example
//!    http`'s `POST /sink` and downloading its `GET /bytes/N`, against the same transfers with
//!    a kernel server (same HTTP, same pattern and hash work) across the second pair, whose
//!    segmentation offloads (TSO, GSO) are off so both paths move MTU-sized frames.
//! 3. **Received frames per second**, 64-byte UDP from the peer: through the driver into one
//!    client ring (the ring's own count), against a bare TPACKET_V2 reader (the driver's ring
//!    geometry, nothing else) on the same veth end while netmux is not running; the two
//!    alternate, `netmux up` started afresh for each of its runs.
//!
//! Namespaces: `mux` (netmux), `peer` (the kernel peer: every client and sender), `kern` (the
//! kernel servers); the veths `mux:nmx0`–`peer:peer0` (192.0.2.0/24) and
//! `peer:peer1`–`kern:kern0` (198.51.100.0/24). All are created here and deleted on exit.
//! Every figure is the median of `--runs` runs (3), netmux and kernel alternating. With
//! `--profile`, `perf record` samples the driver and the client during netmux's runs and the
//! hottest symbols are printed. CPU time of the driver and the client (from `/proc/PID/stat`)
//! is printed for every netmux run.
//!
//! ```text
//! link_bench --netmux target/release/netmux [--runs N] [--exchanges N] [--bytes N]
//!            [--seconds S] [--profile]
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netmux_testkit::netns::{self, NetNs, Proc};
use netmux_testkit::{http_sink_hash, read_http_head, TempDir, FNV1A64_OFFSET};

const NETMUX_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const KERN_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const PEER2_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const ECHO_PORT: u16 = 7;
const SINK_PORT: u16 = 9;
const HTTP_PORT: u16 = 8080;
const PAYLOAD: usize = 64;
const PATIENCE: Duration = Duration::from_secs(30);
/// Exchanges before the measured ones (ARP, caches, the JIT).
const WARMUP_EXCHANGES: usize = 500;
/// Datagrams per `sendmmsg` of the frame-rate sender.
const SEND_BATCH: usize = 64;
/// TPACKET_V2 ring of the bare reader: the driver's geometry.
const FRAME_SIZE: u32 = 2048;
const BLOCK_SIZE: u32 = 32 * 1024;
const BLOCK_COUNT: u32 = 64;

struct Args {
    netmux: PathBuf,
    runs: usize,
    exchanges: usize,
    bytes: u64,
    seconds: f64,
    profile: bool,
}

fn args() -> Args {
    let mut a = Args {
        netmux: PathBuf::from("target/release/netmux"),
        runs: 3,
        exchanges: 10_000,
        bytes: 1 << 30,
        seconds: 3.0,
        profile: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--netmux" => a.netmux = PathBuf::from(value()),
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--exchanges" => a.exchanges = value().parse().expect("--exchanges N"),
            "--bytes" => a.bytes = value().parse().expect("--bytes N"),
            "--seconds" => a.seconds = value().parse().expect("--seconds S"),
            "--profile" => a.profile = true,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `min-max` of the runs, to show how much the machine's other work moved them.
fn spread(v: &[f64], scale: f64) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min) / scale;
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max) / scale;
    format!("{min:.1}-{max:.1}")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

// ---- UDP round trip ----

/// `n` 64-byte exchanges with the echo at `target` after a warm-up; returns (p50, p99) in µs.
fn round_trips(target: SocketAddr, n: usize) -> (f64, f64) {
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.connect(target).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let payload = [0x42u8; PAYLOAD];
    let mut buf = [0u8; 2048];
    let mut samples = Vec::with_capacity(n);
    let mut lost = 0;
    let mut i = 0;
    while samples.len() < n {
        let start = Instant::now();
        sock.send(&payload).unwrap();
        match sock.recv(&mut buf) {
            Ok(len) if len == PAYLOAD => {
                if i >= WARMUP_EXCHANGES {
                    samples.push(start.elapsed().as_secs_f64() * 1e6);
                }
                i += 1;
            }
            _ => {
                lost += 1;
                assert!(lost < 100, "the echo at {target} does not answer");
            }
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

/// A kernel UDP echo on `addr`, for ever.
fn kernel_echo(addr: SocketAddr) {
    let sock = UdpSocket::bind(addr).unwrap();
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

// ---- TCP bulk ----

fn connect(target: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(s) => return s,
            Err(e) => assert!(Instant::now() < deadline, "connecting to {target}: {e}"),
        }
    }
}

/// Downloads `GET /bytes/n` (counting, checking one byte in 4 KiB); returns bytes per second.
fn download(target: SocketAddr, n: u64) -> f64 {
    let mut s = connect(target);
    write!(s, "GET /bytes/{n} HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let start = Instant::now();
    let (head, first) = read_http_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut at = first.len() as u64;
    let mut buf = vec![0u8; 1 << 20];
    while at < n {
        let got = s.read(&mut buf).expect("reading the download");
        assert!(got > 0, "download ended at {at} of {n}");
        let probe = (4096 - at % 4096) % 4096;
        if (probe as usize) < got {
            assert_eq!(
                buf[probe as usize],
                netmux_testkit::http_pattern_byte(at + probe),
                "byte {}",
                at + probe
            );
        }
        at += got as u64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Uploads `n` bytes to `POST /sink` and checks the length the sink reports (the end-to-end
/// tests check its hash; here the uploader's own work stays one buffer sent over and over);
/// returns bytes per second.
fn upload(target: SocketAddr, n: u64) -> f64 {
    let mut s = connect(target);
    write!(s, "POST /sink HTTP/1.1\r\nContent-Length: {n}\r\n\r\n").unwrap();
    let start = Instant::now();
    let chunk: Vec<u8> = (0..1u64 << 20)
        .map(netmux_testkit::http_pattern_byte)
        .collect();
    let mut at = 0u64;
    while at < n {
        let len = (chunk.len() as u64).min(n - at) as usize;
        s.write_all(&chunk[..len]).expect("writing the upload");
        at += len as u64;
    }
    let (head, mut body) = read_http_head(&mut s);
    s.read_to_end(&mut body).unwrap();
    let rate = n as f64 / start.elapsed().as_secs_f64();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with(&format!("received {n} bytes")), "{body}");
    rate
}

/// A kernel HTTP server with netmux's example semantics for `/bytes/N` and `/sink` (the same
/// pattern generation and hashing work), one connection at a time, for ever.
fn kernel_http(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).unwrap();
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let (head, first) = read_http_head(&mut s);
        let line = head.lines().next().unwrap_or_default().to_string();
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("GET"), Some(path)) if path.starts_with("/bytes/") => {
                let n: u64 = path["/bytes/".len()..].parse().unwrap_or(0);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
                );
                let mut buf = vec![0u8; 256 * 1024];
                let mut at = 0u64;
                while at < n {
                    let len = (buf.len() as u64).min(n - at) as usize;
                    for (k, b) in buf[..len].iter_mut().enumerate() {
                        *b = netmux_testkit::http_pattern_byte(at + k as u64);
                    }
                    if s.write_all(&buf[..len]).is_err() {
                        break;
                    }
                    at += len as u64;
                }
            }
            (Some("POST"), Some("/sink")) => {
                let n: u64 = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let mut hash = http_sink_hash(FNV1A64_OFFSET, &first);
                let mut read = first.len() as u64;
                let mut buf = vec![0u8; 256 * 1024];
                while read < n {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(got) => {
                            hash = http_sink_hash(hash, &buf[..got]);
                            read += got as u64;
                        }
                    }
                }
                let body = format!("received {read} bytes, fnv1a64 {hash:016x}\n");
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            _ => {}
        }
    }
}

// ---- frames per second ----

/// Sends 64-byte UDP datagrams to `target` as fast as `sendmmsg` goes until `stop`; counts
/// them in `sent`.
fn flood(target: SocketAddr, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.connect(target).unwrap();
    let payload = [0x17u8; PAYLOAD];
    let mut iov: Vec<libc::iovec> = (0..SEND_BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: mmsghdr is plain old data; all zeroes is a valid value.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: every message points at a live iovec of a live payload; the socket is
        // connected, so no address is needed; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                SEND_BATCH as libc::c_uint,
                0,
            )
        };
        if n > 0 {
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Frames per second a bare TPACKET_V2 reader sees on `ifname` while the flood runs for
/// `seconds` (run inside the namespace of `ifname`).
fn bare_reader(ifname: &str, seconds: f64, ready: Arc<AtomicBool>) -> f64 {
    use netmux_ring::sys::SharedMapping;
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) takes only integers; we own the result.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    assert!(raw >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let set = |opt: libc::c_int, value: *const libc::c_void, len: usize| {
        // SAFETY: `value` points to `len` live bytes for the call; the kernel only reads.
        let rc =
            unsafe { libc::setsockopt(raw, libc::SOL_PACKET, opt, value, len as libc::socklen_t) };
        assert_eq!(
            rc,
            0,
            "setsockopt {opt}: {}",
            std::io::Error::last_os_error()
        );
    };
    let version: libc::c_int = 1; // TPACKET_V2
    set(
        libc::PACKET_VERSION,
        (&version as *const libc::c_int).cast(),
        4,
    );
    let req: [u32; 4] = [
        BLOCK_SIZE,
        BLOCK_COUNT,
        FRAME_SIZE,
        BLOCK_SIZE / FRAME_SIZE * BLOCK_COUNT,
    ];
    set(libc::PACKET_RX_RING, req.as_ptr().cast(), 16);
    let ifindex = {
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name that lives for the call.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    };
    // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: a live sockaddr_ll of its exact size.
    let rc = unsafe {
        libc::bind(
            raw,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let ring = SharedMapping::map(
        std::os::fd::AsFd::as_fd(&fd),
        (BLOCK_SIZE * BLOCK_COUNT) as usize,
    )
    .expect("mapping the ring");
    let frames = BLOCK_SIZE / FRAME_SIZE * BLOCK_COUNT;
    let mut next = 0u32;
    let mut count = 0u64;
    ready.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let status = ring
            .u32_at(next as usize * FRAME_SIZE as usize)
            .expect("a slot");
        if status.load(Ordering::Acquire) & 1 == 0 {
            let mut pfd = libc::pollfd {
                fd: raw,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            unsafe { libc::poll(&mut pfd, 1, 10) };
            continue;
        }
        count += 1;
        status.store(0, Ordering::Release);
        next = (next + 1) % frames;
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// One run of the bare reader on `nmx0` under the flood; frames per second.
fn bare_run(mux: &NetNs, peer: &NetNs, seconds: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicBool::new(false));
    let r = Arc::clone(&ready);
    let reader = mux.spawn(move || bare_reader("nmx0", seconds, r));
    while !ready.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (s, st) = (Arc::clone(&sent), Arc::clone(&stop));
    let sender = peer.spawn(move || flood(SocketAddr::from((NETMUX_IP, SINK_PORT)), st, s));
    let rate = reader.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    rate
}

/// One run of netmux under the flood: `netmux up` on `nmx0`, a client bound to the flood's
/// port draining its ring; frames per second counted by the ring itself, and the driver's
/// share of a core. Everything is stopped afterwards.
fn netmux_frames_run(
    netmux: &Path,
    mux: &NetNs,
    peer: &NetNs,
    dir: &TempDir,
    args: &Args,
    profile: bool,
) -> (f64, f64) {
    let nmx = start_netmux(netmux, mux, dir);
    let mut sink = netmux_client::blocking::Client::connect(&nmx.run).expect("netd");
    sink.bind_port(netmux_client::Transport::Udp, SINK_PORT)
        .expect("the sink's port");
    let mut queue = sink.open_queue().expect("the sink's queue");
    let draining = Arc::new(AtomicBool::new(true));
    let ring_frames = Arc::new(AtomicU64::new(0));
    let drainer = {
        let (draining, ring_frames) = (Arc::clone(&draining), Arc::clone(&ring_frames));
        std::thread::spawn(move || {
            let mut frames = Vec::new();
            while draining.load(Ordering::Relaxed) {
                frames.clear();
                let _ = queue.recv_owned(256, &mut frames);
                ring_frames.store(queue.counters().rx_frames, Ordering::Relaxed);
                if frames.is_empty() {
                    let _ = queue.wait_readable(Some(Duration::from_millis(10)));
                }
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (s, st) = (Arc::clone(&sent), Arc::clone(&stop));
    let sender = peer.spawn(move || flood(SocketAddr::from((NETMUX_IP, SINK_PORT)), st, s));
    std::thread::sleep(Duration::from_millis(200));
    let driver_only = [nmx.driver_pid];
    let profile = Profile::start(
        args.profile && profile,
        &driver_only,
        args.seconds * 0.8,
        dir,
        "the driver receiving 64-byte UDP",
    );
    let ((before, after), cpu) = cpu_during(&driver_only, || {
        let before = ring_frames.load(Ordering::Relaxed);
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(args.seconds));
        (
            before,
            (ring_frames.load(Ordering::Relaxed), start.elapsed()),
        )
    });
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    profile.report();
    draining.store(false, Ordering::Relaxed);
    let _ = drainer.join();
    drop(sink);
    drop(nmx);
    // The driver ends by itself once netd is gone; let it leave the link before the next run.
    std::thread::sleep(Duration::from_millis(500));
    ((after.0 - before) as f64 / after.1.as_secs_f64(), cpu[0])
}

// ---- the run ----

struct Netmux {
    /// Kept for its lifetime: dropping it stops `netmux up`.
    _up: Proc,
    echo: Proc,
    http: Proc,
    driver_pid: u32,
    run: PathBuf,
}

fn start_netmux(netmux: &Path, mux: &NetNs, dir: &TempDir) -> Netmux {
    let run = dir.join("run");
    let mut cmd = mux.command(netmux);
    cmd.args([
        "up",
        "--link",
        "afpacket:nmx0",
        "--ip",
        &format!("{NETMUX_IP}/24"),
    ])
    .arg("--runtime-dir")
    .arg(&run)
    .env("RUST_LOG", "warn");
    let mut up = Proc::spawn("netmux up", cmd, &dir.join("up.log"));
    let line = up.expect_line("netd listening", PATIENCE);
    let driver_pid = line
        .split("driver pid ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .expect("the driver's pid");
    let example = |kind: &str, port: u16| {
        let mut cmd = Command::new(netmux);
        cmd.args(["example", kind, "--port", &port.to_string()])
            .arg("--runtime-dir")
            .arg(&run)
            .env("RUST_LOG", "warn");
        let mut p = Proc::spawn(kind, cmd, &dir.join(format!("{kind}.log")));
        p.expect_line("listening on", PATIENCE);
        p
    };
    let echo = example("udp-echo", ECHO_PORT);
    let http = example("http", HTTP_PORT);
    Netmux {
        _up: up,
        echo,
        http,
        driver_pid,
        run,
    }
}

/// CPU used by `pids` while `f` runs, as a share of one core each.
fn cpu_during<T>(pids: &[u32], f: impl FnOnce() -> T) -> (T, Vec<f64>) {
    let before: Vec<u64> = pids.iter().map(|&p| netns::cpu_ticks(p)).collect();
    let start = Instant::now();
    let out = f();
    let secs = start.elapsed().as_secs_f64();
    let used = pids
        .iter()
        .zip(before)
        .map(|(&p, b)| (netns::cpu_ticks(p) - b) as f64 / 100.0 / secs)
        .collect();
    (out, used)
}

/// Samples `pids` with perf for `seconds` (in the background), then prints the hottest symbols.
struct Profile {
    child: Option<std::process::Child>,
    data: PathBuf,
    what: String,
}

impl Profile {
    fn start(enabled: bool, pids: &[u32], seconds: f64, dir: &TempDir, what: &str) -> Profile {
        let data = dir.join(format!("{}.perf", what.replace(' ', "-")));
        let child = enabled.then(|| {
            let list: Vec<String> = pids.iter().map(u32::to_string).collect();
            Command::new("perf")
                .args([
                    "record",
                    "-q",
                    "-g",
                    "-F",
                    "999",
                    "-p",
                    &list.join(","),
                    "-o",
                ])
                .arg(&data)
                .args(["--", "sleep", &format!("{seconds}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("perf")
        });
        Profile {
            child,
            data,
            what: what.to_string(),
        }
    }

    fn report(self) {
        let Some(mut child) = self.child else { return };
        let _ = child.wait();
        let out = Command::new("perf")
            .args([
                "report",
                "-q",
                "--stdio",
                "--no-children",
                "--sort",
                "comm,sym",
            ])
            .args(["--percent-limit", "2", "-g", "none", "-i"])
            .arg(&self.data)
            .output();
        println!("  profile of {} (perf, % of samples):", self.what);
        if let Ok(out) = out {
            for line in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(14)
            {
                println!("    {}", line.trim_end());
            }
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn main() {
    let args = args();
    assert!(
        netns::is_root(),
        "link_bench needs root (namespaces, veth, AF_PACKET)"
    );
    let netmux = std::fs::canonicalize(&args.netmux).expect("the netmux binary");
    let dir = TempDir::new("nmx-bench-link");
    let kern = NetNs::new("bk");
    let peer = NetNs::new("bp");
    let mux = NetNs::new("bm");
    netns::veth(&mux, "nmx0", &peer, "peer0");
    netns::veth(&peer, "peer1", &kern, "kern0");
    mux.ip(&["link", "set", "nmx0", "up"]);
    peer.ip(&["addr", "add", &format!("{PEER_IP}/24"), "dev", "peer0"]);
    peer.ip(&["link", "set", "peer0", "up"]);
    peer.ip(&["addr", "add", &format!("{PEER2_IP}/24"), "dev", "peer1"]);
    peer.ip(&["link", "set", "peer1", "up"]);
    kern.ip(&["addr", "add", &format!("{KERN_IP}/24"), "dev", "kern0"]);
    kern.ip(&["link", "set", "kern0", "up"]);
    for (ns, ifname) in [(&peer, "peer1"), (&kern, "kern0")] {
        netns::set_segmentation_offloads(ns, ifname, false);
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "bench-link: Linux {}, {cpus} CPUs, {}; median of {} runs, netmux and kernel alternating",
        kernel.trim(),
        netmux.display(),
        args.runs
    );
    println!("  load average at the start: {}", load_average());
    let nmx0_mac = {
        let out = mux
            .command("cat")
            .arg("/sys/class/net/nmx0/address")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    peer.ip(&[
        "neigh",
        "replace",
        &NETMUX_IP.to_string(),
        "lladdr",
        &nmx0_mac,
        "dev",
        "peer0",
        "nud",
        "permanent",
    ]);

    // 3. Frames per second: a bare reader while netmux is not running, then netmux (started
    // for the run, a sink client on its ring), alternating, so both see the same machine.
    let mut bare = Vec::new();
    let mut through = Vec::new();
    let mut cpu_rate = Vec::new();
    for run in 0..args.runs {
        bare.push(bare_run(&mux, &peer, args.seconds));
        let (rate, cpu) = netmux_frames_run(&netmux, &mux, &peer, &dir, &args, run == 0);
        through.push(rate);
        cpu_rate.push(cpu);
    }

    // The kernel's servers, and netmux for the round trips and transfers.
    kern.spawn(|| kernel_echo(SocketAddr::from((KERN_IP, ECHO_PORT))));
    kern.spawn(|| kernel_http(SocketAddr::from((KERN_IP, HTTP_PORT))));
    let nmx = start_netmux(&netmux, &mux, &dir);

    // 1. UDP round trips.
    let (mut n50, mut n99, mut k50, mut k99) = (vec![], vec![], vec![], vec![]);
    let exchanges = args.exchanges;
    for run in 0..args.runs {
        let pids = [nmx.driver_pid, nmx.echo.pid()];
        let profile = Profile::start(
            args.profile && run == 0,
            &pids,
            1.0,
            &dir,
            "UDP round trips (driver, udp-echo)",
        );
        let ((p50, p99), _) = cpu_during(&pids, || {
            peer.run(move || round_trips(SocketAddr::from((NETMUX_IP, ECHO_PORT)), exchanges))
        });
        profile.report();
        n50.push(p50);
        n99.push(p99);
        let (p50, p99) =
            peer.run(move || round_trips(SocketAddr::from((KERN_IP, ECHO_PORT)), exchanges));
        k50.push(p50);
        k99.push(p99);
    }

    // 2. TCP, each way.
    let bytes = args.bytes;
    let (mut n_up, mut n_down, mut k_up, mut k_down) = (vec![], vec![], vec![], vec![]);
    let mut cpu_up = Vec::new();
    let mut cpu_down = Vec::new();
    for run in 0..args.runs {
        let pids = [nmx.driver_pid, nmx.http.pid()];
        let profile = Profile::start(
            args.profile && run == 0,
            &pids,
            2.0,
            &dir,
            "TCP kernel -> client (driver, http)",
        );
        let (rate, cpu) = cpu_during(&pids, || {
            peer.run(move || upload(SocketAddr::from((NETMUX_IP, HTTP_PORT)), bytes))
        });
        profile.report();
        n_up.push(rate);
        cpu_up.push(cpu);
        k_up.push(peer.run(move || upload(SocketAddr::from((KERN_IP, HTTP_PORT)), bytes)));
        let profile = Profile::start(
            args.profile && run == 0,
            &pids,
            2.0,
            &dir,
            "TCP client -> kernel (driver, http)",
        );
        let (rate, cpu) = cpu_during(&pids, || {
            peer.run(move || download(SocketAddr::from((NETMUX_IP, HTTP_PORT)), bytes))
        });
        profile.report();
        n_down.push(rate);
        cpu_down.push(cpu);
        k_down.push(peer.run(move || download(SocketAddr::from((KERN_IP, HTTP_PORT)), bytes)));
    }

    let ls = Command::new(&netmux)
        .arg("ls")
        .arg("--runtime-dir")
        .arg(&nmx.run)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();

    // The report.
    let spreads = [
        spread(&n50, 1.0),
        spread(&n99, 1.0),
        spread(&k50, 1.0),
        spread(&k99, 1.0),
    ];
    let (n50, n99, k50, k99) = (median(n50), median(n99), median(k50), median(k99));
    let (r50, r99) = (n50 / k50, n99 / k99);
    println!();
    println!(
        "UDP round trip, {PAYLOAD}-byte payload, {} exchanges (p50 / p99, µs; runs min-max):",
        args.exchanges
    );
    println!(
        "  netmux (kernel peer -> netmux example udp-echo)   {n50:7.1} / {n99:7.1}   ({} / {})",
        spreads[0], spreads[1]
    );
    println!(
        "  kernel (same peer -> kernel UDP echo, 2nd veth)   {k50:7.1} / {k99:7.1}   ({} / {})",
        spreads[2], spreads[3]
    );
    println!(
        "  ratio                                             {r50:7.2}x / {r99:6.2}x   goal <= 1.25x: {}",
        verdict(r50 <= 1.25 && r99 <= 1.25)
    );
    let tcp_spreads = [
        spread(&n_up, 1e6),
        spread(&k_up, 1e6),
        spread(&n_down, 1e6),
        spread(&k_down, 1e6),
    ];
    let mbs = |v: Vec<f64>| median(v) / 1e6;
    let (nu, nd, ku, kd) = (mbs(n_up), mbs(n_down), mbs(k_up), mbs(k_down));
    println!();
    println!(
        "TCP, {} MiB each way (MB/s, runs min-max; kernel pair with TSO and GSO off):",
        args.bytes >> 20
    );
    println!(
        "  kernel -> client: netmux {nu:8.1} ({})   kernel {ku:8.1} ({})   ratio {:.2}x   goal >= 0.5x: {}",
        tcp_spreads[0],
        tcp_spreads[1],
        nu / ku,
        verdict(nu / ku >= 0.5)
    );
    println!(
        "  client -> kernel: netmux {nd:8.1} ({})   kernel {kd:8.1} ({})   ratio {:.2}x   goal >= 0.5x: {}",
        tcp_spreads[2],
        tcp_spreads[3],
        nd / kd,
        verdict(nd / kd >= 0.5)
    );
    let share = |runs: &[Vec<f64>], i: usize| median(runs.iter().map(|c| c[i] * 100.0).collect());
    println!(
        "  CPU (share of one core, median): kernel -> client: driver {:.0}%, http {:.0}%; client -> kernel: driver {:.0}%, http {:.0}%",
        share(&cpu_up, 0),
        share(&cpu_up, 1),
        share(&cpu_down, 0),
        share(&cpu_down, 1)
    );
    let frame_spreads = [spread(&through, 1e3), spread(&bare, 1e3)];
    let (b, t) = (median(bare), median(through));
    println!();
    println!("Received 64-byte UDP frames per second (runs min-max, thousands):");
    println!(
        "  netmux (through the driver into one client ring)  {t:12.0}   ({})",
        frame_spreads[0]
    );
    println!(
        "  bare TPACKET_V2 reader on the same veth end       {b:12.0}   ({})",
        frame_spreads[1]
    );
    println!(
        "  ratio {:.2}x   goal >= 0.8x: {}   (driver CPU {:.0}% of a core)",
        t / b,
        verdict(t / b >= 0.8),
        median(cpu_rate) * 100.0
    );
    println!();
    println!(
        "load average at the end: {} (other work on the machine takes CPU from both sides)",
        load_average()
    );
    println!("netmux ls at the end:\n{ls}");
    drop(nmx);
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
