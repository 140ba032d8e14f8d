//! Overlays with the `etcd` mapping backend against a real etcd (Debian's `etcd-server`,
//! started by each test on 127.0.0.1 with free ports and killed by its pid at the end),
//! without privileges: netmux hosts (the real driver and netd each) on a hub of virtual
//! cables as the underlay, every netd pointed at the same etcd, each writing its own
//! instances' mappings under a lease of [`TTL`].
//!
//! Proves: a third host joins by writing its mappings and is reachable from the others; a
//! host killed by SIGKILL (its own process) loses its mappings when its lease expires; a MAC
//! that moves to another host is followed within one second, after a compaction too; a host
//! that stops revokes its lease, so its mappings go at once;
//! `overlay map set|rm` write etcd and every host follows; etcd going away shows the overlay
//! as degraded while its cached mappings keep working, and it recovers by itself when etcd
//! is back.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netmux_client::blocking::Client;
use netmux_client::{MappingChange, MappingEntry};
use netmux_netd::testing::{hub_ip, hub_link, hub_mac, CabledDriver, Host};
use netmux_ring::ClientQueue;
use netmux_testkit::etcd::Etcd;
use netmux_testkit::frames::{FrameBuilder, Ipv4};
use netmux_testkit::TempDir;

mod overlay_common;
use overlay_common::{recv, send};

/// The lease TTL every host here uses: a dead host's mappings outlive it by this much.
const TTL: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(10);
const ROLE_ENV: &str = "NETMUX_OVERLAY_ETCD_ROLE";
const DIR_ENV: &str = "NETMUX_OVERLAY_ETCD_DIR";
const URL_ENV: &str = "NETMUX_OVERLAY_ETCD_URL";
/// What the host process prints once it is ready.
const READY: &str = "netmux-host-ready";

/// Overlay instance `i`: MAC 02:b1:00:00:00:0i, address 10.0.0.i.
fn mac(i: u8) -> [u8; 6] {
    [0x02, 0xb1, 0, 0, 0, i]
}

fn ip(i: u8) -> [u8; 4] {
    [10, 0, 0, i]
}

/// `n` hosts on a hub, the first `started` of them here, each with a lease of [`TTL`].
fn hosts(dir: &Path, n: usize, started: usize) -> (netmux_testkit::cable::Hub, Vec<Host>) {
    let (hub, hosts) = Host::on_hub(dir, n, |i| i < started, |c| c.overlay_lease_ttl = TTL);
    (hub, hosts.into_iter().flatten().collect())
}

fn create_overlay(runtime_dir: &Path, url: &str) {
    overlay_common::create_overlay(runtime_dir, "blue", 42, &format!("etcd:{url}"));
}

/// Creates instance `i` on blue and a client in it bound to UDP 7 with its queue.
fn join(runtime_dir: &Path, i: u8) -> (Client, ClientQueue) {
    overlay_common::join(runtime_dir, "blue", &format!("blue-{i}"), mac(i), ip(i))
}

fn udp(from: u8, to: u8, payload: &[u8]) -> Vec<u8> {
    FrameBuilder::ethernet(mac(to), mac(from))
        .ethertype(0x0800)
        .ipv4(Ipv4::new(ip(from), ip(to), 17))
        .udp(7, 7)
        .payload(payload.len())
        .finish()
        .data
}

/// Sends `frame` until `to` receives `expect`, at most for [`WAIT`].
fn deliver(from: &mut ClientQueue, to: &mut ClientQueue, frame: &[u8], expect: &[u8]) {
    overlay_common::deliver(from, to, frame, expect, WAIT);
}

/// Where host `runtime_dir`'s netd maps instance `i`'s MAC now.
fn mapped(runtime_dir: &Path, i: u8) -> Option<Ipv4Addr> {
    Client::connect(runtime_dir)
        .unwrap()
        .overlay_mappings("blue", None)
        .unwrap()
        .into_iter()
        .find(|e| e.mac == mac(i))
        .map(|e| e.ip)
}

/// Waits until `ok` holds, at most `timeout`; returns how long it took.
fn until(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn state(runtime_dir: &Path) -> String {
    Client::connect(runtime_dir)
        .unwrap()
        .list_overlays()
        .unwrap()[0]
        .state
        .clone()
}

/// A host in a process of its own (this test binary, run again as the `host` role), killed
/// by its pid (SIGKILL) when dropped: no netd code runs at its end, so its lease is never
/// revoked.
struct ChildHost(Child);

impl ChildHost {
    /// Starts host 2 of the hub in `dir` with instance 3 on blue, and waits until it is ready.
    fn start(dir: &Path, url: &str) -> ChildHost {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "host_process_entry_point",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE_ENV, "host")
            .env(DIR_ENV, dir)
            .env(URL_ENV, url)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let child = ChildHost(child);
        loop {
            match lines.next() {
                // libtest may have begun the line with the test's name.
                Some(Ok(l)) if l.ends_with(READY) => break,
                Some(Ok(_)) => continue,
                _ => panic!("the host process ended before it was ready"),
            }
        }
        // The rest of its output is not read; it only prints once more if it fails.
        std::thread::spawn(move || for _ in lines {});
        child
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildHost {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The host process (does nothing unless `ROLE_ENV` is set): host 2 of the hub in
/// `DIR_ENV`, on etcd at `URL_ENV`, with instance 3 on blue whose client echoes every UDP
/// datagram back to its sender; prints [`READY`], then serves until it is killed.
#[test]
fn host_process_entry_point() {
    let (Ok(_), Ok(dir), Ok(url)) = (
        std::env::var(ROLE_ENV),
        std::env::var(DIR_ENV),
        std::env::var(URL_ENV),
    ) else {
        return;
    };
    let dir = Path::new(&dir);
    let driver = CabledDriver::on_link(&hub_link(dir, 2), &dir.join("hub-2.sock"), hub_mac(2));
    let host = Host::on(driver, hub_ip(2), |c| c.overlay_lease_ttl = TTL);
    create_overlay(host.runtime_dir(), &url);
    let (_c, mut q) = join(host.runtime_dir(), 3);
    println!("{READY}");
    loop {
        for f in recv(&mut q, 64, Duration::from_millis(100)) {
            if f.get(12..14) == Some(&[0x08, 0x00][..]) && f.len() >= 42 {
                let from = f[29];
                let echo = FrameBuilder::ethernet(mac(from), mac(3))
                    .ethertype(0x0800)
                    .ipv4(Ipv4::new(ip(3), ip(from), 17))
                    .udp(7, 7)
                    .payload(f.len() - 42)
                    .finish()
                    .data;
                send(&mut q, &echo);
            }
        }
    }
}

#[test]
fn a_third_host_joins_through_etcd_and_a_killed_hosts_mappings_expire_with_its_lease() {
    let etcd = Etcd::start();
    let dir = TempDir::new("netmux-etcd-hub");
    let (_hub, hosts) = hosts(dir.path(), 3, 2);
    let (a, b) = (&hosts[0], &hosts[1]);
    create_overlay(a.runtime_dir(), &etcd.url());
    create_overlay(b.runtime_dir(), &etcd.url());
    let (_ca, mut qa) = join(a.runtime_dir(), 1);
    let (_cb, mut qb) = join(b.runtime_dir(), 2);
    // Each host wrote its own instance's mapping; each learnt the other's from etcd.
    until(WAIT, "A learns B's mapping", || {
        mapped(a.runtime_dir(), 2) == Some(hub_ip(1))
    });
    until(WAIT, "B learns A's mapping", || {
        mapped(b.runtime_dir(), 1) == Some(hub_ip(0))
    });
    until(WAIT, "the overlay is ok", || state(a.runtime_dir()) == "ok");
    let frame = udp(1, 2, b"a to b");
    deliver(&mut qa, &mut qb, &frame, &frame);

    // A third host, in a process of its own, joins by writing its mapping.
    let mut c = ChildHost::start(dir.path(), &etcd.url());
    until(WAIT, "A learns the third host's mapping", || {
        mapped(a.runtime_dir(), 3) == Some(hub_ip(2))
    });
    until(WAIT, "B learns the third host's mapping", || {
        mapped(b.runtime_dir(), 3) == Some(hub_ip(2))
    });
    // Reachable: it echoes A's datagram back.
    let to_c = udp(1, 3, b"hello third host");
    let echo = FrameBuilder::ethernet(mac(1), mac(3))
        .ethertype(0x0800)
        .ipv4(Ipv4::new(ip(3), ip(1), 17))
        .udp(7, 7)
        .payload(b"hello third host".len())
        .finish()
        .data;
    let deadline = Instant::now() + WAIT;
    let mut echoed = false;
    while !echoed && Instant::now() < deadline {
        send(&mut qa, &to_c);
        echoed = recv(&mut qa, 1, Duration::from_millis(200))
            .iter()
            .any(|f| f == &echo);
    }
    assert!(echoed, "the third host did not answer");

    // Killed: nothing revokes its lease, so its mapping goes when the lease expires.
    c.kill();
    let killed = Instant::now();
    until(
        TTL * 3 + WAIT / 2,
        "the killed host's mapping expires",
        || mapped(a.runtime_dir(), 3).is_none(),
    );
    let gone_after = killed.elapsed();
    eprintln!("the killed host's mapping was gone {gone_after:?} after SIGKILL (TTL {TTL:?})");
    assert!(
        gone_after >= TTL / 2,
        "gone after {gone_after:?}: before the lease could expire"
    );
    until(WAIT, "B forgets it too", || {
        mapped(b.runtime_dir(), 3).is_none()
    });
    // The others' mappings stay (their leases are kept alive).
    std::thread::sleep(TTL * 2);
    assert_eq!(mapped(a.runtime_dir(), 2), Some(hub_ip(1)));
    deliver(&mut qa, &mut qb, &frame, &frame);
}

#[test]
fn a_mac_that_moves_to_another_host_is_followed_within_one_second_after_a_compaction_too() {
    let etcd = Etcd::start();
    let dir = TempDir::new("netmux-etcd-hub");
    let (_hub, mut hosts) = hosts(dir.path(), 3, 3);
    for h in &hosts {
        create_overlay(h.runtime_dir(), &etcd.url());
    }
    let (_ca, mut qa) = join(hosts[0].runtime_dir(), 1);
    let (cb, qb) = join(hosts[1].runtime_dir(), 2);
    until(WAIT, "A learns B's mapping", || {
        mapped(hosts[0].runtime_dir(), 2) == Some(hub_ip(1))
    });
    etcd.compact();
    // Instance 2 moves from host B to host C, with its MAC and address.
    drop((cb, qb));
    Client::connect(hosts[1].runtime_dir())
        .unwrap()
        .destroy_instance("blue-2")
        .unwrap();
    let (_cc, mut qc) = join(hosts[2].runtime_dir(), 2);
    let took = until(Duration::from_secs(1), "A follows the moved MAC", || {
        mapped(hosts[0].runtime_dir(), 2) == Some(hub_ip(2))
    });
    eprintln!("A followed the moved MAC in {took:?}");
    let frame = udp(1, 2, b"to the moved instance");
    deliver(&mut qa, &mut qc, &frame, &frame);

    // `overlay map set` writes etcd (without a lease) and every host follows; `rm` removes.
    let mut admin = Client::connect(hosts[0].runtime_dir()).unwrap();
    let far = MappingEntry {
        mac: mac(9),
        ip: Ipv4Addr::new(192, 0, 2, 99),
        port: Some(4789),
        arp: Some(Ipv4Addr::new(10, 0, 0, 9)),
        ndp: None,
        dhcp_proxy: None,
    };
    admin
        .change_overlay_mapping("blue", MappingChange::Set(far))
        .unwrap();
    until(WAIT, "C learns the entry set on A", || {
        mapped(hosts[2].runtime_dir(), 9) == Some(far.ip)
    });
    admin
        .change_overlay_mapping("blue", MappingChange::Remove(mac(9)))
        .unwrap();
    until(WAIT, "C forgets the removed entry", || {
        mapped(hosts[2].runtime_dir(), 9).is_none()
    });
    let again = admin
        .change_overlay_mapping("blue", MappingChange::Remove(mac(9)))
        .unwrap_err();
    assert!(
        again
            .to_string()
            .contains("no mapping for 02:b1:00:00:00:09"),
        "{again}"
    );

    // A host that stops revokes its lease: its mapping goes at once, not a TTL later.
    let c = hosts.pop().unwrap();
    drop((_cc, qc));
    let stopped = Instant::now();
    drop(c);
    until(TTL, "A forgets the stopped host's mapping", || {
        mapped(hosts[0].runtime_dir(), 2).is_none()
    });
    let gone = stopped.elapsed();
    eprintln!("the stopped host's mapping was gone {gone:?} after it stopped");
    assert!(gone < TTL / 2, "gone after {gone:?}: expired, not revoked");
}

#[test]
fn etcd_away_shows_the_overlay_degraded_keeping_its_mappings_and_it_recovers_by_itself() {
    let mut etcd = Etcd::start();
    let dir = TempDir::new("netmux-etcd-hub");
    let (_hub, hosts) = hosts(dir.path(), 2, 2);
    let (a, b) = (&hosts[0], &hosts[1]);
    create_overlay(a.runtime_dir(), &etcd.url());
    create_overlay(b.runtime_dir(), &etcd.url());
    let (_ca, mut qa) = join(a.runtime_dir(), 1);
    let (_cb, mut qb) = join(b.runtime_dir(), 2);
    until(WAIT, "A learns B's mapping", || {
        mapped(a.runtime_dir(), 2) == Some(hub_ip(1))
    });
    let frame = udp(1, 2, b"before");
    deliver(&mut qa, &mut qb, &frame, &frame);

    etcd.stop();
    until(WAIT, "A shows the overlay degraded", || {
        state(a.runtime_dir()).starts_with("degraded: etcd unreachable")
    });
    let s = state(a.runtime_dir());
    assert!(s.contains("cached mappings kept"), "{s}");
    // The cached mappings stay in use.
    assert_eq!(mapped(a.runtime_dir(), 2), Some(hub_ip(1)));
    let during = udp(1, 2, b"during");
    deliver(&mut qa, &mut qb, &during, &during);
    // A change cannot be made meanwhile: refused with the reason.
    let refused = Client::connect(a.runtime_dir())
        .unwrap()
        .change_overlay_mapping("blue", MappingChange::Remove(mac(2)))
        .unwrap_err();
    assert!(refused.to_string().contains("mapping backend"), "{refused}");

    etcd.start_again();
    until(WAIT, "A recovers", || state(a.runtime_dir()) == "ok");
    until(WAIT, "B recovers", || state(b.runtime_dir()) == "ok");
    // Both wrote their entries again under new leases, and changes flow again.
    std::thread::sleep(TTL * 2);
    assert_eq!(mapped(a.runtime_dir(), 2), Some(hub_ip(1)));
    assert_eq!(mapped(b.runtime_dir(), 1), Some(hub_ip(0)));
    let after = udp(1, 2, b"after");
    deliver(&mut qa, &mut qb, &after, &after);
}
