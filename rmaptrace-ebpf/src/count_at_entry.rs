//! The tracepoint backend counting at the entry: one program per fault.
//!
//! The completion's perf software event costs about as much per fault as a
//! whole bpftrace one-liner, before any BPF runs. So, where the kernel's VMAs
//! carry lock sequence numbers (6.4+), and no stacks are asked for (they are
//! walked at the completion), each fault is counted at its
//! entry (`exceptions:page_fault_{user,kernel}`), as a minor fault in the row
//! of the VMA found there, and settled once its outcome shows:
//!
//! - a major completion (`PAGE_FAULTS_MAJ`, every one: they are rare) moves it
//!   to major, with its latency;
//! - a sampled minor completion (`PAGE_FAULTS_MIN`, one in N per CPU) gives
//!   its latency: minor-fault latency is a sample, labelled as such;
//! - at the thread's next entry or its exit, min_flt + maj_flt unmoved since
//!   it entered means the kernel did not count it (SIGSEGV, SIGBUS, an EFAULT
//!   fixup): it is taken back.
//!
//! With `--events` the entry sends the fault's record as a minor fault without
//! latency, and each of the above that settles it otherwise sends its outcome
//! (`FaultOutcome`) after it, for userspace to apply before writing it.
//!
//! A fault whose VMA the entry cannot find (nothing mapped there yet: a stack
//! about to grow, a mapping made by another thread meanwhile, or an address
//! that will fail) is counted only once confirmed, without a lifetime, and
//! placed by address in userspace.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, perf_event, tracepoint},
    maps::{HashMap, PerCpuArray, Queue},
    programs::{BtfTracePointContext, PerfEventContext, TracePointContext},
};
use rmaptrace_common::{
    access, anon_state, counter, fault_outcome, key_flags, path_id, vm_flags, vma_status,
    FastCount, FastSlot, FaultKey, ThreadAcct, ThreadFault, FAST_SLOTS, FAST_SLOT_AFTER,
    MINOR_LATENCY_SAMPLE_PERIOD,
};

use crate::{
    aggregate::{self, Completed, Outcome},
    fault_tp::{entry_of, lookup, Entry},
    maps::{
        bump, config, current_mm_seq, kernel_read, kernel_read_flat, known_untraced, off,
        traced_current, CurrentTask, THREADS,
    },
    task, vma,
};

const PAGE_SHIFT: u64 = 12;
const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// `pend_ts` of a fault whose entry was not timed (no clock reads 1).
const UNTIMED: u64 = 1;

/// What this CPU's entries know of the clock, which only some of them read
/// (it costs a third of the entry).
#[repr(C)]
struct EntryClock {
    /// Fault entries since the latest sampled minor completion. The sample
    /// takes the period's last minor completion on the CPU, so an entry near
    /// the period's end is timed. The sample resets it; an entry that
    /// completes otherwise (major, failed) shifts the guess until then, and a
    /// sample that finds its entry untimed is counted (`SAMPLE_UNTIMED`).
    phase: u32,
    _pad: u32,
    /// The latest time an entry read here: no later than any fault entering
    /// after it, so good for its row's `last_ns`.
    last_ns: u64,
}

#[map]
static ENTRY_CLOCK: PerCpuArray<EntryClock> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn entry_clock() -> Option<*mut EntryClock> {
    ENTRY_CLOCK.get_ptr_mut(0)
}

/// Counts an entry on this CPU: whether its completion may be the sampled one.
#[inline(always)]
fn minor_sample_due(clock: Option<*mut EntryClock>) -> bool {
    let Some(c) = clock else {
        return true;
    };
    // SAFETY: this CPU's value, reached through this one pointer.
    unsafe {
        (*c).phase = (*c).phase.saturating_add(1);
        (*c).phase as u64 + 1 >= MINOR_LATENCY_SAMPLE_PERIOD
    }
}

/// The time now where `timed`, else the latest time read on this CPU.
#[inline(always)]
fn entry_time(clock: Option<*mut EntryClock>, timed: bool) -> u64 {
    let Some(c) = clock else {
        // SAFETY: a helper without arguments.
        return unsafe { bpf_ktime_get_ns() };
    };
    // SAFETY: this CPU's value, reached through this one pointer; a helper
    // without arguments.
    unsafe {
        if timed {
            (*c).last_ns = bpf_ktime_get_ns();
            bump(counter::ENTRIES_TIMED);
        }
        (*c).last_ns
    }
}

#[inline(always)]
fn minor_sample_taken() {
    if let Some(c) = entry_clock() {
        // SAFETY: this CPU's value, reached through this one pointer.
        unsafe { (*c).phase = 0 };
    }
}

/// Minor faults of rows counted through a fast slot (see `FAST_SLOTS`), on
/// top of their `FAULTS` values; userspace adds the two.
#[map]
static ROW_FAST: PerCpuArray<FastCount> = PerCpuArray::with_max_entries(FAST_SLOTS, 0);

/// Each row's fast slot, one per row: threads of a process faulting on one
/// mapping share it. Userspace deletes an entry with its row, and returns
/// the slot, zeroed, through `SLOTS_FREE`.
#[map]
static ROW_SLOT: HashMap<FaultKey, u32> = HashMap::with_max_entries(FAST_SLOTS, 0);

#[map]
static SLOTS_FREE: Queue<u32> = Queue::with_max_entries(FAST_SLOTS, 0);

/// Slots this CPU numbered so far, from `cpu * fast_slots_per_cpu` on
/// (numbered without atomics).
#[map]
static SLOTS_NUMBERED: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The thread's fast slot entry for faults of `key`'s access.
///
/// # Safety
/// `s` is this thread's `ThreadFault`.
#[inline(always)]
unsafe fn fast_entry(s: *mut ThreadFault, key: &FaultKey) -> *mut FastSlot {
    let i = (key.access & (access::PRESENT | access::WRITE)) as usize & 3;
    &raw mut (*s).fast[i]
}

#[inline(always)]
fn fast_entry_is(f: &FastSlot, key: &FaultKey) -> bool {
    f.life == key.life && f.access == key.access && f.flags == key.flags
}

/// Counts a minor fault in `key`'s row through the thread's fast slot for
/// that access, where it has one; false where not.
///
/// # Safety
/// `s` is this thread's `ThreadFault`, not otherwise referenced meanwhile.
#[inline(always)]
unsafe fn count_minor_fast(s: *mut ThreadFault, key: &FaultKey, now: u64) -> bool {
    let f = *fast_entry(s, key);
    if f.slot == 0 || !fast_entry_is(&f, key) {
        return false;
    }
    let Some(c) = ROW_FAST.get_ptr_mut(f.slot - 1) else {
        return false;
    };
    // SAFETY: this CPU's value of the slot, reached through this one pointer.
    unsafe {
        (*c).minor += 1;
        (*c).last_ns = now;
    }
    true
}

/// Notes a fault just counted in `key`'s row through the hash (the row
/// exists): the thread's fast slot entry for that access follows the row,
/// and takes a slot once the thread has counted a few there.
///
/// # Safety
/// `s` is this thread's `ThreadFault`, not otherwise referenced meanwhile.
#[inline(always)]
unsafe fn counted_through_hash(s: *mut ThreadFault, key: &FaultKey) {
    let e = fast_entry(s, key);
    if !fast_entry_is(&*e, key) {
        *e = FastSlot {
            life: key.life,
            slot: 0,
            access: key.access,
            flags: key.flags,
            hashed: 1,
            _pad: 0,
        };
        return;
    }
    (*e).hashed = (*e).hashed.saturating_add(1);
    if (*e).hashed == FAST_SLOT_AFTER {
        adopt_fast_slot(e, key);
    }
}

/// Gives a thread's fast slot entry `e` the slot of `key`'s row: the row's
/// own, else a new one.
///
/// # Safety
/// `e` is in this thread's `ThreadFault`, not otherwise referenced meanwhile.
#[inline(always)]
unsafe fn adopt_fast_slot(e: *mut FastSlot, key: &FaultKey) {
    // SAFETY: the value is copied out at once.
    let slot = match unsafe { ROW_SLOT.get(key) } {
        Some(&slot) => slot,
        None => {
            let Some(slot) = new_fast_slot() else {
                bump(counter::FAST_SLOTS_FULL);
                return;
            };
            if ROW_SLOT.insert(key, slot, aggregate::BPF_NOEXIST).is_err() {
                let _ = SLOTS_FREE.push(slot, 0);
                // Another thread's, made just now; else the table is full.
                // SAFETY: the value is copied out at once.
                match unsafe { ROW_SLOT.get(key) } {
                    Some(&theirs) => theirs,
                    None => {
                        bump(counter::FAST_SLOTS_FULL);
                        return;
                    }
                }
            } else {
                slot
            }
        }
    };
    (*e).slot = slot + 1;
}

/// A zeroed slot: one userspace freed, else the next of this CPU's share.
#[inline(always)]
fn new_fast_slot() -> Option<u32> {
    if let Ok(Some(slot)) = SLOTS_FREE.pop() {
        bump(counter::FAST_SLOTS_REUSED);
        return Some(slot);
    }
    let share = config().fast_slots_per_cpu;
    let numbered = SLOTS_NUMBERED.get_ptr_mut(0)?;
    // SAFETY: a helper without arguments; this CPU's value, reached through
    // this one pointer.
    unsafe {
        let slot = bpf_get_smp_processor_id() * share + *numbered;
        if *numbered >= share || slot >= FAST_SLOTS {
            return None;
        }
        *numbered += 1;
        Some(slot)
    }
}

#[btf_tracepoint(function = "page_fault_user")]
pub fn fault_entry_count_user(ctx: BtfTracePointContext) -> i32 {
    on_entry::<false>(&ctx);
    0
}

#[btf_tracepoint(function = "page_fault_kernel")]
pub fn fault_entry_count_kernel(ctx: BtfTracePointContext) -> i32 {
    on_entry::<true>(&ctx);
    0
}

/// `mmap_lock:mmap_lock_acquire_returned`: a fault whose entry found the
/// VMA at its address being changed falls back to mmap_lock once the per-VMA
/// lock fails, and is handled under it, on the tree as it is now.
#[tracepoint]
pub fn fault_place_under_lock(ctx: TracePointContext) -> u32 {
    on_read_lock(&ctx);
    0
}

#[perf_event]
pub fn fault_major_settle(ctx: PerfEventContext) -> u32 {
    on_completion(&ctx, true);
    0
}

#[perf_event]
pub fn fault_minor_sample(ctx: PerfEventContext) -> u32 {
    on_completion(&ctx, false);
    0
}

/// This thread's entry in THREADS, when it is followed.
#[inline(always)]
fn followed(tid: u32, tgid: u32) -> Option<*mut ThreadAcct> {
    let t = THREADS.get_ptr_mut(tid)?;
    // SAFETY: a map value pointer, valid for this run, read through it once.
    (unsafe { (*t).tgid } == tgid).then_some(t)
}

/// The current thread (tgid, tid) and its THREADS entry, when it is followed
/// (a process found untraced on this CPU returns at once).
#[inline(always)]
fn followed_current() -> Option<(u32, u32, *mut ThreadAcct)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if known_untraced(tgid) {
        return None;
    }
    Some((tgid, tid, followed(tid, tgid)?))
}

/// Settles the thread's previous fault, given its counters now (at its next
/// entry or at its exit): the only other thing that moves them between two
/// exceptions of a thread is get_user_pages, inside a syscall. With `PLACE`,
/// a fault its entry could not place is placed now where that is certain
/// (`place_late`).
///
/// # Safety
/// `s` is this thread's `ThreadFault`, not otherwise referenced meanwhile.
#[inline(always)]
pub unsafe fn settle_previous<const PLACE: bool>(s: *mut ThreadFault, tid: u32, faults_now: u64) {
    if (*s).pend_ts == 0 {
        return;
    }
    (*s).pend_ts = 0;
    let counted_by_kernel = faults_now != (*s).pend_faults;
    if !counted_by_kernel && config().fault_events != 0 {
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        let (tgid, addr) = ((*s).pend_key.tgid, (*s).pend_addr);
        aggregate::send_outcome(tgid, tid, now, addr, fault_outcome::TAKEN_BACK, 0);
    }
    if (*s).pend_counted != 0 {
        if !counted_by_kernel {
            aggregate::settle(&(*s).pend_key, Outcome::Failed);
        }
    } else if counted_by_kernel {
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        if !(PLACE && place_late(s, now)) {
            aggregate::count_unplaced(&(*s).pend_key, tid, now, (*s).pend_addr, false, None);
        }
    }
}

/// A read acquire of mmap_lock by a thread whose latest fault, not yet
/// accounted by the kernel (min_flt + maj_flt as at its entry), is in
/// progress: the fault handler's own, after its per-VMA lock failed (the VMA
/// was being changed), which finds the VMA in the tree as it is now and holds
/// it until the fault completes. A fault its entry could not place is counted
/// there now, as at an entry (taken back if the kernel does not count it); one
/// its entry counted in a VMA since replaced moves there. A thread that takes
/// mmap_lock again after its fault failed (in a signal handler's syscalls)
/// places it too, and the settling takes it back from where it went.
#[inline(always)]
fn on_read_lock(ctx: &TracePointContext) {
    // SAFETY: offsets of this tracepoint's record, from its tracefs format.
    let (write, success, mm) = unsafe {
        (
            ctx.read_at::<u8>(off!(mmap_lock_write) as usize)
                .unwrap_or(1),
            ctx.read_at::<u8>(off!(mmap_lock_success) as usize)
                .unwrap_or(0),
            ctx.read_at::<u64>(off!(mmap_lock_mm) as usize).unwrap_or(0),
        )
    };
    if write != 0 || success == 0 {
        return;
    }
    let Some((_, _, t)) = followed_current() else {
        return;
    };
    let (min_flt, maj_flt) = task::current_faults();
    // SAFETY: `t` is this thread's map value, reached through this one
    // pointer; no reference to it is held.
    unsafe {
        let s = &raw mut (*t).fault;
        if (*s).pend_ts == 0 || (*s).pend_faults != min_flt + maj_flt {
            return;
        }
        // Another process's mmap_lock (reading its /proc maps): not the fault's.
        if current_mm_seq().0 != mm {
            return;
        }
        // SAFETY: a helper without arguments.
        let now = bpf_ktime_get_ns();
        let Some(key) = place(s, mm, now) else {
            return;
        };
        if (*s).pend_counted != 0 {
            if key.life == (*s).pend_key.life {
                return;
            }
            aggregate::settle(&(*s).pend_key, Outcome::Moved);
            bump(counter::MOVED_LATE);
        } else {
            bump(counter::PLACED_LATE);
        }
        aggregate::count_placed_late(&key, now);
        (*s).pend_key = key;
        (*s).pend_counted = 1;
        (*t).last_min = min_flt + 1;
        send_placed_record(&key, (*s).pend_addr, now);
    }
}

/// With `--events`, the VMA a fault was placed in, for its record (sent at
/// its entry without it), from the lookup `place` just made.
#[inline(always)]
fn send_placed_record(key: &FaultKey, addr: u64, now: u64) {
    if config().fault_events == 0 {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(v) = aggregate::looked_up_slot() {
        // SAFETY: this CPU's looked-up VMA, filled by `place`, only read here.
        aggregate::send_placed(key, tid, now, addr, unsafe { &*v });
    }
}

/// The row of the thread's latest fault in the VMA now at its address in
/// `mm`'s tree, its lifetime started if new; None where no VMA is there.
///
/// # Safety
/// `s` is this thread's `ThreadFault`, not otherwise referenced meanwhile.
#[inline(always)]
unsafe fn place(s: *mut ThreadFault, mm: u64, now: u64) -> Option<FaultKey> {
    let v = aggregate::looked_up_slot()?;
    // SAFETY: this CPU's looked-up VMA, unused by any fault entering now
    // until its own lookup, after this.
    let v = unsafe { &mut *v };
    if vma::lookup_lockless::<true>(mm, (*s).pend_addr, v) != vma::Walk::Found {
        return None;
    }
    let unplaced = (*s).pend_key;
    let life = crate::life::life_of(v, unplaced.tgid, now);
    if life == 0 {
        return None;
    }
    let anon: u64 = kernel_read_flat(v.vma, off!(vma_anon_vma));
    // A fault still in progress makes it as at its entry.
    Some(FaultKey {
        vma_status: vma_status::FOUND,
        flags: if anon != 0 || makes_anon(unplaced.access, v.vm_flags) {
            key_flags::ANON_VMA
        } else {
            0
        },
        life,
        ..unplaced
    })
}

/// Whether a fault of `access` on a VMA of `vm_flags` makes its anon_vma
/// where it has none: in a private VMA, a write where writes are allowed, and
/// any fault of hugetlb memory (no zero page there).
#[inline(always)]
fn makes_anon(access: u8, vm_flags: u64) -> bool {
    let writes = access & access::WRITE != 0 && vm_flags & vm_flags::VM_WRITE != 0;
    vm_flags & vm_flags::VM_SHARED == 0 && (writes || vm_flags & vm_flags::VM_HUGETLB != 0)
}

/// Counts a confirmed minor fault (its thread's next entry saw it counted)
/// that its entry could not place, in the VMA now at its address, where that
/// is surely the VMA that served it: the only write window that ended since
/// its entry is the one that had the VMA there write-locked at the entry (the
/// fault waited for it to end, and the tree has not changed since). False
/// where it is not certain: it is then placed by address in userspace, or
/// stays unknown.
///
/// # Safety
/// `s` is this thread's `ThreadFault`, not otherwise referenced meanwhile.
#[inline(always)]
unsafe fn place_late(s: *mut ThreadFault, now: u64) -> bool {
    let (mm, seq) = current_mm_seq();
    if (*s).pend_locked == 0 || seq != (*s).pend_locked_seq.wrapping_add(1) {
        return false;
    }
    let Some(key) = place(s, mm, now) else {
        return false;
    };
    aggregate::count_placed_late(&key, now);
    bump(counter::PLACED_LATE);
    send_placed_record(&key, (*s).pend_addr, now);
    true
}

#[inline(always)]
fn on_entry<const KERNEL_MODE: bool>(ctx: &BtfTracePointContext) {
    let kernel_mode = KERNEL_MODE;
    // Every process's: the sampling perf event counts them all.
    let clock = entry_clock();
    let sample_due = minor_sample_due(clock);
    let task = CurrentTask::get();
    let Some(Entry {
        address,
        tgid,
        tid,
        access: acc,
    }) = entry_of(ctx, task, kernel_mode)
    else {
        return;
    };
    let (min_flt, maj_flt) = task.faults();
    let t = match followed(tid, tgid) {
        Some(t) => t,
        None => {
            if traced_current().is_none() {
                return;
            }
            // Its counters before this fault: what came before is not ours.
            task::follow_thread(tid, tgid, (min_flt, maj_flt), (min_flt, maj_flt));
            let Some(t) = followed(tid, tgid) else {
                return;
            };
            t
        }
    };
    let cfg = config();
    let events = cfg.fault_events != 0;
    let ip = if events { user_ip(ctx) } else { 0 };
    // SAFETY: `t` is this thread's map value; every access below goes
    // through it (or through `s`, a pointer into it), no reference is held.
    let s = unsafe { &raw mut (*t).fault };
    // Placing the previous fault takes a tree walk, which doubles the time
    // the kernel takes to load the program: user-mode entries do it, the rare
    // kernel-mode ones (copy_to_user) leave it to userspace.
    // SAFETY: as above.
    unsafe {
        if KERNEL_MODE {
            settle_previous::<false>(s, tid, min_flt + maj_flt)
        } else {
            settle_previous::<true>(s, tid, min_flt + maj_flt)
        }
    };

    // Whether the thread's cached VMA holds the address and is still the
    // kernel's; one that holds it but changed is dropped.
    // SAFETY: `s` as above.
    let hit = unsafe {
        let holds =
            (*s).cache_valid != 0 && (*s).cache_start <= address && address < (*s).cache_end;
        let hit = holds && cache_current(&*s, task.mm_seq());
        if holds && !hit {
            (*s).cache_valid = 0;
        }
        hit
    };
    // Only a fault that can be major, or be the sampled minor one, needs the
    // time of its entry; the row's latest fault needs a time no later than it.
    // SAFETY: `s` as above.
    let timed =
        unsafe { events || sample_due || cfg.anon_swaps != 0 || !hit || (*s).cache_may_major != 0 };
    let mut now = entry_time(clock, timed);
    // The common case, a fault storm on one mapping: a cache hit whose row is
    // known for good (its anon_vma made, or never to be) and exists already
    // is counted in place, with one hash lookup.
    // SAFETY: `s` as above.
    unsafe {
        if hit && (*s).cache_anon != anon_state::UNKNOWN {
            let key = FaultKey {
                tgid,
                access: acc,
                path: path_id::DERIVED,
                vma_status: vma_status::FOUND,
                flags: if (*s).cache_anon == anon_state::SET {
                    key_flags::ANON_VMA
                } else {
                    0
                },
                life: (*s).cache_life,
            };
            let counted = count_minor_fast(s, &key, now)
                || (aggregate::count_minor_in_row(&key, now) && {
                    counted_through_hash(s, &key);
                    true
                });
            if counted {
                bump(counter::VMA_CACHE_HIT);
                if events {
                    aggregate::send_counted_at_entry(&key, tid, now, address, ip);
                }
                let pend_ts = if timed { now } else { UNTIMED };
                pend(t, key, 1, address, (min_flt, maj_flt), pend_ts);
                return;
            }
        }
    }
    if !timed {
        now = entry_time(clock, true);
    }

    let Some(c) = aggregate::completed_slot() else {
        return;
    };
    // SAFETY: this CPU's slot, reached through this one reference until
    // `record` takes it again (after its last use here).
    let c = unsafe { &mut *c };
    c.begin((tgid, tid), acc, path_id::DERIVED, now, address);
    // The thread's counters are kept below, not by `record`.
    c.accounted = 1;
    c.untimed = 1;
    c.ip = ip;
    let write = acc & access::WRITE != 0;
    if hit {
        bump(counter::VMA_CACHE_HIT);
        // SAFETY: `s` as above.
        unsafe {
            c.key.life = (*s).cache_life;
            c.vma = (*s).cache_vma;
            c.anon = (*s).cache_anon;
            c.cache_hit = 1;
            // Unknown means private: a write makes it, where writes are
            // allowed (one that is not fails, and is taken back).
            c.makes_anon =
                (write && c.anon == anon_state::UNKNOWN && (*s).cache_writable != 0) as u8;
        }
    } else {
        // A walk that met a writer is made once more (see `lookup`).
        for _ in 0..2 {
            if !lookup::<true, true>(c) {
                break;
            }
        }
        if c.key.vma_status == vma_status::NONE {
            stack_above(c);
        }
        if c.key.vma_status == vma_status::FOUND && c.has_vma != 0 {
            if let Some(v) = aggregate::looked_up_slot() {
                // SAFETY: this CPU's looked-up VMA, only read here.
                let flags = unsafe { (*v).vm_flags };
                c.makes_anon = makes_anon(acc, flags) as u8;
            }
        }
    }
    let placed = c.key.vma_status == vma_status::FOUND;
    if placed {
        // With --events, this sends the fault's record.
        aggregate::record(ctx, None);
    } else if events {
        aggregate::send_fault(c);
    }
    let Some(c) = aggregate::completed_slot() else {
        return;
    };
    // SAFETY: this CPU's slot, read after `record` let go of it.
    let (key, locked) = unsafe { ((*c).key, ((*c).locked != 0).then_some((*c).locked_seq)) };
    // `record` can have found no lifetime for it (a full table): still counted.
    // SAFETY: `t` as above.
    unsafe { pend(t, key, placed as u8, address, (min_flt, maj_flt), now) };
    if !placed {
        // SAFETY: `s` as above.
        unsafe {
            (*s).pend_locked = locked.is_some() as u8;
            (*s).pend_locked_seq = locked.unwrap_or(0);
        }
    }
}

/// The instruction that faulted, for its record.
#[inline(always)]
fn user_ip(ctx: &BtfTracePointContext) -> u64 {
    let regs: *const pt_regs = ctx.arg(1);
    // SAFETY: the tracepoint's own regs argument, a BTF pointer whose loads
    // the kernel guards; x86-64's pt_regs is the user ABI's layout.
    unsafe { core::ptr::read_volatile(&raw const (*regs).rip) }
}

/// Leaves the fault entering now as the thread's one to settle, entered at
/// `pend_ts` (`UNTIMED` where not timed).
///
/// # Safety
/// `t` is this thread's THREADS value, not otherwise referenced meanwhile.
#[inline(always)]
unsafe fn pend(
    t: *mut ThreadAcct,
    key: FaultKey,
    counted: u8,
    address: u64,
    (min_flt, maj_flt): (u64, u64),
    pend_ts: u64,
) {
    let s = &raw mut (*t).fault;
    (*s).pend_key = key;
    (*s).pend_counted = counted;
    (*s).pend_addr = address;
    (*s).pend_faults = min_flt + maj_flt;
    (*s).pend_ts = pend_ts;
    (*s).pend_locked = 0;
    // What the kernel will have counted once this fault completes as a
    // minor one, as rmaptrace has: settled with the fault.
    (*t).last_min = min_flt + counted as u64;
    (*t).last_maj = maj_flt;
}

/// A fault below a stack VMA (VM_GROWSDOWN), with no VMA between, grows it
/// once handled, after this entry: it belongs to that VMA (or fails, and is
/// taken back). Found by a walk of the tree (a second bpf_find_vma would
/// fail: interrupts are off here).
#[inline(always)]
fn stack_above(c: &mut Completed) {
    let Some(v) = aggregate::looked_up_slot() else {
        return;
    };
    // SAFETY: this CPU's looked-up VMA, reached through this one reference.
    let v = unsafe { &mut *v };
    let (mm, _) = current_mm_seq();
    if vma::next_lockless(mm, c.addr, v) == vma::Walk::Found
        && v.vm_flags & vm_flags::VM_GROWSDOWN != 0
    {
        c.key.vma_status = vma_status::FOUND;
        c.has_vma = 1;
        // Its start and page offset once grown (expand_downwards: the
        // faulting page's), so that the lifetime's range covers the fault.
        let start = c.addr & !(PAGE_SIZE - 1);
        v.vm_pgoff = v.vm_pgoff.wrapping_sub((v.vm_start - start) >> PAGE_SHIFT);
        v.vm_start = start;
    }
}

/// Whether this thread's cached VMA is still what the kernel has, at an entry:
/// no write window of mmap_lock ended since it was filled (the sequence), and
/// none has it write-locked now. Unlike at the completion, the fault holds no
/// lock yet. Where the sequence is a seqcount (6.13+) it is odd while a window
/// is open (one opened since the fill moved it too); before, a window moves
/// it only at its end, and the VMA's own lock sequence equals the mm's while
/// a window has it write-locked (a probe read, about 50 ns). `(mm, seq)` are
/// the current task's (`CurrentTask::mm_seq`).
#[inline(always)]
fn cache_current(s: &ThreadFault, (mm, seq): (u64, u32)) -> bool {
    if (mm, seq) != (s.cache_mm, s.cache_mm_seq) {
        return false;
    }
    if off!(mm_lock_seqcount) != 0 {
        return seq & 1 == 0;
    }
    kernel_read::<u32>(s.cache_vma, off!(vma_vm_lock_seq)) != seq
}

#[inline(always)]
fn on_completion(ctx: &PerfEventContext, major: bool) {
    if !major {
        minor_sample_taken();
    }
    let Some((tgid, tid, t)) = followed_current() else {
        return;
    };
    // SAFETY: the perf event context the kernel passed in.
    let addr = unsafe { (*ctx.ctx).addr };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `t` is this thread's map value, reached through this one
    // pointer; no reference to it is held.
    unsafe {
        let s = &raw mut (*t).fault;
        if (*s).pend_ts == 0 || (*s).pend_addr >> PAGE_SHIFT != addr >> PAGE_SHIFT {
            // Its entry was not seen: the thread's counters show it as unseen.
            if major {
                bump(counter::UNMATCHED_COMPLETION);
            }
            return;
        }
        let latency = ((*s).pend_ts != UNTIMED).then(|| now.saturating_sub((*s).pend_ts));
        (*s).pend_ts = 0;
        if latency.is_none() {
            bump(if major {
                counter::MAJOR_UNTIMED
            } else {
                counter::SAMPLE_UNTIMED
            });
        }
        if (*s).pend_counted != 0 {
            if major {
                aggregate::settle(&(*s).pend_key, Outcome::Major(latency));
            } else if let Some(latency) = latency {
                aggregate::settle(&(*s).pend_key, Outcome::MinorSampled(latency));
            }
        } else {
            aggregate::count_unplaced(&(*s).pend_key, tid, now, addr, major, latency);
        }
        // An untimed minor one stands as its record says.
        if config().fault_events != 0 && (major || latency.is_some()) {
            let latency = latency.unwrap_or(0);
            let outcome = if major {
                fault_outcome::MAJOR
            } else {
                fault_outcome::MINOR_TIMED
            };
            aggregate::send_outcome(tgid, tid, now, addr, outcome, latency);
        }
        let (min_flt, maj_flt) = task::current_faults();
        (*t).last_min = min_flt;
        (*t).last_maj = maj_flt;
    }
}
