//! Shared by the daemon tests: netd's side of the control socket, filter programs written in
//! the VM's assembly (the compiler's builders are not the driver's to depend on), and frames.
#![allow(dead_code)]

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netmux_driver::daemon::{Driver, DriverConfig, Response};
use netmux_driver::link::{FrameBatch, Link, LinkError, LinkInfo, LinkState, LinkStats};
use netmux_vm::Strategy;

use netmux_proto::driver::{
    Direction, DriverReply, DriverRequest, FilterId, FilterInstall, InstanceId, PortBinding,
    QueueConfig, QueueId, RxMode,
};
use netmux_proto::{Channel, PROTOCOL_VERSION};
use netmux_ring::ClientQueue;
use netmux_testkit::frames::{FrameBuilder, Ipv4};

/// Small rings: tests move a handful of frames.
pub const SMALL: QueueConfig = QueueConfig {
    slot_size: 2048,
    rx_slots: 64,
    tx_slots: 64,
    completion_slots: 64,
};

/// The client's MAC address (clients share the link's).
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

/// netd's end of the control socket.
pub struct Netd {
    pub channel: Channel,
}

impl Netd {
    /// Connects (retrying while the driver thread starts) and says hello.
    pub fn connect(path: &Path) -> (Netd, DriverReply) {
        let mut netd = Netd::connect_only(path);
        let hello = netd.request(&DriverRequest::Hello {
            version: PROTOCOL_VERSION,
        });
        (netd, hello.0)
    }

    /// Connects without hello.
    pub fn connect_only(path: &Path) -> Netd {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(sock) => {
                    return Netd {
                        channel: Channel::new(sock),
                    }
                }
                Err(e) if Instant::now() > deadline => panic!("connect {}: {e}", path.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// One request, its reply and descriptors.
    pub fn request(&mut self, request: &DriverRequest) -> (DriverReply, Vec<OwnedFd>) {
        self.channel.send(request, &[]).expect("send request");
        self.channel.recv().expect("reply")
    }

    /// Expects `Done`.
    pub fn ok(&mut self, request: &DriverRequest) {
        let (reply, _) = self.request(request);
        assert_eq!(reply, DriverReply::Done, "{request:?}");
    }

    /// Creates a queue and attaches a client to it.
    pub fn queue(&mut self, id: u32) -> ClientQueue {
        let (reply, fds) = self.request(&DriverRequest::CreateQueue {
            queue: QueueId(id),
            config: SMALL,
            instance: netmux_proto::driver::DEFAULT_INSTANCE,
        });
        assert!(
            matches!(reply, DriverReply::QueueCreated { queue, .. } if queue == QueueId(id)),
            "{reply:?}"
        );
        attach(fds)
    }

    /// Installs a filter, expecting success.
    pub fn filter(
        &mut self,
        queue: u32,
        filter: u64,
        direction: Direction,
        mode: RxMode,
        binding: Option<PortBinding>,
        program: Vec<u8>,
    ) {
        self.ok(&install_request(
            queue, filter, direction, mode, binding, program,
        ));
    }

    /// Gives queue `queue` a UDP port on `ip`: an owner rx filter and a tx filter.
    pub fn bind_udp(&mut self, queue: u32, ip: [u8; 4], port: u16, link_mac: [u8; 6]) {
        let base = u64::from(queue) * 1000 + u64::from(port) * 2;
        for request in udp_bind_requests(queue, base, link_mac, ip, port) {
            self.ok(&request);
        }
    }
}

/// The request that installs a filter.
pub fn install_request(
    queue: u32,
    filter: u64,
    direction: Direction,
    mode: RxMode,
    binding: Option<PortBinding>,
    program: Vec<u8>,
) -> DriverRequest {
    DriverRequest::InstallFilter(FilterInstall {
        queue: QueueId(queue),
        filter: FilterId(filter),
        direction,
        mode,
        binding,
        program,
    })
}

/// The requests that give queue `queue` UDP `ip:port` both ways: an owner rx filter (id
/// `filter`) and a tx filter sending from `mac` (id `filter + 1`).
pub fn udp_bind_requests(
    queue: u32,
    filter: u64,
    mac: [u8; 6],
    ip: [u8; 4],
    port: u16,
) -> [DriverRequest; 2] {
    let binding = Some(udp_binding(ip, port));
    [
        install_request(
            queue,
            filter,
            Direction::Rx,
            RxMode::Owner,
            binding,
            udp_rx_program(ip, port),
        ),
        install_request(
            queue,
            filter + 1,
            Direction::Tx,
            RxMode::Owner,
            binding,
            udp_tx_program(mac, ip, port),
        ),
    ]
}

/// Hands `request` to an in-process driver, expecting `Done`.
pub fn ok(driver: &mut Driver, request: DriverRequest) {
    let Response { reply, .. } = driver.handle(request.clone());
    assert_eq!(reply, DriverReply::Done, "{request:?}");
}

/// Creates queue `id` in `instance` on an in-process driver and attaches a client to it.
pub fn queue_in(driver: &mut Driver, id: u32, instance: InstanceId) -> ClientQueue {
    let response = driver.handle(DriverRequest::CreateQueue {
        queue: QueueId(id),
        config: SMALL,
        instance,
    });
    let fds = response
        .fds
        .unwrap_or_else(|| panic!("no queue: {:?}", response.reply));
    attach(vec![fds.memfd, fds.doorbell])
}

/// Installs a filter on an in-process driver, expecting `Done`.
pub fn install(
    driver: &mut Driver,
    queue: u32,
    filter: u64,
    direction: Direction,
    mode: RxMode,
    binding: Option<PortBinding>,
    program: Vec<u8>,
) {
    ok(
        driver,
        install_request(queue, filter, direction, mode, binding, program),
    );
}

/// Gives queue `queue` of an in-process driver UDP `ip:port` both ways
/// ([`udp_bind_requests`]).
pub fn bind_udp_in(
    driver: &mut Driver,
    queue: u32,
    filter: u64,
    mac: [u8; 6],
    ip: [u8; 4],
    port: u16,
) {
    for request in udp_bind_requests(queue, filter, mac, ip, port) {
        ok(driver, request);
    }
}

/// A client queue from the descriptors of a `QueueCreated` reply.
pub fn attach(fds: Vec<OwnedFd>) -> ClientQueue {
    let mut fds = fds.into_iter();
    let (memfd, doorbell) = (fds.next().expect("memfd"), fds.next().expect("doorbell"));
    ClientQueue::from_fds(memfd, doorbell).expect("attach")
}

/// The binding key of UDP `ip:port`.
pub fn udp_binding(ip: [u8; 4], port: u16) -> PortBinding {
    let mut address = [0; 16];
    address[..4].copy_from_slice(&ip);
    PortBinding {
        protocol: 17,
        address,
        ipv6: false,
        port,
    }
}

fn assemble(text: &str) -> Vec<u8> {
    let bytes = netmux_vm::asm::assemble(text).expect("assemble");
    netmux_vm::verify(&bytes).expect("test program verifies");
    bytes
}

/// rx: IPv4, UDP, not a fragment, to `ip:port`.
pub fn udp_rx_program(ip: [u8; 4], port: u16) -> Vec<u8> {
    assemble(&format!(
        "ldh r0, [12]\njeq r0, 0x800, +1\nreject\n\
         ldb r0, [23]\njeq r0, 17, +1\nreject\n\
         ldw r0, [30]\njeq r0, {ip}, +1\nreject\n\
         ldh r0, [20]\nand r0, 0x3fff\njeq r0, 0, +1\nreject\n\
         ldb r1, [14]\nand r1, 0xf\nlsh r1, 2\n\
         ldh r0, [r1 + 16]\njeq r0, {port}, +1\nreject\naccept 1\n",
        ip = u32::from_be_bytes(ip),
    ))
}

/// tx: from the link's MAC, IPv4, UDP, from `ip:port`.
pub fn udp_tx_program(mac: [u8; 6], ip: [u8; 4], port: u16) -> Vec<u8> {
    assemble(&format!(
        "ldw r0, [6]\njeq r0, {mac_hi}, +1\nreject\n\
         ldh r0, [10]\njeq r0, {mac_lo}, +1\nreject\n\
         ldh r0, [12]\njeq r0, 0x800, +1\nreject\n\
         ldb r0, [23]\njeq r0, 17, +1\nreject\n\
         ldw r0, [26]\njeq r0, {ip}, +1\nreject\n\
         ldb r1, [14]\nand r1, 0xf\nlsh r1, 2\n\
         ldh r0, [r1 + 14]\njeq r0, {port}, +1\nreject\naccept 1\n",
        mac_hi = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]),
        mac_lo = u16::from_be_bytes([mac[4], mac[5]]),
        ip = u32::from_be_bytes(ip),
    ))
}

/// Accepts every frame (a tap of everything).
pub fn accept_all() -> Vec<u8> {
    assemble("accept 1\n")
}

/// A UDP frame `src:sport -> dst:dport` with `payload` bytes.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    payload: usize,
) -> Vec<u8> {
    FrameBuilder::ethernet(dst_mac, src_mac)
        .ethertype(0x0800)
        .ipv4(Ipv4::new(src, dst, 17))
        .udp(sport, dport)
        .payload(payload)
        .finish()
        .data
}

/// An ARP frame (`op` 1 request, 2 reply) asking for / answering `tpa`.
pub fn arp_frame(op: u16, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    FrameBuilder::ethernet([0xff; 6], PEER_MAC)
        .ethertype(0x0806)
        .arp(op, PEER_MAC, spa, [0; 6], tpa)
        .finish()
        .data
}

/// Receives from `q` until `n` frames arrived or `timeout` passed.
pub fn recv_n(q: &mut ClientQueue, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if q.recv_owned(64, &mut out).expect("recv") == 0 {
            let _ = q.wait_readable(Some(Duration::from_millis(10)));
        }
    }
    out
}

/// Everything `q` has received within `settle`.
pub fn drain(q: &mut ClientQueue, settle: Duration) -> Vec<Vec<u8>> {
    recv_n(q, usize::MAX, settle)
}

/// Waits until `f` holds or panics after 5 s.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A hook run inside every send.
pub type Hook = Box<dyn FnMut(&[u8]) + Send>;

/// A link whose received frames the test injects and whose transmitted frames it reads; a
/// hook runs inside every send, before the frame is recorded.
#[derive(Clone, Default)]
pub struct Wire {
    pub rx: Arc<Mutex<Vec<Vec<u8>>>>,
    pub tx: Arc<Mutex<Vec<Vec<u8>>>>,
    pub hook: Arc<Mutex<Option<Hook>>>,
    /// The link's state, which the test sets.
    pub state: Arc<Mutex<LinkState>>,
    /// When set, how many more frames the link takes before it is busy (a full queue that
    /// does not drain until the test says so).
    pub room: Arc<Mutex<Option<usize>>>,
    /// The multicast MACs the driver last asked the link to accept.
    pub groups: Arc<Mutex<Vec<[u8; 6]>>>,
}

/// The link of [`in_process`].
pub struct TestLink {
    info: LinkInfo,
    wire: Wire,
    stats: LinkStats,
}

impl Link for TestLink {
    fn info(&self) -> &LinkInfo {
        &self.info
    }
    fn recv(&mut self, batch: &mut FrameBatch, max: usize) -> Result<usize, LinkError> {
        let mut rx = self.wire.rx.lock().unwrap();
        let n = rx.len().min(max);
        for frame in rx.drain(..n) {
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += frame.len() as u64;
            batch.push(0, &frame);
        }
        Ok(n)
    }
    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, LinkError> {
        if self.state() != LinkState::Up {
            return Ok(0);
        }
        let frames = match self.wire.room.lock().unwrap().as_mut() {
            Some(room) => {
                let n = frames.len().min(*room);
                *room -= n;
                &frames[..n]
            }
            None => frames,
        };
        for frame in frames {
            if let Some(hook) = self.wire.hook.lock().unwrap().as_mut() {
                hook(frame);
            }
            self.stats.tx_frames += 1;
            self.stats.tx_bytes += frame.len() as u64;
            self.wire.tx.lock().unwrap().push(frame.to_vec());
        }
        Ok(frames.len())
    }
    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    fn stats(&self) -> LinkStats {
        self.stats
    }
    fn state(&self) -> LinkState {
        *self.wire.state.lock().unwrap()
    }
    fn set_multicast_macs(&mut self, macs: &[[u8; 6]]) -> Result<(), LinkError> {
        *self.wire.groups.lock().unwrap() = macs.to_vec();
        Ok(())
    }
}

/// A driver (interpreter engine) on a [`TestLink`] with this MAC, driven in-process.
pub fn in_process(link_mac: [u8; 6]) -> (Driver, Wire) {
    let wire = Wire::default();
    let link = TestLink {
        info: LinkInfo {
            spec: "test".into(),
            mac: link_mac,
            mtu: 1500,
        },
        wire: wire.clone(),
        stats: LinkStats::default(),
    };
    let config = DriverConfig {
        strategy: Strategy::Interpreter,
        ..DriverConfig::default()
    };
    (Driver::new(Box::new(link), config), wire)
}
