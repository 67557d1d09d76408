//! The client's AMQP handshake, interleaved with the first node's so that the client meets the
//! broker's own answers at the usual moments: the node's connection.start (server properties,
//! capabilities, mechanisms) is what the client gets; the client's start-ok goes to the node, and
//! a refused login reaches the client as the node's connection.close (403), right where a broker
//! would send it; the node's tune decides what tether offers; the client's connection.open
//! opens the node's virtual host.
//!
//! Each leg negotiates its own channel_max, frame_max and heart-beat. tether keeps the node's
//! highest channel for itself (the replay uses it) and offers the client the rest.

use super::confirms::Reusable;
use super::leg::{FrameReader, FrameWriter};
use super::pooled::{Greeting, Pooling, credentials, login_secret};
use super::state::connection_close;
use super::upstream::{CONNECTION_FORCED, Failure, Upstream};
use crate::cluster::ejection::Cause;
use crate::config::SessionSettings;
use crate::pool::Fingerprint;
use crate::proto::amqp::{FRAME_MIN_SIZE, Frame, FrameType, PROTOCOL_HEADER, method};
use crate::session::Context;
use crate::tls::Stream;
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldTable};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// A session past connection.open-ok on both legs.
pub struct Opened {
    pub client_reader: FrameReader,
    pub client_writer: FrameWriter,
    pub client_heartbeat: Option<Duration>,
    pub start_ok: connection::StartOk,
    pub open: connection::Open,
    pub upstream: Upstream,
    /// What the listener's pool knows of the session (`None`: no pool).
    pub warm: Option<Warmth>,
}

enum Step {
    /// Give up on the client quietly (it left, or spoke no AMQP).
    Drop,
    /// Tell the client, then close.
    Close(Frame),
}

pub async fn run(context: &Context, mut client: Stream) -> Option<Opened> {
    let listener = &context.listener;
    let settings = &listener.session;
    let limit = settings.client_handshake_timeout;
    let mut header = [0u8; 8];
    match tokio::time::timeout(limit, client.read_exact(&mut header)).await {
        Ok(Ok(_)) if header == PROTOCOL_HEADER => {}
        Ok(Ok(_)) => {
            // The spec's answer to a protocol it does not speak: the header it does, then close.
            // What the client sent beyond is drained first: closing on unread bytes would reset
            // the connection and lose the answer.
            use tokio::io::AsyncWriteExt;
            let _ = client.write_all(&PROTOCOL_HEADER).await;
            let _ = client.shutdown().await;
            let mut sink = [0u8; 4096];
            let drain = async { while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            return None;
        }
        Ok(_) => return None,
        Err(_) => {
            crate::budget::reached("client_handshake_timeout");
            return None;
        }
    }
    let (read, write) = client.into_split();
    let mut reader = FrameReader::new(read, FRAME_MIN_SIZE);
    let mut writer = FrameWriter::new(write, FRAME_MIN_SIZE);
    match negotiate(context, &mut reader, &mut writer).await {
        Ok((upstream, start_ok, open, client_heartbeat, warm)) => Some(Opened {
            client_reader: reader,
            client_writer: writer,
            client_heartbeat,
            start_ok,
            open,
            upstream,
            warm,
        }),
        Err(step) => {
            if let Step::Close(frame) = step {
                writer.queue(&frame);
                let _ = tokio::time::timeout(Duration::from_secs(5), writer.flush()).await;
            }
            writer.shutdown().await;
            tracing::debug!(parent: &context.span, "handshake did not complete");
            None
        }
    }
}

type Negotiated = (
    Upstream,
    connection::StartOk,
    connection::Open,
    Option<Duration>,
    Option<Warmth>,
);

/// A session's link to its listener's pool: what its client logged in with, as the pool knows
/// it, and the clean channels a pooled connection came with.
pub struct Warmth {
    pub fingerprint: Fingerprint,
    pub channels: Vec<(u16, Reusable)>,
}

async fn negotiate(
    context: &Context,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
) -> Result<Negotiated, Step> {
    let listener = &context.listener;
    let settings = &listener.session;
    let deadline = Instant::now() + settings.failover_timeout;

    // With connections in the pool the client meets the cluster's greeting at once; without,
    // a node's own, from the connection its session will use.
    let greeting = listener.amqp_pool.as_ref().and_then(|p| p.greeting());
    let (first, mut start) = match &greeting {
        Some(greeting) => (None, greeting.start.clone()),
        None => match connect_any(context, deadline).await {
            Ok((upstream, start)) => (Some(upstream), start),
            Err(why) => {
                // The client waits for a connection.start before it can hear anything: it gets
                // tether's own, then, after its start-ok, the close that says why.
                send(writer, &tethers_start()).await?;
                expect(reader, settings.client_handshake_timeout).await?;
                return Err(unavailable(why));
            }
        },
    };
    send(
        writer,
        &AMQPClass::Connection(connection::AMQPMethod::Start(start.clone())),
    )
    .await?;
    let start_ok = match expect(reader, settings.client_handshake_timeout).await? {
        AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)) => start_ok,
        _ => return Err(command_invalid("connection.start-ok")),
    };
    if let (Some(greeting), Some(pooling)) = (greeting, &listener.amqp_pool)
        && pooling.knows_secret(&login_secret(&start_ok))
    {
        return negotiate_warm(context, reader, writer, pooling, greeting, start_ok).await;
    }
    if let Some(pooling) = &listener.amqp_pool {
        // Nothing pooled, or nothing this login made: the pool is not even asked.
        pooling.pool.count_miss();
    }
    // Credentials no pooled connection was logged in with (a wrong password among them) log
    // in on a node now, so that a refusal comes where a broker gives it.
    let mut upstream = match first {
        Some(upstream) => upstream,
        None => {
            let (upstream, node_start) =
                connect_any(context, deadline).await.map_err(unavailable)?;
            start = node_start;
            upstream
        }
    };

    // The node may die between its start and the client's answer: any live node will do.
    let tune = loop {
        match upstream.login(&start_ok).await {
            Ok(tune) => break tune,
            Err(Failure::Refused(close)) => return Err(refused(close)),
            Err(failure) => {
                note_failure(context, &upstream, &failure);
                upstream = connect_any(context, deadline).await.map_err(unavailable)?.0;
            }
        }
    };

    let greeting = Greeting {
        start,
        tune: tune.clone(),
    };
    let client_heartbeat = tune_client(reader, writer, settings, &tune).await?;

    let open = match expect(reader, settings.client_handshake_timeout).await? {
        AMQPClass::Connection(connection::AMQPMethod::Open(open)) => open,
        _ => return Err(command_invalid("connection.open")),
    };
    let mut node_tune = tune;
    loop {
        match upstream
            .open(&node_tune, settings.upstream_heartbeat, &open)
            .await
        {
            Ok(()) => break,
            Err(Failure::Refused(close)) => return Err(refused(close)),
            Err(failure) => {
                note_failure(context, &upstream, &failure);
                // Start over on another node with what the client already said.
                loop {
                    upstream = connect_any(context, deadline).await.map_err(unavailable)?.0;
                    match upstream.login(&start_ok).await {
                        Ok(tune) => {
                            node_tune = tune;
                            break;
                        }
                        Err(Failure::Refused(close)) => return Err(refused(close)),
                        Err(failure) => note_failure(context, &upstream, &failure),
                    }
                }
            }
        }
    }
    send(
        writer,
        &AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    )
    .await?;
    tracing::debug!(parent: &context.span, node = %upstream.node().name, vhost = %open.virtual_host, "session connected");
    let Some(pooling) = &listener.amqp_pool else {
        return Ok((upstream, start_ok, open, client_heartbeat, None));
    };
    pooling.remember(greeting);
    let fingerprint = pooling.pool.fingerprint(&credentials(&start_ok, &open));
    if let Some(shared) = &pooling.shared {
        // Logged in by this client, shared from now on.
        upstream = shared.share(upstream, fingerprint.clone());
    }
    let warm = Warmth {
        fingerprint,
        channels: Vec::new(),
    };
    Ok((upstream, start_ok, open, client_heartbeat, Some(warm)))
}

/// The rest of the handshake of a client whose credentials logged a pooled connection in: once
/// its connection.open says which virtual host, it gets a warm connection those credentials
/// logged in there, or a fresh one.
async fn negotiate_warm(
    context: &Context,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    pooling: &Pooling,
    greeting: Greeting,
    start_ok: connection::StartOk,
) -> Result<Negotiated, Step> {
    let settings = &context.listener.session;
    let client_heartbeat = tune_client(reader, writer, settings, &greeting.tune).await?;
    let open = match expect(reader, settings.client_handshake_timeout).await? {
        AMQPClass::Connection(connection::AMQPMethod::Open(open)) => open,
        _ => return Err(command_invalid("connection.open")),
    };
    let credentials = credentials(&start_ok, &open);
    let deadline = Instant::now() + settings.failover_timeout;
    let (upstream, channels) = match &pooling.shared {
        Some(shared) => {
            let fresh = || fresh(context, deadline, &start_ok, &open);
            let gate = pooling.pool.gate();
            (
                shared.attach(gate, &credentials, None, fresh).await?,
                Vec::new(),
            )
        }
        None => match pooling.pool.take(&credentials).await {
            Some((warm, node)) => warm.into_upstream(&node),
            None => (
                fresh(context, deadline, &start_ok, &open).await?,
                Vec::new(),
            ),
        },
    };
    send(
        writer,
        &AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    )
    .await?;
    tracing::debug!(parent: &context.span, node = %upstream.node().name, vhost = %open.virtual_host, "session connected");
    let warm = Warmth {
        fingerprint: pooling.pool.fingerprint(&credentials),
        channels,
    };
    Ok((upstream, start_ok, open, client_heartbeat, Some(warm)))
}

/// A new node connection logged in and opened with what the client said, on any live node
/// until `deadline`.
async fn fresh(
    context: &Context,
    deadline: Instant,
    start_ok: &connection::StartOk,
    open: &connection::Open,
) -> Result<Upstream, Step> {
    let heartbeat = context.listener.session.upstream_heartbeat;
    loop {
        let (mut upstream, _) = connect_any(context, deadline).await.map_err(unavailable)?;
        match upstream.log_in(start_ok, open, heartbeat).await {
            Ok(()) => return Ok(upstream),
            Err(Failure::Refused(close)) => return Err(refused(close)),
            Err(failure) => note_failure(context, &upstream, &failure),
        }
    }
}

/// Offers the client a tune within the node's (tether keeps the node's highest channel for
/// itself) and the listener's limits, and reads its tune-ok. Returns the client's heart-beat.
async fn tune_client(
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    settings: &SessionSettings,
    tune: &connection::Tune,
) -> Result<Option<Duration>, Step> {
    let reserved = match tune.channel_max {
        0 => u16::MAX,
        max => max.saturating_sub(1).max(1),
    };
    let channel_max = settings.channel_max.min(reserved);
    let frame_max = match tune.frame_max {
        0 => settings.frame_max,
        max => settings.frame_max.min(max),
    }
    .max(FRAME_MIN_SIZE);
    let offer = connection::Tune {
        channel_max,
        frame_max,
        heartbeat: settings.client_heartbeat.as_secs().min(u16::MAX as u64) as u16,
    };
    send(
        writer,
        &AMQPClass::Connection(connection::AMQPMethod::Tune(offer.clone())),
    )
    .await?;
    let tune_ok = match expect(reader, settings.client_handshake_timeout).await? {
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)) => tune_ok,
        _ => return Err(command_invalid("connection.tune-ok")),
    };
    // The client may lower what tether offered, never raise it.
    let client_frame_max = match tune_ok.frame_max {
        0 => frame_max,
        max => max.clamp(FRAME_MIN_SIZE, frame_max),
    };
    reader.set_max_frame_size(client_frame_max);
    writer.set_max_frame_size(client_frame_max);
    let client_heartbeat =
        (tune_ok.heartbeat > 0).then(|| Duration::from_secs(tune_ok.heartbeat as u64));

    Ok(client_heartbeat)
}

/// Connects to a live node, retrying until `deadline`; with none there, says why.
async fn connect_any(
    context: &Context,
    deadline: Instant,
) -> Result<(Upstream, connection::Start), Unavailable> {
    let started = Instant::now();
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let attempt = tokio::time::timeout(
            context.listener.session.upstream_handshake_timeout,
            Upstream::connect(&context.listener, None),
        )
        .await;
        let why = match attempt {
            Ok(Ok(connected)) => return Ok(connected),
            Ok(Err(Failure::Broken(why))) => why,
            Ok(Err(_)) => "unexpected answer".to_owned(),
            Err(_) => "no connection.start in time".to_owned(),
        };
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(parent: &context.span, last = %why, "no node took the session; closing the client connection");
            return Err(Unavailable {
                waited: now - started,
                last: why,
            });
        }
        tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
    }
}

/// No node took the session for `waited`; `last` is why the last attempt failed.
struct Unavailable {
    waited: Duration,
    last: String,
}

/// The connection.close 320 a client gets when no node took its session, as a failover that
/// gives up sends it.
fn unavailable(why: Unavailable) -> Step {
    let text = super::upstream::no_node_available(why.waited, &why.last);
    Step::Close(Frame::method(
        0,
        method::encode(&connection_close(CONNECTION_FORCED, &text)),
    ))
}

/// tether's own connection.start, for a client that must hear why no node took it: the
/// mechanisms every broker tether fronts offers.
fn tethers_start() -> AMQPClass {
    let mut properties = FieldTable::default();
    properties.insert("product".into(), AMQPValue::LongString("tether".into()));
    properties.insert(
        "version".into(),
        AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()),
    );
    AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: properties,
        mechanisms: "PLAIN AMQPLAIN".into(),
        locales: "en_US".into(),
    }))
}

fn note_failure(context: &Context, upstream: &Upstream, failure: &Failure) {
    if let Failure::Broken(why) = failure {
        context.listener.cluster.node_failed(
            upstream.node(),
            context.listener.config.endpoint(),
            Cause::Handshake,
            &format!("handshake failed: {why}"),
        );
    }
}

fn refused(close: connection::Close) -> Step {
    Step::Close(Frame::method(
        0,
        method::encode(&AMQPClass::Connection(connection::AMQPMethod::Close(close))),
    ))
}

fn command_invalid(expected: &str) -> Step {
    Step::Close(Frame::method(
        0,
        method::encode(&AMQPClass::Connection(connection::AMQPMethod::Close(
            connection::Close {
                reply_code: 503,
                reply_text: format!("COMMAND_INVALID - expected {expected}").into(),
                class_id: 0,
                method_id: 0,
            },
        ))),
    ))
}

async fn send(writer: &mut FrameWriter, method: &AMQPClass) -> Result<(), Step> {
    writer.queue(&Frame::method(0, method::encode(method)));
    writer.flush().await.map_err(|_| Step::Drop)
}

/// The client's next method on channel 0, within `limit`. Heart-beats are skipped, and do not
/// extend the limit: a client that only heart-beats would otherwise hold a node connection open
/// with a handshake it never finishes.
async fn expect(reader: &mut FrameReader, limit: Duration) -> Result<AMQPClass, Step> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let frame = match tokio::time::timeout_at(deadline, reader.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => {
                return Err(Step::Close(Frame::method(
                    0,
                    method::encode(&AMQPClass::Connection(connection::AMQPMethod::Close(
                        connection::Close {
                            reply_code: 501,
                            reply_text: format!("FRAME_ERROR - {e}").into(),
                            class_id: 0,
                            method_id: 0,
                        },
                    ))),
                )));
            }
            Ok(_) => return Err(Step::Drop),
            Err(_) => {
                crate::budget::reached("client_handshake_timeout");
                return Err(Step::Drop);
            }
        };
        match (frame.kind, frame.channel) {
            (FrameType::Heartbeat, _) => continue,
            (FrameType::Method, 0) => {
                return method::decode(&frame.payload).map_err(|e| {
                    Step::Close(Frame::method(
                        0,
                        method::encode(&AMQPClass::Connection(connection::AMQPMethod::Close(
                            connection::Close {
                                reply_code: 502,
                                reply_text: format!("SYNTAX_ERROR - {e}").into(),
                                class_id: 0,
                                method_id: 0,
                            },
                        ))),
                    ))
                });
            }
            _ => return Err(command_invalid("a connection method on channel 0")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn heart_beats_do_not_extend_the_wait_for_a_method() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (peer, accepted) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let (read, _write) = Stream::Plain(accepted.unwrap().0).into_split();
        let mut reader = FrameReader::new(read, FRAME_MIN_SIZE);
        let mut peer = peer.unwrap();
        // A heart-beat every 50 ms for 5 s, and never a method.
        let beating = tokio::spawn(async move {
            for _ in 0..100 {
                if peer.write_all(&[8, 0, 0, 0, 0, 0, 0, 0xCE]).await.is_err() {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            true
        });
        let outcome = expect(&mut reader, Duration::from_millis(300)).await;
        assert!(matches!(outcome, Err(Step::Drop)));
        // Given up on while the heart-beats still came (they go on for 5 s, far beyond the
        // 300 ms limit on any machine): they did not keep the handshake open.
        assert!(!beating.is_finished());
        beating.abort();
    }
}
