//! The edge pipeline as operators see it. The pipeline hands over the counters its stages keep
//! ([`PipelineView`]: ingest, queue depths, remote health) when it starts, and shows every
//! finished frame to [`EdgeTelemetry::observer`], which tallies routes, decisions and per-stage
//! latencies exactly as the sink accounts them for `summary.json`. Health, status and metrics
//! are read from these at the moment they are asked for.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::exposition::{self, Scrape, Scraped};
use super::{RateMeter, Vitals};
use crate::config::{EdgeConfig, Routing};
use crate::control::breaker::BreakerState;
use crate::control::LatestTick;
use crate::frame::{Route, Segmented};
use crate::ingest::IngestStats;
use crate::metrics::health::{Condition, PipelineCounts, PipelineLimits, PipelineWatch};
use crate::metrics::{QueueDepths, RemoteHealth};
use crate::sink::{Observer, SinkError};

/// What a running pipeline shares with its watchers, handed over once its stages are wired.
pub struct PipelineView {
    pub queues: QueueDepths,
    pub ingest: Arc<IngestStats>,
    /// `None` when the remote path is off.
    pub remote: Option<Arc<RemoteHealth>>,
    /// The control unit's last tick; never set where no controller runs (fixed routing).
    pub control: Arc<LatestTick>,
}

type StageLabel = [(&'static str, &'static str); 1];

/// Stage latencies from 1 ms to 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The frames that left the sink, as the sink accounts them.
#[derive(Debug, Default)]
struct Tally {
    /// "local", "remote", "fallback" (`MaskSource::label`) → frames.
    by_route: BTreeMap<&'static str, u64>,
    /// (policy, route) → frames decided so.
    decisions: BTreeMap<(&'static str, &'static str), u64>,
    /// The offloading threshold of the last frame whose policy has one.
    threshold: Option<f32>,
}

struct EdgeShared {
    view: OnceLock<PipelineView>,
    intake_ended: AtomicBool,
    /// Bumped after the frame's tally, so a reader never sees a frame out that is not tallied.
    frames_out: AtomicU64,
    tally: Mutex<Tally>,
    latency: Family<StageLabel, Histogram, fn() -> Histogram>,
    watch: Mutex<PipelineWatch>,
    rate: Mutex<RateMeter>,
}

/// A running edge pipeline's telemetry: give it to [`crate::pipeline::run_with`] and to an
/// [`super::Service`].
pub struct EdgeTelemetry {
    shared: Arc<EdgeShared>,
    registry: Registry,
}

impl EdgeTelemetry {
    /// When the pipeline counts as stalled comes from `[health]` (and the remote deadline).
    pub fn new(config: &EdgeConfig) -> Self {
        let health = &config.health;
        // A frame sent remote may wait for the worker up to its deadline, then go local.
        let remote_wait = if config.remote.routing == Routing::Local { Duration::ZERO } else { config.remote.deadline_ms.get() };
        let limits = PipelineLimits { stall: health.stall_s.get() + remote_wait, live_silence: health.live_silence_s.period() };
        let shared = Arc::new(EdgeShared {
            view: OnceLock::new(),
            intake_ended: AtomicBool::new(false),
            frames_out: AtomicU64::new(0),
            tally: Mutex::default(),
            latency: Family::new_with_constructor(latency_histogram),
            watch: Mutex::new(PipelineWatch::new(limits, Instant::now())),
            rate: Mutex::default(),
        });
        let registry = exposition::registry("edgeseg", shared.clone());
        EdgeTelemetry { shared, registry }
    }

    /// Called by the pipeline once its stages are wired; a telemetry serves one run.
    pub fn attach(&self, view: PipelineView) {
        if self.shared.view.set(view).is_err() {
            tracing::warn!("telemetry already attached to a run; the second run is not reported");
        }
    }

    /// Sees every finished frame, in order, after the output files.
    pub fn observer(&self) -> Box<dyn Observer> {
        Box::new(FrameTally(self.shared.clone()))
    }

    /// Intake ended (end of stream, an error or a stop request): the pipeline is draining.
    pub fn intake_ended(&self) {
        self.shared.intake_ended.store(true, Ordering::Relaxed);
    }
}

impl Vitals for EdgeTelemetry {
    fn ready(&self) -> bool {
        self.shared.view.get().is_some_and(|v| v.ingest.frames_in.load(Ordering::Relaxed) > 0)
    }

    fn condition(&self) -> Condition {
        self.shared.condition()
    }

    fn status_line(&self, condition: &Condition) -> String {
        self.shared.status_line(condition)
    }

    fn encode_metrics(&self, out: &mut String) -> fmt::Result {
        prometheus_client::encoding::text::encode(out, &self.registry)
    }
}

fn route_label(route: Route) -> &'static str {
    match route {
        Route::Local => "local",
        Route::Remote => "remote",
    }
}

fn percent(part: u64, total: u64) -> f64 {
    100.0 * part as f64 / total.max(1) as f64
}

impl EdgeShared {
    fn counts(&self, view: &PipelineView) -> PipelineCounts {
        // Out first: a frame counted out was counted in before.
        let frames_out = self.frames_out.load(Ordering::Acquire);
        let dropped = view.ingest.dropped.load(Ordering::Relaxed);
        let frames_in = view.ingest.frames_in.load(Ordering::Relaxed);
        PipelineCounts { frames_in, dropped, frames_out, live: view.ingest.live.load(Ordering::Relaxed) }
    }

    fn condition(&self) -> Condition {
        if self.intake_ended.load(Ordering::Relaxed) {
            return Condition::Stopping;
        }
        let Some(view) = self.view.get() else { return Condition::Starting };
        let now = Instant::now();
        let counts = self.counts(view);
        self.watch.lock().expect("health watch lock").observe(counts, now)
    }

    fn status_line(&self, condition: &Condition) -> String {
        let Some(view) = self.view.get() else { return condition.to_string() };
        let counts = self.counts(view);
        let fps = self.rate.lock().expect("rate lock").per_second(counts.frames_out, Instant::now());
        let mut line = format!("{condition}; {fps:.1} frames/s out, {} in flight, {} dropped", counts.in_flight(), counts.dropped);
        let tally = self.tally.lock().expect("tally lock");
        if !tally.by_route.is_empty() {
            let total = tally.by_route.values().sum();
            let shares: Vec<String> = tally.by_route.iter().map(|(route, n)| format!("{route} {:.0}%", percent(*n, total))).collect();
            line.push_str(&format!("; routes {}", shares.join(", ")));
        }
        if let Some(threshold) = tally.threshold {
            line.push_str(&format!("; threshold {threshold:.2}"));
        }
        if let Some(remote) = &view.remote {
            let r = remote.snapshot();
            line.push_str(&format!(
                "; remote {} worker(s), rtt {:.1} ms, {} in flight, {} failures",
                r.connected_workers, r.rtt_ms, r.in_flight, r.failures
            ));
        }
        if let Some(breaker) = view.control.get().map(|tick| tick.breaker).filter(|&b| b != BreakerState::Closed) {
            line.push_str(&format!("; breaker {}", breaker.name()));
        }
        line
    }
}

impl Scraped for EdgeShared {
    fn scrape(&self, scrape: &mut Scrape) -> fmt::Result {
        scrape.health(&self.condition())?;
        let Some(view) = self.view.get() else { return Ok(()) };
        let counts = self.counts(view);
        scrape.counter("frames_in", "Frames pulled from the source", counts.frames_in)?;
        scrape.counter("frames_dropped", "Frames a live source's ingest dropped because the pipeline was full", counts.dropped)?;
        scrape.gauge("frames_in_flight", "Frames between the source and the outputs", counts.in_flight() as i64)?;
        {
            let tally = self.tally.lock().expect("tally lock");
            let routes = ["local", "remote", "fallback"].map(|route| ([("route", route)], tally.by_route.get(route).copied().unwrap_or(0)));
            scrape.counters(
                "frames_out",
                "Frames written, by where their mask came from (local network, remote worker, local fallback for a remote frame)",
                routes,
            )?;
            let decisions = tally.decisions.iter().map(|((policy, route), n)| ([("policy", *policy), ("route", *route)], *n));
            scrape.counters("decisions", "Frames decided, by policy and chosen route", decisions)?;
            if let Some(threshold) = tally.threshold {
                scrape.gauge("decision_threshold", "Offloading threshold in force for the last frame out", f64::from(threshold))?;
            }
        }
        let queues = view.queues.sample();
        scrape.gauges(
            "queue_depth",
            "Messages waiting in the queue in front of a stage",
            None,
            queues.iter().map(|q| ([("queue", q.name)], q.depth as i64)),
        )?;
        scrape.gauges(
            "queue_capacity",
            "Capacity of the queue in front of a stage",
            None,
            queues.iter().map(|q| ([("queue", q.name)], q.capacity as i64)),
        )?;
        scrape.live(
            "stage_latency",
            "Time a frame spent in each stage (total: from capture to output)",
            Some(Unit::Seconds),
            &self.latency,
        )?;
        if let Some(tick) = view.control.get() {
            let states = BreakerState::ALL.map(|state| ([("state", state.name())], i64::from(state == tick.breaker)));
            scrape.gauges(
                "remote_breaker",
                "The remote circuit breaker's state, 1 for the current one (open: frames stay local)",
                None,
                states,
            )?;
            scrape.counter("remote_breaker_opened", "Times the remote circuit breaker opened", tick.breaker_opened)?;
        }
        if let Some(remote) = &view.remote {
            let r = remote.snapshot();
            scrape.counter("remote_sent", "Frames sent to remote workers", r.sent)?;
            scrape.counter("remote_answered", "Frames answered by remote workers", r.answered)?;
            scrape.counter(
                "remote_failures",
                "Remote exchanges that failed (unreachable, overloaded, late): those frames fell back",
                r.failures,
            )?;
            scrape.gauge("remote_consecutive_failures", "Remote failures since the last answer", r.consecutive_failures as i64)?;
            scrape.gauge("remote_in_flight", "Frames on their way to or from a worker", r.in_flight as i64)?;
            scrape.gauge("remote_connected_workers", "Workers connected now", r.connected_workers as i64)?;
            scrape.seconds("remote_rtt", "Round-trip time to the workers (moving average)", r.rtt_ms / 1000.0)?;
            scrape.seconds(
                "remote_worker_queue",
                "Time frames waited in the worker's queue (moving average)",
                r.worker_queue_ms / 1000.0,
            )?;
        }
        Ok(())
    }
}

/// The sink observer behind [`EdgeTelemetry::observer`].
struct FrameTally(Arc<EdgeShared>);

impl Observer for FrameTally {
    /// Counts only: the frame's pixels may be freed early.
    fn needs_pixels(&self) -> bool {
        false
    }

    fn observe(&mut self, frame: &Segmented) -> Result<(), SinkError> {
        let shared = &self.0;
        for (stage, ms) in &frame.latency_ms {
            shared.latency.get_or_create(&[("stage", *stage)]).observe(ms / 1000.0);
        }
        shared.latency.get_or_create(&[("stage", "total")]).observe(frame.frame.captured_at.elapsed().as_secs_f64());
        {
            let mut tally = shared.tally.lock().expect("tally lock");
            *tally.by_route.entry(frame.source.label()).or_default() += 1;
            if let Some(decision) = &frame.decision {
                *tally.decisions.entry((decision.policy, route_label(decision.route))).or_default() += 1;
                if decision.threshold.is_some() {
                    tally.threshold = decision.threshold;
                }
            }
        }
        shared.frames_out.fetch_add(1, Ordering::Release);
        Ok(())
    }
}
