//! What untrusted processes choose (their names, the names of the files they
//! map) and where rmaptrace writes: root's terminal and files must be safe from
//! both.
use rmaptrace_tests::{bin, processes, read_export, require_root, temp_json};
use std::{
    ffi::OsStr,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::PathBuf,
    process::Command,
};

/// A program whose name clears the screen and paints it red, with a byte that
/// is not UTF-8: the name of both its comm (first 15 bytes) and its file.
const HOSTILE: &[u8] = b"\x1b[2J\x1b[41mEVIL\xff";

/// A copy of `of` (a system program) named `name`, in a directory of its own.
fn program_named(name: &[u8], of: &str) -> PathBuf {
    let dir = temp_json("program").with_extension("d");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(OsStr::from_bytes(name));
    // Copied by another process: a file this multi-threaded test process had
    // open for writing could be inherited by a sibling test's fork, and
    // executing it would fail with ETXTBSY.
    let copied = Command::new("install")
        .args(["-m", "755", of])
        .arg(&path)
        .status()
        .unwrap();
    assert!(copied.success());
    path
}

#[test]
fn hostile_names_are_escaped_on_the_terminal_and_kept_in_the_json() {
    require_root();
    let program = program_named(HOSTILE, "/bin/true");
    let json = temp_json("hostile");
    let out = Command::new(bin())
        .arg("--no-tui")
        .arg("--json")
        .arg(&json)
        .arg("--")
        .arg(&program)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
    assert!(
        !printed.contains(&0x1b),
        "a raw ESC reached the terminal: {}",
        String::from_utf8_lossy(&printed)
    );
    let text = String::from_utf8(printed).expect("the table is UTF-8");
    let shown = r"\x1b[2J\x1b[41mEVIL\xff";
    assert!(text.contains(&format!(" {shown}: ")), "the comm: {text}");
    assert!(
        text.contains(&format!(" {shown} | ")),
        "the file name: {text}"
    );

    // The export keeps the name: JSON escapes the control characters, the
    // invalid byte is written as \xff (docs/json-format.md).
    let export = read_export(&json);
    let want = "\u{1b}[2J\u{1b}[41mEVIL\\xff";
    let p = processes(&export)
        .into_iter()
        .find(|p| p["comm"] == want)
        .unwrap_or_else(|| panic!("no process named {want:?}: {export:?}"));
    assert!(
        p["vmas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["file"].as_str().is_some_and(|f| f.ends_with(want))),
        "no mapping of the file: {p}"
    );
}

#[test]
fn a_symlink_at_the_export_path_is_replaced_not_followed() {
    require_root();
    let json = temp_json("planted");
    let victim = json.with_extension("victim");
    std::fs::write(&victim, "root's precious file\n").unwrap();
    std::os::unix::fs::symlink(&victim, &json).unwrap();
    let out = Command::new(bin())
        .args(["--no-tui", "--json"])
        .arg(&json)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "root's precious file\n"
    );
    let meta = std::fs::symlink_metadata(&json).unwrap();
    assert!(meta.file_type().is_file(), "the symlink was replaced");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(!read_export(&json).is_empty());
}

#[test]
fn an_earlier_export_survives_a_run_that_fails_before_tracing() {
    require_root();
    let json = temp_json("earlier");
    std::fs::write(&json, "{\"type\":\"summary\"}\n").unwrap();
    // A BTF file that passes the checks made before the export is opened, and
    // fails the load after it.
    let out = Command::new(bin())
        .env("RMAPTRACE_BTF", "/dev/null")
        .args(["--no-tui", "--json"])
        .arg(&json)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&json).unwrap(),
        "{\"type\":\"summary\"}\n"
    );
    let dir = json.parent().unwrap();
    let stray: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".earlier-"))
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
}

/// A running process whose name is not UTF-8 (or holds control characters) is
/// found by `--pid` and keeps its name.
#[test]
fn a_process_with_a_hostile_name_is_traced_by_pid() {
    require_root();
    let program = program_named(HOSTILE, "/bin/sleep");
    let mut sleeper = Command::new(&program).arg("3").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let json = temp_json("hostile-pid");
    let out = Command::new(bin())
        .args(["--no-tui", "--duration", "1", "--json"])
        .arg(&json)
        .args(["--pid", &sleeper.id().to_string()])
        .output()
        .unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(out.status.success(), "{out:?}");
    assert!(!out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b));
    let export = read_export(&json);
    let p = processes(&export)
        .into_iter()
        .find(|p| p["pid"] == sleeper.id())
        .unwrap_or_else(|| panic!("no record of the process: {export:?}"));
    assert_eq!(p["comm"], "\u{1b}[2J\u{1b}[41mEVIL\\xff");
}

/// `--comm` with a name of more than 15 bytes whose 15th byte is inside a
/// character: the kernel keeps the first 15 bytes, and so does the match, for
/// a process running before the trace and for one started during it.
#[test]
fn a_long_multibyte_comm_matches() {
    require_root();
    let name = "ééééééééé"; // 18 bytes: the kernel's comm ends mid-character.
    let program = program_named(name.as_bytes(), "/bin/sleep");
    let mut before = Command::new(&program).arg("4").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let json = temp_json("comm");
    let tracer = Command::new(bin())
        .args(["--no-tui", "--duration", "3", "--json"])
        .arg(&json)
        .args(["--comm", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    rmaptrace_tests::wait_for_header(&json);
    let mut after = Command::new(&program).arg("0.5").spawn().unwrap();
    let out = tracer.wait_with_output().unwrap();
    for c in [&mut before, &mut after] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(out.status.success(), "{out:?}");
    let export = read_export(&json);
    let pids: Vec<&serde_json::Value> = processes(&export).iter().map(|p| &p["pid"]).collect();
    assert!(
        pids.contains(&&serde_json::json!(before.id())),
        "the running one: {pids:?}"
    );
    assert!(
        pids.contains(&&serde_json::json!(after.id())),
        "the new one: {pids:?}"
    );
}
