//! The control socket: netd's only way into the driver, and the driver's event loop.
//!
//! A Unix stream socket at a path; messages are [`netmux_proto::Channel`] frames
//! (length-delimited JSON, descriptors by `SCM_RIGHTS`).
//!
//! # Guarantees
//!
//! - **Only netd.** A connecting peer whose uid (`SO_PEERCRED`, the kernel's word) is not in
//!   [`ServerOptions::allowed_uids`] is refused; while one netd is connected, another is refused
//!   with an error reply. The socket's directory should also be one only netd's user can enter.
//! - **Hello first.** The first request must be `Hello` with [`netmux_proto::PROTOCOL_VERSION`];
//!   any other request before it, or a second hello, is answered with
//!   [`ErrorCode::Protocol`]; another version is answered with [`ErrorCode::Version`] and the
//!   connection ends.
//! - **Malformed input never panics.** A body that is not a request is answered with
//!   [`ErrorCode::Protocol`] and the session continues (the framing is intact); a broken frame
//!   (bad header, truncation, wrong descriptor count) ends the connection.
//! - **Fail closed.** When netd's connection ends for any reason, [`Driver::fail_closed`] runs:
//!   every client queue is stopped and marked closed. The server then waits for a new netd, or
//!   returns if [`ServerOptions::exit_on_disconnect`] is set.
//! - **Idle while the link is away.** The loop sleeps on the link's descriptor (when it has
//!   one), its link-event descriptor, the control socket and the queues; an error on the
//!   link's descriptor or a link event makes the driver look at the link again
//!   ([`Driver::refresh_link`], which reads and clears the error), so a link that went down
//!   never keeps the loop spinning. A link gone for longer than its timeout
//!   ([`crate::daemon::DriverConfig::link_timeout`]) ends [`Server::run`] with
//!   [`ServerError::LinkGone`], after failing closed.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use netmux_proto::channel::ChannelError;
use netmux_proto::driver::{DriverReply, DriverRequest};
use netmux_proto::frame::FrameError;
use netmux_proto::{Channel, ErrorCode, ErrorReply, PeerCredentials, PROTOCOL_VERSION};
use rustix::event::{poll, PollFd, PollFlags};

use super::Driver;

/// Longest sleep of the event loop: how quickly a stop request and reassembly timeouts are
/// noticed when nothing else happens.
pub const IDLE_POLL: Duration = Duration::from_millis(50);
/// Requests served from one connection per loop turn, so a chatty netd cannot starve the data
/// path.
const REQUESTS_PER_TURN: usize = 64;
/// How long the loop keeps looking for frames after the last one moved before it sleeps: a
/// frame that follows within it (a client's reply, the next frames of a burst) costs no
/// wake-up, which is the largest cost perf shows on a bulk transfer (the scheduler's work
/// for a sleep and a wake-up is several microseconds); an idle driver still sleeps.
const BUSY_POLL: Duration = Duration::from_micros(50);
/// The longest sleep while frames wait for a busy link.
const LINK_BUSY_POLL: Duration = Duration::from_millis(1);
/// Turns without work between two reads of the clock while the loop keeps looking (a turn
/// without frames takes a fraction of a microsecond).
const CLOCK_EVERY_IDLE_TURNS: u32 = 16;
/// How often a busy loop looks at the control socket without being told it is readable: how
/// late netd's request may be noticed while frames keep the loop from sleeping (an idle loop
/// sleeps on the control socket and wakes at once). Looking costs two system calls, which the
/// data path would otherwise pay on every turn.
const CONTROL_CHECK_INTERVAL: Duration = Duration::from_millis(1);

/// How the control server behaves.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// User ids allowed to be netd.
    pub allowed_uids: Vec<u32>,
    /// Return from [`Server::run`] when netd disconnects, instead of waiting for a new one.
    pub exit_on_disconnect: bool,
}

impl Default for ServerOptions {
    /// Only the driver's own user; wait for a new netd after a disconnect.
    fn default() -> Self {
        Self {
            allowed_uids: vec![rustix::process::getuid().as_raw()],
            exit_on_disconnect: false,
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The control socket could not be created.
    #[error("control socket {path}: {source}")]
    Bind {
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Waiting for events failed.
    #[error("event loop: {0}")]
    Poll(io::Error),
    /// The link vanished and did not come back within the link timeout.
    #[error(
        "link {link} has been gone for {:.1} s, longer than the link timeout ({reason})",
        waited.as_secs_f64()
    )]
    LinkGone {
        /// The link's spec.
        link: String,
        /// How long it was gone.
        waited: Duration,
        /// Why it counts as gone.
        reason: String,
    },
}

/// The connected netd.
#[derive(Debug)]
struct Session {
    channel: Channel,
    peer: PeerCredentials,
    greeted: bool,
}

/// Why a session ended.
#[derive(Debug)]
enum SessionEnd {
    /// The peer closed the connection.
    Closed,
    /// The peer broke the protocol or the socket failed.
    Fault(String),
}

/// The driver behind its control socket. See the module documentation.
#[derive(Debug)]
pub struct Server {
    driver: Driver,
    listener: UnixListener,
    path: PathBuf,
    options: ServerOptions,
    session: Option<Session>,
    /// The last sleep saw the listener or the session readable.
    control_ready: bool,
    /// When the control socket is to be looked at next, readable or not.
    control_due: std::time::Instant,
}

impl Server {
    /// Binds the control socket at `path`. A stale socket file there (nobody listening) is
    /// replaced; a live socket or any other file is refused.
    pub fn bind(path: &Path, driver: Driver, options: ServerOptions) -> Result<Self, ServerError> {
        let bind_error = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if let Ok(metadata) = std::fs::symlink_metadata(path) {
            if !metadata.file_type().is_socket() {
                return Err(bind_error(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                )));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(bind_error(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another driver is listening there",
                )));
            }
            std::fs::remove_file(path).map_err(bind_error)?;
        }
        let listener = UnixListener::bind(path).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        Ok(Self {
            driver,
            listener,
            path: path.to_path_buf(),
            options,
            session: None,
            control_ready: true,
            control_due: std::time::Instant::now(),
        })
    }

    /// The driver.
    pub fn driver(&self) -> &Driver {
        &self.driver
    }

    /// The control socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs until `stop` is set (or netd disconnects, with `exit_on_disconnect`).
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), ServerError> {
        tracing::info!(
            control = %self.path.display(),
            link = %self.driver.link().info().spec,
            "driver running"
        );
        // One clock read per turn: on some virtual machines reading the clock is as dear as
        // moving a frame.
        let mut now = std::time::Instant::now();
        // The loop looks for frames without sleeping until then.
        let mut spin_until = now + BUSY_POLL;
        let mut idle_turns: u32 = 0;
        while !stop.load(Ordering::Relaxed) {
            if self.control_ready || now >= self.control_due {
                self.control_ready = false;
                self.control_due = now + CONTROL_CHECK_INTERVAL;
                if let Some(end) = self.serve() {
                    if self.end_session(end) {
                        return Ok(());
                    }
                }
                if self.accept() {
                    return Ok(());
                }
            }
            let work = self.driver.poll_rx() + self.driver.poll_tx();
            if work > 0 {
                idle_turns = 0;
                now = std::time::Instant::now();
                spin_until = now + BUSY_POLL;
            } else {
                if idle_turns.is_multiple_of(CLOCK_EVERY_IDLE_TURNS) {
                    now = std::time::Instant::now();
                }
                idle_turns = idle_turns.wrapping_add(1);
                if now < spin_until {
                    std::hint::spin_loop();
                } else {
                    idle_turns = 0;
                    if self.sleep()? {
                        self.driver.refresh_link();
                    }
                    self.driver.tick();
                    now = std::time::Instant::now();
                    spin_until = now;
                }
            }
            self.driver.refresh_link_if_due(now);
            if let Some(waited) = self.driver.link_gone_for() {
                if waited >= self.driver.link_timeout() {
                    let error = ServerError::LinkGone {
                        link: self.driver.link().info().spec.clone(),
                        waited,
                        reason: self
                            .driver
                            .link_state_reason()
                            .unwrap_or("no reason given")
                            .to_string(),
                    };
                    tracing::error!("{error}; stopping");
                    self.driver.fail_closed();
                    return Err(error);
                }
            }
        }
        self.driver.fail_closed();
        Ok(())
    }

    /// Ends the session and fails closed; returns whether the server should exit.
    fn end_session(&mut self, end: SessionEnd) -> bool {
        match &end {
            SessionEnd::Closed => tracing::info!("netd disconnected; failing closed"),
            SessionEnd::Fault(why) => tracing::warn!("netd session ended: {why}; failing closed"),
        }
        self.session = None;
        self.driver.fail_closed();
        self.options.exit_on_disconnect
    }

    /// Accepts waiting connections: the first allowed one becomes the session. Returns
    /// whether the server should exit (the old session ended, with `exit_on_disconnect`).
    fn accept(&mut self) -> bool {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("accepting a control connection: {e}");
                    return false;
                }
            };
            let peer = match netmux_proto::peer_credentials(&stream) {
                Ok(peer) => peer,
                Err(e) => {
                    tracing::warn!("peer credentials unavailable, refusing: {e}");
                    continue;
                }
            };
            let mut channel = Channel::new(stream);
            // netd may have left just before its successor connected: notice that first.
            if self.session.is_some() {
                if let Some(end) = self.serve() {
                    if self.end_session(end) {
                        return true;
                    }
                }
            }
            let refusal = if !self.options.allowed_uids.contains(&peer.uid) {
                Some(format!("uid {} may not control this driver", peer.uid))
            } else if self.session.is_some() {
                Some("another netd is connected".to_string())
            } else {
                None
            };
            if let Some(message) = refusal {
                tracing::warn!(pid = peer.pid, uid = peer.uid, "refused: {message}");
                let reply = DriverReply::Error(ErrorReply {
                    code: ErrorCode::Denied,
                    message,
                });
                let _ = channel.send(&reply, &[]);
                continue;
            }
            if let Err(e) = channel.socket().set_nonblocking(true) {
                tracing::warn!("control connection: {e}");
                continue;
            }
            tracing::info!(pid = peer.pid, uid = peer.uid, "netd connected");
            self.session = Some(Session {
                channel,
                peer,
                greeted: false,
            });
        }
    }

    /// Serves the session's waiting requests; `Some` when it ended.
    fn serve(&mut self) -> Option<SessionEnd> {
        let session = self.session.as_mut()?;
        for _ in 0..REQUESTS_PER_TURN {
            let raw = match session.channel.try_recv_raw() {
                Ok(Some(raw)) => raw,
                Ok(None) => return None,
                Err(ChannelError::Closed) => return Some(SessionEnd::Closed),
                Err(e) => return Some(SessionEnd::Fault(e.to_string())),
            };
            let (body, fds) = raw;
            if !fds.is_empty() {
                // netd never sends descriptors to the driver; they are closed on drop.
                return Some(SessionEnd::Fault("unexpected descriptors".to_string()));
            }
            let request: DriverRequest = match netmux_proto::frame::decode(&body) {
                Ok(r) => r,
                Err(FrameError::Body(e)) => {
                    let reply = protocol_error(format!("malformed request: {e}"));
                    if let Err(e) = session.channel.send(&reply, &[]) {
                        return Some(SessionEnd::Fault(e.to_string()));
                    }
                    continue;
                }
                Err(e) => return Some(SessionEnd::Fault(e.to_string())),
            };
            let mut end = None;
            let response = match (&request, session.greeted) {
                (DriverRequest::Hello { version }, false) => {
                    if *version == PROTOCOL_VERSION {
                        session.greeted = true;
                        self.driver.handle(request)
                    } else {
                        end = Some(SessionEnd::Fault(format!("protocol version {version}")));
                        error_response(
                            ErrorCode::Version,
                            format!(
                                "driver speaks protocol version {PROTOCOL_VERSION}, not {version}"
                            ),
                        )
                    }
                }
                (DriverRequest::Hello { .. }, true) => {
                    error_response(ErrorCode::Protocol, "hello sent twice")
                }
                (_, false) => {
                    error_response(ErrorCode::Protocol, "the first request must be hello")
                }
                (_, true) => {
                    tracing::debug!(uid = session.peer.uid, ?request, "request");
                    self.driver.handle(request)
                }
            };
            let sent = match &response.fds {
                Some(fds) => session
                    .channel
                    .send(&response.reply, &[fds.memfd.as_fd(), fds.doorbell.as_fd()]),
                None => session.channel.send(&response.reply, &[]),
            };
            let sent = match sent {
                // Refused before a byte went out (every queue's counters of thousands of
                // queues, say): netd hears why, and the connection, with every queue, stays.
                Err(ChannelError::Frame(FrameError::TooLong(len))) => {
                    tracing::warn!(len, "a reply too large for one message, refused instead");
                    let refused = error_response(
                        ErrorCode::Limit,
                        format!(
                            "the reply would take {len} bytes, more than one message carries \
                             (for counters: ask for fewer queues)"
                        ),
                    );
                    session.channel.send(&refused.reply, &[])
                }
                other => other,
            };
            if let Err(e) = sent {
                return Some(SessionEnd::Fault(e.to_string()));
            }
            if end.is_some() {
                return end;
            }
        }
        None
    }

    /// Sleeps until the link, the control socket or a queue has something, or [`IDLE_POLL`].
    /// Returns whether the link has news for [`Driver::refresh_link`]: an error or hang-up on
    /// its descriptor, or a link event.
    fn sleep(&mut self) -> Result<bool, ServerError> {
        let link = self.driver.link();
        let link_fd = link.readiness_fd().is_some();
        if !link_fd && link.state() == crate::link::LinkState::Up && !self.driver.rx_exhausted() {
            // A link without a descriptor (pcap, memory) is ready until exhausted.
            return Ok(false);
        }
        if !self.driver.prepare_sleep() {
            self.driver.end_sleep();
            return Ok(false);
        }
        let (result, news, control) = {
            let mut fds: Vec<PollFd<'_>> = Vec::new();
            fds.push(PollFd::new(&self.listener, PollFlags::IN));
            if let Some(session) = &self.session {
                fds.push(PollFd::new(session.channel.socket(), PollFlags::IN));
            }
            let control_fds = fds.len();
            // Frames waiting for a busy link: wake when it may take them, and look again
            // within a millisecond in any case (not every link says when it has room).
            let waits_for_link = self.driver.waits_for_link();
            let link_events = if waits_for_link {
                PollFlags::IN | PollFlags::OUT
            } else {
                PollFlags::IN
            };
            let link = self.driver.link();
            let link_at = link.readiness_fd().map(|fd| {
                fds.push(PollFd::from_borrowed_fd(fd, link_events));
                fds.len() - 1
            });
            let watch_at = link.watch_fd().map(|fd| {
                fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
                fds.len() - 1
            });
            // One descriptor for every parked queue (the others are armed and parked by
            // `prepare_sleep`, or wait for the link).
            if let Some(fd) = self.driver.queue_wake_fd() {
                fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
            }
            let wait = if waits_for_link {
                LINK_BUSY_POLL
            } else {
                IDLE_POLL
            };
            let timeout = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: wait.as_nanos() as i64,
            };
            let result = poll(&mut fds, Some(&timeout));
            let trouble = PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL;
            let news = link_at.is_some_and(|i| fds[i].revents().intersects(trouble))
                || watch_at.is_some_and(|i| !fds[i].revents().is_empty());
            let control = fds[..control_fds].iter().any(|f| !f.revents().is_empty());
            (result, news, control)
        };
        self.control_ready |= control;
        self.driver.end_sleep();
        match result {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(news),
            Err(e) => Err(ServerError::Poll(e.into())),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn error_response(code: ErrorCode, message: impl Into<String>) -> super::Response {
    super::Response {
        reply: DriverReply::Error(ErrorReply {
            code,
            message: message.into(),
        }),
        fds: None,
    }
}

fn protocol_error(message: String) -> DriverReply {
    DriverReply::Error(ErrorReply {
        code: ErrorCode::Protocol,
        message,
    })
}

/// A driver serving its control socket on a thread of this process (for tests and
/// `netmux up`). Dropping it stops the driver, which fails closed.
#[derive(Debug)]
#[must_use = "dropping the handle stops the driver"]
pub struct DriverThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
    path: PathBuf,
}

impl DriverThread {
    /// Binds the control socket at `path` and runs `driver` behind it on a new thread.
    pub fn spawn(path: &Path, driver: Driver, options: ServerOptions) -> Result<Self, ServerError> {
        let mut server = Server::bind(path, driver, options)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("netmux-driver".to_string())
            .spawn(move || server.run(&flag))
            .map_err(ServerError::Poll)?;
        Ok(Self {
            stop,
            thread: Some(thread),
            path: path.to_path_buf(),
        })
    }

    /// The control socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the driver thread has returned (e.g. after netd left, with
    /// `exit_on_disconnect`).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the driver and waits for it; returns how it ended.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), ServerError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ServerError::Poll(io::Error::other(
                "driver thread panicked",
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for DriverThread {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
