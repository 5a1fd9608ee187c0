//! Remote worker: a QUIC server that segments hard frames with the large network.
//!
//! Each request arrives on its own bidirectional stream. The stream's task decodes and
//! preprocesses the image off the I/O threads, then queues it for its model. One batching thread
//! per model takes requests from every connected edge device, forms batches (up to
//! `max_batch`, waiting at most `max_wait_ms` for more), drops requests whose deadline has
//! passed without computing them, and answers each stream. The queue is bounded: when it is
//! full the worker says "overloaded" at once, so the edge falls back instead of waiting.
//!
//! On [`Shutdown`] the worker drains: it refuses new connections, answers streams that arrive
//! meanwhile with "shutting down" (the edge falls back at once), lets the frames already in
//! flight finish for at most [`DRAIN_LIMIT`], then closes every connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use super::batching::{Batch, BatchFormer};
use super::proto::{self, ErrorCode, Limits, MaskResult, Request, Response, ResponseBody};
use crate::config::WorkerConfig;
use crate::infer::{ClassMap, InferError, InputBuffer, Model, Placement};
use crate::shutdown::Shutdown;

/// Longest a shutting-down worker waits for the frames in flight; the edge's deadline is
/// usually far shorter, and a service manager waits longer (the shipped systemd units: 20 s).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error("worker TLS set-up failed: {0}")]
    Tls(#[from] super::tls::TlsError),
    #[error("cannot listen on {addr}: {source} (is another worker running there?)")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// The live counters behind [`WorkerStatus`], bumped by the I/O tasks and batching threads.
#[derive(Debug, Default)]
struct WorkerStats {
    /// Edge connections open now (a gauge, unlike the counters below).
    pub connections: AtomicU64,
    /// Requests being served now, from their stream's arrival to the reply (a gauge).
    pub in_flight: AtomicU64,
    pub answered: AtomicU64,
    pub rejected_overloaded: AtomicU64,
    pub expired: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub handshake_failures: AtomicU64,
    /// Batch size → number of batches run.
    pub batch_sizes: Mutex<BTreeMap<usize, u64>>,
    /// Times a batching thread took frames off its queue (expired-only batches included): the
    /// progress the health watch looks for while frames wait.
    pub batches_taken: AtomicU64,
    /// Frames in the batches being inferred now (a gauge).
    pub computing: AtomicU64,
    /// Batching threads still running; one per model while the worker serves.
    pub batchers_running: AtomicU64,
}

/// A point-in-time view of a running worker: what an operator (or a load balancer) needs to see
/// whether edges are being served or pushed to their local fallback, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerStatus {
    pub connections: u64,
    /// Requests being served now: what a shutdown waits for.
    pub in_flight: u64,
    /// Model → frames waiting for a batch now; near `batching.max_queue` means "overloaded" next.
    pub queued: BTreeMap<String, usize>,
    pub answered: u64,
    pub rejected_overloaded: u64,
    pub expired: u64,
    pub protocol_errors: u64,
    pub handshake_failures: u64,
    /// Batch size → number of batches run.
    pub batch_sizes: BTreeMap<usize, u64>,
    /// Times a batching thread took frames off its queue, expired-only batches included.
    pub batches_taken: u64,
    /// Frames in the batches being inferred now.
    pub computing: u64,
    /// Batching threads running (one per model while the worker serves).
    pub batchers_running: u64,
    /// Whether the worker is draining (shutdown requested).
    pub draining: bool,
}

/// A preprocessed request waiting for its batch.
struct Queued {
    input: InputBuffer,
    placement: Placement,
    enqueued: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<MaskResult, (ErrorCode, String)>>,
}

/// A running worker; dropping it without [`Worker::wait`] or [`Worker::shutdown`] leaves the
/// threads to the process end.
pub struct Worker {
    pub local_addr: SocketAddr,
    server: Arc<Server>,
    shutdown: Shutdown,
    endpoint: quinn::Endpoint,
    runtime: Option<tokio::runtime::Runtime>,
    batchers: Vec<JoinHandle<()>>,
}

struct ModelQueue {
    tx: Sender<Queued>,
    /// Shared with each request's preprocessing task, so nothing is deep-copied per frame.
    manifest: Arc<crate::infer::ModelManifest>,
}

impl Worker {
    /// Loads every model, binds the QUIC endpoint and serves until `shutdown` is requested.
    pub fn start(config: &WorkerConfig, shutdown: Shutdown) -> Result<Self, WorkerError> {
        let stats = Arc::new(WorkerStats::default());
        let mut queues = BTreeMap::new();
        let mut batchers = Vec::new();
        for (name, session) in &config.models {
            let model = Model::load(session)?;
            let (tx, rx) = crossbeam_channel::bounded(config.batching.max_queue.get());
            queues.insert(name.clone(), ModelQueue { tx, manifest: Arc::new(model.manifest.clone()) });
            let max_batch = config.batching.max_batch.get().min(model.max_batch);
            let max_wait = config.batching.max_wait_ms.get();
            let stats = stats.clone();
            // Counted before the thread starts, so no one sees a worker with a model unserved.
            stats.batchers_running.fetch_add(1, Ordering::Relaxed);
            batchers.push(
                std::thread::Builder::new()
                    .name(format!("batch-{name}"))
                    .spawn(move || batch_loop(model, rx, max_batch, max_wait, &stats))
                    .expect("spawning a batching thread"),
            );
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("worker-io")
            .enable_all()
            .build()
            .map_err(WorkerError::Runtime)?;
        let server_config = super::tls::server_config(&config.tls)?;
        let addr = config.listen;
        let endpoint = {
            let _guard = runtime.enter();
            super::endpoint(addr, Some(server_config)).map_err(|source| WorkerError::Listen { addr, source })?
        };
        let local_addr = endpoint.local_addr().map_err(|source| WorkerError::Listen { addr, source })?;
        let limits = Limits { max_message_bytes: config.max_message_mib.get() << 20, ..Limits::default() };
        let server = Arc::new(Server { queues, limits, stats, shutdown: shutdown.clone(), streams: TaskTracker::new() });
        runtime.spawn(accept_loop(endpoint.clone(), server.clone()));
        if let Some(interval) = config.status_interval_s.period() {
            runtime.spawn(report_status(server.clone(), interval));
        }
        tracing::info!(%local_addr, models = ?config.models.keys().collect::<Vec<_>>(), "worker listening");
        Ok(Worker { local_addr, server, shutdown, endpoint, runtime: Some(runtime), batchers })
    }

    /// Requests the shutdown and waits for it: see [`Worker::wait`].
    pub fn shutdown(self) -> WorkerStatus {
        self.shutdown.request();
        self.wait()
    }

    /// Serves until the shutdown is requested, then drains: waits at most [`DRAIN_LIMIT`] for
    /// the frames in flight, closes every connection and stops the batching threads. Returns
    /// the final status (frames finished during the drain included).
    pub fn wait(mut self) -> WorkerStatus {
        self.shutdown.wait();
        if let Some(rt) = self.runtime.take() {
            let (server, endpoint) = (&self.server, &self.endpoint);
            rt.block_on(async {
                server.streams.close();
                if tokio::time::timeout(DRAIN_LIMIT, server.streams.wait()).await.is_err() {
                    let in_flight = server.stats.in_flight.load(Ordering::Relaxed);
                    tracing::warn!(
                        in_flight,
                        limit_s = DRAIN_LIMIT.as_secs(),
                        "frames still in flight after the drain limit; closing anyway"
                    );
                }
                endpoint.close(0u32.into(), b"worker shutting down");
                // Let the endpoint send CONNECTION_CLOSE before its tasks are dropped, so edges notice at once.
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            });
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        let status = self.status();
        let Worker { server, batchers, .. } = self;
        // The tasks are gone with the runtime, so this was the last handle on the batch queues:
        // the batching threads see them close and end.
        drop(server);
        for b in batchers {
            let _ = b.join();
        }
        status
    }

    pub fn status(&self) -> WorkerStatus {
        self.server.status()
    }

    /// A handle that reads the worker's status while [`Worker::wait`] blocks (for `/metrics`,
    /// `/healthz` and the systemd status).
    pub fn probe(&self) -> WorkerProbe {
        WorkerProbe(Arc::downgrade(&self.server))
    }
}

/// Reads a running worker's status from any thread. It does not keep the worker alive: the
/// batching threads end when the worker drops its queues, whoever still holds a probe.
#[derive(Clone)]
pub struct WorkerProbe(std::sync::Weak<Server>);

impl WorkerProbe {
    /// `None` once the worker has shut down.
    pub fn status(&self) -> Option<WorkerStatus> {
        self.0.upgrade().map(|server| server.status())
    }
}

/// Logs the worker's status every `interval` (under systemd, into the journal; with
/// `--log-format json`, as fields a log shipper can graph), so an overloaded or idle worker is
/// visible while it runs, not only in the totals printed at shutdown.
async fn report_status(server: Arc<Server>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut answered_before = 0;
    loop {
        ticker.tick().await;
        let s = server.status();
        tracing::info!(
            connections = s.connections,
            queued = ?s.queued,
            answered_per_s = (s.answered - answered_before) as f64 / interval.as_secs_f64(),
            answered = s.answered,
            overloaded = s.rejected_overloaded,
            expired = s.expired,
            protocol_errors = s.protocol_errors,
            refused_handshakes = s.handshake_failures,
            "worker status"
        );
        answered_before = s.answered;
    }
}

struct Server {
    queues: BTreeMap<String, ModelQueue>,
    limits: Limits,
    stats: Arc<WorkerStats>,
    shutdown: Shutdown,
    /// Every stream being served, for the drain to wait on.
    streams: TaskTracker,
}

async fn accept_loop(endpoint: quinn::Endpoint, server: Arc<Server>) {
    while let Some(incoming) = endpoint.accept().await {
        if server.shutdown.is_requested() {
            // Draining: a refused edge turns to another worker or its small network at once.
            incoming.refuse();
            continue;
        }
        let server = server.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // Typically a client without a certificate from our CA.
                    server.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%remote, error = %e, "refused connection at the handshake");
                    return;
                }
            };
            tracing::info!(%remote, "edge connected");
            server.stats.connections.fetch_add(1, Ordering::Relaxed);
            loop {
                match connection.accept_bi().await {
                    Ok((send, recv)) => {
                        let draining = server.shutdown.is_requested();
                        server.stats.in_flight.fetch_add(1, Ordering::Relaxed);
                        let server = server.clone();
                        server.streams.clone().spawn(async move {
                            server.serve_stream(send, recv, draining).await;
                            server.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(e) => {
                        server.stats.connections.fetch_sub(1, Ordering::Relaxed);
                        tracing::info!(%remote, reason = %e, "edge disconnected");
                        return;
                    }
                }
            }
        });
    }
}

impl Server {
    fn status(&self) -> WorkerStatus {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let stats = &self.stats;
        WorkerStatus {
            connections: load(&stats.connections),
            in_flight: load(&stats.in_flight),
            queued: self.queues.iter().map(|(name, q)| (name.clone(), q.tx.len())).collect(),
            answered: load(&stats.answered),
            rejected_overloaded: load(&stats.rejected_overloaded),
            expired: load(&stats.expired),
            protocol_errors: load(&stats.protocol_errors),
            handshake_failures: load(&stats.handshake_failures),
            batch_sizes: stats.batch_sizes.lock().expect("stats lock").clone(),
            batches_taken: load(&stats.batches_taken),
            computing: load(&stats.computing),
            batchers_running: load(&stats.batchers_running),
            draining: self.shutdown.is_requested(),
        }
    }

    /// One frame: read, check, queue, answer. A bad message fails only this stream. A stream
    /// that arrived while `draining` is answered "shutting down" without being computed.
    async fn serve_stream(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream, draining: bool) {
        let received = Instant::now();
        let (frame_id, body) = match self.read_request(&mut recv).await {
            Ok(request) if draining => (request.frame_id, shutting_down()),
            Ok(request) => {
                let id = request.frame_id;
                (id, self.handle(request, received).await)
            }
            Err(message) => {
                self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%message, "malformed request; answering with a protocol error");
                (0, ResponseBody::Error { code: ErrorCode::Protocol, message })
            }
        };
        let mut bytes = Vec::new();
        if let Err(e) = proto::encode_response(&Response { frame_id, body }, &mut bytes) {
            tracing::error!(error = %e, "could not encode a response");
            let _ = send.reset(1u32.into());
            return;
        }
        if send.write_chunk(bytes.into()).await.is_ok() {
            let _ = send.finish();
            // Keep the stream until the peer has the bytes (or gives up), not a moment longer.
            let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
        }
    }

    async fn read_request(&self, recv: &mut quinn::RecvStream) -> Result<Request, String> {
        let mut prefix = [0u8; proto::LENGTH_PREFIX_BYTES];
        recv.read_exact(&mut prefix).await.map_err(|e| format!("cannot read the length prefix: {e}"))?;
        // The limit is checked before anything is allocated for the body.
        let len = proto::body_length(prefix, &self.limits).map_err(|e| e.to_string())?;
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body).await.map_err(|e| format!("cannot read a {len}-byte body: {e}"))?;
        let _ = recv.stop(0u32.into());
        proto::decode_request(&body, &self.limits).map_err(|e| e.to_string())
    }

    async fn handle(&self, request: Request, received: Instant) -> ResponseBody {
        let deadline = received + Duration::from_millis(request.deadline_ms as u64);
        let Some(queue) = self.queues.get(&request.model) else {
            let known: Vec<&String> = self.queues.keys().collect();
            return ResponseBody::Error {
                code: ErrorCode::UnknownModel,
                message: format!("no model {:?}; this worker serves {known:?}", request.model),
            };
        };
        let (width, height) = (request.width, request.height);
        let manifest = queue.manifest.clone();
        let prepared = tokio::task::spawn_blocking(move || -> Result<(InputBuffer, Placement), String> {
            let bgr = super::image::decode(&request.image, width, height, request.encoding).map_err(|e| e.to_string())?;
            let mut input = InputBuffer::new(&manifest, 1);
            let image = input.image_mut(0).ok_or("empty input buffer")?;
            let placement = crate::infer::preprocess(&bgr, width, height, &manifest, image).map_err(|e| e.to_string())?;
            Ok((input, placement))
        })
        .await;
        let (input, placement) = match prepared {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(message)) => return ResponseBody::Error { code: ErrorCode::BadRequest, message },
            Err(e) => return ResponseBody::Error { code: ErrorCode::Internal, message: e.to_string() },
        };
        let (reply, answer) = oneshot::channel();
        let item = Queued { input, placement, enqueued: Instant::now(), deadline, reply };
        match queue.tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.rejected_overloaded.fetch_add(1, Ordering::Relaxed);
                return ResponseBody::Error {
                    code: ErrorCode::Overloaded,
                    message: format!("queue of {} frames is full", queue.tx.capacity().unwrap_or(0)),
                };
            }
            Err(TrySendError::Disconnected(_)) => return shutting_down(),
        }
        match answer.await {
            Ok(Ok(mask)) => {
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
                ResponseBody::Mask(mask)
            }
            Ok(Err((code, message))) => ResponseBody::Error { code, message },
            Err(_) => ResponseBody::Error { code: ErrorCode::Internal, message: "batch thread ended".into() },
        }
    }
}

fn shutting_down() -> ResponseBody {
    ResponseBody::Error { code: ErrorCode::Internal, message: "worker is shutting down".into() }
}

/// Forms batches across all clients ([`BatchFormer`]) and runs them. Requests already past
/// their deadline are answered "deadline exceeded" without being computed: the edge has used
/// its local result. Ends when the queue closes (the worker shut down), after what it held.
fn batch_loop(mut model: Model, rx: Receiver<Queued>, max_batch: usize, max_wait: Duration, stats: &WorkerStats) {
    /// Uncounts the thread however it ends, a panic included.
    struct Running<'a>(&'a AtomicU64);
    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _running = Running(&stats.batchers_running);
    let mut input = InputBuffer::new(&model.manifest, max_batch);
    let mut former = BatchFormer::new(max_batch, max_wait);
    loop {
        let received = match former.due() {
            Some(due) => rx.recv_deadline(due),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let batch = match received {
            Ok(item) => {
                let deadline = item.deadline;
                former.push(item, deadline, Instant::now());
                former.take(Instant::now())
            }
            Err(RecvTimeoutError::Timeout) => former.take(Instant::now()),
            Err(RecvTimeoutError::Disconnected) => match former.flush(Instant::now()) {
                Some(batch) => Some(batch),
                None => return,
            },
        };
        let Some(Batch { live, expired }) = batch else { continue };
        stats.batches_taken.fetch_add(1, Ordering::Relaxed);
        for q in expired {
            stats.expired.fetch_add(1, Ordering::Relaxed);
            let _ = q.reply.send(Err((ErrorCode::DeadlineExceeded, "deadline passed while queued".into())));
        }
        if live.is_empty() {
            continue;
        }
        input.clear();
        let started = Instant::now();
        stats.computing.fetch_add(live.len() as u64, Ordering::Relaxed);
        let result = live.iter().try_for_each(|q| input.append(&q.input)).and_then(|()| model.run(&input));
        stats.computing.fetch_sub(live.len() as u64, Ordering::Relaxed);
        let inference_us = started.elapsed().as_micros() as u32;
        *stats.batch_sizes.lock().expect("stats lock").entry(live.len()).or_default() += 1;
        match result {
            Ok(output) => {
                for (i, q) in live.into_iter().enumerate() {
                    let answer = output
                        .class_map(i, &q.placement)
                        .map(|ClassMap { width, height, classes }| MaskResult {
                            width,
                            height,
                            class_map: classes,
                            queue_us: started.duration_since(q.enqueued).as_micros() as u32,
                            inference_us,
                            batch_size: output.batch() as u16,
                        })
                        .map_err(|e| (ErrorCode::Internal, e.to_string()));
                    let _ = q.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "batch inference failed");
                for q in live {
                    let _ = q.reply.send(Err((ErrorCode::Internal, e.to_string())));
                }
            }
        }
    }
}
