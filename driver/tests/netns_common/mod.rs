//! Network namespaces for the root-only tests: each test makes its own, runs its child test
//! inside it, and the namespace (with every interface in it) is deleted on drop, whatever
//! happened. Tests address only hosts inside their namespace.
#![allow(dead_code)] // each test binary uses the part it needs

use std::process::{Command, Stdio};

/// A network namespace deleted on drop, whatever happened.
pub struct NetNs {
    name: String,
    child_env: &'static str,
}

impl NetNs {
    /// Creates `nmx-<pid>-<tag>`; child tests run in it see `child_env` set.
    pub fn new(tag: &str, child_env: &'static str) -> NetNs {
        let name = format!("nmx-{}-{tag}", std::process::id());
        // A namespace left by an earlier run with the same pid would be in the way.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        NetNs { name, child_env }
    }

    /// Runs the ignored child test `child` of this test binary inside the namespace.
    pub fn run_child(&self, child: &str) {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(std::env::current_exe().expect("the test binary"))
            .args([
                "--exact",
                child,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(self.child_env, "1")
            .status()
            .expect("running ip netns exec");
        assert!(status.success(), "child {child} failed: {status}");
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a command and insists it succeeds.
pub fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().expect(program);
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// Whether this process is a child test running inside a namespace.
pub fn in_child(child_env: &str) -> bool {
    std::env::var_os(child_env).is_some()
}

/// An interface's MAC address.
pub fn mac_of(ifname: &str) -> [u8; 6] {
    let text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address")).unwrap();
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.trim().split(':')) {
        *byte = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

/// A MAC address as `ip` writes it.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// A veth pair in this namespace, `link_end` up; the kernel's end `kernel_end` is left for
/// [`kernel_side`].
pub fn veth(link_end: &str, kernel_end: &str) {
    run(
        "ip",
        &[
            "link", "add", link_end, "type", "veth", "peer", "name", kernel_end,
        ],
    );
    run("ip", &["link", "set", link_end, "up"]);
}

/// The kernel's end `ifname` of a link in this namespace: up, with `cidr`, and a neighbour
/// entry that resolves `peer_ip` to `peer_mac` (no ARP needed to reach the link's side).
pub fn kernel_side(ifname: &str, cidr: &str, peer_ip: &str, peer_mac: [u8; 6]) {
    run("ip", &["link", "set", ifname, "up"]);
    run("ip", &["addr", "add", cidr, "dev", ifname]);
    let mac = mac_text(peer_mac);
    run(
        "ip",
        &["neigh", "add", peer_ip, "lladdr", &mac, "dev", ifname],
    );
}
