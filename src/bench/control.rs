//! `edgeseg bench control`: the same live replay, with a CPU hog started on the device midway,
//! under `control.mode = "fixed"` and then under `"adaptive"`, in one run. Per mode: frames
//! dropped by the live source, p50/p99 capture-to-output latency (all frames, and the frames
//! captured under the hog), the share of frames answered remotely and falling back, and the
//! agreement with the large network: the mIoU of every written mask against the large
//! network's mask of the same frame (computed after the runs, offline), a proxy for what the
//! routing costs in accuracy.
//!
//! Both ends share this machine. Where it has two CPUs or more, the device (edge pipeline and
//! hog) runs on the first one and the remote worker on the others, each ahead of the machine's
//! other work when the process may raise priorities (root, CAP_SYS_NICE): a remote machine is
//! not slowed by the device's load, and benchmarks here share the machine with builds. The
//! same [`Placement`] and [`CpuHog`] serve the integration tests of the control unit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::BenchError;
use crate::config::{ControlMode, EdgeConfig, Liveness, Routing, SessionConfig};
use crate::eval::Confusion;
use crate::frame::{ClassMap, Segmented};
use crate::infer::Model;
use crate::ingest::{IngestOptions, PipelineSpec};
use crate::metrics::LatencyStats;
use crate::shutdown::Shutdown;
use crate::sink::{Observer, SinkError};

/// Where a part of a run goes: on which CPUs, at which nice value.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub cpus: Vec<usize>,
    pub nice: i32,
}

impl Placement {
    /// Moves the calling thread, and the threads it starts from then on, there. The CPUs are
    /// an error when refused; the nice value is taken where the process may (root or
    /// CAP_SYS_NICE), and `false` says it was not.
    pub fn enter(&self) -> Result<bool, BenchError> {
        if let Some(cpu) = self.cpus.iter().find(|&&cpu| cpu >= libc::CPU_SETSIZE as usize) {
            return Err(BenchError::Setup(format!("cannot run on CPUs {:?}: CPU {cpu} is beyond what a CPU set holds", self.cpus)));
        }
        // SAFETY: plain system calls on the calling thread (tid 0), CPUs checked above.
        unsafe { place(&self.cpus, self.nice, 0) }.map_err(|e| BenchError::Setup(format!("cannot run on CPUs {:?}: {e}", self.cpus)))
    }
}

/// Pins thread `tid` (0: the caller) to `cpus` and sets its nice value; whether the nice value
/// was taken. Makes no allocation, so a child process may call it between fork and exec.
///
/// # Safety
/// Every CPU must be below `CPU_SETSIZE`.
unsafe fn place(cpus: &[usize], nice: i32, tid: libc::id_t) -> std::io::Result<bool> {
    let mut set: libc::cpu_set_t = std::mem::zeroed();
    for &cpu in cpus {
        libc::CPU_SET(cpu, &mut set);
    }
    if libc::sched_setaffinity(tid as libc::pid_t, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let thread = if tid == 0 { libc::syscall(libc::SYS_gettid) as libc::id_t } else { tid };
    Ok(libc::setpriority(libc::PRIO_PROCESS, thread, nice) == 0)
}

/// A worker (`edgeseg worker`) in a process and session of its own: the kernel shares the
/// CPUs fairly between sessions (autogroups) before it looks at threads, so a worker inside
/// the edge's process would get its CPUs only in proportion to the edge's and the hog's threads
/// elsewhere. Placed when asked (its session's nice too, where allowed); stopped when dropped.
pub struct WorkerProcess {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
}

impl WorkerProcess {
    /// Starts `binary worker --config config` with `--set` `overrides` and waits until it listens;
    /// its log goes beside the config (`worker.log` for `worker.toml`).
    pub fn start(binary: &Path, config: &Path, overrides: &[String], placement: Option<&Placement>) -> Result<Self, BenchError> {
        use std::io::BufRead;
        let setup = |e: std::io::Error| BenchError::Setup(format!("starting {} worker: {e}", binary.display()));
        let mut command = std::process::Command::new(binary);
        command.arg("worker").arg("--config").arg(config);
        for o in overrides {
            command.arg("--set").arg(o);
        }
        let log = std::fs::File::create(config.with_extension("log")).map_err(setup)?;
        command.stdout(std::process::Stdio::piped()).stderr(log);
        let placement = placement.cloned().filter(|p| p.cpus.iter().all(|&cpu| cpu < libc::CPU_SETSIZE as usize));
        let (cpus, nice) = placement.map_or((None, 0), |p| (Some(p.cpus), p.nice));
        own_session(&mut command, cpus, nice, nice);
        let mut child = command.spawn().map_err(setup)?;
        let stdout = child.stdout.take().ok_or_else(|| setup(std::io::Error::other("no stdout")))?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().transpose().map_err(setup)?.unwrap_or_default();
        // The rest (its summary at the end) is read and dropped, so the worker never writes
        // into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        // Stopped on the way out if it did not say where it listens.
        let mut worker = WorkerProcess { addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)), child };
        let addr = first.strip_prefix("worker listening on ").and_then(|a| a.trim().parse().ok());
        let why = || format!("it did not say where it listens (see {})", config.with_extension("log").display());
        worker.addr = addr.ok_or_else(|| setup(std::io::Error::other(why())))?;
        Ok(worker)
    }

    /// Asks the worker to stop (SIGTERM: it finishes the frames in flight) and waits.
    pub fn stop(mut self) {
        self.terminate();
    }

    /// Kills the worker (SIGKILL: no QUIC close reaches its peers, as in a crash) and waits.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

/// Makes `command` start a session (and so an autogroup) of its own, on `cpus` when given, its
/// thread at `nice` and its session at `session_nice`, each where the process may.
fn own_session(command: &mut std::process::Command, cpus: Option<Vec<usize>>, nice: i32, session_nice: i32) {
    use std::os::unix::process::CommandExt;
    let session_nice = format!("{session_nice}\n").into_bytes();
    // SAFETY: between fork and exec only system calls, no allocation: a new session, the
    // placement, and the session's nice written to /proc/self/autogroup.
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            if let Some(cpus) = &cpus {
                place(cpus, nice, 0)?;
            } else {
                libc::setpriority(libc::PRIO_PROCESS, 0, nice);
            }
            let fd = libc::open(c"/proc/self/autogroup".as_ptr(), libc::O_WRONLY);
            if fd >= 0 {
                libc::write(fd, session_nice.as_ptr().cast(), session_nice.len());
                libc::close(fd);
            }
            Ok(())
        });
    }
}

/// A worker.toml serving `manifest` as `model` on `listen`, with `tls` and one inference
/// thread per CPU of `cpus`; `extra` is appended (further keys, e.g. `[batching]`).
pub fn worker_toml(
    model: &str,
    manifest: &Path,
    tls: &crate::config::TlsPaths,
    listen: std::net::SocketAddr,
    threads: usize,
    extra: &str,
) -> String {
    format!(
        "listen = \"{listen}\"\nstatus_interval_s = 0\n[models.{model}]\nmanifest = \"{}\"\nintra_threads = {threads}\n\
         [tls]\nca_cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
        manifest.display(),
        tls.ca_cert.display(),
        tls.cert.display(),
        tls.key.display(),
    )
}

/// The device on the first CPU this process may use (nice -5), the remote worker on the others
/// (nice -10); `None` with a single CPU, where both share it.
pub fn device_and_remote() -> Option<(Placement, Placement)> {
    let cpus = crate::control::system::allowed_cpus()?;
    (cpus.len() >= 2).then(|| (Placement { cpus: cpus[..1].to_vec(), nice: -5 }, Placement { cpus: cpus[1..].to_vec(), nice: -10 }))
}

/// Foreign load on the device: a spinning shell loop per CPU, in a process and session of their
/// own, as another service's work would be, until dropped. Where the kernel shares a CPU between
/// sessions (autogroups) before it looks at threads, the hog's session is given the nice value
/// that makes it weigh `weight` times this process's session: the edge then keeps about
/// 1 / (weight + 1) of the hog's CPUs, however its own threads divide that share (the
/// pipeline's helpers run below its inference thread, see [`crate::priority`]). Where it does
/// not (autogroup switched off, or the process in a cgroup of its own, as in many CI
/// containers), threads compete one by one, so each loop also gets the nice value that weighs
/// `weight` times a thread at the placement's nice (this thread's where none is given).
/// Lowering either needs CAP_SYS_NICE; without it the hog weighs as much as the edge.
pub struct CpuHog {
    child: Option<std::process::Child>,
}

impl CpuHog {
    /// Starts the hog on `placement`'s CPUs (all this process may use when `None`). A hog that
    /// cannot be started is logged and skipped: the caller's assertions then say the load did
    /// not come.
    pub fn start(weight: usize, placement: Option<Placement>) -> Self {
        let thread_nice = placement.as_ref().map_or_else(crate::priority::current_nice, |p| p.nice);
        let cpus = placement.map(|p| p.cpus).filter(|cpus| cpus.iter().all(|&cpu| cpu < libc::CPU_SETSIZE as usize));
        let loops = cpus.as_ref().map(Vec::len).or_else(|| crate::control::system::allowed_cpus().map(|c| c.len())).unwrap_or(1);
        let mut command = std::process::Command::new("/bin/sh");
        command.arg("-c").arg(format!("i=0; while [ $i -lt {loops} ]; do (while :; do :; done) & i=$((i+1)); done; wait"));
        command.stdin(std::process::Stdio::null());
        let weight = weight.max(1);
        own_session(&mut command, cpus, outweighing_nice(thread_nice, weight), outweighing_nice(session_nice(), weight));
        let child = command.spawn().map_err(|e| tracing::warn!(error = %e, "could not start the CPU hog (/bin/sh)")).ok();
        CpuHog { child }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: a signal to the process group our own child leads (setsid).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = child.wait();
        }
    }
}

/// Whether the kernel shares CPUs between sessions (autogroups) before threads: autogroup
/// switched on, and this process in no cgroup of its own with the cpu controller (the kernel
/// groups only tasks of the root task group by session). Where not, a [`CpuHog`]'s loops meet
/// each thread one by one, so the same weight loads a pipeline much harder.
pub fn sessions_share_cpus() -> bool {
    let enabled = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled").is_ok_and(|s| s.trim() == "1");
    enabled
        && std::fs::read_to_string("/proc/self/cgroup").is_ok_and(|text| {
            in_root_cpu_group(&text, |path| Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')).join("cpu.weight").exists())
        })
}

/// Whether `/proc/self/cgroup` text puts the process in the root cpu group: its cgroup v1 cpu
/// hierarchy at `/`, or, with none, its cgroup v2 group at `/` or one without the cpu
/// controller (`has_cpu_controller` says, given the v2 path).
fn in_root_cpu_group(text: &str, has_cpu_controller: impl Fn(&str) -> bool) -> bool {
    let entries: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once(':')).filter_map(|(_, rest)| rest.split_once(':')).collect();
    if let Some((_, path)) = entries.iter().find(|(controllers, _)| controllers.split(',').any(|c| c == "cpu")) {
        return *path == "/";
    }
    entries.iter().find(|(controllers, _)| controllers.is_empty()).is_none_or(|(_, path)| *path == "/" || !has_cpu_controller(path))
}

/// The nice value of this process's session (autogroup), 0 where the kernel has none.
fn session_nice() -> i32 {
    std::fs::read_to_string("/proc/self/autogroup").ok().and_then(|s| s.split_whitespace().last().and_then(|n| n.parse().ok())).unwrap_or(0)
}

/// The nice value (-20..=19) whose scheduling weight is closest to `times` that of `nice`: the
/// kernel's table (`sched_prio_to_weight`), about 1.25 times per step.
fn outweighing_nice(nice: i32, times: usize) -> i32 {
    const WEIGHTS: [f64; 40] = [
        88761.0, 71755.0, 56483.0, 46273.0, 36291.0, 29154.0, 23254.0, 18705.0, 14949.0, 11916.0, 9548.0, 7620.0, 6100.0, 4904.0, 3906.0,
        3121.0, 2501.0, 1991.0, 1586.0, 1277.0, 1024.0, 820.0, 655.0, 526.0, 423.0, 335.0, 272.0, 215.0, 172.0, 137.0, 110.0, 87.0, 70.0,
        56.0, 45.0, 36.0, 29.0, 23.0, 18.0, 15.0,
    ];
    let weight = |n: i32| WEIGHTS[(n.clamp(-20, 19) + 20) as usize];
    let target = (weight(nice) * times as f64).ln();
    (-20..=19).min_by(|&a: &i32, &b: &i32| (weight(a).ln() - target).abs().total_cmp(&(weight(b).ln() - target).abs())).unwrap_or(nice)
}

/// The replay when none is named: the assets' `videos/vtest.avi` (people walking, 10 frames/s)
/// when the assets are there, else the project's `fixtures/bench.mp4`.
pub fn default_video() -> PathBuf {
    let real = crate::infer::manifest::assets_dir().join("videos/vtest.avi");
    if real.is_file() {
        real
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bench.mp4")
    }
}

/// The worker's network when none is named: the real large network when its ONNX file is in
/// the assets, else the fixture one.
pub fn default_large_model() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let real = root.join("models/deeplab-large-fp32.toml");
    match crate::infer::ModelManifest::load(&real) {
        Ok(manifest) if manifest.onnx.is_file() => real,
        _ => root.join("models/large.toml"),
    }
}

/// What `bench control` does.
#[derive(Debug, Clone)]
pub struct ControlBenchOptions {
    /// The video replayed at its own frame rate.
    pub video: PathBuf,
    /// Manifest of the network the worker serves, and the reference of the agreement.
    pub large_model: PathBuf,
    /// Replay before the hog starts, and with it.
    pub calm: Duration,
    pub loaded: Duration,
    pub hog_weight: usize,
    /// Folder for each mode's outputs (records, metrics.jsonl and its plot, summary).
    pub out: PathBuf,
}

/// One mode's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModeResult {
    pub mode: &'static str,
    pub frames_in: u64,
    pub dropped: u64,
    pub frames_out: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// p99 of the frames captured after the hog started.
    pub p99_loaded_ms: f64,
    /// Frames answered by the worker, and frames sent there that fell back, over frames out.
    pub remote_fraction: f64,
    pub fallback_fraction: f64,
    /// mIoU of the written masks against the large network's, over the classes the large
    /// network found; `None` when no frame could be compared.
    pub agreement_miou: Option<f64>,
    pub agreement_frames: usize,
}

impl ModeResult {
    pub fn dropped_fraction(&self) -> f64 {
        self.dropped as f64 / self.frames_in.max(1) as f64
    }
}

/// The whole comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ControlBench {
    pub video: PathBuf,
    pub small_model: PathBuf,
    pub large_model: PathBuf,
    pub deadline_ms: u64,
    pub calm_s: f64,
    pub loaded_s: f64,
    pub hog_weight: usize,
    /// `None`: a single CPU, device and worker shared it.
    pub device: Option<Placement>,
    pub remote: Option<Placement>,
    /// Whether the priorities could be raised.
    pub prioritised: bool,
    /// Whether the hog weighed against the edge's session or against its threads one by one
    /// (see [`sessions_share_cpus`]).
    pub sessions_share_cpus: bool,
    pub modes: Vec<ModeResult>,
}

impl serde::Serialize for Placement {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("CPUs {:?}, nice {}", self.cpus, self.nice))
    }
}

/// A live source: the file at its own frame rate, dropping the oldest frame when behind.
const LIVE_REPLAY: &str = "filesrc location=\"${location}\" ! decodebin ! videoconvert ! identity sync=true ! appsink name=sink";

/// Runs the comparison with the edge as `config` has it (model, queues, `[control]` keys other
/// than the mode), writes `bench-control.json` and each mode's outputs into `options.out`.
pub fn control(config: &EdgeConfig, options: &ControlBenchOptions) -> Result<ControlBench, BenchError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
    // Absolute, as the worker's config names files in it.
    let out = std::path::absolute(&options.out).map_err(|e| setup(&options.out.display().to_string(), &e))?;
    std::fs::create_dir_all(&out).map_err(|e| setup(&out.display().to_string(), &e))?;
    let placement = device_and_remote();
    let (device, remote) = (placement.as_ref().map(|p| p.0.clone()), placement.as_ref().map(|p| p.1.clone()));
    let pki = crate::remote::tls::generate_dev_pki(&out.join("pki"), &["localhost".into(), "127.0.0.1".into()], &["edge".into()], true)?;
    let threads = remote.as_ref().map_or(1, |r| r.cpus.len().min(64));
    let worker_toml_path = out.join("worker.toml");
    let large_model = std::path::absolute(&options.large_model).map_err(|e| setup(&options.large_model.display().to_string(), &e))?;
    let toml = worker_toml(&config.remote.model, &large_model, &pki.worker, ([127, 0, 0, 1], 0).into(), threads, "");
    std::fs::write(&worker_toml_path, toml).map_err(|e| setup(&worker_toml_path.display().to_string(), &e))?;
    let binary = std::env::current_exe().map_err(|e| setup("finding the edgeseg binary", &e))?;
    let worker = WorkerProcess::start(&binary, &worker_toml_path, &[], remote.as_ref())?;
    let prioritised = match &device {
        Some(device) => on_thread(Some(device.clone()), || ())?.1,
        None => false,
    };
    let pipeline = out.join("live-replay.pipeline");
    std::fs::write(&pipeline, format!("{LIVE_REPLAY}\n")).map_err(|e| setup(&pipeline.display().to_string(), &e))?;

    let mut modes = Vec::new();
    let mut served = Vec::new();
    for mode in [ControlMode::Fixed, ControlMode::Adaptive] {
        let mut edge = config.clone();
        edge.ingest.pipeline = pipeline.clone();
        edge.ingest.params.insert("location".into(), options.video.display().to_string());
        edge.ingest.live = Liveness::Live;
        edge.remote.routing = Routing::Threshold;
        edge.remote.workers = vec![format!("127.0.0.1:{}", worker.addr.port()).parse().map_err(|e| setup("worker address", &e))?];
        edge.remote.server_name = "localhost".into();
        edge.remote.tls = Some(pki.clients[0].1.clone());
        edge.control.mode = mode;
        edge.output.dir = out.join(mode.name());
        edge.output.overlay = false;
        edge.output.masks = false;
        std::fs::create_dir_all(&edge.output.dir).map_err(|e| setup(&edge.output.dir.display().to_string(), &e))?;
        tracing::info!(mode = mode.name(), "bench control: live replay");
        let (result, masks) = run_mode(&edge, options, device.clone())?;
        let metrics = edge.output.dir.join("metrics.jsonl");
        if let Err(e) = crate::control::plot::plot_metrics(&metrics, &edge.output.dir.join("metrics.png")) {
            tracing::warn!(error = %e, "could not plot the run's metrics");
        }
        modes.push(result);
        served.push(masks);
    }
    worker.stop();
    tracing::info!("bench control: the large network on the frames written, for the agreement");
    let agreements = agreement(&options.video, &options.large_model, &served)?;
    for (result, (miou, frames)) in modes.iter_mut().zip(agreements) {
        result.agreement_miou = miou;
        result.agreement_frames = frames;
    }
    let bench = ControlBench {
        video: options.video.clone(),
        small_model: config.model.manifest.clone(),
        large_model: options.large_model.clone(),
        deadline_ms: config.remote.deadline_ms.units(),
        calm_s: options.calm.as_secs_f64(),
        loaded_s: options.loaded.as_secs_f64(),
        hog_weight: options.hog_weight,
        device,
        remote,
        prioritised,
        sessions_share_cpus: sessions_share_cpus(),
        modes,
    };
    let json = out.join("bench-control.json");
    let text = serde_json::to_string_pretty(&bench).map_err(|e| setup("bench-control.json", &e))?;
    std::fs::write(&json, text).map_err(|e| setup(&json.display().to_string(), &e))?;
    Ok(bench)
}

/// Runs `body` on a thread of its own placed as given; returns its result and whether the
/// priority was taken.
fn on_thread<T: Send + 'static>(placement: Option<Placement>, body: impl FnOnce() -> T + Send + 'static) -> Result<(T, bool), BenchError> {
    std::thread::spawn(move || {
        let prioritised = match &placement {
            Some(p) => p.enter()?,
            None => false,
        };
        Ok((body(), prioritised))
    })
    .join()
    .map_err(|_| BenchError::Setup("a benchmark thread panicked".into()))?
}

/// What the outputs of one run saw: per frame, its latency and mask, and where it came from.
#[derive(Default)]
struct Served {
    frames: BTreeMap<u64, ClassMap>,
    latency: LatencyStats,
    latency_loaded: LatencyStats,
    fallbacks: u64,
    remote: u64,
}

struct Collect {
    served: Arc<Mutex<Served>>,
    hog_from: Arc<Mutex<Option<Instant>>>,
}

impl Observer for Collect {
    fn observe(&mut self, frame: &Segmented) -> Result<(), SinkError> {
        let ms = frame.frame.captured_at.elapsed().as_secs_f64() * 1000.0;
        let loaded = self.hog_from.lock().expect("hog start lock").is_some_and(|from| frame.frame.captured_at >= from);
        let mut served = self.served.lock().expect("served frames lock");
        served.latency.record(ms);
        if loaded {
            served.latency_loaded.record(ms);
        }
        match frame.source.label() {
            "remote" => served.remote += 1,
            "fallback" => served.fallbacks += 1,
            _ => {}
        }
        served.frames.insert(frame.frame.seq, frame.class_map.clone());
        Ok(())
    }

    fn needs_pixels(&self) -> bool {
        false
    }
}

fn run_mode(
    config: &EdgeConfig,
    options: &ControlBenchOptions,
    device: Option<Placement>,
) -> Result<(ModeResult, BTreeMap<u64, ClassMap>), BenchError> {
    let served = Arc::new(Mutex::new(Served::default()));
    let hog_from = Arc::new(Mutex::new(None));
    let observer = Collect { served: served.clone(), hog_from: hog_from.clone() };
    let shutdown = Shutdown::new();
    let (edge_config, edge_shutdown, edge_device) = (config.clone(), shutdown.clone(), device.clone());
    let edge = std::thread::spawn(move || {
        if let Some(placement) = &edge_device {
            placement.enter()?;
        }
        Ok::<_, BenchError>(crate::pipeline::run_observed(&edge_config, &edge_shutdown, vec![Box::new(observer)])?)
    });
    std::thread::sleep(options.calm);
    *hog_from.lock().expect("hog start lock") = Some(Instant::now());
    let hog = CpuHog::start(options.hog_weight, device);
    std::thread::sleep(options.loaded);
    shutdown.request();
    let outcome = edge.join().map_err(|_| BenchError::Setup("the edge run panicked".into()))??;
    drop(hog);
    if let Some(e) = outcome.error {
        return Err(e.into());
    }
    let served = std::mem::take(&mut *served.lock().expect("served frames lock"));
    let s = &outcome.summary;
    let (all, loaded) = (served.latency.percentiles(), served.latency_loaded.percentiles());
    let out = s.frames_out.max(1) as f64;
    let result = ModeResult {
        mode: config.control.mode.name(),
        frames_in: s.frames_in,
        dropped: s.dropped,
        frames_out: s.frames_out,
        p50_ms: all.p50_ms,
        p99_ms: all.p99_ms,
        p99_loaded_ms: loaded.p99_ms,
        remote_fraction: served.remote as f64 / out,
        fallback_fraction: served.fallbacks as f64 / out,
        agreement_miou: None,
        agreement_frames: 0,
    };
    Ok((result, served.frames))
}

/// Replays `video` once more, runs the large network on every frame some run wrote, and scores
/// each run's masks against it: (mIoU over the classes the large network found, frames compared).
fn agreement(video: &Path, large_model: &Path, runs: &[BTreeMap<u64, ClassMap>]) -> Result<Vec<(Option<f64>, usize)>, BenchError> {
    let Some(last) = runs.iter().filter_map(|frames| frames.keys().next_back()).max().copied() else {
        return Ok(vec![(None, 0); runs.len()]);
    };
    let mut model = Model::load(&SessionConfig { manifest: large_model.to_path_buf(), ..SessionConfig::default() })?;
    let classes = model.manifest.output.classes.len();
    let mut confusions = vec![Confusion::new(classes); runs.len()];
    let mut compared = vec![0usize; runs.len()];
    let params = BTreeMap::from([("location".to_string(), video.display().to_string())]);
    let spec = PipelineSpec::from_text(
        "bench control reference",
        "filesrc location=\"${location}\" ! decodebin ! videoconvert ! appsink name=sink",
        &params,
    )?;
    let shutdown = Shutdown::new();
    let ingest = crate::ingest::spawn(spec, &IngestOptions { liveness: Liveness::Replay, ..IngestOptions::default() }, shutdown.clone())?;
    for frame in ingest.frames.iter() {
        if frame.seq > last {
            break;
        }
        let wanted: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].contains_key(&frame.seq)).collect();
        if wanted.is_empty() {
            continue;
        }
        let reference = model.segment(&frame.bgr, frame.width, frame.height)?;
        for i in wanted {
            let mask = &runs[i][&frame.seq];
            if (mask.width, mask.height) == (reference.width, reference.height)
                && confusions[i].add(&reference.classes, &mask.classes).is_ok()
            {
                compared[i] += 1;
            }
        }
    }
    shutdown.request();
    drop(ingest.frames);
    let _ = ingest.thread.join();
    Ok(confusions.iter().zip(compared).map(|(c, n)| (c.totals().miou_ground_truth_classes(), n)).collect())
}

/// What was run, in one paragraph.
pub fn describe(bench: &ControlBench) -> String {
    let placement = match (&bench.device, &bench.remote) {
        (Some(device), Some(remote)) => format!(
            "device on CPUs {:?}, worker on CPUs {:?}{}",
            device.cpus,
            remote.cpus,
            if bench.prioritised { " (both ahead of the machine's other work)" } else { " (priorities could not be raised)" }
        ),
        _ => "device and worker share one CPU".to_string(),
    };
    format!(
        "bench control: {} replayed live, {:.0} s calm then {:.0} s with a hog weighing {} times {} on the device's CPU\n  small {}, large {}; {placement}",
        bench.video.display(),
        bench.calm_s,
        bench.loaded_s,
        bench.hog_weight,
        if bench.sessions_share_cpus {
            "the edge's session"
        } else {
            "each edge thread at the device's nice (this kernel shares CPUs between threads, not sessions: a heavier load)"
        },
        bench.small_model.display(),
        bench.large_model.display(),
    )
}

/// The comparison as a table, with the target's verdict.
pub fn table(bench: &ControlBench) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>12} {:>8} {:>9} {:>16}",
        "mode", "frames in", "dropped", "dropped%", "p50 ms", "p99 ms", "p99 hog ms", "remote%", "fallback%", "agreement mIoU"
    );
    for m in &bench.modes {
        let agreement = m.agreement_miou.map_or_else(|| "-".to_string(), |v| format!("{:.1} % ({})", 100.0 * v, m.agreement_frames));
        let _ = writeln!(
            out,
            "{:<9} {:>9} {:>8} {:>8.2} {:>8.0} {:>8.0} {:>12.0} {:>8.1} {:>9.1} {:>16}",
            m.mode,
            m.frames_in,
            m.dropped,
            100.0 * m.dropped_fraction(),
            m.p50_ms,
            m.p99_ms,
            m.p99_loaded_ms,
            100.0 * m.remote_fraction,
            100.0 * m.fallback_fraction,
            agreement
        );
    }
    let deadline = bench.deadline_ms as f64;
    let meets = |m: &ModeResult| m.dropped_fraction() <= 0.01 && m.p99_ms < deadline;
    let verdict = |m: Option<&ModeResult>| m.map_or("-", |m| if meets(m) { "met" } else { "not met" });
    let _ = writeln!(
        out,
        "target (drops <= 1 % and p99 < remote.deadline_ms = {deadline:.0} ms): adaptive {}, fixed {}",
        verdict(bench.modes.iter().find(|m| m.mode == "adaptive")),
        verdict(bench.modes.iter().find(|m| m.mode == "fixed"))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(mode: &'static str, dropped: u64, p99_ms: f64) -> ModeResult {
        ModeResult {
            mode,
            frames_in: 200,
            dropped,
            frames_out: 200 - dropped,
            p50_ms: 40.0,
            p99_ms,
            p99_loaded_ms: p99_ms,
            remote_fraction: 0.5,
            fallback_fraction: 0.0,
            agreement_miou: Some(0.8),
            agreement_frames: 150,
        }
    }

    #[test]
    fn the_table_says_whether_the_target_is_met() {
        let bench = ControlBench {
            video: "v.mp4".into(),
            small_model: "s.toml".into(),
            large_model: "l.toml".into(),
            deadline_ms: 500,
            calm_s: 5.0,
            loaded_s: 15.0,
            hog_weight: 16,
            device: None,
            remote: None,
            prioritised: false,
            sessions_share_cpus: true,
            modes: vec![mode("fixed", 40, 1800.0), mode("adaptive", 2, 420.0)],
        };
        let text = table(&bench);
        assert!(text.contains("adaptive met, fixed not met"), "{text}");
        assert!(text.lines().nth(1).is_some_and(|l| l.starts_with("fixed") && l.contains("20.00") && l.contains("80.0 % (150)")), "{text}");
        let bench = ControlBench { modes: vec![mode("fixed", 0, 100.0), mode("adaptive", 3, 420.0)], ..bench };
        assert!(table(&bench).contains("adaptive not met, fixed met"), "1.5 % dropped misses the target");
    }

    #[test]
    fn a_placement_is_entered_and_the_hog_stops_when_dropped() {
        let cpus = crate::control::system::allowed_cpus().expect("affinity");
        let here = Placement { cpus: cpus.clone(), nice: 0 };
        let entered = std::thread::spawn(move || here.enter().map(|_| crate::control::system::allowed_cpus())).join().unwrap();
        assert_eq!(entered.unwrap(), Some(cpus.clone()));
        for cpu in [1023, 4095] {
            let nowhere = Placement { cpus: vec![cpu], nice: 0 };
            assert!(std::thread::spawn(move || nowhere.enter()).join().unwrap().is_err(), "CPU {cpu}");
        }
        let hog = CpuHog::start(2, Some(Placement { cpus, nice: 0 }));
        std::thread::sleep(Duration::from_millis(50));
        let pid = hog.child.as_ref().expect("the hog started").id() as i32;
        // SAFETY: signal 0 only asks whether the process group exists.
        assert_eq!(unsafe { libc::kill(-pid, 0) }, 0, "the hog runs in a process group of its own");
        // SAFETY: reads a scheduling attribute of our own child; geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, pid as libc::id_t) };
            assert_eq!(nice, outweighing_nice(0, 2), "each loop outweighs a thread at the placement's nice");
        }
        drop(hog);
        // The loops die with SIGKILL; whoever adopted them reaps them a moment later.
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            // SAFETY: as above.
            (unsafe { libc::kill(-pid, 0) }) != 0
        });
        assert!(gone, "no spinning loop is left behind");
    }

    #[test]
    fn the_root_cpu_group_is_read_from_either_cgroup_version() {
        let v1 = |cpu: &str| format!("9:name=systemd:/\n4:memory:/api/1\n1:cpu,cpuacct:{cpu}\n0::/\n");
        assert!(in_root_cpu_group(&v1("/"), |_| true));
        assert!(!in_root_cpu_group(&v1("/docker/abc"), |_| false), "a v1 cpu group of its own");
        assert!(in_root_cpu_group("0::/\n", |_| true));
        assert!(in_root_cpu_group("0::/user.slice/a.scope\n", |_| false), "v2 without the cpu controller");
        assert!(!in_root_cpu_group("0::/system.slice/edge.service\n", |path| path == "/system.slice/edge.service"));
        assert!(in_root_cpu_group("", |_| true), "no cgroups at all");
    }

    #[test]
    fn the_hog_session_weighs_as_many_times_as_asked() {
        assert_eq!(outweighing_nice(0, 1), 0);
        assert_eq!(outweighing_nice(0, 8), -9, "7620 is closest to 8 x 1024");
        assert_eq!(outweighing_nice(-10, 4), -16, "36291 is closest to 4 x 9548");
        assert_eq!(outweighing_nice(-18, 100), -20, "bounded by the table");
    }
}
