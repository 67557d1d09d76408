//! AMQP frames and their codec: a 7-byte header (type, channel, payload size), the payload, and
//! the frame-end octet.
//!
//! The decoder hands out payloads as slices of its read buffer (`split_to` then `freeze`), so a
//! message body travels from one leg to the other without being copied. The flip side: a payload
//! kept for long (in a replay log, say) keeps the whole read-buffer block it came from alive;
//! copy it with `Bytes::copy_from_slice` if it will outlive many reads.
//!
//! A frame's announced size is checked against frame_max as soon as the header is in, before any
//! room is reserved for it or any more of it is waited for, so a peer cannot make tether buffer
//! more than one frame_max per leg.

use super::{FRAME_END, FRAME_HEADER_SIZE, reply};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io;
use tokio_util::codec::{Decoder, Encoder};

/// Header, payload size and end octet: what a frame adds to its payload.
const FRAME_OVERHEAD: usize = FRAME_HEADER_SIZE + 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    Method,
    Header,
    Body,
    Heartbeat,
}

impl FrameType {
    pub const ALL: [FrameType; 4] = [
        FrameType::Method,
        FrameType::Header,
        FrameType::Body,
        FrameType::Heartbeat,
    ];

    /// The type octet on the wire.
    pub fn wire_value(self) -> u8 {
        match self {
            FrameType::Method => 1,
            FrameType::Header => 2,
            FrameType::Body => 3,
            FrameType::Heartbeat => 8,
        }
    }

    pub fn from_wire(value: u8) -> Option<FrameType> {
        FrameType::ALL
            .into_iter()
            .find(|kind| kind.wire_value() == value)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameType,
    pub channel: u16,
    /// Everything between the header and the end octet: for a method frame the class id, method
    /// id and arguments; for a header frame the content header; for a body frame a piece of the
    /// body; nothing for a heart-beat.
    pub payload: Bytes,
}

impl Frame {
    pub fn new(kind: FrameType, channel: u16, payload: Bytes) -> Frame {
        Frame {
            kind,
            channel,
            payload,
        }
    }

    pub fn method(channel: u16, payload: Bytes) -> Frame {
        Frame::new(FrameType::Method, channel, payload)
    }

    pub fn header(channel: u16, payload: Bytes) -> Frame {
        Frame::new(FrameType::Header, channel, payload)
    }

    pub fn body(channel: u16, payload: Bytes) -> Frame {
        Frame::new(FrameType::Body, channel, payload)
    }

    /// A heart-beat: channel 0, no payload, as the spec requires.
    pub fn heartbeat() -> Frame {
        Frame::new(FrameType::Heartbeat, 0, Bytes::new())
    }

    /// Bytes on the wire: header, payload and end octet.
    pub fn wire_size(&self) -> usize {
        self.payload.len() + FRAME_OVERHEAD
    }

    /// The class and method id of a method frame (`None` for other frames, or a method payload
    /// too short to hold them).
    pub fn class_method(&self) -> Option<(u16, u16)> {
        match self.kind {
            FrameType::Method => super::class_method(&self.payload),
            _ => None,
        }
    }

    /// The 7 bytes in front of the payload, for writers that send header, payload and
    /// [`FRAME_END`] as separate chunks so as not to copy the payload. The size field is the
    /// payload's length modulo 2³²: a payload that big is refused by [`FrameCodec`]'s encoder,
    /// and a writer of its own must not send it either.
    pub fn wire_header(&self) -> [u8; FRAME_HEADER_SIZE] {
        let [c0, c1] = self.channel.to_be_bytes();
        let [s0, s1, s2, s3] = (self.payload.len() as u32).to_be_bytes();
        [self.kind.wire_value(), c0, c1, s0, s1, s2, s3]
    }
}

/// Why a stream of frames was given up on. After any of these the stream is out of step and the
/// codec must not be used to decode it further.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// `size` is the whole frame, header and end octet included, as frame_max counts it.
    #[error("frame of {size} bytes exceeds frame_max {max}")]
    TooLarge { size: u64, max: u32 },
    #[error("frame end octet {0:#04x} instead of 0xce")]
    BadFrameEnd(u8),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// Also what a stream that ends in the middle of a frame gives (tokio-util's `decode_eof`
    /// reports the leftover bytes as an I/O error).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// 501 FRAME_ERROR for the protocol errors. An I/O error leaves no connection to send a
    /// close on; it gets 541 INTERNAL_ERROR for logs and metrics.
    pub fn reply_code(&self) -> u16 {
        match self {
            FrameError::TooLarge { .. }
            | FrameError::BadFrameEnd(_)
            | FrameError::UnknownType(_) => reply::FRAME_ERROR,
            FrameError::Io(_) => reply::INTERNAL_ERROR,
        }
    }
}

/// Frames to bytes and back for one leg.
///
/// `max_frame_size` is frame_max as connection.tune negotiates it: the whole frame, header and
/// end octet included. 0 means no limit, as in tune, which leaves only the 4 GiB a header can
/// announce; a session should always set a real cap. The codec does not enforce
/// [`FRAME_MIN_SIZE`](super::FRAME_MIN_SIZE) either: that is the handshake's business.
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max_frame_size: u32,
}

impl FrameCodec {
    pub fn new(max_frame_size: u32) -> FrameCodec {
        FrameCodec { max_frame_size }
    }

    /// Applies from the next frame on; call it once tune-ok has settled frame_max.
    pub fn set_max_frame_size(&mut self, max: u32) {
        self.max_frame_size = max;
    }

    pub fn max_frame_size(&self) -> u32 {
        self.max_frame_size
    }

    /// Refuses a frame of `size` bytes (whole frame) if it is over the limit, or too big for
    /// this machine to buffer.
    fn check_size(&self, size: u64) -> Result<usize, FrameError> {
        let too_large = FrameError::TooLarge {
            size,
            max: self.max_frame_size,
        };
        if self.max_frame_size != 0 && size > u64::from(self.max_frame_size) {
            return Err(too_large);
        }
        usize::try_from(size).map_err(|_| too_large)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        // The type octet alone is enough to refuse garbage (a second protocol header, an HTTP
        // request) at once.
        let Some(&type_octet) = src.first() else {
            return Ok(None);
        };
        let kind = FrameType::from_wire(type_octet).ok_or(FrameError::UnknownType(type_octet))?;
        let Some(header) = src.get(..FRAME_HEADER_SIZE) else {
            return Ok(None);
        };
        let channel = u16::from_be_bytes([header[1], header[2]]);
        let payload_size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
        let frame_size = self.check_size(u64::from(payload_size) + FRAME_OVERHEAD as u64)?;
        if src.len() < frame_size {
            // Only now, with the size known to be acceptable, make room for all of it.
            src.reserve(frame_size - src.len());
            return Ok(None);
        }
        let end = src[frame_size - 1];
        if end != FRAME_END {
            return Err(FrameError::BadFrameEnd(end));
        }
        src.advance(FRAME_HEADER_SIZE);
        let payload = crate::proto::cut(src, frame_size - FRAME_OVERHEAD);
        src.advance(1);
        Ok(Some(Frame {
            kind,
            channel,
            payload,
        }))
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = FrameError;

    /// Copies the frame into `dst`: fine for methods, headers and small bodies. Large bodies are
    /// better written as [`Frame::wire_header`], the payload and [`FRAME_END`], unjoined. A
    /// frame bigger than frame_max is refused rather than sent to a peer that would close on it.
    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let payload_size = frame.payload.len() as u64;
        let frame_size = payload_size + FRAME_OVERHEAD as u64;
        if payload_size > u64::from(u32::MAX) {
            return Err(FrameError::TooLarge {
                size: frame_size,
                max: self.max_frame_size,
            });
        }
        self.check_size(frame_size)?;
        dst.reserve(frame.wire_size());
        dst.put_slice(&frame.wire_header());
        dst.put_slice(&frame.payload);
        dst.put_u8(FRAME_END);
        Ok(())
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(&frame, dst)
    }
}

#[cfg(test)]
mod tests;

/// A frame in a session's hand-over state (see `crate::takeover`): its type octet, channel and
/// payload (base64).
#[derive(serde::Serialize, serde::Deserialize)]
struct FrameImage {
    kind: u8,
    channel: u16,
    payload: crate::takeover::serial::Blob,
}

impl serde::Serialize for Frame {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FrameImage {
            kind: self.kind.wire_value(),
            channel: self.channel,
            payload: crate::takeover::serial::Blob(self.payload.to_vec()),
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Frame {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Frame, D::Error> {
        let image = FrameImage::deserialize(d)?;
        let kind = FrameType::from_wire(image.kind)
            .ok_or_else(|| serde::de::Error::custom(format!("frame type {}", image.kind)))?;
        Ok(Frame::new(
            kind,
            image.channel,
            Bytes::from(image.payload.0),
        ))
    }
}
