//! Maps and globals shared by all programs, and the few helpers every program uses.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use rmaptrace_common::{
    counter, Config, FaultKey, FaultStats, KernelOffsets, ProcStats, VmaInfo, VmaKey, COMM_LEN,
};

/// Written by userspace before load (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    vma_vm_start: 0,
    vma_vm_end: 0,
    vma_vm_flags: 0,
    vma_vm_ops: 0,
    vma_vm_file: 0,
    vma_vm_pgoff: 0,
    vm_ops_fault: 0,
    vm_ops_huge_fault: 0,
    file_f_inode: 0,
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
    syscall_args: 0,
    syscall_ret: 0,
    ready: 0,
};

#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    trace_all: 0,
    fault_events: 0,
    match_comms: 0,
    _pad: 0,
    self_tgid: 0,
};

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // Volatile so the compiler does not fold the zero initialiser into the code.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
pub fn config() -> Config {
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// Processes to trace, and rmaptrace itself when it spawns `-- CMD` (children only).
#[map]
pub static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Process names that `--comm` asked for; an exec of one adds the process to TRACED.
#[map]
pub static COMMS: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(64, 0);

/// Fault entry time and access of each thread, consumed at completion. A plain
/// hash, not an LRU one: LRU maps evict live entries before they are full, which
/// lost entries under process churn. Rows are deleted when their thread exits.
#[map]
pub static INFLIGHT: HashMap<u32, Inflight> = HashMap::with_max_entries(65536, 0);

/// Sizes below are defaults; userspace scales them with `EbpfLoader::set_max_entries`.
#[map]
pub static FAULTS: PerCpuHashMap<FaultKey, FaultStats> = PerCpuHashMap::with_max_entries(16384, 0);

#[map]
pub static VMAS: HashMap<VmaKey, VmaInfo> = HashMap::with_max_entries(65536, 0);

#[map]
pub static PROCS: PerCpuHashMap<u32, ProcStats> = PerCpuHashMap::with_max_entries(16384, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per-thread state of the tracepoint backend: the pending fault's entry, and the
/// last VMA this thread faulted on, so a fault storm on one mapping does not pay
/// for a bpf_find_vma (an irq_work and a self-IPI when interrupts are off) each time.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inflight {
    pub ts_ns: u64,
    /// Page of the faulting address, to match the completion to this entry.
    pub page: u64,
    pub access: u8,
    pub cache_valid: u8,
    pub _pad: [u8; 2],
    pub _pad3: u32,
    /// MAP_GEN of the process when the cache was filled.
    pub cache_gen: u64,
    pub cache_start: u64,
    pub cache_end: u64,
    pub cache_ident: u32,
    pub _pad2: u32,
}

/// Mapping generation per process (indexed by tgid modulo the size; a collision
/// only costs a cache miss): bumped after every syscall that can change a
/// process's mappings, and at exec. A thread's VMA cache is valid only while the
/// generation it was filled under is current.
#[map]
pub static MAP_GEN: Array<u64> = Array::with_max_entries(MAP_GEN_SLOTS, 0);

pub const MAP_GEN_SLOTS: u32 = 65536;

#[inline(always)]
pub fn map_gen(tgid: u32) -> u64 {
    MAP_GEN
        .get(tgid % MAP_GEN_SLOTS)
        .map(|g| unsafe { core::ptr::read_volatile(g) })
        .unwrap_or(0)
}

#[inline(always)]
pub fn bump_map_gen(tgid: u32) {
    if let Some(g) = MAP_GEN.get_ptr_mut(tgid % MAP_GEN_SLOTS) {
        // Atomic: two racing bumps must both count, or a cache filled between
        // them could look current.
        // (core's atomics have no fetch_add on the BPF target: BPF_XADD by hand.)
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
        ts_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
    }
}

#[inline(always)]
pub fn bump(counter: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter) {
        unsafe { *slot += 1 };
    }
}

/// (tgid, tid) of the current task when it is traced.
#[inline(always)]
pub fn traced_current() -> Option<(u32, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let cfg = config();
    if cfg.trace_all != 0 {
        if tgid == cfg.self_tgid || tgid == 0 {
            return None;
        }
        return Some((tgid, tid));
    }
    match unsafe { TRACED.get(tgid) } {
        Some(&v) if v == rmaptrace_common::traced::YES => Some((tgid, tid)),
        _ => None,
    }
}
