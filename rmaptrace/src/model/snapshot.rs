//! A point-in-time copy of the in-kernel aggregates, as plain data. The kernel maps
//! are cumulative, so each snapshot replaces the previous one.
use rmaptrace_common::{
    counter, latency_bucket_floor, FaultKey, FaultStats, VmaInfo, VmaKey, LAT_BUCKETS,
};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultTotals {
    pub minor: u64,
    pub major: u64,
    pub timed: u64,
    pub latency_sum_ns: u64,
    pub latency_max_ns: u64,
    pub handler_calls: u64,
    pub handler_ns: u64,
    pub hist: Vec<u64>,
}

impl Default for FaultTotals {
    fn default() -> Self {
        Self {
            minor: 0,
            major: 0,
            timed: 0,
            latency_sum_ns: 0,
            latency_max_ns: 0,
            handler_calls: 0,
            handler_ns: 0,
            hist: vec![0; LAT_BUCKETS],
        }
    }
}

impl FaultTotals {
    pub fn add(&mut self, s: &FaultStats) {
        self.minor += s.minor;
        self.major += s.major;
        self.timed += s.timed;
        self.latency_sum_ns += s.latency_sum_ns;
        self.latency_max_ns = self.latency_max_ns.max(s.latency_max_ns);
        self.handler_calls += s.handler_calls;
        self.handler_ns += s.handler_ns;
        for (d, v) in self.hist.iter_mut().zip(s.latency_hist.iter()) {
            *d += *v as u64;
        }
    }

    pub fn merge(&mut self, o: &FaultTotals) {
        self.minor += o.minor;
        self.major += o.major;
        self.timed += o.timed;
        self.latency_sum_ns += o.latency_sum_ns;
        self.latency_max_ns = self.latency_max_ns.max(o.latency_max_ns);
        self.handler_calls += o.handler_calls;
        self.handler_ns += o.handler_ns;
        for (d, v) in self.hist.iter_mut().zip(o.hist.iter()) {
            *d += v;
        }
    }

    pub fn total(&self) -> u64 {
        self.minor + self.major
    }

    /// Latency at quantile `q` (0..=1): the lower bound of the bucket that holds it.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        let n: u64 = self.hist.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in self.hist.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(latency_bucket_floor(i).min(self.latency_max_ns));
            }
        }
        None
    }
}

/// Faults of a process counted outside the per-VMA table because it was full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcTotals {
    pub minor: u64,
    pub major: u64,
}

/// Global counters of the probes, named for the export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub events_lost: u64,
    pub completions_without_entry: u64,
    pub entries_without_completion: u64,
    pub inflight_table_full: u64,
    pub process_table_full: u64,
    pub vma_table_full: u64,
    pub traced_table_full: u64,
    /// Tracepoint backend: completions whose VMA came from the thread's cache, and
    /// those that needed a bpf_find_vma.
    pub vma_cache_hits: u64,
    pub vma_lookups: u64,
}

impl Counters {
    pub fn from_raw(raw: &[u64]) -> Self {
        let at = |i: u32| raw.get(i as usize).copied().unwrap_or(0);
        Self {
            events_lost: at(counter::EVENTS_LOST),
            completions_without_entry: at(counter::UNMATCHED_COMPLETION),
            entries_without_completion: at(counter::ENTRY_WITHOUT_COMPLETION),
            inflight_table_full: at(counter::INFLIGHT_FULL),
            process_table_full: at(counter::PROC_TABLE_FULL),
            vma_table_full: at(counter::VMA_TABLE_FULL),
            traced_table_full: at(counter::TRACED_TABLE_FULL),
            vma_cache_hits: at(counter::VMA_CACHE_HIT),
            vma_lookups: at(counter::VMA_LOOKUP),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub faults: Vec<(FaultKey, FaultTotals)>,
    pub vmas: Vec<(VmaKey, VmaInfo)>,
    /// Per process, faults that found the per-VMA table full.
    pub overflow: Vec<(u32, ProcTotals)>,
    pub counters: Counters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_histogram() {
        let mut t = FaultTotals::default();
        assert_eq!(t.percentile(0.5), None);
        t.hist[4] = 99; // 128..160 ns
        t.hist[20] = 1; // 2048.. ns
        t.latency_max_ns = 3000;
        assert_eq!(t.percentile(0.5), Some(128));
        assert_eq!(t.percentile(0.99), Some(128));
        assert_eq!(t.percentile(1.0), Some(2048));
        t.latency_max_ns = 100;
        assert_eq!(t.percentile(0.5), Some(100), "never above the true maximum");
    }
}
