//! Counting a completed fault: shared by every backend. One per-CPU hash update per
//! fault (in place after the first), the per-process totals, the VMA description
//! when it changed, and the optional per-fault ring buffer record.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use rmaptrace_common::{
    access, counter, latency_bucket, FaultEvent, FaultKey, FaultStats, ProcStats, VmaInfo, VmaKey,
    LAT_BUCKETS,
};

use crate::maps::{bump, config, EVENTS, FAULTS, PROCS, VMAS};

pub const BPF_NOEXIST: u64 = 1;

/// A zeroed FaultStats to insert from: it is too large for the 512-byte BPF stack.
#[map]
static ZERO_STATS: PerCpuArray<FaultStats> = PerCpuArray::with_max_entries(1, 0);

/// Everything known about one completed fault.
pub struct Completed<'a> {
    pub key: FaultKey,
    pub tid: u32,
    pub now: u64,
    pub addr: u64,
    pub ip: u64,
    pub major: bool,
    /// Entry to completion, meaningful unless `key.access` has NO_ENTRY.
    pub latency: u64,
    /// Time spent in `vm_ops->fault`, 0 when not measured.
    pub handler_ns: u64,
    /// The VMA, when `key.vma_status` is FOUND.
    pub vma: Option<&'a VmaInfo>,
}

/// Counts a completed fault everywhere it is counted.
#[inline(always)]
pub fn record(c: &Completed) {
    let aggregated = add_to_aggregate(&c.key, c.major, c.latency, c.handler_ns);
    count_process(c.key.tgid, c.major, aggregated);
    if let Some(info) = c.vma {
        remember_vma(c.key.tgid, info);
    }
    if config().fault_events != 0 {
        send_event(c);
    }
}

/// Returns false when the aggregate map is full.
#[inline(always)]
fn add_to_aggregate(key: &FaultKey, major: bool, latency: u64, handler_ns: u64) -> bool {
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
    if handler_ns != 0 {
        stats.handler_calls += 1;
        stats.handler_ns += handler_ns;
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
fn send_event(c: &Completed) {
    let Some(mut entry) = EVENTS.reserve::<FaultEvent>(0) else {
        bump(counter::EVENTS_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).header.kind = rmaptrace_common::event_kind::FAULT;
        (*ev).header.tgid = c.key.tgid;
        (*ev).header.tid = c.tid;
        (*ev).header._pad = 0;
        (*ev).header.ts_ns = c.now;
        (*ev).addr = c.addr;
        (*ev).ip = c.ip;
        (*ev).latency_ns = c.latency;
        (*ev).access = c.key.access;
        (*ev).path = c.key.path;
        (*ev).vma_status = c.key.vma_status;
        (*ev).major = c.major as u8;
        (*ev)._pad = 0;
        match c.vma {
            Some(info) => (*ev).vma = *info,
            None => (*ev).vma = VmaInfo::default(),
        }
    }
    entry.submit(0);
}
