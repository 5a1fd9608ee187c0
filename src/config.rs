//! Configuration files (`config/edge.toml`, `config/worker.toml`): parsed once, at start-up,
//! into values whose types carry their checks ([`Count`], [`Millis`], [`WorkerAddr`]), so no
//! module clamps or re-parses a setting, and a wrong setting fails before anything starts,
//! with the file and key named, instead of surfacing later on a camera nobody is watching.
//!
//! Every section has one [`Default`]; a key left out takes its value from there. Every problem
//! of a file is reported at once: a value its type refuses is noted and replaced by the default
//! so that parsing carries on, then the checks that span keys or touch the disk run, and the
//! error lists all of it.
//!
//! Relative paths in a config file are resolved against the file's own directory, so a service
//! behaves the same whatever its working directory is.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (pass an existing file with --config)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{}", problems.iter().map(|p| format!("{}: {p}", path.display())).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
    #[error("override `{0}` is not of the form section.key=value")]
    BadOverride(String),
}

/// One wrong setting: `key = value problem`, e.g. `pipeline.queue_capacity = 0 is outside 1..=1024`.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: String,
    pub value: String,
    pub problem: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {} {}", self.key, self.value, self.problem)
    }
}

/// A count within `1..=MAX` (threads, queue and batch sizes): zero would deadlock or mean
/// nothing, and the upper bound catches a typo before it allocates gigabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Count<const MAX: usize>(NonZeroUsize);

impl<const MAX: usize> Count<MAX> {
    /// For defaults: out of range is a compile-time error in a `const`, a panic elsewhere.
    pub const fn literal(n: usize) -> Self {
        match NonZeroUsize::new(n) {
            Some(v) if n <= MAX => Count(v),
            _ => panic!("count literal outside 1..=MAX"),
        }
    }

    pub fn new(n: usize) -> Option<Self> {
        NonZeroUsize::new(n).filter(|_| n <= MAX).map(Count)
    }

    pub fn get(self) -> usize {
        self.0.get()
    }

    fn range() -> String {
        if MAX == usize::MAX {
            "must be at least 1".to_string()
        } else {
            format!("is outside 1..={MAX}")
        }
    }
}

impl<const MAX: usize> fmt::Display for Count<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for Count<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        usize::try_from(n).ok().and_then(Count::new).ok_or_else(|| D::Error::custom(Self::range()))
    }
}

/// A time span written in the config as a whole number of units (`UNIT_MS` milliseconds each):
/// the key's name says the unit, the program only ever sees a [`Duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeSpan<const UNIT_MS: u64>(u64);

/// A `*_ms` key.
pub type Millis = TimeSpan<1>;
/// A `*_s` key.
pub type Seconds = TimeSpan<1000>;

impl<const UNIT_MS: u64> TimeSpan<UNIT_MS> {
    pub const fn new(units: u64) -> Self {
        TimeSpan(units)
    }

    pub fn get(self) -> Duration {
        Duration::from_millis(self.0.saturating_mul(UNIT_MS))
    }

    /// The number as written in the config.
    pub fn units(self) -> u64 {
        self.0
    }

    /// `None` for 0, which turns periodic things off.
    pub fn period(self) -> Option<Duration> {
        (self.0 > 0).then(|| self.get())
    }
}

impl<const UNIT_MS: u64> fmt::Display for TimeSpan<UNIT_MS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de, const UNIT_MS: u64> Deserialize<'de> for TimeSpan<UNIT_MS> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        u64::try_from(n).map(TimeSpan).map_err(|_| D::Error::custom("is negative"))
    }
}

/// A remote worker as `host:port` (a name or an address): the syntax is checked at load; the
/// name is resolved when the client starts, since DNS answers can change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerAddr(String);

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not host:port")]
pub struct WorkerAddrError(String);

impl FromStr for WorkerAddr {
    type Err = WorkerAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let host_port = s.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if s.parse::<SocketAddr>().is_ok() || host_port {
            Ok(WorkerAddr(s.to_string()))
        } else {
            Err(WorkerAddrError(s.to_string()))
        }
    }
}

impl WorkerAddr {
    /// The first address the name resolves to.
    pub fn resolve(&self) -> std::io::Result<SocketAddr> {
        self.0.to_socket_addrs()?.next().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
    }
}

impl fmt::Display for WorkerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WorkerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(|_| D::Error::custom("is not host:port"))
    }
}

fn ip_port<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    String::deserialize(d)?.parse().map_err(|_| D::Error::custom("is not an ip:port socket address"))
}

/// An `ip:port`, or `""` for "off" (so `--set metrics.listen=` turns an endpoint off).
fn optional_ip_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| D::Error::custom("is not an ip:port socket address (or \"\" for off)"))
}

/// How the edge decides which frames go to the remote worker: fixed policies that let the
/// remote path be used and tested on its own, or `threshold`: a per-frame score (the decision
/// network's predicted IoU) against a threshold that `[control]` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    #[default]
    Local,
    Remote,
    EveryNth,
    Threshold,
}

/// How the control unit moves the threshold (`control.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlMode {
    /// The thesis: the threshold stays at `control.threshold`.
    #[default]
    Fixed,
    /// Hold the share of frames sent remote near `control.remote_budget`.
    Budget,
    /// Hold the local queue (and frame latency) at their targets, within the remote budget.
    Adaptive,
}

impl ControlMode {
    pub fn name(self) -> &'static str {
        match self {
            ControlMode::Fixed => "fixed",
            ControlMode::Budget => "budget",
            ControlMode::Adaptive => "adaptive",
        }
    }
}

/// Which per-frame score the threshold is compared with (`control.score`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreChoice {
    /// A deterministic pseudo-random value in [0, 1) per frame: the threshold is then the
    /// expected share of frames sent remote (a stand-in until the decision network lands).
    #[default]
    Uniform,
    /// `control.constant_score` for every frame.
    Constant,
    /// The decision network of `[decision]`: its prediction for the frame under `decision.rule`.
    DecisionNetwork,
}

/// How a decision network's prediction becomes one score (`decision.rule`); `eval routing`
/// evaluates all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// The thesis: the largest predicted class IoU (local if at least one class clears the threshold).
    Thesis,
    /// The predicted IoU_img: mean predicted IoU over the classes predicted present.
    #[default]
    PredictedIouImg,
    /// The predicted gain of the large network, IoU_img(large) − IoU_img(small): the frames it
    /// helps most go remote.
    Gain,
}

/// `[decision]` of the edge: the decision network that `control.score = "decision-network"`
/// reads, and the small network split at its base (the stem by default) so that a local frame
/// reuses the features the decision computed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionConfig {
    /// `dn.toml` written by `edgeseg dn train` (its weights file lies beside it).
    pub network: PathBuf,
    /// Further networks on the same base (e.g. trained with other seeds) whose predictions are
    /// averaged with `network`'s, as `eval routing --ensemble` does.
    pub ensemble: Vec<PathBuf>,
    /// The small network split by `scripts/split_small.py`: the base the network was trained on
    /// (the stem or the encoder) and the rest of the small network.
    pub encoder: PathBuf,
    pub head: PathBuf,
    pub rule: Rule,
    /// Presence probability from which a class counts in the predicted IoU_img; unset: the
    /// value the network was trained with.
    pub presence: Option<f32>,
    /// ONNX Runtime threads of the encoder (it runs on the decision stage's thread).
    pub intra_threads: Count<64>,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        DecisionConfig {
            network: PathBuf::new(),
            ensemble: Vec::new(),
            encoder: PathBuf::from("../models/derived/small_stem.onnx"),
            head: PathBuf::from("../models/derived/small_trunk.onnx"),
            rule: Rule::default(),
            presence: None,
            intra_threads: Count::literal(1),
        }
    }
}

/// One row of the battery policy: at or below `level` percent, while discharging, the
/// threshold is at least `min_threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatteryStep {
    pub level: u8,
    pub min_threshold: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Liveness {
    #[default]
    Auto,
    Live,
    Replay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Optimization {
    Disable,
    Basic,
    Extended,
    #[default]
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageEncodingChoice {
    #[default]
    Jpeg,
    Raw,
}

/// Paths to PEM files (worker.toml `[tls]` / edge.toml `[remote.tls]`).
///
/// The same shape serves both sides: `ca_cert` is the CA the peer must be signed by, `cert`
/// and `key` are this side's own identity.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsPaths {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[ingest]`. `pipeline` has no default: it must be set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub pipeline: PathBuf,
    pub live: Liveness,
    /// Threads per software decoder; 0 leaves the decoder's own choice.
    pub decoder_threads: u32,
    /// Frames taken from the source before the run ends as at end of stream; 0: no limit.
    pub max_frames: u64,
    /// Seconds a recorded source may take to make its first frame before the run fails.
    pub first_frame_timeout_s: u64,
    #[serde(deserialize_with = "scalar_strings")]
    pub params: BTreeMap<String, String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            pipeline: PathBuf::new(),
            live: Liveness::default(),
            decoder_threads: 1,
            max_frames: 0,
            first_frame_timeout_s: 20,
            params: BTreeMap::new(),
        }
    }
}

/// Pipeline parameters are substituted as text, but `width = 640` should not need quotes.
fn scalar_strings<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, toml::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => Ok((k, s)),
            toml::Value::Integer(i) => Ok((k, i.to_string())),
            toml::Value::Float(f) => Ok((k, f.to_string())),
            toml::Value::Boolean(b) => Ok((k, b.to_string())),
            other => Err(D::Error::custom(format!("must hold strings, numbers or booleans ({k} is {})", other.type_str()))),
        })
        .collect()
}

/// `[model]` of the edge, `[models.NAME]` of the worker: an ONNX Runtime session. `manifest`
/// has no default: it must be set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    pub manifest: PathBuf,
    pub intra_threads: Count<64>,
    pub inter_threads: Count<64>,
    pub optimization: Optimization,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            manifest: PathBuf::new(),
            intra_threads: Count::literal(2),
            inter_threads: Count::literal(1),
            optimization: Optimization::default(),
        }
    }
}

/// `[pipeline]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub queue_capacity: Count<1024>,
    pub reorder_window: Count<100_000>,
    /// Bound on the memory of all frames in flight, pixels and class maps (MiB).
    pub max_frame_mib_in_flight: Count<65_536>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            queue_capacity: Count::literal(4),
            reorder_window: Count::literal(256),
            max_frame_mib_in_flight: Count::literal(32),
        }
    }
}

impl PipelineConfig {
    pub fn max_frame_bytes_in_flight(&self) -> u64 {
        self.max_frame_mib_in_flight.get() as u64 * 1024 * 1024
    }
}

/// `[output]`. `dir` has no default: it must be set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    pub dir: PathBuf,
    pub records: bool,
    pub masks: bool,
    pub overlay: bool,
    pub overlay_alpha: f32,
    pub overlay_encoder: String,
    /// Largest overlay video; larger frames are scaled down to fit (aspect ratio kept).
    pub overlay_max_width: Count<16384>,
    pub overlay_max_height: Count<16384>,
    /// Period of the `metrics.jsonl` samples (queue depths, remote health); 0 turns them off.
    pub metrics_interval_ms: Millis,
    /// Length of the windows in which `summary.json` counts where frames went.
    pub route_window_s: Seconds,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            dir: PathBuf::new(),
            records: true,
            masks: false,
            overlay: true,
            overlay_alpha: 0.5,
            overlay_encoder: "videoconvert ! openh264enc ! h264parse ! mp4mux".to_string(),
            overlay_max_width: Count::literal(1280),
            overlay_max_height: Count::literal(720),
            metrics_interval_ms: Millis::new(1000),
            route_window_s: Seconds::new(10),
        }
    }
}

/// `[remote]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteConfig {
    pub routing: Routing,
    pub every_nth: Count<{ usize::MAX }>,
    pub workers: Vec<WorkerAddr>,
    pub server_name: String,
    pub model: String,
    pub deadline_ms: Millis,
    pub max_in_flight: Count<1024>,
    pub image_encoding: ImageEncodingChoice,
    pub jpeg_quality: Count<100>,
    pub connect_timeout_ms: Millis,
    pub reconnect_min_ms: Millis,
    pub reconnect_max_ms: Millis,
    pub tls: Option<TlsPaths>,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            routing: Routing::default(),
            every_nth: Count::literal(2),
            workers: Vec::new(),
            server_name: "localhost".to_string(),
            model: "large".to_string(),
            deadline_ms: Millis::new(500),
            max_in_flight: Count::literal(8),
            image_encoding: ImageEncodingChoice::default(),
            jpeg_quality: Count::literal(90),
            connect_timeout_ms: Millis::new(1000),
            reconnect_min_ms: Millis::new(100),
            reconnect_max_ms: Millis::new(5000),
            tls: None,
        }
    }
}

/// `[metrics]` of the edge and the worker: the Prometheus endpoint (`/metrics`, `/healthz`).
/// Off unless `listen` is set: an open port is the operator's decision (firewall, several
/// instances on one host), not a default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(deserialize_with = "optional_ip_port")]
    pub listen: Option<SocketAddr>,
}

/// `[health]` of the edge: when the pipeline counts as stuck (the systemd watchdog is then no
/// longer fed and `/healthz` answers 503).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeHealthConfig {
    /// Longest a frame may be in the pipeline with none coming out (beyond `remote.deadline_ms`
    /// when frames go remote: a frame may wait that long for the worker), and longest a recorded
    /// source may deliver nothing.
    pub stall_s: Seconds,
    /// Longest a live source may deliver nothing; 0: a silent live source is idle, not stuck.
    pub live_silence_s: Seconds,
}

impl Default for EdgeHealthConfig {
    fn default() -> Self {
        EdgeHealthConfig { stall_s: Seconds::new(10), live_silence_s: Seconds::new(0) }
    }
}

/// `[health]` of the worker: frames waiting for a batch with none taken for `stall_s` means
/// the worker is stuck.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerHealthConfig {
    pub stall_s: Seconds,
}

impl Default for WorkerHealthConfig {
    fn default() -> Self {
        WorkerHealthConfig { stall_s: Seconds::new(10) }
    }
}

/// `[control]`: the threshold of `remote.routing = "threshold"` and what moves it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    pub mode: ControlMode,
    pub score: ScoreChoice,
    pub constant_score: f32,
    /// The fixed threshold, and where the others start.
    pub threshold: f32,
    pub threshold_min: f32,
    pub threshold_max: f32,
    /// Between two steps of the controller (and reads of CPU and battery).
    pub interval_ms: Millis,
    /// Threshold per unit of error, and per unit of error and second.
    pub kp: f32,
    pub ki: f32,
    /// Largest change of the threshold per second.
    pub max_rate: f32,
    /// Highest share of frames to send remote (budget and adaptive modes).
    pub remote_budget: f32,
    /// Frames waiting for the small network the adaptive mode holds to.
    pub target_local_queue: f32,
    /// Age of a local frame when its mask is ready the adaptive mode holds to; 0 = not used.
    pub target_latency_ms: Millis,
    /// CPU utilisation above which the CPU counts as saturated, and how strongly that raises the threshold (0 = not at all).
    pub cpu_high: f32,
    pub cpu_weight: f32,
    /// Round-trip time, as a share of remote.deadline_ms, above which the remote counts as slow.
    pub rtt_high: f32,
    /// Share of remote frames falling back above which the remote counts as failing.
    pub max_fallback_rate: f32,
    /// Adaptive mode: a frame that would wait behind more than `target_local_queue` frames, or
    /// behind one already later than `target_latency_ms`, goes remote instead.
    pub spill: bool,
    /// Consecutive remote failures that open the circuit breaker, and how long it stays open.
    pub breaker_failures: Count<100_000>,
    pub breaker_cooldown_ms: Millis,
    /// Where the batteries are (`/sys/class/power_supply`); none there = on mains.
    pub power_supply_dir: PathBuf,
    pub battery: Vec<BatteryStep>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            mode: ControlMode::default(),
            score: ScoreChoice::default(),
            constant_score: 0.5,
            threshold: 0.3,
            threshold_min: 0.0,
            threshold_max: 1.0,
            interval_ms: Millis::new(200),
            kp: 0.2,
            ki: 0.5,
            max_rate: 0.5,
            remote_budget: 1.0,
            target_local_queue: 2.0,
            target_latency_ms: Millis::new(150),
            cpu_high: 0.9,
            cpu_weight: 0.5,
            rtt_high: 0.6,
            max_fallback_rate: 0.05,
            spill: true,
            breaker_failures: Count::literal(5),
            breaker_cooldown_ms: Millis::new(2000),
            power_supply_dir: PathBuf::from("/sys/class/power_supply"),
            battery: vec![BatteryStep { level: 30, min_threshold: 0.6 }, BatteryStep { level: 15, min_threshold: 0.9 }],
        }
    }
}

/// Everything the edge service needs: `config/edge.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    pub ingest: IngestConfig,
    pub model: SessionConfig,
    pub pipeline: PipelineConfig,
    pub output: OutputConfig,
    pub remote: RemoteConfig,
    pub health: EdgeHealthConfig,
    pub metrics: MetricsConfig,
    pub control: ControlConfig,
    pub decision: DecisionConfig,
}

/// `[batching]` of the worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingConfig {
    pub max_batch: Count<64>,
    pub max_wait_ms: Millis,
    pub max_queue: Count<100_000>,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig { max_batch: Count::literal(4), max_wait_ms: Millis::new(5), max_queue: Count::literal(64) }
    }
}

/// Everything the remote worker needs: `config/worker.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    #[serde(deserialize_with = "ip_port")]
    pub listen: SocketAddr,
    /// Model name clients ask for → session settings of the network serving it.
    pub models: BTreeMap<String, SessionConfig>,
    pub batching: BatchingConfig,
    pub tls: TlsPaths,
    pub max_message_mib: Count<256>,
    /// Between "worker status" log lines; 0 turns them off.
    pub status_interval_s: Seconds,
    pub health: WorkerHealthConfig,
    pub metrics: MetricsConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            models: BTreeMap::new(),
            batching: BatchingConfig::default(),
            tls: TlsPaths::default(),
            max_message_mib: Count::literal(16),
            status_interval_s: Seconds::new(10),
            health: WorkerHealthConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// Reads a TOML file and applies `section.key=value` overrides (from CLI flags) on the raw
/// table, so that overrides go through exactly the same checks as the file.
fn read_table(path: &Path, overrides: &[String]) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
    for item in overrides {
        apply_override(&mut table, item)?;
    }
    Ok(table)
}

/// Deserializes `table`; each value refused on the way is noted as a [`Problem`] and removed,
/// so its section's default takes its place and parsing goes on to the next problem.
fn parse_table<T: DeserializeOwned>(mut table: toml::Table, problems: &mut Vec<Problem>) -> Option<T> {
    loop {
        let error = match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table.clone())) {
            Ok(value) => return Some(value),
            Err(error) => error,
        };
        let segments: Vec<String> = error
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                _ => None,
            })
            .collect();
        let message = error.inner().message().to_string();
        // Our own types say what is wrong as a predicate ("is outside 1..=64"); serde's messages
        // ("unknown field `x`, expected ...") are quoted after one.
        let problem =
            if message.starts_with("is ") || message.starts_with("must ") { message } else { format!("is not accepted: {message}") };
        let value = lookup(&table, &segments).map_or_else(|| "(missing)".to_string(), show);
        problems.push(Problem { key: error.path().to_string(), value, problem });
        if !remove(&mut table, &segments) {
            return None;
        }
    }
}

fn lookup<'t>(table: &'t toml::Table, segments: &[String]) -> Option<&'t toml::Value> {
    let (first, rest) = segments.split_first()?;
    rest.iter().try_fold(table.get(first)?, |value, segment| match value {
        toml::Value::Table(t) => t.get(segment),
        toml::Value::Array(a) => a.get(segment.parse::<usize>().ok()?),
        _ => None,
    })
}

/// Removes the value at `segments`; false when there is nothing there to remove.
fn remove(table: &mut toml::Table, segments: &[String]) -> bool {
    let Some((last, parents)) = segments.split_last() else { return false };
    let mut cursor = table;
    for segment in parents {
        // A refused array element: the whole array goes.
        if cursor.get(segment).is_some_and(toml::Value::is_array) {
            return cursor.remove(segment).is_some();
        }
        match cursor.get_mut(segment) {
            Some(toml::Value::Table(t)) => cursor = t,
            _ => return false,
        }
    }
    cursor.remove(last).is_some()
}

/// A value as a user would write it on the command line: strings without quotes.
fn show(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `ingest.params.location=/x.mp4` → sets that key; the value is parsed as TOML when it is a
/// valid TOML value (numbers, booleans, arrays) and taken as a plain string otherwise.
pub fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), ConfigError> {
    let (key, raw) = item.split_once('=').ok_or_else(|| ConfigError::BadOverride(item.to_string()))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::BadOverride(item.to_string()));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut cursor = table;
    for part in &parts[..parts.len() - 1] {
        let entry = cursor.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry.as_table_mut().ok_or_else(|| ConfigError::BadOverride(item.to_string()))?;
    }
    cursor.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Collects every failed check with the key it concerns.
#[derive(Default)]
pub(crate) struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    pub(crate) fn check(&mut self, ok: bool, key: &str, value: impl fmt::Display, problem: &str) {
        // A value refused while parsing was replaced by its default: checking the default would
        // only blame the user for something they did not write.
        let reported = self.problems.iter().any(|p| within(&p.key, key) || within(key, &p.key));
        if !ok && !reported {
            self.problems.push(Problem { key: key.to_string(), value: value.to_string(), problem: problem.to_string() });
        }
    }

    /// A file that must be given and must exist; `hint` says where to find one.
    pub(crate) fn file(&mut self, key: &str, path: &Path, hint: &str) {
        if path.as_os_str().is_empty() {
            self.check(false, key, "(missing)", &format!("must be set ({hint})"));
        } else {
            self.check(path.is_file(), key, path.display(), &format!("does not exist ({hint})"));
        }
    }

    fn in_range(&mut self, key: &str, value: u64, range: std::ops::RangeInclusive<u64>) {
        let problem = format!("is outside {}..={}", range.start(), range.end());
        self.check(range.contains(&value), key, value, &problem);
    }

    fn tls(&mut self, section: &str, t: &TlsPaths) {
        for (name, p) in [("ca_cert", &t.ca_cert), ("cert", &t.cert), ("key", &t.key)] {
            self.file(&format!("{section}.{name}"), p, "run `edgeseg certs` for a development PKI");
        }
    }

    fn finish<T>(self, path: &Path, parsed: Option<T>) -> Result<T, ConfigError> {
        match parsed {
            Some(value) if self.problems.is_empty() => Ok(value),
            _ => Err(ConfigError::Invalid { path: path.to_path_buf(), problems: self.problems }),
        }
    }
}

/// Whether `key` is `outer` or a part of it (`remote.workers[0]` of `remote.workers`).
fn within(key: &str, outer: &str) -> bool {
    key.strip_prefix(outer).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// Joins relative paths to the config's folder and removes `.`/`..` lexically, so messages
/// and outputs show plain paths. An empty path (a key not set) stays empty.
pub(crate) fn resolve(base: &Path, p: &mut PathBuf) {
    use std::path::Component;
    if p.as_os_str().is_empty() {
        return;
    }
    let joined = if p.is_relative() { base.join(&*p) } else { p.clone() };
    let mut clean = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(clean.components().next_back(), Some(Component::Normal(_))) => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    *p = if clean.as_os_str().is_empty() { PathBuf::from(".") } else { clean };
}

fn resolve_tls(base: &Path, t: &mut TlsPaths) {
    resolve(base, &mut t.ca_cert);
    resolve(base, &mut t.cert);
    resolve(base, &mut t.key);
}

fn config_dir(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Reads, parses and checks one config file: `prepare` resolves its paths, `validate` adds the
/// checks that span keys or touch the disk.
pub(crate) fn load<T: DeserializeOwned>(
    path: &Path,
    overrides: &[String],
    prepare: impl FnOnce(&mut T, &Path),
    validate: impl FnOnce(&T, &mut Checker),
) -> Result<T, ConfigError> {
    let table = read_table(path, overrides)?;
    let mut checker = Checker::default();
    let mut parsed = parse_table::<T>(table, &mut checker.problems);
    if let Some(config) = parsed.as_mut() {
        prepare(config, &config_dir(path));
        validate(config, &mut checker);
    }
    checker.finish(path, parsed)
}

impl EdgeConfig {
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        load(path, overrides, EdgeConfig::resolve_paths, EdgeConfig::validate)
    }

    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.ingest.pipeline);
        // `location` is the file parameter of file.pipeline: a path like the others.
        if let Some(location) = self.ingest.params.get_mut("location") {
            let mut p = PathBuf::from(&*location);
            resolve(base, &mut p);
            *location = p.to_string_lossy().into_owned();
        }
        resolve(base, &mut self.model.manifest);
        resolve(base, &mut self.output.dir);
        if let Some(t) = self.remote.tls.as_mut() {
            resolve_tls(base, t);
        }
        resolve(base, &mut self.control.power_supply_dir);
        for p in
            [&mut self.decision.network, &mut self.decision.encoder, &mut self.decision.head].into_iter().chain(&mut self.decision.ensemble)
        {
            resolve(base, p);
        }
    }

    fn validate(&self, c: &mut Checker) {
        c.file("ingest.pipeline", &self.ingest.pipeline, "see pipelines/ for ready descriptions");
        c.file("model.manifest", &self.model.manifest, "see models/*.toml");
        let threads = self.ingest.decoder_threads;
        c.check(threads <= 64, "ingest.decoder_threads", threads, "is outside 0..=64 (0 = the decoder's own choice)");
        let first = self.ingest.first_frame_timeout_s;
        c.check((1..=3600).contains(&first), "ingest.first_frame_timeout_s", first, "is outside 1..=3600");
        c.check(!self.output.dir.as_os_str().is_empty(), "output.dir", "(missing)", "must be set");
        c.check((0.0..=1.0).contains(&self.output.overlay_alpha), "output.overlay_alpha", self.output.overlay_alpha, "is outside 0..=1");
        let interval = self.output.metrics_interval_ms.units();
        c.check(
            interval == 0 || (10..=3_600_000).contains(&interval),
            "output.metrics_interval_ms",
            interval,
            "must be 0 (off) or within 10..=3600000",
        );
        c.check(!self.output.overlay_encoder.trim().is_empty(), "output.overlay_encoder", "\"\"", "is empty");
        let r = &self.remote;
        c.check((1..=600_000).contains(&r.deadline_ms.units()), "remote.deadline_ms", r.deadline_ms, "is outside 1..=600000");
        c.check(
            r.reconnect_min_ms.units() >= 1 && r.reconnect_min_ms <= r.reconnect_max_ms,
            "remote.reconnect_min_ms",
            r.reconnect_min_ms,
            "must be at least 1 and at most remote.reconnect_max_ms",
        );
        c.check(r.connect_timeout_ms.units() >= 1, "remote.connect_timeout_ms", r.connect_timeout_ms, "must be at least 1");
        c.in_range("health.stall_s", self.health.stall_s.units(), 1..=3600);
        c.in_range("health.live_silence_s", self.health.live_silence_s.units(), 0..=86_400);
        if r.routing != Routing::Local {
            c.check(!r.workers.is_empty(), "remote.workers", "[]", "is empty but remote.routing sends frames to a worker");
            match &r.tls {
                Some(t) => c.tls("remote.tls", t),
                None => c.check(false, "remote.tls", "(missing)", "must be set when remote.routing is not \"local\""),
            }
        }
        let window = self.output.route_window_s.units();
        c.check((1..=3600).contains(&window), "output.route_window_s", window, "is outside 1..=3600");
        self.control.validate(c);
        if self.control.score == ScoreChoice::DecisionNetwork {
            self.decision.validate(c);
        }
    }
}

impl DecisionConfig {
    fn validate(&self, c: &mut Checker) {
        let train = "train one with `edgeseg dn train --config config/dn.toml`; scripts/demo trains one on its video";
        c.file("decision.network", &self.network, train);
        for (i, member) in self.ensemble.iter().enumerate() {
            c.file(&format!("decision.ensemble[{i}]"), member, train);
        }
        let split = "scripts/fixtures makes it with scripts/split_small.py when the real small network is there";
        c.file("decision.encoder", &self.encoder, split);
        c.file("decision.head", &self.head, split);
        if let Some(presence) = self.presence {
            c.check((0.0..=1.0).contains(&presence), "decision.presence", presence, "is outside 0..=1");
        }
    }
}

impl ControlConfig {
    fn validate(&self, c: &mut Checker) {
        let unit = 0.0..=1.0;
        let fractions = [
            ("control.constant_score", self.constant_score),
            ("control.threshold", self.threshold),
            ("control.threshold_min", self.threshold_min),
            ("control.threshold_max", self.threshold_max),
            ("control.remote_budget", self.remote_budget),
            ("control.cpu_weight", self.cpu_weight),
            ("control.max_fallback_rate", self.max_fallback_rate),
        ];
        for (key, value) in fractions {
            c.check(unit.contains(&value), key, value, "is outside 0..=1");
        }
        let bounds = format!("control.threshold_min..=control.threshold_max ({}..={})", self.threshold_min, self.threshold_max);
        // Their order only means something once each bound is a fraction.
        let fractions = [self.threshold_min, self.threshold_max].iter().all(|b| unit.contains(b));
        if fractions && self.threshold_min <= self.threshold_max {
            let within = (self.threshold_min..=self.threshold_max).contains(&self.threshold);
            c.check(within, "control.threshold", self.threshold, &format!("must lie within {bounds}"));
        } else if fractions {
            c.check(
                false,
                "control.threshold_min",
                self.threshold_min,
                &format!("is above control.threshold_max ({})", self.threshold_max),
            );
        }
        let interval = self.interval_ms.units();
        c.check((10..=60_000).contains(&interval), "control.interval_ms", interval, "is outside 10..=60000");
        for (key, value) in [("control.kp", self.kp), ("control.ki", self.ki)] {
            c.check(value.is_finite() && (0.0..=100.0).contains(&value), key, value, "is outside 0..=100");
        }
        c.check(
            self.max_rate > 0.0 && self.max_rate <= 100.0,
            "control.max_rate",
            self.max_rate,
            "is outside (0, 100] (threshold per second)",
        );
        if self.mode != ControlMode::Fixed {
            c.check(
                self.kp > 0.0 || self.ki > 0.0,
                "control.kp",
                self.kp,
                &format!("and control.ki are both 0: the {} mode could not move the threshold", self.mode.name()),
            );
        }
        c.check(
            self.target_local_queue > 0.0 && self.target_local_queue <= 1024.0,
            "control.target_local_queue",
            self.target_local_queue,
            "is outside (0, 1024] (frames)",
        );
        c.check(self.cpu_high > 0.0 && self.cpu_high < 1.0, "control.cpu_high", self.cpu_high, "is outside (0, 1)");
        c.check(
            self.rtt_high > 0.0 && self.rtt_high <= 1.0,
            "control.rtt_high",
            self.rtt_high,
            "is outside (0, 1] (share of remote.deadline_ms)",
        );
        c.check(self.max_fallback_rate > 0.0, "control.max_fallback_rate", self.max_fallback_rate, "must be above 0");
        c.check(self.breaker_cooldown_ms.units() >= 1, "control.breaker_cooldown_ms", self.breaker_cooldown_ms, "must be at least 1");
        for (i, step) in self.battery.iter().enumerate() {
            c.check(step.level <= 100, &format!("control.battery[{i}].level"), step.level, "is outside 0..=100 (percent)");
            c.check(
                unit.contains(&step.min_threshold),
                &format!("control.battery[{i}].min_threshold"),
                step.min_threshold,
                "is outside 0..=1",
            );
        }
        // Sorted as the policy reads: each step lower and at least as strict as the one before.
        for (i, pair) in self.battery.windows(2).enumerate() {
            let (above, below) = (pair[0], pair[1]);
            c.check(
                below.level < above.level,
                &format!("control.battery[{}].level", i + 1),
                below.level,
                &format!("must be below control.battery[{i}].level ({}): list the steps from the highest level down", above.level),
            );
            c.check(
                below.min_threshold >= above.min_threshold,
                &format!("control.battery[{}].min_threshold", i + 1),
                below.min_threshold,
                &format!(
                    "is below control.battery[{i}].min_threshold ({}): a lower battery must not allow a lower threshold",
                    above.min_threshold
                ),
            );
        }
    }
}

impl WorkerConfig {
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        load(path, overrides, WorkerConfig::resolve_paths, WorkerConfig::validate)
    }

    fn resolve_paths(&mut self, base: &Path) {
        for m in self.models.values_mut() {
            resolve(base, &mut m.manifest);
        }
        resolve_tls(base, &mut self.tls);
    }

    fn validate(&self, c: &mut Checker) {
        c.check(!self.models.is_empty(), "models", "{}", "is empty: name at least one model, e.g. [models.large]");
        for (name, m) in &self.models {
            c.file(&format!("models.{name}.manifest"), &m.manifest, "see models/*.toml");
        }
        let wait = self.batching.max_wait_ms;
        c.check(wait.units() <= 1000, "batching.max_wait_ms", wait, "is above 1000");
        let status = self.status_interval_s;
        c.check(status.units() <= 3600, "status_interval_s", status, "is above 3600 (0 turns status lines off)");
        c.in_range("health.stall_s", self.health.stall_s.units(), 1..=3600);
        c.tls("tls", &self.tls);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_parses_typed_values_and_plain_strings() {
        let mut t = toml::Table::new();
        apply_override(&mut t, "a.b=3").unwrap();
        apply_override(&mut t, "a.c=/tmp/x y.mp4").unwrap();
        apply_override(&mut t, "a.d=true").unwrap();
        let a = t["a"].as_table().unwrap();
        assert_eq!(a["b"].as_integer(), Some(3));
        assert_eq!(a["c"].as_str(), Some("/tmp/x y.mp4"));
        assert_eq!(a["d"].as_bool(), Some(true));
        assert!(apply_override(&mut t, "novalue").is_err());
        assert!(apply_override(&mut t, "a..b=1").is_err());
    }

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// An edge config in `dir` whose paths all exist, with `extra` lines appended.
    fn edge_file(dir: &Path, extra: &str) -> PathBuf {
        let pem = dir.join("x.pem");
        std::fs::write(&pem, "").unwrap();
        let text = format!(
            "[ingest]\npipeline = \"{}\"\n[model]\nmanifest = \"{}\"\n[output]\ndir = \"out\"\n\
             [remote.tls]\nca_cert = \"{pem}\"\ncert = \"{pem}\"\nkey = \"{pem}\"\n{extra}",
            root().join("pipelines/file.pipeline").display(),
            root().join("models/small.toml").display(),
            pem = pem.display(),
        );
        let path = dir.join("edge.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn problems(error: ConfigError) -> Vec<Problem> {
        match error {
            ConfigError::Invalid { problems, .. } => problems,
            other => panic!("expected invalid values, got {other}"),
        }
    }

    #[test]
    fn the_shipped_configs_load_and_a_minimal_one_takes_every_default() {
        let edge = EdgeConfig::load(&root().join("config/edge.toml"), &[]).expect("config/edge.toml");
        assert_eq!(edge.pipeline.queue_capacity.get(), 4);
        assert_eq!(edge.remote.workers, vec!["127.0.0.1:7443".parse::<WorkerAddr>().unwrap()]);
        assert_eq!(edge.remote.deadline_ms.get(), Duration::from_millis(500));
        let dir = tempfile::tempdir().unwrap();
        let minimal = EdgeConfig::load(&edge_file(dir.path(), ""), &[]).unwrap();
        let defaults = RemoteConfig::default();
        assert_eq!((minimal.remote.every_nth, minimal.remote.max_in_flight), (defaults.every_nth, defaults.max_in_flight));
        assert_eq!(minimal.output.metrics_interval_ms.period(), Some(Duration::from_secs(1)));
        assert_eq!(minimal.model.intra_threads.get(), 2);
        assert_eq!(minimal.pipeline.max_frame_bytes_in_flight(), 32 << 20);
        assert_eq!(minimal.ingest.decoder_threads, 1);
        assert_eq!(minimal.ingest.max_frames, 0, "no limit");
        assert_eq!(minimal.output.dir, dir.path().join("out"), "relative to the file");
        assert_eq!(minimal.metrics.listen, None, "no port is opened unless asked for");
        assert_eq!((minimal.health.stall_s.get(), minimal.health.live_silence_s.period()), (Duration::from_secs(10), None));
    }

    #[test]
    fn the_metrics_endpoint_is_an_address_or_empty_for_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = edge_file(dir.path(), "[metrics]\nlisten = \"127.0.0.1:9464\"\n");
        let on = EdgeConfig::load(&path, &[]).unwrap();
        assert_eq!(on.metrics.listen, Some(SocketAddr::from(([127, 0, 0, 1], 9464))));
        let off = EdgeConfig::load(&path, &["metrics.listen=".to_string()]).unwrap();
        assert_eq!(off.metrics.listen, None);
    }

    #[test]
    fn a_missing_ensemble_member_is_named_with_its_place_in_the_list() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["dn.toml", "stem.onnx", "trunk.onnx", "seed2.toml"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let decision = "[control]\nscore = \"decision-network\"\n[decision]\nnetwork = \"dn.toml\"\nencoder = \"stem.onnx\"\n\
                        head = \"trunk.onnx\"\nensemble = [\"seed2.toml\", \"seed3.toml\"]\n";
        let found = problems(EdgeConfig::load(&edge_file(dir.path(), decision), &[]).unwrap_err());
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["decision.ensemble[1]"], "{found:?}");
        assert!(found[0].value.ends_with("seed3.toml") && found[0].problem.contains("does not exist"), "{found:?}");
    }

    #[test]
    fn each_bad_edge_value_is_named_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = edge_file(dir.path(), "");
        let cases: &[(&str, &str, &str)] = &[
            ("pipeline.queue_capacity=0", "pipeline.queue_capacity = 0", "is outside 1..=1024"),
            ("pipeline.queue_capacity=5000", "pipeline.queue_capacity = 5000", "is outside 1..=1024"),
            ("pipeline.reorder_window=-1", "pipeline.reorder_window = -1", "is outside 1..=100000"),
            ("pipeline.max_frame_mib_in_flight=0", "pipeline.max_frame_mib_in_flight = 0", "is outside 1..=65536"),
            ("ingest.decoder_threads=65", "ingest.decoder_threads = 65", "is outside 0..=64"),
            ("ingest.decoder_threads=-1", "ingest.decoder_threads = -1", "is not accepted"),
            ("ingest.first_frame_timeout_s=0", "ingest.first_frame_timeout_s = 0", "is outside 1..=3600"),
            ("model.intra_threads=0", "model.intra_threads = 0", "is outside 1..=64"),
            ("model.inter_threads=65", "model.inter_threads = 65", "is outside 1..=64"),
            ("model.optimization=\"most\"", "model.optimization = most", "unknown variant"),
            ("model.manifest=/no/such.toml", "model.manifest = /no/such.toml", "does not exist"),
            ("ingest.live=\"sometimes\"", "ingest.live = sometimes", "unknown variant"),
            ("ingest.params.size=[1]", "ingest.params = ", "size is array"),
            ("output.overlay_alpha=1.5", "output.overlay_alpha = 1.5", "is outside 0..=1"),
            ("output.metrics_interval_ms=5", "output.metrics_interval_ms = 5", "must be 0 (off)"),
            ("output.metrics_interval_ms=-5", "output.metrics_interval_ms = -5", "is negative"),
            ("output.overlay_encoder=\" \"", "output.overlay_encoder = \"\"", "is empty"),
            ("output.colour=true", "output.colour = true", "unknown field `colour`"),
            ("remote.every_nth=0", "remote.every_nth = 0", "must be at least 1"),
            ("remote.deadline_ms=0", "remote.deadline_ms = 0", "is outside 1..=600000"),
            ("remote.max_in_flight=0", "remote.max_in_flight = 0", "is outside 1..=1024"),
            ("remote.jpeg_quality=101", "remote.jpeg_quality = 101", "is outside 1..=100"),
            ("remote.connect_timeout_ms=0", "remote.connect_timeout_ms = 0", "must be at least 1"),
            ("remote.reconnect_min_ms=9000", "remote.reconnect_min_ms = 9000", "at most remote.reconnect_max_ms"),
            ("remote.workers=[\"nohost\"]", "remote.workers[0] = nohost", "is not host:port"),
            ("remote.image_encoding=\"png\"", "remote.image_encoding = png", "unknown variant"),
            ("remote.routing=\"remote\"", "remote.workers = []", "is empty but remote.routing sends frames"),
            ("remote.tls.cert=/no/cert.pem", "remote.tls.cert = /no/cert.pem", "edgeseg certs"),
            ("ingest.pipeline=\"\"", "ingest.pipeline = (missing)", "must be set"),
            ("health.stall_s=0", "health.stall_s = 0", "is outside 1..=3600"),
            ("health.live_silence_s=100000", "health.live_silence_s = 100000", "is outside 0..=86400"),
            ("metrics.listen=\"localhost:9464\"", "metrics.listen = localhost:9464", "is not an ip:port socket address"),
            ("metrics.port=9464", "metrics.port = 9464", "unknown field `port`"),
        ];
        for (set, key_value, problem) in cases {
            let mut overrides = vec![set.to_string()];
            if !set.starts_with("remote.routing") {
                // So that the [remote] keys are checked as they are when in use.
                overrides.extend(["remote.routing=\"every-nth\"".to_string(), "remote.workers=[\"localhost:7443\"]".to_string()]);
            }
            if set.starts_with("remote.workers") {
                overrides.pop();
            }
            let found = problems(EdgeConfig::load(&path, &overrides).expect_err(set));
            assert_eq!(found.len(), 1, "{set}: {found:?}");
            let message = found[0].to_string();
            assert!(message.starts_with(key_value) && message.contains(problem), "{set}: {message:?}");
        }
    }

    #[test]
    fn the_shipped_control_section_documents_every_key_with_its_default() {
        let path = root().join("config/edge.toml");
        let table: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut keys: Vec<&str> = table["control"].as_table().expect("[control]").keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut every_key = [
            "mode",
            "score",
            "constant_score",
            "threshold",
            "threshold_min",
            "threshold_max",
            "interval_ms",
            "kp",
            "ki",
            "max_rate",
            "remote_budget",
            "target_local_queue",
            "target_latency_ms",
            "cpu_high",
            "cpu_weight",
            "rtt_high",
            "max_fallback_rate",
            "spill",
            "breaker_failures",
            "breaker_cooldown_ms",
            "power_supply_dir",
            "battery",
        ];
        every_key.sort_unstable();
        assert_eq!(keys, every_key);
        assert_eq!(EdgeConfig::load(&path, &[]).unwrap().control, ControlConfig::default(), "the file shows the defaults");
    }

    #[test]
    fn each_bad_control_value_is_named_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = edge_file(dir.path(), "");
        let adaptive = "control.mode=\"adaptive\"";
        let cases: &[(&[&str], &str, &str)] = &[
            (&["control.mode=\"pid\""], "control.mode = pid", "unknown variant"),
            (&["control.score=\"magic\""], "control.score = magic", "unknown variant"),
            (&["control.threshold=1.4"], "control.threshold = 1.4", "is outside 0..=1"),
            (
                &["control.threshold=0.1", "control.threshold_min=0.2"],
                "control.threshold = 0.1",
                "must lie within control.threshold_min..=control.threshold_max (0.2..=1)",
            ),
            (
                &["control.threshold_min=0.8", "control.threshold_max=0.5"],
                "control.threshold_min = 0.8",
                "is above control.threshold_max (0.5)",
            ),
            (&["control.threshold_max=-0.5"], "control.threshold_max = -0.5", "is outside 0..=1"),
            (&["control.constant_score=2"], "control.constant_score = 2", "is outside 0..=1"),
            (&["control.interval_ms=5"], "control.interval_ms = 5", "is outside 10..=60000"),
            (&["control.kp=-1"], "control.kp = -1", "is outside 0..=100"),
            (&["control.ki=1000"], "control.ki = 1000", "is outside 0..=100"),
            (&[adaptive, "control.kp=0", "control.ki=0"], "control.kp = 0", "and control.ki are both 0: the adaptive mode could not move"),
            (&["control.max_rate=0"], "control.max_rate = 0", "is outside (0, 100]"),
            (&["control.remote_budget=1.5"], "control.remote_budget = 1.5", "is outside 0..=1"),
            (&["control.target_local_queue=0"], "control.target_local_queue = 0", "is outside (0, 1024]"),
            (&["control.target_latency_ms=-3"], "control.target_latency_ms = -3", "is negative"),
            (&["control.cpu_high=1"], "control.cpu_high = 1", "is outside (0, 1)"),
            (&["control.cpu_weight=3"], "control.cpu_weight = 3", "is outside 0..=1"),
            (&["control.rtt_high=0"], "control.rtt_high = 0", "is outside (0, 1]"),
            (&["control.max_fallback_rate=0"], "control.max_fallback_rate = 0", "must be above 0"),
            (&["control.spill=\"yes\""], "control.spill = yes", "expected a boolean"),
            (&["control.breaker_failures=0"], "control.breaker_failures = 0", "is outside 1..=100000"),
            (&["control.breaker_cooldown_ms=0"], "control.breaker_cooldown_ms = 0", "must be at least 1"),
            (&["control.battery=[{level=120,min_threshold=0.5}]"], "control.battery[0].level = 120", "is outside 0..=100"),
            (&["control.battery=[{level=20,min_threshold=1.5}]"], "control.battery[0].min_threshold = 1.5", "is outside 0..=1"),
            (
                &["control.battery=[{level=15,min_threshold=0.6},{level=30,min_threshold=0.9}]"],
                "control.battery[1].level = 30",
                "must be below control.battery[0].level (15): list the steps from the highest level down",
            ),
            (
                &["control.battery=[{level=30,min_threshold=0.9},{level=15,min_threshold=0.6}]"],
                "control.battery[1].min_threshold = 0.6",
                "is below control.battery[0].min_threshold (0.9): a lower battery must not allow a lower threshold",
            ),
            (&["control.battery=[{level=20,threshold=0.5}]"], "control.battery", "unknown field `threshold`"),
            (&["control.gain=1"], "control.gain = 1", "unknown field `gain`"),
        ];
        for (set, key_value, problem) in cases {
            let overrides: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            let found = problems(EdgeConfig::load(&path, &overrides).expect_err(set[0]));
            assert_eq!(found.len(), 1, "{set:?}: {found:?}");
            let message = found[0].to_string();
            assert!(message.starts_with(key_value) && message.contains(problem), "{set:?}: {message:?}");
        }
        let fine = ["control.battery=[]", "control.threshold_min=0.3", "control.threshold_max=0.3", adaptive, "control.kp=0"];
        EdgeConfig::load(&path, &fine.map(String::from)).expect("an empty battery table, a single threshold, a pure I loop");
    }

    #[test]
    fn every_problem_of_a_file_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = edge_file(dir.path(), "[pipeline]\nqueue_capacity = 0\nreorder_windw = 3\n");
        let overrides = ["output.overlay_alpha=2".to_string(), "remote.every_nth=0".to_string(), "model.manifest=/no.toml".to_string()];
        let error = EdgeConfig::load(&path, &overrides).unwrap_err();
        let keys: Vec<String> = problems(error).into_iter().map(|p| p.key).collect();
        for key in ["pipeline.queue_capacity", "pipeline.reorder_windw", "remote.every_nth", "output.overlay_alpha", "model.manifest"] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        let message = EdgeConfig::load(&path, &overrides).unwrap_err().to_string();
        assert_eq!(message.lines().count(), 5, "{message}");
        assert!(message.lines().all(|l| l.starts_with(&path.display().to_string())), "every line names the file: {message}");
    }

    #[test]
    fn an_empty_file_names_every_key_that_must_be_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.toml");
        std::fs::write(&path, "").unwrap();
        let keys: Vec<String> = problems(EdgeConfig::load(&path, &[]).unwrap_err()).into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["ingest.pipeline", "model.manifest", "output.dir"]);
        let keys: Vec<String> = problems(WorkerConfig::load(&path, &[]).unwrap_err()).into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["models", "tls.ca_cert", "tls.cert", "tls.key"]);
    }

    #[test]
    fn each_bad_worker_value_is_named_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "").unwrap();
        let path = dir.path().join("worker.toml");
        let text = format!(
            "listen = \"127.0.0.1:0\"\n[models.large]\nmanifest = \"{}\"\n[tls]\nca_cert = \"{pem}\"\ncert = \"{pem}\"\nkey = \"{pem}\"\n",
            root().join("models/large.toml").display(),
            pem = pem.display()
        );
        std::fs::write(&path, text).unwrap();
        let config = WorkerConfig::load(&path, &[]).unwrap();
        assert_eq!(config.batching.max_wait_ms.get(), Duration::from_millis(5));
        assert_eq!(config.status_interval_s.period(), Some(Duration::from_secs(10)));
        let cases: &[(&str, &str, &str)] = &[
            ("listen=\"localhost\"", "listen = localhost", "is not an ip:port socket address"),
            ("batching.max_batch=0", "batching.max_batch = 0", "is outside 1..=64"),
            ("batching.max_wait_ms=1001", "batching.max_wait_ms = 1001", "is above 1000"),
            ("batching.max_queue=0", "batching.max_queue = 0", "is outside 1..=100000"),
            ("max_message_mib=300", "max_message_mib = 300", "is outside 1..=256"),
            ("status_interval_s=4000", "status_interval_s = 4000", "0 turns status lines off"),
            ("models.large.intra_threads=0", "models.large.intra_threads = 0", "is outside 1..=64"),
            ("models.large.manifest=/no.toml", "models.large.manifest = /no.toml", "does not exist"),
            ("tls.key=/no/worker.key", "tls.key = /no/worker.key", "edgeseg certs"),
            ("tls.kye=/no/worker.key", "tls.kye = /no/worker.key", "unknown field `kye`"),
            ("health.stall_s=4000", "health.stall_s = 4000", "is outside 1..=3600"),
            ("metrics.listen=\"9465\"", "metrics.listen = 9465", "is not an ip:port socket address"),
        ];
        for (set, key_value, problem) in cases {
            let found = problems(WorkerConfig::load(&path, &[set.to_string()]).expect_err(set));
            assert_eq!(found.len(), 1, "{set}: {found:?}");
            let message = found[0].to_string();
            assert!(message.starts_with(key_value) && message.contains(problem), "{set}: {message:?}");
        }
    }

    #[test]
    fn worker_addresses_need_a_host_and_a_port() {
        for good in ["127.0.0.1:7443", "localhost:7443", "[::1]:7443", "worker.example:1"] {
            assert_eq!(good.parse::<WorkerAddr>().unwrap().to_string(), good);
        }
        for bad in ["localhost", ":7443", "host:port", "host:70000", ""] {
            assert!(bad.parse::<WorkerAddr>().is_err(), "{bad:?}");
        }
        assert_eq!("127.0.0.1:7443".parse::<WorkerAddr>().unwrap().resolve().unwrap(), SocketAddr::from(([127, 0, 0, 1], 7443)));
    }

    #[test]
    fn tls_paths_parse_from_toml_and_reject_typos() {
        let paths: TlsPaths = toml::from_str("ca_cert = \"pki/ca.pem\"\ncert = \"pki/worker.pem\"\nkey = \"pki/worker.key\"\n").unwrap();
        assert_eq!(paths.key, PathBuf::from("pki/worker.key"));
        let typo = toml::from_str::<TlsPaths>("ca_cert = \"a\"\ncert = \"b\"\nkye = \"c\"\n");
        assert!(typo.is_err());
    }
}
