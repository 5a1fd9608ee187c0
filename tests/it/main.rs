//! Integration tests in one binary, with real GStreamer pipelines, real ONNX Runtime and real
//! QUIC on loopback: `local` drives the edge pipeline on its own, `remote` adds workers,
//! `control` closes the loop of the offloading threshold.
//! Unit tests (sans-IO cores on made-up time, stages over in-memory channels) live beside the
//! code in `src/`.

mod common;
mod control;
mod decision_base;
mod decision_pipeline;
mod decision_train_real;
mod dn_routing;
mod eval_segment;
mod impaired_link;
mod local;
mod memory;
mod package;
mod real_models;
mod remote;
mod service;
