//! One STOMP frame as the session sees it: a command, unescaped headers and the raw body.

use super::{Headers, StompError};
use bytes::Bytes;
use std::fmt;

/// Every command of STOMP 1.0 to 1.2. A command outside this list ends the stream: a proxy that
/// does not know what a frame means cannot replay or fail it over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Command {
    Connect,
    Stomp,
    Connected,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Message,
    Receipt,
    Error,
}

impl Command {
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Connected,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Connected => "CONNECTED",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// The command spelled exactly `name`: commands are case-sensitive.
    pub fn from_bytes(name: &[u8]) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|command| command.as_str().as_bytes() == name)
    }

    /// Whether `start` could still grow into a command, so that garbage (an HTTP request, an
    /// AMQP protocol header) is refused at its first bytes instead of after a whole line.
    pub(crate) fn could_start_with(start: &[u8]) -> bool {
        Command::ALL
            .into_iter()
            .any(|command| command.as_str().as_bytes().starts_with(start))
    }

    /// CONNECT, STOMP and CONNECTED headers are never escaped, whatever the version: they are
    /// written before the version is agreed, and 1.0 peers must be able to read them (spec 1.1,
    /// 1.2 "Value Encoding").
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Frame {
    pub command: Command,
    pub headers: Headers,
    /// Exactly the octets between the blank line and the NUL (or `content-length` of them).
    #[serde(with = "crate::takeover::serial::b64")]
    pub body: Bytes,
}

impl Frame {
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// Sets `name` to `value` (see [`Headers::set`]), so that a builder chain cannot leave a
    /// stale repeat in force.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.set(name, value);
        self
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// An ERROR frame for a peer. Line breaks in `message` become spaces so that the frame can
    /// be encoded for any version (1.0 cannot escape them); `detail` is the body, plain text.
    pub fn error(message: &str, detail: impl Into<Bytes>) -> Frame {
        let message = message.replace(['\r', '\n'], " ");
        let frame = Frame::new(Command::Error)
            .with_header("message", message)
            .with_body(detail);
        if frame.body.is_empty() {
            frame
        } else {
            frame.with_header("content-type", "text/plain")
        }
    }

    /// Shorthand for `self.headers.get(name)`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The body length the sender announced, if any. A number too big for `usize` comes back as
    /// `usize::MAX`, so that any size limit refuses it as too large rather than malformed.
    pub fn content_length(&self) -> Result<Option<usize>, StompError> {
        self.header("content-length")
            .map(parse_content_length)
            .transpose()
    }
}

/// Only ASCII digits: `str::parse` would also take a sign, which no STOMP peer sends.
pub(crate) fn parse_content_length(value: &str) -> Result<usize, StompError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StompError::BadContentLength);
    }
    Ok(value.parse().unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_case_sensitive() {
        for command in Command::ALL {
            assert_eq!(
                Command::from_bytes(command.as_str().as_bytes()),
                Some(command)
            );
        }
        assert_eq!(Command::from_bytes(b"send"), None);
        assert_eq!(Command::from_bytes(b"SEND "), None);
        assert_eq!(Command::from_bytes(b""), None);
    }

    #[test]
    fn recognises_command_prefixes() {
        assert!(Command::could_start_with(b""));
        assert!(Command::could_start_with(b"SUBSCR"));
        assert!(Command::could_start_with(b"CONNECTED"));
        assert!(!Command::could_start_with(b"GET /"));
        assert!(!Command::could_start_with(b"AMQP"));
        assert!(!Command::could_start_with(b"SENDX"));
    }

    #[test]
    fn only_handshake_frames_are_raw() {
        let raw: Vec<_> = Command::ALL
            .into_iter()
            .filter(|c| !c.escapes_headers())
            .collect();
        assert_eq!(raw, [Command::Connect, Command::Stomp, Command::Connected]);
    }

    #[test]
    fn content_length_is_digits_only() {
        let with = |value: &str| Frame::new(Command::Send).with_header("content-length", value);
        assert_eq!(Frame::new(Command::Send).content_length().ok(), Some(None));
        assert_eq!(with("12").content_length().ok(), Some(Some(12)));
        assert_eq!(with("007").content_length().ok(), Some(Some(7)));
        for bad in ["", "+1", "-1", " 1", "1 ", "0x10", "ten"] {
            assert!(
                matches!(
                    with(bad).content_length(),
                    Err(StompError::BadContentLength)
                ),
                "{bad:?}"
            );
        }
        let huge = "9".repeat(40);
        assert_eq!(with(&huge).content_length().ok(), Some(Some(usize::MAX)));
    }

    #[test]
    fn error_frame_fits_any_version() {
        let frame = Frame::error("bad\r\nthing", "details here");
        assert_eq!(frame.command, Command::Error);
        assert_eq!(frame.header("message"), Some("bad  thing"));
        assert_eq!(frame.header("content-type"), Some("text/plain"));
        assert_eq!(&frame.body[..], b"details here");
        assert_eq!(Frame::error("x", "").header("content-type"), None);
    }
}
