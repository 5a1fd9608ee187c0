//! The staged edge pipeline: each stage on its own thread, bounded crossbeam channels between.
//!
//! ```text
//! ingest ─frames─▶ decision ─local─▶ preprocess ─prepared─▶ infer ─inferred─▶ postprocess ─┐
//!                      │                 ▲ fallback                                           ▼
//!                      └─remote─▶ remote ─────────────────────── segmented ─────────────────▶ sink
//! ```
//! This module only wires: the stages live in their own modules ([`crate::ingest`],
//! [`crate::control`] behind the decision stage, [`crate::infer`], [`crate::remote::client`],
//! [`crate::sink`]) and know each other only through the types of [`crate::frame`]; what is
//! here is the glue between a stage's API and its channels (`decide`, `local`, `remote`), the
//! generic stage helper (`stage`), the monitor and the summary.
//!
//! Shutdown cascades: when ingest ends (end of stream, error, or the [`Shutdown`] requested)
//! its channel closes, each stage drains what it holds and closes the next, and the sink
//! finishes its files, so no frame that entered is lost.
//!
//! Memory: one [`FrameBudget`] (`pipeline.max_frame_mib_in_flight`) bounds the bytes of all
//! frames between the ingest, which reserves them, and the sink, which returns them after the
//! last output saw the frame. When no output reads pixels, they are freed (and returned) as soon
//! as the frame is preprocessed or answered remotely.

mod decide;
mod local;
mod monitor;
mod remote;
mod stage;
mod summary;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use crate::config::{EdgeConfig, Routing, ScoreChoice};
use crate::control::LatestTick;
use crate::decision::{check_split, DecisionScore, SmallHead};
use crate::frame::{Frame, Job, Segmented};
use crate::infer::{InferError, Model};
use crate::ingest::{FrameBudget, IngestError, IngestOptions, PipelineSpec};
use crate::metrics::{LatencyGauge, QueueDepths, QueueGauge, RemoteHealth, RouteTimeline};
use crate::ops::{EdgeTelemetry, PipelineView};
use crate::remote::client::{ClientError, RemoteClient};
use crate::shutdown::Shutdown;
use crate::sink::{Observer, Sink, SinkError, SinkSettings};
use decide::{decision_stage, DeviceReadings, SignalSource};
use monitor::{Monitor, Watched};
use stage::{map_stage, FirstError, Stages};
pub use summary::{FrameMemory, RunSummary};

/// Controller ticks waiting for the monitor to write them (it wakes every 20 ms; a tick is
/// at least 10 ms long): enough that none is lost unless the disk stalls.
const CONTROL_TICKS_BUFFERED: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Remote(#[from] ClientError),
    #[error("decision network: {0}")]
    Decision(#[from] Box<crate::decision::DecisionError>),
    #[error("the {0} stage panicked; this is a bug in edgeseg, please report it with the log")]
    Panicked(&'static str),
}

/// The decision network when `control.score` names it, and the small network's head when the
/// network's base is shared with the small network (checked to reproduce it here, before any
/// frame, so local masks are the small network's).
fn load_decision_network(config: &EdgeConfig, model: &mut Model) -> Result<(Option<DecisionScore>, Option<SmallHead>), PipelineError> {
    if config.remote.routing != Routing::Threshold || config.control.score != ScoreChoice::DecisionNetwork {
        return Ok((None, None));
    }
    let mut network = DecisionScore::load(&config.decision, &model.manifest).map_err(Box::new)?;
    if !network.shares_features() {
        return Ok((Some(network), None));
    }
    let classes = model.manifest.output.classes.len();
    let mut head = SmallHead::load(&config.decision.head, config.model.intra_threads.get(), classes).map_err(Box::new)?;
    let worst = check_split(network.encoder_mut(), &mut head, model).map_err(Box::new)?;
    tracing::info!(max_logit_difference = worst, "encoder + head reproduce the small network: local frames reuse the decision's features");
    Ok((Some(network), Some(head)))
}

/// The result of a run: the summary always, and the first error if the run ended in one
/// (everything processed before it was still written).
pub struct RunOutcome {
    pub summary: RunSummary,
    pub error: Option<PipelineError>,
}

/// Runs the edge pipeline to completion: end of stream, or `shutdown` requested (the run
/// requests it itself when a stage fails). Errors at start-up (bad pipeline, model, output
/// directory) return `Err` before any frame.
pub fn run(config: &EdgeConfig, shutdown: &Shutdown) -> Result<RunOutcome, PipelineError> {
    run_observed(config, shutdown, Vec::new())
}

/// [`run`], with `observers` seeing every finished frame, in order, as the output files do.
pub fn run_observed(config: &EdgeConfig, shutdown: &Shutdown, observers: Vec<Box<dyn Observer>>) -> Result<RunOutcome, PipelineError> {
    run_with(config, shutdown, observers, &EdgeTelemetry::new(config))
}

/// [`run_observed`], reporting to `telemetry` while it runs (progress for the systemd watchdog
/// and `/healthz`, counters for `/metrics`); a telemetry serves one run.
pub fn run_with(
    config: &EdgeConfig,
    shutdown: &Shutdown,
    observers: Vec<Box<dyn Observer>>,
    telemetry: &EdgeTelemetry,
) -> Result<RunOutcome, PipelineError> {
    let cap = config.pipeline.queue_capacity.get();
    let spec = PipelineSpec::from_file(&config.ingest.pipeline, &config.ingest.params)?;
    // Load what can fail first so a bad model or output folder fails before the camera starts.
    let mut model = Model::load(&config.model)?;
    let manifest = model.manifest.clone();
    let (decision_network, small_head) = load_decision_network(config, &mut model)?;
    let mut sink = Sink::new(SinkSettings {
        dir: config.output.dir.clone(),
        records: config.output.records,
        masks: config.output.masks,
        overlay: config.output.overlay,
        overlay_alpha: config.output.overlay_alpha,
        overlay_encoder: config.output.overlay_encoder.clone(),
        overlay_max_size: (config.output.overlay_max_width.get() as u32, config.output.overlay_max_height.get() as u32),
        class_names: manifest.output.classes.clone(),
        reorder_window: config.pipeline.reorder_window.get(),
    })?;
    for observer in observers {
        sink.add_observer(observer);
    }
    sink.add_observer(telemetry.observer());
    frame_sized_blocks_to_the_os();
    let budget = FrameBudget::new(config.pipeline.max_frame_bytes_in_flight());
    let free_pixels = PixelsDone { budget: (!sink.needs_pixels()).then(|| budget.clone()) };
    // Last, so every other output has seen the frame when its bytes are returned.
    sink.add_observer(Box::new(ReturnFrameBytes(budget.clone())));
    let health = Arc::new(RemoteHealth::default());
    let remote_health = (config.remote.routing != Routing::Local).then(|| health.clone());
    let remote_client = match remote_health {
        Some(_) => Some(RemoteClient::new(&config.remote, health.clone())?),
        None => None,
    };

    let errors = FirstError::new(shutdown.clone());
    let queues = QueueDepths::default();
    let started = Instant::now();
    let routes = Arc::new(RouteTimeline::new(started, config.output.route_window_s.get()));
    sink.add_observer(Box::new(summary::RouteCounter(routes.clone())));
    let ingest_options = IngestOptions {
        liveness: config.ingest.live,
        capacity: cap,
        decoder_threads: config.ingest.decoder_threads,
        max_frames: config.ingest.max_frames,
        first_frame_timeout: Duration::from_secs(config.ingest.first_frame_timeout_s),
        budget: budget.clone(),
    };
    let ingest = crate::ingest::spawn(spec, &ingest_options, shutdown.clone())?;
    tracing::info!(live = ingest.live, "ingest started");
    queues.add(QueueGauge::new("frames", &ingest.frames));

    let (local_tx, local_rx) = bounded::<Job>(cap);
    let (prepared_tx, prepared_rx) = bounded(cap);
    let (inferred_tx, inferred_rx) = bounded(cap);
    let (segmented_tx, segmented_rx) = bounded::<Segmented>(cap);
    queues.add(QueueGauge::new("local", &local_rx));
    queues.add(QueueGauge::new("prepared", &prepared_rx));
    queues.add(QueueGauge::new("inferred", &inferred_rx));
    queues.add(QueueGauge::new("segmented", &segmented_rx));

    let mut stages = Stages::default();
    let remote_tx = remote_client.map(|client| {
        let (remote_tx, remote_rx) = bounded::<Job>(cap);
        queues.add(QueueGauge::new("remote", &remote_rx));
        let max_in_flight = config.remote.max_in_flight.get();
        let answered = (segmented_tx.clone(), free_pixels.clone());
        stages.spawn_ahead("remote", remote::remote_stage(client, remote_rx, answered, local_tx.clone(), max_in_flight, health.clone()));
        remote_tx
    });
    let latest_tick = Arc::new(LatestTick::default());
    telemetry.attach(PipelineView {
        queues: queues.clone(),
        ingest: ingest.stats.clone(),
        remote: remote_health.clone(),
        control: latest_tick.clone(),
    });
    let local_latency = Arc::new(LatencyGauge::default());
    let device = DeviceReadings::new(config.control.power_supply_dir.clone(), config.control.interval_ms.get());
    let signals = SignalSource { queues: queues.clone(), local_latency: local_latency.clone(), remote: remote_health.clone(), device };
    let (ticks_tx, ticks_rx) = bounded(CONTROL_TICKS_BUFFERED);
    let policy = decide::policy(config, decision_network, Some(ticks_tx))?;
    let decision = decision_stage(ingest.frames.clone(), policy, signals, local_tx, remote_tx);
    // At the process's priority: the control unit must react while local inference is behind,
    // and with the decision network's encoder this stage does most of a local frame's work.
    stages.spawn_ahead("decision", decision);
    drop(ingest.frames);
    let (spare_tx, spare_rx) = local::spare_inputs(cap);
    stages.spawn(
        "preprocess",
        map_stage(local_rx, prepared_tx, errors.clone(), local::preprocess(manifest, spare_rx, free_pixels, small_head.is_some())),
    );
    stages.spawn_ahead("infer", map_stage(prepared_rx, inferred_tx, errors.clone(), local::infer(model, small_head, spare_tx)));
    let mut postprocess = local::postprocess();
    let postprocess_timed = move |inferred| {
        let segmented: Segmented = postprocess(inferred)?;
        local_latency.finished(segmented.frame.captured_at);
        Ok(segmented)
    };
    stages.spawn("postprocess", map_stage(inferred_rx, segmented_tx, errors.clone(), postprocess_timed));
    let sink_thread = std::thread::Builder::new()
        .name("sink".into())
        .spawn(move || {
            crate::priority::yield_to_inference();
            sink.run(segmented_rx)
        })
        .expect("spawning the sink thread");

    let watched = Watched {
        queues: queues.clone(),
        ingest: ingest.stats.clone(),
        remote: remote_health.clone(),
        control: ticks_rx,
        latest_tick,
        started,
    };
    let monitor = Monitor::start(watched, config.output.metrics_interval_ms.period().map(|period| (config.output.dir.as_path(), period)));

    match ingest.thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => errors.set(e.into()),
        Err(_) => errors.set(PipelineError::Panicked("ingest")),
    }
    telemetry.intake_ended();
    stages.join(&errors);
    let mut report = sink_thread.join().unwrap_or_else(|_| {
        errors.set(PipelineError::Panicked("sink"));
        Default::default()
    });
    monitor.stop();
    let wall_s = started.elapsed().as_secs_f64();

    let sink_error = report.error.take();
    let error = errors.take().or(sink_error.map(PipelineError::from));
    let intake = summary::Intake {
        frames_in: ingest.stats.frames_in.load(std::sync::atomic::Ordering::Relaxed),
        dropped: ingest.stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
        live: ingest.live,
        frame_memory: summary::FrameMemory { budget_bytes: budget.limit(), peak_bytes: budget.peak() },
    };
    let remote = remote_health.map(|h| h.snapshot());
    let summary = RunSummary::new(intake, report, wall_s, queues.report(), remote, routes.windows(), error.as_ref().map(|e| e.to_string()));
    summary.write(&config.output.dir);
    Ok(RunOutcome { summary, error })
}

/// Frees a frame's pixels once the stage holding it is done with them, when no output reads
/// them (`budget` is `None` when one does).
#[derive(Clone)]
pub(super) struct PixelsDone {
    budget: Option<FrameBudget>,
}

impl PixelsDone {
    pub(super) fn done(&self, frame: &mut Frame) {
        if let Some(budget) = &self.budget {
            budget.drop_pixels(frame);
        }
    }
}

/// The sink's last observer: the frame is leaving, its bytes go back to the budget.
struct ReturnFrameBytes(FrameBudget);

impl Observer for ReturnFrameBytes {
    fn observe(&mut self, frame: &Segmented) -> Result<(), SinkError> {
        self.0.release_frame(&frame.frame);
        Ok(())
    }

    fn needs_pixels(&self) -> bool {
        false
    }
}

/// Makes glibc's malloc take blocks of 4 MiB and more straight from the OS and give them back
/// on free, as it does at first. By default it raises that threshold to the largest block freed
/// so far (up to 32 MiB), after which frames (25 MB at 4K, allocated on one thread and freed on
/// another) are carved from per-thread arenas that never shrink: measured at 4K, 30 MB of peak
/// RSS held by freed frames. Process-wide and idempotent.
fn frame_sized_blocks_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning; any value is valid for M_MMAP_THRESHOLD.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}
