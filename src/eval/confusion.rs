//! Confusion matrices and the IoU figures read from them.
//!
//! A [`Confusion`] counts labelled pixels by (ground-truth class, predicted class); void pixels
//! (ground truth 255) are not counted, so every figure here is over labelled pixels only. Sums
//! of confusion matrices are exact, which is why set-level and hybrid-routing figures are
//! computed from summed matrices rather than averaged per-image IoUs. Per image, a
//! [`CompactConfusion`] keeps only the non-zero cells (a handful, against 441 for VOC).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Ground-truth value of pixels that are not scored (VOC's object borders and unlabelled areas).
pub const VOID: u8 = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfusionError {
    #[error("ground truth has {gt} pixels, prediction has {pred}: they must cover the same image")]
    Length { gt: usize, pred: usize },
    #[error("ground truth is {gt_width}x{gt_height} but the prediction is {pred_width}x{pred_height}")]
    Size { gt_width: u32, gt_height: u32, pred_width: u32, pred_height: u32 },
    #[error("pixel {index} has ground truth {gt} and prediction {pred}, but only classes 0..{classes} (and 255 = void in the ground truth) exist")]
    Value { index: usize, gt: u8, pred: u8, classes: usize },
    #[error("cannot combine confusion matrices over {left} and {right} classes")]
    Classes { left: usize, right: usize },
    #[error("confusion cells {text:?}: {problem} (expected space-separated GT>PRED:PIXELS cells)")]
    Parse { text: String, problem: String },
}

/// Pixel counts by (ground truth, prediction), row-major: `counts[gt * classes + pred]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    classes: usize,
    counts: Vec<u64>,
}

impl Confusion {
    /// An empty matrix for class ids `0..classes` (at most 255: 255 itself means void).
    pub fn new(classes: usize) -> Self {
        let classes = classes.min(VOID as usize);
        Confusion { classes, counts: vec![0; classes * classes] }
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Pixels of class `gt` predicted as `pred`.
    pub fn count(&self, gt: usize, pred: usize) -> u64 {
        self.counts[gt * self.classes + pred]
    }

    /// Counts one image: `gt` and `pred` are class ids per pixel in the same order; ground truth
    /// 255 is skipped. On a value outside the classes nothing is counted.
    pub fn add(&mut self, gt: &[u8], pred: &[u8]) -> Result<(), ConfusionError> {
        if gt.len() != pred.len() {
            return Err(ConfusionError::Length { gt: gt.len(), pred: pred.len() });
        }
        let n = self.classes;
        // Checked up front so the counting loop has one branch (void) and no failure path.
        let max_pred = pred.iter().copied().max().unwrap_or(0) as usize;
        let max_gt = gt.iter().copied().filter(|&g| g != VOID).max().unwrap_or(0) as usize;
        if max_pred >= n || max_gt >= n {
            let index = gt.iter().zip(pred).position(|(&g, &p)| (g != VOID && g as usize >= n) || p as usize >= n).unwrap_or(0);
            return Err(ConfusionError::Value { index, gt: gt[index], pred: pred[index], classes: n });
        }
        let counts = &mut self.counts[..n * n];
        for (&g, &p) in gt.iter().zip(pred) {
            if g != VOID {
                counts[g as usize * n + p as usize] += 1;
            }
        }
        Ok(())
    }

    /// Adds another matrix's counts (e.g. the images of a set, or the path each image took).
    pub fn merge(&mut self, other: &Confusion) -> Result<(), ConfusionError> {
        if other.classes != self.classes {
            return Err(ConfusionError::Classes { left: self.classes, right: other.classes });
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        Ok(())
    }

    /// Adds one image's compact counts.
    pub fn merge_compact(&mut self, other: &CompactConfusion) -> Result<(), ConfusionError> {
        if other.classes() != self.classes {
            return Err(ConfusionError::Classes { left: self.classes, right: other.classes() });
        }
        for cell in &other.cells {
            self.counts[cell.gt as usize * self.classes + cell.pred as usize] += cell.pixels as u64;
        }
        Ok(())
    }

    /// The non-zero cells. Counts above `u32::MAX` (no single image has that many pixels) saturate.
    pub fn compact(&self) -> CompactConfusion {
        let n = self.classes;
        let cells = (0..n * n)
            .filter(|&i| self.counts[i] > 0)
            .map(|i| Cell { gt: (i / n) as u8, pred: (i % n) as u8, pixels: self.counts[i].min(u32::MAX as u64) as u32 })
            .collect();
        CompactConfusion { classes: n as u8, cells }
    }

    pub fn totals(&self) -> ClassTotals {
        let n = self.classes;
        let mut totals = ClassTotals::new(n);
        for gt in 0..n {
            for pred in 0..n {
                totals.record(gt, pred, self.counts[gt * n + pred]);
            }
        }
        totals
    }
}

/// One non-zero cell of a confusion matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    pub gt: u8,
    pub pred: u8,
    pub pixels: u32,
}

/// A confusion matrix that stores only its non-zero cells, ordered by (gt, pred): what is kept
/// per image, so that routing evaluation can sum any mix of small- and large-network images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactConfusion {
    classes: u8,
    cells: Vec<Cell>,
}

impl CompactConfusion {
    pub fn classes(&self) -> usize {
        self.classes as usize
    }

    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    pub fn totals(&self) -> ClassTotals {
        let mut totals = ClassTotals::new(self.classes());
        for cell in &self.cells {
            totals.record(cell.gt as usize, cell.pred as usize, cell.pixels as u64);
        }
        totals
    }

    pub fn to_confusion(&self) -> Confusion {
        let mut dense = Confusion::new(self.classes());
        // Same class count by construction, so this cannot fail.
        let _ = dense.merge_compact(self);
        dense
    }

    /// Reads the text form written by `Display` (`per_image.csv`), for `classes` classes.
    pub fn parse(text: &str, classes: usize) -> Result<Self, ConfusionError> {
        let fail = |problem: String| ConfusionError::Parse { text: text.to_string(), problem };
        let mut dense = Confusion::new(classes);
        for token in text.split_whitespace() {
            let (pair, pixels) = token.split_once(':').ok_or_else(|| fail(format!("{token:?} has no ':'")))?;
            let (gt, pred) = pair.split_once('>').ok_or_else(|| fail(format!("{token:?} has no '>'")))?;
            let number = |s: &str| s.parse::<u64>().map_err(|e| fail(format!("{token:?}: {e}")));
            let (gt, pred, pixels) = (number(gt)? as usize, number(pred)? as usize, number(pixels)?);
            if gt >= dense.classes || pred >= dense.classes {
                return Err(fail(format!("{token:?} names a class outside 0..{}", dense.classes)));
            }
            dense.counts[gt * dense.classes + pred] += pixels;
        }
        Ok(dense.compact())
    }
}

impl fmt::Display for CompactConfusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.cells.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}>{}:{}", c.gt, c.pred, c.pixels)?;
        }
        Ok(())
    }
}

impl FromStr for CompactConfusion {
    type Err = ConfusionError;

    /// Parses with VOC's 21 classes; use [`CompactConfusion::parse`] for other class counts.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text, super::VOC_CLASSES)
    }
}

/// Per class: pixels right (true positives), pixels of the class in the ground truth, and
/// pixels predicted as the class, all over labelled pixels. Every IoU figure derives from these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassTotals {
    pub true_positive: Vec<u64>,
    pub ground_truth: Vec<u64>,
    pub predicted: Vec<u64>,
}

impl ClassTotals {
    fn new(classes: usize) -> Self {
        ClassTotals { true_positive: vec![0; classes], ground_truth: vec![0; classes], predicted: vec![0; classes] }
    }

    fn record(&mut self, gt: usize, pred: usize, pixels: u64) {
        self.ground_truth[gt] += pixels;
        self.predicted[pred] += pixels;
        if gt == pred {
            self.true_positive[gt] += pixels;
        }
    }

    pub fn classes(&self) -> usize {
        self.true_positive.len()
    }

    /// Ground truth or prediction has the class somewhere (labelled pixels only).
    pub fn union(&self, class: usize) -> u64 {
        self.ground_truth[class] + self.predicted[class] - self.true_positive[class]
    }

    /// TP / (TP + FP + FN); `None` when the class is in neither ground truth nor prediction.
    pub fn iou(&self, class: usize) -> Option<f64> {
        let union = self.union(class);
        (union > 0).then(|| self.true_positive[class] as f64 / union as f64)
    }

    /// IoU of every class, 0 where the class is in neither ground truth nor prediction (the
    /// decision network's per-class target).
    pub fn iou_or_zero(&self) -> Vec<f64> {
        (0..self.classes()).map(|c| self.iou(c).unwrap_or(0.0)).collect()
    }

    /// Mean IoU over the classes present in the ground truth (the usual VOC mIoU when the
    /// totals are summed over a set). `None` without labelled pixels.
    pub fn miou_ground_truth_classes(&self) -> Option<f64> {
        self.mean_iou_where(|c| self.ground_truth[c] > 0)
    }

    /// Mean IoU over the classes in the ground truth or the prediction: a class predicted but
    /// absent from the ground truth counts as 0. Per image this is IoU_img.
    pub fn miou_union_classes(&self) -> Option<f64> {
        self.mean_iou_where(|c| self.union(c) > 0)
    }

    fn mean_iou_where(&self, include: impl Fn(usize) -> bool) -> Option<f64> {
        let ious: Vec<f64> = (0..self.classes()).filter(|&c| include(c)).filter_map(|c| self.iou(c)).collect();
        (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64)
    }

    pub fn labelled_pixels(&self) -> u64 {
        self.ground_truth.iter().sum()
    }

    /// Correct / labelled pixels; `None` without labelled pixels.
    pub fn pixel_accuracy(&self) -> Option<f64> {
        let labelled = self.labelled_pixels();
        (labelled > 0).then(|| self.true_positive.iter().sum::<u64>() as f64 / labelled as f64)
    }

    /// Classes predicted somewhere on labelled pixels although the ground truth has none.
    pub fn predicted_but_absent(&self) -> Vec<usize> {
        (0..self.classes()).filter(|&c| self.ground_truth[c] == 0 && self.predicted[c] > 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: u8 = VOID;

    #[test]
    fn void_pixels_are_not_counted() {
        let mut m = Confusion::new(3);
        m.add(&[0, V, 1, V, 2], &[0, 1, 1, 2, 0]).unwrap();
        assert_eq!(m.totals().labelled_pixels(), 3);
        assert_eq!(m.count(0, 0), 1);
        assert_eq!(m.count(1, 1), 1);
        assert_eq!(m.count(2, 0), 1);
        assert_eq!(m.totals().predicted, vec![2, 1, 0], "predictions on void pixels are not counted either");
    }

    #[test]
    fn hand_computed_ious() {
        // 3 classes; class 2 predicted once where the ground truth is 0; nothing of class 2 in GT.
        // GT:   0 0 0 1 1 1 V V
        // pred: 0 0 2 1 1 0 2 1
        let mut m = Confusion::new(4);
        m.add(&[0, 0, 0, 1, 1, 1, V, V], &[0, 0, 2, 1, 1, 0, 2, 1]).unwrap();
        let t = m.totals();
        // class 0: TP 2, GT 3, pred 3 → union 4 → 0.5; class 1: TP 2, GT 3, pred 2 → 2/3;
        // class 2: TP 0, union 1 → 0; class 3: in neither → None.
        assert_eq!(t.iou(0), Some(0.5));
        assert_eq!(t.iou(1), Some(2.0 / 3.0));
        assert_eq!(t.iou(2), Some(0.0));
        assert_eq!(t.iou(3), None);
        assert_eq!(t.iou_or_zero(), vec![0.5, 2.0 / 3.0, 0.0, 0.0]);
        assert_eq!(t.miou_ground_truth_classes(), Some((0.5 + 2.0 / 3.0) / 2.0));
        assert_eq!(t.miou_union_classes(), Some((0.5 + 2.0 / 3.0 + 0.0) / 3.0));
        assert_eq!(t.pixel_accuracy(), Some(4.0 / 6.0));
        assert_eq!(t.predicted_but_absent(), vec![2]);
    }

    #[test]
    fn all_void_image_has_no_figures() {
        let mut m = Confusion::new(21);
        m.add(&[V, V], &[3, 4]).unwrap();
        let t = m.totals();
        assert_eq!((t.miou_union_classes(), t.miou_ground_truth_classes(), t.pixel_accuracy()), (None, None, None));
        assert!(m.compact().cells().is_empty());
    }

    #[test]
    fn out_of_range_values_and_lengths_are_errors_that_count_nothing() {
        let mut m = Confusion::new(3);
        assert_eq!(m.add(&[0, 1], &[0]), Err(ConfusionError::Length { gt: 2, pred: 1 }));
        assert_eq!(m.add(&[0, 3, 1], &[0, 0, 1]), Err(ConfusionError::Value { index: 1, gt: 3, pred: 0, classes: 3 }));
        assert_eq!(m.add(&[0, V, 1], &[0, 7, 1]), Err(ConfusionError::Value { index: 1, gt: V, pred: 7, classes: 3 }));
        assert_eq!(m.totals().labelled_pixels(), 0);
    }

    #[test]
    fn compact_round_trips_and_sums_like_dense() {
        let (gt_a, pred_a) = ([0u8, 0, 1, 2, V, 2], [0u8, 1, 1, 2, 0, 0]);
        let (gt_b, pred_b) = ([2u8, 2, 0], [2u8, 1, 0]);
        let mut a = Confusion::new(3);
        a.add(&gt_a, &pred_a).unwrap();
        let mut b = Confusion::new(3);
        b.add(&gt_b, &pred_b).unwrap();
        let (ca, cb) = (a.compact(), b.compact());
        assert_eq!(ca.to_confusion(), a);
        assert_eq!(ca.totals(), a.totals());
        assert_eq!(ca.cells().len(), 5);

        let mut sum_dense = a.clone();
        sum_dense.merge(&b).unwrap();
        let mut sum_compact = Confusion::new(3);
        sum_compact.merge_compact(&ca).unwrap();
        sum_compact.merge_compact(&cb).unwrap();
        assert_eq!(sum_dense, sum_compact);
        let mut both = Confusion::new(3);
        both.add(&[gt_a.as_slice(), &gt_b].concat(), &[pred_a.as_slice(), &pred_b].concat()).unwrap();
        assert_eq!(both, sum_dense);

        assert_eq!(ca.to_string(), "0>0:1 0>1:1 1>1:1 2>0:1 2>2:1");
        assert_eq!(CompactConfusion::parse(&ca.to_string(), 3).unwrap(), ca);
        assert!(CompactConfusion::parse("0>3:1", 3).is_err());
        assert!(CompactConfusion::parse("0-1:1", 3).is_err());
        assert_eq!(a.merge(&Confusion::new(4)), Err(ConfusionError::Classes { left: 3, right: 4 }));
    }
}
