//! The soak test: `netmux up` on a veth as `ip link add` makes it, with the Linux kernel at the
//! far end, for ten minutes (`NETMUX_SOAK_SECS` to change it) of churn: client processes
//! started and killed (SIGKILL or SIGTERM), instances created and destroyed with clients in
//! them, the link set down and up, and the kernel exchanging datagrams with whatever echo is
//! running throughout. At the end, with every client gone: no session is left, every port
//! binds again, and the driver's and netd's descriptors and resident memory are back where
//! they were after warm-up (memory within 16 MiB).
//!
//! Root only and long: named `root_soak_*` and `#[ignore]`d; `scripts/test` skips `soak_`
//! tests. Run it by name:
//!
//! ```sh
//! sudo cargo test --release --test soak -- --ignored --nocapture root_soak_
//! ```

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use netmux_client::blocking::Client;
use netmux_client::Transport;
use netmux_testkit::netns::{self, NetNs, Proc};
use netmux_testkit::TempDir;

const PATIENCE: Duration = Duration::from_secs(30);
const KERNEL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NETMUX: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const MUX_END: &str = "nmx0";
const KERNEL_END: &str = "nmx1";
const LOG_FILTER: &str = "warn,cranelift_jit=warn";
/// Resident memory the daemons may have grown by at the end.
const RSS_SLACK_KIB: u64 = 16 * 1024;

fn netmux() -> PathBuf {
    netns::binary_under_test(env!("CARGO_BIN_EXE_netmux"))
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `netmux ARGS --runtime-dir RUN_DIR` in `ns`; it must succeed.
fn run(ns: &NetNs, args: &[&str], run_dir: &Path) {
    netns::netmux_ok(ns.command(netmux()), args, run_dir);
}

fn echo(dir: &Path, run_dir: &Path, port: u16, instance: &str, n: usize) -> Proc {
    let name = format!("echo-{instance}-{port}-{n}");
    let mut cmd = netns::example_command(
        Command::new(netmux()),
        "udp-echo",
        port,
        &["-i", instance],
        run_dir,
    );
    cmd.env("RUST_LOG", LOG_FILTER);
    let mut p = Proc::spawn(&name, cmd, &dir.join("echo.log"));
    p.expect_line(&format!("listening on udp port {port}"), PATIENCE);
    p
}

/// One datagram to `to` and whether it came back within `wait`.
fn pinged(ns: &NetNs, to: Ipv4Addr, port: u16, wait: Duration) -> bool {
    ns.run(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 64];
        sock.send_to(b"soak", SocketAddr::from((to, port))).is_ok()
            && sock.recv_from(&mut buf).is_ok()
    })
}

#[test]
#[ignore]
fn root_soak_clients_instances_and_a_flapping_link_leave_nothing_behind() {
    netns::require_root();
    let secs: u64 = std::env::var("NETMUX_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let dir = TempDir::new("nmx-soak");
    let run_dir = dir.join("run");
    let (mux, kernel) = netns::kernel_peer("soak", MUX_END, KERNEL_END, &format!("{KERNEL}/24"));

    let link = format!("afpacket:{MUX_END}");
    let ip = format!("{NETMUX}/24");
    let mut cmd = netns::up_command(&mux, &netmux(), &link, &["--ip", &ip], &run_dir);
    cmd.env("RUST_LOG", LOG_FILTER);
    let mut up = Proc::spawn("netmux up", cmd, &dir.join("up.log"));
    let driver = netns::driver_pid(&up.expect_line("netd listening", PATIENCE));
    // `netmux up` hosts netd (`ip netns exec` executes it in its own place: the same pid).
    let netd = up.pid();

    // Warm-up: one round of everything, then the baseline.
    {
        let _e = echo(dir.path(), &run_dir, 7000, "default", 0);
        assert!(pinged(&kernel, NETMUX, 7000, PATIENCE));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (fds_driver, fds_netd) = (fds(driver), fds(netd));
    let (rss_driver, rss_netd) = (rss_kib(driver), rss_kib(netd));
    eprintln!(
        "baseline: driver {fds_driver} fds {rss_driver} KiB, netd {fds_netd} fds {rss_netd} KiB"
    );

    let start = Instant::now();
    let (mut rounds, mut answered, mut asked, mut flaps) = (0u64, 0u64, 0u64, 0u64);
    let mut clients: Vec<Proc> = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        rounds += 1;
        let instance = format!("soak-{}", rounds % 4);
        let ip = format!("192.0.2.{}/24", 10 + rounds % 4);
        run(
            &mux,
            &["instance", "create", &instance, "--ip", &ip, "--temporary"],
            &run_dir,
        );
        for k in 0..4u16 {
            clients.push(echo(
                dir.path(),
                &run_dir,
                7100 + k,
                "default",
                rounds as usize,
            ));
        }
        clients.push(echo(dir.path(), &run_dir, 7200, &instance, rounds as usize));
        for k in 0..4u16 {
            asked += 1;
            answered += u64::from(pinged(&kernel, NETMUX, 7100 + k, Duration::from_secs(2)));
        }
        if rounds % 5 == 0 {
            flaps += 1;
            mux.ip(&["link", "set", MUX_END, "down"]);
            std::thread::sleep(Duration::from_millis(300));
            mux.ip(&["link", "set", MUX_END, "up"]);
        }
        // Half the clients killed outright, the rest stopped; the instance destroyed with its
        // client still in it.
        for (i, mut c) in clients.drain(..).enumerate() {
            if i % 2 == 0 {
                c.kill9();
            } else {
                let pid = rustix::process::Pid::from_raw(c.pid() as i32).unwrap();
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                c.wait_exit(PATIENCE);
            }
        }
        run(&mux, &["instance", "destroy", &instance], &run_dir);
        assert!(up.try_wait().is_none(), "netmux up is still running");
    }

    // Everything gone: no session left, every port binds again, nothing leaked.
    std::thread::sleep(Duration::from_secs(2));
    let mut check = Client::connect(&run_dir).expect("netd answers");
    let sessions = check.list_sessions().expect("listing");
    assert!(
        sessions.sessions.iter().all(|s| s.caller),
        "only the checking session is left: {:?}",
        sessions.sessions
    );
    for port in [7000, 7100, 7101, 7102, 7103, 7200] {
        check
            .bind_port(Transport::Udp, port)
            .unwrap_or_else(|e| panic!("udp {port} binds again: {e}"));
    }
    drop(check);
    std::thread::sleep(Duration::from_secs(1));
    let (fds_driver_end, fds_netd_end) = (fds(driver), fds(netd));
    let (rss_driver_end, rss_netd_end) = (rss_kib(driver), rss_kib(netd));
    eprintln!(
        "soak: {secs} s, {rounds} rounds ({} client processes, {rounds} instances, {flaps} link flaps), \
         {answered}/{asked} echoes answered; driver {fds_driver} -> {fds_driver_end} fds, \
         {rss_driver} -> {rss_driver_end} KiB; netd {fds_netd} -> {fds_netd_end} fds, \
         {rss_netd} -> {rss_netd_end} KiB",
        rounds * 5
    );
    assert_eq!(fds_driver_end, fds_driver, "the driver's descriptors");
    assert_eq!(fds_netd_end, fds_netd, "netd's descriptors");
    assert!(
        rss_driver_end <= rss_driver + RSS_SLACK_KIB,
        "the driver's memory"
    );
    assert!(rss_netd_end <= rss_netd + RSS_SLACK_KIB, "netd's memory");
    assert!(
        answered * 10 >= asked * 9,
        "most echoes answered: {answered}/{asked}"
    );
}
