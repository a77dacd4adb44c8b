//! `rmaptrace report FILE`: a trace's end-of-trace table (or its live screen),
//! read back from its NDJSON export (docs/json-format.md), with no root and no
//! eBPF. The file is read one line at a time: a process with 200k mappings is
//! one line of hundreds of MB, and the whole file can be far larger.
//!
//! Everything in an export may come from the traced processes (or from whoever
//! wrote the file): every string read is escaped for the terminal as it is
//! read, so that nothing printed or drawn can hold a control sequence.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ffi::OsString,
    io::{BufRead, BufReader},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::{LazyLock, Mutex},
};

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;

use super::{
    json::FORMAT_VERSION,
    table::{self, TABLE_PROCESSES, TABLE_VMAS},
};
use crate::{
    model::{
        small_map::SmallMap,
        snapshot::Counters,
        stacks::{CallSite, StackTotals},
        summary::{
            AnonVma, FaultCounts, HandlerTime, KernelCounts, Latency, Note, ProcessSummary, Setup,
            Summary, Totals, VmaSummary,
        },
    },
    text::{from_bytes, make_visible, visible},
};

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// The export to read (written by `rmaptrace --json FILE`).
    #[arg(value_name = "FILE.ndjson")]
    pub file: PathBuf,
    /// Only this process (repeatable; with --comm: either matches).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only processes with this name (repeatable; with --pid: either matches).
    /// (Taken as bytes: a name need not be UTF-8.)
    #[arg(short, long = "comm", value_name = "NAME")]
    pub comms: Vec<OsString>,
    /// Only mappings of this kind, and processes with at least one (repeatable);
    /// their counts are those of these kinds.
    #[arg(long = "kind", value_name = "KIND",
          value_parser = ["anon", "shmem", "file", "driver", "special", "hugetlb", "unknown"])]
    pub kinds: Vec<String>,
    /// Browse the trace on the live screen (paused) instead of printing the table.
    #[arg(long)]
    pub tui: bool,
}

/// What to keep of a trace. Processes: those with one of `pids` or one of
/// `comms` (as the export writes them), every one when both are empty;
/// mappings: those of `kinds`, every one when empty.
#[derive(Debug, Default, Clone)]
pub struct Filters {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub kinds: Vec<&'static str>,
}

impl Filters {
    pub fn from_args(args: &ReportArgs) -> Self {
        Self {
            pids: args.pids.clone(),
            comms: args
                .comms
                .iter()
                .map(|c| from_bytes(c.as_bytes()))
                .collect(),
            kinds: args.kinds.iter().map(|k| intern(k)).collect(),
        }
    }

    fn any(&self) -> bool {
        !(self.pids.is_empty() && self.comms.is_empty() && self.kinds.is_empty())
    }

    /// `comm` as the export wrote it (not yet escaped).
    fn keeps_process(&self, pid: u32, comm: &str) -> bool {
        (self.pids.is_empty() && self.comms.is_empty())
            || self.pids.contains(&pid)
            || self.comms.iter().any(|c| c == comm)
    }

    fn keeps_kind(&self, kind: &str) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }

    /// The filters as given on the command line, escaped.
    fn describe(&self) -> String {
        let mut words = Vec::new();
        words.extend(self.pids.iter().map(|p| format!("--pid {p}")));
        words.extend(self.comms.iter().map(|c| format!("--comm {}", visible(c))));
        words.extend(self.kinds.iter().map(|k| format!("--kind {k}")));
        words.join(" ")
    }
}

/// A trace as its export tells it.
pub struct Report {
    /// The processes kept, the busiest first, each with all its mappings.
    pub summary: Summary,
    /// What the first line of the table adds: a filter applies, the summary
    /// line is missing.
    pub notes: Vec<String>,
}

impl Report {
    /// The end-of-trace table, as the run that wrote the export printed it
    /// (with the notes on its first line).
    pub fn render(&self) -> String {
        let text = table::render(&self.summary, TABLE_PROCESSES, TABLE_VMAS);
        if self.notes.is_empty() {
            return text;
        }
        let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
        format!("{first}; {}\n{rest}", self.notes.join("; "))
    }
}

pub fn run(args: &ReportArgs) -> Result<i32> {
    use std::io::IsTerminal;
    // Checked first: a long read, then a failure, would waste the user's time.
    if args.tui && !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        bail!("report --tui needs a terminal: drop --tui to print the table");
    }
    let report = read(&args.file, &Filters::from_args(args))?;
    if args.tui {
        return show(report, &args.file);
    }
    // Not print!: a closed stdout (`| head`) is not a reason to panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), report.render().as_bytes());
    Ok(0)
}

/// The live screen on the report, paused, until the user quits.
fn show(report: Report, file: &Path) -> Result<i32> {
    let (tx, mut quit) = tokio::sync::mpsc::channel(1);
    let mut ui = crate::tui::Ui::start_with(tx, true)?;
    let title = format!(
        "rmaptrace report {}",
        from_bytes(file.as_os_str().as_bytes())
    );
    ui.publish(crate::tui::Update {
        summary: report.summary,
        notes: report
            .notes
            .into_iter()
            .map(|text| Note { text, ok: false })
            .collect(),
        labels: BTreeMap::new(),
        title: visible(&title).into_owned(),
    });
    // The screen drops its sender when it ends (q, Ctrl-C, an error).
    while quit.blocking_recv().is_some() {}
    ui.finish()?;
    Ok(0)
}

/// Reads the export at `path`.
pub fn read(path: &Path, filters: &Filters) -> Result<Report> {
    let shown = visible(&from_bytes(path.as_os_str().as_bytes())).into_owned();
    let file = std::fs::File::open(path).map_err(|e| {
        anyhow!("cannot read {shown}: {e}: give the path of an export written by `rmaptrace --json FILE`")
    })?;
    read_from(BufReader::with_capacity(1 << 20, file), &shown, filters)
}

/// An export, but not of the format this reader knows.
#[derive(Debug)]
struct OtherFormat(String);

impl std::fmt::Display for OtherFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OtherFormat {}

/// The type of a record, from the start of its line where the writer put it
/// (`{"type":"process",…`): a line of hundreds of MB is then scanned once.
fn record_type(line: &[u8]) -> Option<&str> {
    let rest = line.strip_prefix(br#"{"type":""#)?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    (rest[end] == b'"')
        .then(|| std::str::from_utf8(&rest[..end]).ok())
        .flatten()
}

/// The fields of a line that say what it is; the rest is skipped unread.
#[derive(Deserialize)]
struct Tag {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    format: Option<u64>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    backend: HeaderBackend,
    #[serde(default)]
    limits: Vec<String>,
    #[serde(default)]
    start_ts_ns: Option<u64>,
}

#[derive(Deserialize, Default)]
struct HeaderBackend {
    backend: Option<String>,
    paths: Option<String>,
}

/// An `mmap` or `fault` record: its time and process.
#[derive(Deserialize)]
struct Stamp {
    ts_ns: Option<u64>,
    pid: Option<u32>,
}

#[derive(Deserialize)]
struct SummaryRecord {
    #[serde(default)]
    duration_ns: u64,
    #[serde(default)]
    events_lost: u64,
    #[serde(default)]
    backend: String,
    #[serde(default)]
    paths_source: String,
    #[serde(default)]
    counters: Counters,
    #[serde(default)]
    tables_full: BTreeMap<String, u64>,
    #[serde(default)]
    limits: Vec<String>,
    /// Absent from exports made before latency was sampled: every fault.
    #[serde(default = "every_fault")]
    latency_sample_period: u64,
    #[serde(default)]
    end_reason: Option<String>,
    #[serde(default)]
    totals: TotalsRecord,
    #[serde(default)]
    call_sites: Option<StackTotals>,
}

fn every_fault() -> u64 {
    1
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TotalsRecord {
    processes: u64,
    exited: u64,
    faults: FaultCounts,
    by_kind: BTreeMap<String, u64>,
    kernel: KernelCounts,
    unseen: i64,
    resolved_later: u64,
}

#[derive(Deserialize)]
struct ProcessRecord {
    pid: u32,
    #[serde(default)]
    comm: String,
    #[serde(default)]
    cgroup: Option<String>,
    #[serde(default)]
    exited: bool,
    #[serde(default)]
    faults: FaultCounts,
    #[serde(default)]
    by_kind: BTreeMap<String, u64>,
    #[serde(default)]
    kernel: Option<KernelCounts>,
    #[serde(default)]
    unseen: Option<i64>,
    #[serde(default)]
    resolved_later: u64,
    #[serde(default)]
    vmas_ended: u64,
    #[serde(default)]
    ended_late: u64,
    /// Described as they are read: a record of 200k mappings is not held
    /// twice (as read, and as the model has them).
    #[serde(default, deserialize_with = "described")]
    vmas: Vec<VmaSummary>,
}

fn described<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<VmaSummary>, D::Error> {
    struct Rows;
    impl<'de> serde::de::Visitor<'de> for Rows {
        type Value = Vec<VmaSummary>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of mappings")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut rows = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(v) = seq.next_element::<VmaRecord>()? {
                rows.push(v.into_summary());
            }
            Ok(rows)
        }
    }
    d.deserialize_seq(Rows)
}

/// A `mappings` record, as far as a kind filter needs it.
#[derive(Deserialize)]
struct MappingsRecord {
    pid: u32,
    #[serde(default)]
    vmas: Vec<EndedVma>,
}

#[derive(Deserialize)]
struct EndedVma {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    major: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct VmaRecord {
    start: String,
    end: String,
    kind: String,
    handler: Option<String>,
    module: Option<String>,
    file: Option<String>,
    device: Option<String>,
    prot: String,
    origin: Option<String>,
    setup: Option<SetupRecord>,
    life: Option<u64>,
    first_seen_ns: Option<u64>,
    mapped_ns: Option<u64>,
    unmapped_ns: Option<u64>,
    faults: u64,
    minor: u64,
    major: u64,
    paths: BTreeMap<String, u64>,
    latency_ns: Latency,
    handler_time: Option<HandlerTime>,
    stacks: Vec<CallSiteRecord>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SetupRecord {
    by: Option<String>,
    by_module: Option<String>,
    vm_flags: Vec<String>,
    prefilled: Option<BTreeMap<String, u64>>,
    anon_vma: Option<AnonVmaRecord>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AnonVmaRecord {
    by: String,
    ts_ns: Option<u64>,
    faults_before: u64,
    source: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CallSiteRecord {
    frames: Vec<String>,
    path: String,
    count: u64,
    truncated: bool,
}

/// Text from the file as a terminal may show it.
fn esc(mut s: String) -> String {
    make_visible(&mut s);
    s
}

fn esc_opt(s: Option<String>) -> Option<String> {
    s.map(esc)
}

/// A name the model holds as `&'static str` (kinds, kernel paths, backends,
/// table names), escaped and leaked once per distinct name: a report is read
/// once per run, and an export holds a few dozen such names.
fn intern(s: &str) -> &'static str {
    static NAMES: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);
    let shown = visible(s);
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(name) = names.get(shown.as_ref()) {
        return name;
    }
    let name: &'static str = Box::leak(shown.into_owned().into_boxed_str());
    names.insert(name);
    name
}

fn interned_map(m: BTreeMap<String, u64>) -> BTreeMap<&'static str, u64> {
    m.into_iter().map(|(k, v)| (intern(&k), v)).collect()
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0)
}

impl VmaRecord {
    fn into_summary(self) -> VmaSummary {
        let mut paths = SmallMap::default();
        for (k, v) in self.paths {
            paths.insert(intern(&k), v);
        }
        VmaSummary {
            start_addr: hex(&self.start),
            end_addr: hex(&self.end),
            // The live screen's identity of the row: its lifetime, else (a
            // mapping that never faulted) when it was mapped.
            key: self.life.or(self.mapped_ns).unwrap_or(0),
            start: esc(self.start),
            end: esc(self.end),
            kind: intern(&self.kind),
            handler: esc_opt(self.handler),
            module: esc_opt(self.module),
            file: esc_opt(self.file),
            device: esc_opt(self.device),
            prot: esc(self.prot),
            origin: esc_opt(self.origin),
            setup: self.setup.map(|s| Setup {
                by: esc_opt(s.by),
                by_module: esc_opt(s.by_module),
                vm_flags: s.vm_flags.into_iter().map(|f| esc(f).into()).collect(),
                prefilled: s.prefilled.map(interned_map),
                anon_vma: s.anon_vma.map(|a| AnonVma {
                    by: intern(&a.by),
                    ts_ns: a.ts_ns,
                    faults_before: a.faults_before,
                    source: intern(&a.source),
                }),
            }),
            life: self.life,
            first_seen_ns: self.first_seen_ns,
            mapped_ns: self.mapped_ns,
            unmapped_ns: self.unmapped_ns,
            faults: self.faults,
            minor: self.minor,
            major: self.major,
            paths,
            latency_ns: self.latency_ns,
            handler_time: self.handler_time,
            stacks: self
                .stacks
                .into_iter()
                .map(|c| CallSite {
                    frames: c.frames.into_iter().map(esc).collect::<Vec<_>>().into(),
                    path: intern(&c.path),
                    count: c.count,
                    truncated: c.truncated,
                })
                .collect(),
            ..VmaSummary::default()
        }
    }
}

/// The latest time a row tells.
fn latest_ns(v: &VmaSummary) -> u64 {
    [v.first_seen_ns, v.mapped_ns, v.unmapped_ns]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
}

/// What a kind filter needs of a process's `mappings` records, which come
/// before its `process` record: the ended lifetimes of the kinds kept, and
/// their major faults.
#[derive(Default)]
struct Ended {
    lifetimes: u64,
    major: u64,
}

/// The reading state, line by line.
#[derive(Default)]
struct Reader {
    filters: Filters,
    header_seen: bool,
    start_ts_ns: Option<u64>,
    header_backend: Option<String>,
    header_paths: Option<String>,
    header_limits: Vec<String>,
    summary: Option<SummaryRecord>,
    processes: Vec<ProcessSummary>,
    /// Kind filter: per pid, its ended lifetimes not yet claimed by its
    /// process record.
    ended: HashMap<u32, Ended>,
    /// Pids of records other than `process` ones, and of `process` ones: a
    /// trace killed before its end has processes without a record.
    pids_seen: HashSet<u32>,
    pids_recorded: HashSet<u32>,
    latest_ns: u64,
}

/// Reads an export from `input`; `name` (escaped) names it in errors.
pub fn read_from(mut input: impl BufRead, name: &str, filters: &Filters) -> Result<Report> {
    let mut r = Reader {
        filters: filters.clone(),
        ..Reader::default()
    };
    let mut line = Vec::new();
    let mut number = 0u64;
    let mut torn = false;
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| anyhow!("cannot read {name}: {e}"))?;
        if n == 0 {
            break;
        }
        number += 1;
        let complete = line.last() == Some(&b'\n');
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match r.line(&line) {
            Ok(()) => {}
            Err(e) if e.is::<OtherFormat>() => bail!("{name}: {e}"),
            // The last line of a trace killed while writing it (or still
            // being written), cut short: what came before is whole.
            Err(_) if !complete && r.header_seen => torn = true,
            Err(e) if !r.header_seen => bail!(
                "{name} is not an rmaptrace export (line {number}: {e}): give a file written by `rmaptrace --json FILE`"
            ),
            Err(e) => bail!(
                "{name}:{number}: not a valid export record ({e}): the file was damaged after it was written; export the trace again, or delete that line to report the rest"
            ),
        }
    }
    if !r.header_seen {
        bail!("{name} is empty, not an rmaptrace export: give a file written by `rmaptrace --json FILE`");
    }
    Ok(r.finish(torn))
}

impl Reader {
    fn line(&mut self, line: &[u8]) -> Result<()> {
        let kind = match record_type(line) {
            Some(kind) => kind.to_string(),
            None => serde_json::from_slice::<Tag>(line)?
                .kind
                .unwrap_or_default(),
        };
        if !self.header_seen {
            if kind != "header" {
                bail!("its first record is not a header");
            }
            return self.header(serde_json::from_slice(line)?);
        }
        match kind.as_str() {
            "mmap" | "fault" => {
                let s: Stamp = serde_json::from_slice(line)?;
                self.latest_ns = self.latest_ns.max(s.ts_ns.unwrap_or(0));
                self.pids_seen.extend(s.pid);
            }
            "mappings" if !self.filters.kinds.is_empty() => {
                let m: MappingsRecord = serde_json::from_slice(line)?;
                self.pids_seen.insert(m.pid);
                let ended = self.ended.entry(m.pid).or_default();
                for v in m.vmas.iter().filter(|v| self.filters.keeps_kind(&v.kind)) {
                    ended.lifetimes += 1;
                    ended.major += v.major;
                }
            }
            "mappings" => {
                #[derive(Deserialize)]
                struct Pid {
                    pid: u32,
                }
                let m: Pid = serde_json::from_slice(line)?;
                self.pids_seen.insert(m.pid);
            }
            "process" => self.process(serde_json::from_slice(line)?),
            "summary" => self.summary = Some(serde_json::from_slice(line)?),
            "header" => bail!("a second header"),
            // A record type a later version added: not needed for the table.
            _ => {}
        }
        Ok(())
    }

    fn header(&mut self, h: Header) -> Result<()> {
        match h.format {
            Some(f) if f == u64::from(FORMAT_VERSION) => {}
            other => {
                let format = other.map_or_else(|| "none".to_string(), |f| f.to_string());
                let version = h.version.map(esc).unwrap_or_else(|| "unknown".into());
                return Err(OtherFormat(format!(
                    "an rmaptrace export of format {format}, and this rmaptrace reads format {FORMAT_VERSION}: report it with the rmaptrace that wrote it (version {version})"
                ))
                .into());
            }
        }
        self.header_seen = true;
        self.start_ts_ns = h.start_ts_ns;
        self.header_backend = h.backend.backend;
        self.header_paths = h.backend.paths;
        self.header_limits = h.limits;
        Ok(())
    }

    fn process(&mut self, p: ProcessRecord) {
        self.pids_recorded.insert(p.pid);
        let ended = self.ended.remove(&p.pid).unwrap_or_default();
        for v in &p.vmas {
            self.latest_ns = self.latest_ns.max(latest_ns(v));
        }
        if !self.filters.keeps_process(p.pid, &p.comm) {
            return;
        }
        let kinds = &self.filters;
        let mut vmas = p.vmas;
        vmas.retain(|v| kinds.keeps_kind(v.kind));
        let mut by_kind = interned_map(p.by_kind);
        let (mut faults, mut vmas_ended) = (p.faults, p.vmas_ended);
        if !kinds.kinds.is_empty() {
            by_kind.retain(|k, _| kinds.keeps_kind(k));
            if by_kind.values().all(|&n| n == 0) && vmas.is_empty() {
                return;
            }
            // The kinds' own counts: `by_kind` counts every fault (rows,
            // ended rows, those in no row); majors are those of the rows.
            faults.total = by_kind.values().sum();
            faults.major =
                (vmas.iter().map(|v| v.major).sum::<u64>() + ended.major).min(faults.total);
            faults.minor = faults.total - faults.major;
            vmas_ended = ended.lifetimes;
        }
        self.processes.push(ProcessSummary {
            pid: p.pid,
            comm: esc(p.comm),
            cgroup: esc_opt(p.cgroup),
            faults,
            by_kind,
            kernel: p.kernel,
            unseen: p.unseen,
            resolved_later: p.resolved_later,
            exited: p.exited,
            vmas,
            vmas_dropped: 0,
            vmas_ended,
            ended_late: p.ended_late,
            written: true,
        });
    }

    fn finish(mut self, torn: bool) -> Report {
        // As the live trace lists them (Trace::summary_with).
        self.processes
            .sort_by(|a, b| b.faults.total.cmp(&a.faults.total).then(a.pid.cmp(&b.pid)));
        for p in &mut self.processes {
            // Address order, as the live trace holds them: the table's
            // stable sort by faults then breaks ties as it did there.
            p.vmas.sort_by_key(|v| v.start_addr);
        }
        let mut notes = Vec::new();
        if self.filters.any() {
            notes.push(format!("filtered: {}", self.filters.describe()));
        }
        let derived = || {
            let mut totals = Totals::default();
            for p in &self.processes {
                totals.add(p);
            }
            totals
        };
        let summary = match self.summary.take() {
            Some(s) => Summary {
                kind: "summary",
                duration_ns: s.duration_ns,
                events_lost: s.events_lost,
                backend: intern(&s.backend),
                paths_source: intern(&s.paths_source),
                counters: s.counters,
                tables_full: interned_map(s.tables_full),
                limits: s.limits.into_iter().map(esc).collect(),
                latency_sample_period: s.latency_sample_period,
                end_reason: esc_opt(s.end_reason),
                totals: if self.filters.any() {
                    derived()
                } else {
                    Totals {
                        processes: s.totals.processes,
                        exited: s.totals.exited,
                        faults: s.totals.faults,
                        by_kind: interned_map(s.totals.by_kind),
                        kernel: s.totals.kernel,
                        unseen: s.totals.unseen,
                        resolved_later: s.totals.resolved_later,
                    }
                },
                call_sites: s.call_sites,
                processes: Vec::new(),
            },
            None => {
                let mut note = "no summary line (the trace was killed, or is still being written): duration and totals derived from the process records, events lost and full tables unknown".to_string();
                let unrecorded = self.pids_seen.difference(&self.pids_recorded).count();
                if unrecorded > 0 {
                    note += &format!(
                        ", {unrecorded} traced process(es) without a process record (still running then)"
                    );
                }
                if torn {
                    note += ", its last line cut short and skipped";
                }
                notes.push(note);
                Summary {
                    kind: "summary",
                    duration_ns: self
                        .latest_ns
                        .saturating_sub(self.start_ts_ns.unwrap_or(self.latest_ns)),
                    backend: intern(self.header_backend.as_deref().unwrap_or("unknown")),
                    paths_source: intern(self.header_paths.as_deref().unwrap_or("unknown")),
                    limits: std::mem::take(&mut self.header_limits)
                        .into_iter()
                        .map(esc)
                        .collect(),
                    totals: derived(),
                    ..Summary::default()
                }
            }
        };
        Report {
            summary: Summary {
                processes: self.processes,
                ..summary
            },
            notes,
        }
    }
}

#[cfg(test)]
mod tests;
