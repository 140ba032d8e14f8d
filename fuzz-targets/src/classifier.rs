//! F7: random rule sets and frames against the shipped classifier, the reference scan and a
//! model of the rules of `netmux_classify`'s crate documentation.

use std::fmt::Write as _;

use arbitrary::{Result, Unstructured};
use netmux_classify::{
    frame_keys, port_filter, Classifier, ClassifierError, Classify, Family, Key, LinearScan,
    Ownership, RxFilter,
};
use netmux_compiler::binding::{compile_rule, CompiledRule};
use netmux_compiler::{compile, Options};
use netmux_proto::driver::{FilterId, PortBinding, QueueId, RxMode};
use netmux_vm::gen::GeneratedFrame;
use netmux_vm::{Program, Strategy};

use crate::gen::{self, Pools};

/// Operations per input: enough for bindings, claims and removals to interleave, few enough
/// that an input runs in milliseconds.
const MAX_OPS: usize = 48;
/// Queues are drawn from `1..=QUEUES`, so several filters share a queue.
const QUEUES: u32 = 6;
/// Filter ids start here; ids below it are never installed (removing one is refused).
const FIRST_FILTER: u64 = 100;
/// Both classifiers run their programs on the interpreter. Which engine runs a program is
/// the business of `vm_differential` and of the equivalence tests on the JIT
/// (`compiler/tests/classifier_netd_filters.rs`); Cranelift under the fuzzer's coverage
/// instrumentation would cost most of this target's time and fill its corpus with inputs
/// that differ only in the JIT's own branches.
const ENGINE: Strategy = Strategy::Interpreter;
/// The protocols of bindings that do not come from a rule: with ports, and without.
const BINDING_PROTOCOLS: [u8; 5] = [6, 17, 132, 1, 47];

/// One installed filter, as the model sees it.
struct Installed {
    queue: QueueId,
    filter: FilterId,
    mode: RxMode,
    binding: Option<PortBinding>,
    /// The verified program, run by the reference interpreter.
    program: Program,
    /// The key the merged classifier files it under: an owner filter whose binding's
    /// protocol has ports.
    table_key: Option<Key>,
    /// The rule it is one filter of, and how many filters that rule installs: together
    /// their table keys select every frame the program accepts (the recogniser's bindings and
    /// netd's port filters do). `None` for a filter whose binding lies about its program.
    rule: Option<Rule>,
}

/// A rule installed as one filter per binding.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Rule {
    id: u64,
    filters: usize,
}

/// What the classifiers must agree with.
struct Model {
    ownership: Ownership,
    filters: Vec<Installed>,
    next_filter: u64,
    next_rule: u64,
    /// Filters removed, for removals the classifiers must refuse.
    removed: Vec<(QueueId, FilterId)>,
    /// The operations so far, for failure messages.
    trace: String,
}

/// The ownership key of a binding: an IPv4 binding's address is its first four bytes.
fn owned_key(b: &PortBinding) -> (u8, bool, [u8; 16], u16) {
    let mut address = b.address;
    if !b.ipv6 {
        address[4..].fill(0);
    }
    (b.protocol, b.ipv6, address, b.port)
}

/// The table key of an owner filter with `binding`: none for a protocol without ports; the
/// family's address-less key for an all-zero address (an IPv4 address is its first four
/// bytes).
fn table_key(mode: RxMode, binding: Option<&PortBinding>) -> Option<Key> {
    let b = binding.filter(|_| mode == RxMode::Owner)?;
    if !matches!(b.protocol, 6 | 17 | 132) {
        return None;
    }
    let (protocol, port) = (b.protocol, b.port);
    Some(if b.ipv6 {
        if b.address == [0; 16] {
            Key::AnyAddr {
                family: Family::V6,
                protocol,
                port,
            }
        } else {
            Key::V6 {
                protocol,
                addr: b.address.into(),
                port,
            }
        }
    } else {
        let a = [b.address[0], b.address[1], b.address[2], b.address[3]];
        if a == [0; 4] {
            Key::AnyAddr {
                family: Family::V4,
                protocol,
                port,
            }
        } else {
            Key::V4 {
                protocol,
                addr: a.into(),
                port,
            }
        }
    })
}

fn sorted(mut queues: Vec<QueueId>) -> Vec<QueueId> {
    queues.sort_unstable();
    queues.dedup();
    queues
}

impl Model {
    /// The queue of the exclusive claim, if one is installed.
    fn claimant(&self) -> Option<QueueId> {
        self.filters
            .iter()
            .find(|f| f.mode == RxMode::Exclusive)
            .map(|f| f.queue)
    }

    /// The answer the rules give to installing this filter.
    fn expect(
        &self,
        filter: FilterId,
        mode: RxMode,
        binding: Option<&PortBinding>,
    ) -> std::result::Result<(), ClassifierError> {
        if self.filters.iter().any(|f| f.filter == filter) {
            return Err(ClassifierError::DuplicateFilter(filter));
        }
        let owned = binding.filter(|_| mode == RxMode::Owner).map(owned_key);
        let mut bound = self
            .filters
            .iter()
            .filter(|f| f.mode == RxMode::Owner && f.binding.is_some());
        // While a claim exists: no binding and no second claim, whoever asks.
        if let Some(holder) = self.claimant() {
            if owned.is_some() || mode == RxMode::Exclusive {
                return Err(ClassifierError::ExclusiveHeld(holder));
            }
        }
        // One owner per key.
        if let (Some(key), Ownership::OneOwnerPerKey) = (owned, self.ownership) {
            if let Some(holder) = bound
                .clone()
                .find(|f| f.binding.as_ref().map(owned_key) == Some(key))
            {
                return Err(ClassifierError::BindingInUse(holder.queue));
            }
        }
        // No claim while bindings exist.
        if mode == RxMode::Exclusive && bound.next().is_some() {
            return Err(ClassifierError::BindingsExist);
        }
        Ok(())
    }

    /// (what the merged classifier gives, what the scan gives) for a frame: the queues of the
    /// filters whose program accepts it; for the merged classifier, a filter with a table key
    /// also needs the frame to have that key.
    fn classify(&self, frame: &GeneratedFrame) -> (Vec<QueueId>, Vec<QueueId>) {
        let (exact, any) = frame_keys(&frame.bytes);
        let mut scratch = [0; netmux_vm::isa::NUM_SLOTS];
        let (mut merged, mut linear) = (Vec::new(), Vec::new());
        for f in &self.filters {
            if netmux_vm::interp::run(&f.program, &frame.bytes, frame.wire_len, &mut scratch)
                .is_accept()
            {
                linear.push(f.queue);
                if f.table_key
                    .is_none_or(|k| exact == Some(k) || any == Some(k))
                {
                    merged.push(f.queue);
                }
            }
        }
        (sorted(merged), sorted(linear))
    }

    /// The taps that observe a frame `sender` transmitted.
    fn observers(&self, frame: &GeneratedFrame, sender: QueueId) -> Vec<QueueId> {
        let mut scratch = [0; netmux_vm::isa::NUM_SLOTS];
        sorted(
            self.filters
                .iter()
                .filter(|f| {
                    f.mode == RxMode::Tap
                        && f.queue != sender
                        && netmux_vm::interp::run(
                            &f.program,
                            &frame.bytes,
                            frame.wire_len,
                            &mut scratch,
                        )
                        .is_accept()
                })
                .map(|f| f.queue)
                .collect(),
        )
    }

    /// Whether the table keys select every frame the programs of their filters accept: no
    /// filter in the tables lies, and every rule with a filter in the tables has all its
    /// filters installed.
    fn honest(&self) -> bool {
        self.filters
            .iter()
            .filter(|f| f.table_key.is_some())
            .all(|f| {
                f.rule.is_some_and(|rule| {
                    self.filters.iter().filter(|g| g.rule == f.rule).count() == rule.filters
                })
            })
    }

    /// A new rule of `filters` filters.
    fn rule(&mut self, filters: usize) -> Option<Rule> {
        self.next_rule += 1;
        Some(Rule {
            id: self.next_rule,
            filters,
        })
    }
}

/// The classifier under test, the reference, and the model.
struct World {
    merged: Classifier,
    linear: LinearScan,
    model: Model,
}

impl World {
    /// Installs one filter in both classifiers; both must answer as the rules say.
    fn install(
        &mut self,
        u: &mut Unstructured,
        queue: QueueId,
        mode: RxMode,
        binding: Option<PortBinding>,
        program: &Program,
        rule: Option<Rule>,
    ) -> Result<()> {
        let m = &mut self.model;
        // Now and then the id of an installed filter, which must be refused.
        let filter = if !m.filters.is_empty() && u.ratio(1u8, 32)? {
            m.filters[u.choose_index(m.filters.len())?].filter
        } else {
            m.next_filter += 1;
            FilterId(m.next_filter)
        };
        let want = m.expect(filter, mode, binding.as_ref());
        let rx = |program: &Program| RxFilter {
            queue,
            filter,
            mode,
            binding,
            program: program.clone(),
        };
        let got = self.merged.install(rx(program));
        let reference = self.linear.install(rx(program));
        let _ = writeln!(
            m.trace,
            "install {} filter {} {mode:?} {binding:?}: {want:?}",
            queue.0, filter.0
        );
        assert_eq!(got, want, "merged classifier's answer\n{}", m.trace);
        assert_eq!(reference, want, "linear scan's answer\n{}", m.trace);
        if want.is_ok() {
            m.filters.push(Installed {
                queue,
                filter,
                mode,
                table_key: table_key(mode, binding.as_ref()),
                binding,
                program: program.clone(),
                rule,
            });
        }
        Ok(())
    }

    /// A rule from the generator: compiled as the CLI and the equivalence tests do; an owner
    /// rule installs one filter per binding, a tap one filter.
    fn install_rule(
        &mut self,
        u: &mut Unstructured,
        pools: &mut Pools,
        queue: QueueId,
    ) -> Result<()> {
        let rule = gen::rule(u, pools)?;
        let Some(compiled) = compile_checked(&rule) else {
            return Ok(());
        };
        let _ = writeln!(self.model.trace, "rule `{}`", rule.text);
        match *u.choose(&[RxMode::Owner, RxMode::Owner, RxMode::Owner, RxMode::Tap])? {
            RxMode::Owner => {
                let keys = compiled.keys();
                let rule = self.model.rule(keys.len());
                for binding in keys {
                    self.install(u, queue, RxMode::Owner, binding, &compiled.program, rule)?;
                }
            }
            mode => {
                // A tap's binding is not a binding: it is neither owned nor in the tables.
                let binding = if u.ratio(1u8, 4)? {
                    compiled.keys()[0]
                } else {
                    None
                };
                let rule = self.model.rule(1);
                self.install(u, queue, mode, binding, &compiled.program, rule)?;
            }
        }
        Ok(())
    }

    /// netd's port filter for an exact-address key.
    fn install_port_filter(
        &mut self,
        u: &mut Unstructured,
        pools: &mut Pools,
        queue: QueueId,
    ) -> Result<()> {
        let protocol = *u.choose(&[6u8, 17, 132])?;
        let port = pools.port(u)?;
        let key = if u.ratio(2u8, 3)? {
            Key::V4 {
                protocol,
                addr: pools.v4(u)?.into(),
                port,
            }
        } else {
            Key::V6 {
                protocol,
                addr: pools.v6(u)?.into(),
                port,
            }
        };
        let program = port_filter::program(&key, gen::LINK_MAC).expect("an exact-address key");
        let _ = writeln!(self.model.trace, "port filter {key}");
        let rule = self.model.rule(1);
        self.install(u, queue, RxMode::Owner, Some(key.binding()), &program, rule)
    }

    /// A filter whose binding has nothing to do with its program: delivery may only narrow.
    fn install_lying(
        &mut self,
        u: &mut Unstructured,
        pools: &mut Pools,
        queue: QueueId,
    ) -> Result<()> {
        let rule = gen::rule(u, pools)?;
        let Some(compiled) = compile_checked(&rule) else {
            return Ok(());
        };
        let ipv6 = u.arbitrary()?;
        let mut address = [0; 16];
        if u.ratio(4u8, 5)? {
            if ipv6 {
                address = pools.v6(u)?;
            } else {
                address[..4].copy_from_slice(&pools.v4(u)?);
                // Bytes past an IPv4 address are not part of it, for ownership or the tables.
                if u.ratio(1u8, 4)? {
                    address[4..].copy_from_slice(&u.arbitrary::<[u8; 12]>()?);
                }
            }
        }
        let protocol = if u.ratio(7u8, 8)? {
            *u.choose(&BINDING_PROTOCOLS)?
        } else {
            u.arbitrary()?
        };
        let binding = PortBinding {
            protocol,
            address,
            ipv6,
            port: pools.port(u)?,
        };
        let _ = writeln!(self.model.trace, "lying rule `{}`", rule.text);
        self.install(
            u,
            queue,
            RxMode::Owner,
            Some(binding),
            &compiled.program,
            None,
        )
    }

    /// The binding of an installed owner filter again, with its program, on any queue: one
    /// owner per key refuses it, shared ownership takes it. An IPv4 address may carry other
    /// bytes past its four, which neither ownership nor the tables look at.
    fn rebind(&mut self, u: &mut Unstructured, queue: QueueId) -> Result<()> {
        let bound: Vec<&Installed> = self
            .model
            .filters
            .iter()
            .filter(|f| f.mode == RxMode::Owner && f.binding.is_some())
            .collect();
        if bound.is_empty() {
            return Ok(());
        }
        let f = bound[u.choose_index(bound.len())?];
        let Some(mut binding) = f.binding else {
            return Ok(());
        };
        if !binding.ipv6 && u.ratio(1u8, 3)? {
            binding.address[4..].copy_from_slice(&u.arbitrary::<[u8; 12]>()?);
        }
        let program = f.program.clone();
        // Honest when the program has this one binding, not when it is one of a rule's.
        let one = f.rule.is_some_and(|r| r.filters == 1);
        let rule = if one { self.model.rule(1) } else { None };
        let _ = writeln!(self.model.trace, "rebind");
        self.install(u, queue, RxMode::Owner, Some(binding), &program, rule)
    }

    /// An exclusive claim: a filter accepting every frame, or a rule's.
    fn claim(&mut self, u: &mut Unstructured, pools: &mut Pools, queue: QueueId) -> Result<()> {
        let text = if u.arbitrary()? {
            String::new()
        } else {
            gen::other(u, pools, 1)?
        };
        let Ok(compiled) = compile_rule(&text) else {
            return Ok(());
        };
        let _ = writeln!(self.model.trace, "claim `{text}`");
        let rule = self.model.rule(1);
        self.install(u, queue, RxMode::Exclusive, None, &compiled.program, rule)
    }

    fn remove(&mut self, u: &mut Unstructured, queue: QueueId) -> Result<()> {
        let m = &mut self.model;
        let (q, filter, index) = match u.int_in_range(0..=7u8)? {
            0..=5 if !m.filters.is_empty() => {
                let i = u.choose_index(m.filters.len())?;
                let f = &m.filters[i];
                if u.ratio(1u8, 6)? {
                    // The right filter, named with another queue.
                    (QueueId(f.queue.0 % QUEUES + 1), f.filter, None)
                } else {
                    (f.queue, f.filter, Some(i))
                }
            }
            6 if !m.removed.is_empty() => {
                let (q, f) = m.removed[u.choose_index(m.removed.len())?];
                (q, f, None)
            }
            _ => (queue, FilterId(u.int_in_range(0..=FIRST_FILTER)?), None),
        };
        let want = match index {
            Some(_) => Ok(()),
            None => Err(ClassifierError::NotFound(q, filter)),
        };
        let _ = writeln!(m.trace, "remove {} filter {}: {want:?}", q.0, filter.0);
        assert_eq!(self.merged.remove(q, filter), want, "merged\n{}", m.trace);
        assert_eq!(self.linear.remove(q, filter), want, "linear\n{}", m.trace);
        if let Some(i) = index {
            m.filters.swap_remove(i);
            m.removed.push((q, filter));
        }
        Ok(())
    }

    fn remove_queue(&mut self, queue: QueueId) {
        let m = &mut self.model;
        let _ = writeln!(m.trace, "remove queue {}", queue.0);
        self.merged.remove_queue(queue);
        self.linear.remove_queue(queue);
        let removed = m.filters.iter().filter(|f| f.queue == queue);
        m.removed.extend(removed.map(|f| (f.queue, f.filter)));
        m.filters.retain(|f| f.queue != queue);
    }

    fn classify(&mut self, frame: &GeneratedFrame) {
        let m = &self.model;
        let (want, reference) = m.classify(frame);
        let what = || {
            format!(
                "frame {:02x?} (wire {})\n{}",
                frame.bytes, frame.wire_len, m.trace
            )
        };
        if m.honest() {
            // What the recogniser's proof and netd's port filters promise: a binding's key
            // selects exactly the frames its program accepts.
            assert_eq!(
                want,
                reference,
                "honest keys select their programs: {}",
                what()
            );
        }
        let mut got = Vec::new();
        self.merged.classify(&frame.bytes, frame.wire_len, &mut got);
        assert_eq!(got, want, "merged classifier: {}", what());
        got.clear();
        self.linear.classify(&frame.bytes, frame.wire_len, &mut got);
        assert_eq!(got, reference, "linear scan: {}", what());
    }

    fn observers(&mut self, frame: &GeneratedFrame, sender: QueueId) {
        let want = self.model.observers(frame, sender);
        let what = || {
            format!(
                "frame {:02x?} from {}\n{}",
                frame.bytes, sender.0, self.model.trace
            )
        };
        let mut got = Vec::new();
        self.merged
            .observers(&frame.bytes, frame.wire_len, sender, &mut got);
        assert_eq!(got, want, "merged classifier's observers: {}", what());
        got.clear();
        self.linear
            .observers(&frame.bytes, frame.wire_len, sender, &mut got);
        assert_eq!(got, want, "linear scan's observers: {}", what());
    }

    /// The counts both classifiers report agree with the model.
    fn check_counts(&self) {
        let m = &self.model;
        let c = &self.merged;
        let tabled: Vec<Key> = m.filters.iter().filter_map(|f| f.table_key).collect();
        let mut keys = tabled.clone();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(c.len(), m.filters.len(), "filters\n{}", m.trace);
        assert_eq!(self.linear.len(), m.filters.len(), "filters\n{}", m.trace);
        assert_eq!(c.table_filters(), tabled.len(), "in tables\n{}", m.trace);
        assert_eq!(
            c.other_filters(),
            m.filters.len() - tabled.len(),
            "after tables\n{}",
            m.trace
        );
        assert_eq!(c.keys_bound(), keys.len(), "keys\n{}", m.trace);
        assert_eq!(c.exclusive_owner(), m.claimant(), "claim\n{}", m.trace);
        for f in &m.filters {
            assert_eq!(
                c.in_tables(f.filter),
                Some(f.table_key.is_some()),
                "where filter {} is\n{}",
                f.filter.0,
                m.trace
            );
        }
    }
}

/// Compiles a generated rule. A rule that does not compile is refused with the compiler's
/// own message (`None`), and a spelled binding compiles to exactly the bindings the
/// generator computed.
fn compile_checked(rule: &gen::Rule) -> Option<CompiledRule> {
    let text = &rule.text;
    let compiled = match compile_rule(text) {
        Ok(c) => c,
        Err(e) => {
            let want = compile(text, &Options::default())
                .expect_err("compile_rule refuses only what compile refuses");
            assert_eq!(e.to_string(), want.to_string(), "`{text}`");
            assert!(rule.bindings.is_none(), "the binding `{text}` compiles");
            return None;
        }
    };
    if let Some(want) = &rule.bindings {
        let pattern = compiled
            .pattern
            .as_ref()
            .unwrap_or_else(|why| panic!("`{text}` is a binding, not {why}"));
        let mut got = pattern.bindings();
        gen::sort_bindings(&mut got);
        assert_eq!(&got, want, "the bindings of `{text}`");
    }
    Some(compiled)
}

fn run(u: &mut Unstructured) -> Result<()> {
    let (ownership, link) = *u.choose(&[
        (Ownership::OneOwnerPerKey, false),
        (Ownership::OneOwnerPerKey, true),
        (Ownership::Shared, false),
    ])?;
    let merged = if link {
        Classifier::for_link(ENGINE, gen::LINK_MAC)
    } else {
        Classifier::with_ownership(ENGINE, ownership)
    };
    let mut w = World {
        merged,
        linear: LinearScan::with_ownership(ENGINE, ownership),
        model: Model {
            ownership,
            filters: Vec::new(),
            next_filter: FIRST_FILTER,
            next_rule: 0,
            removed: Vec::new(),
            trace: format!("{ownership:?}, link MAC {link}\n"),
        },
    };
    // Filters whose binding lies about their program in one input of four: the others check
    // that the merged classifier equals the scan for longer.
    let lies = u.ratio(1u8, 4)?;
    let mut pools = Pools::default();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let queue = QueueId(u.int_in_range(1..=QUEUES)?);
        match u.int_in_range(0..=15u8)? {
            0..=3 => w.install_rule(u, &mut pools, queue)?,
            4 => w.install_port_filter(u, &mut pools, queue)?,
            5 if lies && u.arbitrary()? => w.install_lying(u, &mut pools, queue)?,
            5 => w.rebind(u, queue)?,
            6 => w.claim(u, &mut pools, queue)?,
            7 | 8 => w.remove(u, queue)?,
            9 => w.remove_queue(queue),
            10..=13 => w.classify(&gen::frame(u, &mut pools)?),
            _ => w.observers(&gen::frame(u, &mut pools)?, queue),
        }
        w.check_counts();
    }
    Ok(())
}

/// F7. Random rule sets and frames against the merged classifier
/// (`netmux_classify::Classifier`, the one the driver runs), the reference scan
/// (`LinearScan`) and a model of the rules.
///
/// An input chooses the ownership rule (one owner per key, with or without the link's MAC
/// shortcut, or shared) and up to 48 operations: install a rule from [`crate::gen`]
/// compiled as the CLI does (an owner filter per binding, or a tap), netd's port filter of
/// an exact key, an installed filter's binding again, a filter whose binding lies about its
/// program (in one input of four), an exclusive claim; reuse an installed filter's id;
/// remove a filter (also under another queue, also one already removed); remove a queue;
/// classify a frame; ask which taps observe a frame a queue sent. It checks:
///
/// * set semantics: both classifiers give each receiving queue once, ascending; the scan
///   gives the queues whose program accepts, the merged classifier the same but a filter in
///   the tables only for frames with its key; while every key is honest the two are equal;
/// * refusals exactly as the rules say: one owner per key (an IPv4 binding's key is its first
///   four address bytes), a claim refused while bindings exist, any binding or second claim
///   refused while a claim exists (the claimant's own included), duplicate ids, removals of
///   filters not on that queue; a refusal changes nothing;
/// * observers: the accepting taps, never the sender;
/// * counts: filters, filters in the tables and after them, distinct keys, the claimant,
///   where each filter is;
/// * a rule that does not compile is refused with the compiler's own message, and a spelled
///   binding is exactly the bindings the generator computed.
pub fn classifier(data: &[u8]) {
    let _ = run(&mut Unstructured::new(data));
}
