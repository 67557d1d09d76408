//! One task per client connection. The listener's protocol picks the session type: `tcp`
//! forwards bytes opaquely; the protocol-aware types (STOMP, AMQP) terminate the protocol on
//! both legs so that they can replay a session on another node.

pub mod amqp;
mod io;
pub mod stomp;
pub mod tcp;

use crate::cluster::node::Node;
use crate::config::Protocol;
use crate::listener::Listener;
use crate::rebalance::{MoveOutcome, PlannedMove};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// What a session knows about where it runs.
pub struct Context {
    pub listener: Arc<Listener>,
    pub client_addr: SocketAddr,
    /// Cancelled when the shutdown grace period is over: the session must end now.
    pub close: CancellationToken,
}

pub async fn serve(context: Context, client: TcpStream) {
    crate::cluster::connect::tune(&client);
    match context.listener.config.protocol {
        Protocol::Tcp => tcp::serve(context, client).await,
        Protocol::Stomp => stomp::serve(context, client).await,
        Protocol::Amqp => amqp::serve(context, client).await,
    }
}

/// A protocol-aware session's node failed under it: the cluster marks the endpoint down at
/// once, the failover is logged and counted, and a planned move under way ends (the failover
/// takes the session somewhere; the frames parked for the move follow it there). Returns the
/// failed node's name.
fn node_failed(
    listener: &Listener,
    client: SocketAddr,
    endpoint: &str,
    node: &Node,
    reason: &'static str,
    detail: &str,
    moving: Option<PlannedMove>,
) -> String {
    listener.cluster.node_failed(
        node,
        endpoint,
        &format!("session failover ({reason}): {detail}"),
    );
    tracing::warn!(listener = %listener.config.name, client = %client,
        node = %node.name, reason, %detail, "node failed; failing over");
    listener.metrics.failover(reason);
    if let Some(moving) = moving {
        moving.finish(MoveOutcome::NotMoved(format!("its node failed ({reason})")));
    }
    node.name.clone()
}
