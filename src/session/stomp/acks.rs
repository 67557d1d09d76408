//! Deliveries a STOMP client has yet to ack, so that an ACK or NACK can be told fresh from
//! stale. A delivery belongs to the node connection (the epoch) that delivered it; when the
//! session leaves that node the broker requeues what was not acked and redelivers it, so an ack
//! for it has nothing left to settle and is swallowed. `client`-mode subscriptions ack
//! cumulatively: an ACK settles every earlier delivery of the subscription too.

use std::collections::{HashMap, VecDeque};

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Unacked {
    /// The node connection's number: one more at every failover or move.
    epoch: u64,
    /// Ack id → the epoch and subscription that delivered it.
    deliveries: HashMap<String, (u64, String)>,
    /// Ack ids of `client`-mode subscriptions in delivery order, for cumulative acks.
    cumulative: HashMap<String, VecDeque<String>>,
}

/// What an ACK or NACK settled.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// A delivery of the current node: the ack goes to it.
    Here,
    /// A delivery of a node the session left: nothing to settle.
    Stale,
    /// Not a delivery tether tracks (an `auto` subscription's, or acked already): the broker
    /// answers it as it would without tether.
    Unknown,
}

impl Unacked {
    /// The node delivered `id` on `subscription`, which acks cumulatively (`client` mode) or
    /// not (`client-individual`).
    pub fn delivered(&mut self, id: &str, subscription: String, cumulative: bool) {
        if cumulative {
            self.cumulative
                .entry(subscription.clone())
                .or_default()
                .push_back(id.to_owned());
        }
        self.deliveries
            .insert(id.to_owned(), (self.epoch, subscription));
    }

    /// The client acked (or nacked) `id`.
    pub fn settle(&mut self, id: &str) -> Settled {
        let Some((epoch, subscription)) = self.deliveries.remove(id) else {
            return Settled::Unknown;
        };
        if let Some(order) = self.cumulative.get_mut(&subscription)
            && order.iter().any(|d| d == id)
        {
            while let Some(earlier) = order.pop_front() {
                if earlier == id {
                    break;
                }
                self.deliveries.remove(&earlier);
            }
        }
        if epoch == self.epoch {
            Settled::Here
        } else {
            Settled::Stale
        }
    }

    /// The client unsubscribed: its cumulative order goes (its deliveries stay tracked, as the
    /// broker still expects their acks).
    pub fn unsubscribed(&mut self, subscription: &str) {
        self.cumulative.remove(subscription);
    }

    /// Deliveries tracked, of every node.
    pub fn count(&self) -> usize {
        self.deliveries.len()
    }

    /// Deliveries of the current node the client has not acked yet.
    pub fn here(&self) -> usize {
        self.deliveries
            .values()
            .filter(|(epoch, _)| *epoch == self.epoch)
            .count()
    }

    /// The session leaves its node: what it delivered becomes stale.
    pub fn failover(&mut self) {
        self.epoch += 1;
        self.cumulative.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_for_a_left_nodes_delivery_is_stale_and_a_new_ones_is_not() {
        let mut unacked = Unacked::default();
        unacked.delivered("m1", "s".into(), false);
        unacked.failover();
        unacked.delivered("m2", "s".into(), false);
        assert_eq!((unacked.count(), unacked.here()), (2, 1));
        assert_eq!(unacked.settle("m1"), Settled::Stale);
        assert_eq!(unacked.settle("m2"), Settled::Here);
        assert_eq!(unacked.settle("m2"), Settled::Unknown, "acked once only");
        assert_eq!(unacked.count(), 0);
    }

    #[test]
    fn a_cumulative_ack_settles_every_earlier_delivery_of_its_subscription_only() {
        let mut unacked = Unacked::default();
        for id in ["a1", "a2", "a3"] {
            unacked.delivered(id, "a".into(), true);
        }
        unacked.delivered("b1", "b".into(), true);
        assert_eq!(unacked.settle("a2"), Settled::Here);
        assert_eq!(unacked.here(), 2, "a3 and b1 are left");
        assert_eq!(unacked.settle("a1"), Settled::Unknown);
        assert_eq!(unacked.settle("b1"), Settled::Here);
        assert_eq!(unacked.settle("a3"), Settled::Here);
    }

    #[test]
    fn an_individual_ack_settles_only_itself() {
        let mut unacked = Unacked::default();
        unacked.delivered("m1", "s".into(), false);
        unacked.delivered("m2", "s".into(), false);
        assert_eq!(unacked.settle("m2"), Settled::Here);
        assert_eq!(unacked.settle("m1"), Settled::Here);
    }
}
