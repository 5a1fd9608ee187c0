//! Ingest: a GStreamer pipeline description ending in `appsink` produces BGR frames.
//!
//! Frames enter from any GStreamer source (file replay, V4L2 camera, RTSP, test source) and leave
//! on a bounded crossbeam channel. The back-pressure policy depends on the source: a recorded
//! file waits for the pipeline (nothing is ever dropped), a live source must never be slowed down
//! by a slow consumer, so the oldest queued frame is dropped and counted instead.
//!
//! Memory: a frame is made only once the pipeline's [`FrameBudget`] has room for it (a replay
//! waits; a live source drops instead, the oldest queued frame first). Frames are made on the
//! streaming thread that decoded them, in the appsink's callback, so no decoded frame waits in
//! a queue in between; the appsink takes raw video in whatever format the source gives (decoders
//! give I420, half the bytes of BGR) and it is converted to BGR straight into the frame, so no
//! BGR copy waits inside GStreamer either; decoders hand over their own padded buffers (video
//! meta) and run with few threads, each of which holds frames of its own.
//!
//! The ingest thread only waits for the end: the appsink and the bus wake it when the stream
//! ends or fails, and a [`Shutdown`] request wakes it to stop.

mod budget;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
pub use budget::FrameBudget;

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
    #[error("pipeline {origin} made no first frame within {seconds} s: {why}")]
    NoFirstFrame { origin: String, seconds: u64, why: String },
    #[error("pipeline {origin} delivered a sample without usable video caps (expected raw video in system memory): {message}")]
    Caps { origin: String, message: String },
    #[error(
        "pipeline {origin} delivered {format} video that cannot be converted to BGR: {message} (put `videoconvert !` before the appsink)"
    )]
    Convert { origin: String, format: String, message: String },
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

/// How the ingest runs a source: what the configuration says about it and about frame memory.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub liveness: Liveness,
    /// Frames waiting for the next stage at most.
    pub capacity: usize,
    /// Threads of each software decoder in the pipeline (`max-threads` of the libav decoders);
    /// 0 leaves the decoder's own choice. Every decoder thread holds frames of its own.
    pub decoder_threads: u32,
    /// Frames taken before the source ends as at end of stream (a replay's first frames, a
    /// camera's first minute); 0: no limit. Counted here rather than by an element in the
    /// pipeline: `identity eos-after` stops only where every element upstream obeys the one
    /// end-of-stream it returns, and a threaded decoder sometimes does not.
    pub max_frames: u64,
    /// How long a source that prerolls (a recording, not a camera) may take to produce its
    /// first frame. Past it the run fails instead of waiting for ever: `decodebin` drops the
    /// error of a demuxer that fails while it is still being plugged in (a truncated file, on a
    /// loaded machine), and nothing else would ever end the run.
    pub first_frame_timeout: Duration,
    pub budget: FrameBudget,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            liveness: Liveness::Auto,
            capacity: 4,
            decoder_threads: 1,
            max_frames: 0,
            first_frame_timeout: Duration::from_secs(20),
            budget: FrameBudget::unlimited(),
        }
    }
}

/// A started GStreamer pipeline. Frames are made on GStreamer's streaming thread, in the
/// appsink's new-sample callback ([`Delivery`]); [`Source::run`] waits for the end.
pub struct Source {
    spec: PipelineSpec,
    pipeline: gst::Pipeline,
    appsink: gst_app::AppSink,
    live: bool,
    /// Ready when the stream ended, the bus got an error, or the delivery stopped.
    wake: Receiver<()>,
    delivery: Arc<DeliveryOutcome>,
}

/// What the delivery tells the ingest thread.
#[derive(Default)]
struct DeliveryOutcome {
    /// A frame could not be made; the run ends with it.
    failure: Mutex<Option<IngestError>>,
    /// The consumer is gone or a stop was requested: no more frames are taken.
    stopped: AtomicBool,
}

/// Turns each sample into a frame, on the streaming thread that produced it, as soon as the
/// frame budget has room, and sends it on. Doing it there, instead of on a thread pulling from
/// the appsink's queue, keeps no decoded frame waiting in between (at 4K, 12 MB each).
struct Delivery {
    origin: String,
    tx: Sender<Frame>,
    /// A receiver of the same channel, to drop the oldest queued frame of a live source.
    queued: Receiver<Frame>,
    stats: Arc<IngestStats>,
    budget: FrameBudget,
    shutdown: Shutdown,
    seq: u64,
    max_frames: u64,
    /// Made for the caps of the first sample, remade when they change.
    to_bgr: Option<ToBgr>,
    outcome: Arc<DeliveryOutcome>,
    nudge: Sender<()>,
}

/// Where frames go: the channel to the next stage, and what the source shares with the run.
pub struct FrameOutlet {
    pub tx: Sender<Frame>,
    pub queued: Receiver<Frame>,
    pub stats: Arc<IngestStats>,
    pub shutdown: Shutdown,
}

/// Tells upstream that the appsink reads frames through their video meta (plane offsets and
/// strides), so a decoder hands over its own padded buffers instead of copying each frame into
/// a second pool of unpadded ones.
fn accept_video_meta(appsink: &gst_app::AppSink) {
    let Some(pad) = appsink.static_pad("sink") else { return };
    pad.add_probe(gst::PadProbeType::QUERY_DOWNSTREAM | gst::PadProbeType::PUSH, |_, info| {
        let Some(query) = info.query_mut() else { return gst::PadProbeReturn::Ok };
        match query.view_mut() {
            gst::QueryViewMut::Allocation(allocation) => {
                allocation.add_allocation_meta::<gst_video::VideoMeta>(None);
                gst::PadProbeReturn::Handled
            }
            _ => gst::PadProbeReturn::Ok,
        }
    });
}

/// Caps the threads of the software decoders, those written in the description and those that
/// `decodebin` plugs in later. A decoder thread works on a frame of its own (at 4K, 12 MB each,
/// plus the references it keeps), and on a small device the other stages need the cores anyway.
fn limit_decoder_threads(pipeline: &gst::Pipeline, threads: u32) {
    if threads == 0 {
        return;
    }
    let threads = i32::try_from(threads).unwrap_or(i32::MAX);
    let limit = move |element: &gst::Element| {
        let is_decoder = element.factory().is_some_and(|f| f.has_type(gst::ElementFactoryType::DECODER));
        if is_decoder && element.find_property("max-threads").is_some_and(|p| p.value_type() == i32::static_type()) {
            element.set_property("max-threads", threads);
        }
    };
    for element in pipeline.iterate_recurse().into_iter().flatten() {
        limit(&element);
    }
    pipeline.connect_deep_element_added(move |_, _, element| limit(element));
}

impl Source {
    /// Parses and starts the pipeline; a live source is detected from GStreamer's state change
    /// (live sources do not preroll) unless the configuration says otherwise. Frames start
    /// flowing into `outlet` at once.
    pub fn start(spec: PipelineSpec, options: &IngestOptions, outlet: FrameOutlet) -> Result<Self, IngestError> {
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
        // Any raw format in system memory: converting to BGR here, into the frame itself, keeps
        // no BGR copy waiting in GStreamer (decoders give I420, half the bytes).
        appsink.set_caps(Some(&gst::Caps::builder("video/x-raw").build()));
        appsink.set_property("sync", false);
        appsink.set_max_buffers(1);
        accept_video_meta(&appsink);
        limit_decoder_threads(&pipeline, options.decoder_threads);

        let (nudge, wake) = crossbeam_channel::bounded(1);
        let delivery = Arc::new(DeliveryOutcome::default());
        let mut deliver = Delivery {
            origin: spec.origin.clone(),
            tx: outlet.tx,
            queued: outlet.queued,
            stats: outlet.stats,
            budget: options.budget.clone(),
            shutdown: outlet.shutdown.clone(),
            seq: 0,
            max_frames: options.max_frames,
            to_bgr: None,
            outcome: delivery.clone(),
            nudge: nudge.clone(),
        };
        let stats = deliver.stats.clone();
        let on_eos = nudge.clone();
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |appsink| deliver.take(appsink))
                .eos(move |_| {
                    let _ = on_eos.try_send(());
                })
                .build(),
        );
        let source_threads = Arc::new(crate::priority::SourceThreads::default());
        if let Some(bus) = pipeline.bus() {
            let source_threads = source_threads.clone();
            bus.set_sync_handler(move |_, message| {
                if message.type_() == gst::MessageType::Error {
                    let _ = nudge.try_send(());
                }
                if crate::gst_support::streaming_thread_entered(message) {
                    source_threads.entered();
                }
                gst::BusSyncReply::Pass
            });
        }

        // As gst-launch does: PAUSED first, where a live source answers NO_PREROLL (that is how
        // GStreamer says "live") and anything else prerolls its first frame or fails; PLAYING
        // only after that, so a failing source is never raced by the second state change.
        let paused = pipeline.set_state(gst::State::Paused);
        let live = match options.liveness {
            Liveness::Auto => matches!(paused, Ok(gst::StateChangeSuccess::NoPreroll)),
            Liveness::Live => true,
            Liveness::Replay => false,
        };
        // Before PLAYING: the first frame must already see the right drop policy. A live source
        // must never wait on us: the appsink discards too if we ever fall behind.
        stats.live.store(live, Ordering::Relaxed);
        appsink.set_drop(live);
        source_threads.decide(live);
        let prerolled = match paused {
            Ok(gst::StateChangeSuccess::Async) => wait_for_preroll(&pipeline, options.first_frame_timeout, &outlet.shutdown),
            other => other,
        };
        let source = Source { spec, pipeline, appsink, live, wake, delivery };
        // A stop asked for meanwhile is no failure: the run ends as soon as it starts.
        if prerolled == Ok(gst::StateChangeSuccess::Async) && !outlet.shutdown.is_requested() {
            let err = bus_error(&source.pipeline, &source.spec.origin, Duration::ZERO).unwrap_or_else(|| IngestError::NoFirstFrame {
                origin: source.spec.origin.clone(),
                seconds: options.first_frame_timeout.as_secs(),
                why: no_first_frame_reason(&source.pipeline),
            });
            source.stop();
            return Err(err);
        }
        let playing = prerolled.and_then(|_| source.pipeline.set_state(gst::State::Playing));
        if playing.is_err() {
            let err = bus_error(&source.pipeline, &source.spec.origin, Duration::from_secs(2)).unwrap_or_else(|| IngestError::Start {
                origin: source.spec.origin.clone(),
                message: "state change to PLAYING failed".to_string(),
            });
            source.stop();
            return Err(err);
        }
        Ok(source)
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Waits until end of stream, an error, or a shutdown request. Frames made before an error
    /// were already sent on; the error then ends the run.
    pub fn run(self, shutdown: &Shutdown) -> Result<(), IngestError> {
        let result = loop {
            if shutdown.is_requested() {
                tracing::info!(origin = %self.spec.origin, "stop requested, ingest ends");
                break Ok(());
            }
            if let Some(err) = self.delivery.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
                break Err(err);
            }
            if let Some(err) = bus_error(&self.pipeline, &self.spec.origin, Duration::ZERO) {
                break Err(err);
            }
            if self.appsink.is_eos() {
                // An error can race with EOS; an error wins so a corrupt file is not reported as complete.
                break match bus_error(&self.pipeline, &self.spec.origin, Duration::from_millis(50)) {
                    Some(err) => Err(err),
                    None => Ok(()),
                };
            }
            if self.delivery.stopped.load(Ordering::Acquire) {
                break Ok(());
            }
            // Nothing to do until GStreamer has news or someone asks us to stop.
            select! {
                recv(self.wake) -> _ => {}
                recv(shutdown.requested()) -> _ => {}
            }
        };
        self.stop();
        result
    }

    /// Stops the pipeline and drops the delivery, whose sender closes the frame channel.
    fn stop(self) {
        let _ = self.pipeline.set_state(gst::State::Null);
        self.appsink.set_callbacks(gst_app::AppSinkCallbacks::builder().build());
    }
}

impl Delivery {
    /// The new-sample callback: an error flow stops the streaming thread without a bus message
    /// of its own (`Flushing`), or with GStreamer's generic one (`Error`, after our failure was
    /// recorded for the ingest thread to report).
    fn take(&mut self, appsink: &gst_app::AppSink) -> Result<gst::FlowSuccess, gst::FlowError> {
        let sample = appsink.pull_sample().map_err(|_| gst::FlowError::Flushing)?;
        let delivered = self.deliver(&sample);
        drop(sample);
        match delivered {
            Ok(true) => Ok(gst::FlowSuccess::Ok),
            Ok(false) => {
                self.outcome.stopped.store(true, Ordering::Release);
                let _ = self.nudge.try_send(());
                Err(gst::FlowError::Flushing)
            }
            Err(err) => {
                self.outcome.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get_or_insert(err);
                let _ = self.nudge.try_send(());
                Err(gst::FlowError::Error)
            }
        }
    }

    /// Sends one frame on; `false` when the consumer is gone or a stop was requested. The frame
    /// is made only once the budget has room for it.
    fn deliver(&mut self, sample: &gst::Sample) -> Result<bool, IngestError> {
        if self.max_frames != 0 && self.seq >= self.max_frames {
            tracing::info!(origin = %self.origin, frames = self.max_frames, "ingest.max_frames taken, the source ends here");
            return Ok(false);
        }
        let info = sample_info(sample, &self.origin)?;
        let bytes = FrameBudget::frame_bytes(info.width(), info.height());
        let position = self.seq;
        self.seq += 1;
        self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        if !self.stats.live.load(Ordering::Relaxed) {
            // Replay: wait for room (nothing is lost), unless a stop is requested meanwhile.
            if !self.budget.reserve(bytes, &self.shutdown) {
                return Ok(false);
            }
            let frame = self.frame_from_sample(sample, &info, position).inspect_err(|_| self.budget.release(bytes))?;
            let sent = select! {
                send(self.tx, frame) -> sent => sent.is_ok(),
                recv(self.shutdown.requested()) -> _ => false,
            };
            if !sent {
                self.budget.release(bytes);
            }
            return Ok(sent);
        }
        // Live: never wait. Room is made by dropping the oldest queued frame; when every frame in
        // flight is already past the queue, this one is dropped.
        while !self.budget.try_reserve(bytes) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            match self.queued.try_recv() {
                Ok(oldest) => self.budget.release_frame(&oldest),
                Err(_) => return Ok(true),
            }
        }
        let mut pending = self.frame_from_sample(sample, &info, position).inspect_err(|_| self.budget.release(bytes))?;
        loop {
            match self.tx.try_send(pending) {
                Ok(()) => return Ok(true),
                Err(TrySendError::Full(back)) => {
                    if let Ok(oldest) = self.queued.try_recv() {
                        self.budget.release_frame(&oldest);
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    pending = back;
                }
                Err(TrySendError::Disconnected(_)) => return Ok(false),
            }
        }
    }

    fn frame_from_sample(&mut self, sample: &gst::Sample, info: &gst_video::VideoInfo, seq: u64) -> Result<Frame, IngestError> {
        let origin = &self.origin;
        let caps_err = |message: String| IngestError::Caps { origin: origin.clone(), message };
        let buffer = sample.buffer().ok_or_else(|| caps_err("sample has no buffer".to_string()))?;
        let input = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info).map_err(|e| caps_err(e.to_string()))?;
        let convert_err = |e: gst::glib::BoolError| IngestError::Convert {
            origin: origin.clone(),
            format: info.format().to_str().to_string(),
            message: e.to_string(),
        };
        let to_bgr = match self.to_bgr.take() {
            Some(to_bgr) if to_bgr.input == *info => to_bgr,
            _ => ToBgr::new(info).map_err(convert_err)?,
        };
        let bgr = to_bgr.convert(&input).map_err(convert_err)?;
        self.to_bgr = Some(to_bgr);
        Ok(Frame {
            seq,
            pts: buffer.pts().map(|t| Duration::from_nanos(t.nseconds())),
            width: info.width(),
            height: info.height(),
            bgr,
            captured_at: Instant::now(),
        })
    }
}

/// GStreamer's own converter (what `videoconvert` runs: any raw format, the caps' colour matrix)
/// writing tightly packed BGR straight into the frame's vector.
struct ToBgr {
    input: gst_video::VideoInfo,
    output: gst_video::VideoInfo,
    converter: gst_video::VideoConverter,
}

impl ToBgr {
    fn new(input: &gst_video::VideoInfo) -> Result<Self, gst::glib::BoolError> {
        let (width, height) = (input.width(), input.height());
        let row = width as usize * 3;
        let stride = [i32::try_from(row).map_err(|_| gst::glib::bool_error!("frame is {width} pixels wide"))?];
        let output = gst_video::VideoInfo::builder(gst_video::VideoFormat::Bgr, width, height)
            .fps(input.fps())
            .par(input.par())
            .interlace_mode(input.interlace_mode())
            .stride(&stride)
            .offset(&[0])
            .size(row * height as usize)
            .build()?;
        let converter = gst_video::VideoConverter::new(input, &output, None)?;
        Ok(ToBgr { input: input.clone(), output, converter })
    }

    fn convert(&self, input: &gst_video::VideoFrameRef<&gst::BufferRef>) -> Result<Vec<u8>, gst::glib::BoolError> {
        let mut buffer = gst::Buffer::new();
        let target = buffer.get_mut().ok_or_else(|| gst::glib::bool_error!("a new buffer is not writable"))?;
        target.append_memory(gst::Memory::from_mut_slice(vec![0u8; self.output.size()]));
        {
            let mut output = gst_video::VideoFrameRef::from_buffer_ref_writable(target, &self.output)?;
            self.converter.frame_ref(input, &mut output);
        }
        let memory = buffer.memory(0).ok_or_else(|| gst::glib::bool_error!("converted frame has no memory"))?;
        drop(buffer);
        memory.try_into_inner::<Vec<u8>>().map_err(|_| gst::glib::bool_error!("converted frame is still shared"))
    }
}

fn sample_info(sample: &gst::Sample, origin: &str) -> Result<gst_video::VideoInfo, IngestError> {
    let caps_err = |message: String| IngestError::Caps { origin: origin.to_string(), message };
    let caps = sample.caps().ok_or_else(|| caps_err("sample has no caps".to_string()))?;
    gst_video::VideoInfo::from_caps(caps).map_err(|e| caps_err(e.to_string()))
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

/// Waits up to `timeout` for the pipeline to preroll, in short steps so that a stop request
/// (SIGTERM while a recording is slow to start) is answered at once; `Ok(Async)` when it has
/// not prerolled by then.
fn wait_for_preroll(
    pipeline: &gst::Pipeline,
    timeout: Duration,
    shutdown: &Shutdown,
) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
    const STEP: Duration = Duration::from_millis(100);
    let deadline = Instant::now() + timeout;
    loop {
        let step = STEP.min(deadline.saturating_duration_since(Instant::now()));
        let result = pipeline.state(gst::ClockTime::from_nseconds(step.as_nanos() as u64)).0;
        if result != Ok(gst::StateChangeSuccess::Async) || shutdown.is_requested() || Instant::now() >= deadline {
            return result;
        }
    }
}

/// What a pipeline that never prerolled says about why: a demuxer that exposed no stream is
/// the usual culprit (its own error may have been dropped by `decodebin`, see
/// [`IngestOptions::first_frame_timeout`]).
fn no_first_frame_reason(pipeline: &gst::Pipeline) -> String {
    let is_demuxer = |e: &gst::Element| e.factory().is_some_and(|f| f.klass().contains("Demux"));
    match pipeline.iterate_recurse().into_iter().flatten().find(|e| is_demuxer(e) && e.src_pads().is_empty()) {
        Some(demuxer) => format!(
            "demuxer {} found no stream in its input (the file looks corrupt, truncated or not a video: re-record or re-copy it)",
            demuxer.name()
        ),
        None => "check that the source produces video, or raise ingest.first_frame_timeout_s for a slow one".to_string(),
    }
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

/// Starts the pipeline on its own thread and returns the frame channel's receiver.
pub struct IngestHandle {
    pub frames: Receiver<Frame>,
    pub stats: Arc<IngestStats>,
    pub live: bool,
    pub thread: std::thread::JoinHandle<Result<(), IngestError>>,
}

pub fn spawn(spec: PipelineSpec, options: &IngestOptions, shutdown: Shutdown) -> Result<IngestHandle, IngestError> {
    let (tx, rx) = crossbeam_channel::bounded(options.capacity);
    let stats = Arc::new(IngestStats::default());
    let outlet = FrameOutlet { tx, queued: rx.clone(), stats: stats.clone(), shutdown: shutdown.clone() };
    let source = Source::start(spec, options, outlet)?;
    let live = source.is_live();
    let thread =
        std::thread::Builder::new().name("ingest".into()).spawn(move || source.run(&shutdown)).expect("spawning the ingest thread");
    Ok(IngestHandle { frames: rx, stats, live, thread })
}

/// Reads up to `limit` frames of a replayed source into memory (benchmarks run the same frames
/// twice; evaluation compares them with labels).
pub fn collect_frames(spec: PipelineSpec, limit: usize) -> Result<Vec<Frame>, IngestError> {
    let shutdown = Shutdown::new();
    let ingest = spawn(spec, &IngestOptions { liveness: Liveness::Replay, ..IngestOptions::default() }, shutdown.clone())?;
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
