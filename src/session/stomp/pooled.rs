//! Warm reuse of STOMP node connections (see [`crate::pool`]): what a client logs in with, how
//! a session's node connection is cleaned when it ends, and how an idle one is kept.
//!
//! Cleaning proves that nothing of the last client survives before the connection is parked:
//! every subscription is ended with an UNSUBSCRIBE whose RECEIPT is awaited (the broker sends
//! nothing more for it after that). A connection with deliveries the client had not acked is
//! closed instead (the broker redelivers them to others then, which an UNSUBSCRIBE does not
//! promise), and so is one where a MESSAGE that needs an ack arrives while cleaning, or an
//! ERROR. tether keeps transactions itself, so none is open on the node.

use super::heartbeat::{self, Beats};
use super::leg::{Reader, Writer};
use super::replay::Leftovers;
use super::upstream::NodeLeg;
use crate::cluster::node::Node;
use crate::pool::keeper::{self, CLEAN_LIMIT, Idle};
use crate::pool::{Credentials, Fingerprint, Pool, Release};
use crate::proto::stomp::{Command, Frame, Incoming, Version};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A node connection between sessions: a [`NodeLeg`] without its session lease.
pub struct Warm {
    reader: Reader,
    writer: Writer,
    connected: Frame,
    version: Version,
    beats: Beats,
    born: Instant,
}

impl Warm {
    /// The connection becomes a session's again.
    pub fn into_leg(self, node: &Arc<Node>) -> NodeLeg {
        NodeLeg {
            reader: self.reader,
            writer: self.writer,
            lease: node.lease(),
            connected: self.connected,
            version: self.version,
            beats: self.beats,
            born: self.born,
        }
    }
}

/// What a client logs in with, as the pool compares it: the virtual host (`host`) plainly;
/// every other header of its CONNECT (login, passcode, accept-version, client-id, ...) as a
/// digest. tether's own heart-beat header is the same for all.
pub fn credentials(connect: &Frame) -> Credentials {
    let mut headers: Vec<(&str, &str)> = connect
        .headers
        .iter()
        .filter(|(name, _)| *name != "heart-beat" && *name != "host")
        .collect();
    headers.sort();
    let command = connect.command.to_string();
    let parts = headers
        .iter()
        .flat_map(|(name, value)| [name.as_bytes(), value.as_bytes()]);
    let secret = Credentials::secret_of(std::iter::once(command.as_bytes()).chain(parts));
    Credentials {
        public: connect.header("host").unwrap_or_default().to_owned(),
        secret,
    }
}

/// Cleans the connection of a session that ended and parks it, or closes it when it is too
/// old or cannot be proven clean. Runs in the background: the client is gone already.
pub fn release(
    pool: Arc<Pool<Warm>>,
    leg: NodeLeg,
    leftovers: Leftovers,
    fingerprint: Fingerprint,
    span: tracing::Span,
) {
    tokio::spawn(async move {
        let NodeLeg {
            reader,
            writer,
            lease,
            connected,
            version,
            beats,
            born,
        } = leg;
        let node = lease.node().clone();
        drop(lease);
        let mut warm = Warm {
            reader,
            writer,
            connected,
            version,
            beats,
            born,
        };
        if pool.expired(born) {
            pool.count_release(Release::Expired);
            return warm.close(false, "").await;
        }
        let cleaned =
            keeper::cleaned(tokio::time::timeout(CLEAN_LIMIT, clean(&mut warm, leftovers)).await);
        keeper::settle(pool, warm, node, fingerprint, cleaned, span).await;
    });
}

/// Ends every subscription the last client left, or says why the connection cannot be
/// proven clean.
async fn clean(warm: &mut Warm, leftovers: Leftovers) -> Result<(), String> {
    if leftovers.unacked > 0 {
        return Err(format!("{} deliveries not acked", leftovers.unacked));
    }
    let mut waiting = BTreeSet::new();
    for (n, unsubscribe) in leftovers.unsubscribes.into_iter().enumerate() {
        let receipt = format!("tether-pool-{n}");
        let frame = unsubscribe.with_header("receipt", receipt.clone());
        warm.writer.queue(&frame).map_err(|e| e.to_string())?;
        waiting.insert(receipt);
    }
    warm.writer.flush().await.map_err(|e| e.to_string())?;
    while !waiting.is_empty() {
        let frame = match warm.reader.next().await {
            Some(Ok(Incoming::Frame(frame))) => frame,
            Some(Ok(Incoming::Heartbeat)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the node closed the connection".into()),
        };
        match frame.command {
            Command::Receipt => {
                // Others' are receipts tether asked for the client's last frames: late, harmless.
                waiting.remove(frame.header("receipt-id").unwrap_or_default());
            }
            Command::Message => {
                let subscription = frame.header("subscription").unwrap_or_default();
                if !leftovers.auto_ack.iter().any(|s| s == subscription) {
                    return Err(format!(
                        "a MESSAGE to ack for subscription {subscription:?}"
                    ));
                }
                // An auto-ack subscription's last message, sent before the UNSUBSCRIBE: the
                // broker counted it delivered as it would to a client that disconnects.
            }
            other => return Err(format!("{other} while cleaning")),
        }
    }
    Ok(())
}

impl Idle for Warm {
    fn born(&self) -> Instant {
        self.born
    }

    fn beat_due(&self) -> Option<Instant> {
        self.beats
            .send_every
            .map(|every| self.writer.last_write + every)
    }

    fn silent_after(&self) -> Option<Instant> {
        (self.beats.expect_every)
            .map(|every| self.reader.last_read + heartbeat::silence_limit(every))
    }

    async fn next_is_beat(&mut self) -> bool {
        matches!(self.reader.next().await, Some(Ok(Incoming::Heartbeat)))
    }

    async fn beat(&mut self) -> bool {
        self.writer.queue_heartbeat();
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.writer.flush()).await,
            Ok(Ok(()))
        )
    }

    /// DISCONNECT, unless the connection is gone already; STOMP's says no why.
    async fn close(mut self, broken: bool, _why: &str) {
        if !broken {
            let _ = self.writer.queue(&Frame::new(Command::Disconnect));
            let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.flush()).await;
        }
        self.writer.shutdown().await;
    }
}
