//! The cgroup v2 hierarchy: where it is mounted (/proc/self/mountinfo; on a
//! hybrid system it is /sys/fs/cgroup/unified, beside the v1 controllers),
//! the path of a cgroup id (a cgroup's id is its directory's inode number on
//! cgroup2, what `bpf_get_current_cgroup_id` returns), and the processes of a
//! subtree. Paths are bytes: whoever creates a cgroup names it.
use std::{
    collections::HashMap,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The mount point of the cgroup2 file system in a mountinfo text (first
/// match); None when there is none.
pub fn cgroup2_mount(mountinfo: &[u8]) -> Option<PathBuf> {
    for line in mountinfo.split(|&b| b == b'\n') {
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let dash = fields.iter().position(|f| *f == b"-")?;
        if fields.get(dash + 1) == Some(&&b"cgroup2"[..]) {
            let mount = fields.get(4)?;
            return Some(PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(mount))));
        }
    }
    None
}

/// mountinfo escapes space, tab, newline and backslash as `\NNN` (octal).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 4 <= field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// The cgroup v2 path of a process from its /proc/PID/cgroup text (the
/// `0::PATH` line).
pub fn v2_path_of(proc_cgroup: &[u8]) -> Option<&[u8]> {
    proc_cgroup
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"0::"))
}

/// Names cgroup ids by walking the hierarchy, remembering what it found.
pub struct CgroupTree {
    root: PathBuf,
    by_id: HashMap<u64, String>,
    walked: Option<Instant>,
}

/// A cgroup id not found is looked for again at most this often: a removed
/// cgroup must not make every summary walk the tree.
const REWALK: Duration = Duration::from_secs(1);
/// Cgroups remembered at most (a walk that finds more keeps the first ones).
const MAX_NAMED: usize = 65536;

impl CgroupTree {
    /// The hierarchy of this system, when cgroup2 is mounted.
    pub fn of_this_system() -> Option<CgroupTree> {
        let info = std::fs::read("/proc/self/mountinfo").ok()?;
        Some(CgroupTree::at(cgroup2_mount(&info)?))
    }

    pub fn at(root: PathBuf) -> CgroupTree {
        CgroupTree {
            root,
            by_id: HashMap::new(),
            walked: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of cgroup `id` below the root (`/` for the root itself),
    /// its bytes as text (`text::from_bytes`).
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        if self.walked.is_some_and(|t| t.elapsed() < REWALK) {
            return None;
        }
        self.walk();
        self.by_id.get(&id).cloned()
    }

    fn walk(&mut self) {
        self.walked = Some(Instant::now());
        self.by_id.clear();
        for dir in subtree(&self.root) {
            let Ok(meta) = std::fs::symlink_metadata(&dir) else {
                continue;
            };
            let rel = dir.strip_prefix(&self.root).unwrap_or(Path::new(""));
            let name = format!("/{}", crate::text::from_bytes(rel.as_os_str().as_bytes()));
            self.by_id.insert(meta.ino(), name);
            if self.by_id.len() >= MAX_NAMED {
                return;
            }
        }
    }
}

/// `dir` and every directory below it, depth first (a directory that cannot
/// be read is given, not its children).
fn subtree(dir: &Path) -> impl Iterator<Item = PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    std::iter::from_fn(move || {
        let d = stack.pop()?;
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        Some(d)
    })
}

/// A cgroup directory given by the user: an absolute path inside the
/// hierarchy, or a path relative to its root (`system.slice/x.service`).
/// Returns the directory and its id.
pub fn resolve(root: &Path, asked: &Path) -> std::io::Result<(PathBuf, u64)> {
    let dir = if asked.is_absolute() && asked.starts_with(root) {
        asked.to_path_buf()
    } else {
        root.join(asked.strip_prefix("/").unwrap_or(asked))
    };
    let meta = std::fs::metadata(&dir)?;
    if !meta.is_dir() || !dir.join("cgroup.procs").exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not a cgroup v2 directory",
        ));
    }
    Ok((dir, meta.ino()))
}

/// Every process in the subtree at `dir` (its cgroup.procs and its
/// descendants').
pub fn processes_below(dir: &Path) -> Vec<u32> {
    subtree(dir)
        .filter_map(|d| std::fs::read(d.join("cgroup.procs")).ok())
        .flat_map(|procs| {
            procs
                .split(|&b| b == b'\n')
                .filter_map(|l| std::str::from_utf8(l).ok()?.parse::<u32>().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_mount_is_found_on_a_hybrid_system() {
        let info = b"22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
30 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate\n\
32 30 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd\n";
        assert_eq!(
            cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = b"29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        let escaped = b"29 23 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(escaped), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(
            cgroup2_mount(b"22 1 0:21 / /proc rw - proc proc rw\n"),
            None
        );
    }

    #[test]
    fn the_v2_line_of_proc_cgroup() {
        let text = b"12:memory:/user.slice\n1:name=systemd:/user.slice/x\n0::/user.slice/x.scope\n";
        assert_eq!(v2_path_of(text), Some(&b"/user.slice/x.scope"[..]));
        assert_eq!(v2_path_of(b"4:memory:/a\n"), None);
    }

    #[test]
    fn ids_are_named_by_their_directory() {
        let dir = crate::files::private_dir("rmaptrace-cgtest-").unwrap();
        std::fs::create_dir_all(dir.join("a/b\u{1b}")).unwrap();
        let id = std::fs::metadata(dir.join("a/b\u{1b}")).unwrap().ino();
        let mut tree = CgroupTree::at(dir.clone());
        assert_eq!(tree.path_of(id).as_deref(), Some("/a/b\u{1b}"));
        let root = std::fs::metadata(&dir).unwrap().ino();
        assert_eq!(tree.path_of(root).as_deref(), Some("/"));
        // Not there: not looked for again at once.
        assert_eq!(tree.path_of(u64::MAX), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
