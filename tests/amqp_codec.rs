//! Properties of the AMQP 0-9-1 codec that hold for any input: frames survive an encode→decode
//! round trip, and how a stream is cut into reads never changes what is decoded; the hand-written
//! peeks read exactly what `amq-protocol` reads from the same payload, and rewriting a delivery
//! tag changes nothing else; methods and content headers survive `amq-protocol`'s round trip
//! through our `encode`/`decode`; and no input makes the decoder or a peek panic.

use amq_protocol::protocol::{
    AMQPClass, BasicProperties, basic, channel, connection, exchange, queue,
};
use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use std::collections::BTreeMap;
use tether::proto::amqp::{
    self, Ack, FRAME_MIN_SIZE, Frame, FrameCodec, FrameError, FrameType, MethodError, id,
};
use tokio_util::codec::{Decoder, Encoder};

// Frames

fn frame(max_payload: usize) -> impl Strategy<Value = Frame> {
    (
        prop::sample::select(FrameType::ALL.to_vec()),
        any::<u16>(),
        prop::collection::vec(any::<u8>(), 0..=max_payload),
    )
        .prop_map(|(kind, channel, payload)| match kind {
            FrameType::Heartbeat => Frame::heartbeat(),
            kind => Frame::new(kind, channel, Bytes::from(payload)),
        })
}

fn encode_frames(codec: &mut FrameCodec, frames: &[Frame]) -> Vec<u8> {
    let mut wire = BytesMut::new();
    for frame in frames {
        codec
            .encode(frame, &mut wire)
            .expect("frame within frame_max");
    }
    wire.to_vec()
}

/// Feeds `wire` in reads ending at `cuts` (and the end) and decodes everything.
fn decode_in_reads(max: u32, wire: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let mut codec = FrameCodec::new(max);
    let mut src = BytesMut::new();
    let mut frames = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
        src.extend_from_slice(&wire[start..end]);
        start = end;
        while let Some(frame) = codec.decode(&mut src).expect("valid stream") {
            frames.push(frame);
        }
    }
    assert!(src.is_empty(), "stream ended inside a frame");
    frames
}

/// Decodes until the codec wants more or refuses the input; must not panic either way.
fn decode_garbage(codec: &mut FrameCodec, src: &mut BytesMut) -> Result<(), FrameError> {
    // Every frame consumes at least 8 bytes, so this ends.
    while codec.decode(src)?.is_some() {}
    Ok(())
}

// Method and property values

/// Up to 40 characters of any kind: at most 160 bytes, within a short string's 255.
fn short_string() -> impl Strategy<Value = ShortString> {
    ".{0,40}".prop_map(ShortString::from)
}

fn long_string() -> impl Strategy<Value = LongString> {
    prop::collection::vec(any::<u8>(), 0..32).prop_map(LongString::from)
}

/// Any field value that survives a round trip: not `ShortString` (amq-protocol writes it with a
/// type octet no one reads, `_`) and no NaN (never equal to itself).
fn field_value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<i16>().prop_map(|v| AMQPValue::Float(f32::from(v) / 4.0)),
        any::<i32>().prop_map(|v| AMQPValue::Double(f64::from(v) / 8.0)),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        long_string().prop_map(AMQPValue::LongString),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        prop::collection::vec(any::<u8>(), 0..8)
            .prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|values| AMQPValue::FieldArray(FieldArray::from(values))),
            prop::collection::btree_map(short_string(), inner, 0..4)
                .prop_map(|entries| AMQPValue::FieldTable(FieldTable::from(entries))),
        ]
    })
}

fn field_table() -> impl Strategy<Value = FieldTable> {
    prop::collection::btree_map(short_string(), field_value(), 0..5)
        .prop_map(|entries: BTreeMap<_, _>| FieldTable::from(entries))
}

fn basic_method(method: basic::AMQPMethod) -> AMQPClass {
    AMQPClass::Basic(method)
}

/// The methods whose arguments tether reads most: the handshake, declarations, consumers,
/// closes.
fn sample_method() -> impl Strategy<Value = AMQPClass> {
    let flags = prop::array::uniform5(any::<bool>());
    prop_oneof![
        (short_string(), flags, field_table()).prop_map(|(queue, f, arguments)| {
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue,
                passive: f[0],
                durable: f[1],
                exclusive: f[2],
                auto_delete: f[3],
                nowait: f[4],
                arguments,
            }))
        }),
        (short_string(), short_string(), flags, field_table()).prop_map(
            |(queue, consumer_tag, f, arguments)| {
                basic_method(basic::AMQPMethod::Consume(basic::Consume {
                    queue,
                    consumer_tag,
                    no_local: f[0],
                    no_ack: f[1],
                    exclusive: f[2],
                    nowait: f[3],
                    arguments,
                }))
            }
        ),
        (short_string(), short_string(), flags, field_table()).prop_map(
            |(exchange, kind, f, arguments)| {
                AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                    exchange,
                    kind,
                    passive: f[0],
                    durable: f[1],
                    auto_delete: f[2],
                    internal: f[3],
                    nowait: f[4],
                    arguments,
                }))
            }
        ),
        (
            any::<u8>(),
            any::<u8>(),
            field_table(),
            long_string(),
            long_string()
        )
            .prop_map(
                |(version_major, version_minor, server_properties, mechanisms, locales)| {
                    AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                        version_major,
                        version_minor,
                        server_properties,
                        mechanisms,
                        locales,
                    }))
                }
            ),
        (field_table(), short_string(), long_string(), short_string()).prop_map(
            |(client_properties, mechanism, response, locale)| {
                AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                    client_properties,
                    mechanism,
                    response,
                    locale,
                }))
            }
        ),
        (any::<u16>(), any::<u32>(), any::<u16>(), any::<bool>()).prop_map(
            |(channel_max, frame_max, heartbeat, ok)| {
                AMQPClass::Connection(if ok {
                    connection::AMQPMethod::TuneOk(connection::TuneOk {
                        channel_max,
                        frame_max,
                        heartbeat,
                    })
                } else {
                    connection::AMQPMethod::Tune(connection::Tune {
                        channel_max,
                        frame_max,
                        heartbeat,
                    })
                })
            }
        ),
        short_string().prop_map(|virtual_host| {
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host,
            }))
        }),
        (
            any::<u16>(),
            short_string(),
            any::<u16>(),
            any::<u16>(),
            any::<bool>()
        )
            .prop_map(
                |(reply_code, reply_text, class_id, method_id, on_channel)| {
                    if on_channel {
                        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                            reply_code,
                            reply_text,
                            class_id,
                            method_id,
                        }))
                    } else {
                        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                            reply_code,
                            reply_text,
                            class_id,
                            method_id,
                        }))
                    }
                }
            ),
    ]
}

/// Any basic properties, each one present or not.
fn properties() -> impl Strategy<Value = BasicProperties> {
    let strings = prop::array::uniform10(prop::option::of(short_string()));
    (
        strings,
        prop::option::of(field_table()),
        prop::option::of(any::<u8>()),
        prop::option::of(any::<u8>()),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(s, headers, delivery_mode, priority, timestamp)| {
            let [
                content_type,
                content_encoding,
                correlation_id,
                reply_to,
                expiration,
                message_id,
                kind,
                user_id,
                app_id,
                cluster_id,
            ] = s;
            let mut p = BasicProperties::default();
            p = content_type.map_or(p.clone(), |v| p.with_content_type(v));
            p = content_encoding.map_or(p.clone(), |v| p.with_content_encoding(v));
            p = headers.map_or(p.clone(), |v| p.with_headers(v));
            p = delivery_mode.map_or(p.clone(), |v| p.with_delivery_mode(v));
            p = priority.map_or(p.clone(), |v| p.with_priority(v));
            p = correlation_id.map_or(p.clone(), |v| p.with_correlation_id(v));
            p = reply_to.map_or(p.clone(), |v| p.with_reply_to(v));
            p = expiration.map_or(p.clone(), |v| p.with_expiration(v));
            p = message_id.map_or(p.clone(), |v| p.with_message_id(v));
            p = timestamp.map_or(p.clone(), |v| p.with_timestamp(v));
            p = kind.map_or(p.clone(), |v| p.with_type(v));
            p = user_id.map_or(p.clone(), |v| p.with_user_id(v));
            p = app_id.map_or(p.clone(), |v| p.with_app_id(v));
            cluster_id.map_or(p.clone(), |v| p.with_cluster_id(v))
        })
}

/// Whether two results failed (or succeeded) the same way.
fn same_outcome<A, B>(a: &Result<A, MethodError>, b: &Result<B, MethodError>) -> bool {
    matches!(
        (a, b),
        (Ok(_), Ok(_))
            | (Err(MethodError::Truncated), Err(MethodError::Truncated))
            | (
                Err(MethodError::Malformed(_)),
                Err(MethodError::Malformed(_))
            )
    )
}

/// Payloads near the hot-path methods: their ids followed by random bytes, or a valid encoding
/// cut short, extended, or with one byte changed.
fn near_miss_payload() -> impl Strategy<Value = Vec<u8>> {
    let hot = prop::sample::select(vec![
        id::BASIC_PUBLISH,
        id::BASIC_DELIVER,
        id::BASIC_GET_OK,
        id::BASIC_ACK,
        id::BASIC_NACK,
        id::BASIC_REJECT,
    ]);
    let random_tail =
        (hot, prop::collection::vec(any::<u8>(), 0..48)).prop_map(|(method, tail)| {
            let mut payload = [method.0.to_be_bytes(), method.1.to_be_bytes()].concat();
            payload.extend_from_slice(&tail);
            payload
        });
    let valid = prop_oneof![
        (short_string(), short_string(), any::<bool>()).prop_map(
            |(exchange, routing_key, mandatory)| {
                amqp::encode(&basic_method(basic::AMQPMethod::Publish(basic::Publish {
                    exchange,
                    routing_key,
                    mandatory,
                    immediate: false,
                })))
            }
        ),
        (short_string(), any::<u64>(), short_string()).prop_map(
            |(consumer_tag, delivery_tag, exchange)| {
                amqp::encode(&basic_method(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag,
                    delivery_tag,
                    redelivered: true,
                    exchange,
                    routing_key: "rk".into(),
                })))
            }
        ),
        (any::<u64>(), short_string(), any::<u32>()).prop_map(
            |(delivery_tag, routing_key, message_count)| {
                amqp::encode(&basic_method(basic::AMQPMethod::GetOk(basic::GetOk {
                    delivery_tag,
                    redelivered: false,
                    exchange: "".into(),
                    routing_key,
                    message_count,
                })))
            }
        ),
        any::<u64>().prop_map(|tag| amqp::encode_ack(
            id::BASIC_NACK,
            Ack {
                delivery_tag: tag,
                multiple: true,
                requeue: false
            }
        )),
    ];
    let mutated = (valid, any::<prop::sample::Index>(), any::<u8>(), 0..3u8).prop_map(
        |(payload, at, byte, how)| {
            let mut payload = payload.to_vec();
            let at = at.index(payload.len());
            match how {
                0 => payload.truncate(at),
                1 => payload.push(byte),
                _ => payload[at] = byte,
            }
            payload
        },
    );
    prop_oneof![random_tail, mutated]
}

/// Content header payloads: random bytes, or a valid header cut short or with a byte changed.
fn near_miss_header() -> impl Strategy<Value = Vec<u8>> {
    let valid = (properties(), any::<u64>()).prop_map(|(properties, size)| {
        amqp::encode_header(id::BASIC_CLASS, size, &properties).to_vec()
    });
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (
            valid,
            any::<prop::sample::Index>(),
            any::<u8>(),
            any::<bool>()
        )
            .prop_map(|(mut payload, at, byte, cut)| {
                let at = at.index(payload.len());
                if cut {
                    payload.truncate(at);
                } else {
                    payload[at] = byte;
                }
                payload
            }),
    ]
}

proptest! {
    #[test]
    fn frames_survive_a_round_trip(frame in frame(200), unlimited in any::<bool>()) {
        let mut codec = FrameCodec::new(if unlimited { 0 } else { FRAME_MIN_SIZE });
        let mut src = BytesMut::from(&encode_frames(&mut codec, std::slice::from_ref(&frame))[..]);
        prop_assert_eq!(src.len(), frame.wire_size());
        let decoded = codec.decode(&mut src).expect("decodes");
        prop_assert_eq!(decoded, Some(frame));
        prop_assert!(src.is_empty());
    }

    #[test]
    fn how_a_stream_is_cut_into_reads_changes_nothing(
        frames in prop::collection::vec(frame(40), 0..6),
    ) {
        let max = 48;
        let wire = encode_frames(&mut FrameCodec::new(max), &frames);
        prop_assert_eq!(&decode_in_reads(max, &wire, &[]), &frames);
        for cut in 0..=wire.len() {
            prop_assert_eq!(&decode_in_reads(max, &wire, &[cut]), &frames, "cut at {}", cut);
        }
        let every_byte: Vec<usize> = (1..wire.len()).collect();
        prop_assert_eq!(&decode_in_reads(max, &wire, &every_byte), &frames);
    }

    #[test]
    fn garbage_never_panics_the_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        read in 1usize..64,
        small in any::<bool>(),
    ) {
        let mut codec = FrameCodec::new(if small { 24 } else { 131_072 });
        let mut src = BytesMut::new();
        let mut result = Ok(());
        for chunk in bytes.chunks(read) {
            src.extend_from_slice(chunk);
            result = decode_garbage(&mut codec, &mut src);
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            let _ = codec.decode_eof(&mut src);
        }
    }

    /// Random bytes rarely start with a frame type; real frames with one byte changed reach the
    /// size, limit and frame-end checks.
    #[test]
    fn damaged_streams_never_panic_the_decoder(
        frames in prop::collection::vec(frame(40), 1..5),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        read in 1usize..16,
    ) {
        let mut wire = encode_frames(&mut FrameCodec::new(0), &frames);
        let at = at.index(wire.len());
        wire[at] = byte;
        let mut codec = FrameCodec::new(48);
        let mut src = BytesMut::new();
        for chunk in wire.chunks(read) {
            src.extend_from_slice(chunk);
            if decode_garbage(&mut codec, &mut src).is_err() {
                return Ok(());
            }
        }
    }

    #[test]
    fn publish_peek_reads_what_amq_protocol_wrote(
        exchange in short_string(),
        routing_key in short_string(),
        mandatory in any::<bool>(),
        immediate in any::<bool>(),
    ) {
        let method = basic_method(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.clone(),
            routing_key: routing_key.clone(),
            mandatory,
            immediate,
        }));
        let payload = amqp::encode(&method);
        prop_assert_eq!(amqp::class_method(&payload), Some(id::BASIC_PUBLISH));
        let peek = amqp::peek_publish(&payload).expect("peeks");
        prop_assert_eq!(peek, amqp::Publish {
            exchange: exchange.as_str(),
            routing_key: routing_key.as_str(),
            mandatory,
            immediate,
        });
        prop_assert_eq!(amqp::decode(&payload), Ok(method));
    }

    #[test]
    fn deliver_peek_and_retagging_agree_with_amq_protocol(
        consumer_tag in short_string(),
        delivery_tag in any::<u64>(),
        redelivered in any::<bool>(),
        exchange in short_string(),
        routing_key in short_string(),
        new_tag in any::<u64>(),
    ) {
        let deliver = basic::Deliver {
            consumer_tag: consumer_tag.clone(),
            delivery_tag,
            redelivered,
            exchange: exchange.clone(),
            routing_key: routing_key.clone(),
        };
        let payload = amqp::encode(&basic_method(basic::AMQPMethod::Deliver(deliver.clone())));
        let peek = amqp::peek_deliver(&payload).expect("peeks");
        prop_assert_eq!(peek, amqp::Deliver {
            consumer_tag: consumer_tag.as_str(),
            delivery_tag,
            redelivered,
            exchange: exchange.as_str(),
            routing_key: routing_key.as_str(),
            tag_offset: 4 + 1 + consumer_tag.as_str().len(),
        });
        let retagged = amqp::with_delivery_tag(&payload, peek.tag_offset, new_tag);
        prop_assert_eq!(
            amqp::decode(&retagged),
            Ok(basic_method(basic::AMQPMethod::Deliver(basic::Deliver {
                delivery_tag: new_tag,
                ..deliver
            })))
        );
        prop_assert_eq!(retagged.len(), payload.len());
    }

    #[test]
    fn get_ok_peek_and_retagging_agree_with_amq_protocol(
        delivery_tag in any::<u64>(),
        redelivered in any::<bool>(),
        exchange in short_string(),
        routing_key in short_string(),
        message_count in any::<u32>(),
        new_tag in any::<u64>(),
    ) {
        let get_ok = basic::GetOk {
            delivery_tag,
            redelivered,
            exchange: exchange.clone(),
            routing_key: routing_key.clone(),
            message_count,
        };
        let payload = amqp::encode(&basic_method(basic::AMQPMethod::GetOk(get_ok.clone())));
        let peek = amqp::peek_get_ok(&payload).expect("peeks");
        prop_assert_eq!(peek, amqp::GetOk {
            delivery_tag,
            redelivered,
            exchange: exchange.as_str(),
            routing_key: routing_key.as_str(),
            message_count,
            tag_offset: 4,
        });
        let retagged = amqp::with_delivery_tag(&payload, peek.tag_offset, new_tag);
        prop_assert_eq!(
            amqp::decode(&retagged),
            Ok(basic_method(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: new_tag,
                ..get_ok
            })))
        );
    }

    #[test]
    fn ack_peeks_and_encoding_agree_with_amq_protocol(
        delivery_tag in any::<u64>(),
        multiple in any::<bool>(),
        requeue in any::<bool>(),
        which in 0..3u8,
        new_tag in any::<u64>(),
    ) {
        let (method, expected) = match which {
            0 => (
                basic::AMQPMethod::Ack(basic::Ack { delivery_tag, multiple }),
                Ack { delivery_tag, multiple, requeue: false },
            ),
            1 => (
                basic::AMQPMethod::Reject(basic::Reject { delivery_tag, requeue }),
                Ack { delivery_tag, multiple: false, requeue },
            ),
            _ => (
                basic::AMQPMethod::Nack(basic::Nack { delivery_tag, multiple, requeue }),
                Ack { delivery_tag, multiple, requeue },
            ),
        };
        let method = basic_method(method);
        let payload = amqp::encode(&method);
        let class_method = amqp::class_method(&payload).expect("ids");
        prop_assert_eq!(amqp::peek_ack(&payload), Ok(expected));
        // Our encoder writes exactly what amq-protocol writes.
        prop_assert_eq!(&amqp::encode_ack(class_method, expected), &payload);

        let retagged = amqp::with_delivery_tag(&payload, 4, new_tag);
        prop_assert_eq!(
            amqp::peek_ack(&retagged),
            Ok(Ack { delivery_tag: new_tag, ..expected })
        );
        prop_assert_eq!(
            amqp::decode(&retagged),
            amqp::decode(&amqp::encode_ack(class_method, Ack { delivery_tag: new_tag, ..expected }))
        );
    }

    #[test]
    fn methods_survive_a_round_trip(method in sample_method()) {
        let payload = amqp::encode(&method);
        prop_assert_eq!(
            amqp::class_method(&payload),
            Some((method.get_amqp_class_id(), method.get_amqp_method_id()))
        );
        prop_assert_eq!(amqp::decode(&payload), Ok(method));
    }

    #[test]
    fn content_headers_survive_a_round_trip(
        properties in properties(),
        body_size in any::<u64>(),
    ) {
        let payload = amqp::encode_header(id::BASIC_CLASS, body_size, &properties);
        let peek = amqp::peek_header(&payload).expect("peeks");
        prop_assert_eq!(peek, amqp::HeaderPeek { class_id: id::BASIC_CLASS, body_size });
        prop_assert_eq!(amqp::decode_properties(&payload), Ok((peek, properties.clone())));
        prop_assert_eq!(
            amqp::reply_to(&payload),
            Ok(properties.reply_to().as_ref().map(ShortString::as_str))
        );
    }

    /// On any payload, a peek and the full decoder accept the same payloads, read the same
    /// fields and refuse the rest the same way; neither panics.
    #[test]
    fn peeks_agree_with_decode_on_any_payload(payload in near_miss_payload()) {
        let decoded = amqp::decode(&payload);
        match amqp::class_method(&payload) {
            Some(id::BASIC_PUBLISH) => {
                let peek = amqp::peek_publish(&payload);
                prop_assert!(same_outcome(&peek, &decoded), "{:?} vs {:?}", peek, decoded);
                if let (Ok(peek), Ok(AMQPClass::Basic(basic::AMQPMethod::Publish(p)))) = (peek, &decoded) {
                    prop_assert_eq!(
                        (peek.exchange, peek.routing_key, peek.mandatory, peek.immediate),
                        (p.exchange.as_str(), p.routing_key.as_str(), p.mandatory, p.immediate)
                    );
                }
            }
            Some(id::BASIC_DELIVER) => {
                let peek = amqp::peek_deliver(&payload);
                prop_assert!(same_outcome(&peek, &decoded), "{:?} vs {:?}", peek, decoded);
                if let (Ok(peek), Ok(AMQPClass::Basic(basic::AMQPMethod::Deliver(d)))) = (peek, &decoded) {
                    prop_assert_eq!(
                        (peek.consumer_tag, peek.delivery_tag, peek.redelivered, peek.exchange, peek.routing_key),
                        (d.consumer_tag.as_str(), d.delivery_tag, d.redelivered, d.exchange.as_str(), d.routing_key.as_str())
                    );
                }
            }
            Some(id::BASIC_GET_OK) => {
                let peek = amqp::peek_get_ok(&payload);
                prop_assert!(same_outcome(&peek, &decoded), "{:?} vs {:?}", peek, decoded);
                if let (Ok(peek), Ok(AMQPClass::Basic(basic::AMQPMethod::GetOk(g)))) = (peek, &decoded) {
                    prop_assert_eq!(
                        (peek.delivery_tag, peek.redelivered, peek.exchange, peek.routing_key, peek.message_count),
                        (g.delivery_tag, g.redelivered, g.exchange.as_str(), g.routing_key.as_str(), g.message_count)
                    );
                }
            }
            Some(method @ (id::BASIC_ACK | id::BASIC_NACK | id::BASIC_REJECT)) => {
                let peek = amqp::peek_ack(&payload);
                prop_assert!(same_outcome(&peek, &decoded), "{:?} vs {:?}", peek, decoded);
                if let Ok(peek) = peek {
                    // The canonical encoding of what the peek read decodes to what decode read.
                    prop_assert_eq!(amqp::decode(&amqp::encode_ack(method, peek)), decoded);
                }
            }
            _ => {
                // Cut before the ids, or changed into another method: peeks must refuse it
                // without panicking.
                prop_assert!(amqp::peek_publish(&payload).is_err());
                prop_assert!(amqp::peek_deliver(&payload).is_err());
                prop_assert!(amqp::peek_get_ok(&payload).is_err());
                prop_assert!(amqp::peek_ack(&payload).is_err());
            }
        }
    }

    #[test]
    fn header_peeks_agree_with_decode_on_any_payload(payload in near_miss_header()) {
        let peek = amqp::peek_header(&payload);
        let reply_to = amqp::reply_to(&payload);
        match amqp::decode_properties(&payload) {
            Ok((header, properties)) => {
                prop_assert_eq!(peek, Ok(header));
                prop_assert_eq!(reply_to, Ok(properties.reply_to().as_ref().map(ShortString::as_str)));
            }
            // The peeks check less; they may accept what the decoder refuses, but a header
            // too short for its flags is refused by all.
            Err(_) => {
                if payload.len() < 14 {
                    prop_assert_eq!(peek, Err(MethodError::Truncated));
                    prop_assert_eq!(reply_to, Err(MethodError::Truncated));
                }
            }
        }
    }

    #[test]
    fn arbitrary_payloads_never_panic(payload in prop::collection::vec(any::<u8>(), 0..96)) {
        let _ = amqp::peek_publish(&payload);
        let _ = amqp::peek_deliver(&payload);
        let _ = amqp::peek_get_ok(&payload);
        let _ = amqp::peek_ack(&payload);
        let _ = amqp::peek_header(&payload);
        let _ = amqp::reply_to(&payload);
        let _ = amqp::decode(&payload);
        let _ = amqp::decode_properties(&payload);
    }
}

/// What the hand-written peeks buy on the hot path: renumbering one typical basic.deliver,
/// peek and patch against decode, change and encode through amq-protocol. Run with
/// `cargo test --release --test amqp_codec -- --ignored --nocapture`.
#[test]
#[ignore = "timing, not a check; run in release"]
fn peeks_are_cheaper_than_a_full_decode() {
    use std::hint::black_box;
    use std::time::Instant;

    let deliver = basic::Deliver {
        consumer_tag: "amq.ctag-kX3bGQ9oVmFzV0Jr2xP1dA".into(),
        delivery_tag: 1_234_567,
        redelivered: false,
        exchange: "orders".into(),
        routing_key: "order.created.eu-west".into(),
    };
    let payload = amqp::encode(&basic_method(basic::AMQPMethod::Deliver(deliver)));
    const ROUNDS: u32 = 1_000_000;

    let start = Instant::now();
    for round in 0..ROUNDS {
        let payload = black_box(&payload);
        let peek = amqp::peek_deliver(payload).expect("valid");
        let renumbered = amqp::with_delivery_tag(payload, peek.tag_offset, u64::from(round));
        black_box(renumbered);
    }
    let peeked = start.elapsed() / ROUNDS;

    let start = Instant::now();
    for round in 0..ROUNDS {
        let payload = black_box(&payload);
        let AMQPClass::Basic(basic::AMQPMethod::Deliver(mut deliver)) =
            amqp::decode(payload).expect("valid")
        else {
            unreachable!("a deliver");
        };
        deliver.delivery_tag = u64::from(round);
        black_box(amqp::encode(&basic_method(basic::AMQPMethod::Deliver(
            deliver,
        ))));
    }
    let decoded = start.elapsed() / ROUNDS;

    let start = Instant::now();
    for _ in 0..ROUNDS {
        black_box(amqp::peek_deliver(black_box(&payload)).expect("valid"));
    }
    let peek_only = start.elapsed() / ROUNDS;

    let start = Instant::now();
    for _ in 0..ROUNDS {
        black_box(amqp::decode(black_box(&payload)).expect("valid"));
    }
    let decode_only = start.elapsed() / ROUNDS;

    println!(
        "basic.deliver of {} bytes, per message: peek + with_delivery_tag {peeked:?}, \
         decode + encode {decoded:?} ({:.1}x); peek alone {peek_only:?}, decode alone {decode_only:?}",
        payload.len(),
        decoded.as_secs_f64() / peeked.as_secs_f64(),
    );
}
