//! The decision network in the live pipeline: per frame, the small network's encoder, the
//! spatial pyramid pooling and the network's head give a predicted IoU per class; the rule of
//! `decision.rule` turns it into the one score the control unit compares with its threshold.
//!
//! With the shared base (the encoder at the small network's own input size) the encoder output
//! travels on with a frame kept local and [`SmallHead`] finishes the small network on it, so
//! deciding adds only the pooling and the MLP to the small network's own cost. The split is
//! checked at start-up ([`check_split`]): encoder then head must reproduce the whole small
//! network, or the masks of local frames would silently differ from the small network's.

use std::time::Instant;

use ort::value::DynValue;

use super::base::{Encoder, OnnxPart};
use super::net::{mean_prediction, CompiledNet, Prediction};
use super::rule::{predicted_iou_img, Rule};
use super::spp::SppConfig;
use super::{store, DecisionError};
use crate::config::DecisionConfig;
use crate::control::{Score, ScoreError, Scored};
use crate::frame::{Features, Job};
use crate::infer::{InputBuffer, Model, ModelManifest, NetworkOutput};

/// The rest of the small network after the decision's base (`small_trunk.onnx` after the
/// stem, `small_head.onnx` after the encoder): features → logits.
pub struct SmallHead {
    part: OnnxPart,
    classes: usize,
}

impl std::fmt::Debug for SmallHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmallHead").field("part", &self.part).field("classes", &self.classes).finish()
    }
}

impl SmallHead {
    pub fn load(path: &std::path::Path, intra_threads: usize, classes: usize) -> Result<Self, DecisionError> {
        Ok(SmallHead { part: OnnxPart::load(path, intra_threads)?, classes })
    }

    /// Logits of the small network for the frame whose encoder output is `features`.
    pub fn run(&mut self, features: &Features) -> Result<NetworkOutput, DecisionError> {
        let value: DynValue = self.part.run_value(&features.values, &features.shape)?;
        NetworkOutput::from_logits(value, self.classes).map_err(|e| DecisionError::OnnxMismatch {
            path: self.part.path().to_path_buf(),
            problem: format!("its output is not the small network's logits: {e}"),
        })
    }
}

/// Runs encoder → head and the whole small network on one made-up frame and fails when their
/// logits differ by more than float rounding (an encoder or head split off another network).
/// Returns the largest difference.
pub fn check_split(encoder: &mut Encoder, head: &mut SmallHead, small: &mut Model) -> Result<f32, DecisionError> {
    let (width, height) = (160u32, 120u32);
    let bgr: Vec<u8> = (0..width * height * 3).map(|i| ((i * 37) % 251) as u8).collect();
    let nhwc = encoder.preprocess(&bgr, width, height)?;
    let split_output = head.run(&encoder.run(&nhwc)?.into())?;
    let mut input = InputBuffer::new(&small.manifest, 1);
    let image =
        input.image_mut(0).ok_or_else(|| DecisionError::Invalid { what: "small network input", problem: "no image slot".into() })?;
    crate::infer::preprocess(&bgr, width, height, &small.manifest, image)
        .map_err(|e| DecisionError::Image { step: "split check", message: e.to_string() })?;
    let whole = small.run(&input).map_err(|e| DecisionError::Model { manifest: small.manifest.path.clone(), source: Box::new(e) })?;
    let mismatch = |problem: String| DecisionError::OnnxMismatch { path: head.part.path().to_path_buf(), problem };
    let (Some(a), Some(b)) = (split_output.logits(0), whole.logits(0)) else {
        return Err(mismatch(format!("the small network {} gives no logits to compare with", small.manifest.path.display())));
    };
    if a.len() != b.len() {
        return Err(mismatch(format!(
            "encoder + head give {} logits, the small network {} gives {}",
            a.len(),
            small.manifest.path.display(),
            b.len()
        )));
    }
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    // Fused kernels may round differently; a head of another network differs by whole units.
    if worst > 1e-2 {
        return Err(mismatch(format!(
            "encoder + head differ from the small network {} by up to {worst} in the logits: they were not split off it \
             (run scripts/split_small.py on the network the edge runs)",
            small.manifest.path.display()
        )));
    }
    Ok(worst)
}

/// The decision network as the control unit's per-frame [`Score`].
pub struct DecisionScore {
    encoder: Encoder,
    /// The plain-Rust forward: candle's costs ~1.4 ms per single vector, this one ~0.5 ms.
    /// `decision.network` first, then the members of `decision.ensemble`.
    nets: Vec<CompiledNet>,
    spp: SppConfig,
    rule: Rule,
    presence: f32,
    shares_features: bool,
}

impl std::fmt::Debug for DecisionScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionScore").field("encoder", &self.encoder).field("rule", &self.rule).finish()
    }
}

impl DecisionScore {
    /// Loads `decision.network` (and `decision.ensemble`) and its base, checking that the base
    /// is the one every network was trained on; `small` is the manifest of the edge's small
    /// network (how frames are prepared).
    pub fn load(config: &DecisionConfig, small: &ModelManifest) -> Result<Self, DecisionError> {
        let loaded = store::load(&config.network)?;
        let base = &loaded.meta.base;
        let encoder = Encoder::load(&config.encoder, small, base.input_size, config.intra_threads.get())?;
        // Every member reads the same vector: the first's base and pooling.
        let admit = |member: &store::LoadedDecisionNet| -> Result<CompiledNet, DecisionError> {
            if member.meta.inputs.small_confidence {
                return Err(DecisionError::Metadata {
                    path: member.path.clone(),
                    message: "this network also reads the small network's confidence ([inputs] small_confidence), which the \
                              pipeline computes only after deciding; it serves `eval routing` only (train one without it for the edge)"
                        .into(),
                });
            }
            member.check_base(encoder.sha256(), base.input_size, base.channels, &loaded.meta.spp)?;
            member.net.compile()
        };
        let mut nets = vec![admit(&loaded)?];
        for path in &config.ensemble {
            nets.push(admit(&store::load(path)?)?);
        }
        let presence = config.presence.unwrap_or(loaded.meta.training.settings.presence as f32);
        let shares_features = small.input.width == base.input_size && small.input.height == base.input_size;
        tracing::info!(
            network = %config.network.display(),
            rule = ?config.rule,
            base = base.input_size,
            members = nets.len(),
            shares_features,
            "decision network loaded"
        );
        Ok(DecisionScore { encoder, nets, spp: loaded.meta.spp.clone(), rule: config.rule, presence, shares_features })
    }

    /// Whether a local frame's mask can be finished from the features the decision computed
    /// (the base runs at the small network's own input size).
    pub fn shares_features(&self) -> bool {
        self.shares_features
    }

    pub fn encoder_mut(&mut self) -> &mut Encoder {
        &mut self.encoder
    }

    /// Encoder, pooling and network on one BGR frame.
    pub fn predict(&mut self, bgr: &[u8], width: u32, height: u32) -> Result<(Prediction, super::Features), DecisionError> {
        let input = self.encoder.preprocess(bgr, width, height)?;
        let features = self.encoder.run(&input)?;
        let prediction = mean_prediction(&self.nets, &features.spp(&self.spp)?)?;
        Ok((prediction, features))
    }

    /// The score of a prediction under the configured rule, in 0..=1, higher = the small
    /// network is enough. The gain rule maps the predicted gain g (−1..1) to (1 − g) / 2, so a
    /// threshold t sends remote the frames with gain above 1 − 2t.
    pub fn value(&self, prediction: &Prediction) -> f32 {
        match self.rule {
            Rule::Thesis => prediction.class_iou.iter().copied().fold(0.0, f32::max),
            Rule::PredictedIouImg => predicted_iou_img(prediction, self.presence),
            Rule::Gain => (1.0 - prediction.gain) / 2.0,
        }
    }
}

fn rule_name(rule: Rule) -> &'static str {
    match rule {
        Rule::Thesis => "thesis",
        Rule::PredictedIouImg => "predicted-iou-img",
        Rule::Gain => "gain",
    }
}

impl Score for DecisionScore {
    fn score(&mut self, job: &Job) -> Result<Scored, ScoreError> {
        let started = Instant::now();
        let frame = &job.frame;
        let (prediction, features) =
            self.predict(&frame.bgr, frame.width, frame.height).map_err(|e| ScoreError { order: job.order, message: e.to_string() })?;
        let value = self.value(&prediction);
        tracing::trace!(order = job.order, value, ms = started.elapsed().as_secs_f64() * 1000.0, "frame scored");
        Ok(Scored {
            value,
            prediction: Some(crate::frame::Prediction {
                image_iou: predicted_iou_img(&prediction, self.presence),
                class_iou: prediction.class_iou,
                gain: prediction.gain,
                rule: rule_name(self.rule).to_string(),
            }),
            features: self.shares_features.then(|| features.into()),
        })
    }

    fn name(&self) -> &'static str {
        "decision-network"
    }
}
