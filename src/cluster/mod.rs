//! A cluster: its node set (kept current by discovery sources), node health, and the choice of
//! a live node for each new upstream connection.
//!
//! The node set is published through an `ArcSwap`, so the connect path reads it without locks;
//! one topology task per cluster is its only writer.

pub mod balance;
pub mod connect;
pub mod discovery;
pub mod health;
pub mod node;
pub mod probe;
pub mod topology;

use crate::config::{ClusterConfig, HealthConfig, srv_service};
use arc_swap::ArcSwap;
use balance::Balancer;
use discovery::{SourceEvent, UpdateSender, dns};
use hickory_resolver::TokioResolver;
use node::{Node, NodeSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use topology::{MergedNode, Topology, Update};

pub use connect::{ConnectError, Upstream};

pub struct Cluster {
    pub name: Arc<str>,
    balancer: Balancer,
    health: HealthConfig,
    connect_timeout: Duration,
    /// Endpoint names some listener uses: only these are health-checked and picked.
    monitored: BTreeSet<String>,
    nodes: ArcSwap<Vec<Arc<Node>>>,
    /// Human descriptions of the discovery sources, for `tether check` and `/status`.
    pub sources: Vec<String>,
    ready: watch::Receiver<bool>,
    /// Kept so that the topology task's channel stays open for as long as the cluster lives.
    _updates: UpdateSender,
}

const STATIC_SOURCE: &str = "static";

impl Cluster {
    /// Starts the cluster's topology task and discovery sources. Static nodes are in place when
    /// this returns; discovered ones arrive as their sources report (see [`Cluster::ready`]).
    pub fn start(
        config: &ClusterConfig,
        monitored: BTreeSet<String>,
        resolver: Option<&TokioResolver>,
        shutdown: CancellationToken,
    ) -> Arc<Cluster> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let updates = UpdateSender(events_tx);
        let mut queries = Vec::new();
        for host in &config.hosts {
            queries.push(dns::Query::Host {
                host: host.clone(),
                ports: config.ports.clone(),
            });
        }
        if let Some(name) = &config.dns_srv {
            queries.push(dns::Query::Srv {
                name: name.clone(),
                service: srv_service(name).unwrap_or_default().to_string(),
                ports: config.ports.clone(),
            });
        }
        let mut sources = Vec::new();
        if !config.nodes.is_empty() {
            sources.push(format!("{STATIC_SOURCE} ({} nodes)", config.nodes.len()));
        }
        sources.extend(queries.iter().map(|q| q.source_id()));

        let (ready_tx, ready_rx) = watch::channel(queries.is_empty());
        let cluster = Arc::new(Cluster {
            name: config.name.as_str().into(),
            balancer: Balancer::new(config.balance),
            health: config.health.clone(),
            connect_timeout: config.connect_timeout,
            monitored,
            nodes: ArcSwap::from_pointee(Vec::new()),
            sources,
            ready: ready_rx,
            _updates: updates.clone(),
        });

        let mut topology = Topology::default();
        if !config.nodes.is_empty() {
            let specs = config
                .nodes
                .iter()
                .map(|n| NodeSpec {
                    name: n.name.clone(),
                    endpoints: n.endpoints.clone(),
                })
                .collect();
            topology.apply(STATIC_SOURCE, Update::Reset(specs));
            cluster.apply(topology.merged());
        }
        let pending: BTreeSet<String> = queries.iter().map(|q| q.source_id()).collect();
        for query in queries {
            let resolver = resolver
                .expect("a resolver is built whenever a cluster uses DNS")
                .clone();
            tokio::spawn(dns::run(resolver, query, updates.clone(), shutdown.clone()));
        }
        tokio::spawn(
            cluster
                .clone()
                .maintain(topology, events_rx, pending, ready_tx, shutdown),
        );
        cluster
    }

    /// Waits until every discovery source has reported once (or failed to), at most `limit`.
    pub async fn ready(&self, limit: Duration) -> bool {
        let mut ready = self.ready.clone();
        tokio::time::timeout(limit, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn nodes(&self) -> Arc<Vec<Arc<Node>>> {
        self.nodes.load_full()
    }

    pub fn balance(&self) -> crate::config::Balance {
        self.balancer.strategy()
    }

    pub fn health_settings(&self) -> &HealthConfig {
        &self.health
    }

    /// Applies source events until shutdown, then stops every node's health checks.
    async fn maintain(
        self: Arc<Self>,
        mut topology: Topology,
        mut events: mpsc::UnboundedReceiver<SourceEvent>,
        mut pending: BTreeSet<String>,
        ready: watch::Sender<bool>,
        shutdown: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = events.recv() => event,
            };
            let Some(mut event) = event else { break };
            // Apply everything already queued as one change.
            loop {
                match event {
                    SourceEvent::Update { source, update } => {
                        pending.remove(&source);
                        topology.apply(&source, update);
                    }
                    SourceEvent::FirstLookupFailed { source } => {
                        pending.remove(&source);
                    }
                }
                match events.try_recv() {
                    Ok(next) => event = next,
                    Err(_) => break,
                }
            }
            self.apply(topology.merged());
            if pending.is_empty() {
                ready.send_replace(true);
            }
        }
        for node in self.nodes.load().iter() {
            node.retire();
        }
    }

    /// Makes `merged` the node set: unchanged nodes keep their health and sessions, new or
    /// changed ones start with fresh health checks, vanished ones are retired.
    fn apply(&self, merged: BTreeMap<String, MergedNode>) {
        let current = self.nodes.load_full();
        let mut next = Vec::with_capacity(merged.len());
        for (name, merged) in merged {
            let existing = current.iter().find(|n| n.name == name);
            if let Some(node) = existing {
                if node.spec() == merged.spec {
                    node.set_sources(merged.sources);
                    next.push(node.clone());
                    continue;
                }
                tracing::info!(cluster = %self.name, node = %name, "node endpoints changed");
                node.retire();
            } else {
                let endpoints: Vec<String> = merged
                    .spec
                    .endpoints
                    .iter()
                    .map(|(e, a)| format!("{e}={a}"))
                    .collect();
                tracing::info!(cluster = %self.name, node = %name, sources = ?merged.sources,
                    endpoints = %endpoints.join(" "), "node added");
            }
            let first_source = merged.sources.first().cloned().unwrap_or_default();
            let node = Arc::new(Node::new(
                self.name.clone(),
                merged.spec,
                &self.monitored,
                &first_source,
            ));
            node.set_sources(merged.sources);
            for endpoint in node.endpoints.values().filter(|e| e.monitored) {
                tokio::spawn(health::run(
                    node.clone(),
                    endpoint.name.clone(),
                    self.health.clone(),
                ));
            }
            next.push(node);
        }
        for node in current.iter() {
            if !next.iter().any(|n| n.name == node.name) {
                tracing::info!(cluster = %self.name, node = %node.name, "node removed: no source lists it");
                node.retire();
            }
        }
        self.nodes.store(Arc::new(next));
    }
}
