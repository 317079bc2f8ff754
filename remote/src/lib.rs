//! Model repositories and golden vectors on object storage: `s3://bucket/prefix` on Amazon S3
//! or any S3-compatible server (`[object_store] endpoint`). A [`Mirror`] copies a prefix into
//! a local directory and keeps it current: each [`Mirror::sync`] lists the prefix once and
//! fetches only the objects that are new or changed (by ETag and size) since the last sync,
//! and removes local copies of objects that are gone. The server then loads the local copy
//! with the same code as a local repository, so every artifact is hash-verified (sha256 and
//! blake3 from its manifest) before it is parsed: a tampered object is refused, never served.
//!
//! Object keys become local paths only when every component is an ordinary name (no `..`,
//! no empty or `.` components, no backslashes), and an object larger than the configured
//! limit is not fetched, so a hostile bucket cannot write outside the cache or fill the disk.

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Makes ring the process's TLS crypto provider (idempotent). The object store's HTTP client
/// (reqwest with rustls, no bundled provider, so no aws-lc build) needs one, and so does every
/// other reqwest client of a process that links this crate: binaries call this at start.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether a configured location is on object storage.
pub fn is_remote(location: &str) -> bool {
    location.starts_with("s3://")
}

/// How to reach the store. Credentials come from the environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, …), as with AWS's own tools.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// An S3-compatible endpoint, e.g. `http://127.0.0.1:9000` (empty: Amazon S3).
    pub endpoint: String,
    /// The region (empty: `AWS_REGION`, else `us-east-1`).
    pub region: String,
    /// Allow a plain-HTTP endpoint (a local S3-compatible server).
    pub allow_http: bool,
    /// Where mirrored copies live (empty: `object-cache/` in `state_dir`).
    pub cache_dir: String,
}

/// Mirror failures.
#[derive(Debug, Error)]
pub enum RemoteError {
    /// The location is not a usable `s3://bucket/prefix`.
    #[error("object store location '{0}': use s3://bucket/prefix")]
    Url(String),
    /// The store cannot be reached or refused a request.
    #[error("object store {url}: {message}")]
    Store {
        /// The location.
        url: String,
        /// What failed.
        message: String,
    },
    /// The local copy cannot be written.
    #[error("object cache {path}: {message}")]
    Local {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Keys fetched (new or changed), relative to the prefix.
    pub fetched: Vec<String>,
    /// Objects already current locally.
    pub unchanged: usize,
    /// Local copies removed because their object is gone.
    pub removed: Vec<String>,
    /// Objects not mirrored, with why (an unsafe key, over the size limit).
    pub refused: Vec<String>,
}

/// What the cache knows of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    etag: Option<String>,
    size: u64,
    modified: String,
}

/// A prefix of a bucket mirrored into a local directory.
#[derive(Debug)]
pub struct Mirror {
    url: String,
    prefix: String,
    store: Arc<AmazonS3>,
    local: PathBuf,
    index: PathBuf,
    partial: PathBuf,
    max_object_bytes: u64,
}

/// Runs `f` to completion on a runtime of its own (callers may or may not be inside one).
fn block_on<F: std::future::Future + Send>(f: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(f))
        })
        .join()
    })
    .unwrap_or_else(|_| Err(std::io::Error::other("the object store task panicked")))
    .unwrap_or_else(|e| panic!("cannot start a runtime for the object store: {e}"))
}

/// A key relative to the prefix as a local relative path, when every component is an
/// ordinary name.
fn safe_relative(key: &str) -> Option<PathBuf> {
    let parts: Vec<&str> = key.split('/').collect();
    let ordinary =
        |p: &&str| !p.is_empty() && *p != "." && *p != ".." && !p.contains(['\\', '\0']) && !p.starts_with('.');
    (parts.len() <= 16 && parts.iter().all(ordinary)).then(|| parts.iter().collect())
}

impl Mirror {
    /// The mirror of `url` (`s3://bucket/prefix`) in `local`; bookkeeping beside it
    /// (`<local>.index.json`, `<local>.partial/`). Objects above `max_object_bytes` are not
    /// fetched.
    pub fn open(url: &str, settings: &Settings, local: PathBuf, max_object_bytes: u64) -> Result<Self, RemoteError> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| RemoteError::Url(url.into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(RemoteError::Url(url.into()));
        }
        install_tls_provider();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if !settings.endpoint.is_empty() {
            builder = builder.with_endpoint(&settings.endpoint);
        }
        if !settings.region.is_empty() {
            builder = builder.with_region(&settings.region);
        }
        builder = builder.with_allow_http(settings.allow_http);
        let store = builder.build().map_err(|e| RemoteError::Store {
            url: url.into(),
            message: e.to_string(),
        })?;
        let with = |suffix: &str| {
            let mut p = local.clone().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        Ok(Self {
            url: url.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            store: Arc::new(store),
            index: with(".index.json"),
            partial: with(".partial"),
            local,
            max_object_bytes,
        })
    }

    /// Whether a sync has completed here before (so a local copy exists).
    pub fn has_copy(&self) -> bool {
        self.index.is_file()
    }

    /// The local directory.
    pub fn local(&self) -> &Path {
        &self.local
    }

    /// The location mirrored.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn store_error(&self, e: impl std::fmt::Display) -> RemoteError {
        RemoteError::Store {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    fn local_error(path: &Path, e: impl std::fmt::Display) -> RemoteError {
        RemoteError::Local {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }

    /// The full object path of a key relative to the prefix.
    fn object(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn read_index(&self) -> BTreeMap<String, Entry> {
        std::fs::read(&self.index)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_index(&self, index: &BTreeMap<String, Entry>) -> Result<(), RemoteError> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|e| Self::local_error(&self.index, e))?;
        invariant_core::durable::write_atomic(&self.index, &bytes).map_err(|e| Self::local_error(&self.index, e))
    }

    /// Brings the local copy of everything under `under` (a path relative to the prefix, e.g.
    /// a model's name; `None`: the whole prefix) up to date: fetches what is new or changed,
    /// removes what is gone. Blocking.
    pub fn sync(&self, under: Option<&str>) -> Result<SyncReport, RemoteError> {
        block_on(self.sync_async(under))
    }

    async fn sync_async(&self, under: Option<&str>) -> Result<SyncReport, RemoteError> {
        let scope = under.map(|u| u.trim_matches('/').to_string()).filter(|u| !u.is_empty());
        let list_at = match &scope {
            Some(u) => self.object(u),
            None if self.prefix.is_empty() => ObjectPath::default(),
            None => ObjectPath::from(self.prefix.as_str()),
        };
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut listed: BTreeMap<String, Entry> = BTreeMap::new();
        let mut stream = self.store.list(Some(&list_at));
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.store_error(e))?;
            let Some(key) = meta.location.as_ref().strip_prefix(&strip) else {
                continue;
            };
            listed.insert(
                key.to_string(),
                Entry {
                    etag: meta.e_tag.clone(),
                    size: meta.size,
                    modified: meta.last_modified.to_rfc3339(),
                },
            );
        }
        let in_scope = |key: &str| match &scope {
            Some(u) => key == u || key.starts_with(&format!("{u}/")),
            None => true,
        };
        let mut index = self.read_index();
        let mut report = SyncReport::default();
        std::fs::create_dir_all(&self.local).map_err(|e| Self::local_error(&self.local, e))?;
        for (key, entry) in &listed {
            let Some(rel) = safe_relative(key) else {
                tracing::warn!(key, "object store key is not a safe relative path; not mirrored");
                report.refused.push(format!("{key}: not a safe relative path"));
                continue;
            };
            if entry.size > self.max_object_bytes {
                report.refused.push(format!(
                    "{key}: {} bytes, above the limit of {}",
                    entry.size, self.max_object_bytes
                ));
                continue;
            }
            let target = self.local.join(&rel);
            let current = index.get(key) == Some(entry)
                && std::fs::metadata(&target).is_ok_and(|m| m.is_file() && m.len() == entry.size);
            if current {
                report.unchanged += 1;
                continue;
            }
            self.fetch(key, &target).await?;
            index.insert(key.clone(), entry.clone());
            report.fetched.push(key.clone());
        }
        let gone: Vec<String> = index
            .keys()
            .filter(|k| in_scope(k) && !listed.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(rel) = safe_relative(&key) {
                let path = self.local.join(rel);
                let _ = std::fs::remove_file(&path);
                // Empty directories left behind go too (a removed version).
                let mut dir = path.parent();
                while let Some(d) = dir.filter(|d| d.starts_with(&self.local) && *d != self.local) {
                    if std::fs::remove_dir(d).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
            }
            index.remove(&key);
            report.removed.push(key);
        }
        self.write_index(&index)?;
        let _ = std::fs::remove_dir_all(&self.partial);
        tracing::info!(
            url = %self.url,
            under = scope.as_deref().unwrap_or("*"),
            fetched = report.fetched.len(),
            unchanged = report.unchanged,
            removed = report.removed.len(),
            refused = report.refused.len(),
            "object store mirrored"
        );
        Ok(report)
    }

    /// Downloads one object to a partial file, then renames it over `target`.
    async fn fetch(&self, key: &str, target: &Path) -> Result<(), RemoteError> {
        std::fs::create_dir_all(&self.partial).map_err(|e| Self::local_error(&self.partial, e))?;
        let partial = self
            .partial
            .join(format!("{}-{}", std::process::id(), key.replace('/', "%")));
        let got = self
            .store
            .get(&self.object(key))
            .await
            .map_err(|e| self.store_error(e))?;
        if got.meta.size > self.max_object_bytes {
            return Err(self.store_error(format!("{key} grew above the size limit while syncing")));
        }
        let mut file = std::fs::File::create(&partial).map_err(|e| Self::local_error(&partial, e))?;
        let mut written = 0u64;
        let mut chunks = got.into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| self.store_error(e))?;
            written += chunk.len() as u64;
            if written > self.max_object_bytes {
                return Err(self.store_error(format!("{key} is above the size limit")));
            }
            file.write_all(&chunk).map_err(|e| Self::local_error(&partial, e))?;
        }
        file.sync_all().map_err(|e| Self::local_error(&partial, e))?;
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Self::local_error(dir, e))?;
        }
        std::fs::rename(&partial, target).map_err(|e| Self::local_error(target, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ordinary_relative_keys_become_paths() {
        assert_eq!(
            safe_relative("trust-scorer/1.2.0/manifest.toml"),
            Some(PathBuf::from("trust-scorer/1.2.0/manifest.toml"))
        );
        for bad in [
            "../etc/passwd",
            "a//b",
            "a/./b",
            "/abs",
            "a\\b",
            ".hidden/x",
            "a/..",
            "",
        ] {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
    }

    #[test]
    fn locations_must_name_a_bucket() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["s3://", "s3:///prefix", "/local/path", "gs://b/p"] {
            let err = Mirror::open(bad, &Settings::default(), dir.path().join("m"), 1 << 20).unwrap_err();
            assert!(matches!(err, RemoteError::Url(_)), "{bad}: {err}");
        }
    }
}
