//! The comparison run of issue 6: the floor (socket and codec alone), the daemon,
//! and Redis doing a GCRA check in Lua, under the same closed-loop load, plus the
//! daemon with durable budget enforcement, the daemon with a bulkhead and a lease
//! (`--only guards`: one connection, as a lease is one holder's), memory and
//! start-up time.
//!
//! ```sh
//! crates/cli/benches/install-redis                # Debian's redis-server, if absent
//! cargo bench --bench compare          # the full run, a few minutes
//! cargo bench --bench compare -- --quick   # seconds: CI's smoke run, no thresholds
//! cargo bench --bench compare -- --only floor,daemon --reps 5 --secs 2
//! ```
//!
//! Every cell runs each target once per repetition, the targets in an order that
//! rotates between repetitions, so drift of the machine hits all alike; the table
//! shows medians. Nothing here asserts a speed: the targets are read off the table.

mod daemon;
mod memory;
mod redis;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use automation_framework_cli::load::floor::Floor;
use automation_framework_cli::load::wire::{self, Ask, Frames, Mix};
use automation_framework_cli::load::{self as load_gen, Load, Summary};

use daemon::Daemon;

/// The daemon of the comparison: one service with the default breaker and a rate
/// limit that never denies, so every admission runs both guards and is allowed.
const NO_BUDGET: &str = "[daemon]\nmax_connections_per_uid = 1024\n\
[services.bench]\n\
[[rate_limits]]\nname = \"open\"\nrate = 100000000\nburst = 100000000\n\
[budget]\nenabled = false\n";

/// The same plus a global budget: every admission reserves, every report charges,
/// each acknowledged only after its group commit (`synchronous = FULL`).
const BUDGET: &str = "[daemon]\nmax_connections_per_uid = 1024\n\
[services.bench]\n\
[[rate_limits]]\nname = \"open\"\nrate = 100000000\nburst = 100000000\n\
[budget]\nlimit = 1000000.0\n";

/// The no-budget daemon plus a bulkhead and the active-agent cap, for cells
/// whose admissions also name a lease (issue 11: a bulkhead and a lease may
/// cost at most 10 % more). Limits that never deny, so every admission takes
/// a permit, counts its agent and holds the lease until its report.
const GUARDS: &str = "[daemon]\nmax_connections_per_uid = 1024\n\
[services.bench]\n\
[[rate_limits]]\nname = \"open\"\nrate = 100000000\nburst = 100000000\n\
[[bulkheads]]\nname = \"llm\"\nscope = \"service\"\nmax_in_flight = 100000\n\
[concurrency]\nmax_active_agents = 1000\n\
[budget]\nenabled = false\n";

/// The lease every admission of a guards cell names. A lease is held by one
/// connection at a time, so the guards cells run on one connection.
const LEASE: &str = "bench";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Floor,
    Daemon,
    Redis,
    Budget,
    Guards,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Floor => "floor",
            Target::Daemon => "daemon",
            Target::Redis => "redis",
            Target::Budget => "daemon+budget",
            Target::Guards => "daemon+bulkhead+lease",
        }
    }
}

struct Options {
    quick: bool,
    only: Vec<String>,
    reps: usize,
    secs: f64,
}

impl Options {
    fn parse() -> anyhow::Result<Options> {
        let mut options = Options {
            quick: false,
            only: Vec::new(),
            reps: 3,
            secs: 1.5,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                // cargo bench passes --bench to every bench binary.
                "--bench" => {}
                "--quick" => options.quick = true,
                "--only" => {
                    let list = args.next().context("--only needs a list")?;
                    options.only = list.split(',').map(str::to_owned).collect();
                }
                "--reps" => options.reps = args.next().context("--reps N")?.parse()?,
                "--secs" => options.secs = args.next().context("--secs S")?.parse()?,
                other => anyhow::bail!(
                    "unknown argument {other:?}; use --quick, --only floor,daemon,redis,budget,guards,memory, --reps N, --secs S"
                ),
            }
        }
        if options.quick {
            options.reps = 1;
            options.secs = 0.2;
        }
        Ok(options)
    }

    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

/// One cell's figures from one repetition.
#[derive(Clone, Copy)]
struct Figure {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(1, usize::from))
        .enable_all()
        .build()?;
    println!("{}", machine());

    let (connections, pipelines): (&[usize], &[usize]) = if options.quick {
        (&[1, 16], &[1, 32])
    } else {
        (&[1, 4, 16, 64], &[1, 32])
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let floor = options
        .wants("floor")
        .then(|| Floor::start(cores))
        .transpose()?;
    let daemon = options
        .wants("daemon")
        .then(|| Daemon::start(NO_BUDGET))
        .transpose()?;
    let budget = options
        .wants("budget")
        .then(|| Daemon::start(BUDGET))
        .transpose()?;
    let guards = options
        .wants("guards")
        .then(|| Daemon::start(GUARDS))
        .transpose()?;
    // None when redis-server is not installed: the table shows "—".
    let redis = if options.wants("redis") {
        redis::RedisServer::start()?
    } else {
        None
    };

    let mut targets: Vec<(Target, &Path)> = Vec::new();
    if let Some(floor) = &floor {
        targets.push((Target::Floor, floor.socket()));
    }
    if let Some(daemon) = &daemon {
        targets.push((Target::Daemon, &daemon.socket));
    }
    if let Some(redis) = &redis {
        targets.push((Target::Redis, redis.socket()));
    }
    let load = |connections, pipeline| Load {
        connections,
        pipeline,
        warmup: Duration::from_secs_f64(options.secs / 4.0),
        duration: Duration::from_secs_f64(options.secs),
    };

    let mut figures: BTreeMap<(usize, usize, Target), Vec<Figure>> = BTreeMap::new();
    for rep in 0..options.reps {
        for &c in connections {
            for &p in pipelines {
                let mut order: Vec<(Target, &Path)> = targets.clone();
                if !order.is_empty() {
                    let n = order.len();
                    order.rotate_left(rep % n);
                }
                for (target, socket) in order {
                    let summary = runtime.block_on(cell(socket, load(c, p), target))?;
                    figures.entry((c, p, target)).or_default().push(summary);
                }
                // Budget cells only where the target is stated (16 connections).
                if let (Some(budget), 16) = (&budget, c) {
                    let summary =
                        runtime.block_on(cell(&budget.socket, load(c, p), Target::Budget))?;
                    figures
                        .entry((c, p, Target::Budget))
                        .or_default()
                        .push(summary);
                }
                // Bulkhead and lease cells on one connection (see LEASE).
                if let (Some(guards), 1) = (&guards, c) {
                    let summary =
                        runtime.block_on(cell(&guards.socket, load(c, p), Target::Guards))?;
                    figures
                        .entry((c, p, Target::Guards))
                        .or_default()
                        .push(summary);
                }
            }
        }
        eprintln!("repetition {} of {} done", rep + 1, options.reps);
    }
    print!("{}", table(&figures, connections, pipelines));
    // Daemons and servers of the table stop first, so they cost no memory or CPU.
    drop((floor, daemon, budget, guards, redis));
    if options.wants("memory") {
        let (keys, starts) = if options.quick {
            (20_000, 2)
        } else {
            (1_000_000, 10)
        };
        println!("\nmemory and start-up (one daemon per start, its own ledger)\n");
        print!("{}", memory::render(&memory::measure(keys, starts)?));
    }
    Ok(())
}

/// Runs one load against one target and returns its figures.
async fn cell(socket: &Path, load: Load, target: Target) -> anyhow::Result<Figure> {
    let ask = Arc::new(Ask {
        socket: socket.to_owned(),
        mix: Mix::Pairs,
        service: "bench".into(),
        keys: 1,
        agent: "bench".into(),
        lease: (target == Target::Guards).then(|| LEASE.to_owned()),
    });
    let frames = Arc::new(Frames::new(&ask)?);
    let tally = load_gen::run(&load, |index, window| {
        let ask = Arc::clone(&ask);
        let frames = Arc::clone(&frames);
        async move {
            if target == Target::Redis {
                redis::drive(&ask.socket, ask.keys, index, load.pipeline, window).await
            } else {
                wire::drive(&ask, &frames, index, load.pipeline, window).await
            }
        }
    })
    .await
    .with_context(|| format!("{} at {} connections", target.name(), load.connections))?;
    let summary = Summary::new(target.name(), "pairs", &load, &tally);
    if summary.errors > 0 || summary.denied > 0 {
        anyhow::bail!("{}", summary.render());
    }
    Ok(Figure {
        ops_per_sec: summary.ops_per_sec,
        p50_us: summary.p50_us,
        p99_us: summary.p99_us,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The comparison table: medians per cell, and the ratios the targets are about.
fn table(
    figures: &BTreeMap<(usize, usize, Target), Vec<Figure>>,
    connections: &[usize],
    pipelines: &[usize],
) -> String {
    let get = |c: usize, p: usize, t: Target, f: fn(&Figure) -> f64| -> Option<f64> {
        figures
            .get(&(c, p, t))
            .map(|all| median(all.iter().map(f).collect()))
    };
    let fmt = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.0}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".to_owned(),
    };
    let us = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.1}"));
    let mut out = String::from(
        "\nrequests/s (admit+report pairs, each request counted), medians\n\n\
         | conns | pipeline | floor | daemon | redis-gcra | daemon/floor | daemon/redis | p50 floor µs | p50 daemon µs | p99 daemon µs |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for &c in connections {
        for &p in pipelines {
            let floor = get(c, p, Target::Floor, |f| f.ops_per_sec);
            let daemon = get(c, p, Target::Daemon, |f| f.ops_per_sec);
            let redis = get(c, p, Target::Redis, |f| f.ops_per_sec);
            out.push_str(&format!(
                "| {c} | {p} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                fmt(floor),
                fmt(daemon),
                fmt(redis),
                ratio(daemon, floor),
                ratio(daemon, redis),
                us(get(c, p, Target::Floor, |f| f.p50_us)),
                us(get(c, p, Target::Daemon, |f| f.p50_us)),
                us(get(c, p, Target::Daemon, |f| f.p99_us)),
            ));
        }
    }
    let budget_rows: Vec<String> = pipelines
        .iter()
        .filter_map(|&p| {
            let with = get(16, p, Target::Budget, |f| f.ops_per_sec)?;
            let without = get(16, p, Target::Daemon, |f| f.ops_per_sec);
            Some(format!(
                "| 16 | {p} | {} | {} | {} | {} |\n",
                fmt(Some(with)),
                fmt(without),
                ratio(Some(with), without),
                us(get(16, p, Target::Budget, |f| f.p50_us)),
            ))
        })
        .collect();
    let guard_rows: Vec<String> = pipelines
        .iter()
        .filter_map(|&p| {
            let with = get(1, p, Target::Guards, |f| f.ops_per_sec)?;
            let without = get(1, p, Target::Daemon, |f| f.ops_per_sec);
            Some(format!(
                "| 1 | {p} | {} | {} | {} | {} | {} |\n",
                fmt(Some(with)),
                fmt(without),
                ratio(Some(with), without),
                us(get(1, p, Target::Guards, |f| f.p50_us)),
                us(get(1, p, Target::Daemon, |f| f.p50_us)),
            ))
        })
        .collect();
    if !guard_rows.is_empty() {
        out.push_str(
            "\na bulkhead, the active-agent cap and a lease vs none (the lease is one connection's)\n\n\
             | conns | pipeline | with | without | ratio | p50 with µs | p50 without µs |\n|---|---|---|---|---|---|---|\n",
        );
        for row in guard_rows {
            out.push_str(&row);
        }
    }
    if !budget_rows.is_empty() {
        out.push_str(
            "\nbudget enforcement with durable group commit vs none\n\n\
             | conns | pipeline | with budget | without | ratio | p50 with budget µs |\n|---|---|---|---|---|---|\n",
        );
        for row in budget_rows {
            out.push_str(&row);
        }
    }
    out
}

/// What the run ran on, for the record.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "machine: {cores} cores, {cpu}, Linux {}, automation-framework {}",
        kernel.trim(),
        env!("CARGO_PKG_VERSION")
    )
}
