//! A point-in-time copy of the in-kernel aggregates, as plain data. The kernel maps
//! are cumulative, so each snapshot replaces the previous one.
use crate::model::{code::Code, origins::FileName};

use rmaptrace_common::{
    counter, latency_bucket_floor, FaultKey, FaultStats, ThreadAcct, VmaInfo, VmaRecord,
    LAT_BUCKETS,
};
use serde::Serialize;

/// What userspace uses of the kernel's description of a VMA ([`VmaInfo`]):
/// under half its size, its file shared. A process with 131k mappings holds
/// one per mapping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vma {
    /// The `struct vm_area_struct *`, to free its live-VMA entry.
    pub vma: u64,
    pub vm_start: u64,
    pub vm_end: u64,
    pub vm_flags: u64,
    /// `vm_ops->fault`.
    pub fault_fn: Code,
    /// The file's `f_op->mmap_prepare` or `f_op->mmap` (none without a file).
    pub setup_fn: Code,
    /// `vm_ops` set: the kernel's own test for a VMA that is not anonymous.
    pub has_ops: bool,
    /// The mapped file (`vm_file`), None without one.
    pub file: Option<MappedFile>,
}

/// A mapped file as the kernel described it, one pointer wide and shared by
/// every lifetime that maps it (most mappings have none, and most files are
/// mapped several times).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile(std::sync::Arc<FileMeta>);

#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileMeta {
    pub ino: u64,
    pub rdev: u32,
    pub i_mode: u16,
    /// Base name of its dentry.
    pub name: Option<FileName>,
}

impl MappedFile {
    pub fn new(meta: FileMeta) -> Self {
        MappedFile(std::sync::Arc::new(meta))
    }
}

impl std::ops::Deref for MappedFile {
    type Target = FileMeta;
    fn deref(&self) -> &FileMeta {
        &self.0
    }
}

impl Vma {
    /// The kernel's description, its file taken from `files` where it is
    /// already there.
    pub fn from_kernel(info: &VmaInfo, files: &mut Files) -> Self {
        Vma {
            vma: info.vma,
            vm_start: info.vm_start,
            vm_end: info.vm_end,
            vm_flags: info.vm_flags,
            fault_fn: Code::of(info.fault_fn),
            setup_fn: Code::of_setup(info.setup_fn, info.setup_prepare_fn),
            has_ops: info.vm_ops != 0,
            file: (info.file != 0).then(|| files.get(info)),
        }
    }

    pub fn has_file(&self) -> bool {
        self.file.is_some()
    }

    /// The file's inode mode (0 without a file).
    pub fn i_mode(&self) -> u16 {
        self.file.as_ref().map_or(0, |f| f.i_mode)
    }

    pub fn ino(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.ino)
    }

    pub fn rdev(&self) -> u32 {
        self.file.as_ref().map_or(0, |f| f.rdev)
    }

    /// Base name of the mapped file's dentry.
    pub fn name(&self) -> Option<&str> {
        self.file.as_ref()?.name.as_deref()
    }
}

type FileKey = ([u8; rmaptrace_common::VMA_NAME_LEN], u64, u32, u16);

/// Mapped files as the kernel's records describe them, one copy each.
#[derive(Default)]
pub struct Files(std::collections::HashMap<FileKey, MappedFile>);

impl Files {
    fn get(&mut self, info: &VmaInfo) -> MappedFile {
        self.0
            .entry((info.name, info.ino, info.rdev, info.i_mode))
            .or_insert_with(|| {
                MappedFile::new(FileMeta {
                    ino: info.ino,
                    rdev: info.rdev,
                    i_mode: info.i_mode,
                    name: (info.name[0] != 0)
                        .then(|| FileName::new(&crate::model::event::c_str(&info.name))),
                })
            })
            .clone()
    }

    /// Forgets the files no mapping holds any more.
    pub fn prune(&mut self) {
        self.0.retain(|_, f| std::sync::Arc::strong_count(&f.0) > 1);
    }
}

/// A mapping lifetime as userspace keeps it ([`VmaRecord`], compact).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lifetime {
    pub tgid: u32,
    /// The VMA's `vm_lock_seq` when last looked up (beside `tgid`, not in
    /// `info`: 8 bytes less for each of 131k lifetimes).
    pub lock_seq: u32,
    /// When it was first seen, and when the kernel saw it end (split or
    /// shrunk; 0 while it did not).
    pub first_ns: u64,
    pub ended_ns: u64,
    /// What made its anon_vma, and when.
    pub anon_vma: AnonVmaSeen,
    /// The VMA as last looked up.
    pub info: Vma,
}

impl Lifetime {
    pub fn from_kernel(r: &VmaRecord, files: &mut Files) -> Self {
        Lifetime {
            tgid: r.tgid,
            lock_seq: r.info.lock_seq,
            first_ns: r.first_ns,
            ended_ns: r.ended_ns,
            anon_vma: AnonVmaSeen::new(r.anon_vma_by, r.anon_vma_ns),
            info: Vma::from_kernel(&r.info, files),
        }
    }
}

/// What made a VMA's anon_vma (an `anon_vma_by` value) and when, in one word:
/// the maker in the top three bits, the time (ns since boot, 2^61: 73 years)
/// below. Zero: none seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnonVmaSeen(u64);

const ANON_BY_SHIFT: u32 = 61;

impl AnonVmaSeen {
    pub fn new(by: u32, ns: u64) -> Self {
        if by == rmaptrace_common::anon_vma_by::NONE {
            return Self::default();
        }
        Self((u64::from(by.min(7)) << ANON_BY_SHIFT) | (ns & ((1 << ANON_BY_SHIFT) - 1)))
    }

    /// An `anon_vma_by` value.
    pub fn by(self) -> u32 {
        (self.0 >> ANON_BY_SHIFT) as u32
    }

    /// None when none was seen.
    pub fn ns(self) -> Option<u64> {
        (self.by() != rmaptrace_common::anon_vma_by::NONE)
            .then_some(self.0 & ((1 << ANON_BY_SHIFT) - 1))
    }
}

/// A latency histogram that stores only its non-empty buckets, sorted: most VMAs
/// use a handful of the 96, and rmaptrace holds one per VMA (100k VMAs at 768
/// bytes each were most of its memory). A bucket is one word, its index in the
/// top byte and its count below (2^56 faults: never reached), so two fit in
/// the struct without an allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hist(smallvec::SmallVec<[u64; 2]>);

const COUNT_BITS: u32 = 56;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;

fn bucket_of(word: u64) -> u8 {
    (word >> COUNT_BITS) as u8
}

fn count_of(word: u64) -> u64 {
    word & COUNT_MAX
}

impl Hist {
    /// A histogram with the given buckets set, for tests.
    #[cfg(test)]
    pub fn from_buckets(buckets: &[(usize, u64)]) -> Self {
        let mut h = Hist::default();
        for &(i, n) in buckets {
            h.add(i, n);
        }
        h
    }

    pub fn add(&mut self, bucket: usize, n: u64) {
        if n == 0 || bucket >= LAT_BUCKETS {
            return;
        }
        let b = bucket as u8;
        match self.0.binary_search_by_key(&b, |w| bucket_of(*w)) {
            Ok(pos) => {
                let n = count_of(self.0[pos]).saturating_add(n).min(COUNT_MAX);
                self.0[pos] = u64::from(b) << COUNT_BITS | n;
            }
            Err(pos) => self
                .0
                .insert(pos, u64::from(b) << COUNT_BITS | n.min(COUNT_MAX)),
        }
    }

    /// Takes `n` out of `bucket` (never below zero).
    pub fn sub(&mut self, bucket: usize, n: u64) {
        let b = bucket as u8;
        if let Ok(pos) = self.0.binary_search_by_key(&b, |w| bucket_of(*w)) {
            let left = count_of(self.0[pos]).saturating_sub(n);
            if left == 0 {
                self.0.remove(pos);
            } else {
                self.0[pos] = u64::from(b) << COUNT_BITS | left;
            }
        }
    }

    pub fn merge(&mut self, other: &Hist) {
        for (i, n) in other.buckets() {
            self.add(i, n);
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|w| count_of(*w)).sum()
    }

    /// (bucket, count) of the non-empty buckets, in bucket order.
    pub fn buckets(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.0.iter().map(|&w| (bucket_of(w) as usize, count_of(w)))
    }

    /// All LAT_BUCKETS counts, for display.
    pub fn to_dense(&self) -> Vec<u64> {
        let mut d = vec![0; LAT_BUCKETS];
        for (i, n) in self.buckets() {
            d[i] = n;
        }
        d
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultTotals {
    pub minor: u64,
    pub major: u64,
    pub timed: u64,
    pub latency_sum_ns: u64,
    pub latency_max_ns: u64,
    pub handler_calls: u64,
    pub handler_ns: u64,
    /// Completion time of the latest fault.
    pub last_ns: u64,
    pub hist: Hist,
}

impl FaultTotals {
    /// Adds one CPU's share of a kernel row.
    pub fn add(&mut self, s: &FaultStats) {
        self.merge(&FaultTotals {
            minor: s.minor,
            major: s.major,
            timed: s.timed,
            latency_sum_ns: s.latency_sum_ns,
            latency_max_ns: s.latency_max_ns,
            handler_calls: s.handler_calls,
            handler_ns: s.handler_ns,
            last_ns: s.last_ns,
            hist: Hist::default(),
        });
        for (i, &n) in s.latency_hist.iter().enumerate() {
            if n != 0 {
                self.hist.add(i, n as u64);
            }
        }
    }

    /// A kernel row once all its CPUs are added. Counting at the entry
    /// settles a fault on the CPU where it completes or is taken back, so one
    /// CPU's share can be below zero (wrapped): the wrapping sum is exact. A
    /// sum still below zero was read while a settle raced the read (the
    /// count on one CPU not yet seen, its settle on another seen): held at
    /// zero until the next read.
    pub fn settled(mut self) -> Self {
        for n in [&mut self.minor, &mut self.major] {
            if (*n as i64) < 0 {
                *n = 0;
            }
        }
        self
    }

    /// Adds one CPU's minor faults counted through the row's fast slot.
    pub fn add_fast(&mut self, f: &rmaptrace_common::FastCount) {
        self.minor = self.minor.wrapping_add(f.minor);
        self.last_ns = self.last_ns.max(f.last_ns);
    }

    pub fn merge(&mut self, o: &FaultTotals) {
        self.minor = self.minor.wrapping_add(o.minor);
        self.major = self.major.wrapping_add(o.major);
        self.timed += o.timed;
        self.latency_sum_ns += o.latency_sum_ns;
        self.latency_max_ns = self.latency_max_ns.max(o.latency_max_ns);
        self.handler_calls += o.handler_calls;
        self.handler_ns += o.handler_ns;
        self.last_ns = self.last_ns.max(o.last_ns);
        self.hist.merge(&o.hist);
    }

    pub fn total(&self) -> u64 {
        self.minor + self.major
    }

    /// Moves one fault (major or not, with its latency if it was timed) from
    /// `self` to `to`. The maximum latency stays where it was: it is an upper
    /// bound either way.
    pub fn move_one(&mut self, to: &mut FaultTotals, major: bool, latency: Option<u64>, ts: u64) {
        if major {
            self.major = self.major.saturating_sub(1);
            to.major += 1;
        } else {
            self.minor = self.minor.saturating_sub(1);
            to.minor += 1;
        }
        if let Some(ns) = latency {
            self.timed = self.timed.saturating_sub(1);
            self.latency_sum_ns = self.latency_sum_ns.saturating_sub(ns);
            let b = rmaptrace_common::latency_bucket(ns);
            self.hist.sub(b, 1);
            to.timed += 1;
            to.latency_sum_ns += ns;
            to.latency_max_ns = to.latency_max_ns.max(ns);
            to.hist.add(b, 1);
        }
        to.last_ns = to.last_ns.max(ts);
    }

    /// Latency at quantile `q` (0..=1): the lower bound of the bucket that holds it.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        let n: u64 = self.hist.total();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in self.hist.buckets() {
            seen += c;
            if seen >= rank {
                return Some(latency_bucket_floor(i).min(self.latency_max_ns));
            }
        }
        None
    }
}

/// The kernel's fault rows as read (`rows`, per-CPU values summed, not yet
/// settled) with each fast slot's minor faults (`fast`: the row of the slot,
/// its faults summed over CPUs) added to its row, then settled. A slot whose
/// row is missing (the table was full when it was made again) is a row of its
/// own: its faults are counted all the same.
pub fn rows_with_fast_counts(
    mut rows: Vec<(FaultKey, FaultTotals)>,
    fast: Vec<(FaultKey, FaultTotals)>,
) -> Vec<(FaultKey, FaultTotals)> {
    if !fast.is_empty() {
        let at: std::collections::HashMap<FaultKey, usize> =
            rows.iter().enumerate().map(|(i, (k, _))| (*k, i)).collect();
        for (key, t) in fast {
            match at.get(&key) {
                Some(&i) => rows[i].1.merge(&t),
                None => rows.push((key, t)),
            }
        }
    }
    rows.into_iter().map(|(k, t)| (k, t.settled())).collect()
}

/// Faults of a process counted outside the per-VMA table because it was full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcTotals {
    pub minor: u64,
    pub major: u64,
}

impl ProcTotals {
    /// Adds one CPU's counts.
    pub fn add(&mut self, s: &rmaptrace_common::ProcStats) {
        self.minor += s.minor;
        self.major += s.major;
    }
}

/// Global counters of the probes, named for the export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Counters {
    pub events_lost: u64,
    pub completions_without_entry: u64,
    pub entries_without_completion: u64,
    pub inflight_table_full: u64,
    pub process_table_full: u64,
    pub vma_table_full: u64,
    pub traced_table_full: u64,
    /// Tracepoint backend: completions whose VMA came from the thread's cache, and
    /// those that needed a bpf_find_vma.
    pub vma_cache_hits: u64,
    pub vma_lookups: u64,
    /// Lookups that failed with -EBUSY (a writer held or awaited mmap_lock), or
    /// found no VMA (or another error).
    pub vma_lookups_busy: u64,
    pub vma_lookups_failed: u64,
    /// VMAs whose lifetime could not be remembered by their struct: their next
    /// lookup starts another lifetime (row).
    pub life_table_full: u64,
    /// Threads whose kernel counters could not be followed.
    pub thread_table_full: u64,
    /// Faults lost because the tracepoint backend's tail call failed.
    pub tail_call_failed: u64,
    /// Kernel mmaps whose origin was not recorded: do_mmap's argument table
    /// (kprobe backend) was full.
    pub mmap_args_table_full: u64,
    /// Mapping lifetimes stored in the lifetime table so far, and those the
    /// kernel was seen to end by splitting or shrinking their VMA.
    pub lifetimes_started: u64,
    pub lifetimes_split: u64,
    /// mmap calls whose pages installed by the handler could not be counted:
    /// the per-thread table was full.
    pub prefill_table_full: u64,
    /// VMAs whose anon_vma was seen made but could not be remembered (or
    /// kprobe calls whose argument was not kept): their `anon_vma.by` is
    /// `unknown`.
    pub anon_made_table_full: u64,
    /// `--stacks`: faults whose user stack was not stored (its slot in the
    /// stack table held another stack, or no user stack could be walked),
    /// and whose (row, stack) count could not be (the table was full). They
    /// are counted in their rows all the same.
    pub stacks_lost: u64,
    pub stack_rows_full: u64,
    /// Counting at the entry: faults counted there that the kernel then did
    /// not count (they failed), taken back.
    pub faults_taken_back: u64,
    /// Counting at the entry: sampled minor completions, and major ones,
    /// whose entry was not timed. They count all the same, without latency.
    pub samples_untimed: u64,
    pub majors_untimed: u64,
    /// Counting at the entry: faults whose entry could not find their VMA,
    /// placed in it since (as they took mmap_lock, or at their thread's next
    /// fault).
    pub placed_late: u64,
    /// Counting at the entry: faults counted at their entry in a VMA replaced
    /// before the kernel handled them, moved to the one that served them.
    pub moved_late: u64,
    /// Counting at the entry: entries that read the clock (those of faults
    /// that can be major or may be the sampled minor one, and lookups).
    pub entries_timed: u64,
    /// Counting at the entry: rows that found no fast slot free (`ROW_SLOT`
    /// full, or the CPU's share used): counted through the hash, as exactly
    /// (not a table that loses anything: not in `tables_full`). Slots taken
    /// again once freed with their rows.
    pub fast_slots_full: u64,
    pub fast_slots_reused: u64,
}

impl Counters {
    pub fn from_raw(raw: &[u64]) -> Self {
        let at = |i: u32| raw.get(i as usize).copied().unwrap_or(0);
        Self {
            events_lost: at(counter::EVENTS_LOST),
            completions_without_entry: at(counter::UNMATCHED_COMPLETION),
            entries_without_completion: at(counter::ENTRY_WITHOUT_COMPLETION),
            inflight_table_full: at(counter::INFLIGHT_FULL),
            process_table_full: at(counter::PROC_TABLE_FULL),
            vma_table_full: at(counter::VMA_TABLE_FULL),
            traced_table_full: at(counter::TRACED_TABLE_FULL),
            vma_cache_hits: at(counter::VMA_CACHE_HIT),
            vma_lookups: at(counter::VMA_LOOKUP),
            tail_call_failed: at(counter::TAIL_CALL_FAILED),
            vma_lookups_busy: at(counter::VMA_LOOKUP_BUSY),
            vma_lookups_failed: at(counter::VMA_LOOKUP_NONE),
            life_table_full: at(counter::LIFE_TABLE_FULL),
            thread_table_full: at(counter::THREAD_TABLE_FULL),
            mmap_args_table_full: at(counter::MMAP_ARGS_FULL),
            lifetimes_started: at(counter::LIFE_STARTED),
            lifetimes_split: at(counter::LIFE_SPLIT),
            prefill_table_full: at(counter::PREFILL_TABLE_FULL),
            anon_made_table_full: at(counter::ANON_MADE_FULL),
            stacks_lost: at(counter::STACK_LOST),
            stack_rows_full: at(counter::STACK_ROWS_FULL),
            faults_taken_back: at(counter::FAULT_TAKEN_BACK),
            samples_untimed: at(counter::SAMPLE_UNTIMED),
            majors_untimed: at(counter::MAJOR_UNTIMED),
            placed_late: at(counter::PLACED_LATE),
            moved_late: at(counter::MOVED_LATE),
            entries_timed: at(counter::ENTRIES_TIMED),
            fast_slots_full: at(counter::FAST_SLOTS_FULL),
            fast_slots_reused: at(counter::FAST_SLOTS_REUSED),
        }
    }

    /// Every kernel table that was full at least once, by map name, with how
    /// many times something could not be stored in it.
    pub fn tables_full(&self) -> Vec<(&'static str, u64)> {
        self.table_full_counts()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Every kernel table that can be full, by map name, with how many times
    /// something could not be stored in it (0 included).
    pub fn table_full_counts(&self) -> [(&'static str, u64); 10] {
        [
            ("INFLIGHT", self.inflight_table_full),
            ("PROCS", self.process_table_full),
            ("VMAS", self.vma_table_full),
            ("TRACED", self.traced_table_full),
            ("LIVES", self.life_table_full),
            ("THREADS", self.thread_table_full),
            ("DO_MMAP_ARGS", self.mmap_args_table_full),
            ("PREFILL", self.prefill_table_full),
            ("ANON_MADE", self.anon_made_table_full),
            ("STACK_COUNTS", self.stack_rows_full),
        ]
    }
}

/// The lifetime a fault row counts faults of; None when no VMA was found.
pub fn row_life(key: &FaultKey) -> Option<u64> {
    (key.vma_status == rmaptrace_common::vma_status::FOUND && key.life != 0).then_some(key.life)
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub faults: Vec<(FaultKey, FaultTotals)>,
    /// Mapping lifetimes by id.
    pub vmas: Vec<(u64, Lifetime)>,
    /// The kernel's counters of each followed thread, by tid.
    pub threads: Vec<(u32, ThreadAcct)>,
    /// Per process, faults that found the per-VMA table full.
    pub overflow: Vec<(u32, ProcTotals)>,
    pub counters: Counters,
}

impl Snapshot {
    /// Puts the rows in the order lookups need: lifetimes by id, fault rows by
    /// process, lifetime (none first), access and path.
    pub fn sort(&mut self) {
        self.vmas.sort_unstable_by_key(|(life, _)| *life);
        self.faults.sort_unstable_by_key(|(k, _)| {
            (k.tgid, row_life(k), k.access, k.path, k.vma_status, k.flags)
        });
    }

    /// Every row of one lifetime of `tgid`, as the kernel keeps them (the
    /// snapshot sorted).
    pub fn rows_of(&self, tgid: u32, life: u64) -> &[(FaultKey, FaultTotals)] {
        let at = |k: &FaultKey| (k.tgid, row_life(k));
        let lo = self
            .faults
            .partition_point(|(k, _)| at(k) < (tgid, Some(life)));
        let n = self.faults[lo..].partition_point(|(k, _)| at(k) <= (tgid, Some(life)));
        &self.faults[lo..lo + n]
    }

    /// A lifetime's description (the snapshot sorted).
    pub fn record(&self, life: u64) -> Option<&Lifetime> {
        self.vmas
            .binary_search_by_key(&life, |(l, _)| *l)
            .ok()
            .map(|at| &self.vmas[at].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_histogram() {
        let mut t = FaultTotals::default();
        assert_eq!(t.percentile(0.5), None);
        t.hist = Hist::from_buckets(&[(4, 99), (20, 1)]); // 128..160 ns, 2048.. ns
        t.latency_max_ns = 3000;
        assert_eq!(t.percentile(0.5), Some(128));
        assert_eq!(t.percentile(0.99), Some(128));
        assert_eq!(t.percentile(1.0), Some(2048));
        t.latency_max_ns = 100;
        assert_eq!(t.percentile(0.5), Some(100), "never above the true maximum");
    }

    #[test]
    fn histogram_buckets_stay_sorted_and_counted() {
        let mut h = Hist::from_buckets(&[(40, 3), (2, 5), (95, 1), (96, 7)]);
        h.add(2, 1);
        assert_eq!(h.buckets().collect::<Vec<_>>(), [(2, 6), (40, 3), (95, 1)]);
        h.sub(40, 3);
        h.sub(95, 9);
        assert_eq!(h.buckets().collect::<Vec<_>>(), [(2, 6)]);
        h.add(2, u64::MAX);
        assert_eq!(h.total(), COUNT_MAX, "saturates within its bits");
        assert_eq!(std::mem::size_of::<Hist>(), 24, "two buckets inline");
    }

    #[test]
    fn faults_counted_through_fast_slots_join_their_rows_before_settling() {
        let key = |life| FaultKey {
            tgid: 7,
            life,
            vma_status: rmaptrace_common::vma_status::FOUND,
            ..Default::default()
        };
        let totals = |minor: u64, major, last_ns| FaultTotals {
            minor,
            major,
            last_ns,
            ..Default::default()
        };
        let fast = |minor: u64, last_ns| {
            let mut t = FaultTotals::default();
            t.add_fast(&rmaptrace_common::FastCount { minor, last_ns });
            t
        };
        let rows = vec![
            // A fault counted through the slot, then moved to major through
            // the hash: -1 minor there until the slot's are added.
            (key(1), totals(1u64.wrapping_neg(), 1, 50)),
            (key(2), totals(5, 0, 10)),
        ];
        let merged =
            rows_with_fast_counts(rows, vec![(key(1), fast(100, 90)), (key(3), fast(4, 20))]);
        assert_eq!(merged[0], (key(1), totals(99, 1, 90)));
        assert_eq!(merged[1], (key(2), totals(5, 0, 10)), "no slot");
        assert_eq!(merged[2], (key(3), totals(4, 0, 20)), "its row missing");
        // Without the slot's faults the row holds at zero, as any racing read.
        let alone =
            rows_with_fast_counts(vec![(key(1), totals(1u64.wrapping_neg(), 1, 50))], vec![]);
        assert_eq!(alone[0].1.minor, 0);
    }

    #[test]
    fn a_snapshot_row_stays_small() {
        // 131k of each at once in a process with that many mappings.
        assert_eq!(std::mem::size_of::<(u64, Lifetime)>(), 96);
        assert_eq!(std::mem::size_of::<(FaultKey, FaultTotals)>(), 104);
    }
}
