//! Every request the client makes of netd has a deadline: against a socket that accepts the
//! connection and never answers, connecting (the hello is a request) fails with
//! `ClientError::NoAnswer` once the deadline passes, for the blocking and the tokio client.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use netmux_client::{ClientError, ConnectOptions};

const DEADLINE: Duration = Duration::from_millis(300);
/// What the test allows beyond the deadline (two shared cores in CI).
const SLACK: Duration = Duration::from_secs(3);

/// A socket that takes every connection and never reads or answers; the connections are kept
/// open until the test ends.
struct Mute {
    path: PathBuf,
    dir: PathBuf,
}

impl Mute {
    fn start(tag: &str) -> Mute {
        let dir = std::env::temp_dir().join(format!("netmux-client-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("netd.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let mut held: Vec<UnixStream> = Vec::new();
            for s in listener.incoming().flatten() {
                held.push(s);
            }
        });
        Mute { path, dir }
    }
}

impl Drop for Mute {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn options() -> ConnectOptions {
    ConnectOptions {
        timeout: DEADLINE,
        ..ConnectOptions::default()
    }
}

#[test]
fn the_blocking_client_gives_up_on_a_netd_that_never_answers() {
    let mute = Mute::start("blocking");
    let start = Instant::now();
    let e =
        netmux_client::blocking::Client::connect_socket_with(&mute.path, &options()).unwrap_err();
    let waited = start.elapsed();
    assert!(
        matches!(e, ClientError::NoAnswer(d) if d == DEADLINE),
        "{e}"
    );
    assert!(e.to_string().contains("did not answer within 0.3 s"), "{e}");
    assert!(
        waited >= DEADLINE && waited < DEADLINE + SLACK,
        "{waited:?}"
    );
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn the_tokio_client_gives_up_on_a_netd_that_never_answers() {
    let mute = Mute::start("tokio");
    let start = Instant::now();
    let e = netmux_client::nonblocking::AsyncClient::connect_socket_with(&mute.path, &options())
        .await
        .unwrap_err();
    let waited = start.elapsed();
    assert!(
        matches!(e, ClientError::NoAnswer(d) if d == DEADLINE),
        "{e}"
    );
    assert!(
        waited >= DEADLINE && waited < DEADLINE + SLACK,
        "{waited:?}"
    );
}
