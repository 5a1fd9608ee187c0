//! The two commands built on the per-image records ([`super::dataset`]): `dn train` (records →
//! samples → [`super::train::train`] → `dn.toml` + `dn.safetensors`) and `eval routing`
//! (records → the decision network's predictions and the baselines → routing curves through
//! [`crate::eval::routing`]).
//!
//! The policies compared, with what each costs per frame (GFLOPs counted from the ONNX graphs):
//! - `dn-thesis`, `dn-iou-img`, `dn-gain`: the decision network's three rules
//!   ([`super::rule::remote_score`], as the live decision stage scores them). Shared base (the
//!   small network's own 257x257 input): encoder + decision head on every frame, the small
//!   network's head on a local frame, the large network on a remote one. Downscaled base:
//!   encoder at its size + decision head on every frame, the whole small network on a local one.
//! - `max-softmax`, `entropy`: the small network's own confidence; it runs on every frame, and
//!   the large network on remote frames.
//! - `random` (expected figures at each remote fraction) and `oracle` (true gain first): no
//!   decision cost.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::config::{DnConfig, InputsConfig, Split};
use super::dataset::{sample_video, set_sha256, ImageRecord, RecordBuilder, RecordSettings, Source, SourceImages};
use super::net::{mean_prediction, CompiledNet, DecisionNet, NetShape, Prediction};
use super::rule::{remote_score, Rule};
use super::spp::SppConfig;
use super::store::{self, BaseInfo, DataSetInfo, DecisionNetMeta, TrainingInfo};
use super::train::{train, TrainReport};
use super::{DecisionError, VOC_CLASSES};
use crate::eval::routing::{
    bootstrap, evaluate, Direction, FrameCost, NetworkCosts, Policy, PolicyKind, RoutedImage, RoutingEvaluation, RoutingSet,
};
use crate::eval::routing_report::{self, ReportContext, RoutingFiles};
use crate::eval::Dataset;
use crate::infer::onnx_graph::cost_for_manifest;
use crate::infer::ModelManifest;

/// mIoU-drop budgets (points) at which thresholds are chosen.
pub const BUDGETS_POINTS: [f64; 2] = [3.0, 1.0];

/// Resamples behind each normalised AUC's interval by default: enough for stable 5th/95th
/// percentiles, well under a second on a few hundred images.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;
const BOOTSTRAP_SEED: u64 = 20261127;
/// The policy the decision network has to beat (the "confidence baseline").
const CONFIDENCE_BASELINE: &str = "max-softmax";

/// GFLOPs per frame of every part that routing can run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartCosts {
    pub small: f64,
    pub large: f64,
    /// The encoder at the base's input size.
    pub encoder: f64,
    /// The small network's head on 257x257-input features.
    pub head: f64,
    pub decision_head: f64,
    /// Whether the base shares the small network's input (a local frame reuses its features).
    pub shared: bool,
    /// Whether the decision network reads the small network's confidence, so that the small
    /// network runs on every frame before the decision.
    pub small_on_every_frame: bool,
}

impl PartCosts {
    /// Costs of `config`'s networks, with the encoder at `input_size` giving `channels` channels
    /// and a decision head of `decision_shape` reading `inputs`.
    pub fn measure(
        config: &DnConfig,
        input_size: u32,
        channels: usize,
        decision_shape: &NetShape,
        inputs: &InputsConfig,
    ) -> Result<Self, DecisionError> {
        let gflops = |path: &Path| -> Result<f64, DecisionError> {
            let manifest =
                ModelManifest::load(path).map_err(|e| DecisionError::Model { manifest: path.to_path_buf(), source: Box::new(e.into()) })?;
            Ok(cost_for_manifest(&manifest)?.1.gflops())
        };
        let small_manifest = ModelManifest::load(&config.models.small)
            .map_err(|e| DecisionError::Model { manifest: config.models.small.clone(), source: Box::new(e.into()) })?;
        let small_size = small_manifest.input.width;
        let side = |size: u32| (size as usize - 1) / 8 + 1;
        Ok(PartCosts {
            small: gflops(&config.models.small)?,
            large: gflops(&config.models.large)?,
            encoder: super::base::part_gflops(&config.base.encoder, &[1, input_size as usize, input_size as usize, 3])?,
            head: super::base::part_gflops(&config.base.head, &[1, channels, side(small_size), side(small_size)])?,
            decision_head: decision_shape.flops() as f64 / 1e9,
            shared: input_size == small_size && small_manifest.input.height == small_size,
            small_on_every_frame: inputs.small_confidence,
        })
    }

    /// What a decision-network rule costs per frame.
    pub fn decision_network(&self) -> FrameCost {
        let decision = self.encoder + self.decision_head;
        if self.small_on_every_frame {
            // The small network's output is known before deciding: a local frame costs nothing more.
            let small = if self.shared { self.head } else { self.small };
            FrameCost { decision: decision + small, local: 0.0, remote: self.large }
        } else if self.shared {
            FrameCost { decision, local: self.head, remote: self.large }
        } else {
            FrameCost { decision, local: self.small, remote: self.large }
        }
    }

    /// The decision's own cost against the small network: for a local frame with the shared
    /// base (its features are reused, so only the decision head counts), per frame otherwise.
    pub fn decision_over_small(&self) -> f64 {
        let cost = self.decision_network();
        if self.shared {
            (cost.decision + cost.local - self.small) / self.small
        } else {
            cost.decision / self.small
        }
    }

    pub fn networks(&self) -> NetworkCosts {
        NetworkCosts { small: self.small, large: self.large }
    }
}

/// Every policy of the module doc, on `records` with the network's `predictions`.
pub fn policies(records: &[ImageRecord], predictions: &[Prediction], presence: f32, costs: &PartCosts) -> Vec<Policy> {
    let dn = costs.decision_network();
    let plain = FrameCost { decision: 0.0, local: costs.small, remote: costs.large };
    let confidence = FrameCost { decision: costs.small, local: 0.0, remote: costs.large };
    let rule = |name: &str, rule: Rule| {
        // remote_score is "higher = remote sooner"; the quality rules read better as "local above t".
        let (sign, direction) = match rule {
            Rule::Gain => (1.0, Direction::RemoteAbove),
            Rule::Thesis | Rule::PredictedIouImg => (-1.0, Direction::LocalAbove),
        };
        let values = predictions.iter().map(|p| sign * remote_score(rule, p, presence) as f64).collect();
        Policy { name: name.to_string(), kind: PolicyKind::Values { values, direction }, cost: dn }
    };
    let max_entropy = (VOC_CLASSES.len() as f64).ln();
    vec![
        rule("dn-thesis", Rule::Thesis),
        rule("dn-iou-img", Rule::PredictedIouImg),
        rule("dn-gain", Rule::Gain),
        Policy {
            name: "max-softmax".into(),
            kind: PolicyKind::Values {
                values: records.iter().map(|r| r.outcome.mean_max_softmax as f64).collect(),
                direction: Direction::LocalAbove,
            },
            cost: confidence,
        },
        Policy {
            name: "entropy".into(),
            kind: PolicyKind::Values {
                values: records.iter().map(|r| r.outcome.mean_entropy as f64 / max_entropy).collect(),
                direction: Direction::RemoteAbove,
            },
            cost: confidence,
        },
        Policy { name: "random".into(), kind: PolicyKind::Random, cost: plain },
        Policy { name: "oracle".into(), kind: PolicyKind::Oracle, cost: plain },
    ]
}

fn routing_set(records: &[ImageRecord]) -> Result<RoutingSet, DecisionError> {
    Ok(RoutingSet::new(records.iter().map(|r| RoutedImage::new(&r.outcome.small, &r.outcome.large)).collect())?)
}

/// Predictions of `nets` for `records`, frame by frame through [`CompiledNet`] as the live
/// decision runs, averaged over the networks (an ensemble of seeds).
fn predictions(nets: &[&DecisionNet], inputs: &InputsConfig, records: &[ImageRecord]) -> Result<Vec<Prediction>, DecisionError> {
    let compiled = nets.iter().map(|net| net.compile()).collect::<Result<Vec<CompiledNet>, _>>()?;
    records.iter().map(|record| mean_prediction(&compiled, &record.input(inputs)?)).collect()
}

/// Every policy of `nets` (their averaged predictions) and the baselines on `records`.
fn scored(
    nets: &[&DecisionNet],
    inputs: &InputsConfig,
    presence: f32,
    costs: &PartCosts,
    records: &[ImageRecord],
) -> Result<Vec<Policy>, DecisionError> {
    Ok(policies(records, &predictions(nets, inputs, records)?, presence, costs))
}

/// Routing figures of already scored `records`, thresholds chosen on `choose_on` (or on
/// `records`).
fn evaluate_scored(
    costs: &PartCosts,
    records: &[ImageRecord],
    evaluated: &[Policy],
    choose_on: Option<(&[ImageRecord], &[Policy])>,
    resamples: usize,
) -> Result<RoutingEvaluation, DecisionError> {
    let choosing = match choose_on {
        Some((records, policies)) => Some((routing_set(records)?, policies)),
        None => None,
    };
    let set = routing_set(records)?;
    let mut evaluation = evaluate(&set, evaluated, costs.networks(), choosing.as_ref().map(|(s, p)| (s, *p)), &BUDGETS_POINTS)?;
    bootstrap(&mut evaluation, &set, evaluated, resamples, BOOTSTRAP_SEED, Some(CONFIDENCE_BASELINE))?;
    Ok(evaluation)
}

/// Routing figures of `nets` (their averaged predictions) on `records`, thresholds chosen on
/// the records themselves.
pub fn routing_evaluation(
    nets: &[&DecisionNet],
    inputs: &InputsConfig,
    presence: f32,
    costs: &PartCosts,
    records: &[ImageRecord],
) -> Result<RoutingEvaluation, DecisionError> {
    evaluate_scored(costs, records, &scored(nets, inputs, presence, costs, records)?, None, BOOTSTRAP_RESAMPLES)
}

/// `images.csv` of `eval routing`: one row per image of every part (`report`, `validation`) with
/// both networks' IoU_img, the true gain, every scoring policy's value and both confusion
/// matrices, so that a routing can be audited frame by frame and other policies or targets can
/// be studied on the same figures without running a network again.
pub fn images_csv(parts: &[(&str, &[ImageRecord], &[Policy])]) -> String {
    use std::fmt::Write as _;
    let value_names: Vec<&str> = parts
        .first()
        .map(|(_, _, policies)| policies.iter().filter(|p| matches!(p.kind, PolicyKind::Values { .. })).map(|p| p.name.as_str()).collect())
        .unwrap_or_default();
    let mut out = String::from("part,source,id,image_sha256,labels,small_iou_img,large_iou_img,gain,well_segmented");
    for name in &value_names {
        let _ = write!(out, ",{name}");
    }
    out.push_str(",small_confusion,large_confusion\n");
    // Sources are set names and ids file stems or `frame <n>`; a comma would shift the columns.
    let field = |text: &str| text.replace(',', ";");
    for (part, records, policies) in parts {
        for (i, record) in records.iter().enumerate() {
            let image = RoutedImage::new(&record.outcome.small, &record.outcome.large);
            let labels = match record.labels {
                store::LabelSource::GroundTruth => "ground-truth",
                store::LabelSource::Teacher => "teacher",
            };
            let _ = write!(
                out,
                "{part},{},{},{},{labels},{:.6},{:.6},{:.6},{}",
                field(&record.source),
                field(&record.id),
                record.image_sha256,
                image.small_iou_img,
                image.large_iou_img,
                image.gain(),
                image.well()
            );
            for policy in policies.iter() {
                if let PolicyKind::Values { values, .. } = &policy.kind {
                    let _ = write!(out, ",{:.6}", values[i]);
                }
            }
            let _ = writeln!(out, ",{},{}", record.outcome.small, record.outcome.large);
        }
    }
    out
}

fn settings(config: &DnConfig, input_size: u32, spp: &SppConfig, progress: bool) -> RecordSettings {
    RecordSettings {
        encoder: config.base.encoder.clone(),
        input_size,
        spp: spp.clone(),
        small: config.models.small.clone(),
        large: config.models.large.clone(),
        cache_dir: config.compute.cache_dir.clone(),
        workers: config.compute.workers.get(),
        intra_threads: config.compute.intra_threads.get(),
        progress,
    }
}

/// The labelled sets and sampled videos of `config` with the given split.
fn sources(config: &DnConfig, split: Split) -> Result<Vec<Source>, DecisionError> {
    let mut out = Vec::new();
    for set in config.sets.iter().filter(|s| s.split == split) {
        let dataset = Dataset::open(&set.data, set.list.as_deref(), VOC_CLASSES.len())?;
        if let Some(rejected) = dataset.rejected().first() {
            return Err(rejected.clone().into());
        }
        out.push(Source { name: set.name.clone(), images: SourceImages::Labelled { dataset, teacher: set.teacher } });
    }
    for video in config.videos.iter().filter(|v| v.split == split) {
        let frames = sample_video(&video.pipeline, &video.path, video.every.get(), video.max_frames.get())?;
        tracing::info!(video = %video.path.display(), frames = frames.len(), every = video.every.get(), "teacher frames sampled");
        out.push(Source { name: video.name.clone(), images: SourceImages::Frames(frames) });
    }
    Ok(out)
}

fn describe_sets(sources: &[Source], records: &[ImageRecord]) -> Vec<DataSetInfo> {
    sources
        .iter()
        .map(|s| {
            let own: Vec<ImageRecord> = records.iter().filter(|r| r.source == s.name).cloned().collect();
            DataSetInfo { name: s.name.clone(), sha256: set_sha256(&own), images: own.len(), labels: s.labels() }
        })
        .collect()
}

/// What `dn train` did.
#[derive(Debug)]
pub struct TrainOutcome {
    pub toml: PathBuf,
    pub report: TrainReport,
    pub train_images: usize,
    pub validation_images: usize,
    /// Images that missed the cache (the networks ran on them).
    pub computed_images: usize,
    /// Computing (or reading back) the per-image figures.
    pub features_s: f64,
    pub training_s: f64,
    pub costs: PartCosts,
    /// Routing on the validation sets (thresholds chosen there too), when there are any.
    pub validation_routing: Option<RoutingEvaluation>,
}

/// `edgeseg dn train`: see the module doc. Writes `dn.toml` + `dn.safetensors` into `out_dir`
/// (default `output.dir`).
pub fn train_from_config(config: &DnConfig, out_dir: Option<&Path>) -> Result<TrainOutcome, DecisionError> {
    let started = Instant::now();
    let builder = RecordBuilder::new(settings(config, config.base.input_size, &config.spp, config.training.progress))?;
    let train_sources = sources(config, Split::Train)?;
    let validation_sources = sources(config, Split::Validation)?;
    let (train_records, train_computed) = builder.build(&train_sources)?;
    let (validation_records, validation_computed) = builder.build(&validation_sources)?;
    let features_s = started.elapsed().as_secs_f64();
    let sample = |r: &ImageRecord| r.sample(&config.inputs);
    let train_samples = train_records.iter().map(sample).collect::<Result<Vec<_>, _>>()?;
    let validation_samples = validation_records.iter().map(sample).collect::<Result<Vec<_>, _>>()?;
    let input_len = train_samples.first().map(|s| s.spp.len()).unwrap_or(0);
    let channels = train_records.first().map_or(0, |r| r.spp.len()) / config.spp.values_per_channel().max(1);
    let shape = NetShape::for_input(input_len).with_hidden(config.training.hidden);
    let trained = Instant::now();
    let (net, report) = train(&train_samples, &validation_samples, shape, &config.training)?;
    let training_s = trained.elapsed().as_secs_f64();

    let encoder_name = config.base.encoder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let meta = DecisionNetMeta {
        format: store::FORMAT_VERSION,
        weights: String::new(),
        weights_sha256: String::new(),
        classes: VOC_CLASSES.iter().map(|c| c.to_string()).collect(),
        base: BaseInfo {
            encoder: encoder_name,
            encoder_sha256: super::cache::file_sha256(&config.base.encoder)?,
            input_size: config.base.input_size,
            channels,
        },
        spp: config.spp.clone(),
        inputs: config.inputs,
        layers: shape,
        training: TrainingInfo {
            settings: config.training.clone(),
            sets: describe_sets(&train_sources, &train_records),
            validation_sets: describe_sets(&validation_sources, &validation_records),
            final_train_loss: report.final_train_loss,
        },
        validation: report.validation.last().cloned(),
    };
    let dir = out_dir.unwrap_or(&config.output.dir);
    let toml = dir.join("dn.toml");
    store::save(&toml, &net, meta)?;
    let costs = PartCosts::measure(config, config.base.input_size, channels, &shape, &config.inputs)?;
    let validation_routing = if validation_records.is_empty() {
        None
    } else {
        Some(routing_evaluation(&[&net], &config.inputs, config.training.presence as f32, &costs, &validation_records)?)
    };
    Ok(TrainOutcome {
        toml,
        report,
        computed_images: train_computed + validation_computed,
        train_images: train_records.len(),
        validation_images: validation_records.len(),
        features_s,
        training_s,
        costs,
        validation_routing,
    })
}

/// A labelled folder and its optional id list, as given on the command line.
#[derive(Debug, Clone)]
pub struct DataArg {
    pub data: PathBuf,
    pub list: Option<PathBuf>,
}

impl DataArg {
    /// `camvid_voc/val.txt`-style name.
    pub fn name(&self) -> String {
        let folder = self.data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| self.data.display().to_string());
        match &self.list {
            Some(list) => format!("{folder}/{}", list.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
            None => folder,
        }
    }

    fn source(&self) -> Result<Source, DecisionError> {
        let dataset = Dataset::open(&self.data, self.list.as_deref(), VOC_CLASSES.len())?;
        if let Some(rejected) = dataset.rejected().first() {
            return Err(rejected.clone().into());
        }
        Ok(Source { name: self.name(), images: SourceImages::Labelled { dataset, teacher: false } })
    }
}

/// What `eval routing` is asked to do.
#[derive(Debug, Clone)]
pub struct RoutingRequest {
    pub dn: PathBuf,
    /// Further networks for the same base, SPP and inputs (e.g. other seeds): the decision
    /// network's predictions are then the mean of all of them.
    pub ensemble: Vec<PathBuf>,
    pub data: Vec<DataArg>,
    pub choose_on: Vec<DataArg>,
    pub out: PathBuf,
    pub progress: bool,
    /// Bootstrap resamples for the normalised AUCs' intervals (0: none).
    pub resamples: usize,
}

/// `edgeseg eval routing`: records of the evaluated (and choosing) sets with the decision
/// network's base, every policy's curves, thresholds chosen on `choose_on`, files into `out`.
pub fn evaluate_routing(config: &DnConfig, request: &RoutingRequest) -> Result<(RoutingEvaluation, RoutingFiles), DecisionError> {
    let loaded = store::load(&request.dn)?;
    let base = &loaded.meta.base;
    let encoder_sha256 = super::cache::file_sha256(&config.base.encoder)?;
    loaded.check_base(&encoder_sha256, base.input_size, base.channels, &loaded.meta.spp)?;
    let members = request.ensemble.iter().map(|path| store::load(path)).collect::<Result<Vec<_>, _>>()?;
    for member in &members {
        member.check_base(&encoder_sha256, base.input_size, base.channels, &loaded.meta.spp)?;
        if member.meta.inputs != loaded.meta.inputs {
            return Err(DecisionError::BaseMismatch {
                path: member.path.clone(),
                problem: "its [inputs] differ from the first network's".into(),
            });
        }
    }
    let nets: Vec<&DecisionNet> = std::iter::once(&loaded.net).chain(members.iter().map(|m| &m.net)).collect();
    let builder = RecordBuilder::new(settings(config, base.input_size, &loaded.meta.spp, request.progress))?;
    let sources_of = |args: &[DataArg]| args.iter().map(DataArg::source).collect::<Result<Vec<_>, _>>();
    let (records, _) = builder.build(&sources_of(&request.data)?)?;
    let choosing = if request.choose_on.is_empty() { None } else { Some(builder.build(&sources_of(&request.choose_on)?)?.0) };
    let meta = &loaded.meta;
    let costs = PartCosts::measure(config, base.input_size, base.channels, &meta.layers, &meta.inputs)?;
    let presence = meta.training.settings.presence as f32;
    let evaluated = scored(&nets, &meta.inputs, presence, &costs, &records)?;
    let choosing = match choosing {
        Some(records) => {
            let policies = scored(&nets, &meta.inputs, presence, &costs, &records)?;
            Some((records, policies))
        }
        None => None,
    };
    let choosing_scored = choosing.as_ref().map(|(r, p)| (r.as_slice(), p.as_slice()));
    let evaluation = evaluate_scored(&costs, &records, &evaluated, choosing_scored, request.resamples)?;
    let mut parts: Vec<(&str, &[ImageRecord], &[Policy])> = vec![("report", &records, &evaluated)];
    if let Some((records, policies)) = &choosing {
        parts.push(("validation", records, policies));
    }
    let images = images_csv(&parts);
    let names =
        |args: &[DataArg], count: usize| format!("{} ({count} images)", args.iter().map(DataArg::name).collect::<Vec<_>>().join(" + "));
    let trained_on: Vec<String> = loaded.meta.training.sets.iter().map(|s| format!("{} ({})", s.name, s.images)).collect();
    let context = ReportContext {
        title: "Routing between the small and the large network".into(),
        evaluated: names(&request.data, records.len()),
        chosen_on: choosing.as_ref().map(|c| names(&request.choose_on, c.0.len())),
        notes: vec![
            format!(
                "decision network: {} (base {} at {}x{}, SPP {}{}; trained on {})",
                std::iter::once(&request.dn).chain(&request.ensemble).map(|p| p.display().to_string()).collect::<Vec<_>>().join(" + "),
                base.encoder,
                base.input_size,
                base.input_size,
                loaded.meta.spp.describe(),
                if meta.inputs.small_confidence { " + the small network's confidence" } else { "" },
                trained_on.join(", ")
            ),
            format!(
                "GFLOPs: base at {} {:.3}, rest of the small network {:.3}, decision head {:.4}; decision ÷ small {} = {:.4}",
                base.input_size,
                costs.encoder,
                costs.head,
                costs.decision_head,
                if costs.shared { "for a local frame (shared base)" } else { "per frame (downscaled base)" },
                costs.decision_over_small()
            ),
        ],
    };
    let files = routing_report::write(&evaluation, &context, &images, &request.out)?;
    Ok((evaluation, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference costs: small 1.45 = encoder 1.065 + head 0.385, large 5.48.
    fn costs(shared: bool, small_on_every_frame: bool) -> PartCosts {
        let encoder = if shared { 1.065 } else { 0.282 };
        PartCosts { small: 1.45, large: 5.48, encoder, head: 0.385, decision_head: 0.002, shared, small_on_every_frame }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn each_base_pays_what_the_cost_model_says() {
        // Shared base: encoder + decision head on every frame, the small head on a local one
        // (so a local frame costs small + decision head), the large network on a remote one.
        let c = costs(true, false).decision_network();
        close(c.decision, 1.065 + 0.002);
        close(c.local, 0.385);
        close(c.remote, 5.48);
        close(costs(true, false).decision_over_small(), 0.002 / 1.45);
        // Downscaled base: encoder at 129 + decision head on every frame, the whole small network on a local one.
        let c = costs(false, false).decision_network();
        close(c.decision, 0.282 + 0.002);
        close(c.local, 1.45);
        close(costs(false, false).decision_over_small(), 0.284 / 1.45);
        // Reading the small network's confidence: the whole small network (and the decision head) on every frame.
        let c = costs(true, true).decision_network();
        close(c.decision, 1.065 + 0.385 + 0.002);
        close(c.local, 0.0);
        close(costs(true, true).decision_over_small(), 0.002 / 1.45);
        let c = costs(false, true).decision_network();
        close(c.decision, 0.282 + 1.45 + 0.002);
    }

    #[test]
    fn confidence_baselines_run_the_small_network_on_every_frame() {
        let c = costs(true, false);
        let policies = policies(&[], &[], 0.5, &c);
        let cost = |name: &str| policies.iter().find(|p| p.name == name).unwrap().cost;
        for name in ["max-softmax", "entropy"] {
            assert_eq!(cost(name), FrameCost { decision: 1.45, local: 0.0, remote: 5.48 }, "{name}");
        }
        assert_eq!(cost("random"), FrameCost { decision: 0.0, local: 1.45, remote: 5.48 });
        assert_eq!(cost("dn-thesis"), c.decision_network());
    }
}
