//! End to end with a real Linux kernel as the peer (issue #9, part 3), as root.
//!
//! Each test makes a network namespace of its own; the kernel end of the link lives in it with
//! the address 10.X.Y.1/24 (X and Y from this run's pid, so parallel runs do not meet), and
//! `netmux up` runs on the other end with 10.X.Y.2/24 — an end that has no kernel address at
//! all, so only netmux can answer there. `netmux example udp-echo` and `netmux example http`
//! run as client processes. From a thread that entered the namespace (`setns`), the kernel's
//! own sockets (`std::net`) then talk to them: the UDP echo comes back, the HTTP page loads; a
//! third client's bind of the same port is refused (the example exits non-zero); after
//! `kill -9` of a client its port is free within 1 s and a new client binds it and echoes.
//! `netmux ls` lists the clients on the way.
//!
//! The links: a veth pair with `afpacket:` on the root-namespace end, and a TAP device that
//! `netmux up` creates and the test then moves into the namespace. Only addresses inside the
//! namespace are ever targets; only processes this test started are stopped, by their pid;
//! the namespace and the links are deleted on drop whatever happened. Every test is named
//! `root_*` and `#[ignore]`d: `scripts/test` runs them when it runs as root.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netmux_client::blocking::Client;
use netmux_client::Transport;
use netmux_proto::ErrorCode;

/// How long any one expected event may take (process start-up, ARP, builds sharing the CPU).
const PATIENCE: Duration = Duration::from_secs(20);
/// A killed client's port must be free again within this (the promise).
const PORT_FREE_WITHIN: Duration = Duration::from_secs(1);
const UDP_PORT: u16 = 7777;
const HTTP_PORT: u16 = 8080;

/// Names another netmux binary to run the scenario against (an installed build, say).
const BINARY_ENV: &str = "NETMUX_E2E_BINARY";

/// The netmux binary under test: this build's, unless [`BINARY_ENV`] names another.
fn netmux() -> PathBuf {
    std::env::var_os(BINARY_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_netmux")))
}

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "root_* tests need root (network namespaces, veth, TAP, AF_PACKET): run scripts/test as root"
    );
}

/// Runs `ip` with these arguments and insists it succeeds.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace and the interfaces this test made, deleted on drop whatever happened.
struct Net {
    ns: String,
    /// This run's /24: the kernel end is .1, netmux .2.
    subnet: [u8; 3],
    /// Interfaces in the root namespace to delete (a veth's end deletes its peer too).
    root_links: Vec<String>,
}

impl Net {
    fn new(tag: &str) -> Net {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let ns = format!("nmx-e2e-{pid}-{tag}{n}");
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &ns]);
        Net {
            ns,
            subnet: [
                10,
                100 + (pid % 100) as u8,
                (pid / 100 % 200) as u8 + n as u8,
            ],
            root_links: Vec::new(),
        }
    }

    /// A name for an interface of this run (at most 15 bytes, as Linux wants).
    fn ifname(&self, role: &str) -> String {
        let name = format!(
            "nx{:x}{}{role}",
            std::process::id() & 0xfffff,
            self.subnet[2]
        );
        assert!(name.len() <= 15, "{name}");
        name
    }

    fn kernel_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    fn netmux_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 2)
    }

    /// A veth pair: one end (returned) stays in the root namespace, up, without an address;
    /// the other is the kernel's end inside the namespace.
    fn veth(&mut self) -> String {
        let outside = self.ifname("h");
        let inside = self.ifname("k");
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]);
        self.root_links.push(outside.clone());
        ip(&["link", "set", &inside, "netns", &self.ns]);
        // No IPv6 chatter from the root end: nothing there should speak but netmux.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{outside}/disable_ipv6"),
            "1",
        );
        ip(&["link", "set", &outside, "up"]);
        self.kernel_end(&inside);
        // veth hands locally generated frames over with checksums not yet filled in
        // (CHECKSUM_PARTIAL); a raw socket on the peer sees them unfinished, and netmux's
        // clients would drop them. Make the kernel compute them before transmission.
        self.in_ns({
            let inside = inside.clone();
            move || tx_checksum_offload_off(&inside)
        });
        outside
    }

    /// Moves `ifname` into the namespace as the kernel's end: address .1/24, up.
    fn kernel_end(&self, ifname: &str) {
        if !Path::new(&format!("/sys/class/net/{ifname}")).exists() {
            // Already inside the namespace (the veth case).
        } else {
            ip(&["link", "set", ifname, "netns", &self.ns]);
        }
        let cidr = format!("{}/24", self.kernel_addr());
        ip(&["-n", &self.ns, "addr", "add", &cidr, "dev", ifname]);
        ip(&["-n", &self.ns, "link", "set", ifname, "up"]);
        ip(&["-n", &self.ns, "link", "set", "lo", "up"]);
    }

    /// Runs `f` on a thread that entered the namespace: its sockets are the namespace's.
    fn in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("the namespace's file");
            // SAFETY: setns on a valid descriptor of a network namespace changes only this
            // thread's namespace; the thread is ours and ends after `f`.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the namespace thread")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for link in &self.root_links {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// `ethtool -K IFNAME tx off`, by its ioctl (ethtool is not always installed).
fn tx_checksum_offload_off(ifname: &str) {
    /// `ETHTOOL_STXCSUM` from `<linux/ethtool.h>`.
    const ETHTOOL_STXCSUM: u32 = 0x17;
    /// `struct ethtool_value` from `<linux/ethtool.h>`.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let sock = UdpSocket::bind("0.0.0.0:0").expect("a socket for the ioctl");
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_value it points to, both alive and
    // properly laid out for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL as _, &mut req) };
    assert_eq!(
        rc,
        0,
        "turning tx checksum offload off on {ifname}: {}",
        std::io::Error::last_os_error()
    );
}

/// A process this test started, stopped by its pid (SIGKILL) on drop; its stdout lines come
/// through a channel, its stderr goes to a log file.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, args: &[&str], dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(netmux())
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting netmux {args:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            name: name.to_owned(),
            child,
            lines,
            log,
        }
    }

    /// Waits for a stdout line containing `text`.
    fn expect_line(&mut self, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "{} never printed {text:?} (exit: {:?}); its log:\n{}",
                    self.name,
                    self.child.try_wait(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    /// Waits for the process to exit by itself.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, by pid.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A fresh runtime directory for this test's netd.
fn runtime_dir(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("root-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sends a datagram to the echo from inside the namespace until the same bytes come back
/// (the first ones may wait for ARP).
fn udp_echo_from_kernel(net: &Net, payload: &'static [u8]) {
    let target = SocketAddr::from((net.netmux_addr(), UDP_PORT));
    net.in_ns(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 2048];
        loop {
            sock.send_to(payload, target).unwrap();
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(from, target, "the echo answers from its own address");
                    assert_eq!(&buf[..n], payload, "the echo returns the datagram");
                    return;
                }
                Err(e) => assert!(Instant::now() < deadline, "no echo from {target}: {e}"),
            }
        }
    });
}

/// Loads the page over the kernel's TCP from inside the namespace.
fn http_get_from_kernel(net: &Net) -> String {
    let target = SocketAddr::from((net.netmux_addr(), HTTP_PORT));
    let host = net.netmux_addr().to_string();
    net.in_ns(move || {
        let deadline = Instant::now() + PATIENCE;
        let mut stream = loop {
            match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) => assert!(Instant::now() < deadline, "connecting to {target}: {e}"),
            }
        };
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut page = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until the server closes or the response is complete.
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => page.extend_from_slice(&buf[..n]),
                Err(e) if !page.is_empty() => {
                    eprintln!("read ended: {e}");
                    break;
                }
                Err(e) => panic!("reading the page from {target}: {e}"),
            }
            if complete(&page) {
                break;
            }
        }
        String::from_utf8_lossy(&page).into_owned()
    })
}

/// Whether an HTTP response is complete by its Content-Length.
fn complete(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .is_some_and(|len| body.len() >= len)
}

/// The whole scenario on a link whose netmux end is `link` (the kernel end already set up, or
/// set up by `after_up` once `netmux up` runs).
fn scenario(tag: &str, net: &Net, link: &str, after_up: impl FnOnce()) {
    let dir = runtime_dir(tag);
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    let ip_arg = format!("{}/24", net.netmux_addr());
    let mut up = Proc::spawn(
        "netmux up",
        &[
            "up",
            "--link",
            link,
            "--ip",
            &ip_arg,
            "--runtime-dir",
            run_s,
        ],
        &dir,
    );
    up.expect_line("netd listening");
    after_up();

    let udp = UDP_PORT.to_string();
    let http = HTTP_PORT.to_string();
    let example = |name: &str, kind: &str, port: &str| {
        Proc::spawn(
            name,
            &["example", kind, "--port", port, "--runtime-dir", run_s],
            &dir,
        )
    };
    let mut echo = example("udp-echo", "udp-echo", &udp);
    echo.expect_line(&format!("listening on udp port {UDP_PORT}"));
    let mut web = example("http", "http", &http);
    web.expect_line(&format!("listening on tcp port {HTTP_PORT}"));

    udp_echo_from_kernel(net, b"hello from the kernel");
    let page = http_get_from_kernel(net);
    assert!(
        page.starts_with("HTTP/1.") && page.lines().next().unwrap_or("").contains(" 200"),
        "the page loads: {page:?}"
    );

    // netmux ls shows both clients with their ports.
    let ls = Command::new(netmux())
        .args(["ls", "--runtime-dir", run_s])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "netmux ls: {ls:?}");
    eprintln!("{tag}: netmux ls:\n{table}");
    for needle in [
        format!("udp/{UDP_PORT}"),
        format!("tcp/{HTTP_PORT}"),
        echo.child.id().to_string(),
        web.child.id().to_string(),
    ] {
        assert!(table.contains(&needle), "{needle} missing from\n{table}");
    }

    // A third client cannot take the echo's port.
    let mut thief = example("thief", "udp-echo", &udp);
    let status = thief.wait_exit();
    assert!(
        !status.success(),
        "the second bind of udp {UDP_PORT} is refused"
    );

    // kill -9 the echo: its port is free within a second, and a new client binds it.
    echo.kill9();
    let killed = Instant::now();
    let mut probe = Client::connect(&run).expect("netd takes a client");
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
    let mut echo2 = example("udp-echo again", "udp-echo", &udp);
    echo2.expect_line(&format!("listening on udp port {UDP_PORT}"));
    udp_echo_from_kernel(net, b"and again, from a new client");
    drop((echo2, web, up));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore]
fn root_kernel_sockets_reach_the_examples_over_afpacket_on_a_veth() {
    require_root();
    let mut net = Net::new("af");
    let outside = net.veth();
    scenario("afpacket", &net, &format!("afpacket:{outside}"), || {});
}

#[test]
#[ignore]
fn root_kernel_sockets_reach_the_examples_over_a_tap_device() {
    require_root();
    let mut net = Net::new("tap");
    let tap = net.ifname("t");
    // Deleted on drop in whichever namespace it ends up: the namespace's deletion removes it
    // there, and this removes it if it never moved.
    net.root_links.push(tap.clone());
    let link = format!("tap:{tap}");
    let ns_net = &net;
    scenario("tap", ns_net, &link, || ns_net.kernel_end(&tap));
}
