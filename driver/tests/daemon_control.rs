//! The control socket as netd sees it: hello and versions, credentials, one netd at a time,
//! queue descriptors, filter verification, malformed messages, and failing closed.

mod daemon_common;

use std::path::PathBuf;
use std::time::Duration;

use daemon_common::*;
use netmux_driver::daemon::control::{DriverThread, Server, ServerOptions};
use netmux_driver::daemon::{Driver, DriverConfig};
use netmux_driver::link::MemoryLink;
use netmux_proto::driver::{
    Direction, DriverReply, DriverRequest, FilterId, FilterInstall, QueueId, RxMode,
    MAX_BATCH_FILTERS,
};
use netmux_proto::{ErrorCode, PROTOCOL_VERSION};
use netmux_ring::QueueError;
use netmux_testkit::TempDir;

struct Fixture {
    _dir: TempDir,
    path: PathBuf,
    driver: Option<DriverThread>,
}

fn start(tag: &str, options: ServerOptions) -> Fixture {
    let dir = TempDir::new(&format!("netmux-driver-control-{tag}"));
    let path = dir.join("driver.sock");
    let driver = Driver::new(
        Box::new(MemoryLink::new(Vec::new())),
        DriverConfig::default(),
    );
    let driver = DriverThread::spawn(&path, driver, options).unwrap();
    Fixture {
        _dir: dir,
        path,
        driver: Some(driver),
    }
}

fn error_code(reply: &DriverReply) -> Option<ErrorCode> {
    match reply {
        DriverReply::Error(e) => Some(e.code),
        _ => None,
    }
}

#[test]
fn hello_returns_the_link_and_a_wrong_version_is_refused() {
    let f = start("hello", ServerOptions::default());
    let (_netd, hello) = Netd::connect(&f.path);
    assert!(
        matches!(hello, DriverReply::Hello { version, link } if version == PROTOCOL_VERSION && link.mac == [2, 0x6e, 0x6d, 0, 0, 1] && link.mtu == 1500),
        "{hello:?}"
    );
    drop(_netd);
    let mut netd = Netd::connect_only(&f.path);
    let (reply, _) = netd.request(&DriverRequest::Hello {
        version: PROTOCOL_VERSION + 1,
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::Version));
}

#[test]
fn requests_before_hello_and_a_second_hello_are_protocol_errors() {
    let f = start("order", ServerOptions::default());
    let mut netd = Netd::connect_only(&f.path);
    let (reply, _) = netd.request(&DriverRequest::Stats);
    assert_eq!(error_code(&reply), Some(ErrorCode::Protocol));
    let (reply, _) = netd.request(&DriverRequest::Hello {
        version: PROTOCOL_VERSION,
    });
    assert!(matches!(reply, DriverReply::Hello { .. }));
    let (reply, _) = netd.request(&DriverRequest::Hello {
        version: PROTOCOL_VERSION,
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::Protocol));
}

#[test]
fn a_peer_with_a_uid_not_allowed_is_refused() {
    let me = rustix::process::getuid().as_raw();
    let f = start(
        "uid",
        ServerOptions {
            allowed_uids: vec![me.wrapping_add(1)],
            exit_on_disconnect: false,
        },
    );
    let mut netd = Netd::connect_only(&f.path);
    let (reply, _): (DriverReply, _) = netd.channel.recv().unwrap();
    assert_eq!(error_code(&reply), Some(ErrorCode::Denied));
    // The driver closed the connection.
    let _ = netd.channel.send(
        &DriverRequest::Hello {
            version: PROTOCOL_VERSION,
        },
        &[],
    );
    assert!(netd.channel.recv::<DriverReply>().is_err());
}

#[test]
fn only_one_netd_at_a_time_and_a_new_one_after_the_first_leaves() {
    let f = start("one", ServerOptions::default());
    let (first, _) = Netd::connect(&f.path);
    let mut second = Netd::connect_only(&f.path);
    let (reply, _): (DriverReply, _) = second.channel.recv().unwrap();
    assert_eq!(error_code(&reply), Some(ErrorCode::Denied));
    drop(first);
    eventually("a new netd is accepted", || {
        let mut netd = Netd::connect_only(&f.path);
        netd.channel
            .send(
                &DriverRequest::Hello {
                    version: PROTOCOL_VERSION,
                },
                &[],
            )
            .is_ok()
            && matches!(
                netd.channel.recv::<DriverReply>(),
                Ok((DriverReply::Hello { .. }, _))
            )
    });
}

#[test]
fn a_created_queue_comes_with_two_descriptors_a_client_can_attach() {
    let f = start("queue", ServerOptions::default());
    let (mut netd, _) = Netd::connect(&f.path);
    let (reply, fds) = netd.request(&DriverRequest::CreateQueue {
        queue: QueueId(7),
        config: SMALL,
        instance: netmux_proto::driver::DEFAULT_INSTANCE,
    });
    assert!(
        matches!(reply, DriverReply::QueueCreated { queue: QueueId(7), ring_bytes } if ring_bytes > 0)
    );
    assert_eq!(fds.len(), 2);
    let client = attach(fds);
    assert!(!client.is_closed());
    // The same id twice is refused; so are impossible ring sizes.
    let (reply, fds) = netd.request(&DriverRequest::CreateQueue {
        queue: QueueId(7),
        config: SMALL,
        instance: netmux_proto::driver::DEFAULT_INSTANCE,
    });
    assert_eq!((error_code(&reply), fds.len()), (Some(ErrorCode::InUse), 0));
    let mut bad = SMALL;
    bad.rx_slots = 3;
    let (reply, _) = netd.request(&DriverRequest::CreateQueue {
        queue: QueueId(8),
        config: bad,
        instance: netmux_proto::driver::DEFAULT_INSTANCE,
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::Limit));
    // Destroying closes the client's view.
    netd.ok(&DriverRequest::DestroyQueue { queue: QueueId(7) });
    assert!(client.is_closed());
    let (reply, _) = netd.request(&DriverRequest::DestroyQueue { queue: QueueId(7) });
    assert_eq!(error_code(&reply), Some(ErrorCode::NotFound));
}

#[test]
fn bytecode_is_verified_again_by_the_driver() {
    let f = start("verify", ServerOptions::default());
    let (mut netd, _) = Netd::connect(&f.path);
    let _q = netd.queue(1);
    // A backward jump: assembles, but the verifier refuses it.
    let mut bytes = netmux_vm::asm::assemble("accept 1\n").unwrap();
    let last = bytes.len() - 8;
    bytes[last] = 0xff; // no such opcode
    for (direction, program) in [
        (Direction::Rx, bytes.clone()),
        (Direction::Tx, bytes.clone()),
        (Direction::Rx, vec![1, 2, 3]),
        (Direction::Rx, Vec::new()),
    ] {
        let (reply, _) = netd.request(&DriverRequest::InstallFilter(FilterInstall {
            queue: QueueId(1),
            filter: FilterId(1),
            direction,
            mode: RxMode::Owner,
            binding: None,
            program,
        }));
        assert_eq!(error_code(&reply), Some(ErrorCode::BadFilter), "{reply:?}");
    }
    // A good one installs, once; removing it twice fails the second time.
    netd.filter(1, 1, Direction::Rx, RxMode::Owner, None, accept_all());
    let (reply, _) = netd.request(&DriverRequest::InstallFilter(FilterInstall {
        queue: QueueId(1),
        filter: FilterId(1),
        direction: Direction::Rx,
        mode: RxMode::Owner,
        binding: None,
        program: accept_all(),
    }));
    assert_eq!(error_code(&reply), Some(ErrorCode::InUse));
    netd.ok(&DriverRequest::RemoveFilter {
        queue: QueueId(1),
        filter: FilterId(1),
    });
    let (reply, _) = netd.request(&DriverRequest::RemoveFilter {
        queue: QueueId(1),
        filter: FilterId(1),
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::NotFound));
    // A filter for a queue that does not exist.
    let (reply, _) = netd.request(&DriverRequest::InstallFilter(FilterInstall {
        queue: QueueId(99),
        filter: FilterId(2),
        direction: Direction::Rx,
        mode: RxMode::Owner,
        binding: None,
        program: accept_all(),
    }));
    assert_eq!(error_code(&reply), Some(ErrorCode::NotFound));
}

#[test]
fn a_batch_of_filters_is_installed_whole_or_not_at_all() {
    let f = start("batch", ServerOptions::default());
    let (mut netd, _) = Netd::connect(&f.path);
    let _a = netd.queue(1);
    let _b = netd.queue(2);
    let ip = [10, 0, 0, 1];
    let rx = |queue: u32, filter: u64, port: u16| FilterInstall {
        queue: QueueId(queue),
        filter: FilterId(filter),
        direction: Direction::Rx,
        mode: RxMode::Owner,
        binding: Some(udp_binding(ip, port)),
        program: udp_rx_program(ip, port),
    };
    let grant = |queue: u32, filter: u64, port: u16| FilterInstall {
        queue: QueueId(queue),
        filter: FilterId(filter),
        direction: Direction::Tx,
        mode: RxMode::Owner,
        binding: Some(udp_binding(ip, port)),
        program: Vec::new(),
    };
    // A port's rx binding and tx grant in one request.
    netd.ok(&DriverRequest::InstallFilters {
        filters: vec![rx(1, 10, 53), grant(1, 11, 53)],
    });
    // The last of a batch is refused (queue 1 owns port 53): the ones before it are taken
    // back, so their ids and port 54 are free again.
    let (reply, _) = netd.request(&DriverRequest::InstallFilters {
        filters: vec![rx(2, 20, 54), grant(2, 21, 54), rx(2, 22, 53)],
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::InUse), "{reply:?}");
    for filter in [20, 21] {
        let (reply, _) = netd.request(&DriverRequest::RemoveFilter {
            queue: QueueId(2),
            filter: FilterId(filter),
        });
        assert_eq!(error_code(&reply), Some(ErrorCode::NotFound), "{reply:?}");
    }
    netd.ok(&DriverRequest::InstallFilters {
        filters: vec![rx(2, 20, 54), grant(2, 21, 54)],
    });
    // A bad program anywhere refuses the whole batch.
    let mut bad = rx(1, 30, 55);
    bad.program = vec![1, 2, 3];
    let (reply, _) = netd.request(&DriverRequest::InstallFilters {
        filters: vec![rx(1, 31, 56), bad],
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::BadFilter), "{reply:?}");
    netd.ok(&DriverRequest::InstallFilters {
        filters: vec![rx(1, 31, 56)],
    });
    // More than a batch may carry is refused before anything is installed.
    let many = (0..=MAX_BATCH_FILTERS as u64)
        .map(|i| grant(1, 100 + i, 57))
        .collect();
    let (reply, _) = netd.request(&DriverRequest::InstallFilters { filters: many });
    assert_eq!(error_code(&reply), Some(ErrorCode::Limit), "{reply:?}");
    let (reply, _) = netd.request(&DriverRequest::RemoveFilter {
        queue: QueueId(1),
        filter: FilterId(100),
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::NotFound), "{reply:?}");
    // A closed port's filters go in one request too.
    netd.ok(&DriverRequest::RemoveFilters {
        queue: QueueId(1),
        filters: vec![FilterId(11), FilterId(10)],
    });
    // Queue 2 may bind port 53 now.
    netd.ok(&DriverRequest::InstallFilters {
        filters: vec![rx(2, 22, 53)],
    });
    // Every filter of a batch is tried; one not found (on that queue) is the reply.
    let (reply, _) = netd.request(&DriverRequest::RemoveFilters {
        queue: QueueId(2),
        filters: vec![FilterId(31), FilterId(20), FilterId(21)],
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::NotFound), "{reply:?}");
    for filter in [20, 21] {
        let (reply, _) = netd.request(&DriverRequest::RemoveFilter {
            queue: QueueId(2),
            filter: FilterId(filter),
        });
        assert_eq!(error_code(&reply), Some(ErrorCode::NotFound), "{reply:?}");
    }
}

#[test]
fn conflicting_bindings_and_exclusive_claims_are_refused() {
    let f = start("owners", ServerOptions::default());
    let (mut netd, _) = Netd::connect(&f.path);
    let _a = netd.queue(1);
    let _b = netd.queue(2);
    let ip = [10, 0, 0, 1];
    let install = |netd: &mut Netd, queue: u32, filter: u64, mode: RxMode| {
        netd.request(&DriverRequest::InstallFilter(FilterInstall {
            queue: QueueId(queue),
            filter: FilterId(filter),
            direction: Direction::Rx,
            mode,
            binding: (mode == RxMode::Owner).then(|| udp_binding(ip, 53)),
            program: udp_rx_program(ip, 53),
        }))
        .0
    };
    assert_eq!(install(&mut netd, 1, 10, RxMode::Owner), DriverReply::Done);
    assert_eq!(
        error_code(&install(&mut netd, 2, 11, RxMode::Owner)),
        Some(ErrorCode::InUse)
    );
    assert_eq!(
        error_code(&install(&mut netd, 2, 12, RxMode::Exclusive)),
        Some(ErrorCode::InUse)
    );
    netd.ok(&DriverRequest::RemoveFilter {
        queue: QueueId(1),
        filter: FilterId(10),
    });
    assert_eq!(
        install(&mut netd, 2, 12, RxMode::Exclusive),
        DriverReply::Done
    );
    assert_eq!(
        error_code(&install(&mut netd, 1, 13, RxMode::Owner)),
        Some(ErrorCode::InUse)
    );
}

#[test]
fn a_malformed_body_is_answered_and_the_session_continues() {
    let f = start("malformed", ServerOptions::default());
    let (mut netd, _) = Netd::connect(&f.path);
    for body in [
        &b"{\"NoSuchRequest\":1}"[..],
        b"\xff\xfe",
        b"[]",
        b"{\"CreateQueue\":{}}",
    ] {
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        bytes.extend_from_slice(body);
        netd.channel.send_raw(&bytes, &[]).unwrap();
        let (reply, _): (DriverReply, _) = netd.channel.recv().unwrap();
        assert_eq!(error_code(&reply), Some(ErrorCode::Protocol), "{reply:?}");
    }
    let (reply, _) = netd.request(&DriverRequest::Stats);
    assert!(matches!(reply, DriverReply::Stats { .. }));
}

#[test]
fn a_broken_frame_ends_the_session_and_the_driver_fails_closed() {
    let f = start("broken", ServerOptions::default());
    let (mut netd, _) = Netd::connect(&f.path);
    let client = netd.queue(1);
    // A header announcing a 4 GiB body.
    netd.channel
        .send_raw(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0], &[])
        .unwrap();
    assert!(netd.channel.recv::<DriverReply>().is_err());
    eventually("the queue is closed", || client.is_closed());
}

#[test]
fn when_netd_disconnects_every_queue_is_closed_and_clients_see_it() {
    let f = start("failclosed", ServerOptions::default());
    let (mut netd, _) = Netd::connect(&f.path);
    let mut clients: Vec<_> = (1..=3).map(|i| netd.queue(i)).collect();
    drop(netd);
    for client in &mut clients {
        eventually("the queue is closed", || client.is_closed());
        assert!(matches!(
            client.send(&[&[&[0u8; 60]]]),
            Err(QueueError::Closed)
        ));
    }
    // A new netd starts from nothing.
    let (mut netd, _) = Netd::connect(&f.path);
    let (reply, _) = netd.request(&DriverRequest::Stats);
    assert!(
        matches!(reply, DriverReply::Stats { ref queues, .. } if queues.is_empty()),
        "{reply:?}"
    );
}

#[test]
fn with_exit_on_disconnect_the_driver_stops_when_netd_leaves() {
    let mut f = start(
        "exit",
        ServerOptions {
            exit_on_disconnect: true,
            ..ServerOptions::default()
        },
    );
    let (mut netd, _) = Netd::connect(&f.path);
    let client = netd.queue(1);
    drop(netd);
    let driver = f.driver.take().unwrap();
    eventually("the driver thread ends", || driver.is_finished());
    assert!(client.is_closed());
    driver.stop().unwrap();
    std::thread::sleep(Duration::from_millis(1));
}

#[test]
fn reconfiguring_a_queue_replaces_its_rings_and_keeps_its_filters() {
    let f = start("config", ServerOptions::default());
    let (mut netd, _) = Netd::connect(&f.path);
    let old = netd.queue(1);
    netd.filter(1, 1, Direction::Rx, RxMode::Tap, None, accept_all());
    let mut bigger = SMALL;
    bigger.rx_slots = 256;
    let (reply, fds) = netd.request(&DriverRequest::SetQueueConfig {
        queue: QueueId(1),
        config: bigger,
    });
    assert!(
        matches!(reply, DriverReply::QueueCreated { .. }),
        "{reply:?}"
    );
    let new = attach(fds);
    assert!(old.is_closed() && !new.is_closed());
    assert_eq!(new.layout().rx.count, 256);
    // The filter is still there: removing it works.
    netd.ok(&DriverRequest::RemoveFilter {
        queue: QueueId(1),
        filter: FilterId(1),
    });
}

/// A small deterministic generator (xorshift), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn garbage_streams_never_take_the_driver_down() {
    let f = start("garbage", ServerOptions::default());
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..60 {
        let mut netd = Netd::connect_only(&f.path);
        let mut bytes = if round % 2 == 0 {
            // A plausible header with a random body.
            let len = rng.below(64) as u32 + 1;
            let mut b = len.to_le_bytes().to_vec();
            b.extend_from_slice(&[0, 0, 0, 0]);
            b.extend(rng.bytes(len as usize));
            b
        } else {
            let n = rng.below(40) as usize;
            rng.bytes(n)
        };
        if round % 3 == 0 {
            let mut hello = netmux_proto::frame::encode(
                &DriverRequest::Hello {
                    version: PROTOCOL_VERSION,
                },
                0,
            )
            .unwrap();
            hello.append(&mut bytes);
            bytes = hello;
        }
        let _ = netd.channel.send_raw(&bytes, &[]);
        drop(netd);
    }
    let (_netd, hello) = Netd::connect(&f.path);
    assert!(matches!(hello, DriverReply::Hello { .. }), "{hello:?}");
}

#[test]
fn random_well_formed_requests_get_replies_and_never_panic() {
    let f = start("random", ServerOptions::default());
    let (mut netd, _) = Netd::connect(&f.path);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let pow2 = |rng: &mut Rng| 1u32 << rng.below(20);
    for _ in 0..300 {
        let queue = QueueId(rng.below(4) as u32);
        let filter = FilterId(rng.below(8));
        let request = match rng.below(8) {
            0 => DriverRequest::CreateQueue {
                queue,
                config: netmux_proto::driver::QueueConfig {
                    slot_size: pow2(&mut rng),
                    rx_slots: pow2(&mut rng),
                    tx_slots: pow2(&mut rng),
                    completion_slots: pow2(&mut rng),
                },
                instance: netmux_proto::driver::DEFAULT_INSTANCE,
            },
            1 => DriverRequest::CreateQueue {
                queue,
                config: SMALL,
                instance: netmux_proto::driver::DEFAULT_INSTANCE,
            },
            2 => DriverRequest::DestroyQueue { queue },
            3 => DriverRequest::InstallFilter(FilterInstall {
                queue,
                filter,
                direction: if rng.below(2) == 0 {
                    Direction::Rx
                } else {
                    Direction::Tx
                },
                mode: [RxMode::Owner, RxMode::Tap, RxMode::Exclusive][rng.below(3) as usize],
                binding: (rng.below(2) == 0)
                    .then(|| udp_binding([10, 0, 0, 1], rng.below(3) as u16)),
                program: if rng.below(2) == 0 {
                    accept_all()
                } else {
                    let n = rng.below(64) as usize;
                    rng.bytes(n)
                },
            }),
            4 => DriverRequest::RemoveFilter { queue, filter },
            5 => DriverRequest::SetNetdQueue { queue },
            6 => DriverRequest::SetQueueConfig {
                queue,
                config: SMALL,
            },
            _ => DriverRequest::Stats,
        };
        let (reply, fds) = netd.request(&request);
        let created = matches!(reply, DriverReply::QueueCreated { .. });
        assert_eq!(
            fds.len(),
            if created { 2 } else { 0 },
            "{request:?} -> {reply:?}"
        );
    }
    let (reply, _) = netd.request(&DriverRequest::Stats);
    assert!(matches!(reply, DriverReply::Stats { .. }));
}

#[test]
fn the_control_socket_never_replaces_a_live_socket_or_a_regular_file() {
    let f = start("inuse", ServerOptions::default());
    let driver = || {
        Driver::new(
            Box::new(MemoryLink::new(Vec::new())),
            DriverConfig::default(),
        )
    };
    assert!(Server::bind(&f.path, driver(), ServerOptions::default()).is_err());
    let file = f.path.with_file_name("precious.txt");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(Server::bind(&file, driver(), ServerOptions::default()).is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn netd_queue_and_host_addresses_are_checked() {
    let f = start("netdq", ServerOptions::default());
    let (mut netd, _) = Netd::connect(&f.path);
    let (reply, _) = netd.request(&DriverRequest::SetNetdQueue { queue: QueueId(5) });
    assert_eq!(error_code(&reply), Some(ErrorCode::NotFound));
    let _q = netd.queue(5);
    netd.ok(&DriverRequest::SetNetdQueue { queue: QueueId(5) });
    netd.ok(&DriverRequest::SetHostAddresses {
        ipv4: vec![[10, 0, 0, 1]],
    });
    let (reply, _) = netd.request(&DriverRequest::SetHostAddresses {
        ipv4: vec![[10, 0, 0, 1]; netmux_driver::daemon::MAX_HOST_ADDRESSES + 1],
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::Limit));
    let (reply, _) = netd.request(&DriverRequest::Stats);
    assert!(
        matches!(&reply, DriverReply::Stats { queues, .. } if queues.len() == 1 && queues[0].0 == QueueId(5)),
        "{reply:?}"
    );
}

#[test]
fn counters_of_more_queues_than_one_message_carries_are_refused_and_every_queue_stays() {
    // About 300 bytes of counters a queue: a few thousand queues outgrow one message. The
    // driver in this process holds one descriptor per queue; raise the soft limit for them.
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let want = limit.maximum.unwrap_or(u64::MAX).min(16_384);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: limit.maximum,
        },
    );
    if want < 8_500 {
        eprintln!("skipped: a descriptor limit of {want} holds too few queues");
        return;
    }
    let f = start("stats-limit", ServerOptions::default());
    let (mut netd, _) = Netd::connect(&f.path);
    let first = netd.queue(1);
    let mut count = 1u32;
    let refused = loop {
        assert!(
            count < 8_000,
            "every queue's counters still fit one message"
        );
        for _ in 0..500 {
            count += 1;
            let (reply, _fds) = netd.request(&DriverRequest::CreateQueue {
                queue: QueueId(count),
                config: SMALL,
                instance: netmux_proto::driver::DEFAULT_INSTANCE,
            });
            assert!(
                matches!(reply, DriverReply::QueueCreated { .. }),
                "{reply:?}"
            );
        }
        match netd.request(&DriverRequest::Stats).0 {
            DriverReply::Stats { .. } => continue,
            other => break other,
        }
    };
    assert_eq!(error_code(&refused), Some(ErrorCode::Limit), "{refused:?}");
    // The connection and every queue stay; a few queues' counters are there for the asking.
    assert!(!first.is_closed(), "the driver failed closed");
    let (reply, _) = netd.request(&DriverRequest::StatsOf {
        queues: vec![QueueId(1), QueueId(count), QueueId(count + 1)],
    });
    match reply {
        DriverReply::Stats { queues, .. } => assert_eq!(
            queues.iter().map(|(q, _)| *q).collect::<Vec<_>>(),
            [QueueId(1), QueueId(count)],
            "the queues asked for that exist"
        ),
        other => panic!("{other:?}"),
    }
    let (reply, _) = netd.request(&DriverRequest::StatsOf {
        queues: vec![QueueId(1); netmux_proto::driver::MAX_STATS_QUEUES + 1],
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::Limit));
}
