//! `rmaptrace report FILE`: the export of a real trace, read back, prints the
//! table the trace printed at its end, byte for byte; its filters count what
//! the export's own records say.
use rmaptrace_tests::{bin, processes, read_export, require_root, temp_json};
use std::{
    ffi::OsStr,
    path::PathBuf,
    process::{Command, Output},
};

/// The end-of-trace table in what `rmaptrace --no-tui -- CMD` wrote to stderr:
/// from its first line (`rmaptrace: 1.23s, …`) to the end.
fn table_in(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let first = text
        .match_indices("rmaptrace: ")
        .map(|(i, _)| i)
        .filter(|&i| i == 0 || text.as_bytes()[i - 1] == b'\n')
        .find(|&i| {
            let rest = &text[i + "rmaptrace: ".len()..];
            rest.split_once("s, ")
                .is_some_and(|(secs, _)| secs.parse::<f64>().is_ok())
        })
        .unwrap_or_else(|| panic!("no table in stderr:\n{text}"));
    text[first..].to_string()
}

/// Runs `rmaptrace --no-tui --json F -- CMD…`: the export's path and the
/// table printed at the end.
fn trace(name: &str, cmd: &[&OsStr]) -> (PathBuf, String) {
    trace_with(name, &[], cmd)
}

/// [`trace`] with more options for rmaptrace.
fn trace_with(name: &str, extra: &[&str], cmd: &[&OsStr]) -> (PathBuf, String) {
    require_root();
    let json = temp_json(name);
    let out = Command::new(bin())
        .args(["--no-tui", "--json"])
        .arg(&json)
        .args(extra)
        .arg("--")
        .args(cmd)
        .output()
        .expect("running rmaptrace");
    assert!(
        out.status.success(),
        "rmaptrace failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (json, table_in(&out.stderr))
}

/// Two workloads one after the other under a shell: three processes.
fn trace_two_workloads(name: &str) -> (PathBuf, String) {
    let script = "\"$0\" workload anon-write --pages 64 >/dev/null && \
                  \"$0\" workload file-private-write --pages 32 >/dev/null";
    let bin = bin();
    trace(
        name,
        &[
            "sh".as_ref(),
            "-c".as_ref(),
            script.as_ref(),
            bin.as_os_str(),
        ],
    )
}

fn report(args: &[&OsStr]) -> Output {
    Command::new(bin())
        .arg("report")
        .args(args)
        .output()
        .expect("running rmaptrace report")
}

/// `rmaptrace report ARGS`, which must succeed: its stdout.
fn report_ok(args: &[&OsStr]) -> String {
    let out = report(args);
    assert!(
        out.status.success(),
        "report {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the table is UTF-8")
}

/// `rmaptrace report JSON`, which must print `printed`, byte for byte.
fn reported_as_printed(json: &std::path::Path, printed: &str) -> String {
    let reported = report_ok(&[json.as_os_str()]);
    assert_eq!(reported, printed, "the same table, byte for byte");
    reported
}

#[test]
fn the_report_of_an_export_is_the_table_its_trace_printed() {
    let bin = bin();
    let (json, printed) = trace(
        "report-anon",
        &[
            bin.as_os_str(),
            "workload".as_ref(),
            "anon-write".as_ref(),
            "--pages".as_ref(),
            "256".as_ref(),
        ],
    );
    let reported = reported_as_printed(&json, &printed);
    assert!(reported.contains("do_anonymous_page"), "{reported}");

    // On another machine: no root, no capabilities, no BTF.
    let copy = json.with_extension("copy.ndjson");
    std::fs::copy(&json, &copy).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("report")
        .arg(&copy)
        .env("RMAPTRACE_BTF", "/nonexistent/vmlinux")
        .output()
        .expect("setpriv (util-linux)");
    assert!(
        out.status.success(),
        "report as nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), printed);
}

#[test]
fn the_report_of_several_processes_is_the_table_their_trace_printed() {
    let (json, printed) = trace_two_workloads("report-two");
    let export = read_export(&json);
    assert!(processes(&export).len() >= 3, "sh and two workloads");
    let reported = reported_as_printed(&json, &printed);
    assert!(reported.contains("3 process(es) (3 exited)"), "{reported}");
}

/// More processes than the table lists (the last line counts the rest), and
/// the call sites line of `--stacks`.
#[test]
fn the_report_of_a_fork_storm_with_stacks_is_the_table_its_trace_printed() {
    let bin = bin();
    let (json, printed) = trace_with(
        "report-storm",
        &["--stacks"],
        &[
            bin.as_os_str(),
            "workload".as_ref(),
            "fork-storm".as_ref(),
            "--pages".as_ref(),
            "40".as_ref(),
        ],
    );
    let reported = reported_as_printed(&json, &printed);
    assert!(
        reported.contains("\n... 21 more process(es) with "),
        "{reported}"
    );
    assert!(reported.contains("\ncall sites: "), "{reported}");
}

#[test]
fn filters_count_what_the_export_records() {
    let (json, _) = trace_two_workloads("report-filters");
    let export = read_export(&json);
    // The busiest process with anonymous faults, and its anonymous count.
    let p = processes(&export)
        .into_iter()
        .filter(|p| p["by_kind"]["anon"].as_u64().unwrap_or(0) > 0)
        .max_by_key(|p| p["faults"]["total"].as_u64())
        .expect("a process with anonymous faults");
    let pid = p["pid"].as_u64().unwrap().to_string();
    let anon = p["by_kind"]["anon"].as_u64().unwrap();
    let total = p["faults"]["total"].as_u64().unwrap();
    let anon_rows = p["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == "anon")
        .count();

    let by_pid = report_ok(&[json.as_os_str(), "--pid".as_ref(), pid.as_ref()]);
    let first = by_pid.lines().next().unwrap();
    assert!(
        first.contains(&format!(", 1 process(es) (1 exited), {total} faults,")),
        "{by_pid}"
    );
    assert!(
        first.ends_with(&format!("; filtered: --pid {pid}")),
        "{first}"
    );

    let anon_only = report_ok(&[
        json.as_os_str(),
        "--pid".as_ref(),
        pid.as_ref(),
        "--kind".as_ref(),
        "anon".as_ref(),
    ]);
    let first = anon_only.lines().next().unwrap();
    assert!(
        first.contains(&format!(", 1 process(es) (1 exited), {anon} faults,")),
        "{anon_only}"
    );
    assert!(
        first.ends_with(&format!("; filtered: --pid {pid} --kind anon")),
        "{first}"
    );
    assert!(
        anon_only.contains(&format!("by kind: anon {anon}\n")),
        "{anon_only}"
    );
    let rows = anon_only.lines().filter(|l| l.contains(" anon  ")).count();
    assert_eq!(rows, anon_rows.min(20), "{anon_only}");
    assert!(!anon_only.contains(" file  "), "{anon_only}");

    // Every process with a file mapping, no more.
    let with_file = processes(&export)
        .iter()
        .filter(|p| p["by_kind"]["file"].as_u64().unwrap_or(0) > 0)
        .count();
    let files = report_ok(&[json.as_os_str(), "--kind".as_ref(), "file".as_ref()]);
    assert!(
        files.contains(&format!(", {with_file} process(es) ")),
        "{files}"
    );
}

#[test]
fn report_tui_without_a_terminal_fails_with_one_line() {
    // Checked before the file is read: no trace is needed.
    let out = report(&["--tui".as_ref(), "/nonexistent.ndjson".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "rmaptrace: report --tui needs a terminal: drop --tui to print the table\n"
    );
}

#[test]
fn bad_input_gets_one_line_naming_the_fix() {
    let dir = temp_json("bad").parent().unwrap().to_path_buf();
    let not_export = dir.join("not-an-export.ndjson");
    std::fs::write(&not_export, "{\"hello\":1}\n").unwrap();
    let malformed = dir.join("malformed.ndjson");
    std::fs::write(
        &malformed,
        "{\"type\":\"header\",\"format\":2}\n{\"type\":\"process\",\n",
    )
    .unwrap();
    for (path, want) in [
        (dir.join("missing.ndjson"), "cannot read "),
        (not_export, "is not an rmaptrace export"),
        (malformed, "malformed.ndjson:2: not a valid export record"),
    ] {
        let out = report(&[path.as_os_str()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(want), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
