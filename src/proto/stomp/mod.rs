//! STOMP 1.0, 1.1 and 1.2 frames and their codec.
//!
//! A STOMP session in tether has two legs, client and node, and they may speak different versions
//! (a 1.0 client in front of a 1.2 node). Each leg gets its own [`StompCodec`] set to that leg's
//! version: decoding unescapes headers the way the sender escaped them, encoding escapes them the
//! way the receiver expects, so a [`Frame`] in between always holds plain header text that the
//! session can read and change without caring about either wire.
//!
//! # Layout
//!
//! - [`Version`]: the negotiated version, which decides header escaping.
//! - [`Command`], [`Headers`], [`Frame`]: one decoded frame, headers in wire order.
//! - [`StompCodec`], [`Limits`], [`Incoming`], [`Heartbeat`]: bytes to frames and back, with
//!   every length capped before it is buffered.
//! - [`Packed`]: a frame kept for a session's life, in its wire encoding.
//! - [`StompError`]: why a stream was rejected, worded to go into an ERROR frame's `message`.

mod codec;
mod error;
mod escape;
mod frame;
mod headers;
mod packed;
mod version;

pub use codec::{Heartbeat, Incoming, Limits, StompCodec};
pub use error::StompError;
pub use frame::{Command, Frame};
pub use headers::Headers;
pub use packed::Packed;
pub use version::Version;
