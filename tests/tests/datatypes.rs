//! Every V2 datatype travels through JSON exactly, using the `dtype-echo` fixture (an ONNX
//! graph of Identity nodes) served beside the shipped models.

use invariant_blackbox::*;
use serde_json::json;

const INFER: &str = "/v2/models/dtype-echo/infer";

async fn start() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (repo, golden) = (dir.path().join("models"), dir.path().join("golden"));
    copy_tree(&shipped_models(), &repo);
    copy_tree(&fixtures().join("models/dtype-echo"), &repo.join("dtype-echo"));
    copy_tree(&shipped_golden(), &golden);
    copy_tree(
        &fixtures().join("golden-vectors/dtype-echo"),
        &golden.join("dtype-echo"),
    );
    let s = Server::start_with(ServerOptions {
        model_repository: repo,
        golden_vectors: golden,
        ..Default::default()
    })
    .await;
    (s, dir)
}

fn request(b: serde_json::Value, i32: serde_json::Value, i64: serde_json::Value, f32: &str, f64: &str) -> String {
    format!(
        r#"{{"inputs":[
            {{"name":"b","shape":[1,2],"datatype":"BOOL","data":{b}}},
            {{"name":"i32","shape":[1,2],"datatype":"INT32","data":{i32}}},
            {{"name":"i64","shape":[1,2],"datatype":"INT64","data":{i64}}},
            {{"name":"f32","shape":[1,2],"datatype":"FP32","data":{f32}}},
            {{"name":"f64","shape":[1,2],"datatype":"FP64","data":{f64}}}]}}"#
    )
}

async fn post_text(s: &Server, body: String) -> (u16, String) {
    let r = s
        .client
        .post(format!("{}{INFER}", s.url))
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn each_datatype_round_trips_exactly() {
    let (s, _repo) = start().await;
    let body = request(
        json!([true, false]),
        json!([i32::MIN, i32::MAX]),
        json!([i64::MIN, i64::MAX]),
        "[0.1, -0.0]",
        "[0.1, 1e308]",
    );
    let (status, text) = post_text(&s, body).await;
    assert_eq!(status, 200, "{text}");
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(output(&r, "b_out")["data"], json!([true, false]));
    assert_eq!(output(&r, "b_out")["datatype"], "BOOL");
    assert_eq!(output(&r, "i32_out")["data"], json!([i32::MIN, i32::MAX]));
    assert_eq!(output(&r, "i32_out")["datatype"], "INT32");
    assert_eq!(output(&r, "i64_out")["data"], json!([i64::MIN, i64::MAX]));
    assert_eq!(output(&r, "i64_out")["datatype"], "INT64");
    assert_eq!(f32_bits(output(&r, "f32_out")), [0.1f32.to_bits(), (-0.0f32).to_bits()]);
    assert_eq!(output(&r, "f32_out")["datatype"], "FP32");
    // On the wire: FP32 0.1 is written as 0.1 (not its f64 widening 0.10000000149011612),
    // FP64 values as their shortest round-trip decimal.
    assert!(text.contains(r#""data":[0.1,-0.0]"#), "{text}");
    assert!(text.contains(r#""data":[0.1,1e+308]"#), "{text}");
    assert_eq!(output(&r, "f64_out")["datatype"], "FP64");
}

#[tokio::test]
async fn fp32_json_numbers_are_rounded_once_to_f32() {
    let (s, _repo) = start().await;
    // Just above the midpoint between 1.0 and the next f32: correctly rounded it is
    // 1.0000001 (0x3f800001); parsed to f64 first and then cast it would become 1.0.
    let body = request(
        json!([true, true]),
        json!([0, 0]),
        json!([0, 0]),
        "[1.00000005960464477539062500000001, 1]",
        "[0, 0]",
    );
    let (status, text) = post_text(&s, body).await;
    assert_eq!(status, 200, "{text}");
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(f32_bits(output(&r, "f32_out")), [0x3f80_0001, 0x3f80_0000]);
}

#[tokio::test]
async fn non_finite_values_pass_only_where_allowed() {
    let (s, _repo) = start().await;
    let ok = request(
        json!([true, true]),
        json!([0, 0]),
        json!([0, 0]),
        "[0, 0]",
        r#"["NaN", "-Infinity"]"#,
    );
    let (status, text) = post_text(&s, ok).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""data":["NaN","-Infinity"]"#), "{text}");
    let refused = request(
        json!([true, true]),
        json!([0, 0]),
        json!([0, 0]),
        r#"[0, "Infinity"]"#,
        "[0, 0]",
    );
    assert_error(
        &s.post_raw(INFER, refused, &[]).await,
        400,
        &["inputs[3].data[1]", "'f32'"],
    );
}

#[tokio::test]
async fn out_of_range_and_mistyped_elements_are_400() {
    let (s, _repo) = start().await;
    let body = request(
        json!([true, true]),
        json!([0, 2147483648i64]),
        json!([0, 0]),
        "[0, 0]",
        "[0, 0]",
    );
    assert_error(
        &s.post_raw(INFER, body, &[]).await,
        400,
        &["inputs[1].data[1]", "INT32", "out of range"],
    );
    let body = request(json!([1, 0]), json!([0, 0]), json!([0, 0]), "[0, 0]", "[0, 0]");
    assert_error(&s.post_raw(INFER, body, &[]).await, 400, &["inputs[0].data[0]", "BOOL"]);
    let body = request(json!([true, true]), json!([0, 0]), json!([1.5, 0]), "[0, 0]", "[0, 0]");
    assert_error(
        &s.post_raw(INFER, body, &[]).await,
        400,
        &["inputs[2].data[0]", "INT64"],
    );
    let body = request(json!([true, true]), json!([0, 0]), json!([0, 0]), "[0, 0]", "[0, null]");
    assert_error(&s.post_raw(INFER, body, &[]).await, 400, &["inputs[4].data[1]", "FP64"]);
    s.assert_still_serving().await;
}
