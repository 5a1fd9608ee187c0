//! The decision stage: gives each frame its place in the stream, asks the policy where it
//! goes, and sends it there. It samples the signals the policy sees: queue depths, local
//! latency and remote health per frame (shared counters, cheap), CPU and battery every
//! `control.interval_ms` (files).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::PipelineError;
use crate::config::{EdgeConfig, Routing, ScoreChoice};
use crate::control::system::{allowed_cpus, read_battery, CpuSampler};
use crate::control::{
    Battery, ConstantScore, ControlTick, Controller, Decide, RoutingPolicy, Score, Signals, ThresholdPolicy, UniformScore,
};
use crate::decision::DecisionScore;
use crate::frame::{Frame, Job, Route};
use crate::metrics::{LatencyGauge, QueueDepths, RemoteHealth};

/// The policy `remote.routing` names; the threshold policy sends its controller's ticks to
/// `ticks`. `decision_network` is loaded when `control.score` names it.
pub(super) fn policy(
    config: &EdgeConfig,
    decision_network: Option<DecisionScore>,
    ticks: Option<Sender<ControlTick>>,
) -> Result<Box<dyn Decide>, PipelineError> {
    if config.remote.routing != Routing::Threshold {
        return Ok(Box::new(RoutingPolicy::new(&config.remote)));
    }
    let controller = Controller::new(&config.control, config.remote.deadline_ms.get(), Instant::now());
    Ok(Box::new(ThresholdPolicy::new(score(config, decision_network)?, controller, ticks)))
}

/// The per-frame score `control.score` names.
fn score(config: &EdgeConfig, decision_network: Option<DecisionScore>) -> Result<Box<dyn Score>, PipelineError> {
    Ok(match (config.control.score, decision_network) {
        (ScoreChoice::Uniform, _) => Box::new(UniformScore),
        (ScoreChoice::Constant, _) => Box::new(ConstantScore(config.control.constant_score)),
        (ScoreChoice::DecisionNetwork, Some(network)) => Box::new(network),
        (ScoreChoice::DecisionNetwork, None) => {
            return Err(PipelineError::Decision(Box::new(crate::decision::DecisionError::Invalid {
                what: "control.score",
                problem: "\"decision-network\" but no decision network was loaded (set decision.network)".into(),
            })))
        }
    })
}

/// Where the decision stage reads the pipeline's state from.
pub(super) struct SignalSource {
    pub(super) queues: QueueDepths,
    /// Age of local frames when their mask is ready.
    pub(super) local_latency: Arc<LatencyGauge>,
    /// `None` when the remote path is off.
    pub(super) remote: Option<Arc<RemoteHealth>>,
    pub(super) device: DeviceReadings,
}

impl SignalSource {
    fn sample(&mut self) -> Signals {
        let at = Instant::now();
        let (cpu, battery) = self.device.read(at);
        Signals {
            at,
            queues: self.queues.sample(),
            local_latency_ms: self.local_latency.ms(),
            local_oldest_ms: self.local_latency.oldest_ms(),
            cpu,
            battery,
            remote: self.remote.as_ref().map(|h| h.snapshot()),
        }
    }
}

/// CPU utilisation and battery, read from their files at most once per period.
pub(super) struct DeviceReadings {
    cpu: CpuSampler,
    power_supply_dir: PathBuf,
    period: Duration,
    next: Option<Instant>,
    last: (Option<f32>, Option<Battery>),
}

impl DeviceReadings {
    /// Utilisation of the CPUs the calling thread (and the stages it starts) may run on.
    pub(super) fn new(power_supply_dir: PathBuf, period: Duration) -> Self {
        DeviceReadings { cpu: CpuSampler::new("/proc/stat", allowed_cpus()), power_supply_dir, period, next: None, last: (None, None) }
    }

    fn read(&mut self, now: Instant) -> (Option<f32>, Option<Battery>) {
        if self.next.is_none_or(|next| now >= next) {
            self.next = Some(now + self.period);
            self.last = (self.cpu.sample(), read_battery(&self.power_supply_dir));
        }
        self.last
    }
}

/// The stage's body. Frames are numbered in arrival order (`Job::order`, contiguous: what the
/// sink restores). A remote route without a remote path falls to the local one.
pub(super) fn decision_stage(
    frames: Receiver<Frame>,
    mut policy: Box<dyn Decide>,
    mut signals: SignalSource,
    local: Sender<Job>,
    remote: Option<Sender<Job>>,
) -> impl FnOnce() + Send + 'static {
    move || {
        for (order, frame) in (0u64..).zip(frames) {
            let mut job = Job::new(order, frame);
            let deciding = Instant::now();
            let decision = policy.decide(&job, &signals.sample());
            job.latency_ms.insert("decision", deciding.elapsed().as_secs_f64() * 1000.0);
            let sent = match (job.decide(decision), &remote) {
                (Route::Remote, Some(tx)) => tx.send(job).is_ok(),
                _ => {
                    signals.local_latency.started(job.frame.captured_at);
                    local.send(job).is_ok()
                }
            };
            if !sent {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Count, RemoteConfig, Routing};
    use crate::control::RoutingPolicy;
    use crossbeam_channel::{bounded, unbounded};

    fn frames(count: u64) -> Receiver<Frame> {
        let (tx, rx) = unbounded();
        for seq in 0..count {
            tx.send(Frame { seq: seq * 10, pts: None, width: 1, height: 1, bgr: vec![0; 3], captured_at: Instant::now() }).unwrap();
        }
        rx
    }

    fn every_third() -> Box<dyn Decide> {
        let config = RemoteConfig { routing: Routing::EveryNth, every_nth: Count::new(3).unwrap(), ..RemoteConfig::default() };
        Box::new(RoutingPolicy::new(&config))
    }

    fn idle() -> SignalSource {
        SignalSource {
            queues: QueueDepths::default(),
            local_latency: Arc::default(),
            remote: None,
            device: DeviceReadings::new(PathBuf::from("/nonexistent"), Duration::from_secs(1)),
        }
    }

    #[test]
    fn frames_are_numbered_in_order_and_sent_where_the_policy_says() {
        let (local_tx, local_rx) = unbounded();
        let (remote_tx, remote_rx) = unbounded();
        decision_stage(frames(7), every_third(), idle(), local_tx, Some(remote_tx))();
        let orders = |rx: Receiver<Job>| rx.iter().map(|j| (j.order, j.decision.map(|d| d.route))).collect::<Vec<_>>();
        assert_eq!(orders(remote_rx), [(2, Some(Route::Remote)), (5, Some(Route::Remote))]);
        let local = orders(local_rx);
        assert_eq!(local.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [0, 1, 3, 4, 6]);
        assert!(local.iter().all(|(_, route)| *route == Some(Route::Local)));
    }

    #[test]
    fn without_a_remote_path_every_frame_stays_local() {
        let (local_tx, local_rx) = unbounded();
        decision_stage(frames(4), every_third(), idle(), local_tx, None)();
        assert_eq!(local_rx.iter().map(|j| j.order).collect::<Vec<_>>(), [0, 1, 2, 3]);
    }

    #[test]
    fn the_stage_ends_when_the_next_stage_is_gone() {
        let (local_tx, local_rx) = bounded(1);
        drop(local_rx);
        // Returns instead of blocking on a queue nobody reads.
        decision_stage(frames(3), every_third(), idle(), local_tx, None)();
    }
}
