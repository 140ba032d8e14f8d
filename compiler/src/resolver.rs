//! Names in filters (`host localhost`, `port http`, `net loopback`, `ether host gw`,
//! `ip proto gre`), resolved at compile time as libpcap resolves them, through the system's
//! own databases:
//!
//! | query | libpcap calls | [`SystemResolver`] reads |
//! |---|---|---|
//! | host | `getaddrinfo(name, NULL, {AF_UNSPEC, SOCK_STREAM})`, every address | the system resolver (`/etc/hosts`, DNS, as `nsswitch.conf` says), through `getaddrinfo` |
//! | network | `getnetbyname_r` | `/etc/networks` (names case-insensitive, numbers as `inet_network`) |
//! | service | `getaddrinfo(NULL, name, {SOCK_STREAM})` and `{SOCK_DGRAM}` | `/etc/services` (`name port/tcp`, `name port/udp`, aliases) |
//! | protocol | `getprotobyname_r` | `/etc/protocols` |
//! | ether host | `ether_hostton` | `/etc/ethers` (names case-insensitive) |
//!
//! A filter is resolved once, when it is compiled: the program holds numbers only, and
//! [`crate::Compiled::names`] says what each name became. The resolver is a trait so that
//! tests run against a fixed database ([`StaticResolver`]) and netd, which compiles filters
//! for its clients, can refuse every name ([`NoResolver`]) instead of blocking on the network.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::OnceLock;

/// The transport a service name is looked up for (`name port/tcp` or `name port/udp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceTransport {
    /// `/tcp`: what `getaddrinfo` with `SOCK_STREAM` finds.
    Tcp,
    /// `/udp`: what `getaddrinfo` with `SOCK_DGRAM` finds.
    Udp,
}

impl ServiceTransport {
    fn name(self) -> &'static str {
        match self {
            ServiceTransport::Tcp => "tcp",
            ServiceTransport::Udp => "udp",
        }
    }
}

/// Where names come from. Every method answers "not found" with an empty answer; the code
/// generator turns that into libpcap's error (`unknown host 'x'`).
pub trait Resolver {
    /// Every address of a host name, in the resolver's order (libpcap tests them all).
    fn host(&self, name: &str) -> Vec<IpAddr>;
    /// A network's number (`getnetbyname`'s `n_net`: `loopback 127` is 0x7f).
    fn network(&self, name: &str) -> Option<u32>;
    /// A service's port for a transport. Only names reach this: a decimal string is a port
    /// number already ([`crate::gencode`] handles it as `getaddrinfo` does).
    fn service(&self, name: &str, transport: ServiceTransport) -> Option<u16>;
    /// An IP protocol's number.
    fn protocol(&self, name: &str) -> Option<u32>;
    /// A host's MAC address.
    fn ether(&self, name: &str) -> Option<[u8; 6]>;
}

/// Resolves nothing: every name is unknown. For filters that must hold numbers only (netd
/// compiles its clients' filters without touching the network).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoResolver;

impl Resolver for NoResolver {
    fn host(&self, _: &str) -> Vec<IpAddr> {
        Vec::new()
    }
    fn network(&self, _: &str) -> Option<u32> {
        None
    }
    fn service(&self, _: &str, _: ServiceTransport) -> Option<u16> {
        None
    }
    fn protocol(&self, _: &str) -> Option<u32> {
        None
    }
    fn ether(&self, _: &str) -> Option<[u8; 6]> {
        None
    }
}

/// Name databases held in memory, in the formats of the system's files. Tests build one
/// from text; [`SystemResolver`] reads the files into one. Lookups follow glibc's `files`
/// backend: the first matching line wins (for hosts: every matching line, in file order).
#[derive(Clone, Debug, Default)]
pub struct StaticResolver {
    hosts: Vec<(IpAddr, Vec<String>)>,
    networks: Vec<(u32, Vec<String>)>,
    services: Vec<(u16, String, Vec<String>)>,
    protocols: Vec<(u32, Vec<String>)>,
    ethers: Vec<([u8; 6], String)>,
}

/// The fields of a database line: everything before `#`, split on blanks.
fn fields(line: &str) -> Vec<&str> {
    line.split('#')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

impl StaticResolver {
    /// An empty database: every name unknown.
    pub fn new() -> StaticResolver {
        StaticResolver::default()
    }

    /// Adds the lines of an `/etc/hosts` text (`ADDRESS NAME ALIAS...`).
    pub fn with_hosts(mut self, text: &str) -> Self {
        for line in text.lines() {
            if let [addr, names @ ..] = fields(line).as_slice() {
                if let (Ok(a), false) = (addr.parse::<IpAddr>(), names.is_empty()) {
                    self.hosts
                        .push((a, names.iter().map(|s| s.to_string()).collect()));
                }
            }
        }
        self
    }

    /// Adds the lines of an `/etc/networks` text (`NAME NUMBER ALIAS...`).
    pub fn with_networks(mut self, text: &str) -> Self {
        for line in text.lines() {
            if let [name, number, aliases @ ..] = fields(line).as_slice() {
                let mut names = vec![name.to_string()];
                names.extend(aliases.iter().map(|s| s.to_string()));
                self.networks.push((inet_network(number), names));
            }
        }
        self
    }

    /// Adds the lines of an `/etc/services` text (`NAME PORT/PROTO ALIAS...`).
    pub fn with_services(mut self, text: &str) -> Self {
        for line in text.lines() {
            if let [name, port_proto, aliases @ ..] = fields(line).as_slice() {
                let Some((port, proto)) = port_proto.split_once('/') else {
                    continue;
                };
                let Ok(port) = port.parse::<u16>() else {
                    continue;
                };
                let mut names = vec![name.to_string()];
                names.extend(aliases.iter().map(|s| s.to_string()));
                self.services.push((port, proto.to_string(), names));
            }
        }
        self
    }

    /// Adds the lines of an `/etc/protocols` text (`NAME NUMBER ALIAS...`).
    pub fn with_protocols(mut self, text: &str) -> Self {
        for line in text.lines() {
            if let [name, number, aliases @ ..] = fields(line).as_slice() {
                let Ok(number) = number.parse::<u32>() else {
                    continue;
                };
                let mut names = vec![name.to_string()];
                names.extend(aliases.iter().map(|s| s.to_string()));
                self.protocols.push((number, names));
            }
        }
        self
    }

    /// Adds the lines of an `/etc/ethers` text (`MAC NAME`, the MAC as `8:0:20:1:2:3`).
    pub fn with_ethers(mut self, text: &str) -> Self {
        for line in text.lines() {
            if let [mac, name, ..] = fields(line).as_slice() {
                if let Some(mac) = parse_ether(mac) {
                    self.ethers.push((mac, name.to_string()));
                }
            }
        }
        self
    }
}

impl Resolver for StaticResolver {
    fn host(&self, name: &str) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for (addr, names) in &self.hosts {
            if names.iter().any(|n| n.eq_ignore_ascii_case(name)) && !out.contains(addr) {
                out.push(*addr);
            }
        }
        out
    }

    fn network(&self, name: &str) -> Option<u32> {
        self.networks
            .iter()
            .find(|(_, names)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
            .map(|(n, _)| *n)
    }

    fn service(&self, name: &str, transport: ServiceTransport) -> Option<u16> {
        self.services
            .iter()
            .find(|(_, proto, names)| proto == transport.name() && names.iter().any(|n| n == name))
            .map(|(port, _, _)| *port)
    }

    fn protocol(&self, name: &str) -> Option<u32> {
        self.protocols
            .iter()
            .find(|(_, names)| names.iter().any(|n| n == name))
            .map(|(n, _)| *n)
    }

    fn ether(&self, name: &str) -> Option<[u8; 6]> {
        self.ethers
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(mac, _)| *mac)
    }
}

/// The system's databases, as libpcap reads them on Linux with glibc: hosts through
/// `getaddrinfo` (so `/etc/hosts`, DNS or whatever `nsswitch.conf` configures), and the
/// `files` backend for the others: `/etc/networks`, `/etc/services`, `/etc/protocols`,
/// `/etc/ethers`. The files are read on the first lookup that needs them (a filter without
/// names reads nothing); a missing file is an empty database.
#[derive(Debug, Default)]
pub struct SystemResolver {
    files: OnceLock<StaticResolver>,
    hosts: std::sync::Mutex<HashMap<String, Vec<IpAddr>>>,
}

impl SystemResolver {
    /// A resolver that has read nothing yet.
    pub fn new() -> SystemResolver {
        SystemResolver::default()
    }

    fn files(&self) -> &StaticResolver {
        self.files.get_or_init(|| {
            let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
            StaticResolver::new()
                .with_networks(&read("/etc/networks"))
                .with_services(&read("/etc/services"))
                .with_protocols(&read("/etc/protocols"))
                .with_ethers(&read("/etc/ethers"))
        })
    }
}

impl Resolver for SystemResolver {
    fn host(&self, name: &str) -> Vec<IpAddr> {
        let mut cache = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = cache.get(name) {
            return a.clone();
        }
        // `getaddrinfo(name, "0", {SOCK_STREAM})`: the addresses in the resolver's order, one
        // per address (libpcap's hints also ask for SOCK_STREAM, so the same list).
        let mut out: Vec<IpAddr> = Vec::new();
        if let Ok(addrs) = (name, 0u16).to_socket_addrs() {
            for a in addrs {
                if !out.contains(&a.ip()) {
                    out.push(a.ip());
                }
            }
        }
        cache.insert(name.to_owned(), out.clone());
        out
    }

    fn network(&self, name: &str) -> Option<u32> {
        self.files().network(name)
    }

    fn service(&self, name: &str, transport: ServiceTransport) -> Option<u16> {
        self.files().service(name, transport)
    }

    fn protocol(&self, name: &str) -> Option<u32> {
        self.files().protocol(name)
    }

    fn ether(&self, name: &str) -> Option<[u8; 6]> {
        self.files().ether(name)
    }
}

/// glibc's `inet_network`: one to four parts separated by dots, each decimal, octal (a
/// leading `0`) or hex (`0x`) and at most 255, packed right-aligned (`127` is 0x7f,
/// `127.0.0.0` is 0x7f000000); `INADDR_NONE` (all ones) when malformed.
pub fn inet_network(s: &str) -> u32 {
    const NONE: u32 = 0xffff_ffff;
    let mut parts: Vec<u32> = Vec::new();
    for part in s.split('.') {
        if parts.len() == 4 {
            return NONE;
        }
        let (digits, base) = if let Some(h) = part.strip_prefix("0x").or(part.strip_prefix("0X")) {
            (h, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else if part == "0" {
            ("0", 10)
        } else {
            (part, 10)
        };
        if digits.is_empty() && base != 8 {
            return NONE;
        }
        let Ok(v) = u32::from_str_radix(if digits.is_empty() { "0" } else { digits }, base) else {
            return NONE;
        };
        if v > 0xff {
            return NONE;
        }
        parts.push(v);
    }
    parts.iter().fold(0u32, |acc, p| (acc << 8) | p)
}

/// An `/etc/ethers` MAC: six hex bytes of one or two digits separated by `:`.
fn parse_ether(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// One name the compiler looked up and what it became, for people (`netmux filter compile`
/// prints them above the program).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedName {
    /// The name as written.
    pub name: String,
    /// What it names: `host`, `network`, `port`, `portrange`, `protocol`, `ether host`.
    pub kind: &'static str,
    /// What it became, as the program uses it (`127.0.0.1`, `80/tcp`, `47`).
    pub value: String,
}

impl std::fmt::Display for ResolvedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} = {}", self.kind, self.name, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_network_packs_parts_right_aligned_like_glibc() {
        assert_eq!(inet_network("127"), 0x7f);
        assert_eq!(inet_network("127.0.0.0"), 0x7f00_0000);
        assert_eq!(inet_network("169.254"), 0xa9fe);
        assert_eq!(inet_network("0x0a.010"), 0x0a08);
        assert_eq!(inet_network("0"), 0);
        assert_eq!(inet_network("256"), 0xffff_ffff);
        assert_eq!(inet_network("1.2.3.4.5"), 0xffff_ffff);
        assert_eq!(inet_network("1..2"), 0xffff_ffff);
    }

    #[test]
    fn the_static_database_reads_the_system_file_formats() {
        let db = StaticResolver::new()
            .with_hosts("127.0.0.1 localhost lo # comment\n::1 localhost ip6-localhost\n")
            .with_networks("loopback 127 lo-net\nlink-local 169.254.0.0\n")
            .with_services("http 80/tcp www\ndomain 53/tcp\ndomain 53/udp\n# x 1/tcp\n")
            .with_protocols("gre 47 GRE\n")
            .with_ethers("8:0:20:1:2:3 gw\nzz:0:0:0:0:0 bad\n");
        assert_eq!(
            db.host("LOCALHOST"),
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(db.network("Lo-Net"), Some(0x7f));
        assert_eq!(db.network("link-local"), Some(0xa9fe_0000));
        assert_eq!(db.service("www", ServiceTransport::Tcp), Some(80));
        assert_eq!(db.service("http", ServiceTransport::Udp), None);
        assert_eq!(db.service("x", ServiceTransport::Tcp), None);
        assert_eq!(db.protocol("GRE"), Some(47));
        assert_eq!(db.protocol("Gre"), None);
        assert_eq!(db.ether("GW"), Some([8, 0, 0x20, 1, 2, 3]));
        assert_eq!(db.ether("bad"), None);
    }
}
