//! Shared helpers for the integration tests: fixtures (made by scripts/fixtures when missing),
//! temporary configs, reading what a run wrote, and the lock that keeps CPU-heavy tests apart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Once, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Tests that measure a stream against wall-clock time (the remote path's deadlines) run alone;
/// the others may share the machine with each other, as when they were separate binaries.
static MACHINE: RwLock<()> = RwLock::new(());

/// For a test that may run beside others. A failed test must not block the rest, so a poisoned
/// lock is taken anyway.
pub fn shared_machine() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// For a test that needs the machine to itself.
pub fn whole_machine() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Makes sure the fixture models and videos exist (idempotent script, run once per test run).
pub fn fixtures() -> PathBuf {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let status = Command::new(root().join("scripts/fixtures")).current_dir(root()).status().expect("running scripts/fixtures");
        assert!(status.success(), "scripts/fixtures failed");
    });
    root()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edgeseg"))
}

/// Writes an edge config into `dir` that replays `video` locally, with outputs in `dir/out`.
/// `extra` is appended verbatim (TOML) for tests that need more sections.
pub fn edge_config(dir: &Path, video: &Path, extra: &str) -> PathBuf {
    let r = fixtures();
    let text = format!(
        r#"
[ingest]
pipeline = "{pipeline}"
live = "replay"
[ingest.params]
location = "{video}"
[model]
manifest = "{manifest}"
intra_threads = 1
[output]
dir = "{out}"
masks = true
overlay = true
{extra}
"#,
        pipeline = r.join("pipelines/file.pipeline").display(),
        video = video.display(),
        manifest = r.join("models/small.toml").display(),
        out = dir.join("out").display(),
    );
    let path = dir.join("edge.toml");
    std::fs::write(&path, text).expect("writing edge.toml");
    path
}

/// Overrides replacing the source by a live SMPTE test pattern of 160x120 at `framerate`
/// (`"20/1"`), `num_buffers` frames long (-1: endless); edge_config sets `live = "replay"`, so
/// nothing is dropped when the edge lags.
pub fn testsrc_overrides(framerate: &str, num_buffers: i64) -> Vec<String> {
    vec![
        format!("ingest.pipeline={}", fixtures().join("pipelines/testsrc.pipeline").display()),
        "ingest.params.pattern=smpte".into(),
        "ingest.params.width=160".into(),
        "ingest.params.height=120".into(),
        format!("ingest.params.framerate=\"{framerate}\""),
        format!("ingest.params.num_buffers={num_buffers}"),
    ]
}

/// Writes a pipeline description into `dir/name` for `--pipeline`.
pub fn pipeline_file(dir: &Path, name: &str, description: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{description}\n")).expect("writing a pipeline file");
    path
}

pub fn short_video() -> PathBuf {
    fixtures().join("fixtures/short.mp4")
}

pub const SHORT_VIDEO_FRAMES: usize = 24;

/// Parsed `summary.json` of a finished run.
pub fn summary(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("summary.json")).expect("reading summary.json");
    serde_json::from_str(&text).expect("summary.json is JSON")
}

/// Parsed `records.jsonl`.
pub fn records(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("records.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).expect("every record line is JSON")).collect()
}

pub struct RunResult {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary; a run that hangs fails the test after two minutes instead of blocking CI.
pub fn run_edge(args: &[&str]) -> RunResult {
    let mut command = Command::new(bin());
    command.args(args);
    run_command(command)
}

/// Runs `command` (the binary, maybe behind a wrapper such as `ip netns exec`) like [`run_edge`].
pub fn run_command(mut command: Command) -> RunResult {
    use std::io::Read;
    use std::process::Stdio;
    let args = format!("{command:?}");
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("running edgeseg");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for edgeseg") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args} did not finish within 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    RunResult { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}
