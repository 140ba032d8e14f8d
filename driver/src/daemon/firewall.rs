//! The admin firewall: ordered rules `pass|block in|out [quick] [on QUEUE] PROGRAM` that netd
//! gives the driver for the operator (`netmux firewall`), as ipfilter's hooks on illumos vnd.
//! Clients never see them and have no request that reaches them.
//!
//! # Evaluation
//!
//! For a frame going `in` to a queue (after reassembly, before it is written into that
//! queue's rx ring) or `out` from a queue (after the queue's own transmit check passed), the
//! rules of that direction, of the queue's instance, and either for every queue or for that
//! one, are tried in order. A rule matches when its program accepts the frame; as in pf, the
//! last matching rule decides, unless a `quick` rule matches first, which decides at once. No
//! matching rule: pass. The deciding rule counts the frame and its bytes.
//!
//! # What a client cannot do to evade a rule
//!
//! * Fragments: received fragments reach the rules only as the whole datagram the reassembler
//!   made; transmitted fragments never reach them (the transmit check rejects them first).
//! * VLAN tags: a tagged frame is also shown to every rule without its tags (802.1Q and
//!   802.1ad, up to [`MAX_VLAN_TAGS`]), as illumos vnd strips them before its hooks; a rule
//!   that matches either view matches.
//! * IPv6: rules are pcap-filter programs, in which `port 7007` or `host X` means both IP
//!   versions; a rule written `ip ...` is about IPv4 only, as the operator wrote it.
//!
//! # Cost
//!
//! With no rule, the data path pays one `is_empty` test per frame.

use netmux_proto::driver::{InstanceId, QueueId};
use netmux_proto::ops::{RuleAction, RuleCounters, RuleDirection, RuleSpec};
use netmux_vm::{Engine, Scratch, Strategy};

/// Rules one driver holds: each is a program run on every frame of its direction.
pub const MAX_RULES: usize = 1024;
/// VLAN tags stripped for the untagged view of a frame (802.1ad then 802.1Q is two).
pub const MAX_VLAN_TAGS: usize = 2;

/// Ethertypes of a VLAN tag.
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;
const TPID_QINQ_OLD: u16 = 0x9100;

/// One rule on its engine.
struct Rule {
    spec_id: u64,
    instance: InstanceId,
    action: RuleAction,
    direction: RuleDirection,
    quick: bool,
    queue: Option<QueueId>,
    engine: Box<dyn Engine>,
    frames: u64,
    bytes: u64,
}

/// The rules, in order.
#[derive(Default)]
pub struct Firewall {
    rules: Vec<Rule>,
    /// Whether any rule looks at received frames (the rx path's only test).
    any_in: bool,
    /// Whether any looks at transmitted frames.
    any_out: bool,
    /// The untagged view of the frame being decided (reused).
    untagged: Vec<u8>,
}

impl std::fmt::Debug for Firewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firewall")
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

/// Why a rule list was refused (the rules in force stay).
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// Too many rules.
    #[error("at most {MAX_RULES} firewall rules")]
    TooMany,
    /// A rule's program does not verify or cannot run.
    #[error("firewall rule {id}: {why}")]
    Program {
        /// The rule's id.
        id: u64,
        /// Why.
        why: String,
    },
}

impl Firewall {
    /// Whether any rule looks at received frames.
    #[inline]
    pub fn has_in(&self) -> bool {
        self.any_in
    }

    /// Whether any rule looks at transmitted frames.
    #[inline]
    pub fn has_out(&self) -> bool {
        self.any_out
    }

    /// Replaces the rules; a rule whose id was there before keeps its counters. All or
    /// nothing: on an error the rules in force stay.
    pub fn set(&mut self, specs: Vec<RuleSpec>, strategy: Strategy) -> Result<(), FirewallError> {
        if specs.len() > MAX_RULES {
            return Err(FirewallError::TooMany);
        }
        let mut rules = Vec::with_capacity(specs.len());
        for spec in specs {
            let bad = |why: String| FirewallError::Program { id: spec.id, why };
            let program = netmux_vm::verify(&spec.program).map_err(|e| bad(e.to_string()))?;
            let engine = netmux_vm::engine(program, strategy).map_err(|e| bad(e.to_string()))?;
            let (frames, bytes) = self
                .rules
                .iter()
                .find(|r| r.spec_id == spec.id)
                .map_or((0, 0), |r| (r.frames, r.bytes));
            rules.push(Rule {
                spec_id: spec.id,
                instance: spec.instance,
                action: spec.action,
                direction: spec.direction,
                quick: spec.quick,
                queue: spec.queue,
                engine,
                frames,
                bytes,
            });
        }
        self.any_in = rules.iter().any(|r| r.direction == RuleDirection::In);
        self.any_out = rules.iter().any(|r| r.direction == RuleDirection::Out);
        self.rules = rules;
        Ok(())
    }

    /// Every rule's counters, in order.
    pub fn counters(&self) -> Vec<RuleCounters> {
        self.rules
            .iter()
            .map(|r| RuleCounters {
                id: r.spec_id,
                frames: r.frames,
                bytes: r.bytes,
            })
            .collect()
    }

    /// Whether the rules block `frame` going `direction` at `queue` of `instance`; the
    /// deciding rule counts it.
    pub fn blocks(
        &mut self,
        direction: RuleDirection,
        instance: InstanceId,
        queue: QueueId,
        frame: &[u8],
        scratch: &mut Scratch,
    ) -> bool {
        let tagged = untag(frame, &mut self.untagged);
        let untagged: &[u8] = &self.untagged;
        let mut decided: Option<usize> = None;
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.direction != direction
                || rule.instance != instance
                || rule.queue.is_some_and(|q| q != queue)
            {
                continue;
            }
            let wire_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
            let mut matched = rule
                .engine
                .run_with_scratch(frame, wire_len, scratch)
                .is_accept();
            if !matched && tagged {
                let len = u32::try_from(untagged.len()).unwrap_or(u32::MAX);
                matched = rule
                    .engine
                    .run_with_scratch(untagged, len, scratch)
                    .is_accept();
            }
            if matched {
                decided = Some(index);
                if rule.quick {
                    break;
                }
            }
        }
        let Some(index) = decided else {
            return false;
        };
        let rule = &mut self.rules[index];
        rule.frames += 1;
        rule.bytes += frame.len() as u64;
        rule.action == RuleAction::Block
    }
}

/// Writes `frame` without its VLAN tags into `out` and returns true when it had any; returns
/// false (and leaves `out` alone) for an untagged frame.
fn untag(frame: &[u8], out: &mut Vec<u8>) -> bool {
    let mut offset = 12;
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS {
        let Some(tpid) = frame.get(offset..offset + 2) else {
            break;
        };
        let tpid = u16::from_be_bytes([tpid[0], tpid[1]]);
        if !matches!(tpid, TPID_8021Q | TPID_8021AD | TPID_QINQ_OLD) || frame.len() < offset + 6 {
            break;
        }
        offset += 4;
        tags += 1;
    }
    if tags == 0 {
        return false;
    }
    out.clear();
    out.extend_from_slice(&frame[..12]);
    out.extend_from_slice(&frame[offset..]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untagging_moves_the_addresses_over_every_tag() {
        let mut frame = vec![1u8; 12];
        frame.extend_from_slice(&[0x88, 0xa8, 0, 5, 0x81, 0x00, 0, 7, 0x08, 0x00, 0x45]);
        let mut out = Vec::new();
        assert!(untag(&frame, &mut out));
        assert_eq!(&out[..12], &[1u8; 12]);
        assert_eq!(&out[12..], &[0x08, 0x00, 0x45]);
        let plain = &out.clone();
        assert!(!untag(plain, &mut out));
        assert!(!untag(&[0u8; 5], &mut out));
    }
}
