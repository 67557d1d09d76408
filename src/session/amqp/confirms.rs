//! Publisher confirms on one channel: every publish is kept until the node confirms it (tether
//! asks for confirms itself on channels where the client did not, so nothing is lost
//! silently), refused ones (nacks) are sent again after a pause, and the client hears of
//! confirms in its own numbering.
//!
//! Each kept publish carries its sequence number on the current node and, if the client asked
//! for confirms, the number the client counts it by. On a new node the kept publishes are sent
//! again in order and renumbered; the client's numbers stay, so they are continuous across
//! failovers.

use crate::proto::amqp::Frame;
use crate::proto::amqp::method::Ack;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A complete basic.publish as the client sent it: method, content header, body frames.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Publish {
    pub frames: Vec<Frame>,
    /// Its number on the current node (0 before it is sent there).
    pub upstream_seq: u64,
    /// Its number for the client, when the client asked for confirms on the channel.
    pub client_seq: Option<u64>,
    pub bytes: usize,
    /// When a node first refused it (nack), and how often since.
    #[serde(with = "crate::takeover::serial::instant_pair")]
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

/// What a confirm from the node means for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConfirm {
    pub ack: bool,
    pub seq: u64,
    pub multiple: bool,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Confirms {
    /// The client sent confirm.select.
    pub client_confirm: bool,
    /// Confirms are on for this channel on the current node (asked by the client or by tether).
    pub upstream_confirm: bool,
    /// Publishes the node has not confirmed, in the order sent (so upstream_seq ascends).
    pub unconfirmed: VecDeque<Publish>,
    /// Publishes a node refused (nack), to be sent again when due: a quorum queue refuses
    /// publishes while it elects a leader, which is what a node failure makes it do.
    #[serde(with = "crate::takeover::serial::instant_queue")]
    pub retrying: VecDeque<(Instant, Publish)>,
    last_upstream_seq: u64,
    last_client_seq: u64,
    last_order: u64,
}

/// Where a node channel kept open between sessions (by the pool) stands: confirms on or off,
/// and the number of its last publish, which the node goes on from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reusable {
    pub upstream_confirm: bool,
    pub last_upstream_seq: u64,
}

impl Confirms {
    /// A channel's confirms on a node channel another session left open.
    pub fn adopt(reusable: Reusable) -> Confirms {
        Confirms {
            upstream_confirm: reusable.upstream_confirm,
            last_upstream_seq: reusable.last_upstream_seq,
            ..Confirms::default()
        }
    }

    /// What the next session on this node channel goes on from.
    pub fn reusable(&self) -> Reusable {
        Reusable {
            upstream_confirm: self.upstream_confirm,
            last_upstream_seq: self.last_upstream_seq,
        }
    }

    /// Numbers a complete publish and keeps it until confirmed. Returns whether it needs
    /// confirms turned on first (the first publish on a channel that has none).
    pub fn record(&mut self, mut publish: Publish) -> bool {
        let turn_on_confirms = self.turn_on();
        if self.client_confirm {
            self.last_client_seq += 1;
            publish.client_seq = Some(self.last_client_seq);
        }
        self.send(publish);
        turn_on_confirms
    }

    /// Confirms must be on upstream from now on; returns whether they were off.
    pub fn turn_on(&mut self) -> bool {
        !std::mem::replace(&mut self.upstream_confirm, true)
    }

    /// Numbers a publish for the node and keeps it until confirmed.
    pub fn send(&mut self, mut publish: Publish) {
        self.last_order += 1;
        publish.order = self.last_order;
        self.last_upstream_seq += 1;
        publish.upstream_seq = self.last_upstream_seq;
        self.unconfirmed.push_back(publish);
    }

    /// The client turned confirms on: its numbering starts at 1 from the next publish.
    pub fn client_selected(&mut self) {
        if !self.client_confirm {
            self.client_confirm = true;
            self.last_client_seq = 0;
        }
        self.upstream_confirm = true;
    }

    pub fn count(&self) -> usize {
        self.unconfirmed.len() + self.retrying.len()
    }

    pub fn bytes(&self) -> usize {
        self.unconfirmed.iter().map(|p| p.bytes).sum::<usize>()
            + self.retrying.iter().map(|(_, p)| p.bytes).sum::<usize>()
    }

    /// Nothing is waiting for a confirm or a retry.
    pub fn is_settled(&self) -> bool {
        self.unconfirmed.is_empty() && self.retrying.is_empty()
    }

    /// A basic.ack or basic.nack from the node. Acked publishes are settled and the client is
    /// told in its own numbering. Nacked ones are kept to be sent again after a pause, for up
    /// to `give_up_after` from their first refusal; those past it are returned: the caller
    /// tells the client (a nack) or, for a client that asked no confirms, logs the loss.
    pub fn confirm(
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

    /// The session moves to another node: the kept publishes will be renumbered as they are
    /// sent again; refused ones go with them, in the client's order.
    pub fn failover(&mut self) {
        self.last_upstream_seq = 0;
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
