//! Network output → class map at frame size. Everything heavy happens at the output's own
//! resolution (argmax over the logits, or reading the graph's class map; cropping the padding
//! of a `pad` fit); only the one-byte class map is resized, by nearest neighbour, to the frame.
//! A 4K frame therefore never sees 21 float planes of its own size.

use ort::value::DynValue;

use super::manifest::OutputKind;
use super::prepare::Placement;
use super::InferError;
pub use crate::frame::ClassMap;

/// How sure the network was about one image, from the softmax of its logits: the mean over
/// pixels of the top class probability, and of the entropy (nats; 0 = certain, ln(classes) =
/// uniform). A baseline signal for deciding which frames deserve the large network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Confidence {
    pub mean_max_softmax: f32,
    pub mean_entropy: f32,
}

/// Network output for a batch, kept in ONNX Runtime's buffer so that reading it (argmax) can
/// happen on another thread without a copy.
pub struct NetworkOutput {
    value: DynValue,
    kind: OutputKind,
    batch: usize,
    classes: usize,
    height: usize,
    width: usize,
}

impl NetworkOutput {
    pub(super) fn new(value: DynValue, kind: OutputKind, batch: usize, classes: usize) -> Result<Self, String> {
        let shape = match kind {
            OutputKind::Logits => value.try_extract_tensor::<f32>().map_err(|e| e.to_string())?.0,
            OutputKind::Classes => value.try_extract_tensor::<i64>().map_err(|e| e.to_string())?.0,
        };
        let (height, width) = match (kind, &shape[..]) {
            (OutputKind::Logits, &[n, c, h, w]) if n as usize == batch && c as usize == classes => (h as usize, w as usize),
            (OutputKind::Classes, &[n, h, w]) if n as usize == batch => (h as usize, w as usize),
            (OutputKind::Logits, s) => return Err(format!("logits of shape {s:?} are not [{batch}, {classes}, H, W]")),
            (OutputKind::Classes, s) => return Err(format!("class map of shape {s:?} is not [{batch}, H, W]")),
        };
        Ok(NetworkOutput { value, kind, batch, classes, height, width })
    }

    /// Logits `[N, classes, H, W]` computed outside a [`super::Model`] (the small network's
    /// head run on features the decision stage computed).
    pub fn from_logits(value: DynValue, classes: usize) -> Result<Self, InferError> {
        let bad = |message: String| InferError::Image { step: "postprocess", message };
        let batch = match value.try_extract_tensor::<f32>().map_err(|e| bad(e.to_string()))?.0[..] {
            [n, ..] => n.max(0) as usize,
            [] => return Err(bad("logits without dimensions".into())),
        };
        NetworkOutput::new(value, OutputKind::Logits, batch, classes).map_err(bad)
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// (width, height) of the output maps.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// The `[classes, H, W]` logits of image `index`; `None` when the model returns a class map
    /// (or `index` is outside the batch).
    pub fn logits(&self, index: usize) -> Option<&[f32]> {
        if self.kind != OutputKind::Logits {
            return None;
        }
        let plane = self.classes * self.height * self.width;
        self.value.try_extract_tensor::<f32>().ok()?.1.get(index * plane..(index + 1) * plane)
    }

    /// The class map of image `index` at output resolution.
    fn native_class_map(&self, index: usize) -> Result<ClassMap, InferError> {
        let missing = || InferError::Image { step: "postprocess", message: format!("image {index} is outside a batch of {}", self.batch) };
        let plane = self.height * self.width;
        match self.kind {
            OutputKind::Logits => Ok(argmax(self.logits(index).ok_or_else(missing)?, self.classes, self.width, self.height)),
            OutputKind::Classes => {
                let all = self
                    .value
                    .try_extract_tensor::<i64>()
                    .map_err(|e| InferError::Image { step: "postprocess", message: e.to_string() })?
                    .1;
                let ids = all.get(index * plane..(index + 1) * plane).ok_or_else(missing)?;
                let classes = ids
                    .iter()
                    .map(|&id| u8::try_from(id).ok().filter(|&c| (c as usize) < self.classes))
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| InferError::Image {
                        step: "postprocess",
                        message: format!("the model's class map holds ids outside 0..{}", self.classes),
                    })?;
                Ok(ClassMap { width: self.width as u32, height: self.height as u32, classes })
            }
        }
    }

    /// The part of the output that shows the frame (all of it for `stretch`, less the
    /// padding for `pad`), as (width, height) at output resolution.
    fn content_region(&self, placement: &Placement) -> (usize, usize) {
        let scale = |content: u32, input: u32, out: usize| {
            ((content as f64 * out as f64 / input.max(1) as f64).round() as usize).clamp(1, out.max(1))
        };
        (
            scale(placement.content_width, placement.input_width, self.width),
            scale(placement.content_height, placement.input_height, self.height),
        )
    }

    /// Class map of image `index` at its frame's size: argmax (or the graph's class map) at
    /// output resolution, padding cropped, then a nearest-neighbour resize of the class ids.
    pub fn class_map(&self, index: usize, placement: &Placement) -> Result<ClassMap, InferError> {
        let native = self.native_class_map(index)?;
        let (region_width, region_height) = self.content_region(placement);
        Ok(resize_region(&native, region_width, region_height, placement.frame_width, placement.frame_height))
    }

    /// Softmax statistics of image `index` over the pixels that show the frame; `None` for
    /// class-map outputs, which carry no scores.
    pub fn confidence(&self, index: usize, placement: &Placement) -> Option<Confidence> {
        let logits = self.logits(index)?;
        let (region_width, region_height) = self.content_region(placement);
        Some(confidence_in(logits, self.classes, self.width, self.height, region_width, region_height))
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

/// Nearest-neighbour resize, so that class ids are never blended into classes that are not there.
pub fn resize_class_map(map: &ClassMap, width: u32, height: u32) -> ClassMap {
    resize_region(map, map.width as usize, map.height as usize, width, height)
}

/// Resizes the top-left `region_width × region_height` of `map` to `width × height`, nearest
/// neighbour with pixel centres aligned (as PIL does), in one pass into the result.
fn resize_region(map: &ClassMap, region_width: usize, region_height: usize, width: u32, height: u32) -> ClassMap {
    let (src_stride, w, h) = (map.width as usize, width as usize, height as usize);
    if region_width == 0 || region_height == 0 {
        return ClassMap { width, height, classes: vec![0; w * h] };
    }
    let source_index = |dst: usize, dst_len: usize, src_len: usize| ((2 * dst + 1) * src_len / (2 * dst_len)).min(src_len - 1);
    let columns: Vec<usize> = (0..w).map(|x| source_index(x, w, region_width)).collect();
    let mut classes = vec![0u8; w * h];
    let mut previous_source_row = None;
    for y in 0..h {
        let sy = source_index(y, h, region_height);
        let (done, rest) = classes.split_at_mut(y * w);
        let row = &mut rest[..w];
        if previous_source_row == Some(sy) {
            // Enlarging repeats source rows: copy the row just written.
            row.copy_from_slice(&done[(y - 1) * w..]);
        } else {
            let source = &map.classes[sy * src_stride..sy * src_stride + region_width];
            for (o, &sx) in row.iter_mut().zip(&columns) {
                *o = source[sx];
            }
        }
        previous_source_row = Some(sy);
    }
    ClassMap { width, height, classes }
}

/// Mean max-softmax and mean softmax entropy of `[classes, H, W]` logits over all pixels.
pub fn confidence(logits: &[f32], classes: usize, height: usize, width: usize) -> Confidence {
    confidence_in(logits, classes, width, height, width, height)
}

/// [`confidence`] over the top-left `region_width × region_height` pixels of each plane.
fn confidence_in(logits: &[f32], classes: usize, width: usize, height: usize, region_width: usize, region_height: usize) -> Confidence {
    let plane = width * height;
    let (mut max_sum, mut entropy_sum) = (0f64, 0f64);
    let mut row_max = vec![0f32; region_width];
    let mut row_sum = vec![0f32; region_width];
    // Σ_c e_c (l_c − max): with p_c = e_c / S, the entropy is ln S − Σ_c p_c (l_c − max).
    let mut row_weighted = vec![0f32; region_width];
    let row = |c: usize, y: usize| &logits[c * plane + y * width..c * plane + y * width + region_width];
    for y in 0..region_height {
        row_max.copy_from_slice(row(0, y));
        for c in 1..classes {
            for (m, &v) in row_max.iter_mut().zip(row(c, y)) {
                *m = m.max(v);
            }
        }
        row_sum.fill(0.0);
        row_weighted.fill(0.0);
        for c in 0..classes {
            for (((s, w), &m), &v) in row_sum.iter_mut().zip(row_weighted.iter_mut()).zip(&row_max).zip(row(c, y)) {
                let shifted = v - m;
                let e = shifted.exp();
                *s += e;
                *w += e * shifted;
            }
        }
        for (&s, &w) in row_sum.iter().zip(&row_weighted) {
            max_sum += 1.0 / s as f64;
            entropy_sum += s.ln() as f64 - (w / s) as f64;
        }
    }
    let pixels = (region_width * region_height).max(1) as f64;
    Confidence { mean_max_softmax: (max_sum / pixels) as f32, mean_entropy: (entropy_sum / pixels) as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let big = resize_class_map(&map, 4, 2);
        assert_eq!(big.classes, vec![3, 3, 7, 7, 3, 3, 7, 7]);
        let map = ClassMap { width: 4, height: 1, classes: vec![1, 2, 3, 4] };
        assert_eq!(resize_class_map(&map, 2, 1).classes, vec![2, 4], "shrinking samples pixel centres");
    }

    #[test]
    fn padding_is_cropped_before_resizing() {
        // A 4x4 output whose bottom half is padding (class 9): a 2:1 frame of 8x4 sees only the top.
        let map = ClassMap { width: 4, height: 4, classes: vec![1, 1, 2, 2, 1, 1, 2, 2, 9, 9, 9, 9, 9, 9, 9, 9] };
        let frame = resize_region(&map, 4, 2, 8, 4);
        assert_eq!(frame.classes, [[1u8, 1, 1, 1, 2, 2, 2, 2]; 4].concat());
    }

    #[test]
    fn confidence_of_uniform_and_peaked_logits() {
        // Pixel 0: uniform over 3 classes; pixel 1: one class far ahead.
        let logits = [0.0, 100.0, /* c1 */ 0.0, 0.0, /* c2 */ 0.0, 0.0];
        let c = confidence(&logits, 3, 1, 2);
        assert!((c.mean_max_softmax - (1.0 / 3.0 + 1.0) / 2.0).abs() < 1e-5, "{c:?}");
        assert!((c.mean_entropy - 3f32.ln() / 2.0).abs() < 1e-5, "{c:?}");
        // Only the first pixel (a 1x1 region of the 2x1 plane).
        let first = confidence_in(&logits, 3, 2, 1, 1, 1);
        assert!((first.mean_max_softmax - 1.0 / 3.0).abs() < 1e-6 && (first.mean_entropy - 3f32.ln()).abs() < 1e-5);
    }
}
