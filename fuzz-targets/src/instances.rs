//! F14: network stack instances on one link, the driver's (merged classifiers and one table of
//! every on-link instance's port filters, one of every overlay's) against reference instances
//! (every filter run in turn, no shared table), through random changes and frames.

use arbitrary::{Result, Unstructured};
use netmux_classify::{port_filter, Classifier, Classify, Family, Key, LinearScan, RxFilter};
use netmux_driver::daemon::instances::{Instances, Target};
use netmux_proto::driver::{FilterId, InstanceId, InstanceInfo, QueueId, RxMode, DEFAULT_INSTANCE};
use netmux_vm::{Insn, Program, Strategy};

/// Operations per input.
const MAX_OPS: usize = 64;
/// Instances an input may name: the default one and three more.
const INSTANCES: u32 = 4;
/// Both sides run programs on the interpreter (the JIT is `vm_differential`'s business).
const ENGINE: Strategy = Strategy::Interpreter;
const LINK: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// Own MACs instances may take (the last one none does at first).
const MACS: [[u8; 6]; 3] = [
    [2, 0xa, 0, 0, 0, 1],
    [2, 0xa, 0, 0, 0, 2],
    [2, 0xa, 0, 0, 0, 3],
];
const BROADCAST: [u8; 6] = [0xff; 6];
/// The overlay (VNI) of the last instance, and its MAC.
const OVERLAY: u32 = 7;
const OVERLAY_MAC: [u8; 6] = [2, 0xb, 0, 0, 0, 1];
/// The queue netd's ARP copies go to.
const NETD: QueueId = QueueId(0);

fn v4(last: u8) -> [u8; 4] {
    [192, 0, 2, last]
}

fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    a[15] = last;
    a
}

/// A queue: its id, its instance's slot, its installed rx filters.
struct Queue {
    id: QueueId,
    slot: usize,
    filters: Vec<FilterId>,
}

struct World {
    shipped: Instances,
    reference: Instances,
    queues: Vec<Queue>,
    next_id: u64,
    trace: String,
    /// The most filters the shared tables held at once, frames compared, and frames the
    /// overlay's instance took.
    most_linked: usize,
    frames: usize,
    overlay_took: usize,
}

impl World {
    fn new() -> World {
        let merged =
            |mac: [u8; 6]| -> Box<dyn Classify> { Box::new(Classifier::for_link(ENGINE, mac)) };
        let linear = |_: [u8; 6]| -> Box<dyn Classify> { Box::new(LinearScan::new(ENGINE)) };
        let mut shipped = Instances::new(LINK, merged(LINK), Box::new(merged));
        shipped.use_link_bindings(ENGINE);
        World {
            shipped,
            reference: Instances::new(LINK, linear(LINK), Box::new(linear)),
            queues: Vec::new(),
            next_id: 1,
            trace: String::new(),
            most_linked: 0,
            frames: 0,
            overlay_took: 0,
        }
    }

    fn slots(&self) -> Vec<usize> {
        (0..=INSTANCES as usize)
            .filter(|&s| self.shipped.get(s).is_some())
            .collect()
    }

    /// An instance created or changed: its MAC kind and one or two addresses of each family
    /// from a small pool, so that instances take and give up each other's addresses.
    fn set(&mut self, u: &mut Unstructured) -> Result<()> {
        let id = u.int_in_range(0..=INSTANCES - 1)?;
        // The last instance lives on an overlay (a MAC of its own, addresses of its own
        // network: the same as the link's instances' are allowed).
        let on_overlay = id == INSTANCES - 1;
        let own_mac = on_overlay || (id != 0 && u.ratio(2u8, 3)?);
        // MACs are unique on the host: the overlay's instance has one of its own.
        let mac = if on_overlay {
            OVERLAY_MAC
        } else if own_mac {
            *u.choose(&MACS)?
        } else {
            LINK
        };
        let mut ipv4 = Vec::new();
        for _ in 0..u.int_in_range(0..=2u8)? {
            ipv4.push(v4(u.int_in_range(1..=6)?));
        }
        let mut ipv6 = Vec::new();
        for _ in 0..u.int_in_range(0..=1u8)? {
            ipv6.push(v6(u.int_in_range(1..=6)?));
        }
        let info = InstanceInfo {
            instance: if id == 0 {
                DEFAULT_INSTANCE
            } else {
                InstanceId(id)
            },
            mac,
            own_mac,
            ipv4,
            ipv6,
            overlay: on_overlay.then_some(OVERLAY),
        };
        self.trace += &format!("set {info:?}\n");
        let a = self.shipped.set(info.clone());
        let b = self.reference.set(info);
        assert_eq!(a, b, "set\n{}", self.trace);
        Ok(())
    }

    fn add_queue(&mut self, u: &mut Unstructured) -> Result<()> {
        let slot = *u.choose(&self.slots())?;
        let id = QueueId(self.next_id as u32);
        self.next_id += 1;
        for inst in [&mut self.shipped, &mut self.reference] {
            if let Some(i) = inst.get_mut(slot) {
                i.queues.push(id);
            }
        }
        self.trace += &format!("queue {} in slot {slot}\n", id.0);
        self.queues.push(Queue {
            id,
            slot,
            filters: Vec::new(),
        });
        Ok(())
    }

    fn remove_queue(&mut self, u: &mut Unstructured) -> Result<()> {
        if self.queues.is_empty() {
            return Ok(());
        }
        let q = self
            .queues
            .swap_remove(u.int_in_range(0..=self.queues.len() - 1)?);
        self.trace += &format!("remove queue {}\n", q.id.0);
        for inst in [&mut self.shipped, &mut self.reference] {
            inst.remove_queue(q.slot, q.id, &q.filters);
            if let Some(i) = inst.get_mut(q.slot) {
                i.queues.retain(|&x| x != q.id);
            }
        }
        Ok(())
    }

    fn remove_filter(&mut self, u: &mut Unstructured) -> Result<()> {
        if self.queues.is_empty() {
            return Ok(());
        }
        let q = u.int_in_range(0..=self.queues.len() - 1)?;
        let Queue { id, slot, filters } = &mut self.queues[q];
        if filters.is_empty() {
            return Ok(());
        }
        let f = filters.swap_remove(u.int_in_range(0..=filters.len() - 1)?);
        self.trace += &format!("remove filter {} of queue {}\n", f.0, id.0);
        let a = self.shipped.remove_filter(*slot, *id, f);
        let b = self.reference.remove_filter(*slot, *id, f);
        assert_eq!(a, b, "remove\n{}", self.trace);
        Ok(())
    }

    /// A filter: mostly netd's port filters (for the queue's instance's MAC, another MAC, or
    /// broadcast), else an address-less binding, a tap or an exclusive claim.
    fn install(&mut self, u: &mut Unstructured) -> Result<()> {
        if self.queues.is_empty() {
            return self.add_queue(u);
        }
        let q = u.int_in_range(0..=self.queues.len() - 1)?;
        let (queue, slot) = (self.queues[q].id, self.queues[q].slot);
        let mac = self.shipped.get(slot).map_or(LINK, |i| i.mac);
        let filter = FilterId(self.next_id);
        self.next_id += 1;
        let protocol = *u.choose(&[6u8, 17])?;
        let port = *u.choose(&[53u16, 80])?;
        let accept_all = || Program::new(&[Insn::accept(1)], &[]).ok();
        let (mode, binding, program) = match u.int_in_range(0..=9u8)? {
            0 => (RxMode::Tap, None, accept_all()),
            1 => (RxMode::Exclusive, None, accept_all()),
            2 => {
                let family = *u.choose(&[Family::V4, Family::V6])?;
                let key = Key::AnyAddr {
                    family,
                    protocol,
                    port,
                };
                let name = if protocol == 6 { "tcp" } else { "udp" };
                let ip = if family == Family::V4 { "ip" } else { "ip6" };
                let expr = format!("{ip} and {name} dst port {port}");
                let program =
                    netmux_compiler::compile(&expr, &netmux_compiler::Options::default()).ok();
                (RxMode::Owner, Some(key.binding()), program)
            }
            _ => {
                let last = u.int_in_range(1..=6)?;
                let key = if u.ratio(1u8, 3)? {
                    Key::V6 {
                        protocol,
                        addr: v6(last).into(),
                        port,
                    }
                } else {
                    Key::V4 {
                        protocol,
                        addr: v4(last).into(),
                        port,
                    }
                };
                let to = match u.int_in_range(0..=5u8)? {
                    0 => *u.choose(&MACS)?,
                    1 => BROADCAST,
                    _ => mac,
                };
                (
                    RxMode::Owner,
                    Some(key.binding()),
                    port_filter::program(&key, to),
                )
            }
        };
        let Some(program) = program else {
            return Ok(());
        };
        let f = RxFilter {
            queue,
            filter,
            mode,
            binding,
            program,
        };
        self.trace += &format!(
            "install {} on queue {}: {mode:?} {binding:?}\n",
            filter.0, queue.0
        );
        let a = self.shipped.install_filter(slot, f.clone());
        let b = self.reference.install_filter(slot, f);
        assert_eq!(a, b, "install\n{}", self.trace);
        if a.is_ok() {
            self.queues[q].filters.push(filter);
        }
        self.most_linked = self.most_linked.max(self.shipped.link_bindings());
        Ok(())
    }

    /// A frame from the link (`receive`), then from another instance on this host to each
    /// instance (`receivers`, the hairpin path): the same receivers, target, ARP copies on
    /// both sides.
    fn frame(&mut self, u: &mut Unstructured) -> Result<()> {
        // Half the frames aim at an instance: its MAC and one of its addresses.
        let aims: Vec<([u8; 6], u8)> = self
            .shipped
            .iter()
            .flat_map(|i| i.ipv4.iter().map(|a| (i.mac, a[3])).collect::<Vec<_>>())
            .collect();
        let aim = if !aims.is_empty() && u.arbitrary()? {
            Some(*u.choose(&aims)?)
        } else {
            None
        };
        let frame = frame(u, aim)?;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let got = self.shipped.receive(&frame, Some(NETD), &mut a);
        let target = self.reference.dispatch(&frame);
        let arp = self.reference.receivers(&frame, target, Some(NETD), &mut b);
        assert_eq!(
            (got, &a),
            ((target, arp), &b),
            "frame {frame:02x?}\n{}",
            self.trace
        );
        for slot in self.slots() {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let t = Target::One(slot);
            let arp_a = self.shipped.receivers(&frame, t, None, &mut a);
            let arp_b = self.reference.receivers(&frame, t, None, &mut b);
            let on_overlay = self.shipped.get(slot).is_some_and(|i| i.overlay.is_some());
            self.overlay_took += usize::from(on_overlay && !a.is_empty());
            assert_eq!(
                (arp_a, &a),
                (arp_b, &b),
                "hairpin to slot {slot}: {frame:02x?}\n{}",
                self.trace
            );
        }
        self.frames += 1;
        for (a, b) in self.shipped.iter().zip(self.reference.iter()) {
            let (a, b) = (a.counters, b.counters);
            assert_eq!(
                (a.rx_frames, a.rx_bytes),
                (b.rx_frames, b.rx_bytes),
                "counters\n{}",
                self.trace
            );
        }
        Ok(())
    }
}

/// A frame to a MAC instances may have, the link's, or broadcast: IPv4 or IPv6 TCP or UDP to
/// an address of the pool, ARP, or raw bytes; cut short now and then. `aim`: an instance's MAC
/// and the last byte of one of its IPv4 addresses, to send it to.
fn frame(u: &mut Unstructured, aim: Option<([u8; 6], u8)>) -> Result<Vec<u8>> {
    let dst = match (aim, u.int_in_range(0..=4u8)?) {
        (Some((mac, _)), _) => mac,
        (None, 0) => *u.choose(&MACS)?,
        (None, 1) => BROADCAST,
        (None, 2) => OVERLAY_MAC,
        (None, _) => LINK,
    };
    let mut f = dst.to_vec();
    f.extend_from_slice(&[2, 0, 0, 0, 0, 9]);
    let last = match aim {
        Some((_, last)) => last,
        None => u.int_in_range(1..=7)?,
    };
    let port: u16 = *u.choose(&[53, 80, 81])?;
    let l4 = |f: &mut Vec<u8>, protocol: u8| {
        f.extend_from_slice(&4000u16.to_be_bytes());
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(if protocol == 6 {
            &[0; 16]
        } else {
            &[0, 8, 0, 0]
        });
    };
    match u.int_in_range(0..=5u8)? {
        0 => {
            // ARP, a request or a reply, for an address of the pool.
            f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0]);
            f.push(*u.choose(&[1u8, 2])?);
            f.extend_from_slice(&[2, 0, 0, 0, 0, 9]);
            f.extend_from_slice(&v4(99));
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&v4(last));
        }
        1 => {
            let protocol = *u.choose(&[6u8, 17, 58])?;
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 20, protocol, 64]);
            f.extend_from_slice(&v6(99));
            f.extend_from_slice(&v6(last));
            l4(&mut f, protocol);
        }
        2 => {
            let len: usize = u.int_in_range(0..=64)?;
            f.extend_from_slice(u.bytes(len)?);
        }
        _ => {
            let protocol = *u.choose(&[6u8, 17])?;
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0, 0, 64, protocol, 0, 0]);
            f.extend_from_slice(&v4(99));
            f.extend_from_slice(&v4(last));
            l4(&mut f, protocol);
        }
    }
    if u.ratio(1u8, 8)? {
        let keep = u.int_in_range(0..=f.len())?;
        f.truncate(keep);
    }
    Ok(f)
}

/// Runs an input; gives the most filters the shared tables held at once, the frames
/// compared, and the frames the overlay's instance took.
fn run(data: &[u8]) -> (usize, usize, usize) {
    let mut w = World::new();
    let mut u = Unstructured::new(data);
    let _ = steps(&mut w, &mut u);
    (w.most_linked, w.frames, w.overlay_took)
}

fn steps(w: &mut World, u: &mut Unstructured) -> Result<()> {
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=15u8)? {
            0 | 1 => w.set(u)?,
            2 | 3 => w.add_queue(u)?,
            4 => w.remove_queue(u)?,
            5 => w.remove_filter(u)?,
            6..=10 => w.install(u)?,
            _ => w.frame(u)?,
        }
    }
    Ok(())
}

/// F14. Instances on one link as the driver keeps them (merged classifiers, every on-link
/// instance's port filters in one shared table looked up before the instance is known,
/// `netmux_classify::LinkBindings`) against reference instances (`LinearScan`, every filter in
/// its own instance's scan).
///
/// An input makes up to 64 changes and frames: instances created and changed (own or shared
/// MAC, addresses taken from and given up to each other, so that bindings leave the shared
/// table; one of them on an overlay, with its own table), queues added and removed, rx filters installed (netd's port filters for the
/// instance's MAC, another instance's or broadcast; address-less bindings; taps; exclusive
/// claims) and removed; frames (IPv4, IPv6, ARP, raw bytes, cut short) from the link and by
/// hairpin to each instance. It checks that both sides allow and refuse every change alike
/// and give every frame the same target, queues, ARP copies and counters.
pub fn instances(data: &[u8]) {
    run(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_fill_the_shared_table_and_compare_frames() {
        let dir = format!("{}/../fuzz/seeds/instances", env!("CARGO_MANIFEST_DIR"));
        let (mut linked, mut frames, mut overlay) = (0, 0, 0);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            let path = entry.expect("a seed").path();
            let (l, f, o) = run(&std::fs::read(&path).expect("a seed"));
            linked = linked.max(l);
            frames += f;
            overlay += o;
        }
        assert!(
            linked >= 3,
            "the seeds put at most {linked} filters in the shared tables"
        );
        assert!(frames >= 20, "the seeds compare {frames} frames");
        assert!(
            overlay >= 1,
            "the overlay's instance takes {overlay} frames"
        );
    }
}
