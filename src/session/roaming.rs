//! A protocol-aware session's side of changing nodes, the same for every protocol: its entry
//! in the rebalancer's registry, the move requests it receives, the planned move under way and
//! the client frames parked for it, and the failover under way. The session decides *when*
//! (what its protocol calls a safe point, what it replays); [`Roaming`] keeps the books.

use crate::cluster::node::Node;
use crate::listener::Listener;
use crate::rebalance::Registration;
use crate::session::failover::{FailoverReason, Leaving};
use crate::session::moving::{MoveRequest, Parked, PlannedMove, Switch, Whereabouts, refusal};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub struct Roaming<F> {
    listener: Arc<Listener>,
    /// The session's span, the parent of the lines logged about its moves and failovers.
    span: tracing::Span,
    registration: Registration,
    requests: mpsc::Receiver<MoveRequest>,
    moving: Option<PlannedMove>,
    parked: Parked<F>,
    leaving: Option<Leaving>,
}

impl<F> Roaming<F> {
    pub fn new(listener: Arc<Listener>, span: tracing::Span) -> Roaming<F> {
        let (registration, requests) = listener.sessions.register();
        Roaming {
            listener,
            span,
            registration,
            requests,
            moving: None,
            parked: Parked::default(),
            leaving: None,
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

    /// The session's node failed under it (see [`Leaving::failed`]).
    pub fn failed(&mut self, node: &Node, reason: FailoverReason, detail: &str) {
        let moving = self.moving.take();
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
        match self.requests.recv().await {
            Some(request) => Some(request),
            // The registry keeps the sender as long as the session is registered.
            None => std::future::pending().await,
        }
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
