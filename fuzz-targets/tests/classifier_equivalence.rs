//! The merged classifier (`netmux_classify::Classifier`, the one the driver runs) gives
//! exactly the queues that running every filter one by one gives, on filters written in the
//! pcap-filter language and recognised as bindings by the compiler.
//!
//! Each case builds a random set of 1 to 1,000 rules — port bindings in every spelling the
//! recogniser knows, plus random expressions that are not bindings (some of them nearly are)
//! — installs each under shared ownership (one filter per key, as `netmux filter classify`
//! does), and compares, frame by frame, the merged classifier with the reference: every rule
//! compiled by `netmux_compiler::compile` and run by the interpreter. Rules and frames come
//! from the classifier fuzz target's generator (`netmux_fuzz_targets::gen`): frames crafted
//! around the rules' own addresses and ports (IPv4 with options, fragments, malformed header
//! lengths, truncated captures, IPv6 with extension and fragment headers, VLAN, ARP) and raw
//! bytes, and, in the `#[ignore]`d corpus test, every frame of the conformance corpus.
//!
//! A second property installs the same rules under the driver's ownership rule (the second
//! owner of a key is refused) and checks set semantics against the reference on the rules
//! that went in: an exact-address binding and an address-less binding of one port both
//! receive a frame that matches both.
//!
//! A third runs the classifier fuzz target (`netmux_fuzz_targets::classifier`: installs,
//! removals, claims and taps under both ownership rules, against a model of the rules) on
//! random inputs, so `cargo test` checks more of it than the committed seeds reach.
//!
//! Seeds: a new one each run, printed on failure; `NETMUX_SEED=N` replays one.

use arbitrary::Unstructured;
use netmux_classify::{Classifier, Classify, Ownership, RxFilter};
use netmux_compiler::binding::{compile_rule, CompiledRule};
use netmux_compiler::{compile, Options};
use netmux_fuzz_targets::gen::{self, Pools};
use netmux_proto::driver::{FilterId, QueueId, RxMode};
use netmux_testkit::frames::{addrs, FrameBuilder, Ipv4};
use netmux_testkit::Frame;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Bytes the generator draws one rule or one frame from: far more than it takes.
const BYTES_PER_DRAW: usize = 1024;
/// Random inputs for the classifier fuzz target: a few seconds of a debug build.
const TARGET_INPUTS: usize = 200;
/// Longest random input: the target stops after its 48th operation, well before.
const MAX_TARGET_INPUT: usize = 4096;

fn seed() -> u64 {
    netmux_testkit::seed("classifier_equivalence")
}

/// Runs a generator on fresh random bytes.
fn draw<T>(rng: &mut StdRng, f: impl FnOnce(&mut Unstructured) -> arbitrary::Result<T>) -> T {
    let mut bytes = [0; BYTES_PER_DRAW];
    rng.fill(&mut bytes[..]);
    f(&mut Unstructured::new(&bytes)).expect("enough bytes for one draw")
}

fn frames(rng: &mut StdRng, pools: &mut Pools, n: usize) -> Vec<Frame> {
    (0..n)
        .map(|_| {
            let f = draw(rng, |u| gen::frame(u, pools));
            Frame {
                data: f.bytes,
                wire_len: f.wire_len,
            }
        })
        .collect()
}

/// The rules of one case (rules that do not compile are dropped).
struct Case {
    rules: Vec<(QueueId, String, CompiledRule)>,
}

fn build_case(rng: &mut StdRng, pools: &mut Pools, n: usize) -> Case {
    let mut rules = Vec::new();
    for q in 1..=n as u32 {
        let text = draw(rng, |u| gen::rule(u, pools)).text;
        if let Ok(rule) = compile_rule(&text) {
            rules.push((QueueId(q), text, rule));
        }
    }
    Case { rules }
}

fn reference(case: &Case, frame: &Frame) -> Vec<QueueId> {
    let mut out = Vec::new();
    let mut scratch = [0; netmux_vm::isa::NUM_SLOTS];
    for (q, _, rule) in &case.rules {
        if netmux_vm::interp::run(&rule.program, &frame.data, frame.wire_len, &mut scratch)
            .is_accept()
        {
            out.push(*q);
        }
    }
    out
}

/// Installs every key of `rule` for `queue`; returns how many keys the rules refused.
fn install(c: &mut Classifier, next: &mut u64, queue: QueueId, rule: &CompiledRule) -> usize {
    let mut refused = 0;
    for binding in rule.keys() {
        *next += 1;
        let filter = RxFilter {
            queue,
            filter: FilterId(*next),
            mode: RxMode::Owner,
            binding,
            program: rule.program.clone(),
        };
        if c.install(filter).is_err() {
            refused += 1;
        }
    }
    refused
}

fn merged(case: &Case) -> Classifier {
    let mut c = Classifier::with_ownership(netmux_vm::Strategy::Interpreter, Ownership::Shared);
    let mut next = 0;
    for (q, text, rule) in &case.rules {
        assert_eq!(
            install(&mut c, &mut next, *q, rule),
            0,
            "rule {} `{text}` was refused under shared ownership",
            q.0
        );
    }
    c
}

fn check_frames(seed: u64, case: &Case, c: &mut Classifier, frames: &[Frame]) {
    let mut got = Vec::new();
    for frame in frames {
        got.clear();
        c.classify(&frame.data, frame.wire_len, &mut got);
        let want = reference(case, frame);
        if got != want {
            let rules: Vec<String> = case
                .rules
                .iter()
                .filter(|(q, _, _)| got.contains(q) != want.contains(q))
                .map(|(q, t, rule)| format!("  {}: {t}   [{}]", q.0, rule.placement()))
                .collect();
            panic!(
                "seed {seed}: frame {:02x?} (wire {}): merged {got:?}, linear {want:?}\n{}",
                frame.data,
                frame.wire_len,
                rules.join("\n")
            );
        }
    }
}

#[test]
fn merged_classifier_equals_the_linear_scan_on_random_rule_sets_and_frames() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    // Sizes from 1 to 1,000, most of them small so the debug build stays fast.
    let mut sizes = vec![1, 2, 5, 1000];
    for _ in 0..12 {
        sizes.push(rng.gen_range(1..=200));
    }
    let mut tabled = 0;
    for n in sizes {
        let mut pools = Pools::default();
        let case = build_case(&mut rng, &mut pools, n);
        let mut c = merged(&case);
        tabled += c.table_filters();
        let frames = frames(&mut rng, &mut pools, if n >= 500 { 150 } else { 300 });
        check_frames(seed, &case, &mut c, &frames);
    }
    assert!(
        tabled > 500,
        "seed {seed}: too few rules were bindings ({tabled})"
    );
}

#[test]
fn under_the_drivers_ownership_rule_every_accepting_rule_that_went_in_receives() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut both = 0;
    for _ in 0..6 {
        let n = rng.gen_range(1..=300);
        let mut pools = Pools::default();
        let case = build_case(&mut rng, &mut pools, n);
        let mut c = Classifier::new(netmux_vm::Strategy::Interpreter);
        // The second owner of a key is refused; keep only the rules that went in whole.
        let mut next = 0;
        let mut kept = Vec::new();
        for (q, text, rule) in case.rules {
            if install(&mut c, &mut next, q, &rule) == 0 {
                kept.push((q, text, rule));
            } else {
                c.remove_queue(q);
            }
        }
        let case = Case { rules: kept };
        let frames = frames(&mut rng, &mut pools, 300);
        for frame in &frames {
            let want = reference(&case, frame);
            let tabled = |exact: bool| {
                want.iter().any(|q| {
                    case.rules.iter().any(|(r, _, rule)| {
                        r == q
                            && rule
                                .pattern
                                .as_ref()
                                .is_ok_and(|p| p.addr().is_some() == exact)
                    })
                })
            };
            both += usize::from(tabled(true) && tabled(false));
        }
        check_frames(seed, &case, &mut c, &frames);
    }
    assert!(
        both > 0,
        "seed {seed}: no frame matched an exact and an address-less binding"
    );
}

#[test]
fn the_classifier_fuzz_targets_model_holds_on_random_inputs() {
    let mut rng = StdRng::seed_from_u64(seed());
    for _ in 0..TARGET_INPUTS {
        let mut input = vec![0; rng.gen_range(0..=MAX_TARGET_INPUT)];
        rng.fill(&mut input[..]);
        netmux_fuzz_targets::classifier(&input);
    }
}

#[test]
fn rules_that_do_not_compile_are_refused_with_the_compilers_error() {
    for bad in [
        "tcp dst port 65536",
        "dst host foo and tcp dst port 1",
        "ip6 dst host 1.2.3.4 and tcp dst port 1",
    ] {
        let want = compile(bad, &Options::default()).unwrap_err();
        let got = compile_rule(bad).unwrap_err();
        assert_eq!(got.to_string(), want.to_string());
    }
}

#[test]
#[ignore = "needs the conformance corpus ($NETMUX_CONFORMANCE_DIR or ../shared/conformance)"]
fn merged_classifier_equals_the_linear_scan_on_every_corpus_frame() {
    let dir = netmux_testkit::corpus::conformance_dir().expect("conformance corpus");
    let corpus = netmux_testkit::corpus::corpus_frames(&dir).unwrap();
    assert!(!corpus.frames.is_empty());
    let frames: Vec<Frame> = corpus.frames.into_iter().map(|(_, f)| f).collect();
    eprintln!("{} corpus frames", frames.len());
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for n in [1, 10, 100, 1000] {
        let case = build_case(&mut rng, &mut Pools::default(), n);
        let mut c = merged(&case);
        check_frames(seed, &case, &mut c, &frames);
    }
    // Rules taken from the corpus's own expressions, each a queue.
    let exprs = netmux_testkit::corpus::exprs(&dir).unwrap();
    let mut rules = Vec::new();
    for (i, text) in exprs.iter().enumerate() {
        if let Ok(rule) = compile_rule(text) {
            rules.push((QueueId(i as u32 + 1), text.clone(), rule));
        }
    }
    let case = Case { rules };
    let mut c = merged(&case);
    check_frames(seed, &case, &mut c, &frames);
}

#[test]
fn an_empty_rule_matches_every_frame_as_the_compiler_says() {
    let mut c = Classifier::with_ownership(netmux_vm::Strategy::Interpreter, Ownership::Shared);
    let mut next = 0;
    install(
        &mut c,
        &mut next,
        QueueId(1),
        &compile_rule("udp dst port 53").unwrap(),
    );
    install(&mut c, &mut next, QueueId(2), &compile_rule(" ").unwrap());
    let frames = [
        Frame::whole(vec![0u8; 60]),
        FrameBuilder::ethernet(addrs::MAC[1], addrs::MAC[0])
            .ethertype(0x0800)
            .ipv4(Ipv4::new([10, 0, 0, 1], [10, 0, 0, 2], 17))
            .udp(1000, 53)
            .finish(),
    ];
    for (i, f) in frames.iter().enumerate() {
        let mut got = Vec::new();
        c.classify(&f.data, f.wire_len, &mut got);
        let want = if i == 0 { vec![2] } else { vec![1, 2] };
        assert_eq!(
            got,
            want.into_iter().map(QueueId).collect::<Vec<_>>(),
            "frame {i}"
        );
    }
}
