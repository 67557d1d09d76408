//! The admin HTTP listener: `/metrics` (Prometheus text), `/healthz`, `/status` (JSON), and
//! `POST /reload`, which reloads the configuration file and answers what changed.

use crate::cluster::Cluster;
use crate::listener::Listener;
use crate::rebalance::locality::Home;
use crate::status::model::{
    ClusterStatus, ConsumerLocality, EndpointStatus, LastFailover, ListenerStatus, NodeShare,
    NodeStatus, QueueLeader, SharedConnections, Status,
};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub struct Admin {
    pub prometheus: PrometheusHandle,
    /// The clusters and listeners running now; a reload swaps it.
    pub view: Arc<ArcSwap<View>>,
    pub started: Instant,
    /// Reloads are carried out by the server task, one at a time.
    pub reload: mpsc::Sender<ReloadRequest>,
}

/// What `/status` reports on.
#[derive(Default)]
pub struct View {
    pub clusters: Vec<Arc<Cluster>>,
    /// Serving listeners, then removed ones whose sessions still drain.
    pub listeners: Vec<Arc<Listener>>,
}

/// A reload asked for over HTTP; answered with what changed or why nothing did.
pub struct ReloadRequest {
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// Admin connections served at once; more are closed as soon as they are accepted. The admin
/// listener is for a scraper and an operator, not for load, and must never compete with the
/// sessions for descriptors or memory.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers (also the most a kept-alive
/// connection may stay idle between requests).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes of a request's head hyper buffers (the least it accepts is 8 KiB).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

pub async fn serve(admin: Arc<Admin>, socket: TcpListener, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors: the sessions matter more than the admin page.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            crate::budget::reached("admin_connections");
            tracing::debug!("admin listener: {MAX_CONNECTIONS} connections open; closing another");
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.respond(&request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Admin {
    async fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        // A browser adds Origin to a cross-site request; curl, `tether`'s own commands and
        // Prometheus do not. A web page the operator happens to open must not reload tether.
        if request.headers().contains_key(header::ORIGIN) {
            crate::budget::reached("admin_origin");
            return plain(
                StatusCode::FORBIDDEN,
                "requests from web pages (with an Origin header) are refused\n".into(),
            );
        }
        let path = request.uri().path();
        if ["/reload", "/drain", "/undrain"].contains(&path) {
            if request.method() != Method::POST {
                return plain(StatusCode::METHOD_NOT_ALLOWED, "only POST\n".into());
            }
            if path == "/reload" {
                return self.reload().await;
            }
            let (status, text) = self.drain(request.uri().query(), path == "/drain");
            return plain(status, text);
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        match request.uri().path() {
            "/metrics" => {
                let mut response = plain(StatusCode::OK, self.prometheus.render());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/healthz" => plain(StatusCode::OK, "ok\n".into()),
            "/status" => {
                let body = serde_json::to_string_pretty(&self.status())
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
                let mut response = plain(StatusCode::OK, body + "\n");
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                response
            }
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /healthz, /status, POST /reload, /drain or /undrain\n"
                    .into(),
            ),
        }
    }

    async fn reload(&self) -> Response<Full<Bytes>> {
        let (reply, answer) = oneshot::channel();
        if self.reload.send(ReloadRequest { reply }).await.is_err() {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "tether is shutting down\n".into(),
            );
        }
        match answer.await {
            Ok(Ok(changes)) => plain(StatusCode::OK, format!("reloaded: {changes}\n")),
            Ok(Err(problem)) => plain(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("not reloaded, the running configuration stays: {problem}\n"),
            ),
            Err(_) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "tether is shutting down\n".into(),
            ),
        }
    }

    /// `POST /drain?node=NODE[&cluster=CLUSTER]` (and `/undrain`): the node takes no new
    /// sessions, and its sessions move off at their next safe point. The cluster may be left
    /// out when one cluster alone has a node of that name.
    fn drain(&self, query: Option<&str>, on: bool) -> (StatusCode, String) {
        let mut node = None;
        let mut cluster = None;
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "node" => node = Some(value.into_owned()),
                "cluster" => cluster = Some(value.into_owned()),
                _ => {
                    return (
                        StatusCode::BAD_REQUEST,
                        format!(
                            "unknown parameter {key:?}; give node= and, optionally, cluster=\n"
                        ),
                    );
                }
            }
        }
        let Some(node) = node.filter(|n| !n.is_empty()) else {
            return (
                StatusCode::BAD_REQUEST,
                "give the node: ?node=NAME\n".into(),
            );
        };
        let view = self.view.load();
        let candidates: Vec<&Arc<Cluster>> = (view.clusters.iter())
            .filter(|c| match &cluster {
                Some(name) => *c.name == **name,
                None => c.nodes().iter().any(|n| n.name == node),
            })
            .collect();
        let target = match (candidates.as_slice(), &cluster) {
            ([one], _) => one,
            ([], Some(name)) => {
                return (StatusCode::NOT_FOUND, format!("no cluster {name:?}\n"));
            }
            ([], None) => {
                let known: Vec<String> = (view.clusters.iter())
                    .map(|c| {
                        let names: Vec<String> = c.nodes().iter().map(|n| n.name.clone()).collect();
                        format!("{}: {}", c.name, names.join(", "))
                    })
                    .collect();
                return (
                    StatusCode::NOT_FOUND,
                    format!("no cluster has a node {node:?} ({})\n", known.join("; ")),
                );
            }
            (_, _) => {
                let names: Vec<&str> = candidates.iter().map(|c| &*c.name).collect();
                return (
                    StatusCode::BAD_REQUEST,
                    format!(
                        "clusters {} all have a node {node:?}; add &cluster=NAME\n",
                        names.join(", ")
                    ),
                );
            }
        };
        match target.drain(&node, on) {
            Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")),
            Ok(_) => {
                let sessions = (target.nodes().iter())
                    .find(|n| n.name == node)
                    .map_or(0, |n| n.sessions());
                let text = if on {
                    format!(
                        "{node} (cluster {}): drained; it takes no new sessions, and its {sessions} sessions move off\n",
                        target.name
                    )
                } else {
                    format!(
                        "{node} (cluster {}): undrained; it takes sessions again\n",
                        target.name
                    )
                };
                (StatusCode::OK, text)
            }
        }
    }

    pub fn status(&self) -> Status {
        let view = self.view.load();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            listeners: view
                .listeners
                .iter()
                .map(|l| ListenerStatus {
                    name: l.config.name.clone(),
                    bind: l.config.bind.to_string(),
                    protocol: l.config.protocol().to_string(),
                    cluster: l.config.cluster.clone(),
                    tls: l.config.tls.is_some(),
                    endpoint: l.config.endpoint().to_string(),
                    sessions: l.active_sessions(),
                    draining: l.is_draining(),
                    nodes: l
                        .sessions
                        .shares()
                        .into_iter()
                        .map(|(node, (sessions, consuming))| {
                            (
                                node,
                                NodeShare {
                                    sessions,
                                    consuming,
                                },
                            )
                        })
                        .collect(),
                    pooled: match (&l.amqp_pool, &l.stomp_pool) {
                        (Some(pooling), _) => Some(pooling.pool.idle_by_node()),
                        (_, Some(pool)) => Some(pool.idle_by_node()),
                        _ => None,
                    },
                    shared: (l.amqp_pool.as_ref())
                        .and_then(|pooling| pooling.shared.as_ref())
                        .map(|shared| {
                            (shared.by_node().into_iter())
                                .map(|(node, (connections, channels))| {
                                    let counts = SharedConnections {
                                        connections,
                                        channels,
                                    };
                                    (node, counts)
                                })
                                .collect()
                        }),
                    locality: consumer_locality(l),
                })
                .collect(),
            clusters: view.clusters.iter().map(|c| cluster_status(c)).collect(),
            last_failover: last_failover(&view.listeners),
        }
    }
}

/// With the cluster's `locality` on, each session of `listener` that consumes from (or only
/// publishes to) named queues, and where those are led; empty otherwise.
fn consumer_locality(listener: &Listener) -> Vec<ConsumerLocality> {
    let leaders = &listener.cluster.leaders;
    if !leaders.enabled() {
        return Vec::new();
    }
    (listener.sessions.queue_users().into_iter())
        .map(|(node, consumes, consumed)| {
            let node = node.unwrap_or_default();
            let queues: Vec<QueueLeader> = (consumed.queues.iter())
                .zip(consumed.leaders(leaders))
                .map(|(name, leader)| QueueLeader {
                    name: name.clone(),
                    leader: leader.unwrap_or_default(),
                })
                .collect();
            let local = consumed.home(leaders) == Home::Node(node.clone());
            ConsumerLocality {
                vhost: consumed.vhost_name().to_string(),
                consumes,
                node,
                queues,
                local,
            }
        })
        .collect()
}

/// The most recent completed failover of any listener's session.
fn last_failover(listeners: &[Arc<Listener>]) -> Option<LastFailover> {
    listeners
        .iter()
        .filter_map(|l| Some((l, l.last_failover()?)))
        .max_by_key(|(_, record)| record.at)
        .map(|(listener, record)| LastFailover {
            at_unix: record
                .at
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            listener: listener.config.name.clone(),
            from: record.from,
            to: record.to,
            reason: record.reason.label().to_owned(),
            seconds: record.took.as_secs_f64(),
        })
}

fn cluster_status(cluster: &Cluster) -> ClusterStatus {
    let nodes = cluster.nodes();
    ClusterStatus {
        name: cluster.name.to_string(),
        balance: cluster.balance().to_string(),
        tls: cluster.uses_tls(),
        sources: cluster.sources().to_vec(),
        nodes_up: nodes.iter().filter(|n| n.is_up()).count(),
        nodes: nodes
            .iter()
            .map(|node| NodeStatus {
                name: node.name.clone(),
                up: node.is_up(),
                drained: node.is_drained(),
                sessions: node.sessions(),
                sources: node.sources().into_iter().collect(),
                endpoints: node
                    .endpoints
                    .iter()
                    .map(|(name, e)| {
                        let change = e.health.last_change();
                        (
                            name.clone(),
                            EndpointStatus {
                                address: e.address.to_string(),
                                checked: e.monitored,
                                check: e.check.to_string(),
                                up: e.health.is_up(),
                                since_unix: change
                                    .at
                                    .duration_since(UNIX_EPOCH)
                                    .map(|d| d.as_secs_f64())
                                    .unwrap_or(0.0),
                                for_seconds: SystemTime::now()
                                    .duration_since(change.at)
                                    .map(|d| d.as_secs_f64())
                                    .unwrap_or(0.0),
                                reason: change.reason,
                                suspect: e.health.suspected(),
                            },
                        )
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
