//! `netmux stat`: every client queue's traffic per second, as illumos `vndstat` shows every
//! vnd datalink's. Each interval it asks netd for its sessions (one `ListSessions` request,
//! which carries the driver's counters of every queue) and prints, per client, the change of
//! those counters divided by the interval: bytes and frames each way, drops (every frame the
//! driver dropped for it or refused from it, by reason with `-v`) and txfc (the times its
//! transmissions waited for room). A line appears once two samples exist; a client that ends
//! disappears, one that starts appears at its second sample. `-p` prints raw numbers separated
//! by `:` (the fields `-o` names), `--json` one object per client per interval, with the
//! driver's totals beside the rates.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use netmux_client::blocking::Client;
use netmux_client::{ClientError, ConnectOptions, SessionInfo};
use netmux_proto::driver::Counters;
use netmux_proto::ops::ClientName;

use super::{Refused, Run};

/// Every field, in the default order.
const FIELDS: [&str; 10] = [
    "name", "session", "instance", "rx-bps", "tx-bps", "rx-fps", "tx-fps", "drops", "txfc", "ports",
];
/// A header line again after this many lines when one client is shown (as vndstat).
const HEADER_EVERY: usize = 20;

/// Per-client traffic every INTERVAL seconds: bytes and frames per second, drops, txfc.
///
/// CLIENTs are named as pid:N, session:ID or a port (udp/7007); the numbers at the end are
/// INTERVAL (whole seconds, default 1) and COUNT (default: until Ctrl-C).
#[derive(Args, Debug)]
#[command(
    after_help = "Fields for -o: name, session, instance, rx-bps, tx-bps, rx-fps, \
                  tx-fps, drops, txfc, ports.\n\nExamples:\n  netmux stat 1\n  \
                  netmux stat udp/7007 tcp/8080 2 10\n  \
                  netmux stat -p -o name,rx-bps,tx-bps,drops 1 5\n  \
                  netmux stat --json pid:4082 1 3\n\n\
                  drops counts every frame the driver dropped for the client (full ring, \
                  firewall, ...) and every transmission it refused (by reason with -v); txfc \
                  counts the times its transmissions waited for room. With -l, a line per \
                  instance, per overlay (overlay:NAME, its frames in and out of VXLAN, its \
                  drops, and vni=, state= ok or degraded, misses= lookups asked of the \
                  mapping service, cached= mappings the driver holds) and for the link.\n\n\
                  Exit status: 0 done, 1 netd refused, 2 bad usage or netd not reachable."
)]
pub struct Stat {
    /// [CLIENT...] [INTERVAL [COUNT]].
    #[arg(value_name = "CLIENT|INTERVAL|COUNT", num_args = 0..)]
    words: Vec<String>,
    /// Only the clients of this instance.
    #[arg(long, short = 'i', value_name = "NAME")]
    instance: Option<String>,
    /// Raw numbers separated by ':', no header.
    #[arg(short = 'p', long)]
    parseable: bool,
    /// The fields to print, comma-separated.
    #[arg(short = 'o', value_name = "FIELD,...", value_delimiter = ',')]
    fields: Vec<String>,
    /// One JSON object per client per interval.
    #[arg(long, conflicts_with_all = ["parseable", "fields"])]
    json: bool,
    /// Drops by reason.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// A line for each instance, each overlay and one for the link as well.
    #[arg(short = 'l', long)]
    link: bool,
    /// netd's runtime directory [default: $XDG_RUNTIME_DIR/netmux, else /run/netmux].
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
}

/// One sample of one client.
#[derive(Clone, Debug)]
struct Sample {
    pid: u32,
    instance: String,
    ports: String,
    counters: Counters,
}

impl Run for Stat {
    fn run(self) -> anyhow::Result<ExitCode> {
        let (clients, interval, count) = split_words(&self.words)?;
        let fields: Vec<String> = if self.fields.is_empty() {
            FIELDS.iter().map(|f| f.to_string()).collect()
        } else {
            self.fields.iter().map(|f| f.to_ascii_lowercase()).collect()
        };
        if let Some(bad) = fields.iter().find(|f| !FIELDS.contains(&f.as_str())) {
            anyhow::bail!("unknown field {bad:?}; fields are {}", FIELDS.join(", "));
        }
        let dir = self
            .runtime_dir
            .clone()
            .unwrap_or_else(netmux_netd::config::default_runtime_dir);
        let options = ConnectOptions {
            instance: self.instance.clone(),
            ..ConnectOptions::default()
        };
        let mut client = Client::connect_with(&dir, &options).map_err(refusal)?;
        let stop = netmux_driver::cli::stop_on_signals()?;
        let mut out = std::io::stdout().lock();
        type Totals = (
            Option<Counters>,
            Vec<(String, Counters)>,
            Vec<(String, Counters, String)>,
        );
        let mut previous: Option<(Instant, HashMap<u64, Sample>, Totals)> = None;
        let mut printed = 0u64;
        let mut lines = 0usize;
        loop {
            let taken = Instant::now();
            let list = client.list_sessions().map_err(refusal)?;
            // With -l: every instance this user may see, and the link.
            let instances: Vec<(String, Counters)> = if self.link {
                client
                    .list_instances()
                    .map_err(refusal)?
                    .into_iter()
                    .filter(|i| self.instance.as_ref().is_none_or(|n| &i.name == n))
                    .filter_map(|i| Some((i.name, i.counters?)))
                    .collect()
            } else {
                Vec::new()
            };
            // With -l: every overlay too, its state and lookups beside its frames and drops.
            let overlays: Vec<(String, Counters, String)> = if self.link {
                client
                    .list_overlays()
                    .map_err(refusal)?
                    .into_iter()
                    .map(|o| {
                        let counters = Counters {
                            rx_frames: o.counters.rx_frames,
                            tx_frames: o.counters.tx_frames,
                            rx_dropped: o.counters.dropped.clone(),
                            ..Counters::default()
                        };
                        let state = o.state.split(':').next().unwrap_or("").to_owned();
                        let note = format!(
                            "vni={} state={state} misses={} cached={}",
                            o.spec.vni, o.counters.misses, o.counters.cached
                        );
                        (o.spec.name, counters, note)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let mut now: HashMap<u64, Sample> = HashMap::new();
            let mut order = Vec::new();
            for s in list.sessions.iter().filter(|s| !s.caller) {
                if self.instance.as_ref().is_some_and(|i| &s.instance != i) {
                    continue;
                }
                if !clients.is_empty() && !clients.iter().any(|c| names(c, s)) {
                    continue;
                }
                let Some(counters) = s.counters.clone() else {
                    continue;
                };
                order.push(s.id);
                now.insert(
                    s.id,
                    Sample {
                        pid: s.pid,
                        instance: s.instance.clone(),
                        ports: s
                            .ports
                            .iter()
                            .map(|(t, p)| format!("{t}/{p}"))
                            .collect::<Vec<_>>()
                            .join(","),
                        counters,
                    },
                );
            }
            if let Some((then, before, (link_before, instances_before, overlays_before))) =
                &previous
            {
                let secs = taken.duration_since(*then).as_secs_f64().max(1e-9);
                let mut rows = Vec::new();
                for id in &order {
                    let (Some(b), Some(a)) = (before.get(id), now.get(id)) else {
                        continue;
                    };
                    rows.push(Row::of(name_of(a.pid), Some(*id), a, &b.counters, secs));
                }
                for (name, a) in &instances {
                    if let Some((_, b)) = instances_before.iter().find(|(n, _)| n == name) {
                        let sample = Sample {
                            pid: 0,
                            instance: name.clone(),
                            ports: "-".into(),
                            counters: a.clone(),
                        };
                        rows.push(Row::of(format!("instance:{name}"), None, &sample, b, secs));
                    }
                }
                for (name, a, note) in &overlays {
                    if let Some((_, b, _)) = overlays_before.iter().find(|(n, ..)| n == name) {
                        let sample = Sample {
                            pid: 0,
                            instance: "-".into(),
                            ports: "-".into(),
                            counters: a.clone(),
                        };
                        let mut row = Row::of(format!("overlay:{name}"), None, &sample, b, secs);
                        row.note = Some(note.clone());
                        rows.push(row);
                    }
                }
                if self.link {
                    if let (Some(b), Some(a)) = (link_before, &list.link) {
                        let sample = Sample {
                            pid: 0,
                            instance: "-".into(),
                            ports: "-".into(),
                            counters: a.clone(),
                        };
                        rows.push(Row::of("link".into(), None, &sample, b, secs));
                    }
                }
                let header = lines == 0 || (rows.len() > 1) || lines.is_multiple_of(HEADER_EVERY);
                let text = if self.json {
                    rows.iter().map(|r| r.json(self.verbose) + "\n").collect()
                } else if self.parseable {
                    rows.iter().map(|r| r.parseable(&fields) + "\n").collect()
                } else {
                    let mut t = String::new();
                    if header {
                        t.push_str(&header_line(&fields));
                    }
                    for r in &rows {
                        t.push_str(&r.human(&fields, self.verbose));
                    }
                    t
                };
                lines += rows.len().max(1);
                out.write_all(text.as_bytes()).context("writing")?;
                out.flush().context("writing")?;
                printed += 1;
                if count.is_some_and(|c| printed >= c) {
                    break;
                }
            }
            previous = Some((taken, now, (list.link.clone(), instances, overlays)));
            // Sleep to the next interval, looking at the stop flag now and then.
            let next = taken + interval;
            while Instant::now() < next {
                if stop.load(Ordering::Relaxed) {
                    return Ok(ExitCode::SUCCESS);
                }
                std::thread::sleep(
                    next.saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(100)),
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Splits the words into clients, then INTERVAL and COUNT (the trailing numbers).
fn split_words(words: &[String]) -> anyhow::Result<(Vec<ClientName>, Duration, Option<u64>)> {
    let numeric = |w: &String| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
    let first_number = words.iter().position(numeric).unwrap_or(words.len());
    let (names, numbers) = words.split_at(first_number);
    if numbers.len() > 2 || !numbers.iter().all(numeric) {
        anyhow::bail!(
            "after the clients come at most INTERVAL and COUNT (name a client by pid as pid:N)"
        );
    }
    let clients = names
        .iter()
        .map(|n| n.parse::<ClientName>())
        .collect::<Result<Vec<_>, _>>()?;
    let interval: u64 = match numbers.first() {
        Some(n) => n.parse().context("INTERVAL")?,
        None => 1,
    };
    if interval == 0 {
        anyhow::bail!("INTERVAL is a whole number of seconds, at least 1");
    }
    let count = match numbers.get(1) {
        Some(n) => {
            let c: u64 = n.parse().context("COUNT")?;
            if c == 0 {
                anyhow::bail!("COUNT is at least 1");
            }
            Some(c)
        }
        None => None,
    };
    Ok((clients, Duration::from_secs(interval), count))
}

/// Whether `name` names session `s`.
fn names(name: &ClientName, s: &SessionInfo) -> bool {
    match *name {
        ClientName::Pid(pid) => s.pid == pid,
        ClientName::Session(id) => s.id == id,
        ClientName::Port(t, p) => s.ports.contains(&(t, p)),
    }
}

/// A process's name and pid, as `comm (pid)`.
fn name_of(pid: u32) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    format!("{comm}({pid})")
}

/// Every drop of a queue: full ring, every other receive drop, every refused transmission.
fn drops(c: &Counters) -> u64 {
    c.rx_dropped_full
        + c.rx_dropped.iter().map(|(_, n)| n).sum::<u64>()
        + c.tx_rejected.iter().map(|(_, n)| n).sum::<u64>()
}

/// Drops by reason, each as a count since the previous sample.
fn drop_reasons(now: &Counters, before: &Counters) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let full = now.rx_dropped_full.saturating_sub(before.rx_dropped_full);
    if full > 0 {
        out.push(("rx-full".to_owned(), full));
    }
    for (prefix, a, b) in [
        ("rx-", &now.rx_dropped, &before.rx_dropped),
        ("tx-", &now.tx_rejected, &before.tx_rejected),
    ] {
        for (reason, n) in a {
            let was = b.iter().find(|(r, _)| r == reason).map_or(0, |(_, n)| *n);
            if n.saturating_sub(was) > 0 {
                out.push((format!("{prefix}{reason}"), n - was));
            }
        }
    }
    out
}

/// One line of output.
struct Row {
    name: String,
    session: Option<u64>,
    instance: String,
    ports: String,
    rx_bps: f64,
    tx_bps: f64,
    rx_fps: f64,
    tx_fps: f64,
    drops: u64,
    txfc: u64,
    reasons: Vec<(String, u64)>,
    totals: Counters,
    /// What an overlay's row says besides (`vni=N state=ok misses=N cached=N`).
    note: Option<String>,
}

impl Row {
    fn of(name: String, session: Option<u64>, now: &Sample, before: &Counters, secs: f64) -> Row {
        let c = &now.counters;
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        Row {
            name,
            session,
            instance: now.instance.clone(),
            ports: now.ports.clone(),
            rx_bps: rate(c.rx_bytes, before.rx_bytes),
            tx_bps: rate(c.tx_bytes, before.tx_bytes),
            rx_fps: rate(c.rx_frames, before.rx_frames),
            tx_fps: rate(c.tx_frames, before.tx_frames),
            drops: drops(c).saturating_sub(drops(before)),
            txfc: c.tx_flow_control.saturating_sub(before.tx_flow_control),
            reasons: drop_reasons(c, before),
            totals: c.clone(),
            note: None,
        }
    }

    fn raw(&self, field: &str) -> String {
        match field {
            "name" => self.name.clone(),
            "session" => self.session.map_or("-".into(), |s| s.to_string()),
            "instance" => self.instance.clone(),
            "rx-bps" => format!("{:.0}", self.rx_bps),
            "tx-bps" => format!("{:.0}", self.tx_bps),
            "rx-fps" => format!("{:.0}", self.rx_fps),
            "tx-fps" => format!("{:.0}", self.tx_fps),
            "drops" => self.drops.to_string(),
            "txfc" => self.txfc.to_string(),
            "ports" => self.ports.clone(),
            _ => String::new(),
        }
    }

    fn parseable(&self, fields: &[String]) -> String {
        fields
            .iter()
            .map(|f| self.raw(f))
            .collect::<Vec<_>>()
            .join(":")
    }

    fn human(&self, fields: &[String], verbose: bool) -> String {
        let cells: Vec<String> = fields
            .iter()
            .map(|f| {
                let text = match f.as_str() {
                    "rx-bps" => format!("{}/s", human_bytes(self.rx_bps)),
                    "tx-bps" => format!("{}/s", human_bytes(self.tx_bps)),
                    _ => self.raw(f),
                };
                format!("{text:>w$}", w = width(f))
            })
            .collect();
        let mut line = cells.join(" | ");
        if let Some(note) = &self.note {
            line.push_str(&format!("  {note}"));
        }
        if verbose && !self.reasons.is_empty() {
            let reasons: Vec<String> = self
                .reasons
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            line.push_str(&format!("  [{}]", reasons.join(" ")));
        }
        line + "\n"
    }

    fn json(&self, verbose: bool) -> String {
        let mut v = serde_json::json!({
            "name": self.name,
            "session": self.session,
            "instance": self.instance,
            "ports": self.ports,
            "rx_bytes_per_s": self.rx_bps,
            "tx_bytes_per_s": self.tx_bps,
            "rx_frames_per_s": self.rx_fps,
            "tx_frames_per_s": self.tx_fps,
            "drops": self.drops,
            "txfc": self.txfc,
            "rx_bytes": self.totals.rx_bytes,
            "tx_bytes": self.totals.tx_bytes,
            "rx_frames": self.totals.rx_frames,
            "tx_frames": self.totals.tx_frames,
            "drops_total": drops(&self.totals),
            "txfc_total": self.totals.tx_flow_control,
        });
        if let Some(note) = &self.note {
            for pair in note.split(' ') {
                if let Some((k, val)) = pair.split_once('=') {
                    v[k] = val
                        .parse::<u64>()
                        .map_or_else(|_| serde_json::json!(val), |n| serde_json::json!(n));
                }
            }
        }
        if verbose {
            v["drops_by_reason"] = serde_json::json!(self
                .reasons
                .iter()
                .map(|(r, n)| (r.clone(), *n))
                .collect::<std::collections::BTreeMap<_, _>>());
        }
        v.to_string()
    }
}

/// The column width of a field.
fn width(field: &str) -> usize {
    match field {
        "name" => 18,
        "instance" => 10,
        "rx-bps" | "tx-bps" => 10,
        "ports" => 12,
        _ => 7,
    }
}

fn header_line(fields: &[String]) -> String {
    let cells: Vec<String> = fields
        .iter()
        .map(|f| {
            let title = match f.as_str() {
                "rx-bps" => "rx B/s",
                "tx-bps" => "tx B/s",
                "rx-fps" => "rx f/s",
                "tx-fps" => "tx f/s",
                other => other,
            };
            format!("{title:>w$}", w = width(f))
        })
        .collect();
    cells.join(" | ") + "\n"
}

/// Bytes in 1024-based units, as vndstat prints them ("1.45MB").
fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0}{}", UNITS[unit])
    } else {
        format!("{v:.2}{}", UNITS[unit])
    }
}

/// netd's refusal as exit status 1, anything else as 2.
fn refusal(e: ClientError) -> anyhow::Error {
    match e.refusal() {
        Some(r) => anyhow::Error::new(Refused(r.message.clone())),
        None => anyhow::Error::new(e).context("talking to netd"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailing_numbers_are_interval_and_count() {
        let w = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let (c, i, n) = split_words(&w("udp/7007 pid:4 2 10")).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!((i, n), (Duration::from_secs(2), Some(10)));
        let (c, i, n) = split_words(&[]).unwrap();
        assert!(c.is_empty());
        assert_eq!((i, n), (Duration::from_secs(1), None));
        assert!(split_words(&w("0")).is_err());
        assert!(split_words(&w("1 0")).is_err());
        assert!(split_words(&w("1 2 3")).is_err());
        assert!(split_words(&w("1 udp/7")).is_err());
    }

    #[test]
    fn bytes_are_shown_in_1024_based_units() {
        assert_eq!(human_bytes(512.0), "512B");
        assert_eq!(human_bytes(1.45 * 1024.0 * 1024.0), "1.45MB");
    }
}
