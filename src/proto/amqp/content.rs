//! Content header payloads: class id, weight (always 0), body size, then the property flags and
//! the properties they announce.
//!
//! The session needs the body size of every message (to know when its last body frame is in)
//! and, for RPC over a failover, the reply-to property of some; [`peek_header`] and [`reply_to`]
//! read those in place. [`decode_properties`] and [`encode_header`] go through `amq-protocol`
//! for the rare message whose properties tether must change.
//!
//! [`reply_to`] stays a peek even when a headers table comes first: a field table carries its
//! length in front, so skipping it is one read, not a parse. It returns the string borrowed from
//! the payload, and validates only what it reads: the property flags, the lengths of the
//! properties in front of reply-to, and reply-to itself. A payload it accepts may still be one
//! that [`decode_properties`] refuses (a bad headers table, say); on every payload that
//! [`decode_properties`] accepts, the two agree.
//!
//! Property flags are read as RabbitMQ and `amq-protocol` read them: the 14 flags of the basic
//! class, and the two low bits (one of them the spec's "more flags follow" bit, which no basic
//! property list needs) ignored.

use super::{MethodError, nesting, wire};
use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::protocol::BasicProperties;
use amq_protocol::protocol::basic::gen_properties;
use amq_protocol::types::generation::{gen_id, gen_long_long_uint, gen_short_uint};
use bytes::Bytes;

/// Class id (2), weight (2), body size (8): where the property flags start.
const FLAGS_OFFSET: usize = 12;

const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct HeaderPeek {
    /// The class of the method the content belongs to: 60 ([`BASIC_CLASS`](super::id::BASIC_CLASS)) for every method
    /// that has content. The session checks it against the method that came before.
    pub class_id: u16,
    /// The sum of the body frames' payloads that follow.
    pub body_size: u64,
}

/// Class id and body size. Requires the property flags to be there too, but reads no property.
pub fn peek_header(payload: &[u8]) -> Result<HeaderPeek, MethodError> {
    let mut reader = wire::Reader::new(payload);
    let class_id = reader.u16()?;
    reader.u16()?; // weight: unused, 0 by the spec, whatever it is
    let body_size = reader.u64()?;
    reader.u16()?; // property flags
    Ok(HeaderPeek {
        class_id,
        body_size,
    })
}

/// The whole content header. The properties are read as basic properties whatever the class id
/// says: no other class has content.
pub fn decode_properties(payload: &[u8]) -> Result<(HeaderPeek, BasicProperties), MethodError> {
    let peek = peek_header(payload)?;
    check_headers_nesting(payload)?;
    match parse_content_header(payload) {
        Ok(([], header)) => Ok((peek, header.properties)),
        Ok((_, _)) => Err(MethodError::malformed("bytes after the last property")),
        // amq-protocol's parsers are streaming ones: "incomplete" means the payload ran out.
        Err(error) if error.is_incomplete() => Err(MethodError::Truncated),
        Err(_) => Err(MethodError::malformed("content properties do not parse")),
    }
}

/// Refuses a headers property nested deeper than amq-protocol's parser can safely recurse.
fn check_headers_nesting(payload: &[u8]) -> Result<(), MethodError> {
    let mut reader = wire::Reader::new(payload);
    let reached = (|| {
        reader.take(FLAGS_OFFSET)?;
        let flags = reader.u16()?;
        if flags & CONTENT_TYPE != 0 {
            reader.skip_short_str()?;
        }
        if flags & CONTENT_ENCODING != 0 {
            reader.skip_short_str()?;
        }
        Ok::<bool, MethodError>(flags & HEADERS != 0)
    })();
    match reached {
        Ok(true) => nesting::check_table(&mut reader),
        // No headers, or cut short before them: nothing deep to fear.
        Ok(false) | Err(_) => Ok(()),
    }
}

/// A content header payload for a header frame. `class_id` is [`BASIC_CLASS`](super::id::BASIC_CLASS) for all content
/// there is.
pub fn encode_header(class_id: u16, body_size: u64, properties: &BasicProperties) -> Bytes {
    wire::generate(64, move |out| {
        let out = gen_id(class_id)(out)?;
        let out = gen_short_uint(0)(out)?;
        let out = gen_long_long_uint(body_size)(out)?;
        gen_properties(properties)(out)
    })
}

/// The reply-to property, read in place (see the module docs for what it checks).
pub fn reply_to(payload: &[u8]) -> Result<Option<&str>, MethodError> {
    let mut reader = wire::Reader::new(payload);
    reader.take(FLAGS_OFFSET)?;
    let flags = reader.u16()?;
    if flags & REPLY_TO == 0 {
        return Ok(None);
    }
    if flags & CONTENT_TYPE != 0 {
        reader.skip_short_str()?;
    }
    if flags & CONTENT_ENCODING != 0 {
        reader.skip_short_str()?;
    }
    if flags & HEADERS != 0 {
        reader.skip_long()?;
    }
    if flags & DELIVERY_MODE != 0 {
        reader.u8()?;
    }
    if flags & PRIORITY != 0 {
        reader.u8()?;
    }
    if flags & CORRELATION_ID != 0 {
        reader.skip_short_str()?;
    }
    reader.short_str().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::amqp::id::BASIC_CLASS;
    use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};

    fn header(flags: u16, properties: &[u8]) -> Vec<u8> {
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        payload.extend_from_slice(&flags.to_be_bytes());
        payload.extend_from_slice(properties);
        payload
    }

    #[test]
    fn peeks_at_class_and_body_size() {
        let payload = header(0, b"");
        assert_eq!(
            peek_header(&payload),
            Ok(HeaderPeek {
                class_id: 60,
                body_size: 256
            })
        );
        // Flags missing: not a content header yet.
        assert_eq!(peek_header(&payload[..13]), Err(MethodError::Truncated));
        assert_eq!(peek_header(&[]), Err(MethodError::Truncated));
    }

    #[test]
    fn builds_the_wire_format() {
        let properties = BasicProperties::default().with_delivery_mode(2);
        let payload = encode_header(BASIC_CLASS, 5, &properties);
        assert_eq!(
            &payload[..],
            [0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0b0001_0000, 0, 2]
        );
        let (peek, decoded) = decode_properties(&payload).expect("decodes");
        assert_eq!(peek.body_size, 5);
        assert_eq!(decoded, properties);
    }

    #[test]
    fn reads_reply_to_past_every_property_before_it() {
        let mut table = FieldTable::default();
        table.insert(
            ShortString::from("x-trace"),
            AMQPValue::LongString(LongString::from("abc")),
        );
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("gzip".into())
            .with_headers(table)
            .with_delivery_mode(2)
            .with_priority(9)
            .with_correlation_id("c-1".into())
            .with_reply_to("amq.rabbitmq.reply-to.g1h2AA".into())
            .with_message_id("m-1".into());
        let payload = encode_header(BASIC_CLASS, 0, &properties);
        assert_eq!(reply_to(&payload), Ok(Some("amq.rabbitmq.reply-to.g1h2AA")));
        assert_eq!(
            reply_to(&encode_header(60, 0, &BasicProperties::default())),
            Ok(None)
        );
        let only = BasicProperties::default().with_reply_to("r".into());
        assert_eq!(reply_to(&encode_header(60, 0, &only)), Ok(Some("r")));
    }

    #[test]
    fn reply_to_checks_what_it_reads() {
        assert_eq!(
            reply_to(&header(REPLY_TO | HEADERS, &[0, 0, 0, 9, 1])),
            Err(MethodError::Truncated)
        );
        assert_eq!(
            reply_to(&header(REPLY_TO, &[3, b'a'])),
            Err(MethodError::Truncated)
        );
        assert!(matches!(
            reply_to(&header(REPLY_TO, &[1, 0xff])),
            Err(MethodError::Malformed(_))
        ));
        assert_eq!(reply_to(&header(REPLY_TO, &[0])), Ok(Some("")));
        assert_eq!(reply_to(&[0; 13]), Err(MethodError::Truncated));
    }

    #[test]
    fn decoding_refuses_what_does_not_parse() {
        assert_eq!(
            decode_properties(&header(CONTENT_TYPE, &[5, b'a'])),
            Err(MethodError::Truncated)
        );
        assert!(matches!(
            decode_properties(&header(0, &[0])),
            Err(MethodError::Malformed(_))
        ));
        // A headers table with an unknown value type.
        assert!(matches!(
            decode_properties(&header(HEADERS, &[0, 0, 0, 3, 1, b'k', b'?'])),
            Err(MethodError::Malformed(_))
        ));
    }

    #[test]
    fn refuses_headers_nested_too_deep() {
        let mut table = 0u32.to_be_bytes().to_vec();
        for _ in 0..10_000 {
            let mut outer = ((table.len() + 2) as u32).to_be_bytes().to_vec();
            outer.extend_from_slice(&[0, b'F']);
            outer.extend_from_slice(&table);
            table = outer;
        }
        let payload = header(HEADERS | REPLY_TO, &[&table[..], b"\x01r"].concat());
        let error = decode_properties(&payload).expect_err("too deep");
        assert_eq!(
            error.to_string(),
            "malformed payload: field tables nested deeper than 32 levels"
        );
        // The peek skips the table by its length, deep or not.
        assert_eq!(reply_to(&payload), Ok(Some("r")));
    }
}
