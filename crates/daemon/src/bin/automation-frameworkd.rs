//! `automation-frameworkd`: the daemon. Parses flags, loads the config, sets up
//! logging, takes or binds the socket, and runs the server until SIGTERM/SIGINT.
//! SIGHUP re-reads the config file (see `State::reload_from_file`).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;

use automation_framework::alerts::Alerts;
use automation_framework::clock::SharedClock;
use automation_framework::config::Config;
use automation_framework::state::State;
use automation_framework::store::{Store, StoreOptions};
use automation_framework::{paths, server, socket, systemd};

/// The automation-framework daemon: host-wide rate limits and circuit breakers for
/// AI-agent processes, served on a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "automation-frameworkd", version)]
struct Args {
    /// Configuration file (TOML). Without it the built-in defaults apply.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        env = "AUTOMATION_FRAMEWORK_CONFIG"
    )]
    config: Option<PathBuf>,

    /// Socket path; overrides the config. Ignored under socket activation.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Directory of the durable ledger (budgets, quotas) [default: daemon.state_dir,
    /// else $STATE_DIRECTORY, else /var/lib/automation-framework for root, else
    /// $XDG_STATE_HOME/automation-framework].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// HTTP address for /metrics, /health and /ready, or "off"; overrides
    /// [http] listen (loopback only unless http.allow_remote).
    #[arg(long, value_name = "ADDR|off")]
    http: Option<String>,

    /// Alert webhook (https:// or http://, Slack-compatible JSON); overrides
    /// [alerts] webhook.
    #[arg(long, value_name = "URL", env = "AUTOMATION_ALERT_WEBHOOK")]
    alert_webhook: Option<String>,

    /// Begin an empty ledger even though the state directory held one (its
    /// marker file is there but the ledger is gone). Without it such a start
    /// refuses to create one, so spending is never silently forgotten. Does
    /// nothing to a ledger that exists.
    #[arg(long)]
    init_ledger: bool,

    /// Worker threads of the async runtime [default: one per CPU]. Every
    /// connection's requests are decided on these; more threads than cores
    /// only adds waits on the engine lock (docs/PERFORMANCE.md).
    #[arg(long, value_name = "N", env = "AUTOMATION_FRAMEWORK_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,

    /// Log level on stderr: error, warn, info, debug, trace.
    #[arg(
        long,
        value_name = "LEVEL",
        env = "AUTOMATION_FRAMEWORK_LOG",
        default_value = "info"
    )]
    log_level: log::LevelFilter,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_level);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err:#}");
            ExitCode::from(1)
        }
    }
}

/// Under systemd (stderr is the journal's stream) logs go to journald with their
/// key-value fields as journal fields (AGENT, PEER_UID, SERVICE, GUARD, DECISION,
/// REASON, ...), so `journalctl -u automation-framework DECISION=deny` finds denials.
/// Otherwise, and if the journal socket cannot be opened, readable lines on stderr.
fn init_logging(level: log::LevelFilter) {
    if systemd_journal_logger::connected_to_journal() {
        let journal = systemd_journal_logger::JournalLog::new()
            .map(|journal| journal.with_extra_fields(vec![("VERSION", env!("CARGO_PKG_VERSION"))]));
        if let Ok(journal) = journal {
            if journal.install().is_ok() {
                // The journal logger filters nothing itself: the level is the filter.
                log::set_max_level(level);
                return;
            }
        }
    }
    env_logger::Builder::new()
        .filter_level(level)
        .format_timestamp_millis()
        .init();
}

/// One SIGHUP reload, framed for systemd by RELOADING=1 and READY=1. The file is
/// read on the blocking pool; the outcome is logged by `State::reload_from_file`.
async fn reload(state: &State, serving: &std::sync::Mutex<String>) {
    systemd::notify_reloading();
    let task_state = state.clone();
    let result = tokio::task::spawn_blocking(move || task_state.reload_from_file()).await;
    let serving = serving
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let status = match result {
        Ok(Ok(_)) => serving,
        Ok(Err(err)) => format!("reload failed: {err}; {serving} with the old configuration"),
        Err(err) => {
            log::error!("the reload task failed: {err}; the old configuration stays in force");
            format!("reload failed: {err}; {serving} with the old configuration")
        }
    };
    systemd::notify_reloaded(&status);
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)
            .with_context(|| format!("invalid configuration {}", path.display()))?,
        None => Config::default(),
    };
    if let Some(url) = args.alert_webhook.as_deref().filter(|url| !url.is_empty()) {
        config.alerts.webhook = Some(automation_framework::config::webhook_url(
            "AUTOMATION_ALERT_WEBHOOK",
            url,
        )?);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("af-worker");
    if let Some(threads) = args.threads {
        runtime.worker_threads(usize::from(threads));
    }
    let runtime = runtime.build().context("starting the async runtime")?;
    let result = runtime.block_on(serve(args, config));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn serve(args: Args, config: Config) -> anyhow::Result<()> {
    // The path we bound ourselves (and so remove on a clean exit); an activated
    // socket belongs to systemd.
    let mut bound_path = None;
    let activated = systemd::activated_listener().context("adopting the systemd socket")?;
    let (listener, where_) = match activated {
        Some(listener) => (listener, "systemd socket".to_owned()),
        None => {
            let path = args
                .socket
                .or_else(|| config.daemon.socket.clone())
                .unwrap_or_else(paths::default_socket);
            let perms = socket::SocketPerms::from_config(&config.daemon);
            let listener = socket::bind(&path, &perms).context("binding the agent socket")?;
            let shown = path.display().to_string();
            bound_path = Some(path);
            (listener, shown)
        }
    };
    let state_dir = args
        .state_dir
        .clone()
        .or_else(|| config.daemon.state_dir.clone())
        .unwrap_or_else(paths::default_state_dir);
    let options = StoreOptions {
        commit_timeout: config.daemon.commit_timeout,
        init: args.init_ledger,
        opening: automation_framework::admission::opening(&config, SharedClock::system().unix()),
    };
    let (store, snapshot) = match Store::open_with(&state_dir, &options) {
        Ok((store, snapshot)) => {
            if snapshot.created && args.init_ledger {
                log::warn!(
                    "ledger {} created empty, as --init-ledger asked: spending recorded before is not counted",
                    store.path().display()
                );
            } else if snapshot.created {
                log::info!("ledger {} created", store.path().display());
            } else {
                log::info!(
                    "ledger {} opened (epoch {}, {} open reservation(s) recovered)",
                    store.path().display(),
                    snapshot.epoch,
                    snapshot.reservations.len()
                );
            }
            (store, snapshot)
        }
        Err(err) => {
            // Serve without it rather than not at all: budget-governed requests
            // are refused (fail closed), everything else keeps working, and
            // health reports the reason.
            log::error!(
                message_id = automation_framework::logging::message_id::LEDGER_FAILED;
                "{err}; serving without a ledger: budget-governed requests will be refused until the daemon is restarted with a working ledger"
            );
            let path = state_dir.join(automation_framework::store::LEDGER_FILE);
            (Store::unavailable(&path, err.reason()), Default::default())
        }
    };
    let http_addr = match &args.http {
        Some(text) => {
            automation_framework::config::http_address("--http", text, config.http.allow_remote)?
        }
        None => config.http.listen,
    };
    let metrics =
        automation_framework::metrics::install().context("installing the metrics recorder")?;
    let http_listener = match http_addr {
        Some(addr) => Some(automation_framework::http::bind(addr).await?),
        None => None,
    };
    let (alerts, delivery) = Alerts::new(&config.alerts);
    let state = State::with_alerts(
        config,
        SharedClock::system(),
        store.clone(),
        &snapshot,
        alerts,
    )?;
    state.set_config_path(args.config.clone());
    let shutdown = CancellationToken::new();
    // Alert delivery runs on its own task: decisions only ever queue (alerts/raise.rs).
    let alert_task = delivery.map(|delivery| tokio::spawn(delivery.run(shutdown.clone())));
    let mut signals = signal_hook_tokio::Signals::new([SIGHUP, SIGTERM, SIGINT])
        .context("installing signal handlers")?;
    let signal_handle = signals.handle();
    let on_signal = shutdown.clone();
    let reload_state = state.clone();
    // Set once serving starts; a reload reports it again as the READY=1 status.
    let serving_status = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reload_status = serving_status.clone();
    let signal_task = tokio::spawn(async move {
        while let Some(signal) = signals.next().await {
            match signal {
                SIGHUP => {
                    log::info!("SIGHUP received: reloading the configuration");
                    reload(&reload_state, &reload_status).await;
                }
                _ if on_signal.is_cancelled() => {
                    // A second SIGTERM/SIGINT while draining: the operator insists.
                    // Acknowledged writes are already durable, so this loses nothing.
                    log::warn!("signal {signal} received again while draining: exiting now");
                    std::process::exit(1);
                }
                _ => {
                    log::info!("signal {signal} received: draining, then exiting (send it again to exit now)");
                    on_signal.cancel();
                }
            }
        }
    });

    log::info!(
        "automation-frameworkd {} listening on {where_} ({} rate limit(s), mode {:?})",
        env!("CARGO_PKG_VERSION"),
        state.config().rate_limits.len(),
        state.config().daemon.mode
    );
    let ready = automation_framework::http::Readiness::default();
    let mut serving = format!("serving on {where_}");
    tokio::spawn(automation_framework::metrics::upkeep(
        metrics.clone(),
        shutdown.clone(),
    ));
    let http_task = http_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            log::info!("http listening on {addr} (/metrics /health /ready)");
            serving.push_str(&format!(", http on {addr}"));
        }
        tokio::spawn(automation_framework::http::run(
            listener,
            state.clone(),
            Some(metrics),
            ready.clone(),
            shutdown.clone(),
        ))
    });
    let mut server = tokio::spawn(server::run(listener, state, shutdown.clone()));
    // Both listeners are bound and accepting (the kernel queues connections from
    // the moment of bind): ready, for /ready and for systemd at the same instant.
    ready.set();
    systemd::notify_ready(&serving);
    // Pings start once READY=1 is out: a ping first would tell systemd the
    // service is alive before it said it had started.
    tokio::spawn(systemd::watchdog(shutdown.clone()));
    *serving_status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = serving;
    let finished_early = tokio::select! {
        _ = shutdown.cancelled() => None,
        result = &mut server => Some(result),
    };
    systemd::notify_stopping();
    let result = match finished_early {
        Some(result) => result,
        None => server.await,
    };
    if let Some(task) = http_task {
        let _ = task.await;
    }
    // Alerts still queued get about a second (Delivery::run).
    if let Some(task) = alert_task {
        let _ = task.await;
    }
    signal_handle.close();
    signal_task.abort();
    // Every handler has finished (or was abandoned after drain_timeout), so
    // every acknowledged write is already durable; closing stops the writer
    // thread once it is done with what is queued. Nothing waits for it: a writer
    // stuck in the kernel (a frozen filesystem) holds nothing acknowledged, and
    // the process ends without it (its pid lingers until the kernel lets that
    // thread go).
    store.close();
    if let Some(path) = bound_path {
        if let Err(err) = std::fs::remove_file(&path) {
            log::warn!("could not remove {}: {err}", path.display());
        }
    }
    result.context("the server task failed")?;
    log::info!("stopped");
    Ok(())
}
