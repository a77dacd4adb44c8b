//! Helpers for the integration tests: they run the real rmaptrace binary, as root,
//! with its eBPF programs loaded into the running kernel, and read its JSON export.
use serde_json::{json, Value};
use std::{
    path::PathBuf,
    process::{Command, Output},
};

pub mod expect;

/// The rmaptrace binary under test (`cargo xtask test` sets RMAPTRACE_BIN).
pub fn bin() -> PathBuf {
    let path = std::env::var_os("RMAPTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/rmaptrace")
        });
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

pub fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests load eBPF programs: run them as root (`sudo cargo xtask test`)"
    );
}

/// A fresh path for a JSON export in the test's temp dir.
/// Unique per call: tests run in parallel and may trace the same scenario.
pub fn temp_json(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("rmaptrace-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}-{n}.json"))
}

/// The tests' own directory under the system's temporary one.
pub fn work_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rmaptrace-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a build tool (gcc, strip) that must succeed; `hint` says how to
/// install it.
pub fn run_tool(cmd: &mut Command, hint: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {:?} ({e}): {hint}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{hint}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds tests/programs/`source` with gcc and `flags` into the tests'
/// directory as `name`.
pub fn build_program(source: &str, name: &str, flags: &[&str], hint: &str) -> PathBuf {
    let exe = work_dir().join(name);
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("programs")
        .join(source);
    run_tool(
        Command::new("gcc")
            .args(flags)
            .arg("-o")
            .arg(&exe)
            .arg(&src),
        hint,
    );
    exe
}

/// Parses an NDJSON export; every line must be valid JSON.
pub fn read_export(path: &PathBuf) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!(
                    "line {} of {} is not JSON ({e}): {l}",
                    i + 1,
                    path.display()
                )
            })
        })
        .collect()
}

/// Every `process` record of an export: one per traced process, written when
/// it exited or when the trace ended.
pub fn processes(export: &[Value]) -> Vec<&Value> {
    export.iter().filter(|l| l["type"] == "process").collect()
}

/// The `process` record of `pid`, if it is there (the last one: a pid reused
/// within the trace has one record per process).
pub fn find_process<'a>(export: &'a [Value], pid: &Value) -> Option<&'a Value> {
    export
        .iter()
        .rev()
        .find(|l| l["type"] == "process" && &l["pid"] == pid)
}

pub struct Traced {
    pub output: Output,
    /// The workload's own report (its first stdout line).
    pub report: Value,
    pub export: Vec<Value>,
}

impl Traced {
    pub fn summary(&self) -> &Value {
        let last = self.export.last().expect("empty export");
        assert_eq!(last["type"], "summary", "the last line is the summary");
        last
    }

    pub fn process(&self, pid: u64) -> &Value {
        find_process(&self.export, &pid.into())
            .unwrap_or_else(|| panic!("pid {pid} has no process record: {:?}", self.export))
    }

    /// The VMA of the workload's mapping in process `pid`.
    pub fn vma(&self, pid: u64) -> &Value {
        let addr = self.report["addr"].as_str().unwrap();
        self.process(pid)["vmas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["start"] == addr)
            .unwrap_or_else(|| panic!("VMA {addr} missing from pid {pid}: {}", self.process(pid)))
    }

    /// Minor faults timed one in this many per CPU (1: every fault), from
    /// the export's header.
    pub fn latency_sample_period(&self) -> u64 {
        self.export
            .iter()
            .find(|l| l["type"] == "header")
            .and_then(|h| h["backend"]["latency_sample_period"].as_u64())
            .unwrap_or(1)
    }

    /// Whether row `v` of `faults` faults has every latency sample it should.
    pub fn samples_fit(&self, v: &Value, faults: u64) -> bool {
        expect::samples_fit(v, faults, self.latency_sample_period())
    }

    pub fn workload_pid(&self) -> u64 {
        self.report["pid"].as_u64().unwrap()
    }

    /// Checks this trace of `scenario` (`n` pages) against the answer the
    /// guest tests hold every kernel to ([`expect::check_result`]).
    pub fn check(&self, scenario: &str, n: usize) {
        let of_type = |t: &'static str| self.export.iter().filter(move |l| l["type"] == t);
        let result = json!({"rc": 0, "scenario": scenario, "report": self.report});
        let run = json!({
            "rc": self.output.status.code(),
            "header": of_type("header").next(),
            "summary": self.summary(),
            "processes": of_type("process").collect::<Vec<_>>(),
        });
        if let Err(e) = expect::check_result(&result, &run, n as u64) {
            panic!("{scenario}: {e:#}");
        }
    }
}

/// The report a workload printed (its first stdout line), from a run of `what`
/// that must have succeeded.
pub fn report_of(out: &Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().next().unwrap_or("null"))
        .unwrap_or_else(|e| panic!("{what}: report unreadable ({e}): {stdout}"))
}

/// Runs `rmaptrace --no-tui --json F [extra] -- rmaptrace workload SCENARIO --pages N`.
pub fn trace_workload(scenario: &str, pages: usize, extra: &[&str]) -> Traced {
    trace_workload_with(scenario, pages, extra, &[])
}

/// [`trace_workload`] with environment variables for rmaptrace (test hooks).
pub fn trace_workload_with(
    scenario: &str,
    pages: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Traced {
    require_root();
    let json = temp_json(scenario);
    let bin = bin();
    let output = Command::new(&bin)
        .envs(env.iter().copied())
        .args(["--no-tui", "--json"])
        .arg(&json)
        .args(extra)
        .arg("--")
        .arg(&bin)
        .args(["workload", scenario, "--pages", &pages.to_string()])
        .output()
        .expect("running rmaptrace");
    let report = report_of(&output, "rmaptrace");
    let export = read_export(&json);
    Traced {
        output,
        report,
        export,
    }
}

/// Waits until rmaptrace has attached: it writes and flushes the JSON header
/// right after. Polling this, not sleeping, keeps the tests right on a slow machine.
pub fn wait_for_header(json: &std::path::Path) {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(60) {
        if std::fs::read_to_string(json).is_ok_and(|t| t.contains("\"type\":\"header\"")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("rmaptrace did not attach within 60 s");
}

/// Runs rmaptrace with arbitrary arguments.
pub fn rmaptrace(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("running rmaptrace")
}
