//! Whatever the ring buffer and the kernel tables hold (a kernel side with a
//! bug, records cut short, names of any bytes), the decoder and the model never
//! panic, and every summary adds up: a process's faults are its kinds' sum, a
//! mapping's are its paths' sum, the totals are the processes' sum.
use proptest::prelude::*;

use super::*;
use crate::{
    bpf::events::decode,
    kernel::procfs::{MapsEntry, ProcStat},
    model::snapshot::{Hist, ProcTotals},
};
use rmaptrace_common::{ThreadAcct, LAT_BUCKETS};

struct NoProc;

impl ProcSource for NoProc {
    fn stat(&self, _: u32) -> Option<ProcStat> {
        None
    }
    fn maps(&self, _: u32) -> Option<Vec<MapsEntry>> {
        None
    }
    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
}

/// A plain-data kernel struct from arbitrary bytes.
fn from_bytes<T: Copy>(bytes: &[u8]) -> T {
    let mut buf = vec![0u8; std::mem::size_of::<T>()];
    for (d, s) in buf.iter_mut().zip(bytes) {
        *d = *s;
    }
    // SAFETY: `buf` holds size_of::<T>() bytes; T is repr(C) plain data (integers
    // and byte arrays), valid for any bytes.
    unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) }
}

/// A ring buffer record: a known kind (or not), a few pids, any body, any length.
fn record() -> impl Strategy<Value = Vec<u8>> {
    (
        0u32..14,
        1u32..4,
        0u64..10_000,
        prop::collection::vec(any::<u8>(), 0..700),
    )
        .prop_map(|(kind, tgid, ts, mut body)| {
            let mut header = Vec::new();
            header.extend(kind.to_ne_bytes());
            header.extend(tgid.to_ne_bytes());
            header.extend(tgid.to_ne_bytes());
            header.extend(0u32.to_ne_bytes());
            header.extend(ts.to_ne_bytes());
            let n = header.len().min(body.len());
            body[..n].copy_from_slice(&header[..n]);
            body
        })
}

fn fault_row() -> impl Strategy<Value = (FaultKey, FaultTotals)> {
    (
        1u32..4,
        0u64..8,
        any::<u8>(),
        any::<u8>(),
        0u8..4,
        (0u64..1000, 0u64..50, any::<u64>(), 0u64..100_000),
        prop::collection::vec((0usize..LAT_BUCKETS + 2, 0u64..100), 0..4),
    )
        .prop_map(
            |(tgid, life, access, path, status, (minor, major, last_ns, handler_ns), hist)| {
                let key = FaultKey {
                    tgid,
                    access,
                    path,
                    vma_status: status,
                    flags: 0,
                    life,
                };
                let mut h = Hist::default();
                for (b, n) in hist {
                    h.add(b, n);
                }
                let totals = FaultTotals {
                    minor,
                    major,
                    timed: h.total(),
                    latency_sum_ns: 0,
                    latency_max_ns: 0,
                    handler_calls: minor % 3,
                    handler_ns,
                    last_ns,
                    hist: h,
                };
                (key, totals)
            },
        )
}

fn lifetime() -> impl Strategy<Value = (u64, Lifetime)> {
    (0u64..8, 1u32..4, prop::collection::vec(any::<u8>(), 0..300)).prop_map(
        |(life, tgid, bytes)| {
            let mut rec: rmaptrace_common::VmaRecord = from_bytes(&bytes);
            rec.tgid = tgid;
            (life, Lifetime::from_kernel(&rec, &mut Files::default()))
        },
    )
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        prop::collection::vec(fault_row(), 0..24),
        prop::collection::vec(lifetime(), 0..10),
        prop::collection::vec((1u32..6, 1u32..4, 0u64..1000, 0u64..1000), 0..4),
        prop::collection::vec((1u32..4, 0u64..100, 0u64..10), 0..3),
    )
        .prop_map(|(faults, vmas, threads, overflow)| Snapshot {
            faults,
            vmas,
            threads: threads
                .into_iter()
                .map(|(tid, tgid, base, add)| {
                    (
                        tid,
                        ThreadAcct {
                            tgid,
                            _pad: 0,
                            base_min: base,
                            base_maj: 0,
                            last_min: base + add,
                            last_maj: 0,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            overflow: overflow
                .into_iter()
                .map(|(tgid, minor, major)| (tgid, ProcTotals { minor, major }))
                .collect(),
            ..Snapshot::default()
        })
}

fn check(s: &Summary) -> Result<(), TestCaseError> {
    for p in &s.processes {
        check_process(p)?;
    }
    Ok(())
}

fn check_process(p: &ProcessSummary) -> Result<(), TestCaseError> {
    prop_assert_eq!(p.faults.total, p.faults.minor + p.faults.major);
    prop_assert_eq!(
        p.by_kind.values().sum::<u64>(),
        p.faults.total,
        "kinds of {}",
        p.pid
    );
    let in_vmas: u64 = p.vmas.iter().map(|v| v.faults).sum();
    prop_assert!(in_vmas <= p.faults.total);
    for v in &p.vmas {
        prop_assert_eq!(v.faults, v.minor + v.major);
        prop_assert_eq!(v.paths.values().sum::<u64>(), v.faults);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_events_and_tables_give_summaries_that_add_up(
        records in prop::collection::vec(record(), 0..48),
        first in snapshot(),
        second in snapshot(),
    ) {
        let mut t = Trace::new(
            Kallsyms::parse("ffffffff81000000 t shmem_fault\n"),
            Box::new(NoProc),
            1,
        );
        t.add_target(1);
        let (early, late) = records.split_at(records.len() / 2);
        for r in early {
            if let Some(ev) = decode(r) {
                let _ = t.on_event(ev);
            }
        }
        t.set_snapshot(first);
        let s = t.summary(20_000);
        check(&s)?;
        prop_assert_eq!(
            s.totals.faults.total,
            s.processes.iter().map(|p| p.faults.total).sum::<u64>()
        );
        // Processes that exited are retired; the next tables are read after.
        let (gone, written) = t.retire_exited();
        let retired: u64 = written.iter().map(|p| p.faults.total).sum();
        for p in &written {
            prop_assert!(p.exited);
            check_process(p)?;
        }
        let _ = gone;
        for r in late {
            if let Some(ev) = decode(r) {
                let _ = t.on_event(ev);
            }
        }
        t.set_snapshot(second);
        let s = t.summary(30_000);
        check(&s)?;
        prop_assert!(s.totals.faults.total >= retired);
    }
}
