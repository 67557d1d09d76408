//! Frames from the client: recorded as the replay needs them, translated to the node's names
//! and numbers, and queued for the node; or answered by tether (transactions), or refused as
//! a broker would refuse them.

use super::{ChannelSession, Out, SessionState};
use crate::proto::amqp::{Frame, FrameType, id, method, reply};
use crate::session::amqp::assembly::{Assembly, AssemblyError};
use crate::session::amqp::confirms::{Confirms, Publish};
use crate::session::amqp::requests::expects_answer;
use crate::session::failover::End;
use amq_protocol::protocol::{AMQPClass, basic, channel as chan, confirm, exchange, queue, tx};

/// confirm.select without an answer: how tether turns confirms on for itself.
fn confirm_select() -> AMQPClass {
    AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
        nowait: true,
    }))
}

impl SessionState {
    /// A frame from the client (the session parks those that must wait for a planned move).
    pub fn client_frame(&mut self, frame: Frame, out: &mut Out) {
        match frame.kind {
            FrameType::Heartbeat => {}
            FrameType::Header | FrameType::Body => self.client_content(frame, out),
            FrameType::Method => self.client_method(frame, out),
        }
    }

    fn client_content(&mut self, frame: Frame, out: &mut Out) {
        let max_body = self.limits.max_message_size;
        let channel = frame.channel;
        let publishing = self
            .channels
            .get_mut(&channel)
            .and_then(|c| c.publishing.as_mut());
        let outcome = match publishing {
            Some(assembly) => assembly.add(frame, max_body),
            None => Err(AssemblyError::Stray(channel)),
        };
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                let assembly = self
                    .channels
                    .get_mut(&channel)
                    .and_then(|c| c.publishing.take());
                if let Some(assembly) = assembly {
                    self.publish(channel, assembly.into_frames(), out);
                }
            }
            Err(e) => {
                if matches!(e, AssemblyError::TooLarge(..)) {
                    crate::budget::reached("max_message_size");
                }
                out.client_error(e.reply_code(), &e.to_string())
            }
        }
    }

    /// A complete publish: kept until confirmed and sent on (in a transaction: kept until the
    /// commit).
    fn publish(&mut self, channel: u16, frames: Vec<Frame>, out: &mut Out) {
        if let Some(method) = frames.first() {
            self.note_publish_target(method);
        }
        let Some(session) = self.channels.get_mut(&channel) else {
            return;
        };
        if session.state.tx.is_open() {
            // Sent with the transaction's commit.
            session.state.record_publish(Publish::new(frames));
            return self.check_transactions(out);
        }
        if session.state.record_publish(Publish::new(frames.clone())) {
            out.node_method(channel, &confirm_select());
        }
        out.to_node.extend(self.names.publish_for_node(frames));
    }

    fn client_method(&mut self, frame: Frame, out: &mut Out) {
        let channel = frame.channel;
        let Some(class_method) = frame.class_method() else {
            return out.client_error(reply::SYNTAX_ERROR, "SYNTAX_ERROR - method frame too short");
        };
        if channel == 0 {
            return self.client_connection_method(frame, class_method, out);
        }
        if class_method == id::CHANNEL_OPEN {
            return self.client_channel_open(frame, out);
        }
        let Some(session) = self.channels.get_mut(&channel) else {
            return out.client_error(
                reply::CHANNEL_ERROR,
                &format!("CHANNEL_ERROR - expected 'channel.open' on channel {channel}"),
            );
        };
        if session.publishing.is_some() {
            return out.client_error(
                reply::UNEXPECTED_FRAME,
                "UNEXPECTED_FRAME - expected content after basic.publish",
            );
        }
        if session.closed_by_node && class_method != id::CHANNEL_CLOSE_OK {
            // The channel is closing; the spec has the peer drop everything but close-ok.
            return;
        }
        match class_method {
            id::BASIC_PUBLISH => {
                if let Err(e) = method::peek_publish(&frame.payload) {
                    return out.client_error(
                        e.reply_code(),
                        &format!("SYNTAX_ERROR - basic.publish: {e}"),
                    );
                }
                session.publishing = Some(Assembly::start(frame));
            }
            id::BASIC_ACK | id::BASIC_NACK | id::BASIC_REJECT => {
                self.client_ack(frame, class_method, out)
            }
            _ => match method::decode(&frame.payload) {
                Ok(decoded) => self.client_request(frame, decoded, out),
                Err(e) => out.client_error(e.reply_code(), &format!("SYNTAX_ERROR - {e}")),
            },
        }
    }

    fn client_connection_method(&mut self, frame: Frame, class_method: (u16, u16), out: &mut Out) {
        match class_method {
            id::CONNECTION_CLOSE => {
                // Open transactions die with the connection; the close is sent on once every
                // publish is confirmed (see release_held_closes).
                self.roll_back_transactions();
                self.client_closing = Some(frame);
            }
            id::CONNECTION_CLOSE_OK if self.node_closed => {
                out.end(End::Forwarded("the node closed the connection".into()));
            }
            id::CONNECTION_CLOSE_OK => {}
            _ => out.client_error(
                reply::COMMAND_INVALID,
                &format!(
                    "COMMAND_INVALID - {} is not expected now",
                    id::MethodName(class_method)
                ),
            ),
        }
    }

    fn client_channel_open(&mut self, frame: Frame, out: &mut Out) {
        let channel = frame.channel;
        if self.channels.contains_key(&channel) {
            return out.client_error(
                reply::CHANNEL_ERROR,
                &format!("CHANNEL_ERROR - channel {channel} is already open"),
            );
        }
        let mut session = ChannelSession::new(channel);
        if let Some(reusable) = self.reusable.remove(&channel) {
            // Open on the node already, left clean by the pool: answered here.
            session.state.confirms = Confirms::adopt(reusable);
            self.channels.insert(channel, session);
            let open_ok = chan::OpenOk {};
            return out.client_method(
                channel,
                &AMQPClass::Channel(chan::AMQPMethod::OpenOk(open_ok)),
            );
        }
        let open = AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {}));
        session.requests.sent(open, frame.clone());
        self.channels.insert(channel, session);
        out.node(frame);
    }

    fn client_ack(&mut self, frame: Frame, class_method: (u16, u16), out: &mut Out) {
        let ack = match method::peek_ack(&frame.payload) {
            Ok(ack) => ack,
            Err(e) => return out.client_error(e.reply_code(), &format!("SYNTAX_ERROR - {e}")),
        };
        let Some(session) = self.channels.get_mut(&frame.channel) else {
            return;
        };
        if session.state.tx.is_open() {
            // Sent with the transaction's commit.
            session.state.tx.hold_ack((class_method, ack));
            return self.check_transactions(out);
        }
        self.send_ack(frame.channel, class_method, ack, out);
    }

    /// Ends the session with a clear error once its open transactions hold as much as the
    /// listener lets a session keep: tether would stop reading the client there, and the
    /// commit could never arrive.
    fn check_transactions(&mut self, out: &mut Out) {
        let (held, bytes) = self.held_in_transactions();
        let limits = &self.limits;
        if held >= limits.max_held || bytes >= limits.max_held_bytes {
            let text = format!(
                "RESOURCE_ERROR - open transactions hold {held} publishes and acks ({bytes} \
                 bytes), as much as tether keeps for a session (max_unconfirmed = {}, \
                 max_unconfirmed_bytes = {}): commit sooner",
                limits.max_held, limits.max_held_bytes
            );
            crate::budget::reached("transactions_held");
            out.client_error(reply::RESOURCE_ERROR, &text);
        }
    }

    /// An ack, nack or reject in the client's tags, sent in the node's, or swallowed if it is
    /// for a failed node's delivery.
    fn send_ack(
        &mut self,
        channel: u16,
        class_method: (u16, u16),
        ack: method::Ack,
        out: &mut Out,
    ) {
        let Some(session) = self.channels.get_mut(&channel) else {
            return;
        };
        session.state.tags.settle(ack.delivery_tag, ack.multiple);
        match session.state.tags.upstream_ack(ack) {
            Some(upstream) => {
                let payload = method::encode_ack(class_method, upstream);
                out.node(Frame::method(channel, payload));
            }
            None => self.stale_acks += 1,
        }
    }

    /// Every other client method: recorded as needed, queue names translated, sent on.
    fn client_request(&mut self, frame: Frame, decoded: AMQPClass, out: &mut Out) {
        let channel = frame.channel;
        let Some(session) = self.channels.get_mut(&channel) else {
            return;
        };
        if matches!(
            decoded,
            AMQPClass::Basic(
                basic::AMQPMethod::Consume(_)
                    | basic::AMQPMethod::Get(_)
                    | basic::AMQPMethod::Qos(_)
                    | basic::AMQPMethod::Recover(_)
                    | basic::AMQPMethod::RecoverAsync(_)
            ) | AMQPClass::Channel(chan::AMQPMethod::Flow(_))
        ) {
            session.tainted = true;
        }
        match &decoded {
            AMQPClass::Channel(chan::AMQPMethod::Close(_)) => {
                // An open transaction dies with its channel; what was published is sent on once
                // the channel's publishes are confirmed (see release_held_closes).
                session.state.tx.rollback();
                session.closing = Some(frame);
                return;
            }
            AMQPClass::Channel(chan::AMQPMethod::CloseOk(_)) => {
                let by_node = session.closed_by_node;
                self.channels.remove(&channel);
                if by_node {
                    out.node(frame);
                }
                return;
            }
            AMQPClass::Basic(basic::AMQPMethod::Qos(qos)) => {
                // Copied: kept for the life of the channel, it must not pin a read buffer.
                session
                    .state
                    .set_qos(qos.global, bytes::Bytes::copy_from_slice(&frame.payload));
            }
            AMQPClass::Confirm(confirm::AMQPMethod::Select(select)) => {
                if session.state.tx.is_open() {
                    return out.client_error(
                        reply::COMMAND_INVALID,
                        "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
                    );
                }
                let already_on = session.state.confirms.upstream_confirm;
                session.state.confirms.client_selected();
                if already_on {
                    // The node channel is in confirm mode (tether's, or a pooled channel's):
                    // nothing to ask it.
                    if !select.nowait {
                        let ok = confirm::AMQPMethod::SelectOk(confirm::SelectOk {});
                        out.client_method(channel, &AMQPClass::Confirm(ok));
                    }
                    return;
                }
            }
            AMQPClass::Tx(method) => return self.client_transaction(channel, method, out),
            AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)) => {
                session
                    .state
                    .consumers
                    .retain(|c| c.tag != cancel.consumer_tag.as_str());
            }
            _ => {}
        }
        let rewritten = self.names.request_for_node(&decoded);
        if !expects_answer(&decoded) {
            self.record_unanswered(&decoded);
        } else if let Some(session) = self.channels.get_mut(&channel) {
            session.requests.sent(decoded, frame.clone());
        }
        match rewritten {
            Some(method) => out.node_method(channel, &method),
            None => out.node(frame),
        }
    }

    /// tx.select, tx.commit, tx.rollback: answered by tether, which runs transactions over
    /// confirms (see [`crate::session::amqp::channel`]).
    fn client_transaction(&mut self, channel: u16, method: &tx::AMQPMethod, out: &mut Out) {
        let Some(session) = self.channels.get_mut(&channel) else {
            return;
        };
        let reply = match method {
            tx::AMQPMethod::Select(_) => {
                if session.state.confirms.client_confirm {
                    return out.client_error(
                        reply::COMMAND_INVALID,
                        "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
                    );
                }
                if session.state.tx.select(&mut session.state.confirms) {
                    out.node_method(channel, &confirm_select());
                }
                AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {}))
            }
            tx::AMQPMethod::Commit(_) if session.state.tx.is_open() => {
                let channel_state = &mut session.state;
                let (publishes, acks) = channel_state.tx.commit(&mut channel_state.confirms);
                for frames in publishes {
                    out.to_node.extend(self.names.publish_for_node(frames));
                }
                for (class_method, ack) in acks {
                    self.send_ack(channel, class_method, ack, out);
                }
                self.commit_if_confirmed(channel, out);
                return;
            }
            tx::AMQPMethod::Rollback(_) if session.state.tx.is_open() => {
                session.state.tx.rollback();
                AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {}))
            }
            _ => {
                return out.client_error(
                    reply::COMMAND_INVALID,
                    "PRECONDITION_FAILED - channel is not transactional",
                );
            }
        };
        out.client_method(channel, &reply);
    }

    /// Answers a pending tx.commit once its publishes are all confirmed.
    pub(super) fn commit_if_confirmed(&mut self, channel: u16, out: &mut Out) {
        let confirmed = self
            .channels
            .get_mut(&channel)
            .is_some_and(|s| s.state.commit_confirmed());
        if confirmed {
            let ok = AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {}));
            out.client_method(channel, &ok);
        }
    }

    /// Requests sent with `nowait` are recorded as sent: no answer will confirm them.
    fn record_unanswered(&mut self, method: &AMQPClass) {
        let declarations = &mut self.declarations;
        match method {
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(m)) => {
                declarations.exchange_declared(m.clone())
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(m)) => {
                declarations.exchange_deleted(m.exchange.as_str())
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(m)) => {
                declarations.exchange_bound(m.clone())
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(m)) => {
                declarations.exchange_unbound(m)
            }
            AMQPClass::Queue(queue::AMQPMethod::Declare(m)) if !m.queue.as_str().is_empty() => {
                declarations.queue_declared(m.clone(), &m.queue.to_string())
            }
            AMQPClass::Queue(queue::AMQPMethod::Bind(m)) => declarations.queue_bound(m.clone()),
            AMQPClass::Queue(queue::AMQPMethod::Delete(m)) => self.queue_deleted(m.queue.as_str()),
            _ => {}
        }
    }

    /// The client deleted a queue (by the name it knows): its declaration, bindings, name
    /// translation and consumers go.
    pub(super) fn queue_deleted(&mut self, name: &str) {
        self.declarations.queue_deleted(name);
        self.names.forget(name);
        for session in self.channels.values_mut() {
            session.state.consumers.retain(|c| c.queue != name);
        }
    }
}
