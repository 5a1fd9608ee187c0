//! The `edgeseg` binary: the edge service (`run`), the remote worker (`worker`), development
//! certificates (`certs`) and benchmarks (`bench`). Errors reach the user here, through anyhow.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use edgeseg::config::{EdgeConfig, WorkerConfig};
use edgeseg::pipeline::RunSummary;

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
    /// Benchmarks that print rates and ratios.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Local pipeline rate versus the bare model on the same frames.
    Pipeline {
        #[command(flatten)]
        edge: EdgeArgs,
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

/// SIGINT/SIGTERM ask the pipeline to stop taking frames; in-flight frames still finish.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing the signal handler")?;
    }
    Ok(stop)
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
    println!("  wall {:.2} s, {:.1} frames/s ({:.1} frames/s first to last frame)", s.wall_s, s.fps, s.steady_fps);
    for (stage, p) in &s.latency {
        println!("  latency {stage:<12} p50 {:>8.2} ms  p99 {:>8.2} ms  (n={})", p.p50_ms, p.p99_ms, p.count);
    }
    let queues: Vec<String> = s.queues.iter().map(|q| format!("{} {}/{}", q.name, q.max_depth, q.capacity)).collect();
    println!("  max queue depth: {}", queues.join(", "));
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
            let outcome = edgeseg::pipeline::run(&config, stop_flag()?)?;
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
            let stop = stop_flag()?;
            let worker = edgeseg::remote::worker::Worker::start(&config)?;
            println!("worker listening on {}", worker.local_addr);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let s = worker.shutdown();
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
        Command::Bench { which } => {
            match which {
                BenchCommand::Pipeline { edge } => {
                    let config = edge.load()?;
                    edgeseg::bench::pipeline(&config)?;
                }
                BenchCommand::Transport { frames, sizes, concurrency, rounds, link } => {
                    edgeseg::bench::transport(&edgeseg::bench::TransportOptions { frames, sizes, concurrency, rounds, link })?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
