//! IPv6 for clients, with a real Linux kernel as the IPv6 peer, as root: on a veth pair as
//! `ip link add` makes it (default offloads, never changed, and no kernel setting changed),
//! `netmux up --ip 192.0.2.2/24 --ip6 2001:db8::2/64` in one namespace on one end
//! (`afpacket:`), the kernel with 192.0.2.1/24 and 2001:db8::1/64 on the other end in a second
//! namespace. The kernel's global address is added `nodad` (an address flag, not a setting) so
//! it is usable at once; its link-local address goes through duplicate address detection as
//! usual.
//!
//! What is proved: one ICMPv6 echo request to netd's global address gets exactly one reply
//! (netd answers the kernel's neighbour solicitation for it, alone); `netmux example udp-echo`
//! echoes over IPv6 and over IPv4 on one port (its smoltcp resolves the kernel through
//! neighbour solicitations that pass its transmit filter, and learns the answer from the
//! advertisement the driver copies to every client); the HTTP example serves a page over
//! IPv6 and over IPv4; with `--ip6 slaac`, a router advertisement the test sends from the
//! kernel's namespace (a raw ICMPv6 socket, as a router's daemon would) gives netd an address
//! in the advertised prefix with its own interface id (not the kernel's EUI-64 one on the
//! shared MAC), after duplicate address detection, and the router as the default; clients
//! learn both, and a ping to the address is answered once; an instance created with
//! `netmux instance create --ip6` (its own MAC) echoes over IPv6 on its own address, and netd
//! answers a ping to that address once. Datagrams larger than the MTU, both ways: the kernel
//! sends the UDP echo 1,453 to 65,527 bytes over IPv6 in fragments (reassembled by the driver)
//! and gets each back whole (the example's device fragments the echo, the driver checks the
//! fragments as the whole datagram, the kernel reassembles them); a 4,000-byte ping6 is
//! answered once, in fragments, with the same data.
//!
//! Only addresses in 192.0.2.0/24 and 2001:db8::/64 inside the tests' own namespaces are used;
//! only processes these tests started are stopped, by their pid; the namespaces are deleted
//! on drop whatever happened. Every test is named `root_*` and `#[ignore]`d: `scripts/test`
//! runs them as root.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use netmux_client::blocking::Client;
use netmux_testkit::netns::{self, NetNs, UpHost};

/// How long any one expected event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);
const NETMUX: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const NETMUX6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const KERNEL6: &str = "2001:db8::1/64";
const MUX_END: &str = "nmx0";
const KERNEL_END: &str = "nmx1";
fn netmux() -> PathBuf {
    netns::binary_under_test(env!("CARGO_BIN_EXE_netmux"))
}

/// `netmux up` with IPv4 and IPv6 addresses on a veth end, with the kernel at the other end.
fn start(tag: &str) -> UpHost {
    start_with(tag, &format!("{NETMUX6}/64"))
}

/// With `--ip6 IP6`; the kernel's end also has [`KERNEL6`] (no duplicate address detection: an
/// address flag, not a kernel setting).
fn start_with(tag: &str, ip6: &str) -> UpHost {
    let ip4 = format!("{NETMUX}/24");
    UpHost::start(
        &netmux(),
        tag,
        (MUX_END, KERNEL_END),
        "192.0.2.1/24",
        &[&["addr", "add", KERNEL6, "dev", KERNEL_END, "nodad"]],
        &["--ip", &ip4, "--ip6", ip6],
        PATIENCE,
    )
}

#[test]
#[ignore]
fn root_a_ping6_to_netds_global_address_is_answered_once() {
    netns::require_root();
    let host = start("p6");
    let client = Client::connect(&host.run_dir()).expect("netd takes a client");
    assert_eq!(
        client.host().ipv6,
        vec![(NETMUX6.octets(), 64)],
        "clients learn the global address"
    );
    assert_eq!(
        netns::ping6_replies(&host.kernel, KERNEL_END, NETMUX6, PATIENCE),
        1,
        "netd answers, once; netmux log:\n{}",
        host.up.log()
    );
}

#[test]
#[ignore]
fn root_the_udp_echo_answers_over_ipv6_and_ipv4_on_one_port() {
    netns::require_root();
    let host = start("u6");
    let port = 7777;
    let _echo = host.example("udp-echo", "udp", port, PATIENCE);
    for target in [IpAddr::V6(NETMUX6), IpAddr::V4(NETMUX)] {
        netns::udp_echo_from(
            &host.kernel,
            SocketAddr::new(target, port),
            b"over both families",
            PATIENCE,
        );
    }
}

/// Loads the HTTP example's page from the kernel's TCP at `target`.
fn http_page_from_kernel(ns: &NetNs, target: SocketAddr) -> String {
    ns.run(move || {
        let mut stream = netns::tcp_connect(target, PATIENCE);
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut page = Vec::new();
        stream.read_to_end(&mut page).expect("reading the page");
        String::from_utf8_lossy(&page).into_owned()
    })
}

#[test]
#[ignore]
fn root_the_http_example_serves_over_ipv6_and_ipv4() {
    netns::require_root();
    let host = start("h6");
    let port = 8080;
    let http = host.example("http", "tcp", port, PATIENCE);
    for target in [IpAddr::V6(NETMUX6), IpAddr::V4(NETMUX)] {
        let page = http_page_from_kernel(&host.kernel, SocketAddr::new(target, port));
        assert!(
            page.starts_with("HTTP/1.") && page.lines().next().unwrap_or("").contains(" 200"),
            "the page over {target}: {page}\nexample log:\n{}\nnetmux log:\n{}",
            http.log(),
            host.up.log()
        );
    }
}

/// Sends one router advertisement of the /64 `prefix` (autonomous, router lifetime 1800 s)
/// from the calling thread's namespace to all nodes on `ifname`: a raw ICMPv6 socket with hop
/// limit 255, as a router's daemon sends it. Whether it went (the kernel's link-local address
/// may still be tentative).
fn send_router_advertisement(ifname: &str, prefix: Ipv6Addr) -> bool {
    let sock = netns::raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6, None);
    let hops: libc::c_int = 255;
    let _ = netns::set_socket_option(&sock, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &hops);
    // Type 134, code 0, checksum (the kernel's), hop limit 64, no flags, lifetime 1800 s,
    // reachable time and retransmission timer unspecified; one prefix information option.
    let mut ra = vec![134, 0, 0, 0, 64, 0];
    ra.extend_from_slice(&1800u16.to_be_bytes());
    ra.extend_from_slice(&[0; 8]);
    ra.extend_from_slice(&[3, 4, 64, 0xc0]);
    ra.extend_from_slice(&86400u32.to_be_bytes());
    ra.extend_from_slice(&14400u32.to_be_bytes());
    ra.extend_from_slice(&[0; 4]);
    ra.extend_from_slice(&prefix.octets());
    let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
    let sent = netns::raw_send_to(&sock, &ra, all_nodes.into(), netns::ifindex(ifname));
    matches!(sent, Ok(n) if n == ra.len())
}

#[test]
#[ignore]
fn root_slaac_takes_an_address_and_the_router_from_an_advertisement() {
    netns::require_root();
    let host = start_with("s6", "slaac");
    let prefix: Ipv6Addr = "2001:db8:0:1::".parse().unwrap();
    let deadline = Instant::now() + PATIENCE;
    let config = loop {
        host.kernel
            .run(|| send_router_advertisement(KERNEL_END, "2001:db8:0:1::".parse().unwrap()));
        std::thread::sleep(Duration::from_millis(500));
        let client = Client::connect(&host.run_dir()).expect("netd takes a client");
        if !client.host().ipv6.is_empty() {
            break client.host().clone();
        }
        assert!(
            Instant::now() < deadline,
            "no address from the advertisement; netmux log:\n{}",
            host.up.log()
        );
    };
    let (address, len) = config.ipv6[0];
    let address = Ipv6Addr::from(address);
    assert_eq!(len, 64);
    assert_eq!(address.octets()[..8], prefix.octets()[..8], "in the prefix");
    let ll = Ipv6Addr::from(config.ipv6_link_local.unwrap());
    assert_eq!(
        address.octets()[8..],
        ll.octets()[8..],
        "netd's own interface id"
    );
    let router = Ipv6Addr::from(config.ipv6_gateway.expect("the router is the default"));
    assert_eq!(
        router.segments()[0],
        0xfe80,
        "the router's link-local address"
    );
    assert!(
        host.up.log().contains("slaac:"),
        "logged; netmux log:\n{}",
        host.up.log()
    );
    assert_eq!(
        netns::ping6_replies(&host.kernel, KERNEL_END, address, PATIENCE),
        1,
        "netd answers for it, once"
    );
}

#[test]
#[ignore]
fn root_an_instance_with_a_global_address_of_its_own_echoes_over_ipv6() {
    netns::require_root();
    let host = start("i6");
    let address: Ipv6Addr = "2001:db8::10".parse().unwrap();
    let ip6 = format!("{address}/64");
    netmux_ok(
        &host,
        &[
            "instance",
            "create",
            "t6",
            "--ip",
            "192.0.2.10/24",
            "--ip6",
            &ip6,
            "--temporary",
        ],
    );
    let ls = netmux_ok(&host, &["instance", "ls", "-o", "name,ip6"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("t6") && l.ends_with(&format!("{address}/64"))),
        "instance ls shows the address: {ls}"
    );
    let port = 7010;
    let _echo = host.example_with("udp-echo", "udp", port, &["-i", "t6"], PATIENCE);
    netns::udp_echo_from(
        &host.kernel,
        SocketAddr::new(IpAddr::V6(address), port),
        b"to the instance",
        PATIENCE,
    );
    assert_eq!(
        netns::ping6_replies(&host.kernel, KERNEL_END, address, PATIENCE),
        1,
        "netd answers for the instance's address, once"
    );
}

#[test]
#[ignore]
fn root_the_udp_echo_returns_datagrams_larger_than_the_mtu_over_ipv6_both_ways() {
    netns::require_root();
    let host = start("f6");
    let port = 7788;
    let echo = host.example("udp-echo", "udp", port, PATIENCE);
    // One byte past a single frame (1,500 - 40 - 8), the brief's 8,000 bytes, and the largest
    // UDP payload IPv6 carries without a jumbogram.
    for size in [1453, 8000, 30_000, 65_527] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        netns::udp_echo_from(
            &host.kernel,
            SocketAddr::new(IpAddr::V6(NETMUX6), port),
            payload,
            PATIENCE,
        );
    }
    assert!(
        !echo.log().contains("not echoed"),
        "every datagram was echoed: {}",
        echo.log()
    );
}

#[test]
#[ignore]
fn root_a_ping6_larger_than_the_mtu_is_answered_once_with_its_data() {
    netns::require_root();
    let host = start("g6");
    let payload: Vec<u8> = (0..4000).map(|i| (i * 13 + 1) as u8).collect();
    assert_eq!(
        netns::ping6_replies_with(&host.kernel, KERNEL_END, NETMUX6, payload, PATIENCE),
        1,
        "netd answers in fragments, once; netmux log:\n{}",
        host.up.log()
    );
}

/// Runs `netmux ARGS --runtime-dir` of `host`; it must succeed. Its standard output.
fn netmux_ok(host: &UpHost, args: &[&str]) -> String {
    netns::netmux_ok(Command::new(netmux()), args, &host.run_dir())
}

#[test]
#[ignore]
fn root_an_instance_takes_a_slaac_address_and_every_instance_the_default_router() {
    netns::require_root();
    let host = start("i7");
    // One instance by SLAAC (its own MAC), one with a static global address.
    netmux_ok(
        &host,
        &[
            "instance",
            "create",
            "sl",
            "--ip",
            "192.0.2.11/24",
            "--ip6",
            "slaac",
            "--temporary",
        ],
    );
    netmux_ok(
        &host,
        &[
            "instance",
            "create",
            "st",
            "--ip",
            "192.0.2.12/24",
            "--ip6",
            "2001:db8::12/64",
            "--temporary",
        ],
    );
    let prefix: Ipv6Addr = "2001:db8:0:1::".parse().unwrap();
    let deadline = Instant::now() + PATIENCE;
    let (sl, st) = loop {
        host.kernel
            .run(move || send_router_advertisement(KERNEL_END, prefix));
        std::thread::sleep(Duration::from_millis(500));
        let sl = Client::connect_to(&host.run_dir(), Some("sl")).expect("netd takes a client");
        let st = Client::connect_to(&host.run_dir(), Some("st")).expect("netd takes a client");
        if !sl.host().ipv6.is_empty() && st.host().ipv6_gateway.is_some() {
            break (sl.host().clone(), st.host().clone());
        }
        assert!(
            Instant::now() < deadline,
            "no address or router from the advertisement; netmux log:\n{}",
            host.up.log()
        );
    };
    let (address, len) = sl.ipv6[0];
    let address = Ipv6Addr::from(address);
    assert_eq!(len, 64);
    assert_eq!(address.octets()[..8], prefix.octets()[..8], "in the prefix");
    let ll = Ipv6Addr::from(sl.ipv6_link_local.unwrap());
    assert_eq!(
        address.octets()[8..],
        ll.octets()[8..],
        "the instance's own interface id"
    );
    let router = Ipv6Addr::from(sl.ipv6_gateway.expect("the router is sl's default"));
    assert_eq!(
        router.segments()[0],
        0xfe80,
        "the router's link-local address"
    );
    assert_eq!(
        st.ipv6_gateway.map(Ipv6Addr::from),
        Some(router),
        "and st's, whose address is static"
    );
    assert_eq!(
        st.ipv6,
        vec![("2001:db8::12".parse::<Ipv6Addr>().unwrap().octets(), 64)],
        "a static address stays"
    );
    let ls = netmux_ok(
        &host,
        &["instance", "ls", "-p", "-o", "name,ip6,ip6-from,gateway6"],
    );
    assert!(
        ls.contains(&format!("sl:{address}/64:slaac:{router}"))
            && ls.contains(&format!("st:2001:db8::12/64:static:{router}")),
        "instance ls: {ls}"
    );
    assert_eq!(
        netns::ping6_replies(&host.kernel, KERNEL_END, address, PATIENCE),
        1,
        "netd answers for the instance's SLAAC address, once"
    );
}
