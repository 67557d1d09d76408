//! One leg of a STOMP session: frames read with a [`StompCodec`], frames written through a
//! buffer that the session drains when the socket can take it, so that a slow peer holds back
//! only what flows towards it.

use crate::proto::stomp::{Frame, Heartbeat, Incoming, Limits, StompCodec, StompError, Version};
use crate::session::reader::FramedReader;
use crate::tls::{ReadHalf, WriteHalf};
use bytes::{Buf, BytesMut};
use std::io;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::codec::Encoder;

pub struct Reader {
    frames: FramedReader<StompCodec>,
    /// When the peer last sent anything (a frame or a heart-beat).
    pub last_read: Instant,
}

impl Reader {
    pub fn new(half: ReadHalf, version: Version, limits: Limits) -> Reader {
        Reader::with_buffer(half, version, limits, &[])
    }

    /// A reader that starts with bytes another process read from the socket (a takeover).
    pub fn with_buffer(half: ReadHalf, version: Version, limits: Limits, read: &[u8]) -> Reader {
        Reader {
            frames: FramedReader::new(half, StompCodec::with_limits(version, limits), read),
            last_read: Instant::now(),
        }
    }

    pub fn set_version(&mut self, version: Version) {
        self.frames.codec_mut().set_version(version);
    }

    /// Whether no frame is half decoded: what is buffered starts a frame.
    pub fn between_frames(&self) -> bool {
        self.frames.codec().is_idle()
    }

    /// Bytes read from the socket and not yet decoded, for a hand-over.
    pub fn buffered(&self) -> &[u8] {
        self.frames.buffered()
    }

    pub fn half(&self) -> &ReadHalf {
        self.frames.half()
    }

    /// The next frame or heart-beat; `None` at end of stream. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Incoming, StompError>> {
        let item = self.frames.next().await;
        self.last_read = Instant::now();
        item
    }

    /// A frame or heart-beat already read, without reading the socket.
    pub fn try_next(&mut self) -> Option<Result<Incoming, StompError>> {
        let item = self.frames.try_next()?;
        self.last_read = Instant::now();
        Some(item)
    }
}

pub struct Writer {
    half: WriteHalf,
    out: BytesMut,
    codec: StompCodec,
    /// When bytes last left for the peer, for heart-beating.
    pub last_write: Instant,
}

impl Writer {
    pub fn new(half: WriteHalf, version: Version) -> Writer {
        Writer {
            half,
            out: BytesMut::new(),
            codec: StompCodec::new(version),
            last_write: Instant::now(),
        }
    }

    pub fn set_version(&mut self, version: Version) {
        self.codec.set_version(version);
    }

    /// Queues a frame; the session's write branch sends it.
    pub fn queue(&mut self, frame: &Frame) -> Result<(), StompError> {
        self.codec.encode(frame, &mut self.out)
    }

    /// Bytes queued and not yet written, for a hand-over.
    pub fn unsent(&self) -> &[u8] {
        &self.out
    }

    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Lets go of the socket without shutting it down (see [`WriteHalf::forget`]).
    pub fn forget(self) {
        self.half.forget();
    }

    pub fn queue_heartbeat(&mut self) {
        // Encoding a heart-beat cannot fail: it is one end of line.
        let _ = self.codec.encode(Heartbeat, &mut self.out);
    }

    /// Bytes queued and not yet written (a TLS leg that owes a flush counts one).
    pub fn pending(&self) -> usize {
        self.out.len() + usize::from(self.half.unflushed())
    }

    /// Writes what the socket takes now. Cancel-safe: nothing is lost if dropped.
    pub async fn write_some(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let n = self.half.write(&self.out).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.out.advance(n);
            if self.out.is_empty() {
                // Everything went: an idle leg keeps no output buffer.
                self.out = BytesMut::new();
            }
            self.last_write = Instant::now();
        }
        if self.half.unflushed() {
            self.half.flush().await?;
        }
        Ok(())
    }

    /// Writes everything queued (at the end of a session or during a handshake).
    pub async fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            self.write_some().await?;
        }
        self.half.flush().await
    }

    pub async fn shutdown(&mut self) {
        let _ = self.half.shutdown().await;
    }
}

impl crate::session::io::Inbox for Reader {
    type Item = Result<Incoming, StompError>;
    fn next(&mut self) -> impl std::future::Future<Output = Option<Self::Item>> + Send {
        Reader::next(self)
    }
    fn try_next(&mut self) -> Option<Self::Item> {
        Reader::try_next(self)
    }
}

impl crate::session::io::Outbox for Writer {
    fn pending(&self) -> usize {
        Writer::pending(self)
    }
    fn write_some(&mut self) -> impl std::future::Future<Output = io::Result<()>> + Send {
        Writer::write_some(self)
    }

    fn shutdown(&mut self) -> impl std::future::Future<Output = ()> + Send {
        Self::shutdown(self)
    }

    fn queue_heartbeat(&mut self) {
        Self::queue_heartbeat(self);
    }
}
