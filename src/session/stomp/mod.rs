//! A STOMP session that survives its node: tether terminates STOMP on both legs, records what
//! the client set up (see [`replay`]), and when the node fails it connects to another live node,
//! replays the session there and carries on. The client sees no error and keeps its connection;
//! tether heart-beats it meanwhile.
//!
//! One task per session, one `select!` over: frames from the client, frames from the node,
//! writes to each (buffered, so that a slow peer holds back only what flows towards it),
//! heart-beat timers, the connect/failover in progress, and shutdown.
//!
//! # Layout
//!
//! - [`replay`]: the replay log: subscriptions, transactions, unconfirmed SENDs.
//! - [`acks`]: deliveries awaiting the client's ack, fresh or stale.
//! - [`upstream`]: connecting to a node and the CONNECT handshake, retried across nodes.
//! - `handshake`: the client's CONNECT and the session it asks for.
//! - [`leg`]: framed reading and buffered writing of one connection.
//! - [`heartbeat`]: heart-beat negotiation, per leg.

pub mod acks;
mod caps;
pub mod handover;
mod handshake;
pub mod heartbeat;
pub mod leg;
pub mod liveness;
pub mod pooled;
pub mod replay;
pub mod upstream;

use crate::cluster::node::Node;
use crate::listener::Listener;
use crate::proto::stomp::{Command, Frame, Incoming, Limits, Packed, StompError, Version};
use crate::session::Context;
use crate::session::failover::{Destination, End, FINAL_FLUSH, FailoverReason, HIGH_WATER};
use crate::session::io::{
    Alarm, Connecting, Deadlines, Leg, LegEvent, Wake, beat, close_client, next_buffered, next_wake,
};
use crate::session::moving::{MoveRequest, Whereabouts};
use crate::session::roaming::Roaming;
use crate::tls::Stream;
use heartbeat::Beats;
use leg::{Reader, Writer};
use liveness::Liveness;
use replay::{ClientAction, Disconnect, ReceiptOutcome, ReplayLog};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use upstream::{EstablishError, NodeLeg};

/// The node side of a session while it is connected.
struct NodeSide {
    reader: Reader,
    writer: Writer,
    lease: crate::cluster::node::SessionLease,
    beats: Beats,
    /// The question out to the node, when it heart-beats.
    liveness: Option<Liveness>,
    /// The node's CONNECTED and the version it settled, for the pool.
    connected: Packed,
    version: Version,
    born: Instant,
}

impl NodeSide {
    fn node(&self) -> &Arc<Node> {
        self.lease.node()
    }
}

struct Session {
    listener: Arc<Listener>,
    limits: Limits,
    log: ReplayLog,
    client_reader: Reader,
    client_writer: Writer,
    client_beats: Beats,
    /// The client's heart-beat header: (can send every, wants every), in ms.
    client_offer: (u64, u64),
    /// False once the client closed or sent DISCONNECT: nothing more is read from it.
    client_open: bool,
    /// The client's CONNECT, as sent upstream (tether's heart-beat, the client's credentials).
    connect: Packed,
    /// The version both legs speak, once the first node settled it.
    version: Option<Version>,
    node: Option<NodeSide>,
    establishing: Option<Connecting<Result<NodeLeg, EstablishError>>>,
    reported_unconfirmed: usize,
    /// [`ReplayLog::subscription_signature`] when the subscriptions were last reported.
    reported_subscriptions: (usize, u64),
    /// Its unconfirmed bytes in the process budget, and the cap holding it back if any.
    held: crate::budget::Held,
    /// When tether last held off reading the client (a cap): the client's silence counts from
    /// then, not from heart-beats tether chose not to read.
    client_held: Instant,
    end: Option<End>,
    /// Failovers and planned moves. During a move `auto`-ack subscriptions are unsubscribed on
    /// the old node and client frames other than ACK/NACK parked until every SEND is
    /// receipted, the UNSUBSCRIBEs answered and the client's acks in.
    roaming: Roaming<Frame>,
    /// What the client logged in with, as the listener's pool knows it: set when the pool may
    /// take the node connection once the session is over.
    fingerprint: Option<crate::pool::Fingerprint>,
    /// When tether last held off reading the node (its client fell behind): the node's silence
    /// counts from then, not from bytes tether chose not to read.
    node_held: Instant,
    /// Where the session stands with a takeover (see [`handover`]).
    handing: crate::session::handover::Handing,
    /// Rings for the session's deadlines (heart-beats, silences).
    alarm: Alarm,
}

pub async fn serve(context: Context, client: Stream) {
    // Each stage boxed: a session's task then holds only the stage it is in, not room for the
    // handshake's and the ending's state for its whole life.
    let Some(mut session) = Box::pin(handshake::start(&context, client)).await else {
        return;
    };
    let end = Box::pin(session.run(&context)).await;
    Box::pin(session.close(end)).await;
}

impl Session {
    fn on_wake(
        &mut self,
        wake: Wake<
            Result<Incoming, StompError>,
            Result<Incoming, StompError>,
            Result<NodeLeg, EstablishError>,
        >,
    ) {
        match wake {
            Wake::Node(event) => self.on_node(event),
            Wake::Client(event) => self.on_client(event),
            Wake::Connected(result) => self.on_established(result),
        }
    }

    /// Acts on the deadlines that have come.
    fn on_deadlines(&mut self, due: Deadlines) -> Option<End> {
        if due.client_silence.is_some() {
            return Some(End::ClientError("the client stopped heart-beating".into()));
        }
        if due.node_silence.is_some() {
            self.start_failover(FailoverReason::Heartbeat, "the node stopped answering");
            return None;
        }
        beat(&mut self.client_writer, due.client_beat);
        if let Some(NodeSide {
            liveness, writer, ..
        }) = &mut self.node
        {
            if due.ask_node.is_some()
                && let Some(liveness) = liveness
            {
                // A BEGIN encodes in every version.
                let _ = writer.queue(&liveness.ask());
                self.listener.metrics.liveness_questions.increment(1);
            }
            beat(writer, due.node_beat);
        }
        None
    }

    async fn run(&mut self, context: &Context) -> End {
        loop {
            self.advance_move();
            let subscriptions = self.log.subscription_signature();
            if subscriptions != self.reported_subscriptions {
                self.reported_subscriptions = subscriptions;
                let host = self.connect.unpack().header("host").map(str::to_owned);
                self.roaming
                    .report_consumed(self.log.consumed(host.as_deref()));
            }
            self.roaming
                .report(subscriptions.0 > 0, !self.log.pins_to_node());
            if let Some(end) = self.end.take() {
                return end;
            }
            if self.handing.active()
                && let Some(end) = self.advance_handover().await
            {
                return end;
            }
            // A client gone with nothing left to deliver is done; so is one that left before
            // its first node was even connected.
            let nothing_to_wait_for = self.establishing.is_none() || self.version.is_none();
            if !self.client_open && self.log.is_settled() && nothing_to_wait_for {
                return match (&self.node, &self.fingerprint) {
                    (Some(_), Some(_)) => End::Released,
                    _ => End::Finished,
                };
            }
            let settings = &self.listener.session;
            let node_pending = self.node.as_ref().map_or(0, |n| n.writer.pending());
            // Not while the client's answers pile up unread (RECEIPTs, ERRORs): a client that
            // sends and never reads would otherwise grow them without bound.
            let capped = self.held.cap(
                self.log.unconfirmed(),
                self.log.unconfirmed_bytes(),
                settings.max_unconfirmed,
                settings.max_unconfirmed_bytes,
            );
            let read_client = self.client_open
                && node_pending < HIGH_WATER
                && self.client_writer.pending() < HIGH_WATER
                && capped.is_none()
                && !self.roaming.parked_full();
            if !read_client {
                self.client_held = Instant::now();
            }
            let read_node = self.client_writer.pending() < HIGH_WATER
                && self.log.unacked() < settings.max_unacked;
            if !read_node {
                self.node_held = Instant::now();
            }
            // The node's silence counts from its last bytes or from when tether last held off
            // reading them, whichever is later.
            let watched = (self.node.as_ref())
                .filter(|_| read_node)
                .and_then(|n| Some((n.liveness.as_ref()?, n.reader.last_read.max(self.node_held))));
            let deadlines = Deadlines {
                client_silence: (self.client_beats.expect_every)
                    .filter(|_| self.client_open)
                    .map(|every| {
                        let quiet = self.client_reader.last_read.max(self.client_held);
                        quiet + heartbeat::silence_limit(every)
                    }),
                node_silence: watched.map(|(liveness, quiet)| liveness.dead_at(quiet)),
                ask_node: watched.and_then(|(liveness, quiet)| liveness.ask_at(quiet)),
                retry: None,
                client_beat: (self.client_beats.send_every)
                    .map(|every| self.client_writer.last_write + every),
                node_beat: (self.node.as_ref())
                    .and_then(|n| n.beats.send_every.map(|every| n.writer.last_write + every)),
                recheck: (self.held.waits_for_others())
                    .then(|| Instant::now() + crate::budget::RECHECK),
            };
            self.alarm.set(&deadlines);
            let mut client = Leg {
                reader: &mut self.client_reader,
                writer: &mut self.client_writer,
                read: read_client,
            };
            let mut node = self.node.as_mut().map(|n| Leg {
                reader: &mut n.reader,
                writer: &mut n.writer,
                read: read_node,
            });
            if let Some(wake) = next_buffered(&mut client, node.as_mut()) {
                self.on_wake(wake);
                continue;
            }

            tokio::select! {
                wake = next_wake(client, node, &mut self.establishing) => self.on_wake(wake),
                _ = self.alarm.ring() => {
                    if let Some(end) = self.on_deadlines(deadlines.due()) {
                        return end;
                    }
                }
                request = self.roaming.next() => {
                    // None: advance_move looks at the clock on the next turn.
                    if let Some(request) = request {
                        self.begin_move(request);
                    }
                }
                _ = self.handing.asked() => {}
                _ = context.close.cancelled() => {
                    self.send_client(&Frame::error("tether is shutting down", ""));
                    return End::Shutdown;
                }
            }
            let keep_node = self.fingerprint.is_some();
            match self.log.due_disconnect(self.node.is_some(), keep_node) {
                Some(Disconnect::ToNode(disconnect)) => self.send_node(&disconnect),
                Some(Disconnect::Answered(receipt)) => {
                    if let Some(receipt) = receipt {
                        self.send_client(&receipt);
                    }
                    self.end = Some(End::Released);
                }
                None => {}
            }
            self.report_unconfirmed();
        }
    }

    fn report_unconfirmed(&mut self) {
        let now = self.log.unconfirmed();
        if now != self.reported_unconfirmed {
            let gauge = &self.listener.metrics.unconfirmed;
            gauge.increment(now as f64 - self.reported_unconfirmed as f64);
            self.reported_unconfirmed = now;
        }
    }

    fn send_client(&mut self, frame: &Frame) {
        if let Err(e) = self.client_writer.queue(frame) {
            tracing::warn!(parent: self.roaming.span(), error = %e, "a frame could not be encoded for the client; dropped");
        }
    }

    /// Queues a frame for the node. A frame the node's version cannot carry is refused to the
    /// client with an ERROR, as a broker would refuse it.
    fn send_node(&mut self, frame: &Frame) {
        let Some(node) = &mut self.node else { return };
        if let Err(e) = node.writer.queue(frame) {
            self.send_client(&Frame::error(
                &format!("cannot relay {}: {e}", frame.command),
                "",
            ));
            self.end = Some(End::ClientError(e.to_string()));
        }
    }

    fn on_client(&mut self, event: LegEvent<Result<Incoming, StompError>>) {
        let frame = match event {
            LegEvent::Read(Some(Ok(Incoming::Frame(frame)))) => frame,
            LegEvent::Read(Some(Ok(Incoming::Heartbeat))) | LegEvent::Wrote(Ok(())) => return,
            LegEvent::Wrote(Err(e)) => {
                self.end = Some(End::ClientError(format!("write to client: {e}")));
                return;
            }
            LegEvent::Read(None) => {
                // The client went away. What it sent is still delivered: the session stays
                // until the node confirmed everything, then ends.
                self.client_open = false;
                self.log.client_gone();
                return;
            }
            LegEvent::Read(Some(Err(e))) => {
                if let Some(cap) = e.cap() {
                    crate::budget::reached(cap);
                }
                return self.refuse_client(&e.to_string());
            }
        };
        if self.roaming.is_moving() && !matches!(frame.command, Command::Ack | Command::Nack) {
            // Goes to the new node once the move is done; acks still go to the old one, whose
            // deliveries they settle.
            return self.roaming.park(frame);
        }
        match frame.command {
            Command::Connect | Command::Stomp => {
                self.refuse_client("already connected: CONNECT may be sent once");
                return;
            }
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                self.refuse_client(&format!("{} is a server frame", frame.command));
                return;
            }
            Command::Disconnect => self.client_open = false,
            _ => {}
        }
        let stale_before = self.log.stale_acks();
        match self.log.client_frame(frame, self.node.is_some()) {
            ClientAction::Forward(frame) => self.send_node(&frame),
            ClientAction::Answer(receipt) => self.send_client(&receipt),
            ClientAction::Committed { to_node, to_client } => {
                for frame in &to_node {
                    self.send_node(frame);
                }
                for frame in &to_client {
                    self.send_client(frame);
                }
            }
            ClientAction::Recorded | ClientAction::Dropped => {}
            ClientAction::Refuse(message) => return self.refuse_client(&message),
        }
        let stale = self.log.stale_acks() - stale_before;
        if stale > 0 {
            self.listener.metrics.stale_acks.increment(stale);
        }
    }

    fn refuse_client(&mut self, message: &str) {
        self.send_client(&Frame::error(message, ""));
        self.end = Some(End::ClientError(message.to_owned()));
    }

    fn on_node(&mut self, event: LegEvent<Result<Incoming, StompError>>) {
        let (reason, detail) = match event {
            LegEvent::Read(Some(Ok(Incoming::Frame(frame)))) => {
                if let Some(NodeSide {
                    liveness: Some(liveness),
                    writer,
                    ..
                }) = &mut self.node
                    && let Some(abort) = liveness.answer(&frame)
                {
                    let _ = writer.queue(&abort);
                    return;
                }
                return self.node_frame(frame);
            }
            LegEvent::Read(Some(Ok(Incoming::Heartbeat))) | LegEvent::Wrote(Ok(())) => return,
            LegEvent::Read(None) => (
                FailoverReason::Closed,
                "the node closed the connection".into(),
            ),
            LegEvent::Read(Some(Err(StompError::Io(e)))) => (FailoverReason::Reset, e.to_string()),
            // The node sent what is not STOMP: the connection cannot be trusted.
            LegEvent::Read(Some(Err(e))) => (FailoverReason::ProtocolError, e.to_string()),
            LegEvent::Wrote(Err(e)) => (FailoverReason::WriteError, e.to_string()),
        };
        self.start_failover(reason, &detail);
    }

    fn node_frame(&mut self, frame: Frame) {
        match frame.command {
            Command::Message => {
                self.log.upstream_message(&frame);
                self.send_client(&frame);
            }
            Command::Receipt => {
                let id = frame.header("receipt-id").unwrap_or_default().to_owned();
                match self.log.upstream_receipt(&id) {
                    ReceiptOutcome::ToClient(receipt) => self.send_client(&receipt),
                    ReceiptOutcome::Swallowed => {}
                    ReceiptOutcome::Disconnected(receipt) => {
                        if let Some(receipt) = receipt {
                            self.send_client(&receipt);
                        }
                        self.end = Some(End::Finished);
                    }
                }
                for receipt in self.log.completed_commits() {
                    self.send_client(&receipt);
                }
            }
            Command::Error if let Some(reason) = node_fault(&frame) => {
                let message = frame.header("message").unwrap_or("ERROR").to_owned();
                self.start_failover(reason, &message);
            }
            Command::Error => {
                // The client's doing (unknown destination, bad ack, ...): passed on as the broker
                // sent it, and the broker closes the connection after an ERROR, so the session
                // ends. Not a node failure.
                let mut frame = frame;
                if let Some(id) = frame.header("receipt-id").map(str::to_owned) {
                    match self.log.client_receipt_for(&id) {
                        Some(client_receipt) => frame.headers.set("receipt-id", client_receipt),
                        None => {
                            frame.headers.remove("receipt-id");
                        }
                    }
                }
                let message = frame.header("message").unwrap_or("ERROR").to_owned();
                self.send_client(&frame);
                self.end = Some(End::Forwarded(message));
            }
            // Nothing else is for the client: a stray CONNECTED is ignored.
            _ => {}
        }
    }

    /// The session's node failed: drop it, and look for another live node while the client
    /// carries on (its frames are recorded and replayed once a node is there).
    fn start_failover(&mut self, reason: FailoverReason, detail: &str) {
        let Some(node) = self.node.take() else { return };
        let next = self.roaming.failed(node.node(), reason, detail);
        self.leave_node(next);
    }

    /// Having left the node (dropped or closing), connects to another one (see
    /// [`Destination`]) to replay the session there.
    fn leave_node(&mut self, next: Destination) {
        self.log.failover();
        let mut connect = self.connect.unpack();
        if let Some(version) = self.version {
            // The client speaks this version now: the next node must too.
            connect.headers.set("accept-version", version.as_str());
        }
        let settings = self.listener.session.clone();
        let deadline = Instant::now() + settings.failover_timeout;
        self.establishing = Some(Box::pin(upstream::establish(
            self.listener.clone(),
            connect,
            settings,
            self.limits,
            deadline,
            false,
            next,
        )));
    }

    // ---- planned moves (rebalancing) ------------------------------------------------------

    /// The rebalancer asks the session to move to `request.to`: `auto`-ack subscriptions are
    /// unsubscribed on the current node and client frames parked until the switch.
    fn begin_move(&mut self, request: MoveRequest) {
        let whereabouts = Whereabouts {
            node: self.node.as_ref().map(|n| n.node().name.as_str()),
            busy: self.establishing.is_some() || !self.client_open,
            pinned: (self.log.pins_to_node())
                .then_some("it subscribes to a temporary destination that lives on its node"),
        };
        if self.roaming.begin_move(request, &whereabouts) {
            for frame in self.log.unsubscribe_for_move() {
                self.send_node(&frame);
            }
        }
    }

    /// Switches nodes once the move has reached its safe point (or its deadline).
    fn advance_move(&mut self) {
        if !self.roaming.is_moving() || self.node.is_none() || self.establishing.is_some() {
            return; // no move, or its switch is under way
        }
        let (settled, acked) = (self.log.ready_to_move(), self.log.unacked_here() == 0);
        let Some(to) = self
            .roaming
            .switch_to(settled, acked, self.log.unconfirmed())
        else {
            return;
        };
        let Some(mut node) = self.node.take() else {
            return;
        };
        self.roaming.left(node.node(), FailoverReason::Rebalance);
        // Closed in the background; what the node still sends is not for the client any more
        // (unacked messages are redelivered by the broker).
        tokio::spawn(async move {
            let _ = node.writer.queue(&Frame::new(Command::Disconnect));
            let _ = tokio::time::timeout(FINAL_FLUSH, node.writer.flush()).await;
            let _ = tokio::time::timeout(FINAL_FLUSH, async {
                while let Some(Ok(_)) = node.reader.next().await {}
            })
            .await;
        });
        self.leave_node(Destination::to(to));
    }

    fn on_established(&mut self, result: Result<NodeLeg, EstablishError>) {
        self.establishing = None;
        let leg = match result {
            Ok(leg) => leg,
            Err(EstablishError::Refused(error)) => {
                let message = error.header("message").unwrap_or("ERROR").to_owned();
                self.send_client(&error);
                self.end = Some(End::Forwarded(message));
                return;
            }
            Err(EstablishError::GaveUp { waited, last }) => {
                let message = format!(
                    "tether: no broker node available for {} (last: {last})",
                    humantime::format_duration(Duration::from_secs(waited.as_secs()))
                );
                tracing::warn!(parent: self.roaming.span(), %message, "giving up on the session");
                self.send_client(&Frame::error(&message, ""));
                self.end = Some(End::Forwarded(message));
                return;
            }
        };
        let NodeLeg {
            reader,
            writer,
            lease,
            connected,
            version,
            beats,
            born,
        } = leg;
        let first = self.version.is_none();
        let every = self.listener.session.upstream_heartbeat;
        self.node = Some(NodeSide {
            liveness: Liveness::new(beats.expect_every, every),
            reader,
            writer,
            lease,
            beats,
            connected: Packed::new(&connected),
            version,
            born,
        });
        if first {
            self.version = Some(version);
            self.log.set_version(version);
            self.client_reader.set_version(version);
            self.client_writer.set_version(version);
            self.send_client(&self.client_connected(&connected, version));
        }
        let replay = self.log.replay();
        for frame in &replay.frames {
            self.send_node(frame);
        }
        let to = self
            .node
            .as_ref()
            .map(|n| n.node().name.clone())
            .unwrap_or_default();
        if first {
            tracing::debug!(parent: self.roaming.span(), node = %to, %version, "session connected");
        }
        let replayed = [("subscribe", replay.subscriptions), ("send", replay.sends)];
        for frame in self.roaming.arrived(&to, &replayed) {
            self.on_client(LegEvent::Read(Some(Ok(Incoming::Frame(frame)))));
        }
    }

    /// The CONNECTED the client gets: the node's, with tether's own heart-beat offer.
    fn client_connected(&self, connected: &Frame, version: Version) -> Frame {
        let mut frame = connected.clone();
        frame.headers.set("version", version.as_str());
        let offer = Beats::server_offer(self.client_offer);
        if offer == (0, 0) {
            frame.headers.remove("heart-beat");
        } else {
            frame
                .headers
                .set("heart-beat", format!("{},{}", offer.0, offer.1));
        }
        frame
    }

    async fn close(mut self, end: End) {
        if matches!(end, End::HandedOver) {
            // The new process holds the connections now: only this process's descriptors
            // close, and nothing is shut down.
            self.client_writer.forget();
            if let Some(node) = self.node.take() {
                node.writer.forget();
            }
            let gauge = &self.listener.metrics.unconfirmed;
            gauge.decrement(self.reported_unconfirmed as f64);
            return;
        }
        close_client(&mut self.client_reader, &mut self.client_writer, &end).await;
        // A connection with a question out would bring its receipt to the pool's cleaning, and
        // could keep tether's transaction open for the next session: closed instead.
        let asking =
            (self.node.as_ref()).is_some_and(|n| n.liveness.as_ref().is_some_and(Liveness::asking));
        if let (End::Released, Some(pool), Some(fingerprint)) =
            (&end, &self.listener.stomp_pool, self.fingerprint.take())
            && !asking
            && let Some(node) = self.node.take()
        {
            let leg = NodeLeg {
                reader: node.reader,
                writer: node.writer,
                lease: node.lease,
                connected: node.connected.unpack(),
                version: node.version,
                beats: node.beats,
                born: node.born,
            };
            let leftovers = self.log.leftovers();
            pooled::release(
                pool.clone(),
                leg,
                leftovers,
                fingerprint,
                self.roaming.span().clone(),
            );
        }
        if let Some(node) = &mut self.node {
            if matches!(end, End::Finished | End::Released) {
                let _ = node.writer.queue(&Frame::new(Command::Disconnect));
            }
            let _ = tokio::time::timeout(FINAL_FLUSH, node.writer.flush()).await;
        }
        let gauge = &self.listener.metrics.unconfirmed;
        gauge.decrement(self.reported_unconfirmed as f64);
        tracing::debug!(parent: self.roaming.span(),
            unconfirmed = self.log.unconfirmed(),
            why = end.describe(),
            "session closed"
        );
    }
}

/// Why an ERROR from the node is the node's trouble rather than the client's, if it is: the
/// node is going away (shutdown, forced close), or it failed inside. RabbitMQ's STOMP adapter
/// says "AMQP channel died" when its channel process crashed, or "Processing error" when the
/// crash surfaced while it handled a frame (an unexpected exit: its client-caused errors have
/// messages of their own). Such errors name no frame of the client's; the session moves
/// instead of ending.
fn node_fault(frame: &Frame) -> Option<FailoverReason> {
    if frame.header("receipt-id").is_some() {
        return None;
    }
    let message = frame
        .header("message")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let says = |hints: &[&str]| hints.iter().any(|hint| message.contains(hint));
    if says(&["shutdown", "shutting down"]) {
        Some(FailoverReason::NodeShutdown)
    } else if says(&["connection_forced", "connection forced"]) {
        Some(FailoverReason::Forced)
    } else if says(&[
        "amqp channel died",
        "amqp connection died",
        "internal_error",
        "processing error",
    ]) {
        Some(FailoverReason::NodeError)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_brokers_own_trouble_is_a_failover_and_the_clients_is_passed_on() {
        let error = |message: &str| Frame::error(message, "");
        let faults = [
            ("connection_forced", Some(FailoverReason::Forced)),
            ("Broker shutting down", Some(FailoverReason::NodeShutdown)),
            ("AMQP channel died", Some(FailoverReason::NodeError)),
            ("Processing error", Some(FailoverReason::NodeError)),
            ("not_found", None),
            ("Access refused", None),
            ("Bad header", None),
        ];
        for (message, expected) in faults {
            assert_eq!(node_fault(&error(message)), expected, "{message}");
        }
        // An ERROR answering one of the client's frames (it carries its receipt) is about it.
        let answer = error("Processing error").with_header("receipt-id", "7");
        assert_eq!(node_fault(&answer), None);
    }
}
