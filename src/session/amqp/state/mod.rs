//! An AMQP session's state without its sockets: what the client set up (to replay it), what is
//! in flight on the current node (requests, publishes, deliveries), and the client's view of
//! both (its queue names, delivery tags and confirm numbers). Frames go in
//! ([`SessionState::client_frame`], [`SessionState::node_frame`]); what they cause comes out in
//! an [`Out`]: frames for each leg and at most one [`Event`] for the session to act on.
//!
//! Nothing here does I/O, so it is tested without a broker, and it can be handed from one node
//! connection to the next (a failover, a planned move) as it is.
//!
//! # Layout
//!
//! - this file: the state, the channels' bookkeeping, leaving a node and arriving on the next;
//! - `client`: frames from the client;
//! - `node`: frames from the node.

mod client;
mod node;
#[cfg(test)]
mod tests;

use super::assembly::Assembly;
use super::channel::Channel;
use super::confirms::Reusable;
use super::declarations::Declarations;
use super::lost_queues::LostQueues;
use super::names::QueueNames;
use super::refusals::RefusalRefresh;
use super::replay::{ChannelSetup, Replayed};
use super::requests::Requests;
use crate::proto::amqp::{Frame, method};
use crate::rebalance::locality::{Consumed, Vhost};
use crate::session::failover::{End, FailoverReason};
use amq_protocol::protocol::{AMQPClass, basic, channel as chan, connection};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The limits a session's state enforces.
#[derive(Clone, Copy, Debug)]
pub struct StateLimits {
    /// Largest message body a client may publish or a node deliver.
    pub max_message_size: u64,
    /// How long a publish the broker refuses is retried.
    pub failover_timeout: Duration,
    /// The most publishes and acks, and bytes, the session's open transactions may hold (the
    /// listener's `max_unconfirmed` and `max_unconfirmed_bytes`): tether stops reading a
    /// client at those, so a transaction that reached them could never be committed.
    pub max_held: usize,
    pub max_held_bytes: usize,
}

/// Where a session's publishes go, as far as queue locality cares.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PublishTarget {
    #[default]
    Nowhere,
    /// Every publish so far went through the default exchange to this queue (the node's name).
    Queue(String),
    /// Through other exchanges, or to more than one queue.
    Many,
}

impl PublishTarget {
    /// Changes with every change of target (there are at most two).
    fn step(&self) -> u8 {
        match self {
            PublishTarget::Nowhere => 0,
            PublishTarget::Queue(_) => 1,
            PublishTarget::Many => 2,
        }
    }
}

/// What handling a frame asks of the session. Kept by the session and drained after each
/// frame, so the hot path allocates nothing once the vectors have grown.
#[derive(Debug, Default)]
pub struct Out {
    pub to_client: Vec<Frame>,
    pub to_node: Vec<Frame>,
    pub event: Option<Event>,
}

#[derive(Debug)]
pub enum Event {
    /// The session is over; what it owes the client is in `to_client`.
    End(End),
    /// The node failed: the session leaves it for another.
    NodeFailed(FailoverReason, String),
    /// The node keeps refusing publishes on this channel: set the session up again.
    NodeRefuses(u16),
    /// A queue the session declared is gone from the cluster (named): set the session up
    /// again, which declares it again (see [`super::lost_queues`]).
    QueueLost(String),
}

impl Out {
    fn client(&mut self, frame: Frame) {
        self.to_client.push(frame);
    }

    fn client_method(&mut self, channel: u16, method: &AMQPClass) {
        self.to_client.push(method_frame(channel, method));
    }

    fn node(&mut self, frame: Frame) {
        self.to_node.push(frame);
    }

    fn node_method(&mut self, channel: u16, method: &AMQPClass) {
        self.to_node.push(method_frame(channel, method));
    }

    /// The first event of a turn stands: what follows it in the same frame is moot.
    fn event(&mut self, event: Event) {
        self.event.get_or_insert(event);
    }

    fn end(&mut self, end: End) {
        self.event(Event::End(end));
    }

    fn node_failed(&mut self, reason: FailoverReason, detail: impl Into<String>) {
        self.event(Event::NodeFailed(reason, detail.into()));
    }

    /// Ends the session with a connection error for the client, as a broker would send it.
    fn client_error(&mut self, code: u16, text: &str) {
        self.client_method(0, &connection_close(code, text));
        self.end(End::ClientError(format!("{code} {text}")));
    }
}

/// A client channel: its state, the requests the node has yet to answer, the publish being
/// received, and how its closing stands.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ChannelSession {
    pub state: Channel,
    pub requests: Requests,
    /// A publish whose content is still arriving from the client.
    publishing: Option<Assembly>,
    /// The client's channel.close, held until the channel's publishes are confirmed.
    closing: Option<Frame>,
    close_sent: bool,
    /// The node closed the channel; the client's close-ok is awaited.
    pub closed_by_node: bool,
    /// The client did what leaves state on the node channel (consumed, got, set qos or flow):
    /// the pool closes it rather than hand it to the next session.
    tainted: bool,
}

impl ChannelSession {
    fn new(id: u16) -> ChannelSession {
        ChannelSession {
            state: Channel::new(id),
            requests: Requests::default(),
            publishing: None,
            closing: None,
            close_sent: false,
            closed_by_node: false,
            tainted: false,
        }
    }

    /// Whether the node channel holds nothing of the session's: it never consumed, got, set
    /// qos or flow (see `tainted`), and nothing is in flight on it.
    fn holds_nothing(&self) -> bool {
        !self.tainted
            && !self.closed_by_node
            && self.publishing.is_none()
            && self.requests.is_empty()
            && self.state.unconfirmed_count() == 0
            && self.state.tags.outstanding_deliveries() == 0
    }

    /// Whether the node channel can serve the next session as it is.
    fn reusable(&self) -> bool {
        self.closing.is_none() && self.holds_nothing()
    }

    /// The node closed the channel (or refused it on replay): nothing on it is answered now.
    fn mark_closed_by_node(&mut self) {
        self.closed_by_node = true;
        self.requests.clear();
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SessionState {
    /// Set again by the process that takes the state over (see [`SessionState::adopted`]).
    #[serde(skip, default = "StateLimits::unset")]
    limits: StateLimits,
    /// The session's span, the parent of the lines logged here.
    #[serde(skip, default = "tracing::Span::none")]
    span: tracing::Span,
    pub declarations: Declarations,
    pub names: QueueNames,
    pub channels: BTreeMap<u16, ChannelSession>,
    /// Consume-oks seen (see [`SessionState::consumer_signature`]).
    #[serde(default)]
    consumes_started: u64,
    /// Where the session's publishes go, for queue locality.
    #[serde(default)]
    publishes_to: PublishTarget,
    /// Deliveries (and get-oks, returns) whose content is still arriving from the node.
    delivering: HashMap<u16, Assembly>,
    /// The client's connection.close, held until every publish is confirmed.
    client_closing: Option<Frame>,
    client_close_sent: bool,
    /// tether passed a node's connection.close on; the client's close-ok ends the session.
    node_closed: bool,
    /// The client was told connection.blocked by a node.
    blocked: bool,
    /// The client's connection.close is answered by tether, not sent to the node, whose
    /// connection goes back to the pool (see [`SessionState::keep_node_on_close`]).
    keep_node: bool,
    /// Node channels a pooled connection came with, open and clean, that the client has not
    /// opened (yet): its channel.open is answered by tether.
    reusable: BTreeMap<u16, Reusable>,
    pub refusals: RefusalRefresh,
    /// Set-ups for queues the cluster lost under the session (a new process starts afresh).
    #[serde(skip)]
    lost_queues: LostQueues,
    /// Client acks swallowed because they were for a failed node's deliveries.
    stale_acks: u64,
}

impl StateLimits {
    fn unset() -> StateLimits {
        StateLimits {
            max_message_size: 0,
            failover_timeout: Duration::ZERO,
            max_held: usize::MAX,
            max_held_bytes: usize::MAX,
        }
    }
}

impl SessionState {
    /// State another process handed over runs here under this listener's limits and span.
    pub fn adopted(&mut self, limits: StateLimits, span: tracing::Span) {
        self.limits = limits;
        self.span = span;
    }

    /// Whether a message is half through tether (its method is in, not all its content): the
    /// session cannot be handed over before it is whole.
    pub fn mid_message(&self) -> bool {
        !self.delivering.is_empty() || self.channels.values().any(|c| c.publishing.is_some())
    }

    pub fn new(limits: StateLimits, span: tracing::Span) -> SessionState {
        SessionState {
            limits,
            span,
            declarations: Declarations::default(),
            names: QueueNames::default(),
            channels: BTreeMap::new(),
            consumes_started: 0,
            publishes_to: PublishTarget::Nowhere,
            delivering: HashMap::new(),
            client_closing: None,
            client_close_sent: false,
            node_closed: false,
            blocked: false,
            keep_node: false,
            reusable: BTreeMap::new(),
            refusals: RefusalRefresh::default(),
            lost_queues: LostQueues::default(),
            stale_acks: 0,
        }
    }

    /// The client's connection.close is to be answered by tether once every publish is
    /// confirmed, and the session ended with [`End::Released`]: its node connection is pooled.
    pub fn keep_node_on_close(&mut self) {
        self.keep_node = true;
    }

    /// The node channels a pooled connection came with (see `reusable`).
    pub fn adopt_channels(&mut self, channels: Vec<(u16, Reusable)>) {
        self.reusable = channels.into_iter().collect();
    }

    pub fn unconfirmed(&self) -> usize {
        self.channels
            .values()
            .map(|c| c.state.unconfirmed_count())
            .sum()
    }

    /// Publishes and acks held by open transactions, and their bytes.
    pub fn held_in_transactions(&self) -> (usize, usize) {
        self.channels
            .values()
            .map(|c| c.state.tx.held())
            .fold((0, 0), |(n, b), (cn, cb)| (n + cn, b + cb))
    }

    /// The node told the client connection.blocked and has not unblocked it.
    pub fn node_blocked(&self) -> bool {
        self.blocked
    }

    pub fn unconfirmed_bytes(&self) -> usize {
        self.channels
            .values()
            .map(|c| c.state.unconfirmed_bytes())
            .sum()
    }

    pub fn stale_acks(&self) -> u64 {
        self.stale_acks
    }

    /// The client sent connection.close (tether holds it until every publish is confirmed).
    pub fn client_closing(&self) -> bool {
        self.client_closing.is_some()
    }

    /// When the next publish a node refused is due to be sent again.
    pub fn next_retry(&self) -> Option<std::time::Instant> {
        self.channels
            .values()
            .filter_map(|c| c.state.confirms.next_retry())
            .min()
    }

    /// Changes whenever what locality places the session by does (as a count alone would
    /// not, were one consumer cancelled and another started between two looks): the number of
    /// consumers, consume-oks seen, and where publishes go.
    pub fn consumer_signature(&self) -> (usize, u64, u8) {
        let count = (self.channels.values())
            .map(|c| c.state.consumers.len())
            .sum();
        (count, self.consumes_started, self.publishes_to.step())
    }

    /// Notes where a publish goes: a session that publishes only through the default exchange
    /// to one queue is placed by that queue. Allocates once, at the first publish.
    pub(super) fn note_publish_target(&mut self, method: &Frame) {
        if matches!(self.publishes_to, PublishTarget::Many) {
            return;
        }
        let Ok(publish) = method::peek_publish(&method.payload) else {
            return;
        };
        let queue = self.names.node_name(publish.routing_key);
        self.publishes_to = match &self.publishes_to {
            _ if !publish.exchange.is_empty() || queue.is_empty() => PublishTarget::Many,
            PublishTarget::Nowhere => PublishTarget::Queue(queue.to_string()),
            PublishTarget::Queue(known) if known == queue => return,
            _ => PublishTarget::Many,
        };
    }

    /// What the session reads from, or else publishes to, for queue locality (`None`:
    /// nothing locality places). A consumer of `""` (the channel's last declared queue) makes
    /// it one locality does not place.
    pub fn consumed(&self, vhost: &str) -> Option<Consumed> {
        let mut queues: Vec<String> = (self.channels.values())
            .flat_map(|c| c.state.consumers.iter())
            .map(|c| self.names.node_name(&c.queue).to_string())
            .collect();
        if queues.is_empty() {
            let PublishTarget::Queue(queue) = &self.publishes_to else {
                return None;
            };
            return Some(Consumed {
                vhost: Vhost::Exact(vhost.to_string()),
                queues: vec![queue.clone()],
                other: false,
            });
        }
        queues.sort_unstable();
        queues.dedup();
        let other = queues.iter().any(String::is_empty);
        Some(Consumed {
            vhost: Vhost::Exact(vhost.to_string()),
            queues,
            other,
        })
    }

    /// The client left (or its connection broke) without connection.close: what it published
    /// is still delivered, but not its open transactions, which a broker would roll back.
    pub fn client_gone(&mut self) {
        self.roll_back_transactions();
    }

    fn roll_back_transactions(&mut self) {
        for session in self.channels.values_mut() {
            session.state.tx.rollback();
        }
    }

    // ---- planned moves ----------------------------------------------------------------------

    /// A planned move starts: every consumer is cancelled on the current node. The node's
    /// cancel-ok comes after its last delivery to that consumer: once every one is in, waiting
    /// for the client's acks covers everything delivered. Consumers stay recorded: they are
    /// consumed again on the new node. Returns how many were cancelled.
    pub fn cancel_consumers(&mut self, out: &mut Out) -> usize {
        self.cancel_consumers_where(out, |_| true)
    }

    /// Cancels the consumers whose deliveries need no ack (`no_ack`): what the node sends them
    /// after the session has let go of its node leg would be lost, where an unacked delivery
    /// would be requeued. Before a takeover that replays the session on a node.
    pub fn cancel_no_ack_consumers(&mut self, out: &mut Out) -> usize {
        self.cancel_consumers_where(out, |consumer| consumer.method.no_ack)
    }

    fn cancel_consumers_where(
        &mut self,
        out: &mut Out,
        which: impl Fn(&super::channel::Consumer) -> bool,
    ) -> usize {
        let mut cancelled = 0;
        for (id, session) in self.channels.iter_mut() {
            for consumer in session.state.consumers.iter().filter(|c| which(c)) {
                let cancel = AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: consumer.tag.as_str().into(),
                    nowait: false,
                }));
                let frame = method_frame(*id, &cancel);
                session.requests.sent_own(cancel, frame.clone());
                out.node(frame);
                cancelled += 1;
            }
        }
        cancelled
    }

    /// tether's own requests (a move's or a takeover's cancels) are all answered.
    pub fn own_requests_answered(&self) -> bool {
        self.channels
            .values()
            .all(|c| c.requests.own_pending() == 0)
    }

    /// Nothing of the session's is in flight on the node: every publish confirmed, every
    /// request answered, no delivery half received.
    pub fn settled(&self) -> bool {
        self.channels.values().all(|c| {
            c.state.confirms.is_settled() && c.requests.is_empty() && !c.state.tx.commit_pending
        }) && self.delivering.is_empty()
    }

    /// The client acked everything the current node delivered.
    pub fn acked(&self) -> bool {
        self.channels
            .values()
            .all(|c| c.state.tags.outstanding_deliveries() == 0)
    }

    // ---- leaving a node and arriving on the next --------------------------------------------

    /// The session leaves its node. Channels being closed need no new node: the client's close
    /// is answered by tether; so is the connection's, once nothing is left to confirm (then the
    /// session is over: `Some(End::Finished)`).
    pub fn leave_node(&mut self, out: &mut Out) -> Option<End> {
        for session in self.channels.values_mut() {
            session.requests.leave_node();
        }
        // A delivery cut short is dropped: the broker requeues it (it was not acked).
        self.delivering.clear();
        // They were the old node's.
        self.reusable.clear();
        self.names.failover();
        let closing: Vec<u16> = self
            .channels
            .iter()
            .filter(|(_, s)| s.closed_by_node || (s.close_sent && s.state.unconfirmed_count() == 0))
            .map(|(id, _)| *id)
            .collect();
        for id in closing {
            if let Some(session) = self.channels.remove(&id)
                && session.close_sent
            {
                out.client_method(
                    id,
                    &AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                );
            }
        }
        for session in self.channels.values_mut() {
            session.state.failover();
            session.close_sent = false;
        }
        let answered_here = self.keep_node && self.client_closing.is_some();
        if (self.client_close_sent || answered_here) && self.unconfirmed() == 0 {
            let close_ok =
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
            out.client_method(0, &close_ok);
            return Some(End::Finished);
        }
        self.client_close_sent = false;
        None
    }

    /// What each channel needs set up on the next node.
    pub fn channel_setups(&self) -> Vec<ChannelSetup> {
        self.channels
            .values()
            .map(|s| ChannelSetup::of(&s.state))
            .collect()
    }

    /// The session runs on a new node where `replayed` was set up: the client hears of the
    /// channels the node refused, and what needs no answer before the session goes on is sent
    /// (see [`super::replay::resend`]). Returns what was replayed, by kind.
    pub fn arrived(&mut self, replayed: &Replayed, out: &mut Out) -> [(&'static str, usize); 7] {
        for (client_name, node_name) in &replayed.renames {
            self.names.renamed(client_name, node_name);
        }
        for (id, close) in &replayed.failed_channels {
            if let Some(session) = self.channels.get_mut(id) {
                session.mark_closed_by_node();
                out.client_method(
                    *id,
                    &AMQPClass::Channel(chan::AMQPMethod::Close(close.clone())),
                );
            }
        }
        for skipped in &replayed.skipped {
            tracing::warn!(parent: &self.span, %skipped, "the new node refused a declaration; going on without it");
        }
        let resent = super::replay::resend(&mut self.channels, &self.names, out);
        if self.blocked {
            // The new node starts unblocked; it says so again if it is not.
            self.blocked = false;
            let unblocked =
                AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {}));
            out.client_method(0, &unblocked);
        }
        [
            ("exchange", replayed.exchanges),
            ("queue", replayed.queues),
            ("binding", replayed.bindings),
            ("channel", replayed.channels),
            ("consumer", resent.consumers),
            ("publish", resent.publishes),
            ("request", resent.requests),
        ]
    }

    /// Sends on held channel and connection closes whose publishes are all confirmed: a broker
    /// may drop unconfirmed publishes of a channel or connection being closed.
    pub fn release_held_closes(&mut self, out: &mut Out) {
        if self.keep_node {
            self.keep_closed_channels(out);
        }
        for session in self.channels.values_mut() {
            if let Some(close) = &session.closing
                && !session.close_sent
                && session.state.unconfirmed_count() == 0
            {
                session.close_sent = true;
                let decoded = AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
                    reply_code: 200,
                    reply_text: "".into(),
                    class_id: 0,
                    method_id: 0,
                }));
                session.requests.sent(decoded, close.clone());
                out.node(close.clone());
            }
        }
        if let Some(close) = &self.client_closing
            && !self.client_close_sent
            && self.unconfirmed() == 0
        {
            self.client_close_sent = true;
            if self.keep_node {
                let close_ok =
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
                out.client_method(0, &close_ok);
                out.end(End::Released);
            } else {
                out.node(close.clone());
            }
        }
    }

    /// What of the client's is left on the node connection, for the pool to clean away, and
    /// the channels the next session can have as they are.
    pub fn leftovers(&self) -> Leftovers {
        let mut left = Leftovers {
            keep: self.reusable.iter().map(|(id, r)| (*id, *r)).collect(),
            ..Leftovers::default()
        };
        for (id, session) in &self.channels {
            if session.reusable() {
                left.keep.push((*id, session.state.confirms.reusable()));
            } else if session.closed_by_node {
                left.close_ok.push(*id);
            } else if session.close_sent {
                left.closing.push(*id);
            } else {
                left.close.push(*id);
            }
        }
        left.queues = (self.declarations.queues.iter())
            .filter(|q| q.declare.exclusive || q.server_named())
            .map(|q| self.names.node_name(&q.name).to_owned())
            .collect();
        left
    }

    /// With a pool: a channel the client closes that holds nothing of its own on the node (see
    /// `tainted`) is not closed there; tether answers the close and keeps the node channel for
    /// the next channel.open of its number, this session's or the next one's.
    fn keep_closed_channels(&mut self, out: &mut Out) {
        let clean: Vec<u16> = (self.channels.iter())
            .filter(|(_, s)| s.closing.is_some() && !s.close_sent && s.holds_nothing())
            .map(|(id, _)| *id)
            .collect();
        for id in clean {
            if let Some(session) = self.channels.remove(&id) {
                self.reusable.insert(id, session.state.confirms.reusable());
                let close_ok = AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {}));
                out.client_method(id, &close_ok);
            }
        }
    }

    /// Sends again the publishes a node refused whose pause is over.
    pub fn send_due_retries(&mut self, out: &mut Out) {
        let now = std::time::Instant::now();
        for session in self.channels.values_mut() {
            for frames in session.state.confirms.due_retries(now) {
                out.to_node.extend(self.names.publish_for_node(frames));
            }
        }
    }
}

/// What a session leaves on its node connection when it ends: channels to close, channels
/// whose close the node is still to answer, channels the node closed whose close-ok it awaits,
/// and the queues (by their names on the node) that die with a connection.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Open and clean: kept open for the next session.
    pub keep: Vec<(u16, Reusable)>,
    pub close: Vec<u16>,
    pub closing: Vec<u16>,
    pub close_ok: Vec<u16>,
    pub queues: Vec<String>,
}

pub fn method_frame(channel: u16, method: &AMQPClass) -> Frame {
    Frame::method(channel, method::encode(method))
}

pub fn connection_close(code: u16, text: &str) -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: code,
        reply_text: text.chars().take(250).collect::<String>().into(),
        class_id: 0,
        method_id: 0,
    }))
}
