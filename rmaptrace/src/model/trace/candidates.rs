//! Mapping lifetimes as candidates for faults the kernel could not look up,
//! indexed by address: a process with 200k mappings and thousands of such
//! faults must not compare every fault with every lifetime.
use rmaptrace_common::UnresolvedFault;

/// A lifetime as a candidate for a fault the kernel could not look up: the range
/// it had, and the span in which it surely held that range.
pub struct Candidate {
    pub life: u64,
    pub start: u64,
    pub end: u64,
    pub from_ns: u64,
    pub to_ns: u64,
    /// Its `vm_lock_seq` when last looked up (unchanged until `to_ns`).
    pub lock_seq: u32,
    /// The range when last looked up, which `lock_seq` vouches for.
    pub seen_start: u64,
    pub seen_end: u64,
}

impl Candidate {
    /// Whether it surely held `u`'s address when `u` completed.
    pub fn held(&self, u: &UnresolvedFault) -> bool {
        let ts = u.header.ts_ns;
        if ts > self.to_ns {
            return false;
        }
        if u.has_mm_seq != 0 {
            // Per-VMA lock sequence numbers: unchanged since a write window that
            // ended before the fault, and still so at its last counted fault.
            // (u32::MAX: never write-locked, no age to compare.)
            return self.lock_seq != u32::MAX
                && (u.mm_seq.wrapping_sub(self.lock_seq) as i32) > 0
                && self.seen_start <= u.addr
                && u.addr < self.seen_end;
        }
        self.start <= u.addr && u.addr < self.end && self.from_ns <= ts
    }

    /// The addresses `held` can accept: both ranges.
    pub fn lo(&self) -> u64 {
        self.start.min(self.seen_start)
    }

    pub fn hi(&self) -> u64 {
        self.end.max(self.seen_end)
    }
}

/// One process's candidates sorted by their lowest address, with the running
/// maximum of their highest: a lookup starts at the last candidate that begins
/// at or below the address and walks down only while an earlier one may still
/// reach it. Lifetimes of one instant do not overlap, so the walk covers the
/// lifetimes that were at that address over time, not the whole process.
#[derive(Default)]
pub struct Candidates {
    sorted: Vec<Candidate>,
    reach: Vec<u64>,
}

impl Candidates {
    pub fn new(mut all: Vec<Candidate>) -> Self {
        all.sort_unstable_by_key(|c| c.lo());
        let reach = all
            .iter()
            .scan(0, |hi, c| {
                *hi = c.hi().max(*hi);
                Some(*hi)
            })
            .collect();
        Candidates { sorted: all, reach }
    }

    /// The candidates that surely held `u`'s address when it completed.
    pub fn holders<'a>(&'a self, u: &'a UnresolvedFault) -> impl Iterator<Item = &'a Candidate> {
        let below = self.sorted.partition_point(|c| c.lo() <= u.addr);
        (0..below)
            .rev()
            .take_while(move |&i| self.reach[i] > u.addr)
            .map(move |i| &self.sorted[i])
            .filter(move |c| c.held(u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(life: u64, start: u64, end: u64, from_ns: u64, to_ns: u64) -> Candidate {
        Candidate {
            life,
            start,
            end,
            from_ns,
            to_ns,
            lock_seq: u32::MAX,
            seen_start: start,
            seen_end: end,
        }
    }

    fn fault(addr: u64, ts: u64) -> UnresolvedFault {
        // SAFETY: a plain-old-data event; all zeroes is a valid value.
        let mut u: UnresolvedFault = unsafe { std::mem::zeroed() };
        u.addr = addr;
        u.header.ts_ns = ts;
        u
    }

    fn lives(c: &Candidates, addr: u64, ts: u64) -> Vec<u64> {
        let u = fault(addr, ts);
        let mut l: Vec<u64> = c.holders(&u).map(|c| c.life).collect();
        l.sort_unstable();
        l
    }

    /// The index finds exactly what comparing with every candidate finds.
    #[test]
    fn same_answers_as_a_linear_scan() {
        let mut all = Vec::new();
        // Disjoint mappings, one large one below them, and an address reused
        // over time by three lifetimes.
        for i in 0..50u64 {
            all.push(cand(
                i,
                0x10_000 + i * 0x2000,
                0x11_000 + i * 0x2000,
                0,
                1000,
            ));
        }
        all.push(cand(500, 0x1000, 0x9000, 0, 1000));
        all.push(cand(600, 0x90_000, 0x91_000, 0, 100));
        all.push(cand(601, 0x90_000, 0x92_000, 100, 200));
        all.push(cand(602, 0x8f_000, 0x91_000, 200, 300));
        let linear: Vec<Candidate> = all
            .iter()
            .map(|c| cand(c.life, c.start, c.end, c.from_ns, c.to_ns))
            .collect();
        let index = Candidates::new(all);
        for addr in (0..0xa0_000).step_by(0x800) {
            for ts in [0, 50, 150, 250, 2000] {
                let u = fault(addr, ts);
                let mut want: Vec<u64> = linear
                    .iter()
                    .filter(|c| c.held(&u))
                    .map(|c| c.life)
                    .collect();
                want.sort_unstable();
                assert_eq!(lives(&index, addr, ts), want, "addr {addr:#x} at {ts}");
            }
        }
        assert_eq!(lives(&index, 0x90_800, 150), vec![601]);
        assert_eq!(lives(&index, 0x10_800, 10), vec![0]);
        assert!(lives(&index, 0x0, 10).is_empty());
    }

    /// A lifetime whose range grew after it was looked up is found by either
    /// of its ranges, as `held` accepts.
    #[test]
    fn both_ranges_are_indexed() {
        let mut c = cand(7, 0x5000, 0x6000, 0, 100);
        c.seen_start = 0x4000;
        c.lock_seq = 3;
        let index = Candidates::new(vec![c]);
        let mut u = fault(0x4800, 50);
        u.has_mm_seq = 1;
        u.mm_seq = 4;
        assert_eq!(index.holders(&u).count(), 1);
    }
}
