//! Mapping lifetimes that ended in processes still running. A server that maps
//! and unmaps buffers all day (glibc serves every large malloc with an mmap)
//! starts a lifetime per mapping, and the kernel's lifetime table would fill
//! with lifetimes long over, after which every new mapping's faults are
//! `unknown`. Ended lifetimes are therefore collected as the trace goes: each is
//! written to the export once (a `mappings` record of its process), folded into
//! its process's sums, and its kernel rows and the model's memory of it freed.
use std::collections::{BTreeMap, HashMap, HashSet};

use super::{end_superseded, ProcessRows, Retired, Span, Trace, Unmap};
use crate::model::{snapshot::row_life, summary::VmaSummary};

/// What the collected mappings of a running process leave behind: sums.
#[derive(Clone, Debug, Default)]
pub(super) struct Ended {
    pub lifetimes: u64,
    /// Faults counted on them after they were written (see `count_late`).
    pub late: u64,
    pub minor: u64,
    pub major: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
}

/// Receives a running process's ended mappings (pid, comm, then each mapping
/// described as the iterator is advanced).
pub type EndedSink<'s> = dyn FnMut(u32, &str, &mut dyn Iterator<Item = VmaSummary>) + 's;

/// Whether the ended lifetimes of running processes are worth collecting now.
/// A collection reads the whole tables, so it waits for an eighth of the
/// lifetime table's worth of ends (unmapping calls seen, splits the kernel
/// saw), or less once the table is half full; never while nothing ends, so a
/// process that holds 200k mappings costs nothing however long it sleeps.
pub fn collect_due(ended_since: u64, held: u64, capacity: u64) -> bool {
    ended_since > 0 && (ended_since >= (capacity / 8).max(1) || held >= capacity / 2)
}

/// Ranges sorted by start with the running maximum of their ends, for the
/// question "does any of them overlap [lo, hi)?".
pub(super) struct Ranges {
    /// (start, end, first seen), by start.
    items: Vec<(u64, u64, u64)>,
    reach: Vec<u64>,
}

impl Ranges {
    pub(super) fn new(mut items: Vec<(u64, u64, u64)>) -> Self {
        items.sort_unstable();
        let reach = items
            .iter()
            .scan(0, |hi, r| {
                *hi = r.1.max(*hi);
                Some(*hi)
            })
            .collect();
        Ranges { items, reach }
    }

    /// The ranges that overlap [lo, hi).
    pub(super) fn overlapping(&self, lo: u64, hi: u64) -> impl Iterator<Item = &(u64, u64, u64)> {
        let from = self.reach.partition_point(|&r| r <= lo);
        self.items[from..]
            .iter()
            .take_while(move |r| r.0 < hi)
            .filter(move |r| r.1 > lo)
    }
}

impl Trace {
    /// Calls that unmapped something (munmap, an mmap with MAP_FIXED over a
    /// mapping, mremap, exec) seen so far.
    pub fn unmaps_seen(&self) -> u64 {
        self.unmaps_seen
    }

    /// Collects the lifetimes of running processes that are surely over, as
    /// the latest snapshot has them: unmapped by a call seen, split or shrunk
    /// (the kernel ended it), or overlapped by a lifetime first seen later.
    /// Each goes to `sink` described in full; its counts stay in its process's
    /// sums. Lifetimes over an address of a fault still waiting to be
    /// attributed stay, so that the attribution sees every candidate. Returns
    /// the kernel rows to free; the snapshot no longer has them.
    pub fn collect_ended_into(&mut self, sink: &mut EndedSink<'_>) -> Vec<Retired> {
        self.collect_unfaulted_into(sink);
        let running = |pid: &u32| {
            !self.newborn.contains_key(pid)
                && !self.retired_until.contains_key(pid)
                && self.processes.get(pid).is_none_or(|p| p.exit_ns.is_none())
        };
        let mut by_pid: BTreeMap<u32, ProcessRows<'_>> = BTreeMap::new();
        for row in self
            .snapshot
            .faults
            .iter()
            .filter(|(k, _)| running(&k.tgid))
        {
            by_pid.entry(row.0.tgid).or_default().push(row);
        }
        let waiting = self.unresolved_addrs();

        let mut freed: Vec<Retired> = Vec::new();
        let mut sums: Vec<(u32, Ended)> = Vec::new();
        for (&pid, groups) in &by_pid {
            let mut spans: Vec<Span> = groups
                .lives()
                .filter_map(|(life, at)| self.span(pid, life, &groups.group(life, at)))
                .collect();
            spans.sort_unstable_by_key(|sp| (sp.start, sp.first_seen, sp.life()));
            end_superseded(&mut spans);
            let awaited = |lo: u64, hi: u64| waiting.any_in(pid, lo, hi);
            let ended: Vec<&Span> = spans
                .iter()
                .filter(|sp| sp.unmapped.is_some())
                .filter(|sp| {
                    let rec = sp.life().and_then(|l| self.snapshot.record(l.get()));
                    rec.is_some_and(|r| !awaited(r.info.vm_start, r.info.vm_end))
                })
                .collect();
            if ended.is_empty() {
                continue;
            }
            let mut sum = Ended::default();
            let mut rows = Vec::new();
            let mut counted = Vec::new();
            let mut lives = Vec::new();
            for sp in &ended {
                sum.lifetimes += 1;
                sum.minor += sp.minor;
                sum.major += sp.major;
                *sum.by_kind.entry(sp.kind.as_str()).or_default() += sp.minor + sp.major;
                let life = sp.life().expect("ended spans have a lifetime").get();
                // Every row the kernel keeps for it: rows that differ only in
                // their flags are one row in `groups`.
                for (key, t) in self.snapshot.rows_of(pid, life) {
                    rows.push(*key);
                    counted.push((t.minor, t.major, sp.kind.as_str()));
                }
                let vma = self.snapshot.record(life).map_or(0, |r| r.info.vma);
                lives.push((life, vma));
            }
            let describe = |sp: &&Span| {
                let life = sp.rows.map(std::num::NonZeroU64::get);
                self.describe(pid, sp, &groups.group_of(life))
            };
            sink(pid, &self.comm_of(pid), &mut ended.iter().map(describe));
            sums.push((pid, sum));
            freed.push(Retired {
                pid,
                rows,
                lives,
                counted,
                whole: false,
            });
        }
        drop(by_pid);

        let gone: HashSet<u64> = freed
            .iter()
            .flat_map(|f| f.lives.iter().map(|(l, _)| *l))
            .collect();
        if gone.is_empty() {
            return freed;
        }
        self.snapshot
            .faults
            .retain(|(k, _)| row_life(k).is_none_or(|l| !gone.contains(&l)));
        self.snapshot.vmas.retain(|(l, _)| !gone.contains(l));
        for l in &gone {
            self.event_vmas.remove(l);
        }
        for (pid, sum) in sums {
            let st = self.processes.entry(pid).or_default();
            st.ended.lifetimes += sum.lifetimes;
            st.ended.minor += sum.minor;
            st.ended.major += sum.major;
            for (k, n) in sum.by_kind {
                *st.ended.by_kind.entry(k).or_default() += n;
            }
            st.names.retain(|l, _| !gone.contains(l));
        }
        let pids: Vec<u32> = freed.iter().map(|f| f.pid).collect();
        self.forget_history(&pids);
        self.path_names.prune();
        freed
    }

    /// Mappings that never faulted (a driver's prefilled ones), unmapped since
    /// in processes still running: written once, then forgotten like ended
    /// lifetimes, so that a process mapping a device in a loop holds only
    /// what it has mapped.
    fn collect_unfaulted_into(&mut self, sink: &mut EndedSink<'_>) {
        let pids: Vec<u32> = self
            .processes
            .iter()
            .filter(|(pid, p)| {
                p.exit_ns.is_none()
                    && !self.newborn.contains_key(pid)
                    && p.unfaulted
                        .iter()
                        .any(|u| super::unfaulted_until(p, u).is_some())
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in pids {
            let Some(p) = self.processes.get(&pid) else {
                continue;
            };
            let (gone, left): (Vec<_>, Vec<_>) = p
                .unfaulted
                .iter()
                .partition(|u| super::unfaulted_until(p, u).is_some());
            let ended: Vec<VmaSummary> = gone
                .into_iter()
                .map(|u| self.unfaulted_summary(p, u))
                .collect();
            let left: Vec<_> = left.into_iter().copied().collect();
            let n = ended.len() as u64;
            sink(pid, &self.comm_of(pid), &mut ended.into_iter());
            let p = self.processes.get_mut(&pid).expect("just seen");
            p.unfaulted = left;
            p.ended.lifetimes += n;
        }
    }

    /// Faults counted on collected lifetimes after the snapshot they were
    /// collected from (pid, kind, minor, major): a new mapping taken for the
    /// old one (its VMA struct reused, same shape) until the old one's entry
    /// was freed. They join their process's sums.
    pub fn count_late(&mut self, late: &[(u32, &'static str, u64, u64)]) {
        for &(pid, kind, minor, major) in late {
            let Some(st) = self.processes.get_mut(&pid) else {
                continue;
            };
            st.ended.late += minor + major;
            st.ended.minor += minor;
            st.ended.major += major;
            *st.ended.by_kind.entry(kind).or_default() += minor + major;
        }
    }

    /// Drops the unmaps and mmap calls of `pids` that no lifetime still in the
    /// snapshot, nor a fault waiting to be attributed, can need any more, so
    /// that a process mapping and unmapping for hours holds what is mapped, not
    /// what ever was.
    fn forget_history(&mut self, pids: &[u32]) {
        let wanted: HashSet<u32> = pids.iter().copied().collect();
        let mut lives: HashMap<u32, Vec<(u64, u64, u64)>> = HashMap::new();
        for (_, r) in &self.snapshot.vmas {
            if wanted.contains(&r.tgid) {
                lives
                    .entry(r.tgid)
                    .or_default()
                    .push((r.info.vm_start, r.info.vm_end, r.first_ns));
            }
        }
        let mut waiting: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
        for u in self
            .unresolved
            .iter()
            .filter(|u| wanted.contains(&u.header.tgid))
        {
            waiting
                .entry(u.header.tgid)
                .or_default()
                .push((u.addr, u.header.ts_ns));
        }
        for pid in pids {
            let Some(st) = self.processes.get_mut(pid) else {
                continue;
            };
            let live = Ranges::new(lives.remove(pid).unwrap_or_default());
            let waiting = waiting.remove(pid).unwrap_or_default();
            let unmaps = std::mem::take(&mut st.unmaps);
            // A call that ended everything it made: an unmap of its whole
            // range entered after it returned. The kept unmaps are searched
            // by start; an exec's (everything) is the latest one, noted when
            // the new image is in place, after the kernel's own mmaps of it.
            let mut by_start: Vec<&Unmap> = unmaps.iter().filter(|u| u.end != u64::MAX).collect();
            by_start.sort_unstable_by_key(|u| u.start);
            let longest = by_start.iter().map(|u| u.end - u.start).max().unwrap_or(0);
            let exec = unmaps
                .iter()
                .filter(|u| u.end == u64::MAX)
                .map(|u| u.enter_ns)
                .max();
            let undone = |o: &crate::model::origins::Origin| {
                let end = o.start.saturating_add(o.len);
                if !o.kernel() && exec.is_some_and(|e| e > o.exit_ns()) {
                    return true;
                }
                let upto = by_start.partition_point(|u| u.start <= o.start);
                by_start[..upto]
                    .iter()
                    .rev()
                    .take(64)
                    .take_while(|u| u.start + longest >= end)
                    .any(|u| u.end >= end && u.enter_ns > o.exit_ns())
            };
            // The call each remaining lifetime takes as its origin.
            let taken: HashSet<(u64, u64)> = live
                .items
                .iter()
                .filter_map(|&(start, _, first)| st.origins.covering(start, first))
                .map(|o| (o.start, o.ts_ns))
                .collect();
            st.origins.retain(|o| {
                let end = o.start.saturating_add(o.len);
                let needed = taken.contains(&(o.start, o.ts_ns))
                    || waiting.iter().any(|&(a, _)| o.start <= a && a < end);
                needed || !undone(o)
            });
            st.unmaps = unmaps
                .into_iter()
                .filter(|u| {
                    live.overlapping(u.start, u.end)
                        .any(|&(_, _, first)| first < u.enter_ns)
                        || waiting.iter().any(|&(a, ts)| {
                            u.start <= a && a < u.end && u.enter_ns <= ts && ts <= u.exit_ns
                        })
                })
                .collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_waits_for_ends_and_costs_nothing_while_none_come() {
        let cap = 131072;
        assert!(
            !collect_due(0, cap, cap),
            "nothing ended: the table is not read"
        );
        assert!(!collect_due(100, 1000, cap));
        assert!(collect_due(cap / 8, 1000, cap));
        assert!(
            collect_due(1, cap / 2, cap),
            "half full: any end is worth it"
        );
        assert!(collect_due(1, 0, 4), "tiny tables still collect");
    }

    #[test]
    fn overlapping_ranges() {
        let r = Ranges::new(vec![
            (0x1000, 0x9000, 1),
            (0x2000, 0x3000, 2),
            (0xa000, 0xb000, 3),
        ]);
        let hits = |lo, hi| r.overlapping(lo, hi).map(|x| x.2).collect::<Vec<_>>();
        assert_eq!(hits(0x8000, 0xa000), vec![1]);
        assert_eq!(hits(0x2800, 0x2900), vec![1, 2]);
        assert_eq!(hits(0x9000, 0xa000), Vec::<u64>::new());
        assert_eq!(hits(0xa800, 0xc000), vec![3]);
    }
}
