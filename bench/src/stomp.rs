//! STOMP workloads, with a small client on tether's own STOMP codec: publishers sending with
//! receipts (a window of them in flight) and consumers on one destination.

use crate::stats::{self, Outcome};
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tether::proto::stomp::{Command, Frame, Incoming, StompCodec, Version};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

#[derive(Clone, Debug)]
pub struct Load {
    pub addr: SocketAddr,
    pub destination: String,
    pub publishers: usize,
    pub consumers: usize,
    pub size: usize,
    pub receipts: bool,
    pub duration: Duration,
    pub window: usize,
}

type Connection = Framed<TcpStream, StompCodec>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Connection> {
    let stream = TcpStream::connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    let mut connection = Framed::new(stream, StompCodec::new(Version::V1_2));
    let connect = Frame::new(Command::Connect)
        .with_header("accept-version", "1.2")
        .with_header("host", "/")
        .with_header("login", "guest")
        .with_header("passcode", "guest")
        .with_header("heart-beat", "0,0");
    connection.send(&connect).await?;
    loop {
        match connection.next().await {
            Some(Ok(Incoming::Heartbeat)) => continue,
            Some(Ok(Incoming::Frame(frame))) if frame.command == Command::Connected => break,
            Some(Ok(Incoming::Frame(frame))) => {
                bail!(
                    "{} instead of CONNECTED: {:?}",
                    frame.command,
                    frame.header("message")
                )
            }
            Some(Err(e)) => bail!("{e}"),
            None => bail!("closed before CONNECTED"),
        }
    }
    Ok(connection)
}

/// Opens `count` STOMP connections to `addr` (no heart-beats) and keeps them, idle.
pub async fn hold_idle(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<Connection>> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        held.push(connect(addr).await?);
    }
    Ok(held)
}

fn body(size: usize) -> Vec<u8> {
    crate::amqp::body(size)
}

pub async fn run(load: &Load) -> anyhow::Result<Outcome> {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    for index in 0..load.consumers {
        let mut connection = connect(load.addr).await?;
        let subscribe = Frame::new(Command::Subscribe)
            .with_header("id", index.to_string())
            .with_header("destination", load.destination.as_str())
            .with_header("ack", "auto")
            .with_header("prefetch-count", "1000");
        connection.send(&subscribe).await?;
        consumers.push(tokio::spawn(consume(
            connection,
            received.clone(),
            stop.clone(),
        )));
    }
    let started = Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..load.publishers {
        let connection = connect(load.addr).await?;
        publishers.push(tokio::spawn(publish(connection, load.clone())));
    }
    let (mut published, mut confirmed) = (0, 0);
    for publisher in publishers {
        let (p, c) = publisher.await??;
        published += p;
        confirmed += c;
    }
    stats::drain(&received, published).await;
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut latency = stats::histogram();
    let mut errors = 0;
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

async fn publish(mut connection: Connection, load: Load) -> anyhow::Result<(u64, u64)> {
    let (mut published, mut confirmed) = (0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < load.duration {
        let mut send = Frame::new(Command::Send)
            .with_header("destination", load.destination.as_str())
            .with_body(body(load.size));
        if load.receipts {
            send = send.with_header("receipt", published.to_string());
        }
        connection.feed(&send).await?;
        published += 1;
        if load.receipts && published - confirmed >= load.window as u64 {
            SinkExt::<&Frame>::flush(&mut connection).await?;
            confirmed += await_receipts(
                &mut connection,
                published - confirmed - load.window as u64 / 2,
            )
            .await?;
        }
    }
    SinkExt::<&Frame>::flush(&mut connection).await?;
    if load.receipts {
        confirmed += await_receipts(&mut connection, published - confirmed).await?;
    }
    connection.send(&Frame::new(Command::Disconnect)).await?;
    Ok((published, confirmed))
}

async fn await_receipts(connection: &mut Connection, count: u64) -> anyhow::Result<u64> {
    let mut seen = 0;
    while seen < count {
        match connection.next().await {
            Some(Ok(Incoming::Frame(frame))) if frame.command == Command::Receipt => seen += 1,
            Some(Ok(Incoming::Frame(frame))) if frame.command == Command::Error => {
                bail!("ERROR: {:?}", frame.header("message"))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("{e}"),
            None => bail!("closed while awaiting receipts"),
        }
    }
    Ok(seen)
}

async fn consume(
    mut connection: Connection,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, u64)> {
    let mut latency = stats::histogram();
    let mut errors = 0;
    while !stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(100), connection.next()).await;
        match next {
            Err(_) | Ok(Some(Ok(Incoming::Heartbeat))) => continue,
            Ok(Some(Ok(Incoming::Frame(frame)))) if frame.command == Command::Message => {
                if let Ok(at) = frame.body.get(..8).unwrap_or_default().try_into() {
                    latency.saturating_record(stats::micros_since(u64::from_be_bytes(at)).max(1));
                }
                received.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => {
                errors += 1;
                break;
            }
        }
    }
    let _ = connection.send(&Frame::new(Command::Disconnect)).await;
    Ok((latency, errors))
}
