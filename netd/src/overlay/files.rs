//! The `files` mapping backend: exactly the JSON of illumos varpd's files plugin, an object
//! keyed by overlay MAC whose values hold `ip` (the VTEP's underlay address), `port` (its
//! VXLAN port), `arp` (the overlay IPv4 address proxy ARP answers for with this MAC), `ndp`
//! (the overlay IPv6 address) and `dhcp-proxy` (the MAC this host's DHCP broadcasts go to):
//!
//! ```json
//! { "de:ad:be:ef:00:00": { "arp": "10.55.55.2", "ip": "10.88.88.69", "ndp": "fe80::3", "port": 4789 },
//!   "de:ad:be:ef:00:01": { "arp": "10.55.55.3", "dhcp-proxy": "de:ad:be:ef:00:00",
//!                          "ip": "10.88.88.70", "ndp": "fe80::4", "port": 4789 } }
//! ```
//!
//! As in varpd, `ip` is required, an IPv4 address may also be written v4-mapped
//! (`::ffff:a.b.c.d`), and an entry without `port` is answered as no mapping (its frames
//! are dropped) while its `arp` still answers. Unlike varpd, a key varpd reserves is refused
//! rather than ignored, so a misspelt field is not silently lost; and the underlay must be
//! IPv4 (the driver encapsulates in IPv4 only). Every refusal names the line, the MAC and
//! the field.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One MAC's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The VTEP's underlay address.
    pub ip: Ipv4Addr,
    /// Its VXLAN port; `None`: frames to this MAC are dropped.
    pub port: Option<u16>,
    /// The overlay IPv4 address proxy ARP answers with this MAC.
    pub arp: Option<Ipv4Addr>,
    /// The overlay IPv6 address proxy NDP answers with this MAC.
    pub ndp: Option<Ipv6Addr>,
    /// Where this MAC's DHCP broadcasts are sent.
    pub dhcp_proxy: Option<[u8; 6]>,
}

/// Every entry, by MAC.
pub type Mapping = BTreeMap<[u8; 6], Entry>;

/// What is wrong with a mapping file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {}{what}", .key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct FilesError {
    /// The line (1-based).
    pub line: usize,
    /// The MAC (and field) concerned, as written.
    pub key: Option<String>,
    /// What is wrong.
    pub what: String,
}

/// Parses a MAC written as varpd's `ether_aton` accepts it: six hex octets of one or two
/// digits separated by colons.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The 1-based line of byte `at` of `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.get(..at)
        .map_or(1, |t| t.bytes().filter(|&b| b == b'\n').count() + 1)
}

/// Parses a files-plugin document. See the module documentation.
pub fn parse(text: &str) -> Result<Mapping, FilesError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| FilesError {
        line: e.line(),
        key: None,
        what: format!("not JSON: {e}"),
    })?;
    let serde_json::Value::Object(entries) = value else {
        return Err(FilesError {
            line: 1,
            key: None,
            what: "the document must be an object keyed by MAC".into(),
        });
    };
    let mut mapping = Mapping::new();
    for (key, value) in &entries {
        let key_at = text.find(&format!("\"{key}\"")).unwrap_or(0);
        let bad = |field: Option<&str>, what: String| {
            let at = field
                .and_then(|f| text[key_at..].find(&format!("\"{f}\"")).map(|i| key_at + i))
                .unwrap_or(key_at);
            FilesError {
                line: line_of(text, at),
                key: Some(match field {
                    Some(f) => format!("{key} {f}"),
                    None => key.clone(),
                }),
                what,
            }
        };
        let mac = parse_mac(key).ok_or_else(|| bad(None, "not a MAC address".into()))?;
        if mac[0] & 1 != 0 {
            return Err(bad(None, "an overlay MAC must be a unicast address".into()));
        }
        let serde_json::Value::Object(fields) = value else {
            return Err(bad(
                None,
                "must be an object of ip, port, arp, ndp, dhcp-proxy".into(),
            ));
        };
        for name in fields.keys() {
            if !matches!(name.as_str(), "ip" | "port" | "arp" | "ndp" | "dhcp-proxy") {
                return Err(bad(
                    Some(name),
                    "unknown field (known: ip, port, arp, ndp, dhcp-proxy)".into(),
                ));
            }
        }
        let text_field = |name: &str| -> Result<Option<&str>, FilesError> {
            match fields.get(name) {
                None => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(bad(Some(name), "must be a string".into())),
            }
        };
        let ip = match text_field("ip")? {
            None => {
                return Err(bad(
                    Some("ip"),
                    "missing (the VTEP's underlay address)".into(),
                ))
            }
            Some(t) => match t.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) => a,
                Ok(IpAddr::V6(a)) => a
                    .to_ipv4_mapped()
                    .ok_or_else(|| bad(Some("ip"), format!("{t}: the underlay must be IPv4")))?,
                Err(_) => return Err(bad(Some("ip"), format!("{t:?} is not an IP address"))),
            },
        };
        if ip.is_multicast() || ip.is_broadcast() || ip.is_unspecified() {
            return Err(bad(Some("ip"), format!("{ip} is not a unicast address")));
        }
        let port = match fields.get("port") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(p @ 1..=65535) => Some(p as u16),
                _ => return Err(bad(Some("port"), format!("{v} is not a port (1 to 65535)"))),
            },
        };
        let arp = text_field("arp")?
            .map(|t| {
                t.parse::<Ipv4Addr>()
                    .map_err(|_| bad(Some("arp"), format!("{t:?} is not an IPv4 address")))
            })
            .transpose()?;
        let ndp = text_field("ndp")?
            .map(|t| {
                t.parse::<Ipv6Addr>()
                    .map_err(|_| bad(Some("ndp"), format!("{t:?} is not an IPv6 address")))
            })
            .transpose()?;
        let dhcp_proxy = text_field("dhcp-proxy")?
            .map(|t| {
                parse_mac(t).ok_or_else(|| bad(Some("dhcp-proxy"), format!("{t:?} is not a MAC")))
            })
            .transpose()?;
        let entry = Entry {
            ip,
            port,
            arp,
            ndp,
            dhcp_proxy,
        };
        if mapping.insert(mac, entry).is_some() {
            return Err(bad(None, "the same MAC is listed twice".into()));
        }
    }
    let mut arp: BTreeMap<Ipv4Addr, [u8; 6]> = BTreeMap::new();
    for (mac, e) in &mapping {
        if let Some(a) = e.arp {
            if let Some(other) = arp.insert(a, *mac) {
                let key = crate::instance::mac_text(*mac);
                let at = text.find(&a.to_string()).unwrap_or(0);
                return Err(FilesError {
                    line: line_of(text, at),
                    key: Some(format!("{key} arp")),
                    what: format!("{a} is also {}'s address", crate::instance::mac_text(other)),
                });
            }
        }
    }
    Ok(mapping)
}

/// Writes a mapping in the files plugin's format, one MAC per line in MAC order, fields in
/// the order `ip`, `port`, `arp`, `ndp`, `dhcp-proxy`; [`parse`] reads it back unchanged.
pub fn render(mapping: &Mapping) -> String {
    let mut out = String::from("{");
    for (i, (mac, e)) in mapping.iter().enumerate() {
        let mut fields = vec![format!("\"ip\": \"{}\"", e.ip)];
        if let Some(p) = e.port {
            fields.push(format!("\"port\": {p}"));
        }
        if let Some(a) = e.arp {
            fields.push(format!("\"arp\": \"{a}\""));
        }
        if let Some(a) = e.ndp {
            fields.push(format!("\"ndp\": \"{a}\""));
        }
        if let Some(m) = e.dhcp_proxy {
            fields.push(format!(
                "\"dhcp-proxy\": \"{}\"",
                crate::instance::mac_text(m)
            ));
        }
        out.push_str(if i == 0 { "\n  " } else { ",\n  " });
        out.push_str(&format!(
            "\"{}\": {{ {} }}",
            crate::instance::mac_text(*mac),
            fields.join(", ")
        ));
    }
    out.push_str("\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARPD_EXAMPLE: &str = r#"{ "de:ad:be:ef:00:00": { "arp": "10.55.55.2", "ip": "10.88.88.69", "ndp": "fe80::3", "port": 4789 },
  "de:ad:be:ef:00:01": { "arp": "10.55.55.3", "dhcp-proxy": "de:ad:be:ef:00:00",
                         "ip": "10.88.88.70", "ndp": "fe80::4", "port": 4789 } }"#;

    #[test]
    fn the_files_plugins_own_example_parses() {
        let m = parse(VARPD_EXAMPLE).unwrap();
        assert_eq!(m.len(), 2);
        let e = m[&[0xde, 0xad, 0xbe, 0xef, 0, 1]];
        assert_eq!(e.ip, Ipv4Addr::new(10, 88, 88, 70));
        assert_eq!(e.port, Some(4789));
        assert_eq!(e.arp, Some(Ipv4Addr::new(10, 55, 55, 3)));
        assert_eq!(e.ndp, Some("fe80::4".parse().unwrap()));
        assert_eq!(e.dhcp_proxy, Some([0xde, 0xad, 0xbe, 0xef, 0, 0]));
    }

    #[test]
    fn a_rendered_mapping_parses_back_to_itself() {
        let m = parse(VARPD_EXAMPLE).unwrap();
        let text = render(&m);
        assert_eq!(parse(&text).unwrap(), m, "{text}");
        assert!(text.contains("\"de:ad:be:ef:00:01\": { \"ip\": \"10.88.88.70\", \"port\": 4789, \"arp\": \"10.55.55.3\", \"ndp\": \"fe80::4\", \"dhcp-proxy\": \"de:ad:be:ef:00:00\" }"), "{text}");
        assert_eq!(render(&Mapping::new()), "{\n}\n");
        assert!(parse(&render(&Mapping::new())).unwrap().is_empty());
    }

    #[test]
    fn macs_are_normalised_and_v4_mapped_underlays_accepted() {
        let m = parse(r#"{"2:0:0:a:b:c": {"ip": "::ffff:192.0.2.1"}}"#).unwrap();
        let e = m[&[2, 0, 0, 0xa, 0xb, 0xc]];
        assert_eq!((e.ip, e.port), (Ipv4Addr::new(192, 0, 2, 1), None));
    }

    #[test]
    fn a_bad_file_is_refused_naming_the_line_the_mac_and_the_field() {
        let text = "{\n \"02:00:00:00:00:01\": {\"ip\": \"192.0.2.1\", \"port\": 4789},\n \"02:00:00:00:00:02\": {\n   \"ip\": \"192.0.2.2\",\n   \"port\": 70000\n }\n}";
        let e = parse(text).unwrap_err();
        assert_eq!(e.line, 5);
        assert_eq!(e.key.as_deref(), Some("02:00:00:00:00:02 port"));
        assert_eq!(
            e.to_string(),
            "line 5: 02:00:00:00:00:02 port: 70000 is not a port (1 to 65535)"
        );
        for (text, line, key) in [
            ("{\"zz\": {\"ip\": \"192.0.2.1\"}}", 1, "zz"),
            (
                "{\"02:00:00:00:00:01\": {\"port\": 1}}",
                1,
                "02:00:00:00:00:01 ip",
            ),
            (
                "{\"02:00:00:00:00:01\": {\"ip\": \"2001:db8::1\"}}",
                1,
                "02:00:00:00:00:01 ip",
            ),
            (
                "{\"02:00:00:00:00:01\": {\"ip\": \"192.0.2.1\",\n\"apr\": \"1.2.3.4\"}}",
                2,
                "02:00:00:00:00:01 apr",
            ),
            (
                "{\"02:00:00:00:00:01\": {\"ip\": \"192.0.2.1\", \"arp\": \"10.0.0.300\"}}",
                1,
                "02:00:00:00:00:01 arp",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!((e.line, e.key.as_deref()), (line, Some(key)), "{text}: {e}");
        }
        let e = parse("{\n\"02:00:00:00:00:01\": {\"ip\": \"192.0.2.1\",}\n}").unwrap_err();
        assert_eq!((e.line, e.key), (2, None));
        assert!(parse("[]").is_err());
    }

    #[test]
    fn one_overlay_address_cannot_be_two_macs() {
        let e = parse(
            r#"{"02:00:00:00:00:01": {"ip": "192.0.2.1", "arp": "10.0.0.1"},
 "02:00:00:00:00:02": {"ip": "192.0.2.2", "arp": "10.0.0.1"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("arp"), "{e}");
    }
}
