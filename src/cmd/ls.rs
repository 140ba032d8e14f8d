//! `netmux ls`: netd's sessions, as netd reports them to this user — each client's process,
//! user, ports, tap and exclusive filters, queue (id and ring sizes) and the driver's counters
//! for it (frames and bytes each way, drops by reason) — and a last line for the link: its
//! state (up, down, gone), its frames, what the driver finished of the frames Linux handed
//! over unfinished, and its drops. A table for people, `--json` for programs. The listing is
//! one `ListSessions` request on a session of its own, which is not shown.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use netmux_client::blocking::Client;
use netmux_client::{ClientError, ConnectOptions, FilterMode, SessionInfo, Transport};

use super::{Refused, Run};

/// List netd's sessions: pid, uid, ports, filters, queue and counters.
///
/// Who sees what: root (uid 0) sees every session; any other user sees only the sessions of
/// processes running as that same uid.
#[derive(Args, Debug)]
#[command(
    after_help = "Root (uid 0) sees every session; any other user sees only its own uid's \
                  sessions.\n\nColumns: QUEUE is the queue id and its ring sizes in slots (rx, \
                  tx, tx-completion) and the slot size; RX and TX are frames (f) and bytes (B) \
                  through the queue; DROPS counts received frames dropped for a full ring and, \
                  by reason, every other drop and rejected transmission.\n\nExample: netmux ls \
                  --runtime-dir /run/netmux --timeout 2\n\nExit status: 0 listed, 1 netd \
                  refused (its reason is printed, e.g. that its driver is gone), 2 netd not \
                  reachable (nothing listens on its socket, or it did not answer in time)."
)]
pub struct Ls {
    /// netd's runtime directory [default: $XDG_RUNTIME_DIR/netmux, else /run/netmux].
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    /// JSON instead of the table: {"sessions": [...], "omitted": N}, N counting the sessions
    /// that did not fit in netd's reply.
    #[arg(long)]
    json: bool,
    /// Only the sessions of this instance.
    #[arg(long, short = 'i', value_name = "NAME")]
    instance: Option<String>,
    /// Seconds to wait for netd's answer before giving up on it.
    #[arg(long, value_name = "SECS", default_value_t = netmux_client::DEFAULT_REQUEST_TIMEOUT.as_secs_f64(), value_parser = parse_timeout)]
    timeout: f64,
}

/// A positive number of seconds.
pub fn parse_timeout(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| Duration::try_from_secs_f64(*s).is_ok_and(|d| !d.is_zero()))
        .ok_or_else(|| format!("{text:?} is not a positive number of seconds"))
}

impl Run for Ls {
    fn run(self) -> anyhow::Result<ExitCode> {
        let dir = self
            .runtime_dir
            .unwrap_or_else(netmux_netd::config::default_runtime_dir);
        let timeout = Duration::from_secs_f64(self.timeout);
        let text = listing(&dir, self.json, self.instance.as_deref(), timeout)?;
        std::io::stdout()
            .write_all(text.as_bytes())
            .context("writing the listing")?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Asks netd in `dir` for the sessions this user may see and renders them (without the
/// asking session itself), waiting at most `timeout` for each answer.
fn listing(
    dir: &Path,
    json: bool,
    instance: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<String> {
    let options = ConnectOptions {
        instance: None,
        timeout,
        ..ConnectOptions::default()
    };
    let mut client = Client::connect_with(dir, &options).map_err(|e| netd_failed(e, dir))?;
    let mut list = client.list_sessions().map_err(|e| netd_failed(e, dir))?;
    list.sessions
        .retain(|s| !s.caller && instance.is_none_or(|i| s.instance == i));
    Ok(if json {
        let mut text = serde_json::to_string_pretty(&list)?;
        text.push('\n');
        text
    } else {
        let mut text = table(&list.sessions);
        if list.omitted > 0 {
            text.push_str(&format!(
                "... and {} more sessions (one reply holds only so many)\n",
                list.omitted
            ));
        }
        if let Some(line) = list.link.as_ref().and_then(link_line) {
            text.push_str(&line);
        }
        text
    })
}

/// What to tell the user when netd did not list: its refusal as netd put it (exit status 1:
/// netd answered, e.g. that its driver is gone); "is netd running?" only when nothing listens
/// on its socket; a netd that did not answer in time, as that (both exit status 2).
fn netd_failed(e: ClientError, dir: &Path) -> anyhow::Error {
    if let Some(r) = e.refusal() {
        return Refused(format!("netd refused to list sessions: {}", r.message)).into();
    }
    if e.nobody_listens() {
        // The client's error already names the socket and the system's reason.
        return anyhow::anyhow!("{e}; is netd running with --runtime-dir {}?", dir.display());
    }
    if let ClientError::NoAnswer(_) = e {
        return anyhow::anyhow!(
            "{e} (something accepted the connection at {}; --timeout sets how long to wait)",
            netmux_client::socket_in(dir).display()
        );
    }
    anyhow::Error::new(e).context("asking netd for its sessions")
}

const HEADERS: [&str; 10] = [
    "SESSION", "PID", "UID", "INSTANCE", "PORTS", "FILTERS", "QUEUE", "RX", "TX", "DROPS",
];

/// The sessions as an aligned table, one row each.
fn table(sessions: &[SessionInfo]) -> String {
    if sessions.is_empty() {
        return "no sessions\n".to_owned();
    }
    let rows: Vec<[String; 10]> = sessions.iter().map(row).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&HEADERS);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

fn row(s: &SessionInfo) -> [String; 10] {
    let dash = || "-".to_owned();
    let ports = if s.ports.is_empty() {
        dash()
    } else {
        s.ports
            .iter()
            .map(|(t, p)| format!("{}/{p}", transport(*t)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let filters = if s.filters.is_empty() {
        dash()
    } else {
        s.filters
            .iter()
            .map(|(id, mode)| match mode {
                FilterMode::Tap => format!("tap#{id}"),
                FilterMode::Exclusive => format!("exclusive#{id}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let queue = s.queue.as_ref().map_or_else(dash, |q| {
        format!(
            "q{} rx={} tx={} done={} slot={}B{}",
            q.id,
            q.rings.rx_slots,
            q.rings.tx_slots,
            q.rings.completion_slots,
            q.rings.slot_size,
            if q.attached { "" } else { " (not taken)" }
        )
    });
    let (rx, tx, drops) = match &s.counters {
        None => (dash(), dash(), dash()),
        Some(c) => {
            let mut drops = vec![format!("rx-ring-full={}", c.rx_dropped_full)];
            drops.extend(
                c.rx_dropped
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(why, n)| format!("rx-{why}={n}")),
            );
            drops.extend(
                c.tx_rejected
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(why, n)| format!("tx-{why}={n}")),
            );
            (
                format!("{}f/{}B", c.rx_frames, c.rx_bytes),
                format!("{}f/{}B", c.tx_frames, c.tx_bytes),
                drops.join(","),
            )
        }
    };
    let session = if s.active {
        s.id.to_string()
    } else {
        format!("{} (no hello)", s.id)
    };
    [
        session,
        s.pid.to_string(),
        s.uid.to_string(),
        s.instance.clone(),
        ports,
        filters,
        queue,
        rx,
        tx,
        drops,
    ]
}

/// The link's line: `link up: rx 10f/900B tx 4f/400B csum-completed=3 gso-split=1
/// (12 frames) drops kernel=2,...`; `None` for a driver that reports no link state.
fn link_line(c: &netmux_proto::driver::Counters) -> Option<String> {
    let state = c.link_state?;
    let mut line = format!(
        "link {state}: rx {}f/{}B tx {}f/{}B csum-completed={} gso-split={} ({} frames)",
        c.rx_frames,
        c.rx_bytes,
        c.tx_frames,
        c.tx_bytes,
        c.rx_csum_completed,
        c.rx_gso_split,
        c.rx_gso_segments
    );
    let drops: Vec<String> = c
        .rx_dropped
        .iter()
        .chain(&c.tx_rejected)
        .filter(|(_, n)| *n > 0)
        .map(|(why, n)| format!("{why}={n}"))
        .collect();
    if !drops.is_empty() {
        line.push_str(&format!(" drops {}", drops.join(",")));
    }
    line.push('\n');
    Some(line)
}

fn transport(t: Transport) -> &'static str {
    match t {
        Transport::Tcp => "tcp",
        Transport::Udp => "udp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmux_client::{QueueInfo, SessionList};
    use netmux_proto::driver::{Counters, QueueConfig};

    const T: Duration = netmux_client::DEFAULT_REQUEST_TIMEOUT;

    fn session() -> SessionInfo {
        SessionInfo {
            id: 7,
            caller: false,
            pid: 4242,
            uid: 1000,
            gid: 1000,
            instance: "default".into(),
            active: true,
            ports: vec![(Transport::Tcp, 8080), (Transport::Udp, 7777)],
            filters: vec![(3, FilterMode::Tap)],
            queue: Some(QueueInfo {
                id: 2,
                rings: QueueConfig {
                    slot_size: 2048,
                    rx_slots: 256,
                    tx_slots: 128,
                    completion_slots: 128,
                },
                ring_bytes: 1 << 20,
                attached: true,
            }),
            counters: Some(Counters {
                rx_frames: 5,
                rx_bytes: 500,
                tx_frames: 4,
                tx_bytes: 400,
                rx_dropped_full: 1,
                tx_rejected: vec![("spoofed-source".into(), 2), ("other".into(), 0)],
                tx_flow_control: 0,
                rx_dropped: vec![],
                ..Counters::default()
            }),
        }
    }

    #[test]
    fn the_link_line_shows_state_offload_work_and_drops() {
        let link = Counters {
            rx_frames: 10,
            rx_bytes: 900,
            link_state: Some(netmux_proto::LinkState::Down),
            rx_csum_completed: 3,
            rx_gso_split: 1,
            rx_gso_segments: 12,
            rx_dropped: vec![("kernel".into(), 2), ("link".into(), 0)],
            ..Counters::default()
        };
        let line = link_line(&link).unwrap();
        assert!(line.starts_with("link down: rx 10f/900B"), "{line}");
        assert!(
            line.contains("csum-completed=3 gso-split=1 (12 frames)"),
            "{line}"
        );
        assert!(
            line.contains("drops kernel=2") && !line.contains("link=0"),
            "{line}"
        );
        assert_eq!(link_line(&Counters::default()), None);
    }

    #[test]
    fn a_row_shows_ports_filters_queue_counters_and_nonzero_drop_reasons() {
        let text = table(&[session()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("SESSION  PID "), "{text}");
        for part in [
            "4242",
            "1000",
            "tcp/8080,udp/7777",
            "tap#3",
            "q2 rx=256 tx=128 done=128 slot=2048B",
            "5f/500B",
            "4f/400B",
            "rx-ring-full=1,tx-spoofed-source=2",
        ] {
            assert!(lines[1].contains(part), "{part:?} missing from {text}");
        }
        assert!(!lines[1].contains("other"), "zero counts are left out");
    }

    #[test]
    fn columns_line_up_and_missing_parts_are_dashes() {
        let mut bare = session();
        bare.id = 12345;
        bare.ports.clear();
        bare.filters.clear();
        bare.queue = None;
        bare.counters = None;
        let text = table(&[session(), bare]);
        let lines: Vec<&str> = text.lines().collect();
        let pid_column = lines[0].find("PID").unwrap();
        assert_eq!(lines[1].find("4242"), Some(pid_column));
        assert_eq!(lines[2].find("4242"), Some(pid_column));
        assert!(lines[2].contains("  -  "), "{text}");
    }

    /// netd in-process on the real driver, in a fresh runtime directory.
    fn netd() -> netmux_netd::testing::Host {
        let ip = std::net::Ipv4Addr::new(10, 9, 9, 2);
        netmux_netd::testing::Host::start([2, 0, 0, 0, 0, 1], ip, |_| {})
    }

    #[test]
    fn ls_lists_another_clients_ports_but_not_its_own_session() {
        let netd = netd();
        let dir = netd.runtime_dir();
        let empty = listing(dir, false, None, T).unwrap();
        assert!(empty.starts_with("no sessions\nlink up: "), "{empty}");
        let mut app = Client::connect(dir).unwrap();
        app.bind_port(Transport::Udp, 7777).unwrap();
        let text = listing(dir, false, None, T).unwrap();
        // Header, one session, the link's line.
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("udp/7777"), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
    }

    #[test]
    fn ls_json_is_the_session_list_and_reads_back() {
        let netd = netd();
        let dir = netd.runtime_dir();
        let mut app = Client::connect(dir).unwrap();
        app.bind_port(Transport::Tcp, 8080).unwrap();
        let _queue = app.open_queue().unwrap();
        let text = listing(dir, true, None, T).unwrap();
        let back: SessionList = serde_json::from_str(&text).unwrap();
        assert_eq!(back.omitted, 0);
        let back = back.sessions;
        assert_eq!(back.len(), 1, "{text}");
        assert_eq!(back[0].ports, [(Transport::Tcp, 8080)]);
        assert!(back[0].queue.as_ref().is_some_and(|q| q.attached));
        assert!(back[0].counters.is_some());
    }

    #[test]
    fn ls_without_netd_says_where_it_looked() {
        let dir = std::env::temp_dir().join("netmux-ls-test-nobody-here");
        let e = listing(&dir, false, None, T).unwrap_err();
        assert!(format!("{e:#}").contains("is netd running"), "{e:#}");
        assert!(
            e.downcast_ref::<Refused>().is_none(),
            "exit status 2, not 1"
        );
    }

    #[test]
    fn no_sessions_says_so() {
        assert_eq!(table(&[]), "no sessions\n");
    }
}
