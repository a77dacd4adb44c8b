//! What a process had mapped, read from /proc/PID/maps while it lived: its
//! stacks are symbolized at the end of the trace, when it may be gone.
use std::{ffi::OsStr, os::unix::ffi::OsStrExt, path::PathBuf};

/// One executable mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    /// The mapped file, absolute, as the process saw it; `None` for
    /// anonymous and special mappings.
    pub path: Option<PathBuf>,
    /// As shown: the file name for files, `[vdso]`, `[stack]`, `[heap]`,
    /// `[anon]` (or the kernel's own bracketed name) otherwise.
    pub name: String,
    /// The mapped file's inode: the file found at `path` later is used only if
    /// it is still that one (a library upgraded or a container's file of the
    /// same name would give wrong names). 0 when there is no file.
    pub inode: u64,
}

/// A process's executable mappings, sorted by start, not overlapping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessModules {
    modules: Vec<Module>,
}

const DELETED: &[u8] = b" (deleted)";

impl ProcessModules {
    /// Parses /proc/PID/maps. Lines that do not parse are skipped: the file is
    /// the kernel's, but a trace must not fail on a format it does not know.
    pub fn parse(maps: &[u8]) -> Self {
        let mut modules: Vec<Module> = maps.split(|&b| b == b'\n').filter_map(parse_line).collect();
        modules.sort_by_key(|m| m.start);
        // The kernel never reports overlapping mappings; a concatenation of
        // two reads might, and `find` relies on there being none.
        modules.dedup_by(|later, earlier| later.start < earlier.end);
        ProcessModules { modules }
    }

    pub fn read(pid: u32) -> std::io::Result<Self> {
        std::fs::read(format!("/proc/{pid}/maps")).map(|maps| Self::parse(&maps))
    }

    #[cfg(test)]
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    pub fn covers(&self, ip: u64) -> bool {
        self.find(ip).is_some()
    }

    /// The module holding `ip` and the file offset `ip` has in it.
    pub fn find(&self, ip: u64) -> Option<(&Module, u64)> {
        let i = self
            .modules
            .partition_point(|m| m.start <= ip)
            .checked_sub(1)?;
        let m = &self.modules[i];
        (ip < m.end).then(|| (m, ip - m.start + m.file_offset))
    }

    /// Takes in a later read of the same process: its mappings replace what
    /// they overlap, and the older ones elsewhere stay, so that a library
    /// unmapped in between still names the stacks taken while it was mapped.
    pub fn merge_newer(&mut self, newer: ProcessModules) {
        let mut merged = newer.modules;
        let mut kept = Vec::new();
        for old in std::mem::take(&mut self.modules) {
            let first = merged.partition_point(|n| n.end <= old.start);
            let old_end = old.end;
            let mut rest = vec![old];
            for n in merged[first..].iter().take_while(|n| n.start < old_end) {
                rest = rest
                    .into_iter()
                    .flat_map(|piece| cut(piece, n.start, n.end))
                    .collect();
                if rest.is_empty() {
                    break;
                }
            }
            kept.extend(rest);
        }
        merged.append(&mut kept);
        merged.sort_by_key(|m| m.start);
        self.modules = merged;
    }
}

/// What is left of `m` outside [start, end): none, one or two pieces.
fn cut(m: Module, start: u64, end: u64) -> Vec<Module> {
    if end <= m.start || start >= m.end {
        return vec![m];
    }
    let mut pieces = Vec::new();
    if m.start < start {
        pieces.push(Module {
            end: start,
            ..m.clone()
        });
    }
    if end < m.end {
        pieces.push(Module {
            start: end,
            file_offset: m.file_offset + (end - m.start),
            ..m
        });
    }
    pieces
}

/// `start-end perms offset dev inode   path`, the path (maybe with spaces, maybe
/// not UTF-8) being everything after the inode's padding.
fn parse_line(line: &[u8]) -> Option<Module> {
    let mut rest = line;
    let mut field = || {
        let start = rest.iter().position(|&b| b != b' ')?;
        let len = rest[start..]
            .iter()
            .position(|&b| b == b' ')
            .unwrap_or(rest.len() - start);
        let f = &rest[start..start + len];
        rest = &rest[start + len..];
        Some(f)
    };
    let range = field()?;
    let perms = field()?;
    let offset = field()?;
    let _dev = field()?;
    let inode = field()?;
    let (start, end) = std::str::from_utf8(range).ok()?.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let file_offset = u64::from_str_radix(std::str::from_utf8(offset).ok()?, 16).ok()?;
    let inode: u64 = std::str::from_utf8(inode).ok()?.parse().ok()?;
    if start >= end || !perms.contains(&b'x') {
        return None;
    }
    let shown = rest
        .iter()
        .position(|&b| b != b' ')
        .map_or(&[][..], |i| &rest[i..]);
    let (path, name) = if shown.first() == Some(&b'/') {
        let (file, deleted) = match shown.strip_suffix(DELETED) {
            Some(file) => (file, true),
            None => (shown, false),
        };
        let path = PathBuf::from(OsStr::from_bytes(&unescape_newlines(file)));
        let mut name =
            crate::text::from_bytes(path.file_name().map_or(path.as_os_str(), |n| n).as_bytes());
        if deleted {
            name.push_str(" (deleted)");
        }
        (Some(path), name)
    } else if shown.is_empty() {
        (None, "[anon]".to_string())
    } else {
        (None, crate::text::from_bytes(shown))
    };
    Some(Module {
        start,
        end,
        file_offset,
        inode: if path.is_some() { inode } else { 0 },
        path,
        name,
    })
}

/// The kernel writes a newline in a path as `\012` (seq_path), so that the
/// file stays one mapping a line.
fn unescape_newlines(path: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const ESCAPED: &[u8] = b"\\012";
    if !path.windows(ESCAPED.len()).any(|w| w == ESCAPED) {
        return path.into();
    }
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i..].starts_with(ESCAPED) {
            out.push(b'\n');
            i += ESCAPED.len();
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const MAPS: &[u8] = b"\
55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1312 /usr/bin/cat\n\
55d0c0a02000-55d0c0a07000 r-xp 00002000 fd:01 1312 /usr/bin/cat\n\
7f0000000000-7f0000001000 rwxp 00000000 00:00 0 \n\
7f0000100000-7f0000180000 r-xp 00028000 fd:01 77 /tmp/evil \xff\x1b[2J dir/lib;x.so (deleted)\n\
7f0000200000-7f0000201000 r-xp 00001000 fd:01 78                         /opt/a\\012b.so\n\
7ffd1000a000-7ffd1000c000 r-xp 00000000 00:00 0                          [vdso]\n\
7ffd1000c000-7ffd1000d000 rw-p 00000000 00:00 0                          [stack]\n\
not a maps line\n\
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";

    #[test]
    fn keeps_executable_mappings_with_their_paths_as_bytes() {
        let m = ProcessModules::parse(MAPS);
        let names: Vec<&str> = m.modules().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "cat",
                "[anon]",
                "lib;x.so (deleted)",
                "a\nb.so",
                "[vdso]",
                "[vsyscall]"
            ]
        );
        let cat = &m.modules()[0];
        assert_eq!(
            (cat.start, cat.end, cat.file_offset, cat.inode),
            (0x55d0c0a02000, 0x55d0c0a07000, 0x2000, 1312)
        );
        assert_eq!(cat.path.as_deref(), Some(Path::new("/usr/bin/cat")));

        let evil = &m.modules()[2];
        assert_eq!(
            evil.path.as_ref().unwrap().as_os_str().as_bytes(),
            b"/tmp/evil \xff\x1b[2J dir/lib;x.so",
            "the path is kept byte for byte, the deleted marker dropped"
        );
        assert_eq!(evil.inode, 77);
        assert_eq!(
            m.modules()[3].path.as_deref(),
            Some(Path::new("/opt/a\nb.so"))
        );
        for special in [1, 4, 5] {
            assert_eq!(m.modules()[special].path, None);
            assert_eq!(m.modules()[special].inode, 0);
        }
    }

    #[test]
    fn a_non_utf8_file_name_is_shown_losslessly() {
        let m = ProcessModules::parse(b"1000-2000 r-xp 0 08:01 5 /lib/\xffname.so\n");
        assert_eq!(m.modules()[0].name, "\\xffname.so");
        assert_eq!(
            m.modules()[0].path.as_ref().unwrap().as_os_str().as_bytes(),
            b"/lib/\xffname.so"
        );
    }

    #[test]
    fn finds_the_module_and_file_offset_of_an_address() {
        let m = ProcessModules::parse(MAPS);
        let (cat, off) = m.find(0x55d0c0a02010).unwrap();
        assert_eq!((cat.name.as_str(), off), ("cat", 0x2010));
        let (vdso, off) = m.find(0x7ffd1000b234).unwrap();
        assert_eq!((vdso.name.as_str(), off), ("[vdso]", 0x1234));
        assert!(m.covers(0x55d0c0a06fff));
        assert!(!m.covers(0x55d0c0a07000), "end is exclusive");
        assert!(!m.covers(0x55d0c0a01000), "not executable");
        assert!(!m.covers(0x7ffd1000c010), "the stack is not executable");
        assert!(!m.covers(0));
        assert!(!m.covers(u64::MAX));
        assert!(!ProcessModules::default().covers(0x1000));
    }

    #[test]
    fn a_newer_read_replaces_what_it_overlaps_only() {
        let mut m = ProcessModules::parse(
            b"1000-3000 r-xp 0 08:01 1 /old/a.so\n\
              5000-6000 r-xp 0 08:01 2 /old/b.so\n\
              8000-9000 r-xp 0 08:01 3 /old/c.so\n",
        );
        m.merge_newer(ProcessModules::parse(
            b"2000-2800 r-xp 4000 08:01 4 /new/d.so\n\
              5000-6000 r-xp 0 08:01 5 /new/b.so\n",
        ));
        let got: Vec<(u64, u64, u64, &str)> = m
            .modules()
            .iter()
            .map(|m| (m.start, m.end, m.file_offset, m.name.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (0x1000, 0x2000, 0, "a.so"),
                (0x2000, 0x2800, 0x4000, "d.so"),
                (0x2800, 0x3000, 0x1800, "a.so"),
                (0x5000, 0x6000, 0, "b.so"),
                (0x8000, 0x9000, 0, "c.so"),
            ]
        );
        assert_eq!(
            m.find(0x5010).unwrap().0.path.as_deref(),
            Some(Path::new("/new/b.so"))
        );
        assert_eq!(
            m.find(0x8010).unwrap().0.name,
            "c.so",
            "unmapped since, kept"
        );
        assert_eq!(m.find(0x2900).unwrap().1, 0x1900);
    }
}
