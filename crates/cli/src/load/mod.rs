//! The load generator behind `automation-framework bench`, its in-process floor,
//! and the benchmarks in `benches/`.
//!
//! One closed-loop load shape for every target (daemon, floor, Redis): N
//! connections, each keeping up to D requests in flight, for a warm-up and then a
//! measured window. Latency is taken per request from the moment it was queued for
//! sending to the moment its reply was read, into an HDR histogram, so a target
//! that batches or delays replies shows it in the tail, not just in the mean.
//!
//! A target supplies one future per connection ([`run`]); the future records into
//! its own [`Tally`], and the tallies are merged at the end, so the measuring adds no
//! shared state (and no lock) between connections.

pub mod floor;
pub mod wire;

use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// The shape of one load.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub connections: usize,
    /// Requests in flight per connection (1 = one at a time).
    pub pipeline: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// When requests count: only those sent at or after `start` and answered by `end`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    /// Stop sending once this is true; replies still in flight are read and
    /// counted if they arrive before `end`.
    pub fn over(&self, now: Instant) -> bool {
        now >= self.end
    }
}

/// What one connection measured.
pub struct Tally {
    latency: Histogram<u64>,
    /// Replies counted in the window.
    pub ops: u64,
    /// Admissions denied (a rate limit or budget said no) in the window.
    pub denied: u64,
    /// Requests answered with an error, in the window or not.
    pub errors: u64,
    /// The first error's text, to print.
    pub first_error: Option<String>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            // 1 ns to 60 s at 3 significant digits.
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            ops: 0,
            denied: 0,
            errors: 0,
            first_error: None,
        }
    }

    /// Records the reply to a request sent at `sent`, read at `now`, if it falls in
    /// the window. Returns whether it counted.
    pub fn record(&mut self, window: &Window, sent: Instant, now: Instant) -> bool {
        if sent < window.start || now > window.end {
            return false;
        }
        let nanos = u64::try_from(now.duration_since(sent).as_nanos()).unwrap_or(u64::MAX);
        self.latency.saturating_record(nanos.max(1));
        self.ops += 1;
        true
    }

    pub fn error(&mut self, message: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency
            .add(&other.latency)
            .expect("histograms share their bounds");
        self.ops += other.ops;
        self.denied += other.denied;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// The result of one load, as printed (and as `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub target: String,
    pub mix: String,
    pub connections: usize,
    pub pipeline: usize,
    pub seconds: f64,
    /// Requests answered in the measured window.
    pub ops: u64,
    pub ops_per_sec: f64,
    pub denied: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Latency per request, microseconds.
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Runs `connection(i, window)` for every connection at once and merges what they
/// measured. Every connection is set up (connected, handshaken) by its future
/// before the window opens: the window starts after the warm-up, counted from the
/// moment all futures were spawned.
///
/// # Errors
/// The first connection that failed outright (could not connect, was closed).
pub async fn run<F, Fut>(load: &Load, mut connection: F) -> anyhow::Result<Tally>
where
    F: FnMut(usize, Window) -> Fut,
    Fut: Future<Output = anyhow::Result<Tally>> + Send + 'static,
{
    let begin = Instant::now();
    let window = Window {
        start: begin + load.warmup,
        end: begin + load.warmup + load.duration,
    };
    let tasks: Vec<_> = (0..load.connections)
        .map(|i| tokio::spawn(connection(i, window)))
        .collect();
    let mut total = Tally::new();
    for task in tasks {
        total.merge(task.await??);
    }
    Ok(total)
}

impl Summary {
    pub fn new(target: &str, mix: &str, load: &Load, tally: &Tally) -> Summary {
        let seconds = load.duration.as_secs_f64();
        let us = |q: f64| tally.latency.value_at_quantile(q) as f64 / 1_000.0;
        Summary {
            target: target.to_owned(),
            mix: mix.to_owned(),
            connections: load.connections,
            pipeline: load.pipeline,
            seconds,
            ops: tally.ops,
            ops_per_sec: tally.ops as f64 / seconds,
            denied: tally.denied,
            errors: tally.errors,
            first_error: tally.first_error.clone(),
            p50_us: us(0.50),
            p90_us: us(0.90),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: tally.latency.max() as f64 / 1_000.0,
        }
    }

    /// One human-readable block.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} {}: {} connections x pipeline {}, {:.1} s\n  {:.0} requests/s ({} answered",
            self.target,
            self.mix,
            self.connections,
            self.pipeline,
            self.seconds,
            self.ops_per_sec,
            self.ops
        );
        if self.denied > 0 {
            out.push_str(&format!(", {} denied", self.denied));
        }
        if self.errors > 0 {
            out.push_str(&format!(", {} errors", self.errors));
        }
        out.push_str(&format!(
            ")\n  latency us: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n",
            self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
        ));
        if let Some(err) = &self.first_error {
            out.push_str(&format!("  first error: {err}\n"));
        }
        out
    }
}
