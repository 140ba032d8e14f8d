//! The Internet checksum (RFC 1071) and the pseudo-headers of TCP, UDP and ICMPv6.
//!
//! Sums are kept unfolded in a `u64` so long buffers add 32-bit words (2^16 = 1 in ones'
//! complement arithmetic, so folding the wide sum gives the sum of the 16-bit words at half
//! the additions); [`fold`] turns a sum into the 16-bit checksum field.

/// Adds the bytes of `data` (big-endian 16-bit words, an odd last byte padded with zero) to
/// `sum`.
#[inline]
pub fn add(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    for (k, &b) in words.remainder().iter().enumerate() {
        sum += u64::from(b) << if k % 2 == 0 { 8 } else { 0 };
    }
    sum
}

/// Folds a sum to 16 bits and complements it: the value of a checksum field. A buffer whose
/// checksum field is correct sums to a field value of zero.
#[inline]
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum of `data` alone (an IPv4 header, ICMPv4).
#[inline]
pub fn of(data: &[u8]) -> u16 {
    fold(add(0, data))
}

/// The sum of the IPv4 pseudo-header for a transport payload of `len` bytes.
pub fn pseudo_v4(src: [u8; 4], dst: [u8; 4], protocol: u8, len: u32) -> u64 {
    let mut sum = add(0, &src);
    sum = add(sum, &dst);
    sum + u64::from(protocol) + u64::from(len)
}

/// The sum of the IPv6 pseudo-header (RFC 8200 section 8.1) for an upper-layer payload of
/// `len` bytes.
pub fn pseudo_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, len: u32) -> u64 {
    let mut sum = add(0, src);
    sum = add(sum, dst);
    sum + u64::from(len) + u64::from(next_header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // The example of RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &data)), !0xddf2);
    }

    #[test]
    fn an_odd_byte_is_padded_with_zero() {
        assert_eq!(of(&[0x12]), of(&[0x12, 0x00]));
    }
}
