//! Files rmaptrace creates. It runs as root and writes where others may write
//! too (/tmp, a user's directory), so every file is created new, never through
//! a symlink someone planted, and readable by its owner only.
use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::{ffi::OsStringExt, fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

/// Creates `path`, which must not exist yet (not even as a dangling symlink),
/// mode 0600.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// A new directory only root can enter, under the system's temporary directory.
pub fn private_dir(prefix: &str) -> io::Result<PathBuf> {
    let template = std::env::temp_dir().join(format!("{prefix}XXXXXX"));
    let mut bytes = std::ffi::CString::new(template.into_os_string().into_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in TMPDIR"))?
        .into_bytes_with_nul();
    // SAFETY: `bytes` is a NUL-terminated template that mkdtemp rewrites in place.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(io::Error::last_os_error());
    }
    bytes.pop();
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// A file that replaces `target` only when [`Replacement::commit`] is called:
/// it is written under a new name in the same directory (so the rename is
/// atomic and replaces a symlink at `target` instead of following it), and
/// removed if the trace never starts, leaving an earlier file as it was.
pub struct Replacement {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Replacement {
    pub fn create(target: &Path) -> io::Result<Self> {
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if target.is_dir() {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "a directory"));
        }
        let mut tries = 0;
        loop {
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".rmaptrace-{:016x}", random_u64()));
            let temp = dir.join(temp_name);
            match create_new(&temp) {
                Ok(file) => {
                    return Ok(Replacement {
                        file,
                        temp,
                        target: target.to_path_buf(),
                        committed: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The file being written (before and after the commit).
    pub fn file(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Puts the file in `target`'s place; writing goes on into the same file.
    pub fn commit(&mut self) -> io::Result<()> {
        if !self.committed {
            std::fs::rename(&self.temp, &self.target)?;
            self.committed = true;
        }
        Ok(())
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

fn random_u64() -> u64 {
    let mut v = [0u8; 8];
    // SAFETY: getrandom writes at most `v.len()` bytes into `v`.
    let n = unsafe { libc::getrandom(v.as_mut_ptr().cast(), v.len(), 0) };
    if n != v.len() as isize {
        // Only uniqueness matters here (creation is exclusive): time and pid.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ u64::from(std::process::id()) << 32;
    }
    u64::from_ne_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Write, os::unix::fs::PermissionsExt};

    #[test]
    fn never_follows_a_planted_symlink() {
        let dir = private_dir("rmaptrace-test-").unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = dir.join("out.json");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(create_new(&link).is_err(), "a symlink is never opened");

        // A replacement puts a new file where the symlink was.
        let mut r = Replacement::create(&link).unwrap();
        r.file().unwrap().write_all(b"{}\n").unwrap();
        r.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "{}\n");
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_uncommitted_replacement_leaves_the_old_file() {
        let dir = private_dir("rmaptrace-test-").unwrap();
        let target = dir.join("out.json");
        std::fs::write(&target, "earlier export").unwrap();
        {
            let r = Replacement::create(&target).unwrap();
            r.file().unwrap().write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "earlier export");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "temp file removed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
