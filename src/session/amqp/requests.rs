//! Request/answer matching for one channel. AMQP answers a channel's synchronous requests in
//! the order they were sent, so each channel keeps a queue of what it asked and is owed: the
//! node's next answer on the channel is for the oldest. tether adds requests of its own (a
//! planned move cancels consumers) whose answers are tether's, not the client's; they are
//! always the newest, because client frames are parked meanwhile.
//!
//! On a new node the requests the failed node never answered are either answered by tether
//! (what the replay's channel set-up already did again: open, qos, confirm and tx select) or
//! asked again.

use crate::proto::amqp::Frame;
use amq_protocol::protocol::{AMQPClass, basic, channel as chan, confirm, exchange, queue, tx};
use std::collections::VecDeque;

/// A request sent to the node, decoded and as it was sent (the frame is sent again as is when
/// nothing in it needs translating).
pub type Request = (AMQPClass, Frame);

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Requests {
    #[serde(with = "super::serial::requests")]
    awaiting: VecDeque<Request>,
    /// The newest this many of `awaiting` are tether's own (a planned move's cancels).
    own: usize,
}

/// Whom an answer from the node is for.
#[derive(Debug)]
pub enum Answer {
    /// The client's request it answers.
    Client(AMQPClass),
    /// One of tether's own requests: the client must not see it.
    Own,
    /// Nothing was asked: passed on as it is.
    Unasked,
}

/// What the requests the failed node left unanswered become on the new node.
#[derive(Debug, Default)]
pub struct AfterReplay {
    /// Answers tether gives the client itself: the replay did these already.
    pub answers: Vec<AMQPClass>,
    /// Requests to ask the new node again, oldest first.
    pub again: Vec<Request>,
}

impl Requests {
    /// tether's own requests not answered yet.
    pub fn own_pending(&self) -> usize {
        self.own
    }

    /// A client request that the node will answer.
    pub fn sent(&mut self, request: AMQPClass, frame: Frame) {
        self.awaiting.push_back((request, frame));
    }

    /// A request of tether's own (a planned move's basic.cancel).
    pub fn sent_own(&mut self, request: AMQPClass, frame: Frame) {
        self.awaiting.push_back((request, frame));
        self.own += 1;
    }

    /// The node answered on this channel: the oldest request is settled.
    pub fn answered(&mut self) -> Answer {
        if self.own > 0 && self.awaiting.len() <= self.own {
            self.awaiting.pop_front();
            self.own -= 1;
            return Answer::Own;
        }
        match self.awaiting.pop_front() {
            Some((request, _)) => Answer::Client(request),
            None => Answer::Unasked,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.awaiting.is_empty()
    }

    /// The channel is closed: nothing on it will be answered.
    pub fn clear(&mut self) {
        self.awaiting.clear();
        self.own = 0;
    }

    /// The session leaves its node: tether's own requests are not asked again of the next.
    pub fn leave_node(&mut self) {
        let keep = self.awaiting.len().saturating_sub(self.own);
        self.awaiting.truncate(keep);
        self.own = 0;
    }

    /// The session runs on a new node: what to answer at once and what to ask again (kept as
    /// awaiting, in order).
    pub fn after_replay(&mut self) -> AfterReplay {
        let mut after = AfterReplay::default();
        for (request, frame) in std::mem::take(&mut self.awaiting) {
            match done_by_replay(&request) {
                Some(answer) => after.answers.push(answer),
                None => after.again.push((request, frame)),
            }
        }
        self.awaiting = after.again.iter().cloned().collect();
        after
    }
}

/// The answer to a request that setting the channel up on the new node already carried out.
fn done_by_replay(request: &AMQPClass) -> Option<AMQPClass> {
    match request {
        AMQPClass::Channel(chan::AMQPMethod::Open(_)) => Some(AMQPClass::Channel(
            chan::AMQPMethod::OpenOk(chan::OpenOk {}),
        )),
        AMQPClass::Basic(basic::AMQPMethod::Qos(_)) => {
            Some(AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})))
        }
        AMQPClass::Confirm(confirm::AMQPMethod::Select(_)) => Some(AMQPClass::Confirm(
            confirm::AMQPMethod::SelectOk(confirm::SelectOk {}),
        )),
        AMQPClass::Tx(tx::AMQPMethod::Select(_)) => {
            Some(AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})))
        }
        _ => None,
    }
}

/// Whether a client request gets an answer from the node (a synchronous method sent without
/// `nowait`).
pub fn expects_answer(method: &AMQPClass) -> bool {
    use AMQPClass as C;
    match method {
        C::Channel(
            chan::AMQPMethod::Open(_) | chan::AMQPMethod::Flow(_) | chan::AMQPMethod::Close(_),
        ) => true,
        C::Exchange(exchange::AMQPMethod::Declare(m)) => !m.nowait,
        C::Exchange(exchange::AMQPMethod::Delete(m)) => !m.nowait,
        C::Exchange(exchange::AMQPMethod::Bind(m)) => !m.nowait,
        C::Exchange(exchange::AMQPMethod::Unbind(m)) => !m.nowait,
        C::Queue(queue::AMQPMethod::Declare(m)) => !m.nowait,
        C::Queue(queue::AMQPMethod::Bind(m)) => !m.nowait,
        C::Queue(queue::AMQPMethod::Purge(m)) => !m.nowait,
        C::Queue(queue::AMQPMethod::Delete(m)) => !m.nowait,
        C::Queue(queue::AMQPMethod::Unbind(_)) => true,
        C::Basic(
            basic::AMQPMethod::Qos(_) | basic::AMQPMethod::Get(_) | basic::AMQPMethod::Recover(_),
        ) => true,
        C::Basic(basic::AMQPMethod::Consume(m)) => !m.nowait,
        C::Basic(basic::AMQPMethod::Cancel(m)) => !m.nowait,
        C::Confirm(confirm::AMQPMethod::Select(m)) => !m.nowait,
        C::Tx(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::amqp::state::method_frame as frame;

    fn declare(name: &str, nowait: bool) -> AMQPClass {
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            nowait,
            arguments: Default::default(),
        }))
    }

    fn cancel(tag: &str) -> AMQPClass {
        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: tag.into(),
            nowait: false,
        }))
    }

    fn open() -> AMQPClass {
        AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {}))
    }

    fn send(requests: &mut Requests, method: AMQPClass) {
        let f = frame(1, &method);
        requests.sent(method, f);
    }

    fn is_declare_of(answer: Answer, name: &str) -> bool {
        matches!(answer, Answer::Client(AMQPClass::Queue(queue::AMQPMethod::Declare(d))) if d.queue.as_str() == name)
    }

    #[test]
    fn answers_settle_requests_in_the_order_they_were_sent() {
        let mut requests = Requests::default();
        send(&mut requests, declare("a", false));
        send(&mut requests, declare("b", false));
        assert!(is_declare_of(requests.answered(), "a"));
        assert!(is_declare_of(requests.answered(), "b"));
        assert!(matches!(requests.answered(), Answer::Unasked));
        assert!(requests.is_empty());
    }

    #[test]
    fn the_cancel_oks_of_a_planned_moves_own_cancels_never_reach_the_client() {
        let mut requests = Requests::default();
        send(&mut requests, declare("a", false));
        let c = cancel("ctag-1");
        requests.sent_own(c.clone(), frame(1, &c));
        // The client's request was sent first, so the first answer is the client's.
        assert!(is_declare_of(requests.answered(), "a"));
        assert!(matches!(requests.answered(), Answer::Own));
        assert!(requests.is_empty());
    }

    #[test]
    fn leaving_a_node_forgets_tethers_own_requests_but_keeps_the_clients() {
        let mut requests = Requests::default();
        send(&mut requests, declare("a", false));
        let c = cancel("ctag-1");
        requests.sent_own(c.clone(), frame(1, &c));
        requests.leave_node();
        let after = requests.after_replay();
        assert_eq!(after.again.len(), 1);
        assert!(matches!(&after.again[0].0, AMQPClass::Queue(_)));
        assert!(is_declare_of(requests.answered(), "a"));
    }

    #[test]
    fn after_a_replay_what_the_set_up_did_is_answered_by_tether_and_the_rest_asked_again() {
        let mut requests = Requests::default();
        send(&mut requests, open());
        send(&mut requests, declare("a", false));
        let qos = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            global: false,
        }));
        send(&mut requests, qos);
        let after = requests.after_replay();
        assert!(matches!(
            after.answers[..],
            [
                AMQPClass::Channel(chan::AMQPMethod::OpenOk(_)),
                AMQPClass::Basic(basic::AMQPMethod::QosOk(_))
            ]
        ));
        assert_eq!(after.again.len(), 1);
        // The new node's answer then settles the request asked again.
        assert!(is_declare_of(requests.answered(), "a"));
        assert!(requests.is_empty());
    }

    #[test]
    fn only_synchronous_requests_without_nowait_expect_an_answer() {
        assert!(expects_answer(&declare("a", false)));
        assert!(!expects_answer(&declare("a", true)));
        assert!(expects_answer(&open()));
        let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        }));
        assert!(!expects_answer(&publish));
        let tx_select = AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {}));
        assert!(expects_answer(&tx_select));
    }
}
