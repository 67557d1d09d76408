//! Opening an upstream connection: pick a live node, connect within `connect_timeout`, and on
//! refusal or timeout mark that node's endpoint down at once and try the next live node. The
//! caller only hears of failure when every live node has failed. With the cluster's `tls` set,
//! the TLS handshake is part of the connect (and of its timeout): a node whose handshake fails
//! is skipped the same way.

use crate::address::Address;
use crate::cluster::Cluster;
use crate::cluster::ejection::Cause;
use crate::cluster::node::{Node, SessionLease};
use crate::metrics::names;
use crate::tls::{Connector, HandshakeFailure, Stream};
use socket2::{SockRef, TcpKeepalive};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// A connection to one node, counted against it while it lives.
pub struct Upstream {
    pub stream: Stream,
    pub lease: SessionLease,
}

impl Upstream {
    pub fn node(&self) -> &Arc<Node> {
        self.lease.node()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no live node has endpoint {endpoint:?}{}", why.as_deref().map(|w| format!(" ({w})")).unwrap_or_default())]
    NoLiveNode {
        endpoint: String,
        /// Why one of the nodes that have it is down, as its health says.
        why: Option<String>,
    },
    #[error("every live node failed ({tried} tried), last: {last}")]
    AllFailed { tried: usize, last: String },
}

/// Why a connect failed, as the `reason` label of `tether_connect_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    Refused,
    Reset,
    Timeout,
    Unreachable,
    /// The TLS handshake failed: the log says why (unknown CA, name mismatch, ...).
    Tls,
    /// Trouble on this host (out of file descriptors, ...): says nothing about the node.
    Local,
}

impl FailureReason {
    pub const ALL: [FailureReason; 6] = [
        FailureReason::Refused,
        FailureReason::Reset,
        FailureReason::Timeout,
        FailureReason::Unreachable,
        FailureReason::Tls,
        FailureReason::Local,
    ];

    pub fn classify(error: &io::Error) -> FailureReason {
        use io::ErrorKind::*;
        match error.kind() {
            ConnectionRefused => FailureReason::Refused,
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                FailureReason::Reset
            }
            TimedOut => FailureReason::Timeout,
            HostUnreachable | NetworkUnreachable | NotFound | AddrNotAvailable => {
                FailureReason::Unreachable
            }
            _ => FailureReason::Local,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Refused => "refused",
            FailureReason::Reset => "reset",
            FailureReason::Timeout => "timeout",
            FailureReason::Unreachable => "unreachable",
            FailureReason::Tls => "tls",
            FailureReason::Local => "local",
        }
    }

    /// Whether this failure is the node's, so that it should take no new sessions.
    pub fn marks_node_down(self) -> bool {
        self != FailureReason::Local
    }
}

impl Cluster {
    /// Connects to `endpoint` on a live node, trying each live node at most once.
    pub async fn connect(&self, endpoint: &str) -> Result<Upstream, ConnectError> {
        self.connect_preferring(endpoint, None).await
    }

    /// Like [`Cluster::connect`], trying the node named `preferred` first if it is live (a
    /// rebalancing move), the balancer's choice otherwise.
    pub async fn connect_preferring(
        &self,
        endpoint: &str,
        preferred: Option<&str>,
    ) -> Result<Upstream, ConnectError> {
        let mut tried: Vec<String> = Vec::new();
        let mut last_error = None;
        let mut panicked = false;
        loop {
            let node = {
                let nodes = self.nodes.load();
                let live = |n: &&Arc<Node>| n.live_endpoint(endpoint).is_some();
                // Panic mode: with no endpoint live, every node is tried in turn (see
                // `ejection`); its connects decide, not marks that may be stale.
                let panic = !nodes.iter().any(|n| live(&n));
                if panic && !panicked {
                    panicked = true;
                    metrics::counter!(names::PANIC_CONNECTS_TOTAL, "cluster" => self.name.to_string())
                        .increment(1);
                    tracing::debug!(cluster = %self.name, %endpoint,
                        "no endpoint live: trying every node (panic mode)");
                }
                let candidates: Vec<&Arc<Node>> = nodes
                    .iter()
                    .filter(|n| !tried.contains(&n.name))
                    .filter(|n| match panic {
                        true => n.endpoints.get(endpoint).is_some_and(|e| e.monitored),
                        false => live(n),
                    })
                    .collect();
                let wanted =
                    preferred.and_then(|name| candidates.iter().copied().find(|n| n.name == name));
                match wanted.or_else(|| self.settings.load().balancer.pick(&candidates)) {
                    Some(node) => Arc::clone(node),
                    None => {
                        return Err(match last_error {
                            None => ConnectError::NoLiveNode {
                                endpoint: endpoint.to_string(),
                                why: nodes.iter().find_map(|n| {
                                    let target = n.endpoints.get(endpoint)?;
                                    (!target.health.is_up()).then(|| {
                                        let change = target.health.last_change();
                                        format!("{}: {}", n.name, change.reason)
                                    })
                                }),
                            },
                            Some(last) => ConnectError::AllFailed {
                                tried: tried.len(),
                                last,
                            },
                        });
                    }
                }
            };
            tried.push(node.name.clone());
            let lease = node.lease();
            let Some(target) = node.endpoints.get(endpoint) else {
                continue;
            };
            let connect_timeout = self.settings.load().connect_timeout;
            let tls = self.tls.load_full();
            let outcome =
                tokio::time::timeout(connect_timeout, dial(&target.address, tls.as_deref())).await;
            let (reason, detail) = match outcome {
                Ok(Ok(dialled)) => {
                    tune(dialled.stream.tcp());
                    bound_unacknowledged_writes(dialled.stream.tcp());
                    node.count_connect();
                    if let Some(resumed) = dialled.resumed {
                        metrics::counter!(names::TLS_HANDSHAKES_TOTAL,
                            "cluster" => self.name.to_string(),
                            "kind" => if resumed { "resumed" } else { "full" })
                        .increment(1);
                    }
                    return Ok(Upstream {
                        stream: dialled.stream,
                        lease,
                    });
                }
                Ok(Err(DialError::Io(e))) => (FailureReason::classify(&e), e.to_string()),
                // A node that dies (or closes) while the handshake runs reset the connect; the
                // TLS settings are not in question.
                Ok(Err(DialError::Tls(failure @ HandshakeFailure::Dropped(_)))) => {
                    (FailureReason::Reset, failure.to_string())
                }
                Ok(Err(DialError::Tls(failure))) => (FailureReason::Tls, failure.to_string()),
                Err(_) => (
                    FailureReason::Timeout,
                    format!(
                        "no connection{} within {}",
                        if tls.is_some() {
                            " and TLS handshake"
                        } else {
                            ""
                        },
                        humantime::format_duration(connect_timeout)
                    ),
                ),
            };
            self.connect_failed(&node, endpoint, reason, &detail);
            last_error = Some(format!("{} {}: {detail}", node.name, target.address));
        }
    }

    /// Counts a failed connect and, when the node is to blame, takes its endpoint out of
    /// rotation until active checks see it back.
    pub fn connect_failed(&self, node: &Node, endpoint: &str, reason: FailureReason, detail: &str) {
        metrics::counter!(names::CONNECT_FAILURES_TOTAL,
            "cluster" => self.name.to_string(), "node" => node.name.clone(), "reason" => reason.label())
        .increment(1);
        tracing::debug!(cluster = %self.name, node = %node.name, %endpoint, reason = reason.label(), %detail, "connect failed");
        if reason.marks_node_down() {
            self.node_failed(
                node,
                endpoint,
                Cause::Connect,
                &format!("connect failed ({}): {detail}", reason.label()),
            );
        }
    }
}

/// A connection made by [`dial`].
pub struct Dialled {
    pub stream: Stream,
    /// Over TLS: whether the TLS session was resumed. `None` in plain TCP.
    pub resumed: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Tls(HandshakeFailure),
}

/// Connects to `address` (each address it resolves to in turn) and, with `tls`, runs the
/// handshake. The caller bounds it in time.
pub async fn dial(address: &Address, tls: Option<&Connector>) -> Result<Dialled, DialError> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "resolved to no address");
    let mut connected = None;
    for addr in address.resolve().await.map_err(DialError::Io)? {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                connected = Some(stream);
                break;
            }
            Err(e) => last = e,
        }
    }
    let tcp = connected.ok_or(DialError::Io(last))?;
    match tls {
        None => Ok(Dialled {
            stream: Stream::Plain(tcp),
            resumed: None,
        }),
        Some(connector) => {
            let handshaken = connector
                .connect(address, tcp)
                .await
                .map_err(DialError::Tls)?;
            Ok(Dialled {
                stream: handshaken.stream,
                resumed: Some(handshaken.resumed),
            })
        }
    }
}

/// Messaging is latency-bound (small frames, waiting for confirms), so Nagle stays off; keepalive
/// notices a peer that vanished without a FIN even when the protocol has no heartbeats.
/// How long data written to a node may go unacknowledged before the kernel gives up on the
/// connection. A hung node's connection then fails in bounded time even where no heart-beat
/// watches it (a `tcp` listener's), instead of after the kernel's retransmissions (15 minutes).
pub const NODE_USER_TIMEOUT: Duration = Duration::from_secs(10);

fn bound_unacknowledged_writes(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_tcp_user_timeout(Some(NODE_USER_TIMEOUT));
}

pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive);
}
