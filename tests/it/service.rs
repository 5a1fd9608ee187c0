//! The binaries as systemd and Prometheus see them. Each test runs `edgeseg run` or
//! `edgeseg worker` as a child with `NOTIFY_SOCKET` pointing at a datagram socket the test owns
//! (what systemd does for a `Type=notify` unit) and reads what they say:
//!
//! - edge and worker: `READY=1` first, then `STATUS=` with `WATCHDOG=1`, and `STOPPING=1` last
//!   once they are asked to stop;
//! - a recorded source that stops delivering and a sink blocked on its output both stop the
//!   watchdog pings (and turn `/healthz` to 503) while a healthy edge beside them keeps
//!   pinging; the blocked sink, once its output moves again, pings again;
//! - `/metrics` scraped from a running edge and worker agrees with the edge's `summary.json`
//!   and the worker's final status.
//!
//! Assertions are on what is said and in which order; the only times are generous deadlines.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;
use serde_json::Value;

/// Pings every 500 ms (half the watchdog), so a test sees many in a few seconds.
const WATCHDOG_USEC: &str = "1000000";
/// Generous: model loading and GStreamer start-up on a loaded machine.
const START_LIMIT: Duration = Duration::from_secs(90);

/// One datagram of the notification protocol: `KEY=VALUE` lines.
#[derive(Debug, Clone)]
struct Notice {
    from: &'static str,
    fields: BTreeMap<String, String>,
}

impl Notice {
    fn has(&self, key: &str) -> bool {
        self.fields.contains_key(key)
    }

    fn status(&self) -> &str {
        self.fields.get("STATUS").map(String::as_str).unwrap_or("")
    }

    fn ready(&self) -> bool {
        self.has("READY")
    }

    fn watchdog(&self) -> bool {
        self.has("WATCHDOG")
    }

    fn stopping(&self) -> bool {
        self.has("STOPPING")
    }

    fn stalled(&self) -> bool {
        self.status().starts_with("stalled")
    }
}

/// The test's side of `NOTIFY_SOCKET` for several services: every datagram, in arrival order.
struct NotifySockets {
    notices: crossbeam_channel::Receiver<Notice>,
    stop: Arc<AtomicBool>,
    /// Everything received so far, per service.
    seen: BTreeMap<&'static str, Vec<Notice>>,
}

impl NotifySockets {
    /// Binds `dir/<name>.sock` for every name; returns the sockets' paths by name.
    fn bind(dir: &Path, names: &[&'static str]) -> (Self, BTreeMap<&'static str, PathBuf>) {
        let (tx, notices) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let mut paths = BTreeMap::new();
        for &name in names {
            let path = dir.join(format!("{name}.sock"));
            let socket = UnixDatagram::bind(&path).expect("binding a notify socket");
            socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let (tx, stop) = (tx.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = socket.recv(&mut buf) else { continue };
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let fields = text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
                    if tx.send(Notice { from: name, fields }).is_err() {
                        return;
                    }
                }
            });
            paths.insert(name, path);
        }
        let seen = names.iter().map(|&n| (n, Vec::new())).collect();
        (NotifySockets { notices, stop, seen }, paths)
    }

    /// Takes notices until `done` holds for what was seen; fails after `limit` saying `what`.
    fn until(&mut self, what: &str, limit: Duration, done: impl Fn(&BTreeMap<&'static str, Vec<Notice>>) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.notices.recv_timeout(left) {
                Ok(notice) => self.seen.get_mut(notice.from).expect("a known service").push(notice),
                Err(_) => panic!("timed out after {limit:?} waiting until {what}; seen: {:#?}", self.seen),
            }
        }
    }

    fn of(&self, name: &str) -> &[Notice] {
        &self.seen[name]
    }
}

impl Drop for NotifySockets {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A child process killed if the test ends before it does.
struct Running {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Running {
    /// Starts `command` with its stdout and stderr in `dir/<name>.log`.
    fn start(name: &'static str, dir: &Path, mut command: Command) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = File::create(&log).expect("creating a log file");
        command.stdout(file.try_clone().expect("log file")).stderr(file);
        let child = command.spawn().expect("starting edgeseg");
        Running { name, child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid, which is not reaped before `wait` below.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
    }

    /// Waits for the exit; fails if it takes longer than `limit` or the exit is not clean.
    fn wait_success(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for edgeseg") {
                break status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {limit:?}; log:\n{}", self.name, self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{} exited with {status}; log:\n{}", self.name, self.log_text());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A TCP port that was free a moment ago.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("probing a free port").port()
}

/// GET `path`: the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("reading the response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {response:?}"));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {head:?}"));
    (code, body.to_string())
}

/// The samples of an OpenMetrics text: `name{labels}` (labels as written) → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    assert!(text.trim_end().ends_with("# EOF"), "an OpenMetrics exposition ends with # EOF: {text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {l:?}"));
            (name.to_string(), value.parse().unwrap_or_else(|_| panic!("sample value in {l:?}")))
        })
        .collect()
}

fn sample(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    *samples.get(name).unwrap_or_else(|| panic!("no sample {name} in {samples:#?}"))
}

/// `edgeseg run` on `config` with `overrides`, without masks and overlay video, metrics on `metrics`.
fn edge_command(config: &Path, overrides: &[String], metrics: Option<SocketAddr>) -> Command {
    let mut command = Command::new(common::bin());
    command.args(["run", "--config"]).arg(config);
    let mut all: Vec<String> = vec!["output.masks=false".into(), "output.overlay=false".into()];
    all.extend(overrides.iter().cloned());
    if let Some(addr) = metrics {
        all.push(format!("metrics.listen={addr}"));
    }
    for o in &all {
        command.args(["--set", o]);
    }
    command.stdin(Stdio::null());
    command
}

/// `edgeseg worker` on `config`.
fn worker_command(config: &Path) -> Command {
    let mut command = Command::new(common::bin());
    command.args(["worker", "--config"]).arg(config);
    command
}

/// As systemd starts a `Type=notify` unit with `WatchdogSec=1s`.
fn under_systemd(mut command: Command, socket: &Path) -> Command {
    command.env("NOTIFY_SOCKET", socket).env("WATCHDOG_USEC", WATCHDOG_USEC);
    command
}

/// Runs `command` under systemd until it pinged the watchdog three times, then stops it as
/// systemd would (SIGTERM); returns everything it said, checked against [`assert_protocol`].
fn notices_through_a_stop(dir: &Path, name: &'static str, command: Command) -> Vec<Notice> {
    let (mut sockets, paths) = NotifySockets::bind(dir, &[name]);
    let mut service = Running::start(name, dir, under_systemd(command, &paths[name]));
    sockets.until("READY and three watchdog pings", START_LIMIT, |seen| seen[name].iter().filter(|n| n.watchdog()).count() >= 3);
    service.terminate();
    sockets.until("STOPPING", Duration::from_secs(30), |seen| seen[name].iter().any(Notice::stopping));
    service.wait_success(Duration::from_secs(30));
    let notices = sockets.of(name).to_vec();
    assert_protocol(name, &notices);
    notices
}

/// An edge config in `dir/<name>/` (outputs in `dir/<name>/out`), fixture networks.
fn edge_dir(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let own = dir.join(name);
    std::fs::create_dir_all(own.join("out")).unwrap();
    let config = common::edge_config(&own, &common::short_video(), "");
    (config, own.join("out"))
}

/// Pings exactly while healthy: READY first, STOPPING last, nothing after it, and a
/// WATCHDOG=1 only in a datagram whose STATUS is not "stalled".
fn assert_protocol(name: &str, notices: &[Notice]) {
    assert!(notices.first().is_some_and(Notice::ready), "{name}: the first notice must be READY=1: {notices:#?}");
    assert_eq!(notices.iter().filter(|n| n.ready()).count(), 1, "{name}: READY=1 once: {notices:#?}");
    let stopping = notices.iter().position(Notice::stopping).unwrap_or_else(|| panic!("{name}: no STOPPING=1: {notices:#?}"));
    assert_eq!(stopping, notices.len() - 1, "{name}: STOPPING=1 comes last: {notices:#?}");
    assert!(notices.iter().all(|n| n.has("STATUS")), "{name}: every notice carries a STATUS: {notices:#?}");
    assert!(!notices.iter().any(|n| n.watchdog() && n.stalled()), "{name}: a stalled service must not ping: {notices:#?}");
}

#[test]
fn edge_tells_systemd_ready_then_status_and_watchdog_then_stopping() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = edge_dir(dir.path(), "edge");
    let notices = notices_through_a_stop(dir.path(), "edge", edge_command(&config, &common::testsrc_overrides("10/1", -1), None));
    let pings: Vec<&Notice> = notices.iter().filter(|n| n.watchdog()).collect();
    assert!(pings.iter().all(|n| n.status().starts_with("flowing") || n.status().starts_with("idle")), "{pings:#?}");
    assert!(pings.iter().all(|n| n.status().contains("frames/s out") && n.status().contains("routes local 100%")), "{pings:#?}");
}

#[test]
fn worker_tells_systemd_ready_then_status_and_watchdog_then_stopping() {
    let _machine = common::shared_machine();
    let dir = tempfile::tempdir().unwrap();
    let notices = notices_through_a_stop(dir.path(), "worker", worker_command(&worker_config(dir.path())));
    // Listening with nobody connected is idle, which is healthy.
    let pings: Vec<&Notice> = notices.iter().filter(|n| n.watchdog()).collect();
    assert!(pings.iter().all(|n| n.status().starts_with("idle; 0 edge(s) connected")), "{pings:#?}");
    assert!(notices.last().is_some_and(|n| n.status().starts_with("stopping")), "{notices:#?}");
}

/// A worker config in `dir` serving the fixture large network on a free UDP port, with a
/// development PKI in `dir/pki`; `extra` is appended.
fn worker_config_with(dir: &Path, extra: &str) -> PathBuf {
    let pki = edgeseg::remote::tls::generate_dev_pki(&dir.join("pki"), &["localhost".into(), "127.0.0.1".into()], &["edge".into()], false)
        .expect("generating a development PKI");
    let text = format!(
        "listen = \"127.0.0.1:0\"\n{extra}\n[models.large]\nmanifest = \"{manifest}\"\nintra_threads = 1\n\
         [tls]\nca_cert = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n",
        manifest = common::fixtures().join("models/large.toml").display(),
        ca = pki.worker.ca_cert.display(),
        cert = pki.worker.cert.display(),
        key = pki.worker.key.display(),
    );
    let path = dir.join("worker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn worker_config(dir: &Path) -> PathBuf {
    worker_config_with(dir, "")
}

/// The read end of a FIFO standing in for `records.jsonl`, opened before the edge opens it for
/// writing, with the smallest pipe buffer: the sink blocks after a dozen records, as on a disk
/// that stopped answering, until [`BlockedOutput::drain`].
struct BlockedOutput {
    reader: File,
}

impl BlockedOutput {
    fn create(path: &Path) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
        // Non-blocking: opening a FIFO's read end would otherwise wait for a writer.
        let reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).expect("opening the FIFO");
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        BlockedOutput { reader }
    }

    /// Reads everything from now on, on a thread, until the writer closes.
    fn drain(self) -> std::thread::JoinHandle<usize> {
        use std::os::fd::AsRawFd;
        let fd = self.reader.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own; back to blocking reads.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) & !libc::O_NONBLOCK) };
        let mut reader = self.reader;
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = reader.read_to_end(&mut all);
            all.len()
        })
    }
}

/// A recorded source that delivers one frame and then nothing for a minute: `identity sync=true`
/// holds the second frame until its timestamp, 60 s on.
const SILENT_SOURCE: &str = "videotestsrc pattern=smpte ! video/x-raw,width=160,height=120,framerate=1/60 ! identity sync=true \
                             ! videoconvert ! video/x-raw,format=BGR ! appsink name=sink";

#[test]
fn a_stalled_pipeline_stops_the_watchdog_while_a_healthy_one_keeps_feeding_it() {
    let _machine = common::whole_machine();
    let dir = tempfile::tempdir().unwrap();
    const NAMES: [&str; 3] = ["healthy", "silent-source", "blocked-sink"];
    let (mut sockets, paths) = NotifySockets::bind(dir.path(), &NAMES);
    let ports: BTreeMap<&str, SocketAddr> = NAMES.iter().map(|&n| (n, SocketAddr::from(([127, 0, 0, 1], free_tcp_port())))).collect();
    let stall = "health.stall_s=3".to_string();

    let (healthy_config, _) = edge_dir(dir.path(), "healthy");
    let mut overrides = common::testsrc_overrides("5/1", -1);
    overrides.push(stall.clone());
    let healthy = Running::start(
        "healthy",
        dir.path(),
        under_systemd(edge_command(&healthy_config, &overrides, Some(ports["healthy"])), &paths["healthy"]),
    );

    let (silent_config, _) = edge_dir(dir.path(), "silent-source");
    let pipeline = common::pipeline_file(dir.path(), "silent.pipeline", SILENT_SOURCE);
    let overrides = vec![format!("ingest.pipeline={}", pipeline.display()), stall.clone()];
    let silent = Running::start(
        "silent-source",
        dir.path(),
        under_systemd(edge_command(&silent_config, &overrides, Some(ports["silent-source"])), &paths["silent-source"]),
    );

    let (blocked_config, blocked_out) = edge_dir(dir.path(), "blocked-sink");
    let blocked_output = BlockedOutput::create(&blocked_out.join("records.jsonl"));
    let mut overrides = common::testsrc_overrides("5/1", -1);
    overrides.extend([stall, "ingest.live=\"live\"".to_string()]);
    let blocked = Running::start(
        "blocked-sink",
        dir.path(),
        under_systemd(edge_command(&blocked_config, &overrides, Some(ports["blocked-sink"])), &paths["blocked-sink"]),
    );

    sockets.until("every edge is ready and both broken ones report a stall", START_LIMIT, |seen| {
        NAMES.iter().all(|n| seen[n].iter().any(Notice::ready))
            && seen["silent-source"].iter().any(Notice::stalled)
            && seen["blocked-sink"].iter().any(Notice::stalled)
    });
    // From here on the healthy edge pings ten more times; the stalled ones not once.
    let before: BTreeMap<&str, usize> = NAMES.iter().map(|&n| (n, sockets.of(n).len())).collect();
    sockets.until("ten more pings from the healthy edge", Duration::from_secs(60), |seen| {
        seen["healthy"][before["healthy"]..].iter().filter(|n| n.watchdog()).count() >= 10
    });
    for name in ["silent-source", "blocked-sink"] {
        let later = &sockets.of(name)[before[name]..];
        assert!(later.iter().all(|n| !n.watchdog() && n.stalled()), "{name} must stay stalled and silent: {later:#?}");
        let (code, body) = http_get(ports[name], "/healthz");
        assert_eq!(code, 503, "{name} /healthz: {body}");
        assert!(body.starts_with("stalled: "), "{name} /healthz: {body}");
    }
    let silent_reason = sockets.of("silent-source").iter().find(|n| n.stalled()).map(|n| n.status().to_string()).unwrap();
    assert!(silent_reason.contains("the recorded source delivered no frame"), "{silent_reason}");
    let blocked_reason = sockets.of("blocked-sink").iter().find(|n| n.stalled()).map(|n| n.status().to_string()).unwrap();
    assert!(blocked_reason.contains("in the pipeline and none came out"), "{blocked_reason}");
    let (code, body) = http_get(ports["healthy"], "/healthz");
    assert_eq!(code, 200, "healthy /healthz: {body}");

    // The output moves again: the blocked edge recovers and pings again.
    let drained = blocked_output.drain();
    let stalled_until = sockets.of("blocked-sink").len();
    sockets.until("the unblocked edge pings again", Duration::from_secs(60), |seen| {
        seen["blocked-sink"][stalled_until..].iter().any(Notice::watchdog)
    });
    assert_eq!(http_get(ports["blocked-sink"], "/healthz").0, 200);

    for edge in [&healthy, &silent, &blocked] {
        edge.terminate();
    }
    sockets.until("every edge says STOPPING", Duration::from_secs(60), |seen| NAMES.iter().all(|n| seen[n].iter().any(Notice::stopping)));
    for mut edge in [healthy, silent, blocked] {
        edge.wait_success(Duration::from_secs(60));
    }
    assert!(drained.join().unwrap() > 0, "the blocked edge wrote its records once unblocked");
    for name in NAMES {
        assert_protocol(name, sockets.of(name));
    }
    assert!(!sockets.of("healthy").iter().any(Notice::stalled), "{:#?}", sockets.of("healthy"));
}

/// Raw BGR frames on the edge's standard input: the edge processes what it gets and stays up,
/// idle, until the input closes. Read as a recorded source, so that no frame is dropped and the
/// test knows how many come in; `health.stall_s` is raised so the silent input stays idle.
const STDIN_SOURCE: &str = "fdsrc fd=0 ! rawvideoparse format=bgr width=64 height=48 framerate=10/1 \
                            ! videoconvert ! video/x-raw,format=BGR ! appsink name=sink";
const STDIN_FRAME_BYTES: usize = 64 * 48 * 3;

/// Waits until `path` on `addr` satisfies `done`, scraping every 100 ms.
fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&BTreeMap<String, f64>) -> bool) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = http_get(addr, "/metrics");
        assert_eq!(code, 200, "{body}");
        let metrics = samples(&body);
        if done(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}: {metrics:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// "name 12" → 12, from the worker's last line, e.g. "worker stopped: answered 6 overloaded 0 ...".
fn count_after(line: &str, name: &str) -> f64 {
    let rest = line.split(&format!("{name} ")).nth(1).unwrap_or_else(|| panic!("no {name:?} in {line:?}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after {name:?} in {line:?}"))
}

#[test]
fn scraped_metrics_agree_with_the_edge_summary_and_the_worker_status() {
    let _machine = common::whole_machine();
    let dir = tempfile::tempdir().unwrap();
    let worker_metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let worker_config = worker_config_with(dir.path(), &format!("[metrics]\nlisten = \"{worker_metrics}\""));
    let mut worker = Running::start("worker", dir.path(), worker_command(&worker_config));
    let deadline = Instant::now() + START_LIMIT;
    let worker_addr: SocketAddr = loop {
        if let Some(addr) =
            worker.log_text().lines().find_map(|l| l.strip_prefix("worker listening on ")).and_then(|a| a.trim().parse().ok())
        {
            break addr;
        }
        assert!(Instant::now() < deadline, "the worker did not start: {}", worker.log_text());
        std::thread::sleep(Duration::from_millis(20));
    };

    let (edge_config, out) = edge_dir(dir.path(), "edge");
    let pipeline = common::pipeline_file(dir.path(), "stdin.pipeline", STDIN_SOURCE);
    let pki = dir.path().join("pki");
    let edge_metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let overrides = vec![
        format!("ingest.pipeline={}", pipeline.display()),
        "ingest.live=\"replay\"".into(),
        "health.stall_s=3600".into(),
        "remote.routing=\"every-nth\"".into(),
        "remote.every_nth=2".into(),
        format!("remote.workers=[\"{worker_addr}\"]"),
        "remote.deadline_ms=5000".into(),
        format!("remote.tls.ca_cert={}", pki.join("ca.pem").display()),
        format!("remote.tls.cert={}", pki.join("edge.pem").display()),
        format!("remote.tls.key={}", pki.join("edge.key").display()),
    ];
    let mut command = edge_command(&edge_config, &overrides, Some(edge_metrics));
    command.stdin(Stdio::piped());
    let mut edge = Running::start("edge", dir.path(), command);
    let mut frames_in = edge.child.stdin.take().expect("the edge's stdin");
    const FRAMES: u8 = 12;
    for n in 0..FRAMES {
        frames_in.write_all(&vec![n.wrapping_mul(20); STDIN_FRAME_BYTES]).expect("writing a frame to the edge");
        std::thread::sleep(Duration::from_millis(100));
    }
    frames_in.flush().unwrap();

    // Everything written came out; the live input is open but silent: the edge idles.
    let edge_scrape = scrape_until(edge_metrics, "every frame is out", |m| {
        m.get("edgeseg_frames_in_total") == Some(&f64::from(FRAMES))
            && m.get("edgeseg_frames_in_flight") == Some(&0.0)
            && m.get("edgeseg_remote_in_flight") == Some(&0.0)
    });
    let (code, health) = http_get(edge_metrics, "/healthz");
    assert_eq!(code, 200, "{health}");
    let worker_scrape = scrape_until(worker_metrics, "the worker is idle", |m| m.get("edgeseg_worker_in_flight") == Some(&0.0));
    assert_eq!(http_get(worker_metrics, "/healthz").0, 200);

    drop(frames_in); // end of stream: the edge finishes and writes summary.json
    edge.wait_success(Duration::from_secs(60));
    worker.terminate();
    worker.wait_success(Duration::from_secs(60));

    let summary = common::summary(&out);
    let number = |v: &Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert_eq!(sample(&edge_scrape, "edgeseg_frames_in_total"), number(&summary["frames_in"]));
    assert_eq!(sample(&edge_scrape, "edgeseg_frames_dropped_total"), number(&summary["dropped"]));
    let mut out_total = 0.0;
    for route in ["local", "remote", "fallback"] {
        let scraped = sample(&edge_scrape, &format!("edgeseg_frames_out_total{{route=\"{route}\"}}"));
        assert_eq!(scraped, summary["by_source"][route].as_f64().unwrap_or(0.0), "frames out by {route}");
        out_total += scraped;
    }
    assert_eq!(out_total, number(&summary["frames_out"]));
    assert!(sample(&edge_scrape, "edgeseg_frames_out_total{route=\"remote\"}") > 0.0, "some frames went remote: {summary}");
    for (stage, percentiles) in summary["latency"].as_object().expect("latency per stage") {
        let count = sample(&edge_scrape, &format!("edgeseg_stage_latency_seconds_count{{stage=\"{stage}\"}}"));
        assert_eq!(count, number(&percentiles["count"]), "latency samples of {stage}");
    }
    let remote = &summary["remote"];
    for (metric, key) in [("sent", "sent"), ("answered", "answered"), ("failures", "failures")] {
        assert_eq!(sample(&edge_scrape, &format!("edgeseg_remote_{metric}_total")), number(&remote[key]), "remote {metric}");
    }
    let decided = sample(&edge_scrape, "edgeseg_decisions_total{policy=\"every-nth\",route=\"remote\"}")
        + sample(&edge_scrape, "edgeseg_decisions_total{policy=\"every-nth\",route=\"local\"}");
    assert_eq!(decided, number(&summary["frames_out"]));

    let worker_log = worker.log_text();
    let stopped = worker_log.lines().find(|l| l.starts_with("worker stopped:")).unwrap_or_else(|| panic!("no final status: {worker_log}"));
    for (metric, name) in [
        ("answered", "answered"),
        ("overloaded", "overloaded"),
        ("expired", "expired"),
        ("protocol_errors", "protocol errors"),
        ("refused_handshakes", "refused handshakes"),
    ] {
        assert_eq!(
            sample(&worker_scrape, &format!("edgeseg_worker_{metric}_total")),
            count_after(stopped, name),
            "worker {metric}: {stopped}"
        );
    }
    assert_eq!(sample(&worker_scrape, "edgeseg_worker_answered_total"), number(&remote["answered"]), "the worker answered this edge only");
    // "batch sizes {1: 5, 2: 1}": batches and frames in them.
    let sizes = stopped.split("batch sizes {").nth(1).and_then(|r| r.split('}').next()).unwrap_or("");
    let pairs: Vec<(f64, f64)> = sizes
        .split(',')
        .filter_map(|p| p.split_once(':'))
        .map(|(size, n)| (size.trim().parse().unwrap(), n.trim().parse().unwrap()))
        .collect();
    assert_eq!(sample(&worker_scrape, "edgeseg_worker_batch_size_count"), pairs.iter().map(|(_, n)| n).sum::<f64>());
    assert_eq!(sample(&worker_scrape, "edgeseg_worker_batch_size_sum"), pairs.iter().map(|(size, n)| size * n).sum::<f64>());
}
