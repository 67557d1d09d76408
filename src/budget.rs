//! What all of the process's sessions hold together, and the caps reached on the way.
//!
//! Each listener caps its sessions and each session caps the publishes it keeps for replay, but
//! 20,000 sessions × 64 MiB is no bound on a host. The process budget bounds the sum: sessions
//! (each holds two descriptors, so the open-file limit sets the default) and bytes of unconfirmed
//! publishes. Reaching it is backpressure like any per-session cap: tether stops accepting, or
//! stops reading the clients that publish, until there is room.

use crate::metrics::names;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Descriptors kept for what is not a session: listening sockets, the admin listener, health
/// checks, discovery, logs.
const RESERVED_DESCRIPTORS: u64 = 256;

/// How often a session held back by the process budget looks again (the budget frees as other
/// sessions' confirms arrive; a wake-up per freed byte would cost more than this poll).
pub const RECHECK: Duration = Duration::from_millis(50);

pub struct Budget {
    sessions: AtomicUsize,
    max_sessions: AtomicUsize,
    held_bytes: AtomicUsize,
    max_held_bytes: AtomicUsize,
}

static PROCESS: Budget = Budget::new(usize::MAX, usize::MAX);

impl Budget {
    pub const fn new(max_sessions: usize, max_held_bytes: usize) -> Budget {
        Budget {
            sessions: AtomicUsize::new(0),
            max_sessions: AtomicUsize::new(max_sessions),
            held_bytes: AtomicUsize::new(0),
            max_held_bytes: AtomicUsize::new(max_held_bytes),
        }
    }

    /// The process's one budget; [`Budget::set`] gives it its caps at start and on reload.
    pub fn process() -> &'static Budget {
        &PROCESS
    }

    pub fn set(&self, max_sessions: usize, max_held_bytes: usize) {
        self.max_sessions.store(max_sessions, Ordering::Relaxed);
        self.max_held_bytes.store(max_held_bytes, Ordering::Relaxed);
    }

    pub fn max_sessions(&self) -> usize {
        self.max_sessions.load(Ordering::Relaxed)
    }

    pub fn max_held_bytes(&self) -> usize {
        self.max_held_bytes.load(Ordering::Relaxed)
    }

    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    pub fn held_bytes(&self) -> usize {
        self.held_bytes.load(Ordering::Relaxed)
    }

    /// No room for another session: a listener waits before it accepts.
    pub fn sessions_full(&self) -> bool {
        self.sessions() >= self.max_sessions()
    }

    /// Counts a session for as long as the slot lives. A session adopted from an old process
    /// is counted even past the cap: it exists already.
    pub fn session(&'static self) -> SessionSlot {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        SessionSlot(self)
    }

    /// A session's share of the unconfirmed bytes, starting at none.
    pub fn charge(&'static self) -> Held {
        Held {
            budget: self,
            charged: 0,
            holding: None,
        }
    }
}

/// The default session cap: what the open-file limit leaves after [`RESERVED_DESCRIPTORS`], two
/// descriptors per session.
pub fn sessions_for_open_files(limit: u64) -> usize {
    let sessions = limit.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    usize::try_from(sessions.max(1)).unwrap_or(usize::MAX)
}

/// The process's open-file limit as it stands (after `main` raised it).
pub fn open_file_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

pub struct SessionSlot(&'static Budget);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A cap that stops tether reading a client, as counted by `tether_limits_reached_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Unconfirmed,
    UnconfirmedBytes,
    ProcessUnconfirmedBytes,
}

impl Cap {
    pub fn as_str(self) -> &'static str {
        match self {
            Cap::Unconfirmed => "max_unconfirmed",
            Cap::UnconfirmedBytes => "max_unconfirmed_bytes",
            Cap::ProcessUnconfirmedBytes => "process_max_unconfirmed_bytes",
        }
    }
}

/// Counts a limit reached (`tether_limits_reached_total{limit}`). Called once per event, not
/// per frame: a session held back is counted when it starts to be held.
pub fn reached(limit: &'static str) {
    metrics::counter!(names::LIMITS_REACHED_TOTAL, "limit" => limit).increment(1);
}

/// Says something at most once a minute (a cap reached over and over under churn).
#[derive(Default)]
pub struct Quiet(Option<std::time::Instant>);

impl Quiet {
    pub fn then(&mut self, say: impl FnOnce()) {
        let now = std::time::Instant::now();
        if self
            .0
            .is_none_or(|last| now - last >= Duration::from_secs(60))
        {
            self.0 = Some(now);
            say();
        }
    }
}

/// One session's unconfirmed bytes as the process budget counts them, and the cap that holds
/// it back, if any. Dropping it gives its bytes back.
pub struct Held {
    budget: &'static Budget,
    charged: usize,
    holding: Option<Cap>,
}

impl Held {
    /// The cap that keeps tether from reading the client now, given what the session holds
    /// (`count` publishes, `bytes` of them) and its own caps. Brings the process's count up to
    /// date first, and counts a cap when it starts to hold. A session that holds nothing is
    /// never held back by the process's cap (its next publish may go past it by one read).
    pub fn cap(
        &mut self,
        count: usize,
        bytes: usize,
        max_count: usize,
        max_bytes: usize,
    ) -> Option<Cap> {
        self.settle(bytes);
        let cap = if count >= max_count {
            Some(Cap::Unconfirmed)
        } else if bytes >= max_bytes {
            Some(Cap::UnconfirmedBytes)
        } else if bytes > 0 && self.budget.held_bytes() >= self.budget.max_held_bytes() {
            // Only sessions that hold publishes are held back: a consumer must go on acking,
            // or a queue its broker needs drained (a memory alarm) would keep every confirm
            // away and the budget full for good.
            Some(Cap::ProcessUnconfirmedBytes)
        } else {
            None
        };
        if cap != self.holding {
            if let Some(cap) = cap {
                reached(cap.as_str());
            }
            self.holding = cap;
        }
        cap
    }

    /// Held back by the process's cap: nothing in this session will wake it when the budget
    /// frees, so it looks again after [`RECHECK`].
    pub fn waits_for_others(&self) -> bool {
        self.holding == Some(Cap::ProcessUnconfirmedBytes)
    }

    fn settle(&mut self, bytes: usize) {
        if bytes > self.charged {
            (self.budget.held_bytes).fetch_add(bytes - self.charged, Ordering::Relaxed);
        } else if bytes < self.charged {
            (self.budget.held_bytes).fetch_sub(self.charged - bytes, Ordering::Relaxed);
        }
        self.charged = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.settle(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_sessions: usize, max_held_bytes: usize) -> &'static Budget {
        Box::leak(Box::new(Budget::new(max_sessions, max_held_bytes)))
    }

    #[test]
    fn sessions_are_counted_while_their_slots_live() {
        let budget = budget(2, usize::MAX);
        let one = budget.session();
        assert!(!budget.sessions_full());
        let two = budget.session();
        assert!(budget.sessions_full());
        drop(one);
        assert!(!budget.sessions_full());
        drop(two);
        assert_eq!(budget.sessions(), 0);
    }

    #[test]
    fn the_process_cap_holds_every_session_once_their_sum_reaches_it() {
        let budget = budget(usize::MAX, 1000);
        let (mut a, mut b) = (budget.charge(), budget.charge());
        assert_eq!(a.cap(1, 600, 10, 800), None);
        assert_eq!(b.cap(1, 300, 10, 800), None);
        assert_eq!(budget.held_bytes(), 900);
        // b's next publish takes the sum to the cap: both are held, a without growing.
        assert_eq!(b.cap(2, 400, 10, 800), Some(Cap::ProcessUnconfirmedBytes));
        assert_eq!(a.cap(1, 600, 10, 800), Some(Cap::ProcessUnconfirmedBytes));
        assert!(a.waits_for_others());
        // a's confirms free the budget for b.
        assert_eq!(a.cap(0, 0, 10, 800), None);
        assert_eq!(b.cap(2, 400, 10, 800), None);
        drop(b);
        assert_eq!(budget.held_bytes(), 0);
    }

    #[test]
    fn a_session_holding_nothing_is_read_whatever_the_process_holds() {
        let budget = budget(usize::MAX, 1000);
        let mut publisher = budget.charge();
        let mut consumer = budget.charge();
        assert_eq!(
            publisher.cap(5, 1000, 10, 4000),
            Some(Cap::ProcessUnconfirmedBytes)
        );
        assert_eq!(
            consumer.cap(0, 0, 10, 4000),
            None,
            "its acks must keep flowing"
        );
        assert!(!consumer.waits_for_others());
    }

    #[test]
    fn a_sessions_own_caps_come_first() {
        let budget = budget(usize::MAX, 100);
        let mut held = budget.charge();
        assert_eq!(held.cap(10, 5, 10, 800), Some(Cap::Unconfirmed));
        assert_eq!(held.cap(9, 800, 10, 800), Some(Cap::UnconfirmedBytes));
        assert!(!held.waits_for_others());
    }

    #[test]
    fn the_default_session_cap_leaves_descriptors_for_the_rest() {
        assert_eq!(sessions_for_open_files(20_000), 9_872);
        assert_eq!(sessions_for_open_files(1024), 384);
        assert_eq!(sessions_for_open_files(10), 1);
    }
}
