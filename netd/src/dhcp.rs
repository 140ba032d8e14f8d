//! A DHCPv4 client (RFC 2131) for an instance's host address, as a pure state machine: no I/O,
//! the time passed in. [`Client::poll`] says what to send now (a whole Ethernet frame) and
//! [`Client::receive`] takes any frame from the host queue, keeping only the server's replies
//! to this client. Both return the [`Event`]s that change the instance's address: a lease
//! taken, renewed, or lost.
//!
//! The DHCP messages themselves are smoltcp's ([`DhcpRepr`], [`DhcpPacket`]); the Ethernet, IPv4
//! and UDP around them etherparse's.
//!
//! Guarantees, each tested:
//! * DISCOVER, REQUEST (selecting), REQUEST (renewing, unicast to the server from the leased
//!   address) at T1, REQUEST (rebinding, broadcast) at T2, and the lease lost at its end, after
//!   which the client has no address and starts over with a DISCOVER;
//! * a NAK loses the lease at once; RELEASE on [`Client::release`];
//! * messages not for this client (another transaction, another hardware address) are ignored;
//!   malformed ones (unparsable, an OFFER or ACK of an address that cannot be a host's, an ACK
//!   without a server identifier) are counted in [`Client::malformed`] and never trusted;
//! * no input makes it panic.

use std::net::Ipv4Addr;
use std::time::Duration;

use etherparse::{LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use smoltcp::wire::{
    DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress, DHCP_CLIENT_PORT, DHCP_SERVER_PORT,
};

/// First retransmission delay of a DISCOVER or REQUEST (RFC 2131 4.1 says 4 s; shorter, so a
/// host on a quiet link comes up sooner), doubled on each retry up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(2);
/// Longest retransmission delay (RFC 2131 4.1: 64 s).
pub const MAX_RETRY: Duration = Duration::from_secs(32);
/// Shortest wait between REQUESTs while renewing or rebinding (RFC 2131 4.4.5 says 60 s; short
/// leases need less).
pub const MIN_RENEW_RETRY: Duration = Duration::from_secs(2);
/// REQUESTs sent for one OFFER before starting over with a DISCOVER.
pub const REQUEST_TRIES: u32 = 4;
/// The lease asked for when the server gives none (RFC 2131 requires it in an ACK; absent, one
/// hour, as dnsmasq's default).
const DEFAULT_LEASE: Duration = Duration::from_secs(3600);
/// Options asked for: subnet mask, router, DNS servers.
const PARAMETERS: [u8; 3] = [1, 3, 6];
const BROADCAST_MAC: [u8; 6] = [0xff; 6];
const TTL: u8 = 64;

/// A lease as the server gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The host's address.
    pub address: Ipv4Addr,
    /// Its prefix length (from the subnet mask; 24 when the server gives none).
    pub prefix: u8,
    /// The default gateway (the first router).
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns_servers: Vec<Ipv4Addr>,
    /// The server that gave it.
    pub server: Ipv4Addr,
    /// The server's (or relay's) MAC, for unicast renewals.
    pub server_mac: [u8; 6],
    /// How long it lasts, T1 and T2, from `acquired`.
    pub duration: Duration,
    /// Renewal time (T1).
    pub renew: Duration,
    /// Rebinding time (T2).
    pub rebind: Duration,
    /// When the REQUEST that got it was sent.
    pub acquired: Duration,
}

impl Lease {
    fn renew_at(&self) -> Duration {
        self.acquired + self.renew
    }
    fn rebind_at(&self) -> Duration {
        self.acquired + self.rebind
    }
    fn expires_at(&self) -> Duration {
        self.acquired + self.duration
    }
}

/// What changed the instance's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A new lease: the host has this address from now on.
    Leased(Lease),
    /// The lease was extended (same address).
    Renewed(Lease),
    /// The lease is gone: the host has no address until a new one.
    Lost {
        /// The address it had.
        address: Ipv4Addr,
        /// Why (expired, NAK, or another address offered on renewal).
        why: &'static str,
    },
}

/// Where the client is (RFC 2131 figure 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Sending DISCOVERs, waiting for an OFFER.
    Selecting,
    /// Sent a REQUEST for an offer, waiting for the ACK.
    Requesting {
        /// The offered address.
        address: Ipv4Addr,
        /// The server that offered it.
        server: Ipv4Addr,
        /// REQUESTs sent so far.
        tries: u32,
    },
    /// Holding a lease.
    Bound(Lease),
    /// Past T1: REQUESTs unicast to the server.
    Renewing(Lease),
    /// Past T2: REQUESTs broadcast to any server.
    Rebinding(Lease),
    /// Released on stop: sends nothing more.
    Released,
}

/// The DHCP client of one instance. See the module documentation.
#[derive(Clone, Debug)]
pub struct Client {
    mac: [u8; 6],
    state: State,
    xid: u32,
    /// When the state's next message is due.
    next_send: Duration,
    /// The current retransmission delay while selecting or requesting.
    retry: Duration,
    /// When the first REQUEST of the current exchange was sent (`Lease::acquired`).
    exchange_started: Duration,
    /// Server replies to this client that could not be trusted.
    pub malformed: u64,
    /// The client identifier (option 61) when it is not the MAC ([`Client::with_client_id`]).
    client_id: Option<Vec<u8>>,
}

impl Client {
    /// A client for the host with this MAC; `seed` makes its transaction ids (any random
    /// number). It sends its first DISCOVER on the first [`Client::poll`].
    pub fn new(mac: [u8; 6], seed: u32) -> Client {
        Client {
            mac,
            state: State::Selecting,
            xid: seed,
            next_send: Duration::ZERO,
            retry: FIRST_RETRY,
            exchange_started: Duration::ZERO,
            malformed: 0,
            client_id: None,
        }
    }

    /// The same client identifying itself to the server by `id` (option 61, RFC 2132 9.14:
    /// a type byte, then the identifier) instead of its MAC: hosts sharing one MAC (instances
    /// with `--shared-mac`) each get a lease of their own. An empty `id` keeps the MAC.
    pub fn with_client_id(mut self, id: Vec<u8>) -> Client {
        self.client_id = (!id.is_empty() && id.len() <= 255).then_some(id);
        self
    }

    /// The client identifier a host with no MAC of its own sends: type 0 (not a hardware
    /// address) and `netmux:` and the instance's name, the same after every restart.
    pub fn name_client_id(name: &str) -> Vec<u8> {
        let mut id = vec![0];
        id.extend_from_slice(b"netmux:");
        id.extend_from_slice(name.as_bytes());
        id.truncate(255);
        id
    }

    /// Where the client is.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The lease held, if any (bound, renewing or rebinding).
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound(l) | State::Renewing(l) | State::Rebinding(l) => Some(l),
            _ => None,
        }
    }

    /// When [`Client::poll`] next has something to do.
    pub fn deadline(&self) -> Option<Duration> {
        match &self.state {
            State::Released => None,
            State::Bound(l) => Some(l.renew_at()),
            State::Renewing(l) => Some(self.next_send.min(l.rebind_at())),
            State::Rebinding(l) => Some(self.next_send.min(l.expires_at())),
            _ => Some(self.next_send),
        }
    }

    fn new_exchange(&mut self, now: Duration) {
        self.xid = self.xid.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        self.exchange_started = now;
        self.retry = FIRST_RETRY;
        self.next_send = now;
    }

    fn start_over(&mut self, now: Duration) {
        self.state = State::Selecting;
        self.new_exchange(now);
    }

    fn backoff(&mut self, now: Duration) {
        self.next_send = now + self.retry;
        self.retry = (self.retry * 2).min(MAX_RETRY);
    }

    /// What to send at `now` (a frame), and what changed (the lease running out).
    pub fn poll(&mut self, now: Duration) -> (Option<Vec<u8>>, Option<Event>) {
        // Timers that move the state first.
        match &self.state {
            State::Bound(l) if now >= l.renew_at() => {
                let l = l.clone();
                self.new_exchange(now);
                self.state = State::Renewing(l);
            }
            State::Renewing(l) if now >= l.rebind_at() => {
                let l = l.clone();
                self.next_send = now;
                self.state = State::Rebinding(l);
            }
            State::Rebinding(l) if now >= l.expires_at() => {
                let address = l.address;
                self.start_over(now);
                return (
                    None,
                    Some(Event::Lost {
                        address,
                        why: "the lease expired with no server renewing it",
                    }),
                );
            }
            _ => {}
        }
        if self.state == State::Released || now < self.next_send {
            return (None, None);
        }
        let frame = match self.state.clone() {
            State::Selecting => {
                self.backoff(now);
                self.frame(DhcpMessageType::Discover, None, None, None)
            }
            State::Requesting {
                address,
                server,
                tries,
            } => {
                if tries >= REQUEST_TRIES {
                    self.start_over(now);
                    self.backoff(now);
                    self.frame(DhcpMessageType::Discover, None, None, None)
                } else {
                    self.state = State::Requesting {
                        address,
                        server,
                        tries: tries + 1,
                    };
                    self.backoff(now);
                    self.frame(DhcpMessageType::Request, None, Some(address), Some(server))
                }
            }
            State::Renewing(l) => {
                self.next_send = now + half_until(now, l.rebind_at());
                self.frame(DhcpMessageType::Request, Some((&l, false)), None, None)
            }
            State::Rebinding(l) => {
                self.next_send = now + half_until(now, l.expires_at());
                self.frame(DhcpMessageType::Request, Some((&l, true)), None, None)
            }
            State::Bound(_) | State::Released => None,
        };
        (frame, None)
    }

    /// The RELEASE of the lease held, if any; the client then sends nothing more.
    pub fn release(&mut self) -> Option<Vec<u8>> {
        let lease = self.lease().cloned();
        self.state = State::Released;
        let l = lease?;
        self.frame(DhcpMessageType::Release, Some((&l, false)), None, None)
    }

    /// Takes a frame from the host queue at `now`. Frames that are not a DHCP server's reply
    /// to this client's current transaction are ignored.
    pub fn receive(&mut self, frame: &[u8], now: Duration) -> Option<Event> {
        let (src_mac, payload) = dhcp_payload(frame)?;
        let Ok(packet) = DhcpPacket::new_checked(payload) else {
            self.malformed += 1;
            return None;
        };
        let Ok(repr) = DhcpRepr::parse(&packet) else {
            self.malformed += 1;
            return None;
        };
        if repr.transaction_id != self.xid || repr.client_hardware_address.0 != self.mac {
            return None; // someone else's
        }
        match (self.state.clone(), repr.message_type) {
            (State::Selecting, DhcpMessageType::Offer) => {
                let (Some(server), true) =
                    (repr.server_identifier, usable_host(repr.your_ip, &repr))
                else {
                    self.malformed += 1;
                    return None;
                };
                self.state = State::Requesting {
                    address: repr.your_ip,
                    server,
                    tries: 0,
                };
                // The lease's times count from the (first) REQUEST, sent now.
                self.exchange_started = now;
                self.retry = FIRST_RETRY;
                self.next_send = now;
                None
            }
            (State::Requesting { address, .. }, DhcpMessageType::Ack) => {
                let Some(lease) = self.lease_of(&repr, src_mac) else {
                    self.malformed += 1;
                    return None;
                };
                if lease.address != address {
                    self.malformed += 1;
                    return None;
                }
                self.state = State::Bound(lease.clone());
                Some(Event::Leased(lease))
            }
            (State::Renewing(old) | State::Rebinding(old), DhcpMessageType::Ack) => {
                let Some(lease) = self.lease_of(&repr, src_mac) else {
                    self.malformed += 1;
                    return None;
                };
                if lease.address != old.address {
                    self.start_over(now);
                    return Some(Event::Lost {
                        address: old.address,
                        why: "the server renewed with a different address",
                    });
                }
                self.state = State::Bound(lease.clone());
                Some(Event::Renewed(lease))
            }
            (State::Requesting { .. }, DhcpMessageType::Nak) => {
                self.start_over(now);
                None
            }
            (State::Renewing(old) | State::Rebinding(old), DhcpMessageType::Nak) => {
                self.start_over(now);
                Some(Event::Lost {
                    address: old.address,
                    why: "the server refused the renewal (NAK)",
                })
            }
            _ => None,
        }
    }

    /// The lease an ACK gives, if it can be trusted. Its times count from the first REQUEST of
    /// the exchange (RFC 2131 4.4.1).
    fn lease_of(&self, repr: &DhcpRepr<'_>, server_mac: [u8; 6]) -> Option<Lease> {
        let server = repr.server_identifier?;
        if !usable_host(repr.your_ip, repr) || !is_unicast_ip(server) {
            return None;
        }
        let prefix = match repr.subnet_mask {
            Some(mask) => mask_prefix(mask)?,
            None => 24,
        };
        let duration = repr
            .lease_duration
            .map_or(DEFAULT_LEASE, |s| Duration::from_secs(u64::from(s)));
        if duration.is_zero() {
            return None;
        }
        // RFC 2131 4.4.5: T1 = 0.5 lease, T2 = 0.875 lease unless given (and sensible).
        let renew = repr
            .renew_duration
            .map(|s| Duration::from_secs(u64::from(s)))
            .filter(|t| *t <= duration)
            .unwrap_or(duration / 2);
        let rebind = repr
            .rebind_duration
            .map(|s| Duration::from_secs(u64::from(s)))
            .filter(|t| *t <= duration && *t >= renew)
            .unwrap_or_else(|| (duration * 7 / 8).max(renew));
        Some(Lease {
            address: repr.your_ip,
            prefix,
            gateway: repr.router.filter(|r| is_unicast_ip(*r)),
            dns_servers: repr
                .dns_servers
                .iter()
                .flat_map(|v| v.iter().copied())
                .filter(|a| is_unicast_ip(*a))
                .collect(),
            server,
            server_mac: if server_mac[0] & 1 == 0 {
                server_mac
            } else {
                BROADCAST_MAC
            },
            duration,
            renew,
            rebind,
            acquired: self.exchange_started,
        })
    }

    /// A DHCP message of this client in an Ethernet frame. `lease`: renewing (`false`,
    /// unicast to the server) or rebinding/releasing from the leased address; otherwise from
    /// 0.0.0.0 to the broadcast address, asking for `requested` from `server` if given.
    fn frame(
        &self,
        message_type: DhcpMessageType,
        lease: Option<(&Lease, bool)>,
        requested: Option<Ipv4Addr>,
        server: Option<Ipv4Addr>,
    ) -> Option<Vec<u8>> {
        let client_ip = lease.map_or(Ipv4Addr::UNSPECIFIED, |(l, _)| l.address);
        let server_identifier = match message_type {
            DhcpMessageType::Release => lease.map(|(l, _)| l.server),
            _ => server,
        };
        let own_id = self
            .client_id
            .as_deref()
            .map(|data| smoltcp::wire::DhcpOption { kind: 61, data });
        let own_id = own_id.as_slice();
        let repr = DhcpRepr {
            message_type,
            transaction_id: self.xid,
            secs: 0,
            client_hardware_address: EthernetAddress(self.mac),
            client_ip,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: requested,
            client_identifier: own_id.is_empty().then_some(EthernetAddress(self.mac)),
            server_identifier,
            parameter_request_list: (message_type != DhcpMessageType::Release)
                .then_some(&PARAMETERS[..]),
            dns_servers: None,
            max_size: Some(1500),
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: own_id,
        };
        let mut payload = vec![0u8; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
            .ok()?;
        let (dst_mac, dst_ip) = match lease {
            Some((l, false)) => (l.server_mac, l.server),
            _ => (BROADCAST_MAC, Ipv4Addr::BROADCAST),
        };
        let builder = PacketBuilder::ethernet2(self.mac, dst_mac)
            .ipv4(client_ip.octets(), dst_ip.octets(), TTL)
            .udp(DHCP_CLIENT_PORT, DHCP_SERVER_PORT);
        let mut out = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut out, &payload).ok()?;
        Some(out)
    }
}

/// Half the time from `now` to `until`, at least [`MIN_RENEW_RETRY`] (RFC 2131 4.4.5).
fn half_until(now: Duration, until: Duration) -> Duration {
    (until.saturating_sub(now) / 2).max(MIN_RENEW_RETRY)
}

fn is_unicast_ip(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
}

/// Whether the server's `your_ip` can be a host's address on the subnet it gives.
fn usable_host(a: Ipv4Addr, repr: &DhcpRepr<'_>) -> bool {
    let prefix = match repr.subnet_mask {
        Some(mask) => match mask_prefix(mask) {
            Some(p) => p,
            None => return false,
        },
        None => 24,
    };
    is_unicast_ip(a) && crate::config::check_host_address(a, prefix).is_ok()
}

/// The prefix length of a contiguous subnet mask of 1 to 32 bits.
pub fn mask_prefix(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    (ones >= 1 && m.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// The source MAC and UDP payload of a frame from a DHCP server port to the client port.
fn dhcp_payload(frame: &[u8]) -> Option<([u8; 6], &[u8])> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(LinkSlice::Ethernet2(eth)) = &packet.link else {
        return None;
    };
    let Some(NetSlice::Ipv4(ip)) = &packet.net else {
        return None;
    };
    if ip.is_payload_fragmented() {
        return None;
    }
    let Some(TransportSlice::Udp(udp)) = &packet.transport else {
        return None;
    };
    if udp.source_port() != DHCP_SERVER_PORT || udp.destination_port() != DHCP_CLIENT_PORT {
        return None;
    }
    Some((eth.source(), udp.payload()))
}

/// Whether a frame is a DHCP server's message to a client (any client): what netd's host
/// stack hands its DHCP clients rather than answering.
pub fn is_dhcp_reply(frame: &[u8]) -> bool {
    dhcp_payload(frame).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const OFFERED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 55);
    const S: fn(u64) -> Duration = Duration::from_secs;

    /// The DHCP message in a frame the client sent, with the frame's IPv4 source and
    /// destination and Ethernet destination.
    fn sent(frame: &[u8]) -> (DhcpRepr<'_>, Ipv4Addr, Ipv4Addr, [u8; 6]) {
        let packet = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(LinkSlice::Ethernet2(eth)) = &packet.link else {
            panic!("not ethernet")
        };
        let Some(NetSlice::Ipv4(ip)) = &packet.net else {
            panic!("not ipv4")
        };
        let Some(TransportSlice::Udp(udp)) = &packet.transport else {
            panic!("not udp")
        };
        assert_eq!(eth.source(), MAC);
        assert_eq!((udp.source_port(), udp.destination_port()), (68, 67));
        let start = frame.len() - udp.payload().len();
        let packet = Box::leak(Box::new(DhcpPacket::new_checked(&frame[start..]).unwrap()));
        (
            DhcpRepr::parse(packet).unwrap(),
            ip.header().source_addr(),
            ip.header().destination_addr(),
            eth.destination(),
        )
    }

    /// A server's reply to transaction `xid`.
    fn reply(xid: u32, kind: DhcpMessageType, yiaddr: Ipv4Addr, lease: u32) -> Vec<u8> {
        netmux_testkit::dhcp::ServerReply {
            kind,
            xid,
            chaddr: MAC,
            yiaddr,
            lease_secs: lease,
            server: SERVER,
            server_mac: SERVER_MAC,
            eth_dst: BROADCAST_MAC,
            ip_dst: Ipv4Addr::BROADCAST,
        }
        .frame()
    }

    fn udp_frame(payload: &[u8], sport: u16, dport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(SERVER_MAC, BROADCAST_MAC)
            .ipv4(SERVER.octets(), [255; 4], 64)
            .udp(sport, dport);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    /// Runs DISCOVER → OFFER → REQUEST → ACK at time `t`, returning the client bound.
    fn bound(lease: u32) -> (Client, Lease) {
        let mut c = Client::new(MAC, 7);
        let (frame, ev) = c.poll(S(0));
        assert_eq!(ev, None);
        let frame = frame.expect("a DISCOVER at once");
        let (d, src, dst, dmac) = sent(&frame);
        assert_eq!(d.message_type, DhcpMessageType::Discover);
        assert_eq!(
            (src, dst, dmac),
            (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, BROADCAST_MAC)
        );
        let xid = d.transaction_id;
        assert_eq!(
            c.receive(&reply(xid, DhcpMessageType::Offer, OFFERED, lease), S(1)),
            None
        );
        let (frame, _) = c.poll(S(1));
        let (r, src, dst, _) = sent(frame.as_ref().expect("a REQUEST at once"));
        assert_eq!(r.message_type, DhcpMessageType::Request);
        assert_eq!(
            (r.requested_ip, r.server_identifier),
            (Some(OFFERED), Some(SERVER))
        );
        assert_eq!((src, dst), (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST));
        let Some(Event::Leased(l)) =
            c.receive(&reply(xid, DhcpMessageType::Ack, OFFERED, lease), S(1))
        else {
            panic!("no lease")
        };
        (c, l)
    }

    #[test]
    fn discover_offer_request_ack_gives_the_lease_with_its_options() {
        let (c, l) = bound(30);
        assert_eq!(l.address, OFFERED);
        assert_eq!(l.prefix, 24);
        assert_eq!(l.gateway, Some(SERVER));
        assert_eq!(l.dns_servers, vec![SERVER]);
        assert_eq!((l.server, l.server_mac), (SERVER, SERVER_MAC));
        assert_eq!(
            (l.duration, l.renew, l.rebind),
            (S(30), S(15), Duration::from_millis(26_250))
        );
        assert_eq!(c.lease(), Some(&l));
        assert_eq!(c.deadline(), Some(l.acquired + S(15)));
        assert_eq!(c.malformed, 0);
    }

    #[test]
    fn discovers_are_retransmitted_with_backoff() {
        let mut c = Client::new(MAC, 1);
        assert!(c.poll(S(0)).0.is_some());
        assert!(c.poll(S(1)).0.is_none());
        assert!(c.poll(S(2)).0.is_some());
        assert!(c.poll(S(5)).0.is_none());
        assert!(c.poll(S(6)).0.is_some());
        assert_eq!(c.deadline(), Some(S(14)));
    }

    #[test]
    fn renewal_at_t1_is_unicast_from_the_address_and_an_ack_renews() {
        let (mut c, l) = bound(30);
        assert_eq!(c.poll(S(10)), (None, None));
        let (frame, ev) = c.poll(l.acquired + S(15));
        assert_eq!(ev, None);
        let (r, src, dst, dmac) = sent(frame.as_ref().unwrap());
        assert_eq!(r.message_type, DhcpMessageType::Request);
        assert_eq!((src, dst, dmac), (OFFERED, SERVER, SERVER_MAC));
        assert_eq!((r.client_ip, r.requested_ip), (OFFERED, None));
        assert!(matches!(c.state(), State::Renewing(_)));
        let ev = c.receive(
            &reply(r.transaction_id, DhcpMessageType::Ack, OFFERED, 30),
            S(16),
        );
        let Some(Event::Renewed(n)) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(n.acquired, l.acquired + S(15));
        assert!(matches!(c.state(), State::Bound(_)));
    }

    #[test]
    fn no_answer_rebinds_at_t2_by_broadcast_then_loses_the_lease_and_starts_over() {
        let (mut c, l) = bound(30);
        let mut t = l.acquired;
        let mut lost = None;
        let mut rebinding_seen = false;
        while t < l.acquired + S(40) {
            let (frame, ev) = c.poll(t);
            if let Some(f) = frame {
                let (r, src, dst, _) = sent(&f);
                if t >= l.acquired + l.rebind && t < l.acquired + S(30) {
                    assert_eq!((src, dst), (OFFERED, Ipv4Addr::BROADCAST));
                    assert_eq!(r.message_type, DhcpMessageType::Request);
                    rebinding_seen = true;
                }
            }
            if let Some(e) = ev {
                lost = Some((t, e));
                break;
            }
            t += Duration::from_millis(250);
        }
        assert!(rebinding_seen);
        let (t, e) = lost.expect("the lease is lost");
        assert_eq!(t, l.acquired + S(30));
        assert!(matches!(e, Event::Lost { address, .. } if address == OFFERED));
        assert_eq!(c.lease(), None);
        assert_eq!(*c.state(), State::Selecting);
        let (frame, _) = c.poll(t);
        assert_eq!(
            sent(&frame.unwrap()).0.message_type,
            DhcpMessageType::Discover
        );
    }

    #[test]
    fn a_nak_on_renewal_loses_the_lease() {
        let (mut c, l) = bound(30);
        let (frame, _) = c.poll(l.acquired + S(15));
        let xid = sent(frame.as_ref().unwrap()).0.transaction_id;
        let ev = c.receive(
            &reply(xid, DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED, 0),
            S(16),
        );
        assert!(matches!(ev, Some(Event::Lost { address, .. }) if address == OFFERED));
        assert_eq!(*c.state(), State::Selecting);
    }

    #[test]
    fn release_sends_a_release_to_the_server_and_then_nothing() {
        let (mut c, _) = bound(30);
        let f = c.release().unwrap();
        let (r, src, dst, _) = sent(&f);
        assert_eq!(r.message_type, DhcpMessageType::Release);
        assert_eq!(
            (src, dst, r.client_ip, r.server_identifier),
            (OFFERED, SERVER, OFFERED, Some(SERVER))
        );
        assert_eq!(c.poll(S(100)), (None, None));
        assert_eq!(c.deadline(), None);
        assert_eq!(Client::new(MAC, 1).release(), None);
    }

    #[test]
    fn malformed_or_foreign_replies_are_not_trusted() {
        let mut c = Client::new(MAC, 3);
        let (frame, _) = c.poll(S(0));
        let xid = sent(&frame.unwrap()).0.transaction_id;
        // Another transaction: ignored, not counted.
        assert_eq!(
            c.receive(&reply(xid ^ 1, DhcpMessageType::Offer, OFFERED, 30), S(0)),
            None
        );
        assert_eq!(c.malformed, 0);
        // Offers of addresses no host can have.
        for bad in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::new(192, 0, 2, 255),
        ] {
            assert_eq!(
                c.receive(&reply(xid, DhcpMessageType::Offer, bad, 30), S(0)),
                None
            );
        }
        assert_eq!(c.malformed, 4);
        assert_eq!(*c.state(), State::Selecting);
        // Garbage after the UDP header, truncated messages, and not-DHCP frames.
        let good = reply(xid, DhcpMessageType::Offer, OFFERED, 30);
        for cut in [0, 1, 42, 100, 240, 250, good.len() - 1] {
            let _ = c.receive(&good[..cut], S(0));
        }
        let _ = c.receive(&udp_frame(&[0xff; 300], 67, 68), S(0));
        assert!(c.malformed >= 5);
        assert_eq!(c.receive(&udp_frame(&[0; 300], 53, 68), S(0)), None);
        assert_eq!(*c.state(), State::Selecting);
        // An ACK while selecting: ignored.
        assert_eq!(
            c.receive(&reply(xid, DhcpMessageType::Ack, OFFERED, 30), S(0)),
            None
        );
        assert_eq!(c.lease(), None);
    }

    #[test]
    fn an_ack_of_another_address_than_requested_is_refused() {
        let mut c = Client::new(MAC, 9);
        let (frame, _) = c.poll(S(0));
        let xid = sent(&frame.unwrap()).0.transaction_id;
        c.receive(&reply(xid, DhcpMessageType::Offer, OFFERED, 30), S(0));
        let _ = c.poll(S(0));
        let other = Ipv4Addr::new(192, 0, 2, 56);
        assert_eq!(
            c.receive(&reply(xid, DhcpMessageType::Ack, other, 30), S(0)),
            None
        );
        assert_eq!(c.malformed, 1);
        // Unanswered REQUESTs end in a new DISCOVER.
        let mut t = S(0);
        let mut discover = false;
        while t < S(120) && !discover {
            t += S(1);
            if let (Some(f), _) = c.poll(t) {
                discover = sent(&f).0.message_type == DhcpMessageType::Discover;
            }
        }
        assert!(discover);
    }

    #[test]
    fn a_client_id_of_its_own_replaces_the_mac_in_option_61() {
        let id = Client::name_client_id("tenant-b");
        assert_eq!(&id[..8], b"\0netmux:");
        let mut c = Client::new(MAC, 5).with_client_id(id.clone());
        let (frame, _) = c.poll(S(0));
        let frame = frame.unwrap();
        let (d, ..) = sent(&frame);
        assert_eq!(d.client_identifier, None);
        // Ethernet, IPv4 (no options) and UDP headers: 42 bytes.
        let packet = DhcpPacket::new_checked(&frame[42..]).unwrap();
        let own: Vec<Vec<u8>> = packet
            .options()
            .filter(|o| o.kind == 61)
            .map(|o| o.data.to_vec())
            .collect();
        assert_eq!(own, vec![id]);
        // Without one, the MAC is the identifier.
        let mut c = Client::new(MAC, 5);
        let (frame, _) = c.poll(S(0));
        let frame = frame.unwrap();
        assert_eq!(sent(&frame).0.client_identifier, Some(EthernetAddress(MAC)));
    }

    #[test]
    fn masks_give_prefixes_and_holes_are_refused() {
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_prefix(Ipv4Addr::new(128, 0, 0, 0)), Some(1));
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(mask_prefix(Ipv4Addr::new(0, 0, 0, 0)), None);
    }
}
