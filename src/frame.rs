//! The values that travel between stages: a decoded [`Frame`], the [`Job`] it becomes once it
//! has a place in the stream, the [`Decision`] taken about it, and the [`Segmented`] frame that
//! leaves for the outputs.
//!
//! Every stage may use this module and it uses none of them, so a stage knows its neighbours
//! only through these types and the import graph has no circles.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// One decoded video frame, tightly packed BGR (the layout OpenCV works in).
#[derive(Debug, Clone)]
pub struct Frame {
    /// Position in the source's stream, counting frames the ingest had to drop.
    pub seq: u64,
    pub pts: Option<Duration>,
    pub width: u32,
    pub height: u32,
    pub bgr: Vec<u8>,
    pub captured_at: Instant,
}

/// A class id per pixel, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassMap {
    pub width: u32,
    pub height: u32,
    pub classes: Vec<u8>,
}

/// Which network segments a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    Local,
    Remote,
}

/// What the decision network predicted for a frame, kept for the records so that offline
/// evaluation can compare prediction and outcome frame by frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Predicted IoU of the small network's mask with the truth, per class.
    pub class_iou: Vec<f32>,
    /// Predicted IoU_img: the mean of `class_iou` over the classes predicted present.
    pub image_iou: f32,
    /// Predicted IoU_img(large) − IoU_img(small): what sending the frame remote would gain.
    pub gain: f32,
    /// The rule that made the score compared with the threshold (`thesis`,
    /// `predicted-iou-img` or `gain`).
    pub rule: String,
}

/// Why a frame took its route; written to `records.jsonl` under `decision`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRecord {
    pub route: Route,
    /// The policy that decided (`local`, `remote`, `every-nth`, later the decision network).
    pub policy: &'static str,
    /// Offloading threshold in force for this frame, where the policy has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    /// Why the threshold is where it is (the adaptive controller explains itself here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Prediction>,
}

/// Intermediate results computed while deciding that the local path can reuse, so a frame kept
/// local is not encoded twice (the decision network shares the small network's encoder).
/// Row-major values of a tensor of `shape`; only the stage that made it knows its meaning.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The decision stage's answer for one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub record: DecisionRecord,
    pub features: Option<Features>,
}

impl Decision {
    /// A decision by a policy that looks at nothing but the stream (no prediction, no threshold).
    pub fn fixed(route: Route, policy: &'static str) -> Self {
        Decision { record: DecisionRecord { route, policy, threshold: None, reason: None, prediction: None }, features: None }
    }

    pub fn route(&self) -> Route {
        self.record.route
    }
}

/// A frame travelling through the pipeline.
#[derive(Debug)]
pub struct Job {
    /// Position after ingest (contiguous: dropped frames never get one), used for reordering.
    pub order: u64,
    pub frame: Frame,
    /// Set by the decision stage.
    pub decision: Option<DecisionRecord>,
    /// Set by the decision stage when it computed something the local path can reuse.
    pub features: Option<Features>,
    /// Set when the remote path gave the frame back to the small network, with the reason.
    pub fallback: Option<String>,
    /// Milliseconds spent per stage, by stage name.
    pub latency_ms: BTreeMap<&'static str, f64>,
}

impl Job {
    pub fn new(order: u64, frame: Frame) -> Self {
        Job { order, frame, decision: None, features: None, fallback: None, latency_ms: BTreeMap::new() }
    }

    /// Records `decision` on the job; returns the route it chose.
    pub fn decide(&mut self, decision: Decision) -> Route {
        let route = decision.route();
        self.decision = Some(decision.record);
        self.features = decision.features;
        route
    }

    pub fn into_segmented(self, class_map: ClassMap, source: MaskSource) -> Segmented {
        Segmented { order: self.order, frame: self.frame, class_map, source, decision: self.decision, latency_ms: self.latency_ms }
    }
}

/// Where a frame's mask came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MaskSource {
    Local,
    Remote {
        worker: String,
        batch_size: u16,
        worker_queue_ms: f64,
        worker_inference_ms: f64,
    },
    /// Sent to the remote path but answered by the small network because of `reason`.
    Fallback {
        reason: String,
    },
}

impl MaskSource {
    pub fn label(&self) -> &'static str {
        match self {
            MaskSource::Local => "local",
            MaskSource::Remote { .. } => "remote",
            MaskSource::Fallback { .. } => "fallback",
        }
    }
}

/// A finished frame on its way out of the pipeline.
#[derive(Debug)]
pub struct Segmented {
    /// Position after ingest, used for reordering.
    pub order: u64,
    pub frame: Frame,
    pub class_map: ClassMap,
    pub source: MaskSource,
    pub decision: Option<DecisionRecord>,
    /// Milliseconds spent per stage, by stage name.
    pub latency_ms: BTreeMap<&'static str, f64>,
}
