//! `netmux demo`, run as the built binary: it must succeed without privileges, print the
//! per-client summary table with every exchange and both refusals, and leave nothing behind.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NETMUX: &str = env!("CARGO_BIN_EXE_netmux");
/// The demo bounds its own waits; this only keeps a hung run from hanging the suite.
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn demo_succeeds_and_prints_the_per_client_table() {
    let mut child = Command::new(NETMUX)
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("netmux demo did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row in\n{stdout}"))
            .to_string()
    };
    assert!(stdout.contains("client"), "{stdout}");
    assert!(row("udp-echo").contains("udp/7007"), "{stdout}");
    assert!(row("udp-echo").contains("3+1 frag"), "{stdout}");
    assert!(row("http").contains("tcp/8080"), "{stdout}");
    assert!(row("spoofer").contains("2 spoofs, 2 thefts"), "{stdout}");
    assert!(row("netd host").contains("arp"), "{stdout}");
    assert!(
        stdout.contains("every exchange succeeded"),
        "{stdout}\n{stderr}"
    );
    let dir = stdout
        .lines()
        .find_map(|l| l.split("runtime directory ").nth(1))
        .expect("the runtime directory is named");
    assert!(
        !std::path::Path::new(dir.trim()).exists(),
        "the temporary directory is removed"
    );
}
