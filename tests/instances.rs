//! Instances end to end, without privileges: the real driver on a virtual cable, netd, clients
//! through the client library, and the test as the peer host at the far end of the cable.
//!
//! Proves: two instances bind the same UDP port and each client gets only its own traffic; a
//! client cannot transmit with the other instance's MAC or address; ARP for one instance's
//! address is answered with that instance's MAC; traffic between two instances on the host
//! works both ways (hairpin); destroying an instance with live clients ends their sessions,
//! frees their ports and leaves the other instance's traffic alone; many instances with many
//! clients come and go without a leak; a datagram to a multicast group reaches only the
//! clients that joined it on that port, and a client reports only the groups it joined.

use std::path::Path;
use std::time::{Duration, Instant};

mod cabled_common;
use cabled_common::{received, Host, LINK_MAC, PEER_IP, PEER_MAC};

use netmux_client::blocking::Client;
use netmux_client::{ClientError, InstanceSpec, MacChoice, Transport};
use netmux_netd::config::Config;
use netmux_proto::ErrorCode;
use netmux_ring::TxStatus;
use netmux_testkit::frames::{FrameBuilder, Ipv4};
use netmux_testkit::TempDir;

const DEFAULT_IP: [u8; 4] = [192, 0, 2, 1];
const A_IP: [u8; 4] = [192, 0, 2, 10];
const B_IP: [u8; 4] = [192, 0, 2, 20];
const WAIT: Duration = Duration::from_secs(5);

impl Host {
    fn start(tweak: impl FnOnce(&mut Config)) -> Host {
        Host::start_in("netmux-instances", DEFAULT_IP, tweak)
    }

    fn client(&self, instance: Option<&str>) -> Client {
        Client::connect_to(&self.runtime_dir(), instance).expect("netd accepts the client")
    }

    fn admin(&self) -> Client {
        self.client(None)
    }

    fn create(&self, name: &str, mac: MacChoice, ip: [u8; 4]) {
        self.admin()
            .create_instance(spec(name, mac, ip))
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    }
}

fn spec(name: &str, mac: MacChoice, ip: [u8; 4]) -> InstanceSpec {
    InstanceSpec::temporary(name, mac, (ip, 24))
}

fn udp(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], port: u16) -> Vec<u8> {
    FrameBuilder::ethernet(dst_mac, src_mac)
        .ethertype(0x0800)
        .ipv4(Ipv4::new(src, dst, 17))
        .udp(4000, port)
        .payload(8)
        .finish()
        .data
}

/// The UDP frames among `frames` to `port`.
fn udp_to(frames: &[Vec<u8>], port: u16) -> usize {
    frames
        .iter()
        .filter(|f| {
            f.len() >= 38 && f[12..14] == [8, 0] && f[23] == 17 && f[36..38] == port.to_be_bytes()
        })
        .count()
}

#[test]
fn two_instances_bind_the_same_port_and_each_client_gets_only_its_own_traffic() {
    let host = Host::start(|_| {});
    host.create("a", MacChoice::Generated, A_IP);
    host.create("b", MacChoice::Shared, B_IP);
    let list = host.admin().list_instances().unwrap();
    let mac_a = list.iter().find(|i| i.name == "a").unwrap().mac;
    assert_ne!(mac_a, LINK_MAC);
    assert_eq!(list.iter().find(|i| i.name == "b").unwrap().mac, LINK_MAC);

    let mut ca = host.client(Some("a"));
    let mut cb = host.client(Some("b"));
    let mut cd = host.client(None);
    assert_eq!(
        ca.host().link.mac,
        mac_a,
        "a client learns its instance's MAC"
    );
    for c in [&mut ca, &mut cb, &mut cd] {
        c.bind_port(Transport::Udp, 7000)
            .expect("the same port in every instance");
    }
    let (mut qa, mut qb, mut qd) = (
        ca.open_queue().unwrap(),
        cb.open_queue().unwrap(),
        cd.open_queue().unwrap(),
    );
    host.send(&udp(PEER_MAC, mac_a, PEER_IP, A_IP, 7000));
    host.send(&udp(PEER_MAC, LINK_MAC, PEER_IP, B_IP, 7000));
    host.send(&udp(PEER_MAC, LINK_MAC, PEER_IP, B_IP, 7000));
    host.send(&udp(PEER_MAC, LINK_MAC, PEER_IP, DEFAULT_IP, 7000));
    let settle = Duration::from_millis(200);
    assert_eq!(udp_to(&received(&mut qa, settle), 7000), 1);
    assert_eq!(udp_to(&received(&mut qb, settle), 7000), 2);
    assert_eq!(udp_to(&received(&mut qd, settle), 7000), 1);

    // A's client cannot send with B's address, nor with the link's MAC.
    let forged_ip = udp(mac_a, PEER_MAC, B_IP, PEER_IP, 7000);
    let mut forged_ip = forged_ip;
    forged_ip[34..36].copy_from_slice(&7000u16.to_be_bytes());
    let mut forged_mac = udp(LINK_MAC, PEER_MAC, A_IP, PEER_IP, 7000);
    forged_mac[34..36].copy_from_slice(&7000u16.to_be_bytes());
    qa.send(&[&[&forged_ip], &[&forged_mac]]).unwrap();
    let mut done = Vec::new();
    let end = Instant::now() + WAIT;
    while done.len() < 2 && Instant::now() < end {
        qa.completions(8, &mut done).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let statuses: Vec<TxStatus> = done.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [
            TxStatus::RejectedSourceIp,
            TxStatus::RejectedSpoofedSourceMac
        ]
    );
    assert_eq!(udp_to(&host.heard(Duration::from_millis(100)), 7000), 0);
}

#[test]
fn arp_for_an_instance_is_answered_with_its_mac_and_reaches_only_its_clients() {
    let host = Host::start(|_| {});
    host.create("a", MacChoice::Generated, A_IP);
    let mac_a = host.admin().list_instances().unwrap()[0].mac;
    let mut ca = host.client(Some("a"));
    ca.bind_port(Transport::Udp, 7000).unwrap();
    let mut qa = ca.open_queue().unwrap();
    let mut cd = host.client(None);
    cd.bind_port(Transport::Udp, 7000).unwrap();
    let mut qd = cd.open_queue().unwrap();
    let request = FrameBuilder::ethernet([0xff; 6], PEER_MAC)
        .ethertype(0x0806)
        .arp(1, PEER_MAC, PEER_IP, [0; 6], A_IP)
        .finish()
        .data;
    host.send(&request);
    let replies: Vec<Vec<u8>> = host
        .heard(Duration::from_millis(300))
        .into_iter()
        .filter(|f| f[12..14] == [8, 6] && f[20..22] == [0, 2])
        .collect();
    assert_eq!(replies.len(), 1, "one answer, from netd as instance a");
    assert_eq!(replies[0][22..28], mac_a, "with a's MAC");
    assert_eq!(replies[0][28..32], A_IP);
    let arp = |frames: Vec<Vec<u8>>| frames.iter().filter(|f| f[12..14] == [8, 6]).count();
    assert_eq!(arp(received(&mut qa, Duration::from_millis(100))), 1);
    assert_eq!(arp(received(&mut qd, Duration::from_millis(100))), 0);
}

#[test]
fn instances_on_one_host_reach_each_other_both_ways() {
    let host = Host::start(|_| {});
    host.create("a", MacChoice::Generated, A_IP);
    host.create("b", MacChoice::Shared, B_IP);
    let list = host.admin().list_instances().unwrap();
    let mac_a = list.iter().find(|i| i.name == "a").unwrap().mac;
    let mut ca = host.client(Some("a"));
    let mut cb = host.client(Some("b"));
    ca.bind_port(Transport::Udp, 5000).unwrap();
    cb.bind_port(Transport::Udp, 6000).unwrap();
    let (mut qa, mut qb) = (ca.open_queue().unwrap(), cb.open_queue().unwrap());
    let mut a_to_b = udp(mac_a, LINK_MAC, A_IP, B_IP, 6000);
    a_to_b[34..36].copy_from_slice(&5000u16.to_be_bytes());
    let mut b_to_a = udp(LINK_MAC, mac_a, B_IP, A_IP, 5000);
    b_to_a[34..36].copy_from_slice(&6000u16.to_be_bytes());
    qa.send(&[&[&a_to_b]]).unwrap();
    assert_eq!(
        udp_to(&received(&mut qb, Duration::from_millis(300)), 6000),
        1
    );
    qb.send(&[&[&b_to_a]]).unwrap();
    assert_eq!(
        udp_to(&received(&mut qa, Duration::from_millis(300)), 5000),
        1
    );
    assert!(
        host.heard(Duration::from_millis(100)).is_empty(),
        "nothing between the two went on the cable"
    );
    let counters = host.admin().list_instances().unwrap();
    let hairpin: u64 = counters
        .iter()
        .filter_map(|i| i.counters.as_ref().map(|c| c.hairpin))
        .sum();
    assert_eq!(hairpin, 2);
}

#[test]
fn destroying_an_instance_ends_its_sessions_frees_its_ports_and_spares_the_others() {
    let host = Host::start(|_| {});
    host.create("a", MacChoice::Generated, A_IP);
    host.create("b", MacChoice::Shared, B_IP);
    let mut ca = host.client(Some("a"));
    ca.bind_port(Transport::Udp, 7000).unwrap();
    let qa = ca.open_queue().unwrap();
    let mut cb = host.client(Some("b"));
    cb.bind_port(Transport::Udp, 7000).unwrap();
    let mut qb = cb.open_queue().unwrap();

    host.admin().destroy_instance("a").expect("destroyed");
    assert!(qa.is_closed(), "a's client sees its queue end");
    assert!(
        matches!(ca.stats(), Err(ClientError::Channel(_))),
        "and its session"
    );
    let names: Vec<String> = host
        .admin()
        .list_instances()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["b", "default"]);
    // b is untouched.
    host.send(&udp(PEER_MAC, LINK_MAC, PEER_IP, B_IP, 7000));
    assert_eq!(
        udp_to(&received(&mut qb, Duration::from_millis(200)), 7000),
        1
    );
    // a's name and address can be used again, and its port with them.
    host.create("a", MacChoice::Generated, A_IP);
    let mut again = host.client(Some("a"));
    again
        .bind_port(Transport::Udp, 7000)
        .expect("the port is free again");
    // Joining an instance that does not exist is refused with netd's reason.
    let e = Client::connect_to(&host.runtime_dir(), Some("nope")).unwrap_err();
    assert_eq!(
        e.refusal().map(|r| r.code),
        Some(ErrorCode::NotFound),
        "{e}"
    );
}

#[test]
fn a_hundred_instances_with_ten_clients_each_come_and_go_without_a_leak() {
    let host = Host::start(|c| {
        c.policy.limits.sessions_per_uid = 100_000;
        c.policy.limits.ring_bytes_per_uid = u64::MAX;
    });
    let fds = || std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let before = fds();
    for round in 0..2 {
        let mut clients = Vec::new();
        for i in 0..100u8 {
            let name = format!("t{i}");
            host.create(&name, MacChoice::Generated, [10, 1, round, i + 1]);
            for c in 0..10u16 {
                let mut client = host.client(Some(&name));
                client.bind_port(Transport::Udp, 1000 + c).unwrap();
                let q = client.open_queue().unwrap();
                clients.push((client, q));
            }
        }
        assert_eq!(host.admin().list_instances().unwrap().len(), 101);
        drop(clients);
        for i in 0..100u8 {
            host.admin().destroy_instance(&format!("t{i}")).unwrap();
        }
        assert_eq!(host.admin().list_instances().unwrap().len(), 1);
    }
    // Every descriptor this process held for the sessions and queues is closed again (netd
    // and the driver run in this process too: their descriptors count).
    let end = Instant::now() + WAIT;
    while fds() > before + 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        fds() <= before + 2,
        "descriptors: {} before, {} after",
        before,
        fds()
    );
    let _ = Path::new("");
}

#[test]
fn non_temporary_instances_are_kept_in_the_configuration_file_and_restored() {
    let keep = TempDir::new("netmux-instances-config");
    let file = keep.join("netd.toml");
    {
        let f = file.clone();
        let host = Host::start(|c| c.instances_file = Some(f));
        let mut kept = spec("kept", MacChoice::Given([2, 0, 0, 0, 0, 0x42]), A_IP);
        kept.temporary = false;
        kept.gateway = Some([192, 0, 2, 1]);
        host.admin().create_instance(kept).unwrap();
        host.create("gone", MacChoice::Shared, B_IP);
        host.admin()
            .set_instance_property("kept", "ephemeral-ports", "40000-40010")
            .unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("name = \"kept\""), "{text}");
        assert!(text.contains("40000-40010"), "{text}");
        assert!(
            !text.contains("gone"),
            "temporary instances are not kept: {text}"
        );
    }
    let f = file.clone();
    let host = Host::start(|c| c.instances_file = Some(f));
    let list = host.admin().list_instances().unwrap();
    let kept = list.iter().find(|i| i.name == "kept").expect("restored");
    assert_eq!(kept.mac, [2, 0, 0, 0, 0, 0x42]);
    assert_eq!(kept.ephemeral, (40000, 40010));
    assert!(list.iter().all(|i| i.name != "gone"));
    let mut c = host.client(Some("kept"));
    let port = c.get_port(Transport::Udp).unwrap();
    assert!((40000..=40010).contains(&port), "{port}");
    // A bad file is refused at start with the file named.
    std::fs::write(
        &file,
        "[[instance]]\nname = \"x\"\nip = \"not an address\"\n",
    )
    .unwrap();
    let f = file.clone();
    let bad = std::panic::catch_unwind(|| Host::start(|c| c.instances_file = Some(f)));
    assert!(bad.is_err());
}

#[test]
fn only_root_or_an_admin_uid_manages_instances_and_names_are_checked() {
    let host = Host::start(|_| {});
    // This test runs as whatever uid it runs as; names and addresses are checked for everyone.
    let mut admin = host.admin();
    let e = admin
        .create_instance(spec("bad name", MacChoice::Generated, A_IP))
        .unwrap_err();
    assert!(e.to_string().contains("instance name"), "{e}");
    let e = admin
        .create_instance(spec("x", MacChoice::Generated, [192, 0, 2, 255]))
        .unwrap_err();
    assert!(e.to_string().contains("broadcast"), "{e}");
    let e = admin
        .create_instance(spec("dup", MacChoice::Generated, DEFAULT_IP))
        .unwrap_err();
    assert!(e.to_string().contains("another instance"), "{e}");
    let e = admin.destroy_instance("default").unwrap_err();
    assert_eq!(e.refusal().map(|r| r.code), Some(ErrorCode::Denied), "{e}");
    if rustix::process::getuid().as_raw() != 0 {
        let e = admin
            .create_instance(spec("a", MacChoice::Generated, A_IP))
            .unwrap_err();
        assert_eq!(e.refusal().map(|r| r.code), Some(ErrorCode::Denied), "{e}");
    }
}

/// A UDP datagram from the peer to an IPv6 group on `port`.
fn udp6_to_group(group: std::net::Ipv6Addr, port: u16) -> Vec<u8> {
    let o = group.octets();
    let mac = [0x33, 0x33, o[12], o[13], o[14], o[15]];
    let src: std::net::Ipv6Addr = "2001:db8::99".parse().unwrap();
    FrameBuilder::ethernet(mac, PEER_MAC)
        .ethertype(0x86dd)
        .ipv6(src.octets(), o, 17)
        .udp(4000, port)
        .payload(8)
        .finish()
        .data
}

/// The IPv6 UDP frames among `frames` to `port`.
fn udp6_to(frames: &[Vec<u8>], port: u16) -> usize {
    frames
        .iter()
        .filter(|f| {
            f.len() >= 58
                && f[12..14] == [0x86, 0xdd]
                && f[20] == 17
                && f[56..58] == port.to_be_bytes()
        })
        .count()
}

#[test]
fn a_datagram_to_a_group_reaches_only_the_clients_that_joined_it_on_that_port() {
    let host = Host::start(|_| {});
    host.create("a", MacChoice::Generated, A_IP);
    host.create("b", MacChoice::Shared, B_IP);
    let mut ca = host.client(Some("a"));
    let mut cb = host.client(Some("b"));
    let mut cd = host.client(None);
    for c in [&mut ca, &mut cb, &mut cd] {
        c.bind_port(Transport::Udp, 7000).unwrap();
    }
    let (mut qa, mut qb, mut qd) = (
        ca.open_queue().unwrap(),
        cb.open_queue().unwrap(),
        cd.open_queue().unwrap(),
    );
    let group: std::net::IpAddr = "239.1.2.3".parse().unwrap();
    let group6: std::net::Ipv6Addr = "ff15::1234".parse().unwrap();
    ca.join_group(group, 7000).unwrap();
    ca.join_group(group, 7000)
        .expect("joining a joined group changes nothing");
    cd.join_group(group6.into(), 7000).unwrap();
    let to_group = udp(
        PEER_MAC,
        [1, 0, 0x5e, 1, 2, 3],
        PEER_IP,
        [239, 1, 2, 3],
        7000,
    );
    let settle = Duration::from_millis(200);
    host.send(&to_group);
    host.send(&udp6_to_group(group6, 7000));
    assert_eq!(udp_to(&received(&mut qa, settle), 7000), 1, "a joined");
    assert_eq!(udp_to(&received(&mut qb, settle), 7000), 0, "b did not");
    let d = received(&mut qd, settle);
    assert_eq!(
        (udp_to(&d, 7000), udp6_to(&d, 7000)),
        (0, 1),
        "d joined the IPv6 group only"
    );
    // Another port, or another group of the same MAC, is not the joined group.
    host.send(&udp(
        PEER_MAC,
        [1, 0, 0x5e, 1, 2, 3],
        PEER_IP,
        [239, 1, 2, 3],
        7001,
    ));
    host.send(&udp(
        PEER_MAC,
        [1, 0, 0x5e, 1, 2, 3],
        PEER_IP,
        [239, 129, 2, 3],
        7000,
    ));
    assert_eq!(received(&mut qa, settle).len(), 0);

    // A's client reports its membership of the group it joined, not of another.
    let mac_a = ca.host().link.mac;
    let report = |g: [u8; 4]| {
        FrameBuilder::ethernet([1, 0, 0x5e, g[1] & 0x7f, g[2], g[3]], mac_a)
            .ethertype(0x0800)
            .ipv4(Ipv4::new(A_IP, g, 2))
            .raw(&[0x16, 0, 0, 0, g[0], g[1], g[2], g[3]])
            .finish()
            .data
    };
    let joined = report([239, 1, 2, 3]);
    let forged = report([239, 9, 9, 9]);
    let mut leave_other = report([224, 0, 0, 2]);
    leave_other[34] = 0x17;
    leave_other[38..42].copy_from_slice(&[239, 9, 9, 9]);
    qa.send(&[&[&joined], &[&forged], &[&leave_other]]).unwrap();
    let mut done = Vec::new();
    let end = Instant::now() + WAIT;
    while done.len() < 3 && Instant::now() < end {
        qa.completions(8, &mut done).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let statuses: Vec<TxStatus> = done.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [
            TxStatus::Sent,
            TxStatus::RejectedByFilter,
            TxStatus::RejectedByFilter
        ]
    );
    let igmp = host
        .heard(Duration::from_millis(100))
        .into_iter()
        .filter(|f| f.len() > 23 && f[12..14] == [8, 0] && f[23] == 2)
        .collect::<Vec<_>>();
    assert_eq!(igmp, [joined]);

    ca.leave_group(group, 7000).unwrap();
    host.send(&to_group);
    assert_eq!(udp_to(&received(&mut qa, settle), 7000), 0, "a left");
    let e = ca.leave_group(group, 7000).unwrap_err();
    assert!(e.to_string().contains("not joined"), "{e}");

    // Only a port the session holds, only a group, only so many.
    let e = ca.join_group(group, 7001).unwrap_err();
    assert!(e.to_string().contains("not this session's"), "{e}");
    let e = ca
        .join_group("192.0.2.99".parse().unwrap(), 7000)
        .unwrap_err();
    assert!(e.to_string().contains("not a multicast address"), "{e}");
    for i in 0..20u8 {
        ca.join_group(std::net::Ipv4Addr::new(239, 2, 0, i).into(), 7000)
            .unwrap();
    }
    let e = ca.join_group(group, 7000).unwrap_err();
    assert!(e.to_string().contains("at most 20 groups"), "{e}");

    // Closing the port takes its groups with it: bound again, it receives no group's datagram.
    cd.close_port(Transport::Udp, 7000).unwrap();
    cd.bind_port(Transport::Udp, 7000).unwrap();
    host.send(&udp6_to_group(group6, 7000));
    assert_eq!(udp6_to(&received(&mut qd, settle), 7000), 0);
}
