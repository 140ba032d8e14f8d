//! `netmux capture`: a passive copy of what one client receives and transmits (after the
//! driver's transmit check), or of everything on the link, as illumos `snoop -z` shows a
//! zone's datalink. The capture is a netd session of its own whose queue the driver makes a
//! capture (see `netmux_driver::daemon::capture`): a copy is made only of what the client's
//! ring took or what the driver let it send, and a slow reader drops copies from its own ring
//! only, counted and reported when the capture ends. Written as pcap (what every tool reads)
//! or pcapng (with each frame's direction), to a file or to standard output with `-w -`.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use netmux_client::blocking::Client;
use netmux_client::{ClientError, ConnectOptions};
use netmux_proto::ops::{
    CaptureDirections, CaptureRecord, CaptureRequest, ClientName, FrameDirection,
    CAPTURE_RECORD_LEN,
};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;

use super::{Refused, Run};

/// tcpdump's default snapshot length: whole frames, reassembled datagrams included.
pub const DEFAULT_SNAPLEN: u32 = 262_144;
/// Frames taken from the capture's ring per look.
const RECV_BATCH: usize = 64;
/// The longest wait for frames between two looks at the stop flag.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Capture what a client receives and transmits, or the whole link, as pcap.
///
/// CLIENT is a pid, session:ID, or a port the client holds (udp/7007, tcp/8080); without it,
/// --link captures every frame the link receives (after reassembly) and sends. Received
/// frames are copied as the client's rx ring took them; transmitted ones after the driver's
/// transmit check and the admin firewall let them out. The words after CLIENT are a
/// pcap-filter expression a frame must match.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  netmux capture udp/7007 -w echo.pcap -c 10\n  \
                  netmux capture tcp/8080 -w - | tcpdump -n -r -\n  \
                  netmux capture --link -w link.pcapng --pcapng 'arp or icmp'\n  \
                  netmux capture --link -w ring.pcap -C 10 -W 5   (5 files of 10 MB, \
                  the oldest written over)\n\n\
                  Only root, or the uid that owns the client, may capture it; the whole link, \
                  root and netd's admin uids. A capture never slows the client: when the reader \
                  falls behind, copies are dropped for the capture only, and counted.\n\n\
                  Exit status: 0 captured until COUNT frames, Ctrl-C or the client's end; 1 \
                  netd refused (no such client, not allowed, a bad expression); 2 netd not \
                  reachable or the output could not be written."
)]
pub struct Capture {
    /// The client (a pid, session:ID, or udp/PORT, tcp/PORT), then the filter expression.
    #[arg(value_name = "CLIENT] [EXPR", num_args = 0..)]
    words: Vec<String>,
    /// Capture the whole link instead of one client (every word is then the expression).
    #[arg(long)]
    link: bool,
    /// Write the frames to FILE as pcap (`-` for standard output) instead of a line each.
    #[arg(short = 'w', value_name = "FILE")]
    write: Option<PathBuf>,
    /// Write pcapng (each frame marked inbound or outbound) instead of pcap.
    #[arg(long)]
    pcapng: bool,
    /// Start a new file once this one holds MB million bytes: FILE, then FILE1, FILE2, ...
    /// (as tcpdump -C).
    #[arg(short = 'C', value_name = "MB", requires = "write",
          value_parser = clap::value_parser!(u64).range(1..))]
    file_size: Option<u64>,
    /// With -C: at most N files, FILE0 to FILE{N-1}, the oldest written over (as tcpdump -W).
    #[arg(short = 'W', value_name = "N", requires = "file_size",
          value_parser = clap::value_parser!(u32).range(1..))]
    files: Option<u32>,
    /// Stop after COUNT frames.
    #[arg(short = 'c', value_name = "COUNT")]
    count: Option<u64>,
    /// Bytes of each frame kept (the record keeps its whole length).
    #[arg(short = 's', value_name = "SNAPLEN", default_value_t = DEFAULT_SNAPLEN,
          value_parser = clap::value_parser!(u32).range(1..))]
    snaplen: u32,
    /// Only what the client receives.
    #[arg(long, conflicts_with = "tx")]
    rx: bool,
    /// Only what the client transmits.
    #[arg(long)]
    tx: bool,
    /// The instance the client is in [default: the default instance].
    #[arg(long, short = 'i', value_name = "NAME")]
    instance: Option<String>,
    /// netd's runtime directory [default: $XDG_RUNTIME_DIR/netmux, else /run/netmux].
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
}

/// The files of a capture written with `-C` (and `-W`): which one is open and how full.
struct Rotation {
    base: PathBuf,
    bytes_per_file: u64,
    files: Option<u32>,
    index: u32,
    written: u64,
    pcapng: bool,
    snaplen: u32,
}

impl Rotation {
    /// The name of file `index`: FILE, FILE1, ... or, with `-W N`, FILE0 ... zero-padded.
    fn name(&self, index: u32) -> PathBuf {
        let mut name = self.base.clone().into_os_string();
        match self.files {
            Some(n) => {
                let width = (n - 1).to_string().len();
                name.push(format!("{index:0width$}"));
            }
            None if index > 0 => name.push(index.to_string()),
            None => {}
        }
        PathBuf::from(name)
    }

    /// Counts a record of `len` bytes; when the file is full, the next one to write.
    fn after(&mut self, len: u64) -> Option<PathBuf> {
        self.written += len;
        if self.written < self.bytes_per_file {
            return None;
        }
        self.written = 0;
        self.index += 1;
        if let Some(n) = self.files {
            self.index %= n;
        }
        Some(self.name(self.index))
    }
}

/// A pcap or pcapng file (or standard output) with its header written.
fn open_output(path: Option<&Path>, pcapng: bool, snaplen: u32) -> anyhow::Result<Output> {
    let sink: Box<dyn Write> = match path {
        Some(path) if path.as_os_str() != "-" => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        _ => Box::new(std::io::stdout()),
    };
    let mut sink: Box<dyn Write> = Box::new(std::io::BufWriter::new(sink));
    if !pcapng {
        sink.write_all(&pcap_header(snaplen))?;
        return Ok(Output::Pcap(sink));
    }
    let mut w = PcapNgWriter::new(sink)?;
    w.write_pcapng_block(InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen,
        // Nanoseconds, as the writer writes every packet's time.
        options: vec![InterfaceDescriptionOption::IfTsResol(9)],
    })?;
    Ok(Output::PcapNg(w))
}

/// Where the frames go.
enum Output {
    Pcap(Box<dyn Write>),
    PcapNg(PcapNgWriter<Box<dyn Write>>),
    Lines(Box<dyn Write>),
}

impl Output {
    fn write(&mut self, record: &CaptureRecord<'_>) -> anyhow::Result<()> {
        let time = Duration::from_nanos(record.timestamp_ns);
        match self {
            Output::Pcap(w) => {
                // A classic pcap record: seconds, microseconds, kept and whole length.
                let kept = u32::try_from(record.data.len()).unwrap_or(u32::MAX);
                let secs = u32::try_from(time.as_secs()).unwrap_or(u32::MAX);
                let mut header = [0u8; 16];
                header[0..4].copy_from_slice(&secs.to_le_bytes());
                header[4..8].copy_from_slice(&time.subsec_micros().to_le_bytes());
                header[8..12].copy_from_slice(&kept.to_le_bytes());
                header[12..16].copy_from_slice(&record.orig_len.to_le_bytes());
                w.write_all(&header)?;
                w.write_all(record.data)?;
            }
            Output::PcapNg(w) => {
                // epb_flags bits 0-1: 1 inbound, 2 outbound.
                let flags = match record.direction {
                    FrameDirection::In => 1,
                    FrameDirection::Out => 2,
                };
                w.write_pcapng_block(EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp: time,
                    original_len: record.orig_len,
                    data: Cow::Borrowed(record.data),
                    options: vec![EnhancedPacketOption::Flags(flags)],
                })?;
            }
            Output::Lines(w) => writeln!(w, "{}", summary(record))?,
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Pcap(w) => w.flush(),
            Output::PcapNg(w) => w.get_mut().flush(),
            Output::Lines(w) => w.flush(),
        }
    }
}

impl Run for Capture {
    fn run(self) -> anyhow::Result<ExitCode> {
        let (client, expr) = if self.link {
            (None, self.words.join(" "))
        } else {
            let Some((first, rest)) = self.words.split_first() else {
                anyhow::bail!("name a client (a pid, session:ID, udp/PORT or tcp/PORT), or --link");
            };
            let name: ClientName = first.parse()?;
            (Some(name), rest.join(" "))
        };
        let directions = match (self.rx, self.tx) {
            (true, _) => CaptureDirections::Rx,
            (_, true) => CaptureDirections::Tx,
            _ => CaptureDirections::Both,
        };
        let dir = self
            .runtime_dir
            .unwrap_or_else(netmux_netd::config::default_runtime_dir);
        let stop = netmux_driver::cli::stop_on_signals()?;
        let options = ConnectOptions {
            instance: self.instance.clone(),
            ..ConnectOptions::default()
        };
        let mut session = Client::connect_with(&dir, &options).map_err(refusal)?;
        let mut queue = session
            .capture(CaptureRequest {
                client,
                directions,
                snaplen: self.snaplen,
                expr,
            })
            .map_err(refusal)?;
        let mut rotation = match (&self.write, self.file_size) {
            (Some(path), Some(_)) if path.as_os_str() == "-" => {
                anyhow::bail!("-C needs -w FILE: standard output is one stream")
            }
            (Some(path), Some(mb)) => Some(Rotation {
                base: path.clone(),
                bytes_per_file: mb.saturating_mul(1_000_000),
                files: self.files,
                index: 0,
                written: 0,
                pcapng: self.pcapng,
                snaplen: self.snaplen,
            }),
            _ => None,
        };
        let mut out = match (&self.write, &rotation) {
            (None, _) => Output::Lines(Box::new(std::io::BufWriter::new(std::io::stdout()))),
            (Some(_), Some(r)) => {
                open_output(Some(r.name(0).as_path()), self.pcapng, self.snaplen)?
            }
            (Some(path), None) => open_output(Some(path.as_path()), self.pcapng, self.snaplen)?,
        };
        out.flush().context("writing the capture")?;
        eprintln!("netmux: capturing; Ctrl-C ends it");
        let mut frames = Vec::with_capacity(RECV_BATCH);
        let mut captured: u64 = 0;
        let mut malformed: u64 = 0;
        let limit = self.count.unwrap_or(u64::MAX);
        let mut ended_by_client = false;
        'capture: while captured < limit && !stop.load(Ordering::Relaxed) {
            frames.clear();
            let n = match queue.recv_owned(RECV_BATCH, &mut frames) {
                Ok(n) => n,
                Err(netmux_ring::QueueError::Closed) => {
                    ended_by_client = true;
                    break;
                }
                Err(e) => return Err(e).context("reading the capture"),
            };
            for frame in &frames {
                match CaptureRecord::parse(frame) {
                    Some(record) => {
                        out.write(&record).context("writing the capture")?;
                        captured += 1;
                        let len = (CAPTURE_RECORD_LEN + record.data.len()) as u64;
                        if let Some(next) = rotation.as_mut().and_then(|r| r.after(len)) {
                            out.flush().context("writing the capture")?;
                            let r = rotation.as_ref().expect("rotating");
                            out = open_output(Some(next.as_path()), r.pcapng, r.snaplen)?;
                        }
                        if captured >= limit {
                            break 'capture;
                        }
                    }
                    None => malformed += 1,
                }
            }
            if n > 0 {
                out.flush().context("writing the capture")?;
                continue;
            }
            match queue.wait_readable(Some(IDLE_WAIT)) {
                Ok(_) => {}
                Err(netmux_ring::QueueError::Closed) => {
                    ended_by_client = true;
                    break;
                }
                Err(e) => return Err(e).context("waiting for frames"),
            }
        }
        out.flush().context("writing the capture")?;
        let dropped = queue.counters().rx_dropped_full;
        eprintln!(
            "netmux: {captured} frames captured, {dropped} dropped by the capture{}{}",
            if malformed > 0 {
                format!(", {malformed} unreadable records")
            } else {
                String::new()
            },
            if ended_by_client {
                " (the client's queue ended)"
            } else {
                ""
            }
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// A classic pcap file header (little endian, microseconds, version 2.4, Ethernet).
fn pcap_header(snaplen: u32) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    h[16..20].copy_from_slice(&snaplen.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    h
}

/// netd's refusal as exit status 1, anything else as 2.
fn refusal(e: ClientError) -> anyhow::Error {
    match e.refusal() {
        Some(r) => anyhow::Error::new(Refused(r.message.clone())),
        None => anyhow::Error::new(e).context("talking to netd"),
    }
}

/// One line for a frame: time, direction, length and what etherparse makes of it.
fn summary(record: &CaptureRecord<'_>) -> String {
    let secs = record.timestamp_ns / 1_000_000_000;
    let micros = (record.timestamp_ns % 1_000_000_000) / 1_000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let dir = match record.direction {
        FrameDirection::In => "in ",
        FrameDirection::Out => "out",
    };
    format!(
        "{h:02}:{m:02}:{s:02}.{micros:06} {dir} {} {}",
        record.orig_len,
        describe(record.data)
    )
}

/// Addresses and ports of a frame, as far as it can be read.
fn describe(frame: &[u8]) -> String {
    use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return "(unreadable)".to_owned();
    };
    let (src, dst) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => (
            ip.header().source_addr().to_string(),
            ip.header().destination_addr().to_string(),
        ),
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().to_string(),
            ip.header().destination_addr().to_string(),
        ),
        _ => {
            let ethertype = match &p.link {
                Some(LinkSlice::Ethernet2(e)) => format!("ethertype {:#06x}", e.ether_type().0),
                _ => "?".to_owned(),
            };
            return ethertype;
        }
    };
    match &p.transport {
        Some(TransportSlice::Udp(u)) => format!(
            "{src}.{} > {dst}.{} udp {}",
            u.source_port(),
            u.destination_port(),
            u.payload().len()
        ),
        Some(TransportSlice::Tcp(t)) => format!(
            "{src}.{} > {dst}.{} tcp {}",
            t.source_port(),
            t.destination_port(),
            t.payload().len()
        ),
        Some(TransportSlice::Icmpv4(_)) => format!("{src} > {dst} icmp"),
        Some(TransportSlice::Icmpv6(_)) => format!("{src} > {dst} icmp6"),
        _ => format!("{src} > {dst}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(files: Option<u32>) -> Rotation {
        Rotation {
            base: PathBuf::from("/tmp/c.pcap"),
            bytes_per_file: 100,
            files,
            index: 0,
            written: 0,
            pcapng: false,
            snaplen: 65535,
        }
    }

    #[test]
    fn files_are_named_as_tcpdump_names_them() {
        let mut r = rotation(None);
        assert_eq!(r.name(0), PathBuf::from("/tmp/c.pcap"));
        assert_eq!(r.after(60), None);
        assert_eq!(r.after(60), Some(PathBuf::from("/tmp/c.pcap1")));
        let mut r = rotation(Some(12));
        assert_eq!(r.name(0), PathBuf::from("/tmp/c.pcap00"));
        let names: Vec<PathBuf> = (0..12).filter_map(|_| r.after(100)).collect();
        assert_eq!(names[0], PathBuf::from("/tmp/c.pcap01"));
        assert_eq!(
            names[11],
            PathBuf::from("/tmp/c.pcap00"),
            "the oldest is written over"
        );
    }
}
