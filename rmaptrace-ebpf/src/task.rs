//! Process lifecycle: follow the children of traced processes from their first
//! instruction, pick up `--comm` matches at exec and `--cgroup` members at exec
//! and fork, and report each exiting thread's
//! own min_flt/maj_flt so userspace can check its counts against the kernel's.
use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use rmaptrace_common::{
    counter, event_kind, traced, ExitEvent, TaskEvent, ThreadAcct, MAX_CGROUP_LEVEL,
};

use crate::maps::{
    bump, config, current_task_field, event_header, kernel_read, off, traced_changed,
    traced_current, CurrentTask, CGROUPS, COMMS, EVENTS, THREADS, TRACED,
};

/// The current thread's cgroup v2 id.
#[inline(always)]
fn current_cgroup() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_current_cgroup_id() }
}

/// Whether the current thread's cgroup is in a subtree `--cgroup` asked
/// for: one of its ancestors (itself included) is in CGROUPS. Runs at exec
/// and at forks of untraced processes only.
#[inline(always)]
fn in_followed_cgroup() -> bool {
    if config().match_cgroups == 0 {
        return false;
    }
    // The root (level 0) is never asked for: that is every process.
    for level in 1..=MAX_CGROUP_LEVEL as i32 {
        // SAFETY: the helper takes a level and returns 0 past the thread's own.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            return false;
        }
        // SAFETY: only compared with None; the value is never read.
        if unsafe { CGROUPS.get(id) }.is_some() {
            return true;
        }
    }
    false
}

/// The current thread's own fault counters (min_flt, maj_flt), as loads:
/// this runs on every counted fault.
#[inline(always)]
pub fn current_faults() -> (u64, u64) {
    CurrentTask::get().faults()
}

/// Follows the kernel's counters of thread `tid` from `base` (min_flt, maj_flt);
/// they are `last` now.
#[inline(always)]
pub fn follow_thread(tid: u32, tgid: u32, base: (u64, u64), last: (u64, u64)) {
    let mut acct = core::mem::MaybeUninit::<ThreadAcct>::uninit();
    let p = acct.as_mut_ptr();
    // SAFETY: a local ThreadAcct (plain integers) on the stack, zeroed (no
    // fault in flight, no VMA cached) before its counters are set and it is read.
    let acct = unsafe {
        crate::mem::zero(p);
        (*p).tgid = tgid;
        (*p).base_min = base.0;
        (*p).base_maj = base.1;
        (*p).last_min = last.0;
        (*p).last_maj = last.1;
        acct.assume_init_ref()
    };
    if THREADS.insert(tid, acct, 0).is_err() {
        bump(counter::THREAD_TABLE_FULL);
    }
    crate::fault_tp::mark_in_flight_traced(tid);
}

/// A counted fault of the current thread: its counters include it already
/// (mm_account_fault raised them before the perf event and before
/// handle_mm_fault returned). A thread seen for the first time is followed from
/// just before this fault.
#[inline(always)]
pub fn account_fault(tid: u32, tgid: u32, major: bool) {
    let (min_flt, maj_flt) = current_faults();
    match THREADS.get_ptr_mut(tid) {
        // SAFETY: a map value pointer, valid for this run; the only reference.
        Some(t) => unsafe {
            (*t).last_min = min_flt;
            (*t).last_maj = maj_flt;
        },
        None => {
            let base = if major {
                (min_flt, maj_flt.saturating_sub(1))
            } else {
                (min_flt.saturating_sub(1), maj_flt)
            };
            follow_thread(tid, tgid, base, (min_flt, maj_flt));
        }
    }
}

fn send_task_event(kind: u32, tgid: u32, tid: u32, other: u32) {
    let (min_flt, maj_flt) = current_faults();
    let ev = TaskEvent {
        header: event_header(kind, tgid, tid),
        other,
        _pad: 0,
        min_flt,
        maj_flt,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        cgroup: current_cgroup(),
    };
    if EVENTS.output::<TaskEvent>(&ev, 0).is_err() {
        bump(counter::EVENTS_LOST);
    }
}

/// A fork's mode when the parent is not traced but is in a followed cgroup:
/// the child is traced, and no fork record is sent (the parent is not).
const JOINED: u8 = 0xff;

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *parent, struct task_struct *child); runs in the parent.
    let pid_tgid = bpf_get_current_pid_tgid();
    let parent_tgid = (pid_tgid >> 32) as u32;
    if off!(ready) == 0 {
        return 0;
    }
    let trace_all = config().trace_all != 0;
    let mode = if trace_all {
        if traced_current().is_none() {
            return 0;
        }
        traced::YES
    } else {
        // SAFETY: read once, copied out.
        match unsafe { TRACED.get(parent_tgid) } {
            Some(&m) => m,
            // A process moved into a followed cgroup: its children are
            // followed from their first instruction (the child inherits the
            // parent's cgroup); it is itself found by userspace's rescan.
            None if in_followed_cgroup() => JOINED,
            None => return 0,
        }
    };
    let child: u64 = ctx.arg(1);
    let (child_tgid, child_tid): (u32, u32) = (
        kernel_read(child, off!(task_tgid)),
        kernel_read(child, off!(task_pid)),
    );
    if child_tgid == 0 || child_tid == 0 || (mode == JOINED && child_tgid == parent_tgid) {
        return 0;
    }
    // A new task's counters start at zero (copy_mm clears them): everything it
    // faults is followed.
    if mode == traced::YES || child_tgid != parent_tgid {
        follow_thread(child_tid, child_tgid, (0, 0), (0, 0));
    }
    if child_tgid == parent_tgid || trace_all {
        return 0; // a new thread of a process already traced
    }
    if TRACED.insert(child_tgid, traced::YES, 0).is_err() {
        bump(counter::TRACED_TABLE_FULL);
        return 0;
    }
    traced_changed();
    if mode == traced::YES {
        send_task_event(event_kind::FORK, parent_tgid, pid_tgid as u32, child_tgid);
    }
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(_ctx: BtfTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let mut started_here = 0;
    if (config().match_comms != 0 || config().match_cgroups != 0) && traced_current().is_none() {
        let named = config().match_comms != 0
            && bpf_get_current_comm().is_ok_and(|comm| {
                // SAFETY: only compared with None; the value is never read.
                unsafe { COMMS.get(comm) }.is_some()
            });
        if named || in_followed_cgroup() {
            if TRACED.insert(tgid, traced::YES, 0).is_err() {
                bump(counter::TRACED_TABLE_FULL);
            } else {
                traced_changed();
                started_here = 1;
            }
        }
    }
    // A new mm: the thread's cached VMA is gone.
    if let Some(t) = THREADS.get_ptr_mut(pid_tgid as u32) {
        // SAFETY: a map value pointer, valid for this run.
        unsafe { (*t).fault.cache_valid = 0 };
    }
    if started_here != 0 {
        // Traced from this exec on: its counters so far are not the trace's.
        let now = current_faults();
        follow_thread(pid_tgid as u32, tgid, now, now);
    }
    if traced_current().is_some() {
        send_task_event(event_kind::EXEC, tgid, pid_tgid as u32, started_here);
    }
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: read once, copied out.
    let acct = unsafe { THREADS.get(tid) }.copied();
    // A followed thread reports its exit even when a sibling that saw the
    // process die first already took it out of TRACED: signal->live reaches 0
    // before the last threads get here, in any order.
    let followed = acct.is_some_and(|a| a.tgid == tgid);
    if traced_current().is_none() && !followed {
        return 0;
    }
    // The thread's per-fault state dies with it (THREADS below).
    let _ = crate::fault_kfunc::KFUNC_INFLIGHT.remove(tid);
    crate::prefill::forget(tid);
    crate::anon_vma::forget(tid);
    crate::mmap::forget(tid);
    crate::fault_tp::forget_in_flight(tid);
    if followed {
        if let Some(t) = THREADS.get_ptr_mut(tid) {
            let (min_flt, maj_flt) = current_faults();
            // SAFETY: this thread's map value, reached through this one
            // pointer until it is removed below.
            unsafe {
                // Its mm is gone: a fault its entry could not place stays so.
                crate::count_at_entry::settle_previous::<false>(
                    &raw mut (*t).fault,
                    tid,
                    min_flt + maj_flt,
                )
            };
        }
    }
    let _ = THREADS.remove(tid);
    if off!(ready) == 0 {
        return 0;
    }
    // Runs in the exiting thread after exit_mm(): its counters are final.
    let (min_flt, maj_flt) = current_faults();
    // do_exit decrements signal->live before this tracepoint: 0 means the whole
    // process is gone, and its pid may be reused by a process nobody asked for.
    let signal: u64 = current_task_field(off!(task_signal));
    let live: i32 = if signal == 0 {
        1
    } else {
        kernel_read(signal, off!(signal_live))
    };
    let group_dead = live == 0;
    if group_dead && config().trace_all == 0 {
        let _ = TRACED.remove(tgid);
    }
    let leader: u64 = current_task_field(off!(task_group_leader));
    let ev = ExitEvent {
        header: event_header(event_kind::EXIT, tgid, tid),
        min_flt,
        maj_flt,
        base_min: acct.map(|a| a.base_min).unwrap_or(0),
        base_maj: acct.map(|a| a.base_maj).unwrap_or(0),
        leader_start_ns: kernel_read(leader, off!(task_start_time)),
        has_base: acct.is_some() as u32,
        group_dead: group_dead as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        // Before cgroup_exit(): the thread is still in its cgroup.
        cgroup: current_cgroup(),
    };
    if EVENTS.output::<ExitEvent>(&ev, 0).is_err() {
        bump(counter::EVENTS_LOST);
    }
    0
}
