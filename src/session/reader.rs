//! Reading one leg's bytes and cutting them into frames with the protocol's codec.
//!
//! The read buffer follows the traffic. Each read is offered `room` bytes: the room doubles
//! while reads fill it, up to [`MAX_ROOM`], so that a busy leg takes many frames per system
//! call, and halves when a read uses less than a quarter of it. A plain TCP leg with nothing
//! buffered lets go of its buffer while it waits for the socket to become readable, so an idle
//! session holds no read buffer at all (a TLS leg cannot be asked whether it is readable without
//! reading, and keeps one).
//!
//! Frames the codec cuts out share the buffer's memory (no copy), so a frame kept for replay
//! keeps the read it came in alive: at most [`MAX_ROOM`] per read, freed when the last frame
//! of that read is.

use crate::tls::ReadHalf;
use bytes::BytesMut;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio_util::codec::Decoder;

/// What a read is offered at first, and at least: a message of a few KiB in one read.
pub const MIN_ROOM: usize = 4 * 1024;
/// What a read is offered at most. Below glibc's mmap threshold, so buffers come from the heap.
pub const MAX_ROOM: usize = 64 * 1024;

pub struct FramedReader<C> {
    half: ReadHalf,
    codec: C,
    buffer: BytesMut,
    room: usize,
    /// The buffer may hold a frame the codec has not seen yet.
    readable: bool,
    eof: bool,
    /// End of stream or an error was returned: nothing more comes.
    done: bool,
}

impl<C: Decoder> FramedReader<C>
where
    C::Error: From<io::Error>,
{
    /// A reader that starts with `read`, bytes already taken from the socket (by a handshake,
    /// or by another process before a takeover).
    pub fn new(half: ReadHalf, codec: C, read: &[u8]) -> FramedReader<C> {
        FramedReader {
            half,
            codec,
            buffer: BytesMut::from(read),
            room: MIN_ROOM,
            readable: !read.is_empty(),
            eof: false,
            done: false,
        }
    }

    pub fn half(&self) -> &ReadHalf {
        &self.half
    }

    pub fn codec(&self) -> &C {
        &self.codec
    }

    pub fn codec_mut(&mut self) -> &mut C {
        &mut self.codec
    }

    /// Bytes read from the socket that no frame has taken yet, for a hand-over.
    pub fn buffered(&self) -> &[u8] {
        &self.buffer
    }

    /// Memory held for reading (not counting frames already handed out).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// The next frame; `None` after the end of the stream or an error. Cancel-safe: what was
    /// read stays in the buffer.
    pub async fn next(&mut self) -> Option<Result<C::Item, C::Error>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// A frame that is already in the buffer, without reading the socket: what the session
    /// handles before it writes, so that the frames of one read leave in one write.
    pub fn try_next(&mut self) -> Option<Result<C::Item, C::Error>> {
        if self.done || self.eof || !self.readable {
            return None;
        }
        match self.codec.decode(&mut self.buffer) {
            Ok(Some(frame)) => Some(Ok(frame)),
            Ok(None) => {
                self.readable = false;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<C::Item, C::Error>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if self.readable {
                let decoded = if self.eof {
                    self.codec.decode_eof(&mut self.buffer)
                } else {
                    self.codec.decode(&mut self.buffer)
                };
                match decoded {
                    Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                    Ok(None) if self.eof => {
                        self.done = true;
                        return Poll::Ready(None);
                    }
                    Ok(None) => self.readable = false,
                    Err(e) => {
                        self.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            match ready!(self.poll_read(cx)) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            self.readable = true;
        }
    }

    /// One read into the buffer: the count of bytes, 0 at the end of the stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buffer.is_empty()
            && let ReadHalf::Plain(half) = &self.half
            && let Poll::Pending = half.as_ref().poll_read_ready(cx)?
        {
            self.let_go();
            return Poll::Pending;
        }
        let spare = self.buffer.capacity() - self.buffer.len();
        if spare < self.room {
            self.buffer.reserve(self.room);
        }
        let offered = self.buffer.capacity() - self.buffer.len();
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.half), cx, &mut self.buffer);
        let n = match read {
            Poll::Ready(result) => result?,
            Poll::Pending => {
                // The socket's readiness was stale.
                self.let_go();
                return Poll::Pending;
            }
        };
        if n >= offered {
            self.room = (self.room * 2).min(MAX_ROOM);
        } else if n < self.room / 4 {
            self.room = (self.room / 2).max(MIN_ROOM);
        }
        Poll::Ready(Ok(n))
    }

    /// Frees the buffer while there is nothing in it and nothing to read.
    fn let_go(&mut self) {
        if self.buffer.is_empty() && matches!(self.half, ReadHalf::Plain(_)) {
            self.buffer = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::amqp::{Frame, FrameCodec, FrameType};
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, ReadHalf) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = TcpStream::connect(listener.local_addr().unwrap());
        let (ours, accepted) = tokio::join!(connect, listener.accept());
        let (read, _) = crate::tls::Stream::Plain(accepted.unwrap().0).into_split();
        (ours.unwrap(), read)
    }

    fn body(len: usize) -> Vec<u8> {
        let mut wire = vec![3, 0, 1];
        wire.extend_from_slice(&(len as u32).to_be_bytes());
        wire.extend(std::iter::repeat_n(b'x', len));
        wire.push(0xCE);
        wire
    }

    #[tokio::test]
    async fn frames_across_reads_and_a_buffer_let_go_when_idle() {
        let (mut peer, half) = pair().await;
        let mut reader = FramedReader::new(half, FrameCodec::new(1 << 20), &[]);
        // A frame in two pieces, the second after the reader has waited.
        let wire = body(10_000);
        peer.write_all(&wire[..100]).await.unwrap();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), reader.next());
        assert!(waiting.await.is_err(), "half a frame is not a frame");
        peer.write_all(&wire[100..]).await.unwrap();
        let frame: Frame = reader.next().await.unwrap().unwrap();
        assert_eq!((frame.kind, frame.payload.len()), (FrameType::Body, 10_000));
        // Nothing more to read: the reader holds no buffer while it waits.
        let idle = tokio::time::timeout(std::time::Duration::from_millis(50), reader.next());
        assert!(idle.await.is_err());
        assert_eq!(reader.capacity(), 0);
        // Many frames at once come in few reads, and in order.
        let mut many = Vec::new();
        for len in 0..200 {
            many.extend(body(len));
        }
        peer.write_all(&many).await.unwrap();
        for len in 0..200 {
            let frame = reader.next().await.unwrap().unwrap();
            assert_eq!(frame.payload.len(), len);
        }
        assert!(reader.room > MIN_ROOM, "a busy leg reads more at a time");
        drop(peer);
        assert!(reader.next().await.is_none());
        assert!(reader.next().await.is_none(), "done stays done");
    }

    #[tokio::test]
    async fn bytes_read_before_come_first() {
        let (mut peer, half) = pair().await;
        let wire = body(5);
        let mut reader = FramedReader::new(half, FrameCodec::new(1 << 20), &wire[..4]);
        assert_eq!(reader.buffered(), &wire[..4]);
        peer.write_all(&wire[4..]).await.unwrap();
        let frame = reader.next().await.unwrap().unwrap();
        assert_eq!(&frame.payload[..], b"xxxxx");
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_is_an_error() {
        let (mut peer, half) = pair().await;
        let mut reader = FramedReader::new(half, FrameCodec::new(1 << 20), &[]);
        peer.write_all(&body(100)[..50]).await.unwrap();
        drop(peer);
        assert!(matches!(reader.next().await, Some(Err(_))));
        assert!(reader.next().await.is_none());
    }
}
