//! The node leg of an AMQP session: connecting, the handshake (tether is the client here, with
//! the client's recorded credentials), and request/response exchanges for the replay.

use super::confirms::Reusable;
use super::leg::{FrameReader, FrameWriter};
use super::link::{NodeReader, NodeWriter};
use super::state::connection_close;
use crate::cluster::ejection::Cause;
use crate::cluster::node::{Node, SessionLease};
use crate::listener::Listener;
use crate::proto::amqp::method;
use crate::proto::amqp::{FRAME_MIN_SIZE, Frame, FrameType, PROTOCOL_HEADER};
use crate::session::failover::FINAL_FLUSH;
use crate::session::failover::FailoverReason;
use amq_protocol::protocol::{AMQPClass, channel, connection};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The AMQP reply code a broker closes connections with when it shuts down.
pub const CONNECTION_FORCED: u16 = 320;
/// The text of the connection.close 320 a client gets when no node took its session for
/// `waited`: at its first connect, and when a failover gives up. `last` says why the last
/// attempt failed.
pub fn no_node_available(waited: Duration, last: &str) -> String {
    format!(
        "CONNECTION_FORCED - tether: no broker node available for {}s (last: {last})",
        waited.as_secs()
    )
}

/// The AMQP reply code for a fault inside the broker. RabbitMQ closes a connection with it
/// when one of its channel processes crashes — seen here on a node whose quorum-queue leader
/// had just died — so nothing the client did causes it.
pub const INTERNAL_ERROR: u16 = 541;

/// The failover reason when a connection.close from a node is the node's own trouble (it is
/// going away, or failed inside); `None` when it is the client's doing, to be passed on.
pub fn node_fault(close: &connection::Close) -> Option<FailoverReason> {
    match close.reply_code {
        // RabbitMQ's text for a stopping broker: "broker forced connection closure with
        // reason 'shutdown'"; an operator's close_connection gives the operator's reason.
        CONNECTION_FORCED if close.reply_text.as_str().contains("shutdown") => {
            Some(FailoverReason::NodeShutdown)
        }
        CONNECTION_FORCED => Some(FailoverReason::Forced),
        INTERNAL_ERROR => Some(FailoverReason::NodeError),
        _ => None,
    }
}

/// Why talking to a node did not work out.
#[derive(Debug)]
pub enum Failure {
    /// The node refused the client's credentials or virtual host: the client's doing, passed
    /// on to it as the node sent it. Not a node failure.
    Refused(connection::Close),
    /// A channel the replay used was closed with this error.
    ChannelClosed(u16, channel::Close),
    /// The node failed: closed, reset, silent, shutting down, or spoke nonsense.
    Broken(String),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Broken(e.to_string())
    }
}

/// What the node and tether agreed for the node leg.
#[derive(Clone, Copy, Debug)]
pub struct NodeTune {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: Option<Duration>,
}

pub struct Upstream {
    pub reader: NodeReader,
    pub writer: NodeWriter,
    pub lease: SessionLease,
    pub tune: NodeTune,
    /// When the connection was made (a pooled one outlives its sessions).
    pub born: Instant,
}

/// A node connection between sessions, kept warm by the pool: an [`Upstream`] without its
/// session lease (an idle connection is no session of its node).
pub struct Warm {
    pub reader: FrameReader,
    pub writer: FrameWriter,
    pub tune: NodeTune,
    pub born: Instant,
    /// Channels left open and clean, for the next session to open without asking the node.
    pub channels: Vec<(u16, Reusable)>,
    /// The node sent connection.close while it was idle.
    pub node_closing: bool,
}

impl Warm {
    /// The connection becomes a session's again, with the channels it keeps open.
    pub fn into_upstream(self, node: &Arc<Node>) -> (Upstream, Vec<(u16, Reusable)>) {
        let upstream = Upstream {
            reader: NodeReader::Own(self.reader),
            writer: NodeWriter::Own(self.writer),
            lease: node.lease(),
            tune: self.tune,
            born: self.born,
        };
        (upstream, self.channels)
    }
}

/// Closes a node connection that works: connection.close, then whatever the node still sends
/// read (and dropped) until its close-ok, each within [`FINAL_FLUSH`].
pub async fn goodbye(reader: &mut FrameReader, writer: &mut FrameWriter, why: &str) {
    writer.queue(&Frame::method(
        0,
        method::encode(&connection_close(200, why)),
    ));
    let _ = tokio::time::timeout(FINAL_FLUSH, writer.flush()).await;
    let _ = tokio::time::timeout(FINAL_FLUSH, async {
        while let Some(Ok(_)) = reader.next().await {}
    })
    .await;
}

impl Upstream {
    pub fn node(&self) -> &Arc<Node> {
        self.lease.node()
    }

    /// What watches a connection of the session's own for a hung node (a shared connection
    /// watches its node itself).
    pub fn liveness(&self) -> Option<super::liveness::Liveness> {
        match self.is_shared() {
            true => None,
            false => super::liveness::Liveness::new(self.tune.heartbeat, self.tune.channel_max),
        }
    }

    /// Whether the link is a share of a multiplexed connection.
    pub fn is_shared(&self) -> bool {
        matches!(self.writer, NodeWriter::Shared(_))
    }

    /// The session is done with a node connection that works, for `why`: a connection of its
    /// own is closed in the background (the node answers close-ok, and nothing it sends now
    /// matters: its unacked deliveries are requeued); a shared link is left, its channels
    /// closed and `queues` (the session's exclusive and server-named ones) deleted.
    pub fn let_go(self, queues: Vec<String>, why: &'static str) {
        match (self.reader, self.writer) {
            (NodeReader::Own(mut reader), NodeWriter::Own(mut writer)) => {
                tokio::spawn(async move { goodbye(&mut reader, &mut writer, why).await });
            }
            (_, NodeWriter::Shared(outbox)) => outbox.leave(queues),
            _ => {}
        }
    }

    /// The connection goes to the pool: its session lease ends. `None` for a shared link,
    /// which is never pooled.
    pub fn into_warm(self) -> Option<(Warm, Arc<Node>)> {
        let node = self.lease.node().clone();
        let (NodeReader::Own(reader), NodeWriter::Own(writer)) = (self.reader, self.writer) else {
            return None;
        };
        let warm = Warm {
            reader,
            writer,
            tune: self.tune,
            born: self.born,
            channels: Vec::new(),
            node_closing: false,
        };
        Some((warm, node))
    }

    /// Connects to a live node (`preferred`, if it is one) on the listener's endpoint and
    /// reads its connection.start, within `upstream_handshake_timeout`: a hung node's kernel
    /// still accepts the connection, and nothing more comes. Such a node is marked failed
    /// (at once, or checked at once when passive ejections are capped), so that the next try
    /// goes elsewhere.
    pub async fn connect(
        listener: &Listener,
        preferred: Option<&str>,
    ) -> Result<(Upstream, connection::Start), Failure> {
        let connected = (listener.cluster)
            .connect_preferring(listener.config.endpoint(), preferred)
            .await
            .map_err(|e| Failure::Broken(e.to_string()))?;
        let (read, write) = connected.stream.into_split();
        let mut writer = FrameWriter::new(write, FRAME_MIN_SIZE);
        writer.queue_raw(&PROTOCOL_HEADER);
        let mut upstream = Upstream {
            reader: NodeReader::Own(FrameReader::new(read, FRAME_MIN_SIZE)),
            writer: NodeWriter::Own(writer),
            lease: connected.lease,
            born: Instant::now(),
            tune: NodeTune {
                channel_max: 0,
                frame_max: FRAME_MIN_SIZE,
                heartbeat: None,
            },
        };
        upstream.writer.flush().await?;
        let limit = listener.session.upstream_handshake_timeout;
        let Ok(first) = tokio::time::timeout(limit, upstream.next_method()).await else {
            let why = format!(
                "no connection.start within {}",
                humantime::format_duration(limit)
            );
            let endpoint = listener.config.endpoint();
            (listener.cluster).node_failed(upstream.node(), endpoint, Cause::Handshake, &why);
            return Err(Failure::Broken(format!("{}: {why}", upstream.node().name)));
        };
        match first? {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(start))) => {
                Ok((upstream, start))
            }
            (channel, other) => Err(Failure::Broken(format!(
                "{} on channel {channel} instead of connection.start",
                describe(&other)
            ))),
        }
    }

    /// Sends the client's start-ok and reads the node's tune.
    pub async fn login(
        &mut self,
        start_ok: &connection::StartOk,
    ) -> Result<connection::Tune, Failure> {
        self.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok.clone())),
        );
        self.writer.flush().await?;
        match self.next_method().await? {
            (0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune))) => Ok(tune),
            (0, AMQPClass::Connection(connection::AMQPMethod::Secure(_))) => Err(Failure::Broken(
                "the node asked a SASL challenge; tether relays PLAIN and AMQPLAIN only".into(),
            )),
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
                Err(self.closed_by_node(close).await)
            }
            (channel, other) => Err(Failure::Broken(format!(
                "{} on channel {channel} instead of connection.tune",
                describe(&other)
            ))),
        }
    }

    /// The whole login of a connected node connection with what the client said: start-ok,
    /// tune, tune-ok and connection.open, up to its open-ok.
    pub async fn log_in(
        &mut self,
        start_ok: &connection::StartOk,
        open: &connection::Open,
        heartbeat: Duration,
    ) -> Result<(), Failure> {
        let tune = self.login(start_ok).await?;
        self.open(&tune, heartbeat, open).await
    }

    /// Sends tune-ok and the client's connection.open; reads open-ok.
    pub async fn open(
        &mut self,
        tune: &connection::Tune,
        heartbeat: Duration,
        open: &connection::Open,
    ) -> Result<(), Failure> {
        // The node's limits as they are, and tether's own heart-beat: tight, so that a hung node
        // is found fast.
        let heartbeat_s = heartbeat.as_secs().clamp(1, u16::MAX as u64) as u16;
        let heartbeat_s = if tune.heartbeat == 0 {
            heartbeat_s
        } else {
            heartbeat_s.min(tune.heartbeat)
        };
        let frame_max = if tune.frame_max == 0 {
            131_072
        } else {
            tune.frame_max
        };
        let tune_ok = connection::TuneOk {
            channel_max: tune.channel_max,
            frame_max,
            heartbeat: heartbeat_s,
        };
        self.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
        );
        self.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::Open(open.clone())),
        );
        self.writer.flush().await?;
        self.tune = NodeTune {
            channel_max: tune.channel_max,
            frame_max,
            heartbeat: Some(Duration::from_secs(heartbeat_s as u64)),
        };
        self.reader.set_max_frame_size(frame_max);
        self.writer.set_max_frame_size(frame_max);
        match self.next_method().await? {
            (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => Ok(()),
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
                Err(self.closed_by_node(close).await)
            }
            (channel, other) => Err(Failure::Broken(format!(
                "{} on channel {channel} instead of connection.open-ok",
                describe(&other)
            ))),
        }
    }

    /// A connection.close from the node during the handshake: a forced close or an internal
    /// error is a node failure, anything else the client's doing.
    async fn closed_by_node(&mut self, close: connection::Close) -> Failure {
        self.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
        let _ = self.writer.flush().await;
        if node_fault(&close).is_some() {
            Failure::Broken(format!("closed: {} {}", close.reply_code, close.reply_text))
        } else {
            Failure::Refused(close)
        }
    }

    pub fn send(&mut self, channel: u16, method: &AMQPClass) {
        self.writer
            .queue(&Frame::method(channel, method::encode(method)));
    }

    /// Closes channels a pooled connection kept open, for a session that sets up its own.
    pub async fn close_channels(&mut self, ids: &[u16]) -> Result<(), Failure> {
        for &id in ids {
            let close = AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 200,
                reply_text: "".into(),
                class_id: 0,
                method_id: 0,
            }));
            self.request(id, &close).await?;
        }
        Ok(())
    }

    /// Sends a method and waits for the node's answer on the same channel.
    pub async fn request(
        &mut self,
        channel: u16,
        method: &AMQPClass,
    ) -> Result<AMQPClass, Failure> {
        self.send(channel, method);
        self.writer.flush().await?;
        loop {
            let (on, answer) = self.next_method().await?;
            match answer {
                AMQPClass::Channel(channel::AMQPMethod::Close(close)) if on == channel => {
                    self.send(
                        channel,
                        &AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    self.writer.flush().await?;
                    return Err(Failure::ChannelClosed(channel, close));
                }
                AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
                    return Err(Failure::Broken(format!(
                        "the node closed the connection: {} {}",
                        close.reply_code, close.reply_text
                    )));
                }
                // The replay asks nothing that makes a node send anything else first; a stray
                // notice (connection.blocked) is not worth failing for.
                answer if on == channel => return Ok(answer),
                _ => continue,
            }
        }
    }

    /// The next method frame, skipping heart-beats.
    async fn next_method(&mut self) -> Result<(u16, AMQPClass), Failure> {
        loop {
            let frame = match self.reader.next().await {
                None => return Err(Failure::Broken("the node closed the connection".into())),
                Some(Err(e)) => return Err(Failure::Broken(e.to_string())),
                Some(Ok(frame)) => frame,
            };
            match frame.kind {
                FrameType::Heartbeat => continue,
                FrameType::Method => {
                    let decoded = method::decode(&frame.payload)
                        .map_err(|e| Failure::Broken(format!("undecodable method: {e}")))?;
                    return Ok((frame.channel, decoded));
                }
                other => {
                    return Err(Failure::Broken(format!(
                        "a {other:?} frame where a method was due"
                    )));
                }
            }
        }
    }
}

/// A method's name for messages, without its fields (which may hold credentials).
pub fn describe(method: &AMQPClass) -> String {
    method_name(method.get_amqp_class_id(), method.get_amqp_method_id())
}

/// `connection.close` for (10, 50), and the like.
pub fn method_name(class: u16, method: u16) -> String {
    let class_name = match class {
        10 => "connection",
        20 => "channel",
        40 => "exchange",
        50 => "queue",
        60 => "basic",
        85 => "confirm",
        90 => "tx",
        _ => return format!("method {class}.{method}"),
    };
    format!("{class_name}.{method}")
}
