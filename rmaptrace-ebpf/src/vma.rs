//! Describes the VMA that covers an address, via `bpf_find_vma` (5.17+).
//!
//! The helper takes `mmap_read_trylock`, so it can fail with -EBUSY under a writer:
//! the caller records that as such instead of guessing a VMA.
use aya_ebpf::helpers::{
    bpf_probe_read_kernel_str_bytes, generated::bpf_find_vma, generated::bpf_get_current_task_btf,
};
use core::ffi::c_void;
use rmaptrace_common::{
    counter, event_kind, vm_flags, vma_status, EventHeader, MmapExitEvent, MmapSetupEvent, VmaInfo,
    PATH_COMPONENTS,
};

use crate::maps::{kernel_read as read, kernel_read_flat as read_flat, off};

const EBUSY: i64 = 16;
const ENOENT: i64 = 2;

// The callback must have static BTF linkage for the verifier, so no #[no_mangle].
extern "C" fn describe_vma(_task: *mut c_void, vma: *mut c_void, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the VmaInfo `lookup` passed, which holds no other
    // reference to it until the helper returns.
    describe(vma as u64, unsafe { &mut *(ctx as *mut VmaInfo) });
    0
}

/// Reads what rmaptrace needs of a `struct vm_area_struct *`. Every field is
/// written: callers reuse `info` (the kernel-function backend keeps it per thread).
#[inline(always)]
pub fn describe(vma: u64, info: &mut VmaInfo) {
    // SAFETY: `info` is a valid VmaInfo (plain data).
    unsafe { crate::mem::zero(info) };
    // SAFETY: bpf_probe_read_kernel checks every read; `vma` is the kernel's.
    unsafe {
        info.vma = vma;
        info.mm = read(vma, off!(vma_vm_mm));
        // Unconditional (no branch for the verifier): where VMAs have no
        // vm_lock_seq the offset is that of another field and the value unused.
        info.lock_seq = read(vma, off!(vma_vm_lock_seq));
        info.vm_start = read(vma, off!(vma_vm_start));
        info.vm_end = read(vma, off!(vma_vm_end));
        info.vm_flags = read(vma, off!(vma_vm_flags));
        info.vm_pgoff = read(vma, off!(vma_vm_pgoff));
        let ops: u64 = read(vma, off!(vma_vm_ops));
        info.vm_ops = ops;
        if ops != 0 {
            info.fault_fn = read(ops, off!(vm_ops_fault));
            info.huge_fault_fn = read(ops, off!(vm_ops_huge_fault));
        }
        let file: u64 = read(vma, off!(vma_vm_file));
        info.file = file;
        if file != 0 {
            (info.setup_fn, info.setup_prepare_fn) = setup_fns(file);
            let inode: u64 = read(file, off!(file_f_inode));
            if inode != 0 {
                info.i_mode = read(inode, off!(inode_i_mode));
                info.rdev = read(inode, off!(inode_i_rdev));
                info.ino = read(inode, off!(inode_i_ino));
            }
            let dentry: u64 = read(file, off!(file_dentry));
            if dentry != 0 {
                let name: u64 = read(dentry, off!(dentry_name));
                if name != 0 {
                    let _ = bpf_probe_read_kernel_str_bytes(name as *const u8, &mut info.name);
                }
            }
        }
    }
}

/// A file's `f_op->mmap` and `f_op->mmap_prepare` (userspace picks). No
/// branch: on the kernel's version (where mmap_prepare does not exist its
/// offset is mmap's), on which one is set, on a failed read.
#[inline(always)]
fn setup_fns(file: u64) -> (u64, u64) {
    let fops: u64 = read_flat(file, off!(file_f_op));
    (
        read_flat(fops, off!(fops_mmap)),
        read_flat(fops, off!(fops_mmap_prepare)),
    )
}

// include/linux/maple_tree.h and lib/maple_tree.c (#defines, not in BTF): an
// encoded node pointer is 256-byte aligned and keeps its type in bits 3..6; the
// root one is also marked internal (low bits 0b10). Range nodes have 16 slots
// (15 pivots), allocation-range nodes 10 (9).
const MAPLE_NODE_MASK: u64 = 255;
const MAPLE_NODE_TYPE_SHIFT: u64 = 3;
const MAPLE_NODE_TYPE_MASK: u64 = 0xf;
const MAPLE_RANGE64_PIVOTS: u32 = 15;
const MAPLE_ARANGE64_PIVOTS: u32 = 9;
/// Deeper than any mm's VMA tree (each level multiplies its reach by 10 to 16).
const MAPLE_MAX_DEPTH: usize = 7;

/// The VMA covering `addr` in the tree of `mm`, walked without mmap_lock the
/// way the kernel's lockless fault path does (`mtree_range_walk` under RCU, which
/// the caller holds); 0 when the walk found none. Nodes may be changing under a
/// writer: the caller validates what this returns.
///
/// With `NEXT`, an address in a gap gives the VMA after the gap (the leaf's
/// next slot: a maple tree never holds two empty slots in a row), where the
/// leaf has one.
#[inline(always)]
fn maple_find<const NEXT: bool>(mm: u64, addr: u64) -> u64 {
    let mut entry: u64 = read(mm, off!(mm_mt_root));
    if entry & 3 != 2 || entry < 4096 {
        return 0; // not a node: an empty tree, or a single-entry one
    }
    for _ in 0..MAPLE_MAX_DEPTH {
        let node = entry & !MAPLE_NODE_MASK;
        if node < 4096 {
            return 0;
        }
        let ty = ((entry >> MAPLE_NODE_TYPE_SHIFT) & MAPLE_NODE_TYPE_MASK) as u32;
        let (pivots, slots, n) = if ty == off!(maple_arange_64) {
            (off!(ma64_pivot), off!(ma64_slot), MAPLE_ARANGE64_PIVOTS)
        } else if ty == off!(maple_range_64) || ty == off!(maple_leaf_64) {
            (off!(mr64_pivot), off!(mr64_slot), MAPLE_RANGE64_PIVOTS)
        } else {
            return 0;
        };
        // The first slot whose pivot (inclusive upper bound) reaches addr; past
        // the last used pivot (0s follow) the next slot runs to the node's end.
        let mut offset = n;
        for i in 0..MAPLE_RANGE64_PIVOTS {
            if i >= n {
                break;
            }
            let pivot: u64 = read(node, pivots + i * 8);
            if pivot >= addr || (pivot == 0 && i > 0) {
                offset = i;
                break;
            }
        }
        entry = read(node, slots + offset * 8);
        if ty == off!(maple_leaf_64) {
            if NEXT && entry == 0 && offset + 1 < n {
                return read(node, slots + (offset + 1) * 8);
            }
            return entry;
        }
    }
    0
}

/// Fills `info` for the VMA covering `addr` in `mm` without taking mmap_lock,
/// for a fault completing in the current task: works while a writer holds or
/// awaits mmap_lock, which makes bpf_find_vma fail. Where VMAs carry
/// vm_lock_seq (6.4+, faults under per-VMA locks), the VMA found must cover
/// `addr`, belong to `mm`, not be write-locked by the window in progress (a VMA
/// being changed or removed), and no window may have begun or ended during the
/// walk: then it is the VMA the kernel has (the one serving the fault is
/// read-locked and cannot change). Before that, the faulting task holds
/// mmap_lock for read until the fault completes, so the tree cannot change.
#[inline(always)]
pub fn lookup_lockless<const LOCK_SEQ: bool>(mm: u64, addr: u64, info: &mut VmaInfo) -> Walk {
    walk::<LOCK_SEQ, false>(mm, addr, info)
}

/// The first VMA above `addr`, which no VMA holds, by the same walk and the
/// same validation as `lookup_lockless` on 6.4+ (vm_lock_seq).
#[inline(always)]
pub fn next_lockless(mm: u64, addr: u64, info: &mut VmaInfo) -> Walk {
    walk::<true, true>(mm, addr, info)
}

/// The walk of `lookup_lockless` (`NEXT` false: the VMA must cover `addr`) and
/// of `next_lockless` (`NEXT`: it must start above `addr`).
#[inline(always)]
fn walk<const LOCK_SEQ: bool, const NEXT: bool>(mm: u64, addr: u64, info: &mut VmaInfo) -> Walk {
    if off!(mm_mt_root) == 0 || mm == 0 {
        return Walk::Missed;
    }
    let seq: u32 = if LOCK_SEQ {
        read(mm, off!(mm_lock_seq))
    } else {
        0
    };
    let vma = maple_find::<NEXT>(mm, addr);
    if vma == 0 {
        return Walk::Missed;
    }
    describe(vma, info);
    let placed = if NEXT {
        info.vm_start > addr
    } else {
        info.vm_start <= addr && addr < info.vm_end
    };
    let ours = placed && info.mm == mm;
    if !LOCK_SEQ {
        return if ours { Walk::Found } else { Walk::Missed };
    }
    let seq_after: u32 = read(mm, off!(mm_lock_seq));
    if seq_after != seq {
        return Walk::Unstable;
    }
    if !ours {
        Walk::Missed
    } else if info.lock_seq != seq {
        Walk::Found
    } else {
        Walk::Locked
    }
}

/// What a lockless walk of the VMA tree found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// The VMA the kernel has for the address.
    Found,
    /// None that can be trusted: the lookup falls back to bpf_find_vma.
    Missed,
    /// The VMA there is write-locked by the window in progress (its
    /// `lock_seq`, in the info filled, is that window's): it is being changed,
    /// and a fault there waits for the window to end.
    Locked,
    /// A write window began or ended during the walk, which voids it; a walk
    /// made again soon after usually sees none.
    Unstable,
}

/// Fills `info` for the VMA covering `addr` in the current task; returns a
/// `vma_status` value.
#[inline(always)]
pub fn lookup(addr: u64, info: &mut VmaInfo) -> u8 {
    // SAFETY: the callback has the helper's signature and takes `ctx` as a
    // VmaInfo; `info` is not used while the helper runs.
    let ret = unsafe {
        bpf_find_vma(
            bpf_get_current_task_btf(),
            addr,
            describe_vma as *mut c_void,
            info as *mut VmaInfo as *mut c_void,
            0,
        )
    };
    match ret {
        0 => vma_status::FOUND,
        r if r == -EBUSY => vma_status::BUSY,
        r if r == -ENOENT => vma_status::NONE,
        _ => vma_status::ERROR,
    }
}

// Walks vm_file's dentry up to its mount's root, one name per slot.
extern "C" fn file_path(_task: *mut c_void, vma: *mut c_void, _ctx: *mut c_void) -> i64 {
    let Some(ev) = crate::mmap::scratch() else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot, reached through this one reference.
    let ev: &mut MmapExitEvent = unsafe { &mut *ev };
    let vma = vma as u64;
    let (file, start, end): (u64, u64, u64) = (
        read(vma, off!(vma_vm_file)),
        read(vma, off!(vma_vm_start)),
        read(vma, off!(vma_vm_end)),
    );
    if start == ev.ret {
        crate::life::reborn(vma, start, end);
    }
    let flags: u64 = read_flat(vma, off!(vma_vm_flags));
    if flags & (vm_flags::VM_PFNMAP | vm_flags::VM_MIXEDMAP | vm_flags::VM_IO) != 0 {
        let (setup_fn, setup_prepare_fn) = setup_fns(file);
        let setup = MmapSetupEvent {
            header: EventHeader {
                kind: event_kind::MMAP_SETUP,
                ..ev.header
            },
            vm_start: start,
            vm_end: end,
            vm_flags: flags,
            setup_fn,
            setup_prepare_fn,
            prefilled: crate::prefill::take(ev.header.tid, vma),
        };
        if crate::maps::EVENTS
            .output::<MmapSetupEvent>(&setup, 0)
            .is_err()
        {
            crate::maps::bump(counter::EVENTS_LOST);
        }
    }
    walk_file(file, ev);
    0
}

/// Names a `struct file *` into `ev.path`: dentry names up to the root, crossing
/// mount points (leaf first).
#[inline(always)]
pub fn walk_file(file: u64, ev: &mut MmapExitEvent) {
    // SAFETY: kernel memory is read through bpf_probe_read_kernel, which
    // checks every read; `ev` is a valid record.
    unsafe {
        if file == 0 {
            return;
        }
        let mut dentry: u64 = read(file, off!(file_dentry));
        // The struct mount around the file's vfsmount, to climb out of mounts.
        let mut mount: u64 =
            read::<u64>(file, off!(file_vfsmount)).wrapping_sub(off!(mount_mnt) as u64);
        for i in 0..PATH_COMPONENTS {
            if dentry == 0 {
                return;
            }
            let mut parent: u64 = read(dentry, off!(dentry_parent));
            if parent == dentry {
                // The root of a mount: go on from where it is mounted, if anywhere.
                let up: u64 = read(mount, off!(mount_parent));
                if up == 0 || up == mount {
                    if i == 0 {
                        // The file is the root of an internal mount: a pseudo file
                        // (anon inode, ...). Its own name is all there is.
                        let name: u64 = read(dentry, off!(dentry_name));
                        ev.path[0][0] = 0;
                        if name != 0 {
                            let _ =
                                bpf_probe_read_kernel_str_bytes(name as *const u8, &mut ev.path[0]);
                        }
                        ev.depth = 1;
                        ev.truncated = 2;
                        return;
                    }
                    ev.path[i][0] = b'/';
                    ev.path[i][1] = 0;
                    ev.depth = i as u32 + 1;
                    return;
                }
                dentry = read(mount, off!(mount_mountpoint));
                mount = up;
                parent = read(dentry, off!(dentry_parent));
            }
            let name: u64 = read(dentry, off!(dentry_name));
            ev.path[i][0] = 0;
            if name != 0 {
                let _ = bpf_probe_read_kernel_str_bytes(name as *const u8, &mut ev.path[i]);
            }
            ev.depth = i as u32 + 1;
            if parent == dentry {
                return;
            }
            dentry = parent;
        }
        ev.truncated = 1;
    }
}

/// Fills the mmap scratch record with the path of the file mapped at `addr`.
#[inline(always)]
pub fn mapped_file_path(addr: u64) {
    let mut unused = 0u64;
    // SAFETY: the callback has the helper's signature and writes this CPU's
    // scratch record, which the caller does not hold meanwhile.
    unsafe {
        bpf_find_vma(
            bpf_get_current_task_btf(),
            addr,
            file_path as *mut c_void,
            &mut unused as *mut u64 as *mut c_void,
            0,
        );
    }
}
