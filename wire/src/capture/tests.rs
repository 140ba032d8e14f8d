use super::*;

fn sample_frames() -> Vec<Frame> {
    vec![
        Frame::whole(Duration::new(1_700_000_000, 123_456_000), vec![0xff; 60]),
        Frame {
            timestamp: Duration::new(1_700_000_001, 999_999_000),
            data: (0..=255u8).collect(),
            wire_len: 1514,
        },
        Frame::whole(Duration::new(0, 0), Vec::new()),
    ]
}

/// A pcap file by hand: `big` endian or not, the given magic, snap length and link type, and
/// records of (captured length field, wire length, bytes actually present).
fn pcap_bytes(
    big: bool,
    magic: u32,
    snaplen: u32,
    linktype: u32,
    records: &[(u32, u32, Vec<u8>)],
) -> Vec<u8> {
    let w32 = |v: u32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let w16 = |v: u16| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut out = Vec::new();
    out.extend_from_slice(&w32(magic));
    out.extend_from_slice(&w16(2));
    out.extend_from_slice(&w16(4));
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&w32(snaplen));
    out.extend_from_slice(&w32(linktype));
    for (i, (caplen, len, data)) in records.iter().enumerate() {
        out.extend_from_slice(&w32(i as u32 + 1));
        out.extend_from_slice(&w32(500));
        out.extend_from_slice(&w32(*caplen));
        out.extend_from_slice(&w32(*len));
        out.extend_from_slice(data);
    }
    out
}

/// A pcapng file by hand: a section header, one interface (link type, snap length, optional
/// `if_tsresol`), and the frames as enhanced packet blocks with raw timestamps.
fn pcapng(
    frames: &[(u64, &[u8], u32)],
    linktype: u16,
    snaplen: u32,
    tsresol: Option<u8>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let block = |out: &mut Vec<u8>, ty: u32, body: &[u8]| {
        let total = 12 + body.len().div_ceil(4) * 4;
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(body);
        out.resize(out.len() + (total - 12 - body.len()), 0);
        out.extend_from_slice(&(total as u32).to_le_bytes());
    };
    let mut shb = Vec::new();
    shb.extend_from_slice(&PCAPNG_BYTE_ORDER.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&u64::MAX.to_le_bytes());
    block(&mut out, PCAPNG_SHB, &shb);
    let mut idb = Vec::new();
    idb.extend_from_slice(&linktype.to_le_bytes());
    idb.extend_from_slice(&[0, 0]);
    idb.extend_from_slice(&snaplen.to_le_bytes());
    if let Some(r) = tsresol {
        idb.extend_from_slice(&9u16.to_le_bytes());
        idb.extend_from_slice(&1u16.to_le_bytes());
        idb.extend_from_slice(&[r, 0, 0, 0]);
        idb.extend_from_slice(&[0; 4]);
    }
    block(&mut out, PCAPNG_IDB, &idb);
    // A block netmux does not read, skipped.
    block(&mut out, 0x0000_0005, &[1, 2, 3, 4]);
    for (units, data, len) in frames {
        let mut epb = Vec::new();
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&((units >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(*units as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&len.to_le_bytes());
        epb.extend_from_slice(data);
        block(&mut out, PCAPNG_EPB, &epb);
    }
    out
}

fn info(bytes: &[u8]) -> CaptureInfo {
    CaptureReader::new(bytes).unwrap().info()
}

#[test]
fn pcap_written_in_microseconds_reads_back_the_same_frames() {
    let frames = sample_frames();
    let bytes = write_pcap(&frames, TimestampResolution::Micro).unwrap();
    assert_eq!(&bytes[..4], &PCAP_MAGIC.to_ne_bytes());
    assert_eq!(read(&bytes).unwrap(), frames);
}

#[test]
fn pcap_written_in_nanoseconds_keeps_nanoseconds() {
    let mut frames = sample_frames();
    frames[0].timestamp = Duration::new(5, 123_456_789);
    let bytes = write_pcap(&frames, TimestampResolution::Nano).unwrap();
    assert_eq!(read(&bytes).unwrap(), frames);
    assert!(info(&bytes).nanosecond);
    let micro = write_pcap(&frames, TimestampResolution::Micro).unwrap();
    assert_eq!(
        read(&micro).unwrap()[0].timestamp,
        Duration::new(5, 123_456_000)
    );
}

#[test]
fn big_endian_files_read_as_little_endian_ones() {
    let records = [(4, 60, vec![1, 2, 3, 4]), (2, 2, vec![9, 8])];
    for magic in [PCAP_MAGIC, PCAP_MAGIC_NSEC] {
        let le = pcap_bytes(false, magic, 65535, 1, &records);
        let be = pcap_bytes(true, magic, 65535, 1, &records);
        assert_eq!(read(&le).unwrap(), read(&be).unwrap());
        assert!(info(&be).big_endian && !info(&le).big_endian);
    }
    let f = read(&pcap_bytes(true, PCAP_MAGIC_NSEC, 0, 1, &records)).unwrap();
    assert_eq!(f[0].timestamp, Duration::new(1, 500));
    assert_eq!(f[1].wire_len, 2);
}

#[test]
fn records_longer_than_the_snapshot_length_are_cut_to_it_as_libpcap_does() {
    // Snap length 20, a 47-byte record: libpcap hands over 20 bytes and skips the rest.
    let records = [(47, 47, vec![7; 47]), (3, 60, vec![1, 2, 3])];
    let bytes = pcap_bytes(false, PCAP_MAGIC, 20, 1, &records);
    let frames = read(&bytes).unwrap();
    assert_eq!(frames[0].data, vec![7; 20]);
    assert_eq!(frames[0].wire_len, 47);
    assert_eq!(
        frames[1].data,
        vec![1, 2, 3],
        "the next record starts after the cut bytes"
    );
    assert_eq!(info(&bytes).snaplen, 20);
    // A snapshot length of 0 or above INT_MAX means the maximum.
    assert_eq!(
        info(&pcap_bytes(false, PCAP_MAGIC, 0, 1, &[])).snaplen,
        MAXIMUM_SNAPLEN
    );
    assert_eq!(
        info(&pcap_bytes(false, PCAP_MAGIC, u32::MAX, 1, &[])).snaplen,
        MAXIMUM_SNAPLEN
    );
}

#[test]
fn a_record_over_262144_bytes_is_refused_naming_the_frame_from_1() {
    let big = MAXIMUM_SNAPLEN + 1;
    let records = [(4, 4, vec![0; 4]), (big, big, vec![])];
    for (snaplen, why) in [
        (0, "bigger than snaplen of 262144"),
        (0x7fff_ffff, "bigger than maximum of 262144"),
    ] {
        let bytes = pcap_bytes(false, PCAP_MAGIC, snaplen, 1, &records);
        let mut r = CaptureReader::new(&bytes[..]).unwrap();
        assert!(r.next_packet().unwrap().is_ok());
        let e = r.next_packet().unwrap().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("malformed capture: frame 2: invalid packet capture length 262145, {why}")
        );
        assert!(r.next_packet().is_none(), "the reader ends after an error");
    }
}

#[test]
fn a_file_cut_inside_a_frame_is_truncated_naming_the_frame_from_1() {
    let bytes = write_pcap(&sample_frames(), TimestampResolution::Micro).unwrap();
    let cut = &bytes[..24 + 16 + 60 + 16 + 10];
    let e = read(cut).unwrap_err();
    assert!(matches!(e, CaptureError::Truncated(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "the capture is truncated: frame 2: tried to read 256 captured bytes, only got 10"
    );
    let e = read(&bytes[..24 + 5]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the capture is truncated: frame 1: tried to read 16 header bytes, only got 5"
    );
    let e = read(&bytes[..10]).unwrap_err();
    assert!(matches!(e, CaptureError::Truncated(_)), "{e}");
}

#[test]
fn the_frame_iterator_yields_the_frames_before_an_error_then_ends() {
    let bytes = write_pcap(&sample_frames(), TimestampResolution::Micro).unwrap();
    let cut = &bytes[..bytes.len() - 1];
    let mut it = frames(cut).unwrap();
    assert_eq!(it.next().unwrap().unwrap(), sample_frames()[0]);
    assert_eq!(it.next().unwrap().unwrap(), sample_frames()[1]);
    assert!(matches!(it.next(), Some(Err(CaptureError::Truncated(_)))));
    assert!(it.next().is_none());
    // A capture with no frames at all is fine.
    assert_eq!(read(&bytes[..24]).unwrap(), vec![]);
}

#[test]
fn link_types_map_to_libpcaps_dlt_values_and_read_any() {
    let records = [(3, 3, vec![0x45, 0, 0])];
    for (linktype, dlt) in [
        (1, 1),
        (101, 12),
        (12, 12),
        (14, 14),
        (113, 113),
        (276, 276),
        (228, 228),
        (229, 229),
    ] {
        let bytes = pcap_bytes(false, PCAP_MAGIC, 0, linktype, &records);
        let r = CaptureReader::new(&bytes[..]).unwrap();
        assert_eq!(r.info().dlt, dlt, "link type {linktype}");
        assert_eq!(r.frames().count(), 1);
    }
    // The Ethernet-only readers name the link type they refuse.
    let e = read(&pcap_bytes(false, PCAP_MAGIC, 0, 101, &records)).unwrap_err();
    assert!(
        matches!(e, CaptureError::UnsupportedLinkType { linktype: 12, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("link type 12 (RAW)"), "{e}");
    assert_eq!(dlt_to_linktype(12), 101);
}

#[test]
fn the_upper_bits_of_a_pcap_link_type_are_kept_apart_as_libpcap_does() {
    // tcpdump's test captures carry 0x30000001, 0x40000001 and 0x04000001 (FCS bits).
    for high in [0x3000_0000u32, 0x4000_0000, 0x0400_0000] {
        let bytes = pcap_bytes(false, PCAP_MAGIC, 0, high | 1, &[(1, 1, vec![5])]);
        let r = CaptureReader::new(&bytes[..]).unwrap();
        assert_eq!((r.info().dlt, r.info().linktype_ext), (1, high));
        assert_eq!(PcapHeader::like(&r.info()).linktype, high | 1);
    }
}

#[test]
fn old_versions_with_swapped_lengths_are_read_as_libpcap_reads_them() {
    let mut bytes = pcap_bytes(false, PCAP_MAGIC, 0, 1, &[(60, 4, vec![1, 2, 3, 4])]);
    bytes[6] = 2; // version 2.2: caplen and len swapped
    let f = read(&bytes).unwrap();
    assert_eq!((f[0].data.len(), f[0].wire_len), (4, 60));
    bytes[6] = 3; // 2.3: swapped only when caplen > len
    assert_eq!(read(&bytes).unwrap(), f);
    bytes[4] = 1; // 1.x
    assert_eq!(
        read(&bytes).unwrap_err().to_string(),
        "malformed capture: archaic pcap savefile format"
    );
}

#[test]
fn something_else_is_not_a_capture() {
    let e = read(b"NMXF\x01\x00").unwrap_err();
    assert_eq!(
        e.to_string(),
        "not a pcap or pcapng capture (the file starts with 4e4d5846)"
    );
    assert!(matches!(read(b"").unwrap_err(), CaptureError::Truncated(_)));
}

#[test]
fn an_endless_input_of_zeros_is_refused_at_once() {
    // `netmux filter match udp /dev/zero`: the magic number decides after 4 bytes.
    let e = CaptureReader::new(std::io::repeat(0)).unwrap_err();
    assert!(matches!(e, CaptureError::NotACapture(_)), "{e}");
    // A pcap header followed by endless zeros: empty records, one at a time, in constant
    // memory; the reader never holds more than one.
    let mut header = pcap_bytes(false, PCAP_MAGIC, 0, 1, &[]);
    header.truncate(24);
    let mut r = CaptureReader::new(std::io::Read::chain(&header[..], std::io::repeat(0))).unwrap();
    for _ in 0..10_000 {
        assert_eq!(r.next_packet().unwrap().unwrap().data.len(), 0);
    }
}

#[test]
fn pcapng_reads_the_same_frames_in_microseconds_and_nanoseconds() {
    let data: &[u8] = &[1, 2, 3, 4, 5];
    let micro = pcapng(&[(1_500_000_250, data, 60)], 1, 0, None);
    let f = read(&micro).unwrap();
    assert_eq!(f[0].timestamp, Duration::new(1500, 250_000));
    assert_eq!((f[0].data.as_slice(), f[0].wire_len), (data, 60));
    assert!(!info(&micro).nanosecond);
    let nano = pcapng(&[(7_000_000_001, data, 60)], 1, 0, Some(9));
    assert_eq!(read(&nano).unwrap()[0].timestamp, Duration::new(7, 1));
    assert!(info(&nano).nanosecond);
    let binary = pcapng(&[(3 << 10 | 512, data, 60)], 1, 0, Some(0x80 | 10));
    assert_eq!(
        read(&binary).unwrap()[0].timestamp,
        Duration::new(3, 500_000_000)
    );
    assert_eq!(info(&nano).format, Format::PcapNg);
}

#[test]
fn pcapng_takes_the_link_type_and_snapshot_of_its_first_interface() {
    let data: &[u8] = &[0x45; 30];
    let bytes = pcapng(&[(0, data, 30)], 113, 1000, None);
    let i = info(&bytes);
    assert_eq!((i.dlt, i.snaplen), (113, 1000));
    // A record longer than pcapng's snapshot length is refused (libpcap does not cut it).
    let bytes = pcapng(&[(0, data, 30)], 1, 20, None);
    let e = read(&bytes).unwrap_err();
    assert!(
        e.to_string().ends_with(
            "frame 1 (block 4): invalid packet capture length 30, bigger than snaplen of 20"
        ),
        "{e}"
    );
}

#[test]
fn a_cut_pcapng_is_an_error_after_its_whole_frames() {
    let data: &[u8] = &[1; 8];
    let bytes = pcapng(&[(1, data, 8), (2, data, 8)], 1, 0, None);
    for cut in [4, 20, bytes.len() - 1, bytes.len() - 30] {
        let mut r = match CaptureReader::new(&bytes[..cut]) {
            Ok(r) => r,
            Err(_) => continue,
        };
        let mut whole = 0;
        loop {
            match r.next_packet() {
                Some(Ok(_)) => whole += 1,
                Some(Err(e)) => {
                    assert!(
                        e.to_string().contains(&format!("frame {}", whole + 1)),
                        "{e}"
                    );
                    break;
                }
                None => panic!("cut at {cut} read to the end"),
            }
        }
    }
}

#[test]
fn a_pcapng_without_interfaces_or_with_a_packet_first_is_refused() {
    let mut bytes = pcapng(&[], 1, 0, None);
    bytes.truncate(28);
    assert!(CaptureReader::new(&bytes[..])
        .unwrap_err()
        .to_string()
        .contains("no Interface Description Blocks"));
}

#[test]
fn mutated_captures_never_panic() {
    // Every single-byte change and every truncation of small pcap and pcapng files, and a
    // seeded run of multi-byte changes: each gives frames or an error, never a panic.
    let frames = vec![
        Frame::whole(Duration::new(1, 2000), vec![1; 14]),
        Frame {
            timestamp: Duration::new(3, 0),
            data: vec![2; 5],
            wire_len: 60,
        },
    ];
    let files = [
        write_pcap(&frames, TimestampResolution::Micro).unwrap(),
        write_pcap(&frames, TimestampResolution::Nano).unwrap(),
        pcapng(&[(5, &[1; 14], 14), (6, &[2; 5], 60)], 1, 0, Some(6)),
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let read_all = |b: &[u8]| {
        if let Ok(r) = CaptureReader::new(b) {
            let _ = r.frames().count();
        }
    };
    for file in &files {
        for cut in 0..file.len() {
            read_all(&file[..cut]);
        }
        for i in 0..file.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff, file[i] ^ 1] {
                let mut m = file.clone();
                m[i] = v;
                read_all(&m);
            }
        }
        for _ in 0..3000 {
            let mut m = file.clone();
            for _ in 0..(next() % 6 + 1) {
                let i = (next() % m.len() as u64) as usize;
                m[i] = next() as u8;
            }
            read_all(&m);
        }
    }
}

#[test]
fn a_written_header_is_what_tcpdump_writes_for_the_input() {
    let bytes = pcap_bytes(true, PCAP_MAGIC_NSEC, 96, 101, &[(2, 40, vec![0x45, 0])]);
    let mut r = CaptureReader::new(&bytes[..]).unwrap();
    let header = PcapHeader::like(&r.info());
    assert_eq!(
        header,
        PcapHeader {
            resolution: TimestampResolution::Micro,
            linktype: 101,
            snaplen: 96
        }
    );
    let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
    let p = r.next_packet().unwrap().unwrap();
    w.write_packet(&p).unwrap();
    let out = w.finish().unwrap();
    let again = CaptureReader::new(&out[..]).unwrap();
    assert_eq!((again.info().dlt, again.info().snaplen), (12, 96));
    let f: Vec<_> = again.frames().collect::<Result<_, _>>().unwrap();
    assert_eq!((f[0].data.clone(), f[0].wire_len), (vec![0x45, 0], 40));
    // A frame longer than the header's snapshot length cannot be written.
    let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
    let e = w
        .write(&Frame::whole(Duration::ZERO, vec![0; 97]))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "frame 1 cannot be written: it is longer than the snap length"
    );
}

#[test]
fn cooked_can_ids_are_put_in_host_order_as_libpcap_does() {
    let mut sll = vec![0u8; 16];
    sll[14..16].copy_from_slice(&0x000cu16.to_be_bytes());
    sll.extend_from_slice(&[1, 2, 3, 4, 9]);
    let big = pcap_bytes(true, PCAP_MAGIC, 0, 113, &[(21, 21, sll.clone())]);
    let f: Vec<_> = CaptureReader::new(&big[..])
        .unwrap()
        .frames()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(&f[0].data[16..], &[4, 3, 2, 1, 9]);
    let little = pcap_bytes(false, PCAP_MAGIC, 0, 113, &[(21, 21, sll)]);
    let f: Vec<_> = CaptureReader::new(&little[..])
        .unwrap()
        .frames()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(&f[0].data[16..], &[1, 2, 3, 4, 9]);
}

#[test]
fn pcapng_timestamp_resolutions_are_applied() {
    let i = |tsresol, tsoffset| Interface { tsresol, tsoffset };
    assert_eq!(
        i(1_000_000, 0).timestamp(1_500_000),
        Duration::from_millis(1500)
    );
    assert_eq!(
        i(1_000_000_000, 0).timestamp(1_500_000),
        Duration::from_micros(1500)
    );
    assert_eq!(i(1_000, 10).timestamp(1_500), Duration::from_millis(11_500));
    assert_eq!(i(1 << 10, 0).timestamp(1024), Duration::from_secs(1));
    assert_eq!(
        i(10u64.pow(12), 0).timestamp(5_000),
        Duration::from_nanos(5)
    );
    // Absurd values saturate or wrap instead of panicking.
    let _ = i(1 << 63, u64::MAX).timestamp(u64::MAX);
    let _ = i(1, u64::MAX).timestamp(u64::MAX);
}

/// The conformance corpus: `$NETMUX_CONFORMANCE_DIR`, else `../shared/conformance` beside
/// the workspace.
fn conformance_dir() -> std::path::PathBuf {
    std::env::var_os("NETMUX_CONFORMANCE_DIR")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance"))
}

#[test]
#[ignore = "needs the conformance corpus"]
fn every_corpus_capture_reads_or_fails_as_libpcap_reads_it() {
    let dir = conformance_dir();
    let mut files: Vec<_> = ["pcap/tcpdump", "pcap/libpcap"]
        .iter()
        .flat_map(|sub| {
            std::fs::read_dir(dir.join(sub)).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (set NETMUX_CONFORMANCE_DIR)",
                    dir.join(sub).display()
                )
            })
        })
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let (mut read_ok, mut frames, mut failed) = (0, 0, Vec::new());
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        match std::panic::catch_unwind(|| {
            let r = CaptureReader::new(&bytes[..])?;
            r.frames().collect::<Result<Vec<_>, _>>()
        }) {
            Ok(Ok(f)) => {
                read_ok += 1;
                frames += f.len();
            }
            Ok(Err(e)) => failed.push(format!("{}: {e}", path.display())),
            Err(_) => panic!("{}: PANIC", path.display()),
        }
    }
    eprintln!(
        "{read_ok} of {} captures read whole ({frames} frames); {} end in an error:\n  {}",
        files.len(),
        failed.len(),
        failed.join("\n  ")
    );
    assert!(read_ok > 0, "no capture found under {}", dir.display());
}
