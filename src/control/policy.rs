//! `remote.routing = "threshold"`: each frame's [`Score`] against the [`Controller`]'s threshold.

use crossbeam_channel::Sender;

use super::{ControlTick, Controller, Decide, Score, Signals};
use crate::frame::{Decision, DecisionRecord, Job, Route};

/// Scores every frame (also those the breaker keeps local: the decision network's features
/// serve the local path), routes it by the controller, and records the threshold and why.
pub struct ThresholdPolicy {
    score: Box<dyn Score>,
    controller: Controller,
    /// Where the controller's ticks go (`metrics.jsonl`); a full channel drops a tick rather
    /// than hold up a frame.
    ticks: Option<Sender<ControlTick>>,
    /// Only the first scoring failure is logged; each one is in its frame's record.
    score_failed_before: bool,
}

impl ThresholdPolicy {
    pub fn new(score: Box<dyn Score>, controller: Controller, ticks: Option<Sender<ControlTick>>) -> Self {
        ThresholdPolicy { score, controller, ticks, score_failed_before: false }
    }
}

impl Decide for ThresholdPolicy {
    fn decide(&mut self, job: &Job, signals: &Signals) -> Decision {
        if let Some(tick) = self.controller.observe(signals) {
            if let Some(ticks) = &self.ticks {
                let _ = ticks.try_send(tick);
            }
        }
        let threshold = self.controller.threshold();
        let (route, reason, scored) = match self.score.score(job) {
            Ok(scored) => {
                let routed = self.controller.route(scored.value, signals);
                let comparison = if scored.value > threshold { ">" } else { "<=" };
                let mut reason = format!("{} score {:.3} {comparison} {threshold:.3}", self.score.name(), scored.value);
                if let Some(note) = routed.note {
                    reason.push_str(&format!(", {note}"));
                }
                reason.push_str(&format!("; {}", self.controller.reason()));
                (routed.route, reason, Some(scored))
            }
            Err(e) => {
                if !std::mem::replace(&mut self.score_failed_before, true) {
                    tracing::warn!(error = %e, "scoring failed; such frames stay local (each is in records.jsonl)");
                }
                (Route::Local, format!("{e}: kept local"), None)
            }
        };
        let (prediction, features) = scored.map_or((None, None), |s| (s.prediction, s.features));
        Decision {
            record: DecisionRecord { route, policy: "threshold", threshold: Some(threshold), reason: Some(reason), prediction },
            features,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ControlConfig, ControlMode};
    use crate::control::{ConstantScore, ScoreError, Scored, UniformScore};
    use crate::frame::Frame;
    use crate::metrics::RemoteHealthSnapshot;
    use std::time::{Duration, Instant};

    fn job(order: u64) -> Job {
        Job::new(order, Frame { seq: order, pts: None, width: 1, height: 1, bgr: vec![0; 3], captured_at: Instant::now() })
    }

    fn healthy(at: Instant) -> Signals {
        Signals { remote: Some(RemoteHealthSnapshot { connected_workers: 1, ..Default::default() }), ..Signals::idle(at) }
    }

    fn policy(score: Box<dyn Score>, threshold: f32) -> ThresholdPolicy {
        let config = ControlConfig { mode: ControlMode::Fixed, threshold, ..ControlConfig::default() };
        ThresholdPolicy::new(score, Controller::new(&config, Duration::from_millis(500), Instant::now()), None)
    }

    #[test]
    fn frames_scoring_above_the_threshold_stay_local_and_the_record_says_why() {
        let mut p = policy(Box::new(ConstantScore(0.7)), 0.5);
        let d = p.decide(&job(0), &healthy(Instant::now()));
        assert_eq!(d.route(), Route::Local);
        assert_eq!(d.record.threshold, Some(0.5));
        assert_eq!(d.record.reason.as_deref(), Some("constant score 0.700 > 0.500; fixed threshold 0.50"));
        let mut p = policy(Box::new(ConstantScore(0.3)), 0.5);
        assert_eq!(p.decide(&job(0), &healthy(Instant::now())).route(), Route::Remote);
        let mut p = policy(Box::new(ConstantScore(0.3)), 0.5);
        let without_remote = p.decide(&job(0), &Signals::idle(Instant::now()));
        assert_eq!(without_remote.route(), Route::Local);
        assert!(without_remote.record.reason.unwrap().contains("no remote path"));
    }

    #[test]
    fn the_uniform_score_sends_the_threshold_share_of_frames_remote() {
        let mut p = policy(Box::new(UniformScore), 0.25);
        let now = Instant::now();
        let remote = (0..4000).filter(|&o| p.decide(&job(o), &healthy(now)).route() == Route::Remote).count();
        assert!((remote as f32 / 4000.0 - 0.25).abs() < 0.02, "{remote}");
    }

    struct Failing;
    impl Score for Failing {
        fn score(&mut self, job: &Job) -> Result<Scored, ScoreError> {
            Err(ScoreError { order: job.order, message: "no features".into() })
        }
        fn name(&self) -> &'static str {
            "failing"
        }
    }

    #[test]
    fn a_frame_without_a_score_stays_local() {
        let mut p = policy(Box::new(Failing), 1.0);
        let d = p.decide(&job(3), &healthy(Instant::now()));
        assert_eq!(d.route(), Route::Local);
        assert_eq!(d.record.reason.as_deref(), Some("scoring frame 3 failed: no features: kept local"));
    }

    #[test]
    fn ticks_are_sent_every_interval() {
        let (tx, rx) = crossbeam_channel::bounded(16);
        let config = ControlConfig { mode: ControlMode::Fixed, interval_ms: crate::config::Millis::new(100), ..ControlConfig::default() };
        let start = Instant::now();
        let mut p = ThresholdPolicy::new(Box::new(UniformScore), Controller::new(&config, Duration::from_millis(500), start), Some(tx));
        for n in 0..10u64 {
            p.decide(&job(n), &healthy(start + Duration::from_millis(n * 50)));
        }
        // Ticks at the first frame, then at 100, 200, 300 and 400 ms.
        assert_eq!(rx.try_iter().count(), 5);
    }
}
