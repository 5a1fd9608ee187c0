//! Whether a running service is doing its job, judged from the progress counters its stages
//! already keep: the one notion of health that the systemd watchdog, `STATUS=`, `/healthz` and
//! the `healthy` metric all read, so they can never disagree.
//!
//! Work is *stalled* when some of it is waiting and none has completed for longer than a limit
//! (a frame stuck in a stage, a sink blocked on a dead disk, a batch that never finishes), or
//! when a source that should deliver has been silent for longer than a limit (a recorded file
//! that stopped mid-stream). A service with nothing to do is *idle*, which is healthy: a live
//! camera with nothing new must not be restarted by a watchdog.
//!
//! The watches remember only when the counters last moved. They are fed whenever someone asks
//! (the notifier's tick, a scrape), on real or made-up time, so no thread exists just to keep
//! them current, and a process too wedged to move its counters is seen as stalled, whatever
//! thread still runs.

use std::fmt;
use std::time::{Duration, Instant};

/// Without new frames for this long, a pipeline with nothing in flight is reported idle
/// rather than flowing (both are healthy; the difference is for people reading the status).
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// What a service is doing, as far as its supervisor is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Not serving yet (the edge: no frame pulled from the source yet).
    Starting,
    /// Work is moving.
    Flowing,
    /// Nothing to do and nothing stuck.
    Idle,
    /// Stuck, for the reason given: the watchdog is no longer fed, `/healthz` answers 503.
    Stalled(String),
    /// Shutting down: finishing the work in flight.
    Stopping,
}

impl Condition {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Condition::Flowing | Condition::Idle)
    }

    /// One lowercase word, for labels and the start of status lines.
    pub fn name(&self) -> &'static str {
        match self {
            Condition::Starting => "starting",
            Condition::Flowing => "flowing",
            Condition::Idle => "idle",
            Condition::Stalled(_) => "stalled",
            Condition::Stopping => "stopping",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Stalled(reason) => write!(f, "stalled: {reason}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Pending work against a counter of completed work: stalled when something has been pending
/// and nothing completed for longer than the limit.
#[derive(Debug, Clone)]
pub struct ProgressWatch {
    limit: Duration,
    completed: u64,
    /// Since when work has waited without any completing; `None` while nothing is pending.
    waiting_since: Option<Instant>,
}

impl ProgressWatch {
    pub fn new(limit: Duration) -> Self {
        ProgressWatch { limit, completed: 0, waiting_since: None }
    }

    /// `pending`: items waiting or being worked on now; `completed`: items done so far.
    /// Returns how long work has waited without progress, once that exceeds the limit.
    pub fn observe(&mut self, pending: u64, completed: u64, now: Instant) -> Option<Duration> {
        if completed != self.completed {
            self.completed = completed;
            self.waiting_since = (pending > 0).then_some(now);
        } else if pending == 0 {
            self.waiting_since = None;
        } else if self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
        let waited = now.saturating_duration_since(self.waiting_since?);
        (waited > self.limit).then_some(waited)
    }
}

/// How long a counter has not moved.
#[derive(Debug, Clone)]
pub struct SilenceWatch {
    count: u64,
    since: Instant,
}

impl SilenceWatch {
    pub fn new(now: Instant) -> Self {
        SilenceWatch { count: 0, since: now }
    }

    pub fn observe(&mut self, count: u64, now: Instant) -> Duration {
        if count != self.count {
            self.count = count;
            self.since = now;
        }
        now.saturating_duration_since(self.since)
    }
}

/// When the edge pipeline counts as stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineLimits {
    /// Longest a frame may be in the pipeline with none coming out, and longest a recorded
    /// source may deliver nothing.
    pub stall: Duration,
    /// Longest a live source may deliver nothing; `None`: a silent live source is idle however
    /// long it stays silent (a camera or stream with nothing new).
    pub live_silence: Option<Duration>,
}

/// The edge pipeline's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineCounts {
    /// Frames pulled from the source.
    pub frames_in: u64,
    /// Frames a live source's ingest dropped because the pipeline was full.
    pub dropped: u64,
    /// Frames the sink released to the outputs.
    pub frames_out: u64,
    pub live: bool,
}

impl PipelineCounts {
    /// Frames between the source and the outputs (queued, in a stage, or held for reordering).
    pub fn in_flight(&self) -> u64 {
        self.frames_in.saturating_sub(self.dropped).saturating_sub(self.frames_out)
    }
}

/// The edge pipeline's health: frames in flight must come out, and the source must deliver
/// (a recorded one always; a live one only if `live_silence` says so).
#[derive(Debug, Clone)]
pub struct PipelineWatch {
    limits: PipelineLimits,
    frames: ProgressWatch,
    source: SilenceWatch,
}

impl PipelineWatch {
    pub fn new(limits: PipelineLimits, now: Instant) -> Self {
        PipelineWatch { limits, frames: ProgressWatch::new(limits.stall), source: SilenceWatch::new(now) }
    }

    /// Reads the counters (take `frames_out` before `frames_in` and `dropped`, so a frame is
    /// never seen out before it was seen in).
    pub fn observe(&mut self, counts: PipelineCounts, now: Instant) -> Condition {
        let in_flight = counts.in_flight();
        let stuck_for = self.frames.observe(in_flight, counts.frames_out, now);
        let silent_for = self.source.observe(counts.frames_in, now);
        if counts.frames_in == 0 {
            return Condition::Starting;
        }
        if let Some(waited) = stuck_for {
            return Condition::Stalled(format!("{in_flight} frame(s) in the pipeline and none came out for {} s", waited.as_secs()));
        }
        // While frames are in flight a silent source is held back by the pipeline (a replayed
        // file waits for room), which the progress watch above already judges.
        if in_flight > 0 {
            return Condition::Flowing;
        }
        let (kind, limit) = if counts.live { ("live", self.limits.live_silence) } else { ("recorded", Some(self.limits.stall)) };
        match limit {
            Some(limit) if silent_for > limit => {
                Condition::Stalled(format!("the {kind} source delivered no frame for {} s", silent_for.as_secs()))
            }
            _ => activity(0, silent_for),
        }
    }
}

/// Healthy either way: idle when nothing is pending and nothing happened for a moment.
fn activity(pending: u64, quiet_for: Duration) -> Condition {
    if pending == 0 && quiet_for >= IDLE_AFTER {
        Condition::Idle
    } else {
        Condition::Flowing
    }
}

/// A queue of work and the thread taking it (the worker's batching): counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogCounts {
    /// Items queued or being worked on.
    pub backlog: u64,
    /// Times work was taken off the queue.
    pub taken: u64,
    /// Items finished, whatever the outcome (answered, refused, expired).
    pub finished: u64,
}

/// Health of a queue and its consumer: stalled when items wait and none is taken for longer
/// than the limit.
#[derive(Debug, Clone)]
pub struct BacklogWatch {
    taking: ProgressWatch,
    quiet: SilenceWatch,
}

impl BacklogWatch {
    pub fn new(stall: Duration, now: Instant) -> Self {
        BacklogWatch { taking: ProgressWatch::new(stall), quiet: SilenceWatch::new(now) }
    }

    pub fn observe(&mut self, counts: BacklogCounts, now: Instant) -> Condition {
        let stuck_for = self.taking.observe(counts.backlog, counts.taken, now);
        let quiet_for = self.quiet.observe(counts.finished, now);
        match stuck_for {
            Some(waited) => Condition::Stalled(format!("{} frame(s) waiting and none taken for {} s", counts.backlog, waited.as_secs())),
            // Nothing ever happened: idle from the start, not "flowing" for the first moment.
            None if counts.finished == 0 && counts.backlog == 0 => Condition::Idle,
            None => activity(counts.backlog, quiet_for),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn work_pending_without_completions_stalls_after_the_limit_only() {
        let t0 = Instant::now();
        let mut watch = ProgressWatch::new(Duration::from_secs(2));
        assert_eq!(watch.observe(0, 0, t0), None);
        assert_eq!(watch.observe(3, 0, at(t0, 1000)), None, "pending since 1 s");
        assert_eq!(watch.observe(3, 0, at(t0, 3000)), None, "exactly the limit is not over it");
        assert_eq!(watch.observe(3, 0, at(t0, 3500)), Some(Duration::from_millis(2500)));
        // One completion resets the clock even though work is still pending.
        assert_eq!(watch.observe(3, 1, at(t0, 3600)), None);
        assert_eq!(watch.observe(3, 1, at(t0, 5000)), None);
        assert!(watch.observe(3, 1, at(t0, 5700)).is_some());
        // Nothing pending: nothing can be stuck, however long nothing completes.
        assert_eq!(watch.observe(0, 1, at(t0, 60_000)), None);
        assert_eq!(watch.observe(1, 1, at(t0, 61_000)), None, "pending again: the clock starts now");
    }

    #[test]
    fn silence_counts_from_the_last_change() {
        let t0 = Instant::now();
        let mut watch = SilenceWatch::new(t0);
        assert_eq!(watch.observe(0, at(t0, 500)), Duration::from_millis(500));
        assert_eq!(watch.observe(4, at(t0, 700)), Duration::ZERO);
        assert_eq!(watch.observe(4, at(t0, 1700)), Duration::from_secs(1));
    }

    fn counts(frames_in: u64, dropped: u64, frames_out: u64, live: bool) -> PipelineCounts {
        PipelineCounts { frames_in, dropped, frames_out, live }
    }

    const LIMITS: PipelineLimits = PipelineLimits { stall: Duration::from_secs(5), live_silence: None };

    #[test]
    fn a_pipeline_starts_flows_and_goes_idle() {
        let t0 = Instant::now();
        let mut watch = PipelineWatch::new(LIMITS, t0);
        assert_eq!(watch.observe(counts(0, 0, 0, true), at(t0, 100)), Condition::Starting);
        assert_eq!(watch.observe(counts(4, 0, 1, true), at(t0, 200)), Condition::Flowing);
        assert_eq!(watch.observe(counts(9, 2, 7, true), at(t0, 400)), Condition::Flowing, "drops are not in flight");
        assert_eq!(watch.observe(counts(9, 2, 7, true), at(t0, 1500)), Condition::Idle);
        // A live source may stay silent for an hour: idle, not stalled.
        assert_eq!(watch.observe(counts(9, 2, 7, true), at(t0, 3_600_000)), Condition::Idle);
        assert!(watch.observe(counts(9, 2, 7, true), at(t0, 3_600_000)).is_healthy());
    }

    #[test]
    fn a_frame_stuck_in_a_stage_stalls_the_pipeline_and_recovers_when_it_comes_out() {
        let t0 = Instant::now();
        let mut watch = PipelineWatch::new(LIMITS, t0);
        assert_eq!(watch.observe(counts(10, 0, 8, true), at(t0, 0)), Condition::Flowing);
        // The source goes on delivering, nothing comes out: the sink is stuck.
        assert_eq!(watch.observe(counts(30, 0, 8, true), at(t0, 4000)), Condition::Flowing);
        let stalled = watch.observe(counts(50, 0, 8, true), at(t0, 6000));
        assert_eq!(stalled, Condition::Stalled("42 frame(s) in the pipeline and none came out for 6 s".into()));
        assert!(!stalled.is_healthy());
        assert_eq!(watch.observe(counts(50, 0, 9, true), at(t0, 6100)), Condition::Flowing);
    }

    #[test]
    fn a_silent_recorded_source_stalls_a_silent_live_one_only_past_its_own_limit() {
        let t0 = Instant::now();
        let mut recorded = PipelineWatch::new(LIMITS, t0);
        assert_eq!(recorded.observe(counts(3, 0, 3, false), at(t0, 0)), Condition::Flowing);
        assert_eq!(recorded.observe(counts(3, 0, 3, false), at(t0, 4000)), Condition::Idle);
        assert_eq!(
            recorded.observe(counts(3, 0, 3, false), at(t0, 5500)),
            Condition::Stalled("the recorded source delivered no frame for 5 s".into())
        );
        let limits = PipelineLimits { live_silence: Some(Duration::from_secs(30)), ..LIMITS };
        let mut live = PipelineWatch::new(limits, t0);
        assert_eq!(live.observe(counts(3, 0, 3, true), at(t0, 0)), Condition::Flowing);
        assert_eq!(live.observe(counts(3, 0, 3, true), at(t0, 20_000)), Condition::Idle);
        assert_eq!(live.observe(counts(3, 0, 3, true), at(t0, 31_000)).name(), "stalled");
    }

    #[test]
    fn a_backlog_nobody_takes_stalls_an_empty_one_is_idle() {
        let t0 = Instant::now();
        let mut watch = BacklogWatch::new(Duration::from_secs(5), t0);
        let counts = |backlog, taken, finished| BacklogCounts { backlog, taken, finished };
        assert_eq!(watch.observe(counts(0, 0, 0), at(t0, 2000)), Condition::Idle);
        assert_eq!(watch.observe(counts(2, 1, 3), at(t0, 3000)), Condition::Flowing);
        assert_eq!(watch.observe(counts(4, 1, 3), at(t0, 7000)), Condition::Flowing);
        assert_eq!(watch.observe(counts(4, 1, 3), at(t0, 8500)), Condition::Stalled("4 frame(s) waiting and none taken for 5 s".into()));
        assert_eq!(watch.observe(counts(0, 2, 7), at(t0, 8600)), Condition::Flowing);
        assert_eq!(watch.observe(counts(0, 2, 7), at(t0, 60_000)), Condition::Idle);
    }

    #[test]
    fn a_recorded_source_held_back_by_a_slow_pipeline_is_not_silent() {
        let t0 = Instant::now();
        let mut watch = PipelineWatch::new(LIMITS, t0);
        // Frames come out every 4 s, so the file delivers one every 4 s: slow, not stuck.
        for step in 0..10u64 {
            let condition = watch.observe(counts(8 + step, 0, step, false), at(t0, step * 4000));
            assert_eq!(condition, Condition::Flowing, "step {step}");
        }
    }
}
