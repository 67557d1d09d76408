//! Opaque forwarding. The node is chosen when the client connects (a dead node is skipped);
//! once bytes flow there is no safe point to move the session, so if its node dies the client
//! connection is closed and the client reconnects.
//!
//! A takeover by a new tether process (see [`crate::takeover`]) is the exception: between two
//! reads nothing is held here, so both sockets cross as they are and the bytes flow on.

use crate::cluster::connect::Upstream;
use crate::session::Context;
use crate::session::splice::Pipe;
use crate::takeover::{Handed, port};
use crate::tls::{ReadHalf, Stream, WriteHalf};
use metrics::Counter;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::OwnedFd;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Reads of an idle or chatty session.
const SMALL_BUFFER: usize = 1024;
/// Reads of a bulk transfer: 64 KiB takes a quarter of the system calls of HAProxy's 16 KiB.
const BUFFER: usize = 64 * 1024;

/// A leg's socket when no TLS stands in the way: a bulk transfer between two such legs is
/// spliced, never copied through tether's memory.
trait Plain {
    fn plain(&self) -> Option<&TcpStream>;
}

impl Plain for ReadHalf {
    fn plain(&self) -> Option<&TcpStream> {
        self.plain_tcp()
    }
}

impl Plain for WriteHalf {
    fn plain(&self) -> Option<&TcpStream> {
        self.plain_tcp()
    }
}

/// How one direction moves its bytes: small reads while idle or chatty, and during a bulk
/// transfer either a pipe between two plain sockets or, where a leg is TLS, a large buffer.
enum Bulk {
    Idle,
    Copied(Vec<u8>),
    Spliced(Pipe),
}

impl Bulk {
    fn start(from: &impl Plain, to: &impl Plain) -> Bulk {
        if from.plain().is_some() && to.plain().is_some() {
            match Pipe::new() {
                Ok(pipe) => return Bulk::Spliced(pipe),
                // Out of descriptors or pipe memory: copying still works.
                Err(e) => tracing::debug!(error = %e, "no pipe for a bulk transfer; copying"),
            }
        }
        Bulk::Copied(vec![0u8; BUFFER])
    }
}

/// A tcp session as it crosses: the node its second socket goes to.
#[derive(Serialize, Deserialize)]
pub struct Image {
    node: String,
}

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
    tracing::debug!(parent: &context.span, node = %upstream.node().name, "session opened");
    forward(context, client, upstream).await;
}

/// Runs a session another process handed over (see [`serve`]).
pub fn resume(
    context: Context,
    image: serde_json::Value,
    fds: Vec<OwnedFd>,
) -> Result<impl Future<Output = ()> + Send + use<>, String> {
    let image: Image = serde_json::from_value(image).map_err(|e| format!("unreadable: {e}"))?;
    let node = crate::session::handover::node_named(&context.listener, &image.node)?;
    let [client, upstream]: [OwnedFd; 2] = fds
        .try_into()
        .map_err(|_| "a tcp session comes with two sockets".to_string())?;
    let client = crate::tls::adopt(client).map_err(|e| e.to_string())?;
    let upstream = Upstream {
        stream: crate::tls::adopt(upstream).map_err(|e| e.to_string())?,
        lease: node.lease(),
    };
    Ok(forward(context, client, upstream))
}

/// One direction of a session: running, paused between two reads, or done.
enum Pumped {
    Ended,
    Paused,
}

async fn forward(context: Context, client: Stream, upstream: Upstream) {
    let listener = &context.listener;
    let Upstream { stream, lease } = upstream;
    let node = lease.node().name.clone();
    let started = Instant::now();
    let (mut client_read, mut client_write) = client.into_split();
    let (mut node_read, mut node_write) = stream.into_split();
    let mut round = port().watch();
    // Which directions still flow.
    let (mut up, mut down) = (true, true);
    let outcome: io::Result<()> = loop {
        let (pause, paused) = watch::channel(false);
        let pumped = {
            let (up, down) = (up, down);
            let pumps = async {
                tokio::try_join!(
                    pump_if(
                        up,
                        &mut client_read,
                        &mut node_write,
                        &listener.metrics.bytes_from_client,
                        paused.clone()
                    ),
                    pump_if(
                        down,
                        &mut node_read,
                        &mut client_write,
                        &listener.metrics.bytes_to_client,
                        paused.clone()
                    ),
                )
            };
            let asked = async {
                round.asked().await;
                let _ = pause.send(true);
                std::future::pending::<()>().await
            };
            tokio::select! {
                pumped = pumps => pumped,
                _ = asked => unreachable!("never resolves"),
                _ = context.close.cancelled() => Err(io::Error::other("tether is shutting down")),
            }
        };
        let (up_now, down_now) = match pumped {
            Ok(pumped) => pumped,
            Err(e) => break Err(e),
        };
        up = matches!(up_now, Pumped::Paused);
        down = matches!(down_now, Pumped::Paused);
        if !up && !down {
            break Ok(());
        }
        if !*pause.borrow() {
            continue;
        }
        // Both directions stand between two reads (or one has ended): the sockets can cross.
        if up && down && hand_over(&listener.config.name, &client_read, &node_read, &node).await {
            client_write.forget();
            node_write.forget();
            tracing::debug!(parent: &context.span, %node, "session handed over");
            drop(lease);
            return;
        }
        round.decline();
    };
    drop(lease);
    tracing::debug!(parent: &context.span, %node,
        seconds = started.elapsed().as_secs_f64(), error = outcome.err().map(|e| e.to_string()),
        "session closed");
}

/// Offers both sockets to the new process; `true` once it runs the session.
async fn hand_over(listener: &str, client: &ReadHalf, upstream: &ReadHalf, node: &str) -> bool {
    let (Some(Ok(client)), Some(Ok(upstream))) = (client.plain_fd(), upstream.plain_fd()) else {
        return false; // a TLS leg: its state cannot cross
    };
    let Ok(image) = serde_json::to_value(Image {
        node: node.to_owned(),
    }) else {
        return false;
    };
    port()
        .offer(
            listener.to_owned(),
            Handed::BothLegs,
            image,
            vec![client, upstream],
        )
        .await
}

async fn pump_if<R, W>(
    run: bool,
    from: &mut R,
    to: &mut W,
    bytes: &Counter,
    pause: watch::Receiver<bool>,
) -> io::Result<Pumped>
where
    R: AsyncRead + Unpin + Plain,
    W: AsyncWrite + Unpin + Plain,
{
    match run {
        true => pump(from, to, bytes, pause).await,
        false => Ok(Pumped::Ended),
    }
}

/// Copies one direction until EOF, then passes the half-close on; or, once `pause` turns
/// true, stops before its next read. An idle session should cost little (a sidecar holds
/// thousands), so reads start in a small buffer inside the task and go to bulk mode (a pipe,
/// or a large buffer) only once a read fills the small one, and back once a read would have
/// fit the small one.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    bytes: &Counter,
    mut pause: watch::Receiver<bool>,
) -> io::Result<Pumped>
where
    R: AsyncRead + Unpin + Plain,
    W: AsyncWrite + Unpin + Plain,
{
    let mut small = [0u8; SMALL_BUFFER];
    let mut bulk = Bulk::Idle;
    loop {
        // A read cancelled here has taken nothing from the socket.
        let read = async {
            match &mut bulk {
                Bulk::Idle => from.read(&mut small).await,
                Bulk::Copied(large) => from.read(large).await,
                Bulk::Spliced(pipe) => pipe.fill(from.plain().expect("a plain leg")).await,
            }
        };
        let n = tokio::select! {
            biased;
            _ = pause.wait_for(|paused| *paused) => return Ok(Pumped::Paused),
            n = read => n?,
        };
        if n == 0 {
            to.shutdown().await?;
            return Ok(Pumped::Ended);
        }
        match &mut bulk {
            Bulk::Idle => to.write_all(&small[..n]).await?,
            Bulk::Copied(large) => to.write_all(&large[..n]).await?,
            Bulk::Spliced(pipe) => pipe.drain(to.plain().expect("a plain leg")).await?,
        }
        match bulk {
            Bulk::Idle if n == SMALL_BUFFER => bulk = Bulk::start(from, to),
            // The bulk is over: an idle session holds no large buffer and no pipe.
            Bulk::Copied(_) | Bulk::Spliced(_) if n < SMALL_BUFFER => bulk = Bulk::Idle,
            _ => {}
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

    impl Plain for tokio::io::DuplexStream {
        fn plain(&self) -> Option<&TcpStream> {
            None
        }
    }

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
            let (_pause, paused) = watch::channel(false);
            pump(&mut source, &mut sink_peer, &counter, paused)
                .await
                .unwrap();
            writer.await.unwrap();
            drop(sink_peer);
            assert_eq!(reader.await.unwrap(), payload[..size], "{size} bytes");
        }
    }

    /// Two connected plain streams on loopback, split as a session splits them.
    async fn pair() -> (Stream, Stream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (connected.unwrap().into(), accepted.unwrap().0.into())
    }

    #[tokio::test]
    async fn between_plain_sockets_bulk_is_spliced_and_chatter_after_it_still_arrives() {
        let (mut source, from) = pair().await;
        let (to, mut sink) = pair().await;
        let (mut from, _) = from.into_split();
        let (_, mut to) = to.into_split();
        let bulk: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = [b"hello".to_vec(), bulk, b"bye".to_vec()];
        let expected = sent.concat();
        let writer = tokio::spawn(async move {
            for part in sent {
                source.write_all(&part).await.unwrap();
                // Apart in time, so that the chatter after the bulk takes small reads again.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            source.shutdown().await.unwrap();
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            sink.read_to_end(&mut got).await.unwrap();
            got
        });
        assert!(from.plain().is_some() && to.plain().is_some());
        let (_pause, paused) = watch::channel(false);
        let ended = pump(&mut from, &mut to, &metrics::Counter::noop(), paused).await;
        assert!(matches!(ended, Ok(Pumped::Ended)));
        writer.await.unwrap();
        drop(to);
        assert!(reader.await.unwrap() == expected, "the bytes differ");
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn a_session_written_at_format_1_reads_back() {
        let fixture = include_str!("../../tests/fixtures/takeover/format-1-tcp.json");
        let image: Image = serde_json::from_str(fixture).expect("format 1 reads");
        assert_eq!(image.node, "r3");
    }
}
