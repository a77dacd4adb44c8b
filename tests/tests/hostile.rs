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

fn hostile_program() -> PathBuf {
    let dir = temp_json("hostile").with_extension("d");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(OsStr::from_bytes(HOSTILE));
    std::fs::copy("/bin/true", &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn hostile_names_are_escaped_on_the_terminal_and_kept_in_the_json() {
    require_root();
    let program = hostile_program();
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
