//! Wire codecs for the broker protocols that protocol-aware sessions terminate on both legs.
//!
//! - [`stomp`]: STOMP 1.0 to 1.2 frames, headers unescaped per leg version.
//! - [`amqp`]: AMQP 0-9-1 frames with zero-copy payloads, in-place peeks at the methods every
//!   message goes through, and full method decoding via `amq-protocol` for the rest.
//! - [`openwire`]: the few ActiveMQ OpenWire commands the ActiveMQ discovery source reads and
//!   writes (loose encoding).

pub mod amqp;
pub mod openwire;
pub mod stomp;
