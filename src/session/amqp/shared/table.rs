//! The channel table of a shared node connection, without sockets: which node channel carries
//! which session's channel, and what a frame in either direction becomes.
//!
//! A node channel is taken when a session opens a channel, and given back only once its close
//! is complete on both sides (the close-ok of whoever closed first has passed), so that nothing
//! the node still sends on it can reach the next session that gets the number. When a session
//! leaves, its channels are closed by tether and drained: what the node sends on them until
//! their close-ok is dropped. When tether moves a session off the connection (see
//! [`Table::unshare`]) its channels are closed the same way, but what the node sends on them
//! until then still reaches the session: a delivery it made is the session's to pass on.

use crate::proto::amqp::{Frame, id, method};
use amq_protocol::protocol::{AMQPClass, channel, queue};
use std::collections::HashMap;

use super::member::MemberId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Free,
    Member {
        member: MemberId,
        local: u16,
        /// The session sent channel.close, or tether did for it.
        session_closed: bool,
        /// The node sent channel.close.
        node_closed: bool,
        /// tether closed it, moving the session off: the close-ok is tether's, not passed on.
        closed_by_tether: bool,
    },
    /// Closed by tether for a session that left, or tether's own; dropped until close-ok.
    Draining,
}

#[derive(Default)]
struct Member {
    /// The session's channel → the node's.
    channels: HashMap<u16, u16>,
    /// Being moved off, for this reason: its channels are closing.
    unsharing: Option<&'static str>,
}

/// What becomes of a frame from a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    /// To the node (on the node's channel number, now in the frame).
    Send,
    /// Nowhere: channel 0 (tether's), a channel the node does not have, or a session that
    /// left or is being moved off.
    Drop,
    /// A channel.open with no node channel left: the session is to be moved off.
    NoChannel,
}

/// Where a frame from the node goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// To this session (its channel number in the frame).
    Member(MemberId),
    /// Nowhere: a channel tether is closing, or none.
    Drop,
}

pub struct Table {
    slots: Vec<Slot>,
    members: HashMap<MemberId, Member>,
    /// Where the search for a free channel starts: numbers are handed out round the table, so
    /// that a number just given back is the last to be taken again.
    cursor: usize,
    /// Frames tether itself sends the node (closes, close-oks, queue deletions).
    pub to_node: Vec<Frame>,
    /// Sessions moved off whose channels are all closed now: their link ends.
    pub unshared: Vec<(MemberId, &'static str)>,
    /// A session or a channel came or went since [`Table::load_changed`] was last asked.
    load_changed: bool,
}

impl Table {
    /// A table for a connection whose node allows channels 1..=`channel_max`.
    pub fn new(channel_max: u16) -> Table {
        let top = if channel_max == 0 {
            u16::MAX
        } else {
            channel_max
        };
        Table {
            slots: vec![Slot::Free; top as usize + 1],
            members: HashMap::new(),
            cursor: 1,
            to_node: Vec::new(),
            unshared: Vec::new(),
            load_changed: false,
        }
    }

    pub fn join(&mut self, member: MemberId) {
        self.members.entry(member).or_default();
        self.load_changed = true;
    }

    /// The load, when it may have changed since the last call (most frames change nothing,
    /// and the load is a sum over the sessions).
    pub fn load_changed(&mut self) -> Option<usize> {
        std::mem::take(&mut self.load_changed).then(|| self.load())
    }

    /// How full the connection is: each session counts its channels, and at least one.
    pub fn load(&self) -> usize {
        self.members.values().map(|m| m.channels.len().max(1)).sum()
    }

    /// A frame from a session, its channel renumbered for the node.
    pub fn outbound(&mut self, member: MemberId, frame: &mut Frame) -> Outbound {
        let Some(entry) = self.members.get_mut(&member) else {
            return Outbound::Drop; // it left: what it still sent goes nowhere
        };
        // Channel 0 is the connection's, which is tether's: heart-beats, and a session's
        // connection.close-ok after a close it was passed.
        if entry.unsharing.is_some() || frame.channel == 0 {
            return Outbound::Drop;
        }
        let which = frame.class_method();
        let Some(&node) = entry.channels.get(&frame.channel) else {
            if which != Some(id::CHANNEL_OPEN) {
                return Outbound::Drop; // a channel the node does not have
            }
            let Some(node) = self.take_free() else {
                return Outbound::NoChannel;
            };
            self.slots[node as usize] = Slot::Member {
                member,
                local: frame.channel,
                session_closed: false,
                node_closed: false,
                closed_by_tether: false,
            };
            if let Some(entry) = self.members.get_mut(&member) {
                entry.channels.insert(frame.channel, node);
            }
            self.load_changed = true;
            frame.channel = node;
            return Outbound::Send;
        };
        if let Slot::Member {
            session_closed,
            node_closed,
            ..
        } = &mut self.slots[node as usize]
        {
            match which {
                Some(id::CHANNEL_CLOSE) => *session_closed = true,
                // The answer to the node's close completes it: the number is free again.
                Some(id::CHANNEL_CLOSE_OK) if *node_closed && !*session_closed => {
                    let local = frame.channel;
                    frame.channel = node;
                    self.free(node, member, local);
                    return Outbound::Send;
                }
                _ => {}
            }
        }
        frame.channel = node;
        Outbound::Send
    }

    /// A frame from the node on a channel other than 0, renumbered for its session, if it goes
    /// to one.
    pub fn inbound(&mut self, frame: &mut Frame) -> Route {
        let node = frame.channel;
        let Some(slot) = self.slots.get_mut(node as usize) else {
            return Route::Drop;
        };
        let which = frame.class_method();
        match slot {
            Slot::Free => Route::Drop,
            Slot::Draining => {
                match which {
                    Some(id::CHANNEL_CLOSE_OK) => *slot = Slot::Free,
                    // The node closed it too: answered, and its close-ok to tether's close is
                    // still to come.
                    Some(id::CHANNEL_CLOSE) => self.to_node.push(close_ok(node)),
                    _ => {}
                }
                Route::Drop
            }
            Slot::Member {
                member,
                local,
                node_closed,
                closed_by_tether,
                ..
            } => {
                let (member, local, tethers) = (*member, *local, *closed_by_tether);
                match which {
                    Some(id::CHANNEL_CLOSE_OK) => {
                        self.free(node, member, local);
                        if tethers {
                            self.unshared_if_done(member);
                            return Route::Drop;
                        }
                    }
                    Some(id::CHANNEL_CLOSE) if tethers => {
                        self.to_node.push(close_ok(node));
                        return Route::Drop;
                    }
                    Some(id::CHANNEL_CLOSE) => *node_closed = true,
                    _ => {}
                }
                frame.channel = local;
                Route::Member(member)
            }
        }
    }

    /// The session is done: its channels are closed (each as far as it got) and `queues`
    /// deleted on a channel of tether's own.
    /// A session moved off (see [`Table::unshare`]) has no channels left here, but its queues
    /// still go: it declares them again on its own connection.
    pub fn leave(&mut self, member: MemberId, queues: &[String]) {
        let channels = self.members.remove(&member).map(|m| m.channels);
        self.load_changed = true;
        for (_, node) in channels.into_iter().flatten() {
            let slot = &mut self.slots[node as usize];
            if let Slot::Member {
                session_closed,
                node_closed,
                closed_by_tether,
                ..
            } = *slot
            {
                *slot = Slot::Draining;
                if node_closed && !session_closed {
                    // The node's close waits for its answer, which ends the channel.
                    self.to_node.push(close_ok(node));
                    *slot = Slot::Free;
                } else if !session_closed && !closed_by_tether {
                    self.to_node.push(close(node));
                }
            }
        }
        if queues.is_empty() {
            return;
        }
        let Some(own) = self.take_free() else {
            return; // no channel left: they live as long as the connection
        };
        self.slots[own as usize] = Slot::Draining;
        self.to_node.push(method_frame(
            own,
            &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ));
        for name in queues {
            // A queue that is gone already is no error to RabbitMQ; no answer is needed.
            let delete = queue::Delete {
                queue: name.as_str().into(),
                if_unused: false,
                if_empty: false,
                nowait: true,
            };
            self.to_node.push(method_frame(
                own,
                &AMQPClass::Queue(queue::AMQPMethod::Delete(delete)),
            ));
        }
        self.to_node.push(close(own));
    }

    /// Moves the session off the connection: its channels are closed by tether, what the
    /// node sends on them until then still reaches it, and once they are all closed it is in
    /// [`Table::unshared`]. Its own frames are dropped from now on.
    pub fn unshare(&mut self, member: MemberId, why: &'static str) {
        let Some(entry) = self.members.get_mut(&member) else {
            return;
        };
        if entry.unsharing.is_some() {
            return;
        }
        entry.unsharing = Some(why);
        let channels: Vec<(u16, u16)> = entry.channels.iter().map(|(l, n)| (*l, *n)).collect();
        for (local, node) in channels {
            let Slot::Member {
                session_closed,
                node_closed,
                ..
            } = self.slots[node as usize]
            else {
                continue;
            };
            if node_closed && !session_closed {
                // The node's close waits for its answer, which ends the channel.
                self.to_node.push(close_ok(node));
                self.free(node, member, local);
                continue;
            }
            if !session_closed {
                self.to_node.push(close(node));
            }
            self.slots[node as usize] = Slot::Member {
                member,
                local,
                session_closed: true,
                node_closed,
                closed_by_tether: true,
            };
        }
        self.unshared_if_done(member);
    }

    fn unshared_if_done(&mut self, member: MemberId) {
        if let Some(entry) = self.members.get(&member)
            && let Some(why) = entry.unsharing
            && entry.channels.is_empty()
        {
            self.members.remove(&member);
            self.unshared.push((member, why));
            self.load_changed = true;
        }
    }

    fn free(&mut self, node: u16, member: MemberId, local: u16) {
        self.slots[node as usize] = Slot::Free;
        self.load_changed = true;
        if let Some(entry) = self.members.get_mut(&member)
            && entry.channels.get(&local) == Some(&node)
        {
            entry.channels.remove(&local);
        }
    }

    fn take_free(&mut self) -> Option<u16> {
        let len = self.slots.len();
        for step in 0..len {
            let at = 1 + (self.cursor - 1 + step) % (len - 1);
            if self.slots[at] == Slot::Free {
                self.cursor = at % (len - 1) + 1;
                return Some(at as u16);
            }
        }
        None
    }
}

fn method_frame(channel: u16, method: &AMQPClass) -> Frame {
    Frame::method(channel, method::encode(method))
}

fn close(channel: u16) -> Frame {
    method_frame(
        channel,
        &AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "tether: session left".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
}

fn close_ok(channel: u16) -> Frame {
    method_frame(
        channel,
        &AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
}

#[cfg(test)]
mod tests;
