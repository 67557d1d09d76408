//! Opaque forwarding. The node is chosen when the client connects (a dead node is skipped);
//! once bytes flow there is no safe point to move the session, so if its node dies the client
//! connection is closed and the client reconnects.

use crate::session::Context;
use crate::tls::Stream;
use metrics::Counter;
use std::io;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads of an idle or chatty session.
const SMALL_BUFFER: usize = 1024;
/// Reads of a bulk transfer.
const BUFFER: usize = 16 * 1024;

pub async fn serve(context: Context, client: Stream) {
    let listener = &context.listener;
    let endpoint = listener.config.endpoint();
    let upstream = match listener.cluster.connect(endpoint).await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::warn!(parent: &context.span, error = %e, "no node took the session; closing the client connection");
            return;
        }
    };
    let node = upstream.node().name.clone();
    tracing::debug!(parent: &context.span, %node, "session opened");
    let started = Instant::now();
    let (mut client_read, mut client_write) = client.into_split();
    let (mut node_read, mut node_write) = upstream.stream.into_split();
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
    tracing::debug!(parent: &context.span, %node,
        seconds = started.elapsed().as_secs_f64(), error = outcome.err().map(|e| e.to_string()),
        "session closed");
}

/// Copies one direction until EOF, then passes the half-close on. An idle session should cost
/// little (a sidecar holds thousands), so reads start in a small buffer inside the task and
/// move to a large one only once a read fills the small one (bulk traffic).
async fn pump<R, W>(from: &mut R, to: &mut W, bytes: &Counter) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut small = [0u8; SMALL_BUFFER];
    let mut large: Vec<u8> = Vec::new();
    loop {
        let n = if large.is_empty() {
            from.read(&mut small).await?
        } else {
            from.read(&mut large).await?
        };
        if n == 0 {
            return to.shutdown().await;
        }
        if large.is_empty() {
            to.write_all(&small[..n]).await?;
            if n == SMALL_BUFFER {
                large = vec![0u8; BUFFER];
            }
        } else {
            to.write_all(&large[..n]).await?;
        }
        // A TLS leg may keep records of this write in its buffer; plain TCP's flush is free.
        to.flush().await?;
        bytes.increment(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn small_and_bulk_transfers_arrive_whole_and_half_close_passes_on() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for size in [
            1,
            SMALL_BUFFER - 1,
            SMALL_BUFFER,
            SMALL_BUFFER + 1,
            payload.len(),
        ] {
            let (mut source, mut source_peer) = tokio::io::duplex(64 * 1024);
            let (mut sink_peer, mut sink) = tokio::io::duplex(64 * 1024);
            let counter = metrics::Counter::noop();
            let data = payload[..size].to_vec();
            let writer = tokio::spawn(async move {
                source_peer.write_all(&data).await.unwrap();
                source_peer.shutdown().await.unwrap();
            });
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                sink.read_to_end(&mut got).await.unwrap();
                got
            });
            pump(&mut source, &mut sink_peer, &counter).await.unwrap();
            writer.await.unwrap();
            drop(sink_peer);
            assert_eq!(reader.await.unwrap(), payload[..size], "{size} bytes");
        }
    }
}
