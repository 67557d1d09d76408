//! The takeover conversation's transport: messages on a Unix stream socket, each a header
//! (body length, number of file descriptors) sent with its descriptors attached
//! (SCM_RIGHTS), then a JSON body.
//!
//! Descriptors ride on the header alone, and the receiver reads exactly one header with
//! `recvmsg`, so they always arrive with the message they belong to: on a stream socket the
//! kernel attaches them to the first byte of the `sendmsg` that carried them, and never merges
//! that byte into a read with bytes sent before it.

use super::Message;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

const HEADER: usize = 8;
/// At most this many descriptors ride on one message (a session's two legs; every listener).
pub const MAX_FDS: usize = 64;
/// A session's state is bounded by its listener's `max_unconfirmed_bytes` (base64 adds a third).
const MAX_BODY: usize = 1 << 30;

/// Splits a connected socket into its sending and receiving ends.
pub fn split(stream: UnixStream) -> (Sender, Receiver) {
    let (read, write) = stream.into_split();
    (Sender { half: write }, Receiver { half: read })
}

pub struct Sender {
    half: OwnedWriteHalf,
}

pub struct Receiver {
    half: OwnedReadHalf,
}

impl Sender {
    /// Sends `message` with `fds` attached.
    pub async fn send(&mut self, message: &Message, fds: &[OwnedFd]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::other("too many descriptors for one message"));
        }
        let body = serde_json::to_vec(message).map_err(io::Error::other)?;
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&(body.len() as u32).to_be_bytes());
        header[4..].copy_from_slice(&(fds.len() as u32).to_be_bytes());
        let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        let socket: &UnixStream = self.half.as_ref();
        let sent = socket
            .async_io(Interest::WRITABLE, || {
                let mut space =
                    vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed))
                {
                    return Err(io::Error::other(
                        "descriptors do not fit the control buffer",
                    ));
                }
                let iov = [IoSlice::new(&header)];
                rustix::net::sendmsg(socket, &iov, &mut control, SendFlags::NOSIGNAL)
                    .map_err(io::Error::from)
            })
            .await?;
        // The descriptors went with the first byte; the rest of the header follows plainly.
        self.half.write_all(&header[sent..]).await?;
        self.half.write_all(&body).await?;
        self.half.flush().await
    }
}

impl Receiver {
    /// The next message and the descriptors that came with it; `None` when the peer closed.
    /// Not cancel-safe: read from one task.
    pub async fn recv(&mut self) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
        let mut header = [0u8; HEADER];
        let mut fds = Vec::new();
        let socket: &UnixStream = self.half.as_ref();
        let got = socket
            .async_io(Interest::READABLE, || {
                let mut space =
                    vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let mut iov = [IoSliceMut::new(&mut header)];
                let received =
                    rustix::net::recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
                        .map_err(io::Error::from)?;
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = message {
                        fds.extend(received);
                    }
                }
                Ok(received.bytes)
            })
            .await?;
        if got == 0 {
            return Ok(None);
        }
        self.half.read_exact(&mut header[got..]).await?;
        let length = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let count = u32::from_be_bytes(header[4..].try_into().expect("4 bytes")) as usize;
        if length > MAX_BODY {
            return Err(io::Error::other(format!(
                "a {length}-byte message is too big"
            )));
        }
        if count != fds.len() {
            return Err(io::Error::other(format!(
                "{} descriptors came with a message that announced {count}",
                fds.len()
            )));
        }
        let mut body = vec![0u8; length];
        self.half.read_exact(&mut body).await?;
        let message = serde_json::from_slice(&body)
            .map_err(|e| io::Error::other(format!("unreadable message: {e}")))?;
        Ok(Some((message, fds)))
    }
}
