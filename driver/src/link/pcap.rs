//! `pcap:IN.pcap[,OUT.pcap]`: replays a capture as received traffic and records transmitted
//! frames, with no privileges.
//!
//! The capture is read whole when the link opens ([`netmux_wire::capture::read_file`], pcap or
//! pcapng, Ethernet only), so a bad file fails at open, not halfway through. Frames are
//! replayed as fast as the driver asks for them, in file order, without reproducing the
//! capture's timing; each frame's captured bytes are what the driver receives. Transmitted
//! frames are appended to the output as they are sent (unbuffered, so the file is complete
//! whenever the driver stops), stamped with the current time.

use std::fs::File;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{FrameBatch, Link, LinkError, LinkInfo, LinkStats};
use netmux_wire::capture::{self, Frame, PcapWriter, TimestampResolution};

/// A link that replays one capture and records into another.
#[derive(Debug)]
pub struct PcapLink {
    info: LinkInfo,
    frames: std::vec::IntoIter<Frame>,
    output: Option<PcapWriter<File>>,
    stats: LinkStats,
}

impl PcapLink {
    /// Reads `input` and creates (truncating) `output`, if given.
    pub fn open(input: &Path, output: Option<&Path>, info: LinkInfo) -> Result<Self, LinkError> {
        let frames = capture::read_file(input)?;
        let output = match output {
            Some(path) => {
                let file = File::create(path)
                    .map_err(|e| LinkError::io(format!("creating {}", path.display()), e))?;
                Some(PcapWriter::new(file, TimestampResolution::Nano)?)
            }
            None => None,
        };
        Ok(Self {
            info,
            frames: frames.into_iter(),
            output,
            stats: LinkStats::default(),
        })
    }

    /// Frames still to be replayed.
    pub fn remaining(&self) -> usize {
        self.frames.len()
    }
}

impl Link for PcapLink {
    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn recv(&mut self, batch: &mut FrameBatch, max: usize) -> Result<usize, LinkError> {
        let mut count = 0;
        while count < max {
            let Some(frame) = self.frames.next() else {
                break;
            };
            if self.stats.admit(batch, &frame.data) {
                count += 1;
            }
        }
        Ok(count)
    }

    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, LinkError> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        for frame in frames {
            match &mut self.output {
                Some(writer) => match writer.write(&Frame::whole(timestamp, frame.to_vec())) {
                    Ok(()) => {
                        self.stats.tx_frames += 1;
                        self.stats.tx_bytes += frame.len() as u64;
                    }
                    Err(e) => {
                        self.stats.tx_errors += 1;
                        return Err(e.into());
                    }
                },
                // Without an output the frames go nowhere, like a cable into the void.
                None => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += frame.len() as u64;
                }
            }
        }
        Ok(frames.len())
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn rx_exhausted(&self) -> bool {
        self.frames.len() == 0
    }

    fn stats(&self) -> LinkStats {
        self.stats
    }
}
