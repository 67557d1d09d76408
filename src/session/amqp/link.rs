//! A session's link to its node: a connection of its own, or its share of a connection that
//! several sessions multiplex (see [`super::shared`]). The session, the replay and the pool's
//! cleaning read and write either the same way; only heart-beats (the shared connection's own
//! business) and the way a session lets go of the link differ.

use super::leg::{FrameReader, FrameWriter};
use super::shared::member;
use crate::proto::amqp::{Frame, FrameError};
use std::io;
use tokio::time::Instant;

pub enum NodeReader {
    Own(FrameReader),
    Shared(member::Inbox),
}

pub enum NodeWriter {
    Own(FrameWriter),
    Shared(member::Outbox),
}

impl NodeReader {
    /// The next frame from the node; `None` at the end. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Frame, FrameError>> {
        match self {
            NodeReader::Own(reader) => reader.next().await,
            NodeReader::Shared(inbox) => inbox.next().await,
        }
    }

    /// When the node last sent anything.
    pub fn last_read(&self) -> Instant {
        match self {
            NodeReader::Own(reader) => reader.last_read,
            NodeReader::Shared(inbox) => inbox.last_read,
        }
    }

    pub fn set_max_frame_size(&mut self, max: u32) {
        if let NodeReader::Own(reader) = self {
            reader.set_max_frame_size(max);
        }
    }

    /// Why a shared link ended, once it has (a connection of its own just ends).
    pub fn ended(&self) -> Option<&member::Ended> {
        match self {
            NodeReader::Own(_) => None,
            NodeReader::Shared(inbox) => inbox.ended(),
        }
    }
}

impl NodeWriter {
    pub fn queue(&mut self, frame: &Frame) {
        match self {
            NodeWriter::Own(writer) => writer.queue(frame),
            NodeWriter::Shared(outbox) => outbox.queue(frame),
        }
    }

    pub fn pending(&self) -> usize {
        match self {
            NodeWriter::Own(writer) => writer.pending(),
            NodeWriter::Shared(outbox) => outbox.pending(),
        }
    }

    pub async fn write_some(&mut self) -> io::Result<()> {
        match self {
            NodeWriter::Own(writer) => writer.write_some().await,
            NodeWriter::Shared(outbox) => outbox.write_some().await,
        }
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        match self {
            NodeWriter::Own(writer) => writer.flush().await,
            NodeWriter::Shared(outbox) => outbox.write_some().await,
        }
    }

    /// When bytes last left for the node.
    pub fn last_write(&self) -> Instant {
        match self {
            NodeWriter::Own(writer) => writer.last_write,
            NodeWriter::Shared(outbox) => outbox.last_write,
        }
    }

    pub fn set_max_frame_size(&mut self, max: u32) {
        if let NodeWriter::Own(writer) = self {
            writer.set_max_frame_size(max);
        }
    }
}

impl crate::session::io::Inbox for NodeReader {
    type Item = Result<Frame, FrameError>;
    fn next(&mut self) -> impl std::future::Future<Output = Option<Self::Item>> + Send {
        NodeReader::next(self)
    }
    fn try_next(&mut self) -> Option<Self::Item> {
        match self {
            NodeReader::Own(reader) => reader.try_next(),
            // A share's frames come through a channel, already one per wake-up.
            NodeReader::Shared(_) => None,
        }
    }
}

impl crate::session::io::Outbox for NodeWriter {
    fn pending(&self) -> usize {
        NodeWriter::pending(self)
    }

    fn write_some(&mut self) -> impl std::future::Future<Output = io::Result<()>> + Send {
        NodeWriter::write_some(self)
    }

    fn queue_heartbeat(&mut self) {
        // A shared connection heart-beats the node itself.
        if let NodeWriter::Own(writer) = self {
            writer.queue(&Frame::heartbeat());
        }
    }

    async fn shutdown(&mut self) {
        if let NodeWriter::Own(writer) = self {
            writer.shutdown().await;
        }
    }
}
