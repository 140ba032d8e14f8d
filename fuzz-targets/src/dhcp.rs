//! F11: any frames received by netd's DHCPv4 client (`netmux_netd::dhcp::Client`), in every
//! state it reaches: the input is a sequence of [`crate::Step`]s, polls at times that move
//! forwards (by seconds, or straight to the client's next deadline) and received frames, an
//! aimed one with the transaction id and hardware address of the DHCP message it would carry
//! made the client's current ones (so a server's OFFER or ACK, or any mutation of one, reaches
//! the client's states past selecting).
//!
//! Promises: never a panic; whatever lease the client holds is a usable host address — not in
//! 0.0.0.0/8, loopback, multicast, class E or the limited broadcast, nor its subnet's network or
//! broadcast address when the subnet has room for hosts, with a prefix of 1 to 32 — from a
//! unicast server, with a gateway and DNS servers that are unicast, a lease longer than zero
//! and T1 <= T2 <= the lease; an event says exactly what happened to the lease (`Leased` is the
//! lease now held, of the address the client asked for; `Renewed` keeps the address; `Lost`
//! names the address it had and leaves none).

use std::net::Ipv4Addr;
use std::time::Duration;

use netmux_netd::dhcp::{Client, Event, Lease, State};

use crate::Step;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const SEED: u32 = 0x5eed;
/// Ethernet, IPv4 without options and UDP before the DHCP message of a frame the client sends.
const SENT_HEADERS: usize = 14 + 20 + 8;

/// `bytes` with the transaction id and hardware address of the DHCP message it would carry
/// (after Ethernet, the IPv4 header its IHL says, and UDP) made the client's.
fn aimed(bytes: &[u8], xid: u32) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    let ihl = bytes.get(14).map_or(20, |b| usize::from(b & 0x0f) * 4);
    let dhcp = 14 + ihl + 8;
    if let Some(x) = bytes.get_mut(dhcp + 4..dhcp + 8) {
        x.copy_from_slice(&xid.to_be_bytes());
    }
    if let Some(m) = bytes.get_mut(dhcp + 28..dhcp + 34) {
        m.copy_from_slice(&MAC);
    }
    bytes
}

fn unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
}

/// The promises about a lease the client holds.
fn check_lease(l: &Lease) {
    let a = l.address;
    assert!((1..=32).contains(&l.prefix), "prefix /{}: {l:?}", l.prefix);
    let o = a.octets();
    assert!(
        o[0] != 0 && !a.is_loopback() && !a.is_multicast() && o[0] < 240,
        "no host's address: {l:?}"
    );
    if l.prefix <= 30 {
        let host_bits = u32::from(a) & (u32::MAX >> l.prefix);
        assert!(
            host_bits != 0 && host_bits != u32::MAX >> l.prefix,
            "the subnet's network or broadcast address: {l:?}"
        );
    }
    assert!(
        netmux_netd::config::check_host_address(a, l.prefix).is_ok(),
        "{l:?}"
    );
    assert!(unicast(l.server), "server: {l:?}");
    assert!(l.gateway.is_none_or(unicast), "gateway: {l:?}");
    assert!(l.dns_servers.iter().all(|d| unicast(*d)), "dns: {l:?}");
    assert!(!l.duration.is_zero(), "a lease of no time: {l:?}");
    assert!(
        l.renew <= l.rebind && l.rebind <= l.duration,
        "T1 <= T2 <= lease: {l:?}"
    );
}

/// F11's body.
pub fn dhcp(data: &[u8]) {
    let _ = run(data);
}

/// Runs the steps of `data`, checking every promise; the events the client gave.
fn run(data: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut client = Client::new(MAC, SEED);
    let mut now = Duration::ZERO;
    let mut xid = SEED;
    for step in crate::steps(data) {
        let before = client.state().clone();
        let held = client.lease().cloned();
        let event = match step {
            Step::Wait(_) | Step::Deadline => {
                now = match step {
                    Step::Wait(s) => now + Duration::from_secs(u64::from(s)),
                    _ => client.deadline().map_or(now, |d| d.max(now)),
                };
                let (frame, event) = client.poll(now);
                if let Some(frame) = frame {
                    assert_eq!(frame[6..12], MAC, "sent from the client's MAC");
                    let x = frame
                        .get(SENT_HEADERS + 4..SENT_HEADERS + 8)
                        .expect("a sent frame holds a DHCP message");
                    xid = u32::from_be_bytes(x.try_into().expect("four bytes"));
                }
                event
            }
            Step::Frame { bytes, aim: true } => client.receive(&aimed(bytes, xid), now),
            Step::Frame { bytes, aim: false } => client.receive(bytes, now),
        };
        if let Some(l) = client.lease() {
            check_lease(l);
        }
        match event.clone() {
            Some(Event::Leased(l)) => {
                assert_eq!(Some(&l), client.lease(), "a new lease is the one held");
                let State::Requesting { address, .. } = before else {
                    panic!("a lease taken while {before:?}");
                };
                assert_eq!(l.address, address, "the address asked for");
            }
            Some(Event::Renewed(l)) => {
                assert_eq!(Some(&l), client.lease(), "a renewed lease is the one held");
                let old = held.expect("a lease renewed was held");
                assert_eq!(l.address, old.address, "a renewal keeps the address");
            }
            Some(Event::Lost { address, why }) => {
                assert!(!why.is_empty());
                assert_eq!(held.map(|l| l.address), Some(address), "the address it had");
                assert!(client.lease().is_none(), "a lost lease is not held");
            }
            None => {}
        }
        events.extend(event);
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let path = format!("{}/../fuzz/seeds/dhcp/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn the_seeds_reach_every_state() {
        let events = run(&seed("offer_request_ack_renew_rebind_expire"));
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| match e {
                Event::Leased(_) => "leased",
                Event::Renewed(_) => "renewed",
                Event::Lost { .. } => "lost",
            })
            .collect();
        assert_eq!(kinds, ["leased", "renewed", "lost"], "{events:?}");
        assert!(run(&seed("offer_then_nak")).is_empty());
        assert!(run(&seed("offer_of_the_broadcast_address")).is_empty());
    }
}
