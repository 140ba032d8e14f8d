//! Test-only support for netmux: the libpcap oracle, capture reading, frame builders.
