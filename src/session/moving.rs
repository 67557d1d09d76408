//! Planned moves: the rebalancer asks a session to move ([`MoveRequest`]); the session checks
//! it can ([`refusal`]), then holds back what its client sends ([`Parked`]) until nothing of
//! its own is in flight on the old node, and switches ([`PlannedMove::switch`]). What counts
//! as "in flight" is the protocol's; the rest is here, once for both protocols.
//!
//! A move hands the session's recorded state to a new node at a safe point; so will a drain
//! or a takeover by a new process, which is why these parts know nothing of the rebalancer.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Asks a session to move to the node named `to`.
pub struct MoveRequest {
    pub to: String,
    pub cause: MoveCause,
    pub done: oneshot::Sender<MoveOutcome>,
}

/// Why a session is asked to move; each is counted apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveCause {
    /// The cluster's sessions are evened out.
    Rebalance,
    /// The session's node is drained.
    Drain,
    /// The session consumes from queues another node leads.
    Locality,
}

impl MoveCause {
    pub fn label(self) -> &'static str {
        match self {
            MoveCause::Rebalance => "rebalancing",
            MoveCause::Drain => "drain",
            MoveCause::Locality => "locality",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum MoveOutcome {
    Moved { to: String },
    NotMoved(String),
}

/// A planned move waits this long for the client to ack what it was delivered; what it has
/// not acked by then the broker redelivers on the new node.
pub const MOVE_ACK_WAIT: Duration = Duration::from_secs(3);
/// A planned move switches nodes by then even if confirms are still outstanding (they are
/// sent again on the new node, as in a failover).
pub const MOVE_DEADLINE: Duration = Duration::from_secs(10);
/// Client frames a session holds back during a planned move; past this it stops reading.
pub const PARK_LIMIT: usize = 4096;

/// When a planned move switches nodes.
#[derive(Debug, PartialEq, Eq)]
pub enum Switch {
    NotYet,
    /// At the safe point.
    Now,
    /// Past the deadline, with something still in flight.
    Forced,
}

/// What a session tells about itself when asked to move.
pub struct Whereabouts<'a> {
    /// The node it runs on; `None` while it connects or fails over.
    pub node: Option<&'a str>,
    /// It is connecting to a node, or its client is closing or gone.
    pub busy: bool,
    /// Why moving it on purpose would lose something (a queue or subscription that lives on
    /// its node), if it would.
    pub pinned: Option<&'static str>,
}

/// Why a session cannot move to `to` now, if it cannot.
pub fn refusal(to: &str, session: &Whereabouts<'_>) -> Option<&'static str> {
    match session.node {
        None => Some("it is connecting or failing over"),
        Some(node) if node == to => Some("it is there already"),
        Some(_) if session.busy => Some("it is closing, reconnecting or its client is gone"),
        Some(_) => session.pinned,
    }
}

/// A move a session is carrying out: it waits for a safe point (what counts as one is the
/// protocol's), then switches; `ack_deadline` and `deadline` bound how long it waits.
pub struct PlannedMove {
    pub to: String,
    pub cause: MoveCause,
    done: Option<oneshot::Sender<MoveOutcome>>,
    ack_deadline: Instant,
    deadline: Instant,
}

impl PlannedMove {
    pub fn start(request: MoveRequest) -> PlannedMove {
        let now = Instant::now();
        PlannedMove {
            to: request.to,
            cause: request.cause,
            done: Some(request.done),
            ack_deadline: now + MOVE_ACK_WAIT,
            deadline: now + MOVE_DEADLINE,
        }
    }

    pub fn refuse(request: MoveRequest, why: &str) {
        let _ = request.done.send(MoveOutcome::NotMoved(why.to_owned()));
    }

    /// When the session should look again even if nothing happens.
    pub fn wake_at(&self) -> Instant {
        self.ack_deadline.min(self.deadline)
    }

    /// `settled`: nothing of the session's is in flight on the old node; `acked`: the client
    /// acked everything it was delivered there.
    pub fn switch(&self, settled: bool, acked: bool) -> Switch {
        let now = Instant::now();
        if settled && (acked || now >= self.ack_deadline) {
            Switch::Now
        } else if now >= self.deadline {
            Switch::Forced
        } else {
            Switch::NotYet
        }
    }

    pub fn finish(mut self, outcome: MoveOutcome) {
        if let Some(done) = self.done.take() {
            let _ = done.send(outcome);
        }
    }
}

/// Client frames held back while a planned move is under way, in the order they came; they go
/// to the new node once the session is there.
pub struct Parked<F> {
    frames: VecDeque<F>,
}

impl<F> Default for Parked<F> {
    fn default() -> Self {
        Parked {
            frames: VecDeque::new(),
        }
    }
}

impl<F> Parked<F> {
    pub fn park(&mut self, frame: F) {
        self.frames.push_back(frame);
    }

    /// Whether the session should stop reading its client until the move is done.
    pub fn is_full(&self) -> bool {
        self.frames.len() >= PARK_LIMIT
    }

    /// Everything parked, to be handled again now that the session runs on its new node.
    pub fn release(&mut self) -> VecDeque<F> {
        std::mem::take(&mut self.frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(to: &str) -> (MoveRequest, oneshot::Receiver<MoveOutcome>) {
        let (done, outcome) = oneshot::channel();
        (
            MoveRequest {
                to: to.into(),
                cause: MoveCause::Rebalance,
                done,
            },
            outcome,
        )
    }

    #[test]
    fn a_session_moves_only_from_a_node_it_is_on_to_another_and_when_nothing_pins_it() {
        let at = |node, busy, pinned| Whereabouts { node, busy, pinned };
        assert!(refusal("b", &at(None, false, None)).is_some());
        assert!(refusal("b", &at(Some("b"), false, None)).is_some());
        assert!(refusal("b", &at(Some("a"), true, None)).is_some());
        assert_eq!(
            refusal("b", &at(Some("a"), false, Some("its queue lives there"))),
            Some("its queue lives there")
        );
        assert_eq!(refusal("b", &at(Some("a"), false, None)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_move_switches_at_the_safe_point_waits_for_acks_a_while_and_is_forced_at_its_deadline()
     {
        let (req, _outcome) = request("b");
        let moving = PlannedMove::start(req);
        assert_eq!(moving.switch(false, false), Switch::NotYet);
        assert_eq!(moving.switch(true, true), Switch::Now);
        assert_eq!(moving.switch(true, false), Switch::NotYet);
        tokio::time::advance(MOVE_ACK_WAIT).await;
        assert_eq!(
            moving.switch(true, false),
            Switch::Now,
            "unacked deliveries are the broker's to redeliver after the ack wait"
        );
        assert_eq!(moving.switch(false, true), Switch::NotYet);
        tokio::time::advance(MOVE_DEADLINE).await;
        assert_eq!(moving.switch(false, true), Switch::Forced);
    }

    #[tokio::test]
    async fn the_planner_hears_how_a_move_ended() {
        let (req, outcome) = request("b");
        PlannedMove::start(req).finish(MoveOutcome::Moved { to: "b".into() });
        assert_eq!(
            outcome.await.ok(),
            Some(MoveOutcome::Moved { to: "b".into() })
        );
        let (req, outcome) = request("b");
        PlannedMove::refuse(req, "no");
        assert_eq!(outcome.await.ok(), Some(MoveOutcome::NotMoved("no".into())));
    }

    #[test]
    fn parked_frames_come_back_in_order_and_fill_up_at_the_limit() {
        let mut parked = Parked::default();
        for i in 0..PARK_LIMIT {
            assert!(!parked.is_full());
            parked.park(i);
        }
        assert!(parked.is_full());
        let released: Vec<usize> = parked.release().into_iter().collect();
        assert_eq!(released.len(), PARK_LIMIT);
        assert!(released.windows(2).all(|w| w[0] < w[1]));
        assert!(!parked.is_full());
    }
}
