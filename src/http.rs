//! tether's one HTTP client: just enough HTTP/1.1 to ask for JSON (RabbitMQ's management API
//! for discovery, a running tether's admin listener for `tether status` and `tether reload`,
//! tests and benchmarks): one request per connection (`Connection: close`), bodies framed by
//! `Content-Length`, `chunked` or EOF, every read capped and the whole exchange under one
//! deadline. A hand-written client keeps hyper's client half and its connection pool out of the
//! build for a few requests every few seconds.

use crate::address::Address;
use crate::tls::{Connector, HandshakeFailure, Stream};
use bytes::{Buf, BytesMut};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status line and headers together; cowboy sends well under 1 KiB.
const MAX_HEAD: usize = 64 * 1024;
/// A chunk-size line: hex digits and perhaps an extension we ignore.
const MAX_CHUNK_LINE: usize = 1024;
const READ_SIZE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot resolve {address}: {source}")]
    Resolve { address: String, source: io::Error },
    #[error("connect to {address} failed: {source}")]
    Connect { address: String, source: io::Error },
    #[error("no complete answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Tls(HandshakeFailure),
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
    #[error("response body larger than the {limit} bytes allowed")]
    TooLarge { limit: usize },
    #[error("connection closed before the response was complete")]
    Truncated,
}

pub struct Limits {
    /// For the whole exchange: resolve, connect, send, read the last byte.
    pub timeout: Duration,
    pub max_body: usize,
}

/// A request for `path` on the server at `address`, without a body.
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    pub address: &'a Address,
    pub path: &'a str,
    /// The `Authorization` header's value, if any; never logged.
    pub authorization: Option<&'a str>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn request(request: &Request<'_>, limits: &Limits) -> Result<Response, HttpError> {
    request_over(request, limits, None).await
}

/// [`request`] over TLS (`https://`) with `tls`, in plain TCP without.
pub async fn request_over(
    request: &Request<'_>,
    limits: &Limits,
    tls: Option<&Connector>,
) -> Result<Response, HttpError> {
    tokio::time::timeout(limits.timeout, exchange(request, limits.max_body, tls))
        .await
        .map_err(|_| HttpError::Timeout(limits.timeout))?
}

/// [`request`] for synchronous callers (`tether status`, tests, benchmarks): runs it on a
/// runtime of its own (on another thread if this one already runs a runtime, which must not
/// be blocked in).
pub fn request_blocking(request: &Request<'_>, limits: &Limits) -> Result<Response, HttpError> {
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(self::request(request, limits))
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(run)
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the request's thread panicked").into()))
    })
}

async fn exchange(
    request: &Request<'_>,
    max_body: usize,
    tls: Option<&Connector>,
) -> Result<Response, HttpError> {
    let tcp = connect(request.address).await?;
    let mut stream = match tls {
        Some(connector) => {
            connector
                .connect(request.address, tcp)
                .await
                .map_err(HttpError::Tls)?
                .stream
        }
        None => Stream::Plain(tcp),
    };
    let authorization = request
        .authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{authorization}Accept: application/json\r\nUser-Agent: tether/{version}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        method = request.method,
        path = request.path,
        host = request.address,
        version = env!("CARGO_PKG_VERSION"),
    );
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await?;
    read_response(&mut Incoming::new(stream), max_body).await
}

async fn connect(address: &Address) -> Result<TcpStream, HttpError> {
    let candidates = address
        .resolve()
        .await
        .map_err(|source| HttpError::Resolve {
            address: address.to_string(),
            source,
        })?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no addresses");
    for candidate in candidates {
        match TcpStream::connect(candidate).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(HttpError::Connect {
        address: address.to_string(),
        source: last,
    })
}

/// Fuzzing: reads one response from `bytes` as from a server, under the usual caps.
pub(crate) async fn read_response_from(
    bytes: &[u8],
    max_body: usize,
) -> Result<Response, HttpError> {
    let mut incoming = Incoming::new(bytes);
    read_response(&mut incoming, max_body).await
}

async fn read_response<S: AsyncRead + Unpin>(
    incoming: &mut Incoming<S>,
    max_body: usize,
) -> Result<Response, HttpError> {
    // Interim 1xx answers (100 Continue, 103 Early Hints) precede the real one.
    let head = loop {
        let head = read_head(incoming).await?;
        if !(100..200).contains(&head.status) {
            break head;
        }
    };
    let body = match head.framing {
        _ if head.status == 204 || head.status == 304 => Vec::new(),
        Framing::Chunked => read_chunked(incoming, max_body).await?,
        Framing::Length(length) => {
            if length > max_body as u64 {
                return Err(HttpError::TooLarge { limit: max_body });
            }
            // Checked against the cap just above, so it fits in usize.
            incoming.take(length as usize).await?
        }
        Framing::UntilClose => incoming.take_to_end(max_body).await?,
    };
    Ok(Response {
        status: head.status,
        reason: head.reason,
        body,
    })
}

enum Framing {
    Chunked,
    Length(u64),
    UntilClose,
}

struct Head {
    status: u16,
    reason: String,
    framing: Framing,
}

async fn read_head<S: AsyncRead + Unpin>(incoming: &mut Incoming<S>) -> Result<Head, HttpError> {
    let mut budget = MAX_HEAD;
    let status_line = incoming.line(&mut budget).await?;
    let status_line = std::str::from_utf8(&status_line)
        .map_err(|_| HttpError::Malformed("status line is not UTF-8"))?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(HttpError::Malformed("not an HTTP/1.x status line"));
    }
    let status = parts
        .next()
        .filter(|code| code.len() == 3)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or(HttpError::Malformed("bad status code"))?;
    let reason = parts.next().unwrap_or_default().trim().to_string();

    let mut chunked = false;
    let mut length: Option<u64> = None;
    loop {
        let line = incoming.line(&mut budget).await?;
        if line.is_empty() {
            break;
        }
        let line = String::from_utf8_lossy(&line);
        let (name, value) = line
            .split_once(':')
            .ok_or(HttpError::Malformed("header line without a colon"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding frames the body (RFC 9112 §6.3).
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            let parsed: u64 = value
                .parse()
                .map_err(|_| HttpError::Malformed("bad Content-Length"))?;
            if length.is_some_and(|known| known != parsed) {
                return Err(HttpError::Malformed("conflicting Content-Length headers"));
            }
            length = Some(parsed);
        }
    }
    let framing = match (chunked, length) {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
        (true, _) => Framing::Chunked,
        (false, Some(length)) => Framing::Length(length),
        (false, None) => Framing::UntilClose,
    };
    Ok(Head {
        status,
        reason,
        framing,
    })
}

async fn read_chunked<S: AsyncRead + Unpin>(
    incoming: &mut Incoming<S>,
    max_body: usize,
) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let mut budget = MAX_CHUNK_LINE;
        let line = incoming.line(&mut budget).await?;
        let digits = line[..].split(|&b| b == b';').next().unwrap_or_default();
        let digits = std::str::from_utf8(digits)
            .map_err(|_| HttpError::Malformed("bad chunk size"))?
            .trim();
        let size =
            u64::from_str_radix(digits, 16).map_err(|_| HttpError::Malformed("bad chunk size"))?;
        if size == 0 {
            break;
        }
        if size > (max_body - body.len()) as u64 {
            return Err(HttpError::TooLarge { limit: max_body });
        }
        // Below the remaining cap, so it fits in usize.
        body.extend_from_slice(&incoming.take(size as usize).await?);
        let mut budget = 2;
        if !incoming.line(&mut budget).await?.is_empty() {
            return Err(HttpError::Malformed("chunk longer than its size"));
        }
    }
    // Trailers: read and ignored, up to the blank line that ends the message.
    let mut budget = MAX_HEAD;
    while !incoming.line(&mut budget).await?.is_empty() {}
    Ok(body)
}

/// Bytes read from the server and not yet consumed.
struct Incoming<S> {
    io: S,
    buf: BytesMut,
}

impl<S: AsyncRead + Unpin> Incoming<S> {
    fn new(io: S) -> Self {
        Incoming {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
        }
    }

    /// Reads more; false at EOF.
    async fn fill(&mut self) -> io::Result<bool> {
        self.buf.reserve(READ_SIZE);
        Ok(self.io.read_buf(&mut self.buf).await? > 0)
    }

    /// The next line without its line end, spending its length from `budget` so that a
    /// server sending endless headers is cut off.
    async fn line(&mut self, budget: &mut usize) -> Result<BytesMut, HttpError> {
        let mut scanned = 0;
        loop {
            if let Some(at) = memchr::memchr(b'\n', &self.buf[scanned..]) {
                let end = scanned + at;
                if end + 1 > *budget {
                    return Err(HttpError::Malformed("header or chunk line too long"));
                }
                *budget -= end + 1;
                let mut line = self.buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                return Ok(line);
            }
            scanned = self.buf.len();
            if scanned >= *budget {
                return Err(HttpError::Malformed("header or chunk line too long"));
            }
            if !self.fill().await? {
                return Err(HttpError::Truncated);
            }
        }
    }

    /// Exactly `n` bytes; the caller has checked `n` against its cap.
    async fn take(&mut self, n: usize) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.buf.is_empty() && !self.fill().await? {
                return Err(HttpError::Truncated);
            }
            let step = self.buf.len().min(n - out.len());
            out.extend_from_slice(&self.buf[..step]);
            self.buf.advance(step);
        }
        Ok(out)
    }

    /// Everything up to EOF, refused once it passes `max`.
    async fn take_to_end(&mut self, max: usize) -> Result<Vec<u8>, HttpError> {
        loop {
            if self.buf.len() > max {
                return Err(HttpError::TooLarge { limit: max });
            }
            if !self.fill().await? {
                return Ok(self.buf.split().to_vec());
            }
        }
    }
}

/// `Authorization: Basic` for `user:password` (RFC 7617), base64 by hand to keep the
/// dependency list short.
pub fn basic_authorization(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let mut out = String::from("Basic ");
    for group in input.as_bytes().chunks(3) {
        let bytes = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let bits = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(bits >> (18 - 6 * i) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const LIMITS: Limits = Limits {
        timeout: Duration::from_secs(5),
        max_body: 1024,
    };

    /// Serves `response` verbatim to every connection, then closes it.
    async fn serve(response: &'static [u8]) -> Address {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = Address::Ip(listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(response).await;
                });
            }
        });
        address
    }

    async fn fetch(address: &Address, limits: &Limits) -> Result<Response, HttpError> {
        request(
            &Request {
                method: "GET",
                address,
                path: "/api/nodes",
                authorization: Some("Basic Z3Vlc3Q6Z3Vlc3Q="),
            },
            limits,
        )
        .await
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        assert_eq!(
            basic_authorization("guest", "guest"),
            "Basic Z3Vlc3Q6Z3Vlc3Q="
        );
        // "Aladdin:open sesame" is RFC 7617's own example.
        assert_eq!(
            basic_authorization("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(basic_authorization("a", ""), "Basic YTo=");
        assert_eq!(basic_authorization("ab", ""), "Basic YWI6");
    }

    #[tokio::test]
    async fn reads_a_content_length_body_without_waiting_for_close() {
        // The body is followed by junk the server would never send: reading stops at the length.
        let address = serve(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: application/json\r\n\r\n[1,2]garbage",
        )
        .await;
        let response = fetch(&address, &LIMITS).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"[1,2]");
    }

    #[tokio::test]
    async fn reads_a_chunked_body_with_extensions_and_trailers() {
        let address = serve(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 999\r\n\r\n4;ext=1\r\n[{\"a\r\nA\r\n\":1},{\"b\":\r\n2\r\n2}\r\n1\r\n]\r\n0\r\nx-trailer: yes\r\n\r\n",
        )
        .await;
        let response = fetch(&address, &LIMITS).await.unwrap();
        assert_eq!(
            String::from_utf8(response.body).unwrap(),
            r#"[{"a":1},{"b":2}]"#
        );
    }

    #[tokio::test]
    async fn reads_until_close_without_framing_and_skips_interim_answers() {
        let address = serve(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\n{}").await;
        let response = fetch(&address, &LIMITS).await.unwrap();
        assert_eq!(
            (response.status, response.body.as_slice()),
            (200, &b"{}"[..])
        );
    }

    #[tokio::test]
    async fn refuses_bodies_over_the_cap_however_framed() {
        let announced = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n").await;
        let big_chunk =
            serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n").await;
        let unframed: &'static [u8] = {
            let mut bytes = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
            bytes.resize(bytes.len() + 1025, b' ');
            bytes.leak()
        };
        let unframed = serve(unframed).await;
        for address in [announced, big_chunk, unframed] {
            let error = fetch(&address, &LIMITS).await.unwrap_err();
            assert!(
                matches!(error, HttpError::TooLarge { limit: 1024 }),
                "{address}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn reports_a_truncated_body_and_garbage() {
        let short = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n[1,").await;
        let error = fetch(&short, &LIMITS).await.unwrap_err();
        assert!(matches!(error, HttpError::Truncated), "{error}");

        let garbage = serve(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
        let error = fetch(&garbage, &LIMITS).await.unwrap_err();
        assert!(matches!(error, HttpError::Malformed(_)), "{error}");

        let endless: &'static [u8] = {
            let mut bytes = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
            bytes.resize(bytes.len() + MAX_HEAD, b'a');
            bytes.leak()
        };
        let endless = serve(endless).await;
        let error = fetch(&endless, &LIMITS).await.unwrap_err();
        assert!(matches!(error, HttpError::Malformed(_)), "{error}");
    }

    #[tokio::test]
    async fn gives_up_on_a_silent_server_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = Address::Ip(listener.local_addr().unwrap());
        let limits = Limits {
            timeout: Duration::from_millis(100),
            max_body: 1024,
        };
        // Accepted by the kernel's backlog, never answered.
        let error = fetch(&address, &limits).await.unwrap_err();
        assert!(matches!(error, HttpError::Timeout(_)), "{error}");
        assert_eq!(error.to_string(), "no complete answer within 100ms");
        drop(listener);
    }

    #[tokio::test]
    async fn names_the_address_that_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = Address::Ip(listener.local_addr().unwrap());
        drop(listener);
        let error = fetch(&address, &LIMITS).await.unwrap_err();
        assert!(matches!(error, HttpError::Connect { .. }), "{error}");
        assert!(error.to_string().contains(&address.to_string()), "{error}");
    }
}
