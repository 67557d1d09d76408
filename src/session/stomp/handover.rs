//! Handing a STOMP session to a new tether process (see [`crate::takeover`]), and taking one.
//!
//! The safe point: the session runs on a node (not connecting, failing over or moving), no
//! liveness question is out, and neither leg has a frame half decoded. What crosses is the
//! replay log, both legs' heart-beat settings and the bytes each leg read but did not decode
//! or queued but did not write. With a node leg over plain TCP both sockets cross and the
//! broker sees nothing; over TLS the client socket crosses and the new process replays the
//! session on a node, as a failover does.

use super::heartbeat::Beats;
use super::leg::{Reader, Writer};
use super::liveness::Liveness;
use super::replay::ReplayLog;
use super::{NodeSide, Session};
use crate::proto::stomp::{Command, Frame, Limits, Packed, Version};
use crate::session::Context;
use crate::session::failover::{Destination, End, FINAL_FLUSH, FailoverReason};
use crate::session::handover::{Legs, Turn, legs};
use crate::session::roaming::Roaming;
use crate::takeover::serial::Blob;
use crate::takeover::{Handed, port};
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;
use tokio::time::Instant;

/// A STOMP session as it crosses (written from a borrow of the log, read into an owned one).
#[derive(Serialize, Deserialize)]
pub struct Image<L = ReplayLog> {
    log: L,
    client_beats: Beats,
    client_offer: (u64, u64),
    /// The client's CONNECT as sent upstream.
    connect: Frame,
    version: Version,
    client_unread: Blob,
    client_unsent: Blob,
    node: Option<NodeImage>,
}

#[derive(Serialize, Deserialize)]
struct NodeImage {
    name: String,
    beats: Beats,
    connected: Frame,
    version: Version,
    unread: Blob,
    unsent: Blob,
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
        if self.client_reader.half().plain_fd().is_none() || !self.client_open {
            // A TLS client leg cannot cross; a client that is leaving ends here.
            self.decline();
            return None;
        }
        let asking =
            (self.node.as_ref()).is_some_and(|n| n.liveness.as_ref().is_some_and(Liveness::asking));
        let between_frames = self.client_reader.between_frames()
            && self
                .node
                .as_ref()
                .is_some_and(|n| n.reader.between_frames());
        if self.node.is_none()
            || self.establishing.is_some()
            || self.roaming.is_moving()
            || asking
            || !between_frames
        {
            return None; // not yet
        }
        let crosses = (self.node.as_ref()).is_some_and(|n| n.reader.half().plain_fd().is_some());
        if !crosses {
            // Replayed on a node by the new process: what the node would send to `auto`-ack
            // subscriptions after this process lets go of it would be lost, so they are
            // unsubscribed first (and subscribed again by the replay).
            if self.handing.prepare() {
                for frame in self.log.unsubscribe_for_move() {
                    self.send_node(&frame);
                }
            }
            if self.log.unsubscribes_pending() > 0 {
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
            self.decline();
            return None;
        }
        if handed == Handed::ClientLeg
            && let Some(mut node) = self.node.take()
        {
            // Closed in the background, as a planned move leaves its node.
            tokio::spawn(async move {
                let _ = node.writer.queue(&Frame::new(Command::Disconnect));
                let _ = tokio::time::timeout(FINAL_FLUSH, node.writer.flush()).await;
            });
        }
        Some(End::HandedOver)
    }

    fn decline(&mut self) {
        if self.handing.decline() {
            self.rejoin();
        }
    }

    /// The session unsubscribed for a takeover that did not take it: it is set up again on a
    /// node (the balancer's choice), as after a planned move.
    fn rejoin(&mut self) {
        let Some(mut node) = self.node.take() else {
            return;
        };
        self.roaming.left(node.node(), FailoverReason::Rebalance);
        tokio::spawn(async move {
            let _ = node.writer.queue(&Frame::new(Command::Disconnect));
            let _ = tokio::time::timeout(FINAL_FLUSH, node.writer.flush()).await;
        });
        self.leave_node(Destination::default());
    }

    fn image(&self) -> std::io::Result<(serde_json::Value, Vec<OwnedFd>, Handed)> {
        let no_fd = || std::io::Error::other("TLS client leg");
        let client_fd = self.client_reader.half().plain_fd().ok_or_else(no_fd)??;
        let mut fds = vec![client_fd];
        let version = self
            .version
            .ok_or_else(|| std::io::Error::other("no version yet"))?;
        let node = match &self.node {
            Some(node) => match node.reader.half().plain_fd() {
                Some(fd) => {
                    fds.push(fd?);
                    Some(NodeImage {
                        name: node.node().name.clone(),
                        beats: node.beats,
                        connected: node.connected.unpack(),
                        version: node.version,
                        unread: Blob(node.reader.buffered().to_vec()),
                        unsent: Blob(node.writer.unsent().to_vec()),
                    })
                }
                None => None,
            },
            None => None,
        };
        let handed = match node {
            Some(_) => Handed::BothLegs,
            None => Handed::ClientLeg,
        };
        let image = Image {
            log: &self.log,
            client_beats: self.client_beats,
            client_offer: self.client_offer,
            connect: self.connect.unpack(),
            version,
            client_unread: Blob(self.client_reader.buffered().to_vec()),
            client_unsent: Blob(self.client_writer.unsent().to_vec()),
            node,
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
    let settings = &listener.session;
    let limits = Limits {
        max_frame_size: settings.max_frame_size,
        max_headers: settings.max_headers,
        max_header_line: settings.max_header_line,
    };
    let node_name = image.node.as_ref().map(|n| n.name.as_str());
    let Legs { client, node } = legs(&listener, node_name, fds)?;
    let (read, write) = crate::tls::adopt(client)
        .map_err(|e| e.to_string())?
        .into_split();
    let client_reader = Reader::with_buffer(read, image.version, limits, &image.client_unread.0);
    let mut client_writer = Writer::new(write, image.version);
    client_writer.queue_raw(&image.client_unsent.0);
    let node = match node {
        Some((found, fd)) => {
            let info = image.node.as_ref().expect("matched above");
            let (read, write) = crate::tls::adopt(fd)
                .map_err(|e| e.to_string())?
                .into_split();
            let reader = Reader::with_buffer(read, info.version, limits, &info.unread.0);
            let mut writer = Writer::new(write, info.version);
            writer.queue_raw(&info.unsent.0);
            Some(NodeSide {
                liveness: Liveness::new(info.beats.expect_every, settings.upstream_heartbeat),
                reader,
                writer,
                lease: found.lease(),
                beats: info.beats,
                connected: Packed::new(&info.connected),
                version: info.version,
                born: Instant::now(),
            })
        }
        None => None,
    };
    let roaming = Roaming::new(listener.clone(), context.span.clone());
    roaming.on(node.as_ref().map(|n| n.node().name.as_str()));
    let mut log = image.log;
    log.caps = super::replay::Caps::of(&listener.session);
    let mut session = Session {
        listener: listener.clone(),
        limits,
        log,
        client_reader,
        client_writer,
        client_beats: image.client_beats,
        client_offer: image.client_offer,
        client_open: true,
        connect: Packed::new(&image.connect),
        version: Some(image.version),
        node,
        establishing: None,
        reported_unconfirmed: 0,
        reported_subscriptions: (0, 0),
        held: crate::budget::Budget::process().charge(),
        client_held: Instant::now(),
        end: None,
        roaming,
        fingerprint: None,
        node_held: Instant::now(),
        handing: Default::default(),
        alarm: Default::default(),
    };
    Ok(async move {
        if session.node.is_none() {
            // Its node leg stayed behind: replayed on a node here, as after a failover.
            session.leave_node(Destination::default());
        }
        let end = session.run(&context).await;
        session.close(end).await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by a tether at format 1 (a stomp.py consumer, `client` acks); every later build
    /// must read it.
    const FORMAT_1: &str = include_str!("../../../tests/fixtures/takeover/format-1-stomp.json");

    #[test]
    fn a_session_written_at_format_1_reads_back_whole() {
        let image: Image = serde_json::from_str(FORMAT_1).expect("format 1 reads");
        assert_eq!(image.version, Version::V1_2);
        assert_eq!(image.connect.header("login"), Some("guest"));
        assert_eq!(image.log.subscription_count(), 1);
        assert!(image.node.is_some(), "both legs crossed");
        // And it writes back all it read (fields added since come on top, with defaults).
        let again = serde_json::to_value(&image).expect("writes");
        let read: serde_json::Value = serde_json::from_str(FORMAT_1).expect("JSON");
        assert!(crate::takeover::serial::preserves(&again, &read), "{again}");
    }
}
