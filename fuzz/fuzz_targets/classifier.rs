//! Random filter sets and frames against the merged classifier: it gives, frame by frame,
//! exactly what running every installed filter one after another gives, and it refuses
//! exactly what the rules say it must (issue 10).
//!
//! Each input is a policy and a sequence of operations: add a filter for a queue (a port
//! binding spelled one of the many ways the recogniser must see through, a tap or other
//! expression that nearly is one, a combination of them, or raw text), remove a rule (or one
//! already removed), remove every rule of a queue, claim or release the link exclusively, and
//! classify a frame (crafted around the pools the filters draw from: IPv4 with options,
//! malformed header lengths and fragments, IPv6 with extension headers, VLAN, ARP, truncated
//! captures, or raw bytes). Beside the classifier the target keeps its own model: every
//! installed rule compiled by `netmux_compiler::compile` and run by the reference interpreter,
//! the exclusive claimant, and the bindings. It checks:
//!
//! * `Mode::AllMatches` equals the linear scan plus the claimant, on every frame;
//! * `Mode::Owner` equals the accepting non-bindings, the claimant, and the accepting exact
//!   bindings, or the accepting address-less ones when no exact one accepts;
//! * a filter that does not compile is refused with the compiler's own message; a binding the
//!   target spelled is placed in the tables with exactly the keys the target computed; a
//!   binding is refused during a claim, and under `Policy::Exclusive` when another rule holds
//!   one of its keys; claims and releases and removals succeed or fail as the model says;
//! * the rule counts agree with the model after every operation.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use netmux_compiler::classifier::{
    recognize, Classifier, ClassifierError, Family, Key, Mode, Placement, Policy, QueueId, RuleId,
    Transport,
};
use netmux_compiler::{compile, parser, Options};
use netmux_vm::{Program, Strategy};

/// Operations per input: enough for conflicts, claims and removals to interleave, few enough
/// that an input runs in milliseconds.
const MAX_OPS: usize = 48;
/// Queues are drawn from `1..=QUEUES`, so several rules share a queue.
const QUEUES: u32 = 6;
/// Depth of `and`/`or`/`not` combinations of generated filters.
const MAX_DEPTH: u32 = 2;
/// Longest raw filter text tried (the parser's own limits are `filter_parse`'s business).
const MAX_RAW_TEXT: usize = 80;
/// Longest raw frame tried.
const MAX_RAW_FRAME: usize = 128;

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
const PORTS: [u16; 5] = [53, 80, 0, 65535, 2049];
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn pick<T: Copy>(u: &mut Unstructured, pool: &[T]) -> Result<T> {
    Ok(*u.choose(pool)?)
}

fn port(u: &mut Unstructured) -> Result<u16> {
    if u.ratio(7u8, 8)? {
        pick(u, &PORTS)
    } else {
        u.arbitrary()
    }
}

fn v4(u: &mut Unstructured) -> Result<[u8; 4]> {
    if u.ratio(7u8, 8)? {
        pick(u, &V4)
    } else {
        u.arbitrary()
    }
}

fn v6(u: &mut Unstructured) -> Result<[u8; 16]> {
    if u.ratio(7u8, 8)? {
        pick(u, &V6)
    } else {
        // A non-zero first group keeps the text out of the unspecified and IPv4-mapped
        // spellings (`::`, `::ffff:1.2.3.4`), which are the parser's business, not this target's.
        let mut a: [u8; 16] = u.arbitrary()?;
        a[0] |= 0x20;
        Ok(a)
    }
}

/// A port binding spelled one of the ways the recogniser must see through, with the keys the
/// target computes for it on its own.
fn binding(u: &mut Unstructured) -> Result<(String, Vec<Key>)> {
    let family = u.int_in_range(0..=2u8)?; // any, ip, ip6
    let proto = u.int_in_range(0..=3usize)?; // any, tcp, udp, sctp
    let p = port(u)?;
    let proto_name = ["", "tcp", "udp", "sctp"][proto];
    let proto_num = [0, 6, 17, 132][proto];
    let mut atoms = Vec::new();

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
    let mut addr = None;
    if u.ratio(3u8, 5)? {
        let is_v6 = match family {
            1 => false,
            2 => true,
            _ => u.arbitrary()?,
        };
        let qual = if family != 0 && u.arbitrary()? {
            family_said = true;
            format!("{fam_kw} ")
        } else {
            String::new()
        };
        atoms.push(if is_v6 {
            let a = Ipv6Addr::from(v6(u)?);
            addr = Some(IpAddr::V6(a));
            match u.int_in_range(0..=2u8)? {
                0 => format!("{qual}dst host {a}"),
                1 => format!("{qual}dst {a}"),
                _ => format!("{qual}dst net {a}/128"),
            }
        } else {
            let raw = v4(u)?;
            let a = Ipv4Addr::from(raw);
            addr = Some(IpAddr::V4(a));
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
    // Any order, some of it in parentheses.
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

    let protos: Vec<Transport> = match proto {
        0 => Transport::ALL.to_vec(),
        1 => vec![Transport::Tcp],
        2 => vec![Transport::Udp],
        _ => vec![Transport::Sctp],
    };
    let families: &[Family] = match family {
        0 => &[Family::V4, Family::V6],
        1 => &[Family::V4],
        _ => &[Family::V6],
    };
    let mut keys = Vec::new();
    for &proto in &protos {
        match addr {
            Some(IpAddr::V4(addr)) => keys.push(Key::V4 {
                proto,
                addr,
                port: p,
            }),
            Some(IpAddr::V6(addr)) => keys.push(Key::V6 {
                proto,
                addr,
                port: p,
            }),
            None => {
                for &family in families {
                    keys.push(Key::AnyAddr {
                        family,
                        proto,
                        port: p,
                    });
                }
            }
        }
    }
    keys.sort();
    Ok((atoms.join(" and "), keys))
}

/// A primitive that is not (alone) a binding, or one that nearly is.
fn other_atom(u: &mut Unstructured) -> Result<String> {
    let p = port(u)?;
    let a4 = Ipv4Addr::from(v4(u)?);
    let a6 = Ipv6Addr::from(v6(u)?);
    Ok(match u.int_in_range(0..=21u8)? {
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
        _ => "ether dst 02:00:00:00:00:02".to_owned(),
    })
}

/// A filter that is usually not a binding: atoms and bindings under `and`, `or` and `not`.
fn other(u: &mut Unstructured, depth: u32) -> Result<String> {
    if depth == 0 || u.ratio(2u8, 5)? {
        return other_atom(u);
    }
    Ok(match u.int_in_range(0..=3u8)? {
        0 => format!("not {}", other(u, depth - 1)?),
        1 => format!("({} or {})", other(u, depth - 1)?, other(u, depth - 1)?),
        2 => format!("{} and {}", other(u, depth - 1)?, other(u, depth - 1)?),
        _ => format!("{} or {}", binding(u)?.0, other(u, depth - 1)?),
    })
}

/// A filter text and, when the target spelled a binding, the keys it must have.
fn filter(u: &mut Unstructured) -> Result<(String, Option<Vec<Key>>)> {
    Ok(match u.int_in_range(0..=9u8)? {
        0..=5 => {
            let (text, keys) = binding(u)?;
            (text, Some(keys))
        }
        6..=8 => (other(u, MAX_DEPTH)?, None),
        _ => {
            let len = u.int_in_range(0..=MAX_RAW_TEXT)?;
            let bytes = u.bytes(len.min(u.len()))?;
            (String::from_utf8_lossy(bytes).into_owned(), None)
        }
    })
}

/// Appends a transport header (ports, then zeros to the header's length).
fn transport(f: &mut Vec<u8>, proto: u8, sport: u16, dport: u16) {
    let len = match proto {
        6 => 20,
        17 => 8,
        132 => 12,
        _ => 8,
    };
    let at = f.len();
    f.resize(at + len, 0);
    if matches!(proto, 6 | 17 | 132) {
        f[at..at + 2].copy_from_slice(&sport.to_be_bytes());
        f[at + 2..at + 4].copy_from_slice(&dport.to_be_bytes());
    } else {
        f[at] = 8; // an ICMP echo request, or anything
    }
}

/// A frame aimed at the pools the filters draw from, often broken one way or another.
/// Returns the captured bytes and the wire length.
fn frame(u: &mut Unstructured) -> Result<(Vec<u8>, u32)> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    let proto = pick(u, &[6u8, 17, 132, 1, 6, 17, 47])?;
    let sport = port(u)?;
    let dport = port(u)?;
    match u.int_in_range(0..=9u8)? {
        0..=5 => {
            if u.ratio(1u8, 8)? {
                // VLAN-tagged: nothing looks through the tag.
                f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
            }
            f.extend_from_slice(&[0x08, 0x00]);
            let ihl: u8 = match u.int_in_range(0..=9u8)? {
                0 => u.int_in_range(0..=4)?,  // malformed
                1 => u.int_in_range(6..=15)?, // options
                _ => 5,
            };
            let frag: u16 = if u.ratio(1u8, 6)? {
                pick(
                    u,
                    &[
                        0x2000u16, 0x0001, 0x4000, 0x1fff, 0x2010, 0x1000, 0x8000, 0xe000,
                    ],
                )?
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
            f[ip + 12..ip + 16].copy_from_slice(&v4(u)?);
            f[ip + 16..ip + 20].copy_from_slice(&v4(u)?);
            transport(&mut f, proto, sport, dport);
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
            f[ip + 8..ip + 24].copy_from_slice(&v6(u)?);
            f[ip + 24..ip + 40].copy_from_slice(&v6(u)?);
            match u.int_in_range(0..=3u8)? {
                0 => {
                    // A fragment header in front of the transport.
                    f[ip + 6] = 44;
                    f.extend_from_slice(&[proto, 0, 0, 0, 0, 0, 0, 1]);
                }
                1 => {
                    // A hop-by-hop options header.
                    f[ip + 6] = 0;
                    f.extend_from_slice(&[proto, 0, 1, 4, 0, 0, 0, 0]);
                }
                _ => f[ip + 6] = proto,
            }
            transport(&mut f, proto, sport, dport);
            let payload = u16::try_from(f.len() - ip - 40).unwrap_or(u16::MAX);
            f[ip + 4..ip + 6].copy_from_slice(&payload.to_be_bytes());
        }
        8 => {
            f.extend_from_slice(&pick(u, &[[0x08u8, 0x06], [0x80, 0x35]])?);
            f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, u.int_in_range(1..=2)?]);
            f.extend_from_slice(&MAC_A);
            f.extend_from_slice(&v4(u)?);
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&v4(u)?);
        }
        _ => {
            let len = u.int_in_range(0..=MAX_RAW_FRAME)?;
            f = u.bytes(len.min(u.len()))?.to_vec();
            if f.len() >= 14 && u.arbitrary()? {
                f[12..14].copy_from_slice(&pick(u, &[[0x08u8, 0x00], [0x86, 0xdd]])?);
            }
        }
    }
    let wire = u32::try_from(f.len()).unwrap_or(u32::MAX);
    if u.ratio(1u8, 4)? {
        let keep = u.int_in_range(0..=f.len())?;
        f.truncate(keep);
    }
    Ok((f, wire))
}

/// One installed rule as the model sees it.
struct ModelRule {
    id: RuleId,
    queue: QueueId,
    /// The reference program, run by the interpreter.
    program: Program,
    /// Its keys, if the classifier placed it in the tables.
    binding: Option<Vec<Key>>,
    /// Whether it is a binding with an address (an exact key).
    exact: bool,
}

/// What the classifier must agree with.
struct Model {
    policy: Policy,
    rules: Vec<ModelRule>,
    removed: Vec<RuleId>,
    exclusive: Option<QueueId>,
}

impl Model {
    fn bindings(&self) -> usize {
        self.rules.iter().filter(|r| r.binding.is_some()).count()
    }

    /// The queue of a rule that holds `key`, if one does.
    fn holder(&self, key: &Key) -> Option<QueueId> {
        self.rules
            .iter()
            .find(|r| r.binding.as_ref().is_some_and(|k| k.contains(key)))
            .map(|r| r.queue)
    }

    /// (every accepting queue, the owner-mode answer), both sorted and deduplicated.
    fn classify(&self, frame: &[u8], wire_len: u32) -> (Vec<QueueId>, Vec<QueueId>) {
        let mut scratch = [0; netmux_vm::isa::NUM_SLOTS];
        let mut all = Vec::new();
        let (mut others, mut exact, mut any) = (Vec::new(), Vec::new(), Vec::new());
        for r in &self.rules {
            if netmux_vm::interp::run(&r.program, frame, wire_len, &mut scratch).is_accept() {
                all.push(r.queue);
                match (&r.binding, r.exact) {
                    (None, _) => others.push(r.queue),
                    (Some(_), true) => exact.push(r.queue),
                    (Some(_), false) => any.push(r.queue),
                }
            }
        }
        let mut owner = others;
        owner.extend(if exact.is_empty() { any } else { exact });
        for v in [&mut all, &mut owner] {
            v.extend(self.exclusive);
            v.sort_unstable();
            v.dedup();
        }
        (all, owner)
    }
}

fn add(c: &mut Classifier, m: &mut Model, queue: QueueId, text: &str, spelled: Option<Vec<Key>>) {
    let got = c.add_filter(queue, text);
    let program = match compile(text, &Options::default()) {
        Ok(p) => p,
        Err(want) => {
            match got {
                Err(ClassifierError::Compile(e)) => assert_eq!(e.to_string(), want.to_string()),
                other => panic!("`{text}` does not compile ({want}) but add gave {other:?}"),
            }
            assert!(spelled.is_none(), "a spelled binding `{text}` must compile");
            return;
        }
    };
    let ast = parser::parse(text).expect("what compiles parses");
    let keys = recognize(&ast).ok().map(|b| {
        let mut k = b.keys();
        k.sort();
        k
    });
    if let Some(want) = &spelled {
        assert_eq!(keys.as_ref(), Some(want), "`{text}` is this binding");
    }
    let Some(keys) = keys else {
        let id = got.unwrap_or_else(|e| panic!("`{text}` (not a binding) refused: {e}"));
        assert!(
            matches!(c.placement(id), Some((q, Placement::Linear(_))) if q == queue),
            "`{text}`"
        );
        m.rules.push(ModelRule {
            id,
            queue,
            program,
            binding: None,
            exact: false,
        });
        return;
    };
    if let Some(owner) = m.exclusive {
        assert!(
            matches!(got, Err(ClassifierError::LinkClaimed { owner: o }) if o == owner),
            "`{text}` during a claim by {owner}: {got:?}"
        );
        return;
    }
    if m.policy == Policy::Exclusive {
        if let Some(key) = keys.iter().find(|k| m.holder(k).is_some()) {
            match got {
                Err(ClassifierError::Conflict { key: k, owner }) => {
                    assert!(keys.contains(&k), "`{text}`: conflict on a key it lacks");
                    assert_eq!(Some(owner), m.holder(&k), "`{text}`: conflict owner");
                }
                other => panic!("`{text}` binds {key}, already held: {other:?}"),
            }
            return;
        }
    }
    let id = got.unwrap_or_else(|e| panic!("`{text}` refused: {e}"));
    match c.placement(id) {
        Some((q, Placement::Table(b))) if q == queue => {
            let mut k = b.keys();
            k.sort();
            assert_eq!(k, keys, "`{text}`");
        }
        other => panic!("`{text}` is a binding but was placed {other:?}"),
    }
    let exact = keys.iter().any(Key::has_address);
    m.rules.push(ModelRule {
        id,
        queue,
        program,
        binding: Some(keys),
        exact,
    });
}

fn case(u: &mut Unstructured) -> Result<()> {
    let policy = if u.arbitrary()? {
        Policy::Exclusive
    } else {
        Policy::Overlapping
    };
    let mut c = Classifier::new(policy, Strategy::Interpreter).expect("the interpreter");
    let mut m = Model {
        policy,
        rules: Vec::new(),
        removed: Vec::new(),
        exclusive: None,
    };
    let mut got = Vec::new();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let queue = u.int_in_range(1..=QUEUES)?;
        match u.int_in_range(0..=15u8)? {
            0..=5 => {
                let (text, keys) = filter(u)?;
                add(&mut c, &mut m, queue, &text, keys);
            }
            6 | 7 => {
                if m.rules.is_empty() || u.ratio(1u8, 8)? {
                    if let Some(&id) = m.removed.last() {
                        assert!(matches!(
                            c.remove(id),
                            Err(ClassifierError::UnknownRule(r)) if r == id
                        ));
                    }
                } else {
                    let i = u.choose_index(m.rules.len())?;
                    let r = m.rules.swap_remove(i);
                    c.remove(r.id).expect("an installed rule is removed");
                    m.removed.push(r.id);
                }
            }
            8 => {
                c.remove_queue(queue);
                m.rules.retain(|r| r.queue != queue);
                if m.exclusive == Some(queue) {
                    m.exclusive = None;
                }
            }
            9 => {
                let got = c.claim_exclusive(queue);
                let bindings = m.bindings();
                match m.exclusive {
                    Some(q) if q == queue => assert!(got.is_ok(), "{got:?}"),
                    Some(owner) => assert!(
                        matches!(got, Err(ClassifierError::AlreadyClaimed { owner: o }) if o == owner),
                        "{got:?}"
                    ),
                    None if bindings > 0 => assert!(
                        matches!(got, Err(ClassifierError::PortsBound { bindings: b }) if b == bindings),
                        "{got:?}"
                    ),
                    None => {
                        assert!(got.is_ok(), "{got:?}");
                        m.exclusive = Some(queue);
                    }
                }
            }
            10 => {
                let got = c.release_exclusive(queue);
                if m.exclusive == Some(queue) {
                    assert!(got.is_ok(), "{got:?}");
                    m.exclusive = None;
                } else {
                    assert!(
                        matches!(got, Err(ClassifierError::NotClaimant(q)) if q == queue),
                        "{got:?}"
                    );
                }
            }
            _ => {
                let (f, wire) = frame(u)?;
                let (all, owner) = m.classify(&f, wire);
                c.classify(&f, wire, Mode::AllMatches, &mut got);
                assert_eq!(got, all, "all matches of {f:02x?} (wire {wire})");
                c.classify(&f, wire, Mode::Owner, &mut got);
                assert_eq!(got, owner, "owners of {f:02x?} (wire {wire})");
            }
        }
        assert_eq!(c.len(), m.rules.len(), "rule count");
        assert_eq!(c.binding_rules(), m.bindings(), "binding count");
        assert_eq!(c.exclusive_owner(), m.exclusive, "claimant");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = case(&mut Unstructured::new(data));
});
