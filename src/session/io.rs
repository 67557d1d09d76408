//! What the protocol-aware sessions (STOMP, AMQP) wait on in their event loop, shared: each leg
//! is a reader of decoded frames and a writer with a queue of bytes; timers may be off; a new
//! node connection may be being set up. Each helper stays pending when there is nothing to
//! wait for, so a `select!` branch needs no guard to be switched off.

use crate::session::failover::{End, FINAL_FLUSH, LINGER};
use std::future::Future;
use std::io;
use std::pin::Pin;
use tokio::time::{Instant, sleep_until};

/// A node connection being set up (connect, handshake, replay), polled by the session loop.
pub type Connecting<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The reading half of a leg: decoded frames (or a decoding error), `None` at the end.
pub trait Inbox {
    type Item;
    /// Cancel-safe: a frame is either returned or still buffered.
    fn next(&mut self) -> impl Future<Output = Option<Self::Item>> + Send;
}

/// The writing half of a leg: frames are queued as bytes, then written as the socket takes them.
pub trait Outbox {
    /// Bytes queued and not yet written.
    fn pending(&self) -> usize;
    /// Writes what the socket takes now. Cancel-safe: nothing is lost if dropped.
    fn write_some(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Queues a heart-beat frame.
    fn queue_heartbeat(&mut self);
    /// Shuts the socket's sending side down (FIN).
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// Ends a session's client leg: writes what is queued for it (within `FINAL_FLUSH`) and shuts
/// it down; after a client error it reads on for `LINGER`, because closing with the client's
/// bytes unread would reset the connection and the client could lose the answer that says what
/// it did wrong.
pub async fn close_client<R, W, T, E>(reader: &mut R, writer: &mut W, end: &End)
where
    R: Inbox<Item = Result<T, E>>,
    W: Outbox,
{
    let flush = async {
        while writer.pending() > 0 {
            if writer.write_some().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(FINAL_FLUSH, flush).await;
    writer.shutdown().await;
    if matches!(end, End::ClientError(_)) {
        let drain = async { while let Some(Ok(_)) = reader.next().await {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

pub enum LegEvent<T> {
    Read(Option<T>),
    Wrote(io::Result<()>),
}

/// Reads from or writes to the leg, whichever is ready first. Without a leg, or with reading
/// paused and nothing to write, it never resolves.
pub async fn read_or_write<R: Inbox, W: Outbox>(
    leg: Option<(&mut R, &mut W)>,
    read: bool,
) -> LegEvent<R::Item> {
    let Some((reader, writer)) = leg else {
        return std::future::pending().await;
    };
    let write = writer.pending() > 0;
    if !read && !write {
        return std::future::pending().await;
    }
    tokio::select! {
        item = reader.next(), if read => LegEvent::Read(item),
        result = writer.write_some(), if write => LegEvent::Wrote(result),
    }
}

/// Sleeps until the deadline; a timer that is off (`None`) never fires.
pub async fn timer(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The outcome of the node connection being set up; pending while there is none.
pub async fn established<F: Future + Unpin>(establishing: &mut Option<F>) -> F::Output {
    match establishing {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// What woke a session's loop, of what every protocol-aware session waits on.
pub enum Wake<C, N, E> {
    Client(LegEvent<C>),
    Node(LegEvent<N>),
    /// The node connection being set up is ready, or failed.
    Connected(E),
    /// A heart-beat went out to keep a leg alive; nothing for the session to do.
    Beat,
}

/// One leg as [`next_wake`] serves it: its halves, whether to read from it now (reading pauses
/// for backpressure; writes go on), and when it is due a heart-beat (`None`: never).
pub struct Leg<'a, R, W> {
    pub reader: &'a mut R,
    pub writer: &'a mut W,
    pub read: bool,
    pub beat_due: Option<Instant>,
}

/// Waits on the client leg, the node leg (or the node connection being set up, when there is
/// no leg) and returns what happened first. A leg due a heart-beat with nothing else queued
/// gets one here.
pub async fn next_wake<CR, CW, NR, NW, E>(
    client: Leg<'_, CR, CW>,
    node: Option<Leg<'_, NR, NW>>,
    connecting: &mut Option<Connecting<E>>,
) -> Wake<CR::Item, NR::Item, E>
where
    CR: Inbox,
    CW: Outbox,
    NR: Inbox,
    NW: Outbox,
{
    let Leg {
        reader: client_reader,
        writer: client_writer,
        read: read_client,
        beat_due: client_beat_due,
    } = client;
    let (mut node, read_node, node_beat_due) = match node {
        Some(leg) => (Some((leg.reader, leg.writer)), leg.read, leg.beat_due),
        None => (None, false, None),
    };
    tokio::select! {
        event = read_or_write(Some((&mut *client_reader, &mut *client_writer)), read_client) => {
            Wake::Client(event)
        }
        event = read_or_write(node.as_mut().map(|(r, w)| (&mut **r, &mut **w)), read_node) => {
            Wake::Node(event)
        }
        result = established(connecting) => Wake::Connected(result),
        _ = timer(client_beat_due) => {
            if client_writer.pending() == 0 {
                client_writer.queue_heartbeat();
            }
            Wake::Beat
        }
        _ = timer(node_beat_due) => {
            if let Some((_, writer)) = node
                && writer.pending() == 0
            {
                writer.queue_heartbeat();
            }
            Wake::Beat
        }
    }
}
