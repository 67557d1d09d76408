//! Runs a validated configuration: clusters, listeners and the admin listener, until SIGTERM or
//! SIGINT; then stops accepting, lets sessions finish within the grace period, and returns.
//! SIGHUP (or `POST /reload` on the admin listener, which `tether reload` sends) reads the file
//! again and applies it without dropping a session (see [`Running::reload`]). A new process
//! may take over instead, listening sockets and sessions (see [`takeover`] and
//! [`crate::takeover`]); SIGUSR2 starts one.

mod takeover;

use crate::admin::{self, Admin, ReloadRequest, View};
use crate::cluster::Cluster;
use crate::cluster::discovery::dns;
use crate::config::Config;
use crate::listener::Listener;
use crate::rebalance::ClusterRebalance;
use crate::tls;
use anyhow::Context as _;
use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long startup waits for DNS before serving with the nodes it has.
const DISCOVERY_STARTUP_WAIT: Duration = Duration::from_secs(5);
/// Sessions told to close after the grace period get this long to do so.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Serves `config` (read from `path`, which a reload reads again) until SIGTERM or SIGINT, or
/// until a new process takes over. With `take_over`, takes over from the process running now
/// (see [`crate::takeover`]).
pub async fn run(config: Config, path: PathBuf, take_over: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    takeover::remember_executable();
    let prometheus = crate::metrics::install()?;
    takeover::register_metrics();
    let mut signals = Signals::new()?;
    let socket_path = config.takeover.socket_for(&path);
    let mut running = Running::prepare(config).await?;
    let (taking, mut inherited) = match take_over {
        true => {
            let (taking, inherited) = takeover::Taking::begin(&socket_path).await?;
            (Some(taking), inherited)
        }
        false => (None, takeover::Inherited::default()),
    };
    let admin_socket = match &running.config.admin {
        Some(admin) => Some(match inherited.admin.take() {
            Some(socket) if socket.local_addr().ok() == Some(admin.listen) => {
                TcpListener::from_std(socket)?
            }
            _ => TcpListener::bind(admin.listen)
                .await
                .with_context(|| format!("admin: cannot bind {}", admin.listen))?,
        }),
        None => None,
    };
    if let Some(socket) = &admin_socket {
        use std::os::fd::AsFd;
        running.admin_fd = Some(socket.as_fd().try_clone_to_owned()?);
    }
    for (name, nodes) in std::mem::take(&mut inherited.drained) {
        match running.clusters.get(&name) {
            Some(cluster) => cluster.keep_drained(&nodes),
            None => tracing::warn!(cluster = %name, ?nodes,
                "takeover: the old process had drained nodes of a cluster this config does not have"),
        }
    }
    running.listen(&mut inherited)?;
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    if let Some(socket) = admin_socket {
        let admin = Arc::new(Admin {
            prometheus,
            view: running.view.clone(),
            started,
            reload: reload_tx,
        });
        tracing::info!(address = %socket.local_addr()?,
            "admin listening: /metrics /healthz /status, POST /reload");
        tokio::spawn(admin::serve(admin, socket, running.stop.clone()));
    }

    if let Some(taking) = taking {
        taking.run(&running).await;
    }
    let mut takeovers = takeover::listen(&socket_path, take_over);
    crate::takeover::notify_ready(take_over);

    let mut taken_over = false;
    loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Received::Stop => break,
                Received::Reload => {
                    let _ = running.reload_from(&path).await;
                }
                Received::Upgrade => takeover::start_successor(),
            },
            Some(request) = reload_rx.recv() => {
                let outcome = running.reload_from(&path).await;
                let _ = request.reply.send(outcome);
            }
            Some(stream) = async { takeovers.as_mut()?.next().await } => {
                if running.hand_over(stream).await {
                    taken_over = true;
                    break;
                }
                if let Some(takeovers) = &takeovers {
                    takeovers.done();
                }
            }
        }
    }
    if taken_over {
        running.close_now().await;
        tracing::info!("stopped: taken over");
        return Ok(());
    }
    running.shut_down(&mut signals).await;
    tracing::info!("stopped");
    Ok(())
}

/// A listener that is accepting, and how to stop it and get its socket back.
struct Serving {
    listener: Arc<Listener>,
    stop: CancellationToken,
    /// Cancelled when a takeover's new process accepts on the socket instead.
    pause: CancellationToken,
    task: JoinHandle<TcpListener>,
    /// The listening socket, for a takeover to hand over.
    fd: std::os::fd::OwnedFd,
}

/// What is running now, and what a reload changes.
struct Running {
    config: Config,
    resolver: Option<TokioResolver>,
    clusters: BTreeMap<String, Arc<Cluster>>,
    /// Each cluster's rebalancing (settings, pace, moves), shared by its listeners.
    rebalancing: BTreeMap<String, Arc<ClusterRebalance>>,
    listeners: BTreeMap<String, Serving>,
    /// Listeners a reload removed whose sessions still run.
    draining: Vec<Arc<Listener>>,
    /// What the admin listener shows.
    view: Arc<ArcSwap<View>>,
    /// Cancelled at shutdown: every listener stops accepting, every cluster stops.
    stop: CancellationToken,
    /// Cancelled when the grace period is over: sessions close.
    close_sessions: CancellationToken,
    sessions: TaskTracker,
    /// Listeners whose sockets a takeover under way handed to the new process.
    paused: BTreeMap<String, Arc<Listener>>,
    /// The admin listener's socket, for a takeover to hand over.
    admin_fd: Option<std::os::fd::OwnedFd>,
    /// TLS material read at start for the listeners to come (see [`Running::listen`]).
    tls: Option<tls::Material>,
}

/// Only endpoints that a listener forwards to are health-checked.
fn monitored_endpoints(config: &Config) -> BTreeMap<String, BTreeSet<String>> {
    let mut monitored: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for listener in &config.listeners {
        monitored
            .entry(listener.cluster.clone())
            .or_default()
            .insert(listener.endpoint().to_string());
    }
    monitored
}

fn needs_dns(config: &Config) -> bool {
    config
        .clusters
        .iter()
        .any(|c| !c.hosts.is_empty() || c.dns_srv.is_some())
}

impl Running {
    /// Starts the clusters and waits (a little) for their discovery: what a process does
    /// before it takes listening sockets over.
    async fn prepare(config: Config) -> anyhow::Result<Running> {
        let resolver = if needs_dns(&config) {
            Some(dns::resolver(&config.dns).context("cannot set up the DNS resolver")?)
        } else {
            None
        };
        let mut tls = tls::Material::load(&config).map_err(anyhow::Error::msg)?;
        for warning in tls.warnings() {
            tracing::warn!("{warning}");
        }
        let stop = CancellationToken::new();
        let mut monitored = monitored_endpoints(&config);
        let clusters: BTreeMap<String, Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|c| {
                let endpoints = monitored.remove(&c.name).unwrap_or_default();
                let connector = tls.clusters.remove(&c.name);
                let cluster = Cluster::start(c, connector, endpoints, resolver.as_ref(), &stop);
                (c.name.clone(), cluster)
            })
            .collect();
        let rebalancing: BTreeMap<String, Arc<ClusterRebalance>> = config
            .clusters
            .iter()
            .map(|c| (c.name.clone(), ClusterRebalance::new(c)))
            .collect();

        for cluster in clusters.values() {
            if !cluster.ready(DISCOVERY_STARTUP_WAIT).await {
                tracing::warn!(cluster = %cluster.name, "discovery has not answered yet; serving with the nodes known so far");
            }
        }
        Ok(Running {
            config,
            resolver,
            clusters,
            rebalancing,
            listeners: BTreeMap::new(),
            draining: Vec::new(),
            view: Arc::new(ArcSwap::from_pointee(View::default())),
            stop,
            close_sessions: CancellationToken::new(),
            sessions: TaskTracker::new(),
            paused: BTreeMap::new(),
            admin_fd: None,
            tls: Some(tls),
        })
    }

    /// Binds every listener (or takes the socket a takeover inherited for it) and serves.
    /// Every port is bound before anything is served, so a taken port fails startup whole.
    fn listen(&mut self, inherited: &mut takeover::Inherited) -> anyhow::Result<()> {
        self.config.limits.apply();
        let budget = crate::budget::Budget::process();
        tracing::info!(
            max_sessions = budget.max_sessions(),
            max_unconfirmed_bytes = budget.max_held_bytes(),
            "process limits"
        );
        let mut tls = self.tls.take().unwrap_or_default();
        let mut bound = Vec::new();
        for listener_config in &self.config.listeners {
            let cluster = self
                .clusters
                .get(&listener_config.cluster)
                .context("listener names an unknown cluster")?
                .clone();
            let rebalance = self.rebalancing[&listener_config.cluster].clone();
            let acceptor = tls.listeners.remove(&listener_config.name);
            let listener = Listener::new(listener_config.clone(), acceptor, cluster, rebalance);
            let socket = match inherited.sockets.remove(&listener_config.name) {
                Some(socket) if socket.local_addr().ok() == Some(listener_config.bind) => {
                    TcpListener::from_std(socket)?
                }
                _ => listener.bind().with_context(|| {
                    format!(
                        "listener {}: cannot bind {}",
                        listener_config.name, listener_config.bind
                    )
                })?,
            };
            bound.push((listener, socket));
        }
        for (listener, socket) in bound {
            self.serve(listener, socket);
        }
        self.publish();
        Ok(())
    }

    fn serve(&mut self, listener: Arc<Listener>, socket: TcpListener) {
        tracing::info!("{}", crate::listener::describe(&listener.config));
        let fd = {
            use std::os::fd::AsFd;
            match socket.as_fd().try_clone_to_owned() {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::error!(listener = %listener.config.name, error = %e, "cannot keep the listening socket; not serving it");
                    return;
                }
            }
        };
        let stop = self.stop.child_token();
        let pause = CancellationToken::new();
        if listener.config.protocol() != crate::config::Protocol::Tcp {
            // Protocol-aware sessions can move at a safe point (opaque tcp ones cannot); the
            // task idles unless the cluster has `rebalance` on.
            tokio::spawn(crate::rebalance::run(listener.clone(), stop.clone()));
        }
        let task = tokio::spawn(listener.clone().serve(
            socket,
            stop.clone(),
            pause.clone(),
            self.close_sessions.clone(),
            self.sessions.clone(),
        ));
        self.listeners.insert(
            listener.config.name.clone(),
            Serving {
                listener,
                stop,
                pause,
                task,
                fd,
            },
        );
    }

    /// Makes what the admin listener shows match what runs.
    fn publish(&mut self) {
        self.draining.retain(|l| l.active_sessions() > 0);
        self.view.store(Arc::new(View {
            clusters: self.clusters.values().cloned().collect(),
            listeners: self
                .listeners
                .values()
                .map(|s| s.listener.clone())
                .chain(self.draining.iter().cloned())
                .collect(),
        }));
    }

    /// Reads `path` again and applies it; an invalid file changes nothing. Returns what changed,
    /// or why nothing did, for `tether reload` to print.
    async fn reload_from(&mut self, path: &std::path::Path) -> Result<String, String> {
        tracing::info!(path = %path.display(), "reloading the configuration");
        let outcome = match Config::load(path) {
            Ok(config) => self.reload(config).await,
            Err(e) => Err(format!("{}: {e}", path.display())),
        };
        match &outcome {
            Ok(summary) => tracing::info!(changes = %summary, "configuration reloaded"),
            Err(e) => tracing::error!(error = %e,
                "configuration not reloaded; the running configuration stays"),
        }
        self.publish();
        outcome
    }

    /// Applies a new, valid configuration:
    /// - clusters that stay are changed in place (balance, connect timeout, health settings,
    ///   static nodes, DNS sources): nodes that stay keep their health and sessions, new nodes
    ///   get sessions once their checks pass, removed nodes get no new sessions while the
    ///   sessions on them run on;
    /// - listeners whose settings are unchanged keep accepting; new ones bind; removed ones stop
    ///   accepting and drain (their sessions run until the clients leave); changed ones are a
    ///   removal and an addition, and keep their socket when the address stays, so no
    ///   connection attempt is refused meanwhile;
    /// - a new port that cannot be bound rejects the whole reload before anything changes;
    /// - every TLS file is read again, so rotated certificates serve new connections (open
    ///   ones keep theirs); a file that cannot be read rejects the whole reload.
    ///
    /// `admin.listen` and `shutdown_grace` take effect at the next start and at shutdown.
    async fn reload(&mut self, new: Config) -> Result<String, String> {
        let mut changes = Vec::new();
        if new.admin != self.config.admin {
            changes.push("admin: the new admin address takes effect at the next start".into());
        }
        if new.threads != self.config.threads {
            changes.push("threads: takes effect at the next start".into());
        }
        let mut tls = tls::Material::load(&new).map_err(|e| format!("{e}; nothing was changed"))?;
        for warning in tls.warnings() {
            tracing::warn!("{warning}");
        }
        let dns_changed = new.dns != self.config.dns;
        let resolver = if needs_dns(&new) && (dns_changed || self.resolver.is_none()) {
            Some(dns::resolver(&new.dns).map_err(|e| format!("dns: cannot set it up: {e}"))?)
        } else {
            None
        };

        // Listeners to stop, start, and the sockets the started ones need.
        let kept: BTreeSet<String> = new
            .listeners
            .iter()
            .filter(|l| {
                self.listeners
                    .get(&l.name)
                    .is_some_and(|s| s.listener.config == **l)
            })
            .map(|l| l.name.clone())
            .collect();
        let stopping: Vec<String> = self
            .listeners
            .keys()
            .filter(|name| !kept.contains(*name))
            .cloned()
            .collect();
        let reusable: BTreeSet<SocketAddr> = stopping
            .iter()
            .map(|name| self.listeners[name].listener.config.bind)
            .collect();
        let mut fresh: BTreeMap<String, TcpListener> = BTreeMap::new();
        for listener in new.listeners.iter().filter(|l| !kept.contains(&l.name)) {
            if reusable.contains(&listener.bind) {
                continue;
            }
            let socket = crate::listener::bind(listener.bind).map_err(|e| {
                format!(
                    "listener {}: cannot bind {}: {e}; nothing was changed",
                    listener.name, listener.bind
                )
            })?;
            fresh.insert(listener.name.clone(), socket);
        }

        // Clusters: new ones start, remaining ones change in place. Removed ones stop once
        // their listeners have.
        if let Some(resolver) = resolver {
            self.resolver = Some(resolver);
        }
        let mut monitored = monitored_endpoints(&new);
        for cluster_config in &new.clusters {
            let endpoints = monitored.remove(&cluster_config.name).unwrap_or_default();
            let connector = tls.clusters.remove(&cluster_config.name);
            match self.clusters.get(&cluster_config.name) {
                Some(cluster) => {
                    if cluster.set_tls(connector) {
                        changes.push(format!("cluster {}: TLS re-read", cluster_config.name));
                    }
                    let old = self
                        .config
                        .clusters
                        .iter()
                        .find(|c| c.name == cluster_config.name);
                    let old_endpoints = monitored_endpoints(&self.config)
                        .remove(&cluster_config.name)
                        .unwrap_or_default();
                    if old != Some(cluster_config) || old_endpoints != endpoints || dns_changed {
                        cluster.reconfigure(
                            cluster_config,
                            endpoints,
                            self.resolver.as_ref(),
                            dns_changed,
                        );
                        if let Some(rebalance) = self.rebalancing.get(&cluster_config.name) {
                            rebalance.configure(cluster_config);
                        }
                        changes.push(format!("cluster {}: reconfigured", cluster_config.name));
                    }
                }
                None => {
                    let cluster = Cluster::start(
                        cluster_config,
                        connector,
                        endpoints,
                        self.resolver.as_ref(),
                        &self.stop,
                    );
                    self.clusters.insert(cluster_config.name.clone(), cluster);
                    self.rebalancing.insert(
                        cluster_config.name.clone(),
                        ClusterRebalance::new(cluster_config),
                    );
                    changes.push(format!("cluster {}: added", cluster_config.name));
                }
            }
        }

        for name in &kept {
            if self.listeners[name]
                .listener
                .set_tls(tls.listeners.remove(name))
            {
                changes.push(format!("listener {name}: TLS certificates re-read"));
            }
        }

        // Stop accepting on removed and changed listeners; keep their sockets for reuse.
        let mut released: BTreeMap<SocketAddr, TcpListener> = BTreeMap::new();
        for name in &stopping {
            let Some(serving) = self.listeners.remove(name) else {
                continue;
            };
            serving.stop.cancel();
            match serving.task.await {
                Ok(socket) => {
                    released.insert(serving.listener.config.bind, socket);
                }
                Err(e) => tracing::warn!(listener = %name, error = %e, "listener task failed"),
            }
            if !new.listeners.iter().any(|l| l.name == *name) {
                changes.push(format!(
                    "listener {name}: removed; its {} sessions drain",
                    serving.listener.active_sessions()
                ));
            }
            self.draining.push(serving.listener);
        }
        for listener_config in new.listeners.iter().filter(|l| !kept.contains(&l.name)) {
            let socket = match fresh.remove(&listener_config.name) {
                Some(socket) => socket,
                None => match released.remove(&listener_config.bind) {
                    Some(socket) => socket,
                    // Only if a listener task died: bind again.
                    None => crate::listener::bind(listener_config.bind).map_err(|e| {
                        format!(
                            "listener {}: cannot bind {}: {e}",
                            listener_config.name, listener_config.bind
                        )
                    })?,
                },
            };
            let cluster = self.clusters[&listener_config.cluster].clone();
            let verb = if stopping.contains(&listener_config.name) {
                "restarted with its new settings (open sessions keep the old ones)"
            } else {
                "added"
            };
            changes.push(format!("listener {}: {verb}", listener_config.name));
            let rebalance = self.rebalancing[&listener_config.cluster].clone();
            let acceptor = tls.listeners.remove(&listener_config.name);
            self.serve(
                Listener::new(listener_config.clone(), acceptor, cluster, rebalance),
                socket,
            );
        }

        let dropped: Vec<String> = self
            .clusters
            .keys()
            .filter(|name| !new.clusters.iter().any(|c| c.name == **name))
            .cloned()
            .collect();
        for name in dropped {
            self.rebalancing.remove(&name);
            if let Some(cluster) = self.clusters.remove(&name) {
                cluster.shut_down();
                changes.push(format!("cluster {name}: removed"));
            }
        }
        if new.limits != self.config.limits {
            new.limits.apply();
            changes.push("limits: changed".into());
        }
        if changes.is_empty() {
            changes.push("nothing changed".into());
        }
        self.config = new;
        Ok(changes.join("; "))
    }

    /// After a takeover: what is still here (sessions that could not be handed over) closes
    /// now; they had the takeover's grace.
    async fn close_now(self) {
        self.stop.cancel();
        for (_, serving) in self.listeners {
            let _ = serving.task.await;
        }
        let tracker = self.sessions;
        tracker.close();
        if !tracker.is_empty() {
            tracing::info!(
                sessions = tracker.len(),
                "closing the sessions that were not handed over"
            );
        }
        self.close_sessions.cancel();
        let _ = tokio::time::timeout(CLOSE_WAIT, tracker.wait()).await;
    }

    /// Stops accepting, lets sessions finish within the grace period (or until a second
    /// signal), then closes what is left.
    async fn shut_down(self, signals: &mut Signals) {
        self.stop.cancel();
        for (_, serving) in self.listeners {
            let _ = serving.task.await;
        }
        let tracker = self.sessions;
        tracker.close();
        let grace = self.config.shutdown_grace;
        if !tracker.is_empty() {
            tracing::info!(sessions = tracker.len(), grace = %humantime::format_duration(grace),
                "stopped accepting; waiting for sessions to finish (signal again to close them now)");
        }
        let finished = tokio::select! {
            _ = tracker.wait() => true,
            _ = tokio::time::sleep(grace) => false,
            _ = signals.next_stop() => false,
        };
        if !finished {
            tracing::info!(sessions = tracker.len(), "closing the remaining sessions");
            self.close_sessions.cancel();
            let _ = tokio::time::timeout(CLOSE_WAIT, tracker.wait()).await;
        }
    }
}

/// What a signal asks for.
enum Received {
    Stop,
    Reload,
    /// SIGUSR2: start a new process from the binary on disk to take over from this one.
    Upgrade,
}

/// SIGTERM and SIGINT, either of which asks tether to stop, and SIGHUP, which asks it to reload.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
    upgrade: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            upgrade: signal(SignalKind::user_defined2())?,
        })
    }

    async fn next(&mut self) -> Received {
        let name = tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.hangup.recv() => {
                tracing::info!(signal = "SIGHUP", "reload asked");
                return Received::Reload;
            }
            _ = self.upgrade.recv() => {
                tracing::info!(signal = "SIGUSR2", "takeover by a new process asked");
                return Received::Upgrade;
            }
        };
        tracing::info!(signal = name, "shutting down");
        Received::Stop
    }

    /// The next SIGTERM or SIGINT; a SIGHUP or SIGUSR2 while shutting down is ignored.
    async fn next_stop(&mut self) {
        while !matches!(self.next().await, Received::Stop) {
            tracing::info!("shutting down: not reloading or taking over");
        }
    }
}
