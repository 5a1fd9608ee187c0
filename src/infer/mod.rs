//! Local inference: ONNX Runtime sessions plus the pre- and post-processing a model manifest
//! describes. Frames enter as BGR bytes, leave as a class map at frame size.
//!
//! Preprocessing ([`preprocess`]), the network ([`Model::run`]) and post-processing
//! ([`NetworkOutput::class_map`]) are separate functions so the pipeline can run them on
//! separate threads and overlap them; [`Model::segment`] chains them for one frame, for the
//! offline evaluator and the decision network, so offline numbers are the live ones.
//! Post-processing works at the output's resolution (argmax, crop of any padding) and only the
//! one-byte class map is resized to frame size.

pub mod manifest;
pub mod onnx_graph;
mod output;
mod prepare;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::config::{Optimization, SessionConfig};
pub use manifest::{ColorOrder, Fit, InputType, Layout, ManifestError, ModelManifest, OutputKind};
pub use output::{argmax, confidence, resize_class_map, ClassMap, Confidence, NetworkOutput};
pub use prepare::{preprocess, ImageMut, InputBuffer, Placement};

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("model {onnx} (from {manifest}) could not be loaded by ONNX Runtime: {message} (is it a valid ONNX file?)")]
    Load { onnx: PathBuf, manifest: PathBuf, message: String },
    #[error("model {onnx} does not match its manifest {manifest}: {problem}")]
    Mismatch { onnx: PathBuf, manifest: PathBuf, problem: String },
    #[error("inference with model {model} failed: {message}")]
    Run { model: String, message: String },
    #[error("image operation failed in {step}: {message}")]
    Image { step: &'static str, message: String },
}
/// Why ONNX Runtime itself is unavailable. Cloneable, because the one environment is created
/// once per process and every later session reports the same failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library not found (tried {tried}): run scripts/setup, or set ORT_DYLIB_PATH to libonnxruntime.so")]
    Missing { tried: String },
    #[error("ONNX Runtime library {path} could not be loaded: {message}")]
    Load { path: PathBuf, message: String },
}

fn image_err(step: &'static str) -> impl Fn(opencv::Error) -> InferError {
    move |e| InferError::Image { step, message: e.to_string() }
}

/// Where `libonnxruntime.so` may be, in order: the explicit variable, beside the binary (an
/// installed service), the system install path used by the systemd units, and the project's
/// `vendor/` folder filled by `scripts/setup` (so `cargo run` needs no variables).
fn runtime_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        out.push(dir.join("libonnxruntime.so"));
        out.push(dir.join("../lib/edgeseg/libonnxruntime.so"));
    }
    out.push(PathBuf::from("/usr/local/lib/edgeseg/libonnxruntime.so"));
    out.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/onnxruntime/libonnxruntime.so"));
    out
}

/// ONNX Runtime allows one environment per process; every session shares it (the decision
/// network's encoder too).
pub(crate) fn environment() -> Result<&'static ort::environment::Environment, RuntimeError> {
    static ENV: OnceLock<Result<ort::environment::Environment, RuntimeError>> = OnceLock::new();
    let result = ENV.get_or_init(|| {
        let candidates = runtime_candidates();
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            let tried = candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
            return Err(RuntimeError::Missing { tried });
        };
        let load_err = |message: String| RuntimeError::Load { path: path.clone(), message };
        ort::init_from(path).map_err(|e| load_err(e.to_string()))?.with_name("edgeseg").build().map_err(|e| load_err(e.to_string()))
    });
    result.as_ref().map_err(Clone::clone)
}

/// A loaded network, checked against its manifest.
pub struct Model {
    pub manifest: ModelManifest,
    session: Session,
    /// Asks ONNX Runtime for the manifest's output only (the large graphs also return 21 logit
    /// planes at 513x513 that a class-map reader would pay for and drop).
    run_options: RunOptions<HasSelectedOutputs>,
    /// Largest batch the graph accepts (1 when the batch dimension is fixed).
    pub max_batch: usize,
    /// [`Model::segment`]'s input, reused from frame to frame.
    scratch: InputBuffer,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("name", &self.manifest.name).field("max_batch", &self.max_batch).finish()
    }
}

fn optimization_level(o: Optimization) -> GraphOptimizationLevel {
    match o {
        Optimization::Disable => GraphOptimizationLevel::Disable,
        Optimization::Basic => GraphOptimizationLevel::Level1,
        Optimization::Extended => GraphOptimizationLevel::Level2,
        Optimization::All => GraphOptimizationLevel::Level3,
    }
}

impl Model {
    pub fn load(settings: &SessionConfig) -> Result<Self, InferError> {
        let manifest = ModelManifest::load(&settings.manifest)?;
        let env = environment()?;
        let load_err = |message: String| InferError::Load { onnx: manifest.onnx.clone(), manifest: manifest.path.clone(), message };
        let session = Session::builder(env)
            .map_err(|e| load_err(e.to_string()))?
            .with_intra_threads(settings.intra_threads.get())
            .map_err(|e| load_err(e.to_string()))?
            .with_inter_threads(settings.inter_threads.get())
            .map_err(|e| load_err(e.to_string()))?
            .with_optimization_level(optimization_level(settings.optimization))
            .map_err(|e| load_err(e.to_string()))?
            // The memory pattern plans one block for all of a run's intermediates and keeps it
            // beside the arena; without it the arena's freed blocks are reused within the run.
            // Measured on a 4K replay with the small network: 8 MB less peak RSS, the same speed.
            .with_memory_pattern(false)
            .map_err(|e| load_err(e.to_string()))?
            .commit_from_file(&manifest.onnx)
            .map_err(|e| load_err(e.to_string()))?;
        let max_batch = check_against_manifest(&session, &manifest)?;
        let run_options = RunOptions::new()
            .map_err(|e| load_err(e.to_string()))?
            .with_outputs(OutputSelector::no_default().with(manifest.output.name.as_str()));
        let scratch = InputBuffer::new(&manifest, 1);
        let mut model = Model { manifest, session, run_options, max_batch, scratch };
        // ONNX Runtime allocates and tunes on the first run; pay that now, not on the first frame.
        model.run_scratch()?;
        tracing::info!(model = %model.manifest.name, onnx = %model.manifest.onnx.display(), max_batch, "model loaded");
        Ok(model)
    }

    /// Runs the preprocessed images in `input` as one batch.
    pub fn run(&mut self, input: &InputBuffer) -> Result<NetworkOutput, InferError> {
        run_session(&mut self.session, &self.run_options, &self.manifest, self.max_batch, input)
    }

    fn run_scratch(&mut self) -> Result<NetworkOutput, InferError> {
        run_session(&mut self.session, &self.run_options, &self.manifest, self.max_batch, &self.scratch)
    }

    /// Preprocesses, runs and post-processes one frame: the live pipeline's three stages in one
    /// call, for offline evaluation and anything else that segments single images.
    pub fn segment(&mut self, bgr: &[u8], width: u32, height: u32) -> Result<ClassMap, InferError> {
        let (map, _) = self.segment_inner(bgr, width, height, false)?;
        Ok(map)
    }

    /// Like [`Model::segment`], plus the softmax statistics of the logits inside the frame (at
    /// the logits' resolution); `None` for models whose output is a ready class map.
    pub fn segment_with_confidence(&mut self, bgr: &[u8], width: u32, height: u32) -> Result<(ClassMap, Option<Confidence>), InferError> {
        self.segment_inner(bgr, width, height, true)
    }

    fn segment_inner(
        &mut self,
        bgr: &[u8],
        width: u32,
        height: u32,
        with_confidence: bool,
    ) -> Result<(ClassMap, Option<Confidence>), InferError> {
        let image = self.scratch.image_mut(0).ok_or_else(|| InferError::Image { step: "preprocess", message: "no input buffer".into() })?;
        let placement = preprocess(bgr, width, height, &self.manifest, image)?;
        let output = self.run_scratch()?;
        let map = output.class_map(0, &placement)?;
        let confidence = if with_confidence { output.confidence(0, &placement) } else { None };
        Ok((map, confidence))
    }
}

/// One batch through the session; a function of the model's parts so [`Model::segment`] can
/// lend its own scratch buffer as the input.
fn run_session(
    session: &mut Session,
    run_options: &RunOptions<HasSelectedOutputs>,
    manifest: &ModelManifest,
    max_batch: usize,
    input: &InputBuffer,
) -> Result<NetworkOutput, InferError> {
    let run_err = |message: String| InferError::Run { model: manifest.name.clone(), message };
    let batch = input.images();
    if batch == 0 || batch > max_batch || input.image_len() != manifest.input_len() || input.dtype() != manifest.input.dtype {
        return Err(run_err(format!(
            "a batch of {batch} {:?} images of {} values does not fit the model ({:?}, {} values per image, at most {max_batch} per batch)",
            input.dtype(),
            input.image_len(),
            manifest.input.dtype,
            manifest.input_len()
        )));
    }
    let shape = manifest.input_shape(batch);
    let value: SessionInputValue<'_> = match input {
        InputBuffer::Float32 { data, .. } => {
            TensorRef::from_array_view((shape, data.as_slice())).map_err(|e| run_err(e.to_string()))?.into()
        }
        InputBuffer::Uint8 { data, .. } => TensorRef::from_array_view((shape, data.as_slice())).map_err(|e| run_err(e.to_string()))?.into(),
    };
    let mut outputs =
        session.run_with_options(ort::inputs![manifest.input.name.as_str() => value], run_options).map_err(|e| run_err(e.to_string()))?;
    let value = outputs.remove(&manifest.output.name).ok_or_else(|| run_err(format!("output {:?} missing", manifest.output.name)))?;
    NetworkOutput::new(value, manifest.output.kind, batch, manifest.output.classes.len()).map_err(run_err)
}

/// `[N, 257, 257, 3]`-style text of an outlet's shape, dynamic axes by their symbol.
fn describe(t: &ValueType) -> String {
    t.to_string()
}

/// Compares the graph's real input/output with the manifest; returns the largest batch size.
fn check_against_manifest(session: &Session, m: &ModelManifest) -> Result<usize, InferError> {
    let mismatch = |problem: String| InferError::Mismatch { onnx: m.onnx.clone(), manifest: m.path.clone(), problem };
    let names = |outlets: &[ort::value::Outlet]| outlets.iter().map(|o| o.name().to_string()).collect::<Vec<_>>().join(", ");
    let input = session
        .inputs()
        .iter()
        .find(|o| o.name() == m.input.name)
        .ok_or_else(|| mismatch(format!("manifest input.name = {:?}, model inputs are [{}]", m.input.name, names(session.inputs()))))?;
    let output =
        session.outputs().iter().find(|o| o.name() == m.output.name).ok_or_else(|| {
            mismatch(format!("manifest output.name = {:?}, model outputs are [{}]", m.output.name, names(session.outputs())))
        })?;

    let (want_input_type, dtype_name) = match m.input.dtype {
        InputType::Float32 => (TensorElementType::Float32, "float32"),
        InputType::Uint8 => (TensorElementType::Uint8, "uint8"),
    };
    let ishape = match input.dtype() {
        ValueType::Tensor { ty, shape, .. } if *ty == want_input_type => shape.to_vec(),
        other => {
            return Err(mismatch(format!("manifest input.dtype = \"{dtype_name}\", model input {:?} is {}", m.input.name, describe(other))))
        }
    };
    if ishape.len() != 4 {
        return Err(mismatch(format!(
            "model input is {} (rank {}), manifest describes a 4-D image tensor",
            describe(input.dtype()),
            ishape.len()
        )));
    }
    let fixed_differs = |dim: i64, want: i64| dim >= 0 && dim != want;
    let layout = m.input.layout;
    let (c, h, w) = layout.axes();
    if fixed_differs(ishape[c], 3) {
        let other = match layout {
            Layout::Nchw => Layout::Nhwc,
            Layout::Nhwc => Layout::Nchw,
        };
        let hint = if ishape[other.axes().0] == 3 {
            format!(" (the model looks {}: set input.layout = \"{}\")", other.name(), other.name())
        } else {
            String::new()
        };
        return Err(mismatch(format!(
            "manifest input.layout = \"{}\" puts the colour channels at axis {c}, but model input {} has {} there, not 3{hint}",
            layout.name(),
            describe(input.dtype()),
            ishape[c]
        )));
    }
    if fixed_differs(ishape[h], m.input.height as i64) || fixed_differs(ishape[w], m.input.width as i64) {
        return Err(mismatch(format!(
            "model input is {}x{} (HxW), manifest input.height x input.width = {}x{}",
            ishape[h], ishape[w], m.input.height, m.input.width
        )));
    }

    let classes = m.output.classes.len() as i64;
    match (m.output.kind, output.dtype()) {
        (OutputKind::Logits, ValueType::Tensor { ty: TensorElementType::Float32, shape, .. }) if shape.len() == 4 => {
            if fixed_differs(shape[1], classes) {
                return Err(mismatch(format!("model output has {} classes, manifest output.classes names {classes}", shape[1])));
            }
        }
        (OutputKind::Classes, ValueType::Tensor { ty: TensorElementType::Int64, shape, .. }) if shape.len() == 3 => {}
        (kind, other) => {
            let want = match kind {
                OutputKind::Logits => "float32 logits of rank 4 [N, classes, H, W]",
                OutputKind::Classes => "an int64 class map of rank 3 [N, H, W]",
            };
            return Err(mismatch(format!(
                "manifest output.kind = \"{}\" expects {want}, model output {:?} is {}",
                match kind {
                    OutputKind::Logits => "logits",
                    OutputKind::Classes => "classes",
                },
                m.output.name,
                describe(other)
            )));
        }
    }
    Ok(if ishape[0] < 0 { 64 } else { ishape[0] as usize })
}
