//! Shared by the integration tests: the bundled broker lab, a tether process, and small
//! readers for what tether exposes. Each test binary uses only part of it.
#![allow(dead_code)]

pub mod clients;
pub mod config;
pub mod faults;
pub mod front;
pub mod lab;
pub mod pki;
pub mod prom;
pub mod suite;
pub mod tally;
pub mod tether;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A port free at the time of asking, for a tether listener of a test. It comes from
/// 21000-24999, below the kernel's ephemeral range (32768-60999) and clear of the lab's ports:
/// a port the kernel handed out (`bind` to port 0) could be given again as the source port of
/// some client's outgoing connection before tether binds it, which failed a CI run with
/// "Address already in use". Ports here are only ever taken by a `bind` that names them.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 21000;
    const COUNT: u16 = 4000;
    // Each test binary starts at its own place in the range so that a port a binary before it
    // left in TIME_WAIT is not the first one asked for.
    static NEXT: AtomicU16 = AtomicU16::new(u16::MAX);
    let _ = NEXT.compare_exchange(
        u16::MAX,
        (std::process::id() % u32::from(COUNT)) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..COUNT {
        let port = FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % COUNT;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on loopback in {FIRST}-{}", FIRST + COUNT - 1)
}

/// A GET with tether's own HTTP client; returns the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let address = ::tether::address::Address::Ip(addr);
    let request = ::tether::http::Request {
        method: "GET",
        address: &address,
        path,
        authorization: None,
    };
    let limits = ::tether::http::Limits {
        timeout: Duration::from_secs(10),
        max_body: 64 << 20,
    };
    let response =
        ::tether::http::request_blocking(&request, &limits).map_err(std::io::Error::other)?;
    Ok((response.status, response.text()))
}

/// Polls `probe` until it returns `Some`, for at most `limit`. The limits tests pass are
/// generous bounds on things that normally take a fraction of them; each call site says why.
pub fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("gave up after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
