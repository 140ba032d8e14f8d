//! `netmux ls` as the built binary, against the three ways netd can fail to list: nothing
//! listens (exit 2, "is netd running?", each cause said once), netd refuses because its driver
//! is gone (exit 1, netd's reason, no "is netd running?"), and a socket that accepts and never
//! answers (exit 2 once `--timeout` has passed, not a hang).

use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use netmux_testkit::TempDir;

const NETMUX: &str = env!("CARGO_BIN_EXE_netmux");

fn ls(dir: &std::path::Path, extra: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = Command::new(NETMUX)
        .arg("ls")
        .arg("--runtime-dir")
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    (out, start.elapsed())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn ls_without_netd_asks_whether_it_runs_and_says_the_cause_once() {
    let dir = TempDir::new("nmx-ls-none");
    let (out, _) = ls(dir.path(), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is netd running with --runtime-dir"), "{err}");
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause is said once: {err}"
    );
}

#[test]
fn ls_says_netds_driver_is_gone_when_netd_answers_so() {
    let mut host =
        netmux_netd::testing::Host::start([2, 0, 0, 0, 0, 7], "10.9.7.2".parse().unwrap(), |_| {});
    host.stop_driver();
    let dir = host.runtime_dir().to_owned();
    // netd notices within its tick; until then a client may still be let in.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (out, err) = loop {
        let (out, _) = ls(&dir, &[]);
        let err = stderr(&out);
        if out.status.code() != Some(0) || Instant::now() > deadline {
            break (out, err);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(out.status.code(), Some(1), "netd answered: {err}");
    assert!(err.contains("netd's driver is gone"), "{err}");
    assert!(!err.contains("is netd running"), "{err}");
}

#[test]
fn ls_gives_up_on_a_netd_that_accepts_and_never_answers() {
    let dir = TempDir::new("nmx-ls-mute");
    let listener = UnixListener::bind(dir.join("netd.sock")).unwrap();
    std::thread::spawn(move || {
        let mut held: Vec<UnixStream> = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let (out, took) = ls(dir.path(), &["--timeout", "0.5"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("did not answer within 0.5 s"), "{err}");
    assert!(took < Duration::from_secs(5), "ls took {took:?}");
    eprintln!("ls gave up after {took:?}");
}

#[test]
fn ls_help_states_the_default_timeout_with_an_example() {
    let out = Command::new(NETMUX)
        .args(["ls", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--timeout <SECS>"), "{help}");
    assert!(help.contains("[default: 10]"), "{help}");
    assert!(help.contains("Example: netmux ls"), "{help}");
}
