use super::*;
use serde_json::{json, Value};

fn header() -> Value {
    json!({"type":"header","format":FORMAT_VERSION,"version":"0.1.0","kernel":"6.18.44",
           "backend":{"backend":"tracepoint","paths":"derived","rows":[]},
           "limits":["get_user_pages faults are unseen"],"start_ts_ns":1_000_000_000u64})
}

fn vma(start: u64, kind: &str, faults: u64, major: u64) -> Value {
    json!({"start":format!("{start:#x}"),"end":format!("{:#x}", start + 0x1000),"kind":kind,
           "handler":null,"module":null,"file":null,"device":null,"prot":"rw-p","origin":null,
           "setup":null,"life":start,"first_seen_ns":1_500_000_000u64,"mapped_ns":null,
           "unmapped_ns":null,"faults":faults,"minor":faults - major,"major":major,
           "paths":{"do_anonymous_page":faults},
           "latency_ns":{"p50":2048,"p99":5120,"max":9267,"samples":faults},"handler_time":null})
}

fn process(pid: u32, comm: &str, vmas: Vec<Value>) -> Value {
    let mut by_kind = serde_json::Map::new();
    let (mut total, mut major) = (0, 0);
    for v in &vmas {
        let n = v["faults"].as_u64().unwrap();
        total += n;
        major += v["major"].as_u64().unwrap();
        let k = v["kind"].as_str().unwrap().to_string();
        let before = by_kind.get(&k).and_then(Value::as_u64).unwrap_or(0);
        by_kind.insert(k, json!(before + n));
    }
    json!({"type":"process","pid":pid,"comm":comm,"exited":true,
           "faults":{"total":total,"minor":total - major,"major":major},"by_kind":by_kind,
           "kernel":{"minflt":total + 1,"majflt":major},"unseen":1,"resolved_later":0,
           "vmas_ended":0,"ended_late":0,"vmas":vmas})
}

fn summary_line(procs: &[&Value]) -> Value {
    let mut totals = json!({"processes":0,"exited":0,"faults":{"total":0,"minor":0,"major":0},
                            "by_kind":{},"kernel":{"minflt":0,"majflt":0},"unseen":0,"resolved_later":0});
    for p in procs {
        totals["processes"] = json!(totals["processes"].as_u64().unwrap() + 1);
        totals["exited"] = json!(totals["exited"].as_u64().unwrap() + 1);
        for f in ["total", "minor", "major"] {
            totals["faults"][f] =
                json!(totals["faults"][f].as_u64().unwrap() + p["faults"][f].as_u64().unwrap());
        }
        for (k, n) in p["by_kind"].as_object().unwrap() {
            let before = totals["by_kind"][k].as_u64().unwrap_or(0);
            totals["by_kind"][k] = json!(before + n.as_u64().unwrap());
        }
    }
    json!({"type":"summary","duration_ns":2_500_000_000u64,"events_lost":0,"backend":"tracepoint",
           "paths_source":"derived","counters":{"events_lost":0},"tables_full":{},
           "limits":["get_user_pages faults are unseen"],"end_reason":"all traced processes exited",
           "totals":totals})
}

fn ndjson(lines: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        serde_json::to_writer(&mut out, l).unwrap();
        out.push(b'\n');
    }
    out
}

fn read_bytes(bytes: &[u8], filters: &Filters) -> Result<Report> {
    read_from(bytes, "t.ndjson", filters)
}

fn two_processes() -> Vec<Value> {
    let a = process(
        10,
        "alpha",
        vec![vma(0x1000, "anon", 5, 0), vma(0x9000, "file", 3, 2)],
    );
    let b = process(20, "beta", vec![vma(0x2000, "anon", 7, 0)]);
    let s = summary_line(&[&a, &b]);
    vec![header(), a, b, s]
}

#[test]
fn processes_are_sorted_as_the_live_trace_sorts_them() {
    let r = read_bytes(&ndjson(&two_processes()), &Filters::default()).unwrap();
    let pids: Vec<u32> = r.summary.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [10, 20], "8 faults before 7");
    assert!(r.notes.is_empty());
    let text = r.render();
    assert!(
        text.starts_with("rmaptrace: 2.50s, 2 process(es) (2 exited), 15 faults, paths derived"),
        "{text}"
    );
    assert!(
        text.contains("; ended: all traced processes exited\n"),
        "{text}"
    );
    let p = &r.summary.processes[0];
    assert_eq!(p.vmas.len(), 2);
    assert_eq!((p.vmas[0].start_addr, p.vmas[0].key), (0x1000, 0x1000));
    assert_eq!(p.vmas[0].paths.get("do_anonymous_page"), Some(&5));
}

/// What the live screen's tests draw, exported as the trace writes it and
/// read back: the same table.
#[test]
fn an_export_read_back_prints_the_table_of_its_trace() {
    let mut live = crate::tui::fake::summary();
    for p in &mut live.processes {
        p.vmas.sort_by_key(|v| v.start_addr);
        p.vmas_dropped = 0;
    }
    live.end_reason = Some("--duration reached".into());
    live.totals = Totals::default();
    for p in &live.processes {
        live.totals.add(p);
    }
    let mut lines = vec![header()];
    for p in &live.processes {
        let mut rec = serde_json::to_value(p).unwrap();
        rec["type"] = json!("process");
        rec["vmas"] = serde_json::to_value(&p.vmas).unwrap();
        lines.push(rec);
    }
    lines.push(serde_json::to_value(&live).unwrap());
    let r = read_bytes(&ndjson(&lines), &Filters::default()).unwrap();
    assert_eq!(
        r.render(),
        table::render(&live, TABLE_PROCESSES, TABLE_VMAS),
        "the table of the trace"
    );
}

#[test]
fn hostile_names_are_escaped_and_matched_as_exported() {
    // A comm of bytes "ev" ESC "[2J" 0xff, as the export writes it.
    let comm = from_bytes(b"ev\x1b[2J\xff");
    let mut v = vma(0x1000, "anon", 4, 0);
    v["file"] = json!("/tmp/\u{1b}]0;owned\u{7}");
    v["kind"] = json!("x\u{1b}[31m");
    v["paths"] = json!({"do_\u{1b}[2Jpage": 4});
    let p = process(7, &comm, vec![v]);
    let mut s = summary_line(&[&p]);
    s["end_reason"] = json!("gone\u{1b}[H");
    s["limits"] = json!(["\u{9b}31m"]);
    let bytes = ndjson(&[header(), p, s]);
    assert!(
        String::from_utf8_lossy(&bytes).contains(r#""comm":"ev\u001b[2J\\xff""#),
        "the fixture holds the comm as documented"
    );
    let r = read_bytes(&bytes, &Filters::default()).unwrap();
    let text = r.render();
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "nothing reaches the terminal unescaped: {text:?}"
    );
    assert!(text.contains(r"7 ev\x1b[2J\xff: 4 faults"), "{text}");
    assert!(text.contains(r"/tmp/\x1b]0;owned\x07"), "{text}");
    assert!(text.contains(r"x\x1b[31m"), "{text}");
    assert!(text.contains(r"ended: gone\x1b[H"), "{text}");
    // --comm takes the name's bytes, compared as the export writes them.
    let args = ReportArgs {
        file: "t".into(),
        pids: vec![],
        comms: vec![std::ffi::OsStr::from_bytes(b"ev\x1b[2J\xff").to_owned()],
        kinds: vec![],
        tui: false,
    };
    let r = read_bytes(&bytes, &Filters::from_args(&args)).unwrap();
    assert_eq!(r.summary.processes.len(), 1);
    let first = r.render().lines().next().unwrap().to_string();
    assert!(
        first.ends_with(r"; filtered: --comm ev\x1b[2J\xff"),
        "{first}"
    );
}

#[test]
fn a_trace_without_its_summary_is_reported_from_its_process_records() {
    let mut lines = two_processes();
    lines.pop();
    // A third process that was still running: mmap records, no process record.
    lines.push(json!({"type":"mmap","ts_ns":3_000_000_000u64,"pid":30,"tid":30,"comm":"gamma",
                      "op":"mmap","addr":"0x1000","len":4096,"prot":"rw-","flags":[],"fd":-1,"path":null}));
    let mut bytes = ndjson(&lines);
    // Killed while writing its next line.
    bytes.extend_from_slice(br#"{"type":"process","pid":30,"comm":"gam"#);
    let r = read_bytes(&bytes, &Filters::default()).unwrap();
    let text = r.render();
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("rmaptrace: 2.00s, 2 process(es) (2 exited), 15 faults, paths derived"),
        "{first}"
    );
    assert!(first.contains("no summary line"), "{first}");
    assert!(
        first.contains("derived from the process records"),
        "{first}"
    );
    assert!(
        first.contains("1 traced process(es) without a process record"),
        "{first}"
    );
    assert!(first.contains("last line cut short"), "{first}");
    assert_eq!(r.summary.backend, "tracepoint");
    assert_eq!(r.summary.limits, ["get_user_pages faults are unseen"]);
}

#[test]
fn the_type_is_read_from_the_start_of_a_line_or_else_from_the_whole_of_it() {
    assert_eq!(
        record_type(br#"{"type":"process","pid":1}"#),
        Some("process")
    );
    assert_eq!(record_type(br#"{"pid":1,"type":"process"}"#), None);
    assert_eq!(record_type(br#"{"type":"pro\u0063ess"}"#), None);
    // Written by hand (here: keys in alphabetical order), the type
    // elsewhere: read all the same, as every other test here shows.
    let line = ndjson(&two_processes()[1..2]);
    assert!(line.starts_with(br#"{"by_kind""#));
    assert_eq!(
        read_bytes(&ndjson(&two_processes()), &Filters::default())
            .unwrap()
            .summary
            .processes
            .len(),
        2
    );
}

#[test]
fn a_malformed_line_is_named_by_its_number() {
    let mut bytes = ndjson(&two_processes()[..2]);
    bytes.extend_from_slice(b"{\"type\":\"process\",\"pid\":\n");
    bytes.extend_from_slice(&ndjson(&two_processes()[2..]));
    let e = read_bytes(&bytes, &Filters::default()).err().unwrap();
    let e = format!("{e:#}");
    assert!(
        e.starts_with("t.ndjson:3: not a valid export record"),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
    // A record of the wrong shape, too.
    let mut lines = two_processes();
    lines[1]["pid"] = json!("ten");
    let e = format!(
        "{:#}",
        read_bytes(&ndjson(&lines), &Filters::default())
            .err()
            .unwrap()
    );
    assert!(e.starts_with("t.ndjson:2: "), "{e}");
}

#[test]
fn only_exports_of_this_format_are_read() {
    let mut lines = two_processes();
    lines[0]["format"] = json!(1);
    let e = format!(
        "{:#}",
        read_bytes(&ndjson(&lines), &Filters::default())
            .err()
            .unwrap()
    );
    assert!(
        e.starts_with(
            "t.ndjson: an rmaptrace export of format 1, and this rmaptrace reads format 2"
        ),
        "{e}"
    );
    assert!(e.contains("version 0.1.0"), "{e}");
    lines[0]["format"] = json!(null);
    let e = format!(
        "{:#}",
        read_bytes(&ndjson(&lines), &Filters::default())
            .err()
            .unwrap()
    );
    assert!(e.contains("of format none"), "{e}");

    let e = format!(
        "{:#}",
        read_bytes(&ndjson(&two_processes()[1..]), &Filters::default())
            .err()
            .unwrap()
    );
    assert!(
        e.contains("not an rmaptrace export") && e.contains("not a header"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        read_bytes(b"hello\n", &Filters::default()).err().unwrap()
    );
    assert!(e.contains("not an rmaptrace export"), "{e}");
    let e = format!("{:#}", read_bytes(b"", &Filters::default()).err().unwrap());
    assert!(e.contains("is empty"), "{e}");
    let e = format!(
        "{:#}",
        read(Path::new("/nonexistent/x.ndjson"), &Filters::default())
            .err()
            .unwrap()
    );
    assert!(e.starts_with("cannot read /nonexistent/x.ndjson: "), "{e}");
    assert!(e.contains("rmaptrace --json"), "{e}");
}

#[test]
fn filters_keep_processes_and_kinds_and_recount_the_totals() {
    let bytes = ndjson(&two_processes());
    let pid = Filters {
        pids: vec![20],
        ..Filters::default()
    };
    let r = read_bytes(&bytes, &pid).unwrap();
    assert_eq!(r.summary.processes.len(), 1);
    assert_eq!(r.summary.totals.faults.total, 7);
    assert_eq!(r.summary.totals.processes, 1);
    let first = r.render().lines().next().unwrap().to_string();
    assert!(
        first.contains("1 process(es) (1 exited), 7 faults"),
        "{first}"
    );
    assert!(first.ends_with("; filtered: --pid 20"), "{first}");

    let file = Filters {
        kinds: vec!["file"],
        ..Filters::default()
    };
    let r = read_bytes(&bytes, &file).unwrap();
    assert_eq!(r.summary.processes.len(), 1, "beta has no file mapping");
    let p = &r.summary.processes[0];
    assert_eq!(p.pid, 10);
    assert_eq!(
        p.faults,
        FaultCounts {
            total: 3,
            minor: 1,
            major: 2
        }
    );
    assert_eq!(p.by_kind, BTreeMap::from([("file", 3)]));
    assert_eq!(p.vmas.len(), 1);
    assert_eq!(r.summary.totals.faults.total, 3);
    assert!(r
        .render()
        .lines()
        .next()
        .unwrap()
        .ends_with("; filtered: --kind file"));

    // --pid and --comm: either matches; --kind narrows both.
    let both = Filters {
        pids: vec![10],
        comms: vec!["beta".into()],
        kinds: vec!["anon"],
    };
    let r = read_bytes(&bytes, &both).unwrap();
    let kept: Vec<(u32, u64)> = r
        .summary
        .processes
        .iter()
        .map(|p| (p.pid, p.faults.total))
        .collect();
    assert_eq!(kept, [(20, 7), (10, 5)]);
    assert_eq!(r.summary.totals.faults.total, 12);
}

#[test]
fn a_kind_filter_counts_the_mappings_that_ended_before() {
    let mut lines = two_processes();
    let ended = json!({"type":"mappings","pid":10,"comm":"alpha",
                       "vmas":[vma(0x5000, "file", 4, 1), vma(0x6000, "anon", 9, 0)]});
    lines.insert(1, ended);
    // alpha's record counts them in its sums.
    lines[2]["vmas_ended"] = json!(2);
    lines[2]["by_kind"] = json!({"anon": 14, "file": 7});
    lines[2]["faults"] = json!({"total": 21, "minor": 18, "major": 3});
    let file = Filters {
        kinds: vec!["file"],
        ..Filters::default()
    };
    let r = read_bytes(&ndjson(&lines), &file).unwrap();
    let p = &r.summary.processes[0];
    assert_eq!(
        p.faults,
        FaultCounts {
            total: 7,
            minor: 4,
            major: 3
        }
    );
    assert_eq!(p.vmas_ended, 1);
}
