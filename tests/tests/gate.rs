//! The CI determinism gate catches a 1-ULP weight change, a batch-dependent model and a
//! tampered artifact, and confirms a running server's bits; golden recording refuses to
//! overwrite without --force.

use invariant_blackbox::*;

fn gate(args: &[String]) -> (i32, String, String) {
    let mut all = vec!["gate".to_string()];
    all.extend(args.iter().cloned());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    invariant(&refs)
}

#[test]
fn passes_on_the_shipped_repository_with_every_check() {
    let (code, out, err) = invariant(&["gate", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["passed"], true);
    let versions = report["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 6);
    for v in versions {
        assert!(v["vectors"].as_u64().unwrap() >= 32, "{v}");
        let checks: Vec<&str> = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["check"].as_str().unwrap())
            .collect();
        assert_eq!(
            checks,
            ["hashes", "golden", "repeat", "batch_invariance", "thread_invariance"],
            "{v}"
        );
        assert!(
            v["checks"].as_array().unwrap().iter().all(|c| c["status"] == "passed"),
            "{v}"
        );
    }
    assert!(report["thread_counts"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(1)));
}

#[test]
fn catches_a_weight_changed_by_one_ulp() {
    let repo = RepoCopy::new();
    let dir = repo.version_dir("trust-scorer", "1.2.0");
    bump_weight_one_ulp(&dir.join("model.safetensors"), "layers.2.weight", 0);
    rehash_manifest(&dir);
    let mut args = repo.args();
    args.push("trust-scorer".into());
    let (code, out, err) = gate(&args);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAIL trust-scorer 1.2.0"), "{out}");
    assert!(
        out.contains("PASS trust-scorer 1.1.0"),
        "only the changed version fails: {out}"
    );
    let line = out
        .lines()
        .find(|l| l.contains("[golden] vector"))
        .unwrap_or_else(|| panic!("no golden violation: {out}"));
    assert!(
        line.contains("output 0 'trust_score' element ") && line.contains(": expected "),
        "{line}"
    );
    assert!(line.contains(" actual ") && line.contains(" ULP)"), "{line}");
    assert!(err.contains("determinism gate failed"), "{err}");

    // The JSON report names the same things for CI systems.
    args.push("--json".into());
    let (_, out, _) = gate(&args);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let v = report["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "1.2.0")
        .unwrap();
    let violations = v["violations"].as_array().unwrap();
    assert!(
        violations
            .iter()
            .any(|x| x["check"] == "golden" && x["detail"].as_str().unwrap().contains("recorded for artifacts")),
        "the golden file names other artifacts: {violations:?}"
    );
    let first = violations
        .iter()
        .find(|x| x["check"] == "golden" && x["vector"].is_string())
        .unwrap();
    assert!(first["vector"].as_str().is_some() && first["expected"].as_str().is_some() && first["actual"].is_string());
    assert!(first["ulp"].as_u64().unwrap() >= 1);
}

#[test]
fn catches_a_model_whose_output_depends_on_batch_size() {
    let repo = RepoCopy::new();
    let dir = repo.version_dir("trust-scorer", "1.2.0");
    // Same weights, candle's own x·Wᵀ matmul instead of the fixed-order kernel.
    let manifest = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}kernel = \"candle-matmul\"\n")).unwrap();
    let mut record = vec![
        "golden".to_string(),
        "record".into(),
        "trust-scorer".into(),
        "1.2.0".into(),
        "--force".into(),
    ];
    record.extend(repo.args());
    let refs: Vec<&str> = record.iter().map(String::as_str).collect();
    let (code, out, err) = invariant(&refs);
    assert_eq!(code, 0, "{out}{err}");

    let mut args = repo.args();
    args.push("trust-scorer:1.2.0".into());
    let (code, out, err) = gate(&args);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("batch-invariance:failed"), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("[batch-invariance]"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("at position") && line.contains("of a batch of"), "{line}");
    assert!(
        !out.contains("[golden]"),
        "golden vectors recorded alone still match: {out}"
    );
}

#[test]
fn catches_a_tampered_artifact() {
    let repo = RepoCopy::new();
    let artifact = repo.version_dir("risk-assessor", "1.0.0").join("model.onnx");
    let mut bytes = std::fs::read(&artifact).unwrap();
    bytes[200] ^= 0x04;
    std::fs::write(&artifact, bytes).unwrap();
    let (code, out, _) = gate(&repo.args());
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL risk-assessor 1.0.0") && out.contains("hashes:failed"),
        "{out}"
    );
    assert!(out.contains("[hashes]") && out.contains("sha256 mismatch"), "{out}");
    assert!(out.contains("PASS risk-assessor 1.1.0"), "{out}");
}

#[test]
fn unknown_selection_is_an_error() {
    let (code, _, err) = invariant(&["gate", "no-such-model"]);
    assert_ne!(code, 0);
    assert!(err.contains("no-such-model"), "{err}");
}

#[tokio::test]
async fn server_mode_compares_http_bits_with_in_process_bits() {
    // A rate-limited corridor (50 requests/s for 246 vectors): the gate waits out the 429s.
    let s = Server::start_with(ServerOptions {
        extra: "[governance.corridor_rate]\n0 = 50\n".into(),
        ..Default::default()
    })
    .await;
    let url = s.url.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || invariant(&["gate", "--server", &url]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.matches(" server").count(),
        6,
        "every version checked over HTTP: {out}"
    );
    let metrics = s.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("invariant_inference_requests_total") && l.contains("status=\"overloaded\"")),
        "the limit was never reached, so the retry was not exercised:\n{metrics}"
    );
}

#[test]
fn golden_record_refuses_to_overwrite_without_force() {
    let repo = RepoCopy::new();
    let mut args = vec![
        "golden".to_string(),
        "record".into(),
        "price-advisor".into(),
        "1.0.0".into(),
    ];
    args.extend(repo.args());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = invariant(&refs);
    assert_ne!(code, 0);
    assert!(err.contains("exists; pass --force"), "{err}");

    let path = repo.golden().join("price-advisor/1.0.0.jsonl");
    let before = std::fs::read_to_string(&path).unwrap();
    let mut forced = refs.clone();
    forced.push("--force");
    let (code, out, err) = invariant(&forced);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("recorded 41 golden vectors"), "{out}");
    let after = std::fs::read_to_string(&path).unwrap();
    // Re-recording the same artifacts gives the same vectors; only the header's time moves.
    assert_eq!(
        before.lines().skip(1).collect::<Vec<_>>(),
        after.lines().skip(1).collect::<Vec<_>>()
    );
    let header: serde_json::Value = serde_json::from_str(after.lines().next().unwrap()).unwrap();
    assert_eq!(header["engine"], "onnxruntime");
    assert_eq!(header["runtime_version"], "1.31.1");
    assert!(header["cpu_features"].as_array().is_some_and(|f| !f.is_empty()));
    assert!(header["recorded_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    let ids: Vec<String> = after
        .lines()
        .skip(1)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for wanted in ["000-zeros", "001-min", "002-max", "-random-batch-256"] {
        assert!(
            ids.iter().any(|i| i.ends_with(wanted) || i == wanted),
            "{wanted} missing from {ids:?}"
        );
    }
    assert!(ids.iter().any(|i| i.contains("max-active_riders")), "{ids:?}");
}

#[test]
fn the_gate_checks_every_advisory_pipeline_against_its_golden_decisions() {
    // The shipped transaction-review pipeline versions pass, case by case.
    let (code, out, err) = invariant(&["gate", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pipelines = report["pipelines"].as_array().unwrap();
    assert_eq!(pipelines.len(), 2, "{report}");
    for (p, version) in pipelines.iter().zip(["1.0.0", "1.1.0"]) {
        assert_eq!(
            (p["pipeline"].as_str(), p["version"].as_str()),
            (Some("transaction-review"), Some(version))
        );
        assert_eq!(
            (p["passed"].clone(), p["cases"].as_u64()),
            (serde_json::json!(true), Some(24))
        );
    }

    // A version reading an unknown feature service fails the gate, naming it.
    let repo = RepoCopy::new();
    let file = repo.models().join("pipelines/transaction-review/1.1.0/pipeline.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("service = \"trust_scorer_v1\"", "service = \"trust_scorer_v9\""),
    )
    .unwrap();
    let (code, out, err) = gate(&repo.args());
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAIL pipeline transaction-review 1.1.0"), "{out}");
    assert!(out.contains("trust_scorer_v9"), "{out}");

    // A changed threshold is a new version: the old golden decisions refuse it.
    let repo = RepoCopy::new();
    let file = repo.models().join("pipelines/transaction-review/1.0.0/pipeline.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("value = 0.8", "value = 0.75")).unwrap();
    let (code, out, err) = gate(&repo.args());
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAIL pipeline transaction-review 1.0.0"), "{out}");
    assert!(out.contains("changed since its golden vectors were recorded"), "{out}");
    assert!(err.contains("1 pipeline version(s) with violations"), "{err}");

    // A recorded decision that the pipeline no longer makes names the case.
    let repo = RepoCopy::new();
    let golden = repo.golden().join("pipelines/transaction-review/1.0.0.jsonl");
    let text = std::fs::read_to_string(&golden).unwrap();
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            if l.contains("\"001-high-value\"") {
                l.replace("\"priority\":\"P1\"", "\"priority\":\"P3\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_ne!(edited.join("\n"), text.trim_end(), "the case was edited");
    std::fs::write(&golden, edited.join("\n") + "\n").unwrap();
    let (code, out, _) = gate(&repo.args());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("case 001-high-value: advisory"), "{out}");

    // Recording refuses to overwrite, and names the pipeline when it does not exist.
    let repo = RepoCopy::new();
    let cases = repo.golden().join("pipelines/transaction-review/1.0.0.cases.jsonl");
    let mut args = vec!["golden", "record-pipeline", "transaction-review", "1.0.0", "--cases"];
    let cases = cases.display().to_string();
    args.push(&cases);
    let repo_args = repo.args();
    args.extend(repo_args.iter().map(String::as_str));
    let (code, _, err) = invariant(&args);
    assert_ne!(code, 0);
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    args.push("--force");
    let (code, out, err) = invariant(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("recorded 24 cases"), "{out}");
    let (code, _, err) = invariant(&["golden", "record-pipeline", "no-such", "1.0.0", "--cases", &cases]);
    assert_ne!(code, 0);
    assert!(err.contains("no-such"), "{err}");
}
