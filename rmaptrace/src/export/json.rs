//! The NDJSON export (docs/json-format.md). Each record is serialised whole before
//! it is written, so the file is valid line by line at any moment; the session
//! writes the summary line on every way out (end of command, Ctrl-C, SIGTERM).
use anyhow::{Context, Result};
use serde::Serialize;
use std::{
    io::{BufWriter, Read, Seek, SeekFrom, Write},
    path::Path,
};

use crate::{files::Replacement, model::trace::FaultRecord};

pub const FORMAT_VERSION: u32 = 2;

#[derive(Serialize)]
pub struct Header<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub format: u32,
    pub version: &'static str,
    pub kernel: String,
    /// The attach plan, as the loader describes it: `backend` counts faults,
    /// `paths` says observed or derived.
    pub backend: serde_json::Value,
    pub limits: &'a [String],
    /// CLOCK_MONOTONIC at start; every ts_ns in the file is on this clock.
    pub start_ts_ns: u64,
}

pub struct JsonExport {
    out: Box<dyn Write + Send>,
    /// The line being built, kept between records (one per fault with
    /// `--events`).
    line: Vec<u8>,
    /// The file that replaces an earlier export once the trace starts.
    replacing: Option<Replacement>,
}

impl JsonExport {
    /// Creates the export now, so a bad path fails before anything is attached,
    /// under a new name next to `path`: an earlier export stays as it was until
    /// [`JsonExport::start`], and a symlink at `path` is replaced, never followed.
    pub fn create(path: &str) -> Result<Self> {
        if path == "-" {
            return Ok(Self {
                out: Box::new(std::io::stdout()),
                line: Vec::new(),
                replacing: None,
            });
        }
        let replacing = Replacement::create(Path::new(path)).with_context(|| {
            format!("cannot write the JSON export to {path}: choose a writable path with --json")
        })?;
        Ok(Self {
            // Large: a process with 200k mappings writes 120 MB at its end,
            // and an 8 KiB buffer made that a write per few mappings; not more:
            // it is held for the whole trace.
            out: Box::new(BufWriter::with_capacity(256 << 10, replacing.file()?)),
            line: Vec::new(),
            replacing: Some(replacing),
        })
    }

    /// The trace has started: the export takes its path.
    pub fn start(&mut self) -> Result<()> {
        if let Some(r) = &mut self.replacing {
            r.commit().context("putting the JSON export in place")?;
        }
        Ok(())
    }

    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        self.write_line(|line| {
            serde_json::to_writer(&mut *line, record)?;
            line.push(b'\n');
            Ok(())
        })
    }

    pub fn write_fault(&mut self, f: &FaultRecord) -> Result<()> {
        self.write_line(|line| {
            fault_line(f, line);
            Ok(())
        })
    }

    /// Builds one whole line in the reused buffer, then writes it.
    fn write_line(&mut self, fill: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<()> {
        self.line.clear();
        fill(&mut self.line)?;
        self.out
            .write_all(&self.line)
            .context("writing the JSON export")
    }

    /// Writes a large record (the summary) straight into the output instead of
    /// building the whole line in memory first: with 100k VMAs that line is tens of
    /// MiB. Used on the way out, when nothing else writes.
    pub fn write_streamed<T: Serialize>(&mut self, record: &T) -> Result<()> {
        serde_json::to_writer(&mut self.out, record).context("writing the JSON export")?;
        self.out.write_all(b"\n").context("writing the JSON export")
    }

    /// After a failed write (disk full): drops what could not be written and
    /// cuts the file after its last complete line, so that every line of it
    /// still parses. Nothing to do for stdout.
    pub fn cut_torn_line(&mut self) {
        let Some(r) = &self.replacing else {
            return;
        };
        // What the buffer still holds is lost either way: write it nowhere.
        self.out = Box::new(std::io::sink());
        let Ok(mut file) = r.file() else {
            return;
        };
        let Ok(len) = file.seek(SeekFrom::End(0)) else {
            return;
        };
        let from = len.saturating_sub(1 << 20);
        let mut tail = Vec::new();
        if file.seek(SeekFrom::Start(from)).is_err() || file.read_to_end(&mut tail).is_err() {
            return;
        }
        let keep = match tail.iter().rposition(|&b| b == b'\n') {
            Some(i) => from + i as u64 + 1,
            None if from == 0 => 0,
            None => return,
        };
        let _ = file.set_len(keep);
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().context("writing the JSON export")
    }
}

/// A `fault` record as one JSON line, written field by field: a fault storm
/// makes 100k of them a second, and serde's generic path (with the addresses
/// formatted as strings) cost several microseconds each.
pub fn fault_line(f: &FaultRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"type\":\"fault\",\"ts_ns\":");
    number(out, f.ts_ns);
    out.extend_from_slice(b",\"pid\":");
    number(out, f.pid.into());
    out.extend_from_slice(b",\"tid\":");
    number(out, f.tid.into());
    out.extend_from_slice(b",\"addr\":");
    hex(out, f.addr);
    out.extend_from_slice(b",\"ip\":");
    hex(out, f.ip);
    out.extend_from_slice(b",\"write\":");
    boolean(out, f.write);
    out.extend_from_slice(b",\"user\":");
    boolean(out, f.user);
    out.extend_from_slice(b",\"kind\":");
    string(out, f.kind);
    out.extend_from_slice(b",\"handler\":");
    optional(out, f.handler.as_deref(), string);
    out.extend_from_slice(b",\"module\":");
    optional(out, f.module.as_deref(), string);
    out.extend_from_slice(b",\"path\":");
    string(out, f.path);
    out.extend_from_slice(b",\"major\":");
    boolean(out, f.major);
    out.extend_from_slice(b",\"latency_ns\":");
    optional(out, f.latency_ns, number);
    out.extend_from_slice(b",\"vma_start\":");
    optional(out, f.vma_start, hex);
    out.extend_from_slice(b",\"life\":");
    optional(out, f.life, number);
    out.extend_from_slice(b"}\n");
}

fn number(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `"0x…"`, as `format!("{v:#x}")` writes it.
fn hex(out: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 16];
    let mut n = 0;
    let mut rest = v;
    loop {
        digits[15 - n] = b"0123456789abcdef"[(rest & 0xf) as usize];
        n += 1;
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(b"\"0x");
    out.extend_from_slice(&digits[16 - n..]);
    out.push(b'"');
}

fn boolean(out: &mut Vec<u8>, v: bool) {
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// A JSON string. Kernel symbol and module names need no escaping, but they
/// are escaped all the same when they would.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serialises into memory");
    }
}

fn optional<T>(out: &mut Vec<u8>, v: Option<T>, some: fn(&mut Vec<u8>, T)) {
    match v {
        Some(v) => some(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> FaultRecord {
        FaultRecord {
            ts_ns: 123,
            pid: 4,
            tid: 5,
            addr: 0x7f00_0000_1000,
            ip: 0,
            write: true,
            user: false,
            kind: "anon",
            handler: None,
            module: None,
            path: "do_anonymous_page",
            major: false,
            latency_ns: Some(2048),
            vma_start: Some(u64::MAX),
            life: Some(1 << 40 | 1),
        }
    }

    fn parsed(f: &FaultRecord) -> serde_json::Value {
        let mut line = Vec::new();
        fault_line(f, &mut line);
        assert_eq!(line.pop(), Some(b'\n'), "one line");
        assert!(!line.contains(&b'\n'));
        serde_json::from_slice(&line).expect("valid JSON")
    }

    #[test]
    fn fault_lines_hold_the_documented_fields() {
        let v = parsed(&record());
        assert_eq!(
            v,
            serde_json::json!({
                "type": "fault", "ts_ns": 123, "pid": 4, "tid": 5,
                "addr": "0x7f0000001000", "ip": "0x0", "write": true, "user": false,
                "kind": "anon", "handler": null, "module": null,
                "path": "do_anonymous_page", "major": false, "latency_ns": 2048,
                "vma_start": "0xffffffffffffffff", "life": 1099511627777u64,
            })
        );
        let mut none = record();
        none.latency_ns = None;
        none.vma_start = None;
        none.life = None;
        let v = parsed(&none);
        for field in ["latency_ns", "vma_start", "life"] {
            assert_eq!(v[field], serde_json::Value::Null, "{field}");
        }
    }

    #[test]
    fn names_in_fault_lines_are_escaped() {
        let mut f = record();
        let hostile = "evil\",\"kind\":\"x\u{1b}[2J\\";
        f.handler = Some(hostile.into());
        f.module = Some("rmapdemo".into());
        let v = parsed(&f);
        assert_eq!(v["handler"], hostile);
        assert_eq!(v["module"], "rmapdemo");
        assert_eq!(v["kind"], "anon");
    }

    #[test]
    fn hex_matches_the_formatter() {
        for v in [0, 1, 0xf, 0x10, 0xdead_beef, 1 << 63, u64::MAX] {
            let mut out = Vec::new();
            hex(&mut out, v);
            assert_eq!(out, format!("\"{v:#x}\"").into_bytes());
        }
    }
}
