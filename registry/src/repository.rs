//! Scanning the repository and loading versions with verified hashes.

use crate::files::{read_bounded, FileRefusal};
use crate::{hash_bytes, Limits, Manifest, RegistryError};
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

/// Finds every `<model>/<version>/manifest.toml` under `root` and loads each version within
/// the default [`Limits`] (see [`scan_with_limits`]).
pub fn scan(root: &Path) -> Result<Vec<ScannedVersion>, RegistryError> {
    scan_with_limits(root, &Limits::default())
}

/// Finds every `<model>/<version>/manifest.toml` under `root` and loads each version within
/// `limits`; every file read must be a regular file inside `root` (symbolic links resolved).
/// Only an unreadable `root` is an error; a bad version is reported in its entry, and a model
/// directory that cannot be listed in one entry of version `*` carrying the reason (the
/// other models are unaffected). Entries are sorted by model name, then by semantic version
/// (lowest first).
pub fn scan_with_limits(root: &Path, limits: &Limits) -> Result<Vec<ScannedVersion>, RegistryError> {
    let canonical_root = canonical(root)?;
    let mut found = Vec::new();
    for model_dir in read_dir_sorted(root)? {
        scan_model_dir(&canonical_root, &model_dir, limits, &mut found);
    }
    sort_scanned(&mut found);
    Ok(found)
}

/// [`scan_with_limits`] of one model's directory only (`root/model`): what a hot load of that
/// model reads, leaving every other model's files alone.
pub fn scan_model_with_limits(root: &Path, model: &str, limits: &Limits) -> Result<Vec<ScannedVersion>, RegistryError> {
    let canonical_root = canonical(root)?;
    let mut found = Vec::new();
    scan_model_dir(&canonical_root, &root.join(model), limits, &mut found);
    sort_scanned(&mut found);
    Ok(found)
}

fn canonical(root: &Path) -> Result<PathBuf, RegistryError> {
    std::fs::canonicalize(root).map_err(|source| RegistryError::Io {
        path: root.to_path_buf(),
        source,
    })
}

/// Every version of one model directory, each loaded or refused.
fn scan_model_dir(canonical_root: &Path, model_dir: &Path, limits: &Limits, found: &mut Vec<ScannedVersion>) {
    let versions = match read_dir_sorted(model_dir) {
        Ok(v) => v,
        Err(e) => {
            found.push(ScannedVersion {
                model: file_name(model_dir),
                version: "*".into(),
                dir: model_dir.to_path_buf(),
                result: Err(e),
            });
            return;
        }
    };
    for version_dir in versions {
        // `symlink_metadata`: a manifest that is a dangling link or a FIFO still marks a
        // version, refused with the reason; one that cannot be looked at is refused too.
        match std::fs::symlink_metadata(version_dir.join(MANIFEST_FILE)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => found.push(ScannedVersion {
                model: file_name(model_dir),
                version: file_name(&version_dir),
                result: Err(RegistryError::Io {
                    path: version_dir.join(MANIFEST_FILE),
                    source,
                }),
                dir: version_dir,
            }),
            Ok(_) => found.push(ScannedVersion {
                model: file_name(model_dir),
                version: file_name(&version_dir),
                result: load_inside(canonical_root, &version_dir, limits),
                dir: version_dir,
            }),
        }
    }
}

fn sort_scanned(found: &mut [ScannedVersion]) {
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
}

/// Loads one version directory within the default [`Limits`] (see
/// [`load_version_with_limits`]).
pub fn load_version(dir: &Path) -> Result<VerifiedVersion, RegistryError> {
    load_version_with_limits(dir, &Limits::default())
}

/// Loads one version directory (`<repository>/<model>/<version>`): parses its manifest,
/// checks it against `limits` and that name and version match the directories, reads every
/// artifact once and checks its sha256 and blake3 before returning the bytes. The manifest
/// and every artifact must be regular files that resolve (symbolic links followed) inside
/// the repository, the version directory's grandparent, within the size limits.
pub fn load_version_with_limits(dir: &Path, limits: &Limits) -> Result<VerifiedVersion, RegistryError> {
    let repository = match dir.parent().and_then(Path::parent) {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let root = std::fs::canonicalize(repository).map_err(|source| RegistryError::Io {
        path: repository.to_path_buf(),
        source,
    })?;
    load_inside(&root, dir, limits)
}

/// [`load_version_with_limits`] with the repository root already canonical.
fn load_inside(root: &Path, dir: &Path, limits: &Limits) -> Result<VerifiedVersion, RegistryError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let bytes = read_bounded(&manifest_path, limits.max_manifest_bytes, Some(root)).map_err(|reason| match reason {
        FileRefusal::Io(source) => RegistryError::Io {
            path: manifest_path.clone(),
            source,
        },
        reason => RegistryError::UnsafeFile {
            what: "manifest",
            path: manifest_path.clone(),
            reason,
        },
    })?;
    let text = String::from_utf8(bytes).map_err(|_| RegistryError::ManifestParse {
        path: manifest_path.clone(),
        message: "not UTF-8".into(),
    })?;
    let manifest = Manifest::parse_with_limits(&text, &manifest_path, limits)?;
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
    let mut content = invariant_core::hash::Parts::new();
    let mut entries: Vec<_> = manifest.artifacts.iter().collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut total = 0u64;
    for entry in entries {
        let path = dir.join(&entry.path);
        // No artifact may take the version past its total: each is read with what is left.
        let left = limits.max_version_bytes.saturating_sub(total);
        let bytes =
            read_bounded(&path, limits.max_artifact_bytes.min(left), Some(root)).map_err(|reason| match reason {
                r if r.is_not_found() => RegistryError::MissingArtifact { path: path.clone() },
                FileRefusal::Io(source) => RegistryError::Io {
                    path: path.clone(),
                    source,
                },
                FileRefusal::TooLarge { size, .. } if size <= limits.max_artifact_bytes => {
                    RegistryError::VersionTooLarge {
                        dir: dir.to_path_buf(),
                        size: total.saturating_add(size),
                        limit: limits.max_version_bytes,
                    }
                }
                FileRefusal::TooLarge { size, .. } => RegistryError::UnsafeFile {
                    what: "artifact",
                    path: path.clone(),
                    reason: FileRefusal::TooLarge {
                        size,
                        limit: limits.max_artifact_bytes,
                    },
                },
                reason => RegistryError::UnsafeFile {
                    what: "artifact",
                    path: path.clone(),
                    reason,
                },
            })?;
        total = total.saturating_add(bytes.len() as u64);
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
            content.part(part.as_bytes());
        }
        artifacts.insert(entry.path.clone(), bytes);
    }
    Ok(VerifiedVersion {
        manifest,
        dir: dir.to_path_buf(),
        artifacts,
        content_hash: content.finish().to_hex().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash_bytes;

    fn write_version(root: &Path, name: &str, version: &str, payload: &[u8]) -> PathBuf {
        write_version_with(root, name, version, payload, "")
    }

    /// A version whose manifest ends with `extra` (e.g. an `[inference]` section).
    fn write_version_with(root: &Path, name: &str, version: &str, payload: &[u8], extra: &str) -> PathBuf {
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
{extra}
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
    fn one_model_is_scanned_alone_and_an_unlistable_model_is_one_refused_entry() {
        let dir = tempfile::tempdir().unwrap();
        write_version(dir.path(), "a", "1.0.0", b"one");
        write_version(dir.path(), "b", "1.0.0", b"two");
        let only_a = scan_model_with_limits(dir.path(), "a", &Limits::default()).unwrap();
        assert_eq!(only_a.len(), 1);
        assert_eq!((only_a[0].model.as_str(), only_a[0].version.as_str()), ("a", "1.0.0"));
        assert!(only_a[0].result.is_ok());
        // A model directory that cannot be listed is one refused entry; the others still load.
        let mut found = Vec::new();
        let canonical_root = canonical(dir.path()).unwrap();
        scan_model_dir(
            &canonical_root,
            &dir.path().join("gone"),
            &Limits::default(),
            &mut found,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].version, "*");
        assert!(found[0].result.as_ref().unwrap_err().to_string().contains("gone"));
        scan_model_dir(&canonical_root, &dir.path().join("b"), &Limits::default(), &mut found);
        assert!(found[1].result.is_ok());
    }

    #[test]
    fn content_hash_depends_on_artifacts() {
        let root = tempfile::tempdir().unwrap();
        let a = load_version(&write_version(root.path(), "a", "1.0.0", b"one")).unwrap();
        let b = load_version(&write_version(root.path(), "b", "1.0.0", b"two")).unwrap();
        assert_ne!(a.content_hash, b.content_hash);
        assert_eq!(a.artifact("model.onnx"), Some(&b"one"[..]));
    }

    /// Runs `f` on another thread and fails the test if it takes longer than 20 s (a FIFO
    /// opened for reading would block forever).
    fn within_time<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("loading hung (blocked on a FIFO or read an endless file)")
    }

    fn error_of(scanned: &[ScannedVersion], id: &str) -> String {
        let s = scanned
            .iter()
            .find(|s| format!("{}/{}", s.model, s.version) == id)
            .unwrap_or_else(|| panic!("{id} not scanned"));
        match &s.result {
            Ok(_) => panic!("{id} loaded"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn hostile_versions_are_refused_alone_with_the_reason() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        let good = write_version(r, "good", "1.0.0", b"payload");

        let fifo = write_version(r, "a", "1.0.0", b"payload");
        std::fs::remove_file(fifo.join("model.onnx")).unwrap();
        crate::files::mkfifo(&fifo.join("model.onnx"));

        let zero = write_version(r, "a", "1.1.0", b"payload");
        std::fs::remove_file(zero.join("model.onnx")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", zero.join("model.onnx")).unwrap();

        let escape = write_version(r, "a", "1.2.0", b"payload");
        std::fs::write(outside.path().join("model.onnx"), b"payload").unwrap();
        std::fs::remove_file(escape.join("model.onnx")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("model.onnx"), escape.join("model.onnx")).unwrap();

        // A link to a file inside the repository is allowed.
        let inside = write_version(r, "a", "1.3.0", b"payload");
        std::fs::remove_file(inside.join("model.onnx")).unwrap();
        std::os::unix::fs::symlink("../../good/1.0.0/model.onnx", inside.join("model.onnx")).unwrap();

        write_version_with(r, "a", "1.4.0", b"payload", "[inference]\nmax_batch_size = 1000000000");
        write_version_with(r, "a", "1.5.0", b"payload", "[inference]\nthreads = 1000000");

        let fifo_manifest = write_version(r, "a", "1.6.0", b"payload");
        std::fs::remove_file(fifo_manifest.join(MANIFEST_FILE)).unwrap();
        crate::files::mkfifo(&fifo_manifest.join(MANIFEST_FILE));

        let zero_manifest = write_version(r, "a", "1.7.0", b"payload");
        std::fs::remove_file(zero_manifest.join(MANIFEST_FILE)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", zero_manifest.join(MANIFEST_FILE)).unwrap();

        let dir_artifact = write_version(r, "a", "1.8.0", b"payload");
        std::fs::remove_file(dir_artifact.join("model.onnx")).unwrap();
        std::fs::create_dir(dir_artifact.join("model.onnx")).unwrap();

        let root_path = r.to_path_buf();
        let scanned = within_time(move || scan(&root_path).unwrap());
        let ids: Vec<_> = scanned.iter().map(|s| format!("{}/{}", s.model, s.version)).collect();
        assert_eq!(
            ids,
            [
                "a/1.0.0",
                "a/1.1.0",
                "a/1.2.0",
                "a/1.3.0",
                "a/1.4.0",
                "a/1.5.0",
                "a/1.6.0",
                "a/1.7.0",
                "a/1.8.0",
                "good/1.0.0"
            ]
        );
        let good_version = scanned.iter().find(|s| s.model == "good").unwrap();
        assert_eq!(
            good_version.result.as_ref().unwrap().artifact("model.onnx"),
            Some(&b"payload"[..])
        );
        assert_eq!(good_version.dir, good);
        assert!(scanned[3].result.is_ok(), "{:?}", scanned[3].result);

        let e = error_of(&scanned, "a/1.0.0");
        assert!(
            e.contains("artifact") && e.contains("model.onnx is refused: not a regular file (it is a FIFO)"),
            "{e}"
        );
        let e = error_of(&scanned, "a/1.1.0");
        assert!(
            e.contains("model.onnx is refused: resolves to /dev/zero, outside"),
            "{e}"
        );
        let e = error_of(&scanned, "a/1.2.0");
        assert!(
            e.contains("model.onnx is refused: resolves to") && e.contains("outside"),
            "{e}"
        );
        let e = error_of(&scanned, "a/1.4.0");
        assert!(
            e.contains("inference.max_batch_size = 1000000000 exceeds the limit of 4096"),
            "{e}"
        );
        let e = error_of(&scanned, "a/1.5.0");
        assert!(e.contains("inference.threads = 1000000 exceeds the limit of 64"), "{e}");
        let e = error_of(&scanned, "a/1.6.0");
        assert!(e.contains("manifest") && e.contains("(it is a FIFO)"), "{e}");
        let e = error_of(&scanned, "a/1.7.0");
        assert!(e.contains("manifest") && e.contains("resolves to /dev/zero"), "{e}");
        let e = error_of(&scanned, "a/1.8.0");
        assert!(e.contains("(it is a directory)"), "{e}");

        // Loading one version directly applies the same rules (the repository is its
        // grandparent).
        let e = within_time(move || load_version(&fifo).unwrap_err().to_string());
        assert!(e.contains("FIFO"), "{e}");
        let e = load_version(&escape).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        assert!(load_version(&inside).is_ok());
    }

    #[test]
    fn artifacts_are_read_within_the_size_limits() {
        let root = tempfile::tempdir().unwrap();
        write_version(root.path(), "a", "1.0.0", b"four");
        write_version(root.path(), "a", "2.0.0", b"fourteen bytes");
        let small = Limits {
            max_artifact_bytes: 8,
            ..Limits::default()
        };
        let scanned = scan_with_limits(root.path(), &small).unwrap();
        assert!(scanned[0].result.is_ok());
        let e = error_of(&scanned, "a/2.0.0");
        assert!(
            e.contains("model.onnx is refused: 14 bytes exceed the limit of 8 bytes"),
            "{e}"
        );
        let tight = Limits {
            max_version_bytes: 3,
            ..Limits::default()
        };
        let e = load_version_with_limits(&root.path().join("a").join("1.0.0"), &tight)
            .unwrap_err()
            .to_string();
        assert!(e.contains("4 bytes in all, exceeding the limit of 3 bytes"), "{e}");
        let tiny_manifest = Limits {
            max_manifest_bytes: 100,
            ..Limits::default()
        };
        let e = load_version_with_limits(&root.path().join("a").join("1.0.0"), &tiny_manifest)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("manifest") && e.contains("exceed the limit of 100 bytes"),
            "{e}"
        );
    }
}
