//! One task per client connection. The listener's protocol picks the session type: `tcp`
//! forwards bytes opaquely; the protocol-aware types (STOMP, AMQP) terminate the protocol on
//! both legs so that they can replay a session on another node.

pub mod amqp;
pub mod stomp;
pub mod tcp;

use crate::config::Protocol;
use crate::listener::Listener;
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
