//! `edgeseg-link`: holds an emulated impaired link open (see `edgeseg::bench::link`) so a worker
//! and an edge can be run across it by hand, e.g.
//!
//! ```sh
//! edgeseg-link 'delay=10ms,loss=1%,rate=20mbit'      # prints the two namespaces, Ctrl-C ends it
//! ip netns exec edgeseg-<pid>-0-server edgeseg worker --set listen=10.77.0.1:7443 ...
//! ip netns exec edgeseg-<pid>-0-client edgeseg run --set 'remote.workers=["10.77.0.1:7443"]' ...
//! ```
//!
//! On SIGINT/SIGTERM it prints what the link forwarded and dropped, and deletes the namespaces.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use edgeseg::bench::link::{EmulatedLink, LinkSpec, Side};

#[derive(Parser)]
#[command(name = "edgeseg-link", version, about = "An emulated impaired link between two network namespaces (needs root)")]
struct Cli {
    /// Impairments, e.g. delay=10ms,jitter=2ms,loss=1%,rate=20mbit,queue=100KB,outage=5s+3s,seed=7
    /// (delay is one-way; an up. or down. prefix impairs client→server or server→client only).
    spec: LinkSpec,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing the signal handler")?;
    }
    let link = EmulatedLink::start(&cli.spec)?;
    println!("link up: {}", link.spec());
    for side in [Side::Server, Side::Client] {
        println!("  {side:?} side: namespace {} address {}", link.namespace(side), EmulatedLink::address(side));
    }
    println!("run programs with `ip netns exec NAMESPACE ...`; Ctrl-C tears the link down");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let stats = link.stats();
    println!("link down: up {}; down {}", stats.up, stats.down);
    Ok(())
}
