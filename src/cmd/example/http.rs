//! The HTTP example: a smoltcp TCP server that answers every request with [`PAGE`] and closes
//! the connection. [`SOCKETS`] sockets listen on the port at once, so that many clients are
//! served one after another and many at the same time; a socket that finished a connection
//! listens again. Idle connections cannot shut everyone else out: a connection that has sent
//! no byte of its request for [`IDLE_TIMEOUT`] is closed, and when every socket holds a
//! connection, the one idle longest is closed to make room for the next client.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use netmux_client::Transport;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

use super::{stopping, ExampleArgs, Station};

/// Sockets on the port: connections served at once (16 KiB of buffers each way per socket).
pub const SOCKETS: usize = 32;
/// A connection that sent no byte for this long is closed: a client that connects and says
/// nothing holds a socket no longer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head (request line and headers) read; longer ones get `400`.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Socket buffer bytes in each direction.
const SOCKET_BUFFER: usize = 16 * 1024;

/// The page every request gets.
pub const PAGE: &str = "<!doctype html>\n<html><head><title>netmux</title></head>\n\
<body><h1>Hello from netmux</h1>\n<p>Served by smoltcp running as a netd client on a netmux \
queue.</p></body></html>\n";

/// Sockets are aborted after this long without an answer from the peer, so a vanished client
/// does not hold a listener forever.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a socket is in serving one connection.
enum Phase {
    /// Listening, or connected and reading the request head.
    Reading(Vec<u8>),
    /// Sending the response: the bytes and how many are queued.
    Replying(Vec<u8>, usize),
    /// Response queued and close requested; waiting for the socket to finish.
    Closing,
}

/// One listening socket and the connection it may be serving.
struct Slot {
    handle: SocketHandle,
    phase: Phase,
    /// When the connection last sent a byte (or was accepted).
    active: std::time::Instant,
}

/// The response to a request head: the page, or `400` for a head that is too long or not a
/// request line.
pub fn response(head: &[u8]) -> (Vec<u8>, &'static str) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (status, body) = match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(v)) if v.starts_with("HTTP/") && head.ends_with(b"\r\n\r\n") => {
            ("200 OK", PAGE)
        }
        _ => ("400 Bad Request", "bad request\n"),
    };
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\nServer: netmux-example\r\n\r\n{body}",
        body.len()
    );
    (text.into_bytes(), status)
}

/// Serves until `stop` is set or the queue closes.
pub fn serve(args: &ExampleArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut station = Station::open(args, Transport::Tcp)?;
    let mut sockets = SocketSet::new(vec![]);
    let mut slots: Vec<Slot> = (0..SOCKETS)
        .map(|_| {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
                tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
            );
            socket.set_timeout(Some(CONNECTION_TIMEOUT.into()));
            Slot {
                handle: sockets.add(socket),
                phase: Phase::Closing,
                active: std::time::Instant::now(),
            }
        })
        .collect();
    let port = station.port;
    for slot in &mut slots {
        listen(&mut sockets, slot, port)?;
    }
    station.announce("tcp")?;
    let mut served: u64 = 0;
    while !stopping(stop) {
        station.poll(&mut sockets);
        for slot in &mut slots {
            served += turn(&mut sockets, slot, port)?;
        }
        make_room(&mut sockets, &mut slots);
        station.poll(&mut sockets);
        station.wait(&sockets, stop)?;
    }
    tracing::info!(served, "stopping");
    for slot in &slots {
        sockets.get_mut::<tcp::Socket>(slot.handle).close();
    }
    station.finish(&mut sockets);
    Ok(())
}

/// Whether a slot holds a connection that has not finished sending its request.
fn idle(sockets: &SocketSet<'_>, slot: &Slot) -> bool {
    let socket = sockets.get::<tcp::Socket>(slot.handle);
    matches!(slot.phase, Phase::Reading(_))
        && socket.is_open()
        && !matches!(socket.state(), tcp::State::Listen)
}

/// When no socket listens, closes the connection idle longest so the next client is not
/// refused (it listens again at its next turn).
fn make_room(sockets: &mut SocketSet<'_>, slots: &mut [Slot]) {
    let listening = slots.iter().any(|s| {
        let socket = sockets.get::<tcp::Socket>(s.handle);
        matches!(socket.state(), tcp::State::Listen) || !socket.is_open()
    });
    if listening {
        return;
    }
    let oldest = slots
        .iter()
        .filter(|s| idle(sockets, s))
        .min_by_key(|s| s.active)
        .map(|s| s.handle);
    if let Some(handle) = oldest {
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        tracing::info!(
            from = %socket.remote_endpoint().map_or_else(|| "?".to_string(), |e| e.to_string()),
            "every socket is busy: closing the connection idle longest"
        );
        socket.abort();
    }
}

fn listen(sockets: &mut SocketSet<'_>, slot: &mut Slot, port: u16) -> anyhow::Result<()> {
    slot.phase = Phase::Reading(Vec::new());
    slot.active = std::time::Instant::now();
    sockets
        .get_mut::<tcp::Socket>(slot.handle)
        .listen(port)
        .map_err(|e| anyhow::anyhow!("listening on tcp port {port}: {e}"))
}

/// Advances one slot; returns 1 when a response was completed.
fn turn(sockets: &mut SocketSet<'_>, slot: &mut Slot, port: u16) -> anyhow::Result<u64> {
    let socket = sockets.get_mut::<tcp::Socket>(slot.handle);
    if !socket.is_open() {
        listen(sockets, slot, port)?;
        return Ok(0);
    }
    if let Phase::Reading(head) = &mut slot.phase {
        if matches!(socket.state(), tcp::State::Listen) {
            slot.active = std::time::Instant::now();
            return Ok(0);
        }
        if socket.can_recv() {
            let room = (MAX_REQUEST_HEAD + 1).saturating_sub(head.len());
            let mut buf = vec![0u8; room];
            let n = socket.recv_slice(&mut buf).unwrap_or(0);
            head.extend_from_slice(&buf[..n]);
            if n > 0 {
                slot.active = std::time::Instant::now();
            }
        } else if slot.active.elapsed() >= IDLE_TIMEOUT {
            tracing::info!(
                from = %socket.remote_endpoint().map_or_else(|| "?".to_string(), |e| e.to_string()),
                "closing a connection idle for {} s",
                IDLE_TIMEOUT.as_secs()
            );
            socket.abort();
            return Ok(0);
        }
        let end = head
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4);
        if end.is_some() || head.len() > MAX_REQUEST_HEAD {
            let head = &head[..end.unwrap_or(head.len())];
            let (bytes, status) = response(head);
            let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            let from = socket
                .remote_endpoint()
                .map_or_else(|| "?".to_string(), |e| e.to_string());
            tracing::info!(%from, request = %String::from_utf8_lossy(line), status, "request");
            slot.phase = Phase::Replying(bytes, 0);
        } else if socket.state() == tcp::State::CloseWait && !socket.can_recv() {
            tracing::debug!("connection closed without a whole request");
            socket.close();
            slot.phase = Phase::Closing;
            return Ok(0);
        }
    }
    if let Phase::Replying(bytes, sent) = &mut slot.phase {
        if *sent < bytes.len() && socket.can_send() {
            *sent += socket.send_slice(&bytes[*sent..]).unwrap_or(0);
        }
        if *sent == bytes.len() {
            socket.close();
            slot.phase = Phase::Closing;
            return Ok(1);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_gets_the_page_with_its_length() {
        let (bytes, status) = response(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(status, "200 OK");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", PAGE.len())));
        assert!(text.ends_with(PAGE));
    }

    #[test]
    fn a_head_that_is_not_a_request_gets_400() {
        assert_eq!(response(b"hello\r\n\r\n").1, "400 Bad Request");
        assert_eq!(response(&[b'a'; MAX_REQUEST_HEAD + 1]).1, "400 Bad Request");
    }
}
