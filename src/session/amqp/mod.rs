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
//!
//! # Layout
//!
//! - [`handshake`]: the client's handshake and the first node's, interleaved.
//! - [`upstream`]: the node leg: connect, handshake, requests for the replay.
//! - [`replay`]: declarations and channel set-up on a new node.
//! - [`channel`]: per-channel state: confirms, delivery tags, consumers, kept publishes.
//! - [`declarations`]: exchanges, queues, bindings, and server-named queue names.
//! - [`assembly`]: gathering a message's frames so it is never split between nodes.
//! - [`leg`]: framed reading and zero-copy writing of one connection.

pub mod assembly;
pub mod channel;
pub mod declarations;
pub mod handshake;
pub mod leg;
pub mod replay;
pub mod upstream;

use crate::listener::Listener;
use crate::proto::amqp::{Frame, FrameError, FrameType, content, id, method, reply};
use crate::rebalance::{
    MoveOutcome, MoveRequest, PARK_LIMIT, PlannedMove, Registration, Registry, Switch,
};
use crate::session::Context;
use crate::session::io::{LegEvent, established, read_or_write, timer};
use amq_protocol::protocol::{
    AMQPClass, basic, channel as chan, confirm, connection, exchange, queue, tx,
};
use assembly::{Assembly, AssemblyError};
use channel::{Channel, Consumer, Publish};
use declarations::Declarations;
use leg::{FrameReader, FrameWriter};
use replay::{ChannelSetup, Replayed};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use upstream::{CONNECTION_FORCED, ENDPOINT, Failure, Upstream, node_fault};

/// Past this many bytes queued towards a peer, tether stops reading what would add to it.
const HIGH_WATER: usize = 256 * 1024;
/// How long a closing session may take to write its last frames.
const FINAL_FLUSH: Duration = Duration::from_secs(5);
/// How long a session ended by a client error reads on, so that its answer is not reset away.
const LINGER: Duration = Duration::from_secs(1);

type Establishing = Pin<Box<dyn Future<Output = Result<Established, Failure>> + Send>>;

/// A node connected, handshaken and set up again.
pub struct Established {
    pub upstream: Upstream,
    pub replayed: Replayed,
}

/// A client channel: its state, the requests the node has yet to answer, the publish being
/// received, and how its closing stands.
struct ChannelSession {
    state: Channel,
    /// Requests forwarded to the node, answered in order.
    awaiting: VecDeque<(AMQPClass, Frame)>,
    /// A publish whose content is still arriving from the client.
    publishing: Option<Assembly>,
    /// The client's channel.close, held until the channel's publishes are confirmed.
    closing: Option<Frame>,
    close_sent: bool,
    /// The node closed the channel; the client's close-ok is awaited.
    closed_by_node: bool,
    /// basic.cancels tether sent for a planned move: the last this many of `awaiting`, whose
    /// cancel-oks are tether's, not the client's.
    own_cancels: usize,
}

impl ChannelSession {
    fn new(id: u16) -> ChannelSession {
        ChannelSession {
            state: Channel::new(id),
            awaiting: VecDeque::new(),
            publishing: None,
            closing: None,
            close_sent: false,
            closed_by_node: false,
            own_cancels: 0,
        }
    }
}

struct Failover {
    started: Instant,
    reason: &'static str,
    from: String,
}

/// The failover reason of a planned move.
const REBALANCE: &str = "rebalance";
/// The failover reason of a session set up again because its node kept refusing publishes.
const REFUSED: &str = "refused";
/// A publish refused (nacked) this long makes tether set the session up again. RabbitMQ 3.10
/// nacks every publish of a channel opened in the moment a quorum queue's leader died, for as
/// long as that node stays away, while a channel opened a little later is served by the new
/// leader at once: measured here, 50 nacks in 5 s on the first, none on a second channel of
/// the same connection. A normal leader election refuses for about half a second.
const REFUSED_REFRESH_AFTER: Duration = Duration::from_millis(500);
/// While the refusals go on, the session is set up again at growing intervals up to this one
/// (a hung leader is only replaced once the other nodes give up on it).
const REFUSED_REFRESH_MAX_GAP: Duration = Duration::from_secs(4);

enum End {
    ClientGone,
    ClientError(String),
    Forwarded(String),
    Finished,
    Shutdown,
}

struct Session {
    listener: Arc<Listener>,
    client_addr: SocketAddr,
    client_reader: FrameReader,
    client_writer: FrameWriter,
    client_heartbeat: Option<Duration>,
    client_open: bool,
    start_ok: connection::StartOk,
    open: connection::Open,
    declarations: Declarations,
    channels: BTreeMap<u16, ChannelSession>,
    node: Option<Upstream>,
    /// Deliveries (and get-oks, returns) whose content is still arriving from the node.
    delivering: HashMap<u16, Assembly>,
    establishing: Option<Establishing>,
    failover: Option<Failover>,
    /// The client's connection.close, held until every publish is confirmed.
    client_closing: Option<Frame>,
    client_close_sent: bool,
    /// tether passed a node's connection.close on; the client's close-ok ends the session.
    node_closed: bool,
    /// The client was told connection.blocked by a node.
    blocked: bool,
    reported_unconfirmed: usize,
    end: Option<End>,
    registration: Registration,
    moves: mpsc::Receiver<MoveRequest>,
    /// A planned move (rebalancing) under way: consumers are cancelled on the old node and
    /// client frames other than acks parked until every publish is confirmed, every request
    /// answered and every delivery acked.
    moving: Option<PlannedMove>,
    /// Client frames held back while a planned move is under way, in order.
    parked: VecDeque<Frame>,
    /// While nodes keep refusing publishes (no confirm since): when the session was last set up
    /// again for it, and how long to wait before the next time.
    refusal_refresh: Option<(std::time::Instant, Duration)>,
}

pub async fn serve(context: Context, client: TcpStream) {
    let Some(opened) = handshake::run(&context, client).await else {
        return;
    };
    let handshake::Opened {
        client_reader,
        client_writer,
        client_heartbeat,
        start_ok,
        open,
        upstream,
    } = opened;
    let (registration, moves) = Registry::register(&context.listener);
    registration.slot.set_node(Some(&upstream.node().name));
    let mut session = Session {
        listener: context.listener.clone(),
        client_addr: context.client_addr,
        client_reader,
        client_writer,
        client_heartbeat,
        client_open: true,
        start_ok,
        open,
        declarations: Declarations::default(),
        channels: BTreeMap::new(),
        node: Some(upstream),
        delivering: HashMap::new(),
        establishing: None,
        failover: None,
        client_closing: None,
        client_close_sent: false,
        node_closed: false,
        blocked: false,
        reported_unconfirmed: 0,
        end: None,
        registration,
        moves,
        moving: None,
        parked: VecDeque::new(),
        refusal_refresh: None,
    };
    let end = session.run(&context).await;
    session.close(end).await;
}

/// Closes a node connection the session leaves though it works: the node answers close-ok in
/// the background, and nothing it sends now matters (its unacked deliveries are requeued).
fn close_in_background(mut node: Upstream, why: &'static str) {
    tokio::spawn(async move {
        node.send(0, &connection_close(200, why));
        let _ = tokio::time::timeout(FINAL_FLUSH, node.writer.flush()).await;
        let _ = tokio::time::timeout(FINAL_FLUSH, async {
            while let Some(Ok(_)) = node.reader.next().await {}
        })
        .await;
    });
}

fn method_frame(channel: u16, method: &AMQPClass) -> Frame {
    Frame::method(channel, method::encode(method))
}

fn connection_close(code: u16, text: &str) -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: code,
        reply_text: text.chars().take(250).collect::<String>().into(),
        class_id: 0,
        method_id: 0,
    }))
}

/// The content method (publish, deliver, get-ok, return) with the routing key translated, if it
/// goes through the default exchange (where the routing key is a queue name) and `translate`
/// changes it.
fn with_routing_key(payload: &[u8], translate: impl Fn(&str) -> String) -> Option<bytes::Bytes> {
    let mut decoded = method::decode(payload).ok()?;
    let (exchange, key) = match &mut decoded {
        AMQPClass::Basic(basic::AMQPMethod::Publish(m)) => (&m.exchange, &mut m.routing_key),
        AMQPClass::Basic(basic::AMQPMethod::Deliver(m)) => (&m.exchange, &mut m.routing_key),
        AMQPClass::Basic(basic::AMQPMethod::GetOk(m)) => (&m.exchange, &mut m.routing_key),
        AMQPClass::Basic(basic::AMQPMethod::Return(m)) => (&m.exchange, &mut m.routing_key),
        _ => return None,
    };
    if !exchange.as_str().is_empty() {
        return None;
    }
    let translated = translate(key.as_str());
    if translated == key.as_str() {
        return None;
    }
    // Both names came as short strings, so the translation fits one.
    *key = translated.into();
    Some(method::encode(&decoded))
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

/// Whether a client request gets an answer from the node (a synchronous method sent without
/// `nowait`).
fn expects_answer(method: &AMQPClass) -> bool {
    use AMQPClass as C;
    match method {
        C::Channel(
            chan::AMQPMethod::Open(_) | chan::AMQPMethod::Flow(_) | chan::AMQPMethod::Close(_),
        ) => true,
        C::Exchange(exchange::AMQPMethod::Declare(m)) => !m.nowait,
        C::Exchange(exchange::AMQPMethod::Delete(m)) => !m.nowait,
        C::Exchange(exchange::AMQPMethod::Bind(m)) => !m.nowait,
        C::Exchange(exchange::AMQPMethod::Unbind(m)) => !m.nowait,
        C::Queue(queue::AMQPMethod::Declare(m)) => !m.nowait,
        C::Queue(queue::AMQPMethod::Bind(m)) => !m.nowait,
        C::Queue(queue::AMQPMethod::Purge(m)) => !m.nowait,
        C::Queue(queue::AMQPMethod::Delete(m)) => !m.nowait,
        C::Queue(queue::AMQPMethod::Unbind(_)) => true,
        C::Basic(
            basic::AMQPMethod::Qos(_) | basic::AMQPMethod::Get(_) | basic::AMQPMethod::Recover(_),
        ) => true,
        C::Basic(basic::AMQPMethod::Consume(m)) => !m.nowait,
        C::Basic(basic::AMQPMethod::Cancel(m)) => !m.nowait,
        C::Confirm(confirm::AMQPMethod::Select(m)) => !m.nowait,
        C::Tx(_) => true,
        _ => false,
    }
}

impl Session {
    async fn run(&mut self, context: &Context) -> End {
        loop {
            self.release_held_closes();
            self.report_unconfirmed();
            self.advance_move();
            self.report_placement();
            if let Some(end) = self.end.take() {
                return end;
            }
            if !self.client_open && self.establishing.is_none() && self.unconfirmed() == 0 {
                return End::ClientGone;
            }
            let settings = &self.listener.session;
            let node_pending = self.node.as_ref().map_or(0, |n| n.writer.pending());
            let read_client = self.client_open
                && self.establishing.is_none()
                && node_pending < HIGH_WATER
                && self.client_writer.pending() < HIGH_WATER
                && self.unconfirmed() < settings.max_unconfirmed
                && self.unconfirmed_bytes() < settings.max_unconfirmed_bytes
                && self.parked.len() < PARK_LIMIT;
            let read_node = self.client_writer.pending() < HIGH_WATER;
            let client_beat_due = self
                .client_heartbeat
                .map(|every| self.client_writer.last_write + every / 2);
            // Not while failing over: the client is not read then, so its silence means nothing.
            let client_silence = self
                .client_heartbeat
                .filter(|_| self.client_open && self.establishing.is_none())
                .map(|every| self.client_reader.last_read + every * 2 + Duration::from_secs(1));
            let node_beat_due = self.node.as_ref().and_then(|n| {
                n.tune
                    .heartbeat
                    .map(|every| n.writer.last_write + every / 2)
            });
            let node_silence = self
                .node
                .as_ref()
                .and_then(|n| n.tune.heartbeat.map(|every| n.reader.last_read + every * 3));
            let retry_due = self
                .node
                .as_ref()
                .and_then(|_| {
                    self.channels
                        .values()
                        .filter_map(|c| c.state.next_retry())
                        .min()
                })
                .map(Instant::from_std);
            let move_due = self.moving.as_ref().map(PlannedMove::wake_at);

            tokio::select! {
                item = self.client_reader.next(), if read_client => self.on_client(item),
                event = read_or_write(self.node.as_mut().map(|n| (&mut n.reader, &mut n.writer)), read_node) => match event {
                    LegEvent::Read(item) => self.on_node(item),
                    LegEvent::Wrote(Ok(())) => {}
                    LegEvent::Wrote(Err(e)) => self.start_failover("write_error", &e.to_string()),
                },
                result = self.client_writer.write_some(), if self.client_writer.pending() > 0 => {
                    if let Err(e) = result {
                        return End::ClientError(format!("write to client: {e}"));
                    }
                }
                result = established(&mut self.establishing) => {
                    self.establishing = None;
                    self.on_established(result);
                }
                _ = timer(client_beat_due) => {
                    if self.client_writer.pending() == 0 {
                        self.client_writer.queue(&Frame::heartbeat());
                    }
                }
                _ = timer(client_silence) => {
                    return End::ClientError("missed heart-beats from the client".into());
                }
                _ = timer(node_beat_due) => {
                    if let Some(node) = &mut self.node
                        && node.writer.pending() == 0
                    {
                        node.writer.queue(&Frame::heartbeat());
                    }
                }
                _ = timer(node_silence) => {
                    self.start_failover("heartbeat", "the node stopped heart-beating");
                }
                _ = timer(retry_due) => {
                    self.send_due_retries();
                }
                Some(request) = self.moves.recv(), if self.moving.is_none() => {
                    self.begin_move(request);
                }
                _ = timer(move_due) => {
                    // advance_move looks at the clock on the next turn.
                }
                _ = context.close.cancelled() => {
                    self.send_client(&method_frame(0, &connection_close(
                        CONNECTION_FORCED, "CONNECTION_FORCED - tether is shutting down")));
                    return End::Shutdown;
                }
            }
        }
    }

    fn unconfirmed(&self) -> usize {
        self.channels
            .values()
            .map(|c| c.state.unconfirmed_count())
            .sum()
    }

    fn unconfirmed_bytes(&self) -> usize {
        self.channels
            .values()
            .map(|c| c.state.unconfirmed_bytes())
            .sum()
    }

    fn report_unconfirmed(&mut self) {
        let now = self.unconfirmed();
        if now != self.reported_unconfirmed {
            self.listener
                .metrics
                .unconfirmed
                .increment(now as f64 - self.reported_unconfirmed as f64);
            self.reported_unconfirmed = now;
        }
    }

    fn send_client(&mut self, frame: &Frame) {
        self.client_writer.queue(frame);
    }

    fn send_node(&mut self, frame: &Frame) {
        if let Some(node) = &mut self.node {
            node.writer.queue(frame);
        }
    }

    /// Ends the session with a connection error for the client, as a broker would send it.
    fn client_error(&mut self, code: u16, text: &str) {
        self.send_client(&method_frame(0, &connection_close(code, text)));
        self.end = Some(End::ClientError(format!("{code} {text}")));
    }

    // ---- from the client ------------------------------------------------------------------

    fn on_client(&mut self, item: Option<Result<Frame, FrameError>>) {
        let frame = match item {
            None => {
                // Gone without connection.close: what it published is still delivered (but not
                // its open transactions, which a broker would roll back), then the session ends.
                self.client_open = false;
                self.roll_back_transactions();
                return;
            }
            Some(Err(FrameError::Io(e))) => {
                self.client_open = false;
                self.roll_back_transactions();
                tracing::debug!(client = %self.client_addr, error = %e, "client read failed");
                return;
            }
            Some(Err(e)) => {
                return self.client_error(e.reply_code(), &format!("FRAME_ERROR - {e}"));
            }
            Some(Ok(frame)) => frame,
        };
        if self.moving.is_some() && !is_ack_or_heartbeat(&frame) {
            // Goes to the new node once the move is done; acks still go to the old one, whose
            // deliveries they settle.
            self.parked.push_back(frame);
            return;
        }
        match frame.kind {
            FrameType::Heartbeat => {}
            FrameType::Header | FrameType::Body => self.client_content(frame),
            FrameType::Method => self.client_method(frame),
        }
    }

    fn roll_back_transactions(&mut self) {
        for session in self.channels.values_mut() {
            session.state.rollback();
        }
    }

    fn client_content(&mut self, frame: Frame) {
        let max_body = self.listener.session.max_message_size;
        let channel = frame.channel;
        let outcome = match self
            .channels
            .get_mut(&channel)
            .and_then(|c| c.publishing.as_mut())
        {
            Some(assembly) => assembly.add(frame, max_body),
            None => Err(AssemblyError::Stray(channel)),
        };
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                let assembly = self
                    .channels
                    .get_mut(&channel)
                    .and_then(|c| c.publishing.take());
                if let Some(assembly) = assembly {
                    self.publish(channel, assembly.into_frames());
                }
            }
            Err(e) => self.client_error(e.reply_code(), &e.to_string()),
        }
    }

    /// A complete publish: kept until confirmed and sent on (in a transaction: kept until the
    /// commit).
    fn publish(&mut self, channel: u16, frames: Vec<Frame>) {
        let Some(session) = self.channels.get_mut(&channel) else {
            return;
        };
        if session.state.tx {
            // Sent with the transaction's commit.
            session.state.record_publish(Publish::new(frames));
            return;
        }
        let turn_on_confirms = session.state.record_publish(Publish::new(frames.clone()));
        if turn_on_confirms {
            let select = AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: true,
            }));
            self.send_node(&method_frame(channel, &select));
        }
        let frames = self.publish_for_node(frames);
        for frame in &frames {
            self.send_node(frame);
        }
    }

    /// Sends again the publishes a node refused whose pause is over.
    fn send_due_retries(&mut self) {
        let now = std::time::Instant::now();
        let mut due = Vec::new();
        for session in self.channels.values_mut() {
            due.extend(session.state.due_retries(now));
        }
        for frames in due {
            for frame in self.publish_for_node(frames) {
                self.send_node(&frame);
            }
        }
    }

    /// A publish as the current node must see it: a server-named queue used as routing key on
    /// the default exchange, or as reply-to, gets the node's name.
    fn publish_for_node(&self, mut frames: Vec<Frame>) -> Vec<Frame> {
        if !self.declarations.has_renames() {
            return frames;
        }
        let names = &self.declarations;
        if let Some(payload) =
            with_routing_key(&frames[0].payload, |key| names.node_name(key).to_owned())
        {
            frames[0] = Frame::method(frames[0].channel, payload);
        }
        if let Some(header) = frames.get(1)
            && let Ok(Some(reply_to)) = content::reply_to(&header.payload)
        {
            let node_name = self.declarations.node_name(reply_to).to_owned();
            if node_name != reply_to
                && let Ok((peek, mut properties)) = content::decode_properties(&header.payload)
            {
                properties = properties.with_reply_to(node_name.into());
                frames[1] = Frame::header(
                    header.channel,
                    content::encode_header(peek.class_id, peek.body_size, &properties),
                );
            }
        }
        frames
    }

    fn client_method(&mut self, frame: Frame) {
        let channel = frame.channel;
        let Some(class_method) = frame.class_method() else {
            return self.client_error(reply::SYNTAX_ERROR, "SYNTAX_ERROR - method frame too short");
        };
        if channel == 0 {
            return self.client_connection_method(frame, class_method);
        }
        if class_method == id::CHANNEL_OPEN {
            return self.client_channel_open(frame);
        }
        let Some(session) = self.channels.get_mut(&channel) else {
            return self.client_error(
                reply::CHANNEL_ERROR,
                &format!("CHANNEL_ERROR - expected 'channel.open' on channel {channel}"),
            );
        };
        if session.publishing.is_some() {
            return self.client_error(
                reply::UNEXPECTED_FRAME,
                "UNEXPECTED_FRAME - expected content after basic.publish",
            );
        }
        if session.closed_by_node && class_method != id::CHANNEL_CLOSE_OK {
            // The channel is closing; the spec has the peer drop everything but close-ok.
            return;
        }
        match class_method {
            id::BASIC_PUBLISH => {
                if let Err(e) = method::peek_publish(&frame.payload) {
                    return self.client_error(
                        e.reply_code(),
                        &format!("SYNTAX_ERROR - basic.publish: {e}"),
                    );
                }
                session.publishing = Some(Assembly::start(frame));
            }
            id::BASIC_ACK | id::BASIC_NACK | id::BASIC_REJECT => {
                self.client_ack(frame, class_method)
            }
            _ => match method::decode(&frame.payload) {
                Ok(decoded) => self.client_request(frame, decoded),
                Err(e) => self.client_error(e.reply_code(), &format!("SYNTAX_ERROR - {e}")),
            },
        }
    }

    fn client_connection_method(&mut self, frame: Frame, class_method: (u16, u16)) {
        match class_method {
            id::CONNECTION_CLOSE => {
                // Open transactions die with the connection; the close is sent on once every
                // publish is confirmed (see release_held_closes).
                self.roll_back_transactions();
                self.client_closing = Some(frame);
            }
            id::CONNECTION_CLOSE_OK if self.node_closed => {
                self.end = Some(End::Forwarded("the node closed the connection".into()));
            }
            id::CONNECTION_CLOSE_OK => {}
            _ => self.client_error(
                reply::COMMAND_INVALID,
                &format!(
                    "COMMAND_INVALID - {} is not expected now",
                    id::MethodName(class_method)
                ),
            ),
        }
    }

    fn client_channel_open(&mut self, frame: Frame) {
        let channel = frame.channel;
        if self.channels.contains_key(&channel) {
            return self.client_error(
                reply::CHANNEL_ERROR,
                &format!("CHANNEL_ERROR - channel {channel} is already open"),
            );
        }
        let mut session = ChannelSession::new(channel);
        let open = AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {}));
        session.awaiting.push_back((open, frame.clone()));
        self.channels.insert(channel, session);
        self.send_node(&frame);
    }

    fn client_ack(&mut self, frame: Frame, class_method: (u16, u16)) {
        let ack = match method::peek_ack(&frame.payload) {
            Ok(ack) => ack,
            Err(e) => return self.client_error(e.reply_code(), &format!("SYNTAX_ERROR - {e}")),
        };
        let Some(session) = self.channels.get_mut(&frame.channel) else {
            return;
        };
        if session.state.tx {
            // Sent with the transaction's commit.
            session.state.tx_acks.push((class_method, ack));
            return;
        }
        self.send_ack(frame.channel, class_method, ack);
    }

    /// An ack, nack or reject in the client's tags, sent in the node's, or swallowed if it is
    /// for a failed node's delivery.
    fn send_ack(&mut self, channel: u16, class_method: (u16, u16), ack: method::Ack) {
        let Some(session) = self.channels.get_mut(&channel) else {
            return;
        };
        session.state.settle(ack.delivery_tag, ack.multiple);
        match session.state.upstream_ack(ack) {
            Some(upstream) => {
                let payload = method::encode_ack(class_method, upstream);
                self.send_node(&Frame::method(channel, payload));
            }
            None => self.listener.metrics.stale_acks.increment(1),
        }
    }

    /// Every other client method: recorded as needed, queue names translated, sent on.
    fn client_request(&mut self, frame: Frame, decoded: AMQPClass) {
        let channel = frame.channel;
        let renames = self.declarations.has_renames();
        let Some(session) = self.channels.get_mut(&channel) else {
            return;
        };
        let mut rewritten: Option<AMQPClass> = None;
        match &decoded {
            AMQPClass::Channel(chan::AMQPMethod::Close(_)) => {
                // An open transaction dies with its channel; what was published is sent on once
                // the channel's publishes are confirmed (see release_held_closes).
                session.state.rollback();
                session.closing = Some(frame);
                return;
            }
            AMQPClass::Channel(chan::AMQPMethod::CloseOk(_)) => {
                let by_node = session.closed_by_node;
                self.channels.remove(&channel);
                if by_node && self.node.is_some() {
                    self.send_node(&frame);
                }
                return;
            }
            AMQPClass::Basic(basic::AMQPMethod::Qos(qos)) => {
                // Copied: kept for the life of the channel, it must not pin a read buffer.
                session
                    .state
                    .set_qos(qos.global, bytes::Bytes::copy_from_slice(&frame.payload));
            }
            AMQPClass::Confirm(confirm::AMQPMethod::Select(_)) => {
                if session.state.tx {
                    return self.client_error(
                        reply::COMMAND_INVALID,
                        "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
                    );
                }
                session.state.client_selected_confirms();
            }
            AMQPClass::Tx(method) => return self.client_transaction(channel, method),
            AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)) => {
                session
                    .state
                    .consumers
                    .retain(|c| c.tag != cancel.consumer_tag.as_str());
            }
            _ => {}
        }
        if renames {
            rewritten = self.with_node_names(&decoded);
        }
        let Some(session) = self.channels.get_mut(&channel) else {
            return;
        };
        if !expects_answer(&decoded) {
            self.record_unanswered(&decoded);
        } else {
            session.awaiting.push_back((decoded, frame.clone()));
        }
        match rewritten {
            Some(method) => self.send_node(&method_frame(channel, &method)),
            None => self.send_node(&frame),
        }
    }

    /// tx.select, tx.commit, tx.rollback: answered by tether, which runs transactions over
    /// confirms (see [`channel`]).
    fn client_transaction(&mut self, channel: u16, method: &tx::AMQPMethod) {
        let Some(session) = self.channels.get_mut(&channel) else {
            return;
        };
        let reply = match method {
            tx::AMQPMethod::Select(_) => {
                if session.state.client_confirm {
                    return self.client_error(
                        reply::COMMAND_INVALID,
                        "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
                    );
                }
                if session.state.select_tx() {
                    let select = AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                        nowait: true,
                    }));
                    self.send_node(&method_frame(channel, &select));
                }
                AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {}))
            }
            tx::AMQPMethod::Commit(_) if session.state.tx => {
                let publishes = session.state.commit();
                let acks: Vec<((u16, u16), method::Ack)> =
                    session.state.tx_acks.drain(..).collect();
                for frames in publishes {
                    for frame in self.publish_for_node(frames) {
                        self.send_node(&frame);
                    }
                }
                for (class_method, ack) in acks {
                    self.send_ack(channel, class_method, ack);
                }
                self.commit_if_confirmed(channel);
                return;
            }
            tx::AMQPMethod::Rollback(_) if session.state.tx => {
                session.state.rollback();
                AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {}))
            }
            _ => {
                return self.client_error(
                    reply::COMMAND_INVALID,
                    "PRECONDITION_FAILED - channel is not transactional",
                );
            }
        };
        self.send_client(&method_frame(channel, &reply));
    }

    /// Answers a pending tx.commit once its publishes are all confirmed.
    fn commit_if_confirmed(&mut self, channel: u16) {
        let confirmed = self
            .channels
            .get_mut(&channel)
            .is_some_and(|s| s.state.commit_confirmed());
        if confirmed {
            let ok = AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {}));
            self.send_client(&method_frame(channel, &ok));
        }
    }

    /// Requests sent with `nowait` are recorded as sent: no answer will confirm them.
    fn record_unanswered(&mut self, method: &AMQPClass) {
        match method {
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(m)) => {
                self.declarations.exchange_declared(m.clone())
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(m)) => {
                self.declarations.exchange_deleted(m.exchange.as_str())
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(m)) => {
                self.declarations.exchange_bound(m.clone())
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(m)) => {
                self.declarations.exchange_unbound(m)
            }
            AMQPClass::Queue(queue::AMQPMethod::Declare(m)) if !m.queue.as_str().is_empty() => self
                .declarations
                .queue_declared(m.clone(), &m.queue.to_string()),
            AMQPClass::Queue(queue::AMQPMethod::Bind(m)) => {
                self.declarations.queue_bound(m.clone())
            }
            AMQPClass::Queue(queue::AMQPMethod::Delete(m)) => self.queue_deleted(m.queue.as_str()),
            _ => {}
        }
    }

    fn queue_deleted(&mut self, name: &str) {
        self.declarations.queue_deleted(name);
        for session in self.channels.values_mut() {
            session.state.consumers.retain(|c| c.queue != name);
        }
    }

    /// The method with queue names the client knows replaced by the current node's, if any
    /// needs replacing.
    fn with_node_names(&self, method: &AMQPClass) -> Option<AMQPClass> {
        let names = &self.declarations;
        let rename =
            |name: &amq_protocol::types::ShortString| -> Option<amq_protocol::types::ShortString> {
                let node = names.node_name(name.as_str());
                (node != name.as_str()).then(|| node.into())
            };
        let mut method = method.clone();
        let changed = match &mut method {
            AMQPClass::Queue(queue::AMQPMethod::Declare(m)) => {
                rename(&m.queue).map(|n| m.queue = n)
            }
            AMQPClass::Queue(queue::AMQPMethod::Bind(m)) => rename(&m.queue).map(|n| m.queue = n),
            AMQPClass::Queue(queue::AMQPMethod::Unbind(m)) => rename(&m.queue).map(|n| m.queue = n),
            AMQPClass::Queue(queue::AMQPMethod::Purge(m)) => rename(&m.queue).map(|n| m.queue = n),
            AMQPClass::Queue(queue::AMQPMethod::Delete(m)) => rename(&m.queue).map(|n| m.queue = n),
            AMQPClass::Basic(basic::AMQPMethod::Consume(m)) => {
                rename(&m.queue).map(|n| m.queue = n)
            }
            AMQPClass::Basic(basic::AMQPMethod::Get(m)) => rename(&m.queue).map(|n| m.queue = n),
            _ => None,
        };
        changed.map(|_| method)
    }

    /// Sends on held channel and connection closes whose publishes are all confirmed: a broker
    /// may drop unconfirmed publishes of a channel or connection being closed.
    fn release_held_closes(&mut self) {
        if self.node.is_none() {
            return;
        }
        let mut frames = Vec::new();
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
                session.awaiting.push_back((decoded, close.clone()));
                frames.push(close.clone());
            }
        }
        if let Some(close) = &self.client_closing
            && !self.client_close_sent
            && self
                .channels
                .values()
                .all(|c| c.state.unconfirmed_count() == 0)
        {
            self.client_close_sent = true;
            frames.push(close.clone());
        }
        for frame in frames {
            self.send_node(&frame);
        }
    }

    // ---- from the node --------------------------------------------------------------------

    fn on_node(&mut self, item: Option<Result<Frame, FrameError>>) {
        let frame = match item {
            None => return self.start_failover("closed", "the node closed the connection"),
            Some(Err(FrameError::Io(e))) => return self.start_failover("reset", &e.to_string()),
            Some(Err(e)) => return self.start_failover("protocol_error", &e.to_string()),
            Some(Ok(frame)) => frame,
        };
        match frame.kind {
            FrameType::Heartbeat => {}
            FrameType::Header | FrameType::Body => self.node_content(frame),
            FrameType::Method => self.node_method(frame),
        }
    }

    fn node_content(&mut self, frame: Frame) {
        let max_body = self.listener.session.max_message_size;
        let channel = frame.channel;
        let outcome = match self.delivering.get_mut(&channel) {
            Some(assembly) => assembly.add(frame, max_body),
            None => Err(AssemblyError::Stray(channel)),
        };
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                if let Some(assembly) = self.delivering.remove(&channel) {
                    self.deliver(assembly.into_frames());
                }
            }
            Err(e) => self.start_failover("protocol_error", &e.to_string()),
        }
    }

    /// A complete delivery, get-ok or return from the node, passed to the client with the
    /// client's delivery tag and queue names.
    fn deliver(&mut self, mut frames: Vec<Frame>) {
        let method_frame_ = &frames[0];
        let channel = method_frame_.channel;
        let class_method = method_frame_.class_method();
        let renames = self.declarations.has_renames();
        let peeked = match class_method {
            Some(id::BASIC_DELIVER) => method::peek_deliver(&method_frame_.payload)
                .map(|d| Some((d.delivery_tag, d.tag_offset))),
            Some(id::BASIC_GET_OK) => method::peek_get_ok(&method_frame_.payload)
                .map(|g| Some((g.delivery_tag, g.tag_offset))),
            _ => Ok(None),
        };
        let Ok(tag) = peeked else {
            return self.start_failover("protocol_error", "undecodable delivery");
        };
        if let Some((upstream_tag, offset)) = tag
            && let Some(session) = self.channels.get_mut(&channel)
        {
            let client_tag = session.state.client_tag(upstream_tag);
            let settled = class_method == Some(id::BASIC_GET_OK)
                || (session.state.consumers.iter().any(|c| c.method.no_ack)
                    && method::peek_deliver(&frames[0].payload).is_ok_and(|d| {
                        session
                            .state
                            .consumers
                            .iter()
                            .any(|c| c.method.no_ack && c.tag == d.consumer_tag)
                    }));
            if settled {
                // Not waited for by a planned move: the client will not ack it (a get-ok is
                // rare enough that its ack is left to the broker's redelivery).
                session.state.delivered_settled(client_tag);
            }
            if client_tag != upstream_tag {
                frames[0] = Frame::method(
                    channel,
                    method::with_delivery_tag(&frames[0].payload, offset, client_tag),
                );
            }
        }
        if renames {
            let names = &self.declarations;
            if let Some(payload) =
                with_routing_key(&frames[0].payload, |key| names.client_name(key).to_owned())
            {
                frames[0] = Frame::method(channel, payload);
            }
        }
        for frame in &frames {
            self.send_client(frame);
        }
    }

    fn node_method(&mut self, frame: Frame) {
        let channel = frame.channel;
        let Some(class_method) = frame.class_method() else {
            return self.start_failover("protocol_error", "method frame too short");
        };
        match class_method {
            id::BASIC_DELIVER | id::BASIC_RETURN => {
                self.delivering.insert(channel, Assembly::start(frame));
                return;
            }
            id::BASIC_GET_OK => {
                if let Some(session) = self.channels.get_mut(&channel) {
                    session.awaiting.pop_front();
                }
                self.delivering.insert(channel, Assembly::start(frame));
                return;
            }
            id::BASIC_ACK | id::BASIC_NACK => return self.node_confirm(frame, class_method),
            _ => {}
        }
        let decoded = match method::decode(&frame.payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                return self.start_failover("protocol_error", &format!("undecodable method: {e}"));
            }
        };
        if channel == 0 {
            return self.node_connection_method(frame, decoded);
        }
        match &decoded {
            AMQPClass::Channel(chan::AMQPMethod::Close(close)) => {
                // A channel error, the client's doing: passed on as sent. What was kept for the
                // channel dies with it, as it would without tether.
                if let Some(session) = self.channels.get_mut(&channel) {
                    session.closed_by_node = true;
                    session.awaiting.clear();
                    tracing::debug!(client = %self.client_addr, channel, code = close.reply_code,
                        text = %close.reply_text, "the node closed a channel");
                }
                self.send_client(&frame);
                return;
            }
            AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)) => {
                if let Some(session) = self.channels.get_mut(&channel) {
                    session
                        .state
                        .consumers
                        .retain(|c| c.tag != cancel.consumer_tag.as_str());
                }
                self.send_client(&frame);
                return;
            }
            AMQPClass::Channel(chan::AMQPMethod::Flow(_)) => {
                self.send_client(&frame);
                return;
            }
            _ => {}
        }
        if let Some(session) = self.channels.get_mut(&channel)
            && session.own_cancels > 0
            && session.awaiting.len() <= session.own_cancels
        {
            // The cancel-ok of a planned move's basic.cancel: tether's, not the client's.
            session.awaiting.pop_front();
            session.own_cancels -= 1;
            return;
        }
        // An answer to the oldest request the client sent on this channel.
        let request = self
            .channels
            .get_mut(&channel)
            .and_then(|s| s.awaiting.pop_front());
        let forward = match request {
            Some((request, _)) => self.answered(channel, request, decoded),
            None => Some(frame.clone()),
        };
        if let Some(forward) = forward {
            self.send_client(&forward);
        }
    }

    /// Records what an answer confirms; returns the answer as the client must get it.
    fn answered(&mut self, channel: u16, request: AMQPClass, answer: AMQPClass) -> Option<Frame> {
        let answer_frame = |answer: &AMQPClass| method_frame(channel, answer);
        match (request, answer) {
            (
                AMQPClass::Queue(queue::AMQPMethod::Declare(declare)),
                AMQPClass::Queue(queue::AMQPMethod::DeclareOk(mut ok)),
            ) => {
                let node_name = ok.queue.to_string();
                let client_name = if declare.queue.as_str().is_empty() {
                    node_name.clone()
                } else {
                    declare.queue.to_string()
                };
                self.declarations.queue_declared(declare, &client_name);
                ok.queue = client_name.into();
                Some(answer_frame(&AMQPClass::Queue(
                    queue::AMQPMethod::DeclareOk(ok),
                )))
            }
            (AMQPClass::Queue(queue::AMQPMethod::Bind(bind)), answer) => {
                self.declarations.queue_bound(bind);
                Some(answer_frame(&answer))
            }
            (AMQPClass::Queue(queue::AMQPMethod::Unbind(unbind)), answer) => {
                self.declarations.queue_unbound(&unbind);
                Some(answer_frame(&answer))
            }
            (AMQPClass::Queue(queue::AMQPMethod::Delete(delete)), answer) => {
                self.queue_deleted(delete.queue.as_str());
                Some(answer_frame(&answer))
            }
            (AMQPClass::Exchange(exchange::AMQPMethod::Declare(declare)), answer) => {
                self.declarations.exchange_declared(declare);
                Some(answer_frame(&answer))
            }
            (AMQPClass::Exchange(exchange::AMQPMethod::Delete(delete)), answer) => {
                self.declarations.exchange_deleted(delete.exchange.as_str());
                Some(answer_frame(&answer))
            }
            (AMQPClass::Exchange(exchange::AMQPMethod::Bind(bind)), answer) => {
                self.declarations.exchange_bound(bind);
                Some(answer_frame(&answer))
            }
            (AMQPClass::Exchange(exchange::AMQPMethod::Unbind(unbind)), answer) => {
                self.declarations.exchange_unbound(&unbind);
                Some(answer_frame(&answer))
            }
            (
                AMQPClass::Basic(basic::AMQPMethod::Consume(mut consume)),
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)),
            ) => {
                let queue = consume.queue.to_string();
                consume.consumer_tag = ok.consumer_tag.clone();
                if let Some(session) = self.channels.get_mut(&channel) {
                    session.state.consumers.push(Consumer {
                        tag: ok.consumer_tag.to_string(),
                        queue,
                        method: consume,
                    });
                }
                Some(answer_frame(&AMQPClass::Basic(
                    basic::AMQPMethod::ConsumeOk(ok),
                )))
            }
            (AMQPClass::Channel(chan::AMQPMethod::Close(_)), answer) => {
                self.channels.remove(&channel);
                Some(answer_frame(&answer))
            }
            (_, answer) => Some(answer_frame(&answer)),
        }
    }

    fn node_connection_method(&mut self, frame: Frame, decoded: AMQPClass) {
        match decoded {
            AMQPClass::Connection(connection::AMQPMethod::Close(close))
                if let Some(reason) = node_fault(&close) =>
            {
                let detail = format!("{} {}", close.reply_code, close.reply_text);
                let close_ok =
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
                self.send_node(&method_frame(0, &close_ok));
                self.start_failover(reason, &detail);
            }
            AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
                // The client's doing (a connection error): passed on as the broker sent it.
                let close_ok =
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
                self.send_node(&method_frame(0, &close_ok));
                self.send_client(&frame);
                self.node_closed = true;
                tracing::debug!(client = %self.client_addr, code = close.reply_code,
                    text = %close.reply_text, "the node closed the connection");
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                self.send_client(&frame);
                self.end = Some(End::Finished);
            }
            AMQPClass::Connection(connection::AMQPMethod::Blocked(_)) => {
                self.blocked = true;
                self.send_client(&frame);
            }
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)) => {
                self.blocked = false;
                self.send_client(&frame);
            }
            _ => self.send_client(&frame),
        }
    }

    fn node_confirm(&mut self, frame: Frame, class_method: (u16, u16)) {
        let Ok(confirm) = method::peek_ack(&frame.payload) else {
            return self.start_failover("protocol_error", "undecodable confirm");
        };
        let channel = frame.channel;
        let Some(session) = self.channels.get_mut(&channel) else {
            return;
        };
        let now = std::time::Instant::now();
        let (confirms, given_up) = session.state.upstream_confirm(
            confirm,
            class_method == id::BASIC_ACK,
            now,
            self.listener.session.failover_timeout,
        );
        let refresh = if class_method == id::BASIC_ACK {
            self.refusal_refresh = None;
            false
        } else {
            tracing::debug!(listener = %self.listener.config.name, client = %self.client_addr,
                channel, tag = confirm.delivery_tag, multiple = confirm.multiple,
                given_up = given_up.len(), "the node refused publishes");
            session.state.refused_for(now) >= REFUSED_REFRESH_AFTER
                && self
                    .refusal_refresh
                    .is_none_or(|(last, wait)| now.duration_since(last) >= wait)
        };
        let in_transaction = session.state.tx;
        if !given_up.is_empty() && in_transaction {
            // A commit that cannot be honoured: the client must not get commit-ok.
            return self.client_error(
                reply::INTERNAL_ERROR,
                &format!(
                    "INTERNAL_ERROR - the broker kept refusing {} messages of a transaction",
                    given_up.len()
                ),
            );
        }
        if !given_up.is_empty() && !session.state.client_confirm {
            tracing::error!(listener = %self.listener.config.name, client = %self.client_addr,
                channel, lost = given_up.len(),
                "the node kept refusing publishes of a client that asked no confirms; they are lost");
        }
        for confirm in confirms {
            let ack = method::Ack {
                delivery_tag: confirm.seq,
                multiple: confirm.multiple,
                requeue: false,
            };
            let kind = if confirm.ack {
                id::BASIC_ACK
            } else {
                id::BASIC_NACK
            };
            self.send_client(&Frame::method(channel, method::encode_ack(kind, ack)));
        }
        self.commit_if_confirmed(channel);
        if refresh {
            self.refresh_for_refusals(channel);
        }
    }

    // ---- failover -------------------------------------------------------------------------

    /// The node failed: drop it, and set the session up on another live node while the client
    /// waits (heart-beaten, not read).
    fn start_failover(&mut self, reason: &'static str, detail: &str) {
        let Some(node) = self.node.take() else { return };
        let from = crate::session::node_failed(
            &self.listener,
            self.client_addr,
            ENDPOINT,
            node.node(),
            reason,
            detail,
            self.moving.take(),
        );
        drop(node);
        self.leave_node(reason, from, None);
    }

    /// The node keeps refusing a channel's publishes: set the session up again (the balancer
    /// picks the node, maybe the same one) so that they go out on fresh channels. The node is
    /// not failed, only left, as a planned move leaves it.
    fn refresh_for_refusals(&mut self, channel: u16) {
        let Some(node) = self.node.take() else { return };
        let from = node.node().name.clone();
        tracing::warn!(listener = %self.listener.config.name, client = %self.client_addr,
            node = %from, channel, "the node keeps refusing publishes; setting the session up again");
        self.listener.metrics.failover(REFUSED);
        if let Some(moving) = self.moving.take() {
            moving.finish(MoveOutcome::NotMoved(
                "its node kept refusing publishes".into(),
            ));
        }
        let wait = self
            .refusal_refresh
            .map_or(REFUSED_REFRESH_AFTER, |(_, wait)| wait * 2)
            .min(REFUSED_REFRESH_MAX_GAP);
        self.refusal_refresh = Some((std::time::Instant::now(), wait));
        close_in_background(node, "tether: opening the session again");
        self.leave_node(REFUSED, from, None);
    }

    /// Leaves the node (already dropped or closing) and connects to another one — `preferred`
    /// for a planned move, the balancer's choice otherwise — to replay the session there.
    fn leave_node(&mut self, reason: &'static str, from: String, preferred: Option<String>) {
        self.registration.slot.set_node(None);
        for session in self.channels.values_mut() {
            // A planned move's own cancels are not asked again of the new node.
            let keep = session.awaiting.len().saturating_sub(session.own_cancels);
            session.awaiting.truncate(keep);
            session.own_cancels = 0;
        }
        // A delivery cut short is dropped: the broker requeues it (it was not acked).
        self.delivering.clear();
        self.declarations.failover();
        // Channels being closed need no new node: the client's close is answered by tether.
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
                let close_ok = AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {}));
                self.send_client(&method_frame(id, &close_ok));
            }
        }
        for session in self.channels.values_mut() {
            session.state.failover();
            session.close_sent = false;
        }
        if self.client_close_sent && self.unconfirmed() == 0 {
            let close_ok =
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
            self.send_client(&method_frame(0, &close_ok));
            self.end = Some(End::Finished);
            return;
        }
        self.client_close_sent = false;
        self.failover = Some(Failover {
            started: Instant::now(),
            reason,
            from,
        });
        let setups: Vec<ChannelSetup> = self
            .channels
            .values()
            .map(|s| ChannelSetup::of(&s.state))
            .collect();
        let settings = self.listener.session.clone();
        self.establishing = Some(Box::pin(establish(
            self.listener.clone(),
            self.start_ok.clone(),
            self.open.clone(),
            self.declarations.clone(),
            setups,
            Instant::now() + settings.failover_timeout,
            preferred,
        )));
    }

    // ---- planned moves (rebalancing) ------------------------------------------------------

    /// Keeps the rebalancer's view of this session current.
    fn report_placement(&self) {
        let slot = &self.registration.slot;
        slot.set_consumes(
            self.channels
                .values()
                .any(|c| !c.state.consumers.is_empty()),
        );
        slot.set_movable(!self.declarations.pins_to_node());
    }

    /// The rebalancer asks the session to move to `request.to`: consumers are cancelled on the
    /// current node and client frames are parked until the switch (see [`Moving`]).
    fn begin_move(&mut self, request: MoveRequest) {
        let refusal = match &self.node {
            None => Some("it is failing over"),
            Some(node) if node.node().name == request.to => Some("it is there already"),
            Some(_) if self.establishing.is_some() || self.client_closing.is_some() => {
                Some("it is closing or reconnecting")
            }
            Some(_) if !self.client_open => Some("its client is gone"),
            Some(_) if self.declarations.pins_to_node() => {
                Some("it has queues that live on its node")
            }
            Some(_) => None,
        };
        if let Some(why) = refusal {
            return PlannedMove::refuse(request, why);
        }
        // The node's cancel-ok comes after its last delivery to that consumer: once every one
        // is in, waiting for the client's acks covers everything delivered. Consumers stay
        // recorded: they are consumed again on the new node.
        let mut cancels = Vec::new();
        for (id, session) in self.channels.iter_mut() {
            for consumer in &session.state.consumers {
                let cancel = AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: consumer.tag.as_str().into(),
                    nowait: false,
                }));
                let frame = method_frame(*id, &cancel);
                session.awaiting.push_back((cancel, frame.clone()));
                session.own_cancels += 1;
                cancels.push(frame);
            }
        }
        for frame in &cancels {
            self.send_node(frame);
        }
        tracing::debug!(listener = %self.listener.config.name, client = %self.client_addr,
            to = %request.to, consumers = cancels.len(), "planned move: waiting for a safe point");
        self.moving = Some(PlannedMove::start(request));
    }

    /// Switches nodes once the move has reached its safe point (or its deadline).
    fn advance_move(&mut self) {
        let Some(moving) = &self.moving else { return };
        if self.node.is_none() || self.establishing.is_some() {
            return; // the switch is under way
        }
        let settled = self.channels.values().all(|c| {
            c.state.unconfirmed.is_empty()
                && c.state.retrying.is_empty()
                && c.awaiting.is_empty()
                && !c.state.commit_pending
        }) && self.delivering.is_empty();
        let acked = self
            .channels
            .values()
            .all(|c| c.state.outstanding_deliveries() == 0);
        let switch = moving.switch(settled, acked);
        if switch == Switch::NotYet {
            return;
        }
        let to = moving.to.clone();
        let Some(node) = self.node.take() else {
            return;
        };
        let from = node.node().name.clone();
        let unconfirmed = self.unconfirmed();
        if switch == Switch::Forced {
            tracing::warn!(listener = %self.listener.config.name, client = %self.client_addr,
                %from, %to, unconfirmed,
                "planned move: no safe point within its deadline; moving anyway (what is unconfirmed is sent again)");
        }
        close_in_background(node, "tether: moving the session to another node");
        self.leave_node(REBALANCE, from, Some(to));
    }

    fn on_established(&mut self, result: Result<Established, Failure>) {
        let Established { upstream, replayed } = match result {
            Ok(established) => established,
            Err(Failure::Refused(close)) => {
                let text = close.reply_text.to_string();
                let frame = method_frame(
                    0,
                    &AMQPClass::Connection(connection::AMQPMethod::Close(close)),
                );
                self.send_client(&frame);
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
        self.node = Some(upstream);
        for (client_name, node_name) in &replayed.renames {
            self.declarations.renamed(client_name, node_name);
        }
        for (id, close) in &replayed.failed_channels {
            if let Some(session) = self.channels.get_mut(id) {
                session.closed_by_node = true;
                session.awaiting.clear();
                let frame = method_frame(
                    *id,
                    &AMQPClass::Channel(chan::AMQPMethod::Close(close.clone())),
                );
                self.send_client(&frame);
            }
        }
        for skipped in &replayed.skipped {
            tracing::warn!(listener = %self.listener.config.name, client = %self.client_addr,
                %skipped, "the new node refused a declaration; going on without it");
        }
        let (consumers, publishes, requests) = self.resend_after_replay();
        if self.blocked {
            // The new node starts unblocked; it says so again if it is not.
            self.blocked = false;
            let unblocked =
                AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {}));
            self.send_client(&method_frame(0, &unblocked));
        }
        self.registration.slot.set_node(Some(&to));
        let moved = self.moving.take();
        let parked = std::mem::take(&mut self.parked);
        for frame in parked {
            self.on_client(Some(Ok(frame)));
        }
        let Some(failover) = self.failover.take() else {
            return;
        };
        let took = failover.started.elapsed();
        let metrics = &self.listener.metrics;
        if let Some(moving) = moved {
            self.listener.cluster.rebalance_moves.increment(1);
            moving.finish(MoveOutcome::Moved { to: to.clone() });
            tracing::info!(listener = %self.listener.config.name, client = %self.client_addr,
                from = %failover.from, %to, seconds = took.as_secs_f64(), consumers, publishes,
                requests, "session moved (rebalancing)");
            return;
        }
        metrics.failover_duration.record(took.as_secs_f64());
        self.listener
            .failover_done(failover.reason, &failover.from, &to, took);
        metrics.replayed("connect", 1);
        metrics.replayed("exchange", replayed.exchanges);
        metrics.replayed("queue", replayed.queues);
        metrics.replayed("binding", replayed.bindings);
        metrics.replayed("channel", replayed.channels);
        metrics.replayed("consumer", consumers);
        metrics.replayed("publish", publishes);
        metrics.replayed("request", requests);
        tracing::info!(listener = %self.listener.config.name, client = %self.client_addr,
            reason = failover.reason, from = %failover.from, %to, seconds = took.as_secs_f64(),
            exchanges = replayed.exchanges, queues = replayed.queues, bindings = replayed.bindings,
            channels = replayed.channels, consumers, publishes, requests, "failover done");
    }

    /// Every node failed for `failover_timeout`: the client gets a connection error that says so.
    fn give_up(&mut self, last: &str) {
        let waited = self
            .failover
            .as_ref()
            .map_or(Duration::ZERO, |f| f.started.elapsed());
        let text = format!(
            "CONNECTION_FORCED - tether: no broker node available for {}s (last: {last})",
            waited.as_secs()
        );
        tracing::warn!(listener = %self.listener.config.name, client = %self.client_addr,
            %text, "giving up on the session");
        self.send_client(&method_frame(
            0,
            &connection_close(CONNECTION_FORCED, &text),
        ));
        self.end = Some(End::Forwarded(text));
    }

    /// After the awaited part of the replay: consumers, requests the failed node never answered,
    /// and kept publishes, sent without waiting. Returns how many of each.
    fn resend_after_replay(&mut self) -> (usize, usize, usize) {
        let (mut consumers, mut publishes, mut requests) = (0, 0, 0);
        let ids: Vec<u16> = self
            .channels
            .iter()
            .filter(|(_, s)| !s.closed_by_node)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let mut frames = Vec::new();
            let Some(session) = self.channels.get_mut(&id) else {
                continue;
            };
            for consumer in &session.state.consumers {
                let queue = self.declarations.node_name(&consumer.queue).to_owned();
                frames.push(method_frame(
                    id,
                    &replay::consume_again(&consumer.method, &queue),
                ));
                consumers += 1;
            }
            // Requests the failed node never answered: those the channel set-up already did are
            // answered by tether, the others asked again.
            let mut answers = Vec::new();
            let mut resend = VecDeque::new();
            for (request, frame) in session.awaiting.drain(..) {
                let answer = match &request {
                    AMQPClass::Channel(chan::AMQPMethod::Open(_)) => Some(AMQPClass::Channel(
                        chan::AMQPMethod::OpenOk(chan::OpenOk {}),
                    )),
                    AMQPClass::Basic(basic::AMQPMethod::Qos(_)) => {
                        Some(AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})))
                    }
                    AMQPClass::Confirm(confirm::AMQPMethod::Select(_)) => Some(AMQPClass::Confirm(
                        confirm::AMQPMethod::SelectOk(confirm::SelectOk {}),
                    )),
                    AMQPClass::Tx(tx::AMQPMethod::Select(_)) => {
                        Some(AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})))
                    }
                    _ => None,
                };
                match answer {
                    Some(answer) => answers.push(method_frame(id, &answer)),
                    None => {
                        requests += 1;
                        resend.push_back((request, frame));
                    }
                }
            }
            session.awaiting = resend.clone();
            for (request, frame) in &resend {
                frames.push(match self.with_node_names(request) {
                    Some(renamed) => method_frame(id, &renamed),
                    None => frame.clone(),
                });
            }
            let Some(session) = self.channels.get_mut(&id) else {
                continue;
            };
            session.state.renumber_for_replay();
            let kept: Vec<Vec<Frame>> = session
                .state
                .unconfirmed
                .iter()
                .map(|p| p.frames.clone())
                .collect();
            for publish in kept {
                frames.extend(self.publish_for_node(publish));
                publishes += 1;
            }
            for frame in answers {
                self.send_client(&frame);
            }
            for frame in &frames {
                self.send_node(frame);
            }
        }
        (consumers, publishes, requests)
    }

    async fn close(mut self, end: End) {
        let _ = tokio::time::timeout(FINAL_FLUSH, self.client_writer.flush()).await;
        self.client_writer.shutdown().await;
        if matches!(end, End::ClientError(_)) {
            // Closing with the client's bytes unread would reset the connection, and the client
            // could lose the connection.close that says what it did wrong.
            let drain = async { while let Some(Ok(_)) = self.client_reader.next().await {} };
            let _ = tokio::time::timeout(LINGER, drain).await;
        }
        if let Some(node) = &mut self.node
            && !matches!(end, End::Finished | End::Forwarded(_))
        {
            node.send(0, &connection_close(200, "client gone"));
            let _ = tokio::time::timeout(FINAL_FLUSH, node.writer.flush()).await;
        }
        self.listener
            .metrics
            .unconfirmed
            .decrement(self.reported_unconfirmed as f64);
        let why = match &end {
            End::ClientGone => "client gone".to_owned(),
            End::ClientError(e) => format!("client error: {e}"),
            End::Forwarded(e) => format!("broker's close passed on: {e}"),
            End::Finished => "finished".to_owned(),
            End::Shutdown => "tether shutting down".to_owned(),
        };
        tracing::debug!(listener = %self.listener.config.name, client = %self.client_addr,
            unconfirmed = self.unconfirmed(), why, "session closed");
    }
}

/// Connects to a live node, logs in with the client's credentials, opens its virtual host and
/// replays the session's set-up; another node on failure, until `deadline`.
async fn establish(
    listener: Arc<Listener>,
    start_ok: connection::StartOk,
    open: connection::Open,
    declarations: Declarations,
    channels: Vec<ChannelSetup>,
    deadline: Instant,
    preferred: Option<String>,
) -> Result<Established, Failure> {
    let settings = &listener.session;
    let cluster = &listener.cluster;
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let attempt = async {
            let (mut upstream, _start) = Upstream::connect(cluster, preferred.as_deref()).await?;
            let result = async {
                let tune = upstream.login(&start_ok).await?;
                upstream
                    .open(&tune, settings.upstream_heartbeat, &open)
                    .await?;
                replay::replay(&mut upstream, &declarations, &channels, deadline).await
            };
            match tokio::time::timeout(settings.upstream_handshake_timeout * 4, result).await {
                Ok(Ok(replayed)) => Ok(Established { upstream, replayed }),
                Ok(Err(Failure::Broken(why))) => {
                    cluster.node_failed(
                        upstream.node(),
                        ENDPOINT,
                        &format!("failover attempt: {why}"),
                    );
                    Err(Failure::Broken(format!("{}: {why}", upstream.node().name)))
                }
                Ok(Err(other)) => Err(other),
                Err(_) => {
                    let why = "no answer in time during handshake or replay";
                    cluster.node_failed(upstream.node(), ENDPOINT, why);
                    Err(Failure::Broken(format!("{}: {why}", upstream.node().name)))
                }
            }
        };
        let last = match attempt.await {
            Ok(established) => return Ok(established),
            Err(Failure::Refused(close)) => return Err(Failure::Refused(close)),
            Err(Failure::Broken(why)) => why,
            Err(Failure::ChannelClosed(channel, close)) => {
                format!(
                    "channel {channel} closed: {} {}",
                    close.reply_code, close.reply_text
                )
            }
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(Failure::Broken(last));
        }
        tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
    }
}
