//! Duplicate address detection at start (RFC 5227), as root: `netmux up` on the end of a veth
//! pair as `ip link add` makes it (`afpacket:`), the kernel at the other end holding
//! 192.0.2.1/24.
//!
//! Proves: `up --ip 192.0.2.1/24` (the kernel's address) sends ARP probes, the kernel answers,
//! and `up` exits 1 saying the address is in use by the kernel's MAC, before it takes any
//! client (no socket is left); `up --ip 192.0.2.2/24` (a free address) starts and is then
//! reachable from the kernel; on the interface set down, `up` starts saying the address was
//! not checked.
//!
//! Addresses only in 192.0.2.0/24 inside the test's namespaces; processes stopped by their
//! pid; the namespaces are deleted on drop whatever happened. `root_*` and `#[ignore]`d:
//! `scripts/test` runs it as root.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use netmux_testkit::netns::{self, NetNs, Proc};
use netmux_testkit::TempDir;

const PATIENCE: Duration = Duration::from_secs(20);
const MUX_END: &str = "nmdad0";
const KERNEL_END: &str = "nmdad1";
const UDP_PORT: u16 = 7788;

fn netmux() -> PathBuf {
    netns::binary_under_test(env!("CARGO_BIN_EXE_netmux"))
}

fn up(mux: &NetNs, dir: &TempDir, name: &str, ip: &str) -> Proc {
    let link = format!("afpacket:{MUX_END}");
    let cmd = netns::up_command(mux, &netmux(), &link, &["--ip", ip], &dir.join(name));
    Proc::spawn(name, cmd, &dir.join(format!("{name}.log")))
}

#[test]
#[ignore]
fn root_up_refuses_an_address_the_kernel_answers_for_naming_its_mac_and_starts_with_a_free_one() {
    netns::require_root();
    let dir = TempDir::new("nmx-dad");
    let (mux, kernel) = netns::kernel_peer("da", MUX_END, KERNEL_END, "192.0.2.1/24");
    let kernel_mac = netns::mac_of(&kernel, KERNEL_END);
    assert_eq!(kernel_mac.len(), 17, "{kernel_mac}");

    // An interface that is down cannot be probed: up says the address was not checked, and
    // starts as it did before (the link may come up later).
    mux.ip(&["link", "set", MUX_END, "down"]);
    let mut down = up(&mux, &dir, "down", "192.0.2.1/24");
    down.expect_line("netd listening", PATIENCE);
    assert!(
        down.log().contains("192.0.2.1 was not checked"),
        "{}",
        down.log()
    );
    down.signal(libc::SIGTERM);
    assert!(down.wait_exit(PATIENCE).success(), "{}", down.log());
    mux.ip(&["link", "set", MUX_END, "up"]);
    // A veth set up has its carrier a moment later; until then it could not be probed.
    let deadline = Instant::now() + PATIENCE;
    while netns::sysfs(&mux, MUX_END, "operstate") != "up" {
        assert!(Instant::now() < deadline, "{MUX_END} never came up");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The kernel's address: refused, naming the kernel's MAC, within about a second.
    let started = Instant::now();
    let mut taken = up(&mux, &dir, "taken", "192.0.2.1/24");
    let status = taken.wait_exit(PATIENCE);
    let took = started.elapsed();
    let log = taken.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("the address 192.0.2.1 is in use on the link"),
        "{log}"
    );
    assert!(log.contains(&kernel_mac), "names the kernel's MAC: {log}");
    assert!(
        !dir.join("taken").join("netd.sock").exists(),
        "netd never listened"
    );
    println!(
        "192.0.2.1 (the kernel's): refused after {} ms naming {kernel_mac}",
        took.as_millis()
    );

    // A free address: up starts (after its probes) and answers the kernel.
    let started = Instant::now();
    let mut free = up(&mux, &dir, "free", "192.0.2.2/24");
    free.expect_line("netd listening", PATIENCE);
    println!(
        "192.0.2.2 (free): listening after {} ms",
        started.elapsed().as_millis()
    );
    assert!(
        free.log().contains("192.0.2.2 is free on the link"),
        "{}",
        free.log()
    );
    let echo_cmd = netns::example_command(
        mux.command(netmux()),
        "udp-echo",
        UDP_PORT,
        &[],
        &dir.join("free"),
    );
    let mut echo = Proc::spawn("udp-echo", echo_cmd, &dir.join("echo.log"));
    echo.expect_line("listening on udp port", PATIENCE);
    netns::udp_echo_from(
        &kernel,
        SocketAddr::from((Ipv4Addr::new(192, 0, 2, 2), UDP_PORT)),
        b"after the probes",
        PATIENCE,
    );
    echo.kill9();
    free.kill9();
}
