//! The command line: help on every subcommand, and `models list/verify/hash`.

use invariant_blackbox::*;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("run invariant");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_on_every_subcommand() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["models", "--help"],
        &["models", "list", "--help"],
        &["models", "verify", "--help"],
        &["models", "hash", "--help"],
        &["models", "show", "--help"],
        &["models", "history", "--help"],
        &["models", "import", "--help"],
        &["models", "stage", "--help"],
        &["models", "canary", "--help"],
        &["models", "promote", "--help"],
        &["models", "rollback", "--help"],
        &["models", "deprecate", "--help"],
        &["models", "unload", "--help"],
        &["gate", "--help"],
        &["features", "--help"],
        &["features", "materialize", "--help"],
        &["features", "plan", "--help"],
        &["features", "apply", "--help"],
        &["golden", "--help"],
        &["golden", "record", "--help"],
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
    let (_, out, _) = run(&["serve", "--help"]);
    assert!(out.contains("--http-addr") && out.contains("--model-repository") && out.contains("--config"));
    let (_, out, _) = run(&["models", "import", "--help"]);
    assert!(
        out.contains("--name") && out.contains("--version <VERSION>") && out.contains("--like"),
        "{out}"
    );
    let (_, out, _) = run(&["models", "canary", "--help"]);
    assert!(
        out.contains("--percent") && out.contains("--corridor") && out.contains("--server"),
        "{out}"
    );
    let (_, out, _) = run(&["gate", "--help"]);
    assert!(out.contains("--server") && out.contains("--json") && out.contains("MODEL[:VERSION]"));
    let (_, out, _) = run(&["golden", "record", "--help"]);
    assert!(out.contains("--force") && out.contains("<VERSION>"));
}

#[test]
fn models_verify_passes_on_the_shipped_repository() {
    let (code, out, err) = run(&["models", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    for id in ["trust-scorer", "risk-assessor", "price-advisor"] {
        assert!(out.contains(id), "{out}");
    }
    assert_eq!(out.matches("READY").count(), 6, "{out}");
}

#[test]
fn models_verify_fails_on_a_tampered_copy_and_list_reports_it() {
    let repo = tempfile::tempdir().unwrap();
    copy_tree(&shipped_models(), repo.path());
    let artifact = repo.path().join("price-advisor/1.0.0/model.onnx");
    let mut bytes = std::fs::read(&artifact).unwrap();
    bytes[100] ^= 0x80;
    std::fs::write(&artifact, bytes).unwrap();
    let repo_arg = repo.path().to_str().unwrap();

    let (code, out, err) = run(&["models", "verify", "--model-repository", repo_arg]);
    assert_ne!(code, 0, "verify must fail: {out}");
    assert!(out.contains("FAILED") && out.contains("sha256 mismatch"), "{out}");
    assert!(err.contains("1 model version(s) failed verification"), "{err}");

    let (code, out, err) = run(&["models", "list", "--json", "--model-repository", repo_arg]);
    assert_eq!(code, 0, "{err}");
    let models: serde_json::Value = serde_json::from_str(&out).unwrap();
    let model = |name: &str| {
        models
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()
            .clone()
    };
    let price = &model("price-advisor")["versions"][0];
    assert_eq!(price["state"], "FAILED");
    assert_eq!(price["lifecycle"], "FAILED");
    assert!(price["error"].as_str().unwrap().contains("model.onnx"));
    let trust = model("trust-scorer");
    assert_eq!(trust["versions"][1]["state"], "READY");
    assert_eq!(trust["versions"][1]["lifecycle"], "ACTIVE");
    assert_eq!(trust["versions"][0]["lifecycle"], "STAGED");
}

#[test]
fn models_hash_matches_the_manifest() {
    let dir = shipped_models().join("trust-scorer/1.2.0");
    let (code, out, err) = run(&["models", "hash", dir.join("model.safetensors").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let manifest = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
    for line in out
        .lines()
        .filter(|l| l.starts_with("sha256") || l.starts_with("blake3"))
    {
        assert!(manifest.contains(line), "{line} not in the manifest");
    }
    assert!(out.contains("sha256 = ") && out.contains("blake3 = "));
}
