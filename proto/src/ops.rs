//! The operator's view of every client queue, as illumos vnd gives one of every datalink:
//! passive captures of one client or of the whole link, and admin firewall rules the driver
//! applies where no client can touch them. The requests netd takes from `netmux capture` and
//! `netmux firewall`, the ones it makes of the driver for them, and the record a captured
//! frame travels in through the capture's rx ring.
//!
//! The types live beside the messages that carry them: what netd asks of the driver in
//! [`crate::driver::ops`], what operators ask of netd in [`crate::client::ops`]; this module
//! names them all in one place.

pub use crate::client::ops::*;
pub use crate::driver::ops::*;
