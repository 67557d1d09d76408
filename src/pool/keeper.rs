//! What becomes of a session's node connection once it has been cleaned, and how an idle one is
//! kept: the same for every protocol, which supplies the connection's few idle moves
//! ([`Idle`]).

use super::{Eviction, Fingerprint, Parked, Pool, Release};
use crate::cluster::node::Node;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long cleaning a connection may take before it is closed instead.
pub const CLEAN_LIMIT: Duration = Duration::from_secs(5);
/// How often an idle connection looks at its node's health.
const HEALTH_LOOK: Duration = Duration::from_millis(500);

/// A protocol's idle node connection.
pub trait Idle: Send + Sized + 'static {
    /// When the connection was made.
    fn born(&self) -> Instant;
    /// When tether must send the node a heart-beat next, if it sends any.
    fn beat_due(&self) -> Option<Instant>;
    /// When the node's silence would mean it is gone, if it heart-beats.
    fn silent_after(&self) -> Option<Instant>;
    /// Reads what the node sends: `true` for a heart-beat; `false` for anything else, which an
    /// idle connection never gets (the node closing it, say: answered here).
    fn next_is_beat(&mut self) -> impl Future<Output = bool> + Send;
    /// Sends a heart-beat; `false` when it could not be written.
    fn beat(&mut self) -> impl Future<Output = bool> + Send;
    /// Closes the connection (`broken`: it is gone or closing already, only let go of it).
    fn close(self, broken: bool, why: &str) -> impl Future<Output = ()> + Send;
}

impl<T: Idle> Pool<T> {
    /// Whether a connection made at `born` is too old to be pooled again.
    pub fn expired(&self, born: Instant) -> bool {
        born.elapsed() >= self.settings.max_lifetime
    }
}

/// How cleaning a connection went, within [`CLEAN_LIMIT`].
pub fn cleaned<E: std::fmt::Display>(
    outcome: Result<Result<(), E>, tokio::time::error::Elapsed>,
) -> Result<(), String> {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(why.to_string()),
        Err(_) => Err(format!("not clean within {}s", CLEAN_LIMIT.as_secs())),
    }
}

/// Parks a connection that was cleaned (and keeps it until it is taken or evicted), or closes
/// one that could not be; counted either way.
pub async fn settle<T: Idle>(
    pool: Arc<Pool<T>>,
    warm: T,
    node: Arc<Node>,
    fingerprint: Fingerprint,
    cleaned: Result<(), String>,
    span: tracing::Span,
) {
    if let Err(why) = cleaned {
        tracing::debug!(parent: &span, node = %node.name, %why, "node connection not pooled");
        pool.count_release(Release::Unclean);
        return warm.close(false, "tether: connection not reusable").await;
    }
    match pool.park(fingerprint, &node) {
        Some(parked) => {
            pool.count_release(Release::Pooled);
            keep(warm, parked, node).await;
        }
        None => warm.close(false, "tether: pool closed").await,
    }
}

/// Keeps an idle connection until a session takes it or it has to go: heart-beats sent and
/// watched, its node's health looked at, the pool's timeouts kept.
async fn keep<T: Idle>(mut warm: T, mut parked: Parked<T>, node: Arc<Node>) {
    let settings = parked.settings();
    let endpoint = parked.endpoint().to_owned();
    let idle_until = Instant::now() + settings.idle_timeout;
    let dies_at = warm.born() + settings.max_lifetime;
    let mut health = tokio::time::interval(HEALTH_LOOK);
    let eviction = loop {
        let (beat_due, silent_after) = (warm.beat_due(), warm.silent_after());
        tokio::select! {
            taken = parked.taken() => match taken {
                Some(hand) => {
                    if let Err(warm) = hand.send(warm) {
                        warm.close(false, "tether: pool closed").await; // the session went meanwhile
                    }
                    return;
                }
                // Evicted by the pool (full, or closed): counted there.
                None => return warm.close(false, "tether: pool closed").await,
            },
            beat = warm.next_is_beat() => if !beat {
                break Eviction::Broken;
            },
            _ = crate::session::io::timer(beat_due) => if !warm.beat().await {
                break Eviction::Broken;
            },
            _ = crate::session::io::timer(silent_after) => break Eviction::Broken,
            _ = tokio::time::sleep_until(idle_until) => break Eviction::IdleTimeout,
            _ = tokio::time::sleep_until(dies_at) => break Eviction::MaxLifetime,
            _ = health.tick() => if node.live_endpoint(&endpoint).is_none() {
                break Eviction::NodeDown;
            },
        }
    };
    parked.evict(eviction);
    let why = format!("tether: idle connection closed ({})", eviction.label());
    warm.close(eviction == Eviction::Broken, &why).await;
}
