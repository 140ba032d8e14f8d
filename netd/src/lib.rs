//! netd, the netmux daemon: ports, sessions and policy over IPC, per-port filters at the
//! driver, and netd's own host stack. Clients use the `netmux-client` crate.
//!
//! * [`core`]: the I/O-free heart (ports, sessions, policy), tested without sockets and with
//!   the time passed in.
//! * [`service`]: what each request means for the core and the driver, decided without I/O:
//!   a reply, or driver work whose outcomes come back to it.
//! * [`server`]: the thin tokio shell (client socket, tasks, handshake clock) that carries the
//!   work out, and [`server::spawn`] to run netd in-process.
//! * [`driver_link`]: the driver behind a trait (the control socket, and a recorder for
//!   tests); [`driver_worker`] runs it on a thread of its own with deadlines.
//! * [`filters`]: the per-port filters from the compiler's builders.
//! * [`instance`]: network stack instances (each an independent host on the link).
//! * [`overlay`]: overlays and their mapping service (varpd's role), with the `files` backend and,
//!   with the `etcd` feature, the `etcd` one.
//! * [`host`]: ARP, ICMP echo, port unreachable and RST for the host's addresses.
//! * [`dad`]: duplicate address detection for the host's IPv4 address at start (RFC 5227).
//! * [`ports_file`]: the ports netd had bound, kept for their uids after a restart.
//! * [`run`]: running netd in the foreground (the `netd` binary and `netmux up`).
//! * `testing` (feature `test-support`): netd in-process on the real driver, for tests.
#![deny(unsafe_code)]

pub mod config;
pub mod core;
pub mod dad;
pub mod dhcp;
pub mod driver_link;
pub mod driver_worker;
pub mod filters;
pub mod host;
pub mod instance;
pub mod overlay;
pub mod ports_file;
pub mod run;
pub mod server;
pub mod service;
pub mod slaac;
#[cfg(feature = "test-support")]
pub mod testing;

pub use config::Config;
pub use server::{spawn, NetdHandle, Server};
