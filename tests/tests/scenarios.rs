//! Each workload scenario under rmaptrace on this kernel, with the exact answer for
//! its mapping, and process totals checked against the kernel's own counters.
use rmaptrace_tests::{trace_workload, trace_workload_with, Traced};
use serde_json::Value;

const N: usize = 200;

/// Faults the kernel counted that the backend in use cannot see, for a plain exec
/// of the workload: execve copies its argument strings with get_user_pages (one
/// page here), which raises no exception. Backends that probe kernel functions
/// (paths "observed": fentry, kprobe) see it through handle_mm_fault.
fn exec_gup_faults(t: &Traced) -> i64 {
    if observes_kernel_functions(t) {
        0
    } else {
        1
    }
}

fn observes_kernel_functions(t: &Traced) -> bool {
    t.summary()["paths_source"] == "observed"
}

fn paths(v: &Value) -> Vec<(String, u64)> {
    v["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

fn assert_vma(
    t: &Traced,
    pid: u64,
    kind: &str,
    handler: Option<&str>,
    faults: u64,
    expect_paths: &[(&str, u64)],
) {
    let v = t.vma(pid);
    assert_eq!(v["kind"], kind, "kind of {v}");
    assert_eq!(v["handler"].as_str(), handler, "handler of {v}");
    assert_eq!(v["faults"], faults, "faults of {v}");
    let want: Vec<(String, u64)> = expect_paths
        .iter()
        .map(|(p, n)| (p.to_string(), *n))
        .collect();
    assert_eq!(paths(v), want, "paths of {v}");
    assert!(
        t.samples_fit(v, faults),
        "every fault timed, or a sample: {v}"
    );
    if v["latency_ns"]["samples"].as_u64() > Some(0) {
        assert!(v["latency_ns"]["p50"].as_u64().unwrap() > 0, "{v}");
    }
}

/// The process's totals equal the kernel's minflt+majflt but for `unseen`.
fn assert_kernel_agrees(t: &Traced, pid: u64, unseen: i64) {
    let p = t.process(pid);
    let k = &p["kernel"];
    let kernel = k["minflt"].as_i64().unwrap() + k["majflt"].as_i64().unwrap();
    let seen = p["faults"]["total"].as_i64().unwrap();
    assert_eq!(p["unseen"].as_i64().unwrap(), kernel - seen);
    assert_eq!(
        p["unseen"].as_i64().unwrap(),
        unseen,
        "unseen faults of {p}"
    );
    assert_eq!(
        p["faults"]["minor"].as_i64().unwrap() + p["faults"]["major"].as_i64().unwrap(),
        seen
    );
}

/// Traces `scenario` (N pages) and checks it against the answer every kernel
/// and backend is held to (the table shared with the guest tests).
fn check(scenario: &str) -> Traced {
    let t = trace_workload(scenario, N, &[]);
    t.check(scenario, N);
    t
}

/// The kernel tables read a batch at a time (the default) and entry by entry
/// (as on kernels without batch lookups) give the same exact answer.
#[test]
fn tables_read_entry_by_entry_give_the_same_answer() {
    let t = trace_workload_with("anon-write", N, &[], &[("RMAPTRACE_NO_BATCH", "1")]);
    t.check("anon-write", N);
}

#[test]
fn anonymous_writes_are_do_anonymous_page() {
    check("anon-write");
}

#[test]
fn reads_map_the_zero_page_then_writes_copy_it() {
    check("anon-read-write");
}

/// read(2) into fresh memory: the kernel's copy_to_user faults on each page.
/// These kernel-mode exceptions were counted without their entry (no
/// latency, path `unknown`) when the entry read `pagefault_disabled` with a
/// probe read, which runs under a pagefault_disable() of its own.
#[test]
fn kernel_writes_into_fresh_memory_are_placed_and_timed() {
    let t = check("read-into");
    let c = &t.summary()["counters"];
    assert_eq!(c["completions_without_entry"], 0, "{c}");
}

/// Faults that fail (read(2) into read-only memory: EFAULT; a write there:
/// SIGSEGV) are not the kernel's faults, and not rmaptrace's: counting at
/// the entry takes each back once the thread's counters show it failed.
#[test]
fn failed_faults_are_not_counted() {
    let t = check("failed-faults");
    let c = &t.summary()["counters"];
    if t.export[0]["backend"]["counted_at"] == "entry" {
        assert_eq!(c["faults_taken_back"], N as u64 + 1, "{c}");
    }
}

/// With `--events`, a fault the kernel did not count leaves no record: the
/// read-only page has one (the write that succeeded once the signal handler
/// made the page writable), none for the reads that failed with EFAULT nor
/// for the write that raised SIGSEGV.
#[test]
fn failed_faults_leave_no_fault_records() {
    let t = trace_workload("failed-faults", N, &["--events"]);
    t.check("failed-faults", N);
    let pid = t.workload_pid();
    let page = |v: &serde_json::Value| {
        let hex = v.as_str().expect("an address").trim_start_matches("0x");
        u64::from_str_radix(hex, 16).expect("a hex address") >> 12
    };
    let ro = page(&t.report["ro_addr"]);
    let records: Vec<_> = t
        .export
        .iter()
        .filter(|l| l["type"] == "fault" && l["pid"] == pid)
        .collect();
    let at_ro: Vec<_> = records.iter().filter(|l| page(&l["addr"]) == ro).collect();
    assert_eq!(t.summary()["events_lost"], 0);
    assert_eq!(at_ro.len(), 1, "{at_ro:?}");
    assert_eq!(
        Some(records.len() as u64),
        t.process(pid)["faults"]["total"].as_u64(),
        "one record per counted fault"
    );
}

/// Reads of a file's pages dropped from the page cache, without readahead:
/// each a major fault (where the file is on a disk), counted as major with
/// its latency, every one, and the kernel's majflt agrees. Counting at the
/// entry, the major completion moves each from minor to major, and the
/// entry, which reads the clock only where a fault can be major or be the
/// sampled one, times each (the file's pages can be read in).
#[test]
fn cold_file_reads_are_major_faults_each_timed() {
    cold_file_reads(&[]);
}

/// The same, with `--events`: each major fault's record says so, with its
/// latency.
#[test]
fn cold_file_reads_are_recorded_major_with_latency() {
    let Some((t, major)) = cold_file_reads(&["--events"]) else {
        return;
    };
    let pid = t.workload_pid();
    let v = t.vma(pid);
    let majors: Vec<_> = t
        .export
        .iter()
        .filter(|l| l["type"] == "fault" && l["pid"] == pid && l["vma_start"] == v["start"])
        .filter(|l| l["major"] == true)
        .collect();
    assert_eq!(majors.len() as u64, major, "{v}");
    for e in majors {
        assert!(e["latency_ns"].as_u64() > Some(0), "{e}");
        let path = e["path"].as_str().unwrap_or_default();
        assert!(v["paths"].get(path).is_some(), "{e} in {v}");
    }
}

/// The trace of `file-read-cold` and its region's major faults, checked;
/// None where the file is on a filesystem without a disk.
fn cold_file_reads(args: &[&str]) -> Option<(Traced, u64)> {
    let t = trace_workload("file-read-cold", N, args);
    let pid = t.workload_pid();
    let p = t.process(pid);
    let v = t.vma(pid);
    let kernel_major = p["kernel"]["majflt"].as_u64().unwrap();
    assert_eq!(v["faults"], N as u64, "{v}");
    // The process's other majors: its binary and libraries read in.
    assert_eq!(p["faults"]["major"].as_u64(), Some(kernel_major), "{p}");
    let major = v["major"].as_u64().unwrap();
    assert!(major <= kernel_major, "{v}");
    if major == 0 {
        println!("no major faults: the scratch file is on a filesystem without a disk");
        return None;
    }
    assert!(major >= N as u64 / 2, "most reads went to the disk: {v}");
    assert!(
        v["latency_ns"]["samples"].as_u64().unwrap() >= major,
        "every major fault timed: {v}"
    );
    assert!(t.samples_fit(v, N as u64), "{v}");
    assert_eq!(t.summary()["counters"]["majors_untimed"], 0);
    Some((t, major))
}

/// A storm of minor faults on one mapping: counting at the entry, only the
/// entries near the end of each CPU's sample period read the clock, and the
/// sampled completions still find theirs timed; elsewhere every fault is.
#[test]
fn sampled_minor_faults_find_their_entry_timed() {
    let faults = 1u64 << 16;
    let t = trace_workload("anon-write", faults as usize, &[]);
    let v = t.vma(t.workload_pid());
    assert_eq!(v["faults"], faults, "{v}");
    let samples = v["latency_ns"]["samples"].as_u64().unwrap();
    let period = t.latency_sample_period();
    let untimed = t.summary()["counters"]["samples_untimed"].as_u64().unwrap();
    println!("{samples} of {faults} faults timed (period {period}), {untimed} samples untimed");
    if period == 1 {
        assert_eq!(samples, faults, "{v}");
        return;
    }
    // One in `period` per CPU, give or take the other processes' faults.
    assert!(samples >= faults / period / 2, "{v}");
    assert!(samples <= faults / period * 2, "{v}");
    assert!(
        untimed * 50 <= samples,
        "{untimed} of {samples} samples untimed"
    );
}

/// Shmem's pages, like anonymous memory's, fault major only when read back
/// from swap, and a file's whenever its page left the page cache: counting at
/// the entry, a storm on a shared anonymous mapping reads the clock at the
/// sampled entries only (where swap is off), one on a shared file at each.
#[test]
fn only_faults_that_can_be_major_read_the_clock_at_their_entry() {
    let pages = 1u64 << 14;
    let swap_on = std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1);
    for (scenario, may_be_major) in [("shared-anon", swap_on), ("file-shared-write", true)] {
        let t = trace_workload(scenario, pages as usize, &[]);
        // A file's large folios are mapped whole, by fewer faults than pages.
        let v = t.vma(t.workload_pid());
        let faults = v["faults"].as_u64().unwrap();
        if scenario == "shared-anon" {
            t.check(scenario, pages as usize);
        }
        assert!(faults > 0 && t.samples_fit(v, faults), "{v}");
        let c = &t.summary()["counters"];
        let timed = c["entries_timed"].as_u64().unwrap();
        let period = t.latency_sample_period();
        println!("{scenario}: {timed} entries timed for {faults} faults (period {period}, swap {swap_on})");
        if t.export[0]["backend"]["counted_at"] != "entry" {
            assert_eq!(timed, 0, "{c}");
        } else if may_be_major {
            assert!(timed >= faults, "{c}");
        } else {
            // The samples, and the process's own start (its lookups).
            assert!(timed <= faults / period * 2 + 2000, "{c}");
        }
    }
}

#[test]
fn shared_anonymous_is_shmem() {
    check("shared-anon");
}

#[test]
fn private_dev_zero_is_anonymous() {
    check("dev-zero-private");
}

#[test]
fn private_file_writes_copy_on_write() {
    check("file-private-write");
}

#[test]
fn shared_file_writes_are_do_shared_fault() {
    check("file-shared-write");
}

#[test]
fn fork_then_child_writes_copy_on_write() {
    check("fork-cow");
}

/// A part split off a written mapping keeps the anon_vma the writes made:
/// its later faults all come after it, and what made it is the fault's.
#[test]
fn a_split_off_part_keeps_its_anon_vma() {
    check("split-written");
}

/// A kernel object whose mmap handler installs every page: a row from the
/// mmap call, its setup and flags, and no fault.
#[test]
fn prefilled_mapping_is_a_row_without_faults() {
    check("bpf-map-mmap");
}

#[test]
fn kvm_vcpu_mapping_is_a_driver_fault() {
    let t = trace_workload("kvm-vcpu", 1, &[]);
    let pid = t.workload_pid();
    let pages = t.report["pages"].as_u64().unwrap();
    assert!(pages >= 1);
    assert_vma(
        &t,
        pid,
        "driver",
        Some("kvm_vcpu_fault"),
        pages,
        &[("do_read_fault", pages)],
    );
    // "anon_inode:kvm-vcpu:0" from /proc/PID/maps, or the dentry name read at fault
    // time when the process was gone before rmaptrace read its maps.
    assert!(t.vma(pid)["file"].as_str().unwrap().contains("kvm-vcpu"));
    // KVM's own mmap handler set it up, shared.
    let setup = &t.vma(pid)["setup"];
    assert_eq!(setup["by"], "kvm_vcpu_mmap", "{setup}");
    assert!(
        setup["vm_flags"]
            .as_array()
            .unwrap()
            .contains(&"VM_SHARED".into()),
        "{setup}"
    );
    assert_kernel_agrees(&t, pid, exec_gup_faults(&t));
}

#[test]
fn memfd_secret_faults_through_secretmem_fault() {
    check("memfd-secret");
}

/// MAP_POPULATE fills the pages with get_user_pages: seen by backends that
/// probe kernel functions, unseen (and said so) by the exception tracepoint.
#[test]
fn populated_pages_are_counted_or_stated_unseen() {
    let t = check("populate");
    if !observes_kernel_functions(&t) {
        let limits = t.summary()["limits"].as_array().unwrap();
        assert!(
            limits
                .iter()
                .any(|l| l.as_str().unwrap().contains("MAP_POPULATE")),
            "the blind spot is stated"
        );
    }
}

#[test]
fn mmap_records_carry_flags_and_paths() {
    let t = trace_workload("file-shared-write", 8, &[]);
    let pid = t.workload_pid();
    let addr = t.report["addr"].as_str().unwrap();
    let rec = t
        .export
        .iter()
        .find(|l| l["type"] == "mmap" && l["pid"] == pid && l["addr"] == addr)
        .expect("the workload's mmap is exported");
    assert_eq!(rec["op"], "mmap");
    assert_eq!(rec["len"], 8 * 4096);
    assert_eq!(rec["prot"], "rw-");
    assert_eq!(rec["flags"], serde_json::json!(["MAP_SHARED"]));
    let file = t.report["file"].as_str().unwrap();
    assert!(rec["path"].as_str().unwrap().starts_with(file), "{rec}");
    assert!(t.vma(pid)["origin"]
        .as_str()
        .unwrap()
        .contains("MAP_SHARED"));
}

/// A fault storm through a ring a quarter of its size: fault records wake
/// rmaptrace only once an eighth of the ring is unread, and are read on a
/// timer otherwise; every counted fault is a line or a counted loss.
#[test]
fn fault_events_of_a_storm_are_all_accounted_for() {
    let pages = 1 << 17;
    let t = trace_workload("anon-write", pages, &["--events"]);
    let pid = t.workload_pid();
    let lines = t
        .export
        .iter()
        .filter(|l| l["type"] == "fault" && l["pid"] == pid)
        .count() as u64;
    let total = t.process(pid)["faults"]["total"].as_u64().unwrap();
    let lost = t.summary()["events_lost"].as_u64().unwrap();
    assert!(total >= pages as u64, "{total} faults");
    // Lost records of other kinds count in `events_lost` too.
    assert!(
        lines <= total && total <= lines + lost,
        "{total} faults, {lines} lines, {lost} lost"
    );
    assert!(lost * 100 <= total, "{lost} of {total} fault records lost");
}

/// One record per counted fault, and a latency on exactly the faults the
/// aggregate timed: each one where every fault is timed, the sampled ones
/// where the backend counts at the entry.
#[test]
fn fault_events_match_the_aggregate() {
    let t = trace_workload("anon-write", 64, &["--events"]);
    let pid = t.workload_pid();
    let addr = t.report["addr"].as_str().unwrap();
    let events: Vec<_> = t
        .export
        .iter()
        .filter(|l| l["type"] == "fault" && l["pid"] == pid && l["vma_start"] == addr)
        .collect();
    assert_eq!(t.summary()["events_lost"], 0);
    assert_eq!(events.len(), 64);
    for e in &events {
        assert_eq!(e["kind"], "anon");
        assert_eq!(e["path"], "do_anonymous_page");
        assert_eq!(e["write"], true);
        assert_eq!(e["major"], false);
        assert_ne!(e["latency_ns"], 0, "{e}");
    }
    let timed = events.iter().filter(|e| e["latency_ns"].is_u64()).count() as u64;
    let row = t.vma(pid);
    assert!(t.samples_fit(row, 64), "{row}");
    assert_eq!(Some(timed), row["latency_ns"]["samples"].as_u64(), "{row}");
    let all_faults = t
        .export
        .iter()
        .filter(|l| l["type"] == "fault" && l["pid"] == pid)
        .count() as u64;
    assert_eq!(
        all_faults,
        t.process(pid)["faults"]["total"].as_u64().unwrap(),
        "one event per counted fault"
    );
}
