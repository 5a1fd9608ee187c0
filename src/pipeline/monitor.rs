//! While a run lasts: queue depths are sampled (the summary reports the deepest each got) and
//! written with remote health to `metrics.jsonl`, so a live deployment can be watched; the
//! control unit's ticks go into the same file as they come.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::select;
use serde::Serialize;

use crate::control::{ControlTick, LatestTick};
use crate::ingest::IngestStats;
use crate::metrics::{QueueDepths, RemoteHealth, RemoteHealthSnapshot};
use crate::shutdown::Shutdown;

/// How often queue depths are looked at, so that a short burst still shows in the maximum.
const QUEUE_SAMPLE_PERIOD: Duration = Duration::from_millis(20);

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
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsWriter {
    /// Metrics are an aid, not an output the run depends on: failures are logged, not fatal.
    fn create(dir: &Path) -> Option<Self> {
        let path = dir.join("metrics.jsonl");
        match std::fs::File::create(&path) {
            Ok(file) => Some(MetricsWriter { path, file }),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write metrics");
                None
            }
        }
    }

    fn write(&mut self, sample: &impl Serialize) {
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

/// A controller tick as a line of `metrics.jsonl`.
#[derive(Serialize)]
struct ControlSample<'a> {
    t_s: f64,
    control: &'a ControlTick,
}

/// What the monitor reads.
pub(super) struct Watched {
    pub(super) queues: QueueDepths,
    pub(super) ingest: Arc<IngestStats>,
    /// `None` when the remote path is off.
    pub(super) remote: Option<Arc<RemoteHealth>>,
    /// The controller's ticks, written as they come.
    pub(super) control: crossbeam_channel::Receiver<ControlTick>,
    /// Where the last tick is kept for `/metrics`.
    pub(super) latest_tick: Arc<LatestTick>,
    pub(super) started: Instant,
}

/// The monitor thread; [`Monitor::stop`] ends it.
pub(super) struct Monitor {
    finished: Shutdown,
    thread: JoinHandle<()>,
}

impl Monitor {
    /// Starts sampling; `metrics` gives the folder and period of `metrics.jsonl` (none: off).
    pub(super) fn start(watched: Watched, metrics: Option<(&Path, Duration)>) -> Self {
        let finished = Shutdown::new();
        let mut writer = metrics.and_then(|(dir, period)| MetricsWriter::create(dir).map(|w| (w, period)));
        let stop = finished.clone();
        let thread = std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || {
                let ticks = crossbeam_channel::tick(QUEUE_SAMPLE_PERIOD);
                let mut last_write = Instant::now();
                let write_ticks = |writer: &mut Option<(MetricsWriter, Duration)>| {
                    for tick in watched.control.try_iter() {
                        let t_s = tick.at.saturating_duration_since(watched.started).as_secs_f64();
                        if let Some((writer, _)) = writer.as_mut() {
                            writer.write(&ControlSample { t_s, control: &tick });
                        }
                        watched.latest_tick.set(tick);
                    }
                };
                loop {
                    write_ticks(&mut writer);
                    let depths = watched.queues.sample();
                    if let Some((writer, _)) = writer.as_mut().filter(|(_, period)| last_write.elapsed() >= *period) {
                        last_write = Instant::now();
                        writer.write(&MetricsSample {
                            t_s: watched.started.elapsed().as_secs_f64(),
                            frames_in: watched.ingest.frames_in.load(Ordering::Relaxed),
                            dropped: watched.ingest.dropped.load(Ordering::Relaxed),
                            queues: depths.iter().map(|q| (q.name, q.depth)).collect(),
                            remote: watched.remote.as_ref().map(|h| h.snapshot()),
                        });
                    }
                    select! {
                        recv(ticks) -> _ => {}
                        recv(stop.requested()) -> _ => return write_ticks(&mut writer),
                    }
                }
            })
            .expect("spawning the monitor thread");
        Monitor { finished, thread }
    }

    pub(super) fn stop(self) {
        self.finished.request();
        let _ = self.thread.join();
    }
}
