//! Human and `--json` output of the one-shot commands.

use std::path::Path;

use serde::Serialize;

use automation_framework::config::{Config, ConfigError};
use automation_framework_protocol::{
    AdminReply, AdmitReply, BreakerInfo, BudgetReply, LeaseReply, Pong, QuotaInfo, ReloadReply,
    ReportReply, RouteReply, StatusReport,
};

fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(text) => println!("{text}"),
        Err(err) => eprintln!("automation-framework: cannot render JSON: {err}"),
    }
}

/// A wire enum's snake_case name (`half_open`), as in the JSON output.
fn name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn pong(pong: &Pong, json: bool) {
    if json {
        return print_json(pong);
    }
    println!(
        "pong from automation-frameworkd {} (session {}, agent {:?})",
        pong.version, pong.session, pong.agent
    );
}

pub fn status(status: &StatusReport, json: bool) {
    if json {
        return print_json(status);
    }
    println!("status:       {}", name(&status.status));
    for reason in &status.reasons {
        println!("  - {reason}");
    }
    println!("version:      {}", status.version);
    println!("mode:         {}", status.mode);
    println!("uptime:       {}s", status.uptime_s);
    println!(
        "connections:  {} ({} agents)",
        status.connections, status.active_agents
    );
    println!("reservations: {} open", status.open_reservations);
    let b = status.circuit_breakers;
    println!(
        "breakers:     {} closed, {} open, {} half-open",
        b.closed, b.open, b.half_open
    );
    println!(
        "budget:       ${:.2} spent of ${:.2}",
        status.budget_spent, status.budget_limit
    );
    println!("ledger:       {}", status.store);
    println!("leases:       {} held", status.leases_held);
    for key in &status.in_flight {
        let shown = if key.key.is_empty() {
            key.bulkhead.clone()
        } else {
            format!("{} {}", key.bulkhead, key.key)
        };
        println!(
            "in flight:    {shown}: {} of {}, {} waiting",
            key.in_flight, key.limit, key.waiting
        );
    }
}

/// A one-shot `lease`: the lease was free (and is released again as the
/// command exits), or who holds it.
pub fn lease(reply: &LeaseReply, json: bool) {
    if json {
        return print_json(reply);
    }
    if let Some(holder) = &reply.holder {
        println!(
            "lease {:?} is held by agent {:?} (pid {}, uid {}, session {}) for another {} ms",
            reply.name, holder.agent, holder.pid, holder.uid, holder.session, holder.expires_in_ms
        );
    } else if reply.granted {
        println!(
            "lease {:?} granted for {} ms; released again as this command exits (a lease lasts as long as the connection that took it: hold one with `automation-framework session`)",
            reply.name,
            reply.expires_in_ms.unwrap_or_default()
        );
    } else if reply.released {
        println!("lease {:?} released", reply.name);
    } else {
        println!(
            "lease {:?} is not held by this connection: nothing released (a lease belongs to the connection that took it; release it there, or let its TTL pass)",
            reply.name
        );
    }
}

pub fn budget(reply: &BudgetReply, json: bool) {
    if json {
        return print_json(reply);
    }
    if reply.budgets.is_empty() {
        println!("no budgets configured");
        return;
    }
    println!(
        "{:<28} {:>12} {:>12} {:>12} {:>12} {:>8}  RESET",
        "BUDGET", "SPENT", "RESERVED", "LIMIT", "REMAINING", "ORPHANS"
    );
    for b in &reply.budgets {
        let reset = match b.resets_in_s {
            Some(s) => format!(
                "{} (in {})",
                b.reset,
                humantime::format_duration(std::time::Duration::from_secs(s))
            ),
            None => b.reset.clone(),
        };
        println!(
            "{:<28} {:>12} {:>12} {:>12} {:>12} {:>8}  {}",
            b.name,
            format!("${:.6}", b.spent),
            format!("${:.6}", b.reserved),
            format!("${:.2}", b.limit),
            format!("${:.6}", b.remaining),
            b.orphaned,
            reset
        );
    }
}

pub fn quotas(quotas: &[QuotaInfo], json: bool) {
    if json {
        return print_json(&quotas);
    }
    if quotas.is_empty() {
        println!("no quota counters in their current windows");
        return;
    }
    println!(
        "{:<20} {:<28} {:>12} {:>12} {:>9}",
        "QUOTA", "KEY", "USED", "LIMIT", "WINDOW"
    );
    for q in quotas {
        println!(
            "{:<20} {:<28} {:>12} {:>12} {:>9}",
            q.quota, q.key, q.used, q.limit, q.window
        );
    }
}

pub fn admin(reply: &AdminReply, json: bool) {
    if json {
        return print_json(reply);
    }
    println!("ok: {}", reply.message);
}

pub fn reload(reply: &ReloadReply, json: bool) {
    if json {
        return print_json(reply);
    }
    println!("ok: {}", reply.message);
}

pub fn admit(reply: &AdmitReply, json: bool) {
    if json {
        return print_json(reply);
    }
    if let Some(service) = &reply.service {
        println!("service {service} (chosen by the route)");
    }
    if reply.allowed {
        println!(
            "allowed (reservation {}, ${:.6} reserved)",
            reply.reservation.unwrap_or_default(),
            reply.cost.unwrap_or_default()
        );
    } else {
        let guard = reply.guard.as_ref().map(name).unwrap_or_default();
        let rule = reply.rule.as_deref().unwrap_or_default();
        let reason = reply.reason.as_deref().unwrap_or_default();
        match reply.retry_after_ms {
            Some(ms) => println!("denied by {guard} {rule:?}: {reason} (retry after {ms} ms)"),
            None => println!("denied by {guard} {rule:?}: {reason}"),
        }
    }
    for vote in &reply.votes {
        println!(
            "  {:<7} {:<20} {}{}  {}",
            name(&vote.guard),
            vote.rule,
            if vote.allow { "allow" } else { "deny " },
            if vote.shadow { " (shadow)" } else { "" },
            vote.reason
        );
    }
}

pub fn report(reply: &ReportReply, json: bool) {
    if json {
        return print_json(reply);
    }
    match (&reply.breaker, reply.duplicate) {
        (_, true) => println!("ok (already reported; nothing counted again)"),
        (Some(state), false) => match reply.charged {
            Some(usd) => println!("ok (charged ${usd:.6}; breaker {})", name(state)),
            None => println!("ok (breaker {})", name(state)),
        },
        (None, false) => println!("ok"),
    }
    if let Some(advice) = &reply.retry {
        match (advice.retry, advice.after_ms) {
            (true, Some(ms)) => println!(
                "retry as attempt {} after {ms} ms: {}",
                advice.attempt, advice.reason
            ),
            _ => println!("do not retry: {}", advice.reason),
        }
    }
}

pub fn route(reply: &RouteReply, json: bool) {
    if json {
        return print_json(reply);
    }
    match &reply.service {
        Some(service) => println!("{service}"),
        None => match reply.retry_after_ms {
            Some(ms) => println!("no service fits now (retry after {ms} ms)"),
            None => println!("no service fits now"),
        },
    }
    for skip in &reply.skipped {
        let after = skip
            .retry_after_ms
            .map(|ms| format!(" (retry after {ms} ms)"))
            .unwrap_or_default();
        println!(
            "  skipped {:<20} {:<7} {}{after}",
            skip.service,
            name(&skip.guard),
            skip.reason
        );
    }
}

pub fn breakers(breakers: &[BreakerInfo], json: bool) {
    if json {
        return print_json(&breakers);
    }
    if breakers.is_empty() {
        println!("no breakers yet (a service gets one on its first admission or report)");
        return;
    }
    println!(
        "{:<24} {:<13} {:>8} {:>7} {:>11}",
        "SERVICE", "STATE", "FAILURES", "TRIALS", "OPEN_LEFT"
    );
    for b in breakers {
        let open_left = b
            .open_remaining_ms
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<24} {:<13} {:>8} {:>7} {:>11}",
            b.service,
            name(&b.state),
            b.failures,
            b.trials_in_flight,
            open_left
        );
    }
}

/// The breaker after `breakers --force`.
pub fn forced(info: &BreakerInfo, json: bool) {
    if json {
        return print_json(info);
    }
    println!("breaker of {:?} is now {}", info.service, name(&info.state));
    breakers(std::slice::from_ref(info), false);
}

#[derive(Serialize)]
struct CheckResult<'a> {
    file: &'a str,
    valid: bool,
    error: Option<String>,
    rate_limits: usize,
    services: usize,
}

pub fn config_check(file: &Path, result: &Result<Config, ConfigError>, json: bool) {
    let shown = file.display().to_string();
    if json {
        return print_json(&CheckResult {
            file: &shown,
            valid: result.is_ok(),
            error: result.as_ref().err().map(|e| e.to_string()),
            rate_limits: result.as_ref().map_or(0, |c| c.rate_limits.len()),
            services: result.as_ref().map_or(0, |c| c.services.len()),
        });
    }
    match result {
        Ok(config) => println!(
            "{shown}: valid ({} rate limit(s), {} quota(s), {} declared service(s), mode {})",
            config.rate_limits.len(),
            config.quotas.len(),
            config.services.len(),
            match config.daemon.mode {
                automation_framework::config::Mode::Enforce => "enforce",
                automation_framework::config::Mode::Shadow => "shadow",
            }
        ),
        Err(err) => eprintln!("{shown}: invalid: {err}"),
    }
}
