//! A trained decision network on disk: `dn.safetensors` (the tensors named in
//! [`NetShape::tensor_shapes`], f32) and `dn.toml` beside it (what base and SPP produced its
//! inputs, layer sizes, classes, training settings and sets with their hashes, validation
//! metrics, and the SHA-256 of the weights file so the two cannot be mixed up).
//!
//! Loading checks everything it can without a frame: the toml's consistency (SPP length =
//! channels x bins = input layer), the weights' hash, every tensor's presence and shape.
//! [`LoadedDecisionNet::check_base`] then checks the network against the encoder actually
//! configured. Each failure is a typed error naming the file.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::cache::{content_hash, file_sha256};
use super::config::InputsConfig;
use super::net::{DecisionNet, NetShape};
use super::spp::SppConfig;
use super::train::{TrainConfig, ValidationMetrics};
use super::DecisionError;

pub const FORMAT_VERSION: u32 = 1;

/// The encoder whose features the network reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseInfo {
    /// File name of the encoder, for people; the hash is what is checked.
    pub encoder: String,
    pub encoder_sha256: String,
    /// Square input size the encoder ran at (257 = shared with the small network).
    pub input_size: u32,
    /// Channels of the encoder's output.
    pub channels: usize,
}

/// Where a set's reference labels came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelSource {
    GroundTruth,
    /// The large network's output (teacher mode).
    Teacher,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSetInfo {
    pub name: String,
    /// [`super::cache::set_hash`] of its images.
    pub sha256: String,
    pub images: usize,
    pub labels: LabelSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingInfo {
    pub settings: TrainConfig,
    pub sets: Vec<DataSetInfo>,
    #[serde(default)]
    pub validation_sets: Vec<DataSetInfo>,
    pub final_train_loss: f64,
}

/// Contents of `dn.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionNetMeta {
    pub format: u32,
    /// Weights file, relative to the toml's folder.
    pub weights: String,
    pub weights_sha256: String,
    pub classes: Vec<String>,
    pub base: BaseInfo,
    pub spp: SppConfig,
    /// What follows the SPP vector in the input (nothing for networks without an `[inputs]`).
    #[serde(default)]
    pub inputs: InputsConfig,
    pub layers: NetShape,
    pub training: TrainingInfo,
    /// The last validation pass, if there was a validation set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationMetrics>,
}

impl DecisionNetMeta {
    fn check(&self, path: &Path) -> Result<(), DecisionError> {
        let bad = |message: String| Err(DecisionError::Metadata { path: path.to_path_buf(), message });
        if self.format != FORMAT_VERSION {
            return bad(format!("format = {} is not {FORMAT_VERSION}, the version this edgeseg reads (retrain the network)", self.format));
        }
        if self.classes.len() != self.layers.classes {
            return bad(format!("classes names {} classes, layers.classes = {}", self.classes.len(), self.layers.classes));
        }
        self.spp.validate().map_err(|e| DecisionError::Metadata { path: path.to_path_buf(), message: format!("spp: {e}") })?;
        let spp_len = self.spp.output_len(self.base.channels);
        if spp_len + self.inputs.extra_len() != self.layers.input_len {
            return bad(format!(
                "SPP of {} channels with {} gives {spp_len} values (+ {} other inputs), but layers.input_len = {}",
                self.base.channels,
                self.spp.describe(),
                self.inputs.extra_len(),
                self.layers.input_len
            ));
        }
        if self.weights.is_empty() || self.weights.contains('/') || self.weights.contains('\\') {
            return bad(format!("weights = {:?} must be a file name beside the toml", self.weights));
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct LoadedDecisionNet {
    pub net: DecisionNet,
    pub meta: DecisionNetMeta,
    /// The `dn.toml` it came from.
    pub path: PathBuf,
}

impl LoadedDecisionNet {
    /// Checks that features from `encoder_sha256` at `input_size` with `channels` channels,
    /// pooled by `spp`, are what the network was trained on.
    pub fn check_base(&self, encoder_sha256: &str, input_size: u32, channels: usize, spp: &SppConfig) -> Result<(), DecisionError> {
        let mismatch = |problem: String| Err(DecisionError::BaseMismatch { path: self.path.clone(), problem });
        let base = &self.meta.base;
        if base.encoder_sha256 != encoder_sha256 {
            return mismatch(format!("its base {} has sha256 {}, the configured one {encoder_sha256}", base.encoder, base.encoder_sha256));
        }
        if base.input_size != input_size {
            return mismatch(format!("base input size {} in its dn.toml, {input_size} configured", base.input_size));
        }
        let produced = spp.output_len(channels) + self.meta.inputs.extra_len();
        if produced != self.meta.layers.input_len || *spp != self.meta.spp {
            return mismatch(format!(
                "the base gives {produced} SPP values ({channels} channels, {}), the network takes {} ({})",
                spp.describe(),
                self.meta.layers.input_len,
                self.meta.spp.describe()
            ));
        }
        Ok(())
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DecisionError {
    let path = path.to_path_buf();
    move |source| DecisionError::Io { action, path, source }
}

/// Writes `net` to the safetensors file beside `toml_path` (same stem) and `meta` to
/// `toml_path`, filling in the weights' file name and hash. Both are written to temporary files
/// and renamed, weights first, so a crash never leaves a toml pointing at missing weights.
pub fn save(toml_path: &Path, net: &DecisionNet, mut meta: DecisionNetMeta) -> Result<(), DecisionError> {
    let weights_path = toml_path.with_extension("safetensors");
    let weights_name = weights_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if net.shape() != meta.layers {
        return Err(DecisionError::Invalid {
            what: "dn.toml layers",
            problem: format!("{:?} differ from the network's {:?}", meta.layers, net.shape()),
        });
    }
    if let Some(dir) = toml_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err("create folder", dir))?;
    }
    let tmp_weights = weights_path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&net.tensors(), &tmp_weights)?;
    meta.format = FORMAT_VERSION;
    meta.weights = weights_name;
    meta.weights_sha256 = file_sha256(&tmp_weights)?;
    meta.check(toml_path)?;
    let text =
        toml::to_string_pretty(&meta).map_err(|e| DecisionError::Metadata { path: toml_path.to_path_buf(), message: e.to_string() })?;
    let header = "# Decision network (edgeseg dn train); weights in the safetensors file named below.\n";
    let tmp_toml = toml_path.with_extension("toml.tmp");
    std::fs::write(&tmp_toml, format!("{header}{text}")).map_err(io_err("write", &tmp_toml))?;
    std::fs::rename(&tmp_weights, &weights_path).map_err(io_err("write", &weights_path))?;
    std::fs::rename(&tmp_toml, toml_path).map_err(io_err("write", toml_path))
}

/// Reads `dn.toml` and its weights; see the module doc for what is checked.
pub fn load(toml_path: &Path) -> Result<LoadedDecisionNet, DecisionError> {
    let text = std::fs::read_to_string(toml_path).map_err(io_err("read", toml_path))?;
    let meta: DecisionNetMeta =
        toml::from_str(&text).map_err(|e| DecisionError::Metadata { path: toml_path.to_path_buf(), message: e.to_string() })?;
    meta.check(toml_path)?;
    let weights_path = toml_path.parent().unwrap_or(Path::new(".")).join(&meta.weights);
    let bytes = std::fs::read(&weights_path).map_err(io_err("read", &weights_path))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| DecisionError::CorruptWeights { path: weights_path.clone(), message: e.to_string() })?;
    let net = DecisionNet::from_tensors(meta.layers, tensors, &weights_path)?;
    if content_hash(&bytes) != meta.weights_sha256 {
        return Err(DecisionError::Metadata {
            path: toml_path.to_path_buf(),
            message: format!(
                "weights_sha256 does not match {} (the weights were replaced after training; retrain, or restore the pair)",
                weights_path.display()
            ),
        });
    }
    Ok(LoadedDecisionNet { net, meta, path: toml_path.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::spp::Pooling;
    use crate::decision::VOC_CLASSES;

    fn meta(shape: NetShape) -> DecisionNetMeta {
        DecisionNetMeta {
            format: FORMAT_VERSION,
            weights: String::new(),
            weights_sha256: String::new(),
            classes: VOC_CLASSES[..shape.classes].iter().map(|s| s.to_string()).collect(),
            base: BaseInfo { encoder: "small_encoder.onnx".into(), encoder_sha256: content_hash(b"enc"), input_size: 257, channels: 4 },
            spp: SppConfig { levels: vec![1, 2], pooling: Pooling::Max },
            inputs: InputsConfig::default(),
            layers: shape,
            training: TrainingInfo {
                settings: TrainConfig::default(),
                sets: vec![DataSetInfo {
                    name: "camvid_train".into(),
                    sha256: content_hash(b"set"),
                    images: 367,
                    labels: LabelSource::GroundTruth,
                }],
                validation_sets: vec![],
                final_train_loss: 0.01,
            },
            validation: None,
        }
    }

    fn shape() -> NetShape {
        NetShape { input_len: 20, hidden: 16, classes: 3, class_hidden: 4 }
    }

    fn saved() -> (tempfile::TempDir, PathBuf, DecisionNet) {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("dn.toml");
        let net = DecisionNet::new_seeded(shape(), 3).unwrap();
        save(&toml_path, &net, meta(shape())).unwrap();
        (dir, toml_path, net)
    }

    #[test]
    fn save_then_load_gives_identical_predictions() {
        let (dir, toml_path, net) = saved();
        assert!(dir.path().join("dn.safetensors").is_file());
        let loaded = load(&toml_path).unwrap();
        let input: Vec<f32> = (0..60).map(|i| (i as f32 * 0.37).sin()).collect();
        assert_eq!(loaded.net.predict_batch(&input, 3).unwrap(), net.predict_batch(&input, 3).unwrap());
        assert_eq!(loaded.meta.weights, "dn.safetensors");
        assert_eq!(loaded.meta.training.sets[0].name, "camvid_train");
        loaded.check_base(&content_hash(b"enc"), 257, 4, &loaded.meta.spp.clone()).unwrap();
    }

    #[test]
    fn corrupt_weights_are_a_clear_error_naming_the_file() {
        let (dir, toml_path, _) = saved();
        let weights = dir.path().join("dn.safetensors");
        std::fs::write(&weights, b"\x08\x00\x00\x00\x00\x00\x00\x00not json").unwrap();
        let err = load(&toml_path).unwrap_err();
        assert!(matches!(err, DecisionError::CorruptWeights { .. }), "{err}");
        assert!(err.to_string().contains("dn.safetensors"), "{err}");
        std::fs::write(&weights, b"").unwrap();
        assert!(matches!(load(&toml_path).unwrap_err(), DecisionError::CorruptWeights { .. }));
    }

    #[test]
    fn weights_of_another_shape_are_a_shape_error() {
        let (dir, toml_path, _) = saved();
        // Weights of a wider network under this toml.
        let other = DecisionNet::new_seeded(NetShape { hidden: 32, ..shape() }, 3).unwrap();
        candle_core::safetensors::save(&other.tensors(), dir.path().join("dn.safetensors")).unwrap();
        let err = load(&toml_path).unwrap_err();
        assert!(
            matches!(&err, DecisionError::TensorShape { name, expected, .. } if name.starts_with("hidden.") || name.ends_with(".weight") && !expected.is_empty()),
            "{err}"
        );
        assert!(err.to_string().contains("dn.safetensors"), "{err}");
    }

    #[test]
    fn missing_tensor_is_named() {
        let (dir, toml_path, net) = saved();
        let mut tensors = net.tensors();
        tensors.remove("class_heads.out.weight");
        candle_core::safetensors::save(&tensors, dir.path().join("dn.safetensors")).unwrap();
        let err = load(&toml_path).unwrap_err();
        assert!(matches!(&err, DecisionError::MissingTensor { name, .. } if name == "class_heads.out.weight"), "{err}");
    }

    #[test]
    fn replaced_weights_of_the_same_shape_fail_the_hash() {
        let (dir, toml_path, _) = saved();
        let other = DecisionNet::new_seeded(shape(), 4).unwrap();
        candle_core::safetensors::save(&other.tensors(), dir.path().join("dn.safetensors")).unwrap();
        let err = load(&toml_path).unwrap_err();
        assert!(err.to_string().contains("weights_sha256"), "{err}");
    }

    #[test]
    fn inconsistent_toml_and_other_base_are_refused() {
        let (_dir, toml_path, _) = saved();
        let text = std::fs::read_to_string(&toml_path).unwrap();
        // 5 channels x 5 bins = 25 values, but the layers take 20.
        std::fs::write(&toml_path, text.replace("channels = 4", "channels = 5")).unwrap();
        let err = load(&toml_path).unwrap_err();
        assert!(err.to_string().contains("SPP") && err.to_string().contains("dn.toml"), "{err}");
        std::fs::write(&toml_path, &text).unwrap();
        let loaded = load(&toml_path).unwrap();
        let spp = loaded.meta.spp.clone();
        let wrong_len = loaded.check_base(&content_hash(b"enc"), 257, 160, &spp).unwrap_err();
        assert!(matches!(wrong_len, DecisionError::BaseMismatch { .. }) && wrong_len.to_string().contains("800"), "{wrong_len}");
        assert!(loaded.check_base(&content_hash(b"other"), 257, 4, &spp).is_err());
        assert!(loaded.check_base(&content_hash(b"enc"), 129, 4, &spp).is_err());
        let avg = SppConfig { pooling: Pooling::Average, ..spp };
        assert!(loaded.check_base(&content_hash(b"enc"), 257, 4, &avg).is_err());
        std::fs::write(&toml_path, "format = 1\n").unwrap();
        assert!(matches!(load(&toml_path).unwrap_err(), DecisionError::Metadata { .. }));
    }

    #[test]
    fn confidence_inputs_count_in_the_input_length() {
        // 4 channels x 5 bins + 2 confidence values = 22 inputs.
        let shape = NetShape { input_len: 22, ..shape() };
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("dn.toml");
        let net = DecisionNet::new_seeded(shape, 3).unwrap();
        let mut without = meta(shape);
        assert!(save(&toml_path, &net, without.clone()).is_err(), "22 inputs without [inputs] do not add up");
        without.inputs.small_confidence = true;
        save(&toml_path, &net, without).unwrap();
        let loaded = load(&toml_path).unwrap();
        assert!(loaded.meta.inputs.small_confidence);
        loaded.check_base(&content_hash(b"enc"), 257, 4, &loaded.meta.spp.clone()).unwrap();
        // A dn.toml written before [inputs] existed reads as SPP only.
        let (_dir, old_path, _) = saved();
        let mut table: toml::Table = toml::from_str(&std::fs::read_to_string(&old_path).unwrap()).unwrap();
        table.remove("inputs").expect("dn.toml has [inputs]");
        let stripped = toml::to_string(&table).unwrap();
        std::fs::write(&old_path, stripped).unwrap();
        assert!(!load(&old_path).unwrap().meta.inputs.small_confidence);
    }
}
