//! The task of one shared node connection: it owns the socket, heart-beats the node, routes
//! frames between the node and its member sessions through the [`Table`], and tells every
//! member when the connection fails, so that each fails over as a session of its own would.
//!
//! A member whose frames pile up unread past [`BACKLOG`] (its client reads slower than the
//! node delivers) is moved off: the task never waits on a member, so one slow client never
//! holds back another's traffic, and its memory stays bounded.

use super::member::{Batch, Control, Ended, MemberId, Port};
use super::table::{Outbound, Route, Table};
use super::{Multiplex, Shared};
use crate::proto::amqp::{Frame, FrameError, FrameType, id, method};
use crate::session::amqp::leg::{FrameReader, FrameWriter};
use crate::session::amqp::liveness::{self, Liveness};
use crate::session::amqp::upstream::{goodbye, node_fault};
use crate::session::failover::{FailoverReason, HIGH_WATER};
use crate::session::io::timer;
use amq_protocol::protocol::{AMQPClass, connection};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes of frames a member may leave unread before it is moved off the connection.
pub const BACKLOG: usize = 8 * 1024 * 1024;

pub(super) struct Connection {
    pub shared: Arc<Shared>,
    pub multiplex: Arc<Multiplex>,
    pub reader: FrameReader,
    pub writer: FrameWriter,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub data: mpsc::Receiver<Batch>,
}

struct Running {
    shared: Arc<Shared>,
    multiplex: Arc<Multiplex>,
    writer: FrameWriter,
    table: Table,
    ports: HashMap<MemberId, Port>,
    /// The node's connection.blocked, while it holds: a session that joins meets it too (one
    /// that chose the connection just before it was blocked; later ones go elsewhere).
    blocked: Option<Frame>,
    idle_since: Instant,
}

impl Connection {
    pub async fn run(self) {
        let Connection {
            shared,
            multiplex,
            mut reader,
            writer,
            mut control,
            mut data,
        } = self;
        let mut running = Running {
            // The node's highest channel is kept back for liveness questions.
            table: Table::new(liveness::channel(shared.tune.channel_max).saturating_sub(1)),
            shared,
            multiplex,
            writer,
            ports: HashMap::new(),
            blocked: None,
            idle_since: Instant::now(),
        };
        let heartbeat = running.shared.tune.heartbeat;
        let mut liveness = Liveness::new(heartbeat, running.shared.tune.channel_max);
        let questions = metrics::counter!(crate::metrics::names::LIVENESS_QUESTIONS_TOTAL,
            "listener" => running.multiplex.listener.clone());
        let idle_timeout = running.multiplex.idle_timeout;
        let (reason, detail) = loop {
            let writer = &mut running.writer;
            let beat_due = heartbeat.map(|every| writer.last_write + every / 2);
            let ask_at = liveness.as_ref().and_then(|l| l.ask_at(reader.last_read));
            let silent = liveness.as_ref().map(|l| l.dead_at(reader.last_read));
            // Once the listener is gone (stopped, or replaced by a reload), or the connection
            // is past its max_lifetime, an idle connection goes at once.
            let linger =
                if running.multiplex.is_closed() || running.multiplex.expired(&running.shared) {
                    std::time::Duration::ZERO
                } else {
                    idle_timeout
                };
            let idle_until = running
                .ports
                .is_empty()
                .then_some(running.idle_since + linger);
            let take_batches = writer.pending() < HIGH_WATER;
            let write = writer.pending() > 0;
            tokio::select! {
                biased;
                command = control.recv() => match command {
                    Some(command) => running.on_control(command),
                    None => break (FailoverReason::Closed, "the listener is gone".to_owned()),
                },
                batch = data.recv(), if take_batches => match batch {
                    Some(batch) => running.on_batch(batch),
                    None => break (FailoverReason::Closed, "the listener is gone".to_owned()),
                },
                frame = reader.next() => match frame {
                    Some(Ok(frame)) => {
                        if let Some(answered) = liveness.as_mut().and_then(|l| l.answer(&frame)) {
                            if let Some(reply) = answered {
                                running.writer.queue(&reply);
                            }
                        } else if let Err(failed) = running.on_node(frame) {
                            break failed;
                        }
                    }
                    None => break (FailoverReason::Closed, "the node closed the connection".to_owned()),
                    Some(Err(FrameError::Io(e))) => break (FailoverReason::Reset, e.to_string()),
                    Some(Err(e)) => break (FailoverReason::ProtocolError, e.to_string()),
                },
                written = writer.write_some(), if write => {
                    if let Err(e) = written {
                        break (FailoverReason::WriteError, e.to_string());
                    }
                }
                _ = timer(beat_due) => {
                    if writer.pending() == 0 {
                        writer.queue(&Frame::heartbeat());
                    }
                }
                _ = timer(ask_at) => {
                    if let Some(liveness) = liveness.as_mut() {
                        writer.queue(&liveness.ask());
                        questions.increment(1);
                    }
                }
                _ = timer(silent) => {
                    break (FailoverReason::Heartbeat, "the node stopped answering".to_owned());
                }
                _ = timer(idle_until) => {
                    if running.retire() {
                        return goodbye(&mut reader, &mut running.writer,
                            "tether: shared connection idle").await;
                    }
                }
            }
        };
        running.fail(reason, &detail);
    }
}

impl Running {
    fn on_control(&mut self, command: Control) {
        match command {
            Control::Wake => {}
            Control::Join(member, port) => {
                self.shared.joining.fetch_sub(1, Ordering::AcqRel);
                self.table.join(member);
                if let Some(blocked) = &self.blocked {
                    port.deliver(blocked.clone());
                }
                self.ports.insert(member, port);
                self.multiplex.count_clients(&self.shared.node, 1.0);
            }
            Control::Leave(member, queues) => {
                self.table.leave(member, &queues);
                if self.ports.remove(&member).is_some() {
                    self.multiplex.count_clients(&self.shared.node, -1.0);
                }
                if self.ports.is_empty() {
                    self.idle_since = Instant::now();
                }
            }
        }
        self.settle();
    }

    fn on_batch(&mut self, batch: Batch) {
        let member = batch.member;
        for mut frame in batch.frames {
            match self.table.outbound(member, &mut frame) {
                Outbound::Send => self.writer.queue(&frame),
                Outbound::Drop => {}
                Outbound::NoChannel => self.table.unshare(member, "no_channel"),
            }
        }
        self.settle();
    }

    /// A frame from the node; `Err` when it ends the connection.
    fn on_node(&mut self, mut frame: Frame) -> Result<(), (FailoverReason, String)> {
        if frame.channel == 0 {
            return self.on_connection_frame(frame);
        }
        if let Route::Member(member) = self.table.inbound(&mut frame)
            && let Some(port) = self.ports.get(&member)
            && port.deliver(frame) > BACKLOG
        {
            self.table.unshare(member, "slow");
        }
        self.settle();
        Ok(())
    }

    fn on_connection_frame(&mut self, frame: Frame) -> Result<(), (FailoverReason, String)> {
        if frame.kind != FrameType::Method {
            return Ok(()); // a heart-beat
        }
        match frame.class_method() {
            Some(id::CONNECTION_BLOCKED) => {
                self.shared.blocked.store(true, Ordering::Release);
                self.blocked = Some(frame.clone());
                self.to_every_member(&frame);
            }
            Some(id::CONNECTION_UNBLOCKED) => {
                self.shared.blocked.store(false, Ordering::Release);
                self.blocked = None;
                self.to_every_member(&frame);
            }
            Some(id::CONNECTION_CLOSE) => {
                let close_ok =
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
                self.writer
                    .queue(&Frame::method(0, method::encode(&close_ok)));
                // Whatever the node closed it for, the sessions on it did not all cause it:
                // each fails over (a close the node gives for a client's own error is no
                // reason to end the other clients' sessions).
                return Err(match method::decode(&frame.payload) {
                    Ok(AMQPClass::Connection(connection::AMQPMethod::Close(close))) => (
                        node_fault(&close).unwrap_or(FailoverReason::SharedClosed),
                        format!("{} {}", close.reply_code, close.reply_text),
                    ),
                    _ => (FailoverReason::ProtocolError, "connection.close".to_owned()),
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn to_every_member(&self, frame: &Frame) {
        for port in self.ports.values() {
            port.deliver(frame.clone());
        }
    }

    /// Sends what the table asked for, ends the links of members moved off, and publishes
    /// how full the connection is.
    fn settle(&mut self) {
        for frame in self.table.to_node.drain(..) {
            self.writer.queue(&frame);
        }
        for (member, why) in std::mem::take(&mut self.table.unshared) {
            if let Some(port) = self.ports.remove(&member) {
                port.end(Ended::Unshared(why));
                self.multiplex.count_clients(&self.shared.node, -1.0);
                self.multiplex.count_unshared(why);
            }
            if self.ports.is_empty() {
                self.idle_since = Instant::now();
            }
        }
        if let Some(load) = self.table.load_changed() {
            self.shared.load.store(load, Ordering::Release);
        }
    }

    /// Leaves the registry if still idle: no session can join it after this. `false` when one
    /// has joined meanwhile (its Join is on its way).
    fn retire(&mut self) -> bool {
        self.ports.is_empty() && self.multiplex.retire(&self.shared, false)
    }

    /// The connection failed: it leaves the registry and every member is told why.
    fn fail(mut self, reason: FailoverReason, detail: &str) {
        self.multiplex.retire(&self.shared, true);
        tracing::info!(node = %self.shared.node.name, members = self.ports.len(), %reason, %detail,
            "shared node connection failed");
        for (_, port) in self.ports.drain() {
            port.end(Ended::Failed(reason, detail.to_owned()));
            self.multiplex.count_clients(&self.shared.node, -1.0);
        }
    }
}
