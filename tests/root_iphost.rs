//! The host as an IP citizen, with a real Linux kernel as the peer, as root: on a veth pair as
//! `ip link add` makes it (default offloads, never changed), `netmux up` in one namespace on one
//! end (`afpacket:`), the kernel with 192.0.2.1/24 on the other end in a second namespace;
//! netmux is 192.0.2.2/24.
//!
//! What is proved: one ARP request gets exactly one reply however many clients share the host
//! address (12 here); the UDP echo returns 8,000-byte datagrams (the kernel fragments them on
//! the way in, the echo's smoltcp on the way out, and the driver checks them whole) and the
//! largest datagram IPv4 carries; pings of 8,000 and 65,000 bytes are answered (netd's reply
//! goes out in fragments); an ICMP error the kernel sends about a client's flow reaches
//! that client and no other, and so does an ICMPv6 error (netmux with 2001:db8::2/64 too),
//! while ICMPv6 errors that quote someone else's flow reach no client; UDP sent to the subnet
//! broadcast and to the limited broadcast reaches the client bound to the port. Path-MTU
//! discovery through a real router: with the kernel's namespace made a router (forwarding on
//! in that namespace only) to a peer behind a link of MTU 1,280 (198.51.100.0/24,
//! 2001:db8:1::/64), the peer downloads 4 MiB from the HTTP example over IPv4 and over IPv6;
//! the router's "fragmentation needed" / "packet too big" reaches the example, which lowers
//! its MTU, and the download completes in segments that fit. UDP the kernel sends to the
//! groups 239.1.2.3 and ff15::1234 reaches the UDP echo that joined them (`--group`), and
//! netmux's end of the veth accepts the groups' MACs exactly while a client is joined.
//!
//! Only addresses in 192.0.2.0/24, 198.51.100.0/24 and 2001:db8::/32 inside the tests' own
//! namespaces are used, and no setting outside them is changed; only processes these tests
//! started are stopped, by their pid; the namespaces are deleted on drop whatever happened.
//! Every test is named `root_*` and `#[ignore]`d: `scripts/test` runs them as root.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use netmux_client::blocking::Client;
use netmux_client::Transport;
use netmux_testkit::netns::{self, NetNs, Proc, UpHost};

/// How long any one expected event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);
const KERNEL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NETMUX: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// An address on the link nobody has: the sender of the test's own ARP requests.
const ASKER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
const MUX_END: &str = "nmx0";
const KERNEL_END: &str = "nmx1";
fn netmux() -> PathBuf {
    netns::binary_under_test(env!("CARGO_BIN_EXE_netmux"))
}

/// `netmux up --ip 192.0.2.2/24` on a veth end, with the kernel at the other end.
fn start(tag: &str) -> UpHost {
    let ip = format!("{NETMUX}/24");
    UpHost::start(
        &netmux(),
        tag,
        (MUX_END, KERNEL_END),
        &format!("{KERNEL}/24"),
        &[],
        &["--ip", &ip],
        PATIENCE,
    )
}

/// `netmux example udp-echo` on `port`, once it listens.
fn echo(host: &UpHost, port: u16) -> Proc {
    host.example("udp-echo", "udp", port, PATIENCE)
}

/// The MAC of `ifname` in `ns`.
fn mac(ns: &NetNs, ifname: &str) -> [u8; 6] {
    let bytes: Vec<u8> = netns::mac_of(ns, ifname)
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// A raw AF_PACKET socket on `ifname` of the calling thread's namespace, for ARP.
struct RawSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;

impl RawSocket {
    /// Frames of ethertype `protocol` on `ifname`.
    fn open(ifname: &str, protocol: u16) -> RawSocket {
        let fd = netns::raw_socket(
            libc::AF_PACKET,
            i32::from(protocol.to_be()),
            Some(Duration::from_millis(100)),
        );
        let ifindex = netns::ifindex(ifname) as i32;
        assert!(ifindex > 0, "no interface {ifname}");
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol.to_be();
        addr.sll_ifindex = ifindex;
        // SAFETY: addr is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        RawSocket { fd, ifindex }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and addr are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame already queued, if any (never waits).
    fn recv_now(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65_536];
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        (n > 0).then(|| {
            buf.truncate(n as usize);
            buf
        })
    }

    /// The next frame within the socket's timeout, if any.
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65_536];
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n > 0).then(|| {
            buf.truncate(n as usize);
            buf
        })
    }
}

/// An ARP request from `sha`/[`ASKER`] for [`NETMUX`].
fn arp_request(sha: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&ASKER.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&NETMUX.octets());
    f
}

/// Whether `frame` is an ARP reply from [`NETMUX`] to [`ASKER`].
fn is_reply_to_asker(frame: &[u8]) -> bool {
    frame.len() >= 42
        && frame[12..14] == ETH_P_ARP.to_be_bytes()
        && frame[20..22] == [0, 2]
        && frame[28..32] == NETMUX.octets()
        && frame[38..42] == ASKER.octets()
}

#[test]
#[ignore]
fn root_one_arp_request_gets_one_reply_with_twelve_clients() {
    netns::require_root();
    let host = start("arp");
    let _clients: Vec<Proc> = (7101..=7112).map(|p| echo(&host, p)).collect();
    let kernel_mac = mac(&host.kernel, KERNEL_END);
    let replies = host.kernel.run(move || {
        let raw = RawSocket::open(KERNEL_END, ETH_P_ARP);
        let mut counts = Vec::new();
        for _ in 0..3 {
            raw.send(&arp_request(kernel_mac));
            let quiet_from = Instant::now() + Duration::from_millis(1500);
            let mut n = 0;
            while Instant::now() < quiet_from {
                if let Some(f) = raw.recv() {
                    n += usize::from(is_reply_to_asker(&f));
                }
            }
            counts.push(n);
        }
        counts
    });
    assert_eq!(
        replies,
        vec![1, 1, 1],
        "replies to each of three requests, with 12 clients sharing the address; netmux log:\n{}",
        host.up.log()
    );
}

/// Sends `size` bytes to the echo at `port` from the kernel until the same bytes come back.
fn echo_from_kernel(ns: &NetNs, port: u16, size: usize, to: Ipv4Addr, broadcast: bool) {
    ns.run(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        if broadcast {
            sock.set_broadcast(true).unwrap();
            let dev = KERNEL_END.as_bytes();
            netns::set_socket_option(&sock, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev)
                .unwrap_or_else(|e| panic!("SO_BINDTODEVICE: {e}"));
        }
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        let target = SocketAddr::from((to, port));
        let deadline = Instant::now() + PATIENCE;
        let mut buf = vec![0u8; 65_536];
        loop {
            sock.send_to(&payload, target).unwrap();
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(
                        from,
                        SocketAddr::from((NETMUX, port)),
                        "the echo answers from the host's address"
                    );
                    assert_eq!(n, size, "the echo returns the whole datagram");
                    assert!(buf[..n] == payload[..], "the echo returns the same bytes");
                    return;
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "no echo of {size} bytes to {target}: {e}"
                ),
            }
        }
    });
}

#[test]
#[ignore]
fn root_the_udp_echo_returns_datagrams_larger_than_the_mtu_both_ways() {
    netns::require_root();
    let host = start("frag");
    let port = 7200;
    let _echo = echo(&host, port);
    echo_from_kernel(&host.kernel, port, 64, NETMUX, false);
    for size in [1473, 8000, 30_000, 65_507] {
        echo_from_kernel(&host.kernel, port, size, NETMUX, false);
    }
}

/// Pings [`NETMUX`] from the kernel with `size` bytes of payload (a raw ICMP socket: the kernel
/// fragments the request) until the reply with the same payload comes back.
fn ping_from_kernel(ns: &NetNs, size: usize) {
    ns.run(move || {
        let sock = netns::raw_socket(
            libc::AF_INET,
            libc::IPPROTO_ICMP,
            Some(Duration::from_millis(500)),
        );
        let payload: Vec<u8> = (0..size).map(|i| (i * 13 + 1) as u8).collect();
        let id: u16 = 0x4e4d;
        let deadline = Instant::now() + PATIENCE;
        let mut buf = vec![0u8; 70_000];
        for seq in 1u16.. {
            let mut request = vec![8, 0, 0, 0];
            request.extend_from_slice(&id.to_be_bytes());
            request.extend_from_slice(&seq.to_be_bytes());
            request.extend_from_slice(&payload);
            let sum = netmux_wire::checksum::of(&request);
            request[2..4].copy_from_slice(&sum.to_be_bytes());
            let n = netns::raw_send_to(&sock, &request, NETMUX.into(), 0)
                .unwrap_or_else(|e| panic!("sending a ping of {size} bytes: {e}"));
            assert_eq!(n, request.len());
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until {
                let n = match netns::raw_recv(&sock, &mut buf) {
                    Ok(n) if n > 0 => n,
                    _ => break,
                };
                // The raw socket hands over the IP header too.
                let packet = &buf[..n];
                let icmp = &packet[usize::from(packet[0] & 0x0f) * 4..];
                if packet[12..16] == NETMUX.octets()
                    && icmp.len() >= 8
                    && icmp[0] == 0
                    && icmp[4..6] == id.to_be_bytes()
                    && icmp[6..8] == seq.to_be_bytes()
                {
                    assert!(
                        icmp[8..] == payload[..],
                        "the reply carries the request's payload"
                    );
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no echo reply to a ping of {size} bytes"
            );
        }
    });
}

#[test]
#[ignore]
fn root_pings_larger_than_the_mtu_are_answered() {
    netns::require_root();
    let host = start("ping");
    for size in [56, 1473, 8000, 65_000] {
        ping_from_kernel(&host.kernel, size);
    }
}

#[test]
#[ignore]
fn root_udp_to_the_subnet_and_the_limited_broadcast_reaches_the_bound_client() {
    netns::require_root();
    let host = start("bcast");
    let port = 7300;
    let _echo = echo(&host, port);
    echo_from_kernel(&host.kernel, port, 100, Ipv4Addr::new(192, 0, 2, 255), true);
    echo_from_kernel(&host.kernel, port, 100, Ipv4Addr::BROADCAST, true);
}

#[test]
#[ignore]
fn root_an_icmp_error_about_a_clients_flow_reaches_that_client_and_no_other() {
    netns::require_root();
    let host = start("icmp");
    let kernel_mac = mac(&host.kernel, KERNEL_END);
    // Two clients: the owner of the flow and a bystander.
    let mut owner = Client::connect(&host.run_dir()).expect("netd takes a client");
    let port = owner.bind_port(Transport::Udp, 7400).unwrap();
    let mac = owner.host().link.mac;
    let mut owner_queue = owner.open_queue().unwrap();
    let mut bystander = Client::connect(&host.run_dir()).expect("netd takes a client");
    bystander.bind_port(Transport::Udp, 7401).unwrap();
    let mut bystander_queue = bystander.open_queue().unwrap();

    // A datagram to a kernel port nobody listens on: the kernel answers port unreachable.
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac, kernel_mac)
        .ipv4(NETMUX.octets(), KERNEL.octets(), 64)
        .udp(port, 9)
        .write(&mut frame, b"is anyone there")
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut done = Vec::new();
    let error = 'found: loop {
        // Completions are collected: the driver takes a frame only when its outcome has room.
        done.clear();
        owner_queue.completions(usize::MAX, &mut done).unwrap();
        owner_queue.send(&[&[&frame]]).unwrap();
        let _ = owner_queue.wait_readable(Some(Duration::from_millis(300)));
        let mut got = Vec::new();
        owner_queue.recv_owned(64, &mut got).unwrap();
        for f in got {
            // IPv4, ICMP, destination unreachable, port unreachable.
            if f.len() > 42 && f[12..14] == [8, 0] && f[23] == 1 && f[34] == 3 && f[35] == 3 {
                break 'found f;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the port unreachable never reached the flow's owner; netmux log:\n{}",
            host.up.log()
        );
    };
    // It quotes the owner's datagram.
    assert_eq!(error[42 + 12..42 + 16], NETMUX.octets());
    assert_eq!(error[42 + 20..42 + 22], port.to_be_bytes());
    let mut stray = Vec::new();
    bystander_queue.recv_owned(64, &mut stray).unwrap();
    assert!(
        !stray.iter().any(|f| f.len() > 34 && f[23] == 1),
        "the bystander got no ICMP: {stray:02x?}"
    );
}

#[test]
#[ignore]
fn root_an_ipv6_ping_to_netds_link_local_address_is_answered_once() {
    netns::require_root();
    let host = start("ping6");
    let client = Client::connect(&host.run_dir()).expect("netd takes a client");
    let netd_ll = std::net::Ipv6Addr::from(
        client
            .host()
            .ipv6_link_local
            .expect("netd has a link-local address"),
    );
    // The kernel's own address on netmux's veth end: the modified EUI-64 of the shared MAC.
    let mac = mac(&host.mux, MUX_END);
    let mut kernel_ll = [0u8; 16];
    kernel_ll[..2].copy_from_slice(&[0xfe, 0x80]);
    kernel_ll[8..].copy_from_slice(&[
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]);
    let kernel_ll = std::net::Ipv6Addr::from(kernel_ll);
    assert_ne!(
        netd_ll, kernel_ll,
        "netd does not take the kernel's address"
    );
    assert_eq!(
        netns::ping6_replies(&host.kernel, KERNEL_END, netd_ll, PATIENCE),
        1,
        "netd answers, once"
    );
    assert_eq!(
        netns::ping6_replies(&host.kernel, KERNEL_END, kernel_ll, PATIENCE),
        1,
        "the kernel answers its own address, and netd does not"
    );
}

/// The next-hop MTU the test's "fragmentation needed" names.
const SMALL_MTU: u16 = 1000;
const HTTP_PORT: u16 = 8080;

/// An ICMP "fragmentation needed" naming [`SMALL_MTU`] about a full-sized TCP segment the HTTP
/// example sent from its port to the kernel's `port` (what a router with that MTU would send).
fn fragmentation_needed(port: u16) -> Vec<u8> {
    let mut quoted = vec![0x45, 0, 0x05, 0xdc, 0, 0, 0x40, 0, 64, 6, 0, 0];
    quoted.extend_from_slice(&NETMUX.octets());
    quoted.extend_from_slice(&KERNEL.octets());
    let sum = netmux_wire::checksum::of(&quoted);
    quoted[10..12].copy_from_slice(&sum.to_be_bytes());
    quoted.extend_from_slice(&HTTP_PORT.to_be_bytes());
    quoted.extend_from_slice(&port.to_be_bytes());
    quoted.extend_from_slice(&[0, 0, 0, 1]); // sequence number
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&SMALL_MTU.to_be_bytes());
    icmp.extend_from_slice(&quoted);
    let sum = netmux_wire::checksum::of(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    icmp
}

/// Sends `icmp` (an ICMP message to an IPv4 `to`, ICMPv6 to an IPv6 one) from a raw socket
/// of the calling thread's namespace; the kernel adds the IP header (and, for ICMPv6, fills
/// in the checksum).
fn send_icmp(to: IpAddr, icmp: &[u8]) {
    let sock = match to {
        IpAddr::V4(_) => netns::raw_socket(libc::AF_INET, libc::IPPROTO_ICMP, None),
        IpAddr::V6(_) => netns::raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6, None),
    };
    let n = netns::raw_send_to(&sock, icmp, to, 0)
        .unwrap_or_else(|e| panic!("sending ICMP to {to}: {e}"));
    assert_eq!(n, icmp.len(), "sending ICMP to {to}");
}

#[test]
#[ignore]
fn root_fragmentation_needed_about_a_download_makes_the_http_example_send_smaller_segments() {
    netns::require_root();
    let host = start("pmtu");
    let http = host.example("http", "tcp", HTTP_PORT, PATIENCE);
    // More than the kernel's receive buffer can take while the test does not read.
    const BODY: usize = 32 << 20;
    let (after, largest_after, body) = host.kernel.run(move || {
        let mut stream = netns::tcp_connect(SocketAddr::from((NETMUX, HTTP_PORT)), PATIENCE);
        let port = stream.local_addr().unwrap().port();
        write!(
            stream,
            "GET /bytes/{BODY} HTTP/1.1\r\nHost: {NETMUX}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        // Some of the download at full size first.
        while got < 256 * 1024 {
            let n = stream.read(&mut buf).expect("reading the download");
            assert!(n > 0, "the download ended early");
            got += n;
        }
        let sniffer = RawSocket::open(KERNEL_END, ETH_P_IP);
        send_icmp(NETMUX.into(), &fragmentation_needed(port));
        // Not reading for a moment closes the window: what was on its way (full-sized, sent
        // before the example took the error in) arrives meanwhile and is left out; everything
        // after is sent once the example has lowered its MTU.
        std::thread::sleep(Duration::from_millis(500));
        while sniffer.recv_now().is_some() {}
        let (mut after, mut largest_after) = (0usize, 0usize);
        loop {
            let n = stream.read(&mut buf).expect("reading the download");
            if n == 0 {
                break;
            }
            got += n;
            while let Some(f) = sniffer.recv_now() {
                let from_example = f.len() >= 38
                    && f[23] == 6
                    && f[26..30] == NETMUX.octets()
                    && f[34..36] == HTTP_PORT.to_be_bytes();
                if from_example {
                    after += 1;
                    largest_after =
                        largest_after.max(usize::from(u16::from_be_bytes([f[16], f[17]])));
                }
            }
        }
        (after, largest_after, got)
    });
    assert!(
        body > BODY,
        "the whole download arrived ({body} bytes with the head)"
    );
    assert!(after > 10, "segments seen after the error: {after}");
    assert!(
        largest_after <= usize::from(SMALL_MTU),
        "after the error the largest packet was {largest_after} bytes; the example's log:\n{}",
        http.log()
    );
    assert!(http.log().contains("lowering the MTU"), "{}", http.log());
}

const KERNEL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const NETMUX6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// An address on the link nobody has: the source of the flow a forged error quotes.
const STRANGER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9);
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ALL: u16 = 0x0003;

/// `netmux up --ip 192.0.2.2/24 --ip6 2001:db8::2/64 ARGS...` on a veth end, the kernel at the
/// other end with 192.0.2.1/24 and 2001:db8::1/64 (added `nodad`, an address flag, not a
/// setting, so it is usable at once).
fn start_dual(tag: &str, args: &[&str]) -> UpHost {
    let ip = format!("{NETMUX}/24");
    let ip6 = format!("{NETMUX6}/64");
    let kernel6 = format!("{KERNEL6}/64");
    let mut all = vec!["--ip", &ip, "--ip6", &ip6];
    all.extend_from_slice(args);
    UpHost::start(
        &netmux(),
        tag,
        (MUX_END, KERNEL_END),
        &format!("{KERNEL}/24"),
        &[&["addr", "add", &kernel6, "dev", KERNEL_END, "nodad"]],
        &all,
        PATIENCE,
    )
}

/// An ICMPv6 "port unreachable" about a UDP datagram from `from`:`port` to [`KERNEL6`] port 9
/// (what the kernel sends about the owner's datagram, but naming whatever flow the test likes).
fn port_unreachable6(from: Ipv6Addr, port: u16) -> Vec<u8> {
    let mut quoted = vec![0x60, 0, 0, 0, 0, 8 + 4, 17, 64];
    quoted.extend_from_slice(&from.octets());
    quoted.extend_from_slice(&KERNEL6.octets());
    quoted.extend_from_slice(&port.to_be_bytes());
    quoted.extend_from_slice(&9u16.to_be_bytes());
    quoted.extend_from_slice(&[0, 12, 0, 0]);
    quoted.extend_from_slice(b"fake");
    // Type 1 code 4; the kernel fills in the checksum of what a raw ICMPv6 socket sends.
    let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted);
    icmp
}

/// Whether `f` is an ICMPv6 error (types 1 to 4) right after the IPv6 header; if so, the
/// source address and source port of the packet it quotes.
fn icmpv6_error_quote(f: &[u8]) -> Option<([u8; 16], u16)> {
    let is_error = f.len() >= 14 + 40 + 8 + 40 + 2
        && f[12..14] == ETH_P_IPV6.to_be_bytes()
        && f[20] == 58
        && (1..=4).contains(&f[54]);
    is_error.then(|| {
        let q = 14 + 40 + 8;
        let mut source = [0u8; 16];
        source.copy_from_slice(&f[q + 8..q + 24]);
        (source, u16::from_be_bytes([f[q + 40], f[q + 41]]))
    })
}

#[test]
#[ignore]
fn root_an_icmpv6_error_about_a_clients_flow_reaches_that_client_and_no_other() {
    netns::require_root();
    let host = start_dual("icmp6", &[]);
    let kernel_mac = mac(&host.kernel, KERNEL_END);
    // Two clients: the owner of the flow and a bystander.
    let mut owner = Client::connect(&host.run_dir()).expect("netd takes a client");
    let port = owner.bind_port(Transport::Udp, 7410).unwrap();
    let mac = owner.host().link.mac;
    let mut owner_queue = owner.open_queue().unwrap();
    let mut bystander = Client::connect(&host.run_dir()).expect("netd takes a client");
    let bystander_port = bystander.bind_port(Transport::Udp, 7411).unwrap();
    let mut bystander_queue = bystander.open_queue().unwrap();

    // First, errors that quote someone else's flow: another host's address with the owner's
    // port and with the bystander's, the host's address with a port nobody holds.
    host.kernel.run(move || {
        send_icmp(NETMUX6.into(), &port_unreachable6(STRANGER6, port));
        send_icmp(NETMUX6.into(), &port_unreachable6(NETMUX6, 7412));
        // Neighbour discovery for the host's address comes first; give it a moment, so these
        // are on the wire before the owner's own error below.
        std::thread::sleep(Duration::from_secs(1));
        send_icmp(
            NETMUX6.into(),
            &port_unreachable6(STRANGER6, bystander_port),
        );
    });

    // A datagram to a kernel port nobody listens on: the kernel answers port unreachable.
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac, kernel_mac)
        .ipv6(NETMUX6.octets(), KERNEL6.octets(), 64)
        .udp(port, 9)
        .write(&mut frame, b"is anyone there")
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut done = Vec::new();
    let mut owner_got: Vec<Vec<u8>> = Vec::new();
    let error = 'found: loop {
        // Completions are collected: the driver takes a frame only when its outcome has room.
        done.clear();
        owner_queue.completions(usize::MAX, &mut done).unwrap();
        owner_queue.send(&[&[&frame]]).unwrap();
        let _ = owner_queue.wait_readable(Some(Duration::from_millis(300)));
        let mut got = Vec::new();
        owner_queue.recv_owned(64, &mut got).unwrap();
        for f in got {
            // ICMPv6 destination unreachable, port unreachable, about the owner's datagram.
            if icmpv6_error_quote(&f) == Some((NETMUX6.octets(), port)) && f[55] == 4 {
                break 'found f;
            }
            owner_got.push(f);
        }
        assert!(
            Instant::now() < deadline,
            "the port unreachable never reached the flow's owner; netmux log:\n{}",
            host.up.log()
        );
    };
    assert_eq!(error[22..38], KERNEL6.octets(), "from the kernel");
    let forged: Vec<_> = owner_got
        .iter()
        .filter_map(|f| icmpv6_error_quote(f))
        .collect();
    assert!(
        forged.is_empty(),
        "the owner got errors about flows not its own: {forged:02x?}"
    );
    let mut stray = Vec::new();
    bystander_queue.recv_owned(64, &mut stray).unwrap();
    let stray: Vec<_> = stray.iter().filter_map(|f| icmpv6_error_quote(f)).collect();
    assert!(
        stray.is_empty(),
        "the bystander got no ICMPv6 error: {stray:02x?}"
    );
}

/// The router's MTU towards the peer in the path-MTU tests: IPv6's minimum link MTU.
const ROUTER_MTU: usize = 1280;
/// The router's end and the peer's end of the narrow link.
const ROUTER_END: &str = "nmx2";
const PEER_END: &str = "nmx3";
const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// The body the peer downloads through the router.
const ROUTED_BODY: usize = 4 << 20;
/// The HTTP example's socket buffer (`http::SOCKET_BUFFER`): at most this much can be on its
/// way in full-sized segments before the example takes the router's first error in.
const EXAMPLE_SOCKET_BUFFER: usize = 512 << 10;

/// netmux, a Linux router and a peer behind it: `netmux up` on veth A (MTU 1500) with the
/// router at the other end (the kernel of [`UpHost`]'s second namespace: 192.0.2.1/24,
/// 2001:db8::1/64, netmux's `--gateway` and `--gateway6`); veth B of MTU [`ROUTER_MTU`] from
/// the router (198.51.100.1/24, 2001:db8:1::1/64) to the peer's namespace (198.51.100.2/24,
/// 2001:db8:1::2/64, the router its default). Forwarding is turned on in the router's
/// namespace only (a namespace the test made; nothing outside it is changed). The peer's
/// default routes carry `advmss` for a 1500-byte path (a route attribute): the peer stands for
/// a host on a full-sized link beyond the narrow one, so it asks for full-sized segments and
/// only the router's "fragmentation needed" / "packet too big" can make them smaller.
struct Routed {
    host: UpHost,
    peer: NetNs,
}

impl Routed {
    fn start(tag: &str) -> Routed {
        let gateway = KERNEL.to_string();
        let gateway6 = KERNEL6.to_string();
        let host = start_dual(tag, &["--gateway", &gateway, "--gateway6", &gateway6]);
        let peer = NetNs::new(&format!("{tag}p"));
        netns::veth(&host.kernel, ROUTER_END, &peer, PEER_END);
        let mtu = ROUTER_MTU.to_string();
        for (ns, end, v4, v6) in [
            (
                &host.kernel,
                ROUTER_END,
                "198.51.100.1/24",
                "2001:db8:1::1/64",
            ),
            (
                &peer,
                PEER_END,
                &format!("{PEER}/24"),
                &format!("{PEER6}/64"),
            ),
        ] {
            ns.ip(&["link", "set", end, "mtu", &mtu]);
            ns.ip(&["addr", "add", v4, "dev", end]);
            ns.ip(&["addr", "add", v6, "dev", end, "nodad"]);
            ns.ip(&["link", "set", end, "up"]);
        }
        peer.ip(&[
            "route",
            "add",
            "default",
            "via",
            "198.51.100.1",
            "advmss",
            "1460",
        ]);
        peer.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:1::1",
            "advmss",
            "1440",
        ]);
        // Forwarding on, in the router's namespace only: a process inside it writes its own
        // namespace's /proc/sys/net (no procps needed).
        let out = host
            .kernel
            .command("sh")
            .args([
                "-c",
                "echo 1 > /proc/sys/net/ipv4/ip_forward && \
                 echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
            ])
            .output()
            .expect("running sh in the router's namespace");
        assert!(
            out.status.success(),
            "forwarding in the router's namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Routed { host, peer }
    }
}

/// What the router's end of veth A saw: the example's TCP segments (IP length, in order) and
/// the router's path-MTU errors to netmux (the MTU each named).
#[derive(Debug, Default)]
struct PathSeen {
    segments: Vec<usize>,
    errors: Vec<u32>,
    /// The number of segments seen before the first error.
    first_error_at: Option<usize>,
}

/// Reads frames of `ethertype` on [`KERNEL_END`] in the calling thread's namespace until
/// `stop`, noting the example's segments and the router's errors.
fn watch_path(ethertype: u16, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> PathSeen {
    // All protocols: only those sockets see what the router sends too (its errors).
    let raw = RawSocket::open(KERNEL_END, ETH_P_ALL);
    // Room for a burst while this thread is not scheduled (a socket option; root may go past
    // the system's default limit with SO_RCVBUFFORCE).
    let size: libc::c_int = 64 << 20;
    let _ = netns::set_socket_option(&raw.fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size);
    let mut seen = PathSeen::default();
    let mut note = |f: &[u8]| {
        let is = |t: u16| f.len() >= 62 && ethertype == t && f[12..14] == t.to_be_bytes();
        let v4 = is(ETH_P_IP) && f[14] == 0x45;
        let v6 = is(ETH_P_IPV6);
        if v4 && f[23] == 6 && f[26..30] == NETMUX.octets() && f[34..36] == HTTP_PORT.to_be_bytes()
        {
            seen.segments
                .push(usize::from(u16::from_be_bytes([f[16], f[17]])));
        } else if v4 && f[23] == 1 && f[30..34] == NETMUX.octets() && f[34] == 3 && f[35] == 4 {
            seen.errors
                .push(u32::from(u16::from_be_bytes([f[40], f[41]])));
        } else if v6
            && f[20] == 6
            && f[22..38] == NETMUX6.octets()
            && f[54..56] == HTTP_PORT.to_be_bytes()
        {
            seen.segments
                .push(40 + usize::from(u16::from_be_bytes([f[18], f[19]])));
        } else if v6 && f[20] == 58 && f[38..54] == NETMUX6.octets() && f[54] == 2 {
            seen.errors
                .push(u32::from_be_bytes([f[58], f[59], f[60], f[61]]));
        } else {
            return;
        }
        if !seen.errors.is_empty() && seen.first_error_at.is_none() {
            seen.first_error_at = Some(seen.segments.len());
        }
    };
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(f) = raw.recv() {
            note(&f);
        }
    }
    while let Some(f) = raw.recv_now() {
        note(&f);
    }
    seen
}

/// Downloads [`ROUTED_BODY`] bytes from the HTTP example at `target` in the calling thread's
/// namespace and checks every byte; the whole response's length, or what went wrong.
fn download(target: SocketAddr) -> Result<usize, String> {
    let deadline = Instant::now() + PATIENCE;
    let mut stream = loop {
        match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(format!("connecting to {target}: {e}"))
            }
            Err(_) => {}
        }
    };
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET /bytes/{ROUTED_BODY} HTTP/1.1\r\nHost: netmux\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("asking {target}: {e}"))?;
    let mut response = Vec::with_capacity(ROUTED_BODY + 1024);
    if let Err(e) = stream.read_to_end(&mut response) {
        return Err(format!(
            "reading the download from {target} after {} bytes: {e}",
            response.len()
        ));
    }
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no response head")?
        + 4;
    let body = &response[head_end..];
    if body.len() != ROUTED_BODY {
        return Err(format!("{} bytes of body from {target}", body.len()));
    }
    for (i, &b) in body.iter().enumerate() {
        let want = netmux_testkit::http_pattern_byte(i as u64);
        if b != want {
            return Err(format!(
                "byte {i} of the body from {target} is {b}, not {want}"
            ));
        }
    }
    Ok(response.len())
}

/// Sets its flag when dropped: the watcher stops even when the test fails.
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The peer behind the router downloads from the HTTP example at `target` while the router's
/// end of veth A is watched for frames of `ethertype`; checks that the router told netmux
/// the path's MTU, the example lowered its own, and the download went in segments that fit.
fn path_mtu_through_the_router(tag: &str, target: SocketAddr, ethertype: u16) {
    netns::require_root();
    let routed = Routed::start(tag);
    let host = &routed.host;
    let http = host.example("http", "tcp", HTTP_PORT, PATIENCE);

    let stop = StopOnDrop(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
        false,
    )));
    let watcher = {
        let stop = stop.0.clone();
        host.kernel.spawn(move || watch_path(ethertype, stop))
    };
    // The watcher's socket is open before the download starts.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let got = routed.peer.run(move || download(target));
    let took = started.elapsed();
    drop(stop);
    let seen = watcher.join().expect("the watcher");

    let last_big = seen.segments.iter().rposition(|&n| n > ROUTER_MTU);
    let small_from = last_big.map_or(0, |i| i + 1);
    let big = seen.segments.iter().filter(|&&n| n > ROUTER_MTU).count();
    let bytes_small: usize = seen.segments[small_from..].iter().sum();
    eprintln!(
        "{tag}: {} segments in {took:?}, {} errors (the first after segment {:?}), {big} \
         larger than {ROUTER_MTU} (the last at {last_big:?}), {bytes_small} bytes after it",
        seen.segments.len(),
        seen.errors.len(),
        seen.first_error_at,
    );
    let log = http.log();
    let got = got.unwrap_or_else(|e| panic!("{e}; the example's log:\n{log}"));
    assert!(got > ROUTED_BODY, "the whole download ({got} bytes)");
    assert!(
        !seen.errors.is_empty() && seen.errors.iter().all(|&m| m == ROUTER_MTU as u32),
        "the router named its MTU to netmux: {:?}; the example's log:\n{log}",
        seen.errors
    );
    assert!(
        log.contains("lowering the MTU") && log.contains(&format!("to={ROUTER_MTU}")),
        "the example lowered its MTU to the router's; its log:\n{log}"
    );
    // Before the example takes the first error in, it can have sent no more than its socket
    // buffer holds in full-sized segments; everything after goes in small ones.
    assert!(
        big <= EXAMPLE_SOCKET_BUFFER / 1000,
        "{big} segments larger than {ROUTER_MTU} bytes: the example went on sending them"
    );
    assert!(
        bytes_small >= ROUTED_BODY * 3 / 4,
        "only {bytes_small} bytes went after the last segment larger than {ROUTER_MTU}"
    );
    // The full-sized segments after the first error are the ones already on their way.
    let first = seen.first_error_at.unwrap_or(0);
    assert!(
        small_from.saturating_sub(first) <= EXAMPLE_SOCKET_BUFFER / 1000,
        "full-sized segments went on {} segments after the first error",
        small_from.saturating_sub(first)
    );
}

#[test]
#[ignore]
fn root_path_mtu_discovery_through_a_kernel_router_of_smaller_mtu_over_ipv4() {
    path_mtu_through_the_router("pmtu4", SocketAddr::from((NETMUX, HTTP_PORT)), ETH_P_IP);
}

#[test]
#[ignore]
fn root_path_mtu_discovery_through_a_kernel_router_of_smaller_mtu_over_ipv6() {
    path_mtu_through_the_router("pmtu6", SocketAddr::from((NETMUX6, HTTP_PORT)), ETH_P_IPV6);
}

/// From the kernel, sends to `group` port `port` out of its veth end (`IP_MULTICAST_IF` /
/// `IPV6_MULTICAST_IF`) until the echo answers from `from` with the same bytes.
fn multicast_echo_from_kernel(ns: &NetNs, group: IpAddr, port: u16, from: IpAddr) {
    ns.run(move || {
        let sock = match group {
            IpAddr::V4(_) => UdpSocket::bind("0.0.0.0:0").unwrap(),
            IpAddr::V6(_) => UdpSocket::bind("[::]:0").unwrap(),
        };
        let set = match group {
            IpAddr::V4(_) => {
                let via = libc::in_addr {
                    s_addr: u32::from(KERNEL).to_be(),
                };
                netns::set_socket_option(&sock, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &via)
            }
            IpAddr::V6(_) => {
                let index = netns::ifindex(KERNEL_END) as libc::c_int;
                assert_ne!(index, 0, "{KERNEL_END} has an index");
                netns::set_socket_option(&sock, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &index)
            }
        };
        set.unwrap_or_else(|e| panic!("multicast interface: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let payload: Vec<u8> = (0..200).map(|i| (i * 7 + 3) as u8).collect();
        let deadline = Instant::now() + PATIENCE;
        let mut buf = vec![0u8; 2048];
        loop {
            sock.send_to(&payload, SocketAddr::new(group, port))
                .unwrap();
            match sock.recv_from(&mut buf) {
                Ok((n, sender)) => {
                    assert_eq!(
                        sender,
                        SocketAddr::new(from, port),
                        "from the host's address"
                    );
                    assert!(buf[..n] == payload[..], "the echo returns the same bytes");
                    return;
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "no echo of a datagram to {group} port {port}: {e}"
                ),
            }
        }
    });
}

/// The multicast MACs `ifname` in `ns` accepts (`/proc/net/dev_mcast`, as hex without
/// separators).
fn link_groups(ns: &NetNs, ifname: &str) -> Vec<String> {
    let out = ns
        .command("cat")
        .arg("/proc/net/dev_mcast")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&ifname)).then(|| f.get(4).unwrap_or(&"").to_string())
        })
        .collect()
}

#[test]
#[ignore]
fn root_udp_to_a_joined_multicast_group_reaches_the_client_that_joined_it() {
    netns::require_root();
    let host = start_dual("mcast", &[]);
    let port = 7400;
    let mut echo = host.example_with(
        "udp-echo",
        "udp",
        port,
        &["--group", "239.1.2.3", "--group", "ff15::1234"],
        PATIENCE,
    );
    let groups = link_groups(&host.mux, MUX_END);
    for mac in ["01005e010203", "333300001234"] {
        assert!(
            groups.iter().any(|g| g == mac),
            "{MUX_END} accepts {mac}: {groups:?}"
        );
    }
    multicast_echo_from_kernel(
        &host.kernel,
        "239.1.2.3".parse().unwrap(),
        port,
        NETMUX.into(),
    );
    multicast_echo_from_kernel(
        &host.kernel,
        "ff15::1234".parse().unwrap(),
        port,
        NETMUX6.into(),
    );
    // Nobody joined any more: the link stops accepting the groups.
    echo.kill9();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let groups = link_groups(&host.mux, MUX_END);
        if !groups
            .iter()
            .any(|g| g == "01005e010203" || g == "333300001234")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{MUX_END} still accepts {groups:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
