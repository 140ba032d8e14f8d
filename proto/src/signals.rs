//! SIGINT and SIGTERM for the daemons and the examples (the `tokio` feature): the one signal
//! watcher of the workspace.
//!
//! A signal is caught from [`Signals::watch`] on: one that arrives before [`Signals::wait`] is
//! not lost, and does not kill the process in the meantime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// SIGINT and SIGTERM, caught. See the module documentation.
#[derive(Debug)]
pub struct Signals {
    runtime: tokio::runtime::Runtime,
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts catching SIGINT and SIGTERM. Call it before announcing readiness.
    pub fn watch() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (interrupt, terminate) = {
            let _guard = runtime.enter();
            (
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            )
        };
        Ok(Signals {
            runtime,
            interrupt,
            terminate,
        })
    }

    /// Blocks until SIGINT or SIGTERM has arrived (since [`Signals::watch`]).
    pub fn wait(mut self) {
        self.runtime.block_on(async {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        });
    }

    /// A flag a thread of its own sets when SIGINT or SIGTERM arrives, for loops that poll
    /// (the driver notices it within one idle poll and fails closed).
    pub fn into_flag(self) -> std::io::Result<Arc<AtomicBool>> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("signals".to_string())
            .spawn(move || {
                self.wait();
                flag.store(true, Ordering::Relaxed);
            })?;
        Ok(stop)
    }
}
