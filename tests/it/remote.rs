//! The remote path end to end: real QUIC (quinn) on loopback with mutual TLS, a real worker
//! running the large ONNX network in-process, and the real edge pipeline (or binary) replaying
//! GStreamer sources. Covered:
//!
//! - every frame sent remote comes back, in order, answered by the worker;
//! - a worker stopped mid-stream and restarted on the same port: frames fall back meanwhile,
//!   the edge reconnects, and not a single frame is lost; a worker SIGKILLed (no QUIC close)
//!   is noticed from its silence, well before the idle timeout;
//! - an unreachable worker: the binary warns, every frame falls back, the run succeeds;
//! - a client certificate from a foreign CA is refused at the handshake;
//! - malformed and oversized messages fail only their own stream, not the connection;
//! - several edge devices at once are batched together by the worker;
//! - a worker asked to shut down refuses new edges and new frames but finishes those in flight.
//!
//! The tests run one at a time, with the machine to themselves ([`common::whole_machine`]):
//! they are CPU-heavy, and the restart tests measure the stream against wall-clock time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common;
use edgeseg::bench::control::WorkerProcess;
use edgeseg::config::{EdgeConfig, TlsPaths, WorkerConfig};
use edgeseg::pipeline::RunOutcome;
use edgeseg::remote::proto::{self, ErrorCode, ImageEncoding, Limits, Request, Response, ResponseBody};
use edgeseg::remote::tls::GeneratedPki;
use edgeseg::remote::worker::Worker;
use edgeseg::shutdown::Shutdown;
use serde_json::Value;

/// Masks and overlay video cost CPU and are not what these tests are about.
pub(crate) const NO_EXTRA_OUTPUTS: [&str; 2] = ["output.masks=false", "output.overlay=false"];

/// A development PKI in `dir` with one client identity, "edge"; the worker certificate is valid
/// for "localhost" and 127.0.0.1.
pub(crate) fn dev_pki(dir: &Path) -> GeneratedPki {
    edgeseg::remote::tls::generate_dev_pki(dir, &["localhost".into(), "127.0.0.1".into()], &["edge".into()], false)
        .expect("generating a development PKI")
}

pub(crate) fn edge_identity(pki: &GeneratedPki) -> &TlsPaths {
    &pki.clients[0].1
}

/// A UDP port that was free a moment ago, for a worker that must come back on the same port.
pub(crate) fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding a probe socket");
    socket.local_addr().expect("probe socket address").port()
}

pub(crate) struct WorkerSettings {
    pub(crate) listen: String,
    /// Manifest served as "large".
    pub(crate) manifest: PathBuf,
    pub(crate) max_batch: usize,
    pub(crate) max_wait_ms: u64,
    pub(crate) max_message_mib: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            listen: "127.0.0.1:0".into(),
            manifest: common::fixtures().join("models/large.toml"),
            max_batch: 4,
            max_wait_ms: 5,
            max_message_mib: 16,
        }
    }
}

/// Writes `dir/worker.toml` serving the settings' manifest as "large" and starts the worker in-process.
fn start_worker(dir: &Path, pki: &GeneratedPki, settings: &WorkerSettings) -> Worker {
    let path = write_worker_config(dir, pki, settings);
    let config = WorkerConfig::load(&path, &[]).expect("loading worker.toml");
    Worker::start(&config, Shutdown::new()).expect("starting the worker")
}

pub(crate) fn write_worker_config(dir: &Path, pki: &GeneratedPki, settings: &WorkerSettings) -> PathBuf {
    let text = format!(
        r#"
listen = "{listen}"
max_message_mib = {max_message_mib}
[models.large]
manifest = "{manifest}"
[batching]
max_batch = {max_batch}
max_wait_ms = {max_wait_ms}
[tls]
ca_cert = "{ca}"
cert = "{cert}"
key = "{key}"
"#,
        listen = settings.listen,
        max_message_mib = settings.max_message_mib,
        manifest = settings.manifest.display(),
        max_batch = settings.max_batch,
        max_wait_ms = settings.max_wait_ms,
        ca = pki.worker.ca_cert.display(),
        cert = pki.worker.cert.display(),
        key = pki.worker.key.display(),
    );
    let path = dir.join("worker.toml");
    std::fs::write(&path, text).expect("writing worker.toml");
    path
}

/// The `[remote]` section sending every frame to `worker`, authenticated as `identity`;
/// `settings` holds further `[remote]` keys, one per line.
pub(crate) fn remote_section(worker: SocketAddr, identity: &TlsPaths, settings: &str) -> String {
    routed_remote_section("remote", worker, identity, settings)
}

/// [`remote_section`] with another `remote.routing`.
pub(crate) fn routed_remote_section(routing: &str, worker: SocketAddr, identity: &TlsPaths, settings: &str) -> String {
    format!(
        r#"
[remote]
routing = "{routing}"
workers = ["{worker}"]
{settings}
[remote.tls]
ca_cert = "{ca}"
cert = "{cert}"
key = "{key}"
"#,
        ca = identity.ca_cert.display(),
        cert = identity.cert.display(),
        key = identity.key.display(),
    )
}

/// Runs the edge pipeline in-process on the config at `path`; returns the outcome and the records.
fn run_in_process(path: &Path, overrides: &[String]) -> (RunOutcome, Vec<Value>) {
    let mut all: Vec<String> = NO_EXTRA_OUTPUTS.iter().map(|s| s.to_string()).collect();
    all.extend_from_slice(overrides);
    let config = EdgeConfig::load(path, &all).expect("loading edge.toml");
    let outcome = edgeseg::pipeline::run(&config, &Shutdown::new()).expect("starting the edge pipeline");
    let records = common::records(&config.output.dir);
    (outcome, records)
}

pub(crate) fn kind(record: &Value) -> &str {
    record["source"]["kind"].as_str().expect("every record has source.kind")
}

fn kinds(records: &[Value]) -> Vec<&str> {
    records.iter().map(kind).collect()
}

/// The records are exactly frames 0..count, written in frame order.
/// Run-length summary of the sources in frame order, e.g. "38 remote, 31 fallback, 81 remote".
pub(crate) fn source_runs(kinds: &[&str]) -> String {
    let mut runs: Vec<(usize, &str)> = Vec::new();
    for kind in kinds {
        match runs.last_mut() {
            Some((count, last)) if last == kind => *count += 1,
            _ => runs.push((1, kind)),
        }
    }
    runs.iter().map(|(count, kind)| format!("{count} {kind}")).collect::<Vec<_>>().join(", ")
}

pub(crate) fn assert_complete_and_in_order(records: &[Value], count: usize) {
    let orders: Vec<u64> = records.iter().map(|r| r["order"].as_u64().expect("every record has an order")).collect();
    assert_eq!(orders, (0..count as u64).collect::<Vec<_>>(), "records must be frames 0..{count} in order");
}

fn assert_all_kind(records: &[Value], expected: &str) {
    let wrong: Vec<&Value> = records.iter().filter(|r| kind(r) != expected).collect();
    assert!(wrong.is_empty(), "every record should be {expected:?}; these are not: {wrong:#?}");
}

fn wait_until(what: &str, limit: Duration, condition: impl Fn() -> bool) {
    let until = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < until, "timed out after {limit:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn all_frames_remote_return_in_order() {
    let _machine = common::whole_machine();
    let dir = tempfile::tempdir().unwrap();
    let pki = dev_pki(&dir.path().join("pki"));
    let worker = start_worker(dir.path(), &pki, &WorkerSettings::default());
    let remote = remote_section(worker.local_addr, edge_identity(&pki), "deadline_ms = 5000");
    let config = common::edge_config(dir.path(), &common::short_video(), &remote);

    let (outcome, records) = run_in_process(&config, &[]);
    let answered = worker.shutdown().answered;

    assert!(outcome.error.is_none(), "run failed: {:?}", outcome.error);
    assert_eq!(outcome.summary.error, None);
    assert_eq!(records.len(), common::SHORT_VIDEO_FRAMES);
    assert_complete_and_in_order(&records, common::SHORT_VIDEO_FRAMES);
    assert_all_kind(&records, "remote");
    for r in &records {
        assert!(r["source"]["batch_size"].as_u64().is_some_and(|b| b >= 1), "remote record without batch size: {r}");
        assert!(r["source"]["worker"].is_string(), "remote record without worker: {r}");
    }
    assert_eq!(answered, common::SHORT_VIDEO_FRAMES as u64);
}

/// The real networks end to end (assets in `$EDGESEG_ASSETS`): the edge runs the real small
/// network, every frame goes as JPEG to a worker serving the real large network (uint8 NHWC
/// input, pad fit, int64 class-map output), and the people walking in vtest.avi come back as
/// person at frame size.
#[test]
fn real_large_network_segments_people_over_the_remote_path() {
    let _machine = common::whole_machine();
    let dir = tempfile::tempdir().unwrap();
    let pki = dev_pki(&dir.path().join("pki"));
    let root = common::fixtures();
    let settings = WorkerSettings { manifest: root.join("models/deeplab-large-fp32.toml"), ..Default::default() };
    let worker = start_worker(dir.path(), &pki, &settings);
    let remote = remote_section(worker.local_addr, edge_identity(&pki), "deadline_ms = 60000");
    let video = edgeseg::infer::manifest::assets_dir().join("videos/vtest.avi");
    let config = common::edge_config(dir.path(), &video, &remote);
    const FRAMES: usize = 6;
    let overrides = [format!("model.manifest={}", root.join("models/deeplab-small.toml").display()), format!("ingest.max_frames={FRAMES}")];

    let (outcome, records) = run_in_process(&config, &overrides);
    worker.shutdown();

    assert!(outcome.error.is_none(), "run failed: {:?}", outcome.error);
    assert_complete_and_in_order(&records, FRAMES);
    assert_all_kind(&records, "remote");
    for r in &records {
        assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(768), Some(576)));
        let person = r["classes"].as_array().unwrap().iter().find(|c| c["name"] == "person").and_then(|c| c["fraction"].as_f64());
        // About a dozen walkers, each a few hundred pixels of the 768x576 frame.
        assert!(person.is_some_and(|p| p > 0.003), "no person found in frame {}: {}", r["seq"], r["classes"]);
    }
}

/// `[remote]` keys for the restart tests: a short deadline and quick reconnection attempts.
pub(crate) const RESTART_REMOTE_SETTINGS: &str =
    "deadline_ms = 300\nreconnect_min_ms = 50\nreconnect_max_ms = 200\nconnect_timeout_ms = 500";

#[test]
fn worker_killed_and_restarted_loses_no_frame() {
    // 6 s at 20 frames/s: long enough to kill and restart the worker mid-stream, light enough
    // that a busy 2-core machine still meets the 300 ms deadline around the gap.
    const FRAMES: usize = 120;
    let _machine = common::whole_machine();
    let dir = tempfile::tempdir().unwrap();
    let pki = dev_pki(&dir.path().join("pki"));
    let settings = WorkerSettings { listen: format!("127.0.0.1:{}", free_udp_port()), ..WorkerSettings::default() };
    let worker = start_worker(dir.path(), &pki, &settings);
    let remote = remote_section(worker.local_addr, edge_identity(&pki), RESTART_REMOTE_SETTINGS);
    let config = common::edge_config(dir.path(), &common::short_video(), &remote);
    let testsrc = common::testsrc_overrides("20/1", FRAMES as i64);
    let edge = std::thread::spawn(move || run_in_process(&config, &testsrc));

    // Kill the worker once the stream is flowing through it, not while the edge is starting.
    wait_until("the worker answered a frame", Duration::from_secs(60), || worker.status().answered > 0 || edge.is_finished());
    assert!(!edge.is_finished(), "the edge run ended before the worker answered anything");
    std::thread::sleep(Duration::from_millis(1200));
    let answered_before_kill = worker.status().answered;
    worker.shutdown();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!edge.is_finished(), "the stream ended before the worker came back; it is too short for this machine");
    let worker = start_worker(dir.path(), &pki, &settings);
    let (outcome, records) = edge.join().expect("edge thread");
    let answered_after_restart = worker.status().answered;
    worker.shutdown();

    assert!(outcome.error.is_none(), "run failed: {:?}", outcome.error);
    let summary = &outcome.summary;
    assert_eq!(summary.frames_in, FRAMES as u64, "the test source delivers every frame");
    assert_eq!(summary.dropped, 0);
    assert_eq!(records.len(), FRAMES, "one record per frame: none lost");
    assert_complete_and_in_order(&records, FRAMES);

    let kinds = kinds(&records);
    let runs = source_runs(&kinds);
    let mut fallback_reasons: Vec<&str> = records.iter().filter_map(|r| r["source"]["reason"].as_str()).collect();
    fallback_reasons.dedup();
    eprintln!("sources in frame order: {runs}\nfallback reasons: {fallback_reasons:#?}");
    let first_remote = kinds.iter().position(|k| *k == "remote").unwrap_or_else(|| panic!("frames went remote before the kill: {runs}"));
    // The gap starts with the first later frame that found no worker connected (a busy machine
    // may also let frames miss their deadline, before the kill or after the restart).
    let gap = (first_remote..records.len())
        .find(|&i| records[i]["source"]["reason"].as_str().is_some_and(|reason| reason.contains("no remote worker connected")))
        .unwrap_or_else(|| panic!("frames fall back while the worker is down: {runs}\nfallback reasons: {fallback_reasons:#?}"));
    assert!(kinds[gap..].contains(&"remote"), "frames go remote again after the restart: {runs}\nfallback reasons: {fallback_reasons:#?}");
    assert!(kinds.iter().all(|k| *k == "remote" || *k == "fallback"), "{runs}");
    assert!(
        answered_before_kill > 0 && answered_after_restart > 0,
        "both workers answered ({answered_before_kill}, {answered_after_restart})"
    );
}

#[test]
fn unreachable_worker_falls_back_with_warning() {
    let _machine = common::whole_machine();
    let dir = tempfile::tempdir().unwrap();
    let pki = dev_pki(&dir.path().join("pki"));
    let nobody: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let remote = remote_section(nobody, edge_identity(&pki), "deadline_ms = 500\nconnect_timeout_ms = 300");
    let config = common::edge_config(dir.path(), &common::short_video(), &remote);

    let config_arg = config.display().to_string();
    let mut args = vec!["run", "--config", &config_arg];
    for o in NO_EXTRA_OUTPUTS {
        args.extend(["--set", o]);
    }
    let run = common::run_edge(&args);

    assert!(run.status.success(), "edgeseg run failed: {:?}\nstderr:\n{}", run.status, run.stderr);
    assert!(
        run.stderr.contains("cannot reach remote worker") || run.stderr.contains("no remote worker reachable"),
        "stderr should warn that the worker cannot be reached:\n{}",
        run.stderr
    );
    let records = common::records(&dir.path().join("out"));
    assert_eq!(records.len(), common::SHORT_VIDEO_FRAMES);
    assert_complete_and_in_order(&records, common::SHORT_VIDEO_FRAMES);
    assert_all_kind(&records, "fallback");
}

#[test]
fn client_with_foreign_certificate_is_refused() {
    let _machine = common::whole_machine();
    let dir = tempfile::tempdir().unwrap();
    let pki = dev_pki(&dir.path().join("pki"));
    let foreign = dev_pki(&dir.path().join("foreign-pki"));
    let worker = start_worker(dir.path(), &pki, &WorkerSettings::default());
    // The edge trusts the real worker, but its own certificate was signed by another CA.
    let identity = TlsPaths { ca_cert: pki.ca.clone(), ..edge_identity(&foreign).clone() };
    let remote = remote_section(worker.local_addr, &identity, "deadline_ms = 1000\nconnect_timeout_ms = 1000");
    let config = common::edge_config(dir.path(), &common::short_video(), &remote);

    let (outcome, records) = run_in_process(&config, &[]);
    let status = worker.shutdown();
    let (handshake_failures, answered) = (status.handshake_failures, status.answered);

    assert!(outcome.error.is_none(), "run failed: {:?}", outcome.error);
    assert_eq!(records.len(), common::SHORT_VIDEO_FRAMES);
    assert_complete_and_in_order(&records, common::SHORT_VIDEO_FRAMES);
    assert_all_kind(&records, "fallback");
    assert_eq!(answered, 0, "the worker must not answer a client it does not trust");
    assert!(handshake_failures > 0, "the worker refuses the foreign client at the handshake");
}

const REQUEST_WIDTH: u32 = 160;
const REQUEST_HEIGHT: u32 = 120;

/// A valid request for frame `frame_id`, as the edge would send it.
fn encoded_request(frame_id: u64) -> Vec<u8> {
    let (width, height) = (REQUEST_WIDTH, REQUEST_HEIGHT);
    let bgr: Vec<u8> = (0..width * height).flat_map(|i| [(i % 256) as u8, (i / 160) as u8, 128]).collect();
    let image = edgeseg::remote::image::encode(&bgr, width, height, ImageEncoding::Jpeg, 90).expect("JPEG encoding");
    let request = Request { frame_id, deadline_ms: 10_000, model: "large".into(), width, height, encoding: ImageEncoding::Jpeg, image };
    let mut bytes = Vec::new();
    proto::encode_request(&request, &mut bytes).expect("encoding the request");
    bytes
}

/// Sends `bytes` on a fresh stream of `connection` and decodes the worker's answer.
async fn exchange_raw(connection: &quinn::Connection, bytes: &[u8]) -> Response {
    let (mut send, recv) = connection.open_bi().await.expect("opening a stream");
    send.write_all(bytes).await.expect("sending");
    send.finish().expect("finishing the stream");
    read_response(recv).await
}

async fn read_response(mut recv: quinn::RecvStream) -> Response {
    let reply = recv.read_to_end(64 << 20).await.expect("reading the reply");
    let (prefix, body) = reply.split_at(proto::LENGTH_PREFIX_BYTES);
    let limits = Limits::default();
    let len = proto::body_length(prefix.try_into().unwrap(), &limits).expect("reply length");
    assert_eq!(len, body.len(), "reply length prefix matches its body");
    proto::decode_response(body, &limits).expect("the reply decodes")
}

fn assert_protocol_error(response: &Response, what: &str) {
    match &response.body {
        ResponseBody::Error { code: ErrorCode::Protocol, .. } => {}
        other => panic!("{what}: expected a protocol error, got {other:?}"),
    }
}

#[test]
fn malformed_and_oversized_messages_close_only_their_stream() {
    let _machine = common::whole_machine();
    let dir = tempfile::tempdir().unwrap();
    let pki = dev_pki(&dir.path().join("pki"));
    let worker = start_worker(dir.path(), &pki, &WorkerSettings { max_message_mib: 1, ..WorkerSettings::default() });
    let client_config = edgeseg::remote::tls::client_config(edge_identity(&pki)).expect("client TLS config");
    let valid = encoded_request(7);

    let junk = b"this is not an edgeseg message";
    let mut garbage = (junk.len() as u32).to_be_bytes().to_vec();
    garbage.extend_from_slice(junk);
    // One byte over the worker's 1 MiB limit; the body is never sent, the prefix alone must be refused.
    let oversized = ((1u32 << 20) + 1).to_be_bytes().to_vec();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (garbage_reply, oversized_reply, valid_reply, still_open, connections) = runtime.block_on(async {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint");
        endpoint.set_default_client_config(client_config);
        let connection = endpoint.connect(worker.local_addr, "localhost").expect("connecting").await.expect("handshake");
        let garbage_reply = exchange_raw(&connection, &garbage).await;
        let oversized_reply = exchange_raw(&connection, &oversized).await;
        let valid_reply = exchange_raw(&connection, &valid).await;
        let still_open = connection.close_reason().is_none();
        // Counted before its first stream was served, so already visible here.
        let connections = worker.status().connections;
        connection.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        (garbage_reply, oversized_reply, valid_reply, still_open, connections)
    });
    wait_until("the worker sees the connection closed", Duration::from_secs(5), || worker.status().connections == 0);
    let status = worker.shutdown();

    assert_protocol_error(&garbage_reply, "junk body");
    assert_protocol_error(&oversized_reply, "length prefix over max_message_mib");
    assert!(still_open, "bad streams must not close the connection");
    assert_eq!(valid_reply.frame_id, 7);
    match valid_reply.body {
        ResponseBody::Mask(mask) => {
            assert_eq!((mask.width, mask.height), (REQUEST_WIDTH, REQUEST_HEIGHT));
            assert_eq!(mask.class_map.len(), (REQUEST_WIDTH * REQUEST_HEIGHT) as usize);
        }
        other => panic!("a valid request on the same connection gets a mask, got {other:?}"),
    }
    assert_eq!(connections, 1, "the worker reports its open connection");
    assert_eq!(status.protocol_errors, 2);
    assert_eq!(status.answered, 1);
    assert_eq!(status.queued.get("large"), Some(&0), "queue depth is reported per model: {:?}", status.queued);
}

#[test]
fn several_edge_clients_get_batches_larger_than_one() {
    const EDGES: usize = 3;
    let _machine = common::whole_machine();
    let dir = tempfile::tempdir().unwrap();
    let pki = dev_pki(&dir.path().join("pki"));
    let worker = start_worker(dir.path(), &pki, &WorkerSettings { max_batch: 4, max_wait_ms: 30, ..WorkerSettings::default() });
    let remote = remote_section(worker.local_addr, edge_identity(&pki), "deadline_ms = 10000\nmax_in_flight = 8");
    let configs: Vec<PathBuf> = (0..EDGES)
        .map(|i| {
            let edge_dir = dir.path().join(format!("edge-{i}"));
            std::fs::create_dir_all(&edge_dir).unwrap();
            common::edge_config(&edge_dir, &common::short_video(), &remote)
        })
        .collect();

    let runs: Vec<_> = configs.into_iter().map(|config| std::thread::spawn(move || run_in_process(&config, &[]))).collect();
    let results: Vec<(RunOutcome, Vec<Value>)> = runs.into_iter().map(|r| r.join().expect("edge thread")).collect();
    let batch_sizes = worker.shutdown().batch_sizes;

    for (i, (outcome, records)) in results.iter().enumerate() {
        assert!(outcome.error.is_none(), "edge {i} failed: {:?}", outcome.error);
        assert_eq!(records.len(), common::SHORT_VIDEO_FRAMES, "edge {i}");
        assert_complete_and_in_order(records, common::SHORT_VIDEO_FRAMES);
        assert_all_kind(records, "remote");
    }
    let largest_recorded =
        results.iter().flat_map(|(_, records)| records.iter()).filter_map(|r| r["source"]["batch_size"].as_u64()).max().unwrap_or(0);
    assert!(largest_recorded > 1, "some frame shared its batch; largest batch in the records: {largest_recorded}");
    assert!(batch_sizes.keys().any(|&size| size > 1), "worker batch sizes: {batch_sizes:?}");
}

#[test]
fn bad_worker_config_names_the_key_and_file() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let pki = dev_pki(dir.path());
    let path = write_worker_config(dir.path(), &pki, &WorkerSettings::default());
    let cases: &[(&str, &[&str])] = &[
        ("listen=\"localhost\"", &["worker.toml", "listen = localhost", "ip:port"]),
        ("batching.max_batch=0", &["batching.max_batch = 0", "1..=64"]),
        ("tls.key=/nonexistent/worker.key", &["tls.key = /nonexistent/worker.key", "edgeseg certs"]),
        ("models.large.manifest=/nonexistent.toml", &["models.large.manifest", "does not exist"]),
        ("batching.max_wiat_ms=3", &["unknown field", "max_wiat_ms"]),
        ("status_interval_s=4000", &["status_interval_s = 4000", "0 turns status lines off"]),
    ];
    for (set, needles) in cases {
        let message = WorkerConfig::load(&path, &[set.to_string()]).expect_err(set).to_string();
        for n in *needles {
            assert!(message.contains(n), "{set}: {message:?} lacks {n:?}");
        }
    }
    // The binary reports it and exits non-zero before listening.
    let output = std::process::Command::new(common::bin())
        .args(["worker", "--config", path.to_str().unwrap(), "--set", "batching.max_batch=0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("batching.max_batch = 0"));
}

/// The worker as its own process, started with `edgeseg worker`, once it listens.
pub(crate) fn spawn_worker_process(config: &Path) -> WorkerProcess {
    WorkerProcess::start(&common::bin(), config, &[], None).expect("starting edgeseg worker")
}

#[test]
fn crashed_worker_is_detected_without_waiting_for_the_idle_timeout() {
    // The worker is SIGKILLed: no QUIC close reaches the edge. The edge notices that several
    // frames in a row met total silence, drops the connection and reconnects to the restarted
    // worker well before QUIC's 5 s idle timeout would have told it.
    const FRAMES: usize = 120;
    let _machine = common::whole_machine();
    let dir = tempfile::tempdir().unwrap();
    let pki = dev_pki(&dir.path().join("pki"));
    let port = free_udp_port();
    let settings = WorkerSettings { listen: format!("127.0.0.1:{port}"), ..WorkerSettings::default() };
    let worker_config = write_worker_config(dir.path(), &pki, &settings);
    let worker = spawn_worker_process(&worker_config);
    let remote = remote_section(format!("127.0.0.1:{port}").parse().unwrap(), edge_identity(&pki), RESTART_REMOTE_SETTINGS);
    let config = common::edge_config(dir.path(), &common::short_video(), &remote);
    let testsrc = common::testsrc_overrides("20/1", FRAMES as i64);
    let edge = std::thread::spawn(move || run_in_process(&config, &testsrc));

    std::thread::sleep(Duration::from_millis(1500));
    worker.kill();
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let restarted = spawn_worker_process(&worker_config);
    let (outcome, records) = edge.join().expect("edge thread");
    restarted.kill();

    assert!(outcome.error.is_none(), "run failed: {:?}", outcome.error);
    assert_eq!(records.len(), FRAMES, "one record per frame: none lost");
    assert_complete_and_in_order(&records, FRAMES);
    let kinds = kinds(&records);
    let runs = source_runs(&kinds);
    let first_fallback = kinds.iter().position(|k| *k == "fallback").unwrap_or_else(|| panic!("the crash made frames fall back: {runs}"));
    assert!(kinds[..first_fallback].contains(&"remote"), "frames went remote before the crash: {runs}");
    assert!(kinds[first_fallback..].contains(&"remote"), "frames went remote again after the restart: {runs}");
    // The stream ends about 6 s after it starts; the reconnection happened before it did, so
    // sooner than the idle timeout (5 s after the crash) would have allowed.
    assert!(killed_at.elapsed() < Duration::from_secs(8), "the run took too long to say anything about detection");
}

#[test]
fn a_worker_shutting_down_refuses_newcomers_and_finishes_the_frames_in_flight() {
    let _machine = common::whole_machine();
    let dir = tempfile::tempdir().unwrap();
    let pki = dev_pki(&dir.path().join("pki"));
    let config = WorkerConfig::load(&write_worker_config(dir.path(), &pki, &WorkerSettings::default()), &[]).expect("worker.toml");
    let shutdown = Shutdown::new();
    let worker = Worker::start(&config, shutdown.clone()).expect("starting the worker");
    let client_config = edgeseg::remote::tls::client_config(edge_identity(&pki)).expect("client TLS config");
    let (in_flight, late) = (encoded_request(7), encoded_request(8));

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (newcomer, late_reply, in_flight_reply) = runtime.block_on(async {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint");
        endpoint.set_default_client_config(client_config);
        let connection = endpoint.connect(worker.local_addr, "localhost").expect("connecting").await.expect("handshake");
        // A frame in flight when the shutdown comes: its stream is open, half of it sent. Only
        // this test decides when the rest follows, so the drain must wait for it.
        let (mut send, recv) = connection.open_bi().await.expect("opening a stream");
        let half = in_flight.len() / 2;
        send.write_all(&in_flight[..half]).await.expect("sending the first half");
        tokio::task::block_in_place(|| {
            wait_until("the worker serves the frame", Duration::from_secs(30), || worker.status().in_flight == 1)
        });
        shutdown.request();

        let newcomer = endpoint.connect(worker.local_addr, "localhost").expect("connecting").await;
        let late_reply = exchange_raw(&connection, &late).await;
        send.write_all(&in_flight[half..]).await.expect("sending the second half");
        send.finish().expect("finishing the stream");
        let in_flight_reply = read_response(recv).await;
        connection.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        (newcomer, late_reply, in_flight_reply)
    });
    let status = worker.wait();

    assert!(newcomer.is_err(), "a new connection is refused while draining");
    assert_eq!(late_reply.frame_id, 8);
    match &late_reply.body {
        ResponseBody::Error { code: ErrorCode::Internal, message } if message.contains("shutting down") => {}
        other => panic!("a frame sent while draining is turned away at once, got {other:?}"),
    }
    assert_eq!(in_flight_reply.frame_id, 7);
    assert!(matches!(in_flight_reply.body, ResponseBody::Mask(_)), "the frame in flight is answered: {:?}", in_flight_reply.body);
    assert_eq!((status.answered, status.in_flight), (1, 0));
}
