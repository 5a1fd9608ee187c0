//! A minimal HTTP/1.1 server for `/metrics` and `/healthz`: one request per connection, a
//! response, then close. Prometheus scrapes and load-balancer probes need no more, so no HTTP
//! framework is pulled in. It runs on its own thread with a small tokio runtime, apart from the
//! stages, so a slow scraper cannot hold up a frame.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{OpsError, Vitals};
use crate::shutdown::Shutdown;

/// Longest request head accepted; a scrape's is a few hundred bytes.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// A client that has not sent its request, or not taken the answer, within this is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

pub(super) struct HttpServer {
    pub(super) local_addr: SocketAddr,
    stop: Shutdown,
    thread: JoinHandle<()>,
}

impl HttpServer {
    /// Binds before returning, so a taken port is an error at start-up, not a log line later.
    pub(super) fn start(addr: SocketAddr, vitals: Arc<dyn Vitals>) -> Result<Self, OpsError> {
        let bind_err = |source| OpsError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().map_err(OpsError::Runtime)?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(bind_err)?
        };
        let stop = Shutdown::new();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                runtime.block_on(async {
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => {
                                    tokio::spawn(serve(stream, vitals.clone()));
                                }
                                Err(e) => tracing::warn!(error = %e, "metrics endpoint: accept failed"),
                            },
                            _ = stopped.cancelled() => break,
                        }
                    }
                });
            })
            .expect("spawning the metrics server thread");
        Ok(HttpServer { local_addr, stop, thread })
    }

    pub(super) fn stop(self) {
        self.stop.request();
        let _ = self.thread.join();
    }
}

async fn serve(mut stream: tokio::net::TcpStream, vitals: Arc<dyn Vitals>) {
    let exchange = async {
        let head = read_head(&mut stream).await?;
        let response = respond(&head, vitals.as_ref());
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    if let Ok(Err(e)) = tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
        tracing::debug!(error = %e, "metrics endpoint: client went away");
    }
}

/// The request line and headers, up to the blank line (a body, if any, is ignored).
async fn read_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() <= MAX_HEAD_BYTES {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(head)
}

/// The whole response for one request head.
fn respond(head: &[u8], vitals: &dyn Vitals) -> Vec<u8> {
    let request_line = head.split(|&b| b == b'\n').next().map(|l| String::from_utf8_lossy(l).trim().to_string()).unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if head.len() > MAX_HEAD_BYTES {
        ("431 Request Header Fields Too Large", TEXT, "request head too large\n".to_string())
    } else if method != "GET" && method != "HEAD" {
        ("405 Method Not Allowed", TEXT, "only GET and HEAD\n".to_string())
    } else {
        match path {
            "/metrics" => {
                let mut body = String::with_capacity(8 * 1024);
                match vitals.encode_metrics(&mut body) {
                    Ok(()) => ("200 OK", OPENMETRICS, body),
                    Err(_) => ("500 Internal Server Error", TEXT, "metrics could not be encoded\n".to_string()),
                }
            }
            "/healthz" => {
                let condition = vitals.condition();
                let status = if condition.is_healthy() { "200 OK" } else { "503 Service Unavailable" };
                (status, TEXT, format!("{}\n", vitals.status_line(&condition)))
            }
            _ => ("404 Not Found", TEXT, "try /metrics or /healthz\n".to_string()),
        }
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::health::Condition;

    struct Fixed(Condition);

    impl Vitals for Fixed {
        fn ready(&self) -> bool {
            true
        }
        fn condition(&self) -> Condition {
            self.0.clone()
        }
        fn status_line(&self, condition: &Condition) -> String {
            condition.to_string()
        }
        fn encode_metrics(&self, out: &mut String) -> std::fmt::Result {
            out.push_str("# EOF\n");
            Ok(())
        }
    }

    fn text(head: &str, condition: Condition) -> String {
        String::from_utf8(respond(head.as_bytes(), &Fixed(condition))).unwrap()
    }

    #[test]
    fn routes_and_status_codes() {
        let metrics = text("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", Condition::Idle);
        assert!(
            metrics.starts_with("HTTP/1.1 200 OK\r\n") && metrics.contains(OPENMETRICS) && metrics.ends_with("\r\n\r\n# EOF\n"),
            "{metrics}"
        );
        assert!(text("GET /healthz HTTP/1.1\r\n\r\n", Condition::Flowing).ends_with("\r\n\r\nflowing\n"));
        let stalled = text("GET /healthz?verbose HTTP/1.0\r\n\r\n", Condition::Stalled("stuck".into()));
        assert!(stalled.starts_with("HTTP/1.1 503 ") && stalled.ends_with("stalled: stuck\n"), "{stalled}");
        assert!(text("GET /healthz HTTP/1.1\r\n\r\n", Condition::Starting).starts_with("HTTP/1.1 503 "));
        assert!(text("GET / HTTP/1.1\r\n\r\n", Condition::Idle).starts_with("HTTP/1.1 404 "));
        assert!(text("POST /metrics HTTP/1.1\r\n\r\n", Condition::Idle).starts_with("HTTP/1.1 405 "));
        assert!(text("garbage", Condition::Idle).starts_with("HTTP/1.1 405 "));
        let head = text("HEAD /healthz HTTP/1.1\r\n\r\n", Condition::Idle);
        assert!(head.contains("Content-Length: 5\r\n") && head.ends_with("\r\n\r\n"), "{head}");
    }
}
