//! libpcap as the oracle: `pcap_compile` on a dead Ethernet handle, `bpf_filter` to run.
//!
//! Every netmux filter verdict is compared with what this module says, so it does exactly what
//! `tcpdump -r` would do: compile with `pcap_compile` on a `pcap_open_dead(DLT_EN10MB, 262144)`
//! handle with netmask `PCAP_NETMASK_UNKNOWN`, then run the program with `bpf_filter(insns,
//! frame, wire_len, captured_len)`, which is what `pcap_offline_filter` calls.
//!
//! For other link layers, [`BpfProgram::compile_for`] compiles on a dead handle of that link
//! type, and [`Offline`] reads a capture file with libpcap itself (`pcap_open_offline`,
//! `pcap_next_ex`) and compiles on its handle: exactly `tcpdump -r FILE EXPR`, the file's link
//! type, snapshot length and record checks included.
//!
//! Guarantees: `pcap_compile` and `bpf_image` (which use global state in older libpcaps) are
//! only ever called under one process-wide mutex; a [`BpfProgram`] frees its code exactly once;
//! running a program never touches memory outside the frame slice (libpcap checks every load
//! against the captured length it is given, which is the slice's length).

use std::ffi::{c_char, c_int, c_uint, CStr, CString};
use std::sync::Mutex;

/// libpcap's link type for Ethernet.
pub const DLT_EN10MB: c_int = 1;
/// The snapshot length tcpdump uses by default; libpcap's code generator reads it.
pub const SNAPLEN: c_int = 262_144;
/// `PCAP_NETMASK_UNKNOWN`: no netmask, so `ip broadcast` is an error, as in tcpdump offline.
pub const PCAP_NETMASK_UNKNOWN: u32 = 0xffff_ffff;

/// One classic BPF instruction, laid out as libpcap's `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BpfInsn {
    /// Opcode (class | size | mode, or class | op | source).
    pub code: u16,
    /// Jump offset when true.
    pub jt: u8,
    /// Jump offset when false.
    pub jf: u8,
    /// The constant.
    pub k: u32,
}

#[repr(C)]
struct RawProgram {
    bf_len: c_uint,
    bf_insns: *mut BpfInsn,
}

#[repr(C)]
struct PcapT {
    _private: [u8; 0],
}

/// libpcap's `struct pcap_pkthdr` on Linux.
#[repr(C)]
struct PktHdr {
    ts: libc::timeval,
    caplen: u32,
    len: u32,
}

#[link(name = "pcap")]
extern "C" {
    fn pcap_open_dead(linktype: c_int, snaplen: c_int) -> *mut PcapT;
    fn pcap_open_offline(fname: *const c_char, errbuf: *mut c_char) -> *mut PcapT;
    fn pcap_next_ex(p: *mut PcapT, hdr: *mut *mut PktHdr, data: *mut *const u8) -> c_int;
    fn pcap_datalink(p: *mut PcapT) -> c_int;
    fn pcap_snapshot(p: *mut PcapT) -> c_int;
    fn pcap_close(p: *mut PcapT);
    fn pcap_geterr(p: *mut PcapT) -> *mut c_char;
    fn pcap_compile(
        p: *mut PcapT,
        prog: *mut RawProgram,
        expr: *const c_char,
        optimize: c_int,
        netmask: u32,
    ) -> c_int;
    fn pcap_freecode(prog: *mut RawProgram);
    fn bpf_filter(insns: *const BpfInsn, pkt: *const u8, wirelen: c_uint, buflen: c_uint)
        -> c_uint;
    fn bpf_image(insn: *const BpfInsn, n: c_int) -> *mut c_char;
}

/// Why libpcap did not give a program.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OracleError {
    /// The expression contains a NUL byte, which C strings cannot carry.
    #[error("the expression contains a NUL byte")]
    NulInExpression,
    /// `pcap_open_dead` failed (out of memory).
    #[error("pcap_open_dead failed")]
    OpenDead,
    /// `pcap_compile` rejected the expression; the text is `pcap_geterr`'s message.
    #[error("{0}")]
    Compile(String),
}

/// The dead Ethernet handle, created once and used only under [`LIBPCAP`].
struct DeadHandle(*mut PcapT);

// SAFETY: the handle is only ever used while holding the `LIBPCAP` mutex, so it is never used
// from two threads at once; libpcap handles carry no thread affinity.
unsafe impl Send for DeadHandle {}

impl Drop for DeadHandle {
    fn drop(&mut self) {
        // SAFETY: the pointer came from pcap_open_dead and is closed exactly once, here.
        unsafe { pcap_close(self.0) }
    }
}

/// Serialises every call into libpcap's compiler and `bpf_image` (not thread-safe before
/// libpcap 1.8/1.10) and holds the dead handles they use, one per link type.
static LIBPCAP: Mutex<Vec<(c_int, DeadHandle)>> = Mutex::new(Vec::new());

/// A program libpcap compiled; freed with `pcap_freecode` on drop.
#[derive(Debug)]
pub struct BpfProgram {
    raw: RawProgram,
}

impl std::fmt::Debug for RawProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawProgram({} insns)", self.bf_len)
    }
}

// SAFETY: a compiled program is plain owned memory (an array of bpf_insn) that nothing else
// references; `bpf_filter` only reads it, so sharing it between threads is sound.
unsafe impl Send for BpfProgram {}
// SAFETY: see above: after compilation the program is never written until it is freed.
unsafe impl Sync for BpfProgram {}

impl BpfProgram {
    /// Compiles `expr` with libpcap for Ethernet, with or without libpcap's optimizer.
    pub fn compile(expr: &str, optimize: bool) -> Result<BpfProgram, OracleError> {
        BpfProgram::compile_for(expr, optimize, DLT_EN10MB)
    }

    /// Compiles `expr` with libpcap for the link type `dlt` (a `DLT_` value).
    pub fn compile_for(expr: &str, optimize: bool, dlt: c_int) -> Result<BpfProgram, OracleError> {
        let c_expr = CString::new(expr).map_err(|_| OracleError::NulInExpression)?;
        let mut guard = LIBPCAP.lock().unwrap_or_else(|e| e.into_inner());
        let handle = match guard.iter().find(|(d, _)| *d == dlt) {
            Some((_, h)) => h.0,
            None => {
                // SAFETY: plain constructor call with valid arguments.
                let p = unsafe { pcap_open_dead(dlt, SNAPLEN) };
                if p.is_null() {
                    return Err(OracleError::OpenDead);
                }
                guard.push((dlt, DeadHandle(p)));
                p
            }
        };
        // SAFETY: `handle` is a live pcap_t used only under the mutex we hold.
        unsafe { compile_on(handle, &c_expr, optimize) }
    }

    /// The compiled instructions.
    pub fn insns(&self) -> &[BpfInsn] {
        if self.raw.bf_insns.is_null() {
            return &[];
        }
        // SAFETY: pcap_compile filled bf_insns with bf_len instructions that live until
        // pcap_freecode in our Drop.
        unsafe { std::slice::from_raw_parts(self.raw.bf_insns, self.raw.bf_len as usize) }
    }

    /// Runs the program as `pcap_offline_filter` does: `frame` is the captured bytes, `wire_len`
    /// the length on the wire. Returns libpcap's return value (0 = reject).
    pub fn run(&self, frame: &[u8], wire_len: u32) -> u32 {
        let insns = self.insns();
        if insns.is_empty() {
            return 0;
        }
        let buflen = c_uint::try_from(frame.len()).unwrap_or(c_uint::MAX);
        // SAFETY: `insns` is a valid program from pcap_compile; bpf_filter reads at most
        // `buflen` bytes from `frame`, which is exactly the slice's length.
        unsafe { bpf_filter(insns.as_ptr(), frame.as_ptr(), wire_len, buflen) }
    }

    /// Whether libpcap accepts the frame.
    pub fn matches(&self, frame: &[u8], wire_len: u32) -> bool {
        self.run(frame, wire_len) != 0
    }

    /// Whether the program accepts the frame when every register-relative load adds its offset
    /// in 32 bits before the bounds check (`ld [x + k]` with `x + k` wrapping), as libpcap's
    /// optimizer folds a wrapped constant index into the offset (`ip6[0xfffffff2]` becomes
    /// `ether[0]`); `bpf_filter` itself refuses such a load as out of bounds. Otherwise exactly
    /// `bpf_filter`. Run on libpcap's unoptimized program, it gives the verdict netmux
    /// documents for `-O1`: libpcap's unoptimized one, with wrapped indexes folded.
    pub fn matches_folding_wrapped_indexes(&self, frame: &[u8], wire_len: u32) -> bool {
        classic_run(self.insns(), frame, wire_len).0 != 0
    }

    /// Whether running the program on the frame adds a register-relative load's offset past
    /// 2^32 (where [`Self::matches_folding_wrapped_indexes`] and `bpf_filter` part ways).
    pub fn wraps_an_index(&self, frame: &[u8], wire_len: u32) -> bool {
        classic_run(self.insns(), frame, wire_len).1
    }

    /// The program as text, one `bpf_image` line per instruction (as `tcpdump -d` prints it).
    pub fn image(&self) -> String {
        let _guard = LIBPCAP.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (n, insn) in self.insns().iter().enumerate() {
            // SAFETY: bpf_image formats one instruction into a static buffer and returns it;
            // we hold the mutex, so no other thread overwrites the buffer before we copy it.
            let line = unsafe { CStr::from_ptr(bpf_image(insn, n as c_int)) };
            out.push_str(&line.to_string_lossy());
            out.push('\n');
        }
        out
    }
}

impl Drop for BpfProgram {
    fn drop(&mut self) {
        // SAFETY: `raw` came from a successful pcap_compile and is freed exactly once, here.
        // pcap_freecode needs no lock: it only frees this program's own array.
        unsafe { pcap_freecode(&mut self.raw) }
    }
}

/// Compiles `expr` on `handle`.
///
/// # Safety
/// `handle` must be a live pcap_t that no other thread uses during the call (callers hold
/// [`LIBPCAP`] or own the handle).
unsafe fn compile_on(
    handle: *mut PcapT,
    expr: &CStr,
    optimize: bool,
) -> Result<BpfProgram, OracleError> {
    let mut raw = RawProgram {
        bf_len: 0,
        bf_insns: std::ptr::null_mut(),
    };
    // SAFETY: per this function's contract `handle` is live and ours; `raw` is a valid
    // out-parameter and `expr` a NUL-terminated string that outlives the call.
    let rc = unsafe {
        pcap_compile(
            handle,
            &mut raw,
            expr.as_ptr(),
            c_int::from(optimize),
            PCAP_NETMASK_UNKNOWN,
        )
    };
    if rc != 0 {
        // SAFETY: pcap_geterr returns a NUL-terminated buffer inside the handle, valid until
        // the next call on the handle; we copy it at once.
        let msg = unsafe { CStr::from_ptr(pcap_geterr(handle)) }
            .to_string_lossy()
            .into_owned();
        return Err(OracleError::Compile(msg));
    }
    Ok(BpfProgram { raw })
}

/// A capture file opened by libpcap itself, as `tcpdump -r` opens it.
#[derive(Debug)]
pub struct Offline {
    handle: *mut PcapT,
}

/// One record as libpcap hands it to `tcpdump`: the bytes (cut to the snapshot length), the
/// wire length and the timestamp in microseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineFrame {
    /// The captured bytes.
    pub data: Vec<u8>,
    /// The length on the wire.
    pub wire_len: u32,
    /// Seconds.
    pub ts_sec: i64,
    /// Microseconds.
    pub ts_usec: i64,
}

impl Offline {
    /// Opens `path` (`pcap_open_offline`); `Err` is libpcap's message.
    pub fn open(path: &std::path::Path) -> Result<Offline, String> {
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| "the path contains a NUL byte".to_owned())?;
        let mut errbuf = [0 as c_char; 256];
        // SAFETY: valid NUL-terminated path and an error buffer of PCAP_ERRBUF_SIZE bytes.
        let handle = unsafe { pcap_open_offline(c_path.as_ptr(), errbuf.as_mut_ptr()) };
        if handle.is_null() {
            // SAFETY: libpcap wrote a NUL-terminated message into errbuf.
            let msg = unsafe { CStr::from_ptr(errbuf.as_ptr()) };
            return Err(msg.to_string_lossy().into_owned());
        }
        Ok(Offline { handle })
    }

    /// The capture's `DLT_` value.
    pub fn datalink(&self) -> c_int {
        // SAFETY: a live handle we own.
        unsafe { pcap_datalink(self.handle) }
    }

    /// The capture's snapshot length as libpcap adjusted it.
    pub fn snapshot(&self) -> c_int {
        // SAFETY: a live handle we own.
        unsafe { pcap_snapshot(self.handle) }
    }

    /// Compiles `expr` for this capture, as `tcpdump -r` does.
    pub fn compile(&self, expr: &str, optimize: bool) -> Result<BpfProgram, OracleError> {
        let c_expr = CString::new(expr).map_err(|_| OracleError::NulInExpression)?;
        let _guard = LIBPCAP.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the handle is ours and, with the compiler lock held, used by no one else.
        unsafe { compile_on(self.handle, &c_expr, optimize) }
    }

    /// Every record, then `Err(message)` if libpcap stopped on an error rather than at the end.
    pub fn frames(&mut self) -> (Vec<OfflineFrame>, Option<String>) {
        let mut out = Vec::new();
        loop {
            let mut hdr: *mut PktHdr = std::ptr::null_mut();
            let mut data: *const u8 = std::ptr::null();
            // SAFETY: a live handle we own; libpcap fills the two out-pointers.
            let rc = unsafe { pcap_next_ex(self.handle, &mut hdr, &mut data) };
            match rc {
                1 => {
                    // SAFETY: on 1, hdr and data point at the record, valid until the next
                    // call; data holds hdr.caplen bytes. We copy them now.
                    let (h, bytes) = unsafe {
                        let h = &*hdr;
                        (h, std::slice::from_raw_parts(data, h.caplen as usize))
                    };
                    out.push(OfflineFrame {
                        data: bytes.to_vec(),
                        wire_len: h.len,
                        ts_sec: h.ts.tv_sec,
                        ts_usec: h.ts.tv_usec,
                    });
                }
                -2 => return (out, None),
                _ => {
                    // SAFETY: the handle's error buffer, NUL-terminated.
                    let msg = unsafe { CStr::from_ptr(pcap_geterr(self.handle)) };
                    return (out, Some(msg.to_string_lossy().into_owned()));
                }
            }
        }
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        // SAFETY: opened by pcap_open_offline and closed exactly once, here.
        unsafe { pcap_close(self.handle) }
    }
}

/// Whether netmux's program keeps a load at a wrapped offset (`tcp[-40]`: the header length
/// plus `14 - 40` in 32 bits, as libpcap's `opt_peep` folds it) that libpcap's optimized program
/// no longer has: libpcap deleted it as a load whose outcome did not matter, netmux (which
/// never deletes a load that can fail) kept it with its folded meaning, and rejects the frames
/// it does not fit where libpcap's unoptimized program (which adds without folding) may not.
/// A differential test takes a frame netmux rejects and libpcap accepts for such a program as
/// the documented `-O1` difference.
pub fn kept_a_deleted_wrapped_load(ours: &netmux_vm::Program, theirs: &BpfProgram) -> bool {
    use netmux_vm::isa::Opcode;
    let wrapped = |k: u32| k >= 0x8000_0000;
    let ours = ours
        .insns()
        .iter()
        .filter(|i| {
            matches!(i.op, Opcode::LdIndB | Opcode::LdIndH | Opcode::LdIndW) && wrapped(i.k)
        })
        .count();
    // BPF_LD | BPF_IND | size.
    let theirs = theirs
        .insns()
        .iter()
        .filter(|i| i.code & 0xe7 == 0x40 && wrapped(i.k))
        .count();
    ours > theirs
}

/// Whether libpcap's optimized program left a wrapped constant index after the IPv4 header
/// unfolded: `ld #k` (k at least 2^31, `tcp[-14]`), then `add x; tax; ld [x + off]`, where its
/// `opt_peep` usually makes `ld [x + (off + k)]`. It leaves it when the X register is still in
/// use after the block (a value its optimizer shares between blocks), which netmux does not
/// model: netmux gives such an index the folded meaning. A differential test takes a frame
/// where this changes the verdict as the documented `-O1` difference.
pub fn left_a_wrapped_index_unfolded(theirs: &BpfProgram) -> bool {
    const LD_IMM: u16 = 0x00;
    const LDX_MSH_B: u16 = 0xb1;
    const ADD_X: u16 = 0x0c;
    const TAX: u16 = 0x07;
    let insns = theirs.insns();
    insns.iter().enumerate().any(|(i, ld)| {
        if ld.code != LD_IMM || ld.k < 0x8000_0000 {
            return false;
        }
        let mut rest = insns[i + 1..].iter().map(|x| x.code);
        let mut next = rest.next();
        if next == Some(LDX_MSH_B) {
            next = rest.next();
        }
        next == Some(ADD_X)
            && rest.next() == Some(TAX)
            && rest.next().is_some_and(|c| c & 0xe7 == 0x40)
    })
}

/// Compiles with libpcap's optimizer on, as the conformance corpus demands.
pub fn compile(expr: &str) -> Result<BpfProgram, OracleError> {
    BpfProgram::compile(expr, true)
}

/// A classic BPF interpreter with `bpf_filter`'s semantics, except that a register-relative
/// load's offset wraps in 32 bits ([`BpfProgram::matches_folding_wrapped_indexes`]).
/// Returns the program's value and whether an offset wrapped.
fn classic_run(insns: &[BpfInsn], p: &[u8], wire_len: u32) -> (u32, bool) {
    let (mut a, mut x) = (0u32, 0u32);
    let mut wrapped = false;
    let mut mem = [0u32; 16];
    let load = |k: u32, size: u32| -> Option<u32> {
        let k = usize::try_from(k).ok()?;
        let bytes = p.get(k..k.checked_add(size as usize)?)?;
        Some(bytes.iter().fold(0u32, |v, &b| (v << 8) | u32::from(b)))
    };
    let mut pc = 0usize;
    while let Some(i) = insns.get(pc) {
        pc += 1;
        let k = i.k;
        let size = match i.code & 0x18 {
            0x00 => 4,
            0x08 => 2,
            _ => 1,
        };
        match i.code & 0x07 {
            // LD
            0x00 => {
                a = match i.code & 0xe0 {
                    0x00 => k,
                    0x20 => match load(k, size) {
                        Some(v) => v,
                        None => return (0, wrapped),
                    },
                    0x40 => {
                        wrapped |= x.checked_add(k).is_none();
                        match load(x.wrapping_add(k), size) {
                            Some(v) => v,
                            None => return (0, wrapped),
                        }
                    }
                    0x60 => mem[(k & 15) as usize],
                    0x80 => wire_len,
                    _ => return (0, wrapped),
                }
            }
            // LDX
            0x01 => {
                x = match i.code & 0xe0 {
                    0x00 => k,
                    0x60 => mem[(k & 15) as usize],
                    0x80 => wire_len,
                    0xa0 => match load(k, 1) {
                        Some(v) => (v & 0xf) << 2,
                        None => return (0, wrapped),
                    },
                    _ => return (0, wrapped),
                }
            }
            0x02 => mem[(k & 15) as usize] = a,
            0x03 => mem[(k & 15) as usize] = x,
            // ALU
            0x04 => {
                let v = if i.code & 0x08 != 0 { x } else { k };
                a = match i.code & 0xf0 {
                    0x00 => a.wrapping_add(v),
                    0x10 => a.wrapping_sub(v),
                    0x20 => a.wrapping_mul(v),
                    0x30 if v == 0 => return (0, wrapped),
                    0x30 => a / v,
                    0x40 => a | v,
                    0x50 => a & v,
                    0x60 => a.checked_shl(v).unwrap_or(0),
                    0x70 => a.checked_shr(v).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    0x90 if v == 0 => return (0, wrapped),
                    0x90 => a % v,
                    0xa0 => a ^ v,
                    _ => return (0, wrapped),
                }
            }
            // JMP
            0x05 => {
                let v = if i.code & 0x08 != 0 { x } else { k };
                let taken = match i.code & 0xf0 {
                    // Signed, as `bpf_filter` takes it: `protochain` jumps back.
                    0x00 => {
                        pc = pc.wrapping_add_signed(k as i32 as isize);
                        continue;
                    }
                    0x10 => a == v,
                    0x20 => a > v,
                    0x30 => a >= v,
                    0x40 => a & v != 0,
                    _ => return (0, wrapped),
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            // RET
            0x06 => {
                let value = match i.code & 0x18 {
                    0x00 => k,
                    0x10 => a,
                    _ => x,
                };
                return (value, wrapped);
            }
            // MISC
            _ => {
                if i.code & 0xf8 == 0x80 {
                    a = x;
                } else {
                    x = a;
                }
            }
        }
    }
    (0, wrapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_and_runs_a_simple_filter() {
        let p = compile("ether[0] = 1").unwrap();
        assert!(p.matches(&[1, 2, 3], 60));
        assert!(!p.matches(&[2, 2, 3], 60));
        assert!(!p.matches(&[], 60), "an out-of-bounds load rejects");
        assert!(p.image().contains("ldb"));
    }

    #[test]
    fn reports_libpcap_errors() {
        let e = compile("tcp port 65536").unwrap_err();
        assert!(
            matches!(e, OracleError::Compile(ref m) if m.contains("port")),
            "{e}"
        );
        assert_eq!(compile("a\0b").unwrap_err(), OracleError::NulInExpression);
    }

    #[test]
    fn less_uses_the_wire_length() {
        let p = compile("less 64").unwrap();
        assert!(p.matches(&[0; 10], 64));
        assert!(!p.matches(&[0; 10], 65));
    }

    #[test]
    fn compiling_from_many_threads_is_serialised() {
        let handles: Vec<_> = (0..4)
            .map(|i| std::thread::spawn(move || compile(&format!("udp port {}", 50 + i)).is_ok()))
            .collect();
        for h in handles {
            assert!(h.join().unwrap());
        }
    }
}
