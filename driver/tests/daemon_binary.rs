//! The `netmux-driver` binary: it serves netd on its control socket, and a SIGTERM makes it
//! fail closed and exit cleanly.

mod daemon_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon_common::*;
use netmux_proto::driver::DriverReply;

#[test]
fn the_binary_serves_netd_and_fails_closed_on_sigterm() {
    let dir = netmux_testkit::TempDir::new("netmux-driver-binary");
    let control = dir.join("driver.sock");
    let cable = dir.join("cable");
    let mut child = Command::new(env!("CARGO_BIN_EXE_netmux-driver"))
        .args(["--link", &format!("virtual:{}", cable.display())])
        .args(["--control", &control.display().to_string()])
        .args(["--engine", "interp"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut netd, hello) = Netd::connect(&control);
    assert!(matches!(hello, DriverReply::Hello { .. }), "{hello:?}");
    let client = netd.queue(1);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the driver did not exit on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    assert!(
        client.is_closed(),
        "the queue was failed closed before exit"
    );
    assert!(!control.exists(), "the control socket is removed");
}

#[test]
fn a_bad_link_spec_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_netmux-driver"))
        .args([
            "--link",
            "carrier-pigeon:x",
            "--control",
            "/nonexistent/x.sock",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown link kind"), "{stderr}");
}
