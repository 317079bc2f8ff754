//! Portable determinism across x86-64 generations: the shipped repository's gate and the
//! server's deploy-time verification, run under `qemu-x86_64 -cpu MODEL` (Debian's
//! `qemu-user`, installed by the test command), which makes the binary see that CPU's
//! feature set. Every golden vector of every version is checked under emulation (the gate
//! runs in seconds there).

use invariant_blackbox::invariant_on_cpu as under;
use serde_json::Value;

fn version<'a>(report: &'a Value, model: &str, v: &str) -> &'a Value {
    report["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["model"] == model && x["version"] == v)
        .unwrap_or_else(|| panic!("{model} {v} not in {report}"))
}

#[test]
fn the_gate_passes_on_every_cpu_generation_and_refuses_only_unrecorded_classes() {
    for (cpu, class) in [
        ("Nehalem", "x86-64-v2"),
        ("SandyBridge", "x86-64-v2"),
        ("Haswell", "x86-64-v3"),
    ] {
        let (code, out, err) = under(cpu, &["gate", "--json"]);
        assert_eq!(code, 0, "{cpu}: {out}{err}");
        let report: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["passed"], true, "{cpu}");
        assert_eq!(report["cpu_class"], class, "{cpu}");
        for v in report["versions"].as_array().unwrap() {
            let name = format!("{} {}", v["model"], v["version"]);
            if v["refused"].is_string() {
                continue;
            }
            assert_eq!(v["passed"], true, "{cpu}: {name}: {v}");
            assert!(v["violations"].as_array().unwrap().is_empty(), "{cpu}: {name}");
            assert!(v["vectors"].as_u64().unwrap() >= 32, "{cpu}: {name}");
        }
        // The portable versions pass everywhere, bit for bit against their one golden file.
        for (m, v, engine) in [
            ("price-advisor", "1.0.1", "invariant-portable"),
            ("trust-scorer", "1.1.0", "invariant-native"),
            ("trust-scorer", "1.2.0", "invariant-native"),
        ] {
            let r = version(&report, m, v);
            assert_eq!(r["portable"], true, "{cpu}: {m} {v}");
            assert_eq!(r["engine"], engine, "{cpu}: {m} {v}");
            assert_eq!(r["passed"], true, "{cpu}: {m} {v}");
            assert!(r["refused"].is_null(), "{cpu}: {m} {v}");
        }
        // ONNX Runtime's 1.0.0 has golden vectors for v3 and v4 only: refused on v2 with the
        // documented reason (not a list of ULP mismatches), verified on v3.
        let old = version(&report, "price-advisor", "1.0.0");
        assert_eq!(old["portable"], false);
        if class == "x86-64-v2" {
            let why = old["refused"]
                .as_str()
                .unwrap_or_else(|| panic!("{cpu}: 1.0.0 not refused: {old}"));
            assert!(
                why.contains("is not portable")
                    && why.contains("x86-64-v3, x86-64-v4")
                    && why.contains("this host is x86-64-v2")
                    && why.contains("invariant golden record price-advisor 1.0.0 --cpu-class x86-64-v2"),
                "{why}"
            );
            assert!(old["violations"].as_array().unwrap().is_empty(), "{old}");
        } else {
            assert_eq!(old["passed"], true, "{cpu}: {old}");
            assert!(old["refused"].is_null());
        }
        // risk-assessor (ONNX Runtime trees) has v2 golden vectors recorded under Nehalem.
        assert_eq!(version(&report, "risk-assessor", "1.1.0")["passed"], true, "{cpu}");
    }
}

#[test]
fn deploy_verification_refuses_a_non_portable_version_on_an_unrecorded_class_and_serves_the_rest() {
    let (code, out, err) = under("Nehalem", &["models", "verify"]);
    assert_ne!(code, 0, "1.0.0 cannot verify on x86-64-v2: {out}{err}");
    let text = format!("{out}{err}");
    let line = text
        .lines()
        .find(|l| l.contains("price-advisor") && l.contains("1.0.0"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("FAILED"), "{line}");
    assert!(
        text.contains("is not portable") && text.contains("this host is x86-64-v2"),
        "{text}"
    );
    assert_eq!(text.matches("READY").count(), 5, "every other version serves: {text}");
}

#[test]
fn portability_report_names_engine_and_classes_per_version() {
    let (code, out, err) = under("Haswell", &["gate", "--portability"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("this host is x86-64-v3"), "{out}");
    let row = |m: &str, v: &str| {
        out.lines()
            .find(|l| l.contains(m) && l.contains(v))
            .unwrap_or_else(|| panic!("{m} {v}: {out}"))
            .to_string()
    };
    let new = row("price-advisor", "1.0.1");
    assert!(
        new.contains("invariant-portable") && new.contains("yes") && new.contains("every class"),
        "{new}"
    );
    let old = row("price-advisor", "1.0.0");
    assert!(
        old.contains("onnxruntime") && old.contains(" no ") && old.contains("x86-64-v3"),
        "{old}"
    );
}

#[test]
fn recording_a_class_needs_a_host_of_that_class_and_a_non_portable_version() {
    let record = |version: &str, class: &str, dir: &str| {
        under(
            "Nehalem",
            &[
                "golden",
                "record",
                "price-advisor",
                version,
                "--cpu-class",
                class,
                "--golden-vectors",
                dir,
            ],
        )
    };
    let (code, _, err) = record("1.0.0", "x86-64-v3", "/nonexistent");
    assert_ne!(code, 0);
    assert!(err.contains("this host is x86-64-v2"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let (code, _, err) = record("1.0.1", "x86-64-v2", dir_arg);
    assert_ne!(code, 0);
    assert!(
        err.contains("is portable") && err.contains("without --cpu-class"),
        "{err}"
    );
    let (code, out, err) = record("1.0.0", "x86-64-v2", dir_arg);
    assert_eq!(code, 0, "{out}{err}");
    let written = dir.path().join("price-advisor/1.0.0@x86-64-v2.jsonl");
    let header = std::fs::read_to_string(&written).unwrap();
    assert!(
        header.lines().next().unwrap().contains(r#""cpu_class":"x86-64-v2""#),
        "{header}"
    );
}
