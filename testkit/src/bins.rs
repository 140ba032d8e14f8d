//! The workspace's own binaries (`netd`, `netmux-driver`) for tests that run them as processes.
//!
//! A test binary lives in `target/<profile>/deps/`; the binaries it needs are in
//! `target/<profile>/`. Under cargo (`$CARGO` is set) they are built, that is brought up to
//! date, once per test process before the first use, so a test never runs a stale binary left
//! by an earlier build; without cargo they must already be there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Every (package, binary) this crate knows how to build.
const BINARIES: &[(&str, &str)] = &[("netmux-netd", "netd"), ("netmux-driver", "netmux-driver")];

/// Whether this process already brought the binaries up to date.
static BUILT: Mutex<bool> = Mutex::new(false);

/// The path of the workspace binary `name` (`"netd"` or `"netmux-driver"`) of the running test's
/// profile, built first when running under cargo. Panics (this is test support) when it cannot
/// be built or found.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps")
        .to_path_buf();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        if let Some(cargo) = std::env::var_os("CARGO") {
            let mut cmd = Command::new(cargo);
            cmd.arg("build");
            for (package, bin) in BINARIES {
                cmd.args(["-p", package, "--bin", bin]);
            }
            cmd.arg("--target-dir")
                .arg(profile_dir.parent().expect("target/<profile>"))
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("running cargo build");
            assert!(status.success(), "building {BINARIES:?}: {status}");
        }
        *built = true;
    }
    let bin = profile_dir.join(name);
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}
