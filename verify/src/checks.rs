//! The determinism checks: golden bits, repetition, batch invariance, thread invariance.

use crate::golden::{to_hex, GoldenFile, GoldenHeader, GoldenOutput, GoldenVector, FORMAT};
use crate::{cpu_features, generate, VerifyError};
use invariant_core::{DataType, Tensor};
use invariant_engine::Model;
use serde::Serialize;
use std::fmt;

/// Vectors placed, in turn, at each checked position of each batch size up to 32 (4 for the
/// maximum batch size): bounds the cost of verifying large models.
pub const BATCH_TARGETS: usize = 8;

/// Most violations reported per check and version; the rest are counted.
pub const MAX_REPORTED: usize = 20;

/// Which check found a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Artifact hashes against the manifest.
    Hashes,
    /// Manifest, runtime and golden file load.
    Load,
    /// Outputs against the golden bits.
    Golden,
    /// Three runs of the same input.
    Repeat,
    /// A row alone against the same row inside batches.
    BatchInvariance,
    /// Engine thread counts.
    ThreadInvariance,
    /// The running server over HTTP against in-process results.
    Server,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Check::Hashes => "hashes",
            Check::Load => "load",
            Check::Golden => "golden",
            Check::Repeat => "repeat",
            Check::BatchInvariance => "batch-invariance",
            Check::ThreadInvariance => "thread-invariance",
            Check::Server => "server",
        };
        f.write_str(name)
    }
}

/// One broken promise, with everything needed to find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The check.
    pub check: Check,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Golden vector id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<String>,
    /// Output index (manifest order).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_index: Option<usize>,
    /// Output name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// First differing element.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub element: Option<usize>,
    /// Expected bits (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// Actual bits (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<String>,
    /// ULP distance of the first differing element (integers: numeric distance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ulp: Option<u128>,
    /// Differing elements in this output.
    pub differing: usize,
    /// Context: batch size and position, thread count, error text.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} [{}]", self.model, self.version, self.check)?;
        if let Some(v) = &self.vector {
            write!(f, " vector {v}")?;
        }
        if let (Some(i), Some(name)) = (self.output_index, &self.output) {
            write!(f, " output {i} '{name}'")?;
        }
        if let (Some(e), Some(x), Some(a)) = (self.element, &self.expected, &self.actual) {
            write!(f, " element {e}: expected {x} actual {a}")?;
            if let Some(u) = self.ulp {
                write!(f, " ({u} ULP)")?;
            }
            write!(f, "; {} element(s) differ", self.differing)?;
        }
        if !self.detail.is_empty() {
            write!(f, " — {}", self.detail)?;
        }
        Ok(())
    }
}

/// Distance between two elements' bits: ULPs for floats (adjacent floats are 1 apart, across
/// zero included), numeric distance for integers.
pub fn ulp_distance(a: u64, b: u64, d: DataType) -> u128 {
    fn ordered32(x: u64) -> i128 {
        let x = x as u32;
        if x >> 31 == 1 {
            -((x & 0x7fff_ffff) as i128)
        } else {
            x as i128
        }
    }
    fn ordered64(x: u64) -> i128 {
        if x >> 63 == 1 {
            -((x & 0x7fff_ffff_ffff_ffff) as i128)
        } else {
            x as i128
        }
    }
    let signed = |x: u64, bits: u32| ((x << (64 - bits)) as i64 >> (64 - bits)) as i128;
    let (x, y) = match d {
        DataType::Fp32 => (ordered32(a), ordered32(b)),
        DataType::Fp64 => (ordered64(a), ordered64(b)),
        DataType::Int8 => (signed(a, 8), signed(b, 8)),
        DataType::Int16 => (signed(a, 16), signed(b, 16)),
        DataType::Int32 => (signed(a, 32), signed(b, 32)),
        DataType::Int64 => (signed(a, 64), signed(b, 64)),
        DataType::Bool | DataType::Uint8 | DataType::Bytes => (a as i128, b as i128),
    };
    x.abs_diff(y)
}

/// Where violations of one version are collected.
pub struct Collector {
    model: String,
    version: String,
    /// Violations found so far.
    pub violations: Vec<Violation>,
    suppressed: Vec<(Check, usize)>,
}

impl Collector {
    /// An empty collector for one version.
    pub fn new(model: &str, version: &str) -> Self {
        Self {
            model: model.into(),
            version: version.into(),
            violations: Vec::new(),
            suppressed: Vec::new(),
        }
    }

    fn push(&mut self, v: Violation) {
        if self.violations.iter().filter(|x| x.check == v.check).count() < MAX_REPORTED {
            self.violations.push(v);
        } else if let Some(s) = self.suppressed.iter_mut().find(|(c, _)| *c == v.check) {
            s.1 += 1;
        } else {
            self.suppressed.push((v.check, 1));
        }
    }

    /// A violation that concerns no particular element.
    fn bare(&self, check: Check, vector: Option<&str>, detail: String) -> Violation {
        Violation {
            check,
            model: self.model.clone(),
            version: self.version.clone(),
            vector: vector.map(String::from),
            output_index: None,
            output: None,
            element: None,
            expected: None,
            actual: None,
            ulp: None,
            differing: 0,
            detail,
        }
    }

    /// Records a violation that concerns no particular element.
    pub fn fail(&mut self, check: Check, vector: Option<&str>, detail: impl Into<String>) {
        let v = self.bare(check, vector, detail.into());
        self.push(v);
    }

    /// Compares actual outputs with expected bits, one violation per differing output.
    pub fn compare(&mut self, check: Check, vector: &str, expected: &[GoldenOutput], actual: &[Tensor], detail: &str) {
        if expected.len() != actual.len() {
            self.fail(
                check,
                Some(vector),
                format!(
                    "{} outputs expected, {} computed; {detail}",
                    expected.len(),
                    actual.len()
                ),
            );
            return;
        }
        for (i, (e, a)) in expected.iter().zip(actual).enumerate() {
            if e.name != a.name || e.datatype != a.datatype() || e.shape != a.shape {
                self.fail(
                    check,
                    Some(vector),
                    format!(
                        "output {i}: expected '{}' {} {:?}, computed '{}' {} {:?}; {detail}",
                        e.name,
                        e.datatype,
                        e.shape,
                        a.name,
                        a.datatype(),
                        a.shape
                    ),
                );
                continue;
            }
            let actual_bits = a.data.element_bits();
            if actual_bits.len() != e.bits.len() {
                self.fail(
                    check,
                    Some(vector),
                    format!(
                        "output {i} '{}': {} elements expected, {} computed; {detail}",
                        e.name,
                        e.bits.len(),
                        actual_bits.len()
                    ),
                );
                continue;
            }
            let differing: Vec<usize> = (0..e.bits.len()).filter(|&k| e.bits[k] != actual_bits[k]).collect();
            if let Some(&k) = differing.first() {
                self.push(Violation {
                    check,
                    model: self.model.clone(),
                    version: self.version.clone(),
                    vector: Some(vector.into()),
                    output_index: Some(i),
                    output: Some(e.name.clone()),
                    element: Some(k),
                    expected: Some(to_hex(e.bits[k], e.datatype)),
                    actual: Some(to_hex(actual_bits[k], e.datatype)),
                    ulp: Some(ulp_distance(e.bits[k], actual_bits[k], e.datatype)),
                    differing: differing.len(),
                    detail: detail.into(),
                });
            }
        }
    }

    /// The violations, plus one line per check whose further violations were only counted.
    pub fn finish(mut self) -> Vec<Violation> {
        for (check, n) in std::mem::take(&mut self.suppressed) {
            let v = self.bare(check, None, format!("{n} more violation(s) of this check not listed"));
            self.violations.push(v);
        }
        self.violations
    }
}

fn run(model: &Model, vector: &str, inputs: &[Tensor]) -> Result<Vec<Tensor>, VerifyError> {
    model.infer(inputs.to_vec()).map_err(|error| VerifyError::Engine {
        vector: vector.into(),
        error,
    })
}

/// Computes golden vectors for a loaded version (see [`generate::golden_inputs`]).
pub fn record(model: &Model, recorded_at: &str) -> Result<GoldenFile, VerifyError> {
    let manifest = model.manifest();
    let mut vectors = Vec::new();
    for (id, inputs) in generate::golden_inputs(manifest)? {
        let outputs = run(model, &id, &inputs)?.iter().map(GoldenOutput::of).collect();
        let fallback_outputs = fallback_answer(manifest, &id, &inputs)?
            .iter()
            .map(GoldenOutput::of)
            .collect();
        vectors.push(GoldenVector {
            id,
            inputs,
            outputs,
            fallback_outputs,
        });
    }
    let runtime = model.runtime();
    Ok(GoldenFile {
        header: GoldenHeader {
            format: FORMAT.into(),
            model: manifest.name.clone(),
            version: manifest.version.to_string(),
            content_hash: model.content_hash().into(),
            engine: runtime.name.into(),
            runtime_version: runtime.version,
            cpu_features: cpu_features(),
            cpu_class: Some(crate::cpu_class()),
            portable: Some(model.portability().portable),
            recorded_at: recorded_at.into(),
            recorded_by: format!("invariant {}", env!("CARGO_PKG_VERSION")),
            vectors: vectors.len(),
        },
        vectors,
    })
}

/// The rule fallback's answer to a vector (empty when the version declares none).
fn fallback_answer(
    manifest: &invariant_registry::Manifest,
    id: &str,
    inputs: &[Tensor],
) -> Result<Vec<Tensor>, VerifyError> {
    if manifest.inference.fallback != invariant_registry::Fallback::Rules {
        return Ok(Vec::new());
    }
    invariant_registry::rules::evaluate(manifest, inputs).map_err(|e| VerifyError::Fallback {
        vector: id.to_string(),
        message: format!("fallback rules: {e}"),
    })
}

/// Outcome of the deploy-time checks (golden, repeat, batch invariance) of one version.
#[derive(Debug, Clone)]
pub struct DeployVerification {
    /// Violations of the golden and repeat checks (and the golden file's identity).
    pub violations: Vec<Violation>,
    /// Violations of the batch-invariance check.
    pub batch_violations: Vec<Violation>,
    /// The outputs of every vector computed alone (for further checks).
    pub alone: Vec<Vec<Tensor>>,
}

impl DeployVerification {
    /// True when golden and repeat checks passed.
    pub fn outputs_match(&self) -> bool {
        self.violations.is_empty()
    }

    /// True when no batch changed a row's bits.
    pub fn batch_invariant(&self) -> bool {
        self.batch_violations.is_empty()
    }
}

/// The batch sizes checked: 2, 7, 32 and the model's maximum (those not above it).
pub fn batch_sizes(max: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = [2, 7, 32, max].into_iter().filter(|&b| b >= 2 && b <= max).collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Golden check (every vector's bits), repeat check (two more runs each), and batch
/// invariance (each single-row vector at the first, middle and last position of batches of
/// [`batch_sizes`], other vectors as neighbours, against its result alone).
pub fn verify_deploy(model: &Model, golden: &GoldenFile) -> Result<DeployVerification, VerifyError> {
    let manifest = model.manifest();
    let version = manifest.version.to_string();
    let mut c = identity(model, golden);
    let mut alone = Vec::with_capacity(golden.vectors.len());
    for v in &golden.vectors {
        let first = run(model, &v.id, &v.inputs)?;
        c.compare(Check::Golden, &v.id, &v.outputs, &first, "");
        let fallback = fallback_answer(manifest, &v.id, &v.inputs)?;
        if !fallback.is_empty() {
            if v.fallback_outputs.is_empty() {
                c.fail(
                    Check::Golden,
                    Some(&v.id),
                    "the version declares fallback rules but the golden vector records no fallback_outputs: \
                     record the golden vectors again",
                );
            } else {
                c.compare(Check::Golden, &v.id, &v.fallback_outputs, &fallback, "fallback rules");
            }
        }
        let reference: Vec<GoldenOutput> = first.iter().map(GoldenOutput::of).collect();
        for repetition in 2..=3 {
            let again = run(model, &v.id, &v.inputs)?;
            c.compare(
                Check::Repeat,
                &v.id,
                &reference,
                &again,
                &format!("run {repetition} differs from run 1"),
            );
        }
        alone.push(first);
    }
    let violations = c.finish();
    let mut b = Collector::new(&manifest.name, &version);
    batch_invariance(model, golden, &alone, &mut b)?;
    Ok(DeployVerification {
        violations,
        batch_violations: b.finish(),
        alone,
    })
}

/// A collector holding the golden file's identity check: it must name this model and version
/// and the artifacts' content hash.
fn identity(model: &Model, golden: &GoldenFile) -> Collector {
    let manifest = model.manifest();
    let version = manifest.version.to_string();
    let mut c = Collector::new(&manifest.name, &version);
    let h = &golden.header;
    if h.model != manifest.name || h.version != version {
        c.fail(
            Check::Golden,
            None,
            format!("golden file is for {} {}", h.model, h.version),
        );
    }
    if h.content_hash != model.content_hash() {
        c.fail(
            Check::Golden,
            None,
            format!(
                "golden vectors were recorded for artifacts {} but these are {}",
                h.content_hash,
                model.content_hash()
            ),
        );
    }
    c
}

/// The golden check alone (every vector once, bit for bit): for further instances of a version
/// whose full [`verify_deploy`] already passed, e.g. one instance per serving corridor.
pub fn verify_golden(model: &Model, golden: &GoldenFile) -> Result<Vec<Violation>, VerifyError> {
    let mut c = identity(model, golden);
    for v in &golden.vectors {
        let outputs = run(model, &v.id, &v.inputs)?;
        c.compare(Check::Golden, &v.id, &v.outputs, &outputs, "");
    }
    Ok(c.finish())
}

fn batch_invariance(
    model: &Model,
    golden: &GoldenFile,
    alone: &[Vec<Tensor>],
    c: &mut Collector,
) -> Result<(), VerifyError> {
    let manifest = model.manifest();
    if !manifest.inputs.iter().any(|s| s.is_batched()) {
        return Ok(());
    }
    let single: Vec<usize> = (0..golden.vectors.len())
        .filter(|&i| {
            golden.vectors[i]
                .inputs
                .iter()
                .zip(&manifest.inputs)
                .all(|(t, s)| !s.is_batched() || t.shape.first() == Some(&1))
        })
        .collect();
    if single.len() < 2 {
        c.fail(
            Check::BatchInvariance,
            None,
            "fewer than two single-row golden vectors to combine",
        );
        return Ok(());
    }
    for size in batch_sizes(manifest.inference.max_batch_size) {
        let mut positions = vec![0, size / 2, size - 1];
        positions.dedup();
        let targets = if size <= 32 {
            BATCH_TARGETS.min(single.len())
        } else {
            4.min(single.len())
        };
        for t in 0..targets {
            for &p in &positions {
                // Row `j` of the batch: the target at `p`, other single-row vectors around it.
                let member = |j: usize| {
                    if j == p {
                        single[t]
                    } else {
                        single[(t + 1 + j) % single.len()]
                    }
                };
                let mut inputs = Vec::new();
                for (k, spec) in manifest.inputs.iter().enumerate() {
                    // `size` is at most the manifest's max_batch_size, which the repository's
                    // limits bound (with the elements of a batch) when the version loads.
                    let parts: Option<Vec<&Tensor>> = if spec.is_batched() {
                        (0..size).map(|j| golden.vectors[member(j)].inputs.get(k)).collect()
                    } else {
                        golden.vectors[member(0)].inputs.get(k).map(|t| vec![t])
                    };
                    let joined = match parts {
                        Some(parts) if spec.is_batched() => Tensor::concat_rows(&parts),
                        Some(parts) => parts.first().map(|t| (*t).clone()),
                        None => None,
                    };
                    let Some(joined) = joined else {
                        c.fail(
                            Check::BatchInvariance,
                            None,
                            format!("golden inputs of '{}' cannot be stacked", spec.name),
                        );
                        return Ok(());
                    };
                    inputs.push(joined);
                }
                let id = &golden.vectors[single[t]].id;
                let outputs = run(model, id, &inputs)?;
                let row: Vec<Tensor> = outputs
                    .iter()
                    .zip(&manifest.outputs)
                    .map(|(o, spec)| {
                        if spec.is_batched() {
                            o.row(p).unwrap_or_else(|| o.clone())
                        } else {
                            o.clone()
                        }
                    })
                    .collect();
                let reference: Vec<GoldenOutput> = alone[single[t]].iter().map(GoldenOutput::of).collect();
                c.compare(
                    Check::BatchInvariance,
                    id,
                    &reference,
                    &row,
                    &format!("at position {p} of a batch of {size}"),
                );
            }
        }
    }
    Ok(())
}

/// Runs every golden vector on engines built with different thread counts and compares each
/// with `reference`, the same vectors' outputs from the verified engine (see
/// [`DeployVerification::alone`]); golden mismatches are the golden check's to report.
pub fn thread_invariance(
    engines: &[(usize, &Model)],
    golden: &GoldenFile,
    reference: &[Vec<Tensor>],
    c: &mut Collector,
) -> Result<(), VerifyError> {
    for (threads, model) in engines {
        for (v, expected) in golden.vectors.iter().zip(reference) {
            let out = run(model, &v.id, &v.inputs)?;
            let expected: Vec<GoldenOutput> = expected.iter().map(GoldenOutput::of).collect();
            c.compare(
                Check::ThreadInvariance,
                &v.id,
                &expected,
                &out,
                &format!("with {threads} engine thread(s)"),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulp_distances() {
        let f = |x: f32| x.to_bits() as u64;
        assert_eq!(ulp_distance(f(1.0), f(1.0), DataType::Fp32), 0);
        assert_eq!(ulp_distance(f(1.0), f(1.0) + 1, DataType::Fp32), 1);
        assert_eq!(ulp_distance(f(0.0), f(-0.0), DataType::Fp32), 0);
        assert_eq!(
            ulp_distance(f(f32::from_bits(1)), f(-f32::from_bits(1)), DataType::Fp32),
            2
        );
        assert_eq!(ulp_distance((-1i64) as u64, 1, DataType::Int64), 2);
        assert_eq!(ulp_distance(0xff, 0x01, DataType::Int8), 2);
        assert_eq!(ulp_distance(1.5f64.to_bits(), 1.5f64.to_bits() + 3, DataType::Fp64), 3);
    }

    #[test]
    fn batch_sizes_respect_the_maximum() {
        assert_eq!(batch_sizes(256), vec![2, 7, 32, 256]);
        assert_eq!(batch_sizes(8), vec![2, 7, 8]);
        assert_eq!(batch_sizes(1), Vec::<usize>::new());
    }

    #[test]
    fn violations_read_well() {
        let mut c = Collector::new("m", "1.0.0");
        let expected = vec![GoldenOutput {
            name: "y".into(),
            datatype: DataType::Fp32,
            shape: vec![2],
            bits: vec![0x3f80_0000, 0],
        }];
        let actual = vec![Tensor::new(
            "y",
            vec![2],
            invariant_core::TensorData::Fp32(vec![1.0000001, 0.0]),
            "y",
        )
        .unwrap()];
        c.compare(Check::Golden, "007-max", &expected, &actual, "");
        let v = c.finish();
        assert_eq!(v.len(), 1);
        let line = v[0].to_string();
        assert!(
            line.contains("m 1.0.0 [golden] vector 007-max output 0 'y' element 0"),
            "{line}"
        );
        assert!(
            line.contains("expected 3f800000 actual 3f800001 (1 ULP); 1 element(s) differ"),
            "{line}"
        );
    }

    #[test]
    fn outputs_of_another_length_are_a_violation_not_a_crash() {
        let mut c = Collector::new("m", "1.0.0");
        let expected = vec![GoldenOutput {
            name: "y".into(),
            datatype: DataType::Fp32,
            shape: vec![2],
            bits: vec![0, 0, 0],
        }];
        let actual = vec![Tensor {
            name: "y".into(),
            shape: vec![2],
            data: invariant_core::TensorData::Fp32(vec![0.0, 0.0]),
        }];
        c.compare(Check::Golden, "000", &expected, &actual, "");
        let v = c.finish();
        assert_eq!(v.len(), 1);
        assert!(v[0].detail.contains("3 elements expected, 2 computed"), "{}", v[0]);
    }

    #[test]
    fn golden_inputs_of_an_overflowing_signature_are_an_error() {
        use invariant_registry::{Manifest, OnnxEngine, TensorSpec};
        let manifest = Manifest::onnx(
            "m",
            "1.0.0".parse().unwrap(),
            vec![TensorSpec::new("x", DataType::Fp32, &[-1, i64::MAX, 4])],
            vec![TensorSpec::new("y", DataType::Fp32, &[-1, 1])],
            OnnxEngine::Portable,
        );
        let e = generate::golden_inputs(&manifest).unwrap_err().to_string();
        assert!(e.contains("input 'x'") && e.contains("too many elements"), "{e}");
        let fine = Manifest::onnx(
            "m",
            "1.0.0".parse().unwrap(),
            vec![TensorSpec::new("x", DataType::Fp32, &[-1, 3])],
            vec![TensorSpec::new("y", DataType::Fp32, &[-1, 1])],
            OnnxEngine::Portable,
        );
        let vectors = generate::golden_inputs(&fine).unwrap();
        let last = vectors.last().unwrap();
        assert_eq!(last.0, format!("{:03}-random-batch-256", vectors.len() - 1));
        assert_eq!(last.1[0].shape, vec![256, 3]);
    }
}
