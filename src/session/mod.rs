//! One task per client connection. The listener's protocol picks the session type: `tcp`
//! forwards bytes opaquely; the protocol-aware types (STOMP, AMQP) terminate the protocol on
//! both legs so that they can replay a session on another node.
//!
//! # Layout
//!
//! - [`failover`]: leaving a node and arriving on the next, the same for every protocol:
//!   typed reasons, the record kept meanwhile, the log line and metrics when it is done.
//! - [`moving`]: planned moves (rebalancing): when a session may move, what it holds back.
//! - `roaming`: a session's side of changing nodes: its registration with the rebalancer,
//!   the move or failover under way, the frames parked meanwhile.
//! - `io`: what the protocol-aware sessions' `select!` loops wait on.
//! - [`amqp`], [`stomp`], [`tcp`]: one session type per protocol.
//!
//! Every line a session logs has the session's `session` span (its listener and its client) as
//! its parent, so it need not repeat them; lines about a node name it (`node`, or `from` and
//! `to`). The node is not a span field: a field recorded again is appended, not replaced, in
//! the text format, and a session changes nodes.

pub mod amqp;
pub mod failover;
pub mod handover;
pub(crate) mod io;
pub mod liveness;
pub mod moving;
pub(crate) mod reader;
mod roaming;
pub mod splice;
pub mod stomp;
pub mod tcp;

use crate::config::Protocol;
use crate::listener::Listener;
use crate::tls::Stream;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What a session knows about where it runs.
pub struct Context {
    pub listener: Arc<Listener>,
    pub client_addr: SocketAddr,
    /// Cancelled when the shutdown grace period is over: the session must end now.
    pub close: CancellationToken,
    /// The session's span (listener, client): the parent of every line the session logs.
    pub span: tracing::Span,
}

pub async fn serve(context: Context, client: Stream) {
    crate::cluster::connect::tune(client.tcp());
    // Boxed: a session's task is then the size of its own protocol's session, not the largest.
    match context.listener.config.protocol() {
        Protocol::Tcp => Box::pin(tcp::serve(context, client)).await,
        Protocol::Stomp => Box::pin(stomp::serve(context, client)).await,
        Protocol::Amqp => Box::pin(amqp::serve(context, client)).await,
    }
}

/// A session another tether process handed over (see [`crate::takeover`]), ready to run;
/// `Err` says why it was not taken (the old process then carries on with it).
pub fn resume(
    context: Context,
    image: serde_json::Value,
    fds: Vec<std::os::fd::OwnedFd>,
) -> Result<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>, String> {
    match context.listener.config.protocol() {
        Protocol::Tcp => Ok(Box::pin(tcp::resume(context, image, fds)?)),
        Protocol::Amqp => Ok(Box::pin(amqp::handover::resume(context, image, fds)?)),
        Protocol::Stomp => Ok(Box::pin(stomp::handover::resume(context, image, fds)?)),
    }
}

/// A session's span: the listener and the client, for the lines it logs. It is never entered
/// (entering a span on every poll costs a few percent of tether's CPU per message); the lines
/// name it as their parent instead.
pub fn span(listener: &Listener, client: SocketAddr) -> tracing::Span {
    tracing::info_span!("session", listener = %listener.config.name, %client)
}
