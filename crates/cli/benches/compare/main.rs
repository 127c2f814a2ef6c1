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
//! cargo bench --bench compare -- --only daemon,guards --connections 1 --reps 9
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

/// The no-budget daemon plus a bulkhead, for cells whose admissions also name
/// a lease: issue 11's configuration (a bulkhead and a lease may cost at most
/// 10 % more). A limit that never denies, so every admission takes a permit
/// and holds the lease until its report.
const GUARDS: &str = "[daemon]\nmax_connections_per_uid = 1024\n\
[services.bench]\n\
[[rate_limits]]\nname = \"open\"\nrate = 100000000\nburst = 100000000\n\
[[bulkheads]]\nname = \"llm\"\nscope = \"service\"\nmax_in_flight = 100000\n\
[budget]\nenabled = false\n";

/// Added to [`GUARDS`] for the stricter cell: the active-agent cap too, so
/// each admission also counts its agent.
const AGENT_CAP: &str = "[concurrency]\nmax_active_agents = 1000\n";

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
    GuardsAndCap,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Floor => "floor",
            Target::Daemon => "daemon",
            Target::Redis => "redis",
            Target::Budget => "daemon+budget",
            Target::Guards => "daemon+bulkhead+lease",
            Target::GuardsAndCap => "daemon+bulkhead+agent-cap+lease",
        }
    }
}

struct Options {
    quick: bool,
    only: Vec<String>,
    reps: usize,
    secs: f64,
    /// Connection counts to run instead of the usual ones.
    connections: Vec<usize>,
}

impl Options {
    fn parse() -> anyhow::Result<Options> {
        let mut options = Options {
            quick: false,
            only: Vec::new(),
            reps: 3,
            secs: 1.5,
            connections: Vec::new(),
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
                "--connections" => {
                    let list = args.next().context("--connections needs a list")?;
                    options.connections = list
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .context("--connections 1,16")?;
                }
                other => anyhow::bail!(
                    "unknown argument {other:?}; use --quick, --only floor,daemon,redis,budget,guards,memory, --reps N, --secs S, --connections 1,16"
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
    /// The daemon's CPU time per request over the measured window (all its
    /// threads), when the target is a daemon of this bench.
    cpu_us: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(1, usize::from))
        .enable_all()
        .build()?;
    println!("{}", machine());

    let (connections, pipelines): (&[usize], &[usize]) = if !options.connections.is_empty() {
        (&options.connections, &[1, 32])
    } else if options.quick {
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
    let guards_and_cap = options
        .wants("guards")
        .then(|| Daemon::start(&format!("{GUARDS}{AGENT_CAP}")))
        .transpose()?;
    // None when redis-server is not installed: the table shows "—".
    let redis = if options.wants("redis") {
        redis::RedisServer::start()?
    } else {
        None
    };

    let mut targets: Vec<(Target, &Path, Option<u32>)> = Vec::new();
    if let Some(floor) = &floor {
        targets.push((Target::Floor, floor.socket(), None));
    }
    if let Some(daemon) = &daemon {
        targets.push((Target::Daemon, &daemon.socket, Some(daemon.pid())));
    }
    if let Some(redis) = &redis {
        targets.push((Target::Redis, redis.socket(), None));
    }
    // Bulkhead and lease cells run on one connection only (see LEASE).
    let mut guarded: Vec<(Target, &Path, Option<u32>)> = Vec::new();
    if let Some(guards) = &guards {
        guarded.push((Target::Guards, &guards.socket, Some(guards.pid())));
    }
    if let Some(guards) = &guards_and_cap {
        guarded.push((Target::GuardsAndCap, &guards.socket, Some(guards.pid())));
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
                for (target, socket, pid) in rotated(&targets, rep) {
                    let summary = runtime.block_on(cell(socket, load(c, p), target, pid))?;
                    figures.entry((c, p, target)).or_default().push(summary);
                }
                // Budget cells only where the target is stated (16 connections).
                if let (Some(budget), 16) = (&budget, c) {
                    let summary = runtime.block_on(cell(
                        &budget.socket,
                        load(c, p),
                        Target::Budget,
                        Some(budget.pid()),
                    ))?;
                    figures
                        .entry((c, p, Target::Budget))
                        .or_default()
                        .push(summary);
                }
                if c == 1 {
                    for (target, socket, pid) in rotated(&guarded, rep) {
                        let summary = runtime.block_on(cell(socket, load(c, p), target, pid))?;
                        figures.entry((c, p, target)).or_default().push(summary);
                    }
                }
            }
        }
        eprintln!("repetition {} of {} done", rep + 1, options.reps);
    }
    print!("{}", table(&figures, connections, pipelines));
    // Daemons and servers of the table stop first, so they cost no memory or CPU.
    drop((floor, daemon, budget, guards, guards_and_cap, redis));
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

/// `list` in an order that rotates with the repetition, so that drift of the
/// machine hits every target alike.
fn rotated<T: Clone>(list: &[T], rep: usize) -> Vec<T> {
    let mut order = list.to_vec();
    if !order.is_empty() {
        let n = order.len();
        order.rotate_left(rep % n);
    }
    order
}

/// Runs one load against one target and returns its figures; with the
/// target's process id, also its CPU time per request, read when the
/// measured window opens and when it closes.
async fn cell(
    socket: &Path,
    load: Load,
    target: Target,
    pid: Option<u32>,
) -> anyhow::Result<Figure> {
    let ask = Arc::new(Ask {
        socket: socket.to_owned(),
        mix: Mix::Pairs,
        service: "bench".into(),
        keys: 1,
        agent: "bench".into(),
        lease: matches!(target, Target::Guards | Target::GuardsAndCap).then(|| LEASE.to_owned()),
    });
    let frames = Arc::new(Frames::new(&ask)?);
    // The window `load_gen::run` measures, as near as a second clock reading
    // gets: it starts the warm-up right after this.
    let begin = tokio::time::Instant::now();
    let cpu = pid.map(|pid| {
        tokio::spawn(async move {
            tokio::time::sleep_until(begin + load.warmup).await;
            let start = daemon::cpu_of(pid);
            tokio::time::sleep_until(begin + load.warmup + load.duration).await;
            Some(daemon::cpu_of(pid)?.saturating_sub(start?))
        })
    });
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
    let cpu = match cpu {
        Some(sampler) => sampler.await?,
        None => None,
    };
    Ok(Figure {
        ops_per_sec: summary.ops_per_sec,
        p50_us: summary.p50_us,
        p99_us: summary.p99_us,
        cpu_us: cpu
            .filter(|_| summary.ops > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / summary.ops as f64),
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
    // Each repetition runs the cells with and without the guards a moment
    // apart; the median of those paired ratios is steadier than the ratio of
    // two medians when the machine's speed drifts between repetitions.
    let paired = |p: usize, with: Target, f: fn(&Figure) -> Option<f64>| -> Option<f64> {
        let with = figures.get(&(1, p, with))?;
        let without = figures.get(&(1, p, Target::Daemon))?;
        let ratios: Vec<f64> = with
            .iter()
            .zip(without)
            .filter_map(|(w, wo)| Some(f(w)? / f(wo)?))
            .collect();
        (!ratios.is_empty()).then(|| median(ratios))
    };
    let cpu = |c: usize, p: usize, t: Target| -> Option<f64> {
        let all: Vec<f64> = figures
            .get(&(c, p, t))?
            .iter()
            .filter_map(|f| f.cpu_us)
            .collect();
        (!all.is_empty()).then(|| median(all))
    };
    let two = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.2}"));
    let guard_rows: Vec<String> = [
        (Target::Guards, "a bulkhead and a lease"),
        (
            Target::GuardsAndCap,
            "a bulkhead, the active-agent cap and a lease",
        ),
    ]
    .into_iter()
    .flat_map(|(target, what)| {
        pipelines.iter().filter_map(move |&p| {
            let with = get(1, p, target, |f| f.ops_per_sec)?;
            let without = get(1, p, Target::Daemon, |f| f.ops_per_sec);
            Some(format!(
                "| {what} | {p} | {} | {} | {} | {} | {} | {} | {} |\n",
                fmt(Some(with)),
                fmt(without),
                two(paired(p, target, |f| Some(f.ops_per_sec))),
                two(cpu(1, p, target)),
                two(cpu(1, p, Target::Daemon)),
                two(paired(p, target, |f| f.cpu_us)),
                us(get(1, p, target, |f| f.p50_us)),
            ))
        })
    })
    .collect();
    if !guard_rows.is_empty() {
        out.push_str(
            "\nconcurrency guards and a lease vs none, one connection (the lease is one connection's);\n\
             ratios are medians of each repetition's pair, CPU is the daemon's per request\n\n\
             | guards | pipeline | with req/s | without req/s | throughput ratio | CPU µs with | CPU µs without | CPU ratio | p50 with µs |\n\
             |---|---|---|---|---|---|---|---|---|\n",
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
