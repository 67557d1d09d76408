//! A STOMP session's start: the client's CONNECT (within `client_handshake_timeout`, refused
//! with an ERROR otherwise), and the session it asks for, its node being connected or a warm
//! connection taken from the pool.

use super::heartbeat::{self, Beats};
use super::leg::{Reader, Writer};
use super::replay::{Caps, ReplayLog};
use super::{Session, pooled, upstream};
use crate::proto::stomp::{Command, Frame, Incoming, Limits, Packed, Version};
use crate::session::Context;
use crate::session::failover::{Destination, FINAL_FLUSH};
use crate::session::io::{Alarm, Connecting};
use crate::session::roaming::Roaming;
use crate::tls::Stream;
use tokio::time::Instant;

/// The client's CONNECT, and the session it asks for (its node being connected, or a warm
/// connection from the pool); `None` when the client was refused or left.
pub(super) async fn start(context: &Context, client: Stream) -> Option<Session> {
    let listener = context.listener.clone();
    let settings = &listener.session;
    let limits = Limits {
        max_frame_size: settings.max_frame_size,
        max_headers: settings.max_headers,
        max_header_line: settings.max_header_line,
    };
    let (read, write) = client.into_split();
    let mut client_reader = Reader::new(read, Version::V1_0, limits);
    let mut client_writer = Writer::new(write, Version::V1_0);

    let first = tokio::time::timeout(settings.client_handshake_timeout, client_reader.next());
    let connect = match first.await {
        Ok(Some(Ok(Incoming::Frame(frame))))
            if matches!(frame.command, Command::Connect | Command::Stomp) =>
        {
            frame
        }
        Ok(Some(Ok(Incoming::Frame(frame)))) => {
            let message = format!("expected CONNECT, got {}", frame.command);
            refuse(&mut client_writer, &message).await;
            return None;
        }
        Ok(Some(Err(e))) => {
            refuse(&mut client_writer, &e.to_string()).await;
            return None;
        }
        Ok(Some(Ok(Incoming::Heartbeat))) => {
            refuse(&mut client_writer, "expected CONNECT, got a heart-beat").await;
            return None;
        }
        Ok(None) => return None,
        Err(_) => {
            crate::budget::reached("client_handshake_timeout");
            refuse(&mut client_writer, "no CONNECT in time").await;
            return None;
        }
    };

    let client_offer = heartbeat::parse(connect.header("heart-beat"));
    // The node is asked to beat twice an interval, so that a quiet node that lives is seldom
    // asked whether it does (see `crate::session::liveness`).
    let ours = settings.upstream_heartbeat.as_millis() as u64;
    let mut upstream_connect = connect;
    upstream_connect
        .headers
        .set("heart-beat", format!("{ours},{}", ours / 2));
    // A warm connection the same login made, if the pool has one; a new one otherwise (where a
    // wrong password gets the broker's ERROR).
    let (fingerprint, warm) = match &listener.stomp_pool {
        Some(pool) => {
            let credentials = pooled::credentials(&upstream_connect);
            let warm = pool.take(&credentials).await;
            (Some(pool.fingerprint(&credentials)), warm)
        }
        None => (None, None),
    };
    let establishing: Option<Connecting<_>> = warm.is_none().then(|| {
        let deadline = Instant::now() + settings.failover_timeout;
        Box::pin(upstream::establish(
            listener.clone(),
            upstream_connect.clone(),
            settings.clone(),
            limits,
            deadline,
            true,
            Destination::default(),
        )) as Connecting<_>
    });
    let mut session = Session {
        listener: listener.clone(),
        limits,
        log: ReplayLog::with_caps(Version::V1_0, Caps::of(settings)),
        client_reader,
        client_writer,
        client_beats: Beats::as_server(client_offer, Beats::server_offer(client_offer)),
        client_offer,
        client_open: true,
        connect: Packed::new(&upstream_connect),
        version: None,
        node: None,
        establishing,
        reported_unconfirmed: 0,
        reported_subscriptions: (0, 0),
        held: crate::budget::Budget::process().charge(),
        client_held: Instant::now(),
        end: None,
        roaming: Roaming::new(listener.clone(), context.span.clone()),
        fingerprint,
        node_held: Instant::now(),
        handing: Default::default(),
        alarm: Alarm::default(),
    };
    if let Some((warm, node)) = warm {
        session.on_established(Ok(warm.into_leg(&node)));
    }
    Some(session)
}

/// Answers a client that did not start properly with an ERROR frame, then closes.
async fn refuse(writer: &mut Writer, message: &str) {
    if writer.queue(&Frame::error(message, "")).is_ok() {
        let _ = tokio::time::timeout(FINAL_FLUSH, writer.flush()).await;
    }
    writer.shutdown().await;
}
