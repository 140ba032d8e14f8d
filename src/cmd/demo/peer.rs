//! The demo's peer host: a smoltcp interface at the far end of the virtual cable, driven in the
//! demo process over a Unix datagram socket bound at the cable's peer path (one Ethernet frame
//! per datagram, as `driver/src/link/virtual_cable.rs` defines it).
//!
//! Besides smoltcp's sockets, the peer can put hand-made frames on the cable ([`Peer::send_raw`]:
//! an ARP request, the fragments of a UDP datagram) and watch every frame that arrives for a
//! marker ([`Peer::marked_frames`]), so the demo can prove a spoofed frame never reached it.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use netmux_ring::MAX_FRAME_LEN;

/// The peer's link MTU (IP bytes), as on the netmux side of the cable.
pub const PEER_MTU: usize = 1500;
/// Ethernet header bytes on top of the MTU.
const ETHERNET_HEADER_LEN: usize = 14;
/// How long the peer sleeps between polls when nothing is due.
const IDLE_SLEEP: Duration = Duration::from_millis(1);

/// The cable end as a smoltcp device.
pub struct CableDevice {
    socket: UnixDatagram,
    cable: PathBuf,
    buffer: Vec<u8>,
    marker: Vec<u8>,
    /// Frames received.
    pub rx_frames: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Frames received that carry the marker.
    pub marked: u64,
}

impl CableDevice {
    fn note(&mut self, frame: &[u8]) {
        self.rx_frames += 1;
        if !self.marker.is_empty() && frame.windows(self.marker.len()).any(|w| w == self.marker) {
            self.marked += 1;
        }
    }
}

/// A received frame.
pub struct CableRxToken(Vec<u8>);

impl phy::RxToken for CableRxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

/// Room for one frame to send.
pub struct CableTxToken<'a> {
    socket: &'a UnixDatagram,
    cable: &'a Path,
    sent: &'a mut u64,
}

impl phy::TxToken for CableTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let result = f(&mut frame);
        // A frame the cable cannot take is lost, as on a real link; smoltcp retransmits.
        if self.socket.send_to(&frame, self.cable).is_ok() {
            *self.sent += 1;
        }
        result
    }
}

impl Device for CableDevice {
    type RxToken<'a> = CableRxToken;
    type TxToken<'a> = CableTxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let n = match self.socket.recv(&mut self.buffer) {
            Ok(n) => n,
            Err(_) => return None,
        };
        let frame = self.buffer[..n].to_vec();
        self.note(&frame);
        Some((
            CableRxToken(frame),
            CableTxToken {
                socket: &self.socket,
                cable: &self.cable,
                sent: &mut self.tx_frames,
            },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<Self::TxToken<'_>> {
        Some(CableTxToken {
            socket: &self.socket,
            cable: &self.cable,
            sent: &mut self.tx_frames,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = PEER_MTU + ETHERNET_HEADER_LEN;
        caps
    }
}

/// The peer host: its cable end, interface and sockets.
pub struct Peer {
    /// The device (counters, raw frames).
    pub device: CableDevice,
    /// The interface.
    pub iface: Interface,
    /// smoltcp's sockets.
    pub sockets: SocketSet<'static>,
    /// The peer's MAC.
    pub mac: [u8; 6],
    /// The peer's IPv4 address.
    pub ip: [u8; 4],
    /// No wait of the peer's goes past this, whatever timeout it is given.
    pub deadline: StdInstant,
}

impl Peer {
    /// Binds the peer's end at `path` (the driver sends there) and sends to `cable` (where the
    /// driver's end is bound). Frames containing `marker` are counted. Every wait ends by
    /// `deadline`.
    pub fn bind(
        path: &Path,
        cable: &Path,
        mac: [u8; 6],
        (ip, prefix): ([u8; 4], u8),
        marker: &[u8],
        deadline: StdInstant,
    ) -> anyhow::Result<Peer> {
        let socket = UnixDatagram::bind(path)
            .with_context(|| format!("binding the peer's cable end {}", path.display()))?;
        socket
            .set_nonblocking(true)
            .context("making the peer's socket non-blocking")?;
        let mut device = CableDevice {
            socket,
            cable: cable.to_path_buf(),
            buffer: vec![0; MAX_FRAME_LEN + 1],
            marker: marker.to_vec(),
            rx_frames: 0,
            tx_frames: 0,
            marked: 0,
        };
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        let mut iface = Interface::new(config, &mut device, Instant::now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(
                IpAddress::v4(ip[0], ip[1], ip[2], ip[3]),
                prefix,
            ));
        });
        Ok(Peer {
            device,
            iface,
            sockets: SocketSet::new(vec![]),
            mac,
            ip,
            deadline,
        })
    }

    /// Puts a hand-made frame on the cable.
    pub fn send_raw(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        self.device
            .socket
            .send_to(frame, &self.device.cable)
            .context("sending on the virtual cable")?;
        self.device.tx_frames += 1;
        Ok(())
    }

    /// Receives hand-read frames (no smoltcp) until `want` picks one or `timeout` passes.
    pub fn recv_raw_until<T>(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&[u8]) -> Option<T>,
    ) -> Option<T> {
        let end = (StdInstant::now() + timeout).min(self.deadline);
        while StdInstant::now() < end {
            match self.device.socket.recv(&mut self.device.buffer) {
                Ok(n) => {
                    let frame = self.device.buffer[..n].to_vec();
                    self.device.note(&frame);
                    if let Some(found) = want(&frame) {
                        return Some(found);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(IDLE_SLEEP),
                Err(_) => return None,
            }
        }
        None
    }

    /// Polls smoltcp until `done` says so or `timeout` passes; `done` sees the sockets after
    /// every poll. Returns whether `done` was reached.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&mut SocketSet<'static>) -> bool,
    ) -> bool {
        let end = (StdInstant::now() + timeout).min(self.deadline);
        while StdInstant::now() < end {
            self.iface
                .poll(Instant::now(), &mut self.device, &mut self.sockets);
            if done(&mut self.sockets) {
                return true;
            }
            std::thread::sleep(IDLE_SLEEP);
        }
        false
    }

    /// Frames received that carried the marker.
    pub fn marked_frames(&self) -> u64 {
        self.device.marked
    }
}
