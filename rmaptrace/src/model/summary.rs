//! The result of a trace as exported (`{"type":"summary"}`) and shown. Field names
//! are the documented contract of docs/json-format.md.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{small_map::SmallMap, snapshot::Counters};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FaultCounts {
    pub total: u64,
    pub minor: u64,
    pub major: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct KernelCounts {
    pub minflt: u64,
    pub majflt: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Latency {
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
    /// Faults with a measured latency (entry seen).
    pub samples: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HandlerTime {
    pub calls: u64,
    pub total_ns: u64,
    pub mean_ns: u64,
}

/// How the mapping was set up, as the kernel left it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Setup {
    /// The function that set it up: the mapped file's `f_op->mmap_prepare` or
    /// `f_op->mmap`, `shmem_zero_setup` for shared anonymous memory; None for
    /// private anonymous memory, brk and the stack (no file).
    pub by: Option<String>,
    /// Its module, None for vmlinux.
    pub by_module: Option<String>,
    /// `vm_flags` by name (include/linux/mm.h), as the VMA was last looked up.
    pub vm_flags: Vec<std::borrow::Cow<'static, str>>,
    /// Pages its mmap handler installed itself, by function; None where that
    /// is not observed (the tracepoint backend, or the mmap call not seen).
    pub prefilled: Option<BTreeMap<&'static str, u64>>,
    /// Its reverse map for anonymous pages, as its faults found it; None
    /// while none of them did.
    pub anon_vma: Option<AnonVma>,
}

/// When a VMA's `anon_vma` (its reverse map for anonymous pages) came into
/// being, and what made it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct AnonVma {
    /// What made it: `fault` (`__anon_vma_prepare` in a fault: the first
    /// write, usually), `fork` (`anon_vma_fork`: the child's VMA at fork),
    /// `other` (`__anon_vma_prepare` outside any fault: userfaultfd,
    /// uprobes), or `unknown` where that is not observed.
    pub by: &'static str,
    /// When it was made (observed), or when the first fault that found it
    /// completed (derived); None: not seen yet.
    pub ts_ns: Option<u64>,
    /// The VMA's faults that completed before it existed (the zero page read
    /// N times before the first write: N). Exact on every backend: each
    /// fault's completion reads the VMA's pointer.
    pub faults_before: u64,
    /// How `by` and `ts_ns` are known: `observed` (the functions that make
    /// anon_vmas are probed) or `derived` (only fault completions are seen).
    pub source: &'static str,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct VmaSummary {
    pub start: String,
    pub end: String,
    pub kind: &'static str,
    pub handler: Option<String>,
    pub module: Option<String>,
    pub file: Option<String>,
    /// `major:minor` of a char device mapping.
    pub device: Option<String>,
    pub prot: String,
    /// The mmap call that created the mapping, when it was seen.
    pub origin: Option<String>,
    /// None where no VMA was found for its faults.
    pub setup: Option<Setup>,
    /// The mapping lifetime: one kernel VMA from its creation to its unmap.
    pub life: Option<u64>,
    /// When rmaptrace first saw the lifetime (its first fault, usually).
    pub first_seen_ns: Option<u64>,
    /// When the call that created it was entered, when that call was seen.
    pub mapped_ns: Option<u64>,
    /// When the call that removed it returned (or the process ended); None
    /// while it is mapped.
    pub unmapped_ns: Option<u64>,
    pub faults: u64,
    pub minor: u64,
    pub major: u64,
    pub paths: SmallMap<&'static str, u64>,
    pub latency_ns: Latency,
    /// Time inside `vm_ops->fault`, where the backend probes `__do_fault`.
    pub handler_time: Option<HandlerTime>,
    /// The user call sites of its faults, the busiest first (`--stacks`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<super::stacks::CallSite>,
    #[serde(skip)]
    pub start_addr: u64,
    #[serde(skip)]
    pub end_addr: u64,
    /// Identity of the row for the live screen's rates (the lifetime, 0 for none).
    #[serde(skip)]
    pub key: u64,
    #[serde(skip)]
    pub latency_hist: crate::model::snapshot::Hist,
    /// The sum of its measured latencies (a histogram's `_sum`).
    #[serde(skip)]
    pub latency_sum_ns: u64,
    /// Of `paths`, the major faults on each path.
    #[serde(skip)]
    pub paths_major: SmallMap<&'static str, u64>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    /// Its cgroup v2 path (container runtimes and systemd name their units
    /// there), as of its latest exec, fork or exit seen, else as /proc says
    /// when it is summarised; None where neither is known.
    pub cgroup: Option<String>,
    pub faults: FaultCounts,
    pub by_kind: BTreeMap<&'static str, u64>,
    /// The kernel's own counters over the trace, when known.
    pub kernel: Option<KernelCounts>,
    /// kernel total − faults seen, when the kernel counts are known.
    pub unseen: Option<i64>,
    /// Faults whose VMA the kernel could not look up (mmap_lock held by a
    /// writer) that were attributed afterwards from the mapping timeline; the
    /// rest of those are in the `unknown` kind.
    pub resolved_later: u64,
    pub exited: bool,
    /// The mappings kept in memory (all, or the busiest); the export writes
    /// every one, streamed (see `Trace::summary_with`).
    #[serde(skip)]
    pub vmas: Vec<VmaSummary>,
    /// Mappings left out of `vmas` (the export has them all).
    #[serde(skip)]
    pub vmas_dropped: usize,
    /// Mappings that ended while the process ran and were written to the
    /// export then (`mappings` records), counted in its sums, not in `vmas`.
    pub vmas_ended: u64,
    /// Faults counted on one of those after it was written: a new mapping of
    /// the same shape at the same address, in a VMA struct the kernel reused,
    /// taken for the old one until its entry was freed. In the sums, in no row.
    pub ended_late: u64,
    /// Already written to the export as a `process` record.
    #[serde(skip)]
    pub written: bool,
}

/// Sums over every process of the trace, those already exported included.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Totals {
    pub processes: u64,
    pub exited: u64,
    pub faults: FaultCounts,
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Sums over the processes whose kernel counts are known.
    pub kernel: KernelCounts,
    pub unseen: i64,
    pub resolved_later: u64,
}

impl ProcessSummary {
    /// Its cgroup where that tells something: a container or a unit, not the
    /// hierarchy's root (every process of a machine without them).
    pub fn cgroup_below_root(&self) -> Option<&str> {
        self.cgroup.as_deref().filter(|c| *c != "/")
    }
}

impl Totals {
    pub fn add(&mut self, p: &ProcessSummary) {
        self.processes += 1;
        self.exited += u64::from(p.exited);
        self.faults.total += p.faults.total;
        self.faults.minor += p.faults.minor;
        self.faults.major += p.faults.major;
        for (k, n) in &p.by_kind {
            *self.by_kind.entry(k).or_default() += n;
        }
        if let Some(k) = &p.kernel {
            self.kernel.minflt += k.minflt;
            self.kernel.majflt += k.majflt;
        }
        self.unseen += p.unseen.unwrap_or(0);
        self.resolved_later += p.resolved_later;
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub duration_ns: u64,
    pub events_lost: u64,
    /// The mechanism that counted the faults: "fentry", "kprobe" or "tracepoint".
    pub backend: &'static str,
    /// "derived" on the tracepoint backend, "observed" where a backend sees them.
    pub paths_source: &'static str,
    pub counters: Counters,
    /// Kernel tables that were full at least once (map name -> times), from
    /// `counters`: what could not be stored is counted, never dropped silently.
    pub tables_full: BTreeMap<&'static str, u64>,
    pub limits: Vec<String>,
    /// Minor faults timed one in this many per CPU (1: every fault; major
    /// faults always every one): `latency_ns.samples` counts the timed ones.
    pub latency_sample_period: u64,
    /// Why the trace ended ("all traced processes exited", "--duration
    /// reached", ...); None while it runs.
    pub end_reason: Option<String>,
    pub totals: Totals,
    /// `--stacks`: faults counted with a user stack, and how many of those
    /// stacks were truncated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_sites: Option<super::stacks::StackTotals>,
    /// Processes still traced, and the busiest and latest of those that exited
    /// (every process is in the export as its own `process` record); the
    /// busiest first.
    #[serde(skip)]
    pub processes: Vec<ProcessSummary>,
}

impl Summary {
    /// The summary as a terminal may show it: every name a traced process
    /// chose (its comm, the files it maps) with control characters escaped.
    pub fn escape_for_terminal(&mut self) {
        let esc = crate::text::make_visible;
        for p in &mut self.processes {
            esc(&mut p.comm);
            if let Some(c) = &mut p.cgroup {
                esc(c);
            }
            for v in &mut p.vmas {
                for s in [&mut v.file, &mut v.origin, &mut v.handler, &mut v.module]
                    .into_iter()
                    .flatten()
                {
                    esc(s);
                }
                for site in &mut v.stacks {
                    if site
                        .frames
                        .iter()
                        .any(|f| matches!(crate::text::visible(f), std::borrow::Cow::Owned(_)))
                    {
                        site.frames = site
                            .frames
                            .iter()
                            .map(|f| crate::text::visible(f).into_owned())
                            .collect();
                    }
                }
            }
        }
    }
}

/// A line about what runs beside the trace (the demo's scenarios), shown with
/// its summary.
#[derive(Clone, Debug)]
pub struct Note {
    pub text: String,
    /// false: shown as a problem.
    pub ok: bool,
}
