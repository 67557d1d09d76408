//! Why a STOMP stream was rejected. Every protocol message is one line of plain text, so the
//! session can put it as-is into the `message` header of the ERROR frame it sends before closing.

use super::Version;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum StompError {
    #[error("unknown command {0}")]
    UnknownCommand(String),
    #[error("header line longer than {0} bytes")]
    HeaderLineTooLong(usize),
    #[error("more than {0} headers")]
    TooManyHeaders(usize),
    #[error("frame larger than {0} bytes")]
    FrameTooLarge(usize),
    #[error("header line without a colon")]
    MissingColon,
    #[error("header is not valid UTF-8")]
    NotUtf8,
    #[error("invalid escape sequence \\{0} in header")]
    InvalidEscape(char),
    #[error("header ends with a lone backslash")]
    DanglingEscape,
    #[error("content-length is not a number")]
    BadContentLength,
    #[error("frame body is not followed by NUL")]
    MissingNul,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("unsupported STOMP version {0}")]
    UnsupportedVersion(String),
    /// A header that the receiving leg's version has no way to carry, e.g. a value with a line
    /// feed going to a 1.0 peer. Raised by the encoder, so it is tether's problem, not the peer's.
    #[error("cannot send header {name:?} to a STOMP {version} peer: {reason}")]
    Unencodable {
        name: String,
        version: Version,
        reason: &'static str,
    },
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl StompError {
    /// The listener key of the cap this error reports reached, if it is one.
    pub fn cap(&self) -> Option<&'static str> {
        match self {
            StompError::HeaderLineTooLong(_) => Some("max_header_line"),
            StompError::TooManyHeaders(_) => Some("max_headers"),
            StompError::FrameTooLarge(_) => Some("max_frame_size"),
            _ => None,
        }
    }

    /// Bytes from the wire, shortened and with anything unprintable escaped, fit to quote in an
    /// error message.
    pub(crate) fn quote(bytes: &[u8]) -> String {
        const MAX: usize = 32;
        let shown = &bytes[..bytes.len().min(MAX)];
        let mut text = shown.escape_ascii().to_string();
        if bytes.len() > MAX {
            text.push_str("...");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_wire_bytes_on_one_line() {
        assert_eq!(StompError::quote(b"FOO"), "FOO");
        assert_eq!(StompError::quote(b"A\r\0\xff"), "A\\r\\x00\\xff");
        assert_eq!(
            StompError::quote(&[b'x'; 40]),
            format!("{}...", "x".repeat(32))
        );
    }

    #[test]
    fn messages_read_well_in_an_error_frame() {
        assert_eq!(
            StompError::InvalidEscape('t').to_string(),
            "invalid escape sequence \\t in header"
        );
        assert_eq!(
            StompError::FrameTooLarge(16 * 1024 * 1024).to_string(),
            "frame larger than 16777216 bytes"
        );
    }
}
