//! Model manifests (`models/*.toml`): what an ONNX segmentation network expects and returns.
//! The manifest is the single place that knows a model's input size, layout, element type,
//! colour order, normalisation and how a frame is fitted to the input, and which output to read,
//! so the edge, the worker and the offline evaluator all prepare frames identically.

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

/// Order of a 4-D image tensor's axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Layout {
    #[serde(rename = "NCHW")]
    Nchw,
    #[serde(rename = "NHWC")]
    Nhwc,
}

impl Layout {
    /// Positions of (channels, height, width) in the shape.
    pub fn axes(self) -> (usize, usize, usize) {
        match self {
            Layout::Nchw => (1, 2, 3),
            Layout::Nhwc => (3, 1, 2),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ColorOrder {
    #[serde(rename = "RGB")]
    Rgb,
    #[serde(rename = "BGR")]
    Bgr,
}

/// Element type of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// Normalised floats: `(pixel / scale - mean) / std`.
    Float32,
    /// Raw 0..=255 pixels; the graph normalises them itself.
    Uint8,
}

/// How a frame of any aspect ratio is made to fit the network's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Resize to the input size, aspect ratio not kept.
    Stretch,
    /// Resize so the long side fills the input (aspect ratio kept), fill the rest (bottom and
    /// right) with `pad_value`, and crop the padding off the output again (DeepLab's reference).
    Pad,
}

impl Fit {
    pub fn name(self) -> &'static str {
        match self {
            Fit::Stretch => "stretch",
            Fit::Pad => "pad",
        }
    }
}

/// What the network's output holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Float32 class scores `[N, classes, H, W]`; the class map is their argmax.
    Logits,
    /// A ready class map: int64 `[N, H, W]` (the graph ends in ArgMax).
    Classes,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    pub dtype: InputType,
    pub color: ColorOrder,
    pub fit: Fit,
    /// Pixel value (0..=255, before normalisation) of the padding; required with `fit = "pad"`.
    pub pad_value: Option<f32>,
    /// Normalisation of float32 inputs (`pixel / scale`, then `(x - mean) / std`); uint8 inputs
    /// have none, so these must be absent there.
    pub scale: Option<f32>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    pub kind: OutputKind,
    /// Axis order of logits; class maps (`kind = "classes"`) have no channel axis and no layout.
    pub layout: Option<Layout>,
    pub classes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    pub name: String,
    pub onnx: PathBuf,
    /// Cost of one frame (2 × multiply-adds of Conv/MatMul/Gemm at the input size), for the
    /// computation-reduction figures; `edgeseg models info` measures it from the graph.
    pub gflops: f64,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// The manifest file itself (set at load), for messages.
    #[serde(skip)]
    pub path: PathBuf,
}

/// Per-channel `value = pixel * gain + offset` for float inputs, in the network's channel order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub gain: [f32; 3],
    pub offset: [f32; 3],
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

    /// The same network with frames fitted another way, for offline comparisons (`eval segment
    /// --fit`). Padding takes `pad_value`, else the manifest's, else the input's mean pixel (0
    /// after normalisation); the result is checked like a loaded manifest.
    pub fn with_fit(&self, fit: Fit, pad_value: Option<f32>) -> Result<Self, ManifestError> {
        let mut refitted = self.clone();
        refitted.input.fit = fit;
        refitted.input.pad_value = match fit {
            Fit::Stretch => None,
            Fit::Pad => pad_value.or(self.input.pad_value).or_else(|| Some(self.input.mean.map_or(128.0, |m| m.iter().sum::<f32>() / 3.0))),
        };
        refitted.validate()?;
        Ok(refitted)
    }

    /// Values in one preprocessed image (`3 × height × width`), the input tensor's per-image size.
    pub fn input_len(&self) -> usize {
        3 * self.input.width as usize * self.input.height as usize
    }

    /// The input tensor's shape for `batch` images, in the manifest's layout.
    pub fn input_shape(&self, batch: usize) -> [usize; 4] {
        let (w, h) = (self.input.width as usize, self.input.height as usize);
        match self.input.layout {
            Layout::Nchw => [batch, 3, h, w],
            Layout::Nhwc => [batch, h, w, 3],
        }
    }

    /// Gain and offset per network channel; identity for uint8 inputs (fed raw).
    pub fn normalization(&self) -> Normalization {
        let i = &self.input;
        match (i.scale, i.mean, i.std) {
            (Some(scale), Some(mean), Some(std)) => {
                Normalization { gain: std::array::from_fn(|c| 1.0 / (scale * std[c])), offset: std::array::from_fn(|c| -mean[c] / std[c]) }
            }
            _ => Normalization { gain: [1.0; 3], offset: [0.0; 3] },
        }
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let bad = |key, value: String, problem| Err(ManifestError::Invalid { path: self.path.clone(), key, value, problem });
        if !self.onnx.is_file() {
            return bad(
                "onnx",
                self.onnx.display().to_string(),
                "does not exist (real models come from $EDGESEG_ASSETS, default ../shared/assets; \
                 without them use the fixture manifests models/small.toml and models/large.toml made by scripts/fixtures)",
            );
        }
        let input = &self.input;
        if !(1..=4096).contains(&input.width) {
            return bad("input.width", input.width.to_string(), "is outside 1..=4096");
        }
        if !(1..=4096).contains(&input.height) {
            return bad("input.height", input.height.to_string(), "is outside 1..=4096");
        }
        match input.dtype {
            InputType::Float32 => {
                let Some(scale) = input.scale else {
                    return bad("input.scale", "(missing)".into(), "is required for float32 inputs (pixel / scale, then (x - mean) / std)");
                };
                if scale.is_nan() || scale <= 0.0 {
                    return bad("input.scale", scale.to_string(), "must be positive");
                }
                let Some(mean) = input.mean else {
                    return bad("input.mean", "(missing)".into(), "is required for float32 inputs");
                };
                if mean.iter().any(|m| !m.is_finite()) {
                    return bad("input.mean", format!("{mean:?}"), "must be finite in every channel");
                }
                let Some(std) = input.std else {
                    return bad("input.std", "(missing)".into(), "is required for float32 inputs");
                };
                if std.iter().any(|s| s.is_nan() || *s <= 0.0) {
                    return bad("input.std", format!("{std:?}"), "must be positive in every channel");
                }
            }
            InputType::Uint8 => {
                let given =
                    [("input.scale", input.scale.is_some()), ("input.mean", input.mean.is_some()), ("input.std", input.std.is_some())];
                if let Some((key, _)) = given.into_iter().find(|(_, present)| *present) {
                    return bad(key, "(set)".into(), "must be absent for uint8 inputs: raw pixels are fed and the graph normalises them");
                }
            }
        }
        match (input.fit, input.pad_value) {
            (Fit::Pad, None) => {
                return bad("input.pad_value", "(missing)".into(), "is required with fit = \"pad\" (a pixel value 0..=255, e.g. the mean)")
            }
            (Fit::Pad, Some(v)) if !(0.0..=255.0).contains(&v) => return bad("input.pad_value", v.to_string(), "is outside 0..=255"),
            (Fit::Pad, Some(v)) if input.dtype == InputType::Uint8 && v.fract() != 0.0 => {
                return bad("input.pad_value", v.to_string(), "must be a whole number for uint8 inputs")
            }
            (Fit::Stretch, Some(v)) => return bad("input.pad_value", v.to_string(), "is only used with fit = \"pad\""),
            _ => {}
        }
        match (self.output.kind, self.output.layout) {
            (OutputKind::Logits, None) => {
                return bad("output.layout", "(missing)".into(), "is required for logits (\"NCHW\": [N, classes, H, W])")
            }
            (OutputKind::Logits, Some(Layout::Nhwc)) => {
                return bad("output.layout", "\"NHWC\"".into(), "is not supported for logits; only \"NCHW\" ([N, classes, H, W]) is")
            }
            (OutputKind::Classes, Some(l)) => {
                return bad("output.layout", format!("{:?}", l.name()), "must be absent for kind = \"classes\" (an [N, H, W] class map)")
            }
            _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(dir: &Path, text: &str) -> Result<ModelManifest, ManifestError> {
        std::fs::write(dir.join("m.onnx"), b"x").unwrap();
        let path = dir.join("m.toml");
        std::fs::write(&path, text).unwrap();
        ModelManifest::load(&path)
    }

    const UINT8_PAD: &str = r#"
name = "t"
onnx = "m.onnx"
gflops = 1.0
[input]
name = "input"
width = 513
height = 513
layout = "NHWC"
dtype = "uint8"
color = "RGB"
fit = "pad"
pad_value = 128
[output]
name = "classes"
kind = "classes"
classes = ["a", "b"]
"#;

    #[test]
    fn uint8_pad_manifest_loads_with_identity_normalisation() {
        let dir = tempfile::tempdir().unwrap();
        let m = load_text(dir.path(), UINT8_PAD).unwrap();
        assert_eq!(m.input_shape(2), [2, 513, 513, 3]);
        assert_eq!(m.normalization(), Normalization { gain: [1.0; 3], offset: [0.0; 3] });
    }

    #[test]
    fn a_refitted_manifest_gets_a_pad_value_or_loses_it_and_is_checked_again() {
        let dir = tempfile::tempdir().unwrap();
        let padded = load_text(dir.path(), UINT8_PAD).unwrap();
        let stretched = padded.with_fit(Fit::Stretch, None).unwrap();
        assert_eq!((stretched.input.fit, stretched.input.pad_value), (Fit::Stretch, None));
        assert_eq!(stretched.with_fit(Fit::Pad, None).unwrap().input.pad_value, Some(128.0), "no mean: mid-grey");
        assert_eq!(padded.with_fit(Fit::Pad, Some(0.0)).unwrap().input.pad_value, Some(0.0));
        let err = padded.with_fit(Fit::Pad, Some(0.5)).unwrap_err().to_string();
        assert!(err.contains("input.pad_value = 0.5 must be a whole number"), "{err}");
        let float = load_text(
            dir.path(),
            &UINT8_PAD
                .replace("dtype = \"uint8\"", "dtype = \"float32\"\nscale = 1.0\nmean = [100.0, 110.0, 120.0]\nstd = [1.0, 1.0, 1.0]"),
        )
        .unwrap()
        .with_fit(Fit::Stretch, None)
        .unwrap();
        assert_eq!(float.with_fit(Fit::Pad, None).unwrap().input.pad_value, Some(110.0), "the mean pixel, 0 after normalisation");
    }

    #[test]
    fn inconsistent_manifests_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (UINT8_PAD.replace("pad_value = 128", "pad_value = 127.5"), "input.pad_value = 127.5 must be a whole number"),
            (UINT8_PAD.replace("pad_value = 128", ""), "input.pad_value = (missing) is required"),
            (UINT8_PAD.replace("fit = \"pad\"", "fit = \"stretch\""), "input.pad_value = 128 is only used with fit = \"pad\""),
            (UINT8_PAD.replace("color = \"RGB\"", "color = \"RGB\"\nmean = [1.0, 1.0, 1.0]"), "input.mean = (set) must be absent"),
            (UINT8_PAD.replace("dtype = \"uint8\"", "dtype = \"float32\""), "input.scale = (missing) is required"),
            (UINT8_PAD.replace("kind = \"classes\"", "kind = \"logits\""), "output.layout = (missing) is required for logits"),
            (UINT8_PAD.replace("kind = \"classes\"", "kind = \"classes\"\nlayout = \"NCHW\""), "output.layout = \"NCHW\" must be absent"),
            (UINT8_PAD.replace("fit = \"pad\"", "fit = \"crop\""), "unknown variant `crop`"),
        ];
        for (text, needle) in cases {
            let err = load_text(dir.path(), &text).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("m.toml"), "{needle:?} not in {err}");
        }
    }
}
