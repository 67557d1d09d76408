//! Draining a node: it takes no new sessions, and the sessions on it move off at their next
//! safe point (planned moves, see [`crate::rebalance`]), before the node is stopped.
//!
//! An operator drains a node (`tether drain NODE`, `POST /drain`) before stopping or upgrading
//! it. RabbitMQ's own maintenance mode (`rabbitmq-upgrade drain`) cannot be seen coming: the
//! 3.10 management API does not report it, and the broker closes every client connection the
//! moment it enters it (tether fails those sessions over). Causes are kept as a set so that
//! another source of drains can be added without one undoing the other.
//!
//! The causes are kept by node name, not on the [`super::node::Node`]: a node that discovery
//! replaces (its endpoints changed) or that leaves and comes back stays drained.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainCause {
    /// `tether drain NODE` or `POST /drain`.
    Operator,
}

impl DrainCause {
    pub fn label(self) -> &'static str {
        match self {
            DrainCause::Operator => "operator",
        }
    }
}
/// The drained nodes of one cluster, by name, with their causes.
#[derive(Default)]
pub struct Drains {
    causes: Mutex<BTreeMap<String, BTreeSet<DrainCause>>>,
}

impl Drains {
    /// Adds (`on`) or removes `cause` for `node`; returns whether the node's drained state
    /// changed (it was not drained and now is, or the other way round).
    pub fn set(&self, node: &str, cause: DrainCause, on: bool) -> bool {
        let mut causes = self.causes.lock().unwrap_or_else(|e| e.into_inner());
        let was = causes.contains_key(node);
        if on {
            causes.entry(node.to_string()).or_default().insert(cause);
        } else if let Some(set) = causes.get_mut(node) {
            set.remove(&cause);
            if set.is_empty() {
                causes.remove(node);
            }
        }
        was != causes.contains_key(node)
    }

    pub fn is_drained(&self, node: &str) -> bool {
        self.causes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(node)
    }

    /// Why `node` is drained; empty when it is not.
    pub fn causes(&self, node: &str) -> Vec<DrainCause> {
        self.causes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Every drained node's name.
    pub fn nodes(&self) -> BTreeSet<String> {
        self.causes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_drained_until_its_cause_is_lifted_and_only_changes_are_reported() {
        let drains = Drains::default();
        assert!(drains.set("r1", DrainCause::Operator, true));
        assert!(
            !drains.set("r1", DrainCause::Operator, true),
            "drained already"
        );
        assert_eq!(drains.causes("r1"), vec![DrainCause::Operator]);
        assert_eq!(drains.nodes(), BTreeSet::from(["r1".to_string()]));
        assert!(drains.causes("r2").is_empty());
        assert!(drains.set("r1", DrainCause::Operator, false));
        assert!(!drains.is_drained("r1"));
        assert!(
            !drains.set("r1", DrainCause::Operator, false),
            "nothing to lift"
        );
    }
}
