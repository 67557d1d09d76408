//! A frame kept for a session's whole life (its CONNECT, for every replay; its node's
//! CONNECTED, for the pool) in its wire encoding: one allocation the size of the frame, where a
//! decoded [`Frame`] holds a vector of headers with two strings each, about six times as many
//! bytes. Sidecars hold thousands of idle sessions; this is a fifth of what one costs.

use super::{Frame, Incoming, StompCodec, Version};
use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

#[derive(Clone)]
pub enum Packed {
    Wire(Box<[u8]>),
    /// A frame whose encoding does not read back as the same frame (none that a peer sent
    /// should be one): kept as it is.
    Whole(Box<Frame>),
}

impl Packed {
    pub fn new(frame: &Frame) -> Packed {
        let mut codec = StompCodec::new(Version::V1_2);
        let mut wire = BytesMut::new();
        if codec.encode(frame, &mut wire).is_ok() {
            let packed = Packed::Wire(wire[..].into());
            if packed.unpack() == *frame {
                return packed;
            }
        }
        Packed::Whole(Box::new(frame.clone()))
    }

    pub fn unpack(&self) -> Frame {
        match self {
            Packed::Wire(wire) => {
                let mut codec = StompCodec::new(Version::V1_2);
                match codec.decode(&mut BytesMut::from(&wire[..])) {
                    Ok(Some(Incoming::Frame(frame))) => frame,
                    // `new` read it back before keeping it.
                    other => unreachable!("a packed frame reads back: {other:?}"),
                }
            }
            Packed::Whole(frame) => (**frame).clone(),
        }
    }
}

/// Printed as the frame it holds, whose headers print a passcode masked.
impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Packed").field(&self.unpack()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::stomp::Command;

    #[test]
    fn connect_and_connected_frames_read_back_the_same_and_smaller() {
        let connect = Frame::new(Command::Connect)
            .with_header("accept-version", "1.0,1.1,1.2")
            .with_header("host", "/")
            .with_header("login", "guest")
            .with_header("passcode", "pass:with:colons")
            .with_header("heart-beat", "0,0")
            .with_header("login", "a repeated header stays");
        let connected = Frame::new(Command::Connected)
            .with_header("version", "1.2")
            .with_header("session", "session-Xy")
            .with_header("server", "RabbitMQ/3.10.8");
        for frame in [connect, connected] {
            let packed = Packed::new(&frame);
            assert!(matches!(packed, Packed::Wire(_)), "{frame:?}");
            assert_eq!(packed.unpack(), frame);
        }
    }

    #[test]
    fn debug_masks_the_passcode() {
        let connect = Frame::new(Command::Connect).with_header("passcode", "hunter2");
        let shown = format!("{:?}", Packed::new(&connect));
        assert!(
            !shown.contains("hunter2") && shown.contains("MASKED"),
            "{shown}"
        );
    }

    #[test]
    fn a_frame_that_does_not_read_back_is_kept_whole() {
        // CONNECT headers are not escaped, so a line break in one cannot cross the wire.
        let odd = Frame::new(Command::Connect).with_header("login", "two\nlines");
        let packed = Packed::new(&odd);
        assert!(matches!(packed, Packed::Whole(_)));
        assert_eq!(packed.unpack(), odd);
    }

    #[test]
    fn frames_with_escaped_headers_and_bodies_read_back() {
        let send = Frame::new(Command::Send)
            .with_header("destination", "/queue/a:b\nc")
            .with_body(&b"body\0with nul"[..]);
        let packed = Packed::new(&send);
        assert_eq!(packed.unpack(), send);
    }
}
