//! The decision network in the live pipeline, with the real small network from the assets: a
//! network trained by `edgeseg dn train` (a few iterations on the VOC smoke set), then real
//! replays of the first frames of `videos/vtest.avi`:
//!
//! - with the threshold at 0 every frame stays local, every record carries the prediction (21
//!   class IoUs, IoU_img, gain, rule), and the masks, finished by the small network's trunk on
//!   the decision's features, are the whole small network's;
//! - with the threshold at the median prediction, exactly the frames predicted above it stay
//!   local and the others go remote (here to an unreachable worker: they fall back to the small
//!   network, and none is lost);
//! - an ensemble (`decision.ensemble`, a second seed) predicts the mean of its members;
//! - a damaged `dn.safetensors` stops the run before any frame, naming the file.

use std::path::{Path, PathBuf};

use crate::common;
use serde_json::Value;

const FRAMES: usize = 16;

fn assets() -> Option<PathBuf> {
    let dir = edgeseg::infer::manifest::assets_dir();
    let needed = ["models/deeplabv3_mnv2_dm05_voc_257.onnx", "models/deeplabv3_mnv2_voc_513_fp32.onnx", "voc/val.txt", "videos/vtest.avi"];
    if needed.iter().all(|p| dir.join(p).is_file()) {
        Some(dir)
    } else {
        eprintln!("SKIPPED: the real networks, voc/ or videos/vtest.avi are missing under {} (set EDGESEG_ASSETS)", dir.display());
        None
    }
}

/// `edgeseg dn train` on the 38 VOC smoke images, briefly: a real network of the real format,
/// not a good one (the per-image figures land in the project's cache, so reruns are quick).
fn train(dir: &Path, assets: &Path, name: &str, seed: u64) -> PathBuf {
    let out = dir.join(name);
    let sets = format!("sets=[{{name=\"voc\", data=\"{}\", split=\"train\"}}]", assets.join("voc").display());
    let config = common::root().join("config/dn.toml");
    let run = common::run_edge(&[
        "dn",
        "train",
        "--config",
        &config.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
        "--set",
        &sets,
        "--set",
        "training.max_iterations=40",
        "--set",
        "training.validate_every=20",
        "--set",
        &format!("training.seed={seed}"),
    ]);
    assert!(run.status.success(), "dn train failed:\n{}", run.stderr);
    out.join("dn.toml")
}

/// A replay of the first `FRAMES` frames of vtest.avi through the real small network.
fn edge_config(dir: &Path, assets: &Path, name: &str, extra: &str) -> PathBuf {
    let run_dir = dir.join(name);
    std::fs::create_dir_all(&run_dir).unwrap();
    let path = common::edge_config(&run_dir, &assets.join("videos/vtest.avi"), extra);
    let root = common::root();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("live = \"replay\"", &format!("live = \"replay\"\nmax_frames = {FRAMES}"))
        .replace(&root.join("models/small.toml").display().to_string(), &root.join("models/deeplab-small.toml").display().to_string())
        .replace("masks = true", "masks = false")
        .replace("overlay = true", "overlay = false");
    std::fs::write(&path, text).unwrap();
    path
}

/// Sections routing by the decision network at `threshold`, with frames sent remote to a worker
/// that is not there (`tls` holds a development PKI).
fn decision_sections(network: &Path, threshold: f32, tls: &edgeseg::config::TlsPaths) -> String {
    ensemble_sections(network, &[], threshold, tls)
}

/// As [`decision_sections`], the predictions of `network` averaged with those of `members`.
fn ensemble_sections(network: &Path, members: &[&Path], threshold: f32, tls: &edgeseg::config::TlsPaths) -> String {
    let root = common::root();
    let nobody = "127.0.0.1:9".parse().expect("an address");
    let remote = crate::remote::routed_remote_section("threshold", nobody, tls, "deadline_ms = 300\nconnect_timeout_ms = 100");
    format!(
        r#"{remote}
[control]
score = "decision-network"
threshold = {threshold}
# The worker is absent on purpose: the breaker would keep frames local after a few failures.
breaker_failures = 100000
[decision]
network = "{network}"
ensemble = {members:?}
encoder = "{encoder}"
head = "{head}"
"#,
        network = network.display(),
        members = members.iter().map(|m| m.display().to_string()).collect::<Vec<_>>(),
        encoder = root.join("models/derived/small_stem.onnx").display(),
        head = root.join("models/derived/small_trunk.onnx").display(),
    )
}

fn run(config: &Path) -> Vec<Value> {
    let result = common::run_edge(&["run", "--config", &config.to_string_lossy()]);
    assert!(result.status.success(), "edgeseg run failed:\n{}", result.stderr);
    let out = config.parent().unwrap().join("out");
    let records = common::records(&out);
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap_or_default();
    assert_eq!(records.len(), FRAMES, "every frame has its record\nsummary: {summary}\n{}", result.stderr);
    records
}

/// Pixel fraction per class id.
fn fractions(record: &Value) -> Vec<(u64, f64)> {
    record["classes"].as_array().unwrap().iter().map(|c| (c["id"].as_u64().unwrap(), c["fraction"].as_f64().unwrap())).collect()
}

fn predicted_iou_img(record: &Value) -> f64 {
    record["decision"]["prediction"]["image_iou"].as_f64().expect("a prediction with image_iou")
}

#[test]
fn decision_network_routes_by_its_threshold_and_local_frames_reuse_its_features() {
    let Some(assets) = assets() else { return };
    let _machine = common::whole_machine();
    let dir = tempfile::tempdir().unwrap();
    let network = train(dir.path(), &assets, "dn", 20261126);
    let pki = edgeseg::remote::tls::generate_dev_pki(&dir.path().join("pki"), &["localhost".into()], &["edge".into()], false)
        .expect("generating a development PKI");
    let tls = &pki.clients[0].1;

    let whole = run(&edge_config(dir.path(), &assets, "whole", ""));
    let all_local = run(&edge_config(dir.path(), &assets, "all-local", &decision_sections(&network, 0.0, tls)));
    for (w, d) in whole.iter().zip(&all_local) {
        assert_eq!(d["decision"]["route"], "local", "threshold 0 keeps every frame local: {d}");
        assert_eq!(d["source"]["kind"], "local");
        let prediction = &d["decision"]["prediction"];
        assert_eq!(prediction["class_iou"].as_array().map(Vec::len), Some(21), "{prediction}");
        assert_eq!(prediction["rule"], "predicted-iou-img");
        assert!(prediction["gain"].is_number());
        assert!(d["latency_ms"]["decision"].as_f64().unwrap() > 0.0);
        // The trunk on the decision's stem features is the small network: the same classes, in the
        // same shares (to a few pixels where a logit tie rounds the other way). The frame cut
        // by the early end of stream is not always the same one: compared where it is.
        if w["pts_ms"] != d["pts_ms"] {
            assert_eq!(w["seq"], FRAMES as u64 - 1, "only the last frame may differ: {w} against {d}");
            continue;
        }
        let (a, b) = (fractions(w), fractions(d));
        assert_eq!(a.iter().map(|c| c.0).collect::<Vec<_>>(), b.iter().map(|c| c.0).collect::<Vec<_>>(), "frame {}", w["seq"]);
        for ((_, x), (_, y)) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-3, "frame {}: {a:?} against {b:?}", w["seq"]);
        }
    }

    let mut values: Vec<f64> = all_local.iter().map(predicted_iou_img).collect();
    values.sort_by(f64::total_cmp);
    let threshold = ((values[FRAMES / 2 - 1] + values[FRAMES / 2]) / 2.0) as f32;
    let split = run(&edge_config(dir.path(), &assets, "split", &decision_sections(&network, threshold, tls)));
    for record in &split {
        let local = predicted_iou_img(record) > threshold as f64;
        let decision = &record["decision"];
        assert_eq!(decision["threshold"].as_f64().map(|t| t as f32), Some(threshold));
        let reason = decision["reason"].as_str().unwrap();
        assert!(reason.contains(if local { " > " } else { " <= " }), "threshold {threshold}: {record}");
        // The control unit keeps a frame local when the remote path cannot take it now (its
        // queue full while the absent worker times out); it says so in the reason.
        let overridden = !local && reason.contains("remote queue full");
        let expected = if local || overridden { "local" } else { "remote" };
        assert_eq!(decision["route"], expected, "threshold {threshold}: {record}");
        assert_eq!(record["source"]["kind"], if expected == "local" { "local" } else { "fallback" }, "{record}");
    }
    let remote = split.iter().filter(|r| r["decision"]["route"] == "remote").count();
    assert!(remote > 0 && remote < FRAMES, "{remote} of {FRAMES} frames remote at the median prediction {threshold}");

    // An ensemble with a second seed: each frame's prediction is the mean of the two networks'.
    let second = train(dir.path(), &assets, "dn-seed2", 2);
    let alone = run(&edge_config(dir.path(), &assets, "second", &decision_sections(&second, 0.0, tls)));
    let both = run(&edge_config(dir.path(), &assets, "ensemble", &ensemble_sections(&network, &[&second], 0.0, tls)));
    let class_iou = |r: &Value| -> Vec<f64> {
        r["decision"]["prediction"]["class_iou"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
    };
    let mut compared = 0;
    for ((one, two), mean) in all_local.iter().zip(&alone).zip(&both) {
        if one["pts_ms"] != mean["pts_ms"] || two["pts_ms"] != mean["pts_ms"] {
            continue;
        }
        compared += 1;
        for ((a, b), m) in class_iou(one).iter().zip(class_iou(two)).zip(class_iou(mean)) {
            assert!((m - (a + b) / 2.0).abs() < 1e-5, "frame {}: ensemble {m}, members {a} and {b}", mean["seq"]);
        }
    }
    assert!(compared >= FRAMES - 1, "frames compared {compared}");

    // A damaged weights file: the run stops before the camera starts, naming the file.
    let weights = network.with_file_name("dn.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let damaged = common::run_edge(&[
        "run",
        "--config",
        &edge_config(dir.path(), &assets, "damaged", &decision_sections(&network, 0.5, tls)).to_string_lossy(),
    ]);
    assert!(!damaged.status.success());
    assert!(damaged.stderr.contains("dn.safetensors") && damaged.stderr.contains("retrain"), "{}", damaged.stderr);
    assert!(common::records(&dir.path().join("damaged/out")).is_empty(), "no frame was processed");
}
