//! A queue the session declared, lost by the cluster under it: the session is set up again
//! (see [`crate::session::amqp::lost_queues`]); anything else is the client's to hear.

use super::*;
use crate::session::amqp::lost_queues::MAX_HEALS;

fn declare(state: &mut SessionState, name: &str) {
    let declare = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: true,
        nowait: false,
        arguments: Default::default(),
    }));
    from_client(state, vec![m(declare)]);
    let ok = AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
        queue: name.into(),
        message_count: 0,
        consumer_count: 0,
    }));
    from_node(state, vec![m(ok)]);
}

fn node_cancel() -> Frame {
    m(AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
        consumer_tag: "ctag".into(),
        nowait: true,
    })))
}

fn consume_refused(queue: &str) -> Frame {
    refused(queue, (60, 20))
}

/// The node's 404 for `method` (class and method ids) naming `queue`.
fn refused(queue: &str, (class_id, method_id): (u16, u16)) -> Frame {
    m(AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
        reply_code: 404,
        reply_text: format!("NOT_FOUND - no queue '{queue}' in vhost '/'").into(),
        class_id,
        method_id,
    })))
}

fn lost(out: &Out) -> Option<&str> {
    match &out.event {
        Some(Event::QueueLost(queue)) => Some(queue),
        _ => None,
    }
}

#[test]
fn a_cancelled_consumer_of_a_queue_the_session_declared_sets_the_session_up_again() {
    let mut state = state();
    open_channel(&mut state);
    declare(&mut state, "w1.pidbox");
    consume(&mut state, "w1.pidbox");
    let out = from_node(&mut state, vec![node_cancel()]);
    assert_eq!(lost(&out), Some("w1.pidbox"));
    assert!(out.to_client.is_empty(), "the client hears nothing");
    assert_eq!(
        state.consumer_signature().0,
        1,
        "the consumer is kept, to be started again"
    );
}

#[test]
fn a_consume_refused_for_a_queue_the_session_declared_sets_the_session_up_again() {
    let mut state = state();
    open_channel(&mut state);
    declare(&mut state, "w1.pidbox");
    let out = from_node(&mut state, vec![consume_refused("w1.pidbox")]);
    assert_eq!(lost(&out), Some("w1.pidbox"));
    assert!(out.to_client.is_empty());
}

#[test]
fn a_queue_the_session_did_not_declare_or_deleted_is_the_clients_to_hear_of() {
    let mut state = state();
    open_channel(&mut state);
    consume(&mut state, "theirs");
    let out = from_node(&mut state, vec![node_cancel()]);
    assert_eq!(lost(&out), None);
    assert_eq!(names(&out.to_client), ["basic.cancel"]);

    let mut state = super::state();
    open_channel(&mut state);
    let out = from_node(&mut state, vec![consume_refused("theirs")]);
    assert_eq!(lost(&out), None);
    assert_eq!(names(&out.to_client), ["channel.close"]);

    let mut state = super::state();
    open_channel(&mut state);
    declare(&mut state, "gone");
    state.declarations.queue_deleted("gone");
    let out = from_node(&mut state, vec![consume_refused("gone")]);
    assert_eq!(
        lost(&out),
        None,
        "deleted by the client: not declared again"
    );
}

#[test]
fn a_queue_lost_again_and_again_is_left_to_the_client() {
    let mut state = state();
    open_channel(&mut state);
    declare(&mut state, "q");
    for _ in 0..MAX_HEALS {
        let out = from_node(&mut state, vec![consume_refused("q")]);
        assert_eq!(lost(&out), Some("q"));
    }
    let out = from_node(&mut state, vec![consume_refused("q")]);
    assert_eq!(lost(&out), None);
    assert_eq!(names(&out.to_client), ["channel.close"]);
}

#[test]
fn any_404_naming_a_queue_the_session_declared_sets_the_session_up_again() {
    // queue.bind, basic.get, a passive queue.declare.
    for method in [(50, 20), (60, 70), (50, 10)] {
        let mut state = state();
        open_channel(&mut state);
        declare(&mut state, "q");
        let out = from_node(&mut state, vec![refused("q", method)]);
        assert_eq!(lost(&out), Some("q"), "{method:?}");
    }
    let mut state = state();
    open_channel(&mut state);
    declare(&mut state, "q");
    let exchange = m(AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
        reply_code: 404,
        reply_text: "NOT_FOUND - no exchange 'x' in vhost '/'".into(),
        class_id: 50,
        method_id: 20,
    })));
    let out = from_node(&mut state, vec![exchange]);
    assert_eq!(
        lost(&out),
        None,
        "a missing exchange is the client's to hear of"
    );
    assert_eq!(names(&out.to_client), ["channel.close"]);
}
