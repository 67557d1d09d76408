//! Transactions are tether's own, over confirms: a broker answers tx.commit without waiting for
//! a quorum queue to have the messages (and drops them while the queue elects a leader), so the
//! client's commit-ok would mean nothing. tether keeps a transaction's publishes and acks until
//! tx.commit, then publishes them with confirms and answers commit-ok once every one is
//! confirmed. A failover before the commit loses nothing (nothing was sent); one during it
//! replays the unconfirmed publishes like any others.

use super::confirms::{Confirms, Publish};
use crate::proto::amqp::Frame;
use crate::proto::amqp::method::Ack;

/// An ack, nack or reject held for the commit: its method id and value, in the client's tags.
pub type HeldAck = ((u16, u16), Ack);

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Transaction {
    /// The client sent tx.select: publishes and acks wait for tx.commit.
    open: bool,
    /// Publishes of the open transaction, not sent before tx.commit.
    publishes: Vec<Publish>,
    /// Acks, nacks and rejects of the open transaction, not sent before tx.commit.
    acks: Vec<HeldAck>,
    /// The bytes of `publishes`, kept as they come (summing them on every turn of the
    /// session's loop would cost as much as the transaction is long).
    #[serde(default)]
    publish_bytes: usize,
    /// The client committed and waits for commit-ok: it comes once the transaction's
    /// publishes are confirmed.
    pub commit_pending: bool,
}

impl Transaction {
    /// Whether the channel is in tx mode.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The client turned tx mode on. Returns whether confirms must be turned on upstream first.
    pub fn select(&mut self, confirms: &mut Confirms) -> bool {
        self.open = true;
        confirms.turn_on()
    }

    pub fn hold_publish(&mut self, publish: Publish) {
        self.publish_bytes += publish.bytes;
        self.publishes.push(publish);
    }

    pub fn hold_ack(&mut self, ack: HeldAck) {
        self.acks.push(ack);
    }

    /// tx.commit: the transaction's publishes, numbered and kept until confirmed, to be sent
    /// now, then its acks; commit-ok is due once the publishes are confirmed.
    pub fn commit(&mut self, confirms: &mut Confirms) -> (Vec<Vec<Frame>>, Vec<HeldAck>) {
        self.commit_pending = true;
        self.publish_bytes = 0;
        let publishes = std::mem::take(&mut self.publishes)
            .into_iter()
            .map(|publish| {
                let frames = publish.frames.clone();
                confirms.send(publish);
                frames
            })
            .collect();
        (publishes, std::mem::take(&mut self.acks))
    }

    /// Whether a pending commit is now fully confirmed (then it no longer is pending).
    pub fn commit_confirmed(&mut self, confirms: &Confirms) -> bool {
        let confirmed = self.commit_pending && confirms.is_settled();
        if confirmed {
            self.commit_pending = false;
        }
        confirmed
    }

    /// tx.rollback, or the channel or connection closing: the transaction is forgotten.
    pub fn rollback(&mut self) {
        self.publishes.clear();
        self.acks.clear();
        self.publish_bytes = 0;
    }

    pub fn count(&self) -> usize {
        self.publishes.len()
    }

    pub fn bytes(&self) -> usize {
        self.publish_bytes
    }

    /// What the open transaction holds in tether: publishes and acks, and their bytes.
    pub fn held(&self) -> (usize, usize) {
        let acks = self.acks.len();
        (
            self.publishes.len() + acks,
            self.publish_bytes + acks * std::mem::size_of::<HeldAck>(),
        )
    }
}
