//! Bad input gets one line naming the fix and a non-zero exit, before anything is
//! attached; every way out leaves a complete, valid export.
use rmaptrace_tests::{
    bin, processes, read_export, require_root, rmaptrace, temp_json, wait_for_header,
};
use std::process::{Command, Stdio};

fn one_line_error(out: &std::process::Output, needle: &str) {
    assert!(!out.status.success(), "must fail: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(lines[0].starts_with("rmaptrace: "), "{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in: {stderr}");
}

#[test]
fn version_and_help() {
    let v = rmaptrace(&["--version"]);
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("rmaptrace "));
    let h = rmaptrace(&["--help"]);
    assert!(h.status.success());
    let help = String::from_utf8_lossy(&h.stdout);
    for flag in [
        "--pid",
        "--comm",
        "--json",
        "--events",
        "--duration",
        "--no-tui",
        "--stacks",
        "--folded",
        "--flamegraph",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn unknown_pid() {
    require_root();
    one_line_error(
        &rmaptrace(&["--no-tui", "--pid", "999999999"]),
        "no running process with pid 999999999",
    );
}

#[test]
fn missing_command() {
    require_root();
    let out = rmaptrace(&["--no-tui", "--", "/no/such/program"]);
    one_line_error(&out, "command not found");
    assert_eq!(out.status.code(), Some(127), "a shell's status");
}

#[test]
fn unwritable_json_path() {
    require_root();
    one_line_error(
        &rmaptrace(&[
            "--no-tui",
            "--json",
            "/proc/version/nope.json",
            "--",
            "true",
        ]),
        "choose a writable path with --json",
    );
}

#[test]
fn missing_btf() {
    require_root();
    let out = Command::new(bin())
        .args(["--no-tui", "--", "true"])
        .env("RMAPTRACE_BTF", "/nonexistent/vmlinux")
        .output()
        .unwrap();
    one_line_error(&out, "CONFIG_DEBUG_INFO_BTF");
}

#[test]
fn not_root() {
    require_root();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin())
        .args(["--no-tui", "--", "true"])
        .output()
        .expect("setpriv (util-linux)");
    one_line_error(
        &out,
        "missing CAP_BPF and CAP_PERFMON: run it with sudo, or grant",
    );
}

/// Root is not needed: CAP_BPF and CAP_PERFMON trace (here a command run as
/// nobody), and CAP_SYSLOG names the fault handlers. Each missing one is named.
#[test]
fn capabilities_instead_of_root() {
    require_root();
    let run = |caps: &str| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"))
            .arg(bin())
            .args(["--no-tui", "--", "true"])
            .output()
            .expect("setpriv (util-linux)")
    };
    let out = run("+bpf,+perfmon,+syslog");
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stderr);
    assert!(table.contains(" true: "), "{table}");
    assert!(table.contains("filemap_fault"), "handlers named: {table}");

    let out = run("+bpf,+perfmon");
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stderr);
    assert!(table.contains("no CAP_SYSLOG"), "{table}");
    assert!(!table.contains("filemap_fault"), "{table}");

    one_line_error(&run("+bpf"), "missing CAP_PERFMON: ");
    one_line_error(&run("+perfmon"), "missing CAP_BPF: ");
}

#[test]
fn events_need_json() {
    require_root();
    one_line_error(
        &rmaptrace(&["--no-tui", "--events", "--", "true"]),
        "add --json",
    );
}

#[test]
fn exit_status_of_the_command_is_passed_through() {
    require_root();
    let json = temp_json("status");
    let out = rmaptrace(&[
        "--no-tui",
        "--json",
        json.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(read_export(&json).last().unwrap()["type"], "summary");
}

#[test]
fn crashing_command_still_gives_a_complete_export() {
    require_root();
    let json = temp_json("crash");
    let out = rmaptrace(&[
        "--no-tui",
        "--json",
        json.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "kill -SEGV $$",
    ]);
    assert_eq!(out.status.code(), Some(128 + 11));
    let lines = read_export(&json);
    assert_eq!(lines.first().unwrap()["type"], "header");
    assert_eq!(lines.last().unwrap()["type"], "summary");
}

#[test]
fn sigterm_and_ctrl_c_end_cleanly_with_a_summary() {
    require_root();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let json = temp_json("signal");
        let child = Command::new(bin())
            .args([
                "--no-tui",
                "--json",
                json.to_str().unwrap(),
                "--",
                "sleep",
                "30",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Once attached, stop it the way a user would.
        wait_for_header(&json);
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(128 + sig),
            "exit status of the stopped command"
        );
        let lines = read_export(&json);
        assert_eq!(lines.last().unwrap()["type"], "summary", "signal {sig}");
        let sleep = processes(&lines).into_iter().find(|p| p["comm"] == "sleep");
        assert!(sleep.is_some(), "the command's process has its record");
    }
}

#[test]
fn system_wide_with_duration() {
    require_root();
    let json = temp_json("system");
    // Something to fault while it traces, however idle the machine is.
    let mut busy = Command::new("sh")
        .args(["-c", "for i in $(seq 60); do /bin/true; sleep 0.1; done"])
        .spawn()
        .unwrap();
    let out = rmaptrace(&[
        "--no-tui",
        "--duration",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let _ = busy.kill();
    let _ = busy.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let export = read_export(&json);
    let summary = export.last().unwrap();
    let d = summary["duration_ns"].as_u64().unwrap();
    assert!(d >= 1_000_000_000, "ran for the duration: {d}");
    assert!(
        !processes(&export).is_empty(),
        "something faulted in a second"
    );
    assert_eq!(summary["end_reason"], "--duration reached");
    assert_eq!(
        summary["totals"]["processes"].as_u64(),
        Some(processes(&export).len() as u64),
        "one record per process: {summary}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("rmaptrace: "),
        "the table goes to stdout: {stdout}"
    );
}

#[test]
fn probe_shows_the_plan_and_why_fentry_and_kprobe_were_rejected() {
    require_root();
    let out = rmaptrace(&["probe"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // Whatever this kernel offers: the plan names its backend, and every
    // mechanism tried before it with the reason it was rejected.
    let backend = ["fentry", "kprobe", "tracepoint"]
        .into_iter()
        .find(|b| text.contains(&format!("backend: {b} ")))
        .unwrap_or_else(|| panic!("no backend named: {text}"));
    let tried_before: &[&str] = match backend {
        "fentry" => &[],
        "kprobe" => &["fentry"],
        _ => &["fentry", "kprobe"],
    };
    for m in tried_before {
        assert!(text.contains(&format!("not {m}: ")), "why not {m}: {text}");
    }
    // What can be told from outside: a kernel without the kprobe PMU says so.
    if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        assert!(text.contains("not kprobe: no kprobe PMU"), "{text}");
    }
    if backend == "tracepoint" {
        assert!(text.contains("(fault paths derived)"), "{text}");
        assert!(
            text.contains("exceptions/page_fault_user   tp_btf"),
            "{text}"
        );
    }
}

#[test]
fn forcing_a_backend_the_kernel_lacks_is_a_clear_error() {
    require_root();
    one_line_error(
        &rmaptrace(&["--no-tui", "--backend", "kprobe", "--", "true"]),
        "use --backend auto",
    );
}

/// Every input bound: one line naming the fix, a non-zero exit, and nothing
/// started (the command would have printed).
#[test]
fn input_bounds_are_refused_before_anything_starts() {
    require_root();
    let not_exec = temp_json("not-exec").with_extension("sh");
    std::fs::write(&not_exec, "#!/bin/sh\necho started\n").unwrap();
    let not_exec = not_exec.to_str().unwrap();
    let many: Vec<String> = (0..65)
        .flat_map(|i| ["--comm".into(), format!("c{i}")])
        .collect();
    let mut many: Vec<&str> = many.iter().map(String::as_str).collect();
    many.insert(0, "--no-tui");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--no-tui", "--ring-mib", "4096", "--", "echo", "started"],
            "--ring-mib must be a power of two from 1 to 1024",
        ),
        (
            vec!["--no-tui", "--ring-mib", "3", "--", "echo", "started"],
            "--ring-mib must be a power of two",
        ),
        (
            vec!["--no-tui", "--comm", ""],
            "--comm needs a process name",
        ),
        (many, "at most 64 --comm names, not 65"),
        (vec!["--no-tui", "--pid", "2"], "pid 2 is a kernel thread"),
        (
            vec!["--no-tui", "--duration", "1e20", "--", "echo", "started"],
            "--duration must be a number of seconds",
        ),
        (
            vec!["--no-tui", "--duration", "0", "--", "echo", "started"],
            "--duration must be a number of seconds",
        ),
        (vec!["--no-tui", "--", not_exec], "is not executable"),
        (
            vec![
                "--no-tui",
                "--stacks",
                "--stack-depth",
                "128",
                "--",
                "echo",
                "started",
            ],
            "--stack-depth must be from 1 to 127 frames",
        ),
        (
            vec![
                "--no-tui",
                "--folded",
                "/proc/version/x.folded",
                "--",
                "echo",
                "started",
            ],
            "choose a writable path with --folded",
        ),
        (
            vec![
                "--no-tui",
                "--flamegraph",
                "/proc/version/x.svg",
                "--",
                "echo",
                "started",
            ],
            "choose a writable path with --flamegraph",
        ),
        (
            vec!["workload", "anon-write", "--pages", "4503599627370497"],
            "--pages must be at most",
        ),
    ];
    for (args, needle) in cases {
        let out = rmaptrace(&args);
        let want = if needle == "is not executable" {
            126
        } else {
            1
        };
        assert_eq!(out.status.code(), Some(want), "{args:?}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("started"),
            "{args:?} started the command"
        );
        one_line_error(&out, needle);
    }
}
