//! Counting and timing what a workload did.

use hdrhistogram::Histogram;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long the consumers may receive nothing before the rest counts as not delivered.
const DRAIN_STALL: Duration = Duration::from_secs(10);

/// The moment every timestamp in a message body counts from: publisher and consumer run in
/// this one process, so their clocks agree.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`], to put in a message.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Microseconds from a timestamp taken with [`now_ns`] until now.
pub fn micros_since(ns: u64) -> u64 {
    now_ns().saturating_sub(ns) / 1000
}

/// Waits until the consumers have received `published` messages, or have received nothing new
/// for [`DRAIN_STALL`]: a queue that stops moving ends the wait.
pub async fn drain(received: &AtomicU64, published: u64) {
    let mut last = (received.load(Ordering::Relaxed), Instant::now());
    while received.load(Ordering::Relaxed) < published {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = received.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > DRAIN_STALL {
            break;
        }
    }
}

pub fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// What one run of a messaging workload did.
#[derive(Debug)]
pub struct Outcome {
    pub published: u64,
    pub confirmed: u64,
    pub received: u64,
    pub errors: u64,
    pub seconds: f64,
    pub latency_us: Histogram<u64>,
}

impl Outcome {
    pub fn msg_per_s(&self) -> f64 {
        self.received as f64 / self.seconds.max(1e-9)
    }

    pub fn p50_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.50) as f64 / 1000.0
    }

    pub fn p99_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.99) as f64 / 1000.0
    }

    pub fn p999_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.999) as f64 / 1000.0
    }
}
