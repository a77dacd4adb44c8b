//! Fake summaries for the UI tests: one process with every interesting kind of
//! mapping, one with file faults, one that exited.
use std::collections::BTreeMap;

use rmaptrace_common::latency_bucket;

use crate::model::{
    snapshot::{Counters, Hist},
    summary::{
        AnonVma, FaultCounts, KernelCounts, Latency, ProcessSummary, Setup, Summary, Totals,
        VmaSummary,
    },
};

use super::Update;
use crate::model::summary::Note;

fn hist(samples: &[(u64, u64)]) -> Hist {
    let mut h = Hist::default();
    for &(ns, n) in samples {
        h.add(latency_bucket(ns), n);
    }
    h
}

/// What the kernel's mmap handlers leave for these mappings.
fn setup(prot: &str, handler: Option<&str>) -> Setup {
    let (by, by_module) = match handler {
        Some("kvm_vcpu_fault") => (Some("kvm_vcpu_mmap"), Some("kvm")),
        Some("shmem_fault") => (Some("shmem_zero_setup"), None),
        Some("filemap_fault") => (Some("ext4_file_mmap_prepare"), None),
        _ => (None, None),
    };
    let b = prot.as_bytes();
    let flags = [(b'r', 0x11), (b'w', 0x22), (b'x', 0x44), (b's', 0x88)]
        .iter()
        .filter(|(c, _)| b.contains(c))
        .fold(0, |all, (_, f)| all | f);
    Setup {
        by: by.map(str::to_string),
        by_module: by_module.map(str::to_string),
        vm_flags: crate::model::flags::names(flags),
        prefilled: None,
        // Private memory written: its first write fault made one.
        anon_vma: prot.ends_with('p').then_some(AnonVma {
            by: "fault",
            ts_ns: Some(1),
            faults_before: 0,
            source: "observed",
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn vma(
    start: u64,
    pages: u64,
    prot: &str,
    kind: &'static str,
    handler: Option<(&str, Option<&str>)>,
    file: Option<&str>,
    paths: &[(&'static str, u64)],
    lat: &[(u64, u64)],
) -> VmaSummary {
    let faults: u64 = paths.iter().map(|(_, n)| n).sum();
    VmaSummary {
        start: format!("{start:#x}"),
        end: format!("{:#x}", start + pages * 4096),
        kind,
        handler: handler.map(|(h, _)| h.to_string()),
        module: handler.and_then(|(_, m)| m.map(str::to_string)),
        file: file.map(str::to_string),
        device: None,
        prot: prot.into(),
        origin: None,
        setup: Some(setup(prot, handler.map(|(h, _)| h))),
        life: Some(start),
        first_seen_ns: Some(1),
        mapped_ns: None,
        unmapped_ns: None,
        faults,
        minor: faults,
        major: 0,
        paths: paths.iter().copied().collect(),
        handler_time: None,
        latency_ns: Latency {
            p50: Some(2048),
            p99: Some(8192),
            max: Some(9000),
            samples: faults,
        },
        start_addr: start,
        end_addr: start + pages * 4096,
        key: start,
        latency_hist: hist(lat),
        stacks: Vec::new(),
        ..VmaSummary::default()
    }
}

/// A call site of `--stacks`, frames leaf first.
fn site(frames: &[&str], path: &'static str, count: u64) -> crate::model::stacks::CallSite {
    crate::model::stacks::CallSite {
        frames: frames.iter().map(|f| f.to_string()).collect(),
        path,
        count,
        truncated: false,
    }
}

pub fn summary() -> Summary {
    let myapp = ProcessSummary {
        pid: 4242,
        comm: "myapp".into(),
        cgroup: Some("/system.slice/myapp.service".into()),
        faults: FaultCounts {
            total: 1103,
            minor: 1103,
            major: 0,
        },
        by_kind: [("anon", 1000), ("driver", 3), ("shmem", 100)]
            .into_iter()
            .collect(),
        kernel: Some(KernelCounts {
            minflt: 1104,
            majflt: 0,
        }),
        unseen: Some(1),
        resolved_later: 0,
        exited: false,
        vmas_dropped: 0,
        vmas_ended: 0,
        ended_late: 0,
        written: false,
        vmas: vec![
            VmaSummary {
                stacks: vec![
                    site(&["memset", "load_table", "main"], "do_anonymous_page", 700),
                    site(&["parse_row", "load_table", "main"], "do_wp_page", 200),
                    site(
                        &["memset", "init_cache", "worker", "start_thread"],
                        "do_anonymous_page",
                        100,
                    ),
                ],
                ..vma(
                    0x7f30_11cd_c000,
                    1000,
                    "rw-p",
                    "anon",
                    None,
                    None,
                    &[("do_anonymous_page", 800), ("do_wp_page", 200)],
                    &[(2000, 900), (5000, 100)],
                )
            },
            vma(
                0x7f89_b03b_1000,
                3,
                "rw-s",
                "driver",
                Some(("kvm_vcpu_fault", Some("kvm"))),
                Some("anon_inode:kvm-vcpu:0"),
                &[("do_read_fault", 3)],
                &[(8000, 3)],
            ),
            // Unmapped before the end: listed after the live ones, dimmed.
            VmaSummary {
                unmapped_ns: Some(5_000_000_000),
                ..vma(
                    0x7fd8_2444_1000,
                    100,
                    "rw-s",
                    "shmem",
                    Some(("shmem_fault", None)),
                    Some("/dev/zero (deleted)"),
                    &[("do_shared_fault", 100)],
                    &[(3000, 90), (16000, 10)],
                )
            },
        ],
    };
    let db = ProcessSummary {
        pid: 77,
        comm: "postgres".into(),
        cgroup: None,
        faults: FaultCounts {
            total: 52,
            minor: 50,
            major: 2,
        },
        by_kind: [("file", 52)].into_iter().collect(),
        kernel: Some(KernelCounts {
            minflt: 50,
            majflt: 2,
        }),
        unseen: Some(0),
        resolved_later: 0,
        exited: false,
        vmas_dropped: 0,
        vmas_ended: 0,
        ended_late: 0,
        written: false,
        vmas: vec![vma(
            0x5555_0000_0000,
            64,
            "r--p",
            "file",
            Some(("filemap_fault", None)),
            Some("/usr/lib/postgresql/bin/postgres"),
            &[("do_read_fault", 50), ("do_cow_fault", 2)],
            &[(40_000, 50), (2_000_000, 2)],
        )],
    };
    let gone = ProcessSummary {
        pid: 9,
        comm: "true".into(),
        cgroup: None,
        faults: FaultCounts {
            total: 0,
            minor: 0,
            major: 0,
        },
        by_kind: BTreeMap::new(),
        kernel: None,
        unseen: None,
        resolved_later: 0,
        exited: true,
        vmas_dropped: 0,
        vmas_ended: 0,
        ended_late: 0,
        written: false,
        vmas: vec![],
    };
    Summary {
        kind: "summary",
        duration_ns: 2_000_000_000,
        events_lost: 0,
        backend: "tracepoint",
        paths_source: "derived",
        counters: Counters::default(),
        limits: vec![
            "get_user_pages faults (MAP_POPULATE, ptrace, O_DIRECT) are not seen".into(),
            "kernel paths are derived from the mapping kind and error code".into(),
        ],
        tables_full: Default::default(),
        latency_sample_period: 16,
        end_reason: None,
        call_sites: None,
        totals: {
            let mut t = Totals::default();
            for p in [&myapp, &db, &gone] {
                t.add(p);
            }
            t
        },
        processes: vec![myapp, db, gone],
    }
}

pub fn update() -> Update {
    Update {
        summary: summary(),
        notes: vec![
            Note {
                text: "anon-write: ok (pid 4242)".into(),
                ok: true,
            },
            Note {
                text: "kvm-vcpu: cannot run: /dev/kvm: No such file or directory".into(),
                ok: false,
            },
        ],
        labels: [(4242, "anon-write".to_string())].into_iter().collect(),
        title: "rmaptrace".into(),
    }
}
