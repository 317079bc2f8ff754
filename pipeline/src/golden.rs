//! Golden vectors of a pipeline version: `<golden_vectors>/pipelines/<name>/<version>.jsonl`.
//! The first line is a header (`format`, `pipeline`, `version`, `content_hash` of the
//! pipeline file, `vectors`); each further line is one case: its facts, every step's score
//! (the model output, exactly: f32 bits widened to f64) and the advisory recorded for it. A
//! version verifies when its file's content hash is the header's and every case gives the same
//! scores, bit for bit, and the same advisory, hash included.

use crate::{Advisory, Pipeline, PipelineError, Step};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Format tag of the header.
pub const FORMAT: &str = "invariant-pipeline-golden/1";
/// Largest golden file read.
const MAX_BYTES: u64 = 64 << 20;

/// The header line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// The pipeline.
    pub pipeline: String,
    /// Its version.
    pub version: String,
    /// blake3 of its file when recorded.
    pub content_hash: String,
    /// How many cases follow.
    pub vectors: usize,
}

/// One recorded case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Its id.
    pub id: String,
    /// The request's facts.
    pub facts: serde_json::Map<String, serde_json::Value>,
    /// Each score's exact bits (f64, hex): JSON numbers are for reading, these are compared.
    pub score_bits: BTreeMap<String, String>,
    /// The advisory recorded (its scores are the models' outputs).
    pub advisory: Advisory,
}

fn bits_of(scores: &BTreeMap<String, f64>) -> BTreeMap<String, String> {
    scores
        .iter()
        .map(|(k, v)| (k.clone(), format!("{:016x}", v.to_bits())))
        .collect()
}

/// A golden file.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenSet {
    /// Its header.
    pub header: Header,
    /// Its cases.
    pub cases: Vec<Case>,
}

/// Where the golden vectors of `name` `version` are.
pub fn path(golden_dir: &Path, name: &str, version: &str) -> PathBuf {
    golden_dir
        .join(crate::PIPELINES_DIR)
        .join(name)
        .join(format!("{version}.jsonl"))
}

fn err(m: String) -> PipelineError {
    PipelineError::Golden(m)
}

/// Scores one step: `(step, its input row) -> its score`.
pub type Score<'a> = dyn FnMut(&Step, &[f32]) -> Result<f64, String> + 'a;

/// The advisory of `facts` with every step scored by `score`.
pub fn advise(
    pipeline: &Pipeline,
    facts: &serde_json::Map<String, serde_json::Value>,
    score: &mut Score<'_>,
) -> Result<Advisory, PipelineError> {
    let checked = pipeline.facts(facts)?;
    let mut scores = BTreeMap::new();
    for (step, row) in pipeline.steps.iter().zip(pipeline.rows(&checked)) {
        let s =
            score(step, &row).map_err(|e| err(format!("{} {} (step {}): {e}", step.model, step.version, step.name)))?;
        scores.insert(step.name.clone(), s);
    }
    Ok(pipeline.decide(&checked, &scores))
}

impl GoldenSet {
    /// Reads a golden file (a regular file of at most 64 MiB).
    pub fn read(path: &Path) -> Result<Self, PipelineError> {
        let meta = std::fs::metadata(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        if !meta.is_file() || meta.len() > MAX_BYTES {
            return Err(err(format!("{}: not a regular file of at most 64 MiB", path.display())));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Header = serde_json::from_str(lines.next().unwrap_or_default())
            .map_err(|e| err(format!("{}: header: {e}", path.display())))?;
        if header.format != FORMAT {
            return Err(err(format!(
                "{}: format '{}' is not {FORMAT}",
                path.display(),
                header.format
            )));
        }
        let cases = lines
            .enumerate()
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| err(format!("{}: line {}: {e}", path.display(), i + 2))))
            .collect::<Result<Vec<Case>, _>>()?;
        if cases.len() != header.vectors {
            return Err(err(format!(
                "{}: the header promises {} cases, the file holds {}",
                path.display(),
                header.vectors,
                cases.len()
            )));
        }
        Ok(Self { header, cases })
    }

    /// Records the advisories of `cases` (id, facts) with every step scored by `score`.
    pub fn record(
        pipeline: &Pipeline,
        cases: Vec<(String, serde_json::Map<String, serde_json::Value>)>,
        score: &mut Score<'_>,
    ) -> Result<Self, PipelineError> {
        let mut out = Vec::new();
        for (id, facts) in cases {
            let advisory = advise(pipeline, &facts, score).map_err(|e| err(format!("case {id}: {e}")))?;
            out.push(Case {
                id,
                facts,
                score_bits: bits_of(&advisory.scores),
                advisory,
            });
        }
        Ok(Self {
            header: Header {
                format: FORMAT.into(),
                pipeline: pipeline.name.clone(),
                version: pipeline.version.to_string(),
                content_hash: pipeline.content_hash.clone(),
                vectors: out.len(),
            },
            cases: out,
        })
    }

    /// The file's text.
    pub fn to_text(&self) -> Result<String, PipelineError> {
        let mut text = serde_json::to_string(&self.header).map_err(|e| err(e.to_string()))?;
        text.push('\n');
        for c in &self.cases {
            text.push_str(&serde_json::to_string(c).map_err(|e| err(e.to_string()))?);
            text.push('\n');
        }
        Ok(text)
    }

    /// Every way `pipeline` (scored by `score`) departs from the recorded cases; empty when it
    /// verifies.
    pub fn verify(&self, pipeline: &Pipeline, score: &mut Score<'_>) -> Vec<String> {
        let mut violations = Vec::new();
        let h = &self.header;
        if h.pipeline != pipeline.name || h.version != pipeline.version.to_string() {
            violations.push(format!(
                "the golden file is of {} {}, not {} {}",
                h.pipeline, h.version, pipeline.name, pipeline.version
            ));
        }
        if h.content_hash != pipeline.content_hash {
            violations.push(format!(
                "{} changed since its golden vectors were recorded (blake3 {} != {}): a change is a new version",
                crate::PIPELINE_FILE,
                pipeline.content_hash,
                h.content_hash
            ));
            return violations;
        }
        if self.cases.is_empty() {
            violations.push("the golden file holds no cases".into());
        }
        for case in &self.cases {
            match advise(pipeline, &case.facts, score) {
                Err(e) => violations.push(format!("case {}: {e}", case.id)),
                Ok(a) => {
                    let got = bits_of(&a.scores);
                    for (name, want) in &case.score_bits {
                        if got.get(name) != Some(want) {
                            violations.push(format!(
                                "case {}: score {name} is {:?} (bits {}), recorded bits {want}",
                                case.id,
                                a.scores.get(name),
                                got.get(name).map_or("none", String::as_str)
                            ));
                        }
                    }
                    let r = &case.advisory;
                    let same = a.recommendation == r.recommendation
                        && a.priority == r.priority
                        && a.reason_codes == r.reason_codes
                        && a.source == r.source
                        && a.advisory_hash == r.advisory_hash
                        && got.len() == case.score_bits.len();
                    if !same {
                        violations.push(format!(
                            "case {}: advisory {} {:?} {:?} ({}) differs from the recorded {} {:?} {:?} ({})",
                            case.id,
                            a.recommendation.name(),
                            a.priority,
                            a.reason_codes,
                            a.advisory_hash,
                            case.advisory.recommendation.name(),
                            case.advisory.priority,
                            case.advisory.reason_codes,
                            case.advisory.advisory_hash
                        ));
                    }
                }
            }
        }
        violations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::SAMPLE;
    use serde_json::json;

    fn cases() -> Vec<(String, serde_json::Map<String, serde_json::Value>)> {
        [
            json!({"amount_usd": 10, "age_days": 500}),
            json!({"amount_usd": 1500, "age_days": 5, "currency": "EUR"}),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, v)| (format!("c{i}"), v.as_object().unwrap().clone()))
        .collect()
    }

    #[test]
    fn recorded_vectors_verify_and_any_drift_is_named() {
        let p = Pipeline::parse(SAMPLE.as_bytes()).unwrap();
        let mut model = |_: &Step, row: &[f32]| Ok(f64::from(row[0] / 2000.0));
        let golden = GoldenSet::record(&p, cases(), &mut model).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), &p.name, "1.0.0");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, golden.to_text().unwrap()).unwrap();
        let back = GoldenSet::read(&file).unwrap();
        assert_eq!(back, golden);
        assert!(back.verify(&p, &mut model).is_empty());
        // One ULP of one model output is caught, and named.
        let mut drifted = |_: &Step, row: &[f32]| Ok(f64::from(f32::from_bits((row[0] / 2000.0).to_bits() + 1)));
        let v = back.verify(&p, &mut drifted);
        assert!(v.iter().any(|m| m.contains("score risk")), "{v:?}");
        // A changed threshold is a new version.
        let changed = Pipeline::parse(SAMPLE.replace("value = 1000.0", "value = 900.0").as_bytes()).unwrap();
        let v = back.verify(&changed, &mut model);
        assert!(v[0].contains("changed since its golden vectors were recorded"), "{v:?}");
    }
}
