//! edgeseg: live semantic segmentation split between an edge device and a remote worker.
//!
//! Modules follow one frame through the system: [`ingest`] (GStreamer → frames), [`decision`]
//! (decision network: predicted IoU of the small network), [`control`] (local or remote),
//! [`infer`] (ONNX Runtime, pre/post-processing), [`remote`] (QUIC to the large network),
//! [`sink`] (records, masks, overlay). What travels between them is defined in [`frame`];
//! [`pipeline`] wires the stages together and nothing imports it. [`metrics`] holds what the
//! stages measure, [`shutdown`] how they are asked to stop, [`config`] the settings, loaded and
//! checked once; [`priority`] puts the inference thread ahead of the others. [`eval`] measures
//! the networks offline on labelled sets. [`ops`] is what systemd and Prometheus see of a
//! running edge or worker; [`chart`] draws the plots.
pub mod bench;
pub mod chart;
pub mod config;
pub mod control;
pub mod decision;
pub mod eval;
pub mod frame;
pub mod gst_support;
pub mod infer;
pub mod ingest;
pub mod metrics;
pub mod ops;
pub mod pipeline;
pub mod priority;
pub mod remote;
mod rng;
pub mod shutdown;
pub mod sink;
