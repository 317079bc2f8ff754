//! `invariant features plan` / `apply`: what changing the definitions would do, and recording
//! them as the applied definitions the server serves (like `feast plan` / `feast apply`).
//!
//! A change that would make stored rows unreadable (a feature removed, renamed or retyped, or a
//! view's entity changed) is incompatible: it needs a new `schema_version` on the view.

use crate::defs::{Definitions, Entity, FeatureService, FeatureView};
use crate::FeatureError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Format tag of the applied-definitions file.
pub const APPLIED_FORMAT: &str = "invariant-features/1";

/// The applied definitions, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// Always [`APPLIED_FORMAT`].
    pub format: String,
    /// Entities.
    pub entities: Vec<Entity>,
    /// Feature views.
    pub views: Vec<FeatureView>,
    /// Feature services.
    pub services: Vec<FeatureService>,
}

impl Applied {
    /// The definitions as applied.
    pub fn definitions(&self) -> Definitions {
        Definitions {
            entities: self.entities.clone(),
            views: self.views.clone(),
            services: self.services.clone(),
        }
    }

    /// Reads the applied definitions; `None` when nothing was applied yet.
    pub fn load(path: &Path) -> Result<Option<Self>, FeatureError> {
        match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FeatureError::Definition(format!("{}: {e}", path.display()))),
            Ok(bytes) => {
                let applied: Applied = serde_json::from_slice(&bytes)
                    .map_err(|e| FeatureError::Definition(format!("{}: {e}", path.display())))?;
                if applied.format != APPLIED_FORMAT {
                    return Err(FeatureError::Definition(format!(
                        "{}: format '{}'",
                        path.display(),
                        applied.format
                    )));
                }
                Ok(Some(applied))
            }
        }
    }
}

/// One difference between applied and new definitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `add`, `remove`, `change`.
    pub action: &'static str,
    /// `entity`, `feature_view`, `feature`, `feature_service`.
    pub kind: &'static str,
    /// The object, e.g. `account_stats` or `account_stats:completed_orders`.
    pub name: String,
    /// What changes.
    pub detail: String,
    /// Whether stored rows would be misread without a new schema version.
    pub incompatible: bool,
}

/// The differences between `old` (nothing applied: `None`) and `new`.
pub fn plan(old: Option<&Definitions>, new: &Definitions) -> Vec<Change> {
    let empty = Definitions::default();
    let old = old.unwrap_or(&empty);
    let mut changes = Vec::new();
    let mut push = |action, kind, name: String, detail: String, incompatible| {
        changes.push(Change {
            action,
            kind,
            name,
            detail,
            incompatible,
        })
    };
    for e in &new.entities {
        match old.entity(&e.name) {
            None => push(
                "add",
                "entity",
                e.name.clone(),
                format!("join key {}", e.join_key),
                false,
            ),
            Some(o) if o.join_key != e.join_key || o.key_type != e.key_type => push(
                "change",
                "entity",
                e.name.clone(),
                format!("key {} {:?} -> {} {:?}", o.join_key, o.key_type, e.join_key, e.key_type),
                true,
            ),
            Some(_) => {}
        }
    }
    for e in &old.entities {
        if new.entity(&e.name).is_none() {
            push("remove", "entity", e.name.clone(), String::new(), false);
        }
    }
    for v in &new.views {
        let Some((_, o)) = old.view(&v.name) else {
            push(
                "add",
                "feature_view",
                v.name.clone(),
                format!("{} features", v.features.len()),
                false,
            );
            continue;
        };
        let bumped = v.schema_version > o.schema_version;
        if o.entity != v.entity {
            push(
                "change",
                "feature_view",
                v.name.clone(),
                format!("entity {} -> {}", o.entity, v.entity),
                !bumped,
            );
        }
        if o.ttl_seconds != v.ttl_seconds {
            push(
                "change",
                "feature_view",
                v.name.clone(),
                format!("ttl {} s -> {} s", o.ttl_seconds, v.ttl_seconds),
                false,
            );
        }
        if o.schema_version != v.schema_version {
            let detail = format!("schema_version {} -> {}", o.schema_version, v.schema_version);
            push(
                "change",
                "feature_view",
                v.name.clone(),
                detail,
                v.schema_version < o.schema_version,
            );
        }
        for (i, f) in v.features.iter().enumerate() {
            let name = format!("{}:{}", v.name, f.name);
            match o.features.iter().position(|g| g.name == f.name) {
                None => push("add", "feature", name, format!("{}", f.datatype), false),
                Some(j) if o.features[j].datatype != f.datatype => push(
                    "change",
                    "feature",
                    name,
                    format!("{} -> {}", o.features[j].datatype, f.datatype),
                    !bumped,
                ),
                Some(j) if j != i => push("change", "feature", name, format!("position {j} -> {i}"), !bumped),
                Some(j) if o.features[j].default != f.default => {
                    push("change", "feature", name, "default".into(), false)
                }
                Some(_) => {}
            }
        }
        for f in &o.features {
            if !v.features.iter().any(|g| g.name == f.name) {
                push(
                    "remove",
                    "feature",
                    format!("{}:{}", v.name, f.name),
                    String::new(),
                    !bumped,
                );
            }
        }
    }
    for v in &old.views {
        if new.view(&v.name).is_none() {
            push("remove", "feature_view", v.name.clone(), String::new(), false);
        }
    }
    for s in &new.services {
        match old.service(&s.name) {
            None => push(
                "add",
                "feature_service",
                s.name.clone(),
                format!("{} features", s.features.len()),
                false,
            ),
            Some(o) if o.features != s.features => {
                push("change", "feature_service", s.name.clone(), "features".into(), false)
            }
            Some(_) => {}
        }
    }
    for s in &old.services {
        if new.service(&s.name).is_none() {
            push("remove", "feature_service", s.name.clone(), String::new(), false);
        }
    }
    changes
}

/// Records `defs` as applied (atomically: temporary file, fsync, rename), after refusing
/// incompatible changes against what was applied before. Returns the changes.
pub fn apply(path: &Path, defs: &Definitions) -> Result<Vec<Change>, FeatureError> {
    let old = Applied::load(path)?.map(|a| a.definitions());
    let changes = plan(old.as_ref(), defs);
    if let Some(c) = changes.iter().find(|c| c.incompatible) {
        return Err(FeatureError::Definition(format!(
            "incompatible change to {} '{}' ({}): bump the feature view's schema_version",
            c.kind, c.name, c.detail
        )));
    }
    let applied = Applied {
        format: APPLIED_FORMAT.into(),
        entities: defs.entities.clone(),
        views: defs.views.clone(),
        services: defs.services.clone(),
    };
    let err = |e: std::io::Error| FeatureError::Store(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(&applied).map_err(|e| FeatureError::Store(e.to_string()))?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs() -> Definitions {
        Definitions::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../features")).unwrap()
    }

    #[test]
    fn first_apply_adds_everything_and_a_second_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("applied.json");
        let changes = apply(&path, &defs()).unwrap();
        assert!(changes.iter().all(|c| c.action == "add"));
        assert!(changes
            .iter()
            .any(|c| c.kind == "feature_view" && c.name == "account_stats"));
        assert!(apply(&path, &defs()).unwrap().is_empty());
        assert_eq!(Applied::load(&path).unwrap().unwrap().definitions(), defs());
    }

    #[test]
    fn retyping_a_feature_needs_a_new_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("applied.json");
        apply(&path, &defs()).unwrap();
        let mut changed = defs();
        changed.views[0].features[1].datatype = invariant_core::DataType::Int64;
        let err = apply(&path, &changed).unwrap_err().to_string();
        assert!(
            err.contains("account_stats:completed_orders") && err.contains("schema_version"),
            "{err}"
        );
        changed.views[0].schema_version += 1;
        let changes = apply(&path, &changed).unwrap();
        assert!(changes
            .iter()
            .any(|c| c.name == "account_stats:completed_orders" && !c.incompatible));
        let mut ttl = changed.clone();
        ttl.views[0].ttl_seconds = 60;
        let plan = plan(Some(&changed), &ttl);
        assert_eq!(plan.len(), 1);
        assert!(!plan[0].incompatible && plan[0].detail.contains("ttl"));
    }
}
