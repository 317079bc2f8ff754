//! Bad requests get a clear V2 error naming the field, with the right status, and the server
//! keeps serving after each one.

use invariant_blackbox::*;
use serde_json::json;

const INFER: &str = "/v2/models/trust-scorer/infer";

fn input(shape: serde_json::Value, datatype: &str, data: serde_json::Value) -> serde_json::Value {
    json!({ "inputs": [{ "name": "features", "shape": shape, "datatype": datatype, "data": data }] })
}

#[tokio::test]
async fn malformed_json_is_400() {
    let s = Server::start().await;
    for body in ["{\"inputs\": [", "not json", "", "{\"inputs\": []} trailing", "[1,2]"] {
        let got = s.post_raw(INFER, body.to_string(), &[]).await;
        assert_eq!(got.0, 400, "body {body:?} gave {}", got.1);
        assert!(got.1["error"].as_str().is_some_and(|m| !m.is_empty()), "{}", got.1);
    }
    assert_error(
        &s.post_raw(INFER, "{\"inputs\": [".to_string(), &[]).await,
        400,
        &["malformed JSON"],
    );
    assert_error(&s.post(INFER, &json!({"id": "x"})).await, 400, &["inputs"]);
    assert_error(
        &s.post(
            INFER,
            &json!({"inputs": [{"name": "features", "shape": [1, "8"], "datatype": "FP32", "data": []}]}),
        )
        .await,
        400,
        &["inputs[0].shape[1]"],
    );
    assert_error(
        &s.post(
            INFER,
            &json!({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32"}]}),
        )
        .await,
        400,
        &["inputs[0]", "data"],
    );
    s.assert_still_serving().await;
}

#[tokio::test]
async fn wrong_shape_is_400_naming_the_shape() {
    let s = Server::start().await;
    let data = json!(TRUST_ROW);
    assert_error(
        &s.post(INFER, &input(json!([8]), "FP32", data.clone())).await,
        400,
        &["inputs[0].shape", "rank"],
    );
    assert_error(
        &s.post(INFER, &input(json!([2, 4]), "FP32", data.clone())).await,
        400,
        &["inputs[0].shape", "[-1, 8]"],
    );
    assert_error(
        &s.post(INFER, &input(json!([1, -8]), "FP32", data.clone())).await,
        400,
        &["inputs[0].shape"],
    );
    assert_error(
        &s.post(INFER, &input(json!([0, 8]), "FP32", json!([]))).await,
        400,
        &["inputs[0].shape", "batch"],
    );
    let big: Vec<f64> = TRUST_ROW.iter().copied().cycle().take(8 * 257).collect();
    assert_error(
        &s.post(INFER, &input(json!([257, 8]), "FP32", json!(big))).await,
        400,
        &["inputs[0].shape", "max_batch_size 256"],
    );
    s.assert_still_serving().await;
}

#[tokio::test]
async fn element_count_not_matching_shape_is_400() {
    let s = Server::start().await;
    assert_error(
        &s.post(INFER, &input(json!([2, 8]), "FP32", json!(TRUST_ROW))).await,
        400,
        &["inputs[0].data", "16 elements", "8 were given"],
    );
    s.assert_still_serving().await;
}

#[tokio::test]
async fn wrong_or_unknown_datatype_is_400() {
    let s = Server::start().await;
    let ints = json!([420, 57, 0, 4, 3, 2, 1, 0]);
    assert_error(
        &s.post(INFER, &input(json!([1, 8]), "INT64", ints.clone())).await,
        400,
        &["inputs[0].datatype", "FP32", "INT64"],
    );
    assert_error(
        &s.post(INFER, &input(json!([1, 8]), "FP16", ints.clone())).await,
        400,
        &["inputs[0].datatype", "FP16"],
    );
    // BYTES is a V2 datatype the server decodes; a model declaring FP32 still refuses it.
    let strings = json!(["a", "b", "c", "d", "e", "f", "g", "h"]);
    assert_error(
        &s.post(INFER, &input(json!([1, 8]), "BYTES", strings)).await,
        400,
        &["inputs[0].datatype", "FP32", "BYTES"],
    );
    assert_error(
        &s.post(INFER, &input(json!([1, 8]), "BYTES", ints)).await,
        400,
        &["inputs[0].data[0]", "BYTES", "expected a string"],
    );
    let mut bad = TRUST_ROW.map(|x| json!(x)).to_vec();
    bad[3] = json!("high");
    assert_error(
        &s.post(INFER, &input(json!([1, 8]), "FP32", json!(bad))).await,
        400,
        &["inputs[0].data[3]", "high"],
    );
    s.assert_still_serving().await;
}

#[tokio::test]
async fn nan_and_inf_are_400_where_the_model_forbids_them() {
    let s = Server::start().await;
    for (i, special) in [json!("NaN"), json!("Infinity"), json!("-Infinity"), json!(1e39)]
        .into_iter()
        .enumerate()
    {
        let mut row = TRUST_ROW.map(|x| json!(x)).to_vec();
        row[i] = special.clone();
        assert_error(
            &s.post(INFER, &input(json!([1, 8]), "FP32", json!(row))).await,
            400,
            &[
                &format!("inputs[0].data[{i}]"),
                "NaN and infinite values are not allowed",
            ],
        );
    }
    s.assert_still_serving().await;
}

#[tokio::test]
async fn unknown_missing_and_duplicate_inputs_are_400() {
    let s = Server::start().await;
    let got = s
        .post(
            INFER,
            &json!({"inputs": [{"name": "feats", "shape": [1, 8], "datatype": "FP32", "data": TRUST_ROW}]}),
        )
        .await;
    assert_error(&got, 400, &["inputs[0].name", "feats", "features"]);
    assert_error(
        &s.post(INFER, &json!({"inputs": []})).await,
        400,
        &["missing input 'features'"],
    );
    let one = json!({"name": "features", "shape": [1, 8], "datatype": "FP32", "data": TRUST_ROW});
    assert_error(
        &s.post(INFER, &json!({"inputs": [one.clone(), one]})).await,
        400,
        &["inputs[1].name", "twice"],
    );
    let mut req = trust_request(&[TRUST_ROW]);
    req["outputs"] = json!([{"name": "score"}]);
    assert_error(
        &s.post(INFER, &req).await,
        400,
        &["outputs[0].name", "score", "trust_score"],
    );
    s.assert_still_serving().await;
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let s = Server::start_with(ServerOptions {
        max_body_bytes: 64 * 1024,
        ..Default::default()
    })
    .await;
    let rows: Vec<[f64; 8]> = vec![TRUST_ROW; 2000];
    let body = trust_request(&rows).to_string();
    assert!(body.len() > 64 * 1024);
    assert_error(
        &s.post_raw(INFER, body.clone(), &[]).await,
        413,
        &["larger than the limit of 65536 bytes"],
    );
    // Without a Content-Length the limit applies as the chunks arrive.
    let chunks = body.as_bytes().chunks(16 * 1024).map(<[u8]>::to_vec).collect();
    assert_error(
        &s.post_chunked(INFER, chunks).await,
        413,
        &["larger than the limit of 65536 bytes"],
    );
    s.assert_still_serving().await;
}

#[tokio::test]
async fn corridor_errors() {
    let s = Server::start().await;
    let body = trust_request(&[TRUST_ROW]).to_string();
    assert_error(
        &s.post_raw(INFER, body.clone(), &[("x-corridor", "FR-MA")]).await,
        400,
        &["unknown corridor 'FR-MA'", "UAE-SA"],
    );
    assert_error(
        &s.post_raw(INFER, body.clone(), &[("x-corridor", "nonsense")]).await,
        400,
        &["corridor", "nonsense"],
    );
    let mut req = trust_request(&[TRUST_ROW]);
    req["parameters"] = json!({"corridor": "US-EG"});
    assert_error(
        &s.post_raw(INFER, req.to_string(), &[("x-corridor", "UK-NG")]).await,
        400,
        &["UK-NG", "US-EG", "different corridors"],
    );
    req["parameters"] = json!({"corridor": 7});
    assert_error(&s.post(INFER, &req).await, 400, &["parameters.corridor"]);
    s.assert_still_serving().await;

    // Without a configured default, a request must name its corridor.
    let strict = Server::start_with(ServerOptions {
        default_corridor: None,
        ..Default::default()
    })
    .await;
    assert_error(
        &strict.post_raw(INFER, body.clone(), &[]).await,
        400,
        &["no corridor", "x-corridor"],
    );
    let (status, r) = strict.post_raw(INFER, body, &[("x-corridor", "UAE-SA")]).await;
    assert_eq!(status, 200, "{r}");
}
