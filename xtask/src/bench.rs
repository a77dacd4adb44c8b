//! `cargo xtask bench`: what tracing costs per fault, rmaptrace against the peer
//! anchor (a bpftrace count-by-pid one-liner), measured in the same run,
//! alternating, with medians and ranges. Prints a table and writes
//! target/bench/bench.json. Not a test: the machines are noisy, so it reports
//! numbers and ratios and asserts nothing.
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
    RmaptraceEvents,
    Bpftrace,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode::Untraced,
        Mode::Rmaptrace,
        Mode::RmaptraceEvents,
        Mode::Bpftrace,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Rmaptrace => "rmaptrace",
            Mode::RmaptraceEvents => "rmaptrace --events",
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

fn start_tracer(mode: Mode, bin: &Path) -> Result<Option<Tracer>> {
    let started = Instant::now();
    match mode {
        Mode::Untraced => Ok(None),
        Mode::Rmaptrace | Mode::RmaptraceEvents => {
            let json = bench_dir().join("run.json");
            let _ = std::fs::remove_file(&json);
            let mut cmd = Command::new(bin);
            cmd.args(["--no-tui", "--json"]).arg(&json);
            if mode == Mode::RmaptraceEvents {
                cmd.arg("--events");
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

fn measure(mode: Mode, bin: &Path, workload: &str, faults: u64) -> Result<Sample> {
    let tracer = start_tracer(mode, bin)?;
    let pid = tracer.as_ref().map(|t| t.child.id());
    let before_bpf = bpf_stats();
    let before_cpu = pid.map(cpu_seconds).unwrap_or(0.0);
    let t0 = Instant::now();
    let ns = run_workload(bin, workload, faults)?;
    let wall_s = t0.elapsed().as_secs_f64();
    let after_cpu = pid.map(cpu_seconds).unwrap_or(0.0);
    let after_bpf = bpf_stats();
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
    let time: u64 = programs.iter().map(|(_, t, _)| t).sum();
    let mut sample = Sample {
        ns_per_fault: ns,
        bpf_ns_per_fault: (pid.is_some() && time > 0).then(|| time as f64 / faults as f64),
        programs,
        tracer_cpu_s: after_cpu - before_cpu,
        wall_s,
        faults,
        ..Default::default()
    };
    if let Some(mut t) = tracer {
        sample.attach_ms = Some(t.attach_ms);
        unsafe { libc::kill(t.child.id() as i32, libc::SIGINT) };
        t.child.wait()?;
        if let Some(json) = t.json {
            let text = std::fs::read_to_string(json)?;
            let summary: Value = serde_json::from_str(text.lines().last().unwrap_or("{}"))?;
            sample.events_lost = summary["events_lost"].as_u64();
        }
    }
    Ok(sample)
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
/// not in rmaptrace's rusage) a process that faults `vmas` separate VMAs.
fn rss_with_vmas(bin: &Path, vmas: u64) -> Result<(f64, u64)> {
    let json = bench_dir().join("vmas.json");
    let _ = std::fs::remove_file(&json);
    let mut workload = Command::new(bin)
        .args(["workload", "bench-vmas", "--pages", &vmas.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let tracer = Command::new(bin)
        .args(["--no-tui", "--json"])
        .arg(&json)
        .args(["--pid", &workload.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_for_header(&json, Duration::from_secs(60))?;
    let mut stdin = workload.stdin.take().expect("piped");
    stdin.write_all(b"\n")?;
    let mut lines = BufReader::new(workload.stdout.take().expect("piped")).lines();
    let _ready = lines.next();
    // Let a few snapshots see all VMAs before the process ends.
    std::thread::sleep(Duration::from_secs(3));
    stdin.write_all(b"\n")?;
    drop(stdin);
    workload.wait()?;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(tracer.id() as i32, &mut status, 0, &mut usage) };
    let text = std::fs::read_to_string(&json)?;
    let tracked = text
        .lines()
        .filter(|l| l.starts_with("{\"type\":\"process\""))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|p| p["vmas"].as_array().map_or(0, |v| v.len() as u64))
        .sum();
    Ok((usage.ru_maxrss as f64 / 1024.0, tracked))
}

pub fn run(faults: u64, reps: usize, sections: &[String]) -> Result<()> {
    let bin = crate::build()?;
    std::fs::create_dir_all(bench_dir())?;
    let old_stats = sysctl_get("kernel.bpf_stats_enabled");
    let old_maps = sysctl_get("vm.max_map_count");
    sysctl_set("kernel.bpf_stats_enabled", "1")?;
    sysctl_set("vm.max_map_count", "262144")?;
    let result = (|| {
        if sections.iter().any(|s| s == "faults") {
            run_all(&bin, faults, reps)?;
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

fn run_all(bin: &Path, faults: u64, reps: usize) -> Result<()> {
    let started = Instant::now();
    let mut samples: Vec<(String, Mode, Sample)> = Vec::new();
    for rep in 0..reps {
        for workload in WORKLOADS {
            // Rotate the order each repetition so drift hits every mode alike.
            for i in 0..Mode::ALL.len() {
                let mode = Mode::ALL[(i + rep) % Mode::ALL.len()];
                let s = measure(mode, bin, workload, faults)?;
                eprintln!(
                    "bench: rep {rep} {workload:<13} {:<19} {:>7.0} ns/fault",
                    mode.name(),
                    s.ns_per_fault
                );
                samples.push((workload.to_string(), mode, s));
            }
        }
    }
    let (rss_mib, tracked) = rss_with_vmas(bin, 100_000)?;

    let mut rows = Vec::new();
    let mut table = String::new();
    table.push_str(&format!(
        "{:<13} {:<19} {:>9} {:>15} {:>9} {:>11} {:>11} {:>6} {:>10} {:>9}\n",
        "workload",
        "mode",
        "ns/fault",
        "min-max",
        "overhead",
        "vs bpftrace",
        "bpf ns/flt",
        "lost",
        "cpu%@100k",
        "attach ms"
    ));
    for workload in WORKLOADS {
        let stats = |mode: Mode| -> Vec<Sample> {
            samples
                .iter()
                .filter(|(w, m, _)| w == workload && *m == mode)
                .map(|(_, _, s)| s.clone())
                .collect()
        };
        let med = |mode: Mode| {
            median(
                &mut stats(mode)
                    .iter()
                    .map(|s| s.ns_per_fault)
                    .collect::<Vec<_>>(),
            )
        };
        let base = med(Mode::Untraced);
        let anchor = med(Mode::Bpftrace) - base;
        for mode in Mode::ALL {
            let ss = stats(mode);
            let mut ns: Vec<f64> = ss.iter().map(|s| s.ns_per_fault).collect();
            let m = median(&mut ns);
            let (lo, hi) = (ns[0], ns[ns.len() - 1]);
            let overhead = m - base;
            let ratio = (mode != Mode::Untraced).then(|| overhead / anchor);
            let bpf: Vec<f64> = ss.iter().filter_map(|s| s.bpf_ns_per_fault).collect();
            let bpf_ns = (!bpf.is_empty()).then(|| median(&mut bpf.clone()));
            let lost: Option<u64> = ss.iter().filter_map(|s| s.events_lost).max();
            // The tracer's CPU over the run, scaled to a 100k faults/s load.
            let cpu: Vec<f64> = ss
                .iter()
                .map(|s| {
                    100.0 * s.tracer_cpu_s / s.wall_s * (100_000.0 / (s.faults as f64 / s.wall_s))
                })
                .collect();
            let cpu = (mode != Mode::Untraced).then(|| median(&mut cpu.clone()));
            let attach: Vec<f64> = ss.iter().filter_map(|s| s.attach_ms).collect();
            let attach = (!attach.is_empty()).then(|| median(&mut attach.clone()));
            let opt =
                |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or("-".into());
            table.push_str(&format!(
                "{:<13} {:<19} {:>9.0} {:>15} {:>9.0} {:>11} {:>11} {:>6} {:>10} {:>9}\n",
                workload,
                mode.name(),
                m,
                format!("{lo:.0}-{hi:.0}"),
                overhead,
                opt(ratio, 2),
                opt(bpf_ns, 0),
                lost.map(|l| l.to_string()).unwrap_or("-".into()),
                opt(cpu, 2),
                opt(attach, 0),
            ));
            rows.push(json!({
                "workload": workload, "mode": mode.name(), "ns_per_fault_median": m,
                "ns_per_fault_min": lo, "ns_per_fault_max": hi, "overhead_ns": overhead,
                "ratio_vs_bpftrace": ratio, "bpf_ns_per_fault": bpf_ns, "events_lost": lost,
                "tracer_cpu_percent_at_100k_faults_per_s": cpu, "attach_ms": attach,
                "runs": ss.len(),
            }));
        }
    }
    // Per program, as bpftop shows it: ns per run over every run of the bench.
    table.push_str("\nBPF programs (ns per run, all runs of bench-anon):\n");
    for mode in [Mode::Rmaptrace, Mode::RmaptraceEvents, Mode::Bpftrace] {
        let mut per: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for (_, _, s) in samples
            .iter()
            .filter(|(w, m, _)| w == "bench-anon" && *m == mode)
        {
            for (name, t, c) in &s.programs {
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
        "\nrmaptrace peak RSS tracing {tracked} faulted VMAs: {rss_mib:.1} MiB\n{} faults per run, {} repetitions, {:.0} s\n",
        faults,
        samples.len() / (WORKLOADS.len() * Mode::ALL.len()),
        started.elapsed().as_secs_f64()
    ));
    print!("{table}");
    let machine = format!(
        "{} CPUs, kernel {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        sysctl_get("kernel.osrelease").unwrap_or_default()
    );
    let report = json!({
        "machine": machine, "faults_per_run": faults, "rows": rows,
        "peak_rss_mib_with_vmas": {"vmas": tracked, "mib": rss_mib},
        "table": table,
    });
    let path = bench_dir().join("bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}
