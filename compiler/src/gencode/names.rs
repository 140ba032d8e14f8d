//! The names and numbers libpcap looks up: dotted IPv4 addresses (`__pcap_atoin`), service
//! names and port ranges as `pcap_nametoport` and `pcap_nametoportrange` find them (through a
//! [`Resolver`]), Ethernet protocol names (`pcap_nametoeproto`, `pcap_nametollc`), and
//! [`NameCache`], which asks the resolver each question once per filter.

use std::cell::RefCell;
use std::net::IpAddr;

use super::{
    ETHERTYPE_AARP, ETHERTYPE_ARP, ETHERTYPE_ATALK, ETHERTYPE_IP, ETHERTYPE_IPV6, ETHERTYPE_REVARP,
    IPPROTO_TCP, IPPROTO_UDP, LLCSAP_8021D, LLCSAP_IPX, LLCSAP_ISONS, LLCSAP_NETBEUI,
};
use crate::resolver::{Resolver, ServiceTransport};

/// libpcap's `__pcap_atoin`: dotted decimal, 1 to 4 parts, each at most 255; returns the value
/// and its length in bits.
pub(crate) fn parse_ipv4(s: &str) -> Option<(u32, u32)> {
    let mut v = 0u32;
    let mut bits = 0;
    for part in s.split('.') {
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u32 = part.parse().ok()?;
        if n > 255 || bits >= 32 {
            return None;
        }
        v = (v << 8) | n;
        bits += 8;
    }
    Some((v, bits))
}

/// libpcap's `pcap_nametoeproto` and `pcap_nametollc` tables.
pub(super) fn ether_proto_by_name(name: &str) -> Option<u32> {
    Some(match name {
        "ip" => ETHERTYPE_IP,
        "ip6" => ETHERTYPE_IPV6,
        "arp" => ETHERTYPE_ARP,
        "rarp" => ETHERTYPE_REVARP,
        "atalk" => ETHERTYPE_ATALK,
        "aarp" => ETHERTYPE_AARP,
        "decnet" => 0x6003,
        "sca" => 0x6007,
        "lat" => 0x6004,
        "moprc" => 0x6002,
        "mopdl" => 0x6001,
        "loopback" => 0x9000,
        "iso" => LLCSAP_ISONS,
        "stp" => LLCSAP_8021D,
        "ipx" => LLCSAP_IPX,
        "netbeui" => LLCSAP_NETBEUI,
        _ => return None,
    })
}

/// A service name's port and the transport it is for, as `pcap_nametoport` gives them: the
/// TCP entry and the UDP entry; when both exist with the same port the name means either
/// (`None`), when only one does, that transport. A decimal string is a port number for both,
/// cut to 16 bits, as `getaddrinfo` takes a numeric service.
pub(super) fn nametoport(names: &dyn Resolver, name: &str) -> Option<(u32, Option<u32>)> {
    let (tcp, udp) = match numeric_service(name) {
        Some(p) => (Some(p), Some(p)),
        None => (
            names.service(name, ServiceTransport::Tcp),
            names.service(name, ServiceTransport::Udp),
        ),
    };
    match (tcp, udp) {
        (Some(t), Some(u)) if t == u => Some((u32::from(t), None)),
        (Some(t), _) => Some((u32::from(t), Some(IPPROTO_TCP))),
        (None, Some(u)) => Some((u32::from(u), Some(IPPROTO_UDP))),
        (None, None) => None,
    }
}

/// `getaddrinfo`'s numeric service: the whole string decimal (`strtoul`, saturating), the port
/// its low 16 bits.
fn numeric_service(name: &str) -> Option<u16> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v = name.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    });
    Some(v as u16)
}

/// `pcap_nametoportrange`: `N-M` as `sscanf("%d-%d")` reads it (both numbers, whatever
/// follows; the transport undefined), else two service names (or numbers) around the first
/// `-`, the transport theirs when they agree. Ports as C `int`s, so they may be negative.
pub(super) fn nametoportrange(names: &dyn Resolver, name: &str) -> Option<(i64, i64, Option<u32>)> {
    if let Some((a, rest)) = scan_int(name) {
        if let Some((b, _)) = rest.strip_prefix('-').and_then(scan_int) {
            return Some((a, b, None));
        }
    }
    let (first, second) = name.split_once('-')?;
    let (p1, proto1) = nametoport(names, first)?;
    let (p2, proto2) = nametoport(names, second)?;
    let proto = if proto1 == proto2 { proto2 } else { None };
    Some((i64::from(p1), i64::from(p2), proto))
}

/// `scanf`'s `%d`: an optional sign and at least one digit; the value as glibc stores it in an
/// `int` (read as a `long`, saturating, then cut to 32 bits). Returns it and the rest.
fn scan_int(s: &str) -> Option<(i64, &str)> {
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let n = digits.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return None;
    }
    let mut v: i64 = 0;
    for b in digits[..n].bytes() {
        let d = i64::from(b - b'0');
        v = if neg {
            v.saturating_mul(10).saturating_sub(d)
        } else {
            v.saturating_mul(10).saturating_add(d)
        };
    }
    Some((i64::from(v as i32), &digits[n..]))
}

/// A [`Resolver`] that asks the one it wraps each question once and remembers the answer, so
/// one filter sees one answer per name however often it is generated (the libpcap model
/// generates some filters twice) and the resolver is not asked again.
pub struct NameCache<'r> {
    inner: &'r dyn Resolver,
    hosts: RefCell<Vec<(String, Vec<IpAddr>)>>,
    /// (question, name, answer): 0 network, 1 tcp service, 2 udp service, 3 protocol.
    numbers: RefCell<Vec<(u8, String, Option<u32>)>>,
    ethers: RefCell<Vec<(String, Option<[u8; 6]>)>>,
}

impl<'r> NameCache<'r> {
    /// A cache in front of `inner`.
    pub fn new(inner: &'r dyn Resolver) -> NameCache<'r> {
        NameCache {
            inner,
            hosts: RefCell::new(Vec::new()),
            numbers: RefCell::new(Vec::new()),
            ethers: RefCell::new(Vec::new()),
        }
    }

    fn number(&self, kind: u8, name: &str, ask: impl FnOnce() -> Option<u32>) -> Option<u32> {
        if let Some((_, _, v)) = self
            .numbers
            .borrow()
            .iter()
            .find(|(k, n, _)| *k == kind && n == name)
        {
            return *v;
        }
        let v = ask();
        self.numbers.borrow_mut().push((kind, name.to_owned(), v));
        v
    }
}

impl Resolver for NameCache<'_> {
    fn host(&self, name: &str) -> Vec<IpAddr> {
        if let Some((_, a)) = self.hosts.borrow().iter().find(|(n, _)| n == name) {
            return a.clone();
        }
        let a = self.inner.host(name);
        self.hosts.borrow_mut().push((name.to_owned(), a.clone()));
        a
    }

    fn network(&self, name: &str) -> Option<u32> {
        self.number(0, name, || self.inner.network(name))
    }

    fn service(&self, name: &str, transport: ServiceTransport) -> Option<u16> {
        let kind = match transport {
            ServiceTransport::Tcp => 1,
            ServiceTransport::Udp => 2,
        };
        self.number(kind, name, || {
            self.inner.service(name, transport).map(u32::from)
        })
        .and_then(|p| u16::try_from(p).ok())
    }

    fn protocol(&self, name: &str) -> Option<u32> {
        self.number(3, name, || self.inner.protocol(name))
    }

    fn ether(&self, name: &str) -> Option<[u8; 6]> {
        if let Some((_, m)) = self.ethers.borrow().iter().find(|(n, _)| n == name) {
            return *m;
        }
        let m = self.inner.ether(name);
        self.ethers.borrow_mut().push((name.to_owned(), m));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolver::StaticResolver;

    #[test]
    fn port_ranges_are_read_as_sscanf_reads_them() {
        let db = StaticResolver::new()
            .with_services("http 80/tcp\nhttps 443/tcp\nhttps 443/udp\ndomain 53/udp\n");
        assert_eq!(nametoportrange(&db, "80-90"), Some((80, 90, None)));
        assert_eq!(nametoportrange(&db, "80-90abc"), Some((80, 90, None)));
        assert_eq!(nametoportrange(&db, "80--5"), Some((80, -5, None)));
        assert_eq!(
            nametoportrange(&db, "4294967376-1"),
            Some((80, 1, None)),
            "an int keeps the low 32 bits"
        );
        assert_eq!(
            nametoportrange(&db, "http-https"),
            Some((80, 443, None)),
            "tcp and either differ: either"
        );
        assert_eq!(
            nametoportrange(&db, "http-http"),
            Some((80, 80, Some(IPPROTO_TCP)))
        );
        assert_eq!(
            nametoportrange(&db, "70000-http"),
            Some((4464, 80, None)),
            "a numeric service keeps its low 16 bits"
        );
        assert_eq!(nametoportrange(&db, "http"), None);
        assert_eq!(nametoportrange(&db, "http-nope"), None);
        assert_eq!(nametoport(&db, "domain"), Some((53, Some(IPPROTO_UDP))));
        assert_eq!(nametoport(&db, "https"), Some((443, None)));
    }
}
