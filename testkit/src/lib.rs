//! Test-only support for netmux: the libpcap oracle, capture reading, frame builders, and the
//! helpers every test file would otherwise write again.
//!
//! * [`oracle`]: libpcap itself (`pcap_compile`, `bpf_filter`, `bpf_image`) behind a small safe
//!   wrapper, the reference every netmux filter verdict is compared with.
//! * [`corpus`]: the conformance corpus (`exprs.txt`, `reject.txt`, the captures under `pcap/`)
//!   and reading the Ethernet frames of any pcap or pcapng capture.
//! * [`exprs`]: random pcap-filter expressions for the differential tests.
//! * [`frames`]: builders for the Ethernet frames the tests make themselves, and [`relink`]ing
//!   them into other link layers.
//! * [`bins`]: the workspace's binaries for process tests, and [`bins::DriverProcess`], the
//!   driver binary on a virtual cable.
//! * [`cable`]: a test's end of a driver's virtual cable, and a [`cable::Hub`] joining several.
//! * [`etcd`]: a real etcd server on 127.0.0.1 for a test, killed by its pid when dropped.
//! * [`netns`]: network namespaces, veth pairs and offloads as Linux makes them, a process's
//!   CPU time, and processes a test waits on (root-only tests and `scripts/bench-link`).
//! * [`tcp_peer`]: a TCP/IP host (smoltcp) on such a cable end, to talk to the examples.
//! * [`seed`]: the one seed variable of every randomised test, `NETMUX_SEED`.
//! * [`TempDir`]: a scratch directory removed when dropped.
//!
//! This crate links libpcap and is meant for tests and benchmarks only.
#![deny(unsafe_code)]

pub mod bins;
pub mod cable;
pub mod corpus;
pub mod dhcp;
pub mod etcd;
pub mod exprs;
pub mod frames;
#[allow(unsafe_code)]
pub mod netns;
#[allow(unsafe_code)]
pub mod oracle;
pub mod tcp_peer;

use std::path::{Path, PathBuf};

pub use corpus::{Capture, CorpusError, Frame};
pub use frames::relink;
pub use oracle::{BpfInsn, BpfProgram, Offline, OfflineFrame, OracleError};

/// Byte `i` of a body `netmux example http` streams for `GET /bytes/N`, as the example
/// documents it: the top byte of `i × 0x9E3779B97F4A7C15`, so a lost, repeated or reordered
/// stretch shows.
pub fn http_pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// Where an FNV-1a 64 hash starts: the `hash` to give [`http_sink_hash`] for the first bytes.
pub const FNV1A64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64 of `bytes`, continuing from `hash`: what `netmux example http` reports for the
/// body of a `POST /sink` (the whole body's, from [`FNV1A64_OFFSET`]).
pub fn http_sink_hash(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Reads an HTTP response head from `stream`: the head, up to and with its blank line, and
/// the body bytes that came with it. Panics (test support) when reading fails or the stream
/// ends first.
pub fn read_http_head(stream: &mut impl std::io::Read) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("reading the response");
        assert!(n > 0, "the server closed before the head ended: {got:?}");
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = got.split_off(end + 4);
            return (String::from_utf8_lossy(&got).into_owned(), body);
        }
    }
}

/// The seed of a randomised test: `NETMUX_SEED` when set (to replay a failure), else a fresh
/// one. It is printed on stderr with the test's name, so a failing run shows how to replay it
/// (`NETMUX_SEED=N cargo test ... NAME`).
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("NETMUX_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        });
    eprintln!("{test}: NETMUX_SEED={seed}");
    seed
}

/// A scratch directory under the system's temporary directory, removed (with everything in
/// it) when dropped, so a test cleans up even when it fails.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A new, empty directory whose name starts with `prefix`.
    pub fn new(prefix: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir();
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("{prefix}-{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return TempDir { path },
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!(
                    "cannot create a scratch directory in {}: {e}",
                    base.display()
                ),
            }
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside it.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
