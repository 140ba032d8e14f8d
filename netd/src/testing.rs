//! Test support (the `test-support` feature, which the product never enables): netd in-process
//! on the real driver.
//!
//! * [`CabledDriver`]: the driver ([`netmux_driver::daemon::Driver`]) serving its control
//!   socket on a thread, its link one end of a `virtual:` cable. The far end is the test's
//!   [`CableEnd`], through which it puts frames on the link and reads what the link transmitted,
//!   or another driver's ([`CabledDriver::pair`]).
//! * [`Host`]: such a driver with netd running in-process ([`crate::spawn`]) on it, through
//!   [`ChannelDriver`] wrapped in a [`Recorder`] ([`RecordedDriver`]): a test sees what netd
//!   asked of the driver and in what order, can make installs fail, and reads the driver's own
//!   counters.
//!
//! Nothing is simulated: the driver classifies received frames and checks transmissions by
//! running the programs netd installed, and frames cross real sockets. Everything lives in a
//! scratch directory that is removed, with the driver stopped, when the last user is dropped.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use netmux_driver::daemon::control::{DriverThread, ServerOptions};
use netmux_driver::daemon::{Driver, DriverConfig};
use netmux_driver::link::VirtualLink;
use netmux_proto::driver::{Counters, QueueId};
use netmux_testkit::cable::{CableEnd, Hub};
use netmux_testkit::TempDir;

use crate::config::{Config, HostAddrs};
use crate::driver_link::{ChannelDriver, DriverLink, DriverStats, Recorder};
use crate::NetdHandle;

/// The MTU of every test link: Ethernet's.
pub const TEST_MTU: u32 = 1500;
/// The prefix length of every test host's IPv4 address.
pub const TEST_PREFIX: u8 = 24;

/// The real driver on a thread of this process, its link one end of a virtual cable; stopped
/// (it fails closed) when dropped. See the module documentation.
#[derive(Debug)]
pub struct CabledDriver {
    thread: Option<DriverThread>,
    name: &'static str,
    control: PathBuf,
    wire: Option<CableEnd>,
    /// Dropped last: shared by both drivers of a pair.
    dir: Arc<TempDir>,
}

impl CabledDriver {
    /// A driver whose link has `mac`, the far end of its cable held by the test
    /// ([`CabledDriver::wire`]).
    pub fn start(mac: [u8; 6]) -> CabledDriver {
        let dir = Arc::new(TempDir::new("netmux-driver-test"));
        let link = dir.join("driver.cable");
        let far = dir.join("test.cable");
        let wire = CableEnd::bind(&far, &link);
        let mut driver = CabledDriver::on_cable(&dir, "driver", &link, &far, mac);
        driver.wire = Some(wire);
        driver
    }

    /// Two drivers cabled to each other: what one transmits, the other receives.
    pub fn pair(mac_a: [u8; 6], mac_b: [u8; 6]) -> (CabledDriver, CabledDriver) {
        let dir = Arc::new(TempDir::new("netmux-driver-pair"));
        let (a, b) = (dir.join("a.cable"), dir.join("b.cable"));
        (
            CabledDriver::on_cable(&dir, "a", &a, &b, mac_a),
            CabledDriver::on_cable(&dir, "b", &b, &a, mac_b),
        )
    }

    /// A driver whose link is bound at `link` and sends to `peer` (a [`Hub`] port, say), its
    /// control socket in a scratch directory of its own.
    pub fn on_link(link: &Path, peer: &Path, mac: [u8; 6]) -> CabledDriver {
        let dir = Arc::new(TempDir::new("netmux-driver-link"));
        CabledDriver::on_cable(&dir, "link", link, peer, mac)
    }

    fn on_cable(
        dir: &Arc<TempDir>,
        name: &'static str,
        link: &Path,
        peer: &Path,
        mac: [u8; 6],
    ) -> CabledDriver {
        let identity = netmux_driver::link::LinkInfo {
            spec: format!("virtual:{},{}", link.display(), peer.display()),
            mac,
            mtu: TEST_MTU,
        };
        let link = VirtualLink::bind(link, Some(peer), identity)
            .unwrap_or_else(|e| panic!("binding the driver's end of the cable: {e}"));
        let driver = Driver::new(Box::new(link), DriverConfig::default());
        let control = dir.join(format!("{name}.control"));
        let thread = DriverThread::spawn(&control, driver, ServerOptions::default())
            .unwrap_or_else(|e| panic!("starting the driver: {e}"));
        CabledDriver {
            thread: Some(thread),
            name,
            control,
            wire: None,
            dir: Arc::clone(dir),
        }
    }

    /// A new netd connection to the driver (the driver serves one at a time).
    pub fn connect(&self) -> ChannelDriver {
        ChannelDriver::connect(&self.control)
            .unwrap_or_else(|e| panic!("connecting to the driver: {e}"))
    }

    /// The far end of the cable. Panics for a driver cabled to another driver.
    pub fn wire(&self) -> &CableEnd {
        self.wire
            .as_ref()
            .expect("this driver's cable goes to another driver, not to the test")
    }

    /// The scratch directory (removed on drop): a test may keep its own files there.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A runtime directory for netd in the scratch directory, not yet created: netd creates
    /// it, and removes it when it stops.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.join(format!("{}-netd", self.name))
    }

    /// Stops the driver as if it had died: it fails closed (every queue is stopped and marked
    /// closed) and its control connection ends.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            thread
                .stop()
                .unwrap_or_else(|e| panic!("stopping the driver: {e}"));
        }
    }
}

/// Where host `i` of [`Host::on_hub`] binds its link.
pub fn hub_link(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("link-{i}.cable"))
}

/// The link MAC of host `i` of [`Host::on_hub`].
pub fn hub_mac(i: usize) -> [u8; 6] {
    [0x02, 0x6e, 0x6d, 0, 0, i as u8]
}

/// The address of host `i` of [`Host::on_hub`]: 192.0.2.`i+1`.
pub fn hub_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, i as u8 + 1)
}

/// netd's connection to the driver, recorded; clones share the connection and the record.
pub type RecordedDriver = Recorder<ChannelDriver>;

/// netd in-process on a [`CabledDriver`]; netd stops, then the driver, when dropped.
#[derive(Debug)]
pub struct Host {
    /// netd.
    pub netd: NetdHandle,
    /// netd's link to the driver (a clone of it): every request netd made, in order, and a
    /// way to the driver's counters.
    pub driver: RecordedDriver,
    cabled: CabledDriver,
}

impl Host {
    /// netd with the host address `ip`/[`TEST_PREFIX`] and an IPv6 link-local address,
    /// configured further by `tweak`, on a new driver whose link has `mac` and whose cable's
    /// far end is the test's ([`Host::wire`]).
    pub fn start(mac: [u8; 6], ip: Ipv4Addr, tweak: impl FnOnce(&mut Config)) -> Host {
        Host::on(CabledDriver::start(mac), ip, tweak)
    }

    /// `n` hosts on one [`Hub`] in `dir`: host `i` has the link MAC `02:6e:6d:00:00:0i` and
    /// the address 192.0.2.`i+1`, configured further by `tweak`. Link `i` is bound at
    /// `dir/link-i.cable` (a host in another process may be started on the last one with
    /// [`CabledDriver::on_link`] and [`Hub::port`]); `started` says which hosts start here.
    pub fn on_hub(
        dir: &Path,
        n: usize,
        started: impl Fn(usize) -> bool,
        tweak: impl Fn(&mut Config),
    ) -> (Hub, Vec<Option<Host>>) {
        let links: Vec<PathBuf> = (0..n).map(|i| hub_link(dir, i)).collect();
        let ports: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("hub-{i}.sock"))).collect();
        let hub = Hub::start(&ports, &links);
        let hosts = (0..n)
            .map(|i| {
                started(i).then(|| {
                    Host::on(
                        CabledDriver::on_link(&links[i], hub.port(i), hub_mac(i)),
                        hub_ip(i),
                        &tweak,
                    )
                })
            })
            .collect();
        (hub, hosts)
    }

    /// Two hosts, default configuration otherwise, cabled to each other.
    pub fn pair(a: ([u8; 6], Ipv4Addr), b: ([u8; 6], Ipv4Addr)) -> (Host, Host) {
        let (driver_a, driver_b) = CabledDriver::pair(a.0, b.0);
        (
            Host::on(driver_a, a.1, |_| {}),
            Host::on(driver_b, b.1, |_| {}),
        )
    }

    /// netd on `driver`, configured as [`Host::start`] says.
    pub fn on(driver: CabledDriver, ip: Ipv4Addr, tweak: impl FnOnce(&mut Config)) -> Host {
        let recorder = Recorder::new(driver.connect());
        let mut config = Config::new(driver.runtime_dir());
        config.addrs = HostAddrs {
            ipv4: Some((ip, TEST_PREFIX)),
            gateway: None,
            ipv6_link_local: true,
        };
        tweak(&mut config);
        let netd = crate::spawn(config, Box::new(recorder.clone()))
            .unwrap_or_else(|e| panic!("starting netd: {e}"));
        Host {
            netd,
            driver: recorder,
            cabled: driver,
        }
    }

    /// The runtime directory netd listens in.
    pub fn runtime_dir(&self) -> &Path {
        self.netd
            .socket_path()
            .parent()
            .expect("netd's socket is in its runtime directory")
    }

    /// The far end of the cable. Panics for a host cabled to another host.
    pub fn wire(&self) -> &CableEnd {
        self.cabled.wire()
    }

    /// The driver's counters: the link's, each queue's and each instance's.
    pub fn stats(&self) -> DriverStats {
        self.driver
            .clone()
            .stats()
            .unwrap_or_else(|e| panic!("the driver's counters: {e}"))
    }

    /// The driver's counters of one queue. Panics when the driver has no such queue.
    pub fn queue_counters(&self, queue: QueueId) -> Counters {
        self.stats()
            .queues
            .into_iter()
            .find_map(|(q, c)| (q == queue).then_some(c))
            .unwrap_or_else(|| panic!("the driver has no queue {}", queue.0))
    }

    /// Stops the driver under netd, as if it had died (see [`CabledDriver::stop`]).
    pub fn stop_driver(&mut self) {
        self.cabled.stop();
    }
}
