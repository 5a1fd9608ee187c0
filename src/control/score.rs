//! The per-frame score the threshold is compared with: higher means the small network is
//! enough for this frame. The decision network implements [`Score`] (its predicted IoU); until it
//! is there, and for tests of the controller, two placeholder scores stand in.

use crate::frame::{Features, Job, Prediction};

/// What a score says about one frame.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scored {
    /// Higher = the small network is enough; a frame stays local when `value` > threshold.
    pub value: f32,
    /// What a predicting score predicted, kept in `records.jsonl`.
    pub prediction: Option<Prediction>,
    /// Intermediate results the local path can reuse (the decision network's encoder output).
    pub features: Option<Features>,
}

impl Scored {
    pub fn value(value: f32) -> Self {
        Scored { value, prediction: None, features: None }
    }
}

/// Why a frame got no score. The frame still gets a route (local, the safe choice) and the
/// reason goes into its record.
#[derive(Debug, thiserror::Error)]
#[error("scoring frame {order} failed: {message}")]
pub struct ScoreError {
    pub order: u64,
    pub message: String,
}

/// Scores frames, once per frame, in frame order, on the decision stage's thread.
pub trait Score: Send {
    fn score(&mut self, job: &Job) -> Result<Scored, ScoreError>;

    /// Short name for the records and logs (e.g. "uniform", "decision-network").
    fn name(&self) -> &'static str;
}

/// A deterministic pseudo-random score in [0, 1) from the frame's order: a stand-in with known
/// statistics, so a threshold `t` sends a fraction `t` of the frames remote on average and the
/// controller can be tested (and compared) before the decision network exists.
#[derive(Debug, Clone, Copy, Default)]
pub struct UniformScore;

impl UniformScore {
    /// SplitMix64's finaliser: consecutive orders give unrelated, evenly spread values.
    pub fn of(order: u64) -> f32 {
        let mut z = order.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 24 bits fit an f32 mantissa exactly, so the value is below 1.
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

impl Score for UniformScore {
    fn score(&mut self, job: &Job) -> Result<Scored, ScoreError> {
        Ok(Scored::value(Self::of(job.order)))
    }

    fn name(&self) -> &'static str {
        "uniform"
    }
}

/// The same score for every frame: with a threshold below it every frame stays local, above it
/// every frame goes remote (a switch the controller flips as a whole).
#[derive(Debug, Clone, Copy)]
pub struct ConstantScore(pub f32);

impl Score for ConstantScore {
    fn score(&mut self, _job: &Job) -> Result<Scored, ScoreError> {
        Ok(Scored::value(self.0))
    }

    fn name(&self) -> &'static str {
        "constant"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_score_is_deterministic_and_spread_evenly_over_zero_to_one() {
        assert_eq!(UniformScore::of(42), UniformScore::of(42));
        let values: Vec<f32> = (0..20_000).map(UniformScore::of).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        // A threshold t sends the frames scoring at most t remote: a fraction t of them.
        for t in [0.1f32, 0.25, 0.5, 0.9] {
            let remote = values.iter().filter(|&&v| v <= t).count() as f32 / values.len() as f32;
            assert!((remote - t).abs() < 0.015, "threshold {t}: {remote} of the frames at or below it");
        }
        // Neighbouring frames are not correlated (a run of frames is not all local or all remote).
        let below_half: Vec<bool> = values.iter().map(|&v| v <= 0.5).collect();
        let switches = below_half.windows(2).filter(|w| w[0] != w[1]).count() as f32 / (below_half.len() - 1) as f32;
        assert!((switches - 0.5).abs() < 0.02, "{switches}");
    }
}
