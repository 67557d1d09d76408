//! What a STOMP session has told its node and not yet seen confirmed, so that it can be told to
//! another node: subscriptions, SENDs without their RECEIPT, a pending DISCONNECT; and the
//! deliveries awaiting the client's ack ([`super::acks`]), so that acks for messages of a
//! failed node are recognised and swallowed (the broker redelivers those messages).
//!
//! Every frame tether sends upstream that it needs to hear back about carries a receipt of its
//! own (`tether-N`); the client's own receipt, if any, is kept beside the frame and answered
//! exactly once, when tether's receipt comes back (on this node or, after a failover, the next).
//!
//! Transactions are tether's own: a broker receipts a COMMIT without waiting for a quorum queue to
//! hold the messages (and RabbitMQ drops them while the queue elects a leader). tether keeps a
//! transaction's SENDs and ACKs until COMMIT, then sends them as ordinary frames with receipts of
//! its own, and answers the COMMIT's receipt once every SEND is confirmed. A node failure before
//! the COMMIT loses nothing (nothing left tether); one after it replays the unconfirmed SENDs like
//! any others.
//!
//! No I/O here: the session feeds frames in and sends what comes out.

use super::acks::{Settled, Unacked};
pub use super::caps::Caps;
use crate::proto::stomp::{Command, Frame, Version};
use std::collections::{HashMap, VecDeque};

/// A record that a receipt from the node confirms.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Receipted {
    /// A SEND: confirmed, it can be forgotten.
    Send(u64),
    Subscribe(String),
    Disconnect,
    /// A frame with nothing to replay (UNSUBSCRIBE, ACK, ABORT ...): only the client's receipt.
    Answer(String),
    /// An UNSUBSCRIBE of a planned move: the node has sent its last MESSAGE for it.
    MoveUnsubscribe,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Send {
    seq: u64,
    /// The frame without the client's receipt header.
    frame: Frame,
    client_receipt: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Subscription {
    key: String,
    frame: Frame,
    ack: AckMode,
    client_receipt: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum AckMode {
    Auto,
    /// `client`: an ACK acknowledges every earlier message of the subscription too.
    Cumulative,
    /// `client-individual`.
    Individual,
}

/// An open transaction: its SENDs and ACKs/NACKs (without their `transaction` header), kept in
/// tether until COMMIT.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Transaction {
    name: String,
    sends: Vec<Frame>,
    acks: Vec<Frame>,
    /// The bytes of `sends` and `acks` (see `frame_cost`).
    #[serde(default)]
    bytes: usize,
}

/// A committed transaction whose client receipt waits for its SENDs to be confirmed.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct PendingCommit {
    client_receipt: String,
    seqs: Vec<u64>,
}

/// What to do with a frame from the client.
#[derive(Debug, PartialEq)]
pub enum ClientAction {
    /// Send this to the node (the session's node is up).
    Forward(Frame),
    /// Recorded: the replay will send it once a node is connected.
    Recorded,
    /// Nothing goes upstream; answer the client with this RECEIPT.
    Answer(Frame),
    /// Nothing goes upstream and nothing comes back.
    Dropped,
    /// A COMMIT: its frames for the node (if one is up) and for the client.
    Committed {
        to_node: Vec<Frame>,
        to_client: Vec<Frame>,
    },
    /// Past one of the session's [`Caps`]: the client gets this ERROR and the session ends.
    Refuse(String),
}

/// What a RECEIPT from the node means for the client.
#[derive(Debug, PartialEq)]
pub enum ReceiptOutcome {
    /// Pass this RECEIPT (the client's own id) to the client.
    ToClient(Frame),
    /// tether's own receipt: nothing for the client.
    Swallowed,
    /// The DISCONNECT is confirmed: answer the client if it asked, then close.
    Disconnected(Option<Frame>),
}

/// The client's DISCONNECT, due now that everything before it is confirmed.
#[derive(Debug, PartialEq)]
pub enum Disconnect {
    /// Send this to the node (it answers with the receipt that ends the session).
    ToNode(Frame),
    /// tether answered it (the node connection goes to the pool): the client's RECEIPT, if it
    /// asked for one.
    Answered(Option<Frame>),
}

/// What a session leaves subscribed on its node connection, for the pool to clean away: an
/// UNSUBSCRIBE for each subscription, the subscriptions whose messages need no ack (a MESSAGE
/// for any other while cleaning means one the broker counts as unacked), and how many
/// deliveries the client has not acked.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub unsubscribes: Vec<Frame>,
    pub auto_ack: Vec<String>,
    pub unacked: usize,
}

/// What replay sends to a new node after CONNECTED, and how many of each kind. A pending
/// DISCONNECT is not part of it: [`ReplayLog::due_disconnect`] sends it when its time comes.
#[derive(Debug, Default)]
pub struct Replay {
    pub frames: Vec<Frame>,
    pub subscriptions: usize,
    pub sends: usize,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReplayLog {
    version: Version,
    next_receipt: u64,
    next_seq: u64,
    subscriptions: Vec<Subscription>,
    transactions: Vec<Transaction>,
    /// The listener's, not carried in a takeover: the new process sets its own.
    #[serde(skip)]
    pub caps: Caps,
    commits: Vec<PendingCommit>,
    outbox: VecDeque<Send>,
    /// The client sent DISCONNECT (with this receipt, if any).
    disconnect: Option<Option<String>>,
    /// ... and tether passed it on. It waits until every SEND is confirmed: a broker may close
    /// the connection on DISCONNECT before confirming what came before it.
    disconnect_sent: bool,
    receipts: HashMap<String, Receipted>,
    unacked: Unacked,
    /// A planned move's UNSUBSCRIBEs whose RECEIPT has not come yet.
    move_unsubscribes: usize,
    /// Whether a subscription is to a temporary destination (kept with `subscriptions`, so
    /// that the session loop, which asks on every turn, does not walk them).
    temporary_subscription: bool,
    /// SUBSCRIBEs recorded (see [`ReplayLog::subscription_signature`]).
    #[serde(default)]
    subscribed: u64,
    unconfirmed: usize,
    unconfirmed_bytes: usize,
    stale_acks: u64,
}

/// A SEND costs its body plus a rough allowance for its headers.
fn frame_cost(frame: &Frame) -> usize {
    frame.body.len()
        + frame
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 2)
            .sum::<usize>()
}

impl ReplayLog {
    /// `version` is the one both legs speak; it decides which header carries ack ids.
    /// A log whose session may hold at most `caps`.
    pub fn with_caps(version: Version, caps: Caps) -> ReplayLog {
        ReplayLog {
            caps,
            ..ReplayLog::new(version)
        }
    }

    pub fn new(version: Version) -> ReplayLog {
        ReplayLog {
            version,
            move_unsubscribes: 0,
            temporary_subscription: false,
            subscribed: 0,
            next_receipt: 0,
            next_seq: 0,
            subscriptions: Vec::new(),
            transactions: Vec::new(),
            caps: Caps::default(),
            commits: Vec::new(),
            outbox: VecDeque::new(),
            disconnect: None,
            disconnect_sent: false,
            receipts: HashMap::new(),
            unacked: Unacked::default(),
            unconfirmed: 0,
            unconfirmed_bytes: 0,
            stale_acks: 0,
        }
    }

    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// SEND frames kept until confirmed, and those of open transactions.
    pub fn unconfirmed(&self) -> usize {
        self.unconfirmed
    }

    pub fn unconfirmed_bytes(&self) -> usize {
        self.unconfirmed_bytes
    }

    /// Deliveries tracked for their ack.
    pub fn unacked(&self) -> usize {
        self.unacked.count()
    }

    pub fn stale_acks(&self) -> u64 {
        self.stale_acks
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// A planned move begins: the UNSUBSCRIBEs (with receipts of tether's) that stop the node
    /// delivering to `auto`-ack subscriptions, whose messages count as delivered once sent, so
    /// that none is still in flight when the session leaves the node. The subscriptions stay
    /// recorded (the next node gets them), and those with acks stay subscribed: an ACK after
    /// UNSUBSCRIBE is an error to ActiveMQ, and what they were sent is redelivered anyway.
    pub fn unsubscribe_for_move(&mut self) -> Vec<Frame> {
        let auto: Vec<Frame> = self
            .subscriptions
            .iter()
            .filter(|s| s.ack == AckMode::Auto)
            .map(|s| {
                let mut frame = Frame::new(Command::Unsubscribe);
                match s.frame.header("id") {
                    Some(id) => frame.headers.set("id", id),
                    None => frame.headers.set(
                        "destination",
                        s.frame.header("destination").unwrap_or_default(),
                    ),
                }
                frame
            })
            .collect();
        auto.into_iter()
            .map(|frame| {
                self.move_unsubscribes += 1;
                self.with_receipt(&frame, Receipted::MoveUnsubscribe)
            })
            .collect()
    }

    /// Whether a planned move may switch nodes: every SEND is confirmed, no commit waits, the
    /// move's UNSUBSCRIBEs are answered.
    /// UNSUBSCRIBEs of [`ReplayLog::unsubscribe_for_move`] whose RECEIPT has not come yet.
    pub fn unsubscribes_pending(&self) -> usize {
        self.move_unsubscribes
    }

    pub fn ready_to_move(&self) -> bool {
        self.outbox.is_empty()
            && self.commits.is_empty()
            && self.disconnect.is_none()
            && self.move_unsubscribes == 0
    }

    /// Deliveries of the current node the client has not acked yet.
    pub fn unacked_here(&self) -> usize {
        self.unacked.here()
    }

    /// Whether nothing awaits the node: the session may end without losing anything.
    pub fn is_settled(&self) -> bool {
        self.outbox.is_empty() && self.commits.is_empty() && self.disconnect.is_none()
    }

    fn receipt_id(&mut self, record: Receipted) -> String {
        self.next_receipt += 1;
        let id = format!("tether-{}", self.next_receipt);
        self.receipts.insert(id.clone(), record);
        id
    }

    fn with_receipt(&mut self, frame: &Frame, record: Receipted) -> Frame {
        let id = self.receipt_id(record);
        let mut frame = frame.clone();
        frame.headers.set("receipt", id);
        frame
    }

    fn answer(receipt: String) -> Frame {
        Frame::new(Command::Receipt).with_header("receipt-id", receipt)
    }

    /// Records a frame from the client. `connected` says whether a node is there to forward to.
    pub fn client_frame(&mut self, mut frame: Frame, connected: bool) -> ClientAction {
        let client_receipt = frame.headers.remove("receipt");
        match frame.command {
            Command::Send => {
                self.unconfirmed += 1;
                self.unconfirmed_bytes += frame_cost(&frame);
                if let Some(tx) = self.open_transaction(&frame) {
                    frame.headers.remove("transaction");
                    if let Some(refusal) = self.hold(tx, frame, true) {
                        return ClientAction::Refuse(refusal);
                    }
                    // Taken in: that is all a receipt for a SEND in a transaction says.
                    return client_receipt.map_or(ClientAction::Recorded, |r| {
                        ClientAction::Answer(Self::answer(r))
                    });
                }
                // A SEND naming an unknown transaction is the broker's to refuse; kept like any
                // other so that it is not lost meanwhile.
                let out = self.keep_send(frame, client_receipt, connected);
                out.map_or(ClientAction::Recorded, ClientAction::Forward)
            }
            Command::Subscribe => {
                let key = subscription_key(&frame);
                let ack = match frame.header("ack") {
                    Some("client") => AckMode::Cumulative,
                    Some("client-individual") => AckMode::Individual,
                    _ => AckMode::Auto,
                };
                self.subscriptions.retain(|s| s.key != key);
                if self.subscriptions.len() >= self.caps.subscriptions {
                    crate::budget::reached("max_subscriptions");
                    return ClientAction::Refuse(format!(
                        "too many subscriptions: this listener allows {} per session \
                         (max_subscriptions)",
                        self.caps.subscriptions
                    ));
                }
                let out = match (&client_receipt, connected) {
                    (Some(_), true) => {
                        Some(self.with_receipt(&frame, Receipted::Subscribe(key.clone())))
                    }
                    (None, true) => Some(frame.clone()),
                    (_, false) => None,
                };
                self.subscriptions.push(Subscription {
                    key,
                    frame,
                    ack,
                    client_receipt,
                });
                self.subscribed += 1;
                self.note_temporary_subscriptions();
                out.map_or(ClientAction::Recorded, ClientAction::Forward)
            }
            Command::Unsubscribe => {
                let key = subscription_key(&frame);
                self.subscriptions.retain(|s| s.key != key);
                self.note_temporary_subscriptions();
                self.unacked.unsubscribed(&key);
                self.forward_or_answer(frame, client_receipt, connected)
            }
            Command::Ack | Command::Nack => self.client_ack(frame, client_receipt, connected),
            Command::Begin => {
                let name = frame.header("transaction").unwrap_or_default().to_owned();
                self.drop_transaction(&name);
                if self.transactions.len() >= self.caps.transactions {
                    crate::budget::reached("max_transactions");
                    return ClientAction::Refuse(format!(
                        "too many open transactions: this listener allows {} per session \
                         (max_transactions)",
                        self.caps.transactions
                    ));
                }
                self.transactions.push(Transaction {
                    name,
                    ..Transaction::default()
                });
                client_receipt.map_or(ClientAction::Dropped, |r| {
                    ClientAction::Answer(Self::answer(r))
                })
            }
            Command::Commit => {
                let name = frame.header("transaction").unwrap_or_default();
                let Some(index) = self.transactions.iter().position(|t| t.name == name) else {
                    // Unknown to tether, so unknown to the node: let the broker answer it.
                    return self.forward_or_answer(frame, client_receipt, connected);
                };
                let transaction = self.transactions.remove(index);
                self.commit(transaction, client_receipt, connected)
            }
            Command::Abort => {
                let name = frame.header("transaction").unwrap_or_default();
                if !self.drop_transaction(name) {
                    return self.forward_or_answer(frame, client_receipt, connected);
                }
                client_receipt.map_or(ClientAction::Dropped, |r| {
                    ClientAction::Answer(Self::answer(r))
                })
            }
            Command::Disconnect => {
                // Sent by `due_disconnect` once everything before it is confirmed.
                self.disconnect = Some(client_receipt);
                ClientAction::Recorded
            }
            // Server frames, or a second CONNECT: the session refuses those before this point.
            _ => ClientAction::Dropped,
        }
    }

    /// The index of the open transaction a frame names, if tether knows it.
    fn open_transaction(&self, frame: &Frame) -> Option<usize> {
        let name = frame.header("transaction")?;
        self.transactions.iter().position(|t| t.name == name)
    }

    /// Keeps a SEND (or an ACK/NACK) in open transaction `tx` until its COMMIT; says why not
    /// once the open transactions hold as much as the session may keep.
    fn hold(&mut self, tx: usize, frame: Frame, send: bool) -> Option<String> {
        let transaction = &mut self.transactions[tx];
        transaction.bytes += frame_cost(&frame);
        match send {
            true => transaction.sends.push(frame),
            false => transaction.acks.push(frame),
        }
        let held = self.transactions.iter().fold((0, 0), |(n, b), t| {
            (n + t.sends.len() + t.acks.len(), b + t.bytes)
        });
        let refused = self.caps.refuse_held(held);
        if refused.is_some() {
            crate::budget::reached("transactions_held");
        }
        refused
    }

    /// Forgets an open transaction; returns whether there was one.
    fn drop_transaction(&mut self, name: &str) -> bool {
        let Some(index) = self.transactions.iter().position(|t| t.name == name) else {
            return false;
        };
        let transaction = self.transactions.remove(index);
        for send in &transaction.sends {
            self.unconfirmed -= 1;
            self.unconfirmed_bytes -= frame_cost(send);
        }
        true
    }

    /// Keeps a SEND until confirmed; returns it for the node, with tether's receipt, if one is up.
    /// The SEND is already counted as unconfirmed.
    fn keep_send(
        &mut self,
        frame: Frame,
        client_receipt: Option<String>,
        connected: bool,
    ) -> Option<Frame> {
        self.next_seq += 1;
        let seq = self.next_seq;
        let out = connected.then(|| self.with_receipt(&frame, Receipted::Send(seq)));
        self.outbox.push_back(Send {
            seq,
            frame,
            client_receipt,
        });
        out
    }

    /// COMMIT: the transaction's SENDs become ordinary kept SENDs and its ACKs are sent; the
    /// client's receipt waits for the SENDs to be confirmed.
    fn commit(
        &mut self,
        transaction: Transaction,
        client_receipt: Option<String>,
        connected: bool,
    ) -> ClientAction {
        let mut to_node = Vec::new();
        let mut to_client = Vec::new();
        let mut seqs = Vec::new();
        for send in transaction.sends {
            to_node.extend(self.keep_send(send, None, connected));
            seqs.push(self.next_seq);
        }
        for ack in transaction.acks {
            match self.client_ack(ack, None, connected) {
                ClientAction::Forward(frame) => to_node.push(frame),
                ClientAction::Answer(frame) => to_client.push(frame),
                _ => {}
            }
        }
        if let Some(receipt) = client_receipt {
            if seqs.is_empty() {
                to_client.push(Self::answer(receipt));
            } else {
                self.commits.push(PendingCommit {
                    client_receipt: receipt,
                    seqs,
                });
            }
        }
        ClientAction::Committed { to_node, to_client }
    }

    /// Receipts of committed transactions whose SENDs are now all confirmed.
    pub fn completed_commits(&mut self) -> Vec<Frame> {
        let outbox = &self.outbox;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.commits)
            .into_iter()
            .partition(|c| {
                c.seqs
                    .iter()
                    .all(|seq| outbox.iter().all(|s| s.seq != *seq))
            });
        self.commits = waiting;
        done.into_iter()
            .map(|c| Self::answer(c.client_receipt))
            .collect()
    }

    /// Frames whose effect does not outlive the connection: forwarded when a node is there,
    /// answered at once otherwise (the failed node's state is gone anyway).
    fn forward_or_answer(
        &mut self,
        frame: Frame,
        client_receipt: Option<String>,
        connected: bool,
    ) -> ClientAction {
        match (client_receipt, connected) {
            (Some(receipt), true) => {
                ClientAction::Forward(self.with_receipt(&frame, Receipted::Answer(receipt)))
            }
            (None, true) => ClientAction::Forward(frame),
            (Some(receipt), false) => ClientAction::Answer(Self::answer(receipt)),
            (None, false) => ClientAction::Dropped,
        }
    }

    fn ack_id<'f>(&self, frame: &'f Frame) -> Option<&'f str> {
        match self.version {
            Version::V1_2 => frame.header("id"),
            _ => frame.header("message-id"),
        }
    }

    fn client_ack(
        &mut self,
        mut frame: Frame,
        client_receipt: Option<String>,
        connected: bool,
    ) -> ClientAction {
        if let Some(tx) = self.open_transaction(&frame) {
            frame.headers.remove("transaction");
            if let Some(refusal) = self.hold(tx, frame, false) {
                return ClientAction::Refuse(refusal);
            }
            return client_receipt.map_or(ClientAction::Dropped, |r| {
                ClientAction::Answer(Self::answer(r))
            });
        }
        let Some(id) = self.ack_id(&frame).map(str::to_owned) else {
            return self.forward_or_answer(frame, client_receipt, connected);
        };
        match self.unacked.settle(&id) {
            // Not a delivery tether tracks: the broker answers it as it would without tether.
            Settled::Unknown => self.forward_or_answer(frame, client_receipt, connected),
            Settled::Here if connected => self.forward_or_answer(frame, client_receipt, true),
            // The message came through a node this session has left: the broker has requeued
            // it and will redeliver it, so this ack has nothing to act on.
            Settled::Here | Settled::Stale => {
                self.stale_acks += 1;
                match client_receipt {
                    Some(receipt) => ClientAction::Answer(Self::answer(receipt)),
                    None => ClientAction::Dropped,
                }
            }
        }
    }

    /// Notes a MESSAGE from the node, so that its ack can be told fresh from stale.
    pub fn upstream_message(&mut self, frame: &Frame) {
        let Some(subscription) = self.subscription_of(frame) else {
            return;
        };
        let (key, ack) = (subscription.key.clone(), subscription.ack);
        if ack == AckMode::Auto {
            return;
        }
        let id = match self.version {
            Version::V1_2 => frame.header("ack"),
            _ => frame.header("message-id"),
        };
        let Some(id) = id else { return };
        self.unacked.delivered(id, key, ack == AckMode::Cumulative);
    }

    fn subscription_of(&self, message: &Frame) -> Option<&Subscription> {
        match message.header("subscription") {
            Some(id) => self.subscriptions.iter().find(|s| s.key == id),
            None => {
                let destination = message.header("destination")?;
                self.subscriptions
                    .iter()
                    .find(|s| s.frame.header("destination") == Some(destination))
            }
        }
    }

    /// A RECEIPT from the node.
    pub fn upstream_receipt(&mut self, receipt_id: &str) -> ReceiptOutcome {
        let Some(record) = self.receipts.remove(receipt_id) else {
            // Not one of ours: a receipt tether did not add passes through untouched.
            return ReceiptOutcome::ToClient(Self::answer(receipt_id.to_owned()));
        };
        let client_receipt = match record {
            Receipted::Send(seq) => match self.outbox.iter().position(|s| s.seq == seq) {
                Some(index) => {
                    let send = self.outbox.remove(index).expect("index is in range");
                    self.forget_sends(std::slice::from_ref(&send));
                    send.client_receipt
                }
                None => None,
            },
            Receipted::Subscribe(key) => self
                .subscriptions
                .iter_mut()
                .find(|s| s.key == key)
                .and_then(|s| s.client_receipt.take()),
            Receipted::Disconnect => {
                let receipt = self.disconnect.take().flatten();
                return ReceiptOutcome::Disconnected(receipt.map(Self::answer));
            }
            Receipted::Answer(receipt) => Some(receipt),
            Receipted::MoveUnsubscribe => {
                self.move_unsubscribes = self.move_unsubscribes.saturating_sub(1);
                None
            }
        };
        match client_receipt {
            Some(receipt) => ReceiptOutcome::ToClient(Self::answer(receipt)),
            None => ReceiptOutcome::Swallowed,
        }
    }

    /// The client's own receipt id for an ERROR's `receipt-id`, if tether had replaced it.
    pub fn client_receipt_for(&self, receipt_id: &str) -> Option<String> {
        match self.receipts.get(receipt_id)? {
            Receipted::Send(seq) => self
                .outbox
                .iter()
                .find(|s| s.seq == *seq)
                .and_then(|s| s.client_receipt.clone()),
            Receipted::Answer(receipt) => Some(receipt.clone()),
            _ => None,
        }
    }

    fn forget_sends(&mut self, sends: &[Send]) {
        for send in sends {
            self.unconfirmed -= 1;
            self.unconfirmed_bytes -= frame_cost(&send.frame);
        }
    }

    /// The client's DISCONNECT, if it sent one and every SEND before it is confirmed: for the
    /// node, or answered here when `keep_node` (the connection goes to the pool).
    pub fn due_disconnect(&mut self, connected: bool, keep_node: bool) -> Option<Disconnect> {
        let due = connected
            && self.disconnect.is_some()
            && !self.disconnect_sent
            && self.outbox.is_empty()
            && self.commits.is_empty();
        if !due {
            return None;
        }
        self.disconnect_sent = true;
        if keep_node {
            let receipt = self.disconnect.take().flatten();
            return Some(Disconnect::Answered(receipt.map(Self::answer)));
        }
        let frame = self.with_receipt(&Frame::new(Command::Disconnect), Receipted::Disconnect);
        Some(Disconnect::ToNode(frame))
    }

    /// What the session leaves subscribed on the node.
    pub fn leftovers(&self) -> Leftovers {
        let mut left = Leftovers {
            unacked: self.unacked.here(),
            ..Leftovers::default()
        };
        for subscription in &self.subscriptions {
            let mut frame = Frame::new(Command::Unsubscribe);
            let key = match subscription.frame.header("id") {
                Some(id) => {
                    frame.headers.set("id", id);
                    id
                }
                None => {
                    let destination = subscription.frame.header("destination").unwrap_or_default();
                    frame.headers.set("destination", destination);
                    destination
                }
            };
            if subscription.ack == AckMode::Auto {
                left.auto_ack.push(key.to_owned());
            }
            left.unsubscribes.push(frame);
        }
        left
    }

    /// The client has gone without DISCONNECT: the broker would roll back its open
    /// transactions, so they are dropped; committed ones are kept until confirmed.
    pub fn client_gone(&mut self) {
        let names: Vec<String> = self.transactions.iter().map(|t| t.name.clone()).collect();
        for name in names {
            self.drop_transaction(&name);
        }
    }

    /// The node is gone. Acks for what it delivered become stale, and its receipts will never
    /// come: the next [`replay`](Self::replay) asks for them again.
    pub fn failover(&mut self) {
        self.unacked.failover();
        self.move_unsubscribes = 0;
        self.disconnect_sent = false;
        self.receipts.clear();
    }

    /// Everything a new node must be told, in order, after CONNECTED: subscriptions, then
    /// unconfirmed SENDs (committed transactions' among them). Open transactions are in tether
    /// and need nothing.
    pub fn replay(&mut self) -> Replay {
        let mut replay = Replay::default();
        let subscriptions: Vec<(String, Frame, bool)> = self
            .subscriptions
            .iter()
            .map(|s| (s.key.clone(), s.frame.clone(), s.client_receipt.is_some()))
            .collect();
        for (key, frame, owes_receipt) in subscriptions {
            replay.frames.push(match owes_receipt {
                true => self.with_receipt(&frame, Receipted::Subscribe(key)),
                false => frame,
            });
            replay.subscriptions += 1;
        }
        let outbox: Vec<(u64, Frame)> = self
            .outbox
            .iter()
            .map(|s| (s.seq, s.frame.clone()))
            .collect();
        for (seq, frame) in outbox {
            replay
                .frames
                .push(self.with_receipt(&frame, Receipted::Send(seq)));
            replay.sends += 1;
        }
        replay
    }
}

/// A subscription is known by its `id` (required from 1.1) or, in 1.0 without one, by its
/// destination.
fn subscription_key(frame: &Frame) -> String {
    frame
        .header("id")
        .or_else(|| frame.header("destination"))
        .unwrap_or_default()
        .to_owned()
}

mod destinations;

#[cfg(test)]
mod tests;
