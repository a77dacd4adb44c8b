//! Cases from real programs that break naive fault attribution: many threads, a
//! mapping replaced at the same address, heap and stack growth, VMA splits,
//! MAP_FIXED replacements racing faults, exited threads, exec from a threaded
//! process, a 32-bit process. Each checks the exact row (one mapping lifetime) that
//! rmaptrace gives every mapping the workload reports.
use rmaptrace_tests::{
    bin, build_program, find_process, processes, read_export, report_of, require_root, temp_json,
    trace_workload, wait_for_header, Traced,
};
use serde_json::Value;
use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

const PAGE: u64 = 4096;

/// A hex address string ("0x7f…") as a number.
fn addr(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not an address: {v}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("not an address ({e}): {s}"))
}

fn rows(p: &Value) -> &Vec<Value> {
    p["vmas"]
        .as_array()
        .unwrap_or_else(|| panic!("no vmas: {p}"))
}

/// The rows with a real address range (not the row of faults without a VMA).
fn mapped_rows(p: &Value) -> impl Iterator<Item = &Value> {
    rows(p).iter().filter(|v| v["kind"] != "unknown")
}

fn range(v: &Value) -> (u64, u64) {
    (addr(&v["start"]), addr(&v["end"]))
}

fn rows_starting_at(p: &Value, start: u64) -> Vec<&Value> {
    mapped_rows(p)
        .filter(|v| addr(&v["start"]) == start)
        .collect()
}

/// The one row that starts at `start`.
fn row_at(p: &Value, start: u64) -> &Value {
    let found = rows_starting_at(p, start);
    assert_eq!(
        found.len(),
        1,
        "want exactly one row starting at {start:#x}, got {}: {}",
        found.len(),
        serde_json::to_string(&found).unwrap()
    );
    found[0]
}

fn faults(v: &Value) -> u64 {
    v["faults"]
        .as_u64()
        .unwrap_or_else(|| panic!("no fault count: {v}"))
}

/// Faults whose VMA was not found stay under 1% of the process's faults.
/// At most 1% of faults without a VMA, where the backend can find VMAs while
/// other threads change mappings (a lockless tree walk, or the kernel-function
/// backends' argument); with bpf_find_vma alone, those lookups fail under any
/// writer, and the faults must then be counted as unknown, not lost.
fn assert_few_unknown(t: &Traced, p: &Value) {
    let total = p["faults"]["total"].as_u64().unwrap();
    let unknown = p["by_kind"]["unknown"].as_u64().unwrap_or(0);
    let lookup = t.export[0]["backend"]["vma_lookup"].as_str().unwrap_or("");
    if lookup == "bpf_find_vma" {
        let kinds: u64 = p["by_kind"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(kinds, total, "every fault counted under a kind: {p}");
        eprintln!("VMA lookup by bpf_find_vma only: {unknown} of {total} faults unknown");
        return;
    }
    assert!(
        unknown * 100 <= total,
        "{unknown} of {total} faults without a VMA: {}",
        p["by_kind"]
    );
}

/// Every one of the row's `n` faults was matched to its own thread's entry
/// while many threads faulted at once: each has a path (an unmatched
/// completion has none: path `unknown`), and a latency, or, where minor
/// latency is sampled, the row has its share of samples.
fn assert_each_fault_met_its_entry(t: &Traced, v: &Value, n: u64) {
    assert!(t.samples_fit(v, n), "every fault timed, or a sample: {v}");
    assert!(v["paths"].get("unknown").is_none(), "every path known: {v}");
}

/// When a row's mapping was there: from its first sighting until it was removed
/// (open while it still is). Not from mapped_ns: a MAP_FIXED replacement removes the
/// old mapping inside the call that creates the new one.
fn alive(v: &Value) -> (u64, u64) {
    let seen = v["first_seen_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("no first_seen_ns: {v}"));
    (seen, v["unmapped_ns"].as_u64().unwrap_or(u64::MAX))
}

/// Pairs of rows over the same addresses at the same time: one kernel VMA counted
/// as two rows.
fn coexisting_overlaps(p: &Value) -> Vec<(&Value, &Value)> {
    let all: Vec<&Value> = mapped_rows(p).collect();
    let mut bad = Vec::new();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            let ((a0, a1), (b0, b1)) = (range(a), range(b));
            let ((ta0, ta1), (tb0, tb1)) = (alive(a), alive(b));
            if a0 < b1 && b0 < a1 && ta0 < tb1 && tb0 < ta1 {
                bad.push((*a, *b));
            }
        }
    }
    bad
}

#[test]
fn threads_churning_mappings_beside_faulting_threads() {
    const N: u64 = 16384;
    let t = trace_workload("threads-churn", N as usize, &[]);
    let p = t.process(t.workload_pid());
    let start = addr(&t.report["addr"]);
    let v = row_at(p, start);
    assert_eq!(addr(&v["end"]), start + N * PAGE, "{v}");
    assert_eq!(v["kind"], "anon", "{v}");
    assert_eq!(faults(v), N, "the 32 threads' faults on the region: {v}");
    assert_each_fault_met_its_entry(&t, v, N);
    assert!(t.report["churn_iterations"].as_u64().unwrap() > 0);
    println!("churn iterations: {}", t.report["churn_iterations"]);
    assert_few_unknown(&t, p);
}

#[test]
fn every_thread_region_gets_its_own_exact_row() {
    const N: u64 = 2048;
    let t = trace_workload("threads-own-maps", N as usize, &[]);
    let p = t.process(t.workload_pid());
    let addrs = t.report["addrs"].as_array().unwrap();
    assert_eq!(addrs.len(), 64);
    for a in addrs {
        let start = addr(a);
        let v = row_at(p, start);
        assert_eq!(addr(&v["end"]), start + N * PAGE, "{v}");
        assert_eq!(v["kind"], "anon", "{v}");
        assert_eq!(faults(v), N, "{v}");
        assert_each_fault_met_its_entry(&t, v, N);
    }
    assert_few_unknown(&t, p);
}

/// 500 cycles of map, split, map away at one address: the slab hands the
/// same VMA struct pointers out again and again, and each cycle is still its
/// own two rows.
#[test]
fn mappings_churned_at_one_address_are_each_their_own_rows() {
    let t = trace_workload("mmap-churn", 500, &[]);
    t.check("mmap-churn", 500);
}

#[test]
fn two_mappings_at_one_address_are_two_rows() {
    const N: u64 = 64;
    let t = trace_workload("remap-same-address", N as usize, &[]);
    t.check("remap-same-address", N as usize);
    let p = t.process(t.workload_pid());
    let start = addr(&t.report["addr"]);
    let at = rows_starting_at(p, start);
    assert_eq!(
        at.len(),
        2,
        "one row per mapping at {start:#x}: {}",
        serde_json::to_string(&at).unwrap()
    );
    let file_a = &t.report["file_a"];
    let file_b = &t.report["file_b"];
    let a = *at.iter().find(|v| &v["file"] == file_a).unwrap_or_else(|| {
        panic!(
            "no row for {file_a}: {}",
            serde_json::to_string(&at).unwrap()
        )
    });
    let b = *at.iter().find(|v| &v["file"] == file_b).unwrap_or_else(|| {
        panic!(
            "no row for {file_b}: {}",
            serde_json::to_string(&at).unwrap()
        )
    });
    for v in [a, b] {
        assert_eq!(v["kind"], "file", "{v}");
        assert_eq!(faults(v), N, "{v}");
        assert_eq!(addr(&v["end"]), start + N * PAGE, "{v}");
    }
    assert_ne!(a["life"], b["life"], "two lifetimes");
    let unmapped_a = a["unmapped_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("A was unmapped: {a}"));
    let mapped_b = b["mapped_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("B's mmap was seen: {b}"));
    assert!(
        unmapped_a <= mapped_b,
        "A gone ({unmapped_a}) before B mapped ({mapped_b})"
    );
}

#[test]
fn heap_growth_stays_one_row() {
    const N: u64 = 1000;
    let t = trace_workload("heap-growth", N as usize, &[]);
    let p = t.process(t.workload_pid());
    let (lo, hi) = (addr(&t.report["addr"]), addr(&t.report["end"]));
    assert_eq!(hi - lo, N * PAGE, "{}", t.report);
    let covering: Vec<&Value> = mapped_rows(p)
        .filter(|v| {
            let (s, e) = range(v);
            s <= lo && e >= hi
        })
        .collect();
    assert_eq!(
        covering.len(),
        1,
        "one heap row covers the growth: {}",
        serde_json::to_string(&covering).unwrap()
    );
    let heap = covering[0];
    assert_eq!(heap["kind"], "anon", "{heap}");
    // The N new pages, plus malloc's own pages of the heap (few: the workload
    // allocates little).
    assert!(
        (N..=N + 64).contains(&faults(heap)),
        "{} faults on the heap: {heap}",
        faults(heap)
    );
    let others: Vec<&Value> = mapped_rows(p)
        .filter(|v| !std::ptr::eq(*v, heap))
        .filter(|v| {
            let (s, e) = range(v);
            s < hi && lo < e
        })
        .collect();
    assert!(
        others.is_empty(),
        "other rows over the heap growth: {}",
        serde_json::to_string(&others).unwrap()
    );
}

#[test]
fn stack_growth_stays_one_row() {
    const N: u64 = 500;
    let t = trace_workload("stack-growth", N as usize, &[]);
    t.check("stack-growth", N as usize);
    let p = t.process(t.workload_pid());
    let deepest = addr(&t.report["addr"]);
    let containing: Vec<&Value> = mapped_rows(p)
        .filter(|v| {
            let (s, e) = range(v);
            s <= deepest && deepest < e
        })
        .collect();
    assert_eq!(
        containing.len(),
        1,
        "one stack row holds the deepest frame {deepest:#x}: {}",
        serde_json::to_string(&containing).unwrap()
    );
    let stack = containing[0];
    assert!(
        faults(stack) >= N,
        "{} faults on the stack: {stack}",
        faults(stack)
    );
    let overlaps = coexisting_overlaps(p);
    assert!(
        overlaps.is_empty(),
        "rows over the same addresses at the same time: {}",
        serde_json::to_string(&overlaps).unwrap()
    );
}

/// N+1 pages split after the first: the rows the kernel has, each with its faults.
fn split(scenario: &str) {
    const N: u64 = 32;
    let t = trace_workload(scenario, N as usize, &[]);
    t.check(scenario, N as usize);
    let p = t.process(t.workload_pid());
    let start = addr(&t.report["addr"]);
    let split_at = addr(&t.report["split_at"]);
    assert_eq!(split_at, start + PAGE);
    let first = row_at(p, start);
    assert_eq!(addr(&first["end"]), split_at, "{first}");
    assert_eq!(faults(first), 1, "{first}");
    let rest = row_at(p, split_at);
    assert_eq!(addr(&rest["end"]), start + (N + 1) * PAGE, "{rest}");
    assert_eq!(faults(rest), N, "{rest}");
    for v in [first, rest] {
        assert_eq!(v["kind"], "anon", "{v}");
    }
    assert_ne!(first["life"], rest["life"]);
}

#[test]
fn mprotect_split_gives_the_kernels_two_vmas() {
    split("mprotect-split");
}

#[test]
fn mbind_split_gives_the_kernels_two_vmas() {
    split("mbind-split");
}

/// The same race without `--events`: counting at the entry, a fault whose
/// entry found its VMA being replaced is placed once it holds mmap_lock (or
/// once the window it waited for ended), so next to none stays unknown.
#[test]
fn faults_racing_map_fixed_replacement_are_placed_once_handled() {
    let t = trace_workload("populate-race", 16, &[]);
    let pid = t.workload_pid();
    let p = t.process(pid);
    let c = &t.summary()["counters"];
    println!(
        "{} faults, {} unknown, {} placed after their entry, {} lookups busy",
        p["faults"]["total"], p["by_kind"]["unknown"], c["placed_late"], c["vma_lookups_busy"]
    );
    assert_few_unknown(&t, p);
}

#[test]
fn faults_during_map_fixed_replacement_land_in_the_live_mapping() {
    const N: u64 = 16;
    let t = trace_workload("populate-race", N as usize, &["--events"]);
    let pid = t.workload_pid();
    let p = t.process(pid);
    let by_life: std::collections::HashMap<u64, &Value> = rows(p)
        .iter()
        .filter_map(|v| Some((v["life"].as_u64()?, v)))
        .collect();
    let (mut checked, mut violations, mut missing) = (0u64, Vec::new(), Vec::new());
    for e in t
        .export
        .iter()
        .filter(|l| l["type"] == "fault" && l["pid"] == pid)
        .filter(|l| l["kind"] == "shmem" || l["kind"] == "anon")
    {
        let Some(life) = e["life"].as_u64() else {
            continue;
        };
        let Some(v) = by_life.get(&life) else {
            missing.push(e);
            continue;
        };
        let ts = e["ts_ns"].as_u64().unwrap();
        let after_unmap = v["unmapped_ns"].as_u64().is_some_and(|u| ts >= u);
        let before_map = v["mapped_ns"].as_u64().is_some_and(|m| ts < m);
        if after_unmap || before_map {
            violations.push((e, *v));
        }
        checked += 1;
    }
    // A fault placed after its entry (the VMA there was being replaced) has
    // its record placed too (a fifth of the region's faults here); what
    // stays without a VMA is what only userspace places, by address, after
    // the record was written: next to none.
    let unknown_records = t
        .export
        .iter()
        .filter(|l| l["type"] == "fault" && l["pid"] == pid && l["kind"] == "unknown")
        .count() as u64;
    let unknown_faults = p["by_kind"]["unknown"].as_u64().unwrap_or(0);
    let c = &t.summary()["counters"];
    println!(
        "{checked} fault events checked, {} replacements, events_lost {}, {unknown_records} records and {unknown_faults} faults unknown, {} placed late, {} moved late",
        t.report["replacements"],
        t.summary()["events_lost"],
        c["placed_late"],
        c["moved_late"],
    );
    assert!(
        unknown_records * 100 <= checked,
        "{unknown_records} records unknown of {checked}, {unknown_faults} faults"
    );
    assert!(
        checked >= N,
        "the region's own faults have events with a life"
    );
    assert!(
        missing.is_empty(),
        "{} fault events name a life no row has, e.g. {}",
        missing.len(),
        missing[0]
    );
    assert!(
        violations.is_empty(),
        "{} faults outside their mapping's lifetime, e.g. {} in {}",
        violations.len(),
        violations[0].0,
        violations[0].1
    );
    assert_few_unknown(&t, p);
}

#[test]
fn attaching_after_threads_died_counts_from_the_attach() {
    const N: u64 = 100;
    require_root();
    let mut child = Command::new(bin())
        .args(["workload", "dead-threads", "--pages", &N.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let report: Value = serde_json::from_str(&first)
        .unwrap_or_else(|e| panic!("workload report unreadable ({e}): {first}"));
    let json = temp_json("dead-threads");
    let tracer = Command::new(bin())
        .args(["--no-tui", "--json", json.to_str().unwrap(), "--pid"])
        .arg(report["pid"].to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_header(&json);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(child.wait().unwrap().success());
    let status = tracer.wait_with_output().unwrap().status;
    assert!(
        status.success(),
        "rmaptrace ends once the pid is gone: {status}"
    );
    let export = read_export(&json);
    let summary = export.last().unwrap();
    assert_eq!(summary["type"], "summary");
    let p = find_process(&export, &report["pid"]).expect("workload traced");
    let v = row_at(p, addr(&report["addr"]));
    assert_eq!(faults(v), N, "{v}");
    // The kernel's counters include the dead threads' faults; the baseline taken at
    // the attach must too, or unseen would be off by their 1000 faults.
    assert_eq!(p["unseen"], 0, "{p}");
    assert!(p["kernel"]["minflt"].as_i64().unwrap() >= N as i64, "{p}");
}

/// Deletes the workload's copy of rmaptrace however the test ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn exec_from_a_threaded_process_is_followed_by_name() {
    const N: u64 = 200;
    require_root();
    let name = format!("rmtx{}", std::process::id() % 100000);
    let _copy = RemoveOnDrop(Path::new("/var/tmp").join(&name));
    let json = temp_json("exec-threads");
    let tracer = Command::new(bin())
        .args([
            "--no-tui",
            "--json",
            json.to_str().unwrap(),
            "--comm",
            &name,
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_header(&json);
    let out = Command::new(bin())
        .args(["workload", "exec-threads", "--pages", &N.to_string()])
        .env("RMAPTRACE_EXEC_NAME", &name)
        .output()
        .unwrap();
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let traced = tracer.wait_with_output().unwrap();
    let report = report_of(&out, "workload");
    assert_eq!(
        report["scenario"], "anon-write",
        "the exec'd program reports"
    );
    let export = read_export(&json);
    let summary = export.last().unwrap();
    assert_eq!(
        summary["type"], "summary",
        "rmaptrace ({}) ends with the summary",
        traced.status
    );
    let p = find_process(&export, &report["pid"]).expect("the exec'd process is traced");
    assert_eq!(p["comm"], name.as_str());
    let v = row_at(p, addr(&report["addr"]));
    assert_eq!(faults(v), N, "{v}");
    let unseen = p["unseen"]
        .as_i64()
        .unwrap_or_else(|| panic!("unseen: {p}"));
    println!("unseen after exec from a threaded process: {unseen}");
    // Counted from the exec: execve's argument copy (get_user_pages) comes before.
    assert!((0..=1).contains(&unseen), "{p}");
}

/// Builds tests/programs/memfd32.c as a static 32-bit program.
fn build_memfd32() -> PathBuf {
    build_program(
        "memfd32.c",
        "memfd32",
        &["-m32", "-static", "-O1"],
        "gcc -m32 needs the 32-bit C library: run `cargo xtask deps` (gcc-multilib)",
    )
}

#[test]
fn a_32_bit_process_is_traced_like_any_other() {
    require_root();
    let exe = build_memfd32();
    let json = temp_json("memfd32");
    let out = Command::new(bin())
        .args(["--no-tui", "--json", json.to_str().unwrap(), "--"])
        .arg(&exe)
        .output()
        .unwrap();
    let report = report_of(&out, "rmaptrace -- memfd32");
    let export = read_export(&json);
    let summary = export.last().unwrap();
    assert_eq!(summary["type"], "summary");
    let p = find_process(&export, &report["pid"]).expect("memfd32 traced");
    let (start, memfd) = (addr(&report["addr"]), addr(&report["memfd_addr"]));
    let anon = row_at(p, start);
    assert_eq!(anon["kind"], "anon", "{anon}");
    assert_eq!(faults(anon), 1, "{anon}");
    assert_eq!(
        addr(&anon["end"]),
        memfd,
        "MAP_FIXED cut it to one page: {anon}"
    );
    let shm = row_at(p, memfd);
    assert_eq!(shm["kind"], "shmem", "{shm}");
    assert_eq!(faults(shm), 15, "{shm}");
    // A memfd is a shmem file: shmem's mmap handler set it up.
    let by = &shm["setup"]["by"];
    assert!(by == "shmem_mmap" || by == "shmem_mmap_prepare", "{shm}");
    assert!(
        export.iter().any(|l| l["type"] == "mmap"
            && l["op"] == "mmap"
            && l["pid"] == report["pid"]
            && l["addr"].is_string()
            && addr(&l["addr"]) == memfd),
        "the 32-bit mmap of the memfd is recorded"
    );
}

/// A process still faulting when the trace ends, attached with --pid and seen
/// system-wide: its kernel counts are read at the same instants as rmaptrace's
/// own (per thread, at its latest counted fault), so `unseen` is exactly the
/// faults this backend cannot see, none here (no get_user_pages), not the drift
/// between a snapshot and a later /proc read.
#[test]
fn a_process_still_running_at_the_end_has_exact_kernel_counts() {
    require_root();
    let mut storm = Command::new(bin())
        .args(["workload", "bench-anon", "--pages", "1000000000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = storm.id().to_string();
    let by_pid = temp_json("running-pid");
    let system = temp_json("running-system");
    let tracers: Vec<_> = [(&by_pid, vec!["--pid", pid.as_str()]), (&system, vec![])]
        .into_iter()
        .map(|(json, extra)| {
            Command::new(bin())
                .args([
                    "--no-tui",
                    "--duration",
                    "2",
                    "--json",
                    json.to_str().unwrap(),
                ])
                .args(extra)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for t in tracers {
        assert!(t.wait_with_output().unwrap().status.success());
    }
    storm.kill().unwrap();
    storm.wait().unwrap();
    for json in [&by_pid, &system] {
        let export = read_export(json);
        assert_eq!(export.last().unwrap()["type"], "summary");
        let p = find_process(&export, &storm.id().into()).expect("the storm traced");
        let total = p["faults"]["total"].as_u64().unwrap();
        assert!(total > 1000, "it faulted throughout: {p}");
        assert_eq!(p["exited"], false, "{}", json.display());
        assert_eq!(p["unseen"], 0, "{}: {}", json.display(), p["kernel"]);
    }
}

/// A fork storm longer than the traced-process table and the fault table (both
/// made small for the test): each process leaves the tables when it exits, so
/// every child is followed and every fault lands on its mapping. The children
/// come at most one per 2 ms, so between two 500 ms ticks no more than 250 exit,
/// about 1000 rows, whatever the machine; all 2000 make about 8000.
#[test]
fn a_fork_storm_longer_than_the_tables_is_followed_to_its_end() {
    require_root();
    const CHILDREN: usize = 2000;
    let json = temp_json("fork-storm");
    let out = Command::new(bin())
        .env("RMAPTRACE_TRACED_ENTRIES", "32")
        .env("RMAPTRACE_FAULT_ENTRIES", "4096")
        .args(["--no-tui", "--json", json.to_str().unwrap(), "--"])
        .arg(bin())
        .args(["workload", "fork-storm", "--pages", &CHILDREN.to_string()])
        .output()
        .unwrap();
    let report = report_of(&out, "rmaptrace -- fork-storm");
    let export = read_export(&json);
    let summary = export.last().unwrap();
    let counters = &summary["counters"];
    assert_eq!(counters["traced_table_full"], 0, "{counters}");
    let children: Vec<&Value> = processes(&export)
        .into_iter()
        .filter(|p| p["pid"] != report["pid"] && p["faults"]["total"].as_u64().unwrap_or(0) > 0)
        .collect();
    assert_eq!(children.len(), CHILDREN, "every child followed");
    for p in &children {
        assert_eq!(p["exited"], true, "{p}");
        assert_eq!(p["unseen"], 0, "{p}");
        // A full fault table would count faults per process only, as unknown
        // with no row: every unknown fault must be in a row of its own.
        let in_rows: u64 = p["vmas"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["kind"] == "unknown")
            .map(faults)
            .sum();
        assert_eq!(
            p["by_kind"]["unknown"].as_u64().unwrap_or(0),
            in_rows,
            "no fault counted outside the table: {p}"
        );
    }
}
