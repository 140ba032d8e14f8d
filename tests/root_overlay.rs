//! An overlay against the Linux kernel's own VXLAN device, as root: proof of the wire format
//! against an implementation nobody here wrote.
//!
//! `netmux up` runs in one namespace on a veth end (`afpacket:`, 192.0.2.2/24 as the
//! underlay); the other end, in a second namespace, is the kernel's with 192.0.2.1/24 and
//! Linux's default offloads, and a `vxlan` device on it (VNI 42, port 4789, learning off,
//! static forwarding entries toward 192.0.2.2) with overlay address 10.0.0.9/24. netmux has
//! overlay `blue` (VNI 42, a varpd `files` mapping naming both MACs) and instance `web`
//! (10.0.0.1/24) on it, with `netmux example udp-echo` as its client. The kernel's UDP socket
//! on 10.0.0.9 exchanges datagrams with the echo through both VXLAN implementations: the
//! kernel resolves 10.0.0.1 by ARP carried in VXLAN (answered by netd's host stack for the
//! instance, encapsulated by the driver), and the echo's stack resolves 10.0.0.9 by proxy ARP.
//! Then TCP: the kernel loads `netmux example http`'s page in the instance; and ICMP: netd's
//! host stack answers the kernel's echo request for the instance's address.
//!
//! Only addresses in 192.0.2.0/24 (underlay) and 10.0.0.0/24 (overlay) inside the test's
//! namespaces are used; nothing outside them is changed, no offload is touched; only
//! processes this test started are stopped, by their pid; the namespaces (and every interface
//! in them) are deleted on drop whatever happened. Named `root_*` and `#[ignore]`d:
//! `scripts/test` runs it as root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use netmux_testkit::netns::{self, NetNs, Proc};
use netmux_testkit::TempDir;

const PATIENCE: Duration = Duration::from_secs(30);
const UNDERLAY_KERNEL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const UNDERLAY_NETMUX: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const OVERLAY_KERNEL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);
const OVERLAY_NETMUX: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const KERNEL_VXLAN_MAC: &str = "02:b1:00:00:00:09";
const NETMUX_MAC: &str = "02:b1:00:00:00:01";
const VNI: &str = "42";
const UDP_PORT: u16 = 7777;
const HTTP_PORT: u16 = 8080;
const MUX_END: &str = "nmx0";
const KERNEL_END: &str = "nmx1";

fn netmux() -> PathBuf {
    netns::binary_under_test(env!("CARGO_BIN_EXE_netmux"))
}

/// Sends ICMP echo requests from `from` to `to` on a raw socket (root) until a reply with
/// the same identifier and payload comes back, for up to [`PATIENCE`].
fn icmp_echo(from: Ipv4Addr, to: Ipv4Addr) -> bool {
    let sock = netns::raw_socket(
        libc::AF_INET,
        libc::IPPROTO_ICMP,
        Some(Duration::from_millis(300)),
    );
    let local = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(from.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: local is a live sockaddr_in of the size given.
    let rc = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            (&local as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let mut request = vec![8u8, 0, 0, 0, 0x4e, 0x4d, 0, 1];
    request.extend_from_slice(b"netmux overlay ping");
    let sum = netmux_wire::checksum::of(&request);
    request[2..4].copy_from_slice(&sum.to_be_bytes());
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let _ = netns::raw_send_to(&sock, &request, to.into(), 0);
        while let Ok(n @ 1..) = netns::raw_recv(&sock, &mut buf) {
            // An IPv4 header, then ICMP: an echo reply (type 0) with our id and payload.
            let got = &buf[..n];
            let ihl = usize::from(got[0] & 0x0f) * 4;
            if let Some(icmp) = got.get(ihl..) {
                if icmp.first() == Some(&0) && icmp.get(4..) == request.get(4..) {
                    return true;
                }
            }
        }
    }
    false
}

/// Runs `bridge -n NS args` and panics unless it succeeds.
fn bridge(ns: &NetNs, args: &[&str]) {
    let out = Command::new("bridge")
        .args(["-n", ns.name()])
        .args(args)
        .output()
        .expect("running bridge");
    assert!(
        out.status.success(),
        "bridge {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a netmux command against `run` and panics with its output unless it succeeds.
fn netmux_cmd(run: &std::path::Path, args: &[&str]) -> String {
    netns::netmux_ok(Command::new(netmux()), args, run)
}

#[test]
#[ignore = "needs root: network namespaces, veth, AF_PACKET, a vxlan device"]
fn root_the_kernels_vxlan_device_exchanges_udp_tcp_and_ping_with_netmux_on_an_overlay() {
    netns::require_root();
    // Declared before the processes, so they go after them.
    let (mux, kernel) =
        netns::kernel_peer("ov", MUX_END, KERNEL_END, &format!("{UNDERLAY_KERNEL}/24"));
    let dir = TempDir::new("nmx-root-overlay");
    let defaults = netns::offloads(&kernel, KERNEL_END);
    assert!(defaults.tx_checksum, "Linux's defaults: {defaults:?}");

    // The kernel's VTEP.
    kernel.ip(&[
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        VNI,
        "dstport",
        "4789",
        "local",
        &UNDERLAY_KERNEL.to_string(),
        "dev",
        KERNEL_END,
        "nolearning",
    ]);
    kernel.ip(&["link", "set", "vx0", "address", KERNEL_VXLAN_MAC]);
    kernel.ip(&["addr", "add", &format!("{OVERLAY_KERNEL}/24"), "dev", "vx0"]);
    kernel.ip(&["link", "set", "vx0", "up"]);
    let netmux_ip = UNDERLAY_NETMUX.to_string();
    for mac in ["00:00:00:00:00:00", NETMUX_MAC] {
        bridge(
            &kernel,
            &["fdb", "append", mac, "dev", "vx0", "dst", &netmux_ip],
        );
    }

    // netmux's: the same mapping in varpd's files format.
    let map = dir.join("blue.json");
    std::fs::write(
        &map,
        format!(
            "{{ \"{NETMUX_MAC}\": {{ \"ip\": \"{UNDERLAY_NETMUX}\", \"port\": 4789, \"arp\": \"{OVERLAY_NETMUX}\" }},\n  \"{KERNEL_VXLAN_MAC}\": {{ \"ip\": \"{UNDERLAY_KERNEL}\", \"port\": 4789, \"arp\": \"{OVERLAY_KERNEL}\" }} }}\n"
        ),
    )
    .unwrap();
    let run = dir.join("run");
    let link = format!("afpacket:{MUX_END}");
    let ip = format!("{UNDERLAY_NETMUX}/24");
    let cmd = netns::up_command(&mux, &netmux(), &link, &["--ip", &ip], &run);
    let mut up = Proc::spawn("netmux up", cmd, &dir.join("up.log"));
    up.expect_line("netd listening", PATIENCE);
    netmux_cmd(
        &run,
        &[
            "overlay",
            "create",
            "blue",
            "--vni",
            VNI,
            "--mapping",
            &format!("files:{}", map.display()),
            "--temporary",
        ],
    );
    netmux_cmd(
        &run,
        &[
            "instance",
            "create",
            "web",
            "--overlay",
            "blue",
            "--mac",
            NETMUX_MAC,
            "--ip",
            &format!("{OVERLAY_NETMUX}/24"),
            "--no-ipv6",
            "--temporary",
        ],
    );
    let echo_cmd = netns::example_command(
        Command::new(netmux()),
        "udp-echo",
        UDP_PORT,
        &["-i", "web"],
        &run,
    );
    let mut echo = Proc::spawn("udp-echo", echo_cmd, &dir.join("echo.log"));
    echo.expect_line(&format!("listening on udp port {UDP_PORT}"), PATIENCE);

    // The kernel's socket on its overlay address, through its vxlan device.
    let target = SocketAddr::from((OVERLAY_NETMUX, UDP_PORT));
    let answered = kernel.run(move || {
        let sock = UdpSocket::bind((OVERLAY_KERNEL, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 2048];
        // The first datagrams wait for the lookups and ARP on both sides; their echoes come
        // late, so any echo of a datagram sent counts, each once.
        let mut sent = Vec::new();
        let mut answered = std::collections::BTreeSet::new();
        while answered.len() < 3 && Instant::now() < deadline {
            let payload = format!("through two VXLANs {}", sent.len());
            sock.send_to(payload.as_bytes(), target).unwrap();
            sent.push(payload);
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                assert_eq!(from, target, "the echo answers from its overlay address");
                let echoed = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(
                    sent.contains(&echoed),
                    "an echo of nothing sent: {echoed:?}"
                );
                answered.insert(echoed);
            }
        }
        answered.len()
    });
    let overlays = netmux_cmd(&run, &["overlay", "ls"]);
    assert!(
        answered >= 3,
        "the echo did not answer through VXLAN\noverlay ls:\n{overlays}\nup log:\n{}\necho log:\n{}",
        up.log(),
        echo.log()
    );
    // TCP: the kernel loads the HTTP example's page through both VXLANs.
    let http_cmd = netns::example_command(
        Command::new(netmux()),
        "http",
        HTTP_PORT,
        &["-i", "web"],
        &run,
    );
    let mut http = Proc::spawn("http", http_cmd, &dir.join("http.log"));
    http.expect_line(&format!("listening on tcp port {HTTP_PORT}"), PATIENCE);
    let head = kernel.run(|| {
        let mut stream =
            netns::tcp_connect(SocketAddr::from((OVERLAY_NETMUX, HTTP_PORT)), PATIENCE);
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    });
    assert!(head.starts_with("HTTP/1.1 200"), "the page: {head:?}");

    // ICMP: netd's host stack answers the kernel's echo request for the instance's address.
    let echoed = kernel.run(|| icmp_echo(OVERLAY_KERNEL, OVERLAY_NETMUX));
    assert!(echoed, "no ICMP echo reply through VXLAN");

    let json = netmux_cmd(&run, &["overlay", "ls", "--json"]);
    assert!(json.contains("\"state\":\"ok\""), "{json}");
    drop(http);
    drop(echo);
    drop(up);
}
