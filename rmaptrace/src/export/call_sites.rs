//! `--folded` and `--flamegraph`: every call site of every mapping written in
//! the trace (processes as they are retired, mappings as they end, the rest at
//! the end), one line per (process name, stack, mapping).
use std::{collections::BTreeMap, path::Path};

use anyhow::Result;

use super::{
    flamegraph,
    folded::{self, PendingFile},
};
use crate::model::summary::VmaSummary;

/// The root frame of a stack that filled every frame recorded: its true root
/// frames are missing (`--stack-depth`).
pub const TRUNCATED_ROOT: &str = "[truncated]";

pub struct CallSiteFiles {
    folded: Option<PendingFile>,
    svg: Option<PendingFile>,
    /// Faults by (process name, frames root first, mapping).
    sites: BTreeMap<(String, Vec<String>, String), u64>,
}

impl CallSiteFiles {
    /// Creates the files asked for now (a bad path fails before anything is
    /// loaded); None when neither is.
    pub fn create(folded: Option<&Path>, svg: Option<&Path>) -> Result<Option<Self>> {
        if folded.is_none() && svg.is_none() {
            return Ok(None);
        }
        Ok(Some(CallSiteFiles {
            folded: folded
                .map(|p| PendingFile::create(p, "the folded stacks", "--folded"))
                .transpose()?,
            svg: svg
                .map(|p| PendingFile::create(p, "the flame graph", "--flamegraph"))
                .transpose()?,
            sites: BTreeMap::new(),
        }))
    }

    /// The call sites of one mapping of process `comm`.
    pub fn add(&mut self, comm: &str, v: &VmaSummary) {
        for site in &v.stacks {
            let mapping = match &v.handler {
                Some(h) => format!("{} {h} {}", v.kind, site.path),
                None => format!("{} {}", v.kind, site.path),
            };
            let mut frames: Vec<String> = Vec::with_capacity(site.frames.len() + 1);
            if site.truncated {
                frames.push(TRUNCATED_ROOT.to_string());
            }
            frames.extend(site.frames.iter().rev().cloned());
            *self
                .sites
                .entry((comm.to_string(), frames, mapping))
                .or_default() += site.count;
        }
    }

    /// Writes the files.
    pub fn finish(self) -> Result<()> {
        let sites: Vec<folded::CallSite<'_>> = self
            .sites
            .iter()
            .map(|((comm, frames, mapping), &count)| folded::CallSite {
                comm,
                frames,
                mapping,
                count,
            })
            .collect();
        let lines = folded::lines(&sites);
        if let Some(f) = self.folded {
            f.finish(&folded::contents(&lines))?;
        }
        if let Some(f) = self.svg {
            let svg = flamegraph::svg(
                &lines,
                "Page faults by user call site and mapping (rmaptrace)",
            )?;
            f.finish(&svg)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stacks::CallSite;

    fn vma(kind: &'static str, handler: Option<&str>, sites: Vec<CallSite>) -> VmaSummary {
        let mut v = crate::tui::fake::summary().processes[0].vmas[0].clone();
        v.kind = kind;
        v.handler = handler.map(str::to_string);
        v.stacks = sites;
        v
    }

    fn site(frames: &[&str], path: &'static str, count: u64, truncated: bool) -> CallSite {
        CallSite {
            frames: frames.iter().map(|f| f.to_string()).collect(),
            path,
            count,
            truncated,
        }
    }

    #[test]
    fn lines_put_the_mapping_last_and_add_up_across_processes_of_one_name() {
        let dir = crate::files::private_dir("rmaptrace-test-").unwrap();
        let path = dir.join("out.folded");
        let svg = dir.join("out.svg");
        let mut files = CallSiteFiles::create(Some(&path), Some(&svg))
            .unwrap()
            .unwrap();
        let shm = vma(
            "shmem",
            Some("shmem_fault"),
            vec![site(
                &["memcpy", "load_table", "main"],
                "do_shared_fault",
                1000,
                false,
            )],
        );
        files.add("myapp", &shm);
        files.add("myapp", &shm);
        files.add(
            "myapp",
            &vma(
                "anon",
                None,
                vec![site(&["fill", "deep"], "do_anonymous_page", 3, true)],
            ),
        );
        files.finish().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "myapp;[truncated];deep;fill;[anon do_anonymous_page] 3\n\
             myapp;main;load_table;memcpy;[shmem shmem_fault do_shared_fault] 2000\n"
        );
        let svg = std::fs::read_to_string(&svg).unwrap();
        assert!(
            svg.contains("load_table") && svg.contains("shmem_fault"),
            "{svg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nothing_asked_nothing_made() {
        assert!(CallSiteFiles::create(None, None).unwrap().is_none());
    }
}
