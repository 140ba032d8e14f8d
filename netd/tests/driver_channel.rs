//! The real driver link ([`ChannelDriver`]) against a scripted driver on a socket pair: the
//! control protocol as netd speaks it, descriptors included, and a driver that goes away.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use netmux_netd::driver_link::{ChannelDriver, DriverError, DriverLink};
use netmux_proto::driver::{Counters, DriverReply, DriverRequest, FilterId, QueueId};
use netmux_proto::{Channel, ErrorCode, ErrorReply, LinkInfo, PROTOCOL_VERSION};
use netmux_ring::{ClientQueue, DriverQueue, QueueConfig};

const LINK: LinkInfo = LinkInfo {
    mac: [2, 0, 0, 0, 0, 7],
    mtu: 1500,
};

/// A driver that answers `requests` scripted replies, then hangs up.
fn scripted(sock: UnixStream, replies: usize) -> std::thread::JoinHandle<Vec<DriverRequest>> {
    std::thread::spawn(move || {
        let mut chan = Channel::new(sock);
        let mut seen = Vec::new();
        let mut queues = Vec::new();
        for _ in 0..replies {
            let Ok((request, _)) = chan.recv::<DriverRequest>() else {
                break;
            };
            match &request {
                DriverRequest::Hello { .. } => chan
                    .send(
                        &DriverReply::Hello {
                            version: PROTOCOL_VERSION,
                            link: LINK,
                        },
                        &[],
                    )
                    .unwrap(),
                DriverRequest::CreateQueue { queue, config, .. } => {
                    let q = DriverQueue::create(&QueueConfig {
                        slot_size: config.slot_size,
                        rx_slots: config.rx_slots,
                        tx_slots: config.tx_slots,
                        completion_slots: config.completion_slots,
                    })
                    .unwrap();
                    let fds = q.client_fds().unwrap();
                    chan.send(
                        &DriverReply::QueueCreated {
                            queue: *queue,
                            ring_bytes: q.layout().total_len,
                        },
                        &[fds.memfd.as_fd(), fds.doorbell.as_fd()],
                    )
                    .unwrap();
                    queues.push(q);
                }
                DriverRequest::RemoveFilter { .. } => chan
                    .send(
                        &DriverReply::Error(ErrorReply {
                            code: ErrorCode::NotFound,
                            message: "no such filter".into(),
                        }),
                        &[],
                    )
                    .unwrap(),
                DriverRequest::Stats => chan
                    .send(
                        &DriverReply::Stats {
                            link: Counters::default(),
                            queues: vec![(QueueId(1), Counters::default())],
                            instances: Vec::new(),
                        },
                        &[],
                    )
                    .unwrap(),
                _ => chan.send(&DriverReply::Done, &[]).unwrap(),
            }
            seen.push(request);
        }
        seen
    })
}

#[test]
fn the_channel_driver_speaks_the_control_protocol_and_passes_queue_descriptors() {
    let (netd_end, driver_end) = UnixStream::pair().unwrap();
    let driver = scripted(driver_end, 5);
    let mut link = ChannelDriver::over(netd_end).unwrap();
    assert_eq!(link.link_info(), LINK);
    let config = QueueConfig {
        slot_size: 2048,
        rx_slots: 64,
        tx_slots: 64,
        completion_slots: 32,
    };
    let created = link
        .create_queue(QueueId(1), config, netmux_proto::driver::DEFAULT_INSTANCE)
        .unwrap();
    // The descriptors are a real, attachable queue.
    ClientQueue::from_fds(created.memfd, created.doorbell).unwrap();
    assert!(matches!(
        link.remove_filter(QueueId(1), FilterId(9)),
        Err(DriverError::Refused(e)) if e.code == ErrorCode::NotFound
    ));
    assert_eq!(link.stats().unwrap().queues.len(), 1);
    link.destroy_queue(QueueId(1)).unwrap();
    // The driver hangs up: every later request says it is gone.
    let seen = driver.join().unwrap();
    assert_eq!(seen.len(), 5);
    assert!(matches!(
        seen[1],
        DriverRequest::CreateQueue {
            queue: QueueId(1),
            ..
        }
    ));
    assert!(matches!(
        link.destroy_queue(QueueId(1)),
        Err(DriverError::Gone(_))
    ));
}

#[test]
fn a_driver_speaking_another_version_is_refused() {
    let (netd_end, driver_end) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut chan = Channel::new(driver_end);
        let _ = chan.recv::<DriverRequest>().unwrap();
        chan.send(
            &DriverReply::Hello {
                version: PROTOCOL_VERSION + 1,
                link: LINK,
            },
            &[],
        )
        .unwrap();
    });
    assert!(
        matches!(ChannelDriver::over(netd_end), Err(DriverError::Gone(m)) if m.contains("protocol"))
    );
    t.join().unwrap();
}
