//! The fault path where kernel functions can be probed (fentry/fexit, else
//! kprobe/kretprobe): the QEMU guest and ordinary distribution kernels.
//!
//! `handle_mm_fault(vma, address, flags, regs)` is the counting point. It is
//! exported and never inlined, sees get_user_pages faults that raise no exception,
//! and gets the VMA as an argument, so no lookup is needed. Its result is counted
//! the way `mm_account_fault` counts: VM_FAULT_RETRY is not a fault yet (the retry
//! will be), VM_FAULT_ERROR is not a fault, major means VM_FAULT_MAJOR or
//! FAULT_FLAG_TRIED. The VMA is read at entry: after return it may be gone.
//!
//! The mm functions that serve the fault (`do_anonymous_page`, `do_wp_page`, ...)
//! only mark which path ran; `__do_fault` also times the driver's `vm_ops->fault`.
//! Each hook has an fentry and a kprobe flavour; userspace attaches one of them.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::{HashMap, PerCpuArray},
    programs::{
        tracing::StackIdContext, FEntryContext, FExitContext, ProbeContext, RetProbeContext,
    },
};
use rmaptrace_common::{access, path_id, vm_flags, VmaInfo};

use crate::{
    aggregate::{self, BPF_NOEXIST},
    maps::{bump, off, traced_current},
    vma,
};

/// One fault in progress on a thread, between handle_mm_fault's entry and exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KfuncInflight {
    pub ts_ns: u64,
    pub addr: u64,
    pub flags: u64,
    pub handler_start_ns: u64,
    pub handler_ns: u64,
    /// A path_id, set by the first path probe that fires.
    pub path: u8,
    /// `__do_fault` ran: the fault went through do_fault.
    pub did_do_fault: u8,
    pub active: u8,
    pub _pad: [u8; 5],
    pub vma: VmaInfo,
}

/// Deleted when the thread exits (see task.rs), like the tracepoint backend's.
#[map]
pub static KFUNC_INFLIGHT: HashMap<u32, KfuncInflight> = HashMap::with_max_entries(65536, 0);

#[map]
static ZERO_INFLIGHT: PerCpuArray<KfuncInflight> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
/// This thread's in-flight value (created if `create`), as a raw pointer:
/// each probe makes one reference of it, for its own run. Only this thread's
/// probes touch it, one at a time.
fn slot(tid: u32, create: bool) -> Option<*mut KfuncInflight> {
    if let Some(p) = KFUNC_INFLIGHT.get_ptr_mut(tid) {
        return Some(p);
    }
    if !create {
        return None;
    }
    let zero = ZERO_INFLIGHT.get(0)?;
    if KFUNC_INFLIGHT.insert(tid, zero, BPF_NOEXIST).is_err() {
        bump(rmaptrace_common::counter::INFLIGHT_FULL);
    }
    KFUNC_INFLIGHT.get_ptr_mut(tid)
}

/// Whether thread `tid` is inside handle_mm_fault now.
#[inline(always)]
pub fn in_fault(tid: u32) -> bool {
    // SAFETY: one byte read at once from this thread's value.
    unsafe { KFUNC_INFLIGHT.get(tid) }.is_some_and(|s| s.active != 0)
}

#[inline(always)]
fn on_fault_entry(vma: u64, addr: u64, flags: u64) {
    let Some((_, tid)) = traced_current() else {
        return;
    };
    let Some(s) = slot(tid, true) else {
        return;
    };
    // SAFETY: this thread's value (see `slot`), reached through this one reference.
    let s = unsafe { &mut *s };
    // A fault still in flight on this thread lost its completion (a kretprobe
    // over its maxactive): counted, never silently replaced.
    if s.active != 0 {
        bump(rmaptrace_common::counter::ENTRY_WITHOUT_COMPLETION);
    }
    // SAFETY: a helper without arguments.
    s.ts_ns = unsafe { bpf_ktime_get_ns() };
    s.addr = addr;
    s.flags = flags;
    // Volatile: LLVM would merge these zero stores into a memset call (a byte
    // loop for the verifier).
    // SAFETY: pointers to fields of `s`, a valid reference not otherwise used
    // meanwhile.
    unsafe {
        core::ptr::write_volatile(&raw mut s.handler_start_ns, 0);
        core::ptr::write_volatile(&raw mut s.handler_ns, 0);
        core::ptr::write_volatile(&raw mut s.path, path_id::DERIVED);
        core::ptr::write_volatile(&raw mut s.did_do_fault, 0);
    }
    s.active = 1;
    vma::describe(vma, &mut s.vma);
}

#[inline(always)]
fn on_fault_exit<C: StackIdContext>(ctx: &C, ret: u64) {
    let Some((tgid, tid)) = traced_current() else {
        return;
    };
    let Some(s) = slot(tid, false) else {
        return;
    };
    // SAFETY: this thread's value (see `slot`), reached through this one reference.
    let s = unsafe { &mut *s };
    if s.active == 0 {
        return;
    }
    s.active = 0;
    // The kernel's enum values, from its BTF.
    let bit = |v: u32| u64::from(v);
    if ret & (bit(off!(vm_fault_retry)) | bit(off!(vm_fault_error))) != 0 {
        return;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let flags = s.flags;
    let write = flags & bit(off!(fault_flag_write)) != 0;
    let mut acc = 0;
    if write {
        acc |= access::WRITE;
    }
    if flags & bit(off!(fault_flag_instruction)) != 0 {
        acc |= access::EXEC;
    }
    if flags & bit(off!(fault_flag_user)) == 0 {
        acc |= access::KERNEL; // kernel mode, or get_user_pages
    }
    // do_read_fault, do_cow_fault and do_shared_fault are inlined in many builds;
    // do_fault picks among them on exactly these two tests.
    let mut path = s.path;
    if path == path_id::DERIVED && s.did_do_fault != 0 {
        path = if !write {
            path_id::DO_READ_FAULT
        } else if s.vma.vm_flags & vm_flags::VM_SHARED == 0 {
            path_id::DO_COW_FAULT
        } else {
            path_id::DO_SHARED_FAULT
        };
    }
    let info = &s.vma;
    let Some(c) = aggregate::completed_slot() else {
        return;
    };
    // SAFETY: this CPU's slot; this reference ends before `record` takes the
    // slot again.
    let c = unsafe { &mut *c };
    // Its lifetime is numbered by `record` from the VMA read at entry.
    c.begin((tgid, tid), acc, path, now, s.addr);
    c.major =
        (ret & bit(off!(vm_fault_major)) != 0 || flags & bit(off!(fault_flag_tried)) != 0) as u8;
    c.latency = now.saturating_sub(s.ts_ns);
    c.handler_ns = s.handler_ns;
    c.vma = info.vma;
    aggregate::record(ctx, Some(info));
}

#[inline(always)]
fn mark_path(path: u8) {
    let Some((_, tid)) = traced_current() else {
        return;
    };
    if let Some(s) = slot(tid, false) {
        // SAFETY: this thread's value (see `slot`), reached through this one reference.
        let s = unsafe { &mut *s };
        if s.active != 0 && s.path == path_id::DERIVED {
            s.path = path;
        }
    }
}

#[inline(always)]
fn on_do_fault_entry() {
    let Some((_, tid)) = traced_current() else {
        return;
    };
    if let Some(s) = slot(tid, false) {
        // SAFETY: this thread's value (see `slot`), reached through this one reference.
        let s = unsafe { &mut *s };
        if s.active != 0 {
            // SAFETY: a helper without arguments.
            s.handler_start_ns = unsafe { bpf_ktime_get_ns() };
            s.did_do_fault = 1;
        }
    }
}

#[inline(always)]
fn on_do_fault_exit() {
    let Some((_, tid)) = traced_current() else {
        return;
    };
    if let Some(s) = slot(tid, false) {
        // SAFETY: this thread's value (see `slot`), reached through this one reference.
        let s = unsafe { &mut *s };
        if s.active != 0 && s.handler_start_ns != 0 {
            // SAFETY: a helper without arguments.
            let now = unsafe { bpf_ktime_get_ns() };
            s.handler_ns += now.saturating_sub(s.handler_start_ns);
            s.handler_start_ns = 0;
        }
    }
}

// handle_mm_fault(struct vm_area_struct *vma, unsigned long address,
//                 unsigned int flags, struct pt_regs *regs)
#[fentry]
pub fn handle_mm_fault_fentry(ctx: FEntryContext) -> i32 {
    on_fault_entry(ctx.arg(0), ctx.arg(1), ctx.arg::<u64>(2) & 0xffff_ffff);
    0
}

#[fexit]
pub fn handle_mm_fault_fexit(ctx: FExitContext) -> i32 {
    if let Ok(ret) = ctx.ret::<u64>() {
        on_fault_exit(&ctx, ret & 0xffff_ffff);
    }
    0
}

#[kprobe]
pub fn handle_mm_fault_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(vma), Some(addr), Some(flags)) = (ctx.arg(0), ctx.arg(1), ctx.arg::<u64>(2)) else {
        return 0;
    };
    on_fault_entry(vma, addr, flags & 0xffff_ffff);
    0
}

#[kretprobe]
pub fn handle_mm_fault_kretprobe(ctx: RetProbeContext) -> u32 {
    on_fault_exit(&ctx, ctx.ret::<u64>() & 0xffff_ffff);
    0
}

#[fentry]
pub fn do_fault_fentry(_ctx: FEntryContext) -> i32 {
    on_do_fault_entry();
    0
}

#[fexit]
pub fn do_fault_fexit(_ctx: FExitContext) -> i32 {
    on_do_fault_exit();
    0
}

#[kprobe]
pub fn do_fault_kprobe(_ctx: ProbeContext) -> u32 {
    on_do_fault_entry();
    0
}

#[kretprobe]
pub fn do_fault_kretprobe(_ctx: RetProbeContext) -> u32 {
    on_do_fault_exit();
    0
}

/// One fentry and one kprobe program per path function; which function it is
/// attached to is decided by userspace, which also knows the path_id.
macro_rules! path_probe {
    ($fentry:ident, $kprobe:ident, $id:expr) => {
        #[fentry]
        pub fn $fentry(_ctx: FEntryContext) -> i32 {
            mark_path($id);
            0
        }

        #[kprobe]
        pub fn $kprobe(_ctx: ProbeContext) -> u32 {
            mark_path($id);
            0
        }
    };
}

path_probe!(
    do_anonymous_page_fentry,
    do_anonymous_page_kprobe,
    path_id::DO_ANONYMOUS_PAGE
);
path_probe!(do_wp_page_fentry, do_wp_page_kprobe, path_id::DO_WP_PAGE);
path_probe!(
    do_swap_page_fentry,
    do_swap_page_kprobe,
    path_id::DO_SWAP_PAGE
);
path_probe!(
    do_huge_pmd_anonymous_page_fentry,
    do_huge_pmd_anonymous_page_kprobe,
    path_id::DO_HUGE_PMD_ANONYMOUS_PAGE
);

/// A huge-page attempt that returns VM_FAULT_FALLBACK did not serve the fault:
/// handle_pte_fault then does (do_anonymous_page, often inlined and unprobed).
#[inline(always)]
fn unmark_huge_if_fallback(ret: u64) {
    if ret & u64::from(off!(vm_fault_fallback)) == 0 {
        return;
    }
    let Some((_, tid)) = traced_current() else {
        return;
    };
    if let Some(s) = slot(tid, false) {
        // SAFETY: this thread's value (see `slot`), reached through this one reference.
        let s = unsafe { &mut *s };
        if s.active != 0 && s.path == path_id::DO_HUGE_PMD_ANONYMOUS_PAGE {
            s.path = path_id::DERIVED;
        }
    }
}

#[fexit]
pub fn do_huge_pmd_anonymous_page_fexit(ctx: FExitContext) -> i32 {
    if let Ok(ret) = ctx.ret::<u64>() {
        unmark_huge_if_fallback(ret & 0xffff_ffff);
    }
    0
}

#[kretprobe]
pub fn do_huge_pmd_anonymous_page_kretprobe(ctx: RetProbeContext) -> u32 {
    unmark_huge_if_fallback(ctx.ret::<u64>() & 0xffff_ffff);
    0
}
path_probe!(
    hugetlb_fault_fentry,
    hugetlb_fault_kprobe,
    path_id::HUGETLB_FAULT
);
