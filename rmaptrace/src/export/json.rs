//! The NDJSON export (docs/json-format.md). Each record is serialised whole before
//! it is written, so the file is valid line by line at any moment; the session
//! writes the summary line on every way out (end of command, Ctrl-C, SIGTERM).
use anyhow::{Context, Result};
use serde::Serialize;
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use crate::bpf::plan::Plan;

pub const FORMAT_VERSION: u32 = 2;

#[derive(Serialize)]
pub struct Header<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub format: u32,
    pub version: &'static str,
    pub kernel: String,
    /// The attach plan: `backend` counts faults, `paths` says observed or derived.
    pub backend: &'a Plan,
    pub limits: &'a [String],
    /// CLOCK_MONOTONIC at start; every ts_ns in the file is on this clock.
    pub start_ts_ns: u64,
}

pub struct JsonExport {
    out: Box<dyn Write + Send>,
}

impl JsonExport {
    /// Opens the export now, so a bad path fails before anything is attached.
    pub fn create(path: &str) -> Result<Self> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            let file = File::create(Path::new(path)).with_context(|| {
                format!(
                    "cannot write the JSON export to {path}: choose a writable path with --json"
                )
            })?;
            Box::new(BufWriter::new(file))
        };
        Ok(Self { out })
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

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().context("writing the JSON export")
    }
}
