//! Sessions: one per connected client, with the credentials the kernel vouched for and
//! everything the client holds, so that its end frees all of it.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use netmux_proto::client::Transport;

/// A session's identity, never reused within one netd's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session {}", self.0)
    }
}

/// A tap or exclusive filter's identity within netd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FilterId(pub u64);

/// The peer's credentials as the kernel reported them (SO_PEERCRED), not as the client claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// Process id.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Where a session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Connected, no hello yet; ended if it has not said hello by the deadline (monotonic time).
    Handshake {
        /// When the session ends without a hello.
        deadline: Duration,
    },
    /// Said hello.
    Active,
}

/// What a filter opened with `open_filter` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FilterMode {
    /// Copies of matching received frames, never the client's own transmissions.
    Tap,
    /// The whole link for this client alone.
    Exclusive,
}

/// One client's session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// Its peer's credentials.
    pub creds: Credentials,
    /// Handshake or active.
    pub state: SessionState,
    /// Ports bound, filters active at the driver.
    pub ports: BTreeSet<(Transport, u16)>,
    /// Ports bound whose filters are being installed (no reply sent yet).
    pub installing: BTreeSet<(Transport, u16)>,
    /// Tap and exclusive filters.
    pub filters: BTreeSet<(FilterId, FilterMode)>,
    /// Ring memory of its queue, 0 before the queue exists.
    pub ring_bytes: u64,
}

impl Session {
    /// Ports held in any state: active or installing.
    pub fn port_count(&self) -> usize {
        self.ports.len() + self.installing.len()
    }
}
