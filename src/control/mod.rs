//! Control unit: decides, frame by frame, whether the small network on the device or the large
//! network on the remote worker segments it.
//!
//! For now the decision is a fixed policy from config (`remote.routing`). The decision network
//! (predicted per-class IoU per frame) and the adaptive threshold (fed by queue depths, CPU load,
//! battery and [`crate::metrics::RemoteHealth`]) plug in here, behind the same `route` call.

use crate::config::{Count, Routing};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Local,
    Remote,
}

#[derive(Debug, Clone, Copy)]
pub struct RoutingPolicy {
    routing: Routing,
    every_nth: u64,
}

impl RoutingPolicy {
    pub fn new(routing: Routing, every_nth: Count<{ usize::MAX }>) -> Self {
        RoutingPolicy { routing, every_nth: every_nth.get() as u64 }
    }

    /// `order` is the frame's position after ingest (contiguous, starting at 0).
    pub fn route(&self, order: u64) -> Route {
        match self.routing {
            Routing::Local => Route::Local,
            Routing::Remote => Route::Remote,
            Routing::EveryNth if (order + 1) % self.every_nth == 0 => Route::Remote,
            Routing::EveryNth => Route::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nth_sends_every_nth_frame_remote() {
        let n = |n| Count::new(n).unwrap();
        let p = RoutingPolicy::new(Routing::EveryNth, n(3));
        let routes: Vec<Route> = (0..6).map(|o| p.route(o)).collect();
        use Route::*;
        assert_eq!(routes, vec![Local, Local, Remote, Local, Local, Remote]);
        assert_eq!(RoutingPolicy::new(Routing::Remote, n(1)).route(5), Remote);
        assert_eq!(RoutingPolicy::new(Routing::Local, n(1)).route(5), Local);
    }
}
