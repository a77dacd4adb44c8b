//! What one summary cannot say on its own: rates, the last minute of activity, and
//! when a mapping first appeared. Time is the trace's own clock (`duration_ns` of
//! each summary), so the numbers are the same in tests as on a live system.
use std::collections::{HashMap, VecDeque};

use crate::model::summary::Summary;

/// How much activity the sparklines show.
pub const WINDOW_NS: u64 = 60_000_000_000;

pub type VmaId = (u32, u64);
pub type PathId = (u32, u64, &'static str);

#[derive(Default)]
pub struct History {
    last_ns: Option<u64>,
    prev_proc: HashMap<u32, u64>,
    prev_path: HashMap<PathId, u64>,
    pub proc_rate: HashMap<u32, f64>,
    pub vma_rate: HashMap<VmaId, f64>,
    pub path_rate: HashMap<PathId, f64>,
    /// (time, faults/s) samples within the window.
    spark: HashMap<u32, VecDeque<(u64, f64)>>,
    /// Trace time of the newest sample in which a process faulted.
    pub last_active: HashMap<u32, u64>,
    /// Order of first appearance, for "newest first".
    pub first_seen: HashMap<VmaId, u64>,
    seq: u64,
    pub now_ns: u64,
}

impl History {
    pub fn observe(&mut self, s: &Summary) {
        let now = s.duration_ns;
        // Counts are cumulative from the start: a process or mapping seen for the
        // first time made all its faults since the previous sample.
        let dt_ns = now.saturating_sub(self.last_ns.unwrap_or(0));
        if self.last_ns.is_some() && dt_ns == 0 {
            return;
        }
        let dt = (dt_ns.max(1)) as f64 / 1e9;
        self.proc_rate.clear();
        self.vma_rate.clear();
        self.path_rate.clear();
        let mut prev_proc = HashMap::with_capacity(s.processes.len());
        let mut prev_path = HashMap::new();
        for p in &s.processes {
            let before = self.prev_proc.get(&p.pid).copied().unwrap_or(0);
            let rate = p.faults.total.saturating_sub(before) as f64 / dt;
            prev_proc.insert(p.pid, p.faults.total);
            self.proc_rate.insert(p.pid, rate);
            if rate > 0.0 || !self.last_active.contains_key(&p.pid) {
                self.last_active.insert(p.pid, now);
            }
            let spark = self.spark.entry(p.pid).or_default();
            spark.push_back((now, rate));
            while spark
                .front()
                .is_some_and(|(t, _)| now.saturating_sub(*t) > WINDOW_NS)
            {
                spark.pop_front();
            }
            for v in &p.vmas {
                let id = (p.pid, v.key);
                let mut vma_rate = 0.0;
                for (&path, &n) in &v.paths {
                    let key = (p.pid, v.key, path);
                    let before = self.prev_path.get(&key).copied().unwrap_or(0);
                    let r = n.saturating_sub(before) as f64 / dt;
                    vma_rate += r;
                    self.path_rate.insert(key, r);
                    prev_path.insert(key, n);
                }
                self.vma_rate.insert(id, vma_rate);
                if !self.first_seen.contains_key(&id) {
                    self.seq += 1;
                    self.first_seen.insert(id, self.seq);
                }
            }
        }
        // Forget what the summary no longer has, so a long run stays bounded.
        self.spark.retain(|pid, _| prev_proc.contains_key(pid));
        self.last_active
            .retain(|pid, _| prev_proc.contains_key(pid));
        self.first_seen
            .retain(|(pid, _), _| prev_proc.contains_key(pid));
        self.prev_proc = prev_proc;
        self.prev_path = prev_path;
        self.last_ns = Some(now);
        self.now_ns = now;
    }

    pub fn rate(&self, pid: u32) -> f64 {
        self.proc_rate.get(&pid).copied().unwrap_or(0.0)
    }

    /// The last minute of a process's fault rate as `width` block characters, the
    /// newest on the right, scaled to the row's own peak (like `perf top`'s bars,
    /// the shape matters more than the height).
    pub fn sparkline(&self, pid: u32, width: usize) -> String {
        const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let Some(samples) = self.spark.get(&pid) else {
            return " ".repeat(width);
        };
        if width == 0 {
            return String::new();
        }
        let mut bins = vec![0.0f64; width];
        for &(t, r) in samples {
            let age = self.now_ns.saturating_sub(t) as u128;
            let back = ((age * width as u128) / WINDOW_NS as u128).min(width as u128 - 1);
            let i = width - 1 - back as usize;
            bins[i] = bins[i].max(r);
        }
        let peak = bins.iter().cloned().fold(0.0, f64::max);
        bins.iter()
            .map(|&b| {
                if b <= 0.0 || peak <= 0.0 {
                    ' '
                } else {
                    BARS[(((b / peak) * 7.0).round() as usize).min(7)]
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::fake;

    #[test]
    fn rates_come_from_the_difference_between_samples() {
        let mut h = History::default();
        let mut s = fake::summary();
        s.duration_ns = 1_000_000_000;
        h.observe(&s);
        let first = h.rate(4242);
        assert_eq!(first, s.processes[0].faults.total as f64);
        s.duration_ns = 1_500_000_000;
        s.processes[0].faults.total += 100;
        h.observe(&s);
        assert_eq!(h.rate(4242), 200.0);
        // The same summary twice is no new information.
        h.observe(&s);
        assert_eq!(h.rate(4242), 200.0);
    }

    #[test]
    fn sparkline_has_the_requested_width_and_shows_the_peak() {
        let mut h = History::default();
        let mut s = fake::summary();
        s.processes[0].faults.total = 0;
        for i in 1..=10u64 {
            s.duration_ns = i * 1_000_000_000;
            s.processes[0].faults.total += i * 10;
            h.observe(&s);
        }
        let line = h.sparkline(4242, 20);
        assert_eq!(line.chars().count(), 20);
        assert!(line.ends_with('█'), "{line}");
        assert_eq!(h.sparkline(1, 5), "     ");
    }
}
