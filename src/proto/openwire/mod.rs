//! OpenWire, ActiveMQ's native protocol: the few commands that tether's ActiveMQ discovery
//! source needs to hold a connection to a broker and read its ConnectionControl updates.
//!
//! Only the loose encoding with the marshal cache off is spoken. tether's [`WireFormatInfo`]
//! asks for exactly that, and as both sides' flags are ANDed the broker falls in line;
//! [`Negotiated::unsupported`] says when it did not. Versions 9 to 12 lay out every command
//! here the same way, so any of them will do.
//!
//! # Layout
//!
//! - Frame: int32 (big-endian) size, then `size` bytes: the command type byte and its body.
//! - this file: constants, type bytes and errors.
//! - `command`: the commands tether reads or writes ([`Command`]). Any other type is kept
//!   whole as [`Command::Unknown`], so a stream is skipped frame by frame without knowing
//!   every type.
//! - `wire_format`: [`WireFormatInfo::negotiate`], what the two sides settle on.
//! - `codec`: [`OpenWireCodec`], tokio-util codec; the announced size is capped before any
//!   buffering.
//! - `wire`: reading and writing OpenWire's field encodings (loose, no cache).
//!
//! A body may go on after the fields decoded here (a newer broker adding a field): the rest is
//! ignored. A body that ends before them is an error.

mod codec;
mod command;
mod wire;
mod wire_format;

pub use codec::OpenWireCodec;
pub use command::{
    BrokerException, Command, ConnectionControl, ConnectionInfo, Header, Property, WireFormatInfo,
};
pub use wire::{decode_java_utf, encode_java_utf};
pub use wire_format::Negotiated;

/// The first 8 bytes of every WireFormatInfo body.
pub const MAGIC: [u8; 8] = *b"ActiveMQ";
/// The newest OpenWire version (ActiveMQ 5.15 and later), the one tether offers.
pub const VERSION: i32 = 12;
/// The oldest version whose ConnectionInfo and ConnectionControl have every field read here.
pub const MIN_VERSION: i32 = 9;
/// A discovery connection carries a handful of small commands; nothing near this is expected.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1024 * 1024;

/// Command type bytes (ActiveMQ's `CommandTypes`).
pub mod kind {
    pub const WIRE_FORMAT_INFO: u8 = 1;
    pub const CONNECTION_INFO: u8 = 3;
    pub const KEEP_ALIVE_INFO: u8 = 10;
    pub const CONNECTION_CONTROL: u8 = 18;
    pub const RESPONSE: u8 = 30;
    pub const EXCEPTION_RESPONSE: u8 = 31;
    pub const CONNECTION_ID: u8 = 120;
    pub const BROKER_ID: u8 = 124;
}

/// Type tags of the values in WireFormatInfo's property map (ActiveMQ's `MarshallingSupport`).
pub(crate) mod tag {
    pub const NULL: u8 = 0;
    pub const BOOL: u8 = 1;
    pub const BYTE: u8 = 2;
    pub const CHAR: u8 = 3;
    pub const SHORT: u8 = 4;
    pub const INT: u8 = 5;
    pub const LONG: u8 = 6;
    pub const DOUBLE: u8 = 7;
    pub const FLOAT: u8 = 8;
    pub const STRING: u8 = 9;
    pub const BYTES: u8 = 10;
    pub const MAP: u8 = 11;
    pub const LIST: u8 = 12;
    pub const BIG_STRING: u8 = 13;
}

/// Maps and lists inside WireFormatInfo properties nest no deeper than this; brokers send none.
pub(crate) const MAX_PROPERTY_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum OpenWireError {
    #[error("frame of {size} bytes is over the {max}-byte limit")]
    FrameTooLarge { size: u64, max: usize },
    #[error("frame size {0} leaves no room for a command type")]
    BadFrameSize(i32),
    #[error("{command} ends inside {field}")]
    Truncated {
        command: &'static str,
        field: &'static str,
    },
    #[error("{command}: {field} has a negative length ({length})")]
    NegativeLength {
        command: &'static str,
        field: &'static str,
        length: i32,
    },
    #[error("{command}: {field} is not modified UTF-8")]
    BadString {
        command: &'static str,
        field: &'static str,
    },
    #[error("WireFormatInfo magic is \"{0}\", not \"ActiveMQ\"")]
    BadMagic(String),
    #[error("WireFormatInfo property of unknown type {0}")]
    UnknownPropertyType(u8),
    #[error("WireFormatInfo properties nest deeper than {MAX_PROPERTY_DEPTH}")]
    PropertiesTooDeep,
    #[error("{command}: {field} is a nested object of type {found}, expected {expected}")]
    UnexpectedNested {
        command: &'static str,
        field: &'static str,
        found: u8,
        expected: u8,
    },
    /// Raised by the encoder: tether built a command the wire cannot carry.
    #[error("cannot encode {field}: {length} bytes is over what the field can hold")]
    TooLong { field: &'static str, length: usize },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests;
