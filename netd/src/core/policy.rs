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

/// The ring memory of one queue of the default geometry (`QueueConfig::default()`: 64 slots
/// of 2 KiB each way and 64 completions, in whole pages): 266,240 bytes, so ten thousand
/// queues need 2.5 GiB.
pub const DEFAULT_QUEUE_RING_BYTES: u64 = 266_240;

/// The ring memory of a queue with 2 MiB rings each way (`rxbuf=2M txbuf=2M`, as a bulk
/// client asks for): what the limits on ring memory are counted in.
pub const LARGE_QUEUE_RING_BYTES: u64 = 4_214_784;

/// Resource limits: every one a setting of netd's configuration file (`[limits]`, under these
/// names), shown by `netmux instance ls` as the read-only properties `limits.NAME`. The
/// defaults let 1,000 clients of one uid each hold a port and an open queue of the default
/// geometry; lower them where local users are not trusted with that much.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Sessions one uid may have open at once in one instance. Default 1,024.
    pub sessions_per_uid: usize,
    /// Ports one session may hold (TCP and UDP together). Default 1,024.
    pub ports_per_session: usize,
    /// Ports one uid may hold over all its sessions in one instance. Default 4,096.
    pub ports_per_uid: usize,
    /// Tap or exclusive filters one session may hold. Default 16.
    pub filters_per_session: usize,
    /// Ring memory one session's queue may have, in bytes. Default 16 MiB (a queue of the
    /// default geometry is 260 KiB, one with 2 MiB rings each way about 4 MiB).
    pub ring_bytes_per_session: u64,
    /// Ring memory one uid's queues may have in one instance, in bytes. Default 1,024
    /// queues with 2 MiB rings each way (about 4 GiB; 15,000 queues of the default
    /// geometry): memory a uid can make the driver fill when its clients do not drain their
    /// rings.
    pub ring_bytes_per_uid: u64,
    /// Ring memory all queues of one instance may have, in bytes. Default four times
    /// `ring_bytes_per_uid` (about 16 GiB).
    pub ring_bytes_per_instance: u64,
    /// Bytes of messages not yet whole that netd holds for one uid's connections, over all of
    /// netd. A message of up to [`SMALL_MESSAGE`] bytes is always taken, so every session can
    /// make its requests whatever others of its uid hold; a longer one is refused, and its
    /// session ended, when it would take the uid past this. Default 16 MiB (16 messages of
    /// the largest size at once).
    pub buffered_bytes_per_uid: u64,
}

/// A message this short (every ordinary request) never draws on
/// [`Limits::buffered_bytes_per_uid`]: what sessions can hold that way is bounded by
/// `sessions_per_uid` times this.
pub const SMALL_MESSAGE: usize = 4096;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sessions_per_uid: 1024,
            ports_per_session: 1024,
            ports_per_uid: 4096,
            filters_per_session: 16,
            ring_bytes_per_session: 16 << 20,
            ring_bytes_per_uid: 1024 * LARGE_QUEUE_RING_BYTES,
            ring_bytes_per_instance: 4 * 1024 * LARGE_QUEUE_RING_BYTES,
            buffered_bytes_per_uid: 16 << 20,
        }
    }
}

/// One limit of [`Limits`], for refusals that name the setting to raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// [`Limits::sessions_per_uid`].
    SessionsPerUid,
    /// [`Limits::ports_per_session`].
    PortsPerSession,
    /// [`Limits::ports_per_uid`].
    PortsPerUid,
    /// [`Limits::filters_per_session`].
    FiltersPerSession,
    /// [`Limits::ring_bytes_per_session`].
    RingBytesPerSession,
    /// [`Limits::ring_bytes_per_uid`].
    RingBytesPerUid,
    /// [`Limits::ring_bytes_per_instance`].
    RingBytesPerInstance,
    /// [`Limits::buffered_bytes_per_uid`].
    BufferedBytesPerUid,
}

impl Limit {
    /// Every limit, in the order of [`Limits`].
    pub const ALL: [Limit; 8] = [
        Limit::SessionsPerUid,
        Limit::PortsPerSession,
        Limit::PortsPerUid,
        Limit::FiltersPerSession,
        Limit::RingBytesPerSession,
        Limit::RingBytesPerUid,
        Limit::RingBytesPerInstance,
        Limit::BufferedBytesPerUid,
    ];

    /// The setting's name in the configuration file's `[limits]` table.
    pub fn name(self) -> &'static str {
        match self {
            Limit::SessionsPerUid => "sessions_per_uid",
            Limit::PortsPerSession => "ports_per_session",
            Limit::PortsPerUid => "ports_per_uid",
            Limit::FiltersPerSession => "filters_per_session",
            Limit::RingBytesPerSession => "ring_bytes_per_session",
            Limit::RingBytesPerUid => "ring_bytes_per_uid",
            Limit::RingBytesPerInstance => "ring_bytes_per_instance",
            Limit::BufferedBytesPerUid => "buffered_bytes_per_uid",
        }
    }

    /// The limit in words, for people.
    pub fn words(self) -> &'static str {
        match self {
            Limit::SessionsPerUid => "sessions per uid",
            Limit::PortsPerSession => "ports per session",
            Limit::PortsPerUid => "ports per uid",
            Limit::FiltersPerSession => "filters per session",
            Limit::RingBytesPerSession => "ring bytes per session",
            Limit::RingBytesPerUid => "ring bytes per uid",
            Limit::RingBytesPerInstance => "ring bytes per instance",
            Limit::BufferedBytesPerUid => "buffered bytes per uid",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.words())
    }
}

impl Limits {
    /// The value of one limit.
    pub fn get(&self, limit: Limit) -> u64 {
        match limit {
            Limit::SessionsPerUid => self.sessions_per_uid as u64,
            Limit::PortsPerSession => self.ports_per_session as u64,
            Limit::PortsPerUid => self.ports_per_uid as u64,
            Limit::FiltersPerSession => self.filters_per_session as u64,
            Limit::RingBytesPerSession => self.ring_bytes_per_session,
            Limit::RingBytesPerUid => self.ring_bytes_per_uid,
            Limit::RingBytesPerInstance => self.ring_bytes_per_instance,
            Limit::BufferedBytesPerUid => self.buffered_bytes_per_uid,
        }
    }

    /// Sets one limit (a count above `usize::MAX` saturates).
    pub fn set(&mut self, limit: Limit, value: u64) {
        let count = usize::try_from(value).unwrap_or(usize::MAX);
        match limit {
            Limit::SessionsPerUid => self.sessions_per_uid = count,
            Limit::PortsPerSession => self.ports_per_session = count,
            Limit::PortsPerUid => self.ports_per_uid = count,
            Limit::FiltersPerSession => self.filters_per_session = count,
            Limit::RingBytesPerSession => self.ring_bytes_per_session = value,
            Limit::RingBytesPerUid => self.ring_bytes_per_uid = value,
            Limit::RingBytesPerInstance => self.ring_bytes_per_instance = value,
            Limit::BufferedBytesPerUid => self.buffered_bytes_per_uid = value,
        }
    }
}

/// A refusal because a limit was reached: says which, its value, and the setting to raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "limit reached: {limit} ({value}); raise limits.{} in netd's configuration file",
    limit.name()
)]
pub struct LimitReached {
    /// The limit.
    pub limit: Limit,
    /// Its value.
    pub value: u64,
}

impl LimitReached {
    /// The refusal for `limit` under `limits`.
    pub fn of(limits: &Limits, limit: Limit) -> LimitReached {
        LimitReached {
            limit,
            value: limits.get(limit),
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
