//! /proc readers behind a trait, so attribution runs in tests against fakes.
use std::path::PathBuf;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    pub comm: String,
    /// `R`, `S`, ... `Z` for a zombie (exited, not yet reaped).
    pub state: char,
    pub minflt: u64,
    pub majflt: u64,
}

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
}

pub struct LiveProc {
    root: PathBuf,
}

impl Default for LiveProc {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/proc"),
        }
    }
}

impl ProcSource for LiveProc {
    fn stat(&self, pid: u32) -> Option<ProcStat> {
        let text = std::fs::read_to_string(self.root.join(pid.to_string()).join("stat")).ok()?;
        parse_stat(&text)
    }

    fn maps(&self, pid: u32) -> Option<Vec<MapsEntry>> {
        let text = std::fs::read_to_string(self.root.join(pid.to_string()).join("maps")).ok()?;
        Some(text.lines().filter_map(parse_maps_line).collect())
    }

    fn pids(&self) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }
}

/// Parses /proc/PID/stat. The comm may contain spaces and parentheses, so the
/// fields are counted from the last ')'.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); minflt is field 10, majflt field 12.
    Some(ProcStat {
        comm,
        state: rest.first()?.chars().next()?,
        minflt: rest.get(7)?.parse().ok()?,
        majflt: rest.get(9)?.parse().ok()?,
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
    fn stat_with_hostile_comm() {
        let s = "42 (a) b (c)) S 1 42 42 0 -1 4194560 123 7 4 0 5 6 7 8 20 0 1 0 9 1000 10";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.comm, "a) b (c)");
        assert_eq!(st.state, 'S');
        assert_eq!(st.minflt, 123);
        assert_eq!(st.majflt, 4);
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
