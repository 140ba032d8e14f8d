//! `virtual:PATH[,PEER]`: a virtual cable made of Unix datagram sockets, one Ethernet frame per
//! datagram, with no privileges.
//!
//! The link binds a datagram socket at `PATH`. With `PEER`, it sends every frame to the socket
//! bound there (two drivers cabled together: `virtual:/run/a,/run/b` and
//! `virtual:/run/b,/run/a`). Without it, it sends to whichever bound socket last sent to it (a
//! test host that binds its own socket and talks to `PATH`); until someone has, transmitted
//! frames are counted as errors and dropped, as on an unplugged cable.
//!
//! A stale socket file at `PATH` (left by a process that died) is replaced; a live one (a
//! connect succeeds) is refused. The socket file is removed when the link is dropped.
//! Received datagrams shorter than an Ethernet header or longer than [`MAX_FRAME_LEN`] are
//! dropped and counted.

use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use super::{FrameBatch, Link, LinkError, LinkInfo, LinkStats};
use netmux_ring::MAX_FRAME_LEN;

/// One end of a virtual cable.
#[derive(Debug)]
pub struct VirtualLink {
    info: LinkInfo,
    socket: UnixDatagram,
    path: PathBuf,
    fixed_peer: Option<PathBuf>,
    learned_peer: Option<PathBuf>,
    /// Receive buffer one byte longer than the largest frame, so an oversized datagram shows
    /// up as a too-long read instead of being silently cut.
    buffer: Vec<u8>,
    stats: LinkStats,
}

impl VirtualLink {
    /// Binds at `path`, sending to `peer` if given (else to the last sender).
    pub fn bind(path: &Path, peer: Option<&Path>, info: LinkInfo) -> Result<Self, LinkError> {
        remove_stale_socket(path)?;
        let socket = UnixDatagram::bind(path)
            .map_err(|e| LinkError::io(format!("binding {}", path.display()), e))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| LinkError::io("making the socket non-blocking", e))?;
        Ok(Self {
            info,
            socket,
            path: path.to_path_buf(),
            fixed_peer: peer.map(Path::to_path_buf),
            learned_peer: None,
            buffer: vec![0; MAX_FRAME_LEN + 1],
            stats: LinkStats::default(),
        })
    }

    /// Where this end is bound.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where frames go: the fixed peer, or the last sender that has an address.
    pub fn peer(&self) -> Option<&Path> {
        self.fixed_peer.as_deref().or(self.learned_peer.as_deref())
    }
}

/// Removes a socket file nobody listens on any more; refuses a live socket or any other file.
fn remove_stale_socket(path: &Path) -> Result<(), LinkError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LinkError::io(format!("inspecting {}", path.display()), e)),
    };
    if !metadata.file_type().is_socket() {
        return Err(LinkError::io(
            format!("binding {}", path.display()),
            std::io::Error::new(
                ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ),
        ));
    }
    let probe = UnixDatagram::unbound().map_err(|e| LinkError::io("creating a probe socket", e))?;
    match probe.connect(path) {
        Ok(()) => Err(LinkError::AddressInUse(path.display().to_string())),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|e| LinkError::io(format!("removing stale {}", path.display()), e)),
        Err(e) => Err(LinkError::io(format!("probing {}", path.display()), e)),
    }
}

impl Link for VirtualLink {
    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn recv(&mut self, batch: &mut FrameBatch, max: usize) -> Result<usize, LinkError> {
        let mut count = 0;
        while count < max {
            let (len, from) = match self.socket.recv_from(&mut self.buffer) {
                Ok(received) => received,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(LinkError::io("receiving from the virtual cable", e)),
            };
            if let Some(sender) = from.as_pathname() {
                if self.learned_peer.as_deref() != Some(sender) {
                    self.learned_peer = Some(sender.to_path_buf());
                }
            }
            if self.stats.admit(batch, &self.buffer[..len]) {
                count += 1;
            }
        }
        Ok(count)
    }

    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, LinkError> {
        let Some(peer) = self.peer().map(Path::to_path_buf) else {
            self.stats.tx_errors += frames.len() as u64;
            return Ok(frames.len());
        };
        for (i, frame) in frames.iter().enumerate() {
            match self.socket.send_to(frame, &peer) {
                Ok(_) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += frame.len() as u64;
                }
                // The peer's receive queue is full: the link is busy, offer the rest later.
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(i),
                // Peer gone, not there yet, or the frame is too big for a datagram: this frame
                // is lost, like on a real cable.
                Err(_) => self.stats.tx_errors += 1,
            }
        }
        Ok(frames.len())
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.socket.as_fd())
    }

    fn stats(&self) -> LinkStats {
        self.stats
    }
}

impl Drop for VirtualLink {
    fn drop(&mut self) {
        // Best effort: if the file is already gone or replaced, there is nothing to undo.
        let _ = std::fs::remove_file(&self.path);
    }
}
