//! Overlays between netd and the driver: what an overlay is to the driver, the mapping
//! service's answers, and what the driver reports back (lookups it waits for, counters).
//!
//! The driver never blocks on netd: a frame to a MAC it has no mapping for waits in a bounded
//! queue and the MAC is listed in the next [`OverlayPollReply`]; netd answers with
//! [`OverlayMappings`], which the driver caches until netd replaces or flushes them.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// An overlay as the driver needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayInfo {
    /// Its VXLAN network id (24 bits).
    pub vni: u32,
    /// The UDP port it receives VXLAN on (and sends to when a mapping names no port).
    pub port: u16,
    /// The largest inner IP packet its instances may send: at most the link's MTU minus the
    /// 50 bytes of encapsulation.
    pub mtu: u16,
}

/// Where one overlay MAC lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayMapping {
    /// The overlay MAC.
    pub mac: [u8; 6],
    /// Its VTEP's underlay IPv4 address and UDP port; `None`: the mapping service has no
    /// entry (frames to it are dropped and counted).
    pub target: Option<([u8; 4], u16)>,
}

/// Answers of the mapping service for one overlay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayMappings {
    /// The overlay.
    pub vni: u32,
    /// Forget every cached mapping first (the backend changed).
    pub flush: bool,
    /// Mappings to cache.
    pub mappings: Vec<OverlayMapping>,
    /// When `Some`, replaces the addresses proxy ARP answers for: (overlay IPv4, its MAC).
    pub arp: Option<Vec<([u8; 4], [u8; 6])>>,
    /// When `Some`, replaces the addresses proxy NDP answers for: (overlay IPv6, its MAC).
    #[serde(default)]
    pub ndp: Option<Vec<([u8; 16], [u8; 6])>>,
    /// When `Some`, replaces where DHCPv4 broadcasts go: (client MAC, the MAC its DISCOVER
    /// and REQUEST are sent to).
    #[serde(default)]
    pub dhcp: Option<Vec<([u8; 6], [u8; 6])>>,
}

/// One overlay's counters and state, as the driver reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayCounters {
    /// Its VNI.
    pub vni: u32,
    /// Frames decapsulated into it.
    pub rx_frames: u64,
    /// Frames encapsulated from it.
    pub tx_frames: u64,
    /// Lookups the driver asked netd for.
    pub misses: u64,
    /// Mappings cached now.
    pub cached: u64,
    /// Bytes of frames waiting for a lookup now.
    pub waiting_bytes: u64,
    /// Frames dropped, by reason.
    pub dropped: Vec<(String, u64)>,
    /// ARP requests answered by proxy.
    pub proxy_arp: u64,
    /// Neighbour solicitations answered by proxy.
    #[serde(default)]
    pub proxy_ndp: u64,
}

/// The reply to [`crate::driver::DriverRequest::OverlayPoll`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayPollReply {
    /// (VNI, MAC) pairs the driver waits for a mapping of, each listed once until answered
    /// (and again after [`LOOKUP_RETRY_MS`] without an answer).
    pub misses: Vec<(u32, [u8; 6])>,
    /// Every overlay's counters.
    pub overlays: Vec<OverlayCounters>,
    /// VXLAN datagrams for no known overlay: dropped.
    pub unknown_vni: u64,
    /// Datagrams to a VXLAN port whose header is malformed: dropped.
    pub malformed: u64,
}

/// How long the driver waits for an answer before listing a lookup again.
pub const LOOKUP_RETRY_MS: u64 = 1000;
/// Bytes of frames that may wait for lookups, per overlay (illumos overlay's limit).
pub const MAX_WAITING_BYTES: usize = 1 << 20;

/// What `netmux overlay create` asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlaySpec {
    /// At most 31 characters of `[A-Za-z0-9:_-]`, unique.
    pub name: String,
    /// Its VXLAN network id (0 to 16,777,215), unique.
    pub vni: u32,
    /// Its VXLAN UDP port.
    pub port: u16,
    /// Where its mappings come from: `files:/absolute/path.json`.
    pub mapping: String,
    /// Its MTU; the link's MTU less 50 when `None`.
    pub mtu: Option<u16>,
    /// Whether it is forgotten when netd stops.
    pub temporary: bool,
}

/// An overlay as `netmux overlay ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayView {
    /// What it was created with (the MTU filled in).
    pub spec: OverlaySpec,
    /// `ok`, or `degraded: <why>` (the last good mappings stay in use).
    pub state: String,
    /// Mappings its backend holds.
    pub mappings: u64,
    /// Instances living on it.
    pub instances: Vec<String>,
    /// The driver's counters, as of netd's last poll.
    pub counters: OverlayCounters,
}

/// One mapping entry, as `netmux overlay map` shows and sets it: the fields of illumos
/// varpd's files plugin for one overlay MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingEntry {
    /// The overlay MAC.
    pub mac: [u8; 6],
    /// Its VTEP's underlay address (`ip`).
    pub ip: Ipv4Addr,
    /// Its VXLAN port (`port`); `None`: frames to this MAC are dropped.
    pub port: Option<u16>,
    /// The overlay IPv4 address proxy ARP answers with this MAC (`arp`).
    pub arp: Option<Ipv4Addr>,
    /// The overlay IPv6 address proxy NDP answers with this MAC (`ndp`).
    pub ndp: Option<Ipv6Addr>,
    /// Where this MAC's DHCP broadcasts go (`dhcp-proxy`).
    pub dhcp_proxy: Option<[u8; 6]>,
}

/// What `netmux overlay map set|rm` asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MappingChange {
    /// Adds or replaces the entry of `entry.mac`.
    Set(MappingEntry),
    /// Removes the entry of a MAC.
    Remove([u8; 6]),
}
