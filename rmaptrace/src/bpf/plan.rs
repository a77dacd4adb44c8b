//! Which program goes where, and what each needs from the kernel. Consulted at
//! start: every attach point gets the best mechanism the running kernel offers
//! (fentry, then kprobe, then the tracepoint fallback), and a point that cannot be
//! attached is switched off with its reason instead of failing the run.
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The best the kernel offers for each attach point.
    #[default]
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    Fentry,
    Kprobe,
    /// BTF-enabled raw tracepoint (5.5+).
    TpBtf,
    /// Classic tracepoint with a tracefs format.
    Tracepoint,
    /// Perf software event with a BPF overflow handler.
    PerfSoftware,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Fentry => "fentry",
            Mechanism::Kprobe => "kprobe",
            Mechanism::TpBtf => "tp_btf",
            Mechanism::Tracepoint => "tracepoint",
            Mechanism::PerfSoftware => "perf_software",
        }
    }
}

/// A fixed hook: a tracepoint or a perf event, with one program.
#[derive(Clone, Copy, Debug)]
pub struct HookPoint {
    pub program: &'static str,
    pub mechanism: Mechanism,
    /// Tracepoint `group/name`, or the perf event's name.
    pub hook: &'static str,
    /// Without it rmaptrace cannot run at all.
    pub required: bool,
    pub purpose: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Counts faults: exactly one counting mechanism runs.
    Count,
    /// Times `vm_ops->fault` and marks the do_fault path.
    Handler,
    /// Marks the kernel path that served the fault.
    Path,
    /// Reports mappings made inside the kernel (no mmap syscall).
    Origin,
}

/// A kernel function the kernel-function backends probe.
#[derive(Clone, Copy, Debug)]
pub struct KfuncPoint {
    pub function: &'static str,
    pub role: Role,
    pub fentry: &'static str,
    pub fexit: Option<&'static str>,
    pub kprobe: &'static str,
    pub kretprobe: Option<&'static str>,
    pub purpose: &'static str,
}

const fn path_point(
    function: &'static str,
    fentry: &'static str,
    kprobe: &'static str,
) -> KfuncPoint {
    KfuncPoint {
        function,
        role: Role::Path,
        fentry,
        fexit: None,
        kprobe,
        kretprobe: None,
        purpose: "marks the kernel path of the fault",
    }
}

pub const KFUNC_POINTS: &[KfuncPoint] = &[
    KfuncPoint {
        function: "handle_mm_fault",
        role: Role::Count,
        fentry: "handle_mm_fault_fentry",
        fexit: Some("handle_mm_fault_fexit"),
        kprobe: "handle_mm_fault_kprobe",
        kretprobe: Some("handle_mm_fault_kretprobe"),
        purpose:
            "counts every fault as mm_account_fault does, get_user_pages included; the VMA; latency",
    },
    KfuncPoint {
        function: "__do_fault",
        role: Role::Handler,
        fentry: "do_fault_fentry",
        fexit: Some("do_fault_fexit"),
        kprobe: "do_fault_kprobe",
        kretprobe: Some("do_fault_kretprobe"),
        purpose: "where vm_ops->fault runs: do_read/cow/shared_fault, time in the handler",
    },
    path_point(
        "do_anonymous_page",
        "do_anonymous_page_fentry",
        "do_anonymous_page_kprobe",
    ),
    path_point("do_wp_page", "do_wp_page_fentry", "do_wp_page_kprobe"),
    KfuncPoint {
        function: "do_mmap",
        role: Role::Origin,
        // fexit has the arguments with the result; the kprobe flavour keeps them
        // per thread until its kretprobe.
        fentry: "",
        fexit: Some("do_mmap_fexit"),
        kprobe: "do_mmap_kprobe",
        kretprobe: Some("do_mmap_kretprobe"),
        purpose: "origins of mappings made inside the kernel (execve's ELF loader, ...)",
    },
    path_point("do_swap_page", "do_swap_page_fentry", "do_swap_page_kprobe"),
    KfuncPoint {
        fexit: Some("do_huge_pmd_anonymous_page_fexit"),
        kretprobe: Some("do_huge_pmd_anonymous_page_kretprobe"),
        // The exit half un-marks attempts that fell back to small pages.
        ..path_point(
            "do_huge_pmd_anonymous_page",
            "do_huge_pmd_anonymous_page_fentry",
            "do_huge_pmd_anonymous_page_kprobe",
        )
    },
    path_point(
        "hugetlb_fault",
        "hugetlb_fault_fentry",
        "hugetlb_fault_kprobe",
    ),
];

/// The tracepoint backend's counting hooks: used when handle_mm_fault cannot be probed.
pub const TRACEPOINT_COUNTING: &[HookPoint] = &[
    HookPoint {
        program: "fault_done_minor",
        mechanism: Mechanism::PerfSoftware,
        hook: "page-faults-min",
        required: true,
        purpose: "fault completion, minor: counts, VMA lookup, latency",
    },
    HookPoint {
        program: "fault_done_major",
        mechanism: Mechanism::PerfSoftware,
        hook: "page-faults-maj",
        required: true,
        purpose: "fault completion, major",
    },
    HookPoint {
        program: "page_fault_user",
        mechanism: Mechanism::TpBtf,
        hook: "exceptions/page_fault_user",
        required: false,
        purpose: "fault entry in user mode: access, start of latency",
    },
    HookPoint {
        program: "page_fault_kernel",
        mechanism: Mechanism::TpBtf,
        hook: "exceptions/page_fault_kernel",
        required: false,
        purpose: "fault entry in kernel mode on user addresses",
    },
];

/// Hooks every backend uses.
pub const ALWAYS: &[HookPoint] = &[
    HookPoint {
        program: "sched_process_fork",
        mechanism: Mechanism::TpBtf,
        hook: "sched/sched_process_fork",
        required: true,
        purpose: "follow children of traced processes",
    },
    HookPoint {
        program: "sched_process_exec",
        mechanism: Mechanism::TpBtf,
        hook: "sched/sched_process_exec",
        required: false,
        purpose: "names, --comm matching",
    },
    HookPoint {
        program: "sched_process_exit",
        mechanism: Mechanism::TpBtf,
        hook: "sched/sched_process_exit",
        required: false,
        purpose: "the kernel's own minflt/majflt of each exiting thread",
    },
    HookPoint {
        program: "sys_enter_mmap",
        mechanism: Mechanism::Tracepoint,
        hook: "syscalls/sys_enter_mmap",
        required: false,
        purpose: "mapping origin: mmap arguments",
    },
    HookPoint {
        program: "sys_exit_mmap",
        mechanism: Mechanism::Tracepoint,
        hook: "syscalls/sys_exit_mmap",
        required: false,
        purpose: "mapping origin: mmap result and file path",
    },
    HookPoint {
        program: "sys_enter_munmap",
        mechanism: Mechanism::Tracepoint,
        hook: "syscalls/sys_enter_munmap",
        required: false,
        purpose: "unmaps",
    },
    HookPoint {
        program: "sys_exit_munmap",
        mechanism: Mechanism::Tracepoint,
        hook: "syscalls/sys_exit_munmap",
        required: false,
        purpose: "unmaps: when the range was gone",
    },
    HookPoint {
        program: "sys_enter_mremap",
        mechanism: Mechanism::Tracepoint,
        hook: "syscalls/sys_enter_mremap",
        required: false,
        purpose: "mremap arguments",
    },
    HookPoint {
        program: "sys_exit_mremap",
        mechanism: Mechanism::Tracepoint,
        hook: "syscalls/sys_exit_mremap",
        required: false,
        purpose: "mremap result",
    },
    HookPoint {
        program: "raw_sys_enter",
        mechanism: Mechanism::Tracepoint,
        hook: "raw_syscalls/sys_enter",
        required: false,
        purpose: "32-bit mmap/mmap2/munmap/mremap arguments (the syscalls:* events skip them)",
    },
    HookPoint {
        program: "raw_sys_exit",
        mechanism: Mechanism::Tracepoint,
        hook: "raw_syscalls/sys_exit",
        required: false,
        purpose: "32-bit mmap/mmap2/mremap results",
    },
];

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Rejection {
    pub mechanism: Mechanism,
    pub reason: String,
}

/// What happened to one attach point at start.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PlanRow {
    /// Kernel function, tracepoint or perf event.
    pub point: String,
    pub purpose: &'static str,
    /// The mechanism attached, None when the point is off.
    pub chosen: Option<Mechanism>,
    pub programs: Vec<&'static str>,
    /// Mechanisms tried or ruled out before the chosen one, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<Rejection>,
}

/// The whole plan for this run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Plan {
    /// The mechanism that counts faults: "fentry", "kprobe" or "tracepoint".
    pub backend: &'static str,
    /// "observed" when path probes run, "derived" on the tracepoint backend.
    pub paths: &'static str,
    /// How the tracepoint backend finds a fault's VMA (see [`vma_lookup`]); the
    /// kernel-function backends get it as handle_mm_fault's argument.
    pub vma_lookup: &'static str,
    pub rows: Vec<PlanRow>,
}

/// How the tracepoint backend finds the VMA of a fault whose thread's cache
/// missed: a plain function of what the kernel has, so it can be tested.
pub fn vma_lookup(tracepoint: bool, maple_tree: bool, vm_lock_seq: bool) -> &'static str {
    match (tracepoint, maple_tree, vm_lock_seq) {
        (false, _, _) => "argument",
        (true, true, true) => "tree walk validated by vm_lock_seq, else bpf_find_vma",
        (true, true, false) => "tree walk under the fault's mmap_lock, else bpf_find_vma",
        (true, false, _) => "bpf_find_vma",
    }
}

/// What the tracepoint backend cannot see; stated in the JSON and the summary.
pub const TRACEPOINT_LIMITS: &[&str] = &[
    "get_user_pages faults (MAP_POPULATE, mlock, MADV_POPULATE_*, O_DIRECT pinning, /proc/PID/mem, execve argument copying) raise no exception and no perf event: they are counted by the kernel but reported here as 'unseen'",
    "kernel paths (do_anonymous_page, do_wp_page, do_read_fault, ...) are derived from the VMA and the x86 error code, not observed: a major anonymous fault is a swap-in (do_swap_page); a minor not-present one on anonymous memory is do_anonymous_page only where no swap was in use, otherwise it is labelled 'do_anonymous_page|do_swap_page' (a swap-cache hit looks the same); NUMA hinting and huge-page faults are not told apart",
    "the VMA comes from the thread's cache of its last VMA (used only while the kernel provably has not changed it: its vm_lock_seq on 6.4+, else no mmap_lock write since), else from a walk of the VMA tree without mmap_lock (Linux 6.1+), else from bpf_find_vma, which fails with -EBUSY while a writer holds or waits for mmap_lock; faults whose VMA no lookup found are counted with kind 'unknown' unless the mapping timeline names their mapping for certain afterwards (resolved_later)",
    "a fault whose completion event is throttled by perf or that fails (SIGSEGV, SIGBUS) is counted in counters.entries_without_completion, not in fault totals, as the kernel does",
];

/// What the kernel-function backends cannot see.
pub const KFUNC_LIMITS: &[&str] = &[
    "latency is measured from handle_mm_fault's entry to its return, not from the exception",
    "instruction pointers of faults are not recorded on this backend (ip is 0x0 in fault records)",
    "get_user_pages faults are counted and shown with user=false, like kernel-mode faults",
];

impl Plan {
    /// The limits of this plan: the backend's own, plus every path probe that is off.
    pub fn limits(&self) -> Vec<String> {
        if self.backend == "tracepoint" {
            return TRACEPOINT_LIMITS.iter().map(|s| s.to_string()).collect();
        }
        let mut limits: Vec<String> = KFUNC_LIMITS.iter().map(|s| s.to_string()).collect();
        for row in &self.rows {
            let is_path = KFUNC_POINTS
                .iter()
                .any(|p| p.function == row.point && p.role != Role::Count);
            if is_path && row.chosen.is_none() {
                limits.push(format!(
                    "{} is not probed ({}): its faults' paths are derived from the VMA and the access",
                    row.point,
                    row.rejected.last().map(|r| r.reason.as_str()).unwrap_or("off")
                ));
            }
        }
        limits
    }

    /// `rmaptrace probe`'s output: one line per attach point.
    pub fn render(&self) -> String {
        let mut out = format!(
            "backend: {} (fault paths {})\nVMA lookup: {}\n",
            self.backend, self.paths, self.vma_lookup
        );
        for row in &self.rows {
            let chosen = row.chosen.map(Mechanism::name).unwrap_or("off");
            out.push_str(&format!(
                "{:<28} {:<13} {}\n",
                row.point, chosen, row.purpose
            ));
            for r in &row.rejected {
                out.push_str(&format!(
                    "{:<28}   not {}: {}\n",
                    "",
                    r.mechanism.name(),
                    r.reason
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::vma_lookup;

    #[test]
    fn the_vma_lookup_follows_what_the_kernel_has() {
        assert_eq!(vma_lookup(false, true, true), "argument");
        assert!(vma_lookup(true, true, true).contains("validated by vm_lock_seq"));
        assert!(vma_lookup(true, true, false).contains("under the fault's mmap_lock"));
        assert_eq!(vma_lookup(true, false, false), "bpf_find_vma");
    }
}
