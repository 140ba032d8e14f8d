//! Random classifier rules in the pcap-filter language and Ethernet frames aimed at them: the
//! one generator of the classifier fuzz target and the classifier equivalence tests.
//!
//! Rules are port bindings spelled every way the compiler's recogniser must see through
//! (returned with the bindings the generator computed on its own), expressions that are not
//! bindings (some nearly are), `and`/`or`/`not` combinations, and now and then raw text.
//! Frames are crafted around the addresses and ports the rules drew: IPv4 with options,
//! malformed header lengths and fragments, IPv6 with extension and fragment headers, VLAN,
//! ARP and RARP, truncated captures, and raw bytes.
//!
//! Everything is drawn from an [`Unstructured`]: the fuzzer steers it, and tests feed it
//! seeded random bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

use arbitrary::{Result, Unstructured};
use netmux_proto::driver::PortBinding;
use netmux_vm::gen::GeneratedFrame;

/// The link's MAC address: the destination of most frames, and the MAC of netd's port
/// filters.
pub const LINK_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
/// The peer's MAC address: the source of every crafted frame.
pub const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// Addresses and ports rules and frames start from: few, so that rules collide and frames
/// hit them. `0.0.0.80` reads like a small number; `fe80::1` is link-local.
const V4: [[u8; 4]; 4] = [
    [10, 0, 0, 1],
    [10, 0, 0, 2],
    [192, 168, 1, 7],
    [0, 0, 0, 80],
];
const V6: [[u8; 16]; 3] = [
    [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
];
const PORTS: [u16; 7] = [53, 80, 443, 8080, 0, 65535, 2049];
/// Values a pool holds at most: the starting ones, then fresh ones rules drew, so that frames
/// aim at those too.
const MAX_POOL: usize = 24;
/// Depth of `and`/`or`/`not` combinations.
const MAX_DEPTH: u32 = 2;
/// Longest raw rule text.
const MAX_RAW_TEXT: usize = 80;
/// Longest raw frame.
const MAX_RAW_FRAME: usize = 128;
/// Longest payload after a crafted transport header.
const MAX_PAYLOAD: usize = 20;

/// The addresses and ports drawn so far: the starting sets, and fresh values rules drew (up to
/// [`MAX_POOL`] of each).
#[derive(Clone, Debug)]
pub struct Pools {
    v4: Vec<[u8; 4]>,
    v6: Vec<[u8; 16]>,
    ports: Vec<u16>,
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            v4: V4.to_vec(),
            v6: V6.to_vec(),
            ports: PORTS.to_vec(),
        }
    }
}

/// A value from `pool` seven times in eight, else a fresh one (`remember`: kept in the pool
/// for frames to aim at).
fn draw<T: Copy>(
    u: &mut Unstructured,
    pool: &mut Vec<T>,
    fresh: impl FnOnce(&mut Unstructured) -> Result<T>,
    remember: bool,
) -> Result<T> {
    if u.ratio(7u8, 8)? {
        return Ok(*u.choose(pool)?);
    }
    let v = fresh(u)?;
    if remember && pool.len() < MAX_POOL {
        pool.push(v);
    }
    Ok(v)
}

/// A fresh IPv6 address whose first group is not zero: that keeps its text out of the
/// unspecified and IPv4-mapped spellings (`::`, `::ffff:1.2.3.4`), which are the parser's
/// business, not the classifier's.
fn fresh_v6(u: &mut Unstructured) -> Result<[u8; 16]> {
    let mut a: [u8; 16] = u.arbitrary()?;
    a[0] |= 0x20;
    Ok(a)
}

impl Pools {
    /// A port for a rule.
    pub fn port(&mut self, u: &mut Unstructured) -> Result<u16> {
        draw(u, &mut self.ports, |u| u.arbitrary(), true)
    }

    /// An IPv4 address for a rule.
    pub fn v4(&mut self, u: &mut Unstructured) -> Result<[u8; 4]> {
        draw(u, &mut self.v4, |u| u.arbitrary(), true)
    }

    /// An IPv6 address for a rule.
    pub fn v6(&mut self, u: &mut Unstructured) -> Result<[u8; 16]> {
        draw(u, &mut self.v6, fresh_v6, true)
    }

    fn aim_port(&mut self, u: &mut Unstructured) -> Result<u16> {
        draw(u, &mut self.ports, |u| u.arbitrary(), false)
    }

    fn aim_v4(&mut self, u: &mut Unstructured) -> Result<[u8; 4]> {
        draw(u, &mut self.v4, |u| u.arbitrary(), false)
    }

    fn aim_v6(&mut self, u: &mut Unstructured) -> Result<[u8; 16]> {
        draw(u, &mut self.v6, |u| u.arbitrary(), false)
    }
}

/// A rule's text and, when the generator spelled a port binding, the bindings it must be.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The pcap-filter expression.
    pub text: String,
    /// The driver bindings of a spelled binding, in [`sort_bindings`] order; `None` for a
    /// rule the generator did not mean as a binding (it may still be one).
    pub bindings: Option<Vec<PortBinding>>,
}

/// Puts bindings in one order (protocol, family, address, port), to compare sets.
pub fn sort_bindings(bindings: &mut [PortBinding]) {
    bindings.sort_by_key(|b| (b.protocol, b.ipv6, b.address, b.port));
}

/// A port binding spelled one of the ways the recogniser must see through, with the bindings
/// the generator computes for it on its own.
pub fn binding(u: &mut Unstructured, pools: &mut Pools) -> Result<Rule> {
    let family = u.int_in_range(0..=2u8)?; // any, ip, ip6
    let proto = u.int_in_range(0..=3usize)?; // any, tcp, udp, sctp
    let p = pools.port(u)?;
    let proto_name = ["", "tcp", "udp", "sctp"][proto];
    let proto_num: u8 = [0, 6, 17, 132][proto];
    let mut atoms = Vec::new();

    // The port atom, with or without the protocol as its qualifier.
    let proto_on_port = proto != 0 && u.arbitrary()?;
    let q = if proto_on_port {
        format!("{proto_name} ")
    } else {
        String::new()
    };
    atoms.push(match u.int_in_range(0..=3u8)? {
        0 => format!("{q}dst port {p}"),
        1 => format!("{q}dst port {p:#x}"),
        2 => format!("{q}dst portrange {p}-{p}"),
        // The second number inherits `[proto] dst port`.
        _ => format!("{q}dst port {p} and {p}"),
    });
    if proto != 0 && (!proto_on_port || u.ratio(1u8, 5)?) {
        atoms.push(match (u.int_in_range(0..=2u8)?, family) {
            (0, 1) => format!("ip proto {proto_num}"),
            (0, 2) => format!("ip6 proto {proto_num}"),
            (1, _) => format!("proto {proto_num}"),
            _ => proto_name.to_owned(),
        });
    }
    let fam_kw = ["", "ip", "ip6"][usize::from(family)];
    let mut family_said = false;
    // (address bytes, IPv6) of an exact-address binding.
    let mut addr: Option<([u8; 16], bool)> = None;
    if u.ratio(3u8, 5)? {
        let is_v6 = match family {
            1 => false,
            2 => true,
            _ => u.ratio(2u8, 5)?,
        };
        let qual = if family != 0 && u.arbitrary()? {
            family_said = true;
            format!("{fam_kw} ")
        } else {
            String::new()
        };
        atoms.push(if is_v6 {
            let raw = pools.v6(u)?;
            addr = Some((raw, true));
            let a = Ipv6Addr::from(raw);
            match u.int_in_range(0..=2u8)? {
                0 => format!("{qual}dst host {a}"),
                1 => format!("{qual}dst {a}"),
                _ => format!("{qual}dst net {a}/128"),
            }
        } else {
            let raw = pools.v4(u)?;
            let mut address = [0; 16];
            address[..4].copy_from_slice(&raw);
            addr = Some((address, false));
            let a = Ipv4Addr::from(raw);
            match u.int_in_range(0..=4u8)? {
                0 => format!("{qual}dst host {a}"),
                1 => format!("{qual}dst {a}"),
                2 => format!("{qual}dst net {a}/32"),
                3 => format!("{qual}dst net {a} mask 255.255.255.255"),
                _ => format!("{qual}dst host {}", u32::from_be_bytes(raw)),
            }
        });
    }
    if family != 0 && !family_said && (u.ratio(7u8, 10)? || addr.is_none()) {
        atoms.push(fam_kw.to_owned());
    }
    // Any order, the first two sometimes in parentheses.
    let rotate = usize::from(u.arbitrary::<u8>()?) % atoms.len();
    atoms.rotate_left(rotate);
    if atoms.len() >= 2 && u.arbitrary()? {
        atoms.swap(0, 1);
    }
    if atoms.len() >= 2 && u.ratio(1u8, 3)? {
        let head = atoms.remove(0);
        let second = atoms.remove(0);
        atoms.insert(0, format!("({head} and {second})"));
    }

    let protocols: &[u8] = match proto {
        0 => &[6, 17, 132],
        _ => std::slice::from_ref(&[6, 17, 132][proto - 1]),
    };
    let families: &[bool] = match family {
        0 => &[false, true],
        1 => &[false],
        _ => &[true],
    };
    let mut bindings = Vec::new();
    for &protocol in protocols {
        match addr {
            Some((address, ipv6)) => bindings.push(PortBinding {
                protocol,
                address,
                ipv6,
                port: p,
            }),
            None => bindings.extend(families.iter().map(|&ipv6| PortBinding {
                protocol,
                address: [0; 16],
                ipv6,
                port: p,
            })),
        }
    }
    sort_bindings(&mut bindings);
    Ok(Rule {
        text: atoms.join(" and "),
        bindings: Some(bindings),
    })
}

/// A primitive that is not (alone) a binding, or one that nearly is.
fn other_atom(u: &mut Unstructured, pools: &mut Pools) -> Result<String> {
    let p = pools.port(u)?;
    let a4 = Ipv4Addr::from(pools.v4(u)?);
    let a6 = Ipv6Addr::from(pools.v6(u)?);
    Ok(match u.int_in_range(0..=22u8)? {
        0 => format!("tcp port {p}"),
        1 => format!("udp src port {p}"),
        2 => format!("host {a4}"),
        3 => format!("dst host {a4}"),
        4 => format!("src host {a6}"),
        5 => "net 10.0.0.0/8".to_owned(),
        6 => "icmp".to_owned(),
        7 => "arp".to_owned(),
        8 => "vlan".to_owned(),
        9 => "ip[8] > 32".to_owned(),
        10 => "len > 90".to_owned(),
        11 => "tcp[13] & 2 != 0".to_owned(),
        12 => "ether broadcast".to_owned(),
        13 => format!("dst portrange {}-{}", p.saturating_sub(5), p),
        14 => "ip6".to_owned(),
        15 => "tcp".to_owned(),
        16 => format!("dst host 10.0 and tcp dst port {p}"),
        17 => format!("ip6 protochain 6 and dst port {p}"),
        18 => "ip[0] & 0xf < 5".to_owned(),
        19 => format!("udp dst port {p} and src net 192.168.0.0/16"),
        20 => format!("dst host {a6} and sctp dst port {p} or udp"),
        21 => format!("ether dst {}", mac_text(LINK_MAC)),
        _ => binding(u, pools)?.text,
    })
}

fn mac_text(mac: [u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// An expression that is usually not a binding: atoms and bindings under `and`, `or` and
/// `not`.
pub fn other(u: &mut Unstructured, pools: &mut Pools, depth: u32) -> Result<String> {
    if depth == 0 || u.ratio(2u8, 5)? {
        return other_atom(u, pools);
    }
    Ok(match u.int_in_range(0..=3u8)? {
        0 => format!("not {}", other(u, pools, depth - 1)?),
        1 => format!(
            "({} or {})",
            other(u, pools, depth - 1)?,
            other(u, pools, depth - 1)?
        ),
        2 => format!(
            "{} and {}",
            other(u, pools, depth - 1)?,
            other(u, pools, depth - 1)?
        ),
        _ => format!(
            "{} or {}",
            binding(u, pools)?.text,
            other(u, pools, depth - 1)?
        ),
    })
}

/// A rule: a spelled binding two times in three, an expression that is usually not one, or
/// (one time in twenty) raw text.
pub fn rule(u: &mut Unstructured, pools: &mut Pools) -> Result<Rule> {
    Ok(match u.int_in_range(0..=19u8)? {
        0..=12 => binding(u, pools)?,
        13..=18 => Rule {
            text: other(u, pools, MAX_DEPTH)?,
            bindings: None,
        },
        _ => {
            let len = u.int_in_range(0..=MAX_RAW_TEXT)?;
            let bytes = u.bytes(len.min(u.len()))?;
            Rule {
                text: String::from_utf8_lossy(bytes).into_owned(),
                bindings: None,
            }
        }
    })
}

/// Appends a transport header (ports, then the rest of the header) and a payload.
fn transport(
    u: &mut Unstructured,
    f: &mut Vec<u8>,
    proto: u8,
    sport: u16,
    dport: u16,
) -> Result<()> {
    let at = f.len();
    match proto {
        6 => {
            f.resize(at + 20, 0);
            f[at + 12] = 0x50; // data offset: 5 words
            f[at + 13] = u.arbitrary()?; // flags
        }
        17 => f.resize(at + 8, 0),
        132 => f.resize(at + 12, 0),
        _ => {
            // An ICMP echo request, or anything.
            f.resize(at + 8, 0);
            f[at] = 8;
        }
    }
    if matches!(proto, 6 | 17 | 132) {
        f[at..at + 2].copy_from_slice(&sport.to_be_bytes());
        f[at + 2..at + 4].copy_from_slice(&dport.to_be_bytes());
    }
    let payload = u.int_in_range(0..=MAX_PAYLOAD)?;
    f.resize(f.len() + payload, 0);
    Ok(())
}

/// A frame aimed at the pools the rules draw from, often broken one way or another; its wire
/// length is its length before any truncation.
pub fn frame(u: &mut Unstructured, pools: &mut Pools) -> Result<GeneratedFrame> {
    let mut f = Vec::with_capacity(128);
    let dst_mac = match u.int_in_range(0..=7u8)? {
        0 => PEER_MAC,
        1 => [0xff; 6],
        _ => LINK_MAC,
    };
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&PEER_MAC);
    let proto = *u.choose(&[6u8, 17, 132, 1, 6, 17, 47])?;
    let sport = pools.aim_port(u)?;
    let dport = pools.aim_port(u)?;
    match u.int_in_range(0..=9u8)? {
        0..=5 => {
            if u.ratio(1u8, 8)? {
                // VLAN-tagged: neither the keys nor a binding look through the tag.
                f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
            }
            f.extend_from_slice(&[0x08, 0x00]);
            let ihl: u8 = match u.int_in_range(0..=9u8)? {
                0 => u.int_in_range(0..=4)?,  // malformed
                1 => u.int_in_range(6..=15)?, // options
                _ => 5,
            };
            let frag: u16 = if u.ratio(1u8, 6)? {
                *u.choose(&[
                    0x2000u16, 0x0001, 0x4000, 0x1fff, 0x2010, 0x1000, 0x8000, 0xe000,
                ])?
            } else {
                0
            };
            let ip = f.len();
            let header = 4 * usize::from(ihl).max(5);
            f.resize(ip + header, 0);
            f[ip] = 0x40 | ihl;
            f[ip + 6..ip + 8].copy_from_slice(&frag.to_be_bytes());
            f[ip + 8] = 64;
            f[ip + 9] = proto;
            f[ip + 12..ip + 16].copy_from_slice(&pools.aim_v4(u)?);
            f[ip + 16..ip + 20].copy_from_slice(&pools.aim_v4(u)?);
            transport(u, &mut f, proto, sport, dport)?;
            if ihl < 5 {
                // Plant the port where libpcap reads it with this header length.
                let at = ip + 4 * usize::from(ihl) + 2;
                if at != ip + 8 && u.arbitrary()? {
                    f[at..at + 2].copy_from_slice(&dport.to_be_bytes());
                }
            }
            let total = u16::try_from(f.len() - ip).unwrap_or(u16::MAX);
            f[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
        }
        6 | 7 => {
            f.extend_from_slice(&[0x86, 0xdd]);
            let ip = f.len();
            f.resize(ip + 40, 0);
            f[ip] = 0x60;
            f[ip + 7] = 64;
            f[ip + 8..ip + 24].copy_from_slice(&pools.aim_v6(u)?);
            f[ip + 24..ip + 40].copy_from_slice(&pools.aim_v6(u)?);
            match u.int_in_range(0..=3u8)? {
                // A fragment header in front of the transport.
                0 => {
                    f[ip + 6] = 44;
                    f.extend_from_slice(&[proto, 0, 0, 0, 0, 0, 0, 1]);
                }
                // A hop-by-hop options header.
                1 => {
                    f[ip + 6] = 0;
                    f.extend_from_slice(&[proto, 0, 1, 4, 0, 0, 0, 0]);
                }
                _ => f[ip + 6] = proto,
            }
            transport(u, &mut f, proto, sport, dport)?;
            let payload = u16::try_from(f.len() - ip - 40).unwrap_or(u16::MAX);
            f[ip + 4..ip + 6].copy_from_slice(&payload.to_be_bytes());
        }
        8 => {
            // ARP or RARP, asking for an address from the pool.
            f.extend_from_slice(u.choose(&[[0x08u8, 0x06], [0x80, 0x35]])?);
            f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, u.int_in_range(1..=2)?]);
            f.extend_from_slice(&PEER_MAC);
            f.extend_from_slice(&pools.aim_v4(u)?);
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&pools.aim_v4(u)?);
        }
        _ => {
            let len = u.int_in_range(0..=MAX_RAW_FRAME)?;
            f = u.bytes(len.min(u.len()))?.to_vec();
            if f.len() >= 14 && u.arbitrary()? {
                f[12..14].copy_from_slice(u.choose(&[[0x08u8, 0x00], [0x86, 0xdd]])?);
            }
        }
    }
    let wire_len = u32::try_from(f.len()).unwrap_or(u32::MAX);
    if u.ratio(1u8, 4)? {
        let keep = u.int_in_range(0..=f.len())?;
        f.truncate(keep);
    }
    Ok(GeneratedFrame { bytes: f, wire_len })
}
