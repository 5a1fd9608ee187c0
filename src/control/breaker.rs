//! Circuit breaker on the remote path, as a state machine on made-up time.
//!
//! Closed: frames go where the threshold sends them. After `failures` consecutive remote
//! failures, or when the workers it was connected to are all gone (the client's health check),
//! it opens: every frame stays local for `cooldown`, so a dead worker costs no fallbacks and no
//! waiting on deadlines. Then half-open: one frame at a time goes remote as a probe, and only
//! while a worker is connected; an answer closes the breaker, a failure opens it again.
//!
//! The breaker reads the remote client's counters ([`RemoteHealthSnapshot`]): it needs no hook
//! in the remote stage, and a frame's outcome is seen at the next frame decided after it.

use std::time::{Duration, Instant};

use crate::metrics::RemoteHealthSnapshot;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failures: u64,
    pub cooldown: Duration,
}

/// The breaker's state, as written to `metrics.jsonl` and `/metrics` (by [`BreakerState::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub const ALL: [BreakerState; 3] = [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen];

    /// The name `metrics.jsonl` and `/metrics` use.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

impl serde::Serialize for BreakerState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// What the breaker says about one frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Permit {
    /// The remote path may be used as the threshold says.
    Allowed,
    /// Half-open: this frame goes remote to test the path.
    Probe,
    /// The remote path is shut; the text says why.
    Denied(String),
}

#[derive(Debug, Clone)]
enum State {
    Closed,
    Open { until: Instant, why: String },
    HalfOpen { probe: Option<Probe> },
}

/// A probe in flight: the counters when it left, and when it counts as lost.
#[derive(Debug, Clone, Copy)]
struct Probe {
    answered: u64,
    failures: u64,
    lost_at: Instant,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    state: State,
    /// Whether a worker was ever connected: before that, "none connected" means "still
    /// connecting", not "lost".
    was_connected: bool,
    opened: u64,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Breaker { settings, state: State::Closed, was_connected: false, opened: 0 }
    }

    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How many times the breaker opened.
    pub fn times_opened(&self) -> u64 {
        self.opened
    }

    /// Whether frame after frame may use the remote path, given the client's counters now.
    pub fn permit(&mut self, now: Instant, remote: &RemoteHealthSnapshot) -> Permit {
        let connected = remote.connected_workers > 0;
        let lost_all = self.was_connected && !connected;
        self.was_connected |= connected;
        match &self.state {
            State::Closed => {
                if remote.consecutive_failures >= self.settings.failures {
                    let why = format!("{} consecutive remote failures", remote.consecutive_failures);
                    return self.open(now, why);
                }
                if lost_all {
                    return self.open(now, "no remote worker connected".to_string());
                }
                Permit::Allowed
            }
            State::Open { until, why } => {
                if now < *until {
                    return Permit::Denied(format!("breaker open: {why}"));
                }
                self.state = State::HalfOpen { probe: None };
                self.permit(now, remote)
            }
            State::HalfOpen { probe: None } => {
                if !connected && self.was_connected {
                    return self.open(now, "no remote worker connected".to_string());
                }
                let lost_at = now + self.settings.cooldown;
                self.state = State::HalfOpen { probe: Some(Probe { answered: remote.answered, failures: remote.failures, lost_at }) };
                Permit::Probe
            }
            State::HalfOpen { probe: Some(probe) } => {
                if remote.answered > probe.answered {
                    self.state = State::Closed;
                    return Permit::Allowed;
                }
                if remote.failures > probe.failures {
                    return self.open(now, "the probe failed".to_string());
                }
                if now >= probe.lost_at {
                    return self.open(now, "the probe got no answer".to_string());
                }
                Permit::Denied("breaker half-open: waiting for the probe".to_string())
            }
        }
    }

    fn open(&mut self, now: Instant, why: String) -> Permit {
        let denied = Permit::Denied(format!("breaker open: {why}"));
        tracing::warn!(reason = %why, cooldown_ms = self.settings.cooldown.as_millis() as u64, "remote circuit breaker open: frames stay local");
        self.state = State::Open { until: now + self.settings.cooldown, why };
        self.opened += 1;
        denied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(2);

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings { failures: 3, cooldown: COOLDOWN })
    }

    fn health(connected: usize, answered: u64, failures: u64, consecutive: u64) -> RemoteHealthSnapshot {
        RemoteHealthSnapshot {
            connected_workers: connected,
            answered,
            failures,
            consecutive_failures: consecutive,
            ..RemoteHealthSnapshot::default()
        }
    }

    #[test]
    fn consecutive_failures_open_it_cooldown_then_a_probe_closes_it() {
        let mut b = breaker();
        let t0 = Instant::now();
        assert_eq!(b.permit(t0, &health(1, 10, 0, 0)), Permit::Allowed);
        assert_eq!(b.permit(t0, &health(1, 10, 2, 2)), Permit::Allowed, "two failures are not enough");
        let opened = b.permit(t0, &health(1, 10, 3, 3));
        assert!(matches!(&opened, Permit::Denied(why) if why.contains("3 consecutive remote failures")), "{opened:?}");
        assert_eq!(b.state(), BreakerState::Open);
        // Every frame during the cooldown stays local.
        for ms in [1, 500, 1999] {
            assert!(matches!(b.permit(t0 + Duration::from_millis(ms), &health(1, 10, 3, 3)), Permit::Denied(_)));
        }
        // Half-open: one probe, then the others wait for its outcome.
        let t1 = t0 + COOLDOWN;
        assert_eq!(b.permit(t1, &health(1, 10, 3, 3)), Permit::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(matches!(b.permit(t1, &health(1, 10, 3, 3)), Permit::Denied(why) if why.contains("probe")));
        // The probe is answered: closed again.
        assert_eq!(b.permit(t1 + Duration::from_millis(50), &health(1, 11, 3, 0)), Permit::Allowed);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.times_opened(), 1);
    }

    #[test]
    fn a_failed_probe_opens_it_for_another_cooldown() {
        let mut b = breaker();
        let t0 = Instant::now();
        b.permit(t0, &health(1, 0, 3, 3));
        let t1 = t0 + COOLDOWN;
        assert_eq!(b.permit(t1, &health(1, 0, 3, 3)), Permit::Probe);
        assert!(matches!(b.permit(t1, &health(1, 0, 4, 4)), Permit::Denied(why) if why.contains("probe failed")));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.permit(t1 + COOLDOWN / 2, &health(1, 0, 4, 4)), Permit::Denied(_)));
        assert_eq!(b.permit(t1 + COOLDOWN, &health(1, 0, 4, 4)), Permit::Probe);
        assert_eq!(b.times_opened(), 2);
    }

    #[test]
    fn a_probe_without_an_outcome_counts_as_lost_after_a_cooldown() {
        let mut b = breaker();
        let t0 = Instant::now();
        b.permit(t0, &health(1, 0, 3, 3));
        let t1 = t0 + COOLDOWN;
        assert_eq!(b.permit(t1, &health(1, 0, 3, 3)), Permit::Probe);
        assert!(matches!(b.permit(t1 + COOLDOWN, &health(1, 0, 3, 3)), Permit::Denied(why) if why.contains("no answer")));
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn losing_every_worker_opens_it_and_no_probe_leaves_until_one_is_back() {
        let mut b = breaker();
        let t0 = Instant::now();
        // Still connecting at start-up: that is not a failing health check.
        assert_eq!(b.permit(t0, &health(0, 0, 0, 0)), Permit::Allowed);
        assert_eq!(b.permit(t0, &health(1, 5, 0, 0)), Permit::Allowed);
        assert!(matches!(b.permit(t0, &health(0, 5, 0, 0)), Permit::Denied(why) if why.contains("no remote worker connected")));
        // After the cooldown the worker is still gone: open again, no frame wasted on a probe.
        let t1 = t0 + COOLDOWN;
        assert!(matches!(b.permit(t1, &health(0, 5, 0, 0)), Permit::Denied(_)));
        assert_eq!(b.state(), BreakerState::Open);
        // Reconnected: the next half-open sends a probe, whose answer closes the breaker.
        let t2 = t1 + COOLDOWN;
        assert_eq!(b.permit(t2, &health(1, 5, 0, 0)), Permit::Probe);
        assert_eq!(b.permit(t2, &health(1, 6, 0, 0)), Permit::Allowed);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
