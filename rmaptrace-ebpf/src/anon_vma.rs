//! When a VMA's `anon_vma` (its reverse map for anonymous pages) comes into
//! being, and what made it. mmap never makes one: `__anon_vma_prepare` does,
//! in the first fault that needs an anonymous page (or outside any fault:
//! userfaultfd, uprobes), and `anon_vma_fork` gives a child's VMA its own at
//! fork, chained to the parent's. `anon_vma_clone` copies one to the other
//! part of a split or the new VMA of a move, so what made it goes along.
//!
//! What was seen is kept by VMA struct in `ANON_MADE` (the VMA may have no
//! lifetime yet: the first write fault of a new mapping makes its anon_vma
//! before the fault completes and is counted), and written into the
//! lifetime's record when there is one. The entry goes when the struct is
//! freed (life.rs). Where nothing of this is probed (the tracepoint backend),
//! the record takes the completion time of the first fault that found the
//! anon_vma set, labelled so (`anon_vma_by::SEEN`).
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{fexit, kprobe, kretprobe, map},
    maps::HashMap,
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use rmaptrace_common::{anon_vma_by, counter, AnonVmaMade};

use crate::{
    life::LIVES,
    maps::{bump, kernel_read_flat, off, traced_current, VMAS},
};

/// What made the anon_vma of each VMA struct seen getting one.
#[map]
pub static ANON_MADE: HashMap<u64, AnonVmaMade> = HashMap::with_max_entries(131072, 0);

/// The kprobe flavour: the arguments of each thread's calls in progress (a
/// kretprobe has only the result), by thread and function: anon_vma_fork
/// calls anon_vma_clone.
#[map]
static ANON_CALLS: HashMap<u64, AnonCall> = HashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct AnonCall {
    vma: u64,
    /// The `src` of anon_vma_clone; 0 for the other two.
    src: u64,
    by: u32,
    _pad: u32,
}

/// The functions, to key `ANON_CALLS`.
const PREPARE: u64 = 0;
const FORK: u64 = 1;
const CLONE: u64 = 2;

#[inline(always)]
fn call_key(tid: u32, function: u64) -> u64 {
    (u64::from(tid) << 2) | function
}

const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;

/// The thread ends: a call it had in progress never returns.
#[inline(always)]
pub fn forget(tid: u32) {
    let _ = ANON_CALLS.remove(call_key(tid, PREPARE));
    let _ = ANON_CALLS.remove(call_key(tid, FORK));
    let _ = ANON_CALLS.remove(call_key(tid, CLONE));
}

/// Writes what made `vma`'s anon_vma into the record of its lifetime: the
/// live lifetime at the struct, where it is this VMA's (same mm and start;
/// not an earlier VMA's, whose struct was freed unseen).
#[inline(always)]
fn into_lifetime(vma: u64, made: &AnonVmaMade) {
    // SAFETY: read once, copied out.
    let Some(e) = (unsafe { LIVES.get(vma) }).copied() else {
        return;
    };
    let mm: u64 = kernel_read_flat(vma, off!(vma_vm_mm));
    let start: u64 = kernel_read_flat(vma, off!(vma_vm_start));
    if e.mm == mm && e.start == start {
        stamp(e.life, made.ns, made.by);
    }
}

/// Records in lifetime `life` that its anon_vma was made (or found) at `ns`
/// as `by` says, unless its record already says (the first word wins).
#[inline(always)]
fn stamp(life: u64, ns: u64, by: u32) {
    if let Some(r) = VMAS.get_ptr_mut(life) {
        // SAFETY: a map value pointer, valid for this run, reached only
        // through it here.
        unsafe {
            if (*r).anon_vma_by == anon_vma_by::NONE {
                (*r).anon_vma_ns = ns;
                (*r).anon_vma_by = by;
            }
        }
    }
}

/// `vma` has its anon_vma now, made as `by` says; `src` is the VMA it was
/// copied from (anon_vma_clone), whose record it takes.
#[inline(always)]
fn made(vma: u64, src: u64, by: u32) {
    // A call that returned 0 without one: anon_vma_fork of a VMA whose
    // parent had none, anon_vma_clone of such a source.
    let anon: u64 = kernel_read_flat(vma, off!(vma_anon_vma));
    if anon == 0 {
        return;
    }
    let record = if by == anon_vma_by::NONE {
        // SAFETY: read once, copied out.
        match unsafe { ANON_MADE.get(src) } {
            Some(m) if made_here(m, src) => AnonVmaMade {
                anon_vma: anon,
                ..*m
            },
            _ => return,
        }
    } else {
        AnonVmaMade {
            // SAFETY: a helper without arguments.
            ns: unsafe { bpf_ktime_get_ns() },
            by,
            _pad: 0,
            anon_vma: anon,
        }
    };
    // A fork's word replaces the one its anon_vma_clone copied from the
    // parent; a copy never replaces what the VMA had.
    let flags = if by == anon_vma_by::FORK {
        BPF_ANY
    } else {
        BPF_NOEXIST
    };
    match ANON_MADE.insert(vma, record, flags) {
        Ok(()) => into_lifetime(vma, &record),
        Err(_) if flags == BPF_NOEXIST => {}
        Err(_) => bump(counter::ANON_MADE_FULL),
    }
}

/// Whether `m`, the `ANON_MADE` entry of struct `vma`, tells of the anon_vma
/// the VMA there has now, not of an earlier VMA's at the same struct.
#[inline(always)]
pub fn made_here(m: &AnonVmaMade, vma: u64) -> bool {
    m.anon_vma == kernel_read_flat::<u64>(vma, off!(vma_anon_vma))
}

/// What made an anon_vma in this thread now: a fault in progress, or not.
#[inline(always)]
fn prepared_by(tid: u32) -> u32 {
    if crate::fault_kfunc::in_fault(tid) {
        anon_vma_by::FAULT
    } else {
        anon_vma_by::OTHER
    }
}

/// The first fault of a new row found `life`'s VMA with its anon_vma: its
/// record takes that time unless something saw it made.
#[inline(always)]
pub fn seen_at_fault(life: u64, now: u64) {
    stamp(life, now, anon_vma_by::SEEN);
}

// int __anon_vma_prepare(struct vm_area_struct *vma)
#[fexit]
pub fn anon_vma_prepare_fexit(ctx: FExitContext) -> i32 {
    let Some((_, tid)) = traced_current() else {
        return 0;
    };
    if ctx.ret::<i32>().unwrap_or(-1) == 0 {
        made(ctx.arg(0), 0, prepared_by(tid));
    }
    0
}

// int anon_vma_fork(struct vm_area_struct *vma, struct vm_area_struct *pvma):
// runs in the parent, on the child's new VMA.
#[fexit]
pub fn anon_vma_fork_fexit(ctx: FExitContext) -> i32 {
    if traced_current().is_none() {
        return 0;
    }
    if ctx.ret::<i32>().unwrap_or(-1) == 0 {
        made(ctx.arg(0), 0, anon_vma_by::FORK);
    }
    0
}

// int anon_vma_clone(struct vm_area_struct *dst, struct vm_area_struct *src)
#[fexit]
pub fn anon_vma_clone_fexit(ctx: FExitContext) -> i32 {
    if traced_current().is_none() {
        return 0;
    }
    if ctx.ret::<i32>().unwrap_or(-1) == 0 {
        made(ctx.arg(0), ctx.arg(1), anon_vma_by::NONE);
    }
    0
}

#[inline(always)]
fn call_begins(function: u64, vma: Option<u64>, src: u64, by: impl FnOnce(u32) -> u32) {
    let (Some((_, tid)), Some(vma)) = (traced_current(), vma) else {
        return;
    };
    let call = AnonCall {
        vma,
        src,
        by: by(tid),
        _pad: 0,
    };
    if ANON_CALLS.insert(call_key(tid, function), call, 0).is_err() {
        bump(counter::ANON_MADE_FULL);
    }
}

#[inline(always)]
fn call_returned(function: u64, ret: i32) {
    let Some((_, tid)) = traced_current() else {
        return;
    };
    let key = call_key(tid, function);
    // SAFETY: read once, copied out.
    let Some(call) = (unsafe { ANON_CALLS.get(key) }).copied() else {
        return;
    };
    let _ = ANON_CALLS.remove(key);
    if ret == 0 {
        made(call.vma, call.src, call.by);
    }
}

#[kprobe]
pub fn anon_vma_prepare_kprobe(ctx: ProbeContext) -> u32 {
    call_begins(PREPARE, ctx.arg(0), 0, prepared_by);
    0
}

#[kprobe]
pub fn anon_vma_fork_kprobe(ctx: ProbeContext) -> u32 {
    call_begins(FORK, ctx.arg(0), 0, |_| anon_vma_by::FORK);
    0
}

#[kprobe]
pub fn anon_vma_clone_kprobe(ctx: ProbeContext) -> u32 {
    call_begins(CLONE, ctx.arg(0), ctx.arg(1).unwrap_or(0), |_| {
        anon_vma_by::NONE
    });
    0
}

#[kretprobe]
pub fn anon_vma_prepare_kretprobe(ctx: RetProbeContext) -> u32 {
    call_returned(PREPARE, ctx.ret::<i32>());
    0
}

#[kretprobe]
pub fn anon_vma_fork_kretprobe(ctx: RetProbeContext) -> u32 {
    call_returned(FORK, ctx.ret::<i32>());
    0
}

#[kretprobe]
pub fn anon_vma_clone_kretprobe(ctx: RetProbeContext) -> u32 {
    call_returned(CLONE, ctx.ret::<i32>());
    0
}
