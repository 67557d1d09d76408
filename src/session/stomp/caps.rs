//! What one STOMP session may hold: each subscription and open transaction is kept for the
//! replay (and each SUBSCRIBE looks through the others), and what open transactions hold stays
//! in tether until their COMMIT.

/// A session's caps, from its listener's settings.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub subscriptions: usize,
    pub transactions: usize,
    /// The most SENDs and ACKs, and bytes, open transactions may hold together (the
    /// listener's `max_unconfirmed` and `max_unconfirmed_bytes`): tether stops reading a client
    /// at those, so a transaction that reached them could never be committed.
    pub held: usize,
    pub held_bytes: usize,
}

impl Caps {
    /// A listener's caps.
    pub fn of(settings: &crate::config::SessionSettings) -> Caps {
        Caps {
            subscriptions: settings.max_subscriptions,
            transactions: settings.max_transactions,
            held: settings.max_unconfirmed,
            held_bytes: settings.max_unconfirmed_bytes,
        }
    }

    /// Why open transactions holding `(frames, bytes)` are refused, if they are.
    pub fn refuse_held(&self, (frames, bytes): (usize, usize)) -> Option<String> {
        (frames >= self.held || bytes >= self.held_bytes).then(|| {
            format!(
                "open transactions hold {frames} frames ({bytes} bytes), as much as tether \
                 keeps for a session (max_unconfirmed = {}, max_unconfirmed_bytes = {}): commit \
                 sooner",
                self.held, self.held_bytes
            )
        })
    }
}

/// Until the listener's are set (a log read from a takeover's image).
impl Default for Caps {
    fn default() -> Caps {
        Caps {
            subscriptions: 2048,
            transactions: 256,
            held: 10_000,
            held_bytes: 64 * 1024 * 1024,
        }
    }
}
