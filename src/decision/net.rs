//! The decision network's head (candle, CPU): SPP vector → standardise → FC `hidden` + ReLU →
//! FC 21 (shared) → one small perceptron per class (21 → `class_hidden` + ReLU → 1) → sigmoid:
//! the predicted IoU of the small network for each class. Two more outputs read the hidden layer:
//! - the gain `IoU_img(large) − IoU_img(small)` (FC 1, linear: a tanh saturated at ±1 on
//!   out-of-domain frames during training and never recovered; predictions are clamped to −1..1);
//! - per-class presence (FC 21 + sigmoid): the probability that a class is in the frame's
//!   reference labels or the small network's output, i.e. counts in its IoU_img. The IoU heads
//!   alone cannot say this: a class that is present but missed has target IoU 0 like an absent
//!   class, and reading presence off the IoU (IoU ≥ 0.1) overestimated IoU_img by 0.3–0.5 on
//!   real frames (out/study_routing samples, tests/decision_train_real.rs).
//!
//! A per-class perceptron (rather than a plain FC 21 → 1 per class, which would only be a
//! factorised 21 x 21 matrix) gives each class its own non-linear reading of the shared code.
//! Input standardisation (mean and standard deviation of the training vectors, then clipped to
//! ±[`INPUT_CLIP`]) is part of the network and stored with its weights, so the raw SPP vector of
//! any base goes in unchanged.
//!
//! Cost per frame for the default sizes (800 → 1024 → 21 → 21x8 → 21, gain 1024 → 1, presence
//! 1024 → 21): about 0.87 M multiply-adds, 0.0017 GFLOPs, ~0.1 % of the small network's 1.45 GFLOPs
//! ([`NetShape::flops`]).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};

use super::DecisionError;

/// Bound on standardised inputs (in standard deviations of the training set).
pub const INPUT_CLIP: f32 = 4.0;

/// Layer sizes; written to `dn.toml`, and every tensor shape follows from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetShape {
    /// Length of the SPP vector (channels x bins).
    pub input_len: usize,
    pub hidden: usize,
    pub classes: usize,
    /// Hidden units of each class's own perceptron.
    pub class_hidden: usize,
}

impl NetShape {
    /// The sizes of issue 9 for an SPP vector of `input_len` values.
    pub fn for_input(input_len: usize) -> Self {
        NetShape { input_len, hidden: 1024, classes: 21, class_hidden: 8 }
    }

    /// [`Self::for_input`] with `hidden` units in the hidden layer.
    pub fn with_hidden(self, hidden: usize) -> Self {
        NetShape { hidden, ..self }
    }

    pub fn validate(&self) -> Result<(), DecisionError> {
        let sizes = [self.input_len, self.hidden, self.classes, self.class_hidden];
        if sizes.iter().any(|&s| s == 0 || s > 1 << 20) {
            return Err(DecisionError::Invalid { what: "layer sizes", problem: format!("{self:?}: each must be in 1..=1048576") });
        }
        Ok(())
    }

    /// Every tensor of the network, by name, with its shape.
    pub fn tensor_shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        let (l, h, k, p) = (self.input_len, self.hidden, self.classes, self.class_hidden);
        vec![
            ("input.mean", vec![l]),
            ("input.std", vec![l]),
            ("hidden.weight", vec![h, l]),
            ("hidden.bias", vec![h]),
            ("shared.weight", vec![k, h]),
            ("shared.bias", vec![k]),
            ("class_heads.hidden.weight", vec![k, p, k]),
            ("class_heads.hidden.bias", vec![k, p]),
            ("class_heads.out.weight", vec![k, p]),
            ("class_heads.out.bias", vec![k]),
            ("gain.weight", vec![1, h]),
            ("gain.bias", vec![1]),
            ("presence.weight", vec![k, h]),
            ("presence.bias", vec![k]),
        ]
    }

    /// Floating-point operations of one forward pass (2 per multiply-add, plus the
    /// standardisation), to compare with the networks' GFLOPs.
    pub fn flops(&self) -> u64 {
        let (l, h, k, p) = (self.input_len as u64, self.hidden as u64, self.classes as u64, self.class_hidden as u64);
        let multiply_adds = l * h + h * k + k * p * k + k * p + h + h * k;
        2 * multiply_adds + 2 * l
    }
}

/// What the decision network predicts for one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Predicted IoU of the small network per class (0..1; near 0 for classes the frame lacks).
    pub class_iou: Vec<f32>,
    /// Predicted probability that each class counts in the frame's IoU_img (present in the
    /// reference labels or the small network's output).
    pub class_presence: Vec<f32>,
    /// Predicted `IoU_img(large) − IoU_img(small)` (−1..1).
    pub gain: f32,
}

/// Network outputs for a batch (tensors, so training can differentiate them).
pub struct Outputs {
    /// `[B, classes]`, 0..1.
    pub class_iou: Tensor,
    /// `[B, classes]`, 0..1.
    pub class_presence: Tensor,
    /// `[B]`, unclamped (the loss sees the raw value; predictions are clamped to −1..1).
    pub gain: Tensor,
}

pub(crate) use crate::rng::SeededRng;

pub struct DecisionNet {
    shape: NetShape,
    vars: HashMap<&'static str, Var>,
}

impl std::fmt::Debug for DecisionNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionNet").field("shape", &self.shape).finish()
    }
}

impl DecisionNet {
    /// A fresh network with weights drawn from `seed` (He-uniform for layers followed by ReLU,
    /// LeCun-uniform for the others, zero biases) and identity standardisation.
    pub fn new_seeded(shape: NetShape, seed: u64) -> Result<Self, DecisionError> {
        shape.validate()?;
        let mut rng = SeededRng::new(seed);
        let mut tensors = HashMap::new();
        for (name, dims) in shape.tensor_shapes() {
            let count: usize = dims.iter().product();
            let fan_in = *dims.last().unwrap_or(&1);
            let values: Vec<f32> = match name {
                "input.std" => vec![1.0; count],
                _ if name.ends_with(".bias") || name == "input.mean" => vec![0.0; count],
                _ => {
                    let relu_follows = matches!(name, "hidden.weight" | "class_heads.hidden.weight");
                    let mut bound = if relu_follows { (6.0 / fan_in as f64).sqrt() } else { (3.0 / fan_in as f64).sqrt() };
                    if name == "gain.weight" {
                        // Targets are a few tenths: start near the bias, not at unit scale.
                        bound *= 0.1;
                    }
                    (0..count).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect()
                }
            };
            tensors.insert(name.to_string(), Tensor::from_vec(values, dims, &Device::Cpu)?);
        }
        Self::from_tensors(shape, tensors, &std::path::PathBuf::from("(new network)"))
    }

    /// Builds the network from named tensors, checking that each one the shape needs is there
    /// with the right shape; `origin` names the file in errors.
    pub fn from_tensors(shape: NetShape, mut tensors: HashMap<String, Tensor>, origin: &std::path::Path) -> Result<Self, DecisionError> {
        shape.validate()?;
        let mut vars = HashMap::new();
        for (name, dims) in shape.tensor_shapes() {
            let tensor =
                tensors.remove(name).ok_or_else(|| DecisionError::MissingTensor { path: origin.to_path_buf(), name: name.to_string() })?;
            if tensor.dims() != dims.as_slice() {
                return Err(DecisionError::TensorShape {
                    path: origin.to_path_buf(),
                    name: name.to_string(),
                    expected: dims,
                    found: tensor.dims().to_vec(),
                });
            }
            vars.insert(name, Var::from_tensor(&tensor.to_dtype(DType::F32)?)?);
        }
        Ok(DecisionNet { shape, vars })
    }

    pub fn shape(&self) -> NetShape {
        self.shape
    }

    fn tensor(&self, name: &str) -> &Tensor {
        // Every name in tensor_shapes() is inserted at construction.
        self.vars[name].as_tensor()
    }

    /// All tensors by name (what `dn.safetensors` holds).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars.iter().map(|(name, var)| (name.to_string(), var.as_tensor().clone())).collect()
    }

    /// The trainable variables (everything but the standardisation).
    pub(crate) fn trainable(&self) -> Vec<Var> {
        let mut names: Vec<_> = self.vars.keys().filter(|n| !n.starts_with("input.")).copied().collect();
        // A fixed order keeps optimiser state, and so training, deterministic.
        names.sort_unstable();
        names.into_iter().map(|n| self.vars[n].clone()).collect()
    }

    pub(crate) fn set(&self, name: &str, values: Vec<f32>) -> Result<(), DecisionError> {
        let var = self.vars.get(name).ok_or_else(|| DecisionError::Invalid { what: "tensor name", problem: name.to_string() })?;
        var.set(&Tensor::from_vec(values, var.dims(), &Device::Cpu)?)?;
        Ok(())
    }

    /// `[B, input_len]` → outputs.
    pub fn forward(&self, input: &Tensor) -> Result<Outputs, DecisionError> {
        self.forward_with_dropout(input, None)
    }

    /// [`Self::forward`], with the hidden layer multiplied by `hidden_mask` (`[B, hidden]`,
    /// inverted-dropout scaling already applied) during training.
    pub(crate) fn forward_with_dropout(&self, input: &Tensor, hidden_mask: Option<&Tensor>) -> Result<Outputs, DecisionError> {
        let (batch, _) = input.dims2()?;
        let (k, p) = (self.shape.classes, self.shape.class_hidden);
        // Standardised inputs are clipped: frames unlike the training set (another domain)
        // would otherwise drive the hidden layer far outside anything it was trained on.
        let x = input.broadcast_sub(self.tensor("input.mean"))?.broadcast_div(self.tensor("input.std"))?.clamp(-INPUT_CLIP, INPUT_CLIP)?;
        let mut hidden = linear(&x, self.tensor("hidden.weight"), self.tensor("hidden.bias"))?.relu()?;
        if let Some(mask) = hidden_mask {
            hidden = (hidden * mask)?;
        }
        let shared = linear(&hidden, self.tensor("shared.weight"), self.tensor("shared.bias"))?;
        let per_class_weight = self.tensor("class_heads.hidden.weight").reshape((k * p, k))?;
        let per_class_bias = self.tensor("class_heads.hidden.bias").reshape(k * p)?;
        let per_class = linear(&shared, &per_class_weight, &per_class_bias)?.relu()?.reshape((batch, k, p))?;
        let class_logit = per_class
            .broadcast_mul(self.tensor("class_heads.out.weight"))?
            .sum(D::Minus1)?
            .broadcast_add(self.tensor("class_heads.out.bias"))?;
        let class_iou = candle_nn::ops::sigmoid(&class_logit)?;
        let gain = linear(&hidden, self.tensor("gain.weight"), self.tensor("gain.bias"))?.squeeze(1)?;
        let class_presence = candle_nn::ops::sigmoid(&linear(&hidden, self.tensor("presence.weight"), self.tensor("presence.bias"))?)?;
        Ok(Outputs { class_iou, class_presence, gain })
    }

    /// Predictions for `count` SPP vectors laid out one after another.
    pub fn predict_batch(&self, vectors: &[f32], count: usize) -> Result<Vec<Prediction>, DecisionError> {
        if count == 0 || vectors.len() != count * self.shape.input_len {
            return Err(DecisionError::Invalid {
                what: "decision network input",
                problem: format!("{} values are not {count} SPP vectors of {}", vectors.len(), self.shape.input_len),
            });
        }
        let input = Tensor::from_slice(vectors, (count, self.shape.input_len), &Device::Cpu)?;
        let outputs = self.forward(&input)?;
        let class_iou = outputs.class_iou.to_vec2::<f32>()?;
        let class_presence = outputs.class_presence.to_vec2::<f32>()?;
        let gain = outputs.gain.to_vec1::<f32>()?;
        Ok(class_iou
            .into_iter()
            .zip(class_presence)
            .zip(gain)
            .map(|((class_iou, class_presence), gain)| Prediction { class_iou, class_presence, gain: gain.clamp(-1.0, 1.0) })
            .collect())
    }

    /// The prediction for one frame's SPP vector.
    pub fn predict(&self, vector: &[f32]) -> Result<Prediction, DecisionError> {
        let mut batch = self.predict_batch(vector, 1)?;
        Ok(batch.remove(0))
    }
}

/// The network's weights as plain vectors, for one frame at a time: candle's per-operation
/// overhead (allocations, a transposed-weight product) costs about a millisecond for a single
/// vector, as much as the arithmetic of a whole batch, which would make deciding cost several
/// percent of the small network. The first layer's weights (1024 x 1600 with max-average SPP,
/// 97 % of the bytes) are kept as bfloat16: reading them from memory is what a frame's decision
/// waits for, and half the bytes halve that wait; their rounding (relative 2⁻⁹) moves predictions
/// by about 10⁻³. Otherwise the arithmetic of [`DecisionNet::forward`]. `eval routing` predicts
/// with it too, so its figures are those of the deployed arithmetic. Made by
/// [`DecisionNet::compile`]; a snapshot: compile again after changing the weights.
#[derive(Debug, Clone)]
pub struct CompiledNet {
    shape: NetShape,
    mean: Vec<f32>,
    std: Vec<f32>,
    /// bfloat16: the upper half of each f32.
    hidden_weight: Vec<u16>,
    hidden_bias: Vec<f32>,
    shared_weight: Vec<f32>,
    shared_bias: Vec<f32>,
    class_hidden_weight: Vec<f32>,
    class_hidden_bias: Vec<f32>,
    class_out_weight: Vec<f32>,
    class_out_bias: Vec<f32>,
    gain_weight: Vec<f32>,
    gain_bias: Vec<f32>,
    presence_weight: Vec<f32>,
    presence_bias: Vec<f32>,
}

/// `W x + b` for `W` `[out, in]` row-major.
fn affine(weight: &[f32], bias: &[f32], x: &[f32]) -> Vec<f32> {
    affine_widened(weight, bias, x, |w| w)
}

/// f32 → bfloat16, rounding to nearest even (weights are finite).
fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// [`affine`] with bfloat16 weights.
fn affine_bf16(weight: &[u16], bias: &[f32], x: &[f32]) -> Vec<f32> {
    affine_widened(weight, bias, x, |w| f32::from_bits(u32::from(w) << 16))
}

/// `W x + b` with each weight read through `widen`; eight partial sums per row let the compiler
/// use vector instructions (monomorphised per weight type, so `widen` is inlined).
fn affine_widened<W: Copy + Default>(weight: &[W], bias: &[f32], x: &[f32], widen: impl Fn(W) -> f32) -> Vec<f32> {
    weight
        .chunks_exact(x.len())
        .zip(bias)
        .map(|(row, b)| {
            let (mut lanes, zeros) = ([0f32; 8], [W::default(); 8]);
            let (row_head, row_tail) = row.split_at(row.len() - row.len() % 8);
            let (x_head, x_tail) = x.split_at(row_head.len());
            for (w, v) in row_head.chunks_exact(8).zip(x_head.chunks_exact(8)) {
                // Fixed-size arrays: no bounds checks in the loop, so it becomes vector code.
                let (w, v): (&[W; 8], &[f32; 8]) = (w.try_into().unwrap_or(&zeros), v.try_into().unwrap_or(&[0.0; 8]));
                for i in 0..8 {
                    lanes[i] += widen(w[i]) * v[i];
                }
            }
            let tail: f32 = row_tail.iter().zip(x_tail).map(|(&w, v)| widen(w) * v).sum();
            lanes.iter().sum::<f32>() + tail + b
        })
        .collect()
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// The mean prediction of `nets` (an ensemble, e.g. of training seeds) for one input vector:
/// each output averaged. Seeds disagree by as much as the differences between designs, and
/// averaging them ranked frames at least as well as the mean member on every validation set.
pub fn mean_prediction(nets: &[CompiledNet], input: &[f32]) -> Result<Prediction, DecisionError> {
    let (first, rest) = nets.split_first().ok_or(DecisionError::Invalid { what: "ensemble", problem: "no network".into() })?;
    let mut sum = first.predict(input)?;
    for net in rest {
        let p = net.predict(input)?;
        sum.class_iou.iter_mut().zip(p.class_iou).for_each(|(a, b)| *a += b);
        sum.class_presence.iter_mut().zip(p.class_presence).for_each(|(a, b)| *a += b);
        sum.gain += p.gain;
    }
    let scale = 1.0 / nets.len() as f32;
    sum.class_iou.iter_mut().chain(sum.class_presence.iter_mut()).for_each(|v| *v *= scale);
    sum.gain *= scale;
    Ok(sum)
}

impl CompiledNet {
    pub fn shape(&self) -> NetShape {
        self.shape
    }

    /// The prediction for one frame's input vector.
    pub fn predict(&self, input: &[f32]) -> Result<Prediction, DecisionError> {
        let (k, p) = (self.shape.classes, self.shape.class_hidden);
        if input.len() != self.shape.input_len {
            return Err(DecisionError::Invalid {
                what: "decision network input",
                problem: format!("{} values, the network takes {}", input.len(), self.shape.input_len),
            });
        }
        let x: Vec<f32> =
            input.iter().zip(&self.mean).zip(&self.std).map(|((v, m), s)| ((v - m) / s).clamp(-INPUT_CLIP, INPUT_CLIP)).collect();
        let hidden: Vec<f32> = affine_bf16(&self.hidden_weight, &self.hidden_bias, &x).into_iter().map(|v| v.max(0.0)).collect();
        let shared = affine(&self.shared_weight, &self.shared_bias, &hidden);
        let per_class: Vec<f32> =
            affine(&self.class_hidden_weight, &self.class_hidden_bias, &shared).into_iter().map(|v| v.max(0.0)).collect();
        let class_iou = (0..k)
            .map(|c| {
                let units = &per_class[c * p..(c + 1) * p];
                let weights = &self.class_out_weight[c * p..(c + 1) * p];
                sigmoid(units.iter().zip(weights).map(|(u, w)| u * w).sum::<f32>() + self.class_out_bias[c])
            })
            .collect();
        let gain = affine(&self.gain_weight, &self.gain_bias, &hidden)[0];
        let class_presence = affine(&self.presence_weight, &self.presence_bias, &hidden).into_iter().map(sigmoid).collect();
        Ok(Prediction { class_iou, class_presence, gain: gain.clamp(-1.0, 1.0) })
    }
}

impl DecisionNet {
    /// A [`CompiledNet`] of the current weights, for deciding frame by frame.
    pub fn compile(&self) -> Result<CompiledNet, DecisionError> {
        let flat = |name: &str| -> Result<Vec<f32>, DecisionError> { Ok(self.tensor(name).flatten_all()?.to_vec1::<f32>()?) };
        Ok(CompiledNet {
            shape: self.shape,
            mean: flat("input.mean")?,
            std: flat("input.std")?,
            hidden_weight: flat("hidden.weight")?.into_iter().map(to_bf16).collect(),
            hidden_bias: flat("hidden.bias")?,
            shared_weight: flat("shared.weight")?,
            shared_bias: flat("shared.bias")?,
            class_hidden_weight: flat("class_heads.hidden.weight")?,
            class_hidden_bias: flat("class_heads.hidden.bias")?,
            class_out_weight: flat("class_heads.out.weight")?,
            class_out_bias: flat("class_heads.out.bias")?,
            gain_weight: flat("gain.weight")?,
            gain_bias: flat("gain.bias")?,
            presence_weight: flat("presence.weight")?,
            presence_bias: flat("presence.bias")?,
        })
    }
}

/// `x · Wᵀ + b` for `x` `[B, in]`, `W` `[out, in]`.
fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(&weight.t()?)?.broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> NetShape {
        NetShape { input_len: 6, hidden: 8, classes: 3, class_hidden: 2 }
    }

    #[test]
    fn forward_gives_one_iou_per_class_in_range_and_a_gain() {
        let net = DecisionNet::new_seeded(tiny(), 7).unwrap();
        let vectors: Vec<f32> = (0..12).map(|i| i as f32 * 0.3 - 1.0).collect();
        let predictions = net.predict_batch(&vectors, 2).unwrap();
        assert_eq!(predictions.len(), 2);
        for p in &predictions {
            assert_eq!((p.class_iou.len(), p.class_presence.len()), (3, 3));
            assert!(p.class_iou.iter().chain(&p.class_presence).all(|v| (0.0..=1.0).contains(v)));
            assert!((-1.0..=1.0).contains(&p.gain));
        }
        // Batched and single predictions agree.
        assert_eq!(net.predict(&vectors[6..]).unwrap(), predictions[1]);
        assert!(net.predict_batch(&vectors, 3).is_err());
    }

    #[test]
    fn an_ensemble_predicts_the_mean_of_its_members() {
        let nets: Vec<CompiledNet> =
            [3, 4, 9].iter().map(|&seed| DecisionNet::new_seeded(tiny(), seed).unwrap().compile().unwrap()).collect();
        let input: Vec<f32> = (0..6).map(|i| i as f32 * 0.4 - 1.0).collect();
        let members: Vec<Prediction> = nets.iter().map(|n| n.predict(&input).unwrap()).collect();
        let mean = mean_prediction(&nets, &input).unwrap();
        let average = |f: &dyn Fn(&Prediction) -> f32| members.iter().map(f).sum::<f32>() / 3.0;
        for c in 0..3 {
            assert!((mean.class_iou[c] - average(&|p| p.class_iou[c])).abs() < 1e-6);
            assert!((mean.class_presence[c] - average(&|p| p.class_presence[c])).abs() < 1e-6);
        }
        assert!((mean.gain - average(&|p| p.gain)).abs() < 1e-6);
        assert_eq!(mean_prediction(&nets[..1], &input).unwrap(), members[0], "one member is itself");
        assert!(mean_prediction(&[], &input).is_err());
    }

    #[test]
    fn compiled_network_predicts_what_the_tensor_network_does() {
        // Sizes that are not multiples of 8 exercise the tails of the vector loops.
        let shape = NetShape { input_len: 21, hidden: 13, classes: 3, class_hidden: 2 };
        let net = DecisionNet::new_seeded(shape, 5).unwrap();
        net.set("input.mean", (0..21).map(|i| i as f32 * 0.05).collect()).unwrap();
        net.set("input.std", (0..21).map(|i| 0.5 + i as f32 * 0.1).collect()).unwrap();
        net.set("hidden.bias", (0..13).map(|i| (i as f32 - 6.0) * 0.1).collect()).unwrap();
        let compiled = net.compile().unwrap();
        for seed in 0..5 {
            let mut rng = SeededRng::new(seed);
            // Some values far outside the training range, so the clipping counts too.
            let input: Vec<f32> = (0..21).map(|_| ((rng.next_f64() * 2.0 - 1.0) * 6.0) as f32).collect();
            let (a, b) = (net.predict(&input).unwrap(), compiled.predict(&input).unwrap());
            for (x, y) in a
                .class_iou
                .iter()
                .chain(&a.class_presence)
                .chain([&a.gain])
                .zip(b.class_iou.iter().chain(&b.class_presence).chain([&b.gain]))
            {
                assert!((x - y).abs() < 3e-3, "{a:?} vs {b:?}");
            }
        }
        assert!(compiled.predict(&[0.0; 20]).is_err());
    }

    #[test]
    fn bfloat16_rounds_to_nearest_even() {
        for v in [0.0f32, 1.0, -2.5, 1e-3, 0.3337, -123.456] {
            let back = f32::from_bits((to_bf16(v) as u32) << 16);
            assert!((back - v).abs() <= v.abs() * 2f32.powi(-8), "{v} → {back}");
        }
        // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: to the even mantissa, 1.
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), to_bf16(1.0));
        assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), to_bf16(1.0 + 2f32.powi(-6)));
    }

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let flat = |net: &DecisionNet| net.tensor("hidden.weight").flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let a = DecisionNet::new_seeded(tiny(), 1).unwrap();
        let b = DecisionNet::new_seeded(tiny(), 1).unwrap();
        let c = DecisionNet::new_seeded(tiny(), 2).unwrap();
        assert_eq!(flat(&a), flat(&b));
        assert_ne!(flat(&a), flat(&c));
    }

    #[test]
    fn missing_or_misshapen_tensors_are_named() {
        let net = DecisionNet::new_seeded(tiny(), 1).unwrap();
        let mut tensors = net.tensors();
        tensors.remove("gain.bias");
        let err = DecisionNet::from_tensors(tiny(), tensors, std::path::Path::new("x.safetensors")).unwrap_err();
        assert!(matches!(&err, DecisionError::MissingTensor { name, .. } if name == "gain.bias"), "{err}");
        let mut tensors = net.tensors();
        tensors.insert("shared.weight".into(), Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap());
        let err = DecisionNet::from_tensors(tiny(), tensors, std::path::Path::new("x.safetensors")).unwrap_err();
        assert!(err.to_string().contains("shared.weight") && err.to_string().contains("x.safetensors"), "{err}");
    }

    #[test]
    fn default_head_costs_a_thousandth_of_the_small_network() {
        let shape = NetShape::for_input(160 * 5);
        let gflops = shape.flops() as f64 / 1e9;
        assert!(gflops < 0.05 * 1.45, "{gflops}");
        assert!((0.0015..0.0020).contains(&gflops), "{gflops}");
    }
}
