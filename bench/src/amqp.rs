//! AMQP 0-9-1 workloads with lapin: publishers and consumers on one queue, flat out or at a
//! fixed rate, with or without publisher confirms; and connect-per-message (an app that connects, publishes one message and closes).

use crate::stats::{self, Outcome};
use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connect, Connection, ConnectionProperties};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Load {
    pub url: String,
    pub queue: String,
    pub publishers: usize,
    pub consumers: usize,
    pub size: usize,
    pub confirms: bool,
    /// Messages per second per publisher; flat out when `None`.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Publishes in flight per publisher awaiting their confirm.
    pub window: usize,
}

pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    if url.starts_with("amqps://") {
        // A direct TLS connection trusts the lab CA, as tether and HAProxy do.
        let config = OwnedTLSConfig {
            identity: None,
            cert_chain: std::fs::read_to_string(tether_lab::tls_file("ca.pem")).ok(),
        };
        let runtime = lapin::runtime::default_runtime()?;
        return url.connect_with_config(properties, config, runtime).await;
    }
    Connection::connect(url, properties).await
}

/// Declares `queue` (a quorum queue if asked) and empties it.
pub async fn prepare(url: &str, queue: &str, quorum: bool) -> anyhow::Result<()> {
    // lapin's errors can display as nothing: the debug form says what failed.
    let connection = connect(url, "bench-setup")
        .await
        .map_err(|e| anyhow::anyhow!("connect for setup to {url}: {e:?}"))?;
    let channel = connection.create_channel().await?;
    let mut arguments = FieldTable::default();
    if quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, arguments)
        .await
        .with_context(|| format!("declare {queue}"))?;
    channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    connection.close(200, "setup done".into()).await?;
    Ok(())
}

/// Deletes `queue` if it is there.
pub async fn delete(url: &str, queue: &str) -> anyhow::Result<()> {
    let connection = connect(url, "bench-setup")
        .await
        .map_err(|e| anyhow::anyhow!("connect for setup to {url}: {e:?}"))?;
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .with_context(|| format!("delete {queue}"))?;
    connection.close(200, "setup done".into()).await?;
    Ok(())
}

/// A message body: the publish time for latency, padded to `size`.
pub fn body(size: usize) -> Vec<u8> {
    let mut body = stats::now_ns().to_be_bytes().to_vec();
    body.resize(size.max(8), b'x');
    body
}

fn sent_at(body: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(body.get(..8)?.try_into().ok()?))
}

pub async fn run(load: &Load) -> anyhow::Result<Outcome> {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    for index in 0..load.consumers {
        let connection = connect(&load.url, &format!("bench-consumer-{index}")).await?;
        consumers.push(tokio::spawn(consume(
            connection,
            load.queue.clone(),
            received.clone(),
            stop.clone(),
        )));
    }
    let started = Instant::now();
    let mut publishers = Vec::new();
    for index in 0..load.publishers {
        let connection = connect(&load.url, &format!("bench-publisher-{index}")).await?;
        publishers.push(tokio::spawn(publish(connection, load.clone())));
    }
    let (mut published, mut confirmed, mut errors) = (0, 0, 0);
    for publisher in publishers {
        let (p, c, e) = publisher.await??;
        published += p;
        confirmed += c;
        errors += e;
    }
    stats::drain(&received, published).await;
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut latency = stats::histogram();
    for consumer in consumers {
        let (histogram, consumer_errors) = consumer.await??;
        latency.add(&histogram)?;
        errors += consumer_errors;
    }
    Ok(Outcome {
        published,
        confirmed,
        received: received.load(Ordering::Relaxed),
        errors,
        seconds,
        latency_us: latency,
    })
}

pub async fn publish(connection: Connection, load: Load) -> anyhow::Result<(u64, u64, u64)> {
    let channel = connection.create_channel().await?;
    if load.confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    let (mut published, mut confirmed, mut errors) = (0u64, 0u64, 0u64);
    let mut in_flight = FuturesUnordered::new();
    let started = Instant::now();
    while started.elapsed() < load.duration {
        if let Some(rate) = load.rate {
            let due = started + Duration::from_secs_f64(published as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                load.queue.as_str().into(),
                BasicPublishOptions::default(),
                &body(load.size),
                BasicProperties::default(),
            )
            .await?;
        published += 1;
        if load.confirms {
            in_flight.push(confirm);
            while in_flight.len() >= load.window {
                match in_flight.next().await {
                    Some(Ok(c)) if c.is_ack() => confirmed += 1,
                    _ => errors += 1,
                }
            }
        }
    }
    while let Some(outcome) = in_flight.next().await {
        match outcome {
            Ok(c) if c.is_ack() => confirmed += 1,
            _ => errors += 1,
        }
    }
    connection.close(200, "done".into()).await?;
    Ok((published, confirmed, errors))
}

pub async fn consume(
    connection: Connection,
    queue: String,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, u64)> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut latency = stats::histogram();
    let mut errors = 0;
    while !stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(100), deliveries.next()).await;
        let delivery = match next {
            Err(_) => continue,
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                errors += 1;
                break;
            }
            Ok(Some(Ok(delivery))) => delivery,
        };
        if let Some(at) = sent_at(&delivery.data) {
            latency.saturating_record(stats::micros_since(at).max(1));
        }
        received.fetch_add(1, Ordering::Relaxed);
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok((latency, errors))
}

/// Seed 004's loop: connect, publish one message, close; `workers` of them for `duration`.
pub async fn connect_per_message(
    url: &str,
    queue: &str,
    workers: usize,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (url, queue) = (url.to_owned(), queue.to_owned());
        tasks.push(tokio::spawn(async move {
            let (mut published, mut errors) = (0u64, 0u64);
            let mut latency = stats::histogram();
            while started.elapsed() < duration {
                let began = Instant::now();
                // Connect, publish one with a confirm, close: the time until the confirm is
                // what the application waits for before it can answer its own request.
                let attempt = async {
                    let connection = connect(&url, "bench-one-shot").await?;
                    let channel = connection.create_channel().await?;
                    channel
                        .confirm_select(ConfirmSelectOptions::default())
                        .await?;
                    let confirm = channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            &body(64),
                            BasicProperties::default(),
                        )
                        .await?
                        .await?;
                    let confirmed_after = began.elapsed();
                    connection.close(200, "done".into()).await?;
                    Ok::<_, lapin::Error>((confirm.is_ack(), confirmed_after))
                };
                match attempt.await {
                    Ok((true, after)) => {
                        published += 1;
                        let _ = latency.record(after.as_micros() as u64);
                    }
                    Ok((false, _)) | Err(_) => errors += 1,
                }
            }
            (published, errors, latency)
        }));
    }
    let (mut published, mut errors) = (0, 0);
    let mut latency = stats::histogram();
    for task in tasks {
        let (p, e, l) = task.await?;
        published += p;
        errors += e;
        latency.add(&l)?;
    }
    Ok(Outcome {
        published,
        confirmed: published,
        received: published,
        errors,
        seconds: started.elapsed().as_secs_f64(),
        latency_us: latency,
    })
}

/// The ceiling for scenario c: the same publish with a confirm, one at a time per worker, on a
/// connection and channel held open, as if connecting cost nothing.
pub async fn publish_per_message_held(
    url: &str,
    queue: &str,
    workers: usize,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (url, queue) = (url.to_owned(), queue.to_owned());
        tasks.push(tokio::spawn(async move {
            let (mut published, mut errors) = (0u64, 0u64);
            let mut latency = stats::histogram();
            let held = async {
                let connection = connect(&url, "bench-held").await?;
                let channel = connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                Ok::<_, lapin::Error>((connection, channel))
            };
            let Ok((connection, channel)) = held.await else {
                return (0, 1, latency);
            };
            while started.elapsed() < duration {
                let began = Instant::now();
                let attempt = async {
                    channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            &body(64),
                            BasicProperties::default(),
                        )
                        .await?
                        .await
                };
                match attempt.await {
                    Ok(confirm) if confirm.is_ack() => {
                        published += 1;
                        let _ = latency.record(began.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
            let _ = connection.close(200, "done".into()).await;
            (published, errors, latency)
        }));
    }
    let (mut published, mut errors) = (0, 0);
    let mut latency = stats::histogram();
    for task in tasks {
        let (p, e, l) = task.await?;
        published += p;
        errors += e;
        latency.add(&l)?;
    }
    Ok(Outcome {
        published,
        confirmed: published,
        received: published,
        errors,
        seconds: started.elapsed().as_secs_f64(),
        latency_us: latency,
    })
}
