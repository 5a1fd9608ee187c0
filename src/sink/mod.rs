//! Outputs: per-frame JSON Lines records, colour-coded mask PNGs, and an overlay video.
//!
//! Segmented frames can arrive out of order (remote answers overtake local ones), so the sink
//! first restores frame order with a bounded reorder buffer, then shows each frame to every
//! [`Observer`]: the three outputs, and whatever else wants to see the same results in the same
//! order (offline evaluation, a test). Each output is flushed as it goes, so a run that ends in
//! an error keeps everything written up to that point; an output that fails stops only itself.

mod overlay;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use opencv::core::{Mat, Vector};
use opencv::prelude::*;
use serde::Serialize;

use crate::frame::{ClassMap, DecisionRecord, MaskSource, Segmented};
use crate::metrics::StageLatencies;
pub use overlay::OverlayWriter;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create output {path}: {source} (check output.dir and its permissions)")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot write output {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot write mask {path}: {message}")]
    Mask { path: PathBuf, message: String },
    #[error("overlay video {path}: {message}")]
    Overlay { path: PathBuf, message: String },
    #[error("{observer} failed: {source}")]
    Observer { observer: &'static str, source: Box<dyn std::error::Error + Send + Sync> },
}

/// Sees every finished frame once, in frame order, on the sink's thread.
pub trait Observer: Send {
    fn observe(&mut self, frame: &Segmented) -> Result<(), SinkError>;

    /// The stream ended: finish what is open.
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Whether this observer reads the frame's pixels (`frame.bgr`). When no output does, the
    /// pipeline frees them right after preprocessing, and observers see an empty `bgr` beside the
    /// frame's size and timestamps. Pixels are the bulk of a frame (25 MB at 4K), so keeping
    /// them is asked for: one observer that merely counts frames must not hold every frame's
    /// pixels to the end of the pipeline.
    fn needs_pixels(&self) -> bool {
        false
    }
}

/// The PASCAL VOC colour map: class `i`'s colour is built from the bits of `i`.
pub fn voc_palette() -> [[u8; 3]; 256] {
    let mut palette = [[0u8; 3]; 256];
    for (i, rgb) in palette.iter_mut().enumerate() {
        let mut c = i;
        for j in 0..8 {
            for (channel, value) in rgb.iter_mut().enumerate() {
                *value |= (((c >> channel) & 1) as u8) << (7 - j);
            }
            c >>= 3;
        }
    }
    palette
}

#[derive(Debug, Serialize)]
struct ClassShare<'a> {
    id: u8,
    name: &'a str,
    fraction: f64,
}

#[derive(Debug, Serialize)]
struct Record<'a> {
    seq: u64,
    order: u64,
    pts_ms: Option<f64>,
    width: u32,
    height: u32,
    source: &'a MaskSource,
    classes: Vec<ClassShare<'a>>,
    latency_ms: &'a BTreeMap<&'static str, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<&'a DecisionRecord>,
}

/// Pixel fraction of every class present, largest first.
pub fn class_shares(map: &ClassMap) -> Vec<(u8, f64)> {
    let mut counts = [0u64; 256];
    for &c in &map.classes {
        counts[c as usize] += 1;
    }
    let total = map.classes.len().max(1) as f64;
    let mut shares: Vec<(u8, f64)> = counts.iter().enumerate().filter(|(_, &n)| n > 0).map(|(c, &n)| (c as u8, n as f64 / total)).collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    shares
}

/// Restores frame order. Bounded: if a frame is missing for longer than `window` later frames,
/// the oldest held frames are released anyway (counted), so memory stays bounded and no frame is
/// ever discarded.
#[derive(Debug)]
pub struct ReorderBuffer<T> {
    next: u64,
    held: BTreeMap<u64, T>,
    window: usize,
    pub released_out_of_order: u64,
}

impl<T> ReorderBuffer<T> {
    pub fn new(window: usize) -> Self {
        ReorderBuffer { next: 0, held: BTreeMap::new(), window, released_out_of_order: 0 }
    }

    pub fn push(&mut self, order: u64, item: T, ready: &mut Vec<T>) {
        self.held.insert(order, item);
        while let Some(item) = self.held.remove(&self.next) {
            ready.push(item);
            self.next += 1;
        }
        while self.held.len() > self.window {
            let Some((order, item)) = self.held.pop_first() else { break };
            self.released_out_of_order += 1;
            ready.push(item);
            self.next = order + 1;
            while let Some(item) = self.held.remove(&self.next) {
                ready.push(item);
                self.next += 1;
            }
        }
    }

    /// Everything still held, in order (end of stream).
    pub fn drain(&mut self, ready: &mut Vec<T>) {
        ready.extend(std::mem::take(&mut self.held).into_values());
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub dir: PathBuf,
    pub records: bool,
    pub masks: bool,
    pub overlay: bool,
    pub overlay_alpha: f32,
    pub overlay_encoder: String,
    /// Largest overlay video (width, height): larger frames are scaled down to fit, keeping
    /// their aspect ratio, before blending and encoding.
    pub overlay_max_size: (u32, u32),
    pub class_names: Vec<String>,
    pub reorder_window: usize,
}

/// Paths of what a run wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Written {
    pub records: Option<PathBuf>,
    pub masks: Option<PathBuf>,
    pub overlay: Option<PathBuf>,
}

/// What the sink saw, for the run summary.
#[derive(Debug, Default)]
pub struct SinkReport {
    pub frames_out: u64,
    pub by_source: BTreeMap<&'static str, u64>,
    pub latencies: StageLatencies,
    pub released_out_of_order: u64,
    pub written: Written,
    /// Set when an output failed; the frames before it were written.
    pub error: Option<SinkError>,
    /// When the first and the last frame left, for the steady-state rate (start-up excluded).
    pub first_out: Option<std::time::Instant>,
    pub last_out: Option<std::time::Instant>,
}

impl SinkReport {
    /// Frames per second between the first and the last frame out.
    pub fn steady_fps(&self) -> f64 {
        match (self.first_out, self.last_out) {
            (Some(first), Some(last)) if self.frames_out > 1 && last > first => (self.frames_out - 1) as f64 / (last - first).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// `records.jsonl`: one JSON line per frame, on disk as soon as it is made.
struct RecordsWriter {
    path: PathBuf,
    out: BufWriter<File>,
    class_names: Vec<String>,
}

impl Observer for RecordsWriter {
    fn observe(&mut self, item: &Segmented) -> Result<(), SinkError> {
        let names = &self.class_names;
        let classes = class_shares(&item.class_map)
            .into_iter()
            .map(|(id, fraction)| ClassShare { id, name: names.get(id as usize).map(String::as_str).unwrap_or("?"), fraction })
            .collect();
        let record = Record {
            seq: item.frame.seq,
            order: item.order,
            pts_ms: item.frame.pts.map(|d| d.as_secs_f64() * 1000.0),
            width: item.frame.width,
            height: item.frame.height,
            source: &item.source,
            classes,
            latency_ms: &item.latency_ms,
            decision: item.decision.as_ref(),
        };
        let write_err = |source| SinkError::Write { path: self.path.clone(), source };
        serde_json::to_writer(&mut self.out, &record).map_err(|e| write_err(e.into()))?;
        self.out.write_all(b"\n").map_err(write_err)?;
        // One line per frame reaches the disk as it is made, so a crash loses nothing written.
        self.out.flush().map_err(write_err)
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|source| SinkError::Write { path: self.path.clone(), source })
    }
}

/// `masks/NNNNNN.png`, one per frame, named by its sequence number.
struct MaskWriter {
    dir: PathBuf,
    palette: [[u8; 3]; 256],
}

impl Observer for MaskWriter {
    fn observe(&mut self, item: &Segmented) -> Result<(), SinkError> {
        write_mask_png(&self.dir.join(format!("{:06}.png", item.frame.seq)), &item.class_map, &self.palette)
    }
}

/// `overlay.mp4`, started at the first frame (its size fixes the video's).
struct OverlayOutput {
    path: PathBuf,
    encoder: String,
    alpha: f32,
    max_size: (u32, u32),
    palette: [[u8; 3]; 256],
    writer: Option<OverlayWriter>,
    /// Whether the encoder ever started, i.e. whether the file exists.
    started: bool,
}

impl Observer for OverlayOutput {
    fn observe(&mut self, item: &Segmented) -> Result<(), SinkError> {
        let frame = &item.frame;
        let (width, height) = overlay_size(frame.width, frame.height, self.max_size);
        let writer = match self.writer.as_mut() {
            Some(writer) => writer,
            None => {
                let writer = OverlayWriter::start(&self.path, &self.encoder, width, height)?;
                self.started = true;
                self.writer.insert(writer)
            }
        };
        let mut pixels;
        let scaled_map;
        let map = if (width, height) == (frame.width, frame.height) {
            pixels = frame.bgr.clone();
            &item.class_map
        } else {
            let err = |e: opencv::Error| SinkError::Overlay { path: self.path.clone(), message: format!("scaling the frame down: {e}") };
            pixels = scale_bgr(&frame.bgr, frame.width, frame.height, width, height).map_err(err)?;
            scaled_map = scale_class_map(&item.class_map, width, height).map_err(err)?;
            &scaled_map
        };
        blend_in_place(&mut pixels, map, &self.palette, self.alpha);
        writer.push(pixels, width, height, frame.pts)
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.writer.take().map_or(Ok(()), OverlayWriter::finish)
    }

    fn needs_pixels(&self) -> bool {
        true
    }
}

pub struct Sink {
    records: Option<RecordsWriter>,
    masks: Option<MaskWriter>,
    overlay: Option<OverlayOutput>,
    /// Observers beyond the files, in the order they were added.
    observers: Vec<Box<dyn Observer>>,
    reorder: ReorderBuffer<Segmented>,
    report: SinkReport,
}

fn create_dir(path: &Path) -> Result<(), SinkError> {
    std::fs::create_dir_all(path).map_err(|source| SinkError::Create { path: path.to_path_buf(), source })
}

impl Sink {
    pub fn new(settings: SinkSettings) -> Result<Self, SinkError> {
        create_dir(&settings.dir)?;
        let mut report = SinkReport::default();
        let records = if settings.records {
            let path = settings.dir.join("records.jsonl");
            let file = File::create(&path).map_err(|source| SinkError::Create { path: path.clone(), source })?;
            report.written.records = Some(path.clone());
            Some(RecordsWriter { path, out: BufWriter::new(file), class_names: settings.class_names.clone() })
        } else {
            None
        };
        let masks = if settings.masks {
            let dir = settings.dir.join("masks");
            create_dir(&dir)?;
            report.written.masks = Some(dir.clone());
            Some(MaskWriter { dir, palette: voc_palette() })
        } else {
            None
        };
        let overlay = settings.overlay.then(|| OverlayOutput {
            path: settings.dir.join("overlay.mp4"),
            encoder: settings.overlay_encoder.clone(),
            alpha: settings.overlay_alpha,
            max_size: settings.overlay_max_size,
            palette: voc_palette(),
            writer: None,
            started: false,
        });
        let reorder = ReorderBuffer::new(settings.reorder_window);
        Ok(Sink { records, masks, overlay, observers: Vec::new(), reorder, report })
    }

    /// Shows every frame to `observer` too, after the files.
    pub fn add_observer(&mut self, observer: Box<dyn Observer>) {
        self.observers.push(observer);
    }

    /// Whether any output reads frames' pixels (the overlay, observers that say so); records
    /// and masks need only the class map.
    pub fn needs_pixels(&self) -> bool {
        self.overlay.is_some() || self.observers.iter().any(|o| o.needs_pixels())
    }

    fn outputs(&mut self) -> impl Iterator<Item = &mut dyn Observer> {
        let files = [
            self.records.as_mut().map(|o| o as &mut dyn Observer),
            self.masks.as_mut().map(|o| o as &mut dyn Observer),
            self.overlay.as_mut().map(|o| o as &mut dyn Observer),
        ];
        files.into_iter().flatten().chain(self.observers.iter_mut().map(|o| o.as_mut() as &mut dyn Observer))
    }

    /// Consumes frames until the channel closes, then finishes every output.
    pub fn run(mut self, rx: crossbeam_channel::Receiver<Segmented>) -> SinkReport {
        let mut ready = Vec::new();
        for item in rx {
            self.reorder.push(item.order, item, &mut ready);
            self.write_ready(&mut ready);
        }
        self.reorder.drain(&mut ready);
        self.write_ready(&mut ready);
        self.finish()
    }

    fn write_ready(&mut self, ready: &mut Vec<Segmented>) {
        for item in ready.drain(..) {
            let mut failures = Vec::new();
            for output in self.outputs() {
                if let Err(e) = output.observe(&item) {
                    failures.push(e);
                }
            }
            for e in failures {
                tracing::error!(error = %e, "output failed; the other outputs go on");
                self.report.error.get_or_insert(e);
            }
            self.account(&item);
        }
    }

    fn account(&mut self, item: &Segmented) {
        let now = std::time::Instant::now();
        self.report.first_out.get_or_insert(now);
        self.report.last_out = Some(now);
        self.report.frames_out += 1;
        *self.report.by_source.entry(item.source.label()).or_default() += 1;
        let total_ms = item.frame.captured_at.elapsed().as_secs_f64() * 1000.0;
        self.report.latencies.record("total", total_ms);
        for (stage, ms) in &item.latency_ms {
            self.report.latencies.record(stage, *ms);
        }
    }

    fn finish(mut self) -> SinkReport {
        let mut failures = Vec::new();
        for output in self.outputs() {
            if let Err(e) = output.finish() {
                failures.push(e);
            }
        }
        for e in failures {
            tracing::error!(error = %e, "output could not be finalised");
            self.report.error.get_or_insert(e);
        }
        if self.overlay.as_ref().is_some_and(|o| o.started) {
            self.report.written.overlay = self.overlay.as_ref().map(|o| o.path.clone());
        }
        self.report.released_out_of_order = self.reorder.released_out_of_order;
        self.report
    }
}

/// Colours a class map with the palette, as OpenCV BGR bytes.
pub fn colorize(map: &ClassMap, palette: &[[u8; 3]; 256]) -> Vec<u8> {
    let mut bgr = Vec::with_capacity(map.classes.len() * 3);
    for &c in &map.classes {
        let [r, g, b] = palette[c as usize];
        bgr.extend_from_slice(&[b, g, r]);
    }
    bgr
}

/// Mask colours blended over the frame's BGR pixels; background (class 0) pixels stay unchanged.
pub fn blend_in_place(bgr: &mut [u8], map: &ClassMap, palette: &[[u8; 3]; 256], alpha: f32) {
    let a = (alpha.clamp(0.0, 1.0) * 256.0) as u16;
    for (px, &c) in bgr.chunks_exact_mut(3).zip(&map.classes) {
        if c == 0 {
            continue;
        }
        let [r, g, b] = palette[c as usize];
        for (v, m) in px.iter_mut().zip([b, g, r]) {
            *v = ((*v as u16 * (256 - a) + m as u16 * a) >> 8) as u8;
        }
    }
}

/// The overlay video's size for a `width` x `height` frame: the frame's own, or, when it does not
/// fit in `max`, scaled down to fit with its aspect ratio kept and even sides (4:2:0 encoders
/// need them). An encoder's memory grows with the picture: openh264 holds about 70 MB at
/// 3840x2160 and 21 MB at 1920x1080, on top of the frames queued for it.
pub fn overlay_size(width: u32, height: u32, (max_width, max_height): (u32, u32)) -> (u32, u32) {
    if width <= max_width && height <= max_height {
        return (width, height);
    }
    let scale = (f64::from(max_width) / f64::from(width)).min(f64::from(max_height) / f64::from(height));
    let even = |side: u32| (((f64::from(side) * scale).round() as u32) & !1).max(2);
    (even(width), even(height))
}

/// Area averaging (no aliasing when shrinking a 4K frame several times).
fn scale_bgr(bgr: &[u8], width: u32, height: u32, to_width: u32, to_height: u32) -> opencv::Result<Vec<u8>> {
    let src = Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(height as i32, width as i32, bgr)?;
    let mut dst = Mat::default();
    let size = opencv::core::Size::new(to_width as i32, to_height as i32);
    opencv::imgproc::resize(&src, &mut dst, size, 0.0, 0.0, opencv::imgproc::INTER_AREA)?;
    Ok(dst.data_bytes()?.to_vec())
}

/// Nearest neighbour with pixel centres aligned, so no class is blended into one that is not there.
fn scale_class_map(map: &ClassMap, to_width: u32, to_height: u32) -> opencv::Result<ClassMap> {
    let src = Mat::new_rows_cols_with_bytes::<u8>(map.height as i32, map.width as i32, &map.classes)?;
    let mut dst = Mat::default();
    let size = opencv::core::Size::new(to_width as i32, to_height as i32);
    opencv::imgproc::resize(&src, &mut dst, size, 0.0, 0.0, opencv::imgproc::INTER_NEAREST_EXACT)?;
    Ok(ClassMap { width: to_width, height: to_height, classes: dst.data_bytes()?.to_vec() })
}

pub fn write_mask_png(path: &Path, map: &ClassMap, palette: &[[u8; 3]; 256]) -> Result<(), SinkError> {
    let mask_err = |e: opencv::Error| SinkError::Mask { path: path.to_path_buf(), message: e.to_string() };
    let bgr = colorize(map, palette);
    let mat = Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(map.height as i32, map.width as i32, &bgr).map_err(mask_err)?;
    let ok = opencv::imgcodecs::imwrite(path, &mat, &Vector::new()).map_err(mask_err)?;
    if !ok {
        return Err(SinkError::Mask { path: path.to_path_buf(), message: "OpenCV refused to write the PNG".into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voc_palette_matches_reference_colours() {
        let p = voc_palette();
        assert_eq!(p[0], [0, 0, 0]);
        assert_eq!(p[1], [128, 0, 0]);
        assert_eq!(p[15], [192, 128, 128]); // person
        assert_eq!(p[255], [224, 224, 192]); // VOC's "void" boundary colour
    }

    #[test]
    fn reorder_buffer_restores_order() {
        let mut r = ReorderBuffer::new(8);
        let mut out = Vec::new();
        for o in [2u64, 0, 1, 4, 3] {
            r.push(o, o, &mut out);
        }
        assert_eq!(out, vec![0, 1, 2, 3, 4]);
        assert!(r.is_empty());
    }

    #[test]
    fn reorder_buffer_is_bounded_and_loses_nothing() {
        let mut r = ReorderBuffer::new(2);
        let mut out = Vec::new();
        for o in [1u64, 2, 3, 0, 4] {
            r.push(o, o, &mut out);
        }
        r.drain(&mut out);
        let mut sorted = out.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
        assert_eq!(r.released_out_of_order, 1);
        assert_eq!(&out[..3], &[1, 2, 3]);
    }

    #[test]
    fn class_shares_sum_to_one_largest_first() {
        let map = ClassMap { width: 4, height: 1, classes: vec![0, 15, 15, 15] };
        assert_eq!(class_shares(&map), vec![(15, 0.75), (0, 0.25)]);
    }

    #[test]
    fn overlay_fits_in_the_largest_size_keeping_the_aspect_ratio_with_even_sides() {
        assert_eq!(overlay_size(640, 480, (1280, 720)), (640, 480), "a frame that fits keeps its size");
        assert_eq!(overlay_size(3840, 2160, (1280, 720)), (1280, 720));
        assert_eq!(overlay_size(3840, 2160, (1920, 1920)), (1920, 1080));
        assert_eq!(overlay_size(1000, 3000, (1280, 720)), (240, 720), "portrait: the height limits");
        assert_eq!(overlay_size(1001, 999, (500, 500)), (500, 498), "rounded down to even sides");
    }

    #[test]
    fn scaled_class_maps_hold_only_classes_that_were_there() {
        // 4x2 map of two classes in blocks, halved: nearest picks, never a blend of 0 and 15.
        let map = ClassMap { width: 4, height: 2, classes: vec![0, 0, 15, 15, 0, 0, 15, 15] };
        let half = scale_class_map(&map, 2, 1).unwrap();
        assert_eq!((half.width, half.height, half.classes), (2, 1, vec![0, 15]));
        let bgr = scale_bgr(&[10; 4 * 2 * 3], 4, 2, 2, 1).unwrap();
        assert_eq!(bgr, vec![10; 2 * 3]);
    }

    #[test]
    fn blend_keeps_background_and_tints_classes() {
        let map = ClassMap { width: 2, height: 1, classes: vec![0, 1] };
        let mut out = [10, 20, 30, 0, 0, 0];
        blend_in_place(&mut out, &map, &voc_palette(), 0.5);
        assert_eq!(&out[..3], &[10, 20, 30]);
        assert_eq!(&out[3..], &[0, 0, 64]); // class 1 is red (128,0,0) → BGR, half strength
    }
}
