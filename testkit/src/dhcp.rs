//! A DHCP server's replies (OFFER, ACK, NAK), as the tests of netd's DHCP client make them:
//! real DHCP messages (smoltcp's encoder) in a real UDP datagram (etherparse's builder, with
//! its checksums), so that the client reads them exactly as it reads a server's.

use std::net::Ipv4Addr;

use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress};

/// What a reply says and where it goes. The server is its own router and DNS server, and
/// the subnet a /24.
#[derive(Clone, Copy, Debug)]
pub struct ServerReply {
    /// OFFER, ACK or NAK.
    pub kind: DhcpMessageType,
    /// The client's transaction id.
    pub xid: u32,
    /// The client's hardware address.
    pub chaddr: [u8; 6],
    /// The address offered or acknowledged.
    pub yiaddr: Ipv4Addr,
    /// The lease, in seconds.
    pub lease_secs: u32,
    /// The server's address (its identifier, the router and the DNS server).
    pub server: Ipv4Addr,
    /// The server's MAC.
    pub server_mac: [u8; 6],
    /// The frame's destination MAC.
    pub eth_dst: [u8; 6],
    /// The datagram's destination address.
    pub ip_dst: Ipv4Addr,
}

impl ServerReply {
    /// The reply as an Ethernet frame, UDP from port 67 to 68.
    pub fn frame(&self) -> Vec<u8> {
        let dns = [DhcpOption {
            kind: 6,
            data: &self.server.octets(),
        }];
        let repr = DhcpRepr {
            message_type: self.kind,
            transaction_id: self.xid,
            secs: 0,
            client_hardware_address: EthernetAddress(self.chaddr),
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: self.yiaddr,
            server_ip: self.server,
            router: Some(self.server),
            subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(self.server),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: Some(self.lease_secs),
            renew_duration: None,
            rebind_duration: None,
            additional_options: &dns,
        };
        let mut payload = vec![0u8; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
            .expect("a DHCP message fits the buffer made for it");
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2(self.server_mac, self.eth_dst)
            .ipv4(self.server.octets(), self.ip_dst.octets(), 64)
            .udp(67, 68)
            .write(&mut out, &payload)
            .expect("writing to a vector");
        out
    }
}
