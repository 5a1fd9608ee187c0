//! The controller behind `remote.routing = "threshold"`: where the threshold stands, why, and
//! which way each frame goes. Sans-IO: it is handed the pipeline's [`Signals`] (with their
//! time) and scores, and answers with routes and, every `control.interval_ms`, a [`ControlTick`]
//! that explains its state; so it is tested on made-up time and made-up signals.
//!
//! Direction: a higher threshold keeps fewer frames local. Each tick the signals vote, as an
//! error in about -1..=1 (positive: raise):
//! - the edge (adaptive mode): local queue above `target_local_queue`, local frames older than
//!   `target_latency_ms`; the worse of them speaks for the edge, and a CPU above `cpu_high`
//!   adds up to `cpu_weight` to it;
//! - the budget (budget and adaptive modes): `remote_budget` minus the share of frames sent remote;
//! - the remote: round trip above `rtt_high` of the deadline, fallbacks above
//!   `max_fallback_rate` of the frames sent, frames queueing for the remote path.
//!
//! The budget and remote votes are limits, so the lowest vote wins over the edge's (a selector,
//! as in override control): the edge raises the threshold only as far as the remote can take.
//! The chosen error drives a [`PiLoop`] within [`threshold_min`, `threshold_max`]. While
//! discharging, the battery table sets a floor under the result. The [`Breaker`] can shut the
//! remote path whatever the threshold says; meanwhile the loop holds still.
//!
//! The remote votes on what it did with the frames sent to it. When none were sent for a
//! while (the threshold pushed down to where no frame scores below it), its old fallbacks are
//! forgotten at the pace they were learnt and its old round trip no longer counts, so the
//! threshold can rise again and try the remote; the breaker deals with a remote that is gone.
//!
//! The first frame ticks at once, so the battery floor holds from the first frame on.
//!
//! [`threshold_min`]: crate::config::ControlConfig::threshold_min
//! [`threshold_max`]: crate::config::ControlConfig::threshold_max

use std::time::{Duration, Instant};

use serde::Serialize;

use super::breaker::{Breaker, BreakerSettings, BreakerState, Permit};
use super::pi::{Limit, PiLoop, PiSettings};
use super::system::Battery;
use super::Signals;
use crate::config::{BatteryStep, ControlConfig, ControlMode};
use crate::frame::Route;
use crate::metrics::RemoteHealthSnapshot;

/// Queues in front of the small network: their depth is the edge's backlog.
pub const LOCAL_QUEUES: [&str; 2] = ["local", "prepared"];
/// The queue the decision stage feeds the remote path through.
pub const REMOTE_QUEUE: &str = "remote";
/// How quickly the measured remote share and fallback rate follow the frames: roughly the
/// last two seconds count, whatever the frame rate.
const SHARE_TIME_CONSTANT: Duration = Duration::from_secs(2);

/// An empty local queue says there is spare capacity, not how much: the edge takes frames back
/// at this fraction of the pace at which a backlog sends them away, probing rather than
/// overshooting into a backlog again (a backlog costs frames, spare capacity only remote share).
/// At full pace the loop and the queue, which integrates, swing between empty and full.
const SPARE_PACE: f32 = 0.25;

/// A round trip measured longer ago than this, with no frame sent since, no longer votes.
const STALE_REMOTE: Duration = Duration::from_secs(4);

/// Errors within this of zero hold the threshold where it is, as far as the explanation goes.
const HOLD_BAND: f32 = 0.02;

/// The remote path's health at a tick.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RemoteSignals {
    /// Frames waiting for the remote path, averaged over the tick.
    pub queue: f32,
    /// Moving average of the round trip; 0 before the first answer, and once no frame went
    /// remote for a few seconds (it no longer says anything about the remote).
    pub rtt_ms: f64,
    pub in_flight: usize,
    pub worker_queue_ms: f64,
    /// Fallbacks per frame sent, recent.
    pub fallback_rate: f32,
    pub fallbacks: u64,
    pub overloaded: u64,
    pub failures: u64,
    pub connected_workers: usize,
}

/// The signals as the controller saw them at a tick.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TickSignals {
    /// Frames waiting for the small network, averaged over the tick.
    pub local_queue: f32,
    /// Frames sent remote during the tick because the local backlog was above its target.
    pub spilled: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub battery: Option<Battery>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteSignals>,
}

/// The controller's state at one tick: a line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ControlTick {
    #[serde(skip)]
    pub at: Instant,
    pub mode: ControlMode,
    /// The threshold in force from this tick on.
    pub threshold: f32,
    /// The loop's output before the battery floor.
    pub loop_output: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub battery_floor: Option<f32>,
    /// The error that drove the loop, and its parts.
    pub error: f32,
    pub p: f32,
    pub i: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<Limit>,
    /// Which signal decided the error ("local queue", "budget", "remote fallbacks", ...).
    pub driver: &'static str,
    pub reason: String,
    pub breaker: BreakerState,
    /// Times the breaker opened since the start.
    pub breaker_opened: u64,
    /// Share of frames sent remote, recent.
    pub remote_fraction: f32,
    /// The local queue the adaptive mode holds to, so the file alone shows the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_local_queue: Option<f32>,
    /// Frames decided during the tick.
    pub frames: u32,
    pub signals: TickSignals,
}

/// The controller's last tick, kept for readers that look now and then (the `/metrics`
/// scrape) rather than follow every tick as `metrics.jsonl` does.
#[derive(Debug, Default)]
pub struct LatestTick(std::sync::Mutex<Option<ControlTick>>);

impl LatestTick {
    pub fn set(&self, tick: ControlTick) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(tick);
    }

    /// `None` until the first tick (or without a controller).
    pub fn get(&self) -> Option<ControlTick> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// One frame's route and, when something other than the score against the threshold chose
/// it, why.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub route: Route,
    pub note: Option<String>,
}

/// One signal's vote: positive raises the threshold.
#[derive(Debug, Clone)]
struct Vote {
    driver: &'static str,
    error: f32,
    text: String,
}

/// What accumulates between ticks.
#[derive(Debug, Default)]
struct Window {
    frames: u32,
    remote: u32,
    /// Frames the local queue's backlog sent remote although they scored above the threshold.
    spilled: u32,
    samples: u32,
    local_backlog: f64,
    remote_queue: f64,
}

#[derive(Debug)]
pub struct Controller {
    config: ControlConfig,
    /// `remote.deadline_ms`, what "slow" is measured against.
    deadline_ms: f64,
    pi: PiLoop,
    breaker: Breaker,
    last_tick: Instant,
    /// Whether the first tick (at the first frame) happened.
    ticked: bool,
    window: Window,
    remote_fraction: f32,
    fallback_rate: f32,
    /// Counters at the previous tick, for rates.
    previous_remote: Option<RemoteHealthSnapshot>,
    /// When the remote path last had frames sent or in flight.
    remote_busy_at: Instant,
    /// When a tick last saw a frame kept local.
    kept_local_at: Instant,
    /// Whether every remote vote of the last tick was positive: only then are frames spilled
    /// there (a failing remote would give them back to the full local queue).
    remote_has_room: bool,
    threshold: f32,
    reason: String,
}

impl Controller {
    pub fn new(config: &ControlConfig, remote_deadline: Duration, now: Instant) -> Self {
        let pi = PiLoop::new(
            PiSettings { kp: config.kp, ki: config.ki, min: config.threshold_min, max: config.threshold_max, max_rate: config.max_rate },
            config.threshold,
            now,
        );
        let breaker =
            Breaker::new(BreakerSettings { failures: config.breaker_failures.get() as u64, cooldown: config.breaker_cooldown_ms.get() });
        Controller {
            config: config.clone(),
            deadline_ms: remote_deadline.as_secs_f64() * 1000.0,
            pi,
            breaker,
            last_tick: now,
            ticked: false,
            window: Window::default(),
            remote_fraction: 0.0,
            fallback_rate: 0.0,
            previous_remote: None,
            remote_busy_at: now,
            kept_local_at: now,
            remote_has_room: true,
            threshold: config.threshold,
            reason: format!("{} threshold {:.2} (start)", config.mode.name(), config.threshold),
        }
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Why the threshold is where it is.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Takes in the signals sampled for a frame; every `control.interval_ms` it moves the
    /// threshold and returns the tick that explains it.
    pub fn observe(&mut self, signals: &Signals) -> Option<ControlTick> {
        let w = &mut self.window;
        w.samples += 1;
        w.local_backlog += signals.depth(&LOCAL_QUEUES) as f64;
        w.remote_queue += signals.depth(&[REMOTE_QUEUE]) as f64;
        let due = !self.ticked || signals.at.saturating_duration_since(self.last_tick) >= self.config.interval_ms.get();
        self.ticked = true;
        due.then(|| self.tick(signals))
    }

    /// Where a frame with `score` goes, given the signals sampled for it.
    pub fn route(&mut self, score: f32, signals: &Signals) -> Routed {
        let permit = match &signals.remote {
            Some(remote) => self.breaker.permit(signals.at, remote),
            None => Permit::Denied("no remote path".to_string()),
        };
        let routed = match permit {
            Permit::Denied(why) => Routed { route: Route::Local, note: Some(why) },
            Permit::Probe => Routed { route: Route::Remote, note: Some("breaker half-open: probe".to_string()) },
            Permit::Allowed => {
                let routed = self.route_allowed(score, signals);
                self.window.spilled += u32::from(routed.route == Route::Remote && score > self.threshold);
                routed
            }
        };
        self.window.frames += 1;
        self.window.remote += u32::from(routed.route == Route::Remote);
        routed
    }

    fn route_allowed(&self, score: f32, signals: &Signals) -> Routed {
        let full = |name: &str| signals.queue(name).is_some_and(|q| q.depth >= q.capacity);
        if score > self.threshold {
            // Behind a frame already later than the target latency, one more would come out later
            // still: on a starved device a single frame ahead can cost more than the remote's
            // deadline, long before the queue passes its target.
            let target_ms = self.config.target_latency_ms.units() as f64;
            let late = target_ms > 0.0 && signals.local_oldest_ms.is_some_and(|ms| ms > target_ms);
            let spill = self.config.mode == ControlMode::Adaptive
                && self.config.spill
                && (signals.depth(&LOCAL_QUEUES) as f32 > self.config.target_local_queue || late)
                && !full(REMOTE_QUEUE)
                && self.remote_has_room
                && self.remote_fraction < self.config.remote_budget;
            return if spill {
                let why = if late { "a local frame ahead is later than its target" } else { "local queue above its target" };
                Routed { route: Route::Remote, note: Some(format!("{why}: spilled to remote")) }
            } else {
                Routed { route: Route::Local, note: None }
            };
        }
        if full(REMOTE_QUEUE) {
            return Routed { route: Route::Local, note: Some("remote queue full".to_string()) };
        }
        Routed { route: Route::Remote, note: None }
    }

    fn tick(&mut self, signals: &Signals) -> ControlTick {
        let now = signals.at;
        let dt = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        let window = std::mem::take(&mut self.window);
        let mean = |sum: f64| (sum / f64::from(window.samples.max(1))) as f32;
        let (local_queue, remote_queue) = (mean(window.local_backlog), mean(window.remote_queue));
        let follow = 1.0 - (-dt.as_secs_f32() / SHARE_TIME_CONSTANT.as_secs_f32()).exp();
        if window.frames > 0 {
            let share = window.remote as f32 / window.frames as f32;
            self.remote_fraction += follow * (share - self.remote_fraction);
        }
        let remote = signals.remote.as_ref().map(|health| self.remote_signals(now, health, remote_queue, follow));
        self.remote_has_room = remote.as_ref().is_some_and(|r| self.remote_votes(r).iter().all(|v| v.error > 0.0));
        // The latency of local frames says nothing once none has been kept local for a while (it
        // would hold a threshold at its maximum with the last slow frame's age).
        if window.frames > window.remote {
            self.kept_local_at = now;
        }
        let fresh = now.saturating_duration_since(self.kept_local_at) < SHARE_TIME_CONSTANT;
        // A frame still on its way counts as soon as it is later than the finished ones.
        let local_latency_ms = match (signals.local_latency_ms.filter(|_| fresh), signals.local_oldest_ms) {
            (Some(finished), Some(oldest)) => Some(finished.max(oldest)),
            (finished, oldest) => finished.or(oldest),
        };
        let tick_signals =
            TickSignals { local_queue, spilled: window.spilled, local_latency_ms, cpu: signals.cpu, battery: signals.battery, remote };

        let (vote, step) = match self.config.mode {
            ControlMode::Fixed => {
                let vote = Vote { driver: "fixed", error: 0.0, text: format!("fixed threshold {:.2}", self.config.threshold) };
                (vote, None)
            }
            _ if self.breaker.state() != BreakerState::Closed => {
                self.pi.hold(now);
                let vote = Vote { driver: "breaker", error: 0.0, text: "remote path shut by the breaker: holding".to_string() };
                (vote, None)
            }
            mode => {
                let vote = self.vote(mode, &tick_signals);
                let step = self.pi.update(now, vote.error);
                (vote, Some(step))
            }
        };
        let loop_output = step.map_or(self.threshold_before_floor(), |s| s.output);
        let battery_floor = signals.battery.and_then(|b| battery_floor(&self.config.battery, b));
        self.threshold = battery_floor.map_or(loop_output, |floor| loop_output.max(floor));
        self.reason = match (battery_floor, signals.battery) {
            (Some(floor), Some(b)) if floor > loop_output => {
                format!("battery {} % and discharging: threshold at least {floor:.2}", b.level)
            }
            _ => explain(&vote, step.and_then(|s| s.limit)),
        };
        ControlTick {
            at: now,
            mode: self.config.mode,
            threshold: self.threshold,
            loop_output,
            battery_floor,
            error: vote.error,
            p: step.map_or(0.0, |s| s.p),
            i: step.map_or(loop_output, |s| s.i),
            limit: step.and_then(|s| s.limit),
            driver: vote.driver,
            reason: self.reason.clone(),
            breaker: self.breaker.state(),
            breaker_opened: self.breaker.times_opened(),
            remote_fraction: self.remote_fraction,
            target_local_queue: (self.config.mode == ControlMode::Adaptive).then_some(self.config.target_local_queue),
            frames: window.frames,
            signals: tick_signals,
        }
    }

    fn threshold_before_floor(&self) -> f32 {
        match self.config.mode {
            ControlMode::Fixed => self.config.threshold,
            _ => self.pi.output(),
        }
    }

    fn remote_signals(&mut self, at: Instant, now: &RemoteHealthSnapshot, queue: f32, follow: f32) -> RemoteSignals {
        if let Some(before) = &self.previous_remote {
            let sent = now.sent.saturating_sub(before.sent);
            let fallbacks = now.fallbacks.saturating_sub(before.fallbacks);
            if sent > 0 || fallbacks > 0 {
                let rate = fallbacks as f32 / sent.max(fallbacks) as f32;
                self.fallback_rate += follow * (rate - self.fallback_rate);
            } else if now.in_flight == 0 {
                // No news from a remote that gets no frames: forget at the pace of learning.
                self.fallback_rate -= follow * self.fallback_rate;
            }
            if sent > 0 || now.in_flight > 0 {
                self.remote_busy_at = at;
            }
        }
        self.previous_remote = Some(now.clone());
        let stale = at.saturating_duration_since(self.remote_busy_at) >= STALE_REMOTE;
        RemoteSignals {
            queue,
            rtt_ms: if stale { 0.0 } else { now.rtt_ms },
            in_flight: now.in_flight,
            worker_queue_ms: now.worker_queue_ms,
            fallback_rate: self.fallback_rate,
            fallbacks: now.fallbacks,
            overloaded: now.overloaded,
            failures: now.failures,
            connected_workers: now.connected_workers,
        }
    }

    /// What the remote path says about taking more frames: each vote positive while it can.
    fn remote_votes(&self, r: &RemoteSignals) -> Vec<Vote> {
        let c = &self.config;
        let mut votes = Vec::new();
        if r.rtt_ms > 0.0 {
            let slow_ms = c.rtt_high as f64 * self.deadline_ms;
            votes.push(Vote {
                driver: "remote rtt",
                // Healthy (+1) up to three quarters of "slow", -1 at a quarter above it.
                error: unit((slow_ms - r.rtt_ms) / (0.25 * slow_ms)),
                text: format!("remote round trip {:.0} ms against {slow_ms:.0} ms", r.rtt_ms),
            });
        }
        votes.push(Vote {
            driver: "remote fallbacks",
            error: unit(f64::from((c.max_fallback_rate - r.fallback_rate) / c.max_fallback_rate)),
            text: format!(
                "{:.0} % of remote frames fell back ({} overloaded so far), against {:.0} %",
                r.fallback_rate * 100.0,
                r.overloaded,
                c.max_fallback_rate * 100.0
            ),
        });
        votes.push(Vote {
            driver: "remote queue",
            error: unit(f64::from((c.target_local_queue - r.queue) / c.target_local_queue)),
            text: format!("{:.1} frames waiting for the remote path, target {:.1}", r.queue, c.target_local_queue),
        });
        votes
    }

    /// The error of a tick in budget or adaptive mode: the edge's worst vote, limited by the
    /// budget and by the remote's health.
    fn vote(&self, mode: ControlMode, s: &TickSignals) -> Vote {
        let c = &self.config;
        let mut limits = Vec::new();
        // A budget of 1 is no budget: it would only slow the rise near the top.
        if c.remote_budget < 1.0 || mode == ControlMode::Budget {
            limits.push(Vote {
                driver: "budget",
                error: c.remote_budget - self.remote_fraction,
                text: format!("remote share {:.2} against budget {:.2}", self.remote_fraction, c.remote_budget),
            });
        }
        limits.extend(s.remote.as_ref().map(|r| self.remote_votes(r)).unwrap_or_default());
        if mode == ControlMode::Budget {
            return lowest(limits);
        }
        let mut edge = vec![Vote {
            driver: "local queue",
            error: edge_error(f64::from((s.local_queue - c.target_local_queue) / c.target_local_queue)),
            text: format!("local queue {:.1} against target {:.1}", s.local_queue, c.target_local_queue),
        }];
        // Spilling holds the backlog near its target, so the queue alone would understate how far
        // behind the edge is: while frames spill, the edge votes as if far behind, so that the
        // threshold takes over from the spill.
        if s.spilled > 0 {
            edge.push(Vote { driver: "spill", error: 1.0, text: format!("{} frames spilled to remote", s.spilled) });
        }
        let target_ms = c.target_latency_ms.units() as f64;
        if let (true, Some(latency)) = (target_ms > 0.0, s.local_latency_ms) {
            edge.push(Vote {
                driver: "local latency",
                error: edge_error((latency - target_ms) / target_ms),
                text: format!("local frames ready after {latency:.0} ms against target {target_ms:.0} ms"),
            });
        }
        let mut edge = edge.into_iter().max_by(|a, b| a.error.total_cmp(&b.error)).expect("the local queue always votes");
        // A saturated CPU adds to the edge's vote rather than voting alone: sending frames away
        // does not idle a CPU that other work saturates, so alone it would pin the threshold at
        // its maximum while the small network keeps up. Added at the pace of spare capacity, it
        // holds the local queue lower (at target x (1 - cpu_weight) when fully saturated) and
        // still lets an idle edge lower the threshold.
        let saturation = s.cpu.map_or(0.0, |cpu| unit(f64::from((cpu - c.cpu_high) / (1.0 - c.cpu_high))).max(0.0));
        if c.cpu_weight * saturation > 0.0 {
            let push = SPARE_PACE * c.cpu_weight * saturation;
            let cpu = format!("CPU {:.0} % against {:.0} %", s.cpu.unwrap_or(1.0) * 100.0, c.cpu_high * 100.0);
            let (driver, text) = if push > edge.error.abs() {
                ("cpu", format!("{cpu}, {}", edge.text))
            } else {
                (edge.driver, format!("{}, {cpu}", edge.text))
            };
            edge = Vote { driver, error: unit(f64::from(edge.error + push)), text };
        }
        limits.insert(0, edge);
        lowest(limits)
    }
}

/// The most restrictive vote; with equal errors the first (the edge's, when all are healthy).
fn lowest(votes: Vec<Vote>) -> Vote {
    votes.into_iter().reduce(|low, v| if v.error < low.error { v } else { low }).expect("at least one vote")
}

/// An edge ahead of its target lowers the threshold at [`SPARE_PACE`] of the pace at which a
/// backlog raises it.
fn edge_error(relative: f64) -> f32 {
    let error = unit(relative);
    if error < 0.0 {
        error * SPARE_PACE
    } else {
        error
    }
}

fn unit(x: f64) -> f32 {
    x.clamp(-1.0, 1.0) as f32
}

fn explain(vote: &Vote, limit: Option<Limit>) -> String {
    let direction = match limit {
        Some(Limit::Max) => "at threshold_max",
        Some(Limit::Min) => "at threshold_min",
        _ if vote.error > HOLD_BAND => "raising",
        _ if vote.error < -HOLD_BAND => "lowering",
        _ => "holding",
    };
    if vote.driver == "fixed" || vote.driver == "breaker" {
        return vote.text.clone();
    }
    format!("{}: {direction}", vote.text)
}

/// The battery policy: the highest `min_threshold` among the steps at or above the battery's
/// level, while it discharges; `None` on mains or above every step.
pub fn battery_floor(table: &[BatteryStep], battery: Battery) -> Option<f32> {
    if battery.on_mains {
        return None;
    }
    table.iter().filter(|step| battery.level <= step.level).map(|step| step.min_threshold).max_by(f32::total_cmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::QueueSample;

    const TICK: Duration = Duration::from_millis(200);

    fn config(mode: ControlMode) -> ControlConfig {
        ControlConfig { mode, threshold: 0.3, threshold_min: 0.05, threshold_max: 0.95, cpu_weight: 0.0, ..ControlConfig::default() }
    }

    /// A pipeline with `local` frames waiting for the small network (of 4 per queue) and a
    /// healthy remote path that answered everything so far.
    struct Scene {
        at: Instant,
        local: usize,
        remote_queue: usize,
        remote: RemoteHealthSnapshot,
        battery: Option<Battery>,
        cpu: Option<f32>,
        latency_ms: Option<f64>,
        oldest_ms: Option<f64>,
    }

    impl Scene {
        fn new() -> Self {
            let remote = RemoteHealthSnapshot { connected_workers: 1, rtt_ms: 40.0, ..RemoteHealthSnapshot::default() };
            Scene { at: Instant::now(), local: 0, remote_queue: 0, remote, battery: None, cpu: None, latency_ms: None, oldest_ms: None }
        }

        fn signals(&self) -> Signals {
            let q = |name, depth| QueueSample { name, depth, capacity: 4 };
            Signals {
                at: self.at,
                queues: vec![
                    q("local", self.local.saturating_sub(4).min(4)),
                    q("prepared", self.local.min(4)),
                    q("remote", self.remote_queue),
                ],
                local_latency_ms: self.latency_ms,
                local_oldest_ms: self.oldest_ms,
                cpu: self.cpu,
                battery: self.battery,
                remote: Some(self.remote.clone()),
            }
        }

        /// Decides `frames` frames over one tick (uniform scores), counting every remote frame
        /// as sent and answered, `fallback_share` of them falling back instead; returns the tick.
        fn run_tick(&mut self, c: &mut Controller, frames: u32, fallback_share: f32) -> Option<ControlTick> {
            let mut tick = None;
            for n in 0..frames {
                self.at += TICK / frames;
                let signals = self.signals();
                tick = tick.or(c.observe(&signals));
                let score = super::super::UniformScore::of(u64::from(n) + self.remote.sent * 7919);
                if c.route(score, &signals).route == Route::Remote {
                    self.remote.sent += 1;
                    if UniformScoreLike::next(self.remote.sent) < fallback_share {
                        self.remote.fallbacks += 1;
                        self.remote.failures += 1;
                    } else {
                        self.remote.answered += 1;
                    }
                }
            }
            tick
        }
    }

    /// A second, independent stream of uniform values, for which remote frames fall back.
    struct UniformScoreLike;
    impl UniformScoreLike {
        fn next(n: u64) -> f32 {
            super::super::UniformScore::of(n ^ 0xdead_beef)
        }
    }

    fn run(scene: &mut Scene, c: &mut Controller, ticks: usize, fallback_share: f32) -> Vec<ControlTick> {
        (0..ticks).filter_map(|_| scene.run_tick(c, 10, fallback_share)).collect()
    }

    #[test]
    fn fixed_mode_keeps_the_threshold_and_says_so() {
        let mut scene = Scene::new();
        let mut c = Controller::new(&config(ControlMode::Fixed), Duration::from_millis(500), scene.at);
        scene.local = 8;
        let ticks = run(&mut scene, &mut c, 20, 0.0);
        assert!(ticks.iter().all(|t| t.threshold == 0.3 && t.driver == "fixed"), "{:?}", ticks.last());
        assert_eq!(ticks.last().unwrap().reason, "fixed threshold 0.30");
    }

    #[test]
    fn budget_mode_holds_the_remote_share_at_the_budget() {
        let mut scene = Scene::new();
        let config = ControlConfig { remote_budget: 0.6, ..config(ControlMode::Budget) };
        let mut c = Controller::new(&config, Duration::from_millis(500), scene.at);
        let ticks = run(&mut scene, &mut c, 300, 0.0);
        let last = ticks.last().unwrap();
        assert!((last.remote_fraction - 0.6).abs() < 0.08, "{last:?}");
        assert!((last.threshold - 0.6).abs() < 0.1, "the uniform score's threshold is its remote share: {last:?}");
        assert_eq!(last.driver, "budget");
    }

    #[test]
    fn adaptive_mode_raises_the_threshold_while_the_edge_is_behind_and_lowers_it_when_idle() {
        let mut scene = Scene::new();
        let mut c = Controller::new(&config(ControlMode::Adaptive), Duration::from_millis(500), scene.at);
        scene.local = 8;
        let behind = run(&mut scene, &mut c, 25, 0.0);
        assert!(behind.windows(2).all(|w| w[1].threshold >= w[0].threshold), "rises while behind");
        let top = behind.last().unwrap();
        assert!(top.threshold > 0.9, "{top:?}");
        assert_eq!(top.driver, "local queue");
        assert!(top.reason.starts_with("local queue 8.0 against target 2.0"), "{}", top.reason);
        // Idle, it comes down at a quarter of the pace it went up.
        scene.local = 0;
        let idle = run(&mut scene, &mut c, 25, 0.0);
        assert!(idle.last().unwrap().threshold > 0.2, "{:?}", idle.last());
        let idle = run(&mut scene, &mut c, 25, 0.0);
        let bottom = idle.last().unwrap();
        assert!(bottom.threshold < 0.1, "{bottom:?}");
        assert!(bottom.reason.contains("at threshold_min"), "{}", bottom.reason);
    }

    #[test]
    fn adaptive_mode_settles_where_the_local_queue_is_at_its_target() {
        // The small network keeps up with 40 % of the frames: the queue grows when more stay
        // local and drains when fewer do.
        let mut scene = Scene::new();
        let mut c = Controller::new(&config(ControlMode::Adaptive), Duration::from_millis(500), scene.at);
        let mut backlog = 0.0f32;
        let mut thresholds = Vec::new();
        for _ in 0..600 {
            let local_share = 1.0 - c.threshold();
            backlog = (backlog + (local_share - 0.4) * 10.0).clamp(0.0, 8.0);
            scene.local = backlog.round() as usize;
            if let Some(tick) = scene.run_tick(&mut c, 10, 0.0) {
                thresholds.push(tick.threshold);
            }
        }
        let late = &thresholds[thresholds.len() - 100..];
        let mean = late.iter().sum::<f32>() / late.len() as f32;
        assert!((mean - 0.6).abs() < 0.1, "settles near 60 % remote: {mean}");
    }

    #[test]
    fn a_failing_or_slow_remote_lowers_the_threshold_even_when_the_edge_is_behind() {
        let mut scene = Scene::new();
        let config = ControlConfig { threshold: 0.8, ..config(ControlMode::Adaptive) };
        let mut c = Controller::new(&config, Duration::from_millis(500), scene.at);
        scene.local = 8;
        let ticks = run(&mut scene, &mut c, 40, 0.5);
        let last = ticks.last().unwrap();
        assert_eq!(last.driver, "remote fallbacks", "{last:?}");
        assert!(last.threshold < 0.2, "{last:?}");
        assert!(last.reason.contains("fell back"), "{}", last.reason);
        assert_eq!(c.route(0.99, &scene.signals()).route, Route::Local, "no spilling onto a failing remote, whatever the local queue");

        let mut scene = Scene::new();
        let mut c = Controller::new(&config, Duration::from_millis(500), scene.at);
        scene.local = 8;
        scene.remote.rtt_ms = 480.0;
        let last = run(&mut scene, &mut c, 40, 0.0).pop().unwrap();
        assert_eq!(last.driver, "remote rtt", "{last:?}");
        assert!(last.threshold < 0.2, "{last:?}");
    }

    #[test]
    fn a_remote_that_no_longer_gets_frames_is_forgotten_and_tried_again() {
        for (fallback_share, rtt_ms, driver) in [(1.0, 40.0, "remote fallbacks"), (0.0, 480.0, "remote rtt")] {
            let mut scene = Scene::new();
            let config = ControlConfig { threshold: 0.8, threshold_min: 0.0, ..config(ControlMode::Adaptive) };
            let mut c = Controller::new(&config, Duration::from_millis(500), scene.at);
            scene.local = 8;
            scene.remote.rtt_ms = rtt_ms;
            let ticks = run(&mut scene, &mut c, 60, fallback_share);
            let bottom = ticks.iter().position(|t| t.threshold == 0.0).unwrap_or_else(|| panic!("{driver}: {:?}", ticks.last()));
            assert_eq!(ticks[bottom].driver, driver);
            // Nothing goes remote at 0; the remote's old news fades and the edge, still behind, raises it again.
            let retry = ticks[bottom..].iter().find(|t| t.threshold > 0.0).unwrap_or_else(|| panic!("{driver}: stuck at 0"));
            assert!(retry.error > 0.0, "{driver}: {retry:?}");
        }
    }

    #[test]
    fn slow_local_frames_raise_the_threshold_while_some_stay_local() {
        let mut scene = Scene::new();
        let config = ControlConfig { threshold_max: 1.0, ..config(ControlMode::Adaptive) };
        let mut c = Controller::new(&config, Duration::from_millis(500), scene.at);
        // A short queue of slow frames: the latency (600 ms against 150) speaks for the edge.
        scene.local = 1;
        scene.latency_ms = Some(600.0);
        let ticks = run(&mut scene, &mut c, 30, 0.0);
        let rising = &ticks[3];
        assert_eq!((rising.driver, rising.error), ("local latency", 1.0), "{rising:?}");
        assert!(rising.reason.starts_with("local frames ready after 600 ms against target 150 ms: raising"), "{}", rising.reason);
        // At 1 every frame goes remote: the last local frame's age no longer counts, the short
        // queue brings the threshold down and frames are kept local (and measured) again.
        assert!(ticks.iter().any(|t| t.threshold == 1.0), "{:?}", ticks.last());
        let top = ticks.iter().position(|t| t.threshold == 1.0).unwrap();
        let after = &ticks[top + 1..];
        assert!(after.iter().any(|t| t.signals.local_latency_ms.is_none() && t.driver == "local queue"), "{after:?}");
        assert!(after.last().unwrap().threshold < 1.0, "{:?}", after.last());
    }

    #[test]
    fn a_saturated_cpu_raises_the_threshold_when_it_has_weight() {
        let mut scene = Scene::new();
        scene.cpu = Some(1.0);
        let config = ControlConfig { cpu_weight: 0.5, target_local_queue: 2.0, ..config(ControlMode::Adaptive) };
        let mut c = Controller::new(&config, Duration::from_millis(500), scene.at);
        // The local queue at its target votes 0; the saturated CPU adds 0.5 at the pace of spare
        // capacity (0.25) and speaks for the edge.
        scene.local = 2;
        let rising = run(&mut scene, &mut c, 5, 0.0);
        assert!(rising.windows(2).all(|w| w[1].threshold > w[0].threshold), "{rising:?}");
        let last = rising.last().unwrap();
        assert_eq!((last.driver, last.error), ("cpu", 0.125));
        assert_eq!(last.reason, "CPU 100 % against 90 %, local queue 2.0 against target 2.0: raising");
        // Held for long, it takes the threshold to its maximum, and keeps it there.
        let last = run(&mut scene, &mut c, 60, 0.0).pop().unwrap();
        assert_eq!((last.driver, last.threshold), ("cpu", 0.95), "{last:?}");
        assert!(last.reason.ends_with(": at threshold_max"), "{}", last.reason);
        // With the local queue empty, the saturated CPU only slows the fall: it holds the queue
        // at target x (1 - cpu_weight), not at nothing.
        scene.local = 0;
        let idle = run(&mut scene, &mut c, 5, 0.0);
        // (The first tick still averages the queue of the tick before.)
        assert!(idle[1..].iter().all(|t| t.driver == "local queue" && t.error == -0.125), "{idle:?}");
        assert!(idle.last().unwrap().threshold < 0.95);
        assert!(idle.last().unwrap().reason.starts_with("local queue 0.0 against target 2.0, CPU 100 % against 90 %: lowering"));

        // Without weight the same CPU moves nothing: the queue at its target holds the threshold.
        let mut scene = Scene::new();
        scene.cpu = Some(1.0);
        scene.local = 2;
        let mut c = Controller::new(&ControlConfig { cpu_weight: 0.0, ..config }, Duration::from_millis(500), scene.at);
        let last = run(&mut scene, &mut c, 20, 0.0).pop().unwrap();
        assert_eq!((last.driver, last.threshold), ("local queue", 0.3), "{last:?}");
        assert!(last.reason.ends_with(": holding"), "{}", last.reason);
    }

    #[test]
    fn battery_table_sets_a_floor_while_discharging_only() {
        let table = [BatteryStep { level: 30, min_threshold: 0.6 }, BatteryStep { level: 15, min_threshold: 0.9 }];
        let at = |level, on_mains| battery_floor(&table, Battery { level, on_mains });
        assert_eq!(at(80, false), None);
        assert_eq!(at(30, false), Some(0.6));
        assert_eq!(at(15, false), Some(0.9));
        assert_eq!(at(3, false), Some(0.9));
        assert_eq!(at(3, true), None, "charging");

        let mut scene = Scene::new();
        let mut c = Controller::new(&config(ControlMode::Fixed), Duration::from_millis(500), scene.at);
        scene.battery = Some(Battery { level: 15, on_mains: false });
        let low = run(&mut scene, &mut c, 3, 0.0).pop().unwrap();
        assert_eq!((low.threshold, low.loop_output, low.battery_floor), (0.9, 0.3, Some(0.9)));
        assert_eq!(low.reason, "battery 15 % and discharging: threshold at least 0.90");
        scene.battery = Some(Battery { level: 15, on_mains: true });
        let charging = run(&mut scene, &mut c, 3, 0.0).pop().unwrap();
        assert_eq!(charging.threshold, 0.3);
    }

    #[test]
    fn an_open_breaker_keeps_every_frame_local_and_the_loop_holds() {
        let mut scene = Scene::new();
        let mut c = Controller::new(&config(ControlMode::Adaptive), Duration::from_millis(500), scene.at);
        scene.local = 8;
        run(&mut scene, &mut c, 5, 0.0);
        let before = c.threshold();
        scene.remote.consecutive_failures = 5;
        scene.remote.connected_workers = 0;
        let signals = scene.signals();
        let routed = c.route(0.0, &signals);
        assert_eq!(routed.route, Route::Local, "a score of 0 would go remote");
        assert!(routed.note.as_deref().is_some_and(|n| n.starts_with("breaker open")), "{routed:?}");
        let ticks = run(&mut scene, &mut c, 5, 0.0);
        assert!(ticks.iter().all(|t| t.breaker == BreakerState::Open && t.threshold == before), "{:?}", ticks.last());
        assert_eq!(ticks.last().unwrap().frames, 10);
    }

    #[test]
    fn spill_sends_a_frame_remote_instead_of_waiting_behind_more_than_the_target() {
        let mut scene = Scene::new();
        let mut c = Controller::new(&config(ControlMode::Adaptive), Duration::from_millis(500), scene.at);
        scene.local = 2;
        assert_eq!(c.route(0.99, &scene.signals()), Routed { route: Route::Local, note: None }, "at the target (2) it still waits");
        scene.local = 3;
        let signals = scene.signals();
        assert_eq!(c.route(0.99, &signals).note.as_deref(), Some("local queue above its target: spilled to remote"));
        // The next tick hands over to the threshold: spilling votes as a backlog far above target.
        let tick = scene.run_tick(&mut c, 1, 0.0).expect("a tick");
        assert_eq!((tick.driver, tick.error, tick.signals.spilled), ("spill", 1.0, 1), "{tick:?}");
        assert_eq!(tick.reason, "1 frames spilled to remote: raising");
        let mut fixed = Controller::new(&config(ControlMode::Fixed), Duration::from_millis(500), scene.at);
        assert_eq!(fixed.route(0.99, &signals), Routed { route: Route::Local, note: None }, "only the adaptive mode spills");
        // Under the queue's target, but behind frames that come out later than the target latency.
        (scene.local, scene.oldest_ms) = (0, Some(400.0));
        let note = "a local frame ahead is later than its target: spilled to remote";
        assert_eq!(c.route(0.99, &scene.signals()).note.as_deref(), Some(note));
        scene.oldest_ms = Some(100.0);
        assert_eq!(c.route(0.99, &scene.signals()), Routed { route: Route::Local, note: None }, "on time: it waits");
        (scene.oldest_ms, scene.latency_ms) = (None, Some(400.0));
        assert_eq!(c.route(0.99, &scene.signals()), Routed { route: Route::Local, note: None }, "nothing ahead of it: no wait to avoid");
        scene.local = 0;
        scene.remote_queue = 4;
        assert_eq!(c.route(0.01, &scene.signals()).note.as_deref(), Some("remote queue full"));
    }
}
