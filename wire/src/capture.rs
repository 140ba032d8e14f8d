//! Capture files: reading pcap and pcapng into frames, and writing pcap.
//!
//! Used by `netmux vm run`, `netmux filter match`, `netmux defrag` and the driver's pcap
//! replay/record link. Only Ethernet captures (link type 1) are accepted: netmux filters and
//! classifies Ethernet frames, so anything else is refused with the link type named.
//!
//! [`read_file`] and [`read`] give every frame at once; [`frames`] reads them one at a time from
//! a capture in memory, so a tool can act on the frames before a fault.
//!
//! Guarantees: reading returns frames or a [`CaptureError`] for any input whatever, and never
//! panics; a frame's `data` is exactly the bytes the file captured, and `wire_len` the length
//! the file says the frame had on the wire (which may be larger, when the capture cut the frame
//! at its snap length, and is passed on unchanged even when it is smaller, as libpcap does).
//! [`PcapWriter`] output reads back as the same frames.
//!
//! The parsing of both formats is the `pcap-file` crate's (its slice parsers, on a file read
//! whole); this module adds the link-type policy, pcapng timestamp resolutions (`if_tsresol`,
//! `if_tsoffset`, which the crate leaves to its user) and error messages that say which frame
//! is at fault.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::PcapError;

/// The link type of Ethernet (`LINKTYPE_ETHERNET`), the only one netmux reads.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// The snap length written into pcap headers: libpcap's `MAXIMUM_SNAPLEN`, larger than any
/// frame netmux handles.
pub const WRITE_SNAPLEN: u32 = 262_144;
/// libpcap keeps the link type in the low 26 bits of a pcap header's field and uses the rest
/// for the FCS length (`LT_LINKTYPE`).
const LINKTYPE_MASK: u32 = 0x03ff_ffff;
/// pcapng's default timestamp resolution: microseconds (10^-6 s).
const DEFAULT_TSRESOL: u8 = 6;

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// When it was captured, since the Unix epoch.
    pub timestamp: Duration,
    /// The captured bytes.
    pub data: Vec<u8>,
    /// Its length on the wire, as the file records it.
    pub wire_len: u32,
}

impl Frame {
    /// A frame captured whole: `wire_len` is the length of `data`.
    pub fn whole(timestamp: Duration, data: Vec<u8>) -> Frame {
        let wire_len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        Frame {
            timestamp,
            data,
            wire_len,
        }
    }
}

/// Why a capture cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// Writing to the output failed.
    #[error("cannot write the capture")]
    Write(#[from] std::io::Error),
    /// The input starts with neither a pcap nor a pcapng magic number.
    #[error("not a pcap or pcapng capture (the file starts with {0})")]
    NotACapture(String),
    /// The capture's link type is not Ethernet.
    #[error("link type {linktype} ({name}) is not supported: netmux reads Ethernet (link type 1) captures only")]
    UnsupportedLinkType {
        /// The link type number.
        linktype: u32,
        /// Its name, as the pcap-file crate knows it.
        name: String,
    },
    /// The file ends in the middle of a header, a frame or a block.
    #[error("the capture is truncated: it ends inside {0}")]
    Truncated(String),
    /// A header, frame or block is not well formed.
    #[error("malformed capture: {0}")]
    Malformed(String),
    /// A frame cannot be represented in the output format.
    #[error("frame {index} cannot be written: {reason}")]
    Unwritable {
        /// The frame's position, from 0.
        index: usize,
        /// Why.
        reason: &'static str,
    },
}

/// Reads a pcap or pcapng capture file.
pub fn read_file(path: impl AsRef<Path>) -> Result<Vec<Frame>, CaptureError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| CaptureError::Io {
        path: path.display().to_string(),
        source,
    })?;
    read(&bytes)
}

/// Reads a pcap or pcapng capture from its bytes; the format is told by the magic number.
pub fn read(bytes: &[u8]) -> Result<Vec<Frame>, CaptureError> {
    frames(bytes)?.collect()
}

/// The frames of a capture held in memory, one at a time: the file header is checked here,
/// each frame when the iterator reaches it. After an error the iterator ends.
pub fn frames(bytes: &[u8]) -> Result<Frames<'_>, CaptureError> {
    let Some(magic) = bytes.get(..4) else {
        return Err(CaptureError::Truncated(format!(
            "the file header ({} bytes)",
            bytes.len()
        )));
    };
    let format = match magic {
        [0xa1, 0xb2, 0xc3, 0xd4]
        | [0xd4, 0xc3, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0x3c, 0x4d]
        | [0x4d, 0x3c, 0xb2, 0xa1] => {
            let (rest, parser) = PcapParser::new(bytes)
                .map_err(|e| parse_error(e, || "the pcap file header".into()))?;
            let header = parser.header();
            let linktype = u32::from(header.datalink) & LINKTYPE_MASK;
            if linktype != LINKTYPE_ETHERNET {
                return Err(link_type_error(linktype));
            }
            let nanos_per_unit = match header.ts_resolution {
                pcap_file::TsResolution::MicroSecond => 1_000,
                pcap_file::TsResolution::NanoSecond => 1,
            };
            Format::Pcap {
                parser,
                rest,
                nanos_per_unit,
            }
        }
        [0x0a, 0x0d, 0x0d, 0x0a] => {
            let (rest, parser) = PcapNgParser::new(bytes)
                .map_err(|e| parse_error(e, || "the pcapng section header".into()))?;
            Format::PcapNg {
                parser: Box::new(parser),
                rest,
                interfaces: Vec::new(),
                block_index: 1,
            }
        }
        other => {
            return Err(CaptureError::NotACapture(
                other.iter().map(|b| format!("{b:02x}")).collect(),
            ))
        }
    };
    Ok(Frames {
        format,
        frames: 0,
        failed: false,
    })
}

/// Iterator over a capture's frames; see [`frames`].
pub struct Frames<'a> {
    format: Format<'a>,
    /// Frames returned so far.
    frames: usize,
    /// An error was returned: the iterator has ended.
    failed: bool,
}

enum Format<'a> {
    Pcap {
        parser: PcapParser,
        rest: &'a [u8],
        nanos_per_unit: u64,
    },
    PcapNg {
        parser: Box<PcapNgParser>,
        rest: &'a [u8],
        interfaces: Vec<Interface>,
        block_index: usize,
    },
}

impl std::fmt::Debug for Frames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frames")
            .field("frames", &self.frames)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Iterator for Frames<'_> {
    type Item = Result<Frame, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let index = self.frames;
        let next = match &mut self.format {
            Format::Pcap {
                parser,
                rest,
                nanos_per_unit,
            } => next_pcap(parser, rest, *nanos_per_unit, index),
            Format::PcapNg {
                parser,
                rest,
                interfaces,
                block_index,
            } => next_pcapng(parser, rest, interfaces, block_index, index),
        };
        match &next {
            Some(Ok(_)) => self.frames += 1,
            Some(Err(_)) => self.failed = true,
            None => {}
        }
        next
    }
}

fn link_type_error(linktype: u32) -> CaptureError {
    CaptureError::UnsupportedLinkType {
        linktype,
        name: format!("{:?}", pcap_file::DataLink::from(linktype)),
    }
}

fn parse_error(e: PcapError, place: impl FnOnce() -> String) -> CaptureError {
    match e {
        PcapError::IncompleteBuffer => CaptureError::Truncated(place()),
        PcapError::InvalidField(what) => CaptureError::Malformed(format!("{}: {what}", place())),
        other => CaptureError::Malformed(format!("{}: {other}", place())),
    }
}

fn next_pcap(
    parser: &PcapParser,
    rest: &mut &[u8],
    nanos_per_unit: u64,
    index: usize,
) -> Option<Result<Frame, CaptureError>> {
    if rest.is_empty() {
        return None;
    }
    let (after, raw) = match parser.next_raw_packet(rest) {
        Ok(parsed) => parsed,
        Err(e) => return Some(Err(parse_error(e, || format!("frame {index}")))),
    };
    *rest = after;
    // The fraction is not checked against one second: Duration carries it over, where the
    // crate's checked conversion would refuse files libpcap reads.
    let timestamp = Duration::from_secs(u64::from(raw.ts_sec))
        + Duration::from_nanos(u64::from(raw.ts_frac) * nanos_per_unit);
    Some(Ok(Frame {
        timestamp,
        data: raw.data.into_owned(),
        wire_len: raw.orig_len,
    }))
}

/// An interface of a pcapng section: what its packets' timestamps mean.
struct Interface {
    /// `if_tsresol`: 10^-v seconds per unit, or 2^-(v & 0x7f) when the top bit is set.
    tsresol: u8,
    /// `if_tsoffset`: seconds to add.
    tsoffset: u64,
}

impl Interface {
    fn timestamp(&self, units: u64) -> Duration {
        let units = u128::from(units);
        let nanos: u128 = if self.tsresol & 0x80 != 0 {
            let shift = u32::from(self.tsresol & 0x7f);
            (units * 1_000_000_000) >> shift
        } else {
            let exp = u32::from(self.tsresol);
            if exp <= 9 {
                units * 10u128.pow(9 - exp)
            } else {
                units / 10u128.checked_pow(exp - 9).unwrap_or(u128::MAX)
            }
        };
        let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
        let subsec = (nanos % 1_000_000_000) as u32;
        Duration::new(secs.saturating_add(self.tsoffset), subsec)
    }
}

/// Reads blocks until the next frame, the end, or an error.
fn next_pcapng(
    parser: &mut PcapNgParser,
    rest: &mut &[u8],
    interfaces: &mut Vec<Interface>,
    block_index: &mut usize,
    index: usize,
) -> Option<Result<Frame, CaptureError>> {
    while !rest.is_empty() {
        let place = || format!("block {block_index} (after {index} frames)");
        let (after, block) = match parser.next_block(rest) {
            Ok(parsed) => parsed,
            Err(e) => return Some(Err(parse_error(e, place))),
        };
        let undescribed = |id: u32| {
            CaptureError::Malformed(format!(
                "{}: packet of interface {id}, which was not described",
                place()
            ))
        };
        let frame = match block {
            Block::SectionHeader(_) => {
                interfaces.clear();
                None
            }
            Block::InterfaceDescription(idb) => {
                let linktype = u32::from(idb.linktype);
                if linktype != LINKTYPE_ETHERNET {
                    return Some(Err(link_type_error(linktype)));
                }
                let mut interface = Interface {
                    tsresol: DEFAULT_TSRESOL,
                    tsoffset: 0,
                };
                for option in &idb.options {
                    match option {
                        InterfaceDescriptionOption::IfTsResol(v) => interface.tsresol = *v,
                        InterfaceDescriptionOption::IfTsOffset(v) => interface.tsoffset = *v,
                        _ => {}
                    }
                }
                interfaces.push(interface);
                None
            }
            Block::EnhancedPacket(epb) => {
                let Some(interface) = interfaces.get(epb.interface_id as usize) else {
                    return Some(Err(undescribed(epb.interface_id)));
                };
                // The crate reads the 64-bit timestamp as nanoseconds; it is in the
                // interface's units.
                let units = u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX);
                Some(Frame {
                    timestamp: interface.timestamp(units),
                    data: epb.data.into_owned(),
                    wire_len: epb.original_len,
                })
            }
            Block::SimplePacket(spb) => {
                if interfaces.is_empty() {
                    return Some(Err(CaptureError::Malformed(format!(
                        "{}: simple packet before any interface description",
                        place()
                    ))));
                }
                // The body is padded to 4 bytes; the captured part is at most the wire length.
                let mut data = spb.data.into_owned();
                data.truncate(spb.original_len as usize);
                Some(Frame {
                    timestamp: Duration::ZERO,
                    data,
                    wire_len: spb.original_len,
                })
            }
            Block::Packet(pb) => {
                let Some(interface) = interfaces.get(usize::from(pb.interface_id)) else {
                    return Some(Err(undescribed(u32::from(pb.interface_id))));
                };
                Some(Frame {
                    timestamp: interface.timestamp(pb.timestamp),
                    data: pb.data.into_owned(),
                    wire_len: pb.original_len,
                })
            }
            // Statistics, name resolution, journal and unknown blocks carry no frames.
            _ => None,
        };
        *block_index += 1;
        *rest = after;
        if let Some(frame) = frame {
            return Some(Ok(frame));
        }
    }
    None
}

/// Timestamp resolution of a written pcap file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimestampResolution {
    /// Microseconds: the classic format every tool reads (magic `a1b2c3d4`).
    #[default]
    Micro,
    /// Nanoseconds (magic `a1b23c4d`).
    Nano,
}

/// Writes an Ethernet pcap file, little-endian, one frame at a time.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    resolution: TimestampResolution,
    written: usize,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header and returns the writer.
    pub fn new(mut out: W, resolution: TimestampResolution) -> Result<Self, CaptureError> {
        let magic: u32 = match resolution {
            TimestampResolution::Micro => 0xa1b2_c3d4,
            TimestampResolution::Nano => 0xa1b2_3c4d,
        };
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&magic.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        header.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        header.extend_from_slice(&WRITE_SNAPLEN.to_le_bytes());
        header.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter {
            out,
            resolution,
            written: 0,
        })
    }

    /// Appends one frame. Refuses frames the format cannot hold: timestamps after 2106 or
    /// more than [`WRITE_SNAPLEN`] captured bytes.
    pub fn write(&mut self, frame: &Frame) -> Result<(), CaptureError> {
        let unwritable = |reason| CaptureError::Unwritable {
            index: self.written,
            reason,
        };
        let secs = u32::try_from(frame.timestamp.as_secs())
            .map_err(|_| unwritable("its timestamp is after 2106"))?;
        let frac = match self.resolution {
            TimestampResolution::Micro => frame.timestamp.subsec_micros(),
            TimestampResolution::Nano => frame.timestamp.subsec_nanos(),
        };
        let caplen = u32::try_from(frame.data.len())
            .ok()
            .filter(|&len| len <= WRITE_SNAPLEN)
            .ok_or_else(|| unwritable("it is longer than the snap length"))?;
        let mut record = Vec::with_capacity(16 + frame.data.len());
        record.extend_from_slice(&secs.to_le_bytes());
        record.extend_from_slice(&frac.to_le_bytes());
        record.extend_from_slice(&caplen.to_le_bytes());
        record.extend_from_slice(&frame.wire_len.to_le_bytes());
        record.extend_from_slice(&frame.data);
        self.out.write_all(&record)?;
        self.written += 1;
        Ok(())
    }

    /// Flushes and returns the output.
    pub fn finish(mut self) -> Result<W, CaptureError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes `frames` as a pcap file in memory.
pub fn write_pcap(
    frames: &[Frame],
    resolution: TimestampResolution,
) -> Result<Vec<u8>, CaptureError> {
    let mut w = PcapWriter::new(Vec::new(), resolution)?;
    for f in frames {
        w.write(f)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_frames() -> Vec<Frame> {
        vec![
            Frame::whole(Duration::new(1_700_000_000, 123_456_000), vec![0xff; 60]),
            Frame {
                timestamp: Duration::new(1_700_000_001, 999_999_000),
                data: (0..=255u8).collect(),
                wire_len: 1514,
            },
            Frame::whole(Duration::new(0, 0), Vec::new()),
        ]
    }

    #[test]
    fn pcap_written_in_microseconds_reads_back_the_same_frames() {
        let frames = sample_frames();
        let bytes = write_pcap(&frames, TimestampResolution::Micro).unwrap();
        assert_eq!(&bytes[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(read(&bytes).unwrap(), frames);
    }

    #[test]
    fn pcap_written_in_nanoseconds_keeps_nanoseconds() {
        let mut frames = sample_frames();
        frames[0].timestamp = Duration::new(5, 123_456_789);
        let bytes = write_pcap(&frames, TimestampResolution::Nano).unwrap();
        assert_eq!(read(&bytes).unwrap(), frames);
        let micro = write_pcap(&frames, TimestampResolution::Micro).unwrap();
        assert_eq!(
            read(&micro).unwrap()[0].timestamp,
            Duration::new(5, 123_456_000)
        );
    }

    #[test]
    fn a_timestamp_after_2106_is_refused_with_the_frame_index() {
        let mut frames = sample_frames();
        frames[1].timestamp = Duration::from_secs(1 << 33);
        let e = write_pcap(&frames, TimestampResolution::Micro).unwrap_err();
        assert!(e.to_string().contains("frame 1"), "{e}");
    }

    #[test]
    fn a_file_cut_inside_a_frame_is_truncated_naming_the_frame() {
        let bytes = write_pcap(&sample_frames(), TimestampResolution::Micro).unwrap();
        let cut = &bytes[..24 + 16 + 60 + 16 + 10];
        let e = read(cut).unwrap_err();
        assert!(matches!(e, CaptureError::Truncated(_)), "{e}");
        assert!(e.to_string().contains("frame 1"), "{e}");
        let e = read(&bytes[..10]).unwrap_err();
        assert!(matches!(e, CaptureError::Truncated(_)), "{e}");
    }

    #[test]
    fn the_frame_iterator_yields_the_frames_before_an_error_then_ends() {
        let bytes = write_pcap(&sample_frames(), TimestampResolution::Micro).unwrap();
        let cut = &bytes[..bytes.len() - 1];
        let mut it = frames(cut).unwrap();
        assert_eq!(it.next().unwrap().unwrap(), sample_frames()[0]);
        assert_eq!(it.next().unwrap().unwrap(), sample_frames()[1]);
        assert!(matches!(it.next(), Some(Err(CaptureError::Truncated(_)))));
        assert!(it.next().is_none());
        // A capture with no frames at all is fine.
        assert_eq!(read(&bytes[..24]).unwrap(), vec![]);
    }

    #[test]
    fn a_non_ethernet_pcap_is_refused_naming_the_link_type() {
        let mut bytes = write_pcap(&sample_frames(), TimestampResolution::Micro).unwrap();
        bytes[20] = 101; // LINKTYPE_RAW
        let e = read(&bytes).unwrap_err();
        assert!(
            matches!(e, CaptureError::UnsupportedLinkType { linktype: 101, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("link type 101"), "{e}");
    }

    #[test]
    fn the_upper_bits_of_a_pcap_link_type_are_ignored_as_libpcap_does() {
        // tcpdump's test captures carry 0x30000001, 0x40000001 and 0x04000001 (FCS bits).
        let mut bytes = write_pcap(&sample_frames(), TimestampResolution::Micro).unwrap();
        for high in [0x30u8, 0x40, 0x04] {
            bytes[23] = high;
            assert_eq!(read(&bytes).unwrap(), sample_frames());
        }
    }

    #[test]
    fn something_else_is_not_a_capture() {
        let e = read(b"NMXF\x01\x00").unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a pcap or pcapng capture (the file starts with 4e4d5846)"
        );
        assert!(matches!(read(b"").unwrap_err(), CaptureError::Truncated(_)));
    }

    /// A pcapng file made by the pcap-file crate's writer: one Ethernet interface with the
    /// given `if_tsresol`, and the frames as enhanced packet blocks.
    fn pcapng(frames: &[Frame], tsresol: u8, linktype: u32) -> Vec<u8> {
        use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
        use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
        use std::borrow::Cow;
        let mut w = pcap_file::pcapng::PcapNgWriter::new(Vec::new()).unwrap();
        let mut idb = InterfaceDescriptionBlock::new(linktype.into(), 65535);
        idb.options
            .push(InterfaceDescriptionOption::IfTsResol(tsresol));
        w.write_pcapng_block(idb).unwrap();
        for f in frames {
            // The crate writes the Duration's nanoseconds as the raw 64-bit timestamp.
            let raw = if tsresol == 9 {
                f.timestamp.as_nanos()
            } else {
                f.timestamp.as_micros()
            };
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(raw as u64),
                original_len: f.wire_len,
                data: Cow::Borrowed(&f.data),
                options: vec![],
            })
            .unwrap();
        }
        w.into_inner()
    }

    #[test]
    fn pcapng_reads_the_same_frames_in_microseconds_and_nanoseconds() {
        let frames = sample_frames();
        assert_eq!(read(&pcapng(&frames, 6, 1)).unwrap(), frames);
        let mut nano = sample_frames();
        nano[0].timestamp = Duration::new(7, 1);
        assert_eq!(read(&pcapng(&nano, 9, 1)).unwrap(), nano);
    }

    #[test]
    fn a_non_ethernet_pcapng_interface_is_refused() {
        let e = read(&pcapng(&sample_frames(), 6, 113)).unwrap_err();
        assert!(
            matches!(e, CaptureError::UnsupportedLinkType { linktype: 113, .. }),
            "{e}"
        );
    }

    #[test]
    fn a_cut_pcapng_is_an_error() {
        let bytes = pcapng(&sample_frames(), 6, 1);
        for cut in [4, 20, bytes.len() - 1, bytes.len() - 100] {
            assert!(read(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn mutated_captures_never_panic() {
        // Every single-byte change and every truncation of small pcap and pcapng files, and
        // a seeded run of multi-byte changes: each gives frames or an error, never a panic.
        let frames = vec![
            Frame::whole(Duration::new(1, 2000), vec![1; 14]),
            Frame {
                timestamp: Duration::new(3, 0),
                data: vec![2; 5],
                wire_len: 60,
            },
        ];
        let files = [
            write_pcap(&frames, TimestampResolution::Micro).unwrap(),
            write_pcap(&frames, TimestampResolution::Nano).unwrap(),
            pcapng(&frames, 6, 1),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for file in &files {
            for cut in 0..file.len() {
                let _ = read(&file[..cut]);
            }
            for i in 0..file.len() {
                for v in [0u8, 1, 0x7f, 0x80, 0xff, file[i] ^ 1] {
                    let mut m = file.clone();
                    m[i] = v;
                    let _ = read(&m);
                }
            }
            for _ in 0..3000 {
                let mut m = file.clone();
                for _ in 0..(next() % 6 + 1) {
                    let i = (next() % m.len() as u64) as usize;
                    m[i] = next() as u8;
                }
                let _ = read(&m);
            }
        }
    }

    #[test]
    fn pcapng_timestamp_resolutions_are_applied() {
        let i = |tsresol, tsoffset| Interface { tsresol, tsoffset };
        assert_eq!(i(6, 0).timestamp(1_500_000), Duration::from_millis(1500));
        assert_eq!(i(9, 0).timestamp(1_500_000), Duration::from_micros(1500));
        assert_eq!(i(3, 10).timestamp(1_500), Duration::from_millis(11_500));
        assert_eq!(i(0x80 | 10, 0).timestamp(1024), Duration::from_secs(1));
        assert_eq!(i(12, 0).timestamp(5_000), Duration::from_nanos(5));
        // Absurd resolutions saturate instead of panicking.
        let _ = i(0xff, u64::MAX).timestamp(u64::MAX);
        let _ = i(0x7f, u64::MAX).timestamp(u64::MAX);
        let _ = i(0, u64::MAX).timestamp(u64::MAX);
    }

    /// The conformance corpus: `$NETMUX_CONFORMANCE_DIR`, else `../shared/conformance` beside
    /// the workspace.
    fn conformance_dir() -> std::path::PathBuf {
        std::env::var_os("NETMUX_CONFORMANCE_DIR")
            .map(Into::into)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance")
            })
    }

    #[test]
    #[ignore = "needs the conformance corpus"]
    fn every_corpus_capture_reads_or_names_its_link_type() {
        let dir = conformance_dir();
        let mut files: Vec<_> = ["pcap/tcpdump", "pcap/libpcap"]
            .iter()
            .flat_map(|sub| {
                std::fs::read_dir(dir.join(sub)).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e} (set NETMUX_CONFORMANCE_DIR)",
                        dir.join(sub).display()
                    )
                })
            })
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let (mut read_ok, mut frames, mut other_link) = (0, 0, Vec::new());
        let mut failures = Vec::new();
        for path in &files {
            let bytes = std::fs::read(path).unwrap();
            match std::panic::catch_unwind(|| read(&bytes)) {
                Ok(Ok(f)) => {
                    read_ok += 1;
                    frames += f.len();
                }
                Ok(Err(CaptureError::UnsupportedLinkType { linktype, name })) => {
                    other_link.push(format!("{} ({linktype} {name})", path.display()));
                }
                Ok(Err(e)) => failures.push(format!("{}: {e}", path.display())),
                Err(_) => failures.push(format!("{}: PANIC", path.display())),
            }
        }
        eprintln!(
            "{read_ok} of {} captures read ({frames} frames); {} have another link type:\n  {}",
            files.len(),
            other_link.len(),
            other_link.join("\n  ")
        );
        assert!(read_ok > 0, "no capture found under {}", dir.display());
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
