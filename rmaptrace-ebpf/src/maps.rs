//! Maps and globals shared by all programs, and the few helpers every program uses.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
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

/// Fault entry time and access of each thread, consumed at completion.
#[map]
pub static INFLIGHT: LruHashMap<u32, Inflight> = LruHashMap::with_max_entries(16384, 0);

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

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inflight {
    pub ts_ns: u64,
    /// Page of the faulting address, to match the completion to this entry.
    pub page: u64,
    pub ip: u64,
    pub access: u8,
    pub _pad: [u8; 7],
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
