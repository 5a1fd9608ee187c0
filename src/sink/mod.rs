//! Outputs: per-frame JSON Lines records, colour-coded mask PNGs, and an overlay video.
//!
//! Segmented frames can arrive out of order (remote answers overtake local ones), so the sink
//! first restores frame order with a bounded reorder buffer, then writes. Each output is flushed
//! as it goes, so a run that ends in an error keeps everything written up to that point.

mod overlay;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use opencv::core::{Mat, Vector};
use serde::Serialize;

use crate::infer::ClassMap;
use crate::ingest::Frame;
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

/// Where a frame's mask came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MaskSource {
    Local,
    Remote {
        worker: String,
        batch_size: u16,
        worker_queue_ms: f64,
        worker_inference_ms: f64,
    },
    /// Sent to the remote path but answered by the small network because of `reason`.
    Fallback {
        reason: String,
    },
}

impl MaskSource {
    pub fn label(&self) -> &'static str {
        match self {
            MaskSource::Local => "local",
            MaskSource::Remote { .. } => "remote",
            MaskSource::Fallback { .. } => "fallback",
        }
    }
}

/// A finished frame on its way out of the pipeline.
#[derive(Debug)]
pub struct Segmented {
    /// Position after ingest (contiguous: dropped frames never get one), used for reordering.
    pub order: u64,
    pub frame: Frame,
    pub class_map: ClassMap,
    pub source: MaskSource,
    /// Milliseconds spent per stage, by stage name.
    pub latency_ms: BTreeMap<&'static str, f64>,
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
    pub latencies: crate::metrics::StageLatencies,
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

pub struct Sink {
    settings: SinkSettings,
    palette: [[u8; 3]; 256],
    records: Option<(PathBuf, BufWriter<File>)>,
    masks_dir: Option<PathBuf>,
    overlay: Option<OverlayWriter>,
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
            Some((path, BufWriter::new(file)))
        } else {
            None
        };
        let masks_dir = if settings.masks {
            let dir = settings.dir.join("masks");
            create_dir(&dir)?;
            report.written.masks = Some(dir.clone());
            Some(dir)
        } else {
            None
        };
        let reorder = ReorderBuffer::new(settings.reorder_window);
        Ok(Sink { settings, palette: voc_palette(), records, masks_dir, overlay: None, reorder, report })
    }

    /// Consumes frames until the channel closes, then finishes every output. An output error
    /// stops only that output's writes: the records of every frame still go out.
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
            if let Err(e) = self.write(&item) {
                tracing::error!(error = %e, "output failed; later frames skip this output");
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

    fn write(&mut self, item: &Segmented) -> Result<(), SinkError> {
        if let Some((path, out)) = self.records.as_mut() {
            let names = &self.settings.class_names;
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
            };
            let write_err = |source| SinkError::Write { path: path.clone(), source };
            serde_json::to_writer(&mut *out, &record).map_err(|e| write_err(e.into()))?;
            out.write_all(b"\n").map_err(write_err)?;
            // One line per frame reaches the disk as it is made, so a crash loses nothing written.
            out.flush().map_err(write_err)?;
        }
        if let Some(dir) = &self.masks_dir {
            let path = dir.join(format!("{:06}.png", item.frame.seq));
            write_mask_png(&path, &item.class_map, &self.palette)?;
        }
        if self.settings.overlay {
            self.write_overlay(item)?;
        }
        Ok(())
    }

    fn write_overlay(&mut self, item: &Segmented) -> Result<(), SinkError> {
        if self.overlay.is_none() {
            let path = self.settings.dir.join("overlay.mp4");
            let writer = OverlayWriter::start(&path, &self.settings.overlay_encoder, item.frame.width, item.frame.height)?;
            self.report.written.overlay = Some(path);
            self.overlay = Some(writer);
        }
        let Some(writer) = self.overlay.as_mut() else { return Ok(()) };
        let blended = blend(&item.frame.bgr, &item.class_map, &self.palette, self.settings.overlay_alpha);
        writer.push(blended, item.frame.width, item.frame.height, item.frame.pts)
    }

    fn finish(mut self) -> SinkReport {
        if let Some(writer) = self.overlay.take() {
            if let Err(e) = writer.finish() {
                tracing::error!(error = %e, "overlay video could not be finalised");
                self.report.error.get_or_insert(e);
            }
        }
        if let Some((path, mut out)) = self.records.take() {
            if let Err(source) = out.flush() {
                self.report.error.get_or_insert(SinkError::Write { path, source });
            }
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

/// Mask colours blended over the frame; background (class 0) pixels keep the frame unchanged.
pub fn blend(frame_bgr: &[u8], map: &ClassMap, palette: &[[u8; 3]; 256], alpha: f32) -> Vec<u8> {
    let a = (alpha.clamp(0.0, 1.0) * 256.0) as u16;
    let mut out = frame_bgr.to_vec();
    for (px, &c) in out.chunks_exact_mut(3).zip(&map.classes) {
        if c == 0 {
            continue;
        }
        let [r, g, b] = palette[c as usize];
        for (v, m) in px.iter_mut().zip([b, g, r]) {
            *v = ((*v as u16 * (256 - a) + m as u16 * a) >> 8) as u8;
        }
    }
    out
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
    fn blend_keeps_background_and_tints_classes() {
        let map = ClassMap { width: 2, height: 1, classes: vec![0, 1] };
        let out = blend(&[10, 20, 30, 0, 0, 0], &map, &voc_palette(), 0.5);
        assert_eq!(&out[..3], &[10, 20, 30]);
        assert_eq!(&out[3..], &[0, 0, 64]); // class 1 is red (128,0,0) → BGR, half strength
    }
}
