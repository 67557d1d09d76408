//! Takeover: a new tether process takes over from the running one without closing a client
//! connection, for an upgrade or a change that a reload cannot apply.
//!
//! The two meet on a Unix socket (`[takeover] socket`). The new process starts its clusters,
//! connects, and gets every listening socket (and the admin one) with SCM_RIGHTS, so that no
//! connect is refused while the two change places; the old one stops accepting. Then the old
//! process asks each session to hand itself over at a safe point: no frame half read or half
//! written, no message half through, nothing being set up. A session sends its client socket,
//! its node socket where it can, and its state (see [`serial`] for the format); the new process
//! answers once it runs the session, and only then does the old one let go. A session the new
//! process does not take, or whose hand-over fails in any way, carries on in the old process.
//!
//! # Layout
//!
//! - [`channel`]: messages with descriptors attached on the Unix socket.
//! - [`serial`]: serde helpers for the session state that crosses.
//! - this file: the messages, and the port through which the old process's sessions are
//!   asked for and hand themselves over.
//! - `crate::server`: both ends of the conversation, with the listeners they concern.

pub mod channel;
pub mod serial;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock};
use tokio::sync::{mpsc, oneshot, watch};

/// The version of the hand-over format this build writes. A build reads the formats in
/// [`FORMATS_READ`]; a new one that cannot read the running one's refuses the takeover.
pub const FORMAT: u32 = 1;
/// The oldest and newest format this build reads.
pub const FORMATS_READ: [u32; 2] = [1, 1];
/// The admin listener's socket among the listening sockets handed over.
pub const ADMIN: &str = "@admin";

/// What the two processes say to each other, in order: `Hello` (new), `Listeners` or
/// `Refused` (old), `Ready` (new), then `Session` (old) answered by `Taken` or `NotTaken`
/// (new), as many as there are sessions, and `Done` (old).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Hello {
        /// The formats the new process reads (oldest, newest).
        formats: [u32; 2],
        version: String,
        pid: u32,
    },
    Refused {
        reason: String,
    },
    /// The listening sockets, in this order, attached.
    Listeners {
        format: u32,
        version: String,
        names: Vec<String>,
        /// The nodes an operator drained, by cluster: they stay drained in the new process.
        /// Optional, so that both older and newer builds read the message.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        drained: BTreeMap<String, BTreeSet<String>>,
    },
    Ready,
    /// A session: its client socket and, for [`Handed::BothLegs`], its node socket attached.
    Session {
        id: u64,
        listener: String,
        handed: Handed,
        /// The protocol's own image of the session (read by `crate::session::handover`).
        image: serde_json::Value,
    },
    Taken {
        id: u64,
    },
    NotTaken {
        id: u64,
        reason: String,
    },
    Done {
        handed: BTreeMap<String, u64>,
        /// Sessions the old process did not hand over (closed when it exits).
        left: u64,
    },
}

/// How a session crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Handed {
    /// Client and node sockets both: the broker sees the same connection.
    BothLegs,
    /// The client socket; the new process connects to a node and replays the session there,
    /// as a failover does (a node leg over TLS, or a share of a multiplexed connection).
    ClientLeg,
}

impl Handed {
    pub fn label(self) -> &'static str {
        match self {
            Handed::BothLegs => "both_legs",
            Handed::ClientLeg => "client_leg",
        }
    }
}

/// A session's offer to hand itself over.
pub struct Offer {
    pub listener: String,
    pub handed: Handed,
    pub image: serde_json::Value,
    pub fds: Vec<OwnedFd>,
    /// Whether the new process runs the session now.
    pub taken: oneshot::Sender<bool>,
}

/// Where a running process's sessions learn that a takeover wants them and hand themselves
/// over. One per process.
pub struct Port {
    /// Odd while a takeover asks for sessions; each takeover moves it on by two.
    round: watch::Sender<u64>,
    offers: Mutex<Option<mpsc::Sender<Offer>>>,
}

pub fn port() -> &'static Port {
    static PORT: OnceLock<Port> = OnceLock::new();
    PORT.get_or_init(|| Port {
        round: watch::Sender::new(0),
        offers: Mutex::new(None),
    })
}

impl Port {
    /// A session's view of the port.
    pub fn watch(&self) -> Round {
        Round {
            rounds: self.round.subscribe(),
            done: 0,
        }
    }

    /// A takeover starts asking every session; their offers arrive on the receiver.
    pub fn open(&self) -> mpsc::Receiver<Offer> {
        let (sender, offers) = mpsc::channel(64);
        *self.offers.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
        self.round.send_modify(|round| *round = (*round | 1) + 2);
        offers
    }

    /// The takeover is over: sessions that did not hand themselves over carry on here.
    pub fn close(&self) {
        self.offers.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.round.send_modify(|round| *round = (*round + 1) & !1);
    }

    /// Offers a session; `true` when the new process runs it now (the caller then lets go of
    /// its sockets without closing the connections).
    pub async fn offer(
        &self,
        listener: String,
        handed: Handed,
        image: serde_json::Value,
        fds: Vec<OwnedFd>,
    ) -> bool {
        let (taken, answer) = oneshot::channel();
        let offer = Offer {
            listener,
            handed,
            image,
            fds,
            taken,
        };
        let sender = self
            .offers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(sender) = sender else { return false };
        if sender.send(offer).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

/// A session's side of the port.
pub struct Round {
    rounds: watch::Receiver<u64>,
    /// The round this session is done with (it could not hand itself over in it).
    done: u64,
}

impl Round {
    /// Resolves when a takeover asks for this session. Cancel-safe.
    pub async fn asked(&mut self) {
        let done = self.done;
        if self
            .rounds
            .wait_for(|round| round % 2 == 1 && *round != done)
            .await
            .is_err()
        {
            std::future::pending::<()>().await;
        }
    }

    /// Whether a takeover still asks for this session.
    pub fn asking(&self) -> bool {
        let round = *self.rounds.borrow();
        round % 2 == 1 && round != self.done
    }

    /// The session cannot be handed over in this takeover; it is not asked again in it.
    pub fn decline(&mut self) {
        self.done = *self.rounds.borrow();
    }
}

/// Tells systemd (`Type=notify`) that tether serves; after a takeover, also that this is the
/// service's main process now, so that systemd follows it when the old one exits (the unit
/// needs `NotifyAccess=all`, since this process is not the one systemd started).
pub fn notify_ready(took_over: bool) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let mut message = String::new();
    if took_over {
        message.push_str(&format!("MAINPID={}\n", std::process::id()));
    }
    message.push_str("READY=1\n");
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|datagram| {
        let bytes = socket.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                datagram.send_to_addr(message.as_bytes(), &address)
            }
            None => datagram.send_to(message.as_bytes(), &socket),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
