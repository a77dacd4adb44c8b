//! Where each mapping of a process came from: the mmap calls seen, by start
//! address and time. A process may make hundreds of thousands of them, so each
//! is a few plain numbers, kept in sorted vectors (no per-call allocation), and
//! the file names are shared. A forked child has copies of its parent's
//! mappings, so it starts with the parent's origins: shared, never copied, so
//! that a process with many mappings forking many times costs one copy.
use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashSet},
    ops::Deref,
    sync::Arc,
};

/// An mmap call, as much of it as a lifetime's `origin` needs: 40 bytes, as
/// a process with 200k mappings holds 200k of them.
#[derive(Clone, Debug)]
pub struct Origin {
    pub start: u64,
    pub len: u64,
    /// When the call was entered (do_mmap's return for kernel mappings).
    pub ts_ns: u64,
    pub path: Option<FileName>,
    /// The flags that have names (all below bit 32).
    flags: u32,
    /// How long the call took, in microseconds rounded up (so that a call is
    /// never taken as over before it was; TOOK_MAX: too long to tell), then
    /// PROT_READ|PROT_WRITE|PROT_EXEC, then whether the kernel's do_mmap made
    /// it outside any mmap syscall.
    meta: u32,
}

const TOOK_BITS: u32 = 28;
/// 268 s: a call that took longer is taken as still in progress.
const TOOK_MAX: u32 = (1 << TOOK_BITS) - 1;
const KERNEL_BIT: u32 = 1 << 31;

impl Origin {
    pub fn new(start: u64, len: u64, flags: u64, prot: u64, ts_ns: u64, exit_ns: u64) -> Self {
        let took_us = exit_ns.saturating_sub(ts_ns).div_ceil(1000);
        let took_us = u32::try_from(took_us).map_or(TOOK_MAX, |us| us.min(TOOK_MAX));
        Origin {
            start,
            len,
            ts_ns,
            path: None,
            flags: flags as u32,
            meta: took_us | ((prot & 0x7) as u32) << TOOK_BITS,
        }
    }

    pub fn flags(&self) -> u64 {
        self.flags.into()
    }

    pub fn prot(&self) -> u64 {
        ((self.meta >> TOOK_BITS) & 0x7).into()
    }

    /// Made by the kernel's do_mmap outside any mmap syscall.
    pub fn kernel(&self) -> bool {
        self.meta & KERNEL_BIT != 0
    }

    pub fn set_kernel(&mut self) {
        self.meta |= KERNEL_BIT;
    }

    /// When the call returned, at the latest.
    pub fn exit_ns(&self) -> u64 {
        match self.meta & TOOK_MAX {
            TOOK_MAX => u64::MAX,
            us => self.ts_ns.saturating_add(u64::from(us) * 1000),
        }
    }

    fn holds(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.start.saturating_add(self.len)
    }

    fn key(&self) -> (u64, u64) {
        (self.start, self.ts_ns)
    }
}

/// Calls sorted by (start, time), with the longest one's length: a lookup
/// goes back from an address only as far as a call could still reach it.
#[derive(Default)]
struct Layer {
    calls: Vec<Origin>,
    longest: u64,
}

impl Layer {
    fn new(calls: Vec<Origin>) -> Self {
        let longest = calls.iter().map(|o| o.len).max().unwrap_or(0);
        Layer { calls, longest }
    }

    fn len(&self) -> usize {
        self.calls.len()
    }

    /// Up to 64 calls that start at or below `addr` and might reach it,
    /// nearest first.
    fn below(&self, addr: u64) -> impl Iterator<Item = &Origin> {
        let end = self.calls.partition_point(|o| o.start <= addr);
        self.calls[..end]
            .iter()
            .rev()
            .take(64)
            .take_while(move |o| o.start.saturating_add(self.longest) > addr)
    }
}

/// Calls since the last freeze are kept in a small ordered map; at this size
/// they become a sorted layer.
const OWN_MAX: usize = 4096;
/// Frozen layers deeper than this are merged into one, so a lookup never
/// walks a long chain.
const MAX_LAYERS: usize = 12;

#[derive(Clone, Default)]
pub struct Origins {
    /// Calls made since the last fork or freeze, and the longest of them.
    own: BTreeMap<(u64, u64), Origin>,
    own_longest: u64,
    /// Calls made before, oldest first; shared with the processes forked since.
    frozen: Vec<Arc<Layer>>,
}

impl Origins {
    pub fn insert(&mut self, o: Origin) {
        self.own_longest = self.own_longest.max(o.len);
        self.own.insert(o.key(), o);
        if self.own.len() >= OWN_MAX {
            self.freeze();
        }
    }

    /// Takes `inherited` (a parent's, at the fork) under the calls already
    /// recorded here.
    pub fn adopt(&mut self, inherited: Origins) {
        let own = std::mem::take(&mut self.own);
        *self = inherited;
        for o in own.into_values() {
            self.insert(o);
        }
    }

    /// The child's origins at a fork: everything so far, shared.
    pub fn fork(&mut self) -> Origins {
        self.freeze();
        Origins {
            own: BTreeMap::new(),
            own_longest: 0,
            frozen: self.frozen.clone(),
        }
    }

    /// Moves the recent calls into a sorted layer. Layers are merged as a
    /// binary counter does (a layer no more than twice the size of the next
    /// one joins it), so there are O(log n) of them and each call is copied
    /// O(log n) times.
    fn freeze(&mut self) {
        if !self.own.is_empty() {
            let calls = std::mem::take(&mut self.own).into_values().collect();
            self.own_longest = 0;
            self.frozen.push(Arc::new(Layer::new(calls)));
        }
        while let [.., older, newer] = self.frozen.as_slice() {
            if older.len() > 2 * newer.len() && self.frozen.len() <= MAX_LAYERS {
                break;
            }
            let newer = self.frozen.pop().expect("two layers");
            let older = self.frozen.pop().expect("two layers");
            self.frozen.push(Arc::new(merge(&older, &newer)));
        }
    }

    /// The latest call, made by `before_ns`, whose range holds `addr` (the
    /// nearest starts below it first: smaller mappings may have been placed
    /// inside a larger one).
    pub fn covering(&self, addr: u64, before_ns: u64) -> Option<&Origin> {
        let recent = self.own.range(..=(addr, u64::MAX)).rev().map(|(_, o)| o);
        let recent = recent
            .take(64)
            .take_while(|o| o.start.saturating_add(self.own_longest) > addr);
        let frozen = self.frozen.iter().flat_map(|l| l.below(addr));
        recent
            .chain(frozen)
            .filter(|o| o.holds(addr) && o.ts_ns <= before_ns)
            .max_by_key(|o| o.ts_ns)
    }

    /// Whether a call over `addr` was in progress at `ts`.
    pub fn in_progress_at(&self, addr: u64, ts: u64) -> bool {
        let in_progress = |o: &Origin| o.holds(addr) && o.ts_ns <= ts && ts <= o.exit_ns();
        self.own
            .range(..=(addr, u64::MAX))
            .any(|(_, o)| in_progress(o))
            || self.frozen.iter().any(|l| {
                let end = l.calls.partition_point(|o| o.start <= addr);
                l.calls[..end].iter().any(in_progress)
            })
    }

    /// Keeps only the calls `keep` accepts, as one layer of this process's own
    /// (layers shared with forked children stay theirs).
    pub fn retain(&mut self, mut keep: impl FnMut(&Origin) -> bool) {
        let mut all: Vec<Origin> = std::mem::take(&mut self.own)
            .into_values()
            .filter(|o| keep(o))
            .collect();
        for layer in std::mem::take(&mut self.frozen) {
            all.extend(layer.calls.iter().filter(|o| keep(o)).cloned());
        }
        all.sort_unstable_by_key(Origin::key);
        self.own_longest = 0;
        if !all.is_empty() {
            self.frozen.push(Arc::new(Layer::new(all)));
        }
    }

    /// How many calls are held (shared layers counted in full).
    pub fn len(&self) -> usize {
        self.own.len() + self.frozen.iter().map(|l| l.len()).sum::<usize>()
    }
}

fn merge(a: &Layer, b: &Layer) -> Layer {
    let (a, b) = (&a.calls, &b.calls);
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].key() <= b[j].key() {
            out.push(a[i].clone());
            i += 1;
        } else {
            out.push(b[j].clone());
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    Layer::new(out)
}

/// A shared file name, one pointer wide: a process's mmap history holds one
/// per call, and a fat `Arc<str>` was 8 of its 56 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileName(Arc<Box<str>>);

impl FileName {
    pub fn new(name: &str) -> Self {
        FileName(Arc::new(name.into()))
    }
}

impl Deref for FileName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

// Hashes as the str it holds (Arc and Box hash their contents), so a set of
// them is searched by &str.
impl Borrow<str> for FileName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// File names of mappings, one copy each however many mappings name them.
#[derive(Default)]
pub struct PathNames(HashSet<FileName>);

impl PathNames {
    pub fn intern(&mut self, name: &str) -> FileName {
        if let Some(n) = self.0.get(name) {
            return n.clone();
        }
        let n = FileName::new(name);
        self.0.insert(n.clone());
        n
    }

    /// Forgets the names no mapping holds any more.
    pub fn prune(&mut self) {
        self.0.retain(|n| Arc::strong_count(&n.0) > 1);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(start: u64, len: u64, ts: u64) -> Origin {
        Origin::new(start, len, 0, 0, ts, ts + 1)
    }

    #[test]
    fn children_share_and_then_diverge() {
        let mut parent = Origins::default();
        parent.insert(origin(0x1000, 0x1000, 10));
        let mut child = parent.fork();
        parent.insert(origin(0x1000, 0x2000, 20));
        child.insert(origin(0x1800, 0x100, 30));
        assert_eq!(parent.covering(0x1800, 100).unwrap().ts_ns, 20);
        assert_eq!(child.covering(0x1800, 100).unwrap().ts_ns, 30);
        assert_eq!(child.covering(0x1000, 100).unwrap().ts_ns, 10);
        assert_eq!(child.covering(0x1800, 25).unwrap().ts_ns, 10);
        assert!(child.covering(0x3000, 100).is_none());
        // The call took 1 ns, counted as 1 µs: never over before it was.
        assert!(child.in_progress_at(0x1000, 11));
        assert!(!child.in_progress_at(0x1000, 10 + 1001));
        // The parent's history is one shared layer, whatever the number of forks.
        let kids: Vec<Origins> = (0..100).map(|_| parent.fork()).collect();
        assert!(kids
            .iter()
            .all(|k| Arc::ptr_eq(&k.frozen[0], &parent.frozen[0])));
        assert!(parent.frozen.len() <= MAX_LAYERS);
    }

    #[test]
    fn deep_chains_are_merged() {
        let mut p = Origins::default();
        for i in 0..50u64 {
            p.insert(origin(i * 0x1000, 0x1000, i));
            let _ = p.fork();
        }
        assert!(p.frozen.len() <= MAX_LAYERS);
        for i in 0..50u64 {
            assert_eq!(p.covering(i * 0x1000, 100).unwrap().ts_ns, i);
        }
    }

    #[test]
    fn many_calls_stay_few_layers_and_all_found() {
        let mut p = Origins::default();
        // Top-down placement, as mmap does: each call below the previous one.
        let n = 3 * OWN_MAX as u64 + 17;
        for i in 0..n {
            p.insert(origin(0x7000_0000_0000 - i * 0x2000, 0x1000, i + 1));
        }
        assert_eq!(p.len(), n as usize);
        assert!(p.frozen.len() <= 3, "{} layers", p.frozen.len());
        for l in &p.frozen {
            assert!(l.calls.windows(2).all(|w| w[0].key() <= w[1].key()));
        }
        for i in (0..n).step_by(97) {
            let addr = 0x7000_0000_0000 - i * 0x2000;
            assert_eq!(p.covering(addr + 0x800, u64::MAX).unwrap().ts_ns, i + 1);
            assert!(p.covering(addr + 0x1800, u64::MAX).is_none(), "a gap");
        }
    }

    #[test]
    fn long_calls_stay_in_progress() {
        let o = Origin::new(0, 0x1000, 0, 0, 5, u64::MAX);
        assert_eq!(o.exit_ns(), u64::MAX);
        let o = Origin::new(0, 0x1000, 0x8000_0000_0022, 7, 5, 2005);
        assert_eq!(o.exit_ns(), 2005);
        assert_eq!(
            Origin::new(0, 1, 0, 0, 5, 2006).exit_ns(),
            3005,
            "rounded up"
        );
        assert_eq!(o.flags(), 0x22);
        assert_eq!(o.prot(), 7);
    }

    #[test]
    fn a_call_is_five_words_with_its_facts_packed() {
        let mut o = Origin::new(0x1000, 0x2000, 0x22, 7, 5, 5 + 3_000);
        assert!(!o.kernel());
        o.set_kernel();
        assert_eq!((o.prot(), o.kernel(), o.exit_ns()), (7, true, 3_005));
        assert_eq!(std::mem::size_of::<Origin>(), 40);
        let slow = Origin::new(0, 1, 0, 3, 5, 5 + 300_000_000_000);
        assert_eq!(
            (slow.exit_ns(), slow.prot()),
            (u64::MAX, 3),
            "too long to tell"
        );
    }

    #[test]
    fn names_are_shared_and_pruned() {
        let mut names = PathNames::default();
        let a = names.intern("/usr/lib/libc.so.6");
        let b = names.intern("/usr/lib/libc.so.6");
        assert!(Arc::ptr_eq(&a.0, &b.0));
        drop(names.intern("/tmp/x"));
        names.prune();
        assert_eq!(names.len(), 1);
    }
}
