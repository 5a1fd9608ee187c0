//! `edgeseg bench decision`: what deciding costs against the small network, in GFLOPs (counted
//! from the ONNX graphs and the decision head's layer sizes) and in milliseconds (medians of many
//! interleaved runs, one thread each), for both bases:
//! - **shared** (257): the encoder's features are reused by the small network's head, so for a
//!   local frame the decision adds only SPP + the decision head (target ≤ 5 % of the small
//!   network); a remote frame pays encoder + SPP + head instead of nothing;
//! - **downscaled** (e.g. 129): encoder at that size + SPP + head on every frame, and the whole
//!   small network on a local one.
//!
//! Timings run on a synthetic frame (convolution time does not depend on content), each part
//! once per round, rounds interleaved so that load from other processes hits all parts alike.

use std::path::Path;
use std::time::Instant;

use super::base::{Encoder, Features, OnnxPart};
use super::config::DnConfig;
use super::experiment::PartCosts;
use super::net::{DecisionNet, NetShape};
use super::DecisionError;
use crate::infer::ModelManifest;

/// Medians in milliseconds, and the GFLOPs of the same parts.
#[derive(Debug, Clone)]
pub struct DecisionBench {
    pub runs: usize,
    pub small_ms: f64,
    pub encoder_ms: f64,
    pub head_ms: f64,
    pub spp_ms: f64,
    pub decision_head_ms: f64,
    /// Encoder at the downscaled size, and its SPP.
    pub downscaled_size: u32,
    pub downscaled_encoder_ms: f64,
    pub downscaled_spp_ms: f64,
    pub shared: PartCosts,
    pub downscaled: PartCosts,
}

impl DecisionBench {
    /// Decision ÷ small network for a local frame on the shared base: (SPP + decision head) ÷ small, in ms.
    pub fn local_frame_ratio_ms(&self) -> f64 {
        (self.spp_ms + self.decision_head_ms) / self.small_ms
    }

    /// Per-frame decision ÷ small network on the downscaled base, in ms.
    pub fn downscaled_ratio_ms(&self) -> f64 {
        (self.downscaled_encoder_ms + self.downscaled_spp_ms + self.decision_head_ms) / self.small_ms
    }

    pub fn lines(&self) -> Vec<String> {
        let s = &self.shared;
        let d = &self.downscaled;
        let size = self.downscaled_size;
        let row = |label: String, ms: f64, gflops: Option<f64>| {
            format!("  {label:<34} {ms:8.3} ms{}", gflops.map_or_else(String::new, |g| format!("  {g:.4} GFLOPs")))
        };
        vec![
            format!("medians of {} interleaved runs, 1 thread each; GFLOPs from the ONNX graphs and the decision head's layers", self.runs),
            row("small network (whole)".into(), self.small_ms, Some(s.small)),
            row("base (configured cut) at 257".into(), self.encoder_ms, Some(s.encoder)),
            row("rest of the small network".into(), self.head_ms, Some(s.head)),
            row("SPP of the 257 features".into(), self.spp_ms, None),
            row("decision head (MLP, CompiledNet)".into(), self.decision_head_ms, Some(s.decision_head)),
            row(format!("base at {size}"), self.downscaled_encoder_ms, Some(d.encoder)),
            row(format!("SPP of the {size} features"), self.downscaled_spp_ms, None),
            format!(
                "shared base 257, local frame: decision ÷ small = {:.4} (GFLOPs), {:.4} (ms: (SPP + MLP) ÷ small); target ≤ 0.05",
                s.decision_over_small(),
                self.local_frame_ratio_ms()
            ),
            format!(
                "shared base 257, remote frame: decision = {:.3} GFLOPs, {:.3} ms (base + SPP + MLP) = {:.3} (GFLOPs) / {:.3} (ms) of the small network",
                s.encoder + s.decision_head,
                self.encoder_ms + self.spp_ms + self.decision_head_ms,
                (s.encoder + s.decision_head) / s.small,
                (self.encoder_ms + self.spp_ms + self.decision_head_ms) / self.small_ms
            ),
            format!(
                "downscaled base {size}, every frame: decision = {:.3} GFLOPs, {:.3} ms = {:.4} (GFLOPs) / {:.4} (ms) of the small network; a local frame then runs the whole small network",
                d.encoder + d.decision_head,
                self.downscaled_encoder_ms + self.downscaled_spp_ms + self.decision_head_ms,
                d.decision_over_small(),
                self.downscaled_ratio_ms()
            ),
        ]
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A deterministic 640x480 BGR frame with some structure.
fn synthetic_frame() -> (Vec<u8>, u32, u32) {
    let (w, h) = (640u32, 480u32);
    let bgr = (0..w * h).flat_map(|i| {
        let (x, y) = (i % w, i / w);
        [(x / 3) as u8, (y / 2) as u8, ((x ^ y) & 0xff) as u8]
    });
    (bgr.collect(), w, h)
}

fn timed<T>(times: &mut Vec<f64>, f: impl FnOnce() -> Result<T, DecisionError>) -> Result<T, DecisionError> {
    let started = Instant::now();
    let out = f()?;
    times.push(started.elapsed().as_secs_f64() * 1e3);
    Ok(out)
}

/// Runs every part `runs` times (after one warm-up round). The decision head is `dn`'s
/// (a trained `dn.toml`) or, without one, a fresh network of the default shape (its weights do
/// not change its cost).
pub fn decision_cost(config: &DnConfig, dn: Option<&Path>, downscaled_size: u32, runs: usize) -> Result<DecisionBench, DecisionError> {
    // candle's matrix products use RAYON_NUM_THREADS threads (all cores when unset): one, like
    // the ONNX Runtime sessions here. Set before the first product, while this is the only
    // thread that reads the environment.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let small_manifest = ModelManifest::load(&config.models.small)
        .map_err(|e| DecisionError::Model { manifest: config.models.small.clone(), source: Box::new(e.into()) })?;
    let mut small = OnnxPart::load(&small_manifest.onnx, 1)?;
    let mut encoder = Encoder::load(&config.base.encoder, &small_manifest, super::base::SHARED_INPUT_SIZE, 1)?;
    let mut downscaled = Encoder::load(&config.base.encoder, &small_manifest, downscaled_size, 1)?;
    let mut head = OnnxPart::load(&config.base.head, 1)?;
    let (bgr, w, h) = synthetic_frame();
    let input = encoder.preprocess(&bgr, w, h)?;
    let (net, spp_config, inputs) = match dn {
        Some(path) => {
            let loaded = super::store::load(path)?;
            (loaded.net, loaded.meta.spp, loaded.meta.inputs)
        }
        None => {
            // As long as the base's features are wide (160 for the encoder, 16 for the stem).
            let len = config.spp.output_len(encoder.run(&input)?.channels) + config.inputs.extra_len();
            (DecisionNet::new_seeded(NetShape::for_input(len).with_hidden(config.training.hidden), 1)?, config.spp.clone(), config.inputs)
        }
    };
    let compiled = net.compile()?;
    let small_input = input.clone();
    let downscaled_input = downscaled.preprocess(&bgr, w, h)?;
    let size = super::base::SHARED_INPUT_SIZE as usize;
    let mut t: [Vec<f64>; 7] = Default::default();
    let mut channels = 0;
    for round in 0..=runs {
        let mut lap: [Vec<f64>; 7] = Default::default();
        timed(&mut lap[0], || small.run(&small_input, &[1, size, size, 3]))?;
        let features: Features = timed(&mut lap[1], || encoder.run(&input))?;
        channels = features.channels;
        let shape = [1, features.channels, features.height, features.width];
        timed(&mut lap[2], || head.run(&features.data, &shape))?;
        let pooled = timed(&mut lap[3], || features.spp(&spp_config))?;
        let vector = inputs.compose(&pooled, Some((0.9, 0.3)))?;
        timed(&mut lap[4], || compiled.predict(&vector))?;
        let small_features = timed(&mut lap[5], || downscaled.run(&downscaled_input))?;
        timed(&mut lap[6], || small_features.spp(&spp_config))?;
        if round > 0 {
            for (all, one) in t.iter_mut().zip(lap) {
                all.extend(one);
            }
        }
    }
    let shape = net.shape();
    let [small_ms, encoder_ms, head_ms, spp_ms, decision_head_ms, downscaled_encoder_ms, downscaled_spp_ms] = t.map(median);
    Ok(DecisionBench {
        runs,
        small_ms,
        encoder_ms,
        head_ms,
        spp_ms,
        decision_head_ms,
        downscaled_size,
        downscaled_encoder_ms,
        downscaled_spp_ms,
        shared: PartCosts::measure(config, super::base::SHARED_INPUT_SIZE, channels, &shape, &inputs)?,
        downscaled: PartCosts::measure(config, downscaled_size, channels, &shape, &inputs)?,
    })
}
