//! The names and numbers libpcap looks up: dotted IPv4 addresses (`__pcap_atoin`), port
//! ranges, IP protocol names (`/etc/protocols`) and Ethernet protocol names
//! (`pcap_nametoeproto`, `pcap_nametollc`). netmux resolves no host or service names.

use super::{
    ETHERTYPE_AARP, ETHERTYPE_ARP, ETHERTYPE_ATALK, ETHERTYPE_IP, ETHERTYPE_IPV6, ETHERTYPE_REVARP,
    LLCSAP_8021D, LLCSAP_IPX, LLCSAP_ISONS, LLCSAP_NETBEUI,
};

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

pub(super) fn parse_port_range(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('-')?;
    let parse = |t: &str| -> Option<u32> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    Some((parse(a)?, parse(b)?))
}

/// IP protocol names (the common entries of `/etc/protocols`, which libpcap consults).
pub(super) fn ip_proto_by_name(name: &str) -> Option<u32> {
    Some(match name {
        "ip" | "hopopt" => 0,
        "icmp" => 1,
        "igmp" => 2,
        "ggp" => 3,
        "ipencap" => 4,
        "st" => 5,
        "tcp" => 6,
        "egp" => 8,
        "igp" => 9,
        "pup" => 12,
        "udp" => 17,
        "hmp" => 20,
        "xns-idp" => 22,
        "rdp" => 27,
        "iso-tp4" => 29,
        "dccp" => 33,
        "xtp" => 36,
        "ddp" => 37,
        "idpr-cmtp" => 38,
        "ipv6" => 41,
        "ipv6-route" => 43,
        "ipv6-frag" => 44,
        "idrp" => 45,
        "rsvp" => 46,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "skip" => 57,
        "ipv6-icmp" => 58,
        "ipv6-nonxt" => 59,
        "ipv6-opts" => 60,
        "rspf" => 73,
        "vmtp" => 81,
        "eigrp" => 88,
        "ospf" => 89,
        "ax.25" => 93,
        "ipip" => 94,
        "etherip" => 97,
        "encap" => 98,
        "pim" => 103,
        "ipcomp" => 108,
        "vrrp" => 112,
        "l2tp" => 115,
        "isis" => 124,
        "sctp" => 132,
        "fc" => 133,
        "mobility-header" => 135,
        "udplite" => 136,
        "mpls-in-ip" => 137,
        "manet" => 138,
        "hip" => 139,
        "shim6" => 140,
        "wesp" => 141,
        "rohc" => 142,
        "ethernet" => 143,
        _ => return None,
    })
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
        "pup" => 0x0200,
        "sprite" => 0x0500,
        "iso" => LLCSAP_ISONS,
        "stp" => LLCSAP_8021D,
        "ipx" => LLCSAP_IPX,
        "netbeui" => LLCSAP_NETBEUI,
        _ => return None,
    })
}
