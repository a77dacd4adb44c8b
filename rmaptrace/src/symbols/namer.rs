//! The frame namer of a live trace: what each process maps is read from /proc
//! while it runs (at exec, when it maps code, when one of its stacks is first
//! read outside what was noted), and its frames are named from those files,
//! also after it exited.
use std::collections::HashMap;

use super::{ProcessModules, Symbolizer};
use crate::model::stacks::FrameNamer;

#[derive(Default)]
pub struct ProcessNamer {
    /// Each process's images, oldest first: since when (exec), and what was
    /// noted of it.
    images: HashMap<u32, Vec<(u64, ProcessModules)>>,
    symbolizer: Symbolizer,
}

impl ProcessNamer {
    /// Reads what `pid` maps now into its latest image. A process gone
    /// already keeps what was noted before.
    fn note(&mut self, pid: u32) {
        let Ok(now) = ProcessModules::read(pid) else {
            return;
        };
        let images = self.images.entry(pid).or_default();
        match images.last_mut() {
            Some((_, latest)) => latest.merge_newer(now),
            None => images.push((0, now)),
        }
    }
}

impl FrameNamer for ProcessNamer {
    fn capture(&mut self, pid: u32, ips: &[u64]) {
        let covered = self
            .images
            .get(&pid)
            .and_then(|i| i.last())
            .is_some_and(|(_, m)| ips.iter().all(|&ip| m.covers(ip)));
        if !covered {
            self.note(pid);
        }
    }

    fn exec(&mut self, pid: u32, ts_ns: u64) {
        let now = ProcessModules::read(pid).unwrap_or_default();
        self.images.entry(pid).or_default().push((ts_ns, now));
    }

    fn mapped_code(&mut self, pid: u32) {
        self.note(pid);
    }

    fn fork(&mut self, parent: u32, child: u32) {
        if let Some((_, m)) = self.images.get(&parent).and_then(|i| i.last()) {
            let m = m.clone();
            self.images.insert(child, vec![(0, m)]);
        }
    }

    fn names(&mut self, pid: u32, ips: &[u64], at_ns: u64) -> Vec<String> {
        let none = ProcessModules::default();
        let modules = self
            .images
            .get(&pid)
            // Before its first exec seen (a forked child still running its
            // parent's program, unseen): nothing, rather than the new image.
            .and_then(|i| i.iter().rev().find(|(since, _)| *since <= at_ns))
            .map_or(&none, |(_, m)| m);
        self.symbolizer
            .frames(modules, ips)
            .iter()
            .map(super::Frame::label)
            .collect()
    }

    fn forget(&mut self, pid: u32) {
        self.images.remove(&pid);
    }
}
