//! The bound on frame memory (`pipeline.max_frame_mib_in_flight`), with real GStreamer and ONNX
//! Runtime: a replay waits for the budget and loses nothing, a live source over it drops frames
//! instead of waiting, and pixels no output reads are freed after preprocessing. No timing is
//! asserted: the tests hold frames to fill the budget and watch the counters.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{self, edge_config, short_video};
use edgeseg::config::{EdgeConfig, Liveness};
use edgeseg::frame::Segmented;
use edgeseg::ingest::{FrameBudget, IngestOptions, PipelineSpec};
use edgeseg::shutdown::Shutdown;
use edgeseg::sink::{Observer, SinkError};

const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;

fn testsrc(live: bool, num_buffers: i64) -> PipelineSpec {
    let params: BTreeMap<String, String> = [
        ("pattern", "ball".to_string()),
        ("width", WIDTH.to_string()),
        ("height", HEIGHT.to_string()),
        ("framerate", if live { "50/1" } else { "30/1" }.to_string()),
        ("num_buffers", num_buffers.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let spec = PipelineSpec::from_file(&common::fixtures().join("pipelines/testsrc.pipeline"), &params).unwrap();
    if live {
        spec
    } else {
        // The same source, not live: it runs as fast as the ingest takes frames.
        PipelineSpec { description: spec.description.replace("is-live=true", "is-live=false"), ..spec }
    }
}

#[test]
fn a_replay_waits_for_the_byte_budget_and_loses_no_frame() {
    const FRAMES: u64 = 12;
    const HELD: u64 = 3;
    let _machine = common::shared_machine();
    let frame_bytes = FrameBudget::frame_bytes(WIDTH, HEIGHT);
    let budget = FrameBudget::new(HELD * frame_bytes);
    let options = IngestOptions { liveness: Liveness::Replay, capacity: 8, budget: budget.clone(), ..IngestOptions::default() };
    let shutdown = Shutdown::new();
    let ingest = edgeseg::ingest::spawn(testsrc(false, FRAMES as i64), &options, shutdown).unwrap();
    assert!(!ingest.live);

    // Hold the frames like a slow pipeline does, returning the oldest only once the budget is
    // full: the ingest must wait for it each time (the channel alone would take 8).
    let mut held = std::collections::VecDeque::new();
    let mut seqs = Vec::new();
    for frame in ingest.frames.iter() {
        assert!(budget.in_flight() <= budget.limit(), "{} bytes in flight over a budget of {}", budget.in_flight(), budget.limit());
        seqs.push(frame.seq);
        held.push_back(frame);
        if held.len() as u64 == HELD {
            let oldest = held.pop_front().unwrap();
            budget.release_frame(&oldest);
        }
    }
    ingest.thread.join().unwrap().unwrap();
    assert_eq!(seqs, (0..FRAMES).collect::<Vec<_>>(), "every frame, in order");
    assert_eq!(ingest.stats.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(budget.peak(), HELD * frame_bytes, "the budget was filled, never exceeded");
}

#[test]
fn a_live_source_over_its_byte_budget_drops_frames_instead_of_waiting() {
    let _machine = common::shared_machine();
    // Room for one frame: while the consumer holds it, every new frame is dropped.
    let budget = FrameBudget::new(FrameBudget::frame_bytes(WIDTH, HEIGHT));
    let options = IngestOptions { liveness: Liveness::Auto, capacity: 4, budget: budget.clone(), ..IngestOptions::default() };
    let shutdown = Shutdown::new();
    let ingest = edgeseg::ingest::spawn(testsrc(true, -1), &options, shutdown.clone()).unwrap();
    assert!(ingest.live);

    let first = ingest.frames.recv().unwrap();
    // Wait (for an event, with a generous bound against a hang) until the source went on.
    let started = Instant::now();
    while ingest.stats.frames_in.load(Ordering::Relaxed) < first.seq + 6 {
        assert!(started.elapsed() < Duration::from_secs(60), "the live source stopped producing: it is blocked");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(budget.in_flight() <= budget.limit());
    budget.release_frame(&first);
    let next = ingest.frames.recv().unwrap();
    shutdown.request();
    drop(ingest.frames);
    ingest.thread.join().unwrap().unwrap();
    assert!(next.seq >= first.seq + 5, "frames made while the budget was spent were dropped: {} after {}", next.seq, first.seq);
    assert!(ingest.stats.dropped.load(Ordering::Relaxed) >= 4);
}

/// Whether each frame the sink shows still has its pixels.
struct PixelWitness {
    needs_pixels: bool,
    seen: Arc<Mutex<Vec<(usize, u32, u32)>>>,
}

impl Observer for PixelWitness {
    fn observe(&mut self, frame: &Segmented) -> Result<(), SinkError> {
        self.seen.lock().unwrap().push((frame.frame.bgr.len(), frame.frame.width, frame.frame.height));
        Ok(())
    }

    fn needs_pixels(&self) -> bool {
        self.needs_pixels
    }
}

/// Runs the short video with `overlay` and an observer that does or does not read pixels;
/// returns what it saw (pixel bytes, width, height per frame) and the summary's frame memory.
fn observed_run(overlay: bool, needs_pixels: bool) -> (Vec<(usize, u32, u32)>, edgeseg::pipeline::RunSummary) {
    let dir = tempfile::tempdir().unwrap();
    let path = edge_config(dir.path(), &short_video(), "");
    let overrides =
        [format!("output.overlay={overlay}"), "output.masks=false".to_string(), "pipeline.max_frame_mib_in_flight=1".to_string()];
    let config = EdgeConfig::load(&path, &overrides).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let witness = PixelWitness { needs_pixels, seen: seen.clone() };
    let outcome = edgeseg::pipeline::run_observed(&config, &Shutdown::new(), vec![Box::new(witness)]).unwrap();
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let seen = seen.lock().unwrap().clone();
    (seen, outcome.summary)
}

#[test]
fn pixels_no_output_reads_are_freed_after_preprocessing_and_the_run_stays_within_its_budget() {
    let _machine = common::shared_machine();
    let frame_pixels = 160 * 120 * 3;
    for (overlay, needs_pixels, kept) in [(false, false, false), (false, true, true), (true, false, true)] {
        let (seen, summary) = observed_run(overlay, needs_pixels);
        assert_eq!(seen.len(), common::SHORT_VIDEO_FRAMES, "overlay {overlay}, observer reads pixels {needs_pixels}");
        let expected = if kept { frame_pixels } else { 0 };
        assert!(
            seen.iter().all(|&(bytes, width, height)| bytes == expected && (width, height) == (160, 120)),
            "overlay {overlay}, observer reads pixels {needs_pixels}: {seen:?}"
        );
        let memory = summary.frame_memory;
        assert_eq!(memory.budget_bytes, 1 << 20);
        assert!(memory.peak_bytes > 0 && memory.peak_bytes <= memory.budget_bytes, "{memory:?}");
        assert_eq!(summary.dropped, 0);
    }
}

/// A frame larger than `output.overlay_max_*` is scaled down for the overlay (the encoder's
/// memory grows with its picture), keeping its aspect ratio; the masks keep the frame's size.
#[test]
fn the_overlay_of_a_large_frame_is_scaled_down_to_fit_its_largest_size() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let path = edge_config(dir.path(), &short_video(), "");
    let overrides = ["output.overlay_max_width=100".to_string(), "output.overlay_max_height=100".to_string()];
    let config = EdgeConfig::load(&path, &overrides).unwrap();
    let outcome = edgeseg::pipeline::run_observed(&config, &Shutdown::new(), Vec::new()).unwrap();
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let overlay = dir.path().join("out/overlay.mp4");
    let params = BTreeMap::from([("location".to_string(), overlay.display().to_string())]);
    let spec = PipelineSpec::from_file(&common::fixtures().join("pipelines/file.pipeline"), &params).unwrap();
    let frames = edgeseg::ingest::collect_frames(spec, usize::MAX).unwrap();
    assert_eq!(frames.len(), common::SHORT_VIDEO_FRAMES, "every frame is in the overlay");
    assert!(frames.iter().all(|f| (f.width, f.height) == (100, 74)), "160x120 fitted into 100x100 with even sides");
    let mask =
        png::Decoder::new(std::io::Cursor::new(std::fs::read(dir.path().join("out/masks/000000.png")).unwrap())).read_info().unwrap();
    assert_eq!((mask.info().width, mask.info().height), (160, 120), "masks keep the frame's size");
}
