//! Overlays (illumos overlay devices): instances on a virtual layer-2 network carried in
//! VXLAN (RFC 7348) between hosts, as the driver runs them.
//!
//! # Transmit
//!
//! A frame an overlay instance's queue transmits has passed the queue's tx filters; then:
//!
//! - longer than the overlay's MTU (or than the link carries once encapsulated) it is
//!   rejected with [`TxStatus::RejectedTooLargeForOverlay`]: VXLAN is never fragmented;
//! - to another instance of the same overlay on this host it is delivered here;
//! - to a MAC whose mapping is cached, it is encapsulated toward the mapping's VTEP (outer
//!   Ethernet to the VTEP's link MAC, learned from ARP; an unknown one is asked for with an
//!   ARP request and the frame waits);
//! - to a MAC without a cached mapping, the frame waits and the MAC is listed for netd's
//!   mapping service in the next [`DriverRequest::OverlayPoll`]; frames waiting are capped
//!   at [`MAX_WAITING_BYTES`] per overlay (beyond: dropped and counted) and dropped after
//!   [`WAIT_TIMEOUT_NS`];
//! - an ARP request (and a neighbour solicitation, from the proxy NDP table) is answered
//!   here from the mapping service's proxy ARP table (a
//!   gratuitous one, sender = target, is dropped and never answered); any other broadcast or
//!   multicast is dropped: an overlay carries none, except a DHCPv4 broadcast from a MAC the
//!   mapping gives a `dhcp-proxy`, which goes to that MAC as unicast. When the mapping service moves an
//!   address to another MAC, the overlay's instances get a gratuitous ARP saying so.
//!
//! # Receive
//!
//! UDP to a VXLAN port of one of the overlays, addressed to the underlay address (the
//! default instance's first IPv4 address), is decapsulated: its VNI picks the overlay (an
//! unknown VNI, or a malformed header, is dropped and counted), a VLAN-tagged inner frame is
//! dropped (RFC 7348 §6), an inner IP fragment is held by the overlay's own reassembler until
//! its datagram is whole (1 MiB per overlay, a quarter of it per source; the link's budget
//! and every other overlay's are apart, as their addresses may be the same), and the inner
//! frame or datagram is classified in the overlay instance its destination MAC names (every
//! instance of the overlay for a group address). Several
//! overlays share one port. Frames of one overlay never reach another overlay's instances,
//! nor the link's instances, whatever their addresses.

use std::collections::VecDeque;

use netmux_proto::driver::{DriverReply, DriverRequest, InstanceInfo};
use netmux_proto::overlay::{
    OverlayCounters, OverlayInfo, OverlayMappings, OverlayPollReply, LOOKUP_RETRY_MS,
};
use netmux_proto::ErrorCode;
use netmux_ring::TxStatus;
use netmux_wire::ethernet::{ethertype, BROADCAST, HEADER_LEN as ETHERNET_HEADER_LEN};
use netmux_wire::vxlan::{self, Underlay, OVERHEAD_V4};
use netmux_wire::{arp, ArpPacket};
use rustc_hash::FxHashMap;

use super::instances::{Slot, Target};
use super::mac_index::MacIndex;
use super::{Driver, Response};
use crate::reassembly::{self, Outcome, Reassembler};

pub use netmux_proto::overlay::MAX_WAITING_BYTES;

/// Overlays one driver holds: each costs a cache and a waiting queue.
pub const MAX_OVERLAYS: usize = 1024;
/// Mappings cached per overlay: bounds the cache's memory (about 40 bytes each).
pub const MAX_CACHED_MAPPINGS: usize = 1 << 20;
/// Proxy ARP entries per overlay.
pub const MAX_PROXY_ARP: usize = 1 << 16;
/// How long a frame waits for its mapping or its VTEP's link address before it is dropped:
/// longer than a few lookups, shorter than a TCP retransmission timeout.
pub const WAIT_TIMEOUT_NS: u64 = 3_000_000_000;
/// How often an unanswered ARP request for a VTEP is repeated.
const ARP_RETRY_NS: u64 = 1_000_000_000;
/// Underlay neighbours remembered: one per remote VTEP.
const MAX_NEIGHBOURS: usize = 65_536;

/// A MAC as a word, for the per-frame lookups.
#[inline]
fn mac_word(m: &[u8]) -> u64 {
    m.iter().take(6).fold(0u64, |w, &b| w << 8 | u64::from(b))
}

fn word_mac(w: u64) -> [u8; 6] {
    let b = w.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// The driver's cache of the mapping service's answers for one overlay: MAC to the VTEP's
/// underlay address and port, or `None` where the service has no entry. One hash lookup per
/// transmitted frame; at most [`MAX_CACHED_MAPPINGS`] entries (beyond, new MACs are asked for
/// again each time instead of cached).
#[derive(Debug, Default)]
pub struct MappingCache {
    entries: FxHashMap<u64, Option<([u8; 4], u16)>>,
}

impl MappingCache {
    /// The cached answer for a MAC (as [`MappingCache::key`] makes it), if any.
    #[inline]
    pub fn get(&self, mac: u64) -> Option<Option<([u8; 4], u16)>> {
        self.entries.get(&mac).copied()
    }

    /// The key of a MAC (its six bytes as a word).
    #[inline]
    pub fn key(mac: &[u8; 6]) -> u64 {
        mac_word(mac)
    }

    /// Caches an answer; refused (false) when full and `mac` is new.
    pub fn insert(&mut self, mac: u64, target: Option<([u8; 4], u16)>) -> bool {
        if self.entries.len() >= MAX_CACHED_MAPPINGS && !self.entries.contains_key(&mac) {
            return false;
        }
        self.entries.insert(mac, target);
        true
    }

    /// Entries cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Why an overlay dropped a frame: the counter names `netmux overlay ls` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drop {
    /// The waiting queue was full.
    WaitingFull,
    /// The mapping service has no entry for the destination.
    NoMapping,
    /// No answer (mapping or VTEP link address) in time.
    Timeout,
    /// Broadcast or multicast that is not an ARP request.
    Broadcast,
    /// Gratuitous ARP (sender = target).
    GratuitousArp,
    /// An ARP request for an address no mapping has.
    NoProxyArp,
    /// A neighbour solicitation for an address no mapping has.
    NoProxyNdp,
    /// A decapsulated frame for a MAC no instance of the overlay has.
    NoInstance,
    /// A decapsulated frame with an inner VLAN tag.
    InnerVlan,
    /// The link did not take an encapsulated frame.
    Link,
}

impl Drop {
    const ALL: [Drop; 10] = [
        Drop::WaitingFull,
        Drop::NoMapping,
        Drop::Timeout,
        Drop::Broadcast,
        Drop::GratuitousArp,
        Drop::NoProxyArp,
        Drop::NoProxyNdp,
        Drop::NoInstance,
        Drop::InnerVlan,
        Drop::Link,
    ];

    fn name(self) -> &'static str {
        match self {
            Drop::WaitingFull => "waiting-full",
            Drop::NoMapping => "no-mapping",
            Drop::Timeout => "lookup-timeout",
            Drop::Broadcast => "broadcast",
            Drop::GratuitousArp => "gratuitous-arp",
            Drop::NoProxyArp => "no-proxy-arp",
            Drop::NoProxyNdp => "no-proxy-ndp",
            Drop::NoInstance => "no-instance",
            Drop::InnerVlan => "inner-vlan",
            Drop::Link => "link",
        }
    }
}

/// A frame waiting for its mapping or its VTEP's link address.
#[derive(Debug)]
struct Waiting {
    since_ns: u64,
    frame: Vec<u8>,
}

/// One overlay.
#[derive(Debug)]
struct Overlay {
    info: OverlayInfo,
    /// Its instances on this host, by MAC.
    members: MacIndex<Slot>,
    /// Cached answers of the mapping service: `None` means it has no entry.
    cache: MappingCache,
    /// MACs asked for and when (ns).
    asked: FxHashMap<u64, u64>,
    /// MACs to list in the next poll.
    misses: Vec<[u8; 6]>,
    waiting: VecDeque<Waiting>,
    waiting_bytes: usize,
    /// Proxy ARP: overlay IPv4 address to MAC.
    arp: FxHashMap<[u8; 4], [u8; 6]>,
    /// Proxy NDP: overlay IPv6 address to MAC.
    ndp: FxHashMap<[u8; 16], [u8; 6]>,
    /// DHCPv4: client MAC to the MAC its broadcasts are sent to.
    dhcp: FxHashMap<u64, [u8; 6]>,
    proxy_ndp: u64,
    rx_frames: u64,
    tx_frames: u64,
    lookups: u64,
    proxy_arp: u64,
    dropped: [u64; Drop::ALL.len()],
    /// The inner fragments of this overlay's frames, gathered until their datagram is whole:
    /// apart from the link's and from every other overlay's, whose addresses may be the same.
    reassembler: Reassembler,
}

impl Overlay {
    fn new(info: OverlayInfo) -> Self {
        Self {
            info,
            members: MacIndex::default(),
            cache: MappingCache::default(),
            asked: FxHashMap::default(),
            misses: Vec::new(),
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            arp: FxHashMap::default(),
            ndp: FxHashMap::default(),
            dhcp: FxHashMap::default(),
            proxy_ndp: 0,
            rx_frames: 0,
            tx_frames: 0,
            lookups: 0,
            proxy_arp: 0,
            dropped: [0; Drop::ALL.len()],
            reassembler: Reassembler::new(reassembly::Config::with_budget(INNER_REASSEMBLY_BUDGET)),
        }
    }

    fn drop(&mut self, why: Drop) {
        if let Some(i) = Drop::ALL.iter().position(|&d| d == why) {
            self.dropped[i] += 1;
        }
    }

    fn counters(&self) -> OverlayCounters {
        OverlayCounters {
            vni: self.info.vni,
            rx_frames: self.rx_frames,
            tx_frames: self.tx_frames,
            misses: self.lookups,
            cached: self.cache.len() as u64,
            waiting_bytes: self.waiting_bytes as u64,
            dropped: Drop::ALL
                .iter()
                .zip(self.dropped)
                .filter(|&(_, n)| n > 0)
                .map(|(d, n)| (d.name().to_string(), n))
                .collect(),
            proxy_arp: self.proxy_arp,
            proxy_ndp: self.proxy_ndp,
        }
    }

    /// Lists `mac` for the mapping service unless it was asked for recently.
    fn ask(&mut self, mac: u64, now_ns: u64) {
        let due = self
            .asked
            .get(&mac)
            .is_none_or(|&t| now_ns.saturating_sub(t) >= LOOKUP_RETRY_MS * 1_000_000);
        if due {
            self.asked.insert(mac, now_ns);
            self.misses.push(word_mac(mac));
            self.lookups += 1;
        }
    }

    fn wait(&mut self, frame: &[u8], now_ns: u64) {
        if self.waiting_bytes + frame.len() > MAX_WAITING_BYTES {
            self.drop(Drop::WaitingFull);
            return;
        }
        self.waiting_bytes += frame.len();
        self.waiting.push_back(Waiting {
            since_ns: now_ns,
            frame: frame.to_vec(),
        });
    }
}

/// What [`Overlays::receive`] made of a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// Not VXLAN for this host: deliver it as usual.
    NotOverlay,
    /// VXLAN, dropped and counted.
    Dropped,
    /// VXLAN: the inner frame at `frame[start..end]`, of overlay `vni`, goes to the slots in
    /// [`Overlays::deliver_to`] (through [`Overlays::reassemble`] first).
    Inner {
        /// Where the inner frame starts.
        start: usize,
        /// Where it ends.
        end: usize,
        /// Its overlay.
        vni: u32,
    },
}

/// Puts in `to` (sorted) the slots of `overlay`'s instances an inner frame is for: the one its
/// destination MAC names, or every one for a group address. Whether there is any.
#[inline]
fn select(overlay: &Overlay, inner: &[u8], to: &mut Vec<Slot>) -> bool {
    to.clear();
    let Some(dst) = inner.get(..6) else {
        return false;
    };
    if dst[0] & 1 != 0 {
        to.extend(overlay.members.values());
        to.sort_unstable();
    } else if let Some(slot) = overlay.members.get(mac_word(dst)) {
        to.push(slot);
    }
    !to.is_empty()
}

/// Every overlay of the driver, the underlay neighbours, and what is to be sent and
/// delivered. See the module documentation.
#[derive(Debug, Default)]
pub struct Overlays {
    by_vni: FxHashMap<u32, Overlay>,
    /// Every overlay instance's MAC: its overlay and slot.
    members: MacIndex<(u32, Slot)>,
    /// The distinct VXLAN ports of the overlays.
    ports: Vec<u16>,
    /// Underlay IPv4 address to link MAC, learned from ARP and VXLAN.
    neighbours: FxHashMap<[u8; 4], [u8; 6]>,
    /// VTEP addresses asked for by ARP, and when.
    arp_asked: FxHashMap<[u8; 4], u64>,
    /// This host's link MAC and underlay address.
    src_mac: [u8; 6],
    src_ip: Option<[u8; 4]>,
    /// The link's MTU.
    link_mtu: usize,
    /// The neighbour learnt (or confirmed) last, as it is in `neighbours`.
    last_learned: Option<([u8; 4], [u8; 6])>,
    /// Frames to put on the link.
    outbox: Vec<Vec<u8>>,
    /// Buffers of frames the link took, for the next encapsulations: a steady stream of
    /// overlay frames allocates nothing (at most [`SPARE_BUFFERS`] are kept).
    spare: Vec<Vec<u8>>,
    /// Frames to deliver to instances on this host.
    inbox: Vec<(Slot, Vec<u8>)>,
    /// Frames for every queue of an instance, unclassified (neighbour advertisements, which
    /// no port filter takes, as ARP replies go to every queue).
    to_every_queue: Vec<(Slot, Vec<u8>)>,
    /// Slots a decapsulated frame goes to ([`Received::Inner`]).
    pub deliver_to: Vec<Slot>,
    unknown_vni: u64,
    malformed: u64,
}

impl Overlays {
    /// Whether any overlay exists (the receive path looks at nothing otherwise).
    #[inline]
    pub fn active(&self) -> bool {
        !self.by_vni.is_empty()
    }

    /// The overlay and slot of the overlay instance whose MAC is `frame`'s source.
    pub fn sender(&self, frame: &[u8]) -> Option<(u32, Slot)> {
        let src = frame.get(6..12)?;
        self.members.get(mac_word(src))
    }

    fn set_ports(&mut self) {
        self.ports = self.by_vni.values().map(|o| o.info.port).collect();
        self.ports.sort_unstable();
        self.ports.dedup();
    }

    /// Decides what a received frame is (see [`Received`]); learns underlay neighbours from
    /// ARP and VXLAN on the way.
    #[inline]
    pub fn receive(&mut self, frame: &[u8], now_ns: u64) -> Received {
        if frame.get(12..14) == Some(&ethertype::ARP.to_be_bytes()[..]) {
            if let Some(Ok(p)) = frame.get(ETHERNET_HEADER_LEN..).map(ArpPacket::new_checked) {
                if p.is_ethernet_ipv4() && p.sender_ip() != [0; 4] {
                    self.learn(p.sender_ip(), p.sender_mac(), now_ns);
                }
            }
            return Received::NotOverlay;
        }
        let Some(outer) = vxlan::outer_udp(frame) else {
            return Received::NotOverlay;
        };
        if !self.ports.contains(&outer.dst_port) || Some(outer.dst_ip) != self.src_ip {
            return Received::NotOverlay;
        }
        let payload = frame.get(outer.payload..outer.payload_end).unwrap_or(&[]);
        let decap = match vxlan::decapsulate(payload) {
            Ok(d) => d,
            Err(_) => {
                self.malformed += 1;
                return Received::Dropped;
            }
        };
        let Some(overlay) = self.by_vni.get_mut(&decap.vni) else {
            self.unknown_vni += 1;
            return Received::Dropped;
        };
        if overlay.info.port != outer.dst_port {
            self.unknown_vni += 1;
            return Received::Dropped;
        }
        let inner = decap.inner;
        if inner
            .get(12..14)
            .is_some_and(|t| ethertype::is_vlan_tag(u16::from_be_bytes([t[0], t[1]])))
        {
            overlay.drop(Drop::InnerVlan);
            return Received::Dropped;
        }
        if !select(overlay, inner, &mut self.deliver_to) {
            overlay.drop(Drop::NoInstance);
            return Received::Dropped;
        }
        overlay.rx_frames += 1;
        let vni = decap.vni;
        self.learn(outer.src_ip, outer.src_mac, now_ns);
        let start = outer.payload + vxlan::HEADER_LEN;
        Received::Inner {
            start,
            end: start + inner.len(),
            vni,
        }
    }

    /// The inner frame of [`Received::Inner`] as it is to be delivered: itself, or, for an
    /// inner IP fragment, nothing until its datagram is whole and then the datagram (whose
    /// receivers [`Overlays::deliver_to`] then names). A datagram delivered is handed back
    /// with [`Overlays::recycle`].
    #[inline]
    pub fn reassemble<'a>(&mut self, vni: u32, inner: &'a [u8], now_ns: u64) -> Outcome<'a> {
        // Untagged IPv4 (nearly every inner frame) is read here; the rest is parsed in full.
        let whole = match inner.get(12..24) {
            Some(&[0x08, 0x00, _, _, _, _, _, _, flags, offset, _, _]) => {
                u16::from_be_bytes([flags, offset])
                    & (netmux_wire::ipv4::FLAG_MF | netmux_wire::ipv4::OFFSET_MASK)
                    == 0
            }
            _ => !reassembly::is_fragment(inner),
        };
        if whole {
            return Outcome::Deliver(inner);
        }
        let Some(overlay) = self.by_vni.get_mut(&vni) else {
            return Outcome::Dropped(reassembly::DropReason::Malformed);
        };
        let outcome = overlay.reassembler.push(inner, now_ns);
        if let Outcome::Reassembled(datagram) = &outcome {
            if !select(overlay, datagram, &mut self.deliver_to) {
                overlay.drop(Drop::NoInstance);
            }
        }
        outcome
    }

    /// Hands a datagram [`Overlays::reassemble`] gave back to its overlay's reassembler.
    pub fn recycle(&mut self, vni: u32, datagram: Vec<u8>) {
        if let Some(o) = self.by_vni.get_mut(&vni) {
            o.reassembler.recycle(datagram);
        }
    }

    /// Discards inner datagrams not whole in time.
    pub fn expire_fragments(&mut self, now_ns: u64) {
        for o in self.by_vni.values_mut() {
            o.reassembler.expire(now_ns);
        }
    }

    /// Learns that `ip` is at `mac` on the link; frames waiting for it are sent.
    #[inline]
    fn learn(&mut self, ip: [u8; 4], mac: [u8; 6], now_ns: u64) {
        // A stream of frames from one VTEP asks the same question frame after frame.
        if self.last_learned == Some((ip, mac)) {
            return;
        }
        self.learn_new(ip, mac, now_ns);
    }

    /// [`Overlays::learn`] of a neighbour other than the last one.
    fn learn_new(&mut self, ip: [u8; 4], mac: [u8; 6], now_ns: u64) {
        if self.neighbours.get(&ip) == Some(&mac) || mac[0] & 1 != 0 {
            self.last_learned = (mac[0] & 1 == 0).then_some((ip, mac));
            return;
        }
        if self.neighbours.len() >= MAX_NEIGHBOURS && !self.neighbours.contains_key(&ip) {
            return;
        }
        self.neighbours.insert(ip, mac);
        self.last_learned = Some((ip, mac));
        if self.arp_asked.remove(&ip).is_some() {
            self.retry_all(now_ns);
        }
    }

    fn retry_all(&mut self, now_ns: u64) {
        let vnis: Vec<u32> = self.by_vni.keys().copied().collect();
        for vni in vnis {
            self.retry(vni, now_ns);
        }
    }

    /// Sends, drops or keeps every frame waiting in overlay `vni`, by what is known now.
    fn retry(&mut self, vni: u32, now_ns: u64) {
        let Some(overlay) = self.by_vni.get_mut(&vni) else {
            return;
        };
        let waiting = std::mem::take(&mut overlay.waiting);
        overlay.waiting_bytes = 0;
        for w in waiting {
            let Some(overlay) = self.by_vni.get_mut(&vni) else {
                return;
            };
            if now_ns.saturating_sub(w.since_ns) > WAIT_TIMEOUT_NS {
                overlay.drop(Drop::Timeout);
                continue;
            }
            let dst = mac_word(&w.frame);
            match overlay.cache.get(dst) {
                Some(Some(target)) => match self.neighbours.get(&target.0).copied() {
                    Some(mac) => self.encapsulate(vni, &w.frame, target, mac),
                    None => {
                        overlay.waiting_bytes += w.frame.len();
                        overlay.waiting.push_back(w);
                    }
                },
                Some(None) => overlay.drop(Drop::NoMapping),
                None => {
                    overlay.waiting_bytes += w.frame.len();
                    overlay.waiting.push_back(w);
                }
            }
        }
    }

    fn encapsulate(&mut self, vni: u32, frame: &[u8], target: ([u8; 4], u16), mac: [u8; 6]) {
        let Some(src_ip) = self.src_ip else {
            return;
        };
        let to = Underlay {
            src_mac: self.src_mac,
            dst_mac: mac,
            src_ip,
            dst_ip: target.0,
            dst_port: target.1,
        };
        let mut out = self.spare.pop().unwrap_or_default();
        out.clear();
        if vxlan::encapsulate(frame, vni, &to, &mut out).is_ok() {
            if let Some(o) = self.by_vni.get_mut(&vni) {
                o.tx_frames += 1;
            }
            self.outbox.push(out);
        } else {
            self.spare.push(out);
        }
    }

    /// Asks the link who has `ip` (an ARP request from the underlay address), unless asked
    /// recently.
    fn ask_neighbour(&mut self, ip: [u8; 4], now_ns: u64) {
        let Some(src_ip) = self.src_ip else {
            return;
        };
        let due = self
            .arp_asked
            .get(&ip)
            .is_none_or(|&t| now_ns.saturating_sub(t) >= ARP_RETRY_NS);
        if !due {
            return;
        }
        self.arp_asked.insert(ip, now_ns);
        let mut f = vec![0u8; ETHERNET_HEADER_LEN + arp::PACKET_LEN];
        f[..6].copy_from_slice(&BROADCAST);
        f[6..12].copy_from_slice(&self.src_mac);
        f[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
        ArpPacket::new_unchecked(&mut f[ETHERNET_HEADER_LEN..]).emit(
            arp::OP_REQUEST,
            (self.src_mac, src_ip),
            ([0; 6], ip),
        );
        self.outbox.push(f);
    }

    /// What becomes of `frame`, transmitted in overlay `vni` by the instance at `sender`
    /// after its queue's tx filters accepted it. See the module documentation.
    pub fn transmit(&mut self, vni: u32, sender: Slot, frame: &[u8], now_ns: u64) -> TxStatus {
        let link_mtu = self.link_mtu;
        let has_src = self.src_ip.is_some();
        let Some(overlay) = self.by_vni.get_mut(&vni) else {
            return TxStatus::RejectedNoMapping;
        };
        let ip_len = frame.len().saturating_sub(ETHERNET_HEADER_LEN);
        if ip_len > usize::from(overlay.info.mtu) || ip_len + OVERHEAD_V4 > link_mtu {
            return TxStatus::RejectedTooLargeForOverlay;
        }
        let Some(dst) = frame.get(..6) else {
            return TxStatus::RejectedMalformed;
        };
        if dst[0] & 1 != 0 {
            if let Some(&proxy) = is_dhcp_broadcast(frame)
                .then(|| overlay.dhcp.get(&mac_word(&frame[6..12])))
                .flatten()
            {
                // As varpd: the broadcast goes, unicast, to the mapping's DHCP host.
                let mut unicast = frame.to_vec();
                unicast[..6].copy_from_slice(&proxy);
                return self.transmit(vni, sender, &unicast, now_ns);
            }
            return self.broadcast(vni, sender, frame);
        }
        let dst = mac_word(dst);
        if let Some(slot) = overlay.members.get(dst) {
            if slot != sender {
                overlay.tx_frames += 1;
                self.inbox.push((slot, frame.to_vec()));
            }
            return TxStatus::Sent;
        }
        if !has_src {
            overlay.drop(Drop::NoMapping);
            return TxStatus::RejectedNoMapping;
        }
        match overlay.cache.get(dst) {
            Some(Some(target)) => match self.neighbours.get(&target.0).copied() {
                Some(mac) => {
                    self.encapsulate(vni, frame, target, mac);
                    TxStatus::Sent
                }
                None => {
                    overlay.wait(frame, now_ns);
                    self.ask_neighbour(target.0, now_ns);
                    TxStatus::Sent
                }
            },
            Some(None) => {
                overlay.drop(Drop::NoMapping);
                TxStatus::RejectedNoMapping
            }
            None => {
                overlay.ask(dst, now_ns);
                overlay.wait(frame, now_ns);
                TxStatus::Sent
            }
        }
    }

    /// A broadcast or multicast frame of an overlay instance: an ARP request is answered by
    /// proxy, anything else dropped.
    fn broadcast(&mut self, vni: u32, sender: Slot, frame: &[u8]) -> TxStatus {
        let Some(overlay) = self.by_vni.get_mut(&vni) else {
            return TxStatus::RejectedNoMapping;
        };
        let request = (frame.get(12..14) == Some(&ethertype::ARP.to_be_bytes()[..]))
            .then(|| frame.get(ETHERNET_HEADER_LEN..).map(ArpPacket::new_checked))
            .flatten()
            .and_then(Result::ok)
            .filter(|p| p.is_ethernet_ipv4() && p.operation() == arp::OP_REQUEST);
        let Some(request) = request else {
            if let Some((target, asker)) = neighbour_solicitation(frame) {
                let Some(&mac) = overlay.ndp.get(&target) else {
                    overlay.drop(Drop::NoProxyNdp);
                    return TxStatus::RejectedNoMapping;
                };
                overlay.proxy_ndp += 1;
                let advert = proxy_neighbour_advertisement(frame, target, asker, mac);
                self.to_every_queue.push((sender, advert));
                return TxStatus::Sent;
            }
            overlay.drop(Drop::Broadcast);
            return TxStatus::RejectedNoMapping;
        };
        if request.sender_ip() == request.target_ip() {
            overlay.drop(Drop::GratuitousArp);
            return TxStatus::Sent;
        }
        let Some(&mac) = overlay.arp.get(&request.target_ip()) else {
            overlay.drop(Drop::NoProxyArp);
            return TxStatus::RejectedNoMapping;
        };
        overlay.proxy_arp += 1;
        let reply = proxy_arp_reply(frame, mac);
        self.inbox.push((sender, reply));
        TxStatus::Sent
    }

    /// Drops frames that waited too long, and asks again for what is still unanswered.
    pub fn expire(&mut self, now_ns: u64) {
        let stale = |o: &Overlay| {
            o.waiting
                .front()
                .is_some_and(|w| now_ns.saturating_sub(w.since_ns) > WAIT_TIMEOUT_NS)
        };
        let vnis: Vec<u32> = self
            .by_vni
            .iter()
            .filter(|(_, o)| stale(o))
            .map(|(&v, _)| v)
            .collect();
        for vni in vnis {
            self.retry(vni, now_ns);
        }
    }

    /// Whether frames are to be sent or delivered.
    pub fn has_output(&self) -> bool {
        !self.outbox.is_empty() || !self.inbox.is_empty() || !self.to_every_queue.is_empty()
    }
}

/// The ARP reply to `request` (a checked Ethernet/IPv4 ARP request) saying that its target
/// address is at `mac`, built as varpd does: op reply, target hardware address the asker's,
/// sender hardware address `mac`, protocol addresses swapped, Ethernet from `mac` to the
/// asker.
pub fn proxy_arp_reply(request: &[u8], mac: [u8; 6]) -> Vec<u8> {
    let p = ArpPacket::new_unchecked(&request[ETHERNET_HEADER_LEN..]);
    let (asker_mac, asker_ip, target_ip) = (p.sender_mac(), p.sender_ip(), p.target_ip());
    let mut f = vec![0u8; ETHERNET_HEADER_LEN + arp::PACKET_LEN];
    f[..6].copy_from_slice(&asker_mac);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
    ArpPacket::new_unchecked(&mut f[ETHERNET_HEADER_LEN..]).emit(
        arp::OP_REPLY,
        (mac, target_ip),
        (asker_mac, asker_ip),
    );
    f
}

/// Whether `frame` is what varpd forwards to a `dhcp-proxy` host: untagged IPv4 UDP from port
/// 68 to port 67, to the broadcast MAC. Never panics.
pub fn is_dhcp_broadcast(frame: &[u8]) -> bool {
    let Some(outer) = vxlan::outer_udp(frame) else {
        return false;
    };
    frame.get(..6) == Some(&BROADCAST[..])
        && frame.get(12..14) == Some(&ethertype::IPV4.to_be_bytes()[..])
        && outer.src_port == 68
        && outer.dst_port == 67
}

/// The target address and the asker's link-layer address of a neighbour solicitation, as
/// varpd accepts one: untagged IPv6 to a `33:33:*` MAC, ICMPv6 type 135 with hop limit 255, a
/// target that is not multicast, loopback or v4-mapped, and a source link-layer address
/// option (an option of length 0 refuses the whole frame). `None` for anything else. Never
/// panics.
pub fn neighbour_solicitation(frame: &[u8]) -> Option<([u8; 16], [u8; 6])> {
    if frame.get(..2)? != [0x33, 0x33] || frame.get(12..14)? != ethertype::IPV6.to_be_bytes() {
        return None;
    }
    let ip = frame.get(ETHERNET_HEADER_LEN..)?;
    let payload_len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
    if ip[0] >> 4 != 6 || ip[6] != 58 || ip[7] != 255 {
        return None;
    }
    let icmp = ip.get(40..40 + payload_len)?;
    if *icmp.first()? != 135 || icmp.len() < 24 {
        return None;
    }
    let target: [u8; 16] = icmp[8..24].try_into().ok()?;
    let v4_mapped = target[..10] == [0; 10] && target[10..12] == [0xff, 0xff];
    if target[0] == 0xff || target == std::net::Ipv6Addr::LOCALHOST.octets() || v4_mapped {
        return None;
    }
    let mut options = &icmp[24..];
    let mut asker = None;
    while options.len() >= 2 {
        let len = usize::from(options[1]) * 8;
        if len == 0 || len > options.len() {
            return None;
        }
        if options[0] == 1 && len >= 8 {
            asker = Some(options[2..8].try_into().ok()?);
        }
        options = &options[len..];
    }
    Some((target, asker?))
}

/// The neighbour advertisement answering `solicitation` (checked by
/// [`neighbour_solicitation`]) that `target` is at `mac`: solicited and override, with the
/// target link-layer address option, from `target` to the solicitation's source, as varpd
/// builds it.
pub fn proxy_neighbour_advertisement(
    solicitation: &[u8],
    target: [u8; 16],
    asker: [u8; 6],
    mac: [u8; 6],
) -> Vec<u8> {
    let src: [u8; 16] = solicitation
        .get(ETHERNET_HEADER_LEN + 8..ETHERNET_HEADER_LEN + 24)
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; 16]);
    let mut f = Vec::with_capacity(ETHERNET_HEADER_LEN + 40 + 32);
    f.extend_from_slice(&asker);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ethertype::IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 32, 58, 255]);
    f.extend_from_slice(&target);
    f.extend_from_slice(&src);
    let icmp = f.len();
    f.extend_from_slice(&[136, 0, 0, 0, 0x60, 0, 0, 0]);
    f.extend_from_slice(&target);
    f.extend_from_slice(&[2, 1]);
    f.extend_from_slice(&mac);
    let sum = netmux_wire::checksum::fold(netmux_wire::checksum::add(
        netmux_wire::checksum::pseudo_v6(&target, &src, 58, 32),
        &f[icmp..],
    ));
    f[icmp + 2..icmp + 4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The gratuitous ARP announcing that `ip` is now at `mac`: a broadcast ARP reply with sender
/// and target address `ip` (a reply, so that every queue of an instance receives it, as the
/// driver delivers replies).
pub fn gratuitous_arp(ip: [u8; 4], mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; ETHERNET_HEADER_LEN + arp::PACKET_LEN];
    f[..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
    ArpPacket::new_unchecked(&mut f[ETHERNET_HEADER_LEN..]).emit(
        arp::OP_REPLY,
        (mac, ip),
        (BROADCAST, ip),
    );
    f
}

/// Encapsulated frames kept for a busy link, at most: beyond it they are dropped and counted
/// (`link`). A client's transmit completes when its frame is encapsulated, so these bytes are
/// the overlay's own flow-control buffer.
const OUTBOX_HELD_MAX_BYTES: usize = 4 << 20;
/// Memory for one overlay's inner fragments (a quarter of the link's reassembly budget; a
/// quarter of that per source, as there).
const INNER_REASSEMBLY_BUDGET: usize = 1 << 20;
/// Buffers of sent overlay frames kept for reuse: two transmit batches' worth.
const SPARE_BUFFERS: usize = 64;

impl Driver {
    /// Carries out an overlay request.
    pub(super) fn handle_overlay(&mut self, request: DriverRequest) -> Response {
        let response = match request {
            DriverRequest::SetOverlay(info) => self.set_overlay(info),
            DriverRequest::RemoveOverlay { vni } => self.remove_overlay(vni),
            DriverRequest::SetOverlayMappings(m) => self.set_overlay_mappings(m),
            DriverRequest::OverlayPoll => Response::reply(DriverReply::OverlayPoll(self.poll())),
            _ => Response::error(ErrorCode::Internal, "not an overlay request"),
        };
        self.flush_overlays();
        response
    }

    fn set_overlay(&mut self, info: OverlayInfo) -> Response {
        if info.vni > vxlan::MAX_VNI {
            return Response::error(
                ErrorCode::Limit,
                format!("a VNI has 24 bits: {} is too large", info.vni),
            );
        }
        if info.port == 0 {
            return Response::error(ErrorCode::Limit, "the VXLAN port cannot be 0");
        }
        let link_mtu = usize::try_from(self.link.info().mtu).unwrap_or(usize::MAX);
        let largest = link_mtu.saturating_sub(OVERHEAD_V4);
        if usize::from(info.mtu) > largest || info.mtu < 68 {
            return Response::error(
                ErrorCode::Limit,
                format!(
                    "an overlay MTU must be 68 to {largest} (the link's MTU {link_mtu} less {OVERHEAD_V4} bytes of VXLAN)"
                ),
            );
        }
        let overlays = &mut self.overlays;
        overlays.link_mtu = link_mtu;
        let count = overlays.by_vni.len();
        match overlays.by_vni.get_mut(&info.vni) {
            Some(o) => o.info = info,
            None if count >= MAX_OVERLAYS => {
                return Response::error(
                    ErrorCode::Limit,
                    format!("at most {MAX_OVERLAYS} overlays"),
                )
            }
            None => {
                overlays.by_vni.insert(info.vni, Overlay::new(info));
            }
        }
        overlays.set_ports();
        self.set_underlay_source();
        Response::done()
    }

    fn remove_overlay(&mut self, vni: u32) -> Response {
        let Some(o) = self.overlays.by_vni.get(&vni) else {
            return Response::error(ErrorCode::NotFound, format!("no overlay {vni}"));
        };
        if !o.members.is_empty() {
            return Response::error(
                ErrorCode::InUse,
                format!("overlay {vni} still has instances"),
            );
        }
        self.overlays.by_vni.remove(&vni);
        self.overlays.set_ports();
        Response::done()
    }

    fn set_overlay_mappings(&mut self, m: OverlayMappings) -> Response {
        let now = self.now_ns();
        let Some(o) = self.overlays.by_vni.get_mut(&m.vni) else {
            return Response::error(ErrorCode::NotFound, format!("no overlay {}", m.vni));
        };
        if m.flush {
            o.cache.clear();
            o.asked.clear();
        }
        for mapping in &m.mappings {
            let mac = mac_word(&mapping.mac);
            o.asked.remove(&mac);
            o.cache.insert(mac, mapping.target);
        }
        if let Some(dhcp) = m.dhcp {
            o.dhcp = dhcp
                .into_iter()
                .filter(|(_, proxy)| proxy[0] & 1 == 0)
                .take(MAX_PROXY_ARP)
                .map(|(client, proxy)| (mac_word(&client), proxy))
                .collect();
        }
        if let Some(ndp) = m.ndp {
            o.ndp = ndp.into_iter().take(MAX_PROXY_ARP).collect();
        }
        if let Some(arp) = m.arp {
            let new: FxHashMap<[u8; 4], [u8; 6]> = arp.into_iter().take(MAX_PROXY_ARP).collect();
            // An address that moved to another MAC is announced to the overlay's instances,
            // which would otherwise keep sending to the old MAC until their caches expire.
            let mut moved: Vec<([u8; 4], [u8; 6])> = new
                .iter()
                .filter(|(ip, mac)| o.arp.get(*ip).is_some_and(|old| old != *mac))
                .map(|(ip, mac)| (*ip, *mac))
                .collect();
            moved.sort_unstable();
            o.arp = new;
            let members: Vec<Slot> = o.members.values().collect();
            for (ip, mac) in moved {
                let announcement = gratuitous_arp(ip, mac);
                for &slot in &members {
                    self.overlays.inbox.push((slot, announcement.clone()));
                }
            }
        }
        // Frames that wait for a target whose link address is unknown ask for it now.
        let targets: Vec<[u8; 4]> = o
            .waiting
            .iter()
            .filter_map(|w| o.cache.get(mac_word(&w.frame)).flatten())
            .map(|(ip, _)| ip)
            .collect();
        for ip in targets {
            if !self.overlays.neighbours.contains_key(&ip) {
                self.overlays.ask_neighbour(ip, now);
            }
        }
        self.overlays.retry(m.vni, now);
        Response::done()
    }

    fn poll(&mut self) -> OverlayPollReply {
        let now = self.now_ns();
        self.overlays.expire(now);
        let mut reply = OverlayPollReply {
            unknown_vni: self.overlays.unknown_vni,
            malformed: self.overlays.malformed,
            ..OverlayPollReply::default()
        };
        let mut vnis: Vec<u32> = self.overlays.by_vni.keys().copied().collect();
        vnis.sort_unstable();
        for vni in vnis {
            if let Some(o) = self.overlays.by_vni.get_mut(&vni) {
                reply
                    .misses
                    .extend(o.misses.drain(..).map(|mac| (vni, mac)));
                reply.overlays.push(o.counters());
            }
        }
        reply
    }

    /// The underlay source: the link's MAC and the default instance's first IPv4 address.
    pub(super) fn set_underlay_source(&mut self) {
        self.overlays.src_mac = self.link_mac;
        self.overlays.src_ip = self.instances.get(0).and_then(|i| i.ipv4.first().copied());
        self.overlays.link_mtu = usize::try_from(self.link.info().mtu).unwrap_or(usize::MAX);
    }

    /// Refuses an instance on an unknown overlay.
    pub(super) fn check_overlay_instance(&self, info: &InstanceInfo) -> Result<(), String> {
        match info.overlay {
            Some(vni) if !self.overlays.by_vni.contains_key(&vni) => {
                Err(format!("no overlay {vni}"))
            }
            _ => Ok(()),
        }
    }

    /// Records (again) the instance at `slot` as a member of its overlay.
    pub(super) fn attach_overlay_instance(&mut self, slot: Slot) {
        self.detach_overlay_instance(slot);
        let Some((vni, mac)) = self
            .instances
            .get(slot)
            .and_then(|i| i.overlay.map(|v| (v, i.mac)))
        else {
            return;
        };
        if let Some(o) = self.overlays.by_vni.get_mut(&vni) {
            o.members.insert(mac_word(&mac), slot);
            self.overlays.members.insert(mac_word(&mac), (vni, slot));
        }
    }

    /// Forgets the instance at `slot` in every overlay.
    pub(super) fn detach_overlay_instance(&mut self, slot: Slot) {
        self.overlays.members.retain(|&(_, s)| s != slot);
        for o in self.overlays.by_vni.values_mut() {
            o.members.retain(|&s| s != slot);
        }
    }

    /// Puts encapsulated frames on the link and delivers frames for instances on this host.
    pub(super) fn flush_overlays(&mut self) {
        if !self.overlays.has_output() {
            return;
        }
        let mut outbox = std::mem::take(&mut self.overlays.outbox);
        let frames: Vec<&[u8]> = outbox.iter().map(Vec::as_slice).collect();
        let offer = super::send_frames(self.link.as_mut(), &frames, super::LINK_BUSY_RETRIES);
        drop(frames);
        let room = SPARE_BUFFERS.saturating_sub(self.overlays.spare.len());
        let mut sent = outbox.drain(..offer.taken);
        self.overlays.spare.extend(sent.by_ref().take(room));
        drop(sent);
        let dropped;
        if offer.rest == super::Unsent::Busy {
            // Kept, in order, for the next turn, within the bound.
            let mut bytes = 0;
            let keep = outbox
                .iter()
                .take_while(|f| {
                    bytes += f.len();
                    bytes <= OUTBOX_HELD_MAX_BYTES
                })
                .count();
            dropped = outbox.len() - keep;
            outbox.truncate(keep);
            self.overlays.outbox = outbox;
        } else {
            dropped = outbox.len();
        }
        if dropped > 0 {
            tracing::debug!(dropped, "overlay frames not sent");
            if let Some(o) = self.overlays.by_vni.values_mut().next() {
                for _ in 0..dropped {
                    o.drop(Drop::Link);
                }
            }
        }
        let inbox = std::mem::take(&mut self.overlays.inbox);
        for (slot, frame) in &inbox {
            self.deliver_to(frame, Target::One(*slot));
        }
        for (slot, frame) in std::mem::take(&mut self.overlays.to_every_queue) {
            let queues = self
                .instances
                .get(slot)
                .map(|i| i.queues.clone())
                .unwrap_or_default();
            for id in queues {
                if let Some(queue) = self.queues.get_mut(&id) {
                    if queue.ring.push_rx(&[&frame[..]]) == netmux_ring::RxOutcome::Queued
                        && !queue.touched
                    {
                        queue.touched = true;
                        self.touched.push(id);
                    }
                }
            }
        }
        self.flush_touched();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_words_round_trip() {
        let m = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        assert_eq!(word_mac(mac_word(&m)), m);
    }

    #[test]
    fn a_proxy_arp_reply_is_the_request_turned_around() {
        let asker = [2, 0, 0, 0, 0, 1];
        let answer = [2, 0, 0, 0, 0, 2];
        let mut req = vec![0u8; 42];
        req[..6].copy_from_slice(&BROADCAST);
        req[6..12].copy_from_slice(&asker);
        req[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
        ArpPacket::new_unchecked(&mut req[14..]).emit(
            arp::OP_REQUEST,
            (asker, [10, 0, 0, 1]),
            ([0; 6], [10, 0, 0, 2]),
        );
        let reply = proxy_arp_reply(&req, answer);
        let p = ArpPacket::new_checked(&reply[14..]).unwrap();
        assert_eq!(&reply[..12], &[asker, answer].concat()[..]);
        assert_eq!(p.operation(), arp::OP_REPLY);
        assert_eq!((p.sender_mac(), p.sender_ip()), (answer, [10, 0, 0, 2]));
        assert_eq!((p.target_mac(), p.target_ip()), (asker, [10, 0, 0, 1]));
    }
}
