//! The tokio shell: the client socket, one task per client, the handshake clock, the driver
//! worker and the host stack's thread, around [`Netd`].
//!
//! Each client task reads whole messages as the socket becomes readable and hands each
//! request to [`Netd::handle`] under the state lock. netd decides there, without I/O; when the
//! request needs the driver, the task carries the [`DriverWork`] out on the
//! [`DriverWorker`] with the lock released (a deadline on every driver request), and feeds the
//! outcomes back with [`Netd::resume`]. Then it writes the reply, waiting for the socket to be
//! writable so a client that never reads its replies costs only its own task; after
//! [`Config::reply_timeout`] it is disconnected. Whatever ends the task (close, death, a broken
//! message frame, a timeout), [`Netd::disconnect`] runs, once, and its removals are carried out
//! the same way.
//!
//! Every [`EXPIRY_TICK`] the shell also asks the worker whether the driver is gone (its
//! connection closed, or a request missed its deadline); when it is, netd logs it once, ends
//! every session, and refuses every new client with `ErrorCode::Driver` and the reason, until
//! it is restarted with a driver. A refusal at connect answers the client's first message, so
//! the client reads the reason. A new driver may be put in the old one's place
//! ([`NetdHandle::replace_driver`], for `netmux up --restart`): netd installs its state there
//! and takes clients again.
//!
//! The same tick writes netd's ports file ([`crate::ports_file`]) when the bound ports
//! changed, and frees ports held from before a restart once their grace period is over.
//! Before it listens, netd probes for its static address on real links ([`crate::dad`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netmux_proto::async_channel::AsyncChannel;
use netmux_proto::channel::ChannelError;
use netmux_proto::client::{ClientReply, ClientRequest};
use netmux_proto::frame;
use tokio::net::UnixListener;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::core::policy::SMALL_MESSAGE;
use crate::core::{Credentials, Limit, LimitReached, SessionId};
use crate::driver_link::DriverCommand;
use crate::driver_link::DriverLink;
use crate::driver_worker::{DriverWorker, WorkerConfig};
use crate::host;
pub use crate::service::{lock, SharedNetd};
use crate::service::{DriverWork, Netd, Response, StartError, Step};

/// How often the handshake deadlines are checked.
pub const EXPIRY_TICK: Duration = Duration::from_millis(100);
/// How long destroying an instance waits for its sessions to end: each ends as soon as its
/// task sees the kill, unless it waits on the driver, which has its own deadline.
pub const END_SESSIONS_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// netd itself could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The runtime directory or socket could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// What the system said.
        source: io::Error,
    },
    /// A directory netd keeps a socket in could be changed by another user ([`check_dir`]).
    #[error("refusing {dir}: {why}")]
    UnsafeDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it and how to fix it.
        why: String,
    },
    /// Another netd answers on the socket.
    #[error("another netd is listening on {0}")]
    AlreadyRunning(PathBuf),
    /// Duplicate address detection did not clear the host's address ([`crate::dad`]).
    #[error(transparent)]
    Address(#[from] crate::dad::DadError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// Creates the runtime directory (readable by all: clients of any uid connect, and the policy
/// decides what they may do) and clears a stale socket. Fails if a live netd answers there, or
/// if the directory is not safe ([`check_dir`]). Returns the directory if this call created it
/// (netd removes it again at shutdown, once empty).
pub fn prepare_socket(path: &Path) -> Result<Option<PathBuf>, ServeError> {
    let mut created = None;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if runtime_dir(dir)? {
            created = Some(dir.to_owned());
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::AlreadyRunning(path.to_owned()));
        }
        std::fs::remove_file(path)
            .map_err(io_err(format!("removing stale socket {}", path.display())))?;
    }
    Ok(created)
}

/// Creates the runtime directory (mode 0755) if it is missing and checks it ([`check_dir`]);
/// returns whether this call created it.
pub fn runtime_dir(dir: &Path) -> Result<bool, ServeError> {
    make_dir(dir, 0o755)
}

/// Creates a directory only its owner may enter (for the driver's control socket), after
/// [`check_dir`] if it was there already.
pub fn private_dir(dir: &Path) -> Result<(), ServeError> {
    make_dir(dir, 0o700)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("restricting {}", dir.display())))
}

/// Creates `dir` (and its parents) with `mode` if it is missing, then checks it
/// ([`check_dir`]) whether it was made here or found: another user may have made it first.
/// Returns whether this call created it.
fn make_dir(dir: &Path, mode: u32) -> Result<bool, ServeError> {
    let missing = std::fs::symlink_metadata(dir).is_err();
    if missing {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    let mine = check_dir(dir);
    if missing && mine.is_ok() {
        // The umask may have left it writable by the group.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("setting the mode of {}", dir.display())))?;
    }
    mine.map(|()| missing)
}

/// Checks that a directory netd keeps a socket in is netd's alone to change: a directory
/// (not a symbolic link), owned by netd's own uid, and writable by neither its group nor
/// others. Anyone else who could write there could put a socket of their own in netd's
/// place (clients would talk to them) or in the driver's (netd would hand clients their
/// rings).
pub fn check_dir(dir: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::symlink_metadata(dir).map_err(io_err(format!("examining {}", dir.display())))?;
    let unsafe_dir = |why: String| ServeError::UnsafeDir {
        dir: dir.to_owned(),
        why,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir(format!(
            "it is a symbolic link; give the directory it points to ({}) instead",
            std::fs::read_link(dir).map_or_else(|_| "?".into(), |t| t.display().to_string())
        )));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_dir(format!(
            "it belongs to uid {}, not to netd's uid {me}, and its owner could replace the \
             sockets in it; remove it (netd makes it again) or give --runtime-dir a directory of \
             uid {me}'s own",
            meta.uid()
        )));
    }
    let writable = match (meta.mode() & 0o020 != 0, meta.mode() & 0o002 != 0) {
        (true, true) => Some("its group and all other users"),
        (true, false) => Some("its group"),
        (false, true) => Some("all other users"),
        (false, false) => None,
    };
    if let Some(who) = writable {
        return Err(unsafe_dir(format!(
            "{who} may write in it (mode {:04o}) and could replace the sockets in it; run \
             `chmod go-w {}`",
            meta.mode() & 0o7777,
            dir.display()
        )));
    }
    Ok(())
}

struct Shell {
    reply_timeout: Duration,
    /// How long a message may take from its first byte to its last.
    message_timeout: Duration,
    /// [`crate::core::Limits::buffered_bytes_per_uid`].
    buffered_per_uid: u64,
    /// Bytes of messages not yet whole, per uid, over every connection.
    buffered: Mutex<HashMap<u32, u64>>,
    state: SharedNetd,
    driver: DriverWorker,
    kills: Mutex<HashMap<SessionId, oneshot::Sender<()>>>,
    /// Whether every session was ended because the driver is gone.
    sessions_ended: std::sync::atomic::AtomicBool,
    /// SIGHUP arrived: the overlay loop reads every mapping file again.
    hangup: std::sync::atomic::AtomicBool,
    start: Instant,
    /// netd's ports file ([`crate::ports_file`]) and what was last written there.
    ports_file: PathBuf,
    /// [`Config::port_grace`].
    port_grace: Duration,
    /// The ports bound when the driver was found gone, to hold for their uids once a new
    /// driver is in place ([`replace_driver`]).
    ports_at_loss: Mutex<Vec<crate::ports_file::Entry>>,
    /// The ports file's text as last written (it is rewritten only when this changes).
    ports_written: Mutex<Option<String>>,
}

impl Shell {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Whether `uid` may have netd buffer a message of `len` bytes: one of up to
    /// [`SMALL_MESSAGE`] always; a longer one if the uid's messages not yet whole stay within
    /// [`crate::core::Limits::buffered_bytes_per_uid`]. What it takes is recorded in `held`
    /// (the connection's share) until [`Shell::unbuffer`].
    fn admit(&self, uid: u32, len: usize, held: &AtomicU64) -> Result<(), String> {
        if len <= SMALL_MESSAGE {
            return Ok(());
        }
        let len = len as u64;
        let mut buffered = self.buffered.lock().unwrap_or_else(|e| e.into_inner());
        let used = buffered.entry(uid).or_default();
        if used.saturating_add(len) > self.buffered_per_uid {
            return Err(LimitReached {
                limit: Limit::BufferedBytesPerUid,
                value: self.buffered_per_uid,
            }
            .to_string());
        }
        *used += len;
        held.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Gives a connection's share of its uid's buffered bytes back (its message is whole, or
    /// the connection ended).
    fn unbuffer(&self, uid: u32, held: &AtomicU64) {
        let n = held.swap(0, Ordering::Relaxed);
        if n == 0 {
            return;
        }
        let mut buffered = self.buffered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(used) = buffered.get_mut(&uid) {
            *used = used.saturating_sub(n);
            if *used == 0 {
                buffered.remove(&uid);
            }
        }
    }

    /// Ends sessions (their tasks see the kill, close the connection and run the session's
    /// end) and waits, at most [`END_SESSIONS_TIMEOUT`], until every one is gone.
    async fn end_sessions(&self, sessions: &[SessionId]) {
        {
            let mut kills = self.kills.lock().unwrap_or_else(|e| e.into_inner());
            for id in sessions {
                if let Some(k) = kills.remove(id) {
                    let _ = k.send(());
                }
            }
        }
        let deadline = Instant::now() + END_SESSIONS_TIMEOUT;
        loop {
            let left = {
                let netd = lock(&self.state);
                sessions
                    .iter()
                    .filter(|&&id| netd.has_session(id) || netd.tearing_down(id))
                    .count()
            };
            if left == 0 || Instant::now() > deadline {
                if left > 0 {
                    tracing::warn!(left, "sessions did not end in time");
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Carries a step out to its end: driver work at the driver (with the state unlocked),
    /// fed back to netd, until there is a reply (or nothing more to do).
    async fn drive(&self, mut step: Step) -> Option<Response> {
        loop {
            match step {
                Step::Reply(r) => return Some(r),
                Step::Finished => return None,
                Step::Wait(w) => return Some(w.outcome().await),
                Step::Driver(DriverWork {
                    commands,
                    stop_at_first_failure,
                    then,
                }) => {
                    let outcomes = self.driver.run(commands, stop_at_first_failure).await;
                    step = lock(&self.state).resume(then, outcomes);
                }
                Step::EndSessions { sessions, then } => {
                    self.end_sessions(&sessions).await;
                    step = lock(&self.state).resume(then, Vec::new());
                }
            }
        }
    }
}

/// A new driver for a running netd ([`NetdHandle::replace_driver`]), and where to say how
/// putting it in place went.
struct Replacement {
    link: Box<dyn DriverLink>,
    done: std::sync::mpsc::Sender<Result<(), String>>,
}

/// A bound, not yet running netd.
pub struct Server {
    listener: UnixListener,
    shell: Arc<Shell>,
    replace_tx: tokio::sync::mpsc::UnboundedSender<Replacement>,
    replace_rx: tokio::sync::mpsc::UnboundedReceiver<Replacement>,
    /// The host queue, when netd used it already (to probe for its address).
    host_queue: Option<netmux_ring::ClientQueue>,
    socket: PathBuf,
    /// The runtime directory, if netd created it.
    created_dir: Option<PathBuf>,
    /// SIGHUP, caught from [`Server::bind`] on.
    hangups: Option<tokio::signal::unix::Signal>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("socket", &self.socket)
            .finish()
    }
}

impl Server {
    /// Starts netd over `driver` (its host queue and filters set up at the driver) and binds
    /// the client socket (inside a tokio runtime).
    pub async fn bind(config: &Config, driver: Box<dyn DriverLink>) -> Result<Server, ServeError> {
        let driver = DriverWorker::spawn(
            driver,
            WorkerConfig {
                timeout: config.driver_timeout,
            },
        )
        .map_err(io_err("starting the driver thread"))?;
        let (mut netd, commands) = Netd::new(config, driver.link_info())?;
        netd.started(driver.run(commands, true).await)?;
        let ports_file = crate::ports_file::path_in(&config.runtime_dir);
        match crate::ports_file::read(&ports_file) {
            Ok(entries) if !entries.is_empty() => {
                let held = netd.hold_ports(&entries, config.port_grace);
                tracing::info!(
                    held,
                    "holding the ports the previous netd had bound for their uids for {} s",
                    config.port_grace.as_secs_f64()
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "reading {}: {e}; no port is held from before",
                ports_file.display()
            ),
        }
        let host_queue = match netd.dad_target() {
            Some((mac, address)) => Some(probe_address(&mut netd, &driver, mac, address).await?),
            None => None,
        };
        let socket = config.socket_path();
        let created_dir = prepare_socket(&socket)?;
        let listener =
            UnixListener::bind(&socket).map_err(io_err(format!("binding {}", socket.display())))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
            .map_err(io_err("opening the socket to every uid"))?;
        let (replace_tx, replace_rx) = tokio::sync::mpsc::unbounded_channel();
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!("SIGHUP will not reload mapping files: {e}"))
            .ok();
        Ok(Server {
            listener,
            host_queue,
            replace_tx,
            replace_rx,
            hangups,
            shell: Arc::new(Shell {
                state: Arc::new(Mutex::new(netd)),
                driver,
                kills: Mutex::new(HashMap::new()),
                sessions_ended: std::sync::atomic::AtomicBool::new(false),
                hangup: std::sync::atomic::AtomicBool::new(false),
                start: Instant::now(),
                ports_file,
                port_grace: config.port_grace,
                ports_at_loss: Mutex::new(Vec::new()),
                ports_written: Mutex::new(None),
                reply_timeout: config.reply_timeout,
                message_timeout: config.message_timeout,
                buffered_per_uid: config.policy.limits.buffered_bytes_per_uid,
                buffered: Mutex::new(HashMap::new()),
            }),
            socket,
            created_dir,
        })
    }

    /// The client socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The shared state (for `netmux ls` and tests).
    pub fn state(&self) -> SharedNetd {
        self.shell.state.clone()
    }

    /// Serves until `shutdown` completes; then removes the socket, and the runtime directory if
    /// netd created it and nothing else is left in it. The host stack (if any) runs
    /// on a thread of its own for as long.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let mut host_stack = match self.host_queue.take() {
            Some(queue) => host::spawn_stack_on(self.shell.state.clone(), queue),
            None => host::spawn_stack(self.shell.state.clone()),
        };
        let ticker = tokio::spawn(expiry_loop(self.shell.clone()));
        let overlays = tokio::spawn(overlay_loop(self.shell.clone()));
        let hangups = tokio::spawn(hangup_loop(self.shell.clone(), self.hangups));
        // Addresses change by DHCP, SLAAC and duplicate address detection, also of instances
        // created later: the loop runs whenever the host stack does (idle, it only looks).
        let dhcp = host_stack
            .is_some()
            .then(|| tokio::spawn(dhcp_loop(self.shell.clone())));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(r) = self.replace_rx.recv() => {
                    let result = replace_driver(&self.shell, r.link, &mut host_stack).await;
                    let _ = r.done.send(result);
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(client_task(self.shell.clone(), stream));
                    }
                    Err(e) => {
                        // Out of descriptors, most likely: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        ticker.abort();
        overlays.abort();
        hangups.abort();
        if let Some(d) = dhcp {
            d.abort();
        }
        drop(host_stack);
        let _ = std::fs::remove_file(&self.socket);
        // Ports bound now stay in the file for the next netd; with none, nothing is left.
        if lock(&self.shell.state).ports_snapshot().is_empty() {
            let _ = std::fs::remove_file(&self.shell.ports_file);
        }
        if let Some(dir) = &self.created_dir {
            // Fails, as it should, while anything else is in it.
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
}

/// Probes for the host's static address on the host queue before netd takes clients
/// ([`crate::dad`]), then removes the probes' transmit filter; returns the host queue for the
/// host stack.
async fn probe_address(
    netd: &mut Netd,
    driver: &DriverWorker,
    mac: [u8; 6],
    address: std::net::Ipv4Addr,
) -> Result<netmux_ring::ClientQueue, ServeError> {
    let created = netd.take_host_queue().ok_or_else(|| ServeError::Io {
        what: "probing for the host address".into(),
        source: io::Error::other("netd has no host queue"),
    })?;
    let mut queue =
        netmux_ring::ClientQueue::from_fds(created.memfd, created.doorbell).map_err(|e| {
            ServeError::Io {
                what: "mapping the host queue".into(),
                source: io::Error::other(e.to_string()),
            }
        })?;
    let probed = tokio::task::spawn_blocking(move || {
        let r = crate::dad::run(&mut queue, mac, address);
        (queue, r)
    })
    .await
    .map_err(|e| ServeError::Io {
        what: "probing for the host address".into(),
        source: io::Error::other(e.to_string()),
    })?;
    let (queue, result) = probed;
    result?;
    for o in driver.run(netd.dad_done(), false).await {
        if let crate::driver_link::DriverOutcome::Failed(e) = o {
            tracing::warn!("removing the ARP probes' transmit filter: {e}");
        }
    }
    Ok(queue)
}

/// Puts a new driver in place of one that went away (`netmux up --restart`), keeping netd:
/// every session is ended first (clients see their connection close and their queue closed;
/// the client library's `Reconnecting` connects again, binds its ports again and opens a new
/// queue; the ports bound when the driver went away are held for their uids for
/// [`Config::port_grace`], as across a netd restart), the host stack stops, the new link
/// replaces the old at the worker, netd's state is installed at the new driver
/// ([`Netd::driver_replaced`]: instances, host addresses, overlays, firewall rules, the host
/// queue and netd's filters), and the host stack starts again on the new host queue. Clients are refused, with the reason, until it is done; if it
/// fails, the driver stays gone.
async fn replace_driver(
    shell: &Shell,
    link: Box<dyn DriverLink>,
    host_stack: &mut Option<host::HostStack>,
) -> Result<(), String> {
    let why = "the driver is being restarted";
    shell.driver.declare_gone(why);
    let (sessions, mut ports) = {
        let mut netd = lock(&shell.state);
        netd.driver_gone_because(why.to_owned());
        (netd.session_ids(), netd.ports_snapshot())
    };
    ports.extend(std::mem::take(
        &mut *shell
            .ports_at_loss
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    ));
    ports.sort();
    ports.dedup();
    shell.sessions_ended.store(true, Ordering::Relaxed);
    shell.end_sessions(&sessions).await;
    {
        let mut kills = shell.kills.lock().unwrap_or_else(|e| e.into_inner());
        for (_, k) in kills.drain() {
            let _ = k.send(());
        }
    }
    *host_stack = None;
    shell.driver.replace(link).await?;
    let installed = match lock(&shell.state).driver_replaced() {
        Ok(commands) => Ok(commands),
        Err(e) => Err(e.to_string()),
    };
    let result = match installed {
        Ok(commands) => {
            let outcomes = shell.driver.run(commands, true).await;
            lock(&shell.state)
                .reinstalled(outcomes)
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        shell.driver.declare_gone(e);
        tracing::error!("the new driver did not take netd's state: {e}");
        return result;
    }
    let held = lock(&shell.state).hold_ports(&ports, shell.now() + shell.port_grace);
    shell.sessions_ended.store(false, Ordering::Relaxed);
    *host_stack = host::spawn_stack(shell.state.clone());
    tracing::info!(
        sessions_ended = sessions.len(),
        ports_held = held,
        "a new driver holds netd's state; clients are taken again (their ports held for their \
         uids for {} s)",
        shell.port_grace.as_secs_f64()
    );
    Ok(())
}

/// Every [`EXPIRY_TICK`]: ends sessions whose handshake timed out, and, when the driver is
/// found gone, says so and ends every session (clients see their control connection close;
/// new ones are refused by [`Netd::connect`]).
async fn expiry_loop(shell: Arc<Shell>) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    // The ports' version when the ports file was last brought up to date.
    let mut last_ports = None;
    loop {
        tick.tick().await;
        let gone = shell.driver.gone();
        let (expired, driver_gone, ports) = {
            let mut netd = lock(&shell.state);
            let freed = netd.expire_holds(shell.now());
            if freed > 0 {
                tracing::info!(
                    freed,
                    "ports held from before the restart are free: their grace period is over"
                );
            }
            if let Some(why) = gone {
                netd.driver_gone_because(why);
            }
            // Sessions end once, whichever way netd learnt that the driver is gone.
            let news = netd
                .driver_gone()
                .filter(|_| {
                    !shell
                        .sessions_ended
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                })
                .map(str::to_owned);
            // Only the copy of the ports is made under the lock, and only when they changed
            // since the last tick: with 100,000 ports bound, naming, sorting and rendering
            // them would hold up every client for milliseconds ten times a second.
            let version = netd.ports_version();
            let changed = last_ports != Some(version);
            last_ports = Some(version);
            let raw = (changed || news.is_some()).then(|| netd.ports_raw());
            (netd.expired(shell.now()), news, raw)
        };
        if let Some(raw) = ports {
            // Sorting and rendering 100,000 ports takes milliseconds: not on a worker that
            // serves clients.
            let (shell, lost) = (shell.clone(), driver_gone.is_some());
            let written = tokio::task::spawn_blocking(move || {
                let snapshot = raw.entries();
                if lost {
                    *shell
                        .ports_at_loss
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = snapshot.clone();
                }
                write_ports(&shell, crate::ports_file::render(&snapshot));
            })
            .await;
            if let Err(e) = written {
                tracing::warn!("bringing the ports file up to date: {e}");
            }
        }
        let mut kills = shell.kills.lock().unwrap_or_else(|e| e.into_inner());
        for id in expired {
            tracing::info!(%id, "handshake timed out");
            if let Some(k) = kills.remove(&id) {
                let _ = k.send(());
            }
        }
        if let Some(why) = driver_gone {
            tracing::error!(
                sessions = kills.len(),
                "the driver is gone ({why}): ending every session; new clients are refused \
                 until netd is restarted with a driver"
            );
            for (_, k) in kills.drain() {
                let _ = k.send(());
            }
        }
    }
}

/// Writes netd's ports file ([`crate::ports_file`]) if its text changed.
fn write_ports(shell: &Shell, text: String) {
    let mut written = shell
        .ports_written
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if written.as_deref() == Some(text.as_str()) {
        return;
    }
    if let Err(e) = crate::ports_file::write(&shell.ports_file, &text) {
        // Once per change of the text: a full disk is said, not repeated every tick.
        tracing::warn!("writing {}: {e}", shell.ports_file.display());
    }
    *written = Some(text);
}

/// How often the DHCP client's reports are taken to the driver.
const DHCP_TICK: Duration = Duration::from_millis(100);

/// Every [`DHCP_TICK`]: applies what netd's DHCP client reported (a lease taken, renewed or
/// lost), and what SLAAC and duplicate address detection reported (an IPv6 address taken or
/// refused, a default router), and tells the driver each instance's new address and
/// netd's filters for it.
async fn dhcp_loop(shell: Arc<Shell>) {
    let mut tick = tokio::time::interval(DHCP_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (commands, stale) = {
            let mut netd = lock(&shell.state);
            if netd.driver_gone().is_some() {
                continue;
            }
            let (mut commands, mut stale) = netd.take_dhcp_commands();
            let (more, gone) = netd.take_slaac_commands();
            commands.extend(more);
            stale.extend(gone);
            (commands, stale)
        };
        if !stale.is_empty() {
            shell.end_sessions(&stale).await;
        }
        if commands.is_empty() {
            continue;
        }
        for o in shell.driver.run(commands, false).await {
            if let crate::driver_link::DriverOutcome::Failed(e) = o {
                tracing::error!("dhcp: the driver did not take the new address: {e}");
            }
        }
    }
}

/// On every SIGHUP: has the overlay loop read every `files` mapping again, changed or not
/// (as daemons reload their configuration). netd catches SIGHUP from its start on, so the
/// signal never ends it.
async fn hangup_loop(shell: Arc<Shell>, hangups: Option<tokio::signal::unix::Signal>) {
    let Some(mut hangups) = hangups else { return };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading every mapping file");
        shell.hangup.store(true, Ordering::Relaxed);
    }
}

/// Every [`crate::overlay::POLL_INTERVAL`] while overlays exist: gives the driver the
/// mappings of changed mapping files, asks it which MACs it waits for, and answers them.
async fn overlay_loop(shell: Arc<Shell>) {
    let mut tick = tokio::time::interval(crate::overlay::POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut commands: Vec<DriverCommand> = {
            let mut netd = lock(&shell.state);
            if netd.overlays.is_empty() || netd.driver_gone().is_some() {
                continue;
            }
            let (underlay, own) = netd.overlay_own();
            netd.overlays.publish(underlay, &own);
            let reloaded = if shell.hangup.swap(false, Ordering::Relaxed) {
                netd.overlays.reload_all()
            } else {
                netd.overlays.reload()
            };
            reloaded.into_iter().map(DriverCommand::Overlay).collect()
        };
        commands.push(DriverCommand::Overlay(
            netmux_proto::driver::DriverRequest::OverlayPoll,
        ));
        let mut outcomes = shell.driver.run(commands, false).await;
        let Some(crate::driver_link::DriverOutcome::Reply(
            netmux_proto::driver::DriverReply::OverlayPoll(poll),
        )) = outcomes.pop()
        else {
            continue;
        };
        let answers: Vec<DriverCommand> = lock(&shell.state)
            .overlays
            .answer(poll)
            .into_iter()
            .map(DriverCommand::Overlay)
            .collect();
        if !answers.is_empty() {
            for o in shell.driver.run(answers, false).await {
                if let crate::driver_link::DriverOutcome::Failed(e) = o {
                    tracing::debug!("overlay mapping not taken: {e}");
                }
            }
        }
    }
}

async fn client_task(shell: Arc<Shell>, stream: tokio::net::UnixStream) {
    let Ok(std) = stream.into_std() else { return };
    let creds = match netmux_proto::peer_credentials(&std) {
        Ok(c) => Credentials {
            pid: c.pid,
            uid: c.uid,
            gid: c.gid,
        },
        Err(e) => {
            tracing::warn!("no peer credentials: {e}");
            return;
        }
    };
    let Ok(mut chan) = AsyncChannel::new(std) else {
        return;
    };
    let connected = lock(&shell.state).connect(creds, shell.now());
    let id = match connected {
        Ok(id) => id,
        Err(e) => {
            // The refusal is the reply to the client's first message (its hello): read that
            // first, so a client that sends before it reads gets the reason, not a broken pipe.
            // A hello is short; nothing longer is buffered for a client that is refused.
            let small = |len: usize| {
                (len <= SMALL_MESSAGE)
                    .then_some(())
                    .ok_or_else(|| "longer than a hello".to_owned())
            };
            let _ = tokio::time::timeout(shell.reply_timeout, chan.recv_raw_admitting(small)).await;
            let _ = chan
                .send(&ClientReply::Error(e), &[], shell.reply_timeout)
                .await;
            return;
        }
    };
    tracing::debug!(%id, ?creds, "client connected");
    let (kill_tx, mut kill) = oneshot::channel();
    shell
        .kills
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, kill_tx);
    let held = AtomicU64::new(0);
    serve_client(&shell, &mut chan, id, creds.uid, &held, &mut kill).await;
    shell.unbuffer(creds.uid, &held);
    shell
        .kills
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    let teardown = lock(&shell.state).disconnect(id);
    let _ = shell.drive(teardown).await;
    tracing::debug!(%id, "session ended");
}

/// Serves one session's requests until it ends. A message has [`Config::message_timeout`]
/// from its first byte to its last, and one longer than [`SMALL_MESSAGE`] is taken only
/// within its uid's budget ([`Shell::admit`]); otherwise the session ends, so a client that
/// starts messages and never finishes them holds neither memory nor a task for long.
async fn serve_client(
    shell: &Shell,
    chan: &mut AsyncChannel,
    id: SessionId,
    uid: u32,
    held: &AtomicU64,
    kill: &mut oneshot::Receiver<()>,
) {
    loop {
        let message = loop {
            // Between messages this only wakes the task now and then to look again.
            let wake =
                chan.channel().partial_since().unwrap_or_else(Instant::now) + shell.message_timeout;
            tokio::select! {
                _ = &mut *kill => return,
                m = chan.recv_raw_admitting(|len| shell.admit(uid, len, held)) => break m,
                _ = tokio::time::sleep_until(wake.into()) => {
                    let stalled = chan
                        .channel()
                        .partial_since()
                        .is_some_and(|t| t.elapsed() >= shell.message_timeout);
                    if stalled {
                        tracing::info!(
                            %id,
                            "ending session: a message begun {:.1} s ago is still not whole",
                            shell.message_timeout.as_secs_f64()
                        );
                        return;
                    }
                }
            }
        };
        shell.unbuffer(uid, held);
        let response = match message {
            Ok((_, fds)) if !fds.is_empty() => {
                drop(fds);
                lock(&shell.state).malformed("requests carry no descriptors")
            }
            Ok((body, _)) => match frame::decode::<ClientRequest>(&body) {
                Ok(request) => {
                    let step = lock(&shell.state).handle(id, request);
                    match shell.drive(step).await {
                        Some(r) => r,
                        None => return,
                    }
                }
                Err(e) => lock(&shell.state).malformed(&e.to_string()),
            },
            // The frame was read whole; only its descriptors were wrong: say so, go on.
            Err(e @ (ChannelError::MissingFds { .. } | ChannelError::ExtraFds)) => {
                lock(&shell.state).malformed(&e.to_string())
            }
            Err(ChannelError::Closed) => return,
            Err(e @ ChannelError::NotAdmitted { .. }) => {
                // Mid-message, the session cannot go on; the client is told why.
                tracing::info!(%id, "ending session: {e}");
                let refusal = ClientReply::Error(netmux_proto::ErrorReply {
                    code: netmux_proto::ErrorCode::Limit,
                    message: e.to_string(),
                });
                let _ = chan.send(&refusal, &[], shell.reply_timeout).await;
                return;
            }
            Err(e) => {
                tracing::info!(%id, "ending session: {e}");
                return;
            }
        };
        let Response { reply, fds, end } = response;
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        if chan
            .send(&reply, &borrowed, shell.reply_timeout)
            .await
            .is_err()
            || end
        {
            return;
        }
    }
}

/// A netd running on a thread of its own (for tests, benchmarks and `netmux up`). Dropping it
/// stops netd.
#[must_use = "dropping the handle stops netd"]
pub struct NetdHandle {
    socket: PathBuf,
    state: SharedNetd,
    replace: tokio::sync::mpsc::UnboundedSender<Replacement>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
}

impl std::fmt::Debug for NetdHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetdHandle")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl NetdHandle {
    /// The client socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The shared state.
    pub fn state(&self) -> SharedNetd {
        self.state.clone()
    }

    /// Puts a new driver `link` (on the same link) in place of one that went away, and waits
    /// until netd's state is installed there and it takes clients again (see the module
    /// documentation of `netmux up --restart`): every session is ended first, and their clients
    /// connect again. An error says why netd could not use it; the driver then stays gone.
    pub fn replace_driver(&self, link: Box<dyn DriverLink>) -> Result<(), String> {
        let (done, result) = std::sync::mpsc::channel();
        self.replace
            .send(Replacement { link, done })
            .map_err(|_| "netd has stopped".to_owned())?;
        result
            .recv()
            .unwrap_or_else(|_| Err("netd has stopped".to_owned()))
    }

    /// Stops netd and waits for it.
    pub fn stop(mut self) -> Result<(), ServeError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), ServeError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(ServeError::Io {
                what: "netd thread".into(),
                source: io::Error::other("panicked"),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for NetdHandle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Runs netd on a thread with its own tokio runtime; returns once the socket accepts clients.
pub fn spawn(config: Config, driver: Box<dyn DriverLink>) -> Result<NetdHandle, ServeError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("netd".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(io_err("starting the tokio runtime"))?;
            rt.block_on(async move {
                let server = match Server::bind(&config, driver).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok((
                    server.socket_path().to_owned(),
                    server.state(),
                    server.replace_tx.clone(),
                )));
                server
                    .run(async move {
                        let _ = stop_rx.await;
                    })
                    .await
            })
        })
        .map_err(io_err("starting the netd thread"))?;
    match ready_rx.recv() {
        Ok(Ok((socket, state, replace))) => Ok(NetdHandle {
            socket,
            state,
            replace,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(match thread.join() {
            Ok(Err(e)) => e,
            _ => ServeError::Io {
                what: "netd thread".into(),
                source: io::Error::other("exited before binding"),
            },
        }),
    }
}
