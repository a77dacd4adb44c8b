//! The readable end-of-trace summary (`--no-tui`), in the spirit of `strace -c`.
use std::fmt::Write;

use crate::model::summary::Summary;

fn ns(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 1_000_000 => format!("{:.1}ms", v as f64 / 1e6),
        Some(v) if v >= 1_000 => format!("{:.1}us", v as f64 / 1e3),
        Some(v) => format!("{v}ns"),
    }
}

/// Renders the summary; `max_vmas` rows per process, the busiest first.
pub fn render(s: &Summary, max_vmas: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rmaptrace: {:.2}s, {} process(es), paths {}, events lost {}",
        s.duration_ns as f64 / 1e9,
        s.processes.len(),
        s.paths_source,
        s.events_lost
    );
    for p in &s.processes {
        let kernel = match &p.kernel {
            Some(k) => format!("kernel minflt {} majflt {}", k.minflt, k.majflt),
            None => "kernel counts unknown".into(),
        };
        let unseen = p
            .unseen
            .map(|u| format!(", unseen {u}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\n{} {}: {} faults ({} minor, {} major); {kernel}{unseen}",
            p.pid, p.comm, p.faults.total, p.faults.minor, p.faults.major
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
                "  {:<29} {:<4} {:<7} {:>8} {:>6} {:>8} {:>8}  {:<24} FILE | PATHS",
                "VMA", "PROT", "KIND", "FAULTS", "MAJOR", "P50", "P99", "HANDLER"
            );
        }
        for v in vmas.iter().take(max_vmas) {
            let handler = match (&v.handler, &v.module) {
                (Some(h), Some(m)) => format!("{h} [{m}]"),
                (Some(h), None) => h.clone(),
                _ => "-".into(),
            };
            let paths: Vec<String> = v.paths.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(
                out,
                "  {:<29} {:<4} {:<7} {:>8} {:>6} {:>8} {:>8}  {:<24} {} | {}",
                format!("{}-{}", v.start, v.end),
                v.prot,
                v.kind,
                v.faults,
                v.major,
                ns(v.latency_ns.p50),
                ns(v.latency_ns.p99),
                handler,
                v.file.as_deref().unwrap_or(""),
                paths.join(", ")
            );
        }
        if vmas.len() > max_vmas {
            let _ = writeln!(
                out,
                "  ... {} more VMAs in the JSON export",
                vmas.len() - max_vmas
            );
        }
    }
    if !s.limits.is_empty() {
        let _ = writeln!(out, "\nlimits of this backend:");
        for l in &s.limits {
            let _ = writeln!(out, "  - {l}");
        }
    }
    out
}
