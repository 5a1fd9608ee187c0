//! Routing rules: how a [`Prediction`] and a threshold `t` become "local" or "remote".
//!
//! - [`Rule::Thesis`]: local if at least one class's predicted IoU exceeds `t` (the thesis's rule).
//! - [`Rule::PredictedIouImg`]: local if the predicted IoU_img exceeds `t`, IoU_img being the
//!   mean predicted IoU over the *predicted-present* classes: those whose predicted IoU is at
//!   least `presence` (the network is trained to predict 0 for classes absent from a frame, so
//!   a low prediction means "absent" far more often than "present but missed").
//! - [`Rule::Gain`]: remote if the predicted gain of the large network exceeds `t`.
//!
//! Every rule is also a score ([`remote_score`]): higher means "send remote sooner", and a rule
//! with threshold `t` sends remote exactly the frames whose score exceeds its cut. `eval routing`
//! sweeps thresholds, and orders frames, by that score.

use serde::{Deserialize, Serialize};

use super::net::Prediction;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    Thesis,
    PredictedIouImg,
    Gain,
}

/// Default `presence`: a class counts as predicted present from a predicted IoU of 0.1.
pub const DEFAULT_PRESENCE: f32 = 0.1;

/// Which classes the prediction says the frame contains (predicted IoU ≥ `presence`).
pub fn predicted_present(class_iou: &[f32], presence: f32) -> Vec<bool> {
    class_iou.iter().map(|&v| v >= presence).collect()
}

/// Mean predicted IoU over the predicted-present classes; 0 when no class is predicted present
/// (nothing the small network is expected to get right, so such a frame should go remote).
pub fn predicted_iou_img(class_iou: &[f32], presence: f32) -> f32 {
    let present: Vec<f32> = class_iou.iter().copied().filter(|&v| v >= presence).collect();
    if present.is_empty() {
        0.0
    } else {
        present.iter().sum::<f32>() / present.len() as f32
    }
}

/// Higher = more reason to send the frame remote. Thesis: −(largest class IoU);
/// IoU_img: −(predicted IoU_img); gain: the predicted gain.
pub fn remote_score(rule: Rule, prediction: &Prediction, presence: f32) -> f32 {
    match rule {
        Rule::Thesis => -prediction.class_iou.iter().copied().fold(0.0, f32::max),
        Rule::PredictedIouImg => -predicted_iou_img(&prediction.class_iou, presence),
        Rule::Gain => prediction.gain,
    }
}

/// Whether the frame goes to the remote worker under `rule` with `threshold`.
pub fn goes_remote(rule: Rule, prediction: &Prediction, threshold: f32, presence: f32) -> bool {
    // Local when the quality (−score) exceeds t; remote when the gain (score) exceeds t.
    match rule {
        Rule::Thesis | Rule::PredictedIouImg => -remote_score(rule, prediction, presence) <= threshold,
        Rule::Gain => remote_score(rule, prediction, presence) > threshold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(class_iou: &[f32], gain: f32) -> Prediction {
        Prediction { class_iou: class_iou.to_vec(), gain }
    }

    #[test]
    fn thesis_rule_stays_local_when_any_class_clears_the_threshold() {
        let p = prediction(&[0.2, 0.75, 0.05], 0.0);
        assert!(!goes_remote(Rule::Thesis, &p, 0.7, DEFAULT_PRESENCE));
        assert!(goes_remote(Rule::Thesis, &p, 0.75, DEFAULT_PRESENCE), "not strictly above t");
        assert!(goes_remote(Rule::Thesis, &p, 0.8, DEFAULT_PRESENCE));
    }

    #[test]
    fn iou_img_is_the_mean_over_predicted_present_classes() {
        // 0.9 and 0.5 are present, 0.05 is not: (0.9 + 0.5) / 2 = 0.7.
        let p = prediction(&[0.9, 0.05, 0.5], 0.0);
        assert_eq!(predicted_present(&p.class_iou, 0.1), vec![true, false, true]);
        assert!((predicted_iou_img(&p.class_iou, 0.1) - 0.7).abs() < 1e-6);
        assert!(!goes_remote(Rule::PredictedIouImg, &p, 0.65, 0.1));
        assert!(goes_remote(Rule::PredictedIouImg, &p, 0.75, 0.1));
        // With a lower presence cut the 0.05 class counts and pulls the mean to 0.4833.
        assert!((predicted_iou_img(&p.class_iou, 0.01) - 1.45 / 3.0).abs() < 1e-6);
        // Nothing present: IoU_img 0, remote at any threshold ≥ 0.
        assert_eq!(predicted_iou_img(&[0.01, 0.02], 0.1), 0.0);
        assert!(goes_remote(Rule::PredictedIouImg, &prediction(&[0.01, 0.02], 0.0), 0.0, 0.1));
    }

    #[test]
    fn gain_rule_sends_remote_above_the_threshold() {
        assert!(goes_remote(Rule::Gain, &prediction(&[0.9], 0.2), 0.1, DEFAULT_PRESENCE));
        assert!(!goes_remote(Rule::Gain, &prediction(&[0.9], 0.1), 0.1, DEFAULT_PRESENCE));
        assert!(!goes_remote(Rule::Gain, &prediction(&[0.9], -0.3), 0.0, DEFAULT_PRESENCE));
    }

    #[test]
    fn scores_order_frames_like_the_rules() {
        let good = prediction(&[0.95, 0.8], -0.1);
        let bad = prediction(&[0.4, 0.2], 0.3);
        for rule in [Rule::Thesis, Rule::PredictedIouImg, Rule::Gain] {
            assert!(remote_score(rule, &bad, DEFAULT_PRESENCE) > remote_score(rule, &good, DEFAULT_PRESENCE), "{rule:?}");
        }
    }

    #[test]
    fn rule_names_in_config_are_kebab_case() {
        #[derive(Deserialize)]
        struct C {
            rule: Rule,
        }
        let c: C = toml::from_str("rule = \"predicted-iou-img\"").unwrap();
        assert_eq!(c.rule, Rule::PredictedIouImg);
    }
}
