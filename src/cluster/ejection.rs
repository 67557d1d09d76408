//! Taking a node's endpoint out of rotation on what sessions see (passive detection), without
//! letting one session's trouble, or a burst of it, empty the cluster:
//!
//! - A failure that shows a fault of the node (a refused or timed-out connect, a failed
//!   handshake, missed heart-beats on tether's own leg) takes the endpoint down at once.
//! - A failure that can be one connection's alone (the broker closed it, with 320 or 541, or
//!   it was reset) only makes the endpoint suspect: its health task checks it at once, and it
//!   goes down only if that check fails. A stopping node refuses the check, so a graceful
//!   stop still ejects it within one check.
//! - Passive signals hold down at most `max_passive_ejection` of a cluster's endpoints, and
//!   never all of them; past that, a signal makes the endpoint suspect instead. Active checks
//!   are not capped: a node that fails them goes down whatever the share.
//! - With no endpoint of the cluster live, a connect tries every node in turn (panic mode):
//!   "all nodes down" is decided by connects that fail, not by marks that may be stale.

use super::Cluster;
use super::node::Node;
use crate::metrics::names;

/// What took an endpoint down: the `cause` label of `tether_endpoint_ejections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A connect failed: refused, timed out, unreachable, TLS.
    Connect,
    /// A handshake or a failover's replay failed or timed out on a fresh connection.
    Handshake,
    /// A session saw the node fail it: missed heart-beats, nonsense on the wire.
    Session,
    /// A suspect endpoint failed the check it got at once.
    SuspectCheck,
    /// Active health checks failed `fall` times in a row.
    HealthCheck,
}

impl Cause {
    pub const ALL: [Cause; 5] = [
        Cause::Connect,
        Cause::Handshake,
        Cause::Session,
        Cause::SuspectCheck,
        Cause::HealthCheck,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Cause::Connect => "connect",
            Cause::Handshake => "handshake",
            Cause::Session => "session",
            Cause::SuspectCheck => "suspect_check",
            Cause::HealthCheck => "health_check",
        }
    }
}

/// How many of `total` endpoints passive signals may hold down: `share` of them, rounded
/// down, and never all.
pub fn passive_allowance(total: usize, share: f64) -> usize {
    ((total as f64 * share).floor() as usize).min(total.saturating_sub(1))
}

impl Cluster {
    /// Takes a node's endpoint out of rotation for a fault of the node's that a session or a
    /// connect saw; active checks bring it back. Past the cluster's `max_passive_ejection`,
    /// the endpoint is made suspect instead (checked at once, down only if that fails).
    pub fn node_failed(&self, node: &Node, endpoint: &str, cause: Cause, reason: &str) {
        let Some(target) = node.endpoints.get(endpoint) else {
            return;
        };
        if !target.health.is_up() {
            return;
        }
        if self.passive_cap_reached(endpoint) {
            metrics::counter!(names::PASSIVE_EJECTIONS_CAPPED_TOTAL, "cluster" => self.name.to_string())
                .increment(1);
            return self.node_suspect(
                node,
                endpoint,
                &format!("{reason} (passive ejections are at max_passive_ejection)"),
            );
        }
        if node.set_endpoint_health(target, false, reason) {
            count_ejection(node, cause);
            target.health.passive_down.notify_one();
        }
    }

    /// A session saw something that may be the node's fault or its own connection's alone:
    /// the endpoint gets one health check at once, and goes down only if that fails.
    pub fn node_suspect(&self, node: &Node, endpoint: &str, reason: &str) {
        let Some(target) = node.endpoints.get(endpoint) else {
            return;
        };
        if target.health.suspect(reason) {
            tracing::info!(cluster = %self.name, node = %node.name, %endpoint, %reason,
                "endpoint suspect; checking it now");
            target.health.suspect.notify_one();
        }
    }

    /// Whether passive signals hold down as many of `endpoint`'s endpoints as they may.
    fn passive_cap_reached(&self, endpoint: &str) -> bool {
        let nodes = self.nodes();
        let monitored: Vec<_> = (nodes.iter())
            .filter_map(|n| n.endpoints.get(endpoint))
            .filter(|e| e.monitored)
            .collect();
        let down = monitored.iter().filter(|e| !e.health.is_up()).count();
        down >= passive_allowance(monitored.len(), self.max_passive_ejection())
    }
}

pub fn count_ejection(node: &Node, cause: Cause) {
    metrics::counter!(names::ENDPOINT_EJECTIONS_TOTAL,
        "cluster" => node.cluster.to_string(), "node" => node.name.clone(), "cause" => cause.label())
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_signals_never_hold_every_node_down() {
        assert_eq!(passive_allowance(3, 0.5), 1);
        assert_eq!(passive_allowance(4, 0.5), 2);
        assert_eq!(passive_allowance(5, 0.5), 2);
        assert_eq!(passive_allowance(3, 1.0), 2, "never all");
        assert_eq!(passive_allowance(1, 1.0), 0, "a single node stays in");
        assert_eq!(passive_allowance(2, 0.5), 1);
        assert_eq!(passive_allowance(0, 0.5), 0);
        assert_eq!(
            passive_allowance(10, 0.0),
            0,
            "0%: passive signals only make suspects"
        );
    }

    /// Two nodes, the first one listening; both endpoints as `up` says, with health checks
    /// too slow to change that during the test.
    async fn two_nodes(up: bool) -> (std::sync::Arc<Cluster>, tokio::net::TcpListener) {
        let listening = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refusing = closed.local_addr().unwrap();
        drop(closed);
        let text = format!(
            r#"
[[clusters]]
name = "c"
health = {{ interval = "1h", max_backoff = "1h" }}
nodes = [{{ name = "a", amqp = "{}" }}, {{ name = "b", amqp = "{refusing}" }}]
[[listeners]]
name = "l"
bind = "127.0.0.1:1"
protocol = "tcp"
cluster = "c"
endpoint = "amqp"
"#,
            listening.local_addr().unwrap()
        );
        let config = crate::config::Config::parse(&text).unwrap();
        let monitored = std::collections::BTreeSet::from(["amqp".to_owned()]);
        let stop = tokio_util::sync::CancellationToken::new();
        let cluster = Cluster::start(&config.clusters[0], None, monitored, None, &stop);
        for node in cluster.nodes().iter() {
            let endpoint = &node.endpoints["amqp"];
            node.set_endpoint_health(endpoint, up, "test");
        }
        (cluster, listening)
    }

    #[tokio::test]
    async fn with_every_endpoint_down_a_connect_still_tries_every_node() {
        let (cluster, _listening) = two_nodes(false).await;
        for _ in 0..4 {
            let connected = cluster
                .connect("amqp")
                .await
                .expect("panic mode finds node a");
            assert_eq!(connected.node().name, "a");
        }
    }

    #[tokio::test]
    async fn passive_signals_stop_at_the_cap_and_make_suspects_instead() {
        let (cluster, _listening) = two_nodes(true).await;
        let nodes = cluster.nodes();
        let (a, b) = (&nodes[0], &nodes[1]);
        cluster.node_failed(b, "amqp", Cause::Session, "missed heart-beats");
        assert!(
            !b.endpoints["amqp"].health.is_up(),
            "the first goes down at once"
        );
        cluster.node_failed(a, "amqp", Cause::Session, "missed heart-beats");
        let health = &a.endpoints["amqp"].health;
        assert!(health.is_up(), "50% of two nodes: one at most");
        assert!(
            health
                .suspected()
                .is_some_and(|why| why.contains("max_passive_ejection")),
            "made suspect instead"
        );
    }

    #[tokio::test]
    async fn a_suspect_is_checked_once_and_a_second_signal_adds_nothing() {
        let (cluster, _listening) = two_nodes(true).await;
        let nodes = cluster.nodes();
        cluster.node_suspect(&nodes[0], "amqp", "closed by the broker");
        cluster.node_suspect(&nodes[0], "amqp", "reset");
        let health = &nodes[0].endpoints["amqp"].health;
        assert!(
            health.is_up(),
            "a suspect stays in rotation until its check says"
        );
        assert_eq!(health.suspected().as_deref(), Some("closed by the broker"));
    }

    #[test]
    fn cause_labels_are_distinct() {
        let labels: std::collections::BTreeSet<_> = Cause::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels.len(), Cause::ALL.len());
    }
}
