//! Fault counts as monotonic counters for a long-running daemon (`rmaptrace
//! serve`): by mapping kind, handler, kernel path, major, process name and
//! cgroup, and fault latency by kind and handler.
//!
//! The trace model recomputes each process from the kernel tables; a counter
//! must only ever grow. Each process is therefore credited what it counted
//! beyond what it was credited before, label by label, and the credit goes to
//! the names it has when credited (a process that execs counts its later faults
//! under its new name). A process's counts leave the live summaries in two ways,
//! and both are taken in: mappings that ended while it ran (collected, written
//! once) are kept in its tally, and its last summary when it exits is credited
//! before its state is dropped.
//!
//! Cardinality is bounded: no pid label, and each of comm and cgroup keeps at
//! most `top` values of its own, the busiest when there is room. A label is
//! kept while its name keeps faulting, so its series only grows; a name idle
//! for [`LABEL_IDLE_NS`] gives its label up (its series stop, as a process's
//! series do in any exporter when it is gone), so that names busy now can get
//! one. Faults of any other name are counted under `other`. Every series only
//! grows while it is served, and the sum over the series served plus those
//! stopped is exact.
use std::collections::{BTreeMap, HashMap};

use rmaptrace_common::latency_bucket_floor;

use super::summary::{ProcessSummary, VmaSummary};

/// The label value that collects the names beyond the top ones.
pub const OTHER: &str = "other";

/// A name with no fault credited for this long gives its label up.
pub const LABEL_IDLE_NS: u64 = 15 * 60 * 1_000_000_000;

/// Upper bounds of the latency histogram: powers of two from 128 ns to
/// 2^29 ns (0.54 s), then +Inf. The kernel's buckets (four per power of two)
/// fall whole on one side of each bound.
pub const LATENCY_BOUNDS_LOG2: std::ops::RangeInclusive<u32> = 7..=29;
const LATENCY_SLOTS: usize = 24;

/// A fault series' labels that come from the mapping and the fault.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FaultLabels {
    pub kind: &'static str,
    pub handler: String,
    pub path: &'static str,
    pub major: bool,
}

/// The labels of one exposed fault series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub fault: FaultLabels,
    pub comm: String,
    pub cgroup: String,
}

/// Latency histogram labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LatencyKey {
    pub kind: &'static str,
    pub handler: String,
}

/// A histogram: counts per bound (not cumulative), the sample count and sum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    pub slots: [u64; LATENCY_SLOTS],
    pub count: u64,
    pub sum_ns: u64,
}

impl Latency {
    /// The slot of a kernel latency bucket: the first bound above it.
    fn slot(bucket: usize) -> usize {
        let floor_log2 = 63 - latency_bucket_floor(bucket).leading_zeros();
        ((floor_log2 + 1).saturating_sub(*LATENCY_BOUNDS_LOG2.start()) as usize)
            .min(LATENCY_SLOTS - 1)
    }

    fn add_vma(&mut self, v: &VmaSummary) {
        for (bucket, n) in v.latency_hist.buckets() {
            self.slots[Self::slot(bucket)] += n;
        }
        self.count += v.latency_ns.samples;
        self.sum_ns += v.latency_sum_ns;
    }

    fn merge(&mut self, o: &Latency) {
        for (a, b) in self.slots.iter_mut().zip(&o.slots) {
            *a += b;
        }
        self.count += o.count;
        self.sum_ns += o.sum_ns;
    }

    /// What `self` has beyond `before`, slot by slot (never below zero).
    fn beyond(&self, before: &Latency) -> Latency {
        let mut d = Latency::default();
        for (i, s) in d.slots.iter_mut().enumerate() {
            *s = self.slots[i].saturating_sub(before.slots[i]);
        }
        d.count = self.count.saturating_sub(before.count);
        d.sum_ns = self.sum_ns.saturating_sub(before.sum_ns);
        d
    }

    /// The larger of the two, slot by slot: what has been credited.
    fn raise_to(&mut self, o: &Latency) {
        for (a, b) in self.slots.iter_mut().zip(&o.slots) {
            *a = (*a).max(*b);
        }
        self.count = self.count.max(o.count);
        self.sum_ns = self.sum_ns.max(o.sum_ns);
    }

    /// Cumulative counts per bound, +Inf last (the exposition's `_bucket`s).
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<u32>, u64)> + '_ {
        let bounds = LATENCY_BOUNDS_LOG2.map(Some).chain(std::iter::once(None));
        bounds.zip(self.slots.iter().scan(0u64, |acc, n| {
            *acc += n;
            Some(*acc)
        }))
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0 && self.slots.iter().all(|&n| n == 0)
    }
}

/// What one process counted, by label.
#[derive(Clone, Debug, Default)]
struct Tally {
    faults: HashMap<FaultLabels, u64>,
    latency: HashMap<LatencyKey, Latency>,
}

impl Tally {
    fn add_vma(&mut self, v: &VmaSummary) {
        let handler = v.handler.clone().unwrap_or_default();
        for (&path, &n) in v.paths.iter() {
            let major = v.paths_major.get(&path).copied().unwrap_or(0);
            for (is_major, n) in [(false, n.saturating_sub(major)), (true, major)] {
                if n > 0 {
                    *self
                        .faults
                        .entry(FaultLabels {
                            kind: v.kind,
                            handler: handler.clone(),
                            path,
                            major: is_major,
                        })
                        .or_default() += n;
                }
            }
        }
        if v.latency_ns.samples > 0 {
            self.latency
                .entry(LatencyKey {
                    kind: v.kind,
                    handler,
                })
                .or_default()
                .add_vma(v);
        }
    }

    fn merge(&mut self, o: &Tally) {
        for (k, n) in &o.faults {
            *self.faults.entry(k.clone()).or_default() += n;
        }
        for (k, l) in &o.latency {
            self.latency.entry(k.clone()).or_default().merge(l);
        }
    }

    /// Minor and major faults in the tally.
    fn counts(&self) -> (u64, u64) {
        self.faults.iter().fold(
            (0, 0),
            |(mi, ma), (k, n)| {
                if k.major {
                    (mi, ma + n)
                } else {
                    (mi + n, ma)
                }
            },
        )
    }
}

/// A process's mappings as the counters take them in, one at a time.
#[derive(Default)]
pub struct Mapped(Tally);

impl Mapped {
    pub fn add(&mut self, v: &VmaSummary) {
        self.0.add_vma(v);
    }

    pub fn of(vmas: &mut dyn Iterator<Item = VmaSummary>) -> Mapped {
        let mut m = Mapped::default();
        for v in vmas {
            m.add(&v);
        }
        m
    }
}

/// A process as the counters know it.
#[derive(Default)]
struct ProcessCredit {
    /// Mappings collected while it ran: they are in no later summary.
    ended: Tally,
    /// What was credited so far.
    credited: Tally,
    unseen_credited: u64,
}

/// Credits waiting for their comm and cgroup labels (given at `settle`).
struct Pending {
    labels: FaultLabels,
    comm: String,
    cgroup: String,
    n: u64,
}

/// The daemon's counters.
pub struct FaultMetrics {
    top: usize,
    processes: HashMap<u32, ProcessCredit>,
    pending: Vec<Pending>,
    /// Names with a label of their own, and when they were last credited.
    comms: HashMap<String, u64>,
    cgroups: HashMap<String, u64>,
    faults: HashMap<SeriesKey, u64>,
    latency: HashMap<LatencyKey, Latency>,
    unseen: u64,
}

/// Faults a process counted that are in none of its mappings (the per-mapping
/// table was full, or counted on a mapping after it was written): counted,
/// of unknown kind.
const NO_MAPPING: &str = "unknown";

impl FaultMetrics {
    pub fn new(top: usize) -> Self {
        FaultMetrics {
            top,
            processes: HashMap::new(),
            pending: Vec::new(),
            comms: HashMap::new(),
            cgroups: HashMap::new(),
            faults: HashMap::new(),
            latency: HashMap::new(),
            unseen: 0,
        }
    }

    /// Mappings of a running process that ended and were collected: they
    /// leave its summaries, so they are kept in its tally.
    pub fn ended(&mut self, pid: u32, vmas: Mapped) {
        self.processes.entry(pid).or_default().ended.merge(&vmas.0);
    }

    /// A running process's summary: what it counted since it was last seen
    /// is credited.
    pub fn running(&mut self, p: &ProcessSummary, vmas: Mapped) {
        let state = self.processes.entry(p.pid).or_default();
        let mut now = state.ended.clone();
        now.merge(&vmas.0);
        let (minor, major) = now.counts();
        for (is_major, rest) in [
            (false, p.faults.minor.saturating_sub(minor)),
            (true, p.faults.major.saturating_sub(major)),
        ] {
            if rest > 0 {
                now.faults.insert(
                    FaultLabels {
                        kind: NO_MAPPING,
                        handler: String::new(),
                        path: NO_MAPPING,
                        major: is_major,
                    },
                    rest,
                );
            }
        }
        let cgroup = p.cgroup.clone().unwrap_or_default();
        for (labels, &n) in &now.faults {
            let before = state.credited.faults.get(labels).copied().unwrap_or(0);
            if n > before {
                self.pending.push(Pending {
                    labels: labels.clone(),
                    comm: p.comm.clone(),
                    cgroup: cgroup.clone(),
                    n: n - before,
                });
                state.credited.faults.insert(labels.clone(), n);
            }
        }
        for (key, l) in &now.latency {
            let before = state.credited.latency.entry(key.clone()).or_default();
            let d = l.beyond(before);
            if !d.is_empty() {
                self.latency.entry(key.clone()).or_default().merge(&d);
                before.raise_to(l);
            }
        }
        let unseen = p.unseen.unwrap_or(0).max(0) as u64;
        self.unseen += unseen.saturating_sub(state.unseen_credited);
        state.unseen_credited = state.unseen_credited.max(unseen);
    }

    /// An exited process's last summary: credited, then forgotten (a later
    /// process with its pid starts from nothing).
    pub fn exited(&mut self, p: &ProcessSummary, vmas: Mapped) {
        self.running(p, vmas);
        self.processes.remove(&p.pid);
    }

    /// Gives the credits their comm and cgroup labels (at `now_ns`): names
    /// idle for [`LABEL_IDLE_NS`] give theirs up first, with their series;
    /// names that have one keep it; new names get one, the busiest first,
    /// while fewer than `top` have one; the rest go to `other`.
    pub fn settle(&mut self, now_ns: u64) {
        let idle = |labels: &mut HashMap<String, u64>| -> Vec<String> {
            let gone: Vec<String> = labels
                .iter()
                .filter(|(_, &last)| now_ns.saturating_sub(last) > LABEL_IDLE_NS)
                .map(|(n, _)| n.clone())
                .collect();
            for n in &gone {
                labels.remove(n);
            }
            gone
        };
        let (comms_gone, cgroups_gone) = (idle(&mut self.comms), idle(&mut self.cgroups));
        if !comms_gone.is_empty() || !cgroups_gone.is_empty() {
            self.faults
                .retain(|k, _| !comms_gone.contains(&k.comm) && !cgroups_gone.contains(&k.cgroup));
        }
        let pending = std::mem::take(&mut self.pending);
        admit(&mut self.comms, self.top, &pending, |p| &p.comm);
        admit(&mut self.cgroups, self.top, &pending, |p| &p.cgroup);
        for p in pending {
            let label =
                |labels: &mut HashMap<String, u64>, name: String| match labels.get_mut(&name) {
                    Some(last) => {
                        *last = now_ns;
                        name
                    }
                    None => OTHER.to_string(),
                };
            let key = SeriesKey {
                fault: p.labels,
                comm: label(&mut self.comms, p.comm),
                cgroup: label(&mut self.cgroups, p.cgroup),
            };
            *self.faults.entry(key).or_default() += p.n;
        }
    }

    /// Every fault series, in label order.
    pub fn fault_series(&self) -> BTreeMap<&SeriesKey, u64> {
        self.faults.iter().map(|(k, &n)| (k, n)).collect()
    }

    /// Every latency histogram, in label order.
    pub fn latency_series(&self) -> BTreeMap<&LatencyKey, &Latency> {
        self.latency.iter().collect()
    }

    /// Faults the kernel counted that were not seen, over every process.
    pub fn unseen(&self) -> u64 {
        self.unseen
    }

    /// Processes followed (their credits kept until they exit).
    pub fn processes(&self) -> usize {
        self.processes.len()
    }
}

/// Names in `pending` without a label get one, the busiest first, while
/// fewer than `top` have one.
fn admit(
    labels: &mut HashMap<String, u64>,
    top: usize,
    pending: &[Pending],
    name: impl Fn(&Pending) -> &String,
) {
    if labels.len() >= top {
        return;
    }
    let mut busiest: HashMap<&String, u64> = HashMap::new();
    for p in pending.iter().filter(|p| !labels.contains_key(name(p))) {
        *busiest.entry(name(p)).or_default() += p.n;
    }
    let mut ranked: Vec<(&String, u64)> = busiest.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let room = top - labels.len();
    for (n, _) in ranked.into_iter().take(room) {
        labels.insert(n.clone(), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{small_map::SmallMap, summary::FaultCounts};

    fn vma(
        kind: &'static str,
        handler: Option<&str>,
        paths: &[(&'static str, u64, u64)],
    ) -> VmaSummary {
        let mut v = VmaSummary {
            kind,
            handler: handler.map(str::to_string),
            ..VmaSummary::default()
        };
        let mut p = SmallMap::default();
        let mut pm = SmallMap::default();
        for &(path, minor, major) in paths {
            *p.entry_or_default(path) += minor + major;
            if major > 0 {
                *pm.entry_or_default(path) += major;
            }
            v.minor += minor;
            v.major += major;
        }
        v.faults = v.minor + v.major;
        v.paths = p;
        v.paths_major = pm;
        v
    }

    fn process(pid: u32, comm: &str, minor: u64, major: u64) -> ProcessSummary {
        ProcessSummary {
            pid,
            comm: comm.into(),
            faults: FaultCounts {
                total: minor + major,
                minor,
                major,
            },
            ..ProcessSummary::default()
        }
    }

    fn total(m: &FaultMetrics) -> u64 {
        m.fault_series().values().sum()
    }

    fn get(m: &FaultMetrics, comm: &str, path: &str, major: bool) -> u64 {
        m.fault_series()
            .iter()
            .filter(|(k, _)| k.comm == comm && k.fault.path == path && k.fault.major == major)
            .map(|(_, n)| n)
            .sum()
    }

    #[test]
    fn a_running_process_is_credited_only_what_it_added() {
        let mut m = FaultMetrics::new(50);
        let v = vma("anon", None, &[("do_anonymous_page", 10, 0)]);
        m.running(
            &process(1, "app", 10, 0),
            Mapped::of(&mut std::iter::once(v)),
        );
        m.settle(0);
        assert_eq!(get(&m, "app", "do_anonymous_page", false), 10);
        let v = vma("anon", None, &[("do_anonymous_page", 25, 0)]);
        m.running(
            &process(1, "app", 25, 0),
            Mapped::of(&mut std::iter::once(v)),
        );
        m.settle(0);
        assert_eq!(get(&m, "app", "do_anonymous_page", false), 25);
        assert_eq!(total(&m), 25);
    }

    #[test]
    fn major_faults_have_their_own_series() {
        let mut m = FaultMetrics::new(50);
        let v = vma("file", Some("filemap_fault"), &[("filemap_fault", 7, 3)]);
        m.exited(
            &process(1, "cat", 7, 3),
            Mapped::of(&mut std::iter::once(v)),
        );
        m.settle(0);
        assert_eq!(get(&m, "cat", "filemap_fault", false), 7);
        assert_eq!(get(&m, "cat", "filemap_fault", true), 3);
        assert_eq!(m.processes(), 0);
    }

    #[test]
    fn collected_mappings_keep_counting_after_they_leave_the_summary() {
        let mut m = FaultMetrics::new(50);
        let a = vma("anon", None, &[("do_anonymous_page", 4, 0)]);
        let b = vma("shmem", Some("shmem_fault"), &[("do_shared_fault", 6, 0)]);
        m.running(
            &process(1, "srv", 10, 0),
            Mapped::of(&mut [a.clone(), b].into_iter()),
        );
        // The shmem mapping ended and was collected; the process ran on.
        let b = vma("shmem", Some("shmem_fault"), &[("do_shared_fault", 8, 0)]);
        m.ended(1, Mapped::of(&mut std::iter::once(b)));
        m.running(
            &process(1, "srv", 12, 0),
            Mapped::of(&mut std::iter::once(a)),
        );
        m.settle(0);
        assert_eq!(get(&m, "srv", "do_shared_fault", false), 8);
        assert_eq!(get(&m, "srv", "do_anonymous_page", false), 4);
        assert_eq!(total(&m), 12);
    }

    #[test]
    fn faults_in_no_mapping_are_counted_as_unknown() {
        let mut m = FaultMetrics::new(50);
        let a = vma("anon", None, &[("do_anonymous_page", 4, 0)]);
        m.exited(&process(1, "x", 9, 1), Mapped::of(&mut std::iter::once(a)));
        m.settle(0);
        assert_eq!(get(&m, "x", NO_MAPPING, false), 5);
        assert_eq!(get(&m, "x", NO_MAPPING, true), 1);
        assert_eq!(total(&m), 10);
    }

    #[test]
    fn after_an_exec_later_faults_count_under_the_new_name() {
        let mut m = FaultMetrics::new(50);
        let a = vma("anon", None, &[("do_anonymous_page", 4, 0)]);
        m.running(&process(1, "sh", 4, 0), Mapped::of(&mut std::iter::once(a)));
        m.settle(0);
        let a = vma("anon", None, &[("do_anonymous_page", 4, 0)]);
        let b = vma("anon", None, &[("do_anonymous_page", 6, 0)]);
        m.exited(
            &process(1, "app", 10, 0),
            Mapped::of(&mut [a, b].into_iter()),
        );
        m.settle(0);
        assert_eq!(get(&m, "sh", "do_anonymous_page", false), 4);
        assert_eq!(get(&m, "app", "do_anonymous_page", false), 6);
    }

    #[test]
    fn names_beyond_the_top_go_to_other_and_sums_stay_exact() {
        let mut m = FaultMetrics::new(2);
        for (pid, comm, n) in [(1, "a", 5), (2, "b", 50), (3, "c", 30), (4, "d", 1)] {
            let v = vma("anon", None, &[("do_anonymous_page", n, 0)]);
            m.exited(
                &process(pid, comm, n, 0),
                Mapped::of(&mut std::iter::once(v)),
            );
        }
        m.settle(0);
        let comms: std::collections::BTreeSet<&str> =
            m.fault_series().keys().map(|k| k.comm.as_str()).collect();
        assert_eq!(comms, ["b", "c", OTHER].into_iter().collect());
        assert_eq!(get(&m, OTHER, "do_anonymous_page", false), 6);
        // A label once given stays: `a` growing later still goes to `other`.
        let v = vma("anon", None, &[("do_anonymous_page", 500, 0)]);
        m.exited(
            &process(5, "a", 500, 0),
            Mapped::of(&mut std::iter::once(v)),
        );
        m.settle(0);
        assert_eq!(get(&m, OTHER, "do_anonymous_page", false), 506);
        assert_eq!(total(&m), 586);
    }

    #[test]
    fn an_idle_name_gives_its_label_up_to_a_busy_one() {
        let mut m = FaultMetrics::new(1);
        let v = |n| vma("anon", None, &[("do_anonymous_page", n, 0)]);
        m.exited(
            &process(1, "early", 5, 0),
            Mapped::of(&mut std::iter::once(v(5))),
        );
        m.settle(0);
        m.exited(
            &process(2, "late", 7, 0),
            Mapped::of(&mut std::iter::once(v(7))),
        );
        m.settle(LABEL_IDLE_NS);
        assert_eq!(get(&m, "early", "do_anonymous_page", false), 5);
        assert_eq!(get(&m, OTHER, "do_anonymous_page", false), 7);
        // Past the idle time with nothing credited, `early` is gone and the
        // next busy name takes the label; `other` keeps what it had.
        m.exited(
            &process(3, "late", 9, 0),
            Mapped::of(&mut std::iter::once(v(9))),
        );
        m.settle(LABEL_IDLE_NS + 1);
        assert_eq!(get(&m, "early", "do_anonymous_page", false), 0);
        assert_eq!(get(&m, "late", "do_anonymous_page", false), 9);
        assert_eq!(get(&m, OTHER, "do_anonymous_page", false), 7);
    }

    #[test]
    fn latency_goes_to_the_first_bound_above_each_bucket() {
        // 100 ns lands below 128 ns; 300 ns below 512; 1 ms below 2^20 ns.
        assert_eq!(Latency::slot(rmaptrace_common::latency_bucket(100)), 0);
        assert_eq!(Latency::slot(rmaptrace_common::latency_bucket(300)), 2);
        assert_eq!(
            Latency::slot(rmaptrace_common::latency_bucket(1_000_000)),
            (20 - 7) as usize
        );
        assert_eq!(
            Latency::slot(rmaptrace_common::latency_bucket(u64::MAX)),
            23
        );
        for ns in [64u64, 127, 128, 255, 256, 1000, 1 << 28] {
            let slot = Latency::slot(rmaptrace_common::latency_bucket(ns));
            let bound = 1u64 << (7 + slot);
            assert!(ns < bound, "{ns} ns in slot {slot}");
            if slot > 0 {
                assert!(ns >= bound / 2, "{ns} ns in slot {slot}");
            }
        }
    }

    #[test]
    fn latency_is_credited_by_difference() {
        let mut m = FaultMetrics::new(50);
        let mut v = vma("anon", None, &[("do_anonymous_page", 3, 0)]);
        v.latency_hist = crate::model::snapshot::Hist::from_buckets(&[(8, 3)]);
        v.latency_ns.samples = 3;
        v.latency_sum_ns = 1500;
        m.running(
            &process(1, "a", 3, 0),
            Mapped::of(&mut std::iter::once(v.clone())),
        );
        v.latency_hist = crate::model::snapshot::Hist::from_buckets(&[(8, 3), (20, 1)]);
        v.latency_ns.samples = 4;
        v.latency_sum_ns = 1500 + 9000;
        m.exited(&process(1, "a", 4, 0), Mapped::of(&mut std::iter::once(v)));
        let l = m.latency_series();
        let (_, h) = l.iter().next().unwrap();
        assert_eq!((h.count, h.sum_ns), (4, 10_500));
        let cum: Vec<u64> = h.cumulative().map(|(_, n)| n).collect();
        assert_eq!(*cum.last().unwrap(), 4);
    }
}
