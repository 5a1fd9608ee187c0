//! What `eval segment` writes: `metrics.json` (the [`Summary`]), `per_image.csv` (one row per
//! image, with its per-class IoUs and its confusion cells so later tools can recombine images)
//! and a short `report.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::segment::{EvalError, SegmentEval};

/// IoU_img above this counts an image as well segmented (the thesis's threshold).
pub const WELL_SEGMENTED_IOU: f64 = 0.7;
/// Bins of the IoU_img histogram, each 0.1 wide; the last includes 1.0.
pub const HISTOGRAM_BINS: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub model: String,
    pub manifest: PathBuf,
    /// How images were fitted to the network's input.
    pub fit: String,
    pub data: PathBuf,
    pub images: usize,
    pub skipped: usize,
    pub images_without_mask: usize,
    pub labelled_pixels: u64,
    /// Mean IoU over the classes present in the set's ground truth.
    pub miou: Option<f64>,
    /// Mean IoU that also counts classes predicted but absent from the ground truth, as 0.
    pub miou_union: Option<f64>,
    pub pixel_accuracy: Option<f64>,
    pub classes: Vec<ClassSummary>,
    /// Classes predicted on labelled pixels although the set's ground truth has none.
    pub predicted_but_absent: Vec<String>,
    pub iou_img: IouImgSummary,
    pub timing: TimingSummary,
    pub skipped_images: Vec<SkippedSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassSummary {
    pub id: usize,
    pub name: String,
    /// `None` when the class is in neither ground truth nor prediction.
    pub iou: Option<f64>,
    pub ground_truth_pixels: u64,
    pub predicted_pixels: u64,
    pub true_positive_pixels: u64,
    /// Images whose ground truth has the class.
    pub images_with_class: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct IouImgSummary {
    /// Images with at least one labelled pixel (the others have no IoU_img).
    pub images: usize,
    pub mean: Option<f64>,
    pub median: Option<f64>,
    /// Images per 0.1-wide bin from 0 to 1.
    pub histogram: [usize; HISTOGRAM_BINS],
    /// Fraction of images with IoU_img > 0.7.
    pub above_0_7: Option<f64>,
}

/// Milliseconds per image (median and mean over the images evaluated).
#[derive(Debug, Clone, Serialize)]
pub struct TimingSummary {
    /// `Model::segment`: resize in, network, argmax, class-map resize out.
    pub model_ms_median: f64,
    pub model_ms_mean: f64,
    /// Decode + model + scoring for one image.
    pub end_to_end_ms_median: f64,
    pub end_to_end_ms_mean: f64,
    pub decode_ms_median: f64,
    /// Counting the confusion matrix at full resolution.
    pub score_ms_median: f64,
    pub wall_s: f64,
    /// Whole run, decoding overlapped with the network.
    pub images_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkippedSummary {
    pub id: String,
    pub error: String,
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 })
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Bin of an IoU in the histogram: [0, 0.1) … [0.9, 1.0].
pub fn histogram_bin(iou: f64) -> usize {
    ((iou * HISTOGRAM_BINS as f64) as usize).min(HISTOGRAM_BINS - 1)
}

impl SegmentEval {
    pub fn summary(&self) -> Summary {
        let totals = self.total.totals();
        let mut images_with_class = vec![0usize; totals.classes()];
        for image in &self.images {
            for (count, &gt) in images_with_class.iter_mut().zip(&image.totals().ground_truth) {
                *count += (gt > 0) as usize;
            }
        }
        let name = |c: usize| self.class_names.get(c).cloned().unwrap_or_else(|| c.to_string());
        let classes = (0..totals.classes())
            .map(|c| ClassSummary {
                id: c,
                name: name(c),
                iou: totals.iou(c),
                ground_truth_pixels: totals.ground_truth[c],
                predicted_pixels: totals.predicted[c],
                true_positive_pixels: totals.true_positive[c],
                images_with_class: images_with_class[c],
            })
            .collect();

        let mut ious: Vec<f64> = self.images.iter().filter_map(|i| i.iou_img).collect();
        let mut histogram = [0usize; HISTOGRAM_BINS];
        for &iou in &ious {
            histogram[histogram_bin(iou)] += 1;
        }
        let above = ious.iter().filter(|&&iou| iou > WELL_SEGMENTED_IOU).count();
        let iou_img = IouImgSummary {
            images: ious.len(),
            mean: mean(&ious),
            above_0_7: (!ious.is_empty()).then(|| above as f64 / ious.len() as f64),
            median: median(&mut ious),
            histogram,
        };

        let mut model_ms: Vec<f64> = self.images.iter().map(|i| i.timing.model_ms).collect();
        let mut end_to_end_ms: Vec<f64> = self.images.iter().map(|i| i.timing.end_to_end_ms()).collect();
        let mut decode_ms: Vec<f64> = self.images.iter().map(|i| i.timing.decode_ms).collect();
        let mut score_ms: Vec<f64> = self.images.iter().map(|i| i.timing.score_ms).collect();
        let timing = TimingSummary {
            model_ms_mean: mean(&model_ms).unwrap_or(0.0),
            model_ms_median: median(&mut model_ms).unwrap_or(0.0),
            end_to_end_ms_mean: mean(&end_to_end_ms).unwrap_or(0.0),
            end_to_end_ms_median: median(&mut end_to_end_ms).unwrap_or(0.0),
            decode_ms_median: median(&mut decode_ms).unwrap_or(0.0),
            score_ms_median: median(&mut score_ms).unwrap_or(0.0),
            wall_s: self.wall_s,
            images_per_s: if self.wall_s > 0.0 { self.images.len() as f64 / self.wall_s } else { 0.0 },
        };

        Summary {
            model: self.model.clone(),
            manifest: self.manifest.clone(),
            fit: self.fit.clone(),
            data: self.data.clone(),
            images: self.images.len(),
            skipped: self.skipped.len(),
            images_without_mask: self.images_without_mask,
            labelled_pixels: totals.labelled_pixels(),
            miou: totals.miou_ground_truth_classes(),
            miou_union: totals.miou_union_classes(),
            pixel_accuracy: totals.pixel_accuracy(),
            classes,
            predicted_but_absent: totals.predicted_but_absent().into_iter().map(name).collect(),
            iou_img,
            timing,
            skipped_images: self.skipped.iter().map(|s| SkippedSummary { id: s.id.clone(), error: s.error.to_string() }).collect(),
        }
    }

    /// One CSV row per image: size, labelled pixels, pixel accuracy, IoU_img, timings, the IoU of
    /// every class (empty where the class is in neither ground truth nor prediction), and the
    /// confusion cells (`gt>pred:pixels`, see `CompactConfusion::parse`).
    pub fn per_image_csv(&self) -> String {
        let mut out = String::from("id,width,height,labelled_pixels,pixel_accuracy,iou_img,model_ms,end_to_end_ms");
        for name in &self.class_names {
            let _ = write!(out, ",iou_{}", csv_field(name));
        }
        out.push_str(",confusion\n");
        let optional = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        for image in &self.images {
            let totals = image.totals();
            let _ = write!(
                out,
                "{},{},{},{},{},{},{:.3},{:.3}",
                csv_field(&image.id),
                image.width,
                image.height,
                totals.labelled_pixels(),
                optional(totals.pixel_accuracy()),
                optional(image.iou_img),
                image.timing.model_ms,
                image.timing.end_to_end_ms()
            );
            for c in 0..totals.classes() {
                let _ = write!(out, ",{}", optional(totals.iou(c)));
            }
            let _ = writeln!(out, ",{}", image.confusion);
        }
        out
    }

    /// Writes `metrics.json`, `per_image.csv` and `report.md` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<Written, EvalError> {
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EvalError::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
        let summary = self.summary();
        let written = Written { metrics: dir.join("metrics.json"), per_image: dir.join("per_image.csv"), report: dir.join("report.md") };
        let json =
            serde_json::to_string_pretty(&summary).map_err(|e| EvalError::Write { path: written.metrics.clone(), source: e.into() })?;
        std::fs::write(&written.metrics, json + "\n").map_err(write_err(&written.metrics))?;
        std::fs::write(&written.per_image, self.per_image_csv()).map_err(write_err(&written.per_image))?;
        std::fs::write(&written.report, summary.markdown()).map_err(write_err(&written.report))?;
        Ok(written)
    }
}

/// Paths of the files [`SegmentEval::write`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub metrics: PathBuf,
    pub per_image: PathBuf,
    pub report: PathBuf,
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn percent(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1} %", v * 100.0)).unwrap_or_else(|| "–".into())
}

impl Summary {
    /// Headline figures, one per line (printed by the binary and at the top of `report.md`).
    pub fn headline(&self) -> Vec<String> {
        let t = &self.timing;
        vec![
            format!(
                "images: {} evaluated, {} skipped as bad, {} without mask left out",
                self.images, self.skipped, self.images_without_mask
            ),
            format!(
                "mIoU: {} over the {} classes in the ground truth; {} counting classes predicted but absent as 0",
                percent(self.miou),
                self.classes.iter().filter(|c| c.ground_truth_pixels > 0).count(),
                percent(self.miou_union)
            ),
            format!("pixel accuracy: {}", percent(self.pixel_accuracy)),
            format!(
                "IoU_img: mean {}, median {}, above 0.7 in {} of {} images",
                self.iou_img.mean.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into()),
                self.iou_img.median.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into()),
                percent(self.iou_img.above_0_7),
                self.iou_img.images
            ),
            format!(
                "ms per image (median): model {:.1}, end to end {:.1} (decode {:.1}, scoring {:.2}); {:.1} images/s overall",
                t.model_ms_median, t.end_to_end_ms_median, t.decode_ms_median, t.score_ms_median, t.images_per_s
            ),
        ]
    }

    pub fn markdown(&self) -> String {
        let mut md = format!("# eval segment: {} on {}\n\n", self.model, self.data.display());
        let _ = writeln!(md, "Model manifest `{}`, input fit {}.\n", self.manifest.display(), self.fit);
        for line in self.headline() {
            let _ = writeln!(md, "- {line}");
        }
        md.push_str("\n## Per class (over the set)\n\n| id | class | IoU % | GT pixels | predicted pixels | images with class |\n|---:|---|---:|---:|---:|---:|\n");
        for c in self.classes.iter().filter(|c| c.ground_truth_pixels + c.predicted_pixels > 0) {
            let iou = c.iou.map(|v| format!("{:.1}", v * 100.0)).unwrap_or_else(|| "–".into());
            let absent = if c.ground_truth_pixels == 0 { " (absent from GT)" } else { "" };
            let _ = writeln!(
                md,
                "| {} | {}{absent} | {iou} | {} | {} | {} |",
                c.id, c.name, c.ground_truth_pixels, c.predicted_pixels, c.images_with_class
            );
        }
        if !self.predicted_but_absent.is_empty() {
            let _ = writeln!(md, "\nPredicted but absent from the ground truth: {}.", self.predicted_but_absent.join(", "));
        }
        md.push_str("\n## IoU_img histogram\n\n| IoU_img | images |\n|---|---:|\n");
        for (bin, count) in self.iou_img.histogram.iter().enumerate() {
            let close = if bin + 1 == HISTOGRAM_BINS { ']' } else { ')' };
            let _ = writeln!(md, "| [{:.1}, {:.1}{close} | {count} |", bin as f64 / 10.0, (bin + 1) as f64 / 10.0);
        }
        md.push_str(
            "\nmIoU sums the confusion matrices of all images (void pixels, 255, ignored). IoU_img is one image's mean IoU over the \
             classes in its ground truth or prediction. *model* ms is `Model::segment` (resize, network, argmax, resize of the class \
             map), *end to end* adds decoding the image and mask and scoring.\n",
        );
        if !self.skipped_images.is_empty() {
            let _ = writeln!(md, "\n## Skipped ({})\n", self.skipped_images.len());
            for s in &self.skipped_images {
                let _ = writeln!(md, "- `{}`: {}", s.id, s.error);
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::confusion::{Confusion, VOID};
    use crate::eval::dataset::DatasetError;
    use crate::eval::segment::{ImageScore, Skipped};
    use crate::infer::ClassMap;

    fn score(id: &str, gt: &[u8], pred: &[u8]) -> ImageScore {
        let map = |c: &[u8]| ClassMap { width: c.len() as u32, height: 1, classes: c.to_vec() };
        ImageScore::new(id, &map(gt), &map(pred), 4).unwrap()
    }

    /// A hand-made set of three 1-row images over 4 classes (0 background, 1, 2, 3; 255 void).
    fn hand_made() -> SegmentEval {
        let images = vec![
            // a: GT 0 0 1 1 V; pred 0 1 1 1 3. Class 3 only on void → not counted.
            //    class 0: TP1 GT2 P1 → 1/2; class 1: TP2 GT2 P3 → 2/3. IoU_img = (1/2+2/3)/2 = 7/12.
            score("a", &[0, 0, 1, 1, VOID], &[0, 1, 1, 1, 3]),
            // b: GT 0 0 0 0; pred 0 0 0 2. class 0: 3/4; class 2: 0/1. IoU_img = 3/8.
            score("b", &[0, 0, 0, 0], &[0, 0, 0, 2]),
            // c: all correct, GT 1 1 0. IoU_img = 1.
            score("c", &[1, 1, 0], &[1, 1, 0]),
        ];
        let mut total = Confusion::new(4);
        for image in &images {
            total.merge_compact(&image.confusion).unwrap();
        }
        SegmentEval {
            model: "hand".into(),
            manifest: "hand.toml".into(),
            fit: "stretch".into(),
            data: "set".into(),
            class_names: vec!["background".into(), "one".into(), "two".into(), "three".into()],
            images,
            skipped: vec![Skipped {
                id: "d".into(),
                error: DatasetError::MissingMask { id: "d".into(), path: "set/SegmentationClass/d.png".into() },
            }],
            images_without_mask: 0,
            total,
            wall_s: 1.0,
        }
    }

    #[test]
    fn set_figures_equal_the_hand_computed_ones() {
        let s = hand_made().summary();
        // Over the set: class 0: TP 1+3+1 = 5, GT 2+4+1 = 7, pred 1+3+1 = 5 → union 7 → 5/7.
        // class 1: TP 2+2 = 4, GT 2+2 = 4, pred 3+2 = 5 → 4/5. class 2: TP 0, GT 0, pred 1 → 0.
        // class 3: predicted only on void → in neither.
        let ious: Vec<Option<f64>> = s.classes.iter().map(|c| c.iou).collect();
        assert_eq!(ious, vec![Some(5.0 / 7.0), Some(4.0 / 5.0), Some(0.0), None]);
        assert_eq!(s.miou, Some((5.0 / 7.0 + 4.0 / 5.0) / 2.0));
        assert_eq!(s.miou_union, Some((5.0 / 7.0 + 4.0 / 5.0 + 0.0) / 3.0));
        assert_eq!(s.pixel_accuracy, Some(9.0 / 11.0));
        assert_eq!(s.labelled_pixels, 11);
        assert_eq!(s.predicted_but_absent, vec!["two".to_string()]);
        assert_eq!(s.classes.iter().map(|c| c.images_with_class).collect::<Vec<_>>(), vec![3, 2, 0, 0]);

        assert_eq!(s.iou_img.images, 3);
        // Per-image means of exact fractions may differ from the fraction in the last bit.
        let close = |got: Option<f64>, want: f64| assert!(got.is_some_and(|g| (g - want).abs() < 1e-12), "{got:?} vs {want}");
        close(s.iou_img.mean, (7.0 / 12.0 + 3.0 / 8.0 + 1.0) / 3.0);
        close(s.iou_img.median, 7.0 / 12.0);
        assert_eq!(s.iou_img.above_0_7, Some(1.0 / 3.0));
        assert_eq!(s.iou_img.histogram, [0, 0, 0, 1, 0, 1, 0, 0, 0, 1]);
        assert_eq!((s.images, s.skipped), (3, 1));
        assert!(s.skipped_images[0].error.contains("SegmentationClass/d.png"));
    }

    #[test]
    fn per_class_iou_per_image_is_zero_for_classes_absent_from_both() {
        let eval = hand_made();
        assert_eq!(eval.images[0].class_iou_or_zero(), vec![0.5, 2.0 / 3.0, 0.0, 0.0]);
        assert_eq!(eval.images[1].class_iou(), vec![Some(0.75), None, Some(0.0), None]);
    }

    #[test]
    fn csv_has_one_row_per_image_with_reloadable_confusion() {
        let eval = hand_made();
        let csv = eval.per_image_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "id,width,height,labelled_pixels,pixel_accuracy,iou_img,model_ms,end_to_end_ms,iou_background,iou_one,iou_two,iou_three,confusion");
        let fields: Vec<&str> = lines[2].split(',').collect();
        assert_eq!(&fields[..6], &["b", "4", "1", "4", "0.750000", "0.375000"]);
        assert_eq!(&fields[8..12], &["0.750000", "", "0.000000", ""]);
        let mut total = Confusion::new(4);
        for line in &lines[1..] {
            let cells = line.rsplit(',').next().unwrap();
            total.merge_compact(&crate::eval::CompactConfusion::parse(cells, 4).unwrap()).unwrap();
        }
        assert_eq!(total, eval.total);
    }

    #[test]
    fn histogram_bins_close_at_one() {
        assert_eq!([0.0, 0.0999, 0.1, 0.7, 0.95, 1.0].map(histogram_bin), [0, 0, 1, 7, 9, 9]);
    }

    #[test]
    fn written_files_exist_and_report_names_the_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let written = hand_made().write(&dir.path().join("out")).unwrap();
        let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&written.metrics).unwrap()).unwrap();
        assert_eq!(metrics["images"], 3);
        assert_eq!(metrics["iou_img"]["histogram"].as_array().unwrap().len(), 10);
        let report = std::fs::read_to_string(&written.report).unwrap();
        assert!(report.contains("two (absent from GT)") && report.contains("SegmentationClass/d.png"), "{report}");
    }
}
