//! Reads the in-kernel aggregates into a plain [`Snapshot`], summing per-CPU values.
use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap};
use rmaptrace_common::{FaultKey, FaultStats, LifeEntry, ProcStats, ThreadAcct, VmaRecord};

use super::loader::Probes;
use crate::model::snapshot::{Counters, FaultTotals, ProcTotals, Snapshot};

impl Probes {
    /// Frees the kernel rows of processes the model retired: their aggregate
    /// rows (those counted before their exit: a reused pid's are not theirs),
    /// their lifetimes' descriptions and live-VMA entries, and their overflow
    /// counts. A lifetime's entry is found by its id, the LIVES key being the
    /// VMA struct.
    pub fn forget(&mut self, gone: &[crate::model::trace::Retired]) -> Result<()> {
        if gone.is_empty() {
            return Ok(());
        }
        let ebpf = self.ebpf_mut();
        {
            let mut faults: PerCpuHashMap<&mut MapData, FaultKey, FaultStats> =
                PerCpuHashMap::try_from(ebpf.map_mut("FAULTS").context("FAULTS map")?)?;
            let doomed: Vec<FaultKey> = faults
                .iter()
                .filter_map(|r| r.ok())
                .filter(|(k, per_cpu)| {
                    let last = per_cpu.iter().map(|s| s.last_ns).max().unwrap_or(0);
                    gone.iter().any(|g| g.pid == k.tgid && last <= g.exit_ns)
                })
                .map(|(k, _)| k)
                .collect();
            for k in doomed {
                let _ = faults.remove(&k);
            }
        }
        let lives: std::collections::HashSet<u64> =
            gone.iter().flat_map(|g| g.lives.iter().copied()).collect();
        {
            let mut vmas: HashMap<&mut MapData, u64, VmaRecord> =
                HashMap::try_from(ebpf.map_mut("VMAS").context("VMAS map")?)?;
            for l in &lives {
                let _ = vmas.remove(l);
            }
        }
        {
            let mut live: HashMap<&mut MapData, u64, LifeEntry> =
                HashMap::try_from(ebpf.map_mut("LIVES").context("LIVES map")?)?;
            let doomed: Vec<u64> = live
                .iter()
                .filter_map(|r| r.ok())
                .filter(|(_, e)| lives.contains(&e.life))
                .map(|(k, _)| k)
                .collect();
            for k in doomed {
                let _ = live.remove(&k);
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
        let ebpf = self.ebpf();
        let faults: PerCpuHashMap<&MapData, FaultKey, FaultStats> =
            PerCpuHashMap::try_from(ebpf.map("FAULTS").context("FAULTS map")?)?;
        let vmas: HashMap<&MapData, u64, VmaRecord> =
            HashMap::try_from(ebpf.map("VMAS").context("VMAS map")?)?;
        let threads: HashMap<&MapData, u32, ThreadAcct> =
            HashMap::try_from(ebpf.map("THREADS").context("THREADS map")?)?;
        let procs: PerCpuHashMap<&MapData, u32, ProcStats> =
            PerCpuHashMap::try_from(ebpf.map("PROCS").context("PROCS map")?)?;
        let counters: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(ebpf.map("COUNTERS").context("COUNTERS map")?)?;

        let mut snap = Snapshot::default();
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
                t.minor += s.minor;
                t.major += s.major;
            }
            snap.overflow.push((tgid, t));
        }
        let mut raw = [0u64; rmaptrace_common::counter::COUNT as usize];
        for (i, slot) in raw.iter_mut().enumerate() {
            *slot = counters.get(&(i as u32), 0)?.iter().sum();
        }
        snap.counters = Counters::from_raw(&raw);
        Ok(snap)
    }
}
