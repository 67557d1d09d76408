//! Telling a hung node from a quiet one, on a node connection tether holds, within about one
//! `upstream_heartbeat` (1 s by default).
//!
//! A node that agreed on a one-second heart-beat sends something every half second when it has
//! nothing else to send (RabbitMQ does, for AMQP and STOMP alike), but only a second after its
//! last other bytes at worst. Waiting for three missed beats, as the protocols' own rules would,
//! leaves a hung node (SIGSTOP, a stuck VM) holding its sessions for three seconds.
//!
//! So tether asks: when the node has said nothing for [`ASK_AFTER`] of the interval, tether
//! sends a request that needs an answer and changes nothing (AMQP: open and close a channel no
//! client uses; STOMP: BEGIN with a receipt, then ABORT). A node that lives answers at once,
//! whatever its own beat is doing; one that says nothing at all for [`DEAD_AFTER`] of the
//! interval is hung. A node whose reader is blocked (a memory alarm) does not answer, but still
//! beats every half second.

use std::time::Duration;
use tokio::time::Instant;

/// Silence, as a share of the interval, after which tether asks the node for an answer: past
/// the half-beat a node that lives sends something by itself.
pub const ASK_AFTER: f64 = 0.6;
/// Silence, as a share of the interval, after which a node that was asked is taken for hung.
pub const DEAD_AFTER: f64 = 1.25;

/// The timing of one node connection's questions; the protocol says what a question is.
#[derive(Debug)]
pub struct Watch {
    /// [`ASK_AFTER`] and [`DEAD_AFTER`] of the interval, worked out once: the session loop
    /// asks for these on every turn.
    ask_after: Duration,
    dead_after: Duration,
    asked: bool,
}

impl Watch {
    /// For a node expected to send something at least every `every`.
    pub fn new(every: Duration) -> Watch {
        Watch {
            ask_after: every.mul_f64(ASK_AFTER),
            dead_after: every.mul_f64(DEAD_AFTER),
            asked: false,
        }
    }

    /// When to ask the node, given when it last sent anything; `None` while a question is out.
    pub fn ask_at(&self, quiet_since: Instant) -> Option<Instant> {
        (!self.asked).then(|| quiet_since + self.ask_after)
    }

    /// When the node's silence means it is hung.
    pub fn dead_at(&self, quiet_since: Instant) -> Instant {
        quiet_since + self.dead_after
    }

    pub fn asked(&mut self) {
        self.asked = true;
    }

    pub fn answered(&mut self) {
        self.asked = false;
    }

    /// Whether a question is out: its answer is still to come on the connection.
    pub fn asking(&self) -> bool {
        self.asked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_past_the_half_beat_and_gives_up_past_the_beat() {
        let mut watch = Watch::new(Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!(watch.ask_at(t), Some(t + Duration::from_millis(600)));
        assert_eq!(watch.dead_at(t), t + Duration::from_millis(1250));
        assert!(!watch.asking());
        watch.asked();
        assert!(watch.asking());
        assert_eq!(watch.ask_at(t), None, "one question at a time");
        watch.answered();
        assert!(!watch.asking());
        assert!(watch.ask_at(t).is_some());
    }
}
