//! The staged edge pipeline: each stage on its own thread, bounded crossbeam channels between.
//!
//! ```text
//! ingest ─frames─▶ decision ─local─▶ preprocess ─prepared─▶ infer ─inferred─▶ postprocess ─┐
//!                      │                 ▲ fallback                                           ▼
//!                      └─remote─▶ remote client ─────────────── answered ──────────────────▶ sink
//! ```
//! The decision stage is where the decision network will sit; today it applies the routing
//! policy of [`crate::control`]. Shutdown cascades: when ingest ends (EOS, error or a stop
//! request) its channel closes, each stage drains what it holds and closes the next, and the
//! sink finishes its files, so no frame that entered is lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Serialize;

use crate::config::{EdgeConfig, Routing};
use crate::control::{Route, RoutingPolicy};
use crate::infer::{InferError, InputBuffer, Model, NetworkOutput, Placement};
use crate::ingest::{Frame, IngestError, PipelineSpec};
use crate::metrics::{Percentiles, QueueDepths, QueueGauge, QueueReport, RemoteHealth, RemoteHealthSnapshot};
use crate::remote::client::{ClientError, RemoteClient};
use crate::sink::{MaskSource, Segmented, Sink, SinkError, SinkSettings, Written};

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
    #[error("the {0} stage panicked; this is a bug in edgeseg, please report it with the log")]
    Panicked(&'static str),
}

/// A frame travelling through the pipeline.
#[derive(Debug)]
pub struct Job {
    pub order: u64,
    pub frame: Frame,
    /// Set when the remote path gave the frame back to the small network, with the reason.
    pub fallback: Option<String>,
    pub latency_ms: BTreeMap<&'static str, f64>,
}

impl Job {
    pub fn into_segmented(self, class_map: crate::infer::ClassMap, source: MaskSource) -> Segmented {
        Segmented { order: self.order, frame: self.frame, class_map, source, latency_ms: self.latency_ms }
    }
}

struct Prepared {
    job: Job,
    input: InputBuffer,
    placement: Placement,
}

struct Inferred {
    job: Job,
    output: NetworkOutput,
    placement: Placement,
}

/// What a run did, printed at the end and written to `summary.json`.
#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub frames_in: u64,
    pub frames_out: u64,
    pub dropped: u64,
    pub live_source: bool,
    pub by_source: BTreeMap<&'static str, u64>,
    pub wall_s: f64,
    pub fps: f64,
    /// Rate between the first and the last frame out: what the pipeline sustains once started.
    pub steady_fps: f64,
    pub latency: BTreeMap<String, Percentiles>,
    pub queues: Vec<QueueReport>,
    pub remote: Option<RemoteHealthSnapshot>,
    pub released_out_of_order: u64,
    pub outputs: Written,
    pub error: Option<String>,
}

/// The result of a run: the summary always, and the first error if the run ended in one
/// (everything processed before it was still written).
pub struct RunOutcome {
    pub summary: RunSummary,
    pub error: Option<PipelineError>,
}

/// Keeps the first error a stage hit and tells every other stage to stop taking new frames.
#[derive(Clone)]
struct FirstError {
    slot: Arc<Mutex<Option<PipelineError>>>,
    stop: Arc<AtomicBool>,
}

impl FirstError {
    fn set(&self, e: PipelineError) {
        tracing::error!(error = %e, "stage failed; finishing the frames already in the pipeline");
        let mut slot = self.slot.lock().expect("error slot lock");
        slot.get_or_insert(e);
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn stage<F: FnOnce() + Send + 'static>(name: &'static str, f: F) -> (&'static str, JoinHandle<()>) {
    (name, std::thread::Builder::new().name(name.to_string()).spawn(f).expect("spawning a pipeline stage thread"))
}

/// One line of `metrics.jsonl`.
#[derive(Serialize)]
struct MetricsSample {
    t_s: f64,
    frames_in: u64,
    dropped: u64,
    queues: BTreeMap<&'static str, usize>,
    remote: Option<RemoteHealthSnapshot>,
}

struct MetricsWriter {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl MetricsWriter {
    /// Metrics are an aid, not an output the run depends on: failures are logged, not fatal.
    fn create(dir: &std::path::Path) -> Option<Self> {
        let path = dir.join("metrics.jsonl");
        match std::fs::File::create(&path) {
            Ok(file) => Some(MetricsWriter { path, file }),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write metrics");
                None
            }
        }
    }

    fn write(&mut self, sample: &MetricsSample) {
        use std::io::Write;
        let line = serde_json::to_string(sample).map(|mut l| {
            l.push('\n');
            l
        });
        if let Err(e) = line.map_err(std::io::Error::from).and_then(|l| self.file.write_all(l.as_bytes())) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write metrics");
        }
    }
}

/// A stage that turns each message into one for the next stage. A failure is recorded and
/// stops intake; the stage keeps draining so the frames behind it still come out.
fn map_stage<I: Send + 'static, O: Send + 'static>(
    name: &'static str,
    input: Receiver<I>,
    output: Sender<O>,
    errors: FirstError,
    mut transform: impl FnMut(I) -> Result<O, PipelineError> + Send + 'static,
) -> (&'static str, JoinHandle<()>) {
    stage(name, move || {
        for item in input {
            match transform(item) {
                Ok(out) => {
                    if output.send(out).is_err() {
                        break;
                    }
                }
                Err(e) => errors.set(e),
            }
        }
    })
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Runs the edge pipeline to completion (end of stream, or `stop` set by a signal).
/// Errors at start-up (bad pipeline, model, output directory) return `Err` before any frame.
pub fn run(config: &EdgeConfig, stop: Arc<AtomicBool>) -> Result<RunOutcome, PipelineError> {
    let cap = config.pipeline.queue_capacity;
    let spec = PipelineSpec::from_file(&config.ingest.pipeline, &config.ingest.params)?;
    // Load what can fail first so a bad model or output folder fails before the camera starts.
    let mut model = Model::load(&config.model)?;
    let manifest = model.manifest.clone();
    let sink = Sink::new(SinkSettings {
        dir: config.output.dir.clone(),
        records: config.output.records,
        masks: config.output.masks,
        overlay: config.output.overlay,
        overlay_alpha: config.output.overlay_alpha,
        overlay_encoder: config.output.overlay_encoder.clone(),
        class_names: manifest.output.classes.clone(),
        reorder_window: config.pipeline.reorder_window,
    })?;
    let health = Arc::new(RemoteHealth::default());
    let remote_client = match config.remote.routing {
        Routing::Local => None,
        _ => Some(RemoteClient::new(&config.remote, health.clone())?),
    };

    let first_error = FirstError { slot: Arc::new(Mutex::new(None)), stop: stop.clone() };
    let queues = QueueDepths::default();
    let started = Instant::now();
    let ingest = crate::ingest::spawn(spec, config.ingest.live, cap, stop.clone())?;
    tracing::info!(live = ingest.live, "ingest started");
    queues.add(QueueGauge::new("frames", &ingest.frames));

    let (local_tx, local_rx) = bounded::<Job>(cap);
    let (prepared_tx, prepared_rx) = bounded::<Prepared>(cap);
    let (inferred_tx, inferred_rx) = bounded::<Inferred>(cap);
    let (segmented_tx, segmented_rx) = bounded::<Segmented>(cap);
    queues.add(QueueGauge::new("local", &local_rx));
    queues.add(QueueGauge::new("prepared", &prepared_rx));
    queues.add(QueueGauge::new("inferred", &inferred_rx));
    queues.add(QueueGauge::new("segmented", &segmented_rx));

    let mut threads = Vec::new();
    let remote_tx = match remote_client {
        Some(client) => {
            let (remote_tx, remote_rx) = bounded::<Job>(cap);
            queues.add(QueueGauge::new("remote", &remote_rx));
            threads.push(("remote", client.spawn(remote_rx, segmented_tx.clone(), local_tx.clone())));
            Some(remote_tx)
        }
        None => None,
    };

    // Decision stage: the slot for the decision network; today a fixed routing policy.
    let policy = RoutingPolicy::new(config.remote.routing, config.remote.every_nth);
    let frames = ingest.frames.clone();
    let decision_local_tx = local_tx.clone();
    threads.push(stage("decision", move || {
        for (order, frame) in (0u64..).zip(frames) {
            let job = Job { order, frame, fallback: None, latency_ms: BTreeMap::new() };
            let sent = match (policy.route(order), &remote_tx) {
                (Route::Remote, Some(tx)) => tx.send(job).is_ok(),
                _ => decision_local_tx.send(job).is_ok(),
            };
            if !sent {
                break;
            }
        }
    }));
    drop(local_tx);
    drop(ingest.frames);

    // Input tensors go back from the infer stage to be refilled, so frames allocate none.
    let (spare_inputs_tx, spare_inputs_rx) = bounded::<InputBuffer>(cap + 2);
    let pre_manifest = manifest.clone();
    threads.push(map_stage("preprocess", local_rx, prepared_tx, first_error.clone(), move |mut job: Job| {
        let t = Instant::now();
        let mut input = spare_inputs_rx.try_recv().unwrap_or_else(|_| InputBuffer::new(&pre_manifest, 1));
        let image = input.image_mut(0).ok_or_else(|| InferError::Image { step: "preprocess", message: "empty input buffer".into() })?;
        let placement = crate::infer::preprocess(&job.frame.bgr, job.frame.width, job.frame.height, &pre_manifest, image)?;
        job.latency_ms.insert("preprocess", ms_since(t));
        Ok(Prepared { job, input, placement })
    }));

    threads.push(map_stage("infer", prepared_rx, inferred_tx, first_error.clone(), move |Prepared { mut job, input, placement }| {
        let t = Instant::now();
        let output = model.run(&input)?;
        let _ = spare_inputs_tx.try_send(input);
        job.latency_ms.insert("infer", ms_since(t));
        Ok(Inferred { job, output, placement })
    }));

    threads.push(map_stage("postprocess", inferred_rx, segmented_tx, first_error.clone(), |Inferred { mut job, output, placement }| {
        let t = Instant::now();
        let map = output.class_map(0, &placement)?;
        job.latency_ms.insert("postprocess", ms_since(t));
        let source = match job.fallback.take() {
            Some(reason) => MaskSource::Fallback { reason },
            None => MaskSource::Local,
        };
        Ok(job.into_segmented(map, source))
    }));

    let sink_thread =
        std::thread::Builder::new().name("sink".into()).spawn(move || sink.run(segmented_rx)).expect("spawning the sink thread");

    // Queue depths are sampled while the run lasts; the control unit will read the same gauges.
    // Queue depths are sampled while the run lasts (the control unit will read the same gauges)
    // and written with remote health to metrics.jsonl, so a live deployment can be watched.
    let monitor_done = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (queues, health, stats, done) = (queues.clone(), health.clone(), ingest.stats.clone(), monitor_done.clone());
        let interval = Duration::from_millis(config.output.metrics_interval_ms);
        let mut metrics = (!interval.is_zero()).then(|| MetricsWriter::create(&config.output.dir)).flatten();
        let remote_enabled = config.remote.routing != Routing::Local;
        stage("monitor", move || {
            let mut last_write = Instant::now();
            while !done.load(Ordering::Relaxed) {
                let depths = queues.sample();
                if let Some(writer) = metrics.as_mut().filter(|_| last_write.elapsed() >= interval) {
                    last_write = Instant::now();
                    let sample = MetricsSample {
                        t_s: started.elapsed().as_secs_f64(),
                        frames_in: stats.frames_in.load(Ordering::Relaxed),
                        dropped: stats.dropped.load(Ordering::Relaxed),
                        queues: depths.iter().map(|(name, depth, _)| (*name, *depth)).collect(),
                        remote: remote_enabled.then(|| health.snapshot()),
                    };
                    writer.write(&sample);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    match ingest.thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => first_error.set(e.into()),
        Err(_) => first_error.set(PipelineError::Panicked("ingest")),
    }
    for (name, t) in threads {
        if t.join().is_err() {
            first_error.set(PipelineError::Panicked(name));
        }
    }
    let report = sink_thread.join().unwrap_or_else(|_| {
        first_error.set(PipelineError::Panicked("sink"));
        Default::default()
    });
    monitor_done.store(true, Ordering::Relaxed);
    let _ = monitor.1.join();
    let wall_s = started.elapsed().as_secs_f64();

    let steady_fps = report.steady_fps();
    let mut error = first_error.slot.lock().expect("error slot lock").take();
    if error.is_none() {
        error = report.error.map(PipelineError::from);
    }
    let summary = RunSummary {
        frames_in: ingest.stats.frames_in.load(Ordering::Relaxed),
        frames_out: report.frames_out,
        dropped: ingest.stats.dropped.load(Ordering::Relaxed),
        live_source: ingest.live,
        by_source: report.by_source,
        wall_s,
        fps: report.frames_out as f64 / wall_s.max(1e-9),
        steady_fps,
        latency: report.latencies.summary(),
        queues: queues.report(),
        remote: (config.remote.routing != Routing::Local).then(|| health.snapshot()),
        released_out_of_order: report.released_out_of_order,
        outputs: report.written,
        error: error.as_ref().map(|e| e.to_string()),
    };
    if let Ok(text) = serde_json::to_string_pretty(&summary) {
        let path = config.output.dir.join("summary.json");
        if let Err(e) = std::fs::write(&path, text) {
            tracing::warn!(path = %path.display(), error = %e, "could not write the summary");
        }
    }
    Ok(RunOutcome { summary, error })
}

/// Reads every frame of a replayed source into memory (benchmarks run the same frames twice).
pub fn collect_frames(spec: PipelineSpec, limit: usize) -> Result<Vec<Frame>, IngestError> {
    let stop = Arc::new(AtomicBool::new(false));
    let ingest = crate::ingest::spawn(spec, crate::config::Liveness::Replay, 4, stop.clone())?;
    let frames: Vec<Frame> = ingest.frames.iter().take(limit).collect();
    stop.store(true, Ordering::Relaxed);
    drop(ingest.frames);
    ingest.thread.join().unwrap_or(Ok(()))?;
    Ok(frames)
}
