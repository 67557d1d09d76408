//! Handing an AMQP session to a new tether process (see [`crate::takeover`]), and taking one.
//!
//! The safe point: nothing is being set up (no failover, move or liveness question under
//! way) and no message is half through tether. Frames are whole on both legs there, so the
//! state is exactly what [`SessionState`] holds, plus the bytes each leg has read but not
//! decoded and the bytes queued but not written, which cross as they are.
//!
//! With a node connection of its own over plain TCP, both sockets cross and the broker sees
//! nothing. Otherwise (a TLS node leg, a share of a multiplexed connection) the client socket
//! crosses and the new process replays the session on a node, as a failover does; the old
//! process lets go of its node link once the new one runs the session.

use super::Session;
use super::leg::{FrameReader, FrameWriter};
use super::link::{NodeReader, NodeWriter};
use super::liveness::Liveness;
use super::serial::wire;
use super::state::{Out, SessionState, StateLimits};
use super::upstream::{NodeTune, Upstream};
use crate::session::Context;
use crate::session::failover::{Destination, End, FailoverReason};
use crate::session::handover::{Legs, Turn, legs};
use crate::session::roaming::Roaming;
use crate::takeover::serial::{Blob, opt_millis};
use crate::takeover::{Handed, port};
use amq_protocol::protocol::connection;
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;
use std::time::Duration;
use tokio::time::Instant;

/// An AMQP session as it crosses.
/// (Written from a borrow of the state, read into an owned one.)
#[derive(Serialize, Deserialize)]
pub struct Image<S = SessionState> {
    #[serde(with = "wire")]
    start_ok: connection::StartOk,
    #[serde(with = "wire")]
    open: connection::Open,
    #[serde(with = "opt_millis")]
    client_heartbeat: Option<Duration>,
    client_frame_max: u32,
    /// Read from the client, not yet a frame.
    client_unread: Blob,
    /// Queued for the client, not yet written.
    client_unsent: Blob,
    state: S,
    /// The node leg, when its socket crosses too.
    node: Option<NodeImage>,
    /// Its node link was a share of a multiplexed connection: the replay takes a share again.
    #[serde(default)]
    shared: bool,
    /// The client was sent tether's own connection.blocked: the new process unblocks it.
    #[serde(default)]
    told_blocked: bool,
}

#[derive(Serialize, Deserialize)]
struct NodeImage {
    name: String,
    channel_max: u16,
    frame_max: u32,
    #[serde(with = "opt_millis")]
    heartbeat: Option<Duration>,
    unread: Blob,
    unsent: Blob,
}

/// Why a session is not at its safe point, or cannot be handed over at all.
enum NotNow {
    /// Not yet: something is under way.
    Wait,
    /// Not in this takeover (it stays in the old process until its client leaves or the grace
    /// ends).
    Never(&'static str),
}

impl Session {
    /// While a takeover asks for the session: hands it over once it is at its safe point.
    /// Returns [`End::HandedOver`] once the new process runs it. A session that prepared its
    /// node leg for a replay elsewhere and is not handed over after all is set up again here.
    pub(super) async fn advance_handover(&mut self) -> Option<End> {
        match self.handing.turn() {
            Turn::HandOver => self.hand_over().await,
            Turn::Rejoin => {
                self.rejoin();
                None
            }
            Turn::Nothing => None,
        }
    }

    async fn hand_over(&mut self) -> Option<End> {
        match self.safe_point() {
            Ok(()) => {}
            Err(NotNow::Wait) => return None,
            Err(NotNow::Never(why)) => {
                tracing::debug!(parent: self.roaming.span(), why, "not handed over");
                self.decline();
                return None;
            }
        }
        if !self.node_crosses() {
            // Replayed on a node by the new process: what the node would send to no-ack
            // consumers after this process lets go of it would be lost, so they are cancelled
            // first (and consumed again by the replay).
            if self.handing.prepare() {
                self.state.cancel_no_ack_consumers(&mut self.out);
                self.apply();
            }
            if !self.state.own_requests_answered() {
                return None;
            }
        }
        let (image, fds, handed) = match self.image() {
            Ok(image) => image,
            Err(e) => {
                tracing::warn!(parent: self.roaming.span(), error = %e, "cannot hand the session over");
                self.decline();
                return None;
            }
        };
        let name = self.listener.config.name.clone();
        if !port().offer(name, handed, image, fds).await {
            // The new process did not take it: the session carries on here.
            self.decline();
            return None;
        }
        if handed == Handed::ClientLeg
            && let Some(node) = self.node.take()
        {
            self.let_go(node, "tether: the session moved to a new tether process");
        }
        Some(End::HandedOver)
    }

    fn decline(&mut self) {
        if self.handing.decline() {
            self.rejoin();
        }
    }

    /// The session cancelled consumers for a takeover that did not take it: it is set up
    /// again on a node (the balancer's choice), as after a planned move.
    fn rejoin(&mut self) {
        let Some(node) = self.node.take() else { return };
        self.roaming.left(node.node(), FailoverReason::Rebalance);
        self.let_go(
            node,
            "tether: setting the session up again after a takeover",
        );
        self.leave_node(Destination::default());
    }

    /// Whether the node leg's socket can cross: a connection of the session's own, over
    /// plain TCP.
    fn node_crosses(&self) -> bool {
        matches!(
            &self.node,
            Some(Upstream { reader: NodeReader::Own(reader), .. })
                if reader.half().plain_fd().is_some()
        )
    }

    fn safe_point(&self) -> Result<(), NotNow> {
        if self.client_reader.half().plain_fd().is_none() {
            return Err(NotNow::Never("its client connects over TLS"));
        }
        if !self.client_open || self.state.client_closing() {
            return Err(NotNow::Never("its client is leaving"));
        }
        let asking = self.liveness.as_ref().is_some_and(Liveness::asking);
        if self.node.is_none()
            || self.establishing.is_some()
            || self.roaming.is_moving()
            || asking
            || self.state.mid_message()
        {
            return Err(NotNow::Wait);
        }
        Ok(())
    }

    fn image(&self) -> std::io::Result<(serde_json::Value, Vec<OwnedFd>, Handed)> {
        let client_fd = self
            .client_reader
            .half()
            .plain_fd()
            .ok_or_else(|| std::io::Error::other("TLS client leg"))??;
        let mut fds = vec![client_fd];
        let node = match &self.node {
            Some(Upstream {
                reader: NodeReader::Own(reader),
                writer: NodeWriter::Own(writer),
                tune,
                lease,
                ..
            }) => match reader.half().plain_fd() {
                Some(fd) => {
                    fds.push(fd?);
                    Some(NodeImage {
                        name: lease.node().name.clone(),
                        channel_max: tune.channel_max,
                        frame_max: tune.frame_max,
                        heartbeat: tune.heartbeat,
                        unread: Blob(reader.buffered().to_vec()),
                        unsent: Blob(writer.unsent()),
                    })
                }
                None => None,
            },
            _ => None,
        };
        let handed = match node {
            Some(_) => Handed::BothLegs,
            None => Handed::ClientLeg,
        };
        let image = Image {
            start_ok: self.start_ok.clone(),
            open: self.open.clone(),
            client_heartbeat: self.client_heartbeat,
            client_frame_max: self.client_reader.max_frame_size(),
            client_unread: Blob(self.client_reader.buffered().to_vec()),
            client_unsent: Blob(self.client_writer.unsent()),
            // Written from a borrow: if the new process does not take the session, nothing
            // here changed.
            state: &self.state,
            node,
            shared: self.shares,
            told_blocked: self.blocking.told(),
        };
        let value = serde_json::to_value(&image).map_err(std::io::Error::other)?;
        Ok((value, fds, handed))
    }
}

/// Runs a session another process handed over. Checked whole before anything runs: an error
/// means the session was not taken (the old process carries on with it).
pub fn resume(
    context: Context,
    image: serde_json::Value,
    fds: Vec<OwnedFd>,
) -> Result<impl Future<Output = ()> + Send + use<>, String> {
    let image: Image = serde_json::from_value(image).map_err(|e| format!("unreadable: {e}"))?;
    let listener = context.listener.clone();
    let node_name = image.node.as_ref().map(|n| n.name.as_str());
    let Legs { client, node } = legs(&listener, node_name, fds)?;
    let client = crate::tls::adopt(client).map_err(|e| e.to_string())?;
    let (read, write) = client.into_split();
    let mut client_reader =
        FrameReader::with_buffer(read, image.client_frame_max, &image.client_unread.0);
    client_reader.last_read = Instant::now();
    let mut client_writer = FrameWriter::new(write, image.client_frame_max);
    client_writer.queue_raw(&image.client_unsent.0);
    let upstream = match node {
        Some((found, fd)) => {
            let info = image.node.as_ref().expect("matched above");
            let stream = crate::tls::adopt(fd).map_err(|e| e.to_string())?;
            let (read, write) = stream.into_split();
            let reader = FrameReader::with_buffer(read, info.frame_max, &info.unread.0);
            let mut writer = FrameWriter::new(write, info.frame_max);
            writer.queue_raw(&info.unsent.0);
            Some(Upstream {
                reader: NodeReader::Own(reader),
                writer: NodeWriter::Own(writer),
                lease: found.lease(),
                tune: NodeTune {
                    channel_max: info.channel_max,
                    frame_max: info.frame_max,
                    heartbeat: info.heartbeat,
                },
                born: Instant::now(),
            })
        }
        None => None,
    };
    let limits = StateLimits {
        max_message_size: listener.session.max_message_size,
        failover_timeout: listener.session.failover_timeout,
        max_held: listener.session.max_unconfirmed,
        max_held_bytes: listener.session.max_unconfirmed_bytes,
    };
    let mut state = image.state;
    state.adopted(limits, context.span.clone());
    let roaming = Roaming::new(listener.clone(), context.span.clone());
    roaming.on(upstream.as_ref().map(|u| u.node().name.as_str()));
    let blocking = super::blocking::Blocking::new(&image.start_ok, image.told_blocked);
    let mut session = Session {
        liveness: upstream.as_ref().and_then(Upstream::liveness),
        node_held: Instant::now(),
        shares: image.shared,
        listener,
        client_reader,
        client_writer,
        client_heartbeat: image.client_heartbeat,
        client_open: true,
        start_ok: image.start_ok,
        open: image.open,
        state,
        fingerprint: None,
        out: Out::default(),
        node: upstream,
        establishing: None,
        roaming,
        reported_unconfirmed: 0,
        blocking,
        held: crate::budget::Budget::process().charge(),
        client_held: Instant::now(),
        reported_stale_acks: 0,
        reported_consumers: (0, 0, 0),
        end: None,
        handing: Default::default(),
        alarm: Default::default(),
    };
    Ok(async move {
        if session.node.is_none() {
            // Its node link stayed behind: replayed on a node here, as after a failover.
            session.leave_node(Destination::default());
        }
        let end = session.run(&context).await;
        session.close(end).await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by a tether at format 1 (a pika consumer of a fanout exchange through a
    /// server-named exclusive queue); every later build must read it.
    const FORMAT_1: &str = include_str!("../../../tests/fixtures/takeover/format-1-amqp.json");

    #[test]
    fn a_session_written_at_format_1_reads_back_whole() {
        let image: Image = serde_json::from_str(FORMAT_1).expect("format 1 reads");
        let node = image.node.as_ref().expect("both legs crossed");
        assert_eq!(node.name, "r3");
        assert_eq!(node.heartbeat, Some(Duration::from_secs(1)));
        assert_eq!(image.client_frame_max, 131072);
        let state = &image.state;
        assert_eq!(state.declarations.exchanges[0].exchange.as_str(), "tkfan");
        let queue = &state.declarations.queues[0];
        assert!(queue.server_named() && queue.declare.exclusive);
        assert!(state.declarations.pins_to_node());
        let channel = &state.channels[&1].state;
        assert_eq!(channel.consumers.len(), 1);
        assert_eq!(channel.consumers[0].queue, queue.name);
        // And it writes back all it read (fields added since come on top, with defaults).
        let again = serde_json::to_value(&image).expect("writes");
        let read: serde_json::Value = serde_json::from_str(FORMAT_1).expect("JSON");
        assert!(crate::takeover::serial::preserves(&again, &read), "{again}");
    }
}
