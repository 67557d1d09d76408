//! One leg of an AMQP session: frames read with a [`FrameCodec`], frames written from a queue of
//! chunks with vectored writes. Content bodies are queued as the `Bytes` they were read into, so
//! they cross tether without being copied; small pieces (frame headers, methods) are gathered in
//! a staging buffer first, which costs less than an iovec each.

use crate::proto::amqp::{FRAME_END, Frame, FrameCodec, FrameError, FrameType};
use crate::session::reader::FramedReader;
use crate::tls::{ReadHalf, WriteHalf};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// Payloads at least this big are queued by reference instead of copied.
const ZERO_COPY_FROM: usize = 2048;
/// At most this many chunks go into one vectored write.
const MAX_IOVECS: usize = 64;

pub struct FrameReader {
    frames: FramedReader<FrameCodec>,
    /// When the peer last sent anything, heart-beats included.
    pub last_read: Instant,
}

impl FrameReader {
    pub fn new(half: ReadHalf, max_frame_size: u32) -> FrameReader {
        FrameReader::with_buffer(half, max_frame_size, &[])
    }

    /// A reader that starts with bytes already read from the socket.
    pub fn with_buffer(half: ReadHalf, max_frame_size: u32, read: &[u8]) -> FrameReader {
        FrameReader {
            frames: FramedReader::new(half, FrameCodec::new(max_frame_size), read),
            last_read: Instant::now(),
        }
    }

    pub fn set_max_frame_size(&mut self, max: u32) {
        self.frames.codec_mut().set_max_frame_size(max);
    }

    /// Bytes read from the socket and not yet a frame, for a hand-over.
    pub fn buffered(&self) -> &[u8] {
        self.frames.buffered()
    }

    pub fn max_frame_size(&self) -> u32 {
        self.frames.codec().max_frame_size()
    }

    pub fn half(&self) -> &ReadHalf {
        self.frames.half()
    }

    /// The next frame; `None` at end of stream. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Frame, FrameError>> {
        let item = self.frames.next().await;
        self.last_read = Instant::now();
        item
    }

    /// A frame already read, without reading the socket.
    pub fn try_next(&mut self) -> Option<Result<Frame, FrameError>> {
        let item = self.frames.try_next()?;
        self.last_read = Instant::now();
        Some(item)
    }
}

pub struct FrameWriter {
    half: WriteHalf,
    chunks: VecDeque<Bytes>,
    staging: BytesMut,
    pending: usize,
    /// The peer's frame_max: body frames bigger than this are split.
    max_frame_size: u32,
    /// When bytes last left for the peer, for heart-beating.
    pub last_write: Instant,
}

impl FrameWriter {
    pub fn new(half: WriteHalf, max_frame_size: u32) -> FrameWriter {
        FrameWriter {
            half,
            chunks: VecDeque::new(),
            staging: BytesMut::new(),
            pending: 0,
            max_frame_size,
            last_write: Instant::now(),
        }
    }

    pub fn set_max_frame_size(&mut self, max: u32) {
        self.max_frame_size = max;
    }

    /// Bytes queued and not yet written (a TLS leg that owes a flush counts one).
    pub fn pending(&self) -> usize {
        self.pending + usize::from(self.half.unflushed())
    }

    /// Bytes queued and not yet written, in order, for a hand-over (a TLS leg's buffered
    /// records are not among them: TLS legs are not handed over).
    pub fn unsent(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.pending);
        for chunk in &self.chunks {
            bytes.extend_from_slice(chunk);
        }
        bytes.extend_from_slice(&self.staging);
        bytes
    }

    pub fn max_frame_size(&self) -> u32 {
        self.max_frame_size
    }

    /// Lets go of the socket without shutting it down (see [`WriteHalf::forget`]).
    pub fn forget(self) {
        self.half.forget();
    }

    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.staging.extend_from_slice(bytes);
        self.pending += bytes.len();
    }

    /// Queues a frame. A body frame bigger than the peer's frame_max is sent as several (the
    /// other leg may have negotiated bigger frames); other frames never exceed it.
    pub fn queue(&mut self, frame: &Frame) {
        let room = (self.max_frame_size as usize).saturating_sub(8).max(1);
        if frame.kind == FrameType::Body && frame.payload.len() > room {
            let mut rest = frame.payload.clone();
            while !rest.is_empty() {
                let piece = rest.split_to(room.min(rest.len()));
                self.queue_one(&Frame::body(frame.channel, piece));
            }
            return;
        }
        self.queue_one(frame);
    }

    fn queue_one(&mut self, frame: &Frame) {
        self.staging.extend_from_slice(&frame.wire_header());
        if frame.payload.len() >= ZERO_COPY_FROM {
            self.seal_staging();
            self.chunks.push_back(frame.payload.clone());
        } else {
            self.staging.extend_from_slice(&frame.payload);
        }
        self.staging.extend_from_slice(&[FRAME_END]);
        self.pending += frame.wire_size();
    }

    fn seal_staging(&mut self) {
        if !self.staging.is_empty() {
            let sealed = self.staging.split().freeze();
            self.chunks.push_back(sealed);
        }
    }

    /// Writes what the socket takes now. Cancel-safe: nothing is lost if dropped.
    pub async fn write_some(&mut self) -> io::Result<()> {
        if self.pending > 0 {
            self.write_queued().await?;
        }
        if self.half.unflushed() {
            self.half.flush().await?;
        }
        Ok(())
    }

    async fn write_queued(&mut self) -> io::Result<()> {
        self.seal_staging();
        let slices: Vec<IoSlice<'_>> = self
            .chunks
            .iter()
            .take(MAX_IOVECS)
            .map(|c| IoSlice::new(c))
            .collect();
        let mut written = self.half.write_vectored(&slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.pending -= written;
        while written > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
        if self.pending == 0 {
            // Everything went: an idle leg keeps no staging memory (the staging buffer's
            // allocation lives on as long as this handle does).
            self.staging = BytesMut::new();
        }
        self.last_write = Instant::now();
        Ok(())
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.pending > 0 {
            self.write_some().await?;
        }
        self.half.flush().await
    }

    pub async fn shutdown(&mut self) {
        let _ = self.half.shutdown().await;
    }
}

impl crate::session::io::Inbox for FrameReader {
    type Item = Result<Frame, FrameError>;
    fn next(&mut self) -> impl std::future::Future<Output = Option<Self::Item>> + Send {
        FrameReader::next(self)
    }
    fn try_next(&mut self) -> Option<Self::Item> {
        FrameReader::try_next(self)
    }
}

impl crate::session::io::Outbox for FrameWriter {
    fn pending(&self) -> usize {
        FrameWriter::pending(self)
    }
    fn write_some(&mut self) -> impl std::future::Future<Output = io::Result<()>> + Send {
        FrameWriter::write_some(self)
    }

    fn shutdown(&mut self) -> impl std::future::Future<Output = ()> + Send {
        Self::shutdown(self)
    }

    fn queue_heartbeat(&mut self) {
        self.queue(&Frame::heartbeat());
    }
}
