//! Who may do what, and how much of everything one client may hold.
//!
//! netd's policy is data: the shell reads it from the command line or a config file, the core
//! consults it. Each instance has its own (who may join it, bind its privileged ports, tap it,
//! claim it). Limits are per session and per uid within an instance, so a user cannot escape a
//! per-session limit by opening many sessions.

use std::collections::BTreeSet;
use std::time::Duration;

/// How long a client may take between connecting and its hello (a slow-loris guard).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Resource limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Sessions one uid may have open at once.
    pub sessions_per_uid: usize,
    /// Ports one session may hold (TCP and UDP together).
    pub ports_per_session: usize,
    /// Ports one uid may hold over all its sessions.
    pub ports_per_uid: usize,
    /// Tap or exclusive filters one session may hold.
    pub filters_per_session: usize,
    /// Ring memory one session's queue may have, in bytes.
    pub ring_bytes_per_session: u64,
    /// Ring memory one uid may have over all its sessions, in bytes.
    pub ring_bytes_per_uid: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sessions_per_uid: 256,
            ports_per_session: 1024,
            ports_per_uid: 4096,
            filters_per_session: 16,
            // Rings of 4 MiB are plenty for 10 Gb/s bursts at this scale; 64 MiB per uid bounds
            // what one user can pin.
            ring_bytes_per_session: 16 << 20,
            ring_bytes_per_uid: 64 << 20,
        }
    }
}

/// The policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Uids besides 0 that may bind ports below 1024.
    pub privileged_uids: BTreeSet<u32>,
    /// Uids besides 0 that may open tap (observe-only) filters.
    pub tap_uids: BTreeSet<u32>,
    /// Uids besides 0 that may claim the whole link exclusively.
    pub exclusive_uids: BTreeSet<u32>,
    /// Uids besides 0 that may join the instance; `None`: every uid.
    pub join_uids: Option<BTreeSet<u32>>,
    /// Resource limits.
    pub limits: Limits,
    /// Time allowed between connect and hello.
    pub handshake_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            privileged_uids: BTreeSet::new(),
            tap_uids: BTreeSet::new(),
            exclusive_uids: BTreeSet::new(),
            join_uids: None,
            limits: Limits::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl Policy {
    /// Whether `uid` may bind a port below 1024.
    pub fn may_bind_privileged(&self, uid: u32) -> bool {
        uid == 0 || self.privileged_uids.contains(&uid)
    }
    /// Whether `uid` may open a tap filter.
    pub fn may_tap(&self, uid: u32) -> bool {
        uid == 0 || self.tap_uids.contains(&uid)
    }
    /// Whether `uid` may claim the link exclusively.
    pub fn may_claim_exclusive(&self, uid: u32) -> bool {
        uid == 0 || self.exclusive_uids.contains(&uid)
    }
    /// Whether `uid` may join the instance.
    pub fn may_join(&self, uid: u32) -> bool {
        uid == 0 || self.join_uids.as_ref().is_none_or(|u| u.contains(&uid))
    }
}
