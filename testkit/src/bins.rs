//! Process tests: the workspace's own binaries (`netd`, `netmux-driver`), and children that
//! get a socket as descriptor 3.
//!
//! A test binary lives in `target/<profile>/deps/`; the binaries it needs are in
//! `target/<profile>/`. Under cargo (`$CARGO` is set) they are built, that is brought up to
//! date, once per test process before the first use, so a test never runs a stale binary left
//! by an earlier build; without cargo they must already be there.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
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

/// Spawns `cmd` with `socket` as its descriptor 3, the way the process tests hand a child
/// (often the test binary itself, re-run as a role) its end of a socketpair; the parent's copy
/// is closed once the child has started. Panics (test support) when the spawn fails.
#[allow(unsafe_code)]
pub fn spawn_with_fd3(mut cmd: Command, socket: UnixStream) -> Child {
    let fd = OwnedFd::from(socket);
    let raw = fd.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) run.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec; clear it by hand then.
            let ok = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(raw, 3) == 3
            };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let child = cmd.spawn().expect("spawning the child process");
    drop(fd);
    child
}
