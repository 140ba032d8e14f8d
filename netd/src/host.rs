//! netd as a host: what a host's own stack answers for its addresses, for frames no client
//! took. ARP requests for the host's IPv4 address get a reply, and IPv6 neighbour solicitations
//! for its IPv6 addresses (link-local, and global with `--ip6`) an advertisement; ICMP and
//! ICMPv6 echo requests to them an echo reply; UDP to a port nobody holds an ICMP port
//! unreachable; a TCP SYN to a port nobody holds a RST. With `--ip6`, [`crate::slaac`] runs
//! here too (router solicitations, duplicate address probes). [`Responder`] decides and builds the answers with no I/O and with the time passed in;
//! [`spawn_stack`] runs it on netd's host queue. Answers larger than the link's MTU (an echo
//! reply to a large ping) go out as IPv4 or IPv6 fragments ([`netmux_wire::fragment`]), which
//! the driver checks as the whole answer.
//!
//! Guarantees, each tested on crafted frames:
//! * answers go only to frames addressed to the host (its MAC, or broadcast for ARP; its IPv4
//!   address), never to broadcast or multicast sources (RFC 1122 3.2.2), never to an ICMP error
//!   or a RST (no storms), never for a port someone holds or is releasing;
//! * ICMP and RST answers together are limited by a token bucket ([`ANSWER_RATE_PER_SEC`],
//!   [`ANSWER_BURST`]); ARP replies and neighbour advertisements are not limited (without them
//!   nothing works);
//! * neighbour solicitations are answered only when valid as RFC 4861 7.1.1 says (hop limit
//!   255, our address as target);
//! * no input makes it panic: unparsable frames get no answer.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etherparse::{
    ArpEthIpv4Packet, ArpOperation, EtherType, Icmpv4Type, Icmpv6Type, LinkSlice, NetSlice,
    PacketBuilder, SlicedPacket, TransportSlice,
};

use std::collections::BTreeMap;

use netmux_proto::driver::InstanceId;

use crate::core::Transport;
use crate::filters::HostIdentity;
use crate::service::{lock, SharedNetd};

/// ICMP errors, echo replies and RSTs per second: Linux's `icmp_msgs_per_sec` default.
pub const ANSWER_RATE_PER_SEC: u32 = 1000;
/// Answers allowed in a burst: Linux's `icmp_msgs_burst` default.
pub const ANSWER_BURST: u32 = 50;
/// Bytes of the offending datagram an ICMP error quotes past its IP header (RFC 792).
pub const ICMP_QUOTE_LEN: usize = 8;
/// TTL of netd's own packets (Linux's default).
const TTL: u8 = 64;

/// A token bucket with the time passed in.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: u32,
    burst: u32,
    /// Tokens in thousandths, so refills of less than one token are not lost.
    milli_tokens: u64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` per second.
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            milli_tokens: u64::from(burst) * 1000,
            last: Duration::ZERO,
        }
    }

    /// Takes a token at `now` if there is one.
    pub fn take(&mut self, now: Duration) -> bool {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        let refill = (elapsed.as_micros() as u64).saturating_mul(u64::from(self.rate)) / 1000;
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(refill)
            .min(u64::from(self.burst) * 1000);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// What an answer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerKind {
    /// An ARP reply.
    ArpReply,
    /// An ICMP echo reply.
    EchoReply,
    /// An ICMP destination unreachable, port unreachable.
    PortUnreachable,
    /// A TCP RST to a SYN.
    Reset,
    /// An IPv6 neighbour advertisement.
    NeighborAdvertisement,
    /// An ICMPv6 echo reply.
    Echo6Reply,
}

/// The hop limit neighbour discovery messages must carry (RFC 4861 7.1.1).
const ND_HOP_LIMIT: u8 = 255;
/// NDP option: target link-layer address (RFC 4861 4.6.1).
const ND_OPT_TARGET_LL: u8 = 2;

/// The host's answers. See the module documentation.
#[derive(Clone, Debug)]
pub struct Responder {
    mac: [u8; 6],
    ipv4: Option<Ipv4Addr>,
    ipv6: Vec<Ipv6Addr>,
    bucket: TokenBucket,
    /// Answers withheld by the rate limit.
    pub limited: u64,
}

fn is_unicast_mac(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0
}

impl Responder {
    /// A responder for a host with this MAC and IPv4 address.
    pub fn new(mac: [u8; 6], ipv4: Option<Ipv4Addr>) -> Responder {
        Responder {
            mac,
            ipv4,
            ipv6: Vec::new(),
            bucket: TokenBucket::new(ANSWER_RATE_PER_SEC, ANSWER_BURST),
            limited: 0,
        }
    }

    /// The same responder, answering for an IPv6 (link-local) address too.
    pub fn with_ipv6(mut self, ipv6: Option<Ipv6Addr>) -> Responder {
        self.ipv6.extend(ipv6);
        self
    }

    /// The same responder, answering for a host's IPv6 addresses (link-local and global).
    pub fn with_ipv6_addresses(mut self, ipv6: impl IntoIterator<Item = Ipv6Addr>) -> Responder {
        self.ipv6.extend(ipv6);
        self
    }

    /// The answer to `frame` at `now`, if a host would send one. `port_free` says whether a
    /// port is free (nobody holds it, nobody is releasing it).
    pub fn answer(
        &mut self,
        frame: &[u8],
        now: Duration,
        port_free: impl Fn(Transport, u16) -> bool,
    ) -> Option<(AnswerKind, Vec<u8>)> {
        let packet = SlicedPacket::from_ethernet(frame).ok()?;
        let Some(LinkSlice::Ethernet2(eth)) = &packet.link else {
            return None;
        };
        if !packet.link_exts.is_empty() {
            return None; // VLAN-tagged: not our link's untagged network
        }
        let src_mac = eth.source();
        if !is_unicast_mac(src_mac) {
            return None;
        }
        if eth.ether_type() == EtherType::ARP {
            return self.arp(&packet, self.ipv4?, src_mac);
        }
        if eth.ether_type() == EtherType::IPV6 {
            return self.ipv6(&packet, eth.destination(), src_mac, now);
        }
        let ip = self.ipv4?;
        if eth.destination() != self.mac {
            return None;
        }
        let Some(NetSlice::Ipv4(ipv4)) = &packet.net else {
            return None;
        };
        let header = ipv4.header();
        let src = header.source_addr();
        if header.destination_addr() != ip
            || src.is_broadcast()
            || src.is_multicast()
            || src.is_unspecified()
            || ipv4.is_payload_fragmented()
        {
            return None;
        }
        let kind = match &packet.transport {
            Some(TransportSlice::Icmpv4(icmp)) => match icmp.icmp_type() {
                Icmpv4Type::EchoRequest(_) => AnswerKind::EchoReply,
                _ => return None,
            },
            Some(TransportSlice::Udp(udp)) if port_free(Transport::Udp, udp.destination_port()) => {
                AnswerKind::PortUnreachable
            }
            Some(TransportSlice::Tcp(tcp))
                if tcp.syn()
                    && !tcp.ack()
                    && !tcp.rst()
                    && port_free(Transport::Tcp, tcp.destination_port()) =>
            {
                AnswerKind::Reset
            }
            _ => return None,
        };
        if !self.bucket.take(now) {
            self.limited += 1;
            return None;
        }
        let builder =
            PacketBuilder::ethernet2(self.mac, src_mac).ipv4(ip.octets(), src.octets(), TTL);
        let mut out = Vec::new();
        let written = match (&packet.transport, kind) {
            (Some(TransportSlice::Icmpv4(icmp)), AnswerKind::EchoReply) => {
                let Icmpv4Type::EchoRequest(echo) = icmp.icmp_type() else {
                    return None;
                };
                builder
                    .icmpv4_echo_reply(echo.id, echo.seq)
                    .write(&mut out, icmp.payload())
            }
            (Some(TransportSlice::Udp(_)), AnswerKind::PortUnreachable) => {
                let quoted =
                    header.slice().len() + ipv4.payload().payload.len().min(ICMP_QUOTE_LEN);
                let original = frame.get(14..14 + quoted)?;
                builder
                    .icmpv4(Icmpv4Type::DestinationUnreachable(
                        etherparse::icmpv4::DestUnreachableHeader::Port,
                    ))
                    .write(&mut out, original)
            }
            (Some(TransportSlice::Tcp(tcp)), AnswerKind::Reset) => {
                // RFC 793, reset generation for a segment without ACK:
                // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>, where the SYN counts one.
                let seg_len = tcp.payload().len() as u32 + 1;
                builder
                    .tcp(tcp.destination_port(), tcp.source_port(), 0, 0)
                    .rst()
                    .ack(tcp.sequence_number().wrapping_add(seg_len))
                    .write(&mut out, &[])
            }
            _ => return None,
        };
        written.ok()?;
        Some((kind, out))
    }

    fn ipv6(
        &mut self,
        packet: &SlicedPacket<'_>,
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        now: Duration,
    ) -> Option<(AnswerKind, Vec<u8>)> {
        if self.ipv6.is_empty() {
            return None;
        }
        let Some(NetSlice::Ipv6(ip)) = &packet.net else {
            return None;
        };
        let Some(TransportSlice::Icmpv6(icmp)) = &packet.transport else {
            return None;
        };
        let header = ip.header();
        let (src, dst) = (header.source_addr(), header.destination_addr());
        if src.is_multicast() {
            return None;
        }
        let solicited_node = |o: [u8; 16]| {
            Ipv6Addr::new(
                0xff02,
                0,
                0,
                0,
                0,
                1,
                0xff00 | u16::from(o[13]),
                u16::from_be_bytes([o[14], o[15]]),
            )
        };
        match icmp.icmp_type() {
            Icmpv6Type::NeighborSolicitation => {
                // The 4 reserved bytes are part of etherparse's header: the payload starts at
                // the target address.
                let target: [u8; 16] = icmp.payload().get(..16)?.try_into().ok()?;
                let ours = Ipv6Addr::from(target);
                if header.hop_limit() != ND_HOP_LIMIT
                    || !self.ipv6.contains(&ours)
                    || (dst != ours && dst != solicited_node(target))
                {
                    return None;
                }
                let o = target;
                // Duplicate address detection (from ::) is answered to all nodes, unsolicited.
                let dad = src.is_unspecified();
                let (to, to_mac) = if dad {
                    ("ff02::1".parse().ok()?, [0x33, 0x33, 0, 0, 0, 1])
                } else {
                    (src, src_mac)
                };
                let mut payload = Vec::with_capacity(24);
                payload.extend_from_slice(&o);
                payload.extend_from_slice(&[ND_OPT_TARGET_LL, 1]);
                payload.extend_from_slice(&self.mac);
                let mut out = Vec::new();
                PacketBuilder::ethernet2(self.mac, to_mac)
                    .ipv6(o, to.octets(), ND_HOP_LIMIT)
                    .icmpv6(Icmpv6Type::NeighborAdvertisement(
                        etherparse::icmpv6::NeighborAdvertisementHeader {
                            router: false,
                            solicited: !dad,
                            r#override: true,
                        },
                    ))
                    .write(&mut out, &payload)
                    .ok()?;
                Some((AnswerKind::NeighborAdvertisement, out))
            }
            Icmpv6Type::EchoRequest(echo) if self.ipv6.contains(&dst) && dst_mac == self.mac => {
                if !self.bucket.take(now) {
                    self.limited += 1;
                    return None;
                }
                let mut out = Vec::new();
                PacketBuilder::ethernet2(self.mac, src_mac)
                    .ipv6(dst.octets(), src.octets(), TTL)
                    .icmpv6_echo_reply(echo.id, echo.seq)
                    .write(&mut out, icmp.payload())
                    .ok()?;
                Some((AnswerKind::Echo6Reply, out))
            }
            _ => None,
        }
    }

    fn arp(
        &mut self,
        packet: &SlicedPacket<'_>,
        ip: Ipv4Addr,
        src_mac: [u8; 6],
    ) -> Option<(AnswerKind, Vec<u8>)> {
        let Some(NetSlice::Arp(arp)) = &packet.net else {
            return None;
        };
        let request = arp.to_packet().try_eth_ipv4().ok()?;
        if request.operation != ArpOperation::REQUEST
            || request.target_ipv4 != ip.octets()
            || request.sender_mac != src_mac
        {
            return None;
        }
        let reply = ArpEthIpv4Packet {
            operation: ArpOperation::REPLY,
            sender_mac: self.mac,
            sender_ipv4: ip.octets(),
            target_mac: request.sender_mac,
            target_ipv4: request.sender_ipv4,
        };
        let mut out = Vec::new();
        PacketBuilder::ethernet2(self.mac, request.sender_mac)
            .arp(reply.into())
            .write(&mut out)
            .ok()?;
        Some((AnswerKind::ArpReply, out))
    }
}

/// netd's host stack, running on its own thread until dropped.
#[derive(Debug)]
pub struct HostStack {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for HostStack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long the host stack sleeps waiting for frames before checking whether to stop.
const HOST_POLL: Duration = Duration::from_millis(50);
/// How long netd waits, when it stops, for the driver to send its DHCP RELEASE.
const RELEASE_WAIT: Duration = Duration::from_millis(500);
/// Frames handled per wake-up.
const HOST_BATCH: usize = 64;

/// Starts the host stack on netd's host queue, if netd created one. It answers for every
/// instance, each with its own MAC and addresses (and its own rate limit, so one tenant's
/// flood cannot silence another's answers), taking in instances as they come and go.
pub fn spawn_stack(state: SharedNetd) -> Option<HostStack> {
    let queue = {
        let mut netd = lock(&state);
        netd.take_host_queue()?
    };
    let queue = match netmux_ring::ClientQueue::from_fds(queue.memfd, queue.doorbell) {
        Ok(q) => q,
        Err(e) => {
            tracing::error!("host queue unusable: {e}");
            return None;
        }
    };
    spawn_stack_on(state, queue)
}

/// [`spawn_stack`] on a host queue netd mapped already (it probed for its address there).
pub fn spawn_stack_on(state: SharedNetd, mut queue: netmux_ring::ClientQueue) -> Option<HostStack> {
    // One DHCP client per instance that takes its address from DHCP, made when the instance
    // is first seen and released when it goes (destroyed) or netd stops.
    let mut dhcp: BTreeMap<InstanceId, DhcpRun> = BTreeMap::new();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("netd-host".into())
        .spawn(move || {
            let start = Instant::now();
            let mut responders: BTreeMap<InstanceId, (HostIdentity, Responder)> = BTreeMap::new();
            let mut frames = Vec::new();
            let mut completions = Vec::new();
            let mut slaac_ignored_seen = 0;
            let mut released: Vec<InstanceId> = Vec::new();
            // Duplicate address detection (and the default instance's SLAAC) per instance,
            // made once when the instance is first seen.
            let mut dad: BTreeMap<InstanceId, crate::slaac::Slaac> = BTreeMap::new();
            let mut dad_seen: std::collections::BTreeSet<InstanceId> = Default::default();
            let mut ipv6_idents = netmux_wire::fragment::Ipv6Idents::default();
            while !flag.load(Ordering::Relaxed) {
                if queue.wait_readable(Some(HOST_POLL)).is_err() {
                    break;
                }
                frames.clear();
                if queue.recv_owned(HOST_BATCH, &mut frames).is_err() {
                    break;
                }
                completions.clear();
                let _ = queue.completions(usize::MAX, &mut completions);
                let answers: Vec<Vec<u8>> = {
                    let mut netd = lock(&state);
                    let now = start.elapsed();
                    // Releases sent in the previous round are reported now, once in the ring.
                    for id in released.drain(..) {
                        netd.dhcp_released(id);
                    }
                    let mut dhcp_frames = sync_dhcp(&mut dhcp, &netd, &mut released);
                    for (&id, run) in dhcp.iter_mut() {
                        let client = &mut run.client;
                        for f in frames.iter().filter(|f| crate::dhcp::is_dhcp_reply(f)) {
                            if let Some(event) = client.receive(f, now) {
                                netd.push_instance_dhcp_event(id, event);
                            }
                        }
                        if client.malformed > run.malformed_seen {
                            run.malformed_seen = client.malformed;
                            tracing::warn!(
                                "dhcp: ignored a server message that cannot be trusted ({} so far, \
                                 instance {})",
                                client.malformed,
                                run.name
                            );
                        }
                        // A lease lost is followed at once by a DISCOVER: two rounds at most.
                        for _ in 0..2 {
                            let (frame, event) = client.poll(now);
                            if let Some(event) = event {
                                netd.push_instance_dhcp_event(id, event);
                            }
                            dhcp_frames.extend(frame);
                        }
                    }
                    let mut slaac_frames = Vec::new();
                    let ids: Vec<InstanceId> =
                        netd.host_identities().iter().map(|(id, _)| *id).collect();
                    dad.retain(|id, _| ids.contains(id));
                    for id in ids {
                        if dad_seen.insert(id) {
                            if let Some(machine) = netd.dad_setup(id) {
                                dad.insert(id, machine);
                            }
                        }
                    }
                    for (&id, machine) in dad.iter_mut() {
                        for f in &frames {
                            machine.receive(f);
                        }
                        if machine.ignored > slaac_ignored_seen {
                            slaac_ignored_seen = machine.ignored;
                            tracing::warn!(
                                "slaac: ignored a router advertisement that cannot be trusted \
                                 ({} so far)",
                                machine.ignored
                            );
                        }
                        slaac_frames.extend(machine.poll(now));
                        for event in machine.take_events() {
                            netd.push_slaac_event(id, event);
                        }
                    }
                    sync_responders(&mut responders, netd.host_identities());
                    let mtu = usize::from(netd.host_config().link.mtu);
                    let taken_by_dhcp =
                        |f: &[u8]| !dhcp.is_empty() && crate::dhcp::is_dhcp_reply(f);
                    frames
                        .iter()
                        .filter(|f| !taken_by_dhcp(f))
                        .filter_map(|f| {
                            responders.iter_mut().find_map(|(&id, (_, r))| {
                                r.answer(f, now, |t, p| netd.port_free(id, t, p))
                            })
                        })
                        .flat_map(|(_, a)| {
                            netmux_wire::fragment::fragment(a, mtu, ipv6_idents.next_ident())
                        })
                        .chain(dhcp_frames)
                        .chain(slaac_frames)
                        .collect()
                };
                let batch: Vec<[&[u8]; 1]> = answers.iter().map(|a| [a.as_slice()]).collect();
                let refs: Vec<&[&[u8]]> = batch.iter().map(|b| &b[..]).collect();
                if !refs.is_empty() && !send_answers(&mut queue, &refs) {
                    break;
                }
            }
            // Release every lease, and wait (briefly) until the driver has sent the RELEASEs:
            // netd's stop may be followed at once by the driver's.
            let releases: Vec<(Vec<u8>, Ipv4Addr, String)> = dhcp
                .values_mut()
                .filter_map(|run| {
                    let address = run.client.lease().map(|l| l.address)?;
                    Some((run.client.release()?, address, run.name.clone()))
                })
                .collect();
            if !releases.is_empty() {
                completions.clear();
                let _ = queue.completions(usize::MAX, &mut completions);
                completions.clear();
                let batch: Vec<[&[u8]; 1]> = releases.iter().map(|r| [r.0.as_slice()]).collect();
                let refs: Vec<&[&[u8]]> = batch.iter().map(|b| &b[..]).collect();
                match queue.send(&refs) {
                    Ok(_) => {
                        let deadline = Instant::now() + RELEASE_WAIT;
                        while completions.len() < releases.len() && Instant::now() < deadline {
                            if queue.wait_readable(Some(HOST_POLL)).is_err() {
                                break;
                            }
                            let _ = queue.completions(usize::MAX, &mut completions);
                        }
                        for (_, address, who) in &releases {
                            tracing::info!("dhcp: released the lease of {address} ({who})");
                        }
                    }
                    Err(e) => tracing::warn!("dhcp: releasing {} leases: {e}", releases.len()),
                }
            }
        })
        .ok()?;
    Some(HostStack {
        stop,
        thread: Some(thread),
    })
}

/// Sends the host's answers: the whole batch when the queue takes it within [`HOST_POLL`],
/// else each answer that fits (the others are lost, as on a host too busy to answer, and
/// logged once per batch). Returns false when the queue is unusable (closed or broken).
fn send_answers(queue: &mut netmux_ring::ClientQueue, answers: &[&[&[u8]]]) -> bool {
    use netmux_ring::QueueError;
    match queue.send_wait(answers, Some(HOST_POLL)) {
        Ok(_) => true,
        Err(QueueError::WouldBlock { .. } | QueueError::BatchTooLarge { .. }) => {
            let mut lost = 0;
            for answer in answers {
                match queue.send(std::slice::from_ref(answer)) {
                    Ok(_) => {}
                    Err(QueueError::WouldBlock { .. } | QueueError::FrameTooLarge { .. }) => {
                        lost += 1
                    }
                    Err(_) => return false,
                }
            }
            if lost > 0 {
                tracing::warn!(lost, "host answers not sent: netd's queue stayed full");
            }
            true
        }
        // A frame no ring carries: netd made it, so this is a bug; the rest still go.
        Err(QueueError::FrameTooLarge { index, len }) => {
            tracing::warn!(index, len, "host answer too large for the ring");
            true
        }
        Err(_) => false,
    }
}

/// An instance's DHCP client in the host stack.
struct DhcpRun {
    client: crate::dhcp::Client,
    /// How the log names the instance.
    name: String,
    malformed_seen: u64,
}

/// Keeps one DHCP client per instance [`crate::service::Netd::dhcp_clients`] lists: makes
/// the new ones, and releases those whose instance went (destroyed), returning their
/// RELEASEs to send and adding their instances to `released` (for
/// [`crate::service::Netd::dhcp_released`] once the RELEASEs are sent).
fn sync_dhcp(
    dhcp: &mut BTreeMap<InstanceId, DhcpRun>,
    netd: &crate::service::Netd,
    released: &mut Vec<InstanceId>,
) -> Vec<Vec<u8>> {
    let wanted = netd.dhcp_clients();
    let mut out = Vec::new();
    let gone: Vec<InstanceId> = dhcp
        .keys()
        .filter(|id| !wanted.iter().any(|w| w.instance == **id))
        .copied()
        .collect();
    for id in gone {
        if let Some(mut run) = dhcp.remove(&id) {
            let address = run.client.lease().map(|l| l.address);
            if let (Some(frame), Some(address)) = (run.client.release(), address) {
                tracing::info!("dhcp: releasing the lease of {address} ({})", run.name);
                out.push(frame);
            }
            released.push(id);
        }
    }
    for w in wanted {
        dhcp.entry(w.instance).or_insert_with(|| {
            let seed = dhcp_seed() ^ w.instance.0.rotate_left(8);
            let client = crate::dhcp::Client::new(w.mac, seed);
            let client = match w.client_id {
                Some(id) => client.with_client_id(id),
                None => client,
            };
            DhcpRun {
                client,
                name: if w.instance == netmux_proto::driver::DEFAULT_INSTANCE {
                    "the host".into()
                } else {
                    format!("instance {}", w.name)
                },
                malformed_seen: 0,
            }
        });
    }
    out
}

/// A transaction id seed that differs between runs and hosts (RFC 2131 4.1: random).
fn dhcp_seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32));
    nanos ^ std::process::id().rotate_left(16)
}

/// Keeps one responder per instance, made anew when an instance's identity changes.
fn sync_responders(
    responders: &mut BTreeMap<InstanceId, (HostIdentity, Responder)>,
    identities: Vec<(InstanceId, HostIdentity)>,
) {
    responders.retain(|id, (host, _)| identities.iter().any(|(i, h)| i == id && h == host));
    for (id, host) in identities {
        responders.entry(id).or_insert_with(|| {
            (
                host,
                Responder::new(host.mac, host.ipv4).with_ipv6_addresses(host.ipv6_addresses()),
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
    const IP: [u8; 4] = [10, 0, 0, 1];
    const PEER_IP: [u8; 4] = [10, 0, 0, 2];
    const T: Duration = Duration::from_secs(1);

    fn responder() -> Responder {
        Responder::new(MAC, Some(Ipv4Addr::from(IP)))
    }

    fn all_free(_: Transport, _: u16) -> bool {
        true
    }

    fn arp(op: ArpOperation, sender_mac: [u8; 6], target_ip: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(sender_mac, [0xff; 6])
            .arp(
                ArpEthIpv4Packet {
                    operation: op,
                    sender_mac,
                    sender_ipv4: PEER_IP,
                    target_mac: [0; 6],
                    target_ipv4: target_ip,
                }
                .into(),
            )
            .write(&mut out)
            .unwrap();
        out
    }

    fn udp_to(port: u16, src_ip: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(PEER, MAC)
            .ipv4(src_ip, IP, 64)
            .udp(40000, port)
            .write(&mut out, b"hello, anyone?")
            .unwrap();
        out
    }

    fn syn_to(port: u16, flags_ack: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let b = PacketBuilder::ethernet2(PEER, MAC)
            .ipv4(PEER_IP, IP, 64)
            .tcp(40000, port, 1000, 64240)
            .syn();
        if flags_ack {
            b.ack(5).write(&mut out, &[]).unwrap();
        } else {
            b.write(&mut out, &[]).unwrap();
        }
        out
    }

    #[test]
    fn arp_requests_for_the_host_get_a_reply_and_others_do_not() {
        let mut r = responder();
        let (kind, reply) = r
            .answer(&arp(ArpOperation::REQUEST, PEER, IP), T, all_free)
            .unwrap();
        assert_eq!(kind, AnswerKind::ArpReply);
        let p = SlicedPacket::from_ethernet(&reply).unwrap();
        let Some(NetSlice::Arp(a)) = p.net else {
            panic!("not ARP")
        };
        let a = a.to_packet().try_eth_ipv4().unwrap();
        assert_eq!(a.operation, ArpOperation::REPLY);
        assert_eq!((a.sender_mac, a.sender_ipv4), (MAC, IP));
        assert_eq!((a.target_mac, a.target_ipv4), (PEER, PEER_IP));
        // For someone else's address, a reply, or a sender claiming another MAC: nothing.
        assert!(r
            .answer(
                &arp(ArpOperation::REQUEST, PEER, [10, 0, 0, 9]),
                T,
                all_free
            )
            .is_none());
        assert!(r
            .answer(&arp(ArpOperation::REPLY, PEER, IP), T, all_free)
            .is_none());
        let mut spoofed = arp(ArpOperation::REQUEST, PEER, IP);
        spoofed[6..12].copy_from_slice(&[0x02, 9, 9, 9, 9, 9]);
        assert!(r.answer(&spoofed, T, all_free).is_none());
    }

    #[test]
    fn an_echo_request_gets_an_echo_reply_with_its_payload() {
        let mut ping = Vec::new();
        PacketBuilder::ethernet2(PEER, MAC)
            .ipv4(PEER_IP, IP, 64)
            .icmpv4_echo_request(7, 9)
            .write(&mut ping, b"abcdefgh")
            .unwrap();
        let (kind, reply) = responder().answer(&ping, T, all_free).unwrap();
        assert_eq!(kind, AnswerKind::EchoReply);
        let p = SlicedPacket::from_ethernet(&reply).unwrap();
        let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
            panic!("not ICMP")
        };
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 7, seq: 9 })
        );
        assert_eq!(icmp.payload(), b"abcdefgh");
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().destination(), PEER_IP);
    }

    #[test]
    fn udp_to_an_unbound_port_gets_port_unreachable_quoting_the_datagram() {
        let frame = udp_to(9999, PEER_IP);
        let (kind, reply) = responder().answer(&frame, T, all_free).unwrap();
        assert_eq!(kind, AnswerKind::PortUnreachable);
        let p = SlicedPacket::from_ethernet(&reply).unwrap();
        let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
            panic!("not ICMP")
        };
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port)
        );
        assert_eq!(icmp.payload(), &frame[14..14 + 20 + ICMP_QUOTE_LEN]);
        // A bound port, or a broadcast source: no answer.
        assert!(responder()
            .answer(&frame, T, |t, p| !(t == Transport::Udp && p == 9999))
            .is_none());
        assert!(responder()
            .answer(&udp_to(9999, [255, 255, 255, 255]), T, all_free)
            .is_none());
    }

    #[test]
    fn a_syn_to_an_unbound_port_gets_rst_ack_and_other_segments_nothing() {
        let (kind, reply) = responder().answer(&syn_to(80, false), T, all_free).unwrap();
        assert_eq!(kind, AnswerKind::Reset);
        let p = SlicedPacket::from_ethernet(&reply).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = p.transport else {
            panic!("not TCP")
        };
        assert!(tcp.rst() && tcp.ack() && !tcp.syn());
        assert_eq!((tcp.source_port(), tcp.destination_port()), (80, 40000));
        assert_eq!(tcp.acknowledgment_number(), 1001);
        assert!(responder().answer(&syn_to(80, true), T, all_free).is_none());
    }

    #[test]
    fn answers_are_rate_limited_and_the_bucket_refills() {
        let mut r = responder();
        let frame = udp_to(9999, PEER_IP);
        let answered = (0..200)
            .filter(|_| r.answer(&frame, T, all_free).is_some())
            .count();
        assert_eq!(answered, ANSWER_BURST as usize);
        assert_eq!(r.limited, 200 - u64::from(ANSWER_BURST));
        // One millisecond later, one more token (1000 per second).
        assert!(r
            .answer(&frame, T + Duration::from_millis(1), all_free)
            .is_some());
        // ARP is never limited.
        assert!(r
            .answer(&arp(ArpOperation::REQUEST, PEER, IP), T, all_free)
            .is_some());
    }

    const LL: &str = "fe80::ff:fe00:1";
    const PEER_LL: &str = "fe80::ff:fe00:2";

    fn ll() -> Ipv6Addr {
        LL.parse().unwrap()
    }

    fn solicitation(dst: &str, dst_mac: [u8; 6], hop_limit: u8, target: Ipv6Addr) -> Vec<u8> {
        let mut payload = vec![0, 0, 0, 0];
        payload.extend_from_slice(&target.octets());
        payload.extend_from_slice(&[1, 1]);
        payload.extend_from_slice(&PEER);
        let src: Ipv6Addr = PEER_LL.parse().unwrap();
        let dst: Ipv6Addr = dst.parse().unwrap();
        // etherparse's NeighborSolicitation header holds 4 reserved bytes; the payload starts
        // at the target address.
        let mut out = Vec::new();
        PacketBuilder::ethernet2(PEER, dst_mac)
            .ipv6(src.octets(), dst.octets(), hop_limit)
            .icmpv6(Icmpv6Type::NeighborSolicitation)
            .write(&mut out, &payload[4..])
            .unwrap();
        out
    }

    #[test]
    fn a_neighbour_solicitation_for_the_link_local_address_gets_an_advertisement() {
        let mut r = responder().with_ipv6(Some(ll()));
        let ns = solicitation("ff02::1:ff00:1", [0x33, 0x33, 0xff, 0, 0, 1], 255, ll());
        let (kind, reply) = r.answer(&ns, T, all_free).unwrap();
        assert_eq!(kind, AnswerKind::NeighborAdvertisement);
        let p = SlicedPacket::from_ethernet(&reply).unwrap();
        assert_eq!(&reply[..6], &PEER);
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6")
        };
        assert_eq!(ip.header().hop_limit(), 255);
        assert_eq!(
            ip.header().destination_addr(),
            PEER_LL.parse::<Ipv6Addr>().unwrap()
        );
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not ICMPv6")
        };
        assert!(matches!(
            icmp.icmp_type(),
            Icmpv6Type::NeighborAdvertisement(h) if h.solicited && h.r#override && !h.router
        ));
        assert_eq!(&icmp.payload()[..16], &ll().octets());
        assert_eq!(&icmp.payload()[16..24], &[2, 1, 2, 0, 0, 0, 0, 1]);
        // Another target, or a hop limit that shows it was routed: nothing.
        let other: Ipv6Addr = "fe80::9".parse().unwrap();
        assert!(r
            .answer(
                &solicitation("ff02::1:ff00:9", [0x33, 0x33, 0xff, 0, 0, 9], 255, other),
                T,
                all_free
            )
            .is_none());
        assert!(r
            .answer(&solicitation(LL, MAC, 64, ll()), T, all_free)
            .is_none());
    }

    #[test]
    fn the_global_address_is_solicited_and_pinged_like_the_link_local_one() {
        let global: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut r = responder().with_ipv6_addresses([ll(), global]);
        let ns = solicitation("ff02::1:ff00:2", [0x33, 0x33, 0xff, 0, 0, 2], 255, global);
        let (kind, reply) = r.answer(&ns, T, all_free).unwrap();
        assert_eq!(kind, AnswerKind::NeighborAdvertisement);
        let p = SlicedPacket::from_ethernet(&reply).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6")
        };
        assert_eq!(ip.header().source_addr(), global);
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not ICMPv6")
        };
        assert_eq!(&icmp.payload()[..16], &global.octets());
        let mut ping = Vec::new();
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        PacketBuilder::ethernet2(PEER, MAC)
            .ipv6(src.octets(), global.octets(), 64)
            .icmpv6_echo_request(1, 2)
            .write(&mut ping, b"global")
            .unwrap();
        let (kind, reply) = r.answer(&ping, T, all_free).unwrap();
        assert_eq!(kind, AnswerKind::Echo6Reply);
        let p = SlicedPacket::from_ethernet(&reply).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6")
        };
        assert_eq!(
            (ip.header().source_addr(), ip.header().destination_addr()),
            (global, src)
        );
        // A neighbour of the same prefix is not the host.
        let other: Ipv6Addr = "2001:db8::3".parse().unwrap();
        let ns = solicitation("ff02::1:ff00:3", [0x33, 0x33, 0xff, 0, 0, 3], 255, other);
        assert!(r.answer(&ns, T, all_free).is_none());
    }

    #[test]
    fn an_icmpv6_echo_request_to_the_link_local_address_gets_a_reply() {
        let mut ping = Vec::new();
        let src: Ipv6Addr = PEER_LL.parse().unwrap();
        PacketBuilder::ethernet2(PEER, MAC)
            .ipv6(src.octets(), ll().octets(), 64)
            .icmpv6_echo_request(3, 4)
            .write(&mut ping, b"ping6")
            .unwrap();
        let mut r = responder().with_ipv6(Some(ll()));
        let (kind, reply) = r.answer(&ping, T, all_free).unwrap();
        assert_eq!(kind, AnswerKind::Echo6Reply);
        let p = SlicedPacket::from_ethernet(&reply).unwrap();
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not ICMPv6")
        };
        assert_eq!(
            icmp.icmp_type(),
            Icmpv6Type::EchoReply(etherparse::IcmpEchoHeader { id: 3, seq: 4 })
        );
        assert_eq!(icmp.payload(), b"ping6");
        assert!(
            responder().answer(&ping, T, all_free).is_none(),
            "no IPv6 address, no answer"
        );
    }

    #[test]
    fn frames_for_other_hosts_and_garbage_get_no_answer() {
        let mut r = responder();
        let mut other_mac = udp_to(9999, PEER_IP);
        other_mac[..6].copy_from_slice(&[0x02, 7, 7, 7, 7, 7]);
        assert!(r.answer(&other_mac, T, all_free).is_none());
        for len in 0..60 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            assert!(r.answer(&junk, T, all_free).is_none());
        }
        let truncated = syn_to(80, false);
        for cut in 0..truncated.len() {
            let _ = r.answer(&truncated[..cut], T, all_free);
        }
        assert!(Responder::new(MAC, None)
            .answer(&syn_to(80, false), T, all_free)
            .is_none());
    }
}
