//! netd's I/O-free core: sessions, ports and policy as plain data structures.
//!
//! Like quinn-proto, the core owns no socket and reads no clock: the shell passes the time in
//! (a monotonic [`Duration`] since any fixed point) and carries out what the core decides. An
//! operation that needs the driver is split in two: the core reserves (a port is `Bound` but
//! `installing`), the shell installs the filters at the driver, and only its confirmation
//! ([`Core::port_installed`]) makes the port active — the reply goes out after that, so a client
//! never holds a port whose filters are not yet in force. Releases go the other way: a port is
//! free again only when the shell reports that the driver removed its filters.
//!
//! Guarantees, each tested below: no two sessions hold one port; privileged ports and taps only
//! for the uids the policy names; per-session and per-uid limits on sessions, ports, filters and
//! ring memory; a session's end lists everything it held in teardown order (ports, filters,
//! queue) and nothing it held is handed out before the driver confirmed its removal.

pub mod policy;
pub mod ports;
pub mod session;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

pub use policy::{Limit, LimitReached, Limits, Policy};
pub use ports::{PortError, PortState, PortTable, Transport};
pub use session::{Credentials, FilterId, FilterMode, Session, SessionId, SessionState};

/// Why the core refused a request. Each reaches the client as an error reply; none ends the
/// session by itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The session does not exist (ended, or never was).
    #[error("no such session")]
    NoSession,
    /// A request other than hello before the hello.
    #[error("say hello first")]
    NotActive,
    /// Hello twice.
    #[error("hello was already said")]
    AlreadyActive,
    /// A port operation failed.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The instance does not let this uid join it.
    #[error("uid {uid} may not join this instance")]
    NotMember {
        /// The caller's uid.
        uid: u32,
    },
    /// A port below 1024 without privilege.
    #[error("port {port} is privileged (below 1024); uid {uid} may not bind it")]
    Privileged {
        /// The port.
        port: u16,
        /// The caller's uid.
        uid: u32,
    },
    /// The policy does not allow this uid a tap or exclusive filter.
    #[error("uid {uid} may not open a {mode:?} filter")]
    FilterNotAllowed {
        /// The caller's uid.
        uid: u32,
        /// The kind asked for.
        mode: FilterMode,
    },
    /// A limit was reached.
    #[error(transparent)]
    Limit(#[from] LimitReached),
    /// The filter is not this session's.
    #[error("no such filter in this session")]
    NoFilter,
}

/// What a session held when it ended, in the order the shell must remove it at the driver:
/// ports (their rx and tx filters), then tap/exclusive filters, then the queue and its rings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Teardown {
    /// Ports now `Releasing`: remove their filters, then call [`Core::port_removed`].
    pub ports: Vec<(Transport, u16)>,
    /// Ports whose filters were still being installed: remove whatever arrived, then call
    /// [`Core::port_removed`] as well.
    pub installing: Vec<(Transport, u16)>,
    /// Tap and exclusive filters to remove.
    pub filters: Vec<FilterId>,
    /// Whether the session had a queue to destroy.
    pub queue: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct UidUsage {
    sessions: usize,
    ports: usize,
    ring_bytes: u64,
}

/// The owner a held port is bound to in the port table ([`Core::hold`]): no session has it
/// (sessions are numbered from 1).
pub const HOLD_OWNER: SessionId = SessionId(0);

/// A port kept for a uid after a netd restart ([`Core::hold`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    /// The uid that had it.
    pub uid: u32,
    /// Until when (the shell's clock).
    pub until: Duration,
}

/// The core. See the module documentation.
#[derive(Debug)]
pub struct Core {
    policy: Policy,
    ports: PortTable,
    /// Ports kept for the uid that had them before netd restarted.
    held: HashMap<(Transport, u16), Hold>,
    sessions: BTreeMap<SessionId, Session>,
    uids: HashMap<u32, UidUsage>,
    /// Ring memory of every session's queue.
    ring_bytes: u64,
    /// The latest time the shell passed in ([`Core::expire_holds`]).
    now_hint: Duration,
    next_session: u64,
    next_filter: u64,
    /// Changes to the bound and held ports so far ([`Core::ports_version`]).
    ports_version: u64,
}

impl Core {
    /// A core with this policy and ephemeral port range.
    pub fn new(policy: Policy, ports: PortTable) -> Core {
        Core {
            policy,
            ports,
            held: HashMap::new(),
            ports_version: 0,
            sessions: BTreeMap::new(),
            uids: HashMap::new(),
            ring_bytes: 0,
            now_hint: Duration::ZERO,
            next_session: 1,
            next_filter: 1,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The port table (read-only).
    pub fn ports(&self) -> &PortTable {
        &self.ports
    }

    /// A session, if it exists.
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    /// Every session, in id order.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    fn limit(&self, limit: Limit) -> CoreError {
        LimitReached::of(&self.policy.limits, limit).into()
    }

    fn usage(&mut self, uid: u32) -> &mut UidUsage {
        self.uids.entry(uid).or_default()
    }

    /// A client connected with these kernel-reported credentials at `now`.
    pub fn connect(&mut self, creds: Credentials, now: Duration) -> Result<SessionId, CoreError> {
        let limit = self.policy.limits.sessions_per_uid;
        let usage = self.usage(creds.uid);
        if usage.sessions >= limit {
            return Err(self.limit(Limit::SessionsPerUid));
        }
        usage.sessions += 1;
        let id = SessionId(self.next_session);
        self.next_session += 1;
        let deadline = now.saturating_add(self.policy.handshake_timeout);
        self.sessions.insert(
            id,
            Session {
                id,
                creds,
                state: SessionState::Handshake { deadline },
                ports: Default::default(),
                installing: Default::default(),
                filters: Default::default(),
                ring_bytes: 0,
            },
        );
        Ok(id)
    }

    /// Takes a session that has not said hello out of this core (it joins another instance's
    /// core with [`Core::adopt`]), with its uid's count.
    pub fn take_handshake(&mut self, id: SessionId) -> Result<Session, CoreError> {
        let s = self.sessions.get(&id).ok_or(CoreError::NoSession)?;
        if s.state == SessionState::Active {
            return Err(CoreError::AlreadyActive);
        }
        let s = self.sessions.remove(&id).ok_or(CoreError::NoSession)?;
        self.ports_version += 1;
        let usage = self.usage(s.creds.uid);
        usage.sessions -= 1;
        if usage.sessions == 0 {
            self.uids.remove(&s.creds.uid);
        }
        Ok(s)
    }

    /// Takes in a session another core gave up ([`Core::take_handshake`]), if this core's
    /// limits allow its uid one more.
    pub fn adopt(&mut self, session: Session) -> Result<(), CoreError> {
        let limit = self.policy.limits.sessions_per_uid;
        let usage = self.usage(session.creds.uid);
        if usage.sessions >= limit {
            return Err(self.limit(Limit::SessionsPerUid));
        }
        usage.sessions += 1;
        self.sessions.insert(session.id, session);
        self.ports_version += 1;
        Ok(())
    }

    /// Whether `uid` may join this core's instance.
    pub fn may_join(&self, uid: u32) -> bool {
        self.policy.may_join(uid)
    }

    /// Number of ports bound (in force or being installed) over every session.
    pub fn port_count(&self) -> usize {
        self.sessions.values().map(Session::port_count).sum()
    }

    /// The policy, writable (an instance's properties change it).
    pub fn policy_mut(&mut self) -> &mut Policy {
        &mut self.policy
    }

    /// The port table, writable (an instance's ephemeral range changes it).
    pub fn ports_mut(&mut self) -> &mut PortTable {
        &mut self.ports
    }

    /// The client said hello.
    pub fn hello(&mut self, id: SessionId) -> Result<(), CoreError> {
        let s = self.sessions.get_mut(&id).ok_or(CoreError::NoSession)?;
        if s.state == SessionState::Active {
            return Err(CoreError::AlreadyActive);
        }
        s.state = SessionState::Active;
        Ok(())
    }

    /// Sessions whose handshake deadline passed at `now`; the shell ends each with
    /// [`Core::disconnect`].
    pub fn expired(&self, now: Duration) -> Vec<SessionId> {
        self.sessions
            .values()
            .filter(|s| matches!(s.state, SessionState::Handshake { deadline } if deadline <= now))
            .map(|s| s.id)
            .collect()
    }

    fn active(&self, id: SessionId) -> Result<&Session, CoreError> {
        let s = self.sessions.get(&id).ok_or(CoreError::NoSession)?;
        match s.state {
            SessionState::Active => Ok(s),
            SessionState::Handshake { .. } => Err(CoreError::NotActive),
        }
    }

    fn check_port_limits(&self, id: SessionId) -> Result<u32, CoreError> {
        let s = self.active(id)?;
        let limits = &self.policy.limits;
        if s.port_count() >= limits.ports_per_session {
            return Err(self.limit(Limit::PortsPerSession));
        }
        let uid = s.creds.uid;
        if self.uids.get(&uid).map_or(0, |u| u.ports) >= limits.ports_per_uid {
            return Err(self.limit(Limit::PortsPerUid));
        }
        Ok(uid)
    }

    fn reserved(&mut self, id: SessionId, uid: u32, transport: Transport, port: u16) {
        self.usage(uid).ports += 1;
        let s = self.sessions.get_mut(&id).expect("checked active");
        s.installing.insert((transport, port));
    }

    /// Reserves an ephemeral port. The shell installs its filters, then calls
    /// [`Core::port_installed`] (or [`Core::port_install_failed`]) and only then replies.
    pub fn get_port(&mut self, id: SessionId, transport: Transport) -> Result<u16, CoreError> {
        let uid = self.check_port_limits(id)?;
        let port = self.ports.bind_ephemeral(transport, id)?;
        self.reserved(id, uid, transport, port);
        Ok(port)
    }

    /// Reserves a given port; see [`Core::get_port`].
    pub fn bind_port(
        &mut self,
        id: SessionId,
        transport: Transport,
        port: u16,
    ) -> Result<(), CoreError> {
        let uid = self.check_port_limits(id)?;
        if port != 0
            && port < ports::FIRST_UNPRIVILEGED_PORT
            && !self.policy.may_bind_privileged(uid)
        {
            return Err(CoreError::Privileged { port, uid });
        }
        if let Some(hold) = self.held.get(&(transport, port)).copied() {
            if hold.uid != uid {
                let left = hold.until.saturating_sub(self.now_hint);
                return Err(PortError::Held {
                    transport,
                    port,
                    uid: hold.uid,
                    left_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
                }
                .into());
            }
            // Its uid is back for it.
            self.held.remove(&(transport, port));
            self.ports_version += 1;
            self.ports.unbind_uninstalled(transport, port, HOLD_OWNER)?;
        }
        self.ports.bind(transport, port, id)?;
        self.reserved(id, uid, transport, port);
        Ok(())
    }

    /// Keeps a free port for `uid` until `until` (a netd restarted: the uid's client had it
    /// and may come back for it): only `uid` may bind it meanwhile, and no ephemeral request
    /// gets it. Returns whether it is held (a port already taken is not).
    pub fn hold(&mut self, transport: Transport, port: u16, uid: u32, until: Duration) -> bool {
        if port == 0 || self.ports.bind(transport, port, HOLD_OWNER).is_err() {
            return false;
        }
        self.held.insert((transport, port), Hold { uid, until });
        self.ports_version += 1;
        true
    }

    /// Frees the held ports whose time is up at `now`; returns how many. Also the time a
    /// refusal counts the hold's remaining seconds from.
    pub fn expire_holds(&mut self, now: Duration) -> usize {
        self.now_hint = now;
        let over: Vec<(Transport, u16)> = self
            .held
            .iter()
            .filter(|(_, h)| h.until <= now)
            .map(|(&k, _)| k)
            .collect();
        self.ports_version += over.len() as u64;
        for &(t, p) in &over {
            self.held.remove(&(t, p));
            let _ = self.ports.unbind_uninstalled(t, p, HOLD_OWNER);
        }
        over.len()
    }

    /// A number that changes whenever the set of active ports of the sessions or of held
    /// ports ([`Core::held`]) may have changed, so the shell rewrites netd's ports file only
    /// then, without looking at every port on every tick.
    pub fn ports_version(&self) -> u64 {
        self.ports_version
    }

    /// The ports held ([`Core::hold`]), with their holds.
    pub fn held(&self) -> impl Iterator<Item = ((Transport, u16), Hold)> + '_ {
        self.held.iter().map(|(&k, &h)| (k, h))
    }

    /// The driver installed the port's filters: the port is active and the reply may go out.
    pub fn port_installed(
        &mut self,
        id: SessionId,
        transport: Transport,
        port: u16,
    ) -> Result<(), CoreError> {
        let s = self.sessions.get_mut(&id).ok_or(CoreError::NoSession)?;
        if !s.installing.remove(&(transport, port)) {
            return Err(PortError::NotOwner { transport, port }.into());
        }
        s.ports.insert((transport, port));
        self.ports_version += 1;
        Ok(())
    }

    /// Takes a port out of a session's active (or installing) set and the uid's count.
    fn forget_port(
        &mut self,
        id: SessionId,
        transport: Transport,
        port: u16,
        installing: bool,
    ) -> Result<(), CoreError> {
        let s = self.sessions.get_mut(&id).ok_or(CoreError::NoSession)?;
        let set = if installing {
            &mut s.installing
        } else {
            &mut s.ports
        };
        if !set.remove(&(transport, port)) {
            return Err(PortError::NotOwner { transport, port }.into());
        }
        let uid = s.creds.uid;
        self.ports_version += 1;
        self.usage(uid).ports -= 1;
        Ok(())
    }

    /// The driver refused the port's filters: nothing was installed, the port is free at once.
    pub fn port_install_failed(
        &mut self,
        id: SessionId,
        transport: Transport,
        port: u16,
    ) -> Result<(), CoreError> {
        self.forget_port(id, transport, port, true)?;
        self.ports.unbind_uninstalled(transport, port, id)?;
        Ok(())
    }

    /// The client closed a port: it is `Releasing` until [`Core::port_removed`].
    pub fn close_port(
        &mut self,
        id: SessionId,
        transport: Transport,
        port: u16,
    ) -> Result<(), CoreError> {
        self.forget_port(id, transport, port, false)?;
        self.ports.release(transport, port, id)?;
        Ok(())
    }

    /// The driver confirmed a released port's filters are gone: the port is free.
    pub fn port_removed(&mut self, transport: Transport, port: u16) -> Result<(), CoreError> {
        self.ports.release_confirmed(transport, port)?;
        Ok(())
    }

    /// Opens a tap or exclusive filter, if the policy allows this session's uid.
    pub fn open_filter(&mut self, id: SessionId, mode: FilterMode) -> Result<FilterId, CoreError> {
        let s = self.active(id)?;
        let uid = s.creds.uid;
        let allowed = match mode {
            FilterMode::Tap => self.policy.may_tap(uid),
            FilterMode::Exclusive => self.policy.may_claim_exclusive(uid),
        };
        if !allowed {
            return Err(CoreError::FilterNotAllowed { uid, mode });
        }
        if s.filters.len() >= self.policy.limits.filters_per_session {
            return Err(self.limit(Limit::FiltersPerSession));
        }
        let f = FilterId(self.next_filter);
        self.next_filter += 1;
        self.sessions
            .get_mut(&id)
            .expect("checked active")
            .filters
            .insert((f, mode));
        Ok(f)
    }

    /// Closes a tap or exclusive filter.
    pub fn close_filter(&mut self, id: SessionId, filter: FilterId) -> Result<(), CoreError> {
        let s = self.sessions.get_mut(&id).ok_or(CoreError::NoSession)?;
        let entry = s.filters.iter().find(|(f, _)| *f == filter).copied();
        match entry {
            Some(e) => {
                s.filters.remove(&e);
                Ok(())
            }
            None => Err(CoreError::NoFilter),
        }
    }

    /// Accounts for ring memory of the session's queue before the shell makes it, against
    /// the session's, its uid's and the instance's budgets.
    pub fn reserve_ring(&mut self, id: SessionId, bytes: u64) -> Result<(), CoreError> {
        let s = self.active(id)?;
        let uid = s.creds.uid;
        let limits = &self.policy.limits;
        let new_session = s.ring_bytes.saturating_add(bytes);
        if new_session > limits.ring_bytes_per_session {
            return Err(self.limit(Limit::RingBytesPerSession));
        }
        if self.ring_bytes.saturating_add(bytes) > limits.ring_bytes_per_instance {
            return Err(self.limit(Limit::RingBytesPerInstance));
        }
        let per_uid = limits.ring_bytes_per_uid;
        let usage = self.usage(uid);
        if usage.ring_bytes.saturating_add(bytes) > per_uid {
            return Err(self.limit(Limit::RingBytesPerUid));
        }
        usage.ring_bytes += bytes;
        self.ring_bytes += bytes;
        self.sessions
            .get_mut(&id)
            .expect("checked active")
            .ring_bytes = new_session;
        Ok(())
    }

    /// Gives back ring memory reserved with [`Core::reserve_ring`] (a queue the driver did
    /// not make, or one made smaller), so it does not eat the session's budget.
    pub fn release_ring(&mut self, id: SessionId, bytes: u64) -> Result<(), CoreError> {
        let s = self.sessions.get_mut(&id).ok_or(CoreError::NoSession)?;
        let bytes = bytes.min(s.ring_bytes);
        s.ring_bytes -= bytes;
        let uid = s.creds.uid;
        self.ring_bytes = self.ring_bytes.saturating_sub(bytes);
        let usage = self.usage(uid);
        usage.ring_bytes = usage.ring_bytes.saturating_sub(bytes);
        Ok(())
    }

    /// Ring memory of every queue of the instance.
    pub fn ring_bytes(&self) -> u64 {
        self.ring_bytes
    }

    /// Ends a session (the client closed, died, broke the protocol or timed out). Its ports go
    /// to `Releasing`; the returned [`Teardown`] says what the shell must remove at the driver.
    pub fn disconnect(&mut self, id: SessionId) -> Result<Teardown, CoreError> {
        let s = self.sessions.remove(&id).ok_or(CoreError::NoSession)?;
        self.ports_version += 1;
        let mut teardown = Teardown {
            queue: s.ring_bytes > 0,
            ..Teardown::default()
        };
        for &(t, p) in &s.ports {
            self.ports.release(t, p, id)?;
            teardown.ports.push((t, p));
        }
        for &(t, p) in &s.installing {
            // Filters may be half-installed: treat like a bound port, release after removal.
            self.ports.release(t, p, id)?;
            teardown.installing.push((t, p));
        }
        teardown.filters = s.filters.iter().map(|(f, _)| *f).collect();
        self.ring_bytes = self.ring_bytes.saturating_sub(s.ring_bytes);
        let usage = self.usage(s.creds.uid);
        usage.sessions -= 1;
        usage.ports -= s.port_count();
        usage.ring_bytes -= s.ring_bytes;
        if usage.sessions == 0 {
            self.uids.remove(&s.creds.uid);
        }
        Ok(teardown)
    }
}

impl Default for Core {
    fn default() -> Self {
        Core::new(Policy::default(), PortTable::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::ZERO;

    /// The limit a refusal names, if it is one.
    fn limit_hit<T: std::fmt::Debug>(r: Result<T, CoreError>) -> Option<Limit> {
        match r {
            Err(CoreError::Limit(l)) => Some(l.limit),
            other => panic!("expected a limit, got {other:?}"),
        }
    }

    fn user(uid: u32) -> Credentials {
        Credentials {
            pid: 100 + uid,
            uid,
            gid: uid,
        }
    }

    fn active(core: &mut Core, uid: u32) -> SessionId {
        let s = core.connect(user(uid), T0).unwrap();
        core.hello(s).unwrap();
        s
    }

    fn bind(core: &mut Core, s: SessionId, t: Transport, port: u16) -> Result<(), CoreError> {
        core.bind_port(s, t, port)?;
        core.port_installed(s, t, port)
    }

    #[test]
    fn a_held_port_is_refused_to_other_uids_given_to_its_own_and_freed_when_its_time_is_up() {
        let mut core = Core::default();
        let until = Duration::from_secs(10);
        assert!(core.hold(Transport::Udp, 7000, 1000, until));
        assert!(core.hold(Transport::Udp, 7001, 1000, until));
        assert!(
            !core.hold(Transport::Udp, 7000, 1001, until),
            "held already"
        );
        let other = active(&mut core, 1001);
        let e = bind(&mut core, other, Transport::Udp, 7000).unwrap_err();
        assert!(
            matches!(
                e,
                CoreError::Port(PortError::Held {
                    uid: 1000,
                    left_secs: 10,
                    ..
                })
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("held for uid 1000"), "{e}");
        // An ephemeral request never gets a held port.
        core.ports_mut().set_ephemeral(7000..=7002);
        assert_eq!(core.get_port(other, Transport::Udp), Ok(7002));
        let own = active(&mut core, 1000);
        bind(&mut core, own, Transport::Udp, 7000).unwrap();
        assert_eq!(core.held().count(), 1);
        assert_eq!(core.expire_holds(until - Duration::from_millis(1)), 0);
        assert_eq!(core.expire_holds(until), 1);
        bind(&mut core, other, Transport::Udp, 7001).unwrap();
        assert_eq!(core.held().count(), 0);
    }

    #[test]
    fn requests_before_hello_are_refused_and_a_silent_client_expires() {
        let mut core = Core::default();
        let s = core.connect(user(1000), T0).unwrap();
        assert_eq!(core.get_port(s, Transport::Udp), Err(CoreError::NotActive));
        assert!(core.expired(Duration::from_secs(4)).is_empty());
        assert_eq!(core.expired(Duration::from_secs(5)), vec![s]);
        core.disconnect(s).unwrap();
        assert_eq!(core.hello(s), Err(CoreError::NoSession));
    }

    #[test]
    fn a_port_held_by_one_session_is_refused_to_another() {
        let mut core = Core::default();
        let (a, b) = (active(&mut core, 1000), active(&mut core, 1001));
        bind(&mut core, a, Transport::Udp, 5353).unwrap();
        assert_eq!(
            core.bind_port(b, Transport::Udp, 5353),
            Err(CoreError::Port(PortError::InUse {
                transport: Transport::Udp,
                port: 5353
            }))
        );
    }

    #[test]
    fn privileged_ports_only_for_root_and_configured_uids() {
        let mut policy = Policy::default();
        policy.privileged_uids.insert(53);
        let mut core = Core::new(policy, PortTable::default());
        let (user_s, dns, root) = (
            active(&mut core, 1000),
            active(&mut core, 53),
            active(&mut core, 0),
        );
        assert_eq!(
            core.bind_port(user_s, Transport::Tcp, 80),
            Err(CoreError::Privileged {
                port: 80,
                uid: 1000
            })
        );
        bind(&mut core, dns, Transport::Udp, 53).unwrap();
        bind(&mut core, root, Transport::Tcp, 80).unwrap();
    }

    #[test]
    fn a_dead_clients_ports_are_free_only_after_the_driver_confirms() {
        let mut core = Core::default();
        let (a, b) = (active(&mut core, 1000), active(&mut core, 1000));
        bind(&mut core, a, Transport::Tcp, 8080).unwrap();
        core.bind_port(a, Transport::Udp, 9000).unwrap(); // still installing
        let f = core.open_filter(a, FilterMode::Tap);
        assert!(f.is_err(), "uid 1000 is not allowed taps by default");
        core.reserve_ring(a, 1 << 20).unwrap();
        let t = core.disconnect(a).unwrap();
        assert_eq!(t.ports, vec![(Transport::Tcp, 8080)]);
        assert_eq!(t.installing, vec![(Transport::Udp, 9000)]);
        assert!(t.queue);
        assert!(matches!(
            core.bind_port(b, Transport::Tcp, 8080),
            Err(CoreError::Port(PortError::Releasing { .. }))
        ));
        core.port_removed(Transport::Tcp, 8080).unwrap();
        core.port_removed(Transport::Udp, 9000).unwrap();
        bind(&mut core, b, Transport::Tcp, 8080).unwrap();
        bind(&mut core, b, Transport::Udp, 9000).unwrap();
    }

    #[test]
    fn a_failed_install_frees_the_port_at_once() {
        let mut core = Core::default();
        let a = active(&mut core, 1000);
        let p = core.get_port(a, Transport::Udp).unwrap();
        core.port_install_failed(a, Transport::Udp, p).unwrap();
        assert_eq!(core.ports().state(Transport::Udp, p), PortState::Free);
        assert!(core.session(a).unwrap().ports.is_empty());
    }

    #[test]
    fn limits_per_session_and_per_uid_hold() {
        let mut policy = Policy::default();
        policy.limits.ports_per_session = 2;
        policy.limits.ports_per_uid = 3;
        policy.limits.sessions_per_uid = 2;
        policy.limits.ring_bytes_per_session = 100;
        policy.limits.ring_bytes_per_uid = 150;
        let mut core = Core::new(policy, PortTable::default());
        let (a, b) = (active(&mut core, 7), active(&mut core, 7));
        assert_eq!(
            limit_hit(core.connect(user(7), T0)),
            Some(Limit::SessionsPerUid)
        );
        core.get_port(a, Transport::Udp).unwrap();
        core.get_port(a, Transport::Tcp).unwrap();
        assert_eq!(
            limit_hit(core.get_port(a, Transport::Udp)),
            Some(Limit::PortsPerSession)
        );
        core.get_port(b, Transport::Udp).unwrap();
        assert_eq!(
            limit_hit(core.get_port(b, Transport::Udp)),
            Some(Limit::PortsPerUid)
        );
        core.reserve_ring(a, 100).unwrap();
        assert_eq!(
            limit_hit(core.reserve_ring(a, 1)),
            Some(Limit::RingBytesPerSession)
        );
        assert_eq!(
            limit_hit(core.reserve_ring(b, 51)),
            Some(Limit::RingBytesPerUid)
        );
        // Ending a session gives its share back to the uid.
        core.disconnect(a).unwrap();
        core.reserve_ring(b, 100).unwrap();
        core.get_port(b, Transport::Tcp).unwrap();
        core.connect(user(7), T0).unwrap();
    }

    #[test]
    fn taps_follow_the_policy_and_the_per_session_limit() {
        let mut policy = Policy::default();
        policy.tap_uids.insert(42);
        policy.limits.filters_per_session = 1;
        let mut core = Core::new(policy, PortTable::default());
        let s = active(&mut core, 42);
        let f = core.open_filter(s, FilterMode::Tap).unwrap();
        assert_eq!(
            limit_hit(core.open_filter(s, FilterMode::Tap)),
            Some(Limit::FiltersPerSession)
        );
        assert_eq!(
            core.open_filter(s, FilterMode::Exclusive),
            Err(CoreError::FilterNotAllowed {
                uid: 42,
                mode: FilterMode::Exclusive
            })
        );
        core.close_filter(s, f).unwrap();
        assert_eq!(core.close_filter(s, f), Err(CoreError::NoFilter));
        let t = core.disconnect(s).unwrap();
        assert!(t.filters.is_empty() && t.ports.is_empty() && !t.queue);
    }

    #[test]
    fn ring_memory_of_all_uids_together_is_bounded_per_instance() {
        let mut policy = Policy::default();
        policy.limits.ring_bytes_per_instance = 150;
        let mut core = Core::new(policy, PortTable::default());
        let (a, b) = (active(&mut core, 7), active(&mut core, 8));
        core.reserve_ring(a, 100).unwrap();
        let e = core.reserve_ring(b, 51).unwrap_err();
        assert_eq!(
            limit_hit::<()>(Err(e.clone())),
            Some(Limit::RingBytesPerInstance)
        );
        assert!(
            e.to_string()
                .contains("raise limits.ring_bytes_per_instance"),
            "{e}"
        );
        core.disconnect(a).unwrap();
        core.reserve_ring(b, 150).unwrap();
        assert_eq!(core.ring_bytes(), 150);
    }

    #[test]
    fn released_ring_memory_returns_to_the_session_and_the_uid() {
        let mut policy = Policy::default();
        policy.limits.ring_bytes_per_session = 100;
        let mut core = Core::new(policy, PortTable::default());
        let a = active(&mut core, 7);
        core.reserve_ring(a, 100).unwrap();
        core.release_ring(a, 100).unwrap();
        core.reserve_ring(a, 100).unwrap();
        // Never more than was reserved.
        core.release_ring(a, 1000).unwrap();
        assert_eq!(core.session(a).unwrap().ring_bytes, 0);
        assert!(!core.disconnect(a).unwrap().queue);
    }
}
