//! Discovery sources: each reports the nodes it knows as a stream of [`Update`]s to the
//! cluster's topology task.

pub mod activemq;
pub mod dns;
pub mod rabbitmq;

use crate::cluster::topology::Update;
use tokio::sync::mpsc;

/// What a source tells the topology task.
#[derive(Debug)]
pub enum SourceEvent {
    Update {
        source: String,
        update: Update,
    },
    /// The source could not report its first node set; startup stops waiting for it.
    FirstLookupFailed {
        source: String,
    },
    /// A reload dropped the source: its nodes go, and whatever it still reports is ignored.
    Retired {
        source: String,
    },
    /// A reload (re)started the source: it is heard again.
    Started {
        source: String,
    },
    /// The endpoints to health-check changed: every node starts afresh.
    Rebuild,
    /// A broker asked its clients to spread out (ActiveMQ's rebalanceConnection).
    RebalanceHint {
        source: String,
    },
}

/// A source's handle on its cluster's topology task.
#[derive(Clone)]
pub struct UpdateSender(pub(crate) mpsc::UnboundedSender<SourceEvent>);

impl UpdateSender {
    pub fn send(&self, source: &str, update: Update) {
        // The topology task only ends at shutdown, when nobody needs the update any more.
        let _ = self.0.send(SourceEvent::Update {
            source: source.to_string(),
            update,
        });
    }

    /// A broker asked its clients to rebalance: the cluster re-checks its spread at once.
    pub fn hint_rebalance(&self, source: &str) {
        let _ = self.0.send(SourceEvent::RebalanceHint {
            source: source.to_string(),
        });
    }

    pub fn report_failed(&self, source: &str) {
        let _ = self.0.send(SourceEvent::FirstLookupFailed {
            source: source.to_string(),
        });
    }
}
