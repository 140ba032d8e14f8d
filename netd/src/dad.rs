//! Duplicate address detection for the host's static IPv4 address at start (RFC 5227).
//!
//! Before netd announces the default instance's address on an `afpacket:` link, it sends [`PROBE_NUM`] ARP probes (sender hardware address the link's MAC, sender IP
//! 0.0.0.0, target IP the address) on its host queue, [`PROBE_INTERVAL`] apart, and listens
//! until [`PROBE_WAIT_AFTER`] after the last. Anyone else who answers for the address (any
//! ARP with the address as its sender IP, a reply or a request) or probes for it at the same
//! time (a probe from 0.0.0.0 for the same target, from another MAC) is a conflict: netd
//! refuses to start, naming that MAC ([`Conflict`]). Otherwise it sends one gratuitous ARP
//! announcement (a request with sender and target IP the address) and goes on.
//!
//! The timing is shorter than RFC 5227's (probes 1 to 2 s apart after a random wait of up to
//! 1 s, then 2 s: about 6 s): 3 probes 200 ms apart and 300 ms more, 700 ms in all, so
//! that `netmux up` is not held up for seconds. A host that answers ARP at all answers within
//! that on a local link. A link that is down at start cannot be probed: netd says so (the
//! address was not checked) and starts as before, rather than refuse a link that comes up
//! later. Other links are not probed: a `tap:` device is made by the driver and its only
//! peer, this host's kernel, is configured after netmux starts (nothing would answer, and the
//! device is down until then); links without hardware (`virtual:`, `memory:`, `pcap:`) have
//! only what a test or file at the other end plays.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netmux_ring::ClientQueue;

/// How many probes are sent (RFC 5227 `PROBE_NUM`).
pub const PROBE_NUM: u32 = 3;
/// The pause between two probes (RFC 5227: `PROBE_MIN` to `PROBE_MAX`, 1 to 2 s; shortened).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// How long answers are awaited after the last probe (RFC 5227 `ANNOUNCE_WAIT`, 2 s;
/// shortened).
pub const PROBE_WAIT_AFTER: Duration = Duration::from_millis(300);

const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
/// Ethernet header and an Ethernet/IPv4 ARP body.
const ARP_FRAME_LEN: usize = 14 + 28;

/// Someone else has the address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the address {address} is in use on the link: {} {how} (RFC 5227 duplicate address \
     detection); give netd another address, or stop the host that has it",
    crate::instance::mac_text(*.mac)
)]
pub struct Conflict {
    /// The address.
    pub address: Ipv4Addr,
    /// The MAC of the host that has it, or probes for it.
    pub mac: [u8; 6],
    /// What it did: "answered an ARP probe for it", ...
    pub how: &'static str,
}

/// Why duplicate address detection did not clear the address.
#[derive(Debug, thiserror::Error)]
pub enum DadError {
    /// Someone else has it.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The host queue failed.
    #[error("probing for the host address on the host queue: {0}")]
    Queue(netmux_ring::QueueError),
    /// A probe was refused by the driver (not a link that is down, which [`run`] lets pass
    /// with a warning): nobody can tell whether the address is free.
    #[error(
        "an ARP probe for {address} did not go out ({status}), so netd cannot tell whether \
         another host has the address"
    )]
    NotSent {
        /// The address.
        address: Ipv4Addr,
        /// What the driver said of the probe.
        status: netmux_ring::TxStatus,
    },
}

fn arp(mac: [u8; 6], op: u16, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(ARP_FRAME_LEN);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETHERTYPE_ARP);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip.octets());
    f
}

/// An ARP probe for `address` from `mac` (sender IP 0.0.0.0), broadcast.
pub fn probe(mac: [u8; 6], address: Ipv4Addr) -> Vec<u8> {
    arp(mac, ARP_REQUEST, Ipv4Addr::UNSPECIFIED, address)
}

/// A gratuitous ARP announcement of `address` by `mac` (sender and target IP the address).
pub fn announcement(mac: [u8; 6], address: Ipv4Addr) -> Vec<u8> {
    arp(mac, ARP_REQUEST, address, address)
}

/// Whether `frame` (a received Ethernet frame) says another host has `address` or probes for
/// it; `mac` is our own, whose frames never conflict.
pub fn conflict_in(frame: &[u8], mac: [u8; 6], address: Ipv4Addr) -> Option<Conflict> {
    if frame.len() < ARP_FRAME_LEN
        || frame[12..14] != ETHERTYPE_ARP
        || frame[14..20] != [0, 1, 0x08, 0x00, 6, 4]
    {
        return None;
    }
    let op = u16::from_be_bytes([frame[20], frame[21]]);
    let sender_mac: [u8; 6] = frame[22..28].try_into().ok()?;
    let sender_ip = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[28..32]).ok()?);
    let target_ip = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[38..42]).ok()?);
    if sender_mac == mac {
        return None;
    }
    let how = if sender_ip == address {
        match op {
            ARP_REPLY => "answered an ARP probe for it",
            _ => "announces it in its ARP requests",
        }
    } else if op == ARP_REQUEST && sender_ip.is_unspecified() && target_ip == address {
        "probes for it at the same time"
    } else {
        return None;
    };
    Some(Conflict {
        address,
        mac: sender_mac,
        how,
    })
}

/// Probes for `address` on netd's host queue, as the module documentation says, then
/// announces it. The queue must be netd's host queue, with a transmit filter that lets ARP
/// from 0.0.0.0 and `mac` out and its receive filter taking ARP replies.
pub fn run(queue: &mut ClientQueue, mac: [u8; 6], address: Ipv4Addr) -> Result<(), DadError> {
    let mut frames = Vec::new();
    let mut completions = Vec::new();
    let probe = probe(mac, address);
    let start = Instant::now();
    let end = start + PROBE_INTERVAL * (PROBE_NUM - 1) + PROBE_WAIT_AFTER;
    let mut sent = 0;
    loop {
        let now = Instant::now();
        if sent < PROBE_NUM && now >= start + PROBE_INTERVAL * sent {
            queue
                .send(&[&[probe.as_slice()][..]])
                .map_err(DadError::Queue)?;
            sent += 1;
            continue;
        }
        if now >= end {
            break;
        }
        let next_probe = (sent < PROBE_NUM).then(|| start + PROBE_INTERVAL * sent);
        let until = next_probe.map_or(end, |p| p.min(end));
        queue
            .wait_readable(Some(until.saturating_duration_since(now)))
            .map_err(DadError::Queue)?;
        frames.clear();
        queue
            .recv_owned(usize::MAX, &mut frames)
            .map_err(DadError::Queue)?;
        if let Some(c) = frames.iter().find_map(|f| conflict_in(f, mac, address)) {
            return Err(c.into());
        }
        completions.clear();
        queue
            .completions(usize::MAX, &mut completions)
            .map_err(DadError::Queue)?;
        if completions
            .iter()
            .any(|c| c.status == netmux_ring::TxStatus::LinkDown)
        {
            tracing::warn!(
                "the link is down: {address} was not checked for another host having it \
                 (RFC 5227); announcing it when the link is up is left to the host stack's \
                 answers"
            );
            return Ok(());
        }
        if let Some(c) = completions.iter().find(|c| !c.status.is_sent()) {
            return Err(DadError::NotSent {
                address,
                status: c.status,
            });
        }
    }
    queue
        .send(&[&[announcement(mac, address).as_slice()][..]])
        .map_err(DadError::Queue)?;
    tracing::info!(
        "{address} is free on the link: nobody answered {PROBE_NUM} ARP probes in {} ms; \
         announced it",
        (end - start).as_millis()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const THEM: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    #[test]
    fn a_probe_and_an_announcement_are_arp_requests_as_rfc_5227_says() {
        let p = probe(ME, ADDR);
        assert_eq!(p.len(), ARP_FRAME_LEN);
        assert_eq!(&p[..6], &[0xff; 6]);
        assert_eq!(&p[20..22], &[0, 1]);
        assert_eq!(&p[22..28], &ME);
        assert_eq!(&p[28..32], &[0, 0, 0, 0]);
        assert_eq!(&p[32..38], &[0; 6]);
        assert_eq!(&p[38..42], &ADDR.octets());
        let a = announcement(ME, ADDR);
        assert_eq!(&a[28..32], &ADDR.octets());
        assert_eq!(&a[38..42], &ADDR.octets());
    }

    #[test]
    fn a_reply_a_claim_or_a_probe_from_another_mac_is_a_conflict_naming_it() {
        let mut reply = arp(THEM, ARP_REPLY, ADDR, Ipv4Addr::UNSPECIFIED);
        reply[..6].copy_from_slice(&ME);
        let c = conflict_in(&reply, ME, ADDR).expect("a reply for the address");
        assert_eq!(c.mac, THEM);
        assert!(c.to_string().contains("02:00:00:00:00:02"), "{c}");
        assert!(c.to_string().contains("192.0.2.1"), "{c}");
        assert!(conflict_in(&announcement(THEM, ADDR), ME, ADDR).is_some());
        assert_eq!(
            conflict_in(&probe(THEM, ADDR), ME, ADDR).map(|c| c.how),
            Some("probes for it at the same time")
        );
        // Our own frames, other addresses, other frames: no conflict.
        assert_eq!(conflict_in(&probe(ME, ADDR), ME, ADDR), None);
        assert_eq!(conflict_in(&announcement(ME, ADDR), ME, ADDR), None);
        let other = Ipv4Addr::new(192, 0, 2, 9);
        assert_eq!(conflict_in(&announcement(THEM, other), ME, ADDR), None);
        assert_eq!(conflict_in(&probe(THEM, other), ME, ADDR), None);
        assert_eq!(conflict_in(&reply[..30], ME, ADDR), None);
        let mut ipv4 = reply.clone();
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(conflict_in(&ipv4, ME, ADDR), None);
    }
}
