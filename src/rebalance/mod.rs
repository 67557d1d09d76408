//! Keeping sessions balanced: every live node of a cluster should hold an even share of each
//! listener's sessions, counted separately for sessions that consume (at least one consumer)
//! and the others, so that no broker is left without consumers. A session is moved by asking
//! it to: it moves itself at a safe point (see [`crate::session::moving`]), because only it
//! knows when no publish is in flight and its confirms are drained.
//!
//! Sessions register a [`SessionSlot`] with their listener and keep it current (node, whether
//! they consume, whether they can move); one task per listener ([`run`]) reads the slots every
//! `rebalance_pace`, picks at most one move ([`plan`]) and waits for its outcome before the next.
//! The same task first asks every session on a drained node to move off ([`drain`]), whether
//! rebalancing is on or not, and without waiting for the pace; then, with `locality` on, moves
//! a session to the node that leads its queues ([`locality`]), within the same pace.

mod drain;
pub mod locality;

use crate::cluster::leaders::QueueLeaders;
use crate::config::ClusterConfig;
use crate::listener::Listener;
use crate::metrics::names;
use crate::session::moving::{MoveCause, MoveOutcome, MoveRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long a session may take to reach a safe point and move before the planner stops
/// waiting for it (the session still finishes its move; the planner just goes on).
const MOVE_WAIT: Duration = Duration::from_secs(30);

/// What the planner knows about one session; the session keeps it current.
pub struct SessionSlot {
    /// The node it runs on; `None` while it connects or fails over.
    node: Mutex<Option<String>>,
    consumes: AtomicBool,
    /// Whether a move would lose nothing (e.g. no exclusive queue that lives on its node).
    movable: AtomicBool,
    /// The queues it is placed by (`None`: none), for queue locality.
    consumed: Mutex<Option<Arc<locality::Consumed>>>,
    moves: Mailbox,
}

/// Where a session's move request waits for it: one at a time (a session takes on one move at a
/// time). Thousands of sessions each hold one, so it is a slot and a `Notify` rather than a
/// channel, which would allocate a block of 32 entries for each.
#[derive(Default)]
pub struct Mailbox {
    request: Mutex<Option<MoveRequest>>,
    /// The session is gone: nothing sent would be read.
    closed: AtomicBool,
    arrived: tokio::sync::Notify,
}

impl Mailbox {
    /// Leaves a request; gives it back if one is waiting already or the session is gone.
    pub fn try_send(&self, request: MoveRequest) -> Result<(), MoveRequest> {
        let mut slot = self.request.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() || self.closed.load(Ordering::Acquire) {
            return Err(request);
        }
        *slot = Some(request);
        drop(slot);
        self.arrived.notify_one();
        Ok(())
    }

    /// The next request. Cancel-safe: a request is taken only when returned.
    pub async fn recv(&self) -> MoveRequest {
        loop {
            let arrived = self.arrived.notified();
            if let Some(request) = self.take() {
                return request;
            }
            arrived.await;
        }
    }

    fn take(&self) -> Option<MoveRequest> {
        self.request
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The session is gone: a request waiting is dropped (its planner hears at once), and no
    /// other is taken.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        drop(self.take());
    }
}

impl SessionSlot {
    /// The next move request for the session. Cancel-safe.
    pub async fn next_move(&self) -> MoveRequest {
        self.moves.recv().await
    }

    pub fn set_node(&self, node: Option<&str>) {
        *self.node.lock().unwrap_or_else(|e| e.into_inner()) = node.map(str::to_owned);
    }

    pub fn set_consumes(&self, consumes: bool) {
        self.consumes.store(consumes, Ordering::Relaxed);
    }

    pub fn set_movable(&self, movable: bool) {
        self.movable.store(movable, Ordering::Relaxed);
    }

    /// What the session is placed by changed (its consumers, or its publishes' queue).
    pub fn set_consumed(&self, consumed: Option<locality::Consumed>) {
        *self.consumed.lock().unwrap_or_else(|e| e.into_inner()) = consumed.map(Arc::new);
    }
}

/// A listener's sessions as the planner sees them.
#[derive(Default)]
pub struct Registry {
    next_id: AtomicU64,
    slots: Mutex<BTreeMap<u64, Arc<SessionSlot>>>,
    /// Sessions asked to move off a drained node whose move is not over yet: they are not
    /// asked again meanwhile.
    draining: drain::Asked,
    /// Sessions lately asked to move for locality, held back from another such move.
    locality: locality::Recent,
}

/// A session's registration; dropping it unregisters the session.
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
    pub slot: Arc<SessionSlot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.slot.moves.close();
        self.registry
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Registry {
    /// Registers a session; move requests for it arrive in its slot's [`Mailbox`].
    pub fn register(self: &Arc<Self>) -> Registration {
        let slot = Arc::new(SessionSlot {
            node: Mutex::new(None),
            consumes: AtomicBool::new(false),
            movable: AtomicBool::new(true),
            consumed: Mutex::new(None),
            moves: Mailbox::default(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, slot.clone());
        Registration {
            registry: self.clone(),
            id,
            slot,
        }
    }

    /// Sessions per node, and how many of them consume: `node → (sessions, consuming)`.
    pub fn shares(&self) -> BTreeMap<String, (usize, usize)> {
        let mut shares: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (placement, _) in self.placements() {
            if let Some(node) = placement.node {
                let share = shares.entry(node).or_default();
                share.0 += 1;
                share.1 += usize::from(placement.consumes);
            }
        }
        shares
    }

    /// Sessions that consume from, or only publish to, named queues: where each runs, whether
    /// it consumes, and its queues.
    pub fn queue_users(&self) -> Vec<(Option<String>, bool, Arc<locality::Consumed>)> {
        (self.placements().into_iter())
            .filter_map(|(p, _)| Some((p.node, p.consumes, p.consumed?)))
            .collect()
    }

    fn placements(&self) -> Vec<(Placement, Arc<SessionSlot>)> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .map(|(id, slot)| {
                let placement = Placement {
                    id: *id,
                    node: slot.node.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                    consumes: slot.consumes.load(Ordering::Relaxed),
                    movable: slot.movable.load(Ordering::Relaxed),
                    consumed: slot
                        .consumed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                };
                (placement, slot.clone())
            })
            .collect()
    }
}

/// One session, for [`plan`].
#[derive(Clone, Debug)]
pub struct Placement {
    pub id: u64,
    pub node: Option<String>,
    pub consumes: bool,
    pub movable: bool,
    pub consumed: Option<Arc<locality::Consumed>>,
}

/// The one move that most evens out the sessions, if any: first a session stranded on a node
/// that left the cluster (no source lists it; it takes no new sessions), then one from the
/// fullest live node to the emptiest when they differ by more than one. Consuming sessions are
/// balanced before the others. `live` are the nodes that take new sessions; `known` every node
/// of the cluster (a session on a known node that is not live is failing over by itself).
pub fn plan(
    live: &[String],
    known: &BTreeSet<String>,
    placements: &[Placement],
) -> Option<(u64, String)> {
    if live.is_empty() {
        return None;
    }
    for consumes in [true, false] {
        let class: Vec<&Placement> = placements
            .iter()
            .filter(|p| p.consumes == consumes && p.node.is_some())
            .collect();
        let mut counts: BTreeMap<&str, usize> = live.iter().map(|n| (n.as_str(), 0)).collect();
        for p in &class {
            if let Some(count) = p.node.as_deref().and_then(|n| counts.get_mut(n)) {
                *count += 1;
            }
        }
        let emptiest = |counts: &BTreeMap<&str, usize>| {
            counts
                .iter()
                .min_by_key(|(name, count)| (**count, *name))
                .map(|(name, _)| name.to_string())
        };
        let stranded = class
            .iter()
            .find(|p| p.movable && p.node.as_deref().is_some_and(|n| !known.contains(n)));
        if let Some(p) = stranded {
            return emptiest(&counts).map(|to| (p.id, to));
        }
        let (fullest, most) = counts
            .iter()
            .max_by_key(|(name, count)| (**count, std::cmp::Reverse(*name)))
            .map(|(name, count)| (name.to_string(), *count))?;
        let least = counts.values().min().copied().unwrap_or(0);
        if most <= least + 1 {
            continue;
        }
        // The newest session on the fullest node: it has had the least time to build up state.
        let candidate = class
            .iter()
            .rev()
            .find(|p| p.movable && p.node.as_deref() == Some(fullest.as_str()));
        if let Some(p) = candidate {
            return emptiest(&counts).map(|to| (p.id, to));
        }
    }
    None
}

/// One cluster's rebalancing, shared by the planners of the listeners in front of it and by
/// their sessions: whether it is on, the pace of moves across those listeners, and the count
/// of moves done. The server keeps one per cluster and updates it on reload.
pub struct ClusterRebalance {
    /// `rebalance` and `rebalance_pace`; read once per planner tick.
    settings: Mutex<(bool, Duration)>,
    /// When the last move was started, to pace them.
    last_move: Mutex<Option<std::time::Instant>>,
    moves: metrics::Counter,
    drain_moves: metrics::Counter,
    locality_moves: metrics::Counter,
}

impl ClusterRebalance {
    pub fn new(config: &ClusterConfig) -> Arc<ClusterRebalance> {
        Arc::new(ClusterRebalance {
            settings: Mutex::new((config.rebalance, config.rebalance_pace)),
            last_move: Mutex::new(None),
            moves: metrics::counter!(names::REBALANCE_MOVES_TOTAL, "cluster" => config.name.clone()),
            drain_moves: metrics::counter!(names::DRAIN_MOVES_TOTAL, "cluster" => config.name.clone()),
            locality_moves: metrics::counter!(names::LOCALITY_MOVES_TOTAL, "cluster" => config.name.clone()),
        })
    }

    /// A reload changed the cluster's settings.
    pub fn configure(&self, config: &ClusterConfig) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) =
            (config.rebalance, config.rebalance_pace);
    }

    fn settings(&self) -> (bool, Duration) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn enabled(&self) -> bool {
        self.settings().0
    }

    pub fn pace(&self) -> Duration {
        self.settings().1
    }

    /// A session arrived where a planned move took it.
    pub fn count_move(&self, cause: MoveCause) {
        match cause {
            MoveCause::Rebalance => self.moves.increment(1),
            MoveCause::Drain => self.drain_moves.increment(1),
            MoveCause::Locality => self.locality_moves.increment(1),
        }
    }

    /// Whether a move may start now: at most one per `rebalance_pace` in the cluster,
    /// whichever listener asks.
    pub fn take_move_slot(&self) -> bool {
        let pace = self.pace();
        let mut last = self.last_move.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < pace) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Plans and requests moves for one listener's sessions until `stop`: off drained nodes, to
/// their queues' leader while the cluster has `locality` on, and evening out while it has
/// `rebalance` on. At most one locality or rebalancing move per `rebalance_pace` in the whole
/// cluster.
pub async fn run(listener: Arc<Listener>, stop: CancellationToken) {
    let gauges = LocalityGauges::new(&listener);
    plan_and_move(&listener, &gauges, stop).await;
    gauges.set(locality::Tally::default());
}

/// `tether_locality_sessions` of one listener.
struct LocalityGauges([metrics::Gauge; 3]);

impl LocalityGauges {
    fn new(listener: &Listener) -> LocalityGauges {
        let gauge = |placement: &'static str| {
            metrics::gauge!(names::LOCALITY_SESSIONS,
                "cluster" => listener.cluster.name.to_string(),
                "listener" => listener.config.name.clone(),
                "placement" => placement)
        };
        LocalityGauges([gauge("local"), gauge("remote"), gauge("split")])
    }

    fn set(&self, tally: locality::Tally) {
        let [local, remote, split] = &self.0;
        local.set(tally.local as f64);
        remote.set(tally.remote as f64);
        split.set(tally.split as f64);
    }
}

async fn plan_and_move(listener: &Arc<Listener>, gauges: &LocalityGauges, stop: CancellationToken) {
    let cluster = listener.cluster.clone();
    let endpoint = listener.config.endpoint().to_string();
    loop {
        let pace = listener.rebalance.pace();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pace) => {}
            // ActiveMQ's rebalanceConnection / reconnectTo: look now rather than at the next tick.
            _ = cluster.rebalance_hint.notified() => {}
        }
        let nodes = cluster.nodes();
        let live: Vec<String> = nodes
            .iter()
            .filter(|n| n.live_endpoint(&endpoint).is_some())
            .map(|n| n.name.clone())
            .collect();
        let placements = listener.sessions.placements();
        // Draining does not wait for `rebalance`, nor for the pace: the node is about to go.
        let drained: BTreeSet<String> = (nodes.iter())
            .filter(|n| n.is_drained())
            .map(|n| n.name.clone())
            .collect();
        if !drained.is_empty() {
            drain::move_off(listener, &live, &drained, &placements);
        }
        let mut plain: Vec<Placement> = placements.iter().map(|(p, _)| p.clone()).collect();
        if cluster.leaders.enabled() {
            let placed = locality_of(&plain, &cluster.leaders);
            gauges.set(locality::tally(&placed));
            if placed.iter().any(|p| p.home == locality::Home::Unknown) {
                cluster.leaders.ask();
            }
            let placed_home = locality::placed_at_home(&live, &placed);
            // Sessions locality places are not balancing's to move, nor to count.
            plain.retain(|p| !placed_home.contains(&p.id));
            let now = std::time::Instant::now();
            let recent = listener.sessions.locality.snapshot(now);
            if let Some((id, to)) = locality::plan(&live, &placed, &recent, now, 1).pop()
                && listener.rebalance.take_move_slot()
            {
                listener.sessions.locality.asked(id, now);
                if let Some(entry) = placements.iter().find(|(p, _)| p.id == id) {
                    ask_to_move(listener, entry, to, MoveCause::Locality);
                }
                continue;
            }
        } else {
            // A reload turned it off: nothing is counted any more.
            gauges.set(locality::Tally::default());
        }
        if !listener.rebalance.enabled() {
            continue;
        }
        let known: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let Some((id, to)) = plan(&live, &known, &plain) else {
            continue;
        };
        if !listener.rebalance.take_move_slot() {
            continue;
        }
        let Some(entry) = placements.iter().find(|(p, _)| p.id == id) else {
            continue;
        };
        let Some(outcome) = ask_to_move(listener, entry, to, MoveCause::Rebalance) else {
            continue; // it is moving already, or gone
        };
        // Rebalancing waits for its move: the next one is planned from where this one ended.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = outcome => {}
        }
    }
}

/// The sessions among `placements` that consume from or publish to named queues, with where
/// those are led.
fn locality_of(placements: &[Placement], leaders: &QueueLeaders) -> Vec<locality::Placed> {
    (placements.iter())
        .filter_map(|p| {
            let consumed = p.consumed.as_ref()?;
            Some(locality::Placed {
                id: p.id,
                node: p.node.clone(),
                consumes: p.consumes,
                home: consumed.home(leaders),
                movable: p.movable,
            })
        })
        .collect()
}

/// Leaves a move request in the session's mailbox and logs what becomes of it; resolves when
/// the session moved, refused, or [`MOVE_WAIT`] passed. `None`: the session could not take
/// the request (it is taking another, or gone).
fn ask_to_move(
    listener: &Listener,
    (placement, slot): &(Placement, Arc<SessionSlot>),
    to: String,
    cause: MoveCause,
) -> Option<oneshot::Receiver<()>> {
    let (done, outcome) = oneshot::channel();
    let request = MoveRequest {
        to: to.clone(),
        cause,
        done,
    };
    slot.moves.try_send(request).ok()?;
    let from = placement.node.clone().unwrap_or_default();
    let name = listener.config.name.clone();
    let what = cause.label();
    tracing::info!(listener = %name, %from, %to, consumer = placement.consumes,
        "{what}: moving a session");
    let (finished, waited) = oneshot::channel();
    tokio::spawn(async move {
        match tokio::time::timeout(MOVE_WAIT, outcome).await {
            Ok(Ok(MoveOutcome::Moved { .. })) => {}
            Ok(Ok(MoveOutcome::NotMoved(why))) => {
                tracing::info!(listener = %name, %from, %to, %why,
                    "{what}: the session did not move");
            }
            Ok(Err(_)) => {} // the session ended meanwhile
            Err(_) => tracing::warn!(listener = %name, %from, %to,
                "{what}: the session has not moved yet; going on"),
        }
        let _ = finished.send(());
    });
    Some(waited)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(id: u64, node: &str, consumes: bool) -> Placement {
        Placement {
            id,
            node: Some(node.into()),
            consumes,
            movable: true,
            consumed: None,
        }
    }

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// Applies planned moves until there is none; returns how many it took.
    fn settle(live: &[&str], placements: &mut [Placement]) -> usize {
        let live = nodes(live);
        let known: BTreeSet<String> = live.iter().cloned().collect();
        let mut moves = 0;
        while let Some((id, to)) = plan(&live, &known, placements) {
            let p = placements.iter_mut().find(|p| p.id == id).unwrap();
            assert_ne!(
                p.node.as_deref(),
                Some(to.as_str()),
                "a move goes somewhere"
            );
            p.node = Some(to);
            moves += 1;
            assert!(moves < 100, "plan does not converge");
        }
        moves
    }

    fn per_node(placements: &[Placement], consumes: bool) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for p in placements.iter().filter(|p| p.consumes == consumes) {
            *counts.entry(p.node.clone().unwrap()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn eight_consumers_and_four_producers_end_two_and_one_per_node_when_a_fourth_node_returns() {
        // Eight consumers and four producers spread over three nodes while r4 was down.
        let mut placements: Vec<Placement> = (0..12)
            .map(|i| at(i, ["r1", "r2", "r3"][i as usize % 3], i < 8))
            .collect();
        let moves = settle(&["r1", "r2", "r3", "r4"], &mut placements);
        assert!(moves <= 4, "only what is needed moves: {moves}");
        for (_, count) in per_node(&placements, true) {
            assert_eq!(count, 2);
        }
        for (_, count) in per_node(&placements, false) {
            assert_eq!(count, 1);
        }
        assert_eq!(per_node(&placements, true).len(), 4);
    }

    #[test]
    fn an_even_spread_moves_nothing() {
        let mut placements = vec![
            at(1, "a", true),
            at(2, "b", true),
            at(3, "a", false),
            at(4, "b", false),
            at(5, "b", false),
        ];
        assert_eq!(settle(&["a", "b"], &mut placements), 0);
    }

    #[test]
    fn sessions_on_a_node_that_left_move_first_and_immovable_ones_stay() {
        let live = nodes(&["a", "b"]);
        let known: BTreeSet<String> = live.iter().cloned().collect();
        let mut stuck = at(1, "gone", false);
        stuck.movable = false;
        let placements = vec![stuck, at(2, "gone", false), at(3, "a", false)];
        assert_eq!(plan(&live, &known, &placements), Some((2, "b".into())));
        // A session still failing over (no node) or on a known node that is down is left alone.
        let known: BTreeSet<String> = ["a", "b", "down"].iter().map(|s| s.to_string()).collect();
        let placements = vec![
            Placement {
                node: None,
                ..at(1, "x", false)
            },
            at(2, "down", false),
        ];
        assert_eq!(plan(&live, &known, &placements), None);
    }

    #[test]
    fn no_live_node_no_move() {
        assert_eq!(plan(&[], &BTreeSet::new(), &[at(1, "a", true)]), None);
    }

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

    #[tokio::test]
    async fn a_mailbox_holds_one_request_and_refuses_once_closed() {
        let mailbox = Mailbox::default();
        let (first, _) = request("a");
        let (second, _) = request("b");
        assert!(mailbox.try_send(first).is_ok());
        assert!(mailbox.try_send(second).is_err(), "one at a time");
        assert_eq!(mailbox.recv().await.to, "a");
        // A receiver that waits is woken by the next request.
        let (third, _) = request("c");
        let (received, sent) = tokio::join!(mailbox.recv(), async {
            tokio::task::yield_now().await;
            mailbox.try_send(third).is_ok()
        });
        assert!(sent);
        assert_eq!(received.to, "c");
        // Closed with a request waiting: its planner hears at once; later ones are refused.
        let (fourth, outcome) = request("d");
        assert!(mailbox.try_send(fourth).is_ok());
        mailbox.close();
        assert!(outcome.await.is_err());
        let (fifth, _) = request("e");
        assert!(mailbox.try_send(fifth).is_err());
    }
}
