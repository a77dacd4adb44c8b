//! The fault path on kernels without kprobes or fentry.
//!
//! Entry: `exceptions:page_fault_user` / `page_fault_kernel` fire once per exception,
//! before any VMA lookup; they record the time and the x86 error code per thread.
//!
//! Completion: `mm_account_fault` raises the perf software event PAGE_FAULTS_MIN or
//! PAGE_FAULTS_MAJ exactly when it adds to the task's min_flt/maj_flt (and regs is
//! set, i.e. not get_user_pages). Counting there makes our totals the kernel's own
//! definition of a fault. The VMA is looked up here, once per fault, when it is
//! sure to exist (stack growth has happened by then), unless the thread's cached
//! VMA is provably unchanged since it was looked up.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, generated::bpf_get_current_task_btf},
    macros::{btf_tracepoint, map, perf_event, tracepoint},
    maps::ProgramArray,
    programs::{BtfTracePointContext, PerfEventContext, TracePointContext},
};
use rmaptrace_common::{access, counter, path_id, vma_status, FaultKey, VmaInfo};

use crate::{
    aggregate,
    maps::{bump, bump_mm_gen, mm_gen, offsets, traced_current, Inflight, INFLIGHT},
    vma,
};

const PAGE_SHIFT: u64 = 12;

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

#[inline(always)]
fn on_entry(ctx: &BtfTracePointContext, kernel_mode: bool) {
    // TP_PROTO(unsigned long address, struct pt_regs *regs, unsigned long error_code)
    let address: u64 = ctx.arg(0);
    if kernel_mode && address >> 63 != 0 {
        return; // a fault on a kernel address: not the process's memory
    }
    let Some((_tgid, tid)) = traced_current() else {
        return;
    };
    let error_code: u64 = ctx.arg(2);
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let access = access::from_x86_error_code(error_code, kernel_mode);
    match INFLIGHT.get_ptr_mut(tid) {
        Some(slot) => unsafe {
            if (*slot).ts_ns != 0 {
                bump(counter::ENTRY_WITHOUT_COMPLETION);
            }
            (*slot).ts_ns = ts_ns;
            (*slot).page = address >> PAGE_SHIFT;
            (*slot).access = access;
        },
        None => {
            let entry = Inflight {
                ts_ns,
                page: address >> PAGE_SHIFT,
                access,
                cache_valid: 0,
                _pad: [0; 2],
                cache_lock_seq: 0,
                cache_gen: 0,
                cache_vma: 0,
                cache_mm: 0,
                cache_start: 0,
                cache_end: 0,
                cache_life: 0,
            };
            if INFLIGHT.insert(tid, entry, 0).is_err() {
                bump(counter::INFLIGHT_FULL);
            }
        }
    }
}

#[perf_event]
pub fn fault_done_minor(ctx: PerfEventContext) -> u32 {
    on_completion(&ctx, false);
    0
}

#[perf_event]
pub fn fault_done_major(ctx: PerfEventContext) -> u32 {
    on_completion(&ctx, true);
    0
}

/// Whether this thread's cached VMA is still what the kernel has.
#[inline(always)]
fn cache_current(s: &Inflight) -> bool {
    if offsets().has_vm_lock_seq != 0 {
        vma::unchanged(
            s.cache_vma,
            s.cache_mm,
            s.cache_start,
            s.cache_end,
            s.cache_lock_seq,
        )
    } else {
        mm_gen(s.cache_mm) == s.cache_gen
    }
}

/// The current task's mm.
#[inline(always)]
fn current_mm() -> u64 {
    // SAFETY: bpf_probe_read_kernel checks the read.
    unsafe {
        let task = bpf_get_current_task_btf() as u64;
        bpf_probe_read_kernel((task + offsets().task_mm as u64) as *const u64).unwrap_or(0)
    }
}

#[inline(always)]
fn on_completion(ctx: &PerfEventContext, major: bool) {
    let Some((tgid, tid)) = traced_current() else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the perf event context the kernel passed in.
    let (addr, ip) = unsafe { ((*ctx.ctx).addr, (*ctx.ctx).regs.rip) };

    // One raw pointer to this thread's slot, used for every read and write (two
    // live `&mut` to one map value would be undefined behaviour).
    let slot: Option<*mut Inflight> = INFLIGHT.get_ptr_mut(tid);
    let mut acc = access::NO_ENTRY;
    let mut latency = 0u64;
    let mut cached_life = 0u64;
    if let Some(s) = slot {
        // SAFETY: `s` is this thread's map value; no other reference to it lives.
        unsafe {
            if (*s).ts_ns != 0 && (*s).page == addr >> PAGE_SHIFT {
                acc = (*s).access;
                latency = now.saturating_sub((*s).ts_ns);
                (*s).ts_ns = 0;
            }
            if (*s).cache_valid != 0
                && (*s).cache_life != 0
                && (*s).cache_start <= addr
                && addr < (*s).cache_end
            {
                if cache_current(&*s) {
                    cached_life = (*s).cache_life;
                } else {
                    (*s).cache_valid = 0;
                    bump(counter::VMA_CACHE_STALE);
                }
            }
        }
    }
    if acc == access::NO_ENTRY {
        bump(counter::UNMATCHED_COMPLETION);
    }

    // Kept for `record`: a second bpf_find_vma in this program would fail with
    // -EBUSY where interrupts are off (its mmap_lock release is still queued).
    let mut info = core::mem::MaybeUninit::<VmaInfo>::uninit();
    crate::mem::zero(info.as_mut_ptr());
    // SAFETY: zeroed above; VmaInfo is plain data.
    let info = unsafe { info.assume_init_mut() };
    let status = if cached_life != 0 {
        bump(counter::VMA_CACHE_HIT);
        vma_status::FOUND
    } else {
        bump(counter::VMA_LOOKUP);
        // Read before the lookup: a writer that changes the tree after it
        // leaves the cache filled below already stale, never wrongly current.
        let gen = if offsets().has_vm_lock_seq == 0 {
            mm_gen(current_mm())
        } else {
            0
        };
        let status = vma::lookup(addr, info);
        if status == vma_status::FOUND {
            if let Some(s) = slot {
                // SAFETY: as above; the lifetime is filled in by the counting program.
                unsafe {
                    (*s).cache_valid = 1;
                    (*s).cache_gen = gen;
                    (*s).cache_vma = info.vma;
                    (*s).cache_mm = info.mm;
                    (*s).cache_lock_seq = info.lock_seq;
                    (*s).cache_start = info.vm_start;
                    (*s).cache_end = info.vm_end;
                    (*s).cache_life = 0;
                }
            }
        }
        status
    };
    let Some(c) = aggregate::completed_slot() else {
        return;
    };
    c.key = FaultKey {
        tgid,
        access: acc,
        path: path_id::DERIVED,
        vma_status: status,
        _pad: 0,
        life: cached_life,
    };
    c.tid = tid;
    c.major = major as u8;
    c.now = now;
    c.addr = addr;
    c.ip = ip;
    c.latency = latency;
    c.handler_ns = 0;
    c.has_vma = 0;
    if cached_life == 0 && status == vma_status::FOUND {
        if let Some(slot) = aggregate::looked_up_slot() {
            crate::mem::copy(slot, info);
            c.has_vma = 1;
        }
    }
    // Counting continues in its own program: verified apart, it keeps this one
    // within older verifiers' limits (6.1 refused the two together).
    unsafe { RECORD_TAIL.tail_call(ctx, 0) };
    bump(counter::TAIL_CALL_FAILED);
}

/// `mmap_lock:mmap_lock_acquire_returned` and `mmap_lock_released`: a write
/// acquire or release changes the mm's generation (see MM_GEN). Attached only
/// where VMAs carry no vm_lock_seq, which validates cached VMAs more finely.
#[tracepoint]
pub fn mmap_lock_write(ctx: TracePointContext) -> u32 {
    let o = offsets();
    // SAFETY: offsets of this tracepoint's record, from its tracefs format.
    unsafe {
        if ctx.read_at::<u8>(o.mmap_lock_write as usize).unwrap_or(0) == 0 {
            return 0;
        }
        if let Ok(mm) = ctx.read_at::<u64>(o.mmap_lock_mm as usize) {
            bump_mm_gen(mm);
        }
    }
    0
}

/// Holds `fault_record_tail` at index 0, set by userspace after load.
#[map]
static RECORD_TAIL: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The second half of a completion: counts the fault that `on_completion` left
/// in the COMPLETED slot. Never attached; reached by tail call only.
#[perf_event]
pub fn fault_record_tail(_ctx: PerfEventContext) -> u32 {
    aggregate::record(None);
    0
}
