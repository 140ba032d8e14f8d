//! IPv6 stateless address autoconfiguration (RFC 4862) and duplicate address detection for
//! an instance's global address, on netd's host queue: a pure state machine with
//! the time passed in, no I/O ([`Slaac::receive`] takes frames, [`Slaac::poll`] gives the
//! frames to send, [`Slaac::take_events`] what changed).
//!
//! - **Router solicitations**: with `--ip6 slaac`, up to [`MAX_RS`] router solicitations
//!   [`RS_INTERVAL`] apart from netd's link-local address until an address is taken.
//! - **Router advertisements** (hop limit 255, from a link-local address, not from the host's
//!   own MAC): a prefix information option of a /64 with the autonomous flag, a valid lifetime
//!   above 0 and a preferred lifetime not above it, for a global prefix, gives the candidate
//!   address: the prefix and netd's own interface id (that of its link-local address, so never
//!   the kernel's EUI-64 one on a shared MAC). A router lifetime above 0 makes the
//!   advertisement's source the default router; 0 withdraws it (with a static address too:
//!   every instance with a global address learns its default router). Advertisements
//!   unicast to another MAC (another instance's) are not this host's.
//! - **Duplicate address detection** (RFC 4862 5.4) of every address: netd's link-local one
//!   and the static `--ip6` one at start (netd answers for them meanwhile), a SLAAC one before
//!   netd answers for it: a neighbour solicitation from `::` for it, then
//!   [`DAD_WAIT`]; a neighbour advertisement for it, or another node's solicitation from `::`
//!   for it meanwhile, means another node has it: the address is refused
//!   ([`Event::Duplicate`], logged by netd) and never tried again.
//! - No input makes it panic; frames it cannot parse are ignored.

use std::net::Ipv6Addr;
use std::time::Duration;

use etherparse::{Icmpv6Type, LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

/// How long a tentative address waits for a conflict after its solicitation
/// (RFC 4861 `RETRANS_TIMER`, one transmission: `DupAddrDetectTransmits` = 1).
pub const DAD_WAIT: Duration = Duration::from_secs(1);
/// Router solicitations sent before giving up waiting (RFC 4861 `MAX_RTR_SOLICITATIONS`).
pub const MAX_RS: u32 = 3;
/// Between router solicitations (RFC 4861 `RTR_SOLICITATION_INTERVAL`).
pub const RS_INTERVAL: Duration = Duration::from_secs(4);

/// The hop limit of every neighbour discovery message (RFC 4861).
const ND_HOP_LIMIT: u8 = 255;
/// The prefix information option (RFC 4861 4.6.2).
const OPT_PREFIX_INFORMATION: u8 = 3;
/// The source link-layer address option (RFC 4861 4.6.1).
const OPT_SOURCE_LL: u8 = 1;
/// The autonomous address-configuration flag of a prefix information option.
const FLAG_AUTONOMOUS: u8 = 0x40;

/// What changed, for netd to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The address passed duplicate address detection: the host's from now on.
    Assigned {
        /// The address.
        address: Ipv6Addr,
        /// Its prefix length.
        prefix: u8,
        /// Whether it came from a router advertisement (else it is the static address).
        autoconfigured: bool,
    },
    /// Another node has this address: the host must not use it.
    Duplicate {
        /// The address.
        address: Ipv6Addr,
    },
    /// The default router a router advertisement names (`None`: withdrawn).
    Router(Option<Ipv6Addr>),
}

/// An address under duplicate address detection.
#[derive(Clone, Copy, Debug)]
struct Tentative {
    address: Ipv6Addr,
    prefix: u8,
    autoconfigured: bool,
    /// When its solicitation went out (`None`: not yet).
    probed_at: Option<Duration>,
}

/// The state machine. See the module documentation.
#[derive(Clone, Debug)]
pub struct Slaac {
    mac: [u8; 6],
    link_local: Ipv6Addr,
    autoconfigure: bool,
    tentative: Vec<Tentative>,
    assigned: Vec<Ipv6Addr>,
    refused: Vec<Ipv6Addr>,
    router: Option<Ipv6Addr>,
    /// Addresses from router advertisements assigned.
    autoconfigured: usize,
    rs_sent: u32,
    last_rs: Option<Duration>,
    events: Vec<Event>,
    /// Router advertisements ignored as malformed or not to be trusted.
    pub ignored: u64,
}

/// The solicited-node multicast address of `a` and its Ethernet address.
pub fn solicited_node(a: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
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

fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

impl Slaac {
    /// A machine for a host with this MAC and link-local address (whose interface id SLAAC
    /// addresses take); with `autoconfigure` it solicits routers and takes a prefix they
    /// advertise; the link-local address and `static_address` (`--ip6`) are probed at once.
    pub fn new(
        mac: [u8; 6],
        link_local: Ipv6Addr,
        autoconfigure: bool,
        static_address: Option<(Ipv6Addr, u8)>,
    ) -> Slaac {
        Slaac {
            mac,
            link_local,
            autoconfigure,
            tentative: std::iter::once((link_local, 64))
                .chain(static_address)
                .map(|(address, prefix)| Tentative {
                    address,
                    prefix,
                    autoconfigured: false,
                    probed_at: None,
                })
                .collect(),
            assigned: Vec::new(),
            refused: Vec::new(),
            router: None,
            autoconfigured: 0,
            rs_sent: 0,
            last_rs: None,
            events: Vec::new(),
            ignored: 0,
        }
    }

    /// The address netd's interface id makes with a /64 `prefix`.
    pub fn address_for(&self, prefix: Ipv6Addr) -> Ipv6Addr {
        let mut o = prefix.octets();
        o[8..].copy_from_slice(&self.link_local.octets()[8..]);
        Ipv6Addr::from(o)
    }

    /// Takes in a received frame (anything: what is not neighbour discovery is ignored).
    pub fn receive(&mut self, frame: &[u8]) {
        let Ok(packet) = SlicedPacket::from_ethernet(frame) else {
            return;
        };
        let Some(LinkSlice::Ethernet2(eth)) = &packet.link else {
            return;
        };
        if eth.source() == self.mac || !packet.link_exts.is_empty() {
            return; // our own, or tagged
        }
        let dst = eth.destination();
        if dst[0] & 1 == 0 && dst != self.mac {
            return; // unicast to another host (another instance's solicited advertisement)
        }
        let (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) =
            (&packet.net, &packet.transport)
        else {
            return;
        };
        let header = ip.header();
        if header.hop_limit() != ND_HOP_LIMIT {
            return;
        }
        let src = header.source_addr();
        let payload = icmp.payload();
        match icmp.icmp_type() {
            Icmpv6Type::NeighborAdvertisement(_) => {
                if let Some(target) = payload.get(..16) {
                    let target = Ipv6Addr::from(<[u8; 16]>::try_from(target).unwrap_or([0; 16]));
                    self.conflict(target);
                }
            }
            Icmpv6Type::NeighborSolicitation if src.is_unspecified() => {
                if let Some(target) = payload.get(..16) {
                    let target = Ipv6Addr::from(<[u8; 16]>::try_from(target).unwrap_or([0; 16]));
                    // Another node probing the same tentative address (RFC 4862 5.4.3).
                    if self.tentative.iter().any(|t| t.address == target) {
                        self.conflict(target);
                    }
                }
            }
            Icmpv6Type::RouterAdvertisement(ra) => {
                if !is_link_local(&src) {
                    self.ignored += 1;
                    return;
                }
                self.advertisement(src, ra.router_lifetime, payload);
            }
            _ => {}
        }
    }

    /// An NA or a probe for `target`: a tentative address is refused.
    fn conflict(&mut self, target: Ipv6Addr) {
        let before = self.tentative.len();
        self.tentative.retain(|t| t.address != target);
        if self.tentative.len() != before {
            self.refused.push(target);
            self.events.push(Event::Duplicate { address: target });
        }
    }

    fn advertisement(&mut self, src: Ipv6Addr, router_lifetime: u16, payload: &[u8]) {
        // The payload starts with the reachable time and the retransmission timer.
        let Some(mut options) = payload.get(8..) else {
            self.ignored += 1;
            return;
        };
        let router = (router_lifetime > 0).then_some(src);
        if router != self.router && (router.is_some() || self.router == Some(src)) {
            self.router = router;
            self.events.push(Event::Router(router));
        }
        if !self.autoconfigure {
            return; // a static address: the advertisement names the default router only
        }
        while options.len() >= 2 {
            let (kind, len) = (options[0], usize::from(options[1]) * 8);
            if len == 0 || len > options.len() {
                self.ignored += 1;
                return;
            }
            let option = &options[..len];
            options = &options[len..];
            if kind != OPT_PREFIX_INFORMATION || len != 32 {
                continue;
            }
            let prefix_len = option[2];
            let flags = option[3];
            let valid = u32::from_be_bytes([option[4], option[5], option[6], option[7]]);
            let preferred = u32::from_be_bytes([option[8], option[9], option[10], option[11]]);
            let mut prefix = [0u8; 16];
            prefix.copy_from_slice(&option[16..32]);
            let prefix = Ipv6Addr::from(prefix);
            if prefix_len != 64
                || flags & FLAG_AUTONOMOUS == 0
                || valid == 0
                || preferred > valid
                || is_link_local(&prefix)
                || prefix.is_multicast()
                || prefix.is_unspecified()
                || prefix.is_loopback()
            {
                continue;
            }
            let address = self.address_for(prefix);
            let known = self.assigned.contains(&address)
                || self.refused.contains(&address)
                || self.tentative.iter().any(|t| t.address == address);
            if !known {
                self.tentative.push(Tentative {
                    address,
                    prefix: 64,
                    autoconfigured: true,
                    probed_at: None,
                });
            }
        }
    }

    /// The frames to send at `now`: router solicitations and duplicate address probes; moves
    /// an address whose wait passed without conflict to the assigned ones.
    pub fn poll(&mut self, now: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let nothing_yet = !self.autoconfigured_any();
        if self.autoconfigure
            && nothing_yet
            && self.rs_sent < MAX_RS
            && self
                .last_rs
                .is_none_or(|t| now.saturating_sub(t) >= RS_INTERVAL)
        {
            self.rs_sent += 1;
            self.last_rs = Some(now);
            let mut option = vec![OPT_SOURCE_LL, 1];
            option.extend_from_slice(&self.mac);
            let mut frame = Vec::new();
            let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
            if PacketBuilder::ethernet2(self.mac, [0x33, 0x33, 0, 0, 0, 2])
                .ipv6(self.link_local.octets(), all_routers.octets(), ND_HOP_LIMIT)
                .icmpv6(Icmpv6Type::RouterSolicitation)
                .write(&mut frame, &option)
                .is_ok()
            {
                out.push(frame);
            }
        }
        let mut done = Vec::new();
        for t in &mut self.tentative {
            match t.probed_at {
                None => {
                    t.probed_at = Some(now);
                    let (group, group_mac) = solicited_node(t.address);
                    let mut frame = Vec::new();
                    if PacketBuilder::ethernet2(self.mac, group_mac)
                        .ipv6(Ipv6Addr::UNSPECIFIED.octets(), group.octets(), ND_HOP_LIMIT)
                        .icmpv6(Icmpv6Type::NeighborSolicitation)
                        .write(&mut frame, &t.address.octets())
                        .is_ok()
                    {
                        out.push(frame);
                    }
                }
                Some(at) if now.saturating_sub(at) >= DAD_WAIT => done.push(*t),
                Some(_) => {}
            }
        }
        for t in done {
            self.tentative.retain(|x| x.address != t.address);
            self.assigned.push(t.address);
            self.autoconfigured += usize::from(t.autoconfigured);
            self.events.push(Event::Assigned {
                address: t.address,
                prefix: t.prefix,
                autoconfigured: t.autoconfigured,
            });
        }
        out
    }

    /// Whether an address from a router advertisement is assigned or being probed.
    fn autoconfigured_any(&self) -> bool {
        self.tentative.iter().any(|t| t.autoconfigured) || self.autoconfigured > 0
    }

    /// What changed since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

    fn ll() -> Ipv6Addr {
        "fe80::1234:5678:9abc:def0".parse().unwrap()
    }

    fn router() -> Ipv6Addr {
        "fe80::fe".parse().unwrap()
    }

    fn ra(src: Ipv6Addr, hops: u8, lifetime: u16, prefix: &str, len: u8, flags: u8) -> Vec<u8> {
        let prefix: Ipv6Addr = prefix.parse().unwrap();
        let mut body = vec![0u8; 8];
        body.extend_from_slice(&[OPT_PREFIX_INFORMATION, 4, len, flags]);
        body.extend_from_slice(&3600u32.to_be_bytes());
        body.extend_from_slice(&1800u32.to_be_bytes());
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&prefix.octets());
        let mut out = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(
                src.octets(),
                "ff02::1".parse::<Ipv6Addr>().unwrap().octets(),
                hops,
            )
            .icmpv6(Icmpv6Type::RouterAdvertisement(
                etherparse::icmpv6::RouterAdvertisementHeader {
                    cur_hop_limit: 64,
                    managed_address_config: false,
                    other_config: false,
                    router_lifetime: lifetime,
                },
            ))
            .write(&mut out, &body)
            .unwrap();
        out
    }

    fn na(target: Ipv6Addr) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(
                router().octets(),
                "ff02::1".parse::<Ipv6Addr>().unwrap().octets(),
                255,
            )
            .icmpv6(Icmpv6Type::NeighborAdvertisement(
                etherparse::icmpv6::NeighborAdvertisementHeader {
                    router: false,
                    solicited: false,
                    r#override: true,
                },
            ))
            .write(&mut out, &target.octets())
            .unwrap();
        out
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_prefix_from_a_router_becomes_an_address_after_its_probe_and_the_router_the_default() {
        let mut s = Slaac::new(MAC, ll(), true, None);
        let first = s.poll(Duration::ZERO);
        assert_eq!(first.len(), 2);
        assert_eq!(first[0][54], 133, "a router solicitation at once");
        assert_eq!(first[1][54], 135, "and the link-local address's probe");
        assert_eq!(first[1][62..78], ll().octets());
        assert!(s.poll(S).is_empty(), "the next one only after the interval");
        assert_eq!(
            s.take_events(),
            vec![Event::Assigned {
                address: ll(),
                prefix: 64,
                autoconfigured: false
            }]
        );
        s.receive(&ra(router(), 255, 1800, "2001:db8:1::", 64, 0xc0));
        assert_eq!(s.take_events(), vec![Event::Router(Some(router()))]);
        let want: Ipv6Addr = "2001:db8:1::1234:5678:9abc:def0".parse().unwrap();
        let probe = s.poll(2 * S);
        assert_eq!(probe.len(), 1);
        let p = &probe[0];
        assert_eq!(p[54], 135, "a neighbour solicitation");
        assert_eq!(p[22..38], [0; 16], "from ::");
        assert_eq!(p[62..78], want.octets(), "for the candidate");
        assert_eq!(p[..6], solicited_node(want).1);
        assert!(s.take_events().is_empty(), "tentative for a second");
        assert!(s.poll(2 * S + S / 2).is_empty());
        assert!(s.poll(3 * S).is_empty());
        assert_eq!(
            s.take_events(),
            vec![Event::Assigned {
                address: want,
                prefix: 64,
                autoconfigured: true
            }]
        );
        // The same advertisement again changes nothing; a lifetime of 0 withdraws the router.
        s.receive(&ra(router(), 255, 1800, "2001:db8:1::", 64, 0xc0));
        assert!(s.poll(5 * S).is_empty() && s.take_events().is_empty());
        s.receive(&ra(router(), 255, 0, "2001:db8:1::", 64, 0xc0));
        assert_eq!(s.take_events(), vec![Event::Router(None)]);
    }

    #[test]
    fn an_advertisement_for_the_tentative_address_refuses_it_for_good() {
        let global: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut s = Slaac::new(MAC, ll(), false, Some((global, 64)));
        assert_eq!(
            s.poll(Duration::ZERO).len(),
            2,
            "the probes of both addresses, and no RS without slaac"
        );
        s.receive(&na(global));
        assert_eq!(s.take_events(), vec![Event::Duplicate { address: global }]);
        assert!(s.poll(5 * S).is_empty());
        assert_eq!(
            s.take_events(),
            vec![Event::Assigned {
                address: ll(),
                prefix: 64,
                autoconfigured: false
            }],
            "the link-local address only"
        );
        // Another node's probe for the same tentative address is a conflict too.
        let mut s = Slaac::new(MAC, ll(), false, Some((global, 64)));
        s.poll(Duration::ZERO);
        let mut probe = Vec::new();
        let (group, group_mac) = solicited_node(global);
        PacketBuilder::ethernet2(ROUTER_MAC, group_mac)
            .ipv6([0; 16], group.octets(), 255)
            .icmpv6(Icmpv6Type::NeighborSolicitation)
            .write(&mut probe, &global.octets())
            .unwrap();
        s.receive(&probe);
        assert_eq!(s.take_events(), vec![Event::Duplicate { address: global }]);
        // Our own frames (the driver never loops them back, but a link might) are not.
        let mut s = Slaac::new(MAC, ll(), false, Some((global, 64)));
        for own in s.poll(Duration::ZERO) {
            s.receive(&own);
        }
        s.poll(S);
        assert_eq!(
            s.take_events(),
            vec![
                Event::Assigned {
                    address: ll(),
                    prefix: 64,
                    autoconfigured: false
                },
                Event::Assigned {
                    address: global,
                    prefix: 64,
                    autoconfigured: false
                }
            ]
        );
    }

    #[test]
    fn advertisements_that_cannot_give_an_address_are_ignored() {
        let mut s = Slaac::new(MAC, ll(), true, None);
        s.poll(Duration::ZERO);
        for frame in [
            ra(router(), 64, 0, "2001:db8:1::", 64, 0xc0), // routed
            ra(router(), 255, 0, "2001:db8:1::", 48, 0xc0), // not a /64
            ra(router(), 255, 0, "2001:db8:1::", 64, 0x80), // not autonomous
            ra(router(), 255, 0, "fe80::", 64, 0xc0),      // link-local
            ra(router(), 255, 0, "ff02::", 64, 0xc0),      // multicast
            ra(
                "2001:db8::fe".parse().unwrap(),
                255,
                0,
                "2001:db8:1::",
                64,
                0xc0,
            ),
        ] {
            s.receive(&frame);
        }
        assert!(s.poll(S / 2).is_empty());
        assert!(s.take_events().is_empty());
        assert_eq!(s.ignored, 1, "the one from a global source");
        let mut cut = ra(router(), 255, 0, "2001:db8:1::", 64, 0xc0);
        cut[14 + 40 + 16 + 1] = 9; // an option longer than the message
        s.receive(&cut);
        s.receive(&[0u8; 3]);
        assert!(s.poll(S).is_empty());
        // Without slaac, advertisements give the default router but no address.
        let mut s = Slaac::new(MAC, ll(), false, None);
        s.receive(&ra(router(), 255, 1800, "2001:db8:1::", 64, 0xc0));
        let frames = s.poll(Duration::ZERO);
        assert_eq!(frames.len(), 1, "the link-local address's probe only");
        assert_eq!(frames[0][54], 135);
        assert_eq!(s.take_events(), vec![Event::Router(Some(router()))]);
        assert!(s.poll(3 * S).is_empty());
    }

    #[test]
    fn an_advertisement_unicast_to_another_mac_is_not_this_hosts() {
        let mut s = Slaac::new(MAC, ll(), true, None);
        s.poll(Duration::ZERO);
        let _ = s.take_events();
        let mut other = ra(router(), 255, 1800, "2001:db8:1::", 64, 0xc0);
        other[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x77]);
        s.receive(&other);
        assert!(s.take_events().is_empty());
        assert!(s.poll(2 * S).is_empty(), "no candidate address probed");
        let _ = s.take_events(); // the link-local address, assigned
        let mut mine = other.clone();
        mine[..6].copy_from_slice(&MAC);
        s.receive(&mine);
        assert_eq!(s.take_events(), vec![Event::Router(Some(router()))]);
        assert_eq!(s.poll(3 * S).len(), 1, "the candidate's probe");
    }

    #[test]
    fn no_byte_of_an_advertisement_or_a_probe_answer_changed_or_cut_makes_it_panic() {
        let global: Ipv6Addr = "2001:db8::2".parse().unwrap();
        for frame in [
            ra(router(), 255, 1800, "2001:db8:1::", 64, 0xc0),
            na(global),
        ] {
            for at in 0..frame.len() {
                for value in [0u8, 1, 2, 3, 4, 8, 0x40, 0x80, 0xfe, 0xff] {
                    let mut s = Slaac::new(MAC, ll(), true, Some((global, 64)));
                    s.poll(Duration::ZERO);
                    let mut f = frame.clone();
                    f[at] = value;
                    s.receive(&f);
                    s.receive(&f[..at]);
                    s.poll(S);
                    s.poll(3 * S);
                    let _ = s.take_events();
                }
            }
        }
    }
}
