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
    /// A frame already read and buffered, without touching the socket.
    fn try_next(&mut self) -> Option<Self::Item>;
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
}

/// One leg as [`next_wake`] serves it: its halves, and whether to read from it now (reading
/// pauses for backpressure; writes go on).
pub struct Leg<'a, R, W> {
    pub reader: &'a mut R,
    pub writer: &'a mut W,
    pub read: bool,
}

/// A frame already read from either leg that is being read, if there is one. The session
/// handles these before anything else, without waiting: the answers to all the frames of one
/// read then go out in one write instead of one each.
pub fn next_buffered<CR, CW, NR, NW, E>(
    client: &mut Leg<'_, CR, CW>,
    node: Option<&mut Leg<'_, NR, NW>>,
) -> Option<Wake<CR::Item, NR::Item, E>>
where
    CR: Inbox,
    NR: Inbox,
{
    if client.read
        && let Some(item) = client.reader.try_next()
    {
        return Some(Wake::Client(LegEvent::Read(Some(item))));
    }
    let node = node.filter(|leg| leg.read)?;
    let item = node.reader.try_next()?;
    Some(Wake::Node(LegEvent::Read(Some(item))))
}

/// Waits on the client leg, the node leg (or the node connection being set up, when there is
/// no leg) and returns what happened first.
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
    let (node, read_node) = match node {
        Some(leg) => (Some((leg.reader, leg.writer)), leg.read),
        None => (None, false),
    };
    tokio::select! {
        event = read_or_write(Some((client.reader, client.writer)), client.read) => {
            Wake::Client(event)
        }
        event = read_or_write(node, read_node) => Wake::Node(event),
        result = established(connecting) => Wake::Connected(result),
    }
}

/// The deadlines of a protocol-aware session, worked out afresh on each turn of its loop.
#[derive(Clone, Copy, Debug, Default)]
pub struct Deadlines {
    /// The client has been silent too long: the session ends.
    pub client_silence: Option<Instant>,
    /// The node has been silent too long: the session fails over.
    pub node_silence: Option<Instant>,
    /// The node has been quiet long enough to be asked whether it is alive.
    pub ask_node: Option<Instant>,
    /// Publishes the node refused are due to be sent again.
    pub retry: Option<Instant>,
    /// A heart-beat is due to the client, or to the node, unless other bytes go first.
    pub client_beat: Option<Instant>,
    pub node_beat: Option<Instant>,
    /// Held back by the process budget: time to look whether it has room again.
    pub recheck: Option<Instant>,
}

impl Deadlines {
    fn earliest(&self) -> Option<Instant> {
        [
            self.client_silence,
            self.node_silence,
            self.ask_node,
            self.retry,
            self.client_beat,
            self.node_beat,
            self.recheck,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The deadlines that have come, as of now.
    pub fn due(&self) -> Deadlines {
        let now = Instant::now();
        let due = |at: Option<Instant>| at.filter(|at| *at <= now);
        Deadlines {
            client_silence: due(self.client_silence),
            node_silence: due(self.node_silence),
            ask_node: due(self.ask_node),
            retry: due(self.retry),
            client_beat: due(self.client_beat),
            node_beat: due(self.node_beat),
            recheck: due(self.recheck),
        }
    }
}

/// A heart-beat for a leg that is due one and has nothing else to send.
pub fn beat(writer: &mut impl Outbox, due: Option<Instant>) {
    if due.is_some() && writer.pending() == 0 {
        writer.queue_heartbeat();
    }
}

/// One timer for all of a session's [`Deadlines`].
///
/// Most deadlines only move later as traffic flows: each read pushes a silence back, each write
/// a heart-beat. So the timer is set again only when a deadline comes earlier than the one it is
/// set for; when it rings early, the session works its deadlines out again and sets it anew.
/// Setting one timer per deadline on every turn (a timer-wheel insertion and removal each) cost
/// more CPU than reading the frames.
pub struct Alarm {
    sleep: Pin<Box<tokio::time::Sleep>>,
    set_for: Option<Instant>,
}

impl Default for Alarm {
    fn default() -> Alarm {
        Alarm {
            sleep: Box::pin(sleep_until(Instant::now())),
            set_for: None,
        }
    }
}

impl Alarm {
    /// Makes sure the alarm rings no later than the earliest deadline.
    pub fn set(&mut self, deadlines: &Deadlines) {
        let Some(at) = deadlines.earliest() else {
            return;
        };
        if self.set_for.is_some_and(|set_for| set_for <= at) {
            return;
        }
        self.sleep.as_mut().reset(at);
        self.set_for = Some(at);
    }

    /// Rings when the time it is set for comes; never while it is not set. Cancel-safe.
    pub async fn ring(&mut self) {
        if self.set_for.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.set_for = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn an_alarm_rings_by_the_earliest_deadline_and_not_when_unset() {
        let mut alarm = Alarm::default();
        let idle = tokio::time::timeout(Duration::from_secs(3600), alarm.ring());
        assert!(idle.await.is_err(), "an alarm never set never rings");
        let start = Instant::now();
        let later = Deadlines {
            client_beat: Some(start + Duration::from_secs(10)),
            ..Deadlines::default()
        };
        alarm.set(&later);
        // An earlier deadline brings it forward; a later one leaves it.
        alarm.set(&Deadlines {
            node_silence: Some(start + Duration::from_secs(2)),
            ..later
        });
        alarm.set(&Deadlines {
            retry: Some(start + Duration::from_secs(5)),
            ..Deadlines::default()
        });
        alarm.ring().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        let due = later.due();
        assert!(due.client_beat.is_none(), "not due yet: {due:?}");
        // Rung: it waits to be set again.
        let unset = tokio::time::timeout(Duration::from_secs(3600), alarm.ring());
        assert!(unset.await.is_err());
        alarm.set(&later);
        alarm.ring().await;
        assert!(later.due().client_beat.is_some());
    }
}
