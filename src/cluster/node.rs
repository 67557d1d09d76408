//! A broker node: its endpoints by protocol, each with its own health, and the count of
//! tether's sessions on it.

use crate::address::Address;
use crate::cluster::probe::CheckKind;
use crate::metrics::names;
use metrics::{Counter, Gauge};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What a discovery source says a node is: its name and endpoint addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub endpoints: BTreeMap<String, Address>,
}

pub struct Node {
    pub cluster: Arc<str>,
    pub name: String,
    pub endpoints: BTreeMap<String, Endpoint>,
    /// The discovery sources that currently list this node.
    sources: Mutex<BTreeSet<String>>,
    sessions: AtomicUsize,
    sessions_gauge: Gauge,
    connects: Counter,
    up_gauge: Gauge,
    /// Drained (see [`crate::cluster::Cluster::drain`]): healthy, but it takes no new sessions and its
    /// sessions move off. The cluster sets it from its drains, by name.
    drained: AtomicBool,
    drained_gauge: Gauge,
    /// Cancelled when the node leaves the topology: its health checks stop.
    pub retired: CancellationToken,
    /// Notified when an endpoint goes down (discovery re-reads the cluster then).
    failures: std::sync::OnceLock<Arc<Notify>>,
}

pub struct Endpoint {
    pub name: String,
    pub address: Address,
    pub check: CheckKind,
    /// Only endpoints some listener uses are health-checked; the others are never picked.
    pub monitored: bool,
    pub health: EndpointHealth,
}

/// The shared half of an endpoint's health: the health task and the connect path write it,
/// the balancer reads it without locking.
pub struct EndpointHealth {
    up: AtomicBool,
    last_change: Mutex<HealthChange>,
    /// Wakes the health task when a connect failure took the endpoint down, so that it starts
    /// probing for the endpoint's return straight away.
    pub(crate) passive_down: Notify,
    /// Wakes the health task for one check at once: a session saw something that may be the
    /// node's fault or its own alone (see [`crate::cluster::Cluster::node_suspect`]).
    pub(crate) suspect: Notify,
    /// Why the endpoint is suspect, until its check says.
    suspected: Mutex<Option<String>>,
    up_gauge: Gauge,
}

#[derive(Clone, Debug)]
pub struct HealthChange {
    pub at: SystemTime,
    pub reason: String,
}

impl Node {
    pub fn new(
        cluster: Arc<str>,
        spec: NodeSpec,
        monitored: &BTreeSet<String>,
        source: &str,
    ) -> Node {
        let endpoints = spec
            .endpoints
            .into_iter()
            .map(|(name, address)| {
                let up_gauge = metrics::gauge!(names::ENDPOINT_UP,
                    "cluster" => cluster.to_string(), "node" => spec.name.clone(), "endpoint" => name.clone());
                up_gauge.set(1.0);
                let endpoint = Endpoint {
                    check: CheckKind::for_endpoint(&name),
                    monitored: monitored.contains(&name),
                    address,
                    health: EndpointHealth {
                        up: AtomicBool::new(true),
                        last_change: Mutex::new(HealthChange {
                            at: SystemTime::now(),
                            reason: "discovered".into(),
                        }),
                        passive_down: Notify::new(),
                        suspect: Notify::new(),
                        suspected: Mutex::new(None),
                        up_gauge,
                    },
                    name: name.clone(),
                };
                (name, endpoint)
            })
            .collect();
        let labels = [
            ("cluster", cluster.to_string()),
            ("node", spec.name.clone()),
        ];
        let up_gauge = metrics::gauge!(names::NODE_UP, &labels);
        up_gauge.set(1.0);
        let drained_gauge = metrics::gauge!(names::NODE_DRAINED, &labels);
        drained_gauge.set(0.0);
        // Moved with increment/decrement, never set: a node replaced under the same name shares
        // this series with the sessions still running on its predecessor.
        let sessions_gauge = metrics::gauge!(names::UPSTREAM_SESSIONS, &labels);
        let connects = metrics::counter!(names::UPSTREAM_CONNECTS_TOTAL, &labels);
        // Every failure reason is exported from the start (at 0), so that a rate over it is 0
        // rather than no data until the first failure.
        for reason in crate::cluster::connect::FailureReason::ALL {
            metrics::counter!(names::CONNECT_FAILURES_TOTAL,
                "cluster" => cluster.to_string(), "node" => spec.name.clone(), "reason" => reason.label())
            .increment(0);
        }
        Node {
            cluster,
            name: spec.name,
            endpoints,
            sources: Mutex::new(BTreeSet::from([source.to_string()])),
            sessions: AtomicUsize::new(0),
            sessions_gauge,
            connects,
            up_gauge,
            drained: AtomicBool::new(false),
            drained_gauge,
            retired: CancellationToken::new(),
            failures: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn report_failures_to(&self, failures: Arc<Notify>) {
        let _ = self.failures.set(failures);
    }

    pub fn spec(&self) -> NodeSpec {
        NodeSpec {
            name: self.name.clone(),
            endpoints: self
                .endpoints
                .iter()
                .map(|(name, e)| (name.clone(), e.address.clone()))
                .collect(),
        }
    }

    /// The endpoint if it exists, is used by a listener and is up, and the node is not
    /// drained: whether a new session may go there.
    pub fn live_endpoint(&self, endpoint: &str) -> Option<&Endpoint> {
        if self.is_drained() {
            return None;
        }
        self.endpoints
            .get(endpoint)
            .filter(|e| e.monitored && e.health.is_up())
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Acquire)
    }

    pub(crate) fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Release);
        self.drained_gauge.set(if drained { 1.0 } else { 0.0 });
    }

    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    pub fn sources(&self) -> BTreeSet<String> {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_sources(&self, sources: BTreeSet<String>) {
        *self.sources.lock().unwrap_or_else(|e| e.into_inner()) = sources;
    }

    /// Marks an endpoint up or down; returns whether that changed anything. The caller that
    /// made the change logs it, so each transition is logged once.
    pub fn set_endpoint_health(&self, endpoint: &Endpoint, up: bool, reason: &str) -> bool {
        let changed = endpoint.health.up.swap(up, Ordering::AcqRel) != up;
        if changed {
            *endpoint
                .health
                .last_change
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = HealthChange {
                at: SystemTime::now(),
                reason: reason.to_string(),
            };
            endpoint.health.up_gauge.set(if up { 1.0 } else { 0.0 });
            self.up_gauge.set(if self.is_up() { 1.0 } else { 0.0 });
            if up {
                tracing::info!(cluster = %self.cluster, node = %self.name, endpoint = %endpoint.name,
                    address = %endpoint.address, %reason, "endpoint up");
            } else {
                tracing::warn!(cluster = %self.cluster, node = %self.name, endpoint = %endpoint.name,
                    address = %endpoint.address, %reason, "endpoint down");
                if let Some(failures) = self.failures.get() {
                    failures.notify_waiters();
                }
            }
        }
        changed
    }

    /// A node is up when every endpoint a listener uses is up.
    pub fn is_up(&self) -> bool {
        self.endpoints
            .values()
            .filter(|e| e.monitored)
            .all(|e| e.health.is_up())
    }

    /// Counts a session against this node until the lease is dropped. Taken before the
    /// connection is made, so that least-connections sees concurrent connects.
    pub fn lease(self: &Arc<Self>) -> SessionLease {
        self.sessions.fetch_add(1, Ordering::AcqRel);
        self.sessions_gauge.increment(1.0);
        SessionLease { node: self.clone() }
    }

    /// Counts a connection made to this node.
    pub fn count_connect(&self) {
        self.connects.increment(1);
    }

    /// Stops this node's health checks and reports it as not up, for a node that left the
    /// topology.
    pub(crate) fn retire(&self) {
        self.retired.cancel();
        self.up_gauge.set(0.0);
        for endpoint in self.endpoints.values() {
            endpoint.health.up_gauge.set(0.0);
        }
    }
}

impl EndpointHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Why the endpoint is suspect, while it waits for its check.
    pub fn suspected(&self) -> Option<String> {
        self.suspected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes the endpoint suspect for `why`; `false` if it is suspect already or down (its
    /// health task is on it either way).
    pub(crate) fn suspect(&self, why: &str) -> bool {
        if !self.is_up() {
            return false;
        }
        let mut suspected = self.suspected.lock().unwrap_or_else(|e| e.into_inner());
        if suspected.is_some() {
            return false;
        }
        *suspected = Some(why.to_owned());
        true
    }

    /// The suspicion's cause, taken: its check is done.
    pub(crate) fn clear_suspicion(&self) -> Option<String> {
        self.suspected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    pub fn last_change(&self) -> HealthChange {
        self.last_change
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One session's claim on a node; see [`Node::lease`].
pub struct SessionLease {
    node: Arc<Node>,
}

impl SessionLease {
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        self.node.sessions.fetch_sub(1, Ordering::AcqRel);
        self.node.sessions_gauge.decrement(1.0);
    }
}
