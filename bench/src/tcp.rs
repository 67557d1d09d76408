//! Opaque TCP: a sink that discards what it reads, bulk senders, and idle connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Accepts connections on `addr` and discards everything they send, for as long as the
/// process runs. Returns the bytes it has read so far.
pub async fn sink(addr: SocketAddr) -> anyhow::Result<Arc<AtomicU64>> {
    let listener = TcpListener::bind(addr).await?;
    let total = Arc::new(AtomicU64::new(0));
    let counter = total.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    Ok(total)
}

/// Writes as fast as it can over `streams` connections to `target` for `duration`; returns
/// bytes written and seconds taken.
pub async fn bulk(
    target: SocketAddr,
    streams: usize,
    duration: Duration,
) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(target).await?;
            let chunk = vec![0x5au8; 256 * 1024];
            let mut sent = 0u64;
            while started.elapsed() < duration {
                stream.write_all(&chunk).await?;
                sent += chunk.len() as u64;
            }
            stream.shutdown().await?;
            Ok::<u64, std::io::Error>(sent)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

/// Opens `count` connections to `target` and keeps them, idle.
pub async fn hold_idle(target: SocketAddr, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        held.push(TcpStream::connect(target).await?);
    }
    Ok(held)
}
