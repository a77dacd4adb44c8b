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
    /// Raw tracepoint: the arguments untyped (a `void *` argument, which
    /// tp_btf cannot read before 6.5).
    RawTp,
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
            Mechanism::RawTp => "raw_tp",
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
    /// Counts pages an mmap handler installs itself (`setup.prefilled`).
    Prefill,
    /// Sees each VMA's anon_vma made (`setup.anon_vma.by`).
    AnonVma,
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
    prefill_point(
        "remap_pfn_range",
        "remap_pfn_range_fentry",
        "remap_pfn_range_fexit",
        "remap_pfn_range_kprobe",
        "remap_pfn_range_kretprobe",
    ),
    prefill_point(
        "vm_insert_pages",
        "vm_insert_pages_fentry",
        "vm_insert_pages_fexit",
        "vm_insert_pages_kprobe",
        "vm_insert_pages_kretprobe",
    ),
    prefill_point(
        "vm_insert_page",
        "vm_insert_page_fentry",
        "vm_insert_page_fexit",
        "vm_insert_page_kprobe",
        "vm_insert_page_kretprobe",
    ),
    prefill_point(
        "vmf_insert_pfn",
        "vmf_insert_pfn_fentry",
        "vmf_insert_pfn_fexit",
        "vmf_insert_pfn_kprobe",
        "vmf_insert_pfn_kretprobe",
    ),
    prefill_point(
        "vmf_insert_mixed",
        "vmf_insert_mixed_fentry",
        "vmf_insert_mixed_fexit",
        "vmf_insert_mixed_kprobe",
        "vmf_insert_mixed_kretprobe",
    ),
    anon_vma_point(
        "__anon_vma_prepare",
        "anon_vma_prepare_fexit",
        "anon_vma_prepare_kprobe",
        "anon_vma_prepare_kretprobe",
        "makes a VMA's anon_vma: in a fault (the first write, usually) or outside one",
    ),
    anon_vma_point(
        "anon_vma_fork",
        "anon_vma_fork_fexit",
        "anon_vma_fork_kprobe",
        "anon_vma_fork_kretprobe",
        "gives a child's VMA its anon_vma at fork",
    ),
    anon_vma_point(
        "anon_vma_clone",
        "anon_vma_clone_fexit",
        "anon_vma_clone_kprobe",
        "anon_vma_clone_kretprobe",
        "copies an anon_vma to a split part or a moved VMA, with what made it",
    ),
];

/// A function that makes or copies anon_vmas: its result with its arguments
/// (fexit, or kprobe and kretprobe).
const fn anon_vma_point(
    function: &'static str,
    fexit: &'static str,
    kprobe: &'static str,
    kretprobe: &'static str,
    purpose: &'static str,
) -> KfuncPoint {
    KfuncPoint {
        function,
        role: Role::AnonVma,
        fentry: "",
        fexit: Some(fexit),
        kprobe,
        kretprobe: Some(kretprobe),
        purpose,
    }
}

const fn prefill_point(
    function: &'static str,
    fentry: &'static str,
    fexit: &'static str,
    kprobe: &'static str,
    kretprobe: &'static str,
) -> KfuncPoint {
    KfuncPoint {
        function,
        role: Role::Prefill,
        fentry,
        fexit: Some(fexit),
        kprobe,
        kretprobe: Some(kretprobe),
        purpose: "pages an mmap handler installs itself (setup.prefilled)",
    }
}

/// The kernel functions of `role` that this plan does not probe.
fn unprobed(rows: &[PlanRow], role: Role) -> Vec<&'static str> {
    KFUNC_POINTS
        .iter()
        .filter(|p| p.role == role)
        .filter(|p| {
            !rows
                .iter()
                .any(|r| r.point == p.function && r.chosen.is_some())
        })
        .map(|p| p.function)
        .collect()
}

/// Whether every function that installs pages at mmap is probed: only then
/// are a mapping's `prefilled` counts complete.
pub fn prefill_observed(rows: &[PlanRow]) -> bool {
    unprobed(rows, Role::Prefill).is_empty()
}

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

/// The tracepoint backend counting at the entry (see [`count_at_entry`]): one
/// program per fault, the completion events only to settle majors (every one)
/// and to time minors (a sample).
pub const TRACEPOINT_COUNTING_AT_ENTRY: &[HookPoint] = &[
    HookPoint {
        program: "fault_entry_count_user",
        mechanism: Mechanism::TpBtf,
        hook: "exceptions/page_fault_user",
        required: true,
        purpose:
            "fault entry in user mode: counts (taken back if the kernel does not), VMA, access",
    },
    HookPoint {
        program: "fault_entry_count_kernel",
        mechanism: Mechanism::TpBtf,
        hook: "exceptions/page_fault_kernel",
        required: true,
        purpose: "fault entry in kernel mode on user addresses",
    },
    HookPoint {
        program: "fault_major_settle",
        mechanism: Mechanism::PerfSoftware,
        hook: "page-faults-maj",
        required: true,
        purpose: "fault completion, major (every one): moves the fault to major, latency",
    },
    HookPoint {
        program: "fault_minor_sample",
        mechanism: Mechanism::PerfSoftware,
        hook: "page-faults-min",
        required: false,
        purpose: "fault completion, minor, sampled: latency",
    },
    HookPoint {
        program: "fault_place_under_lock",
        mechanism: Mechanism::Tracepoint,
        hook: "mmap_lock/mmap_lock_acquire_returned",
        required: false,
        purpose: "a fault whose VMA its entry found being changed: placed once it holds mmap_lock",
    },
];

pub use rmaptrace_common::MINOR_LATENCY_SAMPLE_PERIOD;

/// The sample period of a perf event program: every event, but for the
/// sampled minor completions.
pub fn sample_period(program: &str) -> u64 {
    if program == "fault_minor_sample" {
        MINOR_LATENCY_SAMPLE_PERIOD
    } else {
        1
    }
}

/// What the kernel offers that counting at the entry needs, and what was
/// asked for: a plain function of both, so the choice can be tested.
#[derive(Clone, Copy, Debug)]
pub struct EntryCountingNeeds {
    /// VMAs carry vm_lock_seq (6.4+): a cached VMA can be checked without a
    /// lock, at the entry, where the fault holds none yet.
    pub vm_lock_seq: bool,
    /// The maple tree can be walked (6.1+).
    pub maple_tree: bool,
    /// `--stacks`: a stack per counted fault, walked at its completion.
    pub stacks: bool,
    /// A read fault on private anonymous memory maps the (huge) zero page, so
    /// only a write makes its anon_vma (THP's `use_zero_page` not 0).
    pub zero_page_on_read: bool,
    /// RMAPTRACE_COUNT_AT_COMPLETION set: the completion design on any kernel.
    pub forced_off: bool,
}

/// Whether the tracepoint backend counts at the entry, or why not.
pub fn count_at_entry(n: EntryCountingNeeds) -> Result<(), &'static str> {
    if n.forced_off {
        Err("RMAPTRACE_COUNT_AT_COMPLETION is set")
    } else if !n.vm_lock_seq || !n.maple_tree {
        Err("VMAs have no vm_lock_seq (before 6.4): the VMA is found under the fault's lock")
    } else if n.stacks {
        Err("--stacks walks every fault's stack at its completion")
    } else if !n.zero_page_on_read {
        Err("transparent_hugepage/use_zero_page is 0: a read fault can make an anon_vma")
    } else {
        Ok(())
    }
}

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
        program: "kmem_cache_free",
        mechanism: Mechanism::RawTp,
        hook: VMA_FREED_HOOK,
        required: false,
        purpose: "a VMA struct freed ends its lifetime: the slab reuses the pointer",
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
    /// Where the tracepoint backend counts faults: "entry" or "completion"
    /// (see [`count_at_entry`]); "handle_mm_fault" on the other backends.
    pub counted_at: &'static str,
    /// Why the tracepoint backend counts at the completion, where it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_because: Option<&'static str>,
    /// Minor faults timed: one in this many completions per CPU (1: every
    /// fault). Major faults are always timed, every one.
    pub latency_sample_period: u64,
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
    "the VMA comes from the thread's cache of its last VMA (used only while the kernel provably has not changed it: no mmap_lock write window of the process ended since, told by its mm_lock_seq on 6.4+ and by the mmap_lock tracepoints before), else from a walk of the VMA tree without mmap_lock (Linux 6.1+), else from bpf_find_vma, which fails with -EBUSY while a writer holds or waits for mmap_lock; faults whose VMA no lookup found are counted with kind 'unknown' unless the mapping timeline names their mapping for certain afterwards (resolved_later)",
];

/// Counting at the completion: what becomes of faults that never complete.
const COMPLETION_LIMIT: &str = "a fault whose completion event is throttled by perf or that fails (SIGSEGV, SIGBUS) is counted in counters.entries_without_completion, not in fault totals, as the kernel does";

/// What counting at the entry changes (`Plan::counted_at` "entry").
pub const ENTRY_COUNTING_LIMITS: &[&str] = &[
    "faults are counted at their entry, in the row of the VMA found there, and settled once their outcome shows: a major completion moves one to major; one the kernel did not count (SIGSEGV, SIGBUS, an EFAULT fixup: min_flt+maj_flt unmoved at the thread's next fault or exit) is taken back (counters.faults_taken_back); a thread's latest fault stays counted as minor until then, so a live process's totals may hold one unsettled fault per thread",
    "a failed fault followed, before the thread's next fault, by get_user_pages faults in a syscall (MAP_POPULATE, mlock) is taken for a counted one and one of those is not: totals stay the kernel's, that fault's row holds one too many",
    "a VMA another thread changed between a fault's entry and its handling (mprotect, munmap, mremap, MAP_FIXED of that very VMA, in that microsecond): the fault goes to the VMA that served it where it then waited for mmap_lock (counters.placed_late, moved_late), else where the only write window that ended since its entry is the one it waited for; one whose writer was done before the fault took its per-VMA lock stays in the row of the VMA as it was at its entry",
];

/// Where freed VMA structs are seen, and what is lost without it.
const VMA_FREED_HOOK: &str = "kmem/kmem_cache_free";
/// Where the functions that install pages at mmap are not all probed.
const PREFILL_LIMIT: &str = "pages a driver's mmap handler installs itself (remap_pfn_range, vm_insert_pages, vm_insert_page, vmf_insert_pfn, vmf_insert_mixed) are not counted: setup.prefilled is null; vm_flags still tell VM_PFNMAP from VM_MIXEDMAP";

const VMA_FREED_LIMIT: &str = "freed VMA structs are not seen (kmem:kmem_cache_free is off): a new VMA that the slab gives a freed one's address, at the same place and of the same shape (a split part, a mapping replaced in place), may continue the old one's row";

/// What the kernel-function backends cannot see.
pub const KFUNC_LIMITS: &[&str] = &[
    "latency is measured from handle_mm_fault's entry to its return, not from the exception",
    "instruction pointers of faults are not recorded on this backend (ip is 0x0 in fault records)",
    "get_user_pages faults are counted and shown with user=false, like kernel-mode faults",
];

impl Plan {
    /// The limits of this plan: the backend's own, plus every path probe that is off.
    pub fn limits(&self) -> Vec<String> {
        let mut limits: Vec<String> = if self.backend == "tracepoint" {
            let mut l: Vec<String> = TRACEPOINT_LIMITS.iter().map(|s| s.to_string()).collect();
            if self.counted_at == "entry" {
                l.extend(ENTRY_COUNTING_LIMITS.iter().map(|s| s.to_string()));
            } else {
                l.push(COMPLETION_LIMIT.to_string());
            }
            if self.latency_sample_period > 1 {
                l.push(format!(
                    "minor-fault latency is sampled: one minor completion in {} per CPU is timed (latency_ns.samples says how many), major faults every one, but those of anonymous memory when swap was turned on after the start (counters.majors_untimed)",
                    self.latency_sample_period
                ));
            }
            l
        } else {
            KFUNC_LIMITS.iter().map(|s| s.to_string()).collect()
        };
        if self
            .rows
            .iter()
            .any(|r| r.point == VMA_FREED_HOOK && r.chosen.is_none())
        {
            limits.push(VMA_FREED_LIMIT.to_string());
        }
        // The anon_vma functions whose anon_vmas show `by` unknown, first
        // found at a fault.
        let anon_unobserved = unprobed(&self.rows, Role::AnonVma);
        if !anon_unobserved.is_empty() {
            limits.push(format!(
                "{} not probed: an anon_vma they make has `by` unknown, and the time of the first fault that found it (source derived)",
                anon_unobserved.join(", ")
            ));
        }
        if !prefill_observed(&self.rows) {
            limits.push(PREFILL_LIMIT.to_string());
        }
        if self.backend == "tracepoint" {
            return limits;
        }
        for row in &self.rows {
            let is_path = KFUNC_POINTS
                .iter()
                .any(|p| p.function == row.point && matches!(p.role, Role::Handler | Role::Path));
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
            "backend: {} (fault paths {})\nVMA lookup: {}\ncounted at: {}{}\n",
            self.backend,
            self.paths,
            self.vma_lookup,
            self.counted_at,
            self.completion_because
                .map(|why| format!(" (not the entry: {why})"))
                .unwrap_or_default()
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

/// The mechanisms tried for the counting point (handle_mm_fault), in order;
/// none: faults are counted on tracepoints.
pub fn counting_order(backend: Backend) -> &'static [Mechanism] {
    match backend {
        Backend::Auto => &[Mechanism::Fentry, Mechanism::Kprobe],
        Backend::Fentry => &[Mechanism::Fentry],
        Backend::Kprobe => &[Mechanism::Kprobe],
        Backend::Tracepoint => &[],
    }
}

/// The mechanisms tried for the path and handler points: they only mean
/// something next to handle_mm_fault, so the counting mechanism first, then
/// the other kernel-function one.
pub fn sub_order(counting: Option<Mechanism>) -> Vec<Mechanism> {
    match counting {
        Some(Mechanism::Kprobe) => vec![Mechanism::Kprobe, Mechanism::Fentry],
        Some(_) => vec![Mechanism::Fentry, Mechanism::Kprobe],
        None => Vec::new(),
    }
}

/// What the running kernel offers for one kernel function, known before
/// anything is loaded.
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    /// The BTF has the function (fentry needs it; an inlined one has none).
    pub btf_function: bool,
    /// kallsyms entries of that name (a kprobe needs exactly one).
    pub symbols: usize,
    /// The kprobe PMU exists (CONFIG_KPROBES).
    pub kprobe_pmu: bool,
}

/// Why `mech` cannot hook `function` on a kernel offering `offer`; None: try it.
pub fn unavailable(function: &str, mech: Mechanism, offer: &Offer) -> Option<String> {
    match mech {
        Mechanism::Fentry if !offer.btf_function => Some(format!(
            "no BTF function {function} (inlined or absent in this build)"
        )),
        Mechanism::Fentry => None,
        _ if offer.symbols == 0 => Some(format!(
            "no symbol {function} in kallsyms (inlined in this build)"
        )),
        _ if offer.symbols > 1 => Some(format!(
            "{} symbols named {function} in kallsyms: ambiguous",
            offer.symbols
        )),
        _ if !offer.kprobe_pmu => Some(
            "no kprobe PMU (/sys/bus/event_source/devices/kprobe): this kernel is built without CONFIG_KPROBES"
                .into(),
        ),
        _ => None,
    }
}

const EPERM: i32 = 1;
/// The kernel's internal ENOTSUPP, which reaches userspace as is.
const ENOTSUPP: i32 = 524;

/// What a failed load or attach means, where its errno says more than its
/// message: the fentry of a point with only an exit program (fexit) that the
/// trampoline refuses takes more than six arguments; an fentry refused with
/// EPERM is function tracing locked down. None: the error's own words.
pub fn attempt_failed(
    function: &str,
    mech: Mechanism,
    exit_only: bool,
    errno: Option<i32>,
) -> Option<String> {
    match (mech, errno) {
        (Mechanism::Fentry, Some(ENOTSUPP)) if exit_only => Some(format!(
            "the kernel's BPF trampoline cannot take {function}'s arguments (more than six need Linux 6.5+)"
        )),
        (Mechanism::Fentry, Some(EPERM)) => Some(
            "the kernel refused to load an fentry program (EPERM): function tracing is locked down here"
                .into(),
        ),
        _ => None,
    }
}

/// The row of one kernel function: the first mechanism of `order` that the
/// kernel offers and whose `attempt` (a real load and attach, or a test's
/// fake) succeeds, and why each one before it was rejected.
pub fn choose(
    point: &KfuncPoint,
    order: &[Mechanism],
    offer: &Offer,
    mut attempt: impl FnMut(Mechanism) -> Result<Vec<&'static str>, String>,
) -> PlanRow {
    let mut row = PlanRow {
        point: point.function.to_string(),
        purpose: point.purpose,
        chosen: None,
        programs: Vec::new(),
        rejected: Vec::new(),
    };
    for &mech in order {
        let tried = match unavailable(point.function, mech, offer) {
            Some(why) => Err(why),
            None => attempt(mech),
        };
        match tried {
            Ok(programs) => {
                row.chosen = Some(mech);
                row.programs = programs;
                break;
            }
            Err(reason) => row.rejected.push(Rejection {
                mechanism: mech,
                reason,
            }),
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Offer = Offer {
        btf_function: true,
        symbols: 1,
        kprobe_pmu: true,
    };

    fn point(function: &str) -> &'static KfuncPoint {
        KFUNC_POINTS
            .iter()
            .find(|p| p.function == function)
            .unwrap()
    }

    type Calls = std::rc::Rc<std::cell::RefCell<Vec<Mechanism>>>;

    /// A fake attach: each mechanism's outcome as given, and the calls made.
    fn fake<'a>(
        outcomes: &'a [(Mechanism, Result<(), &'static str>)],
    ) -> (
        impl FnMut(Mechanism) -> Result<Vec<&'static str>, String> + 'a,
        Calls,
    ) {
        let calls = Calls::default();
        let seen = calls.clone();
        let attempt = move |m: Mechanism| {
            seen.borrow_mut().push(m);
            match outcomes.iter().find(|(o, _)| *o == m).map(|(_, r)| *r) {
                Some(Ok(())) => Ok(vec![m.name()]),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("not expected".to_string()),
            }
        };
        (attempt, calls)
    }

    #[test]
    fn auto_prefers_fentry_and_falls_back_to_kprobe() {
        let order = counting_order(Backend::Auto);
        let outcomes = [(Mechanism::Fentry, Ok(())), (Mechanism::Kprobe, Ok(()))];
        let (attempt, calls) = fake(&outcomes);
        let row = choose(point("handle_mm_fault"), order, &ALL, attempt);
        assert_eq!(row.chosen, Some(Mechanism::Fentry));
        assert_eq!(*calls.borrow(), vec![Mechanism::Fentry], "kprobe not tried");

        let refused = attempt_failed("handle_mm_fault", Mechanism::Fentry, false, Some(EPERM));
        let outcomes = [
            (Mechanism::Fentry, Err("locked down")),
            (Mechanism::Kprobe, Ok(())),
        ];
        let (attempt, _) = fake(&outcomes);
        let row = choose(point("handle_mm_fault"), order, &ALL, attempt);
        assert_eq!(row.chosen, Some(Mechanism::Kprobe));
        assert_eq!(row.rejected.len(), 1);
        assert!(refused.unwrap().contains("locked down"));
    }

    #[test]
    fn what_the_kernel_lacks_is_not_tried() {
        let inlined = Offer {
            btf_function: false,
            symbols: 0,
            kprobe_pmu: true,
        };
        let (attempt, calls) = fake(&[]);
        let row = choose(
            point("do_anonymous_page"),
            &sub_order(Some(Mechanism::Fentry)),
            &inlined,
            attempt,
        );
        assert_eq!(row.chosen, None);
        assert!(
            calls.borrow().is_empty(),
            "nothing loaded for an inlined function"
        );
        let reasons: Vec<&str> = row.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert!(reasons[0].contains("no BTF function"), "{reasons:?}");
        assert!(reasons[1].contains("no symbol"), "{reasons:?}");

        let twice = Offer { symbols: 2, ..ALL };
        assert!(unavailable("f", Mechanism::Kprobe, &twice)
            .unwrap()
            .contains("ambiguous"));
        let no_pmu = Offer {
            kprobe_pmu: false,
            ..ALL
        };
        assert!(unavailable("f", Mechanism::Kprobe, &no_pmu)
            .unwrap()
            .contains("CONFIG_KPROBES"));
        assert_eq!(unavailable("f", Mechanism::Fentry, &no_pmu), None);
    }

    #[test]
    fn errors_are_read_by_errno() {
        let six = attempt_failed("do_mmap", Mechanism::Fentry, true, Some(ENOTSUPP)).unwrap();
        assert!(six.contains("more than six"), "{six}");
        assert_eq!(
            attempt_failed("do_mmap", Mechanism::Fentry, false, Some(ENOTSUPP)),
            None
        );
        assert_eq!(
            attempt_failed("do_mmap", Mechanism::Kprobe, true, Some(EPERM)),
            None
        );
        assert_eq!(
            attempt_failed("do_mmap", Mechanism::Fentry, false, None),
            None
        );
    }

    #[test]
    fn forced_backends_try_one_mechanism_and_paths_follow_the_counting_one() {
        assert_eq!(counting_order(Backend::Kprobe), &[Mechanism::Kprobe]);
        assert!(counting_order(Backend::Tracepoint).is_empty());
        assert_eq!(sub_order(Some(Mechanism::Kprobe))[0], Mechanism::Kprobe);
        assert!(sub_order(None).is_empty());
    }

    #[test]
    fn counting_at_the_entry_needs_lock_sequences_and_no_stacks() {
        let all = EntryCountingNeeds {
            vm_lock_seq: true,
            maple_tree: true,
            stacks: false,
            zero_page_on_read: true,
            forced_off: false,
        };
        assert_eq!(count_at_entry(all), Ok(()));
        for (needs, why) in [
            (
                EntryCountingNeeds {
                    vm_lock_seq: false,
                    ..all
                },
                "vm_lock_seq",
            ),
            (
                EntryCountingNeeds {
                    maple_tree: false,
                    ..all
                },
                "vm_lock_seq",
            ),
            (
                EntryCountingNeeds {
                    stacks: true,
                    ..all
                },
                "--stacks",
            ),
            (
                EntryCountingNeeds {
                    zero_page_on_read: false,
                    ..all
                },
                "use_zero_page",
            ),
            (
                EntryCountingNeeds {
                    forced_off: true,
                    ..all
                },
                "RMAPTRACE_COUNT_AT_COMPLETION",
            ),
        ] {
            let err = count_at_entry(needs).unwrap_err();
            assert!(err.contains(why), "{needs:?}: {err}");
        }
        assert_eq!(
            sample_period("fault_minor_sample"),
            MINOR_LATENCY_SAMPLE_PERIOD
        );
        assert_eq!(sample_period("fault_major_settle"), 1);
        assert_eq!(sample_period("fault_done_minor_vls"), 1);
    }

    #[test]
    fn the_vma_lookup_follows_what_the_kernel_has() {
        assert_eq!(vma_lookup(false, true, true), "argument");
        assert!(vma_lookup(true, true, true).contains("validated by vm_lock_seq"));
        assert!(vma_lookup(true, true, false).contains("under the fault's mmap_lock"));
        assert_eq!(vma_lookup(true, false, false), "bpf_find_vma");
    }
}
