//! Shared helpers of netd's tests: the hosts' identities, netd in-process on the real driver
//! ([`netmux_netd::testing::Host`]), and waiting for what happens on other threads.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netmux_netd::config::Config;
pub use netmux_netd::testing::Host;

/// Host A: the netd under test.
pub const MAC_A: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 0x0a];
/// Host B: the far end of the cable (the test, or a second netd).
pub const MAC_B: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 0x0b];
pub const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// Host A, configured further by `tweak`.
pub fn host_with(tweak: impl FnOnce(&mut Config)) -> Host {
    Host::start(MAC_A, IP_A, tweak)
}

/// Host A.
pub fn host() -> Host {
    host_with(|_| {})
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
