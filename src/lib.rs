//! edgeseg: live semantic segmentation split between an edge device and a remote worker.
//!
//! Modules follow one frame through the system: [`ingest`] (GStreamer → frames), [`decision`]
//! (decision network: predicted IoU of the small network), [`control`] (local or remote), [`infer`] (ONNX Runtime, pre/post-processing), [`remote`] (QUIC to the
//! large network), [`sink`] (records, masks, overlay). [`pipeline`] wires the stages together;
//! [`metrics`] holds what they measure; [`config`] loads and checks the settings.
pub mod bench;
pub mod config;
pub mod control;
pub mod decision;
pub mod infer;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod remote;
pub mod sink;
