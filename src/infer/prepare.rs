//! Frame → network input: fit the frame to the input size (stretch, or keep the aspect ratio
//! and pad), reorder the colour channels, normalise or keep raw bytes, and lay the values out
//! as the manifest says (NCHW or NHWC).

use opencv::core::{Mat, Size, ToInputArray};
use opencv::prelude::*;

use super::manifest::{ColorOrder, Fit, InputType, Layout, ModelManifest};
use super::{image_err, InferError};

/// Preprocessed images in the network's input element type, one after another: a batch.
/// Reused between frames (the pipeline hands buffers back to the preprocessing stage).
#[derive(Debug, Clone, PartialEq)]
pub enum InputBuffer {
    Float32 { data: Vec<f32>, image_len: usize },
    Uint8 { data: Vec<u8>, image_len: usize },
}

/// One image's slot in an [`InputBuffer`].
#[derive(Debug)]
pub enum ImageMut<'a> {
    Float32(&'a mut [f32]),
    Uint8(&'a mut [u8]),
}

impl InputBuffer {
    /// Zeroed room for `images` images of the manifest's input.
    pub fn new(manifest: &ModelManifest, images: usize) -> Self {
        let image_len = manifest.input_len();
        match manifest.input.dtype {
            InputType::Float32 => InputBuffer::Float32 { data: vec![0.0; images * image_len], image_len },
            InputType::Uint8 => InputBuffer::Uint8 { data: vec![0; images * image_len], image_len },
        }
    }

    pub fn dtype(&self) -> InputType {
        match self {
            InputBuffer::Float32 { .. } => InputType::Float32,
            InputBuffer::Uint8 { .. } => InputType::Uint8,
        }
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        match self {
            InputBuffer::Float32 { image_len, .. } | InputBuffer::Uint8 { image_len, .. } => *image_len,
        }
    }

    pub fn images(&self) -> usize {
        let len = match self {
            InputBuffer::Float32 { data, .. } => data.len(),
            InputBuffer::Uint8 { data, .. } => data.len(),
        };
        len / self.image_len().max(1)
    }

    pub fn image_mut(&mut self, index: usize) -> Option<ImageMut<'_>> {
        match self {
            InputBuffer::Float32 { data, image_len } => data.chunks_exact_mut(*image_len).nth(index).map(ImageMut::Float32),
            InputBuffer::Uint8 { data, image_len } => data.chunks_exact_mut(*image_len).nth(index).map(ImageMut::Uint8),
        }
    }

    /// Empties the batch, keeping the allocation.
    pub fn clear(&mut self) {
        match self {
            InputBuffer::Float32 { data, .. } => data.clear(),
            InputBuffer::Uint8 { data, .. } => data.clear(),
        }
    }

    /// Appends the images of `other` (same model) to this batch.
    pub fn append(&mut self, other: &InputBuffer) -> Result<(), InferError> {
        match (self, other) {
            (InputBuffer::Float32 { data, image_len }, InputBuffer::Float32 { data: more, image_len: n }) if image_len == n => {
                data.extend_from_slice(more)
            }
            (InputBuffer::Uint8 { data, image_len }, InputBuffer::Uint8 { data: more, image_len: n }) if image_len == n => {
                data.extend_from_slice(more)
            }
            (this, _) => {
                return Err(InferError::Image {
                    step: "batching",
                    message: format!(
                        "{:?} images of {} values cannot join a batch of {:?} images of {} values",
                        other.dtype(),
                        other.image_len(),
                        this.dtype(),
                        this.image_len()
                    ),
                })
            }
        }
        Ok(())
    }
}

/// Where a frame sits in the network input, so its output can be mapped back to the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub frame_width: u32,
    pub frame_height: u32,
    /// Size of the resized frame in the input's top-left corner: the whole input for `stretch`,
    /// less on one side for `pad` (the rest is padding).
    pub content_width: u32,
    pub content_height: u32,
    pub input_width: u32,
    pub input_height: u32,
}

impl Placement {
    pub fn new(frame_width: u32, frame_height: u32, manifest: &ModelManifest) -> Self {
        let (input_width, input_height) = (manifest.input.width, manifest.input.height);
        let (content_width, content_height) = match manifest.input.fit {
            Fit::Stretch => (input_width, input_height),
            Fit::Pad => {
                let scale = (input_width as f64 / frame_width.max(1) as f64).min(input_height as f64 / frame_height.max(1) as f64);
                let fit = |frame: u32, input: u32| ((frame as f64 * scale).round() as u32).clamp(1, input);
                (fit(frame_width, input_width), fit(frame_height, input_height))
            }
        };
        Placement { frame_width, frame_height, content_width, content_height, input_width, input_height }
    }
}

/// Resizes a BGR frame into the model's input, as the manifest says, and writes it into `out`.
/// Returns where the frame landed, which post-processing needs to undo the fit.
pub fn preprocess(bgr: &[u8], width: u32, height: u32, manifest: &ModelManifest, out: ImageMut<'_>) -> Result<Placement, InferError> {
    let bad = |message: String| InferError::Image { step: "preprocess", message };
    if bgr.len() != width as usize * height as usize * 3 || width == 0 || height == 0 {
        return Err(bad(format!("a {width}x{height} BGR frame needs {} bytes, got {}", width as usize * height as usize * 3, bgr.len())));
    }
    let placement = Placement::new(width, height, manifest);
    let (cw, ch) = (placement.content_width, placement.content_height);
    let resized;
    let pixels: &[u8] = if (width, height) == (cw, ch) {
        bgr
    } else {
        let src =
            Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(height as i32, width as i32, bgr).map_err(image_err("frame view"))?;
        resized = resize_frame(&src, width, height, cw, ch)?;
        resized.data_bytes().map_err(image_err("frame read"))?
    };
    let input = &manifest.input;
    // Source (BGR) channel of each network channel.
    let source_channel: [usize; 3] = match input.color {
        ColorOrder::Rgb => [2, 1, 0],
        ColorOrder::Bgr => [0, 1, 2],
    };
    let pad = input.pad_value.unwrap_or(0.0);
    let layout = Layout2d { layout: input.layout, input_width: input.width as usize, input_height: input.height as usize };
    let content = Content { pixels, width: cw as usize, height: ch as usize, source_channel };
    match out {
        ImageMut::Float32(out) => {
            let n = manifest.normalization();
            let pad = std::array::from_fn(|c| pad * n.gain[c] + n.offset[c]);
            layout.fill(&content, |c, v| v as f32 * n.gain[c] + n.offset[c], pad, out).map_err(bad)?;
        }
        ImageMut::Uint8(out) => {
            layout.fill(&content, |_, v| v, [pad as u8; 3], out).map_err(bad)?;
        }
    }
    Ok(placement)
}

/// Area averaging when shrinking (no aliasing from 4K frames, and close to the antialiased
/// bilinear resize of PIL that the reference figures use), bilinear when enlarging. A large
/// reduction first shrinks by the largest integer factor that divides the frame, which OpenCV
/// does on a fast path: a 3840x2160 frame goes to 257x257 in 9 instead of 29 ms (one core).
fn resize_frame(src: &impl ToInputArray, width: u32, height: u32, target_width: u32, target_height: u32) -> Result<Mat, InferError> {
    fn resize(from: &impl ToInputArray, w: u32, h: u32, interpolation: i32) -> opencv::Result<Mat> {
        let mut dst = Mat::default();
        opencv::imgproc::resize(from, &mut dst, Size::new(w as i32, h as i32), 0.0, 0.0, interpolation).map(|()| dst)
    }
    if target_width > width || target_height > height {
        return resize(src, target_width, target_height, opencv::imgproc::INTER_LINEAR).map_err(image_err("frame resize"));
    }
    let most = (width / target_width).min(height / target_height);
    let factor = (2..=most).rev().find(|k| width % k == 0 && height % k == 0).unwrap_or(1);
    if factor == 1 {
        return resize(src, target_width, target_height, opencv::imgproc::INTER_AREA).map_err(image_err("frame resize"));
    }
    let reduced = resize(src, width / factor, height / factor, opencv::imgproc::INTER_AREA).map_err(image_err("frame resize"))?;
    resize(&reduced, target_width, target_height, opencv::imgproc::INTER_AREA).map_err(image_err("frame resize"))
}

/// The resized frame: tightly packed BGR rows.
struct Content<'a> {
    pixels: &'a [u8],
    width: usize,
    height: usize,
    source_channel: [usize; 3],
}

struct Layout2d {
    layout: Layout,
    input_width: usize,
    input_height: usize,
}

impl Layout2d {
    /// Writes `content` at the top left of the input, `pad` elsewhere.
    fn fill<T: Copy>(&self, content: &Content<'_>, convert: impl Fn(usize, u8) -> T, pad: [T; 3], out: &mut [T]) -> Result<(), String> {
        let (tw, th) = (self.input_width, self.input_height);
        if out.len() != 3 * tw * th {
            return Err(format!("input slot of {} values for a {tw}x{th} image", out.len()));
        }
        let (cw, ch) = (content.width, content.height);
        let row_of = |y: usize| &content.pixels[y * cw * 3..(y + 1) * cw * 3];
        match self.layout {
            Layout::Nchw => {
                for (c, plane) in out.chunks_exact_mut(tw * th).enumerate() {
                    let src = content.source_channel[c];
                    for (y, row) in plane.chunks_exact_mut(tw).enumerate() {
                        if y < ch {
                            for (o, px) in row[..cw].iter_mut().zip(row_of(y).chunks_exact(3)) {
                                *o = convert(c, px[src]);
                            }
                            row[cw..].fill(pad[c]);
                        } else {
                            row.fill(pad[c]);
                        }
                    }
                }
            }
            Layout::Nhwc => {
                let [s0, s1, s2] = content.source_channel;
                for (y, row) in out.chunks_exact_mut(tw * 3).enumerate() {
                    let (inside, outside) = row.split_at_mut(if y < ch { cw * 3 } else { 0 });
                    if y < ch {
                        for (o, px) in inside.chunks_exact_mut(3).zip(row_of(y).chunks_exact(3)) {
                            o[0] = convert(0, px[s0]);
                            o[1] = convert(1, px[s1]);
                            o[2] = convert(2, px[s2]);
                        }
                    }
                    for o in outside.chunks_exact_mut(3) {
                        o.copy_from_slice(&pad);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::manifest::{InputSpec, OutputKind, OutputSpec};

    pub(crate) fn manifest(w: u32, h: u32, color: ColorOrder) -> ModelManifest {
        ModelManifest {
            name: "t".into(),
            onnx: "t.onnx".into(),
            gflops: 0.0,
            input: InputSpec {
                name: "input".into(),
                width: w,
                height: h,
                layout: Layout::Nchw,
                dtype: InputType::Float32,
                color,
                fit: Fit::Stretch,
                pad_value: None,
                scale: Some(255.0),
                mean: Some([0.485, 0.456, 0.406]),
                std: Some([0.229, 0.224, 0.225]),
            },
            output: OutputSpec {
                name: "logits".into(),
                kind: OutputKind::Logits,
                layout: Some(Layout::Nchw),
                classes: vec!["a".into(), "b".into()],
            },
            path: "t.toml".into(),
        }
    }

    fn prepare(bgr: &[u8], w: u32, h: u32, m: &ModelManifest) -> (InputBuffer, Placement) {
        let mut buf = InputBuffer::new(m, 1);
        let placement = preprocess(bgr, w, h, m, buf.image_mut(0).unwrap()).unwrap();
        (buf, placement)
    }

    fn floats(b: &InputBuffer) -> &[f32] {
        match b {
            InputBuffer::Float32 { data, .. } => data,
            InputBuffer::Uint8 { .. } => panic!("uint8 buffer"),
        }
    }

    #[test]
    fn known_pixel_gives_expected_normalised_value() {
        // One BGR pixel: blue 10, green 128, red 255.
        let bgr = [10u8, 128, 255];
        let (out, _) = prepare(&bgr, 1, 1, &manifest(1, 1, ColorOrder::Rgb));
        let expect = [(255.0 / 255.0 - 0.485) / 0.229, (128.0 / 255.0 - 0.456) / 0.224, (10.0 / 255.0 - 0.406) / 0.225];
        for (o, e) in floats(&out).iter().zip(expect) {
            assert!((o - e).abs() < 1e-5, "{o} vs {e}");
        }
        let (out, _) = prepare(&bgr, 1, 1, &manifest(1, 1, ColorOrder::Bgr));
        assert!((floats(&out)[0] - (10.0 / 255.0 - 0.485) / 0.229).abs() < 1e-5);
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
        let (out, _) = prepare(&bgr, 4, 2, &manifest(2, 1, ColorOrder::Rgb));
        let out = floats(&out);
        let red = |v: f32| v * 0.229 + 0.485;
        assert!((red(out[0]) - 1.0).abs() < 1e-4 && red(out[1]).abs() < 1e-4, "{out:?}");
        let blue = |v: f32| v * 0.225 + 0.406;
        assert!(blue(out[4]).abs() < 1e-4 && (blue(out[5]) - 1.0).abs() < 1e-4, "{out:?}");
    }

    /// A 4x2 frame into a 4x4 uint8 NHWC input with pad 128: the frame fills the top two rows
    /// (RGB order), padding the rest.
    #[test]
    fn pad_keeps_aspect_ratio_and_fills_bottom_with_pad_value_nhwc_uint8() {
        let mut m = manifest(4, 4, ColorOrder::Rgb);
        m.input.layout = Layout::Nhwc;
        m.input.dtype = InputType::Uint8;
        m.input.fit = Fit::Pad;
        m.input.pad_value = Some(128.0);
        (m.input.scale, m.input.mean, m.input.std) = (None, None, None);
        let bgr: Vec<u8> = (0..8u8).flat_map(|i| [i, 10 + i, 20 + i]).collect();
        let (out, placement) = prepare(&bgr, 4, 2, &m);
        assert_eq!((placement.content_width, placement.content_height), (4, 2));
        let InputBuffer::Uint8 { data, .. } = out else { panic!("uint8 input expected") };
        let expected_frame: Vec<u8> = (0..8u8).flat_map(|i| [20 + i, 10 + i, i]).collect();
        assert_eq!(&data[..24], &expected_frame[..]);
        assert!(data[24..].iter().all(|&v| v == 128), "{data:?}");
    }

    /// A tall 2x4 frame into a 4x4 float NCHW input: the frame fills the left two columns, and
    /// the padding is the pad value after normalisation (127.5 with mean = std = 127.5 gives 0).
    #[test]
    fn pad_value_is_normalised_for_float_inputs() {
        let mut m = manifest(4, 4, ColorOrder::Rgb);
        m.input.fit = Fit::Pad;
        m.input.pad_value = Some(127.5);
        (m.input.scale, m.input.mean, m.input.std) = (Some(1.0), Some([127.5; 3]), Some([127.5; 3]));
        let bgr = vec![255u8; 2 * 4 * 3];
        let (out, placement) = prepare(&bgr, 2, 4, &m);
        assert_eq!((placement.content_width, placement.content_height), (2, 4));
        for plane in floats(&out).chunks_exact(16) {
            for row in plane.chunks_exact(4) {
                assert_eq!(row, &[1.0, 1.0, 0.0, 0.0]);
            }
        }
    }

    #[test]
    fn pad_placement_rounds_the_short_side() {
        let mut m = manifest(257, 257, ColorOrder::Rgb);
        m.input.fit = Fit::Pad;
        let p = Placement::new(640, 480, &m);
        assert_eq!((p.content_width, p.content_height), (257, 193));
        let p = Placement::new(480, 640, &m);
        assert_eq!((p.content_width, p.content_height), (193, 257));
    }

    #[test]
    fn wrong_frame_length_is_an_error_not_a_panic() {
        let m = manifest(2, 2, ColorOrder::Rgb);
        let mut buf = InputBuffer::new(&m, 1);
        assert!(preprocess(&[0; 5], 2, 1, &m, buf.image_mut(0).unwrap()).is_err());
    }

    #[test]
    fn batches_append_images_of_the_same_model_only() {
        let m = manifest(2, 2, ColorOrder::Rgb);
        let mut batch = InputBuffer::new(&m, 0);
        batch.append(&InputBuffer::new(&m, 1)).unwrap();
        batch.append(&InputBuffer::new(&m, 1)).unwrap();
        assert_eq!(batch.images(), 2);
        let mut u8m = m.clone();
        u8m.input.dtype = InputType::Uint8;
        assert!(batch.append(&InputBuffer::new(&u8m, 1)).is_err());
        batch.clear();
        assert_eq!(batch.images(), 0);
    }
}
