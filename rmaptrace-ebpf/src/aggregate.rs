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

/// Where a new VMA's description is built before it is stored.
#[map]
static SCRATCH_VMA: PerCpuArray<VmaInfo> = PerCpuArray::with_max_entries(1, 0);

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
    /// The VMA for the fault record, when known (`--events` only).
    pub vma: Option<&'a VmaInfo>,
}

/// What happened to the aggregate row of a fault.
#[derive(PartialEq, Eq)]
pub enum Row {
    Existing,
    /// First fault with this key: the VMA must be described.
    New,
    /// The table is full: counted per process instead.
    Full,
}

/// Counts a completed fault. `describe` fills the VMA description when the row is
/// new (the only time it is stored), so the common case touches one map.
#[inline(always)]
pub fn record(c: &Completed, describe: impl FnOnce(&mut VmaInfo)) {
    match add_to_aggregate(&c.key, c.major, c.latency, c.handler_ns) {
        Row::Existing => {}
        Row::New => {
            if c.key.vma_status == rmaptrace_common::vma_status::FOUND {
                remember_vma(&c.key, describe);
            }
        }
        Row::Full => count_overflow(c.key.tgid, c.major),
    }
    if config().fault_events != 0 {
        send_event(c);
    }
}

#[inline(always)]
fn add_to_aggregate(key: &FaultKey, major: bool, latency: u64, handler_ns: u64) -> Row {
    let mut row = Row::Existing;
    let mut stats = FAULTS.get_ptr_mut(key);
    if stats.is_none() {
        let Some(zero) = ZERO_STATS.get(0) else {
            return Row::Full;
        };
        let _ = FAULTS.insert(key, zero, BPF_NOEXIST);
        stats = FAULTS.get_ptr_mut(key);
        row = Row::New;
    }
    let Some(stats) = stats else {
        return Row::Full;
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
    row
}

#[inline(always)]
fn count_overflow(tgid: u32, major: bool) {
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
}

/// Stores the description of a VMA that got its first aggregate row.
#[inline(always)]
fn remember_vma(key: &FaultKey, describe: impl FnOnce(&mut VmaInfo)) {
    let vkey = VmaKey {
        tgid: key.tgid,
        ident: key.ident,
        vm_start: key.vm_start,
    };
    if unsafe { VMAS.get(vkey) }.is_some() {
        return; // another access kind of the same VMA stored it already
    }
    let Some(info) = SCRATCH_VMA.get_ptr_mut(0) else {
        return;
    };
    let info = unsafe { &mut *info };
    *info = VmaInfo::default();
    describe(info);
    if VMAS.insert(vkey, *info, 0).is_err() {
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
