//! AMQP 0-9-1 frames, methods and content headers, for a session that terminates the protocol on
//! both legs.
//!
//! tether reads every frame a client or node sends, but looks inside very few of them: a message
//! is a basic.publish or basic.deliver method frame, a content header and body frames, and the
//! session only needs the method's routing fields, its delivery tag (to renumber it after a
//! failover) and now and then the reply-to property. Those are read in place by hand-written
//! "peeks" that neither copy nor allocate; bodies are never copied at all. Everything else
//! (handshake, declarations, consumers, confirms, transactions) is rare enough to go through the
//! full decoder and encoder of the spec-generated `amq-protocol` crate, whose types the session
//! keeps in its replay log.
//!
//! # Layout
//!
//! - [`frame`]: [`Frame`] (type, channel, zero-copy payload) and [`FrameCodec`], which caps a
//!   frame's announced size before buffering it.
//! - [`id`]: the class and method ids of the spec and their names.
//! - [`method`]: peeks at the hot-path methods ([`peek_publish`], [`peek_deliver`],
//!   [`peek_get_ok`], [`peek_ack`]), delivery-tag rewriting, and full [`decode`]/[`encode`] of
//!   any method via `amq-protocol`.
//! - [`content`]: content header frames: [`peek_header`], [`reply_to`], [`decode_properties`],
//!   [`encode_header`].
//! - [`MethodError`] and [`reply`]: why a payload was refused, and the reply code that goes into
//!   the connection.close tether sends for it.
//!
//! The 8-byte protocol header ([`PROTOCOL_HEADER`]) is not a frame: the session reads and writes
//! it before it hands the stream to a codec.

pub mod content;
mod error;
pub mod frame;
pub mod id;
pub mod method;
mod nesting;
mod wire;

pub use content::{HeaderPeek, decode_properties, encode_header, peek_header, reply_to};
pub use error::{MethodError, reply};
pub use frame::{Frame, FrameCodec, FrameError, FrameType};
pub use method::{
    Ack, Deliver, GetOk, Publish, class_method, decode, encode, encode_ack, peek_ack, peek_deliver,
    peek_get_ok, peek_publish, with_delivery_tag,
};
pub use nesting::MAX_TABLE_NESTING;

/// What a client sends first to ask for AMQP 0-9-1, and what a server answers with when it
/// wants another version.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// The octet that closes every frame; anything else there means the stream is out of step.
pub const FRAME_END: u8 = 0xCE;

/// Frame type (1 octet), channel (2) and payload size (4).
pub const FRAME_HEADER_SIZE: usize = 7;

/// The smallest frame_max a peer may propose in connection.tune, and so the largest frame every
/// peer must take before tune has settled frame_max (spec 4.2.3). `amq-protocol` has 8192 here,
/// the minimum RabbitMQ 4.1 and later accept; 4096 is what the spec lets a client rely on.
pub const FRAME_MIN_SIZE: u32 = 4096;
