//! What a run did, printed at the end and written to `summary.json`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::frame::Segmented;
use crate::metrics::{Percentiles, QueueReport, RemoteHealthSnapshot, RouteTimeline, RouteWindow};
use crate::sink::{Observer, SinkError, SinkReport, Written};

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
    pub frame_memory: FrameMemory,
    /// Where the frames went, per `output.route_window_s` of capture time.
    pub route_windows: Vec<RouteWindow>,
    pub released_out_of_order: u64,
    pub outputs: Written,
    pub error: Option<String>,
}

/// Bytes of frames in flight (pixels and class maps) against `pipeline.max_frame_mib_in_flight`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FrameMemory {
    pub budget_bytes: u64,
    /// The most ever in flight; above the budget only when a single frame is larger than it.
    pub peak_bytes: u64,
}

/// Counts every finished frame into the run's route windows, as the outputs see it.
pub(super) struct RouteCounter(pub(super) std::sync::Arc<RouteTimeline>);

impl Observer for RouteCounter {
    fn observe(&mut self, frame: &Segmented) -> Result<(), SinkError> {
        self.0.record(frame.frame.captured_at, frame.source.label(), frame.decision.as_ref().and_then(|d| d.threshold));
        Ok(())
    }

    fn needs_pixels(&self) -> bool {
        false
    }
}

/// What the ingest counted.
pub(super) struct Intake {
    pub(super) frames_in: u64,
    pub(super) dropped: u64,
    pub(super) live: bool,
    pub(super) frame_memory: FrameMemory,
}

impl RunSummary {
    pub(super) fn new(
        intake: Intake,
        sink: SinkReport,
        wall_s: f64,
        queues: Vec<QueueReport>,
        remote: Option<RemoteHealthSnapshot>,
        route_windows: Vec<RouteWindow>,
        error: Option<String>,
    ) -> Self {
        RunSummary {
            frames_in: intake.frames_in,
            frames_out: sink.frames_out,
            dropped: intake.dropped,
            live_source: intake.live,
            wall_s,
            fps: sink.frames_out as f64 / wall_s.max(1e-9),
            steady_fps: sink.steady_fps(),
            latency: sink.latencies.summary(),
            by_source: sink.by_source,
            queues,
            remote,
            frame_memory: intake.frame_memory,
            route_windows,
            released_out_of_order: sink.released_out_of_order,
            outputs: sink.written,
            error,
        }
    }

    /// Where the frames went over time, one `remote share (mean threshold)` per route window,
    /// e.g. `0.05 (0.10), 0.62 (0.71)`; `None` when no frame went remote and none had a threshold.
    pub fn remote_share_over_time(&self) -> Option<String> {
        let w = &self.route_windows;
        if w.iter().all(|w| w.remote + w.fallback == 0 && w.mean_threshold.is_none()) {
            return None;
        }
        let cell = |w: &RouteWindow| match w.mean_threshold {
            Some(t) => format!("{:.2} ({t:.2})", w.remote_fraction),
            None => format!("{:.2}", w.remote_fraction),
        };
        Some(w.iter().map(cell).collect::<Vec<_>>().join(", "))
    }

    /// `summary.json` is a convenience beside the outputs: failing to write it is logged only.
    pub(super) fn write(&self, dir: &Path) {
        if let Ok(text) = serde_json::to_string_pretty(self) {
            let path = dir.join("summary.json");
            if let Err(e) = std::fs::write(&path, text) {
                tracing::warn!(path = %path.display(), error = %e, "could not write the summary");
            }
        }
    }
}
