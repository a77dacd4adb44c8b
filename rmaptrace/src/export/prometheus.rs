//! The Prometheus text exposition (format 0.0.4) of `rmaptrace serve`,
//! written by hand: the counters are computed by the trace model
//! ([`FaultMetrics`]), the histogram from the kernel's own buckets, so a client
//! library's metric types (which observe values one at a time) would only be
//! in the way; what is left is the format's escaping, here.
use std::fmt::Write;

use crate::model::{metrics::FaultMetrics, snapshot::Counters};

/// What the exposition says about the daemon itself.
pub struct BuildInfo<'a> {
    pub version: &'a str,
    pub kernel: &'a str,
    pub backend: &'a str,
    /// Minor faults timed one in this many per CPU (1: every fault).
    pub latency_sample_period: u64,
}

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric. Names chosen by traced processes (comm) and by
/// whoever created a cgroup arrive as the model keeps them; control
/// characters are escaped here as on the screen, then the format's own
/// escapes apply.
pub fn render(m: &FaultMetrics, counters: &Counters, info: &BuildInfo<'_>) -> String {
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "rmaptrace_faults_total",
        "counter",
        "Page faults counted, by mapping kind, fault handler (vm_ops->fault), kernel path, major, process name and cgroup v2 path (names beyond the top ones are \"other\").",
    );
    for (k, n) in m.fault_series() {
        let _ = writeln!(
            out,
            "rmaptrace_faults_total{{kind=\"{}\",handler=\"{}\",path=\"{}\",major=\"{}\",comm=\"{}\",cgroup=\"{}\"}} {n}",
            label(k.fault.kind),
            label(&k.fault.handler),
            label(k.fault.path),
            k.fault.major,
            label(&k.comm),
            label(&k.cgroup)
        );
    }
    family(
        &mut out,
        "rmaptrace_fault_latency_seconds",
        "histogram",
        "Fault latency from the exception's entry to the fault's completion, by mapping kind and fault handler: every major fault, and minor faults one in rmaptrace_latency_sample_period per CPU (a sample: _count is the samples, not the faults).",
    );
    for (k, h) in m.latency_series() {
        let labels = format!(
            "kind=\"{}\",handler=\"{}\"",
            label(k.kind),
            label(&k.handler)
        );
        for (bound, n) in h.cumulative() {
            let le = bound.map_or_else(|| "+Inf".to_string(), |b| seconds(1u64 << b));
            let _ = writeln!(
                out,
                "rmaptrace_fault_latency_seconds_bucket{{{labels},le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "rmaptrace_fault_latency_seconds_sum{{{labels}}} {}",
            seconds(h.sum_ns)
        );
        let _ = writeln!(
            out,
            "rmaptrace_fault_latency_seconds_count{{{labels}}} {}",
            h.count
        );
    }
    family(
        &mut out,
        "rmaptrace_unseen_faults_total",
        "counter",
        "Faults the kernel counted (minflt + majflt) that rmaptrace did not see (get_user_pages faults, faults before a process was followed), summed over processes.",
    );
    let _ = writeln!(out, "rmaptrace_unseen_faults_total {}", m.unseen());
    family(
        &mut out,
        "rmaptrace_events_lost_total",
        "counter",
        "Ring buffer records lost (the buffer was full); fault counts are kept in the kernel and lose nothing.",
    );
    let _ = writeln!(out, "rmaptrace_events_lost_total {}", counters.events_lost);
    family(
        &mut out,
        "rmaptrace_table_full_total",
        "counter",
        "Times a kernel table was full: what could not be stored is counted (faults as kind \"unknown\"), never dropped.",
    );
    for (table, n) in counters.table_full_counts() {
        let _ = writeln!(out, "rmaptrace_table_full_total{{table=\"{table}\"}} {n}");
    }
    family(
        &mut out,
        "rmaptrace_processes_followed",
        "gauge",
        "Processes with faults whose counters are held until they exit.",
    );
    let _ = writeln!(out, "rmaptrace_processes_followed {}", m.processes());
    family(
        &mut out,
        "rmaptrace_latency_sample_period",
        "gauge",
        "Minor faults are timed one in this many per CPU (1: every fault); major faults every one.",
    );
    let _ = writeln!(
        out,
        "rmaptrace_latency_sample_period {}",
        info.latency_sample_period
    );
    family(
        &mut out,
        "rmaptrace_build_info",
        "gauge",
        "The rmaptrace version, the kernel release and the backend that counts faults.",
    );
    let _ = writeln!(
        out,
        "rmaptrace_build_info{{version=\"{}\",kernel=\"{}\",backend=\"{}\"}} 1",
        label(info.version),
        label(info.kernel),
        label(info.backend)
    );
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", help_text(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value: control characters escaped as on the screen, then
/// backslash, double quote and newline as the format wants them.
fn label(v: &str) -> String {
    let visible = crate::text::visible(v);
    let mut s = String::with_capacity(visible.len());
    for c in visible.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text: backslash and newline escaped.
fn help_text(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Nanoseconds as seconds, in the shortest form that reads back exactly.
fn seconds(ns: u64) -> String {
    format!("{}", ns as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        small_map::SmallMap,
        summary::{FaultCounts, ProcessSummary, VmaSummary},
    };

    fn metrics_with(comm: &str, cgroup: &str) -> FaultMetrics {
        let mut m = FaultMetrics::new(50);
        let mut paths = SmallMap::default();
        *paths.entry_or_default("do_anonymous_page") += 3;
        let v = VmaSummary {
            kind: "anon",
            faults: 3,
            minor: 3,
            paths,
            latency_hist: crate::model::snapshot::Hist::from_buckets(&[(8, 3)]),
            latency_sum_ns: 3000,
            latency_ns: crate::model::summary::Latency {
                samples: 3,
                ..Default::default()
            },
            ..VmaSummary::default()
        };
        let p = ProcessSummary {
            pid: 7,
            comm: comm.into(),
            cgroup: Some(cgroup.into()),
            faults: FaultCounts {
                total: 3,
                minor: 3,
                major: 0,
            },
            ..ProcessSummary::default()
        };
        m.exited(
            &p,
            crate::model::metrics::Mapped::of(&mut std::iter::once(v)),
        );
        m.settle(0);
        m
    }

    fn info() -> BuildInfo<'static> {
        BuildInfo {
            version: "0.1.0",
            kernel: "6.18.0",
            backend: "tracepoint",
            latency_sample_period: 16,
        }
    }

    #[test]
    fn hostile_names_cannot_break_out_of_their_label() {
        let m = metrics_with("a\"b\\c\n}\u{1b}[2J x=\"1", "/x\"y");
        let text = render(&m, &Counters::default(), &info());
        let line = text
            .lines()
            .find(|l| l.starts_with("rmaptrace_faults_total{"))
            .unwrap();
        assert_eq!(
            line,
            r#"rmaptrace_faults_total{kind="anon",handler="",path="do_anonymous_page",major="false",comm="a\"b\\c\\x0a}\\x1b[2J x=\"1",cgroup="/x\"y"} 3"#
        );
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn a_histogram_is_cumulative_and_ends_with_inf() {
        let m = metrics_with("app", "/");
        let text = render(&m, &Counters::default(), &info());
        let buckets: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("rmaptrace_fault_latency_seconds_bucket"))
            .collect();
        assert_eq!(buckets.len(), 24);
        assert!(buckets[0].contains("le=\"0.000000128\""), "{}", buckets[0]);
        assert!(buckets[23].ends_with("le=\"+Inf\"} 3"), "{}", buckets[23]);
        assert!(text.contains(
            "rmaptrace_fault_latency_seconds_sum{kind=\"anon\",handler=\"\"} 0.000003\n"
        ));
        assert!(
            text.contains("rmaptrace_fault_latency_seconds_count{kind=\"anon\",handler=\"\"} 3\n")
        );
    }

    #[test]
    fn every_table_has_a_series_from_the_start() {
        let text = render(&FaultMetrics::new(50), &Counters::default(), &info());
        assert!(text.contains("rmaptrace_table_full_total{table=\"VMAS\"} 0\n"));
        assert!(text.contains("rmaptrace_events_lost_total 0\n"));
        assert!(text.contains("rmaptrace_latency_sample_period 16\n"));
        assert!(text.contains(
            "rmaptrace_build_info{version=\"0.1.0\",kernel=\"6.18.0\",backend=\"tracepoint\"} 1\n"
        ));
    }
}
