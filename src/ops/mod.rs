//! Operations: what a service manager and a monitoring system see of a running edge or worker.
//!
//! Both roles describe themselves through [`Vitals`]: whether they are ready, their
//! [`Condition`] (judged from progress counters by [`crate::metrics::health`]), a one-line status
//! and their Prometheus metrics. [`Service`] turns that into the systemd notification protocol
//! ([`notify`]: `READY=1`, `STATUS=`, `WATCHDOG=1` only while healthy, `STOPPING=1`) and an HTTP
//! endpoint ([`http`]: `/metrics` in the OpenMetrics text format, `/healthz`). Every reader asks
//! the same [`Vitals`], so the watchdog, `/healthz`, `STATUS=` and the `healthy` metric cannot
//! disagree.
//!
//! [`edge`] gathers the pipeline's shared counters (ingest, queues, remote health) and tallies
//! every finished frame as a sink observer; [`worker`] reads the worker's status. Nothing here is
//! on a frame's path: the stages keep their counters as before and these only read them.

pub mod edge;
mod exposition;
mod http;
mod notify;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use crate::metrics::health::Condition;
use crate::shutdown::Shutdown;
pub use edge::{EdgeTelemetry, PipelineView};
pub use worker::WorkerTelemetry;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("cannot serve metrics on {addr}: {source} (set metrics.listen to a free address, or leave it out to turn the endpoint off)")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the metrics server: {0}")]
    Runtime(std::io::Error),
}

/// A running service as its supervisors see it.
pub trait Vitals: Send + Sync + 'static {
    /// Serving: the edge pulled its first frame (so the model is loaded and the source works),
    /// the worker listens.
    fn ready(&self) -> bool;
    /// Judged now, from the progress counters.
    fn condition(&self) -> Condition;
    /// One line for `systemctl status` (systemd's `STATUS=`), starting with the condition.
    fn status_line(&self, condition: &Condition) -> String;
    /// The Prometheus exposition, in the OpenMetrics text format, `# EOF` included.
    fn encode_metrics(&self, out: &mut String) -> std::fmt::Result;
}

/// The systemd notifier (under systemd only) and the metrics endpoint (when configured) of one
/// running service.
pub struct Service {
    notifier: Option<notify::Notifier>,
    http: Option<http::HttpServer>,
}

impl Service {
    /// Binds `metrics_listen` at once (a taken port fails here, before any work starts) and
    /// starts notifying systemd when `NOTIFY_SOCKET` is set. `shutdown` is the process's stop
    /// request: `STOPPING=1` is sent the moment it comes.
    pub fn start(vitals: Arc<dyn Vitals>, metrics_listen: Option<SocketAddr>, shutdown: &Shutdown) -> Result<Self, OpsError> {
        let http = metrics_listen.map(|addr| http::HttpServer::start(addr, vitals.clone())).transpose()?;
        if let Some(server) = &http {
            tracing::info!(addr = %server.local_addr, "serving /metrics and /healthz");
        }
        let notifier = notify::Notifier::start(vitals, shutdown.clone());
        Ok(Service { notifier, http })
    }

    /// Where `/metrics` is served (the bound port when the configuration asked for port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.local_addr)
    }

    /// The work is done: tells systemd `STOPPING=1` if it was not told already, and stops
    /// serving metrics.
    pub fn finish(self) {
        if let Some(notifier) = self.notifier {
            notifier.finish();
        }
        if let Some(http) = self.http {
            http.stop();
        }
    }
}

/// Rate of a counter between two readings, for status lines ("frames/s").
#[derive(Debug, Default)]
struct RateMeter {
    last: Option<(Instant, u64)>,
}

impl RateMeter {
    /// Per second since the previous reading; 0 at the first.
    fn per_second(&mut self, count: u64, now: Instant) -> f64 {
        let rate = match self.last {
            Some((then, before)) if now > then => count.saturating_sub(before) as f64 / (now - then).as_secs_f64(),
            _ => 0.0,
        };
        self.last = Some((now, count));
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_is_per_second_between_readings() {
        let t0 = Instant::now();
        let mut meter = RateMeter::default();
        assert_eq!(meter.per_second(10, t0), 0.0);
        assert_eq!(meter.per_second(30, t0 + Duration::from_secs(2)), 10.0);
        assert_eq!(meter.per_second(30, t0 + Duration::from_secs(3)), 0.0);
    }
}
