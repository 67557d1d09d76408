//! The Prometheus recorder and the description of every metric tether exports. Names follow
//! Prometheus conventions (base units, `_total` counters) and are listed in README.md.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;

/// Every metric's name, in one place: the compiler checks each use.
pub mod names {
    pub const BYTES_TOTAL: &str = "tether_bytes_total";
    pub const CONNECT_FAILURES_TOTAL: &str = "tether_connect_failures_total";
    pub const ENDPOINT_UP: &str = "tether_endpoint_up";
    pub const FAILOVER_DURATION_SECONDS: &str = "tether_failover_duration_seconds";
    pub const FAILOVERS_TOTAL: &str = "tether_failovers_total";
    pub const HEALTH_CHECKS_TOTAL: &str = "tether_health_checks_total";
    pub const NODE_UP: &str = "tether_node_up";
    pub const NODE_DRAINED: &str = "tether_node_drained";
    pub const DRAIN_MOVES_TOTAL: &str = "tether_drain_moves_total";
    pub const LOCALITY_MOVES_TOTAL: &str = "tether_locality_moves_total";
    pub const LOCALITY_SESSIONS: &str = "tether_locality_sessions";
    pub const NODES: &str = "tether_nodes";
    pub const REBALANCE_MOVES_TOTAL: &str = "tether_rebalance_moves_total";
    pub const REPLAYED_TOTAL: &str = "tether_replayed_total";
    pub const SESSIONS: &str = "tether_sessions";
    pub const SESSIONS_TOTAL: &str = "tether_sessions_total";
    pub const TAKEOVER_SESSIONS_TOTAL: &str = "tether_takeover_sessions_total";
    pub const TAKEOVER_DURATION_SECONDS: &str = "tether_takeover_duration_seconds";
    pub const STALE_ACKS_DROPPED_TOTAL: &str = "tether_stale_acks_dropped_total";
    pub const LIVENESS_QUESTIONS_TOTAL: &str = "tether_liveness_questions_total";
    pub const TLS_HANDSHAKES_TOTAL: &str = "tether_tls_handshakes_total";
    pub const CLIENT_TLS_HANDSHAKES_TOTAL: &str = "tether_client_tls_handshakes_total";
    pub const TOPOLOGY_UPDATES_TOTAL: &str = "tether_topology_updates_total";
    pub const UNCONFIRMED: &str = "tether_unconfirmed";
    pub const UPSTREAM_CONNECTS_TOTAL: &str = "tether_upstream_connects_total";
    pub const UPSTREAM_SESSIONS: &str = "tether_upstream_sessions";
    pub const POOL_IDLE: &str = "tether_pool_idle";
    pub const POOL_TAKES_TOTAL: &str = "tether_pool_takes_total";
    pub const POOL_RELEASES_TOTAL: &str = "tether_pool_releases_total";
    pub const POOL_EVICTIONS_TOTAL: &str = "tether_pool_evictions_total";
    pub const ENDPOINT_EJECTIONS_TOTAL: &str = "tether_endpoint_ejections_total";
    pub const SUSPECT_CHECKS_TOTAL: &str = "tether_suspect_checks_total";
    pub const PASSIVE_EJECTIONS_CAPPED_TOTAL: &str = "tether_passive_ejections_capped_total";
    pub const PANIC_CONNECTS_TOTAL: &str = "tether_panic_connects_total";
    pub const POOL_SHARED_CONNECTIONS: &str = "tether_pool_shared_connections";
    pub const POOL_SHARED_CLIENTS: &str = "tether_pool_shared_clients";
    pub const POOL_UNSHARED_TOTAL: &str = "tether_pool_unshared_total";
    pub const LIMITS_REACHED_TOTAL: &str = "tether_limits_reached_total";
    pub const PROCESS_SESSIONS: &str = "tether_process_sessions";
    pub const PROCESS_UNCONFIRMED_BYTES: &str = "tether_process_unconfirmed_bytes";
    pub const TASKS: &str = "tether_tasks";
}

/// Installs the global recorder. Call once, before any cluster or listener is built.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::FAILOVER_DURATION_SECONDS.into()),
            &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0],
        )?
        .install_recorder()?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
            let budget = crate::budget::Budget::process();
            metrics::gauge!(names::PROCESS_SESSIONS).set(budget.sessions() as f64);
            metrics::gauge!(names::PROCESS_UNCONFIRMED_BYTES).set(budget.held_bytes() as f64);
            let tasks = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            metrics::gauge!(names::TASKS).set(tasks as f64);
        }
    });
    Ok(handle)
}

fn describe() {
    describe_gauge!(
        names::NODE_UP,
        "1 when every endpoint of the node that a listener uses passes its health checks."
    );
    describe_gauge!(
        names::NODE_DRAINED,
        "1 while the node is drained (by an operator or the broker's maintenance mode): it takes no new sessions and its sessions move off."
    );
    describe_counter!(
        names::DRAIN_MOVES_TOTAL,
        "Sessions moved off a drained node (planned, at a safe point; not failovers)."
    );
    describe_counter!(
        names::LOCALITY_MOVES_TOTAL,
        "Sessions moved to the node that leads the queues they consume from (locality = true)."
    );
    describe_gauge!(
        names::LOCALITY_SESSIONS,
        "Consuming sessions by placement: local (on the leader of every queue they consume \
         from), remote (one leader, elsewhere), split (queues led by different nodes)."
    );
    describe_gauge!(
        names::ENDPOINT_UP,
        "1 when the node endpoint passes its health checks (or is not checked yet)."
    );
    describe_gauge!(names::SESSIONS, "Client sessions open on the listener.");
    describe_counter!(
        names::TAKEOVER_SESSIONS_TOTAL,
        "Sessions offered to this process by the one it took over from, by outcome: both_legs (client and node sockets crossed), client_leg (client socket crossed, session replayed on a node), not_taken (it stayed with the old process)."
    );
    describe_gauge!(
        names::TAKEOVER_DURATION_SECONDS,
        Unit::Seconds,
        "How long this process's takeover from the previous one took, from its first message to the old process's last."
    );
    describe_counter!(
        names::SESSIONS_TOTAL,
        "Client sessions accepted by the listener."
    );
    describe_gauge!(
        names::UPSTREAM_SESSIONS,
        "tether's sessions connected to the node."
    );
    describe_counter!(
        names::UPSTREAM_CONNECTS_TOTAL,
        "Connections tether opened to the node."
    );
    describe_counter!(
        names::CONNECT_FAILURES_TOTAL,
        "Failed connects to a node, by reason (refused, reset, timeout, unreachable, tls, local)."
    );
    describe_counter!(
        names::HEALTH_CHECKS_TOTAL,
        "Active health checks of the node, by result (success, failure, timeout)."
    );
    describe_counter!(
        names::FAILOVERS_TOTAL,
        "Sessions moved to another node because theirs failed, by reason."
    );
    describe_histogram!(
        names::FAILOVER_DURATION_SECONDS,
        Unit::Seconds,
        "From a session's node failing to the session running on another node."
    );
    describe_counter!(
        names::REPLAYED_TOTAL,
        "What failovers and rebalancing moves re-sent to the new node, by kind."
    );
    describe_counter!(
        names::STALE_ACKS_DROPPED_TOTAL,
        "Client acks for deliveries of a failed node, swallowed (the broker redelivers)."
    );
    describe_counter!(
        names::LIVENESS_QUESTIONS_TOTAL,
        "Questions tether asked a node that had been quiet for 0.6 of upstream_heartbeat, to \
         tell a hung node from a quiet one."
    );
    describe_gauge!(
        names::UNCONFIRMED,
        "Publishes kept until the node confirms them."
    );
    describe_counter!(
        names::BYTES_TOTAL,
        Unit::Bytes,
        "Bytes forwarded by the listener, by direction (from_client, to_client)."
    );
    describe_counter!(
        names::TLS_HANDSHAKES_TOTAL,
        "TLS handshakes of connections to the cluster's nodes, by kind (full, resumed)."
    );
    describe_counter!(
        names::CLIENT_TLS_HANDSHAKES_TOTAL,
        "TLS handshakes of clients on the listener, by result (ok, or why it failed)."
    );
    describe_gauge!(names::NODES, "Nodes of the cluster by state (up, down).");
    describe_counter!(
        names::TOPOLOGY_UPDATES_TOTAL,
        "Node sets reported by a discovery source of the cluster."
    );
    describe_gauge!(
        names::POOL_IDLE,
        "Cleaned node connections kept warm by the listener's pool, per node. A node's \
         connections from tether are this plus tether_upstream_sessions, less \
         tether_pool_shared_clients, plus tether_pool_shared_connections."
    );
    describe_counter!(
        names::ENDPOINT_EJECTIONS_TOTAL,
        "Node endpoints taken out of rotation, by cause (connect, handshake, session, \
         suspect_check, health_check)."
    );
    describe_counter!(
        names::SUSPECT_CHECKS_TOTAL,
        "Checks of endpoints made suspect by a session (a broker close or reset of one \
         connection), by result (cleared, ejected)."
    );
    describe_counter!(
        names::PASSIVE_EJECTIONS_CAPPED_TOTAL,
        "Passive signals that would have taken an endpoint down past the cluster's \
         max_passive_ejection: the endpoint was checked instead."
    );
    describe_counter!(
        names::PANIC_CONNECTS_TOTAL,
        "Connects made with no endpoint of the cluster live: every node tried in turn."
    );
    describe_gauge!(
        names::POOL_SHARED_CONNECTIONS,
        "Node connections that client sessions share (pool multiplex = true), per node."
    );
    describe_gauge!(
        names::POOL_SHARED_CLIENTS,
        "Client sessions on shared node connections, per node. Divided by \
         tether_pool_shared_connections: client connections per node connection."
    );
    describe_counter!(
        names::POOL_UNSHARED_TOTAL,
        "Sessions moved off a shared node connection onto one of their own, by reason (slow: \
         the client fell 8 MiB behind; no_channel: the connection had no channel left)."
    );
    describe_counter!(
        names::POOL_TAKES_TOTAL,
        "Sessions that asked the pool for a warm connection (at connect, failover or move), by \
         result (hit, miss)."
    );
    describe_counter!(
        names::POOL_RELEASES_TOTAL,
        "Node connections of ended sessions, by what came of them (pooled, unclean, expired)."
    );
    describe_counter!(
        names::POOL_EVICTIONS_TOTAL,
        "Idle pooled connections closed unused, by reason (idle_timeout, max_lifetime, \
         node_down, broken, full, closed)."
    );
    describe_counter!(
        names::REBALANCE_MOVES_TOTAL,
        "Sessions moved by rebalancing (planned, at a safe point; not failovers)."
    );
    describe_counter!(
        names::LIMITS_REACHED_TOTAL,
        "Caps reached, by limit (the key in the README's \"Limits, timeouts and caps\"): each \
         time a session starts to be held back by one, a client is refused for one, or a \
         listener or the process stops accepting for one."
    );
    describe_gauge!(
        names::PROCESS_SESSIONS,
        "Sessions of every listener together, against [limits] max_sessions (every 5 s)."
    );
    describe_gauge!(
        names::PROCESS_UNCONFIRMED_BYTES,
        Unit::Bytes,
        "Bytes of unconfirmed publishes kept for replay by every session together, against \
         [limits] max_unconfirmed_bytes (every 5 s)."
    );
    describe_gauge!(
        names::TASKS,
        "Tasks alive in tether's runtime (sessions, health checks, discovery; every 5 s): \
         flat under steady load, or something leaks."
    );
}
