//! `netmux-driver`: owns one link and serves netd on a control socket.
//!
//! ```text
//! netmux-driver --link pcap:in.pcap,out.pcap --control /run/netmux/driver.sock
//! ```
//!
//! The driver accepts exactly one netd at a time, from the allowed user ids (default: its own),
//! and fails closed when netd leaves: every client queue is stopped and marked closed. Logs go
//! to stderr (`RUST_LOG=netmux_driver=debug` for more).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use netmux_driver::daemon::control::{Server, ServerOptions};
use netmux_driver::daemon::{Driver, DriverConfig};
use netmux_driver::link::{self, LinkSpec};
use netmux_vm::Strategy;

/// The netmux driver: owns the link, classifies received frames into client rings, checks
/// every transmitted frame.
#[derive(Debug, Parser)]
#[command(name = "netmux-driver", version)]
struct Args {
    /// The link: tap:NAME, afpacket:IFNAME, pcap:IN.pcap[,OUT.pcap] or virtual:PATH[,PEER].
    #[arg(long, value_name = "SPEC")]
    link: LinkSpec,
    /// Where to create the control socket for netd.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// A user id allowed to connect as netd (repeatable; default: the driver's own).
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<u32>,
    /// Exit when netd disconnects instead of waiting for a new one (queues fail closed
    /// either way).
    #[arg(long)]
    exit_on_disconnect: bool,
    /// Filter engine: auto, interp or jit.
    #[arg(long, default_value = "auto")]
    engine: Strategy,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let link = link::open(&args.link).with_context(|| format!("opening link {}", args.link))?;
    let driver = Driver::new(
        link,
        DriverConfig {
            strategy: args.engine,
            ..DriverConfig::default()
        },
    );
    let mut options = ServerOptions {
        exit_on_disconnect: args.exit_on_disconnect,
        ..ServerOptions::default()
    };
    if !args.allow_uid.is_empty() {
        options.allowed_uids = args.allow_uid;
    }
    let mut server = Server::bind(&args.control, driver, options)?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&stop))?;
    server.run(&stop)?;
    let (link_counters, _) = server.driver().stats();
    tracing::info!(?link_counters, "driver stopped");
    Ok(())
}

/// SIGINT and SIGTERM set `stop`; the driver notices within one idle poll and fails closed,
/// so clients see their queues end instead of a silent driver.
fn watch_signals(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the signal watcher")?;
    let mut terminate = {
        let _guard = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("watching SIGTERM")?
    };
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            });
            tracing::info!("signal received; stopping");
            stop.store(true, Ordering::Relaxed);
        })
        .context("starting the signal watcher")?;
    Ok(())
}
