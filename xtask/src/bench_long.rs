//! `cargo xtask bench --long`: what a long trace and a big process cost rmaptrace.
//! - `long`: a 60 s `while :; do /bin/true; done` (RSS at 10 s and at the end,
//!   every child followed, full tables, unknown faults);
//! - `vmas`: a process with 200,000 VMAs, by `--pid`, with `--no-tui` and under
//!   the live screen (peak RSS, summary time after its exit, CPU per tick while it
//!   sleeps against a 1,000-VMA process, events lost);
//! - `forks`: 200 forks of a process with 20,000 mappings (peak RSS);
//! - `churn`: 30 s of one process mapping, splitting and unmapping at one
//!   address (RSS at 10 s and at the end, lifetimes collected while it runs,
//!   full tables, unknown faults).
use crate::bench::{bench_dir, cpu_seconds, wait_for_header};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM), None once it is gone.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The export's summary, and its `process` records' count.
fn read_export(json: &Path) -> Result<(Value, u64)> {
    let (summary, records, _) = read_export_all(json)?;
    Ok((summary, records))
}

/// The export's summary, its `process` records' count and how many mappings
/// its `mappings` records hold.
fn read_export_all(json: &Path) -> Result<(Value, u64, u64)> {
    let file = std::fs::File::open(json).with_context(|| format!("{}", json.display()))?;
    let mut summary = Value::Null;
    let (mut records, mut ended) = (0, 0);
    for line in BufReader::new(file).lines() {
        let line = line?;
        if line.starts_with("{\"type\":\"process\"") {
            records += 1;
        } else if line.starts_with("{\"type\":\"mappings\"") {
            let v: Value = serde_json::from_str(&line)?;
            ended += v["vmas"].as_array().map_or(0, |a| a.len() as u64);
        } else if line.starts_with("{\"type\":\"summary\"") {
            summary = serde_json::from_str(&line)?;
        }
    }
    Ok((summary, records, ended))
}

/// Runs `rmaptrace --no-tui --duration SECS --json JSON -- CMD` and samples
/// its RSS at 10 s, half way and 2 s before the end: (at s, KiB).
fn sampled_run(bin: &Path, secs: u64, json: &Path, cmd: &[&str]) -> Result<Vec<(u64, u64)>> {
    let _ = std::fs::remove_file(json);
    let mut tracer = Command::new(bin)
        .args(["--no-tui", "--duration", &secs.to_string(), "--json"])
        .arg(json)
        .arg("--")
        .args(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = tracer.id();
    wait_for_header(json, Duration::from_secs(60))?;
    let started = Instant::now();
    let mut samples = Vec::new();
    for at in [10, secs / 2, secs - 2] {
        std::thread::sleep(Duration::from_secs(at).saturating_sub(started.elapsed()));
        samples.push((at, status_kib(pid, "VmRSS").unwrap_or(0)));
    }
    tracer.wait()?;
    Ok(samples)
}

fn rss_line(samples: &[(u64, u64)]) -> (String, f64) {
    let rss = |i: usize| mib(samples[i].1);
    let growth = (rss(2) - rss(0)) / rss(0) * 100.0;
    let line = format!(
        "RSS {:.1} MiB at {} s, {:.1} MiB at {} s, {:.1} MiB at {} s ({growth:+.1}% from 10 s; goal within 10%)",
        rss(0),
        samples[0].0,
        rss(1),
        samples[1].0,
        rss(2),
        samples[2].0
    );
    (line, growth)
}

/// A server's buffer churn for `secs`: one process maps, splits and unmaps at
/// one address about 8000 times a second, two lifetimes a cycle, several
/// times the lifetime table's size in all.
fn churn(bin: &Path, secs: u64) -> Result<Value> {
    let json = bench_dir().join("churn.json");
    let wl = bin.to_string_lossy().into_owned();
    let samples = sampled_run(
        bin,
        secs,
        &json,
        &[&wl, "workload", "mmap-churn", "--pages", "100000000"],
    )?;
    let (summary, _, ended) = read_export_all(&json)?;
    let t = &summary["totals"];
    let (rss, growth) = rss_line(&samples);
    println!(
        "churn: {secs} s of mmap/mprotect/unmap at one address: {} lifetimes started, {ended} \
         written while it ran, {} faults, unknown {}, unseen {}, tables full {}, events lost {}",
        summary["counters"]["lifetimes_started"],
        t["faults"]["total"],
        t["by_kind"]["unknown"].as_u64().unwrap_or(0),
        t["unseen"],
        summary["tables_full"],
        summary["events_lost"]
    );
    println!("churn: {rss}");
    Ok(json!({
        "seconds": secs, "lifetimes_started": summary["counters"]["lifetimes_started"],
        "lifetimes_written_while_running": ended,
        "faults": t["faults"]["total"], "unknown": t["by_kind"]["unknown"],
        "unseen": t["unseen"], "tables_full": summary["tables_full"],
        "events_lost": summary["events_lost"],
        "rss_mib": samples.iter().map(|(at, k)| json!({"at_s": at, "mib": mib(*k)})).collect::<Vec<_>>(),
        "rss_growth_percent": growth,
    }))
}

/// Polls the tracer's peak RSS (VmHWM) until it exits; returns it in KiB and
/// when it exited.
pub(crate) fn watch_peak(pid: u32) -> (u64, Instant) {
    let mut peak = 0;
    while let Some(hwm) = status_kib(pid, "VmHWM") {
        peak = peak.max(hwm);
        std::thread::sleep(Duration::from_millis(20));
    }
    (peak, Instant::now())
}

fn long(bin: &Path, secs: u64) -> Result<Value> {
    let json = bench_dir().join("long.json");
    let samples = sampled_run(
        bin,
        secs,
        &json,
        &["sh", "-c", "while :; do /bin/true; done"],
    )?;
    let (summary, records) = read_export(&json)?;
    let t = &summary["totals"];
    let (rss, growth) = rss_line(&samples);
    println!(
        "long: {secs} s of `while :; do /bin/true; done`: {} processes, {} process records, \
         {} faults, unknown {}, unseen {}, tables full {}, events lost {}",
        t["processes"],
        records,
        t["faults"]["total"],
        t["by_kind"]["unknown"].as_u64().unwrap_or(0),
        t["unseen"],
        summary["tables_full"],
        summary["events_lost"]
    );
    println!("long: {rss}");
    Ok(json!({
        "seconds": secs, "processes": t["processes"], "process_records": records,
        "faults": t["faults"]["total"], "unknown": t["by_kind"]["unknown"],
        "unseen": t["unseen"], "tables_full": summary["tables_full"],
        "events_lost": summary["events_lost"],
        "rss_mib": samples.iter().map(|(at, k)| json!({"at_s": at, "mib": mib(*k)})).collect::<Vec<_>>(),
        "rss_growth_percent": growth,
    }))
}

/// A workload that waits for a line before and after its work.
fn start_workload(bin: &Path, name: &str, n: u64) -> Result<Child> {
    Ok(Command::new(bin)
        .args(["workload", name, "--pages", &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?)
}

/// Traces `name` with `n` by --pid, with or without the live screen (under a
/// pty from `script`); returns peak RSS, CPU per tick while the workload sleeps,
/// the time from its exit to rmaptrace's, and the summary.
fn traced_by_pid(bin: &Path, name: &str, n: u64, tui: bool) -> Result<Value> {
    let json = bench_dir().join(format!(
        "{name}-{n}-{}.json",
        if tui { "tui" } else { "text" }
    ));
    let _ = std::fs::remove_file(&json);
    let mut workload = start_workload(bin, name, n)?;
    let args = format!(
        "{} --pid {} --json {}{}",
        bin.display(),
        workload.id(),
        json.display(),
        if tui { "" } else { " --no-tui" }
    );
    let mut tracer = if tui {
        Command::new("script")
            .args(["-qfec", &args, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?
    } else {
        Command::new("sh")
            .args(["-c", &format!("exec {args}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?
    };
    wait_for_header(&json, Duration::from_secs(60))?;
    // The rmaptrace process (under script, its child).
    let rmaptrace = if tui {
        let started = Instant::now();
        loop {
            let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", tracer.id()))
                .unwrap_or_default();
            if let Some(p) = kids.split_whitespace().next().and_then(|p| p.parse().ok()) {
                break p;
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("no rmaptrace under script");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        tracer.id()
    };
    let peak = std::thread::spawn(move || watch_peak(rmaptrace));
    let mut stdin = workload.stdin.take().expect("piped");
    stdin.write_all(b"\n")?;
    let mut lines = BufReader::new(workload.stdout.take().expect("piped")).lines();
    let report: Value = serde_json::from_str(&lines.next().context("no report")??)?;
    // Let the tracer catch up, then measure a sleeping process's ticks.
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, t0) = (cpu_seconds(rmaptrace), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let (cpu1, t1) = (cpu_seconds(rmaptrace), Instant::now());
    let ticks = (t1 - t0).as_secs_f64() / 0.5;
    let ms_per_tick = (cpu1 - cpu0) * 1000.0 / ticks;
    stdin.write_all(b"\n")?;
    drop(stdin);
    workload.wait()?;
    let exited = Instant::now();
    let (peak_kib, gone) = peak.join().expect("watcher");
    let _ = tracer.wait();
    let (summary, records) = read_export(&json)?;
    Ok(json!({
        "workload": name, "n": n, "tui": tui, "report": report,
        "peak_rss_mib": mib(peak_kib),
        "cpu_ms_per_tick_while_sleeping": ms_per_tick,
        "exit_to_summary_s": (gone - exited).as_secs_f64(),
        "events_lost": summary["events_lost"], "tables_full": summary["tables_full"],
        "faults": summary["totals"]["faults"]["total"], "process_records": records,
        "unknown": summary["totals"]["by_kind"].get("unknown").cloned().unwrap_or(json!(0)),
    }))
}

pub fn run(bin: &Path) -> Result<Value> {
    std::fs::create_dir_all(bench_dir())?;
    let long = long(bin, 60)?;
    let mut vmas = Vec::new();
    for (n, tui) in [(1_000, false), (200_000, false), (200_000, true)] {
        let r = traced_by_pid(bin, "bench-vmas", n, tui)?;
        println!(
            "vmas: {n:>7} VMAs {:<8} peak RSS {:>6.1} MiB (goal 64), summary {:.2} s after exit (goal 1), \
             CPU {:.1} ms per tick while it sleeps, events lost {}, faults {} (unknown {}), tables full {}",
            if tui { "tui" } else { "--no-tui" },
            r["peak_rss_mib"].as_f64().unwrap_or(0.0),
            r["exit_to_summary_s"].as_f64().unwrap_or(0.0),
            r["cpu_ms_per_tick_while_sleeping"].as_f64().unwrap_or(0.0),
            r["events_lost"],
            r["faults"],
            r["unknown"],
            r["tables_full"]
        );
        vmas.push(r);
    }
    let forks = traced_by_pid(bin, "bench-forks", 20_000, false)?;
    println!(
        "forks: 200 forks of a process with 20000 mappings: peak RSS {:.1} MiB (goal 64), {} process records",
        forks["peak_rss_mib"].as_f64().unwrap_or(0.0),
        forks["process_records"]
    );
    let churn = churn(bin, 30)?;
    Ok(json!({"long": long, "vmas": vmas, "forks": forks, "churn": churn}))
}
