//! `[[listeners]]`: the keys every listener has ([`ListenerConfig`]) and those of its protocol
//! ([`ListenerKind`]). Each protocol's keys are a type of their own that takes no other key, so
//! a key of the wrong protocol is refused by the type, not by a hand-kept list, and the error
//! still names the key: `listeners[0].frame_max: does not apply to stomp listeners`.

use super::{ListenerTlsConfig, defaults, duration};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque forwarding: a node is chosen at connect time only.
    Tcp,
    /// STOMP 1.0-1.2, terminated on both legs so that a session can move to another node.
    Stomp,
    /// AMQP 0-9-1, terminated on both legs so that a session can move to another node.
    Amqp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Stomp => "stomp",
            Protocol::Amqp => "amqp",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub cluster: String,
    /// The node endpoint sessions go to; the protocol's name when absent.
    pub endpoint: Option<String>,
    /// Client connections served at once; further ones wait in the kernel's accept queue.
    pub max_sessions: usize,
    /// Applications connect over TLS.
    pub tls: Option<ListenerTlsConfig>,
    pub kind: ListenerKind,
}

/// A listener's protocol, with the keys that only it takes.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenerKind {
    Tcp,
    Stomp(StompKeys),
    Amqp(AmqpKeys),
}

/// Declares a session-keeping protocol's keys: those both protocols share, then its own.
macro_rules! session_keys {
    ($(#[$doc:meta])* $name:ident { $($own:tt)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// How long to keep looking for a live node after the session's node failed,
            /// before the client gets an error. Also bounds the first connect.
            #[serde(default, with = "duration::option")]
            pub failover_timeout: Option<Duration>,
            /// Heart-beat interval asked of the node; a node silent for three of them is dead.
            #[serde(default, with = "duration::option")]
            pub upstream_heartbeat: Option<Duration>,
            /// How long a node may take to answer the protocol handshake.
            #[serde(default, with = "duration::option")]
            pub upstream_handshake_timeout: Option<Duration>,
            /// How long a new client may take to send its handshake.
            #[serde(default, with = "duration::option")]
            pub client_handshake_timeout: Option<Duration>,
            /// Publishes kept until the node confirms them; past this, tether stops reading
            /// the client.
            pub max_unconfirmed: Option<usize>,
            /// The same bound in bytes.
            pub max_unconfirmed_bytes: Option<usize>,
            /// Deliveries awaiting the client's ack that tether tracks to recognise stale acks
            /// after a failover; past this, tether stops reading from the node.
            pub max_unacked: Option<usize>,
            /// Warm reuse of node connections for clients that connect per request.
            pub pool: Option<PoolKeys>,
            $($own)*
        }

        impl $name {
            /// The keys both protocols share.
            pub fn shared(&self) -> SharedKeys {
                SharedKeys {
                    failover_timeout: self.failover_timeout,
                    upstream_heartbeat: self.upstream_heartbeat,
                    upstream_handshake_timeout: self.upstream_handshake_timeout,
                    client_handshake_timeout: self.client_handshake_timeout,
                    max_unconfirmed: self.max_unconfirmed,
                    max_unconfirmed_bytes: self.max_unconfirmed_bytes,
                    max_unacked: self.max_unacked,
                    pool: self.pool,
                }
            }
        }
    };
}

/// The keys both session-keeping protocols take, as given.
#[derive(Debug, Clone, Copy, Default)]
pub struct SharedKeys {
    pub failover_timeout: Option<Duration>,
    pub upstream_heartbeat: Option<Duration>,
    pub upstream_handshake_timeout: Option<Duration>,
    pub client_handshake_timeout: Option<Duration>,
    pub max_unconfirmed: Option<usize>,
    pub max_unconfirmed_bytes: Option<usize>,
    pub max_unacked: Option<usize>,
    pub pool: Option<PoolKeys>,
}

session_keys!(
    /// A `stomp` listener's keys.
    StompKeys {
        /// The largest frame (headers and body) either peer may send.
        pub max_frame_size: Option<usize>,
        /// The most header lines in one frame.
        pub max_headers: Option<usize>,
        /// The longest header line.
        pub max_header_line: Option<usize>,
        /// The most subscriptions one session may hold.
        pub max_subscriptions: Option<usize>,
        /// The most transactions one session may have open.
        pub max_transactions: Option<usize>,
    }
);

session_keys!(
    /// An `amqp` listener's keys.
    AmqpKeys {
        /// The largest frame offered to clients (frame_max).
        pub frame_max: Option<u32>,
        /// The most channels offered to clients (channel_max).
        pub channel_max: Option<u16>,
        /// The heart-beat interval offered to clients; they may choose less.
        #[serde(default, with = "duration::option")]
        pub client_heartbeat: Option<Duration>,
        /// The largest message body a client may publish or a node deliver.
        pub max_message_size: Option<u64>,
    }
);

/// `pool = { ... }`: how many cleaned node connections a listener keeps warm, and for how
/// long. `max_idle = 0` turns pooling off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolKeys {
    pub max_idle: Option<usize>,
    #[serde(default, with = "duration::option")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, with = "duration::option")]
    pub max_lifetime: Option<Duration>,
    /// AMQP only: many client connections' channels share a few node connections.
    pub multiplex: Option<bool>,
    pub channels_per_connection: Option<u16>,
}

/// A listener's pool settings with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Idle node connections kept, over all credentials and nodes; 0: no pooling.
    pub max_idle: usize,
    /// An idle connection unused this long is closed.
    pub idle_timeout: Duration,
    /// A connection this old is closed instead of pooled (and an idle one when it gets there):
    /// it bounds how long a password changed on the broker is still served from the pool.
    pub max_lifetime: Duration,
    /// AMQP: client sessions of the same credentials share node connections, their channel
    /// numbers remapped (see `session::amqp::shared`).
    pub multiplex: bool,
    /// How many channels a shared node connection takes before another one is opened (a
    /// client session with no channel yet counts as one).
    pub channels_per_connection: usize,
}

impl PoolKeys {
    fn settings(&self) -> PoolSettings {
        PoolSettings {
            max_idle: self.max_idle.unwrap_or(16),
            idle_timeout: self.idle_timeout.unwrap_or(Duration::from_secs(5 * 60)),
            max_lifetime: self.max_lifetime.unwrap_or(Duration::from_secs(30 * 60)),
            multiplex: self.multiplex.unwrap_or(false),
            channels_per_connection: self.channels_per_connection.unwrap_or(256) as usize,
        }
    }
}

/// A `tcp` listener keeps no sessions, so it takes no session key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpKeys {}

/// A protocol-aware listener's session settings with the defaults filled in.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub failover_timeout: Duration,
    pub upstream_heartbeat: Duration,
    pub upstream_handshake_timeout: Duration,
    pub client_handshake_timeout: Duration,
    pub max_unconfirmed: usize,
    pub max_unconfirmed_bytes: usize,
    pub max_unacked: usize,
    pub max_frame_size: usize,
    pub max_headers: usize,
    pub max_header_line: usize,
    pub max_subscriptions: usize,
    pub max_transactions: usize,
    pub frame_max: u32,
    pub channel_max: u16,
    pub client_heartbeat: Duration,
    pub max_message_size: u64,
    pub pool: PoolSettings,
}

impl ListenerConfig {
    pub fn protocol(&self) -> Protocol {
        match self.kind {
            ListenerKind::Tcp => Protocol::Tcp,
            ListenerKind::Stomp(_) => Protocol::Stomp,
            ListenerKind::Amqp(_) => Protocol::Amqp,
        }
    }

    pub fn endpoint(&self) -> &str {
        match &self.endpoint {
            Some(endpoint) => endpoint,
            None => match self.kind {
                ListenerKind::Tcp => "tcp",
                ListenerKind::Stomp(_) => "stomp",
                ListenerKind::Amqp(_) => "amqp",
            },
        }
    }

    /// The session settings, defaults filled in (a `tcp` listener's are all defaults, and
    /// unused).
    pub fn session(&self) -> SessionSettings {
        let (shared, stomp, amqp) = match &self.kind {
            ListenerKind::Tcp => Default::default(),
            ListenerKind::Stomp(keys) => (keys.shared(), keys.clone(), AmqpKeys::default()),
            ListenerKind::Amqp(keys) => (keys.shared(), StompKeys::default(), keys.clone()),
        };
        SessionSettings {
            failover_timeout: shared.failover_timeout.unwrap_or(Duration::from_secs(30)),
            upstream_heartbeat: shared.upstream_heartbeat.unwrap_or(Duration::from_secs(1)),
            upstream_handshake_timeout: (shared.upstream_handshake_timeout)
                .unwrap_or(Duration::from_secs(3)),
            client_handshake_timeout: (shared.client_handshake_timeout)
                .unwrap_or(Duration::from_secs(10)),
            max_unconfirmed: shared.max_unconfirmed.unwrap_or(10_000),
            max_unconfirmed_bytes: shared.max_unconfirmed_bytes.unwrap_or(64 * 1024 * 1024),
            max_unacked: shared.max_unacked.unwrap_or(100_000),
            max_frame_size: stomp.max_frame_size.unwrap_or(16 * 1024 * 1024),
            max_headers: stomp.max_headers.unwrap_or(256),
            max_header_line: stomp.max_header_line.unwrap_or(16 * 1024),
            max_subscriptions: stomp.max_subscriptions.unwrap_or(2048),
            max_transactions: stomp.max_transactions.unwrap_or(256),
            frame_max: amqp.frame_max.unwrap_or(131_072),
            channel_max: amqp.channel_max.unwrap_or(2047),
            client_heartbeat: amqp.client_heartbeat.unwrap_or(Duration::from_secs(60)),
            max_message_size: amqp.max_message_size.unwrap_or(128 * 1024 * 1024),
            pool: match &self.kind {
                // A tcp listener's connections carry no session to clean: never pooled.
                ListenerKind::Tcp => PoolSettings {
                    max_idle: 0,
                    multiplex: false,
                    ..PoolKeys::default().settings()
                },
                _ => shared.pool.unwrap_or_default().settings(),
            },
        }
    }
}

/// The keys every listener has, `protocol` among them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommonKeys {
    name: String,
    bind: SocketAddr,
    protocol: Protocol,
    cluster: String,
    endpoint: Option<String>,
    #[serde(default = "defaults::max_sessions")]
    max_sessions: usize,
    tls: Option<ListenerTlsConfig>,
}

const COMMON_KEYS: [&str; 7] = [
    "name",
    "bind",
    "protocol",
    "cluster",
    "endpoint",
    "max_sessions",
    "tls",
];

/// An error about one key of the listener, so that the message names it (see
/// [`super::Config::parse`], which puts it in the key's path).
pub(super) fn keyed(key: &str, detail: impl fmt::Display) -> String {
    format!("{KEY_MARK}{key}{KEY_MARK}{detail}")
}

/// Brackets the key in an error message [`keyed`] made.
pub(super) const KEY_MARK: char = '\u{1}';

impl<'de> Deserialize<'de> for ListenerConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let table = toml::Table::deserialize(deserializer)?;
        let (common, own): (toml::Table, toml::Table) = table
            .into_iter()
            .partition(|(key, _)| COMMON_KEYS.contains(&key.as_str()));
        let common: CommonKeys = serde_path_to_error::deserialize(toml::Value::Table(common))
            .map_err(|e| {
                let key = e.path().to_string();
                let detail = e.into_inner().to_string();
                D::Error::custom(if key == "." {
                    detail
                } else {
                    keyed(&key, detail)
                })
            })?;
        let protocol = common.protocol;
        let kind = match protocol {
            Protocol::Tcp => {
                own_keys::<TcpKeys>(&own, protocol).map_err(D::Error::custom)?;
                ListenerKind::Tcp
            }
            Protocol::Stomp => {
                ListenerKind::Stomp(own_keys(&own, protocol).map_err(D::Error::custom)?)
            }
            Protocol::Amqp => {
                ListenerKind::Amqp(own_keys(&own, protocol).map_err(D::Error::custom)?)
            }
        };
        Ok(ListenerConfig {
            name: common.name,
            bind: common.bind,
            cluster: common.cluster,
            endpoint: common.endpoint,
            max_sessions: common.max_sessions,
            tls: common.tls,
            kind,
        })
    }
}

/// The protocol's own keys. Each key is tried alone first (every key is optional), so that a
/// key the protocol does not take, or a bad value, is reported by its name.
fn own_keys<T: for<'a> Deserialize<'a>>(
    own: &toml::Table,
    protocol: Protocol,
) -> Result<T, String> {
    for (key, value) in own {
        let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
        if let Err(e) = T::deserialize(toml::Value::Table(alone)) {
            let message = e.to_string();
            return Err(keyed(
                key,
                // The key itself is unknown to the protocol; an unknown key inside its
                // value (a typo in `pool = { ... }`) is reported as serde says it.
                if message.contains(&format!("unknown field `{key}`")) {
                    match protocol {
                        Protocol::Tcp => {
                            "applies to stomp and amqp listeners only; a tcp listener does not keep sessions".to_owned()
                        }
                        _ => format!("does not apply to {protocol} listeners"),
                    }
                } else {
                    message.trim().to_owned()
                },
            ));
        }
    }
    T::deserialize(toml::Value::Table(own.clone())).map_err(|e| e.to_string())
}
