//! The conformance corpus, when present, reads as the README describes it.

use netmux_testkit::corpus;

#[test]
#[ignore = "needs the conformance corpus ($NETMUX_CONFORMANCE_DIR or ../shared/conformance)"]
fn corpus_has_thousands_of_ethernet_frames_and_both_lists() {
    let dir = corpus::conformance_dir().expect("conformance corpus not found");
    let frames = corpus::corpus_frames(&dir).unwrap();
    eprintln!(
        "{} frames from {} captures; {} non-Ethernet captures skipped; {} unreadable",
        frames.frames.len(),
        frames.captures,
        frames.skipped_non_ethernet.len(),
        frames.unreadable.len()
    );
    for (p, why) in &frames.unreadable {
        eprintln!("unreadable: {}: {why}", p.display());
    }
    assert!(frames.frames.len() > 1000);
    assert!(corpus::exprs(&dir).unwrap().len() > 100);
    assert!(!corpus::reject_exprs(&dir).unwrap().is_empty());
}
