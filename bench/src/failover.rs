//! Scenario e: steady traffic while the node in use is broken, again and again. The client is
//! what a careful application would be: on any error it reconnects (to the same address: the
//! proxy picks a node) and publishes again whatever was not confirmed. Measured: the longest
//! gap between confirms around each fault, the errors the application saw, what was lost.

use crate::amqp;
use crate::lab::Lab;
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    Kill,
    Stop,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9",
            Fault::Stop => "SIGSTOP",
        }
    }

    fn command(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Stop => "pause",
        }
    }
}

#[derive(Debug, Default)]
pub struct Stall {
    /// The longest gap between two confirms around each fault, in seconds.
    pub gaps: Vec<f64>,
    pub errors: u64,
    pub confirmed: u64,
    pub lost: u64,
    /// Faults that hit the node leading the quorum queue. RabbitMQ 3.10 then nacks the
    /// publishes of every channel opened after the fault (a reconnecting app's, or tether's
    /// replayed session) until that node is back, so those gaps include its restart.
    pub leader_hits: u64,
    /// The gaps of the faults that did not hit the queue's leader: what the proxy's detection
    /// and failover take, without the broker's own election.
    pub off_leader_gaps: Vec<f64>,
}

/// Brings a broken node back without holding up the runtime the clients run on.
async fn restart(lab: &Lab, node: &str) -> anyhow::Result<()> {
    let lab = *lab;
    let node = node.to_owned();
    tokio::task::spawn_blocking(move || lab.run(&["start", &node])).await?
}

/// The publisher's connection name, new for every run so that a connection of an earlier run
/// still listed by the management API is not taken for this one's.
fn publisher_name() -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    format!(
        "bench-stall-publisher-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    )
}

struct Shared {
    stop: AtomicBool,
    errors: AtomicU64,
    /// Every confirmed sequence number and when its confirm came.
    confirmed: Mutex<BTreeMap<u64, Instant>>,
    received: Mutex<BTreeSet<u64>>,
}

/// Runs `cycles` faults of kind `fault` against the node the publisher is connected to through
/// `url`, publishing `rate` confirmed messages a second on the quorum queue `queue`.
pub async fn run(
    url: &str,
    queue: &str,
    lab: &Lab,
    fault: Fault,
    cycles: usize,
    rate: f64,
) -> anyhow::Result<Stall> {
    let traffic = Traffic::start(url, queue, rate).await?;
    let shared = traffic.shared.clone();
    let publisher_name = traffic.publisher_name.clone();

    let mut gaps = Vec::new();
    let mut leader_hits = 0;
    let mut off_leader_gaps = Vec::new();
    for _ in 0..cycles {
        // The management API lists a connection once its statistics are emitted (every 5 s by
        // default), and lists it on its new node only after that again.
        let mut node = None;
        let looking_until = Instant::now() + Duration::from_secs(30);
        while node.is_none() && Instant::now() < looking_until {
            node = lab.node_of_connection(&publisher_name);
            if node.is_none() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let Some(node) = node else {
            anyhow::bail!("cannot tell which node holds the publisher's connection");
        };
        let leader_hit = lab.queue_leader(queue).as_deref() == Some(node.as_str());
        if leader_hit {
            leader_hits += 1;
        }
        let confirmed_before = last_confirm(&shared);
        let broken_at = Instant::now();
        lab.run(&[fault.command(), &node])?;
        // Wait until confirms flow again for two seconds. The node stays broken for up to
        // 30 s (HAProxy with a careful app needs its heart-beats to notice a hung node), then
        // it is brought back, as an operator or systemd would, and the wait goes on (bounded:
        // the proxy under test may never recover, which is itself a result).
        let recovered = |shared: &Shared| {
            last_confirm(shared).is_some_and(|at| at > broken_at + Duration::from_millis(100))
                && confirmed_since(shared, Instant::now() - Duration::from_secs(2)) > (rate as u64)
        };
        let mut restarted = false;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline && !recovered(&shared) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if !restarted && broken_at.elapsed() > Duration::from_secs(30) {
                restart(lab, &node).await?;
                restarted = true;
            }
        }
        if !restarted {
            restart(lab, &node).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let gap = longest_gap(&shared, confirmed_before.unwrap_or(broken_at));
        gaps.push(gap);
        if !leader_hit {
            off_leader_gaps.push(gap);
        }
    }

    let (errors, confirmed, lost) = traffic.finish().await?;
    Ok(Stall {
        gaps,
        leader_hits,
        off_leader_gaps,
        errors,
        confirmed,
        lost,
    })
}

/// A careful app's publisher and consumer on a quorum queue, through the proxy under test.
struct Traffic {
    shared: Arc<Shared>,
    publisher_name: String,
    publisher: tokio::task::JoinHandle<()>,
    consumer: tokio::task::JoinHandle<()>,
}

impl Traffic {
    async fn start(url: &str, queue: &str, rate: f64) -> anyhow::Result<Traffic> {
        let direct = format!(
            "amqp://guest:guest@{}/%2f",
            tether_lab::ports::address("r1", "amqp")
        );
        amqp::prepare(&direct, queue, true).await?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            confirmed: Mutex::new(BTreeMap::new()),
            received: Mutex::new(BTreeSet::new()),
        });
        // A careful app also turns heart-beats down so that a hung broker is noticed at all.
        let url = format!("{url}?heartbeat=10");
        let publisher_name = publisher_name();
        let publisher = tokio::spawn(publish(
            url.clone(),
            publisher_name.clone(),
            queue.to_owned(),
            rate,
            shared.clone(),
        ));
        let consumer = tokio::spawn(consume(url, queue.to_owned(), shared.clone()));
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(Traffic {
            shared,
            publisher_name,
            publisher,
            consumer,
        })
    }

    /// Stops publishing, lets the consumer take what is queued; (errors, confirmed, lost).
    async fn finish(self) -> anyhow::Result<(u64, u64, u64)> {
        let shared = self.shared;
        shared.stop.store(true, Ordering::Relaxed);
        self.publisher.await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if missing(&shared) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.consumer.abort();
        let confirmed = shared.confirmed.lock().map(|c| c.len() as u64).unwrap_or(0);
        Ok((
            shared.errors.load(Ordering::Relaxed),
            confirmed,
            missing(&shared),
        ))
    }
}

/// Scenario h: the proxy itself restarted under the same traffic, `cycles` times. `restart`
/// starts the new proxy process and returns the old one's pid; a cycle ends once the old
/// process has exited and confirms have flowed for two seconds since.
pub async fn restarts(
    url: &str,
    queue: &str,
    mut restart: impl FnMut() -> anyhow::Result<u32>,
    cycles: usize,
    rate: f64,
) -> anyhow::Result<Stall> {
    let traffic = Traffic::start(url, queue, rate).await?;
    let shared = traffic.shared.clone();
    let mut gaps = Vec::new();
    for _ in 0..cycles {
        let confirmed_before = last_confirm(&shared);
        let restarted_at = Instant::now();
        let old = restart()?;
        // HAProxy's old process serves its connections until `hard-stop-after`; tether's
        // hands them over. Bounded: a proxy that never lets go is a result too.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && crate::proc::running(old) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let settled = Instant::now();
        while Instant::now() < deadline
            && !(last_confirm(&shared).is_some_and(|at| at > settled)
                && confirmed_since(&shared, Instant::now() - Duration::from_secs(2)) > rate as u64)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        gaps.push(longest_gap(
            &shared,
            confirmed_before.unwrap_or(restarted_at),
        ));
    }
    let (errors, confirmed, lost) = traffic.finish().await?;
    Ok(Stall {
        gaps,
        errors,
        confirmed,
        lost,
        ..Stall::default()
    })
}

fn last_confirm(shared: &Shared) -> Option<Instant> {
    shared.confirmed.lock().ok()?.values().max().copied()
}

fn confirmed_since(shared: &Shared, since: Instant) -> u64 {
    shared
        .confirmed
        .lock()
        .map(|c| c.values().filter(|at| **at >= since).count() as u64)
        .unwrap_or(0)
}

/// The longest stretch without a confirm from `from` on.
fn longest_gap(shared: &Shared, from: Instant) -> f64 {
    let Ok(confirmed) = shared.confirmed.lock() else {
        return f64::NAN;
    };
    let mut times: Vec<Instant> = confirmed
        .values()
        .filter(|at| **at >= from)
        .copied()
        .collect();
    times.sort();
    times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .fold(0.0, f64::max)
}

fn missing(shared: &Shared) -> u64 {
    let (Ok(confirmed), Ok(received)) = (shared.confirmed.lock(), shared.received.lock()) else {
        return u64::MAX;
    };
    confirmed
        .keys()
        .filter(|seq| !received.contains(seq))
        .count() as u64
}

/// Publishes one message at a time and waits for its confirm; on any error reconnects and sends
/// the unconfirmed message again.
async fn publish(url: String, name: String, queue: String, rate: f64, shared: Arc<Shared>) {
    let mut next = 0u64;
    let started = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let session = async {
            let connection = amqp::connect(&url, &name).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            while !shared.stop.load(Ordering::Relaxed) {
                let due = started + Duration::from_secs_f64(next as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &next.to_be_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await?;
                if confirm.is_ack() {
                    if let Ok(mut confirmed) = shared.confirmed.lock() {
                        confirmed.insert(next, Instant::now());
                    }
                    next += 1;
                }
            }
            let _ = connection.close(200, "done".into()).await;
            Ok::<(), lapin::Error>(())
        };
        if session.await.is_err() {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn consume(url: String, queue: String, shared: Arc<Shared>) {
    loop {
        let session = async {
            let connection = amqp::connect(&url, "bench-stall-consumer").await?;
            let channel = connection.create_channel().await?;
            channel.basic_qos(100, BasicQosOptions::default()).await?;
            let mut deliveries = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            while let Some(delivery) = deliveries.next().await {
                let delivery = delivery?;
                if let Ok(seq) = delivery.data.as_slice().try_into().map(u64::from_be_bytes)
                    && let Ok(mut received) = shared.received.lock()
                {
                    received.insert(seq);
                }
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Ok::<(), lapin::Error>(())
        };
        if session.await.is_err() {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
