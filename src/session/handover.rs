//! A protocol-aware session's side of a takeover (see [`crate::takeover`]), the same for AMQP
//! and STOMP: whether a takeover asks for the session now, whether it prepared its node leg
//! to be replayed elsewhere, and the sockets a taken session comes with. What a safe point is
//! and what crosses is each protocol's `handover` module's business.

use crate::cluster::node::Node;
use crate::listener::Listener;
use crate::takeover::{Round, port};
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Where a session stands with the takeovers of its process.
pub struct Handing {
    round: Round,
    /// A takeover asked for the session: it hands itself over at its next safe point.
    asked: bool,
    /// Its node leg is prepared for a replay elsewhere (consumers whose deliveries need no
    /// ack are cancelled); set up again here if the session is not taken after all.
    prepared: bool,
}

/// What the session does on this turn of its loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
    Nothing,
    /// Hand over if at the safe point.
    HandOver,
    /// Set up again on a node: it prepared its leg for a takeover that is over.
    Rejoin,
}

impl Default for Handing {
    fn default() -> Self {
        Handing {
            round: port().watch(),
            asked: false,
            prepared: false,
        }
    }
}

impl Handing {
    /// Resolves when a takeover asks for the session (never while it is already asked).
    pub async fn asked(&mut self) {
        if self.asked {
            return std::future::pending().await;
        }
        self.round.asked().await;
        self.asked = true;
    }

    /// Whether the session has anything to do about a takeover on this turn.
    pub fn active(&self) -> bool {
        self.asked || self.prepared
    }

    pub fn turn(&mut self) -> Turn {
        self.asked = self.round.asking();
        match (self.asked, self.prepared) {
            (true, _) => Turn::HandOver,
            (false, true) => {
                self.prepared = false;
                Turn::Rejoin
            }
            (false, false) => Turn::Nothing,
        }
    }

    /// Marks the node leg prepared; `true` the first time, when the preparing is to be done.
    pub fn prepare(&mut self) -> bool {
        !std::mem::replace(&mut self.prepared, true)
    }

    /// The session is not handed over in this takeover. Returns whether it must be set up
    /// again (it had prepared its node leg).
    pub fn decline(&mut self) -> bool {
        self.round.decline();
        self.asked = false;
        std::mem::take(&mut self.prepared)
    }
}

/// The sockets a handed-over session came with.
pub struct Legs {
    pub client: OwnedFd,
    /// The node's socket and its node, when the node leg crossed too.
    pub node: Option<(Arc<Node>, OwnedFd)>,
}

/// The sockets a handed-over session came with: the client's, and the node's with its node
/// when its image names one. An error says why they do not fit the image.
pub fn legs(listener: &Listener, node: Option<&str>, fds: Vec<OwnedFd>) -> Result<Legs, String> {
    let mut fds = fds.into_iter();
    let client = fds.next().ok_or("no client socket came with it")?;
    let node = match (node, fds.next()) {
        (Some(name), Some(fd)) => Some((node_named(listener, name)?, fd)),
        (None, None) => None,
        _ => return Err("its node socket and its state disagree".into()),
    };
    Ok(Legs { client, node })
}

/// The listener's cluster's node called `name`.
pub fn node_named(listener: &Listener, name: &str) -> Result<Arc<Node>, String> {
    let cluster = &listener.cluster;
    (cluster.nodes().iter())
        .find(|n| n.name == name)
        .cloned()
        .ok_or_else(|| format!("node {name} is not in cluster {}", cluster.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_is_asked_once_per_takeover_and_rejoins_if_it_prepared_in_vain() {
        let mut handing = Handing::default();
        assert_eq!(handing.turn(), Turn::Nothing);
        let _offers = port().open();
        handing.asked().await;
        assert!(handing.active());
        assert_eq!(handing.turn(), Turn::HandOver);
        assert!(handing.prepare(), "prepared the first time");
        assert!(!handing.prepare(), "once");
        assert!(handing.decline(), "it prepared: set up again");
        assert_eq!(
            handing.turn(),
            Turn::Nothing,
            "not asked again in this takeover"
        );
        // The next takeover asks again; one that ends while the session prepared makes it
        // rejoin.
        port().close();
        let _offers = port().open();
        handing.asked().await;
        assert_eq!(handing.turn(), Turn::HandOver);
        handing.prepare();
        port().close();
        assert_eq!(handing.turn(), Turn::Rejoin);
        assert_eq!(handing.turn(), Turn::Nothing);
    }
}
