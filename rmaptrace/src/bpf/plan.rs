//! Which program goes where, and what each needs from the kernel. Consulted at start:
//! a program whose hook the kernel lacks is switched off and the plan says why,
//! instead of failing the whole run.
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// BTF-enabled raw tracepoint (5.5+).
    TpBtf,
    /// Classic tracepoint with a tracefs format.
    Tracepoint,
    /// Perf software event with a BPF overflow handler.
    PerfSoftware,
}

/// One row of the table: an eBPF program and the hook it attaches to.
#[derive(Clone, Copy, Debug)]
pub struct AttachPoint {
    pub program: &'static str,
    pub kind: HookKind,
    /// Tracepoint `group/name`, or the perf event's name.
    pub hook: &'static str,
    /// Without it rmaptrace cannot count faults at all.
    pub required: bool,
    pub purpose: &'static str,
}

/// The tracepoint backend: what loads on every kernel from 5.17 (bpf_find_vma).
pub const TRACEPOINT_BACKEND: &[AttachPoint] = &[
    AttachPoint {
        program: "fault_done_minor",
        kind: HookKind::PerfSoftware,
        hook: "page-faults-min",
        required: true,
        purpose: "fault completion, minor: counts, VMA lookup, latency",
    },
    AttachPoint {
        program: "fault_done_major",
        kind: HookKind::PerfSoftware,
        hook: "page-faults-maj",
        required: true,
        purpose: "fault completion, major",
    },
    AttachPoint {
        program: "page_fault_user",
        kind: HookKind::TpBtf,
        hook: "exceptions/page_fault_user",
        required: false,
        purpose: "fault entry in user mode: access, start of latency",
    },
    AttachPoint {
        program: "page_fault_kernel",
        kind: HookKind::TpBtf,
        hook: "exceptions/page_fault_kernel",
        required: false,
        purpose: "fault entry in kernel mode on user addresses",
    },
    AttachPoint {
        program: "sched_process_fork",
        kind: HookKind::TpBtf,
        hook: "sched/sched_process_fork",
        required: true,
        purpose: "follow children of traced processes",
    },
    AttachPoint {
        program: "sched_process_exec",
        kind: HookKind::TpBtf,
        hook: "sched/sched_process_exec",
        required: false,
        purpose: "names, --comm matching",
    },
    AttachPoint {
        program: "sched_process_exit",
        kind: HookKind::TpBtf,
        hook: "sched/sched_process_exit",
        required: false,
        purpose: "the kernel's own minflt/majflt of each exiting thread",
    },
    AttachPoint {
        program: "sys_enter_mmap",
        kind: HookKind::Tracepoint,
        hook: "syscalls/sys_enter_mmap",
        required: false,
        purpose: "mapping origin: mmap arguments",
    },
    AttachPoint {
        program: "sys_exit_mmap",
        kind: HookKind::Tracepoint,
        hook: "syscalls/sys_exit_mmap",
        required: false,
        purpose: "mapping origin: mmap result",
    },
    AttachPoint {
        program: "sys_enter_munmap",
        kind: HookKind::Tracepoint,
        hook: "syscalls/sys_enter_munmap",
        required: false,
        purpose: "unmaps",
    },
    AttachPoint {
        program: "sys_enter_mremap",
        kind: HookKind::Tracepoint,
        hook: "syscalls/sys_enter_mremap",
        required: false,
        purpose: "mremap arguments",
    },
    AttachPoint {
        program: "sys_exit_mremap",
        kind: HookKind::Tracepoint,
        hook: "syscalls/sys_exit_mremap",
        required: false,
        purpose: "mremap result",
    },
];

/// What happened to one attach point at start.
#[derive(Clone, Debug, Serialize)]
pub struct Attached {
    pub program: &'static str,
    pub hook: &'static str,
    pub kind: HookKind,
    pub purpose: &'static str,
    pub attached: bool,
    /// Why it is off, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What this backend cannot see; stated in the JSON header and the summary.
pub const TRACEPOINT_LIMITS: &[&str] = &[
    "get_user_pages faults (MAP_POPULATE, mlock, MADV_POPULATE_*, O_DIRECT pinning, /proc/PID/mem, execve argument copying) raise no exception and no perf event: they are counted by the kernel but reported here as 'unseen'",
    "kernel paths (do_anonymous_page, do_wp_page, do_read_fault, ...) are derived from the VMA and the x86 error code, not observed: swap-ins are inferred from major anonymous faults, NUMA hinting and huge-page faults are not told apart",
    "the VMA is looked up at completion with bpf_find_vma, which fails with -EBUSY while a writer holds or waits for mmap_lock; such faults are counted with kind 'unknown'",
    "a fault whose completion event is throttled by perf or that fails (SIGSEGV, SIGBUS) is counted in counters.entries_without_completion, not in fault totals, as the kernel does",
];
