//! Where each mapping of a process came from: the mmap calls seen, by start
//! address and time. A forked child has copies of its parent's mappings, so it
//! starts with the parent's origins: shared, never copied, so that a process
//! with many mappings forking many times costs one copy.
use std::{collections::BTreeMap, sync::Arc};

/// An mmap call, as much of it as a lifetime's `origin` needs (not a record: a
/// process may make 100k of them).
#[derive(Clone, Debug)]
pub struct Origin {
    pub len: u64,
    pub flags: u64,
    pub prot: u64,
    /// When the call was entered (do_mmap's return for kernel mappings).
    pub ts_ns: u64,
    /// When it returned.
    pub exit_ns: u64,
    /// Made by the kernel's do_mmap outside any mmap syscall.
    pub kernel: bool,
    pub path: Option<Arc<str>>,
}

type Layer = BTreeMap<(u64, u64), Origin>;

/// Frozen layers deeper than this are merged into one at the next fork, so a
/// lookup never walks a long chain.
const MAX_LAYERS: usize = 8;

#[derive(Clone, Default)]
pub struct Origins {
    /// Calls made since the last fork.
    own: Layer,
    /// Calls made before it, shared with the processes forked since (oldest
    /// first).
    frozen: Vec<Arc<Layer>>,
}

impl Origins {
    pub fn insert(&mut self, start: u64, o: Origin) {
        self.own.insert((start, o.ts_ns), o);
    }

    /// Takes `inherited` (a parent's, at the fork) under the calls already
    /// recorded here.
    pub fn adopt(&mut self, inherited: Origins) {
        let own = std::mem::take(&mut self.own);
        *self = inherited;
        self.own.extend(own);
    }

    /// The child's origins at a fork: everything so far, shared.
    pub fn fork(&mut self) -> Origins {
        if !self.own.is_empty() {
            self.frozen.push(Arc::new(std::mem::take(&mut self.own)));
        }
        if self.frozen.len() > MAX_LAYERS {
            let mut merged = Layer::new();
            for layer in self.frozen.drain(..) {
                merged.extend(layer.iter().map(|(k, v)| (*k, v.clone())));
            }
            self.frozen.push(Arc::new(merged));
        }
        Origins {
            own: Layer::new(),
            frozen: self.frozen.clone(),
        }
    }

    fn layers(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.own).chain(self.frozen.iter().map(|l| l.as_ref()))
    }

    /// The latest call, made by `before_ns`, whose range holds `addr` (the
    /// nearest starts below it first: smaller mappings may have been placed
    /// inside a larger one).
    pub fn covering(&self, addr: u64, before_ns: u64) -> Option<&Origin> {
        self.layers()
            .flat_map(|l| {
                l.range(..=(addr, u64::MAX))
                    .rev()
                    .take(64)
                    .filter(move |((start, _), o)| addr < *start + o.len && o.ts_ns <= before_ns)
                    .map(|(_, o)| o)
            })
            .max_by_key(|o| o.ts_ns)
    }

    /// Whether a call over `addr` was in progress at `ts`.
    pub fn in_progress_at(&self, addr: u64, ts: u64) -> bool {
        self.layers().any(|l| {
            l.range(..=(addr, u64::MAX))
                .any(|((start, _), o)| addr < start + o.len && o.ts_ns <= ts && ts <= o.exit_ns)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(len: u64, ts: u64) -> Origin {
        Origin {
            len,
            flags: 0,
            prot: 0,
            ts_ns: ts,
            exit_ns: ts + 1,
            kernel: false,
            path: None,
        }
    }

    #[test]
    fn children_share_and_then_diverge() {
        let mut parent = Origins::default();
        parent.insert(0x1000, origin(0x1000, 10));
        let mut child = parent.fork();
        parent.insert(0x1000, origin(0x2000, 20));
        child.insert(0x1800, origin(0x100, 30));
        assert_eq!(parent.covering(0x1800, 100).unwrap().ts_ns, 20);
        assert_eq!(child.covering(0x1800, 100).unwrap().ts_ns, 30);
        assert_eq!(child.covering(0x1000, 100).unwrap().ts_ns, 10);
        assert_eq!(child.covering(0x1800, 25).unwrap().ts_ns, 10);
        assert!(child.covering(0x3000, 100).is_none());
        assert!(child.in_progress_at(0x1000, 11));
        assert!(!child.in_progress_at(0x1000, 12));
        // The parent's history is one shared layer, whatever the number of forks.
        let kids: Vec<Origins> = (0..100).map(|_| parent.fork()).collect();
        assert!(kids
            .iter()
            .all(|k| Arc::ptr_eq(&k.frozen[0], &parent.frozen[0])));
        assert!(parent.frozen.len() <= MAX_LAYERS + 1);
    }

    #[test]
    fn deep_chains_are_merged() {
        let mut p = Origins::default();
        for i in 0..50u64 {
            p.insert(i * 0x1000, origin(0x1000, i));
            let _ = p.fork();
        }
        assert!(p.frozen.len() <= MAX_LAYERS + 1);
        for i in 0..50u64 {
            assert_eq!(p.covering(i * 0x1000, 100).unwrap().ts_ns, i);
        }
    }
}
