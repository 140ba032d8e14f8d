//! Carries out [`DriverWork`](crate::service::DriverWork) at the driver on a thread of its
//! own, so that no tokio worker and no lock ever waits on the driver.
//!
//! Guarantees:
//! * commands reach the driver one at a time, in the order the work was submitted (the driver
//!   link is one request and one reply at a time);
//! * every batch gets its outcomes within its deadline: one [`WorkerConfig::timeout`] per
//!   command, plus as much again for the queue ahead of it. A batch that misses it gets
//!   [`DriverError::Gone`] for every command, and the driver is declared gone: a reply that
//!   late would answer another request, so nothing more can be asked of it;
//! * between batches the worker asks the link whether the driver went away
//!   ([`DriverLink::gone`]) every [`IDLE_CHECK`], so netd notices a dead driver while no client
//!   is asking;
//! * a gone driver may be replaced by a new one on the same link ([`DriverWorker::replace`],
//!   for `netmux up --restart`): work queued before the replacement is carried out (or failed)
//!   on the old link, work after it on the new one.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netmux_proto::LinkInfo;
use tokio::sync::oneshot;

use crate::driver_link::{self, DriverCommand, DriverError, DriverLink, DriverOutcome};

/// How often an idle worker asks whether the driver went away.
pub const IDLE_CHECK: Duration = Duration::from_millis(100);

/// Settings of a [`DriverWorker`].
#[derive(Clone, Copy, Debug)]
pub struct WorkerConfig {
    /// How long one driver request may take before the driver is declared gone.
    pub timeout: Duration,
}

struct Job {
    commands: Vec<DriverCommand>,
    stop_at_first_failure: bool,
    reply: oneshot::Sender<Vec<DriverOutcome>>,
}

/// What the worker's thread is asked to do.
enum Message {
    /// Carry out work.
    Job(Job),
    /// Drop the link and use this one from now on; the gone mark is cleared once it is in
    /// place.
    Replace(Box<dyn DriverLink>, oneshot::Sender<()>),
}

/// The driver link on its own thread. Dropping it ends the thread once its queue is empty,
/// and waits for that: the link is closed when the drop returns (a netd stopped in-process
/// has let go of the driver, which serves one netd at a time, before its successor
/// connects).
pub struct DriverWorker {
    jobs: Mutex<mpsc::Sender<Message>>,
    gone: Arc<Mutex<Option<String>>>,
    link: LinkInfo,
    config: WorkerConfig,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DriverWorker {
    fn drop(&mut self) {
        // The thread ends when its queue is empty and no sender is left.
        let (unused, _) = mpsc::channel();
        drop(std::mem::replace(
            &mut *self.jobs.lock().unwrap_or_else(|e| e.into_inner()),
            unused,
        ));
        let Some(thread) = self.thread.take() else {
            return;
        };
        if thread.thread().id() == std::thread::current().id() {
            return;
        }
        // Within the deadline of the work still queued: a driver that answers nothing is not
        // waited for longer than a request would wait for it.
        let queued = self.queued.load(std::sync::atomic::Ordering::Relaxed) as u32;
        let deadline = std::time::Instant::now()
            + self.config.timeout.saturating_mul(queued.saturating_add(1))
            + Duration::from_secs(1);
        while !thread.is_finished() {
            if std::time::Instant::now() > deadline {
                tracing::warn!("the driver link did not close in time; left to its thread");
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = thread.join();
    }
}

impl std::fmt::Debug for DriverWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverWorker")
            .field("link", &self.link)
            .field("gone", &self.gone())
            .finish_non_exhaustive()
    }
}

impl DriverWorker {
    /// Starts the thread that owns `link`.
    pub fn spawn(mut link: Box<dyn DriverLink>, config: WorkerConfig) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Message>();
        let gone = Arc::new(Mutex::new(None::<String>));
        let info = link.link_info();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (gone_in, queued_in) = (gone.clone(), queued.clone());
        let thread = std::thread::Builder::new()
            .name("netd-driver".into())
            .spawn(move || loop {
                match rx.recv_timeout(IDLE_CHECK) {
                    Ok(Message::Replace(new, done)) => {
                        link = new;
                        *gone_in.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        let _ = done.send(());
                    }
                    Ok(Message::Job(job)) => {
                        let outcomes = driver_link::run(
                            link.as_mut(),
                            job.commands,
                            job.stop_at_first_failure,
                        );
                        queued_in.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        for o in &outcomes {
                            if let DriverOutcome::Failed(DriverError::Gone(why)) = o {
                                set_gone(&gone_in, why);
                            }
                        }
                        let _ = job.reply.send(outcomes);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Some(why) = link.gone() {
                            set_gone(&gone_in, &why);
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(Self {
            jobs: Mutex::new(tx),
            gone,
            link: info,
            config,
            queued,
            thread: Some(thread),
        })
    }

    /// The link's MAC and MTU.
    pub fn link_info(&self) -> LinkInfo {
        self.link
    }

    /// Why the driver is gone, once the worker found out.
    pub fn gone(&self) -> Option<String> {
        self.gone.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Carries out `commands` in order (see [`driver_link::run`]) and waits for the outcomes,
    /// within the deadline of the module documentation.
    pub async fn run(
        &self,
        commands: Vec<DriverCommand>,
        stop_at_first_failure: bool,
    ) -> Vec<DriverOutcome> {
        let n = commands.len();
        if let Some(why) = self.gone() {
            return gone_outcomes(n, &why);
        }
        let (reply, outcome) = oneshot::channel();
        let ahead = self
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Message::Job(Job {
                commands,
                stop_at_first_failure,
                reply,
            }));
        if sent.is_err() {
            return gone_outcomes(n, "netd's driver thread ended");
        }
        let per_command = self.config.timeout;
        let deadline = per_command
            .saturating_mul(u32::try_from(n + ahead + 1).unwrap_or(u32::MAX))
            .saturating_add(Duration::from_secs(1));
        match tokio::time::timeout(deadline, outcome).await {
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(_)) => gone_outcomes(n, "netd's driver thread ended"),
            Err(_) => {
                let why = format!(
                    "the driver did not answer within {:.1} s",
                    deadline.as_secs_f64()
                );
                set_gone(&self.gone, &why);
                gone_outcomes(n, &why)
            }
        }
    }
}

impl DriverWorker {
    /// Declares the driver gone for `why` (if it is not already), so no more work reaches it.
    pub fn declare_gone(&self, why: &str) {
        set_gone(&self.gone, why);
    }

    /// Puts a new driver `link` in place of the old one (which is dropped), once the work
    /// queued before it is done; from then on the driver is no longer gone. Refused, the old
    /// link kept, when the new link is another link (its MAC or MTU differ): netd's
    /// identities and every client's configuration were made for this one.
    pub async fn replace(&self, link: Box<dyn DriverLink>) -> Result<(), String> {
        let new = link.link_info();
        if (new.mac, new.mtu) != (self.link.mac, self.link.mtu) {
            return Err(format!(
                "the new driver's link has MAC {} and MTU {}, not {} and {} as before",
                crate::instance::mac_text(new.mac),
                new.mtu,
                crate::instance::mac_text(self.link.mac),
                self.link.mtu
            ));
        }
        let (done, replaced) = oneshot::channel();
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Message::Replace(link, done))
            .map_err(|_| "netd's driver thread ended".to_owned())?;
        replaced
            .await
            .map_err(|_| "netd's driver thread ended".to_owned())
    }
}

fn set_gone(gone: &Mutex<Option<String>>, why: &str) {
    let mut g = gone.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(why.to_owned());
    }
}

fn gone_outcomes(n: usize, why: &str) -> Vec<DriverOutcome> {
    (0..n)
        .map(|_| DriverOutcome::Failed(DriverError::Gone(why.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver_link::{CreatedQueue, DriverStats, FilterSpec};
    use netmux_proto::driver::{FilterId, InstanceId, InstanceInfo, QueueConfig, QueueId};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A link that takes its time to close, and says when it has.
    struct Lingering(Arc<AtomicBool>, Duration);

    impl Drop for Lingering {
        fn drop(&mut self) {
            std::thread::sleep(self.1);
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn gone<T>() -> Result<T, DriverError> {
        Err(DriverError::Gone("a test link".into()))
    }

    impl DriverLink for Lingering {
        fn link_info(&self) -> LinkInfo {
            LinkInfo {
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
            }
        }
        fn create_queue(
            &mut self,
            _: QueueId,
            _: QueueConfig,
            _: InstanceId,
        ) -> Result<CreatedQueue, DriverError> {
            gone()
        }
        fn set_instance(&mut self, _: InstanceInfo) -> Result<(), DriverError> {
            gone()
        }
        fn remove_instance(&mut self, _: InstanceId) -> Result<(), DriverError> {
            gone()
        }
        fn destroy_queue(&mut self, _: QueueId) -> Result<(), DriverError> {
            gone()
        }
        fn resize_queue(
            &mut self,
            _: QueueId,
            _: QueueConfig,
        ) -> Result<CreatedQueue, DriverError> {
            gone()
        }
        fn install_filter(&mut self, _: &FilterSpec) -> Result<(), DriverError> {
            gone()
        }
        fn remove_filter(&mut self, _: QueueId, _: FilterId) -> Result<(), DriverError> {
            gone()
        }
        fn stats(&mut self) -> Result<DriverStats, DriverError> {
            gone()
        }
        fn set_netd_queue(&mut self, _: QueueId) -> Result<(), DriverError> {
            gone()
        }
        fn set_host_addresses(&mut self, _: Vec<[u8; 4]>) -> Result<(), DriverError> {
            gone()
        }
    }

    fn worker(closed: &Arc<AtomicBool>, closing: Duration, timeout: Duration) -> DriverWorker {
        let link = Box::new(Lingering(closed.clone(), closing));
        DriverWorker::spawn(link, WorkerConfig { timeout }).unwrap()
    }

    #[test]
    fn the_link_is_closed_when_the_worker_is_dropped() {
        let closed = Arc::new(AtomicBool::new(false));
        drop(worker(
            &closed,
            Duration::from_millis(100),
            Duration::from_secs(1),
        ));
        assert!(
            closed.load(Ordering::SeqCst),
            "the link outlived its worker"
        );
    }

    #[test]
    fn a_link_that_will_not_close_is_waited_for_only_until_the_deadline() {
        let closed = Arc::new(AtomicBool::new(false));
        let start = std::time::Instant::now();
        drop(worker(
            &closed,
            Duration::from_secs(3),
            Duration::from_millis(10),
        ));
        let waited = start.elapsed();
        assert!(!closed.load(Ordering::SeqCst));
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }
}
