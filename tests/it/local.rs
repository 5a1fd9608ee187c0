//! The local edge pipeline end to end, with real GStreamer and real ONNX Runtime: replay of a
//! recorded video, the live-source drop policy, clean shutdown on SIGTERM or on request after N
//! frames, a second signal ending a stuck run at once, and every kind of bad input ending in a
//! clear error and a non-zero exit without losing what was already written.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{self, edge_config, records, run_edge, short_video, RunResult, SHORT_VIDEO_FRAMES};
use edgeseg::config::{EdgeConfig, Liveness};
use edgeseg::frame::Segmented;
use edgeseg::ingest::{IngestOptions, PipelineSpec};
use edgeseg::shutdown::Shutdown;
use edgeseg::sink::{Observer, SinkError};

fn run_config(config: &Path, extra: &[&str]) -> RunResult {
    let mut args = vec!["run", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_edge(&args)
}

fn assert_fails_with(result: &RunResult, needles: &[&str]) {
    assert!(!result.status.success(), "expected failure, got success\nstderr: {}", result.stderr);
    for n in needles {
        assert!(result.stderr.contains(n), "stderr lacks {n:?}:\n{}", result.stderr);
    }
}

/// Decodes a video with the project's own ingest and counts its frames.
fn count_frames(video: &Path) -> usize {
    let params = BTreeMap::from([("location".to_string(), video.display().to_string())]);
    let spec = PipelineSpec::from_file(&common::root().join("pipelines/file.pipeline"), &params).unwrap();
    edgeseg::ingest::collect_frames(spec, usize::MAX).unwrap().len()
}

#[test]
fn replay_yields_one_record_per_frame_in_order_with_frame_sized_masks() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let config = edge_config(dir.path(), &short_video(), "");
    let result = run_config(&config, &[]);
    assert!(result.status.success(), "{}", result.stderr);
    let out = dir.path().join("out");
    let recs = records(&out);
    assert_eq!(recs.len(), SHORT_VIDEO_FRAMES);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], i as u64);
        assert_eq!(r["order"], i as u64);
        assert_eq!(r["source"]["kind"], "local");
        assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(160), Some(120)));
        let total: f64 = r["classes"].as_array().unwrap().iter().map(|c| c["fraction"].as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-9, "class fractions sum to {total}");
        for stage in ["preprocess", "infer", "postprocess"] {
            assert!(r["latency_ms"][stage].as_f64().is_some(), "record lacks {stage} latency: {r}");
        }
    }
    // PTS increase strictly: frames came out in stream order.
    let pts: Vec<f64> = recs.iter().map(|r| r["pts_ms"].as_f64().unwrap()).collect();
    assert!(pts.windows(2).all(|w| w[0] < w[1]), "{pts:?}");
    // The test video is SMPTE bars: the fixture model sees several classes in it.
    assert!(recs[0]["classes"].as_array().unwrap().len() >= 4);

    for seq in 0..SHORT_VIDEO_FRAMES {
        let png = out.join(format!("masks/{seq:06}.png"));
        let mask = opencv::imgcodecs::imread(png.to_str().unwrap(), opencv::imgcodecs::IMREAD_COLOR).unwrap();
        use opencv::prelude::MatTraitConst;
        assert_eq!((mask.cols(), mask.rows()), (160, 120), "{}", png.display());
    }
    assert_eq!(count_frames(&out.join("overlay.mp4")), SHORT_VIDEO_FRAMES, "overlay video has every frame");

    let summary = common::summary(&out);
    assert_eq!(summary["frames_in"], SHORT_VIDEO_FRAMES as u64);
    assert_eq!(summary["frames_out"], SHORT_VIDEO_FRAMES as u64);
    assert_eq!(summary["dropped"], 0);
    assert!(result.stdout.contains("frames: in 24 out 24 dropped 0"), "{}", result.stdout);
}

#[test]
fn a_replay_limited_to_its_first_frames_ends_after_them_and_writes_them_all() {
    const FIRST: usize = 5;
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let config = edge_config(dir.path(), &short_video(), "");
    let result = run_config(&config, &["--set", &format!("ingest.max_frames={FIRST}")]);
    assert!(result.status.success(), "{}", result.stderr);
    let out = dir.path().join("out");
    let seqs: Vec<u64> = records(&out).iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..FIRST as u64).collect::<Vec<_>>(), "the first frames, in order, none lost");
    assert_eq!(count_frames(&out.join("overlay.mp4")), FIRST, "the overlay video is closed with every frame");
    let summary = common::summary(&out);
    assert_eq!((summary["frames_in"].as_u64(), summary["frames_out"].as_u64()), (Some(FIRST as u64), Some(FIRST as u64)));
    assert!(result.stderr.contains("ingest.max_frames taken"), "the log says why the source ended:\n{}", result.stderr);
}

#[test]
fn live_source_drops_oldest_when_the_consumer_is_slow_and_is_never_blocked() {
    let _machine = common::shared_machine();
    common::fixtures();
    let params: BTreeMap<String, String> =
        [("pattern", "ball"), ("width", "64"), ("height", "48"), ("framerate", "50/1"), ("num_buffers", "-1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let spec = PipelineSpec::from_file(&common::root().join("pipelines/testsrc.pipeline"), &params).unwrap();
    let shutdown = Shutdown::new();
    let options = IngestOptions { liveness: Liveness::Auto, capacity: 2, ..IngestOptions::default() };
    let ingest = edgeseg::ingest::spawn(spec, &options, shutdown.clone()).unwrap();
    assert!(ingest.live, "videotestsrc is-live=true is detected as live");

    // A consumer ten times slower than the 50 fps source.
    let started = Instant::now();
    let mut received = Vec::new();
    while started.elapsed() < Duration::from_millis(2000) {
        if let Ok(frame) = ingest.frames.recv_timeout(Duration::from_millis(500)) {
            received.push(frame.seq);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    shutdown.request();
    let produced = ingest.stats.frames_in.load(Ordering::Relaxed);
    let dropped = ingest.stats.dropped.load(Ordering::Relaxed);
    drop(ingest.frames);
    ingest.thread.join().unwrap().unwrap();

    // Not blocked: the source kept its pace (~100 frames in 2 s) although we took ~10.
    assert!(produced >= 50, "source produced only {produced} frames: it was blocked by the slow consumer");
    assert!(received.len() <= 15, "{received:?}");
    // Every frame not received was dropped and counted (at most the queue's 2 still waiting).
    assert!(dropped + received.len() as u64 + 2 >= produced, "produced {produced}, dropped {dropped}, received {}", received.len());
    assert!(dropped > 0);
    // The newest frames win: what we receive keeps up with the source, with gaps.
    assert!(received.windows(2).all(|w| w[0] < w[1]));
    assert!(received.windows(2).any(|w| w[1] - w[0] > 1), "{received:?}");
}

#[test]
fn sigterm_finishes_in_flight_frames_and_flushes_outputs() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let config = edge_config(dir.path(), &short_video(), "");
    let testsrc = common::root().join("pipelines/testsrc.pipeline");
    let child = std::process::Command::new(common::bin())
        .args(["run", "--config", config.to_str().unwrap(), "--pipeline", testsrc.to_str().unwrap()])
        .args(["--set", "ingest.live=\"auto\"", "--set", "ingest.params.pattern=smpte", "--set", "ingest.params.width=160"])
        .args(["--set", "ingest.params.height=120", "--set", "ingest.params.framerate=\"15/1\"", "--set", "ingest.params.num_buffers=-1"])
        .args(["--set", "output.metrics_interval_ms=100"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = dir.path().join("out");
    let started = Instant::now();
    while records(&out).len() < 5 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc_kill(child.id() as i32, 15) };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let summary = common::summary(&out);
    let recs = records(&out);
    let frames_in = summary["frames_in"].as_u64().unwrap();
    let dropped = summary["dropped"].as_u64().unwrap();
    assert!(recs.len() >= 5);
    assert_eq!(recs.len() as u64, frames_in - dropped, "every frame that entered came out");
    assert_eq!(count_frames(&out.join("overlay.mp4")), recs.len(), "overlay video was finalised with every frame");

    // Queue depths were observable while it ran.
    let metrics: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(metrics.len() >= 2, "{metrics:?}");
    for name in ["frames", "local", "prepared", "inferred", "segmented"] {
        assert!(metrics[0]["queues"][name].as_u64().is_some(), "no depth for queue {name}: {}", metrics[0]);
    }
    let frames_in: Vec<u64> = metrics.iter().map(|m| m["frames_in"].as_u64().unwrap()).collect();
    assert!(frames_in.windows(2).all(|w| w[0] <= w[1]) && frames_in.last() > frames_in.first(), "{frames_in:?}");
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// Records the order of every frame it sees and requests the shutdown once it saw `after`.
struct StopAfter {
    after: usize,
    shutdown: Shutdown,
    seen: Arc<Mutex<Vec<u64>>>,
}

impl Observer for StopAfter {
    fn observe(&mut self, frame: &Segmented) -> Result<(), SinkError> {
        let mut seen = self.seen.lock().unwrap();
        seen.push(frame.order);
        if seen.len() == self.after {
            self.shutdown.request();
        }
        Ok(())
    }
}

#[test]
fn a_run_asked_to_stop_after_n_frames_finishes_them_all_without_a_signal() {
    const STOP_AFTER: usize = 5;
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let path = edge_config(dir.path(), &short_video(), "");
    let mut overrides = common::testsrc_overrides("30/1", -1);
    overrides.push("output.masks=false".into());
    let config = EdgeConfig::load(&path, &overrides).unwrap();
    let shutdown = Shutdown::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop_after = StopAfter { after: STOP_AFTER, shutdown: shutdown.clone(), seen: seen.clone() };
    let outcome = edgeseg::pipeline::run_observed(&config, &shutdown, vec![Box::new(stop_after)]).unwrap();

    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= STOP_AFTER, "{seen:?}");
    assert_eq!(seen, (0..seen.len() as u64).collect::<Vec<_>>(), "the observer saw every frame, in order");
    let out = dir.path().join("out");
    let recs = records(&out);
    assert_eq!(recs.len(), seen.len(), "the observer saw what the records got");
    let summary = &outcome.summary;
    assert_eq!(recs.len() as u64, summary.frames_in - summary.dropped, "every frame that entered came out");
    assert_eq!(count_frames(&out.join("overlay.mp4")), recs.len(), "overlay video was finalised with every frame");
}

/// Lines of a child's stderr as they come.
fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; a child that never says it fails the test instead of hanging it.
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) {
    loop {
        match lines.recv_timeout(Duration::from_secs(120)) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(e) => panic!("stderr never said {needle:?}: {e}"),
        }
    }
}

/// `edgeseg run` on `pipeline` (stderr read line by line), once its model is loaded: its
/// signal handler is installed before that.
fn spawn_run(dir: &Path, pipeline: &Path, extra: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let config = edge_config(dir, &short_video(), "");
    let mut child = std::process::Command::new(common::bin())
        .args(["run", "--config", config.to_str().unwrap(), "--pipeline", pipeline.to_str().unwrap()])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    wait_for_line(&lines, "model loaded");
    (child, lines)
}

/// SIGTERM while a recording has not made its first frame yet (here an idle `appsrc`, with an
/// hour to do it) ends the run cleanly instead of after the wait.
#[test]
fn a_stop_request_while_a_recording_starts_ends_the_run_cleanly() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let idle = common::pipeline_file(dir.path(), "idle.pipeline", IDLE_SOURCE);
    let (mut child, lines) = spawn_run(dir.path(), &idle, &["--set", "ingest.first_frame_timeout_s=3600"]);
    unsafe { libc_kill(child.id() as i32, 15) };
    wait_for_line(&lines, "stop requested, ingest ends");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run did not end within a minute of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a requested stop is a clean end: {status:?}");
}

#[test]
fn a_second_signal_ends_a_stuck_run_at_once() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    // Every buffer sleeps a minute in `identity`: the source never prerolls, and stopping it
    // would wait for the sleep, like a camera that hangs.
    let stuck = common::pipeline_file(
        dir.path(),
        "stuck.pipeline",
        "videotestsrc ! video/x-raw,width=64,height=48 ! identity sleep-time=60000000 ! videoconvert ! appsink name=sink",
    );
    let (mut child, lines) = spawn_run(dir.path(), &stuck, &[]);
    unsafe { libc_kill(child.id() as i32, 15) };
    // Two signals sent before the first is handled would count as one.
    wait_for_line(&lines, "stop requested");
    unsafe { libc_kill(child.id() as i32, 2) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 2), "the second signal (SIGINT) ends the process at once: {status:?}");
    wait_for_line(&lines, "second stop request");
}

#[test]
fn missing_video_file_is_a_clear_error() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let config = edge_config(dir.path(), &dir.path().join("nope.mp4"), "");
    assert_fails_with(&run_config(&config, &[]), &["filesrc", "check that the video file exists"]);
}

#[test]
fn truncated_video_is_a_clear_error() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(common::fixtures().join("fixtures/demo.mp4")).unwrap();
    let truncated = dir.path().join("truncated.mp4");
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let config = edge_config(dir.path(), &truncated, "");
    assert_fails_with(&run_config(&config, &[]), &["qtdemux", "corrupt, truncated or not a video"]);
    let garbage = dir.path().join("garbage.mp4");
    std::fs::write(&garbage, (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect::<Vec<u8>>()).unwrap();
    let config = edge_config(dir.path(), &garbage, "");
    assert_fails_with(&run_config(&config, &[]), &["typefind"]);
}

/// A source that prerolls (not live) and never makes a frame.
const IDLE_SOURCE: &str = "appsrc caps=video/x-raw,format=BGR,width=8,height=8,framerate=10/1 ! videoconvert ! appsink name=sink";

/// A recording that never makes its first frame ends the run, naming a demuxer that found no
/// stream where there is one: that is what a truncated file looks like when `decodebin` drops
/// the demuxer's own error (it does while it is still plugging the demuxer in, on a loaded
/// machine), and the run must not wait for ever.
#[test]
fn a_recording_that_makes_no_first_frame_is_a_clear_error() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let config = edge_config(dir.path(), &short_video(), "");
    let cases = [
        (
            "stuck-demuxer.pipeline",
            "appsrc caps=video/quicktime ! qtdemux ! videoconvert ! appsink name=sink",
            "demuxer qtdemux0 found no stream",
        ),
        ("idle.pipeline", IDLE_SOURCE, "raise ingest.first_frame_timeout_s"),
    ];
    for (name, description, why) in cases {
        let pipeline = common::pipeline_file(dir.path(), name, description);
        let result = run_config(&config, &["--pipeline", pipeline.to_str().unwrap(), "--set", "ingest.first_frame_timeout_s=1"]);
        assert_fails_with(&result, &[name, "made no first frame within 1 s", why]);
    }
}

#[test]
fn stream_error_midway_keeps_everything_written_before_it() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = common::pipeline_file(
        dir.path(),
        "fails.pipeline",
        "videotestsrc num-buffers=40 ! video/x-raw,width=96,height=64 ! identity error-after=12 ! videoconvert ! appsink name=sink",
    );
    let config = edge_config(dir.path(), &short_video(), "");
    let result = run_config(&config, &["--pipeline", pipeline.to_str().unwrap()]);
    assert_fails_with(&result, &["identity0", "Failed after iterations as requested"]);
    let out = dir.path().join("out");
    let recs = records(&out);
    // identity passes 11 buffers and fails on the 12th: all 11 are written, in order.
    assert_eq!(recs.len(), 11);
    assert!(recs.iter().enumerate().all(|(i, r)| r["seq"] == i as u64));
    assert_eq!(count_frames(&out.join("overlay.mp4")), 11, "overlay video is finalised and playable");
    assert!(result.stderr.contains("the 11 frames processed before the error were written"), "{}", result.stderr);
}

#[test]
fn pipeline_that_does_not_parse_or_lacks_an_appsink_is_a_clear_error() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let config = edge_config(dir.path(), &short_video(), "");
    let broken = common::pipeline_file(dir.path(), "broken.pipeline", "videotestsrc ! nosuchelement ! appsink");
    assert_fails_with(
        &run_config(&config, &["--pipeline", broken.to_str().unwrap()]),
        &["broken.pipeline", "does not parse", "nosuchelement"],
    );
    let no_sink = common::pipeline_file(dir.path(), "nosink.pipeline", "videotestsrc num-buffers=3 ! fakesink");
    assert_fails_with(&run_config(&config, &["--pipeline", no_sink.to_str().unwrap()]), &["nosink.pipeline", "has no appsink"]);
    let missing_param = common::pipeline_file(dir.path(), "param.pipeline", "uridecodebin uri=${uri} ! videoconvert ! appsink");
    assert_fails_with(&run_config(&config, &["--pipeline", missing_param.to_str().unwrap()]), &["${uri}", "ingest.params.uri"]);
}

/// Writes a copy of the small model's manifest with `edit` applied, next to a given ONNX file.
fn manifest_variant(dir: &Path, onnx: &Path, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let text = std::fs::read_to_string(common::fixtures().join("models/small.toml")).unwrap();
    let text = text.replace("onnx = \"small.onnx\"", &format!("onnx = \"{}\"", onnx.display()));
    let path = dir.join("variant.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

#[test]
fn model_file_that_is_not_onnx_is_a_clear_error() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.onnx");
    std::fs::write(&fake, "this is not a protobuf").unwrap();
    let manifest = manifest_variant(dir.path(), &fake, |t| t);
    let config = edge_config(dir.path(), &short_video(), "");
    let result = run_config(&config, &["--set", &format!("model.manifest={}", manifest.display())]);
    assert_fails_with(&result, &["fake.onnx", "could not be loaded by ONNX Runtime"]);
    assert!(!dir.path().join("out/records.jsonl").exists() || records(&dir.path().join("out")).is_empty());
}

#[test]
fn manifest_that_disagrees_with_the_model_names_both() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let onnx = common::fixtures().join("models/small.onnx");
    let config = edge_config(dir.path(), &short_video(), "");
    let wrong_size = manifest_variant(dir.path(), &onnx, |t| t.replace("width = 256", "width = 320"));
    assert_fails_with(
        &run_config(&config, &["--set", &format!("model.manifest={}", wrong_size.display())]),
        &["small.onnx", "variant.toml", "input.height x input.width = 256x320"],
    );
    let wrong_classes = manifest_variant(dir.path(), &onnx, |t| t.replace("\"background\", \"aeroplane\", ", ""));
    assert_fails_with(
        &run_config(&config, &["--set", &format!("model.manifest={}", wrong_classes.display())]),
        &["model output has 21 classes, manifest output.classes names 19"],
    );
    let wrong_input = manifest_variant(dir.path(), &onnx, |t| t.replace("name = \"input\"", "name = \"images\""));
    assert_fails_with(
        &run_config(&config, &["--set", &format!("model.manifest={}", wrong_input.display())]),
        &["input.name = \"images\"", "model inputs are [input]"],
    );
}

#[test]
fn invalid_config_values_name_the_key_and_file() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let config = edge_config(dir.path(), &short_video(), "");
    let cases: &[(&str, &[&str])] = &[
        ("pipeline.queue_capacity=0", &["edge.toml", "pipeline.queue_capacity = 0", "1..=1024"]),
        ("output.overlay_alpha=1.5", &["output.overlay_alpha = 1.5", "0..=1"]),
        ("model.intra_threads=0", &["model.intra_threads = 0"]),
        ("remote.routing=\"sometimes\"", &["edge.toml", "sometimes"]),
        ("remote.routing=\"remote\"", &["remote.workers", "is empty but remote.routing sends frames to a worker"]),
        ("output.colour=true", &["unknown field", "colour"]),
        ("ingest.pipeline=/nonexistent.pipeline", &["ingest.pipeline = /nonexistent.pipeline", "does not exist"]),
    ];
    for (set, needles) in cases {
        let result = run_config(&config, &["--set", set]);
        assert_fails_with(&result, needles);
    }
    assert_fails_with(&run_edge(&["run", "--config", "/no/such/edge.toml"]), &["/no/such/edge.toml"]);
    // Nothing ran, so nothing was written.
    assert!(!dir.path().join("out").exists());
}
