//! `manifest.toml`: what a model version is and how to run it (see `docs/model-repository.md`).

use crate::{Limits, RegistryError};
use invariant_core::DataType;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path};

/// The runtime a version needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// An ONNX graph run by ONNX Runtime.
    Onnx,
    /// A feed-forward network run by Invariant's candle engine.
    Native,
}

impl Format {
    /// The V2 `platform` string reported in model metadata.
    pub fn platform(self) -> &'static str {
        match self {
            Format::Onnx => "onnxruntime_onnx",
            Format::Native => "invariant_native",
        }
    }
}

/// One artifact file and its expected hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactEntry {
    /// Path relative to the version directory.
    pub path: String,
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Lowercase hex blake3.
    pub blake3: String,
}

/// One tensor of a signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// V2 datatype.
    pub datatype: DataType,
    /// Shape; `-1` only as the first (batch) dimension.
    pub shape: Vec<i64>,
    /// Whether NaN and ±Inf are accepted in this input (default: no).
    #[serde(default)]
    pub allow_non_finite: bool,
    /// Optional meaning of each column of the last dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Optional `[min, max]` of each column of the last dimension: the range golden vectors
    /// are drawn from (edges included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Vec<[f64; 2]>>,
    /// Optional feature service whose features, in order, make this input's columns: a request
    /// may then send entity keys (`parameters.entities`) instead of the tensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_service: Option<String>,
}

impl TensorSpec {
    /// A tensor with no column names, ranges or feature service, non-finite values refused.
    pub fn new(name: impl Into<String>, datatype: DataType, shape: &[i64]) -> Self {
        Self {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
            allow_non_finite: false,
            columns: None,
            ranges: None,
            feature_service: None,
        }
    }

    /// True when the first dimension is the variable batch dimension.
    pub fn is_batched(&self) -> bool {
        self.shape.first() == Some(&-1)
    }
}

/// `[inference]`: how to run the version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceSettings {
    /// Largest batch dimension a request may carry.
    #[serde(default = "default_max_batch_size")]
    pub max_batch_size: usize,
    /// Engine threads.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Seed of the golden-vector input generator (`invariant golden record`). No runtime
    /// receives it: graphs with random operators are refused on every engine.
    #[serde(default)]
    pub seed: u64,
    /// Device wish, decided by the device layer.
    #[serde(default)]
    pub device: invariant_gpu::DeviceRequest,
    /// What to do when the feature store cannot be read for an input bound to a feature
    /// service: `defaults` answers with the service's declared defaults, flagged as degraded;
    /// absent, such requests fail with 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_fallback: Option<FeatureFallback>,
    /// How long an answer stays in the inference cache (default: by model name, see DESIGN.md,
    /// else the server's `cache.default_ttl_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl_seconds: Option<f64>,
    /// The answer when the model's circuit breaker is open or its corridor is degraded
    /// (default: `refuse`).
    #[serde(default)]
    pub fallback: Fallback,
}

fn default_max_batch_size() -> usize {
    256
}
fn default_threads() -> usize {
    1
}

impl Default for InferenceSettings {
    fn default() -> Self {
        Self {
            max_batch_size: default_max_batch_size(),
            threads: default_threads(),
            seed: 0,
            device: Default::default(),
            cache_ttl_seconds: None,
            feature_fallback: None,
            fallback: Fallback::Refuse,
        }
    }
}

/// A model's answer when it cannot compute (breaker open, corridor degraded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Refuse with 503.
    #[default]
    Refuse,
    /// Serve the cached answer for the same input, flagged as degraded; refuse on a miss.
    Cache,
    /// Serve the cached answer for the same input, else the manifest's `[[fallback_rules]]`,
    /// flagged as degraded.
    Rules,
}

/// A model's answer when its features cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureFallback {
    /// Use the declared defaults of every feature, and flag the answer as degraded.
    Defaults,
}

/// `[onnx]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxSection {
    /// The `.onnx` artifact.
    pub model: String,
    /// Which engine runs the graph (default `onnxruntime`).
    #[serde(default)]
    pub engine: OnnxEngine,
    /// Portable engine only: matrix products use fused multiply-adds (one rounding per
    /// step; hardware FMA where the CPU has it, the correctly rounded software `fma`
    /// elsewhere, which is far slower). Other bits than unfused, the same on every CPU.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fused_multiply_add: bool,
}

/// The engine of an ONNX version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnnxEngine {
    /// ONNX Runtime: any graph, but its kernels are chosen by CPU feature at run time, so
    /// the bits hold only on the CPU classes the golden vectors were recorded on.
    #[default]
    Onnxruntime,
    /// Invariant's fixed-order kernels (`invariant-portable`): the common tabular operators
    /// only, the same bits on every CPU.
    Portable,
}

impl OnnxEngine {
    /// The name used in manifests and metadata.
    pub fn name(self) -> &'static str {
        match self {
            OnnxEngine::Onnxruntime => "onnxruntime",
            OnnxEngine::Portable => "portable",
        }
    }
}

/// Activation applied after a native layer's affine map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `max(x, 0)`
    Relu,
    /// `1 / (1 + exp(-x))`
    Sigmoid,
    /// `tanh(x)`
    Tanh,
    /// `x`
    Identity,
}

/// One native layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// Output width.
    pub size: usize,
    /// Activation after the affine map.
    pub activation: Activation,
}

/// How a native network computes its affine maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kernel {
    /// Invariant's fixed-reduction-order product: batch- and thread-invariant (the default).
    #[default]
    FixedOrder,
    /// candle's `matmul` in the `x · Wᵀ` form of `candle_nn::Linear`. NOT batch-invariant:
    /// kept to measure against and to prove the gate catches batch-dependent models.
    CandleMatmul,
}

/// `[native]`: a feed-forward network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeSection {
    /// The safetensors artifact holding `layers.<i>.weight` and `layers.<i>.bias`.
    pub weights: String,
    /// Width of the input.
    pub input_size: usize,
    /// Layers in order.
    pub layers: Vec<LayerSpec>,
    /// Matrix-product kernel.
    #[serde(default)]
    pub kernel: Kernel,
}

/// A parsed and checked `manifest.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Model name; equals the model directory's name.
    pub name: String,
    /// Semantic version; equals the version directory's name.
    pub version: semver::Version,
    /// Runtime.
    pub format: Format,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Every file of the version with its hashes.
    pub artifacts: Vec<ArtifactEntry>,
    /// Input signature.
    pub inputs: Vec<TensorSpec>,
    /// Output signature.
    pub outputs: Vec<TensorSpec>,
    /// Inference settings.
    #[serde(default)]
    pub inference: InferenceSettings,
    /// ONNX settings (format = "onnx").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx: Option<OnnxSection>,
    /// Native network (format = "native").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeSection>,
    /// The rule table of `fallback = "rules"` (see [`crate::rules`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_rules: Vec<crate::rules::FallbackRule>,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// True for a relative path that stays inside its directory.
fn is_contained(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

impl Manifest {
    /// The manifest of an ONNX graph `model.onnx` with default `[inference]` settings, no
    /// artifacts listed yet and an empty description.
    pub fn onnx(
        name: impl Into<String>,
        version: semver::Version,
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
        engine: OnnxEngine,
    ) -> Self {
        Self {
            name: name.into(),
            version,
            format: Format::Onnx,
            description: String::new(),
            artifacts: Vec::new(),
            inputs,
            outputs,
            inference: InferenceSettings::default(),
            onnx: Some(OnnxSection {
                model: "model.onnx".into(),
                engine,
                fused_multiply_add: false,
            }),
            native: None,
            fallback_rules: Vec::new(),
        }
    }

    /// True when ONNX Runtime runs this version (an ONNX version without `engine = "portable"`).
    pub fn uses_onnxruntime(&self) -> bool {
        self.format == Format::Onnx && self.onnx.as_ref().is_none_or(|o| o.engine == OnnxEngine::Onnxruntime)
    }

    /// Parses manifest text within the default [`Limits`]; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RegistryError> {
        Self::parse_with_limits(text, path, &Limits::default())
    }

    /// Parses manifest text and checks it (see [`Manifest::validate_with_limits`]); `path`
    /// names the file in errors.
    pub fn parse_with_limits(text: &str, path: &Path, limits: &Limits) -> Result<Self, RegistryError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| RegistryError::ManifestParse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        manifest.validate_with_limits(path, limits)?;
        Ok(manifest)
    }

    /// [`Manifest::validate_with_limits`] within the default [`Limits`].
    pub fn validate(&self, path: &Path) -> Result<(), RegistryError> {
        self.validate_with_limits(path, &Limits::default())
    }

    /// Checks what TOML parsing cannot: signatures, paths, hashes, format sections, and every
    /// number that sizes an allocation against `limits` (the message names the field and
    /// the limit).
    pub fn validate_with_limits(&self, path: &Path, limits: &Limits) -> Result<(), RegistryError> {
        let invalid = |message: String| {
            Err(RegistryError::ManifestInvalid {
                path: path.to_path_buf(),
                message,
            })
        };
        self.check_limits(limits).or_else(invalid)?;
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid(format!(
                "name '{}' must be non-empty ASCII letters, digits, '-' or '_'",
                self.name
            ));
        }
        if self.artifacts.is_empty() {
            return invalid("artifacts: at least one artifact is required".into());
        }
        for (i, a) in self.artifacts.iter().enumerate() {
            if !is_contained(&a.path) {
                return invalid(format!(
                    "artifacts[{i}].path '{}' must be a relative path inside the version directory",
                    a.path
                ));
            }
            if !is_hex64(&a.sha256) {
                return invalid(format!("artifacts[{i}].sha256 must be 64 lowercase hex digits"));
            }
            if !is_hex64(&a.blake3) {
                return invalid(format!("artifacts[{i}].blake3 must be 64 lowercase hex digits"));
            }
        }
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return invalid("inputs and outputs: at least one of each is required".into());
        }
        for (kind, specs) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            let mut names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            names.sort_unstable();
            if names.windows(2).any(|w| w[0] == w[1]) {
                return invalid(format!("{kind}: tensor names must be unique"));
            }
            for (i, s) in specs.iter().enumerate() {
                if s.shape.is_empty() {
                    return invalid(format!("{kind}[{i}].shape must have at least one dimension"));
                }
                if s.shape.iter().skip(1).any(|&d| d < 1) || s.shape[0] < -1 || s.shape[0] == 0 {
                    return invalid(format!(
                        "{kind}[{i}].shape {:?}: dimensions must be positive, -1 allowed only first",
                        s.shape
                    ));
                }
                if s.feature_service.is_some()
                    && (s.datatype != DataType::Fp32 || s.shape.len() != 2 || s.shape[0] != -1)
                {
                    return invalid(format!("{kind}[{i}].feature_service needs an FP32 [-1, n] tensor"));
                }
                if let Some(ranges) = &s.ranges {
                    if s.shape.last().copied() != Some(ranges.len() as i64) {
                        return invalid(format!(
                            "{kind}[{i}].ranges has {} entries but the last dimension is {:?}",
                            ranges.len(),
                            s.shape.last()
                        ));
                    }
                    if let Some(j) = ranges
                        .iter()
                        .position(|[lo, hi]| !(lo.is_finite() && hi.is_finite() && lo <= hi))
                    {
                        return invalid(format!("{kind}[{i}].ranges[{j}] must be finite with min <= max"));
                    }
                }
                if let Some(cols) = &s.columns {
                    if s.shape.last().copied() != Some(cols.len() as i64) {
                        return invalid(format!(
                            "{kind}[{i}].columns has {} names but the last dimension is {:?}",
                            cols.len(),
                            s.shape.last()
                        ));
                    }
                }
            }
        }
        if self.inference.max_batch_size == 0 {
            return invalid("inference.max_batch_size must be at least 1".into());
        }
        if self
            .inference
            .cache_ttl_seconds
            .is_some_and(|t| !(t.is_finite() && t >= 0.0))
        {
            return invalid("inference.cache_ttl_seconds must be a non-negative number".into());
        }
        if self.inference.threads == 0 {
            return invalid("inference.threads must be at least 1".into());
        }
        let listed = |file: &str| self.artifacts.iter().any(|a| a.path == file);
        match self.format {
            Format::Onnx => {
                let Some(onnx) = &self.onnx else {
                    return invalid("format = \"onnx\" needs an [onnx] section".into());
                };
                if !listed(&onnx.model) {
                    return invalid(format!("onnx.model '{}' is not listed in [[artifacts]]", onnx.model));
                }
                if self.native.is_some() {
                    return invalid("format = \"onnx\" must not have a [native] section".into());
                }
                if onnx.fused_multiply_add && onnx.engine != OnnxEngine::Portable {
                    return invalid(
                        "onnx.fused_multiply_add needs engine = \"portable\" (ONNX Runtime picks its own kernels)"
                            .into(),
                    );
                }
            }
            Format::Native => {
                let Some(native) = &self.native else {
                    return invalid("format = \"native\" needs a [native] section".into());
                };
                if self.onnx.is_some() {
                    return invalid("format = \"native\" must not have an [onnx] section".into());
                }
                if !listed(&native.weights) {
                    return invalid(format!(
                        "native.weights '{}' is not listed in [[artifacts]]",
                        native.weights
                    ));
                }
                self.validate_native(native).or_else(invalid)?;
            }
        }
        match (self.inference.fallback, self.fallback_rules.is_empty()) {
            (crate::Fallback::Rules, _) => crate::rules::validate(self).or_else(invalid)?,
            (_, false) => {
                return invalid("[[fallback_rules]] are declared but [inference] fallback is not \"rules\"".into())
            }
            (_, true) => {}
        }
        Ok(())
    }

    /// Checks every number that sizes an allocation against `limits`, before anything
    /// multiplies them; `Err` names the field and the limit.
    fn check_limits(&self, limits: &Limits) -> Result<(), String> {
        // `Debug`: floats print short (`1e300`), integers as `Display` does.
        fn at_most<T: PartialOrd + std::fmt::Debug>(field: &str, value: T, limit: T) -> Result<(), String> {
            if value > limit {
                return Err(format!("{field} = {value:?} exceeds the limit of {limit:?}"));
            }
            Ok(())
        }
        let inference = &self.inference;
        at_most(
            "inference.max_batch_size",
            inference.max_batch_size,
            limits.max_batch_size,
        )?;
        at_most("inference.threads", inference.threads, limits.max_threads)?;
        if let Some(ttl) = inference.cache_ttl_seconds {
            at_most("inference.cache_ttl_seconds", ttl, limits.max_cache_ttl_seconds)?;
        }
        if self.artifacts.len() > limits.max_artifacts {
            return Err(format!(
                "artifacts: {} entries exceed the limit of {}",
                self.artifacts.len(),
                limits.max_artifacts
            ));
        }
        for (kind, specs) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            if specs.len() > limits.max_tensors {
                return Err(format!(
                    "{kind}: {} tensors exceed the limit of {}",
                    specs.len(),
                    limits.max_tensors
                ));
            }
            for (i, s) in specs.iter().enumerate() {
                if s.shape.len() > limits.max_rank {
                    return Err(format!(
                        "{kind}[{i}].shape has {} dimensions, exceeding the limit of {}",
                        s.shape.len(),
                        limits.max_rank
                    ));
                }
                // Negative and zero dimensions are refused later, with their own message.
                let fixed = if s.is_batched() { &s.shape[1..] } else { &s.shape[..] };
                let row = fixed
                    .iter()
                    .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d.max(1)).ok()?));
                let row = match row {
                    Some(n) if n <= limits.max_row_elements => n,
                    _ => {
                        return Err(format!(
                            "{kind}[{i}].shape {:?}: {} elements per row exceed the limit of {}",
                            s.shape,
                            row.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string()),
                            limits.max_row_elements
                        ))
                    }
                };
                if s.is_batched() {
                    let total = row.checked_mul(inference.max_batch_size);
                    if total.is_none_or(|n| n > limits.max_batch_elements) {
                        return Err(format!(
                            "{kind}[{i}].shape {:?}: inference.max_batch_size {} rows of {row} elements exceed the \
                             limit of {} elements per tensor",
                            s.shape, inference.max_batch_size, limits.max_batch_elements
                        ));
                    }
                }
            }
        }
        if let Some(native) = &self.native {
            if native.layers.len() > limits.max_layers {
                return Err(format!(
                    "native.layers: {} layers exceed the limit of {}",
                    native.layers.len(),
                    limits.max_layers
                ));
            }
            at_most("native.input_size", native.input_size, limits.max_layer_size)?;
            for (i, layer) in native.layers.iter().enumerate() {
                at_most(&format!("native.layers[{i}].size"), layer.size, limits.max_layer_size)?;
            }
        }
        Ok(())
    }

    /// A native network takes one FP32 `[-1, input_size]` input and gives one FP32
    /// `[-1, last layer size]` output.
    fn validate_native(&self, native: &NativeSection) -> Result<(), String> {
        if native.layers.is_empty() || native.input_size == 0 || native.layers.iter().any(|l| l.size == 0) {
            return Err("native: input_size and every layer size must be positive, with at least one layer".into());
        }
        let last = native.layers.last().map(|l| l.size).unwrap_or(0);
        let (i, o) = match (&self.inputs[..], &self.outputs[..]) {
            ([i], [o]) => (i, o),
            _ => return Err("native networks have exactly one input and one output".into()),
        };
        if i.datatype != DataType::Fp32 || i.shape != [-1, native.input_size as i64] {
            return Err(format!(
                "native: input must be FP32 [-1, {}], found {} {:?}",
                native.input_size, i.datatype, i.shape
            ));
        }
        if o.datatype != DataType::Fp32 || o.shape != [-1, last as i64] {
            return Err(format!(
                "native: output must be FP32 [-1, {last}], found {} {:?}",
                o.datatype, o.shape
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "m"
version = "1.0.0"
format = "native"
[[artifacts]]
path = "model.safetensors"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
blake3 = "0000000000000000000000000000000000000000000000000000000000000000"
[[inputs]]
name = "features"
datatype = "FP32"
shape = [-1, 3]
columns = ["a", "b", "c"]
[[outputs]]
name = "score"
datatype = "FP32"
shape = [-1, 1]
[native]
weights = "model.safetensors"
input_size = 3
layers = [{ size = 4, activation = "relu" }, { size = 1, activation = "sigmoid" }]
"#;

    #[test]
    fn parses_a_good_manifest_with_defaults() {
        let m = Manifest::parse(GOOD, Path::new("m/1.0.0/manifest.toml")).unwrap();
        assert_eq!(m.inference.max_batch_size, 256);
        assert_eq!(m.inference.threads, 1);
        assert!(!m.inputs[0].allow_non_finite);
        assert_eq!(m.format.platform(), "invariant_native");
    }

    fn err_of(text: &str) -> String {
        Manifest::parse(text, Path::new("x/manifest.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn rejects_bad_manifests_naming_the_field() {
        assert!(err_of(&GOOD.replace("shape = [-1, 1]", "shape = [1, -1]")).contains("outputs[0].shape"));
        assert!(err_of(&GOOD.replace("path = \"model.safetensors\"", "path = \"../x\"")).contains("artifacts[0].path"));
        assert!(err_of(&GOOD.replace("sha256 = \"0000", "sha256 = \"ZZ00")).contains("artifacts[0].sha256"));
        assert!(err_of(&GOOD.replace("input_size = 3", "input_size = 4")).contains("native: input"));
        assert!(err_of(&GOOD.replace("columns = [\"a\", \"b\", \"c\"]", "columns = [\"a\"]")).contains("columns"));
        assert!(err_of(&GOOD.replace("format = \"native\"", "format = \"tflite\"")).contains("format"));
        assert!(err_of(&GOOD.replace("version = \"1.0.0\"", "version = \"one\"")).contains("version"));
        assert!(err_of(&GOOD.replace("[native]", "[native]\nbogus = 1")).contains("bogus"));
        assert!(err_of(&GOOD.replace(
            "datatype = \"FP32\"\nshape = [-1, 3]",
            "datatype = \"FP16\"\nshape = [-1, 3]"
        ))
        .contains("FP16"));
    }

    #[test]
    fn onnx_engines_parse_and_fused_multiply_add_needs_the_portable_engine() {
        let onnx = GOOD
            .replace("format = \"native\"", "format = \"onnx\"")
            .replace("model.safetensors", "model.onnx");
        let onnx = onnx[..onnx.find("[native]").unwrap()].to_string() + "[onnx]\nmodel = \"model.onnx\"\n";
        let path = Path::new("m/1.0.0/manifest.toml");
        let m = Manifest::parse(&onnx, path).unwrap();
        assert!(m.uses_onnxruntime());
        let portable = onnx.clone() + "engine = \"portable\"\nfused_multiply_add = true\n";
        let m = Manifest::parse(&portable, path).unwrap();
        assert!(!m.uses_onnxruntime());
        assert!(m.onnx.as_ref().unwrap().fused_multiply_add);
        let err = err_of(&(onnx.clone() + "fused_multiply_add = true\n"));
        assert!(err.contains("fused_multiply_add needs engine = \"portable\""), "{err}");
        assert!(err_of(&(onnx + "engine = \"tensorrt\"\n")).contains("engine"));
    }

    #[test]
    fn numbers_that_size_allocations_are_bounded() {
        let with = |inference: &str| format!("{GOOD}[inference]\n{inference}\n");
        let e = err_of(&with("max_batch_size = 1000000000"));
        assert!(
            e.contains("inference.max_batch_size = 1000000000 exceeds the limit of 4096"),
            "{e}"
        );
        let e = err_of(&with("threads = 1000000"));
        assert!(e.contains("inference.threads = 1000000 exceeds the limit of 64"), "{e}");
        let e = err_of(&with("cache_ttl_seconds = 1e300"));
        assert!(
            e.contains("inference.cache_ttl_seconds = 1e300 exceeds the limit"),
            "{e}"
        );
        let e = err_of(&GOOD.replace("shape = [-1, 3]", "shape = [-1, 100000000]"));
        assert!(
            e.contains("inputs[0].shape [-1, 100000000]: 100000000 elements per row exceed the limit of 1048576"),
            "{e}"
        );
        let e = err_of(&GOOD.replace(
            "shape = [-1, 1]",
            "shape = [-1, 9223372036854775807, 9223372036854775807]",
        ));
        assert!(
            e.contains("outputs[0].shape") && e.contains("more than usize::MAX"),
            "{e}"
        );
        let e = err_of(&GOOD.replace("shape = [-1, 1]", "shape = [-1, 1000000]"));
        assert!(
            e.contains("outputs[0].shape [-1, 1000000]: inference.max_batch_size 256 rows of 1000000 elements exceed"),
            "{e}"
        );
        let e = err_of(&GOOD.replace("shape = [-1, 1]", "shape = [-1, 1, 1, 1, 1, 1, 1, 1, 1]"));
        assert!(
            e.contains("outputs[0].shape has 9 dimensions, exceeding the limit of 8"),
            "{e}"
        );
        let e = err_of(&GOOD.replace("{ size = 4,", "{ size = 100000000,"));
        assert!(
            e.contains("native.layers[0].size = 100000000 exceeds the limit of 65536"),
            "{e}"
        );
        let e = err_of(&GOOD.replace("input_size = 3", "input_size = 1000000"));
        assert!(
            e.contains("native.input_size = 1000000 exceeds the limit of 65536"),
            "{e}"
        );

        // A server may raise (or lower) each limit.
        let path = Path::new("m/1.0.0/manifest.toml");
        let big = with("max_batch_size = 8000");
        assert!(Manifest::parse(&big, path).is_err());
        let raised = Limits {
            max_batch_size: 8192,
            ..Limits::default()
        };
        assert_eq!(
            Manifest::parse_with_limits(&big, path, &raised)
                .unwrap()
                .inference
                .max_batch_size,
            8000
        );
        let lowered = Limits {
            max_threads: 0,
            ..Limits::default()
        };
        let e = Manifest::parse_with_limits(GOOD, path, &lowered)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inference.threads = 1 exceeds the limit of 0"), "{e}");
    }
}
