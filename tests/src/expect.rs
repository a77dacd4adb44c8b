//! The exact answer for each workload scenario on each backend, and the checks
//! of a trace's export against it: one table for the host tests
//! (tests/tests/scenarios.rs) and the guest checks (xtask's vm-test), so that
//! both hold every kernel to the same answers. What differs between backends
//! follows from the export itself (`paths_source`), never from the machine.
use anyhow::{bail, Result};
use serde_json::Value;

/// Faults execve makes with get_user_pages to copy the workload's arguments: no
/// exception, so unseen by backends that only see exceptions.
const EXEC_GUP_FAULTS: i64 = 1;

/// `unseen` of a process started by execve that maps and faults nothing
/// unusual: the argument copy, where the backend sees only exceptions.
pub fn exec_unseen(summary: &Value) -> i64 {
    if summary["paths_source"] == "observed" {
        0
    } else {
        EXEC_GUP_FAULTS
    }
}

/// What the workload's mapping must show in the summary.
struct Vma {
    kind: &'static str,
    handler: Option<&'static str>,
    /// The module of the handler (if any) and of the mmap handler.
    module: Option<&'static str>,
    faults: u64,
    paths: Vec<(&'static str, u64)>,
    /// Exact `prot`, when the scenario is about it.
    prot: Option<&'static str>,
    /// Acceptable `file` values, when the scenario is about it.
    files: &'static [&'static str],
    /// Text the `origin` must contain, when the scenario is about it.
    origin: Option<&'static str>,
    /// What `setup.by` must be.
    by: By,
    /// Flags `setup.vm_flags` must hold.
    flags: &'static [&'static str],
    /// `setup.prefilled` where the backend counts it (kernel functions): the
    /// function that installed the pages and how many (the others none); it
    /// is null elsewhere.
    prefilled: Option<(&'static str, u64)>,
    /// The backend sees kernel functions (`paths_source` observed).
    observed: bool,
    /// Minor faults timed one in this many per CPU (the plan's
    /// `latency_sample_period`; 1: every fault).
    latency_period: u64,
    /// `setup.anon_vma`: None, not checked; Some(None): null (shared
    /// memory never has one); Some(Some(a)): present, as `a` says.
    anon_vma: Option<Option<Anon>>,
}

/// What a mapping's anon_vma must show.
#[derive(Clone, Copy, Debug)]
struct Anon {
    /// What made it, where the backend observes that (`fault`, `fork`);
    /// elsewhere `by` is `unknown` and the source `derived`.
    by: &'static str,
    /// Faults of the mapping that completed before it existed.
    before: u64,
}

const fn made_by(by: &'static str, before: u64) -> Option<Option<Anon>> {
    Some(Some(Anon { by, before }))
}

/// The function that set a mapping up, as the kernel's file operations name
/// it (the `_prepare` form on 6.17+).
#[derive(Clone, Copy, Debug)]
enum By {
    /// Not checked.
    Any,
    /// null: no file (private anonymous memory).
    Nothing,
    OneOf(&'static [&'static str]),
    /// A filesystem's handler: which one depends on where the file is.
    Containing(&'static str),
}

impl By {
    fn accepts(self, by: &Value) -> bool {
        match self {
            By::Any => true,
            By::Nothing => by.is_null(),
            By::OneOf(names) => names.iter().any(|n| by == *n),
            By::Containing(part) => by.as_str().is_some_and(|b| b.contains(part)),
        }
    }
}

const SHMEM_MMAP: By = By::OneOf(&["shmem_mmap", "shmem_mmap_prepare"]);

/// Further answers, for scenarios about more than the one mapping at `addr`.
enum Check {
    /// The row starting at the address in the report's `field` (each address,
    /// for an array) is this.
    RowAt(&'static str, Box<Vma>),
    /// Exactly this many rows (mapping lifetimes) start at `addr`, one per file
    /// named in these report fields, each with `faults` faults.
    RowsAtAddr(&'static [&'static str], u64),
    /// Exactly one row holds `addr`, with at least this many faults.
    OneRowHolds(u64),
    /// At most 1% of the process's faults have no VMA.
    FewUnknown,
    /// `mmap-churn`: `n` cycles at `addr`, each one row of 4 pages with 2
    /// faults (ended by a split) and one of 3 pages with 1 fault: a VMA
    /// struct the slab reuses is never taken for its predecessor.
    Churn,
}

/// The expected answer for one scenario on one backend.
struct Expect {
    /// None: the VMA must be absent from the summary or show 0 faults.
    vma: Option<Vma>,
    /// Whether `vma` is checked (not for scenarios about several rows at `addr`).
    main: bool,
    checks: Vec<Check>,
    /// For fork-cow, the child's mapping.
    child_vma: Option<Vma>,
    unseen: i64,
    child_unseen: i64,
}

fn vma(
    kind: &'static str,
    handler: Option<&'static str>,
    faults: u64,
    paths: &[(&'static str, u64)],
) -> Option<Vma> {
    Some(Vma {
        kind,
        handler,
        module: None,
        faults,
        paths: paths.to_vec(),
        prot: None,
        files: &[],
        origin: None,
        // Private anonymous memory has no file, so nothing set it up.
        by: if kind == "anon" { By::Nothing } else { By::Any },
        flags: &[],
        prefilled: None,
        observed: false,
        latency_period: 1,
        anon_vma: None,
    })
}

/// `observed`: the backend sees kernel functions (fentry, kprobe), so it also sees
/// get_user_pages faults; `derived`: exceptions only (tracepoint).
fn expect(scenario: &str, n: u64, observed: bool, latency_period: u64) -> Option<Expect> {
    let gup = if observed { 0 } else { EXEC_GUP_FAULTS };
    let mut e = Expect {
        vma: None,
        main: true,
        checks: Vec::new(),
        child_vma: None,
        unseen: gup,
        child_unseen: 0,
    };
    match scenario {
        // The first write fault makes the anon_vma: no fault came before it.
        "anon-write" => {
            e.vma = Some(Vma {
                anon_vma: made_by("fault", 0),
                ..vma("anon", None, n, &[("do_anonymous_page", n)])?
            })
        }
        // The kernel's copy_to_user faults on each page, in kernel mode:
        // counted, placed and timed like the process's own writes.
        "read-into" => {
            e.vma = Some(Vma {
                anon_vma: made_by("fault", 0),
                ..vma("anon", None, n, &[("do_anonymous_page", n)])?
            })
        }
        // Faults the kernel did not count (EFAULT, SIGSEGV) are not counted:
        // the written mapping as anon-write, the read-only one only its
        // write that succeeded once the SIGSEGV handler made it writable.
        "failed-faults" => {
            e.vma = Some(Vma {
                anon_vma: made_by("fault", 0),
                ..vma("anon", None, n, &[("do_anonymous_page", n)])?
            });
            let ro = Vma {
                anon_vma: made_by("fault", 0),
                ..vma("anon", None, 1, &[("do_anonymous_page", 1)])?
            };
            e.checks.push(Check::RowAt("ro_addr", Box::new(ro)));
        }
        "dev-zero-private" => {
            e.vma = vma("anon", None, n, &[("do_anonymous_page", n)]);
            // vm_file stays set. Once the process is gone the name comes from the
            // dentry walk, which stops at devtmpfs's root (docs/json-format.md).
            if let Some(v) = e.vma.as_mut() {
                v.files = &["/dev/zero", "/zero"];
                // The driver's mmap made it anonymous; its file stays.
                v.by = By::OneOf(&["mmap_zero", "mmap_zero_prepare"]);
            }
        }
        // N reads map the zero page; the first write makes the anon_vma.
        "anon-read-write" => {
            e.vma = Some(Vma {
                anon_vma: made_by("fault", n),
                ..vma(
                    "anon",
                    None,
                    2 * n,
                    &[("do_anonymous_page", n), ("do_wp_page", n)],
                )?
            });
        }
        "shared-anon" => {
            e.vma = vma("shmem", Some("shmem_fault"), n, &[("do_shared_fault", n)]);
            if let Some(v) = e.vma.as_mut() {
                v.prot = Some("rw-s");
                v.by = By::OneOf(&["shmem_zero_setup"]);
                v.flags = &["VM_SHARED", "VM_MAYSHARE"];
                // Not anonymous memory to the fault path: no anon_vma.
                v.anon_vma = Some(None);
            }
        }
        "file-private-write" => {
            // The first copy-on-write fault makes it.
            e.vma = Some(Vma {
                by: By::Containing("mmap"),
                anon_vma: made_by("fault", 0),
                ..vma("file", Some("filemap_fault"), n, &[("do_cow_fault", n)])?
            })
        }
        "file-shared-write" => {
            e.vma = Some(Vma {
                by: By::Containing("mmap"),
                flags: &["VM_SHARED"],
                anon_vma: Some(None),
                ..vma("file", Some("filemap_fault"), n, &[("do_shared_fault", n)])?
            })
        }
        "fork-cow" => {
            e.vma = Some(Vma {
                anon_vma: made_by("fault", 0),
                ..vma("anon", None, n, &[("do_anonymous_page", n)])?
            });
            e.child_vma = Some(Vma {
                // The child inherits the parent's mmap origin, and its VMA
                // gets an anon_vma of its own at fork, before any fault.
                origin: Some("MAP_ANONYMOUS"),
                anon_vma: made_by("fork", 0),
                ..vma("anon", None, n, &[("do_wp_page", n)])?
            });
        }
        "memfd-secret" => {
            e.vma = Some(Vma {
                by: By::OneOf(&["secretmem_mmap", "secretmem_mmap_prepare"]),
                // Left out of core dumps by its mmap handler (which also
                // sets VM_LOCKED on 6.18, not on 6.1).
                flags: &["VM_SHARED", "VM_DONTDUMP"],
                ..vma(
                    "driver",
                    Some("secretmem_fault"),
                    n,
                    &[("do_shared_fault", n)],
                )?
            })
        }
        "populate" => {
            if observed {
                // MAP_POPULATE's get_user_pages goes through handle_mm_fault.
                e.vma = vma("anon", None, n, &[("do_anonymous_page", n)]);
            } else {
                e.unseen = gup + n as i64;
            }
        }
        // Prefilled at mmap time: the process never faults on these pages,
        // and the row comes from the mmap call, with what its setup left.
        "driver-pfn" | "driver-pages" | "driver-vmf" | "bpf-map-mmap" => {
            type Made = (
                &'static [&'static str],
                By,
                &'static [&'static str],
                &'static str,
            );
            let (files, by, flags, installer): Made = match scenario {
                "driver-pfn" => (
                    &["/dev/rmapdemo_pfn", "/rmapdemo_pfn"],
                    By::OneOf(&["rmapdemo_mmap"]),
                    &["VM_SHARED", "VM_PFNMAP", "VM_IO", "VM_DONTEXPAND"],
                    "remap_pfn_range",
                ),
                "driver-pages" => (
                    &["/dev/rmapdemo_pages", "/rmapdemo_pages"],
                    By::OneOf(&["rmapdemo_mmap"]),
                    &["VM_SHARED", "VM_MIXEDMAP", "VM_DONTEXPAND"],
                    "vm_insert_pages",
                ),
                "driver-vmf" => (
                    &["/dev/rmapdemo_vmf", "/rmapdemo_vmf"],
                    By::OneOf(&["rmapdemo_mmap"]),
                    &["VM_SHARED", "VM_PFNMAP", "VM_IO", "VM_DONTEXPAND"],
                    "vmf_insert_pfn",
                ),
                // remap_vmalloc_range: vm_insert_page for each page.
                _ => (
                    &["anon_inode:bpf-map", "bpf-map"],
                    By::OneOf(&["bpf_map_mmap"]),
                    &["VM_SHARED", "VM_MIXEDMAP"],
                    "vm_insert_page",
                ),
            };
            e.vma = Some(Vma {
                kind: "driver",
                handler: None,
                module: (scenario != "bpf-map-mmap").then_some("rmapdemo"),
                faults: 0,
                paths: Vec::new(),
                prot: Some("rw-s"),
                files,
                origin: Some("MAP_SHARED"),
                by,
                flags,
                prefilled: Some((installer, n)),
                observed,
                latency_period: 1,
                anon_vma: None,
            });
        }
        "driver-fault" => {
            e.vma = Some(Vma {
                kind: "driver",
                handler: Some("rmapdemo_fault"),
                module: Some("rmapdemo"),
                faults: n,
                paths: vec![("do_shared_fault", n)],
                prot: Some("rw-s"),
                files: &["/dev/rmapdemo_fault", "/rmapdemo_fault"],
                origin: Some("MAP_SHARED"),
                by: By::OneOf(&["rmapdemo_mmap"]),
                flags: &["VM_SHARED"],
                prefilled: None,
                observed,
                latency_period: 1,
                anon_vma: None,
            });
        }
        // A split gives the kernel's two VMAs: the one page whose protection
        // or policy changed (read, or written), and the rest.
        "mprotect-split" | "mbind-split" => {
            e.vma = vma("anon", None, 1, &[("do_anonymous_page", 1)]);
            let rest = vma("anon", None, n, &[("do_anonymous_page", n)])?;
            e.checks.push(Check::RowAt("split_at", Box::new(rest)));
        }
        // The split-off part's VMA struct is new, its anon_vma copied from
        // the whole mapping's, which the first writes made: its faults all
        // come after it.
        "split-written" => {
            e.main = false;
            let rest = Vma {
                anon_vma: made_by("fault", 0),
                ..vma("anon", None, n, &[("do_anonymous_page", n)])?
            };
            e.checks.push(Check::RowAt("split_at", Box::new(rest)));
        }
        "remap-same-address" => {
            e.main = false;
            e.checks.push(Check::RowsAtAddr(&["file_a", "file_b"], n));
        }
        "stack-growth" => {
            e.main = false;
            e.checks.push(Check::OneRowHolds(n));
        }
        "threads-own-maps" => {
            e.main = false;
            let each = vma("anon", None, n, &[("do_anonymous_page", n)])?;
            e.checks.push(Check::RowAt("addrs", Box::new(each)));
            e.checks.push(Check::FewUnknown);
        }
        // memfd32: 16 anonymous pages, the first written, then a memfd mapped
        // MAP_FIXED over the other 15 and written; 32-bit syscalls throughout.
        "compat32" => {
            e.main = false;
            let anon = vma("anon", None, 1, &[("do_anonymous_page", 1)])?;
            e.checks.push(Check::RowAt("addr", Box::new(anon)));
            let memfd = Vma {
                prot: Some("rw-s"),
                // Its origin comes from the 32-bit mmap call's records.
                origin: Some("MAP_SHARED|MAP_FIXED"),
                by: SHMEM_MMAP,
                ..vma("shmem", Some("shmem_fault"), 15, &[("do_shared_fault", 15)])?
            };
            e.checks.push(Check::RowAt("memfd_addr", Box::new(memfd)));
        }
        "mmap-churn" => {
            e.main = false;
            e.checks.push(Check::Churn);
        }
        "threads-churn" => {
            e.vma = vma("anon", None, n, &[("do_anonymous_page", n)]);
            e.checks.push(Check::FewUnknown);
        }
        _ => return None,
    }
    for v in e.vma.iter_mut().chain(e.child_vma.iter_mut()) {
        v.observed = observed;
        v.latency_period = latency_period;
    }
    for c in &mut e.checks {
        if let Check::RowAt(_, v) = c {
            v.observed = observed;
            v.latency_period = latency_period;
        }
    }
    Some(e)
}

fn hex(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap_or("").trim_start_matches("0x"), 16).unwrap_or(0)
}

fn check_more(proc_: &Value, report: &Value, check: &Check) -> Result<()> {
    let vmas = proc_["vmas"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    match check {
        Check::RowAt(field, want) => {
            let addrs = match &report[*field] {
                Value::Array(a) => a.clone(),
                v => vec![v.clone()],
            };
            for a in &addrs {
                let want = Vma {
                    paths: want.paths.clone(),
                    ..**want
                };
                check_vma(proc_, a, &Some(want))?;
            }
        }
        Check::RowsAtAddr(files, faults) => {
            let at: Vec<&Value> = vmas
                .iter()
                .filter(|v| v["start"] == report["addr"])
                .collect();
            if at.len() != files.len() {
                bail!(
                    "{} rows at {}, not {}: {at:?}",
                    at.len(),
                    report["addr"],
                    files.len()
                );
            }
            for f in *files {
                let Some(v) = at.iter().find(|v| v["file"] == report[*f]) else {
                    bail!("no row for {} at {}: {at:?}", report[*f], report["addr"]);
                };
                if v["faults"] != *faults {
                    bail!("faults {} != {faults}: {v}", v["faults"]);
                }
            }
            let lives: Vec<&Value> = at.iter().map(|v| &v["life"]).collect();
            if lives.windows(2).any(|w| w[0] == w[1]) {
                bail!("rows at one address share a lifetime: {lives:?}");
            }
        }
        Check::OneRowHolds(min) => {
            let a = hex(&report["addr"]);
            let holding: Vec<&Value> = vmas
                .iter()
                .filter(|v| hex(&v["start"]) <= a && a < hex(&v["end"]))
                .collect();
            if holding.len() != 1 || holding[0]["faults"].as_u64().unwrap_or(0) < *min {
                bail!(
                    "want one row holding {} with >= {min} faults: {holding:?}",
                    report["addr"]
                );
            }
        }
        Check::Churn => {
            let cycles = report["cycles"].as_u64().unwrap_or(0);
            let at: Vec<&Value> = vmas
                .iter()
                .filter(|v| v["start"] == report["addr"])
                .collect();
            let a = hex(&report["addr"]);
            let shape = |pages: u64, faults: u64| {
                at.iter()
                    .filter(|v| {
                        hex(&v["end"]) == a + pages * 4096
                            && v["faults"] == faults
                            && v["kind"] == "anon"
                    })
                    .count() as u64
            };
            let (whole, rest) = (shape(4, 2), shape(3, 1));
            if (whole, rest, at.len() as u64) != (cycles, cycles, 2 * cycles) {
                bail!(
                    "{cycles} cycles: {whole} rows of 4 pages and 2 faults, {rest} of 3 pages \
                     and 1 fault, {} rows at {} in all",
                    at.len(),
                    report["addr"]
                );
            }
        }
        Check::FewUnknown => {
            let total = proc_["faults"]["total"].as_u64().unwrap_or(0);
            let unknown = proc_["by_kind"]["unknown"].as_u64().unwrap_or(0);
            if unknown * 100 > total {
                bail!("{unknown} of {total} faults without a VMA");
            }
        }
    }
    Ok(())
}

/// The `process` record of `pid` among a run's (the guest collects them).
fn process<'a>(run: &'a Value, pid: &Value) -> Result<&'a Value> {
    run["processes"]
        .as_array()
        .and_then(|ps| ps.iter().rev().find(|p| &p["pid"] == pid))
        .ok_or_else(|| anyhow::anyhow!("pid {pid} has no process record"))
}

/// The row of the mapping a workload reported at `addr`: the newest lifetime
/// starting there. An address can be reused within a process (a thread's
/// stack freed, then a region mapped at its start): what was there before
/// ended before the workload mapped its own, which it keeps until it reports.
fn find_vma<'a>(proc_: &'a Value, addr: &Value) -> Option<&'a Value> {
    proc_["vmas"].as_array().and_then(|vs| {
        vs.iter().filter(|v| &v["start"] == addr).max_by_key(|v| {
            v["first_seen_ns"]
                .as_u64()
                .or(v["mapped_ns"].as_u64())
                .unwrap_or(0)
        })
    })
}

fn check_vma(proc_: &Value, addr: &Value, want: &Option<Vma>) -> Result<()> {
    let got = find_vma(proc_, addr);
    let Some(want) = want else {
        if let Some(v) = got {
            if v["faults"] != 0 {
                bail!("VMA {addr} should have no faults: {v}");
            }
        }
        return Ok(());
    };
    let Some(v) = got else {
        bail!(
            "VMA {addr} missing from pid {}: {}",
            proc_["pid"],
            proc_["vmas"]
        );
    };
    let mut errs = Vec::new();
    if v["kind"] != want.kind {
        errs.push(format!("kind {} != {}", v["kind"], want.kind));
    }
    if v["handler"].as_str() != want.handler {
        errs.push(format!("handler {} != {:?}", v["handler"], want.handler));
    }
    // The module of the fault handler, where there is one, and of the setup.
    if want.module.is_some() && want.handler.is_some() && v["module"].as_str() != want.module {
        errs.push(format!("module {} != {:?}", v["module"], want.module));
    }
    if want.prot.is_some() && v["prot"].as_str() != want.prot {
        errs.push(format!("prot {} != {:?}", v["prot"], want.prot));
    }
    if !want.files.is_empty() && !want.files.iter().any(|f| v["file"] == *f) {
        errs.push(format!("file {} not one of {:?}", v["file"], want.files));
    }
    if let Some(o) = want.origin {
        if !v["origin"].as_str().unwrap_or("").contains(o) {
            errs.push(format!("origin {} lacks {o}", v["origin"]));
        }
    }
    if !want.by.accepts(&v["setup"]["by"]) {
        errs.push(format!(
            "setup.by {} is not {:?}",
            v["setup"]["by"], want.by
        ));
    }
    // A module's mapping: its own mmap handler sets it up too.
    if want.module.is_some() && v["setup"]["by_module"].as_str() != want.module {
        errs.push(format!(
            "setup.by_module {} != {:?}",
            v["setup"]["by_module"], want.module
        ));
    }
    let flags = &v["setup"]["vm_flags"];
    for f in want.flags {
        if !flags.as_array().is_some_and(|a| a.iter().any(|g| g == *f)) {
            errs.push(format!("setup.vm_flags {flags} lack {f}"));
        }
    }
    if let Some((installer, pages)) = want.prefilled {
        let got = &v["setup"]["prefilled"];
        let ok = if want.observed {
            got.as_object().is_some_and(|m| {
                m.iter()
                    .all(|(f, n)| *n == if f == installer { pages } else { 0 })
                    && m.contains_key(installer)
            })
        } else {
            got.is_null()
        };
        if !ok {
            errs.push(format!(
                "setup.prefilled {got} is not {installer} {pages} (or null where not observed)"
            ));
        }
    }
    if let Some(anon) = want.anon_vma {
        let got = &v["setup"]["anon_vma"];
        // What made it is seen where the backend probes kernel functions;
        // the exceptions-only backend derives the rest from fault completions.
        let observed = want.observed;
        let ok = match anon {
            None => got.is_null(),
            Some(a) => {
                let (by, source) = if observed {
                    (a.by, "observed")
                } else {
                    ("unknown", "derived")
                };
                got["faults_before"] == a.before
                    && got["by"] == by
                    && got["source"] == source
                    && got["ts_ns"].as_u64().is_some_and(|t| t > 0)
            }
        };
        if !ok {
            errs.push(format!("setup.anon_vma {got} is not {anon:?}"));
        }
    }
    if v["faults"] != want.faults {
        errs.push(format!("faults {} != {}", v["faults"], want.faults));
    }
    let paths: Vec<(String, u64)> = v["paths"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let want_paths: Vec<(String, u64)> = want
        .paths
        .iter()
        .map(|(p, n)| (p.to_string(), *n))
        .collect();
    if paths != want_paths {
        errs.push(format!("paths {paths:?} != {want_paths:?}"));
    }
    if !latency_samples_fit(v, want) {
        errs.push(format!(
            "latency samples {} do not fit {} faults timed 1 in {}",
            v["latency_ns"]["samples"], want.faults, want.latency_period
        ));
    }
    if !errs.is_empty() {
        bail!("{}: {v}", errs.join(", "));
    }
    Ok(())
}

/// Every fault timed, or (minor latency sampled one in `latency_period` per
/// CPU) every major one and at most every fault, and some minor ones once
/// there are enough minor ones to overflow a CPU's period several times.
fn latency_samples_fit(v: &Value, want: &Vma) -> bool {
    samples_fit(v, want.faults, want.latency_period)
}

/// Whether row `v` of `faults` faults has the latency samples a trace that
/// times minor faults one in `period` per CPU gives it (see
/// `latency_samples_fit`).
pub fn samples_fit(v: &Value, faults: u64, period: u64) -> bool {
    let Some(samples) = v["latency_ns"]["samples"].as_u64() else {
        return false;
    };
    if period <= 1 {
        return samples == faults;
    }
    let major = v["major"].as_u64().unwrap_or(0);
    let minor = faults.saturating_sub(major);
    samples <= faults && samples >= major && (minor < 8 * period || samples > major)
}

/// unseen is the kernel's minflt+majflt minus what was seen, and equals `want`.
fn check_unseen(proc_: &Value, want: i64) -> Result<()> {
    let k = &proc_["kernel"];
    let kernel = k["minflt"].as_i64().unwrap_or(-1) + k["majflt"].as_i64().unwrap_or(-1);
    let seen = proc_["faults"]["total"].as_i64().unwrap_or(-1);
    let unseen = proc_["unseen"].as_i64();
    if unseen != Some(kernel - seen) {
        bail!("unseen {:?} is not kernel {kernel} - seen {seen}", unseen);
    }
    if unseen != Some(want) {
        bail!("unseen {:?} != {want} (pid {})", unseen, proc_["pid"]);
    }
    Ok(())
}

/// Checks one scenario's trace. `r`: the workload's result (`rc`, `scenario`,
/// `report`: its first stdout line); `run`: rmaptrace's (`rc`, `header`,
/// `summary` and `processes`, the export's lines of those types).
pub fn check_result(r: &Value, run: &Value, n: u64) -> Result<()> {
    if run["rc"] != 0 {
        bail!(
            "rmaptrace exited with {} (its stderr is in the serial log)",
            run["rc"]
        );
    }
    if r["rc"] != 0 {
        bail!(
            "the workload exited with {} (its stderr is in the serial log)",
            r["rc"]
        );
    }
    let (report, header, summary) = (&r["report"], &run["header"], &run["summary"]);
    if !report.is_object() {
        bail!("the workload printed no report");
    }
    if header["type"] != "header" || summary["type"] != "summary" {
        bail!("the export has no header or summary line");
    }
    let observed = summary["paths_source"] == "observed";
    let latency_period = header["backend"]["latency_sample_period"]
        .as_u64()
        .unwrap_or(1);
    let scenario = r["scenario"].as_str().unwrap_or("");
    let Some(want) = expect(scenario, n, observed, latency_period) else {
        bail!("no expectations for scenario {scenario}: add them to tests/src/expect.rs");
    };
    let addr = &report["addr"];
    let parent = process(run, &report["pid"])?;
    if want.main {
        check_vma(parent, addr, &want.vma)?;
    }
    for c in &want.checks {
        check_more(parent, report, c)?;
    }
    check_unseen(parent, want.unseen)?;
    // Kernel-function backends see do_mmap: the workload's own executable was
    // mapped by execve's ELF loader, which no mmap syscall reports.
    if observed {
        let from_exec = parent["vmas"].as_array().is_some_and(|vs| {
            vs.iter().any(|v| {
                v["origin"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("kernel do_mmap("))
            })
        });
        if !from_exec {
            bail!("no VMA has an origin from the kernel's do_mmap (execve's mappings)");
        }
    }
    if want.child_vma.is_some() {
        let child = process(run, &report["child_pid"])?;
        check_vma(child, addr, &want.child_vma)?;
        check_unseen(child, want.child_unseen)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ADDR: &str = "0x7f0000000000";

    /// A RUN line whose summary has pid 100 with `vmas`, and kernel counts that
    /// make `unseen` come out as given.
    fn run(paths_source: &str, vmas: Value, seen: i64, unseen: i64) -> Value {
        json!({"rc": 0, "header": {"type": "header", "backend": {"name": "tracepoint"}},
               "summary": {"type": "summary", "paths_source": paths_source},
               "processes": [
                   {"type": "process", "pid": 100,
                    "faults": {"total": seen, "minor": seen, "major": 0},
                    "kernel": {"minflt": seen + unseen, "majflt": 0}, "unseen": unseen,
                    "vmas": vmas}]})
    }

    fn report(scenario: &str) -> Value {
        json!({"rc": 0, "scenario": scenario, "report": {"pid": 100, "addr": ADDR}})
    }

    fn driver_vma(handler: &str, faults: u64) -> Value {
        json!({"start": ADDR, "kind": "driver", "handler": handler, "module": "rmapdemo",
               "prot": "rw-s", "file": "/dev/rmapdemo_fault",
               "origin": "mmap(MAP_SHARED, rw-) at 1 ns",
               "setup": {"by": "rmapdemo_mmap", "by_module": "rmapdemo",
                         "vm_flags": ["VM_READ", "VM_WRITE", "VM_SHARED"]},
               "faults": faults, "paths": {"do_shared_fault": faults},
               "latency_ns": {"samples": faults}})
    }

    #[test]
    fn driver_fault_passes_with_the_exact_answer() {
        let r = run("derived", json!([driver_vma("rmapdemo_fault", 64)]), 90, 1);
        check_result(&report("driver-fault"), &r, 64).unwrap();
    }

    #[test]
    fn driver_fault_fails_on_a_wrong_handler_count_or_unseen() {
        let r = run("derived", json!([driver_vma("other_fault", 64)]), 90, 1);
        assert!(check_result(&report("driver-fault"), &r, 64).is_err());
        let r = run("derived", json!([driver_vma("rmapdemo_fault", 63)]), 90, 1);
        assert!(check_result(&report("driver-fault"), &r, 64).is_err());
        let r = run("derived", json!([driver_vma("rmapdemo_fault", 64)]), 90, 2);
        assert!(check_result(&report("driver-fault"), &r, 64).is_err());
        let r = run("derived", json!([]), 90, 1);
        assert!(check_result(&report("driver-fault"), &r, 64).is_err());
        let mut v = driver_vma("rmapdemo_fault", 64);
        v["setup"]["by"] = json!("shmem_mmap");
        let r = run("derived", json!([v]), 90, 1);
        assert!(check_result(&report("driver-fault"), &r, 64).is_err());
    }

    #[test]
    fn prefilled_driver_mappings_are_rows_without_faults() {
        let pfn = json!({"start": ADDR, "kind": "driver", "handler": null, "module": null,
               "prot": "rw-s", "file": "/dev/rmapdemo_pfn",
               "origin": "mmap(MAP_SHARED, rw-) at 1 ns",
               "setup": {"by": "rmapdemo_mmap", "by_module": "rmapdemo",
                         "vm_flags": ["VM_READ", "VM_WRITE", "VM_SHARED", "VM_PFNMAP",
                                      "VM_IO", "VM_DONTEXPAND"]},
               "faults": 0, "paths": {}, "latency_ns": {"samples": 0}});
        let r = run("derived", json!([pfn.clone()]), 20, 1);
        check_result(&report("driver-pfn"), &r, 64).unwrap();
        // No row: the mapping is not shown at all.
        let r = run("derived", json!([]), 20, 1);
        assert!(check_result(&report("driver-pfn"), &r, 64).is_err());
        // It faulted: the fault path served it after all.
        let mut faulted = pfn.clone();
        faulted["faults"] = json!(3);
        let r = run("derived", json!([faulted]), 20, 1);
        assert!(check_result(&report("driver-pfn"), &r, 64).is_err());
        // Set up some other way.
        let mut mixed = pfn;
        mixed["setup"]["vm_flags"] = json!(["VM_SHARED", "VM_MIXEDMAP", "VM_DONTEXPAND"]);
        let r = run("derived", json!([mixed]), 20, 1);
        assert!(check_result(&report("driver-pfn"), &r, 64).is_err());
    }

    #[test]
    fn populate_is_unseen_on_exceptions_and_seen_on_kernel_functions() {
        let r = run("derived", json!([]), 20, 65);
        check_result(&report("populate"), &r, 64).unwrap();
        let vma = json!({"start": ADDR, "kind": "anon", "handler": null, "faults": 64,
                         "paths": {"do_anonymous_page": 64}, "latency_ns": {"samples": 64}});
        // The executable, mapped by execve: kernel-function backends see its origin.
        let exe = json!({"start": "0x400000", "kind": "file", "faults": 20,
                         "origin": "kernel do_mmap(MAP_PRIVATE, r-x) at 1 ns"});
        let r = run("observed", json!([vma, exe]), 84, 0);
        check_result(&report("populate"), &r, 64).unwrap();
        let r = run("observed", json!([vma]), 64, 0);
        assert!(
            check_result(&report("populate"), &r, 64).is_err(),
            "execve's mappings must have a do_mmap origin on kernel-function backends"
        );
    }

    #[test]
    fn failed_runs_fail() {
        let mut r = run("derived", json!([driver_vma("rmapdemo_fault", 64)]), 90, 1);
        r["rc"] = json!(1);
        assert!(check_result(&report("driver-fault"), &r, 64).is_err());
    }
}
