//! The state of one trace: what the ring buffer told (mappings, names, exits) plus
//! the latest snapshot of the in-kernel counts, and the attribution that joins them.
use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    num::NonZeroU64,
    sync::Arc,
};

use rmaptrace_common::{
    access, anon_vma_by, event_kind, fault_outcome, key_flags, prefill, vma_status, ExitEvent,
    FaultEvent, FaultKey, FaultOutcome, MmapExitEvent, SyscallEvent, UnresolvedFault, VmaInfo,
};

use super::{
    code::Code,
    event::{c_str, kernel_path, Event},
    flags,
    kind::{char_device, classify, prot_string, Kind},
    origins::{Origin, Origins, PathNames},
    path,
    small_map::SmallMap,
    snapshot::{row_life, FaultTotals, Files, Lifetime, Snapshot, Vma},
    stacks::CallStacks,
    summary::{
        AnonVma, FaultCounts, HandlerTime, KernelCounts, Latency, ProcessSummary, Setup, Summary,
        Totals, VmaSummary,
    },
    syscalls::{self, MmapRecord},
};
use crate::kernel::{kallsyms::Kallsyms, procfs::ProcSource};
use candidates::{Candidate, Candidates};

/// One completed fault as exported with `--events` (export::json writes it:
/// one per fault, so nothing here is allocated per fault).
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRecord {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub addr: u64,
    pub ip: u64,
    pub write: bool,
    pub user: bool,
    pub kind: &'static str,
    pub handler: Option<Arc<str>>,
    pub module: Option<Arc<str>>,
    pub path: &'static str,
    pub major: bool,
    pub latency_ns: Option<u64>,
    pub vma_start: Option<u64>,
    /// The mapping lifetime (the `life` of a summary row), None without a VMA.
    pub life: Option<u64>,
}

/// A fault recorded at its entry, as a minor fault without latency, with what
/// its path is derived from should it turn out major.
struct HeldFault {
    rec: FaultRecord,
    kind: Kind,
    vm_flags: u64,
    access: u8,
    path: u8,
}

impl HeldFault {
    /// The VMA (and lifetime) a held fault was placed in since its entry,
    /// from `placed`, the record that says so; its time, address and
    /// instruction stay the entry's.
    fn place(&mut self, placed: FaultRecord, kind: Kind, vm_flags: u64, path: u8) {
        self.rec = FaultRecord {
            ts_ns: self.rec.ts_ns,
            addr: self.rec.addr,
            ip: self.rec.ip,
            ..placed
        };
        (self.kind, self.vm_flags, self.path) = (kind, vm_flags, path);
    }
}

/// What a fault record says of its lifetime's VMA, worked out at the
/// lifetime's first record and shared by the rest.
#[derive(Clone)]
struct EventVma {
    vm_start: u64,
    vm_flags: u64,
    kind: Kind,
    handler: Option<Arc<str>>,
    module: Option<Arc<str>>,
}

/// A record to stream to the export as it happens.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Mmap(MmapRecord),
    Fault(FaultRecord),
}

/// A range that stopped being mapped: munmap, an mmap with MAP_FIXED over it, an
/// mremap that moved it away, an exec (everything) or the process's end.
#[derive(Clone, Copy)]
struct Unmap {
    start: u64,
    end: u64,
    /// Mappings that existed when the call was entered are the ones it removed.
    enter_ns: u64,
    /// When the call returned: the mapping was gone by then.
    exit_ns: u64,
}

#[derive(Default)]
struct ProcessState {
    comm: String,
    /// Its cgroup v2 id as of its latest exec, fork or exit seen; 0: unknown.
    cgroup: u64,
    /// The kernel's counts (final - base) of its exited threads.
    exited_threads: (u64, u64),
    threads_exited: u32,
    /// When a thread first saw no thread of it running any more.
    exit_ns: Option<u64>,
    /// Its group leader's start time, from its first thread exit (0 before).
    leader_start_ns: u64,
    /// When rmaptrace first heard of it.
    seen_ns: u64,
    targeted: bool,
    /// Successful mmaps: where each mapping came from.
    origins: Origins,
    /// By the time each call was entered ([`ProcessState::add_unmap`]).
    unmaps: Vec<Unmap>,
    /// Lifetime → name from /proc/PID/maps ("" when it had none or was gone).
    names: HashMap<u64, String>,
    /// Its mappings that ended and were collected while it ran.
    ended: ended::Ended,
    /// Mappings its mmap calls left that the fault path does not serve (a
    /// driver's prefilled pages): listed even if they never fault.
    unfaulted: Vec<Unfaulted>,
}

/// A mapping as its mmap call left it, for one that may never fault.
#[derive(Clone, Copy, Debug)]
struct Unfaulted {
    start: u64,
    end: u64,
    /// When the call that made it returned.
    ts_ns: u64,
    vm_flags: u64,
    setup: Code,
    /// Pages its mmap handler installed, by function (`prefill::NAMES`).
    prefilled: [u64; prefill::FUNCTIONS],
}

impl ProcessState {
    /// Records an unmap, keeping `unmaps` in the order the calls were entered
    /// (they arrive nearly so, as they return).
    fn add_unmap(&mut self, u: Unmap) {
        let at = self.unmaps.partition_point(|x| x.enter_ns <= u.enter_ns);
        self.unmaps.insert(at, u);
    }

    /// The unmaps entered after `ns`: those that can have changed a lifetime
    /// first seen then. A search, so that a process that unmaps all day does
    /// not cost each lifetime a scan of its history.
    fn unmaps_after(&self, ns: u64) -> &[Unmap] {
        &self.unmaps[self.unmaps.partition_point(|u| u.enter_ns <= ns)..]
    }
}

pub struct Trace {
    symbols: Kallsyms,
    procfs: Box<dyn ProcSource>,
    start_ns: u64,
    processes: HashMap<u32, ProcessState>,
    /// Syscall entry records waiting for their exit, by tid.
    pending: HashMap<u32, SyscallEvent>,
    /// Each thread's latest fault recorded at its entry, written once its
    /// outcome is known: its outcome record, the thread's next fault, its
    /// exit, or the end of the trace.
    held_faults: HashMap<u32, HeldFault>,
    snapshot: Snapshot,
    /// VMA descriptions carried by fault records, for the records that carry none.
    event_vmas: HashMap<u64, EventVma>,
    /// File names of the VMAs that fault records carried.
    event_files: Files,
    backend: &'static str,
    paths_source: &'static str,
    limits: Vec<String>,
    latency_sample_period: u64,
    /// Swap was in use: a minor anonymous not-present fault may be a swap-cache hit.
    swap_in_use: bool,
    /// Faults the kernel could not find the VMA of, to attribute from the
    /// mapping timeline where that is certain.
    unresolved: Vec<UnresolvedFault>,
    /// Sums over the processes that exited and whose kernel rows were freed
    /// (their whole summaries went to the caller, for the export).
    exited_totals: Totals,
    /// A few of those summaries, trimmed, for the screen and the text table.
    kept: Vec<ProcessSummary>,
    /// Retired pids, with their exit time, whose rows (those first seen by
    /// then) may still be in the latest snapshot.
    retired_until: HashMap<u32, u64>,
    /// Pids retired by the latest retirement: their rows are freed by the
    /// caller right after it, so the next snapshot no longer has them.
    retired_last: Vec<u32>,
    /// Processes that got the pid of one that exited and is not retired yet:
    /// a new process, kept apart until the old one's rows are freed.
    newborn: HashMap<u32, ProcessState>,
    /// Processes whose last thread was seen exiting.
    group_exits: u64,
    /// File names of the mappings in `processes`' origins.
    path_names: PathNames,
    /// `setup.prefilled` is counted (the kernel-function backends).
    prefill_observed: bool,
    /// Fault handler addresses that no symbol named even after the symbols
    /// were read again.
    unnamed: std::collections::HashSet<u64>,
    /// Calls seen that unmapped something.
    unmaps_seen: u64,
    /// The call sites of each mapping (`--stacks`). In a cell: mappings are
    /// described through `&self`, and naming a stack's frames reads and
    /// caches the binaries the process mapped.
    stacks: Option<RefCell<CallStacks>>,
}

/// Kernel rows to free: of a process retired by [`Trace::retire_exited`]
/// (whole), or of mappings that ended in a running one
/// ([`Trace::collect_ended_into`]).
pub struct Retired {
    pub pid: u32,
    /// Its aggregate rows.
    pub rows: Vec<FaultKey>,
    /// Its lifetimes, with their VMA structs.
    pub lives: Vec<(u64, u64)>,
    /// For mappings that ended in a running process, what each of `rows`
    /// counted as collected (minor, major) and its kind; empty otherwise.
    pub counted: Vec<(u64, u64, &'static str)>,
    /// The whole process: its per-process counts go too.
    pub whole: bool,
}

/// Exited processes whose summaries stay in memory (for the live screen and the
/// text table; the export has them all): the busiest, and the latest to exit,
/// each with its busiest rows. Memory stays flat however many processes exit.
const KEEP_BUSIEST: usize = 32;
const KEEP_LATEST: usize = 32;
const KEEP_VMAS: usize = 64;

/// How many of each process's mappings a summary holds in memory: the
/// busiest n (by faults), in address order, the rest counted in
/// `vmas_dropped`. The export gets them all, one at a time, through a
/// [`VmaSink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keep(pub usize);

impl Keep {
    #[cfg(test)]
    pub const ALL: Keep = Keep(usize::MAX);
}

/// Receives each process summarised with every one of its mappings, described
/// one at a time (in address order) as the iterator is advanced.
pub use ended::collect_due;

pub type VmaSink<'s> = dyn FnMut(&ProcessSummary, &mut dyn Iterator<Item = VmaSummary>) + 's;

/// A mapping lifetime as the first pass of a summary sees it: plain numbers
/// (ids and times are never 0), as a process may have 200k of them.
struct Span {
    /// Its rows' lifetime (None: faults with no VMA found).
    rows: Option<NonZeroU64>,
    /// Whether the lifetime's description was read (false: kind unknown).
    described: bool,
    kind: Kind,
    minor: u64,
    major: u64,
    /// The range at the end of its life.
    start: u64,
    end: u64,
    first_seen: Option<NonZeroU64>,
    unmapped: Option<NonZeroU64>,
}

impl Span {
    /// The lifetime, when its description was read.
    fn life(&self) -> Option<NonZeroU64> {
        self.rows.filter(|_| self.described)
    }
}

/// A row's place in a process: its lifetime (None: no VMA found), then (access, path).
type RowKey = (Option<u64>, (u8, u8));

fn row_key(k: &FaultKey) -> RowKey {
    (row_life(k), (k.access, k.path))
}

/// The rows of one process in [`RowKey`] order, borrowed from the snapshot
/// (sorted so): a process with 200k mappings costs a pointer per row. Rows that
/// merge (no VMA found, with several statuses) or that a resolved fault moves
/// are copied into `changed`, which overrides `rows`.
#[derive(Default)]
struct ProcessRows<'s> {
    rows: Vec<&'s (FaultKey, FaultTotals)>,
    changed: BTreeMap<RowKey, FaultTotals>,
}

impl<'s> ProcessRows<'s> {
    /// Adds the next row in key order.
    fn push(&mut self, row: &'s (FaultKey, FaultTotals)) {
        let key = row_key(&row.0);
        match self.rows.last() {
            Some(last) if row_key(&last.0) == key => {
                let first = &last.1;
                self.changed
                    .entry(key)
                    .or_insert_with(|| first.clone())
                    .merge(&row.1);
            }
            _ => self.rows.push(row),
        }
    }

    /// The lifetimes with rows, in order, each with where its rows are
    /// (first, count); a changed row always has one in `rows`.
    fn lives(&self) -> impl Iterator<Item = (Option<u64>, (u32, u32))> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            let life = row_life(&self.rows.get(i)?.0);
            let n = self.rows[i..]
                .iter()
                .take_while(|r| row_life(&r.0) == life)
                .count();
            let at = (i as u32, n as u32);
            i += n;
            Some((life, at))
        })
    }

    /// One lifetime's rows, found by a search.
    fn group_of(&self, life: Option<u64>) -> Vec<((u8, u8), &FaultTotals)> {
        let at = self.range_of(life);
        self.group(life, (at.start as u32, at.len() as u32))
    }

    /// Where one lifetime's rows are, found by a search (a span does not keep
    /// it: 8 bytes in each of 200k spans).
    fn range_of(&self, life: Option<u64>) -> std::ops::Range<usize> {
        let lo = self.rows.partition_point(|r| row_life(&r.0) < life);
        lo..lo + self.rows[lo..].partition_point(|r| row_life(&r.0) <= life)
    }

    /// One lifetime's rows (`at` as [`Self::lives`] gives it), in (access,
    /// path) order.
    fn group(&self, life: Option<u64>, at: (u32, u32)) -> Vec<((u8, u8), &FaultTotals)> {
        let (lo, len) = (at.0 as usize, at.1 as usize);
        let mut out: Vec<((u8, u8), &FaultTotals)> = self.rows[lo..lo + len]
            .iter()
            .filter(|r| self.changed.is_empty() || !self.changed.contains_key(&row_key(&r.0)))
            .map(|r| ((r.0.access, r.0.path), &r.1))
            .collect();
        if !self.changed.is_empty() {
            let range = (life, (0, 0))..=(life, (u8::MAX, u8::MAX));
            out.extend(self.changed.range(range).map(|((_, row), t)| (*row, t)));
            out.sort_unstable_by_key(|(row, _)| *row);
        }
        out
    }

    /// A copy of a row's counts, to change and put back with [`Self::put`].
    fn take(&mut self, key: RowKey) -> Option<FaultTotals> {
        if let Some(t) = self.changed.remove(&key) {
            return Some(t);
        }
        let at = self
            .rows
            .binary_search_by_key(&key, |r| row_key(&r.0))
            .ok()?;
        Some(self.rows[at].1.clone())
    }

    /// Sets a row's counts (one with none counts nothing: as if removed).
    fn put(&mut self, key: RowKey, totals: FaultTotals) {
        self.changed.insert(key, totals);
    }
}

/// Addresses per process, sorted.
struct AddrsByPid(HashMap<u32, Vec<u64>>);

impl AddrsByPid {
    /// Whether one of `pid`'s addresses lies in [lo, hi).
    fn any_in(&self, pid: u32, lo: u64, hi: u64) -> bool {
        self.0.get(&pid).is_some_and(|a| {
            let i = a.partition_point(|&x| x < lo);
            a.get(i).is_some_and(|&x| x < hi)
        })
    }
}

fn prefilled_names(pages: [u64; prefill::FUNCTIONS]) -> BTreeMap<&'static str, u64> {
    prefill::NAMES.into_iter().zip(pages).collect()
}

/// When an unmap entered after the mapping was made removed all of it.
fn unfaulted_until(p: &ProcessState, u: &Unfaulted) -> Option<u64> {
    p.unmaps_after(u.ts_ns)
        .iter()
        .filter(|x| x.start <= u.start && u.end <= x.end)
        .map(|x| x.exit_ns)
        .min()
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

impl Trace {
    pub fn new(symbols: Kallsyms, procfs: Box<dyn ProcSource>, start_ns: u64) -> Self {
        Self {
            symbols,
            procfs,
            start_ns,
            processes: HashMap::new(),
            pending: HashMap::new(),
            held_faults: HashMap::new(),
            snapshot: Snapshot::default(),
            event_vmas: HashMap::new(),
            event_files: Files::default(),
            backend: "tracepoint",
            paths_source: "derived",
            limits: Vec::new(),
            latency_sample_period: 1,
            swap_in_use: false,
            unresolved: Vec::new(),
            exited_totals: Totals::default(),
            kept: Vec::new(),
            retired_until: HashMap::new(),
            retired_last: Vec::new(),
            newborn: HashMap::new(),
            group_exits: 0,
            path_names: PathNames::default(),
            prefill_observed: false,
            unnamed: Default::default(),
            unmaps_seen: 0,
            stacks: None,
        }
    }

    /// Collects call sites from now on (`--stacks`).
    pub fn set_call_stacks(&mut self, stacks: CallStacks) {
        self.stacks = Some(RefCell::new(stacks));
    }

    pub fn call_stacks(&mut self) -> Option<&mut CallStacks> {
        self.stacks.as_mut().map(RefCell::get_mut)
    }

    /// Whether swap was in use during the trace (derived paths depend on it).
    pub fn set_swap_in_use(&mut self, on: bool) {
        self.swap_in_use = on;
    }

    /// The counting backend and whether paths are observed or derived.
    pub fn set_backend(&mut self, backend: &'static str, paths: &'static str) {
        self.backend = backend;
        self.paths_source = paths;
    }

    /// Whether the functions that install pages at mmap are all probed.
    pub fn set_prefill_observed(&mut self, observed: bool) {
        self.prefill_observed = observed;
    }

    pub fn set_limits(&mut self, limits: Vec<String>) {
        self.limits = limits;
    }

    /// Minor faults timed one in `period` per CPU (1: every fault).
    pub fn set_latency_sample_period(&mut self, period: u64) {
        self.latency_sample_period = period;
    }

    /// A process rmaptrace was asked to trace. Its kernel counters are followed
    /// per thread in the kernel from the moment each is first seen, so no
    /// baseline is read here.
    pub fn add_target(&mut self, pid: u32) {
        let comm = self.procfs.stat(pid).map(|s| s.comm);
        let st = self.processes.entry(pid).or_default();
        st.targeted = true;
        if let Some(c) = comm {
            st.comm = c;
        }
    }

    /// Frees the latest snapshot before the next one is read: a process with
    /// 100k mappings has 100k rows, and two snapshots at once were its peak.
    pub fn release_snapshot(&mut self) {
        self.snapshot = Snapshot::default();
    }

    pub fn set_snapshot(&mut self, mut snap: Snapshot) {
        snap.sort();
        self.snapshot = snap;
        self.name_new_handlers();
        self.refresh_names();
    }

    /// Names the file-backed lifetimes that have no origin path from
    /// /proc/PID/maps while their process is alive: one read per process that has
    /// such a lifetime, once per lifetime.
    fn refresh_names(&mut self) {
        let mut wanted: HashMap<u32, Vec<(u64, u64, u64)>> = HashMap::new();
        for (life, rec) in &self.snapshot.vmas {
            if !rec.info.has_file() {
                continue;
            }
            let named = self
                .processes
                .get(&rec.tgid)
                .is_some_and(|p| p.names.contains_key(life));
            if !named {
                wanted.entry(rec.tgid).or_default().push((
                    *life,
                    rec.info.vm_start,
                    rec.info.ino(),
                ));
            }
        }
        for (pid, lives) in wanted {
            let by_start: HashMap<u64, (u64, String)> = self
                .procfs
                .maps(pid)
                .unwrap_or_default()
                .into_iter()
                .map(|m| (m.start, (m.inode, m.name)))
                .collect();
            let st = self.processes.entry(pid).or_default();
            for (life, start, ino) in lives {
                let name = match by_start.get(&start) {
                    Some((i, n)) if *i == ino || ino == 0 => n.clone(),
                    _ => String::new(),
                };
                st.names.insert(life, name);
            }
        }
    }

    /// The state of the process that has `pid` at `ts`: a process whose pid
    /// belonged to one that exited before is another process.
    fn state_mut(&mut self, pid: u32, ts: u64) -> &mut ProcessState {
        let reused = self
            .processes
            .get(&pid)
            .and_then(|p| p.exit_ns)
            .is_some_and(|exit| ts > exit);
        let new = || ProcessState {
            seen_ns: ts,
            ..Default::default()
        };
        if reused || self.newborn.contains_key(&pid) {
            return self.newborn.entry(pid).or_insert_with(new);
        }
        self.processes.entry(pid).or_insert_with(new)
    }

    /// The process a thread's exit belongs to. The last threads of a process
    /// each see it dead, and report in any order: one that reports after the
    /// process's exit was recorded is still that process's (same group leader),
    /// not a new process that took the pid.
    fn exit_state_mut(&mut self, e: &ExitEvent) -> &mut ProcessState {
        let pid = e.header.tgid;
        let same = |p: &ProcessState| {
            p.exit_ns.is_some() && p.leader_start_ns != 0 && p.leader_start_ns == e.leader_start_ns
        };
        if self.newborn.get(&pid).is_some_and(same) {
            return self.newborn.get_mut(&pid).expect("just seen");
        }
        if self.processes.get(&pid).is_some_and(same) {
            return self.processes.get_mut(&pid).expect("just seen");
        }
        self.state_mut(pid, e.header.ts_ns)
    }

    /// Processes whose exit went unseen (its event lost with others when the
    /// ring buffer overflowed), marked exited so that the next retirement frees
    /// their rows: gone from /proc (or a zombie), or their pid now another
    /// process's, started after rmaptrace first heard of theirs. Without this a
    /// long trace that once fell behind would keep their rows for ever, and its
    /// tables would fill. Called after events were lost; returns how many.
    pub fn mark_unseen_exits(&mut self, now_ns: u64) -> usize {
        let mut pids: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, p)| p.exit_ns.is_none())
            .map(|(pid, _)| *pid)
            .collect();
        // Processes known only by their rows (their fork event lost too).
        pids.extend(
            self.snapshot
                .faults
                .iter()
                .map(|(k, _)| k.tgid)
                .chain(self.snapshot.vmas.iter().map(|(_, r)| r.tgid))
                .filter(|pid| {
                    !self.processes.contains_key(pid) && !self.retired_until.contains_key(pid)
                }),
        );
        pids.sort_unstable();
        pids.dedup();
        let mut marked = 0;
        for pid in pids {
            let exit = if !self.procfs.alive(pid) {
                Some(now_ns)
            } else {
                let seen = self.processes.get(&pid).map_or(0, |p| p.seen_ns);
                self.procfs
                    .started_ns(pid)
                    .filter(|&start| seen != 0 && start > seen)
                    .map(|start| start - 1)
            };
            if let Some(exit) = exit {
                self.processes.entry(pid).or_default().exit_ns = Some(exit);
                marked += 1;
            }
        }
        marked
    }

    /// By the id the kernel gave at its latest exec, fork or exit; else as
    /// /proc says now.
    fn cgroup_of(&self, pid: u32) -> Option<String> {
        match self.processes.get(&pid).map(|p| p.cgroup) {
            Some(id) if id != 0 => self.procfs.cgroup_path(id),
            _ => self.procfs.cgroup_of(pid),
        }
    }

    fn comm_of(&self, pid: u32) -> String {
        match self.processes.get(&pid) {
            Some(p) if !p.comm.is_empty() => p.comm.clone(),
            _ => self.procfs.stat(pid).map(|s| s.comm).unwrap_or_default(),
        }
    }

    /// Names the fault handlers met for the first time: the symbols are read
    /// again, once for each such address, which also names handlers of
    /// modules loaded since the trace began (a driver under test).
    fn name_new_handlers(&mut self) {
        // Without addresses (kptr_restrict) a second read names nothing either.
        if !self.symbols.has_addresses() {
            return;
        }
        let handlers: std::collections::HashSet<u64> = self
            .snapshot
            .vmas
            .iter()
            .flat_map(|(_, r)| [r.info.fault_fn.addr(), r.info.setup_fn.addr()])
            .chain(
                self.processes
                    .values()
                    .chain(self.newborn.values())
                    .flat_map(|p| p.unfaulted.iter().map(|u| u.setup.addr())),
            )
            .filter(|&f| f != 0)
            .collect();
        let missing: Vec<u64> = handlers
            .into_iter()
            .filter(|f| self.symbols.exact(*f).is_none() && !self.unnamed.contains(f))
            .collect();
        if missing.is_empty() {
            return;
        }
        // Read again with only the handlers met so far: the whole table is
        // megabytes the trace would carry for a handful of names.
        let mut wanted: Vec<u64> = self
            .symbols
            .addresses()
            .chain(missing.iter().copied())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        if let Some(fresh) = self.procfs.kallsyms(&wanted) {
            self.symbols = fresh;
        }
        let still = missing
            .into_iter()
            .filter(|f| self.symbols.exact(*f).is_none());
        self.unnamed.extend(still);
    }

    fn handler_of(&self, fault_fn: u64) -> (Option<String>, Option<String>) {
        match self.symbols.exact(fault_fn) {
            Some(sym) => (Some(sym.name.to_string()), sym.module.map(str::to_string)),
            None if fault_fn != 0 => (Some(hex(fault_fn)), None),
            None => (None, None),
        }
    }

    /// What set a VMA up, from the function its file's operations name.
    /// MAP_SHARED|MAP_ANONYMOUS (and MAP_SHARED of /dev/zero) get a shmem file
    /// from shmem_zero_setup, named `dev/zero`: no other dentry name holds a
    /// '/', so the name tells it from a memfd's, whose operations are the same.
    fn setup_of(&self, pid: u32, info: &Vma, first_ns: u64, origin: Option<&Origin>) -> Setup {
        let zero_shmem = info.name() == Some("dev/zero");
        let mut setup = self.setup_from(info.setup_fn, info.vm_flags, zero_shmem);
        // Counted at its mmap call, when that was seen: the record of a
        // mapping the fault path does not serve has them; none for the rest.
        setup.prefilled = origin.filter(|_| self.prefill_observed).map(|_| {
            let made = self.processes.get(&pid).and_then(|p| {
                p.unfaulted.iter().find(|u| {
                    u.start <= info.vm_start && info.vm_start < u.end && u.ts_ns <= first_ns
                })
            });
            prefilled_names(made.map_or([0; prefill::FUNCTIONS], |u| u.prefilled))
        });
        setup
    }

    fn setup_from(&self, setup_fn: Code, vm_flags: u64, zero_shmem: bool) -> Setup {
        let (mut by, mut by_module) = match setup_fn.addr() {
            0 => (None, None),
            f => self.handler_of(f),
        };
        if zero_shmem && by.as_deref().is_some_and(|b| b.starts_with("shmem_")) {
            (by, by_module) = (Some("shmem_zero_setup".into()), None);
        }
        Setup {
            by,
            by_module,
            vm_flags: flags::names(vm_flags),
            prefilled: None,
            anon_vma: None,
        }
    }

    /// A lifetime's anon_vma: what made it and when, as the hooks on its
    /// making saw it or else as the first fault that found it did, and how
    /// many of its faults came before it (each row says whether the VMA had
    /// one at completion). None while neither saw one.
    fn anon_vma_of(&self, pid: u32, life: u64, rec: &Lifetime) -> Option<AnonVma> {
        let rows = self.snapshot.rows_of(pid, life);
        let with = |k: &FaultKey| k.flags & key_flags::ANON_VMA != 0;
        let seen = rec.anon_vma;
        if seen.ns().is_none() && !rows.iter().any(|(k, _)| with(k)) {
            return None;
        }
        let (by, source) = match seen.by() {
            anon_vma_by::FAULT => ("fault", "observed"),
            anon_vma_by::FORK => ("fork", "observed"),
            anon_vma_by::OTHER => ("other", "observed"),
            _ => ("unknown", "derived"),
        };
        Some(AnonVma {
            by,
            ts_ns: seen.ns(),
            faults_before: rows
                .iter()
                .filter(|(k, _)| !with(k))
                .map(|(_, t)| t.minor + t.major)
                .sum(),
            source,
        })
    }

    /// The mappings of `pid` the fault path does not serve that no lifetime
    /// took (none was first seen over them after they were made): they never
    /// faulted, and are rows of their own, from their mmap calls.
    fn unfaulted_rows(&self, pid: u32, spans: &[Span]) -> Vec<VmaSummary> {
        let Some(p) = self.processes.get(&pid).filter(|p| !p.unfaulted.is_empty()) else {
            return Vec::new();
        };
        let lives = ended::Ranges::new(
            spans
                .iter()
                .filter_map(|sp| Some((sp.start, sp.end, sp.first_seen?.get())))
                .collect(),
        );
        p.unfaulted
            .iter()
            .filter(|u| {
                !lives
                    .overlapping(u.start, u.end)
                    .any(|&(_, _, first)| first >= u.ts_ns)
            })
            .map(|u| self.unfaulted_summary(p, u))
            .collect()
    }

    fn unfaulted_summary(&self, p: &ProcessState, u: &Unfaulted) -> VmaSummary {
        let origin = p.origins.covering(u.start, u.ts_ns);
        VmaSummary {
            start: hex(u.start),
            end: hex(u.end),
            kind: Kind::Driver.as_str(),
            handler: None,
            module: None,
            file: origin.and_then(|o| o.path.as_deref()).map(str::to_string),
            device: None,
            prot: prot_string(u.vm_flags),
            origin: origin.map(Self::describe_origin),
            setup: Some(Setup {
                prefilled: (self.prefill_observed && origin.is_some())
                    .then(|| prefilled_names(u.prefilled)),
                ..self.setup_from(u.setup, u.vm_flags, false)
            }),
            life: None,
            first_seen_ns: None,
            mapped_ns: origin.map(|o| o.ts_ns),
            unmapped_ns: unfaulted_until(p, u).or(p.exit_ns),
            faults: 0,
            minor: 0,
            major: 0,
            paths: SmallMap::default(),
            latency_ns: Latency::default(),
            handler_time: None,
            start_addr: u.start,
            end_addr: u.end,
            key: u.ts_ns,
            stacks: Vec::new(),
            ..VmaSummary::default()
        }
    }

    fn kind_of(&self, info: &Vma) -> Kind {
        let handler = self.symbols.exact(info.fault_fn.addr()).map(|s| s.name);
        classify(info, handler)
    }

    pub fn on_event(&mut self, event: Event) -> Option<Record> {
        match event {
            Event::Fault(f, vma) => {
                let (rec, kind, vm_flags) = self.fault_record(&f, vma.as_deref());
                if f.pending == rmaptrace_common::FAULT_SETTLED {
                    return Some(Record::Fault(rec));
                }
                if f.pending == rmaptrace_common::FAULT_PLACED {
                    if let Some(h) = self.held_faults.get_mut(&f.header.tid) {
                        // Pages of 4 KiB or more: the same page is the same fault.
                        if h.rec.addr >> 12 == f.addr >> 12 {
                            h.place(rec, kind, vm_flags, f.path);
                            return None;
                        }
                    }
                    // Its record was lost with the ring's records: this one
                    // stands for it, held the same way.
                }
                let held = HeldFault {
                    rec,
                    kind,
                    vm_flags,
                    access: f.access,
                    path: f.path,
                };
                self.held_faults
                    .insert(f.header.tid, held)
                    .map(|h| Record::Fault(h.rec))
            }
            Event::FaultOutcome(o) => self.on_fault_outcome(&o),
            // A fault whose VMA found the lifetime table full has no lifetime
            // to go to: it stays unknown, counted in its row, and is not kept.
            Event::Unresolved(u) if u.vma_status == vma_status::UNTRACKED => None,
            Event::MmapSetup(m) => {
                let st = self.state_mut(m.header.tgid, m.header.ts_ns);
                st.unfaulted.push(Unfaulted {
                    start: m.vm_start,
                    end: m.vm_end,
                    ts_ns: m.header.ts_ns,
                    vm_flags: m.vm_flags,
                    setup: Code::of_setup(m.setup_fn, m.setup_prepare_fn),
                    prefilled: m.prefilled,
                });
                None
            }
            Event::Unresolved(u) => {
                self.unresolved.push(u);
                None
            }
            Event::Syscall(s) => self.on_syscall(s).map(Record::Mmap),
            Event::MmapExit(m) => self.on_mmap_exit(&m).map(Record::Mmap),
            Event::Exit(e) => {
                let st = self.exit_state_mut(&e);
                if e.has_base != 0 {
                    st.exited_threads.0 += e.min_flt.saturating_sub(e.base_min);
                    st.exited_threads.1 += e.maj_flt.saturating_sub(e.base_maj);
                }
                st.threads_exited += 1;
                if st.leader_start_ns == 0 {
                    st.leader_start_ns = e.leader_start_ns;
                }
                if e.header.tid == e.header.tgid || st.comm.is_empty() {
                    st.comm = c_str(&e.comm);
                }
                if e.cgroup != 0 {
                    st.cgroup = e.cgroup;
                }
                if e.group_dead != 0 && st.exit_ns.is_none() {
                    st.exit_ns = Some(e.header.ts_ns);
                    self.group_exits += 1;
                }
                // Its last fault was settled before it exited.
                self.held_faults
                    .remove(&e.header.tid)
                    .map(|h| Record::Fault(h.rec))
            }
            Event::Task(t) => {
                let comm = c_str(&t.comm);
                match t.header.kind {
                    event_kind::EXEC => {
                        if let Some(s) = self.call_stacks() {
                            s.namer().exec(t.header.tgid, t.header.ts_ns);
                        }
                        self.unmaps_seen += 1;
                        let st = self.state_mut(t.header.tgid, t.header.ts_ns);
                        st.comm = comm;
                        st.cgroup = t.cgroup;
                        if t.other == 1 {
                            st.targeted = true;
                        }
                        // A new mm: every mapping of the old one is gone.
                        st.add_unmap(Unmap {
                            start: 0,
                            end: u64::MAX,
                            enter_ns: t.header.ts_ns,
                            exit_ns: t.header.ts_ns,
                        });
                    }
                    _ => {
                        // A forked child has copies of its parent's mappings, so
                        // it inherits their origins too.
                        let parent = t.header.tgid;
                        if let Some(s) = self.call_stacks() {
                            s.namer().fork(parent, t.other);
                        }
                        let origins = match self.newborn.get_mut(&parent) {
                            Some(p) => p.origins.fork(),
                            None => self
                                .processes
                                .get_mut(&parent)
                                .map(|p| p.origins.fork())
                                .unwrap_or_default(),
                        };
                        let child = self.state_mut(t.other, t.header.ts_ns);
                        if child.comm.is_empty() {
                            child.comm = comm;
                        }
                        child.cgroup = t.cgroup;
                        child.origins.adopt(origins);
                    }
                }
                None
            }
        }
    }

    /// The VMA of a fault record: described by the lifetime's first record
    /// (which carries it), else by a snapshot of the VMA table.
    fn vma_of_event(&mut self, f: &FaultEvent, carried: Option<&VmaInfo>) -> Option<EventVma> {
        if f.vma_status != vma_status::FOUND {
            return None;
        }
        if let Some(info) = carried {
            let v = Vma::from_kernel(info, &mut self.event_files);
            let ev = self.event_vma(&v);
            self.event_vmas.insert(f.life, ev.clone());
            return Some(ev);
        }
        if let Some(ev) = self.event_vmas.get(&f.life) {
            return Some(ev.clone());
        }
        let ev = self.event_vma(&self.snapshot.record(f.life)?.info);
        self.event_vmas.insert(f.life, ev.clone());
        Some(ev)
    }

    fn event_vma(&self, v: &Vma) -> EventVma {
        let (handler, module) = self.handler_of(v.fault_fn.addr());
        EventVma {
            vm_start: v.vm_start,
            vm_flags: v.vm_flags,
            kind: self.kind_of(v),
            handler: handler.map(Arc::from),
            module: module.map(Arc::from),
        }
    }

    /// A thread's held fault as its outcome says. An outcome for another
    /// address (the fault it settles was lost with the ring's records) leaves
    /// the held one as it was.
    fn on_fault_outcome(&mut self, o: &FaultOutcome) -> Option<Record> {
        let mut held = self.held_faults.remove(&o.header.tid)?;
        // Pages of 4 KiB or more: the same page is the same fault.
        if held.rec.addr >> 12 != o.addr >> 12 {
            return Some(Record::Fault(held.rec));
        }
        match o.outcome {
            fault_outcome::TAKEN_BACK => return None,
            fault_outcome::MAJOR => {
                held.rec.major = true;
                held.rec.path =
                    self.record_path(held.path, held.kind, held.vm_flags, held.access, true);
            }
            _ => {}
        }
        // 0: a major fault whose entry was not timed (swap turned on since).
        held.rec.latency_ns = (o.latency_ns != 0).then_some(o.latency_ns);
        Some(Record::Fault(held.rec))
    }

    /// The faults still held at the end of the trace, oldest first: minor
    /// faults without latency (nothing said otherwise).
    pub fn take_held_faults(&mut self) -> Vec<Record> {
        let mut held: Vec<FaultRecord> = self.held_faults.drain().map(|(_, h)| h.rec).collect();
        held.sort_by_key(|r| r.ts_ns);
        held.into_iter().map(Record::Fault).collect()
    }

    /// The faults still held for threads of processes just retired, oldest
    /// first, as they stand: a thread whose exit record was lost with the
    /// ring's records would otherwise keep its own until the trace ends.
    pub fn take_held_faults_of(&mut self, retired: &[u32]) -> Vec<Record> {
        if retired.is_empty() || self.held_faults.is_empty() {
            return Vec::new();
        }
        let gone: std::collections::HashSet<u32> = retired.iter().copied().collect();
        let mut held = Vec::new();
        self.held_faults.retain(|_, h| {
            let keep = !gone.contains(&h.rec.pid);
            if !keep {
                held.push(h.rec.clone());
            }
            keep
        });
        held.sort_by_key(|r| r.ts_ns);
        held.into_iter().map(Record::Fault).collect()
    }

    /// A fault record's kernel path: the one observed (`path_id`), else the
    /// one derived from its VMA and access.
    fn record_path(
        &self,
        path_id: u8,
        kind: Kind,
        vm_flags: u64,
        access: u8,
        major: bool,
    ) -> &'static str {
        path::observed_name(path_id)
            .unwrap_or_else(|| path::derive(kind, vm_flags, access, major, self.swap_in_use))
    }

    /// The record of a fault, with the kind and flags of its VMA.
    fn fault_record(
        &mut self,
        f: &FaultEvent,
        carried: Option<&VmaInfo>,
    ) -> (FaultRecord, Kind, u64) {
        let found = f.vma_status == vma_status::FOUND;
        let vma = self.vma_of_event(f, carried);
        let kind = vma.as_ref().map_or(Kind::Unknown, |v| v.kind);
        let vm_flags = vma.as_ref().map_or(0, |v| v.vm_flags);
        let path = self.record_path(f.path, kind, vm_flags, f.access, f.major != 0);
        let (vma_start, handler, module) = match vma {
            Some(v) => (found.then_some(v.vm_start), v.handler, v.module),
            None => (None, None, None),
        };
        let rec = FaultRecord {
            ts_ns: f.header.ts_ns,
            pid: f.header.tgid,
            tid: f.header.tid,
            addr: f.addr,
            ip: f.ip,
            write: f.access & access::WRITE != 0,
            user: f.access & (access::KERNEL | access::NO_ENTRY) == 0,
            kind: kind.as_str(),
            handler,
            module,
            path,
            major: f.major != 0,
            latency_ns: (f.access & access::NO_ENTRY == 0
                && f.pending == rmaptrace_common::FAULT_SETTLED)
                .then_some(f.latency_ns),
            vma_start,
            life: found.then_some(f.life),
        };
        (rec, kind, vm_flags)
    }

    fn on_syscall(&mut self, s: SyscallEvent) -> Option<MmapRecord> {
        let h = s.header;
        match h.kind {
            event_kind::MMAP_ENTER | event_kind::MREMAP_ENTER | event_kind::MUNMAP => {
                self.pending.insert(h.tid, s);
                None
            }
            event_kind::MUNMAP_EXIT => {
                let enter = self.pending.remove(&h.tid)?;
                if enter.header.kind != event_kind::MUNMAP {
                    return None;
                }
                let mut rec = self.mmap_record(&enter, "munmap", enter.args[0]);
                rec.ts_ns = h.ts_ns;
                rec.error = syscalls::syscall_error(s.args[0]);
                if rec.error.is_none() {
                    self.unmapped(&enter, enter.args[0], enter.args[1], h.ts_ns);
                }
                Some(rec)
            }
            event_kind::MREMAP_EXIT => {
                let enter = self.pending.remove(&h.tid)?;
                if enter.header.kind != event_kind::MREMAP_ENTER {
                    return None;
                }
                let mut rec = self.mmap_record(&enter, "mremap", s.args[0]);
                rec.ts_ns = h.ts_ns;
                rec.error = syscalls::syscall_error(s.args[0]);
                // mremap(old, old_len, new_len, flags, new): moved away, the old
                // range is unmapped.
                if rec.error.is_none() && s.args[0] != enter.args[0] {
                    self.unmapped(&enter, enter.args[0], enter.args[1], h.ts_ns);
                }
                Some(rec)
            }
            _ => None,
        }
    }

    fn on_mmap_exit(&mut self, m: &MmapExitEvent) -> Option<MmapRecord> {
        let h = m.header;
        if h.kind == event_kind::KERNEL_MMAP {
            return self.on_kernel_mmap(m);
        }
        let enter = self.pending.remove(&h.tid)?;
        if enter.header.kind != event_kind::MMAP_ENTER {
            return None;
        }
        let mut rec = self.mmap_record(&enter, "mmap", m.ret);
        rec.ts_ns = h.ts_ns;
        rec.error = syscalls::syscall_error(m.ret);
        if rec.error.is_none() && enter.args[2] & syscalls::PROT_EXEC != 0 {
            if let Some(s) = self.call_stacks() {
                s.namer().mapped_code(h.tgid);
            }
        }
        if rec.error.is_none() {
            // /proc/PID/maps names mount points and pseudo files best; the
            // kernel's dentry walk still names files of processes already gone.
            // /proc is read now, maybe well after the call: trusted only where
            // it still shows the file the kernel named then, and not where it
            // says the file was deleted since (the kernel's name is of the call's
            // time; pseudo files, which it cannot name fully, keep /proc's).
            let from_kernel = kernel_path(m);
            let whole = from_kernel.is_some() && m.truncated == 0;
            let leaf = c_str(&m.path[0]);
            rec.path = self
                .mapped_path(h.tgid, m.ret, rec.raw_flags)
                .filter(|p| {
                    !whole || (!leaf.is_empty() && !p.ends_with(" (deleted)") && p.ends_with(&leaf))
                })
                .or(from_kernel);
            // Whatever was mapped in the new range before is gone (MAP_FIXED);
            // without MAP_FIXED the range was free.
            if rec.raw_flags & syscalls::MAP_FIXED != 0 {
                self.unmapped(&enter, m.ret, rec.len, h.ts_ns);
            }
            let mut origin = Origin::new(
                m.ret,
                rec.len,
                rec.raw_flags,
                enter.args[2],
                enter.header.ts_ns,
                h.ts_ns,
            );
            origin.path = rec.path.as_deref().map(|p| self.path_names.intern(p));
            let st = self.state_mut(h.tgid, h.ts_ns);
            st.origins.insert(origin);
        }
        Some(rec)
    }

    /// A `do_mmap` the kernel made on its own (execve's ELF loader...). One made
    /// by an mmap syscall in progress is left to the syscall's richer record.
    fn on_kernel_mmap(&mut self, m: &MmapExitEvent) -> Option<MmapRecord> {
        let h = m.header;
        if self
            .pending
            .get(&h.tid)
            .is_some_and(|e| e.header.kind == event_kind::MMAP_ENTER)
        {
            return None;
        }
        let path = kernel_path(m);
        let mut origin = Origin::new(m.ret, m.len, m.flags, m.prot, h.ts_ns, h.ts_ns);
        origin.set_kernel();
        origin.path = path.as_deref().map(|p| self.path_names.intern(p));
        self.state_mut(h.tgid, h.ts_ns).origins.insert(origin);
        Some(MmapRecord {
            ts_ns: h.ts_ns,
            pid: h.tgid,
            tid: h.tid,
            comm: self.comm_of(h.tgid),
            op: "kernel_mmap",
            addr: hex(m.ret),
            len: m.len,
            prot: syscalls::prot_names(m.prot),
            flags: syscalls::map_flag_names(m.flags),
            fd: -1,
            path,
            error: None,
            raw_flags: m.flags,
        })
    }

    fn mmap_record(&self, s: &SyscallEvent, op: &'static str, start: u64) -> MmapRecord {
        let a = &s.args;
        // mmap(addr, len, prot, flags, fd, off); mremap(old, old_len, new_len, flags, new)
        let (len, prot, flags, fd) = match op {
            "mmap" => (a[1], a[2], a[3], a[4] as i32 as i64),
            "mremap" => (a[2], 0, 0, -1),
            _ => (a[1], 0, 0, -1),
        };
        MmapRecord {
            ts_ns: s.header.ts_ns,
            pid: s.header.tgid,
            tid: s.header.tid,
            comm: self.comm_of(s.header.tgid),
            op,
            addr: hex(start),
            len,
            prot: if op == "mmap" {
                syscalls::prot_names(prot)
            } else {
                String::new()
            },
            flags: if op == "mmap" {
                syscalls::map_flag_names(flags)
            } else {
                Vec::new()
            },
            fd,
            path: None,
            error: None,
            raw_flags: flags,
        }
    }

    /// Notes that `[start, start + len)` of the caller's process stopped being
    /// mapped by the call `enter` began, returning at `exit_ns`.
    fn unmapped(&mut self, enter: &SyscallEvent, start: u64, len: u64, exit_ns: u64) {
        self.unmaps_seen += 1;
        let st = self.state_mut(enter.header.tgid, exit_ns);
        st.add_unmap(Unmap {
            start,
            end: start.saturating_add(len.next_multiple_of(4096)),
            enter_ns: enter.header.ts_ns,
            exit_ns,
        });
    }

    /// The file behind a new mapping, read while the process is surely alive.
    fn mapped_path(&mut self, pid: u32, start: u64, flags: u64) -> Option<String> {
        if flags & syscalls::MAP_ANONYMOUS != 0 && flags & syscalls::MAP_SHARED == 0 {
            return None;
        }
        self.procfs
            .maps(pid)?
            .into_iter()
            .find(|m| m.start == start)
            .map(|m| m.name)
            .filter(|n| !n.is_empty())
    }

    /// The latest mmap, made before the lifetime was first seen, whose range
    /// holds `vm_start` (the nearest starts below it first: smaller mappings may
    /// have been placed inside a larger one).
    fn origin_of(&self, pid: u32, vm_start: u64, first_ns: u64) -> Option<&Origin> {
        self.processes
            .get(&pid)?
            .origins
            .covering(vm_start, first_ns)
    }

    fn describe_origin(o: &Origin) -> String {
        format!(
            "{}({}, {}) at {} ns",
            if o.kernel() { "kernel do_mmap" } else { "mmap" },
            syscalls::map_flag_names(o.flags()).join("|"),
            syscalls::prot_names(o.prot()),
            o.ts_ns
        )
    }

    /// When a lifetime last seen as [start, end), with its last fault at
    /// `last_ns`, stopped being mapped: the first call that unmapped its whole
    /// range, entered after the lifetime was first seen and returning after its
    /// last fault; else the process's end.
    fn unmapped_ns(&self, pid: u32, rec: &Lifetime, last_ns: u64) -> Option<u64> {
        let p = self.processes.get(&pid)?;
        let (start, end) = (rec.info.vm_start, rec.info.vm_end);
        if rec.ended_ns != 0 {
            return Some(rec.ended_ns);
        }
        // In the order the calls were entered: none entered after the
        // earliest return found can return before it.
        let mut first: Option<u64> = None;
        for u in p.unmaps_after(rec.first_ns) {
            if first.is_some_and(|f| u.enter_ns > f) {
                break;
            }
            if u.start <= start && end <= u.end && u.exit_ns >= last_ns {
                first = Some(first.map_or(u.exit_ns, |f| f.min(u.exit_ns)));
            }
        }
        first.or(p.exit_ns)
    }

    /// The range a lifetime last looked up as [start, end) had at the end of its
    /// life: an unmap of its first or last part after it was seen (munmap, an
    /// mmap with MAP_FIXED over it) leaves the kernel's VMA shorter. Calls
    /// entered after `until` (when it ended, if known) changed it no more.
    fn final_range(&self, pid: u32, rec: &Lifetime, until: Option<u64>) -> (u64, u64) {
        let (mut start, mut end) = (rec.info.vm_start, rec.info.vm_end);
        let Some(p) = self.processes.get(&pid) else {
            return (start, end);
        };
        let before_end = |u: &&Unmap| until.is_none_or(|t| u.enter_ns < t);
        for u in p.unmaps_after(rec.first_ns).iter().take_while(before_end) {
            if u.start <= start && start < u.end && u.end < end {
                start = u.end;
            } else if start < u.start && u.start < end && end <= u.end {
                end = u.start;
            }
        }
        (start, end)
    }

    /// Whether a mapping change of `pid` over `addr` was in progress at `ts`:
    /// which mapping served a fault then cannot be known from the timeline.
    fn changing_at(&self, pid: u32, addr: u64, ts: u64) -> bool {
        let Some(p) = self.processes.get(&pid) else {
            return false;
        };
        let in_unmap = p
            .unmaps
            .iter()
            .any(|u| u.start <= addr && addr < u.end && u.enter_ns <= ts && ts <= u.exit_ns);
        in_unmap || p.origins.in_progress_at(addr, ts)
    }

    /// Attributes each fault the kernel could not look up to the one lifetime
    /// that surely held its address at its time. With per-VMA lock sequence
    /// numbers (6.4+) that is exact: a VMA whose vm_lock_seq predates the
    /// fault's mm_lock_seq, and that was unchanged at its last counted fault
    /// after it, held the same range throughout. Without them, from the mmap that
    /// made it (or its first fault) to its last counted fault the VMA only grew,
    /// so what it held at the end it held throughout, unless a mapping change
    /// over the address was in progress. Faults with no such lifetime, or more
    /// than one, stay unknown. Returns how many were attributed per process.
    fn resolve(&self, by_pid: &mut BTreeMap<u32, ProcessRows<'_>>) -> HashMap<u32, u64> {
        let mut resolved: HashMap<u32, u64> = HashMap::new();
        if self.unresolved.is_empty() {
            return resolved;
        }
        // The addresses to resolve, per process: a lifetime over none of them
        // is no candidate, and its mmap history need not be looked up.
        let wanted = self.unresolved_addrs();
        let covers_one = |pid: u32, lo: u64, hi: u64| wanted.any_in(pid, lo, hi);
        let mut by_process: HashMap<u32, Vec<Candidate>> = HashMap::new();
        for (life, rec) in &self.snapshot.vmas {
            // The final range lies within the one last seen.
            if !covers_one(rec.tgid, rec.info.vm_start, rec.info.vm_end) {
                continue;
            }
            let Some(rows) = by_pid.get(&rec.tgid).map(|g| g.group_of(Some(*life))) else {
                continue;
            };
            if rows.is_empty() {
                continue;
            }
            let (start, end) = self.final_range(rec.tgid, rec, None);
            let last_ns = rows.iter().map(|(_, t)| t.last_ns).max().unwrap_or(0);
            let mut c = Candidate {
                life: *life,
                start,
                end,
                // Until the mmap history is looked up, below.
                from_ns: rec.first_ns,
                to_ns: last_ns.max(rec.first_ns),
                lock_seq: rec.lock_seq,
                seen_start: rec.info.vm_start,
                seen_end: rec.info.vm_end,
            };
            if let Some(o) = self.origin_of(rec.tgid, rec.info.vm_start, rec.first_ns) {
                c.from_ns = o.ts_ns;
            }
            by_process.entry(rec.tgid).or_default().push(c);
        }
        let candidates: HashMap<u32, Candidates> = by_process
            .into_iter()
            .map(|(pid, all)| (pid, Candidates::new(all)))
            .collect();
        for u in &self.unresolved {
            let pid = u.header.tgid;
            let ts = u.header.ts_ns;
            let mut holders = candidates.get(&pid).into_iter().flat_map(|c| c.holders(u));
            let (Some(c), None) = (holders.next(), holders.next()) else {
                continue;
            };
            if u.has_mm_seq == 0 && self.changing_at(pid, u.addr, ts) {
                continue;
            }
            let Some(groups) = by_pid.get_mut(&pid) else {
                continue;
            };
            let row = (u.access, u.path);
            let Some(mut from) = groups.take((None, row)) else {
                continue;
            };
            if from.total() > 0 {
                let latency = (u.access & access::NO_ENTRY == 0).then_some(u.latency_ns);
                let mut to = groups.take((Some(c.life), row)).unwrap_or_default();
                from.move_one(&mut to, u.major != 0, latency, ts);
                groups.put((Some(c.life), row), to);
                *resolved.entry(pid).or_default() += 1;
            }
            groups.put((None, row), from);
        }
        resolved
    }

    /// The addresses of the faults waiting to be attributed, per process.
    fn unresolved_addrs(&self) -> AddrsByPid {
        let mut by_pid: HashMap<u32, Vec<u64>> = HashMap::new();
        for u in &self.unresolved {
            by_pid.entry(u.header.tgid).or_default().push(u.addr);
        }
        for addrs in by_pid.values_mut() {
            addrs.sort_unstable();
        }
        AddrsByPid(by_pid)
    }

    /// What the kernel counted for `pid` over the same span as rmaptrace: per
    /// thread, its counters at exit (or at its latest counted fault, if alive:
    /// `live`, summed per process by `live_thread_counts`) minus those when
    /// rmaptrace started following it.
    fn kernel_counts(&self, pid: u32, live: Option<&(u64, u64)>) -> Option<KernelCounts> {
        let p = self.processes.get(&pid);
        let (mut min, mut maj) = p.map(|p| p.exited_threads).unwrap_or((0, 0));
        // Threads alive after the process exited are a new process's (its pid
        // reused).
        let live = live.filter(|_| p.is_none_or(|p| p.exit_ns.is_none()));
        if let Some((lmin, lmaj)) = live {
            min += lmin;
            maj += lmaj;
        }
        let known = live.is_some() || p.is_some_and(|p| p.threads_exited > 0);
        known.then_some(KernelCounts {
            minflt: min,
            majflt: maj,
        })
    }

    /// The kernel's counts of each process's live threads since followed, in one
    /// pass over the snapshot's thread table.
    fn live_thread_counts(&self) -> HashMap<u32, (u64, u64)> {
        let mut by_pid: HashMap<u32, (u64, u64)> = HashMap::new();
        for (_, t) in &self.snapshot.threads {
            let e = by_pid.entry(t.tgid).or_default();
            e.0 += t.last_min.saturating_sub(t.base_min);
            e.1 += t.last_maj.saturating_sub(t.base_maj);
        }
        by_pid
    }

    /// A lifetime's full description; its kind, final range and end come from
    /// its span (computed once, `end_superseded` applied).
    fn vma_summary(
        &self,
        pid: u32,
        sp: &Span,
        life: Option<(u64, &Lifetime)>,
        rows: &[((u8, u8), &FaultTotals)],
    ) -> VmaSummary {
        let mut totals = FaultTotals::default();
        let mut paths: SmallMap<&'static str, u64> = SmallMap::default();
        let mut paths_major: SmallMap<&'static str, u64> = SmallMap::default();
        let info = life.map(|(_, r)| &r.info);
        let kind = sp.kind;
        let vm_flags = info.map_or(0, |i| i.vm_flags);
        let name = |acc: u8, path_id: u8, major: bool| {
            path::observed_name(path_id)
                .unwrap_or_else(|| path::derive(kind, vm_flags, acc, major, self.swap_in_use))
        };
        for ((acc, path_id), t) in rows {
            totals.merge(t);
            if t.minor > 0 {
                *paths.entry_or_default(name(*acc, *path_id, false)) += t.minor;
            }
            if t.major > 0 {
                let path = name(*acc, *path_id, true);
                *paths.entry_or_default(path) += t.major;
                *paths_major.entry_or_default(path) += t.major;
            }
        }
        // A stack's path is its row's: a row of major faults only (swap-ins,
        // reads from disk) has the major path.
        let stacks = self.stacks.as_ref().map_or_else(Vec::new, |s| {
            let (life, at_ns) = life.map_or((0, u64::MAX), |(id, r)| (id, r.first_ns));
            s.borrow_mut().sites(pid, life, at_ns, |k| {
                let major = rows
                    .iter()
                    .find(|((acc, path_id), _)| (*acc, *path_id) == (k.access, k.path))
                    .is_some_and(|(_, t)| t.minor == 0 && t.major > 0);
                name(k.access, k.path, major)
            })
        });
        let (handler, module) = info
            .map(|i| self.handler_of(i.fault_fn.addr()))
            .unwrap_or((None, None));
        // The origin is found by the start the VMA had when last looked up; the
        // row shows the range it had at the end of its life.
        let seen_start = info.map(|i| i.vm_start).unwrap_or(0);
        let first_ns = life.map(|(_, r)| r.first_ns).unwrap_or(0);
        let origin = self
            .origin_of(pid, seen_start, first_ns.max(1))
            .filter(|_| life.is_some());
        let has_file = info.is_some_and(Vma::has_file);
        let file = origin
            .and_then(|o| o.path.as_deref())
            .filter(|_| has_file)
            .map(str::to_string)
            .or_else(|| {
                let (id, _) = life?;
                self.processes
                    .get(&pid)
                    .and_then(|p| p.names.get(&id).cloned())
                    .filter(|n| !n.is_empty())
            })
            .or_else(|| info.and_then(Vma::name).map(str::to_string));
        let (vm_start, vm_end) = (sp.start, sp.end);
        VmaSummary {
            start: hex(vm_start),
            end: hex(vm_end),
            kind: kind.as_str(),
            handler,
            module,
            file,
            device: info.and_then(char_device),
            prot: info.map(|i| prot_string(i.vm_flags)).unwrap_or_default(),
            origin: origin.map(Self::describe_origin),
            setup: info.map(|i| Setup {
                anon_vma: life.and_then(|(id, rec)| self.anon_vma_of(pid, id, rec)),
                ..self.setup_of(pid, i, first_ns, origin)
            }),
            life: life.map(|(id, _)| id),
            first_seen_ns: life.map(|(_, r)| r.first_ns),
            mapped_ns: origin.map(|o| o.ts_ns),
            unmapped_ns: sp.unmapped.map(NonZeroU64::get),
            faults: totals.total(),
            minor: totals.minor,
            major: totals.major,
            paths,
            paths_major,
            latency_sum_ns: totals.latency_sum_ns,
            latency_ns: Latency {
                p50: totals.percentile(0.5),
                p99: totals.percentile(0.99),
                max: (totals.timed > 0).then_some(totals.latency_max_ns),
                samples: totals.timed,
            },
            handler_time: (totals.handler_calls > 0).then(|| HandlerTime {
                calls: totals.handler_calls,
                total_ns: totals.handler_ns,
                mean_ns: totals.handler_ns / totals.handler_calls,
            }),
            start_addr: vm_start,
            end_addr: vm_end,
            key: life.map(|(id, _)| id).unwrap_or(0),
            latency_hist: totals.hist,
            stacks,
        }
    }

    /// When a row was first seen: its lifetime's first sighting, or (rows
    /// without one) its latest fault. Which of two processes with one pid a row
    /// is of follows from it.
    fn row_time(&self, key: &FaultKey, totals: &FaultTotals) -> u64 {
        match row_life(key).and_then(|l| self.snapshot.record(l)) {
            Some(r) => r.first_ns,
            None => totals.last_ns,
        }
    }

    /// Whether something of `pid` seen at `at` (a row's lifetime's first
    /// sighting, see [`row_time`]) belongs to the process that has the pid now.
    /// A pid is reused only after its process exited: what was seen by then is
    /// the exited process's, and is left out once that process was retired and
    /// until its rows are freed.
    fn is_current(&self, pid: u32, at: u64) -> bool {
        if let Some(&exit) = self.retired_until.get(&pid) {
            return at > exit;
        }
        // Not retired yet: its rows only, a new process's wait for it.
        match self.processes.get(&pid).and_then(|p| p.exit_ns) {
            Some(exit) => at <= exit,
            None => true,
        }
    }

    /// The summaries of the processes in the latest snapshot (only those in
    /// `only`, when given) and of the targets, retired processes left out.
    fn process_summaries(
        &self,
        only: Option<&[u32]>,
        keep: Keep,
        sink: &mut VmaSink<'_>,
    ) -> Vec<ProcessSummary> {
        let only: Option<std::collections::HashSet<u32>> =
            only.map(|o| o.iter().copied().collect());
        let wanted = |pid: &u32| only.as_ref().is_none_or(|o| o.contains(pid));
        let mut by_pid: BTreeMap<u32, ProcessRows<'_>> = BTreeMap::new();
        for row in self.snapshot.faults.iter().filter(|(k, _)| wanted(&k.tgid)) {
            let (key, totals) = row;
            if !self.is_current(key.tgid, self.row_time(key, totals)) {
                continue;
            }
            by_pid.entry(key.tgid).or_default().push(row);
        }
        let resolved = self.resolve(&mut by_pid);
        let live_threads = self.live_thread_counts();
        let overflow: HashMap<u32, _> = self.snapshot.overflow.iter().copied().collect();
        let mut pids: Vec<u32> = by_pid.keys().copied().collect();
        pids.extend(overflow.keys());
        pids.extend(
            self.processes
                .iter()
                .filter(|(_, p)| p.targeted || p.ended.lifetimes > 0 || !p.unfaulted.is_empty())
                .map(|(pid, _)| *pid),
        );
        // A retired pid is listed again only for a new process that got it.
        pids.retain(|p| {
            wanted(p) && (!self.retired_until.contains_key(p) || self.processes.contains_key(p))
        });
        pids.sort_unstable();
        pids.dedup();

        let mut processes = Vec::new();
        for pid in pids {
            let empty = ProcessRows::default();
            let groups = by_pid.get(&pid).unwrap_or(&empty);
            let mut by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
            let mut faults = FaultCounts::default();
            // One row per mapping lifetime: a VMA that grew, shrank or had part
            // of it split off keeps its row; a new VMA (the split-off part, a
            // mapping replaced at the same address) gets its own. First as
            // spans (counts, range, times), so that a process with 200k
            // mappings is counted and ordered without describing each.
            let mut spans: Vec<Span> = groups
                .lives()
                .filter_map(|(life, at)| self.span(pid, life, &groups.group(life, at)))
                .collect();
            for sp in &spans {
                *by_kind.entry(sp.kind.as_str()).or_default() += sp.minor + sp.major;
                faults.minor += sp.minor;
                faults.major += sp.major;
            }
            spans.sort_unstable_by_key(|sp| (sp.start, sp.first_seen, sp.life()));
            end_superseded(&mut spans);
            let describe = |sp: &Span| {
                let life = sp.rows.map(NonZeroU64::get);
                self.describe(pid, sp, &groups.group_of(life))
            };
            let mut busiest: Vec<&Span> = spans.iter().collect();
            if busiest.len() > keep.0 {
                busiest.select_nth_unstable_by_key(keep.0, |sp| {
                    (std::cmp::Reverse(sp.minor + sp.major), sp.start, sp.life())
                });
                busiest.truncate(keep.0);
                busiest.sort_unstable_by_key(|sp| (sp.start, sp.first_seen, sp.life()));
            }
            let unfaulted = self.unfaulted_rows(pid, &spans);
            let mut vmas: Vec<VmaSummary> = busiest.into_iter().map(describe).collect();
            if !unfaulted.is_empty() {
                vmas.extend(unfaulted.iter().cloned());
                vmas.sort_by_key(|v| v.start_addr);
            }
            let vmas_dropped = spans.len() + unfaulted.len() - vmas.len();
            // Mappings that ended earlier, already written: their sums.
            let ended = self.processes.get(&pid).map(|p| &p.ended);
            if let Some(e) = ended {
                faults.minor += e.minor;
                faults.major += e.major;
                for (k, n) in &e.by_kind {
                    *by_kind.entry(k).or_default() += n;
                }
            }
            // Faults that found the per-VMA table full: counted, kind unknown.
            let t = overflow.get(&pid).copied().unwrap_or_default();
            if t.minor + t.major > 0 {
                *by_kind.entry(Kind::Unknown.as_str()).or_default() += t.minor + t.major;
                faults.minor += t.minor;
                faults.major += t.major;
            }
            faults.total = faults.minor + faults.major;
            let kernel = self.kernel_counts(pid, live_threads.get(&pid));
            let unseen = kernel
                .as_ref()
                .map(|k| (k.minflt + k.majflt) as i64 - faults.total as i64);
            let exited = self
                .processes
                .get(&pid)
                .is_some_and(|p| p.exit_ns.is_some())
                || !self.procfs.alive(pid);
            let summary = ProcessSummary {
                pid,
                comm: self.comm_of(pid),
                cgroup: self.cgroup_of(pid),
                resolved_later: resolved.get(&pid).copied().unwrap_or(0),
                faults,
                by_kind,
                kernel,
                unseen,
                exited,
                vmas,
                vmas_dropped,
                vmas_ended: ended.map_or(0, |e| e.lifetimes),
                ended_late: ended.map_or(0, |e| e.late),
                written: false,
            };
            // Every mapping, described one at a time for the export.
            sink(&summary, &mut spans.iter().map(describe).chain(unfaulted));
            processes.push(summary);
        }
        processes
    }

    /// A lifetime's counts, final range and times; None when it counted nothing.
    fn span(&self, pid: u32, life: Option<u64>, rows: &[((u8, u8), &FaultTotals)]) -> Option<Span> {
        let (minor, major) = rows
            .iter()
            .fold((0, 0), |(mi, ma), (_, t)| (mi + t.minor, ma + t.major));
        if minor + major == 0 {
            return None;
        }
        let rec = life.and_then(|l| self.snapshot.record(l));
        let last_ns = rows.iter().map(|(_, t)| t.last_ns).max().unwrap_or(0);
        let unmapped = rec.and_then(|r| self.unmapped_ns(pid, r, last_ns));
        let (start, end) = rec.map_or((0, 0), |r| self.final_range(pid, r, unmapped));
        let life = life.and_then(NonZeroU64::new);
        Some(Span {
            rows: life,
            described: rec.is_some(),
            kind: rec.map_or(Kind::Unknown, |r| self.kind_of(&r.info)),
            minor,
            major,
            start,
            end,
            first_seen: rec.and_then(|r| NonZeroU64::new(r.first_ns)),
            unmapped: unmapped.and_then(NonZeroU64::new),
        })
    }

    /// A span described in full: names, origin, paths, latency.
    fn describe(&self, pid: u32, sp: &Span, rows: &[((u8, u8), &FaultTotals)]) -> VmaSummary {
        match sp
            .life()
            .and_then(|l| self.snapshot.record(l.get()).map(|r| (l.get(), r)))
        {
            Some(l) => self.vma_summary(pid, sp, Some(l), rows),
            None => {
                let mut v = self.vma_summary(pid, sp, None, rows);
                v.file = Some("(no VMA found at fault time)".into());
                v
            }
        }
    }

    /// [`Trace::retire_exited_into`], with what it wrote: each retired process
    /// with all its mappings.
    #[cfg(test)]
    pub fn retire_exited(&mut self) -> (Vec<Retired>, Vec<ProcessSummary>) {
        let mut written = Vec::new();
        let gone = self.retire_exited_into(
            &mut |p, vmas| {
                let mut p = p.clone();
                p.vmas = vmas.collect();
                p.vmas_dropped = 0;
                written.push(p);
            },
            u64::MAX,
        );
        (gone, written)
    }

    /// Processes whose last thread exited, with everything the kernel counted
    /// for them in the latest snapshot, each written whole to `sink`: their
    /// totals and a trimmed copy are kept here and their state dropped, and the
    /// caller frees their kernel rows (the returned lifetimes and pids), so that
    /// tables and memory do not grow with every process a long trace sees.
    ///
    /// The caller frees the returned rows before the next snapshot is taken:
    /// the next retirement then forgets these pids (a later process with one of
    /// them is a new process).
    ///
    /// Only processes that exited before `settled_ns` go: the threads of a
    /// process exit at nearly the same moment but one at a time, and more than
    /// one may see the last one's exit (its count of live threads read after
    /// the decrement), so the first exit seen is not the last to come. The
    /// caller gives the time the previous snapshot was read: every thread's
    /// exit record has been applied by then, and its counters row is gone.
    pub fn retire_exited_into(&mut self, sink: &mut VmaSink<'_>, settled_ns: u64) -> Vec<Retired> {
        let freed = std::mem::take(&mut self.retired_last);
        self.forget_retired(&freed);
        let exited: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, p)| p.exit_ns.is_some_and(|t| t < settled_ns))
            .map(|(pid, _)| *pid)
            .collect();
        let leaving: std::collections::HashSet<u32> = exited.iter().copied().collect();
        if exited.is_empty() {
            return Vec::new();
        }
        let summaries = self.process_summaries(Some(&exited), Keep(KEEP_VMAS), sink);
        // What the summaries counted is what is freed: the exited processes'
        // own rows and lifetimes (a reused pid's later ones are not theirs).
        let exited_own = |pid: u32, at: u64| leaving.contains(&pid) && self.is_current(pid, at);
        let mut lives_of: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
        for (life, r) in &self.snapshot.vmas {
            if exited_own(r.tgid, r.first_ns) {
                lives_of
                    .entry(r.tgid)
                    .or_default()
                    .push((*life, r.info.vma));
            }
        }
        let mut rows_of: HashMap<u32, Vec<FaultKey>> = HashMap::new();
        for (key, t) in &self.snapshot.faults {
            if exited_own(key.tgid, self.row_time(key, t)) {
                rows_of.entry(key.tgid).or_default().push(*key);
            }
        }
        let mut summaries: HashMap<u32, ProcessSummary> =
            summaries.into_iter().map(|s| (s.pid, s)).collect();
        let mut out = Vec::new();
        for pid in exited {
            let lives = lives_of.remove(&pid).unwrap_or_default();
            if let Some(s) = summaries.remove(&pid) {
                self.exited_totals.add(&s);
                self.keep(s);
            }
            for (l, _) in &lives {
                self.event_vmas.remove(l);
            }
            let state = self.processes.remove(&pid);
            let exit_ns = state.as_ref().and_then(|s| s.exit_ns).unwrap_or(0);
            self.retired_until.insert(pid, exit_ns);
            self.unresolved
                .retain(|u| u.header.tgid != pid || u.header.ts_ns > exit_ns);
            // A process that got the pid since is the pid's process now.
            if let Some(next) = self.newborn.remove(&pid) {
                self.processes.insert(pid, next);
            }
            out.push(Retired {
                pid,
                rows: rows_of.remove(&pid).unwrap_or_default(),
                lives,
                counted: Vec::new(),
                whole: true,
            });
        }
        self.retired_last = out.iter().map(|g| g.pid).collect();
        self.path_names.prune();
        self.event_files.prune();
        out
    }

    /// What the model holds, for the debug log of a long trace.
    pub fn held(&self) -> String {
        let unmaps: usize = self.processes.values().map(|p| p.unmaps.len()).sum();
        let origins: usize = self.processes.values().map(|p| p.origins.len()).sum();
        format!(
            "{} processes ({} newborn, {} unmaps, {} origins, {} file names), {} syscalls pending, {} unresolved, {} kept, {} event VMAs",
            self.processes.len(),
            self.newborn.len(),
            unmaps,
            origins,
            self.path_names.len(),
            self.pending.len(),
            self.unresolved.len(),
            self.kept.len(),
            self.event_vmas.len()
        )
    }

    /// How many processes were seen exiting so far.
    pub fn group_exits(&self) -> u64 {
        self.group_exits
    }

    /// Whether a process exited and waits to be retired.
    pub fn has_exited(&self) -> bool {
        self.processes.values().any(|p| p.exit_ns.is_some())
    }

    /// Keeps an exited process's summary (already trimmed to its `KEEP_VMAS`
    /// busiest mappings) if it is among the busiest or the latest, dropping one
    /// that no longer is.
    fn keep(&mut self, mut p: ProcessSummary) {
        p.written = true;
        self.kept.push(p);
        if self.kept.len() > KEEP_BUSIEST + KEEP_LATEST {
            // Not among the latest: the least busy of the older ones goes.
            let older = self.kept.len() - KEEP_LATEST;
            if let Some(i) = (0..older).min_by_key(|&i| self.kept[i].faults.total) {
                self.kept.remove(i);
            }
        }
    }

    /// The kernel rows of `pids` are gone: a later process with one of those pids
    /// is a new process.
    fn forget_retired(&mut self, pids: &[u32]) {
        for pid in pids {
            self.retired_until.remove(pid);
        }
    }

    /// The trace so far: every process still traced, the exited ones kept in
    /// memory, and totals over all of them.
    #[cfg(test)]
    pub fn summary(&self, now_ns: u64) -> Summary {
        self.summary_with(now_ns, Keep::ALL, &mut |_, _| {})
    }

    /// The trace so far, each process keeping `keep` of its mappings in memory
    /// and written whole to `sink` (the end of a trace: every process still
    /// traced goes to the export).
    pub fn summary_with(&self, now_ns: u64, keep: Keep, sink: &mut VmaSink<'_>) -> Summary {
        let mut processes = self.process_summaries(None, keep, sink);
        let mut totals = self.exited_totals.clone();
        for p in &processes {
            totals.add(p);
        }
        processes.extend(self.kept.iter().cloned());
        processes.sort_by(|a, b| b.faults.total.cmp(&a.faults.total).then(a.pid.cmp(&b.pid)));
        let counters = self.snapshot.counters;
        Summary {
            kind: "summary",
            duration_ns: now_ns.saturating_sub(self.start_ns),
            events_lost: counters.events_lost,
            backend: self.backend,
            paths_source: self.paths_source,
            counters,
            tables_full: counters.tables_full().into_iter().collect(),
            limits: self.limits.clone(),
            latency_sample_period: self.latency_sample_period,
            end_reason: None,
            totals,
            call_sites: self.stacks.as_ref().map(|s| s.borrow().totals()),
            processes,
        }
    }
}

/// Two VMAs of one process never overlap at one instant: a lifetime still
/// marked mapped whose last known range overlaps a lifetime first seen later had
/// changed (split, or unmapped unseen) before that one appeared, so it ended by
/// then at the latest.
///
/// `spans` is sorted by start address. The lifetimes overlapping one are those
/// after it that start before its end, and those before it whose end (the
/// running maximum, `reach`) passes its start: the walk stops where no other
/// can, so it costs the overlaps, not the process's whole list.
fn end_superseded(spans: &mut [Span]) {
    let reach: Vec<u64> = spans
        .iter()
        .scan(0, |hi, sp| {
            *hi = sp.end.max(*hi);
            Some(*hi)
        })
        .collect();
    for i in 0..spans.len() {
        let (Some(first), None) = (spans[i].first_seen, spans[i].unmapped) else {
            continue;
        };
        let (s, e) = (spans[i].start, spans[i].end);
        let after = spans[i + 1..].iter().take_while(|o| o.start < e);
        let before = (0..i)
            .rev()
            .take_while(|&j| reach[j] > s)
            .map(|j| &spans[j])
            .filter(|o| o.end > s);
        let superseded = after
            .chain(before)
            .filter(|o| o.life().is_some())
            .filter_map(|o| o.first_seen)
            .filter(|&f| f > first)
            .min();
        if superseded.is_some() {
            spans[i].unmapped = superseded;
        }
    }
}

mod candidates;
mod ended;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
