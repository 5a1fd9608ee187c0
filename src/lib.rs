//! edgeseg: live semantic segmentation split between an edge device and a remote worker.
pub mod remote;
