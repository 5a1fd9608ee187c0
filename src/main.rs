//! The `edgeseg` binary: the edge service (`run`), the remote worker (`worker`), development
//! certificates (`certs`), benchmarks (`bench`) and offline evaluation (`eval`). Errors reach the
//! user here, through anyhow.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use edgeseg::config::{Count, EdgeConfig, SessionConfig, WorkerConfig};
use edgeseg::ops::{EdgeTelemetry, Service, WorkerTelemetry};
use edgeseg::pipeline::RunSummary;
use edgeseg::shutdown::Shutdown;

#[derive(Parser)]
#[command(name = "edgeseg", version, about = "Live semantic segmentation split between an edge device and a remote worker")]
struct Cli {
    /// Log format: human-readable text or one JSON object per line (for journald / log shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct EdgeArgs {
    /// Edge configuration file.
    #[arg(long, default_value = "config/edge.toml")]
    config: PathBuf,
    /// Video file to replay (sets ingest.params.location).
    #[arg(long)]
    input: Option<PathBuf>,
    /// GStreamer pipeline file (sets ingest.pipeline).
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Output folder (sets output.dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override any config key: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

impl EdgeArgs {
    fn load(&self) -> anyhow::Result<EdgeConfig> {
        let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        let mut overrides = Vec::new();
        if let Some(p) = &self.input {
            overrides.push(format!("ingest.params.location={}", abs(p).display()));
        }
        if let Some(p) = &self.pipeline {
            overrides.push(format!("ingest.pipeline={}", abs(p).display()));
        }
        if let Some(p) = &self.out {
            overrides.push(format!("output.dir={}", abs(p).display()));
        }
        overrides.extend(self.overrides.iter().cloned());
        Ok(EdgeConfig::load(&self.config, &overrides)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge pipeline: ingest → (local | remote) segmentation → outputs.
    Run(EdgeArgs),
    /// Serve the large network to edge devices over QUIC.
    Worker {
        #[arg(long, default_value = "config/worker.toml")]
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Generate a development PKI (CA, worker and client certificates) for mutual TLS.
    Certs {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Names the worker certificate is valid for (DNS names or IP addresses).
        #[arg(long = "worker-name", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
        worker_names: Vec<String>,
        /// Client (edge device) certificates to issue.
        #[arg(long = "client", default_values_t = vec!["edge".to_string()])]
        clients: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Inspect model manifests and their ONNX graphs.
    Models {
        #[command(subcommand)]
        which: ModelsCommand,
    },
    /// Benchmarks that print rates and ratios.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Offline evaluation on labelled image sets.
    Eval {
        #[command(subcommand)]
        which: EvalCommand,
    },
    /// The decision network: training.
    Dn {
        #[command(subcommand)]
        which: DnCommand,
    },
    /// Pictures of what a run did.
    Plot {
        #[command(subcommand)]
        which: PlotCommand,
    },
}

#[derive(Subcommand)]
enum PlotCommand {
    /// The control unit over a run, from its metrics.jsonl: threshold and remote share (breaker
    /// spells shaded), local queue against its target, CPU, remote round trip, frames dropped.
    Metrics {
        /// metrics.jsonl written by `edgeseg run`.
        metrics: PathBuf,
        /// PNG to write (SVG when it ends in .svg) [default: beside the metrics, metrics.png].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DnCommand {
    /// Train the decision network on cached per-image figures (computed once per image).
    Train {
        /// Decision network configuration.
        #[arg(long, default_value = "config/dn.toml")]
        config: PathBuf,
        /// Folder for dn.toml and dn.safetensors (sets output.dir).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override any config key: --set section.key=value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// One network on a VOC-layout folder: mIoU, per-class IoU, pixel accuracy, per-image IoU, ms per image.
    Segment(SegmentArgs),
    /// Routing between the small and the large network: the decision network's rules against
    /// the small network's confidence, random routing and the oracle.
    Routing(RoutingArgs),
}

#[derive(clap::Args)]
struct RoutingArgs {
    /// Trained decision network (dn.toml written by `edgeseg dn train`).
    #[arg(long)]
    dn: PathBuf,
    /// Further trained networks (same base; e.g. other seeds) whose predictions are averaged with --dn's (repeatable).
    #[arg(long)]
    ensemble: Vec<PathBuf>,
    /// Labelled folder(s) in VOC layout to evaluate on (repeatable: the sets are pooled).
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// Image id list(s): one for all --data, or one per --data in the same order.
    #[arg(long)]
    list: Vec<PathBuf>,
    /// Labelled folder(s) to choose each policy's thresholds on (validation data); without it
    /// thresholds are chosen on the evaluated data itself, which flatters every policy.
    #[arg(long)]
    choose_on: Vec<PathBuf>,
    /// Id list(s) for --choose-on, paired like --list.
    #[arg(long)]
    choose_list: Vec<PathBuf>,
    /// Networks, encoder and cache as in this decision network configuration.
    #[arg(long, default_value = "config/dn.toml")]
    config: PathBuf,
    /// Folder for routing.csv, images.csv, routing.json, report.md and the plots.
    #[arg(long, default_value = "out/routing")]
    out: PathBuf,
    /// Block-bootstrap resamples of the evaluated images behind each normalised AUC's 90 %
    /// interval and the share ahead of max-softmax (0: none).
    #[arg(long, default_value_t = edgeseg::decision::experiment::BOOTSTRAP_RESAMPLES)]
    resamples: usize,
    /// Override any config key: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

#[derive(clap::Args)]
struct SegmentArgs {
    /// Model manifest (models/*.toml).
    #[arg(long)]
    model: PathBuf,
    /// Folder in VOC layout: JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette masks, 255 = void).
    #[arg(long)]
    data: PathBuf,
    /// Image ids to evaluate, one per line (relative paths are also looked up inside --data);
    /// without it, every image that has a mask.
    #[arg(long)]
    list: Option<PathBuf>,
    /// Folder for metrics.json, per_image.csv and report.md.
    #[arg(long, default_value = "out/eval")]
    out: PathBuf,
    /// Skip corrupt or mismatched images (counted and listed in the report) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// Evaluate only the first N images.
    #[arg(long)]
    limit: Option<usize>,
    /// ONNX Runtime intra-op threads for the network (1 matches the reference figures).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Threads decoding images and masks while the network runs.
    #[arg(long, default_value_t = 2)]
    decode_threads: usize,
    /// Fit images to the input this way instead of the manifest's (to compare them).
    #[arg(long, value_parser = ["stretch", "pad"])]
    fit: Option<String>,
    /// Padding pixel value with --fit pad (default: the manifest's, else the input's mean).
    #[arg(long, requires = "fit")]
    pad_value: Option<f32>,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// The graph's inputs and outputs, and GFLOPs (2 × multiply-adds of Conv/MatMul/Gemm) at the
    /// manifest's input size, counted from the ONNX graph.
    Info {
        /// Model manifest (models/*.toml).
        manifest: PathBuf,
        /// Also time the model: median ms per frame over this many runs (network alone, and
        /// preprocess + network + class map at frame size).
        #[arg(long, value_name = "FRAMES")]
        bench: Option<usize>,
        /// ONNX Runtime intra-op threads for --bench.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Frame size for --bench, as WIDTHxHEIGHT.
        #[arg(long, default_value = "480x360")]
        frame: String,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Local pipeline rate versus the bare model on the same frames.
    Pipeline {
        #[command(flatten)]
        edge: EdgeArgs,
    },
    /// A live replay with a CPU hog started midway, under fixed and then adaptive control:
    /// frames dropped, p50/p99 latency, remote share, agreement with the large network.
    /// --out is the folder for both runs' outputs [default: out/bench-control].
    Control {
        #[command(flatten)]
        edge: EdgeArgs,
        /// Manifest of the worker's network [default: models/deeplab-large-fp32.toml with the assets, else models/large.toml].
        #[arg(long)]
        large_model: Option<PathBuf>,
        /// Seconds of replay before the hog, and with it.
        #[arg(long, default_value_t = 5.0)]
        calm_s: f64,
        #[arg(long, default_value_t = 15.0)]
        loaded_s: f64,
        /// How many times the edge's share of the device's CPU the hog takes, as another service's
        /// work in a session of its own (8: the edge keeps about a ninth of its CPU).
        #[arg(long, default_value_t = 8)]
        hog_weight: usize,
    },
    /// QUIC versus a plain TCP baseline on loopback (or an emulated impaired link), same encoded frames.
    Transport {
        /// Frames per size and transport [default: 200, 100 with --link].
        #[arg(long)]
        frames: Option<usize>,
        /// Frame sizes as WIDTHxHEIGHT [default: 160x120,320x240,640x480,1280x720; 320x240,640x480 with --link].
        #[arg(long, value_delimiter = ',')]
        sizes: Option<Vec<String>>,
        /// Requests in flight at once for the throughput part.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Rounds; every size and transport is measured once per round and the medians reported [default: 5, 3 with --link].
        #[arg(long)]
        rounds: Option<usize>,
        /// Measure across an emulated link between two network namespaces (needs root), e.g.
        /// delay=10ms,jitter=2ms,loss=1%,rate=20mbit,queue=100KB (delay is one-way; up./down.
        /// prefixes impair one direction only).
        #[arg(long, value_name = "SPEC")]
        link: Option<edgeseg::bench::link::LinkSpec>,
        /// QUIC connections to the server that the frames take in turn (the edge client keeps one per worker).
        #[arg(long, default_value_t = 1)]
        quic_connections: usize,
    },
    /// What deciding costs against the small network (GFLOPs and ms, both bases).
    Decision {
        /// Decision network configuration (encoder, head, networks, SPP).
        #[arg(long, default_value = "config/dn.toml")]
        config: PathBuf,
        /// A trained dn.toml to time (default: a fresh network of the configured shape).
        #[arg(long)]
        dn: Option<PathBuf>,
        /// Input size of the downscaled base.
        #[arg(long, default_value_t = 129)]
        downscaled: u32,
        /// Timed runs of every part.
        #[arg(long, default_value_t = 200)]
        runs: usize,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGESEG_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The first SIGINT/SIGTERM requests the shutdown: intake stops, in-flight frames finish and
/// the outputs are finalised. A second one exits at once, even if a camera or a drain is stuck.
fn shutdown_on_signals() -> anyhow::Result<Shutdown> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("installing the signal handler")?;
    let shutdown = Shutdown::new();
    let requested = shutdown.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signals = signals.forever();
            if signals.next().is_some() {
                tracing::info!("stop requested: finishing the frames in flight (signal again to exit at once)");
                requested.request();
            }
            if let Some(signal) = signals.next() {
                tracing::warn!("second stop request: exiting at once, outputs may be incomplete");
                // _exit, not exit: atexit handlers (ONNX Runtime's, OpenCV's) would run while the
                // stage threads still use them, and can abort or hang the very exit asked for.
                unsafe { libc::_exit(128 + signal) };
            }
        })
        .context("starting the signal thread")?;
    Ok(shutdown)
}

fn print_summary(s: &RunSummary) {
    println!("edgeseg run summary");
    println!(
        "  frames: in {} out {} dropped {} (source {})",
        s.frames_in,
        s.frames_out,
        s.dropped,
        if s.live_source { "live" } else { "replay" }
    );
    let by: Vec<String> = s.by_source.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("  paths: {}", if by.is_empty() { "-".to_string() } else { by.join(", ") });
    if let Some(over_time) = s.remote_share_over_time() {
        println!("  remote share (mean threshold) per output.route_window_s: {over_time}");
    }
    println!("  wall {:.2} s, {:.1} frames/s ({:.1} frames/s first to last frame)", s.wall_s, s.fps, s.steady_fps);
    for (stage, p) in &s.latency {
        println!("  latency {stage:<12} p50 {:>8.2} ms  p99 {:>8.2} ms  (n={})", p.p50_ms, p.p99_ms, p.count);
    }
    let queues: Vec<String> = s.queues.iter().map(|q| format!("{} {}/{}", q.name, q.max_depth, q.capacity)).collect();
    println!("  max queue depth: {}", queues.join(", "));
    let memory = s.frame_memory;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!("  frame memory in flight: peak {:.1} MiB of {:.0} MiB", mib(memory.peak_bytes), mib(memory.budget_bytes));
    if let Some(r) = &s.remote {
        println!(
            "  remote: sent {} answered {} failures {} rtt {:.1} ms worker queue {:.1} ms",
            r.sent, r.answered, r.failures, r.rtt_ms, r.worker_queue_ms
        );
    }
    if s.released_out_of_order > 0 {
        println!("  frames released out of order (reorder window full): {}", s.released_out_of_order);
    }
    let o = &s.outputs;
    for (what, p) in [("records", &o.records), ("masks", &o.masks), ("overlay", &o.overlay)] {
        if let Some(p) = p {
            println!("  {what}: {}", p.display());
        }
    }
}

fn models_info(path: &std::path::Path, bench: Option<usize>, threads: usize, frame: &str) -> anyhow::Result<()> {
    use edgeseg::infer::onnx_graph;
    let manifest = edgeseg::infer::ModelManifest::load(path)?;
    let (graph, cost) = onnx_graph::cost_for_manifest(&manifest)?;
    let input = &manifest.input;
    println!("model {} ({})", manifest.name, path.display());
    let opsets: Vec<String> = graph.opsets.iter().map(|(domain, version)| format!("{domain} {version}")).collect();
    println!("  onnx: {} (opsets: {})", manifest.onnx.display(), opsets.join(", "));
    for i in graph.inputs() {
        println!("  input:  {i}");
    }
    for o in graph.outputs() {
        println!("  output: {o}");
    }
    println!(
        "  manifest: input {:?} {}x{} {} {:?} {:?}, fit {:?}; reads output {:?} ({:?}, {} classes)",
        input.name,
        input.width,
        input.height,
        input.layout.name(),
        input.dtype,
        input.color,
        input.fit,
        manifest.output.name,
        manifest.output.kind,
        manifest.output.classes.len()
    );
    let shape: Vec<String> = manifest.input_shape(1).iter().map(ToString::to_string).collect();
    println!("  at input [{}]:", shape.join(", "));
    for (name, shape) in &cost.output_shapes {
        println!("    output {name} {shape:?}");
    }
    for (op, (nodes, macs)) in cost.by_op.iter().filter(|(_, (_, macs))| *macs > 0) {
        println!("    {op}: {nodes} nodes, {:.3} G multiply-adds", *macs as f64 / 1e9);
    }
    println!("  GFLOPs: {:.3} (2 x {} multiply-adds of Conv/MatMul/Gemm)", cost.gflops(), cost.multiply_adds);
    if (cost.gflops() - manifest.gflops).abs() > 0.005 {
        println!("  note: the manifest says gflops = {}; set it to {:.2}", manifest.gflops, cost.gflops());
    }
    if let Some(frames) = bench {
        let (width, height) = edgeseg::bench::parse_size(frame)?;
        let settings = offline_session(path, threads)?;
        let t = edgeseg::bench::model(&settings, frames, width, height)?;
        println!(
            "  bench ({threads} intra-op thread(s), batch 1, median of {frames}): network {:.1} ms, segment a {width}x{height} frame {:.1} ms",
            t.network_ms, t.segment_ms
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => {
            let config = args.load()?;
            let shutdown = shutdown_on_signals()?;
            let telemetry = Arc::new(EdgeTelemetry::new(&config));
            let service = Service::start(telemetry.clone(), config.metrics.listen, &shutdown)?;
            let outcome = edgeseg::pipeline::run_with(&config, &shutdown, Vec::new(), &telemetry);
            service.finish();
            let outcome = outcome?;
            print_summary(&outcome.summary);
            println!("  summary: {}", config.output.dir.join("summary.json").display());
            if let Some(e) = outcome.error {
                eprintln!("error: {e}");
                eprintln!("(the {} frames processed before the error were written)", outcome.summary.frames_out);
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker { config, overrides } => {
            let config = WorkerConfig::load(&config, &overrides)?;
            let shutdown = shutdown_on_signals()?;
            let worker = edgeseg::remote::worker::Worker::start(&config, shutdown.clone())?;
            println!("worker listening on {}", worker.local_addr);
            let telemetry = Arc::new(WorkerTelemetry::new(worker.probe(), &config));
            let service = Service::start(telemetry, config.metrics.listen, &shutdown)?;
            let s = worker.wait();
            service.finish();
            println!(
                "worker stopped: answered {} overloaded {} expired {} protocol errors {} refused handshakes {}; batch sizes {:?}",
                s.answered, s.rejected_overloaded, s.expired, s.protocol_errors, s.handshake_failures, s.batch_sizes
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs { out, worker_names, clients, force } => {
            let pki = edgeseg::remote::tls::generate_dev_pki(&out, &worker_names, &clients, force)?;
            println!("CA: {}", pki.ca.display());
            println!("worker: {} / {}", pki.worker.cert.display(), pki.worker.key.display());
            for (name, paths) in &pki.clients {
                println!("client {name}: {} / {}", paths.cert.display(), paths.key.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Models { which: ModelsCommand::Info { manifest, bench, threads, frame } } => {
            models_info(&manifest, bench, threads, &frame)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { which } => {
            match which {
                BenchCommand::Pipeline { edge } => {
                    let config = edge.load()?;
                    edgeseg::bench::pipeline(&config)?;
                }
                BenchCommand::Control { edge, large_model, calm_s, loaded_s, hog_weight } => {
                    use edgeseg::bench::control;
                    let config = edge.load()?;
                    let options = control::ControlBenchOptions {
                        video: edge.input.clone().unwrap_or_else(control::default_video),
                        large_model: large_model.unwrap_or_else(control::default_large_model),
                        calm: std::time::Duration::try_from_secs_f64(calm_s).context("--calm-s")?,
                        loaded: std::time::Duration::try_from_secs_f64(loaded_s).context("--loaded-s")?,
                        hog_weight,
                        out: edge.out.clone().unwrap_or_else(|| PathBuf::from("out/bench-control")),
                    };
                    let bench = control::control(&config, &options)?;
                    println!("{}", control::describe(&bench));
                    print!("{}", control::table(&bench));
                    println!("  wrote {}", options.out.join("bench-control.json").display());
                }
                BenchCommand::Transport { frames, sizes, concurrency, rounds, link, quic_connections } => {
                    edgeseg::bench::transport(&edgeseg::bench::TransportOptions {
                        frames,
                        sizes,
                        concurrency,
                        rounds,
                        link,
                        quic_connections,
                    })?;
                }
                BenchCommand::Decision { config, dn, downscaled, runs } => {
                    let config = edgeseg::decision::config::DnConfig::load(&config, &[])?;
                    let bench = edgeseg::decision::bench::decision_cost(&config, dn.as_deref(), downscaled, runs.max(1))?;
                    bench.lines().iter().for_each(|line| println!("{line}"));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { which: EvalCommand::Segment(args) } => eval_segment(&args),
        Command::Eval { which: EvalCommand::Routing(args) } => eval_routing(&args),
        Command::Dn { which: DnCommand::Train { config, out, overrides } } => dn_train(&config, out.as_deref(), &overrides),
        Command::Plot { which: PlotCommand::Metrics { metrics, out } } => {
            let out = out.unwrap_or_else(|| metrics.with_extension("png"));
            let series = edgeseg::control::plot::plot_metrics(&metrics, &out)?;
            println!("plot metrics: {} ({}) -> {}", metrics.display(), series.describe(), out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Pairs `--data` folders with `--list` files: none, one for all, or one each.
fn pair_lists(data: &[PathBuf], lists: &[PathBuf], flag: &str) -> anyhow::Result<Vec<edgeseg::decision::experiment::DataArg>> {
    use edgeseg::decision::experiment::DataArg;
    let list_for = |i: usize| match lists.len() {
        0 => Ok(None),
        1 => Ok(Some(lists[0].clone())),
        n if n == data.len() => Ok(Some(lists[i].clone())),
        n => Err(anyhow::anyhow!("{n} {flag} files for {} folders: give none, one for all, or one per folder", data.len())),
    };
    data.iter().enumerate().map(|(i, d)| Ok(DataArg { data: d.clone(), list: list_for(i)? })).collect()
}

fn dn_train(config: &std::path::Path, out: Option<&std::path::Path>, overrides: &[String]) -> anyhow::Result<ExitCode> {
    use edgeseg::decision::config::DnConfig;
    let config = DnConfig::load(config, overrides)?;
    let outcome = edgeseg::decision::experiment::train_from_config(&config, out)?;
    println!(
        "dn train: {} training and {} validation images; per-image figures {:.1} s, training {:.1} s ({} iterations)",
        outcome.train_images, outcome.validation_images, outcome.features_s, outcome.training_s, outcome.report.iterations
    );
    println!(
        "  per-image figures: {} computed, {} from the cache",
        outcome.computed_images,
        outcome.train_images + outcome.validation_images - outcome.computed_images
    );
    println!("  final training loss {:.4}", outcome.report.final_train_loss);
    if let Some(m) = outcome.report.validation.last() {
        println!(
            "  validation: loss {:.4}, class IoU MAE {:.3}, IoU_img MAE {:.3} (r {:.2}), gain MAE {:.3} (r {:.2}), presence accuracy {:.3}",
            m.loss, m.class_iou_mae, m.iou_img_mae, m.iou_img_correlation, m.gain_mae, m.gain_correlation, m.presence_accuracy
        );
    }
    let c = &outcome.costs;
    println!(
        "  GFLOPs: small {:.3}, large {:.3}, base {:.3}, decision head {:.4}; decision ÷ small {}: {:.4}",
        c.small,
        c.large,
        c.encoder,
        c.decision_head,
        if c.shared { "for a local frame" } else { "per frame" },
        c.decision_over_small()
    );
    if let Some(routing) = &outcome.validation_routing {
        println!("  routing on the validation images (normalised AUC of hybrid mIoU against remote fraction):");
        for p in &routing.policies {
            println!("    {:<12} {}", p.name, nauc_cell(p));
        }
    }
    println!("  wrote {}", outcome.toml.display());
    Ok(ExitCode::SUCCESS)
}

/// A policy's normalised AUC for the terminal: value, 90 % bootstrap interval and how often it
/// beat the confidence baseline.
fn nauc_cell(p: &edgeseg::eval::routing::PolicyResult) -> String {
    let Some(value) = p.normalised_auc else { return "–".to_string() };
    let interval = p.normalised_auc_interval.map_or_else(String::new, |[lo, hi]| format!(" [{lo:.2}, {hi:.2}]"));
    let ahead = p.ahead_of_baseline.map_or_else(String::new, |a| format!(" {:.0} %", 100.0 * a));
    format!("{value:.2}{interval}{ahead}")
}

fn eval_routing(args: &RoutingArgs) -> anyhow::Result<ExitCode> {
    use edgeseg::decision::config::DnConfig;
    use edgeseg::decision::experiment::{evaluate_routing, RoutingRequest};
    let config = DnConfig::load(&args.config, &args.overrides)?;
    let request = RoutingRequest {
        dn: args.dn.clone(),
        ensemble: args.ensemble.clone(),
        data: pair_lists(&args.data, &args.list, "--list")?,
        choose_on: pair_lists(&args.choose_on, &args.choose_list, "--choose-list")?,
        out: args.out.clone(),
        progress: true,
        resamples: args.resamples,
    };
    let (evaluation, files) = evaluate_routing(&config, &request)?;
    println!(
        "eval routing: {} images, mIoU all-small {:.1} %, all-large {:.1} %",
        evaluation.images,
        100.0 * evaluation.all_small_miou,
        100.0 * evaluation.all_large_miou
    );
    let baseline = evaluation.bootstrap.as_ref().and_then(|b| b.baseline.clone()).unwrap_or_default();
    println!(
        "  {:<12} {:<36}  {:>30}  {:>30}",
        "policy",
        format!("nAUC [90 % interval] ahead of {baseline}"),
        "≤3 pt: drop / total / edge saved",
        "≤1 pt: drop / total / edge saved"
    );
    for p in &evaluation.policies {
        let at = |budget: f64| {
            p.choices.iter().find(|c| c.budget_points == budget).map_or_else(
                || "–".to_string(),
                |c| {
                    format!(
                        "{:.2} / {:.1} % / {:.1} %",
                        c.realised.drop_points,
                        100.0 * c.realised.total_reduction,
                        100.0 * c.realised.edge_reduction
                    )
                },
            )
        };
        println!("  {:<12} {:<36}  {:>30}  {:>30}", p.name, nauc_cell(p), at(3.0), at(1.0));
    }
    println!(
        "  wrote {}, {}, {}, {} and {} plots",
        files.report.display(),
        files.csv.display(),
        files.images.display(),
        files.json.display(),
        files.plots.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Session settings for the offline commands (models info --bench, eval): `--threads` intra-op
/// threads, the rest as a config file's defaults.
fn offline_session(manifest: &std::path::Path, threads: usize) -> anyhow::Result<SessionConfig> {
    let intra_threads = Count::new(threads).with_context(|| format!("--threads {threads} is outside 1..=64"))?;
    Ok(SessionConfig { manifest: manifest.to_path_buf(), intra_threads, ..Default::default() })
}

fn eval_segment(args: &SegmentArgs) -> anyhow::Result<ExitCode> {
    use edgeseg::eval;
    let session = offline_session(&args.model, args.threads)?;
    let mut model = edgeseg::infer::Model::load(&session)?;
    if let Some(fit) = &args.fit {
        let fit = if fit == "pad" { edgeseg::infer::Fit::Pad } else { edgeseg::infer::Fit::Stretch };
        model.manifest = model.manifest.with_fit(fit, args.pad_value)?;
    }
    let classes = model.manifest.output.classes.len();
    let dataset = eval::Dataset::open(&args.data, args.list.as_deref(), classes)?;
    let options =
        eval::EvalOptions { skip_bad: args.skip_bad, limit: args.limit, decode_threads: args.decode_threads, ..Default::default() };
    let mut progress = eval::ProgressObserver::new(&model.manifest.name);
    let result = eval::evaluate(&mut model, &dataset, &options, &mut progress)?;
    let written = result.write(&args.out)?;
    let summary = result.summary();
    println!("eval segment: {} (fit {}) on {}", summary.model, summary.fit, summary.data.display());
    for line in summary.headline() {
        println!("  {line}");
    }
    for skipped in &summary.skipped_images {
        println!("  skipped {}: {}", skipped.id, skipped.error);
    }
    println!("  wrote {}, {}, {}", written.metrics.display(), written.per_image.display(), written.report.display());
    Ok(ExitCode::SUCCESS)
}
