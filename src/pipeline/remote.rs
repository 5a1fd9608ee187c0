//! The remote stage: jobs the decision stage routed remote go through the [`RemoteClient`]; an
//! answered frame goes straight to the sink, a frame the remote path could not answer goes back
//! to the local path marked as a fallback, with the reason. No frame is ever lost.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::Semaphore;

use super::PixelsDone;
use crate::frame::{Job, MaskSource, Segmented};
use crate::metrics::RemoteHealth;
use crate::remote::client::{ExchangeError, Failure, RemoteClient, RemoteMask};
use crate::remote::proto::ErrorCode;

/// The stage's body; it ends when `jobs` closes and every frame in flight is answered or given
/// back. At most `max_in_flight` frames are out at once, so the decision stage feels
/// back-pressure instead of frames queueing without limit. A frame keeps its pixels until it is
/// answered (a fallback needs them). Every
/// fallback is counted in `health` (the control unit lowers its threshold on them).
pub(super) fn remote_stage(
    mut client: RemoteClient,
    jobs: Receiver<Job>,
    answered: (Sender<Segmented>, PixelsDone),
    fallback: Sender<Job>,
    max_in_flight: usize,
    health: Arc<RemoteHealth>,
) -> impl FnOnce() + Send + 'static {
    move || {
        let fallback = Fallback { local: fallback, health };
        let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("remote-io").enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => return fallback.all(jobs, &format!("cannot start the async runtime: {e}")),
        };
        if let Err(e) = runtime.block_on(client.connect()) {
            return fallback.all(jobs, &e.to_string());
        }
        let client = Arc::new(client);
        let in_flight = Arc::new(Semaphore::new(max_in_flight));
        for job in jobs.iter() {
            let permit = runtime.block_on(in_flight.clone().acquire_owned()).expect("semaphore never closed");
            let encoded = match client.encode(&job.frame) {
                Ok(encoded) => encoded,
                Err(e) => {
                    fallback.give_back(job, e.to_string(), false);
                    continue;
                }
            };
            let (client, answered, fallback) = (client.clone(), answered.clone(), fallback.clone());
            runtime.spawn(async move {
                let result = client.exchange(job.order, encoded).await;
                // The next stages' queues are bounded: wait for room without stalling the I/O thread.
                tokio::task::block_in_place(|| match result {
                    Ok(mask) => {
                        let (answered, pixels) = answered;
                        let mut segmented = into_segmented(job, mask);
                        pixels.done(&mut segmented.frame);
                        let _ = answered.send(segmented);
                    }
                    Err(e) => {
                        let overloaded =
                            matches!(&e, ExchangeError::Failed { failure: Failure::Refused { code: ErrorCode::Overloaded, .. }, .. });
                        fallback.give_back(job, e.to_string(), overloaded)
                    }
                });
                drop(permit);
            });
        }
        // Input closed: wait until every frame in flight has its answer or its fallback.
        let _all = runtime.block_on(in_flight.acquire_many(max_in_flight as u32));
        runtime.block_on(client.close());
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

fn into_segmented(mut job: Job, mask: RemoteMask) -> Segmented {
    job.latency_ms.insert("remote", mask.round_trip.as_secs_f64() * 1000.0);
    let source = MaskSource::Remote {
        worker: mask.worker,
        batch_size: mask.batch_size,
        worker_queue_ms: mask.worker_queue.as_micros() as f64 / 1000.0,
        worker_inference_ms: mask.worker_inference.as_micros() as f64 / 1000.0,
    };
    job.into_segmented(mask.class_map, source)
}

/// The way back to the small network, counting what takes it.
#[derive(Clone)]
struct Fallback {
    local: Sender<Job>,
    health: Arc<RemoteHealth>,
}

impl Fallback {
    /// Hands a frame to the small network. The local path always accepts eventually, so
    /// blocking here is back-pressure, not loss.
    fn give_back(&self, mut job: Job, reason: String, overloaded: bool) {
        tracing::debug!(order = job.order, %reason, "frame falls back to the small network");
        self.health.record_fallback(overloaded);
        job.fallback = Some(reason);
        let _ = self.local.send(job);
    }

    /// Without a runtime or endpoint nothing can go remote: every frame falls back.
    fn all(&self, jobs: Receiver<Job>, why: &str) {
        tracing::error!(error = %why, "remote path unavailable; all remote frames fall back to the small network");
        for job in jobs {
            self.give_back(job, format!("remote path unavailable: {why}"), false);
        }
    }
}
