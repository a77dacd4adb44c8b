//! Traces that outlive their command or their processes: daemons followed to
//! their end, pids reused by unrelated processes, every process exported once.
use rmaptrace_tests::{
    bin, find_process, processes, read_export, require_root, temp_json, wait_for_header,
};
use serde_json::Value;
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

fn read_report(path: &std::path::Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(text.lines().next()?).ok()
}

fn wait_for_report(path: &std::path::Path) -> Value {
    let start = Instant::now();
    loop {
        if let Some(r) = read_report(path) {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no report in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The row of `p` that starts at the report's address.
fn row<'a>(p: &'a Value, report: &Value) -> &'a Value {
    p["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["start"] == report["addr"])
        .unwrap_or_else(|| panic!("no row at {} in {p}", report["addr"]))
}

/// `rmaptrace --no-tui --json EXPORT -- sh -c SCRIPT`, `{w}` in SCRIPT being a
/// workload that faults `pages` pages and writes its report to REPORT; returns
/// the command, EXPORT and REPORT.
fn traced_shell(name: &str, script: &str, pages: u64) -> (Command, PathBuf, PathBuf) {
    let json = temp_json(name);
    let report = json.with_extension("report");
    let w = format!(
        "{} workload anon-write --pages {pages} > {}",
        bin().display(),
        report.display()
    );
    let mut cmd = Command::new(bin());
    cmd.args(["--no-tui", "--json"]).arg(&json).args([
        "--",
        "sh",
        "-c",
        &script
            .replace("{w}", &w)
            .replace("{report}", &report.display().to_string()),
    ]);
    (cmd, json, report)
}

fn gone(pid: u64) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_daemon_is_followed_until_it_exits() {
    require_root();
    // The command returns at once; its grandchild, in a session of its own and
    // reparented to init, maps and faults a second later.
    let (mut cmd, json, report) = traced_shell(
        "daemon",
        "(setsid sh -c 'sleep 1; exec {w}' &); exit 0",
        300,
    );
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = read_report(&report).expect("the daemon ran to its end before rmaptrace did");
    assert!(elapsed >= Duration::from_secs(1), "waited: {elapsed:?}");
    let export = read_export(&json);
    let summary = export.last().unwrap();
    assert_eq!(summary["end_reason"], "all traced processes exited");
    let p = find_process(&export, &r["pid"]).expect("the daemon has its record");
    assert_eq!(p["exited"], true, "{p}");
    assert_eq!(row(p, &r)["faults"], 300, "{p}");
    let text = String::from_utf8_lossy(&out.stderr);
    let first = text.lines().next().unwrap_or("");
    assert!(
        first.contains("ended: all traced processes exited") && first.contains("tables full: none"),
        "the table's first line says why it ended and what was full: {text}"
    );
}

#[test]
fn an_unreaped_child_is_reported_exited() {
    require_root();
    // The shell execs sleep, which never reaps the workload: it stays a zombie
    // until sleep ends.
    let (mut cmd, json, report) = traced_shell("zombie", "{w} & exec sleep 2", 64);
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    let r = read_report(&report).unwrap();
    let export = read_export(&json);
    let p = find_process(&export, &r["pid"]).unwrap();
    assert_eq!(p["exited"], true, "{p}");
    assert_eq!(row(p, &r)["faults"], 64);
}

/// Starts `rmaptrace workload anon-write --pages N` (not traced by anyone) with
/// pid `pid`, by setting the kernel's last allocated pid just below it; other
/// processes may take it first, so this tries again a while.
fn spawn_with_pid(pid: u64, pages: u64) -> Option<Child> {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let child = Command::new(bin())
            .args(["workload", "anon-write", "--pages", &pages.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        if child.id() as u64 == pid {
            return Some(child);
        }
        let mut c = child;
        let _ = c.kill();
        let _ = c.wait();
    }
    None
}

/// Runs a traced workload, then, once it exited, an unrelated process with its
/// pid; returns the two reports.
fn reuse_a_pid(first: &std::path::Path) -> (Value, Value) {
    let r1 = wait_for_report(first);
    let pid = r1["pid"].as_u64().unwrap();
    while !gone(pid) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let child = spawn_with_pid(pid, 3000).expect("the pid was taken by others 200 times");
    let out = child.wait_with_output().unwrap();
    let r2: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r2["pid"], r1["pid"]);
    (r1, r2)
}

/// The `process` records of `pid`, which must be `want` processes.
fn records_of<'a>(export: &'a [Value], pid: &Value, want: usize) -> Vec<&'a Value> {
    let records: Vec<&Value> = processes(export)
        .into_iter()
        .filter(|p| &p["pid"] == pid)
        .collect();
    let totals: Vec<&Value> = records.iter().map(|p| &p["faults"]).collect();
    assert_eq!(records.len(), want, "processes with pid {pid}: {totals:?}");
    records
}

#[test]
fn a_reused_pid_never_joins_a_command_trace() {
    require_root();
    let (mut cmd, json, report) = traced_shell("reuse-cmd", "{w}; sleep 3", 64);
    let tracer = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (r1, _) = reuse_a_pid(&report);
    assert!(tracer.wait_with_output().unwrap().status.success());
    let export = read_export(&json);
    let p = records_of(&export, &r1["pid"], 1)[0];
    assert_eq!(row(p, &r1)["faults"], 64);
    assert!(
        p["faults"]["total"].as_u64().unwrap() < 1000,
        "the unrelated process's 3000 faults are not counted: {p}"
    );
}

/// The other way round: a pid first used by a process outside the trace, then
/// by a child of the traced command. The programs remember processes they
/// found untraced; a process entering the traced set must make them forget.
#[test]
fn a_pid_used_outside_the_trace_is_counted_when_reused_inside() {
    require_root();
    let go = temp_json("reuse-into-go");
    // Inside the trace, once the process outside it is gone: the workload again
    // until it gets that pid (written into the go file).
    let script = format!(
        "while [ ! -s {go} ]; do sleep 0.01; done; pid=$(cat {go}); \
         for i in $(seq 200); do echo $((pid - 1)) > /proc/sys/kernel/ns_last_pid; {{w}}; \
         grep -q \"\\\"pid\\\":$pid[,}}]\" {{report}} && break; done",
        go = go.display(),
    );
    let (mut cmd, json, report) = traced_shell("reuse-into", &script, 64);
    let tracer = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_header(&json);
    // A pid ahead of the latest, free now: chosen once the tracer has
    // started, so that none of its threads holds it.
    let last: u64 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = (last + 300..).find(|&p| gone(p)).unwrap();
    let outside = spawn_with_pid(pid, 3000).expect("the pid was taken by others 200 times");
    assert!(outside.wait_with_output().unwrap().status.success());
    std::fs::write(&go, pid.to_string()).unwrap();
    assert!(tracer.wait_with_output().unwrap().status.success());
    let _ = std::fs::remove_file(&go);
    let r = read_report(&report).unwrap();
    assert_eq!(r["pid"], pid, "the traced workload never got the pid");
    let export = read_export(&json);
    let p = records_of(&export, &r["pid"], 1)[0];
    assert_eq!(row(p, &r)["faults"], 64, "{p}");
    assert!(
        p["faults"]["total"].as_u64().unwrap() < 1000,
        "the process outside the trace's 3000 faults are not counted: {p}"
    );
}

#[test]
fn a_reused_pid_is_a_new_process_system_wide() {
    require_root();
    let json = temp_json("reuse-all");
    let tracer = Command::new(bin())
        .args(["--no-tui", "--duration", "4", "--json"])
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_header(&json);
    let report = json.with_extension("report");
    let status = Command::new("sh")
        .args([
            "-c",
            &format!(
                "exec {} workload anon-write --pages 64 > {}",
                bin().display(),
                report.display()
            ),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let (r1, r2) = reuse_a_pid(&report);
    assert!(tracer.wait_with_output().unwrap().status.success());
    let export = read_export(&json);
    let records = records_of(&export, &r1["pid"], 2);
    let first = records
        .iter()
        .find(|p| p["faults"]["total"].as_u64().unwrap() < 1000)
        .expect("the first process on its own");
    let second = records
        .iter()
        .find(|p| p["faults"]["total"].as_u64().unwrap() >= 3000)
        .expect("the second process on its own");
    assert_eq!(row(first, &r1)["faults"], 64, "{first}");
    assert_eq!(row(second, &r2)["faults"], 3000, "{second}");
    for p in [first, second] {
        assert_eq!(p["exited"], true, "{p}");
        let unseen = p["unseen"].as_i64().unwrap();
        assert!(
            (0..=2).contains(&unseen),
            "kernel counts of one process: {p}"
        );
    }
}

/// A trace that falls behind (here: rmaptrace stopped for 3 s while a shell
/// starts hundreds of processes a second, as an overloaded machine would stall
/// it) loses events, exits among them. The processes whose exit it never saw
/// are found afterwards and their rows freed, so the tables do not fill for
/// the rest of the trace.
#[test]
fn rows_of_processes_whose_exit_was_lost_are_freed() {
    require_root();
    let json = temp_json("stalled");
    let log = json.with_extension("log");
    let mut tracer = Command::new(bin())
        .env("RUST_LOG", "rmaptrace=debug")
        .args(["--no-tui", "--ring-mib", "1", "--json"])
        .arg(&json)
        .args(["--", "sh", "-c", "while :; do /bin/true; done"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_header(&json);
    std::thread::sleep(Duration::from_secs(1));
    let pid = tracer.id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(3));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    std::thread::sleep(Duration::from_secs(4));
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(tracer.wait().unwrap().code().is_some());

    let summary = read_export(&json).pop().unwrap();
    assert!(
        summary["events_lost"].as_u64().unwrap() > 0,
        "no events lost: the stall was too short"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    let found: u64 = log
        .lines()
        .filter_map(|l| l.split("events were lost: ").nth(1))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(found >= 10, "processes found exited unseen: {found}\n{log}");
    // The fault rows the kernel tables hold at each tick: after the stall,
    // those of the processes that ran during it (about seven ticks' worth);
    // then, their exits found, only those of the latest tick's processes
    // again. Without the search the stalled processes' rows stay for good.
    let rows: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("tick: read ").nth(1))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let peak = rows.iter().max().copied().unwrap_or(0);
    let last = &rows[rows.len().saturating_sub(3)..];
    assert!(
        last.iter().all(|&n| n * 3 <= peak),
        "rows of processes whose exit was lost are still held: peak {peak}, last ticks {last:?}"
    );
}

/// A server's buffer churn: 40,000 cycles at one address, each mapping 4
/// pages, splitting them (mprotect) and mapping them away, 80,000 lifetimes
/// in all, traced with a lifetime table of 16,384. Lifetimes that ended in the
/// running process are collected as it runs: no table fills, no fault is
/// `unknown`, every mapping is written once (in `mappings` records, the rest
/// in the process record), and the counts stay the kernel's.
#[test]
fn mapping_churn_in_a_running_process_never_fills_the_tables() {
    let cycles = 40_000u64;
    let t = rmaptrace_tests::trace_workload_with(
        "mmap-churn",
        cycles as usize,
        &[],
        &[("RMAPTRACE_VMA_ENTRIES", "16384")],
    );
    let summary = t.summary();
    assert_eq!(summary["tables_full"], serde_json::json!({}), "{summary}");
    assert_eq!(summary["events_lost"], 0, "{summary}");
    let pid = t.workload_pid();
    let p = t.process(pid);
    assert!(p["by_kind"].get("unknown").is_none(), "{}", p["by_kind"]);
    let unseen = rmaptrace_tests::expect::exec_unseen(summary);
    assert_eq!(
        p["unseen"], unseen,
        "faults lost or doubled: {}",
        p["faults"]
    );

    let collected = collected_while_running(&t.export, pid);
    assert!(!collected.is_empty(), "nothing was collected while it ran");
    assert_eq!(p["vmas_ended"], collected.len() as u64);
    let all: Vec<&Value> = collected
        .iter()
        .copied()
        .chain(p["vmas"].as_array().unwrap())
        .collect();
    let mut lives: Vec<u64> = all.iter().map(|v| v["life"].as_u64().unwrap()).collect();
    lives.sort_unstable();
    lives.dedup();
    assert_eq!(lives.len(), all.len(), "a mapping was written twice");
    let faults = |vs: &[&Value]| {
        vs.iter()
            .map(|v| v["faults"].as_u64().unwrap())
            .sum::<u64>()
    };
    // Every fault is in one row, but those counted on a lifetime after it was
    // written (`ended_late`, see below).
    let late = p["ended_late"].as_u64().unwrap();
    assert_eq!(faults(&all) + late, p["faults"]["total"].as_u64().unwrap());

    let addr = u64::from_str_radix(
        t.report["addr"].as_str().unwrap().trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let churned: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|v| {
            let start =
                u64::from_str_radix(v["start"].as_str().unwrap().trim_start_matches("0x"), 16)
                    .unwrap();
            (addr..addr + 4 * 4096).contains(&start)
        })
        .collect();
    assert_eq!(faults(&churned) + late, 3 * cycles);
    assert!(churned.iter().all(|v| v["kind"] == "anon"));
    // Two lifetimes a cycle, each its own row, unless the plan says freed VMA
    // structs are not seen: a split part may then get a freed one's pointer
    // and shape and continue its row (then `ended_late` holds those faults).
    let rows = churned.len() as u64;
    if freed_vma_structs_unseen(summary) {
        assert!(rows <= 2 * cycles, "{rows} lifetimes for {cycles} cycles");
    } else {
        assert_eq!(rows, 2 * cycles);
        assert_eq!(late, 0);
    }
}

/// Large buffers churned at one address, each written whole, while the
/// trace runs: a buffer's row counts its faults through a fast slot once it
/// is hot, and the slots freed with the rows of buffers gone are taken again
/// by later ones (each CPU here numbers four of its own; the process's own
/// start, its text read in, can hold some for good), zeroed first: every
/// buffer is a row of its 32 faults, no more, and the process's count is the
/// kernel's.
#[test]
fn fast_slots_freed_with_their_rows_are_taken_again_zeroed() {
    let cycles = 600u64;
    let t = rmaptrace_tests::trace_workload_with(
        "buffer-churn",
        cycles as usize,
        &[],
        // Ended mappings are collected (their rows and slots freed) once an
        // eighth of the lifetime table's worth ended: a few times here.
        &[
            ("RMAPTRACE_FAST_SLOTS_PER_CPU", "4"),
            ("RMAPTRACE_VMA_ENTRIES", "1024"),
        ],
    );
    let summary = t.summary();
    let pid = t.workload_pid();
    let p = t.process(pid);
    assert_eq!(
        p["unseen"],
        rmaptrace_tests::expect::exec_unseen(summary),
        "faults lost or doubled: {}",
        p["faults"]
    );
    let addr = u64::from_str_radix(
        t.report["addr"].as_str().unwrap().trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let buffers: Vec<&Value> = collected_while_running(&t.export, pid)
        .into_iter()
        .chain(p["vmas"].as_array().unwrap())
        .filter(|v| v["start"] == format!("{addr:#x}") && v["faults"].as_u64() > Some(0))
        .collect();
    let faults: u64 = buffers.iter().map(|v| v["faults"].as_u64().unwrap()).sum();
    let late = p["ended_late"].as_u64().unwrap();
    assert_eq!(faults + late, 32 * cycles, "{} rows", buffers.len());
    if !freed_vma_structs_unseen(summary) {
        assert_eq!(buffers.len() as u64, cycles);
        let odd: Vec<&&Value> = buffers.iter().filter(|v| v["faults"] != 32).collect();
        assert!(odd.is_empty(), "rows of other than 32 faults: {odd:?}");
    }
    let c = &summary["counters"];
    println!("{c}");
    if t.export[0]["backend"]["counted_at"] == "entry" {
        assert!(c["fast_slots_full"].as_u64().unwrap() > 0, "{c}");
        assert!(c["fast_slots_reused"].as_u64().unwrap() > 0, "{c}");
    }
}

/// The mappings of `pid` that ended while it ran, as collected then
/// (`mappings` records).
fn collected_while_running(export: &[Value], pid: u64) -> Vec<&Value> {
    export
        .iter()
        .filter(|l| l["type"] == "mappings" && l["pid"] == pid)
        .flat_map(|l| l["vmas"].as_array().unwrap())
        .collect()
}

/// Whether the plan says freed VMA structs are not seen: a mapping made
/// where one was freed, of its shape, may then continue its row.
fn freed_vma_structs_unseen(summary: &Value) -> bool {
    summary["limits"].as_array().unwrap().iter().any(|l| {
        l.as_str()
            .unwrap()
            .starts_with("freed VMA structs are not seen")
    })
}
