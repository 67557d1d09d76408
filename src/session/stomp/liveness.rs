//! The STOMP question of [`crate::session::liveness`]: BEGIN of a transaction of tether's own
//! with a receipt, then ABORT once the receipt is in: nothing is sent in it, so nothing changes.

use crate::proto::stomp::{Command, Frame};
use crate::session::liveness::Watch;
use std::time::Duration;
use tokio::time::Instant;

/// The transaction and receipt tether asks with; no client frame uses them (a client's
/// transactions and receipts keep their own names on the node, and tether's receipts for
/// SENDs are numbered).
pub const NAME: &str = "tether-liveness";

/// One node connection's questions.
#[derive(Debug)]
pub struct Liveness {
    watch: Watch,
}

impl Liveness {
    /// For a node connection on which the node beats every `expect_every` (none: nothing to
    /// watch), asked to beat about every half of `every`; the longer of the two paces the
    /// questions.
    pub fn new(expect_every: Option<Duration>, every: Duration) -> Option<Liveness> {
        Some(Liveness {
            watch: Watch::new(expect_every?.max(every)),
        })
    }

    /// See [`Watch::ask_at`].
    pub fn ask_at(&self, quiet_since: Instant) -> Option<Instant> {
        self.watch.ask_at(quiet_since)
    }

    /// See [`Watch::dead_at`].
    pub fn dead_at(&self, quiet_since: Instant) -> Instant {
        self.watch.dead_at(quiet_since)
    }

    /// Whether a question is out (see [`Watch::asking`]).
    pub fn asking(&self) -> bool {
        self.watch.asking()
    }

    /// The question: BEGIN with a receipt.
    pub fn ask(&mut self) -> Frame {
        self.watch.asked();
        Frame::new(Command::Begin)
            .with_header("transaction", NAME)
            .with_header("receipt", NAME)
    }

    /// Takes the node's frame if it answers the question: `Some(abort)` then, `None` for a
    /// frame of the session's.
    pub fn answer(&mut self, frame: &Frame) -> Option<Frame> {
        if frame.command != Command::Receipt || frame.header("receipt-id") != Some(NAME) {
            return None;
        }
        self.watch.answered();
        Some(Frame::new(Command::Abort).with_header("transaction", NAME))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begins_and_aborts_on_its_receipt_only() {
        let mut liveness =
            Liveness::new(Some(Duration::from_millis(500)), Duration::from_secs(1)).unwrap();
        let t = Instant::now();
        assert_eq!(liveness.ask_at(t), Some(t + Duration::from_millis(600)));
        let begin = liveness.ask();
        assert_eq!(begin.command, Command::Begin);
        assert_eq!(begin.header("receipt"), Some(NAME));
        assert_eq!(liveness.ask_at(t), None);

        let theirs = Frame::new(Command::Receipt).with_header("receipt-id", "7");
        assert!(liveness.answer(&theirs).is_none());
        let ours = Frame::new(Command::Receipt).with_header("receipt-id", NAME);
        let abort = liveness.answer(&ours).unwrap();
        assert_eq!(abort.command, Command::Abort);
        assert_eq!(abort.header("transaction"), Some(NAME));
        assert!(liveness.ask_at(t).is_some());
    }

    #[test]
    fn paced_by_the_slower_of_the_node_and_the_setting() {
        let slow = Liveness::new(Some(Duration::from_secs(4)), Duration::from_secs(1)).unwrap();
        let t = Instant::now();
        assert_eq!(slow.dead_at(t), t + Duration::from_secs(5));
        assert!(Liveness::new(None, Duration::from_secs(1)).is_none());
    }
}
