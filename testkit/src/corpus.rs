//! The conformance corpus and capture reading.
//!
//! The corpus lives outside the repository: `$NETMUX_CONFORMANCE_DIR` if set, else
//! `<workspace>/../shared/conformance`. It holds `exprs.txt` (expressions that must agree with
//! libpcap), `reject.txt` (expressions that must be rejected) and captures under `pcap/`.
//!
//! [`read_capture`] reads every frame of a pcap or pcapng capture (told apart by magic number)
//! through netmux's own reader, so as libpcap hands them to tcpdump: records longer than the
//! snapshot length cut to it, the wire length as recorded. A capture that ends in the middle of
//! a record keeps the frames before it ([`Capture::truncated`] says so), as `tcpdump -r` prints
//! them before its error.

use std::fs;
use std::path::{Path, PathBuf};

use netmux_wire::capture::{self, CaptureError};

/// The environment variable that overrides where the corpus is.
pub const CONFORMANCE_DIR_ENV: &str = "NETMUX_CONFORMANCE_DIR";

/// Why a capture or list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file starts with neither a pcap nor a pcapng magic number, or its header is bad.
    #[error("{path}: not a pcap or pcapng capture: {reason}")]
    NotACapture {
        /// The file.
        path: PathBuf,
        /// What the reader said.
        reason: String,
    },
}

/// One frame: the captured bytes and the length it had on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The captured bytes (possibly fewer than `wire_len`).
    pub data: Vec<u8>,
    /// The length on the wire, as recorded.
    pub wire_len: u32,
}

impl Frame {
    /// A frame captured whole.
    pub fn whole(data: Vec<u8>) -> Frame {
        let wire_len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        Frame { data, wire_len }
    }
}

/// The Ethernet frames of one capture.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    /// The Ethernet frames, in capture order.
    pub frames: Vec<Frame>,
    /// Frames skipped because their interface's link type is not Ethernet.
    pub non_ethernet_frames: usize,
    /// Whether the capture ended inside a record or block (the frames before it are kept).
    pub truncated: bool,
}

/// The corpus directory, if it exists: `$NETMUX_CONFORMANCE_DIR` when set, else
/// `<workspace>/../shared/conformance`, else the same beside a further ancestor of the workspace
/// (so a git worktree at `/work/wt/NAME` finds `/work/shared/conformance` too).
pub fn conformance_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os(CONFORMANCE_DIR_ENV) {
        let dir = PathBuf::from(d);
        return dir.is_dir().then_some(dir);
    }
    // CARGO_MANIFEST_DIR is <workspace>/testkit.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    workspace
        .ancestors()
        .skip(1)
        .map(|a| a.join("shared/conformance"))
        .find(|d| d.is_dir())
}

/// The expressions of a list file: one per line, blank lines and `#` comments skipped, the
/// line's surrounding whitespace trimmed.
pub fn read_expr_list(path: &Path) -> Result<Vec<String>, CorpusError> {
    let text = fs::read_to_string(path).map_err(|source| CorpusError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// `exprs.txt` of the corpus at `dir`.
pub fn exprs(dir: &Path) -> Result<Vec<String>, CorpusError> {
    read_expr_list(&dir.join("exprs.txt"))
}

/// `reject.txt` of the corpus at `dir`.
pub fn reject_exprs(dir: &Path) -> Result<Vec<String>, CorpusError> {
    read_expr_list(&dir.join("reject.txt"))
}

/// Every file under `dir`, recursively, sorted by path so runs are reproducible.
pub fn capture_paths(dir: &Path) -> Result<Vec<PathBuf>, CorpusError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|source| CorpusError::Io {
            path: d.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| CorpusError::Io {
                path: d.clone(),
                source,
            })?;
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads the Ethernet frames of a pcap or pcapng capture.
pub fn read_capture(path: &Path) -> Result<Capture, CorpusError> {
    let bytes = fs::read(path).map_err(|source| CorpusError::Io {
        path: path.to_owned(),
        source,
    })?;
    read_capture_bytes(&bytes).map_err(|reason| CorpusError::NotACapture {
        path: path.to_owned(),
        reason,
    })
}

/// Reads the Ethernet frames of a pcap or pcapng capture held in memory, through the driver's
/// own capture reader (`netmux_wire::capture`), so tests see exactly the frames netmux's
/// commands see: the link type's upper bits are ignored as libpcap ignores them, and the frames
/// before a truncated or malformed record are kept (the capture is marked truncated).
pub fn read_capture_bytes(bytes: &[u8]) -> Result<Capture, String> {
    let mut cap = Capture::default();
    let frames = match capture::frames(bytes) {
        Ok(frames) => frames,
        Err(CaptureError::UnsupportedLinkType { .. }) => {
            cap.non_ethernet_frames += 1;
            return Ok(cap);
        }
        Err(e) => return Err(e.to_string()),
    };
    for frame in frames {
        match frame {
            Ok(f) => cap.frames.push(Frame {
                data: f.data,
                wire_len: f.wire_len,
            }),
            // A pcapng interface of another link type: the reader stops there.
            Err(CaptureError::UnsupportedLinkType { .. }) => {
                cap.non_ethernet_frames += 1;
                break;
            }
            Err(_) => {
                cap.truncated = true;
                break;
            }
        }
    }
    Ok(cap)
}

/// Every Ethernet frame of every capture under a corpus's `pcap/`.
#[derive(Clone, Debug, Default)]
pub struct CorpusFrames {
    /// The frames, with the capture each came from.
    pub frames: Vec<(PathBuf, Frame)>,
    /// How many captures had at least one Ethernet frame.
    pub captures: usize,
    /// Captures without any Ethernet frame (other link types), skipped.
    pub skipped_non_ethernet: Vec<PathBuf>,
    /// Files that are not captures at all, with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Reads every Ethernet frame of every capture under `dir/pcap`.
pub fn corpus_frames(dir: &Path) -> Result<CorpusFrames, CorpusError> {
    let mut out = CorpusFrames::default();
    for path in capture_paths(&dir.join("pcap"))? {
        match read_capture(&path) {
            Ok(cap) if cap.frames.is_empty() && cap.non_ethernet_frames > 0 => {
                out.skipped_non_ethernet.push(path)
            }
            Ok(cap) => {
                out.captures += 1;
                out.frames
                    .extend(cap.frames.into_iter().map(|f| (path.clone(), f)));
            }
            Err(e) => out.unreadable.push((path, e.to_string())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap_file(frames: &[(&[u8], u32)], linktype: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&4u16.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&64u32.to_le_bytes()); // snaplen smaller than wire lengths
        b.extend_from_slice(&linktype.to_le_bytes());
        for (data, wire) in frames {
            b.extend_from_slice(&[0; 8]);
            b.extend_from_slice(&(data.len() as u32).to_le_bytes());
            b.extend_from_slice(&wire.to_le_bytes());
            b.extend_from_slice(data);
        }
        b
    }

    #[test]
    fn reads_pcap_frames_with_their_wire_length_even_above_snaplen() {
        let bytes = pcap_file(&[(&[1, 2, 3], 1500), (&[4; 14], 14)], 1);
        let cap = read_capture_bytes(&bytes).unwrap();
        assert_eq!(cap.frames.len(), 2);
        assert_eq!(cap.frames[0].wire_len, 1500);
        assert_eq!(cap.frames[1].data, vec![4; 14]);
        assert!(!cap.truncated);
    }

    #[test]
    fn a_truncated_capture_keeps_the_frames_before_the_cut() {
        let mut bytes = pcap_file(&[(&[1, 2, 3], 3), (&[4; 14], 14)], 1);
        bytes.truncate(bytes.len() - 4);
        let cap = read_capture_bytes(&bytes).unwrap();
        assert_eq!(cap.frames.len(), 1);
        assert!(cap.truncated);
    }

    #[test]
    fn non_ethernet_captures_are_counted_not_returned() {
        let bytes = pcap_file(&[(&[1, 2, 3], 3)], 101);
        let cap = read_capture_bytes(&bytes).unwrap();
        assert!(cap.frames.is_empty());
        assert_eq!(cap.non_ethernet_frames, 1);
    }

    #[test]
    fn list_files_skip_comments_and_blank_lines() {
        let dir = crate::TempDir::new("netmux-testkit");
        let p = dir.join("list.txt");
        fs::write(&p, "# comment\n\ntcp\n  udp port 53  \n").unwrap();
        assert_eq!(read_expr_list(&p).unwrap(), vec!["tcp", "udp port 53"]);
    }

    #[test]
    fn garbage_is_not_a_capture() {
        assert!(read_capture_bytes(b"hello world").is_err());
        assert!(read_capture_bytes(b"he").is_err());
    }
}
