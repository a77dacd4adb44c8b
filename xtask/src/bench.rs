//! `cargo xtask bench`: what tracing costs per fault, rmaptrace against the peer
//! anchor (a bpftrace count-by-pid one-liner), measured in the same run in
//! paired rounds: every traced run sits between two untraced ones, its
//! overhead is taken over their mean, and ratios are taken within a round, then
//! reported as the median of the rounds with their range. Timed runs have BPF
//! statistics off, as users run; each traced mode's BPF time per program comes
//! from a shorter run with them on (see `measure`). Prints tables and
//! writes target/bench/bench.json and threads.json. Not a test: the machines
//! are noisy (this one's speed drifts by 40% from minute to minute), so it
//! reports numbers and ratios and asserts nothing.
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::workspace_root;

const BPFTRACE_ONE_LINER: &str = "tracepoint:exceptions:page_fault_user { @[pid] = count(); }";
const WORKLOADS: &[&str] = &["bench-anon", "bench-shared", "bench-file"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Untraced,
    Rmaptrace,
    /// The default mode as it counts where it cannot count at the entry
    /// (RMAPTRACE_COUNT_AT_COMPLETION): what counting at the entry saves.
    RmaptraceCompletion,
    RmaptraceEvents,
    RmaptraceStacks,
    Bpftrace,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Rmaptrace => "rmaptrace",
            Mode::RmaptraceCompletion => "rmaptrace completion",
            Mode::RmaptraceEvents => "rmaptrace --events",
            Mode::RmaptraceStacks => "rmaptrace --stacks",
            Mode::Bpftrace => "bpftrace one-liner",
        }
    }
}

/// One measured run of one workload under one mode.
#[derive(Default, Clone)]
struct Sample {
    ns_per_fault: f64,
    /// BPF run time per fault, summed over every program that ran during the
    /// workload (kernel.bpf_stats_enabled), and per program: name → (ns, runs).
    bpf_ns_per_fault: Option<f64>,
    programs: Vec<(String, u64, u64)>,
    tracer_cpu_s: f64,
    wall_s: f64,
    faults: u64,
    events_lost: Option<u64>,
    attach_ms: Option<f64>,
    /// `--stacks`: frames per recorded stack, weighted by faults.
    stack_frames: Option<f64>,
}

struct Tracer {
    child: Child,
    json: Option<PathBuf>,
    attach_ms: f64,
}

pub(crate) fn bench_dir() -> PathBuf {
    workspace_root().join("target/bench")
}

fn sysctl_get(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")))
        .ok()
        .map(|s| s.trim().to_string())
}

fn sysctl_set(name: &str, value: &str) -> Result<()> {
    std::fs::write(format!("/proc/sys/{}", name.replace('.', "/")), value)
        .with_context(|| format!("setting {name}={value} (run as root)"))
}

/// Waits until rmaptrace has attached: it writes and flushes the export's header
/// right after.
pub(crate) fn wait_for_header(json: &Path, limit: Duration) -> Result<()> {
    let started = Instant::now();
    while !std::fs::read_to_string(json).is_ok_and(|t| t.contains("\"type\":\"header\"")) {
        if started.elapsed() > limit {
            bail!("rmaptrace did not attach in {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// How long a tracer is left to settle before a timed run: bpftrace prints
/// "Attaching" before it attaches and works on after it, rmaptrace reads /proc
/// after its header; either competing with the workload on a small machine
/// made the one-liner's overhead here bimodal (230-350 ns a fault, or 500-1,000).
const SETTLE: Duration = Duration::from_secs(2);

/// Starts a tracer and returns once it is attached and settled.
fn start_tracer(mode: Mode, bin: &Path) -> Result<Option<Tracer>> {
    let tracer = start_tracer_unsettled(mode, bin)?;
    if tracer.is_some() {
        std::thread::sleep(SETTLE);
    }
    Ok(tracer)
}

fn start_tracer_unsettled(mode: Mode, bin: &Path) -> Result<Option<Tracer>> {
    let started = Instant::now();
    match mode {
        Mode::Untraced => Ok(None),
        Mode::Rmaptrace
        | Mode::RmaptraceCompletion
        | Mode::RmaptraceEvents
        | Mode::RmaptraceStacks => {
            let json = bench_dir().join("run.json");
            let _ = std::fs::remove_file(&json);
            let mut cmd = Command::new(bin);
            cmd.args(["--no-tui", "--json"]).arg(&json);
            match mode {
                Mode::RmaptraceEvents => {
                    cmd.arg("--events");
                }
                Mode::RmaptraceStacks => {
                    cmd.arg("--stacks");
                }
                Mode::RmaptraceCompletion => {
                    cmd.env("RMAPTRACE_COUNT_AT_COMPLETION", "1");
                }
                _ => {}
            }
            let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
            wait_for_header(&json, Duration::from_secs(30))?;
            Ok(Some(Tracer {
                child,
                json: Some(json),
                attach_ms: started.elapsed().as_secs_f64() * 1e3,
            }))
        }
        Mode::Bpftrace => {
            let mut child = Command::new("bpftrace")
                .args(["-e", BPFTRACE_ONE_LINER])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting bpftrace (cargo xtask deps installs it)")?;
            let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
            for line in lines.by_ref() {
                if line?.starts_with("Attaching") {
                    break;
                }
            }
            // bpftrace prints its map at exit; keep draining so it never blocks.
            std::thread::spawn(move || for _ in lines {});
            Ok(Some(Tracer {
                child,
                json: None,
                attach_ms: started.elapsed().as_secs_f64() * 1e3,
            }))
        }
    }
}

/// utime + stime of a process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = rest.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + rest.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// (id, name, run_time_ns, run_cnt) of every loaded BPF program. Only the tracer
/// under test runs programs on the fault path during a measurement, so the deltas
/// over the workload are its own (bpftool here cannot tell owners apart).
fn bpf_stats() -> Vec<(u64, String, u64, u64)> {
    let Ok(out) = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
    else {
        return Vec::new();
    };
    let progs: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    progs
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["id"].as_u64().unwrap_or(0),
                        p["name"].as_str().unwrap_or("?").to_string(),
                        p["run_time_ns"].as_u64().unwrap_or(0),
                        p["run_cnt"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn run_workload(bin: &Path, workload: &str, faults: u64) -> Result<f64> {
    let out = Command::new(bin)
        .args(["workload", workload, "--pages", &faults.to_string()])
        .output()?;
    if !out.status.success() {
        bail!(
            "{workload} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["ns_per_fault"].as_f64().context("workload report")
}

/// Per-program BPF run time over one run of `workload` (`kernel.bpf_stats_enabled`
/// on for just that run): (name, ns, runs) of each program that ran.
fn bpf_time_over(bin: &Path, workload: &str, faults: u64) -> Result<Vec<(String, u64, u64)>> {
    sysctl_set("kernel.bpf_stats_enabled", "1")?;
    let before_bpf = bpf_stats();
    let ran = run_workload(bin, workload, faults);
    let after_bpf = bpf_stats();
    sysctl_set("kernel.bpf_stats_enabled", "0")?;
    ran?;
    let mut programs = Vec::new();
    for (id, name, t, c) in &after_bpf {
        let (t0, c0) = before_bpf
            .iter()
            .find(|(i, ..)| i == id)
            .map(|(_, _, t0, c0)| (*t0, *c0))
            .unwrap_or((0, 0));
        if c > &c0 {
            programs.push((name.clone(), t - t0, c - c0));
        }
    }
    Ok(programs)
}

/// The timed run has BPF statistics off, as users run: with them on, every
/// program run also reads the clock twice, which weighs on a tracer with two
/// programs per fault twice as much as on one with one, and on none of the
/// untraced runs. BPF time is then taken over a run of a quarter the faults
/// with statistics on.
fn measure(mode: Mode, bin: &Path, workload: &str, faults: u64) -> Result<Sample> {
    let tracer = start_tracer(mode, bin)?;
    let pid = tracer.as_ref().map(|t| t.child.id());
    let before_cpu = pid.map(cpu_seconds).unwrap_or(0.0);
    let t0 = Instant::now();
    let ns = run_workload(bin, workload, faults)?;
    let wall_s = t0.elapsed().as_secs_f64();
    let after_cpu = pid.map(cpu_seconds).unwrap_or(0.0);
    let sampled = (faults / 4).max(1);
    let programs = if pid.is_some() {
        bpf_time_over(bin, workload, sampled)?
    } else {
        Vec::new()
    };
    let time: u64 = programs.iter().map(|(_, t, _)| t).sum();
    let mut sample = Sample {
        ns_per_fault: ns,
        bpf_ns_per_fault: (pid.is_some() && time > 0).then(|| time as f64 / sampled as f64),
        programs,
        tracer_cpu_s: after_cpu - before_cpu,
        wall_s,
        faults,
        ..Default::default()
    };
    if let Some(mut t) = tracer {
        sample.attach_ms = Some(t.attach_ms);
        stop(&mut t.child)?;
        if let Some(json) = t.json {
            let summary: Value = serde_json::from_str(&last_line(&json)?)?;
            sample.events_lost = summary["events_lost"].as_u64();
            if mode == Mode::RmaptraceStacks {
                sample.stack_frames = frames_per_stack(&json)?;
            }
        }
    }
    Ok(sample)
}

/// Frames per recorded stack in an export, weighted by the faults of each.
fn frames_per_stack(json: &Path) -> Result<Option<f64>> {
    let (mut frames, mut faults) = (0.0, 0.0);
    for line in std::fs::read_to_string(json)?.lines() {
        let v: Value = serde_json::from_str(line)?;
        for row in v["vmas"].as_array().into_iter().flatten() {
            for site in row["stacks"].as_array().into_iter().flatten() {
                let n = site["count"].as_f64().unwrap_or(0.0);
                frames += n * site["frames"].as_array().map_or(0, Vec::len) as f64;
                faults += n;
            }
        }
    }
    Ok((faults > 0.0).then(|| frames / faults))
}

/// Stops a tracer with SIGINT, as a user would; again after 30 s if it runs
/// on (bpftrace once missed one), and with SIGKILL 5 s later.
fn stop(child: &mut Child) -> Result<()> {
    for wait in [Duration::from_secs(30), Duration::from_secs(5)] {
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let started = Instant::now();
        while started.elapsed() < wait {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Peak RSS of rmaptrace tracing (by --pid, so the traced process's own memory is
/// not in it) a process that faults `vmas` separate VMAs. Polled from
/// /proc/PID/status (VmHWM): the rusage of a child also counts what it held
/// between fork and exec, a copy of this process's own memory.
fn rss_with_vmas(bin: &Path, vmas: u64) -> Result<(f64, u64)> {
    let json = bench_dir().join("vmas.json");
    let _ = std::fs::remove_file(&json);
    let mut workload = Command::new(bin)
        .args(["workload", "bench-vmas", "--pages", &vmas.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut tracer = Command::new(bin)
        .args(["--no-tui", "--json"])
        .arg(&json)
        .args(["--pid", &workload.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_for_header(&json, Duration::from_secs(60))?;
    let tracer_pid = tracer.id();
    let peak = std::thread::spawn(move || crate::bench_long::watch_peak(tracer_pid));
    let mut stdin = workload.stdin.take().expect("piped");
    stdin.write_all(b"\n")?;
    let mut lines = BufReader::new(workload.stdout.take().expect("piped")).lines();
    let _ready = lines.next();
    // Let a few snapshots see all VMAs before the process ends.
    std::thread::sleep(Duration::from_secs(3));
    stdin.write_all(b"\n")?;
    drop(stdin);
    workload.wait()?;
    let (peak_kib, _) = peak.join().expect("the RSS watcher");
    tracer.wait()?;
    let tracked = BufReader::new(std::fs::File::open(&json)?)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with("{\"type\":\"process\""))
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .map(|p| p["vmas"].as_array().map_or(0, |v| v.len() as u64))
        .sum();
    Ok((peak_kib as f64 / 1024.0, tracked))
}

/// The last line of an export, read from its end: a `--events` run's export
/// is hundreds of megabytes.
fn last_line(path: &Path) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut tail = 1u64 << 16;
    loop {
        let from = len.saturating_sub(tail);
        f.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        // The cut may fall inside a character of an earlier line.
        let buf = String::from_utf8_lossy(&buf);
        let text = buf.trim_end();
        if let Some(i) = text.rfind('\n') {
            return Ok(text[i + 1..].to_string());
        }
        if from == 0 {
            return Ok(text.to_string());
        }
        tail *= 4;
    }
}

pub fn run(faults: u64, reps: usize, sections: &[String]) -> Result<()> {
    let bin = crate::build()?;
    std::fs::create_dir_all(bench_dir())?;
    let old_stats = sysctl_get("kernel.bpf_stats_enabled");
    let old_maps = sysctl_get("vm.max_map_count");
    sysctl_set("kernel.bpf_stats_enabled", "0")?;
    sysctl_set("vm.max_map_count", "262144")?;
    let result = (|| {
        if sections.iter().any(|s| s == "faults") {
            run_all(&bin, faults, reps, ALL_MODES, "bench.json")?;
        }
        if sections.iter().any(|s| s == "versus") {
            run_all(&bin, faults, reps, VERSUS_MODES, "versus.json")?;
        }
        if sections.iter().any(|s| s == "events") {
            run_all(&bin, faults, reps, EVENTS_MODES, "events.json")?;
        }
        if sections.iter().any(|s| s == "threads") {
            run_threads(&bin, faults, reps)?;
        }
        if sections.iter().any(|s| s == "long") {
            let report = crate::bench_long::run(&bin)?;
            let path = bench_dir().join("long.json");
            std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            eprintln!("bench: wrote {}", path.display());
        }
        Ok(())
    })();
    if let Some(v) = old_stats {
        let _ = sysctl_set("kernel.bpf_stats_enabled", &v);
    }
    if let Some(v) = old_maps {
        let _ = sysctl_set("vm.max_map_count", &v);
    }
    result
}

/// One traced run and its baseline: the mean of the untraced runs just before
/// and just after it (this machine's speed drifts from minute to minute).
struct Paired {
    workload: String,
    round: usize,
    mode: Mode,
    sample: Sample,
    baseline: f64,
}

impl Paired {
    fn overhead(&self) -> f64 {
        self.sample.ns_per_fault - self.baseline
    }
}

/// One round of `workload`: untraced, then each mode (rotated by the round)
/// followed by an untraced run.
fn round(
    bin: &Path,
    workload: &str,
    faults: u64,
    modes: &[Mode],
    round: usize,
) -> Result<Vec<Paired>> {
    let mut before = measure(Mode::Untraced, bin, workload, faults)?.ns_per_fault;
    let mut out = Vec::new();
    for i in 0..modes.len() {
        let mode = modes[(i + round) % modes.len()];
        let sample = measure(mode, bin, workload, faults)?;
        let after = measure(Mode::Untraced, bin, workload, faults)?.ns_per_fault;
        eprintln!(
            "bench: round {round} {workload:<17} {:<19} {:>7.0} ns/fault, untraced {before:.0} / {after:.0}",
            mode.name(),
            sample.ns_per_fault
        );
        out.push(Paired {
            workload: workload.to_string(),
            round,
            mode,
            sample,
            baseline: (before + after) / 2.0,
        });
        before = after;
    }
    Ok(out)
}

/// Median and range of `v`, formatted; "-" when empty.
fn spread(v: &mut [f64], precision: usize) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let m = median(v);
    format!(
        "{m:.precision$} ({:.precision$}-{:.precision$})",
        v[0],
        v[v.len() - 1]
    )
}

/// Per round, `of`'s overhead over `over`'s, where both ran in that round.
fn round_ratios(runs: &[Paired], workload: &str, of: Mode, over: Mode) -> Vec<f64> {
    let in_round = |round: usize, mode: Mode| {
        runs.iter()
            .find(|p| p.workload == workload && p.round == round && p.mode == mode)
    };
    let rounds: std::collections::BTreeSet<usize> = runs.iter().map(|p| p.round).collect();
    rounds
        .into_iter()
        .filter_map(|r| Some(in_round(r, of)?.overhead() / in_round(r, over)?.overhead()))
        .collect()
}

/// Every mode: what each costs, against the one-liner and the default mode.
const ALL_MODES: &[Mode] = &[
    Mode::Rmaptrace,
    Mode::RmaptraceCompletion,
    Mode::RmaptraceEvents,
    Mode::RmaptraceStacks,
    Mode::Bpftrace,
];

/// The default mode and the one-liner alone: more rounds in the same time,
/// for the one ratio whose noise is as large as the difference it measures.
const VERSUS_MODES: &[Mode] = &[Mode::Rmaptrace, Mode::Bpftrace];

/// The default mode and `--events` alone, for the same reason: their ratio's
/// denominator is the default mode's overhead, itself a few hundred ns.
const EVENTS_MODES: &[Mode] = &[Mode::Rmaptrace, Mode::RmaptraceEvents];

fn run_all(bin: &Path, faults: u64, reps: usize, traced: &[Mode], report_name: &str) -> Result<()> {
    let started = Instant::now();
    let traced = traced.to_vec();
    let mut runs: Vec<Paired> = Vec::new();
    for rep in 0..reps {
        for workload in WORKLOADS {
            runs.extend(round(bin, workload, faults, &traced, rep)?);
        }
    }
    let (rss_mib, tracked) = rss_with_vmas(bin, 100_000)?;

    let mut rows = Vec::new();
    let mut table = String::new();
    table.push_str(&format!(
        "{:<13} {:<19} {:>9} {:>19} {:>19} {:>10} {:>6} {:>10} {:>9}\n",
        "workload",
        "mode",
        "untraced",
        "overhead ns",
        "vs bpftrace",
        "bpf ns/flt",
        "lost",
        "cpu%@100k",
        "attach ms"
    ));
    for workload in WORKLOADS {
        let of = |mode: Mode| -> Vec<&Paired> {
            runs.iter()
                .filter(|p| p.workload == *workload && p.mode == mode)
                .collect()
        };
        for &mode in &traced {
            let ps = of(mode);
            let mut base: Vec<f64> = ps.iter().map(|p| p.baseline).collect();
            let mut over: Vec<f64> = ps.iter().map(|p| p.overhead()).collect();
            let mut ratio = if mode == Mode::Bpftrace {
                Vec::new()
            } else {
                round_ratios(&runs, workload, mode, Mode::Bpftrace)
            };
            let bpf: Vec<f64> = ps
                .iter()
                .filter_map(|p| p.sample.bpf_ns_per_fault)
                .collect();
            let bpf_ns = (!bpf.is_empty()).then(|| median(&mut bpf.clone()));
            let lost: Option<u64> = ps.iter().filter_map(|p| p.sample.events_lost).max();
            // The tracer's CPU over the run, scaled to a 100k faults/s load.
            let mut cpu: Vec<f64> = ps
                .iter()
                .map(|p| {
                    let s = &p.sample;
                    100.0 * s.tracer_cpu_s / s.wall_s * (100_000.0 / (s.faults as f64 / s.wall_s))
                })
                .collect();
            let attach: Vec<f64> = ps.iter().filter_map(|p| p.sample.attach_ms).collect();
            let attach = (!attach.is_empty()).then(|| median(&mut attach.clone()));
            let opt =
                |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or("-".into());
            table.push_str(&format!(
                "{:<13} {:<19} {:>9.0} {:>19} {:>19} {:>10} {:>6} {:>10} {:>9}\n",
                workload,
                mode.name(),
                median(&mut base.clone()),
                spread(&mut over, 0),
                spread(&mut ratio, 2),
                opt(bpf_ns, 0),
                lost.map(|l| l.to_string()).unwrap_or("-".into()),
                opt(Some(median(&mut cpu)), 2),
                opt(attach, 0),
            ));
            rows.push(json!({
                "workload": workload, "mode": mode.name(),
                "untraced_ns_per_fault_median": median(&mut base),
                "overhead_ns_median": median(&mut over.clone()),
                "overhead_ns_min": over.first(), "overhead_ns_max": over.last(),
                "ratio_vs_bpftrace_median": (!ratio.is_empty()).then(|| median(&mut ratio.clone())),
                "ratio_vs_bpftrace_min": ratio.first(), "ratio_vs_bpftrace_max": ratio.last(),
                "bpf_ns_per_fault": bpf_ns, "events_lost": lost,
                "tracer_cpu_percent_at_100k_faults_per_s": median(&mut cpu),
                "attach_ms": attach, "rounds": ps.len(),
            }));
        }
        // The ratio of the median overheads: steadier than the median of
        // per-round ratios, whose denominators come near 0 in noisy rounds.
        let median_overhead = |mode: Mode| {
            let mut v: Vec<f64> = of(mode).iter().map(|p| p.overhead()).collect();
            (!v.is_empty()).then(|| median(&mut v))
        };
        for (of_mode, over_mode, label) in [
            (
                Mode::Rmaptrace,
                Mode::Bpftrace,
                "default median overhead / one-liner",
            ),
            (
                Mode::RmaptraceEvents,
                Mode::Rmaptrace,
                "--events median overhead / default",
            ),
        ] {
            if let (Some(a), Some(b)) = (median_overhead(of_mode), median_overhead(over_mode)) {
                table.push_str(&format!(
                    "{:<13} {label} median overhead: {:.2}\n",
                    workload,
                    a / b
                ));
            }
        }
        let mut entry = round_ratios(&runs, workload, Mode::Rmaptrace, Mode::RmaptraceCompletion);
        if !entry.is_empty() {
            table.push_str(&format!(
                "{:<13} default overhead / counting-at-completion overhead, per round: {}\n",
                workload,
                spread(&mut entry, 2)
            ));
        }
        let mut events = round_ratios(&runs, workload, Mode::RmaptraceEvents, Mode::Rmaptrace);
        if !events.is_empty() {
            table.push_str(&format!(
                "{:<13} --events overhead / default overhead, per round: {}\n",
                workload,
                spread(&mut events, 2)
            ));
        }
        let mut stacks = round_ratios(&runs, workload, Mode::RmaptraceStacks, Mode::Rmaptrace);
        let mut frames: Vec<f64> = of(Mode::RmaptraceStacks)
            .iter()
            .filter_map(|p| p.sample.stack_frames)
            .collect();
        if !stacks.is_empty() {
            table.push_str(&format!(
                "{:<13} --stacks overhead / default overhead, per round: {} ({} frames per stack)\n",
                workload,
                spread(&mut stacks, 2),
                spread(&mut frames, 1)
            ));
        }
    }
    // Per program, as bpftop shows it: ns per run over every run of the bench.
    table.push_str("\nBPF programs (ns per run, all runs of bench-anon):\n");
    for &mode in &traced {
        let mut per: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for p in runs
            .iter()
            .filter(|p| p.workload == "bench-anon" && p.mode == mode)
        {
            for (name, t, c) in &p.sample.programs {
                let e = per.entry(name.clone()).or_default();
                e.0 += t;
                e.1 += c;
            }
        }
        for (name, (t, c)) in per {
            table.push_str(&format!(
                "  {:<19} {:<20} {:>7.0} ns/run {:>10} runs\n",
                mode.name(),
                name,
                t as f64 / c.max(1) as f64,
                c
            ));
        }
    }
    table.push_str(&format!(
        "\nrmaptrace peak RSS tracing {tracked} faulted VMAs: {rss_mib:.1} MiB\n{} faults per run, {} rounds (each traced run between two untraced ones; ratios are per round), {:.0} s\n",
        faults,
        reps,
        started.elapsed().as_secs_f64()
    ));
    print!("{table}");
    let report = json!({
        "machine": machine(), "faults_per_run": faults, "rows": rows,
        "peak_rss_mib_with_vmas": {"vmas": tracked, "mib": rss_mib},
        "table": table,
    });
    let path = bench_dir().join(report_name);
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}

fn machine() -> String {
    format!(
        "{} CPUs, kernel {}",
        cores(),
        sysctl_get("kernel.osrelease").unwrap_or_default()
    )
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Thread counts for the scaling section: 1, 4 and 16 where there are cores
/// for them, and every core.
fn thread_counts(cores: usize) -> Vec<usize> {
    let mut t: Vec<usize> = [1, 4, 16].into_iter().filter(|&t| t <= cores).collect();
    if !t.contains(&cores) {
        t.push(cores);
    }
    t
}

/// Per-fault overhead with 1..N threads of one process faulting at once:
/// rmaptrace keeps only per-CPU or per-thread state on the fault path, so its
/// cost per fault should not grow with the threads; a single shared key
/// (the one-liner's per-pid count) does.
fn run_threads(bin: &Path, faults: u64, reps: usize) -> Result<()> {
    let modes = [Mode::Rmaptrace, Mode::Bpftrace];
    let mut runs = Vec::new();
    let counts = thread_counts(cores());
    for rep in 0..reps {
        for &t in &counts {
            runs.extend(round(
                bin,
                &format!("bench-threads-{t}"),
                faults,
                &modes,
                rep,
            )?);
        }
    }
    let mut table = format!(
        "{:<8} {:>14} {:>24} {:>24} {:>19}\n",
        "threads", "untraced ns", "rmaptrace overhead ns", "bpftrace overhead ns", "vs bpftrace"
    );
    let mut rows = Vec::new();
    for &t in &counts {
        let w = format!("bench-threads-{t}");
        let of = |mode: Mode| -> (Vec<f64>, Vec<f64>) {
            runs.iter()
                .filter(|p| p.workload == w && p.mode == mode)
                .map(|p| (p.baseline, p.overhead()))
                .unzip()
        };
        let (mut base, mut ours) = of(Mode::Rmaptrace);
        let (_, mut theirs) = of(Mode::Bpftrace);
        let mut ratio = round_ratios(&runs, &w, Mode::Rmaptrace, Mode::Bpftrace);
        table.push_str(&format!(
            "{:<8} {:>14.0} {:>24} {:>24} {:>19}\n",
            t,
            median(&mut base),
            spread(&mut ours, 0),
            spread(&mut theirs, 0),
            spread(&mut ratio, 2)
        ));
        rows.push(json!({
            "threads": t, "untraced_ns_per_fault_per_thread": median(&mut base),
            "rmaptrace_overhead_ns_median": median(&mut ours),
            "bpftrace_overhead_ns_median": median(&mut theirs),
            "ratio_vs_bpftrace_median": (!ratio.is_empty()).then(|| median(&mut ratio)),
        }));
    }
    table.push_str(&format!(
        "ns per fault per thread (wall time x threads / faults), {} faults per run, {} rounds\n",
        faults, reps
    ));
    print!("{table}");
    let path = bench_dir().join("threads.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({"machine": machine(), "rows": rows, "table": table}))?,
    )?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}
