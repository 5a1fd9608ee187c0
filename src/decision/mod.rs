//! Decision network: predicts, from the small network's own encoder features, how well the small
//! network will segment a frame (IoU per class) and how much the large network would gain over
//! it, so that only the frames worth it go to the remote worker.
//!
//! A frame enters as a preprocessed NHWC tensor ([`base`]: the encoder half of the small network,
//! split off by `scripts/split_small.py`), becomes a fixed-length vector by spatial pyramid
//! pooling ([`spp`]), goes through a small MLP ([`net`], candle, CPU) and leaves as a
//! [`Prediction`] that a routing rule ([`rule`]) turns into local or remote. For a local frame the
//! encoder features are handed on to the small network's head, so deciding costs only the MLP.
//!
//! Training ([`train`]) runs on SPP vectors computed once through ONNX Runtime and kept in an
//! on-disk cache ([`cache`]); the trained weights and everything needed to check that they fit a
//! base are written as `dn.safetensors` + `dn.toml` ([`store`]).

pub mod base;
pub mod bench;
pub mod cache;
pub mod config;
pub mod dataset;
pub mod experiment;
pub mod net;
pub mod rule;
pub mod score;
pub mod spp;
pub mod store;
pub mod train;

use std::path::PathBuf;

pub use base::{Encoder, Features, OnnxPart};
pub use cache::{content_hash, file_sha256, FeatureCache};
pub use net::{CompiledNet, DecisionNet, NetShape, Prediction};
pub use rule::Rule;
pub use score::{check_split, DecisionScore, SmallHead};
pub use spp::{Pooling, SppConfig};
pub use store::{DecisionNetMeta, LoadedDecisionNet};
pub use train::{OptimizerKind, Sample, TrainConfig, TrainReport, ValidationMetrics};

/// The PASCAL VOC classes the small network segments, in output order.
pub const VOC_CLASSES: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error(transparent)]
    Runtime(#[from] crate::infer::RuntimeError),
    #[error("ONNX model {path} could not be loaded: {message} (run scripts/fixtures to make models/derived/)")]
    OnnxLoad { path: PathBuf, message: String },
    #[error("ONNX model {path}: {problem}")]
    OnnxMismatch { path: PathBuf, problem: String },
    #[error("running {path} failed: {message}")]
    OnnxRun { path: PathBuf, message: String },
    #[error("image operation failed in {step}: {message}")]
    Image { step: &'static str, message: String },
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("decision network tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{path}: {message}")]
    Metadata { path: PathBuf, message: String },
    #[error("{path} is not a readable safetensors file: {message} (retrain with `edgeseg dn train`, or restore the file)")]
    CorruptWeights { path: PathBuf, message: String },
    #[error("{path} lacks tensor {name:?}: it was not written by this version of the decision network (retrain it)")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor {name:?} has shape {found:?}, {expected:?} expected from the layer sizes in its dn.toml")]
    TensorShape { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path} was trained for a different base: {problem} (retrain it for this base, or configure the base it names)")]
    BaseMismatch { path: PathBuf, problem: String },
    #[error("invalid {what}: {problem}")]
    Invalid { what: &'static str, problem: String },
    #[error(transparent)]
    Graph(#[from] crate::infer::onnx_graph::GraphError),
    #[error(transparent)]
    Dataset(#[from] crate::eval::DatasetError),
    #[error("{model} failed on {image}: {source}")]
    Segment { model: String, image: String, source: Box<crate::infer::InferError> },
    #[error("loading {manifest}: {source}")]
    Model { manifest: PathBuf, source: Box<crate::infer::InferError> },
    #[error("scoring {image}: {source}")]
    Score { image: String, source: crate::eval::ConfusionError },
    #[error("reading frames of {video}: {source}")]
    Ingest { video: PathBuf, source: Box<crate::ingest::IngestError> },
    #[error("cache entry {path} could not be written: {message}")]
    CacheWrite { path: PathBuf, message: String },
    #[error("a worker thread stopped (it panicked; see the message above)")]
    WorkerStopped,
    #[error(transparent)]
    Routing(#[from] crate::eval::routing::RoutingError),
    #[error(transparent)]
    Report(#[from] crate::eval::routing_report::ReportError),
}
