//! The operator's tools with a real Linux kernel as the peer, as root: `netmux up` on the end
//! of a veth pair in a namespace of its own (`afpacket:`), the kernel with 192.0.2.1/24 at the
//! other end in a second namespace, and the HTTP example as the client (netmux is 192.0.2.2).
//!
//! What is proved: a capture of the HTTP client taken while the kernel loads its page holds
//! that exchange in both directions, in order, and tcpdump reads it; its frame count is the
//! driver's count of what the client received and sent meanwhile; a firewall rule blocking the
//! client's port stops the kernel's connections until it is removed.
//!
//! Only addresses in 192.0.2.0/24 inside the tests' namespaces are used; only processes these
//! tests started are stopped, by their pid; the namespaces are deleted on drop whatever
//! happened. Every test is named `root_*` and `#[ignore]`d: `scripts/test` runs them as root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use netmux_testkit::netns::{self, NetNs, Proc};
use netmux_testkit::TempDir;

const PATIENCE: Duration = Duration::from_secs(30);
const HTTP_PORT: u16 = 8080;
const KERNEL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NETMUX: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const MUX_END: &str = "nmx0";
const KERNEL_END: &str = "nmx1";

fn netmux() -> PathBuf {
    netns::binary_under_test(env!("CARGO_BIN_EXE_netmux"))
}

/// `netmux up` on a veth end, the kernel at the other, and the HTTP example.
struct Host {
    /// Declared first, so the kernel's namespace goes before netmux's.
    kernel: NetNs,
    _mux: NetNs,
    dir: TempDir,
    _up: Proc,
    _http: Proc,
}

impl Host {
    fn start(tag: &str) -> Host {
        netns::require_root();
        let (mux, kernel) = netns::kernel_peer(tag, MUX_END, KERNEL_END, &format!("{KERNEL}/24"));
        let dir = TempDir::new(&format!("nmx-ops-{tag}"));
        let link = format!("afpacket:{MUX_END}");
        let ip = format!("{NETMUX}/24");
        let cmd = netns::up_command(&mux, &netmux(), &link, &["--ip", &ip], &dir.join("run"));
        let mut up = Proc::spawn("netmux up", cmd, &dir.join("up.log"));
        up.expect_line("netd listening", PATIENCE);
        let cmd = netns::example_command(
            Command::new(netmux()),
            "http",
            HTTP_PORT,
            &[],
            &dir.join("run"),
        );
        let mut http = Proc::spawn("http", cmd, &dir.join("http.log"));
        http.expect_line(&format!("listening on tcp port {HTTP_PORT}"), PATIENCE);
        Host {
            kernel,
            _mux: mux,
            dir,
            _up: up,
            _http: http,
        }
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// `netmux ARGS --runtime-dir ...`, which must succeed; its standard output.
    fn netmux(&self, args: &[&str]) -> String {
        let out = Command::new(netmux())
            .args(&args[..1])
            .arg("--runtime-dir")
            .arg(self.run_dir())
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(out.status.success(), "netmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The HTTP client's frames in and out, as the driver counts them (`netmux ls --json`).
    fn http_frames(&self) -> (u64, u64) {
        let list: serde_json::Value =
            serde_json::from_str(&self.netmux(&["ls", "--json"])).unwrap();
        let session = list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["ports"].to_string().contains(&HTTP_PORT.to_string()))
            .expect("the http client's session")
            .clone();
        let c = &session["counters"];
        (
            c["rx_frames"].as_u64().unwrap(),
            c["tx_frames"].as_u64().unwrap(),
        )
    }

    /// Loads the page from the kernel; `None` when no connection could be made within `wait`.
    fn page(&self, wait: Duration) -> Option<String> {
        self.kernel.run(move || {
            let target = SocketAddr::from((NETMUX, HTTP_PORT));
            let mut stream = TcpStream::connect_timeout(&target, wait).ok()?;
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            write!(
                stream,
                "GET / HTTP/1.1\r\nHost: {NETMUX}\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut text = String::new();
            stream.read_to_string(&mut text).ok()?;
            Some(text)
        })
    }
}

/// Waits until `path` holds `text`.
fn wait_for_text(path: &std::path::Path, text: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(text) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{} never said {text:?}: {log}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs root: network namespaces and AF_PACKET"]
fn root_a_capture_of_the_http_client_holds_the_kernels_page_load_both_ways_for_tcpdump() {
    let host = Host::start("ncap");
    // ARP and the first connection settle before the capture starts.
    assert!(host.page(PATIENCE).expect("the page").contains("200 OK"));
    let before = host.http_frames();
    let file = host.dir.join("http.pcap");
    let mut cmd = Command::new(netmux());
    cmd.args(["capture", "--runtime-dir"])
        .arg(host.run_dir())
        .args([&format!("tcp/{HTTP_PORT}"), "-w"])
        .arg(&file);
    let log = host.dir.join("capture.log");
    let mut capture = Proc::spawn("capture", cmd, &log);
    wait_for_text(&log, "capturing");
    let page = host.page(PATIENCE).expect("the page while captured");
    assert!(page.contains("200 OK"), "{page}");
    // The last ACKs settle; then the count and the capture's end, with nothing in between.
    std::thread::sleep(Duration::from_millis(500));
    let after = host.http_frames();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(capture.pid() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    assert!(capture.wait_exit(PATIENCE).success());
    let said = wait_for_text(&log, "frames captured");
    let expected = (after.0 - before.0) + (after.1 - before.1);
    assert!(
        said.contains(&format!("netmux: {expected} frames captured, 0 dropped")),
        "the driver counted {expected} frames for the client: {said}"
    );

    let out = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&file)
        .output()
        .expect("tcpdump (scripts/test installs it)");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, expected, "{text}");
    let inbound = format!("{KERNEL}.");
    let first = lines
        .iter()
        .find(|l| l.contains("Flags"))
        .expect("TCP frames");
    assert!(
        first.contains(&format!("> {NETMUX}.{HTTP_PORT}: Flags [S]")) && first.contains(&inbound),
        "the kernel's SYN comes first: {text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("{NETMUX}.{HTTP_PORT} > {KERNEL}."))
                && l.contains("Flags [S.]")),
        "the client's SYN-ACK is there: {text}"
    );
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        bytes.windows(15).any(|w| w == b"HTTP/1.1 200 OK"),
        "the page the client sent is in the capture"
    );
}

#[test]
#[ignore = "needs root: network namespaces and AF_PACKET"]
fn root_a_firewall_rule_on_the_http_port_stops_the_kernels_connections_until_removed() {
    let host = Host::start("nfw");
    assert!(host.page(PATIENCE).expect("the page").contains("200 OK"));
    host.netmux(&[
        "firewall", "add", "block", "in", "quick", "tcp", "dst", "port", "8080",
    ]);
    assert_eq!(
        host.page(Duration::from_secs(2)),
        None,
        "no connection while the rule is there"
    );
    let rules = host.netmux(&["firewall", "ls", "--json"]);
    let blocked: serde_json::Value = serde_json::from_str(rules.lines().next().unwrap()).unwrap();
    assert!(blocked["frames"].as_u64().unwrap() >= 1, "{rules}");
    host.netmux(&["firewall", "rm", "1"]);
    assert!(host
        .page(PATIENCE)
        .expect("the page again")
        .contains("200 OK"));
}
