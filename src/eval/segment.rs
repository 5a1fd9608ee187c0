//! `eval segment`: one network over a labelled set, image by image.
//!
//! Decoder threads read and check image/mask pairs ahead of the network through bounded
//! channels, so JPEG and PNG decoding overlap with inference; the calling thread runs
//! [`Model::segment`] (the same preprocessing, network and post-processing as the live
//! pipeline) and counts each image's confusion matrix at full resolution. Every image's
//! compact confusion matrix is kept, so later evaluations (routing between two networks, the
//! decision network's targets) can recombine images without running a network again.

use std::path::PathBuf;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver};

use super::confusion::{ClassTotals, CompactConfusion, Confusion, ConfusionError};
use super::dataset::{Dataset, DatasetError, Sample};
use crate::infer::{ClassMap, InferError, Model};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("model {model} failed on {path}: {source}")]
    Segment { model: String, path: PathBuf, source: Box<InferError> },
    #[error("scoring {path}: {source}")]
    Score { path: PathBuf, source: ConfusionError },
    #[error("the data set was opened for {dataset} classes but model {model} has {model_classes}")]
    Classes { model: String, model_classes: usize, dataset: usize },
    #[error("no image of {data} could be evaluated ({skipped} skipped as bad; see the errors above or run without --skip-bad)")]
    NothingEvaluated { data: PathBuf, skipped: usize },
    #[error("a decoder thread stopped before reading {id} (it panicked; see the message above)")]
    DecoderStopped { id: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Skip images that cannot be read or do not match their mask (counted and listed) instead
    /// of stopping at the first.
    pub skip_bad: bool,
    /// Evaluate only the first N ids.
    pub limit: Option<usize>,
    /// Threads decoding images and masks ahead of the network.
    pub decode_threads: usize,
    /// Decoded samples each decoder thread may hold ready (bounds memory).
    pub queue_per_thread: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { skip_bad: false, limit: None, decode_threads: 2, queue_per_thread: 2 }
    }
}

/// Told about progress while an evaluation runs (a progress bar, a log).
pub trait Observer {
    fn started(&mut self, _images: usize) {}
    fn scored(&mut self, _score: &ImageScore) {}
    fn skipped(&mut self, _skipped: &Skipped) {}
    fn finished(&mut self) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// Milliseconds spent on one image. `model` is [`Model::segment`] (resize, network, argmax and
/// class-map resize: what the live pipeline spends per frame), the rest is evaluation overhead.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ImageTiming {
    pub decode_ms: f64,
    pub model_ms: f64,
    pub score_ms: f64,
}

impl ImageTiming {
    /// Decode + model + scoring: what one image costs from its files to its figures.
    pub fn end_to_end_ms(&self) -> f64 {
        self.decode_ms + self.model_ms + self.score_ms
    }
}

/// One image's result against its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageScore {
    pub id: String,
    pub width: u32,
    pub height: u32,
    /// Labelled pixels by (ground truth, prediction); void pixels are not in it.
    pub confusion: CompactConfusion,
    /// Mean IoU over the classes in this image's ground truth or prediction (labelled pixels
    /// only); `None` when the image has no labelled pixel.
    pub iou_img: Option<f64>,
    pub timing: ImageTiming,
}

impl ImageScore {
    /// Scores `prediction` against `ground_truth` (255 = void) over `classes` classes.
    pub fn new(id: &str, ground_truth: &ClassMap, prediction: &ClassMap, classes: usize) -> Result<Self, ConfusionError> {
        if (ground_truth.width, ground_truth.height) != (prediction.width, prediction.height) {
            return Err(ConfusionError::Size {
                gt_width: ground_truth.width,
                gt_height: ground_truth.height,
                pred_width: prediction.width,
                pred_height: prediction.height,
            });
        }
        let mut confusion = Confusion::new(classes);
        confusion.add(&ground_truth.classes, &prediction.classes)?;
        let iou_img = confusion.totals().miou_union_classes();
        Ok(ImageScore {
            id: id.to_string(),
            width: ground_truth.width,
            height: ground_truth.height,
            confusion: confusion.compact(),
            iou_img,
            timing: ImageTiming::default(),
        })
    }

    pub fn totals(&self) -> ClassTotals {
        self.confusion.totals()
    }

    /// IoU per class; `None` where the class is in neither ground truth nor prediction.
    pub fn class_iou(&self) -> Vec<Option<f64>> {
        let totals = self.totals();
        (0..totals.classes()).map(|c| totals.iou(c)).collect()
    }

    /// IoU per class, 0 where the class is in neither ground truth nor prediction.
    pub fn class_iou_or_zero(&self) -> Vec<f64> {
        self.totals().iou_or_zero()
    }
}

/// An image (or list entry) left out under `skip_bad`, with the reason.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub id: String,
    pub error: DatasetError,
}

/// Everything one `eval segment` run measured: per image and summed over the set.
#[derive(Debug, Clone)]
pub struct SegmentEval {
    pub model: String,
    pub manifest: PathBuf,
    /// How frames were fitted to the input (`stretch`, `pad (128)`): `--fit` may differ from the manifest.
    pub fit: String,
    pub data: PathBuf,
    pub class_names: Vec<String>,
    /// Per image, in the data set's order.
    pub images: Vec<ImageScore>,
    pub skipped: Vec<Skipped>,
    /// Images in `JPEGImages` left out because they have no mask.
    pub images_without_mask: usize,
    /// Sum of every image's confusion matrix.
    pub total: Confusion,
    /// Wall-clock time of the whole run (decoding overlaps with the network).
    pub wall_s: f64,
}

/// Runs `model` over `dataset` and scores every image.
pub fn evaluate(
    model: &mut Model,
    dataset: &Dataset,
    options: &EvalOptions,
    observer: &mut dyn Observer,
) -> Result<SegmentEval, EvalError> {
    let classes = model.manifest.output.classes.len();
    if dataset.classes() != classes {
        return Err(EvalError::Classes { model: model.manifest.name.clone(), model_classes: classes, dataset: dataset.classes() });
    }
    let started = Instant::now();
    let mut skipped = Vec::new();
    for rejected in dataset.rejected() {
        if !options.skip_bad {
            return Err(rejected.clone().into());
        }
        let id = match rejected {
            DatasetError::ListEntry { entry, .. } => entry.clone(),
            _ => String::new(),
        };
        skipped.push(Skipped { id, error: rejected.clone() });
    }
    let ids = &dataset.ids()[..options.limit.unwrap_or(usize::MAX).min(dataset.ids().len())];
    observer.started(ids.len());
    for s in &skipped {
        observer.skipped(s);
    }

    let mut images = Vec::with_capacity(ids.len());
    let mut total = Confusion::new(classes);
    let threads = options.decode_threads.clamp(1, ids.len().max(1));
    std::thread::scope(|scope| -> Result<(), EvalError> {
        // One channel per decoder, read in turn: samples arrive in set order without a reorder
        // buffer. Returning early drops the receivers, which ends the decoders.
        let receivers: Vec<Receiver<(Result<Sample, DatasetError>, f64)>> = (0..threads)
            .map(|t| {
                let (tx, rx) = bounded(options.queue_per_thread.max(1));
                scope.spawn(move || {
                    for id in ids.iter().skip(t).step_by(threads) {
                        let t0 = Instant::now();
                        let sample = dataset.read_sample(id);
                        if tx.send((sample, t0.elapsed().as_secs_f64() * 1e3)).is_err() {
                            break;
                        }
                    }
                });
                rx
            })
            .collect();
        for (index, id) in ids.iter().enumerate() {
            let (sample, decode_ms) = receivers[index % threads].recv().map_err(|_| EvalError::DecoderStopped { id: id.clone() })?;
            let sample = match sample {
                Ok(sample) => sample,
                Err(error) if options.skip_bad && error.concerns_one_image() => {
                    let s = Skipped { id: id.clone(), error };
                    observer.skipped(&s);
                    skipped.push(s);
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            let score = score_sample(model, dataset, &sample, classes, decode_ms)?;
            total.merge_compact(&score.confusion).map_err(|source| EvalError::Score { path: dataset.image_path(id), source })?;
            observer.scored(&score);
            images.push(score);
        }
        Ok(())
    })?;
    observer.finished();
    if images.is_empty() {
        return Err(EvalError::NothingEvaluated { data: dataset.root().to_path_buf(), skipped: skipped.len() });
    }
    Ok(SegmentEval {
        model: model.manifest.name.clone(),
        manifest: model.manifest.path.clone(),
        fit: fit_label(&model.manifest),
        data: dataset.root().to_path_buf(),
        class_names: model.manifest.output.classes.clone(),
        images,
        skipped,
        images_without_mask: dataset.images_without_mask(),
        total,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

fn fit_label(manifest: &crate::infer::ModelManifest) -> String {
    match manifest.input.pad_value {
        Some(value) => format!("{} ({value})", manifest.input.fit.name()),
        None => manifest.input.fit.name().to_string(),
    }
}

fn score_sample(model: &mut Model, dataset: &Dataset, sample: &Sample, classes: usize, decode_ms: f64) -> Result<ImageScore, EvalError> {
    let image = &sample.image;
    let t0 = Instant::now();
    let prediction = model.segment(&image.bgr, image.width, image.height).map_err(|source| EvalError::Segment {
        model: model.manifest.name.clone(),
        path: dataset.image_path(&sample.id),
        source: Box::new(source),
    })?;
    let model_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let mut score = ImageScore::new(&sample.id, &sample.mask, &prediction, classes)
        .map_err(|source| EvalError::Score { path: dataset.image_path(&sample.id), source })?;
    score.timing = ImageTiming { decode_ms, model_ms, score_ms: t1.elapsed().as_secs_f64() * 1e3 };
    Ok(score)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::confusion::VOID;

    fn map(width: u32, classes: &[u8]) -> ClassMap {
        ClassMap { width, height: classes.len() as u32 / width, classes: classes.to_vec() }
    }

    #[test]
    fn image_score_by_hand() {
        // 4x2, classes 0..4. GT: background, person (3) and void; prediction adds class 2 on a
        // void pixel (not counted) and class 1 on a labelled one (counted as a 0).
        let gt = map(4, &[0, 0, 3, 3, VOID, 0, 3, VOID]);
        let pred = map(4, &[0, 1, 3, 0, 2, 0, 3, 3]);
        let score = ImageScore::new("x", &gt, &pred, 4).unwrap();
        // class 0: TP 2, GT 3, pred 3 → 2/4; class 1: TP 0, union 1 → 0; class 2: absent (only on
        // void); class 3: TP 2, GT 3, pred 2 → 2/3.
        assert_eq!(score.class_iou(), vec![Some(0.5), Some(0.0), None, Some(2.0 / 3.0)]);
        assert_eq!(score.class_iou_or_zero(), vec![0.5, 0.0, 0.0, 2.0 / 3.0]);
        assert_eq!(score.iou_img, Some((0.5 + 0.0 + 2.0 / 3.0) / 3.0));
        assert_eq!(score.totals().labelled_pixels(), 6);
        assert!(ImageScore::new("x", &gt, &map(2, &[0; 8]), 4).is_err(), "a prediction of another size is an error");
    }
}
