//! `/status` as JSON: written by the admin listener ([`crate::admin`]), read by `tether status`
//! and by tests. One model for both sides, so they cannot drift apart. Reading is lenient
//! (`#[serde(default)]`): a `tether status` of another version shows what it understands.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub version: String,
    pub uptime_seconds: f64,
    pub listeners: Vec<ListenerStatus>,
    pub clusters: Vec<ClusterStatus>,
    /// `null` until a session of some listener has failed over.
    pub last_failover: Option<LastFailover>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LastFailover {
    /// When the session ran again on its new node.
    pub at_unix: f64,
    pub listener: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    /// From the node failing to the session running on `to`.
    pub seconds: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenerStatus {
    pub name: String,
    pub bind: String,
    pub protocol: String,
    pub cluster: String,
    pub endpoint: String,
    /// Clients connect over TLS.
    pub tls: bool,
    pub sessions: usize,
    /// Removed by a reload: accepts no more sessions; shown until its last one ends.
    pub draining: bool,
    /// Protocol-aware listeners: where their sessions run, as rebalancing counts them.
    pub nodes: BTreeMap<String, NodeShare>,
    /// Idle node connections the listener's pool keeps warm, per node; `None`: no pool.
    pub pooled: Option<BTreeMap<String, usize>>,
    /// AMQP with `multiplex = true`: node connections that sessions share, per node; `None`:
    /// no multiplexing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<BTreeMap<String, SharedConnections>>,
    /// With `locality` on: each session that consumes from (or only publishes to) named
    /// queues, its queues, their leaders, whether it is local.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locality: Vec<ConsumerLocality>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumerLocality {
    /// Where it runs; empty while it fails over or moves.
    pub node: String,
    pub vhost: String,
    /// It has consumers; else its publishes all go to its one queue.
    pub consumes: bool,
    pub queues: Vec<QueueLeader>,
    /// It runs on the node that leads every queue it consumes from.
    pub local: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueLeader {
    pub name: String,
    /// Empty: not known (not a RabbitMQ queue, or not read yet).
    pub leader: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SharedConnections {
    pub connections: usize,
    /// The channels of the sessions on them (a session with none counts as one).
    pub channels: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeShare {
    pub sessions: usize,
    /// Sessions with at least one consumer.
    pub consuming: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterStatus {
    pub name: String,
    pub balance: String,
    /// Nodes are reached over TLS.
    pub tls: bool,
    pub sources: Vec<String>,
    pub nodes_up: usize,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStatus {
    pub name: String,
    pub up: bool,
    /// An operator drained it (`tether drain`): it takes no new sessions.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
    pub sessions: usize,
    pub sources: Vec<String>,
    pub endpoints: BTreeMap<String, EndpointStatus>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointStatus {
    pub address: String,
    /// Whether a listener uses this endpoint, so that it is health-checked.
    pub checked: bool,
    pub check: String,
    pub up: bool,
    pub since_unix: f64,
    pub for_seconds: f64,
    pub reason: String,
    /// Made suspect by a session (see `cluster::ejection`), its check under way: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect: Option<String>,
}
