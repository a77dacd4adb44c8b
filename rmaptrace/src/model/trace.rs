//! The state of one trace: what the ring buffer told (mappings, names, exits) plus
//! the latest snapshot of the in-kernel counts, and the attribution that joins them.
use std::collections::{BTreeMap, HashMap};

use rmaptrace_common::{
    event_kind, vma_status, FaultEvent, MmapExitEvent, SyscallEvent, VmaInfo, VmaKey,
};
use serde::Serialize;

use super::{
    kind::{char_device, classify, prot_string, Kind},
    path,
    snapshot::{FaultTotals, Snapshot},
    summary::{
        FaultCounts, HandlerTime, KernelCounts, Latency, ProcessSummary, Summary, VmaSummary,
    },
    syscalls::{self, MmapRecord},
};
use crate::{
    bpf::events::{c_str, kernel_path, Event},
    kernel::{kallsyms::Kallsyms, procfs::ProcSource},
};

/// One completed fault as exported with `--events`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FaultRecord {
    #[serde(rename = "type")]
    pub kind_tag: &'static str,
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub addr: String,
    pub ip: String,
    pub write: bool,
    pub user: bool,
    pub kind: &'static str,
    pub handler: Option<String>,
    pub module: Option<String>,
    pub path: &'static str,
    pub major: bool,
    pub latency_ns: Option<u64>,
    pub vma_start: Option<String>,
}

/// A record to stream to the export as it happens.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Mmap(MmapRecord),
    Fault(FaultRecord),
}

/// An mmap call, as much of it as a VMA's `origin` needs (32 bytes, not a record:
/// a process may make 100k of them).
#[derive(Clone, Copy)]
struct Origin {
    len: u64,
    flags: u64,
    prot: u64,
    ts_ns: u64,
    /// Made by the kernel's do_mmap outside any mmap syscall.
    kernel: bool,
}

#[derive(Default)]
struct ProcessState {
    comm: String,
    /// minflt/majflt when tracing started, for processes that existed before.
    baseline: (u64, u64),
    exit_minflt: u64,
    exit_majflt: u64,
    threads_exited: u32,
    targeted: bool,
    /// Successful mmaps by start address: where each mapping came from.
    origins: BTreeMap<u64, Origin>,
    /// vm_start → name from /proc/PID/maps.
    names: HashMap<u64, String>,
}

pub struct Trace {
    symbols: Kallsyms,
    procfs: Box<dyn ProcSource>,
    start_ns: u64,
    processes: HashMap<u32, ProcessState>,
    /// Syscall entry records waiting for their exit, by tid.
    pending: HashMap<u32, SyscallEvent>,
    snapshot: Snapshot,
    /// VMA descriptions carried by fault records, for the records that carry none.
    event_vmas: HashMap<VmaKey, VmaInfo>,
    backend: &'static str,
    paths_source: &'static str,
    limits: Vec<String>,
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
            snapshot: Snapshot::default(),
            event_vmas: HashMap::new(),
            backend: "tracepoint",
            paths_source: "derived",
            limits: Vec::new(),
        }
    }

    /// The counting backend and whether paths are observed or derived.
    pub fn set_backend(&mut self, backend: &'static str, paths: &'static str) {
        self.backend = backend;
        self.paths_source = paths;
    }

    pub fn set_limits(&mut self, limits: Vec<String>) {
        self.limits = limits;
    }

    /// A process rmaptrace was asked to trace; `baseline` says whether it existed
    /// before tracing started (its counters are then taken relative to now).
    pub fn add_target(&mut self, pid: u32, baseline: bool) {
        let stat = if baseline {
            self.procfs.stat(pid)
        } else {
            None
        };
        let st = self.processes.entry(pid).or_default();
        st.targeted = true;
        if let Some(s) = stat {
            st.baseline = (s.minflt, s.majflt);
            st.comm = s.comm;
        }
    }

    /// Records the counters of every process now, for system-wide traces.
    pub fn baseline_all(&mut self) {
        for pid in self.procfs.pids() {
            if let Some(s) = self.procfs.stat(pid) {
                let st = self.processes.entry(pid).or_default();
                st.baseline = (s.minflt, s.majflt);
                st.comm = s.comm;
            }
        }
    }

    pub fn set_snapshot(&mut self, snap: Snapshot) {
        self.snapshot = snap;
        self.refresh_names();
    }

    /// Names VMAs from /proc/PID/maps while their process is alive; one read per
    /// process that has an unnamed VMA.
    fn refresh_names(&mut self) {
        let mut wanted: HashMap<u32, Vec<u64>> = HashMap::new();
        for (key, _) in &self.snapshot.vmas {
            let named = self
                .processes
                .get(&key.tgid)
                .is_some_and(|p| p.names.contains_key(&key.vm_start));
            if !named {
                wanted.entry(key.tgid).or_default().push(key.vm_start);
            }
        }
        for (pid, starts) in wanted {
            let Some(maps) = self.procfs.maps(pid) else {
                continue;
            };
            let st = self.processes.entry(pid).or_default();
            for start in starts {
                if let Some(m) = maps.iter().find(|m| m.start == start) {
                    st.names.insert(start, m.name.clone());
                }
            }
        }
    }

    fn comm_of(&self, pid: u32) -> String {
        match self.processes.get(&pid) {
            Some(p) if !p.comm.is_empty() => p.comm.clone(),
            _ => self.procfs.stat(pid).map(|s| s.comm).unwrap_or_default(),
        }
    }

    fn handler_of(&self, fault_fn: u64) -> (Option<String>, Option<String>) {
        match self.symbols.exact(fault_fn) {
            Some(sym) => (Some(sym.name.clone()), sym.module.clone()),
            None if fault_fn != 0 => (Some(hex(fault_fn)), None),
            None => (None, None),
        }
    }

    fn kind_of(&self, info: &VmaInfo) -> Kind {
        let handler = self.symbols.exact(info.fault_fn).map(|s| s.name.as_str());
        classify(info, handler)
    }

    pub fn on_event(&mut self, event: Event) -> Option<Record> {
        match event {
            Event::Fault(f) => Some(Record::Fault(self.fault_record(&f))),
            Event::Syscall(s) => self.on_syscall(s).map(Record::Mmap),
            Event::MmapExit(m) => self.on_mmap_exit(&m).map(Record::Mmap),
            Event::Exit(e) => {
                let st = self.processes.entry(e.header.tgid).or_default();
                st.exit_minflt += e.min_flt;
                st.exit_majflt += e.maj_flt;
                st.threads_exited += 1;
                if e.header.tid == e.header.tgid || st.comm.is_empty() {
                    st.comm = c_str(&e.comm);
                }
                None
            }
            Event::Task(t) => {
                let comm = c_str(&t.comm);
                match t.header.kind {
                    event_kind::EXEC => {
                        let st = self.processes.entry(t.header.tgid).or_default();
                        st.comm = comm;
                        if t.other == 1 {
                            // Traced from this exec on (a --comm match): count from here.
                            st.baseline = (t.min_flt, t.maj_flt);
                            st.targeted = true;
                        }
                    }
                    _ => {
                        // A forked child shares its parent's mappings, so it inherits
                        // their origins and names too.
                        let (origins, names) = self
                            .processes
                            .get(&t.header.tgid)
                            .map(|p| (p.origins.clone(), p.names.clone()))
                            .unwrap_or_default();
                        let child = self.processes.entry(t.other).or_default();
                        if child.comm.is_empty() {
                            child.comm = comm;
                        }
                        child.origins.extend(origins);
                        child.names.extend(names);
                    }
                }
                None
            }
        }
    }

    /// The VMA of a fault record: carried by the record when the probe had it (the
    /// first fault on every VMA does), else remembered from an earlier record or a
    /// snapshot of the VMA table.
    fn vma_of_event(&mut self, f: &FaultEvent) -> Option<VmaInfo> {
        if f.vma_status != vma_status::FOUND {
            return None;
        }
        let key = VmaKey {
            tgid: f.header.tgid,
            ident: f.ident,
            vm_start: f.vm_start,
        };
        if f.vma.vm_end != 0 {
            self.event_vmas.insert(key, f.vma);
            return Some(f.vma);
        }
        self.event_vmas.get(&key).copied().or_else(|| {
            self.snapshot
                .vmas
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
        })
    }

    fn fault_record(&mut self, f: &FaultEvent) -> FaultRecord {
        use rmaptrace_common::access;
        let found = f.vma_status == vma_status::FOUND;
        let vma = self.vma_of_event(f);
        let kind = match &vma {
            Some(v) => self.kind_of(v),
            None => Kind::Unknown,
        };
        let (handler, module) = match &vma {
            Some(v) => self.handler_of(v.fault_fn),
            None => (None, None),
        };
        let vm_flags = vma.map(|v| v.vm_flags).unwrap_or(0);
        let path = path::observed_name(f.path)
            .unwrap_or_else(|| path::derive(kind, vm_flags, f.access, f.major != 0));
        FaultRecord {
            kind_tag: "fault",
            ts_ns: f.header.ts_ns,
            pid: f.header.tgid,
            tid: f.header.tid,
            addr: hex(f.addr),
            ip: hex(f.ip),
            write: f.access & access::WRITE != 0,
            user: f.access & (access::KERNEL | access::NO_ENTRY) == 0,
            kind: kind.as_str(),
            handler,
            module,
            path,
            major: f.major != 0,
            latency_ns: (f.access & access::NO_ENTRY == 0).then_some(f.latency_ns),
            vma_start: found.then(|| hex(f.vm_start)),
        }
    }

    fn on_syscall(&mut self, s: SyscallEvent) -> Option<MmapRecord> {
        let h = s.header;
        match h.kind {
            event_kind::MMAP_ENTER | event_kind::MREMAP_ENTER => {
                self.pending.insert(h.tid, s);
                None
            }
            event_kind::MUNMAP => Some(self.mmap_record(&s, "munmap", s.args[0])),
            event_kind::MREMAP_EXIT => {
                let enter = self.pending.remove(&h.tid)?;
                let mut rec = self.mmap_record(&enter, "mremap", s.args[0]);
                rec.ts_ns = h.ts_ns;
                rec.error = syscalls::syscall_error(s.args[0]);
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
        let mut rec = self.mmap_record(&enter, "mmap", m.ret);
        rec.ts_ns = h.ts_ns;
        rec.error = syscalls::syscall_error(m.ret);
        if rec.error.is_none() {
            // /proc/PID/maps names mount points and pseudo files best; the
            // kernel's dentry walk still names files of processes already gone.
            rec.path = self
                .mapped_path(h.tgid, m.ret, rec.raw_flags)
                .or_else(|| kernel_path(m));
            if let Some(p) = &rec.path {
                self.processes
                    .entry(h.tgid)
                    .or_default()
                    .names
                    .entry(m.ret)
                    .or_insert_with(|| p.clone());
            }
        }
        if rec.error.is_none() {
            let origin = Origin {
                len: rec.len,
                flags: rec.raw_flags,
                prot: enter.args[2],
                ts_ns: rec.ts_ns,
                kernel: false,
            };
            let st = self.processes.entry(h.tgid).or_default();
            st.origins.insert(m.ret, origin);
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
        let st = self.processes.entry(h.tgid).or_default();
        st.origins.insert(
            m.ret,
            Origin {
                len: m.len,
                flags: m.flags,
                prot: m.prot,
                ts_ns: h.ts_ns,
                kernel: true,
            },
        );
        if let Some(p) = &path {
            st.names.entry(m.ret).or_insert_with(|| p.clone());
        }
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

    /// The mmap whose range holds `vm_start`: the nearest starts below it first
    /// (a few, as smaller mappings may have been placed inside a larger one).
    fn origin_of(&self, pid: u32, vm_start: u64) -> Option<String> {
        let p = self.processes.get(&pid)?;
        p.origins
            .range(..=vm_start)
            .rev()
            .take(64)
            .find(|(start, o)| vm_start < *start + o.len)
            .map(|(_, o)| {
                format!(
                    "{}({}, {}) at {} ns",
                    if o.kernel { "kernel do_mmap" } else { "mmap" },
                    syscalls::map_flag_names(o.flags).join("|"),
                    syscalls::prot_names(o.prot),
                    o.ts_ns
                )
            })
    }

    fn kernel_counts(&self, pid: u32) -> Option<KernelCounts> {
        let p = self.processes.get(&pid);
        let (b_min, b_maj) = p.map(|p| p.baseline).unwrap_or((0, 0));
        let (min, maj) = match self.procfs.stat(pid) {
            Some(s) => (s.minflt, s.majflt),
            None => {
                let p = p.filter(|p| p.threads_exited > 0)?;
                (p.exit_minflt, p.exit_majflt)
            }
        };
        Some(KernelCounts {
            minflt: min.saturating_sub(b_min),
            majflt: maj.saturating_sub(b_maj),
        })
    }

    fn vma_summary(
        &self,
        pid: u32,
        vm_start: u64,
        info: Option<VmaInfo>,
        rows: &[(u8, u8, &FaultTotals)],
    ) -> VmaSummary {
        let mut totals = FaultTotals::default();
        let mut paths: BTreeMap<&'static str, u64> = BTreeMap::new();
        let (kind, vm_flags) = match &info {
            Some(i) => (self.kind_of(i), i.vm_flags),
            None => (Kind::Unknown, 0),
        };
        for (acc, path_id, t) in rows {
            totals.merge(t);
            let name = |major| {
                path::observed_name(*path_id)
                    .unwrap_or_else(|| path::derive(kind, vm_flags, *acc, major))
            };
            if t.minor > 0 {
                *paths.entry(name(false)).or_default() += t.minor;
            }
            if t.major > 0 {
                *paths.entry(name(true)).or_default() += t.major;
            }
        }
        let (handler, module) = info
            .map(|i| self.handler_of(i.fault_fn))
            .unwrap_or((None, None));
        let file = self
            .processes
            .get(&pid)
            .and_then(|p| p.names.get(&vm_start).cloned())
            .filter(|n| !n.is_empty())
            .or_else(|| {
                info.filter(|i| i.file != 0)
                    .map(|i| c_str(&i.name))
                    .filter(|n| !n.is_empty())
            });
        VmaSummary {
            start: hex(vm_start),
            end: hex(info.map(|i| i.vm_end).unwrap_or(vm_start)),
            kind: kind.as_str(),
            handler,
            module,
            file,
            device: info.as_ref().and_then(char_device),
            prot: info.map(|i| prot_string(i.vm_flags)).unwrap_or_default(),
            origin: self.origin_of(pid, vm_start),
            faults: totals.total(),
            minor: totals.minor,
            major: totals.major,
            paths,
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
            latency_hist: totals.hist,
        }
    }

    pub fn summary(&self, now_ns: u64) -> Summary {
        // pid → (vm_start, ident) (None: no VMA found) → rows
        type Rows<'a> = Vec<(u8, u8, &'a FaultTotals)>;
        let mut by_pid: BTreeMap<u32, BTreeMap<Option<(u64, u32)>, Rows>> = BTreeMap::new();
        let descriptions: HashMap<VmaKey, VmaInfo> = self.snapshot.vmas.iter().copied().collect();
        for (key, totals) in &self.snapshot.faults {
            let vma = (key.vma_status == vma_status::FOUND).then_some((key.vm_start, key.ident));
            by_pid
                .entry(key.tgid)
                .or_default()
                .entry(vma)
                .or_default()
                .push((key.access, key.path, totals));
        }
        let overflow: HashMap<u32, _> = self.snapshot.overflow.iter().copied().collect();
        let mut pids: Vec<u32> = by_pid.keys().copied().collect();
        pids.extend(overflow.keys());
        pids.extend(
            self.processes
                .iter()
                .filter(|(_, p)| p.targeted)
                .map(|(pid, _)| *pid),
        );
        pids.sort_unstable();
        pids.dedup();

        let mut processes = Vec::new();
        for pid in pids {
            let empty = BTreeMap::new();
            let groups = by_pid.get(&pid).unwrap_or(&empty);
            let mut vmas = Vec::new();
            let mut by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
            let mut faults = FaultCounts::default();
            // Rows are keyed by vm_start at fault time: a VMA whose start moved
            // (stack growth, a merge below it, a split) appears once per start.
            // Joining them by their end would also join a split's halves, so they
            // are shown as the kernel had them.
            let mut parts: Vec<VmaSummary> = Vec::new();
            for (vma, rows) in groups {
                let v = match vma {
                    Some((start, ident)) => {
                        let key = VmaKey {
                            tgid: pid,
                            ident: *ident,
                            vm_start: *start,
                        };
                        self.vma_summary(pid, *start, descriptions.get(&key).copied(), rows)
                    }
                    None => {
                        let mut v = self.vma_summary(pid, 0, None, rows);
                        v.file = Some("(no VMA found at fault time)".into());
                        v
                    }
                };
                parts.push(v);
            }
            for v in parts {
                *by_kind.entry(v.kind).or_default() += v.faults;
                faults.minor += v.minor;
                faults.major += v.major;
                vmas.push(v);
            }
            // Faults that found the per-VMA table full: counted, kind unknown.
            let t = overflow.get(&pid).copied().unwrap_or_default();
            if t.minor + t.major > 0 {
                *by_kind.entry(Kind::Unknown.as_str()).or_default() += t.minor + t.major;
                faults.minor += t.minor;
                faults.major += t.major;
            }
            faults.total = faults.minor + faults.major;
            let kernel = self.kernel_counts(pid);
            let unseen = kernel
                .as_ref()
                .map(|k| (k.minflt + k.majflt) as i64 - faults.total as i64);
            processes.push(ProcessSummary {
                pid,
                comm: self.comm_of(pid),
                faults,
                by_kind,
                kernel,
                unseen,
                exited: !self.procfs.exists(pid),
                vmas,
            });
        }
        processes.sort_by(|a, b| b.faults.total.cmp(&a.faults.total).then(a.pid.cmp(&b.pid)));
        Summary {
            kind: "summary",
            duration_ns: now_ns.saturating_sub(self.start_ns),
            events_lost: self.snapshot.counters.events_lost,
            backend: self.backend,
            paths_source: self.paths_source,
            counters: self.snapshot.counters,
            limits: self.limits.clone(),
            processes,
        }
    }
}

#[cfg(test)]
mod tests;
