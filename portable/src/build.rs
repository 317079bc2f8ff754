//! Builders of small ONNX graphs (for benchmarks and tests): a ReLU MLP of `Gemm` nodes and a
//! gradient-boosted tree ensemble, both with one FP32 input `x` `[N, width]`, weights drawn
//! from a fixed-seed generator.

use crate::proto::*;
use prost::Message;

fn uniform(n: usize, seed: &mut u32, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            lo + (*seed >> 8) as f32 / (1u32 << 24) as f32 * (hi - lo)
        })
        .collect()
}

/// A FLOAT constant, its data in `raw_data`.
pub fn float_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: Some(elem::FLOAT),
        name: Some(name.into()),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// A graph input or output of an ONNX element type; `-1` dimensions are symbolic (`N`).
pub fn value_info(name: &str, elem_type: i32, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            dim_value: (d >= 0).then_some(d),
            dim_param: (d < 0).then(|| "N".to_string()),
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: Some(elem_type),
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

fn attr(name: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

/// An opset-17 (`ai.onnx.ml` 3) model of `nodes` with one FLOAT input `x` `[N, width]`.
pub fn model(nodes: Vec<NodeProto>, initializer: Vec<TensorProto>, width: i64, output: Vec<ValueInfoProto>) -> Vec<u8> {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![
            OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            },
            OperatorSetIdProto {
                domain: Some("ai.onnx.ml".into()),
                version: Some(3),
            },
        ],
        producer_name: Some("invariant-portable".into()),
        graph: Some(GraphProto {
            node: nodes,
            name: Some("g".into()),
            initializer,
            input: vec![value_info("x", elem::FLOAT, &[-1, width])],
            output,
            ..Default::default()
        }),
        training_info: Vec::new(),
    }
    .encode_to_vec()
}

/// An MLP `sizes[0] → sizes[1] → … → sizes[last]`: `Gemm` then `Relu` per hidden layer, a
/// plain `Gemm` last; output `y` `[N, sizes[last]]`.
pub fn mlp(sizes: &[usize], seed: u32) -> Vec<u8> {
    let mut s = seed;
    let (mut nodes, mut init) = (Vec::new(), Vec::new());
    let mut prev = "x".to_string();
    for (i, w) in sizes.windows(2).enumerate() {
        let (k, n) = (w[0], w[1]);
        let scale = 1.0 / (k as f32).sqrt();
        init.push(float_tensor(
            &format!("w{i}"),
            &[k as i64, n as i64],
            &uniform(k * n, &mut s, -scale, scale),
        ));
        init.push(float_tensor(
            &format!("b{i}"),
            &[n as i64],
            &uniform(n, &mut s, -0.1, 0.1),
        ));
        let last = i + 2 == sizes.len();
        let out = if last { "y".to_string() } else { format!("g{i}") };
        nodes.push(NodeProto {
            input: vec![prev.clone(), format!("w{i}"), format!("b{i}")],
            output: vec![out.clone()],
            name: Some(format!("gemm{i}")),
            op_type: Some("Gemm".into()),
            ..Default::default()
        });
        prev = out;
        if !last {
            let r = format!("r{i}");
            nodes.push(NodeProto {
                input: vec![prev.clone()],
                output: vec![r.clone()],
                name: Some(format!("relu{i}")),
                op_type: Some("Relu".into()),
                ..Default::default()
            });
            prev = r;
        }
    }
    let last = *sizes.last().unwrap_or(&1) as i64;
    model(
        nodes,
        init,
        sizes[0] as i64,
        vec![value_info("y", elem::FLOAT, &[-1, last])],
    )
}

/// `trees` full binary trees of `depth` on `width` features (`BRANCH_LEQ`), summed into one
/// regression target `y` `[N, 1]`.
pub fn gradient_boosted_trees(trees: usize, depth: u32, width: usize, seed: u32) -> Vec<u8> {
    let mut s = seed;
    let per_tree = (1usize << (depth + 1)) - 1;
    let inner = (1usize << depth) - 1;
    let (mut tree_ids, mut node_ids, mut features, mut values, mut modes, mut trues, mut falses) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut w_tree, mut w_node, mut w_id, mut w_val) = (vec![], vec![], vec![], vec![]);
    for t in 0..trees {
        for n in 0..per_tree {
            tree_ids.push(t as i64);
            node_ids.push(n as i64);
            if n < inner {
                let f = uniform(1, &mut s, 0.0, width as f32)[0] as i64;
                features.push(f.min(width as i64 - 1));
                values.push(uniform(1, &mut s, -1.0, 1.0)[0]);
                modes.push(b"BRANCH_LEQ".to_vec());
                trues.push(2 * n as i64 + 1);
                falses.push(2 * n as i64 + 2);
            } else {
                features.push(0);
                values.push(0.0);
                modes.push(b"LEAF".to_vec());
                trues.push(0);
                falses.push(0);
                w_tree.push(t as i64);
                w_node.push(n as i64);
                w_id.push(0);
                w_val.push(uniform(1, &mut s, -0.1, 0.1)[0]);
            }
        }
    }
    let ints = |name: &str, v: Vec<i64>| AttributeProto {
        ints: v,
        r#type: Some(7),
        ..attr(name)
    };
    let floats = |name: &str, v: Vec<f32>| AttributeProto {
        floats: v,
        r#type: Some(6),
        ..attr(name)
    };
    let attribute = vec![
        ints("nodes_treeids", tree_ids),
        ints("nodes_nodeids", node_ids),
        ints("nodes_featureids", features),
        floats("nodes_values", values),
        AttributeProto {
            strings: modes,
            r#type: Some(8),
            ..attr("nodes_modes")
        },
        ints("nodes_truenodeids", trues),
        ints("nodes_falsenodeids", falses),
        ints("target_treeids", w_tree),
        ints("target_nodeids", w_node),
        ints("target_ids", w_id),
        floats("target_weights", w_val),
        AttributeProto {
            i: Some(1),
            r#type: Some(2),
            ..attr("n_targets")
        },
        floats("base_values", vec![0.5]),
    ];
    let node = NodeProto {
        input: vec!["x".into()],
        output: vec!["y".into()],
        name: Some("trees".into()),
        op_type: Some("TreeEnsembleRegressor".into()),
        domain: Some("ai.onnx.ml".into()),
        attribute,
    };
    model(
        vec![node],
        Vec::new(),
        width as i64,
        vec![value_info("y", elem::FLOAT, &[-1, 1])],
    )
}
