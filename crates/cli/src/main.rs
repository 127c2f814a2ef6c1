//! `automation-framework`: the command-line client. One command per connection,
//! except `session`, which speaks JSON lines over one connection.
//!
//! Exit status: 0 done or allowed, 1 denied (or, for `config check`, invalid;
//! for `check`, something found), 2 error (usage, connection, protocol) with
//! the reason on stderr.

#![forbid(unsafe_code)]

mod bench;
mod check;
mod render;
mod session;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use automation_framework::config::Config;
use automation_framework_client::{Client, ClientError};
use automation_framework_protocol::paths;
use automation_framework_protocol::{
    AdminRequest, AdmitRequest, BreakerForce, LeaseRequest, Outcome, Payload, ReportRequest,
    RouteRequest,
};

const CLIENT_NAME: &str = concat!("automation-framework-cli/", env!("CARGO_PKG_VERSION"));

/// Ask the automation-framework daemon before an outgoing call, report how it
/// went, and inspect what the daemon knows.
#[derive(Debug, Parser)]
#[command(name = "automation-framework", version)]
struct Cli {
    /// Daemon socket [default: $AUTOMATION_FRAMEWORK_SOCKET, then
    /// /run/automation-framework/agent.sock if present, then the per-user path].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Agent name to act as.
    #[arg(
        long,
        global = true,
        env = "AUTOMATION_FRAMEWORK_AGENT",
        default_value = "cli"
    )]
    agent: String,

    /// Machine-readable output (one JSON document on stdout).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that the daemon answers.
    Ping,
    /// The daemon's health document.
    Status,
    /// Ask whether a call may be made now (exit 1 when denied). When this command
    /// exits, a reservation that holds money stays open as an orphan (reportable
    /// with `report --reservation` until budget.orphan_timeout); others are
    /// released. Use `session` to admit and report on one connection.
    Admit {
        /// The upstream service.
        #[arg(long, required_unless_present = "route")]
        service: Option<String>,
        /// A route (a `[[routes]]` chain of the daemon's config) instead of a
        /// service: the first of its services that admits the call is used.
        #[arg(long, conflicts_with = "service")]
        route: Option<String>,
        /// 1 for a first call; n for its (n-1)th retry (as the retry advice says).
        #[arg(long, default_value_t = 1)]
        attempt: u32,
        /// Weight for unit-counted rate limits and quotas (e.g. estimated tokens).
        #[arg(long, default_value_t = 1)]
        units: u32,
        /// Estimated cost in USD (default: from the daemon's price table).
        #[arg(long)]
        cost: Option<f64>,
        /// Model, to pick the price entry "service/model".
        #[arg(long)]
        model: Option<String>,
        /// The code or text the call will run or send, from this file (`-`:
        /// stdin), for the daemon's content guard.
        #[arg(long, value_name = "FILE")]
        payload_file: Option<PathBuf>,
        /// The payload's language (python, javascript, typescript, shell, rust,
        /// go, text); default: guessed by the daemon.
        #[arg(long, requires = "payload_file")]
        lang: Option<String>,
        /// When a bulkhead is full, wait up to this long for a permit (first
        /// come, first served; at most the daemon's concurrency.max_wait).
        #[arg(long)]
        wait_ms: Option<u64>,
        /// A lease the call needs: denied while another connection holds it.
        #[arg(long)]
        lease: Option<String>,
    },
    /// Try a named lease: prints who holds it (exit 1), or that it is free
    /// (exit 0). A lease belongs to the connection that took it, so the one
    /// this command takes is released again when it exits: it is a probe. To
    /// hold a lease across commands, use `session` ({"op":"lease",...}).
    Lease {
        /// The lease's name.
        name: String,
        /// How long to ask for (default: the daemon's leases.default_ttl).
        #[arg(long)]
        ttl_ms: Option<u64>,
        /// Release instead (only a lease this connection holds: from a
        /// one-shot command, none).
        #[arg(long, conflicts_with = "ttl_ms")]
        release: bool,
    },
    /// Report the outcome of a call made without admission (or of a reservation
    /// held by this connection); feeds the service's breaker.
    Report {
        /// The upstream service (for a call made without admission).
        #[arg(long, required_unless_present = "reservation")]
        service: Option<String>,
        /// A reservation id from `admit` (one that holds money stays reportable after
        /// its connection closed, until budget.orphan_timeout).
        #[arg(long, conflicts_with = "service")]
        reservation: Option<u64>,
        /// How the call went.
        #[arg(long, value_parser = ["success", "failure"])]
        outcome: String,
        /// How long the call took, in milliseconds.
        #[arg(long)]
        latency_ms: Option<u64>,
        /// Units actually used.
        #[arg(long)]
        units: Option<u32>,
        /// Actual cost in USD (a charge without reservation needs --key).
        #[arg(long)]
        cost: Option<f64>,
        /// Idempotency key: a report repeated with the same key counts once.
        #[arg(long)]
        key: Option<String>,
        /// The failure may succeed if tried again (a timeout, 429, 5xx): the
        /// daemon answers whether to retry and when.
        #[arg(long)]
        retryable: bool,
        /// Which attempt failed (default: the admission's, or 1).
        #[arg(long)]
        attempt: Option<u32>,
        /// The upstream's Retry-After, in milliseconds: the advice is never sooner.
        #[arg(long)]
        retry_after_ms: Option<u64>,
    },
    /// Which service of a route (or of a chain) to call now; takes nothing
    /// (exit 1 when none fits).
    Route {
        /// A `[[routes]]` name from the daemon's config.
        #[arg(long, required_unless_present = "chain")]
        route: Option<String>,
        /// Services in order of preference, comma-separated, instead of a route.
        #[arg(long, value_delimiter = ',', conflicts_with = "route")]
        chain: Vec<String>,
        /// Weight for unit-counted rate limits and quotas.
        #[arg(long, default_value_t = 1)]
        units: u32,
        /// Estimated cost in USD (default: each service's price table entry).
        #[arg(long)]
        cost: Option<f64>,
        /// Model, to pick the price entries "service/model".
        #[arg(long)]
        model: Option<String>,
    },
    /// Budgets: spent, reserved, limit and remaining (USD) in the current period.
    Budget {
        /// Only the budgets that apply to this agent.
        #[arg(long = "for")]
        for_agent: Option<String>,
        /// Admin: set this budget's limit (USD); `--budget` names it.
        #[arg(long, requires = "budget")]
        set_limit: Option<f64>,
        /// Admin: start this budget's current period over from $0 spent.
        #[arg(long, requires = "budget", conflicts_with = "set_limit")]
        reset: bool,
        /// The budget for --set-limit/--reset: global, agent:NAME or service:NAME.
        #[arg(long)]
        budget: Option<String>,
        /// Admin: refund the charge with this idempotency key.
        #[arg(long, conflicts_with_all = ["set_limit", "reset"])]
        refund: Option<String>,
    },
    /// Quota counters in their current windows.
    Quota {
        /// Only this quota.
        #[arg(long)]
        quota: Option<String>,
        /// Admin: start the window of this key of --quota over from 0.
        #[arg(long, requires = "quota")]
        reset_key: Option<String>,
    },
    /// Circuit breaker states; with --force, override one (admin only).
    Breakers {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Force the service's breaker open (deny all), closed (allow all, still
        /// record), disabled (no breaker), or back to auto (its config). Needs an
        /// admin uid (`[access]` in the daemon's config).
        #[arg(long, requires = "service", value_parser = ["open", "closed", "disabled", "auto"])]
        force: Option<String>,
    },
    /// Make the daemon re-read its configuration file, as SIGHUP does (admin only).
    /// Exit 0 when applied, 2 when refused (the old configuration stays in force).
    Reload,
    /// Scan a file (`-`: stdin) for dangerous calls, secrets and hostile
    /// arguments, here, with the built-in rules plus --rules-dir (no daemon
    /// needed). Exit 0 clean, 1 something found, 2 error.
    Check {
        /// The file to scan, or `-` for stdin.
        file: PathBuf,
        /// Its language (python, javascript, typescript, shell, rust, go, text);
        /// default: from the file's extension, else guessed from the text.
        #[arg(long)]
        lang: Option<String>,
        /// A directory of operator rule files (`*.toml`), as the daemon's
        /// content.rules_dir.
        #[arg(long, value_name = "DIR")]
        rules_dir: Option<PathBuf>,
    },
    /// Configuration file tools (no daemon needed).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// JSON lines on one connection: one request per stdin line, one reply per
    /// stdout line, in order, until EOF.
    Session,
    /// Load generator: requests per second and latency percentiles (HDR histogram)
    /// against the daemon, or against an in-process floor (--floor).
    Bench(bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file (exit 0 valid, 1 invalid, 2 unreadable).
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

/// What a command concluded, mapped to the exit status.
enum Verdict {
    Done,
    Denied,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Bench(args) = cli.command {
        let socket = cli.socket.clone().unwrap_or_else(paths::client_socket);
        return match bench::run(args, socket, cli.agent, cli.json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("automation-framework: bench: {err:#}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("automation-framework: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(Verdict::Done) => ExitCode::SUCCESS,
        Ok(Verdict::Denied) => ExitCode::from(1),
        Err(err) => {
            eprintln!("automation-framework: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Verdict> {
    let socket = cli.socket.clone().unwrap_or_else(paths::client_socket);
    let json = cli.json;
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => Ok(config_check(&file, json)),
        Command::Check {
            file,
            lang,
            rules_dir,
        } => Ok(
            if check::run(&file, lang.as_deref(), rules_dir.as_deref(), json)? {
                Verdict::Denied
            } else {
                Verdict::Done
            },
        ),
        Command::Ping => {
            let pong = connect(&socket, &cli.agent).await?.ping().await?;
            render::pong(&pong, json);
            Ok(Verdict::Done)
        }
        Command::Status => {
            let status = connect(&socket, &cli.agent).await?.status().await?;
            render::status(&status, json);
            Ok(Verdict::Done)
        }
        Command::Admit {
            service,
            route,
            attempt,
            units,
            cost,
            model,
            payload_file,
            lang,
            wait_ms,
            lease,
        } => {
            let payload = payload_file
                .map(|file| check::read(&file).map(|text| Payload { lang, text }))
                .transpose()?;
            let mut client = connect(&socket, &cli.agent).await?;
            let reply = client
                .admit(AdmitRequest {
                    agent: None,
                    service: service.unwrap_or_default().into(),
                    route: route.map(Into::into),
                    attempt,
                    units,
                    cost,
                    model: model.map(Into::into),
                    input_units: 0,
                    output_units: 0,
                    payload,
                    wait_ms,
                    lease: lease.map(Into::into),
                })
                .await?;
            render::admit(&reply, json);
            Ok(if reply.allowed {
                Verdict::Done
            } else {
                Verdict::Denied
            })
        }
        Command::Report {
            service,
            reservation,
            outcome,
            latency_ms,
            units,
            cost,
            key,
            retryable,
            attempt,
            retry_after_ms,
        } => {
            let outcome = if outcome == "success" {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            let reply = connect(&socket, &cli.agent)
                .await?
                .report(ReportRequest {
                    reservation,
                    service: service.map(Into::into),
                    outcome,
                    units,
                    latency_ms,
                    cost,
                    input_units: None,
                    output_units: None,
                    idempotency_key: key.map(Into::into),
                    agent: None,
                    retryable,
                    attempt,
                    retry_after_ms,
                })
                .await?;
            render::report(&reply, json);
            Ok(Verdict::Done)
        }
        Command::Route {
            route,
            chain,
            units,
            cost,
            model,
        } => {
            let reply = connect(&socket, &cli.agent)
                .await?
                .route(RouteRequest {
                    route,
                    chain,
                    agent: None,
                    units,
                    cost,
                    model,
                })
                .await?;
            render::route(&reply, json);
            Ok(if reply.service.is_some() {
                Verdict::Done
            } else {
                Verdict::Denied
            })
        }
        Command::Budget {
            for_agent,
            set_limit,
            reset,
            budget,
            refund,
        } => {
            let mut client = connect(&socket, &cli.agent).await?;
            let admin = match (set_limit, reset, refund) {
                (Some(limit), _, _) => Some(AdminRequest::SetLimit {
                    budget: budget.clone().unwrap_or_default(),
                    limit,
                }),
                (None, true, _) => Some(AdminRequest::ResetBudget {
                    budget: budget.clone().unwrap_or_default(),
                }),
                (None, false, Some(key)) => Some(AdminRequest::Refund { key }),
                (None, false, None) => None,
            };
            match admin {
                Some(request) => render::admin(&client.admin(request).await?, json),
                None => render::budget(&client.budget(for_agent).await?, json),
            }
            Ok(Verdict::Done)
        }
        Command::Quota { quota, reset_key } => {
            let mut client = connect(&socket, &cli.agent).await?;
            match (quota, reset_key) {
                (Some(quota), Some(key)) => render::admin(
                    &client
                        .admin(AdminRequest::ResetQuota { quota, key })
                        .await?,
                    json,
                ),
                (quota, _) => render::quotas(&client.quotas(quota).await?, json),
            }
            Ok(Verdict::Done)
        }
        Command::Breakers {
            service: Some(service),
            force: Some(force),
        } => {
            let force = match force.as_str() {
                "open" => BreakerForce::Open,
                "closed" => BreakerForce::Closed,
                "disabled" => BreakerForce::Disabled,
                _ => BreakerForce::Auto,
            };
            let info = connect(&socket, &cli.agent)
                .await?
                .force_breaker(service, force)
                .await?;
            render::forced(&info, json);
            Ok(Verdict::Done)
        }
        Command::Breakers { service, .. } => {
            let breakers = connect(&socket, &cli.agent)
                .await?
                .breakers(service)
                .await?;
            render::breakers(&breakers, json);
            Ok(Verdict::Done)
        }
        Command::Reload => {
            let reply = connect(&socket, &cli.agent).await?.reload().await?;
            render::reload(&reply, json);
            Ok(Verdict::Done)
        }
        Command::Lease {
            name,
            ttl_ms,
            release,
        } => {
            let reply = connect(&socket, &cli.agent)
                .await?
                .lease(LeaseRequest {
                    name,
                    ttl_ms,
                    release,
                    agent: None,
                })
                .await?;
            render::lease(&reply, json);
            Ok(if reply.holder.is_some() {
                Verdict::Denied
            } else {
                Verdict::Done
            })
        }
        Command::Session => {
            let client = connect(&socket, &cli.agent).await?;
            session::run(client).await?;
            Ok(Verdict::Done)
        }
        Command::Bench(_) => unreachable!("bench runs on its own runtime, from main"),
    }
}

async fn connect(socket: &Path, agent: &str) -> Result<Client, ClientError> {
    Client::connect(socket, agent, CLIENT_NAME).await
}

fn config_check(file: &Path, json: bool) -> Verdict {
    let result = Config::load(file);
    render::config_check(file, &result, json);
    match result {
        Ok(_) => Verdict::Done,
        Err(automation_framework::config::ConfigError::Read { .. }) => {
            // Unreadable is an error of the command, not a verdict on the file.
            std::process::exit(2)
        }
        Err(_) => Verdict::Denied,
    }
}
