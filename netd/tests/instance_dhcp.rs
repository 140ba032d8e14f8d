//! DHCP and SLAAC for instances other than the default one, in-process on the real driver
//! (`netmux_netd::testing::Host`) with the test at the far end of the cable as the DHCP
//! server and the IPv6 router: an instance created with `dhcp` sends DISCOVERs from its own
//! MAC (or, sharing the link's MAC, with a client identifier of its own), takes the offered
//! address after REQUEST/ACK, tells its clients the address, gateway and DNS servers, answers
//! ARP for it from its MAC, and releases the lease when destroyed; `instance set ip=` turns a
//! lease into a static address (released) and back; a renewal the server refuses leaves the
//! instance without an address, its sessions ended, seeking a new lease; instances kept in
//! the configuration file with `ip = "dhcp"` are restored and lease again; an instance
//! created with `slaac` takes an address in an advertised prefix, and every instance with a
//! global address the advertising router as its default router.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use common::*;
use etherparse::{Icmpv6Type, PacketBuilder, SlicedPacket, TransportSlice};
use netmux_client::blocking::Client;
use netmux_proto::client::{InstanceSpec, MacChoice};
use netmux_testkit::dhcp::ServerReply;
use smoltcp::wire::{DhcpMessageType, DhcpPacket, DhcpRepr};

const WAIT: Duration = Duration::from_secs(5);
const SERVER: Ipv4Addr = IP_B;

fn spec(name: &str, mac: MacChoice) -> InstanceSpec {
    InstanceSpec {
        ipv6_link_local: true,
        dhcp: true,
        ..InstanceSpec::temporary(name, mac, ([0; 4], 0))
    }
}

/// A DHCP message a client sent on the wire: its type, transaction id, hardware address,
/// client address, Ethernet source, and its client identifier option's bytes.
#[derive(Debug)]
struct Sent {
    kind: DhcpMessageType,
    xid: u32,
    chaddr: [u8; 6],
    ciaddr: Ipv4Addr,
    eth_src: [u8; 6],
    client_id: Vec<u8>,
}

fn dhcp_sent(frame: &[u8]) -> Option<Sent> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(TransportSlice::Udp(udp)) = &p.transport else {
        return None;
    };
    if (udp.source_port(), udp.destination_port()) != (68, 67) {
        return None;
    }
    let packet = DhcpPacket::new_checked(udp.payload()).ok()?;
    let client_id = packet
        .options()
        .find(|o| o.kind == 61)
        .map(|o| o.data.to_vec())
        .unwrap_or_default();
    let repr = DhcpRepr::parse(&packet).ok()?;
    Some(Sent {
        kind: repr.message_type,
        xid: repr.transaction_id,
        chaddr: repr.client_hardware_address.0,
        ciaddr: repr.client_ip,
        eth_src: frame[6..12].try_into().unwrap(),
        client_id,
    })
}

/// The server's reply of `kind` to `to`, offering or acknowledging `yiaddr`, sent to `eth_dst`.
fn reply(to: &Sent, kind: DhcpMessageType, yiaddr: Ipv4Addr, eth_dst: [u8; 6]) -> Vec<u8> {
    reply_for(to, kind, yiaddr, eth_dst, 3600)
}

/// [`reply`] with a lease of `secs` seconds.
fn reply_for(
    to: &Sent,
    kind: DhcpMessageType,
    yiaddr: Ipv4Addr,
    eth_dst: [u8; 6],
    secs: u32,
) -> Vec<u8> {
    ServerReply {
        kind,
        xid: to.xid,
        chaddr: to.chaddr,
        yiaddr,
        lease_secs: secs,
        server: SERVER,
        server_mac: MAC_B,
        eth_dst,
        ip_dst: if eth_dst == [0xff; 6] {
            Ipv4Addr::BROADCAST
        } else {
            yiaddr
        },
    }
    .frame()
}

/// Waits for a DHCP message of `kind` that `pick` accepts.
fn wait_sent(host: &Host, kind: DhcpMessageType, pick: impl Fn(&Sent) -> bool) -> Sent {
    host.wire()
        .recv_until(WAIT, |f| dhcp_sent(f).filter(|s| s.kind == kind && pick(s)))
        .unwrap_or_else(|| panic!("no {kind:?} on the wire"))
}

/// Leases `address` to the client `pick` accepts: DISCOVER, OFFER (broadcast), REQUEST, ACK
/// (unicast to the client's hardware address). Returns the DISCOVER.
fn lease(host: &Host, address: Ipv4Addr, pick: impl Fn(&Sent) -> bool) -> Sent {
    let discover = wait_sent(host, DhcpMessageType::Discover, &pick);
    host.wire().send(&reply(
        &discover,
        DhcpMessageType::Offer,
        address,
        [0xff; 6],
    ));
    let request = wait_sent(host, DhcpMessageType::Request, |s| {
        s.xid == discover.xid && pick(s)
    });
    host.wire().send(&reply(
        &request,
        DhcpMessageType::Ack,
        address,
        request.chaddr,
    ));
    discover
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&IP_B.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

#[test]
fn instances_lease_their_own_addresses_tell_their_clients_and_release_them_when_destroyed() {
    let host = host();
    let mut admin = Client::connect_socket(host.netd.socket_path()).unwrap();

    // An instance with a MAC of its own: its DISCOVER comes from that MAC and names it.
    admin
        .create_instance(spec("dh", MacChoice::Generated))
        .unwrap();
    let own: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);
    let d = lease(&host, own, |s| s.chaddr != MAC_A);
    let own_mac = d.chaddr;
    assert_eq!(d.eth_src, own_mac, "from the instance's MAC");
    assert_eq!(
        d.client_id[1..],
        own_mac,
        "its MAC is its client identifier"
    );
    assert!(
        eventually(WAIT, || {
            Client::connect_to(host.runtime_dir(), Some("dh"))
                .map(|c| c.host().ipv4 == Some((own.octets(), 24)))
                .unwrap_or(false)
        }),
        "the instance's clients are told the leased address"
    );
    let client = Client::connect_to(host.runtime_dir(), Some("dh")).unwrap();
    assert_eq!(client.host().gateway, Some(SERVER.octets()));
    assert_eq!(client.host().dns_servers, vec![SERVER.octets()]);
    drop(client);

    // An instance sharing the link's MAC: a client identifier of its own.
    admin
        .create_instance(spec("dhs", MacChoice::Shared))
        .unwrap();
    let shared: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 51);
    let d = lease(&host, shared, |s| {
        s.chaddr == MAC_A && s.client_id.starts_with(b"\0netmux:")
    });
    assert_eq!(d.client_id, b"\0netmux:dhs");
    assert!(eventually(WAIT, || {
        Client::connect_to(host.runtime_dir(), Some("dhs"))
            .map(|c| c.host().ipv4 == Some((shared.octets(), 24)))
            .unwrap_or(false)
    }));

    // `instance ls` shows both leases, as from DHCP.
    let list = admin.list_instances().unwrap();
    for (name, a) in [("dh", own), ("dhs", shared)] {
        let i = list.iter().find(|i| i.name == name).unwrap();
        assert!(i.dhcp, "{name}");
        assert_eq!(i.ipv4, Some((a.octets(), 24)), "{name}");
    }

    // ARP for each leased address is answered from its instance's MAC.
    for (a, mac) in [(own, own_mac), (shared, MAC_A)] {
        host.wire().send(&arp_request(a));
        let answer = host
            .wire()
            .recv_until(WAIT, |f| {
                (f.len() >= 42 && f[12..14] == [8, 6] && f[21] == 2 && f[28..32] == a.octets())
                    .then(|| f.to_vec())
            })
            .unwrap_or_else(|| panic!("no ARP reply for {a}"));
        assert_eq!(answer[22..28], mac, "{a} is at its instance's MAC");
    }

    // `instance set ip=` turns a leased address into a static one (the lease released) and
    // back (DISCOVERs again, with the same client identifier).
    admin
        .set_instance_property("dhs", "ip", "10.0.0.70/24")
        .unwrap();
    let release = wait_sent(&host, DhcpMessageType::Release, |s| {
        s.client_id.starts_with(b"\0netmux:")
    });
    assert_eq!(release.ciaddr, shared);
    assert!(eventually(WAIT, || {
        Client::connect_to(host.runtime_dir(), Some("dhs"))
            .map(|c| c.host().ipv4 == Some(([10, 0, 0, 70], 24)) && c.host().gateway.is_none())
            .unwrap_or(false)
    }));
    admin.set_instance_property("dhs", "ip", "dhcp").unwrap();
    let again = Ipv4Addr::new(10, 0, 0, 52);
    lease(&host, again, |s| s.client_id == b"\0netmux:dhs");
    assert!(eventually(WAIT, || {
        Client::connect_to(host.runtime_dir(), Some("dhs"))
            .map(|c| c.host().ipv4 == Some((again.octets(), 24)))
            .unwrap_or(false)
    }));
    let e = admin
        .set_instance_property("dhs", "ip", "10.0.0.255/24")
        .unwrap_err();
    assert!(e.to_string().contains("ip=10.0.0.255/24"), "{e}");

    // Destroyed, the instance releases its lease from its address and MAC.
    admin.destroy_instance("dh").unwrap();
    let release = wait_sent(&host, DhcpMessageType::Release, |s| s.chaddr == own_mac);
    assert_eq!((release.ciaddr, release.eth_src), (own, own_mac));
}

/// A router advertisement from `fe80::fe` of the /64 `prefix`, autonomous, lifetime 1800 s.
fn ra(prefix: Ipv6Addr) -> Vec<u8> {
    let mut body = vec![0u8; 8];
    body.extend_from_slice(&[3, 4, 64, 0xc0]);
    body.extend_from_slice(&3600u32.to_be_bytes());
    body.extend_from_slice(&1800u32.to_be_bytes());
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(&prefix.octets());
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_B, [0x33, 0x33, 0, 0, 0, 1])
        .ipv6(
            ROUTER.octets(),
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
        .write(&mut out, &body)
        .unwrap();
    out
}

const ROUTER: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xfe);

#[test]
fn an_instance_takes_a_slaac_address_and_every_instance_with_ipv6_the_router() {
    let host = host();
    let mut admin = Client::connect_socket(host.netd.socket_path()).unwrap();
    let mut sl = spec("sl", MacChoice::Generated);
    (sl.dhcp, sl.slaac, sl.ipv4) = (false, true, ([10, 0, 0, 60], 24));
    admin.create_instance(sl).unwrap();
    let mut st = spec("st", MacChoice::Generated);
    let fixed: Ipv6Addr = "2001:db8::61".parse().unwrap();
    (st.dhcp, st.ipv6, st.ipv4) = (false, Some((fixed.octets(), 64)), ([10, 0, 0, 61], 24));
    admin.create_instance(st).unwrap();
    // `sl` solicits routers from its link-local address.
    host.wire()
        .recv_until(WAIT, |f| {
            (f.len() > 54 && f[12..14] == [0x86, 0xdd] && f[54] == 133).then_some(())
        })
        .expect("a router solicitation");
    let prefix: Ipv6Addr = "2001:db8:0:7::".parse().unwrap();
    let mut config = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            host.wire().send(&ra(prefix));
            std::thread::sleep(Duration::from_millis(200));
            let c = Client::connect_to(host.runtime_dir(), Some("sl")).unwrap();
            let done = !c.host().ipv6.is_empty();
            config = Some(c.host().clone());
            done
        }),
        "sl takes an address from the advertisement"
    );
    let config = config.unwrap();
    let (address, len) = config.ipv6[0];
    let address = Ipv6Addr::from(address);
    assert_eq!(len, 64);
    assert_eq!(address.octets()[..8], prefix.octets()[..8]);
    let ll = Ipv6Addr::from(config.ipv6_link_local.unwrap());
    assert_eq!(
        address.octets()[8..],
        ll.octets()[8..],
        "its own interface id"
    );
    assert_eq!(config.ipv6_gateway, Some(ROUTER.octets()));
    let st = Client::connect_to(host.runtime_dir(), Some("st")).unwrap();
    assert_eq!(
        st.host().ipv6_gateway,
        Some(ROUTER.octets()),
        "st's router too"
    );
    assert_eq!(
        st.host().ipv6,
        vec![(fixed.octets(), 64)],
        "its address stays"
    );
    let list = admin.list_instances().unwrap();
    let sl = list.iter().find(|i| i.name == "sl").unwrap();
    assert!(sl.slaac && !sl.dhcp);
    assert_eq!(sl.gateway6, Some(ROUTER.octets()));
}

#[test]
fn a_lease_the_server_refuses_to_renew_ends_the_instances_sessions_and_it_starts_over() {
    let host = host();
    let mut admin = Client::connect_socket(host.netd.socket_path()).unwrap();
    admin
        .create_instance(spec("lo", MacChoice::Generated))
        .unwrap();
    let address = Ipv4Addr::new(10, 0, 0, 80);
    // A 4-second lease: the renewal (T1) comes 2 s later.
    let discover = wait_sent(&host, DhcpMessageType::Discover, |s| s.chaddr != MAC_A);
    let mac = discover.chaddr;
    host.wire().send(&reply_for(
        &discover,
        DhcpMessageType::Offer,
        address,
        [0xff; 6],
        4,
    ));
    let request = wait_sent(&host, DhcpMessageType::Request, |s| s.chaddr == mac);
    host.wire()
        .send(&reply_for(&request, DhcpMessageType::Ack, address, mac, 4));
    assert!(eventually(WAIT, || {
        Client::connect_to(host.runtime_dir(), Some("lo"))
            .map(|c| c.host().ipv4 == Some((address.octets(), 24)))
            .unwrap_or(false)
    }));
    let _client = Client::connect_to(host.runtime_dir(), Some("lo")).unwrap();
    let clients = |admin: &mut Client| {
        admin
            .list_instances()
            .unwrap()
            .into_iter()
            .find(|i| i.name == "lo")
            .map(|i| (i.clients, i.ipv4))
            .unwrap()
    };
    assert_eq!(clients(&mut admin), (1, Some((address.octets(), 24))));
    // The renewal, from the leased address; the server refuses it.
    let renewal = wait_sent(&host, DhcpMessageType::Request, |s| {
        s.chaddr == mac && s.ciaddr == address
    });
    host.wire().send(&reply_for(
        &renewal,
        DhcpMessageType::Nak,
        Ipv4Addr::UNSPECIFIED,
        mac,
        0,
    ));
    // The instance has no address, its session (told the address) is ended, and the client
    // seeks a new lease.
    assert!(
        eventually(WAIT, || clients(&mut admin) == (0, None)),
        "{:?}",
        clients(&mut admin)
    );
    wait_sent(&host, DhcpMessageType::Discover, |s| s.chaddr == mac);
}

#[test]
fn instances_with_dhcp_and_slaac_in_the_configuration_file_are_restored_and_lease_again() {
    let dir = netmux_testkit::TempDir::new("netd-instance-dhcp");
    let file = dir.join("netd.toml");
    std::fs::write(
        &file,
        "[[instance]]\nname = \"kept\"\nip = \"dhcp\"\nip6 = \"slaac\"\n",
    )
    .unwrap();
    let host = host_with(|c| c.instances_file = Some(file.clone()));
    let address = Ipv4Addr::new(10, 0, 0, 90);
    let d = lease(&host, address, |s| s.chaddr != MAC_A);
    assert_eq!(d.eth_src, d.chaddr, "from the restored instance's own MAC");
    assert!(eventually(WAIT, || {
        Client::connect_to(host.runtime_dir(), Some("kept"))
            .map(|c| c.host().ipv4 == Some((address.octets(), 24)))
            .unwrap_or(false)
    }));
    let mut admin = Client::connect_socket(host.netd.socket_path()).unwrap();
    let kept = admin
        .list_instances()
        .unwrap()
        .into_iter()
        .find(|i| i.name == "kept")
        .unwrap();
    assert!(kept.dhcp && kept.slaac);
    // The file still says dhcp and slaac, not the leased address.
    admin
        .set_instance_property("kept", "join-uids", "all")
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("ip = \"dhcp\"") && text.contains("ip6 = \"slaac\""),
        "{text}"
    );
}
