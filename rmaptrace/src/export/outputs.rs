//! Where a trace's records go: the NDJSON export, written record by record as
//! the trace runs (mmap calls, faults with --events, each process once final)
//! and closed on the first failed write.
use anyhow::Result;

use super::{
    call_sites::CallSiteFiles,
    json::{Header, JsonExport},
};
use crate::model::{
    metrics::{FaultMetrics, Mapped},
    summary::{ProcessSummary, VmaSummary},
    syscalls::MmapRecord,
    trace::Record,
};

/// Where the trace goes besides the screen. A write that fails (disk full, a
/// closed pipe) closes the export and is remembered: the loop then ends the
/// trace the way every other stop does, and says why.
pub struct Outputs {
    json: Option<JsonExport>,
    /// Why the export failed, once it did.
    pub failed: Option<String>,
    /// `--folded`, `--flamegraph`: fed with each mapping as it is written.
    call_sites: Option<CallSiteFiles>,
    /// `serve`: the counters, fed with each process and mapping as it is
    /// written (and, at each scrape, with the running ones).
    metrics: Option<FaultMetrics>,
}

impl Outputs {
    pub fn new(json: Option<JsonExport>, call_sites: Option<CallSiteFiles>) -> Self {
        Outputs {
            json,
            failed: None,
            call_sites,
            metrics: None,
        }
    }

    /// Keeps counters of every process from now on (`serve`).
    pub fn count_metrics(&mut self, top: usize) {
        self.metrics = Some(FaultMetrics::new(top));
    }

    pub fn metrics(&self) -> Option<&FaultMetrics> {
        self.metrics.as_ref()
    }

    /// A running process's summary, at a scrape: into the counters only.
    pub fn running(&mut self, p: &ProcessSummary, vmas: &mut dyn Iterator<Item = VmaSummary>) {
        if let Some(m) = &mut self.metrics {
            m.running(p, Mapped::of(vmas));
        }
    }

    /// Gives what the counters took in since their labels (see
    /// [`FaultMetrics::settle`]).
    pub fn settle_metrics(&mut self) {
        if let Some(m) = &mut self.metrics {
            m.settle(crate::kernel::clock::monotonic_ns());
        }
    }

    /// Writes the call site files, once every mapping went through.
    pub fn finish_call_sites(&mut self) -> Result<()> {
        match self.call_sites.take() {
            Some(files) => files.finish(),
            None => Ok(()),
        }
    }

    /// Puts the export in place and writes its header, the sign for readers
    /// that rmaptrace is attached. An error here stops the run before anything
    /// is traced.
    pub fn start(&mut self, header: &Header<'_>) -> Result<()> {
        if let Some(j) = &mut self.json {
            j.start()?;
            j.write(header)?;
            j.flush()?;
        }
        Ok(())
    }

    pub fn write(&mut self, f: impl FnOnce(&mut JsonExport) -> Result<()>) {
        let Some(json) = &mut self.json else {
            return;
        };
        if let Err(e) = f(json) {
            json.cut_torn_line();
            self.failed = Some(format!("{e:#}"));
            self.json = None;
        }
    }

    /// A process's whole summary, once final (it exited, or the trace ends),
    /// its mappings described one at a time as they are written: a process
    /// with 200k mappings is never held whole.
    pub fn process(&mut self, p: &ProcessSummary, vmas: &mut dyn Iterator<Item = VmaSummary>) {
        let mapped = self.tapped(&p.comm, vmas, |out, vmas| out.process_json(p, vmas));
        if let (Some(m), Some(mapped)) = (&mut self.metrics, mapped) {
            m.exited(p, mapped);
        }
    }

    /// `write` with `vmas`, each also handed to the call site files and the
    /// counters (when asked for) as it goes by; returns what the counters
    /// saw.
    fn tapped(
        &mut self,
        comm: &str,
        vmas: &mut dyn Iterator<Item = VmaSummary>,
        write: impl FnOnce(&mut Self, &mut dyn Iterator<Item = VmaSummary>),
    ) -> Option<Mapped> {
        let mut sites = self.call_sites.take();
        let mut mapped = self.metrics.is_some().then(Mapped::default);
        if sites.is_none() && mapped.is_none() {
            write(self, vmas);
            return None;
        }
        let mut tapped = vmas.inspect(|v| {
            if let Some(s) = &mut sites {
                s.add(comm, v);
            }
            if let Some(m) = &mut mapped {
                m.add(v);
            }
        });
        write(self, &mut tapped);
        // What the export did not read: there is none, or it failed.
        tapped.for_each(drop);
        self.call_sites = sites;
        mapped
    }

    fn process_json(&mut self, p: &ProcessSummary, vmas: &mut dyn Iterator<Item = VmaSummary>) {
        if p.vmas.len() + p.vmas_dropped < PIPELINED_FROM {
            self.write(|json| json.write_streamed(&ProcessLine::new(p, vmas)));
            return;
        }
        // Many mappings: they are described here and serialised on a second
        // thread, the two halves of the work side by side.
        self.write(|json| {
            // One batch waiting at most: the described mappings in flight
            // are part of the peak memory of a process with 200k of them.
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<VmaSummary>>(1);
            std::thread::scope(|s| {
                let writer = s.spawn(move || {
                    let mut described = rx.into_iter().flatten();
                    json.write_streamed(&ProcessLine::new(p, &mut described))
                });
                let mut batch = Vec::with_capacity(BATCH);
                for v in vmas {
                    batch.push(v);
                    if batch.len() == BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                        if tx.send(full).is_err() {
                            // The writer failed: it says why.
                            break;
                        }
                    }
                }
                let _ = tx.send(batch);
                drop(tx);
                writer.join().expect("the export's writer")
            })
        })
    }

    /// Mappings that ended while their process runs on, described one at a
    /// time as they are written; the process's own record comes later and
    /// counts them in its sums.
    pub fn mappings(&mut self, pid: u32, comm: &str, vmas: &mut dyn Iterator<Item = VmaSummary>) {
        let mapped = self.tapped(comm, vmas, |out, vmas| out.mappings_json(pid, comm, vmas));
        if let (Some(m), Some(mapped)) = (&mut self.metrics, mapped) {
            m.ended(pid, mapped);
        }
    }

    fn mappings_json(&mut self, pid: u32, comm: &str, vmas: &mut dyn Iterator<Item = VmaSummary>) {
        self.write(|json| {
            json.write_streamed(&MappingsLine {
                kind: "mappings",
                pid,
                comm,
                vmas: Streamed(std::cell::RefCell::new(vmas)),
            })
        })
    }

    pub fn record(&mut self, r: &Record) {
        self.write(|json| match r {
            Record::Mmap(m) => json.write(&MmapLine {
                kind: "mmap",
                rec: m,
            }),
            Record::Fault(f) => json.write_fault(f),
        })
    }

    pub fn flush(&mut self) {
        self.write(|json| json.flush())
    }
}

/// A process with this many mappings has its record serialised on a thread
/// of its own, in batches of `BATCH` mappings.
const PIPELINED_FROM: usize = 4096;
const BATCH: usize = 256;

#[derive(serde::Serialize)]
struct ProcessLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    rec: &'a ProcessSummary,
    vmas: Streamed<'a>,
}

impl<'a> ProcessLine<'a> {
    fn new(rec: &'a ProcessSummary, vmas: &'a mut dyn Iterator<Item = VmaSummary>) -> Self {
        ProcessLine {
            kind: "process",
            rec,
            vmas: Streamed(std::cell::RefCell::new(vmas)),
        }
    }
}

#[derive(serde::Serialize)]
struct MappingsLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    pid: u32,
    comm: &'a str,
    vmas: Streamed<'a>,
}

/// A JSON array written from an iterator as it goes (serialised once).
struct Streamed<'a>(std::cell::RefCell<&'a mut dyn Iterator<Item = VmaSummary>>);

impl serde::Serialize for Streamed<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(None)?;
        for v in &mut *self.0.borrow_mut() {
            seq.serialize_element(&v)?;
        }
        seq.end()
    }
}

#[derive(serde::Serialize)]
struct MmapLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    rec: &'a MmapRecord,
}
