//! Reading repository files safely: only regular files, optionally only inside a directory,
//! never more than a bound.
//!
//! A model repository is data that others write. A FIFO would block the reader forever, a
//! device such as `/dev/zero` or a growing file would be read until memory runs out, and a
//! symbolic link could expose any file of the host. [`read_bounded`] checks the file's type
//! before opening it (and opens without blocking, then checks the opened file again), resolves
//! symbolic links and checks the target stays inside the given directory, and stops reading
//! past the bound.

use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a file was not read.
#[derive(Debug, Error)]
pub enum FileRefusal {
    /// The path is a directory, FIFO, socket or device, not a regular file.
    #[error("not a regular file (it is a {0})")]
    NotRegular(&'static str),
    /// The path resolves (through symbolic links) outside the directory it must stay in.
    #[error("resolves to {resolved}, outside {root}")]
    Outside {
        /// Where the path leads.
        resolved: PathBuf,
        /// The directory it must stay in.
        root: PathBuf,
    },
    /// The file is larger than the bound.
    #[error("{size} bytes exceed the limit of {limit} bytes")]
    TooLarge {
        /// The file's size.
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// The file grew past the bound while it was read.
    #[error("grew past the limit of {limit} bytes while being read")]
    Grew {
        /// The bound.
        limit: u64,
    },
    /// The file cannot be inspected, opened or read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl FileRefusal {
    /// True when the file (or the target of a symbolic link) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileRefusal::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What a file type is, in words, when it is not a regular file.
fn irregular(t: &std::fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("directory");
    }
    if t.is_symlink() {
        return Some("symbolic link");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("FIFO");
        }
        if t.is_socket() {
            return Some("socket");
        }
        if t.is_char_device() {
            return Some("character device");
        }
        if t.is_block_device() {
            return Some("block device");
        }
    }
    Some("special file")
}

/// Opens for reading without blocking (a FIFO swapped in after the type check would
/// otherwise block `open`) and without following a final symbolic link.
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    }
    options.open(path)
}

/// Checks that `path` is a regular file (following symbolic links) and, with `inside` (a
/// canonical directory), that it resolves inside it; returns the path to open.
pub fn check_regular(path: &Path, inside: Option<&Path>) -> Result<PathBuf, FileRefusal> {
    let link = std::fs::symlink_metadata(path)?;
    let target = if inside.is_some() || link.file_type().is_symlink() {
        std::fs::canonicalize(path)?
    } else {
        path.to_path_buf()
    };
    if let Some(root) = inside {
        if !target.starts_with(root) {
            return Err(FileRefusal::Outside {
                resolved: target,
                root: root.to_path_buf(),
            });
        }
    }
    let meta = std::fs::metadata(&target)?;
    if let Some(kind) = irregular(&meta.file_type()) {
        return Err(FileRefusal::NotRegular(kind));
    }
    Ok(target)
}

/// Opens a regular file (see [`check_regular`]) without blocking and checks the opened file
/// is still a regular file of at most `max_bytes`; returns it with its size.
pub fn open_regular(path: &Path, max_bytes: u64, inside: Option<&Path>) -> Result<(std::fs::File, u64), FileRefusal> {
    let target = check_regular(path, inside)?;
    let file = open_nonblocking(&target)?;
    let meta = file.metadata()?;
    if let Some(kind) = irregular(&meta.file_type()) {
        return Err(FileRefusal::NotRegular(kind));
    }
    if meta.len() > max_bytes {
        return Err(FileRefusal::TooLarge {
            size: meta.len(),
            limit: max_bytes,
        });
    }
    Ok((file, meta.len()))
}

/// Reads a whole regular file of at most `max_bytes`; with `inside` (a canonical directory),
/// only when the path, symbolic links resolved, stays inside it. A file that grows past the
/// bound while read is refused.
pub fn read_bounded(path: &Path, max_bytes: u64, inside: Option<&Path>) -> Result<Vec<u8>, FileRefusal> {
    let (file, size) = open_regular(path, max_bytes, inside)?;
    // `size` is at most `max_bytes`: the buffer is what the file holds, not what it claims.
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(FileRefusal::Grew { limit: max_bytes });
    }
    Ok(bytes)
}

/// Creates a FIFO at `path` (through `mkfifo(3)`), for tests.
#[cfg(test)]
pub(crate) fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_regular_files_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let file = root.join("f");
        std::fs::write(&file, b"hello").unwrap();
        assert_eq!(read_bounded(&file, 5, Some(&root)).unwrap(), b"hello");
        let e = read_bounded(&file, 4, Some(&root)).unwrap_err();
        assert!(matches!(e, FileRefusal::TooLarge { size: 5, limit: 4 }), "{e}");

        let fifo = root.join("fifo");
        mkfifo(&fifo);
        let e = read_bounded(&fifo, 1 << 20, Some(&root)).unwrap_err();
        assert!(e.to_string().contains("not a regular file (it is a FIFO)"), "{e}");

        let zero = root.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_bounded(&zero, 1 << 20, None).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let e = read_bounded(&zero, 1 << 20, Some(&root)).unwrap_err();
        assert!(matches!(e, FileRefusal::Outside { .. }), "{e}");

        let inner = root.join("inner");
        std::os::unix::fs::symlink("f", &inner).unwrap();
        assert_eq!(read_bounded(&inner, 5, Some(&root)).unwrap(), b"hello");

        let e = read_bounded(&root, 5, None).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let e = read_bounded(&root.join("absent"), 5, Some(&root)).unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }
}
