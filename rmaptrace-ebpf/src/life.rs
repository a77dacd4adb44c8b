//! Mapping lifetimes: which mapping a VMA is, over time. A `struct
//! vm_area_struct` lives from the mmap that creates it until the unmap that frees
//! it, and keeps its address while it grows (stack, heap, a merge), so its
//! pointer is its identity while it grows. When it shrinks (a split: mprotect,
//! mbind, madvise, a partial munmap) the faults counted so far were served by a
//! VMA that no longer exists in that shape, so the struct starts a new lifetime
//! and the old one ends. After a struct is freed the slab may hand the same
//! pointer to a new mapping: that is told apart by its mm, file, kind or page
//! offset changing, or, for a new mapping at the very same address and of the
//! same kind, by the mmap that made it (`reborn`).
use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use rmaptrace_common::{counter, vma_ident, LifeEntry, VmaInfo, VmaRecord};

use crate::maps::{bump, kernel_read, off, VMAS};

/// Live lifetimes by `struct vm_area_struct *`.
#[map]
pub static LIVES: HashMap<u64, LifeEntry> = HashMap::with_max_entries(131072, 0);

/// Per-CPU lifetime counter: ids are (cpu << 40) | n, unique without atomics.
#[map]
static NEXT_LIFE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A new lifetime's record is built here: too large for the BPF stack.
#[map]
static SCRATCH_RECORD: PerCpuArray<VmaRecord> = PerCpuArray::with_max_entries(1, 0);

const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;

/// The lifetime of the VMA `info` describes (just looked up), starting one if it
/// is new; 0 when the tables are full. Keeps the lifetime's description current
/// (range, protection) for userspace.
#[inline(always)]
pub fn life_of(info: &VmaInfo, tgid: u32, now: u64) -> u64 {
    let base = info.vm_pgoff.wrapping_sub(info.vm_start >> 12);
    let ident = vma_ident(info.vm_ops, info.file, info.vm_flags);
    let known = LIVES.get_ptr_mut(info.vma);
    if let Some(e) = known {
        // SAFETY: a map value pointer, valid for this run; only this raw pointer
        // is used to reach it.
        unsafe {
            let same = (*e).mm == info.mm
                && (*e).file == info.file
                && (*e).pgoff_base == base
                && (*e).ident == ident;
            let grown_or_same = info.vm_start <= (*e).start && (*e).end <= info.vm_end;
            if same && !grown_or_same {
                if let Some(r) = VMAS.get_ptr_mut((*e).life) {
                    if (*r).ended_ns == 0 {
                        (*r).ended_ns = now;
                        bump(counter::LIFE_SPLIT);
                    }
                }
            }
            if same && grown_or_same {
                let life = (*e).life;
                (*e).start = info.vm_start;
                (*e).end = info.vm_end;
                // The latest description, vm_lock_seq included: userspace
                // attributes faults the kernel could not look up with it.
                if let Some(r) = VMAS.get_ptr_mut(life) {
                    if (*r).info.lock_seq != info.lock_seq
                        || (*r).info.vm_start != info.vm_start
                        || (*r).info.vm_end != info.vm_end
                        || (*r).info.vm_flags != info.vm_flags
                    {
                        // SAFETY: the record's own field; `info` is another object.
                        crate::mem::copy(&raw mut (*r).info, info);
                    }
                }
                return life;
            }
        }
    }
    let Some(n) = NEXT_LIFE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; BPF programs do not nest on one CPU here.
    let life = unsafe {
        *n += 1;
        ((bpf_get_smp_processor_id() as u64) << 40) | *n
    };
    let Some(rec) = SCRATCH_RECORD.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot, written through this one pointer.
    unsafe {
        (*rec).tgid = tgid;
        // What made the VMA's anon_vma when that was seen before this
        // lifetime began (a fault's before its completion, a fork's, the
        // struct's earlier lifetime's before a split), read once.
        // An entry of an earlier VMA at the struct counts as none, branch-free
        // (this is inlined into the lookup, see `kernel_read_flat`).
        match crate::anon_vma::ANON_MADE.get(info.vma) {
            Some(m) => {
                let here = crate::anon_vma::made_here(m, info.vma) as u32;
                (*rec).anon_vma_by = m.by * here;
                (*rec).anon_vma_ns = m.ns * u64::from(here);
            }
            None => {
                (*rec).anon_vma_by = 0;
                (*rec).anon_vma_ns = 0;
            }
        }
        (*rec).first_ns = now;
        (*rec).ended_ns = 0;
        // SAFETY: the scratch record's own field; `info` is another object.
        crate::mem::copy(&raw mut (*rec).info, info);
        // By reference: by value would copy the record through memcpy.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let stored = VMAS.insert(life, &*rec, BPF_ANY);
        if stored.is_err() {
            bump(counter::VMA_TABLE_FULL);
            return 0;
        }
    }
    let entry = LifeEntry {
        life,
        mm: info.mm,
        file: info.file,
        pgoff_base: base,
        start: info.vm_start,
        end: info.vm_end,
        ident,
        _pad: 0,
    };
    // A VMA seen for the first time may be seen by two CPUs at once (threads
    // faulting on a new mapping): the first entry wins, and the other CPU
    // counts on its lifetime.
    let flags = if known.is_some() {
        BPF_ANY
    } else {
        BPF_NOEXIST
    };
    if LIVES.insert(info.vma, entry, flags).is_err() {
        // SAFETY: read once, copied out.
        match unsafe { LIVES.get(info.vma) }.copied() {
            Some(e)
                if known.is_none()
                    && e.mm == info.mm
                    && e.file == info.file
                    && e.pgoff_base == base
                    && e.ident == ident =>
            {
                let _ = VMAS.remove(life);
                return e.life;
            }
            _ => bump(counter::LIFE_TABLE_FULL),
        }
    }
    bump(counter::LIFE_STARTED);
    life
}

/// The VMA slab cache (`struct kmem_cache *`), once a free from it was
/// recognised; 0 before.
#[map]
static VMA_CACHE: Array<u64> = Array::with_max_entries(1, 0);

/// `kmem:kmem_cache_free(call_site, ptr, s)`: a slab object is freed. When it
/// is a VMA struct, its lifetime entry (and what made its anon_vma) goes, so
/// that the slab handing the pointer to a new VMA of the same shape at the
/// same address (a split part, a new mapping) never has the new one taken for
/// the old. It runs for every
/// slab free in the system, so after the first VMA free it is a compare of
/// two pointers (~15 ns) for any other. A raw tracepoint: `ptr` is a
/// `void *`, which tp_btf programs cannot read before 6.5.
#[raw_tracepoint(tracepoint = "kmem_cache_free")]
pub fn kmem_cache_free(ctx: RawTracePointContext) -> i32 {
    let Some(known) = VMA_CACHE.get_ptr_mut(0) else {
        return 0;
    };
    let cache: u64 = ctx.arg(2);
    // SAFETY: the map's one slot; a racing first write stores the same value.
    unsafe {
        if cache != *known {
            if *known != 0 || !is_vma_cache(cache) {
                return 0;
            }
            *known = cache;
        }
    }
    let vma: u64 = ctx.arg(1);
    let _ = LIVES.remove(vma);
    let _ = crate::anon_vma::ANON_MADE.remove(vma);
    0
}

/// Whether `cache` is the kernel's VMA cache: objects of a VMA's size, named
/// so (another cache may have objects of that size).
#[inline(always)]
fn is_vma_cache(cache: u64) -> bool {
    if off!(ready) == 0 || off!(vma_size) == 0 {
        return false;
    }
    if kernel_read::<u32>(cache, off!(kmem_cache_object_size)) != off!(vma_size) {
        return false;
    }
    // "vm_area_struct" and its NUL, as two little-endian words (a byte
    // compare would be a loop the verifier walks).
    let name: u64 = kernel_read(cache, off!(kmem_cache_name));
    let head: u64 = kernel_read(name, 0);
    let tail: u64 = kernel_read(name, 8);
    head == u64::from_le_bytes(*b"vm_area_")
        && tail & 0x00ff_ffff_ffff_ffff == u64::from_le_bytes(*b"struct\0\0")
}

/// An mmap just returned `start` and `vma` covers it, starting there: the
/// mapping there is new, unless `vma` is an older mapping above that grew down
/// over the new range (a merge keeps the older VMA and its lifetime).
#[inline(always)]
pub fn reborn(vma: u64, start: u64, end: u64) {
    // SAFETY: read once, copied out.
    let merged = match unsafe { LIVES.get(vma) } {
        Some(e) => e.start > start && e.end == end,
        None => return,
    };
    if !merged {
        let _ = LIVES.remove(vma);
    }
}
