//! The decision network's base: the first part of the small network, cut by
//! `scripts/split_small.py` after its sixth block (`small_stem.onnx`, 16 channels, 0.09 of
//! its 1.45 GFLOPs) or at its encoder output (`small_encoder.onnx`, 160 channels, 1.07), run
//! through ONNX Runtime on a preprocessed frame. The early cut wastes little on a frame that
//! goes remote; the late one gives richer features for the same local frame.
//!
//! Two sizes share this code, selected by the input size:
//! - **shared** (257x257, the small network's own input): a frame that stays local hands its
//!   features on to the rest of the small network (`small_trunk.onnx` or `small_head.onnx`),
//!   so the decision costs only the SPP and the MLP;
//! - **downscaled** (e.g. 129x129, 17x17 features): about a quarter of the base's cost, so
//!   a frame that goes remote wastes less on the edge, at the price of running the full small
//!   network again for a local frame.
//!
//! The base's spatial input size is dynamic, so one ONNX file serves both.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};

use super::cache::file_sha256;
use super::spp::{spp, SppConfig};
use super::DecisionError;
use crate::infer::onnx_graph::OnnxGraph;
use crate::infer::{preprocess, InputBuffer, InputType, Layout, ModelManifest};

/// Input size of the small network, and so of the shared base.
pub const SHARED_INPUT_SIZE: u32 = 257;

/// One ONNX graph with a single float input and a single float output (the encoder or the
/// small network's head).
pub struct OnnxPart {
    path: PathBuf,
    session: Session,
    input_name: String,
    output_name: String,
    /// Declared input shape, −1 for dynamic dimensions.
    input_shape: Vec<i64>,
}

impl std::fmt::Debug for OnnxPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxPart").field("path", &self.path).field("input_shape", &self.input_shape).finish()
    }
}

impl OnnxPart {
    pub fn load(path: &Path, intra_threads: usize) -> Result<Self, DecisionError> {
        let env = crate::infer::environment()?;
        let load_err = |message: String| DecisionError::OnnxLoad { path: path.to_path_buf(), message };
        let session = Session::builder(env)
            .map_err(|e| load_err(e.to_string()))?
            .with_intra_threads(intra_threads)
            .map_err(|e| load_err(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| load_err(e.to_string()))?
            .commit_from_file(path)
            .map_err(|e| load_err(e.to_string()))?;
        let mismatch = |problem: String| DecisionError::OnnxMismatch { path: path.to_path_buf(), problem };
        let (inputs, outputs) = (session.inputs(), session.outputs());
        if inputs.len() != 1 || outputs.len() != 1 {
            return Err(mismatch(format!("has {} inputs and {} outputs, one of each expected", inputs.len(), outputs.len())));
        }
        let float_shape = |what: &str, t: &ValueType| match t {
            ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } => Ok(shape.to_vec()),
            other => Err(mismatch(format!("{what} must be a float32 tensor, is {other:?}"))),
        };
        let input_shape = float_shape("input", inputs[0].dtype())?;
        float_shape("output", outputs[0].dtype())?;
        let (input_name, output_name) = (inputs[0].name().to_string(), outputs[0].name().to_string());
        Ok(OnnxPart { path: path.to_path_buf(), session, input_name, output_name, input_shape })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Declared input shape (−1 where dynamic).
    pub fn input_shape(&self) -> &[i64] {
        &self.input_shape
    }

    /// Runs the graph on `input` of `shape`; returns the output's shape and values.
    pub fn run(&mut self, input: &[f32], shape: &[usize]) -> Result<(Vec<usize>, Vec<f32>), DecisionError> {
        let value = self.run_value(input, shape)?;
        let (out_shape, data) =
            value.try_extract_tensor::<f32>().map_err(|e| DecisionError::OnnxRun { path: self.path.clone(), message: e.to_string() })?;
        let out_shape = out_shape.iter().map(|&d| d as usize).collect();
        Ok((out_shape, data.to_vec()))
    }

    /// [`Self::run`], leaving the output in ONNX Runtime's buffer (no copy of large outputs).
    pub fn run_value(&mut self, input: &[f32], shape: &[usize]) -> Result<DynValue, DecisionError> {
        let run_err = |message: String| DecisionError::OnnxRun { path: self.path.clone(), message };
        let tensor = TensorRef::from_array_view((shape, input)).map_err(|e| run_err(e.to_string()))?;
        let mut outputs = self.session.run(ort::inputs![self.input_name.as_str() => tensor]).map_err(|e| run_err(e.to_string()))?;
        outputs.remove(&self.output_name).ok_or_else(|| run_err(format!("output {:?} missing", self.output_name)))
    }
}

/// Encoder output for one frame: `[channels, height, width]`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl From<Features> for crate::frame::Features {
    fn from(f: Features) -> Self {
        crate::frame::Features { shape: vec![1, f.channels, f.height, f.width], values: f.data }
    }
}

impl Features {
    pub fn spp(&self, config: &SppConfig) -> Result<Vec<f32>, DecisionError> {
        spp(&self.data, self.channels, self.height, self.width, config)
    }
}

/// The small network's manifest with its input resized to the base's `input_size`: how frames
/// are prepared for the encoder.
pub fn input_manifest(small: &ModelManifest, input_size: u32) -> Result<ModelManifest, DecisionError> {
    if small.input.layout != Layout::Nhwc || small.input.dtype != InputType::Float32 {
        return Err(DecisionError::Invalid {
            what: "small network manifest",
            problem: format!(
                "{} takes {:?} {} input; the encoder split off it takes float32 NHWC (is it the real small network?)",
                small.path.display(),
                small.input.dtype,
                small.input.layout.name()
            ),
        });
    }
    let mut input = small.clone();
    input.input.width = input_size;
    input.input.height = input_size;
    Ok(input)
}

/// How frames are prepared for an encoder input, in words: part of the feature cache's key,
/// since the same encoder on differently prepared frames gives other features.
pub fn preprocessing_key(input: &ModelManifest) -> String {
    let i = &input.input;
    format!(
        "{}x{} {:?} {:?} {} fit {:?} pad {:?} scale {:?} mean {:?} std {:?}",
        i.width,
        i.height,
        i.dtype,
        i.color,
        i.layout.name(),
        i.fit,
        i.pad_value,
        i.scale,
        i.mean,
        i.std
    )
}

/// GFLOPs of one ONNX part (2 x multiply-adds of Conv/MatMul/Gemm, as `models info`) for its
/// single input of `shape`.
pub fn part_gflops(path: &Path, shape: &[usize]) -> Result<f64, DecisionError> {
    let graph = OnnxGraph::load(path)?;
    let inputs = graph.inputs();
    let [input] = inputs.as_slice() else {
        return Err(DecisionError::OnnxMismatch {
            path: path.to_path_buf(),
            problem: format!("has {} inputs, one expected", inputs.len()),
        });
    };
    let shapes = HashMap::from([(input.name.clone(), shape.to_vec())]);
    Ok(graph.cost(&shapes)?.gflops())
}

/// The small network's encoder at a fixed square input size.
#[derive(Debug)]
pub struct Encoder {
    part: OnnxPart,
    input_size: u32,
    sha256: String,
    /// The small network's manifest with the input size set to the base's.
    input: ModelManifest,
}

impl Encoder {
    /// Loads the base (`small_stem.onnx` or `small_encoder.onnx`) to run at `input_size` x
    /// `input_size` (257 for the shared base) on frames prepared as `small` (the small
    /// network's manifest) says.
    pub fn load(path: &Path, small: &ModelManifest, input_size: u32, intra_threads: usize) -> Result<Self, DecisionError> {
        if !(33..=2049).contains(&input_size) {
            return Err(DecisionError::Invalid { what: "base input size", problem: format!("{input_size} is outside 33..=2049") });
        }
        let input = input_manifest(small, input_size)?;
        let part = OnnxPart::load(path, intra_threads)?;
        let shape = part.input_shape();
        let fits = |dim: i64, want: i64| dim < 0 || dim == want;
        let size = input_size as i64;
        if shape.len() != 4 || !fits(shape[1], size) || !fits(shape[2], size) || !fits(shape[3], 3) {
            return Err(DecisionError::OnnxMismatch {
                path: path.to_path_buf(),
                problem: format!(
                    "input shape {shape:?} does not take NHWC [N, {size}, {size}, 3] frames (make a dynamic-size encoder with scripts/split_small.py)"
                ),
            });
        }
        let sha256 = file_sha256(path)?;
        Ok(Encoder { part, input_size, sha256, input })
    }

    pub fn input_size(&self) -> u32 {
        self.input_size
    }

    /// How frames are prepared for it, in words ([`preprocessing_key`]).
    pub fn preprocessing(&self) -> String {
        preprocessing_key(&self.input)
    }

    /// SHA-256 of the ONNX file: identifies the base in `dn.toml` and the feature cache.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn path(&self) -> &Path {
        self.part.path()
    }

    /// Values in one preprocessed frame (`input_size² x 3`).
    pub fn input_len(&self) -> usize {
        (self.input_size * self.input_size * 3) as usize
    }

    /// A BGR frame as the small network takes it, at the base's size: [`crate::infer::preprocess`]
    /// with the small network's manifest (its fit, colour order and normalisation), so the
    /// encoder sees exactly what the whole small network would, and offline features are the
    /// live ones.
    pub fn preprocess(&self, bgr: &[u8], width: u32, height: u32) -> Result<Vec<f32>, DecisionError> {
        let mut buffer = InputBuffer::new(&self.input, 1);
        let image = buffer.image_mut(0).ok_or_else(|| DecisionError::Invalid { what: "encoder input", problem: "no input slot".into() })?;
        preprocess(bgr, width, height, &self.input, image)
            .map_err(|e| DecisionError::Image { step: "decision preprocess", message: e.to_string() })?;
        match buffer {
            InputBuffer::Float32 { data, .. } => Ok(data),
            InputBuffer::Uint8 { .. } => Err(DecisionError::Invalid { what: "encoder input", problem: "uint8 input".into() }),
        }
    }

    /// The SPP vector of a BGR frame: preprocess, encoder, pooling.
    pub fn spp_of_frame(&mut self, bgr: &[u8], width: u32, height: u32, spp: &SppConfig) -> Result<Vec<f32>, DecisionError> {
        let input = self.preprocess(bgr, width, height)?;
        self.run(&input)?.spp(spp)
    }

    /// Encoder features of one preprocessed frame (NHWC, `input_len()` values).
    pub fn run(&mut self, nhwc: &[f32]) -> Result<Features, DecisionError> {
        let size = self.input_size as usize;
        if nhwc.len() != self.input_len() {
            return Err(DecisionError::Invalid {
                what: "encoder input",
                problem: format!("{} values, a {size}x{size}x3 frame has {}", nhwc.len(), self.input_len()),
            });
        }
        let (shape, data) = self.part.run(nhwc, &[1, size, size, 3])?;
        match shape[..] {
            [1, channels, height, width] => Ok(Features { channels, height, width, data }),
            _ => Err(DecisionError::OnnxMismatch {
                path: self.part.path().to_path_buf(),
                problem: format!("output shape {shape:?} is not [1, C, h, w]"),
            }),
        }
    }
}
