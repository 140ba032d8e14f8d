//! `netmux filter match` and `filter compile`, run as the built binary, against libpcap reading
//! the same files (`pcap_open_offline`, `pcap_compile` on its handle, `pcap_next_ex`: exactly
//! `tcpdump -r FILE EXPR`) and, when it is installed, tcpdump itself.
//!
//! * The README example: every verdict on the shipped sample is libpcap's, with every engine.
//! * The filter follows the capture's link layer (Ethernet, Linux cooked v1/v2, raw IP), and
//!   records are cut to the snapshot length, as libpcap cuts them.
//! * `-w` writes the frames tcpdump keeps, byte for byte what `tcpdump -r IN -w OUT` writes.
//! * `-` reads standard input; a broken capture gets every whole frame's verdict, then the error
//!   (frames counted from 1); `/dev/zero` is refused at once.
//! * Names compile to what tcpdump compiles, and `filter compile` says what they became.
//! * A large capture streams in constant memory (`NETMUX_STREAM_BYTES`, default 128 MiB).
//! * With the conformance corpus (`#[ignore]`d): every expression of `exprs.txt` and generated
//!   ones with names and wrapping indexes, on every corpus capture.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use netmux_compiler::LinkType;
use netmux_testkit::exprs::ExprGen;
use netmux_testkit::frames::sample_frames;
use netmux_testkit::oracle::{BpfProgram, Offline};
use netmux_testkit::{corpus, relink, TempDir};
use netmux_wire::capture::{
    self, dlt_to_linktype, Frame, PcapHeader, PcapWriter, TimestampResolution,
};

const NETMUX: &str = env!("CARGO_BIN_EXE_netmux");

fn netmux(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(NETMUX)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run netmux");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        // A refusal may close the pipe before everything is written.
        let _ = pipe.write_all(input);
    }
    child.wait_with_output().expect("netmux output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn filter_match(engine: &str, expr: &str) -> String {
    let out = netmux(
        &[
            "filter",
            "match",
            "--engine",
            engine,
            expr,
            "examples/sample.pcap",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

/// libpcap's verdicts for `expr` on the file at `path`, as `tcpdump -r` gives them, as the
/// lines `netmux filter match` prints; `None` when libpcap refuses the expression, and the read
/// error when libpcap stopped on one.
fn libpcap_verdicts(path: &Path, expr: &str) -> (Option<String>, Option<String>) {
    let (lines, _, err) = libpcap_verdicts_both(path, expr);
    (lines, err)
}

/// As [`libpcap_verdicts`], with the verdicts of libpcap's unoptimized program too (where
/// libpcap's optimizer changes its own verdict on a truncated frame, netmux gives the
/// unoptimized one: the documented `-O1` difference).
fn libpcap_verdicts_both(
    path: &Path,
    expr: &str,
) -> (Option<String>, Option<String>, Option<String>) {
    let mut f = Offline::open(path).expect("libpcap opens it");
    let programs = [f.compile(expr, true).ok(), f.compile(expr, false).ok()];
    let (frames, err) = f.frames();
    let [optimized, plain] = programs.map(|p| {
        p.map(|p| {
            frames
                .iter()
                .map(|fr| {
                    if p.matches(&fr.data, fr.wire_len) {
                        "1\n"
                    } else {
                        "0\n"
                    }
                })
                .collect::<String>()
        })
    });
    (optimized, plain, err)
}

/// A pcap file of `frames` with the given file link type and snapshot length.
fn pcap_of(frames: &[Frame], linktype: u32, snaplen: u32) -> Vec<u8> {
    let header = PcapHeader {
        resolution: TimestampResolution::Micro,
        linktype,
        snaplen,
    };
    let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
    for f in frames {
        w.write(f).unwrap();
    }
    w.finish().unwrap()
}

fn as_capture_frames(frames: &[netmux_testkit::Frame]) -> Vec<Frame> {
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| Frame {
            timestamp: Duration::new(1_700_000_000 + i as u64, 1000 * i as u32),
            data: f.data.clone(),
            wire_len: f.wire_len,
        })
        .collect()
}

#[test]
fn readme_filter_match_gives_libpcaps_verdict_on_every_sample_frame() {
    let frames = capture::read_file(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sample.pcap"))
        .expect("the shipped sample reads");
    // The empty expression accepts every frame, as in tcpdump.
    for expr in ["udp dst port 53", "tcp or arp", "ip6", "not ip", ""] {
        let oracle = BpfProgram::compile(expr, true).expect("libpcap compiles it");
        let expected: String = frames
            .iter()
            .map(|f| format!("{}\n", u8::from(oracle.matches(&f.data, f.wire_len))))
            .collect();
        for engine in ["interp", "jit", "auto"] {
            assert_eq!(
                filter_match(engine, expr),
                expected,
                "`{expr}` with {engine}"
            );
        }
    }
    assert_eq!(
        filter_match("auto", "udp dst port 53"),
        "1\n1\n0\n0\n0\n0\n0\n0\n1\n1\n0\n0\n0\n0\n"
    );
}

/// The first frame where netmux's verdict is neither libpcap's nor, where libpcap's optimizer
/// changed its own verdict, libpcap's unoptimized one (or where the outputs' lengths differ).
fn first_disagreement(ours: &str, optimized: &str, plain: &str) -> Option<usize> {
    let [x, y, z]: [Vec<&str>; 3] = [ours, optimized, plain].map(|s| s.lines().collect());
    (0..x.len().max(y.len())).find(|&i| x.get(i) != y.get(i) && x.get(i) != z.get(i))
}

fn hex(b: &[u8]) -> String {
    b.iter().take(80).map(|x| format!("{x:02x}")).collect()
}

/// Expressions for the file-level tests: names, wrapping indexes, link-layer tests.
const FILE_EXPRS: &[&str] = &[
    "udp",
    "tcp port http",
    "port domain",
    "host localhost or arp",
    "ip[-1] = 0",
    "ip[-2:2] = 0x800",
    "ip6 and not icmp6",
    "ether proto 0x86dd",
    "ether host 00:11:22:33:44:55",
    "broadcast",
    "vlan",
    "less 80",
    "",
];

#[test]
fn match_follows_the_captures_link_layer_as_tcpdump_does() {
    let dir = TempDir::new("cli_filter-links");
    let frames = sample_frames(30, 7);
    for link in LinkType::ALL {
        let relinked: Vec<_> = frames
            .iter()
            .map(|f| relink(f, link.dlt() as i32))
            .collect();
        let mut linktypes = vec![dlt_to_linktype(link.dlt())];
        if link == LinkType::Raw {
            linktypes.push(12); // raw IP as an old libpcap wrote it
        }
        for linktype in linktypes {
            let path = dir.join(format!("{}-{linktype}.pcap", link.name()));
            std::fs::write(&path, pcap_of(&as_capture_frames(&relinked), linktype, 0)).unwrap();
            for expr in FILE_EXPRS {
                let (expected, plain, err) = libpcap_verdicts_both(&path, expr);
                assert!(err.is_none(), "{err:?}");
                let plain = plain.unwrap_or_default();
                let out = netmux(&["filter", "match", expr, path.to_str().unwrap()], None);
                match expected {
                    Some(lines) => {
                        assert!(
                            out.status.success(),
                            "{} `{expr}`: {}",
                            link.name(),
                            stderr(&out)
                        );
                        let ours = stdout(&out);
                        if let Some(i) = first_disagreement(&ours, &lines, &plain) {
                            panic!(
                                "{} (link type {linktype}) `{expr}`: frame {} differs: netmux {:?}, libpcap {:?}\n  {}",
                                link.name(),
                                i + 1,
                                ours.lines().nth(i),
                                lines.lines().nth(i),
                                relinked.get(i).map_or(String::new(), |f| hex(&f.data))
                            );
                        }
                    }
                    None => assert_eq!(
                        out.status.code(),
                        Some(2),
                        "{} `{expr}`: libpcap refuses it, netmux printed {}",
                        link.name(),
                        stdout(&out)
                    ),
                }
            }
        }
    }
}

#[test]
fn records_longer_than_the_snapshot_length_are_cut_as_libpcap_cuts_them() {
    let dir = TempDir::new("cli_filter-snaplen");
    let frames = as_capture_frames(&sample_frames(0, 1));
    // A file whose header says 40 but whose records are whole: libpcap reads 40 bytes of each.
    let mut bytes = pcap_of(&frames, 1, 0);
    bytes[16..20].copy_from_slice(&40u32.to_ne_bytes());
    let path = dir.join("snap40.pcap");
    std::fs::write(&path, &bytes).unwrap();
    for expr in [
        "udp",
        "tcp port 80",
        "ip[9] = 17",
        "len > 60",
        "udp[0:2] = 53",
    ] {
        let (expected, err) = libpcap_verdicts(&path, expr);
        assert!(err.is_none());
        let out = netmux(&["filter", "match", expr, path.to_str().unwrap()], None);
        assert_eq!(stdout(&out), expected.unwrap(), "`{expr}`");
    }
}

#[test]
fn match_reads_standard_input() {
    let sample =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sample.pcap")).unwrap();
    let out = netmux(&["filter", "match", "udp dst port 53", "-"], Some(&sample));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), filter_match("auto", "udp dst port 53"));
}

#[test]
fn a_broken_capture_gets_every_whole_frames_verdict_then_the_error() {
    let sample =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sample.pcap")).unwrap();
    let out = netmux(
        &["filter", "match", "udp dst port 53", "-"],
        Some(&sample[..sample.len() - 5]),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let whole: String = filter_match("auto", "udp dst port 53")
        .lines()
        .take(13)
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(stdout(&out), whole);
    assert!(
        stderr(&out).contains("truncated: frame 14: tried to read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dev_zero_is_refused_at_once() {
    let start = Instant::now();
    let out = netmux(&["filter", "match", "udp", "/dev/zero"], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "netmux: /dev/zero: not a pcap or pcapng capture (the file starts with 00000000)\n"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_capture_of_a_link_layer_netmux_does_not_compile_for_is_refused_by_name() {
    let dir = TempDir::new("cli_filter-null");
    let path = dir.join("null.pcap");
    std::fs::write(
        &path,
        pcap_of(&[Frame::whole(Duration::ZERO, vec![2, 0, 0, 0])], 0, 0),
    )
    .unwrap();
    let out = netmux(&["filter", "match", "ip", path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("link type 0 (NULL) is not supported"),
        "{}",
        stderr(&out)
    );
    // Without an expression there is nothing to compile: every frame is accepted.
    let out = netmux(&["filter", "match", "", path.to_str().unwrap()], None);
    assert_eq!(stdout(&out), "1\n");
}

#[test]
fn names_compile_to_what_tcpdump_compiles_and_compile_says_what_they_became() {
    let out = netmux(
        &["filter", "compile", "tcp port http and not host localhost"],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("; port http = 80/tcp\n; host localhost = 127.0.0.1"),
        "{}",
        stdout(&out)
    );
    for expr in ["tcp port http", "host localhost"] {
        let oracle = BpfProgram::compile(expr, true).unwrap();
        let frames = sample_frames(50, 3);
        let program = netmux_compiler::compile(expr, &Default::default()).unwrap();
        for f in &frames {
            let ours = netmux_vm::interp::run(&program, &f.data, f.wire_len, &mut [0; 16]);
            assert_eq!(
                ours.is_accept(),
                oracle.matches(&f.data, f.wire_len),
                "`{expr}`"
            );
        }
    }
    // libpcap's errors for names it does not know.
    let out = netmux(&["filter", "compile", "udp port http"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("netmux: port 'http' is tcp\n"),
        "{}",
        stderr(&out)
    );
}

/// Whether tcpdump is installed.
fn tcpdump() -> bool {
    Command::new("tcpdump")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn match_w_writes_the_frames_tcpdump_keeps() {
    let dir = TempDir::new("cli_filter-w");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sample.pcap");
    let frames = capture::read_file(&sample).unwrap();
    // Inputs of every kind: the sample, big-endian nanoseconds, pcapng, cooked and raw IP, a
    // snapshot length that cuts records.
    let mut inputs = vec![sample.clone()];
    let big_nano = dir.join("big-nano.pcap");
    let mut b = capture::write_pcap(&frames, TimestampResolution::Nano).unwrap();
    swap_pcap_byte_order(&mut b);
    std::fs::write(&big_nano, b).unwrap();
    inputs.push(big_nano);
    let ng = dir.join("sample.pcapng");
    std::fs::write(&ng, pcapng_of(&frames)).unwrap();
    inputs.push(ng);
    for link in [LinkType::LinuxSll, LinkType::LinuxSll2, LinkType::Raw] {
        let relinked: Vec<Frame> = frames
            .iter()
            .map(|f| {
                let r = relink(
                    &netmux_testkit::Frame {
                        data: f.data.clone(),
                        wire_len: f.wire_len,
                    },
                    link.dlt() as i32,
                );
                Frame {
                    timestamp: f.timestamp,
                    data: r.data,
                    wire_len: r.wire_len,
                }
            })
            .collect();
        let path = dir.join(format!("{}.pcap", link.name()));
        std::fs::write(
            &path,
            pcap_of(&relinked, dlt_to_linktype(link.dlt()), 65535),
        )
        .unwrap();
        inputs.push(path);
    }
    let cut = dir.join("snap60.pcap");
    let mut bytes = capture::write_pcap(&frames, TimestampResolution::Micro).unwrap();
    bytes[16..20].copy_from_slice(&60u32.to_ne_bytes());
    std::fs::write(&cut, bytes).unwrap();
    inputs.push(cut);

    let with_tcpdump = tcpdump();
    for input in &inputs {
        for expr in [
            "udp",
            "tcp port http or arp",
            "ip[-1] = 0",
            "not host localhost",
        ] {
            let ours = dir.join("ours.pcap");
            let out = netmux(
                &[
                    "filter",
                    "match",
                    expr,
                    input.to_str().unwrap(),
                    "-w",
                    ours.to_str().unwrap(),
                ],
                None,
            );
            assert!(
                out.status.success(),
                "{}: {}",
                input.display(),
                stderr(&out)
            );
            assert!(stdout(&out).is_empty());
            // libpcap reads the output back as exactly the frames it keeps of the input.
            let mut f_in = Offline::open(input).unwrap();
            let program = f_in.compile(expr, true).unwrap();
            let kept: Vec<_> = f_in
                .frames()
                .0
                .into_iter()
                .filter(|f| program.matches(&f.data, f.wire_len))
                .collect();
            let mut f_out = Offline::open(&ours).unwrap();
            assert_eq!(
                (f_out.datalink(), f_out.snapshot()),
                (f_in.datalink(), f_in.snapshot())
            );
            assert_eq!(f_out.frames(), (kept, None), "{} `{expr}`", input.display());
            if with_tcpdump {
                let theirs = dir.join("theirs.pcap");
                let t = Command::new("tcpdump")
                    .args([
                        "-r",
                        input.to_str().unwrap(),
                        "-w",
                        theirs.to_str().unwrap(),
                        expr,
                    ])
                    .output()
                    .expect("run tcpdump");
                assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
                assert!(
                    std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
                    "{} `{expr}`: netmux's output differs from tcpdump's",
                    input.display()
                );
            }
        }
    }
}

/// A pcap file in memory turned into the other byte order.
fn swap_pcap_byte_order(b: &mut [u8]) {
    let swap4 = |b: &mut [u8], at: usize| b[at..at + 4].reverse();
    let swap2 = |b: &mut [u8], at: usize| b[at..at + 2].reverse();
    swap4(b, 0);
    swap2(b, 4);
    swap2(b, 6);
    for at in [8, 12, 16, 20] {
        swap4(b, at);
    }
    let mut at = 24;
    while at + 16 <= b.len() {
        let caplen = u32::from_ne_bytes([b[at + 8], b[at + 9], b[at + 10], b[at + 11]]) as usize;
        for f in 0..4 {
            swap4(b, at + 4 * f);
        }
        at += 16 + caplen;
    }
}

/// A pcapng file of Ethernet `frames`, nanosecond timestamps.
fn pcapng_of(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut block = |ty: u32, body: &[u8]| {
        let total = 12 + body.len().div_ceil(4) * 4;
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(&(total as u32).to_ne_bytes());
        out.extend_from_slice(body);
        out.resize(out.len() + total - 12 - body.len(), 0);
        out.extend_from_slice(&(total as u32).to_ne_bytes());
    };
    let mut shb = 0x1a2b_3c4du32.to_ne_bytes().to_vec();
    shb.extend_from_slice(&[1, 0, 0, 0]);
    shb.extend_from_slice(&u64::MAX.to_ne_bytes());
    block(0x0a0d_0d0a, &shb);
    let mut idb = vec![1, 0, 0, 0];
    idb.extend_from_slice(&0u32.to_ne_bytes());
    idb.extend_from_slice(&[9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
    block(1, &idb);
    for f in frames {
        let t = f.timestamp.as_nanos() as u64;
        let mut epb = 0u32.to_ne_bytes().to_vec();
        epb.extend_from_slice(&((t >> 32) as u32).to_ne_bytes());
        epb.extend_from_slice(&(t as u32).to_ne_bytes());
        epb.extend_from_slice(&(f.data.len() as u32).to_ne_bytes());
        epb.extend_from_slice(&f.wire_len.to_ne_bytes());
        epb.extend_from_slice(&f.data);
        block(6, &epb);
    }
    out
}

/// The peak resident memory of a running process, in KiB, as the kernel reports it.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_large_capture_streams_in_constant_memory() {
    let size: u64 = std::env::var("NETMUX_STREAM_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128 << 20);
    let dir = TempDir::new("cli_filter-stream");
    let path = dir.join("big.pcap");
    // Full-size UDP frames, so the file is large for few frames.
    let frame = sample_frames(0, 1)
        .into_iter()
        .find(|f| f.data.len() > 60)
        .expect("a frame");
    let mut data = frame.data.clone();
    data.resize(1514, 0xab);
    let mut record = Vec::new();
    record.extend_from_slice(&1u32.to_ne_bytes());
    record.extend_from_slice(&0u32.to_ne_bytes());
    record.extend_from_slice(&(data.len() as u32).to_ne_bytes());
    record.extend_from_slice(&(data.len() as u32).to_ne_bytes());
    record.extend_from_slice(&data);
    let frames = size / record.len() as u64;
    {
        let mut w =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
        w.write_all(&pcap_of(&[], 1, 0)).unwrap();
        for _ in 0..frames {
            w.write_all(&record).unwrap();
        }
        w.flush().unwrap();
    }
    let start = Instant::now();
    let mut child = Command::new(NETMUX)
        .args(["filter", "match", "udp", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = child.stdout.take().unwrap();
    let counter = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut lines = 0u64;
        loop {
            match std::io::Read::read(&mut out, &mut buf) {
                Ok(0) | Err(_) => return lines,
                Ok(n) => lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64,
            }
        }
    });
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let lines = counter.join().unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(lines, frames);
    eprintln!(
        "{} MiB capture, {frames} frames: peak RSS {peak} KiB, {:.1} s",
        size >> 20,
        start.elapsed().as_secs_f64()
    );
    // Constant memory: far below the file's size, and what a small capture takes.
    assert!(
        peak > 0 && peak < 48 * 1024,
        "peak RSS {peak} KiB for a {} MiB capture",
        size >> 20
    );
    drop(dir);
}

/// The corpus expressions, and `NETMUX_RANDOM_EXPRS` (default 200) generated ones with names
/// and wrapping indexes, each run through the binary over every corpus capture at once and
/// compared with libpcap reading each file.
#[test]
#[ignore = "needs the conformance corpus ($NETMUX_CONFORMANCE_DIR or ../shared/conformance)"]
fn filter_match_agrees_with_libpcap_on_every_frame_of_every_corpus_capture() {
    let dir = corpus::conformance_dir().expect("conformance corpus not found");
    let files = corpus::capture_paths(&dir.join("pcap")).unwrap();
    let public = corpus::exprs(&dir).unwrap();
    let seed = netmux_testkit::seed(
        "filter_match_agrees_with_libpcap_on_every_frame_of_every_corpus_capture",
    );
    let count: usize = std::env::var("NETMUX_RANDOM_EXPRS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    eprintln!(
        "corpus: {} captures, {} public expressions, {count} generated (NETMUX_SEED={seed})",
        files.len(),
        public.len()
    );
    let mut gen = ExprGen::new(seed);
    let generated: Vec<String> = (0..count).map(|_| gen.expr(2)).collect();

    // libpcap's frames of each file, read once.
    let mut handles: Vec<(&Path, Offline, Vec<netmux_testkit::OfflineFrame>)> = files
        .iter()
        .map(|p| {
            let mut h = Offline::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let (frames, err) = h.frames();
            assert!(err.is_none(), "{}: {err:?}", p.display());
            (p.as_path(), h, frames)
        })
        .collect();
    let args: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    let (mut bad, mut frames_compared, mut divergences) = (Vec::new(), 0usize, 0usize);
    for (expr, exact) in public
        .iter()
        .map(|e| (e.as_str(), true))
        .chain(generated.iter().map(|e| (e.as_str(), false)))
    {
        let mut cmd = vec!["filter", "match", "--", expr];
        cmd.extend(&args);
        let out = netmux(&cmd, None);
        let theirs = handles[0].1.compile(expr, true);
        if theirs.is_err() || !out.status.success() {
            if theirs.is_ok() != out.status.success() {
                bad.push(format!(
                    "`{expr}`: libpcap {:?}, netmux {}",
                    theirs.err(),
                    stderr(&out)
                ));
            }
            continue;
        }
        let ours = stdout(&out);
        let mut lines = ours.lines();
        let plain = handles[0].1.compile(expr, false).ok();
        let ours_program = netmux_compiler::compile(expr, &Default::default()).ok();
        for (path, h, frames) in handles.iter_mut() {
            // As tcpdump: compiled on the file's own handle.
            let program = h.compile(expr, true).unwrap();
            for f in frames.iter() {
                frames_compared += 1;
                let want = program.matches(&f.data, f.wire_len);
                let got = lines.next() == Some("1");
                if got != want {
                    // The documented -O1 difference: libpcap's optimizer changed its own
                    // verdict on a truncated frame, and netmux gives the unoptimized one.
                    let unoptimized = plain.as_ref().map(|p| p.matches(&f.data, f.wire_len));
                    let folded = plain
                        .as_ref()
                        .map(|p| p.matches_folding_wrapped_indexes(&f.data, f.wire_len));
                    let deleted = !got
                        && ours_program.as_ref().is_some_and(|o| {
                            netmux_testkit::oracle::kept_a_deleted_wrapped_load(o, &program)
                        });
                    let unfolded = netmux_testkit::oracle::left_a_wrapped_index_unfolded(&program);
                    if !exact
                        && (unoptimized == Some(got) || folded == Some(got) || deleted || unfolded)
                    {
                        divergences += 1;
                        continue;
                    }
                    bad.push(format!(
                        "`{expr}`: a frame of {}: netmux {got}, libpcap {want}",
                        path.display()
                    ));
                    break;
                }
            }
        }
    }
    eprintln!("{frames_compared} verdicts compared; {divergences} where libpcap's optimizer changed its own verdict (documented)");
    assert!(
        bad.is_empty(),
        "{} disagreements:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
