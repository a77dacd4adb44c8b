//! The readable end-of-trace summary (`--no-tui`), in the spirit of `strace -c`.
//! Names chosen by traced processes are printed escaped: they may hold
//! terminal control sequences.
use std::fmt::Write;

use crate::{model::summary::Summary, text::visible};

/// What the end-of-trace table shows: the busiest processes, and the busiest
/// mappings of each (the export has everything).
pub const TABLE_PROCESSES: usize = 20;
pub const TABLE_VMAS: usize = 20;

fn ns(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 1_000_000 => format!("{:.1}ms", v as f64 / 1e6),
        Some(v) if v >= 1_000 => format!("{:.1}us", v as f64 / 1e3),
        Some(v) => format!("{v}ns"),
    }
}

/// Renders the summary: the first line says what may be missing (events lost,
/// full tables) and why the trace ended; then the first `max_procs` processes
/// (the summary lists the busiest first) with `max_vmas` rows each, the busiest
/// first.
pub fn render(s: &Summary, max_procs: usize, max_vmas: usize) -> String {
    let mut out = String::new();
    let t = &s.totals;
    let full: Vec<String> = s
        .tables_full
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "rmaptrace: {:.2}s, {} process(es) ({} exited), {} faults, paths {}, events lost {}, tables full: {}{}",
        s.duration_ns as f64 / 1e9,
        t.processes,
        t.exited,
        t.faults.total,
        s.paths_source,
        s.events_lost,
        if full.is_empty() { "none".into() } else { full.join(", ") },
        s.end_reason
            .as_deref()
            .map(|r| format!("; ended: {r}"))
            .unwrap_or_default()
    );
    if let Some(c) = &s.call_sites {
        let _ = writeln!(
            out,
            "call sites: {} faults with a user stack ({} distinct stacks now), {} of them truncated at {} frames, {} without (stack not stored), {} not counted by stack (table full)",
            c.faults,
            c.distinct,
            c.truncated,
            c.depth,
            s.counters.stacks_lost,
            s.counters.stack_rows_full
        );
    }
    let procs = &s.processes[..s.processes.len().min(max_procs)];
    for p in procs {
        let kernel = match &p.kernel {
            Some(k) => format!("kernel minflt {} majflt {}", k.minflt, k.majflt),
            None => "kernel counts unknown".into(),
        };
        let unseen = p
            .unseen
            .map(|u| format!(", unseen {u}"))
            .unwrap_or_default();
        let cgroup = p
            .cgroup_below_root()
            .map(|c| format!(" in cgroup {}", visible(c)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\n{} {}{cgroup}: {} faults ({} minor, {} major); {kernel}{unseen}",
            p.pid,
            visible(&p.comm),
            p.faults.total,
            p.faults.minor,
            p.faults.major
        );
        let kinds: Vec<String> = p.by_kind.iter().map(|(k, v)| format!("{k} {v}")).collect();
        if !kinds.is_empty() {
            let _ = writeln!(out, "  by kind: {}", kinds.join(", "));
        }
        let mut vmas: Vec<_> = p.vmas.iter().collect();
        vmas.sort_by_key(|v| std::cmp::Reverse(v.faults));
        if !vmas.is_empty() {
            let _ = writeln!(
                out,
                "  {:<29} {:<4} {:<7} {:>8} {:>6} {:>8} {:>8}  {:<22} {:<24} FILE | PATHS",
                "VMA", "PROT", "KIND", "FAULTS", "MAJOR", "P50", "P99", "SETUP", "HANDLER"
            );
        }
        for v in vmas.iter().take(max_vmas) {
            let handler = function(v.handler.as_deref(), v.module.as_deref());
            let setup = v.setup.as_ref().map_or_else(
                || "-".into(),
                |s| function(s.by.as_deref(), s.by_module.as_deref()),
            );
            let paths: Vec<String> = v.paths.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(
                out,
                "  {:<29} {:<4} {:<7} {:>8} {:>6} {:>8} {:>8}  {:<22} {:<24} {} | {}",
                format!("{}-{}", v.start, v.end),
                v.prot,
                v.kind,
                v.faults,
                v.major,
                ns(v.latency_ns.p50),
                ns(v.latency_ns.p99),
                setup,
                handler,
                visible(v.file.as_deref().unwrap_or("")),
                paths.join(", ")
            );
        }
        let more = vmas.len().saturating_sub(max_vmas) + p.vmas_dropped;
        if more > 0 {
            let _ = writeln!(out, "  ... {more} more VMAs in the JSON export");
        }
        if p.vmas_ended > 0 {
            let _ = writeln!(
                out,
                "  ... {} VMAs that ended while it ran (in `mappings` records of the JSON export)",
                p.vmas_ended
            );
        }
    }
    let shown: u64 = procs.iter().map(|p| p.faults.total).sum();
    let hidden = t.processes.saturating_sub(procs.len() as u64);
    if hidden > 0 {
        let _ = writeln!(
            out,
            "\n... {hidden} more process(es) with {} faults: every process is a `process` record of the JSON export (--json)",
            t.faults.total.saturating_sub(shown)
        );
    }
    if !s.limits.is_empty() {
        let _ = writeln!(out, "\nlimits of this backend:");
        for l in &s.limits {
            let _ = writeln!(out, "  - {l}");
        }
    }
    out
}

/// A kernel function as `name [module]`, names escaped; `-` for none.
fn function(name: Option<&str>, module: Option<&str>) -> String {
    match (name, module) {
        (Some(h), Some(m)) => format!("{} [{}]", visible(h), visible(m)),
        (Some(h), None) => visible(h).into_owned(),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::summary::{FaultCounts, ProcessSummary};

    fn one(cgroup: Option<&str>) -> String {
        let s = Summary {
            processes: vec![ProcessSummary {
                pid: 7,
                comm: "app".into(),
                cgroup: cgroup.map(str::to_string),
                faults: FaultCounts {
                    total: 3,
                    minor: 3,
                    major: 0,
                },
                ..ProcessSummary::default()
            }],
            ..Summary::default()
        };
        render(&s, 20, 20)
    }

    #[test]
    fn a_process_line_names_its_cgroup_unless_it_is_the_root() {
        assert!(one(Some("/system.slice/app.service"))
            .contains("\n7 app in cgroup /system.slice/app.service: 3 faults (3 minor, 0 major)"));
        assert!(one(Some("/")).contains("\n7 app: 3 faults"));
        assert!(one(None).contains("\n7 app: 3 faults"));
        assert!(one(Some("/x\u{1b}[2J")).contains("in cgroup /x\\x1b[2J:"));
    }
}
