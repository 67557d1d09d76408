//! Idle AMQP connections for scenario f, opened by hand: lapin holds about 2.4 MB per
//! connection in this process (its buffers and tasks), so 9,500 of them took 23 GB and the
//! machine's OOM killer ended the benchmark. Each connection here is a socket that has done the
//! handshake (PLAIN guest/guest, vhost `/`, no heart-beats) and is then left alone.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens `count` AMQP connections to `target`, one after another, and keeps them.
pub async fn hold_idle(target: SocketAddr, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(count);
    for n in 0..count {
        let connection = open(target)
            .await
            .with_context(|| format!("idle AMQP connection {n} to {target}"))?;
        held.push(connection);
    }
    Ok(held)
}

pub async fn open(target: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(target).await?;
    stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
    expect(&mut stream, (10, 10)).await?; // connection.start
    let mut start_ok = method(10, 11);
    start_ok.extend_from_slice(&0u32.to_be_bytes()); // client properties: none
    short_string(&mut start_ok, "PLAIN");
    long_string(&mut start_ok, b"\0guest\0guest");
    short_string(&mut start_ok, "en_US");
    stream.write_all(&frame(&start_ok)).await?;
    expect(&mut stream, (10, 30)).await?; // connection.tune
    let mut tune_ok = method(10, 31);
    tune_ok.extend_from_slice(&2047u16.to_be_bytes());
    tune_ok.extend_from_slice(&131_072u32.to_be_bytes());
    tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heart-beats: the connection stays idle
    let mut open = method(10, 40);
    short_string(&mut open, "/");
    short_string(&mut open, "");
    open.push(0);
    stream
        .write_all(&[frame(&tune_ok), frame(&open)].concat())
        .await?;
    expect(&mut stream, (10, 41)).await?; // connection.open-ok
    Ok(stream)
}

pub fn method(class: u16, id: u16) -> Vec<u8> {
    [class.to_be_bytes(), id.to_be_bytes()].concat()
}

pub fn short_string(out: &mut Vec<u8>, text: &str) {
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

fn long_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A method frame on channel 0.
fn frame(payload: &[u8]) -> Vec<u8> {
    frame_on(1, 0, payload)
}

/// A frame of `kind` (1 method, 2 content header, 3 body) on `channel`.
pub fn frame_on(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(0xCE);
    out
}

/// Reads frames until the method `(class, id)` on channel 0; a connection.close is an error.
pub async fn expect(stream: &mut TcpStream, wanted: (u16, u16)) -> anyhow::Result<()> {
    loop {
        let mut header = [0u8; 7];
        stream.read_exact(&mut header).await?;
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        if size > 1 << 20 {
            bail!("a frame of {size} bytes");
        }
        let mut payload = vec![0u8; size + 1];
        stream.read_exact(&mut payload).await?;
        if header[0] != 1 || size < 4 {
            continue;
        }
        let class = u16::from_be_bytes([payload[0], payload[1]]);
        let id = u16::from_be_bytes([payload[2], payload[3]]);
        if (class, id) == wanted {
            return Ok(());
        }
        if (class, id) == (10, 50) {
            bail!(
                "the server closed the connection: {:?}",
                String::from_utf8_lossy(&payload)
            );
        }
    }
}
