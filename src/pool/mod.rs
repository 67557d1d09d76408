//! Warm node connections for clients that connect per request. When a session ends cleanly its
//! node connection is cleaned (the protocol's business) and parked here; the next client with
//! the same credentials takes it, with no broker handshake.
//!
//! The pool holds no connection itself: each parked connection is kept by a task of its
//! protocol (the keeper), which answers the node's heart-beats, watches the node's health and
//! the pool's timeouts, and hands the connection over when a session takes it. The pool holds
//! a way to ask each keeper for its connection, and what choosing one needs: the credentials'
//! fingerprint, the node, when it was parked.
//!
//! - A take picks among the connections the credentials admit (see [`credentials`]) whose
//!   node is live, the node as the cluster's balancer would pick it, then the connection
//!   parked last on that node (the others are the first to time out).
//! - A park into a full pool evicts the connection idle the longest.
//! - Dropping a keeper's handle (eviction, the pool closed) tells the keeper to close.

pub mod credentials;
pub mod keeper;

use crate::cluster::Cluster;
use crate::cluster::node::Node;
use crate::config::PoolSettings;
use crate::metrics::names;
pub use credentials::{Credentials, Fingerprint, Gate};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Why an idle connection left the pool unused: the `reason` label of
/// `tether_pool_evictions_total`, a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// Unused for `idle_timeout`.
    IdleTimeout,
    /// Older than `max_lifetime`.
    MaxLifetime,
    /// Its node's endpoint went down.
    NodeDown,
    /// It broke: closed, reset, silent, or the node sent what an idle connection never gets.
    Broken,
    /// The pool was full and it had been idle the longest.
    Full,
    /// The pool closed (its listener stopped or was replaced).
    Closed,
}

impl Eviction {
    pub const ALL: [Eviction; 6] = [
        Eviction::IdleTimeout,
        Eviction::MaxLifetime,
        Eviction::NodeDown,
        Eviction::Broken,
        Eviction::Full,
        Eviction::Closed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Eviction::IdleTimeout => "idle_timeout",
            Eviction::MaxLifetime => "max_lifetime",
            Eviction::NodeDown => "node_down",
            Eviction::Broken => "broken",
            Eviction::Full => "full",
            Eviction::Closed => "closed",
        }
    }
}

/// What came of a session's node connection when the session ended: the `result` label of
/// `tether_pool_releases_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Cleaned and parked.
    Pooled,
    /// It could not be proven clean (or broke while cleaning): closed.
    Unclean,
    /// Older than `max_lifetime`: closed.
    Expired,
}

impl Release {
    pub fn label(self) -> &'static str {
        match self {
            Release::Pooled => "pooled",
            Release::Unclean => "unclean",
            Release::Expired => "expired",
        }
    }
}

pub struct Pool<T> {
    pub settings: PoolSettings,
    listener: String,
    endpoint: String,
    cluster: Arc<Cluster>,
    gate: Gate,
    idle: Mutex<Vec<Entry<T>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
}

struct Entry<T> {
    id: u64,
    fingerprint: Fingerprint,
    node: Arc<Node>,
    parked: Instant,
    /// The keeper's side hands the connection over on the sender it is sent; dropped, it tells
    /// the keeper to close.
    hand: oneshot::Sender<oneshot::Sender<T>>,
}

/// A keeper's side of a parked connection.
pub struct Parked<T> {
    pool: Arc<Pool<T>>,
    id: u64,
    taken: oneshot::Receiver<oneshot::Sender<T>>,
}

impl<T: Send + 'static> Pool<T> {
    pub fn new(
        settings: PoolSettings,
        listener: &str,
        endpoint: &str,
        cluster: Arc<Cluster>,
    ) -> Arc<Pool<T>> {
        Arc::new(Pool {
            settings,
            listener: listener.to_owned(),
            endpoint: endpoint.to_owned(),
            cluster,
            gate: Gate::default(),
            idle: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// What compares credentials with the fingerprints this pool (and the listener's shared
    /// connections) keep.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    pub fn fingerprint(&self, credentials: &Credentials) -> Fingerprint {
        self.gate.fingerprint(credentials)
    }

    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// Idle connections per node name, for `/status`.
    pub fn idle_by_node(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for entry in self.lock().iter() {
            *counts.entry(entry.node.name.clone()).or_default() += 1;
        }
        counts
    }

    /// Whether an idle connection was logged in with `secret` (for any public part): a client
    /// whose secret none was is sure to miss, whatever else it asks for.
    pub fn knows_secret(&self, secret: &[u8]) -> bool {
        self.lock()
            .iter()
            .any(|e| self.gate.admits_secret(secret, &e.fingerprint))
    }

    /// A warm connection logged in with `credentials` on a live node, and its node; `None`
    /// (a miss) when there is none.
    pub async fn take(&self, credentials: &Credentials) -> Option<(T, Arc<Node>)> {
        self.take_on(credentials, None).await
    }

    /// The same, on the node named `preferred` only, if one is named (a planned move's).
    pub async fn take_on(
        &self,
        credentials: &Credentials,
        preferred: Option<&str>,
    ) -> Option<(T, Arc<Node>)> {
        loop {
            let Some(entry) = self.choose(credentials, preferred) else {
                self.count_take("miss");
                return None;
            };
            let (reply, answer) = oneshot::channel();
            if entry.hand.send(reply).is_err() {
                continue; // its keeper is gone: it broke as it was chosen
            }
            if let Ok(connection) = answer.await {
                self.count_take("hit");
                return Some((connection, entry.node));
            }
        }
    }

    fn choose(&self, credentials: &Credentials, preferred: Option<&str>) -> Option<Entry<T>> {
        let mut idle = self.lock();
        let admitted: Vec<usize> = (0..idle.len())
            .filter(|&i| {
                preferred.is_none_or(|name| idle[i].node.name == name)
                    && idle[i].node.live_endpoint(&self.endpoint).is_some()
                    && self.gate.admits(credentials, &idle[i].fingerprint)
            })
            .collect();
        let mut nodes: Vec<&Arc<Node>> = Vec::new();
        for &i in &admitted {
            if !nodes.iter().any(|n| Arc::ptr_eq(n, &idle[i].node)) {
                nodes.push(&idle[i].node);
            }
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let node = self.cluster.pick_among(&nodes)?.clone();
        let latest = admitted
            .into_iter()
            .filter(|&i| Arc::ptr_eq(&idle[i].node, &node))
            .max_by_key(|&i| idle[i].parked)?;
        let entry = idle.swap_remove(latest);
        self.count_idle(&idle, &entry.node);
        Some(entry)
    }

    /// Parks a cleaned connection on `node`, logged in with what `fingerprint` was made of.
    /// `None` when the pool is closed or off: the caller closes the connection.
    pub fn park(self: &Arc<Self>, fingerprint: Fingerprint, node: &Arc<Node>) -> Option<Parked<T>> {
        if self.settings.max_idle == 0 || self.closed.load(Ordering::Acquire) {
            return None;
        }
        let (hand, taken) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut idle = self.lock();
        while idle.len() >= self.settings.max_idle {
            let Some(oldest) = (0..idle.len()).min_by_key(|&i| idle[i].parked) else {
                break;
            };
            let evicted = idle.swap_remove(oldest);
            self.count_idle(&idle, &evicted.node);
            self.count_eviction(Eviction::Full);
        }
        idle.push(Entry {
            id,
            fingerprint,
            node: node.clone(),
            parked: Instant::now(),
            hand,
        });
        self.count_idle(&idle, node);
        Some(Parked {
            pool: self.clone(),
            id,
            taken,
        })
    }

    /// Closes the pool: every keeper is told to close, and nothing is parked from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let evicted: Vec<Entry<T>> = self.lock().drain(..).collect();
        for entry in &evicted {
            self.count_eviction(Eviction::Closed);
            self.count_idle(&[], &entry.node);
        }
    }

    pub fn count_release(&self, release: Release) {
        metrics::counter!(names::POOL_RELEASES_TOTAL,
            "listener" => self.listener.clone(), "result" => release.label())
        .increment(1);
    }

    /// A session that found the pool empty and did not ask it (counted as a miss).
    pub fn count_miss(&self) {
        self.count_take("miss");
    }

    fn count_take(&self, result: &'static str) {
        metrics::counter!(names::POOL_TAKES_TOTAL,
            "listener" => self.listener.clone(), "result" => result)
        .increment(1);
    }

    fn count_eviction(&self, eviction: Eviction) {
        metrics::counter!(names::POOL_EVICTIONS_TOTAL,
            "listener" => self.listener.clone(), "reason" => eviction.label())
        .increment(1);
    }

    /// Sets `node`'s idle gauge from `idle` (called with the lock held, after a change).
    fn count_idle(&self, idle: &[Entry<T>], node: &Arc<Node>) {
        let count = idle.iter().filter(|e| Arc::ptr_eq(&e.node, node)).count();
        metrics::gauge!(names::POOL_IDLE,
            "listener" => self.listener.clone(), "node" => node.name.clone())
        .set(count as f64);
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry<T>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the entry out, if it is still in.
    fn remove(&self, id: u64) -> Option<Entry<T>> {
        let mut idle = self.lock();
        let index = idle.iter().position(|e| e.id == id)?;
        let entry = idle.swap_remove(index);
        self.count_idle(&idle, &entry.node);
        Some(entry)
    }
}

impl<T: Send + 'static> Parked<T> {
    /// Waits until a session takes the connection (`Some`: hand it over on the sender), or the
    /// pool evicts it (`None`: close it). Cancel-safe.
    pub async fn taken(&mut self) -> Option<oneshot::Sender<T>> {
        (&mut self.taken).await.ok()
    }

    /// The keeper gives the connection up for `why`.
    pub fn evict(self, why: Eviction) {
        if self.pool.remove(self.id).is_some() {
            self.pool.count_eviction(why);
        }
    }

    pub fn settings(&self) -> PoolSettings {
        self.pool.settings
    }

    /// The node endpoint the pool's connections go to.
    pub fn endpoint(&self) -> &str {
        &self.pool.endpoint
    }
}

impl<T> Drop for Parked<T> {
    fn drop(&mut self) {
        // A keeper that ends without saying why (it panicked, say) leaves no entry behind.
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(index) = idle.iter().position(|e| e.id == self.id) {
            idle.swap_remove(index);
        }
    }
}
