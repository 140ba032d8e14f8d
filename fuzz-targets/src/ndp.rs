//! F12: any frames received by netd's IPv6 neighbour discovery: SLAAC and duplicate address
//! detection (`netmux_netd::slaac::Slaac`, with autoconfiguration and a static address) and
//! the host's answers (`netmux_netd::host::Responder`, which answers neighbour solicitations).
//! The input is a sequence of [`crate::Step`]s: polls at times that move forwards (by
//! milliseconds, or past the probe and solicitation intervals) and received frames, an aimed
//! one with the target of the neighbour solicitation or advertisement it would carry made the
//! address the machine probed last (so a conflict with a tentative address is cheap to find).
//!
//! Promises: never a panic; an address SLAAC takes from a router is a global unicast address of
//! a /64 some received frame spelled (the prefix's eight bytes) with netd's own interface id,
//! never one refused as a duplicate, never taken twice; any other address taken is the
//! link-local or the static one; the host's neighbour advertisements come from its MAC, with
//! hop limit 255, for one of its addresses.

use std::net::Ipv6Addr;
use std::time::Duration;

use netmux_netd::host::{AnswerKind, Responder};
use netmux_netd::slaac::{Event, Slaac, DAD_WAIT, RS_INTERVAL};

use crate::Step;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 1);
const STATIC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x10);

/// The target of the last probe among `frames` (what the machine sent).
fn probed(frames: &[Vec<u8>]) -> Option<Ipv6Addr> {
    frames.iter().rev().find_map(|f| {
        (f.get(54) == Some(&135))
            .then(|| f.get(62..78))
            .flatten()
            .map(|t| Ipv6Addr::from(<[u8; 16]>::try_from(t).expect("sixteen bytes")))
    })
}

/// F12's body.
pub fn ndp(data: &[u8]) {
    let _ = run(data);
}

/// Runs the steps of `data`, checking every promise; the events the machine gave.
fn run(data: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut slaac = Slaac::new(MAC, LINK_LOCAL, true, Some((STATIC, 64)));
    let mut host = Responder::new(MAC, None).with_ipv6_addresses([LINK_LOCAL, STATIC]);
    let mut now = Duration::ZERO;
    let mut last_probe: Option<Ipv6Addr> = None;
    let mut received: Vec<Vec<u8>> = Vec::new();
    let mut assigned: Vec<Ipv6Addr> = Vec::new();
    let mut refused: Vec<Ipv6Addr> = Vec::new();
    for step in crate::steps(data) {
        let frame = match step {
            Step::Wait(_) | Step::Deadline => {
                now += match step {
                    Step::Wait(ms) => Duration::from_millis(u64::from(ms)),
                    _ => DAD_WAIT.max(RS_INTERVAL),
                };
                let sent = slaac.poll(now);
                for f in &sent {
                    assert_eq!(f[6..12], MAC, "sent from the host's MAC");
                }
                last_probe = probed(&sent).or(last_probe);
                None
            }
            Step::Frame { bytes, aim } => {
                let mut frame = bytes.to_vec();
                // Aimed: the target of a neighbour solicitation or advertisement (after
                // Ethernet, IPv6 and the ICMPv6 header) is the address probed last.
                if let (true, Some(t), Some(at)) = (aim, last_probe, frame.get_mut(62..78)) {
                    at.copy_from_slice(&t.octets());
                }
                Some(frame)
            }
        };
        if let Some(frame) = frame {
            slaac.receive(&frame);
            if let Some((kind, answer)) = host.answer(&frame, now, |_, _| true) {
                assert_eq!(answer[6..12], MAC, "answered from the host's MAC");
                if kind == AnswerKind::NeighborAdvertisement {
                    assert_eq!(answer[12..14], [0x86, 0xdd]);
                    assert_eq!(answer[21], 255, "hop limit 255");
                    assert_eq!(answer[54], 136, "a neighbour advertisement");
                    let target = Ipv6Addr::from(
                        <[u8; 16]>::try_from(&answer[62..78]).expect("sixteen bytes"),
                    );
                    assert!(
                        [LINK_LOCAL, STATIC].contains(&target),
                        "advertised {target}, not the host's"
                    );
                }
            }
            received.push(frame);
        }
        for event in slaac.take_events() {
            events.push(event.clone());
            match event {
                Event::Assigned {
                    address,
                    prefix,
                    autoconfigured,
                } => {
                    assert!(!assigned.contains(&address), "{address} taken twice");
                    assert!(!refused.contains(&address), "{address} was refused");
                    if autoconfigured {
                        assert_eq!(prefix, 64);
                        let o = address.octets();
                        assert_eq!(o[8..], LINK_LOCAL.octets()[8..], "netd's interface id");
                        assert!(
                            !(address.is_multicast()
                                || address.is_loopback()
                                || address.is_unspecified()
                                || address.segments()[0] & 0xffc0 == 0xfe80),
                            "{address} is not global unicast"
                        );
                        assert!(
                            received.iter().any(|f| f.windows(8).any(|w| w == &o[..8])),
                            "{address}: no frame advertised its /64"
                        );
                    } else {
                        assert!(
                            [LINK_LOCAL, STATIC].contains(&address),
                            "{address} neither the link-local nor the static address"
                        );
                    }
                    assigned.push(address);
                }
                Event::Duplicate { address } => {
                    assert!(!assigned.contains(&address), "{address} refused once taken");
                    refused.push(address);
                }
                Event::Router(_) => {}
            }
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let path = format!("{}/../fuzz/seeds/ndp/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn assigned(events: &[Event]) -> Vec<Ipv6Addr> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Assigned {
                    address,
                    autoconfigured: true,
                    ..
                } => Some(*address),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_seeds_take_an_address_and_refuse_duplicates() {
        let slaac_address: Ipv6Addr = "2001:db8:1::ff:fe00:1".parse().unwrap();
        let events = run(&seed("ra_prefix_probed_then_assigned"));
        assert_eq!(assigned(&events), [slaac_address], "{events:?}");
        assert!(events.contains(&Event::Router(Some(
            "fe80::5054:ff:feab:cdef".parse().unwrap()
        ))));
        assert!(events.contains(&Event::Router(None)));
        let events = run(&seed("probe_answered_is_a_duplicate"));
        assert!(assigned(&events).is_empty(), "{events:?}");
        assert!(events.iter().any(|e| matches!(e, Event::Duplicate { .. })));
        let events = run(&seed("another_node_probes_the_same_address"));
        assert!(
            events.contains(&Event::Duplicate { address: STATIC }),
            "{events:?}"
        );
        assert!(assigned(&events).is_empty(), "{events:?}");
        let events = run(&seed("solicitations_for_the_host"));
        assert!(assigned(&events).is_empty(), "{events:?}");
    }
}
