//! A TCP/IP host for tests: smoltcp on a [`CableEnd`], the far end of a driver's `virtual:`
//! cable, so a test talks TCP to a netmux client (the HTTP example) as a machine on the link
//! would. Everything runs on the caller's thread; [`TcpPeer::run_until`] polls with a deadline.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant as StdInstant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use crate::cable::CableEnd;

/// A host on a cable end. See the module documentation.
pub struct TcpPeer {
    device: CableDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    next_port: u16,
}

impl std::fmt::Debug for TcpPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpPeer").finish_non_exhaustive()
    }
}

struct CableDevice(CableEnd);

struct Rx(Vec<u8>);
struct Tx<'a>(&'a CableEnd);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        // A frame the link has no room for is lost; TCP sends it again.
        self.0.try_send(&frame);
        r
    }
}

impl Device for CableDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        self.0.try_recv().map(|f| (Rx(f), Tx(&self.0)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&self.0))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

impl TcpPeer {
    /// A host with `mac` and `ip`/`prefix` on `cable`.
    pub fn new(cable: CableEnd, mac: [u8; 6], ip: Ipv4Addr, prefix: u8) -> TcpPeer {
        cable.set_nonblocking();
        let mut device = CableDevice(cable);
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        let mut iface = Interface::new(config, &mut device, Instant::now());
        iface.update_ip_addrs(|a| {
            let o = ip.octets();
            let _ = a.push(IpCidr::new(IpAddress::v4(o[0], o[1], o[2], o[3]), prefix));
        });
        TcpPeer {
            device,
            iface,
            sockets: SocketSet::new(vec![]),
            next_port: 40000,
        }
    }

    /// Opens a TCP connection to `to` (it completes as the peer is polled).
    pub fn connect(&mut self, to: (Ipv4Addr, u16)) -> SocketHandle {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 16 * 1024]),
            tcp::SocketBuffer::new(vec![0; 16 * 1024]),
        );
        let o = to.0.octets();
        let remote = (IpAddress::v4(o[0], o[1], o[2], o[3]), to.1);
        self.next_port = self.next_port.wrapping_add(1).max(40000);
        socket
            .connect(self.iface.context(), remote, self.next_port)
            .expect("a TCP connect with a fresh local port");
        self.sockets.add(socket)
    }

    /// A connection.
    pub fn socket(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// Polls the host until `done` holds or `timeout` passes; returns whether it held.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> bool {
        let end = StdInstant::now() + timeout;
        loop {
            self.iface
                .poll(Instant::now(), &mut self.device, &mut self.sockets);
            if done(self) {
                return true;
            }
            if StdInstant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether a connection is established.
    pub fn established(&mut self, handle: SocketHandle) -> bool {
        self.socket(handle).state() == tcp::State::Established
    }

    /// Sends `bytes` on a connection (as much as its buffer takes; requests are short).
    pub fn send(&mut self, handle: SocketHandle, bytes: &[u8]) {
        let sent = self.socket(handle).send_slice(bytes).unwrap_or(0);
        assert_eq!(sent, bytes.len(), "the request fits the socket's buffer");
    }

    /// What arrived on a connection so far, appended to `into`.
    pub fn recv(&mut self, handle: SocketHandle, into: &mut Vec<u8>) {
        let socket = self.socket(handle);
        while socket.can_recv() {
            let _ = socket.recv(|b| {
                into.extend_from_slice(b);
                (b.len(), ())
            });
        }
    }
}
