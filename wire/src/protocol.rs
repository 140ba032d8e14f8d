//! IP protocol numbers netmux names (IANA): the IPv4 protocol field and the IPv6 next header.
//! Any other value is just a number.

/// IPv6 hop-by-hop options.
pub const HOP_BY_HOP: u8 = 0;
/// ICMP.
pub const ICMP: u8 = 1;
/// IGMP.
pub const IGMP: u8 = 2;
/// TCP.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;
/// IPv6 routing header.
pub const ROUTING: u8 = 43;
/// IPv6 fragment header.
pub const FRAGMENT: u8 = 44;
/// IPsec ESP.
pub const ESP: u8 = 50;
/// IPsec AH.
pub const AH: u8 = 51;
/// ICMPv6.
pub const ICMPV6: u8 = 58;
/// IPv6 "no next header".
pub const NO_NEXT_HEADER: u8 = 59;
/// IPv6 destination options.
pub const DESTINATION_OPTIONS: u8 = 60;
/// SCTP.
pub const SCTP: u8 = 132;
/// IPv6 mobility header.
pub const MOBILITY: u8 = 135;
/// UDP-Lite.
pub const UDP_LITE: u8 = 136;
/// Host Identity Protocol.
pub const HIP: u8 = 139;
/// Shim6.
pub const SHIM6: u8 = 140;
/// Experimental (RFC 3692).
pub const EXPERIMENT_1: u8 = 253;
/// Experimental (RFC 3692).
pub const EXPERIMENT_2: u8 = 254;
