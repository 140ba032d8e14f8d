//! DHCP for the default instance, as root, against a real DHCP server: `netmux up --ip dhcp` on
//! the end of a veth pair as `ip link add` makes it (`afpacket:`), the kernel at the other end
//! with 192.0.2.1/24 and `dnsmasq` serving 192.0.2.50-60 (2-minute leases, its shortest, with T1
//! at 10 s and T2 at 15 s).
//!
//! Proves: netd leases an address in the range (DISCOVER/OFFER/REQUEST/ACK from 0.0.0.0 through
//! netd's own transmit filter, the replies reaching its host queue); a client started then is
//! told the address and answers the kernel's UDP at it; the lease is renewed at T1 (10 s); with
//! dnsmasq replaced by a server that refuses it, netd says the lease is lost, takes a new one,
//! and releases it when stopped.
//!
//! Addresses only in 192.0.2.0/24 inside the test's namespaces; processes stopped by their
//! pid; the namespaces are deleted on drop whatever happened. `root_*` and `#[ignore]`d:
//! `scripts/test` runs it as root (and installs dnsmasq-base when missing).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netmux_testkit::netns::{self, NetNs, Proc};
use netmux_testkit::TempDir;

const PATIENCE: Duration = Duration::from_secs(20);
const KERNEL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const UDP_PORT: u16 = 7777;
const MUX_END: &str = "nmd0";
const KERNEL_END: &str = "nmd1";
const DNSMASQ: &str = "/usr/sbin/dnsmasq";

fn netmux() -> PathBuf {
    netns::binary_under_test(env!("CARGO_BIN_EXE_netmux"))
}

/// dnsmasq serving `range` on the kernel's end, in the foreground, its log in `log`. Leases
/// of 2 minutes (dnsmasq's shortest) with T1 at 10 s and T2 at 15 s, so a renewal comes soon.
fn start_dnsmasq(kernel: &NetNs, dir: &Path, range: &str, log: &Path, more: &[&str]) -> Proc {
    let mut cmd = kernel.command(DNSMASQ);
    cmd.args([
        "--no-daemon",
        "--conf-file=/dev/null",
        "--log-dhcp",
        "--log-facility=-",
    ])
    .arg(format!("--interface={KERNEL_END}"))
    .args(["--bind-interfaces", "--port=0"])
    .arg(format!("--dhcp-range={range},255.255.255.0,30s"))
    .args([
        "--dhcp-option=option:router,192.0.2.1",
        "--dhcp-option=option:dns-server,192.0.2.1",
        "--dhcp-option=option:T1,10",
        "--dhcp-option=option:T2,15",
    ])
    .args(more)
    .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
    .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
    Proc::spawn("dnsmasq", cmd, log)
}

/// Waits up to `patience` for `log` (a file) to contain `text`; returns the first line that
/// does.
fn wait_log(what: &str, log: &Path, text: &str, patience: Duration) -> String {
    let deadline = Instant::now() + patience;
    loop {
        let all = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = all.lines().find(|l| l.contains(text)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{what} never logged {text:?}; its log:\n{all}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The address in netd's `dhcp: leased A/N ...` line.
fn leased_address(line: &str) -> Ipv4Addr {
    let rest = &line[line.find("dhcp: leased ").expect("a lease line") + 13..];
    let cidr = rest.split_whitespace().next().unwrap();
    cidr.split('/').next().unwrap().parse().unwrap()
}

/// What both tests start from (as root, with dnsmasq installed): a temporary directory named
/// `dir_tag`; netmux's and the kernel's namespaces (tagged `ns_tag`) joined by a veth, the
/// kernel's end with 192.0.2.1/24 and dnsmasq serving 192.0.2.50-60 on it (its log
/// `dnsmasq.log`); and `netmux up --ip IP` on netmux's end, listening (its log `up.log`, its
/// runtime directory `run`). Bound in this order, they are dropped the other way round: the
/// processes first, the directory last.
fn start(dir_tag: &str, ns_tag: &str, ip: &str) -> (TempDir, NetNs, NetNs, Proc, Proc) {
    netns::require_root();
    assert!(
        Path::new(DNSMASQ).exists(),
        "{DNSMASQ} is missing: scripts/test installs dnsmasq-base"
    );
    let dir = TempDir::new(dir_tag);
    let (mux, kernel) = netns::kernel_peer(ns_tag, MUX_END, KERNEL_END, &format!("{KERNEL}/24"));
    let dnsmasq = start_dnsmasq(
        &kernel,
        dir.path(),
        "192.0.2.50,192.0.2.60",
        &dir.join("dnsmasq.log"),
        &[],
    );
    let link = format!("afpacket:{MUX_END}");
    let cmd = netns::up_command(&mux, &netmux(), &link, &["--ip", ip], &dir.join("run"));
    let mut up = Proc::spawn("netmux up", cmd, &dir.join("up.log"));
    up.expect_line("netd listening", PATIENCE);
    (dir, mux, kernel, dnsmasq, up)
}

/// Stops netd with SIGTERM (a clean stop, which releases its leases) and waits for it.
fn stop(up: &mut Proc) {
    up.signal(libc::SIGTERM);
    up.wait_exit(PATIENCE);
}

#[test]
#[ignore]
fn root_dhcp_leases_renews_and_loses_the_default_instances_address() {
    let (dir, mux, kernel, mut dnsmasq, mut up) = start("nmx-dhcp", "rd", "dhcp");
    let run_dir = dir.join("run");
    let dnsmasq_log = dir.join("dnsmasq.log");
    let up_log = dir.join("up.log");
    let started = Instant::now();

    // The lease, in the range, with the router and DNS server.
    let line = wait_log("netd", &up_log, "dhcp: leased ", PATIENCE);
    let address = leased_address(&line);
    assert!(
        (50..=60).contains(&address.octets()[3]) && address.octets()[..3] == [192, 0, 2],
        "{line}"
    );
    assert!(
        line.contains("gateway 192.0.2.1") && line.contains("dns 192.0.2.1"),
        "{line}"
    );

    // A client is told the address and answers the kernel's UDP at it.
    let echo_cmd =
        netns::example_command(mux.command(netmux()), "udp-echo", UDP_PORT, &[], &run_dir);
    let echo_log = dir.join("echo.log");
    let mut echo = Proc::spawn("udp-echo", echo_cmd, &echo_log);
    echo.expect_line(&format!("listening on udp port {UDP_PORT}"), PATIENCE);
    let bound = wait_log("udp-echo", &echo_log, "bound through netd", PATIENCE);
    assert!(bound.contains(&address.to_string()), "{bound}");
    netns::udp_echo_from(
        &kernel,
        SocketAddr::from((address, UDP_PORT)),
        b"to the leased address",
        PATIENCE,
    );

    // The renewal at T1 (10 s into the lease), seen by both sides.
    wait_log(
        "netd",
        &up_log,
        &format!("dhcp: lease of {address} renewed"),
        Duration::from_secs(15),
    );
    assert!(started.elapsed() >= Duration::from_secs(8));
    let served = std::fs::read_to_string(&dnsmasq_log).unwrap_or_default();
    assert!(
        served
            .matches(&format!("DHCPACK({KERNEL_END}) {address}"))
            .count()
            >= 2,
        "dnsmasq acked the lease and its renewal:\n{served}"
    );
    netns::udp_echo_from(
        &kernel,
        SocketAddr::from((address, UDP_PORT)),
        b"after the renewal",
        PATIENCE,
    );

    // The server goes away and one that knows nothing of the lease takes its place
    // (authoritative, another range): the next renewal is refused and netd says the lease is
    // lost. (dnsmasq's shortest lease is 2 minutes, too long to wait for it to run out here;
    // the client's unit tests cover expiry after T2.)
    dnsmasq.kill9();
    let _ = std::fs::remove_file(dir.join("leases"));
    let _other = start_dnsmasq(
        &kernel,
        dir.path(),
        "192.0.2.70,192.0.2.80",
        &dir.join("dnsmasq2.log"),
        &["--dhcp-authoritative"],
    );
    wait_log(
        "netd",
        &up_log,
        &format!("dhcp: lease of {address} lost"),
        Duration::from_secs(20),
    );
    assert!(up.try_wait().is_none(), "netd runs on without an address");
    // The client told the lost address has its session ended (it connects again for the new
    // configuration).
    wait_log("udp-echo", &echo_log, "netd went away", PATIENCE);

    // It starts over and takes a lease from the new server; stopped, it releases it.
    let deadline = Instant::now() + PATIENCE;
    let second = loop {
        let all = std::fs::read_to_string(&up_log).unwrap_or_default();
        let again = all
            .lines()
            .filter(|l| l.contains("dhcp: leased "))
            .map(leased_address)
            .find(|a| *a != address);
        if let Some(a) = again {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no second lease; netd's log:\n{all}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!((70..=80).contains(&second.octets()[3]), "{second}");
    echo.kill9();
    stop(&mut up);
    wait_log(
        "netd",
        &up_log,
        &format!("dhcp: released the lease of {second}"),
        PATIENCE,
    );
    wait_log(
        "dnsmasq",
        &dir.join("dnsmasq2.log"),
        &format!("DHCPRELEASE({KERNEL_END}) {second}"),
        PATIENCE,
    );
}

/// Runs `netmux ARGS --runtime-dir RUN_DIR` in `ns`; it must succeed.
fn netmux_ok(ns: &NetNs, args: &[&str], run_dir: &Path) -> String {
    netns::netmux_ok(ns.command(netmux()), args, run_dir)
}

/// The address of instance `name`'s lease in netd's log (`dhcp: leased A/N ... (instance
/// NAME)`), waiting for it.
fn instance_lease(log: &Path, name: &str) -> Ipv4Addr {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let all = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = all
            .lines()
            .find(|l| l.contains("dhcp: leased ") && l.contains(&format!("(instance {name})")))
        {
            return leased_address(line);
        }
        assert!(
            Instant::now() < deadline,
            "instance {name} got no lease; netd's log:\n{all}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore]
fn root_dhcp_gives_instances_their_own_leases_renews_them_and_releases_on_destroy_and_stop() {
    // The default instance has a static address; two instances lease theirs: one with a MAC
    // of its own, one sharing the link's (told apart by its client identifier).
    let (dir, mux, kernel, _dnsmasq, mut up) = start("nmx-idhcp", "rid", "192.0.2.2/24");
    let run_dir = dir.join("run");
    let dnsmasq_log = dir.join("dnsmasq.log");
    let up_log = dir.join("up.log");
    netmux_ok(
        &mux,
        &[
            "instance",
            "create",
            "own",
            "--mac",
            "02:00:5e:00:02:31",
            "--ip",
            "dhcp",
            "--temporary",
        ],
        &run_dir,
    );
    netmux_ok(
        &mux,
        &[
            "instance",
            "create",
            "shared",
            "--shared-mac",
            "--ip",
            "dhcp",
            "--temporary",
        ],
        &run_dir,
    );
    let started = Instant::now();
    let own = instance_lease(&up_log, "own");
    let shared = instance_lease(&up_log, "shared");
    assert_ne!(own, shared, "each instance has a lease of its own");
    for a in [own, shared] {
        assert!(
            (50..=60).contains(&a.octets()[3]) && a.octets()[..3] == [192, 0, 2],
            "{a}"
        );
    }
    let leases = std::fs::read_to_string(dir.join("leases")).unwrap_or_default();
    assert!(
        leases.contains("02:00:5e:00:02:31") && leases.contains(&shared.to_string()),
        "dnsmasq's leases:\n{leases}"
    );

    // `instance ls` shows the leased addresses and where they came from.
    let ls = netmux_ok(
        &mux,
        &["instance", "ls", "-p", "-o", "name,ip,ip-from,gateway"],
        &run_dir,
    );
    assert!(
        ls.contains(&format!("own:{own}/24:dhcp:192.0.2.1"))
            && ls.contains(&format!("shared:{shared}/24:dhcp:192.0.2.1")),
        "{ls}"
    );

    // A client of each is told its instance's address and answers the kernel's UDP at it.
    let mut echoes = Vec::new();
    for (name, address) in [("own", own), ("shared", shared)] {
        let cmd = netns::example_command(
            mux.command(netmux()),
            "udp-echo",
            UDP_PORT,
            &["-i", name],
            &run_dir,
        );
        let log = dir.join(format!("echo-{name}.log"));
        let mut echo = Proc::spawn(&format!("udp-echo {name}"), cmd, &log);
        echo.expect_line(&format!("listening on udp port {UDP_PORT}"), PATIENCE);
        let bound = wait_log("udp-echo", &log, "bound through netd", PATIENCE);
        assert!(bound.contains(&address.to_string()), "{bound}");
        netns::udp_echo_from(
            &kernel,
            SocketAddr::from((address, UDP_PORT)),
            b"to an instance's leased address",
            PATIENCE,
        );
        echoes.push(echo);
    }

    // Both renew at T1 (10 s into the lease).
    for a in [own, shared] {
        wait_log(
            "netd",
            &up_log,
            &format!("dhcp: lease of {a} renewed"),
            Duration::from_secs(20),
        );
    }
    assert!(started.elapsed() >= Duration::from_secs(8));
    let served = std::fs::read_to_string(&dnsmasq_log).unwrap_or_default();
    for a in [own, shared] {
        assert!(
            served
                .matches(&format!("DHCPACK({KERNEL_END}) {a}"))
                .count()
                >= 2,
            "dnsmasq acked {a} and its renewal:\n{served}"
        );
    }
    netns::udp_echo_from(
        &kernel,
        SocketAddr::from((shared, UDP_PORT)),
        b"after the renewal",
        PATIENCE,
    );

    // Destroying `own` releases its lease; `shared` keeps serving.
    netmux_ok(&mux, &["instance", "destroy", "own"], &run_dir);
    wait_log(
        "dnsmasq",
        &dnsmasq_log,
        &format!("DHCPRELEASE({KERNEL_END}) {own}"),
        PATIENCE,
    );
    netns::udp_echo_from(
        &kernel,
        SocketAddr::from((shared, UDP_PORT)),
        b"shared still answers",
        PATIENCE,
    );

    // Stopping netd releases `shared`'s.
    for mut e in echoes {
        e.kill9();
    }
    stop(&mut up);
    wait_log(
        "dnsmasq",
        &dnsmasq_log,
        &format!("DHCPRELEASE({KERNEL_END}) {shared}"),
        PATIENCE,
    );
}
