//! `edgeseg eval segment` end to end: the real binary and the real (fixture) ONNX model on VOC-layout
//! folders written here, and, when the assets are present, the real small network on `voc/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgeseg::config::{Count, SessionConfig};
use edgeseg::eval::{self, dataset::write_palette_png, CompactConfusion, Confusion, Dataset, EvalOptions, Quiet, VOC_CLASSES, VOID};
use edgeseg::infer::{ClassMap, Model};
use opencv::core::{Mat, Vector};

use super::common;

/// Sizes of the generated images; ids are `img0`, `img1`, ...
const SIZES: [(u32, u32); 5] = [(64, 48), (40, 40), (33, 57), (96, 30), (50, 50)];

fn write_jpeg(path: &Path, width: u32, height: u32, seed: u32) {
    let bgr: Vec<u8> = (0..width * height).flat_map(|i| [(i * 7 + seed) as u8, (i / width * 5) as u8, (seed * 40) as u8]).collect();
    let mat = Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(height as i32, width as i32, &bgr).unwrap();
    let mut jpeg = Vector::<u8>::new();
    opencv::imgcodecs::imencode(".jpg", &mat, &mut jpeg, &Vector::new()).unwrap();
    std::fs::write(path, jpeg.as_slice()).unwrap();
}

/// Background with a person block and a void border on the first row.
fn mask(width: u32, height: u32) -> ClassMap {
    let classes = (0..width * height)
        .map(|i| {
            let (x, y) = (i % width, i / width);
            if y == 0 {
                VOID
            } else if x < width / 2 && y > height / 2 {
                15
            } else {
                0
            }
        })
        .collect();
    ClassMap { width, height, classes }
}

/// A VOC-layout folder with `SIZES.len()` images, their masks, and `val.txt` naming all but the last.
fn voc_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("JPEGImages")).unwrap();
    std::fs::create_dir(dir.path().join("SegmentationClass")).unwrap();
    for (i, &(w, h)) in SIZES.iter().enumerate() {
        write_jpeg(&dir.path().join(format!("JPEGImages/img{i}.jpg")), w, h, i as u32);
        write_palette_png(&dir.path().join(format!("SegmentationClass/img{i}.png")), &mask(w, h)).unwrap();
    }
    let list: Vec<String> = (0..SIZES.len() - 1).map(|i| format!("img{i}")).collect();
    std::fs::write(dir.path().join("val.txt"), list.join("\n") + "\n").unwrap();
    dir
}

fn eval_segment(data: &Path, extra: &[&str]) -> Output {
    let root = common::fixtures();
    Command::new(common::bin())
        .args(["eval", "segment", "--model"])
        .arg(root.join("models/small.toml"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(data.join("out"))
        .args(extra)
        .output()
        .expect("running edgeseg eval segment")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn writes_metrics_per_image_csv_and_report_for_the_listed_images() {
    let dir = voc_folder();
    let output = eval_segment(dir.path(), &["--list", "val.txt"]);
    assert!(output.status.success(), "{}", text(&output));
    let out = dir.path().join("out");

    let metrics = read_json(&out.join("metrics.json"));
    assert_eq!(metrics["images"], 4, "val.txt names 4 of the 5 images");
    assert_eq!(metrics["skipped"], 0);
    let labelled: u64 = SIZES[..4].iter().map(|&(w, h)| (w * (h - 1)) as u64).sum();
    assert_eq!(metrics["labelled_pixels"], labelled, "void row not counted");
    assert_eq!(metrics["classes"].as_array().unwrap().len(), VOC_CLASSES);
    assert_eq!(metrics["iou_img"]["histogram"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum::<u64>(), 4);

    // The confusion cells in per_image.csv sum to the set's figures in metrics.json.
    let csv = std::fs::read_to_string(out.join("per_image.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 4);
    let mut total = Confusion::new(VOC_CLASSES);
    for (i, row) in rows.iter().enumerate() {
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(fields[0], format!("img{i}"), "rows keep the list's order");
        assert_eq!(fields[1..3], [SIZES[i].0.to_string(), SIZES[i].1.to_string()]);
        let cells = CompactConfusion::parse(fields.last().unwrap(), VOC_CLASSES).unwrap();
        assert_eq!(cells.totals().labelled_pixels(), (SIZES[i].0 * (SIZES[i].1 - 1)) as u64);
        total.merge_compact(&cells).unwrap();
    }
    let totals = total.totals();
    let close = |json: &serde_json::Value, want: Option<f64>| {
        assert!((json.as_f64().unwrap() - want.unwrap()).abs() < 1e-9, "{json} vs {want:?}");
    };
    close(&metrics["miou"], totals.miou_ground_truth_classes());
    close(&metrics["miou_union"], totals.miou_union_classes());
    close(&metrics["pixel_accuracy"], totals.pixel_accuracy());

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("mIoU") && report.contains("IoU_img histogram"), "{report}");
    assert!(text(&output).contains("4 evaluated"), "{}", text(&output));
}

/// The bad inputs of a labelled set, each applied to one image of [`voc_folder`]: what it does to
/// the files, the file the error must name, and a word of the error.
type Defect = (&'static str, fn(&Path), &'static str, &'static str);
const DEFECTS: [Defect; 4] = [
    (
        "corrupt image",
        |dir| std::fs::write(dir.join("JPEGImages/img1.jpg"), b"\xFF\xD8 not really a jpeg").unwrap(),
        "JPEGImages/img1.jpg",
        "",
    ),
    ("missing mask", |dir| std::fs::remove_file(dir.join("SegmentationClass/img0.png")).unwrap(), "SegmentationClass/img0.png", ""),
    (
        "size mismatch",
        |dir| write_palette_png(&dir.join("SegmentationClass/img3.png"), &mask(10, 10)).unwrap(),
        "SegmentationClass/img3.png",
        "10x10",
    ),
    (
        "mask value out of range",
        |dir| {
            let (w, h) = SIZES[2];
            let mut bad = mask(w, h);
            bad.classes[w as usize + 1] = 21;
            write_palette_png(&dir.join("SegmentationClass/img2.png"), &bad).unwrap();
        },
        "SegmentationClass/img2.png",
        "21",
    ),
];

#[test]
fn bad_images_stop_the_run_naming_the_file_or_are_skipped_and_listed() {
    for (what, apply, file, word) in DEFECTS {
        let dir = voc_folder();
        apply(dir.path());
        let output = eval_segment(dir.path(), &["--list", "val.txt"]);
        assert!(!output.status.success(), "{what}: the run must stop");
        assert!(
            text(&output).contains(file) && text(&output).contains(word),
            "{what}: {file} and {word:?} not named in\n{}",
            text(&output)
        );
    }

    // All four at once, skipped: counted in metrics.json and listed in report.md; the one good
    // image is evaluated.
    let dir = voc_folder();
    for (_, apply, _, _) in DEFECTS {
        apply(dir.path());
    }
    std::fs::write(dir.path().join("all.txt"), "img0\nimg1\nimg2\nimg3\nimg4\n").unwrap();
    let output = eval_segment(dir.path(), &["--list", "all.txt", "--skip-bad"]);
    assert!(output.status.success(), "{}", text(&output));
    let metrics = read_json(&dir.path().join("out/metrics.json"));
    assert_eq!((metrics["images"].as_u64(), metrics["skipped"].as_u64()), (Some(1), Some(4)), "{metrics}");
    let report = std::fs::read_to_string(dir.path().join("out/report.md")).unwrap();
    for (what, _, file, _) in DEFECTS {
        assert!(report.contains(file), "{what}: {file} not listed in\n{report}");
    }
}

#[test]
fn a_folder_not_in_voc_layout_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = eval_segment(&dir.path().join("missing"), &[]);
    assert!(!output.status.success());
    assert!(text(&output).contains("does not exist") && text(&output).contains("JPEGImages/<id>.jpg"), "{}", text(&output));
    let output = eval_segment(dir.path(), &[]);
    assert!(!output.status.success());
    assert!(text(&output).contains("is not in VOC layout"), "{}", text(&output));
}

fn load(manifest: &Path) -> Model {
    Model::load(&SessionConfig { manifest: manifest.to_path_buf(), intra_threads: Count::literal(1), ..Default::default() })
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn results_do_not_depend_on_the_number_of_decoder_threads() {
    let dir = voc_folder();
    let mut model = load(&common::fixtures().join("models/small.toml"));
    let set = Dataset::open(dir.path(), None, VOC_CLASSES).unwrap();
    let run = |model: &mut Model, decode_threads| {
        let options = EvalOptions { decode_threads, ..Default::default() };
        eval::evaluate(model, &set, &options, &mut Quiet).unwrap()
    };
    let one = run(&mut model, 1);
    let three = run(&mut model, 3);
    assert_eq!(one.images.len(), SIZES.len());
    let key = |e: &eval::SegmentEval| e.images.iter().map(|i| (i.id.clone(), i.confusion.clone(), i.iou_img)).collect::<Vec<_>>();
    assert_eq!(key(&one), key(&three));
    assert_eq!(one.total, three.total);
    let limited = eval::evaluate(&mut model, &set, &EvalOptions { limit: Some(2), ..Default::default() }, &mut Quiet).unwrap();
    assert_eq!(limited.images.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["img0", "img1"]);
}

/// Reference figures (stretch + nearest) for the small network on `voc/`, from the assets'
/// BASELINES.md: mIoU and mean IoU_img.
const VOC_SMALL_STRETCH: (f64, f64) = (0.540, 0.638);
const VOC_SMALL_PAD: (f64, f64) = (0.438, 0.554);

#[test]
fn real_small_network_on_voc_lands_near_the_reference_figures_with_either_fit() {
    let assets = edgeseg::infer::manifest::assets_dir();
    let manifest: PathBuf = common::root().join("models/deeplab-small.toml");
    if !assets.join("voc/JPEGImages").is_dir() || !assets.join("models/deeplabv3_mnv2_dm05_voc_257.onnx").is_file() {
        println!("skipped: no assets at {} (set EDGESEG_ASSETS)", assets.display());
        return;
    }
    for (fit, reference, recorded) in [("stretch", VOC_SMALL_STRETCH, "stretch"), ("pad", VOC_SMALL_PAD, "pad (127.5)")] {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(common::bin())
            .args(["eval", "segment", "--model"])
            .arg(&manifest)
            .arg("--data")
            .arg(assets.join("voc"))
            .arg("--out")
            .arg(dir.path())
            .args(["--fit", fit])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output));
        let metrics = read_json(&dir.path().join("metrics.json"));
        assert_eq!(metrics["fit"], recorded, "--fit {fit} overrides the manifest, and the report says so");
        assert_eq!(metrics["images"], 38);
        let (miou, iou_img) = (metrics["miou"].as_f64().unwrap(), metrics["iou_img"]["mean"].as_f64().unwrap());
        println!("{} --fit {fit}: mIoU {miou:.4}, mean IoU_img {iou_img:.4}", manifest.display());
        let (want_miou, want_iou) = reference;
        assert!(
            (miou - want_miou).abs() <= 0.02 && (iou_img - want_iou).abs() <= 0.02,
            "--fit {fit}: mIoU {miou:.4} / IoU_img {iou_img:.4} is not within 2 points of BASELINES.md ({want_miou} / {want_iou})"
        );
    }
}
