//! Maps and globals shared by all programs, and the few helpers every program uses.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, generated::bpf_get_current_task_btf,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use rmaptrace_common::{
    counter, Config, FaultKey, FaultStats, KernelOffsets, ProcStats, ThreadAcct, VmaRecord,
    COMM_LEN, MAX_CGROUPS, MAX_COMMS,
};

/// Written by userspace before load (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: KernelOffsets = KernelOffsets {
    vma_vm_start: 0,
    vma_vm_end: 0,
    vma_vm_flags: 0,
    vma_vm_ops: 0,
    vma_vm_file: 0,
    vma_vm_pgoff: 0,
    vma_vm_mm: 0,
    vma_vm_lock_seq: 0,
    has_vm_lock_seq: 0,
    mm_lock_seq: 0,
    mm_lock_seqcount: 0,
    mm_mt_root: 0,
    mr64_pivot: 0,
    mr64_slot: 0,
    ma64_pivot: 0,
    ma64_slot: 0,
    maple_leaf_64: 0,
    maple_range_64: 0,
    maple_arange_64: 0,
    vm_ops_fault: 0,
    vm_ops_huge_fault: 0,
    file_f_inode: 0,
    file_f_op: 0,
    fops_mmap: 0,
    fops_mmap_prepare: 0,
    file_dentry: 0,
    dentry_name: 0,
    dentry_parent: 0,
    file_vfsmount: 0,
    mount_mnt: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
    inode_i_mode: 0,
    inode_i_rdev: 0,
    inode_i_ino: 0,
    task_tgid: 0,
    task_min_flt: 0,
    task_maj_flt: 0,
    task_pid: 0,
    task_mm: 0,
    task_ti_status: 0,
    task_signal: 0,
    signal_live: 0,
    task_group_leader: 0,
    task_start_time: 0,
    task_pagefault_disabled: 0,
    vma_anon_vma: 0,
    syscall_args: 0,
    syscall_ret: 0,
    mmap_lock_mm: 0,
    mmap_lock_write: 0,
    mmap_lock_success: 0,
    raw_enter_id: 0,
    raw_enter_args: 0,
    raw_exit_id: 0,
    raw_exit_ret: 0,
    fault_flag_write: 0,
    fault_flag_tried: 0,
    fault_flag_user: 0,
    fault_flag_instruction: 0,
    vm_fault_major: 0,
    vm_fault_retry: 0,
    vm_fault_fallback: 0,
    vm_fault_error: 0,
    vma_size: 0,
    kmem_cache_object_size: 0,
    kmem_cache_name: 0,
    ready: 0,
};

#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    trace_all: 0,
    fault_events: 0,
    match_comms: 0,
    stacks: 0,
    match_cgroups: 0,
    anon_swaps: 0,
    _pad: [0; 2],
    self_tgid: 0,
    fast_slots_per_cpu: 0,
};

/// A field of the kernel's offsets and enum values as the loader wrote them:
/// a volatile read of that one field. Plain reads would be folded into the
/// static's zero initialiser; a volatile read of the whole struct loaded all
/// of its fields at every use, on every fault.
macro_rules! off {
    ($field:ident) => {{
        // Also used inside unsafe blocks.
        #[allow(unused_unsafe)]
        // SAFETY: a field of a static the loader fills before load; nothing
        // writes it after.
        let v = unsafe { core::ptr::read_volatile(&raw const $crate::maps::OFFSETS.$field) };
        v
    }};
}
pub(crate) use off;

/// The addresses of `shmem_fault` and `shm_fault` (0 where unknown): their
/// faults are major only from swap (`may_fault_major`).
#[unsafe(no_mangle)]
static SWAP_BACKED_FAULTS: [u64; 2] = [0; 2];

#[inline(always)]
pub fn swap_backed_faults() -> [u64; 2] {
    // SAFETY: a static the loader fills before load; nothing writes it after.
    // Volatile, as `config`.
    unsafe { core::ptr::read_volatile(&raw const SWAP_BACKED_FAULTS) }
}

#[inline(always)]
pub fn config() -> Config {
    // Volatile so the compiler does not fold the zero initialiser into the code.
    // SAFETY: a static the loader fills before load; nothing writes it after.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// Processes to trace, and rmaptrace itself when it spawns `-- CMD` (children only).
#[map]
pub static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Changed after every insertion into TRACED (by the programs and by
/// userspace): an untraced answer remembered before it may be stale.
#[map]
pub static TRACED_GEN: Array<u32> = Array::with_max_entries(1, 0);

/// The process last found untraced on this CPU (`tgid << 32 | TRACED_GEN`):
/// the faults and syscalls of a busy process that is not traced then return
/// without a hash lookup.
#[map]
static UNTRACED_HINT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Process names that `--comm` asked for; an exec of one adds the process to TRACED.
#[map]
pub static COMMS: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(MAX_COMMS, 0);

/// Roots of the cgroup v2 subtrees that `--cgroup` asked for, by cgroup id;
/// an exec or fork inside one adds the process to TRACED.
#[map]
pub static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(MAX_CGROUPS, 0);

/// Sizes below are defaults; userspace scales them with `EbpfLoader::set_max_entries`.
#[map]
pub static FAULTS: PerCpuHashMap<FaultKey, FaultStats> = PerCpuHashMap::with_max_entries(16384, 0);

/// Mapping lifetimes by id: the VMA as last looked up, and when it was first seen.
#[map]
pub static VMAS: HashMap<u64, VmaRecord> = HashMap::with_max_entries(65536, 0);

/// Each traced thread: the kernel's fault counters, and the tracepoint
/// backend's fault in flight and cached VMA (see `ThreadAcct`). A plain hash,
/// not an LRU one: LRU maps evict live entries before they are full, which lost
/// entries under process churn. Rows are deleted when their thread exits.
#[map]
pub static THREADS: HashMap<u32, ThreadAcct> = HashMap::with_max_entries(65536, 0);

#[map]
pub static PROCS: PerCpuHashMap<u32, ProcStats> = PerCpuHashMap::with_max_entries(16384, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Write-lock generation of each mm (indexed by a hash of the mm pointer; a
/// collision only costs a cache miss): odd while a writer holds mmap_lock, bumped
/// at every write acquire and release. Every change to a process's VMA tree
/// happens under the write lock, whoever makes it (any syscall ABI, khugepaged,
/// the kernel itself), so a VMA cached at generation G is still what the kernel
/// has while the generation is G. Used where VMAs have no vm_lock_seq (< 6.4).
#[map]
pub static MM_GEN: Array<u64> = Array::with_max_entries(MM_GEN_SLOTS, 0);

pub const MM_GEN_SLOTS: u32 = 65536;

#[inline(always)]
fn mm_slot(mm: u64) -> u32 {
    // mm_structs are cache-line aligned slab objects: mix the bits above that.
    let x = (mm >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((x >> 40) as u32) % MM_GEN_SLOTS
}

#[inline(always)]
pub fn mm_gen(mm: u64) -> u64 {
    MM_GEN
        .get(mm_slot(mm))
        // SAFETY: a map value pointer, valid for the program's run.
        .map(|g| unsafe { core::ptr::read_volatile(g) })
        .unwrap_or(0)
}

#[inline(always)]
pub fn bump_mm_gen(mm: u64) {
    if let Some(g) = MM_GEN.get_ptr_mut(mm_slot(mm)) {
        // Atomic: two racing bumps must both count, or a cache filled between
        // them could look current.
        // (core's atomics have no fetch_add on the BPF target: BPF_XADD by hand.)
        // SAFETY: `g` points into the map value for this program's run.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({slot} + 0) += {one}",
                slot = in(reg) g,
                one = in(reg) 1u64,
            )
        };
    }
}

/// The header every ring buffer record starts with, stamped now.
#[inline(always)]
pub fn event_header(kind: u32, tgid: u32, tid: u32) -> rmaptrace_common::EventHeader {
    rmaptrace_common::EventHeader {
        kind,
        tgid,
        tid,
        _pad: 0,
        // SAFETY: a helper without arguments.
        ts_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
    }
}

/// What the kernel holds at `base + off` (an offset from BTF), zero where it
/// cannot be read: a probe read checks the address and cannot fault.
#[inline(always)]
pub fn kernel_read<T: Copy + Default>(base: u64, off: u32) -> T {
    // SAFETY: bpf_probe_read_kernel accepts any address and checks the read.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.unwrap_or_default()
}

/// [`kernel_read`] without a branch on the helper's result, which zeroes the
/// destination when the read fails: for code inlined into the lookup, where
/// every branch multiplies the states the 6.1 verifier walks.
#[inline(always)]
pub fn kernel_read_flat<T: Copy + Default>(base: u64, off: u32) -> T {
    let mut v = T::default();
    // SAFETY: the helper checks the source address; `v` is a local of the
    // size given, written only by the helper.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            &mut v as *mut T as *mut core::ffi::c_void,
            core::mem::size_of::<T>() as u32,
            (base + off as u64) as *const core::ffi::c_void,
        )
    };
    v
}

/// A field of the current task, at `off` in `task_struct`.
#[inline(always)]
pub fn current_task_field<T: Copy + Default>(off: u32) -> T {
    // SAFETY: the helper has no preconditions; it returns the current task.
    kernel_read(unsafe { bpf_get_current_task_btf() } as u64, off)
}

/// The current task's mm.
#[inline(always)]
pub fn current_mm() -> u64 {
    current_task_field(off!(task_mm))
}

/// The current task, as its BTF pointer: one helper call for every field a
/// program reads of it.
#[derive(Clone, Copy)]
pub struct CurrentTask(*const u8);

impl CurrentTask {
    #[inline(always)]
    pub fn get() -> Self {
        // SAFETY: the helper has no preconditions; it returns the current
        // task, valid for this run.
        Self(unsafe { bpf_get_current_task_btf() } as *const u8)
    }

    /// The `T` at `off` in the task, as a load through its BTF pointer,
    /// which the verifier checks against `task_struct` (the offsets are
    /// constants to it, in frozen .rodata): no helper call, where a probe
    /// read is one (~30 ns). For what the fault path reads on every fault; a
    /// pointer loaded this way is itself a BTF pointer (see `mm_seq`).
    #[inline(always)]
    pub fn load<T: Copy>(self, off: u32) -> T {
        // SAFETY: the current task's BTF pointer; the offset is
        // task_struct's own (BTF), and the verifier checks the load against
        // its type.
        unsafe { core::ptr::read_volatile(self.0.add(off as usize) as *const T) }
    }

    /// The task's mm and that mm's `mm_lock_seq` (0, 0 without an mm), both
    /// loads through BTF pointers.
    #[inline(always)]
    pub fn mm_seq(self) -> (u64, u32) {
        let mm: *const u8 = self.load(off!(task_mm));
        if mm.is_null() {
            return (0, 0);
        }
        // SAFETY: `mm` is a BTF pointer to the task's mm_struct, whose loads
        // the kernel guards (a bad one reads 0); the offset is mm_struct's own.
        let seq =
            unsafe { core::ptr::read_volatile(mm.add(off!(mm_lock_seq) as usize) as *const u32) };
        (mm as u64, seq)
    }

    /// The thread's own fault counters (min_flt, maj_flt).
    #[inline(always)]
    pub fn faults(self) -> (u64, u64) {
        (self.load(off!(task_min_flt)), self.load(off!(task_maj_flt)))
    }
}

/// The current task's mm and that mm's `mm_lock_seq` (see [`CurrentTask::mm_seq`]).
#[inline(always)]
pub fn current_mm_seq() -> (u64, u32) {
    CurrentTask::get().mm_seq()
}

#[inline(always)]
pub fn bump(counter: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: this CPU's counter, reached through this one pointer.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn traced_gen() -> u32 {
    TRACED_GEN.get(0).copied().unwrap_or(0)
}

/// A process entered TRACED (after the insertion).
#[inline(always)]
pub fn traced_changed() {
    if let Some(gen) = TRACED_GEN.get_ptr_mut(0) {
        // SAFETY: the map's only value, reached through this one pointer. Two
        // CPUs racing may store the same new value: it changed all the same.
        unsafe { *gen = (*gen).wrapping_add(1) };
    }
}

/// What UNTRACED_HINT holds for `tgid` found untraced now.
#[inline(always)]
fn untraced_note(tgid: u32) -> u64 {
    (tgid as u64) << 32 | traced_gen() as u64
}

/// Whether `tgid` was found untraced on this CPU with nothing added to TRACED
/// since (never with `trace_all`, where nothing is noted).
#[inline(always)]
pub fn known_untraced(tgid: u32) -> bool {
    UNTRACED_HINT.get(0).copied() == Some(untraced_note(tgid))
}

/// With `trace_all`, every process is traced but rmaptrace itself (and the
/// idle task).
#[inline(always)]
pub fn traced_when_all(cfg: &Config, tgid: u32) -> bool {
    tgid != cfg.self_tgid && tgid != 0
}

/// (tgid, tid) of the current task when it is traced.
#[inline(always)]
pub fn traced_current() -> Option<(u32, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let cfg = config();
    if cfg.trace_all != 0 {
        return traced_when_all(&cfg, tgid).then_some((tgid, tid));
    }
    if known_untraced(tgid) {
        return None;
    }
    // Taken before the lookup: an insertion after it leaves the note stale.
    let note = untraced_note(tgid);
    // SAFETY: the value is copied out at once.
    match unsafe { TRACED.get(tgid) } {
        Some(&v) if v == rmaptrace_common::traced::YES => Some((tgid, tid)),
        _ => {
            if let Some(h) = UNTRACED_HINT.get_ptr_mut(0) {
                // SAFETY: this CPU's value, reached through this one pointer.
                unsafe { *h = note };
            }
            None
        }
    }
}

/// Stores the lifetime of the VMA a thread just cached (looked up by the
/// tracepoint backend's completion, numbered by its counting program), and
/// what its `anon_vma` is known to be (`anon_state`).
#[inline(always)]
pub fn set_cached_life(tid: u32, life: u64, anon: u8) {
    if let Some(t) = THREADS.get_ptr_mut(tid) {
        // SAFETY: a map value pointer, valid for this run.
        unsafe {
            if life == 0 {
                (*t).fault.cache_valid = 0;
            }
            (*t).fault.cache_life = life;
            (*t).fault.cache_anon = anon;
        }
    }
}

/// The thread's cached VMA was seen with its `anon_vma`, which stays.
#[inline(always)]
pub fn set_cached_anon(tid: u32) {
    if let Some(t) = THREADS.get_ptr_mut(tid) {
        // SAFETY: a map value pointer, valid for this run.
        unsafe { (*t).fault.cache_anon = rmaptrace_common::anon_state::SET };
    }
}
