//! Test-only support for netmux: the libpcap oracle, capture reading, frame builders.
//!
//! * [`oracle`]: libpcap itself (`pcap_compile`, `bpf_filter`, `bpf_image`) behind a small safe
//!   wrapper, the reference every netmux filter verdict is compared with.
//! * [`corpus`]: the conformance corpus (`exprs.txt`, `reject.txt`, the captures under `pcap/`)
//!   and reading the Ethernet frames of any pcap or pcapng capture.
//! * [`frames`]: builders for the Ethernet frames the tests make themselves.
//!
//! This crate links libpcap and is meant for tests and benchmarks only.
#![deny(unsafe_code)]

pub mod bins;
pub mod corpus;
pub mod frames;
#[allow(unsafe_code)]
pub mod oracle;

pub use corpus::{Capture, CorpusError, Frame};
pub use oracle::{BpfInsn, BpfProgram, OracleError};
