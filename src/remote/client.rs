//! Edge client: segments frames with the large network on remote workers over QUIC.
//!
//! A plain API: [`RemoteClient::segment`] (or [`RemoteClient::encode`] on the caller's thread,
//! then [`RemoteClient::exchange`]) answers one frame with the worker's [`RemoteMask`], or with an
//! [`ExchangeError`] saying why there is none: no worker connected, or the worker was
//! overloaded, failing, silent or late. Each frame goes out on its own bidirectional stream
//! (frames never block each other) and must be answered within `remote.deadline_ms`.
//!
//! In the background the client keeps every worker connected (reconnecting with
//! [`Backoff`]), closes a connection whose peer fell [`Silence`]-silent, spreads frames
//! round-robin over the connected workers, and measures [`RemoteHealth`] for the control unit.
//! What becomes of a frame without a mask is the caller's business (the pipeline gives it to
//! the small network).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::image::ImageError;
use super::liveness::{Backoff, Silence};
use super::proto::{self, ErrorCode, ImageEncoding, Limits, ProtoError, Request, ResponseBody};
use crate::config::{ImageEncodingChoice, RemoteConfig, WorkerAddr};
use crate::frame::{ClassMap, Frame};
use crate::metrics::RemoteHealth;
use crate::shutdown::Shutdown;

/// Why the remote path cannot start at all.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("remote.workers entry \"{worker}\" does not resolve to an address: {source}")]
    Resolve { worker: WorkerAddr, source: std::io::Error },
    #[error("remote client TLS set-up failed: {0}")]
    Tls(#[from] super::tls::TlsError),
    #[error("remote.tls is not set; the remote path needs client certificates (run `edgeseg certs`)")]
    NoTls,
    #[error("cannot open the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
}

/// Why one frame got no mask from the remote path.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("frame could not be encoded: {0}")]
    Encode(#[from] ImageError),
    #[error("no remote worker connected ({last_error})")]
    NoWorkerConnected { last_error: String },
    #[error("worker {worker}: {failure}")]
    Failed { worker: String, failure: Failure },
}

/// What went wrong on a worker's stream.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("deadline of {0} ms passed")]
    Deadline(u64),
    #[error("{0}")]
    EncodeRequest(ProtoError),
    #[error("cannot open stream: {0}")]
    OpenStream(quinn::ConnectionError),
    #[error("send failed: {0}")]
    Write(quinn::WriteError),
    #[error("send failed: {0}")]
    Finish(quinn::ClosedStream),
    #[error("receive failed: {0}")]
    Receive(quinn::ReadToEndError),
    #[error("reply shorter than its length prefix")]
    ShortReply,
    #[error("{0}")]
    ReplyLength(ProtoError),
    #[error("reply declares {declared} bytes, carries {carried}")]
    LengthMismatch { declared: usize, carried: usize },
    #[error("malformed reply: {0}")]
    Malformed(ProtoError),
    #[error("reply for frame {answered} on the stream of frame {sent}")]
    WrongFrame { answered: u64, sent: u64 },
    #[error("mask is {mask_width}x{mask_height}, frame is {frame_width}x{frame_height}")]
    WrongSize { mask_width: u32, mask_height: u32, frame_width: u32, frame_height: u32 },
    #[error("{code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
}

impl Failure {
    /// The worker replied (overloaded, late, a bad mask ...): it is alive, only this frame failed.
    fn peer_answered(&self) -> bool {
        !matches!(
            self,
            Failure::Deadline(_)
                | Failure::EncodeRequest(_)
                | Failure::OpenStream(_)
                | Failure::Write(_)
                | Failure::Finish(_)
                | Failure::Receive(_)
        )
    }
}

/// A frame ready to leave: encoded once, on the caller's thread, off the I/O runtime.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    pub width: u32,
    pub height: u32,
    pub encoding: ImageEncoding,
    pub image: Vec<u8>,
}

/// A worker's answer for one frame.
#[derive(Debug, Clone)]
pub struct RemoteMask {
    pub class_map: ClassMap,
    pub worker: String,
    pub batch_size: u16,
    pub worker_queue: Duration,
    pub worker_inference: Duration,
    pub round_trip: Duration,
}

/// One worker and its current connection (None while down; a task reconnects).
struct WorkerSlot {
    label: String,
    addr: SocketAddr,
    connection: Mutex<Option<quinn::Connection>>,
    last_error: Mutex<Option<String>>,
    silence: Mutex<Silence>,
}

impl WorkerSlot {
    fn live_connection(&self) -> Option<quinn::Connection> {
        let guard = self.connection.lock().expect("connection lock");
        guard.as_ref().filter(|c| c.close_reason().is_none()).cloned()
    }

    fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock").clone()
    }

    fn set_last_error(&self, reason: Option<String>) {
        *self.last_error.lock().expect("error lock") = reason;
    }
}

pub struct RemoteClient {
    settings: RemoteConfig,
    client_config: quinn::ClientConfig,
    workers: Vec<Arc<WorkerSlot>>,
    health: Arc<RemoteHealth>,
    next_worker: Mutex<usize>,
    endpoint: Option<quinn::Endpoint>,
    /// How many workers are connected now, for [`Self::connect`] to wait on.
    connected: watch::Sender<usize>,
    /// Ends the reconnect tasks.
    shutdown: Shutdown,
}

impl RemoteClient {
    /// Loads the TLS identity and resolves the workers: what the configuration can get wrong
    /// fails here, before anything starts.
    pub fn new(settings: &RemoteConfig, health: Arc<RemoteHealth>) -> Result<Self, ClientError> {
        let tls = settings.tls.as_ref().ok_or(ClientError::NoTls)?;
        let client_config = super::tls::client_config(tls)?;
        let workers = settings
            .workers
            .iter()
            .map(|w| {
                let addr = w.resolve().map_err(|source| ClientError::Resolve { worker: w.clone(), source })?;
                Ok(Arc::new(WorkerSlot {
                    label: w.to_string(),
                    addr,
                    connection: Mutex::new(None),
                    last_error: Mutex::new(None),
                    silence: Mutex::default(),
                }))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(RemoteClient {
            settings: settings.clone(),
            client_config,
            workers,
            health,
            next_worker: Mutex::new(0),
            endpoint: None,
            connected: watch::Sender::new(0),
            shutdown: Shutdown::new(),
        })
    }

    /// Opens the QUIC endpoint and starts keeping every worker connected, on the current tokio
    /// runtime; waits up to `remote.connect_timeout_ms` for a first connection so the first
    /// frames do not all fall back.
    pub async fn connect(&mut self) -> Result<(), ClientError> {
        let bind: SocketAddr =
            if self.workers.iter().any(|w| w.addr.is_ipv6()) { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("literal socket address");
        let mut endpoint = super::endpoint(bind, None).map_err(ClientError::Endpoint)?;
        endpoint.set_default_client_config(self.client_config.clone());
        for slot in &self.workers {
            let task = KeepConnected {
                endpoint: endpoint.clone(),
                slot: slot.clone(),
                settings: self.settings.clone(),
                health: self.health.clone(),
                connected: self.connected.clone(),
                shutdown: self.shutdown.clone(),
            };
            tokio::spawn(task.run());
        }
        self.endpoint = Some(endpoint);
        let mut connected = self.connected.subscribe();
        let _ = tokio::time::timeout(self.settings.connect_timeout_ms.get(), connected.wait_for(|n| *n > 0)).await;
        if self.workers.iter().all(|w| w.live_connection().is_none()) {
            let reasons: Vec<String> = self
                .workers
                .iter()
                .map(|w| format!("{}: {}", w.label, w.last_error().unwrap_or_else(|| "not connected yet".into())))
                .collect();
            tracing::warn!(workers = %reasons.join("; "), "no remote worker reachable; remote frames fall back to the small network until one is");
        }
        Ok(())
    }

    /// Encodes a frame as `remote.image_encoding` says (CPU work: call it off the I/O runtime).
    pub fn encode(&self, frame: &Frame) -> Result<EncodedFrame, ExchangeError> {
        let encoding = match self.settings.image_encoding {
            ImageEncodingChoice::Jpeg => ImageEncoding::Jpeg,
            ImageEncodingChoice::Raw => ImageEncoding::RawBgr8,
        };
        let quality = self.settings.jpeg_quality.get() as i32;
        let image = super::image::encode(&frame.bgr, frame.width, frame.height, encoding, quality)?;
        Ok(EncodedFrame { width: frame.width, height: frame.height, encoding, image })
    }

    /// Encodes and exchanges one frame.
    pub async fn segment(&self, frame_id: u64, frame: &Frame) -> Result<RemoteMask, ExchangeError> {
        let encoded = self.encode(frame)?;
        self.exchange(frame_id, encoded).await
    }

    /// Sends one encoded frame to the next connected worker and waits for its mask, at most
    /// `remote.deadline_ms`.
    pub async fn exchange(&self, frame_id: u64, frame: EncodedFrame) -> Result<RemoteMask, ExchangeError> {
        self.health.in_flight.fetch_add(1, Ordering::Relaxed);
        let result = self.exchange_counted(frame_id, frame).await;
        self.health.in_flight.fetch_sub(1, Ordering::Relaxed);
        result
    }

    async fn exchange_counted(&self, frame_id: u64, frame: EncodedFrame) -> Result<RemoteMask, ExchangeError> {
        self.health.sent.fetch_add(1, Ordering::Relaxed);
        let Some((slot, conn)) = self.pick_worker() else {
            self.health.record_failure();
            let last_error = self.workers.iter().find_map(|w| w.last_error()).unwrap_or_else(|| "connecting".into());
            return Err(ExchangeError::NoWorkerConnected { last_error });
        };
        let started = Instant::now();
        let received_before = conn.stats().udp_rx.datagrams;
        let deadline = self.settings.deadline_ms;
        let request = Request {
            frame_id,
            deadline_ms: u32::try_from(deadline.units()).unwrap_or(u32::MAX),
            model: self.settings.model.clone(),
            width: frame.width,
            height: frame.height,
            encoding: frame.encoding,
            image: frame.image,
        };
        let outcome = match tokio::time::timeout(deadline.get(), round_trip(&conn, &request)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Deadline(deadline.units())),
        };
        let round_trip = started.elapsed();
        let mut silence = slot.silence.lock().expect("silence lock");
        match outcome {
            Ok(mask) => {
                silence.answered();
                self.health.record_answer(round_trip.as_micros() as u64, mask.queue_us as u64);
                Ok(RemoteMask {
                    class_map: ClassMap { width: mask.width, height: mask.height, classes: mask.class_map },
                    worker: slot.label.clone(),
                    batch_size: mask.batch_size,
                    worker_queue: Duration::from_micros(mask.queue_us.into()),
                    worker_inference: Duration::from_micros(mask.inference_us.into()),
                    round_trip,
                })
            }
            Err(failure) => {
                self.health.record_failure();
                if failure.peer_answered() {
                    silence.answered();
                } else if silence.unanswered(conn.stats().udp_rx.datagrams == received_before) {
                    conn.close(1u32.into(), b"worker unresponsive");
                }
                Err(ExchangeError::Failed { worker: slot.label.clone(), failure })
            }
        }
    }

    /// Stops reconnecting and closes every connection, letting the workers know at once.
    pub async fn close(&self) {
        self.shutdown.request();
        if let Some(endpoint) = &self.endpoint {
            endpoint.close(0u32.into(), b"edge shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }

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
}

/// Keeps one worker connected: connect, wait for the connection to close, reconnect with
/// backoff. State changes are logged once, not per attempt.
struct KeepConnected {
    endpoint: quinn::Endpoint,
    slot: Arc<WorkerSlot>,
    settings: RemoteConfig,
    health: Arc<RemoteHealth>,
    connected: watch::Sender<usize>,
    shutdown: Shutdown,
}

impl KeepConnected {
    async fn run(self) {
        let settings = &self.settings;
        let mut backoff = Backoff::new(settings.reconnect_min_ms.get(), settings.reconnect_max_ms.get());
        loop {
            let result = tokio::select! {
                r = self.attempt() => r,
                _ = self.shutdown.cancelled() => return,
            };
            match result {
                Ok(conn) => {
                    tracing::info!(worker = %self.slot.label, "connected to remote worker");
                    backoff.connected();
                    *self.slot.connection.lock().expect("connection lock") = Some(conn.clone());
                    self.slot.set_last_error(None);
                    self.health.connected.fetch_add(1, Ordering::Relaxed);
                    self.connected.send_modify(|n| *n += 1);
                    let reason = tokio::select! {
                        r = conn.closed() => r.to_string(),
                        _ = self.shutdown.cancelled() => return,
                    };
                    self.health.connected.fetch_sub(1, Ordering::Relaxed);
                    self.connected.send_modify(|n| *n -= 1);
                    *self.slot.connection.lock().expect("connection lock") = None;
                    tracing::warn!(worker = %self.slot.label, %reason, "lost the remote worker; reconnecting, frames fall back meanwhile");
                    self.slot.set_last_error(Some(reason));
                }
                Err(reason) => {
                    if backoff.failed() {
                        tracing::warn!(worker = %self.slot.label, %reason, "cannot reach remote worker; retrying with backoff");
                    }
                    self.slot.set_last_error(Some(reason));
                }
            }
            let retry_at = backoff.next_attempt(Instant::now());
            tokio::select! {
                _ = tokio::time::sleep_until(retry_at.into()) => {},
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    async fn attempt(&self) -> Result<quinn::Connection, String> {
        let timeout = self.settings.connect_timeout_ms;
        let connecting = self.endpoint.connect(self.slot.addr, &self.settings.server_name).map_err(|e| e.to_string())?;
        match tokio::time::timeout(timeout.get(), connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout} ms")),
        }
    }
}

/// One request/response exchange on a fresh bidirectional stream.
async fn round_trip(conn: &quinn::Connection, request: &Request) -> Result<proto::MaskResult, Failure> {
    let mut bytes = Vec::with_capacity(request.image.len() + 64);
    proto::encode_request(request, &mut bytes).map_err(Failure::EncodeRequest)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(Failure::OpenStream)?;
    // Handed over as an owned chunk: quinn sends it without copying it into a buffer of its own.
    send.write_chunk(bytes.into()).await.map_err(Failure::Write)?;
    send.finish().map_err(Failure::Finish)?;
    let limits = Limits::default();
    let reply = recv.read_to_end(limits.max_message_bytes + proto::LENGTH_PREFIX_BYTES).await.map_err(Failure::Receive)?;
    check_reply(&reply, request)
}

fn check_reply(reply: &[u8], request: &Request) -> Result<proto::MaskResult, Failure> {
    let limits = Limits::default();
    let (prefix, body) = reply.split_at_checked(proto::LENGTH_PREFIX_BYTES).ok_or(Failure::ShortReply)?;
    let declared = proto::body_length(prefix.try_into().expect("4 bytes"), &limits).map_err(Failure::ReplyLength)?;
    if declared != body.len() {
        return Err(Failure::LengthMismatch { declared, carried: body.len() });
    }
    let response = proto::decode_response(body, &limits).map_err(Failure::Malformed)?;
    if response.frame_id != request.frame_id {
        return Err(Failure::WrongFrame { answered: response.frame_id, sent: request.frame_id });
    }
    match response.body {
        ResponseBody::Mask(mask) if (mask.width, mask.height) == (request.width, request.height) => Ok(mask),
        ResponseBody::Mask(mask) => Err(Failure::WrongSize {
            mask_width: mask.width,
            mask_height: mask.height,
            frame_width: request.width,
            frame_height: request.height,
        }),
        ResponseBody::Error { code, message } => Err(Failure::Refused { code, message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            frame_id: 7,
            deadline_ms: 100,
            model: "large".into(),
            width: 2,
            height: 1,
            encoding: ImageEncoding::RawBgr8,
            image: vec![0; 6],
        }
    }

    fn reply(frame_id: u64, body: ResponseBody) -> Vec<u8> {
        let mut out = Vec::new();
        proto::encode_response(&proto::Response { frame_id, body }, &mut out).unwrap();
        out
    }

    fn mask(width: u32, height: u32) -> ResponseBody {
        ResponseBody::Mask(proto::MaskResult {
            width,
            height,
            class_map: vec![1; (width * height) as usize],
            queue_us: 10,
            inference_us: 20,
            batch_size: 1,
        })
    }

    #[test]
    fn replies_are_checked_and_every_refusal_means_the_worker_is_alive() {
        assert_eq!(check_reply(&reply(7, mask(2, 1)), &request()).unwrap().class_map, vec![1, 1]);
        let refusals = [
            (vec![0, 0], "reply shorter than its length prefix"),
            (reply(8, mask(2, 1)), "reply for frame 8 on the stream of frame 7"),
            (reply(7, mask(1, 1)), "mask is 1x1, frame is 2x1"),
            (reply(7, ResponseBody::Error { code: ErrorCode::Overloaded, message: "full".into() }), "Overloaded: full"),
            ([&reply(7, mask(2, 1))[..], &[0]].concat(), "carries"),
        ];
        for (bytes, expected) in refusals {
            let failure = check_reply(&bytes, &request()).unwrap_err();
            assert!(failure.to_string().contains(expected), "{failure} lacks {expected:?}");
            assert!(failure.peer_answered(), "{failure}");
        }
        assert!(!Failure::Deadline(300).peer_answered());
        assert_eq!(
            ExchangeError::Failed { worker: "w:1".into(), failure: Failure::Deadline(300) }.to_string(),
            "worker w:1: deadline of 300 ms passed"
        );
    }
}
