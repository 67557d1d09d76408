//! Multiplexing (`pool = { multiplex = true }`): the sessions of clients that log in with the
//! same credentials share a few node connections, their channel numbers remapped, so that a
//! host holding a thousand client connections costs the broker a handful.
//!
//! Each shared connection is a task of its own ([`connection`]) that owns the socket; a
//! session's link to it ([`member`]) reads and writes frames like a connection of its own
//! (see [`super::link`]), so the session, its replay and its failover are the same code either
//! way. What differs:
//!
//! - A session joins a shared connection that its credentials logged in (compared as
//!   [`crate::pool`] compares them) on a live node, the node picked by the balancer among those
//!   that have one with room, the fullest connection there. With none, a new connection is
//!   logged in with the client's credentials (so a wrong password meets the broker's refusal)
//!   and shared from then on.
//! - A connection takes sessions while its channels (a session with none counts as one) are
//!   fewer than `channels_per_connection`.
//! - When a session leaves, its channels are closed on the node (its consumers cancelled, its
//!   unacked deliveries requeued) and its exclusive and server-named queues deleted: they
//!   would otherwise live as long as the shared connection.
//! - When a shared connection fails, every session on it fails over, each as it would alone.
//! - A session whose client reads too slowly, or that finds no channel left, is moved onto a
//!   connection of its own (`reason="unshared"`), so that it never holds the others back.
//!
//! What sharing gives up: an exclusive queue is exclusive to the shared connection, so the
//! other sessions of the same credentials on it could use it while its owner is connected.

pub mod connection;
pub mod member;
mod table;

use super::link::{NodeReader, NodeWriter};
use super::upstream::{NodeTune, Upstream, goodbye};
use crate::cluster::Cluster;
use crate::cluster::node::Node;
use crate::config::PoolSettings;
use crate::metrics::names;
use crate::pool::{Credentials, Fingerprint, Gate};
use member::{Batch, Control};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Batches of frames from member sessions waiting for the connection's task: when the node
/// reads slowly, sessions wait here, and then stop reading their clients.
const BATCHES: usize = 64;

/// The registry's handle on one shared connection.
pub struct Shared {
    pub node: Arc<Node>,
    fingerprint: Fingerprint,
    pub tune: NodeTune,
    pub born: Instant,
    /// How full it is (see [`table::Table::load`]), as its task last saw it.
    load: AtomicUsize,
    /// Sessions that chose it and whose join its task has not seen yet.
    joining: AtomicUsize,
    /// The node sent connection.blocked: it reads nothing from this connection until it
    /// unblocks, so no new session joins it meanwhile.
    blocked: AtomicBool,
    control: mpsc::UnboundedSender<Control>,
    data: mpsc::Sender<Batch>,
}

/// A listener's shared node connections.
pub struct Multiplex {
    listener: String,
    endpoint: String,
    cluster: Arc<Cluster>,
    capacity: usize,
    idle_timeout: Duration,
    max_lifetime: Duration,
    connections: Mutex<Vec<Arc<Shared>>>,
    /// Held while a new connection is made for sessions that found none, so that a burst of
    /// them (a failover of a shared connection's sessions, say) makes one, not one each.
    creating: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    next_member: AtomicU64,
}

impl Multiplex {
    pub fn new(
        settings: &PoolSettings,
        listener: &str,
        endpoint: &str,
        cluster: Arc<Cluster>,
    ) -> Arc<Multiplex> {
        Arc::new(Multiplex {
            listener: listener.to_owned(),
            endpoint: endpoint.to_owned(),
            cluster,
            capacity: settings.channels_per_connection,
            idle_timeout: settings.idle_timeout,
            max_lifetime: settings.max_lifetime,
            connections: Mutex::new(Vec::new()),
            creating: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            next_member: AtomicU64::new(0),
        })
    }

    /// Whether a shared connection was logged in with `secret`.
    pub fn knows_secret(&self, gate: &Gate, secret: &[u8]) -> bool {
        (self.lock().iter()).any(|s| gate.admits_secret(secret, &s.fingerprint))
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Shared connections and their sessions' channels (their load), per node, for `/status`.
    pub fn by_node(&self) -> BTreeMap<String, (usize, usize)> {
        let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for shared in self.lock().iter() {
            let entry = counts.entry(shared.node.name.clone()).or_default();
            entry.0 += 1;
            entry.1 += shared.load.load(Ordering::Acquire);
        }
        counts
    }

    /// A link on a shared connection that `credentials` logged in (on `preferred`, if named),
    /// or, with none with room, on a new one that `fresh` logs in.
    pub async fn attach<F, Fut, E>(
        self: &Arc<Self>,
        gate: &Gate,
        credentials: &Credentials,
        preferred: Option<&str>,
        fresh: F,
    ) -> Result<Upstream, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Upstream, E>>,
    {
        let admits = |fingerprint: &Fingerprint| gate.admits(credentials, fingerprint);
        if let Some(upstream) = self.join(&admits, preferred) {
            return Ok(upstream);
        }
        let _creating = self.creating.lock().await;
        if let Some(upstream) = self.join(&admits, preferred) {
            return Ok(upstream);
        }
        let own = fresh().await?;
        Ok(self.share(own, gate.fingerprint(credentials)))
    }

    /// Makes a connection of its own that `fingerprint`'s credentials logged in a shared one,
    /// and returns the session's link on it; or, when a shared connection of the same
    /// credentials on the same node has room, joins that one and closes this.
    pub fn share(self: &Arc<Self>, upstream: Upstream, fingerprint: Fingerprint) -> Upstream {
        let node = upstream.node().clone();
        let same = |other: &Fingerprint| other.same(&fingerprint);
        if let Some(joined) = self.join(&same, Some(&node.name)) {
            let Upstream { reader, writer, .. } = upstream;
            if let (NodeReader::Own(mut reader), NodeWriter::Own(mut writer)) = (reader, writer) {
                tokio::spawn(async move {
                    goodbye(
                        &mut reader,
                        &mut writer,
                        "tether: sharing another connection",
                    )
                    .await
                });
            }
            return joined;
        }
        let Upstream {
            reader,
            writer,
            lease,
            tune,
            born,
        } = upstream;
        let (reader, writer) = match (reader, writer) {
            (NodeReader::Own(reader), NodeWriter::Own(writer)) => (reader, writer),
            // Shared already: nothing to do.
            (reader, writer) => {
                return Upstream {
                    reader,
                    writer,
                    lease,
                    tune,
                    born,
                };
            }
        };
        drop(lease);
        let (control, control_rx) = mpsc::unbounded_channel();
        let (data, data_rx) = mpsc::channel(BATCHES);
        let shared = Arc::new(Shared {
            node: node.clone(),
            fingerprint,
            tune,
            born,
            load: AtomicUsize::new(0),
            joining: AtomicUsize::new(1),
            blocked: AtomicBool::new(false),
            control,
            data,
        });
        self.lock().push(shared.clone());
        self.count_connections(&node, 1.0);
        tracing::debug!(node = %node.name, listener = %self.listener, "node connection shared");
        let task = connection::Connection {
            shared: shared.clone(),
            multiplex: self.clone(),
            reader,
            writer,
            control: control_rx,
            data: data_rx,
        };
        tokio::spawn(task.run());
        self.member_of(&shared)
    }

    /// Closes idle shared connections now, and the others when their last session leaves.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for shared in self.lock().iter() {
            let _ = shared.control.send(Control::Wake);
        }
    }

    /// A connection older than `max_lifetime` takes no more sessions (the ones on it stay): it
    /// bounds how long a password changed on the broker still admits new clients. Once its
    /// last session leaves it closes.
    fn expired(&self, shared: &Shared) -> bool {
        shared.born.elapsed() >= self.max_lifetime
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// A link on the fullest connection with room that `admits` admits, on the node the
    /// balancer picks among those that have one (`preferred` only, if named).
    fn join(
        &self,
        admits: &dyn Fn(&Fingerprint) -> bool,
        preferred: Option<&str>,
    ) -> Option<Upstream> {
        if self.is_closed() {
            return None;
        }
        let chosen = {
            let connections = self.lock();
            let open: Vec<&Arc<Shared>> = (connections.iter())
                .filter(|s| {
                    preferred.is_none_or(|name| s.node.name == name)
                        && !s.control.is_closed()
                        && !s.blocked.load(Ordering::Acquire)
                        && !self.expired(s)
                        && s.load.load(Ordering::Acquire) + s.joining.load(Ordering::Acquire)
                            < self.capacity
                        && s.node.live_endpoint(&self.endpoint).is_some()
                        && admits(&s.fingerprint)
                })
                .collect();
            let mut nodes: Vec<&Arc<Node>> = Vec::new();
            for shared in &open {
                if !nodes.iter().any(|n| Arc::ptr_eq(n, &shared.node)) {
                    nodes.push(&shared.node);
                }
            }
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            let node = self.cluster.pick_among(&nodes)?.clone();
            let chosen = (open.into_iter())
                .filter(|s| Arc::ptr_eq(&s.node, &node))
                .max_by_key(|s| s.load.load(Ordering::Acquire))?
                .clone();
            // Under the lock, so that the connection cannot retire before this join is seen.
            chosen.joining.fetch_add(1, Ordering::AcqRel);
            chosen
        };
        Some(self.member_of(&chosen))
    }

    /// A new member of `shared` (its join counted already).
    fn member_of(&self, shared: &Arc<Shared>) -> Upstream {
        let id = self.next_member.fetch_add(1, Ordering::Relaxed);
        let (inbox, outbox, port) = member::pair(id, shared.data.clone(), shared.control.clone());
        // A connection that failed meanwhile drops the join: the session then fails over.
        let _ = shared.control.send(Control::Join(id, port));
        Upstream {
            reader: NodeReader::Shared(inbox),
            writer: NodeWriter::Shared(outbox),
            lease: shared.node.lease(),
            tune: NodeTune {
                heartbeat: None, // the shared connection's own business
                ..shared.tune
            },
            born: shared.born,
        }
    }

    /// Takes a connection out of the registry: `false` if it was not in, or (unless `force`) a
    /// session is on its way to it.
    fn retire(&self, shared: &Arc<Shared>, force: bool) -> bool {
        let mut connections = self.lock();
        if !force && shared.joining.load(Ordering::Acquire) > 0 {
            return false;
        }
        let Some(index) = connections.iter().position(|s| Arc::ptr_eq(s, shared)) else {
            return false;
        };
        connections.swap_remove(index);
        drop(connections);
        self.count_connections(&shared.node, -1.0);
        true
    }

    fn count_connections(&self, node: &Node, delta: f64) {
        metrics::gauge!(names::POOL_SHARED_CONNECTIONS,
            "listener" => self.listener.clone(), "node" => node.name.clone())
        .increment(delta);
    }

    fn count_clients(&self, node: &Node, delta: f64) {
        metrics::gauge!(names::POOL_SHARED_CLIENTS,
            "listener" => self.listener.clone(), "node" => node.name.clone())
        .increment(delta);
    }

    fn count_unshared(&self, why: &'static str) {
        metrics::counter!(names::POOL_UNSHARED_TOTAL,
            "listener" => self.listener.clone(), "reason" => why)
        .increment(1);
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Shared>>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}
