//! The node set of a cluster as the union of what its discovery sources say.
//!
//! Each source reports a stream of [`Update`]s about the nodes it knows; a node that several
//! sources report is one node (matched by name), and it stays while any source still lists it.

use crate::cluster::node::NodeSpec;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The source's complete node set, replacing whatever it said before.
    Reset(Vec<NodeSpec>),
    Add(NodeSpec),
    Remove(String),
}

/// A node of the merged topology and the sources that list it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedNode {
    pub spec: NodeSpec,
    pub sources: BTreeSet<String>,
}

#[derive(Default, Debug)]
pub struct Topology {
    by_source: BTreeMap<String, BTreeMap<String, NodeSpec>>,
}

impl Topology {
    pub fn apply(&mut self, source: &str, update: Update) {
        let nodes = self.by_source.entry(source.to_string()).or_default();
        match update {
            Update::Reset(specs) => {
                *nodes = specs.into_iter().map(|s| (s.name.clone(), s)).collect();
            }
            Update::Add(spec) => {
                nodes.insert(spec.name.clone(), spec);
            }
            Update::Remove(name) => {
                nodes.remove(&name);
            }
        }
    }

    /// The union of every source's nodes by name. Where two sources give the same endpoint of
    /// one node different addresses, the source that sorts first wins; other endpoints add up.
    pub fn merged(&self) -> BTreeMap<String, MergedNode> {
        let mut merged: BTreeMap<String, MergedNode> = BTreeMap::new();
        for (source, nodes) in &self.by_source {
            for (name, spec) in nodes {
                let entry = merged.entry(name.clone()).or_insert_with(|| MergedNode {
                    spec: NodeSpec {
                        name: name.clone(),
                        endpoints: BTreeMap::new(),
                    },
                    sources: BTreeSet::new(),
                });
                entry.sources.insert(source.clone());
                for (endpoint, address) in &spec.endpoints {
                    entry
                        .spec
                        .endpoints
                        .entry(endpoint.clone())
                        .or_insert_with(|| address.clone());
                }
            }
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, endpoints: &[(&str, &str)]) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            endpoints: endpoints
                .iter()
                .map(|(e, a)| (e.to_string(), a.parse().unwrap()))
                .collect(),
        }
    }

    #[test]
    fn a_node_listed_by_two_sources_is_one_node_until_both_drop_it() {
        let mut topology = Topology::default();
        topology.apply(
            "static",
            Update::Reset(vec![spec("a", &[("amqp", "10.0.0.1:5672")])]),
        );
        topology.apply(
            "dns:x",
            Update::Reset(vec![
                spec("a", &[("stomp", "10.0.0.1:61613")]),
                spec("b", &[("amqp", "10.0.0.2:5672")]),
            ]),
        );
        let merged = topology.merged();
        assert_eq!(merged.len(), 2);
        assert_eq!(merged["a"].spec.endpoints.len(), 2, "endpoints add up");
        assert_eq!(merged["a"].sources.len(), 2);

        topology.apply("dns:x", Update::Remove("a".into()));
        assert_eq!(merged_names(&topology), ["a", "b"]);
        topology.apply("static", Update::Reset(vec![]));
        assert_eq!(merged_names(&topology), ["b"]);
        topology.apply(
            "static",
            Update::Add(spec("c", &[("amqp", "10.0.0.3:5672")])),
        );
        assert_eq!(merged_names(&topology), ["b", "c"]);
    }

    fn merged_names(topology: &Topology) -> Vec<String> {
        topology.merged().into_keys().collect()
    }
}
