//! The Prometheus recorder and the description of every metric tether exports. Names follow
//! Prometheus conventions (base units, `_total` counters) and are listed in README.md.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;

/// Installs the global recorder. Call once, before any cluster or listener is built.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("tether_failover_duration_seconds".into()),
            &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0],
        )?
        .install_recorder()?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

fn describe() {
    describe_gauge!(
        "tether_node_up",
        "1 when every endpoint of the node that a listener uses passes its health checks."
    );
    describe_gauge!(
        "tether_endpoint_up",
        "1 when the node endpoint passes its health checks (or is not checked yet)."
    );
    describe_gauge!("tether_sessions", "Client sessions open on the listener.");
    describe_counter!(
        "tether_sessions_total",
        "Client sessions accepted by the listener."
    );
    describe_gauge!(
        "tether_upstream_sessions",
        "tether's sessions connected to the node."
    );
    describe_counter!(
        "tether_upstream_connects_total",
        "Connections tether opened to the node."
    );
    describe_counter!(
        "tether_connect_failures_total",
        "Failed connects to a node, by reason (refused, reset, timeout, unreachable, local)."
    );
    describe_counter!(
        "tether_health_checks_total",
        "Active health checks of the node, by result (success, failure, timeout)."
    );
    describe_counter!(
        "tether_failovers_total",
        "Sessions moved to another node because theirs failed, by reason."
    );
    describe_histogram!(
        "tether_failover_duration_seconds",
        Unit::Seconds,
        "From a session's node failing to the session running on another node."
    );
    describe_counter!(
        "tether_replayed_total",
        "What failovers and rebalancing moves re-sent to the new node, by kind."
    );
    describe_counter!(
        "tether_stale_acks_dropped_total",
        "Client acks for deliveries of a failed node, swallowed (the broker redelivers)."
    );
    describe_gauge!(
        "tether_unconfirmed",
        "Publishes kept until the node confirms them."
    );
    describe_counter!(
        "tether_bytes_total",
        Unit::Bytes,
        "Bytes forwarded by the listener, by direction (from_client, to_client)."
    );
    describe_gauge!("tether_nodes", "Nodes of the cluster by state (up, down).");
    describe_counter!(
        "tether_topology_updates_total",
        "Node sets reported by a discovery source of the cluster."
    );
    describe_counter!(
        "tether_rebalance_moves_total",
        "Sessions moved by rebalancing (planned, at a safe point; not failovers)."
    );
}
