//! Control unit: decides, frame by frame, whether the small network on the device or the large
//! network on the remote worker segments it.
//!
//! Whatever decides implements [`Decide`]: it sees the frame's [`Job`] and the pipeline's
//! [`Signals`] (queue depths, local latency, CPU, battery, remote health, sampled when the frame
//! is decided) and answers with a [`Decision`]: the route, a record of why (written to
//! `records.jsonl`), and anything it computed that the local path can reuse. The fixed policies
//! of `remote.routing` ([`RoutingPolicy`]) decide from the frame's position alone;
//! `remote.routing = "threshold"` ([`ThresholdPolicy`]) compares a per-frame [`Score`] (the
//! decision network's, or a placeholder) with a threshold that the [`Controller`] moves with the
//! signals, and that a [`breaker::Breaker`] can override when the remote path fails.
//!
//! The controller is sans-IO and tested on made-up time; [`system`] reads what the device says
//! about itself (CPU, battery), and [`plot`] draws what a run's controller did.

pub mod breaker;
pub mod controller;
pub mod pi;
pub mod plot;
mod policy;
mod score;
pub mod system;

use std::time::Instant;

use crate::config::{Count, RemoteConfig, Routing};
use crate::frame::{Decision, Job, Route};
use crate::metrics::{QueueSample, RemoteHealthSnapshot};
pub use controller::{ControlTick, Controller, LatestTick};
pub use policy::ThresholdPolicy;
pub use score::{ConstantScore, Score, ScoreError, Scored, UniformScore};
pub use system::Battery;

/// What the pipeline looks like when a frame is decided.
#[derive(Debug, Clone)]
pub struct Signals {
    /// When the signals were sampled; time-driven policies take their clock from here, so
    /// they can be tested on made-up time.
    pub at: Instant,
    pub queues: Vec<QueueSample>,
    /// Recent age of local frames when their mask is ready; `None` before the first one.
    pub local_latency_ms: Option<f64>,
    /// Age of the oldest local frame not ready yet; `None` when there is none.
    pub local_oldest_ms: Option<f64>,
    /// Busy share of the device's CPUs, 0..=1, over the last `control.interval_ms`.
    pub cpu: Option<f32>,
    /// `None`: no battery (on mains).
    pub battery: Option<Battery>,
    /// `None` when the remote path is off.
    pub remote: Option<RemoteHealthSnapshot>,
}

impl Signals {
    /// Signals of an idle pipeline without a remote path.
    pub fn idle(at: Instant) -> Self {
        Signals { at, queues: Vec::new(), local_latency_ms: None, local_oldest_ms: None, cpu: None, battery: None, remote: None }
    }

    pub fn queue(&self, name: &str) -> Option<&QueueSample> {
        self.queues.iter().find(|q| q.name == name)
    }

    /// Frames waiting in the queues named.
    pub fn depth(&self, names: &[&str]) -> usize {
        self.queues.iter().filter(|q| names.contains(&q.name)).map(|q| q.depth).sum()
    }
}

/// Decides where each frame goes. Called once per frame, in frame order, on the decision
/// stage's thread.
pub trait Decide: Send {
    fn decide(&mut self, job: &Job, signals: &Signals) -> Decision;
}

/// The fixed policies of `remote.routing`.
#[derive(Debug, Clone, Copy)]
pub struct RoutingPolicy {
    routing: Routing,
    every_nth: Count<{ usize::MAX }>,
}

impl RoutingPolicy {
    pub fn new(config: &RemoteConfig) -> Self {
        RoutingPolicy { routing: config.routing, every_nth: config.every_nth }
    }

    /// `order` is the frame's position after ingest (contiguous, starting at 0).
    pub fn route(&self, order: u64) -> Route {
        match self.routing {
            Routing::Local => Route::Local,
            Routing::Remote => Route::Remote,
            Routing::EveryNth if (order + 1) % self.every_nth.get() as u64 == 0 => Route::Remote,
            Routing::EveryNth => Route::Local,
            // Decided by [`ThresholdPolicy`]; this policy alone has no score to compare.
            Routing::Threshold => Route::Local,
        }
    }

    fn name(&self) -> &'static str {
        match self.routing {
            Routing::Local => "local",
            Routing::Remote => "remote",
            Routing::EveryNth => "every-nth",
            Routing::Threshold => "threshold",
        }
    }
}

impl Decide for RoutingPolicy {
    fn decide(&mut self, job: &Job, _signals: &Signals) -> Decision {
        Decision::fixed(self.route(job.order), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    fn policy(routing: Routing, every_nth: usize) -> RoutingPolicy {
        RoutingPolicy::new(&RemoteConfig { routing, every_nth: Count::new(every_nth).unwrap(), ..RemoteConfig::default() })
    }

    #[test]
    fn every_nth_sends_every_nth_frame_remote() {
        let p = policy(Routing::EveryNth, 3);
        let routes: Vec<Route> = (0..6).map(|o| p.route(o)).collect();
        use Route::*;
        assert_eq!(routes, vec![Local, Local, Remote, Local, Local, Remote]);
        assert_eq!(policy(Routing::Remote, 1).route(5), Remote);
        assert_eq!(policy(Routing::Local, 1).route(5), Local);
    }

    #[test]
    fn fixed_policies_record_their_name_and_route_only() {
        let frame = Frame { seq: 0, pts: None, width: 1, height: 1, bgr: vec![0; 3], captured_at: Instant::now() };
        let mut p = policy(Routing::EveryNth, 2);
        let decision = p.decide(&Job::new(1, frame), &Signals::idle(Instant::now()));
        assert_eq!(decision, Decision::fixed(Route::Remote, "every-nth"));
        assert_eq!(serde_json::to_value(&decision.record).unwrap(), serde_json::json!({"route": "remote", "policy": "every-nth"}));
    }
}
