//! sha256 and blake3 of artifact bytes.

use crate::RegistryError;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// Both hashes of one file, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHashes {
    /// sha256, hex.
    pub sha256: String,
    /// blake3, hex.
    pub blake3: String,
}

/// Hashes bytes already in memory.
pub fn hash_bytes(bytes: &[u8]) -> FileHashes {
    FileHashes {
        sha256: hex::encode(Sha256::digest(bytes)),
        blake3: blake3::hash(bytes).to_hex().to_string(),
    }
}

/// Hashes a file in 1 MiB chunks without holding it in memory; `progress` is called with the
/// number of bytes hashed so far (for progress bars on large artifacts).
pub fn hash_file(path: &Path, progress: impl FnMut(u64)) -> Result<FileHashes, RegistryError> {
    hash_stream(path, None, progress)
}

/// Copies `from` to `to` and hashes the bytes in the same pass (the hashes describe exactly
/// what was written); `progress` as for [`hash_file`]. `to` must not exist.
pub fn copy_and_hash(from: &Path, to: &Path, progress: impl FnMut(u64)) -> Result<FileHashes, RegistryError> {
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|source| RegistryError::Io {
            path: to.to_path_buf(),
            source,
        })?;
    hash_stream(from, Some((to, out)), progress)
}

fn hash_stream(
    path: &Path,
    mut copy: Option<(&Path, std::fs::File)>,
    mut progress: impl FnMut(u64),
) -> Result<FileHashes, RegistryError> {
    use std::io::Write;
    let io = |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut sha = Sha256::new();
    let mut b3 = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        b3.update(&buf[..n]);
        if let Some((to, out)) = copy.as_mut() {
            out.write_all(&buf[..n]).map_err(|source| RegistryError::Io {
                path: to.to_path_buf(),
                source,
            })?;
        }
        done += n as u64;
        progress(done);
    }
    if let Some((to, out)) = copy {
        out.sync_all().map_err(|source| RegistryError::Io {
            path: to.to_path_buf(),
            source,
        })?;
    }
    Ok(FileHashes {
        sha256: hex::encode(sha.finalize()),
        blake3: b3.finalize().to_hex().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors_and_file_agree_with_memory() {
        let h = hash_bytes(b"abc");
        assert_eq!(
            h.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            h.blake3,
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 3 << 20]).unwrap();
        let mut last = 0;
        assert_eq!(hash_file(&p, |n| last = n).unwrap(), hash_bytes(&vec![7u8; 3 << 20]));
        assert_eq!(last, 3 << 20);
        let copy = dir.path().join("copy");
        assert_eq!(
            copy_and_hash(&p, &copy, |_| {}).unwrap(),
            hash_bytes(&vec![7u8; 3 << 20])
        );
        assert_eq!(std::fs::read(&copy).unwrap(), vec![7u8; 3 << 20]);
        assert!(copy_and_hash(&p, &copy, |_| {}).is_err(), "never overwrites");
    }
}
