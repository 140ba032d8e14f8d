//! netd's link to the driver, behind one trait: the real one speaks the control protocol on
//! the driver's socket ([`ChannelDriver`]); tests use an in-process fake
//! ([`crate::fake_driver::FakeDriver`]).
//!
//! Every call is one request and one reply, in order; a call that returns `Ok` means the
//! driver has carried it out (a filter returned `Ok` from [`DriverLink::install_filter`] is in
//! force, one returned `Ok` from [`DriverLink::remove_filter`] no longer is). Any failure of
//! the connection itself is [`DriverError::Gone`]: netd then refuses what needs the driver and
//! keeps released ports unusable, since it cannot confirm their filters are gone.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use netmux_proto::driver::{
    Counters, Direction, DriverReply, DriverRequest, FilterId, PortBinding, QueueConfig, QueueId,
    RxMode,
};
use netmux_proto::{Channel, ErrorReply, LinkInfo, PROTOCOL_VERSION};

/// The queue netd creates for its own host stack, before any client's. The driver sends it
/// what no client's filter matched.
pub const HOST_QUEUE: QueueId = QueueId(0);

/// Why a driver request failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The driver refused the request.
    #[error("driver refused: {}", .0.message)]
    Refused(ErrorReply),
    /// The connection to the driver failed or it answered nonsense; nothing more can be done.
    #[error("driver connection lost: {0}")]
    Gone(String),
    /// The filter expression does not compile.
    #[error("{0}")]
    BadFilter(String),
}

/// One filter to install: the expression (compiled by the link that needs bytecode) and where
/// it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSpec {
    /// The queue it belongs to.
    pub queue: QueueId,
    /// Its id (netd's choice, unique for the driver's life).
    pub filter: FilterId,
    /// Rx or tx.
    pub direction: Direction,
    /// For rx: owner, tap or exclusive.
    pub mode: RxMode,
    /// For port rx filters: the classifier's key.
    pub binding: Option<PortBinding>,
    /// The pcap-filter expression.
    pub expr: String,
}

/// A queue the driver created: its ring memory and two eventfds, for the client.
#[derive(Debug)]
pub struct CreatedQueue {
    /// Total ring bytes.
    pub ring_bytes: u64,
    /// The sealed memfd.
    pub memfd: OwnedFd,
    /// The eventfd the driver signals.
    pub client_wake: OwnedFd,
    /// The eventfd the client signals.
    pub driver_wake: OwnedFd,
}

/// What netd needs from a driver.
pub trait DriverLink: Send {
    /// The link's MAC and MTU.
    fn link_info(&self) -> LinkInfo;
    /// Creates a queue.
    fn create_queue(
        &mut self,
        queue: QueueId,
        config: QueueConfig,
    ) -> Result<CreatedQueue, DriverError>;
    /// Stops and frees a queue.
    fn destroy_queue(&mut self, queue: QueueId) -> Result<(), DriverError>;
    /// Installs a filter; `Ok` means it is in force.
    fn install_filter(&mut self, spec: &FilterSpec) -> Result<(), DriverError>;
    /// Removes a filter; `Ok` means it is no longer in force.
    fn remove_filter(&mut self, queue: QueueId, filter: FilterId) -> Result<(), DriverError>;
    /// Counters of the link and of every queue.
    fn stats(&mut self) -> Result<(Counters, Vec<(QueueId, Counters)>), DriverError>;
    /// Makes `queue` netd's own: it gets every frame no rx filter takes.
    fn set_netd_queue(&mut self, queue: QueueId) -> Result<(), DriverError>;
    /// The host's IPv4 addresses: ARP requests for them go to every queue.
    fn set_host_addresses(&mut self, ipv4: Vec<[u8; 4]>) -> Result<(), DriverError>;
    /// Whether the driver is known to be gone, and why, found without sending it anything
    /// (netd asks between requests, so it notices a dead driver while no client is asking).
    fn gone(&mut self) -> Option<String> {
        None
    }
}

/// Compiles a filter expression to the VM's container format.
pub fn compile_program(expr: &str) -> Result<Vec<u8>, DriverError> {
    crate::filters::compile(expr)
        .map(|p| p.to_bytes())
        .map_err(|e| DriverError::BadFilter(e.to_string()))
}

/// The real driver, over its control socket.
#[derive(Debug)]
pub struct ChannelDriver {
    channel: Channel,
    link: LinkInfo,
}

impl ChannelDriver {
    /// Connects to the driver's control socket and says hello.
    pub fn connect(path: &Path) -> Result<ChannelDriver, DriverError> {
        let sock = UnixStream::connect(path)
            .map_err(|e| DriverError::Gone(format!("connecting to {}: {e}", path.display())))?;
        ChannelDriver::over(sock)
    }

    /// Says hello over an already connected socket (a child driver's socketpair end).
    pub fn over(sock: UnixStream) -> Result<ChannelDriver, DriverError> {
        let mut channel = Channel::new(sock);
        let (reply, _) = round_trip(
            &mut channel,
            &DriverRequest::Hello {
                version: PROTOCOL_VERSION,
            },
        )?;
        match reply {
            DriverReply::Hello { version, link } if version == PROTOCOL_VERSION => {
                Ok(ChannelDriver { channel, link })
            }
            DriverReply::Hello { version, .. } => Err(DriverError::Gone(format!(
                "driver speaks protocol {version}, netd {PROTOCOL_VERSION}"
            ))),
            other => Err(unexpected(other)),
        }
    }

    fn request(&mut self, request: &DriverRequest) -> Result<(), DriverError> {
        match round_trip(&mut self.channel, request)?.0 {
            DriverReply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(reply: DriverReply) -> DriverError {
    match reply {
        DriverReply::Error(e) => DriverError::Refused(e),
        other => DriverError::Gone(format!("unexpected reply {other:?}")),
    }
}

fn round_trip(
    channel: &mut Channel,
    request: &DriverRequest,
) -> Result<(DriverReply, Vec<OwnedFd>), DriverError> {
    channel
        .send(request, &[])
        .map_err(|e| DriverError::Gone(e.to_string()))?;
    channel
        .recv::<DriverReply>()
        .map_err(|e| DriverError::Gone(e.to_string()))
}

impl DriverLink for ChannelDriver {
    fn link_info(&self) -> LinkInfo {
        self.link
    }

    fn create_queue(
        &mut self,
        queue: QueueId,
        config: QueueConfig,
    ) -> Result<CreatedQueue, DriverError> {
        let (reply, fds) = round_trip(
            &mut self.channel,
            &DriverRequest::CreateQueue { queue, config },
        )?;
        match reply {
            DriverReply::QueueCreated { ring_bytes, .. } => {
                let [memfd, client_wake, driver_wake]: [OwnedFd; 3] =
                    fds.try_into().map_err(|fds: Vec<OwnedFd>| {
                        DriverError::Gone(format!(
                            "queue came with {} descriptors, not 3",
                            fds.len()
                        ))
                    })?;
                Ok(CreatedQueue {
                    ring_bytes,
                    memfd,
                    client_wake,
                    driver_wake,
                })
            }
            other => Err(unexpected(other)),
        }
    }

    fn destroy_queue(&mut self, queue: QueueId) -> Result<(), DriverError> {
        self.request(&DriverRequest::DestroyQueue { queue })
    }

    fn install_filter(&mut self, spec: &FilterSpec) -> Result<(), DriverError> {
        let program = compile_program(&spec.expr)?;
        self.request(&DriverRequest::InstallFilter {
            queue: spec.queue,
            filter: spec.filter,
            direction: spec.direction,
            mode: spec.mode,
            binding: spec.binding,
            program,
        })
    }

    fn remove_filter(&mut self, queue: QueueId, filter: FilterId) -> Result<(), DriverError> {
        self.request(&DriverRequest::RemoveFilter { queue, filter })
    }

    fn stats(&mut self) -> Result<(Counters, Vec<(QueueId, Counters)>), DriverError> {
        match round_trip(&mut self.channel, &DriverRequest::Stats)?.0 {
            DriverReply::Stats { link, queues } => Ok((link, queues)),
            other => Err(unexpected(other)),
        }
    }

    fn set_netd_queue(&mut self, queue: QueueId) -> Result<(), DriverError> {
        self.request(&DriverRequest::SetNetdQueue { queue })
    }

    fn set_host_addresses(&mut self, ipv4: Vec<[u8; 4]>) -> Result<(), DriverError> {
        self.request(&DriverRequest::SetHostAddresses { ipv4 })
    }

    /// Between requests the driver sends nothing, so a readable or hung-up control socket means
    /// it closed the connection (it died or dropped netd).
    fn gone(&mut self) -> Option<String> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = [PollFd::new(self.channel.socket(), PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&zero)) {
            Ok(0) => None,
            Ok(_) => {
                let events = fds[0].revents();
                if events.intersects(PollFlags::HUP | PollFlags::ERR) {
                    Some("the driver closed its control connection".into())
                } else {
                    Some("the driver sent a message nobody asked for".into())
                }
            }
            Err(rustix::io::Errno::INTR) => None,
            Err(e) => Some(format!("polling the driver's control socket: {e}")),
        }
    }
}

/// The driver's binary, which netd starts for `--link`.
pub const DRIVER_BINARY: &str = "netmux-driver";
/// How long netd waits for a driver it started to open its control socket.
pub const DRIVER_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A driver netd started as its child; killed when dropped (it fails closed on its own when
/// netd's connection goes, this only makes sure it does not outlive netd).
#[derive(Debug)]
pub struct ChildDriver {
    child: std::process::Child,
}

/// How often [`ChildDriver::stop`] looks whether the driver has exited.
const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(10);

impl ChildDriver {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the driver ended, if it has, without waiting.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// Stops the driver: SIGTERM to its pid, then SIGKILL if it has not exited within `grace`.
    /// Returns how it ended.
    pub fn stop(mut self, grace: std::time::Duration) -> std::io::Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            // Already gone between the check and the signal: the wait below reaps it.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let start = std::time::Instant::now();
        while start.elapsed() < grace {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(STOP_POLL);
        }
        self.child.kill()?;
        self.child.wait()
    }
}

impl Drop for ChildDriver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The driver binary: next to the running executable if there, else found on `PATH`.
pub fn driver_binary() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(DRIVER_BINARY)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| DRIVER_BINARY.into())
}

/// Starts `binary --link SPEC --control CONTROL --exit-on-disconnect` and connects to it.
/// `control` should be inside a directory only netd's user may enter
/// ([`crate::server::private_dir`]); a stale socket there is removed first.
pub fn start_driver(
    binary: &Path,
    spec: &str,
    control: &Path,
) -> Result<(ChildDriver, ChannelDriver), DriverError> {
    start_driver_command(std::process::Command::new(binary), spec, control)
}

/// [`start_driver`] with any command that runs the driver's command line (`netmux driver`
/// re-executed, say): `--link SPEC --control CONTROL --exit-on-disconnect` are appended to it.
pub fn start_driver_command(
    mut command: std::process::Command,
    spec: &str,
    control: &Path,
) -> Result<(ChildDriver, ChannelDriver), DriverError> {
    if control.exists() {
        std::fs::remove_file(control)
            .map_err(|e| DriverError::Gone(format!("removing {}: {e}", control.display())))?;
    }
    let program = command.get_program().to_string_lossy().into_owned();
    let child = command
        .arg("--link")
        .arg(spec)
        .arg("--control")
        .arg(control)
        .arg("--exit-on-disconnect")
        .spawn()
        .map_err(|e| DriverError::Gone(format!("starting {program}: {e}")))?;
    let mut child = ChildDriver { child };
    let start = std::time::Instant::now();
    loop {
        if let Ok(sock) = UnixStream::connect(control) {
            let link = ChannelDriver::over(sock)?;
            return Ok((child, link));
        }
        if let Ok(Some(status)) = child.child.try_wait() {
            return Err(DriverError::Gone(format!("the driver exited: {status}")));
        }
        if start.elapsed() > DRIVER_START_TIMEOUT {
            return Err(DriverError::Gone(format!(
                "the driver did not open {} within {:?}",
                control.display(),
                DRIVER_START_TIMEOUT
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
