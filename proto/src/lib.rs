//! The netmux IPC protocol: the messages clients, netd and the driver exchange, their framing,
//! and descriptor passing. One crate, so netd and the driver can never disagree about it.
//!
//! * [`frame`]: length-delimited, versioned JSON messages with an announced descriptor count.
//! * [`channel`]: a message channel on a Unix stream socket, `SCM_RIGHTS`, peer credentials.
//! * [`driver`]: netd <-> driver; [`client`]: client <-> netd.
//! * `async_channel` and `signals` (feature `tokio`): the channel on tokio's readiness loop,
//!   and the one SIGINT/SIGTERM watcher.
#![deny(unsafe_code)]

#[cfg(feature = "tokio")]
pub mod async_channel;
pub mod channel;
pub mod client;
pub mod driver;
pub mod frame;
pub mod ops;
pub mod overlay;
#[cfg(feature = "tokio")]
pub mod signals;

use serde::{Deserialize, Serialize};

pub use channel::{peer_credentials, Channel, ChannelError, PeerCredentials};

/// The client socket's name inside netd's runtime directory.
pub const SOCKET_NAME: &str = "netd.sock";
/// The runtime directory when `$XDG_RUNTIME_DIR` is not set.
pub const SYSTEM_RUNTIME_DIR: &str = "/run/netmux";

/// The default runtime directory: `$XDG_RUNTIME_DIR/netmux`, else [`SYSTEM_RUNTIME_DIR`].
pub fn default_runtime_dir() -> std::path::PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => std::path::Path::new(&dir).join("netmux"),
        _ => std::path::PathBuf::from(SYSTEM_RUNTIME_DIR),
    }
}

/// netd's client socket inside a runtime directory.
pub fn socket_in(runtime_dir: &std::path::Path) -> std::path::PathBuf {
    runtime_dir.join(SOCKET_NAME)
}

/// The protocol version; a peer speaking another is refused at hello. 2: a queue travels as
/// two descriptors (its memfd and its doorbell), no longer three (a memfd and two eventfds).
pub const PROTOCOL_VERSION: u16 = 2;

/// The link's properties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// The link's MAC address.
    pub mac: [u8; 6],
    /// The link's MTU (IP bytes per frame).
    pub mtu: u16,
}

/// Whether the link carries frames, as the driver last saw it. While it is not
/// [`LinkState::Up`], the driver keeps every queue and session; frames clients transmit complete
/// with the ring's `LinkDown` status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LinkState {
    /// Frames come and go.
    #[default]
    Up,
    /// The interface exists but is administratively down or has no carrier.
    Down,
    /// The interface does not exist any more; the driver re-opens it when it reappears, or
    /// ends after its link timeout.
    Gone,
}

impl LinkState {
    /// The word `netmux ls` shows.
    pub const fn name(self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::Down => "down",
            LinkState::Gone => "gone",
        }
    }
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A refusal: a stable code for programs and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What kind of refusal.
    pub code: ErrorCode,
    /// What happened, for a person.
    pub message: String,
}

/// Kinds of refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The peer speaks another protocol version.
    Version,
    /// A request before hello, or hello twice.
    Protocol,
    /// The port or binding is held by someone else.
    InUse,
    /// Not allowed by the policy (privileged port, tap, exclusive).
    Denied,
    /// A limit was reached.
    Limit,
    /// The filter expression or program is invalid.
    BadFilter,
    /// No such port, filter or queue.
    NotFound,
    /// The driver is gone or failed.
    Driver,
    /// Anything else.
    Internal,
    /// The session was ended by netd (its instance was destroyed).
    Ended,
    /// A passing state: the same request succeeds shortly (a port whose previous holder's
    /// filters are still being removed). The client library repeats such a request itself.
    Again,
}
