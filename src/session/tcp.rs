//! Opaque forwarding. The node is chosen when the client connects (a dead node is skipped);
//! once bytes flow there is no safe point to move the session, so if its node dies the client
//! connection is closed and the client reconnects.

use crate::session::Context;
use metrics::Counter;
use std::io;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const BUFFER: usize = 16 * 1024;

pub async fn serve(context: Context, mut client: TcpStream) {
    let listener = &context.listener;
    let endpoint = listener.config.endpoint();
    let mut upstream = match listener.cluster.connect(endpoint).await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::warn!(listener = %listener.config.name, client = %context.client_addr,
                error = %e, "no node took the session; closing the client connection");
            return;
        }
    };
    let node = upstream.node().name.clone();
    tracing::debug!(listener = %listener.config.name, client = %context.client_addr, %node, "session opened");
    let started = Instant::now();
    let (mut client_read, mut client_write) = client.split();
    let (mut node_read, mut node_write) = upstream.stream.split();
    let forward = async {
        tokio::try_join!(
            pump(
                &mut client_read,
                &mut node_write,
                &listener.metrics.bytes_from_client
            ),
            pump(
                &mut node_read,
                &mut client_write,
                &listener.metrics.bytes_to_client
            ),
        )
    };
    let outcome = tokio::select! {
        outcome = forward => outcome.map(|_| ()),
        _ = context.close.cancelled() => Err(io::Error::other("tether is shutting down")),
    };
    tracing::debug!(listener = %listener.config.name, client = %context.client_addr, %node,
        seconds = started.elapsed().as_secs_f64(), error = outcome.err().map(|e| e.to_string()),
        "session closed");
}

/// Copies one direction until EOF, then passes the half-close on.
async fn pump<R, W>(from: &mut R, to: &mut W, bytes: &Counter) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        bytes.increment(n as u64);
    }
}
