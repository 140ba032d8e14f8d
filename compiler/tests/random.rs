//! Random expressions from a grammar of our own, netmux against libpcap: the same verdict on
//! every self-made frame (and a sample of the corpus frames when the corpus is present), and
//! the same decision about which expressions are errors. The grammar includes names from the
//! system's databases (`localhost`, `http`, `loopback`, `gre`; and names that are nowhere, so
//! both must refuse them) and constant indexes that wrap (`ip[-1]`); every eighth expression
//! is also compared on another link layer (Linux cooked v1/v2, raw IP), the frames rewritten
//! into it.
//!
//! A new seed every run (from the clock); the seed is printed, and `NETMUX_SEED=N`
//! replays a run. `NETMUX_RANDOM_EXPRS` sets how many expressions (default 5,000).

mod common;

use netmux_compiler::LinkType;
use netmux_testkit::corpus;
use netmux_testkit::exprs::ExprGen;
use netmux_testkit::frames::{relink, sample_frames};

/// Expressions per run unless `NETMUX_RANDOM_EXPRS` says otherwise.
const DEFAULT_EXPRS: usize = 5_000;

/// The link layers other than Ethernet, which every eighth expression is also tried on.
const OTHER_LINKS: [LinkType; 5] = [
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::Raw,
    LinkType::Ipv4,
    LinkType::Ipv6,
];

#[test]
fn random_expressions_agree_with_libpcap() {
    let seed = netmux_testkit::seed("random_expressions_agree_with_libpcap");
    let count: usize = std::env::var("NETMUX_RANDOM_EXPRS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_EXPRS);
    eprintln!(
        "random expressions: seed {seed} (replay with NETMUX_SEED={seed}), {count} expressions"
    );
    let mut frames = sample_frames(100, seed);
    if let Some(dir) = corpus::conformance_dir() {
        if let Ok(c) = corpus::corpus_frames(&dir) {
            frames.extend(c.frames.into_iter().step_by(64).map(|(_, f)| f));
        }
    }
    let mut g = ExprGen::new(seed);
    let exprs: Vec<String> = (0..count).map(|_| g.expr(2)).collect();
    // Two threads (CI machines have two cores); libpcap's compiler is serialised inside the
    // oracle, running the programs is not.
    let half = exprs.len() / 2;
    let (a, b) = exprs.split_at(half);
    let mut bad = std::thread::scope(|s| {
        let frames = &frames;
        let run = |chunk: &[String]| {
            let mut bad = common::compare_all(chunk.iter().map(String::as_str), frames, true);
            // The unoptimized pipeline on a quarter of them.
            bad.extend(common::compare_all(
                chunk.iter().step_by(4).map(String::as_str),
                frames,
                false,
            ));
            // Every eighth on another link layer, in turn, optimized and not.
            let sampled: Vec<&str> = chunk.iter().step_by(8).map(String::as_str).collect();
            for (l, link) in OTHER_LINKS.iter().enumerate() {
                let relinked: Vec<_> = frames
                    .iter()
                    .map(|f| relink(f, link.dlt() as i32))
                    .collect();
                let exprs = sampled.iter().skip(l).step_by(OTHER_LINKS.len()).copied();
                for optimize in [true, false] {
                    bad.extend(
                        common::compare_all_on(exprs.clone(), &relinked, optimize, *link)
                            .into_iter()
                            .map(|m| format!("{}: {m}", link.name())),
                    );
                }
            }
            bad
        };
        let h = s.spawn(move || run(b));
        let mut bad = run(a);
        bad.extend(h.join().expect("worker thread"));
        bad
    });
    bad.sort();
    assert!(
        bad.is_empty(),
        "seed {seed} (replay with NETMUX_SEED={seed}): {} disagreements:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// A compilation must not depend on the ones before it on the thread (the optimizer and the
/// code generator keep their buffers per thread): random expressions compiled in one order
/// and in the reverse order, each order on its own thread, give the same programs.
#[test]
fn compiling_in_any_order_gives_the_same_programs() {
    let seed = netmux_testkit::seed("compiling_in_any_order_gives_the_same_programs");
    let mut g = ExprGen::new(seed);
    // Deeper expressions than the differential test's, and long chains, so that the
    // optimizer's buffers grow and shrink between compilations.
    let exprs: Vec<String> = (0..3_000)
        .map(|i| match i % 4 {
            0 => {
                let n = 4 + i % 9;
                let op = if i % 8 == 0 { " or " } else { " and " };
                (0..n).map(|_| g.expr(1)).collect::<Vec<_>>().join(op)
            }
            _ => g.expr(2 + (i % 3) as u32),
        })
        .collect();
    let compile_all = |exprs: Vec<String>| {
        std::thread::spawn(move || {
            exprs
                .iter()
                .map(|e| {
                    let p = netmux_compiler::compile(e, &netmux_compiler::Options::default());
                    (
                        e.clone(),
                        p.map(|p| p.insns().to_vec()).map_err(|e| e.to_string()),
                    )
                })
                .collect::<Vec<_>>()
        })
        .join()
        .expect("compiling thread")
    };
    let forward = compile_all(exprs.clone());
    let mut backward = compile_all(exprs.into_iter().rev().collect());
    backward.reverse();
    for (f, b) in forward.iter().zip(&backward) {
        assert_eq!(
            f, b,
            "seed {seed} (replay with NETMUX_SEED={seed}): `{}` compiles differently after other expressions",
            f.0
        );
    }
}
