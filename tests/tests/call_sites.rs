//! `--stacks`, `--folded`, `--flamegraph`: a C program whose functions each
//! fault one kind of mapping a known number of times (tests/programs/
//! callsites.c). Each function must sit right above its own mapping, with
//! exactly that count, in the folded stacks and in the export's rows; a
//! stripped copy shows module+offset frames; a program that exits before the
//! trace ends is still named.
use rmaptrace_tests::{
    bin, build_program, find_process, read_export, report_of, require_root, run_tool, temp_json,
    work_dir,
};
use serde_json::Value;
use std::{path::PathBuf, process::Command};

/// Builds the program with frame pointers (and a stripped copy), once for
/// all the tests (they run in parallel).
fn build() -> (PathBuf, PathBuf) {
    static BUILT: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let hint =
                "the call sites test builds a C program: run `cargo xtask deps` (gcc, binutils)";
            let exe = build_program(
                "callsites.c",
                "callsites",
                &["-O0", "-g", "-fno-omit-frame-pointer"],
                hint,
            );
            let stripped = work_dir().join("callsites-stripped");
            run_tool(
                Command::new("strip").arg("-o").arg(&stripped).arg(&exe),
                hint,
            );
            (exe, stripped)
        })
        .clone()
}

/// Seconds the program lives on after its faults: rmaptrace notes what a
/// process maps while it runs (at exec, at each executable mmap, at the
/// first read of its stacks, every 500 ms), and a program that exits within
/// a few milliseconds may be gone before any of those (its frames are then
/// addresses, as README says).
const LIVE: &str = "1";

fn fresh(name: &str) -> PathBuf {
    let p = temp_json(name).with_extension("");
    let _ = std::fs::remove_file(&p);
    p
}

struct Run {
    report: Value,
    export: Vec<Value>,
    /// (frames root first, with the process name first and the mapping
    /// last, count)
    folded: Vec<(Vec<String>, u64)>,
    svg: String,
}

/// Traces `cmd` (the program's report on its stdout) with --folded and
/// --flamegraph.
fn trace(cmd: &[&std::ffi::OsStr], extra: &[&str]) -> Run {
    require_root();
    let (json, folded, svg) = (temp_json("callsites"), fresh("folded"), fresh("svg"));
    let out = Command::new(bin())
        .args(["--no-tui", "--json"])
        .arg(&json)
        .arg("--folded")
        .arg(&folded)
        .arg("--flamegraph")
        .arg(&svg)
        .args(extra)
        .arg("--")
        .args(cmd)
        .output()
        .unwrap();
    let report = report_of(&out, "rmaptrace --folded -- callsites");
    let folded = std::fs::read_to_string(&folded)
        .unwrap()
        .lines()
        .map(|l| {
            let (stack, n) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no count: {l}"));
            let frames = stack.split(';').map(str::to_string).collect();
            (frames, n.parse().unwrap_or_else(|e| panic!("{e}: {l}")))
        })
        .collect();
    Run {
        report,
        export: read_export(&json),
        folded,
        svg: std::fs::read_to_string(&svg).unwrap(),
    }
}

fn addr(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// The export's row of the mapping at `start` in the program's process.
fn row(r: &Run, start: u64) -> &Value {
    let p = r
        .export
        .iter()
        .rev()
        .find(|l| {
            l["type"] == "process"
                && l["comm"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("callsites"))
        })
        .unwrap_or_else(|| panic!("no callsites process: {:?}", r.export));
    p["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["start"].is_string() && addr(&v["start"]) == start)
        .unwrap_or_else(|| panic!("no row at {start:#x}: {p}"))
}

/// What a folded line ends with for the faults of `row`: its kind, handler
/// and kernel path, as this kernel and backend name them.
fn mapping_label(row: &Value) -> String {
    let paths = row["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 1, "one kernel path: {row}");
    let path = paths.keys().next().unwrap();
    match row["handler"].as_str() {
        Some(h) => format!("[{} {h} {path}]", row["kind"].as_str().unwrap()),
        None => format!("[{} {path}]", row["kind"].as_str().unwrap()),
    }
}

/// The faults of the folded lines whose leaf frames are `leaf` (callee
/// last) right above `mapping`.
fn folded_count(r: &Run, leaf: &[&str], mapping: &str) -> u64 {
    r.folded
        .iter()
        .filter(|(frames, _)| {
            frames.last().map(String::as_str) == Some(mapping)
                && frames.len() > leaf.len()
                && frames[frames.len() - 1 - leaf.len()..frames.len() - 1] == *leaf
        })
        .map(|(_, n)| n)
        .sum()
}

/// The three mappings, their function and page count.
fn cases(r: &Run) -> [(u64, &'static str, u64); 3] {
    let n = |k: &str| r.report[k].as_u64().unwrap();
    [
        (addr(&r.report["anon"]), "touch_anon", n("anon_pages")),
        (addr(&r.report["shared"]), "touch_shared", n("shared_pages")),
        (addr(&r.report["file"]), "write_file_copy", n("file_pages")),
    ]
}

#[test]
fn each_function_is_above_its_own_mapping_with_its_exact_count() {
    let (exe, _) = build();
    let data = fresh("callsites-data");
    let r = trace(&[exe.as_os_str(), data.as_os_str(), LIVE.as_ref()], &[]);
    for (start, function, pages) in cases(&r) {
        let row = row(&r, start);
        assert_eq!(row["faults"], pages, "{row}");
        let label = mapping_label(row);
        assert_eq!(
            folded_count(&r, &["main", function], &label),
            pages,
            "{function} above {label}: {:#?}",
            r.folded
        );
        // The export's row names the same call site, leaf first.
        let stacks = row["stacks"].as_array().unwrap_or_else(|| panic!("{row}"));
        let site = stacks
            .iter()
            .find(|s| s["frames"][0] == function)
            .unwrap_or_else(|| panic!("{function} in {row}"));
        assert_eq!(site["frames"][1], "main", "{site}");
        assert_eq!(site["count"], pages, "{site}");
        assert_eq!(
            stacks
                .iter()
                .map(|s| s["count"].as_u64().unwrap())
                .sum::<u64>(),
            pages,
            "every fault of the row has its stack: {row}"
        );
        assert!(r.svg.contains(function), "the flame graph names {function}");
    }
    assert!(
        r.svg.starts_with("<?xml"),
        "{}",
        &r.svg[..r.svg.len().min(200)]
    );
    let counters = &r.export.last().unwrap()["counters"];
    assert_eq!(counters["stack_rows_full"], 0, "{counters}");
}

#[test]
fn a_stripped_binary_shows_module_and_offset_frames() {
    let (_, stripped) = build();
    let data = fresh("callsites-data");
    let r = trace(
        &[stripped.as_os_str(), data.as_os_str(), LIVE.as_ref()],
        &[],
    );
    for (start, function, pages) in cases(&r) {
        let label = mapping_label(row(&r, start));
        let lines: Vec<&(Vec<String>, u64)> = r
            .folded
            .iter()
            .filter(|(f, n)| f.last() == Some(&label) && *n == pages)
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{function}'s line ({label} {pages}): {:#?}",
            r.folded
        );
        let frames = &lines[0].0;
        let leaf = &frames[frames.len() - 2];
        assert!(
            leaf.starts_with("callsites-stripped+0x") && !r.svg.contains(function),
            "no symbol, so module+offset: {leaf}"
        );
    }
}

#[test]
fn a_program_that_exits_before_the_trace_ends_is_still_named() {
    let (exe, _) = build();
    let data = fresh("callsites-data");
    // It exits while the shell sleeps on; its stacks are named at the end.
    let script = format!("{} {} {LIVE}; sleep 1", exe.display(), data.display());
    let r = trace(
        &["sh".as_ref(), "-c".as_ref(), script.as_ref()],
        &["--stack-depth", "32"],
    );
    let p = find_process(&r.export, &r.report["pid"]).expect("callsites traced");
    assert_eq!(p["exited"], true, "{p}");
    for (start, function, pages) in cases(&r) {
        let label = mapping_label(row(&r, start));
        assert_eq!(
            folded_count(&r, &["main", function], &label),
            pages,
            "{:#?}",
            r.folded
        );
    }
}

#[test]
fn a_process_attached_by_pid_that_exits_at_once_is_still_named() {
    require_root();
    use std::io::{BufRead, BufReader, Write};
    let (exe, _) = build();
    let data = fresh("callsites-data");
    let mut program = Command::new(&exe)
        .arg(&data)
        .env("CALLSITES_WAIT", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(program.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let (json, folded) = (temp_json("callsites-pid"), fresh("folded"));
    let tracer = Command::new(bin())
        .args(["--no-tui", "--pid", &program.id().to_string(), "--json"])
        .arg(&json)
        .arg("--folded")
        .arg(&folded)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    rmaptrace_tests::wait_for_header(&json);
    // It faults and exits at once: its mappings were noted when it was
    // attached, not at a later read of its stacks.
    program.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let report: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(program.wait().unwrap().success());
    let out = tracer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&folded).unwrap();
    for (function, pages) in [
        ("touch_anon", "anon_pages"),
        ("touch_shared", "shared_pages"),
        ("write_file_copy", "file_pages"),
    ] {
        let count: u64 = text
            .lines()
            .filter(|l| l.contains(&format!(";main;{function};[")))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert_eq!(count, report[pages].as_u64().unwrap(), "{function}: {text}");
    }
}
