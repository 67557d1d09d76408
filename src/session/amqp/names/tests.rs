use super::*;
use amq_protocol::protocol::BasicProperties;

fn frame(channel: u16, method: AMQPClass) -> Frame {
    Frame::method(channel, method::encode(&method))
}

fn publish(exchange: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        mandatory: false,
        immediate: false,
    }))
}

fn deliver(exchange: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
        consumer_tag: "c".into(),
        delivery_tag: 7,
        redelivered: false,
        exchange: exchange.into(),
        routing_key: routing_key.into(),
    }))
}

fn routing_key(payload: &[u8]) -> String {
    match method::decode(payload).unwrap() {
        AMQPClass::Basic(basic::AMQPMethod::Publish(m)) => m.routing_key.to_string(),
        AMQPClass::Basic(basic::AMQPMethod::Deliver(m)) => m.routing_key.to_string(),
        other => panic!("not a content method: {other:?}"),
    }
}

/// After a failover the client's `amq.gen-A` is `amq.gen-B` on the new node.
fn renamed() -> QueueNames {
    let mut names = QueueNames::default();
    names.renamed("amq.gen-A", "amq.gen-B");
    names
}

#[test]
fn nothing_is_translated_before_a_failover() {
    let names = QueueNames::default();
    assert!(!names.any());
    let get = AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
        queue: "amq.gen-A".into(),
        no_ack: false,
    }));
    assert!(names.request_for_node(&get).is_none());
    let frames = vec![frame(1, publish("", "amq.gen-A"))];
    let same = names.publish_for_node(frames.clone());
    assert_eq!(same[0].payload, frames[0].payload);
    assert!(
        names
            .delivery_for_client(&method::encode(&deliver("", "amq.gen-A")))
            .is_none()
    );
}

#[test]
fn queue_requests_name_the_nodes_queue() {
    let names = renamed();
    let requests = [
        AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: "amq.gen-A".into(),
            exchange: "x".into(),
            routing_key: "".into(),
            nowait: false,
            arguments: Default::default(),
        })),
        AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: "amq.gen-A".into(),
            nowait: false,
        })),
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "amq.gen-A".into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: Default::default(),
        })),
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "amq.gen-A".into(),
            no_ack: false,
        })),
    ];
    for request in requests {
        let renamed = names.request_for_node(&request).expect("translated");
        let debug = format!("{renamed:?}");
        assert!(
            debug.contains("amq.gen-B") && !debug.contains("amq.gen-A"),
            "{debug}"
        );
    }
    // A queue that was not renamed is left alone.
    let other = AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
        queue: "orders".into(),
        no_ack: false,
    }));
    assert!(names.request_for_node(&other).is_none());
}

#[test]
fn a_publish_to_a_renamed_queue_goes_to_the_nodes_name_only_on_the_default_exchange() {
    let names = renamed();
    let up = names.publish_for_node(vec![frame(1, publish("", "amq.gen-A"))]);
    assert_eq!(routing_key(&up[0].payload), "amq.gen-B");
    // On a named exchange the routing key is a pattern, not a queue: untouched.
    let up = names.publish_for_node(vec![frame(1, publish("logs", "amq.gen-A"))]);
    assert_eq!(routing_key(&up[0].payload), "amq.gen-A");
}

#[test]
fn a_reply_to_naming_a_renamed_queue_is_rewritten_and_the_body_size_kept() {
    let names = renamed();
    let properties = BasicProperties::default().with_reply_to("amq.gen-A".into());
    let header = Frame::header(1, content::encode_header(60, 5, &properties));
    let body = Frame::body(1, Bytes::from_static(b"hello"));
    let up = names.publish_for_node(vec![frame(1, publish("", "rpc")), header, body.clone()]);
    assert_eq!(routing_key(&up[0].payload), "rpc");
    assert_eq!(
        content::reply_to(&up[1].payload).unwrap(),
        Some("amq.gen-B")
    );
    assert_eq!(content::peek_header(&up[1].payload).unwrap().body_size, 5);
    assert_eq!(up[2].payload, body.payload);
}

#[test]
fn a_delivery_routed_to_the_nodes_name_reaches_the_client_under_its_own() {
    let names = renamed();
    let payload = method::encode(&deliver("", "amq.gen-B"));
    let down = names.delivery_for_client(&payload).expect("translated");
    assert_eq!(routing_key(&down), "amq.gen-A");
    assert!(
        names
            .delivery_for_client(&method::encode(&deliver("logs", "amq.gen-B")))
            .is_none()
    );
}

#[test]
fn a_deleted_or_failed_over_queue_is_forgotten() {
    let mut names = renamed();
    names.forget("amq.gen-A");
    assert!(!names.any());
    assert_eq!(names.client_name("amq.gen-B"), "amq.gen-B");
    let mut names = renamed();
    names.failover();
    assert!(!names.any());
    names.renamed("q", "q");
    assert!(
        !names.any(),
        "a queue that kept its name needs no translation"
    );
}
