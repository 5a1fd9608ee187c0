//! Edge client: the pipeline stage that sends hard frames to remote workers over QUIC.
//!
//! Jobs arrive on a crossbeam channel from the decision stage. Each frame goes out on its own
//! bidirectional stream (frames never block each other), with a deadline. The answer goes
//! straight to the sink; a frame the remote cannot answer in time — worker unreachable,
//! overloaded, failing, or simply late — goes back to the local path (the small network) marked
//! as a fallback. No frame is ever lost. Connection health is measured into [`RemoteHealth`]
//! for the control unit.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::Semaphore;

use super::proto::{self, ImageEncoding, Limits, Request, ResponseBody};
use crate::config::{ImageEncodingChoice, RemoteConfig};
use crate::infer::ClassMap;
use crate::metrics::RemoteHealth;
use crate::pipeline::Job;
use crate::sink::{MaskSource, Segmented};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("remote.workers entry {0:?} does not resolve to an address: {1}")]
    Resolve(String, String),
    #[error("remote client TLS set-up failed: {0}")]
    Tls(#[from] super::tls::TlsError),
    #[error("remote.tls is not set; the remote path needs client certificates (run `edgeseg certs`)")]
    NoTls,
    #[error("cannot open the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// One worker and its current connection (None while down; a manager task reconnects).
struct WorkerSlot {
    label: String,
    addr: SocketAddr,
    connection: Mutex<Option<quinn::Connection>>,
    last_error: Mutex<Option<String>>,
    /// Frames in a row that went unanswered while the peer sent nothing at all. A worker that
    /// died without closing (crash, cable cut) looks alive until QUIC's idle timeout, whereas
    /// one that is merely slow still acknowledges our packets; so only total silence counts,
    /// and a slow worker keeps its connection.
    consecutive_failures: std::sync::atomic::AtomicU32,
}

/// Unanswered frames in a row, each met by total silence, after which the peer is presumed dead.
const FAILURES_BEFORE_RECONNECT: u32 = 3;

impl WorkerSlot {
    /// Counts a frame that got no answer; `peer_silent` when not a single datagram arrived while
    /// it was out (a live peer acknowledges our packets within milliseconds, even when busy).
    /// After a few such frames in a row the connection is closed so the reconnect loop starts.
    fn note_silence(&self, conn: &quinn::Connection, peer_silent: bool) {
        if !peer_silent {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        } else if self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1 >= FAILURES_BEFORE_RECONNECT {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            conn.close(1u32.into(), b"worker unresponsive");
        }
    }

    fn live_connection(&self) -> Option<quinn::Connection> {
        let guard = self.connection.lock().expect("connection lock");
        guard.as_ref().filter(|c| c.close_reason().is_none()).cloned()
    }
}

pub struct RemoteClient {
    settings: RemoteConfig,
    client_config: quinn::ClientConfig,
    workers: Vec<Arc<WorkerSlot>>,
    health: Arc<RemoteHealth>,
}

impl RemoteClient {
    pub fn new(settings: &RemoteConfig, health: Arc<RemoteHealth>) -> Result<Self, ClientError> {
        let tls = settings.tls.as_ref().ok_or(ClientError::NoTls)?;
        let client_config = super::tls::client_config(tls)?;
        let workers = settings
            .workers
            .iter()
            .map(|w| {
                let addr = w.resolve().map_err(|e| ClientError::Resolve(w.to_string(), e.to_string()))?;
                Ok(Arc::new(WorkerSlot {
                    label: w.to_string(),
                    addr,
                    connection: Mutex::new(None),
                    last_error: Mutex::new(None),
                    consecutive_failures: Default::default(),
                }))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(RemoteClient { settings: settings.clone(), client_config, workers, health })
    }

    /// Starts the stage thread. It ends when `jobs` closes and every frame in flight is answered.
    pub fn spawn(self, jobs: Receiver<Job>, answered: Sender<Segmented>, fallback: Sender<Job>) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name("remote-client".into())
            .spawn(move || {
                if let Err(e) = self.run(&jobs, &answered, &fallback) {
                    // Without a runtime or endpoint nothing can go remote: every frame falls back.
                    tracing::error!(error = %e, "remote path unavailable; all remote frames fall back to the small network");
                    for mut job in jobs {
                        job.fallback = Some(format!("remote path unavailable: {e}"));
                        if fallback.send(job).is_err() {
                            break;
                        }
                    }
                }
            })
            .expect("spawning the remote client thread")
    }

    fn run(self, jobs: &Receiver<Job>, answered: &Sender<Segmented>, fallback: &Sender<Job>) -> Result<(), ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("remote-io")
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        let bind: SocketAddr =
            if self.workers.iter().any(|w| w.addr.is_ipv6()) { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("literal socket address");
        let mut endpoint = {
            let _guard = runtime.enter();
            super::endpoint(bind, None).map_err(ClientError::Endpoint)?
        };
        endpoint.set_default_client_config(self.client_config.clone());

        let shared = Arc::new(Shared {
            settings: self.settings.clone(),
            workers: self.workers.clone(),
            health: self.health.clone(),
            next_worker: Mutex::new(0),
            answered: answered.clone(),
            fallback: fallback.clone(),
        });
        let stop = Arc::new(tokio::sync::Notify::new());
        for slot in &self.workers {
            runtime.spawn(keep_connected(endpoint.clone(), slot.clone(), self.settings.clone(), self.health.clone(), stop.clone()));
        }
        // Give the first connection attempt a moment so the first frames do not all fall back.
        runtime.block_on(wait_for_any_connection(&self.workers, self.settings.connect_timeout_ms.get()));
        if self.workers.iter().all(|w| w.live_connection().is_none()) {
            let reasons: Vec<String> = self
                .workers
                .iter()
                .map(|w| {
                    format!(
                        "{}: {}",
                        w.label,
                        w.last_error.lock().expect("error lock").clone().unwrap_or_else(|| "not connected yet".into())
                    )
                })
                .collect();
            tracing::warn!(workers = %reasons.join("; "), "no remote worker reachable; remote frames fall back to the small network until one is");
        }

        let in_flight = Arc::new(Semaphore::new(self.settings.max_in_flight.get()));
        let encoding = match self.settings.image_encoding {
            ImageEncodingChoice::Jpeg => ImageEncoding::Jpeg,
            ImageEncodingChoice::Raw => ImageEncoding::RawBgr8,
        };
        for job in jobs.iter() {
            // Bounded in-flight: the decision stage feels back-pressure instead of us queueing without limit.
            let permit = runtime.block_on(in_flight.clone().acquire_owned()).expect("semaphore never closed");
            let image = match super::image::encode(&job.frame.bgr, job.frame.width, job.frame.height, encoding, self.settings.jpeg_quality.get() as i32)
            {
                Ok(image) => image,
                Err(e) => {
                    shared.give_back(job, format!("frame could not be encoded: {e}"));
                    continue;
                }
            };
            let shared = shared.clone();
            runtime.spawn(async move {
                shared.health.in_flight.fetch_add(1, Ordering::Relaxed);
                shared.process(job, encoding, image).await;
                shared.health.in_flight.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
        // Input closed: wait until every frame in flight has its answer or its fallback.
        let _all = runtime.block_on(in_flight.acquire_many(self.settings.max_in_flight.get() as u32));
        stop.notify_waiters();
        endpoint.close(0u32.into(), b"edge shutting down");
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await.ok() });
        runtime.shutdown_timeout(Duration::from_secs(1));
        Ok(())
    }
}

async fn wait_for_any_connection(workers: &[Arc<WorkerSlot>], limit: Duration) {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if workers.iter().any(|w| w.live_connection().is_some()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Keeps one worker connected: connect, wait for the connection to close, reconnect with
/// exponential backoff. State changes are logged once, not per frame.
async fn keep_connected(
    endpoint: quinn::Endpoint,
    slot: Arc<WorkerSlot>,
    settings: RemoteConfig,
    health: Arc<RemoteHealth>,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut backoff = settings.reconnect_min_ms.get();
    let max_backoff = settings.reconnect_max_ms.get();
    let mut warned = false;
    loop {
        let attempt = async {
            let connecting = endpoint.connect(slot.addr, &settings.server_name).map_err(|e| e.to_string())?;
            match tokio::time::timeout(settings.connect_timeout_ms.get(), connecting).await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", settings.connect_timeout_ms)),
            }
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = stop.notified() => return,
        };
        match result {
            Ok(conn) => {
                tracing::info!(worker = %slot.label, "connected to remote worker");
                warned = false;
                backoff = settings.reconnect_min_ms.get();
                *slot.connection.lock().expect("connection lock") = Some(conn.clone());
                *slot.last_error.lock().expect("error lock") = None;
                health.connected.fetch_add(1, Ordering::Relaxed);
                let reason = tokio::select! {
                    r = conn.closed() => r.to_string(),
                    _ = stop.notified() => return,
                };
                health.connected.fetch_sub(1, Ordering::Relaxed);
                *slot.connection.lock().expect("connection lock") = None;
                tracing::warn!(worker = %slot.label, %reason, "lost the remote worker; reconnecting, frames fall back meanwhile");
                *slot.last_error.lock().expect("error lock") = Some(reason);
            }
            Err(reason) => {
                if !warned {
                    tracing::warn!(worker = %slot.label, %reason, "cannot reach remote worker; retrying with backoff");
                    warned = true;
                }
                *slot.last_error.lock().expect("error lock") = Some(reason);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = stop.notified() => return,
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

struct Shared {
    settings: RemoteConfig,
    workers: Vec<Arc<WorkerSlot>>,
    health: Arc<RemoteHealth>,
    next_worker: Mutex<usize>,
    answered: Sender<Segmented>,
    fallback: Sender<Job>,
}

impl Shared {
    /// Round-robin over connected workers.
    fn pick_worker(&self) -> Option<(Arc<WorkerSlot>, quinn::Connection)> {
        let mut next = self.next_worker.lock().expect("worker index lock");
        for i in 0..self.workers.len() {
            let slot = &self.workers[(*next + i) % self.workers.len()];
            if let Some(conn) = slot.live_connection() {
                *next = (*next + i + 1) % self.workers.len();
                return Some((slot.clone(), conn));
            }
        }
        None
    }

    /// Hands a frame to the small network. The local path always accepts eventually, so
    /// blocking here is back-pressure, not loss.
    fn give_back(&self, mut job: Job, reason: String) {
        tracing::debug!(order = job.order, %reason, "frame falls back to the small network");
        job.fallback = Some(reason);
        let _ = self.fallback.send(job);
    }

    /// [`Self::give_back`] from inside the runtime, where a blocking send must not stall the I/O thread.
    fn give_back_async(&self, job: Job, reason: String) {
        tokio::task::block_in_place(|| self.give_back(job, reason));
    }

    async fn process(&self, job: Job, encoding: ImageEncoding, image: Vec<u8>) {
        self.health.sent.fetch_add(1, Ordering::Relaxed);
        let Some((slot, conn)) = self.pick_worker() else {
            self.health.record_failure();
            let why = self.workers.iter().filter_map(|w| w.last_error.lock().expect("error lock").clone()).next();
            self.give_back_async(job, format!("no remote worker connected ({})", why.unwrap_or_else(|| "connecting".into())));
            return;
        };
        let started = Instant::now();
        let received_before = conn.stats().udp_rx.datagrams;
        let deadline = self.settings.deadline_ms.get();
        let request = Request {
            frame_id: job.order,
            deadline_ms: u32::try_from(self.settings.deadline_ms.units()).unwrap_or(u32::MAX),
            model: self.settings.model.clone(),
            width: job.frame.width,
            height: job.frame.height,
            encoding,
            image,
        };
        let outcome = match tokio::time::timeout(deadline, exchange(&conn, &request)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Silent(format!("deadline of {} ms passed", self.settings.deadline_ms))),
        };
        let rtt = started.elapsed();
        match outcome {
            Ok(mask) => {
                slot.consecutive_failures.store(0, Ordering::Relaxed);
                self.health.record_answer(rtt.as_micros() as u64, mask.queue_us as u64);
                let mut job = job;
                job.latency_ms.insert("remote", rtt.as_secs_f64() * 1000.0);
                let source = MaskSource::Remote {
                    worker: slot.label.clone(),
                    batch_size: mask.batch_size,
                    worker_queue_ms: mask.queue_us as f64 / 1000.0,
                    worker_inference_ms: mask.inference_us as f64 / 1000.0,
                };
                let map = ClassMap { width: mask.width, height: mask.height, classes: mask.class_map };
                let segmented = job.into_segmented(map, source);
                let _ = tokio::task::block_in_place(|| self.answered.send(segmented).is_ok());
            }
            Err(failure) => {
                self.health.record_failure();
                let reason = match failure {
                    // The worker answered (overloaded, late, ...): it is alive.
                    Failure::Answered(reason) => {
                        slot.consecutive_failures.store(0, Ordering::Relaxed);
                        reason
                    }
                    Failure::Silent(reason) => {
                        slot.note_silence(&conn, conn.stats().udp_rx.datagrams == received_before);
                        reason
                    }
                };
                self.give_back_async(job, format!("worker {}: {reason}", slot.label));
            }
        }
    }
}

/// Why a remote frame got no mask.
enum Failure {
    /// The worker replied, but with an error (overloaded, deadline, ...) or an unusable mask.
    Answered(String),
    /// No usable reply: transport failure or silence until the deadline.
    Silent(String),
}

/// One request/response exchange on a fresh bidirectional stream.
async fn exchange(conn: &quinn::Connection, request: &Request) -> Result<proto::MaskResult, Failure> {
    let reply = transfer(conn, request).await.map_err(Failure::Silent)?;
    check_reply(&reply, request).map_err(Failure::Answered)
}

async fn transfer(conn: &quinn::Connection, request: &Request) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(request.image.len() + 64);
    proto::encode_request(request, &mut bytes).map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("cannot open stream: {e}"))?;
    // Handed over as an owned chunk: quinn sends it without copying it into a buffer of its own.
    send.write_chunk(bytes.into()).await.map_err(|e| format!("send failed: {e}"))?;
    send.finish().map_err(|e| format!("send failed: {e}"))?;
    let limits = Limits::default();
    recv.read_to_end(limits.max_message_bytes + proto::LENGTH_PREFIX_BYTES).await.map_err(|e| format!("receive failed: {e}"))
}

fn check_reply(reply: &[u8], request: &Request) -> Result<proto::MaskResult, String> {
    let limits = Limits::default();
    let (prefix, body) = reply.split_at_checked(proto::LENGTH_PREFIX_BYTES).ok_or("reply shorter than its length prefix")?;
    let len = proto::body_length(prefix.try_into().expect("4 bytes"), &limits).map_err(|e| e.to_string())?;
    if len != body.len() {
        return Err(format!("reply declares {len} bytes, carries {}", body.len()));
    }
    let response = proto::decode_response(body, &limits).map_err(|e| format!("malformed reply: {e}"))?;
    if response.frame_id != request.frame_id {
        return Err(format!("reply for frame {} on the stream of frame {}", response.frame_id, request.frame_id));
    }
    match response.body {
        ResponseBody::Mask(mask) if (mask.width, mask.height) == (request.width, request.height) => Ok(mask),
        ResponseBody::Mask(mask) => Err(format!("mask is {}x{}, frame is {}x{}", mask.width, mask.height, request.width, request.height)),
        ResponseBody::Error { code, message } => Err(format!("{code:?}: {message}")),
    }
}
