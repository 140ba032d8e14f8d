//! Network stack instances on one link (FreeBSD VIMAGE, illumos netstacks, macvlan and
//! ipvlan): which instance a received frame belongs to, which instances a transmitted frame
//! reaches on this host, and each instance's own classifier and queues.
//!
//! # Guarantees
//!
//! - **A frame goes only to the instances it is addressed to.** A unicast frame for an
//!   instance's own MAC goes to that instance; one for the link's MAC goes to the shared-MAC
//!   instance owning its destination address (IPv4, IPv6, or an ARP target), else to the
//!   default instance; a broadcast or multicast frame goes to every instance. Each instance
//!   classifies with its own [`Classify`], so one instance's bindings never match another's
//!   frames, whatever its filters say.
//! - **ARP stays inside its instance.** An ARP reply, or a request for one of an instance's
//!   addresses, is copied to that instance's queues only (and to netd's). IPv6 neighbour and
//!   router advertisements are IPv6's ARP replies ([`is_nd_advertisement`]): copied alike to
//!   every queue of the instances they reach, so every client's stack learns its neighbours
//!   and routers (solicitations go to netd alone, which answers for the host).
//! - **Hairpin.** A frame a queue transmits to another instance on this host (its MAC, or the
//!   link's MAC and its address) is delivered to it here and not sent on the link, which
//!   would not reflect it; a broadcast or multicast frame goes on the link and to every other
//!   instance. A frame never comes back to its own instance.
//! - **An overlay instance is not on the link.** An instance on an overlay
//!   ([`Instance::overlay`]) is never a target of [`Instances::dispatch`] or
//!   [`Instances::route`], broadcast included; its addresses need only be unique within its
//!   overlay. Its frames come and go through [`super::overlay`].
//! - **One instance costs nothing.** With only the default instance there is no lookup: every
//!   frame is the default instance's, as before instances existed.
//! - **Many instances cost one lookup.** netd's port filters for an on-link instance's own
//!   address and unicast MAC (almost every filter) go into one [`LinkBindings`] shared by every
//!   instance on the link, and a received frame is looked up there first: a hit names the
//!   queue and its instance at once (the binding's MAC and address are the instance's, and no
//!   two instances on the link have the same address, so the instance is the one
//!   [`Instances::dispatch`] would give). Each instance's classifier holds those filters'
//!   ownership ([`Classify::hold`]), so the rules stay the instance's own, and matches the rest
//!   (address-less bindings, broadcast port filters, taps, claims, netd's expressions). A
//!   binding whose instance changes its MAC or gives up the address goes back to the
//!   instance's classifier. The instances of an overlay share a table of the overlay's (their
//!   addresses need only be unique within it), looked up once decapsulation has named the
//!   instance.

use netmux_classify::{ClassifierError, Classify, Key, LinkBindings, RxFilter};
use netmux_proto::driver::{
    Counters, FilterId, InstanceId, InstanceInfo, QueueId, DEFAULT_INSTANCE,
};
use netmux_wire::ethernet::{ethertype, link_layer};
use netmux_wire::{arp, ArpPacket};
use rustc_hash::FxHashMap;

use super::mac_index::MacIndex;

/// Instances one driver holds: each has a classifier and at least one queue to be useful.
pub const MAX_INSTANCES: usize = 4096;

/// An instance's slot in [`Instances`]; stable for the instance's life.
pub type Slot = usize;

/// One instance.
pub struct Instance {
    /// Its id (netd's).
    pub id: InstanceId,
    /// Its MAC: its own, or the link's (shared).
    pub mac: [u8; 6],
    /// Whether the MAC is its own.
    pub own_mac: bool,
    /// Its IPv4 addresses.
    pub ipv4: Vec<[u8; 4]>,
    /// Its IPv6 addresses.
    pub ipv6: Vec<[u8; 16]>,
    /// Its classifier: its queues' rx filters only (those in the link's [`LinkBindings`] held
    /// there, matched there). Changed only through [`Instances`], which keeps `held` and
    /// `local` with it.
    classifier: Box<dyn Classify>,
    /// Its filters in its network's shared table.
    held: usize,
    /// The number of that table ([`Shared::table`]): its overlay's, or 0, the link's.
    table: usize,
    /// Its filters its classifier matches itself.
    local: usize,
    /// Its queues, in creation order.
    pub queues: Vec<QueueId>,
    /// Frames and bytes dispatched to it, sent by its queues, and hairpinned to it.
    pub counters: InstanceCounters,
    /// The overlay (VNI) it lives on, if any.
    pub overlay: Option<u32>,
}

impl Instance {
    /// Counts again the filters its classifier matches itself, after a change (`held` kept
    /// exact by the change). A frame skips the classifier of an instance with none.
    fn recount(&mut self) {
        self.local = self.classifier.len().saturating_sub(self.held);
    }
}

/// Whether a binding of `key` confirmed by `mac` fits the instance `i` in its network's
/// shared table: `mac` is its MAC and the address its own.
fn fits(i: &Instance, key: &Key, mac: [u8; 6]) -> bool {
    i.mac == mac
        && match key {
            Key::V4 { addr, .. } => i.ipv4.contains(&addr.octets()),
            Key::V6 { addr, .. } => i.ipv6.contains(&addr.octets()),
            Key::AnyAddr { .. } => false,
        }
}

/// Counters of one instance.
#[derive(Debug, Default, Clone, Copy)]
pub struct InstanceCounters {
    /// Frames dispatched to the instance (from the link or a hairpin).
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames its queues sent (on the link or by hairpin).
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames it received from another instance on this host.
    pub hairpin_in: u64,
}

impl InstanceCounters {
    /// In the protocol's terms.
    pub fn to_counters(self) -> Counters {
        Counters {
            rx_frames: self.rx_frames,
            rx_bytes: self.rx_bytes,
            tx_frames: self.tx_frames,
            tx_bytes: self.tx_bytes,
            hairpin: self.hairpin_in,
            ..Counters::default()
        }
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.id)
            .field("mac", &self.mac)
            .field("own_mac", &self.own_mac)
            .field("queues", &self.queues.len())
            .finish_non_exhaustive()
    }
}

/// The instances a received frame is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// This one.
    One(Slot),
    /// Every instance (broadcast, multicast).
    Every,
    /// Every instance but this one (a broadcast one of them sent).
    EveryBut(Slot),
}

/// A MAC as a word, for the lookup on every received frame.
#[inline]
fn mac_word(m: &[u8]) -> u64 {
    u64::from(u16::from_be_bytes([m[0], m[1]])) << 32
        | u64::from(u32::from_be_bytes([m[2], m[3], m[4], m[5]]))
}

/// Where a frame a queue transmitted goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// On the link only.
    Link,
    /// To these instances on this host only (a unicast frame to a local instance).
    Local(Slot),
    /// On the link, and to every instance but the sender's (broadcast, multicast).
    LinkAndOthers,
}

/// Every instance, by slot. See the module documentation.
pub struct Instances {
    link_mac: [u8; 6],
    slots: Vec<Option<Instance>>,
    by_id: FxHashMap<InstanceId, Slot>,
    /// Own-MAC instances by MAC (as a word).
    by_mac: MacIndex<Slot>,
    /// Shared-MAC instances by address.
    by_v4: FxHashMap<[u8; 4], Slot>,
    by_v6: FxHashMap<[u8; 16], Slot>,
    /// More than the default instance exists: dispatch has to look.
    several: bool,
    /// A classifier for an instance with this MAC.
    make_classifier: MakeClassifier,
    /// The shared bindings, when the instances' classifiers are the merged ones (see the
    /// module documentation).
    shared: Option<Shared>,
}

/// Every on-link instance's exact port bindings in one table, and each overlay's instances'
/// in one table of the overlay's (addresses are unique among the instances of one network,
/// not across them).
struct Shared {
    strategy: netmux_vm::Strategy,
    link: LinkBindings,
    /// Table `t` (from 1, an instance's `table`) is `overlays[t - 1]`.
    overlays: Vec<LinkBindings>,
    /// The overlays' tables by VNI.
    by_vni: FxHashMap<u32, usize>,
}

impl Shared {
    /// The number of the table of the instances on `overlay` (0, the link's, for none), made
    /// if missing.
    fn number(&mut self, overlay: Option<u32>) -> usize {
        let Some(vni) = overlay else {
            return 0;
        };
        let (overlays, strategy) = (&mut self.overlays, self.strategy);
        *self.by_vni.entry(vni).or_insert_with(|| {
            overlays.push(LinkBindings::new(strategy));
            overlays.len()
        })
    }

    /// Table `number`.
    #[inline]
    fn table(&mut self, number: usize) -> Option<&mut LinkBindings> {
        match number {
            0 => Some(&mut self.link),
            n => self.overlays.get_mut(n - 1),
        }
    }
}

/// Makes the classifier of an instance with the given MAC (netd's port filters for that MAC
/// are then confirmed by comparing it, as in the default instance).
pub type MakeClassifier = Box<dyn Fn([u8; 6]) -> Box<dyn Classify> + Send>;

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.slots.iter().flatten()).finish()
    }
}

impl Instances {
    /// The default instance alone, with the link's MAC and `classifier`; further instances get
    /// classifiers from `make_classifier`.
    pub fn new(
        link_mac: [u8; 6],
        classifier: Box<dyn Classify>,
        make_classifier: MakeClassifier,
    ) -> Self {
        let default = Instance {
            id: DEFAULT_INSTANCE,
            mac: link_mac,
            own_mac: false,
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            classifier,
            held: 0,
            table: 0,
            local: 0,
            queues: Vec::new(),
            counters: InstanceCounters::default(),
            overlay: None,
        };
        let mut by_id = FxHashMap::default();
        by_id.insert(DEFAULT_INSTANCE, 0);
        Self {
            link_mac,
            slots: vec![Some(default)],
            by_id,
            by_mac: MacIndex::default(),
            by_v4: FxHashMap::default(),
            by_v6: FxHashMap::default(),
            several: false,
            make_classifier,
            shared: None,
        }
    }

    /// Puts the instances' exact port bindings in shared tables, one for the link and one for
    /// each overlay ([`LinkBindings`], on `strategy`'s engine), from now on (see the module
    /// documentation). For instances whose classifiers are the merged ones; before any filter
    /// is installed.
    pub fn use_link_bindings(&mut self, strategy: netmux_vm::Strategy) {
        if self.iter().all(|i| i.classifier.is_empty()) {
            self.shared = Some(Shared {
                strategy,
                link: LinkBindings::new(strategy),
                overlays: Vec::new(),
                by_vni: FxHashMap::default(),
            });
        }
    }

    /// The slot of an instance.
    pub fn slot(&self, id: InstanceId) -> Option<Slot> {
        self.by_id.get(&id).copied()
    }

    /// An instance by slot.
    pub fn get(&self, slot: Slot) -> Option<&Instance> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    /// An instance by slot, writable.
    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut Instance> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    /// Every instance.
    pub fn iter(&self) -> impl Iterator<Item = &Instance> + '_ {
        self.slots.iter().flatten()
    }

    /// Every instance, writable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Instance> + '_ {
        self.slots.iter_mut().flatten()
    }

    /// The MACs the link must accept besides its own (the own-MAC instances').
    pub fn own_macs(&self) -> Vec<[u8; 6]> {
        self.iter()
            .filter(|i| i.own_mac && i.overlay.is_none())
            .map(|i| i.mac)
            .collect()
    }

    /// Creates an instance or updates its MAC and addresses. Refused when the MAC or an
    /// address is another instance's, or when the limit is reached.
    pub fn set(&mut self, info: InstanceInfo) -> Result<Slot, String> {
        let own_mac = info.own_mac && info.mac != self.link_mac;
        let mac = if own_mac { info.mac } else { self.link_mac };
        let existing = self.slot(info.instance);
        let overlay = info.overlay;
        if let Some(i) = existing.and_then(|s| self.get(s)) {
            if i.overlay != overlay {
                return Err("an instance cannot move to or from an overlay".into());
            }
        }
        if overlay.is_some() && !own_mac {
            return Err("an overlay instance needs a MAC of its own".into());
        }
        if own_mac {
            if let Some(other) = self.by_mac.get(mac_word(&mac)) {
                if Some(other) != existing {
                    return Err(format!("MAC {mac:02x?} belongs to another instance"));
                }
            }
            if mac[0] & 1 != 0 {
                return Err("an instance MAC must be a unicast address".into());
            }
        }
        for a in &info.ipv4 {
            if let Some(other) = self.owner_v4(a, overlay) {
                if Some(other) != existing {
                    return Err(format!(
                        "{}.{}.{}.{} belongs to another instance",
                        a[0], a[1], a[2], a[3]
                    ));
                }
            }
        }
        for a in &info.ipv6 {
            if let Some(other) = self.owner_v6(a, overlay) {
                if Some(other) != existing {
                    return Err(format!(
                        "{} belongs to another instance",
                        std::net::Ipv6Addr::from(*a)
                    ));
                }
            }
        }
        let slot = match existing {
            Some(slot) => {
                self.unindex(slot);
                slot
            }
            None => {
                if self.by_id.len() >= MAX_INSTANCES {
                    return Err(format!("at most {MAX_INSTANCES} instances"));
                }
                let instance = Instance {
                    id: info.instance,
                    mac,
                    own_mac,
                    ipv4: Vec::new(),
                    ipv6: Vec::new(),
                    classifier: (self.make_classifier)(mac),
                    held: 0,
                    table: 0,
                    local: 0,
                    queues: Vec::new(),
                    counters: InstanceCounters::default(),
                    overlay,
                };
                let slot = match self.slots.iter().position(Option::is_none) {
                    Some(free) => {
                        self.slots[free] = Some(instance);
                        free
                    }
                    None => {
                        self.slots.push(Some(instance));
                        self.slots.len() - 1
                    }
                };
                self.by_id.insert(info.instance, slot);
                slot
            }
        };
        let make = &self.make_classifier;
        if let Some(i) = self.slots.get_mut(slot).and_then(Option::as_mut) {
            if i.mac != mac && i.classifier.is_empty() {
                // A new MAC, nothing installed yet: the classifier confirms the new one.
                i.classifier = make(mac);
            }
            i.mac = mac;
            i.own_mac = own_mac;
            i.ipv4 = info.ipv4;
            i.ipv6 = info.ipv6;
        }
        self.index(slot);
        self.demote(slot);
        Ok(slot)
    }

    /// Moves the link bindings of the instance at `slot` that no longer fit it (its MAC
    /// changed, or it gave up the address) back to its classifier.
    fn demote(&mut self, slot: Slot) {
        let Self { slots, shared, .. } = self;
        let Some(i) = slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let Some(table) = shared.as_mut().and_then(|s| s.table(i.table)) else {
            return;
        };
        if i.held == 0 {
            return;
        }
        let moved = table.remove_where(|b| b.tag as usize == slot && !fits(i, &b.key, b.mac));
        i.held -= moved.len();
        for b in moved {
            // Releases the hold: the same filter, owning the same key, goes in at once.
            let _ = i.classifier.remove(b.queue, b.filter);
            let installed = b
                .filter()
                .ok_or(ClassifierError::TablesFull)
                .and_then(|f| i.classifier.install(f));
            if let Err(e) = installed {
                tracing::error!(
                    instance = i.id.0,
                    queue = b.queue.0,
                    filter = b.filter.0,
                    "a port filter could not move back to its instance's classifier: {e}"
                );
            }
        }
        i.recount();
    }

    /// Installs an rx filter of a queue of the instance at `slot`: into the link's bindings
    /// when it is a port filter for one of the instance's own addresses and its MAC (its
    /// ownership held by the instance's classifier), else into the instance's classifier. The
    /// instance's classifier applies its rules either way.
    pub fn install_filter(&mut self, slot: Slot, filter: RxFilter) -> Result<(), ClassifierError> {
        let Self { slots, shared, .. } = self;
        let Some(i) = slots.get_mut(slot).and_then(Option::as_mut) else {
            return Err(ClassifierError::NotFound(filter.queue, filter.filter));
        };
        let linked = shared.as_mut().and_then(|shared| {
            let key = LinkBindings::eligible(&filter, i.mac).filter(|k| fits(i, k, i.mac))?;
            i.table = shared.number(i.overlay);
            Some((shared.table(i.table)?, key))
        });
        match linked {
            Some((link, key)) => {
                i.classifier.hold(&filter)?;
                let slot_tag = u32::try_from(slot).map_err(|_| ClassifierError::TablesFull);
                if let Err(e) = slot_tag.and_then(|tag| link.insert(&filter, key, i.mac, tag)) {
                    let _ = i.classifier.remove(filter.queue, filter.filter);
                    return Err(e);
                }
                i.held += 1;
            }
            None => i.classifier.install(filter)?,
        }
        i.recount();
        Ok(())
    }

    /// Removes one rx filter of a queue of the instance at `slot`.
    pub fn remove_filter(
        &mut self,
        slot: Slot,
        queue: QueueId,
        filter: FilterId,
    ) -> Result<(), ClassifierError> {
        let Self { slots, shared, .. } = self;
        let Some(i) = slots.get_mut(slot).and_then(Option::as_mut) else {
            return Err(ClassifierError::NotFound(queue, filter));
        };
        // The classifier knows every filter of the instance, held ones too, and its queue.
        i.classifier.remove(queue, filter)?;
        let table = shared.as_mut().and_then(|s| s.table(i.table));
        if table.and_then(|t| t.remove(filter)).is_some() {
            i.held -= 1;
        }
        i.recount();
        Ok(())
    }

    /// Removes every rx filter of `queue`, a queue of the instance at `slot`; `filters` are
    /// its rx filters (the link's bindings among them leave the link's tables).
    pub fn remove_queue(&mut self, slot: Slot, queue: QueueId, filters: &[FilterId]) {
        let Self { slots, shared, .. } = self;
        let Some(i) = slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        i.classifier.remove_queue(queue);
        if let Some(table) = shared.as_mut().and_then(|s| s.table(i.table)) {
            for &f in filters {
                if table.remove(f).is_some() {
                    i.held -= 1;
                }
            }
        }
        i.recount();
    }

    /// The tap queues of the instance at `slot` that observe `frame`, sent by `sender`
    /// ([`Classify::observers`]).
    pub fn observers(
        &mut self,
        slot: Slot,
        frame: &[u8],
        wire_len: u32,
        sender: QueueId,
        out: &mut Vec<QueueId>,
    ) {
        if let Some(i) = self.get_mut(slot) {
            i.classifier.observers(frame, wire_len, sender, out);
        }
    }

    /// Removes an instance without queues. The default instance stays.
    pub fn remove(&mut self, id: InstanceId) -> Result<(), String> {
        let slot = self
            .slot(id)
            .ok_or_else(|| format!("no instance {}", id.0))?;
        if id == DEFAULT_INSTANCE {
            return Err("the default instance cannot be removed".into());
        }
        if self.get(slot).is_some_and(|i| !i.queues.is_empty()) {
            return Err(format!("instance {} still has queues", id.0));
        }
        self.unindex(slot);
        self.slots[slot] = None;
        self.by_id.remove(&id);
        self.several = self.by_id.len() > 1;
        Ok(())
    }

    /// The instance of `overlay` (or of the link) that has `a`.
    fn owner_v4(&self, a: &[u8; 4], overlay: Option<u32>) -> Option<Slot> {
        self.iter_slots()
            .find(|(_, i)| i.overlay == overlay && i.ipv4.contains(a))
            .map(|(s, _)| s)
    }

    fn owner_v6(&self, a: &[u8; 16], overlay: Option<u32>) -> Option<Slot> {
        self.iter_slots()
            .find(|(_, i)| i.overlay == overlay && i.ipv6.contains(a))
            .map(|(s, _)| s)
    }

    /// Slots of the instances on the link (not on an overlay).
    fn link_slots(&self) -> impl Iterator<Item = Slot> + '_ {
        self.iter_slots()
            .filter(|(_, i)| i.overlay.is_none())
            .map(|(s, _)| s)
    }

    fn iter_slots(&self) -> impl Iterator<Item = (Slot, &Instance)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(s, i)| i.as_ref().map(|i| (s, i)))
    }

    fn unindex(&mut self, slot: Slot) {
        self.by_mac.retain(|&s| s != slot);
        self.by_v4.retain(|_, s| *s != slot);
        self.by_v6.retain(|_, s| *s != slot);
    }

    fn index(&mut self, slot: Slot) {
        let Some(i) = self.slots.get(slot).and_then(Option::as_ref) else {
            return;
        };
        if i.overlay.is_some() {
            // Reached through its overlay only.
        } else if i.own_mac {
            self.by_mac.insert(mac_word(&i.mac), slot);
        } else {
            for a in &i.ipv4 {
                self.by_v4.insert(*a, slot);
            }
            for a in &i.ipv6 {
                self.by_v6.insert(*a, slot);
            }
        }
        self.several = self.by_id.len() > 1;
    }

    /// Number of filters in the shared tables (the link's and the overlays').
    pub fn link_bindings(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| {
            s.link.len() + s.overlays.iter().map(LinkBindings::len).sum::<usize>()
        })
    }

    /// Whether more than the default instance exists.
    pub fn several(&self) -> bool {
        self.several
    }

    /// The instances a received frame is for. See the module documentation.
    #[inline]
    pub fn dispatch(&self, frame: &[u8]) -> Target {
        if !self.several {
            return Target::One(0);
        }
        let Some(dst) = frame.get(..6) else {
            return Target::One(0);
        };
        if dst[0] & 1 != 0 {
            return Target::Every;
        }
        if let Some(slot) = self.by_mac.get(mac_word(dst)) {
            return Target::One(slot);
        }
        Target::One(self.shared_owner(frame).unwrap_or(0))
    }

    /// The slots a target names, into `out` (cleared first).
    pub fn slots(&self, target: Target, out: &mut Vec<Slot>) {
        out.clear();
        match target {
            Target::One(slot) => out.push(slot),
            Target::Every => out.extend(self.link_slots()),
            Target::EveryBut(but) => out.extend(self.link_slots().filter(|&s| s != but)),
        }
    }

    /// The shared-MAC instance that owns a frame's destination address (IPv4, IPv6, or ARP
    /// target), if any.
    fn shared_owner(&self, frame: &[u8]) -> Option<Slot> {
        let link = link_layer(frame)?;
        let l3 = frame.get(link.l3..)?;
        match link.ethertype {
            ethertype::IPV4 => {
                let d = l3.get(16..20)?;
                self.by_v4.get(&[d[0], d[1], d[2], d[3]]).copied()
            }
            ethertype::IPV6 => {
                let d: [u8; 16] = l3.get(24..40)?.try_into().ok()?;
                self.by_v6.get(&d).copied()
            }
            ethertype::ARP => {
                let p = ArpPacket::new_checked(l3).ok()?;
                self.by_v4.get(&p.target_ip()).copied()
            }
            _ => None,
        }
    }

    /// Where a frame transmitted by a queue of instance `sender` goes. See the module
    /// documentation.
    pub fn route(&self, frame: &[u8], sender: Slot) -> Route {
        if !self.several {
            return Route::Link;
        }
        let Some(dst) = frame.get(..6) else {
            return Route::Link;
        };
        if dst[0] & 1 != 0 {
            return Route::LinkAndOthers;
        }
        let target = if let Some(slot) = self.by_mac.get(mac_word(dst)) {
            Some(slot)
        } else if dst == self.link_mac {
            self.shared_owner(frame)
        } else {
            None
        };
        match target {
            Some(slot) if slot != sender => Route::Local(slot),
            _ => Route::Link,
        }
    }

    /// The queues that receive a frame from the link, appended to `out` (each once,
    /// ascending), and the instances it is for: what [`Instances::dispatch`] and then
    /// [`Instances::receivers`] give, found for most frames with one lookup in the link's
    /// bindings (see the module documentation). Counts the frame for each instance; gives the
    /// target and how many instances took it as ARP. What the driver's receive path runs.
    #[inline(always)]
    pub fn receive(
        &mut self,
        frame: &[u8],
        netd: Option<QueueId>,
        out: &mut Vec<QueueId>,
    ) -> (Target, usize) {
        if let Some(hit) = self.shared.as_mut().and_then(|s| s.link.lookup(frame)) {
            let slot = hit.tag as usize;
            if let Some(i) = self.slots.get_mut(slot).and_then(Option::as_mut) {
                // An IPv4 or IPv6 datagram of a protocol with ports: not ARP, not neighbour
                // discovery.
                i.counters.rx_frames += 1;
                i.counters.rx_bytes += frame.len() as u64;
                out.push(hit.queue);
                if i.local > 0 {
                    let wire_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                    i.classifier.classify(frame, wire_len, out);
                }
                return (Target::One(slot), 0);
            }
        }
        let target = self.dispatch(frame);
        let arp = self.receivers_looked_up(frame, target, netd, out, true);
        (target, arp)
    }

    /// The queues of the instances `target` names that receive `frame`, appended to `out`
    /// (each once, ascending): in each instance, ARP that concerns it goes to all its queues
    /// and to `netd` (netd answers for every instance), anything else to the queues of its
    /// link bindings and its classifier that take it. Counts the frame for each instance;
    /// returns how many instances took it as ARP. For frames not from the link (hairpin,
    /// overlays); [`Instances::receive`] is this for the link's.
    #[inline(always)]
    pub fn receivers(
        &mut self,
        frame: &[u8],
        target: Target,
        netd: Option<QueueId>,
        out: &mut Vec<QueueId>,
    ) -> usize {
        self.receivers_looked_up(frame, target, netd, out, false)
    }

    /// [`Instances::receivers`]; `looked_up` says the frame missed the link's bindings already.
    #[inline(always)]
    fn receivers_looked_up(
        &mut self,
        frame: &[u8],
        target: Target,
        netd: Option<QueueId>,
        out: &mut Vec<QueueId>,
        looked_up: bool,
    ) -> usize {
        match target {
            // Every frame to a single instance: inlined into the receive path, so that a
            // frame costs no call layers of its own between dispatch and the classifier.
            Target::One(slot) => {
                let arp = self.receive_in(slot, frame, netd, out, looked_up);
                if arp {
                    out.sort_unstable();
                    out.dedup();
                }
                usize::from(arp)
            }
            Target::Every | Target::EveryBut(_) => self.receivers_on_link(frame, target, netd, out),
        }
    }

    /// [`Instances::receivers`] for broadcast and multicast frames: every instance on the
    /// link (but the one `Target::EveryBut` names).
    #[inline(never)]
    fn receivers_on_link(
        &mut self,
        frame: &[u8],
        target: Target,
        netd: Option<QueueId>,
        out: &mut Vec<QueueId>,
    ) -> usize {
        let but = match target {
            Target::EveryBut(s) => Some(s),
            _ => None,
        };
        let mut arp_copies = 0;
        for slot in 0..self.slots.len() {
            let on_link = self.slots[slot]
                .as_ref()
                .is_some_and(|i| i.overlay.is_none());
            if !on_link || Some(slot) == but {
                continue;
            }
            arp_copies += usize::from(self.receive_in(slot, frame, netd, out, false));
        }
        // netd's queue hears every instance's ARP: once.
        out.sort_unstable();
        out.dedup();
        arp_copies
    }

    /// [`Instances::receivers`] for one instance; whether it took the frame as ARP.
    #[inline(always)]
    fn receive_in(
        &mut self,
        slot: Slot,
        frame: &[u8],
        netd: Option<QueueId>,
        out: &mut Vec<QueueId>,
        looked_up: bool,
    ) -> bool {
        let wire_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        // One look at the ethertype decides which of the two checks can apply at all.
        let arp = match frame.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]])) {
            Some(ethertype::ARP) => self.is_arp_for(slot, frame),
            Some(ethertype::IPV6) => is_nd_advertisement(frame),
            _ => false,
        };
        let Self { slots, shared, .. } = self;
        let Some(instance) = slots.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        instance.counters.rx_frames += 1;
        instance.counters.rx_bytes += frame.len() as u64;
        if arp {
            out.extend_from_slice(&instance.queues);
            if let Some(netd) = netd {
                out.push(netd);
            }
            return true;
        }
        // A shared binding confirms a unicast MAC: a group-addressed frame never takes one.
        let unicast = frame.first().is_some_and(|b| b & 1 == 0);
        if !looked_up && unicast && instance.held > 0 {
            let table = shared.as_mut().and_then(|s| s.table(instance.table));
            if let Some(hit) = table.and_then(|t| t.lookup(frame)) {
                if hit.tag as usize == slot {
                    out.push(hit.queue);
                }
            }
        }
        if instance.local > 0 {
            instance.classifier.classify(frame, wire_len, out);
        }
        false
    }

    /// Whether `frame` is ARP that every queue of the instance at `slot` must see: a reply,
    /// or a request for one of its IPv4 addresses.
    #[inline]
    pub fn is_arp_for(&self, slot: Slot, frame: &[u8]) -> bool {
        // Untagged ARP only: the ethertype right after the addresses.
        if frame.get(12..14) != Some(&ethertype::ARP.to_be_bytes()[..]) {
            return false;
        }
        let Some(Ok(p)) = frame
            .get(netmux_wire::ethernet::HEADER_LEN..)
            .map(ArpPacket::new_checked)
        else {
            return false;
        };
        match p.operation() {
            arp::OP_REPLY => true,
            arp::OP_REQUEST => self
                .get(slot)
                .is_some_and(|i| i.ipv4.contains(&p.target_ip())),
            _ => false,
        }
    }
}

/// ICMPv6 neighbour advertisement (RFC 4861 4.4).
const ND_NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// ICMPv6 router advertisement (RFC 4861 4.2).
const ND_ROUTER_ADVERTISEMENT: u8 = 134;

/// Whether `frame` is a neighbour or router advertisement every queue of the instance it
/// reaches must see, as an ARP reply: untagged IPv6 whose next header is ICMPv6 (no extension
/// header) with hop limit 255 (RFC 4861 7.1.2, 6.1.2: anything else was routed and is not
/// neighbour discovery).
#[inline]
pub fn is_nd_advertisement(frame: &[u8]) -> bool {
    const L3: usize = netmux_wire::ethernet::HEADER_LEN;
    frame.get(12..14) == Some(&ethertype::IPV6.to_be_bytes()[..])
        && frame.get(L3 + 6..L3 + 8) == Some(&[58, 255][..])
        && matches!(
            frame.get(L3 + 40),
            Some(&(ND_NEIGHBOR_ADVERTISEMENT | ND_ROUTER_ADVERTISEMENT))
        )
}

#[cfg(test)]
mod nd_tests {
    use super::*;

    fn icmp6(kind: u8, hops: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 24];
        f[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        f[14] = 0x60;
        f[18..20].copy_from_slice(&24u16.to_be_bytes());
        f[20] = 58;
        f[21] = hops;
        f[54] = kind;
        f
    }

    #[test]
    fn neighbour_and_router_advertisements_are_recognised_and_nothing_else() {
        assert!(is_nd_advertisement(&icmp6(136, 255)));
        assert!(is_nd_advertisement(&icmp6(134, 255)));
        for kind in [135, 133, 128, 129, 1] {
            assert!(!is_nd_advertisement(&icmp6(kind, 255)), "{kind}");
        }
        assert!(!is_nd_advertisement(&icmp6(136, 64)), "routed");
        let mut udp = icmp6(136, 255);
        udp[20] = 17;
        assert!(!is_nd_advertisement(&udp));
        let mut v4 = icmp6(136, 255);
        v4[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        assert!(!is_nd_advertisement(&v4));
        assert!(!is_nd_advertisement(&icmp6(136, 255)[..54]), "cut");
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;
    use netmux_classify::{port_filter, Classifier};
    use netmux_proto::driver::RxMode;

    const LINK: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC: [u8; 6] = [2, 0xa, 0, 0, 0, 1];
    const OVERLAY_MAC: [u8; 6] = [2, 0xb, 0, 0, 0, 1];

    fn instances() -> Instances {
        let merged = |mac: [u8; 6]| -> Box<dyn Classify> {
            Box::new(Classifier::for_link(netmux_vm::Strategy::Interpreter, mac))
        };
        let mut i = Instances::new(LINK, merged(LINK), Box::new(merged));
        i.use_link_bindings(netmux_vm::Strategy::Interpreter);
        i
    }

    fn udp_to(mac: [u8; 6], ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut f = mac.to_vec();
        f.extend_from_slice(&[
            2, 0, 0, 0, 0, 9, 0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17,
        ]);
        f.extend_from_slice(&[0, 0, 192, 0, 2, 99]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&4000u16.to_be_bytes());
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(&[0, 8, 0, 0]);
        f
    }

    fn port_filter(queue: u32, ip: [u8; 4], port: u16, mac: [u8; 6]) -> RxFilter {
        let key = Key::V4 {
            protocol: 17,
            addr: ip.into(),
            port,
        };
        RxFilter {
            queue: QueueId(queue),
            filter: FilterId(u64::from(queue)),
            mode: RxMode::Owner,
            binding: Some(key.binding()),
            program: port_filter::program(&key, mac).expect("an exact key"),
        }
    }

    #[test]
    fn instances_on_the_link_and_on_an_overlay_with_one_address_keep_their_own_tables() {
        let mut i = instances();
        let ip = [192, 0, 2, 10];
        // MACs are unique on the host (a hairpin names an instance by its MAC).
        let mac = |overlay: Option<u32>| if overlay.is_some() { OVERLAY_MAC } else { MAC };
        let info = |id: u32, overlay: Option<u32>| InstanceInfo {
            instance: InstanceId(id),
            mac: mac(overlay),
            own_mac: true,
            ipv4: vec![ip],
            ipv6: Vec::new(),
            overlay,
        };
        let on_link = i.set(info(1, None)).expect("on the link");
        let on_overlay = i.set(info(2, Some(7))).expect("on an overlay");
        i.install_filter(on_link, port_filter(1, ip, 53, MAC))
            .expect("the link's");
        i.install_filter(on_overlay, port_filter(2, ip, 53, OVERLAY_MAC))
            .expect("the same key in the overlay's table");
        assert_eq!(i.link_bindings(), 2);
        let mut out = Vec::new();
        let frame = udp_to(MAC, ip, 53);
        assert_eq!(i.receive(&frame, None, &mut out), (Target::One(on_link), 0));
        assert_eq!(out, [QueueId(1)]);
        // Nothing from the link reaches the overlay's instance.
        let frame = udp_to(OVERLAY_MAC, ip, 53);
        out.clear();
        assert_eq!(i.receive(&frame, None, &mut out), (Target::One(0), 0));
        assert!(out.is_empty());
        // The overlay's instance, once decapsulation names it.
        i.receivers(&frame, Target::One(on_overlay), None, &mut out);
        assert_eq!(out, [QueueId(2)]);
        // Giving up the address moves the binding back to the instance's classifier, which
        // still matches it.
        let mut moved = info(2, Some(7));
        moved.ipv4 = vec![[192, 0, 2, 11]];
        i.set(moved).expect("readdressed");
        assert_eq!(i.link_bindings(), 1);
        out.clear();
        i.receivers(&frame, Target::One(on_overlay), None, &mut out);
        assert_eq!(out, [QueueId(2)]);
        i.remove_filter(on_overlay, QueueId(2), FilterId(2))
            .expect("removed");
        out.clear();
        i.receivers(&frame, Target::One(on_overlay), None, &mut out);
        assert!(out.is_empty());
    }
}
