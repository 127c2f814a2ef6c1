//! `automation-framework bench`: a load generator for an operator's own daemon,
//! and (`--floor`) for an in-process echo server that costs what the socket alone
//! costs. See `automation_framework_cli::load`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use automation_framework_cli::load::floor::Floor;
use automation_framework_cli::load::wire::{self, Ask, Frames, Mix};
use automation_framework_cli::load::{self, Load, Summary};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Connections, each its own session.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    connections: u32,
    /// Requests in flight per connection (1: wait for each reply).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pipeline: u32,
    /// How long to measure, after the warm-up (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long to run before measuring.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// What each connection asks.
    #[arg(long, value_enum, default_value_t = Mix::Pairs)]
    mix: Mix,
    /// Distinct agent names (bench-0, bench-1, ...) cycled through, to exercise
    /// keyed state such as per-agent rate limits.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    keys: u64,
    /// The service to admit calls to.
    #[arg(long, default_value = "bench")]
    service: String,
    /// Measure the floor instead of the daemon: an in-process server on a temporary
    /// socket that answers with ready-made replies of the same sizes.
    #[arg(long)]
    floor: bool,
    /// A lease every admission names (taken by the admission, given back by
    /// its report). Use with --connections 1: other connections are refused it.
    #[arg(long)]
    lease: Option<String>,
    /// Client threads [default: the number of CPUs].
    #[arg(long)]
    threads: Option<usize>,
}

/// Runs the load and prints its summary. Blocking: it builds its own runtime.
pub fn run(args: BenchArgs, socket: PathBuf, agent: String, json: bool) -> anyhow::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("af-bench")
        .enable_all()
        .build()
        .context("starting the bench runtime")?;
    if args.floor && args.mix == Mix::Check {
        anyhow::bail!("--floor answers canned ping, admit and report replies; a check's cost is the scanner's, which has no floor. Measure it against the daemon (without --floor), or use --mix pairs, admit or ping");
    }
    // The floor's server gets as many threads as the daemon's runtime would.
    let floor = if args.floor {
        Some(Floor::start(
            std::thread::available_parallelism().map_or(1, usize::from),
        )?)
    } else {
        None
    };
    let ask = Arc::new(Ask {
        socket: floor.as_ref().map_or(socket, |f| f.socket().to_owned()),
        mix: args.mix,
        service: args.service,
        keys: usize::try_from(args.keys).context("--keys")?,
        agent,
        lease: args.lease,
    });
    let frames = Arc::new(Frames::new(&ask)?);
    let load = Load {
        connections: args.connections as usize,
        pipeline: args.pipeline as usize,
        warmup: args.warmup,
        duration: args.duration,
    };
    let tally = runtime.block_on(load::run(&load, |index, window| {
        let ask = Arc::clone(&ask);
        let frames = Arc::clone(&frames);
        async move { wire::drive(&ask, &frames, index, load.pipeline, window).await }
    }))?;
    let target = if floor.is_some() { "floor" } else { "daemon" };
    let summary = Summary::new(target, args.mix.name(), &load, &tally);
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.render());
    }
    drop(floor);
    Ok(())
}
