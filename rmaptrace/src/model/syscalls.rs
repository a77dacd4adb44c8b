//! mmap/munmap/mremap records: pairs the entry and exit records of one thread and
//! decodes flags the way strace prints them.
use serde::Serialize;

const MAP_FLAGS: &[(u64, &str)] = &[
    (0x10, "MAP_FIXED"),
    (0x20, "MAP_ANONYMOUS"),
    (0x100, "MAP_GROWSDOWN"),
    (0x800, "MAP_DENYWRITE"),
    (0x1000, "MAP_EXECUTABLE"),
    (0x2000, "MAP_LOCKED"),
    (0x4000, "MAP_NORESERVE"),
    (0x8000, "MAP_POPULATE"),
    (0x10000, "MAP_NONBLOCK"),
    (0x20000, "MAP_STACK"),
    (0x40000, "MAP_HUGETLB"),
    (0x80000, "MAP_SYNC"),
    (0x100000, "MAP_FIXED_NOREPLACE"),
    (0x4000000, "MAP_UNINITIALIZED"),
];

pub const PROT_EXEC: u64 = 0x4;
pub const MAP_SHARED: u64 = 0x1;
pub const MAP_FIXED: u64 = 0x10;
pub const MAP_ANONYMOUS: u64 = 0x20;

pub fn map_flag_names(flags: u64) -> Vec<&'static str> {
    let mut names = vec![match flags & 0x3 {
        0x1 => "MAP_SHARED",
        0x2 => "MAP_PRIVATE",
        0x3 => "MAP_SHARED_VALIDATE",
        _ => "MAP_TYPE_0",
    }];
    names.extend(
        MAP_FLAGS
            .iter()
            .filter(|(b, _)| flags & b != 0)
            .map(|(_, n)| *n),
    );
    names
}

pub fn prot_names(prot: u64) -> String {
    let mut s = String::new();
    s.push(if prot & 1 != 0 { 'r' } else { '-' });
    s.push(if prot & 2 != 0 { 'w' } else { '-' });
    s.push(if prot & 4 != 0 { 'x' } else { '-' });
    s
}

/// One mapping change, as exported in `{"type":"mmap"}` lines.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MmapRecord {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub op: &'static str,
    pub addr: String,
    pub len: u64,
    pub prot: String,
    pub flags: Vec<&'static str>,
    pub fd: i64,
    pub path: Option<String>,
    /// Negative errno when the call failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<i64>,
    #[serde(skip)]
    pub raw_flags: u64,
}

/// A syscall's result as the kernel returns it: addresses, or -errno.
pub fn syscall_error(ret: u64) -> Option<i64> {
    let r = ret as i64;
    (-4095..0).contains(&r).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_like_strace() {
        assert_eq!(map_flag_names(0x22), vec!["MAP_PRIVATE", "MAP_ANONYMOUS"]);
        assert_eq!(map_flag_names(0x8001), vec!["MAP_SHARED", "MAP_POPULATE"]);
        assert_eq!(prot_names(3), "rw-");
        assert_eq!(syscall_error((-12i64) as u64), Some(-12));
        assert_eq!(syscall_error(0x7f00_0000_0000), None);
    }
}
