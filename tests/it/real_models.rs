//! The real PASCAL VOC networks from the assets folder (`$EDGESEG_ASSETS`, default
//! `../shared/assets`; present in CI) through the same calls the pipeline, the worker and the
//! evaluator make: they find what the test images show, the large network agrees with Coral's
//! reference mask, batching changes nothing, and a manifest that disagrees with the graph is a
//! clear error naming both files.

use std::path::{Path, PathBuf};

use edgeseg::config::{Count, SessionConfig};

use super::common;
use edgeseg::infer::manifest::assets_dir;
use edgeseg::infer::{ClassMap, InputBuffer, Model, Placement};
use opencv::prelude::*;

const BIRD: u8 = 3;
const CAR: u8 = 7;
const PERSON: u8 = 15;

fn manifest(name: &str) -> PathBuf {
    common::root().join("models").join(format!("{name}.toml"))
}

/// One intra-op thread: the tests run beside each other on a small machine.
fn settings(manifest: &Path) -> SessionConfig {
    SessionConfig { manifest: manifest.to_path_buf(), intra_threads: Count::literal(1), ..Default::default() }
}

fn load(manifest: &Path) -> Model {
    Model::load(&settings(manifest))
        .unwrap_or_else(|e| panic!("loading {}: {e} (are the assets in {}?)", manifest.display(), assets_dir().display()))
}

/// A test image as tightly packed BGR (OpenCV's order, like the frames from GStreamer).
struct Image {
    bgr: Vec<u8>,
    width: u32,
    height: u32,
}

fn read(name: &str, flags: i32) -> Mat {
    let path = assets_dir().join("models/testdata").join(name);
    let mat = opencv::imgcodecs::imread(path.to_str().unwrap(), flags).unwrap();
    assert!(!mat.empty(), "{} is missing or unreadable", path.display());
    mat
}

fn image(name: &str) -> Image {
    let mat = read(name, opencv::imgcodecs::IMREAD_COLOR);
    Image { bgr: mat.data_bytes().unwrap().to_vec(), width: mat.cols() as u32, height: mat.rows() as u32 }
}

fn segment(model: &mut Model, img: &Image) -> ClassMap {
    let map = model.segment(&img.bgr, img.width, img.height).unwrap();
    assert_eq!((map.width, map.height), (img.width, img.height), "class map at frame size");
    map
}

fn share(map: &ClassMap, class: u8) -> f64 {
    map.classes.iter().filter(|&&c| c == class).count() as f64 / map.classes.len() as f64
}

fn dominant_foreground(map: &ClassMap) -> u8 {
    let mut counts = [0usize; 256];
    for &c in &map.classes {
        counts[c as usize] += 1;
    }
    (1..=255u8).max_by_key(|&c| counts[c as usize]).unwrap()
}

#[test]
fn small_network_finds_the_person_and_the_cars() {
    let mut small = load(&manifest("deeplab-small"));
    let portrait = segment(&mut small, &image("grace_hopper.bmp"));
    assert_eq!(dominant_foreground(&portrait), PERSON);
    // MANIFEST.md: person 61.9 % with a PIL stretch; resize kernels differ a little.
    assert!((0.5..0.75).contains(&share(&portrait, PERSON)), "person share {}", share(&portrait, PERSON));
    let traffic = segment(&mut small, &image("traffic0001.bmp"));
    assert_eq!(dominant_foreground(&traffic), CAR);
    assert!(share(&traffic, CAR) > 0.02, "car share {}", share(&traffic, CAR));
}

#[test]
fn small_network_confidence_is_a_probability_and_an_entropy() {
    let mut small = load(&manifest("deeplab-small"));
    let img = image("grace_hopper.bmp");
    let (map, confidence) = small.segment_with_confidence(&img.bgr, img.width, img.height).unwrap();
    assert_eq!(map, segment(&mut small, &img));
    let c = confidence.expect("logits give a confidence");
    assert!(c.mean_max_softmax > 1.0 / 21.0 && c.mean_max_softmax <= 1.0, "{c:?}");
    assert!(c.mean_entropy >= 0.0 && c.mean_entropy < 21f32.ln(), "{c:?}");
    // A portrait is an easy image: most pixels are confidently person or background.
    assert!(c.mean_max_softmax > 0.7, "{c:?}");
}

/// Intersection over union of one class between two maps of the same size.
fn class_iou(a: &ClassMap, b: &ClassMap, class: u8) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (&x, &y) in a.classes.iter().zip(&b.classes) {
        inter += (x == class && y == class) as usize;
        union += (x == class || y == class) as usize;
    }
    inter as f64 / union.max(1) as f64
}

/// Coral's reference mask is the published int8 network's own output, so this checks that
/// preprocessing (RGB, uint8, NHWC) and reading the `classes` output are right, for both
/// variants. The measure is the IoU of the bird class (MANIFEST.md reports 0.905 / 0.903).
#[test]
fn large_networks_agree_with_the_reference_bird_mask() {
    let reference = read("bird_segmentation_mask.bmp", opencv::imgcodecs::IMREAD_GRAYSCALE);
    let reference =
        ClassMap { width: reference.cols() as u32, height: reference.rows() as u32, classes: reference.data_bytes().unwrap().to_vec() };
    let bird = image("bird_segmentation.bmp");
    for name in ["deeplab-large-int8", "deeplab-large-fp32"] {
        let mut large = load(&manifest(name));
        let map = segment(&mut large, &bird);
        let iou = class_iou(&map, &reference, BIRD);
        eprintln!("{name}: bird IoU against the reference mask {iou:.3}");
        assert!(iou > 0.85, "{name}: bird IoU {iou:.3}");
        assert_eq!(large.segment_with_confidence(&bird.bgr, bird.width, bird.height).unwrap().1, None, "a class map has no scores");
    }
}

/// What the worker does: several frames in one batch must give the masks each gives alone.
#[test]
fn batching_the_large_network_changes_no_mask() {
    let images = [image("bird_segmentation.bmp"), image("grace_hopper.bmp"), image("traffic0001.bmp")];
    for name in ["deeplab-large-fp32", "deeplab-large-int8"] {
        let mut large = load(&manifest(name));
        let mut batch = InputBuffer::new(&large.manifest, 0);
        let mut placements: Vec<Placement> = Vec::new();
        let mut alone = Vec::new();
        for img in &images {
            let mut one = InputBuffer::new(&large.manifest, 1);
            let placement =
                edgeseg::infer::preprocess(&img.bgr, img.width, img.height, &large.manifest, one.image_mut(0).unwrap()).unwrap();
            batch.append(&one).unwrap();
            placements.push(placement);
            alone.push(large.run(&one).unwrap().class_map(0, &placement).unwrap());
        }
        let together = large.run(&batch).unwrap();
        assert_eq!(together.batch(), images.len());
        for (i, (placement, single)) in placements.iter().zip(&alone).enumerate() {
            assert!(together.class_map(i, placement).unwrap() == *single, "{name}: image {i} differs in a batch");
        }
        // The portrait keeps its aspect ratio (pad) and still comes back at frame size.
        assert_eq!((alone[1].width, alone[1].height), (512, 600));
        assert_eq!(dominant_foreground(&alone[1]), PERSON);
    }
}

/// Writes a copy of `name`'s manifest into `dir` with `edit` applied, the ONNX path made absolute.
fn manifest_variant(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(manifest(name)).unwrap();
    let path = dir.join("variant.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn load_error(manifest: &Path) -> String {
    Model::load(&settings(manifest)).expect_err("the manifest disagrees with the graph").to_string()
}

#[test]
fn manifest_that_disagrees_with_a_real_graph_names_both_files_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    type Edit = fn(String) -> String;
    let cases: &[(&str, Edit, &str)] = &[
        (
            "deeplab-small",
            |t| t.replace("layout = \"NHWC\"", "layout = \"NCHW\""),
            "colour channels at axis 1, but model input Tensor<f32>(N, 257, 257, 3) has 257 there, not 3 (the model looks NHWC",
        ),
        (
            "deeplab-small",
            |t| t.replace("width = 257", "width = 256"),
            "model input is 257x257 (HxW), manifest input.height x input.width = 257x256",
        ),
        (
            "deeplab-small",
            |t| t.replace("kind = \"logits\"", "kind = \"classes\"").replace("layout = \"NCHW\"\n", ""),
            "manifest output.kind = \"classes\" expects an int64 class map",
        ),
        (
            "deeplab-large-fp32",
            |t| t.replace("dtype = \"uint8\"", "dtype = \"float32\"\nscale = 1.0\nmean = [0.0, 0.0, 0.0]\nstd = [1.0, 1.0, 1.0]"),
            "manifest input.dtype = \"float32\", model input \"input\" is Tensor<u8>",
        ),
        (
            "deeplab-large-int8",
            |t| t.replace("name = \"classes\"", "name = \"argmax\""),
            "manifest output.name = \"argmax\", model outputs are [classes, logits]",
        ),
    ];
    for (name, edit, needle) in cases {
        let variant = manifest_variant(dir.path(), name, |t| edit(t.replace("${EDGESEG_ASSETS}", &assets_dir().to_string_lossy())));
        let err = load_error(&variant);
        assert!(err.contains("variant.toml") && err.contains(".onnx"), "both files are named: {err}");
        assert!(err.contains(needle), "{name}: {needle:?} not in\n{err}");
    }
}

/// `edgeseg models info` counts GFLOPs from the graph: the figures of BASELINES.md.
#[test]
fn models_info_prints_the_graph_and_its_gflops() {
    for (name, gflops, input, output) in [
        ("deeplab-small", "1.452", "input float32 [N, 257, 257, 3]", "logits float32 [N, 21, 257, 257]"),
        ("deeplab-large-int8", "5.481", "input uint8 [N, 513, 513, 3]", "classes int64 [N, 513, 513]"),
        ("deeplab-large-fp32", "5.481", "input uint8 [N, 513, 513, 3]", "logits float32 [N, 21, 513, 513]"),
    ] {
        let result = common::run_edge(&["models", "info", manifest(name).to_str().unwrap()]);
        assert!(result.status.success(), "{}", result.stderr);
        for needle in [format!("GFLOPs: {gflops}"), format!("input:  {input}"), output.to_string()] {
            assert!(result.stdout.contains(&needle), "{name}: {needle:?} not in\n{}", result.stdout);
        }
        assert!(!result.stdout.contains("note: the manifest says"), "the manifest's gflops is the measured one:\n{}", result.stdout);
    }
}
