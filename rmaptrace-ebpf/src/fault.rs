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
    macros::{btf_tracepoint, map, perf_event},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, PerfEventContext},
};
use rmaptrace_common::{
    access, counter, latency_bucket, path_id, vma_status, FaultEvent, FaultKey, FaultStats,
    ProcStats, VmaInfo, VmaKey, LAT_BUCKETS,
};

use crate::{
    maps::{bump, config, traced_current, Inflight, EVENTS, FAULTS, INFLIGHT, PROCS, VMAS},
    vma,
};

const BPF_NOEXIST: u64 = 1;
const PAGE_SHIFT: u64 = 12;

/// A zeroed FaultStats to insert from: it is too large for the 512-byte BPF stack.
#[map]
static ZERO_STATS: PerCpuArray<FaultStats> = PerCpuArray::with_max_entries(1, 0);

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

    count_process(tgid, major, add_to_aggregate(&key, major, latency));
    if status == vma_status::FOUND {
        remember_vma(tgid, &info);
    }
    if config().fault_events != 0 {
        send_event(tgid, tid, now, addr, ip, latency, &key, major, &info);
    }
}

/// Returns false when the aggregate map is full.
#[inline(always)]
fn add_to_aggregate(key: &FaultKey, major: bool, latency: u64) -> bool {
    let mut stats = FAULTS.get_ptr_mut(key);
    if stats.is_none() {
        let Some(zero) = ZERO_STATS.get(0) else {
            return false;
        };
        let _ = FAULTS.insert(key, zero, BPF_NOEXIST);
        stats = FAULTS.get_ptr_mut(key);
    }
    let Some(stats) = stats else {
        return false;
    };
    let stats = unsafe { &mut *stats };
    if major {
        stats.major += 1;
    } else {
        stats.minor += 1;
    }
    if key.access & access::NO_ENTRY == 0 {
        stats.timed += 1;
        stats.latency_sum_ns += latency;
        if latency > stats.latency_max_ns {
            stats.latency_max_ns = latency;
        }
        let bucket = latency_bucket(latency);
        if bucket < LAT_BUCKETS {
            stats.latency_hist[bucket] += 1;
        }
    }
    true
}

#[inline(always)]
fn count_process(tgid: u32, major: bool, aggregated: bool) {
    let mut stats = PROCS.get_ptr_mut(tgid);
    if stats.is_none() {
        let _ = PROCS.insert(tgid, ProcStats::default(), BPF_NOEXIST);
        stats = PROCS.get_ptr_mut(tgid);
    }
    let Some(stats) = stats else {
        bump(counter::PROC_TABLE_FULL);
        return;
    };
    let stats = unsafe { &mut *stats };
    if major {
        stats.major += 1;
    } else {
        stats.minor += 1;
    }
    if !aggregated {
        stats.aggregate_full += 1;
    }
}

/// Stores the VMA's description unless the stored one is already the same.
#[inline(always)]
fn remember_vma(tgid: u32, info: &VmaInfo) {
    let key = VmaKey {
        tgid,
        _pad: 0,
        vm_start: info.vm_start,
    };
    if let Some(known) = unsafe { VMAS.get(key) } {
        if known.vm_end == info.vm_end
            && known.vm_flags == info.vm_flags
            && known.fault_fn == info.fault_fn
            && known.ino == info.ino
        {
            return;
        }
    }
    if VMAS.insert(key, info, 0).is_err() {
        bump(counter::VMA_TABLE_FULL);
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn send_event(
    tgid: u32,
    tid: u32,
    now: u64,
    addr: u64,
    ip: u64,
    latency: u64,
    key: &FaultKey,
    major: bool,
    info: &VmaInfo,
) {
    let Some(mut entry) = EVENTS.reserve::<FaultEvent>(0) else {
        bump(counter::EVENTS_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).header.kind = rmaptrace_common::event_kind::FAULT;
        (*ev).header.tgid = tgid;
        (*ev).header.tid = tid;
        (*ev).header._pad = 0;
        (*ev).header.ts_ns = now;
        (*ev).addr = addr;
        (*ev).ip = ip;
        (*ev).latency_ns = latency;
        (*ev).access = key.access;
        (*ev).path = key.path;
        (*ev).vma_status = key.vma_status;
        (*ev).major = major as u8;
        (*ev)._pad = 0;
        (*ev).vma = *info;
    }
    entry.submit(0);
}
