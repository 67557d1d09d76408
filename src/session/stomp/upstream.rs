//! Reaching a node for a STOMP session: pick a live node, CONNECT with the client's recorded
//! headers, wait for CONNECTED. Used for the first connection and for every failover; on a
//! node that fails, the next live one is tried until the deadline.

use super::heartbeat::{self, Beats};
use super::leg::{Reader, Writer};
use crate::backoff::Backoff;
use crate::cluster::ejection::Cause;
use crate::cluster::node::{Node, SessionLease};
use crate::config::SessionSettings;
use crate::listener::Listener;
use crate::proto::stomp::{Command, Frame, Incoming, Limits, Version};
use crate::session::failover::Destination;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A session's connection to one node, past CONNECTED.
pub struct NodeLeg {
    pub reader: Reader,
    pub writer: Writer,
    pub lease: SessionLease,
    pub connected: Frame,
    pub version: Version,
    pub beats: Beats,
    /// When the connection was made (a pooled one outlives its sessions).
    pub born: Instant,
}

impl NodeLeg {
    pub fn node(&self) -> &Arc<Node> {
        self.lease.node()
    }
}

#[derive(Debug)]
pub enum EstablishError {
    /// The broker answered CONNECT with ERROR (bad credentials, unknown virtual host): the
    /// client's doing, passed on as it is.
    Refused(Frame),
    /// No node took the session before the deadline.
    GaveUp { waited: Duration, last: String },
}

enum HandshakeError {
    Refused(Frame),
    Failed(String),
}

/// Connects to a live node and completes the STOMP handshake, retrying other nodes until
/// `deadline`. A refusal ends the attempt at once when `refusal_is_final` (the first connect:
/// the client's credentials are wrong); during a failover, credentials that worked before mean
/// the refusing node is not ready, so another is tried.
pub async fn establish(
    listener: Arc<Listener>,
    connect: Frame,
    settings: SessionSettings,
    limits: Limits,
    deadline: Instant,
    refusal_is_final: bool,
    next: Destination,
) -> Result<NodeLeg, EstablishError> {
    next.wait().await;
    let preferred = next.node;
    let cluster = &listener.cluster;
    let endpoint = listener.config.endpoint();
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut last;
    let mut last_refusal = None;
    loop {
        match cluster
            .connect_preferring(endpoint, preferred.as_deref())
            .await
        {
            Ok(upstream) => {
                let node = upstream.node().clone();
                let attempt = handshake(upstream.stream, &connect, limits);
                // Never past the failover's deadline (see the AMQP replay's `establish`).
                let limit = (settings.upstream_handshake_timeout)
                    .min(deadline.saturating_duration_since(Instant::now()));
                match tokio::time::timeout(limit, attempt).await {
                    Ok(Ok((reader, writer, connected, version, beats))) => {
                        return Ok(NodeLeg {
                            reader,
                            writer,
                            lease: upstream.lease,
                            connected,
                            version,
                            beats,
                            born: Instant::now(),
                        });
                    }
                    Ok(Err(HandshakeError::Refused(error))) => {
                        if refusal_is_final {
                            return Err(EstablishError::Refused(error));
                        }
                        last = format!(
                            "{} refused CONNECT: {}",
                            node.name,
                            error.header("message").unwrap_or("ERROR")
                        );
                        cluster.node_failed(&node, endpoint, Cause::Handshake, &last);
                        last_refusal = Some(error);
                    }
                    Ok(Err(HandshakeError::Failed(why))) => {
                        last = format!("{}: {why}", node.name);
                        cluster.node_failed(
                            &node,
                            endpoint,
                            Cause::Handshake,
                            &format!("handshake failed: {why}"),
                        );
                    }
                    Err(_) => {
                        last = format!(
                            "{}: no CONNECTED within {}",
                            node.name,
                            humantime::format_duration(settings.upstream_handshake_timeout)
                        );
                        cluster.node_failed(
                            &node,
                            endpoint,
                            Cause::Handshake,
                            &format!("handshake timed out ({last})"),
                        );
                    }
                }
            }
            Err(e) => last = e.to_string(),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(match last_refusal {
                Some(error) => EstablishError::Refused(error),
                None => EstablishError::GaveUp {
                    waited: now - started,
                    last,
                },
            });
        }
        tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
    }
}

type Handshaken = (Reader, Writer, Frame, Version, Beats);

async fn handshake(
    stream: crate::tls::Stream,
    connect: &Frame,
    limits: Limits,
) -> Result<Handshaken, HandshakeError> {
    let (read, write) = stream.into_split();
    // CONNECT and CONNECTED are never escaped, so any version does until CONNECTED says which.
    let mut writer = Writer::new(write, Version::V1_0);
    let mut reader = Reader::new(read, Version::V1_0, limits);
    writer
        .queue(connect)
        .map_err(|e| HandshakeError::Failed(e.to_string()))?;
    writer
        .flush()
        .await
        .map_err(|e| HandshakeError::Failed(e.to_string()))?;
    let connected = loop {
        match reader.next().await {
            Some(Ok(Incoming::Heartbeat)) => continue,
            Some(Ok(Incoming::Frame(frame))) => match frame.command {
                Command::Connected => break frame,
                Command::Error => return Err(HandshakeError::Refused(frame)),
                other => {
                    return Err(HandshakeError::Failed(format!(
                        "{other} instead of CONNECTED"
                    )));
                }
            },
            Some(Err(e)) => return Err(HandshakeError::Failed(e.to_string())),
            None => {
                return Err(HandshakeError::Failed(
                    "connection closed before CONNECTED".into(),
                ));
            }
        }
    };
    let version = connected
        .header("version")
        .and_then(|v| v.parse().ok())
        .unwrap_or(Version::V1_0);
    reader.set_version(version);
    writer.set_version(version);
    let ours = heartbeat::parse(connect.header("heart-beat"));
    let beats = Beats::as_client(ours, heartbeat::parse(connected.header("heart-beat")));
    Ok((reader, writer, connected, version, beats))
}
