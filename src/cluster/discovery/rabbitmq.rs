//! Nodes from RabbitMQ's management HTTP API: every running node of `/api/nodes` is a node,
//! with one endpoint per listener `/api/overview` reports for it (`amqp`, `amqps`, `stomp`,
//! `stomps`, `mqtt`, `http`). Re-read every `interval`, and at once when the cluster asks
//! (after a node failure). With `locality` on, each queue's leader too (`/api/queues`, into
//! [`QueueLeaders`]), also when a rebalancing planner meets a queue it does not know.
//!
//! # Layout
//!
//! - [`run`]: the poll loop; a failed poll keeps the nodes last seen.
//! - `Management`: the management URLs known (the configured seed plus every node's `http`
//!   listener), tried in turn starting with the one that answered last.
//! - `plan` / `resolve`: JSON → [`NodeSpec`]s.
//! - [`crate::http`]: the small HTTP/1.1 client (shared with `tether status`, tests and bench).

use crate::address::Address;
use crate::cluster::discovery::UpdateSender;
use crate::cluster::leaders::{ApiQueue, QUEUES_PATH, QueueLeaders};
use crate::cluster::node::NodeSpec;
use crate::cluster::topology::Update;
use crate::config::{RabbitMqDiscovery, Secret};
use crate::http;
use crate::tls::{Connector, Swappable};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A management API that does not answer within this is taken as down and the next one tried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// `/api/nodes` with every statistic is ~8 KiB a node; we ask only for the columns we read,
/// so this is room for clusters far larger than any we front.
const MAX_RESPONSE: usize = 8 * 1024 * 1024;
/// Learned management URLs kept; the oldest learned goes first (the configured one never).
const MAX_URLS: usize = 32;
/// Failure notices can come in bursts (every session of a dead node fails at once): polls are
/// at least this far apart.
const MIN_POLL_GAP: Duration = Duration::from_millis(500);
/// A failed poll is retried after 1 s, then doubling, but never later than `interval`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

const NODES_PATH: &str = "/api/nodes?columns=name,running";
const OVERVIEW_PATH: &str = "/api/overview?columns=listeners";

pub fn source_id(config: &RabbitMqDiscovery) -> String {
    format!("rabbitmq:{}", config.url)
}

/// Polls the management API and reports the running nodes whenever they change, until
/// cancelled. A poll that fails keeps the nodes last reported: a management API outage must
/// not empty the cluster.
pub async fn run(
    config: RabbitMqDiscovery,
    tls: Swappable<Connector>,
    updates: UpdateSender,
    refresh: Arc<Notify>,
    leaders: Arc<QueueLeaders>,
    cancel: CancellationToken,
) {
    let source = source_id(&config);
    let mut management = match Management::new(&config, tls) {
        Ok(management) => management,
        Err(e) => {
            // Config validation rejects such URLs; this keeps a bad one from ever panicking.
            tracing::warn!(%source, error = %e, "RabbitMQ discovery cannot start");
            updates.report_failed(&source);
            return;
        }
    };
    let mut reported: Option<Vec<NodeSpec>> = None;
    let mut failed_first = false;
    let mut failing: Option<String> = None;
    let mut retry = crate::backoff::Backoff::new(FIRST_RETRY, config.interval);
    let mut answered: Option<String> = None;
    loop {
        // Armed before the poll, so a failure notice that arrives during it is not lost.
        let notified = refresh.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let started = Instant::now();

        let polled = tokio::select! {
            _ = cancel.cancelled() => return,
            polled = management.poll() => polled,
        };
        let wait = match polled {
            Ok(nodes) => {
                retry.reset();
                let url = management.current().to_string();
                if failing.take().is_some() {
                    tracing::warn!(%source, %url, "RabbitMQ management API answers again");
                } else if answered.as_ref().is_some_and(|before| *before != url) {
                    tracing::info!(%source, %url, "RabbitMQ management API now read here");
                }
                answered = Some(url);
                if reported.as_ref() != Some(&nodes) {
                    tracing::debug!(%source, nodes = nodes.len(), "RabbitMQ nodes changed");
                    updates.send(&source, Update::Reset(nodes.clone()));
                    reported = Some(nodes);
                }
                if leaders.enabled() {
                    let read = tokio::select! {
                        _ = cancel.cancelled() => return,
                        read = management.queues() => read,
                    };
                    match read {
                        Ok(queues) => {
                            let count = leaders.store(queues);
                            tracing::trace!(%source, queues = count, "RabbitMQ queue leaders read");
                        }
                        // The leaders last read stay: locality waits, nothing else does.
                        Err(e) => {
                            tracing::debug!(%source, error = %e, "reading RabbitMQ queue leaders failed")
                        }
                    }
                }
                config.interval
            }
            Err(e) => {
                let error = e.to_string();
                if failing.as_ref() != Some(&error) {
                    tracing::warn!(%source, %error, "RabbitMQ management API poll failed; keeping the nodes last seen");
                } else {
                    tracing::debug!(%source, %error, "RabbitMQ management API poll failed again");
                }
                failing = Some(error);
                if reported.is_none() && !failed_first {
                    // Let startup go on without these nodes rather than wait for the API.
                    updates.report_failed(&source);
                    failed_first = true;
                }
                retry.next_delay().min(config.interval)
            }
        };

        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = notified => {
                tracing::debug!(%source, "re-reading RabbitMQ nodes after a node failure");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep_until(started + MIN_POLL_GAP) => {}
                }
            }
            _ = leaders.asked() => {
                tracing::debug!(%source, "re-reading RabbitMQ queue leaders: a session consumes from a queue not seen yet");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep_until(started + MIN_POLL_GAP) => {}
                }
            }
        }
    }
}

/// Every management URL known failed; each with its reason.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|(url, e)| format!("{url}: {e}")).collect::<Vec<_>>().join("; "))]
struct PollError(Vec<(String, AttemptError)>);

/// Why one management URL gave no node set.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("GET {path}: {source}")]
    Http {
        path: &'static str,
        source: http::HttpError,
    },
    #[error(
        "GET {path}: 401 Unauthorized: the management API refused user {user:?} and its password{}",
        detail_suffix(.detail)
    )]
    Unauthorized {
        path: &'static str,
        user: String,
        detail: String,
    },
    #[error("GET {path}: HTTP {status} {reason}{}", detail_suffix(.detail))]
    Status {
        path: &'static str,
        status: u16,
        reason: String,
        detail: String,
    },
    #[error("GET {path}: unexpected JSON: {source}")]
    Json {
        path: &'static str,
        source: serde_json::Error,
    },
    #[error("no trust for https: {0}")]
    Trust(String),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("expected a management API URL such as \"http://10.0.0.5:15672\", got {0:?}")]
struct BadUrl(String);

/// One management API: where to connect. Shown as `http(s)://host:port/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ManagementUrl {
    address: Address,
}

/// The management URLs known and which one answered last.
struct Management {
    /// `[0]` is the configured one; the rest are learned from `http` listeners.
    urls: Vec<ManagementUrl>,
    current: usize,
    /// `management.path_prefix`, cluster-wide, so learned URLs share the configured one's.
    path_prefix: String,
    user: String,
    authorization: Secret,
    timeout: Duration,
    /// `https://`: every URL, learned ones too, is read over TLS.
    https: bool,
    /// The cluster's TLS settings: both whether nodes' TLS listeners are the endpoints, and
    /// the trust the management API is read with over `https://`.
    tls: Swappable<Connector>,
    /// The trust for `https://` when the cluster has no `tls`: the system's roots.
    system_roots: Option<Arc<Connector>>,
}

impl Management {
    fn new(config: &RabbitMqDiscovery, tls: Swappable<Connector>) -> Result<Self, BadUrl> {
        let bad = || BadUrl(config.url.clone());
        let (https, rest) = match config.url.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (false, config.url.strip_prefix("http://").ok_or_else(bad)?),
        };
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let address: Address = authority.parse().map_err(|_| bad())?;
        let prefix = prefix.trim_end_matches('/');
        Ok(Management {
            urls: vec![ManagementUrl { address }],
            current: 0,
            path_prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("/{prefix}")
            },
            user: config.username.clone(),
            authorization: Secret::new(http::basic_authorization(
                &config.username,
                config.password.expose(),
            )),
            timeout: REQUEST_TIMEOUT,
            https,
            tls,
            system_roots: None,
        })
    }

    /// The TLS settings a request is made with: `None` over `http://`.
    fn request_tls(&mut self) -> Result<Option<Arc<Connector>>, AttemptError> {
        if !self.https {
            return Ok(None);
        }
        if let Some(cluster) = self.tls.load_full() {
            return Ok(Some(cluster));
        }
        if self.system_roots.is_none() {
            let connector = Connector::load(&Default::default())
                .map_err(|e| AttemptError::Trust(e.to_string()))?;
            self.system_roots = Some(Arc::new(connector));
        }
        Ok(self.system_roots.clone())
    }

    fn current(&self) -> UrlText<'_> {
        self.text(&self.urls[self.current])
    }

    fn text<'a>(&'a self, url: &'a ManagementUrl) -> UrlText<'a> {
        UrlText {
            url,
            prefix: &self.path_prefix,
            https: self.https,
        }
    }

    /// Tries every known URL, starting with the one that answered last, until one gives the
    /// node set.
    async fn poll(&mut self) -> Result<Vec<NodeSpec>, PollError> {
        let mut failures = Vec::new();
        let tls = match self.request_tls() {
            Ok(tls) => tls,
            Err(e) => {
                let url = self.current().to_string();
                return Err(PollError(vec![(url, e)]));
            }
        };
        let nodes_over_tls = self.tls.load().is_some();
        for step in 0..self.urls.len() {
            let index = (self.current + step) % self.urls.len();
            let url = &self.urls[index];
            match self.read(url, tls.as_deref(), nodes_over_tls).await {
                Ok(nodes) => {
                    for (failed, error) in &failures {
                        tracing::debug!(url = %failed, %error, "RabbitMQ management API failed; trying the next");
                    }
                    self.current = index;
                    self.learn(&nodes);
                    return Ok(nodes);
                }
                Err(e) => failures.push((self.text(url).to_string(), e)),
            }
        }
        Err(PollError(failures))
    }

    /// One URL's node set: both requests go to the same node so that they agree.
    /// With `nodes_over_tls`, the nodes' TLS listeners are their `amqp` and `stomp` endpoints.
    async fn read(
        &self,
        url: &ManagementUrl,
        tls: Option<&Connector>,
        nodes_over_tls: bool,
    ) -> Result<Vec<NodeSpec>, AttemptError> {
        let nodes: Vec<ApiNode> = self.get_json(url, NODES_PATH, tls).await?;
        let overview: Overview = self.get_json(url, OVERVIEW_PATH, tls).await?;
        let planned = plan(&nodes, &overview.listeners, nodes_over_tls);
        Ok(resolve(planned, lookup_ipv4_first).await)
    }

    /// Every queue and the node that leads it, from the URL that answered last.
    async fn queues(&mut self) -> Result<Vec<ApiQueue>, AttemptError> {
        let tls = self.request_tls()?;
        let url = &self.urls[self.current];
        self.get_json(url, QUEUES_PATH, tls.as_deref()).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &ManagementUrl,
        path: &'static str,
        tls: Option<&Connector>,
    ) -> Result<T, AttemptError> {
        let full_path = format!("{}{path}", self.path_prefix);
        let response = http::request_over(
            &http::Request {
                method: "GET",
                address: &url.address,
                path: &full_path,
                authorization: Some(self.authorization.expose()),
            },
            &http::Limits {
                timeout: self.timeout,
                max_body: MAX_RESPONSE,
            },
            tls,
        )
        .await
        .map_err(|source| AttemptError::Http { path, source })?;
        match response.status {
            200 => serde_json::from_slice(&response.body)
                .map_err(|source| AttemptError::Json { path, source }),
            401 => Err(AttemptError::Unauthorized {
                path,
                user: self.user.clone(),
                detail: error_detail(&response.body),
            }),
            status => Err(AttemptError::Status {
                path,
                status,
                reason: response.reason,
                detail: error_detail(&response.body),
            }),
        }
    }

    /// Remembers the `http` (or, over `https://`, the `https`) listener of every node seen,
    /// so that the seed may die.
    fn learn(&mut self, nodes: &[NodeSpec]) {
        let scheme = if self.https { "https" } else { "http" };
        for node in nodes {
            let Some(address) = node.endpoints.get(scheme) else {
                continue;
            };
            let url = ManagementUrl {
                address: address.clone(),
            };
            if self.urls.contains(&url) {
                continue;
            }
            self.urls.push(url);
            if self.urls.len() > MAX_URLS {
                self.urls.remove(1);
                self.current = self.current.saturating_sub(1);
            }
        }
    }
}

/// A management URL as people write it.
struct UrlText<'a> {
    url: &'a ManagementUrl,
    prefix: &'a str,
    https: bool,
}

impl fmt::Display for UrlText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.url.address, self.prefix)
    }
}

/// RabbitMQ's reason for an error answer (`{"error":"not_authorized","reason":"Login
/// failed"}`), else the start of the body.
/// Fuzzing: what discovery makes of management API answers (`/api/nodes`, `/api/overview`,
/// an error body), each read as the discovery reads it.
pub(crate) fn fuzz_answers(body: &[u8]) {
    let nodes: Vec<ApiNode> = serde_json::from_slice(body).unwrap_or_default();
    let overview: Overview = serde_json::from_slice(body).unwrap_or_default();
    let queues: Vec<ApiQueue> = serde_json::from_slice(body).unwrap_or_default();
    QueueLeaders::default().store(queues);
    for tls in [false, true] {
        let _ = plan(&nodes, &overview.listeners, tls);
    }
    let _ = error_detail(body);
}

fn error_detail(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ApiError {
        #[serde(default)]
        error: String,
        #[serde(default)]
        reason: String,
    }
    if let Ok(e) = serde_json::from_slice::<ApiError>(body) {
        return match (e.error.is_empty(), e.reason.is_empty()) {
            (_, false) => e.reason,
            (false, true) => e.error,
            (true, true) => String::new(),
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// An entry of `/api/nodes`; everything else it says is ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ApiNode {
    name: String,
    running: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Overview {
    listeners: Vec<Listener>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Listener {
    node: String,
    protocol: String,
    ip_address: String,
    port: u16,
    /// `socket_opts.ip`: the management plugin reports `ip_address` `::` even when it is bound
    /// to one address, which it gives here.
    #[serde(rename = "socket_opts", deserialize_with = "bound_ip")]
    bound_ip: Option<IpAddr>,
}

/// `socket_opts` is an object for most listeners and `[]` for some (clustering): only an
/// object's `ip` string counts.
fn bound_ip<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    let opts = serde_json::Value::deserialize(d)?;
    Ok(opts
        .get("ip")
        .and_then(|ip| ip.as_str())
        .and_then(|ip| ip.parse().ok()))
}

/// The endpoint name a RabbitMQ listener protocol is known by in tether's config; `None` for
/// those no client connects to (`clustering`) or that tether does not know. With `tls` (the
/// cluster's nodes are dialled over TLS), the TLS listeners are the `amqp` and `stomp`
/// endpoints, and the plaintext ones are left out: a TLS handshake with them would fail.
fn endpoint_name(protocol: &str, tls: bool) -> Option<&'static str> {
    Some(match (protocol, tls) {
        ("amqp", false) | ("amqp/ssl", true) => "amqp",
        ("amqp/ssl", false) => "amqps",
        ("stomp", false) | ("stomp/ssl", true) => "stomp",
        ("stomp/ssl", false) => "stomps",
        ("mqtt", false) | ("mqtt/ssl", true) => "mqtt",
        ("http", _) => "http",
        ("https", _) => "https",
        _ => return None,
    })
}

/// Where a listener is, before names are resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    /// The host of the node name (`r1@HOST`): the listener is bound to every address.
    NodeHost(String),
}

#[derive(Debug, PartialEq, Eq)]
struct PlannedNode {
    name: String,
    endpoints: BTreeMap<String, (Host, u16)>,
}

/// The running nodes and their endpoints, sorted by name so that an unchanged cluster
/// compares equal.
fn plan(nodes: &[ApiNode], listeners: &[Listener], tls: bool) -> Vec<PlannedNode> {
    let mut planned: BTreeMap<&str, BTreeMap<String, (Host, u16)>> = nodes
        .iter()
        // A node that is not running must get no sessions.
        .filter(|n| n.running && !n.name.is_empty())
        .map(|n| (n.name.as_str(), BTreeMap::new()))
        .collect();
    for listener in listeners {
        let Some(endpoints) = planned.get_mut(listener.node.as_str()) else {
            continue;
        };
        let Some(endpoint) = endpoint_name(&listener.protocol, tls) else {
            continue;
        };
        if listener.port == 0 {
            continue;
        }
        // Two listeners of one protocol (e.g. 0.0.0.0 and ::): the first reported wins.
        endpoints
            .entry(endpoint.to_string())
            .or_insert_with(|| (listener_host(listener), listener.port));
    }
    planned
        .into_iter()
        // A node that lists no listener yet is still starting; it comes with the next poll.
        .filter(|(_, endpoints)| !endpoints.is_empty())
        .map(|(name, endpoints)| PlannedNode {
            name: name.to_string(),
            endpoints,
        })
        .collect()
}

fn listener_host(listener: &Listener) -> Host {
    let specific = |ip: &IpAddr| !ip.is_unspecified();
    if let Some(ip) = listener.ip_address.parse::<IpAddr>().ok().filter(specific) {
        return Host::Ip(ip);
    }
    if let Some(ip) = listener.bound_ip.filter(specific) {
        return Host::Ip(ip);
    }
    let host = listener
        .node
        .split_once('@')
        .map_or(listener.node.as_str(), |(_, host)| host);
    match host.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::NodeHost(host.to_string()),
    }
}

/// Node hosts resolved with `lookup`, each once; a host that does not resolve is kept as a
/// name, to be resolved again when a connection is made.
async fn resolve(
    planned: Vec<PlannedNode>,
    lookup: impl AsyncFn(&str) -> Option<IpAddr>,
) -> Vec<NodeSpec> {
    let mut resolved: BTreeMap<String, Option<IpAddr>> = BTreeMap::new();
    let mut specs = Vec::with_capacity(planned.len());
    for node in planned {
        let mut endpoints = BTreeMap::new();
        for (endpoint, (host, port)) in node.endpoints {
            let address = match host {
                Host::Ip(ip) => Address::Ip(SocketAddr::new(ip, port)),
                Host::NodeHost(host) => {
                    let ip = match resolved.get(&host) {
                        Some(ip) => *ip,
                        None => {
                            let ip = lookup(&host).await;
                            resolved.insert(host.clone(), ip);
                            ip
                        }
                    };
                    match ip {
                        Some(ip) => Address::Ip(SocketAddr::new(ip, port)),
                        None => match format!("{host}:{port}").parse() {
                            Ok(name) => name,
                            Err(_) => {
                                tracing::debug!(node = %node.name, %endpoint, %host, "RabbitMQ node host is not a usable name; endpoint left out");
                                continue;
                            }
                        },
                    }
                }
            };
            endpoints.insert(endpoint, address);
        }
        specs.push(NodeSpec {
            name: node.name,
            endpoints,
        });
    }
    specs
}

/// The host's first IPv4 address, else its first address: `localhost` must become
/// `127.0.0.1`, the address a static seed for the same node is written with.
async fn lookup_ipv4_first(host: &str) -> Option<IpAddr> {
    let lookup = tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::lookup_host((host, 0)));
    match lookup.await {
        Ok(Ok(addresses)) => {
            let addresses: Vec<IpAddr> = addresses.map(|a| a.ip()).collect();
            addresses
                .iter()
                .find(|ip| ip.is_ipv4())
                .or(addresses.first())
                .copied()
        }
        Ok(Err(e)) => {
            tracing::debug!(%host, error = %e, "cannot resolve RabbitMQ node host; keeping the name");
            None
        }
        Err(_) => {
            tracing::debug!(%host, "RabbitMQ node host did not resolve in time; keeping the name");
            None
        }
    }
}

#[cfg(test)]
mod tests;
