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

/// A UDP datagram from host B (port 40000) to host A's `port`.
pub fn udp_to(port: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(IP_B.octets(), IP_A.octets(), 64)
        .udp(40000, port)
        .write(&mut frame, b"hello")
        .unwrap();
    frame
}

/// The answer to [`udp_to`]: from host A's `port` back to host B.
pub fn udp_from(port: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(IP_A.octets(), IP_B.octets(), 64)
        .udp(port, 40000)
        .write(&mut frame, b"hello")
        .unwrap();
    frame
}

/// Raises this process's descriptor limit to `want` (the hard limit too, when this process
/// may), or as far as the hard limit goes; returns the limit now. Tests that hold many
/// clients need it: each client holds its socket and its queue's descriptors, and so do netd
/// and the driver, all in this one process.
pub fn raise_descriptor_limit(want: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < want
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: Some(want),
            },
        )
        .is_ok()
    {
        return want;
    }
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want.min(hard)),
            maximum: limit.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(0)
}
