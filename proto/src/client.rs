//! Messages between a client and netd on `RUNTIME_DIR/netd.sock`. Every request gets exactly
//! one reply, in order.

use serde::{Deserialize, Serialize};

use crate::{ErrorReply, LinkInfo};

pub mod ops;

/// A transport protocol a client binds ports of: the one `Transport` of the workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Transport {
    /// Both, in protocol-number order.
    pub const ALL: [Transport; 2] = [Transport::Tcp, Transport::Udp];

    /// The IP protocol number.
    pub const fn ip_protocol(self) -> u8 {
        match self {
            Transport::Tcp => 6,
            Transport::Udp => 17,
        }
    }

    /// The pcap-filter keyword (`tcp`, `udp`).
    pub const fn keyword(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.keyword())
    }
}

/// What an `open_filter` filter does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FilterMode {
    /// Copies of matching received frames, never the client's own transmissions.
    Tap,
    /// The whole link for this client alone.
    Exclusive,
}

/// The host's network configuration, as a client's stack needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConfig {
    /// The link (MAC, MTU).
    pub link: LinkInfo,
    /// IPv4 address and prefix length.
    pub ipv4: Option<([u8; 4], u8)>,
    /// IPv4 default gateway.
    pub gateway: Option<[u8; 4]>,
    /// IPv6 link-local address.
    pub ipv6_link_local: Option<[u8; 16]>,
    /// DNS servers (from the host's DHCP lease; empty when none are known).
    #[serde(default)]
    pub dns_servers: Vec<[u8; 4]>,
    /// Global IPv6 addresses and their prefix lengths (static, or from router advertisements);
    /// empty when the host has none. Absent in older netds' messages.
    #[serde(default)]
    pub ipv6: Vec<([u8; 16], u8)>,
    /// IPv6 default router (a link-local address, from a router advertisement or configured).
    #[serde(default)]
    pub ipv6_gateway: Option<[u8; 16]>,
}

/// The name of the instance a client joins when it names none.
pub const DEFAULT_INSTANCE_NAME: &str = "default";

/// How an instance gets its MAC address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MacChoice {
    /// A locally administered MAC of its own, derived from the link's MAC and the instance's
    /// name (so it is the same after a restart): frames are told apart by MAC (macvlan-like).
    #[default]
    Generated,
    /// This MAC of its own (a unicast address).
    Given([u8; 6]),
    /// The link's MAC, shared with other instances: frames are told apart by address
    /// (ipvlan-like), for switches that allow one MAC per port.
    Shared,
}

/// What `netmux instance create` asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// At most 31 characters of `[A-Za-z0-9:_-]`, unique.
    pub name: String,
    /// Its MAC.
    pub mac: MacChoice,
    /// IPv4 address and prefix length.
    pub ipv4: ([u8; 4], u8),
    /// IPv4 default gateway.
    pub gateway: Option<[u8; 4]>,
    /// Whether it answers for an IPv6 link-local address derived from its MAC.
    pub ipv6_link_local: bool,
    /// Its ephemeral port range (inclusive); netd's default when `None`.
    pub ephemeral: Option<(u16, u16)>,
    /// Uids besides root that may join it (`None`: every uid).
    pub join_uids: Option<Vec<u32>>,
    /// Uids besides root that may bind its ports below 1024.
    pub privileged_uids: Vec<u32>,
    /// Uids besides root that may open taps in it.
    pub tap_uids: Vec<u32>,
    /// Uids besides root that may claim it exclusively.
    pub exclusive_uids: Vec<u32>,
    /// Whether it is forgotten when netd stops (else kept in netd's configuration file).
    pub temporary: bool,
    /// The overlay it lives on (`netmux overlay create`), instead of the link.
    #[serde(default)]
    pub overlay: Option<String>,
    /// Its global IPv6 address and prefix length (`netmux instance create --ip6`).
    #[serde(default)]
    pub ipv6: Option<([u8; 16], u8)>,
    /// Whether it takes its IPv4 address, prefix, gateway and DNS servers from a DHCP
    /// server's lease (`netmux instance create --ip dhcp`; `ipv4` and `gateway` are then
    /// ignored).
    #[serde(default)]
    pub dhcp: bool,
    /// Whether it takes a global IPv6 address from router advertisements
    /// (`netmux instance create --ip6 slaac`; `ipv6` is then none).
    #[serde(default)]
    pub slaac: bool,
}

impl InstanceSpec {
    /// A temporary instance with this name, MAC and IPv4 address (and prefix) and nothing
    /// else: no gateway, no IPv6 address (not even link-local), netd's ephemeral range, every
    /// uid may join it and root alone has the other rights. Change what differs with struct
    /// update syntax.
    pub fn temporary(name: impl Into<String>, mac: MacChoice, ipv4: ([u8; 4], u8)) -> Self {
        Self {
            name: name.into(),
            mac,
            ipv4,
            gateway: None,
            ipv6_link_local: false,
            ephemeral: None,
            join_uids: None,
            privileged_uids: Vec::new(),
            tap_uids: Vec::new(),
            exclusive_uids: Vec::new(),
            temporary: true,
            overlay: None,
            ipv6: None,
            dhcp: false,
            slaac: false,
        }
    }
}

/// An instance as `netmux instance ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    /// Its name.
    pub name: String,
    /// netd's id of it (the driver's too).
    pub id: u32,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Whether the MAC is the link's, shared.
    pub shared_mac: bool,
    /// IPv4 address and prefix length.
    pub ipv4: Option<([u8; 4], u8)>,
    /// IPv4 default gateway.
    pub gateway: Option<[u8; 4]>,
    /// IPv6 link-local address.
    pub ipv6_link_local: Option<[u8; 16]>,
    /// Global IPv6 addresses and their prefix lengths (absent in older netds' messages).
    #[serde(default)]
    pub ipv6: Vec<([u8; 16], u8)>,
    /// Whether the IPv4 address comes from a DHCP lease (`ipv4` is none until one).
    #[serde(default)]
    pub dhcp: bool,
    /// Whether the global IPv6 address comes from router advertisements (SLAAC).
    #[serde(default)]
    pub slaac: bool,
    /// The IPv6 default router (static `--gateway6` or the advertising router).
    #[serde(default)]
    pub gateway6: Option<[u8; 16]>,
    /// Ephemeral port range.
    pub ephemeral: (u16, u16),
    /// Sessions in it (clients).
    pub clients: u64,
    /// Ports bound in it.
    pub ports: u64,
    /// Whether it is forgotten when netd stops.
    pub temporary: bool,
    /// Its counters at the driver (frames and bytes each way, hairpin), when it could be asked.
    pub counters: Option<crate::driver::Counters>,
    /// The changeable properties and their values (`gateway`, `ephemeral-ports`, ...).
    pub properties: Vec<(String, String)>,
}

/// client to netd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// First message.
    Hello {
        /// [`crate::PROTOCOL_VERSION`].
        version: u16,
        /// The instance to join; the default instance when `None`.
        #[serde(default)]
        instance: Option<String>,
    },
    /// An ephemeral port.
    GetPort {
        /// TCP or UDP.
        transport: Transport,
    },
    /// A given port.
    BindPort {
        /// TCP or UDP.
        transport: Transport,
        /// The port.
        port: u16,
    },
    /// Give a port back.
    ClosePort {
        /// TCP or UDP.
        transport: Transport,
        /// The port.
        port: u16,
    },
    /// Receive UDP datagrams sent to a multicast group on a UDP port the session holds
    /// (IPv4 or IPv6); joining a group already joined changes nothing.
    JoinGroup {
        /// The group: an IPv4 (`224.0.0.0/4`) or IPv6 (`ff00::/8`) multicast address.
        group: std::net::IpAddr,
        /// The UDP port, which the session must hold.
        port: u16,
    },
    /// Stop receiving datagrams to a group on a port (see [`ClientRequest::JoinGroup`]).
    LeaveGroup {
        /// The group.
        group: std::net::IpAddr,
        /// The UDP port.
        port: u16,
    },
    /// A tap or exclusive filter in the pcap-filter language.
    OpenFilter {
        /// The expression.
        expr: String,
        /// Tap or exclusive.
        mode: FilterMode,
    },
    /// Close a filter.
    CloseFilter {
        /// Its id.
        filter: u64,
    },
    /// The session's queue; the reply carries its descriptors.
    OpenQueue,
    /// The session's counters.
    Stats,
    /// The sessions this client may see: every session for uid 0, else those of its own uid.
    ListSessions,
    /// Creates an instance (root, or a uid netd's configuration names).
    CreateInstance(InstanceSpec),
    /// Destroys an instance: its sessions end, everything they held is freed.
    DestroyInstance {
        /// Its name.
        name: String,
    },
    /// Every instance (root and netd's admin uids), or the asker's own.
    ListInstances,
    /// Changes a property of an instance (`gateway`, `ephemeral-ports`, `join-uids`, ...).
    SetInstanceProperty {
        /// The instance.
        name: String,
        /// The property.
        property: String,
        /// Its new value, as `netmux instance set` writes it.
        value: String,
    },
    /// Makes this session's queue a capture of a client or of the link; the reply is
    /// [`ClientReply::Queue`] with the queue's descriptors.
    Capture(ops::CaptureRequest),
    /// Changes or lists the admin firewall of the session's instance.
    Firewall(ops::FirewallRequest),
    /// Shows, or sets then shows, a client's queue properties (`netmux get`/`set`).
    Properties(ops::PropertyRequest),
    /// Creates an overlay (root, or a uid netd's configuration names).
    CreateOverlay(crate::overlay::OverlaySpec),
    /// Destroys an overlay no instance lives on.
    DestroyOverlay {
        /// Its name.
        name: String,
    },
    /// Every overlay, with its counters and state.
    ListOverlays,
    /// The mapping entries of an overlay (only `mac`'s when given), as its backend holds
    /// them now.
    ListOverlayMappings {
        /// The overlay.
        name: String,
        /// Only this MAC's entry.
        mac: Option<[u8; 6]>,
    },
    /// Adds, replaces or removes one mapping entry of an overlay at its backend (root, or a
    /// uid netd's configuration names).
    ChangeOverlayMapping {
        /// The overlay.
        name: String,
        /// What to change.
        change: crate::overlay::MappingChange,
    },
    /// The session's queue with rings of these sizes (illumos vnd's `rxbuf`/`txbuf`, bytes;
    /// `None`: netd's default), rounded up to whole slots and a power of two; the reply
    /// carries its descriptors.
    OpenQueueSized {
        /// Bytes of received frames the rx ring holds.
        rxbuf: Option<u64>,
        /// Bytes of frames to transmit the tx ring holds.
        txbuf: Option<u64>,
    },
}

/// netd to client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    /// Hello back.
    Hello {
        /// netd's protocol version.
        version: u16,
        /// The host configuration.
        host: HostConfig,
    },
    /// A port is bound and its filters are in force.
    Port {
        /// TCP or UDP.
        transport: Transport,
        /// The port.
        port: u16,
    },
    /// A filter is in force.
    Filter {
        /// Its id.
        filter: u64,
    },
    /// The queue: its memfd and the client's end of its doorbell travel with this.
    Queue {
        /// Total ring bytes.
        ring_bytes: u64,
    },
    /// Done.
    Done,
    /// The session's counters.
    Stats(crate::driver::Counters),
    /// Refused.
    Error(ErrorReply),
    /// The sessions the asking client may see, in session order.
    Sessions(SessionList),
    /// Instances, in name order.
    Instances(Vec<InstanceView>),
    /// The firewall's rules, in order, with their counters.
    Firewall(Vec<ops::RuleView>),
    /// A client's queue properties.
    Properties(Vec<ops::PropertyView>),
    /// Overlays, in name order.
    Overlays(Vec<crate::overlay::OverlayView>),
    /// An overlay's mapping entries, in MAC order.
    OverlayMappings(Vec<crate::overlay::MappingEntry>),
}

/// The answer to [`ClientRequest::ListSessions`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionList {
    /// The sessions, in session order, as many as fit in one message.
    pub sessions: Vec<SessionInfo>,
    /// Sessions the client may see that did not fit in one message (see
    /// [`crate::frame::MAX_BODY`]); they come after the last one listed.
    pub omitted: u64,
    /// The link's counters and state, as the driver reported them (`None` when the driver
    /// could not be asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<crate::driver::Counters>,
}

/// A session's queue, as `netmux ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// The driver's id of the queue.
    pub id: u32,
    /// Its ring sizes.
    pub rings: crate::driver::QueueConfig,
    /// Total ring memory in bytes.
    pub ring_bytes: u64,
    /// Whether the client has taken the queue's descriptors.
    pub attached: bool,
}

/// One session, as `netmux ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// netd's id of the session, never reused within one netd's life.
    pub id: u64,
    /// Whether this is the session that asked.
    pub caller: bool,
    /// The client's process id, as the kernel reported it when it connected.
    pub pid: u32,
    /// The client's user id, as the kernel reported it.
    pub uid: u32,
    /// The client's group id, as the kernel reported it.
    pub gid: u32,
    /// The instance it joined.
    #[serde(default)]
    pub instance: String,
    /// Whether the client has said hello.
    pub active: bool,
    /// Ports whose filters are in force, in (transport, port) order.
    pub ports: Vec<(Transport, u16)>,
    /// Tap and exclusive filters: netd's id and the mode.
    pub filters: Vec<(u64, FilterMode)>,
    /// The session's queue, once created.
    pub queue: Option<QueueInfo>,
    /// The queue's counters at the driver (frames and bytes each way, drops by reason); `None`
    /// without a queue or when the driver could not be asked.
    pub counters: Option<crate::driver::Counters>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_configuration_without_the_ipv6_fields_still_reads() {
        // What a netd before global IPv6 addresses sent at hello.
        let old = r#"{"link":{"mac":[2,0,0,0,0,1],"mtu":1500},"ipv4":[[10,0,0,1],24],
            "gateway":null,"ipv6_link_local":null,"dns_servers":[]}"#;
        let host: HostConfig = serde_json::from_str(old).unwrap();
        assert!(host.ipv6.is_empty() && host.ipv6_gateway.is_none());
        let round = serde_json::to_string(&HostConfig {
            ipv6: vec![(
                [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )],
            ..host.clone()
        })
        .unwrap();
        let back: HostConfig = serde_json::from_str(&round).unwrap();
        assert_eq!(back.ipv6[0].1, 64);
        let spec = r#"{"name":"a","mac":"Generated","ipv4":[[10,0,0,2],24],"gateway":null,
            "ipv6_link_local":true,"ephemeral":null,"join_uids":null,"privileged_uids":[],
            "tap_uids":[],"exclusive_uids":[],"temporary":true}"#;
        let spec: InstanceSpec = serde_json::from_str(spec).unwrap();
        assert_eq!(spec.ipv6, None);
    }
}
