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
use rmaptrace_common::{access, counter, path_id, vma_status, FaultKey, VmaInfo};

use crate::{
    aggregate::{self, Completed},
    maps::{bump, traced_current, Inflight, INFLIGHT},
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
    let entry = Inflight {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        page: address >> PAGE_SHIFT,
        ip: 0,
        access: access::from_x86_error_code(error_code, kernel_mode),
        _pad: [0; 7],
    };
    match INFLIGHT.get_ptr_mut(tid) {
        Some(slot) => unsafe {
            if (*slot).ts_ns != 0 {
                bump(counter::ENTRY_WITHOUT_COMPLETION);
            }
            *slot = entry;
        },
        None => {
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
    let now = unsafe { bpf_ktime_get_ns() };
    let (addr, ip) = unsafe { ((*ctx.ctx).addr, (*ctx.ctx).regs.rip) };

    let mut acc = access::NO_ENTRY;
    let mut latency = 0u64;
    if let Some(slot) = INFLIGHT.get_ptr_mut(tid) {
        unsafe {
            if (*slot).ts_ns != 0 && (*slot).page == addr >> PAGE_SHIFT {
                acc = (*slot).access;
                latency = now.saturating_sub((*slot).ts_ns);
                (*slot).ts_ns = 0;
            }
        }
    }
    if acc == access::NO_ENTRY {
        bump(counter::UNMATCHED_COMPLETION);
    }

    let mut info = VmaInfo::default();
    let status = vma::lookup(addr, &mut info);
    let key = FaultKey {
        tgid,
        access: acc,
        path: path_id::DERIVED,
        vma_status: status,
        _pad: 0,
        vm_start: if status == vma_status::FOUND {
            info.vm_start
        } else {
            0
        },
    };

    let found = status == vma_status::FOUND;
    aggregate::record(&Completed {
        key,
        tid,
        now,
        addr,
        ip,
        major,
        latency,
        handler_ns: 0,
        vma: if found { Some(&info) } else { None },
    });
}
