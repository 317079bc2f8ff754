//! Every shipped model version scores known inputs to exactly the recorded bits. These bits
//! were recorded once from this server and must never change: a difference means a model's
//! answers changed.

use invariant_blackbox::*;
use serde_json::json;

const TRUST_ROWS: [[f64; 8]; 3] = [TRUST_ROW, [0.0; 8], [3650.0, 500.0, 0.5, 5.0, 72.0, 3.0, 20.0, 5.0]];
const RISK_ROWS: [[f64; 10]; 3] = [
    [249.99, 1.8, 35.0, 6.0, 2.0, 1.0, 3.0, 2.0, 0.35, 3.0],
    [0.0; 10],
    [20000.0, 10.0, 3650.0, 50.0, 10.0, 1.0, 1000.0, 23.0, 1.0, 20.0],
];
const PRICE_ROWS: [[f64; 6]; 3] = [
    [1800.0, 600.0, 3.0, 18.0, 0.0, 4.5],
    [0.0; 6],
    [5000.0, 100.0, 50.0, 23.0, 1.0, 50.0],
];

async fn score(s: &Server, model: &str, version: &str, rows: &[&[f64]]) -> serde_json::Value {
    let (status, r) = s
        .post(
            &format!("/v2/models/{model}/versions/{version}/infer"),
            &features_request(rows),
        )
        .await;
    assert_eq!(status, 200, "{model} {version}: {r}");
    assert_eq!(r["model_version"], version);
    r
}

#[tokio::test]
async fn shipped_models_give_the_recorded_bits() {
    let s = Server::start().await;
    let trust: Vec<&[f64]> = TRUST_ROWS.iter().map(|r| &r[..]).collect();
    let risk: Vec<&[f64]> = RISK_ROWS.iter().map(|r| &r[..]).collect();
    let price: Vec<&[f64]> = PRICE_ROWS.iter().map(|r| &r[..]).collect();

    let r = score(&s, "trust-scorer", "1.1.0", &trust).await;
    assert_eq!(
        f32_bits(output(&r, "trust_score")),
        [0x3f769b4e, 0x3c14d780, 0x382968ad]
    );
    let r = score(&s, "trust-scorer", "1.2.0", &trust).await;
    assert_eq!(
        f32_bits(output(&r, "trust_score")),
        [0x3f537c58, 0x38891f38, 0x39b6c361]
    );

    let r = score(&s, "risk-assessor", "1.0.0", &risk).await;
    assert_eq!(output(&r, "label")["data"], json!([1, 0, 1]));
    assert_eq!(
        f32_bits(output(&r, "probabilities")),
        [0x3c3a9c00, 0x3f7d1590, 0x3f770868, 0x3d0f7980, 0x3b301100, 0x3f7f4fef]
    );
    let r = score(&s, "risk-assessor", "1.1.0", &risk).await;
    assert_eq!(output(&r, "label")["data"], json!([1, 1, 1]));
    assert_eq!(
        f32_bits(output(&r, "probabilities")),
        [0x3cd29780, 0x3f796b44, 0x3e654f70, 0x3f46ac24, 0x35000000, 0x3f7ffff8]
    );

    let r = score(&s, "price-advisor", "1.0.0", &price).await;
    assert_eq!(
        f32_bits(output(&r, "surge_multiplier")),
        [0x401dab08, 0x3f86d9e1, 0x4149e9cb]
    );
}

#[tokio::test]
async fn a_row_scores_the_same_alone_repeated_and_in_a_batch() {
    let s = Server::start().await;
    let trust: Vec<&[f64]> = TRUST_ROWS.iter().map(|r| &r[..]).collect();
    let batch = score(&s, "trust-scorer", "1.2.0", &trust).await;
    let batch_bits = f32_bits(output(&batch, "trust_score"));
    for (i, row) in TRUST_ROWS.iter().enumerate() {
        for _ in 0..3 {
            let alone = score(&s, "trust-scorer", "1.2.0", &[&row[..]]).await;
            assert_eq!(f32_bits(output(&alone, "trust_score")), [batch_bits[i]], "row {i}");
        }
    }
}

#[tokio::test]
async fn json_spelling_does_not_change_bits() {
    let s = Server::start().await;
    let spelled = [
        r#"{"inputs":[{"name":"features","shape":[1,8],"datatype":"FP32","data":[420,57,0.02,4.6,3.5,2,1,0]}]}"#,
        r#"{"inputs":[{"datatype":"FP32","data":[[420.0,57.0,2e-2,4.60,3.5e0,2.0,1.0,0.0]],"shape":[1,8],"name":"features"}]}"#,
    ];
    let mut seen = Vec::new();
    for body in spelled {
        let (status, r) = s
            .post_raw("/v2/models/trust-scorer/versions/1.2.0/infer", body.to_string(), &[])
            .await;
        assert_eq!(status, 200, "{r}");
        seen.push(f32_bits(output(&r, "trust_score")));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], [0x3f537c58]);
}
