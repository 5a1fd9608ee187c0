//! `config/dn.toml`: what `edgeseg dn train` trains on and how, checked once at load in the
//! style of [`crate::config`] (every wrong key reported at once, with the file and key named;
//! relative paths resolved against the file's folder; `${EDGESEG_ASSETS}` expanded).
//!
//! `edgeseg eval routing` reads the same file for the networks, the encoder and the cache, so
//! an evaluation computes its per-image figures exactly as training did (and shares its cache).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::base::SHARED_INPUT_SIZE;
use super::spp::SppConfig;
use super::train::TrainConfig;
use crate::config::{load, resolve, Checker, ConfigError, Count};
use crate::infer::manifest::assets_dir;

/// `[base]`: the encoder whose pooled features the network reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaseConfig {
    /// The first part of the small network, split off by `scripts/split_small.py`:
    /// `small_stem.onnx` (its first six blocks, the default) or `small_encoder.onnx`.
    pub encoder: PathBuf,
    /// The rest of the small network, `small_trunk.onnx` or `small_head.onnx` (only its cost
    /// is read here).
    pub head: PathBuf,
    /// Square input size: 257 shares the small network's input (a local frame reuses the
    /// features), smaller sizes (e.g. 129) decide on a downscaled frame.
    pub input_size: u32,
}

impl Default for BaseConfig {
    fn default() -> Self {
        BaseConfig {
            encoder: PathBuf::from("../models/derived/small_stem.onnx"),
            head: PathBuf::from("../models/derived/small_trunk.onnx"),
            input_size: SHARED_INPUT_SIZE,
        }
    }
}

/// `[models]`: the two networks routing chooses between (model manifests).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    pub small: PathBuf,
    pub large: PathBuf,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig { small: PathBuf::from("../models/deeplab-small.toml"), large: PathBuf::from("../models/deeplab-large-fp32.toml") }
    }
}

/// `[compute]`: how the per-image figures are computed and where they are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComputeConfig {
    /// Images processed at once, each worker with its own ONNX Runtime sessions.
    pub workers: Count<64>,
    /// ONNX Runtime intra-op threads per session (1: the workers are the parallelism).
    pub intra_threads: Count<64>,
    /// Per-image cache (SPP vectors, confusion matrices, confidence), reused by later runs.
    pub cache_dir: PathBuf,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig { workers: Count::literal(2), intra_threads: Count::literal(1), cache_dir: PathBuf::from("../out/cache") }
    }
}

/// `[inputs]`: what the network reads besides the SPP vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputsConfig {
    /// Append the small network's own confidence (mean max-softmax, mean entropy / ln 21) to the
    /// SPP vector. It needs the small network's head on every frame, remote ones too, so a
    /// frame's decision costs the whole small network (as the confidence baselines do).
    pub small_confidence: bool,
}

impl InputsConfig {
    /// Values appended to the SPP vector.
    pub fn extra_len(&self) -> usize {
        if self.small_confidence {
            2
        } else {
            0
        }
    }

    /// The network's input for one frame: its SPP vector, then the extra values.
    /// `confidence` = (mean max-softmax, mean entropy in nats) of the small network's output.
    pub fn compose(&self, spp: &[f32], confidence: Option<(f32, f32)>) -> Result<Vec<f32>, super::DecisionError> {
        let mut input = spp.to_vec();
        if self.small_confidence {
            let (max_softmax, entropy) = confidence.ok_or_else(|| super::DecisionError::Invalid {
                what: "decision network input",
                problem: "the network reads the small network's confidence ([inputs] small_confidence), none was given".into(),
            })?;
            input.extend([max_softmax, entropy / (super::VOC_CLASSES.len() as f32).ln()]);
        }
        Ok(input)
    }
}

/// Which part of the data a set belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Train,
    /// Reported during training (and a natural `--choose-on` set); never trained on.
    Validation,
}

/// One `[[sets]]` entry: a labelled folder in VOC layout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelledSetConfig {
    pub name: String,
    /// Folder with `JPEGImages/` and `SegmentationClass/`.
    pub data: PathBuf,
    /// Image ids, one per line; every image with a mask when absent.
    #[serde(default)]
    pub list: Option<PathBuf>,
    pub split: Split,
    /// Use the large network's output as the reference instead of the masks.
    #[serde(default)]
    pub teacher: bool,
}

/// One `[[videos]]` entry: frames labelled by the large network (teacher mode).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoConfig {
    pub name: String,
    pub path: PathBuf,
    /// Keep every this many-th decoded frame (neighbouring frames are near duplicates).
    pub every: Count<{ usize::MAX }>,
    /// At most this many frames are kept.
    pub max_frames: Count<100_000>,
    pub split: Split,
    /// GStreamer description that decodes `path` (its `${location}`).
    #[serde(default = "file_pipeline")]
    pub pipeline: PathBuf,
}

fn file_pipeline() -> PathBuf {
    PathBuf::from("../pipelines/file.pipeline")
}

/// `[output]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnOutputConfig {
    /// Receives `dn.toml` and `dn.safetensors`.
    pub dir: PathBuf,
}

impl Default for DnOutputConfig {
    fn default() -> Self {
        DnOutputConfig { dir: PathBuf::from("../out/dn") }
    }
}

/// Everything `config/dn.toml` holds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnConfig {
    pub base: BaseConfig,
    pub spp: SppConfig,
    pub inputs: InputsConfig,
    pub models: ModelsConfig,
    pub compute: ComputeConfig,
    pub sets: Vec<LabelledSetConfig>,
    pub videos: Vec<VideoConfig>,
    pub training: TrainConfig,
    pub output: DnOutputConfig,
}

/// `${EDGESEG_ASSETS}` in a path becomes the assets folder, then a relative path is taken from
/// the config's folder.
fn expand(base: &Path, p: &mut PathBuf) {
    let text = p.to_string_lossy();
    if text.contains("${EDGESEG_ASSETS}") {
        *p = PathBuf::from(text.replace("${EDGESEG_ASSETS}", &assets_dir().to_string_lossy()));
    }
    resolve(base, p);
}

impl DnConfig {
    /// Reads and checks `path`, with `section.key=value` overrides applied first.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        load(path, overrides, DnConfig::resolve_paths, DnConfig::validate)
    }

    fn resolve_paths(&mut self, base: &Path) {
        expand(base, &mut self.base.encoder);
        expand(base, &mut self.base.head);
        expand(base, &mut self.models.small);
        expand(base, &mut self.models.large);
        expand(base, &mut self.compute.cache_dir);
        expand(base, &mut self.output.dir);
        for set in &mut self.sets {
            expand(base, &mut set.data);
            if let Some(list) = set.list.as_mut() {
                expand(base, list);
            }
        }
        for video in &mut self.videos {
            expand(base, &mut video.path);
            expand(base, &mut video.pipeline);
        }
    }

    fn validate(&self, c: &mut Checker) {
        c.file(
            "base.encoder",
            &self.base.encoder,
            "scripts/fixtures makes models/derived/small_stem.onnx and small_encoder.onnx from the real small network",
        );
        c.file(
            "base.head",
            &self.base.head,
            "scripts/fixtures makes models/derived/small_trunk.onnx and small_head.onnx from the real small network",
        );
        let size = self.base.input_size;
        c.check((33..=2049).contains(&size), "base.input_size", size, "is outside 33..=2049 (257 shares the small network's input)");
        if let Err(e) = self.spp.validate() {
            c.check(false, "spp.levels", format!("{:?}", self.spp.levels), &e.to_string());
        }
        c.file("models.small", &self.models.small, "see models/*.toml");
        c.file("models.large", &self.models.large, "see models/*.toml");
        c.check(!self.compute.cache_dir.as_os_str().is_empty(), "compute.cache_dir", "(missing)", "must be set");
        c.check(!self.output.dir.as_os_str().is_empty(), "output.dir", "(missing)", "must be set");
        let mut names = BTreeSet::new();
        for (i, set) in self.sets.iter().enumerate() {
            let key = |k: &str| format!("sets[{i}].{k}");
            c.check(!set.name.trim().is_empty(), &key("name"), "\"\"", "is empty");
            c.check(names.insert(set.name.clone()), &key("name"), &set.name, "is used by another set or video");
            let layout_ok = set.data.join("JPEGImages").is_dir() && (set.teacher || set.data.join("SegmentationClass").is_dir());
            c.check(layout_ok, &key("data"), set.data.display(), "is not a VOC-layout folder (JPEGImages/, SegmentationClass/)");
            if let Some(list) = &set.list {
                c.check(list.is_file(), &key("list"), list.display(), "does not exist (one image id per line)");
            }
        }
        for (i, video) in self.videos.iter().enumerate() {
            let key = |k: &str| format!("videos[{i}].{k}");
            c.check(!video.name.trim().is_empty(), &key("name"), "\"\"", "is empty");
            c.check(names.insert(video.name.clone()), &key("name"), &video.name, "is used by another set or video");
            c.file(&key("path"), &video.path, "a video file GStreamer can decode");
            c.file(&key("pipeline"), &video.pipeline, "see pipelines/file.pipeline");
        }
        let training_sources = self.sets.iter().map(|s| s.split).chain(self.videos.iter().map(|v| v.split)).filter(|&s| s == Split::Train);
        c.check(training_sources.count() > 0, "sets", "(none with split = \"train\")", "must name at least one training set or video");
        if let Err(e) = self.training.validate() {
            c.check(false, "training", "(settings)", &e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Problem;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn problems(error: ConfigError) -> Vec<Problem> {
        match error {
            ConfigError::Invalid { problems, .. } => problems,
            other => panic!("expected invalid values, got {other}"),
        }
    }

    /// A config in `dir` whose paths exist (fixture models stand in for the real ones, an empty
    /// file for the encoder: loading the config does not open them).
    fn config_file(dir: &Path, extra: &str) -> PathBuf {
        let data = dir.join("set");
        std::fs::create_dir_all(data.join("JPEGImages")).unwrap();
        std::fs::create_dir_all(data.join("SegmentationClass")).unwrap();
        std::fs::write(dir.join("encoder.onnx"), b"").unwrap();
        std::fs::write(dir.join("head.onnx"), b"").unwrap();
        let text = format!(
            "[base]\nencoder = \"encoder.onnx\"\nhead = \"head.onnx\"\n[models]\nsmall = \"{small}\"\nlarge = \"{large}\"\n\
             [[sets]]\nname = \"a\"\ndata = \"set\"\nsplit = \"train\"\n{extra}",
            small = root().join("models/small.toml").display(),
            large = root().join("models/large.toml").display(),
        );
        let path = dir.join("dn.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn shipped_config_parses_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let config = DnConfig::load(&config_file(dir.path(), ""), &[]).unwrap();
        assert_eq!(config.base.input_size, 257);
        assert_eq!(config.spp, SppConfig::default());
        assert_eq!(config.compute.workers.get(), 2);
        assert_eq!(config.training.batch_size, 20);
        assert_eq!(config.training.base_lr, 0.001);
        assert_eq!(config.training.lr_power, 0.9);
        assert_eq!(config.sets[0].data, dir.path().join("set"), "relative to the file");
        assert_eq!(config.output.dir, dir.path().parent().unwrap().join("out/dn"));
        // The shipped file is only checked for keys here: its data need the assets.
        let text = std::fs::read_to_string(root().join("config/dn.toml")).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let parsed: Result<DnConfig, _> = toml::Value::Table(table).try_into();
        parsed.expect("config/dn.toml has only known keys");
    }

    #[test]
    fn confidence_inputs_follow_the_spp_vector() {
        let spp = [0.5, 1.5];
        assert_eq!(InputsConfig::default().compose(&spp, None).unwrap(), spp);
        let with = InputsConfig { small_confidence: true };
        let input = with.compose(&spp, Some((0.8, 21f32.ln() / 2.0))).unwrap();
        assert_eq!(input.len(), 2 + with.extra_len());
        assert_eq!(&input[..3], &[0.5, 1.5, 0.8]);
        assert!((input[3] - 0.5).abs() < 1e-6, "entropy is scaled by ln 21: {input:?}");
        assert!(with.compose(&spp, None).unwrap_err().to_string().contains("small_confidence"));
    }

    #[test]
    fn each_bad_value_is_named_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = config_file(dir.path(), "");
        let cases: &[(&str, &str, &str)] = &[
            ("base.input_size=20", "base.input_size = 20", "is outside 33..=2049"),
            ("base.encoder=/no/enc.onnx", "base.encoder = /no/enc.onnx", "scripts/fixtures"),
            ("spp.levels=[]", "spp.levels = []", "no level"),
            ("spp.pooling=\"median\"", "spp.pooling = median", "unknown variant"),
            ("inputs.colour=true", "inputs.colour = true", "unknown field"),
            ("models.large=/no.toml", "models.large = /no.toml", "does not exist"),
            ("compute.workers=0", "compute.workers = 0", "is outside 1..=64"),
            ("training.batch_size=0", "training = (settings)", "at least 1"),
            ("training.base_lr=-1", "training = (settings)", "base_lr"),
            ("training.dropout=2", "training = (settings)", "dropout"),
            ("training.optimizer.momentum=0.9", "training.optimizer", "missing field `kind`"),
            ("training.colour=1", "training.colour = 1", "unknown field"),
            ("output.dir=\"\"", "output.dir = (missing)", "must be set"),
        ];
        for (set, key_value, problem) in cases {
            let found = problems(DnConfig::load(&path, &[set.to_string()]).expect_err(set));
            assert_eq!(found.len(), 1, "{set}: {found:?}");
            let message = found[0].to_string();
            assert!(message.starts_with(key_value) && message.contains(problem), "{set}: {message:?}");
        }
    }

    #[test]
    fn sets_and_videos_are_checked_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let extra = "[[sets]]\nname = \"a\"\ndata = \"nowhere\"\nlist = \"no.txt\"\nsplit = \"validation\"\n\
                     [[videos]]\nname = \"v\"\npath = \"no.mp4\"\nevery = 5\nmax_frames = 10\nsplit = \"train\"\n";
        let path = config_file(dir.path(), extra);
        let found = problems(DnConfig::load(&path, &[]).unwrap_err());
        let text = found.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
        for expected in ["sets[1].name = a is used by another", "sets[1].data", "sets[1].list", "videos[0].path"] {
            assert!(text.contains(expected), "{expected} missing from {text}");
        }
        let every = problems(
            DnConfig::load(&path, &["videos=[{name=\"v\", path=\"x\", every=0, max_frames=1, split=\"train\"}]".into()]).unwrap_err(),
        );
        assert!(every.iter().any(|p| p.key == "videos[0].every" && p.problem.contains("at least 1")), "{every:?}");
        let only_validation = "[[sets]]\nname = \"b\"\ndata = \"set\"\nsplit = \"validation\"\n";
        let path = config_file(dir.path(), only_validation);
        let text = std::fs::read_to_string(&path).unwrap().replacen("split = \"train\"", "split = \"validation\"", 1);
        std::fs::write(&path, text).unwrap();
        let found = problems(DnConfig::load(&path, &[]).unwrap_err());
        assert!(found.iter().any(|p| p.key == "sets" && p.problem.contains("at least one training")), "{found:?}");
    }
}
