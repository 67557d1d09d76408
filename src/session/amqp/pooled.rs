//! Warm reuse of AMQP node connections (see [`crate::pool`]): what a client logs in with, how
//! a session's node connection is cleaned when it ends, and how an idle one is kept.
//!
//! Cleaning proves that nothing of the last client survives on the connection before it is
//! parked: every channel it left open is closed (its consumers cancelled, its unacked
//! deliveries requeued by the broker), the closes it had under way are answered, and its
//! exclusive and server-named queues are deleted. A channel that only ever published (no
//! consume, get, qos or flow) with every publish confirmed holds nothing of the client's: it
//! stays open, and the next session's channel.open (and confirm.select) of that number is
//! answered by tether, which saves the node two round trips per connect. Anything the node sends that does not fit
//! that picture (a connection-level notice, traffic on a channel the session never had) means
//! the connection cannot be proven clean: it is closed, not pooled.

use super::shared::Multiplex;
use super::state::Leftovers;
use super::upstream::{Failure, Upstream, Warm, describe, goodbye};
use crate::pool::keeper::{self, CLEAN_LIMIT, Idle};
use crate::pool::{Credentials, Fingerprint, Pool, Release};
use crate::proto::amqp::{Frame, FrameType, method};
use amq_protocol::protocol::{AMQPClass, channel, connection, queue};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A listener's pool of AMQP node connections, and the cluster's greeting that a client meets
/// when it may be served from the pool.
pub struct Pooling {
    pub pool: Arc<Pool<Warm>>,
    /// The listener's shared connections, with `multiplex = true`.
    pub shared: Option<Arc<Multiplex>>,
    greeting: Mutex<Option<Greeting>>,
}

/// What a node says before a client logs in: its connection.start (server properties,
/// mechanisms) and connection.tune. The latest node's, as every node of a cluster says much
/// the same.
#[derive(Clone, Debug)]
pub struct Greeting {
    pub start: connection::Start,
    pub tune: connection::Tune,
}

impl Pooling {
    pub fn new(pool: Arc<Pool<Warm>>, shared: Option<Arc<Multiplex>>) -> Pooling {
        Pooling {
            pool,
            shared,
            greeting: Mutex::new(None),
        }
    }

    /// The greeting for a client that may be served from the pool or a shared connection:
    /// `None` while there is neither (the client then meets a node's own, and a refusal where
    /// a broker gives it).
    pub fn greeting(&self) -> Option<Greeting> {
        let shared = self.shared.as_ref().is_some_and(|s| !s.is_empty());
        if self.pool.idle_count() == 0 && !shared {
            return None;
        }
        self.greeting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether a pooled or shared connection was logged in with `secret`: a client whose
    /// secret none was is sure to miss, and logs in on a node, where a wrong one is refused.
    pub fn knows_secret(&self, secret: &[u8]) -> bool {
        self.pool.knows_secret(secret)
            || (self.shared.as_ref()).is_some_and(|s| s.knows_secret(self.pool.gate(), secret))
    }

    /// Closes what is pooled, and the shared connections as their sessions leave.
    pub fn close(&self) {
        self.pool.close();
        if let Some(shared) = &self.shared {
            shared.close();
        }
    }

    pub fn remember(&self, greeting: Greeting) {
        *self.greeting.lock().unwrap_or_else(|e| e.into_inner()) = Some(greeting);
    }

    /// Cleans the connection of a session that ended and parks it, or closes it when it is too
    /// old or cannot be proven clean. Runs in the background: the client is gone already.
    pub fn release(
        self: &Arc<Self>,
        mut upstream: Upstream,
        leftovers: Leftovers,
        fingerprint: Fingerprint,
        span: tracing::Span,
    ) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if pool.expired(upstream.born) {
                pool.count_release(Release::Expired);
                if let Some((warm, _)) = upstream.into_warm() {
                    warm.close(false, "tether: connection reached its max_lifetime")
                        .await;
                }
                return;
            }
            let kept = leftovers.keep.clone();
            let cleaned = keeper::cleaned(
                tokio::time::timeout(CLEAN_LIMIT, clean(&mut upstream, leftovers)).await,
            );
            let Some((mut warm, node)) = upstream.into_warm() else {
                return;
            };
            warm.channels = kept;
            keeper::settle(pool, warm, node, fingerprint, cleaned, span).await;
        });
    }
}

/// What a client logs in with, as the pool compares it: the virtual host plainly, the rest
/// ([`login_secret`]) as a digest.
pub fn credentials(start_ok: &connection::StartOk, open: &connection::Open) -> Credentials {
    Credentials {
        public: open.virtual_host.to_string(),
        secret: login_secret(start_ok),
    }
}

/// What a client's connection.start-ok tells a node: the mechanism, its response (user and
/// password), the locale and the capabilities the client announced (a node tells a client
/// only what it said it understands).
pub fn login_secret(start_ok: &connection::StartOk) -> Vec<u8> {
    let capabilities = start_ok.client_properties.inner().get("capabilities");
    let capabilities = format!("{capabilities:?}");
    Credentials::secret_of([
        start_ok.mechanism.as_str().as_bytes(),
        start_ok.response.as_bytes(),
        start_ok.locale.as_str().as_bytes(),
        capabilities.as_bytes(),
    ])
}

/// Takes everything the last client left off the connection, or says why it cannot.
async fn clean(upstream: &mut Upstream, leftovers: Leftovers) -> Result<(), String> {
    let close = AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: 200,
        reply_text: "tether: client done".into(),
        class_id: 0,
        method_id: 0,
    }));
    let close_ok = AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}));
    for &id in &leftovers.close {
        upstream.send(id, &close);
    }
    for &id in &leftovers.close_ok {
        upstream.send(id, &close_ok);
    }
    upstream.writer.flush().await.map_err(|e| e.to_string())?;
    let mut waiting: BTreeSet<u16> = leftovers.close.iter().copied().collect();
    waiting.extend(&leftovers.closing);
    while !waiting.is_empty() {
        let frame = match upstream.reader.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the node closed the connection".into()),
        };
        let on = frame.channel;
        match frame.kind {
            FrameType::Heartbeat => continue,
            FrameType::Method if on != 0 => {}
            // A delivery's content, sent before the channel's close: dropped with it.
            _ if waiting.contains(&on) => continue,
            kind => return Err(format!("a {kind:?} frame on channel {on} while closing")),
        }
        let decoded = method::decode(&frame.payload).map_err(|e| e.to_string())?;
        match decoded {
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) if waiting.remove(&on) => {}
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) if waiting.remove(&on) => {
                // The node closed it as tether did: its close is answered, and it is closed.
                upstream.send(on, &close_ok);
                upstream.writer.flush().await.map_err(|e| e.to_string())?;
            }
            // What the node sent on the channel before it got the close.
            _ if waiting.contains(&on) => {}
            other => {
                return Err(format!(
                    "{} on channel {on} while closing",
                    describe(&other)
                ));
            }
        }
    }
    if !leftovers.queues.is_empty() {
        let kept: Vec<u16> = leftovers.keep.iter().map(|(id, _)| *id).collect();
        let top = match upstream.tune.channel_max {
            0 => u16::MAX,
            max => max,
        };
        let own = (1..=top).rev().find(|n| !kept.contains(n)).unwrap_or(top);
        delete_queues(upstream, own, &leftovers.queues).await?;
    }
    Ok(())
}

/// Deletes the queues that die with a connection, on a channel of tether's own. One that is
/// gone already (auto-deleted with its consumer) is fine.
async fn delete_queues(upstream: &mut Upstream, own: u16, queues: &[String]) -> Result<(), String> {
    let open = AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}));
    let failed = |failure: Failure| match failure {
        Failure::ChannelClosed(_, close) => format!("{} {}", close.reply_code, close.reply_text),
        Failure::Refused(close) => format!("{} {}", close.reply_code, close.reply_text),
        Failure::Broken(why) => why,
    };
    upstream.request(own, &open).await.map_err(failed)?;
    for name in queues {
        let delete = AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: name.as_str().into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        }));
        match upstream.request(own, &delete).await {
            Ok(_) => {}
            Err(Failure::ChannelClosed(_, close)) if close.reply_code == NOT_FOUND => {
                upstream.request(own, &open).await.map_err(failed)?;
            }
            Err(other) => return Err(format!("deleting queue {name}: {}", failed(other))),
        }
    }
    let close = AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: 200,
        reply_text: "".into(),
        class_id: 0,
        method_id: 0,
    }));
    match upstream.request(own, &close).await.map_err(failed)? {
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => Ok(()),
        other => Err(format!("{} instead of channel.close-ok", describe(&other))),
    }
}

const NOT_FOUND: u16 = 404;

impl Idle for Warm {
    fn born(&self) -> Instant {
        self.born
    }

    fn beat_due(&self) -> Option<Instant> {
        self.tune
            .heartbeat
            .map(|every| self.writer.last_write + every / 2)
    }

    fn silent_after(&self) -> Option<Instant> {
        self.tune
            .heartbeat
            .map(|every| self.reader.last_read + every * 3)
    }

    async fn next_is_beat(&mut self) -> bool {
        match self.reader.next().await {
            Some(Ok(frame)) if frame.kind == FrameType::Heartbeat => true,
            Some(Ok(frame)) => {
                self.node_closing = frame.kind == FrameType::Method
                    && matches!(
                        method::decode(&frame.payload),
                        Ok(AMQPClass::Connection(connection::AMQPMethod::Close(_)))
                    );
                false
            }
            _ => false,
        }
    }

    async fn beat(&mut self) -> bool {
        self.writer.queue(&Frame::heartbeat());
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.writer.flush()).await,
            Ok(Ok(()))
        )
    }

    async fn close(mut self, broken: bool, why: &str) {
        if !broken {
            return goodbye(&mut self.reader, &mut self.writer, why).await;
        }
        if self.node_closing {
            // The node closed it: its close is answered, so that it ends cleanly there.
            let close_ok =
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
            self.writer
                .queue(&Frame::method(0, method::encode(&close_ok)));
            let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.flush()).await;
        }
    }
}
