//! The Cranelift JIT: native code for a verified program, with the interpreter's verdict on
//! every frame.
//!
//! [`JitEngine::new`] translates a [`Program`] into one Cranelift function and compiles it with
//! `cranelift-jit` into memory the engine owns. The translation follows [`crate::interp`]
//! instruction by instruction, so the semantics are the interpreter's:
//!
//! * every frame load is bounds-checked against the captured length; the offset `rS + k` is
//!   computed in 64 bits, so it cannot wrap around; a load out of bounds returns *reject*;
//! * division and modulo by a register holding zero branch to *reject* before the `udiv` /
//!   `urem`, so the native code never traps;
//! * a shift by a register holding 32 or more gives 0 (a `select` around Cranelift's masked
//!   shift);
//! * scratch memory is the caller's `&mut Scratch`: every `stm` stores to it and every `ldm`
//!   loads from it, so after a run it holds what the interpreter would leave there;
//! * `lookup` calls `lookup_helper`, an `extern "C"` Rust function that reads the program's
//!   tables through a pointer passed *at each call* from `&self`: tables stay updatable with
//!   [`Engine::table_mut`] (which needs `&mut self`, so no run can be in progress) and are
//!   never copied into the code;
//! * each register is a Cranelift `Variable`; instructions no path reaches are not translated.
//!
//! # Bounds-check elimination
//!
//! A load `[k]` of `n` bytes that succeeds proves the captured length is at least `k + n`
//! (and `[rS + k]` proves at least `k + n` too). Jumps go forward only, so one pass in program
//! order computes, for every instruction, the length proven on *every* path reaching it; a
//! constant-offset load inside that proven length needs no check of its own. (A speculative
//! second body without checks for frames longer than the largest constant offset was tried: it
//! doubled compile time and gained nothing measurable, since a well-predicted compare and
//! branch costs about a cycle.)
//!
//! # Compile time
//!
//! The host ISA is detected once per process; the Cranelift contexts are reused per thread;
//! Cranelift runs at `opt_level = none`: the translation already emits what its e-graph pass
//! would leave (no redundant values, no loops to hoist from), and lowering still fuses
//! comparisons into branches. Each compiled function gets its own `JITModule`, whose memory is
//! freed when the last engine using it is dropped.
//!
//! # Shared code
//!
//! The native code depends only on the instructions and on each table's key width, never on
//! the tables' contents (they are read through the pointer passed at each call). So engines of
//! programs with the same instructions and table shapes share one compiled function: compiled
//! once, kept while an engine uses it ([`SHARED`]). The merged classifier's generic program,
//! one per network stack instance, is the case that matters: every instance runs the same
//! native code over its own tables, and creating an instance compiles nothing.
//!
//! # What the native code relies on (the verifier's invariants)
//!
//! `unsafe` here is the call into generated code and the helper's pointer reads. They are
//! sound because [`Program`] is only ever produced by [`crate::verify`], which guarantees:
//! every jump goes forward to an instruction inside the program and no path falls off the end
//! (so the generated code has no loops and always returns); scratch slots are below
//! [`NUM_SLOTS`] (so scratch accesses stay inside the caller's array); every `lookup` names an
//! existing table and its key registers lie inside the register file (so the helper's table
//! index and key words are in bounds); constant divisors are non-zero and constant shifts are
//! below 32 (so no Cranelift instruction traps). Registers and slots are written before read on
//! every path, so no result depends on an initial value. Frame loads are never trusted: each one
//! is checked against the length of the `&[u8]` passed to the run, or lies inside a length an
//! earlier check on every path already proved.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, Block, BlockArg, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind,
    Type, Value,
};
use cranelift_codegen::isa::{OwnedTargetIsa, TargetFrontendConfig};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Module};

use crate::engine::{Engine, EngineError, EngineKind, Scratch};
use crate::isa::{Insn, Opcode, Verdict, NUM_REGS, NUM_SLOTS};
use crate::program::{Program, TableMut};
use crate::table::{Table, MAX_KEY_WORDS};

/// The signature of a compiled program.
///
/// Arguments: the frame's first byte, its captured length, its wire length, the scratch array
/// (`NUM_SLOTS` words), the program's tables (`Program::tables().as_ptr()`). The result is 0 for
/// reject and `ACCEPT_FLAG | value` for accept.
type NativeFilter = unsafe extern "C" fn(
    frame: *const u8,
    caplen: usize,
    wire_len: u32,
    scratch: *mut u32,
    tables: *const Table,
) -> u64;

/// Set in a native result for accept; the low 32 bits are the value.
const ACCEPT_FLAG: u64 = 1 << 32;

/// Reads table `index` of `tables` at the key in `key`; the `lookup` instruction's semantics.
///
/// # Safety
///
/// `tables` points to a live slice of tables with more than `index` elements, and `key` to at
/// least that table's key width of `u32`s. Native code calls it only with the pointer
/// [`JitEngine::run_with_scratch`] passed in (borrowed from `&self`, so no table can be
/// changed or freed during the run), an index the verifier checked, and a stack slot of
/// [`MAX_KEY_WORDS`] words.
unsafe extern "C" fn lookup_helper(tables: *const Table, index: u32, key: *const u32) -> u32 {
    // SAFETY: the caller guarantees `tables` has more than `index` elements (verifier
    // invariant: `lookup` names an existing table; the table count never changes).
    let table = unsafe { &*tables.add(index as usize) };
    let words = table.key_words();
    // SAFETY: `key` points to a stack slot of MAX_KEY_WORDS >= words initialised words.
    let key = unsafe { std::slice::from_raw_parts(key, words.min(MAX_KEY_WORDS)) };
    table.get(key)
}

/// The compiled code and the module that owns its memory.
struct NativeCode {
    /// `Some` until `Drop` frees it.
    module: Option<JITModule>,
    entry: NativeFilter,
}

// SAFETY: after compilation the module is never used through a shared reference: `entry` is a
// plain function pointer into memory the module keeps mapped (read-only and executable) until
// `Drop`, and calling it touches no state of the module. The module itself is only touched
// again in `Drop`, through `&mut self`, which is exclusive; it holds no thread-bound resources
// (its memory is an anonymous mapping that any thread may unmap).
unsafe impl Send for NativeCode {}
// SAFETY: see `Send`: `&NativeCode` only gives access to `entry`, a pointer to immutable code.
unsafe impl Sync for NativeCode {}

impl Drop for NativeCode {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: `entry` is the only pointer into this memory, it is owned by `self`, and
            // `&mut self` means no run is in progress; nothing calls it after this.
            unsafe { module.free_memory() };
        }
    }
}

/// Native code for one verified program. See the module documentation.
pub struct JitEngine {
    program: Program,
    code: Arc<NativeCode>,
}

/// Compiled code by what it depends on (see "Shared code" in the module documentation): the
/// encoded instructions followed by each table's key width. Entries whose code every engine
/// dropped are pruned when the map has doubled since the last pruning.
static SHARED: Mutex<SharedCode> = Mutex::new(SharedCode {
    map: None,
    prune_at: 64,
});

struct SharedCode {
    map: Option<HashMap<Vec<u8>, Weak<NativeCode>>>,
    prune_at: usize,
}

/// What a program's native code depends on.
fn code_key(program: &Program) -> Vec<u8> {
    let mut key = crate::program::encode(program.insns(), &[]);
    key.extend(program.tables().iter().map(|t| t.key_words() as u8));
    key
}

impl std::fmt::Debug for JitEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitEngine")
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

/// The host ISA, built once: detecting CPU features on every compile would cost more than
/// compiling a small filter.
fn host_isa() -> Result<OwnedTargetIsa, EngineError> {
    static ISA: OnceLock<Result<OwnedTargetIsa, String>> = OnceLock::new();
    ISA.get_or_init(|| {
        let mut flags = settings::builder();
        let set = |flags: &mut settings::Builder, name: &str, value: &str| {
            flags
                .set(name, value)
                .map_err(|e| format!("cranelift setting {name}={value}: {e}"))
        };
        // See "Compile time" in the module documentation.
        set(&mut flags, "opt_level", "none")?;
        // cranelift-jit requires absolute addressing and non-colocated libcalls.
        set(&mut flags, "is_pic", "false")?;
        set(&mut flags, "use_colocated_libcalls", "false")?;
        // Filters never unwind: the only call is to a helper that cannot panic.
        set(&mut flags, "unwind_info", "false")?;
        // Cranelift's IR verifier would roughly add a fifth to compile time; the equality tests
        // compare every translation with the interpreter instead.
        set(&mut flags, "enable_verifier", "false")?;
        let builder = cranelift_native::builder().map_err(|e| format!("unsupported host: {e}"))?;
        builder
            .finish(settings::Flags::new(flags))
            .map_err(|e| format!("cranelift ISA: {e}"))
    })
    .clone()
    .map_err(EngineError::JitFailed)
}

impl JitEngine {
    /// Native code for `program`: compiled now, or shared with a live engine of a program with
    /// the same instructions and table shapes.
    pub fn new(program: Program) -> Result<JitEngine, EngineError> {
        let key = code_key(&program);
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let map = shared.map.get_or_insert_with(HashMap::new);
        if let Some(code) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(JitEngine { program, code });
        }
        let code = Arc::new(compile(&program)?);
        map.insert(key, Arc::downgrade(&code));
        if map.len() >= shared.prune_at {
            if let Some(map) = shared.map.as_mut() {
                map.retain(|_, w| w.strong_count() > 0);
                shared.prune_at = (map.len() * 2).max(64);
            }
        }
        Ok(JitEngine { program, code })
    }

    /// Whether this engine's code is shared with another live engine.
    pub fn shares_code(&self) -> bool {
        Arc::strong_count(&self.code) > 1
    }
}

/// Compiles `program` to native code in a module of its own.
fn compile(program: &Program) -> Result<NativeCode, EngineError> {
    {
        let isa = host_isa()?;
        if isa.pointer_type() != types::I64 {
            return Err(EngineError::JitFailed(
                "the JIT supports 64-bit hosts only".into(),
            ));
        }
        let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let failed = |e: &dyn std::fmt::Display| EngineError::JitFailed(e.to_string());

        let mut contexts = CONTEXTS
            .take()
            .unwrap_or_else(|| Box::new((Context::new(), FunctionBuilderContext::new())));
        let (ctx, fctx) = &mut *contexts;
        let defined = define(program, &mut module, ctx, fctx);
        ctx.clear();
        CONTEXTS.set(Some(contexts));
        let id = defined?;
        module.finalize_definitions().map_err(|e| failed(&e))?;
        let address = module.get_finalized_function(id);
        // SAFETY: `address` is the entry of the function just compiled with the signature built
        // above, which is `NativeFilter`'s under the ISA's default (C) calling convention.
        let entry = unsafe { std::mem::transmute::<*const u8, NativeFilter>(address) };
        Ok(NativeCode {
            module: Some(module),
            entry,
        })
    }
}

thread_local! {
    /// Cranelift's per-function working memory, reused by the next compilation on the thread.
    static CONTEXTS: Cell<Option<Box<(Context, FunctionBuilderContext)>>> =
        const { Cell::new(None) };
}

/// Translates `program` into `ctx` and compiles it into `module`.
fn define(
    program: &Program,
    module: &mut JITModule,
    ctx: &mut Context,
    fctx: &mut FunctionBuilderContext,
) -> Result<FuncId, EngineError> {
    let failed = |e: &dyn std::fmt::Display| EngineError::JitFailed(e.to_string());
    let ptr = module.target_config().pointer_type();
    let sig = &mut ctx.func.signature;
    sig.call_conv = module.isa().default_call_conv();
    sig.params.push(AbiParam::new(ptr)); // frame
    sig.params.push(AbiParam::new(ptr)); // caplen
    sig.params.push(AbiParam::new(types::I32)); // wire_len
    sig.params.push(AbiParam::new(ptr)); // scratch
    sig.params.push(AbiParam::new(ptr)); // tables
    sig.returns.push(AbiParam::new(types::I64));

    let mut helper_sig = module.make_signature();
    helper_sig.params.push(AbiParam::new(ptr));
    helper_sig.params.push(AbiParam::new(types::I32));
    helper_sig.params.push(AbiParam::new(ptr));
    helper_sig.returns.push(AbiParam::new(types::I32));
    let builder = FunctionBuilder::new(&mut ctx.func, fctx);
    Translator::new(program, builder, module.target_config(), helper_sig).translate();

    let id = module
        .declare_anonymous_function(&ctx.func.signature)
        .map_err(|e| failed(&e))?;
    module.define_function(id, ctx).map_err(|e| failed(&e))?;
    Ok(id)
}

impl Engine for JitEngine {
    #[inline]
    fn run_with_scratch(&self, frame: &[u8], wire_len: u32, scratch: &mut Scratch) -> Verdict {
        // SAFETY: the native code reads only `frame[..frame.len()]` (every load is checked
        // against `caplen` or lies inside a length an earlier check proved), reads and writes
        // only `scratch[..NUM_SLOTS]` (slot numbers are verified), and passes `tables` only to
        // `lookup_helper` with verified indices. `&self` keeps the tables alive and unchanged
        // for the whole call, and the code itself lives as long as `self.code`.
        let result = unsafe {
            (self.code.entry)(
                frame.as_ptr(),
                frame.len(),
                wire_len,
                scratch.as_mut_ptr(),
                self.program.tables.as_ptr(),
            )
        };
        if result & ACCEPT_FLAG != 0 {
            Verdict::Accept(result as u32)
        } else {
            Verdict::Reject
        }
    }

    fn kind(&self) -> EngineKind {
        EngineKind::Jit
    }

    fn program(&self) -> &Program {
        &self.program
    }

    fn table_mut(&mut self, index: usize) -> Option<TableMut<'_>> {
        self.program.table_mut(index)
    }
}

/// What the translation needs to know about the program before emitting code.
struct Analysis {
    /// Whether some path from the entry reaches the instruction.
    reachable: Vec<bool>,
    /// Whether a Cranelift block starts at the instruction (a jump target, or the instruction
    /// after a conditional jump).
    block_start: Vec<bool>,
}

fn load_width(op: Opcode) -> Option<u64> {
    match op {
        Opcode::LdAbsB | Opcode::LdIndB => Some(1),
        Opcode::LdAbsH | Opcode::LdIndH => Some(2),
        Opcode::LdAbsW | Opcode::LdIndW => Some(4),
        _ => None,
    }
}

fn analyse(insns: &[Insn]) -> Analysis {
    let n = insns.len();
    let mut reachable = vec![false; n];
    let mut block_start = vec![false; n];
    reachable[0] = true;
    for pc in 0..n {
        if !reachable[pc] {
            continue;
        }
        let insn = insns[pc];
        // The verifier guarantees targets and fall-throughs are inside the program; `get_mut`
        // keeps a broken invariant from becoming a panic here (the code is then just skipped).
        if insn.op.is_jump() {
            let target = insn.target(pc) as usize;
            if let (Some(r), Some(b)) = (reachable.get_mut(target), block_start.get_mut(target)) {
                *r = true;
                *b = true;
            }
        }
        if !insn.op.is_terminator() {
            if let Some(r) = reachable.get_mut(pc + 1) {
                *r = true;
            }
            if insn.op.is_conditional_jump() {
                if let Some(b) = block_start.get_mut(pc + 1) {
                    *b = true;
                }
            }
        }
    }
    Analysis {
        reachable,
        block_start,
    }
}

/// Translates one program into the body of the function being built.
struct Translator<'a> {
    program: &'a Program,
    b: FunctionBuilder<'a>,
    ptr: Type,
    regs: [Variable; NUM_REGS],
    frame: Value,
    caplen: Value,
    wire_len: Value,
    scratch: Value,
    tables: Value,
    reject: Block,
    helper_sig: Option<cranelift_codegen::ir::Signature>,
    helper_sig_ref: Option<cranelift_codegen::ir::SigRef>,
    key_slot: Option<cranelift_codegen::ir::StackSlot>,
    config: TargetFrontendConfig,
}

const NO_ARGS: &[BlockArg] = &[];

impl<'a> Translator<'a> {
    fn new(
        program: &'a Program,
        mut b: FunctionBuilder<'a>,
        config: TargetFrontendConfig,
        helper_sig: cranelift_codegen::ir::Signature,
    ) -> Self {
        let ptr = config.pointer_type();
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let params = b.block_params(entry).to_vec();
        let regs = std::array::from_fn(|_| b.declare_var(types::I32));
        // Every register is written before it is read on every path (verifier invariant);
        // defining them as 0 at the entry only spares the SSA builder undefined variables.
        let zero = b.ins().iconst(types::I32, 0);
        for &r in &regs {
            b.def_var(r, zero);
        }
        let reject = b.create_block();
        b.set_cold_block(reject);
        Translator {
            program,
            b,
            ptr,
            regs,
            frame: params[0],
            caplen: params[1],
            wire_len: params[2],
            scratch: params[3],
            tables: params[4],
            reject,
            helper_sig: Some(helper_sig),
            helper_sig_ref: None,
            key_slot: None,
            config,
        }
    }

    fn translate(mut self) {
        let insns = self.program.insns();
        let analysis = analyse(insns);
        let known = proven_lengths(insns, &analysis);
        self.body(&analysis, &known);
        self.b.switch_to_block(self.reject);
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.ins().return_(&[zero]);
        self.b.seal_all_blocks();
        self.b.finalize(self.config);
    }

    /// Emits one copy of the program's body, starting in the current block.
    fn body(&mut self, analysis: &Analysis, known: &[u64]) {
        let insns = self.program.insns();
        let blocks: Vec<Option<Block>> = analysis
            .block_start
            .iter()
            .map(|&s| s.then(|| self.b.create_block()))
            .collect();
        // Whether the block being filled can still fall through to the next instruction.
        let mut open = true;
        for pc in 0..insns.len() {
            if !analysis.reachable[pc] {
                continue;
            }
            if let Some(block) = blocks[pc] {
                if open {
                    self.b.ins().jump(block, NO_ARGS);
                }
                self.b.switch_to_block(block);
            }
            // A reachable instruction that is not a block start follows a non-terminator, so
            // the current block is open here.
            let insn = insns[pc];
            let target = || blocks[insn.target(pc) as usize].expect("jump targets start blocks");
            let next = || blocks[pc + 1].expect("conditional fall-throughs start blocks");
            // Returns and jumps end the block (a conditional jump branches to both successors).
            open = !insn.op.is_terminator() && !insn.op.is_jump();
            self.insn(insn, known[pc], target, next);
        }
    }

    fn reg(&mut self, r: u8) -> Value {
        self.b.use_var(self.regs[usize::from(r & 0xf)])
    }

    fn set(&mut self, r: u8, v: Value) {
        self.b.def_var(self.regs[usize::from(r & 0xf)], v);
    }

    /// Branches to the shared reject block when `cond` is non-zero; continues in a new block.
    fn reject_if(&mut self, cond: Value) {
        let cont = self.b.create_block();
        self.b.ins().brif(cond, self.reject, NO_ARGS, cont, NO_ARGS);
        self.b.switch_to_block(cont);
    }

    /// Loads `width` bytes big-endian at `frame + offset` (bounds already checked).
    fn load_be(&mut self, width: u64, addr: Value, offset: i32) -> Value {
        let flags = MemFlagsData::new().with_notrap().with_readonly();
        let b = &mut self.b;
        match width {
            1 => b.ins().uload8(types::I32, flags, addr, offset),
            2 => {
                let v = b.ins().load(types::I16, flags, addr, offset);
                let v = if cfg!(target_endian = "little") {
                    b.ins().bswap(v)
                } else {
                    v
                };
                b.ins().uextend(types::I32, v)
            }
            _ => {
                let v = b.ins().load(types::I32, flags, addr, offset);
                if cfg!(target_endian = "little") {
                    b.ins().bswap(v)
                } else {
                    v
                }
            }
        }
    }

    fn insn(
        &mut self,
        insn: Insn,
        known: u64,
        target: impl Fn() -> Block,
        next: impl Fn() -> Block,
    ) {
        use Opcode as O;
        let k = insn.k;
        let ki = i64::from(k);
        let (d, s) = (insn.dst, insn.src);
        match insn.op {
            O::LdAbsB | O::LdAbsH | O::LdAbsW => {
                let width = load_width(insn.op).unwrap_or(4);
                let end = u64::from(k) + width;
                if end > known {
                    let short =
                        self.b
                            .ins()
                            .icmp_imm_u(IntCC::UnsignedLessThan, self.caplen, end as i64);
                    self.reject_if(short);
                }
                let v = match i32::try_from(k) {
                    Ok(offset) => self.load_be(width, self.frame, offset),
                    Err(_) => {
                        let addr = self.b.ins().iadd_imm_u(self.frame, ki);
                        self.load_be(width, addr, 0)
                    }
                };
                self.set(d, v);
            }
            O::LdIndB | O::LdIndH | O::LdIndW => {
                let width = load_width(insn.op).unwrap_or(4);
                let base = self.reg(s);
                let base = self.b.ins().uextend(self.ptr, base);
                // rS + k + width < 2^34: no wrap in 64 bits.
                let offset = self.b.ins().iadd_imm_u(base, ki);
                let end = self.b.ins().iadd_imm_u(offset, width as i64);
                let out = self
                    .b
                    .ins()
                    .icmp(IntCC::UnsignedGreaterThan, end, self.caplen);
                self.reject_if(out);
                let addr = self.b.ins().iadd(self.frame, offset);
                let v = self.load_be(width, addr, 0);
                self.set(d, v);
            }
            O::LdLen => self.set(d, self.wire_len),
            O::MovK => {
                let v = self.b.ins().iconst(types::I32, ki);
                self.set(d, v);
            }
            O::MovX => {
                let v = self.reg(s);
                self.set(d, v);
            }
            O::LdMem => {
                let offset = slot_offset(k);
                let v =
                    self.b
                        .ins()
                        .load(types::I32, MemFlagsData::trusted(), self.scratch, offset);
                self.set(d, v);
            }
            O::StMem => {
                let offset = slot_offset(k);
                let v = self.reg(s);
                self.b
                    .ins()
                    .store(MemFlagsData::trusted(), v, self.scratch, offset);
            }
            O::AddK | O::SubK | O::MulK | O::DivK | O::ModK | O::AndK | O::OrK | O::XorK => {
                let x = self.reg(d);
                let ins = self.b.ins();
                let v = match insn.op {
                    O::AddK => ins.iadd_imm_u(x, ki),
                    O::SubK => ins.iadd_imm_u(x, i64::from(k.wrapping_neg())),
                    O::MulK => ins.imul_imm_u(x, ki),
                    // k != 0: verifier invariant, so neither traps.
                    O::DivK => ins.udiv_imm_u(x, ki),
                    O::ModK => ins.urem_imm_u(x, ki),
                    O::AndK => ins.band_imm_u(x, ki),
                    O::OrK => ins.bor_imm_u(x, ki),
                    _ => ins.bxor_imm_u(x, ki),
                };
                self.set(d, v);
            }
            O::LshK => {
                // k < 32: verifier invariant.
                let x = self.reg(d);
                let v = self.b.ins().ishl_imm_u(x, ki);
                self.set(d, v);
            }
            O::RshK => {
                let x = self.reg(d);
                let v = self.b.ins().ushr_imm_u(x, ki);
                self.set(d, v);
            }
            O::Neg => {
                let x = self.reg(d);
                let v = self.b.ins().ineg(x);
                self.set(d, v);
            }
            O::AddX | O::SubX | O::MulX | O::AndX | O::OrX | O::XorX => {
                let x = self.reg(d);
                let y = self.reg(s);
                let ins = self.b.ins();
                let v = match insn.op {
                    O::AddX => ins.iadd(x, y),
                    O::SubX => ins.isub(x, y),
                    O::MulX => ins.imul(x, y),
                    O::AndX => ins.band(x, y),
                    O::OrX => ins.bor(x, y),
                    _ => ins.bxor(x, y),
                };
                self.set(d, v);
            }
            O::DivX | O::ModX => {
                let y = self.reg(s);
                let zero = self.b.ins().icmp_imm_u(IntCC::Equal, y, 0);
                self.reject_if(zero);
                let x = self.reg(d);
                let v = if insn.op == O::DivX {
                    self.b.ins().udiv(x, y)
                } else {
                    self.b.ins().urem(x, y)
                };
                self.set(d, v);
            }
            O::LshX | O::RshX => {
                let x = self.reg(d);
                let y = self.reg(s);
                let shifted = if insn.op == O::LshX {
                    self.b.ins().ishl(x, y)
                } else {
                    self.b.ins().ushr(x, y)
                };
                let big = self
                    .b
                    .ins()
                    .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, y, 32);
                let zero = self.b.ins().iconst(types::I32, 0);
                let v = self.b.ins().select(big, zero, shifted);
                self.set(d, v);
            }
            O::Ja => {
                self.b.ins().jump(target(), NO_ARGS);
            }
            O::JeqK | O::JgtK | O::JgeK | O::JsetK => {
                let x = self.reg(d);
                let cond = match insn.op {
                    O::JeqK => self.b.ins().icmp_imm_u(IntCC::Equal, x, ki),
                    O::JgtK => self.b.ins().icmp_imm_u(IntCC::UnsignedGreaterThan, x, ki),
                    O::JgeK => self
                        .b
                        .ins()
                        .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, x, ki),
                    _ => self.b.ins().band_imm_u(x, ki),
                };
                self.b.ins().brif(cond, target(), NO_ARGS, next(), NO_ARGS);
            }
            O::JeqX | O::JgtX | O::JgeX | O::JsetX => {
                let x = self.reg(d);
                let y = self.reg(s);
                let cond = match insn.op {
                    O::JeqX => self.b.ins().icmp(IntCC::Equal, x, y),
                    O::JgtX => self.b.ins().icmp(IntCC::UnsignedGreaterThan, x, y),
                    O::JgeX => self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, x, y),
                    _ => self.b.ins().band(x, y),
                };
                self.b.ins().brif(cond, target(), NO_ARGS, next(), NO_ARGS);
            }
            O::Reject => {
                self.b.ins().jump(self.reject, NO_ARGS);
            }
            O::AcceptK => {
                let v = self
                    .b
                    .ins()
                    .iconst(types::I64, (ACCEPT_FLAG | u64::from(k)) as i64);
                self.b.ins().return_(&[v]);
            }
            O::AcceptX => {
                let x = self.reg(s);
                let x = self.b.ins().uextend(types::I64, x);
                let v = self.b.ins().bor_imm_u(x, ACCEPT_FLAG as i64);
                self.b.ins().return_(&[v]);
            }
            O::Lookup => self.lookup(insn),
        }
    }

    fn lookup(&mut self, insn: Insn) {
        let width = self
            .program
            .tables()
            .get(insn.k as usize)
            .map_or(1, Table::key_words)
            .min(MAX_KEY_WORDS);
        let slot = match self.key_slot {
            Some(slot) => slot,
            None => {
                let slot = self.b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    (MAX_KEY_WORDS * 4) as u32,
                    2,
                ));
                self.key_slot = Some(slot);
                slot
            }
        };
        let sig = match (self.helper_sig_ref, self.helper_sig.take()) {
            (Some(sig), _) => sig,
            (None, Some(signature)) => {
                let sig = self.b.import_signature(signature);
                self.helper_sig_ref = Some(sig);
                sig
            }
            (None, None) => unreachable!("the helper signature is imported once"),
        };
        for w in 0..width {
            // Key registers rS..rS+W lie inside the register file: verifier invariant.
            let v = self.reg(insn.src + w as u8);
            self.b.ins().stack_store(self.ptr, v, slot, (w * 4) as i32);
        }
        let key = self.b.ins().stack_addr(self.ptr, slot, 0);
        let helper = lookup_helper as unsafe extern "C" fn(*const Table, u32, *const u32) -> u32;
        let callee = self.b.ins().iconst(self.ptr, helper as usize as i64);
        let index = self.b.ins().iconst(types::I32, i64::from(insn.k));
        let call = self
            .b
            .ins()
            .call_indirect(sig, callee, &[self.tables, index, key]);
        let v = self.b.inst_results(call)[0];
        self.set(insn.dst, v);
    }
}

/// Byte offset of scratch slot `k` (`k < NUM_SLOTS`: verifier invariant; masked anyway so a
/// broken invariant cannot address outside the array).
fn slot_offset(k: u32) -> i32 {
    ((k as usize % NUM_SLOTS) * 4) as i32
}

/// For every instruction, the captured length proven on every path reaching it (see the
/// module documentation).
fn proven_lengths(insns: &[Insn], analysis: &Analysis) -> Vec<u64> {
    let n = insns.len();
    // None: no path seen yet. Paths meet with min.
    let mut state: Vec<Option<u64>> = vec![None; n];
    state[0] = Some(0);
    let mut out = vec![0; n];
    for pc in 0..n {
        if !analysis.reachable[pc] {
            continue;
        }
        let Some(mut known) = state[pc] else { continue };
        out[pc] = known;
        let insn = insns[pc];
        if let Some(width) = load_width(insn.op) {
            // A load that did not reject proves the frame reaches at least k + width.
            known = known.max(u64::from(insn.k) + width);
        }
        let mut flow = |to: usize| {
            if let Some(s) = state.get_mut(to) {
                *s = Some(s.map_or(known, |t| t.min(known)));
            }
        };
        if insn.op.is_jump() {
            flow(insn.target(pc) as usize);
        }
        if !insn.op.is_terminator() {
            flow(pc + 1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asm::assemble;
    use crate::verify;

    fn both(src: &str, frames: &[(&[u8], u32)]) {
        let program = verify(&assemble(src).unwrap()).unwrap();
        let jit = JitEngine::new(program.clone()).unwrap();
        for &(frame, wire_len) in frames {
            let mut s1 = [0; NUM_SLOTS];
            let mut s2 = [0; NUM_SLOTS];
            let want = crate::interp::run(&program, frame, wire_len, &mut s1);
            assert_eq!(
                jit.run_with_scratch(frame, wire_len, &mut s2),
                want,
                "{src} on {frame:?}"
            );
            assert_eq!(s1, s2);
        }
    }

    #[test]
    fn loads_outside_the_frame_reject_and_inside_read_big_endian() {
        let src = "ldw r0, [2]\nldh r1, [0]\nldb r2, [5]\nadd r0, r1\nadd r0, r2\naccept r0\n";
        both(
            src,
            &[
                (&[], 0),
                (&[1, 2, 3, 4, 5], 5),
                (&[1, 2, 3, 4, 5, 6], 6),
                (&[1, 2, 3, 4, 5, 6, 7], 60),
            ],
        );
    }

    #[test]
    fn register_plus_constant_offsets_do_not_wrap() {
        let src = "mov r1, 0xffffffff\nldb r0, [r1 + 1]\naccept r0\n";
        both(src, &[(&[7; 16], 16)]);
        let src = "ldb r1, [0]\nldb r0, [r1 + 1]\naccept r0\n";
        both(
            src,
            &[(&[0, 9], 2), (&[1, 9], 2), (&[1, 9, 8], 3), (&[], 0)],
        );
    }

    #[test]
    fn division_by_a_zero_register_rejects_and_big_shifts_give_zero() {
        let src = "ldb r0, [0]\nldb r1, [1]\nmov r2, r0\ndiv r2, r1\nmod r0, r1\nlsh r2, r1\nadd r0, r2\naccept r0\n";
        both(
            src,
            &[
                (&[9, 0], 2),
                (&[9, 2], 2),
                (&[255, 31], 2),
                (&[255, 32], 2),
                (&[255, 200], 2),
            ],
        );
    }

    #[test]
    fn lookup_reads_tables_updated_after_compilation() {
        let src = "ldb r0, [0]\nldb r1, [1]\nlookup r2, r0, t0\naccept r2\n.table words=2 default=7\n1 2 -> 9\n";
        let program = verify(&assemble(src).unwrap()).unwrap();
        let mut jit = JitEngine::new(program).unwrap();
        assert_eq!(jit.run(&[1, 2], 2), Verdict::Accept(9));
        assert_eq!(jit.run(&[1, 3], 2), Verdict::Accept(7));
        jit.table_mut(0).unwrap().insert(&[1, 3], 11).unwrap();
        assert_eq!(jit.run(&[1, 3], 2), Verdict::Accept(11));
    }

    #[test]
    fn engines_of_one_program_share_code_and_keep_their_own_tables() {
        let src =
            "ldb r0, [0]\nldb r1, [1]\nlookup r2, r0, t0\naccept r2\n.table words=2 default=5\n";
        let program = verify(&assemble(src).unwrap()).unwrap();
        let mut a = JitEngine::new(program.clone()).unwrap();
        let mut b = JitEngine::new(program.clone()).unwrap();
        assert!(a.shares_code() && b.shares_code());
        a.table_mut(0).unwrap().insert(&[1, 2], 10).unwrap();
        b.table_mut(0).unwrap().insert(&[1, 2], 20).unwrap();
        assert_eq!(a.run(&[1, 2], 2), Verdict::Accept(10));
        assert_eq!(b.run(&[1, 2], 2), Verdict::Accept(20));
        drop(a);
        drop(b);
        // Other instructions are other code.
        let other =
            "ldb r0, [0]\nldb r1, [2]\nlookup r2, r0, t0\naccept r2\n.table words=2 default=5\n";
        let c = JitEngine::new(verify(&assemble(other).unwrap()).unwrap()).unwrap();
        let d = JitEngine::new(program).unwrap();
        assert!(!c.shares_code() && !d.shares_code());
    }

    #[test]
    fn scratch_stores_reach_the_callers_array() {
        let src = "mov r0, 5\nstm m3, r0\nldb r1, [0]\nstm m4, r1\nldm r2, m3\naccept r2\n";
        both(src, &[(&[], 0), (&[8], 1)]);
        let program = verify(&assemble(src).unwrap()).unwrap();
        let jit = JitEngine::new(program).unwrap();
        let mut s = [0; NUM_SLOTS];
        assert_eq!(jit.run_with_scratch(&[8], 1, &mut s), Verdict::Accept(5));
        assert_eq!((s[3], s[4]), (5, 8));
    }
}
