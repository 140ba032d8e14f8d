//! `netmux defrag`: the driver's reassembler run over a capture.
//!
//! Every frame of the input goes through [`Reassembler::push`] at its capture timestamp (so
//! timeouts happen as they would have on the link), and every frame the driver would deliver is
//! written, in order: unfragmented frames unchanged, reassembled datagrams as one frame stamped
//! with the time of the fragment that completed them. The counters are printed at the end.
//! Datagrams still incomplete when the capture ends are reported as such, not as timed out.
//!
//! The input (an Ethernet capture, `-` for standard input) is read one frame at a time and the
//! output written as frames come out, so memory is the reassembler's budget, not the file's
//! size; the output keeps the input's timestamp precision. The output is created only once the
//! input's header has been read; a capture that ends in a broken record leaves what came before
//! it in the output, then the error.
//!
//! The reassembler sees what the driver would: a fragment cut short by the capture's snap
//! length is dropped as malformed (its IP length says more than the capture holds), and so is an
//! IPv6 frame whose extension headers run past the captured bytes, since it might hide a
//! Fragment header.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use netmux_driver::reassembly::{
    Config, Counters, DropReason, Outcome, Reassembler, DEFAULT_MEMORY_BUDGET,
};
use netmux_wire::capture::{self, CaptureError, Frame, Packet, PcapWriter, TimestampResolution};

use super::{Refused, Run};

/// Reassemble the IP fragments of a capture as the driver would, and write what it delivers.
#[derive(Args, Debug)]
pub struct Defrag {
    /// The capture to read (pcap or pcapng, Ethernet); `-` is standard input.
    #[arg(value_name = "IN.pcap")]
    input: PathBuf,
    /// The pcap file to write: unfragmented frames and whole datagrams, in delivery order.
    #[arg(short = 'w', value_name = "OUT.pcap")]
    output: PathBuf,
    /// Seconds from a datagram's first fragment until it is discarded.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    timeout: f64,
    /// Memory budget in bytes, overall; each source address gets a quarter of it.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MEMORY_BUDGET)]
    budget: usize,
}

/// What a run over a capture produced.
#[derive(Debug)]
pub struct DefragReport {
    /// Frames read.
    pub frames_read: usize,
    /// Frames delivered (unfragmented and reassembled).
    pub frames_written: usize,
    /// Delivered unchanged (not fragments).
    pub unfragmented: usize,
    /// The reassembler's counters at the end.
    pub counters: Counters,
    /// Fragments still held when the capture ended.
    pub held_fragments: u64,
    /// Datagrams still incomplete when the capture ended.
    pub incomplete_datagrams: usize,
}

/// What the reassembler delivers for a frame pushed.
#[derive(Debug)]
pub enum Delivered {
    /// The frame itself, unchanged (it was no fragment).
    Frame,
    /// The whole datagram the frame completed, as one frame.
    Datagram(Vec<u8>),
}

/// The reassembler over a stream of frames: each frame in, what the driver delivers out.
pub struct Defragger {
    r: Reassembler,
    frames_read: usize,
    frames_written: usize,
    unfragmented: usize,
}

impl Defragger {
    /// A reassembler configured by `config`.
    pub fn new(config: Config) -> Defragger {
        Defragger {
            r: Reassembler::new(config),
            frames_read: 0,
            frames_written: 0,
            unfragmented: 0,
        }
    }

    /// Pushes one frame at its timestamp; gives what the driver delivers for it, if anything:
    /// the frame itself, or the datagram it completed (stamped with its time).
    pub fn push(&mut self, frame: &Packet<'_>) -> Option<Delivered> {
        self.frames_read += 1;
        let now = u64::try_from(frame.timestamp.as_nanos()).unwrap_or(u64::MAX);
        let out = match self.r.push(frame.data, now) {
            Outcome::Deliver(_) => {
                self.unfragmented += 1;
                Delivered::Frame
            }
            Outcome::Reassembled(data) => Delivered::Datagram(data),
            Outcome::Held | Outcome::Dropped(_) => return None,
        };
        self.frames_written += 1;
        Some(out)
    }

    /// The counters so far.
    pub fn report(&self) -> DefragReport {
        DefragReport {
            frames_read: self.frames_read,
            frames_written: self.frames_written,
            unfragmented: self.unfragmented,
            counters: self.r.counters().clone(),
            held_fragments: self.r.held_fragments(),
            incomplete_datagrams: self.r.datagrams_in_flight(),
        }
    }
}

/// Runs `frames` through a reassembler configured by `config`; the delivered frames and the
/// report.
#[cfg(test)]
pub fn defrag(frames: &[Frame], config: Config) -> (Vec<Frame>, DefragReport) {
    let mut d = Defragger::new(config);
    let mut out = Vec::new();
    for f in frames {
        let p = Packet {
            timestamp: f.timestamp,
            data: &f.data,
            wire_len: f.wire_len,
        };
        match d.push(&p) {
            Some(Delivered::Frame) => out.push(f.clone()),
            Some(Delivered::Datagram(data)) => out.push(Frame::whole(f.timestamp, data)),
            None => {}
        }
    }
    (out, d.report())
}

impl DefragReport {
    /// The counters as the command prints them.
    pub fn summary(&self) -> String {
        let c = &self.counters;
        let mut s = String::new();
        let mut line = |label: &str, value: String| {
            s.push_str(&format!("{label:<32} {value}\n"));
        };
        line("frames read", self.frames_read.to_string());
        line("frames written", self.frames_written.to_string());
        line("  unfragmented", self.unfragmented.to_string());
        line(
            "  reassembled datagrams",
            c.datagrams_reassembled.to_string(),
        );
        line("  IPv6 atomic fragments", c.atomic_fragments.to_string());
        line("fragments read", c.fragments.to_string());
        line("  reassembled", c.fragments_reassembled.to_string());
        line("  dropped", c.total_fragments_dropped().to_string());
        for reason in DropReason::ALL {
            let n = c.fragments_dropped(reason);
            if n > 0 {
                line(&format!("    {reason}"), n.to_string());
            }
        }
        line("  held at the end", self.held_fragments.to_string());
        line("datagrams dropped", c.total_datagrams_dropped().to_string());
        for reason in DropReason::ALL {
            let n = c.datagrams_dropped(reason);
            if n > 0 {
                line(&format!("  {reason}"), n.to_string());
            }
        }
        line(
            "datagrams incomplete at the end",
            self.incomplete_datagrams.to_string(),
        );
        s
    }
}

impl Defrag {
    fn config(&self) -> anyhow::Result<Config> {
        if !(self.timeout.is_finite() && self.timeout >= 0.0) {
            anyhow::bail!(
                "--timeout must be a number of seconds, not {}",
                self.timeout
            );
        }
        let timeout_ns = Duration::try_from_secs_f64(self.timeout)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(u64::MAX);
        Ok(Config {
            timeout_ns,
            ..Config::with_budget(self.budget)
        })
    }
}

impl Run for Defrag {
    fn run(self) -> anyhow::Result<ExitCode> {
        let config = self.config()?;
        let refuse = |e: CaptureError| match e {
            CaptureError::Io { .. } => anyhow::Error::new(e),
            other => anyhow::Error::new(Refused(format!("{}: {other}", self.input.display()))),
        };
        let mut reader = capture::open(&self.input).map_err(refuse)?;
        let info = reader.info();
        info.require_dlt(
            capture::DLT_EN10MB,
            "the reassembler reads Ethernet frames, as the driver does",
        )
        .map_err(refuse)?;
        let resolution = if info.nanosecond {
            TimestampResolution::Nano
        } else {
            TimestampResolution::Micro
        };
        let file = std::fs::File::create(&self.output)
            .with_context(|| format!("cannot create {}", self.output.display()))?;
        let write_error = || format!("cannot write {}", self.output.display());
        let mut writer =
            PcapWriter::new(std::io::BufWriter::new(file), resolution).with_context(write_error)?;
        let mut d = Defragger::new(config);
        let mut fault = None;
        while let Some(frame) = reader.next_packet() {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    fault = Some(e);
                    break;
                }
            };
            match d.push(&frame) {
                Some(Delivered::Frame) => writer.write_packet(&frame),
                Some(Delivered::Datagram(data)) => {
                    writer.write(&Frame::whole(frame.timestamp, data))
                }
                None => Ok(()),
            }
            .with_context(write_error)?;
        }
        writer.finish().with_context(write_error)?;
        // The counters of the frames before a fault, then the fault.
        print!("{}", d.report().summary());
        match fault {
            Some(e) => Err(refuse(e)),
            None => Ok(ExitCode::SUCCESS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use netmux_driver::reassembly::fragmenter;

    /// The command line with only this command, as the top-level parser would route it.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        defrag: Defrag,
    }

    fn udp_frame(id: u16, payload_len: usize) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        let total = (28 + payload_len) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&[0, 0, 64, 17, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2]);
        let mut sum = 0u32;
        for w in f[14..34].chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        f.extend_from_slice(&[0x30, 0x39, 0, 53]);
        f.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend((0..payload_len).map(|i| (i as u16 ^ id) as u8));
        f
    }

    #[test]
    fn defrag_command_writes_whole_datagrams_in_order_and_prints_counters() {
        let dir = netmux_testkit::TempDir::new("netmux-defrag");
        let (input, output) = (dir.join("in.pcap"), dir.join("out.pcap"));

        let small = udp_frame(1, 10);
        let big = udp_frame(2, 3000);
        let late = udp_frame(3, 2000);
        let big_frags = fragmenter::fragment(&big, 1480, 0).unwrap();
        let late_frags = fragmenter::fragment(&late, 1480, 0).unwrap();
        let at = |s: u64| Duration::new(1_700_000_000 + s, 0);
        let frames = vec![
            Frame::whole(at(0), big_frags[2].clone()),
            Frame::whole(at(0), small.clone()),
            Frame::whole(at(1), big_frags[0].clone()),
            Frame::whole(at(2), late_frags[0].clone()),
            Frame::whole(at(3), big_frags[1].clone()),
            // 40 s after its first fragment: the rest of `late` comes after its timeout.
            Frame::whole(at(42), late_frags[1].clone()),
        ];
        std::fs::write(
            &input,
            capture::write_pcap(&frames, TimestampResolution::Micro).unwrap(),
        )
        .unwrap();

        let cli = Cli::try_parse_from([
            "netmux-defrag".as_ref(),
            input.as_os_str(),
            "-w".as_ref(),
            output.as_os_str(),
            "--timeout".as_ref(),
            "30".as_ref(),
        ])
        .unwrap();
        assert_eq!(cli.defrag.run().unwrap(), ExitCode::SUCCESS);

        let written = capture::read_file(&output).unwrap();
        assert_eq!(written.len(), 2);
        assert_eq!(written[0], Frame::whole(at(0), small));
        assert_eq!(written[1], Frame::whole(at(3), big));

        let (_, report) = defrag(&frames, Config::default());
        assert_eq!(report.counters.datagrams_reassembled, 1);
        assert_eq!(report.counters.datagrams_dropped(DropReason::Timeout), 1);
        assert_eq!(
            report.incomplete_datagrams, 1,
            "late's second fragment starts anew"
        );
        let summary = report.summary();
        assert!(summary.contains("timeout"), "{summary}");
    }

    #[test]
    fn defrag_refuses_a_file_that_is_not_a_capture() {
        let dir = netmux_testkit::TempDir::new("netmux-defrag-bad");
        let input = dir.join("in.pcap");
        std::fs::write(&input, b"not a capture").unwrap();
        let cli = Cli::try_parse_from([
            "netmux-defrag".as_ref(),
            input.as_os_str(),
            "-w".as_ref(),
            dir.join("out.pcap").as_os_str(),
        ])
        .unwrap();
        let err = cli.defrag.run().unwrap_err();
        assert!(err.downcast_ref::<Refused>().is_some(), "{err:#}");
    }

    #[test]
    fn smaller_budget_and_timeout_reach_the_reassembler() {
        let cli = Cli::try_parse_from([
            "netmux-defrag",
            "in.pcap",
            "-w",
            "out.pcap",
            "--timeout",
            "1.5",
            "--budget",
            "65536",
        ])
        .unwrap();
        let config = cli.defrag.config().unwrap();
        assert_eq!(config.timeout_ns, 1_500_000_000);
        assert_eq!(config.memory_budget, 65_536);
        assert_eq!(config.source_budget, 16_384);
    }
}
