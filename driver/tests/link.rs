//! Link specs and the unprivileged backends: pcap replay/record and the virtual cable.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use netmux_driver::link::{self, FrameBatch, Link, LinkError, LinkSpec, LinkSpecError, MemoryLink};
use netmux_ring::MAX_FRAME_LEN;
use netmux_testkit::TempDir;
use netmux_wire::capture::{self, Frame, TimestampResolution};
use proptest::prelude::*;

fn ethernet_frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8) ^ seed).collect()
}

fn parse(s: &str) -> Result<LinkSpec, LinkSpecError> {
    s.parse()
}

/// Receives until `want` frames arrived or a second passed (datagrams are asynchronous only
/// in principle, but be patient anyway).
fn recv_frames(link: &mut dyn Link, want: usize) -> Vec<Vec<u8>> {
    let mut batch = FrameBatch::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while batch.len() < want && Instant::now() < deadline {
        let missing = want - batch.len();
        if link.recv(&mut batch, missing).unwrap() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    batch.iter().map(<[u8]>::to_vec).collect()
}

#[test]
fn every_kind_of_spec_parses() {
    assert_eq!(
        parse("tap:nmx0").unwrap(),
        LinkSpec::Tap {
            name: "nmx0".into()
        }
    );
    assert_eq!(
        parse("afpacket:eth0").unwrap(),
        LinkSpec::AfPacket {
            ifname: "eth0".into()
        }
    );
    assert_eq!(
        parse("pcap:in.pcap").unwrap(),
        LinkSpec::Pcap {
            input: "in.pcap".into(),
            output: None
        }
    );
    assert_eq!(
        parse("pcap:in.pcapng,out.pcap").unwrap(),
        LinkSpec::Pcap {
            input: "in.pcapng".into(),
            output: Some("out.pcap".into())
        }
    );
    assert_eq!(
        parse("virtual:/tmp/a").unwrap(),
        LinkSpec::Virtual {
            path: "/tmp/a".into(),
            peer: None
        }
    );
    assert_eq!(
        parse("virtual:/tmp/a,/tmp/b").unwrap(),
        LinkSpec::Virtual {
            path: "/tmp/a".into(),
            peer: Some("/tmp/b".into())
        }
    );
}

#[test]
fn bad_specs_say_what_is_wrong() {
    let cases: &[(&str, &str)] = &[
        ("eth0", "has no kind"),
        ("wifi:wlan0", "unknown link kind `wifi`"),
        ("tap:", "needs an argument"),
        ("pcap:", "needs an argument"),
        ("pcap:a,", "needs an argument"),
        ("pcap:a,b,c", "at most 2"),
        ("virtual:,b", "needs an argument"),
        ("tap:averyveryverylongname", "longer than 15 bytes"),
        ("afpacket:eth 0", "whitespace"),
        ("afpacket:..", "reserved"),
        ("tap:a/b", "contains `/`"),
        ("tap:a\0b", "NUL"),
    ];
    for (spec, expected) in cases {
        let message = parse(spec).unwrap_err().to_string();
        assert!(message.contains(expected), "{spec}: {message}");
    }
    let long = format!("virtual:/{}", "x".repeat(200));
    assert!(matches!(
        parse(&long),
        Err(LinkSpecError::SocketPathTooLong { len: 201, .. })
    ));
}

proptest! {
    #[test]
    fn specs_display_as_text_that_parses_back(s in "(tap|afpacket|pcap|virtual|x):[a-z0-9./,:]{0,20}") {
        if let Ok(spec) = parse(&s) {
            prop_assert_eq!(parse(&spec.to_string()).unwrap(), spec);
        }
    }
}

#[test]
fn afpacket_on_a_missing_interface_names_it_in_the_error() {
    let err = link::open(&parse("afpacket:nmx-nope0").unwrap())
        .err()
        .expect("no such interface");
    assert!(err.to_string().contains("nmx-nope0"), "{err}");
}

#[test]
fn links_without_hardware_get_a_stable_locally_administered_mac() {
    let a = link::info_for(&parse("virtual:/tmp/a").unwrap());
    let b = link::info_for(&parse("virtual:/tmp/b").unwrap());
    assert_eq!(a, link::info_for(&parse("virtual:/tmp/a").unwrap()));
    assert_ne!(a.mac, b.mac);
    assert_eq!(a.mac[0] & 0x03, 0x02, "locally administered, unicast");
    assert_eq!(a.mtu, 1500);
}

#[test]
fn two_virtual_links_cabled_together_carry_frames_both_ways() {
    let dir = TempDir::new("netmux-link-cable");
    let (pa, pb) = (dir.join("a"), dir.join("b"));
    let spec_a = LinkSpec::Virtual {
        path: pa.clone(),
        peer: Some(pb.clone()),
    };
    let spec_b = LinkSpec::Virtual {
        path: pb.clone(),
        peer: Some(pa.clone()),
    };
    let mut a = link::open(&spec_a).unwrap();
    let mut b = link::open(&spec_b).unwrap();
    let frames: Vec<Vec<u8>> = (0..20)
        .map(|i| ethernet_frame(60 + i * 70, i as u8))
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    // A Unix datagram queue holds only about ten datagrams (net.unix.max_dgram_qlen): the
    // link reports a partial send when the peer is busy, and the rest goes out after the
    // peer has read.
    let mut sent = 0;
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while received.len() < 20 && Instant::now() < deadline {
        sent += a.send(&refs[sent..]).unwrap();
        let mut batch = FrameBatch::new();
        b.recv(&mut batch, 20).unwrap();
        received.extend(batch.iter().map(<[u8]>::to_vec));
    }
    assert_eq!(received, frames);
    assert_eq!(b.send(&refs[..3]).unwrap(), 3);
    assert_eq!(recv_frames(a.as_mut(), 3), frames[..3]);
    assert_eq!(a.stats().tx_frames, 20);
    assert_eq!(b.stats().rx_frames, 20);
    assert!(a.readiness_fd().is_some());
}

#[test]
fn virtual_link_replies_to_the_test_host_that_last_spoke() {
    let dir = TempDir::new("netmux-link-host");
    let path = dir.join("driver");
    let mut link = link::open(&LinkSpec::Virtual {
        path: path.clone(),
        peer: None,
    })
    .unwrap();
    // Before anyone spoke, transmitted frames have nowhere to go: counted, dropped.
    let f = ethernet_frame(60, 1);
    assert_eq!(link.send(&[&f]).unwrap(), 1);
    assert_eq!(link.stats().tx_errors, 1);

    let host = UnixDatagram::bind(dir.join("host")).unwrap();
    host.send_to(&f, &path).unwrap();
    assert_eq!(recv_frames(link.as_mut(), 1), vec![f.clone()]);
    let reply = ethernet_frame(100, 2);
    assert_eq!(link.send(&[&reply]).unwrap(), 1);
    let mut buf = vec![0u8; 2000];
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = host.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &reply[..]);
}

#[test]
fn virtual_link_drops_runts_and_oversized_datagrams_and_counts_them() {
    let dir = TempDir::new("netmux-link-sizes");
    let path = dir.join("driver");
    let mut link = link::open(&LinkSpec::Virtual {
        path: path.clone(),
        peer: None,
    })
    .unwrap();
    let host = UnixDatagram::unbound().unwrap();
    host.send_to(&[0u8; 13], &path).unwrap();
    // Some kernels cap datagrams below 64 KiB + 1; only count the oversized one if it went.
    let oversized = host.send_to(&vec![0u8; MAX_FRAME_LEN + 1], &path).is_ok();
    let good = ethernet_frame(14, 0);
    host.send_to(&good, &path).unwrap();
    assert_eq!(recv_frames(link.as_mut(), 1), vec![good]);
    assert_eq!(link.stats().rx_dropped, 1 + u64::from(oversized));
    assert_eq!(link.stats().rx_frames, 1);
}

#[test]
fn virtual_link_replaces_a_stale_socket_and_refuses_a_live_one() {
    let dir = TempDir::new("netmux-link-stale");
    let path = dir.join("driver");
    drop(UnixDatagram::bind(&path).unwrap()); // dies, leaving the file behind
    assert!(path.exists());
    let live = link::open(&LinkSpec::Virtual {
        path: path.clone(),
        peer: None,
    })
    .unwrap();
    let err = link::open(&LinkSpec::Virtual {
        path: path.clone(),
        peer: None,
    })
    .err()
    .expect("second bind refused");
    assert!(matches!(err, LinkError::AddressInUse(_)), "{err}");
    drop(live);
    assert!(!path.exists(), "socket file removed on drop");
}

#[test]
fn virtual_link_refuses_to_bind_over_a_regular_file() {
    let dir = TempDir::new("netmux-link-file");
    let path = dir.join("driver");
    std::fs::write(&path, b"precious").unwrap();
    assert!(link::open(&LinkSpec::Virtual {
        path: path.clone(),
        peer: None
    })
    .is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

fn write_capture(path: &Path, frames: &[Frame]) {
    let bytes = capture::write_pcap(frames, TimestampResolution::Micro).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn pcap_link_replays_the_capture_in_order_then_is_exhausted() {
    let dir = TempDir::new("netmux-link-replay");
    let input = dir.join("in.pcap");
    let frames: Vec<Frame> = (0..50)
        .map(|i| {
            Frame::whole(
                Duration::from_secs(i),
                ethernet_frame(60 + i as usize, i as u8),
            )
        })
        .collect();
    write_capture(&input, &frames);
    let mut link = link::open(&LinkSpec::Pcap {
        input,
        output: None,
    })
    .unwrap();
    let mut batch = FrameBatch::new();
    assert_eq!(link.recv(&mut batch, 20).unwrap(), 20);
    assert!(!link.rx_exhausted());
    assert_eq!(link.recv(&mut batch, 100).unwrap(), 30);
    assert!(link.rx_exhausted());
    assert_eq!(link.recv(&mut batch, 100).unwrap(), 0);
    let got: Vec<&[u8]> = batch.iter().collect();
    let want: Vec<&[u8]> = frames.iter().map(|f| f.data.as_slice()).collect();
    assert_eq!(got, want);
    assert!(link.readiness_fd().is_none());
}

#[test]
fn pcap_link_skips_frames_no_ring_could_carry() {
    let dir = TempDir::new("netmux-link-skip");
    let input = dir.join("in.pcap");
    let frames = vec![
        Frame::whole(Duration::ZERO, vec![1; 10]),
        Frame::whole(Duration::ZERO, vec![2; 60]),
        Frame::whole(Duration::ZERO, vec![3; MAX_FRAME_LEN + 1]),
    ];
    write_capture(&input, &frames);
    let mut link = link::open(&LinkSpec::Pcap {
        input,
        output: None,
    })
    .unwrap();
    let mut batch = FrameBatch::new();
    assert_eq!(link.recv(&mut batch, 10).unwrap(), 1);
    assert_eq!(batch.get(0).unwrap(), &[2; 60][..]);
    assert_eq!(link.stats().rx_dropped, 2);
}

#[test]
fn pcap_link_records_transmitted_frames_as_a_readable_capture() {
    let dir = TempDir::new("netmux-link-record");
    let (input, output) = (dir.join("in.pcap"), dir.join("out.pcap"));
    write_capture(&input, &[]);
    let mut link = link::open(&LinkSpec::Pcap {
        input,
        output: Some(output.clone()),
    })
    .unwrap();
    let frames: Vec<Vec<u8>> = (0..5)
        .map(|i| ethernet_frame(60 + i * 500, i as u8))
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    assert_eq!(link.send(&refs).unwrap(), 5);
    // Readable while the link is still open: every frame is written as it is sent.
    let recorded: Vec<Vec<u8>> = capture::read_file(&output)
        .unwrap()
        .into_iter()
        .map(|f| f.data)
        .collect();
    assert_eq!(recorded, frames);
    assert_eq!(link.stats().tx_frames, 5);
}

#[test]
fn pcap_link_reports_a_missing_or_bad_capture_at_open() {
    let dir = TempDir::new("netmux-link-bad");
    let missing = LinkSpec::Pcap {
        input: dir.join("nope.pcap"),
        output: None,
    };
    assert!(matches!(link::open(&missing), Err(LinkError::Capture(_))));
    let junk = dir.join("junk.pcap");
    std::fs::write(&junk, b"this is not a capture").unwrap();
    let bad = LinkSpec::Pcap {
        input: junk,
        output: None,
    };
    assert!(matches!(link::open(&bad), Err(LinkError::Capture(_))));
}

#[test]
fn memory_link_receives_its_frames_and_keeps_what_it_sends() {
    let frames = vec![ethernet_frame(60, 0), ethernet_frame(70, 1)];
    let mut once = MemoryLink::new(frames.clone());
    let mut batch = FrameBatch::new();
    assert_eq!(once.recv(&mut batch, 10).unwrap(), 2);
    assert!(once.rx_exhausted());
    let mut forever = MemoryLink::repeating(frames.clone());
    batch.clear();
    assert_eq!(forever.recv(&mut batch, 5).unwrap(), 5);
    assert_eq!(batch.get(4).unwrap(), &frames[0][..]);
    assert!(!forever.rx_exhausted());
    assert_eq!(forever.send(&[&frames[1]]).unwrap(), 1);
    assert_eq!(forever.transmitted(), &frames[1..]);
}

/// A TCP/IPv4 frame of `payload` bytes whose checksum is left partial, as Linux hands it to a
/// device with checksum offload, and the virtio-net header that says so.
fn partial_tcp_frame(payload: usize) -> (Vec<u8>, netmux_wire::offload::VirtioNetHeader) {
    use netmux_wire::offload::{flags, VirtioNetHeader};
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64)
        .tcp(40000, 8080, 1, 1000)
        .ack(1)
        .write(&mut frame, &vec![0x42; payload])
        .unwrap();
    let pseudo =
        netmux_wire::checksum::pseudo_v4([192, 0, 2, 1], [192, 0, 2, 2], 6, (20 + payload) as u32);
    frame[50..52].copy_from_slice(&(!netmux_wire::checksum::fold(pseudo)).to_be_bytes());
    let header = VirtioNetHeader {
        flags: flags::NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VirtioNetHeader::NONE
    };
    (frame, header)
}

#[test]
fn a_partial_checksum_is_completed_in_the_private_copy_and_counted() {
    let (frame, header) = partial_tcp_frame(100);
    let mut stats = link::LinkStats::default();
    let mut batch = FrameBatch::new();
    assert_eq!(stats.admit_offloaded(&mut batch, &frame, &header), 1);
    let copy = batch.get(0).unwrap();
    assert_eq!(
        netmux_wire::offload::transport_checksum_ok(copy),
        Some(true)
    );
    assert_eq!((stats.rx_frames, stats.rx_csum_completed), (1, 1));
}

#[test]
fn an_aggregate_becomes_mtu_sized_frames_and_is_counted() {
    let (frame, mut header) = partial_tcp_frame(64_000);
    header.gso_type = netmux_wire::offload::gso::TCPV4;
    header.gso_size = 1448;
    let mut stats = link::LinkStats::default();
    let mut batch = FrameBatch::new();
    let n = stats.admit_offloaded(&mut batch, &frame, &header);
    assert_eq!(n, 64_000usize.div_ceil(1448));
    assert!(batch.iter().all(|f| f.len() <= 1514));
    assert!(batch
        .iter()
        .all(|f| netmux_wire::offload::transport_checksum_ok(f) == Some(true)));
    assert_eq!(
        (stats.rx_gso_split, stats.rx_gso_segments, stats.rx_frames),
        (1, n as u64, n as u64)
    );
}

#[test]
fn a_frame_whose_header_makes_no_sense_is_dropped_whole_and_counted_by_reason() {
    let (frame, mut header) = partial_tcp_frame(3000);
    header.gso_type = netmux_wire::offload::gso::TCPV6;
    header.gso_size = 1448;
    let mut stats = link::LinkStats::default();
    let mut batch = FrameBatch::new();
    assert_eq!(stats.admit_offloaded(&mut batch, &frame, &header), 0);
    assert!(batch.is_empty(), "nothing half-fixed is delivered");
    let drops: Vec<(String, u64)> = stats.offload_drops().collect();
    assert_eq!(drops, [("offload-protocol-mismatch".to_string(), 1)]);
    assert_eq!(stats.rx_frames, 0);
}
