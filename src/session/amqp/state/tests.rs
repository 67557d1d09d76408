//! The AMQP session's state driven frame by frame, as the client and a node would send them,
//! with no socket: what reaches each side, and what the session is asked to do.

use super::*;
use crate::proto::amqp::content;
use crate::session::amqp::confirms::Reusable;
use crate::session::amqp::replay::Replayed;
use amq_protocol::protocol::{BasicProperties, confirm, exchange, queue, tx};
use bytes::Bytes;

const CH: u16 = 1;

fn state() -> SessionState {
    SessionState::new(
        StateLimits {
            max_message_size: 1024,
            failover_timeout: Duration::from_secs(30),
            max_held: 100,
            max_held_bytes: 1 << 20,
        },
        tracing::Span::none(),
    )
}

fn m(method: AMQPClass) -> Frame {
    method_frame(CH, &method)
}

/// The method names of frames, in order (content frames as `header`/`body`).
fn names(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match f.kind {
            crate::proto::amqp::FrameType::Method => {
                let (class, id) = f.class_method().unwrap();
                crate::proto::amqp::id::MethodName((class, id)).to_string()
            }
            crate::proto::amqp::FrameType::Header => "header".into(),
            crate::proto::amqp::FrameType::Body => "body".into(),
            crate::proto::amqp::FrameType::Heartbeat => "heartbeat".into(),
        })
        .collect()
}

fn decode(frame: &Frame) -> AMQPClass {
    method::decode(&frame.payload).unwrap()
}

/// Feeds client frames; returns what came out, and empties it.
fn from_client(state: &mut SessionState, frames: Vec<Frame>) -> Out {
    let mut out = Out::default();
    for frame in frames {
        state.client_frame(frame, &mut out);
    }
    out
}

fn from_node(state: &mut SessionState, frames: Vec<Frame>) -> Out {
    let mut out = Out::default();
    for frame in frames {
        state.node_frame(frame, &mut out);
    }
    out
}

fn open_channel(state: &mut SessionState) {
    from_client(
        state,
        vec![m(AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {})))],
    );
    let out = from_node(
        state,
        vec![m(AMQPClass::Channel(chan::AMQPMethod::OpenOk(
            chan::OpenOk {},
        )))],
    );
    assert_eq!(names(&out.to_client), ["channel.open-ok"]);
}

fn confirm_select() -> Frame {
    m(AMQPClass::Confirm(confirm::AMQPMethod::Select(
        confirm::Select { nowait: false },
    )))
}

fn publish_frames(routing_key: &str, body: &'static [u8]) -> Vec<Frame> {
    publish_with(routing_key, body, BasicProperties::default())
}

fn publish_with(routing_key: &str, body: &'static [u8], properties: BasicProperties) -> Vec<Frame> {
    vec![
        m(AMQPClass::Basic(basic::AMQPMethod::Publish(
            basic::Publish {
                exchange: "".into(),
                routing_key: routing_key.into(),
                mandatory: false,
                immediate: false,
            },
        ))),
        Frame::header(
            CH,
            content::encode_header(60, body.len() as u64, &properties),
        ),
        Frame::body(CH, Bytes::from_static(body)),
    ]
}

fn node_ack(tag: u64, multiple: bool) -> Frame {
    Frame::method(
        CH,
        method::encode_ack(
            crate::proto::amqp::id::BASIC_ACK,
            method::Ack {
                delivery_tag: tag,
                multiple,
                requeue: false,
            },
        ),
    )
}

fn node_nack(tag: u64) -> Frame {
    Frame::method(
        CH,
        method::encode_ack(
            crate::proto::amqp::id::BASIC_NACK,
            method::Ack {
                delivery_tag: tag,
                multiple: false,
                requeue: true,
            },
        ),
    )
}

fn client_ack(tag: u64, multiple: bool) -> Frame {
    node_ack(tag, multiple)
}

fn delivery(tag: u64, routing_key: &str) -> Vec<Frame> {
    vec![
        m(AMQPClass::Basic(basic::AMQPMethod::Deliver(
            basic::Deliver {
                consumer_tag: "ctag".into(),
                delivery_tag: tag,
                redelivered: false,
                exchange: "".into(),
                routing_key: routing_key.into(),
            },
        ))),
        Frame::header(
            CH,
            content::encode_header(60, 1, &BasicProperties::default()),
        ),
        Frame::body(CH, Bytes::from_static(b"x")),
    ]
}

fn consume(state: &mut SessionState, queue: &str) {
    from_client(
        state,
        vec![m(AMQPClass::Basic(basic::AMQPMethod::Consume(
            basic::Consume {
                queue: queue.into(),
                consumer_tag: "".into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: Default::default(),
            },
        )))],
    );
    let ok = m(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(
        basic::ConsumeOk {
            consumer_tag: "ctag".into(),
        },
    )));
    let out = from_node(state, vec![ok]);
    assert_eq!(names(&out.to_client), ["basic.consume-ok"]);
}

fn acks_seen(frames: &[Frame]) -> Vec<(u64, bool)> {
    frames
        .iter()
        .filter_map(|f| method::peek_ack(&f.payload).ok())
        .map(|a| (a.delivery_tag, a.multiple))
        .collect()
}

fn delivery_tags(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| method::peek_deliver(&f.payload).ok())
        .map(|d| d.delivery_tag)
        .collect()
}

/// The session leaves its node and arrives on a new one where `replayed` was set up.
fn fail_over(state: &mut SessionState, replayed: Replayed) -> Out {
    let mut out = Out::default();
    assert!(state.leave_node(&mut out).is_none());
    state.arrived(&replayed, &mut out);
    out
}

#[test]
fn a_publish_goes_to_the_node_only_once_its_body_is_complete() {
    let mut state = state();
    open_channel(&mut state);
    let mut frames = publish_frames("q", b"hello");
    let body = frames.pop().unwrap();
    let out = from_client(&mut state, frames);
    assert!(
        out.to_node.is_empty(),
        "half a message is never sent: {:?}",
        names(&out.to_node)
    );
    let out = from_client(&mut state, vec![body]);
    // tether turns confirms on for a client that asked none, so nothing is lost silently.
    assert_eq!(
        names(&out.to_node),
        ["confirm.select", "basic.publish", "header", "body"]
    );
    assert_eq!(state.unconfirmed(), 1);
    let out = from_node(&mut state, vec![node_ack(1, false)]);
    assert!(
        out.to_client.is_empty(),
        "the client asked no confirms: it gets none"
    );
    assert_eq!(state.unconfirmed(), 0);
}

#[test]
fn confirms_reach_the_client_in_its_numbering_across_a_failover() {
    let mut state = state();
    open_channel(&mut state);
    from_client(&mut state, vec![confirm_select()]);
    from_node(
        &mut state,
        vec![m(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(
            confirm::SelectOk {},
        )))],
    );
    for _ in 0..3 {
        from_client(&mut state, publish_frames("q", b"m"));
    }
    let out = from_node(&mut state, vec![node_ack(1, false)]);
    assert_eq!(acks_seen(&out.to_client), [(1, false)]);

    let out = fail_over(&mut state, Replayed::default());
    assert_eq!(
        names(&out.to_node),
        [
            "basic.publish",
            "header",
            "body",
            "basic.publish",
            "header",
            "body"
        ],
        "the two unconfirmed publishes are sent again, in order"
    );
    // The new node numbers them 1 and 2; the client counts them as its 2 and 3.
    let out = from_node(&mut state, vec![node_ack(2, true)]);
    assert_eq!(acks_seen(&out.to_client), [(3, true)]);
}

#[test]
fn a_nack_is_retried_and_never_reaches_a_client_that_waits_for_confirms() {
    let mut state = state();
    open_channel(&mut state);
    from_client(&mut state, vec![confirm_select()]);
    from_client(&mut state, publish_frames("q", b"m"));
    let out = from_node(&mut state, vec![node_nack(1)]);
    assert!(
        out.to_client.is_empty(),
        "a quorum queue electing a leader refuses for a while"
    );
    assert!(
        out.event.is_none(),
        "one refusal is not a reason to set the session up again"
    );
    assert_eq!(state.unconfirmed(), 1, "kept to be sent again");
    assert!(state.next_retry().is_some());
}

#[test]
fn delivery_tags_grow_across_a_failover_and_stale_acks_are_swallowed() {
    let mut state = state();
    open_channel(&mut state);
    consume(&mut state, "q");
    let mut delivered = Vec::new();
    for tag in 1..=2 {
        delivered.extend(from_node(&mut state, delivery(tag, "q")).to_client);
    }
    assert_eq!(delivery_tags(&delivered), [1, 2]);
    assert!(!state.acked());

    let out = fail_over(&mut state, Replayed::default());
    assert_eq!(
        names(&out.to_node),
        ["basic.consume"],
        "the consumer is replayed"
    );
    let out = from_node(&mut state, delivery(1, "q"));
    assert_eq!(
        delivery_tags(&out.to_client),
        [3],
        "the new node's 1 is the client's 3"
    );

    // The client acks a delivery of the failed node: the broker requeued it already.
    let out = from_client(&mut state, vec![client_ack(2, false)]);
    assert!(out.to_node.is_empty());
    assert_eq!(state.stale_acks(), 1);
    let out = from_client(&mut state, vec![client_ack(3, false)]);
    assert_eq!(acks_seen(&out.to_node), [(1, false)]);
    assert!(state.acked());
}

#[test]
fn a_multiple_ack_is_clipped_at_the_failover() {
    let mut state = state();
    open_channel(&mut state);
    consume(&mut state, "q");
    from_node(&mut state, delivery(1, "q"));
    fail_over(&mut state, Replayed::default());
    from_node(&mut state, delivery(1, "q"));
    from_node(&mut state, delivery(2, "q"));
    // The client's 2 and 3 are the new node's 1 and 2; its 1 was the failed node's.
    let out = from_client(&mut state, vec![client_ack(3, true)]);
    assert_eq!(acks_seen(&out.to_node), [(2, true)]);
    assert_eq!(state.stale_acks(), 0);
}

#[test]
fn a_server_named_queue_keeps_the_clients_name_after_it_is_renamed() {
    let mut state = state();
    open_channel(&mut state);
    let declare = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: "".into(),
        passive: false,
        durable: false,
        exclusive: true,
        auto_delete: true,
        nowait: false,
        arguments: Default::default(),
    }));
    from_client(&mut state, vec![m(declare)]);
    let ok = AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
        queue: "amq.gen-A".into(),
        message_count: 0,
        consumer_count: 0,
    }));
    let out = from_node(&mut state, vec![m(ok)]);
    assert!(matches!(decode(&out.to_client[0]),
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) if ok.queue.as_str() == "amq.gen-A"));
    assert!(
        state.declarations.pins_to_node(),
        "an exclusive queue pins the session"
    );
    consume(&mut state, "amq.gen-A");

    let replayed = Replayed {
        renames: vec![("amq.gen-A".into(), "amq.gen-B".into())],
        ..Replayed::default()
    };
    let out = fail_over(&mut state, replayed);
    assert!(matches!(decode(&out.to_node[0]),
        AMQPClass::Basic(basic::AMQPMethod::Consume(c)) if c.queue.as_str() == "amq.gen-B"));
    // A reply to the client's queue: the routing key is the node's name on the way up ...
    let properties = BasicProperties::default().with_reply_to("amq.gen-A".into());
    let out = from_client(&mut state, publish_with("amq.gen-A", b"m", properties));
    assert_eq!(
        names(&out.to_node),
        ["confirm.select", "basic.publish", "header", "body"]
    );
    let up = &out.to_node[1..];
    assert!(matches!(decode(&up[0]),
        AMQPClass::Basic(basic::AMQPMethod::Publish(p)) if p.routing_key.as_str() == "amq.gen-B"));
    assert_eq!(
        content::reply_to(&up[1].payload).unwrap(),
        Some("amq.gen-B")
    );
    // ... and the client's on the way down.
    let out = from_node(&mut state, delivery(1, "amq.gen-B"));
    assert!(matches!(decode(&out.to_client[0]),
        AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) if d.routing_key.as_str() == "amq.gen-A"));
}

#[test]
fn a_transaction_sends_nothing_before_commit_and_answers_commit_once_confirmed() {
    let mut state = state();
    open_channel(&mut state);
    let out = from_client(
        &mut state,
        vec![m(AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})))],
    );
    assert_eq!(
        names(&out.to_client),
        ["tx.select-ok"],
        "tether answers: it runs tx over confirms"
    );
    assert_eq!(names(&out.to_node), ["confirm.select"]);
    let out = from_client(&mut state, publish_frames("q", b"m"));
    assert!(out.to_node.is_empty());
    let out = from_client(
        &mut state,
        vec![m(AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})))],
    );
    assert_eq!(names(&out.to_node), ["basic.publish", "header", "body"]);
    assert!(out.to_client.is_empty(), "commit-ok waits for the confirm");
    assert!(!state.settled());
    let out = from_node(&mut state, vec![node_ack(1, false)]);
    assert_eq!(names(&out.to_client), ["tx.commit-ok"]);
    assert!(state.settled());
}

#[test]
fn open_transactions_holding_the_listeners_limit_end_the_session_with_resource_error() {
    // state() lets a session hold 100 (max_unconfirmed): acks, with publishes, count.
    let mut state = state();
    open_channel(&mut state);
    from_client(
        &mut state,
        vec![m(AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})))],
    );
    from_client(&mut state, publish_frames("q", b"m"));
    for tag in 1..=98 {
        let out = from_client(&mut state, vec![client_ack(tag, false)]);
        assert!(out.event.is_none(), "ack {tag}: {:?}", out.event);
    }
    assert_eq!(state.held_in_transactions().0, 99);
    let out = from_client(&mut state, vec![client_ack(99, false)]);
    assert_eq!(names(&out.to_client), ["connection.close"]);
    let event = format!("{:?}", out.event);
    assert!(event.contains("506 RESOURCE_ERROR"), "{event}");
    assert!(event.contains("max_unconfirmed = 100"), "{event}");
}

#[test]
fn a_rolled_back_transaction_is_forgotten() {
    let mut state = state();
    open_channel(&mut state);
    from_client(
        &mut state,
        vec![m(AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})))],
    );
    from_client(&mut state, publish_frames("q", b"m"));
    assert_eq!(state.unconfirmed(), 1);
    let out = from_client(
        &mut state,
        vec![m(AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})))],
    );
    assert_eq!(names(&out.to_client), ["tx.rollback-ok"]);
    assert_eq!(state.unconfirmed(), 0);
    let out = from_client(&mut state, vec![confirm_select()]);
    assert_eq!(
        out.event
            .map(|e| format!("{e:?}").contains("PRECONDITION_FAILED")),
        Some(true),
        "a tx channel cannot switch to confirms"
    );
}

#[test]
fn a_planned_moves_cancels_are_tethers_and_its_cancel_oks_never_reach_the_client() {
    let mut state = state();
    open_channel(&mut state);
    consume(&mut state, "q");
    assert!(state.consumer_signature().0 > 0);
    let mut out = Out::default();
    assert_eq!(state.cancel_consumers(&mut out), 1);
    assert_eq!(names(&out.to_node), ["basic.cancel"]);
    assert!(!state.settled());
    let ok = m(AMQPClass::Basic(basic::AMQPMethod::CancelOk(
        basic::CancelOk {
            consumer_tag: "ctag".into(),
        },
    )));
    let out = from_node(&mut state, vec![ok]);
    assert!(out.to_client.is_empty());
    assert!(state.settled());
    assert!(
        state.consumer_signature().0 > 0,
        "the consumer is consumed again on the new node"
    );
}

#[test]
fn requests_the_failed_node_never_answered_are_answered_or_asked_again() {
    let mut state = state();
    from_client(
        &mut state,
        vec![m(AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {})))],
    );
    let out = fail_over(&mut state, Replayed::default());
    assert_eq!(
        names(&out.to_client),
        ["channel.open-ok"],
        "the replay opened it again"
    );
    let declare = AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
        exchange: "x".into(),
        kind: "fanout".into(),
        passive: false,
        durable: true,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: Default::default(),
    }));
    from_client(&mut state, vec![m(declare)]);
    let out = fail_over(&mut state, Replayed::default());
    assert_eq!(names(&out.to_node), ["exchange.declare"]);
    let ok = m(AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
        exchange::DeclareOk {},
    )));
    let out = from_node(&mut state, vec![ok]);
    assert_eq!(names(&out.to_client), ["exchange.declare-ok"]);
    assert_eq!(
        state.declarations.exchanges.len(),
        1,
        "recorded once the node answered"
    );
}

#[test]
fn a_channel_close_waits_for_its_publishes_to_be_confirmed() {
    let mut state = state();
    open_channel(&mut state);
    from_client(&mut state, publish_frames("q", b"m"));
    let close = m(AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
        reply_code: 200,
        reply_text: "".into(),
        class_id: 0,
        method_id: 0,
    })));
    let out = from_client(&mut state, vec![close]);
    assert!(out.to_node.is_empty());
    let mut out = Out::default();
    state.release_held_closes(&mut out);
    assert!(
        out.to_node.is_empty(),
        "a broker may drop unconfirmed publishes of a closing channel"
    );
    from_node(&mut state, vec![node_ack(1, false)]);
    state.release_held_closes(&mut out);
    assert_eq!(names(&out.to_node), ["channel.close"]);
    let out = from_node(
        &mut state,
        vec![m(AMQPClass::Channel(chan::AMQPMethod::CloseOk(
            chan::CloseOk {},
        )))],
    );
    assert_eq!(names(&out.to_client), ["channel.close-ok"]);
    assert!(state.channels.is_empty());
}

#[test]
fn a_connection_close_sent_on_before_a_failover_is_answered_by_tether() {
    let mut state = state();
    open_channel(&mut state);
    let close = method_frame(0, &connection_close(200, "bye"));
    from_client(&mut state, vec![close]);
    assert!(state.client_closing());
    let mut out = Out::default();
    state.release_held_closes(&mut out);
    assert_eq!(names(&out.to_node), ["connection.close"]);
    let mut out = Out::default();
    assert!(matches!(state.leave_node(&mut out), Some(End::Finished)));
    assert_eq!(names(&out.to_client), ["connection.close-ok"]);
}

#[test]
fn a_node_going_away_is_a_failover_and_a_refusal_of_the_clients_is_passed_on() {
    let mut state = state();
    let shutdown = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'";
    let forced = method_frame(0, &connection_close(320, shutdown));
    let out = from_node(&mut state, vec![forced]);
    assert_eq!(names(&out.to_node), ["connection.close-ok"]);
    assert!(matches!(
        out.event,
        Some(Event::NodeFailed(FailoverReason::NodeShutdown, _))
    ));
    assert!(out.to_client.is_empty());
    // An operator's close_connection: forced, but not a shutdown of the node.
    let mut state = super::SessionState::new(state.limits, tracing::Span::none());
    let closed = method_frame(
        0,
        &connection_close(320, "CONNECTION_FORCED - operator test"),
    );
    let out = from_node(&mut state, vec![closed]);
    assert!(matches!(
        out.event,
        Some(Event::NodeFailed(FailoverReason::Forced, _))
    ));

    let mut state = super::SessionState::new(state.limits, tracing::Span::none());
    let refused = method_frame(0, &connection_close(530, "NOT_ALLOWED - vhost"));
    let out = from_node(&mut state, vec![refused]);
    assert_eq!(names(&out.to_client), ["connection.close"]);
    assert!(out.event.is_none());
    let close_ok = method_frame(
        0,
        &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    );
    let out = from_client(&mut state, vec![close_ok]);
    assert!(matches!(out.event, Some(Event::End(End::Forwarded(_)))));
}

#[test]
fn a_channel_the_node_closed_drops_what_the_client_sends_on_it_until_close_ok() {
    let mut state = state();
    open_channel(&mut state);
    let close = m(AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
        reply_code: 404,
        reply_text: "NOT_FOUND - no queue 'q'".into(),
        class_id: 50,
        method_id: 10,
    })));
    let out = from_node(&mut state, vec![close]);
    assert_eq!(names(&out.to_client), ["channel.close"]);
    let out = from_client(&mut state, vec![confirm_select()]);
    assert!(out.to_node.is_empty());
    let close_ok = m(AMQPClass::Channel(chan::AMQPMethod::CloseOk(
        chan::CloseOk {},
    )));
    let out = from_client(&mut state, vec![close_ok]);
    assert_eq!(names(&out.to_node), ["channel.close-ok"]);
    assert!(state.channels.is_empty());
}

#[test]
fn a_blocked_client_is_unblocked_on_a_new_node() {
    let mut state = state();
    let blocked = method_frame(
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
            reason: "memory".into(),
        })),
    );
    let out = from_node(&mut state, vec![blocked]);
    assert_eq!(names(&out.to_client), ["connection.blocked"]);
    let out = fail_over(&mut state, Replayed::default());
    assert_eq!(names(&out.to_client), ["connection.unblocked"]);
}

#[test]
fn bad_client_input_is_a_connection_error_as_a_broker_sends_it() {
    let mut state = state();
    let out = from_client(&mut state, vec![confirm_select()]);
    assert_eq!(names(&out.to_client), ["connection.close"]);
    assert!(matches!(decode(&out.to_client[0]),
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) if c.reply_code == 504));

    let mut state = super::SessionState::new(state.limits, tracing::Span::none());
    open_channel(&mut state);
    let out = from_client(&mut state, vec![Frame::body(CH, Bytes::from_static(b"x"))]);
    assert!(matches!(decode(&out.to_client[0]),
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) if c.reply_code == 505));

    // Larger than max_message_size: refused from the header, before any body is buffered.
    let mut state = super::SessionState::new(state.limits, tracing::Span::none());
    open_channel(&mut state);
    let mut frames = publish_frames("q", b"m");
    frames[1] = Frame::header(
        CH,
        content::encode_header(60, 4096, &BasicProperties::default()),
    );
    let out = from_client(&mut state, frames);
    assert!(matches!(decode(&out.to_client[0]),
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) if c.reply_code == 501));
    assert!(matches!(out.event, Some(Event::End(End::ClientError(_)))));
    assert!(out.to_node.is_empty());
}

#[test]
fn nonsense_from_the_node_is_a_failover_not_an_error_for_the_client() {
    let mut state = state();
    open_channel(&mut state);
    let out = from_node(&mut state, vec![Frame::body(CH, Bytes::from_static(b"x"))]);
    assert!(matches!(
        out.event,
        Some(Event::NodeFailed(FailoverReason::ProtocolError, _))
    ));
    assert!(out.to_client.is_empty());
    // A delivery cut short by the failover is dropped: the broker requeues it.
    let mut state = super::SessionState::new(state.limits, tracing::Span::none());
    open_channel(&mut state);
    consume(&mut state, "q");
    let mut half = delivery(1, "q");
    half.pop();
    from_node(&mut state, half);
    assert!(!state.settled());
    fail_over(&mut state, Replayed::default());
    assert!(state.settled());
}

/// A pooled connection's clean channel: the next session's channel.open and confirm.select are
/// answered here, its publishes go on from the node's numbering, and its close keeps the node
/// channel for the session after; a channel that consumed is closed on the node instead.
#[test]
fn pooled_channels_are_reused_when_they_hold_nothing_of_the_last_client() {
    let mut state = state();
    state.keep_node_on_close();
    state.adopt_channels(vec![(
        CH,
        Reusable {
            upstream_confirm: true,
            last_upstream_seq: 7,
        },
    )]);
    let out = from_client(
        &mut state,
        vec![
            m(AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {}))),
            confirm_select(),
        ],
    );
    assert_eq!(
        names(&out.to_client),
        ["channel.open-ok", "confirm.select-ok"]
    );
    assert!(
        out.to_node.is_empty(),
        "the node is not asked: {:?}",
        names(&out.to_node)
    );

    let out = from_client(&mut state, publish_frames("q", b"one"));
    assert_eq!(names(&out.to_node), ["basic.publish", "header", "body"]);
    // The node numbers this channel's publishes on from the last session's 7.
    let out = from_node(&mut state, vec![node_ack(8, false)]);
    assert_eq!(names(&out.to_client), ["basic.ack"]);
    match decode(&out.to_client[0]) {
        AMQPClass::Basic(basic::AMQPMethod::Ack(ack)) => assert_eq!(ack.delivery_tag, 1),
        other => panic!("{other:?}"),
    }

    let close = m(AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
        reply_code: 200,
        reply_text: "".into(),
        class_id: 0,
        method_id: 0,
    })));
    from_client(&mut state, vec![close.clone()]);
    let mut out = Out::default();
    state.release_held_closes(&mut out);
    assert_eq!(names(&out.to_client), ["channel.close-ok"]);
    assert!(out.to_node.is_empty(), "kept open on the node");
    let left = state.leftovers();
    assert_eq!(
        left.keep,
        [(
            CH,
            Reusable {
                upstream_confirm: true,
                last_upstream_seq: 8
            }
        )]
    );

    // Open again and consume: the channel now holds the client's consumer, so it is closed.
    from_client(
        &mut state,
        vec![m(AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {})))],
    );
    let consume = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: "q".into(),
        consumer_tag: "c".into(),
        no_local: false,
        no_ack: false,
        exclusive: false,
        nowait: false,
        arguments: Default::default(),
    }));
    from_client(&mut state, vec![m(consume)]);
    let left = state.leftovers();
    assert!(left.keep.is_empty(), "{left:?}");
    assert_eq!(left.close, [CH]);
}

#[test]
fn what_the_consumers_read_from_is_reported_whenever_they_change() {
    let mut state = state();
    open_channel(&mut state);
    assert_eq!(state.consumed("/"), None);
    let idle = state.consumer_signature();
    consume(&mut state, "q");
    let one = state.consumer_signature();
    assert_ne!(one, idle);
    let consumed = state.consumed("vh").unwrap();
    assert_eq!(consumed.queues, ["q"]);
    assert_eq!(consumed.vhost_name(), "vh");
    assert!(!consumed.other);
    // The node cancels it and the client consumes from another queue before anyone looks:
    // the count is back to one, the signature still differs.
    let cancel = m(AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
        consumer_tag: "ctag".into(),
        nowait: true,
    })));
    from_node(&mut state, vec![cancel]);
    consume(&mut state, "other");
    assert_ne!(state.consumer_signature(), one);
    assert_eq!(state.consumed("/").unwrap().queues, ["other"]);
}

#[test]
fn a_session_publishing_to_one_queue_is_placed_by_it_until_it_publishes_elsewhere() {
    let mut state = state();
    open_channel(&mut state);
    let before = state.consumer_signature();
    from_client(&mut state, publish_frames("q", b"m"));
    assert_ne!(state.consumer_signature(), before);
    assert_eq!(state.consumed("/").unwrap().queues, ["q"]);
    let one = state.consumer_signature();
    from_client(&mut state, publish_frames("q", b"again"));
    assert_eq!(
        state.consumer_signature(),
        one,
        "the same queue changes nothing"
    );
    from_client(&mut state, publish_frames("other", b"m"));
    assert_ne!(state.consumer_signature(), one);
    assert_eq!(state.consumed("/"), None, "two queues: not placed");
    // A consumer places it by what it consumes, whatever it publishes.
    consume(&mut state, "c");
    assert_eq!(state.consumed("/").unwrap().queues, ["c"]);
}

mod lost;
