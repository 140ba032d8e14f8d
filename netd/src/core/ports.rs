//! The port table: who holds which TCP and UDP port, and the rule that a port is handed out
//! again only after the driver confirmed its filters are gone.
//!
//! A port moves `Free -> Bound(owner) -> Releasing(owner) -> Free`. `Releasing` covers the time
//! between a close (or the owner's death) and the driver's confirmation that the port's rx and
//! tx filters were removed; a bind in that window is refused, so a new owner can never receive
//! frames through the old owner's filters. Every operation is O(1) except ephemeral allocation,
//! which scans from a rotating cursor and stops early when the range is known to be full.

use std::ops::RangeInclusive;

use super::session::SessionId;

/// The default ephemeral range: IANA's dynamic ports (RFC 6335).
pub const DEFAULT_EPHEMERAL: RangeInclusive<u16> = 49152..=65535;
/// Ports below this need privilege (uid 0 or a configured uid), as on every Unix.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

pub use netmux_proto::client::Transport;

/// The index of a transport in per-transport tables.
fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Tcp => 0,
        Transport::Udp => 1,
    }
}

/// Where one port stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Nobody holds it.
    Free,
    /// Held by a session.
    Bound(SessionId),
    /// Closed by its owner; waiting for the driver to confirm its filters are gone.
    Releasing(SessionId),
}

/// Why a port request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Port 0 is not a port.
    #[error("port 0 cannot be bound")]
    Zero,
    /// Another session (or the same one) holds the port.
    #[error("{transport} port {port} is in use")]
    InUse {
        /// The transport.
        transport: Transport,
        /// The port.
        port: u16,
    },
    /// The port is held for the uid that had it before netd restarted ([`crate::core::Core::hold`]).
    #[error(
        "{transport} port {port} is held for uid {uid}, which had it before netd restarted, \
         for {left_secs} s more (timeouts.port_grace)"
    )]
    Held {
        /// The transport.
        transport: Transport,
        /// The port.
        port: u16,
        /// The uid it is held for.
        uid: u32,
        /// Whole seconds left of the hold (rounded up).
        left_secs: u64,
    },
    /// The port's previous filters are still being removed at the driver.
    #[error("{transport} port {port} is being released; try again shortly")]
    Releasing {
        /// The transport.
        transport: Transport,
        /// The port.
        port: u16,
    },
    /// No ephemeral port is free.
    #[error("no free {0} port in the ephemeral range")]
    Exhausted(Transport),
    /// The port is not held by this session.
    #[error("{transport} port {port} is not bound by this session")]
    NotOwner {
        /// The transport.
        transport: Transport,
        /// The port.
        port: u16,
    },
    /// The port is not in the releasing state (a confirmation nobody asked for).
    #[error("{transport} port {port} is not being released")]
    NotReleasing {
        /// The transport.
        transport: Transport,
        /// The port.
        port: u16,
    },
}

/// The port table for TCP and UDP.
#[derive(Clone, Debug)]
pub struct PortTable {
    ephemeral: RangeInclusive<u16>,
    /// 65,536 states per transport: O(1) for everything, 1 MiB in all.
    states: [Vec<PortState>; 2],
    /// Free ports inside the ephemeral range, per transport.
    ephemeral_free: [usize; 2],
    cursor: [u16; 2],
}

impl PortTable {
    /// A table whose ephemeral ports are `ephemeral` (must not include 0).
    pub fn new(ephemeral: RangeInclusive<u16>) -> PortTable {
        let ephemeral = (*ephemeral.start()).max(1)..=*ephemeral.end();
        let size = ephemeral.clone().count();
        PortTable {
            cursor: [*ephemeral.start(); 2],
            ephemeral,
            states: [vec![PortState::Free; 65536], vec![PortState::Free; 65536]],
            ephemeral_free: [size; 2],
        }
    }

    /// The ephemeral range.
    pub fn ephemeral(&self) -> &RangeInclusive<u16> {
        &self.ephemeral
    }

    /// Changes the ephemeral range (must not include 0); ports bound stay bound, wherever
    /// they are.
    pub fn set_ephemeral(&mut self, ephemeral: RangeInclusive<u16>) {
        let ephemeral = (*ephemeral.start()).max(1)..=*ephemeral.end();
        for t in 0..2 {
            self.ephemeral_free[t] = ephemeral
                .clone()
                .filter(|&p| self.states[t][usize::from(p)] == PortState::Free)
                .count();
            self.cursor[t] = *ephemeral.start();
        }
        self.ephemeral = ephemeral;
    }

    /// The state of a port.
    pub fn state(&self, transport: Transport, port: u16) -> PortState {
        self.states[transport_index(transport)][usize::from(port)]
    }

    fn set(&mut self, transport: Transport, port: u16, new: PortState) {
        let t = transport_index(transport);
        let old = std::mem::replace(&mut self.states[t][usize::from(port)], new);
        if self.ephemeral.contains(&port) {
            match (old == PortState::Free, new == PortState::Free) {
                (true, false) => self.ephemeral_free[t] -= 1,
                (false, true) => self.ephemeral_free[t] += 1,
                _ => {}
            }
        }
    }

    /// Binds a specific port for `owner`. Privilege is the policy's business, not the table's.
    pub fn bind(
        &mut self,
        transport: Transport,
        port: u16,
        owner: SessionId,
    ) -> Result<(), PortError> {
        match self.state(transport, port) {
            _ if port == 0 => Err(PortError::Zero),
            PortState::Free => {
                self.set(transport, port, PortState::Bound(owner));
                Ok(())
            }
            PortState::Bound(_) => Err(PortError::InUse { transport, port }),
            PortState::Releasing(_) => Err(PortError::Releasing { transport, port }),
        }
    }

    /// Binds a free port from the ephemeral range, rotating so a just-released port is not the
    /// next one handed out.
    pub fn bind_ephemeral(
        &mut self,
        transport: Transport,
        owner: SessionId,
    ) -> Result<u16, PortError> {
        let t = transport_index(transport);
        if self.ephemeral_free[t] == 0 {
            return Err(PortError::Exhausted(transport));
        }
        let (first, last) = (*self.ephemeral.start(), *self.ephemeral.end());
        let mut port = self.cursor[t];
        loop {
            let next = if port == last { first } else { port + 1 };
            if self.state(transport, port) == PortState::Free {
                self.cursor[t] = next;
                self.set(transport, port, PortState::Bound(owner));
                return Ok(port);
            }
            port = next;
        }
    }

    /// Starts releasing a port its owner closed: it stays unusable until
    /// [`PortTable::release_confirmed`].
    pub fn release(
        &mut self,
        transport: Transport,
        port: u16,
        owner: SessionId,
    ) -> Result<(), PortError> {
        match self.state(transport, port) {
            PortState::Bound(o) if o == owner => {
                self.set(transport, port, PortState::Releasing(owner));
                Ok(())
            }
            _ => Err(PortError::NotOwner { transport, port }),
        }
    }

    /// Frees a port at once: for a bind whose filters never reached the driver.
    pub fn unbind_uninstalled(
        &mut self,
        transport: Transport,
        port: u16,
        owner: SessionId,
    ) -> Result<(), PortError> {
        match self.state(transport, port) {
            PortState::Bound(o) if o == owner => {
                self.set(transport, port, PortState::Free);
                Ok(())
            }
            _ => Err(PortError::NotOwner { transport, port }),
        }
    }

    /// The driver confirmed the port's filters are gone: the port is free again.
    pub fn release_confirmed(
        &mut self,
        transport: Transport,
        port: u16,
    ) -> Result<SessionId, PortError> {
        match self.state(transport, port) {
            PortState::Releasing(owner) => {
                self.set(transport, port, PortState::Free);
                Ok(owner)
            }
            _ => Err(PortError::NotReleasing { transport, port }),
        }
    }

    /// Frees every port being released, whoever released it: the driver that held their
    /// filters was replaced by one that has none. Returns how many.
    pub fn free_releasing(&mut self) -> usize {
        let mut freed = 0;
        for transport in [Transport::Tcp, Transport::Udp] {
            for port in 0..=u16::MAX {
                if matches!(self.state(transport, port), PortState::Releasing(_)) {
                    self.set(transport, port, PortState::Free);
                    freed += 1;
                }
            }
        }
        freed
    }

    /// Free ephemeral ports left for a transport.
    pub fn ephemeral_free(&self, transport: Transport) -> usize {
        self.ephemeral_free[transport_index(transport)]
    }
}

impl Default for PortTable {
    fn default() -> Self {
        PortTable::new(DEFAULT_EPHEMERAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const A: SessionId = SessionId(1);
    const B: SessionId = SessionId(2);

    #[test]
    fn a_bound_port_is_refused_to_everyone_else() {
        let mut t = PortTable::default();
        t.bind(Transport::Udp, 53, A).unwrap();
        assert_eq!(
            t.bind(Transport::Udp, 53, B),
            Err(PortError::InUse {
                transport: Transport::Udp,
                port: 53
            })
        );
        // The other transport's port of the same number is independent.
        t.bind(Transport::Tcp, 53, B).unwrap();
        assert_eq!(t.bind(Transport::Udp, 0, A), Err(PortError::Zero));
    }

    #[test]
    fn a_closed_port_is_free_only_after_the_driver_confirms() {
        let mut t = PortTable::default();
        t.bind(Transport::Tcp, 8080, A).unwrap();
        assert!(
            t.release(Transport::Tcp, 8080, B).is_err(),
            "only the owner closes"
        );
        t.release(Transport::Tcp, 8080, A).unwrap();
        assert_eq!(
            t.bind(Transport::Tcp, 8080, B),
            Err(PortError::Releasing {
                transport: Transport::Tcp,
                port: 8080
            })
        );
        assert_eq!(t.release_confirmed(Transport::Tcp, 8080), Ok(A));
        t.bind(Transport::Tcp, 8080, B).unwrap();
        assert!(t.release_confirmed(Transport::Tcp, 8080).is_err());
    }

    #[test]
    fn ephemeral_ports_rotate_and_run_out() {
        let mut t = PortTable::new(60000..=60003);
        let got: Vec<u16> = (0..4)
            .map(|_| t.bind_ephemeral(Transport::Udp, A).unwrap())
            .collect();
        assert_eq!(got, [60000, 60001, 60002, 60003]);
        assert_eq!(
            t.bind_ephemeral(Transport::Udp, A),
            Err(PortError::Exhausted(Transport::Udp))
        );
        t.release(Transport::Udp, 60001, A).unwrap();
        assert_eq!(
            t.bind_ephemeral(Transport::Udp, B),
            Err(PortError::Exhausted(Transport::Udp))
        );
        t.release_confirmed(Transport::Udp, 60001).unwrap();
        assert_eq!(t.bind_ephemeral(Transport::Udp, B), Ok(60001));
        assert_eq!(t.ephemeral_free(Transport::Udp), 0);
        assert_eq!(t.ephemeral_free(Transport::Tcp), 4);
    }
}
