//! Configuration: `invariant.toml` (embedded default, then a file), then `INVARIANT_*`
//! environment variables, then command-line flags.

use invariant_core::CorridorId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The shipped `invariant.toml`, used when no file is given.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../../invariant.toml");

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file or environment does not fit the schema.
    #[error("configuration: {0}")]
    Parse(String),
    /// The values are inconsistent.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Top-level keys that environment variables may override; other `INVARIANT_*` variables
/// (used by tools and tests) are not configuration.
const ENV_KEYS: [&str; 6] = [
    "model_repository",
    "golden_vectors",
    "state_dir",
    "onnxruntime_lib",
    "engine_instances",
    "server__",
];

fn is_config_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ENV_KEYS.iter().any(|k| {
        if k.ends_with("__") {
            key.starts_with(k)
        } else {
            key == *k
        }
    })
}

/// One declared corridor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorridorConfig {
    /// Corridor id, e.g. `UAE-SA`.
    pub id: CorridorId,
    /// Market the corridor belongs to.
    pub market: u32,
    /// Region name.
    pub region: String,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address of the HTTP API.
    pub http_addr: String,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Corridor for requests that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_corridor: Option<CorridorId>,
}

/// `[canary]`: when a canary is rolled back automatically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// Sliding window length.
    #[serde(default = "default_window")]
    pub window_seconds: f64,
    /// Requests in the window before a verdict.
    #[serde(default = "default_min_requests")]
    pub min_requests: usize,
    /// Error rate above which the canary is rolled back (0.05 = 5 %).
    #[serde(default = "default_error_rate")]
    pub max_error_rate: f64,
    /// p99 latency above which the canary is rolled back, in milliseconds.
    #[serde(default = "default_p99")]
    pub max_p99_ms: f64,
}

fn default_window() -> f64 {
    60.0
}
fn default_min_requests() -> usize {
    20
}
fn default_error_rate() -> f64 {
    0.05
}
fn default_p99() -> f64 {
    2000.0
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            window_seconds: default_window(),
            min_requests: default_min_requests(),
            max_error_rate: default_error_rate(),
            max_p99_ms: default_p99(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Model repository directory.
    pub model_repository: PathBuf,
    /// Golden vector directory.
    pub golden_vectors: PathBuf,
    /// Directory of server state (audit log).
    pub state_dir: PathBuf,
    /// Registry state file (empty: `registry.json` in the model repository).
    #[serde(default)]
    pub registry_state: String,
    /// Canary auto-rollback limits.
    #[serde(default)]
    pub canary: CanaryConfig,
    /// Explicit path of `libonnxruntime.so` (empty: search).
    #[serde(default)]
    pub onnxruntime_lib: String,
    /// ONNX Runtime sessions per ONNX model version.
    pub engine_instances: usize,
    /// HTTP server settings.
    pub server: ServerConfig,
    /// Declared corridors.
    pub corridors: Vec<CorridorConfig>,
}

impl Config {
    /// Loads the configuration: `file` if given (it must exist), else the embedded defaults;
    /// then environment overrides (`INVARIANT_KEY`, `INVARIANT_SERVER__HTTP_ADDR`, ...).
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        use figment::providers::{Env, Format, Toml};
        let base = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Parse(format!("cannot read {}: {e}", path.display())))?;
                Toml::string(&text)
            }
            None => Toml::string(EMBEDDED_DEFAULTS),
        };
        let config: Config = figment::Figment::from(base)
            .merge(
                Env::prefixed("INVARIANT_")
                    .filter(|key| is_config_key(key.as_str()))
                    .split("__"),
            )
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the schema cannot: unique corridors, a declared default corridor.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut ids: Vec<&CorridorId> = self.corridors.iter().map(|c| &c.id).collect();
        ids.sort();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::Invalid(format!("corridor {} is declared twice", w[0])));
        }
        if let Some(default) = &self.server.default_corridor {
            if self.corridor(default.as_str()).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "server.default_corridor {default} is not a declared corridor"
                )));
            }
        }
        if self.engine_instances == 0 {
            return Err(ConfigError::Invalid("engine_instances must be at least 1".into()));
        }
        Ok(())
    }

    /// Where the registry state (lifecycle, canaries, history) is stored.
    pub fn registry_state_path(&self) -> PathBuf {
        if self.registry_state.is_empty() {
            self.model_repository.join("registry.json")
        } else {
            PathBuf::from(&self.registry_state)
        }
    }

    /// The declared corridor with this id (case-insensitive), if any.
    pub fn corridor(&self, id: &str) -> Option<&CorridorConfig> {
        let id = CorridorId::parse(id).ok()?;
        self.corridors.iter().find(|c| c.id == id)
    }

    /// Where `libonnxruntime.so` is: `onnxruntime_lib`, else `ORT_DYLIB_PATH`, else
    /// `.deps/onnxruntime/lib/libonnxruntime.so` in the working directory, the executable's
    /// directory, or any of their ancestors.
    pub fn onnxruntime_path(&self) -> Option<PathBuf> {
        if !self.onnxruntime_lib.is_empty() {
            return Some(PathBuf::from(&self.onnxruntime_lib));
        }
        if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let starts = [
            std::env::current_dir().ok(),
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf)),
        ];
        starts.into_iter().flatten().find_map(|start| {
            start
                .ancestors()
                .map(|dir| dir.join(".deps/onnxruntime/lib/libonnxruntime.so"))
                .find(|candidate| candidate.exists())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid() {
        let c: Config = toml::from_str(EMBEDDED_DEFAULTS).unwrap();
        c.validate().unwrap();
        assert!(c.corridor("uae-sa").is_some());
        assert_eq!(c.server.default_corridor.as_ref().map(|c| c.as_str()), Some("UAE-SA"));
    }

    #[test]
    fn rejects_undeclared_default_and_duplicates() {
        let mut c: Config = toml::from_str(EMBEDDED_DEFAULTS).unwrap();
        c.server.default_corridor = Some(CorridorId::parse("FR-MA").unwrap());
        assert!(c.validate().unwrap_err().to_string().contains("FR-MA"));
        let mut c: Config = toml::from_str(EMBEDDED_DEFAULTS).unwrap();
        let dup = c.corridors[0].clone();
        c.corridors.push(dup);
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
    }
}
