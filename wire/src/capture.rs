//! Capture files as tcpdump reads them: pcap and pcapng, read one record at a time in memory
//! independent of the file's size, with libpcap's rules (`savefile.c`, `sf-pcap.c`,
//! `sf-pcapng.c`); and pcap written as `tcpdump -w` writes it.
//!
//! Used by `netmux filter match`, `filter classify`, `vm run`, `netmux defrag` and the
//! driver's pcap replay/record link.
//!
//! What libpcap does, [`CaptureReader`] does:
//! - pcap in either byte order, micro- or nanosecond magic (and the old `0xa1b2cd34` one),
//!   versions 2.0 to 2.4 and 543.0, record lengths swapped as old versions wrote them;
//! - the snapshot length honoured: a record longer than the file's snapshot length is cut to it
//!   (the rest read and dropped), one longer than [`MAXIMUM_SNAPLEN`] refused; a snapshot length
//!   of 0 or above `INT_MAX` means [`MAXIMUM_SNAPLEN`];
//! - pcapng: sections, interface descriptions (`if_tsresol`, `if_tsoffset`), enhanced, simple and
//!   obsolete packet blocks, other blocks skipped; one link type and one snapshot length per file
//!   (libpcap refuses more); blocks up to 16 MiB;
//! - the link type of the file mapped to libpcap's `DLT_` value ([`linktype_to_dlt`]: `101` and
//!   `12` are raw IP), whatever it is: what a tool does with it is the tool's business
//!   ([`CaptureInfo::dlt`]);
//! - the CAN id of Linux cooked captures written in the other byte order put in host order
//!   (`pcap_post_process`).
//!
//! Guarantees: reading returns frames or a [`CaptureError`] for any input whatever, never
//! panics, and holds at most one record (one pcapng block) in memory; an error names the frame
//! at fault, counting from 1, and comes after every whole frame before it; a frame's `data` is
//! what libpcap would hand tcpdump, and `wire_len` the length the file says the frame had on
//! the wire (passed on even when smaller than the captured bytes, as libpcap does).
//! [`PcapWriter`] output reads back as the same frames.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::path::Path;
use std::time::Duration;

/// libpcap's `MAXIMUM_SNAPLEN`: the most bytes of a record it reads, and the snapshot length of a
/// file that gives none.
pub const MAXIMUM_SNAPLEN: u32 = 262_144;
/// The snap length of written pcap files when the caller has none: [`MAXIMUM_SNAPLEN`].
pub const WRITE_SNAPLEN: u32 = MAXIMUM_SNAPLEN;
/// The file link type of Ethernet (`LINKTYPE_ETHERNET`, also its `DLT_` value).
pub const LINKTYPE_ETHERNET: u32 = 1;
/// `DLT_EN10MB`: what [`CaptureInfo::dlt`] says of an Ethernet capture.
pub const DLT_EN10MB: u32 = 1;
/// libpcap keeps the link type in the low 26 bits of a pcap header's field and uses the rest
/// for the FCS length (`LT_LINKTYPE`).
const LINKTYPE_MASK: u32 = 0x03ff_ffff;
/// The largest pcapng block libpcap reads (`INITIAL_MAX_BLOCKSIZE`; the largest it raises it
/// to for the link types netmux reads is smaller).
pub const MAX_PCAPNG_BLOCK: u32 = 16 * 1024 * 1024;
/// The largest pcapng section header block libpcap reads (`BT_SHB_INSANE_MAX`).
const MAX_PCAPNG_SHB: u32 = 1024 * 1024;
/// pcapng's default timestamp resolution: microseconds (10^-6 s).
const DEFAULT_TSRESOL: u64 = 1_000_000;
/// How much input is buffered at once.
const READ_BUFFER: usize = 64 * 1024;

const PCAP_MAGIC: u32 = 0xa1b2_c3d4;
const PCAP_MAGIC_NSEC: u32 = 0xa1b2_3c4d;
/// Alexey Kuznetzov's patched libpcap: 24-byte record headers.
const PCAP_MAGIC_KUZNETZOV: u32 = 0xa1b2_cd34;
const PCAPNG_SHB: u32 = 0x0a0d_0d0a;
const PCAPNG_BYTE_ORDER: u32 = 0x1a2b_3c4d;
const PCAPNG_IDB: u32 = 1;
const PCAPNG_PB: u32 = 2;
const PCAPNG_SPB: u32 = 3;
const PCAPNG_EPB: u32 = 6;

/// A file link type (`LINKTYPE_`) as libpcap on Linux maps it to its `DLT_` value
/// (`linktype_to_dlt`): `LINKTYPE_RAW` (101) is `DLT_RAW` (12); the values 104 to 289 are the
/// same in both; the rest are the same number too (a file with 12 is raw IP, as an old libpcap
/// wrote it).
pub fn linktype_to_dlt(linktype: u32) -> u32 {
    match linktype {
        101 => 12,
        // LINKTYPE_ATM_RFC1483, _SLIP_BSDOS, _PPP_BSDOS, _C_HDLC, _NETBSD_HDLC.
        100 => 11,
        102 => 15,
        103 => 16,
        // LINKTYPE_ATM_CLIP.
        106 => 19,
        other => other,
    }
}

/// A `DLT_` value as a file link type (`dlt_to_linktype`), what `tcpdump -w` writes.
pub fn dlt_to_linktype(dlt: u32) -> u32 {
    match dlt {
        12 => 101,
        11 => 100,
        15 => 102,
        16 => 103,
        other => other,
    }
}

/// The name libpcap gives a `DLT_` value, for messages (`pcap_datalink_val_to_name`).
pub fn dlt_name(dlt: u32) -> String {
    match dlt {
        0 => "NULL".into(),
        1 => "EN10MB".into(),
        12 => "RAW".into(),
        105 => "IEEE802_11".into(),
        108 => "LOOP".into(),
        113 => "LINUX_SLL".into(),
        127 => "IEEE802_11_RADIO".into(),
        228 => "IPV4".into(),
        229 => "IPV6".into(),
        276 => "LINUX_SLL2".into(),
        other => format!("DLT {other}"),
    }
}

/// One captured frame, owned.
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

/// One captured frame, borrowed from the reader until the next one is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// When it was captured, since the Unix epoch.
    pub timestamp: Duration,
    /// The captured bytes (at most the file's snapshot length).
    pub data: &'a [u8],
    /// Its length on the wire, as the file records it.
    pub wire_len: u32,
}

impl Packet<'_> {
    /// The frame, owned.
    pub fn to_frame(&self) -> Frame {
        Frame {
            timestamp: self.timestamp,
            data: self.data.to_vec(),
            wire_len: self.wire_len,
        }
    }
}

/// Why a capture cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file cannot be opened (the system's reason is the error's source).
    #[error("cannot open {path}")]
    Io {
        /// The file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// Reading the input failed part-way.
    #[error("error reading the capture: {0}")]
    Read(std::io::Error),
    /// Writing to the output failed (the system's reason is the error's source).
    #[error("cannot write the capture")]
    Write(#[from] std::io::Error),
    /// The input starts with neither a pcap nor a pcapng header.
    #[error("not a pcap or pcapng capture (the file starts with {0})")]
    NotACapture(String),
    /// The capture's link type is not the one a tool needs.
    #[error("link type {linktype} ({name}) is not supported here: {needs}")]
    UnsupportedLinkType {
        /// The link type (`DLT_`) number.
        linktype: u32,
        /// Its name.
        name: String,
        /// What the tool reads.
        needs: &'static str,
    },
    /// The file ends in the middle of a header, a frame or a block.
    #[error("the capture is truncated: {0}")]
    Truncated(String),
    /// A header, frame or block is not well formed (libpcap refuses it the same way).
    #[error("malformed capture: {0}")]
    Malformed(String),
    /// A frame cannot be represented in the output format.
    #[error("frame {index} cannot be written: {reason}")]
    Unwritable {
        /// The frame's position, from 1.
        index: u64,
        /// Why.
        reason: &'static str,
    },
}

/// The file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// libpcap's classic format.
    Pcap,
    /// pcapng.
    PcapNg,
}

/// What a capture says of itself, as libpcap reports it (`pcap_datalink`, `pcap_snapshot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureInfo {
    /// pcap or pcapng.
    pub format: Format,
    /// The link layer, as a `DLT_` value ([`linktype_to_dlt`] of the file's link type).
    pub dlt: u32,
    /// The upper bits of a pcap file's link type field (the FCS length), written back by
    /// `tcpdump -w`; 0 for pcapng.
    pub linktype_ext: u32,
    /// The snapshot length, adjusted as libpcap adjusts it: no record's data is longer.
    pub snaplen: u32,
    /// Whether the timestamps are finer than microseconds (a nanosecond pcap, or a pcapng
    /// interface with a finer `if_tsresol`).
    pub nanosecond: bool,
    /// Whether the file is in big-endian byte order.
    pub big_endian: bool,
}

impl CaptureInfo {
    /// Refuses a capture whose link type is not `dlt`, naming what `needs` says.
    pub fn require_dlt(&self, dlt: u32, needs: &'static str) -> Result<(), CaptureError> {
        if self.dlt == dlt {
            Ok(())
        } else {
            Err(CaptureError::UnsupportedLinkType {
                linktype: self.dlt,
                name: dlt_name(self.dlt),
                needs,
            })
        }
    }
}

/// libpcap's `max_snaplen_for_dlt`: the most bytes of a record it reads for a link type.
pub fn max_snaplen_for_dlt(dlt: u32) -> u32 {
    match dlt {
        // DLT_DBUS, DLT_EBHSCR, DLT_USBPCAP.
        231 => 128 * 1024 * 1024,
        279 => 8 * 1024 * 1024,
        249 => 1024 * 1024,
        _ => MAXIMUM_SNAPLEN,
    }
}

/// libpcap's `pcap_adjust_snapshot`: 0 or more than `INT_MAX` means the link type's maximum.
fn adjust_snapshot(dlt: u32, snaplen: u32) -> u32 {
    if snaplen == 0 || snaplen > i32::MAX as u32 {
        max_snaplen_for_dlt(dlt)
    } else {
        snaplen
    }
}

/// How an old pcap file stores the two length fields (`lengths_swapped`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lengths {
    NotSwapped,
    Swapped,
    MaybeSwapped,
}

/// An interface of a pcapng section: what its packets' timestamps mean.
#[derive(Clone, Copy, Debug)]
struct Interface {
    /// Units per second (`if_tsresol`).
    tsresol: u64,
    /// Seconds to add (`if_tsoffset`).
    tsoffset: u64,
}

impl Interface {
    fn timestamp(&self, units: u64) -> Duration {
        let secs = (units / self.tsresol).wrapping_add(self.tsoffset);
        let frac = u128::from(units % self.tsresol);
        let nanos = (frac * 1_000_000_000 / u128::from(self.tsresol)) as u32;
        Duration::new(secs, nanos)
    }
}

#[derive(Debug)]
enum State {
    Pcap {
        nanos_per_unit: u32,
        record_header: usize,
        lengths: Lengths,
    },
    PcapNg {
        /// The interfaces of the current section.
        interfaces: Vec<Interface>,
        /// Blocks read so far, for messages.
        blocks: u64,
    },
}

/// Reads a capture one frame at a time; see the module documentation.
#[derive(Debug)]
pub struct CaptureReader<R> {
    input: BufReader<R>,
    info: CaptureInfo,
    state: State,
    swapped: bool,
    /// The current record or block.
    buf: Vec<u8>,
    /// Frames returned so far.
    frames: u64,
    /// An error or the end was returned: the reader has ended.
    done: bool,
}

/// Reads until `buf` is full or the input ends; returns how many bytes it got.
fn fill<R: Read>(input: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn u32_at(b: &[u8], at: usize, swapped: bool) -> u32 {
    let v = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    if swapped {
        v.swap_bytes()
    } else {
        v
    }
}

fn u16_at(b: &[u8], at: usize, swapped: bool) -> u16 {
    let v = u16::from_le_bytes([b[at], b[at + 1]]);
    if swapped {
        v.swap_bytes()
    } else {
        v
    }
}

/// Opens a capture file, `-` for standard input.
pub fn open(path: &Path) -> Result<CaptureReader<Box<dyn Read>>, CaptureError> {
    let input: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(path).map_err(|source| CaptureError::Io {
                path: path.display().to_string(),
                source,
            })?,
        )
    };
    CaptureReader::new(input)
}

impl<R: Read> CaptureReader<R> {
    /// Reads the file header (for pcapng, up to the first interface description) and returns
    /// the reader, positioned at the first frame.
    pub fn new(input: R) -> Result<Self, CaptureError> {
        let mut input = BufReader::with_capacity(READ_BUFFER, input);
        let mut magic = [0u8; 4];
        let got = fill(&mut input, &mut magic).map_err(CaptureError::Read)?;
        if got < 4 {
            return Err(CaptureError::Truncated(format!(
                "tried to read 4 file header bytes, only got {got}"
            )));
        }
        let m = u32::from_le_bytes(magic);
        let pcap = [PCAP_MAGIC, PCAP_MAGIC_NSEC, PCAP_MAGIC_KUZNETZOV];
        let mut reader = CaptureReader {
            input,
            info: CaptureInfo {
                format: Format::Pcap,
                dlt: 0,
                linktype_ext: 0,
                snaplen: 0,
                nanosecond: false,
                big_endian: false,
            },
            state: State::PcapNg {
                interfaces: Vec::new(),
                blocks: 0,
            },
            swapped: false,
            buf: Vec::new(),
            frames: 0,
            done: false,
        };
        if pcap.contains(&m) || pcap.contains(&m.swap_bytes()) {
            reader.swapped = !pcap.contains(&m);
            reader.pcap_header(if reader.swapped { m.swap_bytes() } else { m })?;
        } else if m == PCAPNG_SHB {
            reader.pcapng_header(magic)?;
        } else {
            return Err(CaptureError::NotACapture(
                magic.iter().map(|b| format!("{b:02x}")).collect(),
            ));
        }
        Ok(reader)
    }

    /// What the capture says of itself.
    pub fn info(&self) -> CaptureInfo {
        self.info
    }

    /// Frames returned so far.
    pub fn frames_read(&self) -> u64 {
        self.frames
    }

    /// The frames as owned values, one at a time; after an error the iterator ends.
    pub fn frames(self) -> Frames<R> {
        Frames { reader: self }
    }

    fn pcap_header(&mut self, magic: u32) -> Result<(), CaptureError> {
        let mut h = [0u8; 20];
        let got = fill(&mut self.input, &mut h).map_err(CaptureError::Read)?;
        if got < h.len() {
            return Err(CaptureError::Truncated(format!(
                "tried to read 24 file header bytes, only got {}",
                got + 4
            )));
        }
        let s = self.swapped;
        let (major, minor) = (u16_at(&h, 0, s), u16_at(&h, 2, s));
        let snaplen = u32_at(&h, 12, s);
        let linktype = u32_at(&h, 16, s);
        if major < 2 {
            return Err(CaptureError::Malformed(
                "archaic pcap savefile format".into(),
            ));
        }
        if !((major == 2 && minor <= 4) || (major == 543 && minor == 0)) {
            return Err(CaptureError::Malformed(format!(
                "unsupported pcap savefile version {major}.{minor}"
            )));
        }
        let dlt = linktype_to_dlt(linktype & LINKTYPE_MASK);
        let mut snapshot = adjust_snapshot(dlt, snaplen);
        let mut record_header = 16;
        if magic == PCAP_MAGIC_KUZNETZOV {
            record_header = 24;
            // It may have been a cooked capture with an Ethernet header added.
            if dlt == DLT_EN10MB {
                snapshot = snapshot.saturating_add(14).min(i32::MAX as u32);
            }
        }
        let lengths = match (major, minor) {
            (2, m) if m < 3 => Lengths::Swapped,
            (2, 3) => Lengths::MaybeSwapped,
            (543, _) => Lengths::Swapped,
            _ => Lengths::NotSwapped,
        };
        self.info = CaptureInfo {
            format: Format::Pcap,
            dlt,
            linktype_ext: linktype & !LINKTYPE_MASK,
            snaplen: snapshot,
            nanosecond: magic == PCAP_MAGIC_NSEC,
            big_endian: s,
        };
        self.state = State::Pcap {
            nanos_per_unit: if magic == PCAP_MAGIC_NSEC { 1 } else { 1_000 },
            record_header,
            lengths,
        };
        Ok(())
    }

    fn pcapng_header(&mut self, magic: [u8; 4]) -> Result<(), CaptureError> {
        let mut h = [0u8; 8];
        let got = fill(&mut self.input, &mut h).map_err(CaptureError::Read)?;
        // libpcap: a short file starting like pcapng is "not pcapng", and so an unknown format.
        if got < 8 {
            return Err(CaptureError::NotACapture(
                magic.iter().map(|b| format!("{b:02x}")).collect(),
            ));
        }
        let bom = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        self.swapped = match bom {
            PCAPNG_BYTE_ORDER => false,
            b if b.swap_bytes() == PCAPNG_BYTE_ORDER => true,
            _ => {
                return Err(CaptureError::NotACapture(
                    magic.iter().map(|b| format!("{b:02x}")).collect(),
                ))
            }
        };
        let total = u32_at(&h, 0, self.swapped);
        if !(28..=MAX_PCAPNG_SHB).contains(&total) {
            return Err(CaptureError::Malformed(format!(
                "Section Header Block in pcapng dump file has invalid length {total}"
            )));
        }
        // The rest of the section header: versions, section length, options, trailer.
        let mut rest = vec![0u8; total as usize - 12];
        let got = fill(&mut self.input, &mut rest).map_err(CaptureError::Read)?;
        if got < rest.len() {
            return Err(CaptureError::Truncated(format!(
                "tried to read {} bytes of the section header, only got {got}",
                rest.len()
            )));
        }
        let (major, minor) = (
            u16_at(&rest, 0, self.swapped),
            u16_at(&rest, 2, self.swapped),
        );
        if !(major == 1 && (minor == 0 || minor == 2)) {
            return Err(CaptureError::Malformed(format!(
                "unsupported pcapng savefile version {major}.{minor}"
            )));
        }
        self.info = CaptureInfo {
            format: Format::PcapNg,
            dlt: 0,
            linktype_ext: 0,
            snaplen: 0,
            nanosecond: false,
            big_endian: self.swapped,
        };
        self.state = State::PcapNg {
            interfaces: Vec::new(),
            blocks: 1,
        };
        // Up to the first interface description, which gives the link type.
        loop {
            let Some(block_type) = self.read_block()? else {
                return Err(CaptureError::Malformed(
                    "the capture file has no Interface Description Blocks".into(),
                ));
            };
            match block_type {
                PCAPNG_IDB => {
                    let (linktype, snaplen) = self.idb_fields()?;
                    self.info.dlt = linktype_to_dlt(linktype);
                    self.info.snaplen = adjust_snapshot(self.info.dlt, snaplen);
                    return self.add_interface();
                }
                PCAPNG_EPB | PCAPNG_SPB | PCAPNG_PB => return Err(CaptureError::Malformed(
                    "the capture file has a packet block before any Interface Description Blocks"
                        .into(),
                )),
                _ => {}
            }
        }
    }

    /// Where the reader is, for messages: `frame N`, the frame being read, counting from 1
    /// (and for pcapng the block, counting from 1).
    fn at(&self) -> String {
        match self.state {
            State::Pcap { .. } => format!("frame {}", self.frames + 1),
            State::PcapNg { blocks, .. } => format!("frame {} (block {blocks})", self.frames + 1),
        }
    }

    /// Reads one pcapng block into `buf` (the body, without the header and trailer); `None`
    /// at the end of the input.
    fn read_block(&mut self) -> Result<Option<u32>, CaptureError> {
        if let State::PcapNg { blocks, .. } = &mut self.state {
            *blocks += 1;
        }
        let mut h = [0u8; 8];
        let got = fill(&mut self.input, &mut h).map_err(CaptureError::Read)?;
        if got == 0 {
            return Ok(None);
        }
        if got < 8 {
            return Err(CaptureError::Truncated(format!(
                "{}: tried to read 8 bytes of a block header, only got {got}",
                self.at()
            )));
        }
        let block_type = u32_at(&h, 0, self.swapped);
        let total = u32_at(&h, 4, self.swapped);
        if total < 12 {
            return Err(CaptureError::Malformed(format!(
                "{}: block length {total} < 12",
                self.at()
            )));
        }
        if !total.is_multiple_of(4) {
            return Err(CaptureError::Malformed(format!(
                "{}: block length {total} is not a multiple of 4",
                self.at()
            )));
        }
        // libpcap raises its limit to hold a packet of the link type's largest snapshot
        // length and 128 KiB of options (`MAX_BLOCKSIZE_FOR_SNAPLEN`).
        let max = MAX_PCAPNG_BLOCK.max(max_snaplen_for_dlt(self.info.dlt).saturating_add(131_104));
        if total > max {
            return Err(CaptureError::Malformed(format!(
                "{}: pcapng block size {total} > maximum {max}",
                self.at()
            )));
        }
        let body = total as usize - 8;
        self.buf.resize(body, 0);
        let got = fill(&mut self.input, &mut self.buf).map_err(CaptureError::Read)?;
        if got < body {
            return Err(CaptureError::Truncated(format!(
                "{}: tried to read {body} bytes of a block, only got {got}",
                self.at()
            )));
        }
        if u32_at(&self.buf, body - 4, self.swapped) != total {
            return Err(CaptureError::Malformed(format!(
                "{}: block total length in header and trailer don't match",
                self.at()
            )));
        }
        self.buf.truncate(body - 4);
        Ok(Some(block_type))
    }

    fn too_short(&self, block_type: u32) -> CaptureError {
        CaptureError::Malformed(format!(
            "{}: block of type {block_type} in pcapng dump file is too short",
            self.at()
        ))
    }

    /// An interface description's link type and snapshot length (in `buf`).
    fn idb_fields(&self) -> Result<(u32, u32), CaptureError> {
        if self.buf.len() < 8 {
            return Err(self.too_short(PCAPNG_IDB));
        }
        Ok((
            u32::from(u16_at(&self.buf, 0, self.swapped)),
            u32_at(&self.buf, 4, self.swapped),
        ))
    }

    /// `add_interface`: the options of the interface description in `buf`.
    fn add_interface(&mut self) -> Result<(), CaptureError> {
        let mut iface = Interface {
            tsresol: DEFAULT_TSRESOL,
            tsoffset: 0,
        };
        let (mut saw_tsresol, mut saw_tsoffset) = (false, false);
        let mut at = 8;
        let bad = |msg: String| CaptureError::Malformed(format!("{}: {msg}", self.at()));
        while at < self.buf.len() {
            if self.buf.len() - at < 4 {
                return Err(self.too_short(PCAPNG_IDB));
            }
            let code = u16_at(&self.buf, at, self.swapped);
            let len = usize::from(u16_at(&self.buf, at + 2, self.swapped));
            let padded = len.div_ceil(4) * 4;
            at += 4;
            if self.buf.len() - at < padded {
                return Err(self.too_short(PCAPNG_IDB));
            }
            let value = &self.buf[at..at + len];
            at += padded;
            match code {
                0 => {
                    if len != 0 {
                        return Err(bad(format!(
                            "Interface Description Block has opt_endofopt option with length {len} != 0"
                        )));
                    }
                    break;
                }
                9 => {
                    if len != 1 {
                        return Err(bad(format!(
                            "Interface Description Block has if_tsresol option with length {len} != 1"
                        )));
                    }
                    if saw_tsresol {
                        return Err(bad(
                            "Interface Description Block has more than one if_tsresol option"
                                .into(),
                        ));
                    }
                    saw_tsresol = true;
                    let v = value[0];
                    iface.tsresol = if v & 0x80 != 0 {
                        let shift = v & 0x7f;
                        if shift > 63 {
                            return Err(bad(format!(
                                "Interface Description Block if_tsresol option resolution 2^-{shift} is too high"
                            )));
                        }
                        1u64 << shift
                    } else {
                        if v > 19 {
                            return Err(bad(format!(
                                "Interface Description Block if_tsresol option resolution 10^-{v} is too high"
                            )));
                        }
                        10u64.pow(u32::from(v))
                    };
                }
                14 => {
                    if len != 8 {
                        return Err(bad(format!(
                            "Interface Description Block has if_tsoffset option with length {len} != 8"
                        )));
                    }
                    if saw_tsoffset {
                        return Err(bad(
                            "Interface Description Block has more than one if_tsoffset option"
                                .into(),
                        ));
                    }
                    saw_tsoffset = true;
                    let mut b = [0u8; 8];
                    b.copy_from_slice(value);
                    let v = u64::from_le_bytes(b);
                    iface.tsoffset = if self.swapped { v.swap_bytes() } else { v };
                }
                _ => {}
            }
        }
        if iface.tsresol > 1_000_000 {
            self.info.nanosecond = true;
        }
        if let State::PcapNg { interfaces, .. } = &mut self.state {
            interfaces.push(iface);
        }
        Ok(())
    }

    /// The next frame, borrowed until the next call; `None` at the end. After an error the
    /// reader has ended.
    pub fn next_packet(&mut self) -> Option<Result<Packet<'_>, CaptureError>> {
        if self.done {
            return None;
        }
        let r = match self.state {
            State::Pcap { .. } => self.next_pcap(),
            State::PcapNg { .. } => self.next_pcapng(),
        };
        match r {
            Ok(Some((timestamp, wire_len))) => {
                self.frames += 1;
                self.post_process(wire_len);
                Some(Ok(Packet {
                    timestamp,
                    data: &self.buf,
                    wire_len,
                }))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    /// A pcap record into `buf`; the timestamp and wire length.
    fn next_pcap(&mut self) -> Result<Option<(Duration, u32)>, CaptureError> {
        let State::Pcap {
            nanos_per_unit,
            record_header,
            lengths,
        } = self.state
        else {
            return Ok(None);
        };
        let mut h = [0u8; 24];
        let h = &mut h[..record_header];
        let got = fill(&mut self.input, h).map_err(CaptureError::Read)?;
        if got == 0 {
            return Ok(None);
        }
        if got < record_header {
            return Err(CaptureError::Truncated(format!(
                "{}: tried to read {record_header} header bytes, only got {got}",
                self.at()
            )));
        }
        let s = self.swapped;
        let (secs, frac) = (u32_at(h, 0, s), u32_at(h, 4, s));
        let (mut caplen, mut len) = (u32_at(h, 8, s), u32_at(h, 12, s));
        let swap = match lengths {
            Lengths::NotSwapped => false,
            Lengths::Swapped => true,
            Lengths::MaybeSwapped => caplen > len,
        };
        if swap {
            std::mem::swap(&mut caplen, &mut len);
        }
        let snapshot = self.info.snaplen;
        let max = max_snaplen_for_dlt(self.info.dlt);
        if caplen > max {
            let why = if caplen > snapshot {
                format!("bigger than snaplen of {snapshot}")
            } else {
                format!("bigger than maximum of {max}")
            };
            return Err(CaptureError::Malformed(format!(
                "{}: invalid packet capture length {caplen}, {why}",
                self.at()
            )));
        }
        let keep = caplen.min(snapshot) as usize;
        self.buf.resize(keep, 0);
        let got = fill(&mut self.input, &mut self.buf).map_err(CaptureError::Read)?;
        if got < keep {
            return Err(CaptureError::Truncated(format!(
                "{}: tried to read {keep} captured bytes, only got {got}",
                self.at()
            )));
        }
        if caplen as usize > keep {
            // Longer than the snapshot length: the rest is read and dropped, as libpcap does.
            let rest = u64::from(caplen) - keep as u64;
            let dropped = std::io::copy(&mut (&mut self.input).take(rest), &mut std::io::sink())
                .map_err(CaptureError::Read)?;
            if dropped < rest {
                return Err(CaptureError::Truncated(format!(
                    "{}: tried to read {caplen} captured bytes, only got {}",
                    self.at(),
                    keep as u64 + dropped
                )));
            }
        }
        // The fraction is not checked against one second: Duration carries it over, where
        // libpcap passes it on unchanged.
        let timestamp = Duration::from_secs(u64::from(secs))
            + Duration::from_nanos(u64::from(frac) * u64::from(nanos_per_unit));
        Ok(Some((timestamp, len)))
    }

    /// Reads blocks up to the next packet, into `buf` (the packet's bytes alone).
    fn next_pcapng(&mut self) -> Result<Option<(Duration, u32)>, CaptureError> {
        loop {
            let Some(block_type) = self.read_block()? else {
                return Ok(None);
            };
            let s = self.swapped;
            let (interface, caplen, len, units, data_at) = match block_type {
                PCAPNG_EPB => {
                    if self.buf.len() < 20 {
                        return Err(self.too_short(block_type));
                    }
                    let b = &self.buf;
                    let units = u64::from(u32_at(b, 4, s)) << 32 | u64::from(u32_at(b, 8, s));
                    (
                        u32_at(b, 0, s),
                        u32_at(b, 12, s),
                        u32_at(b, 16, s),
                        units,
                        20,
                    )
                }
                PCAPNG_PB => {
                    if self.buf.len() < 20 {
                        return Err(self.too_short(block_type));
                    }
                    let b = &self.buf;
                    let units = u64::from(u32_at(b, 4, s)) << 32 | u64::from(u32_at(b, 8, s));
                    let interface = u32::from(u16_at(b, 0, s));
                    (interface, u32_at(b, 12, s), u32_at(b, 16, s), units, 20)
                }
                PCAPNG_SPB => {
                    if self.buf.len() < 4 {
                        return Err(self.too_short(block_type));
                    }
                    let len = u32_at(&self.buf, 0, s);
                    (0, len.min(self.info.snaplen), len, 0, 4)
                }
                PCAPNG_IDB => {
                    let (linktype, snaplen) = self.idb_fields()?;
                    // libpcap compares the written link type with the first interface's
                    // mapped one, so a second `LINKTYPE_RAW` (101, mapped to 12) is refused;
                    // so is it here.
                    if linktype != self.info.dlt {
                        return Err(CaptureError::Malformed(format!(
                            "{}: an interface has a type {linktype} different from the type of the first interface",
                            self.at()
                        )));
                    }
                    if adjust_snapshot(self.info.dlt, snaplen) != self.info.snaplen {
                        return Err(CaptureError::Malformed(format!(
                            "{}: an interface has a snapshot length {snaplen} different from the snapshot length of the first interface",
                            self.at()
                        )));
                    }
                    self.add_interface()?;
                    continue;
                }
                PCAPNG_SHB => {
                    if self.buf.len() < 16 {
                        return Err(self.too_short(block_type));
                    }
                    let bom = u32_at(&self.buf, 0, s);
                    if bom == PCAPNG_BYTE_ORDER.swap_bytes() {
                        return Err(CaptureError::Malformed(format!(
                            "{}: the file has sections with different byte orders",
                            self.at()
                        )));
                    }
                    if bom != PCAPNG_BYTE_ORDER {
                        return Err(CaptureError::Malformed(format!(
                            "{}: the file has a section with a bad byte order magic field",
                            self.at()
                        )));
                    }
                    let major = u16_at(&self.buf, 4, s);
                    if major != 1 {
                        return Err(CaptureError::Malformed(format!(
                            "{}: unknown pcapng savefile major version number {major}",
                            self.at()
                        )));
                    }
                    if let State::PcapNg { interfaces, .. } = &mut self.state {
                        interfaces.clear();
                    }
                    continue;
                }
                _ => continue,
            };
            let State::PcapNg { interfaces, .. } = &self.state else {
                return Ok(None);
            };
            let Some(iface) = interfaces.get(interface as usize).copied() else {
                return Err(CaptureError::Malformed(format!(
                    "{}: a packet arrived on interface {interface}, but there's no Interface Description Block for that interface",
                    self.at()
                )));
            };
            if caplen > self.info.snaplen {
                return Err(CaptureError::Malformed(format!(
                    "{}: invalid packet capture length {caplen}, bigger than snaplen of {}",
                    self.at(),
                    self.info.snaplen
                )));
            }
            let end = data_at + caplen as usize;
            if self.buf.len() < end {
                return Err(self.too_short(block_type));
            }
            self.buf.truncate(end);
            self.buf.drain(..data_at);
            return Ok(Some((iface.timestamp(units), len)));
        }
    }

    /// `pcap_post_process`: in a Linux cooked capture written in the other byte order, the
    /// CAN id of a SocketCAN frame is put in host order, as libpcap does.
    fn post_process(&mut self, wire_len: u32) {
        let host_is_little = cfg!(target_endian = "little");
        if self.info.big_endian != host_is_little {
            return;
        }
        let (header, protocol_at) = match self.info.dlt {
            113 => (16, 14),
            276 => (20, 0),
            _ => return,
        };
        let b = &mut self.buf;
        if b.len() < header + 4 || (wire_len as usize) < header + 4 {
            return;
        }
        let protocol = u16::from_be_bytes([b[protocol_at], b[protocol_at + 1]]);
        // LINUX_SLL_P_CAN, LINUX_SLL_P_CANFD.
        if protocol == 0x000c || protocol == 0x000d {
            b[header..header + 4].reverse();
        }
    }
}

/// The frames of a capture, owned, one at a time; see [`CaptureReader::frames`].
#[derive(Debug)]
pub struct Frames<R> {
    reader: CaptureReader<R>,
}

impl<R> Frames<R> {
    /// What the capture says of itself.
    pub fn info(&self) -> CaptureInfo {
        self.reader.info
    }
}

impl<R: Read> Iterator for Frames<R> {
    type Item = Result<Frame, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.reader.next_packet().map(|r| r.map(|p| p.to_frame()))
    }
}

/// Reads an Ethernet capture file whole (for tools that need every frame at once: the driver's
/// replay link, tests).
pub fn read_file(path: impl AsRef<Path>) -> Result<Vec<Frame>, CaptureError> {
    let reader = open(path.as_ref())?;
    reader
        .info()
        .require_dlt(DLT_EN10MB, "only Ethernet captures are read here")?;
    reader.frames().collect()
}

/// Reads an Ethernet capture from its bytes; the format is told by the magic number.
pub fn read(bytes: &[u8]) -> Result<Vec<Frame>, CaptureError> {
    frames(bytes)?.collect()
}

/// The frames of an Ethernet capture held in memory, one at a time: the file header is
/// checked here, each frame when the iterator reaches it. After an error the iterator ends.
pub fn frames(bytes: &[u8]) -> Result<Frames<&[u8]>, CaptureError> {
    let reader = CaptureReader::new(bytes)?;
    reader
        .info()
        .require_dlt(DLT_EN10MB, "only Ethernet captures are read here")?;
    Ok(reader.frames())
}

/// Timestamp resolution of a written pcap file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimestampResolution {
    /// Microseconds: the classic format every tool reads (magic `a1b2c3d4`), what tcpdump
    /// writes.
    #[default]
    Micro,
    /// Nanoseconds (magic `a1b23c4d`).
    Nano,
}

/// The header of a written pcap file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcapHeader {
    /// Timestamp resolution.
    pub resolution: TimestampResolution,
    /// The link type field: a file link type (`LINKTYPE_`), with any upper bits.
    pub linktype: u32,
    /// The snapshot length; no frame written may capture more.
    pub snaplen: u32,
}

impl PcapHeader {
    /// An Ethernet file with the largest snapshot length.
    pub fn ethernet(resolution: TimestampResolution) -> PcapHeader {
        PcapHeader {
            resolution,
            linktype: LINKTYPE_ETHERNET,
            snaplen: WRITE_SNAPLEN,
        }
    }

    /// What `tcpdump -r IN -w OUT` writes for a capture: microseconds, the capture's link type
    /// (as a file link type, with its upper bits) and snapshot length.
    pub fn like(info: &CaptureInfo) -> PcapHeader {
        PcapHeader {
            resolution: TimestampResolution::Micro,
            linktype: dlt_to_linktype(info.dlt) | info.linktype_ext,
            snaplen: info.snaplen,
        }
    }
}

/// Writes a pcap file in the host's byte order (as libpcap's `pcap_dump`), one frame at a
/// time.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    header: PcapHeader,
    written: u64,
}

impl<W: Write> PcapWriter<W> {
    /// Writes an Ethernet file header and returns the writer.
    pub fn new(out: W, resolution: TimestampResolution) -> Result<Self, CaptureError> {
        PcapWriter::with_header(out, PcapHeader::ethernet(resolution))
    }

    /// Writes the file header and returns the writer.
    pub fn with_header(mut out: W, header: PcapHeader) -> Result<Self, CaptureError> {
        let magic: u32 = match header.resolution {
            TimestampResolution::Micro => PCAP_MAGIC,
            TimestampResolution::Nano => PCAP_MAGIC_NSEC,
        };
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&magic.to_ne_bytes());
        h.extend_from_slice(&2u16.to_ne_bytes()); // version 2.4
        h.extend_from_slice(&4u16.to_ne_bytes());
        h.extend_from_slice(&0i32.to_ne_bytes()); // thiszone
        h.extend_from_slice(&0u32.to_ne_bytes()); // sigfigs
        h.extend_from_slice(&header.snaplen.to_ne_bytes());
        h.extend_from_slice(&header.linktype.to_ne_bytes());
        out.write_all(&h)?;
        Ok(PcapWriter {
            out,
            header,
            written: 0,
        })
    }

    /// Appends one frame.
    pub fn write(&mut self, frame: &Frame) -> Result<(), CaptureError> {
        self.write_packet(&Packet {
            timestamp: frame.timestamp,
            data: &frame.data,
            wire_len: frame.wire_len,
        })
    }

    /// Appends one frame. Refuses frames the file cannot hold: timestamps after 2106 or more
    /// captured bytes than the snapshot length.
    pub fn write_packet(&mut self, packet: &Packet<'_>) -> Result<(), CaptureError> {
        let unwritable = |reason| CaptureError::Unwritable {
            index: self.written + 1,
            reason,
        };
        let secs = u32::try_from(packet.timestamp.as_secs())
            .map_err(|_| unwritable("its timestamp is after 2106"))?;
        let frac = match self.header.resolution {
            TimestampResolution::Micro => packet.timestamp.subsec_micros(),
            TimestampResolution::Nano => packet.timestamp.subsec_nanos(),
        };
        // What a reader takes the header's snapshot length to be (0: the maximum).
        let snaplen = adjust_snapshot(
            linktype_to_dlt(self.header.linktype & LINKTYPE_MASK),
            self.header.snaplen,
        );
        let caplen = u32::try_from(packet.data.len())
            .ok()
            .filter(|&len| len <= snaplen)
            .ok_or_else(|| unwritable("it is longer than the snap length"))?;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&secs.to_ne_bytes());
        h[4..8].copy_from_slice(&frac.to_ne_bytes());
        h[8..12].copy_from_slice(&caplen.to_ne_bytes());
        h[12..16].copy_from_slice(&packet.wire_len.to_ne_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(packet.data)?;
        self.written += 1;
        Ok(())
    }

    /// Frames written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes and returns the output.
    pub fn finish(mut self) -> Result<W, CaptureError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes `frames` as an Ethernet pcap file in memory.
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
mod tests;
