//! A content-carrying method (basic.publish from the client; basic.deliver, basic.get-ok and
//! basic.return from the node) and its content frames, gathered until complete. A message is
//! only ever passed on whole, so that no node change can split one: the new node gets it all,
//! or the client gets none of it.

use crate::proto::amqp::content;
use crate::proto::amqp::{Frame, FrameType};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Assembly {
    frames: Vec<Frame>,
    /// The body size the content header announced, once it came.
    expected: Option<u64>,
    received: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssemblyError {
    #[error("UNEXPECTED_FRAME - expected a content header after the method")]
    BodyBeforeHeader,
    #[error("UNEXPECTED_FRAME - a second content header for one message")]
    SecondHeader,
    #[error("UNEXPECTED_FRAME - content frame on channel {0} without a method")]
    Stray(u16),
    #[error("FRAME_ERROR - malformed content header")]
    BadHeader,
    #[error("FRAME_ERROR - message body of {0} bytes is larger than the allowed {1}")]
    TooLarge(u64, u64),
    #[error("FRAME_ERROR - more body than the content header announced")]
    Overrun,
}

impl AssemblyError {
    /// The AMQP reply code for the connection error.
    pub fn reply_code(&self) -> u16 {
        match self {
            AssemblyError::BodyBeforeHeader
            | AssemblyError::SecondHeader
            | AssemblyError::Stray(_) => 505,
            _ => 501,
        }
    }
}

impl Assembly {
    pub fn start(method: Frame) -> Assembly {
        Assembly {
            frames: vec![method],
            expected: None,
            received: 0,
        }
    }

    /// Adds a content frame; returns whether the message is complete. `max_body` caps the size
    /// the header may announce, checked before any body is buffered.
    pub fn add(&mut self, frame: Frame, max_body: u64) -> Result<bool, AssemblyError> {
        match (frame.kind, self.expected) {
            (FrameType::Header, None) => {
                let header =
                    content::peek_header(&frame.payload).map_err(|_| AssemblyError::BadHeader)?;
                if header.body_size > max_body {
                    return Err(AssemblyError::TooLarge(header.body_size, max_body));
                }
                self.expected = Some(header.body_size);
            }
            (FrameType::Header, Some(_)) => return Err(AssemblyError::SecondHeader),
            (FrameType::Body, None) => return Err(AssemblyError::BodyBeforeHeader),
            (FrameType::Body, Some(expected)) => {
                self.received += frame.payload.len() as u64;
                if self.received > expected {
                    return Err(AssemblyError::Overrun);
                }
            }
            _ => return Err(AssemblyError::Stray(frame.channel)),
        }
        self.frames.push(frame);
        Ok(self.expected == Some(self.received))
    }

    pub fn into_frames(self) -> Vec<Frame> {
        self.frames
    }
}
