//! The operator's side against the agents' side (issue 10): how much a client's
//! latency suffers while `/metrics` is scraped in a loop, and how long a purge of
//! a million rate buckets stalls admissions, against the release daemon holding
//! a million per-agent quota counters and a million per-agent rate buckets.
//!
//! ```sh
//! cargo bench --bench scrape                       # 1M keys, both parts, ~2 minutes
//! cargo bench --bench scrape -- --keys 100000 --secs 2 --only scrape
//! SCRAPE_DAEMON=/path/to/old/automation-frameworkd cargo bench --bench scrape
//! ```
//!
//! Not run by `cargo test`. Nothing here asserts a speed: read the figures off
//! the output (they are recorded in docs/PERFORMANCE.md).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use automation_framework_cli::load::wire::{self, Ask, Frames, Mix};
use automation_framework_cli::load::{self as load_gen, Load, Summary};
use automation_framework_protocol::frame::{decode, encode};
use automation_framework_protocol::{
    AdmitRequest, ClientFrame, Envelope, Outcome, ReportRequest, Request, Response, ServerFrame,
};

/// Requests per batch while filling (the daemon's default `max_batch`).
const FILL_BATCH: usize = 1024;
/// Connections filling at once.
const FILL_CONNECTIONS: usize = 4;

struct Options {
    keys: usize,
    secs: f64,
    only: Vec<String>,
    /// Seconds between the daemon's purges in the purge part.
    purge_every: u64,
}

/// The daemon as a child process on its own temp dir, socket and HTTP port.
struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    http: std::net::SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let options = parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "daemon {}; {} keys; {} s per measurement",
        binary().display(),
        options.keys,
        options.secs
    );
    if wants(&options, "scrape") {
        runtime.block_on(scrape(&options))?;
    }
    if wants(&options, "purge") {
        runtime.block_on(purge(&options))?;
    }
    Ok(())
}

/// p50/p99/max of a pinging client and of an admit+report client, each without
/// and then with a loop scraping `/metrics`, over `keys` quota counters and rate
/// buckets.
async fn scrape(options: &Options) -> anyhow::Result<()> {
    let config = "[daemon]\npurge_interval = \"1h\"\nmax_connections_per_uid = 1024\n\
        [services.bench]\n\
        [[rate_limits]]\nname = \"per-agent\"\nscope = \"agent\"\nrate = 1\nper = \"1h\"\nburst = 1000\n\
        [[quotas]]\nname = \"per-agent\"\nscope = \"agent\"\nlimit = 1000000\nwindow = \"minute\"\n\
        [budget]\nenabled = false\n";
    // A window of a minute keeps the counters out of the ledger (faster to fill);
    // a scrape reads them alike whether or not their window has rolled over.
    let daemon = Daemon::start(config)?;
    let started = Instant::now();
    fill(&daemon.socket, options.keys).await?;
    println!(
        "\n## scrape: filled {} quota counters and rate buckets in {:.1} s",
        options.keys,
        started.elapsed().as_secs_f64()
    );
    for mix in [Mix::Ping, Mix::Pairs] {
        for scraping in [false, true] {
            let stop = Arc::new(AtomicBool::new(false));
            let scraper = scraping.then(|| tokio::spawn(scrape_loop(daemon.http, stop.clone())));
            let summary = measure(&daemon.socket, mix, options.secs).await?;
            stop.store(true, Ordering::Relaxed);
            let scrapes = match scraper {
                Some(task) => Some(task.await??),
                None => None,
            };
            print!(
                "{} {}: p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us  ({:.0} requests/s)",
                mix.name(),
                if scraping { "while scraped" } else { "alone" },
                summary.p50_us,
                summary.p99_us,
                summary.p999_us,
                summary.max_us,
                summary.ops_per_sec
            );
            match scrapes {
                Some((count, slowest)) => println!(
                    "; {count} scrapes, {:.1} per s, slowest {:.1} ms",
                    count as f64 / options.secs,
                    slowest.as_secs_f64() * 1e3
                ),
                None => println!(),
            }
        }
    }
    Ok(())
}

/// The longest admit+report a client saw across a purge that forgets `keys` rate
/// buckets (each full again a millisecond after its only admission), against the
/// same client's steady state.
async fn purge(options: &Options) -> anyhow::Result<()> {
    let config = format!(
        "[daemon]\npurge_interval = \"{}s\"\nmax_connections_per_uid = 1024\n\
        [services.bench]\n\
        [[rate_limits]]\nname = \"per-agent\"\nscope = \"agent\"\nrate = 1000\nper = \"1s\"\nburst = 1\n\
        [budget]\nenabled = false\n",
        options.purge_every
    );
    let daemon = Daemon::start(&config)?;
    // The first purge runs at start; the next one `purge_every` later.
    let next_purge = Instant::now() + Duration::from_secs(options.purge_every);
    fill(&daemon.socket, options.keys).await?;
    let steady = measure(&daemon.socket, Mix::Pairs, 1.0).await?;
    let left = next_purge.saturating_duration_since(Instant::now());
    if left < Duration::from_secs(1) {
        bail!("filling took longer than the purge interval; raise --purge-every");
    }
    // From now until 2 s past the purge.
    let across = measure(
        &daemon.socket,
        Mix::Pairs,
        (left + Duration::from_secs(2)).as_secs_f64(),
    )
    .await?;
    println!(
        "\n## purge of {} rate buckets\npairs steady: p99 {:.1} us  max {:.1} us\npairs across the purge: p99 {:.1} us  p99.9 {:.1} us  max {:.1} us (the stall)",
        options.keys, steady.p99_us, steady.max_us, across.p99_us, across.p999_us, across.max_us
    );
    Ok(())
}

/// One connection, one request at a time, for `secs` after a short warm-up.
async fn measure(socket: &Path, mix: Mix, secs: f64) -> anyhow::Result<Summary> {
    let ask = Ask {
        socket: socket.to_owned(),
        mix,
        service: "bench".into(),
        keys: 1000,
        agent: "bench".into(),
        lease: None,
    };
    let frames = Arc::new(Frames::new(&ask)?);
    let ask = Arc::new(ask);
    let load = Load {
        connections: 1,
        pipeline: 1,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs_f64(secs),
    };
    let tally = load_gen::run(&load, |i, window| {
        let (ask, frames) = (Arc::clone(&ask), Arc::clone(&frames));
        async move { wire::drive(&ask, &frames, i, load.pipeline, window).await }
    })
    .await?;
    let summary = Summary::new("daemon", mix.name(), &load, &tally);
    if let Some(err) = &summary.first_error {
        bail!("{} errors, the first: {err}", summary.errors);
    }
    Ok(summary)
}

/// GETs `/metrics` back to back until `stop`; returns how many and the slowest.
async fn scrape_loop(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(u64, Duration)> {
    let mut count = 0;
    let mut slowest = Duration::ZERO;
    let mut body = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        body.clear();
        stream.read_to_end(&mut body).await?;
        if !body.starts_with(b"HTTP/1.1 200") {
            bail!(
                "/metrics answered {:?}",
                String::from_utf8_lossy(&body[..body.len().min(80)])
            );
        }
        slowest = slowest.max(started.elapsed());
        count += 1;
    }
    Ok((count, slowest))
}

/// Admits (and reports) once for each agent `bench-0` … `bench-{keys-1}`, so each
/// per-agent rule holds `keys` keys.
async fn fill(socket: &Path, keys: usize) -> anyhow::Result<()> {
    let tasks: Vec<_> = (0..FILL_CONNECTIONS)
        .map(|c| {
            let socket = socket.to_owned();
            tokio::spawn(async move {
                let mut framed = wire::connect(&socket, "bench").await?;
                let mine: Vec<usize> = (c..keys).step_by(FILL_CONNECTIONS).collect();
                for chunk in mine.chunks(FILL_BATCH) {
                    let admits = chunk.iter().map(|k| {
                        Request::Admit(AdmitRequest {
                            agent: Some(format!("bench-{k}").into()),
                            service: "bench".into(),
                            ..AdmitRequest::default()
                        })
                    });
                    let mut reservations = Vec::with_capacity(chunk.len());
                    for response in round_trip(&mut framed, admits).await? {
                        match response {
                            Response::Admit(reply) if reply.allowed => {
                                reservations.extend(reply.reservation);
                            }
                            other => bail!("filling: an admission answered {other:?}"),
                        }
                    }
                    let reports = reservations.into_iter().map(|id| {
                        Request::Report(ReportRequest {
                            reservation: Some(id),
                            outcome: Outcome::Success,
                            ..ReportRequest::default()
                        })
                    });
                    round_trip(&mut framed, reports).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Sends `requests` as one batch and returns the responses.
async fn round_trip(
    framed: &mut tokio_util::codec::Framed<
        tokio::net::UnixStream,
        tokio_util::codec::LengthDelimitedCodec,
    >,
    requests: impl Iterator<Item = Request>,
) -> anyhow::Result<Vec<Response>> {
    let batch = ClientFrame::Batch(
        requests
            .map(|request| Envelope { id: 0, request })
            .collect(),
    );
    framed.send(Bytes::from(encode(&batch)?)).await?;
    let reply = framed.next().await.context("the daemon hung up")??;
    match decode::<ServerFrame>(&reply)? {
        ServerFrame::Batch(replies) => Ok(replies.into_iter().map(|r| r.response).collect()),
        other => bail!("expected a batch reply, got {other:?}"),
    }
}

fn parse() -> anyhow::Result<Options> {
    let mut options = Options {
        keys: 1_000_000,
        secs: 5.0,
        only: Vec::new(),
        purge_every: 40,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--keys" => options.keys = args.next().context("--keys N")?.parse()?,
            "--secs" => options.secs = args.next().context("--secs S")?.parse()?,
            "--purge-every" => {
                options.purge_every = args.next().context("--purge-every S")?.parse()?;
            }
            "--only" => {
                let list = args.next().context("--only scrape,purge")?;
                options.only = list.split(',').map(str::to_owned).collect();
            }
            other => bail!(
                "unknown argument {other:?}; use --keys N, --secs S, --purge-every S, --only scrape,purge"
            ),
        }
    }
    Ok(options)
}

fn wants(options: &Options, part: &str) -> bool {
    options.only.is_empty() || options.only.iter().any(|p| p == part)
}

/// `$SCRAPE_DAEMON` (to measure another build), else the release daemon next to
/// this bench (`target/release/deps/scrape-…`), built by `cargo bench`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SCRAPE_DAEMON") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    let release = exe.parent().and_then(Path::parent).expect("target/release");
    release.join("automation-frameworkd")
}

// === impl Daemon ===

impl Daemon {
    fn start(config: &str) -> anyhow::Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("agent.sock");
        // A free port: bind, read it, let go; the daemon binds it next.
        let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("daemon.log"))?;
        let child = Command::new(binary())
            .arg("--config")
            .arg(&config_path)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--http", &http.to_string(), "--log-level", "warn"])
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary().display()))?;
        let mut daemon = Daemon {
            child,
            _dir: dir,
            socket,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = daemon.child.try_wait()? {
                bail!("the daemon exited with {status}");
            }
            if std::os::unix::net::UnixStream::connect(&daemon.socket).is_ok() {
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                bail!("the daemon was not up within 10 s");
            }
            // Waiting for another process; nothing to make time pass for.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
