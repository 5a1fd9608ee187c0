//! When the edge gives up on a worker connection and when it tries again: plain state machines
//! fed with what happened and the current time, so they are tested on made-up time without a
//! socket; the client's tasks only carry out what they say.

use std::time::{Duration, Instant};

/// Unanswered frames in a row, each met by total silence, after which the peer is presumed dead.
pub const SILENT_FRAMES_BEFORE_RECONNECT: u32 = 3;

/// Tells a dead worker from a slow one. A worker that died without closing (crash, cable cut)
/// looks alive until QUIC's idle timeout, whereas one that is merely slow still acknowledges
/// our packets within milliseconds; so only frames met by total silence count, and a slow
/// worker keeps its connection.
#[derive(Debug, Default)]
pub struct Silence {
    silent_in_a_row: u32,
}

impl Silence {
    /// The worker replied (with a mask or an error): it is alive.
    pub fn answered(&mut self) {
        self.silent_in_a_row = 0;
    }

    /// A frame got no reply; `peer_silent` when not a single datagram arrived while it was out.
    /// True when the connection should be closed so the reconnect loop starts (the count then
    /// starts over).
    pub fn unanswered(&mut self, peer_silent: bool) -> bool {
        if !peer_silent {
            self.silent_in_a_row = 0;
            return false;
        }
        self.silent_in_a_row += 1;
        if self.silent_in_a_row >= SILENT_FRAMES_BEFORE_RECONNECT {
            self.silent_in_a_row = 0;
            return true;
        }
        false
    }
}

/// When to try connecting again: exponential backoff from `min` to `max`, back to `min` once a
/// connection is made.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    delay: Duration,
    failures_since_connected: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max, delay: min, failures_since_connected: 0 }
    }

    pub fn connected(&mut self) {
        self.delay = self.min;
        self.failures_since_connected = 0;
    }

    /// A connection attempt failed; true for the first failure since the last connection, the
    /// one worth a warning (state changes are logged once, not per attempt).
    pub fn failed(&mut self) -> bool {
        self.failures_since_connected += 1;
        self.failures_since_connected == 1
    }

    /// When to try next, after a failure or a lost connection at `now`.
    pub fn next_attempt(&mut self, now: Instant) -> Instant {
        let at = now + self.delay;
        self.delay = (self.delay * 2).min(self.max);
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_silence_in_a_row_condemns_a_connection() {
        let mut s = Silence::default();
        assert!(!s.unanswered(true));
        assert!(!s.unanswered(true));
        // A late frame from a peer that still sends packets: slow, not dead.
        assert!(!s.unanswered(false));
        assert!(!s.unanswered(true));
        s.answered();
        let verdicts: Vec<bool> = (0..6).map(|_| s.unanswered(true)).collect();
        assert_eq!(verdicts, [false, false, true, false, false, true], "every third silent frame in a row, then from zero");
    }

    #[test]
    fn backoff_doubles_up_to_its_bound_and_starts_over_when_connected() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut b = Backoff::new(ms(100), ms(500));
        let waits: Vec<Duration> = (0..5).map(|i| b.next_attempt(t0 + ms(i * 1000)) - (t0 + ms(i * 1000))).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        assert!(b.failed() && !b.failed() && !b.failed(), "one warning per outage");
        b.connected();
        assert_eq!(b.next_attempt(t0), t0 + ms(100));
        assert!(b.failed(), "a new outage warns again");
    }
}
