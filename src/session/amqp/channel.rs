//! One AMQP channel's state that must survive a change of node: its settings (qos, confirm or
//! tx mode), its consumers, the publishes the node has not confirmed, and the two numberings
//! that restart on a new node but must not restart for the client: delivery tags and
//! publisher-confirm sequence numbers.
//!
//! Delivery tags: each node numbers its deliveries on a channel from 1. The client sees
//! `tag_base + upstream tag`, where `tag_base` is the highest tag the client had seen when the
//! session last changed node, so its tags only grow. A client ack at or below `tag_base` is for a
//! delivery of a failed node (which requeued it): it is swallowed.
//!
//! Confirms: tether keeps every publish until the node confirms it (asking for confirms itself on
//! channels where the client did not).

//! Transactions are tether's own, over confirms: a broker answers tx.commit without waiting for a
//! quorum queue to have the messages (and drops them while the queue elects a leader), so the
//! client's commit-ok would mean nothing. tether keeps a transaction's publishes and acks until
//! tx.commit, then publishes them with confirms and answers commit-ok once every one is
//! confirmed. A failover before the commit loses nothing (nothing was sent); one during it
//! replays the unconfirmed publishes like any others. Each kept publish carries its sequence number on the
//! current node and, if the client asked for confirms, the number the client counts it by. On a
//! new node the kept publishes are sent again in order and renumbered; the client's numbers stay.

use crate::proto::amqp::Frame;
use crate::proto::amqp::method::Ack;
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A complete basic.publish as the client sent it: method, content header, body frames.
#[derive(Clone, Debug)]
pub struct Publish {
    pub frames: Vec<Frame>,
    /// Its number on the current node (0 before it is sent there).
    pub upstream_seq: u64,
    /// Its number for the client, when the client asked for confirms on the channel.
    pub client_seq: Option<u64>,
    pub bytes: usize,
    /// When a node first refused it (nack), and how often since.
    pub refused: Option<(Instant, u32)>,
    /// Its place among the channel's publishes, as the client sent them.
    order: u64,
}

impl Publish {
    pub fn new(frames: Vec<Frame>) -> Publish {
        let bytes = frames.iter().map(|f| f.payload.len() + 8).sum();
        Publish {
            frames,
            upstream_seq: 0,
            client_seq: None,
            bytes,
            refused: None,
            order: 0,
        }
    }
}

/// A consumer as it must be registered again on a new node.
#[derive(Clone, Debug, PartialEq)]
pub struct Consumer {
    pub tag: String,
    /// The queue as the client knows it.
    pub queue: String,
    /// basic.consume as the client sent it, with the tag filled in (the node's, if the client
    /// left it to the node: it is replayed as the client's own so no mapping is needed).
    pub method: amq_protocol::protocol::basic::Consume,
}

/// What a confirm from the node means for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConfirm {
    pub ack: bool,
    pub seq: u64,
    pub multiple: bool,
}

#[derive(Debug, Default)]
pub struct Channel {
    pub id: u16,
    /// basic.qos payloads in force: at most one per value of `global`.
    pub qos: Vec<(bool, Bytes)>,
    /// The client sent confirm.select.
    pub client_confirm: bool,
    /// The client sent tx.select: publishes and acks wait for tx.commit.
    pub tx: bool,
    /// Confirms are on for this channel on the current node (asked by the client or by tether).
    pub upstream_confirm: bool,
    pub consumers: Vec<Consumer>,
    /// Publishes the node has not confirmed, in the order sent (so upstream_seq ascends).
    pub unconfirmed: VecDeque<Publish>,
    /// Publishes a node refused (nack), to be sent again when due: a quorum queue refuses
    /// publishes while it elects a leader, which is what a node failure makes it do.
    pub retrying: VecDeque<(Instant, Publish)>,
    /// Publishes of the open transaction, not sent before tx.commit.
    pub tx_publishes: Vec<Publish>,
    /// Acks, nacks and rejects of the open transaction (method ids and values, in the
    /// client's tags), not sent before tx.commit.
    pub tx_acks: Vec<((u16, u16), Ack)>,
    /// The client committed and waits for commit-ok: it comes once the transaction's publishes
    /// are confirmed.
    pub commit_pending: bool,
    last_upstream_seq: u64,
    last_client_seq: u64,
    last_order: u64,
    tag_base: u64,
    last_client_tag: u64,
    /// Client tags at or below this are settled (acked, nacked, rejected, or stale).
    settled_below: u64,
    /// Settled tags above `settled_below` (acks out of order); usually empty.
    settled_above: std::collections::BTreeSet<u64>,
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

    /// Numbers a complete publish and keeps it until confirmed. Returns whether it needs
    /// confirms turned on first (the first publish on a channel that has none).
    pub fn record_publish(&mut self, mut publish: Publish) -> bool {
        if self.tx {
            self.tx_publishes.push(publish);
            return false;
        }
        let turn_on_confirms = !self.upstream_confirm;
        self.upstream_confirm = true;
        if self.client_confirm {
            self.last_client_seq += 1;
            publish.client_seq = Some(self.last_client_seq);
        }
        self.send(publish);
        turn_on_confirms
    }

    /// Numbers a publish for the node and keeps it until confirmed.
    fn send(&mut self, mut publish: Publish) {
        self.last_order += 1;
        publish.order = self.last_order;
        self.last_upstream_seq += 1;
        publish.upstream_seq = self.last_upstream_seq;
        self.unconfirmed.push_back(publish);
    }

    /// The client turned tx mode on. Returns whether confirms must be turned on upstream first.
    pub fn select_tx(&mut self) -> bool {
        self.tx = true;
        let turn_on_confirms = !self.upstream_confirm;
        self.upstream_confirm = true;
        turn_on_confirms
    }

    /// tx.commit: the transaction's publishes, numbered and kept until confirmed, to be sent now
    /// (then its acks, see [`Channel::tx_acks`]); commit-ok is due once they are confirmed.
    pub fn commit(&mut self) -> Vec<Vec<Frame>> {
        self.commit_pending = true;
        let publishes = std::mem::take(&mut self.tx_publishes);
        publishes
            .into_iter()
            .map(|publish| {
                let frames = publish.frames.clone();
                self.send(publish);
                frames
            })
            .collect()
    }

    /// Whether a pending commit is now fully confirmed (then it no longer is pending).
    pub fn commit_confirmed(&mut self) -> bool {
        let confirmed =
            self.commit_pending && self.unconfirmed.is_empty() && self.retrying.is_empty();
        if confirmed {
            self.commit_pending = false;
        }
        confirmed
    }

    /// tx.rollback: the transaction is forgotten.
    pub fn rollback(&mut self) {
        self.tx_publishes.clear();
        self.tx_acks.clear();
    }

    /// The client turned confirms on: its numbering starts at 1 from the next publish.
    pub fn client_selected_confirms(&mut self) {
        if !self.client_confirm {
            self.client_confirm = true;
            self.last_client_seq = 0;
        }
        self.upstream_confirm = true;
    }

    pub fn unconfirmed_bytes(&self) -> usize {
        self.unconfirmed.iter().map(|p| p.bytes).sum::<usize>()
            + self.retrying.iter().map(|(_, p)| p.bytes).sum::<usize>()
            + self.tx_publishes.iter().map(|p| p.bytes).sum::<usize>()
    }

    pub fn unconfirmed_count(&self) -> usize {
        self.unconfirmed.len() + self.retrying.len() + self.tx_publishes.len()
    }

    /// A basic.ack or basic.nack from the node. Acked publishes are settled and the client is
    /// told in its own numbering. Nacked ones are kept to be sent again after a pause, for up
    /// to `give_up_after` from their first refusal; those past it are returned: the caller
    /// tells the client (a nack) or, for a client that asked no confirms, logs the loss.
    pub fn upstream_confirm(
        &mut self,
        confirm: Ack,
        ack: bool,
        now: Instant,
        give_up_after: Duration,
    ) -> (Vec<ClientConfirm>, Vec<Publish>) {
        let settled: Vec<Publish> = if confirm.multiple {
            let end = self
                .unconfirmed
                .partition_point(|p| p.upstream_seq <= confirm.delivery_tag);
            self.unconfirmed.drain(..end).collect()
        } else {
            match self
                .unconfirmed
                .binary_search_by_key(&confirm.delivery_tag, |p| p.upstream_seq)
            {
                Ok(index) => self.unconfirmed.remove(index).into_iter().collect(),
                Err(_) => Vec::new(),
            }
        };
        if !ack {
            let mut given_up = Vec::new();
            for mut publish in settled {
                let (first, attempts) = publish.refused.unwrap_or((now, 0));
                if now.duration_since(first) >= give_up_after {
                    given_up.push(publish);
                    continue;
                }
                publish.refused = Some((first, attempts + 1));
                let pause =
                    Duration::from_millis(50 << attempts.min(4)).min(Duration::from_secs(1));
                self.retrying.push_back((now + pause, publish));
            }
            let nacks = given_up
                .iter()
                .filter_map(|p| p.client_seq)
                .map(|seq| ClientConfirm {
                    ack: false,
                    seq,
                    multiple: false,
                })
                .collect();
            return (nacks, given_up);
        }
        (self.client_acks(&settled), Vec::new())
    }

    /// The client's acks for `settled`: one multiple ack when they are every publish the client
    /// still waits for up to the last of them, else one each.
    fn client_acks(&self, settled: &[Publish]) -> Vec<ClientConfirm> {
        let seqs: Vec<u64> = settled.iter().filter_map(|p| p.client_seq).collect();
        let Some(&last) = seqs.iter().max() else {
            return Vec::new();
        };
        let still_waiting_below = self
            .unconfirmed
            .iter()
            .chain(self.retrying.iter().map(|(_, p)| p))
            .filter_map(|p| p.client_seq)
            .any(|seq| seq < last);
        if seqs.len() > 1 && !still_waiting_below {
            return vec![ClientConfirm {
                ack: true,
                seq: last,
                multiple: true,
            }];
        }
        seqs.into_iter()
            .map(|seq| ClientConfirm {
                ack: true,
                seq,
                multiple: false,
            })
            .collect()
    }

    /// How long the longest-refused publish waiting for a retry has been refused.
    pub fn refused_for(&self, now: Instant) -> Duration {
        self.retrying
            .iter()
            .filter_map(|(_, p)| p.refused)
            .map(|(first, _)| now.saturating_duration_since(first))
            .max()
            .unwrap_or_default()
    }

    /// When the next refused publish is due to be sent again.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retrying.iter().map(|(due, _)| *due).min()
    }

    /// Refused publishes due by `now`, numbered for the node and kept as unconfirmed: the
    /// caller sends them.
    pub fn due_retries(&mut self, now: Instant) -> Vec<Vec<Frame>> {
        let (due, later): (Vec<_>, Vec<_>) =
            self.retrying.drain(..).partition(|(at, _)| *at <= now);
        self.retrying = later.into();
        due.into_iter()
            .map(|(_, mut publish)| {
                self.last_upstream_seq += 1;
                publish.upstream_seq = self.last_upstream_seq;
                let frames = publish.frames.clone();
                self.unconfirmed.push_back(publish);
                frames
            })
            .collect()
    }

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

    /// The session moves to another node: deliveries of the old one become stale, and the
    /// kept publishes will be renumbered as they are sent again.
    pub fn failover(&mut self) {
        self.tag_base = self.last_client_tag;
        // The old node's deliveries are the broker's to redeliver: none is outstanding here.
        self.settled_below = self.last_client_tag;
        self.settled_above.clear();
        self.last_upstream_seq = 0;
        // Refused publishes go to the new node with the rest, in the client's order.
        let retrying: Vec<Publish> = self.retrying.drain(..).map(|(_, p)| p).collect();
        self.unconfirmed.extend(retrying);
        self.unconfirmed.make_contiguous().sort_by_key(|p| p.order);
        for publish in &mut self.unconfirmed {
            publish.upstream_seq = 0;
        }
    }

    /// Numbers the kept publishes for the new node in the order they are sent again.
    pub fn renumber_for_replay(&mut self) {
        for publish in &mut self.unconfirmed {
            self.last_upstream_seq += 1;
            publish.upstream_seq = self.last_upstream_seq;
        }
    }
}

#[cfg(test)]
mod tests;
