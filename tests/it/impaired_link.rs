//! The remote path across an emulated impaired link (`edgeseg::bench::link`): the worker runs in
//! one network namespace and the edge in the other, both as the real binary (`ip netns exec`),
//! with real GStreamer, ONNX Runtime and QUIC; every packet between them crosses the link
//! emulator. Covered:
//!
//! - 20 ms RTT, 20 Mbit/s, 1 % and then 5 % loss: every frame is answered remotely or falls
//!   back, none is lost, and the records come out in frame order;
//! - the link cut for 3 s mid-stream: frames fall back (at their deadline or because no worker
//!   is connected), the edge reconnects once the link is back and frames go remote again, none
//!   is lost;
//! - `edgeseg bench transport --link` measures across the link and removes its namespaces.
//!
//! Namespaces and TUN devices need root: where they cannot be made, each test prints why and
//! passes without running. The tests run one at a time (see [`exclusive`]): they are CPU-heavy.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edgeseg::bench::link::{EmulatedLink, LinkError, Side, SERVER_ADDRESS};
use serde_json::Value;

use super::common;

/// The link, or `None` after printing why this machine cannot make one.
fn link_or_skip(spec: &str) -> Option<EmulatedLink> {
    match EmulatedLink::start(&spec.parse().expect("a valid link spec")) {
        Ok(link) => Some(link),
        Err(LinkError::Unavailable(reason)) => {
            eprintln!("skipped: {reason}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

const WORKER_PORT: u16 = 7443;

/// A process killed and reaped when dropped, so a failing test leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A development PKI made by `edgeseg certs` in `dir/pki`; the worker certificate is for "localhost".
fn certs(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    let output = Command::new(common::bin()).args(["certs", "--out"]).arg(&pki).output().expect("running edgeseg certs");
    assert!(output.status.success(), "edgeseg certs failed: {}", String::from_utf8_lossy(&output.stderr));
    pki
}

/// `edgeseg worker` with config/worker.toml (the fixture large model) on the server side of the
/// link, once it listens. Its output goes to `dir/worker.log`.
fn start_worker(link: &EmulatedLink, dir: &Path, pki: &Path) -> Running {
    let log = dir.join("worker.log");
    let mut command = link.command(Side::Server, common::bin());
    command
        .arg("worker")
        .arg("--config")
        .arg(common::fixtures().join("config/worker.toml"))
        .args(["--set", &format!("listen={SERVER_ADDRESS}:{WORKER_PORT}")])
        .args(["--set", &format!("models.large.manifest={}", common::fixtures().join("models/large.toml").display())])
        .args(["--set", "models.large.intra_threads=1", "--set", "status_interval_s=0"])
        .args(["--set", &format!("tls.ca_cert={}", pki.join("ca.pem").display())])
        .args(["--set", &format!("tls.cert={}", pki.join("worker.pem").display())])
        .args(["--set", &format!("tls.key={}", pki.join("worker.key").display())])
        .stdout(File::create(&log).expect("creating worker.log"))
        .stderr(File::create(dir.join("worker.err")).expect("creating worker.err"));
    let mut worker = Running(command.spawn().expect("starting edgeseg worker"));
    let until = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("worker listening") {
        let exited = worker.0.try_wait().expect("polling the worker");
        if exited.is_some() || Instant::now() > until {
            let errors = std::fs::read_to_string(dir.join("worker.err")).unwrap_or_default();
            panic!("the worker did not start ({exited:?}):\n{errors}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    worker
}

/// `edgeseg run` on the client side of the link, every frame routed to the worker across it.
fn edge_command(link: &EmulatedLink, config: &Path, pki: &Path, settings: &[String]) -> Command {
    let mut command = link.command(Side::Client, common::bin());
    command.arg("run").arg("--config").arg(config);
    let mut overrides = vec![
        "output.masks=false".to_string(),
        "output.overlay=false".into(),
        "remote.routing=remote".into(),
        format!(r#"remote.workers=["{SERVER_ADDRESS}:{WORKER_PORT}"]"#),
        format!("remote.tls.ca_cert={}", pki.join("ca.pem").display()),
        format!("remote.tls.cert={}", pki.join("edge.pem").display()),
        format!("remote.tls.key={}", pki.join("edge.key").display()),
    ];
    overrides.extend_from_slice(settings);
    for o in overrides {
        command.args(["--set", &o]);
    }
    command
}

fn kind(record: &Value) -> &str {
    record["source"]["kind"].as_str().expect("every record has source.kind")
}

/// Run-length summary of the sources in frame order, e.g. "38 remote, 31 fallback, 81 remote".
fn source_runs(records: &[Value]) -> String {
    let mut runs: Vec<(usize, &str)> = Vec::new();
    for kind in records.iter().map(kind) {
        match runs.last_mut() {
            Some((count, last)) if *last == kind => *count += 1,
            _ => runs.push((1, kind)),
        }
    }
    runs.iter().map(|(count, kind)| format!("{count} {kind}")).collect::<Vec<_>>().join(", ")
}

/// Every frame 0..count has exactly one record, in frame order, answered remotely or by the
/// small network after the remote path failed it (nothing lost, nothing routed elsewhere).
fn assert_every_frame_answered_in_order(records: &[Value], count: usize) {
    let orders: Vec<u64> = records.iter().map(|r| r["order"].as_u64().expect("every record has an order")).collect();
    assert_eq!(orders, (0..count as u64).collect::<Vec<_>>(), "records must be frames 0..{count} in order");
    let runs = source_runs(records);
    assert!(records.iter().all(|r| ["remote", "fallback"].contains(&kind(r))), "{runs}");
}

fn fallback_reasons(records: &[Value]) -> Vec<&str> {
    let mut reasons: Vec<&str> = records.iter().filter_map(|r| r["source"]["reason"].as_str()).collect();
    reasons.sort();
    reasons.dedup();
    reasons
}

fn namespaces_exist(link_names: &[String]) -> Vec<String> {
    link_names.iter().filter(|n| Path::new("/var/run/netns").join(n).exists()).cloned().collect()
}

/// fixtures/demo.mp4: 320x240, 90 frames.
const DEMO_VIDEO_FRAMES: usize = 90;

#[test]
fn lossy_link_every_frame_answered_or_fallen_back_in_order() {
    let _machine = common::whole_machine();
    for loss in ["1%", "5%"] {
        // 10 ms each way: a 20 ms round trip.
        let Some(link) = link_or_skip(&format!("delay=10ms,loss={loss},rate=20mbit")) else { return };
        let names = [link.namespace(Side::Server).to_string(), link.namespace(Side::Client).to_string()];
        let dir = tempfile::tempdir().unwrap();
        let pki = certs(dir.path());
        let worker = start_worker(&link, dir.path(), &pki);
        let config = common::edge_config(dir.path(), &common::fixtures().join("fixtures/demo.mp4"), "");

        let run = common::run_command(edge_command(&link, &config, &pki, &["remote.deadline_ms=3000".into()]));
        let stats = link.stats();
        drop(worker);
        drop(link);

        assert!(run.status.success(), "edgeseg run failed at {loss} loss: {:?}\nstderr:\n{}", run.status, run.stderr);
        let records = common::records(&dir.path().join("out"));
        eprintln!("{loss} loss: {}\nlink up: {}\nlink down: {}", source_runs(&records), stats.up, stats.down);
        eprintln!("fallback reasons: {:#?}", fallback_reasons(&records));
        assert_every_frame_answered_in_order(&records, DEMO_VIDEO_FRAMES);
        assert!(records.iter().any(|r| kind(r) == "remote"), "frames crossed the lossy link: {}", source_runs(&records));
        assert!(stats.up.forwarded > 0 && stats.down.forwarded > 0, "traffic crossed the link: {stats:?}");
        assert_eq!(namespaces_exist(&names), Vec::<String>::new(), "the link's namespaces are removed");
    }
}

/// Frames of the live test source for the outage test: 8 s at 20 frames/s, so a 3 s cut
/// after the first answers leaves seconds of stream to show the reconnection.
const OUTAGE_STREAM_FRAMES: usize = 160;
/// Remote answers the edge must have before the link is cut (read from its metrics.jsonl).
const ANSWERS_BEFORE_CUT: u64 = 10;

/// Remote answers so far, from the last complete line of the edge's metrics.jsonl.
fn answered_so_far(metrics: &Path) -> u64 {
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    let last = text.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok());
    last.and_then(|m| m["remote"]["answered"].as_u64()).unwrap_or(0)
}

#[test]
fn link_cut_for_three_seconds_falls_back_then_reconnects() {
    let _machine = common::whole_machine();
    let Some(link) = link_or_skip("delay=10ms,rate=20mbit") else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = certs(dir.path());
    let _worker = start_worker(&link, dir.path(), &pki);
    let config = common::edge_config(dir.path(), &common::short_video(), "");
    let mut settings: Vec<String> = vec![
        "remote.deadline_ms=500".into(),
        "remote.reconnect_min_ms=50".into(),
        "remote.reconnect_max_ms=200".into(),
        "remote.connect_timeout_ms=500".into(),
        "output.metrics_interval_ms=100".into(),
        format!("ingest.pipeline={}", common::fixtures().join("pipelines/testsrc.pipeline").display()),
        "ingest.params.pattern=smpte".into(),
        "ingest.params.width=160".into(),
        "ingest.params.height=120".into(),
        r#"ingest.params.framerate="20/1""#.into(),
    ];
    settings.push(format!("ingest.params.num_buffers={OUTAGE_STREAM_FRAMES}"));

    let metrics = dir.path().join("out/metrics.jsonl");
    let edge_done = AtomicBool::new(false);
    let (run, cut) = std::thread::scope(|scope| {
        let cutter = scope.spawn(|| {
            while answered_so_far(&metrics) < ANSWERS_BEFORE_CUT {
                if edge_done.load(Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            link.cut_for(Duration::from_secs(3));
            true
        });
        let run = common::run_command(edge_command(&link, &config, &pki, &settings));
        edge_done.store(true, Ordering::Relaxed);
        (run, cutter.join().expect("the cutting thread"))
    });
    let stats = link.stats();

    assert!(run.status.success(), "edgeseg run failed: {:?}\nstderr:\n{}", run.status, run.stderr);
    let records = common::records(&dir.path().join("out"));
    let runs = source_runs(&records);
    let reasons = fallback_reasons(&records);
    eprintln!("sources in frame order: {runs}\nlink up: {}\nlink down: {}\nfallback reasons: {reasons:#?}", stats.up, stats.down);
    assert!(cut, "the edge never had {ANSWERS_BEFORE_CUT} remote answers, so the link was never cut: {runs}\n{}", run.stderr);
    assert_every_frame_answered_in_order(&records, OUTAGE_STREAM_FRAMES);
    assert!(stats.up.outage_dropped + stats.down.outage_dropped > 0, "the cut dropped packets: {stats:?}");

    let kinds: Vec<&str> = records.iter().map(kind).collect();
    let first_remote = kinds.iter().position(|k| *k == "remote").unwrap_or_else(|| panic!("frames went remote before the cut: {runs}"));
    let gap = kinds[first_remote..].iter().position(|k| *k == "fallback").map(|i| first_remote + i);
    let gap = gap.unwrap_or_else(|| panic!("frames fall back while the link is cut: {runs}"));
    assert!(kinds[gap..].contains(&"remote"), "frames go remote again once the link is back: {runs}\nfallback reasons: {reasons:#?}");
    // Frames fall back by their own deadline, or at once when the edge gives up a connection
    // that met only silence (those still on it lose it) and while none is connected; none waits
    // for QUIC's idle timeout.
    for reason in &reasons {
        assert!(
            ["deadline of 500 ms passed", "connection lost", "no remote worker connected"].iter().any(|r| reason.contains(r)),
            "unexpected fallback reason {reason:?}; all: {reasons:#?}"
        );
    }
    let connections = run.stderr.matches("connected to remote worker").count();
    assert!(connections >= 2, "the edge reconnected after the cut ({connections} connections):\n{}", run.stderr);
}

#[test]
fn bench_transport_runs_across_the_link_and_cleans_up() {
    let _machine = common::whole_machine();
    // Only to learn whether this machine can make a link at all.
    if link_or_skip("delay=1ms").is_none() {
        return;
    }
    let bench = Command::new(common::bin())
        .args(["bench", "transport", "--link", "delay=5ms,loss=1%,rate=50mbit"])
        .args(["--sizes", "160x120", "--frames", "10", "--rounds", "1", "--concurrency", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("running edgeseg bench transport");
    let pid = bench.id();
    let output = bench.wait_with_output().expect("waiting for the bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "bench failed: {:?}\n{stdout}", output.status);
    for needle in ["emulated link", "stream p50", "paced stream round trip p99, QUIC/TCP", "link up:"] {
        assert!(stdout.contains(needle), "the report lacks {needle:?}:\n{stdout}");
    }
    let leftovers: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(!leftovers.iter().any(|n| n.starts_with(&format!("edgeseg-{pid}-"))), "the bench removed its namespaces: {leftovers:?}");
}

#[test]
fn bad_link_spec_is_refused_with_the_token_named() {
    let output = Command::new(common::bin())
        .args(["bench", "transport", "--link", "delay=10ms,loss=1"])
        .output()
        .expect("running edgeseg bench transport");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(r#""loss=1""#) && stderr.contains("percentage"), "{stderr}");
}
