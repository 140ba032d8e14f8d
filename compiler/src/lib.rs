//! The netmux filter compiler: the pcap-filter language to verified netmux VM bytecode.
pub mod builders;
