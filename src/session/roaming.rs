//! A protocol-aware session's side of changing nodes, the same for every protocol: its entry
//! in the rebalancer's registry, the move requests it receives, the planned move under way and
//! the client frames parked for it, and the failover under way. The session decides *when*
//! (what its protocol calls a safe point, what it replays); [`Roaming`] keeps the books.

use crate::backoff::jitter;
use crate::cluster::node::Node;
use crate::listener::Listener;
use crate::rebalance::Registration;
use crate::session::failover::{
    Blame, Destination, FailoverReason, Leaving, REFUSAL_PAUSE, REFUSAL_WINDOW,
};
use crate::session::moving::{MoveRequest, Parked, PlannedMove, Switch, Whereabouts, refusal};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub struct Roaming<F> {
    listener: Arc<Listener>,
    /// The session's span, the parent of the lines logged about its moves and failovers.
    span: tracing::Span,
    registration: Registration,
    moving: Option<PlannedMove>,
    parked: Parked<F>,
    leaving: Option<Leaving>,
    /// Where the session last arrived by a failover or move, and when: a failure there soon
    /// after is the node refusing the replay.
    arrival: Option<Arrival>,
    /// The node a refused replay is being tried on once more.
    retrying: Option<String>,
}

#[derive(Debug)]
struct Arrival {
    node: String,
    at: Instant,
    /// The session came back to a node that had refused its replay.
    second_try: bool,
}

/// Where a session goes after its replay was refused.
#[derive(Debug, PartialEq, Eq)]
enum Retry {
    /// The same node once more (a queue there may be electing its leader).
    SameNode,
    /// Another node: this one refused twice.
    Elsewhere,
}

/// Whether a failure on `node` for `reason` at `now` is its refusal of the replay the session
/// `arrival` brought there, and where to go then. Only a cause that may be the connection's
/// alone counts: a node that failed (shut down, hung) is left as any failed node.
fn refused_replay(
    arrival: Option<&Arrival>,
    node: &str,
    reason: FailoverReason,
    now: Instant,
) -> Option<Retry> {
    let arrival = arrival?;
    let refused = reason.blame() == Blame::Suspect
        && arrival.node == node
        && now.saturating_duration_since(arrival.at) < REFUSAL_WINDOW;
    match (refused, arrival.second_try) {
        (false, _) => None,
        (true, false) => Some(Retry::SameNode),
        (true, true) => Some(Retry::Elsewhere),
    }
}

impl<F> Roaming<F> {
    pub fn new(listener: Arc<Listener>, span: tracing::Span) -> Roaming<F> {
        let registration = listener.sessions.register();
        Roaming {
            listener,
            span,
            registration,
            moving: None,
            parked: Parked::default(),
            leaving: None,
            arrival: None,
            retrying: None,
        }
    }

    /// The session's span, for the lines the session logs.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The session runs on `node` now (`None`: between nodes), for the rebalancer.
    pub fn on(&self, node: Option<&str>) {
        self.registration.slot.set_node(node);
    }

    /// Keeps the rebalancer's view of the session current.
    pub fn report(&self, consumes: bool, movable: bool) {
        let slot = &self.registration.slot;
        slot.set_consumes(consumes);
        slot.set_movable(movable);
    }

    /// What the session is placed by changed (its consumers, or its publishes' queue), for
    /// queue locality.
    pub fn report_consumed(&self, consumed: Option<crate::rebalance::locality::Consumed>) {
        self.registration.slot.set_consumed(consumed);
    }

    /// The session's node failed under it (see [`Leaving::failed`]). Returns where and when
    /// to connect next: a node that refused the replay just made is tried once more after a
    /// short pause, then another node (see [`FailoverReason::ReplayRefused`]).
    pub fn failed(&mut self, node: &Node, reason: FailoverReason, detail: &str) -> Destination {
        let moving = self.moving.take();
        let arrival = self.arrival.take();
        let retry = refused_replay(arrival.as_ref(), &node.name, reason, Instant::now());
        let (reason, next) = match retry {
            // A node blamed for the failure may still be in rotation for a moment (passive
            // ejections capped, its check under way): the first try goes elsewhere.
            None if reason.blame() == Blame::Node => (
                reason,
                Destination {
                    node: self.another_live_node(node),
                    not_before: None,
                },
            ),
            None => (reason, Destination::default()),
            Some(retry) => (
                FailoverReason::ReplayRefused,
                self.after_refusal(node, retry),
            ),
        };
        let leaving = Leaving::failed(
            &self.listener,
            &self.span,
            self.listener.config.endpoint(),
            node,
            reason,
            detail,
            moving,
        );
        self.leave(leaving);
        next
    }

    fn after_refusal(&mut self, node: &Node, retry: Retry) -> Destination {
        let name = match retry {
            Retry::SameNode => Some(node.name.clone()),
            Retry::Elsewhere => self.another_live_node(node),
        };
        tracing::info!(parent: &self.span, node = %node.name, next = ?name,
            "the node refused the replay; connecting again after a pause");
        self.retrying = (retry == Retry::SameNode).then(|| node.name.clone());
        Destination {
            node: name,
            not_before: Some(Instant::now() + jitter(REFUSAL_PAUSE)),
        }
    }

    /// A live node other than `node`, as the balancer picks among them; `None` if there is
    /// none (then any live node will do).
    fn another_live_node(&self, node: &Node) -> Option<String> {
        let cluster = &self.listener.cluster;
        let endpoint = self.listener.config.endpoint();
        let nodes = cluster.nodes();
        let others: Vec<&Arc<Node>> = (nodes.iter())
            .filter(|n| n.name != node.name && n.live_endpoint(endpoint).is_some())
            .collect();
        cluster.pick_among(&others).map(|n| n.name.clone())
    }

    /// The session leaves a node that still works: a planned move at its safe point
    /// ([`FailoverReason::Rebalance`]), or a node that keeps refusing.
    pub fn left(&mut self, node: &Node, reason: FailoverReason) {
        let leaving = Leaving::left(&self.listener, node, reason, self.moving.take());
        self.leave(leaving);
    }

    fn leave(&mut self, leaving: Leaving) {
        self.leaving = Some(leaving);
        self.on(None);
    }

    /// How long the session has been between nodes.
    pub fn waited(&self) -> Duration {
        self.leaving
            .as_ref()
            .map_or(Duration::ZERO, Leaving::waited)
    }

    /// The session runs on `to`, having replayed `replayed` there: the failover or move is
    /// reported done (nothing is, for a session's first node). Returns the frames parked for a
    /// move, for the session to handle now.
    pub fn arrived(&mut self, to: &str, replayed: &[(&'static str, usize)]) -> VecDeque<F> {
        self.on(Some(to));
        if let Some(leaving) = self.leaving.take() {
            leaving.arrived(&self.listener, &self.span, to, replayed);
            self.arrival = Some(Arrival {
                node: to.to_owned(),
                at: Instant::now(),
                second_try: self.retrying.take().as_deref() == Some(to),
            });
        }
        self.parked.release()
    }

    // ---- planned moves ----------------------------------------------------------------------

    /// The next move request; or, while a move is under way, `None` when its deadlines call
    /// for a look at the clock (see [`Roaming::switch_to`]).
    pub async fn next(&mut self) -> Option<MoveRequest> {
        if let Some(moving) = &self.moving {
            tokio::time::sleep_until(moving.wake_at()).await;
            return None;
        }
        if self.is_moving() {
            // Switching nodes: no deadline is left to watch, and no other move is taken on.
            return std::future::pending().await;
        }
        Some(self.registration.slot.next_move().await)
    }

    /// Takes on a move unless the session cannot move now (then the planner hears why).
    /// Returns whether the move started: the session then stops what is in flight.
    pub fn begin_move(&mut self, request: MoveRequest, session: &Whereabouts<'_>) -> bool {
        if let Some(why) = refusal(&request.to, session) {
            PlannedMove::refuse(request, why);
            return false;
        }
        tracing::debug!(parent: &self.span, to = %request.to, "planned move: waiting for a safe point");
        self.moving = Some(PlannedMove::start(request));
        true
    }

    /// A planned move is under way: from its request until the session runs on the new
    /// node (the client's frames are parked all that time, so none is sent twice).
    pub fn is_moving(&self) -> bool {
        self.moving.is_some() || self.leaving.as_ref().is_some_and(Leaving::is_move)
    }

    /// The node to switch to now, if a move under way has reached its safe point (`settled`,
    /// `acked`; see [`PlannedMove::switch`]) or its deadline, with `unsettled` things in flight.
    pub fn switch_to(&self, settled: bool, acked: bool, unsettled: usize) -> Option<String> {
        let moving = self.moving.as_ref()?;
        match moving.switch(settled, acked) {
            Switch::NotYet => None,
            Switch::Now => Some(moving.to.clone()),
            Switch::Forced => {
                tracing::warn!(parent: &self.span, to = %moving.to, unsettled,
                    "planned move: no safe point within its deadline; moving anyway (what is unconfirmed is sent again)");
                Some(moving.to.clone())
            }
        }
    }

    /// Holds a client frame back until the move is done.
    pub fn park(&mut self, frame: F) {
        self.parked.park(frame);
    }

    /// Whether the session should stop reading its client until the move is done.
    pub fn parked_full(&self) -> bool {
        self.parked.is_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(node: &str, second_try: bool) -> Arrival {
        Arrival {
            node: node.to_owned(),
            at: Instant::now(),
            second_try,
        }
    }

    #[test]
    fn a_close_right_after_the_replay_is_a_refusal_tried_once_more_then_elsewhere() {
        let now = Instant::now();
        let first = arrival("r2", false);
        let closed = FailoverReason::Closed;
        assert_eq!(
            refused_replay(Some(&first), "r2", closed, now),
            Some(Retry::SameNode)
        );
        let again = arrival("r2", true);
        assert_eq!(
            refused_replay(Some(&again), "r2", closed, now),
            Some(Retry::Elsewhere)
        );
    }

    #[test]
    fn not_a_refusal_later_elsewhere_for_a_node_fault_or_before_any_replay() {
        let first = arrival("r2", false);
        let later = first.at + REFUSAL_WINDOW;
        let reset = FailoverReason::Reset;
        assert_eq!(refused_replay(Some(&first), "r2", reset, later), None);
        assert_eq!(refused_replay(Some(&first), "r3", reset, first.at), None);
        // A node that shuts down or hangs right after the replay is failed as any node.
        let shutdown = FailoverReason::NodeShutdown;
        assert_eq!(refused_replay(Some(&first), "r2", shutdown, first.at), None);
        assert_eq!(refused_replay(None, "r2", reset, first.at), None);
    }
}
