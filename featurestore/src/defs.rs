//! Feature definitions: entities, feature views and feature services, declared in the TOML
//! files of a feature repository (`features/*.toml`).

use crate::FeatureError;
use invariant_core::DataType;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How an entity's keys are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum KeyType {
    /// JSON strings.
    String,
    /// JSON integers (stored as their decimal text).
    Int64,
}

/// Something features describe (an account, a merchant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    /// Name.
    pub name: String,
    /// The key column in requests and pushes, e.g. `account_id`.
    pub join_key: String,
    /// Key type.
    pub key_type: KeyType,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// One feature of a view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// Name, unique in its view.
    pub name: String,
    /// FP32, FP64, INT64 or BOOL.
    pub datatype: DataType,
    /// Value served when the feature is missing or older than the view's TTL (`null`: none).
    #[serde(default)]
    pub default: Option<serde_json::Value>,
}

/// Features of one entity, written and read together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureView {
    /// Name.
    pub name: String,
    /// Entity name.
    pub entity: String,
    /// Max age of a value on read (0: no limit).
    #[serde(default)]
    pub ttl_seconds: u64,
    /// Schema version, stored with every row.
    #[serde(default = "one")]
    pub schema_version: u32,
    /// Owner.
    #[serde(default)]
    pub owner: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Shared by every corridor (`global = true`): its rows live in one namespace
    /// ([`crate::GLOBAL`]) that every corridor reads and only `*` admin keys write.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub global: bool,
    /// The push source that feeds it (Feast's `push_source_name` for `POST /push`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_source: Option<String>,
    /// Features in declared order.
    pub features: Vec<Feature>,
}

fn one() -> u32 {
    1
}

/// An ordered list of features a model consumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureService {
    /// Name.
    pub name: String,
    /// `view:feature` references, in order.
    pub features: Vec<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    entities: Vec<Entity>,
    #[serde(default)]
    feature_views: Vec<FeatureView>,
    #[serde(default)]
    feature_services: Vec<FeatureService>,
}

/// A resolved feature reference: view index and feature index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureRef {
    /// Index into [`Definitions::views`].
    pub view: usize,
    /// Index into that view's features.
    pub feature: usize,
}

/// Every definition of a feature repository.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Definitions {
    /// Entities, sorted by name.
    pub entities: Vec<Entity>,
    /// Feature views, sorted by name.
    pub views: Vec<FeatureView>,
    /// Feature services, sorted by name.
    pub services: Vec<FeatureService>,
}

impl Definitions {
    /// Reads every `*.toml` of `dir` (sorted by file name) and checks the whole: unique names,
    /// known entities, supported datatypes, defaults of the right type, resolvable services.
    pub fn load_dir(dir: &Path) -> Result<Self, FeatureError> {
        let io = |e: std::io::Error| FeatureError::Definition(format!("{}: {e}", dir.display()));
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        let mut texts = Vec::with_capacity(files.len());
        for path in files {
            texts.push((path.display().to_string(), std::fs::read_to_string(&path).map_err(io)?));
        }
        Self::parse(&texts)
    }

    /// The definitions of `files` (name for errors, TOML text), checked as
    /// [`Definitions::load_dir`] checks a directory's.
    pub fn parse(files: &[(String, String)]) -> Result<Self, FeatureError> {
        let mut defs = Definitions::default();
        for (name, text) in files {
            let file: File = toml::from_str(text).map_err(|e| FeatureError::Definition(format!("{name}: {e}")))?;
            defs.entities.extend(file.entities);
            defs.views.extend(file.feature_views);
            defs.services.extend(file.feature_services);
        }
        defs.entities.sort_by(|a, b| a.name.cmp(&b.name));
        defs.views.sort_by(|a, b| a.name.cmp(&b.name));
        defs.services.sort_by(|a, b| a.name.cmp(&b.name));
        defs.validate()?;
        Ok(defs)
    }

    fn validate(&self) -> Result<(), FeatureError> {
        let bad = |m: String| Err(FeatureError::Definition(m));
        for w in self.entities.windows(2).chain(std::iter::empty()) {
            if w[0].name == w[1].name {
                return bad(format!("entity '{}' is declared twice", w[0].name));
            }
        }
        for w in self.views.windows(2) {
            if w[0].name == w[1].name {
                return bad(format!("feature view '{}' is declared twice", w[0].name));
            }
        }
        for w in self.services.windows(2) {
            if w[0].name == w[1].name {
                return bad(format!("feature service '{}' is declared twice", w[0].name));
            }
        }
        for v in &self.views {
            if self.entity(&v.entity).is_none() {
                return bad(format!("feature view '{}': unknown entity '{}'", v.name, v.entity));
            }
            if v.features.is_empty() {
                return bad(format!("feature view '{}' has no features", v.name));
            }
            for (i, f) in v.features.iter().enumerate() {
                if !matches!(
                    f.datatype,
                    DataType::Fp32 | DataType::Fp64 | DataType::Int64 | DataType::Bool
                ) {
                    return bad(format!(
                        "{}.features[{i}] '{}': datatype must be FP32, FP64, INT64 or BOOL",
                        v.name, f.name
                    ));
                }
                if v.features[..i].iter().any(|g| g.name == f.name) {
                    return bad(format!("{}.features[{i}]: '{}' is declared twice", v.name, f.name));
                }
                if let Some(d) = &f.default {
                    if !d.is_null() {
                        check_value(f.datatype, d).map_err(|m| {
                            FeatureError::Definition(format!("{}.features[{i}] '{}': default {m}", v.name, f.name))
                        })?;
                    }
                }
            }
        }
        for s in &self.services {
            self.resolve(&s.features)
                .map_err(|e| FeatureError::Definition(format!("feature service '{}': {e}", s.name)))?;
        }
        Ok(())
    }

    /// The entity named `name`.
    pub fn entity(&self, name: &str) -> Option<&Entity> {
        self.entities.iter().find(|e| e.name == name)
    }

    /// The view named `name`.
    pub fn view(&self, name: &str) -> Option<(usize, &FeatureView)> {
        self.views.iter().enumerate().find(|(_, v)| v.name == name)
    }

    /// The view named `name` and the entity it is keyed by.
    pub fn view_with_entity(&self, name: &str) -> Result<(&FeatureView, &Entity), FeatureError> {
        let (_, view) = self
            .view(name)
            .ok_or_else(|| FeatureError::Request(format!("unknown feature view '{name}'")))?;
        let entity = self
            .entity(&view.entity)
            .ok_or_else(|| FeatureError::Definition(view.entity.clone()))?;
        Ok((view, entity))
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&FeatureService> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Resolves `view:feature` references, in order. References usually list a view's
    /// features in declared order, so each is first tried as the one after the previous.
    pub fn resolve(&self, refs: &[String]) -> Result<Vec<FeatureRef>, FeatureError> {
        let mut out: Vec<FeatureRef> = Vec::with_capacity(refs.len());
        for (i, r) in refs.iter().enumerate() {
            let (view, feature) = r
                .split_once(':')
                .ok_or_else(|| FeatureError::Request(format!("features[{i}]: '{r}' is not 'view:feature'")))?;
            let (vi, v) = match out.last() {
                Some(prev) if self.views[prev.view].name == view => (prev.view, &self.views[prev.view]),
                _ => self
                    .view(view)
                    .ok_or_else(|| FeatureError::Request(format!("features[{i}]: unknown feature view '{view}'")))?,
            };
            let next = out.last().filter(|p| p.view == vi).map_or(0, |p| p.feature + 1);
            let fi = match v.features.get(next) {
                Some(f) if f.name == feature => next,
                _ => v.features.iter().position(|f| f.name == feature).ok_or_else(|| {
                    FeatureError::Request(format!(
                        "features[{i}]: feature view '{view}' has no feature '{feature}'"
                    ))
                })?,
            };
            out.push(FeatureRef { view: vi, feature: fi });
        }
        Ok(out)
    }
}

/// Checks that a JSON value fits a feature datatype; the message says what was expected.
pub fn check_value(datatype: DataType, v: &serde_json::Value) -> Result<(), String> {
    let ok = match datatype {
        DataType::Fp32 | DataType::Fp64 => v.as_f64().is_some(),
        DataType::Int64 => v.as_i64().is_some(),
        DataType::Bool => v.is_boolean(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{v} is not a valid {datatype} value"))
    }
}
