//! A `smoltcp::phy::Device` on a netmux queue, so a real TCP/IP stack runs as a netd client.
//!
//! Received frames come from the queue's rx ring in batches of [`RX_BATCH`]; each transmitted
//! frame goes into the tx ring at once. The device respects the queue's flow control: when the
//! tx ring (within its `txbuf`) is full, `transmit` gives smoltcp no token, so data stays in its
//! socket buffers, and a frame made meanwhile (a reply to a received one) waits in a short
//! backlog of [`TX_BACKLOG`] frames sent first when room opens; only a frame beyond it is dropped
//! and counted (smoltcp retransmits as it would on a lossy link). Completions are collected and
//! rejected transmissions counted, so a test can tell a refused spoof from a lost frame. ARP
//! replies smoltcp makes are kept back and counted: netd alone answers ARP for the host's
//! address, and the driver refuses a client's reply. IPv6 neighbour advertisements likewise:
//! netd alone answers neighbour solicitations for the host's addresses.
//! Frame buffers are reused, received and transmitted alike: the device allocates nothing per
//! frame once it has seen a batch.
//!
//! smoltcp has no path-MTU discovery of its own, so the device notes the next-hop MTU of every
//! ICMP "fragmentation needed" (RFC 1191) and ICMPv6 "packet too big" (RFC 8201) it hands over
//! (the driver delivers to a client only the errors that quote its own flows):
//! [`QueueDevice::take_path_mtu`] tells the owner of the
//! interface, which lowers the device's MTU ([`QueueDevice::set_mtu`]) and makes its interface
//! again, since smoltcp reads the MTU when an interface is made.
//!
//! smoltcp fragments IPv4 datagrams larger than the MTU itself (feature
//! `proto-ipv4-fragmentation`) but not IPv6 ones: it hands the device an IPv6 frame larger than
//! the MTU, which the device splits into IPv6 fragments ([`netmux_wire::fragment::fragment_ipv6`],
//! identifications from [`Ipv6Idents`]) and sends as one batch; the driver checks them as the
//! whole datagram and sends all or none. (A smoltcp that dropped such frames before the device
//! sees them would need fragmentation of its own; `tests/root_ipv6.rs` would tell.)

use std::collections::VecDeque;
use std::time::Duration;

use netmux_ring::{ClientQueue, Completion, QueueError};
use netmux_wire::fragment::{fragment_ipv6, Ipv6Idents};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Frames taken from the rx ring per refill.
pub const RX_BATCH: usize = 32;
/// Frames a device keeps while the tx ring is full (made by smoltcp in answer to received
/// frames, which the device cannot refuse to hand it), sent first when room opens.
pub const TX_BACKLOG: usize = 64;

/// The smallest MTU an IPv4 host must accept (RFC 791): a "fragmentation needed" naming less
/// is ignored.
pub const MIN_IPV4_MTU: u16 = 68;

/// The smallest MTU of an IPv6 link (RFC 8200): a "packet too big" naming less lowers the path
/// MTU to this and no further (RFC 8201).
pub const MIN_IPV6_MTU: u16 = 1280;

/// Counters of a [`QueueDevice`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Frames handed to smoltcp.
    pub rx_frames: u64,
    /// Frames put in the tx ring.
    pub tx_frames: u64,
    /// IPv6 datagrams larger than the MTU the device split into fragments.
    pub tx_ipv6_fragmented: u64,
    /// Frames dropped because the tx ring and the backlog were full, or the queue failed.
    pub tx_dropped: u64,
    /// Times the tx ring was full when smoltcp wanted to send (flow control: smoltcp was
    /// given no token, or the frame waited in the backlog).
    pub tx_flow_control: u64,
    /// Frames the driver completed with a rejection.
    pub tx_rejected: u64,
    /// ARP replies smoltcp made and the device kept back: netd alone answers ARP for the
    /// host's address (the driver would refuse a client's reply).
    pub arp_replies_withheld: u64,
    /// IPv6 neighbour advertisements smoltcp made and the device kept back: netd alone
    /// answers for the host's addresses (the driver would refuse a client's advertisement).
    pub neighbour_advertisements_withheld: u64,
}

/// The device. See the module documentation.
#[derive(Debug)]
pub struct QueueDevice {
    queue: ClientQueue,
    rx: VecDeque<Vec<u8>>,
    /// Buffers of frames smoltcp has consumed, for the next refill.
    spare: Vec<Vec<u8>>,
    /// The frame smoltcp is consuming now.
    current: Vec<u8>,
    /// The frame smoltcp is building now.
    tx_buffer: Vec<u8>,
    /// Frames made while the tx ring was full, oldest first (at most [`TX_BACKLOG`]).
    backlog: VecDeque<Vec<u8>>,
    mtu: usize,
    /// Identifications of the IPv6 fragments the device makes.
    ipv6_idents: Ipv6Idents,
    /// The smallest next-hop MTU named by an ICMP "fragmentation needed" or an ICMPv6 "packet
    /// too big" not yet taken.
    path_mtu: Option<u16>,
    counters: DeviceCounters,
    completions: Vec<Completion>,
}

impl QueueDevice {
    /// A device on `queue` for a link with this IP MTU.
    pub fn new(queue: ClientQueue, mtu: u16) -> QueueDevice {
        QueueDevice {
            queue,
            rx: VecDeque::new(),
            spare: Vec::new(),
            current: Vec::new(),
            tx_buffer: Vec::new(),
            backlog: VecDeque::new(),
            mtu: usize::from(mtu),
            ipv6_idents: Ipv6Idents::default(),
            path_mtu: None,
            counters: DeviceCounters::default(),
            completions: Vec::new(),
        }
    }

    /// The queue underneath.
    pub fn queue(&mut self) -> &mut ClientQueue {
        &mut self.queue
    }

    /// Carries on over another queue (the session's queue after a reconnection to netd); the
    /// frames not yet handed to smoltcp from the old one are dropped, as a link that went
    /// down for a moment would. The counters go on.
    pub fn replace_queue(&mut self, queue: ClientQueue) {
        self.queue = queue;
        self.rx.clear();
        self.backlog.clear();
    }

    /// The IP MTU the device reports to smoltcp.
    pub fn mtu(&self) -> u16 {
        u16::try_from(self.mtu).unwrap_or(u16::MAX)
    }

    /// Sets the IP MTU the device reports (smoltcp reads it when an interface is made).
    pub fn set_mtu(&mut self, mtu: u16) {
        self.mtu = usize::from(mtu);
    }

    /// The smallest next-hop MTU that an ICMP "fragmentation needed" or ICMPv6 "packet too
    /// big" received since the last call named ([`path_mtu_of`]), when it is below the
    /// device's MTU.
    pub fn take_path_mtu(&mut self) -> Option<u16> {
        self.path_mtu.take()
    }

    /// Notes the next-hop MTU of `frame` if it is an ICMP "fragmentation needed" or ICMPv6
    /// "packet too big" naming one below the device's.
    fn note_path_mtu(&mut self, frame: &[u8]) {
        if let Some(mtu) = path_mtu_of(frame) {
            if usize::from(mtu) < self.mtu {
                self.path_mtu = Some(self.path_mtu.map_or(mtu, |m| m.min(mtu)));
            }
        }
    }

    /// The device's counters.
    pub fn counters(&self) -> DeviceCounters {
        self.counters
    }

    /// Sleeps until a frame may be waiting, room opens for the backlog, or `timeout` passes
    /// (smoltcp's `poll_delay`).
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<(), QueueError> {
        self.send_backlog();
        if self.rx.is_empty() {
            let room = self
                .backlog
                .front()
                .map(|f| self.queue.layout().slots_for(f.len()));
            self.queue.wait(true, room, timeout)?;
        }
        Ok(())
    }

    /// Frames waiting for room in the tx ring.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Sends what the backlog holds, oldest first, while the tx ring takes it.
    fn send_backlog(&mut self) {
        while let Some(frame) = self.backlog.front() {
            match self.queue.send(&[&[frame]]) {
                Ok(_) => self.counters.tx_frames += 1,
                Err(QueueError::WouldBlock { .. }) => return,
                Err(_) => self.counters.tx_dropped += 1,
            }
            if let Some(sent) = self.backlog.pop_front() {
                self.spare.push(sent);
            }
        }
    }

    fn refill(&mut self) {
        let _ = self
            .queue
            .recv_recycled(RX_BATCH, &mut self.spare, &mut self.rx);
        self.completions.clear();
        if self
            .queue
            .completions(usize::MAX, &mut self.completions)
            .is_ok()
        {
            self.counters.tx_rejected += self
                .completions
                .iter()
                .filter(|c| !c.status.is_sent())
                .count() as u64;
        }
    }
}

/// The next-hop MTU an untagged ICMP "fragmentation needed" (destination unreachable, code 4,
/// RFC 1191) names, when it is at least [`MIN_IPV4_MTU`]; `None` for any other frame.
pub fn fragmentation_needed_mtu(frame: &[u8]) -> Option<u16> {
    const ICMP_DEST_UNREACHABLE: u8 = 3;
    const FRAGMENTATION_NEEDED: u8 = 4;
    if frame.get(12..14)? != [0x08, 0x00] || *frame.get(23)? != 1 {
        return None;
    }
    let icmp = 14 + usize::from(frame.get(14)? & 0x0f) * 4;
    let header = frame.get(icmp..icmp + 8)?;
    let mtu = u16::from_be_bytes([header[6], header[7]]);
    (header[0] == ICMP_DEST_UNREACHABLE && header[1] == FRAGMENTATION_NEEDED && mtu >= MIN_IPV4_MTU)
        .then_some(mtu)
}

/// Extension headers (hop-by-hop, routing, destination options) stepped over before an
/// ICMPv6 header, at most: more than any router puts on an error it sends.
const MAX_EXTENSION_HEADERS: usize = 8;

/// Where the ICMPv6 header of the untagged IPv6 `frame` starts, after at most
/// [`MAX_EXTENSION_HEADERS`] hop-by-hop, routing or destination options headers.
fn icmpv6_at(frame: &[u8]) -> Option<usize> {
    const ICMPV6: u8 = 58;
    if frame.get(12..14)? != [0x86, 0xdd] {
        return None;
    }
    let mut next = *frame.get(20)?;
    let mut at = 14 + 40;
    for _ in 0..=MAX_EXTENSION_HEADERS {
        match next {
            ICMPV6 => return Some(at),
            0 | 43 | 60 => {
                next = *frame.get(at)?;
                at += (usize::from(*frame.get(at + 1)?) + 1) * 8;
            }
            _ => return None,
        }
    }
    None
}

/// The path MTU an untagged ICMPv6 "packet too big" (type 2, code 0, RFC 4443) names: its
/// MTU, raised to [`MIN_IPV6_MTU`] when it names less (RFC 8201) and capped at 65,535; `None`
/// for any other frame.
pub fn packet_too_big_mtu(frame: &[u8]) -> Option<u16> {
    const PACKET_TOO_BIG: u8 = 2;
    let at = icmpv6_at(frame)?;
    let header = frame.get(at..at + 8)?;
    let mtu = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    (header[0] == PACKET_TOO_BIG && header[1] == 0)
        .then(|| u16::try_from(mtu).unwrap_or(u16::MAX).max(MIN_IPV6_MTU))
}

/// The path MTU `frame` names: [`fragmentation_needed_mtu`] or [`packet_too_big_mtu`].
pub fn path_mtu_of(frame: &[u8]) -> Option<u16> {
    fragmentation_needed_mtu(frame).or_else(|| packet_too_big_mtu(frame))
}

/// A received frame.
#[derive(Debug)]
pub struct QueueRxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for QueueRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

/// Room for one frame to transmit.
#[derive(Debug)]
pub struct QueueTxToken<'a> {
    queue: &'a mut ClientQueue,
    counters: &'a mut DeviceCounters,
    buffer: &'a mut Vec<u8>,
    backlog: &'a mut VecDeque<Vec<u8>>,
    spare: &'a mut Vec<Vec<u8>>,
    /// The IP MTU: a larger IPv6 datagram goes out in fragments.
    mtu: usize,
    ipv6_idents: &'a mut Ipv6Idents,
}

/// Whether `frame` is an ARP reply (Ethernet type 0x0806, operation 2).
fn is_arp_reply(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&[0x08, 0x06]) && frame.get(20..22) == Some(&[0, 2])
}

/// An IPv6 neighbour advertisement (ICMPv6 136, no extension header), untagged as smoltcp
/// writes it.
fn is_neighbour_advertisement(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&[0x86, 0xdd])
        && frame.get(20) == Some(&58)
        && frame.get(54) == Some(&136)
}

impl phy::TxToken for QueueTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let frame = self.buffer;
        frame.clear();
        frame.resize(len, 0);
        let result = f(frame);
        if is_arp_reply(frame) {
            self.counters.arp_replies_withheld += 1;
            return result;
        }
        if is_neighbour_advertisement(frame) {
            self.counters.neighbour_advertisements_withheld += 1;
            return result;
        }
        let fragments;
        let frames: Vec<&[u8]> =
            if frame.len() > self.mtu + smoltcp::wire::EthernetFrame::<&[u8]>::header_len() {
                // Only IPv6 comes this large: smoltcp fragments IPv4 itself.
                fragments = fragment_ipv6(frame.clone(), self.mtu, self.ipv6_idents.next_ident());
                if fragments.len() > 1 {
                    self.counters.tx_ipv6_fragmented += 1;
                }
                fragments.iter().map(Vec::as_slice).collect()
            } else {
                vec![frame.as_slice()]
            };
        // Behind the backlog, in order; into it when the ring is full. A datagram's fragments
        // go together, or wait together.
        let outcome = if self.backlog.is_empty() {
            let batch: Vec<[&[u8]; 1]> = frames.iter().map(|f| [*f]).collect();
            let refs: Vec<&[&[u8]]> = batch.iter().map(|b| &b[..]).collect();
            self.queue.send(&refs)
        } else {
            Err(QueueError::WouldBlock { needed: 0, free: 0 })
        };
        let n = frames.len() as u64;
        // Fragments too many for the ring at once go one by one, from the backlog.
        let wait = match &outcome {
            Err(QueueError::WouldBlock { .. }) => true,
            Err(QueueError::BatchTooLarge { .. }) => frames.len() > 1,
            _ => false,
        };
        match outcome {
            Ok(_) => self.counters.tx_frames += n,
            Err(_) if wait && self.backlog.len() + frames.len() <= TX_BACKLOG => {
                self.counters.tx_flow_control += 1;
                for f in frames {
                    let mut kept = self.spare.pop().unwrap_or_default();
                    kept.clear();
                    kept.extend_from_slice(f);
                    self.backlog.push_back(kept);
                }
            }
            Err(_) => self.counters.tx_dropped += n,
        }
        result
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = QueueRxToken<'a>;
    type TxToken<'a> = QueueTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.send_backlog();
        if self.rx.is_empty() {
            self.refill();
        }
        let frame = self.rx.pop_front()?;
        self.note_path_mtu(&frame);
        let consumed = std::mem::replace(&mut self.current, frame);
        self.spare.push(consumed);
        self.counters.rx_frames += 1;
        Some((
            QueueRxToken {
                frame: &self.current,
            },
            QueueTxToken {
                queue: &mut self.queue,
                counters: &mut self.counters,
                buffer: &mut self.tx_buffer,
                backlog: &mut self.backlog,
                spare: &mut self.spare,
                mtu: self.mtu,
                ipv6_idents: &mut self.ipv6_idents,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        self.send_backlog();
        // Flow control: no token while the ring has no room for a full-size frame, so
        // smoltcp keeps its data (and sends it when `wait` says room opened).
        let full_frame = self.mtu + smoltcp::wire::EthernetFrame::<&[u8]>::header_len();
        if !self.backlog.is_empty() || !self.queue.can_send(full_frame) {
            self.counters.tx_flow_control += 1;
            return None;
        }
        Some(QueueTxToken {
            queue: &mut self.queue,
            counters: &mut self.counters,
            buffer: &mut self.tx_buffer,
            backlog: &mut self.backlog,
            spare: &mut self.spare,
            mtu: self.mtu,
            ipv6_idents: &mut self.ipv6_idents,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // smoltcp's MTU for an Ethernet device counts the Ethernet header.
        caps.max_transmission_unit = self.mtu + smoltcp::wire::EthernetFrame::<&[u8]>::header_len();
        caps.max_burst_size = Some(RX_BATCH);
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_replies_are_recognised_and_requests_and_ip_are_not() {
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        arp[20..22].copy_from_slice(&[0, 2]);
        assert!(is_arp_reply(&arp));
        arp[20..22].copy_from_slice(&[0, 1]);
        assert!(!is_arp_reply(&arp), "a request goes out");
        arp[12..14].copy_from_slice(&[0x08, 0x00]);
        arp[20..22].copy_from_slice(&[0, 2]);
        assert!(!is_arp_reply(&arp), "IPv4 whatever its bytes 20-21");
        assert!(!is_arp_reply(&arp[..21]));
        let mut na = vec![0u8; 14 + 40 + 24];
        na[12..14].copy_from_slice(&[0x86, 0xdd]);
        na[20] = 58;
        na[54] = 136;
        assert!(is_neighbour_advertisement(&na));
        na[54] = 135;
        assert!(!is_neighbour_advertisement(&na), "a solicitation goes out");
        na[54] = 136;
        na[20] = 17;
        assert!(!is_neighbour_advertisement(&na), "UDP whatever its byte 54");
    }

    fn icmp(kind: u8, code: u8, mtu: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 28];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 1;
        f[34] = kind;
        f[35] = code;
        f[40..42].copy_from_slice(&mtu.to_be_bytes());
        f
    }

    #[test]
    fn fragmentation_needed_names_its_next_hop_mtu_and_nothing_else_does() {
        assert_eq!(fragmentation_needed_mtu(&icmp(3, 4, 1280)), Some(1280));
        assert_eq!(fragmentation_needed_mtu(&icmp(3, 3, 1280)), None);
        assert_eq!(fragmentation_needed_mtu(&icmp(11, 0, 1280)), None);
        assert_eq!(
            fragmentation_needed_mtu(&icmp(3, 4, 67)),
            None,
            "below RFC 791's minimum"
        );
        let whole = icmp(3, 4, 1280);
        for cut in 0..42 {
            assert_eq!(
                fragmentation_needed_mtu(&whole[..cut]),
                None,
                "cut at {cut}"
            );
        }
    }

    fn packet_too_big(kind: u8, code: u8, mtu: u32) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 8 + 48];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[20] = 58;
        f[54] = kind;
        f[55] = code;
        f[58..62].copy_from_slice(&mtu.to_be_bytes());
        f
    }

    #[test]
    fn packet_too_big_names_its_mtu_never_below_ipv6s_minimum() {
        assert_eq!(packet_too_big_mtu(&packet_too_big(2, 0, 1280)), Some(1280));
        assert_eq!(packet_too_big_mtu(&packet_too_big(2, 0, 1400)), Some(1400));
        assert_eq!(
            packet_too_big_mtu(&packet_too_big(2, 0, 576)),
            Some(MIN_IPV6_MTU),
            "RFC 8201: never below 1280"
        );
        assert_eq!(
            packet_too_big_mtu(&packet_too_big(2, 0, 100_000)),
            Some(u16::MAX)
        );
        assert_eq!(packet_too_big_mtu(&packet_too_big(1, 4, 1280)), None);
        assert_eq!(packet_too_big_mtu(&packet_too_big(3, 0, 1280)), None);
        assert_eq!(packet_too_big_mtu(&packet_too_big(2, 1, 1280)), None);
        let mut udp = packet_too_big(2, 0, 1280);
        udp[20] = 17;
        assert_eq!(packet_too_big_mtu(&udp), None, "UDP whatever its bytes");
        assert_eq!(packet_too_big_mtu(&icmp(3, 4, 1280)), None);
        let whole = packet_too_big(2, 0, 1280);
        for cut in 0..62 {
            assert_eq!(packet_too_big_mtu(&whole[..cut]), None, "cut at {cut}");
        }
        // After a hop-by-hop header (8 bytes, padding only), and not after too many of them.
        let with_options = |n: usize| {
            let mut f = whole[..54].to_vec();
            f[20] = 0;
            for i in 0..n {
                f.extend_from_slice(&[if i + 1 == n { 58 } else { 0 }, 0, 1, 4, 0, 0, 0, 0]);
            }
            f.extend_from_slice(&whole[54..]);
            f
        };
        assert_eq!(packet_too_big_mtu(&with_options(1)), Some(1280));
        assert_eq!(
            packet_too_big_mtu(&with_options(MAX_EXTENSION_HEADERS)),
            Some(1280)
        );
        assert_eq!(
            packet_too_big_mtu(&with_options(MAX_EXTENSION_HEADERS + 1)),
            None
        );
        let options = with_options(2);
        for cut in 0..options.len().min(54 + 16 + 8) {
            assert_eq!(packet_too_big_mtu(&options[..cut]), None, "cut at {cut}");
        }
        assert_eq!(path_mtu_of(&whole), Some(1280));
        assert_eq!(path_mtu_of(&icmp(3, 4, 1000)), Some(1000));
        assert_eq!(path_mtu_of(&icmp(3, 3, 1000)), None);
    }
}
