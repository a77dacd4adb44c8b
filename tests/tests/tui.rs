//! The live screen end to end: the real binary in a pseudo-terminal, its screen
//! parsed with vt100, keys typed into it. libc::openpty + vt100 keeps this small:
//! no expect-style crate, and vt100 gives the screen as the user would see it.
use rmaptrace_tests::{bin, read_export, require_root, temp_json};
use std::{
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::{CommandExt, ExitStatusExt},
    },
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

struct Pty {
    master: File,
    /// Kept open so the screen stays readable after rmaptrace exits, and so its
    /// terminal modes can be checked then.
    slave: OwnedFd,
    child: Child,
    raw: Arc<Mutex<Vec<u8>>>,
    parser: Arc<Mutex<vt100::Parser>>,
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Pty {
    fn spawn(args: &[&str], env: &[(&str, &str)], rows: u16, cols: u16) -> Pty {
        require_root();
        let (mut m, mut s) = (0, 0);
        let ws = winsize(rows, cols);
        assert_eq!(
            unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) },
            0,
            "openpty"
        );
        let master = unsafe { File::from_raw_fd(m) };
        let slave = unsafe { OwnedFd::from_raw_fd(s) };
        let stdio = || Stdio::from(slave.try_clone().unwrap());
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .envs(env.iter().copied())
            .env("TERM", "xterm-256color")
            .stdin(stdio())
            .stdout(stdio())
            .stderr(stdio());
        // A session of its own with the pty as controlling terminal, as in a real
        // terminal: that is what delivers SIGWINCH on resize.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting rmaptrace");
        let raw = Arc::new(Mutex::new(Vec::new()));
        let parser = Arc::new(Mutex::new(vt100::Parser::new(rows, cols, 0)));
        let (r, p) = (raw.clone(), parser.clone());
        let mut reader = master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                r.lock().unwrap().extend_from_slice(&buf[..n]);
                p.lock().unwrap().process(&buf[..n]);
            }
        });
        Pty {
            master,
            slave,
            child,
            raw,
            parser,
        }
    }

    fn screen(&self) -> String {
        self.parser.lock().unwrap().screen().contents()
    }

    /// Waits until the screen shows every one of `what`.
    fn wait_for(&self, what: &[&str], timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if what.iter().all(|w| s.contains(w)) {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "screen never showed {what:?}; it shows:\n{s}\n--- raw tail: {:?}",
                self.raw_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn raw_tail(&self) -> String {
        let raw = self.raw.lock().unwrap();
        String::from_utf8_lossy(&raw[raw.len().saturating_sub(600)..]).into_owned()
    }

    fn keys(&mut self, k: &str) {
        self.master.write_all(k.as_bytes()).unwrap();
        self.master.flush().unwrap();
        // Each key is its own redraw: give it a moment before the next one.
        std::thread::sleep(Duration::from_millis(150));
    }

    fn resize(&self, rows: u16, cols: u16) {
        let ws = winsize(rows, cols);
        unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        self.parser.lock().unwrap().set_size(rows, cols);
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader catch the last bytes.
                std::thread::sleep(Duration::from_millis(200));
                return st;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("rmaptrace did not exit; screen:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The terminal is as rmaptrace found it: out of the alternate screen,
    /// cursor shown, line editing and echo back on.
    fn assert_restored(&self) {
        let raw = self.raw.lock().unwrap();
        let text = String::from_utf8_lossy(&raw);
        let entered = text
            .rfind("\x1b[?1049h")
            .expect("never entered the alternate screen");
        let left = text
            .rfind("\x1b[?1049l")
            .expect("never left the alternate screen");
        assert!(left > entered, "still in the alternate screen");
        let shown = text.rfind("\x1b[?25h").expect("cursor never shown again");
        assert!(shown > entered);
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut t) },
            0
        );
        assert!(
            t.c_lflag & libc::ICANON != 0,
            "still in raw mode (no ICANON)"
        );
        assert!(t.c_lflag & libc::ECHO != 0, "still in raw mode (no ECHO)");
        assert!(t.c_lflag & libc::ISIG != 0, "still in raw mode (no ISIG)");
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn has_kvm() -> bool {
    std::path::Path::new("/dev/kvm").exists()
}

#[test]
fn demo_shows_every_kind_reacts_to_keys_and_quits_cleanly() {
    let json = temp_json("tui-demo");
    let mut pty = Pty::spawn(
        &["demo", "--pages", "64", "--json", json.to_str().unwrap()],
        &[],
        45,
        160,
    );
    // Live rows, labelled with their scenario.
    let mut want = vec![
        "Processes",
        "[anon-write]",
        "[shared-anon]",
        "[file-shared-write]",
    ];
    if has_kvm() {
        want.push("[kvm-vcpu]");
    }
    pty.wait_for(&want, Duration::from_secs(30));

    // The path tree of everything: where anonymous and driver faults part ways.
    pty.keys("3");
    let mut want = vec![
        "kernel paths of all traced processes",
        "do_anonymous_page",
        "shmem_fault",
        "filemap_fault",
    ];
    if has_kvm() {
        want.push("kvm_vcpu_fault"); // "[kvm]" too where KVM is a module
    }
    pty.wait_for(&want, Duration::from_secs(30));
    pty.keys("\t");
    pty.wait_for(
        &["HANDLER / KIND", "shmem_fault (shmem)"],
        Duration::from_secs(30),
    );

    // Filter to the KVM scenario and open its mappings.
    pty.keys("1");
    let scenario = if has_kvm() { "kvm-vcpu" } else { "shared-anon" };
    pty.keys("/");
    pty.keys(scenario);
    pty.keys("\r");
    pty.wait_for(
        &[&format!("filter \"{scenario}\"")],
        Duration::from_secs(30),
    );
    pty.keys("\r");
    let (kind, handler) = if has_kvm() {
        ("driver", "kvm_vcpu_fault")
    } else {
        ("shmem", "shmem_fault")
    };
    pty.wait_for(
        &["RANGE", "HANDLER", kind, handler],
        Duration::from_secs(30),
    );
    // The first mapping's story: what set it up, then its faults.
    pty.keys("\r");
    pty.wait_for(
        &[
            "mapping: Esc or Enter closes",
            "set up by",
            "flags",
            "VM_READ",
        ],
        Duration::from_secs(30),
    );
    pty.keys("\r");

    pty.keys("?");
    pty.wait_for(
        &["help: any key closes", "What this backend cannot see"],
        Duration::from_secs(30),
    );
    pty.keys("x");
    pty.keys("p");
    pty.wait_for(&["PAUSED"], Duration::from_secs(30));

    pty.keys("q");
    let st = pty.wait_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(0), "exit status after q");
    pty.assert_restored();
    // The export is complete: it ends in the summary.
    let export = read_export(&json);
    let last = export.last().expect("empty export");
    assert_eq!(last["type"], "summary");
}

#[test]
fn sigterm_restores_the_terminal() {
    let mut pty = Pty::spawn(&["demo", "--pages", "16"], &[], 30, 120);
    pty.wait_for(
        &["Processes", "backend tracepoint"],
        Duration::from_secs(30),
    );
    unsafe { libc::kill(pty.child.id() as i32, libc::SIGTERM) };
    let st = pty.wait_exit(Duration::from_secs(30));
    assert_eq!(st.signal(), None, "ended by its own exit, not the signal");
    assert_eq!(st.code(), Some(0));
    pty.assert_restored();
}

#[test]
fn a_panic_in_the_ui_restores_the_terminal() {
    let mut pty = Pty::spawn(
        &["demo", "--pages", "16"],
        &[("RMAPTRACE_TEST_PANIC", "1")],
        30,
        120,
    );
    let st = pty.wait_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(1), "a failed UI is an error");
    pty.assert_restored();
    let raw = pty.raw.lock().unwrap();
    let text = String::from_utf8_lossy(&raw);
    let left = text.rfind("\x1b[?1049l").unwrap();
    assert!(
        text[left..].contains("RMAPTRACE_TEST_PANIC"),
        "the panic message is printed after the terminal is restored: {:?}",
        &text[left..]
    );
}

#[test]
fn a_small_terminal_gets_a_message_then_resizing_redraws_and_ctrl_c_quits() {
    let mut pty = Pty::spawn(&["demo", "--pages", "16"], &[], 8, 40);
    pty.wait_for(&["terminal too small (40x8)"], Duration::from_secs(30));
    pty.resize(30, 130);
    pty.wait_for(
        &["Processes", "backend tracepoint"],
        Duration::from_secs(30),
    );
    // Ctrl-C: in raw mode a key, not a signal.
    pty.keys("\x03");
    assert_eq!(pty.wait_exit(Duration::from_secs(30)).code(), Some(0));
    pty.assert_restored();
}

/// Without a terminal the demo runs one round and writes the summary, like --no-tui.
#[test]
fn demo_without_a_terminal_gives_the_summary() {
    require_root();
    let json = temp_json("demo-no-tui");
    let out = Command::new(bin())
        .args(["demo", "--pages", "32", "--pause-ms", "0", "--json"])
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("do_anonymous_page"), "the table: {stdout}");
    let export = read_export(&json);
    let summary = export.last().unwrap();
    assert_eq!(summary["type"], "summary");
    let mut handlers = Vec::new();
    let mut kinds = Vec::new();
    for p in rmaptrace_tests::processes(&export) {
        for v in p["vmas"].as_array().unwrap() {
            kinds.push(v["kind"].as_str().unwrap().to_string());
            if let Some(h) = v["handler"].as_str() {
                handlers.push(h.to_string());
            }
        }
    }
    for k in ["anon", "shmem", "file"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} mapping in {kinds:?}");
    }
    assert!(handlers.iter().any(|h| h == "shmem_fault"), "{handlers:?}");
    if has_kvm() {
        assert!(kinds.iter().any(|x| x == "driver"), "{kinds:?}");
        assert!(
            handlers.iter().any(|h| h == "kvm_vcpu_fault"),
            "{handlers:?}"
        );
    }
}

/// A traced process named to clear and recolour root's terminal is listed by
/// its escaped name; the command's output goes to a file only root can read,
/// in a directory whose name nobody could have predicted and planted.
#[test]
fn hostile_names_are_shown_escaped_and_the_command_log_is_private() {
    let dir = temp_json("tui-hostile").with_extension("d");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        r#"p="{}/$(printf '\033[2J\033[41mEVIL\377')"; cp /bin/sleep "$p"; echo started; exec "$p" 4"#,
        dir.display()
    );
    let mut pty = Pty::spawn(&["--", "sh", "-c", &script], &[], 30, 160);
    pty.wait_for(&[r"\x1b[2J\x1b[41mEVIL\xff"], Duration::from_secs(30));
    let st = pty.wait_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(0));
    pty.assert_restored();
    let raw = pty.raw.lock().unwrap();
    let text = String::from_utf8_lossy(&raw);
    let log = text
        .split("the command's output is in ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or_else(|| panic!("where the output went is not said: {text:?}"));
    let log = std::path::Path::new(log);
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(log), 0o600, "{}", log.display());
    assert_eq!(mode(log.parent().unwrap()), 0o700);
    assert_eq!(std::fs::read_to_string(log).unwrap(), "started\n");
    std::fs::remove_dir_all(log.parent().unwrap()).unwrap();
}

/// `rmaptrace report --tui FILE`: the screen of a finished trace, paused
/// from the start, showing its processes; `q` quits and gives the terminal
/// back. The report itself needs no root; the trace that writes the export does.
#[test]
fn report_tui_shows_the_export_paused_and_quits_on_q() {
    require_root();
    let json = temp_json("report-tui");
    let out = Command::new(bin())
        .args(["--no-tui", "--json"])
        .arg(&json)
        .arg("--")
        .arg(bin())
        .args(["workload", "anon-write", "--pages", "64"])
        .output()
        .expect("running rmaptrace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = json.to_str().unwrap();
    let mut pty = Pty::spawn(&["report", "--tui", path], &[], 30, 160);
    let screen = pty.wait_for(
        &[
            "PAUSED",
            "rmaptrace report",
            "Processes",
            "backend tracepoint",
        ],
        Duration::from_secs(30),
    );
    let pid = read_export(&json)
        .iter()
        .find(|l| l["type"] == "process")
        .map(|p| p["pid"].to_string())
        .expect("a process record");
    assert!(screen.contains(&pid), "pid {pid} listed:\n{screen}");
    pty.keys("q");
    assert_eq!(pty.wait_exit(Duration::from_secs(30)).code(), Some(0));
    pty.assert_restored();
}
