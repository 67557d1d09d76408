//! Method frame payloads: class id, method id, arguments.
//!
//! Messages make up nearly all of an AMQP stream, and for each one the session needs a few
//! fields of one method: where a publish goes, which consumer a delivery is for and its delivery
//! tag, which tags an ack settles. The peeks here read those fields in place, borrowing the
//! strings from the payload, with no allocation on success; [`with_delivery_tag`] renumbers a
//! delivery (after a failover, tags from the new node must be mapped to the ones the client was
//! counting) by patching eight bytes in a copy of the payload. Going through `amq-protocol`
//! instead costs an allocation per string and per flag bit, both ways: renumbering a typical
//! basic.deliver took 48 ns by peek and patch against 420 ns by decode and encode when this was
//! written (release build; `peeks_are_cheaper_than_a_full_decode` in `tests/amqp_codec.rs`).
//!
//! Every other method goes through [`decode`] and [`encode`], that is `amq-protocol`'s
//! spec-generated parser and generator, behind a guard against deeply nested field tables
//! (see [`MAX_TABLE_NESTING`](super::MAX_TABLE_NESTING)).
//!
//! Peeks and [`decode`] agree: they accept the same payloads (all of the payload, no byte more,
//! short strings in UTF-8, flag bits beyond the method's own ignored) and refuse the rest with the
//! same error.

pub use super::MethodError;
pub use super::id;

use super::id::MethodName;
use super::{nesting, wire};
use amq_protocol::protocol::{AMQPClass, gen_class, parse_class};
use bytes::{BufMut, Bytes, BytesMut};

/// The class and method id at the start of a method payload, if it is long enough to hold them.
pub fn class_method(payload: &[u8]) -> Option<(u16, u16)> {
    match payload {
        [c0, c1, m0, m1, ..] => Some((
            u16::from_be_bytes([*c0, *c1]),
            u16::from_be_bytes([*m0, *m1]),
        )),
        _ => None,
    }
}

/// Where the delivery tag is in a basic.get-ok payload, and in basic.ack, basic.nack and
/// basic.reject payloads: right after the ids.
pub const TAG_AFTER_IDS: usize = 4;

/// basic.publish (60, 40).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub mandatory: bool,
    pub immediate: bool,
}

/// basic.deliver (60, 60).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deliver<'a> {
    pub consumer_tag: &'a str,
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// Byte offset of the delivery tag in the payload, for [`with_delivery_tag`]. It follows the
    /// consumer tag, so it moves with that tag's length.
    pub tag_offset: usize,
}

/// basic.get-ok (60, 71).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetOk<'a> {
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub message_count: u32,
    /// Always [`TAG_AFTER_IDS`]; here so that deliveries of both kinds are renumbered alike.
    pub tag_offset: usize,
}

/// basic.ack (60, 80), basic.nack (60, 120) or basic.reject (60, 90), which all settle
/// deliveries (from a client) or confirm publishes (from a node) by delivery tag. Fields a method
/// does not carry read as false: `requeue` for ack, `multiple` for reject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ack {
    pub delivery_tag: u64,
    pub multiple: bool,
    pub requeue: bool,
}

/// Opens `payload` as the method `expected`.
fn open<'a>(
    payload: &'a [u8],
    expected: (u16, u16),
    name: &'static str,
) -> Result<wire::Reader<'a>, MethodError> {
    let mut reader = wire::Reader::new(payload);
    let found = reader.id()?;
    if found != expected {
        return Err(MethodError::Unexpected {
            expected: name,
            found,
        });
    }
    Ok(reader)
}

fn bit(bits: u8, index: u8) -> bool {
    bits & (1 << index) != 0
}

/// The routing fields of a basic.publish payload (from its class id on).
pub fn peek_publish(payload: &[u8]) -> Result<Publish<'_>, MethodError> {
    let mut reader = open(payload, id::BASIC_PUBLISH, "basic.publish")?;
    reader.u16()?; // reserved (the old access ticket)
    let exchange = reader.short_str()?;
    let routing_key = reader.short_str()?;
    let bits = reader.u8()?;
    reader.finish()?;
    Ok(Publish {
        exchange,
        routing_key,
        mandatory: bit(bits, 0),
        immediate: bit(bits, 1),
    })
}

pub fn peek_deliver(payload: &[u8]) -> Result<Deliver<'_>, MethodError> {
    let mut reader = open(payload, id::BASIC_DELIVER, "basic.deliver")?;
    let consumer_tag = reader.short_str()?;
    let tag_offset = reader.position();
    let delivery_tag = reader.u64()?;
    let bits = reader.u8()?;
    let exchange = reader.short_str()?;
    let routing_key = reader.short_str()?;
    reader.finish()?;
    Ok(Deliver {
        consumer_tag,
        delivery_tag,
        redelivered: bit(bits, 0),
        exchange,
        routing_key,
        tag_offset,
    })
}

pub fn peek_get_ok(payload: &[u8]) -> Result<GetOk<'_>, MethodError> {
    let mut reader = open(payload, id::BASIC_GET_OK, "basic.get-ok")?;
    let tag_offset = reader.position();
    let delivery_tag = reader.u64()?;
    let bits = reader.u8()?;
    let exchange = reader.short_str()?;
    let routing_key = reader.short_str()?;
    let message_count = reader.u32()?;
    reader.finish()?;
    Ok(GetOk {
        delivery_tag,
        redelivered: bit(bits, 0),
        exchange,
        routing_key,
        message_count,
        tag_offset,
    })
}

/// A basic.ack, basic.nack or basic.reject payload; which one is in
/// [`class_method`]. The tag is at [`TAG_AFTER_IDS`] in all three.
pub fn peek_ack(payload: &[u8]) -> Result<Ack, MethodError> {
    let mut reader = wire::Reader::new(payload);
    let found = reader.id()?;
    if !matches!(found, id::BASIC_ACK | id::BASIC_NACK | id::BASIC_REJECT) {
        return Err(MethodError::Unexpected {
            expected: "basic.ack, basic.nack or basic.reject",
            found,
        });
    }
    let delivery_tag = reader.u64()?;
    let bits = reader.u8()?;
    reader.finish()?;
    let (multiple, requeue) = match found {
        id::BASIC_ACK => (bit(bits, 0), false),
        id::BASIC_REJECT => (false, bit(bits, 0)),
        _ => (bit(bits, 0), bit(bits, 1)),
    };
    Ok(Ack {
        delivery_tag,
        multiple,
        requeue,
    })
}

/// A copy of `payload` with the delivery tag at `tag_offset` replaced by `tag`: the offset from
/// [`Deliver`] or [`GetOk`], or [`TAG_AFTER_IDS`] for ack, nack and reject. The copy is a method
/// payload of a few dozen bytes; bodies are never touched.
///
/// # Panics
///
/// If the eight bytes at `tag_offset` are not all in `payload`. Offsets from a peek at this
/// payload always are.
pub fn with_delivery_tag(payload: &Bytes, tag_offset: usize, tag: u64) -> Bytes {
    let mut copy = BytesMut::from(&payload[..]);
    copy[tag_offset..tag_offset + 8].copy_from_slice(&tag.to_be_bytes());
    copy.freeze()
}

/// A basic.ack, basic.nack or basic.reject payload, `class_method` saying which. Fields the
/// method cannot carry are dropped: `requeue` for ack, `multiple` for reject.
///
/// # Panics
///
/// If `class_method` is none of the three: that is a bug in the caller, not something a peer
/// can cause.
pub fn encode_ack(class_method: (u16, u16), ack: Ack) -> Bytes {
    let bits = match class_method {
        id::BASIC_ACK => u8::from(ack.multiple),
        id::BASIC_REJECT => u8::from(ack.requeue),
        id::BASIC_NACK => u8::from(ack.multiple) | u8::from(ack.requeue) << 1,
        other => panic!("encode_ack given {}", MethodName(other)),
    };
    let mut payload = BytesMut::with_capacity(TAG_AFTER_IDS + 9);
    payload.put_u16(class_method.0);
    payload.put_u16(class_method.1);
    payload.put_u64(ack.delivery_tag);
    payload.put_u8(bits);
    payload.freeze()
}

/// Any method payload (from its class id on), fully decoded by `amq-protocol`.
pub fn decode(payload: &[u8]) -> Result<AMQPClass, MethodError> {
    let method = class_method(payload).ok_or(MethodError::Truncated)?;
    let Some(name) = id::name(method) else {
        return Err(MethodError::Unknown(method.0, method.1));
    };
    nesting::check_method(method, payload)?;
    match parse_class(payload) {
        Ok(([], decoded)) => Ok(decoded),
        Ok((_, _)) => Err(MethodError::Malformed(format!(
            "bytes after the last argument of {name}"
        ))),
        // amq-protocol's parsers are streaming ones: "incomplete" means the payload ran out.
        Err(error) if error.is_incomplete() => Err(MethodError::Truncated),
        Err(_) => Err(MethodError::Malformed(format!(
            "{name} arguments do not parse"
        ))),
    }
}

/// A method payload (class id, method id, arguments) for a method frame.
///
/// A short string longer than 255 bytes cannot be built in the first place (`ShortString`'s
/// `From` panics; build strings from peer input with `ShortString::try_new`), and a
/// `AMQPValue::ShortString` in a field table is written with a type octet (`_`) no peer reads:
/// put `LongString`s in tables.
pub fn encode(method: &AMQPClass) -> Bytes {
    wire::generate(64, gen_class(method))
}

#[cfg(test)]
mod tests;
