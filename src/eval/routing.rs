//! Routing evaluation: how well a policy splits frames between the small (local) and the large
//! (remote) network, measured on a labelled set where both networks' confusion matrices are
//! known per image.
//!
//! A policy gives each frame a value and a direction ([`Direction`]): "local when the value is
//! above t" (a predicted quality, the small network's confidence) or "remote when the value is
//! above t" (a predicted or true gain, an uncertainty). Two sweeps are measured per policy:
//! - thresholds `t` over [0, 1] in steps of 0.01, on the policy's own scale (the thesis's
//!   precision curves);
//! - every cut between two distinct values (the values' quantiles), so every remote fraction
//!   from 0 to 1 is reached; the area under hybrid mIoU against remote fraction over these
//!   points is the policy's AUC, and `(AUC − AUC_random) / (AUC_oracle − AUC_random)` its
//!   normalised AUC.
//!
//! Random routing is the expectation at a given remote fraction `p` (each frame local with
//! weight `1 − p`: the summed confusion matrix is the expected one); the oracle sends frames in
//! order of their true gain `IoU_img(large) − IoU_img(small)`.
//!
//! Per routing ([`Point`]): fraction local; precision = tp/(tp+fp), precision_gt =
//! tp/|well|, precision_lt = tn/|not well| (positive = routed local, well = the small network's
//! IoU_img > 0.7); hybrid mIoU from the summed confusion matrices (small's for local frames,
//! large's for remote) over the classes in the set's ground truth, and its drop against
//! all-large; total computation reduction `1 − (decision + small·local + large·remote)/large`
//! and edge computation reduction `1 − (decision + small·local)/small`, from each policy's
//! [`FrameCost`] in GFLOPs.
//!
//! Thresholds meant for deployment are chosen on one set and applied to another ([`choose`]):
//! the largest total reduction whose mIoU drop stays within a budget on the choosing set, then
//! what that threshold realises on the evaluated set.
//!
//! Sets here are small (tens to a few hundred images), so one normalised AUC says little alone:
//! [`bootstrap`] resamples the images in blocks of neighbours (video frames next to each other
//! look alike, and drawing them apart would understate the spread) and reports each policy's
//! 90 % interval and how often it comes out ahead of a baseline.

use serde::Serialize;

use super::confusion::{ClassTotals, CompactConfusion};
use super::report::WELL_SEGMENTED_IOU;
use crate::rng::SeededRng;

/// Step of the threshold sweep over [0, 1].
pub const THRESHOLD_STEP: f64 = 0.01;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoutingError {
    #[error("routing evaluation needs at least one image")]
    NoImages,
    #[error("policy {policy} has {values} values for {images} images")]
    Values { policy: String, values: usize, images: usize },
    #[error("image {index} has confusion matrices over {small} and {large} classes")]
    Classes { index: usize, small: usize, large: usize },
    #[error("the set has no labelled pixel: hybrid mIoU is undefined")]
    NoLabels,
    #[error("the choosing set's policies ({choosing}) differ from the evaluated set's ({evaluated})")]
    PolicyMismatch { choosing: String, evaluated: String },
}

/// Both networks' results on one image.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutedImage {
    pub small: ClassTotals,
    pub large: ClassTotals,
    pub small_iou_img: f64,
    pub large_iou_img: f64,
}

impl RoutedImage {
    pub fn new(small: &CompactConfusion, large: &CompactConfusion) -> Self {
        let (small, large) = (small.totals(), large.totals());
        let small_iou_img = small.miou_union_classes().unwrap_or(0.0);
        let large_iou_img = large.miou_union_classes().unwrap_or(0.0);
        RoutedImage { small, large, small_iou_img, large_iou_img }
    }

    /// `IoU_img(large) − IoU_img(small)`: what the oracle sorts by.
    pub fn gain(&self) -> f64 {
        self.large_iou_img - self.small_iou_img
    }

    /// Well segmented by the small network: the frames a perfect router keeps local.
    pub fn well(&self) -> bool {
        self.small_iou_img > WELL_SEGMENTED_IOU
    }
}

/// GFLOPs per frame a policy spends: `decision` on every frame (on the edge), `local` more on a
/// local frame (on the edge), `remote` on a remote frame (on the worker).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FrameCost {
    pub decision: f64,
    pub local: f64,
    pub remote: f64,
}

/// GFLOPs per frame of the two networks alone: the all-small and all-large references.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NetworkCosts {
    pub small: f64,
    pub large: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Local when the value exceeds the threshold (a quality: predicted IoU, confidence).
    LocalAbove,
    /// Remote when the value exceeds the threshold (a gain, an uncertainty).
    RemoteAbove,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PolicyKind {
    /// One value per image.
    Values { values: Vec<f64>, direction: Direction },
    /// Expected figures of random routing; the threshold is the remote fraction.
    Random,
    /// True gain, highest first (remote when the gain exceeds the threshold).
    Oracle,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub kind: PolicyKind,
    pub cost: FrameCost,
}

/// One routing of a whole set and what it gives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// On the policy's scale (the remote fraction for random routing).
    pub threshold: f64,
    pub local_fraction: f64,
    pub remote_fraction: f64,
    pub precision: Option<f64>,
    pub precision_gt: Option<f64>,
    pub precision_lt: Option<f64>,
    /// Hybrid mIoU (0..1).
    pub miou: f64,
    /// All-large mIoU − hybrid mIoU, in points (×100).
    pub drop_points: f64,
    /// (All-large mIoU − hybrid mIoU) / all-large mIoU.
    pub drop_relative: f64,
    pub gflops_per_frame: f64,
    pub edge_gflops_per_frame: f64,
    pub total_reduction: f64,
    pub edge_reduction: f64,
}

/// A threshold chosen on one set for an mIoU-drop budget, and what it realises on another.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub budget_points: f64,
    pub threshold: f64,
    /// The point on the set the threshold was chosen on.
    pub chosen: Point,
    /// The same threshold on the evaluated set.
    pub realised: Point,
    /// The chosen point's remote fraction kept on the evaluated set instead of its threshold
    /// (the smallest cut sending at least that share remote): what a deployment gets whose
    /// threshold follows a running quantile of the policy's values, which survives a shift of
    /// the values between sets that a fixed threshold does not.
    pub realised_at_fraction: Point,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyResult {
    pub name: String,
    pub cost: FrameCost,
    /// Thresholds 0, 0.01, …, 1.
    pub thresholds: Vec<Point>,
    /// Every distinct cut, remote fraction 0 → 1.
    pub fractions: Vec<Point>,
    /// Area under hybrid mIoU against remote fraction.
    pub auc: f64,
    /// `(auc − auc_random) / (auc_oracle − auc_random)`.
    pub normalised_auc: Option<f64>,
    /// 5th and 95th percentile of the normalised AUC over [`bootstrap`] resamples.
    pub normalised_auc_interval: Option<[f64; 2]>,
    /// Share of [`bootstrap`] resamples in which this policy's normalised AUC exceeds the
    /// baseline's.
    pub ahead_of_baseline: Option<f64>,
    pub choices: Vec<Choice>,
}

/// What [`bootstrap`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootstrapSummary {
    pub resamples: usize,
    /// Consecutive images (in the set's order) drawn together.
    pub block: usize,
    pub seed: u64,
    /// The policy `ahead_of_baseline` compares with.
    pub baseline: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutingEvaluation {
    pub images: usize,
    /// Images the small network segments well (IoU_img > 0.7).
    pub well_segmented: usize,
    pub all_small_miou: f64,
    pub all_large_miou: f64,
    pub networks: NetworkCosts,
    pub policies: Vec<PolicyResult>,
    pub bootstrap: Option<BootstrapSummary>,
}

/// Images with their per-class totals as floats, ready for weighted sums.
pub struct RoutingSet {
    images: Vec<RoutedImage>,
    classes: usize,
    /// Per image: small's then large's (tp, gt, pred) per class, `6 × classes` values.
    totals: Vec<Vec<f64>>,
    all_large_miou: f64,
    all_small_miou: f64,
}

impl RoutingSet {
    pub fn new(images: Vec<RoutedImage>) -> Result<Self, RoutingError> {
        let classes = images.first().ok_or(RoutingError::NoImages)?.small.classes();
        let mut totals = Vec::with_capacity(images.len());
        for (index, image) in images.iter().enumerate() {
            if image.small.classes() != classes || image.large.classes() != classes {
                return Err(RoutingError::Classes { index, small: image.small.classes(), large: image.large.classes() });
            }
            let mut row = Vec::with_capacity(6 * classes);
            for t in [&image.small, &image.large] {
                for values in [&t.true_positive, &t.ground_truth, &t.predicted] {
                    row.extend(values.iter().map(|&v| v as f64));
                }
            }
            totals.push(row);
        }
        let mut set = RoutingSet { images, classes, totals, all_large_miou: 0.0, all_small_miou: 0.0 };
        let n = set.images.len();
        set.all_large_miou = set.miou(&vec![0.0; n]).ok_or(RoutingError::NoLabels)?;
        set.all_small_miou = set.miou(&vec![1.0; n]).ok_or(RoutingError::NoLabels)?;
        Ok(set)
    }

    pub fn images(&self) -> &[RoutedImage] {
        &self.images
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn all_large_miou(&self) -> f64 {
        self.all_large_miou
    }

    pub fn all_small_miou(&self) -> f64 {
        self.all_small_miou
    }

    /// Summed (tp, gt, pred) per class, `3 × classes` values, image `i` weighted `local[i]` for
    /// the small network and `1 − local[i]` for the large one.
    fn miou_sums(&self, local: &[f64]) -> Vec<f64> {
        let k = self.classes;
        let mut sums = vec![0f64; 3 * k];
        for (row, &w) in self.totals.iter().zip(local) {
            for (j, sum) in sums.iter_mut().enumerate() {
                *sum += w * row[j] + (1.0 - w) * row[3 * k + j];
            }
        }
        sums
    }

    /// mIoU of those sums over the classes in the set's ground truth.
    fn miou(&self, local: &[f64]) -> Option<f64> {
        hybrid_miou(&self.miou_sums(local), self.classes)
    }

    /// The figures of one routing (`local[i]` = weight of image `i` going local, 0..1).
    pub fn measure(&self, local: &[f64], cost: FrameCost, networks: NetworkCosts, threshold: f64) -> Point {
        let n = self.images.len() as f64;
        let miou = self.miou(local).unwrap_or(0.0);
        let (mut tp, mut fp, mut tn, mut well) = (0.0, 0.0, 0.0, 0.0);
        for (image, &w) in self.images.iter().zip(local) {
            if image.well() {
                tp += w;
                well += 1.0;
            } else {
                fp += w;
                tn += 1.0 - w;
            }
        }
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        let local_fraction = local.iter().sum::<f64>() / n;
        let remote_fraction = 1.0 - local_fraction;
        let edge = cost.decision + cost.local * local_fraction;
        let total = edge + cost.remote * remote_fraction;
        let drop = self.all_large_miou - miou;
        Point {
            threshold,
            local_fraction,
            remote_fraction,
            precision: ratio(tp, tp + fp),
            precision_gt: ratio(tp, well),
            precision_lt: ratio(tn, n - well),
            miou,
            drop_points: 100.0 * drop,
            drop_relative: drop / self.all_large_miou,
            gflops_per_frame: total,
            edge_gflops_per_frame: edge,
            total_reduction: 1.0 - total / networks.large,
            edge_reduction: 1.0 - edge / networks.small,
        }
    }

    /// The values and direction a policy routes by on this set (random routing has none).
    fn values(&self, policy: &Policy) -> Result<Option<(Vec<f64>, Direction)>, RoutingError> {
        match &policy.kind {
            PolicyKind::Values { values, direction } => {
                if values.len() != self.images.len() {
                    return Err(RoutingError::Values { policy: policy.name.clone(), values: values.len(), images: self.images.len() });
                }
                Ok(Some((values.clone(), *direction)))
            }
            PolicyKind::Oracle => Ok(Some((self.images.iter().map(RoutedImage::gain).collect(), Direction::RemoteAbove))),
            PolicyKind::Random => Ok(None),
        }
    }

    /// Local weights of `policy` at `threshold`.
    fn route(&self, values: Option<&(Vec<f64>, Direction)>, threshold: f64) -> Vec<f64> {
        match values {
            Some((values, Direction::LocalAbove)) => values.iter().map(|&v| if v > threshold { 1.0 } else { 0.0 }).collect(),
            Some((values, Direction::RemoteAbove)) => values.iter().map(|&v| if v > threshold { 0.0 } else { 1.0 }).collect(),
            None => vec![1.0 - threshold.clamp(0.0, 1.0); self.images.len()],
        }
    }

    /// Thresholds that reach every distinct remote fraction, from none remote to all remote:
    /// midpoints between neighbouring distinct values (remote fractions k/n for random routing).
    fn cuts(&self, values: Option<&(Vec<f64>, Direction)>) -> Vec<f64> {
        let n = self.images.len();
        let Some((values, direction)) = values else {
            return (0..=n).map(|k| k as f64 / n as f64).collect();
        };
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.dedup();
        let margin = 1e-3;
        let (first, last) = (sorted[0], sorted[sorted.len() - 1]);
        let inner = sorted.windows(2).map(|w| (w[0] + w[1]) / 2.0);
        match direction {
            // Remote when value ≤ t: from t below every value (none remote) upwards.
            Direction::LocalAbove => std::iter::once(first - margin).chain(inner).chain(std::iter::once(last)).collect(),
            // Remote when value > t: from t at the largest value (none remote) downwards.
            Direction::RemoteAbove => std::iter::once(last).chain(inner.rev()).chain(std::iter::once(first - margin)).collect(),
        }
    }

    /// The [`area`] of the fraction sweep of `values` (images sent remote in the policy's order,
    /// equal values together; expected figures for random routing), in O(images × classes)
    /// instead of the sweep's O(images² × classes): what [`bootstrap`] computes thousands of
    /// times.
    fn area_in_order(&self, values: Option<&(Vec<f64>, Direction)>) -> f64 {
        let n = self.images.len();
        let k = self.classes;
        let small = self.miou_sums(&vec![1.0; n]);
        let mut points = Vec::with_capacity(n + 1);
        match values {
            None => {
                let large = self.miou_sums(&vec![0.0; n]);
                for step in 0..=n {
                    let f = step as f64 / n as f64;
                    let sums: Vec<f64> = small.iter().zip(&large).map(|(s, l)| (1.0 - f) * s + f * l).collect();
                    points.push((f, miou_of_sums(&sums, k)));
                }
            }
            Some((values, direction)) => {
                let mut order: Vec<usize> = (0..n).collect();
                match direction {
                    // Remote first: the lowest quality, the highest gain.
                    Direction::LocalAbove => order.sort_by(|&a, &b| values[a].total_cmp(&values[b])),
                    Direction::RemoteAbove => order.sort_by(|&a, &b| values[b].total_cmp(&values[a])),
                }
                let mut sums = small;
                points.push((0.0, miou_of_sums(&sums, k)));
                let mut i = 0;
                while i < n {
                    let mut j = i;
                    while j < n && values[order[j]] == values[order[i]] {
                        let row = &self.totals[order[j]];
                        for (c, sum) in sums.iter_mut().enumerate() {
                            *sum += row[3 * k + c] - row[c];
                        }
                        j += 1;
                    }
                    points.push((j as f64 / n as f64, miou_of_sums(&sums, k)));
                    i = j;
                }
            }
        }
        trapezoids(&points)
    }

    fn sweep(&self, values: Option<&(Vec<f64>, Direction)>, thresholds: &[f64], cost: FrameCost, networks: NetworkCosts) -> Vec<Point> {
        thresholds.iter().map(|&t| self.measure(&self.route(values, t), cost, networks, t)).collect()
    }
}

/// mIoU over the classes in the ground truth of summed (tp, gt, pred) per class; `None`
/// without labelled pixels.
fn hybrid_miou(sums: &[f64], k: usize) -> Option<f64> {
    let (tp, gt, pred) = (&sums[..k], &sums[k..2 * k], &sums[2 * k..]);
    let ious: Vec<f64> = (0..k).filter(|&c| gt[c] > 0.0).map(|c| tp[c] / (gt[c] + pred[c] - tp[c])).collect();
    (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64)
}

fn miou_of_sums(sums: &[f64], k: usize) -> f64 {
    hybrid_miou(sums, k).unwrap_or(0.0)
}

/// Area under hybrid mIoU against remote fraction (trapezoids over points sorted by fraction).
pub fn area(points: &[Point]) -> f64 {
    let mut xy: Vec<(f64, f64)> = points.iter().map(|p| (p.remote_fraction, p.miou)).collect();
    xy.sort_by(|a, b| a.0.total_cmp(&b.0));
    trapezoids(&xy)
}

/// Trapezoid area under `(x, y)` points already in order of x.
fn trapezoids(xy: &[(f64, f64)]) -> f64 {
    xy.windows(2).map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0).sum()
}

/// The threshold among `candidates` (points measured on the choosing set) with the largest
/// total reduction whose drop stays within `budget_points`; ties go to the smaller drop.
pub fn choose(candidates: &[Point], budget_points: f64) -> Option<&Point> {
    candidates
        .iter()
        .filter(|p| p.drop_points <= budget_points + 1e-9)
        .max_by(|a, b| a.total_reduction.total_cmp(&b.total_reduction).then_with(|| b.drop_points.total_cmp(&a.drop_points)))
}

/// The point of a fraction sweep with the smallest remote fraction of at least `remote_fraction`.
pub fn at_fraction(points: &[Point], remote_fraction: f64) -> Option<&Point> {
    points.iter().filter(|p| p.remote_fraction >= remote_fraction - 1e-9).min_by(|a, b| a.remote_fraction.total_cmp(&b.remote_fraction))
}

/// Thresholds 0, 0.01, …, 1.
pub fn threshold_grid() -> Vec<f64> {
    let steps = (1.0 / THRESHOLD_STEP).round() as usize;
    (0..=steps).map(|i| i as f64 * THRESHOLD_STEP).collect()
}

/// Evaluates `policies` on `set`. Thresholds for each budget in `budgets_points` are chosen on
/// `choose_on` (the same policies measured on another set, e.g. validation data) when given,
/// else on `set` itself.
pub fn evaluate(
    set: &RoutingSet,
    policies: &[Policy],
    networks: NetworkCosts,
    choose_on: Option<(&RoutingSet, &[Policy])>,
    budgets_points: &[f64],
) -> Result<RoutingEvaluation, RoutingError> {
    if let Some((_, other)) = choose_on {
        let names = |p: &[Policy]| p.iter().map(|p| p.name.clone()).collect::<Vec<_>>().join(", ");
        if other.len() != policies.len() || other.iter().zip(policies).any(|(a, b)| a.name != b.name) {
            return Err(RoutingError::PolicyMismatch { choosing: names(other), evaluated: names(policies) });
        }
    }
    let grid = threshold_grid();
    let mut results = Vec::with_capacity(policies.len());
    for (index, policy) in policies.iter().enumerate() {
        let values = set.values(policy)?;
        let fractions = set.sweep(values.as_ref(), &set.cuts(values.as_ref()), policy.cost, networks);
        let (choosing_set, choosing_policy) = match choose_on {
            Some((other_set, other_policies)) => (other_set, &other_policies[index]),
            None => (set, policy),
        };
        let choosing_values = choosing_set.values(choosing_policy)?;
        let candidates = choosing_set.sweep(choosing_values.as_ref(), &choosing_set.cuts(choosing_values.as_ref()), policy.cost, networks);
        let choices = budgets_points
            .iter()
            .filter_map(|&budget| {
                let chosen = choose(&candidates, budget)?.clone();
                let realised = set.measure(&set.route(values.as_ref(), chosen.threshold), policy.cost, networks, chosen.threshold);
                let realised_at_fraction = at_fraction(&fractions, chosen.remote_fraction)?.clone();
                Some(Choice { budget_points: budget, threshold: chosen.threshold, chosen, realised, realised_at_fraction })
            })
            .collect();
        results.push(PolicyResult {
            name: policy.name.clone(),
            cost: policy.cost,
            thresholds: set.sweep(values.as_ref(), &grid, policy.cost, networks),
            auc: area(&fractions),
            fractions,
            normalised_auc: None,
            normalised_auc_interval: None,
            ahead_of_baseline: None,
            choices,
        });
    }
    let auc_of = |kind: fn(&PolicyKind) -> bool| policies.iter().zip(&results).find(|(p, _)| kind(&p.kind)).map(|(_, r)| r.auc);
    let random = auc_of(|k| matches!(k, PolicyKind::Random));
    let oracle = auc_of(|k| matches!(k, PolicyKind::Oracle));
    if let (Some(random), Some(oracle)) = (random, oracle) {
        if (oracle - random).abs() > 1e-12 {
            for r in &mut results {
                r.normalised_auc = Some((r.auc - random) / (oracle - random));
            }
        }
    }
    Ok(RoutingEvaluation {
        images: set.len(),
        well_segmented: set.images.iter().filter(|i| i.well()).count(),
        all_small_miou: set.all_small_miou,
        all_large_miou: set.all_large_miou,
        networks,
        policies: results,
        bootstrap: None,
    })
}

/// Resamples `set` `resamples` times with a circular block bootstrap (blocks of ⌈n^⅓⌉
/// consecutive images, the usual length for a dependent sequence) and records, per policy of
/// `evaluation` (measured on `set` with `policies`), the 90 % interval of its normalised AUC
/// and the share of resamples in which it beats `baseline`. Every resample scores every policy
/// on the same images, so the comparison is paired. Resamples without labelled pixels or with
/// oracle and random level are skipped.
pub fn bootstrap(
    evaluation: &mut RoutingEvaluation,
    set: &RoutingSet,
    policies: &[Policy],
    resamples: usize,
    seed: u64,
    baseline: Option<&str>,
) -> Result<(), RoutingError> {
    let n = set.len();
    let block = ((n as f64).cbrt().ceil() as usize).clamp(1, n.max(1));
    let find = |kind: fn(&PolicyKind) -> bool| policies.iter().position(|p| kind(&p.kind));
    let (Some(random), Some(oracle)) = (find(|k| matches!(k, PolicyKind::Random)), find(|k| matches!(k, PolicyKind::Oracle))) else {
        return Ok(());
    };
    let base = baseline.and_then(|name| policies.iter().position(|p| p.name == name));
    let values: Vec<Option<(Vec<f64>, Direction)>> = policies.iter().map(|p| set.values(p)).collect::<Result<_, _>>()?;
    let mut rng = SeededRng::new(seed);
    let mut normalised: Vec<Vec<f64>> = vec![Vec::with_capacity(resamples); policies.len()];
    let mut ahead = vec![0usize; policies.len()];
    let mut used = 0usize;
    for _ in 0..resamples {
        let mut picked = Vec::with_capacity(n + block);
        while picked.len() < n {
            let start = rng.below(n);
            picked.extend((0..block).map(|j| (start + j) % n));
        }
        picked.truncate(n);
        let Ok(resampled) = RoutingSet::new(picked.iter().map(|&i| set.images[i].clone()).collect()) else {
            continue;
        };
        let areas: Vec<f64> = values
            .iter()
            .map(|v| {
                let v = v.as_ref().map(|(values, direction)| (picked.iter().map(|&i| values[i]).collect(), *direction));
                resampled.area_in_order(v.as_ref())
            })
            .collect();
        let span = areas[oracle] - areas[random];
        if span.abs() <= 1e-12 {
            continue;
        }
        used += 1;
        let scores: Vec<f64> = areas.iter().map(|a| (a - areas[random]) / span).collect();
        for (k, score) in scores.iter().enumerate() {
            normalised[k].push(*score);
            if base.is_some_and(|b| *score > scores[b]) {
                ahead[k] += 1;
            }
        }
    }
    if used == 0 {
        return Ok(());
    }
    for (k, result) in evaluation.policies.iter_mut().enumerate().take(policies.len()) {
        let mut scores = std::mem::take(&mut normalised[k]);
        scores.sort_by(f64::total_cmp);
        let at = |q: f64| scores[((q * (scores.len() - 1) as f64).round() as usize).min(scores.len() - 1)];
        result.normalised_auc_interval = Some([at(0.05), at(0.95)]);
        result.ahead_of_baseline = base.filter(|&b| b != k).map(|_| ahead[k] as f64 / used as f64);
    }
    evaluation.bootstrap = Some(BootstrapSummary { resamples: used, block, seed, baseline: base.map(|b| policies[b].name.clone()) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 classes; one image's small/large confusions written as GT>PRED:PIXELS cells.
    fn image(small: &str, large: &str) -> RoutedImage {
        RoutedImage::new(&CompactConfusion::parse(small, 4).unwrap(), &CompactConfusion::parse(large, 4).unwrap())
    }

    const NETS: NetworkCosts = NetworkCosts { small: 1.0, large: 4.0 };
    const PLAIN: FrameCost = FrameCost { decision: 0.0, local: 1.0, remote: 4.0 };

    /// Three images:
    /// - A: small perfect on 8 background + 2 class-1 pixels (IoU_img 1.0, well); large the same.
    /// - B: 8 background + 2 class-2; small calls the class-2 pixels background (IoU_img
    ///   (8/10 + 0)/2 = 0.4); large perfect.
    /// - C: 10 class-3; small right on 5, background on 5 (IoU_img (0 + 0.5)/2 = 0.25); large
    ///   right on 8, background on 2 (IoU_img (0 + 0.8)/2 = 0.4).
    fn set() -> RoutingSet {
        RoutingSet::new(vec![image("0>0:8 1>1:2", "0>0:8 1>1:2"), image("0>0:8 2>0:2", "0>0:8 2>2:2"), image("3>3:5 3>0:5", "3>3:8 3>0:2")])
            .unwrap()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    /// `n` images over 4 classes with pseudo-random confusions, and values with ties.
    fn random_set(n: usize, seed: u64) -> (RoutingSet, Vec<f64>) {
        let mut rng = SeededRng::new(seed);
        let mut cells = |len: usize| {
            let mut out = Vec::new();
            for gt in 0..4 {
                for pred in 0..4 {
                    let pixels = rng.below(len);
                    if pixels > 0 && (gt == pred || rng.below(3) == 0) {
                        out.push(format!("{gt}>{pred}:{pixels}"));
                    }
                }
            }
            out.push("0>0:1".into());
            out.join(" ")
        };
        let images = (0..n).map(|_| image(&cells(40), &cells(60))).collect();
        let values = (0..n).map(|i| ((i * 7919) % 13) as f64 / 13.0).collect();
        (RoutingSet::new(images).unwrap(), values)
    }

    #[test]
    fn the_fast_area_equals_the_sweeps_area() {
        let (s, values) = random_set(40, 3);
        let oracle = s.values(&Policy { name: "oracle".into(), kind: PolicyKind::Oracle, cost: PLAIN }).unwrap();
        let policies: [Option<(Vec<f64>, Direction)>; 4] =
            [None, oracle, Some((values.clone(), Direction::LocalAbove)), Some((values, Direction::RemoteAbove))];
        for values in &policies {
            let swept = area(&s.sweep(values.as_ref(), &s.cuts(values.as_ref()), PLAIN, NETS));
            close(s.area_in_order(values.as_ref()), swept);
        }
    }

    #[test]
    fn bootstrap_intervals_hold_oracle_and_random_at_their_definitions_and_pair_the_policies() {
        let (s, values) = random_set(60, 5);
        let gains: Vec<f64> = s.images().iter().map(RoutedImage::gain).collect();
        let policy = |name: &str, kind: PolicyKind| Policy { name: name.into(), kind, cost: PLAIN };
        let policies = vec![
            policy("copy", PolicyKind::Values { values: gains.clone(), direction: Direction::RemoteAbove }),
            policy("reversed", PolicyKind::Values { values: gains, direction: Direction::LocalAbove }),
            policy("other", PolicyKind::Values { values, direction: Direction::LocalAbove }),
            policy("random", PolicyKind::Random),
            policy("oracle", PolicyKind::Oracle),
        ];
        let run = |seed: u64| {
            let mut e = evaluate(&s, &policies, NETS, None, &[]).unwrap();
            bootstrap(&mut e, &s, &policies, 200, seed, Some("copy")).unwrap();
            e
        };
        let e = run(1);
        let summary = e.bootstrap.as_ref().unwrap();
        assert_eq!((summary.resamples, summary.block, summary.baseline.as_deref()), (200, 4, Some("copy")));
        let by_name = |name: &str| e.policies.iter().find(|p| p.name == name).unwrap();
        let interval = |name: &str| by_name(name).normalised_auc_interval.unwrap();
        for (name, value) in [("copy", 1.0), ("oracle", 1.0), ("random", 0.0)] {
            close(interval(name)[0], value);
            close(interval(name)[1], value);
        }
        // The oracle's order reversed is below random in every resample, and never ahead of it.
        assert!(interval("reversed")[1] < 0.0, "{:?}", interval("reversed"));
        assert_eq!(by_name("reversed").ahead_of_baseline, Some(0.0));
        assert_eq!(by_name("copy").ahead_of_baseline, None, "the baseline is not compared with itself");
        let [low, high] = interval("other");
        let point = by_name("other").normalised_auc.unwrap();
        assert!(low < high && low <= point + 0.2 && point - 0.2 <= high, "{low} {point} {high}");
        // Same seed, same resamples.
        assert_eq!(run(1).policies, e.policies);
        assert_ne!(run(2).policies, e.policies);
    }

    #[test]
    fn hand_computed_figures_of_one_routing() {
        let s = set();
        assert_eq!(s.images().iter().map(RoutedImage::well).collect::<Vec<_>>(), [true, false, false]);
        close(s.images()[1].small_iou_img, 0.4);
        close(s.images()[2].gain(), 0.15);
        // All large: background tp 16, gt 16, pred 18 (C's 2 missed pixels) → 16/18; class 1:
        // 1; class 2: 1; class 3: 8/10. mIoU = (16/18 + 1 + 1 + 0.8) / 4.
        let all_large = (16.0 / 18.0 + 1.0 + 1.0 + 0.8) / 4.0;
        close(s.all_large_miou(), all_large);
        // A local, B remote, C local: background tp 8+8+0 = 16, gt 16, pred 8+8+5 = 21 → 16/21;
        // class 1: 2/2; class 2: 2/2 (B from the large network); class 3: 5/10.
        let hybrid = (16.0 / 21.0 + 1.0 + 1.0 + 0.5) / 4.0;
        let cost = FrameCost { decision: 0.1, local: 1.0, remote: 4.0 };
        let p = s.measure(&[1.0, 0.0, 1.0], cost, NETS, 0.5);
        close(p.miou, hybrid);
        close(p.drop_points, 100.0 * (all_large - hybrid));
        close(p.drop_relative, (all_large - hybrid) / all_large);
        close(p.local_fraction, 2.0 / 3.0);
        // Local = positive, well = A only: tp 1 (A), fp 1 (C), tn 1 (B).
        assert_eq!((p.precision, p.precision_gt, p.precision_lt), (Some(0.5), Some(1.0), Some(0.5)));
        // Edge: 0.1 + 1 x 2/3; total: that + 4 x 1/3.
        let edge = 0.1 + 2.0 / 3.0;
        close(p.edge_gflops_per_frame, edge);
        close(p.gflops_per_frame, edge + 4.0 / 3.0);
        close(p.total_reduction, 1.0 - (edge + 4.0 / 3.0) / 4.0);
        close(p.edge_reduction, 1.0 - edge / 1.0);
        // Nothing local: precision undefined, precision_lt = 1.
        let none_local = s.measure(&[0.0; 3], PLAIN, NETS, 0.0);
        assert_eq!((none_local.precision, none_local.precision_gt, none_local.precision_lt), (None, Some(0.0), Some(1.0)));
        close(none_local.total_reduction, 0.0);
    }

    #[test]
    fn normalised_auc_by_hand() {
        let s = set();
        let (l0, l1) = (s.all_large_miou(), s.all_small_miou());
        // Routed remote one by one: the oracle by gain (B 0.6, C 0.15, A 0), a policy that
        // predicts quality A > C > B (remote first B, then C, then A: the oracle's order), and a
        // worse one (remote first A).
        let miou_remote = |remote: &[usize]| {
            let local: Vec<f64> = (0..3).map(|i| if remote.contains(&i) { 0.0 } else { 1.0 }).collect();
            s.measure(&local, PLAIN, NETS, 0.0).miou
        };
        let trapezoid = |m: [f64; 4]| (m[0] + 2.0 * m[1] + 2.0 * m[2] + m[3]) / 6.0;
        let oracle = trapezoid([l1, miou_remote(&[1]), miou_remote(&[1, 2]), l0]);
        let worse = trapezoid([l1, miou_remote(&[0]), miou_remote(&[0, 1]), l0]);
        // Random: expected confusion at p = 0, 1/3, 2/3, 1.
        let random_at = |p: f64| s.measure(&[1.0 - p; 3], PLAIN, NETS, p).miou;
        let random = trapezoid([random_at(0.0), random_at(1.0 / 3.0), random_at(2.0 / 3.0), random_at(1.0)]);
        let policies = vec![
            Policy {
                name: "good".into(),
                kind: PolicyKind::Values { values: vec![0.9, 0.1, 0.5], direction: Direction::LocalAbove },
                cost: PLAIN,
            },
            Policy {
                name: "worse".into(),
                kind: PolicyKind::Values { values: vec![0.9, 0.5, 0.1], direction: Direction::RemoteAbove },
                cost: PLAIN,
            },
            Policy { name: "random".into(), kind: PolicyKind::Random, cost: PLAIN },
            Policy { name: "oracle".into(), kind: PolicyKind::Oracle, cost: PLAIN },
        ];
        let result = evaluate(&s, &policies, NETS, None, &[]).unwrap();
        let by_name = |n: &str| result.policies.iter().find(|p| p.name == n).unwrap();
        close(by_name("oracle").auc, oracle);
        close(by_name("random").auc, random);
        close(by_name("worse").auc, worse);
        close(by_name("good").normalised_auc.unwrap(), 1.0);
        close(by_name("worse").normalised_auc.unwrap(), (worse - random) / (oracle - random));
        close(by_name("random").normalised_auc.unwrap(), 0.0);
        // Every remote fraction is reached, in order.
        let fractions: Vec<f64> = by_name("good").fractions.iter().map(|p| p.remote_fraction).collect();
        assert_eq!(fractions.len(), 4);
        fractions.iter().zip([0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]).for_each(|(&a, b)| close(a, b));
        // The [0, 1] threshold sweep: at t = 0.3 the good policy keeps A and C local.
        let at = |t: f64| by_name("good").thresholds.iter().find(|p| (p.threshold - t).abs() < 1e-9).unwrap().clone();
        close(at(0.3).local_fraction, 2.0 / 3.0);
        close(at(0.95).local_fraction, 0.0);
        assert_eq!(by_name("good").thresholds.len(), 101);
    }

    #[test]
    fn thresholds_are_chosen_on_one_set_and_realised_on_another() {
        let s = set();
        // Choosing set: the policy's values there make it keep only A local within a budget.
        let policy = |values: Vec<f64>| Policy {
            name: "p".into(),
            kind: PolicyKind::Values { values, direction: Direction::LocalAbove },
            cost: PLAIN,
        };
        let choosing = vec![policy(vec![0.9, 0.1, 0.5])];
        let evaluated = vec![policy(vec![0.2, 0.8, 0.95])];
        let only_b_remote = s.measure(&[1.0, 0.0, 1.0], PLAIN, NETS, 0.0);
        let budget = only_b_remote.drop_points + 1e-6;
        let result = evaluate(&s, &evaluated, NETS, Some((&s, &choosing)), &[budget]).unwrap();
        let choice = &result.policies[0].choices[0];
        // Chosen: the cut between 0.1 and 0.5 (B remote), threshold 0.3.
        close(choice.threshold, 0.3);
        close(choice.chosen.drop_points, only_b_remote.drop_points);
        // Realised on the evaluated values: 0.2 ≤ 0.3 → A remote, B and C local.
        let realised = s.measure(&[0.0, 1.0, 1.0], PLAIN, NETS, 0.3);
        assert_eq!(choice.realised, realised);
        // At the chosen remote fraction (1/3) instead: the evaluated values' lowest (A) goes remote.
        close(choice.realised_at_fraction.remote_fraction, 1.0 / 3.0);
        assert_eq!(choice.realised_at_fraction.miou, realised.miou);
        close(choice.realised_at_fraction.threshold, (0.2 + 0.8) / 2.0);
        // No drop at all: B and C remote (A is segmented alike by both), the cheapest such cut.
        let strict = evaluate(&s, &evaluated, NETS, Some((&s, &choosing)), &[0.0]).unwrap();
        close(strict.policies[0].choices[0].chosen.drop_points, 0.0);
        close(strict.policies[0].choices[0].chosen.remote_fraction, 2.0 / 3.0);
        // Mismatched policy lists are refused.
        assert!(evaluate(&s, &evaluated, NETS, Some((&s, &[])), &[1.0]).is_err());
    }
}
