//! Node choice among the live candidates.

use crate::cluster::node::Node;
use crate::config::Balance;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Balancer {
    strategy: Balance,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(strategy: Balance) -> Balancer {
        Balancer {
            strategy,
            next: AtomicUsize::new(0),
        }
    }

    pub fn strategy(&self) -> Balance {
        self.strategy
    }

    /// Picks one of `candidates` (in a stable order, e.g. by name).
    pub fn pick<'a>(&self, candidates: &[&'a Arc<Node>]) -> Option<&'a Arc<Node>> {
        if candidates.is_empty() {
            return None;
        }
        let index = match self.strategy {
            Balance::Random => rand::random_range(0..candidates.len()),
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % candidates.len(),
            Balance::LeastConnections => {
                let least = candidates.iter().map(|n| n.sessions()).min()?;
                // Ties are broken at random so that equal nodes share new sessions evenly.
                let tied: Vec<usize> = (0..candidates.len())
                    .filter(|&i| candidates[i].sessions() == least)
                    .collect();
                tied[rand::random_range(0..tied.len())]
            }
        };
        Some(candidates[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::node::NodeSpec;
    use std::collections::{BTreeMap, BTreeSet};

    fn nodes(n: usize) -> Vec<Arc<Node>> {
        (0..n)
            .map(|i| {
                let spec = NodeSpec {
                    name: format!("n{i}"),
                    endpoints: BTreeMap::from([(
                        "amqp".to_string(),
                        format!("127.0.0.1:{}", 5000 + i).parse().unwrap(),
                    )]),
                };
                let monitored = BTreeSet::from(["amqp".to_string()]);
                Arc::new(Node::new("test".into(), spec, &monitored, "static"))
            })
            .collect()
    }

    fn counts(balancer: &Balancer, nodes: &[Arc<Node>], picks: usize) -> Vec<usize> {
        let refs: Vec<&Arc<Node>> = nodes.iter().collect();
        let mut counts = vec![0; nodes.len()];
        for _ in 0..picks {
            let picked = balancer.pick(&refs).unwrap();
            counts[nodes.iter().position(|n| Arc::ptr_eq(n, picked)).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_cycles() {
        let nodes = nodes(3);
        assert_eq!(
            counts(&Balancer::new(Balance::RoundRobin), &nodes, 9),
            [3, 3, 3]
        );
    }

    #[test]
    fn random_reaches_every_node() {
        let nodes = nodes(3);
        let counts = counts(&Balancer::new(Balance::Random), &nodes, 3000);
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
    }

    #[test]
    fn least_connections_fills_the_emptiest_node() {
        let nodes = nodes(3);
        let balancer = Balancer::new(Balance::LeastConnections);
        let refs: Vec<&Arc<Node>> = nodes.iter().collect();
        let mut leases = Vec::new();
        for _ in 0..10 {
            leases.push(balancer.pick(&refs).unwrap().lease());
        }
        let sessions: Vec<usize> = nodes.iter().map(|n| n.sessions()).collect();
        let (min, max) = (
            sessions.iter().min().unwrap(),
            sessions.iter().max().unwrap(),
        );
        assert!(max - min <= 1, "{sessions:?}");
        leases.retain(|l| !Arc::ptr_eq(l.node(), &nodes[0]));
        assert!(Arc::ptr_eq(balancer.pick(&refs).unwrap(), &nodes[0]));
    }
}
