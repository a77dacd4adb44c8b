//! The NDJSON export (docs/json-format.md). Each record is serialised whole before
//! it is written, so the file is valid line by line at any moment; the session
//! writes the summary line on every way out (end of command, Ctrl-C, SIGTERM).
use anyhow::{Context, Result};
use serde::Serialize;
use std::{
    io::{BufWriter, Read, Seek, SeekFrom, Write},
    path::Path,
};

use crate::files::Replacement;

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
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.out.write_all(&line).context("writing the JSON export")
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
