//! `ListSessions` (what `netmux ls` shows): the listing policy (uid 0 sees every session, any
//! other uid only its own uid's), checked on netd's socket-free service with chosen
//! credentials, and the listing's content (ports, filters, queue, counters) through the client
//! library; both on the real driver.

mod common;

use std::time::Duration;

use common::*;
use netmux_client::blocking::Client;
use netmux_client::nonblocking::AsyncClient;
use netmux_client::{FilterMode, Transport};
use netmux_netd::config::{Config, HostAddrs};
use netmux_netd::core::Credentials;
use netmux_netd::driver_link::{ChannelDriver, DriverLink};
use netmux_netd::service::Netd;
use netmux_netd::testing::CabledDriver;
use netmux_proto::client::{ClientReply, ClientRequest, SessionInfo};
use netmux_proto::{ErrorCode, PROTOCOL_VERSION};

/// netd's request handling without its shell: requests carried out at the driver, in order.
struct Service {
    netd: Netd,
    link: ChannelDriver,
    /// Dropped last.
    driver: CabledDriver,
}

impl Service {
    fn connect(
        &mut self,
        creds: Credentials,
        now: Duration,
    ) -> Result<netmux_netd::core::SessionId, netmux_proto::ErrorReply> {
        self.netd.connect(creds, now)
    }

    fn handle(
        &mut self,
        id: netmux_netd::core::SessionId,
        request: ClientRequest,
    ) -> netmux_netd::service::Response {
        let step = self.netd.handle(id, request);
        netmux_netd::service::drive_blocking(&mut self.netd, &mut self.link, step)
            .expect("a request gets a reply")
    }

    fn disconnect(&mut self, id: netmux_netd::core::SessionId) {
        let step = self.netd.disconnect(id);
        let _ = netmux_netd::service::drive_blocking(&mut self.netd, &mut self.link, step);
    }
}

fn service() -> Service {
    let driver = CabledDriver::start(MAC_A);
    let mut link = driver.connect();
    let mut config = Config::new(driver.runtime_dir());
    config.addrs = HostAddrs {
        ipv4: Some((IP_A, 24)),
        gateway: None,
        ipv6_link_local: false,
    };
    config.host_stack = false;
    let (mut netd, commands) = Netd::new(&config, link.link_info()).unwrap();
    netd.started(netmux_netd::driver_link::run(&mut link, commands, true))
        .unwrap();
    Service { netd, link, driver }
}

fn session(netd: &mut Service, pid: u32, uid: u32) -> netmux_netd::core::SessionId {
    let id = netd
        .connect(Credentials { pid, uid, gid: uid }, Duration::ZERO)
        .unwrap();
    let hello = netd.handle(
        id,
        ClientRequest::Hello {
            version: PROTOCOL_VERSION,
            instance: None,
        },
    );
    assert!(matches!(hello.reply, ClientReply::Hello { .. }));
    id
}

fn list(netd: &mut Service, id: netmux_netd::core::SessionId) -> Vec<SessionInfo> {
    match netd.handle(id, ClientRequest::ListSessions).reply {
        ClientReply::Sessions(list) => {
            assert_eq!(list.omitted, 0);
            list.sessions
        }
        other => panic!("not a listing: {other:?}"),
    }
}

fn pids(list: &[SessionInfo]) -> Vec<u32> {
    list.iter().map(|s| s.pid).collect()
}

#[test]
fn root_sees_every_session_and_other_uids_only_their_own() {
    let mut netd = service();
    let alice = session(&mut netd, 100, 1000);
    let alice2 = session(&mut netd, 101, 1000);
    let bob = session(&mut netd, 200, 1001);
    let root = session(&mut netd, 1, 0);

    assert_eq!(pids(&list(&mut netd, root)), [100, 101, 200, 1]);
    assert_eq!(pids(&list(&mut netd, alice)), [100, 101]);
    assert_eq!(pids(&list(&mut netd, alice2)), [100, 101]);
    assert_eq!(pids(&list(&mut netd, bob)), [200]);

    let seen = list(&mut netd, alice2);
    assert_eq!(
        seen.iter().map(|s| s.caller).collect::<Vec<_>>(),
        [false, true],
        "the asking session is marked"
    );
}

#[test]
fn a_listing_too_big_for_one_reply_is_cut_short_and_counts_the_rest() {
    let mut netd = service();
    let limit = netmux_netd::core::Limits::default().sessions_per_uid as u32;
    // Sessions of many uids, far more than one reply holds (a few hundred bytes each).
    let total = 4000u32;
    for i in 0..total {
        session(&mut netd, 10_000 + i, 1000 + i / limit);
    }
    let root = session(&mut netd, 1, 0);
    let ClientReply::Sessions(list) = netd.handle(root, ClientRequest::ListSessions).reply else {
        panic!("not a listing");
    };
    assert!(list.omitted > 0, "4,000 sessions do not fit");
    assert_eq!(
        list.sessions.len() as u64 + list.omitted,
        u64::from(total) + 1
    );
    let body = netmux_proto::frame::encode(&ClientReply::Sessions(list.clone()), 0).unwrap();
    assert!(
        body.len() <= netmux_proto::frame::MAX_BODY,
        "{} bytes",
        body.len()
    );
    assert_eq!(
        list.sessions.first().map(|s| s.pid),
        Some(10_000),
        "the first ones, in session order"
    );
}

#[test]
fn listing_before_hello_is_refused_as_a_protocol_error() {
    let mut netd = service();
    let id = netd
        .connect(
            Credentials {
                pid: 5,
                uid: 0,
                gid: 0,
            },
            Duration::ZERO,
        )
        .unwrap();
    match netd.handle(id, ClientRequest::ListSessions).reply {
        ClientReply::Error(e) => assert_eq!(e.code, ErrorCode::Protocol),
        other => panic!("listed before hello: {other:?}"),
    }
}

#[test]
fn an_ended_session_leaves_the_listing() {
    let mut netd = service();
    let root = session(&mut netd, 1, 0);
    let gone = session(&mut netd, 2, 0);
    netd.handle(
        gone,
        ClientRequest::BindPort {
            transport: Transport::Udp,
            port: 7000,
        },
    );
    assert_eq!(pids(&list(&mut netd, root)), [1, 2]);
    netd.disconnect(gone);
    assert_eq!(pids(&list(&mut netd, root)), [1]);
}

#[test]
fn a_listing_when_the_driver_is_gone_says_so() {
    let mut netd = service();
    let root = session(&mut netd, 1, 0);
    netd.handle(
        root,
        ClientRequest::BindPort {
            transport: Transport::Udp,
            port: 7001,
        },
    );
    assert!(list(&mut netd, root)[0].counters.is_some());
    netd.driver.stop();
    for _ in 0..2 {
        // The request that finds the driver gone, and every one after it.
        match netd.handle(root, ClientRequest::ListSessions).reply {
            ClientReply::Error(e) => {
                assert_eq!(e.code, ErrorCode::Driver);
                assert!(e.message.contains("netd's driver is gone"), "{e:?}");
            }
            other => panic!("a listing without a driver: {other:?}"),
        }
    }
}

#[test]
fn a_listing_shows_ports_filters_queue_and_counters() {
    let host = host();
    let netd = &host.netd;
    let mut a = Client::connect_socket(netd.socket_path()).unwrap();
    let mut quiet = Client::connect_socket(netd.socket_path()).unwrap();
    a.bind_port(Transport::Udp, 5353).unwrap();
    a.bind_port(Transport::Tcp, 8080).unwrap();
    let tap = a.open_filter("arp", FilterMode::Tap).ok();
    let mut queue = a.open_queue().unwrap();

    // One frame for a's UDP port, through the driver into a's ring.
    let frame = udp_frame(5353, b"hello");
    host.wire().send(&frame);
    let mut got = Vec::new();
    assert!(eventually(Duration::from_secs(5), || {
        let _ = queue.recv_owned(8, &mut got);
        !got.is_empty()
    }));
    assert_eq!(got, std::slice::from_ref(&frame));

    let listing = quiet.list_sessions().unwrap().sessions;
    let me = std::process::id();
    let mine: Vec<&SessionInfo> = listing.iter().filter(|s| s.pid == me).collect();
    assert_eq!(mine.len(), 2, "both sessions of this process: {listing:?}");
    let a_info = mine.iter().find(|s| !s.ports.is_empty()).unwrap();
    assert_eq!(
        a_info.ports,
        [(Transport::Tcp, 8080), (Transport::Udp, 5353)]
    );
    assert!(a_info.active);
    assert!(!a_info.caller);
    if let Some(tap) = tap {
        assert_eq!(a_info.filters, [(tap, FilterMode::Tap)]);
    }
    let q = a_info.queue.as_ref().expect("a has a queue");
    assert!(q.attached, "a took its queue's descriptors");
    assert!(q.ring_bytes > 0 && q.rings.rx_slots > 0);
    let c = a_info.counters.as_ref().expect("the driver answers");
    assert_eq!(c.rx_frames, 1);
    assert_eq!(c.rx_bytes, frame.len() as u64);

    let quiet_info = mine.iter().find(|s| s.caller).unwrap();
    assert!(quiet_info.ports.is_empty() && quiet_info.queue.is_none());
    assert_eq!(quiet_info.counters, None);
}

#[test]
fn the_tokio_client_lists_sessions_too() {
    let host = host();
    let netd = &host.netd;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = AsyncClient::connect_socket(netd.socket_path())
            .await
            .unwrap();
        c.bind_port(Transport::Udp, 6000).await.unwrap();
        let listing = c.list_sessions().await.unwrap().sessions;
        let me = listing.iter().find(|s| s.caller).expect("its own session");
        assert_eq!(me.ports, [(Transport::Udp, 6000)]);
        assert_eq!(me.pid, std::process::id());
    });
}

/// An Ethernet/IPv4/UDP frame to host A's `port`.
fn udp_frame(port: u16, payload: &[u8]) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(IP_B.octets(), IP_A.octets(), 64)
        .udp(40000, port);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).unwrap();
    frame
}

/// Selects the child role of [`root_a_user_sees_only_its_own_uids_sessions_and_root_sees_all`].
const ROLE_ENV: &str = "NETMUX_LIST_SESSIONS_ROLE";
/// netd's socket, for the child.
const SOCKET_ENV: &str = "NETMUX_LIST_SESSIONS_SOCKET";
/// The unprivileged user the child runs as (`nobody` on Debian and Fedora alike).
const NOBODY: u32 = 65534;

/// The child (does nothing unless `ROLE_ENV` is set): as another uid, binds a port, prints the
/// pids and uids of the sessions it is shown, and holds its session until stdin closes.
#[test]
fn other_uid_client_entry_point() {
    let (Ok(_), Ok(socket)) = (std::env::var(ROLE_ENV), std::env::var(SOCKET_ENV)) else {
        return;
    };
    let mut c = Client::connect_socket(std::path::Path::new(&socket)).unwrap();
    c.bind_port(Transport::Udp, 5001).unwrap();
    let seen: Vec<String> = c
        .list_sessions()
        .unwrap()
        .sessions
        .iter()
        .map(|s| format!("{}/{}", s.pid, s.uid))
        .collect();
    println!("\nseen: {}", seen.join(","));
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
#[ignore]
fn root_a_user_sees_only_its_own_uids_sessions_and_root_sees_all() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    assert!(
        rustix::process::geteuid().is_root(),
        "root_* tests need root (to run a client as another uid)"
    );
    let host = host();
    let netd = &host.netd;
    let mut root = Client::connect_socket(netd.socket_path()).unwrap();
    root.bind_port(Transport::Udp, 5000).unwrap();
    // The child runs a copy of this binary in the temp dir: the build directory may be closed
    // to other users.
    let scratch = netmux_testkit::TempDir::new("netmux-list-sessions");
    let exe = scratch.join("list_sessions");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = std::process::Command::new(&exe)
        .args([
            "--exact",
            "other_uid_client_entry_point",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, "nobody")
        .env(SOCKET_ENV, netd.socket_path())
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !seen.starts_with("seen: ") {
        seen.clear();
        assert_ne!(
            out.read_line(&mut seen).unwrap(),
            0,
            "the child said nothing"
        );
    }
    assert_eq!(
        seen.trim(),
        format!("seen: {}/{NOBODY}", child.id()),
        "another uid sees only its own sessions"
    );
    let all = root.list_sessions().unwrap().sessions;
    let mut who: Vec<(u32, u32)> = all.iter().map(|s| (s.pid, s.uid)).collect();
    who.sort();
    let mut expected = vec![(std::process::id(), 0), (child.id(), NOBODY)];
    expected.sort();
    assert_eq!(who, expected, "root sees every session");
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success());
}
