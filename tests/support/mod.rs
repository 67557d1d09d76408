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
pub mod tether;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A port free at the time of asking, for a tether listener of a test.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
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
