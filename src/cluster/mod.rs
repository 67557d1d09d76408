//! A cluster: its node set (kept current by discovery sources), node health, and the choice of
//! a live node for each new upstream connection.
//!
//! The node set is published through an `ArcSwap`, so the connect path reads it without locks;
//! one topology task per cluster is its only writer.

pub mod balance;
pub mod connect;
pub mod discovery;
pub mod ejection;
pub mod health;
pub mod leaders;
pub mod node;
pub mod probe;
pub mod topology;

use crate::config::{
    ActiveMqDiscovery, ClusterConfig, HealthConfig, RabbitMqDiscovery, srv_service,
};
use crate::metrics::names;
use crate::tls::{Connector, Swappable};
use arc_swap::ArcSwap;
use balance::Balancer;
use discovery::{SourceEvent, UpdateSender, activemq, dns, rabbitmq};
use hickory_resolver::TokioResolver;
use node::{Node, NodeSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use topology::{MergedNode, Topology, Update};

pub use connect::{ConnectError, Upstream};

pub struct Cluster {
    pub name: Arc<str>,
    /// Balance strategy and connect timeout; swapped whole by a reload.
    settings: ArcSwap<Settings>,
    /// Every health task watches this, so a reload changes intervals and rise/fall in place.
    health: watch::Sender<HealthConfig>,
    /// Endpoint names some listener uses: only these are health-checked and picked.
    monitored: ArcSwap<BTreeSet<String>>,
    nodes: ArcSwap<Vec<Arc<Node>>>,
    /// Human descriptions of the discovery sources, for `tether check` and `/status`.
    sources: ArcSwap<Vec<String>>,
    /// The running discovery sources by source id, so a reload can stop the ones it drops.
    running_sources: Mutex<BTreeMap<String, (Source, CancellationToken)>>,
    /// Notified whenever a node endpoint goes down: discovery sources that poll re-read then.
    failures: Arc<tokio::sync::Notify>,
    ready: watch::Receiver<bool>,
    updates: UpdateSender,
    /// Cancelled when the cluster stops (shutdown, or a reload that drops it).
    stop: CancellationToken,
    /// How nodes are dialled over TLS (`None`: plain TCP); a reload swaps it when the
    /// certificates change. Sessions, health checks and discovery all read it here.
    tls: Swappable<Connector>,
    /// Woken when a broker asks its clients to rebalance (ActiveMQ's rebalanceConnection,
    /// reconnectTo): the rebalancing planners look at once.
    pub rebalance_hint: tokio::sync::Notify,
    /// The nodes an operator drained (`tether drain`), by name, so that a node discovery
    /// replaces, or that leaves and comes back, stays drained: such a node takes no new
    /// sessions, and the planners move its sessions off (see [`crate::rebalance`]).
    drained: Mutex<BTreeSet<String>>,
    /// Where each queue lives, read by RabbitMQ discovery while `locality` is on.
    pub leaders: Arc<leaders::QueueLeaders>,
}

/// `tether drain` named a node the cluster does not know.
#[derive(Debug, thiserror::Error)]
#[error("cluster {cluster} has no node {node:?} (its nodes: {known})")]
pub struct UnknownNode {
    pub cluster: String,
    pub node: String,
    pub known: String,
}

struct Settings {
    balancer: Balancer,
    connect_timeout: Duration,
    max_passive_ejection: f64,
}

impl Settings {
    fn of(config: &ClusterConfig) -> Settings {
        Settings {
            balancer: Balancer::new(config.balance),
            connect_timeout: config.connect_timeout,
            max_passive_ejection: config.max_passive_ejection,
        }
    }
}

use topology::STATIC_SOURCE;

/// How often `tether_nodes` is recounted (health changes between topology updates).
const NODE_STATE_REFRESH: Duration = Duration::from_secs(1);

/// `tether_nodes{cluster,state}`: how many nodes of the cluster are up and down.
struct NodeStates {
    up: metrics::Gauge,
    down: metrics::Gauge,
}

impl NodeStates {
    fn new(cluster: &str) -> NodeStates {
        let gauge = |state: &'static str| metrics::gauge!(names::NODES, "cluster" => cluster.to_string(), "state" => state);
        NodeStates {
            up: gauge("up"),
            down: gauge("down"),
        }
    }

    fn count(&self, nodes: &[Arc<Node>]) {
        let up = nodes.iter().filter(|n| n.is_up()).count();
        self.up.set(up as f64);
        self.down.set((nodes.len() - up) as f64);
    }
}

/// A discovery source other than the static nodes, as configured.
#[derive(Clone, Debug, PartialEq)]
enum Source {
    Dns(dns::Query),
    RabbitMq(RabbitMqDiscovery),
    ActiveMq {
        config: ActiveMqDiscovery,
        ports: BTreeMap<String, u16>,
        /// Over TLS: a reload that turns `tls` on or off restarts the source.
        tls: bool,
    },
}

impl Source {
    fn id(&self) -> String {
        match self {
            Source::Dns(query) => query.source_id(),
            Source::RabbitMq(config) => rabbitmq::source_id(config),
            Source::ActiveMq { config, .. } => activemq::source_id(config),
        }
    }
}

/// The discovery sources a cluster's configuration asks for.
fn configured_sources(config: &ClusterConfig) -> Vec<Source> {
    let mut sources = Vec::new();
    for host in &config.hosts {
        sources.push(Source::Dns(dns::Query::Host {
            host: host.clone(),
            ports: config.ports.clone(),
        }));
    }
    if let Some(name) = &config.dns_srv {
        sources.push(Source::Dns(dns::Query::Srv {
            name: name.clone(),
            service: srv_service(name).unwrap_or_default().to_string(),
            ports: config.ports.clone(),
        }));
    }
    if let Some(rabbitmq) = &config.discovery.rabbitmq {
        sources.push(Source::RabbitMq(rabbitmq.clone()));
    }
    if let Some(activemq) = &config.discovery.activemq {
        sources.push(Source::ActiveMq {
            config: activemq.clone(),
            ports: config.ports.clone(),
            tls: config.tls.is_some(),
        });
    }
    sources
}

fn source_descriptions(config: &ClusterConfig, sources: &[Source]) -> Vec<String> {
    let mut descriptions = Vec::new();
    if !config.nodes.is_empty() {
        descriptions.push(format!("{STATIC_SOURCE} ({} nodes)", config.nodes.len()));
    }
    descriptions.extend(sources.iter().map(Source::id));
    descriptions
}

fn static_nodes(config: &ClusterConfig) -> Vec<NodeSpec> {
    config
        .nodes
        .iter()
        .map(|n| NodeSpec {
            name: n.name.clone(),
            endpoints: n.endpoints.clone(),
        })
        .collect()
}

impl Cluster {
    /// Starts the cluster's topology task and discovery sources. Static nodes are in place when
    /// this returns; discovered ones arrive as their sources report (see [`Cluster::ready`]).
    pub fn start(
        config: &ClusterConfig,
        tls: Option<Arc<Connector>>,
        monitored: BTreeSet<String>,
        resolver: Option<&TokioResolver>,
        shutdown: &CancellationToken,
    ) -> Arc<Cluster> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let updates = UpdateSender(events_tx);
        let sources = configured_sources(config);
        let (ready_tx, ready_rx) = watch::channel(sources.is_empty());
        let (health, _) = watch::channel(config.health.clone());
        let leaders: Arc<leaders::QueueLeaders> = Arc::default();
        leaders.set_enabled(config.locality);
        let cluster = Arc::new(Cluster {
            name: config.name.as_str().into(),
            settings: ArcSwap::from_pointee(Settings::of(config)),
            rebalance_hint: tokio::sync::Notify::new(),
            drained: Mutex::new(BTreeSet::new()),
            leaders,
            tls: Arc::new(arc_swap::ArcSwapOption::new(tls)),
            health,
            monitored: ArcSwap::from_pointee(monitored),
            nodes: ArcSwap::from_pointee(Vec::new()),
            sources: ArcSwap::from_pointee(source_descriptions(config, &sources)),
            running_sources: Mutex::new(BTreeMap::new()),
            failures: Arc::new(tokio::sync::Notify::new()),
            ready: ready_rx,
            updates,
            stop: shutdown.child_token(),
        });

        let mut topology = Topology::default();
        if !config.nodes.is_empty() {
            topology.apply(STATIC_SOURCE, Update::Reset(static_nodes(config)));
            metrics::counter!(names::TOPOLOGY_UPDATES_TOTAL,
                "cluster" => config.name.clone(), "source" => STATIC_SOURCE)
            .increment(1);
            cluster.apply(topology.merged(), false);
        }
        let pending: BTreeSet<String> = sources.iter().map(Source::id).collect();
        for source in sources {
            cluster.start_source(source, resolver);
        }
        tokio::spawn(
            cluster
                .clone()
                .maintain(topology, events_rx, pending, ready_tx),
        );
        cluster
    }

    fn start_source(&self, source: Source, resolver: Option<&TokioResolver>) {
        let cancel = self.stop.child_token();
        let updates = self.updates.clone();
        match source.clone() {
            Source::Dns(query) => {
                let resolver = resolver
                    .expect("a resolver is built whenever a cluster uses DNS")
                    .clone();
                tokio::spawn(dns::run(resolver, query, updates, cancel.clone()));
            }
            Source::RabbitMq(config) => {
                tokio::spawn(rabbitmq::run(
                    config,
                    self.tls.clone(),
                    updates,
                    self.failures.clone(),
                    self.leaders.clone(),
                    cancel.clone(),
                ));
            }
            Source::ActiveMq { config, ports, .. } => {
                tokio::spawn(activemq::run(
                    config,
                    ports,
                    self.tls.clone(),
                    updates,
                    cancel.clone(),
                ));
            }
        }
        self.running_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.id(), (source, cancel));
    }

    /// Applies a reloaded configuration of this cluster in place: balance, connect timeout and
    /// health settings change for every session and health check at once; static nodes and DNS
    /// sources are replaced, so nodes that stay keep their health and sessions, new ones are
    /// checked before they get sessions, and dropped ones get no new sessions (their sessions
    /// run on until they end). `resolver` is set when DNS settings changed: then every DNS
    /// source starts again with it.
    pub fn reconfigure(
        &self,
        config: &ClusterConfig,
        monitored: BTreeSet<String>,
        resolver: Option<&TokioResolver>,
        dns_changed: bool,
    ) {
        self.settings.store(Arc::new(Settings::of(config)));
        self.leaders.set_enabled(config.locality);
        self.health.send_replace(config.health.clone());
        let rebuild = **self.monitored.load() != monitored;
        if rebuild {
            self.monitored.store(Arc::new(monitored));
        }
        let sources = configured_sources(config);
        self.sources
            .store(Arc::new(source_descriptions(config, &sources)));
        // Static nodes first, so that a node moving from DNS to the file never leaves.
        let _ = self.updates.0.send(SourceEvent::Update {
            source: STATIC_SOURCE.to_string(),
            update: Update::Reset(static_nodes(config)),
        });
        let mut running = self
            .running_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let wanted: BTreeMap<String, Source> = sources.into_iter().map(|s| (s.id(), s)).collect();
        let stale: Vec<String> = running
            .iter()
            .filter(|(id, (source, _))| {
                (dns_changed && matches!(source, Source::Dns(_))) || wanted.get(*id) != Some(source)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some((_, cancel)) = running.remove(&id) {
                cancel.cancel();
            }
            if !wanted.contains_key(&id) {
                let _ = self.updates.0.send(SourceEvent::Retired { source: id });
            }
        }
        let to_start: Vec<Source> = wanted
            .into_iter()
            .filter(|(id, _)| !running.contains_key(id))
            .map(|(_, s)| s)
            .collect();
        drop(running);
        for source in to_start {
            let _ = self.updates.0.send(SourceEvent::Started {
                source: source.id(),
            });
            self.start_source(source, resolver);
        }
        if rebuild {
            let _ = self.updates.0.send(SourceEvent::Rebuild);
        }
    }

    /// Puts the TLS settings a (re)load read in place. New connections, checks and discovery
    /// requests use them; open sessions keep the connection they have. Returns whether the
    /// settings or certificates changed.
    pub fn set_tls(&self, tls: Option<Arc<Connector>>) -> bool {
        let changed = crate::tls::swap(&self.tls, tls);
        if changed {
            tracing::info!(cluster = %self.name, "TLS settings and certificates re-read");
        }
        changed
    }

    /// Whether nodes are dialled over TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.load().is_some()
    }

    /// Stops the topology task, discovery and health checks of a cluster that a reload
    /// dropped. Sessions still running on it keep their nodes.
    pub fn shut_down(&self) {
        self.stop.cancel();
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

    /// Picks one of `candidates` as a new session's node would be picked (a warm pooled
    /// connection's node, say).
    /// The share of its nodes that passive signals may hold down (see [`ejection`]).
    pub fn max_passive_ejection(&self) -> f64 {
        self.settings.load().max_passive_ejection
    }

    pub fn pick_among<'a>(&self, candidates: &[&'a Arc<Node>]) -> Option<&'a Arc<Node>> {
        self.settings.load().balancer.pick(candidates)
    }

    pub fn balance(&self) -> crate::config::Balance {
        self.settings.load().balancer.strategy()
    }

    pub fn health_settings(&self) -> HealthConfig {
        self.health.borrow().clone()
    }

    pub fn sources(&self) -> Arc<Vec<String>> {
        self.sources.load_full()
    }

    /// Drains (`on`) or undrains `node`; returns whether that changed anything. Only a node
    /// the cluster knows can be drained (a typo must not pass as done); a drain can always be
    /// lifted.
    pub fn drain(&self, node: &str, on: bool) -> Result<bool, UnknownNode> {
        let nodes = self.nodes.load();
        if on && !nodes.iter().any(|n| n.name == node) {
            return Err(UnknownNode {
                cluster: self.name.to_string(),
                node: node.to_string(),
                known: nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let changed = {
            let mut drained = self.drained.lock().unwrap_or_else(|e| e.into_inner());
            match on {
                true => drained.insert(node.to_string()),
                false => drained.remove(node),
            }
        };
        if !changed {
            return Ok(false);
        }
        for n in nodes.iter().filter(|n| n.name == node) {
            n.set_drained(on);
        }
        if on {
            tracing::warn!(cluster = %self.name, %node,
                "node drained: it takes no new sessions, and its sessions move off");
        } else {
            tracing::info!(cluster = %self.name, %node, "node undrained: it takes sessions again");
        }
        // The planners move sessions off a drained node now, not at their next tick.
        self.rebalance_hint.notify_waiters();
        Ok(true)
    }

    /// The nodes an operator drained.
    pub fn drained_nodes(&self) -> BTreeSet<String> {
        (self.drained.lock().unwrap_or_else(|e| e.into_inner())).clone()
    }

    /// Drains `nodes` as the process this one took over from had them, known yet or not
    /// (discovered nodes may not be, this early); the rest is as [`Cluster::drain`].
    pub fn keep_drained(&self, nodes: &BTreeSet<String>) {
        (self.drained.lock().unwrap_or_else(|e| e.into_inner())).extend(nodes.iter().cloned());
        for node in self.nodes.load().iter().filter(|n| nodes.contains(&n.name)) {
            node.set_drained(true);
        }
        tracing::warn!(cluster = %self.name, ?nodes,
            "nodes drained before the takeover stay drained");
        self.rebalance_hint.notify_waiters();
    }

    fn is_drained(&self, node: &str) -> bool {
        (self.drained.lock().unwrap_or_else(|e| e.into_inner())).contains(node)
    }

    /// Applies source events until the cluster stops, then stops every node's health checks.
    async fn maintain(
        self: Arc<Self>,
        mut topology: Topology,
        mut events: mpsc::UnboundedReceiver<SourceEvent>,
        mut pending: BTreeSet<String>,
        ready: watch::Sender<bool>,
    ) {
        // Sources a reload dropped: a lookup they had under way must not bring their nodes back.
        let mut retired: BTreeSet<String> = BTreeSet::new();
        let node_states = NodeStates::new(&self.name);
        let mut recount = tokio::time::interval(NODE_STATE_REFRESH);
        loop {
            let event = tokio::select! {
                _ = self.stop.cancelled() => break,
                event = events.recv() => event,
                _ = recount.tick() => {
                    node_states.count(&self.nodes.load());
                    continue;
                }
            };
            let Some(mut event) = event else { break };
            let mut rebuild = false;
            // Apply everything already queued as one change.
            loop {
                match event {
                    SourceEvent::Update { source, update } => {
                        pending.remove(&source);
                        if !retired.contains(&source) {
                            metrics::counter!(names::TOPOLOGY_UPDATES_TOTAL,
                                "cluster" => self.name.to_string(), "source" => source.clone())
                            .increment(1);
                            topology.apply(&source, update);
                        }
                    }
                    SourceEvent::FirstLookupFailed { source } => {
                        pending.remove(&source);
                    }
                    SourceEvent::Retired { source } => {
                        topology.apply(&source, Update::Reset(Vec::new()));
                        retired.insert(source);
                    }
                    SourceEvent::Started { source } => {
                        retired.remove(&source);
                    }
                    SourceEvent::Rebuild => rebuild = true,
                    SourceEvent::RebalanceHint { source } => {
                        tracing::info!(cluster = %self.name, %source,
                            "a broker asked its clients to rebalance");
                        self.rebalance_hint.notify_waiters();
                    }
                }
                match events.try_recv() {
                    Ok(next) => event = next,
                    Err(_) => break,
                }
            }
            self.apply(topology.merged(), rebuild);
            node_states.count(&self.nodes.load());
            if pending.is_empty() {
                ready.send_replace(true);
            }
        }
        for node in self.nodes.load().iter() {
            node.retire();
        }
    }

    /// Makes `merged` the node set: unchanged nodes keep their health and sessions, new or
    /// changed ones (every one, with `rebuild`: the endpoints to check changed) start with
    /// fresh health checks, vanished ones are retired.
    fn apply(&self, merged: BTreeMap<String, MergedNode>, rebuild: bool) {
        self.leaders.set_aliases(
            (merged.values())
                .flat_map(|m| {
                    m.aliases
                        .iter()
                        .map(|alias| (alias.clone(), m.spec.name.clone()))
                })
                .collect(),
        );
        let current = self.nodes.load_full();
        let monitored = self.monitored.load_full();
        let mut next = Vec::with_capacity(merged.len());
        for (name, merged) in merged {
            let existing = current.iter().find(|n| n.name == name);
            if let Some(node) = existing {
                if node.spec() == merged.spec && !rebuild {
                    node.set_sources(merged.sources);
                    next.push(node.clone());
                    continue;
                }
                if node.spec() == merged.spec {
                    tracing::info!(cluster = %self.name, node = %name,
                        "endpoints to check changed; checking the node afresh");
                } else {
                    tracing::info!(cluster = %self.name, node = %name, "node endpoints changed");
                }
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
                &monitored,
                &first_source,
            ));
            node.set_sources(merged.sources);
            node.set_drained(self.is_drained(&node.name));
            node.report_failures_to(self.failures.clone());
            for endpoint in node.endpoints.values().filter(|e| e.monitored) {
                tokio::spawn(health::run(
                    node.clone(),
                    endpoint.name.clone(),
                    self.health.subscribe(),
                    self.tls.clone(),
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
