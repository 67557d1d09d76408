//! Frames from the node: answers matched to the client's requests (and recorded: what the
//! node declared, the consumers it started), deliveries passed on whole with the client's
//! delivery tags and queue names, confirms passed on in the client's numbering, and the node's
//! own connection and channel errors sorted into the client's doing and the node's failure.

use super::{Event, Out, SessionState, method_frame};
use crate::proto::amqp::{Frame, FrameType, id, method, reply};
use crate::session::amqp::assembly::{Assembly, AssemblyError};
use crate::session::amqp::channel::Consumer;
use crate::session::amqp::lost_queues;
use crate::session::amqp::requests::Answer;
use crate::session::amqp::upstream::node_fault;
use crate::session::failover::{End, FailoverReason};
use amq_protocol::protocol::{AMQPClass, basic, channel as chan, connection, exchange, queue};

impl SessionState {
    /// A frame from the node.
    pub fn node_frame(&mut self, frame: Frame, out: &mut Out) {
        match frame.kind {
            FrameType::Heartbeat => {}
            FrameType::Header | FrameType::Body => self.node_content(frame, out),
            FrameType::Method => self.node_method(frame, out),
        }
    }

    fn node_content(&mut self, frame: Frame, out: &mut Out) {
        let max_body = self.limits.max_message_size;
        let channel = frame.channel;
        let outcome = match self.delivering.get_mut(&channel) {
            Some(assembly) => assembly.add(frame, max_body),
            None => Err(AssemblyError::Stray(channel)),
        };
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                if let Some(assembly) = self.delivering.remove(&channel) {
                    self.deliver(assembly.into_frames(), out);
                }
            }
            Err(e) => out.node_failed(FailoverReason::ProtocolError, e.to_string()),
        }
    }

    /// A complete delivery, get-ok or return from the node, passed to the client with the
    /// client's delivery tag and queue names.
    fn deliver(&mut self, mut frames: Vec<Frame>, out: &mut Out) {
        let first = &frames[0];
        let channel = first.channel;
        let class_method = first.class_method();
        let peeked =
            match class_method {
                Some(id::BASIC_DELIVER) => method::peek_deliver(&first.payload)
                    .map(|d| Some((d.delivery_tag, d.tag_offset))),
                Some(id::BASIC_GET_OK) => method::peek_get_ok(&first.payload)
                    .map(|g| Some((g.delivery_tag, g.tag_offset))),
                _ => Ok(None),
            };
        let Ok(tag) = peeked else {
            return out.node_failed(FailoverReason::ProtocolError, "undecodable delivery");
        };
        if let Some((upstream_tag, offset)) = tag
            && let Some(session) = self.channels.get_mut(&channel)
        {
            let client_tag = session.state.tags.client_tag(upstream_tag);
            let consumers = &session.state.consumers;
            let settled = class_method == Some(id::BASIC_GET_OK)
                || (consumers.iter().any(|c| c.method.no_ack)
                    && method::peek_deliver(&frames[0].payload).is_ok_and(|d| {
                        consumers
                            .iter()
                            .any(|c| c.method.no_ack && c.tag == d.consumer_tag)
                    }));
            if settled {
                // Not waited for by a planned move: the client will not ack it (a get-ok is
                // rare enough that its ack is left to the broker's redelivery).
                session.state.tags.delivered_settled(client_tag);
            }
            if client_tag != upstream_tag {
                frames[0] = Frame::method(
                    channel,
                    method::with_delivery_tag(&frames[0].payload, offset, client_tag),
                );
            }
        }
        if let Some(payload) = self.names.delivery_for_client(&frames[0].payload) {
            frames[0] = Frame::method(channel, payload);
        }
        out.to_client.extend(frames);
    }

    fn node_method(&mut self, frame: Frame, out: &mut Out) {
        let channel = frame.channel;
        let Some(class_method) = frame.class_method() else {
            return out.node_failed(FailoverReason::ProtocolError, "method frame too short");
        };
        match class_method {
            id::BASIC_DELIVER | id::BASIC_RETURN => {
                self.delivering.insert(channel, Assembly::start(frame));
                return;
            }
            id::BASIC_GET_OK => {
                if let Some(session) = self.channels.get_mut(&channel) {
                    session.requests.answered();
                }
                self.delivering.insert(channel, Assembly::start(frame));
                return;
            }
            id::BASIC_ACK | id::BASIC_NACK => return self.node_confirm(frame, class_method, out),
            _ => {}
        }
        let decoded = match method::decode(&frame.payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                return out.node_failed(
                    FailoverReason::ProtocolError,
                    format!("undecodable method: {e}"),
                );
            }
        };
        if channel == 0 {
            return self.node_connection_method(frame, decoded, out);
        }
        match &decoded {
            AMQPClass::Channel(chan::AMQPMethod::Close(close)) => {
                if let Some(queue) = self.lost_by_refusal(close) {
                    return out.event(Event::QueueLost(queue));
                }
                // A channel error, the client's doing: passed on as sent. What was kept for the
                // channel dies with it, as it would without tether.
                if let Some(session) = self.channels.get_mut(&channel) {
                    session.mark_closed_by_node();
                    tracing::debug!(parent: &self.span, channel, code = close.reply_code,
                        text = %close.reply_text, "the node closed a channel");
                }
                return out.client(frame);
            }
            AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)) => {
                if let Some(queue) = self.lost_by_cancel(channel, cancel.consumer_tag.as_str()) {
                    return out.event(Event::QueueLost(queue));
                }
                if let Some(session) = self.channels.get_mut(&channel) {
                    session
                        .state
                        .consumers
                        .retain(|c| c.tag != cancel.consumer_tag.as_str());
                }
                return out.client(frame);
            }
            AMQPClass::Channel(chan::AMQPMethod::Flow(_)) => return out.client(frame),
            _ => {}
        }
        // An answer to the oldest request sent on this channel.
        let answer = match self.channels.get_mut(&channel) {
            Some(session) => session.requests.answered(),
            None => Answer::Unasked,
        };
        match answer {
            Answer::Client(request) => {
                let forward = self.answered(channel, request, decoded);
                out.client(forward);
            }
            Answer::Own => {}
            Answer::Unasked => out.client(frame),
        }
    }

    /// The queue a node's channel.close says is gone (404 NOT_FOUND naming it, for a consume, a
    /// bind, a get, a passive declare), if the session declared it itself and may be set up
    /// again for it.
    fn lost_by_refusal(&mut self, close: &chan::Close) -> Option<String> {
        if close.reply_code != reply::NOT_FOUND {
            return None;
        }
        let node_name = lost_queues::queue_not_found(close.reply_text.as_str())?;
        let queue = self.names.client_name(node_name).to_owned();
        self.may_heal(queue)
    }

    /// The queue of a consumer the node cancelled, if the session declared it itself and may
    /// be set up again for it (the node cancels a consumer when its queue is deleted).
    fn lost_by_cancel(&mut self, channel: u16, tag: &str) -> Option<String> {
        let session = self.channels.get(&channel)?;
        let consumer = session.state.consumers.iter().find(|c| c.tag == tag)?;
        let queue = consumer.queue.clone();
        self.may_heal(queue)
    }

    fn may_heal(&mut self, queue: String) -> Option<String> {
        let heal = self.declarations.declared_queue(&queue)
            && self.lost_queues.heal(std::time::Instant::now());
        heal.then_some(queue)
    }

    /// Records what an answer confirms; returns the answer as the client must get it.
    fn answered(&mut self, channel: u16, request: AMQPClass, answer: AMQPClass) -> Frame {
        let declarations = &mut self.declarations;
        match (request, answer) {
            (
                AMQPClass::Queue(queue::AMQPMethod::Declare(declare)),
                AMQPClass::Queue(queue::AMQPMethod::DeclareOk(mut ok)),
            ) => {
                let node_name = ok.queue.to_string();
                let client_name = if declare.queue.as_str().is_empty() {
                    node_name
                } else {
                    declare.queue.to_string()
                };
                declarations.queue_declared(declare, &client_name);
                ok.queue = client_name.into();
                method_frame(channel, &AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)))
            }
            (AMQPClass::Queue(queue::AMQPMethod::Bind(bind)), answer) => {
                declarations.queue_bound(bind);
                method_frame(channel, &answer)
            }
            (AMQPClass::Queue(queue::AMQPMethod::Unbind(unbind)), answer) => {
                declarations.queue_unbound(&unbind);
                method_frame(channel, &answer)
            }
            (AMQPClass::Queue(queue::AMQPMethod::Delete(delete)), answer) => {
                self.queue_deleted(delete.queue.as_str());
                method_frame(channel, &answer)
            }
            (AMQPClass::Exchange(exchange::AMQPMethod::Declare(declare)), answer) => {
                declarations.exchange_declared(declare);
                method_frame(channel, &answer)
            }
            (AMQPClass::Exchange(exchange::AMQPMethod::Delete(delete)), answer) => {
                declarations.exchange_deleted(delete.exchange.as_str());
                method_frame(channel, &answer)
            }
            (AMQPClass::Exchange(exchange::AMQPMethod::Bind(bind)), answer) => {
                declarations.exchange_bound(bind);
                method_frame(channel, &answer)
            }
            (AMQPClass::Exchange(exchange::AMQPMethod::Unbind(unbind)), answer) => {
                declarations.exchange_unbound(&unbind);
                method_frame(channel, &answer)
            }
            (
                AMQPClass::Basic(basic::AMQPMethod::Consume(mut consume)),
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)),
            ) => {
                let queue = consume.queue.to_string();
                consume.consumer_tag = ok.consumer_tag.clone();
                self.consumes_started += 1;
                if let Some(session) = self.channels.get_mut(&channel) {
                    session.state.consumers.push(Consumer {
                        tag: ok.consumer_tag.to_string(),
                        queue,
                        method: consume,
                    });
                }
                method_frame(channel, &AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)))
            }
            (AMQPClass::Channel(chan::AMQPMethod::Close(_)), answer) => {
                self.channels.remove(&channel);
                method_frame(channel, &answer)
            }
            (_, answer) => method_frame(channel, &answer),
        }
    }

    fn node_connection_method(&mut self, frame: Frame, decoded: AMQPClass, out: &mut Out) {
        let close_ok =
            || AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
        match decoded {
            AMQPClass::Connection(connection::AMQPMethod::Close(close))
                if let Some(reason) = node_fault(&close) =>
            {
                out.node_method(0, &close_ok());
                out.node_failed(reason, format!("{} {}", close.reply_code, close.reply_text));
            }
            AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
                // The client's doing (a connection error): passed on as the broker sent it.
                out.node_method(0, &close_ok());
                out.client(frame);
                self.node_closed = true;
                tracing::debug!(parent: &self.span, code = close.reply_code, text = %close.reply_text,
                    "the node closed the connection");
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                out.client(frame);
                out.end(End::Finished);
            }
            AMQPClass::Connection(connection::AMQPMethod::Blocked(_)) => {
                self.blocked = true;
                out.client(frame);
            }
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)) => {
                self.blocked = false;
                out.client(frame);
            }
            _ => out.client(frame),
        }
    }

    /// A publisher confirm (basic.ack or basic.nack) from the node, passed to the client in its
    /// numbering. Refused publishes are retried; a node that keeps refusing gets the session set
    /// up again (see [`crate::session::amqp::refusals`]).
    fn node_confirm(&mut self, frame: Frame, class_method: (u16, u16), out: &mut Out) {
        let Ok(confirm) = method::peek_ack(&frame.payload) else {
            return out.node_failed(FailoverReason::ProtocolError, "undecodable confirm");
        };
        let channel = frame.channel;
        let span = &self.span;
        let Some(session) = self.channels.get_mut(&channel) else {
            return;
        };
        let acked = class_method == id::BASIC_ACK;
        let now = std::time::Instant::now();
        let timeout = self.limits.failover_timeout;
        let (confirms, given_up) = session.state.confirms.confirm(confirm, acked, now, timeout);
        let refresh = if acked {
            self.refusals.confirmed();
            false
        } else {
            tracing::debug!(parent: span,
                channel,
                tag = confirm.delivery_tag,
                multiple = confirm.multiple,
                given_up = given_up.len(),
                "the node refused publishes"
            );
            self.refusals
                .due(session.state.confirms.refused_for(now), now)
        };
        if !given_up.is_empty() && session.state.tx.is_open() {
            // A commit that cannot be honoured: the client must not get commit-ok.
            return out.client_error(
                reply::INTERNAL_ERROR,
                &format!(
                    "INTERNAL_ERROR - the broker kept refusing {} messages of a transaction",
                    given_up.len()
                ),
            );
        }
        if !given_up.is_empty() && !session.state.confirms.client_confirm {
            tracing::error!(parent: span,
                channel,
                lost = given_up.len(),
                "the node kept refusing publishes of a client that asked no confirms; they are lost"
            );
        }
        for confirm in confirms {
            let ack = method::Ack {
                delivery_tag: confirm.seq,
                multiple: confirm.multiple,
                requeue: false,
            };
            let kind = if confirm.ack {
                id::BASIC_ACK
            } else {
                id::BASIC_NACK
            };
            out.client(Frame::method(channel, method::encode_ack(kind, ack)));
        }
        self.commit_if_confirmed(channel, out);
        if refresh {
            out.event(Event::NodeRefuses(channel));
        }
    }
}
