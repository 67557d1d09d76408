//! tether's own connection.blocked: a client that one of tether's caps has held back for a
//! while (its node slow to confirm, the cluster down, the process budget spent) is told so, as
//! a broker tells it of a resource alarm, if it announced that it understands
//! (`capabilities.connection.blocked` in its start-ok). Clients then pause publishing, or
//! report a blocked connection, instead of finding their writes stalled without a word.

use crate::budget::Cap;
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::AMQPValue;
use std::time::Duration;
use tokio::time::Instant;

/// Held this long before the client is told: a cap reached for an instant, as confirms come
/// back, is ordinary flow control and not worth two frames.
pub const AFTER: Duration = Duration::from_secs(1);

pub struct Blocking {
    announced: bool,
    held_since: Option<Instant>,
    /// The client was sent tether's connection.blocked and not yet its connection.unblocked.
    told: bool,
}

impl Blocking {
    pub fn new(start_ok: &connection::StartOk, told: bool) -> Blocking {
        Blocking {
            announced: announces_blocked(start_ok),
            held_since: None,
            told,
        }
    }

    pub fn told(&self) -> bool {
        self.told
    }

    /// What to tell the client now that `capped` holds it back (or nothing does), and when to
    /// look again. The node's own blocked state is left to the node: tether does not unblock a
    /// client the node has blocked, nor block one twice. `now` is read only while a cap holds
    /// (this runs on every turn of the session's loop).
    pub fn update(
        &mut self,
        capped: Option<Cap>,
        node_blocked: bool,
        now: impl FnOnce() -> Instant,
    ) -> (Option<AMQPClass>, Option<Instant>) {
        match capped {
            Some(cap) => {
                let now = now();
                let since = *self.held_since.get_or_insert(now);
                if self.told || !self.announced || node_blocked {
                    return (None, None);
                }
                if now < since + AFTER {
                    return (None, Some(since + AFTER));
                }
                self.told = true;
                let reason = format!(
                    "tether: {} reached; publishes wait for the node's confirms",
                    cap.as_str()
                );
                let blocked = connection::Blocked {
                    reason: reason.into(),
                };
                (
                    Some(AMQPClass::Connection(connection::AMQPMethod::Blocked(
                        blocked,
                    ))),
                    None,
                )
            }
            None => {
                self.held_since = None;
                if !std::mem::take(&mut self.told) || node_blocked {
                    return (None, None);
                }
                let unblocked = connection::AMQPMethod::Unblocked(connection::Unblocked {});
                (Some(AMQPClass::Connection(unblocked)), None)
            }
        }
    }
}

fn announces_blocked(start_ok: &connection::StartOk) -> bool {
    let Some(AMQPValue::FieldTable(capabilities)) =
        start_ok.client_properties.inner().get("capabilities")
    else {
        return false;
    };
    matches!(
        capabilities.inner().get("connection.blocked"),
        Some(AMQPValue::Boolean(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::FieldTable;

    fn start_ok(blocked: bool) -> connection::StartOk {
        let mut capabilities = FieldTable::default();
        capabilities.insert("connection.blocked".into(), AMQPValue::Boolean(blocked));
        let mut properties = FieldTable::default();
        properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        connection::StartOk {
            client_properties: properties,
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        }
    }

    fn name(method: &Option<AMQPClass>) -> &'static str {
        match method {
            Some(AMQPClass::Connection(connection::AMQPMethod::Blocked(_))) => "blocked",
            Some(AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))) => "unblocked",
            Some(_) => "other",
            None => "",
        }
    }

    #[test]
    fn a_client_held_a_second_is_told_once_and_untold_when_read_again() {
        let mut blocking = Blocking::new(&start_ok(true), false);
        let start = Instant::now();
        let cap = Some(Cap::ProcessUnconfirmedBytes);
        let (said, wake) = blocking.update(cap, false, || start);
        assert_eq!((name(&said), wake), ("", Some(start + AFTER)));
        let (said, _) = blocking.update(cap, false, || start + AFTER / 2);
        assert_eq!(name(&said), "", "held only half a second");
        let (said, _) = blocking.update(cap, false, || start + AFTER);
        assert_eq!(name(&said), "blocked");
        if let Some(AMQPClass::Connection(connection::AMQPMethod::Blocked(b))) = &said {
            assert!(
                b.reason.as_str().contains("process_max_unconfirmed_bytes"),
                "{}",
                b.reason
            );
        }
        assert!(blocking.told());
        let (said, _) = blocking.update(cap, false, || start + AFTER * 3);
        assert_eq!(name(&said), "", "told once");
        let (said, wake) = blocking.update(None, false, || start + AFTER * 4);
        assert_eq!((name(&said), wake), ("unblocked", None));
        let (said, _) = blocking.update(None, false, || start + AFTER * 5);
        assert_eq!(name(&said), "");
    }

    #[test]
    fn a_hold_shorter_than_a_second_says_nothing() {
        let mut blocking = Blocking::new(&start_ok(true), false);
        let start = Instant::now();
        blocking.update(Some(Cap::Unconfirmed), false, || start);
        let (said, _) = blocking.update(None, false, || start + AFTER / 2);
        assert_eq!(name(&said), "");
        // A new hold starts its own second.
        let (_, wake) = blocking.update(Some(Cap::Unconfirmed), false, || start + AFTER);
        assert_eq!(wake, Some(start + AFTER * 2));
    }

    #[test]
    fn a_client_that_did_not_announce_it_or_a_node_blocked_client_is_left_alone() {
        let start = Instant::now();
        let mut quiet = Blocking::new(&start_ok(false), false);
        quiet.update(Some(Cap::Unconfirmed), false, || start);
        let (said, wake) = quiet.update(Some(Cap::Unconfirmed), false, || start + AFTER * 2);
        assert_eq!((name(&said), wake), ("", None));
        let mut node_blocked = Blocking::new(&start_ok(true), false);
        node_blocked.update(Some(Cap::Unconfirmed), true, || start);
        let (said, _) = node_blocked.update(Some(Cap::Unconfirmed), true, || start + AFTER * 2);
        assert_eq!(name(&said), "", "the node's blocked already holds");
        // Told before a takeover: the new process unblocks it when the hold ends.
        let mut resumed = Blocking::new(&start_ok(true), true);
        let (said, _) = resumed.update(None, false, || start);
        assert_eq!(name(&said), "unblocked");
    }
}
