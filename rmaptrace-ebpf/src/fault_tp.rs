//! The fault path on kernels without kprobes or fentry.
//!
//! Entry: `exceptions:page_fault_user` / `page_fault_kernel` fire once per exception,
//! before any VMA lookup; they record the time and the x86 error code per thread.
//!
//! Completion: `mm_account_fault` raises the perf software event PAGE_FAULTS_MIN or
//! PAGE_FAULTS_MAJ exactly when it adds to the task's min_flt/maj_flt (and regs is
//! set, i.e. not get_user_pages). Counting there makes our totals the kernel's own
//! definition of a fault. The VMA is looked up here, once per fault, when it is
//! sure to exist (stack growth has happened by then).
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, perf_event},
    programs::{BtfTracePointContext, PerfEventContext},
};
use rmaptrace_common::{access, counter, path_id, vma_ident, vma_status, FaultKey, VmaInfo};

use crate::{
    aggregate::{self, Completed},
    maps::{bump, config, map_gen, traced_current, Inflight, INFLIGHT},
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
                _pad3: 0,
                cache_gen: 0,
                cache_start: 0,
                cache_end: 0,
                cache_ident: 0,
                _pad2: 0,
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

#[inline(always)]
fn on_completion(ctx: &PerfEventContext, major: bool) {
    let Some((tgid, tid)) = traced_current() else {
        return;
    };
    // Read before any VMA lookup: a mapping change racing with this fault then
    // leaves the cache filled below already stale, never wrongly current.
    let gen = map_gen(tgid);
    let now = unsafe { bpf_ktime_get_ns() };
    let (addr, ip) = unsafe { ((*ctx.ctx).addr, (*ctx.ctx).regs.rip) };

    // One raw pointer to this thread's slot, used for every read and write (two
    // live `&mut` to one map value would be undefined behaviour).
    let slot: Option<*mut Inflight> = INFLIGHT.get_ptr_mut(tid);
    let mut acc = access::NO_ENTRY;
    let mut latency = 0u64;
    let mut cached = None;
    if let Some(s) = slot {
        unsafe {
            if (*s).ts_ns != 0 && (*s).page == addr >> PAGE_SHIFT {
                acc = (*s).access;
                latency = now.saturating_sub((*s).ts_ns);
                (*s).ts_ns = 0;
            }
            // Fault records carry the full VMA, so --events always looks it up.
            if (*s).cache_valid != 0
                && (*s).cache_gen == gen
                && (*s).cache_start <= addr
                && addr < (*s).cache_end
                && config().fault_events == 0
            {
                cached = Some(((*s).cache_start, (*s).cache_ident));
            }
        }
    }
    if acc == access::NO_ENTRY {
        bump(counter::UNMATCHED_COMPLETION);
    }

    let mut info = VmaInfo::default();
    let (status, vm_start, ident) = match cached {
        Some((start, ident)) => {
            bump(counter::VMA_CACHE_HIT);
            (vma_status::FOUND, start, ident)
        }
        None => {
            bump(counter::VMA_LOOKUP);
            let status = vma::lookup(addr, &mut info);
            if status != vma_status::FOUND {
                (status, 0, 0)
            } else {
                let ident = vma_ident(info.vm_ops, info.file, info.vm_flags);
                if let Some(s) = slot {
                    unsafe {
                        (*s).cache_valid = 1;
                        (*s).cache_gen = gen;
                        (*s).cache_start = info.vm_start;
                        (*s).cache_end = info.vm_end;
                        (*s).cache_ident = ident;
                    }
                }
                (status, info.vm_start, ident)
            }
        }
    };
    let described = cached.is_none();
    aggregate::record(
        &Completed {
            key: FaultKey {
                tgid,
                access: acc,
                path: path_id::DERIVED,
                vma_status: status,
                _pad: 0,
                vm_start,
                ident,
                _pad2: 0,
            },
            tid,
            now,
            addr,
            ip,
            major,
            latency,
            handler_ns: 0,
            vma: if described && status == vma_status::FOUND {
                Some(&info)
            } else {
                None
            },
        },
        |out| {
            if described {
                *out = info;
            } else {
                // bpf_find_vma's context must live on the stack.
                let mut fresh = VmaInfo::default();
                let _ = vma::lookup(addr, &mut fresh);
                *out = fresh;
            }
        },
    );
}
