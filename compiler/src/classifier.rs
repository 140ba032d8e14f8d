//! The merged classifier: one decision structure for every installed rx filter, whose cost on
//! a port-bound frame does not grow with the number of bindings.
//!
//! Barrelfish ran every client's filter in turn (newest first, first match wins): the cost
//! grew with every client, and a newer filter could steal an older client's traffic. DPF and
//! PATHFINDER merged filters into one structure; netmux does the same for the filters almost
//! every client installs, *port bindings*, and keeps the rest exact by running them after.
//!
//! # Structure
//!
//! * Each filter is added with the queue it delivers to. A filter of the shape of a port
//!   binding (see [`binding`] for the accepted shapes and the proof that such a filter is
//!   exactly "the frame's (family, protocol, destination address, destination port) key is
//!   one of the binding's keys") is not compiled into code at all: its keys go into the hash
//!   tables of one generic VM program ([`program`]), each key mapping to the set of rules
//!   bound to it. Every other filter (a tap, an arbitrary expression) is compiled by
//!   [`crate::compile`] and runs on its own engine after the program.
//! * Classifying a frame runs the generic program once (three table lookups at most, whatever
//!   the number of bindings), reads the table values from its scratch slots, and then runs the
//!   other filters one by one. The result is the set of receiving queues.
//! * The generic program is built once and never rebuilt: adding or removing a binding inserts
//!   or removes table entries in place ([`netmux_vm::Engine::table_mut`]); adding or removing
//!   another filter touches only that filter's engine.
//!
//! # Why the lead's design, and what changed
//!
//! Recognising bindings on the syntax tree (rather than matching compiled code) keeps the
//! proof small: each atom's standalone verdict is read off `gencode`, and a conjunction
//! accepts iff every atom does. Keying the tables by whole keys (not a decision tree over
//! fields) gives O(1) per table with no rebuild on updates. Two refinements:
//!
//! * the address-less key carries the family (`family << 24 | proto << 16 | port`), so an
//!   IPv4-only and an IPv6-only wildcard binding of one port stay distinct owners;
//! * the program is run with the *captured* length as its frame length so it can check that
//!   the IPv4 destination address was captured before loading it: with a malformed header
//!   length (IHL < 4) the port can be captured while the address is not, and the address-less
//!   bindings must still match (see [`program`]). Without that check one rejected load would
//!   hide a match, and "a rejected run means no binding matches" would not be exact.
//!
//! # Results and ownership
//!
//! [`Mode::AllMatches`] gives every queue whose filter accepts the frame: exactly what running
//! every filter one by one gives (the property tests check this on random rule sets and
//! frames). [`Mode::Owner`] gives the most specific binding's queues (an exact-address key
//! before an address-less one; under [`Policy::Exclusive`] that is one queue) plus every
//! queue whose other filter accepts (taps, observers), plus the queue holding an exclusive
//! claim of the link.
//!
//! Under [`Policy::Exclusive`] (the driver's) no two rules may bind the same key: the second
//! add is refused with [`ClassifierError::Conflict`]. Under either policy an exclusive claim
//! of the whole link (illumos vnd's `DL_EXCLUSIVE_REQ`) is refused while any binding exists,
//! and bindings are refused while a claim exists. [`Policy::Overlapping`] (for
//! `netmux filter classify`) lets several rules bind one key; all of them receive the frame.
//!
//! ```
//! use netmux_compiler::classifier::{Classifier, Mode, Placement, Policy};
//! let mut c = Classifier::new(Policy::Exclusive, netmux_vm::Strategy::Interpreter).unwrap();
//! let dns = c.add_filter(7, "udp dst port 53 and dst host 10.0.0.2").unwrap();
//! c.add_filter(9, "icmp or udp port 53").unwrap(); // an observer
//! assert!(matches!(c.placement(dns), Some((7, Placement::Table(_)))));
//! // Another queue cannot take the same port.
//! assert!(c.add_filter(8, "ip and udp and dst host 10.0.0.2 and dst port 53").is_err());
//!
//! // A UDP datagram to 10.0.0.2 port 53.
//! let mut frame = vec![0u8; 14 + 20 + 8];
//! frame[12..14].copy_from_slice(&[0x08, 0x00]);
//! frame[14] = 0x45;
//! frame[23] = 17;
//! frame[30..34].copy_from_slice(&[10, 0, 0, 2]);
//! frame[36..38].copy_from_slice(&53u16.to_be_bytes());
//! let mut queues = Vec::new();
//! c.classify(&frame, frame.len() as u32, Mode::Owner, &mut queues);
//! assert_eq!(queues, [7, 9]);
//! ```

pub mod binding;
pub mod linear;
pub mod program;

use std::collections::HashMap;
use std::fmt;

use netmux_vm::table::MAX_TABLE_ENTRIES;
use netmux_vm::{Engine, EngineError, Strategy, Verdict};

pub use binding::{recognize, Family, Key, NotBinding, PortBinding, Transport};
pub use linear::LinearScan;

use crate::{compile, CompileError, Options};

/// A receive queue (a client's ring), as the driver numbers them.
pub type QueueId = u32;

/// A rule installed in a [`Classifier`]; returned by the `add` methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(u64);

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {}", self.0)
    }
}

/// Whether rules may bind the same key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// One owner per key: a second binding of a key is refused (the driver's policy).
    Exclusive,
    /// Any number of rules per key; all receive (`netmux filter classify`).
    Overlapping,
}

/// Which queues a classification returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Every queue with a rule that accepts the frame.
    AllMatches,
    /// The owner: the most specific matching binding (exact address before address-less),
    /// plus the exclusive claimant and every non-binding rule that accepts.
    Owner,
}

/// Where a rule went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Into the hash tables, as this binding.
    Table(PortBinding),
    /// Compiled and run after the tables, for this reason.
    Linear(NotBinding),
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Table(b) => write!(f, "table: {b}"),
            Placement::Linear(why) => write!(f, "linear: not a port binding: {why}"),
        }
    }
}

/// Why a classifier operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    /// The filter does not compile.
    #[error("{0}")]
    Compile(CompileError),
    /// The engine for a filter could not be made (e.g. the JIT is not compiled in).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Under [`Policy::Exclusive`], the key is already bound by another rule.
    #[error("{key} is already bound by queue {owner}")]
    Conflict {
        /// The key both rules bind.
        key: Key,
        /// The queue that holds it.
        owner: QueueId,
    },
    /// A binding was refused because a queue holds an exclusive claim of the link.
    #[error("the link is claimed exclusively by queue {owner}; no port can be bound")]
    LinkClaimed {
        /// The claimant.
        owner: QueueId,
    },
    /// An exclusive claim was refused because ports are bound.
    #[error("cannot claim the link exclusively while {bindings} port binding(s) exist")]
    PortsBound {
        /// How many binding rules exist.
        bindings: usize,
    },
    /// An exclusive claim was refused because another queue holds one.
    #[error("the link is already claimed exclusively by queue {owner}")]
    AlreadyClaimed {
        /// The claimant.
        owner: QueueId,
    },
    /// `release_exclusive` by a queue that holds no claim.
    #[error("queue {0} holds no exclusive claim")]
    NotClaimant(QueueId),
    /// The rule does not exist (never added, or removed).
    #[error("{0} does not exist")]
    UnknownRule(RuleId),
    /// The binding tables are full.
    #[error("the binding tables are full ({MAX_TABLE_ENTRIES} keys per table)")]
    TablesFull,
}

/// One rule bound to a key: which rule, for which queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Member {
    rule: RuleId,
    queue: QueueId,
}

/// A rule and where its matching happens.
struct Rule {
    queue: QueueId,
    placement: Placement,
    /// For a linear rule, its index in `Classifier::linear`.
    linear_index: usize,
}

/// A compiled non-binding rule.
struct LinearRule {
    rule: RuleId,
    queue: QueueId,
    engine: Box<dyn Engine>,
}

/// The merged classifier. See the module documentation.
pub struct Classifier {
    policy: Policy,
    strategy: Strategy,
    /// The generic program ([`program::build`]) on the chosen engine.
    merged: Box<dyn Engine>,
    /// Table value `i` (from 1) is `sets[i]`; `sets[0]` stays empty (a miss).
    sets: Vec<Vec<Member>>,
    /// Indices of empty sets to reuse.
    free_sets: Vec<u32>,
    rules: HashMap<RuleId, Rule>,
    linear: Vec<LinearRule>,
    next_rule: u64,
    binding_rules: usize,
    keys_bound: usize,
    exclusive: Option<QueueId>,
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field("policy", &self.policy)
            .field("binding_rules", &self.binding_rules)
            .field("keys_bound", &self.keys_bound)
            .field("linear_rules", &self.linear.len())
            .field("exclusive", &self.exclusive)
            .finish()
    }
}

impl Classifier {
    /// An empty classifier whose program and filters run on `strategy`'s engine.
    pub fn new(policy: Policy, strategy: Strategy) -> Result<Classifier, ClassifierError> {
        Ok(Classifier {
            policy,
            strategy,
            merged: netmux_vm::engine(program::build(), strategy)?,
            sets: vec![Vec::new()],
            free_sets: Vec::new(),
            rules: HashMap::new(),
            linear: Vec::new(),
            next_rule: 1,
            binding_rules: 0,
            keys_bound: 0,
            exclusive: None,
        })
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The engine the generic program runs on.
    pub fn engine(&self) -> &dyn Engine {
        &*self.merged
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether no rule is installed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Number of rules in the tables.
    pub fn binding_rules(&self) -> usize {
        self.binding_rules
    }

    /// Number of table entries (a rule has 1 to 6).
    pub fn keys_bound(&self) -> usize {
        self.keys_bound
    }

    /// Number of rules run one by one after the tables.
    pub fn linear_rules(&self) -> usize {
        self.linear.len()
    }

    /// Where a rule went, and its queue.
    pub fn placement(&self, rule: RuleId) -> Option<(QueueId, &Placement)> {
        self.rules.get(&rule).map(|r| (r.queue, &r.placement))
    }

    /// Every rule with its queue and placement, in no particular order.
    pub fn rules(&self) -> impl Iterator<Item = (RuleId, QueueId, &Placement)> + '_ {
        self.rules
            .iter()
            .map(|(id, r)| (*id, r.queue, &r.placement))
    }

    /// The queue holding an exclusive claim of the link, if one does.
    pub fn exclusive_owner(&self) -> Option<QueueId> {
        self.exclusive
    }

    fn new_rule_id(&mut self) -> RuleId {
        let id = RuleId(self.next_rule);
        self.next_rule += 1;
        id
    }

    /// Adds a pcap-filter expression for `queue`: into the tables if it is a port binding,
    /// else compiled and run after them. The expression must compile (the same errors as
    /// [`crate::compile`]), bindings obey the [`Policy`] and the exclusive claim.
    pub fn add_filter(&mut self, queue: QueueId, expr: &str) -> Result<RuleId, ClassifierError> {
        let program = compile(expr, &Options::default()).map_err(ClassifierError::Compile)?;
        // It compiled, so it parses.
        let ast = crate::parser::parse(expr)
            .map_err(|e| ClassifierError::Compile(CompileError::new(e.kind, e.span, expr)))?;
        match recognize(&ast) {
            Ok(b) => self.add_binding(queue, b),
            Err(why) => {
                let engine = netmux_vm::engine(program, self.strategy)?;
                let rule = self.new_rule_id();
                self.rules.insert(
                    rule,
                    Rule {
                        queue,
                        placement: Placement::Linear(why),
                        linear_index: self.linear.len(),
                    },
                );
                self.linear.push(LinearRule {
                    rule,
                    queue,
                    engine,
                });
                Ok(rule)
            }
        }
    }

    /// Adds a port binding for `queue`: only table entries change. Refused, with nothing
    /// changed, on a conflict (under [`Policy::Exclusive`]), during an exclusive claim, or when
    /// a table is full.
    pub fn add_binding(
        &mut self,
        queue: QueueId,
        binding: PortBinding,
    ) -> Result<RuleId, ClassifierError> {
        if let Some(owner) = self.exclusive {
            return Err(ClassifierError::LinkClaimed { owner });
        }
        let keys = binding.keys();
        let encoded: Vec<(usize, Vec<u32>)> = keys.iter().map(program::encode).collect();
        let mut new_per_table = [0usize; 3];
        for (key, (t, words)) in keys.iter().zip(&encoded) {
            let v = self.table_value(*t, words);
            if v == program::MISS {
                new_per_table[*t] += 1;
            } else if self.policy == Policy::Exclusive {
                let owner = self.set(v).first().map_or(queue, |m| m.queue);
                return Err(ClassifierError::Conflict { key: *key, owner });
            }
        }
        let tables = self.merged.program().tables();
        if new_per_table
            .iter()
            .zip(tables)
            .any(|(n, t)| t.len() + n > MAX_TABLE_ENTRIES)
        {
            return Err(ClassifierError::TablesFull);
        }
        let rule = self.new_rule_id();
        let member = Member { rule, queue };
        for (t, words) in &encoded {
            let v = self.table_value(*t, words);
            if v != program::MISS {
                if let Some(set) = self.sets.get_mut(v as usize) {
                    set.push(member);
                }
                continue;
            }
            let index = match self.free_sets.pop() {
                Some(i) => i,
                None => {
                    self.sets.push(Vec::new());
                    (self.sets.len() - 1) as u32
                }
            };
            self.sets[index as usize].push(member);
            self.table_insert(*t, words, index)?;
            self.keys_bound += 1;
        }
        self.binding_rules += 1;
        self.rules.insert(
            rule,
            Rule {
                queue,
                placement: Placement::Table(binding),
                linear_index: 0,
            },
        );
        Ok(rule)
    }

    /// Removes a rule. A binding's table entries go (or lose this rule, if others share the
    /// key); nothing else changes.
    pub fn remove(&mut self, rule: RuleId) -> Result<(), ClassifierError> {
        let r = self
            .rules
            .remove(&rule)
            .ok_or(ClassifierError::UnknownRule(rule))?;
        match r.placement {
            Placement::Table(b) => {
                for key in b.keys() {
                    let (t, words) = program::encode(&key);
                    let v = self.table_value(t, &words);
                    let Some(set) = self.sets.get_mut(v as usize) else {
                        continue;
                    };
                    set.retain(|m| m.rule != rule);
                    if set.is_empty() && v != program::MISS {
                        if let Some(mut table) = self.merged.table_mut(t) {
                            table.remove(&words);
                        }
                        self.free_sets.push(v);
                        self.keys_bound -= 1;
                    }
                }
                self.binding_rules -= 1;
            }
            Placement::Linear(_) => {
                let i = r.linear_index;
                self.linear.swap_remove(i);
                if let Some(moved) = self.linear.get(i) {
                    if let Some(m) = self.rules.get_mut(&moved.rule) {
                        m.linear_index = i;
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes every rule of `queue` and its exclusive claim (a client went away).
    pub fn remove_queue(&mut self, queue: QueueId) {
        let mine: Vec<RuleId> = self
            .rules
            .iter()
            .filter(|(_, r)| r.queue == queue)
            .map(|(id, _)| *id)
            .collect();
        for rule in mine {
            let _ = self.remove(rule);
        }
        if self.exclusive == Some(queue) {
            self.exclusive = None;
        }
    }

    /// Claims the whole link for `queue` (vnd's `DL_EXCLUSIVE_REQ`): it then receives every
    /// frame. Refused while any port binding exists or another queue holds a claim; claiming
    /// again by the holder is a no-op.
    pub fn claim_exclusive(&mut self, queue: QueueId) -> Result<(), ClassifierError> {
        match self.exclusive {
            Some(owner) if owner == queue => Ok(()),
            Some(owner) => Err(ClassifierError::AlreadyClaimed { owner }),
            None if self.binding_rules > 0 => Err(ClassifierError::PortsBound {
                bindings: self.binding_rules,
            }),
            None => {
                self.exclusive = Some(queue);
                Ok(())
            }
        }
    }

    /// Releases `queue`'s exclusive claim.
    pub fn release_exclusive(&mut self, queue: QueueId) -> Result<(), ClassifierError> {
        if self.exclusive != Some(queue) {
            return Err(ClassifierError::NotClaimant(queue));
        }
        self.exclusive = None;
        Ok(())
    }

    /// The queues that receive the frame (captured bytes `frame`, `wire_len` on the wire),
    /// ascending and each once, in `out` (cleared first).
    pub fn classify(&self, frame: &[u8], wire_len: u32, mode: Mode, out: &mut Vec<QueueId>) {
        out.clear();
        let mut scratch = [0; netmux_vm::isa::NUM_SLOTS];
        if self.keys_bound > 0 {
            // The program reads the captured length as its frame length: see `program`.
            let captured = u32::try_from(frame.len()).unwrap_or(u32::MAX);
            if let Verdict::Accept(flags) =
                self.merged.run_with_scratch(frame, captured, &mut scratch)
            {
                let exact = if flags & program::FLAG_EXACT != 0 {
                    scratch[program::SLOT_EXACT]
                } else {
                    program::MISS
                };
                let any = if flags & program::FLAG_ANY != 0 {
                    scratch[program::SLOT_ANY]
                } else {
                    program::MISS
                };
                if exact != program::MISS {
                    out.extend(self.set(exact).iter().map(|m| m.queue));
                }
                if any != program::MISS && (mode == Mode::AllMatches || exact == program::MISS) {
                    out.extend(self.set(any).iter().map(|m| m.queue));
                }
            }
        }
        if let Some(q) = self.exclusive {
            out.push(q);
        }
        for l in &self.linear {
            if let Verdict::Accept(_) = l.engine.run_with_scratch(frame, wire_len, &mut scratch) {
                out.push(l.queue);
            }
        }
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }

    fn set(&self, v: u32) -> &[Member] {
        self.sets.get(v as usize).map_or(&[], |s| &s[..])
    }

    fn table_value(&self, table: usize, words: &[u32]) -> u32 {
        self.merged
            .program()
            .tables()
            .get(table)
            .map_or(program::MISS, |t| t.get(words))
    }

    fn table_insert(&mut self, table: usize, words: &[u32], v: u32) -> Result<(), ClassifierError> {
        let mut t = self
            .merged
            .table_mut(table)
            .ok_or(ClassifierError::TablesFull)?;
        // The key width is right by construction and the key was checked absent, so the one
        // way an insert fails is a full table.
        t.insert(words, v).map_err(|_| ClassifierError::TablesFull)
    }
}
