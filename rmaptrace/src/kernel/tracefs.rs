//! Field offsets of classic tracepoint records, from their `format` files.
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};

pub fn tracefs_root() -> PathBuf {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("events").is_dir() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("/sys/kernel/tracing")
}

/// Mounts tracefs at /sys/kernel/tracing when no tracefs is mounted: the syscall
/// tracepoints need it, and minimal systems (containers, initramfs) lack the mount.
pub fn ensure_mounted() -> Result<()> {
    let root = tracefs_root();
    if root.join("events").is_dir() {
        return Ok(());
    }
    // SAFETY: NUL-terminated static strings and a null data pointer, as
    // mount(2) takes them for tracefs.
    let ret = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(anyhow!(
            "tracefs is not mounted and mounting it failed ({}): mount -t tracefs tracefs /sys/kernel/tracing",
            std::io::Error::last_os_error()
        ));
    }
    log::info!("mounted tracefs at /sys/kernel/tracing");
    Ok(())
}

/// Offset of `field` in a format file's text.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    for line in format.lines() {
        let line = line.trim();
        let Some(decl) = line.strip_prefix("field:") else {
            continue;
        };
        let decl = decl.split(';').next().unwrap_or("");
        let name = decl
            .split_whitespace()
            .last()
            .unwrap_or("")
            .trim_start_matches('*');
        let name = name.split('[').next().unwrap_or("");
        if name != field {
            continue;
        }
        let off = line.split("offset:").nth(1)?.split(';').next()?;
        return off.trim().parse().ok();
    }
    None
}

/// Offset of `field` in the record of tracepoint `group/event`.
pub fn tracepoint_field_offset(group: &str, event: &str, field: &str) -> Result<u32> {
    let path = tracefs_root()
        .join("events")
        .join(group)
        .join(event)
        .join("format");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (is tracefs mounted?)", path.display()))?;
    field_offset(&text, field).ok_or_else(|| anyhow!("{} has no field {field}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MMAP: &str = "name: sys_enter_mmap
ID: 100
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned long addr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long len;\toffset:24;\tsize:8;\tsigned:0;
";

    #[test]
    fn finds_field_offsets() {
        assert_eq!(field_offset(MMAP, "addr"), Some(16));
        assert_eq!(field_offset(MMAP, "len"), Some(24));
        assert_eq!(field_offset(MMAP, "__syscall_nr"), Some(8));
        assert_eq!(field_offset(MMAP, "nope"), None);
    }
}
