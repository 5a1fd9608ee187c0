//! Benchmarks behind `edgeseg bench`: they print rates and ratios measured in one run, because
//! this kind of machine is too noisy for absolute numbers or timed assertions.
//!
//! * `pipeline`: the whole local pipeline (decode, preprocess, infer, postprocess, outputs)
//!   against the bare model looping over the same preprocessed frames, both at steady state
//!   (warm session; pipeline rate from first to last frame out). The ratio shows how well the
//!   stages overlap with inference (target ≥ 0.95).
//! * `transport`: the same encoded frames over QUIC (mutual TLS, one stream per frame), over a
//!   plain TCP length-prefixed baseline and over TCP with the same TLS, on loopback: round-trip
//!   p50/p99, throughput and CPU per frame, in rounds, reporting medians of per-round ratios.
//!   TLS over TCP separates what encryption costs (which QUIC must pay) from QUIC's own costs.
//!   With `--link` the same comparison runs across an emulated impaired link ([`link`]), servers
//!   on one side and clients on the other, and adds a camera-like stream: frames at a steady
//!   rate over one connection, where TCP's in-order delivery makes a loss in one frame hold up
//!   the frames behind it and QUIC's stream per frame does not.
//! * `control` ([`control`]): a live replay with a CPU hog midway under fixed and adaptive
//!   control: drops, latency, remote share, agreement with the large network.

pub mod control;
pub mod link;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{EdgeConfig, Routing};
use crate::infer::{InputBuffer, Model};
use crate::ingest::PipelineSpec;
use crate::metrics::LatencyStats;
use crate::remote::proto::{self, ImageEncoding, Limits, MaskResult, Request, Response, ResponseBody};
use crate::shutdown::Shutdown;
use link::{EmulatedLink, LinkSpec, Side};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error(transparent)]
    Ingest(#[from] crate::ingest::IngestError),
    #[error(transparent)]
    Infer(#[from] crate::infer::InferError),
    #[error(transparent)]
    Tls(#[from] crate::remote::tls::TlsError),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error("benchmark set-up failed: {0}")]
    Setup(String),
    #[error("transport error during the benchmark: {0}")]
    Transport(String),
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

const ROUNDS: usize = 5;

/// Replays the configured video through the local pipeline and through the bare model,
/// alternating for [`ROUNDS`] rounds, and prints the medians and their ratio.
pub fn pipeline(config: &EdgeConfig) -> Result<(), BenchError> {
    let mut config = config.clone();
    config.remote.routing = Routing::Local;
    let spec = PipelineSpec::from_file(&config.ingest.pipeline, &config.ingest.params)?;
    let frames = crate::ingest::collect_frames(spec, usize::MAX)?;
    if frames.is_empty() {
        return Err(BenchError::Setup("the video has no frames".into()));
    }
    let mut model = Model::load(&config.model)?;
    let tensors = frames
        .iter()
        .map(|f| {
            let mut input = InputBuffer::new(&model.manifest, 1);
            let image = input.image_mut(0).ok_or_else(|| BenchError::Setup("empty input buffer".into()))?;
            crate::infer::preprocess(&f.bgr, f.width, f.height, &model.manifest, image)?;
            Ok(input)
        })
        .collect::<Result<Vec<_>, BenchError>>()?;
    for t in tensors.iter().take(3) {
        model.run(t)?;
    }
    println!(
        "bench pipeline: {} frames of {}x{}, model {} ({} intra-op threads)",
        frames.len(),
        frames[0].width,
        frames[0].height,
        model.manifest.name,
        config.model.intra_threads
    );
    let (mut bare_rates, mut pipeline_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let started = Instant::now();
        for t in &tensors {
            model.run(t)?;
        }
        let bare = tensors.len() as f64 / started.elapsed().as_secs_f64();
        let outcome = crate::pipeline::run(&config, &Shutdown::new())?;
        if let Some(e) = outcome.error {
            return Err(e.into());
        }
        let piped = outcome.summary.steady_fps;
        println!("  round {round}: bare model {bare:7.2} frames/s, pipeline {piped:7.2} frames/s, ratio {:.3}", piped / bare);
        bare_rates.push(bare);
        pipeline_rates.push(piped);
        ratios.push(piped / bare);
    }
    println!("  median: bare model {:.2} frames/s, pipeline {:.2} frames/s", median(bare_rates), median(pipeline_rates));
    // Each round's two measurements are adjacent in time, so their ratio cancels most machine drift.
    println!("  ratio pipeline/bare = {:.3} (median of per-round ratios; target >= 0.95)", median(ratios));
    Ok(())
}

/// Median milliseconds per frame of one model at batch 1: the bare network on a preprocessed
/// frame, and the whole [`Model::segment`] (preprocess + network + class map at frame size).
#[derive(Debug, Clone, Copy)]
pub struct ModelTiming {
    pub network_ms: f64,
    pub segment_ms: f64,
}

/// Times `settings`' model on a synthetic `width`×`height` frame for `frames` runs of each kind,
/// after three warm-up runs (`edgeseg models info --bench`).
pub fn model(settings: &crate::config::SessionConfig, frames: usize, width: u32, height: u32) -> Result<ModelTiming, BenchError> {
    let mut model = Model::load(settings)?;
    let bgr = synthetic_frame(width, height);
    let mut input = InputBuffer::new(&model.manifest, 1);
    let image = input.image_mut(0).ok_or_else(|| BenchError::Setup("empty input buffer".into()))?;
    crate::infer::preprocess(&bgr, width, height, &model.manifest, image)?;
    let time_ms = |f: &mut dyn FnMut() -> Result<(), crate::infer::InferError>| -> Result<f64, BenchError> {
        for _ in 0..3 {
            f()?;
        }
        let mut ms = Vec::with_capacity(frames);
        for _ in 0..frames.max(1) {
            let t = Instant::now();
            f()?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(median(ms))
    };
    let network_ms = time_ms(&mut || model.run(&input).map(drop))?;
    let segment_ms = time_ms(&mut || model.segment(&bgr, width, height).map(drop))?;
    Ok(ModelTiming { network_ms, segment_ms })
}

/// A synthetic frame with structure and noise, so JPEG sizes resemble camera frames.
fn synthetic_frame(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let mut bgr = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state & 0x1f) as u8;
            bgr.extend_from_slice(&[(x * 255 / width) as u8 ^ noise, (y * 255 / height) as u8, ((x + y) % 256) as u8 ^ noise]);
        }
    }
    bgr
}

/// What the benchmark servers answer: a real (uniform) class map of the frame's size, so the
/// reply is encoded, sent and decoded exactly like a worker's.
fn echo_response(body: &[u8], limits: &Limits) -> Result<Vec<u8>, String> {
    let req = proto::decode_request(body, limits).map_err(|e| e.to_string())?;
    let mask = MaskResult {
        width: req.width,
        height: req.height,
        class_map: vec![15; (req.width * req.height) as usize],
        queue_us: 0,
        inference_us: 0,
        batch_size: 1,
    };
    let mut out = Vec::new();
    proto::encode_response(&Response { frame_id: req.frame_id, body: ResponseBody::Mask(mask) }, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn check_reply(reply: &[u8], limits: &Limits) -> Result<(), String> {
    let body = reply.get(proto::LENGTH_PREFIX_BYTES..).ok_or("short reply")?;
    proto::decode_response(body, limits).map(|_| ()).map_err(|e| e.to_string())
}

const THROUGHPUT_WINDOW: Duration = Duration::from_secs(1);

struct TransportResult {
    rtt: LatencyStats,
    /// Round trips of the paced stream over one connection (emulated link only).
    stream: Option<LatencyStats>,
    frames_per_s: f64,
    /// Process CPU time (user + system, client and server together) per frame while measuring
    /// throughput: less disturbed by scheduling noise than wall time, and what bounds
    /// throughput on a busy edge device.
    cpu_us_per_frame: f64,
}

/// User + system CPU time of the whole process (all threads) so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we pass, which is plain old data.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

trait Transport: Send + Sync + 'static {
    fn round_trip(&self, request: bytes::Bytes) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

struct Quic {
    /// Frames take them in turn (`--quic-connections`; one by default, as the edge client).
    connections: Vec<quinn::Connection>,
    next: std::sync::atomic::AtomicUsize,
}

impl Transport for Quic {
    async fn round_trip(&self, request: bytes::Bytes) -> Result<(), String> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.connections.len();
        let (mut send, mut recv) = self.connections[i].open_bi().await.map_err(|e| e.to_string())?;
        // An owned chunk: quinn sends it without first copying it into its own buffer.
        send.write_chunk(request).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let reply = recv.read_to_end(64 << 20).await.map_err(|e| e.to_string())?;
        check_reply(&reply, &Limits::default())
    }
}

/// The TCP baselines (plain, and with the same TLS 1.3 as QUIC): one connection per concurrent
/// requester (TCP has no streams), requests and replies length-prefixed back to back.
struct Tcp<S> {
    connections: Vec<tokio::sync::Mutex<S>>,
    next: std::sync::atomic::AtomicUsize,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for Tcp<S> {
    async fn round_trip(&self, request: bytes::Bytes) -> Result<(), String> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.connections.len();
        let mut stream = self.connections[i].lock().await;
        write_request(&mut *stream, &request).await?;
        check_reply(&read_reply(&mut *stream).await?, &Limits::default())
    }
}

async fn write_request<W: AsyncWrite + Unpin>(stream: &mut W, request: &[u8]) -> Result<(), String> {
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}

async fn read_reply<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Vec<u8>, String> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await.map_err(|e| e.to_string())?;
    let len = proto::body_length(prefix, &Limits::default()).map_err(|e| e.to_string())?;
    let mut reply = prefix.to_vec();
    reply.resize(4 + len, 0);
    stream.read_exact(&mut reply[4..]).await.map_err(|e| e.to_string())?;
    Ok(reply)
}

type ReplySlot = tokio::sync::oneshot::Sender<Result<(), String>>;

/// One TCP (or TLS) connection carrying every frame, requests written back to back and replies
/// read in order: how a single connection per worker would carry a frame stream. A packet lost
/// from one frame holds up every frame behind it (head-of-line blocking).
struct Pipelined<W> {
    /// Held while a request is written, so requests and their reply slots queue in one order.
    writer: tokio::sync::Mutex<W>,
    waiting: Arc<std::sync::Mutex<VecDeque<ReplySlot>>>,
}

impl<W: AsyncWrite + Unpin + Send + 'static> Transport for Pipelined<W> {
    async fn round_trip(&self, request: bytes::Bytes) -> Result<(), String> {
        let (slot, reply) = tokio::sync::oneshot::channel();
        {
            let mut writer = self.writer.lock().await;
            self.waiting.lock().expect("reply slots lock").push_back(slot);
            write_request(&mut *writer, &request).await?;
        }
        reply.await.map_err(|_| "the connection closed before the reply".to_string())?
    }
}

/// Splits `stream` and starts the task that hands each reply to the request it answers.
fn pipelined<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Arc<Pipelined<tokio::io::WriteHalf<S>>> {
    let (mut reader, writer) = tokio::io::split(stream);
    let waiting: Arc<std::sync::Mutex<VecDeque<ReplySlot>>> = Arc::default();
    let replies = waiting.clone();
    tokio::spawn(async move {
        loop {
            let reply = read_reply(&mut reader).await;
            let Some(slot) = replies.lock().expect("reply slots lock").pop_front() else { return };
            let failed = reply.is_err();
            let _ = slot.send(reply.and_then(|r| check_reply(&r, &Limits::default())));
            if failed {
                return;
            }
        }
    });
    Arc::new(Pipelined { writer: tokio::sync::Mutex::new(writer), waiting })
}

/// Frames sent at a steady rate, as a camera produces them, each on its way while earlier ones
/// are still out; a frame's round trip counts from its scheduled send time, so waiting to be
/// sent behind earlier frames counts too.
async fn paced<T: Transport>(transport: Arc<T>, request: bytes::Bytes, frames: usize, interval: Duration) -> Result<LatencyStats, String> {
    let start = tokio::time::Instant::now();
    let mut replies = Vec::with_capacity(frames);
    for i in 0..frames {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled).await;
        let (transport, request) = (transport.clone(), request.clone());
        replies.push(tokio::spawn(async move { transport.round_trip(request).await.map(|()| scheduled.elapsed()) }));
    }
    let mut rtt = LatencyStats::default();
    for reply in replies {
        rtt.record(reply.await.map_err(|e| e.to_string())??.as_secs_f64() * 1000.0);
    }
    Ok(rtt)
}

/// Most frames per second the paced stream sends: a camera's rate.
const STREAM_MAX_FPS: f64 = 30.0;
/// Share of the upstream rate the paced stream may take, so it measures latency, not a queue
/// that grows without end.
const STREAM_LINK_SHARE: f64 = 0.5;

/// Interval between the paced stream's frames of `request_bytes` over `link`.
fn stream_interval(link: &LinkSpec, request_bytes: usize) -> Duration {
    let fps = match link.up.rate_bits_per_s {
        Some(rate) => (rate as f64 / 8.0 * STREAM_LINK_SHARE / request_bytes as f64).min(STREAM_MAX_FPS),
        None => STREAM_MAX_FPS,
    };
    Duration::from_secs_f64(1.0 / fps)
}

async fn measure<T: Transport>(
    transport: Arc<T>,
    request: bytes::Bytes,
    frames: usize,
    concurrency: usize,
) -> Result<TransportResult, String> {
    for _ in 0..20 {
        transport.round_trip(request.clone()).await?;
    }
    let mut rtt = LatencyStats::default();
    for _ in 0..frames {
        let t = Instant::now();
        transport.round_trip(request.clone()).await?;
        rtt.record(t.elapsed().as_secs_f64() * 1000.0);
    }
    // Throughput: `concurrency` requesters for THROUGHPUT_WINDOW, so small frames are not timed
    // over a few milliseconds only.
    let (started, cpu_before) = (Instant::now(), process_cpu());
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (transport, request) = (transport.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while started.elapsed() < THROUGHPUT_WINDOW {
                transport.round_trip(request.clone()).await?;
                done += 1;
            }
            Ok::<u64, String>(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|e| e.to_string())??;
    }
    let cpu = process_cpu().saturating_sub(cpu_before);
    Ok(TransportResult {
        rtt,
        stream: None,
        frames_per_s: total as f64 / started.elapsed().as_secs_f64(),
        cpu_us_per_frame: cpu.as_secs_f64() * 1e6 / total.max(1) as f64,
    })
}

async fn quic_server(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let limits = Limits::default();
                    let Ok(data) = recv.read_to_end(limits.max_message_bytes + 4).await else { return };
                    let Some(body) = data.get(4..) else { return };
                    if let Ok(reply) = echo_response(body, &limits) {
                        let _ = send.write_chunk(reply.into()).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    }
                });
            }
        });
    }
}

async fn tcp_server(listener: tokio::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve_length_prefixed(stream).await;
                    }
                }
                None => serve_length_prefixed(stream).await,
            }
        });
    }
}

async fn serve_length_prefixed<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let limits = Limits::default();
    loop {
        let mut prefix = [0u8; 4];
        if stream.read_exact(&mut prefix).await.is_err() {
            return;
        }
        let Ok(len) = proto::body_length(prefix, &limits) else { return };
        let mut body = vec![0u8; len];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let Ok(reply) = echo_response(&body, &limits) else { return };
        if stream.write_all(&reply).await.is_err() || stream.flush().await.is_err() {
            return;
        }
    }
}

pub fn parse_size(s: &str) -> Result<(u32, u32), BenchError> {
    let bad = || BenchError::Setup(format!("frame size {s:?} is not WIDTHxHEIGHT"));
    let (w, h) = s.split_once('x').ok_or_else(bad)?;
    let (w, h): (u32, u32) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if w == 0 || h == 0 || w > 4096 || h > 4096 {
        return Err(bad());
    }
    Ok((w, h))
}

fn tcp_listener(
    ip: IpAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    runtime: &tokio::runtime::Runtime,
) -> Result<std::net::SocketAddr, BenchError> {
    let setup = |e: std::io::Error| BenchError::Setup(e.to_string());
    let listener = std::net::TcpListener::bind((ip, 0)).map_err(setup)?;
    listener.set_nonblocking(true).map_err(setup)?;
    let addr = listener.local_addr().map_err(setup)?;
    let listener = {
        let _inside = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(setup)?
    };
    runtime.spawn(tcp_server(listener, tls));
    Ok(addr)
}

async fn tcp_connection<S>(addr: SocketAddr, wrap: &impl AsyncFn(tokio::net::TcpStream) -> std::io::Result<S>) -> Result<S, BenchError> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| BenchError::Setup(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    wrap(stream).await.map_err(|e| BenchError::Setup(e.to_string()))
}

async fn tcp_connections<S>(
    addr: SocketAddr,
    count: usize,
    wrap: impl AsyncFn(tokio::net::TcpStream) -> std::io::Result<S>,
) -> Result<Arc<Tcp<S>>, BenchError> {
    let mut connections = Vec::new();
    for _ in 0..count {
        connections.push(tokio::sync::Mutex::new(tcp_connection(addr, &wrap).await?));
    }
    Ok(Arc::new(Tcp { connections, next: Default::default() }))
}

const TRANSPORTS: [&str; 3] = ["quic", "tcp", "tls"];

/// Median over rounds of one transport's figures at one frame size.
struct Medians {
    p50_ms: f64,
    p99_ms: f64,
    stream_p50_ms: Option<f64>,
    stream_p99_ms: Option<f64>,
    frames_per_s: f64,
    cpu_us_per_frame: f64,
}

impl Medians {
    fn of(rounds: &[TransportResult]) -> Self {
        let p: Vec<_> = rounds.iter().map(|x| x.rtt.percentiles()).collect();
        let s: Vec<_> = rounds.iter().filter_map(|x| x.stream.as_ref().map(LatencyStats::percentiles)).collect();
        let stream = |f: fn(&crate::metrics::Percentiles) -> f64| (!s.is_empty()).then(|| median(s.iter().map(f).collect()));
        Medians {
            p50_ms: median(p.iter().map(|p| p.p50_ms).collect()),
            p99_ms: median(p.iter().map(|p| p.p99_ms).collect()),
            stream_p50_ms: stream(|p| p.p50_ms),
            stream_p99_ms: stream(|p| p.p99_ms),
            frames_per_s: median(rounds.iter().map(|x| x.frames_per_s).collect()),
            cpu_us_per_frame: median(rounds.iter().map(|x| x.cpu_us_per_frame).collect()),
        }
    }
}

/// Transport `a` relative to `b` at one frame size: the median over rounds of per-round ratios
/// (round-trip p50, throughput, CPU per frame, and the paced stream's p99 where measured). Both
/// sides of a ratio ran back to back, so the ratio cancels most of the machine's drift.
fn ratios(a: &[TransportResult], b: &[TransportResult]) -> [f64; 4] {
    let per_round = |f: fn(&TransportResult, &TransportResult) -> f64| median(a.iter().zip(b).map(|(x, y)| f(x, y)).collect());
    fn stream_p99(x: &TransportResult) -> f64 {
        x.stream.as_ref().map_or(f64::NAN, |s| s.percentiles().p99_ms)
    }
    [
        per_round(|x, y| x.rtt.percentiles().p50_ms / y.rtt.percentiles().p50_ms),
        per_round(|x, y| x.frames_per_s / y.frames_per_s),
        per_round(|x, y| x.cpu_us_per_frame / y.cpu_us_per_frame),
        per_round(|x, y| stream_p99(x) / stream_p99(y)),
    ]
}

/// What `edgeseg bench transport` measures; `None` fields take the defaults for the path
/// (loopback, or the slower emulated link, where fewer and smaller frames keep a run short).
#[derive(Debug, Clone, Default)]
pub struct TransportOptions {
    pub frames: Option<usize>,
    pub sizes: Option<Vec<String>>,
    pub concurrency: usize,
    pub rounds: Option<usize>,
    pub link: Option<LinkSpec>,
    /// QUIC connections the frames take in turn.
    pub quic_connections: usize,
}

const LOOPBACK_DEFAULTS: (usize, &[&str], usize) = (200, &["160x120", "320x240", "640x480", "1280x720"], 5);
const LINK_DEFAULTS: (usize, &[&str], usize) = (100, &["320x240", "640x480"], 3);

type TcpStream = tokio::net::TcpStream;
type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;
/// A pipelined connection of the paced stream (emulated link only).
type StreamOver<S> = Arc<Pipelined<tokio::io::WriteHalf<S>>>;

/// The connections of every transport, client side.
struct Clients {
    quic: Arc<Quic>,
    tcp: Arc<Tcp<TcpStream>>,
    tls: Arc<Tcp<TlsStream>>,
    /// One pipelined connection each for TCP and TLS, for the paced stream (link only).
    streams: Option<(StreamOver<TcpStream>, StreamOver<TlsStream>)>,
}

impl Clients {
    async fn measure(
        &self,
        transport: usize,
        request: &bytes::Bytes,
        frames: usize,
        concurrency: usize,
        stream_interval: Option<Duration>,
    ) -> Result<TransportResult, String> {
        let request = request.clone();
        let mut result = match transport {
            0 => measure(self.quic.clone(), request.clone(), frames, concurrency).await?,
            1 => measure(self.tcp.clone(), request.clone(), frames, concurrency).await?,
            _ => measure(self.tls.clone(), request.clone(), frames, concurrency).await?,
        };
        if let (Some(interval), Some((tcp, tls))) = (stream_interval, &self.streams) {
            result.stream = Some(match transport {
                0 => paced(self.quic.clone(), request, frames, interval).await?,
                1 => paced(tcp.clone(), request, frames, interval).await?,
                _ => paced(tls.clone(), request, frames, interval).await?,
            });
        }
        Ok(result)
    }
}

pub fn transport(options: &TransportOptions) -> Result<(), BenchError> {
    use crate::remote::tls;
    let (default_frames, default_sizes, default_rounds) = if options.link.is_some() { LINK_DEFAULTS } else { LOOPBACK_DEFAULTS };
    let sizes = match &options.sizes {
        Some(sizes) => sizes.iter().map(|s| parse_size(s)).collect::<Result<Vec<_>, _>>()?,
        None => default_sizes.iter().map(|s| parse_size(s)).collect::<Result<Vec<_>, _>>()?,
    };
    let frames = options.frames.unwrap_or(default_frames).max(1);
    let rounds = options.rounds.unwrap_or(default_rounds).max(1);
    let concurrency = options.concurrency.max(1);
    let link = options.link.as_ref().map(EmulatedLink::start).transpose()?;
    let (server_ip, client_ip) = match link {
        Some(_) => (IpAddr::V4(link::SERVER_ADDRESS), IpAddr::V4(link::CLIENT_ADDRESS)),
        None => (IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(Ipv4Addr::LOCALHOST)),
    };
    let dir = tempfile_dir()?;
    let pki = tls::generate_dev_pki(&dir, &["localhost".into()], &["bench".into()], true)?;
    let identity = &pki.clients[0].1;
    // Like a real deployment, the servers and the client run on separate threads (one core
    // each here), for every transport alike. On an emulated link, each side's sockets (and
    // threads) are made inside its namespace.
    let setup = |e: &dyn std::fmt::Display| BenchError::Setup(e.to_string());
    let server_side = link.as_ref().map(|l| l.enter(Side::Server)).transpose()?;
    let server_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(|e| setup(&e))?;
    let server = {
        let _inside = server_runtime.enter();
        crate::remote::endpoint(SocketAddr::new(server_ip, 0), Some(tls::server_config(&pki.worker)?)).map_err(|e| setup(&e))?
    };
    let quic_addr = server.local_addr().map_err(|e| setup(&e))?;
    server_runtime.spawn(quic_server(server.clone()));
    let tcp_addr = tcp_listener(server_ip, None, &server_runtime)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::rustls_server_config(&pki.worker)?));
    let tls_addr = tcp_listener(server_ip, Some(acceptor), &server_runtime)?;
    drop(server_side);

    let client_side = link.as_ref().map(|l| l.enter(Side::Client)).transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| setup(&e))?;
    let result = runtime.block_on(async {
        let mut client = crate::remote::endpoint(SocketAddr::new(client_ip, 0), None).map_err(|e| setup(&e))?;
        client.set_default_client_config(tls::client_config(identity)?);
        let mut connections = Vec::new();
        for _ in 0..options.quic_connections.max(1) {
            connections.push(client.connect(quic_addr, "localhost").map_err(|e| setup(&e))?.await.map_err(|e| setup(&e))?);
        }
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::rustls_client_config(identity)?));
        let server_name = rustls_pki_types::ServerName::try_from("localhost").expect("literal DNS name");
        let tls_handshake = async |s| connector.connect(server_name.clone(), s).await;
        let plain = async |s| Ok(s);
        let streams = match link {
            Some(_) => Some((
                pipelined(tcp_connection(tcp_addr, &plain).await?),
                pipelined(tcp_connection(tls_addr, &tls_handshake).await?),
            )),
            None => None,
        };
        let clients = Clients {
            quic: Arc::new(Quic { connections, next: Default::default() }),
            tcp: tcp_connections(tcp_addr, concurrency, plain).await?,
            tls: tcp_connections(tls_addr, concurrency, tls_handshake).await?,
            streams,
        };

        let path = match &link {
            Some(l) => format!("emulated link ({})", l.spec()),
            None => "loopback".into(),
        };
        println!(
            "bench transport: {rounds} rounds; per round and size, {frames} sequential round trips then {concurrency} in flight for {} s, {path}",
            THROUGHPUT_WINDOW.as_secs()
        );
        if link.is_some() {
            println!(
                "  then {frames} frames as a paced stream over one connection (QUIC: a stream per frame; TCP/TLS: back to back), at most {STREAM_MAX_FPS} frames/s and {:.0}% of the upstream rate",
                STREAM_LINK_SHARE * 100.0
            );
        }
        println!("  QUIC and TLS/TCP use the same mutual TLS 1.3; TCP is the plain baseline the targets refer to.");
        let mut requests = Vec::new();
        for &(w, h) in &sizes {
            let image = crate::remote::image::encode(&synthetic_frame(w, h), w, h, ImageEncoding::Jpeg, 90).map_err(|e| setup(&e))?;
            let request = Request { frame_id: 1, deadline_ms: 10_000, model: "large".into(), width: w, height: h, encoding: ImageEncoding::Jpeg, image };
            let mut bytes = Vec::new();
            proto::encode_request(&request, &mut bytes).map_err(|e| setup(&e))?;
            requests.push(bytes::Bytes::from(bytes));
        }
        let intervals: Vec<Option<Duration>> = requests.iter().map(|r| options.link.as_ref().map(|l| stream_interval(l, r.len()))).collect();
        // results[size][transport][round]; transports in TRANSPORTS order.
        let mut results: Vec<[Vec<TransportResult>; 3]> = sizes.iter().map(|_| Default::default()).collect();
        for round in 0..rounds {
            for (i, request) in requests.iter().enumerate() {
                // Rotate which transport goes first, so none always gets a warmer (or noisier) slot.
                for k in 0..TRANSPORTS.len() {
                    let t = (i + k + round) % TRANSPORTS.len();
                    let result = clients.measure(t, request, frames, concurrency, intervals[i]).await;
                    results[i][t].push(result.map_err(BenchError::Transport)?);
                }
            }
        }
        let stream_columns = if link.is_some() { format!(" {:>10} {:>9}", "stream p50", "p99") } else { String::new() };
        println!("  {:<26} {:>9} {:>9}{stream_columns} {:>9} {:>11}", "size / transport", "rtt p50", "p99", "frames/s", "cpu/frame");
        // Ratios per size, [QUIC/TCP, QUIC/TLS, TLS/TCP], each [rtt, throughput, cpu, stream p99].
        let mut all_ratios = Vec::new();
        for ((((w, h), request), per_transport), interval) in sizes.iter().zip(&requests).zip(&results).zip(&intervals) {
            match interval {
                Some(i) => println!("  {w}x{h} ({} bytes; stream at {:.1} frames/s)", request.len(), 1.0 / i.as_secs_f64()),
                None => println!("  {w}x{h} ({} bytes)", request.len()),
            }
            for (name, rounds) in TRANSPORTS.iter().zip(per_transport) {
                let m = Medians::of(rounds);
                let stream = match (m.stream_p50_ms, m.stream_p99_ms) {
                    (Some(p50), Some(p99)) => format!(" {p50:>8.3}ms {p99:>7.3}ms"),
                    _ => String::new(),
                };
                println!(
                    "    {name:<24} {:>7.3}ms {:>7.3}ms{stream} {:>9.0} {:>8.1} µs",
                    m.p50_ms, m.p99_ms, m.frames_per_s, m.cpu_us_per_frame
                );
            }
            let r = [ratios(&per_transport[0], &per_transport[1]), ratios(&per_transport[0], &per_transport[2]), ratios(&per_transport[2], &per_transport[1])];
            for (label, [rtt, tput, cpu, stream_p99]) in ["QUIC/TCP", "QUIC/TLS", "TLS/TCP"].iter().zip(r) {
                let stream = if link.is_some() { format!(" {:>10} {stream_p99:>9.2}", "") } else { String::new() };
                println!("    {label:<24} {rtt:>9.2} {:>9}{stream} {tput:>9.2} {cpu:>11.2}", "");
            }
            all_ratios.push(r);
        }
        println!("  (medians over rounds; a ratio is the median of per-round ratios, whose two sides ran back to back)");
        let over_sizes = |k: usize, m: usize| median(all_ratios.iter().map(|r| r[k][m]).collect());
        println!(
            "  median over sizes: QUIC/TCP round trip p50 = {:.2} (target <= 1.3 on loopback), throughput = {:.2} (target >= 0.8), cpu/frame = {:.2}",
            over_sizes(0, 0), over_sizes(0, 1), over_sizes(0, 2)
        );
        println!(
            "  median over sizes: QUIC/(TLS over TCP) round trip p50 = {:.2}, throughput = {:.2}, cpu/frame = {:.2}",
            over_sizes(1, 0), over_sizes(1, 1), over_sizes(1, 2)
        );
        println!(
            "  median over sizes: (TLS over TCP)/TCP round trip p50 = {:.2}, throughput = {:.2}, cpu/frame = {:.2} (the cost of encryption alone)",
            over_sizes(2, 0), over_sizes(2, 1), over_sizes(2, 2)
        );
        if let Some(link) = &link {
            println!(
                "  median over sizes: paced stream round trip p99, QUIC/TCP = {:.2} (target <= 1: no head-of-line blocking across frames), QUIC/TLS = {:.2}",
                over_sizes(0, 3), over_sizes(1, 3)
            );
            let stats = link.stats();
            println!("  link up: {}; down: {}", stats.up, stats.down);
        }
        let stats = clients.quic.connections[0].stats();
        println!("  QUIC path: mtu {} bytes, cwnd {} bytes, {} datagrams sent, {} lost packets, congestion events {}", stats.path.current_mtu, stats.path.cwnd, stats.udp_tx.datagrams, stats.path.lost_packets, stats.path.congestion_events);
        client.close(0u32.into(), b"done");
        server.close(0u32.into(), b"done");
        Ok::<(), BenchError>(())
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(client_side);
    server_runtime.shutdown_timeout(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> Result<std::path::PathBuf, BenchError> {
    let dir = std::env::temp_dir().join(format!("edgeseg-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::Setup(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(p50_ms: f64, frames_per_s: f64, cpu_us_per_frame: f64) -> TransportResult {
        let mut rtt = LatencyStats::default();
        rtt.record(p50_ms);
        TransportResult { rtt, stream: None, frames_per_s, cpu_us_per_frame }
    }

    #[test]
    fn ratios_are_medians_of_per_round_ratios() {
        // Round 2 is disturbed for both transports alike (the machine slowed down): per-round
        // ratios cancel that, where a ratio of medians would not.
        let a = [result(2.0, 50.0, 20.0), result(8.0, 10.0, 80.0), result(2.2, 55.0, 22.0)];
        let b = [result(1.0, 100.0, 10.0), result(4.0, 20.0, 40.0), result(1.0, 110.0, 11.0)];
        assert_eq!(ratios(&a, &b)[..3], [2.0, 0.5, 2.0]);
        let m = Medians::of(&a);
        assert_eq!((m.p50_ms, m.frames_per_s, m.cpu_us_per_frame), (2.2, 50.0, 22.0));
    }

    #[test]
    fn frame_sizes_parse_and_bad_ones_are_named() {
        assert_eq!(parse_size("640x480").unwrap(), (640, 480));
        for bad in ["640", "0x480", "640x", "x", "5000x10"] {
            let message = parse_size(bad).unwrap_err().to_string();
            assert!(message.contains(bad) && message.contains("WIDTHxHEIGHT"), "{bad}: {message}");
        }
    }
}
