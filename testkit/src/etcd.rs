//! A real etcd server for a test: Debian's `etcd-server` (`/usr/bin/etcd`, installed by
//! `scripts/test`), started on 127.0.0.1 with free ports and a scratch data directory, and
//! killed by its pid when the [`Etcd`] is dropped, so a failing test leaves no server behind.
//!
//! [`Etcd::stop`] and [`Etcd::start_again`] kill it and start it again on the same ports and
//! data, for tests of what clients do while it is away.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;

/// Where Debian's `etcd-server` puts the server; `NETMUX_ETCD` overrides it.
pub const ETCD: &str = "/usr/bin/etcd";
/// How long the server may take to answer its health check.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running etcd server. See the module documentation.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    data: PathBuf,
    log: PathBuf,
    /// Dropped last: the data directory and the server's log.
    dir: TempDir,
}

/// A TCP port on 127.0.0.1 nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The etcd binary: `$NETMUX_ETCD`, else [`ETCD`].
fn binary() -> PathBuf {
    std::env::var_os("NETMUX_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(ETCD))
}

impl Etcd {
    /// Starts a one-member cluster on free ports of 127.0.0.1 and waits until it is healthy.
    /// Panics (test support) when etcd is missing (`apt-get install etcd-server`) or does not
    /// become healthy, with the end of its log.
    pub fn start() -> Etcd {
        let dir = TempDir::new("netmux-etcd");
        let mut etcd = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            data: dir.join("data"),
            log: dir.join("etcd.log"),
            dir,
        };
        etcd.start_again();
        etcd
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The scratch directory (data and log).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL, by its pid) and waits for it; its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same ports and data, and waits until it is healthy.
    pub fn start_again(&mut self) {
        self.stop();
        let bin = binary();
        assert!(
            bin.exists(),
            "{} is missing: install etcd (apt-get install etcd-server; scripts/test does)",
            bin.display()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the etcd log file");
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&bin)
            .arg("--name")
            .arg("netmux-test")
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("netmux-test={peer}"))
            .arg("--log-level")
            .arg("warn")
            .arg("--logger")
            .arg("zap")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the etcd log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.healthy() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!("etcd exited ({status}): {}", self.log_tail());
            }
            if Instant::now() > deadline {
                panic!("etcd did not become healthy: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `/health` says so.
    pub fn healthy(&self) -> bool {
        self.http("GET", "/health", "")
            .is_some_and(|body| body.contains("\"health\":\"true\""))
    }

    /// Compacts the key space up to the current revision (through etcd's JSON gateway), so
    /// that a watch behind it is canceled; returns the revision.
    pub fn compact(&self) -> i64 {
        let status = self
            .http("POST", "/v3/kv/range", "{\"key\":\"AA==\"}")
            .expect("etcd's revision");
        let revision: i64 = status
            .split("\"revision\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in {status}"));
        self.http(
            "POST",
            "/v3/kv/compaction",
            &format!("{{\"revision\":\"{revision}\",\"physical\":true}}"),
        )
        .expect("compacting");
        revision
    }

    /// One HTTP/1.0 request to the client port; the response body, if any came.
    fn http(&self, method: &str, path: &str, body: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.client_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
    }

    /// The last lines of the server's log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
