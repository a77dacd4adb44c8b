//! The fault path on kernels without kprobes or fentry.
//!
//! Entry: `exceptions:page_fault_user` / `page_fault_kernel` fire once per exception,
//! before any VMA lookup; they record the time and the x86 error code per thread,
//! in the thread's IN_FLIGHT slot, with no table lookup.
//!
//! Completion: `mm_account_fault` raises the perf software event PAGE_FAULTS_MIN or
//! PAGE_FAULTS_MAJ exactly when it adds to the task's min_flt/maj_flt (and regs is
//! set, i.e. not get_user_pages). Counting there makes our totals the kernel's own
//! definition of a fault. The VMA is looked up here, once per fault, when it is
//! sure to exist (stack growth has happened by then), unless the thread's cached
//! VMA is provably unchanged since it was looked up.
use core::ptr::write_volatile;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, perf_event, tracepoint},
    maps::{Array, ProgramArray},
    programs::{BtfTracePointContext, PerfEventContext, TracePointContext},
};
use rmaptrace_common::{
    access, counter, path_id, vm_flags, vma_status, FaultKey, ThreadAcct, ThreadFault, VmaInfo,
};

use crate::{
    aggregate::{self, Completed},
    maps::{
        bump, bump_mm_gen, config, current_mm, current_mm_seq, known_untraced, mm_gen, off,
        traced_current, traced_when_all, CurrentTask, THREADS,
    },
    task, vma,
};

const PAGE_SHIFT: u64 = 12;

/// A thread's fault between its entry and its completion.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InFlight {
    pub tid: u32,
    pub access: u8,
    /// The thread is followed (set at its follow and at its completions): its
    /// entries that never complete are counted as such, an untraced thread's
    /// are not.
    pub traced: u8,
    pub _pad: [u8; 2],
    /// Page of the faulting address, to match the completion to this entry.
    pub page: u64,
    /// Entry time, 0 for none in flight.
    pub ts_ns: u64,
    pub _pad2: u64,
}

/// Each thread's fault in flight, in a slot picked by a hash of its thread id.
/// The entry runs on every exception in the system: an array slot is one
/// address computation, where a hash table is a hash, a bucket and an element
/// (cache misses each, on a CPU that has just cleared a page), and the entry
/// needs no table lookup at all. Two threads with faults in flight at once in
/// one slot leave the first's completion unmatched (counted, without latency
/// or access), never matched to the other's entry: the slot holds its tid.
/// Slots are 32 bytes and consecutive thread ids land far apart, so threads
/// faulting at once on different CPUs do not share cache lines.
#[map]
static IN_FLIGHT: Array<InFlight> = Array::with_max_entries(1 << IN_FLIGHT_BITS, 0);
const IN_FLIGHT_BITS: u32 = 16;

/// The IN_FLIGHT slot of thread `tid` (Fibonacci hashing).
#[inline(always)]
pub fn in_flight_slot(tid: u32) -> Option<*mut InFlight> {
    IN_FLIGHT.get_ptr_mut(tid.wrapping_mul(0x9E37_79B1) >> (32 - IN_FLIGHT_BITS))
}

/// Thread `tid` is followed from now: its slot is its own, with nothing in
/// flight.
#[inline(always)]
pub fn mark_in_flight_traced(tid: u32) {
    if let Some(s) = in_flight_slot(tid) {
        // SAFETY: a map value pointer, valid for this run, written through
        // this one pointer.
        unsafe {
            (*s).tid = tid;
            (*s).ts_ns = 0;
            (*s).traced = 1;
        }
    }
}

/// Forgets an exiting thread's fault in flight (one that never completed):
/// a thread reusing its id must not take it for its own.
#[inline(always)]
pub fn forget_in_flight(tid: u32) {
    if let Some(s) = in_flight_slot(tid) {
        // SAFETY: a map value pointer, valid for this run, read and written
        // through this one pointer.
        unsafe {
            if (*s).tid == tid {
                (*s).ts_ns = 0;
            }
        }
    }
}

#[btf_tracepoint(function = "page_fault_user")]
pub fn page_fault_user(ctx: BtfTracePointContext) -> i32 {
    on_entry(&ctx, false);
    0
}

#[btf_tracepoint(function = "page_fault_kernel")]
pub fn page_fault_kernel(ctx: BtfTracePointContext) -> i32 {
    on_entry(&ctx, true);
    0
}

/// A fault entering, as the exceptions tracepoints give it.
pub struct Entry {
    pub address: u64,
    pub tgid: u32,
    pub tid: u32,
    pub access: u8,
}

/// The exception that `ctx` reports in `task`, unless it can be no fault of a
/// traced process's memory.
#[inline(always)]
pub fn entry_of(ctx: &BtfTracePointContext, task: CurrentTask, kernel_mode: bool) -> Option<Entry> {
    // TP_PROTO(unsigned long address, struct pt_regs *regs, unsigned long error_code)
    let address: u64 = ctx.arg(0);
    if kernel_mode && address >> 63 != 0 {
        return None; // a fault on a kernel address: not the process's memory
    }
    // With page faults disabled the kernel fixes the access up at once,
    // without handle_mm_fault: never a fault. A user stack walk for
    // --stacks (inside the completion) takes such exceptions on frame
    // pointers gone astray, and would otherwise leave a bogus fault in flight.
    // A load: a probe read would see its own pagefault_disable() (it runs
    // under one), that is always 1.
    if kernel_mode && task.load::<i32>(off!(task_pagefault_disabled)) > 0 {
        return None;
    }
    // Only a process already found untraced on this CPU returns at once: the
    // full check costs more than what follows it here. Loads, where
    // bpf_get_current_pid_tgid is a call.
    let (tgid, tid): (u32, u32) = (task.load(off!(task_tgid)), task.load(off!(task_pid)));
    let cfg = config();
    if (cfg.trace_all != 0 && !traced_when_all(&cfg, tgid)) || known_untraced(tgid) {
        return None;
    }
    let error_code: u64 = ctx.arg(2);
    Some(Entry {
        address,
        tgid,
        tid,
        access: access::from_x86_error_code(error_code, kernel_mode),
    })
}

#[inline(always)]
fn on_entry(ctx: &BtfTracePointContext, kernel_mode: bool) {
    // No traced check here: recording an entry costs less than finding out
    // (the completion does, with the thread's entry it needs anyway).
    let Some(Entry {
        address,
        tgid: _,
        tid,
        access,
    }) = entry_of(ctx, CurrentTask::get(), kernel_mode)
    else {
        return;
    };
    let Some(s) = in_flight_slot(tid) else {
        return;
    };
    // SAFETY: a helper without arguments.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this thread's slot, reached through this one pointer; another
    // thread hashed to it may write it meanwhile, which its tid check catches.
    unsafe {
        if (*s).tid == tid {
            // The previous exception of a followed thread never completed:
            // it failed (or its completion was lost).
            if (*s).ts_ns != 0 && (*s).traced != 0 {
                bump(counter::ENTRY_WITHOUT_COMPLETION);
            }
        } else {
            (*s).tid = tid;
            (*s).traced = 0;
        }
        (*s).ts_ns = ts_ns;
        (*s).page = address >> PAGE_SHIFT;
        (*s).access = access;
    }
}

// Two flavours of the completion, picked by userspace: with per-VMA lock
// sequence numbers (6.4+) or with mmap_lock write generations. Each holds only
// its own validation, which keeps it within older verifiers' limits.
#[perf_event]
pub fn fault_done_minor(ctx: PerfEventContext) -> u32 {
    on_completion::<false>(&ctx, false);
    0
}

#[perf_event]
pub fn fault_done_major(ctx: PerfEventContext) -> u32 {
    on_completion::<false>(&ctx, true);
    0
}

#[perf_event]
pub fn fault_done_minor_vls(ctx: PerfEventContext) -> u32 {
    on_completion::<true>(&ctx, false);
    0
}

#[perf_event]
pub fn fault_done_major_vls(ctx: PerfEventContext) -> u32 {
    on_completion::<true>(&ctx, true);
    0
}

/// Whether this thread's cached VMA is still what the kernel has.
#[inline(always)]
fn cache_current<const LOCK_SEQ: bool>(s: &ThreadFault) -> bool {
    if LOCK_SEQ {
        // The faulting VMA is read-locked (or mmap_lock held) while this
        // runs, so no window can be changing it now; one that changed it
        // since the cache was filled has ended and moved the sequence. The
        // mm compare guards an mm reused at the same address (exec also
        // clears the cache).
        current_mm_seq() == (s.cache_mm, s.cache_mm_seq)
    } else {
        mm_gen(s.cache_mm) == s.cache_gen
    }
}

#[inline(always)]
fn on_completion<const LOCK_SEQ: bool>(ctx: &PerfEventContext, major: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if known_untraced(tgid) {
        return;
    }
    // SAFETY: the perf event context the kernel passed in.
    let (addr, ip) = unsafe { ((*ctx.ctx).addr, (*ctx.ctx).regs.rip) };
    // The entry of this fault, taken out of the thread's slot: (access, time).
    let slot = in_flight_slot(tid);
    let entry: Option<(u8, u64)> = slot.and_then(|s| {
        // SAFETY: this thread's slot, reached through this one pointer.
        unsafe {
            let ts = (*s).ts_ns;
            if ts == 0 || (*s).tid != tid || (*s).page != addr >> PAGE_SHIFT {
                return None;
            }
            (*s).ts_ns = 0;
            Some(((*s).access, ts))
        }
    });
    // One raw pointer to this thread's entry, used for every read and write
    // (two live `&mut` to one map value would be undefined behaviour).
    let thread: Option<*mut ThreadAcct> = THREADS.get_ptr_mut(tid);
    // Only a traced process's threads have entries (made after a TRACED
    // check or at a traced parent's fork, removed at the thread's exit): a
    // thread that has one needs no TRACED lookup (one hash lookup less on
    // every fault). The tgid guards against a thread id reused elsewhere.
    // SAFETY: `t` is this thread's map value, read through this one pointer.
    let followed = thread.is_some_and(|t| unsafe { (*t).tgid } == tgid);
    if !followed && traced_current().is_none() {
        return;
    }
    if let Some(s) = slot {
        // SAFETY: this thread's slot, reached through this one pointer.
        unsafe {
            if (*s).tid == tid && (*s).traced == 0 {
                (*s).traced = 1;
            }
        }
    }
    let Some(c) = aggregate::completed_slot() else {
        return;
    };
    // SAFETY: this CPU's slot (see `completed_slot`), reached through this one
    // reference until the tail call.
    let c = unsafe { &mut *c };
    // Everything known about the fault goes straight into the per-CPU COMPLETED
    // slot, not into locals: read back from map memory they are unknown values
    // to the verifier, so the paths below merge into one state before the VMA
    // lookup instead of multiplying (Linux 6.1 gives up past a million
    // instructions otherwise).
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // Volatile: LLVM would merge the zero stores into memset calls (byte
    // loops, on every fault).
    // SAFETY: pointers to fields of `c`, a valid reference not otherwise used
    // meanwhile.
    unsafe {
        write_volatile(
            &raw mut c.key,
            FaultKey {
                tgid,
                access: access::NO_ENTRY,
                path: path_id::DERIVED,
                vma_status: vma_status::FOUND,
                flags: 0,
                life: 0,
            },
        );
        write_volatile(&raw mut c.latency, 0);
        write_volatile(&raw mut c.handler_ns, 0);
        write_volatile(&raw mut c.has_vma, 0);
        write_volatile(&raw mut c.vma, 0);
        write_volatile(&raw mut c.accounted, 0);
        write_volatile(&raw mut c.lookup_walks, 0);
        write_volatile(&raw mut c.anon, 0);
        write_volatile(&raw mut c.cache_hit, 0);
        write_volatile(&raw mut c.untimed, 0);
        write_volatile(&raw mut c.makes_anon, 0);
        write_volatile(&raw mut c.locked, 0);
    }
    c.tid = tid;
    c.major = major as u8;
    c.now = now;
    c.addr = addr;
    c.ip = ip;

    if let Some(t) = thread {
        // SAFETY: `t` is this thread's map value; no other reference to it lives.
        unsafe {
            // The thread's counters include this fault already (mm_account_fault
            // raised them before the perf event): read here, where the thread's
            // entry is at hand, not with a second lookup where it is counted.
            let (min_flt, maj_flt) = task::current_faults();
            (*t).last_min = min_flt;
            (*t).last_maj = maj_flt;
            c.accounted = 1;
            let s = &raw mut (*t).fault;
            if (*s).cache_valid != 0 && (*s).cache_start <= addr && addr < (*s).cache_end {
                if cache_current::<LOCK_SEQ>(&*s) {
                    c.key.life = (*s).cache_life;
                    c.vma = (*s).cache_vma;
                    c.anon = (*s).cache_anon;
                    c.cache_hit = 1;
                } else {
                    (*s).cache_valid = 0;
                }
            }
        }
    }
    match entry {
        Some((access, ts)) => {
            c.key.access = access;
            c.latency = now.saturating_sub(ts);
        }
        None => bump(counter::UNMATCHED_COMPLETION),
    }
    // Counting continues in programs of their own, verified apart: the VMA
    // lookup (on a cache miss) and then the counting. Each stays within older
    // verifiers' limits; together they did not (Linux 6.1). Where VMAs carry
    // vm_lock_seq (6.4+, whose verifiers take it), a cache hit counts here,
    // without a tail call: the common case by far.
    // SAFETY (both): a tail call with this program's own context, into
    // programs of its type; where it fails it returns, and that is counted.
    if c.key.life != 0 {
        bump(counter::VMA_CACHE_HIT);
        if LOCK_SEQ {
            aggregate::record(ctx, None);
            return;
        }
        unsafe { TAILS.tail_call(ctx, TAIL_RECORD) };
    } else {
        unsafe { TAILS.tail_call(ctx, TAIL_LOOKUP) };
    }
    bump(counter::TAIL_CALL_FAILED);
}

/// The VMA lookup of a completion whose thread's cache missed: finds the VMA of
/// the fault in the COMPLETED slot, caches it for the thread and leaves it in
/// VMA_LOOKED_UP for the counting program, which numbers its lifetime. Never
/// attached; reached by tail call only.
#[perf_event]
pub fn fault_lookup_tail(ctx: PerfEventContext) -> u32 {
    lookup_then_count::<false>(&ctx);
    0
}

/// The same where VMAs carry vm_lock_seq (6.4+), which validates the lockless
/// walk of the VMA tree. Both walk it first, so that a writer elsewhere in the
/// process does not stop the lookup.
#[perf_event]
pub fn fault_lookup_tail_vls(ctx: PerfEventContext) -> u32 {
    lookup_then_count::<true>(&ctx);
    0
}

#[inline(always)]
fn lookup_then_count<const LOCK_SEQ: bool>(ctx: &PerfEventContext) {
    if let Some(c) = aggregate::completed_slot() {
        // SAFETY: this CPU's slot (see `completed_slot`), reached through this
        // one reference until the tail call.
        let again = lookup::<LOCK_SEQ, false>(unsafe { &mut *c });
        // SAFETY: as above.
        unsafe { TAILS.tail_call(ctx, if again { TAIL_LOOKUP } else { TAIL_RECORD }) };
        bump(counter::TAIL_CALL_FAILED);
    }
}

/// Looks up the VMA of the fault in `c`; true when it must be walked again (by
/// this program, once more, reached again by tail call).
#[inline(always)]
pub fn lookup<const LOCK_SEQ: bool, const AT_ENTRY: bool>(c: &mut Completed) -> bool {
    if c.lookup_walks == 0 {
        bump(counter::VMA_LOOKUP);
    }
    // Read before the lookup: a writer that changes the tree after it leaves the
    // cache filled below already stale, never wrongly current. (The first
    // where VMAs carry vm_lock_seq, the second elsewhere.)
    let (mm, mm_seq) = if LOCK_SEQ {
        current_mm_seq()
    } else {
        (current_mm(), 0)
    };
    let gen = if LOCK_SEQ { 0 } else { mm_gen(mm) };
    // On the stack: bpf_find_vma's callback context must be.
    let mut info = core::mem::MaybeUninit::<VmaInfo>::uninit();
    // SAFETY: a local VmaInfo (plain data) on the stack, zeroed before it is
    // read.
    let info = unsafe {
        crate::mem::zero(info.as_mut_ptr());
        info.assume_init_mut()
    };
    let walk = vma::lookup_lockless::<LOCK_SEQ>(mm, c.addr, info);
    // Under mmap churn (a thread mapping in a loop, threads being created) a
    // write window often begins or ends during the walk, and bpf_find_vma then
    // fails too, while the writer holds mmap_lock: the fault would stay
    // without a VMA. A second walk usually falls between windows.
    if walk == vma::Walk::Unstable && c.lookup_walks == 0 {
        c.lookup_walks = 1;
        return true;
    }
    if AT_ENTRY && walk == vma::Walk::Locked {
        c.locked = 1;
        c.locked_seq = info.lock_seq;
    }
    let status = if walk == vma::Walk::Found {
        vma_status::FOUND
    } else {
        vma::lookup(c.addr, info)
    };
    c.key.vma_status = status;
    if status != vma_status::FOUND {
        bump(if status == vma_status::BUSY {
            counter::VMA_LOOKUP_BUSY
        } else {
            counter::VMA_LOOKUP_NONE
        });
        return false;
    }
    if let Some(t) = THREADS.get_ptr_mut(c.tid) {
        // SAFETY: this thread's map value, reached through this one pointer.
        unsafe {
            let s = &raw mut (*t).fault;
            (*s).cache_valid = 1;
            (*s).cache_gen = gen;
            (*s).cache_vma = info.vma;
            (*s).cache_mm = info.mm;
            (*s).cache_mm_seq = mm_seq;
            (*s).cache_start = info.vm_start;
            (*s).cache_end = info.vm_end;
            (*s).cache_life = 0;
            (*s).cache_writable = (info.vm_flags & vm_flags::VM_WRITE != 0) as u8;
            if AT_ENTRY {
                // Branch-free: each branch here multiplies the verifier's
                // states in the completion's lookup (6.1 gave up at 1M insns).
                (*s).cache_may_major = rmaptrace_common::may_fault_major(
                    info.file,
                    info.fault_fn,
                    info.vm_flags,
                    crate::maps::swap_backed_faults(),
                ) as u8;
            }
        }
    }
    if let Some(looked_up) = aggregate::looked_up_slot() {
        // SAFETY: two distinct VmaInfo, both valid.
        unsafe { crate::mem::copy(looked_up, info) };
        c.has_vma = 1;
    }
    false
}

/// `mmap_lock:mmap_lock_acquire_returned` and `mmap_lock_released`: a write
/// acquire or release changes the mm's generation (see MM_GEN). Attached only
/// where VMAs carry no vm_lock_seq, which validates cached VMAs more finely.
#[tracepoint]
pub fn mmap_lock_write(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets of this tracepoint's record, from its tracefs format.
    unsafe {
        if ctx
            .read_at::<u8>(off!(mmap_lock_write) as usize)
            .unwrap_or(0)
            == 0
        {
            return 0;
        }
        if let Ok(mm) = ctx.read_at::<u64>(off!(mmap_lock_mm) as usize) {
            bump_mm_gen(mm);
        }
    }
    0
}

/// The completion's second and third programs, set by userspace after load.
#[map]
static TAILS: ProgramArray = ProgramArray::with_max_entries(2, 0);
const TAIL_RECORD: u32 = 0;
const TAIL_LOOKUP: u32 = 1;

/// The second half of a completion: counts the fault that `on_completion` left
/// in the COMPLETED slot. Never attached; reached by tail call only.
#[perf_event]
pub fn fault_record_tail(ctx: PerfEventContext) -> u32 {
    aggregate::record(&ctx, None);
    0
}
