//! What the protocol-aware sessions (STOMP, AMQP) wait on in their event loop, shared: each leg
//! is a reader of decoded frames and a writer with a queue of bytes; timers may be off; a new
//! node connection may be being set up. Each helper stays pending when there is nothing to
//! wait for, so a `select!` branch needs no guard to be switched off.

use std::future::Future;
use std::io;
use tokio::time::{Instant, sleep_until};

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
