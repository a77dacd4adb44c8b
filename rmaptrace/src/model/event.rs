//! The records the kernel side sends, as the model takes them in (bpf::events
//! decodes the ring buffer's bytes into these), and the names they carry.
use rmaptrace_common::{
    ExitEvent, FaultEvent, FaultOutcome, MmapExitEvent, MmapSetupEvent, SyscallEvent, TaskEvent,
    UnresolvedFault, VmaInfo,
};

// Decoded one at a time and taken in at once: a box would cost an allocation
// per mmap record for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Event {
    /// With its VMA's description when the record carried one.
    Fault(FaultEvent, Option<Box<VmaInfo>>),
    /// How a fault recorded at its entry ended, when not as a minor fault
    /// without latency.
    FaultOutcome(FaultOutcome),
    Syscall(SyscallEvent),
    MmapExit(MmapExitEvent),
    MmapSetup(MmapSetupEvent),
    Exit(ExitEvent),
    Task(TaskEvent),
    Unresolved(UnresolvedFault),
}

/// The path of an mmap exit record: components come leaf first, up to the mount
/// root (whose own name is "/"). None for anonymous memory.
pub fn kernel_path(ev: &MmapExitEvent) -> Option<String> {
    let depth = (ev.depth as usize).min(ev.path.len());
    if depth == 0 {
        return None;
    }
    if ev.truncated == 2 {
        // A pseudo file: /proc/PID/maps would show "anon_inode:" and this name.
        return Some(c_str(&ev.path[0]));
    }
    let mut parts: Vec<String> = ev.path[..depth]
        .iter()
        .map(|c| c_str(c))
        .filter(|c| c != "/")
        .collect();
    parts.reverse();
    let prefix = if ev.truncated != 0 { "..." } else { "" };
    Some(format!("{prefix}/{}", parts.join("/")))
}

/// NUL-terminated kernel string to text (losslessly: names are the traced
/// process's bytes, not necessarily UTF-8).
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    crate::text::from_bytes(&bytes[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmaptrace_common::EventHeader;

    #[test]
    fn kernel_paths_cross_mount_points() {
        let mut ev = MmapExitEvent {
            header: EventHeader::default(),
            ret: 0,
            len: 0,
            prot: 0,
            flags: 0,
            depth: 0,
            truncated: 0,
            path: [[0; 32]; 8],
        };
        assert_eq!(kernel_path(&ev), None, "anonymous memory has no path");
        // Leaf first: /dev/zero on a devtmpfs mounted at /dev.
        for (i, part) in ["zero", "/", "dev", "/"].iter().enumerate() {
            ev.path[i][..part.len()].copy_from_slice(part.as_bytes());
        }
        ev.depth = 4;
        assert_eq!(kernel_path(&ev).as_deref(), Some("/dev/zero"));
        ev.truncated = 1;
        assert_eq!(kernel_path(&ev).as_deref(), Some(".../dev/zero"));
        ev.truncated = 2;
        assert_eq!(
            kernel_path(&ev).as_deref(),
            Some("zero"),
            "a pseudo file's own name"
        );
    }

    #[test]
    fn c_strings() {
        assert_eq!(c_str(b"cat\0\0\0"), "cat");
        assert_eq!(c_str(b"full"), "full");
    }
}
