//! Instances on a real link, as root, with the Linux kernel as the peer: `netmux up` on the end
//! of a veth pair as `ip link add` makes it (`afpacket:`), the kernel at the other end with
//! 192.0.2.1/24, and beside the default instance (192.0.2.2) two more made with `netmux
//! instance create`: `own` with a MAC of its own (192.0.2.10), `shared` with the link's MAC
//! (192.0.2.20). Each instance has a UDP echo client bound to the same port, and `own` and
//! `shared` an HTTP client each on one TCP port.
//!
//! Proves: the kernel resolves each instance by ARP to the right MAC (its own, or the link's);
//! a datagram to each address comes back from that address only, so the three clients bound to
//! one port each get their own instance's traffic; the page loads from both over the kernel's
//! TCP; the interface is asked to accept `own`'s MAC (`PACKET_MR_UNICAST`: a veth has no
//! unicast filter, so the kernel counts it in promiscuous mode) while `own` exists, and no
//! longer once it is destroyed; destroying `own` ends its clients and leaves the others
//! answering; a second `netmux up` on the same interface is refused, naming the driver that
//! owns it.
//!
//! Addresses only in 192.0.2.0/24 inside the test's namespaces; processes stopped by their
//! pid; the namespaces are deleted on drop whatever happened. `root_*` and `#[ignore]`d:
//! `scripts/test` runs it as root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use netmux_testkit::netns::{self, NetNs, Proc};
use netmux_testkit::TempDir;

const PATIENCE: Duration = Duration::from_secs(30);
const KERNEL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DEFAULT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const OWN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const SHARED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const OWN_MAC: &str = "02:00:5e:10:00:0a";
const UDP_PORT: u16 = 7777;
const HTTP_PORT: u16 = 8080;
const MUX_END: &str = "nmx0";
const KERNEL_END: &str = "nmx1";

fn netmux() -> PathBuf {
    netns::binary_under_test(env!("CARGO_BIN_EXE_netmux"))
}

/// Runs a short `netmux` command inside `ns` and returns its stdout; panics with its output
/// when it fails.
fn run(ns: &NetNs, args: &[&str], run_dir: &Path) -> String {
    netns::netmux_ok(ns.command(netmux()), args, run_dir)
}

/// An example client joined to `instance`, once it said it listens.
fn example(dir: &Path, run_dir: &Path, kind: &str, port: u16, instance: &str) -> Proc {
    let name = format!("{kind}-{instance}");
    let cmd = netns::example_command(
        Command::new(netmux()),
        kind,
        port,
        &["-i", instance],
        run_dir,
    );
    let mut p = Proc::spawn(&name, cmd, &dir.join(format!("{name}.log")));
    let proto = if kind == "http" { "tcp" } else { "udp" };
    p.expect_line(&format!("listening on {proto} port {port}"), PATIENCE);
    p
}

/// Sends datagrams to `to` from the kernel until one comes back; it must come from `to`.
fn echo_from_kernel(ns: &NetNs, to: Ipv4Addr, payload: &'static [u8]) {
    netns::udp_echo_from(ns, SocketAddr::from((to, UDP_PORT)), payload, PATIENCE);
}

/// Whether anything answers a datagram to `to` within `wait`.
fn answers(ns: &NetNs, to: Ipv4Addr, wait: Duration) -> bool {
    let target = SocketAddr::from((to, UDP_PORT));
    ns.run(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let _ = sock.send_to(b"anyone?", target);
            if sock.recv_from(&mut buf).is_ok() {
                return true;
            }
        }
        false
    })
}

fn page_from_kernel(ns: &NetNs, to: Ipv4Addr) -> String {
    ns.run(move || {
        let mut stream = netns::tcp_connect(SocketAddr::from((to, HTTP_PORT)), PATIENCE);
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    })
}

/// The MAC the kernel's neighbour table has for `addr`.
fn neighbour(ns: &NetNs, addr: Ipv4Addr) -> String {
    let out = ns
        .command("ip")
        .args(["neigh", "show", &addr.to_string(), "dev", KERNEL_END])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_else(|| panic!("no neighbour entry for {addr}: {text:?}"))
        .to_owned()
}

/// The interface's `promiscuity` count (`ip -d link show`).
fn promiscuity(ns: &NetNs, ifname: &str) -> u32 {
    let out = ns
        .command("ip")
        .args(["-d", "link", "show", ifname])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "promiscuity")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no promiscuity in {text:?}"))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore]
fn root_instances_with_their_own_and_the_links_mac_serve_kernel_peers_apart() {
    netns::require_root();
    let dir = TempDir::new("nmx-instances");
    let run_dir = dir.join("run");
    let (mux, kernel) = netns::kernel_peer("ri", MUX_END, KERNEL_END, &format!("{KERNEL}/24"));
    let promisc_before = promiscuity(&mux, MUX_END);

    let link = format!("afpacket:{MUX_END}");
    let ip = format!("{DEFAULT}/24");
    let cmd = netns::up_command(&mux, &netmux(), &link, &["--ip", &ip], &run_dir);
    let mut up = Proc::spawn("netmux up", cmd, &dir.join("up.log"));
    up.expect_line("netd listening", PATIENCE);

    // A second driver on the same interface (another `up`, another runtime directory) is
    // refused, naming the driver that owns it, and the first keeps running.
    let second = netns::up_command(&mux, &netmux(), &link, &["--ip", &ip], &dir.join("run2"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{said}");
    assert!(
        said.contains("another netmux driver (pid ") && said.contains(MUX_END),
        "{said}"
    );
    assert!(up.try_wait().is_none(), "the first `up` runs on");

    let own_ip = format!("{OWN}/24");
    let shared_ip = format!("{SHARED}/24");
    run(
        &mux,
        &[
            "instance",
            "create",
            "own",
            "--mac",
            OWN_MAC,
            "--ip",
            &own_ip,
            "--temporary",
        ],
        &run_dir,
    );
    run(
        &mux,
        &[
            "instance",
            "create",
            "shared",
            "--shared-mac",
            "--ip",
            &shared_ip,
            "--temporary",
        ],
        &run_dir,
    );
    assert_eq!(
        promiscuity(&mux, MUX_END),
        promisc_before + 1,
        "the veth is asked to accept own's MAC"
    );

    // Three clients on one port, one per instance, and the page in `own`.
    let _echo_default = example(dir.path(), &run_dir, "udp-echo", UDP_PORT, "default");
    let mut echo_own = example(dir.path(), &run_dir, "udp-echo", UDP_PORT, "own");
    let _echo_shared = example(dir.path(), &run_dir, "udp-echo", UDP_PORT, "shared");
    let mut http_own = example(dir.path(), &run_dir, "http", HTTP_PORT, "own");
    let _http_shared = example(dir.path(), &run_dir, "http", HTTP_PORT, "shared");

    echo_from_kernel(&kernel, DEFAULT, b"to the default instance");
    echo_from_kernel(&kernel, OWN, b"to the instance with its own MAC");
    echo_from_kernel(&kernel, SHARED, b"to the instance sharing the link's MAC");
    let page = page_from_kernel(&kernel, OWN);
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(page.contains("Hello from netmux"), "{page}");
    let page = page_from_kernel(&kernel, SHARED);
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");

    let mac = netns::mac_of(&mux, MUX_END);
    assert_eq!(neighbour(&kernel, DEFAULT), mac);
    assert_eq!(
        neighbour(&kernel, SHARED),
        mac,
        "shared uses the link's MAC"
    );
    assert_eq!(
        neighbour(&kernel, OWN),
        OWN_MAC,
        "own answers ARP with its MAC"
    );

    // Destroying `own` ends its clients, takes its MAC off the interface, and spares the rest.
    run(&mux, &["instance", "destroy", "own"], &run_dir);
    wait_for("own's MAC taken off the interface", || {
        promiscuity(&mux, MUX_END) == promisc_before
    });
    kernel.ip(&["neigh", "flush", "dev", KERNEL_END]);
    assert!(
        !answers(&kernel, OWN, Duration::from_secs(2)),
        "nothing answers for a destroyed instance"
    );
    echo_from_kernel(&kernel, SHARED, b"shared still answers");
    echo_from_kernel(&kernel, DEFAULT, b"and so does the default instance");
    echo_own.kill9();
    http_own.kill9();
}
