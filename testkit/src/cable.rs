//! The far end of a driver's `virtual:` cable, held by a test: a Unix datagram socket carrying
//! one Ethernet frame per datagram, as the driver's virtual link does. The test puts frames on
//! the link with [`CableEnd::send`] and reads what the link transmitted with
//! [`CableEnd::recv_until`] and [`CableEnd::recv_for`]. Every read has a deadline.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Room for the largest datagram a virtual link sends (a jumbo frame), and one byte more so a
/// longer one shows up as too long instead of being cut silently.
const RECV_BUFFER_LEN: usize = 65_536;

/// A test's end of a virtual cable. Its socket file is removed when dropped.
#[derive(Debug)]
pub struct CableEnd {
    socket: UnixDatagram,
    path: PathBuf,
    link: PathBuf,
}

impl CableEnd {
    /// Binds at `path`; frames go to the link bound at `link`. Panics (test support) when the
    /// socket cannot be bound.
    pub fn bind(path: &Path, link: &Path) -> CableEnd {
        let socket = UnixDatagram::bind(path)
            .unwrap_or_else(|e| panic!("binding the cable end {}: {e}", path.display()));
        CableEnd {
            socket,
            path: path.to_path_buf(),
            link: link.to_path_buf(),
        }
    }

    /// Where this end is bound (a link with no fixed peer sends here once it has heard from
    /// it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts `frame` on the cable. Panics when the link's socket is not there.
    pub fn send(&self, frame: &[u8]) {
        self.socket
            .send_to(frame, &self.link)
            .unwrap_or_else(|e| panic!("sending to the link at {}: {e}", self.link.display()));
    }

    /// Puts `frame` on the cable if the link's socket has room now; a frame it has no room
    /// for is lost, as on a busy link. Returns whether it went.
    pub fn try_send(&self, frame: &[u8]) -> bool {
        self.socket.send_to(frame, &self.link).is_ok()
    }

    /// Reads what the link transmits until `want` picks a frame or `timeout` passes; the
    /// frames `want` passes over are dropped.
    pub fn recv_until<T>(
        &self,
        timeout: Duration,
        mut want: impl FnMut(&[u8]) -> Option<T>,
    ) -> Option<T> {
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; RECV_BUFFER_LEN];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket
                .set_read_timeout(Some(left))
                .expect("setting the read timeout");
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    if let Some(found) = want(&buf[..n]) {
                        return Some(found);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("reading the cable end {}: {e}", self.path.display()),
            }
        }
    }

    /// A frame the link transmitted, if one is waiting; never waits.
    pub fn try_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; RECV_BUFFER_LEN];
        match self.socket.recv_from(&mut buf) {
            Ok((n, _)) => Some(buf[..n].to_vec()),
            Err(_) => None,
        }
    }

    /// Makes [`CableEnd::try_recv`] never wait (the other reads set their own deadlines).
    pub fn set_nonblocking(&self) {
        self.socket
            .set_nonblocking(true)
            .expect("making the cable end non-blocking");
    }

    /// The first frame the link transmits within `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.recv_until(timeout, |f| Some(f.to_vec()))
    }

    /// Every frame the link transmits within `window`.
    pub fn recv_for(&self, window: Duration) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        self.recv_until(window, |f| {
            frames.push(f.to_vec());
            None::<()>
        });
        frames
    }
}

impl Drop for CableEnd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A hub joining several drivers' virtual links, as an Ethernet hub joins hosts: every frame
/// a link sends to its port goes out of every other port. Port `i` is a socket at
/// `ports[i]` (each link's fixed peer), forwarding to `links[i]` of the others. Its threads
/// stop and its sockets are removed when it is dropped.
#[derive(Debug)]
pub struct Hub {
    ports: Vec<PathBuf>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hub {
    /// A hub with a port per link, port `i` bound at `ports[i]`, forwarding to every other
    /// link (a link not bound yet, or gone, misses the frame, as an unplugged host would).
    /// Panics (test support) when a port cannot be bound.
    pub fn start(ports: &[PathBuf], links: &[PathBuf]) -> Hub {
        use std::sync::atomic::{AtomicBool, Ordering};
        assert_eq!(ports.len(), links.len(), "a port per link");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let socket = UnixDatagram::bind(port)
                .unwrap_or_else(|e| panic!("binding hub port {}: {e}", port.display()));
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("setting the read timeout");
            let others: Vec<PathBuf> = links
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, l)| l.clone())
                .collect();
            let stop = std::sync::Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; RECV_BUFFER_LEN];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        for link in &others {
                            let _ = socket.send_to(&buf[..n], link);
                        }
                    }
                }
            }));
        }
        Hub {
            ports: ports.to_vec(),
            stop,
            threads,
        }
    }

    /// Where port `i` is bound.
    pub fn port(&self, i: usize) -> &Path {
        &self.ports[i]
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for p in &self.ports {
            let _ = std::fs::remove_file(p);
        }
    }
}
