//! Types shared by the eBPF programs (`rmaptrace-ebpf`) and the userspace daemon
//! (`rmaptrace`). Every type here crosses the kernel/user boundary through a BPF map
//! or the ring buffer, so each is `#[repr(C)]`, plain old data, with explicit padding.
#![no_std]

/// How a fault touched memory, from the x86 page-fault error code plus what the
/// probe itself knows. One byte so it can sit in a map key.
pub mod access {
    /// x86 error code bit 0: the page was present (a protection fault).
    pub const PRESENT: u8 = 1 << 0;
    /// x86 error code bit 1: a write.
    pub const WRITE: u8 = 1 << 1;
    /// x86 error code bit 4: an instruction fetch.
    pub const EXEC: u8 = 1 << 2;
    /// Taken in kernel mode on a user address (copy_to_user, futex, ...).
    pub const KERNEL: u8 = 1 << 3;
    /// The completion had no matching entry, so the bits above are unknown.
    pub const NO_ENTRY: u8 = 1 << 7;

    /// Maps the x86 `error_code` to the bits above.
    #[inline(always)]
    pub const fn from_x86_error_code(error_code: u64, kernel_mode: bool) -> u8 {
        let mut bits = 0;
        if error_code & 0x1 != 0 {
            bits |= PRESENT;
        }
        if error_code & 0x2 != 0 {
            bits |= WRITE;
        }
        if error_code & 0x10 != 0 {
            bits |= EXEC;
        }
        if kernel_mode {
            bits |= KERNEL;
        }
        bits
    }
}

/// Why a fault has no VMA attached to it. Stored in `FaultKey::vma_status`.
pub mod vma_status {
    /// `bpf_find_vma` found the VMA.
    pub const FOUND: u8 = 0;
    /// `bpf_find_vma` returned -EBUSY (mmap_lock held by a writer, or its irq_work busy).
    pub const BUSY: u8 = 1;
    /// No VMA covers the address (stack growth in progress, or a bad address).
    pub const NONE: u8 = 2;
    /// Any other error from the helper.
    pub const ERROR: u8 = 3;
    /// Found, but the lifetime table was full.
    pub const UNTRACKED: u8 = 4;
}

/// Kernel function that served a fault, when a backend observes it. `DERIVED` means
/// the backend could not see it and userspace derives it from the VMA and access.
pub mod path_id {
    pub const DERIVED: u8 = 0;
    pub const DO_ANONYMOUS_PAGE: u8 = 1;
    pub const DO_WP_PAGE: u8 = 2;
    pub const DO_SWAP_PAGE: u8 = 3;
    pub const DO_READ_FAULT: u8 = 4;
    pub const DO_COW_FAULT: u8 = 5;
    pub const DO_SHARED_FAULT: u8 = 6;
    pub const DO_HUGE_PMD_ANONYMOUS_PAGE: u8 = 7;
    pub const HUGETLB_FAULT: u8 = 8;
}

/// Number of latency buckets: four per power of two from 2^LAT_MIN_SHIFT ns.
pub const LAT_BUCKETS: usize = 96;
/// Latencies below 2^LAT_MIN_SHIFT ns land in bucket 0.
pub const LAT_MIN_SHIFT: u32 = 6;

/// Bucket of a latency: four sub-buckets per octave, so a percentile read back from
/// the histogram is within 19% of the true value. Branch-light for the verifier.
#[inline(always)]
pub fn latency_bucket(ns: u64) -> usize {
    if ns < (1 << LAT_MIN_SHIFT) {
        return 0;
    }
    let log2 = 63 - ns.leading_zeros();
    let sub = ((ns >> (log2 - 2)) & 0x3) as u32;
    let idx = ((log2 - LAT_MIN_SHIFT) * 4 + sub) as usize;
    if idx >= LAT_BUCKETS {
        LAT_BUCKETS - 1
    } else {
        idx
    }
}

/// Lower bound in ns of a latency bucket (inverse of [`latency_bucket`]).
pub fn latency_bucket_floor(idx: usize) -> u64 {
    let octave = idx as u32 / 4 + LAT_MIN_SHIFT;
    let sub = (idx % 4) as u64;
    (1u64 << octave) + sub * (1u64 << (octave - 2))
}

/// Key of the in-kernel fault aggregate: one row per process, mapping lifetime,
/// access kind, observed kernel path and whether a VMA was found.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FaultKey {
    pub tgid: u32,
    pub access: u8,
    pub path: u8,
    pub vma_status: u8,
    /// [`key_flags`] of the fault.
    pub flags: u8,
    /// The mapping lifetime ([`VmaRecord`]) that served the fault, 0 when
    /// `vma_status != FOUND`.
    pub life: u64,
}

/// Key of the per-stack counts of `--stacks`: a fault row and the id of a user
/// stack in the stack table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub row: FaultKey,
    pub stack_id: u32,
    pub _pad: u32,
}

/// Frames of a user stack recorded by default (`--stack-depth`).
pub const DEFAULT_STACK_DEPTH: u32 = 64;
/// The most the kernel walks (PERF_MAX_STACK_DEPTH, the default of
/// kernel.perf_event_max_stack).
pub const MAX_STACK_DEPTH: u32 = 127;

/// Bits of [`FaultKey::flags`].
pub mod key_flags {
    /// The VMA had an `anon_vma` (its reverse map for anonymous pages) when
    /// the fault completed: the faults without it came before it existed.
    pub const ANON_VMA: u8 = 1;
}

/// `vm_area_struct.vm_flags` bits (include/linux/mm.h: preprocessor constants,
/// which the BTF does not carry; unchanged since 2.6), for both sides.
pub mod vm_flags {
    pub const VM_READ: u64 = 0x1;
    pub const VM_WRITE: u64 = 0x2;
    pub const VM_EXEC: u64 = 0x4;
    pub const VM_SHARED: u64 = 0x8;
    pub const VM_GROWSDOWN: u64 = 0x100;
    pub const VM_UFFD_MISSING: u64 = 0x200;
    pub const VM_UFFD_WP: u64 = 0x1000;
    pub const VM_PFNMAP: u64 = 0x400;
    pub const VM_IO: u64 = 0x4000;
    pub const VM_HUGETLB: u64 = 0x40_0000;
    pub const VM_MIXEDMAP: u64 = 0x1000_0000;
}

/// VM_SHARED|VM_PFNMAP|VM_IO|VM_HUGETLB|VM_MIXEDMAP: the vm_flags that say what a
/// mapping is. Protection bits are left out: mprotect of a whole VMA changes them
/// without making it another mapping.
pub const VM_IDENT_FLAGS: u64 = vm_flags::VM_SHARED
    | vm_flags::VM_PFNMAP
    | vm_flags::VM_IO
    | vm_flags::VM_HUGETLB
    | vm_flags::VM_MIXEDMAP;

/// 1 where `x` is non-zero, else 0, without a branch (the verifier's cost of
/// a program grows with each branch).
#[inline(always)]
pub const fn nonzero(x: u64) -> u64 {
    (x | x.wrapping_neg()) >> 63
}

/// Whether a fault in a VMA can be major, so that its entry must be timed:
/// decided when the VMA is looked up, without a branch.
///
/// A file's page can be missing from the page cache (read from disk: major),
/// and a userfaultfd fault waits for its handler. Shmem's (`swap_backed`: the
/// addresses of `shmem_fault` and SysV shm's `shm_fault`, 0 where unknown) is
/// major only when read back from swap, as anonymous memory's is: the caller
/// times those where swap was on at the start. hugetlbfs behind `shm_fault`
/// stays a file.
#[inline(always)]
pub fn may_fault_major(file: u64, fault_fn: u64, flags: u64, swap_backed: [u64; 2]) -> bool {
    let other_fn = nonzero(fault_fn ^ swap_backed[0]) & nonzero(fault_fn ^ swap_backed[1]);
    let shmem = nonzero(fault_fn) & (1 ^ other_fn) & (1 ^ nonzero(flags & vm_flags::VM_HUGETLB));
    let uffd = nonzero(flags & (vm_flags::VM_UFFD_MISSING | vm_flags::VM_UFFD_WP));
    (nonzero(file) & (1 ^ shmem)) | uffd != 0
}

/// A 32-bit identity of a mapping's kind: its ops, file and defining flags. A VMA
/// struct whose identity changed was freed and reused for another mapping.
#[inline(always)]
pub fn vma_ident(vm_ops: u64, file: u64, vm_flags: u64) -> u32 {
    let x = vm_ops ^ file.rotate_left(17) ^ (vm_flags & VM_IDENT_FLAGS).rotate_left(41);
    (x ^ (x >> 32)) as u32
}

/// Per-CPU value of the fault aggregate. Counted at completion (the perf software
/// events fired by `mm_account_fault`), so `minor + major` is what the kernel itself
/// adds to the task's min_flt/maj_flt.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FaultStats {
    pub minor: u64,
    pub major: u64,
    /// Completions whose entry event was seen, i.e. with a latency.
    pub timed: u64,
    pub latency_sum_ns: u64,
    pub latency_max_ns: u64,
    /// Calls of `vm_ops->fault` timed by the `__do_fault` probes, and their time.
    pub handler_calls: u64,
    pub handler_ns: u64,
    /// Completion time of the row's latest fault on this CPU.
    pub last_ns: u64,
    pub latency_hist: [u32; LAT_BUCKETS],
}

impl Default for FaultStats {
    fn default() -> Self {
        Self {
            minor: 0,
            major: 0,
            timed: 0,
            latency_sum_ns: 0,
            latency_max_ns: 0,
            handler_calls: 0,
            handler_ns: 0,
            last_ns: 0,
            latency_hist: [0; LAT_BUCKETS],
        }
    }
}

/// A mapping lifetime: one kernel VMA from the moment rmaptrace first saw it
/// until it was unmapped. Value of the `VMAS` map, keyed by the lifetime's id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmaRecord {
    pub tgid: u32,
    /// What made the VMA's `anon_vma` (an [`anon_vma_by`] value), 0 while
    /// it has none that rmaptrace saw.
    pub anon_vma_by: u32,
    /// When that `anon_vma` was made (observed) or first found at a fault's
    /// completion (derived); 0 with `anon_vma_by`.
    pub anon_vma_ns: u64,
    /// When the lifetime was first seen (its first fault, usually).
    pub first_ns: u64,
    /// When its VMA was found shrunk or split (another lifetime continues in
    /// the same struct), 0 while it is not.
    pub ended_ns: u64,
    /// The VMA as last looked up: its range at the end of its life.
    pub info: VmaInfo,
}

pub const VMA_NAME_LEN: usize = 32;

/// What the kernel says about a VMA, read in the `bpf_find_vma` callback at fault
/// time with offsets taken from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmaInfo {
    /// The `struct vm_area_struct *` itself: one lifetime while it lives.
    pub vma: u64,
    /// `vma->vm_mm`.
    pub mm: u64,
    pub vm_start: u64,
    pub vm_end: u64,
    pub vm_flags: u64,
    /// `vma->vm_ops`; 0 is the kernel's own test for an anonymous VMA.
    pub vm_ops: u64,
    /// `vma->vm_ops->fault`, the handler `__do_fault` calls.
    pub fault_fn: u64,
    /// `vma->vm_ops->huge_fault`, 0 when absent.
    pub huge_fault_fn: u64,
    /// What set the mapping up: `vma->vm_file->f_op->mmap`, and
    /// `f_op->mmap_prepare` (6.17+; the same `mmap` where the kernel has no
    /// such field), which the kernel calls instead when set. Both are sent
    /// (userspace chooses): a branch here made the 6.1 verifier give up.
    pub setup_fn: u64,
    pub setup_prepare_fn: u64,
    pub vm_pgoff: u64,
    /// `vma->vm_file` (0 for none); only compared against 0 by userspace.
    pub file: u64,
    pub ino: u64,
    pub rdev: u32,
    pub i_mode: u16,
    pub _pad: u16,
    /// `vma->vm_lock_seq` (6.4+, per-VMA locks): changes whenever the VMA is
    /// write-locked, which every change to it requires. Meaningless where the
    /// kernel has none (`KernelOffsets::has_vm_lock_seq` 0).
    pub lock_seq: u32,
    pub _pad2: u32,
    /// Base name of the mapped file's dentry, NUL-padded.
    pub name: [u8; VMA_NAME_LEN],
}

impl Default for VmaInfo {
    fn default() -> Self {
        Self {
            vma: 0,
            mm: 0,
            vm_start: 0,
            vm_end: 0,
            vm_flags: 0,
            vm_ops: 0,
            fault_fn: 0,
            huge_fault_fn: 0,
            setup_fn: 0,
            setup_prepare_fn: 0,
            vm_pgoff: 0,
            file: 0,
            ino: 0,
            rdev: 0,
            i_mode: 0,
            _pad: 0,
            lock_seq: 0,
            _pad2: 0,
            name: [0; VMA_NAME_LEN],
        }
    }
}

/// Faults of a process that could not be added to the per-VMA aggregate because
/// it was full: written only then, so totals stay exact off the fast path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    pub minor: u64,
    pub major: u64,
}

/// One minor completion in this many, per CPU, is timed when counting at the
/// entry: the perf event's cost is paid by the sampled ones only (about 220 ns
/// each), and 1 in 16 still fills a latency histogram within seconds of a
/// fault storm.
pub const MINOR_LATENCY_SAMPLE_PERIOD: u64 = 16;

/// Global counters: one per-CPU slot each, summed by userspace.
pub mod counter {
    /// Ring buffer reservations that failed: events lost.
    pub const EVENTS_LOST: u32 = 0;
    /// Completions with no in-flight entry (no latency, access unknown).
    pub const UNMATCHED_COMPLETION: u32 = 1;
    /// In-flight table full.
    pub const INFLIGHT_FULL: u32 = 2;
    /// Per-process table full: faults of that process are not counted at all.
    pub const PROC_TABLE_FULL: u32 = 3;
    /// VMA table full: a new mapping lifetime's description could not be
    /// stored, so its faults are counted with kind unknown.
    pub const VMA_TABLE_FULL: u32 = 4;
    /// Traced-process table full: a child could not be followed.
    pub const TRACED_TABLE_FULL: u32 = 5;
    /// An entry was replaced before its completion arrived: the fault failed
    /// (SIGSEGV, SIGBUS, EFAULT fixup), its completion event was throttled, or
    /// (kretprobe) its return probe was missed.
    pub const ENTRY_WITHOUT_COMPLETION: u32 = 6;
    /// Completions served from the thread's VMA cache / by a bpf_find_vma lookup.
    pub const VMA_CACHE_HIT: u32 = 7;
    pub const VMA_LOOKUP: u32 = 8;
    /// The tracepoint backend's tail call into its counting program failed: the
    /// fault is lost (never expected; shown so it cannot go unnoticed).
    pub const TAIL_CALL_FAILED: u32 = 9;
    /// Live-VMA table full: a VMA's lifetime could not be remembered by its
    /// struct, so its next lookup starts another lifetime.
    pub const LIFE_TABLE_FULL: u32 = 10;
    /// Per-thread table full: a thread's kernel counters are not followed.
    pub const THREAD_TABLE_FULL: u32 = 11;
    /// bpf_find_vma lookups that failed: -EBUSY (mmap_lock held or awaited by a
    /// writer, or its irq_work still queued), and no VMA at the address.
    pub const VMA_LOOKUP_BUSY: u32 = 12;
    pub const VMA_LOOKUP_NONE: u32 = 13;
    /// do_mmap's argument table (kprobe flavour) full: that call's origin is
    /// not recorded.
    pub const MMAP_ARGS_FULL: u32 = 14;
    /// Mapping lifetimes stored in `VMAS`, and those the kernel was seen to
    /// end by a split or shrink: with the unmaps userspace sees, they tell it
    /// when ended lifetimes of running processes are worth collecting.
    pub const LIFE_STARTED: u32 = 15;
    pub const LIFE_SPLIT: u32 = 16;
    /// Per-thread table of pages installed at mmap full: that mmap's
    /// `prefilled` counts are missing.
    pub const PREFILL_TABLE_FULL: u32 = 17;
    /// Table of VMAs whose `anon_vma` was seen made full (or a kprobe
    /// call's argument table): that VMA's `anon_vma.by` is `unknown`.
    pub const ANON_MADE_FULL: u32 = 18;
    /// `--stacks`: faults whose user stack could not be stored (another stack
    /// already held its slot in the stack table, or no user stack could be
    /// walked), and faults whose (row, stack) count could not be stored (the
    /// table was full). Both are counted in their rows all the same.
    pub const STACK_LOST: u32 = 19;
    pub const STACK_ROWS_FULL: u32 = 20;
    /// Counting at the entry: faults counted at their entry that the kernel
    /// then did not count (failed: SIGSEGV, SIGBUS, an EFAULT fixup), taken
    /// back at the thread's next fault or exit.
    pub const FAULT_TAKEN_BACK: u32 = 21;
    /// Counting at the entry: sampled minor completions whose entry was not
    /// timed (the entry's guess of which fault the sample would take
    /// missed), and major completions likewise (swap turned on after the
    /// start): no latency from them.
    pub const SAMPLE_UNTIMED: u32 = 22;
    pub const MAJOR_UNTIMED: u32 = 23;
    /// Counting at the entry: faults whose entry could not find their VMA,
    /// placed in it since (as they took mmap_lock, or at their thread's next
    /// fault) where that was certain.
    pub const PLACED_LATE: u32 = 24;
    /// Counting at the entry: faults counted at their entry in a VMA that was
    /// replaced before the kernel handled them, moved to the one that served
    /// them (seen as the fault took mmap_lock).
    pub const MOVED_LATE: u32 = 25;
    /// Counting at the entry: entries that read the clock (a fault that can
    /// be major, or may be the sampled minor one, or whose VMA was looked up).
    pub const ENTRIES_TIMED: u32 = 26;
    /// Counting at the entry: rows that found no free fast slot (the
    /// `ROW_SLOT` table full, or the CPU's slots used): they count through
    /// the hash, as exactly, a little slower.
    pub const FAST_SLOTS_FULL: u32 = 27;
    /// Counting at the entry: fast slots taken again after userspace freed
    /// them with their rows.
    pub const FAST_SLOTS_REUSED: u32 = 28;
    pub const COUNT: u32 = 29;
}

/// Values of the `TRACED` map.
pub mod traced {
    /// The process is traced.
    pub const YES: u8 = 1;
    /// The process is not traced but its children are (rmaptrace itself when it
    /// starts `-- CMD`, so the command is traced from its first instruction).
    pub const CHILDREN_ONLY: u8 = 2;
}

/// Kinds of ring buffer records: every record starts with an [`EventHeader`].
pub mod event_kind {
    pub const FAULT: u32 = 1;
    pub const MMAP_ENTER: u32 = 2;
    pub const MMAP_EXIT: u32 = 3;
    pub const MUNMAP: u32 = 4;
    pub const MREMAP_ENTER: u32 = 5;
    pub const MREMAP_EXIT: u32 = 6;
    pub const EXIT: u32 = 7;
    pub const EXEC: u32 = 8;
    pub const FORK: u32 = 9;
    /// `do_mmap` returned (fexit): a mapping made inside the kernel when no mmap
    /// syscall is in progress (execve's ELF loader, ...).
    pub const KERNEL_MMAP: u32 = 10;
    /// munmap returned (its result in `args[0]`).
    pub const MUNMAP_EXIT: u32 = 11;
    /// A fault whose VMA the kernel could not look up (see [`UnresolvedFault`]).
    pub const UNRESOLVED_FAULT: u32 = 12;
    /// An mmap syscall left a mapping the fault path does not serve (see
    /// [`MmapSetupEvent`]).
    pub const MMAP_SETUP: u32 = 13;
    /// A fault record followed by its VMA's description (see [`FaultVmaEvent`]).
    pub const FAULT_VMA: u32 = 14;
    /// How a fault recorded at its entry ended (see [`FaultOutcome`]).
    pub const FAULT_OUTCOME: u32 = 15;
}

pub const COMM_LEN: usize = 16;

/// What the kernel keeps of a command name: its first COMM_LEN - 1 bytes (then
/// a NUL), maybe cutting a character in two.
pub fn comm_prefix(name: &[u8]) -> &[u8] {
    &name[..name.len().min(COMM_LEN - 1)]
}

/// Names `--comm` can match at once (the COMMS map's size).
pub const MAX_COMMS: u32 = 64;

/// Cgroup subtrees `--cgroup` can follow at once (the CGROUPS map's size).
pub const MAX_CGROUPS: u32 = 64;
/// How deep below the cgroup v2 root a followed subtree may start.
pub const MAX_CGROUP_LEVEL: u32 = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub _pad: u32,
    pub ts_ns: u64,
}

/// One completed fault, sent only with `--events`: 64 bytes, so that a fault
/// storm fills the ring slowly and copies little.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultEvent {
    pub header: EventHeader,
    pub addr: u64,
    pub ip: u64,
    /// 0 when the entry was not seen.
    pub latency_ns: u64,
    pub access: u8,
    pub path: u8,
    pub vma_status: u8,
    pub major: u8,
    /// [`FAULT_SETTLED`], [`FAULT_AT_ENTRY`] or [`FAULT_PLACED`].
    pub pending: u8,
    pub _pad: [u8; 3],
    /// The mapping lifetime; 0 for none. Userspace describes it from the
    /// lifetime's first record, which carries the VMA ([`FaultVmaEvent`]).
    pub life: u64,
}

/// `FaultEvent::pending` of a record sent once its fault completed: it says
/// all there is.
pub const FAULT_SETTLED: u8 = 0;

/// `FaultEvent::pending` of a record sent at the fault's entry (counting at
/// the entry), as a minor fault without latency. Its thread's next
/// [`FaultOutcome`], if one comes before the thread's next fault record,
/// says otherwise.
pub const FAULT_AT_ENTRY: u8 = 1;

/// `FaultEvent::pending` of a record that places the thread's latest fault
/// recorded at its entry, whose entry found no VMA it could trust (placed
/// since, as in the aggregates): only its VMA (and lifetime) are news.
pub const FAULT_PLACED: u8 = 2;

/// What became of a thread's latest fault recorded at its entry, when it was
/// not a minor fault without latency: sent after that record, before the
/// thread's next one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultOutcome {
    /// `ts_ns` is when the outcome showed (the completion, the next entry).
    pub header: EventHeader,
    pub addr: u64,
    /// Entry to completion; 0 for `TAKEN_BACK`, and for a major fault whose
    /// entry was not timed.
    pub latency_ns: u64,
    /// [`fault_outcome`].
    pub outcome: u8,
    pub _pad: [u8; 7],
}

pub mod fault_outcome {
    /// A major fault, with its latency.
    pub const MAJOR: u8 = 1;
    /// A minor fault whose completion was sampled: its latency.
    pub const MINOR_TIMED: u8 = 2;
    /// The kernel did not count it (SIGSEGV, SIGBUS, an EFAULT fixup): not a fault.
    pub const TAKEN_BACK: u8 = 3;
}

/// The first fault of a row (a lifetime's first fault on a CPU, or of a new
/// kind of access) where the probe has the VMA at hand: the record, then the
/// VMA's description.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultVmaEvent {
    pub fault: FaultEvent,
    pub vma: VmaInfo,
}

/// A fault counted without a VMA (bpf_find_vma failed: a writer held or waited
/// for mmap_lock). Always sent, so that userspace can attribute it afterwards to
/// the mapping that held its address at that moment, where that is certain.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UnresolvedFault {
    /// `ts_ns` is the completion time.
    pub header: EventHeader,
    pub addr: u64,
    pub latency_ns: u64,
    /// The fault's aggregate row (its `FaultKey` fields).
    pub access: u8,
    pub path: u8,
    pub vma_status: u8,
    pub major: u8,
    /// `mm->mm_lock_seq` at the fault, where VMAs carry `vm_lock_seq` (6.4+): a
    /// VMA whose `vm_lock_seq` is older was unchanged since before the fault.
    pub mm_seq: u32,
    pub has_mm_seq: u8,
    pub _pad: [u8; 7],
}

/// Arguments of mmap/munmap/mremap at syscall entry; the exit record carries the
/// result. Userspace pairs them by tid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallEvent {
    pub header: EventHeader,
    /// Up to six syscall arguments at entry; `args[0]` is the return value at exit.
    pub args: [u64; 6],
}

pub const PATH_COMPONENTS: usize = 8;
pub const PATH_COMPONENT_LEN: usize = 32;

/// Result of an mmap, with the mapped file's path as the kernel knows it: dentry
/// names from the file up to its mount's root, leaf first, each truncated to 31
/// bytes. Read in the kernel because short-lived processes are gone before
/// userspace could read /proc/PID/maps.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MmapExitEvent {
    pub header: EventHeader,
    pub ret: u64,
    /// `do_mmap`'s own arguments; zero for the syscall records, whose entry
    /// record carries them.
    pub len: u64,
    pub prot: u64,
    pub flags: u64,
    /// Components filled; 0 for anonymous memory.
    pub depth: u32,
    /// 1 when the walk stopped before the root (path longer than 8 parts); 2 for
    /// a pseudo file (anon inode...) whose only name is `path[0]`.
    pub truncated: u32,
    pub path: [[u8; PATH_COMPONENT_LEN]; PATH_COMPONENTS],
}

impl MmapExitEvent {
    /// Bytes of a record with `depth` path components: the rest is not sent,
    /// so that anonymous memory's record is a fifth of the whole.
    pub const fn sent_len(depth: usize) -> usize {
        let depth = if depth < PATH_COMPONENTS {
            depth
        } else {
            PATH_COMPONENTS
        };
        core::mem::offset_of!(MmapExitEvent, path) + depth * PATH_COMPONENT_LEN
    }
}

/// The VMA an mmap syscall left, when its setup made it one the fault path does
/// not serve (VM_PFNMAP, VM_MIXEDMAP or VM_IO: a driver's `remap_pfn_range` or
/// `vm_insert_pages`): such a mapping may never fault, so nothing else would
/// show it. Sent before the call's [`MmapExitEvent`], from the same lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MmapSetupEvent {
    pub header: EventHeader,
    pub vm_start: u64,
    pub vm_end: u64,
    pub vm_flags: u64,
    /// As in [`VmaInfo`].
    pub setup_fn: u64,
    pub setup_prepare_fn: u64,
    /// Pages the mmap handler installed in it, by function ([`prefill`]);
    /// counted where the kernel-function backends probe them.
    pub prefilled: [u64; prefill::FUNCTIONS],
}

/// The functions an mmap handler installs pages with, instead of the fault
/// path: indexes into [`Prefill::pages`] and [`MmapSetupEvent::prefilled`].
pub mod prefill {
    pub const REMAP_PFN_RANGE: usize = 0;
    pub const VM_INSERT_PAGES: usize = 1;
    pub const VM_INSERT_PAGE: usize = 2;
    /// The fault-time helpers (they return a `vm_fault_t`), counted only
    /// inside an mmap syscall: from a fault handler they serve a fault.
    pub const VMF_INSERT_PFN: usize = 3;
    pub const VMF_INSERT_MIXED: usize = 4;
    pub const FUNCTIONS: usize = 5;
    pub const NAMES: [&str; FUNCTIONS] = [
        "remap_pfn_range",
        "vm_insert_pages",
        "vm_insert_page",
        "vmf_insert_pfn",
        "vmf_insert_mixed",
    ];
}

/// What made a VMA's `anon_vma`, its reverse map for anonymous pages
/// ([`VmaRecord::anon_vma_by`], [`AnonVmaMade::by`]).
pub mod anon_vma_by {
    /// None seen.
    pub const NONE: u32 = 0;
    /// Found set at a fault's completion, made by nothing rmaptrace saw (the
    /// tracepoint backend; a mapping merged into one that had it).
    pub const SEEN: u32 = 1;
    /// `__anon_vma_prepare` during a fault (the first write, usually).
    pub const FAULT: u32 = 2;
    /// `anon_vma_fork`: the child's VMA at fork, chained to the parent's.
    pub const FORK: u32 = 3;
    /// `__anon_vma_prepare` outside any fault (userfaultfd's UFFDIO_COPY, a
    /// uprobe's breakpoint, ...).
    pub const OTHER: u32 = 4;
}

/// A VMA's `anon_vma` as the hooks on its making saw it (value of the
/// `ANON_MADE` map, by `struct vm_area_struct *`; the lifetime's record
/// takes it when it starts).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AnonVmaMade {
    pub ns: u64,
    pub by: u32,
    pub _pad: u32,
    /// The `anon_vma` seen made: the record holds only while the VMA at the
    /// struct still has it. A struct freed where the free was not seen (its
    /// program can miss a run, nested in an interrupt) and handed to a new
    /// VMA keeps its entry, which must not become the new VMA's.
    pub anon_vma: u64,
}

/// A thread's pages installed by those functions during its mmap syscall in
/// progress (value of the `PREFILL` map), and the call under way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Prefill {
    /// The VMA they went into.
    pub vma: u64,
    pub pages: [u64; prefill::FUNCTIONS],
    /// The call in progress: its VMA, function, the pages it was asked for,
    /// and (vm_insert_pages) where it leaves the number it did not insert.
    pub pending_vma: u64,
    pub pending_which: u64,
    pub pending_pages: u64,
    pub pending_left: u64,
    /// The thread is inside an mmap syscall (1), which the fault-time
    /// helpers need to be counted.
    pub in_mmap: u64,
}

/// A thread exited: its own fault counters as the kernel kept them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitEvent {
    pub header: EventHeader,
    pub min_flt: u64,
    pub maj_flt: u64,
    /// The thread's counters when rmaptrace started following it (see
    /// [`ThreadAcct`]); meaningful when `has_base` is 1.
    pub base_min: u64,
    pub base_maj: u64,
    /// The start time of the process's group leader: which process this was,
    /// when its pid is already another's (a thread can report its exit after
    /// the one that saw the process die, and the pid be reused in between).
    pub leader_start_ns: u64,
    pub has_base: u32,
    /// 1 when no thread of the process was running any more (`signal->live`
    /// was 0): a process's last threads can each see it.
    pub group_dead: u32,
    pub comm: [u8; COMM_LEN],
    /// The cgroup v2 id of the exiting thread (its cgroup directory's inode).
    pub cgroup: u64,
}

/// A live mapping lifetime as the kernel side tracks it, by VMA struct pointer
/// (value of the `LIVES` map): what the VMA looked like when last seen, to tell
/// a continuing VMA from a reused struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifeEntry {
    pub life: u64,
    pub mm: u64,
    pub file: u64,
    /// `vm_pgoff - vm_start / PAGE_SIZE`: unchanged by growth and splits.
    pub pgoff_base: u64,
    pub start: u64,
    pub end: u64,
    pub ident: u32,
    pub _pad: u32,
}

/// One traced thread, value of the `THREADS` map. The kernel's own fault
/// counters: `base` when rmaptrace started following it (0 for a thread born
/// during the trace; its counters just before its first fault otherwise),
/// `last` at its latest counted fault. `last - base` is what the kernel counted
/// over the same span as rmaptrace's own counts, read at the same instants.
/// The tracepoint backend keeps the thread's cached VMA here too: its
/// completion finds the thread with one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadAcct {
    pub tgid: u32,
    pub _pad: u32,
    pub base_min: u64,
    pub base_maj: u64,
    pub last_min: u64,
    pub last_maj: u64,
    pub fault: ThreadFault,
}

/// The VMA a thread faulted on last (tracepoint backend, kernel side only): a
/// fault storm on one mapping then does not pay for a VMA lookup each time
/// (bpf_find_vma is an mmap_lock trylock that fails under any writer, and an
/// irq_work self-IPI where interrupts are off).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadFault {
    pub cache_valid: u8,
    /// What the cached VMA's `anon_vma` is known to be without reading it
    /// (`anon_state`).
    pub cache_anon: u8,
    /// The cached VMA has VM_WRITE: a write fault there can succeed.
    pub cache_writable: u8,
    /// Faults in the cached VMA can be major (a file's page read in, a
    /// userfaultfd retry; `may_fault_major`), so their entry is timed.
    pub cache_may_major: u8,
    /// Where VMAs carry vm_lock_seq (6.4+): the mm's `mm_lock_seq` when the
    /// cache was filled. Every change to a VMA happens in a write window of
    /// mmap_lock, which changes it: unchanged, the cached VMA is still what the
    /// kernel has.
    pub cache_mm_seq: u32,
    /// MM_GEN of the process's mm when the cache was filled (kernels without
    /// per-VMA lock sequence numbers).
    pub cache_gen: u64,
    pub cache_vma: u64,
    pub cache_mm: u64,
    pub cache_start: u64,
    pub cache_end: u64,
    pub cache_life: u64,
    /// Counting at the entry: the thread's latest fault, counted when it
    /// entered and confirmed or taken back once its outcome shows (its
    /// completion event, the thread's next fault, its exit). 0: none.
    pub pend_ts: u64,
    pub pend_addr: u64,
    /// min_flt + maj_flt when it entered: unmoved at the next fault or the
    /// exit, the kernel did not count it (it failed).
    pub pend_faults: u64,
    /// The row it was counted in (`pend_counted`), or would be.
    pub pend_key: FaultKey,
    /// 1: counted in `pend_key`'s row at its entry; 0: its VMA was not found
    /// there, it is counted (as placed later by address) only once confirmed.
    pub pend_counted: u8,
    /// 1: the entry found the VMA at the address write-locked, by the write
    /// window whose sequence is `pend_locked_seq`: the fault is handled after
    /// that window ends.
    pub pend_locked: u8,
    pub _pad2: [u8; 2],
    pub pend_locked_seq: u32,
    /// Counting at the entry: the rows of this thread's cached VMA whose
    /// minor faults it counts in `ROW_FAST` slots, one per kind of access
    /// (indexed by its PRESENT and WRITE bits).
    pub fast: [FastSlot; 4],
}

/// Rows that count their minor faults at the entry through a slot of a
/// per-CPU array (`ROW_FAST`) as well as their `FAULTS` value: the slot,
/// named by the faulting thread's cache, costs a fraction of the hash
/// lookup. Beyond this many, rows count through the hash only.
pub const FAST_SLOTS: u32 = 4096;

/// A row's minor faults counted through its fast slot, on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastCount {
    pub minor: u64,
    /// The entry time of the latest, as `FaultStats::last_ns`.
    pub last_ns: u64,
}

/// A thread's fast slot for one kind of access to its cached VMA: the row
/// of that lifetime, access and flags counts in `ROW_FAST[slot - 1]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastSlot {
    pub life: u64,
    /// 0: none yet.
    pub slot: u32,
    pub access: u8,
    pub flags: u8,
    /// Faults of this row the thread counted through the hash so far: a slot
    /// is taken once they reach `FAST_SLOT_AFTER`, so that short-lived rows
    /// (a buffer of a few pages) do not use slots up.
    pub hashed: u8,
    pub _pad: u8,
}

/// See `FastSlot::hashed`.
pub const FAST_SLOT_AFTER: u8 = 8;

/// What a thread's cached VMA's `anon_vma` is known to be (`ThreadFault`).
pub mod anon_state {
    /// Not known: read it at each fault.
    pub const UNKNOWN: u8 = 0;
    /// Set: made at a first write fault, it stays for the VMA's life.
    pub const SET: u8 = 1;
    /// Never: a shared mapping has none.
    pub const NEVER: u8 = 2;
}

/// exec or fork of a traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskEvent {
    pub header: EventHeader,
    /// Child tgid for FORK; for EXEC, 1 when this exec started the tracing (a
    /// `--comm` match), so the counters below are the process's baseline.
    pub other: u32,
    pub _pad: u32,
    /// The calling thread's own min_flt/maj_flt at the event.
    pub min_flt: u64,
    pub maj_flt: u64,
    pub comm: [u8; COMM_LEN],
    /// The cgroup v2 id of the calling thread (for FORK, the child's too).
    pub cgroup: u64,
}

/// Byte offsets of the kernel struct fields the programs read, taken from the running
/// kernel's BTF by userspace and written into the object's `OFFSETS` global before
/// load (Rust eBPF has no CO-RE relocations, and layouts differ between kernels).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub vma_vm_start: u32,
    pub vma_vm_end: u32,
    pub vma_vm_flags: u32,
    pub vma_vm_ops: u32,
    pub vma_vm_file: u32,
    pub vma_vm_pgoff: u32,
    pub vma_vm_mm: u32,
    /// `vm_area_struct.vm_lock_seq`; meaningful when `has_vm_lock_seq` is 1.
    pub vma_vm_lock_seq: u32,
    pub has_vm_lock_seq: u32,
    /// `mm_struct.mm_lock_seq` (its `.sequence` since 6.13), with vm_lock_seq.
    pub mm_lock_seq: u32,
    /// 1 where `mm_lock_seq` is a seqcount (6.13+): odd while a write window of
    /// mmap_lock is open, so "no window open" needs no VMA read.
    pub mm_lock_seqcount: u32,
    /// The mm's VMA tree (`mm_mt.ma_root`) and the maple node layouts, to find
    /// a VMA without mmap_lock as the kernel's own lockless fault path does
    /// (6.4+, with vm_lock_seq).
    pub mm_mt_root: u32,
    pub mr64_pivot: u32,
    pub mr64_slot: u32,
    pub ma64_pivot: u32,
    pub ma64_slot: u32,
    /// `enum maple_type` values.
    pub maple_leaf_64: u32,
    pub maple_range_64: u32,
    pub maple_arange_64: u32,
    pub vm_ops_fault: u32,
    pub vm_ops_huge_fault: u32,
    pub file_f_inode: u32,
    /// `file.f_op`, `file_operations.mmap`, and `file_operations.mmap_prepare`
    /// (6.17+; the `mmap` offset where the kernel has none).
    pub file_f_op: u32,
    pub fops_mmap: u32,
    pub fops_mmap_prepare: u32,
    /// `file.f_path.dentry`, both offsets added.
    pub file_dentry: u32,
    /// `dentry.d_name.name`, both offsets added.
    pub dentry_name: u32,
    pub dentry_parent: u32,
    /// `file.f_path.mnt`; `struct mount`'s embedded `mnt`, `mnt_parent` and
    /// `mnt_mountpoint`, to cross mount points when naming a file.
    pub file_vfsmount: u32,
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub inode_i_mode: u32,
    pub inode_i_rdev: u32,
    pub inode_i_ino: u32,
    pub task_tgid: u32,
    pub task_min_flt: u32,
    pub task_maj_flt: u32,
    pub task_pid: u32,
    pub task_mm: u32,
    /// `task_struct.thread_info.status`: TS_COMPAT marks a 32-bit syscall (x86).
    pub task_ti_status: u32,
    /// `task_struct.signal` and `signal_struct.live`: threads still running.
    pub task_signal: u32,
    pub signal_live: u32,
    /// `task_struct.group_leader` and `task_struct.start_time`.
    pub task_group_leader: u32,
    pub task_start_time: u32,
    /// `task_struct.pagefault_disabled`: a kernel-mode exception taken while
    /// it is set is fixed up without handle_mm_fault (copy_from_user_nmi, as
    /// in a perf callchain walk of the user stack).
    pub task_pagefault_disabled: u32,
    /// `vm_area_struct.anon_vma`.
    pub vma_anon_vma: u32,
    /// Offset of the first syscall argument in a `syscalls:sys_enter_*` record and of
    /// `ret` in `sys_exit_*`, from the tracepoints' format files.
    pub syscall_args: u32,
    pub syscall_ret: u32,
    /// `mmap_lock:mmap_lock_{acquire_returned,released}` record fields.
    pub mmap_lock_mm: u32,
    pub mmap_lock_write: u32,
    /// `mmap_lock:mmap_lock_acquire_returned`'s `success`.
    pub mmap_lock_success: u32,
    /// `raw_syscalls:sys_enter` (id, args) and `sys_exit` (id, ret) record fields.
    pub raw_enter_id: u32,
    pub raw_enter_args: u32,
    pub raw_exit_id: u32,
    pub raw_exit_ret: u32,
    /// `enum fault_flag` values (handle_mm_fault's `flags`), from the BTF.
    pub fault_flag_write: u32,
    pub fault_flag_tried: u32,
    pub fault_flag_user: u32,
    pub fault_flag_instruction: u32,
    /// `enum vm_fault_reason` values (handle_mm_fault's result), from the BTF;
    /// `vm_fault_error` is the kernel's VM_FAULT_ERROR made of them.
    pub vm_fault_major: u32,
    pub vm_fault_retry: u32,
    pub vm_fault_fallback: u32,
    pub vm_fault_error: u32,
    /// `sizeof(struct vm_area_struct)`, `kmem_cache.object_size` and
    /// `kmem_cache.name`: the VMA cache is recognised by its object size and
    /// its name (`vma_size` 0: freed VMA structs are not looked for).
    pub vma_size: u32,
    pub kmem_cache_object_size: u32,
    pub kmem_cache_name: u32,
    /// Non-zero once userspace filled the struct; programs do nothing before that.
    pub ready: u32,
}

/// Run-time switches written into the object's `CONFIG` global before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Trace every process (except rmaptrace itself) instead of only the `TRACED` map.
    pub trace_all: u8,
    /// Send one ring buffer record per completed fault.
    pub fault_events: u8,
    /// Add processes that exec a name in the `COMMS` map to `TRACED`.
    pub match_comms: u8,
    /// Count each fault's user stack too (`STACK_COUNTS`).
    pub stacks: u8,
    /// Add processes that exec, or fork, inside a cgroup subtree of the
    /// `CGROUPS` map to `TRACED`.
    pub match_cgroups: u8,
    /// Swap was on at the start: anonymous and shmem memory can fault major
    /// (swap-in), so counting at the entry times every fault's entry.
    pub anon_swaps: u8,
    pub _pad: [u8; 2],
    /// rmaptrace's own tgid, never traced.
    pub self_tgid: u32,
    /// Fast slots each CPU numbers (`FAST_SLOTS` over the possible CPUs);
    /// slots freed by userspace are shared through a queue.
    pub fast_slots_per_cpu: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C) plain data with explicit padding.
    unsafe impl aya::Pod for FaultKey {}
    unsafe impl aya::Pod for StackKey {}
    unsafe impl aya::Pod for FaultStats {}
    unsafe impl aya::Pod for VmaRecord {}
    unsafe impl aya::Pod for AnonVmaMade {}
    unsafe impl aya::Pod for ThreadAcct {}
    unsafe impl aya::Pod for LifeEntry {}
    unsafe impl aya::Pod for VmaInfo {}
    unsafe impl aya::Pod for ProcStats {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for FastCount {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_record_is_one_cache_line() {
        assert_eq!(core::mem::size_of::<FaultEvent>(), 64);
        assert_eq!(core::mem::size_of::<FaultOutcome>(), 48);
    }

    #[test]
    fn kernel_shared_structs_have_no_hidden_padding() {
        use core::mem::{align_of, size_of};
        assert_eq!(size_of::<Config>(), 16);
        assert_eq!(size_of::<FastSlot>(), 16);
        assert_eq!(size_of::<ThreadFault>() % align_of::<ThreadFault>(), 0);
        assert_eq!(
            core::mem::offset_of!(ThreadFault, fast),
            core::mem::offset_of!(ThreadFault, pend_locked_seq) + 4,
            "fast slots right after the last field"
        );
    }

    #[test]
    fn latency_buckets_are_monotonic_and_invertible() {
        let mut last = 0;
        for ns in [
            0u64,
            63,
            64,
            80,
            96,
            112,
            128,
            1000,
            1 << 20,
            1 << 30,
            u64::MAX,
        ] {
            let b = latency_bucket(ns);
            assert!(b >= last, "bucket of {ns} went backwards");
            last = b;
            if ns >= 64 && b < LAT_BUCKETS - 1 {
                let floor = latency_bucket_floor(b);
                assert!(
                    floor <= ns && ns < floor + floor / 4 + 1,
                    "{ns} -> {b} -> {floor}"
                );
            }
        }
        assert_eq!(latency_bucket(64), 0);
        assert_eq!(latency_bucket(80), 1);
        assert_eq!(latency_bucket(128), 4);
        assert_eq!(latency_bucket(u64::MAX), LAT_BUCKETS - 1);
    }

    #[test]
    fn only_page_cache_and_userfaultfd_faults_may_be_major() {
        use vm_flags::*;
        const SHMEM: u64 = 0xffff_ffff_8150_0000;
        const SHM: u64 = 0xffff_ffff_8160_0000;
        const FILEMAP: u64 = 0xffff_ffff_8170_0000;
        let fns = [SHMEM, SHM];
        let file = 0xffff_8880_0000_1000;
        assert!(
            !may_fault_major(0, 0, VM_READ | VM_WRITE, fns),
            "private anonymous"
        );
        assert!(may_fault_major(file, FILEMAP, VM_READ, fns), "a file");
        assert!(!may_fault_major(file, SHMEM, VM_SHARED, fns), "shmem");
        assert!(!may_fault_major(file, SHM, VM_SHARED, fns), "SysV shm");
        assert!(
            may_fault_major(file, SHM, VM_SHARED | VM_HUGETLB, fns),
            "SysV shm on hugetlbfs"
        );
        assert!(may_fault_major(0, 0, VM_UFFD_MISSING, fns), "userfaultfd");
        assert!(
            may_fault_major(file, SHMEM, VM_UFFD_WP, fns),
            "userfaultfd on shmem"
        );
        // Unknown addresses, or a file without a fault handler: a file.
        assert!(may_fault_major(file, SHMEM, VM_SHARED, [0, 0]));
        assert!(may_fault_major(file, 0, VM_SHARED, [0, 0]));
        assert!(may_fault_major(file, 0, VM_SHARED, fns));
    }

    #[test]
    fn error_code_maps_to_access_bits() {
        use access::*;
        assert_eq!(from_x86_error_code(0x6, false), WRITE);
        assert_eq!(from_x86_error_code(0x7, false), WRITE | PRESENT);
        assert_eq!(from_x86_error_code(0x14, false), EXEC);
        assert_eq!(from_x86_error_code(0x2, true), WRITE | KERNEL);
    }
}
