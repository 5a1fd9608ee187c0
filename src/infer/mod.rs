//! Local inference: ONNX Runtime sessions plus the pre- and post-processing a model manifest
//! describes. Frames enter as BGR bytes, leave as a class map at frame size.
//!
//! Preprocessing, the network and post-processing are separate functions so the pipeline can
//! run them on separate threads and overlap them with each other.

pub mod manifest;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use opencv::core::{Mat, Size};
use opencv::prelude::*;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};

use crate::config::{Optimization, SessionConfig};
pub use manifest::{ColorOrder, ManifestError, ModelManifest};

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

/// A class id per pixel, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassMap {
    pub width: u32,
    pub height: u32,
    pub classes: Vec<u8>,
}

/// A loaded network, checked against its manifest.
pub struct Model {
    pub manifest: ModelManifest,
    session: Session,
    /// Largest batch the graph accepts (1 when the batch dimension is fixed).
    pub max_batch: usize,
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
            .with_intra_threads(settings.intra_threads)
            .map_err(|e| load_err(e.to_string()))?
            .with_inter_threads(settings.inter_threads)
            .map_err(|e| load_err(e.to_string()))?
            .with_optimization_level(optimization_level(settings.optimization))
            .map_err(|e| load_err(e.to_string()))?
            .commit_from_file(&manifest.onnx)
            .map_err(|e| load_err(e.to_string()))?;
        let max_batch = check_against_manifest(&session, &manifest)?;
        let mut model = Model { manifest, session, max_batch };
        // ONNX Runtime allocates and tunes on the first run; pay that now, not on the first frame.
        let zeros = vec![0f32; model.manifest.input_len()];
        model.run(&zeros, 1)?;
        tracing::info!(model = %model.manifest.name, onnx = %model.manifest.onnx.display(), max_batch, "model loaded");
        Ok(model)
    }

    /// Runs `batch` preprocessed images laid out one after another in `input`.
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<Logits, InferError> {
        let (w, h) = (self.manifest.input.width as usize, self.manifest.input.height as usize);
        let run_err = |message: String| InferError::Run { model: self.manifest.name.clone(), message };
        if batch == 0 || batch > self.max_batch || input.len() != batch * self.manifest.input_len() {
            return Err(run_err(format!("batch of {batch} with {} values does not fit the model", input.len())));
        }
        let tensor = TensorRef::from_array_view(([batch, 3, h, w], input)).map_err(|e| run_err(e.to_string()))?;
        let mut outputs =
            self.session.run(ort::inputs![self.manifest.input.name.as_str() => tensor]).map_err(|e| run_err(e.to_string()))?;
        let value = outputs.remove(&self.manifest.output.name).ok_or_else(|| run_err("output missing".into()))?;
        Logits::new(value, batch, self.manifest.output.classes.len()).map_err(run_err)
    }
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
    let tensor_shape = |which: &str, t: &ValueType| -> Result<Vec<i64>, InferError> {
        match t {
            ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } if shape.len() == 4 => Ok(shape.to_vec()),
            other => Err(mismatch(format!("{which} must be a float32 tensor of rank 4 (NCHW), model has {other:?}"))),
        }
    };
    let ishape = tensor_shape("input", input.dtype())?;
    let oshape = tensor_shape("output", output.dtype())?;
    let fixed_differs = |dim: i64, want: i64| dim >= 0 && dim != want;
    if fixed_differs(ishape[1], 3) {
        return Err(mismatch(format!("model input has {} channels, manifest expects 3 (colour)", ishape[1])));
    }
    if fixed_differs(ishape[2], m.input.height as i64) || fixed_differs(ishape[3], m.input.width as i64) {
        return Err(mismatch(format!(
            "model input is {}x{} (HxW), manifest input.height x input.width = {}x{}",
            ishape[2], ishape[3], m.input.height, m.input.width
        )));
    }
    if fixed_differs(oshape[1], m.output.classes.len() as i64) {
        return Err(mismatch(format!("model output has {} classes, manifest output.classes names {}", oshape[1], m.output.classes.len())));
    }
    Ok(if ishape[0] < 0 { 64 } else { ishape[0] as usize })
}

/// Network output for a batch, kept in ONNX Runtime's buffer so that reading it (argmax) can
/// happen on another thread without a copy.
pub struct Logits {
    value: DynValue,
    batch: usize,
    classes: usize,
    height: usize,
    width: usize,
}

impl Logits {
    fn new(value: DynValue, batch: usize, classes: usize) -> Result<Self, String> {
        let (shape, _) = value.try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
        if shape.len() != 4 || shape[0] as usize != batch || shape[1] as usize != classes {
            return Err(format!("output shape {:?} is not [{batch}, {classes}, H, W]", &shape[..]));
        }
        let (height, width) = (shape[2] as usize, shape[3] as usize);
        Ok(Logits { value, batch, classes, height, width })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The `[classes, H, W]` logits of image `index` of the batch.
    pub fn image(&self, index: usize) -> &[f32] {
        let plane = self.classes * self.height * self.width;
        let data = self.value.try_extract_tensor::<f32>().map(|(_, d)| d).unwrap_or(&[]);
        &data[index * plane..(index + 1) * plane]
    }

    /// Argmax over classes, resized (nearest) to the frame's size.
    pub fn class_map(&self, index: usize, frame_width: u32, frame_height: u32) -> Result<ClassMap, InferError> {
        let small = argmax(self.image(index), self.classes, self.width, self.height);
        resize_class_map(&small, frame_width, frame_height)
    }
}

/// Per-pixel argmax of `[classes, H, W]` logits; ties go to the lower class id.
pub fn argmax(logits: &[f32], classes: usize, width: usize, height: usize) -> ClassMap {
    let plane = width * height;
    let mut best = logits[..plane].to_vec();
    let mut ids = vec![0u8; plane];
    for c in 1..classes {
        let row = &logits[c * plane..(c + 1) * plane];
        for ((b, id), &v) in best.iter_mut().zip(ids.iter_mut()).zip(row) {
            if v > *b {
                *b = v;
                *id = c as u8;
            }
        }
    }
    ClassMap { width: width as u32, height: height as u32, classes: ids }
}

/// Nearest-neighbour resize so that class ids are never blended into non-existent classes.
pub fn resize_class_map(map: &ClassMap, width: u32, height: u32) -> Result<ClassMap, InferError> {
    if map.width == width && map.height == height {
        return Ok(map.clone());
    }
    let src = Mat::new_rows_cols_with_data(map.height as i32, map.width as i32, &map.classes).map_err(image_err("class map view"))?;
    let mut dst = Mat::default();
    opencv::imgproc::resize(&src, &mut dst, Size::new(width as i32, height as i32), 0.0, 0.0, opencv::imgproc::INTER_NEAREST)
        .map_err(image_err("class map resize"))?;
    let classes = dst.data_bytes().map_err(image_err("class map read"))?.to_vec();
    Ok(ClassMap { width, height, classes })
}

/// Resizes a BGR frame to the model's input and writes the normalised planar tensor
/// (`(pixel / scale - mean) / std`, channel order as the manifest says) into `out`.
pub fn preprocess(bgr: &[u8], width: u32, height: u32, manifest: &ModelManifest, out: &mut [f32]) -> Result<(), InferError> {
    let (tw, th) = (manifest.input.width, manifest.input.height);
    let plane = (tw * th) as usize;
    if out.len() != 3 * plane {
        return Err(InferError::Image { step: "preprocess", message: format!("output buffer of {} values for {tw}x{th}", out.len()) });
    }
    let resized;
    let pixels: &[u8] = if (width, height) == (tw, th) {
        bgr
    } else {
        let src =
            Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(height as i32, width as i32, bgr).map_err(image_err("frame view"))?;
        let mut dst = Mat::default();
        opencv::imgproc::resize(&src, &mut dst, Size::new(tw as i32, th as i32), 0.0, 0.0, opencv::imgproc::INTER_LINEAR)
            .map_err(image_err("frame resize"))?;
        resized = dst;
        resized.data_bytes().map_err(image_err("frame read"))?
    };
    let input = &manifest.input;
    for c in 0..3 {
        // BGR source: RGB channel c is source channel 2 - c.
        let src_channel = match input.color {
            ColorOrder::Rgb => 2 - c,
            ColorOrder::Bgr => c,
        };
        let gain = 1.0 / (input.scale * input.std[c]);
        let offset = -input.mean[c] / input.std[c];
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (o, px) in dst.iter_mut().zip(pixels.chunks_exact(3)) {
            *o = px[src_channel] as f32 * gain + offset;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifest::{InputSpec, Layout, OutputSpec};

    fn manifest(w: u32, h: u32, color: ColorOrder) -> ModelManifest {
        ModelManifest {
            name: "t".into(),
            onnx: "t.onnx".into(),
            gflops: 0.0,
            input: InputSpec {
                name: "input".into(),
                width: w,
                height: h,
                layout: Layout::Nchw,
                color,
                scale: 255.0,
                mean: [0.485, 0.456, 0.406],
                std: [0.229, 0.224, 0.225],
            },
            output: OutputSpec { name: "logits".into(), layout: Layout::Nchw, classes: vec!["a".into(), "b".into()] },
            path: "t.toml".into(),
        }
    }

    #[test]
    fn known_pixel_gives_expected_normalised_value() {
        // One BGR pixel: blue 10, green 128, red 255.
        let bgr = [10u8, 128, 255];
        let mut out = vec![0.0; 3];
        preprocess(&bgr, 1, 1, &manifest(1, 1, ColorOrder::Rgb), &mut out).unwrap();
        let expect = [(255.0 / 255.0 - 0.485) / 0.229, (128.0 / 255.0 - 0.456) / 0.224, (10.0 / 255.0 - 0.406) / 0.225];
        for (o, e) in out.iter().zip(expect) {
            assert!((o - e).abs() < 1e-5, "{o} vs {e}");
        }
        preprocess(&bgr, 1, 1, &manifest(1, 1, ColorOrder::Bgr), &mut out).unwrap();
        assert!((out[0] - (10.0 / 255.0 - 0.485) / 0.229).abs() < 1e-5);
    }

    #[test]
    fn preprocessing_resizes_to_model_size_and_is_planar() {
        // A 4x2 frame, left half red, right half blue, resized to 2x1.
        let mut bgr = Vec::new();
        for _row in 0..2 {
            for x in 0..4 {
                bgr.extend_from_slice(if x < 2 { &[0, 0, 255] } else { &[255, 0, 0] });
            }
        }
        let mut out = vec![0.0; 6];
        preprocess(&bgr, 4, 2, &manifest(2, 1, ColorOrder::Rgb), &mut out).unwrap();
        let red = |v: f32| v * 0.229 + 0.485;
        assert!((red(out[0]) - 1.0).abs() < 1e-4 && red(out[1]).abs() < 1e-4, "{out:?}");
        let blue = |v: f32| v * 0.225 + 0.406;
        assert!(blue(out[4]).abs() < 1e-4 && (blue(out[5]) - 1.0).abs() < 1e-4, "{out:?}");
    }

    #[test]
    fn argmax_picks_highest_class_and_lowest_on_ties() {
        // 2 classes, 3 pixels.
        let logits = [1.0, 5.0, 2.0, /* class 1 */ 3.0, 1.0, 2.0];
        let map = argmax(&logits, 2, 3, 1);
        assert_eq!(map.classes, vec![1, 0, 0]);
    }

    #[test]
    fn argmax_matches_a_per_pixel_scan() {
        let (classes, width, height) = (5, 37, 61);
        let plane = width * height;
        let logits: Vec<f32> = (0..classes * plane).map(|i| ((i * 7919) % 1000) as f32).collect();
        let map = argmax(&logits, classes, width, height);
        for p in 0..plane {
            let expected = (0..classes).fold(0, |best, c| if logits[c * plane + p] > logits[best * plane + p] { c } else { best });
            assert_eq!(map.classes[p] as usize, expected, "pixel {p}");
        }
    }

    #[test]
    fn class_map_resize_is_nearest() {
        let map = ClassMap { width: 2, height: 1, classes: vec![3, 7] };
        let big = resize_class_map(&map, 4, 2).unwrap();
        assert_eq!(big.classes, vec![3, 3, 7, 7, 3, 3, 7, 7]);
        assert!(big.classes.iter().all(|c| [3, 7].contains(c)));
    }
}
