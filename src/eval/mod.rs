//! Offline evaluation on labelled image sets, with the same preprocessing, network and
//! post-processing as the live pipeline (through [`crate::infer::Model::segment`]).
//!
//! Data enters as a VOC-layout folder ([`dataset`]), each image is segmented and scored into a
//! compact confusion matrix ([`segment`], [`confusion`]), and the results leave as figures and
//! files ([`report`]). The per-image results ([`ImageScore`]) are what routing evaluation and
//! the decision network's training targets are built from.

pub mod confusion;
pub mod dataset;
pub mod progress;
pub mod report;
pub mod routing;
pub mod routing_report;
pub mod segment;

pub use confusion::{ClassTotals, CompactConfusion, Confusion, ConfusionError, VOID};
pub use dataset::{Dataset, DatasetError, Image, Sample};
pub use progress::ProgressObserver;
pub use report::{Summary, Written};
pub use segment::{evaluate, EvalError, EvalOptions, ImageScore, ImageTiming, Observer, Quiet, SegmentEval, Skipped};

/// Classes of PASCAL VOC (background and 20 objects), the networks' and masks' label set.
pub const VOC_CLASSES: usize = 21;
