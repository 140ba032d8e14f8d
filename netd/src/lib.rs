//! netd, the netmux daemon: ports, sessions and policy, the IPC protocol, the client library.
//!
//! [`core`] is netd's I/O-free heart (ports, sessions, policy), tested without sockets and with
//! the time passed in; the daemon around it is a thin tokio shell.
#![deny(unsafe_code)]

pub mod core;
