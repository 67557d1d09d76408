//! One AMQP channel's state that must survive a change of node: its settings (qos), its
//! consumers, its publishes and their confirms ([`super::confirms`]), its transaction
//! ([`super::transaction`]), and the delivery tags the client sees.
//!
//! Delivery tags: each node numbers its deliveries on a channel from 1. The client sees
//! `tag_base + upstream tag`, where `tag_base` is the highest tag the client had seen when the
//! session last changed node, so its tags only grow. A client ack at or below `tag_base` is for a
//! delivery of a failed node (which requeued it): it is swallowed.

use super::confirms::{Confirms, Publish};
use super::transaction::Transaction;
use crate::proto::amqp::method::Ack;
use bytes::Bytes;

/// A consumer as it must be registered again on a new node.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Consumer {
    pub tag: String,
    /// The queue as the client knows it.
    pub queue: String,
    /// basic.consume as the client sent it, with the tag filled in (the node's, if the client
    /// left it to the node: it is replayed as the client's own so no mapping is needed).
    #[serde(with = "super::serial::wire")]
    pub method: amq_protocol::protocol::basic::Consume,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Channel {
    pub id: u16,
    /// basic.qos payloads in force: at most one per value of `global`.
    pub qos: Vec<(bool, Bytes)>,
    pub consumers: Vec<Consumer>,
    pub confirms: Confirms,
    pub tx: Transaction,
    pub tags: DeliveryTags,
}

impl Channel {
    pub fn new(id: u16) -> Channel {
        Channel {
            id,
            ..Channel::default()
        }
    }

    pub fn set_qos(&mut self, global: bool, payload: Bytes) {
        self.qos.retain(|(g, _)| *g != global);
        self.qos.push((global, payload));
    }

    /// A complete publish: held for the commit in a transaction, else numbered and kept until
    /// confirmed. Returns whether it needs confirms turned on first.
    pub fn record_publish(&mut self, publish: Publish) -> bool {
        if self.tx.is_open() {
            self.tx.hold_publish(publish);
            return false;
        }
        self.confirms.record(publish)
    }

    /// Publishes kept for the node: unconfirmed, refused, or held for a commit.
    pub fn unconfirmed_count(&self) -> usize {
        self.confirms.count() + self.tx.count()
    }

    pub fn unconfirmed_bytes(&self) -> usize {
        self.confirms.bytes() + self.tx.bytes()
    }

    /// Answers whether a pending commit is now fully confirmed.
    pub fn commit_confirmed(&mut self) -> bool {
        self.tx.commit_confirmed(&self.confirms)
    }

    /// The session moves to another node: deliveries of the old one become stale, and the
    /// kept publishes will be renumbered as they are sent again.
    pub fn failover(&mut self) {
        self.tags.failover();
        self.confirms.failover();
    }
}

/// The client's delivery tags on one channel, continuous across nodes, and which of them it
/// has settled (acked, nacked or rejected), so that a planned move can wait for the rest.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DeliveryTags {
    tag_base: u64,
    last_client_tag: u64,
    /// Client tags at or below this are settled (acked, nacked, rejected, or stale).
    settled_below: u64,
    /// Settled tags above `settled_below` (acks out of order); usually empty.
    settled_above: std::collections::BTreeSet<u64>,
}

impl DeliveryTags {
    /// The tag the client sees for a delivery the node numbered `upstream_tag`.
    pub fn client_tag(&mut self, upstream_tag: u64) -> u64 {
        let tag = self.tag_base + upstream_tag;
        self.last_client_tag = self.last_client_tag.max(tag);
        tag
    }

    /// A delivery the client will not ack (a no-ack consumer's, a get-ok): settled already.
    pub fn delivered_settled(&mut self, client_tag: u64) {
        self.settle(client_tag, false);
    }

    /// The client acked, nacked or rejected `client_tag` (and all before it, with `multiple`).
    pub fn settle(&mut self, client_tag: u64, multiple: bool) {
        if multiple {
            let upto = if client_tag == 0 {
                self.last_client_tag
            } else {
                client_tag
            };
            self.settled_below = self.settled_below.max(upto);
            let below = self.settled_below;
            self.settled_above.retain(|t| *t > below);
        } else if client_tag > self.settled_below {
            self.settled_above.insert(client_tag);
        }
        while self.settled_above.remove(&(self.settled_below + 1)) {
            self.settled_below += 1;
        }
    }

    /// Deliveries of the current node the client has not settled yet.
    pub fn outstanding_deliveries(&self) -> u64 {
        self.last_client_tag
            .saturating_sub(self.settled_below)
            .saturating_sub(self.settled_above.len() as u64)
    }

    /// Whether delivery tags need rewriting at all (not before the first failover).
    pub fn tags_shifted(&self) -> bool {
        self.tag_base > 0
    }

    /// A client ack, nack or reject for the node, or `None` if it is for a failed node's
    /// delivery (that node requeued it; the broker redelivers it). A `multiple` ack reaching
    /// below the current node's first delivery is clipped to it.
    pub fn upstream_ack(&self, ack: Ack) -> Option<Ack> {
        if ack.delivery_tag == 0 && ack.multiple {
            // "Everything outstanding": only the current node's deliveries are.
            return Some(ack);
        }
        (ack.delivery_tag > self.tag_base).then(|| Ack {
            delivery_tag: ack.delivery_tag - self.tag_base,
            ..ack
        })
    }

    /// The session moves to another node: deliveries of the old one are the broker's to
    /// redeliver, none is outstanding here.
    pub fn failover(&mut self) {
        self.tag_base = self.last_client_tag;
        self.settled_below = self.last_client_tag;
        self.settled_above.clear();
    }
}

#[cfg(test)]
mod tests;
