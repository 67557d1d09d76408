//! Moving sessions off drained nodes (see [`crate::cluster::Cluster::drain`]). Every movable session on
//! one is asked at once, not one per `rebalance_pace`: the node is about to go, and each
//! session waits for its own safe point anyway. They are spread over the nodes that take
//! sessions, fewest first, consumers and the others each evened out, as [`super::plan`] does.

use super::{Placement, SessionSlot};
use crate::listener::Listener;
use crate::session::moving::MoveCause;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// The sessions of a listener asked to move off a drained node whose move is not over.
#[derive(Default, Clone)]
pub(super) struct Asked(Arc<Mutex<BTreeSet<u64>>>);

impl Asked {
    fn snapshot(&self) -> BTreeSet<u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, id: u64, asked: bool) {
        let mut ids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if asked {
            ids.insert(id);
        } else {
            ids.remove(&id);
        }
    }
}

/// Where each session on a `drained` node goes (session id, node), leaving out those that
/// cannot move and those `asked` already.
pub(super) fn plan(
    live: &[String],
    drained: &BTreeSet<String>,
    placements: &[Placement],
    asked: &BTreeSet<u64>,
) -> Vec<(u64, String)> {
    let mut moves = Vec::new();
    if live.is_empty() {
        return moves;
    }
    for consumes in [true, false] {
        let class = || placements.iter().filter(move |p| p.consumes == consumes);
        let mut counts: BTreeMap<&str, usize> = live.iter().map(|n| (n.as_str(), 0)).collect();
        for p in class() {
            if let Some(count) = p.node.as_deref().and_then(|n| counts.get_mut(n)) {
                *count += 1;
            }
        }
        let leaving = class().filter(|p| {
            p.movable
                && !asked.contains(&p.id)
                && p.node.as_deref().is_some_and(|n| drained.contains(n))
        });
        for p in leaving {
            let Some((to, count)) = counts
                .iter_mut()
                .min_by_key(|(name, count)| (**count, **name))
            else {
                break;
            };
            *count += 1;
            moves.push((p.id, to.to_string()));
        }
    }
    moves
}

/// Asks the movable sessions of `placements` that run on a `drained` node to move to one of
/// `live`. A session that is not asked now (it could not take the request) is asked at the
/// planner's next tick.
pub(super) fn move_off(
    listener: &Listener,
    live: &[String],
    drained: &BTreeSet<String>,
    placements: &[(Placement, Arc<SessionSlot>)],
) {
    let asked = &listener.sessions.draining;
    let plain: Vec<Placement> = placements.iter().map(|(p, _)| p.clone()).collect();
    let moves = plan(live, drained, &plain, &asked.snapshot());
    if moves.is_empty() {
        return;
    }
    let slots: BTreeMap<u64, &(Placement, Arc<SessionSlot>)> =
        placements.iter().map(|entry| (entry.0.id, entry)).collect();
    for (id, to) in moves {
        let Some(entry) = slots.get(&id) else {
            continue;
        };
        let Some(finished) = super::ask_to_move(listener, entry, to, MoveCause::Drain) else {
            continue; // it is taking another move, or gone
        };
        asked.set(id, true);
        // Over or not, the session may be asked again at the next tick.
        let asked = asked.clone();
        tokio::spawn(async move {
            let _ = finished.await;
            asked.set(id, false);
        });
    }
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

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn every_session_on_a_drained_node_leaves_at_once_spread_over_the_others() {
        // r1 is drained with four consumers and two others; r2 and r3 hold one consumer each.
        let mut placements: Vec<Placement> = (0..6).map(|i| at(i, "r1", i < 4)).collect();
        placements.push(at(10, "r2", true));
        placements.push(at(11, "r3", true));
        let drained = BTreeSet::from(["r1".to_string()]);
        let moves = plan(
            &names(&["r2", "r3"]),
            &drained,
            &placements,
            &BTreeSet::new(),
        );
        assert_eq!(moves.len(), 6, "all at once: {moves:?}");
        let to = |ids: std::ops::Range<u64>| {
            let mut count: BTreeMap<String, usize> = BTreeMap::new();
            for (_, node) in moves.iter().filter(|(id, _)| ids.contains(id)) {
                *count.entry(node.clone()).or_default() += 1;
            }
            count
        };
        // Consumers end three and three; the others one and one.
        assert_eq!(
            to(0..4),
            BTreeMap::from([("r2".into(), 2), ("r3".into(), 2)])
        );
        assert_eq!(
            to(4..6),
            BTreeMap::from([("r2".into(), 1), ("r3".into(), 1)])
        );
    }

    #[test]
    fn pinned_sessions_and_those_asked_already_stay_and_nothing_moves_without_a_live_node() {
        let mut pinned = at(1, "r1", false);
        pinned.movable = false;
        let placements = vec![
            pinned,
            at(2, "r1", false),
            at(3, "r1", false),
            at(4, "r2", true),
        ];
        let drained = BTreeSet::from(["r1".to_string()]);
        let moves = plan(&names(&["r2"]), &drained, &placements, &BTreeSet::from([2]));
        assert_eq!(moves, vec![(3, "r2".to_string())]);
        assert!(plan(&[], &drained, &placements, &BTreeSet::new()).is_empty());
        // Sessions failing over (no node) are left to their failover.
        let connecting = Placement {
            node: None,
            ..at(5, "r1", false)
        };
        assert!(plan(&names(&["r2"]), &drained, &[connecting], &BTreeSet::new()).is_empty());
    }
}
