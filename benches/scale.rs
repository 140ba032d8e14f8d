//! What idle clients cost an active one: frames one client transmits through the
//! driver's transmit path while 0, 1,000 or 10,000 other queues are open and idle.
//!
//! Every queue has small rings (64 slots of 2,048 bytes each way, 64 completion slots); the
//! active one owns UDP port 5000 through netd's transmit filter for it (the compiler's
//! builder, on the JIT when compiled in). An iteration is one batch of [`BATCH`] 64-byte
//! frames: the client sends them into its tx ring, one [`Driver::poll_tx`] turn takes,
//! checks and sends them to a link that counts and discards them, and the client collects
//! their completions, all on this thread. Before measuring, the driver runs idle turns until
//! the idle queues are left out of the turns (see `netmux_driver::daemon::idle`: the idle
//! clients' ends of their doorbells are closed at once, so their queues go off, which costs
//! the turns what a parked queue costs: nothing).
//!
//! Rows: `scale-idle/idle-N/netmux` for N idle queues; `scripts/bench-report` pairs N = 1,000,
//! 5,000 and 10,000 with N = 0 (goal: at most 1.1x). Criterion's "thrpt" is frames per
//! second. Before the rows, a paired measurement (every driver in turn, round after round)
//! prints the median ratio of each to N = 0, which a machine shared with other work disturbs
//! far less than rows measured one after another.
//!
//! A queue whose client has its descriptors costs the driver one descriptor (its end of the
//! doorbell), so the rows' 16,001 queues hold about 16,000: the benchmark raises its soft
//! `ulimit -n` to 65,536 where it may (root with `CAP_SYS_RESOURCE`), else to the hard limit
//! (20,000 is enough); a row that still cannot be set up is skipped with the reason.
//!
//! Run: `cargo bench --bench scale`.

// criterion's macros define undocumented public functions.
#![allow(missing_docs)]

use std::os::fd::BorrowedFd;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use netmux_driver::daemon::{Driver, DriverConfig};
use netmux_driver::link::{FrameBatch, Link, LinkError, LinkInfo, LinkStats};
use netmux_proto::driver::{
    Direction, DriverReply, DriverRequest, FilterId, FilterInstall, PortBinding, QueueId, RxMode,
};
use netmux_ring::{ClientQueue, Completion, QueueConfig};

/// Frames per iteration: one transmit batch of the driver (`DEFAULT_TX_BATCH`).
const BATCH: usize = 32;
/// Idle queues per row: 0, 1,000 and 10,000 (the goal: ten thousand clients on one host),
/// and 5,000.
const IDLE: [usize; 4] = [0, 1_000, 5_000, 10_000];
/// Small rings, so that 10,000 queues fit in memory.
const RING: QueueConfig = QueueConfig {
    slot_size: 2048,
    rx_slots: 64,
    tx_slots: 64,
    completion_slots: 64,
};
/// The link's MAC: the client's source.
const MAC: [u8; 6] = [0x02, 0x6e, 0x6d, 0, 0, 1];
/// The client's address and port.
const HOST: [u8; 4] = [10, 0, 0, 1];
const PORT: u16 = 5000;
/// Idle turns run before measuring, at least: more than the driver needs to park an idle
/// queue.
const SETTLE_TURNS: usize = 2_000;
/// Idle turns run before measuring, at most: the driver looks at a few dozen wake-ups (here:
/// hang-ups) every few turns, so 10,000 idle queues take some thousand turns to go off.
const SETTLE_TURNS_MAX: usize = 1_000_000;

/// A link that takes every frame and keeps only counts.
struct SinkLink {
    info: LinkInfo,
    stats: LinkStats,
}

impl Link for SinkLink {
    fn info(&self) -> &LinkInfo {
        &self.info
    }
    fn recv(&mut self, _batch: &mut FrameBatch, _max: usize) -> Result<usize, LinkError> {
        Ok(0)
    }
    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, LinkError> {
        for frame in frames {
            self.stats.tx_frames += 1;
            self.stats.tx_bytes += frame.len() as u64;
        }
        Ok(frames.len())
    }
    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    fn stats(&self) -> LinkStats {
        self.stats
    }
}

/// A 64-byte UDP/IPv4 frame from `HOST:PORT`.
fn frame(salt: u8) -> Vec<u8> {
    let len = 64;
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f[6..12].copy_from_slice(&MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&HOST);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[34..36].copy_from_slice(&PORT.to_be_bytes());
    f[36..38].copy_from_slice(&4000u16.to_be_bytes());
    f[38..40].copy_from_slice(&((len - 34) as u16).to_be_bytes());
    f[42] = salt;
    f
}

/// Raises the soft descriptor limit as far as allowed (the rows' queues hold ~16,000).
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let want = 65_536u64;
    if limit.maximum.is_some_and(|max| max < want) {
        // Root may raise the hard limit too; anyone may raise the soft one to it.
        let raised = rustix::process::Rlimit {
            current: Some(want),
            maximum: Some(want),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return;
        }
    }
    limit.current = limit.maximum.map(|max| max.min(want)).or(Some(want));
    let _ = setrlimit(Resource::Nofile, limit);
}

/// A driver with `idle` idle queues and one active queue whose client may send UDP from
/// `HOST:PORT`; `None` (after saying why) when the queues cannot be made.
fn driver_with(idle: usize) -> Option<(Driver, ClientQueue)> {
    let link = SinkLink {
        info: LinkInfo {
            spec: "sink".to_string(),
            mac: MAC,
            mtu: 1500,
        },
        stats: LinkStats::default(),
    };
    let mut driver = Driver::new(Box::new(link), DriverConfig::default());
    let create = |driver: &mut Driver, q: u32| {
        driver.handle(DriverRequest::CreateQueue {
            queue: QueueId(q),
            config: RING,
            instance: netmux_proto::driver::DEFAULT_INSTANCE,
        })
    };
    for q in 0..idle as u32 {
        // The idle clients' descriptors are closed at once: an idle queue costs the driver
        // the same with or without its client attached.
        let response = create(&mut driver, q + 1);
        if response.fds.is_none() {
            eprintln!("skipping {idle} idle queues: {:?}", response.reply);
            return None;
        }
    }
    let response = create(&mut driver, 0);
    let Some(fds) = response.fds else {
        eprintln!("skipping {idle} idle queues: {:?}", response.reply);
        return None;
    };
    let client = ClientQueue::from_fds(fds.memfd, fds.doorbell).ok()?;
    let b = netmux_compiler::builders::Binding {
        mac: MAC,
        ip: std::net::IpAddr::from(HOST),
        transport: netmux_compiler::builders::Transport::Udp,
        port: PORT,
    };
    let program = netmux_compiler::builders::tx_port(&b, 1).expect("the tx filter compiles");
    let mut address = [0u8; 16];
    address[..4].copy_from_slice(&HOST);
    let reply = driver.handle(DriverRequest::InstallFilter(FilterInstall {
        queue: QueueId(0),
        filter: FilterId(1),
        direction: Direction::Tx,
        mode: RxMode::Owner,
        binding: Some(PortBinding {
            protocol: 17,
            address,
            ipv6: false,
            port: PORT,
        }),
        program: program.to_bytes(),
    }));
    assert_eq!(reply.reply, DriverReply::Done);
    for turn in 0..SETTLE_TURNS_MAX {
        driver.poll_tx();
        if turn >= SETTLE_TURNS
            && driver.active_queue_count() <= 1
            && driver.parked_queue_count() <= 1
        {
            break;
        }
    }
    Some((driver, client))
}

/// One iteration: the client sends a batch, one driver turn takes it, the client collects
/// the completions.
fn exchange(
    driver: &mut Driver,
    client: &mut ClientQueue,
    frames: &[&[&[u8]]],
    completions: &mut Vec<Completion>,
) {
    client.send(frames).expect("the tx ring has room");
    // A parked queue's frames are taken a turn or more later (below).
    driver.poll_tx();
    completions.clear();
    while completions.len() < frames.len() {
        client.completions(BATCH, completions).expect("completions");
        if completions.len() < frames.len() {
            // Only a parked queue's frames wait a turn or more (the driver looks at its
            // parked queues' wake-ups every few turns).
            driver.poll_tx();
        }
    }
}

/// Rounds of the paired measurement, and iterations per driver per round.
const PAIRED_ROUNDS: usize = 400;
const PAIRED_ITERATIONS: usize = 100;

/// The paired measurement: every driver in turn, a short run each, round after round (the
/// order rotating), and per round the ratio of each driver's time to the driver with no idle
/// queues; prints the median ratio. On a machine shared with other work, criterion's rows
/// (one after another) see the load change between rows; pairs within a round see nearly
/// the same load.
fn paired(
    drivers: &mut [(usize, Driver, ClientQueue)],
    frames: &[&[&[u8]]],
    completions: &mut Vec<Completion>,
) {
    if drivers.len() < 2 || drivers[0].0 != 0 {
        return;
    }
    let mut ratios: Vec<Vec<f64>> = vec![Vec::with_capacity(PAIRED_ROUNDS); drivers.len()];
    let mut times = vec![0f64; drivers.len()];
    for round in 0..PAIRED_ROUNDS {
        for k in 0..drivers.len() {
            let i = (round + k) % drivers.len();
            let (_, driver, client) = &mut drivers[i];
            let start = std::time::Instant::now();
            for _ in 0..PAIRED_ITERATIONS {
                exchange(driver, client, frames, completions);
            }
            times[i] = start.elapsed().as_secs_f64();
        }
        for i in 1..drivers.len() {
            ratios[i].push(times[i] / times[0]);
        }
    }
    for (i, (idle, _, _)) in drivers.iter().enumerate().skip(1) {
        let r = &mut ratios[i];
        r.sort_by(f64::total_cmp);
        eprintln!(
            "scale-idle paired: idle-{idle} / idle-0 = {:.3} (median of {PAIRED_ROUNDS} rounds; \
             quartiles {:.3} to {:.3})",
            r[r.len() / 2],
            r[r.len() / 4],
            r[3 * r.len() / 4]
        );
    }
}

fn scale(c: &mut Criterion) {
    raise_nofile();
    let owned: Vec<Vec<u8>> = (0..BATCH).map(|i| frame(i as u8)).collect();
    let vectors: Vec<[&[u8]; 1]> = owned.iter().map(|f| [f.as_slice()]).collect();
    let frames: Vec<&[&[u8]]> = vectors.iter().map(|v| &v[..]).collect();
    let mut completions = Vec::with_capacity(BATCH);
    let mut drivers = Vec::new();
    for idle in IDLE {
        let Some((mut driver, mut client)) = driver_with(idle) else {
            continue;
        };
        // Once, outside the measurement: every frame goes out.
        exchange(&mut driver, &mut client, &frames, &mut completions);
        assert!(
            completions.iter().all(|c| c.status.is_sent()),
            "the active client's frames are sent: {completions:?}"
        );
        drivers.push((idle, driver, client));
    }
    paired(&mut drivers, &frames, &mut completions);
    let mut group = c.benchmark_group("scale-idle");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for (idle, driver, client) in &mut drivers {
        group.bench_function(format!("idle-{idle}/netmux"), |b| {
            b.iter(|| exchange(driver, client, &frames, &mut completions));
        });
        eprintln!(
            "scale-idle/idle-{idle}: {} queues, {} visited per turn",
            driver.queue_count(),
            driver.active_queue_count()
        );
    }
    group.finish();
}

criterion_group!(benches, scale);
criterion_main!(benches);
