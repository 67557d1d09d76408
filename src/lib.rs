//! tether: a sidecar in front of a message-broker cluster that sends every client session to a
//! live node and keeps it there.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, parsed and validated without binding anything.
//! - [`cluster`]: nodes and their endpoints, discovery sources merged into a topology, health
//!   checks, node choice, and connecting to a live node.
//! - [`listener`]: accepts client connections and starts a session for each.
//! - [`proto`]: wire codecs and constants of the protocols tether speaks (AMQP 0-9-1, STOMP,
//!   ActiveMQ's OpenWire for discovery): the only place protocol bytes are written.
//! - [`session`]: one task per client connection; the listener's protocol picks its type.
//! - [`admin`]: `/metrics`, `/healthz`, `/status`.
//! - [`http`]: the one HTTP client (discovery, `tether status`/`reload`, tests, benchmarks).
//! - [`rebalance`]: moves sessions so that every live node holds an even share.
//! - [`server`]: wires the above together and handles shutdown.
//! - [`status`]: `tether status`, the admin listener's `/status` rendered for a terminal, and
//!   the `/status` JSON model ([`status::model`]) the admin listener writes and it reads.
//! - [`budget`]: what all sessions hold together (sessions, unconfirmed bytes) and the caps
//!   reached.
//! - [`metrics`]: the Prometheus recorder and every metric's name and description.
//! - [`tls`]: TLS to the nodes and on listeners (rustls), and the stream type both kinds of
//!   connection share.

#![forbid(unsafe_code)]
#![warn(rust_2018_idioms)]

pub mod address;
pub mod admin;
pub mod backoff;
pub mod budget;
pub mod cluster;
pub mod config;
pub mod fuzz;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod proto;
pub mod rebalance;
pub mod server;
pub mod session;
pub mod status;
pub mod takeover;
pub mod tls;
