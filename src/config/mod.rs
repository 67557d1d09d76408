//! The TOML configuration: parsed without binding anything, then validated as a whole so that
//! `tether check` can reject a bad file before anything runs.
//!
//! Every error names the key it is about (`clusters[0].health.rise`) and what was expected.

mod describe;
pub mod duration;
mod limits;
mod listener;
mod tls;

pub use listener::{
    AmqpKeys, ListenerConfig, ListenerKind, PoolKeys, PoolSettings, Protocol, SessionSettings,
    SharedKeys, StompKeys,
};

pub use describe::describe;
pub use limits::LimitsConfig;
pub use tls::{ListenerTlsConfig, UpstreamTlsConfig};

use crate::address::Address;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{key}: {detail}")]
    Parse { key: String, detail: String },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `/metrics`, `/healthz` and `/status`; off when absent.
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub dns: DnsConfig,
    /// How long sessions may run on after SIGTERM/SIGINT before they are closed.
    #[serde(default = "defaults::shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Where a new process meets this one to take over from it (`tether run --takeover`).
    #[serde(default)]
    pub takeover: TakeoverConfig,
    /// Threads that run sessions: 1 (the default) runs everything on one thread, which costs
    /// the least CPU per message; 0 is one per core. Read at start.
    #[serde(default = "defaults::threads")]
    pub threads: usize,
    /// Caps on all sessions together.
    #[serde(default)]
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TakeoverConfig {
    /// The Unix socket; by default `/run/tether/takeover-<config file name>.sock`.
    pub socket: Option<std::path::PathBuf>,
    /// How long the old process waits for its sessions to hand themselves over; those that
    /// cannot (a TLS client leg, STOMP) are closed when it ends.
    #[serde(default = "defaults::takeover_grace", with = "duration")]
    pub grace: Duration,
}

impl Default for TakeoverConfig {
    fn default() -> TakeoverConfig {
        TakeoverConfig {
            socket: None,
            grace: defaults::takeover_grace(),
        }
    }
}

impl TakeoverConfig {
    /// The socket for the configuration read from `path`.
    pub fn socket_for(&self, path: &Path) -> std::path::PathBuf {
        match &self.socket {
            Some(socket) => socket.clone(),
            None => {
                let name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
                std::path::PathBuf::from(format!(
                    "/run/tether/takeover-{}.sock",
                    name.unwrap_or_else(|| "tether".into())
                ))
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers to ask instead of the ones in /etc/resolv.conf.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    #[default]
    Random,
    RoundRobin,
    LeastConnections,
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::Random => "random",
            Balance::RoundRobin => "round-robin",
            Balance::LeastConnections => "least-connections",
        })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub health: HealthConfig,
    /// Nodes written out one by one.
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
    /// Host names whose every A/AAAA address is a node, with the endpoints in `ports`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Endpoint ports shared by the nodes found through `hosts` and `dns_srv`.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// An SRV name such as `_amqp._tcp.example`: each target is a node whose endpoint named by
    /// the service label (`amqp`) is at the record's port; other endpoints come from `ports`.
    pub dns_srv: Option<String>,
    /// How long one connection attempt to a node may take before the next node is tried.
    #[serde(default = "defaults::connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Move sessions (at safe points) so that every live node holds an even share.
    #[serde(default)]
    pub rebalance: bool,
    /// At most one session is moved per this interval in the cluster, so that a returning
    /// node is not stampeded.
    #[serde(default = "defaults::rebalance_pace", with = "duration")]
    pub rebalance_pace: Duration,
    /// Queue locality: move a session that consumes only from queues led by one node to that
    /// node (at a safe point, paced by `rebalance_pace`). Needs `discovery.rabbitmq`: the
    /// leaders come from the management API.
    #[serde(default)]
    pub locality: bool,
    /// Sources that learn the node set from the brokers themselves.
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Dial every endpoint of the cluster over TLS.
    pub tls: Option<UpstreamTlsConfig>,
    /// The share of the cluster's nodes that passive signals (what sessions and connects see)
    /// may hold out of rotation, as `"50%"`; never all of them. Past it, a passive signal makes
    /// the endpoint suspect (checked at once) instead.
    #[serde(
        default = "defaults::max_passive_ejection",
        deserialize_with = "percent::deserialize"
    )]
    pub max_passive_ejection: f64,
}

/// `"50%"` as 0.5.
mod percent {
    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        let text = String::deserialize(deserializer)?;
        let number = text
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .filter(|n| (0.0..=100.0).contains(n))
            .ok_or_else(|| D::Error::custom(format!("{text:?} is not a share such as \"50%\"")))?;
        Ok(number / 100.0)
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    pub rabbitmq: Option<RabbitMqDiscovery>,
    pub activemq: Option<ActiveMqDiscovery>,
}

/// RabbitMQ's management HTTP API: `/api/nodes` and `/api/overview` (listeners per node).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqDiscovery {
    /// One node's management API, e.g. `http://10.0.0.5:15672`; the others are learned.
    pub url: String,
    #[serde(default = "defaults::rabbitmq_user")]
    pub username: String,
    #[serde(default = "defaults::rabbitmq_password")]
    pub password: Secret,
    #[serde(default = "defaults::discovery_interval", with = "duration")]
    pub interval: Duration,
}

/// An ActiveMQ broker's OpenWire connector: tether reads the ConnectionControl updates that
/// list the network's brokers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActiveMqDiscovery {
    /// One broker's OpenWire URL, e.g. `tcp://10.0.0.5:61616`; the others are learned.
    pub url: String,
    /// Endpoints of advertised brokers that do not follow the cluster's `ports` (brokers that
    /// share a host), by advertised URL: `{ "tcp://10.0.0.5:61617" = { stomp = "10.0.0.5:61627" } }`.
    #[serde(default)]
    pub endpoints: BTreeMap<String, BTreeMap<String, Address>>,
}

/// A password: kept in memory, never printed (`Debug` shows `MASKED`).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "defaults::health_interval", with = "duration")]
    pub interval: Duration,
    #[serde(default = "defaults::health_timeout", with = "duration")]
    pub timeout: Duration,
    /// Consecutive successful checks that bring a down endpoint back.
    #[serde(default = "defaults::rise")]
    pub rise: u32,
    /// Consecutive failed checks that take an up endpoint down.
    #[serde(default = "defaults::fall")]
    pub fall: u32,
    /// Ceiling of the backed-off probe interval of an endpoint that is down.
    #[serde(default = "defaults::max_backoff", with = "duration")]
    pub max_backoff: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: defaults::health_interval(),
            timeout: defaults::health_timeout(),
            rise: defaults::rise(),
            fall: defaults::fall(),
            max_backoff: defaults::max_backoff(),
        }
    }
}

/// `{ name = "r1", amqp = "127.0.0.1:5681", stomp = "127.0.0.1:61681" }`: every key but `name`
/// is an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub name: String,
    pub endpoints: BTreeMap<String, Address>,
}

/// By hand rather than with `#[serde(flatten)]`, which would lose the key of a bad address
/// from the error's path.
impl<'de> Deserialize<'de> for NodeConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> serde::de::Visitor<'de> for NodeVisitor {
            type Value = NodeConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node such as { name = \"r1\", amqp = \"10.0.0.5:5672\" }")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<NodeConfig, A::Error> {
                let mut name = None;
                let mut endpoints = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "name" {
                        name = Some(map.next_value::<String>()?);
                    } else {
                        let address = map.next_value::<Address>()?;
                        endpoints.insert(key, address);
                    }
                }
                let name = name.ok_or_else(|| serde::de::Error::missing_field("name"))?;
                Ok(NodeConfig { name, endpoints })
            }
        }
        d.deserialize_map(NodeVisitor)
    }
}

mod defaults {
    use std::time::Duration;

    pub fn threads() -> usize {
        1
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(10)
    }
    pub fn takeover_grace() -> Duration {
        Duration::from_secs(30)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn rise() -> u32 {
        2
    }
    pub fn fall() -> u32 {
        2
    }
    pub fn max_backoff() -> Duration {
        Duration::from_secs(5)
    }
    pub fn max_sessions() -> usize {
        20_000
    }
    pub fn max_passive_ejection() -> f64 {
        0.5
    }
    pub fn rebalance_pace() -> Duration {
        Duration::from_millis(500)
    }
    pub fn discovery_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn rabbitmq_user() -> String {
        "guest".into()
    }
    pub fn rabbitmq_password() -> super::Secret {
        super::Secret::new("guest")
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates a whole file.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
            key: "(file)".into(),
            detail: e.to_string().trim_end().to_string(),
        })?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let mut key = e.path().to_string();
            let mut detail = e.into_inner().message().to_string();
            // A listener's error about one of its keys carries the key (see listener::keyed).
            if let Some(rest) = detail.strip_prefix(listener::KEY_MARK)
                && let Some((inner, problem)) = rest.split_once(listener::KEY_MARK)
            {
                key = format!("{key}.{inner}");
                detail = problem.to_string();
            }
            ConfigError::Parse {
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                detail,
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        let mut cluster_names = BTreeSet::new();
        for (i, cluster) in self.clusters.iter().enumerate() {
            let key = format!("clusters[{i}]");
            if cluster.name.is_empty() {
                return Err(invalid(format!("{key}.name"), "must not be empty"));
            }
            if !cluster_names.insert(cluster.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("cluster {:?} is defined twice", cluster.name),
                ));
            }
            cluster.validate(&key)?;
        }
        if self.listeners.is_empty() {
            return Err(invalid("listeners", "at least one [[listeners]] is needed"));
        }
        let mut listener_names = BTreeSet::new();
        let mut binds = BTreeSet::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            let key = format!("listeners[{i}]");
            if listener.name.is_empty() {
                return Err(invalid(format!("{key}.name"), "must not be empty"));
            }
            if !listener_names.insert(listener.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("listener {:?} is defined twice", listener.name),
                ));
            }
            if !binds.insert(listener.bind) {
                return Err(invalid(
                    format!("{key}.bind"),
                    format!("{} is bound by another listener", listener.bind),
                ));
            }
            if listener.max_sessions == 0 {
                return Err(invalid(format!("{key}.max_sessions"), "must be at least 1"));
            }
            if let ListenerKind::Amqp(keys) = &listener.kind
                && keys.frame_max.is_some_and(|max| max < 4096)
            {
                return Err(invalid(
                    format!("{key}.frame_max"),
                    "must be at least 4096 (AMQP's minimum)",
                ));
            }
            let settings = listener.session();
            for (name, value) in [
                ("failover_timeout", settings.failover_timeout),
                ("upstream_heartbeat", settings.upstream_heartbeat),
                (
                    "upstream_handshake_timeout",
                    settings.upstream_handshake_timeout,
                ),
                (
                    "client_handshake_timeout",
                    settings.client_handshake_timeout,
                ),
            ] {
                if value < Duration::from_millis(100) {
                    return Err(invalid(format!("{key}.{name}"), "must be at least 100ms"));
                }
            }
            for (name, value) in [
                ("idle_timeout", settings.pool.idle_timeout),
                ("max_lifetime", settings.pool.max_lifetime),
            ] {
                if value < Duration::from_secs(1) {
                    return Err(invalid(format!("{key}.pool.{name}"), "must be at least 1s"));
                }
            }
            if settings.pool.channels_per_connection == 0 {
                return Err(invalid(
                    format!("{key}.pool.channels_per_connection"),
                    "must be at least 1",
                ));
            }
            if settings.pool.multiplex && listener.protocol() != Protocol::Amqp {
                return Err(invalid(
                    format!("{key}.pool.multiplex"),
                    "applies to amqp listeners only: STOMP has no channels to share a connection with",
                ));
            }
            for (name, value) in [
                ("max_unconfirmed", settings.max_unconfirmed),
                ("max_unconfirmed_bytes", settings.max_unconfirmed_bytes),
                ("max_unacked", settings.max_unacked),
                ("max_frame_size", settings.max_frame_size),
                ("max_headers", settings.max_headers),
                ("max_header_line", settings.max_header_line),
            ] {
                if value == 0 {
                    return Err(invalid(format!("{key}.{name}"), "must be at least 1"));
                }
            }
            let Some(cluster) = self.clusters.iter().find(|c| c.name == listener.cluster) else {
                let known: Vec<_> = self.clusters.iter().map(|c| c.name.as_str()).collect();
                return Err(invalid(
                    format!("{key}.cluster"),
                    format!(
                        "no cluster named {:?} (defined: {})",
                        listener.cluster,
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            };
            let endpoint = listener.endpoint();
            let known = cluster.endpoint_names();
            if !known.contains(endpoint) {
                return Err(invalid(
                    format!("{key}.endpoint"),
                    format!(
                        "cluster {:?} has no node endpoint {endpoint:?} (its nodes have: {}){}",
                        cluster.name,
                        known.into_iter().collect::<Vec<_>>().join(", "),
                        if listener.endpoint.is_none() {
                            "; name one with endpoint = \"...\""
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl ClusterConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let health = &self.health;
        if health.interval.is_zero() {
            return Err(invalid(format!("{key}.health.interval"), "must be above 0"));
        }
        if health.timeout.is_zero() {
            return Err(invalid(format!("{key}.health.timeout"), "must be above 0"));
        }
        if health.rise == 0 {
            return Err(invalid(format!("{key}.health.rise"), "must be at least 1"));
        }
        if health.fall == 0 {
            return Err(invalid(format!("{key}.health.fall"), "must be at least 1"));
        }
        if health.max_backoff < health.interval {
            return Err(invalid(
                format!("{key}.health.max_backoff"),
                "must be at least health.interval",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid(format!("{key}.connect_timeout"), "must be above 0"));
        }
        let discovers = self.discovery.rabbitmq.is_some() || self.discovery.activemq.is_some();
        if self.nodes.is_empty() && self.hosts.is_empty() && self.dns_srv.is_none() && !discovers {
            return Err(invalid(
                key,
                "has no nodes: give `nodes`, `hosts` (with `ports`), `dns_srv` or `discovery`",
            ));
        }
        if self.rebalance_pace.is_zero() {
            return Err(invalid(format!("{key}.rebalance_pace"), "must be above 0"));
        }
        if self.locality && self.discovery.rabbitmq.is_none() {
            return Err(invalid(
                format!("{key}.locality"),
                "needs discovery.rabbitmq: queue leaders are read from RabbitMQ's management API",
            ));
        }
        if let Some(tls) = &self.tls {
            let tls_key = format!("{key}.tls");
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) => {
                    return Err(invalid(
                        format!("{tls_key}.key_file"),
                        "is needed with cert_file",
                    ));
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        format!("{tls_key}.cert_file"),
                        "is needed with key_file",
                    ));
                }
                _ => {}
            }
            if tls.server_name.as_deref().is_some_and(str::is_empty) {
                return Err(invalid(
                    format!("{tls_key}.server_name"),
                    "must not be empty",
                ));
            }
            if tls.insecure && tls.ca_file.is_some() {
                return Err(invalid(
                    format!("{tls_key}.insecure"),
                    "verifies nothing, so ca_file would be ignored: give one or the other",
                ));
            }
        }
        if let Some(rabbitmq) = &self.discovery.rabbitmq {
            let rest = (rabbitmq.url.strip_prefix("http://"))
                .or_else(|| rabbitmq.url.strip_prefix("https://"))
                .unwrap_or_default();
            let authority = rest.split('/').next().unwrap_or_default();
            if authority.parse::<Address>().is_err() {
                return Err(invalid(
                    format!("{key}.discovery.rabbitmq.url"),
                    format!(
                        "expected a management API URL such as \"http://10.0.0.5:15672\" or \"https://10.0.0.5:15671\", got {:?}",
                        rabbitmq.url
                    ),
                ));
            }
            if rabbitmq.interval.is_zero() {
                return Err(invalid(
                    format!("{key}.discovery.rabbitmq.interval"),
                    "must be above 0",
                ));
            }
        }
        if let Some(activemq) = &self.discovery.activemq {
            // With `tls`, only the brokers' TLS connectors are followed.
            let schemes = crate::cluster::discovery::activemq::Schemes::of(self.tls.is_some());
            let example = if self.tls.is_some() {
                "ssl://10.0.0.5:61617"
            } else {
                "tcp://10.0.0.5:61616"
            };
            if schemes.broker_address(&activemq.url).is_none() {
                return Err(invalid(
                    format!("{key}.discovery.activemq.url"),
                    format!(
                        "expected an OpenWire URL such as \"{example}\"{}, got {:?}",
                        if self.tls.is_some() {
                            " (the cluster has tls)"
                        } else {
                            ""
                        },
                        activemq.url
                    ),
                ));
            }
            for url in activemq.endpoints.keys() {
                if schemes.broker_address(url).is_none() {
                    return Err(invalid(
                        format!("{key}.discovery.activemq.endpoints"),
                        format!(
                            "expected OpenWire URLs such as \"{example}\" as keys, got {url:?}"
                        ),
                    ));
                }
            }
        }
        let mut node_names = BTreeSet::new();
        for (j, node) in self.nodes.iter().enumerate() {
            let node_key = format!("{key}.nodes[{j}]");
            if node.name.is_empty() {
                return Err(invalid(format!("{node_key}.name"), "must not be empty"));
            }
            if !node_names.insert(node.name.as_str()) {
                return Err(invalid(
                    format!("{node_key}.name"),
                    format!("node {:?} is defined twice", node.name),
                ));
            }
            if node.endpoints.is_empty() {
                return Err(invalid(
                    node_key,
                    "has no endpoints: add one such as amqp = \"10.0.0.5:5672\"",
                ));
            }
        }
        if !self.hosts.is_empty() && self.ports.is_empty() {
            return Err(invalid(
                format!("{key}.ports"),
                "is needed with `hosts`, e.g. ports = { amqp = 5672 }",
            ));
        }
        for (j, host) in self.hosts.iter().enumerate() {
            if host.is_empty() || host.contains(':') || host.contains(char::is_whitespace) {
                return Err(invalid(
                    format!("{key}.hosts[{j}]"),
                    format!("expected a host name without port, got {host:?}"),
                ));
            }
        }
        if let Some(srv) = &self.dns_srv {
            srv_service(srv).ok_or_else(|| {
                invalid(
                    format!("{key}.dns_srv"),
                    format!("expected an SRV name such as \"_amqp._tcp.example\", got {srv:?}"),
                )
            })?;
        }
        Ok(())
    }

    /// Every endpoint name the cluster's configured nodes can have.
    pub fn endpoint_names(&self) -> BTreeSet<&str> {
        let mut names: BTreeSet<&str> = self
            .nodes
            .iter()
            .flat_map(|n| n.endpoints.keys().map(String::as_str))
            .collect();
        names.extend(self.ports.keys().map(String::as_str));
        if let Some(service) = self.dns_srv.as_deref().and_then(srv_service) {
            names.insert(service);
        }
        if self.discovery.rabbitmq.is_some() {
            // Every protocol RabbitMQ listens on is advertised; these are the ones it has.
            names.extend(["amqp", "amqps", "stomp", "stomps", "mqtt", "http", "https"]);
        }
        if let Some(activemq) = &self.discovery.activemq {
            names.insert("openwire");
            names.extend(
                activemq
                    .endpoints
                    .values()
                    .flat_map(|e| e.keys().map(String::as_str)),
            );
        }
        names
    }
}

/// The endpoint an SRV name stands for: `_amqp._tcp.example` → `amqp`.
pub fn srv_service(name: &str) -> Option<&str> {
    let mut labels = name.split('.');
    let service = labels.next()?.strip_prefix('_')?;
    let proto = labels.next()?;
    let rest_present = labels.next().is_some();
    (!service.is_empty() && proto.starts_with('_') && rest_present).then_some(service)
}

#[cfg(test)]
mod tests;
