//! Scanning the repository and loading versions with verified hashes.

use crate::{hash_bytes, Manifest, RegistryError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of a version's manifest.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// A version whose manifest is valid and whose artifacts matched both hashes.
#[derive(Debug, Clone)]
pub struct VerifiedVersion {
    /// The manifest.
    pub manifest: Manifest,
    /// The version directory.
    pub dir: PathBuf,
    /// Artifact bytes by manifest path: exactly the bytes that were hashed.
    pub artifacts: BTreeMap<String, Vec<u8>>,
    /// blake3 over every artifact's path and hashes, sorted by path: one hash for the
    /// version's content, used in cache keys and audit records.
    pub content_hash: String,
}

impl VerifiedVersion {
    /// A version held in memory (benchmarks, engine comparisons): the manifest and its
    /// artifacts' bytes, no directory; the content hash is blake3 over each artifact's path
    /// and blake3.
    pub fn in_memory(manifest: Manifest, artifacts: BTreeMap<String, Vec<u8>>) -> Self {
        let mut content = blake3::Hasher::new();
        for (path, bytes) in &artifacts {
            content.update(path.as_bytes());
            content.update(blake3::hash(bytes).as_bytes());
        }
        Self {
            manifest,
            dir: PathBuf::new(),
            artifacts,
            content_hash: content.finalize().to_hex().to_string(),
        }
    }

    /// The verified bytes of one artifact.
    pub fn artifact(&self, path: &str) -> Option<&[u8]> {
        self.artifacts.get(path).map(Vec::as_slice)
    }
}

/// One version directory found by [`scan`], loaded or not.
#[derive(Debug)]
pub struct ScannedVersion {
    /// Model directory name.
    pub model: String,
    /// Version directory name.
    pub version: String,
    /// The version directory.
    pub dir: PathBuf,
    /// The loaded version, or why it was refused.
    pub result: Result<VerifiedVersion, RegistryError>,
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, RegistryError> {
    let io = |source| RegistryError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            entries.push(path);
        }
    }
    entries.sort();
    Ok(entries)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Finds every `<model>/<version>/manifest.toml` under `root` and loads each version.
/// Only an unreadable `root` is an error; a bad version is reported in its entry.
/// Entries are sorted by model name, then by semantic version (lowest first).
pub fn scan(root: &Path) -> Result<Vec<ScannedVersion>, RegistryError> {
    let mut found = Vec::new();
    for model_dir in read_dir_sorted(root)? {
        for version_dir in read_dir_sorted(&model_dir)? {
            if !version_dir.join(MANIFEST_FILE).exists() {
                continue;
            }
            found.push(ScannedVersion {
                model: file_name(&model_dir),
                version: file_name(&version_dir),
                result: load_version(&version_dir),
                dir: version_dir,
            });
        }
    }
    found.sort_by(|a, b| {
        let key = |s: &ScannedVersion| {
            (
                s.model.clone(),
                semver::Version::parse(&s.version).ok(),
                s.version.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(found)
}

/// Loads one version directory: parses its manifest, checks that name and version match the
/// directories, reads every artifact once and checks its sha256 and blake3 before returning
/// the bytes.
pub fn load_version(dir: &Path) -> Result<VerifiedVersion, RegistryError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).map_err(|source| RegistryError::Io {
        path: manifest_path.clone(),
        source,
    })?;
    let manifest = Manifest::parse(&text, &manifest_path)?;
    let invalid = |message: String| RegistryError::ManifestInvalid {
        path: manifest_path.clone(),
        message,
    };
    let version_dir = file_name(dir);
    let model_dir = dir.parent().map(file_name).unwrap_or_default();
    if manifest.name != model_dir {
        return Err(invalid(format!(
            "name '{}' differs from its directory '{model_dir}'",
            manifest.name
        )));
    }
    if manifest.version.to_string() != version_dir {
        return Err(invalid(format!(
            "version '{}' differs from its directory '{version_dir}'",
            manifest.version
        )));
    }
    let mut artifacts = BTreeMap::new();
    let mut content = blake3::Hasher::new();
    let mut entries: Vec<_> = manifest.artifacts.iter().collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    for entry in entries {
        let path = dir.join(&entry.path);
        let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => RegistryError::MissingArtifact { path: path.clone() },
            _ => RegistryError::Io {
                path: path.clone(),
                source,
            },
        })?;
        let actual = hash_bytes(&bytes);
        for (algorithm, expected, actual) in [
            ("sha256", &entry.sha256, actual.sha256),
            ("blake3", &entry.blake3, actual.blake3),
        ] {
            if *expected != actual {
                return Err(RegistryError::HashMismatch {
                    path: path.clone(),
                    algorithm,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        for part in [&entry.path, &entry.sha256, &entry.blake3] {
            content.update(&(part.len() as u64).to_le_bytes());
            content.update(part.as_bytes());
        }
        artifacts.insert(entry.path.clone(), bytes);
    }
    Ok(VerifiedVersion {
        manifest,
        dir: dir.to_path_buf(),
        artifacts,
        content_hash: content.finalize().to_hex().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash_bytes;

    fn write_version(root: &Path, name: &str, version: &str, payload: &[u8]) -> PathBuf {
        let dir = root.join(name).join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), payload).unwrap();
        let h = hash_bytes(payload);
        let manifest = format!(
            r#"name = "{name}"
version = "{version}"
format = "onnx"
[[artifacts]]
path = "model.onnx"
sha256 = "{}"
blake3 = "{}"
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 2]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 1]
[onnx]
model = "model.onnx"
"#,
            h.sha256, h.blake3
        );
        std::fs::write(dir.join(MANIFEST_FILE), manifest).unwrap();
        dir
    }

    #[test]
    fn loads_good_versions_and_reports_bad_ones() {
        let root = tempfile::tempdir().unwrap();
        write_version(root.path(), "a", "1.10.0", b"ten");
        write_version(root.path(), "a", "1.2.0", b"two");
        let tampered = write_version(root.path(), "b", "1.0.0", b"payload");
        std::fs::write(tampered.join("model.onnx"), b"paYload").unwrap();
        let missing = write_version(root.path(), "c", "1.0.0", b"gone");
        std::fs::remove_file(missing.join("model.onnx")).unwrap();
        let wrong_dir = write_version(root.path(), "d", "1.0.0", b"x");
        std::fs::rename(&wrong_dir, root.path().join("d").join("2.0.0")).unwrap();

        let scanned = scan(root.path()).unwrap();
        let ids: Vec<_> = scanned.iter().map(|s| format!("{}/{}", s.model, s.version)).collect();
        assert_eq!(ids, ["a/1.2.0", "a/1.10.0", "b/1.0.0", "c/1.0.0", "d/2.0.0"]);
        assert!(scanned[0].result.is_ok() && scanned[1].result.is_ok());

        let err = scanned[2].result.as_ref().unwrap_err().to_string();
        let expected = hash_bytes(b"payload").sha256;
        let actual = hash_bytes(b"paYload").sha256;
        assert!(
            err.contains("model.onnx") && err.contains(&expected) && err.contains(&actual),
            "{err}"
        );
        assert!(matches!(scanned[3].result, Err(RegistryError::MissingArtifact { .. })));
        assert!(scanned[4]
            .result
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("differs from its directory"));
    }

    #[test]
    fn content_hash_depends_on_artifacts() {
        let root = tempfile::tempdir().unwrap();
        let a = load_version(&write_version(root.path(), "a", "1.0.0", b"one")).unwrap();
        let b = load_version(&write_version(root.path(), "b", "1.0.0", b"two")).unwrap();
        assert_ne!(a.content_hash, b.content_hash);
        assert_eq!(a.artifact("model.onnx"), Some(&b"one"[..]));
    }
}
