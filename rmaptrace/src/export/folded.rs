//! Folded stacks, the format flame graph tools read (stackcollapse's output):
//! one line per call site, `comm;root;...;leaf;[mapping] count`.
use anyhow::{Context, Result};
use std::{
    borrow::Cow,
    io::{BufWriter, Write},
    os::unix::ffi::OsStrExt,
    path::Path,
};

use crate::files::Replacement;

pub struct CallSite<'a> {
    pub comm: &'a str,
    /// Function labels, root first.
    pub frames: &'a [String],
    /// What was faulted on, e.g. "shmem shmem_fault do_shared_fault".
    pub mapping: &'a str,
    pub count: u64,
}

/// Every part is named by the traced process (its comm, its binaries' symbols,
/// its file names): escaped so that it stays on its line and one frame. A space
/// may stay: readers take the count after the last one, and the leaf frame
/// always ends with `]`, so no part of a name is taken for a count.
fn part(s: &str) -> Cow<'_, str> {
    let shown = crate::text::visible(s);
    if shown.contains(';') {
        Cow::Owned(shown.replace(';', ":"))
    } else {
        shown
    }
}

pub fn line(cs: &CallSite<'_>) -> String {
    let mut out = String::new();
    out.push_str(&part(cs.comm));
    for f in cs.frames {
        out.push(';');
        out.push_str(&part(f));
    }
    out.push_str(";[");
    out.push_str(&part(cs.mapping));
    out.push_str("] ");
    out.push_str(itoa::Buffer::new().format(cs.count));
    out
}

/// All lines, sorted so that one trace always gives one file.
pub fn lines(sites: &[CallSite<'_>]) -> Vec<String> {
    let mut lines: Vec<String> = sites.iter().map(line).collect();
    lines.sort();
    lines
}

/// The file's contents: `lines` (as [`lines`] makes them), one a line.
pub fn contents(lines: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out
}

/// An output written at the end of the trace, created when it starts: a path
/// that cannot be written fails before anything is loaded. It is created new
/// and replaces `path` only once written (never through a symlink,
/// owner-only), as the JSON export is.
pub struct PendingFile {
    replacement: Replacement,
    cannot: String,
}

impl PendingFile {
    /// `what` the file holds, and the `flag` that names it, for errors.
    pub fn create(path: &Path, what: &str, flag: &str) -> Result<Self> {
        let shown = crate::text::shown(path.as_os_str().as_bytes());
        let cannot = format!("cannot write {what} to {shown}: choose a writable path with {flag}");
        let replacement = Replacement::create(path).with_context(|| cannot.clone())?;
        Ok(PendingFile {
            replacement,
            cannot,
        })
    }

    pub fn finish(mut self, contents: &[u8]) -> Result<()> {
        let cannot = || self.cannot.clone();
        let mut out = BufWriter::new(self.replacement.file().with_context(cannot)?);
        out.write_all(contents).with_context(cannot)?;
        out.flush().with_context(cannot)?;
        drop(out);
        self.replacement.commit().with_context(cannot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site<'a>(comm: &'a str, frames: &'a [String], count: u64) -> CallSite<'a> {
        CallSite {
            comm,
            frames,
            mapping: "anon do_anonymous_page",
            count,
        }
    }

    #[test]
    fn a_line_is_comm_frames_root_first_mapping_and_count() {
        let frames = ["main".to_string(), "fill".to_string()];
        assert_eq!(
            line(&site("app", &frames, 42)),
            "app;main;fill;[anon do_anonymous_page] 42"
        );
        assert_eq!(line(&site("app", &[], 7)), "app;[anon do_anonymous_page] 7");
    }

    #[test]
    fn names_cannot_break_lines_or_frames() {
        let frames = [
            "std::array<int; 4>::at".to_string(),
            "évil\nfake;line 99".to_string(),
            "ok 12".to_string(),
        ];
        let l = line(&CallSite {
            comm: "a\x1b[2J;b",
            frames: &frames,
            mapping: "file filemap_fault /tmp/x;y\r 5",
            count: 3,
        });
        assert_eq!(
            l,
            "a\\x1b[2J:b;std::array<int: 4>::at;évil\\x0afake:line 99;ok 12;\
             [file filemap_fault /tmp/x:y\\x0d 5] 3"
        );
        assert!(!l.chars().any(char::is_control));
        let (stack, count) = l.rsplit_once(' ').unwrap();
        assert_eq!(count, "3");
        assert_eq!(stack.split(';').count(), 5);
    }

    #[test]
    fn lines_are_sorted_and_written_privately() {
        use std::os::unix::fs::PermissionsExt;
        let (a, b) = (["z".to_string()], ["a".to_string()]);
        let sites = [site("p2", &a, 1), site("p1", &a, 2), site("p1", &b, 3)];
        assert_eq!(
            lines(&sites),
            [
                "p1;a;[anon do_anonymous_page] 3",
                "p1;z;[anon do_anonymous_page] 2",
                "p2;z;[anon do_anonymous_page] 1",
            ]
        );
        let dir = crate::files::private_dir("rmaptrace-test-").unwrap();
        let path = dir.join("stacks.folded");
        PendingFile::create(&path, "the folded stacks", "--folded")
            .unwrap()
            .finish(&contents(&lines(&sites)))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("p1;a;[anon do_anonymous_page] 3\n"));
        assert_eq!(text.lines().count(), 3);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let err = PendingFile::create(&dir.join("missing/x"), "the folded stacks", "--folded")
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("choose a writable path with --folded"),
            "{err:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
