//! The merged classifier: the one decision structure that says which client queues receive a
//! frame, built from every installed rx filter. The driver runs it on every received frame;
//! `netmux filter classify`, the classification benchmark, the classifier fuzz target and the
//! equivalence tests all use this same code.
//!
//! # Structure
//!
//! Barrelfish ran every client's filter in turn: the cost grew with every client. DPF and
//! PATHFINDER merged filters into one structure; netmux does the same for the filters almost
//! every client installs, *port bindings*, and keeps the rest exact by running them after.
//!
//! * An owner filter installed with a [`PortBinding`](netmux_proto::driver::PortBinding)
//!   whose protocol has ports (TCP, UDP, SCTP) puts its [`Key`] into one of three hash tables
//!   of one generic VM program ([`program`]): IPv4 exact address, IPv6 exact address,
//!   address-less. A frame costs one run of that program (at most two lookups, whatever the
//!   number of bindings) and one confirmation per hit.
//! * Every other filter (taps, exclusive claims, ARP, custom expressions, bindings of
//!   protocols without ports) runs after the tables, one by one: the linear fallback.
//! * Adding or removing a binding edits a table entry in place; the program is never rebuilt.
//! * With several network stack instances on one link, each has its own classifier, and the
//!   driver puts netd's port filters of every instance (an instance's own address and MAC)
//!   into one [`LinkBindings`] too, the same program and tables, looked up before the
//!   instance is known; the instance's classifier keeps their ownership
//!   ([`Classify::hold`]).
//!
//! [`key`] defines a frame's key and [`key::frame_keys`] computes it in plain Rust, the
//! specification the program is tested against. [`port_filter`] builds the receive filter
//! netd installs for a port, instruction for instruction.
//!
//! # The key is a hint; the verified program decides
//!
//! The key only selects a *candidate*: a frame whose key equals the binding's. The candidate
//! receives the frame only if its own verified program also accepts it (one extra program run
//! per hit). So a queue never receives a frame its program rejects, whatever key it was
//! installed with, and a key that disagrees with its program can only *narrow* delivery. With
//! keys that agree with their programs (netd's builders and the compiler's recogniser produce
//! them together), the result is exactly [`LinearScan`]'s. One shortcut keeps the
//! confirmation off per-queue code: when the program is byte for byte
//! [`port_filter::program`] of its key for the link's MAC or a group MAC (broadcast,
//! multicast), the confirmation compares the destination MAC ([`Classifier::for_link`]).
//!
//! # Rules every classifier here keeps
//!
//! - **Set semantics.** A queue receives a frame iff one of its rx filters accepts it; the
//!   result holds each receiving queue once, ascending. In particular an exact-address
//!   binding and an address-less binding of the same port (by two queues) both receive a
//!   frame that matches both, exactly as running every filter one by one would: "the merged
//!   result equals the linear scan, frame by frame" is the design's rule, and "most specific
//!   wins" would break it. netd decides which bindings may coexist when it hands out ports.
//! - **Ownership** ([`Ownership::OneOwnerPerKey`], the driver's). No two owner filters bind
//!   the same (protocol, address, port): the second is refused with
//!   [`ClassifierError::BindingInUse`]. An IPv4 binding's ownership key is its first four
//!   address bytes. [`Ownership::Shared`] lets several filters bind one key (for analysis
//!   tools); every other rule holds under both.
//! - **Exclusive claims** (illumos vnd's `DL_EXCLUSIVE_REQ`, an [`RxMode::Exclusive`] filter).
//!   A claim is refused while any port binding exists ([`ClassifierError::BindingsExist`]).
//!   While a claim exists, every port binding and every further claim is refused with
//!   [`ClassifierError::ExclusiveHeld`], the claimant's own included: one claim is one filter,
//!   removing that filter releases it, and "exclusive" does not depend on who asks.
//! - **Taps observe, never their own.** [`Classify::observers`] gives the tap queues that want
//!   a frame some queue transmitted, never the transmitting queue itself.
//! - **Refusals change nothing**, and no frame panics: programs are verified, so they
//!   terminate and every load is checked.
//!
//! ```
//! use netmux_classify::{Classifier, Classify, Key, RxFilter};
//! use netmux_proto::driver::{FilterId, QueueId, RxMode};
//! use std::net::Ipv4Addr;
//!
//! let mac = [2, 0, 0, 0, 0, 1];
//! let key = Key::V4 { protocol: 17, addr: Ipv4Addr::new(192, 0, 2, 1), port: 53 };
//! let mut c = Classifier::for_link(netmux_vm::Strategy::Interpreter, mac);
//! c.install(RxFilter {
//!     queue: QueueId(7),
//!     filter: FilterId(1),
//!     mode: RxMode::Owner,
//!     binding: Some(key.binding()),
//!     program: netmux_classify::port_filter::program(&key, mac).unwrap(),
//! })
//! .unwrap();
//!
//! // A UDP datagram to 192.0.2.1 port 53, for that MAC.
//! let mut frame = vec![0u8; 14 + 20 + 8];
//! frame[..6].copy_from_slice(&mac);
//! frame[12..14].copy_from_slice(&[0x08, 0x00]);
//! frame[14] = 0x45;
//! frame[23] = 17;
//! frame[30..34].copy_from_slice(&[192, 0, 2, 1]);
//! frame[36..38].copy_from_slice(&53u16.to_be_bytes());
//! let mut queues = Vec::new();
//! c.classify(&frame, frame.len() as u32, &mut queues);
//! assert_eq!(queues, [QueueId(7)]);
//! assert_eq!(c.confirmed_by_mac(), 1);
//! ```

#![deny(unsafe_code)]

pub mod key;
pub mod link_bindings;
pub mod port_filter;
pub mod program;

mod linear;
mod merged;
mod rules;

pub use key::{frame_keys, Family, Key};
pub use linear::LinearScan;
pub use link_bindings::LinkBindings;
pub use merged::Classifier;
pub use netmux_proto::driver::RxMode;
pub use rules::{ClassifierError, Classify, Ownership, RxFilter};
