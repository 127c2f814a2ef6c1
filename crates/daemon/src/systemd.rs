//! systemd integration: adopting an activated socket (`LISTEN_FDS`) and
//! `sd_notify` messages. Both are no-ops when not running under systemd.

#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, UnixAddr,
};
use tokio::net::UnixListener;

/// Takes the first socket systemd passed us, if any.
///
/// # Errors
/// When systemd passed something that is not a listening Unix stream socket.
pub fn activated_listener() -> anyhow::Result<Option<UnixListener>> {
    let Some(fd) = sd_notify::listen_fds()?.next() else {
        return Ok(None);
    };
    check_unix_stream(fd)?;
    // SAFETY: `listen_fds` checked LISTEN_PID is ours, so systemd handed this fd to
    // this process, and nothing else in the process takes ownership of it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let std_listener = std::os::unix::net::UnixListener::from(owned);
    std_listener.set_nonblocking(true)?;
    Ok(Some(UnixListener::from_std(std_listener)?))
}

fn check_unix_stream(fd: RawFd) -> anyhow::Result<()> {
    // SAFETY: the fd stays open for the duration of this borrow (we own it, see above).
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let kind = getsockopt(&borrowed, sockopt::SockType)?;
    let addr: UnixAddr = getsockname(fd)?;
    if kind != SockType::Stream || addr.family() != Some(AddressFamily::Unix) {
        anyhow::bail!(
            "socket activation passed fd {fd} of type {kind:?}, not a Unix stream socket; fix ListenStream= in automation-framework.socket"
        );
    }
    Ok(())
}

/// Tells systemd we are ready to serve, with a one-line status.
pub fn notify_ready(status: &str) {
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// When the unit sets `WatchdogSec=`, pings `WATCHDOG=1` at half that interval
/// until `shutdown` fires. The pings come from a task on the same runtime that
/// serves requests, so a wedged runtime stops them and systemd restarts us.
pub async fn watchdog(shutdown: tokio_util::sync::CancellationToken) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(ping_every(timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => notify(&[sd_notify::NotifyState::Watchdog]),
        }
    }
}

/// Tells systemd a reload started: `RELOADING=1` with `MONOTONIC_USEC` in one
/// message, as `Type=notify-reload` and `systemctl reload` expect.
pub fn notify_reloading() {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(usec) => notify(&[sd_notify::NotifyState::Reloading, usec]),
        Err(err) => {
            log::warn!("cannot read the monotonic clock for MONOTONIC_USEC: {err}");
            notify(&[sd_notify::NotifyState::Reloading]);
        }
    }
}

/// Tells systemd a reload finished (applied or refused: the daemon serves either
/// way), with a status. A config error spans lines (TOML shows the offending
/// line), and a newline would end the STATUS variable, so it is joined into one.
pub fn notify_reloaded(status: &str) {
    notify_ready(&one_line(status));
}

/// How often to ping a watchdog of `timeout`: at half of it, as
/// `sd_watchdog_enabled(3)` advises, so one late ping is not a restart.
fn ping_every(timeout: std::time::Duration) -> std::time::Duration {
    timeout / 2
}

/// `text` on one line: each line trimmed, blank ones dropped, joined by a
/// space.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Tells systemd we are shutting down.
pub fn notify_stopping() {
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("draining"),
    ]);
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        log::warn!("sd_notify failed: {err}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{one_line, ping_every};

    #[test]
    fn a_status_of_several_lines_becomes_one() {
        let toml_error = "TOML parse error at line 2, column 1\n  |\n2 | mood = \"calm\"\n  | ^^^^\n\nunknown field `mood`\n";
        assert_eq!(
            one_line(toml_error),
            "TOML parse error at line 2, column 1 | 2 | mood = \"calm\" | ^^^^ unknown field `mood`"
        );
        assert_eq!(one_line("serving"), "serving");
    }

    #[test]
    fn the_watchdog_is_pinged_at_half_its_timeout() {
        assert_eq!(ping_every(Duration::from_secs(30)), Duration::from_secs(15));
        assert_eq!(
            ping_every(Duration::from_millis(200)),
            Duration::from_millis(100)
        );
    }
}
