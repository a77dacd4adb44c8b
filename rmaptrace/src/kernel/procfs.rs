//! /proc readers behind a trait, so attribution runs in tests against fakes.
use std::path::PathBuf;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    pub comm: String,
    /// `R`, `S`, ... `Z` for a zombie (exited, not yet reaped).
    pub state: char,
    /// The parent's pid (field 4).
    pub ppid: u32,
    pub minflt: u64,
    pub majflt: u64,
    /// A kernel thread (PF_KTHREAD): no user memory, nothing to trace.
    pub kernel_thread: bool,
    /// When it started, in clock ticks since boot (field 22).
    pub start_ticks: u64,
}

/// `task_struct->flags` bit of kernel threads (include/linux/sched.h; part of
/// the /proc ABI through the stat file's flags field, not in BTF as a value).
const PF_KTHREAD: u64 = 0x0020_0000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapsEntry {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, `[vdso]`, `/dev/zero (deleted)`), empty if none.
    pub name: String,
}

/// What rmaptrace reads from /proc. `LiveProc` is the real one.
pub trait ProcSource: Send {
    fn stat(&self, pid: u32) -> Option<ProcStat>;
    fn maps(&self, pid: u32) -> Option<Vec<MapsEntry>>;
    /// Whether the process still runs code: a zombie has exited.
    fn alive(&self, pid: u32) -> bool {
        self.stat(pid)
            .is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
    }
    /// Every pid in the system.
    fn pids(&self) -> Vec<u32>;
    /// When `pid`'s process started, on the clock of the eBPF timestamps
    /// (CLOCK_MONOTONIC), at the latest: None if unknown.
    fn started_ns(&self, pid: u32) -> Option<u64> {
        let _ = pid;
        None
    }
    /// The cgroup v2 path of a cgroup id; None if unknown (no cgroup2, or
    /// the cgroup is gone).
    fn cgroup_path(&self, id: u64) -> Option<String> {
        let _ = id;
        None
    }
    /// The cgroup v2 path of a running process, as /proc says.
    fn cgroup_of(&self, pid: u32) -> Option<String> {
        let _ = pid;
        None
    }
    /// The kernel's symbols at `wanted` (sorted) as of now (/proc/kallsyms):
    /// None if unreadable.
    fn kallsyms(&self, wanted: &[u64]) -> Option<super::kallsyms::Kallsyms> {
        let _ = wanted;
        None
    }
}

pub struct LiveProc {
    root: PathBuf,
    /// Found at the first cgroup id asked about.
    cgroups: std::sync::OnceLock<Option<std::sync::Mutex<super::cgroup::CgroupTree>>>,
}

impl Default for LiveProc {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/proc"),
            cgroups: std::sync::OnceLock::new(),
        }
    }
}

impl ProcSource for LiveProc {
    fn cgroup_path(&self, id: u64) -> Option<String> {
        let tree = self
            .cgroups
            .get_or_init(|| super::cgroup::CgroupTree::of_this_system().map(std::sync::Mutex::new))
            .as_ref()?;
        tree.lock().ok()?.path_of(id)
    }

    fn cgroup_of(&self, pid: u32) -> Option<String> {
        let bytes = std::fs::read(self.root.join(pid.to_string()).join("cgroup")).ok()?;
        super::cgroup::v2_path_of(&bytes).map(crate::text::from_bytes)
    }

    fn kallsyms(&self, wanted: &[u64]) -> Option<super::kallsyms::Kallsyms> {
        super::kallsyms::Kallsyms::load_only(wanted).ok()
    }

    // Read as bytes: a comm or a file name need not be UTF-8.
    fn stat(&self, pid: u32) -> Option<ProcStat> {
        let bytes = std::fs::read(self.root.join(pid.to_string()).join("stat")).ok()?;
        parse_stat(&crate::text::from_bytes(&bytes))
    }

    fn maps(&self, pid: u32) -> Option<Vec<MapsEntry>> {
        let bytes = std::fs::read(self.root.join(pid.to_string()).join("maps")).ok()?;
        let text = crate::text::from_bytes(&bytes);
        Some(text.lines().filter_map(parse_maps_line).collect())
    }

    fn started_ns(&self, pid: u32) -> Option<u64> {
        // starttime is CLOCK_BOOTTIME in USER_HZ ticks (100 a second); taking
        // away the time suspended so far can only make it earlier than the
        // monotonic truth, never later.
        const TICK_NS: u64 = 10_000_000;
        let boot = self.stat(pid)?.start_ticks.checked_mul(TICK_NS)?;
        let clock = |id| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes one timespec.
            unsafe { libc::clock_gettime(id, &mut ts) };
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        };
        let suspended = clock(libc::CLOCK_BOOTTIME).saturating_sub(clock(libc::CLOCK_MONOTONIC));
        Some(boot.saturating_sub(suspended))
    }

    fn pids(&self) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }
}

/// `pids` with every process before its descendants among them (then by
/// pid), given each one's parent: a tree signalled in this order has its
/// top get the signal before it can see its children die of it.
pub fn ancestors_first(mut pids: Vec<u32>, parent_of: impl Fn(u32) -> Option<u32>) -> Vec<u32> {
    let parents: std::collections::HashMap<u32, u32> = pids
        .iter()
        .filter_map(|&p| Some((p, parent_of(p)?)))
        .collect();
    // Depth within the set; bounded, in case a reused pid made a cycle.
    let depth = |mut p: u32| {
        let mut d = 0;
        while let Some(&up) = parents.get(&p) {
            if !parents.contains_key(&up) || d >= parents.len() {
                break;
            }
            d += 1;
            p = up;
        }
        d
    };
    pids.sort_by_key(|&p| (depth(p), p));
    pids
}

/// Parses /proc/PID/stat. The comm may contain spaces and parentheses, so the
/// fields are counted from the last ')'.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); flags is field 9, minflt 10, majflt 12,
    // starttime 22.
    let flags: u64 = rest.get(6)?.parse().ok()?;
    Some(ProcStat {
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        minflt: rest.get(7)?.parse().ok()?,
        majflt: rest.get(9)?.parse().ok()?,
        kernel_thread: flags & PF_KTHREAD != 0,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

pub fn parse_maps_line(line: &str) -> Option<MapsEntry> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.to_string();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let name = it.next().unwrap_or("").trim().to_string();
    let (start, end) = range.split_once('-')?;
    Some(MapsEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        inode,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_ordered_from_its_top() {
        // sh (90) started sleeps 120 and 95, 120 a child 130; 7 is outside.
        let parent = |p| match p {
            90 => Some(7),
            120 | 95 => Some(90),
            130 => Some(120),
            _ => None,
        };
        assert_eq!(
            ancestors_first(vec![130, 120, 95, 90], parent),
            [90, 95, 120, 130]
        );
        // A reused pid that makes a cycle still ends.
        let cycle = |p| if p == 1 { Some(2) } else { Some(1) };
        assert_eq!(ancestors_first(vec![2, 1], cycle).len(), 2);
    }

    #[test]
    fn stat_with_hostile_comm() {
        let s = "42 (a) b (c)) S 1 42 42 0 -1 4194560 123 7 4 0 5 6 7 8 20 0 1 0 9 1000 10";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.comm, "a) b (c)");
        assert_eq!(st.state, 'S');
        assert_eq!(st.ppid, 1);
        assert_eq!(st.minflt, 123);
        assert_eq!(st.majflt, 4);
        assert!(!st.kernel_thread);
        assert_eq!(st.start_ticks, 9);
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 9 0 0";
        assert!(parse_stat(kthreadd).unwrap().kernel_thread);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn maps_lines() {
        let e = parse_maps_line(
            "7f0000000000-7f0000004000 rw-s 00000000 00:01 1234                       /dev/zero (deleted)",
        )
        .unwrap();
        assert_eq!(e.start, 0x7f0000000000);
        assert_eq!(e.end, 0x7f0000004000);
        assert_eq!(e.perms, "rw-s");
        assert_eq!(e.inode, 1234);
        assert_eq!(e.name, "/dev/zero (deleted)");
        let anon = parse_maps_line("7f0000000000-7f0000004000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(anon.name, "");
        assert!(parse_maps_line("nonsense").is_none());
    }
}
