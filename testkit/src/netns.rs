//! Real links for root-only tests and benchmarks: network namespaces, veth pairs exactly as
//! `ip link add` makes them, TAP devices, offload settings read and set by the kernel's ethtool
//! ioctl, a process's CPU time, and processes whose output a test waits on. Also what every
//! `root_*` test needs alike: the root check, the binary under test, the `netmux up`,
//! `netmux example` and checked `netmux ARGS` command lines, an interface's MAC and index, a
//! retrying TCP connect, and raw sockets, their options, sends and receives (each `unsafe`
//! call here once, not in every test).
//!
//! # Guarantees
//!
//! - Every namespace is created by [`NetNs::new`] and deleted when its [`NetNs`] is dropped,
//!   whatever happened; deleting a namespace deletes every interface in it (a veth's peer in
//!   another namespace with it).
//! - Work "inside" a namespace runs on a thread of its own that entered it
//!   ([`NetNs::run`]); the calling thread and the rest of the process stay where they were.
//! - A [`Proc`] is stopped by its pid (SIGKILL) when dropped, and signalled otherwise only by
//!   its pid when a test asks ([`Proc::signal`]); nothing else is ever signalled.
//! - Offloads are only read here, except [`set_gro`] (the tests that force GRO on at the netmux
//!   end) and [`set_segmentation_offloads`] (the link benchmark's kernel-only baseline pair,
//!   which must move MTU-sized frames as netmux does); the end-to-end tests never turn an
//!   offload off.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs `ip` with `args` and panics (test support) unless it succeeds.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this process runs as root (namespaces, veth, TAP and AF_PACKET need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails the calling test, saying how to run it, unless this process runs as root: what
/// every `root_*` test does first.
pub fn require_root() {
    assert!(
        is_root(),
        "root_* tests need root (network namespaces, veth, TAP, AF_PACKET): run scripts/test as root"
    );
}

/// Names another netmux binary for the root tests to run (an installed build, say) instead of
/// the one cargo built with them.
pub const BINARY_ENV: &str = "NETMUX_E2E_BINARY";

/// The netmux binary a test runs: the one [`BINARY_ENV`] names, else `default`, which is the
/// test crate's `env!("CARGO_BIN_EXE_netmux")` (cargo sets it only for that crate's tests).
pub fn binary_under_test(default: &str) -> PathBuf {
    std::env::var_os(BINARY_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `nmx-<pid>-<tag><n>` (a left-over namespace of that name is deleted first), with
    /// its loopback up.
    pub fn new(tag: &str) -> NetNs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "nmx-{}-{tag}{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that entered the namespace: its sockets are the namespace's.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("the namespace thread")
    }

    /// Starts `f` on a thread that entered the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("the namespace's file");
            // SAFETY: setns on a valid descriptor of a network namespace changes only the
            // calling thread's namespace; the thread is ours and ends after `f`.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

/// A file of interface `ifname`'s sysfs directory in namespace `ns` (`address`,
/// `operstate`), trimmed; empty when there is no such file.
pub fn sysfs(ns: &NetNs, ifname: &str, file: &str) -> String {
    let out = ns
        .command("cat")
        .arg(format!("/sys/class/net/{ifname}/{file}"))
        .output()
        .expect("reading sysfs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The MAC of interface `ifname` in namespace `ns`, as `ip` writes it (`aa:bb:cc:dd:ee:ff`).
pub fn mac_of(ns: &NetNs, ifname: &str) -> String {
    sysfs(ns, ifname, "address")
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Makes a veth pair exactly as `ip link add` does (the kernel's default offloads: checksum
/// and segmentation offloads on, GRO off), with `a_end` in namespace `a` and `b_end` in `b`,
/// both down.
pub fn veth(a: &NetNs, a_end: &str, b: &NetNs, b_end: &str) {
    ip(&[
        "link",
        "add",
        a_end,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_end,
        "netns",
        b.name(),
    ]);
}

/// Two namespaces joined by a veth pair as `ip link add` makes it: netmux's end `mux_end` in
/// the first, up and without an address; the kernel's end `kernel_end` in the second, up, with
/// `kernel_cidr` (`192.0.2.1/24`, say). Returns (netmux's, the kernel's).
pub fn kernel_peer(
    tag: &str,
    mux_end: &str,
    kernel_end: &str,
    kernel_cidr: &str,
) -> (NetNs, NetNs) {
    let mux = NetNs::new(&format!("{tag}m"));
    let kernel = NetNs::new(&format!("{tag}k"));
    veth(&mux, mux_end, &kernel, kernel_end);
    mux.ip(&["link", "set", mux_end, "up"]);
    kernel.ip(&["addr", "add", kernel_cidr, "dev", kernel_end]);
    kernel.ip(&["link", "set", kernel_end, "up"]);
    (mux, kernel)
}

/// The log filter of the `netmux` processes [`UpHost`] starts.
pub const UP_LOG_FILTER: &str = "info,cranelift_jit=warn";

/// `binary up --link LINK ARGS... --runtime-dir RUN_DIR` inside `mux`, logging at
/// [`UP_LOG_FILTER`]; `link` is a link spec such as `afpacket:nmx0` or `tap:nmxt0`.
pub fn up_command(
    mux: &NetNs,
    binary: &Path,
    link: &str,
    args: &[&str],
    run_dir: &Path,
) -> Command {
    let mut cmd = mux.command(binary);
    cmd.args(["up", "--link", link])
        .args(args)
        .arg("--runtime-dir")
        .arg(run_dir)
        .env("RUST_LOG", UP_LOG_FILTER);
    cmd
}

/// `cmd` (the netmux binary, in a namespace or not) with `example KIND --port PORT ARGS...
/// --runtime-dir RUN_DIR`, logging at [`UP_LOG_FILTER`]: an example client of the netd that
/// `run_dir` belongs to.
pub fn example_command(
    mut cmd: Command,
    kind: &str,
    port: u16,
    args: &[&str],
    run_dir: &Path,
) -> Command {
    cmd.args(["example", kind, "--port", &port.to_string()])
        .args(args)
        .arg("--runtime-dir")
        .arg(run_dir)
        .env("RUST_LOG", UP_LOG_FILTER);
    cmd
}

/// The driver's pid in `netmux up`'s ready line (`netd listening on ... (driver pid N)`).
/// Panics (test support) when the line names none.
pub fn driver_pid(ready: &str) -> u32 {
    ready
        .split("driver pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no driver pid in {ready:?}"))
}

/// Runs `cmd` (the netmux binary, in a namespace or not) with `ARGS... --runtime-dir RUN_DIR`
/// and returns its standard output; panics (test support) with its status and standard error
/// unless it succeeds.
pub fn netmux_ok(mut cmd: Command, args: &[&str], run_dir: &Path) -> String {
    let out = cmd
        .args(args)
        .arg("--runtime-dir")
        .arg(run_dir)
        .output()
        .expect("running netmux");
    assert!(
        out.status.success(),
        "netmux {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP connection from the calling thread's namespace to `target`, tried again (every
/// 200 ms after a failure) while ARP or the listener is not there yet, for at most
/// `patience`; its reads give up after `patience`.
pub fn tcp_connect(target: std::net::SocketAddr, patience: Duration) -> std::net::TcpStream {
    let deadline = Instant::now() + patience;
    let stream = loop {
        match std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "connecting to {target}: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    stream
        .set_read_timeout(Some(patience))
        .expect("a read timeout");
    stream
}

/// `netmux up` on the veth end `mux_end` of a namespace of its own, the kernel at the other end
/// ([`kernel_peer`]), with its runtime directory and logs in a temporary directory; everything
/// goes (the processes killed by pid, the namespaces deleted) when it is dropped.
#[derive(Debug)]
pub struct UpHost {
    /// The kernel's namespace. Declared first, so it goes before `mux`.
    pub kernel: NetNs,
    /// netmux's namespace.
    pub mux: NetNs,
    /// The runtime directory (`run/`) and the logs.
    pub dir: crate::TempDir,
    /// `netmux up`.
    pub up: Proc,
    binary: PathBuf,
}

impl UpHost {
    /// Starts `binary up --link afpacket:MUX_END ARGS...` once the kernel's end has
    /// `kernel_cidr` and the `ip` commands of `kernel_setup` ran in the kernel's namespace
    /// (more addresses, say), and waits until netd listens (for at most `patience`). The
    /// kernel's end keeps Linux's default offloads (checked).
    pub fn start(
        binary: &Path,
        tag: &str,
        (mux_end, kernel_end): (&str, &str),
        kernel_cidr: &str,
        kernel_setup: &[&[&str]],
        args: &[&str],
        patience: Duration,
    ) -> UpHost {
        let (mux, kernel) = kernel_peer(tag, mux_end, kernel_end, kernel_cidr);
        let defaults = offloads(&kernel, kernel_end);
        assert!(
            defaults.tx_checksum && defaults.tso,
            "the kernel's end keeps Linux's defaults: {defaults:?}"
        );
        for ip_args in kernel_setup {
            kernel.ip(ip_args);
        }
        let dir = crate::TempDir::new(&format!("nmx-up-{tag}"));
        let link = format!("afpacket:{mux_end}");
        let cmd = up_command(&mux, binary, &link, args, &dir.join("run"));
        let mut up = Proc::spawn("netmux up", cmd, &dir.join("up.log"));
        up.expect_line("netd listening", patience);
        UpHost {
            kernel,
            mux,
            dir,
            up,
            binary: binary.to_owned(),
        }
    }

    /// netd's runtime directory.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// `netmux example NAME --port PORT` (in the test's own namespace, as clients of netd
    /// are), once it says it listens on `transport` (for at most `patience`).
    pub fn example(&self, name: &str, transport: &str, port: u16, patience: Duration) -> Proc {
        self.example_with(name, transport, port, &[], patience)
    }

    /// The same with more arguments (`--group 239.1.2.3`, say).
    pub fn example_with(
        &self,
        name: &str,
        transport: &str,
        port: u16,
        args: &[&str],
        patience: Duration,
    ) -> Proc {
        let label = format!("{name}-{port}");
        let cmd = example_command(
            Command::new(&self.binary),
            name,
            port,
            args,
            &self.run_dir(),
        );
        let mut p = Proc::spawn(&label, cmd, &self.dir.join(format!("{label}.log")));
        p.expect_line(&format!("listening on {transport} port {port}"), patience);
        p
    }
}

/// From a UDP socket of the kernel in `ns`, sends `payload` to `target` until it comes back
/// (the first datagrams may wait for ARP, or for a client to start), for at most `patience`;
/// the answer must come from `target` and carry the same bytes.
pub fn udp_echo_from(
    ns: &NetNs,
    target: std::net::SocketAddr,
    payload: impl AsRef<[u8]> + Send + 'static,
    patience: Duration,
) {
    ns.run(move || {
        let payload = payload.as_ref();
        let any = if target.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let sock = std::net::UdpSocket::bind(any).expect("a UDP socket");
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("a read timeout");
        let deadline = Instant::now() + patience;
        let mut buf = vec![0u8; 65536];
        loop {
            sock.send_to(payload, target).expect("sending");
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(from, target, "the echo answers from its own address");
                    assert_eq!(n, payload.len(), "the echo returns the whole datagram");
                    assert!(&buf[..n] == payload, "the echo returns the same bytes");
                    return;
                }
                Err(e) => assert!(Instant::now() < deadline, "no echo from {target}: {e}"),
            }
        }
    });
}

/// A raw socket of `domain` and `protocol` (e.g. `libc::AF_INET6`, `libc::IPPROTO_ICMPV6`) in
/// the calling thread's namespace, whose reads give up after `receive_timeout` when given.
/// Panics when the system refuses it (the tests that use it run as root).
pub fn raw_socket(
    domain: libc::c_int,
    protocol: libc::c_int,
    receive_timeout: Option<Duration>,
) -> std::os::fd::OwnedFd {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW, protocol) };
    assert!(
        fd >= 0,
        "raw socket ({domain}, {protocol}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    if let Some(timeout) = receive_timeout {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        let _ = set_socket_option(&sock, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv);
    }
    sock
}

/// Sets the socket option `name` at `level` (`libc::SOL_SOCKET`, `libc::SO_RCVTIMEO`, say)
/// of `sock` to `value`: plain data as the option wants it (a `c_int`, a C struct such as
/// `libc::timeval`, or bytes such as an interface name), its size passed with it
/// (`setsockopt(2)`). Why not, when the system refuses.
pub fn set_socket_option<T: ?Sized>(
    sock: &impl std::os::fd::AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: value is a live reference for the call and its size is passed with it; the
    // kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of_val(value) as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The index of interface `ifname` in the calling thread's namespace (0 when there is none).
pub fn ifindex(ifname: &str) -> u32 {
    let name = std::ffi::CString::new(ifname).expect("an interface name without NUL");
    // SAFETY: a valid NUL-terminated name.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// Sends `data` on the raw IPv4 or IPv6 socket `sock` to `to` (`sendto(2)`); `scope_id` is
/// the interface index of an IPv6 link-local or multicast `to`, 0 otherwise. How many bytes
/// went, or why none did.
pub fn raw_send_to(
    sock: &std::os::fd::OwnedFd,
    data: &[u8],
    to: std::net::IpAddr,
    scope_id: u32,
) -> std::io::Result<usize> {
    // SAFETY: sockaddr_in and sockaddr_in6 are plain data; zeroed is a valid value of each.
    let (mut v4, mut v6): (libc::sockaddr_in, libc::sockaddr_in6) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    let (addr, len): (*const libc::sockaddr, usize) = match to {
        std::net::IpAddr::V4(to) => {
            v4.sin_family = libc::AF_INET as libc::sa_family_t;
            v4.sin_addr.s_addr = u32::from_ne_bytes(to.octets());
            let addr = (&v4 as *const libc::sockaddr_in).cast();
            (addr, std::mem::size_of::<libc::sockaddr_in>())
        }
        std::net::IpAddr::V6(to) => {
            v6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            v6.sin6_addr.s6_addr = to.octets();
            v6.sin6_scope_id = scope_id;
            let addr = (&v6 as *const libc::sockaddr_in6).cast();
            (addr, std::mem::size_of::<libc::sockaddr_in6>())
        }
    };
    // SAFETY: data and the address are valid for the lengths given, and live across the call.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            0,
            addr,
            len as libc::socklen_t,
        )
    };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// Reads one datagram from the raw socket `sock` into `buf`, waiting at most as long as its
/// receive timeout: its length, or why there was none.
pub fn raw_recv(sock: &std::os::fd::OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// How many echo replies one ICMPv6 echo request from the kernel in `ns` to `to`, sent on
/// `ifname` (for a link-local `to`), gets within a second; asked again until one comes back
/// (the kernel's addresses and neighbour discovery need a moment), for at most `patience`.
pub fn ping6_replies(
    ns: &NetNs,
    ifname: &str,
    to: std::net::Ipv6Addr,
    patience: Duration,
) -> usize {
    ping6_replies_with(ns, ifname, to, b"one answer, please".to_vec(), patience)
}

/// [`ping6_replies`] with `payload` as the request's data (the kernel fragments a request
/// larger than the MTU); only replies that carry the same data count.
pub fn ping6_replies_with(
    ns: &NetNs,
    ifname: &str,
    to: std::net::Ipv6Addr,
    payload: Vec<u8>,
    patience: Duration,
) -> usize {
    let ifname = ifname.to_owned();
    ns.run(move || {
        let sock = raw_socket(
            libc::AF_INET6,
            libc::IPPROTO_ICMPV6,
            Some(Duration::from_millis(100)),
        );
        let scope_id = ifindex(&ifname);
        let id: u16 = 0x6e6d;
        // Type 128 (echo request); the kernel fills the checksum of raw ICMPv6.
        let mut request = vec![128, 0, 0, 0];
        request.extend_from_slice(&id.to_be_bytes());
        request.extend_from_slice(&1u16.to_be_bytes());
        request.extend_from_slice(&payload);
        let deadline = Instant::now() + patience;
        let mut buf = vec![0u8; 70_000];
        loop {
            let sent = raw_send_to(&sock, &request, to.into(), scope_id);
            // The kernel's link-local address needs a moment after the link came up (duplicate
            // address detection), and neighbour discovery another: until then, ask again.
            if !matches!(sent, Ok(n) if n == request.len()) {
                assert!(Instant::now() < deadline, "sending to {to}: {sent:?}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let mut replies = 0;
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until {
                // Raw ICMPv6 sockets hand over the ICMPv6 message without the IPv6 header.
                if let Ok(n) = raw_recv(&sock, &mut buf) {
                    if n >= 8
                        && buf[0] == 129
                        && buf[4..6] == id.to_be_bytes()
                        && buf[8..n] == payload[..]
                    {
                        replies += 1;
                    }
                }
            }
            if replies > 0 {
                return replies;
            }
            assert!(Instant::now() < deadline, "no ICMPv6 echo reply from {to}");
        }
    })
}

/// An ethtool "get" or "set" of one feature value, by `SIOCETHTOOL` on a socket of the calling
/// thread's namespace.
fn ethtool_value(ifname: &str, cmd: u32, data: u32) -> std::io::Result<u32> {
    /// `struct ethtool_value` from `<linux/ethtool.h>`.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL reads the ifreq and reads or writes the ethtool_value it points to,
    // both alive and properly laid out for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value.data)
}

/// `ETHTOOL_GTXCSUM`, `ETHTOOL_GTSO`, `ETHTOOL_STSO`, `ETHTOOL_SGSO`, `ETHTOOL_GGRO`,
/// `ETHTOOL_SGRO` from `<linux/ethtool.h>`.
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_GTSO: u32 = 0x1e;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGSO: u32 = 0x24;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// The offloads of an interface that matter to netmux, as `ethtool -k` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// Transmit checksum offload (`tx-checksumming`).
    pub tx_checksum: bool,
    /// TCP segmentation offload.
    pub tso: bool,
    /// Generic receive offload.
    pub gro: bool,
}

/// The offloads of `ifname` in namespace `ns`.
pub fn offloads(ns: &NetNs, ifname: &str) -> Offloads {
    let ifname = ifname.to_string();
    ns.run(move || {
        let get = |cmd| ethtool_value(&ifname, cmd, 0).expect("reading an offload") != 0;
        Offloads {
            tx_checksum: get(ETHTOOL_GTXCSUM),
            tso: get(ETHTOOL_GTSO),
            gro: get(ETHTOOL_GGRO),
        }
    })
}

/// `ethtool -K IFNAME gro on|off` in namespace `ns`, by its ioctl.
pub fn set_gro(ns: &NetNs, ifname: &str, on: bool) {
    let ifname = ifname.to_string();
    ns.run(move || {
        ethtool_value(&ifname, ETHTOOL_SGRO, u32::from(on)).expect("setting GRO");
    });
}

/// `ethtool -K IFNAME tso on|off gso on|off` in namespace `ns`, by its ioctls.
pub fn set_segmentation_offloads(ns: &NetNs, ifname: &str, on: bool) {
    let ifname = ifname.to_string();
    ns.run(move || {
        for cmd in [ETHTOOL_STSO, ETHTOOL_SGSO] {
            ethtool_value(&ifname, cmd, u32::from(on)).expect("setting TSO or GSO");
        }
    });
}

/// The CPU time a process has used so far (user and system, `/proc/PID/stat` fields 14 and
/// 15), in clock ticks (`USER_HZ`, 100 per second on Linux).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let at = |n: usize| fields[n - 3].parse::<u64>().expect("a tick count");
    at(14) + at(15)
}

/// A process a test started: its stdout lines come through a channel, its stderr goes to a
/// log file; stopped by its pid (SIGKILL) on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd`, its stderr into `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("a log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
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
            log: log.to_path_buf(),
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `patience` for a stdout line containing `text`, and returns it.
    pub fn expect_line(&mut self, text: &str, patience: Duration) -> String {
        let deadline = Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "{} never printed {text:?} (exit: {:?}); its log:\n{}",
                    self.name,
                    self.child.try_wait(),
                    self.log()
                ),
            }
        }
    }

    /// How it ended, if it has.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting for a child")
    }

    /// Waits up to `patience` for the process to exit by itself.
    pub fn wait_exit(&mut self, patience: Duration) -> ExitStatus {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {patience:?}; its log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`libc::SIGTERM`, say) to it, by its pid; panics (test support) when
    /// that fails.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid");
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "signal {signal} to {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }

    /// SIGKILL, by pid, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
