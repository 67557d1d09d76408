//! A session's share of a shared node connection: frames go to the connection's task in
//! batches, and come back on the session's own queue with its own channel numbers.
//!
//! Backpressure towards the node is the task's queue of batches, which is bounded: when the
//! node is slow the session's batches wait, its frames pile up in [`Outbox::pending`] and the
//! session stops reading its client, as it does with a connection of its own. The other way a
//! session that does not take its frames is moved off the connection by the task (see
//! [`super::connection`]), so that its client's pace never holds the others back.

use crate::proto::amqp::{Frame, FrameError};
use crate::session::failover::FailoverReason;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub type MemberId = u64;

/// Frames from one session, in order.
pub struct Batch {
    pub member: MemberId,
    pub frames: Vec<Frame>,
}

/// What a session tells the task apart from frames.
pub enum Control {
    Join(MemberId, Port),
    /// The session is done with the connection: its channels are to be closed, and these
    /// queues (exclusive and server-named ones, which would otherwise live as long as the
    /// shared connection) deleted.
    Leave(MemberId, Vec<String>),
    /// Nothing but a look at the clock and the listener (which has closed).
    Wake,
}

/// The task's side of a member: where its frames go, and how many bytes wait there.
pub struct Port {
    pub deliveries: mpsc::UnboundedSender<Delivery>,
    pub backlog: Arc<AtomicUsize>,
}

impl Port {
    /// Queues a frame for the session; its size counts towards the backlog until it is read.
    pub fn deliver(&self, frame: Frame) -> usize {
        let size = frame.wire_size();
        let backlog = self.backlog.fetch_add(size, Ordering::AcqRel) + size;
        let _ = self.deliveries.send(Delivery::Frame(frame));
        backlog
    }

    pub fn end(&self, ended: Ended) {
        let _ = self.deliveries.send(Delivery::End(ended));
    }
}

pub enum Delivery {
    Frame(Frame),
    End(Ended),
}

/// Why a shared link ended.
#[derive(Clone, Debug)]
pub enum Ended {
    /// The shared connection failed: the session fails over, for this reason.
    Failed(FailoverReason, String),
    /// The task took the session off the connection (for the reason given): the session
    /// carries on on a connection of its own.
    Unshared(&'static str),
}

pub struct Inbox {
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    backlog: Arc<AtomicUsize>,
    ended: Option<Ended>,
    /// When a frame last came.
    pub last_read: Instant,
}

impl Inbox {
    /// Cancel-safe: a frame is either returned or still queued.
    pub async fn next(&mut self) -> Option<Result<Frame, FrameError>> {
        if self.ended.is_some() {
            return None;
        }
        let delivery = self.deliveries.recv().await;
        self.last_read = Instant::now();
        match delivery {
            Some(Delivery::Frame(frame)) => {
                self.backlog.fetch_sub(frame.wire_size(), Ordering::AcqRel);
                Some(Ok(frame))
            }
            Some(Delivery::End(ended)) => {
                self.ended = Some(ended);
                None
            }
            None => {
                // The task is gone without a word (it cannot be, short of a panic).
                let why = "the shared connection's task ended".to_owned();
                self.ended = Some(Ended::Failed(FailoverReason::Closed, why));
                None
            }
        }
    }

    pub fn ended(&self) -> Option<&Ended> {
        self.ended.as_ref()
    }
}

pub struct Outbox {
    id: MemberId,
    queued: Vec<Frame>,
    bytes: usize,
    data: mpsc::Sender<Batch>,
    control: mpsc::UnboundedSender<Control>,
    left: bool,
    /// When a batch last went to the task.
    pub last_write: Instant,
}

impl Outbox {
    pub fn queue(&mut self, frame: &Frame) {
        self.bytes += frame.wire_size();
        self.queued.push(frame.clone());
    }

    pub fn pending(&self) -> usize {
        self.bytes
    }

    /// Hands what is queued to the task, waiting while its queue is full. Cancel-safe.
    pub async fn write_some(&mut self) -> io::Result<()> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let permit = self.data.reserve().await.map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the shared connection is gone")
        })?;
        permit.send(Batch {
            member: self.id,
            frames: std::mem::take(&mut self.queued),
        });
        self.bytes = 0;
        self.last_write = Instant::now();
        Ok(())
    }

    /// The session is done with the connection; `queues` die with it (see [`Control::Leave`]).
    pub fn leave(mut self, queues: Vec<String>) {
        self.left = true;
        let _ = self.control.send(Control::Leave(self.id, queues));
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // A session that drops its link (a failover) leaves without queues to delete.
        if !self.left {
            let _ = self.control.send(Control::Leave(self.id, Vec::new()));
        }
    }
}

/// A new member's two halves, and the task's side of it (sent in [`Control::Join`]).
pub fn pair(
    id: MemberId,
    data: mpsc::Sender<Batch>,
    control: mpsc::UnboundedSender<Control>,
) -> (Inbox, Outbox, Port) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(AtomicUsize::new(0));
    let now = Instant::now();
    let inbox = Inbox {
        deliveries: rx,
        backlog: backlog.clone(),
        ended: None,
        last_read: now,
    };
    let outbox = Outbox {
        id,
        queued: Vec::new(),
        bytes: 0,
        data,
        control,
        left: false,
        last_write: now,
    };
    let port = Port {
        deliveries: tx,
        backlog,
    };
    (inbox, outbox, port)
}
