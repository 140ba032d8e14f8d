//! Process tests: the workspace's own binaries (`netd`, `netmux-driver`), children that get a
//! socket as descriptor 3, and [`DriverProcess`], the driver binary on a virtual cable.
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

/// The `netmux-driver` binary of this build running on a `virtual:` cable, with its control
/// socket and cable in a scratch directory of its own. Dropping it kills the process by its
/// pid, reaps it and removes the directory, so a failing test leaves nothing behind.
#[derive(Debug)]
pub struct DriverProcess {
    child: Child,
    dir: crate::TempDir,
}

impl DriverProcess {
    /// The control socket's name in [`DriverProcess::dir`].
    pub const CONTROL: &'static str = "driver.sock";
    /// The link's socket's name in [`DriverProcess::dir`].
    pub const CABLE: &'static str = "cable";

    /// Starts `netmux-driver --link virtual:DIR/cable --control DIR/driver.sock --engine
    /// interp` (the interpreter: no test waits for Cranelift), its stderr discarded, in a new
    /// directory named after `tag`. The link has no fixed peer: it sends to whoever last sent
    /// to it. Panics (test support) when it cannot be started.
    pub fn start(tag: &str) -> DriverProcess {
        let dir = crate::TempDir::new(&format!("netmux-driver-{tag}"));
        let child = Command::new(workspace_binary("netmux-driver"))
            .arg("--link")
            .arg(format!("virtual:{}", dir.join(Self::CABLE).display()))
            .arg("--control")
            .arg(dir.join(Self::CONTROL))
            .args(["--engine", "interp"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting netmux-driver");
        DriverProcess { child, dir }
    }

    /// Its directory (removed on drop): a test may keep its own files there.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The control socket.
    pub fn control(&self) -> PathBuf {
        self.dir.join(Self::CONTROL)
    }

    /// The link's end of the cable: where a test host sends frames.
    pub fn cable(&self) -> PathBuf {
        self.dir.join(Self::CABLE)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Connects to the control socket, waiting up to `patience` for the driver to open it.
    /// Panics when it does not.
    pub fn connect(&self, patience: std::time::Duration) -> UnixStream {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match UnixStream::connect(self.control()) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("the driver's control socket takes no connection: {e}")
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }

    /// Kills the process with SIGKILL (by its pid) and reaps it.
    pub fn kill(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
