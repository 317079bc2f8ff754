//! Native feed-forward networks.
//!
//! Weights come from the version's verified safetensors bytes. With the default kernel the
//! affine map `x · W + b` is [`fixed_order_matmul`] and the activations are the portable
//! element-wise kernels of `invariant-portable` (`libm` exponentials, compiled into the
//! binary): each output element is reduced in one fixed order that does not depend on the
//! batch size, the row's position, the thread count or the CPU. candle's `matmul` (kernel
//! `candle-matmul`) picks blockings and vector paths by problem size and CPU, so a row's
//! bits can differ between batch 1 and batch 2+ (measured; see DESIGN.md); it is kept to
//! measure against and to prove the gate catches it.

use crate::{Engine, EngineError, Portability, RuntimeInfo};
use candle_core::{DType, Device, Tensor as CTensor};
use invariant_core::{Tensor, TensorData};
pub use invariant_portable::fixed_order_matmul;
use invariant_portable::{sigmoid, Float};
use invariant_registry::{Activation, Kernel, VerifiedVersion};

/// One layer: weight `[in, out]` row-major, bias `[out]`, activation.
#[derive(Debug)]
struct Layer {
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// `Wᵀ` (`[out, in]`) and `b` as candle tensors, for [`Kernel::CandleMatmul`].
    candle_weight_t: CTensor,
    candle_bias: CTensor,
    inputs: usize,
    outputs: usize,
    activation: Activation,
}

/// A feed-forward network described by a manifest's `[native]` section.
#[derive(Debug)]
pub struct NativeEngine {
    layers: Vec<Layer>,
    input_size: usize,
    output_name: String,
    threads: usize,
    kernel: Kernel,
}

fn load_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Load(e.to_string())
}

fn run_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Runtime(e.to_string())
}

/// The activation in place, element by element, with the portable kernels.
fn activate_portable(v: &mut [f32], activation: Activation) {
    match activation {
        Activation::Relu => v.iter_mut().for_each(|x| *x = if *x > 0.0 { *x } else { 0.0 }),
        Activation::Sigmoid => v.iter_mut().for_each(|x| *x = sigmoid(*x)),
        Activation::Tanh => v.iter_mut().for_each(|x| *x = Float::tanh(*x)),
        Activation::Identity => {}
    }
}

/// candle's activations, for the `candle-matmul` kernel.
fn activate(t: CTensor, activation: Activation) -> candle_core::Result<CTensor> {
    match activation {
        Activation::Relu => t.relu(),
        Activation::Sigmoid => (t.neg()?.exp()? + 1.0)?.recip(),
        Activation::Tanh => t.tanh(),
        Activation::Identity => Ok(t),
    }
}

impl NativeEngine {
    /// Builds the network from a verified version: reads `layers.<i>.weight` and
    /// `layers.<i>.bias` from the safetensors artifact and checks their shapes against the
    /// manifest.
    pub fn load(version: &VerifiedVersion) -> Result<Self, EngineError> {
        let manifest = &version.manifest;
        let native = manifest
            .native
            .as_ref()
            .ok_or_else(|| load_err("manifest has no [native] section"))?;
        let bytes = version
            .artifact(&native.weights)
            .ok_or_else(|| load_err(format!("weights '{}' not among the verified artifacts", native.weights)))?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| load_err(format!("{}: {e}", native.weights)))?;
        let mut layers = Vec::with_capacity(native.layers.len());
        let mut inputs = native.input_size;
        for (i, spec) in native.layers.iter().enumerate() {
            let fetch = |suffix: &str, shape: &[usize]| -> Result<Vec<f32>, EngineError> {
                let name = format!("layers.{i}.{suffix}");
                let t = tensors
                    .get(&name)
                    .ok_or_else(|| load_err(format!("{}: tensor '{name}' missing", native.weights)))?;
                if t.dtype() != DType::F32 || t.dims() != shape {
                    return Err(load_err(format!(
                        "{}: tensor '{name}' is {:?} {:?}, manifest implies F32 {shape:?}",
                        native.weights,
                        t.dtype(),
                        t.dims()
                    )));
                }
                t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(load_err)
            };
            let weight = fetch("weight", &[inputs, spec.size])?;
            let bias = fetch("bias", &[spec.size])?;
            let candle_weight_t = CTensor::from_slice(&weight, (inputs, spec.size), &Device::Cpu)
                .and_then(|w| w.t()?.contiguous())
                .map_err(load_err)?;
            let candle_bias = CTensor::from_slice(&bias, spec.size, &Device::Cpu).map_err(load_err)?;
            layers.push(Layer {
                weight,
                bias,
                candle_weight_t,
                candle_bias,
                inputs,
                outputs: spec.size,
                activation: spec.activation,
            });
            inputs = spec.size;
        }
        let expected = 2 * native.layers.len();
        if tensors.len() != expected {
            let mut extra: Vec<_> = tensors.keys().filter(|k| !k.starts_with("layers.")).cloned().collect();
            extra.sort();
            return Err(load_err(format!(
                "{}: holds {} tensors, the manifest's {} layers need {expected} (unexpected: {extra:?})",
                native.weights,
                tensors.len(),
                native.layers.len()
            )));
        }
        Ok(Self {
            layers,
            input_size: native.input_size,
            output_name: manifest.outputs[0].name.clone(),
            threads: manifest.inference.threads,
            kernel: native.kernel,
        })
    }

    /// Sets the thread count (thread-invariance checks build engines with several).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Runs the network on `rows × input_size` features with the given thread count; used by
    /// [`Engine::run`] and by the thread-invariance checks.
    pub fn forward(&self, features: &[f32], threads: usize) -> Result<Vec<f32>, EngineError> {
        let rows = features.len() / self.input_size.max(1);
        if self.kernel == Kernel::FixedOrder {
            let mut x = features.to_vec();
            for layer in &self.layers {
                x = fixed_order_matmul(
                    &x,
                    &layer.weight,
                    Some(&layer.bias),
                    layer.inputs,
                    layer.outputs,
                    threads,
                );
                activate_portable(&mut x, layer.activation);
            }
            return Ok(x);
        }
        let mut x = CTensor::from_slice(features, (rows, self.input_size), &Device::Cpu).map_err(run_err)?;
        for layer in &self.layers {
            let y = x
                .matmul(&layer.candle_weight_t.t().map_err(run_err)?)
                .and_then(|y| y.broadcast_add(&layer.candle_bias))
                .map_err(run_err)?;
            x = activate(y, layer.activation).map_err(run_err)?;
        }
        x.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(run_err)
    }
}

impl Engine for NativeEngine {
    fn runtime(&self) -> RuntimeInfo {
        match self.kernel {
            Kernel::FixedOrder => RuntimeInfo {
                name: "invariant-native",
                version: env!("CARGO_PKG_VERSION").into(),
            },
            Kernel::CandleMatmul => RuntimeInfo {
                name: "candle",
                version: "0.11".into(),
            },
        }
    }

    fn portability(&self) -> Portability {
        match self.kernel {
            Kernel::FixedOrder => Portability::portable(),
            Kernel::CandleMatmul => {
                Portability::host_dependent("candle's matmul picks blockings and vector paths by problem size and CPU")
            }
        }
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let [input] = inputs else {
            return Err(run_err(format!("native networks take one input, got {}", inputs.len())));
        };
        let TensorData::Fp32(features) = &input.data else {
            return Err(run_err("native networks take FP32 input"));
        };
        let rows = input.shape.first().copied().unwrap_or(0);
        let out = self.forward(features, self.threads)?;
        let width = self.layers.last().map(|l| l.outputs).unwrap_or(0);
        Tensor::new(
            self.output_name.clone(),
            vec![rows, width],
            TensorData::Fp32(out),
            "output",
        )
        .map(|t| vec![t])
        .map_err(run_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rows_are_batch_position_and_thread_invariant() {
        let (k, n) = (37, 19);
        let batch = 300;
        let x = pseudo_random(batch * k, 7);
        let w = pseudo_random(k * n, 8);
        let b = pseudo_random(n, 9);
        let full = fixed_order_matmul(&x, &w, Some(&b), k, n, 1);
        let threaded = fixed_order_matmul(&x, &w, Some(&b), k, n, 4);
        assert_eq!(full, threaded);
        for r in [0, 1, 150, 299] {
            let alone = fixed_order_matmul(&x[r * k..(r + 1) * k], &w, Some(&b), k, n, 1);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&alone), bits(&full[r * n..(r + 1) * n]), "row {r}");
        }
    }
}

#[cfg(test)]
mod naive_path {
    //! Keeps the reason for [`fixed_order_matmul`] on record: candle's own `matmul` in the
    //! `x · Wᵀ` form of `candle_nn::Linear` gives a row different bits depending on the
    //! batch it is computed in. If this test ever fails, candle changed; the fixed-order
    //! kernel stays regardless (its invariance is by construction, tested above).
    use candle_core::{Device, Tensor};

    fn rows(n: usize, k: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n * k)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// Bits of row 0 computed alone and inside a batch of `batch` rows.
    fn row0(k: usize, n: usize, batch: usize) -> (Vec<u32>, Vec<u32>) {
        let x = rows(batch, k, 1);
        let w = Tensor::from_vec(rows(n, k, 2), (n, k), &Device::Cpu).unwrap();
        let alone = Tensor::from_slice(&x[..k], (1, k), &Device::Cpu)
            .unwrap()
            .matmul(&w.t().unwrap())
            .unwrap();
        let full = Tensor::from_slice(&x, (batch, k), &Device::Cpu)
            .unwrap()
            .matmul(&w.t().unwrap())
            .unwrap();
        let bits = |t: Tensor| {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|f| f.to_bits())
                .collect()
        };
        (bits(alone), bits(full.narrow(0, 0, 1).unwrap()))
    }

    #[test]
    fn candle_matmul_is_not_batch_invariant() {
        let mut report = Vec::new();
        for (k, n) in [(64, 32), (256, 64), (512, 128)] {
            for batch in [2, 32, 512] {
                let (alone, batched) = row0(k, n, batch);
                let differing = alone.iter().zip(&batched).filter(|(a, b)| a != b).count();
                report.push(format!("k={k} n={n} batch={batch}: {differing}/{n} elements differ"));
            }
        }
        eprintln!("{}", report.join("\n"));
        assert!(
            report.iter().any(|l| !l.contains(": 0/")),
            "candle matmul was batch-invariant here:\n{}",
            report.join("\n")
        );
    }
}
