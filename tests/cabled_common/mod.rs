//! Shared by the root crate's unprivileged end-to-end tests (`instances`, `operator`): the
//! real driver (the interpreter) on a virtual cable, netd in-process on it with small rings,
//! and the test as the peer host at the far end of the cable, all in a temporary directory.
//! netd stops when the [`Host`] is dropped; each test file adds the methods it needs in an
//! `impl Host` of its own.
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use netmux_driver::daemon::control::{DriverThread, ServerOptions};
use netmux_driver::daemon::{Driver, DriverConfig};
use netmux_driver::link::{LinkInfo, VirtualLink};
use netmux_netd::config::{Config, HostAddrs};
use netmux_netd::driver_link::ChannelDriver;
use netmux_netd::NetdHandle;
use netmux_proto::driver::QueueConfig;
use netmux_ring::ClientQueue;
use netmux_testkit::TempDir;
use netmux_vm::Strategy;

/// The MAC of the driver's link.
pub const LINK_MAC: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 1];
/// The MAC of the peer host (the test) at the far end of the cable.
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// The peer host's address.
pub const PEER_IP: [u8; 4] = [192, 0, 2, 99];

/// The driver, netd and the peer's end of the cable, in a temporary directory.
pub struct Host {
    _driver: DriverThread,
    netd: Option<NetdHandle>,
    peer: UnixDatagram,
    cable: PathBuf,
    /// The temporary directory: the cable, the control socket, netd's runtime directory
    /// (`run/`), and whatever the test keeps there.
    pub dir: TempDir,
}

impl Host {
    /// The driver on a cable in a temporary directory named after `tag`, and netd with the
    /// host address `ip`/24 and no IPv6 link-local address, configured further by `tweak`.
    pub fn start_in(tag: &str, ip: [u8; 4], tweak: impl FnOnce(&mut Config)) -> Host {
        let dir = TempDir::new(tag);
        let cable = dir.join("cable");
        let link = VirtualLink::bind(
            &cable,
            None,
            LinkInfo {
                spec: format!("virtual:{}", cable.display()),
                mac: LINK_MAC,
                mtu: 1500,
            },
        )
        .expect("cable");
        let driver = Driver::new(
            Box::new(link),
            DriverConfig {
                strategy: Strategy::Interpreter,
                ..DriverConfig::default()
            },
        );
        let control = dir.join("control.sock");
        let driver = DriverThread::spawn(&control, driver, ServerOptions::default()).unwrap();
        let channel = ChannelDriver::connect(&control).expect("the driver answers");
        let mut config = Config::new(dir.join("run"));
        config.addrs = HostAddrs {
            ipv4: Some((ip.into(), 24)),
            gateway: None,
            ipv6_link_local: false,
        };
        config.rings = QueueConfig {
            slot_size: 2048,
            rx_slots: 64,
            tx_slots: 64,
            completion_slots: 64,
        };
        tweak(&mut config);
        let netd = netmux_netd::spawn(config, Box::new(channel)).expect("netd starts");
        let peer = UnixDatagram::bind(dir.join("peer")).unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        Host {
            _driver: driver,
            netd: Some(netd),
            peer,
            cable,
            dir,
        }
    }

    /// netd's runtime directory.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// Puts `frame` on the cable, from the peer.
    pub fn send(&self, frame: &[u8]) {
        self.peer.send_to(frame, &self.cable).unwrap();
    }

    /// Frames the peer receives within `settle`.
    pub fn heard(&self, settle: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let end = Instant::now() + settle;
        let mut buf = vec![0u8; 70000];
        while Instant::now() < end {
            if let Ok(n) = self.peer.recv(&mut buf) {
                out.push(buf[..n].to_vec());
            }
        }
        out
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(n) = self.netd.take() {
            let _ = n.stop();
        }
    }
}

/// The frames `q` receives within `settle`.
pub fn received(q: &mut ClientQueue, settle: Duration) -> Vec<Vec<u8>> {
    let end = Instant::now() + settle;
    let mut out = Vec::new();
    while Instant::now() < end {
        if q.recv_owned(64, &mut out).unwrap_or(0) == 0 {
            let _ = q.wait_readable(Some(Duration::from_millis(10)));
        }
    }
    out
}
