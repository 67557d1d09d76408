//! Bulk transfer between two plain sockets through a kernel pipe (splice(2)): the bytes go
//! from one socket's receive queue to the other's send queue without being copied into
//! tether's memory and out again. A tcp session's bulk transfers (see [`crate::session::tcp`])
//! take this path when neither leg is TLS; it costs a pipe (two descriptors) only while the
//! bulk lasts.

use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
use std::io;
use std::os::fd::OwnedFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// What one fill moves at most: the pipe's capacity.
pub const CAPACITY: usize = 256 * 1024;

/// A pipe between two sockets, and how many bytes it holds.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    held: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // A larger pipe takes more per system call; the default (16 pages) is kept where the
        // system's pipe limits refuse.
        let _ = fcntl_setpipe_size(&write, CAPACITY);
        Ok(Pipe {
            read,
            write,
            held: 0,
        })
    }

    /// Moves what `from` has received into the pipe, waiting until there is something:
    /// the count, or 0 at the end of the stream. Call it only with the pipe empty (after
    /// [`Pipe::drain`]): a full pipe would look like a socket with nothing to read. Cancel
    /// safe: nothing is taken from the socket unless the count is returned.
    pub async fn fill(&mut self, from: &TcpStream) -> io::Result<usize> {
        debug_assert_eq!(self.held, 0, "fill only an empty pipe");
        loop {
            from.readable().await?;
            let moved = from.try_io(Interest::READABLE, || {
                Ok(splice(
                    from,
                    None,
                    &self.write,
                    None,
                    CAPACITY,
                    SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
                )?)
            });
            match moved {
                Ok(n) => {
                    self.held += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves everything the pipe holds into `to`, waiting while its send queue is full.
    pub async fn drain(&mut self, to: &TcpStream) -> io::Result<()> {
        while self.held > 0 {
            to.writable().await?;
            let moved = to.try_io(Interest::WRITABLE, || {
                Ok(splice(
                    &self.read,
                    None,
                    to,
                    None,
                    self.held,
                    SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
                )?)
            });
            match moved {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.held -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected sockets on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (connected.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_cross_whole_and_in_order_and_the_end_is_seen() {
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut source, from) = pair().await;
        let (to, mut sink) = pair().await;
        let data = payload.clone();
        let writer = tokio::spawn(async move {
            source.write_all(&data).await.unwrap();
            source.shutdown().await.unwrap();
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            sink.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut pipe = Pipe::new().unwrap();
        let mut moved = 0;
        loop {
            let n = pipe.fill(&from).await.unwrap();
            if n == 0 {
                break;
            }
            pipe.drain(&to).await.unwrap();
            moved += n;
        }
        drop(to);
        writer.await.unwrap();
        assert_eq!(moved, payload.len());
        assert!(reader.await.unwrap() == payload, "the bytes differ");
    }
}
