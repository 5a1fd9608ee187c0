//! The decision stage: gives each frame its place in the stream, asks the policy where it
//! goes, and sends it there.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::control::{Decide, Signals};
use crate::frame::{Frame, Job, Route};
use crate::metrics::{QueueDepths, RemoteHealth};

/// Where the decision stage reads the pipeline's state from.
pub(super) struct SignalSource {
    pub(super) queues: QueueDepths,
    /// `None` when the remote path is off.
    pub(super) remote: Option<Arc<RemoteHealth>>,
}

impl SignalSource {
    fn sample(&self) -> Signals {
        Signals { at: Instant::now(), queues: self.queues.sample(), remote: self.remote.as_ref().map(|h| h.snapshot()) }
    }
}

/// The stage's body. Frames are numbered in arrival order (`Job::order`, contiguous: what the
/// sink restores). A remote route without a remote path falls to the local one.
pub(super) fn decision_stage(
    frames: Receiver<Frame>,
    mut policy: Box<dyn Decide>,
    signals: SignalSource,
    local: Sender<Job>,
    remote: Option<Sender<Job>>,
) -> impl FnOnce() + Send + 'static {
    move || {
        for (order, frame) in (0u64..).zip(frames) {
            let mut job = Job::new(order, frame);
            let decision = policy.decide(&job, &signals.sample());
            let sent = match (job.decide(decision), &remote) {
                (Route::Remote, Some(tx)) => tx.send(job).is_ok(),
                _ => local.send(job).is_ok(),
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
        SignalSource { queues: QueueDepths::default(), remote: None }
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
