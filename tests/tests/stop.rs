//! Every way out of a trace of a command ends the same way: the command's whole
//! tree is stopped (signalled, given a grace period, then killed), the summary
//! and the table are written, and rmaptrace exits with the command's status.
use rmaptrace_tests::{bin, read_export, require_root, temp_json, wait_for_header};
use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// A unique word to find the command's processes by their command line.
fn marker(name: &str) -> String {
    format!("rmaptrace-stop-test-{name}-{}", std::process::id())
}

/// The file where the command's shell writes the pids of its children.
fn pid_file(marker: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{marker}.pids"))
}

/// What of the command's tree still runs: its shell (found by the marker in
/// its command line) and the children it listed in [`pid_file`].
fn survivors(marker: &str) -> Vec<u32> {
    let listed: Vec<u32> = std::fs::read_to_string(pid_file(marker))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            listed.contains(pid)
                || std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()))
        })
        .filter(|pid| {
            // A zombie waiting for its parent to reap it has exited.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        })
        .collect()
}

/// Nothing of the command's tree runs any more; `listed` children had been
/// started (so the check is not vacuous).
fn assert_tree_gone(marker: &str, listed: usize) {
    let pids = std::fs::read_to_string(pid_file(marker)).unwrap_or_default();
    assert_eq!(pids.lines().count(), listed, "children started: {pids}");
    let left = survivors(marker);
    assert!(left.is_empty(), "left running: {left:?}");
}

/// `sleep 300` in the background, its pid listed for [`survivors`].
fn background_sleep(marker: &str) -> String {
    format!("sleep 300 & echo $! >> {};", pid_file(marker).display())
}

/// rmaptrace tracing `sh -c script` (with `marker` in its command line).
fn start(script: &str, marker: &str, json: &Path, extra: &[&str]) -> Child {
    Command::new(bin())
        .args(["--no-tui", "--json"])
        .arg(json)
        .args(extra)
        .args(["--", "sh", "-c", &format!("{script} # {marker}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child, within: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(took < within, "took {took:?}: {out:?}");
    (out, took)
}

fn summary_of(json: &PathBuf) -> Value {
    let export = read_export(json);
    let last = export.last().expect("an export").clone();
    assert_eq!(last["type"], "summary", "the summary is the last line");
    last
}

fn signal_once_attached(child: &Child, json: &Path, sig: i32) {
    wait_for_header(json);
    // Let the command start its children.
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, sig) };
}

#[test]
fn sighup_stops_the_tree_and_writes_the_summary() {
    require_root();
    let m = marker("hup");
    let json = temp_json("hup");
    let script = format!("{0} {0} wait", background_sleep(&m));
    let child = start(&script, &m, &json, &[]);
    signal_once_attached(&child, &json, libc::SIGHUP);
    let (out, _) = finish(child, Duration::from_secs(20));
    // sh dies of the SIGHUP passed on to it: 128 + 1, as a shell reports it.
    assert_eq!(out.status.code(), Some(129), "{out:?}");
    let s = summary_of(&json);
    assert_eq!(s["end_reason"], "hung up (SIGHUP)");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ended: hung up (SIGHUP)"));
    assert_tree_gone(&m, 2);
}

#[test]
fn a_tree_that_ignores_the_signal_is_killed_after_the_grace_period() {
    require_root();
    let m = marker("ignore");
    let json = temp_json("ignore");
    // Ignored signals are inherited: neither sh nor its sleeps stop on SIGTERM.
    let script = format!("trap '' TERM INT; {} sleep 300; wait", background_sleep(&m));
    let child = start(&script, &m, &json, &[]);
    signal_once_attached(&child, &json, libc::SIGTERM);
    let (out, took) = finish(child, Duration::from_secs(20));
    assert!(
        took >= Duration::from_secs(2),
        "killed before the grace period: {took:?}"
    );
    assert_eq!(out.status.code(), Some(128 + libc::SIGKILL), "{out:?}");
    assert_eq!(summary_of(&json)["end_reason"], "terminated (SIGTERM)");
    assert_tree_gone(&m, 1);
}

#[test]
fn json_on_stdout_never_carries_the_commands_output() {
    require_root();
    let out = Command::new(bin())
        .args([
            "--no-tui",
            "--json",
            "-",
            "--",
            "sh",
            "-c",
            "echo hello; echo oops >&2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    for line in stdout.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hello\n") && stderr.contains("oops\n"),
        "{stderr}"
    );
}

/// A full filesystem under the export: the trace stops (the command's tree
/// too), the table is still printed, the file keeps only whole lines, and the
/// exit says why.
#[test]
fn a_full_disk_stops_the_trace_and_says_why() {
    require_root();
    let dir = temp_json("full").with_extension("d");
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.clone());
    let json = dir.join("export.json");
    let m = marker("full");
    let child = start("while :; do /bin/true; done", &m, &json, &["--events"]);
    let (out, _) = finish(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("rmaptrace: the JSON export failed") && last.contains("No space left"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ended: the JSON export failed"),
        "the table: {stderr}"
    );
    assert_tree_gone(&m, 0);
    // Every line that is there is whole.
    let export = read_export(&json);
    assert_eq!(export[0]["type"], "header");
}

/// A bug in rmaptrace itself (a panic mid-trace) must not leave the command
/// running untraced: its whole tree is killed, and the summary is written,
/// labelled with the error.
#[test]
fn a_panic_in_the_session_kills_the_commands_tree() {
    require_root();
    let m = marker("panic");
    let json = temp_json("panic");
    // The panic waits for both sleeps (a loaded machine may take over 2 s to
    // start them).
    let up = json.with_extension("up");
    let _ = std::fs::remove_file(&up);
    let script = format!("{0} {0} : > {1}; wait", background_sleep(&m), up.display());
    // Output to a file, not a pipe: survivors would hold a pipe open.
    let stderr = json.with_extension("stderr");
    let mut child = Command::new(bin())
        .env("RMAPTRACE_TEST_PANIC", "session")
        .env("RMAPTRACE_TEST_PANIC_FILE", &up)
        .args(["--no-tui", "--json"])
        .arg(&json)
        .args(["--", "sh", "-c", &format!("{script} # {m}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "rmaptrace did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "an error's exit: {status:?}");
    let stderr = std::fs::read_to_string(&stderr).unwrap();
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("rmaptrace: internal error (RMAPTRACE_TEST_PANIC=session)"),
        "{stderr}"
    );
    // The summary is still written, and says why the trace ended.
    assert_eq!(
        summary_of(&json)["end_reason"],
        "internal error (RMAPTRACE_TEST_PANIC=session)"
    );
    // The panic came once both sleeps had started.
    assert_tree_gone(&m, 2);
    let _ = std::fs::remove_file(&up);
}

/// `--json - | head -1`: the reader goes away mid-trace. The trace stops like
/// any other way out (the command's tree too), and says why.
#[test]
fn a_closed_pipe_stops_the_trace_and_says_why() {
    require_root();
    let m = marker("pipe");
    let mut child = Command::new(bin())
        .args(["--no-tui", "--events", "--json", "-", "--", "sh", "-c"])
        .arg(format!(
            "{} while :; do /bin/true; done # {m}",
            background_sleep(&m)
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.contains("\"type\":\"header\""), "{first}");
    // Let the shell start its child, then close the pipe, as `head -1` does.
    std::thread::sleep(Duration::from_millis(500));
    drop(stdout);
    let (out, _) = finish(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ended: the JSON export failed"),
        "the table: {stderr}"
    );
    assert!(stderr.contains("Broken pipe"), "{stderr}");
    assert_tree_gone(&m, 1);
}

/// A parent that ignores SIGCHLD (children reaped for it) must not turn the
/// command's status into 0.
#[test]
fn the_commands_status_survives_an_ignored_sigchld() {
    require_root();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' CHLD; exec {} --no-tui -- sh -c 'exit 3'",
            bin().display()
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}
