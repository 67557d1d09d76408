//! j: queue locality. Six quorum (or classic) queues led (held) two by each node; two consumers per queue through
//! a proxy, publishers at a fixed rate straight to each queue's leader (the same for every
//! row, so what differs is where the consumers sit). Measured: what the brokers pay per
//! message (CPU of every node's beam.smp) and the bytes over the inter-node links, with the
//! consumers placed at random (tether `locality` off, and HAProxy's round-robin) and by tether
//! with `locality = true`.

use crate::amqp;
use crate::lab::Lab;
use crate::proc::cpu_seconds;
use crate::stats;
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tether_lab::ports;

pub const QUEUES: usize = 6;
const CONSUMERS_PER_QUEUE: usize = 2;
/// Messages per second per queue: 1,500 msg/s in all, well below what the lab takes flat out
/// on two cores (about 2,800 here), so every row carries the same load and CPU per message
/// compares.
const RATE_PER_QUEUE: f64 = 250.0;
/// Consumers connect, then tether moves them (one per 300 ms in conf/bench); measuring
/// starts after this.
const SETTLE: Duration = Duration::from_secs(8);

pub fn queue(i: usize) -> String {
    format!("bench-j-{i}")
}

fn node(i: usize) -> &'static str {
    ports::RABBIT[i % 3]
}

fn direct_url(node: &str) -> String {
    format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        ports::of(node, "amqp")
    )
}

/// Declares the queues (quorum, or classic), each through the node that is to lead it (or
/// hold it), after deleting what an earlier row left.
pub async fn prepare(quorum: bool) -> anyhow::Result<()> {
    for i in 0..QUEUES {
        let url = direct_url(node(i));
        amqp::delete(&url, &queue(i)).await?;
        amqp::prepare(&url, &queue(i), quorum).await?;
    }
    Ok(())
}

pub struct Measured {
    pub msg_per_s: f64,
    pub received: u64,
    pub confirmed: u64,
    pub errors: u64,
    pub broker_cpu_s: f64,
    pub internode_bytes: f64,
    /// Consumers on their queue's leader when measuring started, and all of them.
    pub local_consumers: (usize, usize),
}

/// Every node's beam.smp CPU seconds so far.
fn brokers_cpu() -> anyhow::Result<f64> {
    let mut total = 0.0;
    for node in ports::RABBIT {
        let pid: u32 = tether_lab::script(&["pid", node])
            .map_err(anyhow::Error::msg)?
            .trim()
            .parse()
            .with_context(|| format!("{node}'s pid"))?;
        total += cpu_seconds(pid).with_context(|| format!("{node}'s CPU"))?;
    }
    Ok(total)
}

/// Bytes sent over the inter-node (Erlang distribution) links so far, both ways: the kernel's
/// count (`ss -ti`'s `bytes_sent`) on every socket of a node's distribution port. Exact at
/// any moment, where the management API's `cluster_links` is refreshed every 5 s.
fn internode_bytes() -> anyhow::Result<f64> {
    let dist: Vec<String> = (ports::RABBIT.iter())
        .map(|n| format!(":{}", ports::of(n, "dist")))
        .collect();
    let out = std::process::Command::new("ss")
        .args(["-tinH", "state", "established"])
        .output()
        .context("ss (Debian's iproute2)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0.0;
    let mut on_link = false;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            // Recv-Q Send-Q Local Peer: one end of a link has the dist port, the other the peer.
            let fields: Vec<&str> = line.split_whitespace().collect();
            on_link = (fields.get(2..4).into_iter().flatten())
                .any(|address| dist.iter().any(|port| address.ends_with(port.as_str())));
            continue;
        }
        if on_link
            && let Some(sent) =
                (line.split_whitespace()).find_map(|field| field.strip_prefix("bytes_sent:"))
        {
            total += sent.parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// One row: consumers through `consumer_url`, for `duration` after they settle.
pub async fn run(lab: &Lab, consumer_url: &str, duration: Duration) -> anyhow::Result<Measured> {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    for i in 0..QUEUES * CONSUMERS_PER_QUEUE {
        let connection = amqp::connect(consumer_url, &format!("bench-j-consumer-{i}")).await?;
        consumers.push(tokio::spawn(amqp::consume(
            connection,
            // Two in a row per queue: a round-robin over the nodes does not happen to put
            // them on the leaders.
            queue(i / CONSUMERS_PER_QUEUE),
            received.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(SETTLE).await;
    let local_consumers = lab.local_consumers("bench-j-").unwrap_or_default();
    let cpu_before = brokers_cpu()?;
    let links_before = internode_bytes()?;
    let received_before = received.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut publishers = Vec::new();
    for i in 0..QUEUES {
        let url = direct_url(node(i));
        let connection = amqp::connect(&url, &format!("bench-j-publisher-{i}")).await?;
        publishers.push(tokio::spawn(amqp::publish(
            connection,
            amqp::Load {
                url,
                queue: queue(i),
                publishers: 1,
                consumers: 0,
                size: 1024,
                confirms: true,
                rate: Some(RATE_PER_QUEUE),
                duration,
                window: 64,
            },
        )));
    }
    let (mut published, mut confirmed, mut errors) = (0, 0, 0);
    for publisher in publishers {
        let (p, c, e) = publisher.await??;
        published += p;
        confirmed += c;
        errors += e;
    }
    stats::drain(&received, received_before + published).await;
    let seconds = started.elapsed().as_secs_f64();
    let broker_cpu_s = brokers_cpu()? - cpu_before;
    let internode = internode_bytes()? - links_before;
    stop.store(true, Ordering::Relaxed);
    for consumer in consumers {
        let (_, consumer_errors) = consumer.await??;
        errors += consumer_errors;
    }
    let got = received.load(Ordering::Relaxed) - received_before;
    Ok(Measured {
        msg_per_s: got as f64 / seconds.max(1e-9),
        received: got,
        confirmed,
        errors,
        broker_cpu_s,
        internode_bytes: internode,
        local_consumers,
    })
}
