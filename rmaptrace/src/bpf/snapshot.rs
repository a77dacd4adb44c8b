//! Reads the in-kernel aggregates into a plain [`Snapshot`], summing per-CPU values.
use std::os::fd::RawFd;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap};
use rmaptrace_common::{FaultKey, FaultStats, LifeEntry, ProcStats, ThreadAcct, VmaRecord};

use super::{batch, loader::Probes};
use crate::model::snapshot::{Counters, FaultTotals, ProcTotals, Snapshot};

impl Probes {
    /// Frees the kernel rows of processes the model retired, as found in the
    /// snapshot they were retired from: their aggregate rows, their lifetimes'
    /// descriptions and live-VMA entries (the LIVES key is the VMA struct; one
    /// that already names another lifetime, the struct reused, stays), and their
    /// overflow counts. No table is walked: the cost is that of the rows freed.
    pub fn forget(&mut self, gone: &[crate::model::trace::Retired]) -> Result<()> {
        if gone.is_empty() {
            return Ok(());
        }
        let ebpf = self.ebpf_mut();
        {
            let mut faults: PerCpuHashMap<&mut MapData, FaultKey, FaultStats> =
                PerCpuHashMap::try_from(ebpf.map_mut("FAULTS").context("FAULTS map")?)?;
            for k in gone.iter().flat_map(|g| &g.rows) {
                let _ = faults.remove(k);
            }
        }
        {
            let mut vmas: HashMap<&mut MapData, u64, VmaRecord> =
                HashMap::try_from(ebpf.map_mut("VMAS").context("VMAS map")?)?;
            for (life, _) in gone.iter().flat_map(|g| &g.lives) {
                let _ = vmas.remove(life);
            }
        }
        {
            let mut live: HashMap<&mut MapData, u64, LifeEntry> =
                HashMap::try_from(ebpf.map_mut("LIVES").context("LIVES map")?)?;
            for (life, vma) in gone.iter().flat_map(|g| &g.lives) {
                if live.get(vma, 0).is_ok_and(|e| e.life == *life) {
                    let _ = live.remove(vma);
                }
            }
        }
        let mut procs: PerCpuHashMap<&mut MapData, u32, ProcStats> =
            PerCpuHashMap::try_from(ebpf.map_mut("PROCS").context("PROCS map")?)?;
        for g in gone {
            let _ = procs.remove(&g.pid);
        }
        Ok(())
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
        })
    }
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
}

/// The tables, a few thousand rows per syscall; None where the kernel has no
/// batch lookup. The fault table, most of the bytes, is read on a second
/// thread.
fn read_batched(fds: TableFds) -> Result<Option<Snapshot>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let per_cpu = |len: usize| len.next_multiple_of(8) * cpus;
    let mut snap = Snapshot::default();
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
        let rest = (|| -> std::io::Result<bool> {
            let t0 = std::time::Instant::now();
            let vmas =
                batch::for_each(fds.vmas, std::mem::size_of::<VmaRecord>(), |key: u64, v| {
                    snap.vmas.push((key, batch::value(v)))
                })?;
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
            log::debug!(
                "other tables: {} lifetimes in {:?}",
                snap.vmas.len(),
                t0.elapsed()
            );
            Ok(vmas)
        })();
        (faults.join().expect("the fault table's reader"), rest)
    });
    match (faults?, rest?) {
        (Some(rows), true) => {
            snap.faults = rows;
            Ok(Some(snap))
        }
        _ => Ok(None),
    }
}

impl Probes {
    /// Events the ring buffer had no room for so far (one read, cheap enough
    /// for every tick).
    pub fn events_lost(&self) -> Result<u64> {
        let counters: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf().map("COUNTERS").context("COUNTERS map")?)?;
        Ok(counters
            .get(&rmaptrace_common::counter::EVENTS_LOST, 0)?
            .iter()
            .sum())
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
        for item in faults.iter() {
            let (key, per_cpu) = item?;
            let mut t = FaultTotals::default();
            for s in per_cpu.iter() {
                t.add(s);
            }
            snap.faults.push((key, t));
        }
        for item in vmas.iter() {
            snap.vmas.push(item?);
        }
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

    fn map_fd(&self, name: &str) -> Result<RawFd> {
        use aya::maps::Map;
        use std::os::fd::{AsFd, AsRawFd};
        let data = match self
            .ebpf()
            .map(name)
            .with_context(|| format!("{name} map"))?
        {
            Map::HashMap(d) | Map::PerCpuHashMap(d) | Map::PerCpuArray(d) => d,
            _ => anyhow::bail!("{name} is not a hash map or a per-CPU array"),
        };
        Ok(data.fd().as_fd().as_raw_fd())
    }
}
