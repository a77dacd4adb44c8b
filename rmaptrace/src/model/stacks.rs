//! Call sites (`--stacks`): the user stacks the kernel counted per fault row,
//! kept by mapping lifetime, and named by a [`FrameNamer`] (the real one reads
//! the binaries a process mapped; tests hand in a fake).
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use rmaptrace_common::{FaultKey, StackKey};
use serde::Serialize;

/// Names the frames of user stacks in the address space a process had. What
/// a process maps is noted while it runs (at exec, when it maps code, when a
/// stack of it is first read); its frames are named later, from the files
/// noted, also after it exited.
pub trait FrameNamer {
    /// `pid` faulted with the stack `ips` (leaf first): note what it maps now,
    /// unless what was noted covers `ips`.
    fn capture(&mut self, pid: u32, ips: &[u64]);
    /// `pid` executed a new program at `ts_ns`: its stacks from then on are
    /// of the new image.
    fn exec(&mut self, pid: u32, ts_ns: u64);
    /// `pid` mapped executable memory (a library, JIT code): note it now.
    fn mapped_code(&mut self, pid: u32);
    /// `child` was forked from `parent`, with its mappings.
    fn fork(&mut self, parent: u32, child: u32);
    /// The frames of `ips`, named, leaf first, as `pid` had them mapped at
    /// `at_ns`.
    fn names(&mut self, pid: u32, ips: &[u64], at_ns: u64) -> Vec<String>;
    /// `pid` is summarised for good: what was noted for it goes.
    fn forget(&mut self, pid: u32);
}

/// One stack that faulted on a mapping, and how often.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallSite {
    /// Leaf first: the faulting function, then its callers.
    pub frames: Arc<[String]>,
    /// The kernel path that served these faults.
    pub path: &'static str,
    pub count: u64,
    /// The stack filled every frame recorded (`--stack-depth`): its root
    /// frames are missing.
    pub truncated: bool,
}

/// The stacks of a whole trace (`call_sites` in the summary). Faults counted
/// without a stack are `counters.stacks_lost` and `counters.stack_rows_full`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StackTotals {
    /// Frames recorded per stack at most (`--stack-depth`).
    pub depth: u32,
    /// Faults counted with a stack (processes that exited included).
    pub faults: u64,
    /// Of those, faults whose stack filled every frame recorded: their root
    /// frames are missing.
    pub truncated: u64,
    /// Distinct stacks held now (those of retired processes are freed).
    pub distinct: u64,
}

/// What stands for a stack that was not recorded: the stack table's slot
/// for it held another stack, or its stack was freed before it was read.
pub const LOST_FRAME: &str = "[stack lost]";

/// A fault row's key, a stack id and the faults counted on both.
type RowStack = (FaultKey, u32, u64);
/// A call site's identity once named: its frames and kernel path.
type Site = (Arc<[String]>, &'static str);

pub struct CallStacks {
    namer: Box<dyn FrameNamer>,
    /// Frames recorded per stack.
    depth: usize,
    /// Each stack read, by its id in the kernel's table.
    traces: HashMap<u32, Arc<[u64]>>,
    /// The counts as last read, by (process, lifetime): each row's key, stack
    /// id and faults.
    by_life: HashMap<(u32, u64), Vec<RowStack>>,
    /// Ids freed in the kernel since the last read: a count first read
    /// after that may name a stack stored since in the freed slot.
    freed: HashSet<u32>,
    /// Counts whose stack is not known for that reason.
    untrusted: HashSet<StackKey>,
    /// (process, stack id) pairs whose process was asked to note its
    /// mappings: once each, as frames no mapping covers (a frame pointer
    /// chain gone astray) would otherwise have /proc read at every tick.
    captured: HashSet<(u32, u32)>,
    /// Faults and truncated stacks' faults of the counts retired so far.
    retired: (u64, u64),
    /// Names given, by process, lifetime and stack id (a pid's stack ids
    /// before and after an exec are of two programs).
    named: HashMap<(u32, u64, u32), Arc<[String]>>,
}

impl CallStacks {
    pub fn new(namer: Box<dyn FrameNamer>, depth: u32) -> Self {
        CallStacks {
            namer,
            depth: depth as usize,
            traces: HashMap::new(),
            by_life: HashMap::new(),
            freed: HashSet::new(),
            untrusted: HashSet::new(),
            captured: HashSet::new(),
            retired: (0, 0),
            named: HashMap::new(),
        }
    }

    /// Whether the stack `id` was read already.
    pub fn knows(&self, id: u32) -> bool {
        self.traces.contains_key(&id) && !self.freed.contains(&id)
    }

    /// Takes a read of the kernel's tables: every (row, stack) count, and
    /// the frames of the stacks not known yet.
    pub fn update(&mut self, counts: Vec<(StackKey, u64)>, traces: Vec<(u32, Vec<u64>)>) {
        let before: HashSet<StackKey> = self.keys().collect();
        for id in &self.freed {
            self.traces.remove(id);
        }
        for (id, ips) in traces {
            self.traces.insert(id, ips.into());
        }
        self.by_life.clear();
        for (key, n) in counts {
            if self.freed.contains(&key.stack_id) && !before.contains(&key) {
                self.untrusted.insert(key);
            }
            let pid = key.row.tgid;
            if let Some(ips) = self.traces.get(&key.stack_id) {
                if self.captured.insert((pid, key.stack_id)) {
                    self.namer.capture(pid, ips);
                }
            }
            self.by_life
                .entry((pid, key.row.life))
                .or_default()
                .push((key.row, key.stack_id, n));
        }
        self.freed.clear();
    }

    fn keys(&self) -> impl Iterator<Item = StackKey> + '_ {
        self.by_life
            .values()
            .flatten()
            .map(|(row, id, _)| StackKey {
                row: *row,
                stack_id: *id,
                _pad: 0,
            })
    }

    /// Faults counted with a stack and stacks, over the whole trace.
    pub fn totals(&self) -> StackTotals {
        let (mut faults, mut truncated) = self.retired;
        let mut ids = HashSet::new();
        for (_, id, n) in self.by_life.values().flatten() {
            faults += n;
            if self.is_truncated(*id) {
                truncated += n;
            }
            ids.insert(*id);
        }
        StackTotals {
            depth: self.depth as u32,
            faults,
            truncated,
            distinct: ids.len() as u64,
        }
    }

    fn is_truncated(&self, id: u32) -> bool {
        self.traces
            .get(&id)
            .is_some_and(|ips| ips.len() >= self.depth)
    }

    /// Noted what processes map (exec, forks, code mapped).
    pub fn namer(&mut self) -> &mut dyn FrameNamer {
        self.namer.as_mut()
    }

    /// Every call site of lifetime `life` (0: the faults with no VMA found)
    /// of `pid`, first seen at `at_ns`, the busiest first; `path` names the
    /// kernel path of a row.
    pub fn sites(
        &mut self,
        pid: u32,
        life: u64,
        at_ns: u64,
        path: impl Fn(&FaultKey) -> &'static str,
    ) -> Vec<CallSite> {
        let Some(rows) = self.by_life.get(&(pid, life)) else {
            return Vec::new();
        };
        // (faults, truncated) by (frames, path).
        let mut merged: HashMap<Site, (u64, bool)> = HashMap::new();
        for (row, id, n) in rows {
            let key = StackKey {
                row: *row,
                stack_id: *id,
                _pad: 0,
            };
            let (frames, truncated) = match self.traces.get(id) {
                Some(ips) if !self.untrusted.contains(&key) => {
                    let frames = self
                        .named
                        .entry((pid, life, *id))
                        .or_insert_with(|| self.namer.names(pid, ips, at_ns).into())
                        .clone();
                    (frames, self.is_truncated(*id))
                }
                _ => (Arc::from(vec![LOST_FRAME.to_string()]), false),
            };
            let e = merged.entry((frames, path(row))).or_default();
            e.0 += n;
            e.1 |= truncated;
        }
        let mut sites: Vec<CallSite> = merged
            .into_iter()
            .map(|((frames, path), (count, truncated))| CallSite {
                frames,
                path,
                count,
                truncated,
            })
            .collect();
        sites.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.frames.cmp(&b.frames)));
        sites
    }

    /// Drops the counts of `pid` (all, or of its lifetimes `lives` only):
    /// they were summarised. Returns the kernel's keys to free, and the
    /// stacks that no other count uses any more.
    pub fn retire(&mut self, pid: u32, lives: Option<&[u64]>) -> (Vec<StackKey>, Vec<u32>) {
        let gone: Vec<(u32, u64)> = match lives {
            Some(lives) => lives.iter().map(|&l| (pid, l)).collect(),
            None => self
                .by_life
                .keys()
                .filter(|(p, _)| *p == pid)
                .copied()
                .collect(),
        };
        let mut keys = Vec::new();
        for k in gone {
            for (row, id, n) in self.by_life.remove(&k).unwrap_or_default() {
                self.retired.0 += n;
                if self.is_truncated(id) {
                    self.retired.1 += n;
                }
                keys.push(StackKey {
                    row,
                    stack_id: id,
                    _pad: 0,
                });
            }
        }
        let used: HashSet<u32> = self.keys().map(|k| k.stack_id).collect();
        let mut ids: Vec<u32> = keys
            .iter()
            .map(|k| k.stack_id)
            .filter(|id| !used.contains(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for k in &keys {
            self.untrusted.remove(k);
        }
        for id in &ids {
            self.freed.insert(*id);
        }
        self.captured
            .retain(|(p, id)| !ids.contains(id) && (*p != pid || lives.is_some()));
        self.named.retain(|(p, life, id), _| {
            !ids.contains(id) && (*p != pid || lives.is_some_and(|l| !l.contains(life)))
        });
        if lives.is_none() {
            self.namer.forget(pid);
        }
        (keys, ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names a frame "fN" after its address N, and remembers what it was asked.
    #[derive(Default)]
    struct Fake {
        captured: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
        forgotten: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    }

    impl FrameNamer for Fake {
        fn capture(&mut self, pid: u32, _ips: &[u64]) {
            self.captured.lock().unwrap().push(pid);
        }
        fn exec(&mut self, _pid: u32, _ts_ns: u64) {}
        fn mapped_code(&mut self, _pid: u32) {}
        fn fork(&mut self, _parent: u32, _child: u32) {}
        fn names(&mut self, _pid: u32, ips: &[u64], _at_ns: u64) -> Vec<String> {
            ips.iter().map(|ip| format!("f{ip}")).collect()
        }
        fn forget(&mut self, pid: u32) {
            self.forgotten.lock().unwrap().push(pid);
        }
    }

    fn key(pid: u32, life: u64, path: u8, id: u32) -> StackKey {
        StackKey {
            row: FaultKey {
                tgid: pid,
                life,
                path,
                ..FaultKey::default()
            },
            stack_id: id,
            _pad: 0,
        }
    }

    fn by_path(k: &FaultKey) -> &'static str {
        if k.path == 0 {
            "do_read_fault"
        } else {
            "do_wp_page"
        }
    }

    #[test]
    fn sites_merge_rows_of_one_stack_and_path_busiest_first() {
        let fake = Fake::default();
        let captured = fake.captured.clone();
        let mut s = CallStacks::new(Box::new(fake), 3);
        s.update(
            vec![
                (key(7, 1, 0, 10), 5),
                (key(7, 1, 0, 11), 9),
                // Another row (another access) with the same stack and path.
                (
                    StackKey {
                        row: FaultKey {
                            access: 2,
                            ..key(7, 1, 0, 10).row
                        },
                        ..key(7, 1, 0, 10)
                    },
                    2,
                ),
                (key(7, 1, 1, 10), 1),
                (key(7, 2, 0, 10), 4),
            ],
            vec![(10, vec![1, 2]), (11, vec![3, 4, 5])],
        );
        assert_eq!(*captured.lock().unwrap(), vec![7, 7], "once per stack");
        let sites = s.sites(7, 1, 0, by_path);
        let shown: Vec<(Vec<String>, &str, u64, bool)> = sites
            .iter()
            .map(|c| (c.frames.to_vec(), c.path, c.count, c.truncated))
            .collect();
        assert_eq!(
            shown,
            vec![
                (
                    vec!["f3".into(), "f4".into(), "f5".into()],
                    "do_read_fault",
                    9,
                    true
                ),
                (vec!["f1".into(), "f2".into()], "do_read_fault", 7, false),
                (vec!["f1".into(), "f2".into()], "do_wp_page", 1, false),
            ]
        );
        assert_eq!(s.sites(7, 2, 0, by_path)[0].count, 4);
        assert!(s.sites(8, 1, 0, by_path).is_empty());
    }

    #[test]
    fn a_retired_process_frees_its_counts_and_the_stacks_only_it_used() {
        let fake = Fake::default();
        let forgotten = fake.forgotten.clone();
        let mut s = CallStacks::new(Box::new(fake), 8);
        s.update(
            vec![
                (key(7, 1, 0, 10), 5),
                (key(7, 1, 0, 11), 1),
                (key(8, 3, 0, 11), 2),
            ],
            vec![(10, vec![1]), (11, vec![2])],
        );
        let (keys, ids) = s.retire(7, None);
        assert_eq!(keys.len(), 2);
        assert_eq!(ids, vec![10], "stack 11 is still used by pid 8");
        assert_eq!(*forgotten.lock().unwrap(), vec![7]);
        assert!(s.sites(7, 1, 0, by_path).is_empty());
        assert!(!s.knows(10) && s.knows(11));
        // A count first read after its stack's slot was freed may name the
        // stack stored there since: it is shown as lost, never as that one.
        s.update(
            vec![(key(8, 3, 0, 11), 2), (key(8, 4, 0, 10), 3)],
            vec![(10, vec![99])],
        );
        let sites = s.sites(8, 4, 0, by_path);
        assert_eq!(sites[0].frames.to_vec(), vec![LOST_FRAME.to_string()]);
        assert_eq!(sites[0].count, 3);
        // Counts first read later trust the slot again.
        s.update(
            vec![
                (key(8, 3, 0, 11), 2),
                (key(8, 4, 0, 10), 3),
                (key(8, 5, 0, 10), 1),
            ],
            vec![],
        );
        assert_eq!(
            s.sites(8, 5, 0, by_path)[0].frames.to_vec(),
            vec!["f99".to_string()]
        );
        assert_eq!(s.sites(8, 4, 0, by_path)[0].frames[0], LOST_FRAME);
    }

    #[test]
    fn ended_lifetimes_of_a_running_process_go_alone() {
        let mut s = CallStacks::new(Box::new(Fake::default()), 8);
        s.update(
            vec![(key(7, 1, 0, 10), 5), (key(7, 2, 0, 11), 1)],
            vec![(10, vec![1]), (11, vec![2])],
        );
        let (keys, ids) = s.retire(7, Some(&[1]));
        assert_eq!((keys.len(), ids), (1, vec![10]));
        assert_eq!(s.sites(7, 2, 0, by_path)[0].count, 1);
    }
}
