//! Model manifests (`models/*.toml`): what an ONNX segmentation network expects and returns.
//! The manifest is the single place that knows a model's input size, colour order and
//! normalisation, so the edge and the worker preprocess identically.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read model manifest {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("model manifest {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("model manifest {path}: {key} = {value} {problem}")]
    Invalid { path: PathBuf, key: &'static str, value: String, problem: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Layout {
    #[serde(rename = "NCHW")]
    Nchw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ColorOrder {
    #[serde(rename = "RGB")]
    Rgb,
    #[serde(rename = "BGR")]
    Bgr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    pub color: ColorOrder,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    pub layout: Layout,
    pub classes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    pub name: String,
    pub onnx: PathBuf,
    /// Cost of one frame, for the computation-reduction figures of the evaluation.
    pub gflops: f64,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// The manifest file itself (set at load), for messages.
    #[serde(skip)]
    pub path: PathBuf,
}

/// Where real assets live: `$EDGESEG_ASSETS`, else `../shared/assets` beside the project.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("EDGESEG_ASSETS").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/assets"))
}

impl ModelManifest {
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.to_path_buf(), source })?;
        let mut m: ModelManifest =
            toml::from_str(&text).map_err(|e| ManifestError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        m.path = path.to_path_buf();
        let onnx = m.onnx.to_string_lossy().replace("${EDGESEG_ASSETS}", &assets_dir().to_string_lossy());
        let onnx = PathBuf::from(onnx);
        m.onnx = if onnx.is_relative() { path.parent().unwrap_or(Path::new(".")).join(onnx) } else { onnx };
        m.validate()?;
        Ok(m)
    }

    /// Values in one preprocessed image (`3 × height × width`), the input tensor's per-image size.
    pub fn input_len(&self) -> usize {
        3 * self.input.width as usize * self.input.height as usize
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let bad = |key, value: String, problem| Err(ManifestError::Invalid { path: self.path.clone(), key, value, problem });
        if !self.onnx.is_file() {
            return bad(
                "onnx",
                self.onnx.display().to_string(),
                "does not exist (run scripts/fixtures or point it at a model in the assets folder)",
            );
        }
        if !(1..=4096).contains(&self.input.width) {
            return bad("input.width", self.input.width.to_string(), "is outside 1..=4096");
        }
        if !(1..=4096).contains(&self.input.height) {
            return bad("input.height", self.input.height.to_string(), "is outside 1..=4096");
        }
        if self.input.scale.is_nan() || self.input.scale <= 0.0 {
            return bad("input.scale", self.input.scale.to_string(), "must be positive");
        }
        if self.input.std.iter().any(|s| s.is_nan() || *s <= 0.0) {
            return bad("input.std", format!("{:?}", self.input.std), "must be positive in every channel");
        }
        if self.output.classes.is_empty() || self.output.classes.len() > 255 {
            return bad("output.classes", self.output.classes.len().to_string(), "must name between 1 and 255 classes");
        }
        if self.gflops.is_nan() || self.gflops < 0.0 {
            return bad("gflops", self.gflops.to_string(), "must be zero or positive");
        }
        Ok(())
    }
}
