//! Reads the in-kernel aggregates into a plain [`Snapshot`], summing per-CPU values.
use std::os::fd::RawFd;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, Queue};
use rmaptrace_common::{
    AnonVmaMade, FastCount, FaultKey, FaultStats, LifeEntry, ProcStats, ThreadAcct, VmaRecord,
};

use super::{batch, loader::Probes};
use crate::model::snapshot::{
    rows_with_fast_counts, Counters, FaultTotals, Files, Lifetime, ProcTotals, Snapshot,
};

impl Probes {
    /// Frees the kernel rows of processes the model retired, or of mappings
    /// that ended in running ones, as found in the snapshot they were retired
    /// from: their aggregate rows, their lifetimes' descriptions and live-VMA
    /// entries (the LIVES key is the VMA struct; one that already names
    /// another lifetime, the struct reused, stays), and a retired process's
    /// overflow counts. No table is walked: the cost is that of the rows freed.
    ///
    /// For ended mappings the live-VMA entries go first, then each row is read
    /// and deleted in one step: a VMA struct freed and reused for a mapping of
    /// the same shape can still be counted on the old lifetime until its entry
    /// is gone, and those faults come back as `late` instead of being lost.
    pub fn forget(&mut self, gone: &[crate::model::trace::Retired]) -> Result<Forgotten> {
        let mut out = Forgotten::default();
        if gone.is_empty() {
            return Ok(out);
        }
        let ebpf = self.ebpf_mut();
        {
            let mut live: HashMap<&mut MapData, u64, LifeEntry> =
                HashMap::try_from(ebpf.map_mut("LIVES").context("LIVES map")?)?;
            let mut structs_gone = Vec::new();
            for (life, vma) in gone.iter().flat_map(|g| &g.lives) {
                if live.get(vma, 0).is_ok_and(|e| e.life == *life) {
                    let _ = live.remove(vma);
                    structs_gone.push(*vma);
                }
            }
            // What made their anon_vmas goes with them (the kernel drops it
            // when the struct is freed, where that is seen).
            let mut made: HashMap<&mut MapData, u64, AnonVmaMade> =
                HashMap::try_from(ebpf.map_mut("ANON_MADE").context("ANON_MADE map")?)?;
            for vma in &structs_gone {
                let _ = made.remove(vma);
            }
        }
        {
            let mut vmas: HashMap<&mut MapData, u64, VmaRecord> =
                HashMap::try_from(ebpf.map_mut("VMAS").context("VMAS map")?)?;
            for (life, _) in gone.iter().flat_map(|g| &g.lives) {
                out.lifetimes += u64::from(vmas.remove(life).is_ok());
            }
        }
        let faults_fd = self.map_fd("FAULTS")?;
        let (slot_fd, fast_fd) = (self.map_fd("ROW_SLOT")?, self.map_fd("ROW_FAST")?);
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let stats = std::mem::size_of::<FaultStats>().next_multiple_of(8);
        let mut slots_freed = Vec::new();
        for g in gone {
            for (i, key) in g.rows.iter().enumerate() {
                let mut t = FaultTotals::default();
                // The row's fast slot first: its faults are the row's too.
                if let Some(slot) = take_or_lookup(slot_fd, key, 4)? {
                    let slot: u32 = batch::value(&slot);
                    if let Ok(f) = fast_count(fast_fd, slot, cpus) {
                        t.merge(&f);
                    }
                    slots_freed.push(slot);
                }
                let Some(v) = take_or_lookup(faults_fd, key, stats * cpus)? else {
                    continue;
                };
                let Some(&(minor, major, kind)) = g.counted.get(i) else {
                    continue;
                };
                for cpu in v.chunks(stats) {
                    t.add(&batch::value::<FaultStats>(cpu));
                }
                let late = (t.minor.saturating_sub(minor), t.major.saturating_sub(major));
                if late != (0, 0) {
                    out.late.push((g.pid, kind, late.0, late.1));
                }
            }
        }
        let ebpf = self.ebpf_mut();
        if !slots_freed.is_empty() {
            // Zeroed before they are handed out again.
            let zero = || PerCpuValues::try_from(vec![FastCount::default(); cpus]);
            let mut fast: PerCpuArray<&mut MapData, FastCount> =
                PerCpuArray::try_from(ebpf.map_mut("ROW_FAST").context("ROW_FAST map")?)?;
            for &slot in &slots_freed {
                fast.set(slot, zero()?, 0)?;
            }
            let mut free: Queue<&mut MapData, u32> =
                Queue::try_from(ebpf.map_mut("SLOTS_FREE").context("SLOTS_FREE map")?)?;
            for slot in slots_freed {
                free.push(slot, 0)?;
            }
        }
        let mut procs: PerCpuHashMap<&mut MapData, u32, ProcStats> =
            PerCpuHashMap::try_from(ebpf.map_mut("PROCS").context("PROCS map")?)?;
        for g in gone.iter().filter(|g| g.whole) {
            let _ = procs.remove(&g.pid);
        }
        Ok(out)
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        // Test hook: the entry-by-entry reads, as on a kernel without batches.
        if batches_allowed() {
            if let Some(snap) = read_batched(self.table_fds()?)? {
                return Ok(snap);
            }
        }
        let mut snap = Snapshot::default();
        self.read_each(&mut snap)?;
        let ebpf = self.ebpf();
        let counters: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(ebpf.map("COUNTERS").context("COUNTERS map")?)?;
        let mut raw = [0u64; rmaptrace_common::counter::COUNT as usize];
        for (i, slot) in raw.iter_mut().enumerate() {
            *slot = counters.get(&(i as u32), 0)?.iter().sum();
        }
        snap.counters = Counters::from_raw(&raw);
        Ok(snap)
    }

    /// [`Probes::snapshot`], read on a second thread while this one calls
    /// `meanwhile` again and again (to keep the ring buffer read: a process
    /// mapping fast fills it in less time than 131k lifetimes take to read).
    pub fn snapshot_beside(&self, mut meanwhile: impl FnMut()) -> Result<Snapshot> {
        if batches_allowed() {
            let fds = self.table_fds()?;
            let read = std::thread::scope(|s| {
                let reader = s.spawn(move || read_batched(fds));
                while !reader.is_finished() {
                    meanwhile();
                }
                reader.join().expect("the tables' reader")
            })?;
            if let Some(snap) = read {
                return Ok(snap);
            }
        }
        self.snapshot()
    }

    /// Detaches the programs and, meanwhile, hands `f` the tables: for an end
    /// where nothing can change them (every traced process exited, and none
    /// can join). Where the kernel cannot read them in batches, they are read
    /// once the programs are detached.
    pub fn stop_then<R>(&mut self, f: impl FnOnce(Snapshot) -> R) -> Result<R> {
        let mut f = Some(f);
        if batches_allowed() {
            let fds = self.table_fds()?;
            let done = std::thread::scope(|s| -> Result<Option<R>> {
                self.detach_in(s);
                Ok(read_batched(fds)?.map(|snap| f.take().expect("called once")(snap)))
            })?;
            if let Some(r) = done {
                return Ok(r);
            }
        } else {
            self.stop();
        }
        Ok(f.take().expect("called once")(self.snapshot()?))
    }

    fn table_fds(&self) -> Result<TableFds> {
        Ok(TableFds {
            faults: self.map_fd("FAULTS")?,
            vmas: self.map_fd("VMAS")?,
            threads: self.map_fd("THREADS")?,
            procs: self.map_fd("PROCS")?,
            counters: self.map_fd("COUNTERS")?,
            row_slot: self.map_fd("ROW_SLOT")?,
            row_fast: self.map_fd("ROW_FAST")?,
        })
    }
}

/// What [`Probes::forget`] freed: lifetime descriptions, and faults counted
/// on ended lifetimes after the snapshot they were collected from (pid, kind,
/// minor, major).
#[derive(Debug, Default)]
pub struct Forgotten {
    pub lifetimes: u64,
    pub late: Vec<(u32, &'static str, u64, u64)>,
}

fn batches_allowed() -> bool {
    std::env::var_os("RMAPTRACE_NO_BATCH").is_none()
}

/// The tables' descriptors: reads through them borrow nothing of the loader,
/// so they can run beside the detach.
#[derive(Clone, Copy)]
struct TableFds {
    faults: RawFd,
    vmas: RawFd,
    threads: RawFd,
    procs: RawFd,
    counters: RawFd,
    row_slot: RawFd,
    row_fast: RawFd,
}

/// Reads and deletes `key`'s value (read, then deleted, on a kernel without
/// the combined step: before 5.14); None where there is none.
fn take_or_lookup<K: Copy>(fd: RawFd, key: &K, len: usize) -> Result<Option<Vec<u8>>> {
    match batch::take(fd, key, len) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(_) => match batch::lookup(fd, key, len) {
            Ok(v) => {
                batch::delete(fd, key)?;
                Ok(Some(v))
            }
            Err(_) => Ok(None),
        },
    }
}

/// The minor faults counted through fast slot `slot`, summed over CPUs.
fn fast_count(fd: RawFd, slot: u32, cpus: usize) -> std::io::Result<FaultTotals> {
    let stride = std::mem::size_of::<FastCount>().next_multiple_of(8);
    let v = batch::lookup(fd, &slot, stride * cpus)?;
    let mut t = FaultTotals::default();
    for cpu in v.chunks(stride) {
        t.add_fast(&batch::value(cpu));
    }
    Ok(t)
}

/// Each fast slot's row and faults (`ROW_SLOT`, `ROW_FAST`), one lookup per
/// slot in use.
fn fast_counts(
    fds: TableFds,
    slots: Vec<(FaultKey, u32)>,
    cpus: usize,
) -> std::io::Result<Vec<(FaultKey, FaultTotals)>> {
    slots
        .into_iter()
        .map(|(key, slot)| Ok((key, fast_count(fds.row_fast, slot, cpus)?)))
        .collect()
}

/// The tables, a few thousand rows per syscall; None where the kernel has no
/// batch lookup. The lifetimes are read first, the fault rows after them:
/// a lifetime seen ended (split, or replaced by a later one) ended before
/// that read, and its faults were counted before it ended (under the lock
/// its change waited for), so the rows read next hold all of them and the
/// lifetime can be collected. The fault table, most of the bytes, is read on
/// a second thread beside the small tables.
fn read_batched(fds: TableFds) -> Result<Option<Snapshot>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let per_cpu = |len: usize| len.next_multiple_of(8) * cpus;
    let mut snap = Snapshot::default();
    let t0 = std::time::Instant::now();
    let mut files = Files::default();
    let batched = batch::for_each(fds.vmas, std::mem::size_of::<VmaRecord>(), |key: u64, v| {
        let rec: VmaRecord = batch::value(v);
        snap.vmas
            .push((key, Lifetime::from_kernel(&rec, &mut files)))
    })?;
    if !batched {
        return Ok(None);
    }
    log::debug!("lifetimes: {} in {:?}", snap.vmas.len(), t0.elapsed());
    let (faults, rest) = std::thread::scope(|s| {
        let faults = s.spawn(|| {
            let t0 = std::time::Instant::now();
            let stats = std::mem::size_of::<FaultStats>();
            let mut rows = Vec::new();
            let read = batch::for_each(fds.faults, per_cpu(stats), |key: FaultKey, v| {
                let mut t = FaultTotals::default();
                for cpu in v.chunks(stats.next_multiple_of(8)) {
                    t.add(&batch::value::<FaultStats>(cpu));
                }
                rows.push((key, t));
            });
            log::debug!("fault table: {} rows in {:?}", rows.len(), t0.elapsed());
            read.map(|supported| supported.then_some(rows))
        });
        let rest = (|| -> std::io::Result<Vec<(FaultKey, FaultTotals)>> {
            batch::for_each(
                fds.threads,
                std::mem::size_of::<ThreadAcct>(),
                |key: u32, v| snap.threads.push((key, batch::value(v))),
            )?;
            let proc_stats = std::mem::size_of::<ProcStats>();
            batch::for_each(fds.procs, per_cpu(proc_stats), |tgid: u32, v| {
                let mut t = ProcTotals::default();
                for cpu in v.chunks(proc_stats.next_multiple_of(8)) {
                    t.add(&batch::value::<ProcStats>(cpu));
                }
                snap.overflow.push((tgid, t));
            })?;
            let mut raw = [0u64; rmaptrace_common::counter::COUNT as usize];
            for (i, slot) in raw.iter_mut().enumerate() {
                let v = batch::lookup(fds.counters, &(i as u32), per_cpu(8))?;
                *slot = v.chunks(8).map(batch::value::<u64>).sum();
            }
            snap.counters = Counters::from_raw(&raw);
            let mut slots = Vec::new();
            batch::for_each(fds.row_slot, 4, |key: FaultKey, v| {
                slots.push((key, batch::value::<u32>(v)))
            })?;
            fast_counts(fds, slots, cpus)
        })();
        (faults.join().expect("the fault table's reader"), rest)
    });
    let fast = rest?;
    match faults? {
        Some(rows) => {
            snap.faults = rows_with_fast_counts(rows, fast);
            Ok(Some(snap))
        }
        None => Ok(None),
    }
}

impl Probes {
    /// One of the programs' counters (`rmaptrace_common::counter`), summed
    /// over CPUs: one read, cheap enough for every tick.
    pub fn counter(&self, which: u32) -> Result<u64> {
        let counters: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf().map("COUNTERS").context("COUNTERS map")?)?;
        Ok(counters.get(&which, 0)?.iter().sum())
    }

    /// The tables entry by entry (two syscalls a row).
    fn read_each(&self, snap: &mut Snapshot) -> Result<()> {
        let ebpf = self.ebpf();
        let faults: PerCpuHashMap<&MapData, FaultKey, FaultStats> =
            PerCpuHashMap::try_from(ebpf.map("FAULTS").context("FAULTS map")?)?;
        let vmas: HashMap<&MapData, u64, VmaRecord> =
            HashMap::try_from(ebpf.map("VMAS").context("VMAS map")?)?;
        let threads: HashMap<&MapData, u32, ThreadAcct> =
            HashMap::try_from(ebpf.map("THREADS").context("THREADS map")?)?;
        let procs: PerCpuHashMap<&MapData, u32, ProcStats> =
            PerCpuHashMap::try_from(ebpf.map("PROCS").context("PROCS map")?)?;
        // Lifetimes before fault rows, as in `read_batched`.
        let mut files = Files::default();
        for item in vmas.iter() {
            let (life, rec) = item?;
            snap.vmas
                .push((life, Lifetime::from_kernel(&rec, &mut files)));
        }
        let mut rows = Vec::new();
        for item in faults.iter() {
            let (key, per_cpu) = item?;
            let mut t = FaultTotals::default();
            for s in per_cpu.iter() {
                t.add(s);
            }
            rows.push((key, t));
        }
        let row_slot: HashMap<&MapData, FaultKey, u32> =
            HashMap::try_from(ebpf.map("ROW_SLOT").context("ROW_SLOT map")?)?;
        let fast: PerCpuArray<&MapData, FastCount> =
            PerCpuArray::try_from(ebpf.map("ROW_FAST").context("ROW_FAST map")?)?;
        let mut fast_rows = Vec::new();
        for item in row_slot.iter() {
            let (key, slot) = item?;
            let mut t = FaultTotals::default();
            for f in fast.get(&slot, 0)?.iter() {
                t.add_fast(f);
            }
            fast_rows.push((key, t));
        }
        snap.faults = rows_with_fast_counts(rows, fast_rows);
        for item in threads.iter() {
            snap.threads.push(item?);
        }
        for item in procs.iter() {
            let (tgid, per_cpu) = item?;
            let mut t = ProcTotals::default();
            for s in per_cpu.iter() {
                t.add(s);
            }
            snap.overflow.push((tgid, t));
        }
        Ok(())
    }

    pub(super) fn map_fd(&self, name: &str) -> Result<RawFd> {
        use aya::maps::Map;
        use std::os::fd::{AsFd, AsRawFd};
        let data = match self
            .ebpf()
            .map(name)
            .with_context(|| format!("{name} map"))?
        {
            Map::HashMap(d)
            | Map::PerCpuHashMap(d)
            | Map::PerCpuArray(d)
            | Map::StackTraceMap(d) => d,
            _ => anyhow::bail!("{name} is not a hash map, a per-CPU array or a stack table"),
        };
        Ok(data.fd().as_fd().as_raw_fd())
    }
}
