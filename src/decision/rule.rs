//! Routing rules: how a [`Prediction`] and a threshold `t` become "local" or "remote".
//!
//! - [`Rule::Thesis`]: local if at least one class's predicted IoU exceeds `t` (the thesis's rule).
//! - [`Rule::PredictedIouImg`]: local if the predicted IoU_img exceeds `t`, IoU_img being the
//!   mean predicted IoU over the *predicted-present* classes: those whose predicted presence
//!   probability is at least `presence` (default 0.5), or, when none is, the single most
//!   probable class. Presence is its own output of the network because a low predicted IoU
//!   cannot tell "absent" (not in IoU_img) from "present but missed" (a 0 in IoU_img).
//! - [`Rule::Gain`]: remote if the predicted gain of the large network exceeds `t`.
//!
//! Every rule is also a score ([`remote_score`]): higher means "send remote sooner", and a rule
//! with threshold `t` sends remote exactly the frames whose score exceeds its cut. `eval routing`
//! sweeps thresholds, and orders frames, by that score.

use super::net::Prediction;
/// Defined with the edge's configuration (`decision.rule`), which sits below every module.
pub use crate::config::Rule;

/// Default `presence`: a class counts as predicted present from a probability of 0.5.
pub const DEFAULT_PRESENCE: f32 = 0.5;

/// Which classes the prediction says count in the frame's IoU_img: presence ≥ `presence`, or
/// the most probable class when none reaches it (every frame has at least one class).
pub fn predicted_present(prediction: &Prediction, presence: f32) -> Vec<bool> {
    let mut present: Vec<bool> = prediction.class_presence.iter().map(|&p| p >= presence).collect();
    if !present.iter().any(|&p| p) {
        let most_likely = prediction.class_presence.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(c, _)| c);
        if let Some(c) = most_likely {
            present[c] = true;
        }
    }
    present
}

/// Mean predicted IoU over the predicted-present classes.
pub fn predicted_iou_img(prediction: &Prediction, presence: f32) -> f32 {
    let present = predicted_present(prediction, presence);
    let (sum, count) = prediction.class_iou.iter().zip(&present).filter(|(_, &p)| p).fold((0.0, 0usize), |(s, n), (&v, _)| (s + v, n + 1));
    if count == 0 {
        0.0
    } else {
        sum / count as f32
    }
}

/// Higher = more reason to send the frame remote. Thesis: −(largest class IoU);
/// IoU_img: −(predicted IoU_img); gain: the predicted gain.
pub fn remote_score(rule: Rule, prediction: &Prediction, presence: f32) -> f32 {
    match rule {
        Rule::Thesis => -prediction.class_iou.iter().copied().fold(0.0, f32::max),
        Rule::PredictedIouImg => -predicted_iou_img(prediction, presence),
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
        // Present where the IoU is at least 0.1, unless a test says otherwise.
        let class_presence = class_iou.iter().map(|&v| if v >= 0.1 { 0.9 } else { 0.2 }).collect();
        Prediction { class_iou: class_iou.to_vec(), class_presence, gain }
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
        // Classes 0 and 2 are present (0.9), class 1 is not (0.2): (0.9 + 0.5) / 2 = 0.7.
        let mut p = prediction(&[0.9, 0.05, 0.5], 0.0);
        assert_eq!(predicted_present(&p, 0.5), vec![true, false, true]);
        assert!((predicted_iou_img(&p, 0.5) - 0.7).abs() < 1e-6);
        assert!(!goes_remote(Rule::PredictedIouImg, &p, 0.65, 0.5));
        assert!(goes_remote(Rule::PredictedIouImg, &p, 0.75, 0.5));
        // A class present but predicted to be missed pulls the mean down: (0.9 + 0.05 + 0.5) / 3.
        p.class_presence[1] = 0.8;
        assert!((predicted_iou_img(&p, 0.5) - 1.45 / 3.0).abs() < 1e-6);
        // A lower presence cut lets more classes count.
        p.class_presence[1] = 0.3;
        assert_eq!(predicted_present(&p, 0.25), vec![true, true, true]);
        // Nothing reaches the cut: the most probable class alone.
        let q = Prediction { class_iou: vec![0.3, 0.6], class_presence: vec![0.1, 0.4], gain: 0.0 };
        assert_eq!(predicted_present(&q, 0.5), vec![false, true]);
        assert!((predicted_iou_img(&q, 0.5) - 0.6).abs() < 1e-6);
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
        #[derive(serde::Deserialize)]
        struct C {
            rule: Rule,
        }
        let c: C = toml::from_str("rule = \"predicted-iou-img\"").unwrap();
        assert_eq!(c.rule, Rule::PredictedIouImg);
    }
}
