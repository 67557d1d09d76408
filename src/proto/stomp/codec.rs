//! Bytes to [`Frame`]s and back, for one leg of a session.
//!
//! The decoder consumes the command line and each header line as soon as it is complete, keeping
//! the parsed part of the frame in its state, and remembers how far it has searched the rest for
//! the next line feed or NUL. A large frame arriving in many small reads is therefore searched
//! once, not once per read. Every limit is checked as soon as the bytes seen so far break it, and
//! an announced `content-length` is checked before any room is reserved for it.

use super::escape::Escaping;
use super::frame::parse_content_length;
use super::{Command, Frame, Headers, StompError, Version};
use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// What a peer sends: frames, and between frames the bare line endings that are heart-beats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    Frame(Frame),
    /// One end of line (`\n` or `\r\n`) outside a frame. Each one is reported, not coalesced,
    /// so that every byte of heart-beat can reset the session's read timer. The optional line
    /// endings the spec allows after a frame's NUL arrive as heart-beats too: on the wire they
    /// are the same thing.
    Heartbeat,
}

/// A heart-beat to send: the codec writes a single `\n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat;

/// Caps on what one peer may make tether buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Whole frame: command line, header lines, blank line, body and NUL.
    pub max_frame_size: usize,
    /// Header entries in one frame, repeats included.
    pub max_headers: usize,
    /// One header line without its end of line, as it is on the wire (escaped).
    pub max_header_line: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame_size: 16 * 1024 * 1024,
            max_headers: 256,
            max_header_line: 16 * 1024,
        }
    }
}

/// One leg's codec. Build it with the version the leg will speak as far as it is known (1.0
/// before the handshake is harmless: handshake frames are never escaped), then call
/// [`set_version`](StompCodec::set_version) once CONNECTED has settled it.
///
/// Encoding writes the frame's headers in order, exactly as they are, with one exception that
/// keeps the output well formed: the first `content-length` is rewritten if it does not match the
/// body, and one is appended if the body holds a NUL and there is none. A body without NUL is
/// sent without `content-length` if it came without one, because brokers treat the two cases
/// differently (ActiveMQ, for one, makes a text message of the first and a bytes message of the
/// second).
///
/// After a decode error the stream is out of step and the codec must not be used to decode it
/// further.
#[derive(Debug)]
pub struct StompCodec {
    version: Version,
    limits: Limits,
    state: State,
    /// Bytes at the front of the buffer already known to hold no line feed (while reading a
    /// line) or no NUL (while reading a body without `content-length`).
    scanned: usize,
}

#[derive(Debug)]
enum State {
    /// Between frames: an end of line here is a heart-beat, anything else starts a command.
    Idle,
    /// The command line is consumed; reading header lines up to the blank one.
    Head(Partial),
    /// The head is consumed; waiting for the body and its NUL.
    Body {
        partial: Partial,
        content_length: Option<usize>,
    },
}

/// What one decoding step did.
enum Step {
    /// The bytes ran out; stay in this state until more arrive.
    Wait(State),
    /// Part of a frame was consumed; go on from this state.
    Next(State),
    /// A frame or heart-beat is complete; the decoder is idle again.
    Done(Incoming),
}

/// The part of a frame decoded so far.
#[derive(Debug)]
struct Partial {
    command: Command,
    headers: Headers,
    /// Wire bytes consumed for this frame so far, counted against `max_frame_size`.
    consumed: usize,
}

impl StompCodec {
    pub fn new(version: Version) -> StompCodec {
        StompCodec::with_limits(version, Limits::default())
    }

    pub fn with_limits(version: Version, limits: Limits) -> StompCodec {
        StompCodec {
            version,
            limits,
            state: State::Idle,
            scanned: 0,
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Applies to header lines decoded and frames encoded from now on; call it between frames
    /// (after the CONNECTED frame that settled the version).
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether no frame is partly consumed: the decoder is between frames.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Finds the line at the front of `src`: `(content, whole)`, the lengths without and with
    /// its end of line, or `None` while the line feed has not arrived.
    fn next_line(&mut self, src: &BytesMut) -> Option<(usize, usize)> {
        let from = self.scanned.min(src.len());
        match memchr::memchr(b'\n', &src[from..]) {
            Some(at) => {
                self.scanned = 0;
                let newline = from + at;
                let content = match newline.checked_sub(1) {
                    Some(before) if src[before] == b'\r' => before,
                    _ => newline,
                };
                Some((content, newline + 1))
            }
            None => {
                self.scanned = src.len();
                None
            }
        }
    }

    /// Between frames: a heart-beat, or a command line that starts a frame.
    fn step_idle(&mut self, src: &mut BytesMut) -> Result<Step, StompError> {
        let Some((content, whole)) = self.next_line(src) else {
            if !Command::could_start_with(without_trailing_cr(src)) {
                return Err(StompError::UnknownCommand(StompError::quote(src)));
            }
            return Ok(Step::Wait(State::Idle));
        };
        if content == 0 {
            src.advance(whole);
            return Ok(Step::Done(Incoming::Heartbeat));
        }
        let command = Command::from_bytes(&src[..content])
            .ok_or_else(|| StompError::UnknownCommand(StompError::quote(&src[..content])))?;
        src.advance(whole);
        Ok(Step::Next(State::Head(Partial {
            command,
            headers: Headers::new(),
            consumed: whole,
        })))
    }

    /// One header line, or the blank line that ends the head.
    fn step_head(&mut self, mut partial: Partial, src: &mut BytesMut) -> Result<Step, StompError> {
        let limits = self.limits;
        let Some((content, whole)) = self.next_line(src) else {
            if without_trailing_cr(src).len() > limits.max_header_line {
                return Err(StompError::HeaderLineTooLong(limits.max_header_line));
            }
            if partial.consumed.saturating_add(src.len()) > limits.max_frame_size {
                return Err(StompError::FrameTooLarge(limits.max_frame_size));
            }
            return Ok(Step::Wait(State::Head(partial)));
        };
        partial.consumed = partial.consumed.saturating_add(whole);
        if partial.consumed > limits.max_frame_size {
            return Err(StompError::FrameTooLarge(limits.max_frame_size));
        }
        if content == 0 {
            src.advance(whole);
            return self.start_body(partial, src);
        }
        if content > limits.max_header_line {
            return Err(StompError::HeaderLineTooLong(limits.max_header_line));
        }
        if partial.headers.len() >= limits.max_headers {
            return Err(StompError::TooManyHeaders(limits.max_headers));
        }
        let line = &src[..content];
        let colon = memchr::memchr(b':', line).ok_or(StompError::MissingColon)?;
        let escaping = Escaping::of(self.version, partial.command);
        let name = escaping.unescape(&line[..colon])?;
        let value = escaping.unescape(&line[colon + 1..])?;
        partial.headers.append(name, value);
        src.advance(whole);
        Ok(Step::Next(State::Head(partial)))
    }

    fn start_body(&mut self, partial: Partial, src: &mut BytesMut) -> Result<Step, StompError> {
        let content_length = match partial.headers.get("content-length") {
            Some(value) => Some(parse_content_length(value)?),
            None => None,
        };
        if let Some(length) = content_length {
            let frame_size = partial.consumed.saturating_add(length).saturating_add(1);
            if frame_size > self.limits.max_frame_size {
                return Err(StompError::FrameTooLarge(self.limits.max_frame_size));
            }
            // Only now, with the length known to be acceptable, make room for all of it.
            src.reserve((length + 1).saturating_sub(src.len()));
        }
        self.scanned = 0;
        Ok(Step::Next(State::Body {
            partial,
            content_length,
        }))
    }

    /// The body and its NUL, all at once or not at all.
    fn step_body(
        &mut self,
        partial: Partial,
        content_length: Option<usize>,
        src: &mut BytesMut,
    ) -> Result<Step, StompError> {
        let wait = |partial| {
            Ok(Step::Wait(State::Body {
                partial,
                content_length,
            }))
        };
        let body_length = match content_length {
            Some(length) => {
                if src.len() <= length {
                    return wait(partial);
                }
                if src[length] != 0 {
                    return Err(StompError::MissingNul);
                }
                length
            }
            None => {
                let from = self.scanned.min(src.len());
                let found = memchr::memchr(0, &src[from..]).map(|at| from + at);
                // The body so far, plus the NUL that is still to come when it has not come yet.
                let at_least = partial
                    .consumed
                    .saturating_add(found.unwrap_or(src.len()))
                    .saturating_add(1);
                if at_least > self.limits.max_frame_size {
                    return Err(StompError::FrameTooLarge(self.limits.max_frame_size));
                }
                match found {
                    Some(nul) => nul,
                    None => {
                        self.scanned = src.len();
                        return wait(partial);
                    }
                }
            }
        };
        self.scanned = 0;
        let body = crate::proto::cut(src, body_length);
        src.advance(1);
        Ok(Step::Done(Incoming::Frame(Frame {
            command: partial.command,
            headers: partial.headers,
            body,
        })))
    }

    fn encode_frame(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), StompError> {
        let start = dst.len();
        let written = self.write_frame(frame, dst);
        if written.is_err() {
            dst.truncate(start);
        }
        written
    }

    fn write_frame(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), StompError> {
        let escaping = Escaping::of(self.version, frame.command);
        let body_length = frame.body.len();
        let declared = frame.headers.get("content-length");
        let declared_matches = declared.is_some_and(|value| {
            parse_content_length(value).is_ok_and(|length| length == body_length)
        });
        let head_estimate: usize = frame
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len() + 2)
            .sum();
        dst.reserve(frame.command.as_str().len() + head_estimate + body_length + 32);

        dst.put_slice(frame.command.as_str().as_bytes());
        dst.put_u8(b'\n');
        let mut length_written = false;
        for (name, value) in frame.headers.iter() {
            if name == "content-length" && !length_written {
                length_written = true;
                if !declared_matches {
                    put_content_length(body_length, dst);
                    continue;
                }
            }
            escaping.write_header(name, value, self.version, dst)?;
            dst.put_u8(b'\n');
        }
        if declared.is_none() && memchr::memchr(0, &frame.body).is_some() {
            put_content_length(body_length, dst);
        }
        dst.put_u8(b'\n');
        dst.put_slice(&frame.body);
        dst.put_u8(0);
        Ok(())
    }
}

fn put_content_length(length: usize, dst: &mut BytesMut) {
    use std::fmt::Write;
    // Writing into a `BytesMut` cannot fail; it grows as needed.
    let _ = writeln!(dst, "content-length:{length}");
}

/// The bytes of an unfinished line, less a CR that may turn out to start its CRLF.
fn without_trailing_cr(bytes: &[u8]) -> &[u8] {
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

impl Decoder for StompCodec {
    type Item = Incoming;
    type Error = StompError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, StompError> {
        loop {
            // Each step owns the state it starts from and hands back the next one; after an
            // error the codec is left idle, though the stream is beyond repair anyway.
            let step = match std::mem::replace(&mut self.state, State::Idle) {
                State::Idle => self.step_idle(src)?,
                State::Head(partial) => self.step_head(partial, src)?,
                State::Body {
                    partial,
                    content_length,
                } => self.step_body(partial, content_length, src)?,
            };
            match step {
                Step::Wait(state) => {
                    self.state = state;
                    return Ok(None);
                }
                Step::Next(state) => self.state = state,
                Step::Done(item) => return Ok(Some(item)),
            }
        }
    }

    /// Unlike the default, also refuses a stream that ends after a frame's head was consumed
    /// (the buffer may then be empty although a frame is unfinished). A trailing lone `\r` is
    /// forgiven: it is half a heart-beat, not half a frame.
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, StompError> {
        if let Some(item) = self.decode(src)? {
            return Ok(Some(item));
        }
        if self.is_idle() && (src.is_empty() || &src[..] == b"\r") {
            src.clear();
            return Ok(None);
        }
        Err(StompError::Truncated)
    }
}

impl Encoder<&Frame> for StompCodec {
    type Error = StompError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), StompError> {
        self.encode_frame(frame, dst)
    }
}

impl Encoder<Frame> for StompCodec {
    type Error = StompError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), StompError> {
        self.encode_frame(&frame, dst)
    }
}

impl Encoder<Heartbeat> for StompCodec {
    type Error = StompError;

    fn encode(&mut self, _: Heartbeat, dst: &mut BytesMut) -> Result<(), StompError> {
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests;
