//! Portable kernels vs ONNX Runtime on the same graphs: the shipped MLP and tree models and
//! the peer benchmark's models (an MLP 32→64→64→2 and 100 gradient-boosted trees of depth 3
//! on 32 features), at batch 1, 32 and 256. Prints µs per run and the time ratio
//! portable / ONNX Runtime, measured alternately in one run. The peer MLP also runs with
//! `fused_multiply_add = true`.

use anyhow::{Context, Result};
use invariant_core::{DataType, Tensor, TensorData};
use invariant_engine::onnx::OnnxEngine;
use invariant_engine::portable::PortableEngine;
use invariant_engine::{Engine, EngineOptions};
use invariant_registry::{Manifest, OnnxEngine as Choice, TensorSpec, VerifiedVersion};
use std::collections::BTreeMap;
use std::time::Instant;

fn version(
    bytes: &[u8],
    input: &str,
    width: i64,
    outputs: &[TensorSpec],
    engine: Choice,
    fused: bool,
) -> VerifiedVersion {
    let mut manifest = Manifest::onnx(
        "bench",
        semver::Version::new(1, 0, 0),
        vec![TensorSpec::new(input, DataType::Fp32, &[-1, width])],
        outputs.to_vec(),
        engine,
    );
    if let Some(onnx) = manifest.onnx.as_mut() {
        onnx.fused_multiply_add = fused;
    }
    VerifiedVersion::in_memory(manifest, BTreeMap::from([("model.onnx".to_string(), bytes.to_vec())]))
}

fn time(engine: &dyn Engine, inputs: &[Tensor], seconds: f64) -> Result<f64> {
    for _ in 0..20 {
        engine.run(inputs)?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        engine.run(inputs)?;
        n += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// A benchmarked graph: label, `.onnx` bytes, input name, input width, outputs, fused
/// multiply-adds on the portable side.
type Case = (&'static str, Vec<u8>, &'static str, i64, Vec<TensorSpec>, bool);

/// Runs the section; `models` is the shipped repository.
pub fn bench_portable(models: &std::path::Path, seconds: f64) -> Result<()> {
    let read = |p: &str| std::fs::read(models.join(p)).with_context(|| p.to_string());
    let one = |n: &str, c| vec![TensorSpec::new(n, DataType::Fp32, &[-1, c])];
    let classifier = vec![
        TensorSpec::new("label", DataType::Int64, &[-1]),
        TensorSpec::new("probabilities", DataType::Fp32, &[-1, 2]),
    ];
    let cases: Vec<Case> = vec![
        (
            "price-advisor (MLP 6-32-16-1)",
            read("price-advisor/1.0.0/model.onnx")?,
            "features",
            6,
            one("surge_multiplier", 1),
            false,
        ),
        (
            "risk-assessor 1.1.0 (trees)",
            read("risk-assessor/1.1.0/model.onnx")?,
            "features",
            10,
            classifier,
            false,
        ),
        (
            "peer MLP 32-64-64-2",
            invariant_portable::build::mlp(&[32, 64, 64, 2], 7),
            "x",
            32,
            one("y", 2),
            false,
        ),
        (
            "peer MLP 32-64-64-2, fused",
            invariant_portable::build::mlp(&[32, 64, 64, 2], 7),
            "x",
            32,
            one("y", 2),
            true,
        ),
        (
            "peer GBT 100 x depth 3 on 32",
            invariant_portable::build::gradient_boosted_trees(100, 3, 32, 9),
            "x",
            32,
            one("y", 1),
            false,
        ),
    ];
    println!("\n# portable kernels vs ONNX Runtime (same graph, one thread each), {seconds} s per cell");
    println!(
        "{:<30} {:>5} {:>14} {:>12} {:>8}",
        "model", "batch", "portable us", "ORT us", "ratio"
    );
    let options = EngineOptions {
        instances: 1,
        threads: Some(1),
    };
    for (name, bytes, input, width, outputs, fused) in cases {
        let ort = OnnxEngine::load(
            &version(&bytes, input, width, &outputs, Choice::Onnxruntime, false),
            &options,
        )?;
        let portable = PortableEngine::load(
            &version(&bytes, input, width, &outputs, Choice::Portable, fused),
            &options,
        )?;
        for batch in [1usize, 32, 256] {
            let n = batch * width as usize;
            let data = (0..n).map(|i| ((i * 37) % 101) as f32 / 101.0).collect();
            let x = vec![Tensor::new(
                input,
                vec![batch, width as usize],
                TensorData::Fp32(data),
                input,
            )?];
            // Alternate halves so drift affects both sides.
            let p1 = time(&portable, &x, seconds / 2.0)?;
            let o1 = time(&ort, &x, seconds / 2.0)?;
            let o2 = time(&ort, &x, seconds / 2.0)?;
            let p2 = time(&portable, &x, seconds / 2.0)?;
            let (p, o) = ((p1 + p2) / 2.0, (o1 + o2) / 2.0);
            println!("{name:<30} {batch:>5} {p:>14.2} {o:>12.2} {:>7.2}x", p / o);
        }
    }
    Ok(())
}
