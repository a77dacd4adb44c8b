//! The attribution end to end, from fake probe output and a fake /proc.
use super::*;
use crate::{
    kernel::procfs::{MapsEntry, ProcStat},
    model::event::Event,
    model::snapshot::{AnonVmaSeen, Counters, Hist, ProcTotals},
};
use rmaptrace_common::{
    access, path_id, EventHeader, ExitEvent, FaultEvent, FaultKey, FaultOutcome, MmapSetupEvent,
    TaskEvent, ThreadAcct, VmaInfo, VmaRecord,
};

#[derive(Default)]
struct FakeProc {
    stats: HashMap<u32, ProcStat>,
    maps: HashMap<u32, Vec<MapsEntry>>,
    /// /proc/kallsyms as read again during the trace.
    kallsyms: Option<&'static str>,
}

impl ProcSource for FakeProc {
    fn stat(&self, pid: u32) -> Option<ProcStat> {
        self.stats.get(&pid).cloned()
    }
    fn maps(&self, pid: u32) -> Option<Vec<MapsEntry>> {
        self.maps.get(&pid).cloned()
    }
    fn pids(&self) -> Vec<u32> {
        self.stats.keys().copied().collect()
    }
    fn started_ns(&self, pid: u32) -> Option<u64> {
        self.stats.get(&pid).map(|s| s.start_ticks)
    }
    fn kallsyms(&self, wanted: &[u64]) -> Option<Kallsyms> {
        self.kallsyms
            .map(|k| Kallsyms::read_only(k.as_bytes(), wanted).expect("reading from memory"))
    }
}

/// A running process's /proc/PID/stat, started at `start_ns` (kept in
/// `start_ticks`, which the fake reports as nanoseconds).
fn running(comm: &str, start_ns: u64) -> ProcStat {
    ProcStat {
        comm: comm.into(),
        state: 'S',
        ppid: 0,
        minflt: 0,
        majflt: 0,
        kernel_thread: false,
        start_ticks: start_ns,
    }
}

const SHMEM_FAULT: u64 = 0xffff_ffff_8100_0000;
const KALLSYMS: &str =
    "ffffffff81000000 t shmem_fault\nffffffffc0001000 t rmapdemo_fault\t[rmapdemo]\n";

fn totals(minor: u64, major: u64) -> FaultTotals {
    let mut t = FaultTotals {
        minor,
        major,
        timed: minor + major,
        latency_sum_ns: 1000 * (minor + major),
        latency_max_ns: 5000,
        ..Default::default()
    };
    t.hist = Hist::from_buckets(&[(10, minor + major)]);
    t
}

fn key(tgid: u32, life: u64, access: u8) -> FaultKey {
    FaultKey {
        tgid,
        access,
        path: path_id::DERIVED,
        vma_status: vma_status::FOUND,
        flags: 0,
        life,
    }
}

/// Lifetime `life` of process `tgid`, first seen at `first_ns`, starting at `start`.
fn life(tgid: u32, life: u64, first_ns: u64, start: u64, info: VmaInfo) -> (u64, Lifetime) {
    let rec = VmaRecord {
        tgid,
        anon_vma_by: 0,
        anon_vma_ns: 0,
        first_ns,
        ended_ns: 0,
        info: VmaInfo {
            vm_start: start,
            ..info
        },
    };
    (life, Lifetime::from_kernel(&rec, &mut Files::default()))
}

/// A thread followed by the kernel side, `min` faults counted over the trace.
fn thread(tgid: u32, min: u64) -> ThreadAcct {
    ThreadAcct {
        tgid,
        _pad: 0,
        base_min: 1000,
        base_maj: 0,
        last_min: 1000 + min,
        last_maj: 0,
        ..Default::default()
    }
}

fn header(kind: u32, tgid: u32, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind,
        tgid,
        tid: tgid,
        _pad: 0,
        ts_ns,
    }
}

fn mmap_exit(tgid: u32, ts_ns: u64, ret: u64) -> MmapExitEvent {
    MmapExitEvent {
        header: header(event_kind::MMAP_EXIT, tgid, ts_ns),
        ret,
        len: 0,
        prot: 0,
        flags: 0,
        depth: 0,
        truncated: 0,
        path: [[0; 32]; 8],
    }
}

fn trace_with(proc_: FakeProc) -> Trace {
    Trace::new(Kallsyms::parse(KALLSYMS), Box::new(proc_), 1_000)
}

#[test]
fn attributes_faults_to_vmas_kinds_handlers_and_paths() {
    let mut fake = FakeProc::default();
    fake.stats.insert(
        42,
        ProcStat {
            comm: "app".into(),
            state: 'S',
            ppid: 0,
            minflt: 310,
            majflt: 0,
            kernel_thread: false,
            start_ticks: 0,
        },
    );
    fake.maps.insert(
        42,
        vec![MapsEntry {
            start: 0x2000,
            end: 0x3000,
            perms: "rw-s".into(),
            offset: 0,
            inode: 7,
            name: "/dev/zero (deleted)".into(),
        }],
    );
    let mut t = trace_with(fake);
    t.add_target(42);
    t.set_snapshot(Snapshot {
        faults: vec![
            (key(42, 1, access::WRITE), totals(100, 0)),
            (key(42, 1, access::WRITE | access::PRESENT), totals(100, 0)),
            (key(42, 2, access::WRITE), totals(100, 0)),
            (
                FaultKey {
                    vma_status: vma_status::BUSY,
                    ..key(42, 0, access::WRITE)
                },
                totals(3, 0),
            ),
        ],
        vmas: vec![
            life(
                42,
                1,
                5,
                0x1000,
                VmaInfo {
                    vm_end: 0x11000,
                    vm_flags: 0x3,
                    ..Default::default()
                },
            ),
            life(
                42,
                2,
                5,
                0x2000,
                VmaInfo {
                    ino: 7,
                    vm_end: 0x3000,
                    vm_flags: 0xb,
                    vm_ops: 1,
                    fault_fn: SHMEM_FAULT,
                    file: 1,
                    ..Default::default()
                },
            ),
        ],
        threads: vec![(42, thread(42, 310))],
        overflow: vec![],
        counters: Counters::default(),
    });
    let s = t.summary(2_000);
    assert_eq!(s.duration_ns, 1_000);
    let p = &s.processes[0];
    assert_eq!((p.pid, p.comm.as_str()), (42, "app"));
    assert_eq!(p.faults.total, 303);
    assert_eq!(
        p.kernel,
        Some(KernelCounts {
            minflt: 310,
            majflt: 0
        })
    );
    assert_eq!(p.unseen, Some(7));
    assert_eq!(p.by_kind.get("anon"), Some(&200));
    assert_eq!(p.by_kind.get("shmem"), Some(&100));
    assert_eq!(p.by_kind.get("unknown"), Some(&3));

    let anon = p.vmas.iter().find(|v| v.start == "0x1000").unwrap();
    assert_eq!(anon.kind, "anon");
    assert_eq!(anon.handler, None);
    assert_eq!(anon.paths.get("do_anonymous_page"), Some(&100));
    assert_eq!(anon.paths.get("do_wp_page"), Some(&100));
    assert_eq!(anon.prot, "rw-p");
    assert_eq!(anon.latency_ns.samples, 200);

    let shm = p.vmas.iter().find(|v| v.start == "0x2000").unwrap();
    assert_eq!(shm.kind, "shmem");
    assert_eq!(shm.handler.as_deref(), Some("shmem_fault"));
    assert_eq!(shm.file.as_deref(), Some("/dev/zero (deleted)"));
    assert_eq!(shm.paths.get("do_shared_fault"), Some(&100));
}

fn exit(tid: u32, ts_ns: u64, min: u64, group_dead: bool, leader_start_ns: u64) -> ExitEvent {
    ExitEvent {
        header: EventHeader {
            kind: event_kind::EXIT,
            tgid: 7,
            tid,
            _pad: 0,
            ts_ns,
        },
        // Counters from before the thread was followed are not the trace's.
        min_flt: min + 500,
        maj_flt: 1,
        base_min: 500,
        base_maj: 0,
        leader_start_ns,
        has_base: 1,
        group_dead: group_dead as u32,
        comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
        cgroup: 0,
    }
}

#[test]
fn exited_processes_use_the_kernel_counters_from_their_exits() {
    let mut t = trace_with(FakeProc::default());
    t.add_target(7);
    // The last two threads both saw the process dead, and the one that saw it
    // first reported first: the other's counts are still this process's.
    assert_eq!(t.on_event(Event::Exit(exit(8, 5, 2, true, 100))), None);
    assert_eq!(t.on_event(Event::Exit(exit(7, 6, 40, true, 100))), None);
    // The pid, reused by another process that exits at once.
    assert_eq!(t.on_event(Event::Exit(exit(7, 9, 1_000, true, 200))), None);
    t.set_snapshot(Snapshot {
        overflow: vec![(
            7,
            ProcTotals {
                minor: 40,
                major: 2,
            },
        )],
        ..Default::default()
    });
    let s = t.summary(10);
    let p = &s.processes[0];
    assert_eq!(p.comm, "worker");
    assert_eq!(
        p.kernel,
        Some(KernelCounts {
            minflt: 42,
            majflt: 2
        })
    );
    assert_eq!(p.unseen, Some(2));
    assert!(p.exited);
    assert_eq!(t.group_exits(), 2, "one end per process, not per thread");
}

#[test]
fn live_threads_count_from_their_kernel_counters_not_proc() {
    let mut fake = FakeProc::default();
    // /proc counts dead threads from before the trace: never used.
    fake.stats.insert(
        9,
        ProcStat {
            comm: "x".into(),
            state: 'S',
            ppid: 0,
            minflt: 5_000,
            majflt: 0,
            kernel_thread: false,
            start_ticks: 0,
        },
    );
    let mut t = trace_with(fake);
    t.add_target(9);
    t.set_snapshot(Snapshot {
        faults: vec![(key(9, 0, access::WRITE), totals(100, 0))],
        threads: vec![(9, thread(9, 60)), (10, thread(9, 40)), (11, thread(12, 7))],
        ..Default::default()
    });
    let p = &t.summary(2).processes[0];
    assert_eq!(
        p.kernel,
        Some(KernelCounts {
            minflt: 100,
            majflt: 0
        })
    );
    assert_eq!(p.unseen, Some(0));
}

#[test]
fn a_mapping_replaced_at_the_same_address_is_a_new_row() {
    let mut t = trace_with(FakeProc::default());
    replaced_mapping(&mut t);
    let s = t.summary(40);
    let rows = &s.processes[0].vmas;
    assert_eq!(rows.len(), 2, "two lifetimes at one address: {rows:?}");
    let (ra, rb) = (&rows[0], &rows[1]);
    assert_eq!((ra.start.as_str(), rb.start.as_str()), ("0x7000", "0x7000"));
    assert_eq!(ra.file.as_deref(), Some("/a"));
    assert_eq!(rb.file.as_deref(), Some("/b"));
    assert_eq!((ra.life, rb.life), (Some(1), Some(2)));
    assert_eq!((ra.mapped_ns, ra.unmapped_ns), (Some(10), Some(21)));
    assert_eq!((rb.mapped_ns, rb.unmapped_ns), (Some(30), None));
    assert!(ra.origin.as_deref().unwrap().ends_with("at 10 ns"));
}

/// mmap(A) at 0x7000, 4 faults, munmap; mmap(B) there with MAP_FIXED, 4
/// faults; the process still runs.
fn replaced_mapping(t: &mut Trace) {
    let file = |name: &str| {
        let mut p = [[0u8; 32]; 8];
        p[0][..name.len()].copy_from_slice(name.as_bytes());
        p[1][0] = b'/';
        p
    };
    let calls = [
        (event_kind::MMAP_ENTER, 10, [0, 0x4000, 3, 0x1, 5, 0]),
        (event_kind::MUNMAP, 20, [0x7000, 0x4000, 0, 0, 0, 0]),
        (event_kind::MUNMAP_EXIT, 21, [0; 6]),
        (event_kind::MMAP_ENTER, 30, [0x7000, 0x4000, 3, 0x11, 6, 0]),
    ];
    for (kind, ts, args) in calls {
        t.on_event(Event::Syscall(SyscallEvent {
            header: header(kind, 3, ts),
            args,
        }));
        if kind == event_kind::MMAP_ENTER {
            t.on_event(Event::MmapExit(MmapExitEvent {
                path: file(if ts == 10 { "a" } else { "b" }),
                depth: 2,
                ..mmap_exit(3, ts + 1, 0x7000)
            }));
        }
    }
    let file_vma = VmaInfo {
        vm_end: 0xb000,
        vm_flags: 0xb,
        vm_ops: 1,
        file: 1,
        ..Default::default()
    };
    let mut a = totals(4, 0);
    a.last_ns = 15;
    let mut b = totals(4, 0);
    b.last_ns = 35;
    t.set_snapshot(Snapshot {
        faults: vec![(key(3, 1, access::WRITE), a), (key(3, 2, access::WRITE), b)],
        vmas: vec![
            life(3, 1, 12, 0x7000, file_vma),
            life(3, 2, 32, 0x7000, file_vma),
        ],
        ..Default::default()
    });
}

#[test]
fn ended_mappings_of_a_running_process_are_written_once_and_stay_counted() {
    let mut t = trace_with(FakeProc::default());
    replaced_mapping(&mut t);
    let mut written = Vec::new();
    let freed = t.collect_ended_into(&mut |pid, _, vmas| {
        written.extend(vmas.map(|v| (pid, v.life, v.file, v.faults, v.unmapped_ns)))
    });
    assert_eq!(
        written,
        vec![(3, Some(1), Some("/a".to_string()), 4, Some(21))],
        "the unmapped mapping, described in full"
    );
    assert_eq!(freed.len(), 1);
    assert_eq!(freed[0].rows, vec![key(3, 1, access::WRITE)]);
    assert_eq!(freed[0].lives, vec![(1, 0)]);
    assert_eq!(freed[0].counted, vec![(4, 0, "driver")]);
    assert!(!freed[0].whole, "the process's own counts stay");

    let p = t.summary(40).processes.remove(0);
    assert_eq!(
        p.faults.total, 8,
        "the collected mapping's faults still count"
    );
    assert_eq!(p.by_kind.get("driver"), Some(&8));
    assert_eq!(p.vmas_ended, 1);
    let lives: Vec<_> = p.vmas.iter().map(|v| v.life).collect();
    assert_eq!(
        lives,
        vec![Some(2)],
        "written once: not again with the process"
    );
    assert_eq!(p.vmas[0].file.as_deref(), Some("/b"), "its origin is kept");
    assert!(
        t.held().contains("0 unmaps"),
        "no lifetime left needs the unmaps: {}",
        t.held()
    );

    // A fault counted on the old lifetime after the snapshot (its struct
    // reused for a mapping of the same shape) joins the sums.
    t.count_late(&[(3, "driver", 1, 0)]);
    let p = t.summary(40).processes.remove(0);
    assert_eq!((p.faults.total, p.ended_late), (9, 1));
    let again = t.collect_ended_into(&mut |_, _, _| panic!("nothing more ended"));
    assert!(again.is_empty());
}

#[test]
fn a_lifetime_overlapped_by_a_later_one_has_ended() {
    let mut t = trace_with(FakeProc::default());
    let anon = VmaInfo {
        vm_end: 0x2_1000,
        vm_flags: 0x3,
        ..Default::default()
    };
    t.set_snapshot(Snapshot {
        faults: vec![
            (key(5, 1, access::WRITE), totals(33, 0)),
            (key(5, 2, access::WRITE), totals(1, 0)),
        ],
        vmas: vec![
            // Split after its faults: the struct's new lifetime covers one page.
            life(5, 1, 10, 0x1000, anon),
            life(
                5,
                2,
                50,
                0x1000,
                VmaInfo {
                    vm_end: 0x2000,
                    ..anon
                },
            ),
        ],
        ..Default::default()
    });
    let s = t.summary(60);
    let rows = &s.processes[0].vmas;
    assert_eq!(rows[0].life, Some(1));
    assert_eq!(rows[0].unmapped_ns, Some(50));
    assert_eq!(rows[1].unmapped_ns, None);
}

#[test]
fn mmap_records_pair_entry_and_exit_and_name_the_origin() {
    let mut t = trace_with(FakeProc::default());
    let enter = SyscallEvent {
        header: EventHeader {
            kind: event_kind::MMAP_ENTER,
            tgid: 3,
            tid: 4,
            _pad: 0,
            ts_ns: 10,
        },
        args: [0, 0x4000, 3, 0x21, u64::MAX, 0],
    };
    assert_eq!(t.on_event(Event::Syscall(enter)), None);
    let mut exit = MmapExitEvent {
        header: EventHeader {
            kind: event_kind::MMAP_EXIT,
            tgid: 3,
            tid: 4,
            _pad: 0,
            ts_ns: 11,
        },
        ret: 0x7000,
        len: 0,
        prot: 0,
        flags: 0,
        depth: 0,
        truncated: 0,
        path: [[0; 32]; 8],
    };
    let Some(Record::Mmap(rec)) = t.on_event(Event::MmapExit(exit)) else {
        panic!("an mmap record")
    };
    assert_eq!(rec.op, "mmap");
    assert_eq!(rec.addr, "0x7000");
    assert_eq!(rec.len, 0x4000);
    assert_eq!(rec.prot, "rw-");
    assert_eq!(rec.flags, vec!["MAP_SHARED", "MAP_ANONYMOUS"]);
    assert_eq!(rec.fd, -1);
    let origin = |t: &Trace, addr| t.origin_of(3, addr, 100).map(Trace::describe_origin);
    assert_eq!(
        origin(&t, 0x7000).as_deref(),
        Some("mmap(MAP_SHARED|MAP_ANONYMOUS, rw-) at 10 ns")
    );
    assert_eq!(origin(&t, 0xb000), None, "outside the mapping");
    assert!(
        t.origin_of(3, 0x7000, 5).is_none(),
        "a lifetime seen before the mmap is not its"
    );
    // An exit without its entry (entry lost) yields nothing rather than a guess.
    exit.header.tid = 99;
    assert_eq!(t.on_event(Event::MmapExit(exit)), None);
}

#[test]
fn kernel_mmaps_outside_a_syscall_are_origins() {
    let mut t = trace_with(FakeProc::default());
    let mut path = [[0u8; 32]; 8];
    path[0][..4].copy_from_slice(b"true");
    path[1][..3].copy_from_slice(b"bin");
    path[2][0] = b'/';
    let ev = MmapExitEvent {
        header: EventHeader {
            kind: event_kind::KERNEL_MMAP,
            tgid: 8,
            tid: 8,
            _pad: 0,
            ts_ns: 3,
        },
        ret: 0x40_0000,
        len: 0x2000,
        prot: 5,
        flags: 0x2,
        depth: 3,
        truncated: 0,
        path,
    };
    let Some(Record::Mmap(rec)) = t.on_event(Event::MmapExit(ev)) else {
        panic!("a record for the kernel's own mapping")
    };
    assert_eq!(rec.op, "kernel_mmap");
    assert_eq!(rec.path.as_deref(), Some("/bin/true"));
    assert_eq!(rec.prot, "r-x");
    assert_eq!(
        t.origin_of(8, 0x40_1000, 10)
            .map(Trace::describe_origin)
            .as_deref(),
        Some("kernel do_mmap(MAP_PRIVATE, r-x) at 3 ns")
    );
    // Inside an mmap syscall the syscall's own record is kept instead.
    let enter = SyscallEvent {
        header: EventHeader {
            kind: event_kind::MMAP_ENTER,
            tgid: 8,
            tid: 8,
            _pad: 0,
            ts_ns: 4,
        },
        args: [0, 0x1000, 3, 0x22, u64::MAX, 0],
    };
    t.on_event(Event::Syscall(enter));
    assert_eq!(t.on_event(Event::MmapExit(ev)), None);
}

#[test]
fn an_exited_process_keeps_its_summary_after_its_rows_are_freed() {
    let mut t = trace_with(FakeProc::default());
    let exit = ExitEvent {
        header: header(event_kind::EXIT, 6, 50),
        min_flt: 4,
        maj_flt: 0,
        base_min: 0,
        base_maj: 0,
        leader_start_ns: 1,
        has_base: 1,
        group_dead: 1,
        comm: *b"short\0\0\0\0\0\0\0\0\0\0\0",
        cgroup: 0,
    };
    t.on_event(Event::Exit(exit));
    let anon = VmaInfo {
        vm_end: 0x5000,
        vm_flags: 0x3,
        ..Default::default()
    };
    t.set_snapshot(Snapshot {
        faults: vec![(key(6, 9, access::WRITE), totals(4, 0))],
        vmas: vec![life(6, 9, 10, 0x1000, anon)],
        ..Default::default()
    });
    let (gone, written) = t.retire_exited();
    assert_eq!(gone.len(), 1);
    assert_eq!(
        (gone[0].pid, gone[0].rows.clone(), gone[0].lives.clone()),
        (6, vec![key(6, 9, access::WRITE)], vec![(9, 0)])
    );
    let [record] = &written[..] else {
        panic!("its summary, for the export: {written:?}");
    };
    assert_eq!((record.faults.total, record.vmas.len()), (4, 1));
    assert!(t.retire_exited().0.is_empty(), "retired once");
    // The kernel rows are gone from the next snapshot; the summary stays.
    t.set_snapshot(Snapshot::default());
    assert!(t.retire_exited().0.is_empty(), "forgets the freed pids");
    assert!(!t.retired_until.contains_key(&6));
    let s = t.summary(100);
    let p = &s.processes[0];
    assert_eq!((p.pid, p.comm.as_str(), p.faults.total), (6, "short", 4));
    assert!(p.written, "already exported: not written again at the end");
    assert_eq!((s.totals.processes, s.totals.faults.total), (1, 4));
    assert_eq!(p.unseen, Some(0));
    assert!(p.exited);
    assert_eq!(
        p.vmas[0].unmapped_ns,
        Some(50),
        "unmapped when the process ended"
    );
}

/// A lifetime as `end_superseded` sees it: its range, when first seen, when
/// unmapped.
fn lifetime(start: u64, end: u64, first: u64, unmapped: Option<u64>) -> Span {
    let first = NonZeroU64::new(first);
    Span {
        rows: first,
        described: true,
        kind: Kind::Anon,
        minor: 1,
        major: 0,
        start,
        end,
        first_seen: first,
        unmapped: unmapped.and_then(NonZeroU64::new),
    }
}

/// The sweep ends the same lifetimes, at the same times, as comparing every
/// pair: on address reuse, splits, one large mapping under many small ones.
#[test]
fn superseded_lifetimes_end_as_pairwise_comparison_says() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..50 {
        let mut vmas: Vec<Span> = (0..60)
            .map(|i| {
                let start = next(64) * 0x1000;
                let len = if i == 0 {
                    0x40_000
                } else {
                    (1 + next(4)) * 0x1000
                };
                let unmapped = (next(3) == 0).then(|| 1000 + next(100));
                lifetime(start, start + len, 1 + next(1000) * 2 + i, unmapped)
            })
            .collect();
        vmas.sort_by_key(|v| (v.start, v.first_seen));
        let mut want: Vec<Option<NonZeroU64>> = vmas.iter().map(|v| v.unmapped).collect();
        for (i, v) in vmas.iter().enumerate() {
            let (Some(first), None) = (v.first_seen, v.unmapped) else {
                continue;
            };
            let later = vmas
                .iter()
                .filter(|o| o.first_seen.is_some_and(|f| f > first))
                .filter(|o| o.start < v.end && v.start < o.end)
                .filter_map(|o| o.first_seen)
                .min();
            if later.is_some() {
                want[i] = later;
            }
        }
        end_superseded(&mut vmas);
        let ends = |v: &[Span]| v.iter().map(|v| v.unmapped).collect::<Vec<_>>();
        assert_eq!(ends(&vmas), want, "round {round}");
    }
}

/// After events were lost, processes whose exits went unseen are found and
/// retired: one gone from /proc, one known only by its rows, and one whose pid
/// another process took since; a live one is left alone.
#[test]
fn exits_lost_with_other_events_are_found() {
    let mut fake = FakeProc::default();
    fake.stats.insert(4, running("alive", 0));
    fake.stats.insert(5, running("reuser", 500));
    let mut t = trace_with(fake);
    for pid in [3, 4, 5] {
        t.on_event(Event::Task(TaskEvent {
            header: header(event_kind::EXEC, pid, 100),
            other: 0,
            _pad: 0,
            min_flt: 0,
            maj_flt: 0,
            comm: *b"app\0\0\0\0\0\0\0\0\0\0\0\0\0",
            cgroup: 0,
        }));
    }
    let anon = VmaInfo {
        vm_end: 0x2000,
        vm_flags: 0x3,
        ..Default::default()
    };
    t.set_snapshot(Snapshot {
        faults: [3, 4, 5, 7]
            .map(|pid| (key(pid, u64::from(pid), access::WRITE), totals(2, 0)))
            .to_vec(),
        vmas: [3, 4, 5, 7]
            .map(|pid| life(pid, u64::from(pid), 150, 0x1000, anon))
            .to_vec(),
        ..Default::default()
    });
    assert!(!t.has_exited());
    assert_eq!(t.mark_unseen_exits(1_000), 3);
    let (gone, written) = t.retire_exited();
    let mut pids: Vec<u32> = gone.iter().map(|g| g.pid).collect();
    pids.sort_unstable();
    assert_eq!(pids, [3, 5, 7]);
    assert!(written.iter().all(|p| p.exited && p.faults.total == 2));
    // The reused pid's old process ended before the new one started.
    assert_eq!(t.retired_until.get(&5), Some(&499));
    assert_eq!(t.mark_unseen_exits(2_000), 0, "found once");
}

/// A driver loaded after rmaptrace read the kernel's symbols: its handler is
/// named from a second read, made once for that address.
#[test]
fn handlers_of_modules_loaded_later_are_named() {
    let fake = FakeProc {
        kallsyms: Some(KALLSYMS),
        ..Default::default()
    };
    // As a trace starts: no symbol held, each handler named when first met.
    let mut t = Trace::new(Kallsyms::parse(KALLSYMS).emptied(), Box::new(fake), 1_000);
    t.add_target(42);
    let driver = VmaInfo {
        vm_end: 0x3000,
        vm_flags: 0xb,
        vm_ops: 1,
        fault_fn: 0xffff_ffff_c000_1000,
        file: 1,
        ..Default::default()
    };
    let unknown = VmaInfo {
        fault_fn: 0xffff_ffff_c000_2000,
        ..driver
    };
    t.set_snapshot(Snapshot {
        faults: vec![
            (key(42, 1, access::WRITE), totals(4, 0)),
            (key(42, 2, access::WRITE), totals(1, 0)),
        ],
        vmas: vec![
            life(42, 1, 5, 0x2000, driver),
            life(42, 2, 5, 0x8000, unknown),
        ],
        ..Default::default()
    });
    let s = t.summary(2_000);
    let v = &s.processes[0].vmas;
    assert_eq!(v[0].handler.as_deref(), Some("rmapdemo_fault"));
    assert_eq!(v[0].module.as_deref(), Some("rmapdemo"));
    assert_eq!(
        v[1].handler.as_deref(),
        Some("0xffffffffc0002000"),
        "still unnamed: its address"
    );
    assert!(
        t.unnamed.contains(&0xffff_ffff_c000_2000),
        "not read again for it"
    );
    assert_eq!(
        t.symbols.addresses().collect::<Vec<_>>(),
        [0xffff_ffff_c000_1000],
        "only the handlers met are kept"
    );
}

/// A driver mapping that never faults (its pages installed by its mmap) is a
/// row from its mmap call; written once when unmapped while the process runs,
/// then gone; and a lifetime that took its range instead wins.
#[test]
fn mappings_the_fault_path_never_serves_are_rows_of_their_own() {
    let mut t = trace_with(FakeProc::default());
    t.add_target(3);
    let pfn = 0xb | 0x400 | 0x4000 | 0x40000; // rw shared, PFNMAP|IO|DONTEXPAND
    let mapped = |t: &mut Trace, ts: u64, start: u64| {
        t.on_event(Event::Syscall(SyscallEvent {
            header: header(event_kind::MMAP_ENTER, 3, ts),
            args: [0, 0x4000, 3, 0x1, 5, 0],
        }));
        t.on_event(Event::MmapSetup(MmapSetupEvent {
            header: header(event_kind::MMAP_SETUP, 3, ts + 1),
            vm_start: start,
            vm_end: start + 0x4000,
            vm_flags: pfn,
            setup_fn: 0xffff_ffff_c000_1000,
            setup_prepare_fn: 0,
            prefilled: [4, 0, 0, 0, 0],
        }));
        t.on_event(Event::MmapExit(mmap_exit(3, ts + 2, start)));
    };
    mapped(&mut t, 10, 0x7000);
    mapped(&mut t, 20, 0x20000);
    t.set_snapshot(Snapshot::default());
    let observed = {
        let mut t2 = trace_with(FakeProc::default());
        t2.add_target(3);
        t2.set_prefill_observed(true);
        mapped(&mut t2, 10, 0x7000);
        t2.set_snapshot(Snapshot::default());
        t2.summary(30).processes.remove(0)
    };
    let counted = observed.vmas[0].setup.as_ref().unwrap().prefilled.clone();
    assert_eq!(
        counted.map(|m| m.into_iter().collect::<Vec<_>>()),
        Some(vec![
            ("remap_pfn_range", 4),
            ("vm_insert_page", 0),
            ("vm_insert_pages", 0),
            ("vmf_insert_mixed", 0),
            ("vmf_insert_pfn", 0)
        ])
    );
    let p = t.summary(30).processes.remove(0);
    let rows: Vec<_> = p
        .vmas
        .iter()
        .map(|v| (v.start.as_str(), v.kind, v.faults, v.life, v.unmapped_ns))
        .collect();
    assert_eq!(
        rows,
        [
            ("0x7000", "driver", 0, None, None),
            ("0x20000", "driver", 0, None, None)
        ]
    );
    let setup = p.vmas[0].setup.as_ref().unwrap();
    assert_eq!(setup.by.as_deref(), Some("rmapdemo_fault"));
    assert!(setup.vm_flags.iter().any(|f| f == "VM_PFNMAP"));
    assert_eq!(
        setup.prefilled, None,
        "not observed by this trace's backend"
    );
    assert_eq!(
        p.vmas[0].origin.as_deref().map(|o| o.starts_with("mmap(")),
        Some(true)
    );

    // The first is unmapped: written once, then forgotten.
    for (kind, ts) in [(event_kind::MUNMAP, 40), (event_kind::MUNMAP_EXIT, 41)] {
        t.on_event(Event::Syscall(SyscallEvent {
            header: header(kind, 3, ts),
            args: [0x7000, 0x4000, 0, 0, 0, 0],
        }));
    }
    let mut written = Vec::new();
    t.collect_ended_into(&mut |pid, _, vmas| {
        written.extend(vmas.map(|v| (pid, v.start, v.unmapped_ns)))
    });
    assert_eq!(written, [(3, "0x7000".to_string(), Some(41))]);
    t.collect_ended_into(&mut |_, _, vmas| assert_eq!(vmas.count(), 0));

    // The second faulted after all: its lifetime's row shows it.
    let driver = VmaInfo {
        vm_start: 0x20000,
        vm_end: 0x24000,
        vm_flags: pfn,
        vm_ops: 1,
        file: 1,
        ..Default::default()
    };
    t.set_snapshot(Snapshot {
        faults: vec![(key(3, 7, access::WRITE), totals(1, 0))],
        vmas: vec![life(3, 7, 50, 0x20000, driver)],
        ..Default::default()
    });
    let p = t.summary(60).processes.remove(0);
    let rows: Vec<_> = p.vmas.iter().map(|v| (v.life, v.faults)).collect();
    assert_eq!(rows, [(Some(7), 1)]);
    assert_eq!(p.vmas_ended, 1);
}

/// A private read-write anonymous VMA, 0-0x9000.
fn private_rw() -> VmaInfo {
    VmaInfo {
        vm_end: 0x9000,
        vm_flags: 0x3,
        ..Default::default()
    }
}

/// `k` counted after the VMA had its anon_vma.
fn with_anon(k: FaultKey) -> FaultKey {
    FaultKey {
        flags: rmaptrace_common::key_flags::ANON_VMA,
        ..k
    }
}

/// Rows that differ only in whether the VMA had its anon_vma: one row in the
/// summary, the faults before it counted, and both freed when it ends.
#[test]
fn faults_before_the_anon_vma_are_counted_and_every_row_freed() {
    let mut t = trace_with(FakeProc::default());
    t.add_target(5);
    let anon = private_rw();
    let zero_page_reads = key(5, 4, 0);
    let writes = with_anon(key(5, 4, access::WRITE));
    t.set_snapshot(Snapshot {
        faults: vec![
            (zero_page_reads, totals(3, 0)),
            (with_anon(zero_page_reads), totals(1, 0)),
            (writes, totals(8, 0)),
        ],
        vmas: vec![life(5, 4, 10, 0x1000, anon)],
        ..Default::default()
    });
    let p = t.summary(20).processes.remove(0);
    assert_eq!(p.vmas.len(), 1);
    let v = &p.vmas[0];
    assert_eq!(v.faults, 12);
    let a = v.setup.as_ref().unwrap().anon_vma.as_ref().unwrap();
    assert_eq!((a.faults_before, a.by, a.source), (3, "unknown", "derived"));

    // Unmapped while the process runs: every kernel row of it is freed.
    for (kind, ts) in [(event_kind::MUNMAP, 30), (event_kind::MUNMAP_EXIT, 31)] {
        t.on_event(Event::Syscall(SyscallEvent {
            header: header(kind, 5, ts),
            args: [0x1000, 0x8000, 0, 0, 0, 0],
        }));
    }
    let freed = t.collect_ended_into(&mut |_, _, vmas| assert_eq!(vmas.count(), 1));
    let mut rows = freed[0].rows.clone();
    rows.sort_unstable_by_key(|k| (k.access, k.flags));
    assert_eq!(rows, [zero_page_reads, with_anon(zero_page_reads), writes]);
}

/// What made the anon_vma, where the kernel side saw it made: a fork's is
/// there before any fault found it; without that, the first fault that
/// found it gives the time and `by` stays unknown.
#[test]
fn the_anon_vma_says_what_made_it_and_when() {
    let mut t = trace_with(FakeProc::default());
    t.add_target(5);
    let anon = private_rw();
    let made = |id: u64, start: u64, by: u32, ns: u64| {
        let (id, mut rec) = life(5, id, 10, start, anon);
        rec.anon_vma = AnonVmaSeen::new(by, ns);
        (id, rec)
    };
    t.set_snapshot(Snapshot {
        faults: vec![
            (with_anon(key(5, 1, 0)), totals(1, 0)),
            (with_anon(key(5, 2, access::WRITE)), totals(2, 0)),
            (key(5, 3, 0), totals(4, 0)),
        ],
        vmas: vec![
            // Inherited at fork: the child's first fault found it.
            made(1, 0x1000, anon_vma_by::FORK, 5),
            made(2, 0x10000, anon_vma_by::SEEN, 12),
            // Never written.
            made(3, 0x20000, anon_vma_by::NONE, 0),
        ],
        ..Default::default()
    });
    let p = t.summary(20).processes.remove(0);
    let anon_of = |start: &str| {
        let v = p.vmas.iter().find(|v| v.start == start).unwrap();
        let a = v.setup.as_ref().unwrap().anon_vma.clone()?;
        Some((a.by, a.ts_ns, a.faults_before, a.source))
    };
    assert_eq!(anon_of("0x1000"), Some(("fork", Some(5), 0, "observed")));
    assert_eq!(
        anon_of("0x10000"),
        Some(("unknown", Some(12), 0, "derived"))
    );
    assert_eq!(anon_of("0x20000"), None);
}

#[test]
fn the_anon_vma_word_keeps_maker_and_time() {
    let w = AnonVmaSeen::new(anon_vma_by::FAULT, 123_456_789);
    assert_eq!((w.by(), w.ns()), (anon_vma_by::FAULT, Some(123_456_789)));
    assert_eq!(AnonVmaSeen::new(anon_vma_by::NONE, 7).ns(), None);
    assert_eq!(AnonVmaSeen::default().by(), anon_vma_by::NONE);
}

/// A fault recorded at its entry, at `addr`, by thread `tid` of process 7.
fn entry_fault(tid: u32, ts_ns: u64, addr: u64) -> Event {
    let mut f = FaultEvent {
        header: header(event_kind::FAULT, 7, ts_ns),
        addr,
        access: access::WRITE,
        vma_status: vma_status::NONE,
        pending: rmaptrace_common::FAULT_AT_ENTRY,
        ..Default::default()
    };
    f.header.tid = tid;
    Event::Fault(f, None)
}

fn outcome(tid: u32, addr: u64, outcome: u8, latency_ns: u64) -> Event {
    let mut o = FaultOutcome {
        header: header(event_kind::FAULT_OUTCOME, 7, 0),
        addr,
        latency_ns,
        outcome,
        _pad: [0; 7],
    };
    o.header.tid = tid;
    Event::FaultOutcome(o)
}

fn written(r: Option<Record>) -> Option<(u64, bool, Option<u64>)> {
    match r? {
        Record::Fault(f) => Some((f.addr, f.major, f.latency_ns)),
        Record::Mmap(_) => panic!("a fault was expected"),
    }
}

#[test]
fn faults_recorded_at_their_entry_are_written_once_their_outcome_is_known() {
    let mut t = trace_with(FakeProc::default());
    t.add_target(7);
    // Held until the thread's next fault: then a minor fault without latency.
    assert_eq!(written(t.on_event(entry_fault(8, 10, 0x1000))), None);
    assert_eq!(
        written(t.on_event(entry_fault(8, 20, 0x2000))),
        Some((0x1000, false, None))
    );
    // Another thread's faults are held apart.
    assert_eq!(written(t.on_event(entry_fault(9, 21, 0x9000))), None);
    // A major outcome, with its latency.
    assert_eq!(
        written(t.on_event(outcome(8, 0x2008, fault_outcome::MAJOR, 5_000))),
        Some((0x2000, true, Some(5_000)))
    );
    // A major one whose entry was not timed: no latency, not 0.
    t.on_event(entry_fault(8, 25, 0x2800));
    assert_eq!(
        written(t.on_event(outcome(8, 0x2800, fault_outcome::MAJOR, 0))),
        Some((0x2800, true, None))
    );
    // A sampled minor one.
    t.on_event(entry_fault(8, 30, 0x3000));
    assert_eq!(
        written(t.on_event(outcome(8, 0x3000, fault_outcome::MINOR_TIMED, 700))),
        Some((0x3000, false, Some(700)))
    );
    // Taken back: not a fault, never written.
    t.on_event(entry_fault(8, 40, 0x4000));
    assert_eq!(
        written(t.on_event(outcome(8, 0x4000, fault_outcome::TAKEN_BACK, 0))),
        None
    );
    // An outcome for a fault whose record was lost leaves the held one as it was.
    t.on_event(entry_fault(8, 50, 0x5000));
    assert_eq!(
        written(t.on_event(outcome(8, 0x6000, fault_outcome::MAJOR, 9))),
        Some((0x5000, false, None))
    );
    // The thread's exit writes its last one; the end of the trace the rest.
    t.on_event(entry_fault(8, 60, 0x7000));
    assert_eq!(
        written(t.on_event(Event::Exit(exit(8, 70, 6, false, 100)))),
        Some((0x7000, false, None))
    );
    let rest: Vec<_> = t
        .take_held_faults()
        .into_iter()
        .map(|r| written(Some(r)))
        .collect();
    assert_eq!(rest, vec![Some((0x9000, false, None))]);
    assert!(t.take_held_faults().is_empty());
}

/// A thread whose exit record was lost with the ring's records keeps its
/// latest fault held only until its process is retired: it is written then.
#[test]
fn a_retired_process_leaves_no_held_fault() {
    let mut t = trace_with(FakeProc::default());
    t.add_target(7);
    assert_eq!(written(t.on_event(entry_fault(8, 10, 0x1000))), None);
    assert!(
        t.take_held_faults_of(&[6, 9]).is_empty(),
        "another process's"
    );
    let out: Vec<_> = t
        .take_held_faults_of(&[7])
        .into_iter()
        .map(|r| written(Some(r)))
        .collect();
    assert_eq!(out, vec![Some((0x1000, false, None))]);
    assert!(t.take_held_faults().is_empty());
}

/// A fault whose entry found no VMA it could trust is recorded without one,
/// and placed once it is certain: the record it held takes that VMA and
/// lifetime, and keeps its entry's time; the outcome that follows applies.
#[test]
fn a_held_fault_placed_after_its_entry_takes_the_vma_it_was_placed_in() {
    let mut t = trace_with(FakeProc::default());
    t.add_target(7);
    assert_eq!(written(t.on_event(entry_fault(8, 10, 0x1000))), None);
    let placed = |addr| {
        let mut f = FaultEvent {
            header: header(event_kind::FAULT_VMA, 7, 15),
            addr,
            access: access::WRITE,
            vma_status: vma_status::FOUND,
            pending: rmaptrace_common::FAULT_PLACED,
            life: 42,
            ..Default::default()
        };
        f.header.tid = 8;
        Event::Fault(f, Some(Box::new(private_rw())))
    };
    assert_eq!(written(t.on_event(placed(0x1008))), None);
    assert_eq!(
        written(t.on_event(outcome(8, 0x1000, fault_outcome::MINOR_TIMED, 700))),
        Some((0x1000, false, Some(700)))
    );
    // Placed, then taken over by the thread's next fault.
    t.on_event(entry_fault(8, 20, 0x2000));
    t.on_event(placed(0x2000));
    let Some(Record::Fault(r)) = t.on_event(entry_fault(8, 30, 0x3000)) else {
        panic!("the placed fault is written");
    };
    assert_eq!(
        (r.ts_ns, r.kind, r.life, r.vma_start),
        (20, "anon", Some(42), Some(0))
    );
    // One whose held record was lost stands for it.
    t.take_held_faults();
    assert_eq!(written(t.on_event(placed(0x5000))), None);
    assert_eq!(t.take_held_faults().len(), 1);
}
