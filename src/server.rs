//! Runs a validated configuration: clusters, listeners and the admin listener, until SIGTERM or
//! SIGINT; then stops accepting, lets sessions finish within the grace period, and returns.

use crate::admin::{self, Admin};
use crate::cluster::Cluster;
use crate::cluster::discovery::dns;
use crate::config::Config;
use crate::listener::Listener;
use anyhow::Context as _;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long startup waits for DNS before serving with the nodes it has.
const DISCOVERY_STARTUP_WAIT: Duration = Duration::from_secs(5);
/// Sessions told to close after the grace period get this long to do so.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub async fn run(config: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    let prometheus = crate::metrics::install()?;
    let stop = CancellationToken::new();
    let close_sessions = CancellationToken::new();
    let tracker = TaskTracker::new();

    let needs_dns = config
        .clusters
        .iter()
        .any(|c| !c.hosts.is_empty() || c.dns_srv.is_some());
    let resolver = if needs_dns {
        Some(dns::resolver(&config.dns).context("cannot set up the DNS resolver")?)
    } else {
        None
    };

    // Only endpoints that a listener forwards to are health-checked.
    let mut monitored: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for listener in &config.listeners {
        monitored
            .entry(listener.cluster.as_str())
            .or_default()
            .insert(listener.endpoint().to_string());
    }
    let clusters: Vec<Arc<Cluster>> = config
        .clusters
        .iter()
        .map(|c| {
            let endpoints = monitored.remove(c.name.as_str()).unwrap_or_default();
            Cluster::start(c, endpoints, resolver.as_ref(), stop.clone())
        })
        .collect();

    let mut listeners = Vec::new();
    for listener_config in &config.listeners {
        let cluster = clusters
            .iter()
            .find(|c| *c.name == *listener_config.cluster)
            .context("listener names an unknown cluster")?
            .clone();
        let listener = Listener::new(listener_config.clone(), cluster);
        let socket = listener.bind().with_context(|| {
            format!(
                "listener {}: cannot bind {}",
                listener_config.name, listener_config.bind
            )
        })?;
        listeners.push((listener, socket));
    }
    let admin_socket = match &config.admin {
        Some(admin) => Some(
            tokio::net::TcpListener::bind(admin.listen)
                .await
                .with_context(|| format!("admin: cannot bind {}", admin.listen))?,
        ),
        None => None,
    };

    for cluster in &clusters {
        if !cluster.ready(DISCOVERY_STARTUP_WAIT).await {
            tracing::warn!(cluster = %cluster.name, "discovery has not answered yet; serving with the nodes known so far");
        }
    }
    if let Some(socket) = admin_socket {
        let admin = Arc::new(Admin {
            prometheus,
            clusters: clusters.clone(),
            listeners: listeners.iter().map(|(l, _)| l.clone()).collect(),
            started,
        });
        tracing::info!(address = %socket.local_addr()?, "admin listening: /metrics /healthz /status");
        tokio::spawn(admin::serve(admin, socket, stop.clone()));
    }
    let listener_tasks = TaskTracker::new();
    for (listener, socket) in listeners {
        tracing::info!("{}", crate::listener::describe(&listener.config));
        listener_tasks.spawn(listener.serve(
            socket,
            stop.clone(),
            close_sessions.clone(),
            tracker.clone(),
        ));
    }
    listener_tasks.close();

    let mut signals = Signals::new()?;
    signals.next().await;
    stop.cancel();
    listener_tasks.wait().await;
    tracker.close();
    let grace = config.shutdown_grace;
    if !tracker.is_empty() {
        tracing::info!(sessions = tracker.len(), grace = %humantime::format_duration(grace),
            "stopped accepting; waiting for sessions to finish (signal again to close them now)");
    }
    let finished = tokio::select! {
        _ = tracker.wait() => true,
        _ = tokio::time::sleep(grace) => false,
        _ = signals.next() => false,
    };
    if !finished {
        tracing::info!(sessions = tracker.len(), "closing the remaining sessions");
        close_sessions.cancel();
        let _ = tokio::time::timeout(CLOSE_WAIT, tracker.wait()).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, either of which asks tether to stop.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        let name = tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    }
}
