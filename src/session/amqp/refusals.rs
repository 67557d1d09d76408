//! When a node keeps refusing a session's publishes, set the session up again.
//!
//! RabbitMQ 3.10 nacks every publish of a channel opened in the moment a quorum queue's leader
//! died, for as long as that node stays away, while a channel opened a little later is served
//! by the new leader at once: measured here, 50 nacks in 5 s on the first, none on a second
//! channel of the same connection. A normal leader election refuses for about half a second.
//! So a publish refused for [`REFRESH_AFTER`] makes tether set the session up again on fresh
//! channels, and while the refusals go on, again at doubling intervals up to
//! [`REFRESH_MAX_GAP`] (a hung leader is only replaced once the other nodes give up on it).

use std::time::{Duration, Instant};

/// A publish refused this long makes tether set the session up again.
pub const REFRESH_AFTER: Duration = Duration::from_millis(500);
/// The longest wait between two set-ups while the refusals go on.
pub const REFRESH_MAX_GAP: Duration = Duration::from_secs(4);

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RefusalRefresh {
    /// While nodes keep refusing (no confirm since): when the session was last set up again
    /// for it, and how long to wait before the next time.
    #[serde(with = "crate::takeover::serial::instant_pair")]
    last: Option<(Instant, Duration)>,
}

impl RefusalRefresh {
    /// A node confirmed a publish: the refusals are over.
    pub fn confirmed(&mut self) {
        self.last = None;
    }

    /// Whether to set the session up again now, the longest refused publish waiting for
    /// `refused_for`.
    pub fn due(&self, refused_for: Duration, now: Instant) -> bool {
        refused_for >= REFRESH_AFTER
            && self
                .last
                .is_none_or(|(last, wait)| now.duration_since(last) >= wait)
    }

    /// The session is being set up again, at `now`.
    pub fn refreshed(&mut self, now: Instant) {
        let wait = self
            .last
            .map_or(REFRESH_AFTER, |(_, wait)| wait * 2)
            .min(REFRESH_MAX_GAP);
        self.last = Some((now, wait));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_short_refusal_is_waited_out() {
        let policy = RefusalRefresh::default();
        let now = Instant::now();
        assert!(!policy.due(REFRESH_AFTER - MS, now));
        assert!(policy.due(REFRESH_AFTER, now));
    }

    #[test]
    fn refreshes_back_off_doubling_up_to_the_cap() {
        let mut policy = RefusalRefresh::default();
        let mut now = Instant::now();
        let refused = Duration::from_secs(60);
        let mut gaps = Vec::new();
        for _ in 0..6 {
            assert!(policy.due(refused, now));
            policy.refreshed(now);
            let wait = policy.last.map(|(_, wait)| wait).unwrap();
            assert!(
                !policy.due(refused, now + wait - MS),
                "not before the wait is over"
            );
            gaps.push(wait.as_millis());
            now += wait;
        }
        assert_eq!(gaps, [500, 1000, 2000, 4000, 4000, 4000]);
    }

    #[test]
    fn a_confirm_ends_the_backoff() {
        let mut policy = RefusalRefresh::default();
        let now = Instant::now();
        policy.refreshed(now);
        policy.refreshed(now);
        assert!(!policy.due(REFRESH_AFTER, now + MS));
        policy.confirmed();
        assert!(policy.due(REFRESH_AFTER, now + MS));
    }
}
