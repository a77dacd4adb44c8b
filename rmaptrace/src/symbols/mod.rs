//! User stacks as function names: each instruction pointer is found in the
//! mappings the process had ([`ProcessModules`]), then named from the symbols
//! (and DWARF, inlined calls included) of the file mapped there.
mod modules;
mod namer;

pub use modules::{Module, ProcessModules};
pub use namer::ProcessNamer;

use blazesym::symbolize::{source, Input, Symbolized};
use std::{
    collections::{HashMap, HashSet},
    fs::OpenOptions,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
};

/// One frame of a user stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Demangled, as the binary names it (untrusted: escape it to show it).
    pub function: Option<String>,
    /// The module's shown name; empty when no mapping held the address.
    pub module: String,
    /// The file offset in `module` of the address named (for a return address,
    /// of the call instruction's last byte); the address itself when there is
    /// no module.
    pub offset: u64,
}

impl Frame {
    pub fn label(&self) -> String {
        match &self.function {
            Some(f) => f.clone(),
            None if self.module.is_empty() => format!("[unknown] {:#x}", self.offset),
            None => format!("{}+{:#x}", self.module, self.offset),
        }
    }
}

/// Names stacks for a whole trace: each file is parsed once (blazesym keeps
/// it), and each (file, offset) named once.
pub struct Symbolizer {
    blaze: blazesym::symbolize::Symbolizer,
    /// Names at a file offset, innermost inlined call first; empty when the
    /// file has no symbol there. Keyed by path and inode.
    names: HashMap<(PathBuf, u64, u64), Vec<String>>,
    /// Files that could not be opened, were not the mapped file any more, or
    /// did not parse: not tried again.
    unusable: HashSet<(PathBuf, u64)>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

enum Slot {
    Unknown(u64),
    Unnamed(String, u64),
    File(PathBuf, u64, String, u64),
}

impl Slot {
    fn of(m: &Module, offset: u64) -> Slot {
        match &m.path {
            Some(path) => Slot::File(path.clone(), m.inode, m.name.clone(), offset),
            None => Slot::Unnamed(m.name.clone(), offset),
        }
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        Symbolizer {
            blaze: blazesym::symbolize::Symbolizer::new(),
            names: HashMap::new(),
            unusable: HashSet::new(),
        }
    }

    /// `ips` leaf first, as the kernel's stack map returns them. Frames come
    /// back in that order, an address inside inlined calls giving one frame
    /// per call, innermost first. Zeros are skipped.
    pub fn frames(&mut self, modules: &ProcessModules, ips: &[u64]) -> Vec<Frame> {
        let slots: Vec<Slot> = ips
            .iter()
            .enumerate()
            .filter(|&(_, &ip)| ip != 0)
            .map(|(i, &ip)| {
                // A return address is the instruction after the call, which
                // may be the first one of the next function: name the call.
                let addr = if i == 0 { ip } else { ip - 1 };
                modules
                    .find(addr)
                    .map_or(Slot::Unknown(addr), |(m, offset)| Slot::of(m, offset))
            })
            .collect();

        let mut wanted: HashMap<(&Path, u64), Vec<u64>> = HashMap::new();
        for slot in &slots {
            if let Slot::File(path, inode, _, offset) = slot {
                if !self.names.contains_key(&(path.clone(), *inode, *offset)) {
                    wanted.entry((path, *inode)).or_default().push(*offset);
                }
            }
        }
        for ((path, inode), mut offsets) in wanted {
            offsets.sort_unstable();
            offsets.dedup();
            self.resolve(path, inode, &offsets);
        }

        let mut frames = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot {
                Slot::Unknown(addr) => frames.push(Frame {
                    function: None,
                    module: String::new(),
                    offset: addr,
                }),
                Slot::Unnamed(module, offset) => frames.push(Frame {
                    function: None,
                    module,
                    offset,
                }),
                Slot::File(path, inode, module, offset) => {
                    match self.names.get(&(path, inode, offset)) {
                        Some(names) if !names.is_empty() => {
                            frames.extend(names.iter().map(|f| Frame {
                                function: Some(f.clone()),
                                module: module.clone(),
                                offset,
                            }))
                        }
                        _ => frames.push(Frame {
                            function: None,
                            module,
                            offset,
                        }),
                    }
                }
            }
        }
        frames
    }

    /// Names `offsets` (sorted, distinct) of the file at `path`, if it is still
    /// the file that was mapped. A file that cannot be used leaves the offsets
    /// unnamed: a stack is shown with what could be named, never fails.
    fn resolve(&mut self, path: &Path, inode: u64, offsets: &[u64]) {
        let key = (path.to_path_buf(), inode);
        if self.unusable.contains(&key) {
            return;
        }
        let Some(named) = self.symbolize(path, inode, offsets) else {
            self.unusable.insert(key);
            return;
        };
        for (&offset, names) in offsets.iter().zip(named) {
            self.names
                .insert((path.to_path_buf(), inode, offset), names);
        }
    }

    fn symbolize(&self, path: &Path, inode: u64, offsets: &[u64]) -> Option<Vec<Vec<String>>> {
        // The path is the traced process's to choose, and rmaptrace runs as
        // root: opened non-blocking, so that a FIFO put there cannot hang the
        // end of the trace, and used only if it is a regular file, the one
        // mapped (not an upgrade installed since, nor another file of that
        // name in another mount namespace).
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
            .ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || (inode != 0 && meta.ino() != inode) {
            return None;
        }
        // blazesym opens the path itself: through our descriptor it gets the
        // file just checked, whatever the path names by then.
        let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let src = source::Source::Elf(source::Elf::new(fd_path));
        let symbolized = self
            .blaze
            .symbolize(&src, Input::FileOffset(offsets))
            .ok()?;
        drop(file);
        Some(
            symbolized
                .into_iter()
                .map(|s| match s {
                    Symbolized::Sym(sym) => {
                        let mut names: Vec<String> = sym
                            .inlined
                            .iter()
                            .rev()
                            .map(|f| f.name.to_string())
                            .collect();
                        names.push(sym.name.into_owned());
                        names.retain(|n| !n.is_empty());
                        names
                    }
                    Symbolized::Unknown(_) => Vec::new(),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    #[no_mangle]
    extern "C" fn rmaptrace_symbols_test_marker() -> u64 {
        std::hint::black_box(0x5eed)
    }

    fn marker() -> u64 {
        rmaptrace_symbols_test_marker as *const () as usize as u64
    }

    #[test]
    fn names_a_function_of_this_binary() {
        assert_eq!(rmaptrace_symbols_test_marker(), 0x5eed);
        let m = ProcessModules::read(std::process::id()).unwrap();
        assert!(m.covers(marker()));
        let mut s = Symbolizer::new();
        let frames = s.frames(&m, &[marker() + 1]);
        assert_eq!(
            frames.last().unwrap().function.as_deref(),
            Some("rmaptrace_symbols_test_marker"),
            "{frames:?}"
        );
        assert_eq!(
            frames.last().unwrap().label(),
            "rmaptrace_symbols_test_marker"
        );
        // Named again, from the cache, in the order given; a return address
        // one past the function's first byte names the call at that byte.
        let again = s.frames(&m, &[marker() + 1, 0, marker() + 1]);
        assert_eq!(again[..frames.len()], frames[..]);
        let ret = again.last().unwrap();
        assert_eq!(
            ret.function.as_deref(),
            Some("rmaptrace_symbols_test_marker")
        );
        assert_eq!(ret.offset, frames.last().unwrap().offset - 1);
    }

    #[test]
    fn addresses_outside_every_module_are_unknown() {
        let m = ProcessModules::parse(b"1000-2000 r-xp 0 08:01 5 /lib/x.so\n");
        let frames = Symbolizer::new().frames(&m, &[0x10, 0, 0x3001]);
        let labels: Vec<String> = frames.iter().map(Frame::label).collect();
        assert_eq!(labels, ["[unknown] 0x10", "[unknown] 0x3000"]);
    }

    #[test]
    fn a_missing_file_gives_module_and_offset() {
        let m = ProcessModules::parse(
            b"1000-2000 r-xp 4000 08:01 5 /nonexistent/rmaptrace-test.so (deleted)\n\
              7000-8000 r-xp 0 00:00 0 [vdso]\n",
        );
        let frames = Symbolizer::new().frames(&m, &[0x1010, 0x1020, 0x7101]);
        let labels: Vec<String> = frames.iter().map(Frame::label).collect();
        assert_eq!(
            labels,
            [
                "rmaptrace-test.so (deleted)+0x4010",
                // A return address: the call before it is named.
                "rmaptrace-test.so (deleted)+0x401f",
                "[vdso]+0x100",
            ]
        );
    }

    #[test]
    fn a_file_that_is_not_the_mapped_one_is_not_used() {
        let live = ProcessModules::read(std::process::id()).unwrap();
        let (module, offset) = live.find(marker()).unwrap();
        let maps = format!(
            "{:x}-{:x} r-xp {:x} 08:01 {} ",
            module.start,
            module.end,
            module.file_offset,
            module.inode + 1
        );
        let mut maps = maps.into_bytes();
        maps.extend_from_slice(module.path.as_ref().unwrap().as_os_str().as_encoded_bytes());
        let m = ProcessModules::parse(&maps);
        let frames = Symbolizer::new().frames(&m, &[marker()]);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].function, None);
        assert_eq!(frames[0].offset, offset);
    }

    #[test]
    fn a_fifo_at_the_path_does_not_block() {
        let dir = crate::files::private_dir("rmaptrace-test-").unwrap();
        let fifo = dir.join("lib.so");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut maps = b"1000-2000 r-xp 0 08:01 0 ".to_vec();
        maps.extend_from_slice(fifo.as_os_str().as_encoded_bytes());
        let m = ProcessModules::parse(&maps);
        let frames = Symbolizer::new().frames(&m, &[0x1010]);
        assert_eq!(frames[0].label(), "lib.so+0x10");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
