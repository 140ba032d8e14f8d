//! F9 and F10: what an overlay takes from outside.
//!
//! * [`vxlan`]: any bytes as a frame received on the link, through what the driver does with
//!   VXLAN: the outer Ethernet/IPv4/UDP headers found (`outer_udp`), the VXLAN header read
//!   (`decapsulate`). Promises: never a panic; a payload range inside the frame; a frame that
//!   decapsulates, encapsulated again with its VNI, decapsulates to the same VNI and the same
//!   inner frame (a source port in 49152-65535, UDP checksum zero).
//! * [`overlay_files`]: any bytes as a mapping file of varpd's files plugin, through netd's
//!   parser. Promises: never a panic; a refusal names a line within the text and says what is
//!   wrong; every MAC of an accepted mapping is a MAC the text spells.

use netmux_wire::vxlan::{decapsulate, encapsulate, outer_udp, Underlay};

/// F9's body.
pub fn vxlan(data: &[u8]) {
    let Some(outer) = outer_udp(data) else {
        return;
    };
    assert!(
        outer.payload <= outer.payload_end && outer.payload_end <= data.len(),
        "the payload lies inside the frame: {outer:?} of {} bytes",
        data.len()
    );
    let Ok(d) = decapsulate(&data[outer.payload..outer.payload_end]) else {
        return;
    };
    let vni = d.vni;
    let inner = d.inner.to_vec();
    let to = Underlay {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_ip: [192, 0, 2, 1],
        dst_ip: [192, 0, 2, 2],
        dst_port: 4789,
    };
    let mut out = Vec::new();
    // An inner frame too large for one outer datagram is refused, never cut.
    let Ok(written) = encapsulate(&inner, vni, &to, &mut out) else {
        return;
    };
    assert_eq!(written, out.len());
    let again = outer_udp(&out).expect("an encapsulated frame has outer headers");
    assert_eq!(again.dst_port, 4789);
    assert!(
        (49152..=65535).contains(&again.src_port),
        "{}",
        again.src_port
    );
    let back = decapsulate(&out[again.payload..again.payload_end])
        .expect("an encapsulated frame decapsulates");
    assert_eq!(back.vni, vni & 0x00ff_ffff);
    assert_eq!(
        back.inner,
        &inner[..],
        "the inner frame comes back unchanged"
    );
}

/// F10's body.
pub fn overlay_files(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match netmux_netd::overlay::files::parse(text) {
        Ok(mapping) => {
            let lowered = text.to_ascii_lowercase();
            for mac in mapping.keys() {
                // A MAC of the mapping is spelled in the text: its last octet at least.
                let last = format!("{:x}", mac[5]);
                assert!(lowered.contains(&last), "{mac:02x?} is not in the text");
            }
        }
        Err(e) => {
            assert!(!e.what.is_empty(), "a refusal says what is wrong");
            let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
            assert!(
                (1..=lines).contains(&e.line) || (e.line == 0 && text.is_empty()),
                "line {} of a text of {lines} lines: {e:?}",
                e.line
            );
        }
    }
}
