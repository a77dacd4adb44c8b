//! Pages an mmap handler installs itself, so that no fault ever brings them in:
//! `remap_pfn_range` (VM_PFNMAP), `vm_insert_pages` and `vm_insert_page`
//! (VM_MIXEDMAP; `remap_vmalloc_range` uses the latter), and the fault-time
//! helpers `vmf_insert_pfn` and `vmf_insert_mixed` when an mmap handler calls
//! them (inside an mmap syscall; from a fault handler they serve that fault).
//! Counted per thread from the mmap syscall's entry (which starts the count)
//! to its exit, whose VMA lookup takes them into the mapping's setup record.
//! The kernel-function backends only: entry and exit of each function, as
//! fentry/fexit or kprobe/kretprobe.
use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::HashMap,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use rmaptrace_common::{counter, prefill, Prefill};

use crate::maps::{bump, kernel_read, off, traced_current};

#[map]
static PREFILL: HashMap<u32, Prefill> = HashMap::with_max_entries(16384, 0);

const PAGE_SHIFT: u64 = 12;

/// A call of function `which` into `vma` began, for `pages` pages; `left`
/// is where vm_insert_pages will leave the number it did not insert.
#[inline(always)]
fn begin(vma: u64, which: usize, pages: u64, left: u64) {
    let Some((_, tid)) = traced_current() else {
        return;
    };
    if let Some(p) = PREFILL.get_ptr_mut(tid) {
        // SAFETY: this thread's value; the only reference, for this run.
        let p = unsafe { &mut *p };
        if which >= prefill::VMF_INSERT_PFN && p.in_mmap == 0 {
            return;
        }
        p.pending_vma = vma;
        p.pending_which = which as u64;
        p.pending_pages = pages;
        p.pending_left = left;
        return;
    }
    // Outside an mmap syscall the fault-time helpers serve a fault.
    if which >= prefill::VMF_INSERT_PFN {
        return;
    }
    let p = Prefill {
        pending_vma: vma,
        pending_which: which as u64,
        pending_pages: pages,
        pending_left: left,
        ..Prefill::default()
    };
    if PREFILL.insert(tid, p, 0).is_err() {
        bump(counter::PREFILL_TABLE_FULL);
    }
}

/// The call under way returned `ret`: 0 on success, or for the fault-time
/// helpers a `vm_fault_t` without VM_FAULT_ERROR bits.
#[inline(always)]
fn end(ret: i64) {
    let Some((_, tid)) = traced_current() else {
        return;
    };
    let Some(p) = PREFILL.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: this thread's value; the only reference, for this run.
    let p = unsafe { &mut *p };
    let which = p.pending_which as usize;
    let ok = if which >= prefill::VMF_INSERT_PFN {
        (ret as u64) & u64::from(off!(vm_fault_error)) == 0
    } else {
        ret == 0
    };
    let pages = if which == prefill::VM_INSERT_PAGES {
        // Inserted up to a failure, which it leaves in *num.
        p.pending_pages
            .saturating_sub(kernel_read::<u64>(p.pending_left, 0))
    } else if ok {
        p.pending_pages
    } else {
        0
    };
    if p.vma != p.pending_vma {
        p.vma = p.pending_vma;
        p.pages = [0; prefill::FUNCTIONS];
    }
    if which < prefill::FUNCTIONS {
        p.pages[which] += pages;
    }
    p.pending_pages = 0;
}

/// This thread's pages installed since its mmap syscall began, if they went
/// into `vma`; the count starts again.
#[inline(always)]
pub fn take(tid: u32, vma: u64) -> [u64; prefill::FUNCTIONS] {
    // SAFETY: copied out at once.
    let got = unsafe { PREFILL.get(tid) }.copied();
    let _ = PREFILL.remove(tid);
    match got {
        Some(p) if p.vma == vma => p.pages,
        _ => [0; prefill::FUNCTIONS],
    }
}

/// An mmap syscall begins: nothing counted before it is its, and the
/// fault-time helpers count from now until its exit.
#[inline(always)]
pub fn start(tid: u32) {
    let p = Prefill {
        in_mmap: 1,
        ..Prefill::default()
    };
    if PREFILL.insert(tid, p, 0).is_err() {
        bump(counter::PREFILL_TABLE_FULL);
    }
}

/// The thread ends.
#[inline(always)]
pub fn forget(tid: u32) {
    let _ = PREFILL.remove(tid);
}

// remap_pfn_range(struct vm_area_struct *vma, unsigned long addr,
//                 unsigned long pfn, unsigned long size, pgprot_t prot)
#[fentry]
pub fn remap_pfn_range_fentry(ctx: FEntryContext) -> i32 {
    begin(
        ctx.arg(0),
        prefill::REMAP_PFN_RANGE,
        ctx.arg::<u64>(3) >> PAGE_SHIFT,
        0,
    );
    0
}

#[kprobe]
pub fn remap_pfn_range_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(vma), Some(size)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(3)) else {
        return 0;
    };
    begin(vma, prefill::REMAP_PFN_RANGE, size >> PAGE_SHIFT, 0);
    0
}

// vm_insert_pages(struct vm_area_struct *vma, unsigned long addr,
//                 struct page **pages, unsigned long *num)
#[fentry]
pub fn vm_insert_pages_fentry(ctx: FEntryContext) -> i32 {
    let num: u64 = ctx.arg(3);
    begin(
        ctx.arg(0),
        prefill::VM_INSERT_PAGES,
        kernel_read(num, 0),
        num,
    );
    0
}

#[kprobe]
pub fn vm_insert_pages_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(vma), Some(num)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(3)) else {
        return 0;
    };
    begin(vma, prefill::VM_INSERT_PAGES, kernel_read(num, 0), num);
    0
}

/// The entry programs of the functions that install one page into their
/// first argument, the VMA:
/// - vm_insert_page(struct vm_area_struct *vma, unsigned long addr, struct page *page)
/// - vm_fault_t vmf_insert_pfn(struct vm_area_struct *vma, unsigned long addr, unsigned long pfn)
/// - vm_fault_t vmf_insert_mixed(struct vm_area_struct *vma, unsigned long addr, pfn_t pfn)
macro_rules! one_page_entries {
    ($($which:expr, $fentry:ident, $kprobe:ident;)*) => {$(
        #[fentry]
        pub fn $fentry(ctx: FEntryContext) -> i32 {
            begin(ctx.arg(0), $which, 1, 0);
            0
        }

        #[kprobe]
        pub fn $kprobe(ctx: ProbeContext) -> u32 {
            if let Some(vma) = ctx.arg::<u64>(0) {
                begin(vma, $which, 1, 0);
            }
            0
        }
    )*};
}

one_page_entries! {
    prefill::VM_INSERT_PAGE, vm_insert_page_fentry, vm_insert_page_kprobe;
    prefill::VMF_INSERT_PFN, vmf_insert_pfn_fentry, vmf_insert_pfn_kprobe;
    prefill::VMF_INSERT_MIXED, vmf_insert_mixed_fentry, vmf_insert_mixed_kprobe;
}

/// The exit programs: one per function and mechanism (an fexit program is
/// loaded for its function), all alike, since what is pending says which
/// function returned.
macro_rules! exits {
    ($($fexit:ident, $kretprobe:ident;)*) => {$(
        #[fexit]
        pub fn $fexit(ctx: FExitContext) -> i32 {
            end(i64::from(ctx.ret::<u32>().unwrap_or(u32::MAX)));
            0
        }

        #[kretprobe]
        pub fn $kretprobe(ctx: RetProbeContext) -> u32 {
            end(i64::from(ctx.ret::<u32>()));
            0
        }
    )*};
}

exits! {
    remap_pfn_range_fexit, remap_pfn_range_kretprobe;
    vm_insert_pages_fexit, vm_insert_pages_kretprobe;
    vm_insert_page_fexit, vm_insert_page_kretprobe;
    vmf_insert_pfn_fexit, vmf_insert_pfn_kretprobe;
    vmf_insert_mixed_fexit, vmf_insert_mixed_kretprobe;
}
