//! IPv6 for clients, in-process on the real driver (`netmux_netd::testing::Host`) with the
//! test at the far end of the cable: a global address (`Config::ipv6`, what `--ip6` sets)
//! handed to clients; netd alone answers neighbour solicitations and echo requests for the
//! host's addresses; a client's neighbour and router solicitations from the host's addresses
//! go out, its neighbour advertisements (for the host's address or any other) and forged
//! link-layer addresses do not; advertisements received reach every client; a client's port
//! takes datagrams on the link-local and the global address; netd probes the global address
//! for duplicates (RFC 4862) and gives it up when another node answers.

mod common;

use std::net::Ipv6Addr;
use std::time::Duration;

use common::*;
use etherparse::{Icmpv6Type, PacketBuilder};
use netmux_client::blocking::Client;
use netmux_client::Transport;
use netmux_ring::{ClientQueue, TxStatus};

const GLOBAL: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const PEER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const WAIT: Duration = Duration::from_secs(2);

/// netd with [`GLOBAL`], once its duplicate address probes for its link-local address and
/// for [`GLOBAL`] (neighbour solicitations from `::`, hop limit 255, no option) have gone out.
fn host6() -> Host {
    let host = host_with(|c| {
        c.ipv6 = Some((GLOBAL, 64));
        c.ipv6_gateway = Some("fe80::1".parse().unwrap());
    });
    let (group, group_mac) = solicited_node(GLOBAL);
    let mut probed = Vec::new();
    let probe = host.wire().recv_until(WAIT, |f| {
        let is_probe = f.len() == 14 + 40 + 24 && f[22..38] == [0; 16] && f[54] == 135;
        if is_probe {
            probed.push(Ipv6Addr::from(<[u8; 16]>::try_from(&f[62..78]).unwrap()));
        }
        (is_probe && f[62..78] == GLOBAL.octets()).then(|| f.to_vec())
    });
    let probe = probe.expect("a duplicate address probe for the global address");
    assert!(
        probed.iter().any(|a| a.segments()[0] == 0xfe80),
        "the link-local address is probed first: {probed:?}"
    );
    assert_eq!(probe[..6], group_mac);
    assert_eq!(probe[38..54], group.octets());
    assert_eq!(probe[62..78], GLOBAL.octets());
    assert_eq!(probe[21], 255);
    host
}

/// An NDP message of ICMPv6 `kind` from `eth_src`/`src` to `eth_dst`/`dst`: `target`, then a
/// link-layer address option of `option_kind` naming `lladdr`, if any.
#[allow(clippy::too_many_arguments)]
fn nd(
    kind: u8,
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Option<Ipv6Addr>,
    lladdr: Option<[u8; 6]>,
) -> Vec<u8> {
    let t = match kind {
        135 => Icmpv6Type::NeighborSolicitation,
        136 => Icmpv6Type::NeighborAdvertisement(etherparse::icmpv6::NeighborAdvertisementHeader {
            router: false,
            solicited: true,
            r#override: true,
        }),
        _ => Icmpv6Type::RouterSolicitation,
    };
    let mut body = target.map(|t| t.octets().to_vec()).unwrap_or_default();
    if let Some(m) = lladdr {
        body.extend_from_slice(&[if kind == 136 { 2 } else { 1 }, 1]);
        body.extend_from_slice(&m);
    }
    let mut out = Vec::new();
    PacketBuilder::ethernet2(eth_src, eth_dst)
        .ipv6(src.octets(), dst.octets(), 255)
        .icmpv6(t)
        .write(&mut out, &body)
        .unwrap();
    out
}

fn solicited_node(a: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let o = a.octets();
    (
        Ipv6Addr::new(
            0xff02,
            0,
            0,
            0,
            0,
            1,
            0xff00 | u16::from(o[13]),
            u16::from_be_bytes([o[14], o[15]]),
        ),
        [0x33, 0x33, 0xff, o[13], o[14], o[15]],
    )
}

/// Sends each frame from `q` and returns their completions' statuses, in order.
fn transmit(q: &mut ClientQueue, frames: &[Vec<u8>]) -> Vec<TxStatus> {
    let refs: Vec<[&[u8]; 1]> = frames.iter().map(|f| [f.as_slice()]).collect();
    let batch: Vec<&[&[u8]]> = refs.iter().map(|r| &r[..]).collect();
    assert_eq!(q.send(&batch).unwrap().sent, frames.len());
    let mut done = Vec::new();
    assert!(eventually(WAIT, || {
        q.completions(64, &mut done).unwrap();
        done.len() >= frames.len()
    }));
    done.sort_by_key(|c| c.seq);
    done.into_iter().map(|c| c.status).collect()
}

fn received(q: &mut ClientQueue) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    std::thread::sleep(Duration::from_millis(100));
    q.recv_owned(64, &mut got).unwrap();
    got
}

#[test]
fn clients_learn_the_global_address_and_bind_ports_on_every_address() {
    let host = host6();
    let mut a = Client::connect_socket(host.netd.socket_path()).unwrap();
    assert_eq!(a.host().ipv6, vec![(GLOBAL.octets(), 64)]);
    assert_eq!(
        a.host().ipv6_gateway,
        Some("fe80::1".parse::<Ipv6Addr>().unwrap().octets())
    );
    let ll = Ipv6Addr::from(a.host().ipv6_link_local.unwrap());
    a.bind_port(Transport::Udp, 5353).unwrap();
    let mut q = a.open_queue().unwrap();
    for dst in [GLOBAL, ll] {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC_B, MAC_A)
            .ipv6(PEER.octets(), dst.octets(), 64)
            .udp(1234, 5353)
            .write(&mut f, b"v6")
            .unwrap();
        host.wire().send(&f);
        let got = received(&mut q);
        assert!(got.contains(&f), "the datagram to {dst} reached its port");
    }
    // The client answers from its port on the global address.
    let mut reply = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(GLOBAL.octets(), PEER.octets(), 64)
        .udp(5353, 1234)
        .write(&mut reply, b"v6 back")
        .unwrap();
    assert_eq!(transmit(&mut q, &[reply.clone()]), vec![TxStatus::Sent]);
    assert_eq!(host.wire().recv(WAIT), Some(reply));
}

#[test]
fn netd_alone_answers_solicitations_and_pings_for_the_global_address() {
    let host = host6();
    let mut a = Client::connect_socket(host.netd.socket_path()).unwrap();
    a.bind_port(Transport::Udp, 5353).unwrap();
    let mut q = a.open_queue().unwrap();
    let (sn, sn_mac) = solicited_node(GLOBAL);
    let ns = nd(135, MAC_B, sn_mac, PEER, sn, Some(GLOBAL), Some(MAC_B));
    host.wire().send(&ns);
    let answers = host.wire().recv_for(Duration::from_millis(300));
    assert_eq!(answers.len(), 1, "one advertisement: {answers:02x?}");
    let na = &answers[0];
    assert_eq!((&na[..6], &na[6..12]), (&MAC_B[..], &MAC_A[..]));
    assert_eq!(na[54], 136);
    assert_eq!(na[62..78], GLOBAL.octets(), "for the global address");
    assert!(
        received(&mut q).iter().all(|f| f.get(54) != Some(&135)),
        "the client never sees the solicitation"
    );

    let mut ping = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv6(PEER.octets(), GLOBAL.octets(), 64)
        .icmpv6_echo_request(7, 1)
        .write(&mut ping, b"ping6")
        .unwrap();
    host.wire().send(&ping);
    let answers = host.wire().recv_for(Duration::from_millis(300));
    assert_eq!(answers.len(), 1, "one echo reply: {answers:02x?}");
    assert_eq!(answers[0][54], 129);
    assert_eq!(answers[0][22..38], GLOBAL.octets());
}

#[test]
fn clients_solicit_from_the_hosts_addresses_and_never_advertise() {
    let host = host6();
    let mut a = Client::connect_socket(host.netd.socket_path()).unwrap();
    let ll = Ipv6Addr::from(a.host().ipv6_link_local.unwrap());
    a.bind_port(Transport::Tcp, 8080).unwrap();
    let mut q = a.open_queue().unwrap();
    let (sn, sn_mac) = solicited_node(PEER);
    let all_routers: Ipv6Addr = "ff02::2".parse().unwrap();
    let routers_mac = [0x33, 0x33, 0, 0, 0, 2];
    let honest = vec![
        nd(135, MAC_A, sn_mac, GLOBAL, sn, Some(PEER), Some(MAC_A)),
        nd(135, MAC_A, sn_mac, ll, sn, Some(PEER), Some(MAC_A)),
        nd(133, MAC_A, routers_mac, ll, all_routers, None, Some(MAC_A)),
    ];
    assert_eq!(
        transmit(&mut q, &honest),
        vec![TxStatus::Sent; 3],
        "solicitations from the host's addresses go out"
    );
    let on_wire = host.wire().recv_for(Duration::from_millis(300));
    assert_eq!(on_wire, honest);

    let foreign: Ipv6Addr = "2001:db8::9".parse().unwrap();
    let forged = vec![
        // An advertisement for the host's own address: netd's alone.
        nd(136, MAC_A, MAC_B, GLOBAL, PEER, Some(GLOBAL), Some(MAC_A)),
        nd(136, MAC_A, MAC_B, ll, PEER, Some(ll), Some(MAC_A)),
        // For an address that is not the client's.
        nd(136, MAC_A, MAC_B, GLOBAL, PEER, Some(foreign), Some(MAC_A)),
        // A solicitation from another address, or pointing the peer at another MAC.
        nd(135, MAC_A, sn_mac, foreign, sn, Some(PEER), Some(MAC_A)),
        nd(
            135,
            MAC_A,
            sn_mac,
            GLOBAL,
            sn,
            Some(PEER),
            Some([2, 9, 9, 9, 9, 9]),
        ),
        // Duplicate address detection of the host's address is netd's.
        nd(
            135,
            MAC_A,
            sn_mac,
            Ipv6Addr::UNSPECIFIED,
            sn,
            Some(GLOBAL),
            None,
        ),
    ];
    let by_filter = TxStatus::RejectedByFilter;
    assert_eq!(
        transmit(&mut q, &forged),
        vec![
            by_filter,
            by_filter,
            by_filter,
            TxStatus::RejectedSourceIp,
            by_filter,
            TxStatus::RejectedSourceIp,
        ],
        "each forged frame is rejected with its reason"
    );
    assert!(
        host.wire().recv_for(Duration::from_millis(300)).is_empty(),
        "nothing forged went on the wire"
    );
}

#[test]
fn neighbour_and_router_advertisements_reach_every_client() {
    let host = host6();
    let mut queues: Vec<(Client, ClientQueue)> = (0..3)
        .map(|i| {
            let mut c = Client::connect_socket(host.netd.socket_path()).unwrap();
            c.bind_port(Transport::Udp, 6000 + i).unwrap();
            let q = c.open_queue().unwrap();
            (c, q)
        })
        .collect();
    let na = nd(136, MAC_B, MAC_A, PEER, GLOBAL, Some(PEER), Some(MAC_B));
    let mut ra = Vec::new();
    PacketBuilder::ethernet2(MAC_B, [0x33, 0x33, 0, 0, 0, 1])
        .ipv6(
            "fe80::b".parse::<Ipv6Addr>().unwrap().octets(),
            "ff02::1".parse::<Ipv6Addr>().unwrap().octets(),
            255,
        )
        .icmpv6(Icmpv6Type::RouterAdvertisement(
            etherparse::icmpv6::RouterAdvertisementHeader {
                cur_hop_limit: 64,
                managed_address_config: false,
                other_config: false,
                router_lifetime: 1800,
            },
        ))
        .write(&mut ra, &[0; 8])
        .unwrap();
    host.wire().send(&na);
    host.wire().send(&ra);
    for (i, (_, q)) in queues.iter_mut().enumerate() {
        let got = received(q);
        assert!(got.contains(&na), "client {i} got the advertisement");
        assert!(got.contains(&ra), "client {i} got the router advertisement");
    }
}

#[test]
fn a_static_address_another_node_has_is_given_up() {
    let host = host_with(|c| c.ipv6 = Some((GLOBAL, 64)));
    let mut a = Client::connect_socket(host.netd.socket_path()).unwrap();
    assert_eq!(a.host().ipv6, vec![(GLOBAL.octets(), 64)]);
    a.bind_port(Transport::Udp, 5353).unwrap();
    // Another node defends the address against netd's probe.
    let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
    let defence = nd(
        136,
        MAC_B,
        [0x33, 0x33, 0, 0, 0, 1],
        GLOBAL,
        all_nodes,
        Some(GLOBAL),
        Some(MAC_B),
    );
    host.wire().send(&defence);
    assert!(
        eventually(Duration::from_secs(3), || {
            Client::connect_socket(host.netd.socket_path())
                .map(|c| c.host().ipv6.is_empty())
                .unwrap_or(false)
        }),
        "new clients are not told the address"
    );
    assert!(
        eventually(Duration::from_secs(3), || a.stats().is_err()),
        "the session told the address ends"
    );
    // netd no longer answers for it.
    let _ = host.wire().recv_for(Duration::from_millis(100));
    let (sn, sn_mac) = solicited_node(GLOBAL);
    host.wire()
        .send(&nd(135, MAC_B, sn_mac, PEER, sn, Some(GLOBAL), Some(MAC_B)));
    assert!(
        host.wire()
            .recv_for(Duration::from_millis(300))
            .iter()
            .all(|f| f.get(54) != Some(&136)),
        "no advertisement for an address another node has"
    );
}

#[test]
fn an_instance_created_with_a_global_address_answers_for_it_and_its_clients_learn_it() {
    use netmux_proto::client::{InstanceSpec, MacChoice};
    let host = host();
    let address: Ipv6Addr = "2001:db8::10".parse().unwrap();
    let spec = |name: &str, ipv4: [u8; 4]| InstanceSpec {
        ipv6_link_local: true,
        ipv6: Some((address.octets(), 64)),
        ..InstanceSpec::temporary(name, MacChoice::Generated, (ipv4, 24))
    };
    let mut admin = Client::connect_socket(host.netd.socket_path()).unwrap();
    admin.create_instance(spec("t6", [10, 0, 0, 9])).unwrap();
    let e = admin
        .create_instance(spec("t6b", [10, 0, 0, 10]))
        .unwrap_err();
    assert!(e.to_string().contains("another instance has it"), "{e}");
    let mut bad = spec("t6c", [10, 0, 0, 11]);
    bad.ipv6 = Some(("fe80::10".parse::<Ipv6Addr>().unwrap().octets(), 64));
    let e = admin.create_instance(bad).unwrap_err();
    assert!(e.to_string().contains("link-local"), "{e}");

    let client = Client::connect_to(host.runtime_dir(), Some("t6")).unwrap();
    assert_eq!(client.host().ipv6, vec![(address.octets(), 64)]);
    let mac = client.host().link.mac;
    assert_ne!(mac, MAC_A, "the instance's own MAC");
    let (sn, sn_mac) = solicited_node(address);
    host.wire().send(&nd(
        135,
        MAC_B,
        sn_mac,
        PEER,
        sn,
        Some(address),
        Some(MAC_B),
    ));
    let na = host
        .wire()
        .recv_until(WAIT, |f| {
            (f.get(54) == Some(&136) && f.get(62..78) == Some(&address.octets()[..]))
                .then(|| f.to_vec())
        })
        .expect("an advertisement for the instance's address");
    assert_eq!(na[6..12], mac, "from the instance's MAC");
    assert_eq!(na[80..86], mac, "naming the instance's MAC");
}

#[test]
fn an_instances_address_another_node_has_is_given_up() {
    use netmux_proto::client::{InstanceSpec, MacChoice};
    let host = host();
    let address: Ipv6Addr = "2001:db8::20".parse().unwrap();
    let mut admin = Client::connect_socket(host.netd.socket_path()).unwrap();
    admin
        .create_instance(InstanceSpec {
            ipv6_link_local: true,
            ipv6: Some((address.octets(), 64)),
            ..InstanceSpec::temporary("dup6", MacChoice::Generated, ([10, 0, 0, 20], 24))
        })
        .unwrap();
    // The instance's probe, from its own MAC.
    let probe = host
        .wire()
        .recv_until(WAIT, |f| {
            (f.len() == 14 + 40 + 24
                && f[22..38] == [0; 16]
                && f[54] == 135
                && f[62..78] == address.octets())
            .then(|| f.to_vec())
        })
        .expect("a duplicate address probe for the instance's address");
    let mac: [u8; 6] = probe[6..12].try_into().unwrap();
    assert_ne!(mac, MAC_A, "from the instance's own MAC");
    // Another node has it.
    let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
    host.wire().send(&nd(
        136,
        MAC_B,
        [0x33, 0x33, 0, 0, 0, 1],
        address,
        all_nodes,
        Some(address),
        Some(MAC_B),
    ));
    assert!(
        eventually(Duration::from_secs(3), || {
            Client::connect_to(host.runtime_dir(), Some("dup6"))
                .map(|c| c.host().ipv6.is_empty())
                .unwrap_or(false)
        }),
        "the instance's clients are not told the address"
    );
}
