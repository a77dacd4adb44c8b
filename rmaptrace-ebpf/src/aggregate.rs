//! Counting a completed fault: shared by every backend. One per-CPU hash update per
//! fault (in place after the first), the per-process totals, the VMA description
//! when it changed, and the optional per-fault ring buffer record.
use aya_ebpf::{macros::map, maps::PerCpuArray, programs::tracing::StackIdContext};
use rmaptrace_common::{
    access, anon_state, counter, event_kind, key_flags, latency_bucket, vm_flags, vma_status,
    FaultEvent, FaultKey, FaultOutcome, FaultStats, FaultVmaEvent, ProcStats, UnresolvedFault,
    VmaInfo, LAT_BUCKETS,
};

use crate::maps::{bump, config, off, EVENTS, FAULTS, PROCS};

pub const BPF_NOEXIST: u64 = 1;

/// A zeroed FaultStats to insert from: it is too large for the 512-byte BPF stack.
#[map]
static ZERO_STATS: PerCpuArray<FaultStats> = PerCpuArray::with_max_entries(1, 0);

/// Everything known about one completed fault. The backends write it into the
/// per-CPU COMPLETED slot and `record` reads it back from there: the verifier then
/// sees unknown values rather than one constant per branch the backend took, so
/// its states merge (Linux 6.1 gave up past a million instructions otherwise).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Completed {
    pub key: FaultKey,
    pub tid: u32,
    pub major: u8,
    /// The VMA_LOOKED_UP slot holds this fault's VMA.
    pub has_vma: u8,
    /// The thread's counters were read for this fault already (THREADS).
    pub accounted: u8,
    /// Lockless walks of the VMA tree made again (see `fault_tp::lookup`).
    pub lookup_walks: u8,
    /// What the VMA's `anon_vma` is known to be without reading it
    /// (`anon_state`, from the thread's VMA cache).
    pub anon: u8,
    /// The VMA came from the thread's cache (tracepoint backend).
    pub cache_hit: u8,
    /// The fault is counted without its latency (counting at the entry:
    /// latency comes from sampled completions).
    pub untimed: u8,
    /// Counting at the entry: the fault will make the VMA's anon_vma if it
    /// has none (a write to a private mapping), which the kernel does only
    /// after the entry.
    pub makes_anon: u8,
    /// The lockless walk found the VMA at the address write-locked by the
    /// window of sequence `locked_seq` (`vma::Walk::Locked`).
    pub locked: u8,
    pub _pad: [u8; 3],
    pub locked_seq: u32,
    pub _pad2: u32,
    pub now: u64,
    pub addr: u64,
    pub ip: u64,
    /// Entry to completion, meaningful unless `key.access` has NO_ENTRY.
    pub latency: u64,
    /// Time spent in `vm_ops->fault`, 0 when not measured.
    pub handler_ns: u64,
    /// The VMA struct, where the backend has it without a lookup (the
    /// tracepoint backend's cache hit, the kernel-function backends).
    pub vma: u64,
}

impl Completed {
    /// Starts the slot for a fault of thread `tid` of `tgid` at `addr`, its
    /// VMA taken as found until a lookup says otherwise (its lifetime is
    /// numbered by `record`), and everything a backend finds out later
    /// cleared.
    #[inline(always)]
    pub fn begin(&mut self, (tgid, tid): (u32, u32), access: u8, path: u8, now: u64, addr: u64) {
        self.key = FaultKey {
            tgid,
            access,
            path,
            vma_status: vma_status::FOUND,
            flags: 0,
            life: 0,
        };
        self.tid = tid;
        self.major = 0;
        self.has_vma = 0;
        self.accounted = 0;
        self.lookup_walks = 0;
        self.anon = anon_state::UNKNOWN;
        self.cache_hit = 0;
        self.untimed = 0;
        self.makes_anon = 0;
        self.locked = 0;
        self.now = now;
        self.addr = addr;
        self.ip = 0;
        self.latency = 0;
        self.handler_ns = 0;
        self.vma = 0;
    }
}

#[map]
static COMPLETED: PerCpuArray<Completed> = PerCpuArray::with_max_entries(1, 0);

/// The VMA a backend looked up for the fault in COMPLETED (see `has_vma`), kept so
/// that `record` need not call bpf_find_vma again: a second call in one program
/// fails with -EBUSY where interrupts are off.
#[map]
static VMA_LOOKED_UP: PerCpuArray<VmaInfo> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn looked_up_slot() -> Option<*mut VmaInfo> {
    VMA_LOOKED_UP.get_ptr_mut(0)
}

/// This CPU's slot for the fault being completed, as a raw pointer: a program
/// runs to its end on its CPU, and each function that fills or reads the slot
/// makes one reference of it for as long as it needs it.
#[inline(always)]
pub fn completed_slot() -> Option<*mut Completed> {
    COMPLETED.get_ptr_mut(0)
}

/// Counts the fault in the COMPLETED slot. `vma` is its VMA when the backend has
/// it in a map (the kernel-function backends); the tracepoint backend leaves it in
/// VMA_LOOKED_UP when it looked it up (cache miss; a hit comes with its lifetime
/// already in the key). Nothing here calls bpf_find_vma: a second call per program
/// fails where interrupts are off, and each call site multiplies the verifier's work.
#[inline(always)]
pub fn record<C: StackIdContext>(ctx: &C, vma: Option<&VmaInfo>) {
    let Some(c) = completed_slot() else {
        return;
    };
    // SAFETY: this CPU's slot (see `completed_slot`), reached through this one
    // reference; the caller's own ended before this call.
    let c = unsafe { &mut *c };
    let vma = match vma {
        Some(v) => Some(v),
        // SAFETY: this CPU's looked-up VMA, only read here.
        None if c.has_vma != 0 => looked_up_slot().map(|v| unsafe { &*v }),
        None => None,
    };
    // Whether the VMA had its anon_vma when this fault completed (the first
    // write fault of a private mapping makes it). Branch-free: a failed read
    // (no VMA) leaves 0. The thread's VMA cache may know it without a read.
    let vma_ptr = match vma {
        Some(v) => v.vma,
        None => c.vma,
    };
    let anon: u64 = match c.anon {
        anon_state::SET => 1,
        anon_state::NEVER => 0,
        _ => crate::maps::kernel_read_flat(vma_ptr, off!(vma_anon_vma)),
    };
    if anon != 0 && c.cache_hit != 0 && c.anon == anon_state::UNKNOWN {
        crate::maps::set_cached_anon(c.tid);
    }
    if c.key.vma_status == vma_status::FOUND && c.key.life == 0 {
        match vma {
            Some(v) => {
                c.key.life = crate::life::life_of(v, c.key.tgid, c.now);
                if c.key.life == 0 {
                    c.key.vma_status = vma_status::UNTRACKED;
                }
                if c.has_vma != 0 {
                    // What later faults on the cached VMA need not read: an
                    // anon_vma, once made, stays; a shared mapping has none.
                    let state = if anon != 0 {
                        anon_state::SET
                    } else if v.vm_flags & vm_flags::VM_SHARED != 0 {
                        anon_state::NEVER
                    } else {
                        anon_state::UNKNOWN
                    };
                    crate::maps::set_cached_life(c.tid, c.key.life, state);
                }
            }
            None => c.key.vma_status = vma_status::ERROR,
        }
    }
    let has_anon = ((anon | anon.wrapping_neg()) >> 63) as u8 | c.makes_anon;
    c.key.flags = has_anon * key_flags::ANON_VMA;
    let major = c.major != 0;
    let timed = c.key.access & access::NO_ENTRY == 0 && c.untimed == 0;
    let added = add_to_aggregate(
        &c.key,
        major,
        c.now,
        timed.then_some(c.latency),
        c.handler_ns,
    );
    match added {
        Added::Full => count_overflow(c.key.tgid, major),
        // The first fault to find the anon_vma starts a row of its own.
        Added::NewRow if c.key.flags & key_flags::ANON_VMA != 0 && c.key.life != 0 => {
            crate::anon_vma::seen_at_fault(c.key.life, c.now)
        }
        _ => {}
    }
    if config().stacks != 0 && added != Added::Full {
        crate::stacks::count(ctx, &c.key);
    }
    if c.accounted == 0 {
        crate::task::account_fault(c.tid, c.key.tgid, major);
    }
    if c.key.vma_status != vma_status::FOUND {
        send_unresolved(&c.key, c.tid, c.now, c.addr, c.latency, c.major);
    }
    if config().fault_events != 0 {
        // Records name the lifetime; the VMA is described at a row's first
        // fault and after each lookup (the cached VMA had changed: a stack
        // grew, an mprotect split it).
        match vma {
            Some(v) if added == Added::NewRow || c.has_vma != 0 => send_fault_with_vma(c, v),
            _ => send_fault(c),
        }
    }
}

#[inline(always)]
fn send_unresolved(key: &FaultKey, tid: u32, now: u64, addr: u64, latency: u64, major: u8) {
    let mm_seq: u32 = if off!(has_vm_lock_seq) != 0 {
        crate::maps::kernel_read(crate::maps::current_mm(), off!(mm_lock_seq))
    } else {
        0
    };
    let ev = UnresolvedFault {
        header: rmaptrace_common::EventHeader {
            kind: event_kind::UNRESOLVED_FAULT,
            tgid: key.tgid,
            tid,
            _pad: 0,
            ts_ns: now,
        },
        addr,
        latency_ns: latency,
        access: key.access,
        path: key.path,
        vma_status: key.vma_status,
        major,
        mm_seq,
        has_mm_seq: off!(has_vm_lock_seq) as u8,
        _pad: [0; 7],
    };
    if EVENTS.output::<UnresolvedFault>(&ev, 0).is_err() {
        bump(counter::EVENTS_LOST);
    }
}

#[derive(PartialEq, Eq)]
enum Added {
    ToRow,
    NewRow,
    Full,
}

/// Adds the fault to its row.
#[inline(always)]
fn add_to_aggregate(
    key: &FaultKey,
    major: bool,
    now: u64,
    latency: Option<u64>,
    handler_ns: u64,
) -> Added {
    let mut added = Added::ToRow;
    let mut stats = FAULTS.get_ptr_mut(key);
    if stats.is_none() {
        let Some(zero) = ZERO_STATS.get(0) else {
            return Added::Full;
        };
        let _ = FAULTS.insert(key, zero, BPF_NOEXIST);
        stats = FAULTS.get_ptr_mut(key);
        added = Added::NewRow;
    }
    let Some(stats) = stats else {
        return Added::Full;
    };
    // SAFETY: this CPU's value of the row, reached through this one reference.
    let stats = unsafe { &mut *stats };
    stats.last_ns = now;
    if major {
        stats.major += 1;
    } else {
        stats.minor += 1;
    }
    if handler_ns != 0 {
        stats.handler_calls += 1;
        stats.handler_ns += handler_ns;
    }
    if let Some(latency) = latency {
        add_latency(stats, latency);
    }
    added
}

#[inline(always)]
fn add_latency(stats: &mut FaultStats, latency: u64) {
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

/// What happened to a fault counted at its entry, once its outcome shows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel did not count it: its minor count is taken back.
    Failed,
    /// It belongs to another row: its minor count leaves this one.
    Moved,
    /// Its major completion: moved from minor to major, with its latency
    /// where its entry was timed.
    Major(Option<u64>),
    /// A sampled minor completion: its latency only.
    MinorSampled(u64),
}

/// Settles a fault that was counted as minor in `key`'s row at its entry.
/// Per-CPU values: the change lands on this CPU's value of the row (zero on
/// CPUs that never counted in it), so one may go below zero and wrap; the
/// sum over CPUs, which userspace takes with wrapping adds, is exact.
#[inline(always)]
pub fn settle(key: &FaultKey, outcome: Outcome) {
    let Some(stats) = FAULTS.get_ptr_mut(key) else {
        return; // the row never made it into a full table
    };
    // SAFETY: this CPU's value of the row, reached through this one reference.
    let stats = unsafe { &mut *stats };
    match outcome {
        Outcome::Failed => {
            stats.minor = stats.minor.wrapping_sub(1);
            bump(counter::FAULT_TAKEN_BACK);
        }
        Outcome::Moved => stats.minor = stats.minor.wrapping_sub(1),
        Outcome::Major(latency) => {
            stats.minor = stats.minor.wrapping_sub(1);
            stats.major += 1;
            if let Some(latency) = latency {
                add_latency(stats, latency);
            }
        }
        Outcome::MinorSampled(latency) => add_latency(stats, latency),
    }
}

/// Counts a minor fault in `key`'s row if the row exists (on this CPU's
/// value): false when it does not, for `record` to make it.
#[inline(always)]
pub fn count_minor_in_row(key: &FaultKey, now: u64) -> bool {
    let Some(stats) = FAULTS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: this CPU's value of the row, reached through this one reference.
    let stats = unsafe { &mut *stats };
    stats.minor += 1;
    stats.last_ns = now;
    true
}

/// Counts a minor fault whose VMA its entry did not find but was found since
/// (counting at the entry), in the row `key` names.
#[inline(always)]
pub fn count_placed_late(key: &FaultKey, now: u64) {
    match add_to_aggregate(key, false, now, None, 0) {
        Added::Full => count_overflow(key.tgid, false),
        Added::NewRow if key.flags & key_flags::ANON_VMA != 0 => {
            crate::anon_vma::seen_at_fault(key.life, now)
        }
        _ => {}
    }
}

/// Counts a confirmed fault whose VMA its entry did not find (counting at the
/// entry): a row without a lifetime, and a record from which userspace
/// places it by address, as for the completion's failed lookups.
#[inline(always)]
pub fn count_unplaced(
    key: &FaultKey,
    tid: u32,
    now: u64,
    addr: u64,
    major: bool,
    latency: Option<u64>,
) {
    if add_to_aggregate(key, major, now, latency, 0) == Added::Full {
        count_overflow(key.tgid, major);
    }
    send_unresolved(key, tid, now, addr, latency.unwrap_or(0), major as u8);
}

#[inline(always)]
fn count_overflow(tgid: u32, major: bool) {
    let mut stats = PROCS.get_ptr_mut(tgid);
    if stats.is_none() {
        let mut zero = core::mem::MaybeUninit::<ProcStats>::uninit();
        // SAFETY: a local ProcStats (plain integers) on the stack, zeroed
        // before it is read.
        let zero = unsafe {
            crate::mem::zero(zero.as_mut_ptr());
            zero.assume_init_ref()
        };
        let _ = PROCS.insert(tgid, zero, BPF_NOEXIST);
        stats = PROCS.get_ptr_mut(tgid);
    }
    let Some(stats) = stats else {
        bump(counter::PROC_TABLE_FULL);
        return;
    };
    // SAFETY: this CPU's value for the process, reached through this one
    // reference.
    let stats = unsafe { &mut *stats };
    if major {
        stats.major += 1;
    } else {
        stats.minor += 1;
    }
}

/// Bytes of unread records past which a fault record wakes the reader. Below
/// it, fault records wake nobody: userspace drains the ring on a short timer,
/// and a storm of 100k faults a second would otherwise wake it for most of
/// them.
#[inline(always)]
fn submit_flags() -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    const BPF_RB_RING_SIZE: u64 = 1;
    if EVENTS.query(BPF_RB_AVAIL_DATA) > EVENTS.query(BPF_RB_RING_SIZE) >> 3 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Fills the fault part of a record.
///
/// # Safety
/// `ev` points at a reserved record, not otherwise referenced until submitted.
#[inline(always)]
unsafe fn fill_fault(ev: *mut FaultEvent, c: &Completed, kind: u32) {
    let times = (c.now, c.latency);
    fill_record(
        ev,
        kind,
        &c.key,
        c.tid,
        times,
        (c.addr, c.ip),
        // Branch-free: this is inlined into the lookup (see `kernel_read_flat`).
        (c.major, c.untimed * rmaptrace_common::FAULT_AT_ENTRY),
    );
}

/// Fills a fault record of `key`'s row, of thread `tid`, at `now` with
/// `latency`, at `addr` from instruction `ip`, `major`, `pending` its outcome.
///
/// # Safety
/// As `fill_fault`.
#[inline(always)]
unsafe fn fill_record(
    ev: *mut FaultEvent,
    kind: u32,
    key: &FaultKey,
    tid: u32,
    (now, latency): (u64, u64),
    (addr, ip): (u64, u64),
    (major, pending): (u8, u8),
) {
    (*ev).header.kind = kind;
    (*ev).header.tgid = key.tgid;
    (*ev).header.tid = tid;
    (*ev).header._pad = 0;
    (*ev).header.ts_ns = now;
    (*ev).addr = addr;
    (*ev).ip = ip;
    (*ev).latency_ns = latency;
    (*ev).access = key.access;
    (*ev).path = key.path;
    (*ev).vma_status = key.vma_status;
    (*ev).major = major;
    (*ev).pending = pending;
    (*ev)._pad = [0; 3];
    (*ev).life = key.life;
}

#[inline(always)]
pub fn send_fault(c: &Completed) {
    let Some(mut entry) = EVENTS.reserve::<FaultEvent>(0) else {
        bump(counter::EVENTS_LOST);
        return;
    };
    // SAFETY: the reserved record, ours until it is submitted.
    unsafe { fill_fault(entry.as_mut_ptr(), c, event_kind::FAULT) };
    entry.submit(submit_flags());
}

#[inline(always)]
fn send_fault_with_vma(c: &Completed, vma: &VmaInfo) {
    let Some(mut entry) = EVENTS.reserve::<FaultVmaEvent>(0) else {
        bump(counter::EVENTS_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: the reserved record, ours until it is submitted; `vma` is
    // another object.
    unsafe {
        fill_fault(&raw mut (*ev).fault, c, event_kind::FAULT_VMA);
        crate::mem::copy(&raw mut (*ev).vma, vma);
    }
    entry.submit(submit_flags());
}

/// The record of a fault counted at its entry in an existing row (the
/// thread's cached VMA): its outcome follows if it is not a minor fault.
#[inline(always)]
pub fn send_counted_at_entry(key: &FaultKey, tid: u32, now: u64, addr: u64, ip: u64) {
    let Some(mut entry) = EVENTS.reserve::<FaultEvent>(0) else {
        bump(counter::EVENTS_LOST);
        return;
    };
    // SAFETY: the reserved record, ours until it is submitted.
    unsafe {
        let ev = entry.as_mut_ptr();
        fill_record(
            ev,
            event_kind::FAULT,
            key,
            tid,
            (now, 0),
            (addr, ip),
            (0, rmaptrace_common::FAULT_AT_ENTRY),
        );
    }
    entry.submit(submit_flags());
}

/// Where the thread's latest fault recorded at its entry without a VMA (or
/// in one replaced before it was handled) was placed since: its lifetime,
/// with the VMA, for userspace to put on the record it holds.
#[inline(always)]
pub fn send_placed(key: &FaultKey, tid: u32, now: u64, addr: u64, vma: &VmaInfo) {
    let Some(mut entry) = EVENTS.reserve::<FaultVmaEvent>(0) else {
        bump(counter::EVENTS_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: the reserved record, ours until it is submitted; `vma` is
    // another object.
    unsafe {
        fill_record(
            &raw mut (*ev).fault,
            event_kind::FAULT_VMA,
            key,
            tid,
            (now, 0),
            (addr, 0),
            (0, rmaptrace_common::FAULT_PLACED),
        );
        crate::mem::copy(&raw mut (*ev).vma, vma);
    }
    entry.submit(submit_flags());
}

/// How the thread's latest fault recorded at its entry ended, where that is
/// not as a minor fault without latency.
#[inline(always)]
pub fn send_outcome(tgid: u32, tid: u32, now: u64, addr: u64, outcome: u8, latency: u64) {
    let ev = FaultOutcome {
        header: rmaptrace_common::EventHeader {
            kind: event_kind::FAULT_OUTCOME,
            tgid,
            tid,
            _pad: 0,
            ts_ns: now,
        },
        addr,
        latency_ns: latency,
        outcome,
        _pad: [0; 7],
    };
    if EVENTS.output::<FaultOutcome>(&ev, submit_flags()).is_err() {
        bump(counter::EVENTS_LOST);
    }
}
