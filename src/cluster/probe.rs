//! Active health probes at the protocol level. A TCP connect alone proves little: a hung broker
//! (SIGSTOP) still has the kernel accept its connections. So each probe waits for the broker
//! itself to speak.

use crate::address::Address;
use crate::cluster::connect::{DialError, dial};
use crate::proto::{amqp, openwire, stomp};
use crate::tls::{Connector, HandshakeFailure, Stream};
use bytes::BytesMut;
use futures_util::StreamExt;
use std::fmt;
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Encoder, FramedRead};

/// How an endpoint is checked, chosen by the endpoint's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// Send the AMQP 0-9-1 protocol header, read connection.start.
    Amqp,
    /// Send CONNECT; CONNECTED or ERROR both prove the broker alive.
    Stomp,
    /// Read the WireFormatInfo an ActiveMQ broker sends as soon as the socket opens.
    OpenWire,
    /// Connect only.
    Tcp,
}

impl CheckKind {
    pub fn for_endpoint(endpoint: &str) -> CheckKind {
        match endpoint {
            "amqp" | "amqps" => CheckKind::Amqp,
            "stomp" | "stomps" => CheckKind::Stomp,
            "openwire" => CheckKind::OpenWire,
            _ => CheckKind::Tcp,
        }
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckKind::Amqp => "amqp",
            CheckKind::Stomp => "stomp",
            CheckKind::OpenWire => "openwire",
            CheckKind::Tcp => "tcp",
        })
    }
}

/// Why a probe failed, in words for the log and `/status`.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("{0}")]
    Tls(HandshakeFailure),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("broker closed the connection before answering")]
    Closed,
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// A connection.start is well under a kilobyte; anything near this is not one.
const MAX_PROBE_REPLY: usize = 64 * 1024;

/// Runs one probe, over TLS with `tls`. The caller bounds it with the health timeout.
pub async fn probe(
    kind: CheckKind,
    address: &Address,
    tls: Option<&Connector>,
) -> Result<(), ProbeError> {
    let mut stream = match dial(address, tls).await {
        Ok(dialled) => dialled.stream,
        Err(DialError::Io(e)) => return Err(ProbeError::Connect(e)),
        Err(DialError::Tls(failure)) => return Err(ProbeError::Tls(failure)),
    };
    stream.tcp().set_nodelay(true).ok();
    let outcome = match kind {
        CheckKind::Tcp => Ok(()),
        CheckKind::Amqp => probe_amqp(&mut stream).await,
        CheckKind::Stomp => probe_stomp(&mut stream).await,
        CheckKind::OpenWire => probe_openwire(&mut stream).await,
    };
    if stream.is_tls() {
        outcome.map_err(after_handshake)
    } else {
        outcome
    }
}

/// In TLS 1.3 a server checks the client's certificate after the client has finished its side
/// of the handshake, so a broker that refuses tether's certificate is seen only as a
/// connection closed before it said anything: say what that most likely means.
fn after_handshake(error: ProbeError) -> ProbeError {
    if let ProbeError::Io(e) = &error
        && e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
    {
        // The broker's alert made it through: it says why.
        return ProbeError::Tls(HandshakeFailure::classify(e));
    }
    let dropped = match &error {
        ProbeError::Closed => true,
        ProbeError::Io(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
        ),
        _ => false,
    };
    if !dropped {
        return error;
    }
    ProbeError::Tls(HandshakeFailure::Refused(format!(
        "closed the connection right after the TLS handshake ({error}): does it refuse tether's client certificate?"
    )))
}

async fn probe_amqp(stream: &mut Stream) -> Result<(), ProbeError> {
    stream.write_all(&amqp::PROTOCOL_HEADER).await?;
    stream.flush().await?;
    let mut header = [0u8; amqp::FRAME_HEADER_SIZE];
    read_exact_or_closed(stream, &mut header).await?;
    if header.starts_with(&amqp::PROTOCOL_HEADER[..4]) {
        return Err(ProbeError::Unexpected(
            "broker refused AMQP 0-9-1 and offered another protocol version".into(),
        ));
    }
    let (frame_type, channel) = (header[0], u16::from_be_bytes([header[1], header[2]]));
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    if frame_type != amqp::FrameType::Method.wire_value()
        || channel != 0
        || !(4..MAX_PROBE_REPLY).contains(&size)
    {
        return Err(ProbeError::Unexpected(format!(
            "frame type {frame_type} on channel {channel} of {size} bytes instead of connection.start"
        )));
    }
    let mut method = [0u8; 4];
    read_exact_or_closed(stream, &mut method).await?;
    match amqp::method::class_method(&method) {
        Some(amqp::id::CONNECTION_START) => Ok(()),
        other => Err(ProbeError::Unexpected(format!(
            "{} instead of connection.start",
            other.map_or("no method".into(), |m| amqp::id::MethodName(m).to_string())
        ))),
    }
}

async fn probe_stomp(stream: &mut Stream) -> Result<(), ProbeError> {
    let limits = stomp::Limits {
        max_frame_size: MAX_PROBE_REPLY,
        ..stomp::Limits::default()
    };
    let mut codec = stomp::StompCodec::with_limits(stomp::Version::V1_0, limits);
    let connect = stomp::Frame::new(stomp::Command::Connect)
        .with_header("accept-version", "1.0,1.1,1.2")
        .with_header("host", "/")
        .with_header("heart-beat", "0,0");
    let mut out = BytesMut::new();
    codec
        .encode(&connect, &mut out)
        .map_err(|e| ProbeError::Unexpected(format!("cannot encode CONNECT: {e}")))?;
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut replies = FramedRead::new(&mut *stream, codec);
    let reply = loop {
        match replies.next().await {
            None => return Err(ProbeError::Closed),
            Some(Err(stomp::StompError::Io(e))) => return Err(e.into()),
            Some(Err(e)) => return Err(ProbeError::Unexpected(format!("not STOMP: {e}"))),
            // Heart-beat end-of-lines may come before the frame.
            Some(Ok(stomp::Incoming::Heartbeat)) => continue,
            Some(Ok(stomp::Incoming::Frame(frame))) => break frame,
        }
    };
    match reply.command {
        stomp::Command::Connected => {
            // Leave politely so the broker does not log an abrupt close.
            let mut codec = replies.into_parts().codec;
            out.clear();
            if codec
                .encode(stomp::Frame::new(stomp::Command::Disconnect), &mut out)
                .is_ok()
            {
                let _ = stream.write_all(&out).await;
                let _ = stream.flush().await;
            }
            Ok(())
        }
        stomp::Command::Error => Ok(()),
        other => Err(ProbeError::Unexpected(format!(
            "{other} instead of CONNECTED or ERROR"
        ))),
    }
}

async fn probe_openwire(stream: &mut Stream) -> Result<(), ProbeError> {
    let mut header = [0u8; 5];
    read_exact_or_closed(stream, &mut header).await?;
    let size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if header[4] != openwire::kind::WIRE_FORMAT_INFO || size as usize > MAX_PROBE_REPLY {
        return Err(ProbeError::Unexpected(format!(
            "OpenWire command type {} of {size} bytes instead of WireFormatInfo",
            header[4]
        )));
    }
    Ok(())
}

async fn read_exact_or_closed(stream: &mut Stream, buf: &mut [u8]) -> Result<(), ProbeError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ProbeError::Closed),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A fake broker that answers each connection with `reply` after reading `expect` bytes.
    async fn fake(reply: &'static [u8], expect: usize) -> Address {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; expect];
                    if socket.read_exact(&mut buf).await.is_ok() {
                        let _ = socket.write_all(reply).await;
                    }
                    // Hold the socket open a little so the probe sees data, not EOF.
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                });
            }
        });
        Address::Ip(addr)
    }

    #[tokio::test]
    async fn amqp_probe_accepts_connection_start_only() {
        let start = b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x0a\xce";
        let addr = fake(start, 8).await;
        probe(CheckKind::Amqp, &addr, None).await.unwrap();

        let tune = b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x1e\xce";
        let addr = fake(tune, 8).await;
        assert!(matches!(
            probe(CheckKind::Amqp, &addr, None).await,
            Err(ProbeError::Unexpected(_))
        ));

        let addr = fake(b"AMQP\x00\x00\x09\x01", 8).await;
        assert!(probe(CheckKind::Amqp, &addr, None).await.is_err());
    }

    #[tokio::test]
    async fn stomp_probe_takes_connected_or_error() {
        let addr = fake(b"\n\nCONNECTED\nversion:1.2\n\n\0", 10).await;
        probe(CheckKind::Stomp, &addr, None).await.unwrap();
        let addr = fake(b"ERROR\nmessage:Access refused\n\n\0", 10).await;
        probe(CheckKind::Stomp, &addr, None).await.unwrap();
        let addr = fake(b"HTTP/1.1 400 Bad Request\r\n\r\n", 10).await;
        assert!(probe(CheckKind::Stomp, &addr, None).await.is_err());
    }

    #[tokio::test]
    async fn refused_connect_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Address::Ip(listener.local_addr().unwrap());
        drop(listener);
        assert!(matches!(
            probe(CheckKind::Tcp, &addr, None).await,
            Err(ProbeError::Connect(_))
        ));
    }

    #[tokio::test]
    async fn a_silent_broker_never_passes() {
        // Accepts but never answers, as a SIGSTOPped broker does.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Address::Ip(listener.local_addr().unwrap());
        let outcome = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            probe(CheckKind::Amqp, &addr, None),
        )
        .await;
        assert!(
            outcome.is_err(),
            "the probe must wait for the broker to speak"
        );
        drop(listener);
    }
}
