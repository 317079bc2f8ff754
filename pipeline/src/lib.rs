//! Advisory pipelines: the design's decision recommender. A pipeline version is one TOML file,
//! `pipelines/<name>/<version>/pipeline.toml` in the model repository, that declares
//!
//! - the **facts** a request brings (`amount_usd`, `currency`, `escrow_dispute`, …), typed and
//!   bounded;
//! - the **model steps**: which model version (pinned: a new model version is a new pipeline
//!   version) scores which row of facts, and which output element it contributes, under a name;
//! - a **rule table**: each rule names a reason code (`RISK_ABOVE_0_8`), a recommendation
//!   (`auto_clear`, `manual_review`, `hold`), an optional review priority (P0–P5) and the
//!   conditions (all must hold) on facts and scores that make it fire.
//!
//! [`Pipeline::decide`] is a pure function of the facts and the scores: every rule that fires
//! contributes its reason code; the recommendation is the most cautious among them
//! (`auto_clear` when none fires); the priority is the most urgent among them (the pipeline's
//! default when none names one and a person must look). The [`Advisory`] carries an
//! **advisory hash** over the pipeline version, its content hash, the facts, the score bits and
//! the decision, so the same request always gives the same hash whatever transport, cache or
//! batch produced it. When the models cannot be asked (killed, breaker open, corridor
//! degraded), [`Pipeline::degraded`] follows the declared policy: rules on facts alone
//! (`source: rules`), or `manual_review` with reason `AI_DEGRADED`; never a silent guess.
//!
//! [`golden`] holds the golden vectors of a pipeline version: recorded decisions, checked bit
//! for bit before a version may serve and by the CI gate.

pub mod golden;

use invariant_review::Priority;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// The file of a pipeline version.
pub const PIPELINE_FILE: &str = "pipeline.toml";
/// The directory of pipelines inside the model repository.
pub const PIPELINES_DIR: &str = "pipelines";
/// The reason code of a decision made without the models.
pub const AI_DEGRADED: &str = "AI_DEGRADED";

const MAX_FACTS: usize = 64;
const MAX_STEPS: usize = 16;
const MAX_RULES: usize = 256;
const MAX_CONDITIONS: usize = 16;
const MAX_TEXT: usize = 256;

/// Every pipeline version directory of a model repository that holds a pipeline file:
/// (name, version directory, the file), sorted.
pub fn versions(repository: &std::path::Path) -> Vec<(String, String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let names = std::fs::read_dir(repository.join(PIPELINES_DIR))
        .into_iter()
        .flatten()
        .flatten();
    for name in names.filter(|e| e.path().is_dir()) {
        for version in std::fs::read_dir(name.path()).into_iter().flatten().flatten() {
            let file = version.path().join(PIPELINE_FILE);
            if file.is_file() {
                out.push((
                    name.file_name().to_string_lossy().into_owned(),
                    version.file_name().to_string_lossy().into_owned(),
                    file,
                ));
            }
        }
    }
    out.sort();
    out
}

/// Pipeline failures, each naming the field at fault.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// The declaration is not valid.
    #[error("{0}")]
    Definition(String),
    /// A request's facts do not fit the declaration.
    #[error("{0}")]
    Facts(String),
    /// A golden file cannot be used.
    #[error("{0}")]
    Golden(String),
}

/// A recommendation, least to most cautious.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recommendation {
    /// No person needs to look.
    AutoClear,
    /// A person decides (the item enters the review queue).
    ManualReview,
    /// Stop until a person decides.
    Hold,
}

impl Recommendation {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Recommendation::AutoClear => "auto_clear",
            Recommendation::ManualReview => "manual_review",
            Recommendation::Hold => "hold",
        }
    }
}

/// What to do when the models cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Degraded {
    /// Apply only the rules that need no score (`source: rules`), plus `AI_DEGRADED`.
    Rules,
    /// `manual_review` with reason `AI_DEGRADED`.
    ManualReview,
    /// The advisory last computed for the same facts in the corridor, when one is kept (up to
    /// `degraded_cache_seconds`; the server answers it, saying why), else as `ManualReview`.
    Cached,
}

/// The type of a fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactType {
    /// A finite number.
    Number,
    /// Text.
    String,
    /// `true` or `false` (1 or 0 in a model row).
    Bool,
}

/// One declared fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fact {
    /// Its name in requests and rules.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: FactType,
    /// Whether a request must send it (default true).
    #[serde(default = "yes")]
    pub required: bool,
    /// Smallest value (numbers).
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest value (numbers).
    #[serde(default)]
    pub max: Option<f64>,
    /// What it means.
    #[serde(default)]
    pub description: String,
}

fn yes() -> bool {
    true
}

/// One model step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The score's name in rules and advisories.
    pub name: String,
    /// The model.
    pub model: String,
    /// Its pinned version.
    pub version: String,
    /// Its input tensor.
    pub input: String,
    /// The facts of its input row, in order (numbers and bools).
    pub row: Vec<String>,
    /// Its output tensor.
    pub output: String,
    /// The element of the output's first row that is the score.
    #[serde(default)]
    pub index: usize,
}

/// A fact or score value in a condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(f64),
    /// Text.
    Text(String),
}

/// One condition: `var op value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// A fact or a step's name.
    pub var: String,
    /// `>`, `>=`, `<`, `<=`, `==`, `!=`.
    pub op: String,
    /// What it is compared with.
    pub value: Value,
}

/// One rule of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Its reason code (`A-Z`, `0-9`, `_`).
    pub reason: String,
    /// What it recommends when it fires.
    pub recommend: Recommendation,
    /// The review priority it asks for.
    #[serde(default)]
    pub priority: Option<String>,
    /// Its conditions, all of which must hold.
    pub all: Vec<Condition>,
}

/// Facts read from a feature service of the online feature store: the request names the
/// entity (`entities: {"<join key>": "<key>"}`), and each feature of the service fills the fact
/// of the same name that the request does not give.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureInput {
    /// The feature service (its features, in its order, name the facts they fill).
    pub service: String,
}

/// A pipeline file as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_ttl")]
    cache_ttl_seconds: f64,
    #[serde(default = "default_degraded")]
    on_degraded: Degraded,
    #[serde(default = "default_degraded_cache")]
    degraded_cache_seconds: f64,
    #[serde(default = "default_priority")]
    default_priority: String,
    facts: Vec<Fact>,
    #[serde(default)]
    features: Vec<FeatureInput>,
    #[serde(default)]
    models: Vec<Step>,
    rules: Vec<Rule>,
}

fn default_ttl() -> f64 {
    30.0
}

fn default_degraded_cache() -> f64 {
    3600.0
}

fn default_degraded() -> Degraded {
    Degraded::ManualReview
}

fn default_priority() -> String {
    "P4".into()
}

/// A checked pipeline version.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: semver::Version,
    /// What it decides.
    pub description: String,
    /// How long an advisory may be answered from the cache.
    pub cache_ttl_seconds: f64,
    /// What it does when the models cannot be asked.
    pub on_degraded: Degraded,
    /// How long a computed advisory may answer for its facts while the models cannot be
    /// asked (`on_degraded = "cached"`), in seconds.
    pub degraded_cache_seconds: f64,
    /// The priority of a decision that needs a person when no fired rule names one.
    pub default_priority: Priority,
    /// Its facts.
    pub facts: Vec<Fact>,
    /// The feature services that fill facts.
    pub features: Vec<FeatureInput>,
    /// Its model steps.
    pub steps: Vec<Step>,
    /// Its rules, with their priorities parsed.
    pub rules: Vec<(Rule, Option<Priority>)>,
    /// blake3 of the file, hex.
    pub content_hash: String,
    /// sha256 of the file, hex.
    pub sha256: String,
}

/// A request's facts, checked against the declaration.
pub type Facts = BTreeMap<String, Value>;

/// Where an advisory's decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The models and the rules.
    Models,
    /// The rules on facts alone (the models could not be asked).
    Rules,
    /// No decision: a person must look (the models could not be asked).
    Degraded,
}

/// One advisory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advisory {
    /// The pipeline.
    pub pipeline: String,
    /// Its version.
    pub version: String,
    /// What to do.
    pub recommendation: Recommendation,
    /// The review priority, when a person must look.
    pub priority: Option<Priority>,
    /// Why, sorted.
    pub reason_codes: Vec<String>,
    /// Each step's score.
    pub scores: BTreeMap<String, f64>,
    /// Where the decision came from.
    pub source: Source,
    /// blake3 over the pipeline version, its content hash, the facts, the score bits and the
    /// decision, hex.
    pub advisory_hash: String,
}

fn ident(field: &str, name: &str) -> Result<(), PipelineError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(PipelineError::Definition(format!(
            "{field}: '{name}' must be 1 to 64 of a-z, 0-9 and _, not starting with a digit"
        )))
    }
}

fn reason_code(field: &str, code: &str) -> Result<(), PipelineError> {
    let ok = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PipelineError::Definition(format!(
            "{field}: '{code}' must be 1 to 64 of A-Z, 0-9 and _"
        )))
    }
}

fn bad(message: String) -> PipelineError {
    PipelineError::Definition(message)
}

impl Pipeline {
    /// Parses and checks a pipeline file.
    pub fn parse(bytes: &[u8]) -> Result<Self, PipelineError> {
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("{PIPELINE_FILE} is not UTF-8: {e}")))?;
        let file: File = toml::from_str(text).map_err(|e| bad(format!("{PIPELINE_FILE}: {e}")))?;
        if file.name.is_empty()
            || file.name.len() > 64
            || !file
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(bad(format!(
                "name: '{}' must be 1 to 64 of a-z, 0-9, - and _",
                file.name
            )));
        }
        let version = semver::Version::parse(&file.version)
            .map_err(|e| bad(format!("version: '{}' is not a semantic version: {e}", file.version)))?;
        if !(file.cache_ttl_seconds.is_finite() && (0.0..=86_400.0).contains(&file.cache_ttl_seconds)) {
            return Err(bad(format!(
                "cache_ttl_seconds: {} must be 0 to 86400",
                file.cache_ttl_seconds
            )));
        }
        if !(file.degraded_cache_seconds.is_finite() && (0.0..=7.0 * 86_400.0).contains(&file.degraded_cache_seconds)) {
            return Err(bad(format!(
                "degraded_cache_seconds: {} must be 0 to 604800",
                file.degraded_cache_seconds
            )));
        }
        let default_priority =
            Priority::parse(&file.default_priority).map_err(|e| bad(format!("default_priority: {e}")))?;
        if file.description.len() > 16 * 1024 {
            return Err(bad("description: over 16 KiB".into()));
        }
        for (what, n, max) in [
            ("facts", file.facts.len(), MAX_FACTS),
            ("models", file.models.len(), MAX_STEPS),
            ("features", file.features.len(), MAX_STEPS),
            ("rules", file.rules.len(), MAX_RULES),
        ] {
            if n > max {
                return Err(bad(format!("{what}: {n} entries, over the limit of {max}")));
            }
        }
        let mut names = BTreeSet::new();
        let mut facts = BTreeMap::new();
        for (i, f) in file.facts.iter().enumerate() {
            ident(&format!("facts[{i}].name"), &f.name)?;
            if !names.insert(f.name.clone()) {
                return Err(bad(format!("facts[{i}].name: '{}' is declared twice", f.name)));
            }
            for (bound, v) in [("min", f.min), ("max", f.max)] {
                if let Some(v) = v {
                    if f.kind != FactType::Number || !v.is_finite() {
                        return Err(bad(format!("facts[{i}].{bound}: only a finite bound of a number fact")));
                    }
                }
            }
            if let (Some(lo), Some(hi)) = (f.min, f.max) {
                if lo > hi {
                    return Err(bad(format!("facts[{i}]: min {lo} is above max {hi}")));
                }
            }
            facts.insert(f.name.clone(), f.clone());
        }
        let mut services = BTreeSet::new();
        for (i, f) in file.features.iter().enumerate() {
            if f.service.is_empty() || f.service.len() > MAX_TEXT {
                return Err(bad(format!("features[{i}].service: must be 1 to {MAX_TEXT} bytes")));
            }
            if !services.insert(f.service.as_str()) {
                return Err(bad(format!("features[{i}].service: '{}' is named twice", f.service)));
            }
        }
        let mut scores = BTreeSet::new();
        for (i, s) in file.models.iter().enumerate() {
            let at = |field: &str| format!("models[{i}].{field}");
            ident(&at("name"), &s.name)?;
            if !names.insert(s.name.clone()) {
                return Err(bad(format!("{}: '{}' is already a fact or a step", at("name"), s.name)));
            }
            semver::Version::parse(&s.version).map_err(|e| {
                bad(format!(
                    "{}: '{}' is not a semantic version: {e}",
                    at("version"),
                    s.version
                ))
            })?;
            for (field, text) in [("model", &s.model), ("input", &s.input), ("output", &s.output)] {
                if text.is_empty() || text.len() > MAX_TEXT {
                    return Err(bad(format!("{}: must be 1 to {MAX_TEXT} bytes", at(field))));
                }
            }
            if s.row.is_empty() || s.row.len() > 1024 {
                return Err(bad(format!("{}: must name 1 to 1024 facts", at("row"))));
            }
            for (j, r) in s.row.iter().enumerate() {
                match facts.get(r) {
                    Some(f) if f.kind != FactType::String && f.required => {}
                    Some(_) => {
                        return Err(bad(format!(
                            "{}[{j}]: '{r}' must be a required number or bool fact",
                            at("row")
                        )))
                    }
                    None => return Err(bad(format!("{}[{j}]: '{r}' is not a declared fact", at("row")))),
                }
            }
            scores.insert(s.name.clone());
        }
        let mut rules = Vec::new();
        for (i, r) in file.rules.iter().enumerate() {
            let at = |field: &str| format!("rules[{i}].{field}");
            reason_code(&at("reason"), &r.reason)?;
            if r.reason == AI_DEGRADED {
                return Err(bad(format!("{}: {AI_DEGRADED} is reserved", at("reason"))));
            }
            let priority = r
                .priority
                .as_deref()
                .map(Priority::parse)
                .transpose()
                .map_err(|e| bad(format!("{}: {e}", at("priority"))))?;
            if r.all.is_empty() || r.all.len() > MAX_CONDITIONS {
                return Err(bad(format!(
                    "{}: must hold 1 to {MAX_CONDITIONS} conditions",
                    at("all")
                )));
            }
            for (j, c) in r.all.iter().enumerate() {
                let cat = |field: &str| format!("rules[{i}].all[{j}].{field}");
                let kind = match facts.get(&c.var) {
                    Some(f) => f.kind,
                    None if scores.contains(&c.var) => FactType::Number,
                    None => return Err(bad(format!("{}: '{}' is neither a fact nor a step", cat("var"), c.var))),
                };
                let ordered = matches!(c.op.as_str(), ">" | ">=" | "<" | "<=");
                if !(ordered || matches!(c.op.as_str(), "==" | "!=")) {
                    return Err(bad(format!("{}: '{}' is not one of > >= < <= == !=", cat("op"), c.op)));
                }
                let fits = match (&c.value, kind) {
                    (Value::Number(v), FactType::Number) => v.is_finite(),
                    (Value::Text(_), FactType::String) | (Value::Bool(_), FactType::Bool) => !ordered,
                    _ => false,
                };
                if !fits {
                    return Err(bad(format!(
                        "{}: does not fit '{}' ({kind:?}) with '{}'",
                        cat("value"),
                        c.var,
                        c.op
                    )));
                }
            }
            rules.push((r.clone(), priority));
        }
        Ok(Self {
            name: file.name,
            version,
            description: file.description,
            cache_ttl_seconds: file.cache_ttl_seconds,
            on_degraded: file.on_degraded,
            degraded_cache_seconds: file.degraded_cache_seconds,
            default_priority,
            facts: file.facts,
            features: file.features,
            steps: file.models,
            rules,
            content_hash: blake3::hash(bytes).to_hex().to_string(),
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
        })
    }

    /// Checks a request's facts (a JSON object): every key a declared fact of the right type
    /// and within its bounds, every required fact present. Errors name `facts.<name>`.
    pub fn facts(&self, given: &serde_json::Map<String, serde_json::Value>) -> Result<Facts, PipelineError> {
        let mut out = Facts::new();
        for key in given.keys() {
            if !self.facts.iter().any(|f| &f.name == key) {
                return Err(PipelineError::Facts(format!(
                    "facts.{key}: not a fact of pipeline {} {}",
                    self.name, self.version
                )));
            }
        }
        for f in &self.facts {
            let field = format!("facts.{}", f.name);
            let Some(v) = given.get(&f.name).filter(|v| !v.is_null()) else {
                if f.required {
                    return Err(PipelineError::Facts(format!("{field}: required")));
                }
                continue;
            };
            let value = match (f.kind, v) {
                (FactType::Number, serde_json::Value::Number(n)) => {
                    let x = n
                        .as_f64()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| PipelineError::Facts(format!("{field}: not a finite number")))?;
                    if f.min.is_some_and(|lo| x < lo) || f.max.is_some_and(|hi| x > hi) {
                        return Err(PipelineError::Facts(format!(
                            "{field}: {x} is outside [{}, {}]",
                            f.min.map_or("-inf".into(), |v| v.to_string()),
                            f.max.map_or("inf".into(), |v| v.to_string())
                        )));
                    }
                    Value::Number(x)
                }
                (FactType::String, serde_json::Value::String(s)) if s.len() <= MAX_TEXT => Value::Text(s.clone()),
                (FactType::String, serde_json::Value::String(_)) => {
                    return Err(PipelineError::Facts(format!("{field}: over {MAX_TEXT} bytes")))
                }
                (FactType::Bool, serde_json::Value::Bool(b)) => Value::Bool(*b),
                (kind, _) => {
                    return Err(PipelineError::Facts(format!(
                        "{field}: expected {}",
                        match kind {
                            FactType::Number => "a number",
                            FactType::String => "a string",
                            FactType::Bool => "true or false",
                        }
                    )))
                }
            };
            out.insert(f.name.clone(), value);
        }
        Ok(out)
    }

    /// Each step's input row from checked facts, as FP32 values in the declared order.
    pub fn rows(&self, facts: &Facts) -> Vec<Vec<f32>> {
        self.steps
            .iter()
            .map(|s| {
                s.row
                    .iter()
                    .map(|name| match facts.get(name) {
                        Some(Value::Number(x)) => *x as f32,
                        Some(Value::Bool(b)) => f32::from(u8::from(*b)),
                        _ => 0.0,
                    })
                    .collect()
            })
            .collect()
    }

    fn holds(&self, c: &Condition, facts: &Facts, scores: &BTreeMap<String, f64>) -> Option<bool> {
        let left = match facts.get(&c.var) {
            Some(v) => v.clone(),
            None => Value::Number(*scores.get(&c.var)?),
        };
        let ord = match (&left, &c.value) {
            (Value::Number(a), Value::Number(b)) => a.partial_cmp(b)?,
            (Value::Text(a), Value::Text(b)) => a.cmp(b),
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            _ => return None,
        };
        use std::cmp::Ordering::*;
        Some(match c.op.as_str() {
            ">" => ord == Greater,
            ">=" => ord != Less,
            "<" => ord == Less,
            "<=" => ord != Greater,
            "==" => ord == Equal,
            _ => ord != Equal,
        })
    }

    /// The advisory for checked facts and each step's score (by step name).
    pub fn decide(&self, facts: &Facts, scores: &BTreeMap<String, f64>) -> Advisory {
        self.conclude(facts, scores, Source::Models, Vec::new())
    }

    /// The advisory when the models cannot be asked, by the declared policy.
    pub fn degraded(&self, facts: &Facts) -> Advisory {
        let none = BTreeMap::new();
        match self.on_degraded {
            // Rules that need a score cannot hold without one: only the facts decide.
            Degraded::Rules => self.conclude(facts, &none, Source::Rules, vec![AI_DEGRADED.into()]),
            Degraded::ManualReview | Degraded::Cached => {
                let mut a = self.conclude(facts, &none, Source::Degraded, vec![AI_DEGRADED.into()]);
                a.recommendation = a.recommendation.max(Recommendation::ManualReview);
                a.priority = a.priority.or(Some(self.default_priority));
                a.advisory_hash = self.hash(facts, &a);
                a
            }
        }
    }

    fn conclude(&self, facts: &Facts, scores: &BTreeMap<String, f64>, source: Source, extra: Vec<String>) -> Advisory {
        let mut reasons: BTreeSet<String> = extra.into_iter().collect();
        let mut recommendation = Recommendation::AutoClear;
        let mut priority: Option<Priority> = None;
        for (rule, p) in &self.rules {
            let fired = rule.all.iter().all(|c| self.holds(c, facts, scores) == Some(true));
            if fired {
                reasons.insert(rule.reason.clone());
                recommendation = recommendation.max(rule.recommend);
                if let Some(p) = p {
                    priority = Some(priority.map_or(*p, |q| q.min(*p)));
                }
            }
        }
        if recommendation == Recommendation::AutoClear {
            priority = None;
        } else if priority.is_none() {
            priority = Some(self.default_priority);
        }
        let mut advisory = Advisory {
            pipeline: self.name.clone(),
            version: self.version.to_string(),
            recommendation,
            priority,
            reason_codes: reasons.into_iter().collect(),
            scores: scores.clone(),
            source,
            advisory_hash: String::new(),
        };
        advisory.advisory_hash = self.hash(facts, &advisory);
        advisory
    }

    /// The advisory hash: blake3 over a length-prefixed encoding of the pipeline, version,
    /// content hash, every fact (sorted by name; numbers as their f64 bits), every score
    /// (sorted; f64 bits), the source, the recommendation, the priority and the reason codes.
    fn hash(&self, facts: &Facts, a: &Advisory) -> String {
        let mut h = invariant_core::hash::Parts::new();
        let mut part = |bytes: &[u8]| {
            h.part(bytes);
        };
        part(b"invariant-advisory/1");
        part(self.name.as_bytes());
        part(self.version.to_string().as_bytes());
        part(self.content_hash.as_bytes());
        for (name, v) in facts {
            part(name.as_bytes());
            match v {
                Value::Number(x) => {
                    part(b"n");
                    part(&x.to_bits().to_le_bytes());
                }
                Value::Text(s) => {
                    part(b"s");
                    part(s.as_bytes());
                }
                Value::Bool(b) => {
                    part(b"b");
                    part(&[u8::from(*b)]);
                }
            }
        }
        for (name, x) in &a.scores {
            part(name.as_bytes());
            part(&x.to_bits().to_le_bytes());
        }
        part(
            match a.source {
                Source::Models => "models",
                Source::Rules => "rules",
                Source::Degraded => "degraded",
            }
            .as_bytes(),
        );
        part(a.recommendation.name().as_bytes());
        part(a.priority.map_or("", |p| p.name()).as_bytes());
        for r in &a.reason_codes {
            part(r.as_bytes());
        }
        h.finish().to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) const SAMPLE: &str = r#"
name = "transaction-review"
version = "1.0.0"
on_degraded = "manual_review"

[[facts]]
name = "amount_usd"
type = "number"
min = 0.0
[[facts]]
name = "escrow_dispute"
type = "bool"
required = false
[[facts]]
name = "currency"
type = "string"
required = false
[[facts]]
name = "age_days"
type = "number"

[[models]]
name = "risk"
model = "risk-assessor"
version = "1.1.0"
input = "features"
row = ["amount_usd", "age_days"]
output = "probabilities"
index = 1

[[rules]]
reason = "RISK_ABOVE_0_8"
recommend = "hold"
priority = "P2"
all = [{ var = "risk", op = ">", value = 0.8 }]

[[rules]]
reason = "HIGH_VALUE_OVER_1000"
recommend = "manual_review"
priority = "P1"
all = [{ var = "amount_usd", op = ">", value = 1000.0 }]

[[rules]]
reason = "ESCROW_DISPUTE"
recommend = "manual_review"
priority = "P0"
all = [{ var = "escrow_dispute", op = "==", value = true }]

[[rules]]
reason = "NEW_ACCOUNT"
recommend = "manual_review"
all = [{ var = "age_days", op = "<", value = 30.0 }, { var = "currency", op = "!=", value = "USD" }]
"#;

    fn p() -> Pipeline {
        Pipeline::parse(SAMPLE.as_bytes()).unwrap()
    }

    fn facts(v: serde_json::Value) -> Facts {
        p().facts(v.as_object().unwrap()).unwrap()
    }

    #[test]
    fn rules_combine_to_the_most_cautious_recommendation_and_the_most_urgent_priority() {
        let p = p();
        let scores = |r: f64| BTreeMap::from([("risk".to_string(), r)]);
        let clear = p.decide(&facts(json!({"amount_usd": 50.0, "age_days": 400})), &scores(0.1));
        assert_eq!(
            (clear.recommendation, clear.priority),
            (Recommendation::AutoClear, None)
        );
        assert!(clear.reason_codes.is_empty());
        let f = facts(json!({"amount_usd": 1500, "age_days": 400, "escrow_dispute": true}));
        let a = p.decide(&f, &scores(0.9));
        assert_eq!(a.recommendation, Recommendation::Hold);
        assert_eq!(a.priority, Some(Priority::P0));
        assert_eq!(
            a.reason_codes,
            ["ESCROW_DISPUTE", "HIGH_VALUE_OVER_1000", "RISK_ABOVE_0_8"]
        );
        // A rule that names no priority takes the default; both conditions must hold.
        let new = p.decide(
            &facts(json!({"amount_usd": 5, "age_days": 3, "currency": "EUR"})),
            &scores(0.1),
        );
        assert_eq!(
            (new.priority, new.reason_codes.clone()),
            (Some(Priority::P4), vec!["NEW_ACCOUNT".to_string()])
        );
        let usd = p.decide(
            &facts(json!({"amount_usd": 5, "age_days": 3, "currency": "USD"})),
            &scores(0.1),
        );
        assert_eq!(usd.recommendation, Recommendation::AutoClear);
        // The threshold is strict.
        assert!(p
            .decide(&f, &scores(0.8))
            .reason_codes
            .iter()
            .all(|r| r != "RISK_ABOVE_0_8"));
    }

    #[test]
    fn the_hash_is_a_function_of_everything_that_decides() {
        let p = p();
        let f = facts(json!({"amount_usd": 1500, "age_days": 400}));
        let s = BTreeMap::from([("risk".to_string(), 0.25)]);
        let a = p.decide(&f, &s);
        assert_eq!(a.advisory_hash, p.decide(&f, &s).advisory_hash, "deterministic");
        let one_ulp = BTreeMap::from([("risk".to_string(), f64::from_bits(0.25f64.to_bits() + 1))]);
        assert_ne!(a.advisory_hash, p.decide(&f, &one_ulp).advisory_hash);
        let other = facts(json!({"amount_usd": 1500.5, "age_days": 400}));
        assert_ne!(a.advisory_hash, p.decide(&other, &s).advisory_hash);
        let changed = Pipeline::parse(SAMPLE.replace("value = 0.8", "value = 0.7").as_bytes()).unwrap();
        assert_ne!(
            a.advisory_hash,
            changed.decide(&f, &s).advisory_hash,
            "a threshold is part of the version"
        );
    }

    #[test]
    fn degraded_decisions_follow_the_policy_and_never_auto_clear_silently() {
        let p = p();
        let f = facts(json!({"amount_usd": 20, "age_days": 400}));
        let a = p.degraded(&f);
        assert_eq!(a.recommendation, Recommendation::ManualReview);
        assert_eq!(
            (a.source, a.reason_codes.clone()),
            (Source::Degraded, vec![AI_DEGRADED.to_string()])
        );
        let rules = Pipeline::parse(
            SAMPLE
                .replace("on_degraded = \"manual_review\"", "on_degraded = \"rules\"")
                .as_bytes(),
        )
        .unwrap();
        let big = rules
            .facts(json!({"amount_usd": 2000, "age_days": 400}).as_object().unwrap())
            .unwrap();
        let r = rules.degraded(&big);
        assert_eq!(
            (r.source, r.recommendation),
            (Source::Rules, Recommendation::ManualReview)
        );
        assert_eq!(r.reason_codes, [AI_DEGRADED, "HIGH_VALUE_OVER_1000"]);
    }

    #[test]
    fn facts_and_definitions_are_checked_with_the_field_named() {
        let p = p();
        for (given, field) in [
            (json!({"age_days": 3}), "facts.amount_usd: required"),
            (
                json!({"amount_usd": -1, "age_days": 3}),
                "facts.amount_usd: -1 is outside",
            ),
            (
                json!({"amount_usd": "9", "age_days": 3}),
                "facts.amount_usd: expected a number",
            ),
            (
                json!({"amount_usd": 9, "age_days": 3, "colour": 1}),
                "facts.colour: not a fact",
            ),
            (
                json!({"amount_usd": 9, "age_days": 3, "escrow_dispute": 1}),
                "facts.escrow_dispute: expected true",
            ),
        ] {
            let err = p.facts(given.as_object().unwrap()).unwrap_err().to_string();
            assert!(err.starts_with(field), "{field}: {err}");
        }
        for (from, to, field) in [
            ("value = 0.8", "value = \"high\"", "rules[0].all[0].value"),
            ("var = \"risk\"", "var = \"riks\"", "rules[0].all[0].var"),
            (
                "op = \">\", value = 0.8",
                "op = \"~\", value = 0.8",
                "rules[0].all[0].op",
            ),
            ("priority = \"P2\"", "priority = \"P7\"", "rules[0].priority"),
            ("reason = \"RISK_ABOVE_0_8\"", "reason = \"risk\"", "rules[0].reason"),
            (
                "row = [\"amount_usd\", \"age_days\"]",
                "row = [\"currency\"]",
                "models[0].row[0]",
            ),
            ("version = \"1.0.0\"", "version = \"one\"", "version"),
        ] {
            let err = Pipeline::parse(SAMPLE.replacen(from, to, 1).as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(field), "{field}: {err}");
        }
    }

    #[test]
    fn feature_services_are_named_once_each() {
        let with = |services: &str| format!("{SAMPLE}\n{services}");
        let one = Pipeline::parse(with("[[features]]\nservice = \"svc\"").as_bytes()).unwrap();
        assert_eq!(one.features, [FeatureInput { service: "svc".into() }]);
        assert_ne!(one.content_hash, p().content_hash);
        let twice = with("[[features]]\nservice = \"svc\"\n[[features]]\nservice = \"svc\"");
        let err = Pipeline::parse(twice.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with("features[1].service"), "{err}");
        let empty = Pipeline::parse(with("[[features]]\nservice = \"\"").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(empty.starts_with("features[0].service"), "{empty}");
    }

    #[test]
    fn the_cached_policy_falls_back_to_manual_review_and_its_window_is_bounded() {
        let cached = SAMPLE.replace("on_degraded = \"manual_review\"", "on_degraded = \"cached\"");
        let p = Pipeline::parse(cached.as_bytes()).unwrap();
        assert_eq!((p.on_degraded, p.degraded_cache_seconds), (Degraded::Cached, 3600.0));
        let a = p.degraded(
            &p.facts(json!({"amount_usd": 20, "age_days": 400}).as_object().unwrap())
                .unwrap(),
        );
        assert_eq!(
            (a.recommendation, a.source),
            (Recommendation::ManualReview, Source::Degraded)
        );
        let long = format!("degraded_cache_seconds = 1e9\n{cached}");
        let err = Pipeline::parse(long.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with("degraded_cache_seconds"), "{err}");
    }
}
