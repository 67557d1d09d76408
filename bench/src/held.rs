//! Scenario g: what held client connections cost the broker. COUNT AMQP connections, each
//! with a channel, are opened and held against one node (directly, through HAProxy, through
//! tether with multiplexing); the node's memory and the cluster's connection count are read
//! before and after, and the connections closed again.
//!
//! The clients are the least an AMQP client can be (a handshake as guest, no heart-beats, one
//! channel, a socket and a small read buffer each), so that 10,000 of them fit beside the
//! brokers: a lapin connection holds megabytes.
//!
//! Two figures for the broker's memory: the RSS of its beam.smp (what the host pays, though the
//! Erlang VM keeps freed memory for a while, so a target measured after another may reuse what
//! that one freed), and RabbitMQ's own count of the memory its connections hold (readers,
//! writers, channels, other: exact, and back to its baseline when they close).

use crate::lab::Lab;
use crate::proc::rss_bytes;
use amq_protocol::protocol::{AMQPClass, channel, connection};
use amq_protocol::types::FieldTable;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether::proto::amqp::{FRAME_MIN_SIZE, Frame, FrameCodec, FrameType, PROTOCOL_HEADER};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

type Client = Framed<TcpStream, FrameCodec>;

/// Connects in flight at once.
const CONCURRENCY: usize = 32;

pub struct Held {
    pub clients: usize,
    /// Connections the cluster lists, less those it listed before.
    pub broker_connections: f64,
    pub broker_rss_mb: f64,
    pub broker_connection_memory_mb: f64,
    /// The proxy's RSS growth (none for a direct connection).
    pub proxy_rss_mb: Option<f64>,
}

/// Opens `count` connections to `url`, each with a channel, holds them while the broker is
/// measured, then closes them and waits until the broker lists as many as before.
pub async fn hold(
    addr: SocketAddr,
    count: usize,
    broker_pid: u32,
    proxy_pid: Option<u32>,
) -> anyhow::Result<Held> {
    let lab = Lab;
    let connections_before = settled_connections(&lab, None).await;
    let memory_before = lab.connection_memory("r1").unwrap_or(0);
    let rss_before = rss_bytes(broker_pid).unwrap_or(0);
    let proxy_before = proxy_pid.and_then(rss_bytes);

    let started = Instant::now();
    let mut held = Vec::with_capacity(count);
    let mut opening = FuturesUnordered::new();
    let mut next = 0;
    while held.len() < count {
        while next < count && opening.len() < CONCURRENCY {
            next += 1;
            opening.push(open(addr));
        }
        match opening.next().await {
            Some(Ok(client)) => held.push(client),
            Some(Err(e)) => anyhow::bail!("held connection {} of {count}: {e:?}", held.len()),
            None => break,
        }
    }
    eprintln!("g: {count} connections open in {:?}", started.elapsed());

    let expected = (connections_before + count as f64).max(1.0);
    let listed = settled_connections(&lab, Some(expected)).await;
    let memory_after = lab.connection_memory("r1").unwrap_or(0);
    let rss_after = rss_bytes(broker_pid).unwrap_or(0);
    let proxy_after = proxy_pid.and_then(rss_bytes);

    let mut closing: FuturesUnordered<_> = held.into_iter().map(close).collect();
    while closing.next().await.is_some() {}
    settled_connections(&lab, Some(connections_before)).await;

    let mb = |after: u64, before: u64| after.saturating_sub(before) as f64 / 1e6;
    Ok(Held {
        clients: count,
        broker_connections: listed - connections_before,
        broker_rss_mb: mb(rss_after, rss_before),
        broker_connection_memory_mb: mb(memory_after, memory_before),
        proxy_rss_mb: match (proxy_before, proxy_after) {
            (Some(before), Some(after)) => Some(mb(after, before)),
            _ => None,
        },
    })
}

/// The cluster's connection count once the management API has caught up: the same value twice
/// 2 s apart, or `expected` (its statistics lag by their interval, 5 s). At most a minute.
async fn settled_connections(lab: &Lab, expected: Option<f64>) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = lab.connections().unwrap_or(-1.0);
        if expected == Some(now) || (expected.is_none() && last == Some(now)) {
            return now;
        }
        if Instant::now() > deadline {
            return now;
        }
        last = Some(now);
    }
}

/// A client connection logged in as guest to `/`, with channel 1 open and no heart-beats.
async fn open(addr: SocketAddr) -> anyhow::Result<Client> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(&PROTOCOL_HEADER).await?;
    let mut client = Framed::new(stream, FrameCodec::new(FRAME_MIN_SIZE));
    expect(&mut client, "connection.start").await?;
    let start_ok = connection::StartOk {
        client_properties: FieldTable::default(),
        mechanism: "PLAIN".into(),
        response: "\0guest\0guest".into(),
        locale: "en_US".into(),
    };
    send(
        &mut client,
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
    )
    .await?;
    let tune = match expect(&mut client, "connection.tune").await? {
        AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => tune,
        _ => anyhow::bail!("no connection.tune"),
    };
    let tune_ok = connection::TuneOk {
        channel_max: tune.channel_max,
        frame_max: FRAME_MIN_SIZE,
        heartbeat: 0,
    };
    send(
        &mut client,
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
    )
    .await?;
    let open = connection::Open {
        virtual_host: "/".into(),
    };
    send(
        &mut client,
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(open)),
    )
    .await?;
    expect(&mut client, "connection.open-ok").await?;
    let channel = AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}));
    send(&mut client, 1, channel).await?;
    expect(&mut client, "channel.open-ok").await?;
    Ok(client)
}

/// Closes the connection as a client does, and waits for the close-ok (at most 10 s).
async fn close(mut client: Client) {
    let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: 200,
        reply_text: "done".into(),
        class_id: 0,
        method_id: 0,
    }));
    if send(&mut client, 0, close).await.is_ok() {
        let _ =
            tokio::time::timeout(Duration::from_secs(10), expect(&mut client, "close-ok")).await;
    }
}

async fn send(client: &mut Client, channel: u16, method: AMQPClass) -> anyhow::Result<()> {
    let frame = Frame::method(channel, tether::proto::amqp::encode(&method));
    client.send(frame).await?;
    Ok(())
}

/// The next method from the server (`what` names it for the error).
async fn expect(client: &mut Client, what: &str) -> anyhow::Result<AMQPClass> {
    loop {
        let frame = match tokio::time::timeout(Duration::from_secs(30), client.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => anyhow::bail!("waiting for {what}: {e}"),
            Ok(None) => anyhow::bail!("closed while waiting for {what}"),
            Err(_) => anyhow::bail!("no {what} in 30 s"),
        };
        if frame.kind == FrameType::Method {
            return Ok(tether::proto::amqp::decode(&frame.payload)?);
        }
    }
}
