//! The conformance corpus: every expression of `exprs.txt` on every Ethernet frame of every
//! capture, netmux with the optimizer on and off against libpcap with it on and off, exactly
//! (`common::compare_all_exact`: unlike the other differential tests, not even a frame where
//! libpcap's optimizer changed its own verdict is let through), and every line of `reject.txt`
//! rejected with a caret error. Needs the corpus, so
//! `#[ignore]`d; `scripts/test` runs it when `$NETMUX_CONFORMANCE_DIR` or `../shared/conformance` exists.

mod common;

use netmux_testkit::corpus;

#[test]
#[ignore = "needs the conformance corpus ($NETMUX_CONFORMANCE_DIR or ../shared/conformance)"]
fn every_corpus_expression_agrees_with_libpcap_on_every_corpus_frame() {
    let dir = corpus::conformance_dir().expect("conformance corpus not found");
    let exprs = corpus::exprs(&dir).unwrap();
    let frames: Vec<_> = corpus::corpus_frames(&dir)
        .unwrap()
        .frames
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    let mut mismatches = Vec::new();
    for optimize in [true, false] {
        mismatches.extend(common::compare_all_exact(
            exprs.iter().map(String::as_str),
            &frames,
            optimize,
        ));
    }
    eprintln!("{} expressions x {} frames x 2", exprs.len(), frames.len());
    assert!(
        mismatches.is_empty(),
        "{} disagreements:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
#[ignore = "needs the conformance corpus ($NETMUX_CONFORMANCE_DIR or ../shared/conformance)"]
fn corpus_reject_lines_are_rejected_with_a_caret_under_the_fault() {
    let dir = corpus::conformance_dir().expect("conformance corpus not found");
    let mut bad = Vec::new();
    for e in corpus::reject_exprs(&dir).unwrap() {
        match netmux_compiler::compile(&e, &Default::default()) {
            Ok(_) => bad.push(format!("{e}: compiled")),
            Err(err) => {
                let text = err.to_string();
                let lines: Vec<&str> = text.lines().collect();
                assert_eq!(lines.len(), 3, "{text}");
                assert!(lines[2].trim_start().starts_with('^'), "{text}");
                eprintln!("{text}\n");
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}
