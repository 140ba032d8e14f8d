//! The HTTP example: a smoltcp TCP server, one request per connection, which it then closes.
//! [`SOCKETS`] sockets listen on the port at once, so that many clients are served one after
//! another and many at the same time; a socket that finished a connection listens again. Idle
//! connections cannot shut everyone else out: a connection that has sent no byte of its
//! request for [`IDLE_TIMEOUT`] is closed, and when every socket holds a connection, the one
//! idle longest is closed to make room for the next client.
//!
//! | request | response |
//! |---|---|
//! | `GET /bytes/N` | `200`, a body of N bytes: byte `i` is [`pattern_byte`]`(i)`, the top byte of `i × 0x9E3779B97F4A7C15` (so a lost, repeated or reordered stretch shows), generated as it is sent |
//! | `POST /sink` with `Content-Length: N` | reads the N body bytes as they come, then `200` with the body `received N bytes, fnv1a64 HHHHHHHHHHHHHHHH` (the 64-bit FNV-1a hash of the body, 16 hex digits) |
//! | any other request | `200` with [`PAGE`] |
//! | not a request line, a head over [`MAX_REQUEST_HEAD`], a bad N, a `POST /sink` without a length | `400` (`411` for the missing length) |
//!
//! Bodies of any size stream through the socket buffers ([`SOCKET_BUFFER`] each way), so a
//! 1 GiB transfer needs no more memory than a page does.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use netmux_client::Transport;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

use super::{stopping, ExampleArgs, Station};

/// Sockets on the port: connections served at once. Their buffers ([`SOCKET_BUFFER`] each
/// way) are allocated once at start. Few, on purpose: smoltcp's interface walks every socket
/// on each poll, and with 32 of these a bulk send ran at a fifth of the rate (`scripts/bench-link`,
/// client -> kernel: 145 MB/s with 32, 712 MB/s with 4); idle connections cannot shut clients
/// out, since the one idle longest is closed to make room.
pub const SOCKETS: usize = 4;
/// A connection that sent no byte of its request for this long is closed: a client that
/// connects and says nothing holds a socket no longer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head (request line and headers) read; longer ones get `400`.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Socket buffer bytes in each direction: the TCP window a bulk transfer can use (smoltcp
/// scales its window past 64 KiB), a few milliseconds of a fast sender.
pub const SOCKET_BUFFER: usize = 512 * 1024;

/// The page every other request gets.
pub const PAGE: &str = "<!doctype html>\n<html><head><title>netmux</title></head>\n\
<body><h1>Hello from netmux</h1>\n<p>Served by smoltcp running as a netd client on a netmux \
queue.</p></body></html>\n";

/// Sockets are aborted after this long without an answer from the peer, so a vanished client
/// does not hold a listener forever.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Byte `i` of a `GET /bytes/N` body: the top byte of `i × 0x9E3779B97F4A7C15` (Knuth's
/// multiplicative hash), which does not repeat with any short period.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// The 64-bit FNV-1a hash, carried across calls (start from [`FNV_OFFSET`]).
pub fn fnv1a64(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// FNV-1a's starting value.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// What a request head asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET /bytes/N`.
    Bytes(u64),
    /// `POST /sink` with this `Content-Length`.
    Sink(u64),
    /// Anything else that is a request: the page.
    Page,
    /// Not something to answer but with this status line.
    Refused(&'static str),
}

/// Reads a request head (request line and headers, up to and including the empty line).
pub fn parse(head: &[u8]) -> Request {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Request::Refused("400 Bad Request");
    };
    if !version.starts_with("HTTP/") || !head.ends_with(b"\r\n\r\n") {
        return Request::Refused("400 Bad Request");
    }
    let content_length = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<u64>().ok())
    });
    match (method, path) {
        ("GET", p) if p.starts_with("/bytes/") => match p["/bytes/".len()..].parse() {
            Ok(n) => Request::Bytes(n),
            Err(_) => Request::Refused("400 Bad Request"),
        },
        ("POST", "/sink") => match content_length {
            Some(Some(n)) => Request::Sink(n),
            Some(None) => Request::Refused("400 Bad Request"),
            None => Request::Refused("411 Length Required"),
        },
        _ => Request::Page,
    }
}

/// A response head and a small body, as bytes.
fn small_response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\nServer: netmux-example\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The response to a request head that needs no body read: the page, a refusal, or the head
/// of a `/bytes` response. Returns the bytes and the status line.
pub fn response(head: &[u8]) -> (Vec<u8>, &'static str) {
    match parse(head) {
        Request::Refused(status) => (
            small_response(status, "text/plain", "bad request\n"),
            status,
        ),
        Request::Bytes(n) => (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {n}\r\nConnection: close\r\nServer: netmux-example\r\n\r\n"
            )
            .into_bytes(),
            "200 OK",
        ),
        Request::Sink(_) | Request::Page => (
            small_response("200 OK", "text/html; charset=utf-8", PAGE),
            "200 OK",
        ),
    }
}

/// Where a socket is in serving one connection.
enum Phase {
    /// Listening, or connected and reading the request head.
    Reading(Vec<u8>),
    /// Reading a `POST /sink` body: bytes still to come, bytes read, their hash so far.
    Sinking { left: u64, read: u64, hash: u64 },
    /// Sending the response: the head (and small body) with how much of it is queued, then
    /// `pattern` bytes of [`pattern_byte`] from `next`.
    Replying {
        head: Vec<u8>,
        queued: usize,
        next: u64,
        end: u64,
    },
    /// Response queued and close requested; waiting for the socket to finish.
    Closing,
}

/// One listening socket and the connection it may be serving.
struct Slot {
    handle: SocketHandle,
    phase: Phase,
    /// When the connection last sent a byte of its request (or was accepted).
    active: std::time::Instant,
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
            // Only up to the end of the head: what follows is a body, read as one.
            let before = head.len();
            let _ = socket.recv(|buf| {
                let mut taken = 0;
                for &b in buf.iter() {
                    if head.len() > MAX_REQUEST_HEAD || head.ends_with(b"\r\n\r\n") {
                        break;
                    }
                    head.push(b);
                    taken += 1;
                }
                (taken, ())
            });
            if head.len() > before {
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
        if head.ends_with(b"\r\n\r\n") || head.len() > MAX_REQUEST_HEAD {
            let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            let from = socket
                .remote_endpoint()
                .map_or_else(|| "?".to_string(), |e| e.to_string());
            let request = parse(head);
            tracing::info!(%from, request = %String::from_utf8_lossy(line), ?request, "request");
            slot.phase = match request {
                Request::Sink(n) => Phase::Sinking {
                    left: n,
                    read: 0,
                    hash: FNV_OFFSET,
                },
                Request::Bytes(n) => Phase::Replying {
                    head: response(head).0,
                    queued: 0,
                    next: 0,
                    end: n,
                },
                _ => Phase::Replying {
                    head: response(head).0,
                    queued: 0,
                    next: 0,
                    end: 0,
                },
            };
        } else if socket.state() == tcp::State::CloseWait && !socket.can_recv() {
            tracing::debug!("connection closed without a whole request");
            socket.close();
            slot.phase = Phase::Closing;
            return Ok(0);
        }
    }
    if let Phase::Sinking { left, read, hash } = &mut slot.phase {
        while *left > 0 && socket.can_recv() {
            let _ = socket.recv(|buf| {
                let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *hash = fnv1a64(*hash, &buf[..n]);
                *left -= n as u64;
                *read += n as u64;
                (n, ())
            });
        }
        if *left == 0 {
            let body = format!("received {read} bytes, fnv1a64 {hash:016x}\n");
            tracing::info!(bytes = *read, "sink: body read");
            slot.phase = Phase::Replying {
                head: small_response("200 OK", "text/plain", &body),
                queued: 0,
                next: 0,
                end: 0,
            };
        } else if !socket.may_recv() {
            tracing::info!(left = *left, "sink: the peer stopped sending");
            socket.close();
            slot.phase = Phase::Closing;
            return Ok(0);
        }
    }
    if let Phase::Replying {
        head,
        queued,
        next,
        end,
    } = &mut slot.phase
    {
        while *queued < head.len() && socket.can_send() {
            *queued += socket.send_slice(&head[*queued..]).unwrap_or(0);
        }
        while *queued == head.len() && *next < *end && socket.can_send() {
            let _ = socket.send(|buf| {
                let n = buf
                    .len()
                    .min(usize::try_from(*end - *next).unwrap_or(usize::MAX));
                for (k, b) in buf[..n].iter_mut().enumerate() {
                    *b = pattern_byte(*next + k as u64);
                }
                *next += n as u64;
                (n, ())
            });
        }
        if *queued == head.len() && *next == *end {
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
        assert_eq!(
            response(b"GET /bytes/lots HTTP/1.1\r\n\r\n").1,
            "400 Bad Request"
        );
    }

    #[test]
    fn bytes_and_sink_requests_are_recognised_with_their_lengths() {
        assert_eq!(
            parse(b"GET /bytes/67108864 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Bytes(64 << 20)
        );
        assert_eq!(
            parse(b"POST /sink HTTP/1.1\r\ncontent-length: 12\r\n\r\n"),
            Request::Sink(12)
        );
        assert_eq!(
            parse(b"POST /sink HTTP/1.1\r\n\r\n"),
            Request::Refused("411 Length Required")
        );
        let (head, _) = response(b"GET /bytes/5 HTTP/1.1\r\n\r\n");
        assert!(String::from_utf8(head)
            .unwrap()
            .contains("Content-Length: 5\r\n"));
    }

    #[test]
    fn the_pattern_does_not_repeat_with_a_short_period() {
        let bytes: Vec<u8> = (0..4096).map(pattern_byte).collect();
        for period in 1..1024 {
            assert!(
                bytes[period..].iter().zip(&bytes).any(|(a, b)| a != b),
                "period {period}"
            );
        }
    }

    #[test]
    fn fnv1a64_matches_its_reference_values() {
        assert_eq!(fnv1a64(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            fnv1a64(fnv1a64(FNV_OFFSET, b"foo"), b"bar"),
            fnv1a64(FNV_OFFSET, b"foobar")
        );
    }
}
