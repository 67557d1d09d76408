use super::*;
use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Splits a byte stream into [`Command`]s and writes them back. After a decode error the
/// stream is out of step: drop the connection.
#[derive(Clone, Copy, Debug)]
pub struct OpenWireCodec {
    max_frame_size: usize,
}

impl OpenWireCodec {
    pub fn new(max_frame_size: usize) -> OpenWireCodec {
        OpenWireCodec { max_frame_size }
    }
}

impl Default for OpenWireCodec {
    fn default() -> OpenWireCodec {
        OpenWireCodec::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl Decoder for OpenWireCodec {
    type Item = Command;
    type Error = OpenWireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Command>, OpenWireError> {
        let Some(prefix) = src.first_chunk::<4>() else {
            return Ok(None);
        };
        let announced = i32::from_be_bytes(*prefix);
        let size = usize::try_from(announced)
            .ok()
            .filter(|&size| size >= 1)
            .ok_or(OpenWireError::BadFrameSize(announced))?;
        if size > self.max_frame_size {
            return Err(OpenWireError::FrameTooLarge {
                size: size as u64,
                max: self.max_frame_size,
            });
        }
        if src.len() < 4 + size {
            src.reserve(4 + size - src.len());
            return Ok(None);
        }
        src.advance(4);
        let mut frame = src.split_to(size).freeze();
        let kind = frame.get_u8();
        Command::decode(kind, frame).map(Some)
    }
}

impl Encoder<&Command> for OpenWireCodec {
    type Error = OpenWireError;

    fn encode(&mut self, command: &Command, dst: &mut BytesMut) -> Result<(), OpenWireError> {
        command.encode(dst)
    }
}
