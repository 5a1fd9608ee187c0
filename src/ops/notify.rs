//! The systemd notification protocol (`Type=notify` units), through the `sd-notify` crate.
//!
//! - `READY=1` once [`Vitals::ready`]: the edge pulled its first frame (model loaded, source
//!   working), the worker listens. Until then systemd's start timeout applies.
//! - Every tick, `STATUS=` with the condition, rates, route shares and remote health, and
//!   `WATCHDOG=1` with it only when the condition is healthy. The tick is a clock, but it only
//!   asks: the answer comes from the progress counters, so a stuck pipeline stops the pings and
//!   systemd restarts the service after `WatchdogSec=`. The tick is half of `WATCHDOG_USEC`
//!   (systemd's advice), at most [`STATUS_PERIOD`].
//! - `STOPPING=1` as soon as a stop is requested or the work ends.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) nothing runs.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::select;
use sd_notify::NotifyState;

use super::{Condition, Vitals};
use crate::shutdown::Shutdown;

/// Longest between two `STATUS=` updates.
const STATUS_PERIOD: Duration = Duration::from_secs(2);
/// How often readiness is looked at before `READY=1`.
const READY_POLL: Duration = Duration::from_millis(50);

/// The notifier thread.
pub(super) struct Notifier {
    finished: Shutdown,
    thread: JoinHandle<()>,
}

impl Notifier {
    /// `None` when not running under systemd.
    pub(super) fn start(vitals: Arc<dyn Vitals>, shutdown: Shutdown) -> Option<Self> {
        std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = sd_notify::watchdog_enabled();
        let finished = Shutdown::new();
        let stop = finished.clone();
        let thread = std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || notify_loop(vitals.as_ref(), watchdog, &shutdown, &stop))
            .expect("spawning the systemd notifier thread");
        Some(Notifier { finished, thread })
    }

    /// Sends `STOPPING=1` if it was not sent yet, and ends the thread.
    pub(super) fn finish(self) {
        self.finished.request();
        let _ = self.thread.join();
    }
}

/// Tick of the status and watchdog messages for a watchdog of `watchdog` (if any).
fn tick_period(watchdog: Option<Duration>) -> Duration {
    watchdog.map_or(STATUS_PERIOD, |w| (w / 2).min(STATUS_PERIOD)).max(Duration::from_millis(10))
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

fn notify_loop(vitals: &dyn Vitals, watchdog: Option<Duration>, shutdown: &Shutdown, finished: &Shutdown) {
    let ready_poll = crossbeam_channel::tick(READY_POLL);
    let stopping = loop {
        if vitals.ready() {
            let status = vitals.status_line(&vitals.condition());
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            tracing::info!(watchdog_ms = watchdog.map(|w| w.as_millis() as u64), "told systemd the service is ready");
            break false;
        }
        select! {
            recv(ready_poll) -> _ => {}
            recv(shutdown.requested()) -> _ => break true,
            recv(finished.requested()) -> _ => break true,
        }
    };
    if !stopping {
        let ticks = crossbeam_channel::tick(tick_period(watchdog));
        loop {
            select! {
                recv(ticks) -> _ => {}
                recv(shutdown.requested()) -> _ => break,
                recv(finished.requested()) -> _ => break,
            }
            let condition = vitals.condition();
            if condition == Condition::Stopping {
                break;
            }
            let status = vitals.status_line(&condition);
            let mut states = vec![NotifyState::Status(&status)];
            if watchdog.is_some() && condition.is_healthy() {
                states.push(NotifyState::Watchdog);
            }
            send(&states);
        }
    }
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: finishing the work in flight")]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_come_at_half_the_watchdog_and_at_least_every_status_period() {
        assert_eq!(tick_period(Some(Duration::from_secs(1))), Duration::from_millis(500));
        assert_eq!(tick_period(Some(Duration::from_secs(30))), STATUS_PERIOD);
        assert_eq!(tick_period(None), STATUS_PERIOD);
        assert_eq!(tick_period(Some(Duration::from_micros(1))), Duration::from_millis(10));
    }
}
