//! IPv4 fragmentation of netd's own answers: an echo reply to a ping larger than the MTU is as
//! large as the request, and goes out as fragments (the driver checks them as the whole reply).
//!
//! [`fragment_ipv4`] splits an Ethernet frame carrying IPv4 the way a host does (RFC 791):
//! every fragment repeats the IP header with its options, carries a multiple of 8 bytes of data
//! but the last, and has its header checksum filled. "Don't fragment" is cleared: netd's answers
//! never ask for it (the packet builder sets it by default), and an answer too large for the
//! link is better fragmented than dropped. Frames that fit are left as they are; anything it
//! cannot split (not IPv4, truncated, already a fragment) comes back unchanged, for the driver
//! to refuse as too long. Never panics.

use netmux_wire::ethernet::{ethertype, link_layer};
use netmux_wire::ipv4::{self, Ipv4Packet};

/// The frames that carry `frame` on a link whose IP MTU is `mtu` bytes.
pub fn fragment_ipv4(frame: Vec<u8>, mtu: usize) -> Vec<Vec<u8>> {
    match split(&frame, mtu) {
        Some(fragments) => fragments,
        None => vec![frame],
    }
}

fn split(frame: &[u8], mtu: usize) -> Option<Vec<Vec<u8>>> {
    let link = link_layer(frame)?;
    if link.ethertype != ethertype::IPV4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(frame.get(link.l3..)?).ok()?;
    let total = usize::from(ip.total_len());
    if total <= mtu || ip.is_fragment() {
        return None;
    }
    let ihl = ip.header_len();
    let per_fragment = mtu.checked_sub(ihl)? & !7;
    if per_fragment == 0 {
        return None;
    }
    let header = frame.get(..link.l3 + ihl)?;
    let payload = ip.payload();
    let mut out = Vec::with_capacity(payload.len().div_ceil(per_fragment));
    for (i, data) in payload.chunks(per_fragment).enumerate() {
        let offset = i * per_fragment;
        let more = offset + data.len() < payload.len();
        let mut f = Vec::with_capacity(header.len() + data.len());
        f.extend_from_slice(header);
        f.extend_from_slice(data);
        let mut p = Ipv4Packet::new_unchecked(f.get_mut(link.l3..)?);
        p.set_total_len(u16::try_from(ihl + data.len()).ok()?);
        let word = u16::try_from(offset / 8).ok()? | if more { ipv4::FLAG_MF } else { 0 };
        p.set_flags_offset(word);
        p.fill_checksum();
        out.push(f);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(payload: usize) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(7, 7)
            .write(&mut out, &vec![0x5a; payload])
            .unwrap();
        out
    }

    #[test]
    fn a_frame_larger_than_the_mtu_becomes_fragments_that_carry_it_whole() {
        let whole = udp(8000);
        let parts = fragment_ipv4(whole.clone(), 1500);
        assert_eq!(parts.len(), 6);
        let mut data = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let ip = Ipv4Packet::new_checked(&p[14..]).unwrap();
            assert!(usize::from(ip.total_len()) <= 1500);
            assert!(ip.verify_checksum());
            assert_eq!(ip.more_frags(), i + 1 < parts.len());
            assert!(!ip.dont_frag());
            assert_eq!(ip.frag_offset() as usize, data.len());
            data.extend_from_slice(ip.payload());
        }
        assert_eq!(data, whole[34..]);
    }

    #[test]
    fn frames_that_fit_or_cannot_be_split_are_left_alone() {
        let small = udp(100);
        assert_eq!(fragment_ipv4(small.clone(), 1500), vec![small]);
        let mut fragment = udp(3000);
        fragment[20] |= 0x20;
        assert_eq!(fragment_ipv4(fragment.clone(), 1500), vec![fragment]);
        assert_eq!(fragment_ipv4(vec![1, 2, 3], 1500), vec![vec![1, 2, 3]]);
        let big = udp(3000);
        assert_eq!(fragment_ipv4(big.clone(), 20), vec![big]);
    }
}
