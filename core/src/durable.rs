//! Small files that must survive a crash and concurrent writers: written atomically (a
//! temporary file in the same directory, fsync, rename over the old one, fsync of the
//! directory) and changed under an exclusive lock on a sibling `<file>.lock`, so processes
//! sharing the file (a server, the CLI, several replicas) never lose one another's change.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Replaces `path` with `bytes` atomically and durably: once this returns, a crash leaves
/// either the old content or the new, never a mix, and the new content is on disk.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent_of(path);
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// An exclusive lock on `<path>.lock` (created if absent), held until the file is dropped.
pub fn lock_exclusive(path: &Path) -> std::io::Result<File> {
    let mut lock_path = path.to_path_buf().into_os_string();
    lock_path.push(".lock");
    std::fs::create_dir_all(parent_of(path))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PathBuf::from(lock_path))?;
    file.lock()?;
    Ok(file)
}

/// Claims `dir` for this process: an exclusive, non-blocking lock on `<dir>/<name>.lock`
/// (released when the returned file is dropped or the process dies, even by kill -9), which
/// then holds this process's id. When another process holds the claim, the error
/// ([`std::io::ErrorKind::WouldBlock`]) names its process id.
pub fn claim(dir: &Path, name: &str) -> std::io::Result<File> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.lock"));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "{} is held by {}",
                    path.display(),
                    if holder.is_empty() {
                        "another process".to_string()
                    } else {
                        format!("process {holder}")
                    }
                ),
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    file.sync_all()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_the_whole_file_and_leave_no_temporary_behind() {
        let dir = std::env::temp_dir().join(format!("invariant-durable-{}", std::process::id()));
        let path = dir.join("nested/state.json");
        write_atomic(&path, b"first, longer content").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["state.json".to_string()]);
        let _lock = lock_exclusive(&path).unwrap();
        assert!(dir.join("nested/state.json.lock").exists());
        let claimed = claim(&dir, "server").unwrap();
        let again = claim(&dir, "server").unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::WouldBlock);
        assert!(
            again.to_string().contains(&format!("process {}", std::process::id())),
            "{again}"
        );
        drop(claimed);
        claim(&dir, "server").unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
