//! netd's side of the operator's tools: `netmux capture` (a session's queue becomes a passive
//! copy of a client or of the link) and `netmux firewall` (admin rules the driver applies).
//! Who may do what:
//! * a capture of a client: root, or the uid that owns the client; of the link: root and
//!   netd's admin uids;
//! * the firewall: root and netd's admin uids.

use netmux_proto::client::ClientReply;
use netmux_proto::driver::{InstanceId, QueueId};
use netmux_proto::ops::{
    CaptureRequest, CaptureSource, CaptureSpec, ClientName, FirewallRequest, OperatorReply,
    OperatorRequest, PropertyRequest, PropertyView, RuleCounters, RuleSpec, RuleText, RuleView,
};
use netmux_proto::{ErrorCode, ErrorReply};

use super::{core_error, driver_error, error, Netd, NewQueue, Pending, Response, Step};
use crate::core::{CoreError, SessionId};
use crate::driver_link::{DriverCommand, DriverOutcome};
use crate::filters;

/// Driver work of an operator request under way.
#[derive(Debug)]
pub(super) enum OpsPending {
    /// The capture's queue was made, then made a capture.
    Capture { session: SessionId, queue: NewQueue },
    /// A new rule list was given to the driver; in force once it confirmed.
    SetFirewall {
        session: SessionId,
        rules: Vec<FirewallEntry>,
    },
    /// The rules' counters, for `netmux firewall ls`.
    ListFirewall { session: SessionId },
    /// A queue's `rxbuf` or `txbuf` was given to the driver.
    SetBuf {
        session: SessionId,
        target: SessionId,
        queue: QueueId,
        /// `"rxbuf"` or `"txbuf"`.
        prop: &'static str,
        bytes: u64,
    },
}

/// The Ethernet header: the shortest frame the transmit check lets through (`mintu`).
pub const MIN_TX_FRAME: u64 = 14;
/// An Ethernet header and one VLAN tag besides the MTU (`maxtu`, as illumos vnd counts it).
pub const ETHERNET_VLAN_HEADER: u64 = 18;

/// A size as `netmux set` takes it: bytes, or K, M, G (1024-based), with an optional `B`.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let (digits, shift) = match t.chars().last()? {
        'K' | 'k' => (&t[..t.len() - 1], 10),
        'M' | 'm' => (&t[..t.len() - 1], 20),
        'G' | 'g' => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// One firewall rule as netd keeps it.
#[derive(Clone, Debug)]
pub(crate) struct FirewallEntry {
    /// netd's id of it (the driver's counters follow it).
    pub id: u64,
    /// Its instance.
    pub instance: InstanceId,
    /// The rule as the operator wrote it.
    pub rule: RuleText,
    /// The queue its `on` named when it was added (`None` without `on`).
    pub queue: Option<QueueId>,
    /// Whether it is forgotten when netd stops.
    pub temporary: bool,
    /// The verified program.
    pub program: Vec<u8>,
}

impl FirewallEntry {
    /// The rule as the driver takes it; `None` for an `on` rule whose client is not there.
    fn spec(&self) -> Option<RuleSpec> {
        if self.rule.on.is_some() && self.queue.is_none() {
            return None;
        }
        Some(RuleSpec {
            id: self.id,
            instance: self.instance,
            action: self.rule.action,
            direction: self.rule.direction,
            quick: self.rule.quick,
            queue: self.queue,
            program: self.program.clone(),
        })
    }
}

/// The firewall's rules, every instance's, in order.
#[derive(Debug, Default)]
pub(crate) struct FirewallState {
    pub rules: Vec<FirewallEntry>,
    next_id: u64,
}

impl FirewallState {
    /// A new rule's id.
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Rules compiled from their text (the configuration file's), with no client resolved.
    pub fn restore(
        &mut self,
        entries: impl IntoIterator<Item = (InstanceId, String)>,
    ) -> Result<(), String> {
        for (instance, text) in entries {
            let rule: RuleText = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
            let program =
                compile_rule(&rule.expr).map_err(|e| format!("{text:?}: {}", e.message))?;
            let id = self.id();
            self.rules.push(FirewallEntry {
                id,
                instance,
                rule,
                queue: None,
                temporary: false,
                program,
            });
        }
        Ok(())
    }

    /// The driver's rule list.
    pub fn specs(rules: &[FirewallEntry]) -> Vec<RuleSpec> {
        rules.iter().filter_map(FirewallEntry::spec).collect()
    }
}

/// A rule's expression as a verified program (an empty one matches every frame): what
/// `netmux firewall add` and the configuration file's rules are compiled with (public for the
/// `firewall_rules` fuzz target).
pub fn compile_rule(expr: &str) -> Result<Vec<u8>, ErrorReply> {
    filters::compile(expr)
        .map(|p| p.to_bytes())
        .map_err(|e| error(ErrorCode::BadFilter, e.to_string()))
}

impl Netd {
    /// The session a client's name refers to in `asker`'s instance, with its uid.
    fn resolve_client(
        &self,
        asker: SessionId,
        name: ClientName,
    ) -> Result<(SessionId, u32), ErrorReply> {
        let core = self
            .core_ref(asker)
            .ok_or_else(|| core_error(CoreError::NoSession))?;
        let not_found = || {
            error(
                ErrorCode::NotFound,
                format!("no client {name} in this instance (netmux ls lists them)"),
            )
        };
        let candidates: Vec<(SessionId, u32)> = core
            .sessions()
            .filter(|s| s.id != asker)
            .filter(|s| match name {
                ClientName::Pid(pid) => s.creds.pid == pid,
                ClientName::Session(id) => s.id.0 == id,
                ClientName::Port(t, p) => s.ports.contains(&(t, p)),
            })
            .map(|s| (s.id, s.creds.uid))
            .collect();
        // A process with several sessions: the one with a queue, if only one has one.
        let with_queue: Vec<(SessionId, u32)> = candidates
            .iter()
            .copied()
            .filter(|(s, _)| self.session_queue(*s).is_some())
            .collect();
        match (candidates.as_slice(), with_queue.as_slice()) {
            ([], _) => Err(not_found()),
            ([one], _) | (_, [one]) => Ok(*one),
            _ => Err(error(
                ErrorCode::InUse,
                format!("{name} has several sessions: name one as session:ID (netmux ls)"),
            )),
        }
    }

    /// A session's queue, if it has one.
    pub(super) fn session_queue(&self, id: SessionId) -> Option<QueueId> {
        self.sessions
            .get(&id)
            .and_then(|e| e.queue.as_ref().map(|q| q.id))
    }

    /// The uid of a session.
    fn uid_of(&self, id: SessionId) -> Result<u32, ErrorReply> {
        self.core_ref(id)
            .and_then(|c| c.session(id))
            .map(|s| s.creds.uid)
            .ok_or_else(|| core_error(CoreError::NoSession))
    }

    /// `netmux capture`: this session's queue, made now, becomes a capture.
    pub(super) fn capture(
        &mut self,
        id: SessionId,
        request: CaptureRequest,
    ) -> Result<Step, ErrorReply> {
        self.require_active(id)?;
        self.refuse_without_driver()?;
        let uid = self.uid_of(id)?;
        let source = match request.client {
            Some(name) => {
                let (target, owner) = self.resolve_client(id, name)?;
                if uid != 0 && uid != owner {
                    return Err(error(
                        ErrorCode::Denied,
                        format!("uid {uid} may not capture {name}: only root and its owner may"),
                    ));
                }
                let queue = self.session_queue(target).ok_or_else(|| {
                    error(
                        ErrorCode::NotFound,
                        format!("{name} has no queue yet: nothing passes through it"),
                    )
                })?;
                CaptureSource::Queue(queue)
            }
            None => {
                if uid != 0 && !self.admin_uids.contains(&uid) {
                    return Err(error(
                        ErrorCode::Denied,
                        format!(
                            "uid {uid} may not capture the whole link (root, or a uid netd's \
                             --admin-uid names)"
                        ),
                    ));
                }
                CaptureSource::Link
            }
        };
        if self.session_queue(id).is_some() {
            return Err(error(
                ErrorCode::InUse,
                "this session already has a queue; a capture needs a session of its own",
            ));
        }
        let program = if request.expr.trim().is_empty() {
            None
        } else {
            Some(
                filters::compile(&request.expr)
                    .map_err(|e| error(ErrorCode::BadFilter, e.to_string()))?
                    .to_bytes(),
            )
        };
        let mut commands = Vec::new();
        let (queue_id, queue) =
            self.queue_or_create(id, &mut commands, Some((self.rings, self.ring_bytes)))?;
        let Some(queue) = queue else {
            return Err(error(ErrorCode::Internal, "the capture's queue existed"));
        };
        commands.push(DriverCommand::Operator(OperatorRequest::StartCapture(
            CaptureSpec {
                queue: queue_id,
                source,
                directions: request.directions,
                snaplen: request.snaplen,
                program,
            },
        )));
        Ok(self.work(
            commands,
            true,
            Pending::Operator(OpsPending::Capture { session: id, queue }),
        ))
    }

    /// `netmux firewall`: the rules of the session's instance.
    pub(super) fn firewall(
        &mut self,
        id: SessionId,
        request: FirewallRequest,
    ) -> Result<Step, ErrorReply> {
        self.require_admin(id)?;
        self.refuse_without_driver()?;
        let instance = self.instance_of(id);
        if let FirewallRequest::List = request {
            return Ok(self.work(
                vec![DriverCommand::Operator(OperatorRequest::FirewallCounters)],
                true,
                Pending::Operator(OpsPending::ListFirewall { session: id }),
            ));
        }
        let mut rules = self.firewall.rules.clone();
        // Positions count the instance's own rules, from 1.
        let positions: Vec<usize> = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.instance == instance)
            .map(|(i, _)| i)
            .collect();
        let out_of_range = |at: usize| {
            error(
                ErrorCode::NotFound,
                format!(
                    "no rule {at}: this instance has {} (netmux firewall ls)",
                    positions.len()
                ),
            )
        };
        match request {
            FirewallRequest::Add {
                rule,
                at,
                temporary,
            } => {
                let program = compile_rule(&rule.expr)?;
                let queue = match rule.on {
                    Some(name) => {
                        let (target, _) = self.resolve_client(id, name)?;
                        Some(self.session_queue(target).ok_or_else(|| {
                            error(
                                ErrorCode::NotFound,
                                format!("{name} has no queue yet: nothing passes through it"),
                            )
                        })?)
                    }
                    None => None,
                };
                let index = match at {
                    None => rules.len(),
                    Some(0) => return Err(out_of_range(0)),
                    Some(n) if n <= positions.len() => positions[n - 1],
                    Some(n) if n == positions.len() + 1 => rules.len(),
                    Some(n) => return Err(out_of_range(n)),
                };
                let entry = FirewallEntry {
                    id: self.firewall.id(),
                    instance,
                    rule,
                    queue,
                    temporary,
                    program,
                };
                rules.insert(index, entry);
            }
            FirewallRequest::Remove { at } => {
                let index = at
                    .checked_sub(1)
                    .and_then(|i| positions.get(i).copied())
                    .ok_or_else(|| out_of_range(at))?;
                rules.remove(index);
            }
            FirewallRequest::Flush => rules.retain(|r| r.instance != instance),
            FirewallRequest::List => {}
        }
        let request = OperatorRequest::SetFirewall {
            rules: FirewallState::specs(&rules),
        };
        // The whole list travels in one control message: one too large for it would break
        // netd's connection to the driver, so it is refused here.
        let message = netmux_proto::driver::DriverRequest::Operator(request.clone());
        if netmux_proto::frame::encode(&message, 0).is_err() {
            return Err(error(
                ErrorCode::Limit,
                format!(
                    "the firewall's rules would not fit in one message to the driver ({} \
                     bytes at most): remove some, or merge them into fewer expressions",
                    netmux_proto::frame::MAX_BODY
                ),
            ));
        }
        Ok(self.work(
            vec![DriverCommand::Operator(request)],
            true,
            Pending::Operator(OpsPending::SetFirewall { session: id, rules }),
        ))
    }

    /// The instance's rules with the driver's counters.
    fn firewall_view(&self, id: SessionId, counters: &[RuleCounters]) -> Vec<RuleView> {
        let instance = self.instance_of(id);
        let live: std::collections::HashSet<QueueId> = self
            .sessions
            .values()
            .filter_map(|e| e.queue.as_ref().map(|q| q.id))
            .collect();
        self.firewall
            .rules
            .iter()
            .filter(|r| r.instance == instance)
            .enumerate()
            .map(|(i, r)| {
                let c = counters.iter().find(|c| c.id == r.id);
                RuleView {
                    number: i + 1,
                    rule: r.rule.clone(),
                    temporary: r.temporary || self.instances_file.is_none(),
                    dormant: r.rule.on.is_some() && !r.queue.is_some_and(|q| live.contains(&q)),
                    frames: c.map_or(0, |c| c.frames),
                    bytes: c.map_or(0, |c| c.bytes),
                }
            })
            .collect()
    }

    /// `netmux get`/`set`: a client's queue properties (illumos vndadm's), and netd's limits.
    /// Anyone may read their own clients'; root and netd's admin uids read every client's and
    /// change `rxbuf` and `txbuf`.
    pub(super) fn properties(
        &mut self,
        id: SessionId,
        request: PropertyRequest,
    ) -> Result<Step, ErrorReply> {
        self.require_active(id)?;
        let uid = self.uid_of(id)?;
        let admin = uid == 0 || self.admin_uids.contains(&uid);
        let name = request.client;
        let (target, owner) = self.resolve_client(id, name)?;
        if !admin && uid != owner {
            return Err(error(
                ErrorCode::Denied,
                format!("uid {uid} may not see {name}: only root, netd's admins and its owner"),
            ));
        }
        let Some(pair) = request.set.first() else {
            return Ok(Step::Reply(Response::reply(ClientReply::Properties(
                self.property_view(target)?,
            ))));
        };
        if request.set.len() > 1 {
            return Err(error(
                ErrorCode::Protocol,
                "set one property at a time (rxbuf and txbuf are the ones that change)",
            ));
        }
        let (prop, value) = pair.split_once('=').ok_or_else(|| {
            error(
                ErrorCode::Protocol,
                format!("invalid property name=value: {pair:?}"),
            )
        })?;
        let view = self.property_view(target)?;
        match view.iter().find(|p| p.name == prop) {
            None => {
                return Err(error(
                    ErrorCode::NotFound,
                    format!("unknown property: {prop}"),
                ))
            }
            Some(p) if !p.writable => {
                return Err(error(
                    ErrorCode::Denied,
                    format!("property {prop} is read-only"),
                ))
            }
            Some(_) => {}
        }
        if value.is_empty() {
            return Err(error(ErrorCode::Protocol, "property value required"));
        }
        if !admin {
            return Err(error(
                ErrorCode::Denied,
                format!("uid {uid} may not change {prop}: root and netd's admins may"),
            ));
        }
        let bytes = parse_size(value).ok_or_else(|| {
            error(
                ErrorCode::Protocol,
                format!("{prop}: {value:?} is not a size (bytes, or K, M, G, with an optional B)"),
            )
        })?;
        let (queue, rings) = self.opened_queue(target, name)?;
        let maxtu = u64::from(self.link.mtu) + ETHERNET_VLAN_HEADER;
        let (prop, ring_slots) = if prop == "txbuf" {
            ("txbuf", rings.tx_slots)
        } else {
            ("rxbuf", rings.rx_slots)
        };
        // The most the queue's ring holds: `maxsize` for rxbuf, the tx ring for txbuf.
        let most = u64::from(ring_slots) * u64::from(rings.slot_size);
        if !(maxtu..=most).contains(&bytes) {
            let bound = if prop == "rxbuf" {
                "maxsize"
            } else {
                "tx ring"
            };
            return Err(error(
                ErrorCode::Limit,
                format!("{prop} {bytes} is outside [maxtu {maxtu}, {bound} {most}]"),
            ));
        }
        self.refuse_without_driver()?;
        let slot = u64::from(rings.slot_size);
        let slots = u32::try_from(bytes.div_ceil(slot)).unwrap_or(u32::MAX);
        let request = if prop == "txbuf" {
            OperatorRequest::SetTxLimit {
                queue,
                slots: Some(slots),
            }
        } else {
            OperatorRequest::SetRxLimit {
                queue,
                slots: Some(slots),
            }
        };
        Ok(self.work(
            vec![DriverCommand::Operator(request)],
            true,
            Pending::Operator(OpsPending::SetBuf {
                session: id,
                target,
                queue,
                prop,
                bytes: u64::from(slots) * slot,
            }),
        ))
    }

    /// A client's queue once its client opened it (its rings are then of their final size).
    fn opened_queue(
        &self,
        target: SessionId,
        name: ClientName,
    ) -> Result<(QueueId, netmux_ring::QueueConfig), ErrorReply> {
        self.sessions
            .get(&target)
            .and_then(|e| e.queue.as_ref())
            .filter(|q| q.handout.is_none())
            .map(|q| (q.id, q.rings))
            .ok_or_else(|| {
                error(
                    ErrorCode::NotFound,
                    format!("{name} has not opened its queue yet"),
                )
            })
    }

    /// A client's queue properties, then netd's limits (read-only here: they are settings of
    /// netd's configuration file).
    fn property_view(&self, target: SessionId) -> Result<Vec<PropertyView>, ErrorReply> {
        let q = self
            .sessions
            .get(&target)
            .and_then(|e| e.queue.as_ref())
            .ok_or_else(|| error(ErrorCode::NotFound, "the client has no queue yet"))?;
        let slot = u64::from(q.rings.slot_size);
        let maxsize = u64::from(q.rings.rx_slots) * slot;
        let txbuf = self
            .txbuf
            .get(&q.id)
            .copied()
            .unwrap_or(u64::from(q.rings.tx_slots) * slot);
        let rxbuf = self.rxbuf.get(&q.id).copied().unwrap_or(maxsize);
        let maxtu = u64::from(self.link.mtu) + ETHERNET_VLAN_HEADER;
        let row = |name: &str, writable: bool, value: String| PropertyView {
            name: name.to_owned(),
            writable,
            value,
        };
        let mut view = vec![
            row("rxbuf", true, rxbuf.to_string()),
            row("txbuf", true, txbuf.to_string()),
            row("maxsize", false, maxsize.to_string()),
            row("mintu", false, MIN_TX_FRAME.to_string()),
            row("maxtu", false, maxtu.to_string()),
        ];
        view.extend(
            self.settings
                .iter()
                .filter(|(n, _)| n.starts_with("limits."))
                .map(|(n, v)| row(n, false, v.clone())),
        );
        Ok(view)
    }

    /// The outcomes of an operator request's driver work.
    pub(super) fn resume_ops(
        &mut self,
        pending: OpsPending,
        mut outcomes: Vec<DriverOutcome>,
    ) -> Step {
        match pending {
            OpsPending::Capture { session, queue } => {
                let mut it = std::mem::take(&mut outcomes).into_iter();
                if let Err((e, undo)) = self.queue_created(session, queue, &mut it) {
                    return self.undo_queue(session, e, undo, queue.reserved);
                }
                match it.next() {
                    Some(DriverOutcome::Operator(OperatorReply::Done)) => {
                        self.session_done(session);
                        Step::Reply(self.hand_out_queue(session))
                    }
                    other => {
                        let e = match other {
                            Some(DriverOutcome::Failed(e)) => driver_error(e),
                            _ => error(ErrorCode::Internal, "the capture was not started"),
                        };
                        if let Some(extra) = self.sessions.get_mut(&session) {
                            extra.queue = None;
                        }
                        self.undo_queue(
                            session,
                            e,
                            Some(vec![DriverCommand::DestroyQueue { queue: queue.id }]),
                            queue.reserved,
                        )
                    }
                }
            }
            OpsPending::SetFirewall { session, rules } => {
                self.session_done(session);
                match outcomes.pop() {
                    Some(DriverOutcome::Operator(OperatorReply::Done)) => {
                        self.firewall.rules = rules;
                        self.persist();
                        Step::Reply(Response::reply(ClientReply::Done))
                    }
                    Some(DriverOutcome::Failed(e)) => Step::Reply(Response::error(driver_error(e))),
                    _ => Step::Reply(Response::error(error(
                        ErrorCode::Internal,
                        "the driver did not take the rules",
                    ))),
                }
            }
            OpsPending::SetBuf {
                session,
                target,
                queue,
                prop,
                bytes,
            } => {
                self.session_done(session);
                match outcomes.pop() {
                    Some(DriverOutcome::Operator(OperatorReply::Done)) => {
                        // Values of queues that are gone are forgotten here.
                        let live: std::collections::HashSet<QueueId> = self
                            .sessions
                            .values()
                            .filter_map(|e| e.queue.as_ref().map(|q| q.id))
                            .collect();
                        self.rxbuf.retain(|q, _| live.contains(q));
                        self.txbuf.retain(|q, _| live.contains(q));
                        if prop == "txbuf" {
                            self.txbuf.insert(queue, bytes);
                        } else {
                            self.rxbuf.insert(queue, bytes);
                        }
                        let reply = self
                            .property_view(target)
                            .map(|v| Response::reply(ClientReply::Properties(v)))
                            .unwrap_or_else(Response::error);
                        Step::Reply(reply)
                    }
                    Some(DriverOutcome::Failed(e)) => Step::Reply(Response::error(driver_error(e))),
                    _ => Step::Reply(Response::error(error(
                        ErrorCode::Internal,
                        "the driver did not take the property",
                    ))),
                }
            }
            OpsPending::ListFirewall { session } => {
                self.session_done(session);
                match outcomes.pop() {
                    Some(DriverOutcome::Operator(OperatorReply::Firewall(counters))) => {
                        let view = self.firewall_view(session, &counters);
                        Step::Reply(Response::reply(ClientReply::Firewall(view)))
                    }
                    Some(DriverOutcome::Failed(e)) => Step::Reply(Response::error(driver_error(e))),
                    _ => Step::Reply(Response::error(error(
                        ErrorCode::Internal,
                        "the driver did not count the rules",
                    ))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_1024_based_suffixes_and_an_optional_b() {
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("64KB"), Some(65536));
        assert_eq!(parse_size("2m"), Some(2 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("1500B"), Some(1500));
        for bad in [
            "",
            "K",
            "-1",
            "1.5K",
            "1T",
            "99999999999999999999",
            "17179869184G",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
