//! The decision network's base on the real small network (needs `../shared/assets` or
//! `$EDGESEG_ASSETS`; skipped with a printed reason without them): either split (encoder +
//! head, stem + trunk) reproduces the whole small network, both base sizes give fixed-length SPP vectors, and the
//! feature cache serves them back without running the encoder again.

use std::path::PathBuf;

use edgeseg::decision::base::{Encoder, OnnxPart, SHARED_INPUT_SIZE};
use edgeseg::decision::cache::{content_hash, CacheOutcome, FeatureCache};
use edgeseg::decision::{SppConfig, VOC_CLASSES};
use edgeseg::infer::ModelManifest;

use super::common;

fn assets() -> Option<PathBuf> {
    let dir = edgeseg::infer::manifest::assets_dir();
    if dir.join("models/deeplabv3_mnv2_dm05_voc_257.onnx").is_file() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: no real small network under {} (set EDGESEG_ASSETS)", dir.display());
        None
    }
}

/// A BMP/JPEG as packed BGR bytes.
fn read_bgr(path: &std::path::Path) -> (Vec<u8>, u32, u32) {
    use opencv::prelude::*;
    let mat = opencv::imgcodecs::imread(path, opencv::imgcodecs::IMREAD_COLOR).expect("imread");
    assert!(!mat.empty(), "could not read {}", path.display());
    (mat.data_bytes().expect("pixels").to_vec(), mat.cols() as u32, mat.rows() as u32)
}

fn derived(name: &str) -> PathBuf {
    let path = common::fixtures().join("models/derived").join(name);
    assert!(path.is_file(), "{} missing although the assets are present: scripts/fixtures should have made it", path.display());
    path
}

/// The real small network's manifest: the encoder's frames are prepared as it says.
fn small_manifest() -> ModelManifest {
    ModelManifest::load(&common::root().join("models/deeplab-small.toml")).unwrap()
}

fn argmax(logits: &[f32], classes: usize) -> Vec<usize> {
    let plane = logits.len() / classes;
    (0..plane).map(|p| (0..classes).fold(0, |best, c| if logits[c * plane + p] > logits[best * plane + p] { c } else { best })).collect()
}

/// Both splits of `scripts/split_small.py`: at the encoder output (160 channels) and after the
/// sixth block (the stem, 16 channels).
#[test]
fn either_split_of_the_small_network_reproduces_the_whole() {
    let Some(assets) = assets() else { return };
    let (bgr, width, height) = read_bgr(&assets.join("models/testdata/grace_hopper.bmp"));
    let size = SHARED_INPUT_SIZE as usize;
    let mut whole = OnnxPart::load(&assets.join("models/deeplabv3_mnv2_dm05_voc_257.onnx"), 1).unwrap();
    for (first, second, channels) in [("small_encoder.onnx", "small_head.onnx", 160), ("small_stem.onnx", "small_trunk.onnx", 16)] {
        let mut base = Encoder::load(&derived(first), &small_manifest(), SHARED_INPUT_SIZE, 1).unwrap();
        let input = base.preprocess(&bgr, width, height).unwrap();
        let (whole_shape, whole_logits) = whole.run(&input, &[1, size, size, 3]).unwrap();
        assert_eq!(whole_shape, vec![1, 21, size, size]);

        let features = base.run(&input).unwrap();
        assert_eq!((features.channels, features.height, features.width), (channels, 33, 33), "{first}");
        let mut rest = OnnxPart::load(&derived(second), 1).unwrap();
        let (rest_shape, rest_logits) = rest.run(&features.data, &[1, channels, 33, 33]).unwrap();
        assert_eq!(rest_shape, whole_shape);

        let max_diff = whole_logits.iter().zip(&rest_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("{first} -> {second} vs whole small network on grace_hopper.bmp: max |logit diff| {max_diff:e}");
        assert!(max_diff < 1e-4, "{first} -> {second}: max |logit diff| {max_diff}");
        let (split_classes, whole_classes) = (argmax(&rest_logits, 21), argmax(&whole_logits, 21));
        assert_eq!(split_classes, whole_classes, "{first} -> {second}");
        // The portrait is mostly person (MANIFEST.md: 61.9 %).
        let person = split_classes.iter().filter(|&&c| VOC_CLASSES[c] == "person").count() as f64 / split_classes.len() as f64;
        assert!(person > 0.5, "person share {person}");
    }
}

#[test]
fn both_bases_give_spp_vectors_of_one_length() {
    let Some(assets) = assets() else { return };
    let (bgr, width, height) = read_bgr(&assets.join("models/testdata/traffic0001.bmp"));
    let spp = SppConfig::default();
    let mut lengths = Vec::new();
    for (size, side) in [(257, 33), (129, 17)] {
        let mut encoder = Encoder::load(&derived("small_encoder.onnx"), &small_manifest(), size, 1).unwrap();
        let features = encoder.run(&encoder.preprocess(&bgr, width, height).unwrap()).unwrap();
        assert_eq!((features.channels, features.height, features.width), (160, side, side), "base {size}");
        let vector = features.spp(&spp).unwrap();
        assert!(vector.iter().all(|v| v.is_finite()));
        lengths.push(vector.len());
    }
    assert_eq!(lengths, vec![800, 800]);
}

#[test]
fn cache_serves_spp_vectors_computed_once() {
    let Some(assets) = assets() else { return };
    let mut encoder = Encoder::load(&derived("small_encoder.onnx"), &small_manifest(), 129, 1).unwrap();
    let spp = SppConfig::default();
    let root = tempfile::tempdir().unwrap();
    let cache = FeatureCache::open(root.path(), encoder.sha256(), &encoder.preprocessing(), &spp).unwrap();
    let image_path = assets.join("models/testdata/bird_segmentation.bmp");
    let image_hash = content_hash(&std::fs::read(&image_path).unwrap());
    let (bgr, width, height) = read_bgr(&image_path);
    let mut compute = || -> Result<Vec<f32>, edgeseg::decision::DecisionError> {
        let input = encoder.preprocess(&bgr, width, height)?;
        encoder.run(&input)?.spp(&spp)
    };
    let (first, outcome) = cache.get_or_compute(&image_hash, &mut compute).unwrap();
    assert_eq!(outcome, CacheOutcome::Computed);
    let (second, outcome) = cache.get_or_compute(&image_hash, || panic!("encoder must not run again")).unwrap();
    assert_eq!((outcome, &second), (CacheOutcome::Hit, &first));
    // Recomputing gives the same vector (ONNX Runtime is deterministic here), so a corrupt entry
    // replaced later is replaced by the same values.
    assert_eq!(compute().unwrap(), first);
}
