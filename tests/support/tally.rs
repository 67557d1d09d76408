//! What the clients of a fault or move test saw, counted across them.

use super::clients;
use std::collections::BTreeSet;

/// What the clients of a test saw, merged across them.
pub struct Tally {
    pub sent: BTreeSet<String>,
    pub received: BTreeSet<String>,
    pub deliveries: u64,
    /// Deliveries of a message seen before without the redelivered flag (pika consumers).
    pub unflagged_duplicates: u64,
    pub client_errors: Vec<serde_json::Value>,
}

impl Tally {
    /// Stops the producers (whose bodies are `{tag}{i}-{n}`) and then the consumers, and counts.
    /// `confirmed` names the producers' count of what the broker confirmed: all must be.
    pub fn of(
        producers: Vec<clients::Running>,
        consumers: Vec<clients::Running>,
        tag: &str,
        confirmed: &str,
    ) -> Tally {
        let mut tally = Tally {
            sent: BTreeSet::new(),
            received: BTreeSet::new(),
            deliveries: 0,
            unflagged_duplicates: 0,
            client_errors: Vec::new(),
        };
        for (i, producer) in producers.into_iter().enumerate() {
            let summary = producer.finish();
            tally.note_errors(&summary);
            let count = summary["sent"].as_u64().unwrap_or(0);
            assert_eq!(summary[confirmed], count, "every one confirmed: {summary}");
            tally
                .sent
                .extend((0..count).map(|n| format!("{tag}{i}-{n}")));
        }
        for consumer in consumers {
            let summary = consumer.finish();
            tally.note_errors(&summary);
            tally.deliveries += summary["deliveries"].as_u64().unwrap_or(0);
            tally.unflagged_duplicates += summary["unflagged_duplicates"].as_u64().unwrap_or(0);
            for body in summary["bodies"].as_array().into_iter().flatten() {
                tally
                    .received
                    .insert(body.as_str().unwrap_or_default().to_string());
            }
        }
        tally
    }

    /// Errors the client reports, and a disconnect it saw (STOMP clients count those).
    fn note_errors(&mut self, summary: &serde_json::Value) {
        self.client_errors
            .extend(summary["errors"].as_array().cloned().unwrap_or_default());
        if summary["disconnects"].as_u64().unwrap_or(0) > 0 {
            self.client_errors.push(summary.clone());
        }
    }

    /// What was sent and never received.
    pub fn lost(&self) -> Vec<&String> {
        self.sent.difference(&self.received).collect()
    }

    /// Something was sent; nothing was lost; no client saw an error.
    pub fn assert_clean(&self) {
        let lost = self.lost();
        assert!(!self.sent.is_empty());
        assert!(
            lost.is_empty(),
            "lost {} messages: {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
        assert!(
            self.client_errors.is_empty(),
            "client errors: {:?}",
            self.client_errors
        );
    }
}
