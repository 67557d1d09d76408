//! The node set of a cluster as the union of what its discovery sources say.
//!
//! Each source reports a stream of [`Update`]s about the nodes it knows; a node that several
//! sources report is one node (matched by name), and it stays while any source still lists it.

use crate::cluster::node::NodeSpec;
use std::collections::{BTreeMap, BTreeSet};

/// The source of the nodes written in the config file.
pub const STATIC_SOURCE: &str = "static";

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
    /// The other names sources gave it (a seed `r1` is advertised as `r1@localhost`).
    pub aliases: BTreeSet<String>,
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

    /// The union of every source's nodes. A node is one node when sources give it the same
    /// name, or when they share an endpoint address (a seed written as `r1` in the file and
    /// advertised as `r1@localhost` by the broker); it keeps the name the first source gave it,
    /// and the static file comes first. Where two sources give the same endpoint different
    /// addresses, the earlier source wins; other endpoints add up.
    pub fn merged(&self) -> BTreeMap<String, MergedNode> {
        let mut merged: Vec<MergedNode> = Vec::new();
        let static_first = self
            .by_source
            .iter()
            .filter(|(source, _)| *source == STATIC_SOURCE)
            .chain(self.by_source.iter().filter(|(s, _)| *s != STATIC_SOURCE));
        for (source, nodes) in static_first {
            for (name, spec) in nodes {
                let same = merged.iter().position(|m| {
                    m.spec.name == *name
                        || spec
                            .endpoints
                            .values()
                            .any(|a| m.spec.endpoints.values().any(|b| a == b))
                });
                let entry = match same {
                    Some(i) => &mut merged[i],
                    None => {
                        merged.push(MergedNode {
                            spec: NodeSpec {
                                name: name.clone(),
                                endpoints: BTreeMap::new(),
                            },
                            sources: BTreeSet::new(),
                            aliases: BTreeSet::new(),
                        });
                        merged.last_mut().expect("just pushed")
                    }
                };
                entry.sources.insert(source.clone());
                if entry.spec.name != *name {
                    entry.aliases.insert(name.clone());
                }
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
            .into_iter()
            .map(|m| (m.spec.name.clone(), m))
            .collect()
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

    #[test]
    fn a_node_advertised_under_another_name_is_the_seed_it_shares_an_address_with() {
        let mut topology = Topology::default();
        topology.apply(
            "static",
            Update::Reset(vec![spec("r1", &[("amqp", "127.0.0.1:5681")])]),
        );
        topology.apply(
            "rabbitmq:http://127.0.0.1:15681",
            Update::Reset(vec![
                spec(
                    "r1@localhost",
                    &[("amqp", "127.0.0.1:5681"), ("stomp", "127.0.0.1:61681")],
                ),
                spec("r2@localhost", &[("amqp", "127.0.0.1:5682")]),
            ]),
        );
        assert_eq!(merged_names(&topology), ["r1", "r2@localhost"]);
        let merged = topology.merged();
        assert_eq!(
            merged["r1"].aliases,
            BTreeSet::from(["r1@localhost".to_string()]),
            "the name the broker gives it is kept"
        );
        assert_eq!(merged["r1"].spec.endpoints.len(), 2, "the seed gains stomp");
        assert_eq!(merged["r1"].sources.len(), 2);
    }

    fn merged_names(topology: &Topology) -> Vec<String> {
        topology.merged().into_keys().collect()
    }
}
