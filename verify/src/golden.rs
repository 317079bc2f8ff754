//! Golden-vector files: `golden-vectors/<model>/<version>.jsonl`.
//!
//! Line 1 is a header saying how the vectors were produced; every following line is one
//! vector: an id, the V2 input tensors (JSON numbers written as the shortest decimal that
//! parses back to the same bits) and the expected outputs as **exact bit patterns** (hex of
//! each element's little-endian bits) plus a blake3 of each output's bytes. One vector per
//! line keeps diffs readable.

use crate::VerifyError;
use invariant_core::json::parse_data_with_shape;
use invariant_core::tensor::concrete_shape;
use invariant_core::{DataType, Tensor, TensorData};
use invariant_registry::files::{open_regular, read_bounded, FileRefusal};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::path::{Path, PathBuf};

/// The format tag in every header.
pub const FORMAT: &str = "invariant-golden/1";

/// Bounds on reading a golden file: it is data from the repository, read at every start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoldenLimits {
    /// Largest file, in bytes.
    pub max_file_bytes: u64,
    /// Longest line (one vector), in bytes.
    pub max_line_bytes: usize,
    /// Most vectors in one file.
    pub max_vectors: usize,
}

impl Default for GoldenLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 256 << 20,
            max_line_bytes: 64 << 20,
            max_vectors: 10_000,
        }
    }
}

/// How a golden file was produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoldenHeader {
    /// Always [`FORMAT`].
    pub format: String,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Content hash of the artifacts the vectors were recorded with.
    pub content_hash: String,
    /// Runtime (`onnxruntime`, `candle`).
    pub engine: String,
    /// Runtime version.
    pub runtime_version: String,
    /// CPU features of the recording machine.
    pub cpu_features: Vec<String>,
    /// CPU class of the recording machine (see [`crate::cpu_class`]); files recorded before
    /// it was written imply it from `cpu_features`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_class: Option<String>,
    /// Whether the engine's bits are the same on every CPU (then the file holds on every class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portable: Option<bool>,
    /// RFC 3339 time of recording.
    pub recorded_at: String,
    /// Producer, e.g. `invariant 0.1.0`.
    pub recorded_by: String,
    /// Number of vectors that follow.
    pub vectors: usize,
}

impl GoldenHeader {
    /// The CPU class the vectors were recorded on.
    pub fn class(&self) -> String {
        self.cpu_class
            .clone()
            .unwrap_or_else(|| crate::class_of_features(&self.cpu_features))
    }
}

/// One expected output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenOutput {
    /// Output name.
    pub name: String,
    /// Datatype.
    pub datatype: DataType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Each element's bits (see [`TensorData::element_bits`]).
    pub bits: Vec<u64>,
}

impl GoldenOutput {
    /// Records a computed output.
    pub fn of(t: &Tensor) -> Self {
        Self {
            name: t.name.clone(),
            datatype: t.datatype(),
            shape: t.shape.clone(),
            bits: t.data.element_bits(),
        }
    }

    /// blake3 of the output's little-endian bytes.
    pub fn blake3(&self) -> String {
        let width = self.datatype.size_bytes();
        let mut bytes = Vec::with_capacity(self.bits.len() * width);
        for b in &self.bits {
            bytes.extend_from_slice(&b.to_le_bytes()[..width]);
        }
        blake3::hash(&bytes).to_hex().to_string()
    }
}

/// One vector: inputs and their expected outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenVector {
    /// Stable id, e.g. `003-max-account_age_days`.
    pub id: String,
    /// Input tensors.
    pub inputs: Vec<Tensor>,
    /// Expected outputs, in manifest order.
    pub outputs: Vec<GoldenOutput>,
    /// Expected outputs of the version's rule fallback for the same inputs (empty when the
    /// version declares none).
    pub fallback_outputs: Vec<GoldenOutput>,
}

/// A parsed golden file.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenFile {
    /// Header.
    pub header: GoldenHeader,
    /// Vectors in file order.
    pub vectors: Vec<GoldenVector>,
}

#[derive(Serialize, Deserialize)]
struct InputLine<'a> {
    name: String,
    datatype: DataType,
    shape: Vec<i64>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Serialize, Deserialize)]
struct OutputLine {
    name: String,
    datatype: DataType,
    shape: Vec<usize>,
    bits: Vec<String>,
    blake3: String,
}

#[derive(Serialize, Deserialize)]
struct VectorLine<'a> {
    id: String,
    #[serde(borrow)]
    inputs: Vec<InputLine<'a>>,
    outputs: Vec<OutputLine>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    fallback_outputs: Vec<OutputLine>,
}

/// Hex digits of one element of a datatype.
pub fn hex_width(d: DataType) -> usize {
    d.size_bytes() * 2
}

/// An element's bits as fixed-width hex.
pub fn to_hex(bits: u64, d: DataType) -> String {
    format!("{bits:0width$x}", width = hex_width(d))
}

impl GoldenFile {
    /// Where the vectors of `model` `version` live under `dir`.
    pub fn path(dir: &Path, model: &str, version: &str) -> PathBuf {
        dir.join(model).join(format!("{version}.jsonl"))
    }

    /// The golden vectors of `model` `version` recorded on CPU class `class`, beside the
    /// version's first file: `<dir>/<model>/<version>@<class>.jsonl`.
    pub fn class_path(dir: &Path, model: &str, version: &str, class: &str) -> PathBuf {
        dir.join(model).join(format!("{version}@{class}.jsonl"))
    }

    /// The CPU classes `model` `version` has golden vectors for, sorted: the first file's
    /// class and every per-class file's.
    pub fn recorded_classes(dir: &Path, model: &str, version: &str) -> Vec<String> {
        let mut classes = std::collections::BTreeSet::new();
        if let Some(h) = read_header(&Self::path(dir, model, version)) {
            classes.insert(h.class());
        }
        let prefix = format!("{version}@");
        if let Ok(entries) = std::fs::read_dir(dir.join(model)) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(class) = name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".jsonl")) {
                    classes.insert(class.to_string());
                }
            }
        }
        classes.into_iter().collect()
    }

    /// [`GoldenFile::read_with_limits`] within the default [`GoldenLimits`].
    pub fn read(path: &Path) -> Result<(Self, String), VerifyError> {
        Self::read_with_limits(path, &GoldenLimits::default())
    }

    /// Reads and checks a golden file: a regular file (symbolic links followed) within
    /// `limits`, header format, vector count, each input's data against its shape, each
    /// output's bit count against its shape, hex widths and the recorded blake3. Returns the
    /// file and the blake3 of its bytes.
    pub fn read_with_limits(path: &Path, limits: &GoldenLimits) -> Result<(Self, String), VerifyError> {
        let bytes = read_bounded(path, limits.max_file_bytes, None).map_err(|reason| refused(path, reason))?;
        Self::parse(bytes, path, limits)
    }

    /// Checks a golden file's `bytes` as [`GoldenFile::read_with_limits`] does (`path` names
    /// it in errors). Returns the file and the blake3 of the bytes.
    pub fn parse(bytes: Vec<u8>, path: &Path, limits: &GoldenLimits) -> Result<(Self, String), VerifyError> {
        if bytes.len() as u64 > limits.max_file_bytes {
            return Err(bad(
                path,
                1,
                format!(
                    "{} bytes exceed the file limit of {}",
                    bytes.len(),
                    limits.max_file_bytes
                ),
            ));
        }
        let file_hash = blake3::hash(&bytes).to_hex().to_string();
        let text = String::from_utf8(bytes).map_err(|_| bad(path, 1, "not UTF-8".into()))?;
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let (_, first) = lines.next().ok_or_else(|| bad(path, 1, "empty file".into()))?;
        if first.len() > limits.max_line_bytes {
            return Err(bad(
                path,
                1,
                format!(
                    "{} bytes exceed the line limit of {}",
                    first.len(),
                    limits.max_line_bytes
                ),
            ));
        }
        let header: GoldenHeader = serde_json::from_str(first).map_err(|e| bad(path, 1, format!("header: {e}")))?;
        if header.format != FORMAT {
            return Err(bad(path, 1, format!("format '{}' is not {FORMAT}", header.format)));
        }
        if header.vectors > limits.max_vectors {
            return Err(bad(
                path,
                1,
                format!(
                    "header announces {} vectors, exceeding the limit of {}",
                    header.vectors, limits.max_vectors
                ),
            ));
        }
        let mut vectors = Vec::with_capacity(header.vectors);
        for (i, line) in lines {
            let n = i + 1;
            if line.len() > limits.max_line_bytes {
                return Err(bad(
                    path,
                    n,
                    format!(
                        "{} bytes exceed the line limit of {}",
                        line.len(),
                        limits.max_line_bytes
                    ),
                ));
            }
            if vectors.len() >= header.vectors {
                return Err(bad(
                    path,
                    n,
                    format!("header announces {} vectors, file holds more", header.vectors),
                ));
            }
            let raw: VectorLine<'_> = serde_json::from_str(line).map_err(|e| bad(path, n, e.to_string()))?;
            let mut inputs = Vec::new();
            for (k, input) in raw.inputs.iter().enumerate() {
                let field = format!("inputs[{k}]");
                let tensor = concrete_shape(&input.shape, &field)
                    .and_then(|shape| {
                        let data =
                            parse_data_with_shape(input.data.get(), input.datatype, &shape, &format!("{field}.data"))?;
                        Tensor::new(input.name.clone(), shape, data, &field)
                    })
                    .map_err(|e| bad(path, n, e.to_string()))?;
                inputs.push(tensor);
            }
            let outputs = parse_outputs(raw.outputs, "outputs", path, n)?;
            let fallback_outputs = parse_outputs(raw.fallback_outputs, "fallback_outputs", path, n)?;
            vectors.push(GoldenVector {
                id: raw.id,
                inputs,
                outputs,
                fallback_outputs,
            });
        }
        if vectors.len() != header.vectors {
            return Err(bad(
                path,
                1,
                format!(
                    "header announces {} vectors, file holds {}",
                    header.vectors,
                    vectors.len()
                ),
            ));
        }
        Ok((Self { header, vectors }, file_hash))
    }

    /// The file's text: header line, then one line per vector.
    pub fn to_jsonl(&self) -> Result<String, VerifyError> {
        let json = |e: serde_json::Error| VerifyError::Encode(e.to_string());
        let mut out = serde_json::to_string(&self.header).map_err(json)?;
        out.push('\n');
        for v in &self.vectors {
            let datas: Vec<Box<RawValue>> = v
                .inputs
                .iter()
                .map(|t| serde_json::to_string(&t.data).and_then(RawValue::from_string))
                .collect::<Result<_, _>>()
                .map_err(json)?;
            let line = VectorLine {
                id: v.id.clone(),
                inputs: v
                    .inputs
                    .iter()
                    .zip(&datas)
                    .map(|(t, data)| InputLine {
                        name: t.name.clone(),
                        datatype: t.datatype(),
                        shape: t.shape.iter().map(|&d| d as i64).collect(),
                        data,
                    })
                    .collect(),
                outputs: v.outputs.iter().map(output_line).collect(),
                fallback_outputs: v.fallback_outputs.iter().map(output_line).collect(),
            };
            out.push_str(&serde_json::to_string(&line).map_err(json)?);
            out.push('\n');
        }
        Ok(out)
    }

    /// Writes the file, creating directories; refuses to replace an existing file unless
    /// `force`. The write goes to a temporary file that is renamed into place.
    pub fn write(&self, path: &Path, force: bool) -> Result<(), VerifyError> {
        if path.exists() && !force {
            return Err(VerifyError::Exists(path.to_path_buf()));
        }
        let io = |source| VerifyError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, self.to_jsonl()?).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// The header line of a golden file, if it reads: only from a regular file, and never more
/// than the default line limit.
fn read_header(path: &Path) -> Option<GoldenHeader> {
    use std::io::{BufRead, Read};
    let limits = GoldenLimits::default();
    let (file, _) = open_regular(path, limits.max_file_bytes, None).ok()?;
    let mut first = String::new();
    std::io::BufReader::new(file.take(limits.max_line_bytes as u64))
        .read_line(&mut first)
        .ok()?;
    serde_json::from_str(&first).ok()
}

/// A golden file that is refused before it is read, or cannot be read.
fn refused(path: &Path, reason: FileRefusal) -> VerifyError {
    match reason {
        FileRefusal::Io(source) => VerifyError::Io {
            path: path.to_path_buf(),
            source,
        },
        reason => VerifyError::UnsafeFile {
            path: path.to_path_buf(),
            reason,
        },
    }
}

/// The golden file a version is verified against on this host. A portable version (its
/// engine's bits do not depend on the CPU) uses its one file, `<version>.jsonl`, wherever it
/// was recorded. Any other version uses the file recorded on this host's CPU class
/// (`<version>.jsonl` when that one was recorded on this class, else
/// `<version>@<class>.jsonl`) and is refused with [`VerifyError::UnrecordedClass`] when there is none.
pub fn locate(
    dir: &Path,
    model: &str,
    version: &str,
    portability: &invariant_engine::Portability,
) -> Result<PathBuf, VerifyError> {
    locate_on(dir, model, version, portability, crate::cpu_class())
}

/// [`locate`] for a host of CPU class `host`.
fn locate_on(
    dir: &Path,
    model: &str,
    version: &str,
    portability: &invariant_engine::Portability,
    host: String,
) -> Result<PathBuf, VerifyError> {
    let first = GoldenFile::path(dir, model, version);
    if portability.portable {
        return Ok(first);
    }
    let header = read_header(&first);
    if header.as_ref().is_some_and(|h| h.class() == host) {
        return Ok(first);
    }
    let per_class = GoldenFile::class_path(dir, model, version, &host);
    if per_class.exists() {
        return Ok(per_class);
    }
    let recorded = GoldenFile::recorded_classes(dir, model, version);
    match header {
        // No readable first file and no other class: reading it reports why.
        None if recorded.is_empty() || first.exists() => Ok(first),
        _ => Err(VerifyError::UnrecordedClass {
            model: model.into(),
            version: version.into(),
            reason: portability.reason.clone(),
            recorded: recorded.join(", "),
            host,
        }),
    }
}

fn output_line(o: &GoldenOutput) -> OutputLine {
    OutputLine {
        name: o.name.clone(),
        datatype: o.datatype,
        shape: o.shape.clone(),
        bits: o.bits.iter().map(|&b| to_hex(b, o.datatype)).collect(),
        blake3: o.blake3(),
    }
}

/// Parses a vector's output lines (`field`: `outputs` or `fallback_outputs`), checking each
/// one's hex widths, bit count against its shape, and recorded blake3.
fn parse_outputs(lines: Vec<OutputLine>, field: &str, path: &Path, n: usize) -> Result<Vec<GoldenOutput>, VerifyError> {
    let mut outputs = Vec::new();
    for (k, o) in lines.into_iter().enumerate() {
        let width = hex_width(o.datatype);
        let bits = o
            .bits
            .iter()
            .map(|h| {
                if h.len() != width {
                    return Err(bad(
                        path,
                        n,
                        format!("{field}[{k}]: bits '{h}' must have {width} hex digits"),
                    ));
                }
                u64::from_str_radix(h, 16).map_err(|_| bad(path, n, format!("{field}[{k}]: bits '{h}' is not hex")))
            })
            .collect::<Result<Vec<u64>, _>>()?;
        let elements = o.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if elements != Some(bits.len()) {
            return Err(bad(
                path,
                n,
                format!("{field}[{k}]: {} bits for shape {:?}", bits.len(), o.shape),
            ));
        }
        let out = GoldenOutput {
            name: o.name,
            datatype: o.datatype,
            shape: o.shape,
            bits,
        };
        if out.blake3() != o.blake3 {
            return Err(bad(
                path,
                n,
                format!("{field}[{k}]: blake3 does not match its bits (edited by hand?)"),
            ));
        }
        outputs.push(out);
    }
    Ok(outputs)
}

fn bad(path: &Path, line: usize, message: String) -> VerifyError {
    VerifyError::Golden {
        path: path.to_path_buf(),
        line,
        message,
    }
}

/// Rebuilds a tensor from golden bits (to compare or to show values).
pub fn tensor_from_bits(o: &GoldenOutput) -> Tensor {
    let data = match o.datatype {
        DataType::Bool => TensorData::Bool(o.bits.iter().map(|&b| b != 0).collect()),
        DataType::Uint8 => TensorData::Uint8(o.bits.iter().map(|&b| b as u8).collect()),
        DataType::Int8 => TensorData::Int8(o.bits.iter().map(|&b| b as u8 as i8).collect()),
        DataType::Int16 => TensorData::Int16(o.bits.iter().map(|&b| b as u16 as i16).collect()),
        DataType::Int32 => TensorData::Int32(o.bits.iter().map(|&b| b as u32 as i32).collect()),
        DataType::Int64 => TensorData::Int64(o.bits.iter().map(|&b| b as i64).collect()),
        DataType::Fp32 => TensorData::Fp32(o.bits.iter().map(|&b| f32::from_bits(b as u32)).collect()),
        DataType::Fp64 => TensorData::Fp64(o.bits.iter().map(|&b| f64::from_bits(b)).collect()),
        // BYTES goldens keep a hash per element, not the bytes: shown as that hash in hex.
        DataType::Bytes => TensorData::Bytes(o.bits.iter().map(|&b| format!("{b:016x}").into_bytes()).collect()),
    };
    Tensor {
        name: o.name.clone(),
        shape: o.shape.clone(),
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GoldenFile {
        let input = Tensor::new("x", vec![1, 3], TensorData::Fp32(vec![0.1, -2.0, 1e-30]), "x").unwrap();
        let output = Tensor::new("y", vec![1, 1], TensorData::Fp32(vec![0.3]), "y").unwrap();
        GoldenFile {
            header: GoldenHeader {
                format: FORMAT.into(),
                model: "m".into(),
                version: "1.0.0".into(),
                content_hash: "h".into(),
                engine: "candle".into(),
                runtime_version: "0.11".into(),
                cpu_features: vec!["avx2".into()],
                cpu_class: Some("x86-64-v3".into()),
                portable: Some(false),
                recorded_at: "2026-11-23T00:00:00Z".into(),
                recorded_by: "test".into(),
                vectors: 1,
            },
            vectors: vec![GoldenVector {
                id: "000".into(),
                inputs: vec![input],
                outputs: vec![GoldenOutput::of(&output)],
                fallback_outputs: Vec::new(),
            }],
        }
    }

    #[test]
    fn round_trips_exactly_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = GoldenFile::path(dir.path(), "m", "1.0.0");
        let g = sample();
        g.write(&path, false).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""bits":["3e99999a"]"#), "{text}");
        let (back, hash) = GoldenFile::read(&path).unwrap();
        assert_eq!(back, g);
        assert_eq!(hash, blake3::hash(text.as_bytes()).to_hex().to_string());
        assert!(matches!(g.write(&path, false), Err(VerifyError::Exists(_))));
        g.write(&path, true).unwrap();
    }

    #[test]
    fn the_golden_file_follows_the_cpu_class_unless_portable() {
        use invariant_engine::Portability;
        let dir = tempfile::tempdir().unwrap();
        let mut g = sample();
        g.write(&GoldenFile::path(dir.path(), "m", "1.0.0"), false).unwrap();
        g.header.cpu_class = Some("x86-64-v2".into());
        g.write(&GoldenFile::class_path(dir.path(), "m", "1.0.0", "x86-64-v2"), false)
            .unwrap();
        let fixed = Portability::host_dependent("kernels by CPU");
        let at = |p: &Portability, host: &str| locate_on(dir.path(), "m", "1.0.0", p, host.into());
        let name = |r: Result<PathBuf, VerifyError>| r.unwrap().file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name(at(&fixed, "x86-64-v3")), "1.0.0.jsonl");
        assert_eq!(name(at(&fixed, "x86-64-v2")), "1.0.0@x86-64-v2.jsonl");
        assert_eq!(name(at(&Portability::portable(), "x86-64-v4")), "1.0.0.jsonl");
        let err = at(&fixed, "x86-64-v4").unwrap_err().to_string();
        assert!(
            err.contains("not portable (kernels by CPU)")
                && err.contains("recorded on x86-64-v2, x86-64-v3 only")
                && err.contains("this host is x86-64-v4")
                && err.contains("--cpu-class x86-64-v4"),
            "{err}"
        );
        assert_eq!(
            GoldenFile::recorded_classes(dir.path(), "m", "1.0.0"),
            vec!["x86-64-v2".to_string(), "x86-64-v3".to_string()]
        );
    }

    #[test]
    fn a_header_without_a_class_implies_it_from_its_features() {
        let mut h = sample().header;
        h.cpu_class = None;
        h.cpu_features = ["x86_64", "sse4.2", "avx", "avx2", "fma", "f16c"]
            .map(String::from)
            .to_vec();
        assert_eq!(h.class(), "x86-64-v3");
        h.cpu_features.push("avx512f".into());
        assert_eq!(h.class(), "x86-64-v4");
        h.cpu_features = vec!["x86_64".into(), "sse4.2".into()];
        assert_eq!(h.class(), "x86-64-v2");
    }

    #[test]
    fn hand_edited_bits_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.jsonl");
        sample().write(&path, false).unwrap();
        let text = std::fs::read_to_string(&path).unwrap().replace("3e99999a", "3e99999b");
        std::fs::write(&path, text).unwrap();
        let err = GoldenFile::read(&path).unwrap_err().to_string();
        assert!(err.contains("blake3") && err.contains("line 2"), "{err}");
    }

    /// Runs `f` on another thread; fails if it takes longer than 20 s (blocked on a FIFO).
    fn within_time<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("reading hung (blocked on a FIFO or read an endless file)")
    }

    fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn only_regular_files_within_the_limits_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = GoldenFile::path(dir.path(), "m", "1.0.0");
        std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        mkfifo(&fifo);
        let zero = GoldenFile::path(dir.path(), "m", "2.0.0");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let (root, f, z) = (dir.path().to_path_buf(), fifo.clone(), zero.clone());
        let (fifo_err, zero_err, classes) = within_time(move || {
            (
                GoldenFile::read(&f).unwrap_err().to_string(),
                GoldenFile::read(&z).unwrap_err().to_string(),
                (
                    GoldenFile::recorded_classes(&root, "m", "1.0.0"),
                    GoldenFile::recorded_classes(&root, "m", "2.0.0"),
                ),
            )
        });
        assert!(
            fifo_err.contains("golden vectors") && fifo_err.contains("are refused: not a regular file (it is a FIFO)"),
            "{fifo_err}"
        );
        assert!(zero_err.contains("(it is a character device)"), "{zero_err}");
        assert_eq!(classes, (Vec::<String>::new(), Vec::<String>::new()));

        let path = dir.path().join("g.jsonl");
        sample().write(&path, false).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        let small = GoldenLimits {
            max_file_bytes: size - 1,
            ..GoldenLimits::default()
        };
        let e = GoldenFile::read_with_limits(&path, &small).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{size} bytes exceed the limit of {} bytes", size - 1)),
            "{e}"
        );
        let short_lines = GoldenLimits {
            max_line_bytes: 100,
            ..GoldenLimits::default()
        };
        let e = GoldenFile::read_with_limits(&path, &short_lines)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceed the line limit of 100"), "{e}");
        let few = GoldenLimits {
            max_vectors: 0,
            ..GoldenLimits::default()
        };
        let e = GoldenFile::read_with_limits(&path, &few).unwrap_err().to_string();
        assert!(
            e.contains("header announces 1 vectors, exceeding the limit of 0"),
            "{e}"
        );
        assert!(GoldenFile::read(&path).is_ok());
    }

    #[test]
    fn malformed_vectors_are_errors_not_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.jsonl");
        let good = sample().to_jsonl().unwrap();
        let edit = |from: &str, to: &str| {
            assert!(good.contains(from), "{from}");
            std::fs::write(&path, good.replace(from, to)).unwrap();
            GoldenFile::read(&path).unwrap_err().to_string()
        };
        // Ragged nested input data.
        let e = edit(
            r#""shape":[1,3],"data":[0.1,-2.0,1e-30]"#,
            r#""shape":[1,3],"data":[[0.1],[-2.0,1e-30]]"#,
        );
        assert!(
            e.contains("line 2") && e.contains("inputs[0].data: row 0 has 1 elements where shape [1,3] needs 3"),
            "{e}"
        );
        // An output shape whose element count overflows.
        let e = edit(
            r#""shape":[1,1],"bits""#,
            r#""shape":[4294967296,4294967296,4294967296],"bits""#,
        );
        assert!(e.contains("outputs[0]: 1 bits for shape"), "{e}");
        // More vectors than the header announces.
        let line = good.lines().nth(1).unwrap();
        std::fs::write(&path, format!("{good}{line}\n")).unwrap();
        let e = GoldenFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("file holds more"), "{e}");
    }
}
