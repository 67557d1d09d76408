//! What every protocol-aware session does when it leaves a node, whatever the protocol: why it
//! left ([`FailoverReason`]), the record kept while it looks for the next node ([`Leaving`]),
//! how it reports arriving there ([`Leaving::arrived`]: the log line, the metrics, `/status`),
//! and why a session ends ([`End`]).
//!
//! The protocols differ in what they replay and when a point is safe, not in this skeleton, so
//! it lives here once; each session keeps its own `select!` loop and calls these parts.

use crate::cluster::ejection::Cause;
use crate::cluster::node::Node;
use crate::listener::Listener;
use crate::session::moving::{MoveOutcome, PlannedMove};
use std::time::Duration;
use tokio::time::Instant;

/// Past this many bytes queued towards a peer, a session stops reading what would add to it.
pub const HIGH_WATER: usize = 256 * 1024;
/// How long a closing session (or a node connection closed in the background) may take to
/// write its last frames.
pub const FINAL_FLUSH: Duration = Duration::from_secs(5);
/// How long a session ended by a client error reads on, so that its answer is not reset away.
pub const LINGER: Duration = Duration::from_secs(1);

/// Why a session left its node: the `reason` label of `tether_failovers_total`, so the set of
/// labels is closed and checked by the compiler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailoverReason {
    /// The node closed the connection (EOF).
    Closed,
    /// The connection was reset or a read failed.
    Reset,
    /// A write to the node failed.
    WriteError,
    /// The node stopped heart-beating: it said nothing, not even to tether's question (see
    /// [`crate::session::liveness`]).
    Heartbeat,
    /// The node sent what the protocol does not allow: the connection cannot be trusted.
    ProtocolError,
    /// The node said it is going away (AMQP 320 CONNECTION_FORCED for a broker shutdown, a
    /// STOMP shutdown ERROR).
    NodeShutdown,
    /// The node closed this connection by force for another reason: an operator's
    /// `close_connection`, a policy (AMQP 320 without a shutdown, STOMP connection_forced).
    Forced,
    /// The node failed inside (AMQP 541 INTERNAL_ERROR, RabbitMQ STOMP's "AMQP channel died").
    NodeError,
    /// AMQP: the node kept refusing (nacking) a publish; the session is set up again on fresh
    /// channels. The node is left, not failed.
    Nacked,
    /// A planned move (rebalancing): the node is left at a safe point, not failed.
    Rebalance,
    /// AMQP: tether took the session off a shared (multiplexed) node connection, because its
    /// client fell too far behind or the connection had no channel left for it. It carries on
    /// on a connection of its own; the node is left, not failed.
    Unshared,
    /// AMQP: the node closed a shared (multiplexed) connection for a client's error (a code
    /// other than 320 and 541): every session on it is set up again; the node is not failed.
    SharedClosed,
    /// The node failed the session within [`REFUSAL_WINDOW`] of its replay there, for a cause
    /// that may be that connection's alone (RabbitMQ 3.10's STOMP reader crashes on the nack
    /// of a publish replayed while its quorum queue elects a leader). The session tries that
    /// node once more after a short pause, then another: it does not hop across the cluster.
    ReplayRefused,
    /// AMQP: a queue the session declared itself is gone from the cluster (the node cancelled
    /// its consumer, or answered 404 naming it): the session is set up again, which
    /// declares it again. The node is left, not failed.
    QueueLost,
}

/// A session that fails within this long of arriving on a node, for a cause that may be its
/// own connection's, had its replay refused there (see [`FailoverReason::ReplayRefused`]).
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(1);
/// The pause before a session whose replay was refused connects again: long enough for a
/// queue to elect a leader, short beside a client's patience.
pub const REFUSAL_PAUSE: Duration = Duration::from_millis(100);

impl FailoverReason {
    pub const ALL: [FailoverReason; 14] = [
        FailoverReason::Closed,
        FailoverReason::Reset,
        FailoverReason::WriteError,
        FailoverReason::Heartbeat,
        FailoverReason::ProtocolError,
        FailoverReason::NodeShutdown,
        FailoverReason::Forced,
        FailoverReason::NodeError,
        FailoverReason::Nacked,
        FailoverReason::Rebalance,
        FailoverReason::Unshared,
        FailoverReason::SharedClosed,
        FailoverReason::ReplayRefused,
        FailoverReason::QueueLost,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailoverReason::Closed => "closed",
            FailoverReason::Reset => "reset",
            FailoverReason::WriteError => "write_error",
            FailoverReason::Heartbeat => "heartbeat",
            FailoverReason::ProtocolError => "protocol_error",
            FailoverReason::NodeShutdown => "node_shutdown",
            FailoverReason::Forced => "forced",
            FailoverReason::NodeError => "node_error",
            FailoverReason::Nacked => "nacked",
            FailoverReason::Rebalance => "rebalance",
            FailoverReason::Unshared => "unshared",
            FailoverReason::SharedClosed => "shared_closed",
            FailoverReason::ReplayRefused => "replay_refused",
            FailoverReason::QueueLost => "queue_lost",
        }
    }

    /// What the failure says about the node (see [`crate::cluster::ejection`]): missed
    /// heart-beats, nonsense on the wire and a shutdown are its fault; a connection it closed
    /// by force or for an error inside, or that was reset, may be that connection's trouble
    /// alone; a node only left (refusing publishes, a
    /// planned move, a session moved off a shared connection) is not to blame.
    pub fn blame(self) -> Blame {
        match self {
            FailoverReason::Heartbeat
            | FailoverReason::ProtocolError
            | FailoverReason::NodeShutdown => Blame::Node,
            FailoverReason::Closed
            | FailoverReason::Reset
            | FailoverReason::WriteError
            | FailoverReason::Forced
            | FailoverReason::NodeError
            | FailoverReason::ReplayRefused => Blame::Suspect,
            FailoverReason::Nacked
            | FailoverReason::Rebalance
            | FailoverReason::Unshared
            | FailoverReason::SharedClosed
            | FailoverReason::QueueLost => Blame::None,
        }
    }
}

/// What a session's failure says about its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The node's fault: its endpoint goes down at once.
    Node,
    /// Maybe the node's, maybe this connection's alone: the endpoint is checked at once.
    Suspect,
    /// Not the node's.
    None,
}

impl std::fmt::Display for FailoverReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Why a session ends, for the debug log (and for what the session still owes each leg).
#[derive(Debug)]
pub enum End {
    /// The client left without closing; what it sent was delivered first.
    ClientGone,
    /// The client broke the protocol; it was told why.
    ClientError(String),
    /// The broker ended it for the client's own reasons (or no node could be found) and the
    /// client was told as the broker would tell it.
    Forwarded(String),
    /// The client closed the session properly.
    Finished,
    /// The client closed the session properly, and tether answered its close itself: the node
    /// connection is still open, to be cleaned and pooled.
    Released,
    /// tether is shutting down.
    Shutdown,
    /// A new tether process runs the session now (see `crate::takeover`): its sockets are
    /// let go of without a word, the connections stay open.
    HandedOver,
}

impl End {
    pub fn describe(&self) -> String {
        match self {
            End::ClientGone => "client gone".to_owned(),
            End::ClientError(e) => format!("client error: {e}"),
            End::Forwarded(e) => format!("broker's close passed on: {e}"),
            End::Finished => "finished".to_owned(),
            End::Released => "finished; node connection kept for the pool".to_owned(),
            End::Shutdown => "tether shutting down".to_owned(),
            End::HandedOver => "handed over to a new tether process".to_owned(),
        }
    }
}

/// Where and when a session that left its node connects next: the balancer's choice at once,
/// unless a planned move names the node or a refused replay asks for a pause.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Destination {
    pub node: Option<String>,
    pub not_before: Option<Instant>,
}

impl Destination {
    /// A planned move's: `to`, at once.
    pub fn to(node: String) -> Destination {
        Destination {
            node: Some(node),
            not_before: None,
        }
    }

    /// Waits until the session may connect.
    pub async fn wait(&self) {
        if let Some(at) = self.not_before {
            tokio::time::sleep_until(at).await;
        }
    }
}

/// A session between nodes: the node it left, why and since when, and the planned move it
/// carries out, if that is why it left.
pub struct Leaving {
    started: Instant,
    reason: FailoverReason,
    from: String,
    moving: Option<PlannedMove>,
}

impl Leaving {
    /// The session's node failed under it: the node's endpoint is marked down at once (when the
    /// reason blames the node), the failover is logged and counted, and a planned move under way
    /// ends (the failover takes the session somewhere; frames parked for the move follow it).
    pub fn failed(
        listener: &Listener,
        span: &tracing::Span,
        endpoint: &str,
        node: &Node,
        reason: FailoverReason,
        detail: &str,
        moving: Option<PlannedMove>,
    ) -> Leaving {
        let why = format!("session failover ({reason}): {detail}");
        match reason.blame() {
            Blame::Node => listener
                .cluster
                .node_failed(node, endpoint, Cause::Session, &why),
            Blame::Suspect => listener.cluster.node_suspect(node, endpoint, &why),
            Blame::None => {}
        }
        tracing::warn!(parent: span, node = %node.name, %reason, %detail, "node failed; failing over");
        Leaving::left(listener, node, reason, moving)
    }

    /// The session leaves a node that still works: it keeps refusing publishes (counted as a
    /// failover), or a planned move reached its safe point (`moving`, counted as a move once
    /// done).
    pub fn left(
        listener: &Listener,
        node: &Node,
        reason: FailoverReason,
        moving: Option<PlannedMove>,
    ) -> Leaving {
        let moving = match moving {
            Some(moving) if reason == FailoverReason::Rebalance => Some(moving),
            Some(moving) => {
                moving.finish(MoveOutcome::NotMoved(format!(
                    "it left its node ({reason})"
                )));
                None
            }
            None => None,
        };
        if moving.is_none() {
            listener.metrics.failover(reason);
        }
        Leaving {
            started: Instant::now(),
            reason,
            from: node.name.clone(),
            moving,
        }
    }

    /// Whether the session left for a planned move (which is under way until it arrives).
    pub fn is_move(&self) -> bool {
        self.moving.is_some()
    }

    /// How long the session has been without a node.
    pub fn waited(&self) -> Duration {
        self.started.elapsed()
    }

    /// The session runs on `to` again, having replayed `replayed` (kind, count) there: one log
    /// line, the metrics, and `/status`'s last failover; a planned move is reported done.
    pub fn arrived(
        self,
        listener: &Listener,
        span: &tracing::Span,
        to: &str,
        replayed: &[(&'static str, usize)],
    ) {
        let took = self.started.elapsed();
        let metrics = &listener.metrics;
        for (kind, count) in replayed {
            metrics.replayed(kind, *count);
        }
        let what = Replayed(replayed);
        if let Some(moving) = self.moving {
            listener.rebalance.count_move(moving.cause);
            let cause = moving.cause.label();
            moving.finish(MoveOutcome::Moved { to: to.to_owned() });
            tracing::info!(parent: span, from = %self.from, %to, seconds = took.as_secs_f64(),
                replayed = %what, cause, "session moved (planned)");
            return;
        }
        metrics.failover_duration.record(took.as_secs_f64());
        metrics.replayed("connect", 1);
        listener.failover_done(self.reason, &self.from, to, took);
        tracing::info!(parent: span, reason = %self.reason, from = %self.from, %to,
            seconds = took.as_secs_f64(), replayed = %what, "failover done");
    }
}

/// What a failover replayed, for its log line: `subscribe=2 send=0`.
struct Replayed<'a>(&'a [(&'static str, usize)]);

impl std::fmt::Display for Replayed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (kind, count)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{kind}={count}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_only_a_node_fault_takes_it_down_at_once() {
        let labels: std::collections::BTreeSet<&str> =
            FailoverReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), FailoverReason::ALL.len());
        // "refused" is a connect failure's label (tether_connect_failures_total): not reused.
        assert!(!labels.contains("refused"));
        let blamed = |blame: Blame| -> Vec<FailoverReason> {
            (FailoverReason::ALL.into_iter())
                .filter(|r| r.blame() == blame)
                .collect()
        };
        assert_eq!(
            blamed(Blame::Node),
            [
                FailoverReason::Heartbeat,
                FailoverReason::ProtocolError,
                FailoverReason::NodeShutdown
            ]
        );
        // A broker's close of one connection (close_connection's 320, a channel crash's 541)
        // or a reset may be that connection's alone: the node is checked, not ejected.
        assert_eq!(
            blamed(Blame::Suspect),
            [
                FailoverReason::Closed,
                FailoverReason::Reset,
                FailoverReason::WriteError,
                FailoverReason::Forced,
                FailoverReason::NodeError,
                FailoverReason::ReplayRefused
            ]
        );
        assert_eq!(
            blamed(Blame::None),
            [
                FailoverReason::Nacked,
                FailoverReason::Rebalance,
                FailoverReason::Unshared,
                FailoverReason::SharedClosed,
                FailoverReason::QueueLost
            ]
        );
    }

    #[test]
    fn what_was_replayed_reads_as_kind_equals_count() {
        let line = Replayed(&[("subscribe", 2), ("send", 0)]).to_string();
        assert_eq!(line, "subscribe=2 send=0");
    }
}
