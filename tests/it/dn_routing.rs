//! `edgeseg dn train` and `edgeseg eval routing` end to end on the real networks (the decision
//! network's encoder is the real small network's, so fixture models cannot stand in; skipped
//! with a printed reason without `../shared/assets` or `$EDGESEG_ASSETS`): a short training on a
//! handful of VOC and COCO images plus a few teacher frames of a fixture video writes loadable
//! files, a second run reads every per-image figure from the cache and gives the same weights,
//! and a routing evaluation writes its CSV, plots and report.

use std::path::{Path, PathBuf};
use std::process::Command;

use edgeseg::decision::store;
use edgeseg::eval::{CompactConfusion, Confusion, VOC_CLASSES};

use super::common;

fn assets() -> Option<PathBuf> {
    let dir = edgeseg::infer::manifest::assets_dir();
    let needed =
        ["models/deeplabv3_mnv2_dm05_voc_257.onnx", "models/deeplabv3_mnv2_voc_513_fp32.onnx", "voc/val.txt", "coco_voc20/val.txt"];
    if needed.iter().all(|p| dir.join(p).is_file()) {
        Some(dir)
    } else {
        eprintln!("SKIPPED: the real networks or labelled sets are missing under {} (set EDGESEG_ASSETS)", dir.display());
        None
    }
}

/// The first `n` ids of a set's list, written to `dir/name`.
fn first_ids(list: &Path, n: usize, dir: &Path, name: &str) -> PathBuf {
    let ids: Vec<String> =
        std::fs::read_to_string(list).unwrap().lines().filter(|l| !l.trim().is_empty()).take(n).map(String::from).collect();
    let path = dir.join(name);
    std::fs::write(&path, ids.join("\n") + "\n").unwrap();
    path
}

fn run(args: &[&str]) -> String {
    let output = Command::new(common::bin()).args(args).current_dir(common::root()).output().expect("running edgeseg");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "edgeseg {args:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

#[test]
fn dn_train_twice_then_eval_routing_on_real_images() {
    let Some(assets) = assets() else { return };
    let _machine = common::shared_machine();
    let root = common::fixtures();
    let dir = tempfile::tempdir().unwrap();
    let voc_list = first_ids(&assets.join("voc/val.txt"), 6, dir.path(), "voc6.txt");
    let coco_list = first_ids(&assets.join("coco_voc20/val.txt"), 6, dir.path(), "coco6.txt");
    let config = dir.path().join("dn.toml");
    let text = format!(
        r#"
[base]
encoder = "{root}/models/derived/small_encoder.onnx"
head = "{root}/models/derived/small_head.onnx"
[models]
small = "{root}/models/deeplab-small.toml"
large = "{root}/models/deeplab-large-fp32.toml"
[compute]
cache_dir = "cache"
[[sets]]
name = "voc6"
data = "${{EDGESEG_ASSETS}}/voc"
list = "voc6.txt"
split = "train"
[[sets]]
name = "coco6"
data = "${{EDGESEG_ASSETS}}/coco_voc20"
list = "coco6.txt"
split = "validation"
[[videos]]
name = "short"
path = "{root}/fixtures/short.mp4"
pipeline = "{root}/pipelines/file.pipeline"
every = 10
max_frames = 3
split = "train"
[training]
max_iterations = 30
validate_every = 10
[output]
dir = "dn"
"#,
        root = root.display()
    );
    std::fs::write(&config, text).unwrap();
    let config_arg = config.to_str().unwrap();

    let first = run(&["dn", "train", "--config", config_arg]);
    assert!(first.contains("9 training and 6 validation images"), "{first}");
    assert!(first.contains("15 computed, 0 from the cache"), "{first}");
    let toml = dir.path().join("dn/dn.toml");
    let loaded = store::load(&toml).unwrap();
    assert_eq!(loaded.meta.base.input_size, 257);
    assert_eq!(loaded.meta.layers.input_len, 800);
    let sets: Vec<(&str, usize)> = loaded.meta.training.sets.iter().map(|s| (s.name.as_str(), s.images)).collect();
    assert_eq!(sets, [("voc6", 6), ("short", 3)]);
    assert_eq!(loaded.meta.training.sets[1].labels, store::LabelSource::Teacher);
    assert_eq!(loaded.meta.training.validation_sets[0].name, "coco6");
    assert_eq!(loaded.meta.validation.as_ref().map(|v| (v.iteration, v.samples)), Some((30, 6)));
    let weights = loaded.meta.weights_sha256.clone();

    // Same data, same seed: every figure from the cache, the same weights.
    let second = run(&["dn", "train", "--config", config_arg, "--out", dir.path().join("again").to_str().unwrap()]);
    assert!(second.contains("0 computed, 15 from the cache"), "{second}");
    assert_eq!(store::load(&dir.path().join("again/dn.toml")).unwrap().meta.weights_sha256, weights);

    let out = dir.path().join("routing");
    let voc = assets.join("voc");
    let coco = assets.join("coco_voc20");
    // eval routing on the 6 VOC images, with `extra` arguments, into `out`.
    let eval_routing = |extra: &[&str], out: &Path| {
        let fixed = ["eval", "routing", "--dn", toml.to_str().unwrap(), "--config", config_arg, "--data", voc.to_str().unwrap()];
        let tail = ["--list", voc_list.to_str().unwrap(), "--out", out.to_str().unwrap()];
        run(&[&fixed[..], extra, &tail[..]].concat())
    };
    let report = eval_routing(&["--choose-on", coco.to_str().unwrap(), "--choose-list", coco_list.to_str().unwrap()], &out);
    assert!(report.contains("eval routing: 6 images"), "{report}");
    let csv = std::fs::read_to_string(out.join("routing.csv")).unwrap();
    let policies = ["dn-thesis", "dn-iou-img", "dn-gain", "max-softmax", "entropy", "random", "oracle"];
    for policy in policies {
        let thresholds = csv.lines().filter(|l| l.starts_with(&format!("{policy},threshold,"))).count();
        assert_eq!(thresholds, 101, "{policy}");
        let fractions: Vec<&str> = csv.lines().filter(|l| l.starts_with(&format!("{policy},fraction,"))).collect();
        // From none remote to all remote (7 points at most for 6 images).
        assert!((2..=7).contains(&fractions.len()), "{policy}: {fractions:?}");
    }
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(markdown.contains("| dn-thesis |") && markdown.contains("## dn-iou-img by threshold"), "{markdown}");
    assert!(markdown.contains("coco_voc20/coco6.txt"), "thresholds chosen on the named set: {markdown}");
    for stem in ["miou_vs_remote_fraction", "miou_vs_compute", "precision_dn-thesis"] {
        let png = std::fs::read(out.join(format!("{stem}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5000, "{stem}.png");
        let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("hybrid mIoU") || stem.starts_with("precision"), "{stem}.svg");
    }
    assert!(markdown.contains("## Keeping the chosen remote fraction instead of the threshold"), "{markdown}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("routing.json")).unwrap()).unwrap();
    assert_eq!(json["images"], 6);
    // Every policy's normalised AUC comes with a bootstrap interval around it and, against the
    // small network's confidence, the share of resamples it wins.
    assert_eq!((json["bootstrap"]["block"].as_u64(), json["bootstrap"]["baseline"].as_str()), (Some(2), Some("max-softmax")));
    assert!(json["bootstrap"]["resamples"].as_u64().unwrap() > 500, "{}", json["bootstrap"]);
    for policy in json["policies"].as_array().unwrap() {
        let interval: Vec<f64> = policy["normalised_auc_interval"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(interval[0] <= interval[1], "{policy}");
        assert_eq!(policy["ahead_of_baseline"].is_null(), policy["name"] == "max-softmax", "{policy}");
    }
    assert!(markdown.contains("| policy | normalised AUC | interval | ahead of baseline |"), "{markdown}");
    check_images_csv(&std::fs::read_to_string(out.join("images.csv")).unwrap(), &json);

    // An ensemble of one network with itself (the retrained copy has the same weights) averages
    // identical predictions: the same figures.
    let ensemble_out = dir.path().join("routing-ensemble");
    let again = dir.path().join("again/dn.toml");
    eval_routing(&["--ensemble", again.to_str().unwrap(), "--resamples", "0"], &ensemble_out);
    let ensemble: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ensemble_out.join("routing.json")).unwrap()).unwrap();
    assert!(ensemble["bootstrap"].is_null() && ensemble["policies"][0]["normalised_auc_interval"].is_null(), "--resamples 0: no intervals");
    let auc = |v: &serde_json::Value, policy: &str| {
        v["policies"].as_array().unwrap().iter().find(|p| p["name"] == policy).map(|p| p["auc"].as_f64().unwrap()).unwrap()
    };
    for policy in ["dn-thesis", "dn-iou-img", "dn-gain"] {
        assert!((auc(&ensemble, policy) - auc(&json, policy)).abs() < 1e-9, "{policy}");
    }
}

/// `images.csv` of `eval routing` holds each image's own figures: one row per report and
/// validation image, an IoU_img that is its confusion matrix's, and report confusions that sum
/// to the set's all-small and all-large mIoU of `routing.json`.
fn check_images_csv(csv: &str, json: &serde_json::Value) {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name}: {header:?}"));
    for policy in ["dn-thesis", "dn-iou-img", "dn-gain", "max-softmax", "entropy"] {
        column(policy);
    }
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == header.len()), "{csv}");
    let part = |name: &str| rows.iter().filter(|r| r[column("part")] == name).count();
    assert_eq!((part("report"), part("validation")), (6, 6), "{csv}");
    let (mut small, mut large) = (Confusion::new(VOC_CLASSES), Confusion::new(VOC_CLASSES));
    for row in rows.iter().filter(|r| r[column("part")] == "report") {
        let confusion = |name: &str| CompactConfusion::parse(row[column(name)], VOC_CLASSES).unwrap();
        let small_iou_img: f64 = row[column("small_iou_img")].parse().unwrap();
        let own = confusion("small_confusion").totals().miou_union_classes().unwrap();
        assert!((small_iou_img - own).abs() < 1e-5, "{row:?}");
        let gain: f64 = row[column("gain")].parse().unwrap();
        let large_iou_img: f64 = row[column("large_iou_img")].parse().unwrap();
        assert!((gain - (large_iou_img - small_iou_img)).abs() < 1e-5, "{row:?}");
        small.merge_compact(&confusion("small_confusion")).unwrap();
        large.merge_compact(&confusion("large_confusion")).unwrap();
    }
    for (confusion, key) in [(small, "all_small_miou"), (large, "all_large_miou")] {
        let miou = confusion.totals().miou_ground_truth_classes().unwrap();
        assert!((miou - json[key].as_f64().unwrap()).abs() < 1e-9, "{key}: {miou} against {}", json[key]);
    }
}

/// Every decision-network config the project ships (the default, the demo's and each protocol
/// behind a README figure) loads and passes its checks on the real assets, so a command the
/// README gives does not stop at a renamed key or a moved file.
#[test]
fn every_shipped_decision_network_config_loads() {
    if assets().is_none() {
        return;
    }
    let config = common::root().join("config");
    let mut paths = vec![config.join("dn.toml"), config.join("dn-demo.toml")];
    let mut protocols: Vec<PathBuf> = std::fs::read_dir(config.join("dn-protocols"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension() == Some("toml".as_ref()))
        .collect();
    protocols.sort();
    assert!(protocols.len() >= 8, "{protocols:?}");
    paths.extend(protocols);
    for path in &paths {
        let loaded = edgeseg::decision::config::DnConfig::load(path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let train = loaded.sets.iter().filter(|s| s.split == edgeseg::decision::config::Split::Train).count() + loaded.videos.len();
        assert!(train > 0, "{}: nothing to train on", path.display());
    }
}
