//! Queue locality (`locality = true`): a session whose consumers all read from queues led by
//! one node belongs on that node, where deliveries need no hop over the inter-node link; so
//! does a session with no consumer that publishes only through the default exchange to one
//! queue.
//!
//! Sessions say what they consume from, or publish to ([`Consumed`], reported only when that
//! changes); the planner looks each queue up in the leaders RabbitMQ discovery reads
//! ([`QueueLeaders`]) and finds the session's [`Home`]. The rules:
//!
//! - a session at home stays, and balancing leaves it alone (it is not counted either);
//! - a session with a home that is not where it runs is moved there, one move per
//!   `rebalance_pace` in the cluster, and a session is moved for locality at most once per
//!   [`HOLD`], so a leader that flaps cannot set off a storm;
//! - a session with no single home (queues led by different nodes, a topic, a queue not known
//!   yet) is balanced as any other.

use crate::cluster::leaders::QueueLeaders;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A session moved for locality is not moved for it again within this.
pub const HOLD: Duration = Duration::from_secs(10);

/// The queues a session is placed by: those its consumers read from, or, with no consumer,
/// the one queue all its publishes go to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Consumed {
    pub vhost: Vhost,
    /// The queues its consumers read from, by the names the broker knows, each once, sorted.
    pub queues: Vec<String>,
    /// Some consumer reads from what is not one named queue (a STOMP topic or exchange).
    pub other: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vhost {
    /// AMQP's connection.open names it.
    Exact(String),
    /// STOMP's `host` header may name it (RabbitMQ's default vhost otherwise).
    Host(Option<String>),
}

impl Default for Vhost {
    fn default() -> Self {
        Vhost::Exact("/".into())
    }
}

impl Consumed {
    /// The vhost as shown: a STOMP session's guess is shown as its `host` header.
    pub fn vhost_name(&self) -> &str {
        match &self.vhost {
            Vhost::Exact(vhost) => vhost,
            Vhost::Host(host) => host.as_deref().unwrap_or("/"),
        }
    }

    /// The node each queue is led by, in `queues` order (`None`: not known).
    pub fn leaders(&self, leaders: &QueueLeaders) -> Vec<Option<String>> {
        (self.queues.iter())
            .map(|queue| match &self.vhost {
                Vhost::Exact(vhost) => leaders.leader(vhost, queue),
                Vhost::Host(host) => leaders.leader_guessing(host.as_deref(), queue),
            })
            .collect()
    }

    /// Where the session belongs: the one node leading all its queues.
    pub fn home(&self, leaders: &QueueLeaders) -> Home {
        if self.queues.is_empty() || self.other {
            return Home::None;
        }
        let mut home: Option<String> = None;
        for leader in self.leaders(leaders) {
            match (leader, &home) {
                (None, _) => return Home::Unknown,
                (Some(node), Some(first)) if node != *first => return Home::Split,
                (Some(node), _) => home = Some(node),
            }
        }
        home.map_or(Home::None, Home::Node)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Home {
    /// It consumes from nothing locality can place (no queue, or a topic).
    None,
    /// A queue's leader is not known yet.
    Unknown,
    /// Its queues are led by different nodes.
    Split,
    Node(String),
}

/// One session locality may place, for [`plan`].
#[derive(Clone, Debug)]
pub struct Placed {
    pub id: u64,
    pub node: Option<String>,
    /// It has a consumer (else it is placed by the one queue it publishes to).
    pub consumes: bool,
    pub home: Home,
    pub movable: bool,
}

/// The sessions to move home now, at most `budget` of them (the cluster's pace): those not at
/// home whose home takes sessions, movable, and not moved for locality within [`HOLD`]
/// (`recent`: session id → when it was last asked).
pub fn plan(
    live: &[String],
    sessions: &[Placed],
    recent: &HashMap<u64, Instant>,
    now: Instant,
    budget: usize,
) -> Vec<(u64, String)> {
    (sessions.iter())
        .filter(|s| s.movable && s.node.is_some())
        .filter(|s| {
            recent
                .get(&s.id)
                .is_none_or(|at| now.duration_since(*at) >= HOLD)
        })
        .filter_map(|s| match &s.home {
            Home::Node(home) if s.node.as_deref() != Some(home) && live.contains(home) => {
                Some((s.id, home.clone()))
            }
            _ => None,
        })
        .take(budget)
        .collect()
}

/// The sessions locality places (their home takes sessions): balancing leaves them alone.
pub fn placed_at_home(live: &[String], sessions: &[Placed]) -> HashSet<u64> {
    (sessions.iter())
        .filter(|s| matches!(&s.home, Home::Node(home) if live.contains(home)))
        .map(|s| s.id)
        .collect()
}

/// Consuming sessions by where they run against where their queues are led.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// On the node that leads every queue they consume from.
    pub local: usize,
    /// With one home, elsewhere.
    pub remote: usize,
    /// Queues led by different nodes.
    pub split: usize,
}

pub fn tally(sessions: &[Placed]) -> Tally {
    let mut tally = Tally::default();
    for s in sessions.iter().filter(|s| s.node.is_some() && s.consumes) {
        match &s.home {
            Home::Node(home) if s.node.as_deref() == Some(home) => tally.local += 1,
            Home::Node(_) => tally.remote += 1,
            Home::Split => tally.split += 1,
            Home::None | Home::Unknown => {}
        }
    }
    tally
}

/// When each session was last asked to move for locality; forgotten after [`HOLD`].
#[derive(Default)]
pub struct Recent(Mutex<HashMap<u64, Instant>>);

impl Recent {
    pub fn snapshot(&self, now: Instant) -> HashMap<u64, Instant> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, at| now.duration_since(*at) < HOLD);
        map.clone()
    }

    pub fn asked(&self, id: u64, at: Instant) {
        (self.0.lock().unwrap_or_else(|e| e.into_inner())).insert(id, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::leaders::ApiQueue;

    fn leaders(pairs: &[(&str, &str)]) -> QueueLeaders {
        let leaders = QueueLeaders::default();
        leaders.store(
            (pairs.iter())
                .map(|(queue, node)| ApiQueue {
                    name: queue.to_string(),
                    vhost: "/".into(),
                    leader: Some(node.to_string()),
                    node: None,
                })
                .collect(),
        );
        leaders
    }

    fn consumed(queues: &[&str]) -> Consumed {
        Consumed {
            queues: queues.iter().map(|q| q.to_string()).collect(),
            ..Consumed::default()
        }
    }

    #[test]
    fn a_home_is_the_one_node_leading_every_queue() {
        let leaders = leaders(&[("a", "r1"), ("b", "r1"), ("c", "r2")]);
        assert_eq!(
            consumed(&["a", "b"]).home(&leaders),
            Home::Node("r1".into())
        );
        assert_eq!(consumed(&["a", "c"]).home(&leaders), Home::Split);
        assert_eq!(consumed(&["a", "new"]).home(&leaders), Home::Unknown);
        assert_eq!(consumed(&[]).home(&leaders), Home::None);
        let topic = Consumed {
            other: true,
            ..consumed(&["a"])
        };
        assert_eq!(topic.home(&leaders), Home::None, "a topic makes it mixed");
        let stomp = Consumed {
            vhost: Vhost::Host(Some("localhost".into())),
            ..consumed(&["c"])
        };
        assert_eq!(stomp.home(&leaders), Home::Node("r2".into()));
    }

    fn placed(id: u64, node: &str, home: Home) -> Placed {
        Placed {
            id,
            node: Some(node.into()),
            consumes: true,
            home,
            movable: true,
        }
    }

    #[test]
    fn sessions_away_from_home_move_there_paced_and_held() {
        let live: Vec<String> = ["r1", "r2", "r3"].iter().map(|s| s.to_string()).collect();
        let home = |n: &str| Home::Node(n.into());
        let mut pinned = placed(4, "r1", home("r2"));
        pinned.movable = false;
        let sessions = vec![
            placed(1, "r1", home("r1")),
            placed(2, "r1", home("r2")),
            placed(3, "r2", home("r3")),
            pinned,
            placed(5, "r1", home("gone")),
            placed(6, "r1", Home::Split),
        ];
        let now = Instant::now();
        let none = HashMap::new();
        assert_eq!(
            plan(&live, &sessions, &none, now, 10),
            vec![(2, "r2".to_string()), (3, "r3".to_string())],
            "at home, pinned, homeless and split sessions stay"
        );
        assert_eq!(plan(&live, &sessions, &none, now, 1).len(), 1, "the pace");
        let recent = HashMap::from([(2, now)]);
        assert_eq!(
            plan(&live, &sessions, &recent, now, 10),
            vec![(3, "r3".to_string())],
            "a session moved lately is held"
        );
        assert_eq!(plan(&live, &sessions, &recent, now + HOLD, 10).len(), 2);
        assert_eq!(
            placed_at_home(&live, &sessions),
            HashSet::from([1, 2, 3, 4]),
            "balancing leaves alone those with a live home, pinned or not; a split one or one \
             whose home is gone is balanced"
        );
        assert_eq!(
            tally(&sessions),
            Tally {
                local: 1,
                remote: 4,
                split: 1
            }
        );
    }
}
