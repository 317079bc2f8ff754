//! Every portable operator against ONNX Runtime on the same graph, and against itself across
//! batch sizes and thread counts.
//!
//! Tolerances (ULP distance to ONNX Runtime's result, stated per case): 0 for operators that
//! are one IEEE operation per element or move data (Add, Sub, Mul, Div, Relu, LeakyRelu,
//! Identity, Flatten, Reshape, Concat, Cast, Scaler, the tree ensembles' labels); a few ULP for
//! transcendental functions (different polynomial approximations) and for products (ONNX
//! Runtime's kernels fuse multiply-adds and block the reduction differently). Against itself
//! the portable engine must be bit-exact: every batch size (1, 2, 7, 32, 256), every position,
//! thread counts 1 and 4.

use invariant_core::{DataType, Tensor, TensorData};
use invariant_engine::onnx::{init_runtime, OnnxEngine};
use invariant_engine::portable::PortableEngine;
use invariant_engine::{Engine, EngineOptions};
use invariant_portable::build::{float_tensor as f32_tensor, model, value_info as io};
use invariant_portable::proto::*;
use invariant_registry::{Manifest, OnnxEngine as EngineChoice, TensorSpec, VerifiedVersion};
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;

const BATCHES: [usize; 5] = [1, 2, 7, 32, 256];

/// Results this close to ONNX Runtime's pass whatever their ULP distance: ONNX Runtime's own
/// logistic and exponential approximations lose relative accuracy near zero.
const ABS_TOLERANCE: f64 = 1e-6;

fn ort() {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/onnxruntime/lib/libonnxruntime.so");
    init_runtime(&lib).unwrap_or_else(|e| panic!("ONNX Runtime must be installed by scripts/setup.sh: {e}"));
}

fn i64_tensor(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![data.len() as i64],
        data_type: Some(elem::INT64),
        name: Some(name.into()),
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(1),
        f: Some(v),
        ..Default::default()
    }
}

fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(2),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_fs(name: &str, v: &[f32]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(6),
        floats: v.to_vec(),
        ..Default::default()
    }
}

fn attr_is(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(7),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_ss(name: &str, v: &[&str]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(8),
        strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

fn node(op: &str, domain: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: Some(format!("{op}_{}", outputs[0])),
        op_type: Some(op.into()),
        domain: Some(domain.into()),
        attribute,
    }
}

fn data(n: usize, seed: u32, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            lo + (s >> 8) as f32 / (1u32 << 24) as f32 * (hi - lo)
        })
        .collect()
}

fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec::new(name, datatype, shape)
}

fn version(bytes: Vec<u8>, input: &str, width: i64, outputs: Vec<TensorSpec>, engine: EngineChoice) -> VerifiedVersion {
    fused_version(bytes, input, width, outputs, engine, false)
}

fn fused_version(
    bytes: Vec<u8>,
    input: &str,
    width: i64,
    outputs: Vec<TensorSpec>,
    engine: EngineChoice,
    fused: bool,
) -> VerifiedVersion {
    let mut manifest = Manifest::onnx(
        "op-test",
        semver::Version::new(1, 0, 0),
        vec![spec(input, DataType::Fp32, &[-1, width])],
        outputs,
        engine,
    );
    if let Some(onnx) = manifest.onnx.as_mut() {
        onnx.fused_multiply_add = fused;
    }
    VerifiedVersion::in_memory(manifest, BTreeMap::from([("model.onnx".to_string(), bytes)]))
}

fn as_f64(d: &TensorData, i: usize) -> f64 {
    match d {
        TensorData::Fp32(v) => v[i] as f64,
        TensorData::Fp64(v) => v[i],
        TensorData::Int64(v) => v[i] as f64,
        TensorData::Int32(v) => v[i] as f64,
        TensorData::Bool(v) => v[i] as u8 as f64,
        _ => f64::NAN,
    }
}

fn ulp(a: u64, b: u64, d: DataType) -> u64 {
    match d {
        DataType::Fp32 => {
            let o = |x: u64| {
                let x = x as u32;
                if x >> 31 == 1 {
                    -((x & 0x7fff_ffff) as i64)
                } else {
                    x as i64
                }
            };
            o(a).abs_diff(o(b))
        }
        DataType::Fp64 => {
            let o = |x: u64| {
                if x >> 63 == 1 {
                    -((x & 0x7fff_ffff_ffff_ffff) as i128)
                } else {
                    x as i128
                }
            };
            o(a).abs_diff(o(b)) as u64
        }
        _ => a.abs_diff(b),
    }
}

fn input(name: &str, rows: usize, width: usize, lo: f32, hi: f32) -> Tensor {
    Tensor::new(
        name,
        vec![rows, width],
        TensorData::Fp32(data(rows * width, 7, lo, hi)),
        "x",
    )
    .unwrap()
}

/// Runs a case on both engines and checks tolerance, batch and thread invariance. Returns the
/// worst ULP distance seen.
fn check(case: &str, bytes: Vec<u8>, width: usize, outputs: Vec<TensorSpec>, range: (f32, f32), tolerance: u64) -> u64 {
    check_named(case, bytes, "x", width, outputs, range, tolerance, false)
}

#[allow(clippy::too_many_arguments)]
fn check_named(
    case: &str,
    bytes: Vec<u8>,
    name: &str,
    width: usize,
    outputs: Vec<TensorSpec>,
    range: (f32, f32),
    tolerance: u64,
    fused: bool,
) -> u64 {
    ort();
    let options = |t| EngineOptions {
        instances: 1,
        threads: Some(t),
    };
    let onnx = OnnxEngine::load(
        &version(
            bytes.clone(),
            name,
            width as i64,
            outputs.clone(),
            EngineChoice::Onnxruntime,
        ),
        &options(1),
    )
    .unwrap_or_else(|e| panic!("{case}: ONNX Runtime refused the graph: {e}"));
    let portable_version = fused_version(bytes, name, width as i64, outputs, EngineChoice::Portable, fused);
    let portable = PortableEngine::load(&portable_version, &options(1)).unwrap_or_else(|e| panic!("{case}: {e}"));
    let threaded = PortableEngine::load(&portable_version, &options(4)).unwrap();
    let big = input(name, 256, width, range.0, range.1);
    let all = portable.run(std::slice::from_ref(&big)).unwrap();
    assert_eq!(
        all,
        threaded.run(std::slice::from_ref(&big)).unwrap(),
        "{case}: 4 threads changed bits"
    );
    let mut worst = 0;
    for (k, (p, o)) in all
        .iter()
        .zip(onnx.run(std::slice::from_ref(&big)).unwrap())
        .enumerate()
    {
        assert_eq!(p.shape, o.shape, "{case}: output {k} shape");
        assert_eq!(p.datatype(), o.datatype(), "{case}: output {k} type");
        let d = p.datatype();
        for (i, (a, b)) in p.data.element_bits().into_iter().zip(o.data.element_bits()).enumerate() {
            let u = ulp(a, b, d);
            worst = worst.max(u);
            let (x, y) = (as_f64(&p.data, i), as_f64(&o.data, i));
            assert!(
                u <= tolerance || (x - y).abs() <= ABS_TOLERANCE,
                "{case}: output {k} element {i}: portable {x} vs ONNX Runtime {y}: {u} ULP (tolerance {tolerance} ULP or {ABS_TOLERANCE} absolute)"
            );
        }
    }
    // Each row alone and at every position of every batch size gives the row's bits.
    for &b in &BATCHES {
        for start in [0, (256 - b) / 2, 256 - b] {
            let x = Tensor {
                name: name.into(),
                shape: vec![b, width],
                data: big.data.slice(start * width, b * width),
            };
            let part = portable.run(&[x]).unwrap();
            for (k, (p, full)) in part.iter().zip(&all).enumerate() {
                for r in 0..b {
                    assert_eq!(
                        p.row(r).unwrap().data.element_bits(),
                        full.row(start + r).unwrap().data.element_bits(),
                        "{case}: output {k} row {} differs in a batch of {b}",
                        start + r
                    );
                }
            }
        }
    }
    eprintln!("{case}: worst {worst} ULP from ONNX Runtime");
    worst
}

fn out(name: &str, cols: i64) -> (ValueInfoProto, TensorSpec) {
    (
        io(name, elem::FLOAT, &[-1, cols]),
        spec(name, DataType::Fp32, &[-1, cols]),
    )
}

fn single(case: &str, op: NodeProto, init: Vec<TensorProto>, width: usize, cols: i64, range: (f32, f32), tol: u64) {
    let (vi, s) = out("y", cols);
    check(
        case,
        model(vec![op], init, width as i64, vec![vi]),
        width,
        vec![s],
        range,
        tol,
    );
}

#[test]
fn element_wise_operators_match_onnx_runtime_exactly() {
    let b = f32_tensor("b", &[8], &data(8, 3, 0.5, 2.0));
    for op in ["Add", "Sub", "Mul", "Div"] {
        single(
            op,
            node(op, "", &["x", "b"], &["y"], vec![]),
            vec![b.clone()],
            8,
            8,
            (-4.0, 4.0),
            0,
        );
    }
    single(
        "Relu",
        node("Relu", "", &["x"], &["y"], vec![]),
        vec![],
        8,
        8,
        (-4.0, 4.0),
        0,
    );
    single(
        "LeakyRelu",
        node("LeakyRelu", "", &["x"], &["y"], vec![attr_f("alpha", 0.1)]),
        vec![],
        8,
        8,
        (-4.0, 4.0),
        0,
    );
    single(
        "Identity",
        node("Identity", "", &["x"], &["y"], vec![]),
        vec![],
        8,
        8,
        (-4.0, 4.0),
        0,
    );
    single(
        "Dropout (inference)",
        node("Dropout", "", &["x"], &["y"], vec![]),
        vec![],
        8,
        8,
        (-4.0, 4.0),
        0,
    );
    single(
        "Flatten",
        node("Flatten", "", &["x"], &["y"], vec![attr_i("axis", 1)]),
        vec![],
        8,
        8,
        (-4.0, 4.0),
        0,
    );
    single(
        "Reshape",
        node("Reshape", "", &["x", "s"], &["y"], vec![]),
        vec![i64_tensor("s", &[-1, 8])],
        8,
        8,
        (-4.0, 4.0),
        0,
    );
    single(
        "Concat",
        node("Concat", "", &["x", "x"], &["y"], vec![attr_i("axis", 1)]),
        vec![],
        8,
        16,
        (-4.0, 4.0),
        0,
    );
    let cast = vec![
        node("Cast", "", &["x"], &["d"], vec![attr_i("to", elem::DOUBLE as i64)]),
        node("Mul", "", &["d", "d"], &["dd"], vec![]),
        node("Cast", "", &["dd"], &["y"], vec![attr_i("to", elem::FLOAT as i64)]),
    ];
    let (vi, s) = out("y", 8);
    check("Cast", model(cast, vec![], 8, vec![vi]), 8, vec![s], (-4.0, 4.0), 0);
    single(
        "Scaler",
        node(
            "Scaler",
            "ai.onnx.ml",
            &["x"],
            &["y"],
            vec![
                attr_fs("offset", &data(8, 5, -1.0, 1.0)),
                attr_fs("scale", &data(8, 6, 0.1, 3.0)),
            ],
        ),
        vec![],
        8,
        8,
        (-4.0, 4.0),
        0,
    );
}

#[test]
fn transcendental_operators_stay_within_a_few_ulp() {
    single(
        "Sigmoid",
        node("Sigmoid", "", &["x"], &["y"], vec![]),
        vec![],
        8,
        8,
        (-12.0, 12.0),
        4,
    );
    single(
        "Tanh",
        node("Tanh", "", &["x"], &["y"], vec![]),
        vec![],
        8,
        8,
        (-6.0, 6.0),
        4,
    );
    single(
        "Softmax",
        node("Softmax", "", &["x"], &["y"], vec![attr_i("axis", -1)]),
        vec![],
        8,
        8,
        (-6.0, 6.0),
        4,
    );
}

#[test]
fn products_stay_within_a_few_ulp() {
    let w = f32_tensor("w", &[32, 16], &data(32 * 16, 11, 0.0, 1.0));
    single(
        "MatMul",
        node("MatMul", "", &["x", "w"], &["y"], vec![]),
        vec![w],
        32,
        16,
        (0.0, 1.0),
        8,
    );
    let wt = f32_tensor("w", &[16, 32], &data(16 * 32, 12, 0.0, 1.0));
    let c = f32_tensor("c", &[16], &data(16, 13, 0.0, 1.0));
    single(
        "Gemm",
        node(
            "Gemm",
            "",
            &["x", "w", "c"],
            &["y"],
            vec![attr_f("alpha", 0.5), attr_f("beta", 2.0), attr_i("transB", 1)],
        ),
        vec![wt, c],
        32,
        16,
        (0.0, 1.0),
        8,
    );
}

#[test]
fn fused_products_stay_within_a_few_ulp_and_are_invariant() {
    let s = out("y", 64).1;
    let bytes = invariant_portable::build::mlp(&[32, 64, 64], 5);
    let graph = ModelProto::decode(&bytes[..]).unwrap();
    assert!(graph
        .graph
        .unwrap()
        .node
        .iter()
        .any(|n| n.op_type.as_deref() == Some("Gemm")));
    let unfused = check_named(
        "MLP 32-64-64 (Gemm)",
        bytes.clone(),
        "x",
        32,
        vec![s.clone()],
        (0.0, 1.0),
        16,
        false,
    );
    let fused = check_named(
        "MLP 32-64-64 (Gemm), fused",
        bytes,
        "x",
        32,
        vec![s],
        (0.0, 1.0),
        16,
        true,
    );
    eprintln!("unfused worst {unfused} ULP, fused worst {fused} ULP from ONNX Runtime");
}

/// Two trees on 4 features: each branch mode once, leaves weighted per target or class.
fn tree_attrs(prefix: &str, ids: &[i64]) -> Vec<AttributeProto> {
    vec![
        attr_is("nodes_treeids", &[0, 0, 0, 0, 0, 1, 1, 1]),
        attr_is("nodes_nodeids", &[0, 1, 2, 3, 4, 0, 1, 2]),
        attr_is("nodes_featureids", &[0, 1, 0, 0, 0, 2, 0, 0]),
        attr_fs("nodes_values", &[0.5, -0.25, 0.0, 0.0, 0.0, 1.5, 0.0, 0.0]),
        attr_ss(
            "nodes_modes",
            &[
                "BRANCH_LEQ",
                "BRANCH_GT",
                "LEAF",
                "LEAF",
                "LEAF",
                "BRANCH_LT",
                "LEAF",
                "LEAF",
            ],
        ),
        attr_is("nodes_truenodeids", &[1, 2, 0, 0, 0, 1, 0, 0]),
        attr_is("nodes_falsenodeids", &[4, 3, 0, 0, 0, 2, 0, 0]),
        attr_is(&format!("{prefix}_treeids"), &[0, 0, 0, 1, 1]),
        attr_is(&format!("{prefix}_nodeids"), &[2, 3, 4, 1, 2]),
        attr_is(&format!("{prefix}_ids"), ids),
        attr_fs(&format!("{prefix}_weights"), &[0.75, -1.25, 0.5, 0.125, -0.5]),
    ]
}

#[test]
fn tree_ensembles_match_onnx_runtime() {
    let mut attrs = tree_attrs("target", &[0, 0, 0, 0, 0]);
    attrs.push(attr_i("n_targets", 1));
    attrs.push(attr_fs("base_values", &[0.25]));
    single(
        "TreeEnsembleRegressor",
        node("TreeEnsembleRegressor", "ai.onnx.ml", &["x"], &["y"], attrs),
        vec![],
        4,
        1,
        (-2.0, 2.0),
        0,
    );
    for (case, ids, labels, post) in [
        ("binary LOGISTIC", vec![0i64; 5], vec![0i64, 1], "LOGISTIC"),
        ("three classes SOFTMAX", vec![0, 1, 2, 1, 0], vec![3, 5, 7], "SOFTMAX"),
    ] {
        let mut attrs = tree_attrs("class", &ids);
        attrs.push(attr_is("classlabels_int64s", &labels));
        attrs.push(AttributeProto {
            name: Some("post_transform".into()),
            r#type: Some(3),
            s: Some(post.as_bytes().to_vec()),
            ..Default::default()
        });
        let classes = labels.len().max(2) as i64;
        let outputs = vec![
            io("label", elem::INT64, &[-1]),
            io("probabilities", elem::FLOAT, &[-1, classes]),
        ];
        let specs = vec![
            spec("label", DataType::Int64, &[-1]),
            spec("probabilities", DataType::Fp32, &[-1, classes]),
        ];
        let bytes = model(
            vec![node(
                "TreeEnsembleClassifier",
                "ai.onnx.ml",
                &["x"],
                &["label", "probabilities"],
                attrs,
            )],
            vec![],
            4,
            outputs,
        );
        check(case, bytes, 4, specs, (-2.0, 2.0), 4);
    }
}

/// Forests whose branches are all `BRANCH_LEQ` take the fixed-depth walk (eight trees at a
/// time): the peer benchmark's 100 gradient-boosted trees, and trees of unequal depths (a
/// one-leaf tree, a lopsided one) in one ensemble, nine trees so the walk has a partial group.
#[test]
fn leq_forests_walked_together_match_onnx_runtime_exactly() {
    let gbt = invariant_portable::build::gradient_boosted_trees(100, 3, 32, 9);
    check(
        "100 trees of depth 3",
        gbt,
        32,
        vec![spec("y", DataType::Fp32, &[-1, 1])],
        (0.0, 1.0),
        0,
    );
    let (mut tree_ids, mut node_ids, mut features, mut values, mut modes, mut trues, mut falses) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut w_tree, mut w_node, mut w_val) = (vec![], vec![], vec![]);
    for t in 0..9i64 {
        // Even trees: root -> (node 1 -> leaves 2, 3), leaf 4. Odd trees: one leaf.
        let nodes: Vec<(i64, f32, &str, i64, i64)> = if t % 2 == 0 {
            vec![
                (t % 4, 0.1 * t as f32 - 0.3, "BRANCH_LEQ", 1, 4),
                ((t + 1) % 4, 0.25, "BRANCH_LEQ", 2, 3),
                (0, 0.0, "LEAF", 0, 0),
                (0, 0.0, "LEAF", 0, 0),
                (0, 0.0, "LEAF", 0, 0),
            ]
        } else {
            vec![(0, 0.0, "LEAF", 0, 0)]
        };
        for (i, (f, v, m, a, b)) in nodes.into_iter().enumerate() {
            tree_ids.push(t);
            node_ids.push(i as i64);
            features.push(f);
            values.push(v);
            modes.push(m);
            trues.push(a);
            falses.push(b);
            if m == "LEAF" {
                w_tree.push(t);
                w_node.push(i as i64);
                w_val.push(0.125 * (t as f32 + 1.0) - 0.0625 * i as f32);
            }
        }
    }
    let attrs = vec![
        attr_is("nodes_treeids", &tree_ids),
        attr_is("nodes_nodeids", &node_ids),
        attr_is("nodes_featureids", &features),
        attr_fs("nodes_values", &values),
        attr_ss("nodes_modes", &modes),
        attr_is("nodes_truenodeids", &trues),
        attr_is("nodes_falsenodeids", &falses),
        attr_is("target_treeids", &w_tree),
        attr_is("target_nodeids", &w_node),
        attr_is("target_ids", &vec![0; w_tree.len()]),
        attr_fs("target_weights", &w_val),
        attr_i("n_targets", 1),
    ];
    single(
        "unequal depths",
        node("TreeEnsembleRegressor", "ai.onnx.ml", &["x"], &["y"], attrs),
        vec![],
        4,
        1,
        (-1.0, 1.0),
        0,
    );
}

#[test]
fn shipped_onnx_models_run_on_the_portable_engine_within_tolerance() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let risk = std::fs::read(models.join("risk-assessor/1.1.0/model.onnx")).unwrap();
    let outputs = vec![
        spec("label", DataType::Int64, &[-1]),
        spec("probabilities", DataType::Fp32, &[-1, 2]),
    ];
    // A manifest that disagrees with the graph's declared input shape is refused at load.
    let wrong = version(risk.clone(), "features", 12, outputs.clone(), EngineChoice::Portable);
    let err = PortableEngine::load(&wrong, &EngineOptions::default())
        .expect_err("12 columns for a 10-column graph")
        .to_string();
    assert!(
        err.contains("'features' has shape [-1, 10]") && err.contains("[-1, 12]"),
        "{err}"
    );
    check_named(
        "risk-assessor 1.1.0",
        risk,
        "features",
        10,
        outputs,
        (0.0, 1.0),
        4,
        false,
    );
    let price = std::fs::read(models.join("price-advisor/1.0.0/model.onnx")).unwrap();
    let worst = check_named(
        "price-advisor 1.0.0",
        price,
        "features",
        6,
        vec![spec("surge_multiplier", DataType::Fp32, &[-1, 1])],
        (0.0, 20.0),
        16,
        false,
    );
    eprintln!("price-advisor portable vs ONNX Runtime: worst {worst} ULP");
}

#[test]
fn random_and_unsupported_graphs_are_refused_with_the_reason() {
    ort();
    let random = model(
        vec![
            node("RandomNormalLike", "", &["x"], &["r"], vec![]),
            node("Add", "", &["x", "r"], &["y"], vec![]),
        ],
        vec![],
        4,
        vec![out("y", 4).0],
    );
    let training = model(
        vec![node("Dropout", "", &["x", "ratio", "train"], &["y"], vec![])],
        vec![
            f32_tensor("ratio", &[], &[0.5]),
            TensorProto {
                data_type: Some(elem::BOOL),
                name: Some("train".into()),
                int32_data: vec![1],
                ..Default::default()
            },
        ],
        4,
        vec![out("y", 4).0],
    );
    for (case, bytes, op) in [
        ("random", random, "RandomNormalLike"),
        ("training dropout", training, "Dropout in training mode"),
    ] {
        for engine in [EngineChoice::Onnxruntime, EngineChoice::Portable] {
            let v = version(bytes.clone(), "x", 4, vec![out("y", 4).1], engine);
            let err = match engine {
                EngineChoice::Onnxruntime => OnnxEngine::load(&v, &EngineOptions::default()).map(|_| ()),
                EngineChoice::Portable => PortableEngine::load(&v, &EngineOptions::default()).map(|_| ()),
            }
            .expect_err(case)
            .to_string();
            assert!(
                err.contains("nondeterministic") && err.contains(op),
                "{case} {engine:?}: {err}"
            );
        }
    }
    let conv = model(
        vec![node("Erf", "", &["x"], &["y"], vec![])],
        vec![],
        4,
        vec![out("y", 4).0],
    );
    let err = PortableEngine::load(
        &version(conv, "x", 4, vec![out("y", 4).1], EngineChoice::Portable),
        &EngineOptions::default(),
    )
    .expect_err("Erf is not portable")
    .to_string();
    assert!(err.contains("outside the portable set") && err.contains("Erf"), "{err}");
}
