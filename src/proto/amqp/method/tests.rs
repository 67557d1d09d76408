use super::*;
use amq_protocol::protocol::{basic, queue};

fn short(text: &str) -> Vec<u8> {
    let mut bytes = vec![text.len() as u8];
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

fn ids(method: (u16, u16)) -> Vec<u8> {
    [method.0.to_be_bytes(), method.1.to_be_bytes()].concat()
}

fn publish_payload(exchange: &str, routing_key: &str, bits: u8) -> Vec<u8> {
    [
        ids(id::BASIC_PUBLISH),
        vec![0, 0],
        short(exchange),
        short(routing_key),
        vec![bits],
    ]
    .concat()
}

fn deliver_payload(consumer_tag: &str, tag: u64, bits: u8) -> Vec<u8> {
    [
        ids(id::BASIC_DELIVER),
        short(consumer_tag),
        tag.to_be_bytes().to_vec(),
        vec![bits],
        short("amq.topic"),
        short("a.b.c"),
    ]
    .concat()
}

fn get_ok_payload(tag: u64, bits: u8, count: u32) -> Vec<u8> {
    [
        ids(id::BASIC_GET_OK),
        tag.to_be_bytes().to_vec(),
        vec![bits],
        short(""),
        short("jobs"),
        count.to_be_bytes().to_vec(),
    ]
    .concat()
}

fn ack_payload(method: (u16, u16), tag: u64, bits: u8) -> Vec<u8> {
    [ids(method), tag.to_be_bytes().to_vec(), vec![bits]].concat()
}

/// Every strict prefix of a valid payload is `Truncated`, and one byte more is `Malformed`.
fn assert_exact(payload: &[u8], peek: impl Fn(&[u8]) -> Result<(), MethodError>) {
    for cut in 0..payload.len() {
        assert_eq!(
            peek(&payload[..cut]).err(),
            Some(MethodError::Truncated),
            "cut at {cut}"
        );
    }
    let longer = [payload, &[0]].concat();
    assert!(matches!(peek(&longer), Err(MethodError::Malformed(_))));
}

#[test]
fn reads_class_and_method_ids() {
    assert_eq!(class_method(&[0, 60, 0, 40]), Some((60, 40)));
    assert_eq!(
        class_method(&[0x01, 0x02, 0x03, 0x04, 9]),
        Some((0x0102, 0x0304))
    );
    assert_eq!(class_method(&[0, 60, 0]), None);
    assert_eq!(class_method(&[]), None);
}

#[test]
fn peeks_at_publish() {
    let payload = publish_payload("amq.direct", "orders", 0b01);
    assert_eq!(
        peek_publish(&payload),
        Ok(Publish {
            exchange: "amq.direct",
            routing_key: "orders",
            mandatory: true,
            immediate: false,
        })
    );
    let flags = |bits| {
        let payload = publish_payload("", "q", bits);
        peek_publish(&payload).map(|p| (p.mandatory, p.immediate))
    };
    assert_eq!(flags(0), Ok((false, false)));
    assert_eq!(flags(0b10), Ok((false, true)));
    // Bits beyond the method's own are ignored, as amq-protocol and RabbitMQ ignore them.
    assert_eq!(flags(0b1111_1111), Ok((true, true)));
    assert_exact(&payload, |p| peek_publish(p).map(drop));
}

#[test]
fn peeks_refuse_bad_utf8() {
    let mut payload = publish_payload("ab", "", 0);
    payload[7] = 0xff;
    assert!(matches!(
        peek_publish(&payload),
        Err(MethodError::Malformed(_))
    ));
    assert!(matches!(decode(&payload), Err(MethodError::Malformed(_))));
}

#[test]
fn peeks_refuse_other_methods() {
    let deliver = deliver_payload("ctag", 1, 0);
    assert_eq!(
        peek_publish(&deliver),
        Err(MethodError::Unexpected {
            expected: "basic.publish",
            found: id::BASIC_DELIVER,
        })
    );
    assert!(matches!(
        peek_get_ok(&deliver),
        Err(MethodError::Unexpected { .. })
    ));
    assert!(matches!(
        peek_deliver(&get_ok_payload(1, 0, 0)),
        Err(MethodError::Unexpected { .. })
    ));
    assert!(matches!(
        peek_ack(&publish_payload("", "", 0)),
        Err(MethodError::Unexpected { .. })
    ));
}

#[test]
fn peeks_at_deliver() {
    let payload = deliver_payload("ctag-1", 42, 1);
    assert_eq!(
        peek_deliver(&payload),
        Ok(Deliver {
            consumer_tag: "ctag-1",
            delivery_tag: 42,
            redelivered: true,
            exchange: "amq.topic",
            routing_key: "a.b.c",
            tag_offset: 4 + 1 + 6,
        })
    );
    assert_exact(&payload, |p| peek_deliver(p).map(drop));
}

#[test]
fn peeks_at_get_ok() {
    let payload = get_ok_payload(u64::MAX, 0, 17);
    assert_eq!(
        peek_get_ok(&payload),
        Ok(GetOk {
            delivery_tag: u64::MAX,
            redelivered: false,
            exchange: "",
            routing_key: "jobs",
            message_count: 17,
            tag_offset: TAG_AFTER_IDS,
        })
    );
    assert_exact(&payload, |p| peek_get_ok(p).map(drop));
}

#[test]
fn peeks_at_ack_nack_and_reject() {
    let ack = |delivery_tag, multiple, requeue| Ack {
        delivery_tag,
        multiple,
        requeue,
    };
    let cases = [
        (id::BASIC_ACK, 0b00, ack(7, false, false)),
        (id::BASIC_ACK, 0b01, ack(7, true, false)),
        (id::BASIC_ACK, 0b10, ack(7, false, false)),
        (id::BASIC_REJECT, 0b00, ack(7, false, false)),
        (id::BASIC_REJECT, 0b01, ack(7, false, true)),
        (id::BASIC_NACK, 0b00, ack(7, false, false)),
        (id::BASIC_NACK, 0b01, ack(7, true, false)),
        (id::BASIC_NACK, 0b10, ack(7, false, true)),
        (id::BASIC_NACK, 0b11, ack(7, true, true)),
    ];
    for (method, bits, expected) in cases {
        let payload = ack_payload(method, 7, bits);
        assert_eq!(peek_ack(&payload), Ok(expected), "{method:?} {bits:#b}");
        assert_exact(&payload, |p| peek_ack(p).map(drop));
    }
}

#[test]
fn replaces_delivery_tags_in_a_copy() {
    let original = Bytes::from(deliver_payload("ctag-1", 42, 1));
    let deliver = peek_deliver(&original).expect("valid");
    let renumbered = with_delivery_tag(&original, deliver.tag_offset, 1_000_000);
    assert_eq!(
        peek_deliver(&renumbered),
        Ok(Deliver {
            delivery_tag: 1_000_000,
            ..deliver
        })
    );
    assert_eq!(peek_deliver(&original).map(|d| d.delivery_tag), Ok(42));

    let get_ok = Bytes::from(get_ok_payload(5, 0, 0));
    let renumbered = with_delivery_tag(&get_ok, TAG_AFTER_IDS, 6);
    assert_eq!(peek_get_ok(&renumbered).map(|g| g.delivery_tag), Ok(6));

    let nack = Bytes::from(ack_payload(id::BASIC_NACK, 9, 0b11));
    let renumbered = with_delivery_tag(&nack, TAG_AFTER_IDS, 3);
    assert_eq!(
        peek_ack(&renumbered),
        Ok(Ack {
            delivery_tag: 3,
            multiple: true,
            requeue: true
        })
    );
}

#[test]
#[should_panic]
fn replacing_a_tag_past_the_end_panics() {
    with_delivery_tag(&Bytes::from_static(&[0; 11]), 4, 1);
}

#[test]
fn encodes_acks() {
    let ack = Ack {
        delivery_tag: 0x0102,
        multiple: true,
        requeue: true,
    };
    assert_eq!(
        &encode_ack(id::BASIC_ACK, ack)[..],
        [0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 1, 2, 1]
    );
    assert_eq!(
        &encode_ack(id::BASIC_NACK, ack)[..],
        [0, 60, 0, 120, 0, 0, 0, 0, 0, 0, 1, 2, 3]
    );
    assert_eq!(
        &encode_ack(id::BASIC_REJECT, ack)[..],
        [0, 60, 0, 90, 0, 0, 0, 0, 0, 0, 1, 2, 1]
    );
    // What each method can carry survives a round trip; the rest reads as false.
    assert_eq!(peek_ack(&encode_ack(id::BASIC_NACK, ack)), Ok(ack));
    assert_eq!(
        peek_ack(&encode_ack(id::BASIC_ACK, ack)),
        Ok(Ack {
            requeue: false,
            ..ack
        })
    );
    assert_eq!(
        peek_ack(&encode_ack(id::BASIC_REJECT, ack)),
        Ok(Ack {
            multiple: false,
            ..ack
        })
    );
    assert_eq!(
        decode(&encode_ack(id::BASIC_REJECT, ack)),
        Ok(AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
            delivery_tag: 0x0102,
            requeue: true,
        })))
    );
}

#[test]
#[should_panic(expected = "encode_ack given basic.publish")]
fn encoding_an_ack_as_another_method_panics() {
    encode_ack(
        id::BASIC_PUBLISH,
        Ack {
            delivery_tag: 1,
            multiple: false,
            requeue: false,
        },
    );
}

#[test]
fn amq_protocol_knows_every_method_in_the_table() {
    for &(method, name) in id::ALL {
        // Ids alone: a method without arguments parses, any other wants more bytes. An id
        // amq-protocol does not know would be an error.
        match parse_class(&ids(method)[..]) {
            Ok((_, decoded)) => assert_eq!(
                (decoded.get_amqp_class_id(), decoded.get_amqp_method_id()),
                method,
                "{name}"
            ),
            Err(error) => assert!(error.is_incomplete(), "{name}: {error:?}"),
        }
    }
}

#[test]
fn decodes_and_encodes_via_amq_protocol() {
    let qos = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
        prefetch_count: 10,
        global: false,
    }));
    let payload = encode(&qos);
    assert_eq!(&payload[..], [0, 60, 0, 10, 0, 0, 0, 0, 0, 10, 0]);
    assert_eq!(decode(&payload), Ok(qos));
}

#[test]
fn decode_refuses_what_amq_protocol_cannot_read() {
    assert_eq!(decode(&[0, 60, 0]), Err(MethodError::Truncated));
    assert_eq!(decode(&[0, 60, 3, 231]), Err(MethodError::Unknown(60, 999)));
    assert_eq!(decode(&[0, 77, 0, 10]), Err(MethodError::Unknown(77, 10)));
    assert_eq!(decode(&[0, 60, 0, 80, 0, 0]), Err(MethodError::Truncated));
    let trailing = [&ack_payload(id::BASIC_ACK, 1, 0)[..], &[0]].concat();
    assert_eq!(
        decode(&trailing),
        Err(MethodError::Malformed(
            "bytes after the last argument of basic.ack".into()
        ))
    );
    // queue.declare with a table whose only value has an unknown type.
    let bad_table = [
        ids(id::QUEUE_DECLARE),
        vec![0, 0],
        short("q"),
        vec![0],
        vec![0, 0, 0, 3, 1, b'k', b'?'],
    ]
    .concat();
    assert_eq!(
        decode(&bad_table),
        Err(MethodError::Malformed(
            "queue.declare arguments do not parse".into()
        ))
    );
}

#[test]
fn decode_refuses_deep_tables_without_blowing_the_stack() {
    // 20,000 levels of {"": {"": ...}} in queue.declare's arguments: about 120 KB, under a
    // common frame_max, and far deeper than amq-protocol's recursive parser survives. A small
    // stack shows that the guard refuses it before any recursion.
    let mut table = 0u32.to_be_bytes().to_vec();
    for _ in 0..20_000 {
        let mut outer = ((table.len() + 2) as u32).to_be_bytes().to_vec();
        outer.extend_from_slice(&[0, b'F']);
        outer.extend_from_slice(&table);
        table = outer;
    }
    let payload = [
        ids(id::QUEUE_DECLARE),
        vec![0, 0],
        short("q"),
        vec![0],
        table,
    ]
    .concat();
    let result = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || decode(&payload))
        .expect("thread")
        .join()
        .expect("no stack overflow");
    assert!(matches!(result, Err(MethodError::Malformed(m)) if m.contains("nested deeper")));

    let shallow = queue::Declare {
        queue: "q".into(),
        ..Default::default()
    };
    let method = AMQPClass::Queue(queue::AMQPMethod::Declare(shallow));
    assert_eq!(decode(&encode(&method)), Ok(method));
}
