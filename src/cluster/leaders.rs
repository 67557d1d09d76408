//! Where each queue lives, for queue locality (`locality = true`): the node that leads a quorum
//! queue or stream, or holds a classic queue. RabbitMQ discovery reads it from the management
//! API (`/api/queues`) with the nodes, on its interval, and sooner when a planner meets a queue
//! it does not know ([`QueueLeaders::ask`]). The rebalancing planners read it (see
//! [`crate::rebalance::locality`]).

use arc_swap::ArcSwap;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The management API path, asking only for what is read: a queue is ~100 bytes then.
pub const QUEUES_PATH: &str = "/api/queues?columns=name,vhost,leader,node";

/// A planner that meets unknown queues asks for a fresh read at most this often, so that
/// a client declaring queue after queue does not make discovery poll without pause.
const ASK_GAP: Duration = Duration::from_secs(2);

/// vhost → queue → node.
type Map = HashMap<String, HashMap<String, String>>;

#[derive(Default)]
pub struct QueueLeaders {
    /// The cluster has `locality` on: only then are queues read.
    enabled: AtomicBool,
    map: ArcSwap<Map>,
    /// Broker node names (`r1@host`) → the name tether knows the node by, where they differ
    /// (a seed written `r1` in the file).
    aliases: ArcSwap<HashMap<String, String>>,
    asked: Notify,
    last_ask: Mutex<Option<Instant>>,
}

impl QueueLeaders {
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
        if !on {
            self.map.store(Arc::default());
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The node leading `queue` in `vhost`, if known, by the name tether knows it by.
    pub fn leader(&self, vhost: &str, queue: &str) -> Option<String> {
        let map = self.map.load();
        Some(self.named(map.get(vhost)?.get(queue)?))
    }

    fn named(&self, broker: &str) -> String {
        let aliases = self.aliases.load();
        aliases
            .get(broker)
            .map_or(broker, |n| n.as_str())
            .to_string()
    }

    /// The cluster's node set changed: which broker names are known by another name.
    pub fn set_aliases(&self, aliases: HashMap<String, String>) {
        self.aliases.store(Arc::new(aliases));
    }

    /// Like [`Self::leader`], for a STOMP session: its `host` header names its vhost if one of
    /// that name has queues; else it is the default vhost, `/`.
    pub fn leader_guessing(&self, host: Option<&str>, queue: &str) -> Option<String> {
        let map = self.map.load();
        let queues = host.and_then(|h| map.get(h)).or_else(|| map.get("/"))?;
        Some(self.named(queues.get(queue)?))
    }

    /// Replaces what is known with a fresh read of `/api/queues`; returns how many queues.
    pub fn store(&self, queues: Vec<ApiQueue>) -> usize {
        let mut map: Map = HashMap::new();
        let mut count = 0;
        for queue in queues {
            let Some(node) = queue.leader.or(queue.node).filter(|n| !n.is_empty()) else {
                continue;
            };
            if queue.name.is_empty() {
                continue;
            }
            count += 1;
            map.entry(queue.vhost).or_default().insert(queue.name, node);
        }
        self.map.store(Arc::new(map));
        count
    }

    /// A planner met a queue that is not known yet: discovery reads the queues again soon.
    pub fn ask(&self) {
        let mut last = self.last_ask.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < ASK_GAP) {
            return;
        }
        *last = Some(now);
        self.asked.notify_one();
    }

    /// Resolves when a planner asked for a fresh read.
    pub async fn asked(&self) {
        self.asked.notified().await
    }
}

/// An entry of `/api/queues`: a quorum queue or stream names its `leader`, a classic queue its
/// `node` (a quorum queue's `node` is its leader too, on the versions that give both).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ApiQueue {
    pub name: String,
    pub vhost: String,
    pub leader: Option<String>,
    pub node: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_wins_over_a_node_and_stomp_guesses_fall_back_to_the_default_vhost() {
        let leaders = QueueLeaders::default();
        let queues: Vec<ApiQueue> = serde_json::from_str(
            r#"[{"name":"q1","vhost":"/","type":"quorum","leader":"r2@h","node":"r2@h"},
                {"name":"c1","vhost":"/","type":"classic","node":"r3@h"},
                {"name":"q1","vhost":"other","type":"quorum","leader":"r1@h"},
                {"name":"c2","vhost":"/","leader":null,"node":"r1@h"},
                {"name":"odd","vhost":"/"}]"#,
        )
        .unwrap();
        assert_eq!(leaders.store(queues), 4, "a queue with no node is left out");
        assert_eq!(leaders.leader("/", "q1").as_deref(), Some("r2@h"));
        assert_eq!(leaders.leader("/", "c1").as_deref(), Some("r3@h"));
        assert_eq!(
            leaders.leader("/", "c2").as_deref(),
            Some("r1@h"),
            "null is none"
        );
        assert_eq!(leaders.leader("other", "q1").as_deref(), Some("r1@h"));
        assert_eq!(leaders.leader("/", "odd"), None);
        assert_eq!(
            leaders.leader_guessing(Some("localhost"), "q1").as_deref(),
            Some("r2@h"),
            "a host that is no vhost means the default one"
        );
        assert_eq!(
            leaders.leader_guessing(Some("other"), "q1").as_deref(),
            Some("r1@h")
        );
        leaders.set_aliases(HashMap::from([("r2@h".to_string(), "r2".to_string())]));
        assert_eq!(
            leaders.leader("/", "q1").as_deref(),
            Some("r2"),
            "by the name tether knows the node by"
        );
        leaders.set_enabled(false);
        assert_eq!(leaders.leader("/", "q1"), None, "off forgets");
    }
}
