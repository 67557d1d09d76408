//! One stream type for both kinds of connection, so that sessions, probes and discovery need
//! not care whether a leg is encrypted. A plain stream splits into tokio's owned TCP halves
//! (no lock, as before TLS existed); a TLS stream splits through `tokio::io::split`, because
//! both directions share one TLS state.
//!
//! A TLS write may take the bytes and keep some of the records it made in its buffer when the
//! socket is full; they reach the socket only on a later write or a flush. A session that
//! waits for an answer after its last write would wait for ever, so [`WriteHalf::unflushed`]
//! says when a flush is owed, and the sessions' writers count it as pending output.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsStream;

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls {
        half: tokio::io::WriteHalf<TlsStream<TcpStream>>,
        /// Records written into the TLS buffer since the last complete flush.
        unflushed: bool,
    },
}

impl Stream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(stream) => stream,
            Stream::Tls(stream) => stream.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(stream) => {
                let (read, write) = stream.into_split();
                (ReadHalf::Plain(read), WriteHalf::Plain(write))
            }
            Stream::Tls(stream) => {
                let (read, write) = tokio::io::split(*stream);
                (
                    ReadHalf::Tls(read),
                    WriteHalf::Tls {
                        half: write,
                        unflushed: false,
                    },
                )
            }
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(stream: TcpStream) -> Stream {
        Stream::Plain(stream)
    }
}

/// Forwards each poll to whichever variant `$value` is.
macro_rules! either {
    ($value:expr, $inner:ident => $body:expr) => {
        match $value {
            Self::Plain($inner) => $body,
            Self::Tls($inner) => $body,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        either!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        either!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        either!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        either!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        either!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

impl ReadHalf {
    /// The socket, when nothing stands between it and the bytes (no TLS): bulk transfers may
    /// then splice (see [`crate::session::splice`]).
    pub fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            ReadHalf::Plain(half) => Some(half.as_ref()),
            ReadHalf::Tls(_) => None,
        }
    }

    /// A duplicate of the socket's descriptor, for a hand-over to another process; `None` for
    /// TLS, whose session state cannot cross.
    pub fn plain_fd(&self) -> Option<std::io::Result<std::os::fd::OwnedFd>> {
        use std::os::fd::AsFd;
        match self {
            ReadHalf::Plain(half) => {
                let stream: &TcpStream = half.as_ref();
                Some(stream.as_fd().try_clone_to_owned())
            }
            ReadHalf::Tls(_) => None,
        }
    }
}

/// A connection a process handed over: its descriptor becomes a plain stream again.
pub fn adopt(fd: std::os::fd::OwnedFd) -> std::io::Result<Stream> {
    let stream = std::net::TcpStream::from(fd);
    stream.set_nonblocking(true)?;
    Ok(Stream::Plain(TcpStream::from_std(stream)?))
}

impl WriteHalf {
    /// The socket, when nothing stands between it and the bytes (see [`ReadHalf::plain_tcp`]).
    pub fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            WriteHalf::Plain(half) => Some(half.as_ref()),
            WriteHalf::Tls { .. } => None,
        }
    }

    /// Drops the half without shutting the socket's writing down (which tokio does when a
    /// plain write half is dropped, and which would end the connection for the process that
    /// took it over): only this process's descriptor closes, with the read half.
    pub fn forget(self) {
        if let WriteHalf::Plain(half) = self {
            half.forget();
        }
    }

    /// Whether bytes already taken by a write still wait in the TLS buffer for a flush.
    pub fn unflushed(&self) -> bool {
        matches!(
            self,
            WriteHalf::Tls {
                unflushed: true,
                ..
            }
        )
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(half) => Pin::new(half).poll_write(cx, buf),
            WriteHalf::Tls { half, unflushed } => {
                let written = ready!(Pin::new(half).poll_write(cx, buf));
                *unflushed |= matches!(written, Ok(n) if n > 0);
                Poll::Ready(written)
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(half) => Pin::new(half).poll_write_vectored(cx, bufs),
            WriteHalf::Tls { half, unflushed } => {
                let written = ready!(Pin::new(half).poll_write_vectored(cx, bufs));
                *unflushed |= matches!(written, Ok(n) if n > 0);
                Poll::Ready(written)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Plain(half) => half.is_write_vectored(),
            WriteHalf::Tls { half, .. } => half.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(half) => Pin::new(half).poll_flush(cx),
            WriteHalf::Tls { half, unflushed } => {
                ready!(Pin::new(half).poll_flush(cx))?;
                *unflushed = false;
                Poll::Ready(Ok(()))
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(half) => Pin::new(half).poll_shutdown(cx),
            WriteHalf::Tls { half, unflushed } => {
                ready!(Pin::new(half).poll_shutdown(cx))?;
                *unflushed = false;
                Poll::Ready(Ok(()))
            }
        }
    }
}
