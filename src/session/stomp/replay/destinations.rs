//! What a session's subscriptions say about where it belongs: whether one lives and dies with
//! its connection (a temporary destination), and which queues they read from (queue locality).

use super::ReplayLog;
use crate::rebalance::locality::{Consumed, Vhost};

impl ReplayLog {
    /// Changes whenever the subscriptions do: their number, and SUBSCRIBEs recorded.
    pub fn subscription_signature(&self) -> (usize, u64) {
        (self.subscriptions.len(), self.subscribed)
    }

    /// What the subscriptions read from, for queue locality (`None`: none). RabbitMQ's
    /// `/queue/NAME` and `/amq/queue/NAME` are the queue NAME; any other destination (a topic,
    /// an exchange) makes the session one locality does not place. `host` is the CONNECT's.
    pub fn consumed(&self, host: Option<&str>) -> Option<Consumed> {
        if self.subscriptions.is_empty() {
            return None;
        }
        let mut consumed = Consumed {
            vhost: Vhost::Host(host.map(str::to_owned)),
            ..Consumed::default()
        };
        for subscription in &self.subscriptions {
            let destination = subscription.frame.header("destination").unwrap_or_default();
            let queue = (destination.strip_prefix("/amq/queue/"))
                .or_else(|| destination.strip_prefix("/queue/"))
                .filter(|q| !q.is_empty());
            match queue {
                Some(queue) => consumed.queues.push(queue.to_string()),
                None => consumed.other = true,
            }
        }
        consumed.queues.sort_unstable();
        consumed.queues.dedup();
        Some(consumed)
    }

    /// Whether a subscription lives and dies with the connection (temporary destinations):
    /// moving the session on purpose would lose it.
    pub fn pins_to_node(&self) -> bool {
        self.temporary_subscription
    }

    pub(super) fn note_temporary_subscriptions(&mut self) {
        self.temporary_subscription = self.subscriptions.iter().any(|s| {
            s.frame
                .header("destination")
                .is_some_and(|d| d.starts_with("/temp-queue/") || d.starts_with("/temp-topic/"))
        });
    }
}
