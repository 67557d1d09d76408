//! An AMQP 0-9-1 session that survives its node. tether terminates the protocol on both legs:
//! the client's handshake is answered with the node's server properties, and the client's
//! credentials are replayed to whichever node holds the session. tether records what the
//! session set up (channels, qos, confirm and tx modes, exchanges, queues, bindings, consumers)
//! and keeps every publish until the node confirms it. When the node fails it connects to
//! another, replays all that there, and carries on; the client keeps its connection, its
//! delivery tags keep growing and its confirm numbers stay continuous.
//!
//! One task per session, one `select!` over: frames from the client, frames from the node,
//! writes to each, heart-beat timers, the connection or failover in progress, and shutdown.
//! While a failover is in progress the client is not read (it waits on TCP) but is heart-beaten.
//! The session does the I/O; what a frame means is [`state`]'s business, which answers with the
//! frames to write and what to do next.
//!
//! # Layout
//!
//! - [`handshake`]: the client's handshake and the first node's, interleaved.
//! - [`state`]: the session's state without sockets: frames in, frames and events out.
//! - [`requests`]: per-channel request/answer matching.
//! - [`names`]: client ↔ node queue names (server-named queues change name with the node).
//! - [`channel`]: per-channel state: qos, consumers, delivery tags; holding
//!   [`confirms`] (publishes kept until confirmed, nacks retried, the client's numbering) and
//!   [`transaction`] (tx over confirms).
//! - [`refusals`]: when a node that keeps refusing publishes gets the session set up again.
//! - [`declarations`]: exchanges, queues and bindings to declare again.
//! - [`replay`]: setting the session up on a new node: connect, re-declare, resend.
//! - [`upstream`]: the node leg: connect, handshake, requests for the replay.
//! - [`assembly`]: gathering a message's frames so it is never split between nodes.
//! - [`leg`]: framed reading and zero-copy writing of one connection.
//! - [`liveness`]: telling a hung node from a quiet one within about a heart-beat.
//! - [`link`]: the node link a session reads and writes: a connection of its own, or its share
//!   of a multiplexed one ([`shared`]: channel remapping, one task per shared connection).
//! - [`pooled`]: warm reuse of node connections between sessions.

pub mod assembly;
pub mod blocking;
pub mod channel;
pub mod confirms;
pub mod declarations;
pub mod handover;
pub mod handshake;
pub mod leg;
pub mod link;
pub mod liveness;
pub mod lost_queues;
pub mod names;
pub mod pooled;
pub mod refusals;
pub mod replay;
pub mod requests;
pub mod serial;
pub mod shared;
pub mod state;
pub mod transaction;
pub mod upstream;

use crate::listener::Listener;
use crate::proto::amqp::{Frame, FrameError, FrameType, id};
use crate::session::Context;
use crate::session::failover::{Destination, End, FINAL_FLUSH, FailoverReason, HIGH_WATER};
use crate::session::io::{
    Alarm, Connecting, Deadlines, Leg, LegEvent, Wake, beat, close_client, next_buffered, next_wake,
};
use crate::session::moving::{MoveRequest, Whereabouts};
use crate::session::roaming::Roaming;
use crate::tls::Stream;
use amq_protocol::protocol::{AMQPClass, connection};
use leg::{FrameReader, FrameWriter};
use liveness::Liveness;
use replay::{Established, Recorded};
use shared::member::Ended;
use state::{Event, Out, SessionState, StateLimits, connection_close, method_frame};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use upstream::{CONNECTION_FORCED, Failure, Upstream};

struct Session {
    listener: Arc<Listener>,
    client_reader: FrameReader,
    client_writer: FrameWriter,
    client_heartbeat: Option<Duration>,
    client_open: bool,
    start_ok: connection::StartOk,
    open: connection::Open,
    state: SessionState,
    /// What the last frame asked for; drained after each, its vectors kept.
    out: Out,
    node: Option<Upstream>,
    /// The question out to the node, on a connection of its own that heart-beats.
    liveness: Option<Liveness>,
    /// When tether last held off reading the node (its client fell behind): the node's silence
    /// counts from then, not from bytes tether chose not to read.
    node_held: Instant,
    establishing: Option<Connecting<Result<Established, Failure>>>,
    /// Failovers and planned moves. During a move consumers are cancelled on the old node and
    /// client frames other than acks parked until every publish is confirmed, every request
    /// answered and every delivery acked.
    roaming: Roaming<Frame>,
    reported_unconfirmed: usize,
    /// Its unconfirmed bytes in the process budget, and the cap holding it back if any.
    held: crate::budget::Held,
    /// tether's own connection.blocked, for a client held back by a cap for a while.
    blocking: blocking::Blocking,
    /// When tether last held off reading the client (a cap): the client's silence counts from
    /// then, not from heart-beats tether chose not to read.
    client_held: Instant,
    reported_stale_acks: u64,
    /// [`SessionState::consumer_signature`] when the consumers were last reported.
    reported_consumers: (usize, u64, u8),
    end: Option<End>,
    /// What the client logged in with, as the listener's pool knows it: set when the pool may
    /// take the node connection once the session is over.
    fingerprint: Option<crate::pool::Fingerprint>,
    /// The session's node links are shares of multiplexed connections (until tether moves it
    /// onto a connection of its own).
    shares: bool,
    /// Where the session stands with a takeover (see [`handover`]).
    handing: crate::session::handover::Handing,
    /// Rings for the session's deadlines (heart-beats, silences, retries).
    alarm: Alarm,
}

pub async fn serve(context: Context, client: Stream) {
    // Each stage boxed: a session's task then holds only the stage it is in (the handshake's
    // state is 6 KiB, the ending's 4 KiB), not room for all of them for its whole life.
    let Some(opened) = Box::pin(handshake::run(&context, client)).await else {
        return;
    };
    let mut session = Session::start(opened, &context);
    let end = Box::pin(session.run(&context)).await;
    Box::pin(session.close(end)).await;
}

impl Session {
    /// The session as its handshake leaves it.
    fn start(opened: handshake::Opened, context: &Context) -> Session {
        let handshake::Opened {
            client_reader,
            client_writer,
            client_heartbeat,
            start_ok,
            open,
            upstream,
            warm,
        } = opened;
        let listener = context.listener.clone();
        let roaming = Roaming::new(listener.clone(), context.span.clone());
        roaming.on(Some(&upstream.node().name));
        let limits = StateLimits {
            max_message_size: listener.session.max_message_size,
            failover_timeout: listener.session.failover_timeout,
            max_held: listener.session.max_unconfirmed,
            max_held_bytes: listener.session.max_unconfirmed_bytes,
        };
        let mut state = SessionState::new(limits, context.span.clone());
        let fingerprint = warm.map(|warm| {
            state.keep_node_on_close();
            state.adopt_channels(warm.channels);
            warm.fingerprint
        });
        let shares = upstream.is_shared();
        let liveness = upstream.liveness();
        let blocking = blocking::Blocking::new(&start_ok, false);
        Session {
            liveness,
            node_held: Instant::now(),
            shares,
            listener,
            client_reader,
            client_writer,
            client_heartbeat,
            client_open: true,
            start_ok,
            open,
            state,
            fingerprint,
            out: Out::default(),
            node: Some(upstream),
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
            alarm: Alarm::default(),
        }
    }
}

fn is_ack_or_heartbeat(frame: &Frame) -> bool {
    match frame.kind {
        FrameType::Heartbeat => true,
        FrameType::Method => matches!(
            frame.class_method(),
            Some(id::BASIC_ACK | id::BASIC_NACK | id::BASIC_REJECT)
        ),
        _ => false,
    }
}

impl Session {
    async fn run(&mut self, context: &Context) -> End {
        loop {
            if self.node.is_some() {
                self.state.release_held_closes(&mut self.out);
                self.apply();
            }
            self.report();
            self.advance_move();
            if let Some(end) = self.end.take() {
                return end;
            }
            if self.handing.active()
                && let Some(end) = self.advance_handover().await
            {
                return end;
            }
            if !self.client_open && self.establishing.is_none() && self.state.unconfirmed() == 0 {
                return End::ClientGone;
            }
            let settings = &self.listener.session;
            let node_pending = self.node.as_ref().map_or(0, |n| n.writer.pending());
            let capped = self.held.cap(
                self.state.unconfirmed(),
                self.state.unconfirmed_bytes(),
                settings.max_unconfirmed,
                settings.max_unconfirmed_bytes,
            );
            let read_client = self.client_open
                && self.establishing.is_none()
                && node_pending < HIGH_WATER
                && self.client_writer.pending() < HIGH_WATER
                && capped.is_none()
                && !self.roaming.parked_full();
            if !read_client {
                self.client_held = Instant::now();
            }
            let (tell, look_again) =
                (self.blocking).update(capped, self.state.node_blocked(), Instant::now);
            if let Some(method) = tell {
                self.client_writer.queue(&method_frame(0, &method));
            }
            let read_node = self.client_writer.pending() < HIGH_WATER;
            if !read_node {
                self.node_held = Instant::now();
            }
            // The node's silence counts from its last bytes or from when tether last held off
            // reading them, whichever is later.
            let watched = (self.node.as_ref().zip(self.liveness.as_ref()))
                .filter(|_| read_node)
                .map(|(n, liveness)| (liveness, n.reader.last_read().max(self.node_held)));
            let deadlines = Deadlines {
                // Not while failing over: the client is not read then, so its silence means
                // nothing.
                client_silence: (self.client_heartbeat)
                    .filter(|_| self.client_open && self.establishing.is_none())
                    .map(|every| {
                        let quiet = self.client_reader.last_read.max(self.client_held);
                        quiet + every * 2 + Duration::from_secs(1)
                    }),
                node_silence: watched.map(|(liveness, quiet)| liveness.dead_at(quiet)),
                ask_node: watched.and_then(|(liveness, quiet)| liveness.ask_at(quiet)),
                retry: (self.node.as_ref())
                    .and_then(|_| self.state.next_retry())
                    .map(Instant::from_std),
                client_beat: (self.client_heartbeat)
                    .map(|every| self.client_writer.last_write + every / 2),
                node_beat: (self.node.as_ref()).and_then(|n| {
                    n.tune
                        .heartbeat
                        .map(|every| n.writer.last_write() + every / 2)
                }),
                recheck: (self.held.waits_for_others())
                    .then(|| Instant::now() + crate::budget::RECHECK)
                    .into_iter()
                    .chain(look_again)
                    .min(),
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
                    self.client_writer.queue(&method_frame(0, &connection_close(
                        CONNECTION_FORCED, "CONNECTION_FORCED - tether is shutting down")));
                    return End::Shutdown;
                }
            }
        }
    }

    fn on_wake(
        &mut self,
        wake: Wake<
            Result<Frame, FrameError>,
            Result<Frame, FrameError>,
            Result<Established, Failure>,
        >,
    ) {
        match wake {
            Wake::Client(event) => self.on_client(event),
            Wake::Node(event) => self.on_node(event),
            Wake::Connected(result) => self.on_established(result),
        }
    }

    /// Acts on the deadlines that have come.
    fn on_deadlines(&mut self, due: Deadlines) -> Option<End> {
        if due.client_silence.is_some() {
            return Some(End::ClientError(
                "missed heart-beats from the client".into(),
            ));
        }
        if due.node_silence.is_some() {
            self.start_failover(FailoverReason::Heartbeat, "the node stopped answering");
            return None;
        }
        if due.ask_node.is_some()
            && let (Some(node), Some(liveness)) = (&mut self.node, &mut self.liveness)
        {
            node.writer.queue(&liveness.ask());
            self.listener.metrics.liveness_questions.increment(1);
        }
        if due.retry.is_some() {
            self.state.send_due_retries(&mut self.out);
            self.apply();
        }
        beat(&mut self.client_writer, due.client_beat);
        if let Some(node) = &mut self.node {
            beat(&mut node.writer, due.node_beat);
        }
        None
    }

    /// Writes what the state asked for and acts on its event. Frames for the node are dropped
    /// while there is none: the replay on the next node sends what matters again.
    fn apply(&mut self) {
        for frame in self.out.to_client.drain(..) {
            self.client_writer.queue(&frame);
        }
        if let Some(node) = &mut self.node {
            for frame in self.out.to_node.drain(..) {
                node.writer.queue(&frame);
            }
        } else {
            self.out.to_node.clear();
        }
        match self.out.event.take() {
            None => {}
            Some(Event::End(end)) => {
                self.end.get_or_insert(end);
            }
            Some(Event::NodeFailed(reason, detail)) => self.start_failover(reason, &detail),
            Some(Event::NodeRefuses(channel)) => self.refresh_for_refusals(channel),
            Some(Event::QueueLost(queue)) => self.declare_lost_queue(&queue),
        }
    }

    /// Keeps the listener's gauges and the rebalancer's view of this session current.
    fn report(&mut self) {
        let metrics = &self.listener.metrics;
        let unconfirmed = self.state.unconfirmed();
        if unconfirmed != self.reported_unconfirmed {
            metrics
                .unconfirmed
                .increment(unconfirmed as f64 - self.reported_unconfirmed as f64);
            self.reported_unconfirmed = unconfirmed;
        }
        let stale = self.state.stale_acks();
        if stale != self.reported_stale_acks {
            metrics
                .stale_acks
                .increment(stale - self.reported_stale_acks);
            self.reported_stale_acks = stale;
        }
        let movable = !self.state.declarations.pins_to_node();
        let consumers = self.state.consumer_signature();
        if consumers != self.reported_consumers {
            self.reported_consumers = consumers;
            let consumed = self.state.consumed(self.open.virtual_host.as_str());
            self.roaming.report_consumed(consumed);
        }
        self.roaming.report(consumers.0 > 0, movable);
    }

    fn on_client(&mut self, event: LegEvent<Result<Frame, FrameError>>) {
        let frame = match event {
            LegEvent::Read(Some(Ok(frame))) => frame,
            LegEvent::Wrote(Ok(())) => return,
            LegEvent::Wrote(Err(e)) => {
                self.end = Some(End::ClientError(format!("write to client: {e}")));
                return;
            }
            LegEvent::Read(None) => {
                // Gone without connection.close: what it published is still delivered, then
                // the session ends.
                self.client_open = false;
                return self.state.client_gone();
            }
            LegEvent::Read(Some(Err(FrameError::Io(e)))) => {
                self.client_open = false;
                tracing::debug!(parent: self.roaming.span(), error = %e, "client read failed");
                return self.state.client_gone();
            }
            LegEvent::Read(Some(Err(e))) => {
                if matches!(e, FrameError::TooLarge { .. }) {
                    crate::budget::reached("frame_max");
                }
                let text = format!("FRAME_ERROR - {e}");
                let close = connection_close(e.reply_code(), &text);
                self.client_writer.queue(&method_frame(0, &close));
                self.end = Some(End::ClientError(format!("{} {text}", e.reply_code())));
                return;
            }
        };
        if self.roaming.is_moving() && !is_ack_or_heartbeat(&frame) {
            // Goes to the new node once the move is done; acks still go to the old one, whose
            // deliveries they settle.
            return self.roaming.park(frame);
        }
        self.state.client_frame(frame, &mut self.out);
        self.apply();
    }

    fn on_node(&mut self, event: LegEvent<Result<Frame, FrameError>>) {
        let (reason, detail) = match event {
            LegEvent::Read(Some(Ok(frame))) => {
                if let (Some(node), Some(liveness)) = (&mut self.node, &mut self.liveness)
                    && let Some(reply) = liveness.answer(&frame)
                {
                    if let Some(reply) = reply {
                        node.writer.queue(&reply);
                    }
                    return;
                }
                self.state.node_frame(frame, &mut self.out);
                return self.apply();
            }
            LegEvent::Wrote(Ok(())) => return,
            LegEvent::Read(None) => match self.node.as_ref().and_then(|n| n.reader.ended()) {
                Some(Ended::Failed(reason, detail)) => (*reason, detail.clone()),
                Some(Ended::Unshared(why)) => return self.unshare(why),
                None => (
                    FailoverReason::Closed,
                    "the node closed the connection".into(),
                ),
            },
            LegEvent::Read(Some(Err(FrameError::Io(e)))) => (FailoverReason::Reset, e.to_string()),
            LegEvent::Read(Some(Err(e))) => (FailoverReason::ProtocolError, e.to_string()),
            LegEvent::Wrote(Err(e)) => (FailoverReason::WriteError, e.to_string()),
        };
        self.start_failover(reason, &detail);
    }

    // ---- failover -------------------------------------------------------------------------

    /// The node failed: drop it, and set the session up on another live node while the client
    /// waits (heart-beaten, not read).
    fn start_failover(&mut self, reason: FailoverReason, detail: &str) {
        let Some(node) = self.node.take() else { return };
        let next = self.roaming.failed(node.node(), reason, detail);
        if node.is_shared() {
            // The shared connection may well live on (this session alone saw the fault): its
            // channels there are closed, its queues there deleted, as any session that leaves.
            self.let_go(node, "failover");
        }
        self.leave_node(next);
    }

    /// The node keeps refusing a channel's publishes: set the session up again (the balancer
    /// picks the node, maybe the same one) so that they go out on fresh channels. The node is
    /// not failed, only left, as a planned move leaves it.
    fn refresh_for_refusals(&mut self, channel: u16) {
        if self.node.is_none() {
            return;
        }
        tracing::warn!(parent: self.roaming.span(),
            channel,
            "the node keeps refusing publishes; setting the session up again"
        );
        self.state.refusals.refreshed(std::time::Instant::now());
        self.set_up_again(FailoverReason::Nacked, "tether: opening the session again");
    }

    /// A queue the session declared is gone from the cluster (see [`lost_queues`]): set the
    /// session up again, which declares it again. The node is left, not failed.
    fn declare_lost_queue(&mut self, queue: &str) {
        if self.node.is_none() {
            return;
        }
        tracing::warn!(parent: self.roaming.span(), queue,
            "the cluster lost a queue this session declared; setting the session up again to \
             declare it again"
        );
        self.set_up_again(
            FailoverReason::QueueLost,
            "tether: declaring a lost queue again",
        );
    }

    /// tether took the session off its shared node connection (its client fell behind, or the
    /// connection had no channel left for it): it carries on on a connection of its own.
    fn unshare(&mut self, why: &str) {
        let Some(node) = &self.node else { return };
        tracing::info!(parent: self.roaming.span(), node = %node.node().name, why,
            "moving the session off its shared node connection");
        self.shares = false;
        // Its queues there are deleted, to be declared again on its own connection.
        self.set_up_again(
            FailoverReason::Unshared,
            "tether: moved off a shared connection",
        );
    }

    /// Leaves a node that works, for `reason` (not the node's fault), and sets the session up
    /// again where the balancer picks, maybe on the same node.
    fn set_up_again(&mut self, reason: FailoverReason, why: &'static str) {
        let Some(node) = self.node.take() else { return };
        self.roaming.left(node.node(), reason);
        self.let_go(node, why);
        self.leave_node(Destination::default());
    }

    /// Lets go of a node link that works (see [`Upstream::let_go`]).
    fn let_go(&self, node: Upstream, why: &'static str) {
        let queues = match node.is_shared() {
            true => self.state.leftovers().queues,
            false => Vec::new(),
        };
        node.let_go(queues, why);
    }

    /// Having left the node (dropped or closing), connects to another one (see
    /// [`Destination`]) to replay the session there.
    fn leave_node(&mut self, next: Destination) {
        let finished = self.state.leave_node(&mut self.out);
        self.apply();
        if let Some(end) = finished {
            self.end = Some(end);
            return;
        }
        let recorded = Recorded {
            start_ok: self.start_ok.clone(),
            open: self.open.clone(),
            declarations: self.state.declarations.clone(),
            channels: self.state.channel_setups(),
        };
        let deadline = Instant::now() + self.listener.session.failover_timeout;
        self.establishing = Some(Box::pin(replay::establish(
            self.listener.clone(),
            recorded,
            deadline,
            next,
            self.shares,
        )));
    }

    fn on_established(&mut self, result: Result<Established, Failure>) {
        self.establishing = None;
        let Established { upstream, replayed } = match result {
            Ok(established) => established,
            Err(Failure::Refused(close)) => {
                let text = close.reply_text.to_string();
                let close = connection::AMQPMethod::Close(close);
                let frame = method_frame(0, &AMQPClass::Connection(close));
                self.client_writer.queue(&frame);
                self.end = Some(End::Forwarded(text));
                return;
            }
            Err(Failure::ChannelClosed(channel, close)) => {
                let last = format!(
                    "channel {channel}: {} {}",
                    close.reply_code, close.reply_text
                );
                return self.give_up(&last);
            }
            Err(Failure::Broken(last)) => return self.give_up(&last),
        };
        let to = upstream.node().name.clone();
        self.liveness = upstream.liveness();
        self.node = Some(upstream);
        let replayed = self.state.arrived(&replayed, &mut self.out);
        self.apply();
        for frame in self.roaming.arrived(&to, &replayed) {
            self.on_client(LegEvent::Read(Some(Ok(frame))));
        }
    }

    /// Every node failed for `failover_timeout`: the client gets a connection error that says so.
    fn give_up(&mut self, last: &str) {
        let text = upstream::no_node_available(self.roaming.waited(), last);
        tracing::warn!(parent: self.roaming.span(), %text, "giving up on the session");
        let close = connection_close(CONNECTION_FORCED, &text);
        self.client_writer.queue(&method_frame(0, &close));
        self.end = Some(End::Forwarded(text));
    }

    // ---- planned moves (rebalancing) ------------------------------------------------------

    /// The rebalancer asks the session to move to `request.to`: consumers are cancelled on the
    /// current node and client frames are parked until the switch.
    fn begin_move(&mut self, request: MoveRequest) {
        let whereabouts = Whereabouts {
            node: self.node.as_ref().map(|n| n.node().name.as_str()),
            busy: self.establishing.is_some() || self.state.client_closing() || !self.client_open,
            pinned: (self.state.declarations.pins_to_node())
                .then_some("it has queues that live on its node"),
        };
        if self.roaming.begin_move(request, &whereabouts) {
            self.state.cancel_consumers(&mut self.out);
            self.apply();
        }
    }

    /// Switches nodes once the move has reached its safe point (or its deadline).
    fn advance_move(&mut self) {
        if !self.roaming.is_moving() || self.node.is_none() || self.establishing.is_some() {
            return; // no move, or its switch is under way
        }
        let (settled, acked) = (self.state.settled(), self.state.acked());
        let Some(to) = self
            .roaming
            .switch_to(settled, acked, self.state.unconfirmed())
        else {
            return;
        };
        let Some(node) = self.node.take() else { return };
        self.roaming.left(node.node(), FailoverReason::Rebalance);
        self.let_go(node, "tether: moving the session to another node");
        self.leave_node(Destination::to(to));
    }

    async fn close(mut self, end: End) {
        if matches!(end, End::HandedOver) {
            // The new process holds the connections now: only this process's descriptors
            // close, and nothing is shut down.
            self.client_writer.forget();
            if let Some(node) = self.node.take()
                && let link::NodeWriter::Own(writer) = node.writer
            {
                writer.forget();
            }
            self.listener
                .metrics
                .unconfirmed
                .decrement(self.reported_unconfirmed as f64);
            return;
        }
        close_client(&mut self.client_reader, &mut self.client_writer, &end).await;
        // A connection with a question out would bring its answer to the pool's cleaning (on
        // the channel the cleaning uses): closed instead.
        let asking = self.liveness.as_ref().is_some_and(Liveness::asking);
        let pooled = matches!(end, End::Released | End::ClientGone) && !asking;
        let node = self.node.take();
        match (node, &self.listener.amqp_pool, self.fingerprint.take()) {
            (Some(node), ..) if node.is_shared() => {
                node.let_go(self.state.leftovers().queues, "client gone");
            }
            (Some(node), Some(pooling), Some(fingerprint)) if pooled => {
                let leftovers = self.state.leftovers();
                pooling.release(node, leftovers, fingerprint, self.roaming.span().clone());
            }
            (Some(mut node), ..) if !matches!(end, End::Finished | End::Forwarded(_)) => {
                node.writer
                    .queue(&method_frame(0, &connection_close(200, "client gone")));
                let _ = tokio::time::timeout(FINAL_FLUSH, node.writer.flush()).await;
            }
            _ => {}
        }
        self.listener
            .metrics
            .unconfirmed
            .decrement(self.reported_unconfirmed as f64);
        tracing::debug!(parent: self.roaming.span(),
            unconfirmed = self.state.unconfirmed(),
            why = end.describe(),
            "session closed"
        );
    }
}
