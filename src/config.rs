//! Configuration files (`config/edge.toml`, `config/worker.toml`): parsed with serde, then
//! checked value by value so that a wrong setting fails at start-up with the file and key named,
//! instead of surfacing later as an obscure runtime failure on a camera nobody is watching.
//!
//! Relative paths in a config file are resolved against the file's own directory, so a service
//! behaves the same whatever its working directory is.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::remote::tls::TlsPaths;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (pass an existing file with --config)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key} = {value} {problem}")]
    Invalid { path: PathBuf, key: String, value: String, problem: String },
    #[error("override `{0}` is not of the form section.key=value")]
    BadOverride(String),
}

/// How the edge decides, for now, which frames go to the remote worker. The decision network
/// replaces this with per-frame predicted IoU; until then these fixed policies let the remote
/// path be used and tested on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    Local,
    Remote,
    EveryNth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Liveness {
    Auto,
    Live,
    Replay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Optimization {
    Disable,
    Basic,
    Extended,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageEncodingChoice {
    Jpeg,
    Raw,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub pipeline: PathBuf,
    #[serde(default = "default_liveness")]
    pub live: Liveness,
    #[serde(default, deserialize_with = "scalar_strings")]
    pub params: BTreeMap<String, String>,
}

/// Pipeline parameters are substituted as text, but `width = 640` should not need quotes.
fn scalar_strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, toml::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => Ok((k, s)),
            toml::Value::Integer(i) => Ok((k, i.to_string())),
            toml::Value::Float(f) => Ok((k, f.to_string())),
            toml::Value::Boolean(b) => Ok((k, b.to_string())),
            other => {
                Err(serde::de::Error::custom(format!("ingest.params.{k} must be a string, number or boolean, not {}", other.type_str())))
            }
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    pub manifest: PathBuf,
    #[serde(default = "default_intra_threads")]
    pub intra_threads: usize,
    #[serde(default = "default_inter_threads")]
    pub inter_threads: usize,
    #[serde(default = "default_optimization")]
    pub optimization: Optimization,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    #[serde(default = "default_reorder_window")]
    pub reorder_window: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub dir: PathBuf,
    #[serde(default = "yes")]
    pub records: bool,
    #[serde(default)]
    pub masks: bool,
    #[serde(default = "yes")]
    pub overlay: bool,
    #[serde(default = "default_alpha")]
    pub overlay_alpha: f32,
    #[serde(default = "default_overlay_encoder")]
    pub overlay_encoder: String,
    /// Period of the `metrics.jsonl` samples (queue depths, remote health); 0 turns them off.
    #[serde(default = "default_metrics_interval_ms")]
    pub metrics_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    #[serde(default = "default_routing")]
    pub routing: Routing,
    #[serde(default = "default_every_nth")]
    pub every_nth: u64,
    #[serde(default)]
    pub workers: Vec<String>,
    #[serde(default = "default_server_name")]
    pub server_name: String,
    #[serde(default = "default_remote_model")]
    pub model: String,
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u32,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_image_encoding")]
    pub image_encoding: ImageEncodingChoice,
    #[serde(default = "default_jpeg_quality")]
    pub jpeg_quality: i32,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_backoff_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub reconnect_max_ms: u64,
    pub tls: Option<TlsPaths>,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            routing: default_routing(),
            every_nth: default_every_nth(),
            workers: Vec::new(),
            server_name: default_server_name(),
            model: default_remote_model(),
            deadline_ms: default_deadline_ms(),
            max_in_flight: default_max_in_flight(),
            image_encoding: default_image_encoding(),
            jpeg_quality: default_jpeg_quality(),
            connect_timeout_ms: default_connect_timeout_ms(),
            reconnect_min_ms: default_backoff_min_ms(),
            reconnect_max_ms: default_backoff_max_ms(),
            tls: None,
        }
    }
}

/// Everything the edge service needs: `config/edge.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    pub ingest: IngestConfig,
    pub model: SessionConfig,
    #[serde(default = "default_pipeline")]
    pub pipeline: PipelineConfig,
    pub output: OutputConfig,
    #[serde(default)]
    pub remote: RemoteConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
}

/// Everything the remote worker needs: `config/worker.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub listen: String,
    /// Model name clients ask for → session settings of the network serving it.
    pub models: BTreeMap<String, SessionConfig>,
    pub batching: BatchingConfig,
    pub tls: TlsPaths,
    #[serde(default = "default_max_message_mib")]
    pub max_message_mib: usize,
    /// Seconds between "worker status" log lines; 0 turns them off.
    #[serde(default = "default_status_interval_s")]
    pub status_interval_s: u64,
}

fn default_liveness() -> Liveness {
    Liveness::Auto
}
fn default_intra_threads() -> usize {
    2
}
fn default_inter_threads() -> usize {
    1
}
fn default_optimization() -> Optimization {
    Optimization::All
}
fn default_queue_capacity() -> usize {
    4
}
fn default_reorder_window() -> usize {
    256
}
fn default_pipeline() -> PipelineConfig {
    PipelineConfig { queue_capacity: default_queue_capacity(), reorder_window: default_reorder_window() }
}
fn yes() -> bool {
    true
}
fn default_alpha() -> f32 {
    0.5
}
fn default_overlay_encoder() -> String {
    "videoconvert ! openh264enc ! h264parse ! mp4mux".to_string()
}
fn default_metrics_interval_ms() -> u64 {
    1000
}
fn default_routing() -> Routing {
    Routing::Local
}
fn default_every_nth() -> u64 {
    2
}
fn default_server_name() -> String {
    "localhost".to_string()
}
fn default_remote_model() -> String {
    "large".to_string()
}
fn default_deadline_ms() -> u32 {
    500
}
fn default_max_in_flight() -> usize {
    8
}
fn default_image_encoding() -> ImageEncodingChoice {
    ImageEncodingChoice::Jpeg
}
fn default_jpeg_quality() -> i32 {
    90
}
fn default_connect_timeout_ms() -> u64 {
    1000
}
fn default_backoff_min_ms() -> u64 {
    100
}
fn default_backoff_max_ms() -> u64 {
    5000
}
fn default_max_batch() -> usize {
    4
}
fn default_max_wait_ms() -> u64 {
    5
}
fn default_max_queue() -> usize {
    64
}
fn default_max_message_mib() -> usize {
    16
}
fn default_status_interval_s() -> u64 {
    10
}

/// Reads a TOML file, applies `section.key=value` overrides (from CLI flags) on the raw table,
/// then deserializes, so that overrides go through exactly the same checks as the file.
fn load_toml<T: DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
    for item in overrides {
        apply_override(&mut table, item)?;
    }
    T::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
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

/// Collects the first failed check with the key it concerns.
struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn check(&self, ok: bool, key: &str, value: impl std::fmt::Display, problem: &str) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: self.path.to_path_buf(),
                key: key.to_string(),
                value: value.to_string(),
                problem: problem.to_string(),
            })
        }
    }

    fn session(&self, section: &str, s: &SessionConfig) -> Result<(), ConfigError> {
        self.check((1..=64).contains(&s.intra_threads), &format!("{section}.intra_threads"), s.intra_threads, "is outside 1..=64")?;
        self.check((1..=64).contains(&s.inter_threads), &format!("{section}.inter_threads"), s.inter_threads, "is outside 1..=64")
    }

    fn tls(&self, section: &str, t: &TlsPaths) -> Result<(), ConfigError> {
        for (name, p) in [("ca_cert", &t.ca_cert), ("cert", &t.cert), ("key", &t.key)] {
            self.check(
                p.is_file(),
                &format!("{section}.{name}"),
                p.display(),
                "does not exist (run `edgeseg certs` for a development PKI)",
            )?;
        }
        Ok(())
    }
}

/// Joins relative paths to the config's folder and removes `.`/`..` lexically, so messages
/// and outputs show plain paths.
fn resolve(base: &Path, p: &mut PathBuf) {
    use std::path::Component;
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

impl EdgeConfig {
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut cfg: EdgeConfig = load_toml(path, overrides)?;
        let base = config_dir(path);
        resolve(&base, &mut cfg.ingest.pipeline);
        // `location` is the file parameter of file.pipeline: a path like the others.
        if let Some(location) = cfg.ingest.params.get_mut("location") {
            let mut p = PathBuf::from(&*location);
            resolve(&base, &mut p);
            *location = p.to_string_lossy().into_owned();
        }
        resolve(&base, &mut cfg.model.manifest);
        resolve(&base, &mut cfg.output.dir);
        if let Some(t) = cfg.remote.tls.as_mut() {
            resolve_tls(&base, t);
        }
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let c = Checker { path };
        c.check(
            self.ingest.pipeline.is_file(),
            "ingest.pipeline",
            self.ingest.pipeline.display(),
            "does not exist (see pipelines/ for ready descriptions)",
        )?;
        c.check(self.model.manifest.is_file(), "model.manifest", self.model.manifest.display(), "does not exist (see models/*.toml)")?;
        c.session("model", &self.model)?;
        c.check(
            (1..=1024).contains(&self.pipeline.queue_capacity),
            "pipeline.queue_capacity",
            self.pipeline.queue_capacity,
            "is outside 1..=1024",
        )?;
        c.check(
            (1..=100_000).contains(&self.pipeline.reorder_window),
            "pipeline.reorder_window",
            self.pipeline.reorder_window,
            "is outside 1..=100000",
        )?;
        c.check((0.0..=1.0).contains(&self.output.overlay_alpha), "output.overlay_alpha", self.output.overlay_alpha, "is outside 0..=1")?;
        let interval = self.output.metrics_interval_ms;
        c.check(
            interval == 0 || (10..=3_600_000).contains(&interval),
            "output.metrics_interval_ms",
            interval,
            "must be 0 (off) or within 10..=3600000",
        )?;
        c.check(!self.output.overlay_encoder.trim().is_empty(), "output.overlay_encoder", "\"\"", "is empty")?;
        let r = &self.remote;
        c.check(r.every_nth >= 1, "remote.every_nth", r.every_nth, "must be at least 1")?;
        c.check((1..=600_000).contains(&r.deadline_ms), "remote.deadline_ms", r.deadline_ms, "is outside 1..=600000")?;
        c.check((1..=1024).contains(&r.max_in_flight), "remote.max_in_flight", r.max_in_flight, "is outside 1..=1024")?;
        c.check((1..=100).contains(&r.jpeg_quality), "remote.jpeg_quality", r.jpeg_quality, "is outside 1..=100")?;
        c.check(
            r.reconnect_min_ms >= 1 && r.reconnect_min_ms <= r.reconnect_max_ms,
            "remote.reconnect_min_ms",
            r.reconnect_min_ms,
            "must be at least 1 and at most remote.reconnect_max_ms",
        )?;
        c.check(r.connect_timeout_ms >= 1, "remote.connect_timeout_ms", r.connect_timeout_ms, "must be at least 1")?;
        for w in &r.workers {
            c.check(
                w.parse::<SocketAddr>().is_ok() || w.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()),
                "remote.workers",
                w,
                "is not host:port",
            )?;
        }
        if r.routing != Routing::Local {
            c.check(!r.workers.is_empty(), "remote.workers", "[]", "is empty but remote.routing sends frames to a worker")?;
            match &r.tls {
                Some(t) => c.tls("remote.tls", t)?,
                None => c.check(false, "remote.tls", "(missing)", "must be set when remote.routing is not \"local\"")?,
            }
        }
        Ok(())
    }
}

impl WorkerConfig {
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut cfg: WorkerConfig = load_toml(path, overrides)?;
        let base = config_dir(path);
        for m in cfg.models.values_mut() {
            resolve(&base, &mut m.manifest);
        }
        resolve_tls(&base, &mut cfg.tls);
        let c = Checker { path };
        c.check(cfg.listen.parse::<SocketAddr>().is_ok(), "listen", &cfg.listen, "is not an ip:port socket address")?;
        c.check(!cfg.models.is_empty(), "models", "{}", "is empty: name at least one model, e.g. [models.large]")?;
        for (name, m) in &cfg.models {
            c.check(m.manifest.is_file(), &format!("models.{name}.manifest"), m.manifest.display(), "does not exist (see models/*.toml)")?;
            c.session(&format!("models.{name}"), m)?;
        }
        c.check((1..=64).contains(&cfg.batching.max_batch), "batching.max_batch", cfg.batching.max_batch, "is outside 1..=64")?;
        c.check(cfg.batching.max_wait_ms <= 1000, "batching.max_wait_ms", cfg.batching.max_wait_ms, "is above 1000")?;
        c.check((1..=100_000).contains(&cfg.batching.max_queue), "batching.max_queue", cfg.batching.max_queue, "is outside 1..=100000")?;
        c.check((1..=256).contains(&cfg.max_message_mib), "max_message_mib", cfg.max_message_mib, "is outside 1..=256")?;
        c.check(cfg.status_interval_s <= 3600, "status_interval_s", cfg.status_interval_s, "is above 3600 (0 turns status lines off)")?;
        c.tls("tls", &cfg.tls)?;
        Ok(cfg)
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
}
