//! Shared helpers: netd in-process on a fake driver, in a fresh runtime directory.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use netmux_netd::config::{Config, HostAddrs};
use netmux_netd::fake_driver::FakeDriver;
use netmux_netd::NetdHandle;
use netmux_proto::LinkInfo;

pub const MAC_A: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 0x0b];
pub const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// A fresh runtime directory under the system's temp dir.
pub fn runtime_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "netmux-netd-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A runtime directory the test itself creates; removed with all it holds when dropped (a test
/// that fails included). Directories netd creates, netd removes.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new() -> TestDir {
        let dir = runtime_dir();
        std::fs::create_dir_all(&dir).expect("creating the test directory");
        TestDir(dir)
    }
}

impl std::ops::Deref for TestDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// netd on a fake driver with this host, configured further by `tweak`.
pub fn netd_with(
    mac: [u8; 6],
    ip: Ipv4Addr,
    tweak: impl FnOnce(&mut Config),
) -> (NetdHandle, FakeDriver) {
    let fake = FakeDriver::new(LinkInfo { mac, mtu: 1500 });
    let mut config = Config::new(runtime_dir());
    config.addrs = HostAddrs {
        ipv4: Some((ip, 24)),
        gateway: None,
        ipv6_link_local: true,
    };
    tweak(&mut config);
    let handle = netmux_netd::spawn(config, Box::new(fake.clone())).expect("netd starts");
    (handle, fake)
}

/// netd on a fake driver, host A.
pub fn netd() -> (NetdHandle, FakeDriver) {
    netd_with(MAC_A, IP_A, |_| {})
}

/// Polls `cond` until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}
