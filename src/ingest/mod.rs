//! Ingest: a GStreamer pipeline description ending in `appsink` produces BGR frames.
//!
//! Frames enter from any GStreamer source (file replay, V4L2 camera, RTSP, test source) and leave
//! on a bounded crossbeam channel. The back-pressure policy depends on the source: a recorded
//! file waits for the pipeline (nothing is ever dropped), a live source must never be slowed down
//! by a slow consumer, so the oldest queued frame is dropped and counted instead.
//!
//! The ingest thread sleeps until something happens: the appsink and the bus wake it when a
//! frame, the end of the stream or an error arrives, and a [`Shutdown`] request wakes it to stop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender, TrySendError};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use crate::config::Liveness;
pub use crate::frame::Frame;
use crate::gst_support::pop_message;
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read pipeline file {path}: {source}")]
    ReadPipeline { path: PathBuf, source: std::io::Error },
    #[error("pipeline {origin} uses ${{{name}}} but no value was given (set ingest.params.{name} or --set ingest.params.{name}=...)")]
    MissingParam { origin: String, name: String },
    #[error("pipeline {origin} does not parse: {message}")]
    Parse { origin: String, message: String },
    #[error("pipeline {origin} has no appsink: end the description with `videoconvert ! appsink name=sink`")]
    NoAppsink { origin: String },
    #[error("GStreamer could not be initialised: {0}")]
    Init(String),
    #[error("pipeline {origin} failed in element {element}: {message}{hint}")]
    Element { origin: String, element: String, message: String, debug: Option<String>, hint: String },
    #[error("pipeline {origin} could not start: {message}")]
    Start { origin: String, message: String },
    #[error("pipeline {origin} delivered a sample without usable video caps (expected raw BGR video): {message}")]
    Caps { origin: String, message: String },
}

/// A pipeline description with its `${name}` parameters substituted.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// Where the description came from, for error messages.
    pub origin: String,
    pub description: String,
}

impl PipelineSpec {
    pub fn from_file(path: &Path, params: &BTreeMap<String, String>) -> Result<Self, IngestError> {
        let text = std::fs::read_to_string(path).map_err(|source| IngestError::ReadPipeline { path: path.to_path_buf(), source })?;
        Self::from_text(&path.display().to_string(), &text, params)
    }

    /// Lines starting with `#` are comments so pipeline files can document their parameters.
    pub fn from_text(origin: &str, text: &str, params: &BTreeMap<String, String>) -> Result<Self, IngestError> {
        let body: String = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join(" ");
        let mut description = String::with_capacity(body.len());
        let mut rest = body.as_str();
        while let Some(start) = rest.find("${") {
            description.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| IngestError::Parse { origin: origin.to_string(), message: "unterminated ${ parameter".to_string() })?;
            let name = &after[..end];
            let value = params.get(name).ok_or_else(|| IngestError::MissingParam { origin: origin.to_string(), name: name.to_string() })?;
            description.push_str(value);
            rest = &after[end + 1..];
        }
        description.push_str(rest);
        Ok(PipelineSpec { origin: origin.to_string(), description: description.trim().to_string() })
    }
}

/// Counters shared with the rest of the pipeline (summary, control unit).
#[derive(Debug, Default)]
pub struct IngestStats {
    pub frames_in: AtomicU64,
    pub dropped: AtomicU64,
    pub live: AtomicBool,
}

/// A started GStreamer pipeline whose frames are pulled by [`Source::run`].
pub struct Source {
    spec: PipelineSpec,
    pipeline: gst::Pipeline,
    appsink: gst_app::AppSink,
    live: bool,
    /// Ready when the appsink holds a new sample or reached the end, or the bus got an error.
    wake: Receiver<()>,
}

/// A channel the appsink and the bus nudge from GStreamer's threads. One pending nudge is
/// enough: the ingest thread takes everything there is each time it wakes.
fn wake_on_news(pipeline: &gst::Pipeline, appsink: &gst_app::AppSink) -> Receiver<()> {
    let (nudge, wake) = crossbeam_channel::bounded(1);
    let (on_sample, on_eos) = (nudge.clone(), nudge.clone());
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            // The sample stays queued in the appsink (its queue and drop policy apply as before);
            // the ingest thread pulls it.
            .new_sample(move |_| {
                let _ = on_sample.try_send(());
                Ok(gst::FlowSuccess::Ok)
            })
            .eos(move |_| {
                let _ = on_eos.try_send(());
            })
            .build(),
    );
    if let Some(bus) = pipeline.bus() {
        bus.set_sync_handler(move |_, message| {
            if message.type_() == gst::MessageType::Error {
                let _ = nudge.try_send(());
            }
            gst::BusSyncReply::Pass
        });
    }
    wake
}

impl Source {
    /// Parses and starts the pipeline; a live source is detected from GStreamer's state change
    /// (live sources do not preroll) unless the configuration says otherwise.
    pub fn start(spec: PipelineSpec, liveness: Liveness) -> Result<Self, IngestError> {
        crate::gst_support::init().map_err(|e| IngestError::Init(e.to_string()))?;
        let element = gst::parse::launch(&spec.description)
            .map_err(|e| IngestError::Parse { origin: spec.origin.clone(), message: e.to_string() })?;
        let pipeline = match element.downcast::<gst::Pipeline>() {
            Ok(p) => p,
            Err(single) => {
                let p = gst::Pipeline::new();
                p.add(&single).map_err(|e| IngestError::Parse { origin: spec.origin.clone(), message: e.to_string() })?;
                p
            }
        };
        let appsink = find_appsink(&pipeline).ok_or_else(|| IngestError::NoAppsink { origin: spec.origin.clone() })?;
        appsink.set_caps(Some(&gst::Caps::builder("video/x-raw").field("format", "BGR").build()));
        appsink.set_property("sync", false);
        appsink.set_max_buffers(2);
        let wake = wake_on_news(&pipeline, &appsink);

        // As gst-launch does: PAUSED first, where a live source answers NO_PREROLL (that is how
        // GStreamer says "live") and anything else prerolls its first frame or fails; PLAYING
        // only after that, so a failing source is never raced by the second state change.
        let paused = pipeline.set_state(gst::State::Paused);
        let prerolled = match paused {
            Ok(gst::StateChangeSuccess::Async) => pipeline.state(gst::ClockTime::from_seconds(10)).0,
            other => other,
        };
        let playing = prerolled.and_then(|_| pipeline.set_state(gst::State::Playing));
        if playing.is_err() {
            let err = bus_error(&pipeline, &spec.origin, Duration::from_secs(2)).unwrap_or_else(|| IngestError::Start {
                origin: spec.origin.clone(),
                message: "state change to PLAYING failed".to_string(),
            });
            let _ = pipeline.set_state(gst::State::Null);
            return Err(err);
        }
        let live = matches!(paused, Ok(gst::StateChangeSuccess::NoPreroll));
        let live = match liveness {
            Liveness::Auto => live,
            Liveness::Live => true,
            Liveness::Replay => false,
        };
        // A live source must never wait on us: let the appsink discard too if we ever fall behind.
        appsink.set_drop(live);
        Ok(Source { spec, pipeline, appsink, live, wake })
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Pulls frames until end of stream, an error, or a shutdown request. Live sources drop
    /// the oldest queued frame when `tx` is full (it holds `rx_for_drop`, a receiver of the same
    /// channel, to do so); replayed files block.
    pub fn run(self, tx: Sender<Frame>, rx_for_drop: Receiver<Frame>, stats: &IngestStats, shutdown: &Shutdown) -> Result<(), IngestError> {
        stats.live.store(self.live, Ordering::Relaxed);
        // Replay never drops, and holding a receiver would hide a consumer that went away.
        let rx_for_drop = self.live.then_some(rx_for_drop);
        let result = self.pull_loop(&tx, rx_for_drop.as_ref(), stats, shutdown);
        let _ = self.pipeline.set_state(gst::State::Null);
        result
    }

    fn pull_loop(
        &self,
        tx: &Sender<Frame>,
        rx_for_drop: Option<&Receiver<Frame>>,
        stats: &IngestStats,
        shutdown: &Shutdown,
    ) -> Result<(), IngestError> {
        let mut seq = 0u64;
        let mut failed: Option<IngestError> = None;
        loop {
            if shutdown.is_requested() {
                tracing::info!(origin = %self.spec.origin, "stop requested, ingest ends");
                return Ok(());
            }
            if failed.is_none() {
                failed = bus_error(&self.pipeline, &self.spec.origin, Duration::ZERO);
            }
            if let Some(err) = failed.take() {
                // Frames decoded before the error are still delivered; then the error ends the run.
                match self.appsink.try_pull_sample(gst::ClockTime::ZERO) {
                    Some(sample) => {
                        if !self.deliver(&sample, &mut seq, tx, rx_for_drop, stats, shutdown)? {
                            return Err(err);
                        }
                        failed = Some(err);
                        continue;
                    }
                    None => return Err(err),
                }
            }
            match self.appsink.try_pull_sample(gst::ClockTime::ZERO) {
                Some(sample) => {
                    if !self.deliver(&sample, &mut seq, tx, rx_for_drop, stats, shutdown)? {
                        return Ok(());
                    }
                    continue;
                }
                None if self.appsink.is_eos() => {
                    // An error can race with EOS; an error wins so a corrupt file is not reported as complete.
                    return match bus_error(&self.pipeline, &self.spec.origin, Duration::from_millis(50)) {
                        Some(err) => Err(err),
                        None => Ok(()),
                    };
                }
                None => {}
            }
            // Nothing to do until GStreamer has news or someone asks us to stop.
            select! {
                recv(self.wake) -> _ => {}
                recv(shutdown.requested()) -> _ => {}
            }
        }
    }

    /// Sends one frame on; `false` when the consumer is gone or a stop was requested.
    fn deliver(
        &self,
        sample: &gst::Sample,
        seq: &mut u64,
        tx: &Sender<Frame>,
        rx_for_drop: Option<&Receiver<Frame>>,
        stats: &IngestStats,
        shutdown: &Shutdown,
    ) -> Result<bool, IngestError> {
        let frame = frame_from_sample(sample, *seq, &self.spec.origin)?;
        *seq += 1;
        stats.frames_in.fetch_add(1, Ordering::Relaxed);
        if let Some(rx_for_drop) = rx_for_drop {
            let mut pending = frame;
            loop {
                match tx.try_send(pending) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) => {
                        if rx_for_drop.try_recv().is_ok() {
                            stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        pending = back;
                    }
                    Err(TrySendError::Disconnected(_)) => return Ok(false),
                }
            }
        } else {
            // Block (replay loses nothing), unless a stop is requested meanwhile (a failed stage).
            select! {
                send(tx, frame) -> sent => return Ok(sent.is_ok()),
                recv(shutdown.requested()) -> _ => return Ok(false),
            }
        }
        Ok(true)
    }
}

fn find_appsink(pipeline: &gst::Pipeline) -> Option<gst_app::AppSink> {
    if let Some(e) = pipeline.by_name("sink") {
        if let Ok(s) = e.downcast::<gst_app::AppSink>() {
            return Some(s);
        }
    }
    pipeline.iterate_recurse().into_iter().flatten().find_map(|e| e.downcast::<gst_app::AppSink>().ok())
}

/// Takes the first error message off the bus, if any arrives within `wait`.
fn bus_error(pipeline: &gst::Pipeline, origin: &str, wait: Duration) -> Option<IngestError> {
    let msg = pop_message(&pipeline.bus()?, &[gst::MessageType::Error], wait)?;
    let gst::MessageView::Error(err) = msg.view() else { return None };
    let element = err.src().map(|s| s.name().to_string()).unwrap_or_else(|| "(unknown)".to_string());
    let message = err.error().to_string();
    let debug = err.debug().map(|d| d.to_string());
    let hint = hint_for(&element, &message, debug.as_deref());
    Some(IngestError::Element { origin: origin.to_string(), element, message, debug, hint })
}

/// Turns the commonest GStreamer failures into an instruction for the operator.
fn hint_for(element: &str, message: &str, debug: Option<&str>) -> String {
    let text = format!("{message} {}", debug.unwrap_or_default()).to_lowercase();
    let hint = if text.contains("not-negotiated") || text.contains("not negotiated") {
        "the source's format could not be converted to BGR: put `videoconvert !` before the appsink"
    } else if element.starts_with("filesrc") || text.contains("could not open") || text.contains("resource not found") {
        "check that the video file exists and is readable (ingest.params.location)"
    } else if text.contains("demux") || text.contains("decode") || text.contains("stream") || text.contains("type") {
        "the file looks corrupt, truncated or not a video: re-record or re-copy it"
    } else if element.starts_with("v4l2") {
        "check that the camera is connected and the service user is in the `video` group"
    } else {
        return String::new();
    };
    format!(" ({hint})")
}

fn frame_from_sample(sample: &gst::Sample, seq: u64, origin: &str) -> Result<Frame, IngestError> {
    let caps_err = |message: String| IngestError::Caps { origin: origin.to_string(), message };
    let caps = sample.caps().ok_or_else(|| caps_err("sample has no caps".to_string()))?;
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| caps_err(e.to_string()))?;
    if info.format() != gst_video::VideoFormat::Bgr {
        return Err(caps_err(format!("format is {:?}", info.format())));
    }
    let buffer = sample.buffer().ok_or_else(|| caps_err("sample has no buffer".to_string()))?;
    let map = buffer.map_readable().map_err(|e| caps_err(e.to_string()))?;
    let (width, height) = (info.width() as usize, info.height() as usize);
    let stride = info.stride()[0] as usize;
    let row = width * 3;
    if stride < row || map.len() < stride * (height.saturating_sub(1)) + row {
        return Err(caps_err(format!("buffer of {} bytes is too small for {width}x{height} with stride {stride}", map.len())));
    }
    let mut bgr = Vec::with_capacity(row * height);
    for y in 0..height {
        bgr.extend_from_slice(&map[y * stride..y * stride + row]);
    }
    Ok(Frame {
        seq,
        pts: buffer.pts().map(|t| Duration::from_nanos(t.nseconds())),
        width: width as u32,
        height: height as u32,
        bgr,
        captured_at: Instant::now(),
    })
}

/// Starts the pipeline on its own thread and returns the frame channel's receiver.
pub struct IngestHandle {
    pub frames: Receiver<Frame>,
    pub stats: Arc<IngestStats>,
    pub live: bool,
    pub thread: std::thread::JoinHandle<Result<(), IngestError>>,
}

pub fn spawn(spec: PipelineSpec, liveness: Liveness, capacity: usize, shutdown: Shutdown) -> Result<IngestHandle, IngestError> {
    let source = Source::start(spec, liveness)?;
    let live = source.is_live();
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let stats = Arc::new(IngestStats::default());
    let thread_stats = stats.clone();
    let rx_for_drop = rx.clone();
    let thread = std::thread::Builder::new()
        .name("ingest".into())
        .spawn(move || source.run(tx, rx_for_drop, &thread_stats, &shutdown))
        .expect("spawning the ingest thread");
    Ok(IngestHandle { frames: rx, stats, live, thread })
}

/// Reads up to `limit` frames of a replayed source into memory (benchmarks run the same frames
/// twice; evaluation compares them with labels).
pub fn collect_frames(spec: PipelineSpec, limit: usize) -> Result<Vec<Frame>, IngestError> {
    let shutdown = Shutdown::new();
    let ingest = spawn(spec, Liveness::Replay, 4, shutdown.clone())?;
    let frames: Vec<Frame> = ingest.frames.iter().take(limit).collect();
    shutdown.request();
    drop(ingest.frames);
    ingest.thread.join().unwrap_or(Ok(()))?;
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_substituted_and_comments_dropped() {
        let params = BTreeMap::from([("location".to_string(), "/v.mp4".to_string())]);
        let spec = PipelineSpec::from_text("t", "# replay\nfilesrc location=\"${location}\" ! decodebin\n ! appsink", &params).unwrap();
        assert_eq!(spec.description, "filesrc location=\"/v.mp4\" ! decodebin  ! appsink");
    }

    #[test]
    fn missing_parameter_is_named() {
        let err = PipelineSpec::from_text("t", "uridecodebin uri=${uri} ! appsink", &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("${uri}"), "{err}");
        assert!(err.to_string().contains("ingest.params.uri"), "{err}");
    }
}
