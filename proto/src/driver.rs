//! Messages between netd and the driver on the driver's control socket. netd is the driver's
//! only peer; every request gets exactly one reply, in order.

use serde::{Deserialize, Serialize};

use crate::{ErrorReply, LinkInfo};

pub mod ops;

/// The most queues one [`DriverRequest::StatsOf`] may name: their counters, with the link's
/// and the instances', stay well inside one message.
pub const MAX_STATS_QUEUES: usize = 2_000;

/// The most filters one [`DriverRequest::InstallFilters`] may carry: a port's rx bindings and
/// tx grants are a handful; the bound keeps one request's work small.
pub const MAX_BATCH_FILTERS: usize = 64;

/// A filter to install: [`DriverRequest::InstallFilter`], and each of a
/// [`DriverRequest::InstallFilters`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterInstall {
    /// The queue.
    pub queue: QueueId,
    /// The filter's id.
    pub filter: FilterId,
    /// Rx or tx.
    pub direction: Direction,
    /// For rx filters: owner, tap or exclusive.
    pub mode: RxMode,
    /// For port-binding rx filters: the key for the classifier's table. For port-binding tx
    /// filters: the grant (the source address, protocol and source port the queue may send
    /// from, with its instance's MAC).
    pub binding: Option<PortBinding>,
    /// The program in the VM's container format. Empty for a tx filter with a `binding`: the
    /// grant is then an entry in the queue's transmit table, looked up per frame (accepting
    /// exactly what `ether src MAC and ip|ip6 src host A and tcp|udp src port P` accepts), and
    /// nothing is compiled. On the wire a string of hex digits, not a JSON array of numbers: a
    /// third of the bytes, and parsed without a number at a time.
    #[serde(with = "hex_bytes")]
    pub program: Vec<u8>,
}

/// Bytes as a string of lowercase hex digits, two per byte.
mod hex_bytes {
    use serde::de::{Deserializer, Error, Visitor};
    use serde::Serializer;

    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = String::with_capacity(bytes.len() * 2);
        for &b in bytes {
            text.push(char::from(DIGITS[usize::from(b >> 4)]));
            text.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        serializer.serialize_str(&text)
    }

    fn digit(d: u8) -> Option<u8> {
        match d {
            b'0'..=b'9' => Some(d - b'0'),
            b'a'..=b'f' => Some(d - b'a' + 10),
            b'A'..=b'F' => Some(d - b'A' + 10),
            _ => None,
        }
    }

    struct Hex;

    impl Visitor<'_> for Hex {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string of hex digits, two per byte")
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Vec<u8>, E> {
            let text = text.as_bytes();
            if !text.len().is_multiple_of(2) {
                return Err(E::custom("an odd number of hex digits"));
            }
            text.chunks_exact(2)
                .map(|pair| match (digit(pair[0]), digit(pair[1])) {
                    (Some(high), Some(low)) => Ok((high << 4) | low),
                    _ => Err(E::custom("not a hex digit")),
                })
                .collect()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_str(Hex)
    }
}

/// A client queue's identity, chosen by netd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueId(pub u32);

/// A network stack instance's identity, chosen by netd. Instance 0 is the default instance,
/// which exists from the driver's start with the link's MAC.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct InstanceId(pub u32);

/// The instance every driver starts with, and clients join when they name none.
pub const DEFAULT_INSTANCE: InstanceId = InstanceId(0);

/// An instance as the driver needs to know it: which frames are its, and what it may send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Its id.
    pub instance: InstanceId,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Whether the MAC is its own (macvlan-like: frames are told apart by MAC, and the link
    /// must accept frames for it) or the link's, shared (ipvlan-like: told apart by address).
    pub own_mac: bool,
    /// Its IPv4 addresses, in network order.
    pub ipv4: Vec<[u8; 4]>,
    /// Its IPv6 addresses.
    pub ipv6: Vec<[u8; 16]>,
    /// The overlay (VNI) it lives on, set with [`DriverRequest::SetOverlay`] first; `None`:
    /// the physical segment. Its addresses need only be unique within its overlay.
    #[serde(default)]
    pub overlay: Option<u32>,
}

/// A filter's identity, chosen by netd, unique per driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FilterId(pub u64);

/// Which way a filter looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Received frames: which queues get a copy.
    Rx,
    /// Frames a queue transmits: which may go on the wire.
    Tx,
}

/// How an rx filter receives frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RxMode {
    /// The queue owns what the filter matches (a port binding).
    Owner,
    /// The queue observes copies of what the filter matches, never its own transmissions.
    Tap,
    /// The queue claims the whole link (refused while any port binding exists).
    Exclusive,
}

/// A port binding's key, so the driver's classifier can put it in its hash table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortBinding {
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    /// Local address: 4 bytes for IPv4 or 16 for IPv6, in network order.
    pub address: [u8; 16],
    /// Whether `address` is IPv6.
    pub ipv6: bool,
    /// Local port.
    pub port: u16,
}

/// Default slot size: one 1,514-byte Ethernet frame fits in a single slot.
pub const DEFAULT_SLOT_SIZE: u32 = 2048;
/// Default number of rx, tx and completion slots: 128 KiB of frames each way at the default
/// slot size, the least that still carries a 64 KiB frame, so ten thousand queues need
/// about 2.6 GiB of ring memory. A client that moves bulk data asks for larger rings when it
/// opens its queue (`rxbuf`/`txbuf`).
pub const DEFAULT_RING_SLOTS: u32 = 64;

/// The geometry of a queue's rings (illumos vnd's `rxbuf`/`txbuf`, in slots): the one type
/// netd, the driver and the ring crate use for it. `netmux_ring::layout_of` turns it into the
/// byte layout, or says why it is out of bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// Bytes per slot, header included; a power of two.
    pub slot_size: u32,
    /// Slots in the rx ring (a power of two, enough for one maximum frame).
    pub rx_slots: u32,
    /// Slots in the tx ring (a power of two, enough for one maximum frame).
    pub tx_slots: u32,
    /// Entries in the tx-completion ring (a power of two). The driver consumes a tx frame
    /// only when it has room to complete it, so this bounds the frames in flight.
    pub completion_slots: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            slot_size: DEFAULT_SLOT_SIZE,
            rx_slots: DEFAULT_RING_SLOTS,
            tx_slots: DEFAULT_RING_SLOTS,
            completion_slots: DEFAULT_RING_SLOTS,
        }
    }
}

/// netd to driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriverRequest {
    /// First message: the protocol version netd speaks.
    Hello {
        /// [`crate::PROTOCOL_VERSION`].
        version: u16,
    },
    /// Create a queue; the reply carries the memfd and the client's end of the doorbell.
    CreateQueue {
        /// Its id.
        queue: QueueId,
        /// Its ring sizes.
        config: QueueConfig,
        /// The instance it belongs to: it receives only that instance's frames.
        #[serde(default)]
        instance: InstanceId,
    },
    /// Stop a queue, mark it closed in its ring header, and free it.
    DestroyQueue {
        /// Its id.
        queue: QueueId,
    },
    /// Install a filter for a queue. The driver verifies the bytecode again.
    InstallFilter(FilterInstall),
    /// Install several filters in one round trip (a port's rx bindings and tx grants), in
    /// order, each as [`DriverRequest::InstallFilter`] would. All or nothing: `Done` means every
    /// one is in force; on an error reply none is (the driver takes back those of the batch it
    /// had installed). At most [`MAX_BATCH_FILTERS`].
    InstallFilters {
        /// The filters.
        filters: Vec<FilterInstall>,
    },
    /// Remove a filter; the reply confirms it is no longer in force.
    RemoveFilter {
        /// The queue.
        queue: QueueId,
        /// The filter.
        filter: FilterId,
    },
    /// Remove several filters of one queue in one round trip (a closed port's). Every one is
    /// tried; `Done` means none of them is in force any more, an error reply (the first
    /// refusal) that at least one was not found. At most [`MAX_BATCH_FILTERS`].
    RemoveFilters {
        /// The queue.
        queue: QueueId,
        /// The filters.
        filters: Vec<FilterId>,
    },
    /// Change a queue's ring sizes (takes effect by re-creating the queue).
    SetQueueConfig {
        /// The queue.
        queue: QueueId,
        /// The new sizes.
        config: QueueConfig,
    },
    /// Statistics of the link and of every queue. With thousands of queues the reply does not
    /// fit one message (about 300 bytes a queue against [`crate::frame::MAX_BODY`]): the
    /// driver then refuses it ([`crate::ErrorCode::Limit`]); ask [`DriverRequest::StatsOf`].
    Stats,
    /// Statistics of the link, of every instance, and of these queues only (at most
    /// [`MAX_STATS_QUEUES`]; an id the driver does not have is left out): the counters netd
    /// needs for one session or one listing, however many queues there are.
    StatsOf {
        /// The queues.
        queues: Vec<QueueId>,
    },
    /// Makes `queue` netd's own: it receives every frame no rx filter accepts, besides the
    /// ARP frames every queue receives. Replaces any earlier choice.
    SetNetdQueue {
        /// The queue (created before, like any other).
        queue: QueueId,
    },
    /// The default instance's IPv4 addresses: an ARP request for one of them goes to every
    /// queue of that instance. Replaces the earlier list.
    SetHostAddresses {
        /// The addresses, in network order.
        ipv4: Vec<[u8; 4]>,
    },
    /// Creates an instance, or replaces what the driver knows of it (its MAC and addresses).
    SetInstance(InstanceInfo),
    /// Removes an instance; refused while it has queues.
    RemoveInstance {
        /// The instance.
        instance: InstanceId,
    },
    /// Captures and firewall rules ([`ops`]).
    Operator(ops::OperatorRequest),
    /// Creates an overlay (a VXLAN network) or changes its port and MTU.
    SetOverlay(crate::overlay::OverlayInfo),
    /// Removes an overlay; refused while an instance lives on it.
    RemoveOverlay {
        /// Its VNI.
        vni: u32,
    },
    /// Answers of the mapping service: where each MAC of the overlay lives (cached by the
    /// driver until changed), and the overlay addresses proxy ARP answers for.
    SetOverlayMappings(crate::overlay::OverlayMappings),
    /// The MACs the driver needs mappings for, and each overlay's counters; answered with
    /// [`DriverReply::OverlayPoll`].
    OverlayPoll,
}

/// Counters of one queue or of the link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Frames received (delivered to the queue, or from the link).
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames transmitted.
    pub tx_frames: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Received frames dropped because the rx ring was full.
    pub rx_dropped_full: u64,
    /// Transmitted frames rejected by the tx filters, by reason name.
    pub tx_rejected: Vec<(String, u64)>,
    /// Times the tx path stopped for lack of room (flow control).
    pub tx_flow_control: u64,
    /// Received frames dropped for any reason but a full ring, by reason name.
    #[serde(default)]
    pub rx_dropped: Vec<(String, u64)>,
    /// Frames delivered from another instance on this host (hairpin), for an instance.
    #[serde(default)]
    pub hairpin: u64,
    /// The link's state (in the link's counters only; `None` for a queue, and from a driver
    /// that does not report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_state: Option<crate::LinkState>,
    /// Received frames whose partial checksum the driver completed (the link's counters only).
    #[serde(default)]
    pub rx_csum_completed: u64,
    /// Received aggregates (TSO, GSO, GRO) the driver cut into ordinary frames (the link's
    /// counters only).
    #[serde(default)]
    pub rx_gso_split: u64,
    /// Frames those aggregates were cut into (the link's counters only).
    #[serde(default)]
    pub rx_gso_segments: u64,
}

/// driver to netd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriverReply {
    /// Hello back, with the link's properties.
    Hello {
        /// The driver's protocol version.
        version: u16,
        /// The link.
        link: LinkInfo,
    },
    /// The queue exists; its memfd and the client's end of its doorbell travel with this.
    QueueCreated {
        /// The queue.
        queue: QueueId,
        /// Total bytes of ring memory.
        ring_bytes: u64,
    },
    /// The request was carried out.
    Done,
    /// Statistics.
    Stats {
        /// The link's counters.
        link: Counters,
        /// Each queue's.
        queues: Vec<(QueueId, Counters)>,
        /// Each instance's: frames dispatched to it, sent by its queues, and carried between
        /// instances on this host (`hairpin`).
        #[serde(default)]
        instances: Vec<(InstanceId, Counters)>,
    },
    /// The request was refused.
    Error(ErrorReply),
    /// The answer to an [`DriverRequest::Operator`] request.
    Operator(ops::OperatorReply),
    /// Lookups waiting for the mapping service, and every overlay's counters.
    OverlayPoll(crate::overlay::OverlayPollReply),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(program: Vec<u8>) -> DriverRequest {
        DriverRequest::InstallFilters {
            filters: vec![FilterInstall {
                queue: QueueId(1),
                filter: FilterId(2),
                direction: Direction::Rx,
                mode: RxMode::Owner,
                binding: None,
                program,
            }],
        }
    }

    #[test]
    fn a_batched_program_travels_as_hex_digits_and_comes_back_whole() {
        let program: Vec<u8> = (0..=255).collect();
        let text = serde_json::to_string(&install(program.clone())).unwrap();
        assert!(text.contains("\"program\":\"000102"), "{text}");
        assert!(text.contains("fdfeff\""), "{text}");
        let back: DriverRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, install(program));
        let empty = serde_json::to_string(&install(Vec::new())).unwrap();
        assert_eq!(
            serde_json::from_str::<DriverRequest>(&empty).unwrap(),
            install(Vec::new())
        );
    }

    #[test]
    fn a_batched_program_that_is_not_hex_is_refused() {
        let good = serde_json::to_string(&install(vec![0xab, 0xcd])).unwrap();
        assert!(good.contains("\"abcd\""), "{good}");
        // Upper case is taken too.
        let upper = good.replace("\"abcd\"", "\"ABCD\"");
        assert_eq!(
            serde_json::from_str::<DriverRequest>(&upper).unwrap(),
            install(vec![0xab, 0xcd])
        );
        for bad in ["\"abc\"", "\"zz\"", "\"é1\"", "[171,205]", "12"] {
            let text = good.replace("\"abcd\"", bad);
            assert!(
                serde_json::from_str::<DriverRequest>(&text).is_err(),
                "{text}"
            );
        }
    }
}
