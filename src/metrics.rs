//! Measurements the pipeline exposes while it runs (queue depths, local latency, remote health)
//! and reports when it ends (latency percentiles, where frames went over time). Queue depths,
//! local latency and remote health are what the control unit reads, sampled per frame, to adapt
//! its offloading threshold, so they are plain shared values, cheap to sample. [`health`] judges from the same counters whether the
//! service is doing its job.

pub mod health;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Latency samples in milliseconds; percentiles are computed at the end of a run.
#[derive(Debug, Default, Clone)]
pub struct LatencyStats {
    samples: Vec<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencyStats {
    pub fn record(&mut self, ms: f64) {
        self.samples.push(ms);
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Nearest-rank percentiles (no interpolation: every reported value was really observed).
    pub fn percentiles(&self) -> Percentiles {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        let rank = |q: f64| -> f64 {
            if s.is_empty() {
                return 0.0;
            }
            let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
            s[i]
        };
        Percentiles { count: s.len(), p50_ms: rank(0.50), p99_ms: rank(0.99), max_ms: s.last().copied().unwrap_or(0.0) }
    }
}

/// Latency per named stage.
#[derive(Debug, Default, Clone)]
pub struct StageLatencies {
    pub stages: BTreeMap<String, LatencyStats>,
}

impl StageLatencies {
    pub fn record(&mut self, stage: &str, ms: f64) {
        self.stages.entry(stage.to_string()).or_default().record(ms);
    }

    pub fn summary(&self) -> BTreeMap<String, Percentiles> {
        self.stages.iter().map(|(k, v)| (k.clone(), v.percentiles())).collect()
    }
}

/// A bounded queue between two stages, observable without touching its messages.
pub struct QueueGauge {
    pub name: &'static str,
    pub capacity: usize,
    len: Box<dyn Fn() -> usize + Send + Sync>,
    max_seen: AtomicUsize,
}

impl QueueGauge {
    pub fn new<T: Send + 'static>(name: &'static str, rx: &crossbeam_channel::Receiver<T>) -> Self {
        let rx = rx.clone();
        QueueGauge { name, capacity: rx.capacity().unwrap_or(usize::MAX), len: Box::new(move || rx.len()), max_seen: AtomicUsize::new(0) }
    }

    pub fn depth(&self) -> usize {
        let d = (self.len)();
        self.max_seen.fetch_max(d, Ordering::Relaxed);
        d
    }

    pub fn max_seen(&self) -> usize {
        self.max_seen.load(Ordering::Relaxed)
    }
}

/// One queue's depth at one moment.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct QueueSample {
    pub name: &'static str,
    pub depth: usize,
    pub capacity: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueueReport {
    pub name: &'static str,
    pub capacity: usize,
    pub max_depth: usize,
}

/// All queues of a running pipeline.
#[derive(Default, Clone)]
pub struct QueueDepths {
    gauges: Arc<Mutex<Vec<Arc<QueueGauge>>>>,
}

impl QueueDepths {
    pub fn add(&self, gauge: QueueGauge) {
        self.gauges.lock().expect("queue gauges lock").push(Arc::new(gauge));
    }

    /// Current depth of every queue (and the deepest each got, for [`Self::report`]).
    pub fn sample(&self) -> Vec<QueueSample> {
        self.gauges
            .lock()
            .expect("queue gauges lock")
            .iter()
            .map(|g| QueueSample { name: g.name, depth: g.depth(), capacity: g.capacity })
            .collect()
    }

    pub fn report(&self) -> Vec<QueueReport> {
        self.gauges
            .lock()
            .expect("queue gauges lock")
            .iter()
            .map(|g| QueueReport { name: g.name, capacity: g.capacity, max_depth: g.max_seen() })
            .collect()
    }
}

/// Health of the remote path as the edge client measures it.
#[derive(Debug, Default)]
pub struct RemoteHealth {
    /// Exponentially weighted round-trip time, microseconds (0 until the first answer).
    pub rtt_ewma_us: AtomicU64,
    pub in_flight: AtomicUsize,
    pub sent: AtomicU64,
    pub answered: AtomicU64,
    pub failures: AtomicU64,
    pub consecutive_failures: AtomicU64,
    pub worker_queue_ewma_us: AtomicU64,
    pub connected: AtomicUsize,
    /// Frames sent remote that the small network answered instead (every failure ends so).
    pub fallbacks: AtomicU64,
    /// Of those, the ones a worker turned away because its queue was full.
    pub overloaded: AtomicU64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RemoteHealthSnapshot {
    pub rtt_ms: f64,
    pub in_flight: usize,
    pub sent: u64,
    pub answered: u64,
    pub failures: u64,
    pub consecutive_failures: u64,
    pub worker_queue_ms: f64,
    pub connected_workers: usize,
    pub fallbacks: u64,
    pub overloaded: u64,
}

impl RemoteHealth {
    fn ewma(cell: &AtomicU64, sample_us: u64) {
        let old = cell.load(Ordering::Relaxed);
        let new = if old == 0 { sample_us } else { (old * 7 + sample_us) / 8 };
        cell.store(new, Ordering::Relaxed);
    }

    pub fn record_answer(&self, rtt_us: u64, worker_queue_us: u64) {
        Self::ewma(&self.rtt_ewma_us, rtt_us);
        Self::ewma(&self.worker_queue_ewma_us, worker_queue_us);
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A frame sent remote went to the small network instead; `overloaded`: the worker said so.
    pub fn record_fallback(&self, overloaded: bool) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        if overloaded {
            self.overloaded.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> RemoteHealthSnapshot {
        RemoteHealthSnapshot {
            rtt_ms: self.rtt_ewma_us.load(Ordering::Relaxed) as f64 / 1000.0,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
            worker_queue_ms: self.worker_queue_ewma_us.load(Ordering::Relaxed) as f64 / 1000.0,
            connected_workers: self.connected.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            overloaded: self.overloaded.load(Ordering::Relaxed),
        }
    }
}

/// How late local frames are, for the control unit, readable from any thread: the age of
/// finished frames, exponentially weighted (each counts 1/8), and the age of the oldest frame
/// still on its way. Finished frames alone tell of a slowdown only after the slow frames
/// finish; on a starved device that is a second or more after it began.
#[derive(Debug, Default)]
pub struct LatencyGauge {
    ewma_us: AtomicU64,
    /// Capture instants of the frames sent down the path and not finished, oldest first.
    on_the_way: Mutex<std::collections::VecDeque<Instant>>,
}

impl LatencyGauge {
    /// A frame captured at `captured_at` starts down the path.
    pub fn started(&self, captured_at: Instant) {
        self.on_the_way.lock().expect("latency gauge lock").push_back(captured_at);
    }

    /// A frame captured at `captured_at` is finished (also one that never [`started`](Self::started),
    /// such as a remote frame falling back).
    pub fn finished(&self, captured_at: Instant) {
        self.record(captured_at.elapsed());
        let mut on_the_way = self.on_the_way.lock().expect("latency gauge lock");
        if let Some(i) = on_the_way.iter().position(|&t| t == captured_at) {
            on_the_way.remove(i);
        }
    }

    fn record(&self, latency: Duration) {
        RemoteHealth::ewma(&self.ewma_us, (latency.as_micros() as u64).max(1));
    }

    /// Age of finished frames; `None` until the first.
    pub fn ms(&self) -> Option<f64> {
        let us = self.ewma_us.load(Ordering::Relaxed);
        (us > 0).then(|| us as f64 / 1000.0)
    }

    /// Age of the oldest frame on its way; `None` when there is none.
    pub fn oldest_ms(&self) -> Option<f64> {
        self.on_the_way.lock().expect("latency gauge lock").front().map(|t| t.elapsed().as_secs_f64() * 1000.0)
    }
}

/// Where the frames of one stretch of a run went, by when they were captured.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RouteWindow {
    pub start_s: f64,
    pub frames: u64,
    pub local: u64,
    pub remote: u64,
    pub fallback: u64,
    /// Frames answered by the remote worker, over all frames of the window.
    pub remote_fraction: f64,
    /// Mean offloading threshold of the window's frames, when the policy has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_threshold: Option<f64>,
    #[serde(skip)]
    threshold_sum: f64,
    #[serde(skip)]
    thresholds: u64,
}

/// Counts finished frames per window of `window` since `started`, for the run summary.
#[derive(Debug)]
pub struct RouteTimeline {
    started: Instant,
    window: Duration,
    windows: Mutex<Vec<RouteWindow>>,
}

impl RouteTimeline {
    pub fn new(started: Instant, window: Duration) -> Self {
        RouteTimeline { started, window: window.max(Duration::from_millis(1)), windows: Mutex::default() }
    }

    /// One finished frame captured at `captured_at` and served by `source` ("local", "remote",
    /// "fallback"), decided with `threshold` if its policy has one.
    pub fn record(&self, captured_at: Instant, source: &str, threshold: Option<f32>) {
        let index = (captured_at.saturating_duration_since(self.started).as_secs_f64() / self.window.as_secs_f64()) as usize;
        let mut windows = self.windows.lock().expect("route timeline lock");
        while windows.len() <= index {
            let start_s = windows.len() as f64 * self.window.as_secs_f64();
            windows.push(RouteWindow { start_s, ..RouteWindow::default() });
        }
        let w = &mut windows[index];
        w.frames += 1;
        match source {
            "remote" => w.remote += 1,
            "fallback" => w.fallback += 1,
            _ => w.local += 1,
        }
        w.remote_fraction = w.remote as f64 / w.frames as f64;
        if let Some(threshold) = threshold {
            w.threshold_sum += f64::from(threshold);
            w.thresholds += 1;
            w.mean_threshold = Some(w.threshold_sum / w.thresholds as f64);
        }
    }

    pub fn windows(&self) -> Vec<RouteWindow> {
        self.windows.lock().expect("route timeline lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_lateness_shows_a_stuck_frame_before_it_finishes() {
        let gauge = LatencyGauge::default();
        assert_eq!((gauge.ms(), gauge.oldest_ms()), (None, None));
        let now = Instant::now();
        let (old, new) = (now - Duration::from_millis(400), now - Duration::from_millis(30));
        gauge.started(old);
        gauge.started(new);
        assert_eq!(gauge.ms(), None, "nothing finished yet");
        assert!(gauge.oldest_ms().is_some_and(|ms| ms >= 400.0), "the oldest frame on its way");
        gauge.finished(old);
        assert!(gauge.ms().is_some_and(|ms| ms >= 400.0), "the finished frame's age, the first sample");
        assert!(gauge.oldest_ms().is_some_and(|ms| (30.0..400.0).contains(&ms)), "now the younger one is the oldest");
        gauge.finished(new);
        gauge.finished(now - Duration::from_millis(10));
        assert!(gauge.on_the_way.lock().unwrap().is_empty(), "finishing a frame that never started removes nothing else");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = LatencyStats::default();
        for v in 1..=100 {
            s.record(v as f64);
        }
        let p = s.percentiles();
        assert_eq!((p.count, p.p50_ms, p.p99_ms, p.max_ms), (100, 50.0, 99.0, 100.0));
        assert_eq!(LatencyStats::default().percentiles().p50_ms, 0.0);
    }

    #[test]
    fn latency_gauge_follows_recent_samples() {
        let gauge = LatencyGauge::default();
        assert_eq!(gauge.ms(), None);
        gauge.record(Duration::from_millis(80));
        assert_eq!(gauge.ms(), Some(80.0));
        for _ in 0..40 {
            gauge.record(Duration::from_millis(20));
        }
        // Each sample counts 1/8: of the 60 ms step, 60 * (7/8)^40 = 0.29 ms is left (less up to
        // 1 µs per sample, as the average is kept in whole microseconds).
        let expected = 20.0 + 60.0 * (7.0f64 / 8.0).powi(40);
        let ms = gauge.ms().unwrap();
        assert!(ms <= expected && ms > expected - 0.04, "{ms} against {expected}");
        for _ in 0..40 {
            gauge.record(Duration::from_millis(20));
        }
        assert!((gauge.ms().unwrap() - 20.0).abs() < 0.01, "{:?}", gauge.ms());
    }

    #[test]
    fn route_timeline_counts_frames_per_window_by_capture_time() {
        let start = Instant::now();
        let timeline = RouteTimeline::new(start, Duration::from_secs(10));
        timeline.record(start + Duration::from_secs(1), "local", Some(0.25));
        timeline.record(start + Duration::from_secs(2), "remote", Some(0.5));
        timeline.record(start + Duration::from_secs(25), "fallback", None);
        let w = timeline.windows();
        assert_eq!(w.len(), 3, "an empty window in between is kept: {w:?}");
        assert_eq!((w[0].frames, w[0].local, w[0].remote, w[0].remote_fraction), (2, 1, 1, 0.5));
        assert_eq!((w[1].start_s, w[1].frames), (10.0, 0));
        assert_eq!((w[2].start_s, w[2].fallback, w[2].remote_fraction), (20.0, 1, 0.0));
        assert_eq!((w[0].mean_threshold, w[2].mean_threshold), (Some(0.375), None));
        let json = serde_json::to_value(&w[0]).unwrap();
        assert_eq!(json["mean_threshold"], 0.375);
        assert!(serde_json::to_value(&w[2]).unwrap().get("mean_threshold").is_none());
        let health = RemoteHealth::default();
        health.record_fallback(true);
        health.record_fallback(false);
        assert_eq!((health.snapshot().fallbacks, health.snapshot().overloaded), (2, 1));
    }

    #[test]
    fn queue_gauge_sees_depth() {
        let (tx, rx) = crossbeam_channel::bounded::<u8>(4);
        let depths = QueueDepths::default();
        depths.add(QueueGauge::new("q", &rx));
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(depths.sample(), vec![QueueSample { name: "q", depth: 2, capacity: 4 }]);
        rx.recv().unwrap();
        assert_eq!(depths.sample()[0].depth, 1);
        assert_eq!(depths.report()[0].max_depth, 2);
    }
}
