//! The remote worker as operators see it, read from [`WorkerStatus`] (the counters behind the
//! "worker status" log line and the totals printed at shutdown) whenever it is asked for.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::registry::Registry;

use super::exposition::{self, Scrape, Scraped};
use super::{RateMeter, Vitals};
use crate::config::WorkerConfig;
use crate::metrics::health::{BacklogCounts, BacklogWatch, Condition};
use crate::remote::worker::{WorkerProbe, WorkerStatus};

/// Upper bounds of the batch-size histogram (batches are at most 64 frames, see `max_batch`).
const BATCH_BOUNDS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, f64::INFINITY];

struct WorkerShared {
    probe: WorkerProbe,
    /// `batching.max_queue`: every model's queue has this capacity.
    queue_capacity: usize,
    watch: Mutex<BacklogWatch>,
    rate: Mutex<RateMeter>,
}

/// A running worker's telemetry, for an [`super::Service`].
pub struct WorkerTelemetry {
    shared: Arc<WorkerShared>,
    registry: Registry,
}

impl WorkerTelemetry {
    pub fn new(probe: WorkerProbe, config: &WorkerConfig) -> Self {
        let shared = Arc::new(WorkerShared {
            probe,
            queue_capacity: config.batching.max_queue.get(),
            watch: Mutex::new(BacklogWatch::new(config.health.stall_s.get(), Instant::now())),
            rate: Mutex::default(),
        });
        let registry = exposition::registry("edgeseg_worker", shared.clone());
        WorkerTelemetry { shared, registry }
    }
}

impl Vitals for WorkerTelemetry {
    /// A worker exists once it listens.
    fn ready(&self) -> bool {
        true
    }

    fn condition(&self) -> Condition {
        self.shared.probe.status().map_or(Condition::Stopping, |s| self.shared.condition(&s))
    }

    fn status_line(&self, condition: &Condition) -> String {
        let Some(s) = self.shared.probe.status() else { return condition.to_string() };
        let answered_per_s = self.shared.rate.lock().expect("rate lock").per_second(s.answered, Instant::now());
        let queued: Vec<String> = s.queued.iter().map(|(model, n)| format!("{model} {n}/{}", self.shared.queue_capacity)).collect();
        format!(
            "{condition}; {} edge(s) connected, {answered_per_s:.1} frames/s answered; queued {}, {} in a batch; \
             overloaded {}, expired {}, protocol errors {}, refused handshakes {}",
            s.connections,
            queued.join(", "),
            s.computing,
            s.rejected_overloaded,
            s.expired,
            s.protocol_errors,
            s.handshake_failures
        )
    }

    fn encode_metrics(&self, out: &mut String) -> fmt::Result {
        prometheus_client::encoding::text::encode(out, &self.registry)
    }
}

impl WorkerShared {
    fn condition(&self, s: &WorkerStatus) -> Condition {
        if s.draining {
            return Condition::Stopping;
        }
        let models = s.queued.len() as u64;
        if s.batchers_running < models {
            return Condition::Stalled(format!(
                "{} of {models} batching threads ended: their model is not served",
                models - s.batchers_running
            ));
        }
        let counts = BacklogCounts {
            backlog: s.queued.values().sum::<usize>() as u64 + s.computing,
            taken: s.batches_taken,
            finished: s.answered + s.rejected_overloaded + s.expired,
        };
        self.watch.lock().expect("health watch lock").observe(counts, Instant::now())
    }
}

impl Scraped for WorkerShared {
    fn scrape(&self, scrape: &mut Scrape) -> fmt::Result {
        let Some(s) = self.probe.status() else { return scrape.health(&Condition::Stopping) };
        scrape.health(&self.condition(&s))?;
        scrape.gauge("connections", "Edge connections open now", s.connections as i64)?;
        scrape.gauge("in_flight", "Requests being served now, from arrival to reply", s.in_flight as i64)?;
        let queued = || s.queued.iter().map(|(model, n)| ([("model", model.as_str())], *n as i64));
        scrape.gauges("queue_depth", "Frames waiting for a batch, by model", None, queued())?;
        let capacity = queued().map(|(labels, _)| (labels, self.queue_capacity as i64));
        scrape.gauges("queue_capacity", "Frames a model's queue holds before answering overloaded", None, capacity)?;
        scrape.gauge("computing", "Frames in the batches being inferred now", s.computing as i64)?;
        scrape.counter("answered", "Frames answered with a mask", s.answered)?;
        scrape.counter("overloaded", "Frames refused at once because the queue was full (the edge fell back)", s.rejected_overloaded)?;
        scrape.counter("expired", "Frames dropped unanswered because their deadline passed while queued", s.expired)?;
        scrape.counter("protocol_errors", "Malformed requests", s.protocol_errors)?;
        scrape.counter(
            "refused_handshakes",
            "Connections refused at the TLS handshake (e.g. a client certificate from another CA)",
            s.handshake_failures,
        )?;
        let (sum, count, buckets) = batch_histogram(&s);
        scrape.histogram("batch_size", "Frames per batch run", sum, count, &buckets)
    }
}

/// Sum, count and per-bucket counts of the batch sizes.
fn batch_histogram(s: &WorkerStatus) -> (f64, u64, Vec<(f64, u64)>) {
    let mut buckets = BATCH_BOUNDS.map(|bound| (bound, 0u64));
    for (&size, &batches) in &s.batch_sizes {
        if let Some(bucket) = buckets.iter_mut().find(|(bound, _)| size as f64 <= *bound) {
            bucket.1 += batches;
        }
    }
    let frames: u64 = s.batch_sizes.iter().map(|(&size, &batches)| size as u64 * batches).sum();
    (frames as f64, s.batch_sizes.values().sum(), buckets.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_fall_in_the_first_bucket_that_holds_them() {
        let status = WorkerStatus {
            connections: 0,
            in_flight: 0,
            queued: Default::default(),
            answered: 0,
            rejected_overloaded: 0,
            expired: 0,
            protocol_errors: 0,
            handshake_failures: 0,
            batch_sizes: [(1, 5), (3, 2), (4, 1)].into_iter().collect(),
            batches_taken: 0,
            computing: 0,
            batchers_running: 0,
            draining: false,
        };
        let (sum, count, buckets) = batch_histogram(&status);
        assert_eq!((sum, count), (15.0, 8));
        assert_eq!(&buckets[..3], &[(1.0, 5), (2.0, 0), (4.0, 3)]);
        assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), 8);
    }
}
