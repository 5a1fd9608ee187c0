//! Per-image records for training and evaluating the decision network: for every image (a
//! labelled image, or a video frame in teacher mode) its SPP vector, the small and the large
//! network's confusion matrices against the reference labels, and the small network's
//! confidence. `dn train` turns them into [`Sample`]s, `eval routing` into routing curves.
//!
//! Everything is computed with the live pipeline's functions ([`Encoder::spp_of_frame`] over
//! [`crate::infer::preprocess`], [`Model::segment`], [`Model::segment_with_confidence`],
//! [`ImageScore`]) and kept in two on-disk caches under `compute.cache_dir`:
//! - `spp/`: the SPP vectors ([`FeatureCache`], keyed by encoder, preprocessing, SPP settings
//!   and image content);
//! - `outcomes/`: the confusion matrices and confidence, keyed by both networks (manifest text
//!   and ONNX hash), the image's content and the reference (mask content, or "teacher").
//!
//! so a second run with the same data loads nothing but files, and a change of base or pooling
//! recomputes only the encoder. Work is spread over `compute.workers` threads, each with its
//! own sessions (1 intra-op thread each), loaded only when an image misses a cache; images are
//! read and decoded in the workers, in parallel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::base::{input_manifest, preprocessing_key, Encoder};
use super::cache::{content_hash, file_sha256, FeatureCache};
use super::config::InputsConfig;
use super::spp::SppConfig;
use super::store::LabelSource;
use super::train::Sample;
use super::DecisionError;
use crate::config::{Count, SessionConfig};
use crate::eval::{ClassTotals, CompactConfusion, Dataset, ImageScore, VOC_CLASSES};
use crate::frame::{ClassMap, Frame};
use crate::infer::{Model, ModelManifest};

/// Bumped when what an outcome entry means changes (so old entries are never read).
const OUTCOME_FORMAT: &str = "edgeseg outcome 1";

/// What the two networks make of one image against its reference labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub small: CompactConfusion,
    pub large: CompactConfusion,
    /// Mean over pixels of the small network's top softmax probability.
    pub mean_max_softmax: f32,
    /// Mean over pixels of the small network's softmax entropy (nats).
    pub mean_entropy: f32,
}

#[derive(Serialize, Deserialize)]
struct OutcomeEntry {
    format: String,
    small: String,
    large: String,
    mean_max_softmax: f32,
    mean_entropy: f32,
}

/// One image, ready for training or routing evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// The set or video it comes from.
    pub source: String,
    /// Image id, or `frame <n>` for a video frame.
    pub id: String,
    pub image_sha256: String,
    pub labels: LabelSource,
    pub spp: Vec<f32>,
    pub outcome: Outcome,
}

impl ImageRecord {
    pub fn small_totals(&self) -> ClassTotals {
        self.outcome.small.totals()
    }

    pub fn large_totals(&self) -> ClassTotals {
        self.outcome.large.totals()
    }

    /// The small network's IoU_img (0 for an image without labelled pixels).
    pub fn small_iou_img(&self) -> f64 {
        self.small_totals().miou_union_classes().unwrap_or(0.0)
    }

    pub fn large_iou_img(&self) -> f64 {
        self.large_totals().miou_union_classes().unwrap_or(0.0)
    }

    /// `IoU_img(large) − IoU_img(small)`; in teacher mode the large network is the reference, so
    /// this is `1 − IoU_img(small)`.
    pub fn gain(&self) -> f64 {
        self.large_iou_img() - self.small_iou_img()
    }

    /// The training targets: per-class IoU (0 for classes in neither reference nor the small
    /// network's output), presence (those that count in IoU_img) and gain.
    pub fn sample(&self, inputs: &InputsConfig) -> Result<Sample, DecisionError> {
        let totals = self.small_totals();
        Ok(Sample {
            spp: self.input(inputs)?,
            class_iou: totals.iou_or_zero().into_iter().map(|v| v as f32).collect(),
            present: (0..totals.classes()).map(|c| totals.union(c) > 0).collect(),
            gain: self.gain() as f32,
        })
    }

    /// What the decision network reads for this image: the SPP vector and, when `inputs` asks
    /// for it, the small network's confidence.
    pub fn input(&self, inputs: &InputsConfig) -> Result<Vec<f32>, DecisionError> {
        inputs.compose(&self.spp, Some((self.outcome.mean_max_softmax, self.outcome.mean_entropy)))
    }
}

/// Where the images of one source come from.
pub enum SourceImages {
    /// A VOC-layout folder; `teacher` uses the large network's output instead of the masks.
    Labelled { dataset: Dataset, teacher: bool },
    /// Decoded video frames (always teacher mode).
    Frames(Vec<Frame>),
}

/// A named source of images.
pub struct Source {
    pub name: String,
    pub images: SourceImages,
}

impl Source {
    pub fn len(&self) -> usize {
        match &self.images {
            SourceImages::Labelled { dataset, .. } => dataset.ids().len(),
            SourceImages::Frames(frames) => frames.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn labels(&self) -> LabelSource {
        match &self.images {
            SourceImages::Labelled { teacher: false, .. } => LabelSource::GroundTruth,
            _ => LabelSource::Teacher,
        }
    }
}

/// Reads every `every`-th frame of `video` (at most `max_frames`) through the project's ingest
/// (`pipeline`, normally `pipelines/file.pipeline`, with `location` set to the video).
pub fn sample_video(pipeline: &Path, video: &Path, every: usize, max_frames: usize) -> Result<Vec<Frame>, DecisionError> {
    use crate::config::Liveness;
    use crate::shutdown::Shutdown;
    let ingest_err = |source| DecisionError::Ingest { video: video.to_path_buf(), source: Box::new(source) };
    let params = BTreeMap::from([("location".to_string(), video.display().to_string())]);
    let spec = crate::ingest::PipelineSpec::from_file(pipeline, &params).map_err(ingest_err)?;
    let shutdown = Shutdown::new();
    let ingest =
        crate::ingest::spawn(spec, &crate::ingest::IngestOptions { liveness: Liveness::Replay, ..Default::default() }, shutdown.clone())
            .map_err(ingest_err)?;
    let mut kept = Vec::new();
    for (index, frame) in ingest.frames.iter().enumerate() {
        if index % every.max(1) == 0 {
            kept.push(frame);
            if kept.len() >= max_frames {
                break;
            }
        }
    }
    shutdown.request();
    drop(ingest.frames);
    ingest.thread.join().map_err(|_| DecisionError::WorkerStopped)?.map_err(ingest_err)?;
    Ok(kept)
}

/// What determines the records: the base, the pooling, both networks, and where to cache.
#[derive(Debug, Clone)]
pub struct RecordSettings {
    pub encoder: PathBuf,
    pub input_size: u32,
    pub spp: SppConfig,
    pub small: PathBuf,
    pub large: PathBuf,
    pub cache_dir: PathBuf,
    pub workers: usize,
    pub intra_threads: usize,
    /// Draw a progress bar (when stderr is a terminal).
    pub progress: bool,
}

/// Computes (or reads back) [`ImageRecord`]s; see the module doc.
pub struct RecordBuilder {
    settings: RecordSettings,
    small_manifest: ModelManifest,
    spp_cache: FeatureCache,
    outcome_dir: PathBuf,
    /// Hash of everything an outcome depends on besides the image and its reference.
    networks_key: String,
}

/// Hash of a manifest's text and its ONNX file: the network as the code will run it.
fn network_key(manifest: &ModelManifest) -> Result<String, DecisionError> {
    let text = std::fs::read(&manifest.path).map_err(|source| DecisionError::Io { action: "read", path: manifest.path.clone(), source })?;
    Ok(format!("{} {}", content_hash(&text), file_sha256(&manifest.onnx)?))
}

fn load_manifest(path: &Path) -> Result<ModelManifest, DecisionError> {
    ModelManifest::load(path).map_err(|e| DecisionError::Model { manifest: path.to_path_buf(), source: Box::new(e.into()) })
}

/// The sessions one worker runs, loaded on its first cache miss.
struct Networks {
    encoder: Encoder,
    small: Model,
    large: Model,
}

impl Networks {
    fn load(settings: &RecordSettings, small_manifest: &ModelManifest) -> Result<Self, DecisionError> {
        let session = |manifest: &Path| -> Result<Model, DecisionError> {
            let config = SessionConfig {
                manifest: manifest.to_path_buf(),
                intra_threads: Count::new(settings.intra_threads).unwrap_or(Count::literal(1)),
                ..Default::default()
            };
            Model::load(&config).map_err(|e| DecisionError::Model { manifest: manifest.to_path_buf(), source: Box::new(e) })
        };
        Ok(Networks {
            encoder: Encoder::load(&settings.encoder, small_manifest, settings.input_size, settings.intra_threads)?,
            small: session(&settings.small)?,
            large: session(&settings.large)?,
        })
    }
}

/// One image as read from its source, before any network ran.
struct Loaded {
    id: String,
    image_sha256: String,
    /// Mask content hash, or `None` in teacher mode.
    reference_sha256: Option<String>,
}

impl RecordBuilder {
    pub fn new(settings: RecordSettings) -> Result<Self, DecisionError> {
        let small_manifest = load_manifest(&settings.small)?;
        let large_manifest = load_manifest(&settings.large)?;
        let classes = small_manifest.output.classes.len();
        if classes != VOC_CLASSES || large_manifest.output.classes.len() != classes {
            return Err(DecisionError::Invalid {
                what: "networks",
                problem: format!(
                    "{} has {classes} classes and {} has {}; routing needs both with the {VOC_CLASSES} VOC classes",
                    settings.small.display(),
                    settings.large.display(),
                    large_manifest.output.classes.len()
                ),
            });
        }
        let encoder_input = input_manifest(&small_manifest, settings.input_size)?;
        let spp_cache = FeatureCache::open(
            &settings.cache_dir.join("spp"),
            &file_sha256(&settings.encoder)?,
            &preprocessing_key(&encoder_input),
            &settings.spp,
        )?;
        let outcome_dir = settings.cache_dir.join("outcomes");
        std::fs::create_dir_all(&outcome_dir).map_err(|source| DecisionError::Io {
            action: "create cache folder",
            path: outcome_dir.clone(),
            source,
        })?;
        let networks_key = format!("{OUTCOME_FORMAT}\nsmall {}\nlarge {}\n", network_key(&small_manifest)?, network_key(&large_manifest)?);
        Ok(RecordBuilder { settings, small_manifest, spp_cache, outcome_dir, networks_key })
    }

    pub fn settings(&self) -> &RecordSettings {
        &self.settings
    }

    fn outcome_path(&self, image_sha256: &str, reference_sha256: Option<&str>) -> PathBuf {
        let reference = reference_sha256.unwrap_or("teacher");
        let key = content_hash(format!("{}image {image_sha256}\nreference {reference}\n", self.networks_key).as_bytes());
        self.outcome_dir.join(format!("{key}.json"))
    }

    fn read_outcome(&self, path: &Path) -> Option<Outcome> {
        let entry: OutcomeEntry = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        if entry.format != OUTCOME_FORMAT {
            return None;
        }
        Some(Outcome {
            small: CompactConfusion::parse(&entry.small, VOC_CLASSES).ok()?,
            large: CompactConfusion::parse(&entry.large, VOC_CLASSES).ok()?,
            mean_max_softmax: entry.mean_max_softmax,
            mean_entropy: entry.mean_entropy,
        })
    }

    fn write_outcome(&self, path: &Path, outcome: &Outcome) -> Result<(), DecisionError> {
        let entry = OutcomeEntry {
            format: OUTCOME_FORMAT.to_string(),
            small: outcome.small.to_string(),
            large: outcome.large.to_string(),
            mean_max_softmax: outcome.mean_max_softmax,
            mean_entropy: outcome.mean_entropy,
        };
        let text =
            serde_json::to_vec(&entry).map_err(|e| DecisionError::CacheWrite { path: path.to_path_buf(), message: e.to_string() })?;
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        let write_err = |e: std::io::Error| DecisionError::CacheWrite { path: path.to_path_buf(), message: e.to_string() };
        std::fs::write(&tmp, text).map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(write_err)
    }

    /// Records of every image of `sources`, in order (source by source), and how many of them
    /// needed a network (the rest came from the caches).
    pub fn build(&self, sources: &[Source]) -> Result<(Vec<ImageRecord>, usize), DecisionError> {
        let items: Vec<(usize, usize)> =
            sources.iter().enumerate().flat_map(|(s, source)| (0..source.len()).map(move |i| (s, i))).collect();
        let bar = if self.settings.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressBar::with_draw_target(Some(items.len() as u64), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template("per-image figures {wide_bar} {pos}/{len} images, {per_sec}, eta {eta} {msg}") {
            bar.set_style(style);
        }
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
        for (index, item) in items.iter().enumerate() {
            // Unbounded and filled before the workers start: cannot fail.
            let _ = jobs_tx.send((index, *item));
        }
        drop(jobs_tx);
        let (results_tx, results_rx) = crossbeam_channel::unbounded();
        let stop = AtomicBool::new(false);
        let mut records: Vec<Option<ImageRecord>> = vec![None; items.len()];
        let mut computed = 0usize;
        let outcome = std::thread::scope(|scope| -> Result<(), DecisionError> {
            for _ in 0..self.settings.workers.clamp(1, items.len().max(1)) {
                let (jobs, results, stop) = (jobs_rx.clone(), results_tx.clone(), &stop);
                scope.spawn(move || {
                    let mut networks = None;
                    for (index, (s, i)) in jobs.iter() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let result = self.record(&sources[s], i, &mut networks);
                        let failed = result.is_err();
                        if results.send((index, result)).is_err() || failed {
                            break;
                        }
                    }
                });
            }
            drop(results_tx);
            for (index, result) in results_rx.iter() {
                match result {
                    Ok((record, was_computed)) => {
                        computed += usize::from(was_computed);
                        records[index] = Some(record);
                        bar.set_message(format!("({computed} computed, the rest from the cache)"));
                        bar.inc(1);
                    }
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok(())
        });
        bar.finish_and_clear();
        outcome?;
        tracing::info!(images = items.len(), computed, cache = %self.settings.cache_dir.display(), "per-image figures ready");
        let records = records.into_iter().map(|r| r.ok_or(DecisionError::WorkerStopped)).collect::<Result<_, _>>()?;
        Ok((records, computed))
    }

    /// One image's record, from the caches where possible; true when something was computed.
    fn record(&self, source: &Source, index: usize, networks: &mut Option<Networks>) -> Result<(ImageRecord, bool), DecisionError> {
        let loaded = self.identify(source, index)?;
        let outcome_path = self.outcome_path(&loaded.image_sha256, loaded.reference_sha256.as_deref());
        let cached_spp = self.spp_cache.get(&loaded.image_sha256)?;
        let cached_outcome = self.read_outcome(&outcome_path);
        let computed = cached_spp.is_none() || cached_outcome.is_none();
        let (spp, outcome) = match (cached_spp, cached_outcome) {
            (Some(spp), Some(outcome)) => (spp, outcome),
            (cached_spp, cached_outcome) => {
                if networks.is_none() {
                    *networks = Some(Networks::load(&self.settings, &self.small_manifest)?);
                }
                let Some(nets) = networks.as_mut() else { return Err(DecisionError::WorkerStopped) };
                let (frame, mask) = self.decode(source, index)?;
                let spp = match cached_spp {
                    Some(spp) => spp,
                    None => {
                        let spp = nets.encoder.spp_of_frame(&frame.bgr, frame.width, frame.height, &self.settings.spp)?;
                        self.spp_cache.put(&loaded.image_sha256, &spp)?;
                        spp
                    }
                };
                let outcome = match cached_outcome {
                    Some(outcome) => outcome,
                    None => {
                        let outcome = compute_outcome(nets, &loaded.id, &frame, mask.as_ref())?;
                        self.write_outcome(&outcome_path, &outcome)?;
                        outcome
                    }
                };
                (spp, outcome)
            }
        };
        let record = ImageRecord {
            source: source.name.clone(),
            id: loaded.id,
            image_sha256: loaded.image_sha256,
            labels: source.labels(),
            spp,
            outcome,
        };
        Ok((record, computed))
    }

    /// Content hashes of an image and its reference, without decoding.
    fn identify(&self, source: &Source, index: usize) -> Result<Loaded, DecisionError> {
        let hash_file = |path: &Path| -> Result<String, DecisionError> {
            let bytes = std::fs::read(path).map_err(|source| DecisionError::Io { action: "read", path: path.to_path_buf(), source })?;
            Ok(content_hash(&bytes))
        };
        match &source.images {
            SourceImages::Labelled { dataset, teacher } => {
                let id = dataset.ids()[index].clone();
                let image_sha256 = hash_file(&dataset.image_path(&id))?;
                let reference_sha256 = if *teacher { None } else { Some(hash_file(&dataset.mask_path(&id))?) };
                Ok(Loaded { id, image_sha256, reference_sha256 })
            }
            SourceImages::Frames(frames) => {
                let frame = &frames[index];
                let header = format!("bgr {}x{}\n", frame.width, frame.height);
                let image_sha256 = content_hash(&[header.as_bytes(), &frame.bgr].concat());
                Ok(Loaded { id: format!("frame {}", frame.seq), image_sha256, reference_sha256: None })
            }
        }
    }

    /// The decoded frame and, outside teacher mode, its mask.
    fn decode(&self, source: &Source, index: usize) -> Result<(DecodedFrame, Option<ClassMap>), DecisionError> {
        match &source.images {
            SourceImages::Labelled { dataset, teacher: false } => {
                let sample = dataset.read_sample(&dataset.ids()[index])?;
                let image = sample.image;
                Ok((DecodedFrame { bgr: image.bgr, width: image.width, height: image.height }, Some(sample.mask)))
            }
            SourceImages::Labelled { dataset, teacher: true } => {
                let image = dataset.read_image(&dataset.ids()[index])?;
                Ok((DecodedFrame { bgr: image.bgr, width: image.width, height: image.height }, None))
            }
            SourceImages::Frames(frames) => {
                let f = &frames[index];
                Ok((DecodedFrame { bgr: f.bgr.clone(), width: f.width, height: f.height }, None))
            }
        }
    }
}

struct DecodedFrame {
    bgr: Vec<u8>,
    width: u32,
    height: u32,
}

/// Both networks on one frame, scored against `mask`, or against the large network's own output
/// in teacher mode.
fn compute_outcome(nets: &mut Networks, id: &str, frame: &DecodedFrame, mask: Option<&ClassMap>) -> Result<Outcome, DecisionError> {
    let segment_err = |model: &Model| {
        let (model, image) = (model.manifest.name.clone(), id.to_string());
        move |e| DecisionError::Segment { model, image, source: Box::new(e) }
    };
    let (small_map, confidence) =
        nets.small.segment_with_confidence(&frame.bgr, frame.width, frame.height).map_err(segment_err(&nets.small))?;
    let confidence = confidence.ok_or_else(|| DecisionError::Invalid {
        what: "small network",
        problem: format!("{} returns a class map, not logits: its confidence cannot be measured", nets.small.manifest.name),
    })?;
    let large_map = nets.large.segment(&frame.bgr, frame.width, frame.height).map_err(segment_err(&nets.large))?;
    let reference = mask.unwrap_or(&large_map);
    let score = |prediction: &ClassMap| {
        ImageScore::new(id, reference, prediction, VOC_CLASSES)
            .map(|s| s.confusion)
            .map_err(|source| DecisionError::Score { image: id.to_string(), source })
    };
    Ok(Outcome {
        small: score(&small_map)?,
        large: score(&large_map)?,
        mean_max_softmax: confidence.mean_max_softmax,
        mean_entropy: confidence.mean_entropy,
    })
}

/// The hash `dn.toml` records for a set: of its images' content hashes in order.
pub fn set_sha256(records: &[ImageRecord]) -> String {
    super::cache::set_hash(&records.iter().map(|r| r.image_sha256.clone()).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(small: &str, large: &str) -> ImageRecord {
        ImageRecord {
            source: "s".into(),
            id: "x".into(),
            image_sha256: content_hash(b"x"),
            labels: LabelSource::GroundTruth,
            spp: vec![1.0, 2.0],
            outcome: Outcome {
                small: CompactConfusion::parse(small, VOC_CLASSES).unwrap(),
                large: CompactConfusion::parse(large, VOC_CLASSES).unwrap(),
                mean_max_softmax: 0.9,
                mean_entropy: 0.2,
            },
        }
    }

    #[test]
    fn targets_follow_from_the_confusion_matrices() {
        // Small: background 0: 6 right, 2 called person; person (15): 2 right; bus (6) predicted
        // on one background pixel. Large: all right.
        let r = record("0>0:6 0>15:2 15>15:2 0>6:1", "0>0:9 15>15:2");
        let sample = r.sample(&InputsConfig::default()).unwrap();
        // background: 6 / (9 + 6 - 6) = 6/9; person: 2 / (2 + 4 - 2) = 0.5; bus: 0 / 1 = 0.
        assert!((sample.class_iou[0] - 6.0 / 9.0).abs() < 1e-6);
        assert!((sample.class_iou[15] - 0.5).abs() < 1e-6);
        assert_eq!(sample.class_iou[6], 0.0);
        let present: Vec<usize> = (0..21).filter(|&c| sample.present[c]).collect();
        assert_eq!(present, vec![0, 6, 15]);
        let small_img = (6.0 / 9.0 + 0.5 + 0.0) / 3.0;
        assert!((r.small_iou_img() - small_img).abs() < 1e-12);
        assert_eq!(r.large_iou_img(), 1.0);
        assert!((sample.gain as f64 - (1.0 - small_img)).abs() < 1e-6);
        assert!((sample.iou_img() as f64 - small_img).abs() < 1e-6);
    }
}
