//! A listener: binds its address, accepts client connections (at most `max_sessions` at once)
//! and hands each to the session type its protocol names.

use crate::cluster::Cluster;
use crate::config::{ListenerConfig, Protocol, SessionSettings};
use crate::metrics::names;
use crate::pool::Pool;
use crate::session;
use crate::session::failover::FailoverReason;
use crate::tls::{Acceptor, Stream, Swappable};
use metrics::{Counter, Gauge, Histogram};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every session of a listener shares.
pub struct Listener {
    pub config: ListenerConfig,
    /// The protocol-aware sessions' settings, defaults filled in.
    pub session: SessionSettings,
    pub cluster: Arc<Cluster>,
    /// The cluster's rebalancing (pace, on or off, moves done), shared with its other
    /// listeners.
    pub rebalance: Arc<crate::rebalance::ClusterRebalance>,
    pub metrics: ListenerMetrics,
    active: AtomicUsize,
    /// A reload removed or replaced it: it accepts no more sessions.
    draining: AtomicBool,
    /// Its sessions as rebalancing sees them.
    pub sessions: Arc<crate::rebalance::Registry>,
    /// The most recent completed failover of one of its sessions, for `/status`.
    last_failover: Mutex<Option<FailoverRecord>>,
    /// Clients connect over TLS with this (`None`: plain TCP); a reload swaps it when the
    /// certificate files change.
    tls: Swappable<Acceptor>,
    /// Warm node connections for AMQP clients that connect per request (`None`: pooling off).
    pub amqp_pool: Option<Arc<crate::session::amqp::pooled::Pooling>>,
    /// The same for STOMP clients.
    pub stomp_pool: Option<Arc<crate::pool::Pool<crate::session::stomp::pooled::Warm>>>,
}

/// A completed failover, as `/status` shows it.
#[derive(Clone, Debug)]
pub struct FailoverRecord {
    /// When the session ran again on its new node.
    pub at: SystemTime,
    pub reason: FailoverReason,
    pub from: String,
    pub to: String,
    pub took: Duration,
}

/// Per-listener metric handles, registered once so the session path only touches atomics.
pub struct ListenerMetrics {
    listener: String,
    pub sessions: Gauge,
    pub sessions_total: Counter,
    pub bytes_from_client: Counter,
    pub bytes_to_client: Counter,
    pub stale_acks: Counter,
    /// Questions asked of quiet nodes (see `session::liveness`).
    pub liveness_questions: Counter,
    pub unconfirmed: Gauge,
    pub failover_duration: Histogram,
}

impl ListenerMetrics {
    fn new(listener: &str) -> ListenerMetrics {
        let name = listener.to_string();
        ListenerMetrics {
            listener: name.clone(),
            stale_acks: metrics::counter!(names::STALE_ACKS_DROPPED_TOTAL, "listener" => name.clone()),
            liveness_questions: metrics::counter!(names::LIVENESS_QUESTIONS_TOTAL, "listener" => name.clone()),
            unconfirmed: metrics::gauge!(names::UNCONFIRMED, "listener" => name.clone()),
            failover_duration: metrics::histogram!(names::FAILOVER_DURATION_SECONDS, "listener" => name.clone()),
            sessions: metrics::gauge!(names::SESSIONS, "listener" => name.clone()),
            sessions_total: metrics::counter!(names::SESSIONS_TOTAL, "listener" => name.clone()),
            bytes_from_client: metrics::counter!(names::BYTES_TOTAL,
                "listener" => name.clone(), "direction" => "from_client"),
            bytes_to_client: metrics::counter!(names::BYTES_TOTAL,
                "listener" => name, "direction" => "to_client"),
        }
    }
}

impl ListenerMetrics {
    /// A failover started.
    pub fn failover(&self, reason: FailoverReason) {
        metrics::counter!(names::FAILOVERS_TOTAL, "listener" => self.listener.clone(), "reason" => reason.label())
            .increment(1);
    }

    /// A client's TLS handshake: `None` when it succeeded, the failure's label when not.
    pub fn client_tls(&self, failure: Option<&'static str>) {
        metrics::counter!(names::CLIENT_TLS_HANDSHAKES_TOTAL,
            "listener" => self.listener.clone(), "result" => failure.unwrap_or("ok"))
        .increment(1);
    }

    /// What a failover re-sent to the new node, by kind.
    pub fn replayed(&self, kind: &'static str, count: usize) {
        if count > 0 {
            metrics::counter!(names::REPLAYED_TOTAL, "listener" => self.listener.clone(), "kind" => kind)
                .increment(count as u64);
        }
    }
}

/// Counts a session as active for as long as it lives.
pub struct ActiveSession {
    listener: Arc<Listener>,
    _process: crate::budget::SessionSlot,
}

impl ActiveSession {
    fn new(listener: Arc<Listener>) -> ActiveSession {
        listener.active.fetch_add(1, Ordering::AcqRel);
        listener.metrics.sessions.increment(1.0);
        ActiveSession {
            listener,
            _process: crate::budget::Budget::process().session(),
        }
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.listener.active.fetch_sub(1, Ordering::AcqRel);
        self.listener.metrics.sessions.decrement(1.0);
    }
}

/// Room for bursts of connects (a fleet of clients reconnecting at once).
const ACCEPT_BACKLOG: u32 = 4096;

impl Listener {
    pub fn new(
        config: ListenerConfig,
        tls: Option<Arc<Acceptor>>,
        cluster: Arc<Cluster>,
        rebalance: Arc<crate::rebalance::ClusterRebalance>,
    ) -> Arc<Listener> {
        let metrics = ListenerMetrics::new(&config.name);
        let settings = config.session();
        let pooled = settings.pool.max_idle > 0;
        let (mut amqp_pool, mut stomp_pool) = (None, None);
        match config.protocol() {
            Protocol::Amqp if pooled || settings.pool.multiplex => {
                let pool = Pool::new(
                    settings.pool,
                    &config.name,
                    config.endpoint(),
                    cluster.clone(),
                );
                let shared = settings.pool.multiplex.then(|| {
                    crate::session::amqp::shared::Multiplex::new(
                        &settings.pool,
                        &config.name,
                        config.endpoint(),
                        cluster.clone(),
                    )
                });
                amqp_pool = Some(Arc::new(crate::session::amqp::pooled::Pooling::new(
                    pool, shared,
                )));
            }
            Protocol::Stomp if pooled => {
                let pool = Pool::new(
                    settings.pool,
                    &config.name,
                    config.endpoint(),
                    cluster.clone(),
                );
                stomp_pool = Some(pool);
            }
            _ => {}
        }
        Arc::new(Listener {
            amqp_pool,
            stomp_pool,
            session: settings,
            config,
            cluster,
            rebalance,
            metrics,
            active: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            sessions: Arc::default(),
            last_failover: Mutex::new(None),
            tls: Arc::new(arc_swap::ArcSwapOption::new(tls)),
        })
    }

    /// Puts the certificates a reload read in place for the clients that connect from now
    /// on; connected ones keep their TLS session. Returns whether they changed.
    pub fn set_tls(&self, tls: Option<Arc<Acceptor>>) -> bool {
        let changed = crate::tls::swap(&self.tls, tls);
        if changed {
            tracing::info!(listener = %self.config.name, "TLS certificates re-read");
        }
        changed
    }

    /// Runs the TLS handshake with a client that just connected, if the listener serves
    /// TLS, within the client handshake timeout. `None`: the client is gone.
    async fn secure(&self, client: tokio::net::TcpStream, span: &tracing::Span) -> Option<Stream> {
        let Some(acceptor) = self.tls.load_full() else {
            return Some(Stream::Plain(client));
        };
        let limit = self.session.client_handshake_timeout;
        let failure = match tokio::time::timeout(limit, acceptor.accept(client)).await {
            Ok(Ok(stream)) => {
                self.metrics.client_tls(None);
                return Some(stream);
            }
            Ok(Err(failure)) => failure,
            Err(_) => crate::tls::HandshakeFailure::Other(format!(
                "no TLS handshake within {}",
                humantime::format_duration(limit)
            )),
        };
        self.metrics.client_tls(Some(failure.label()));
        // Debug, not info: a scanner on a non-loopback bind would flood the log; the metric counts.
        tracing::debug!(parent: span, error = %failure, "client TLS handshake failed; closing");
        None
    }

    /// A session of this listener runs on `to` again, `took` after `from` failed. Called once
    /// per failover (not on the hot path), so the lock is never contended for long.
    pub fn failover_done(&self, reason: FailoverReason, from: &str, to: &str, took: Duration) {
        let record = FailoverRecord {
            at: SystemTime::now(),
            reason,
            from: from.to_string(),
            to: to.to_string(),
            took,
        };
        *self.last_failover.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }

    pub fn last_failover(&self) -> Option<FailoverRecord> {
        self.last_failover
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The listener takes no more sessions: its open ones drain, its pool closes.
    fn stop_accepting(&self) {
        self.draining.store(true, Ordering::Relaxed);
        if let Some(pooling) = &self.amqp_pool {
            pooling.close();
        }
        if let Some(pool) = &self.stomp_pool {
            pool.close();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn active_sessions(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Runs a session another tether process handed over, counted as this listener's.
    pub fn adopt(
        self: &Arc<Self>,
        image: serde_json::Value,
        fds: Vec<std::os::fd::OwnedFd>,
        close_sessions: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<(), String> {
        let client = fds.first().ok_or("no client socket came with it")?;
        let client_addr = client
            .try_clone()
            .map(std::net::TcpStream::from)
            .and_then(|c| c.peer_addr())
            .map_err(|e| format!("its client socket: {e}"))?;
        let context = session::Context {
            span: session::span(self, client_addr),
            listener: self.clone(),
            client_addr,
            close: close_sessions.clone(),
        };
        let session = session::resume(context, image, fds)?;
        let active = ActiveSession::new(self.clone());
        tracker.spawn(async move {
            session.await;
            drop(active);
        });
        Ok(())
    }

    pub fn bind(&self) -> io::Result<TcpListener> {
        bind(self.config.bind)
    }

    /// Accepts until `stop` is cancelled, then gives the socket back (a reload may hand it to
    /// the listener's successor). Sessions run on `tracker`; `close_sessions` is cancelled when
    /// the shutdown grace period is over.
    pub async fn serve(
        self: Arc<Self>,
        socket: TcpListener,
        stop: CancellationToken,
        pause: CancellationToken,
        close_sessions: CancellationToken,
        tracker: TaskTracker,
    ) -> TcpListener {
        let permits = Arc::new(Semaphore::new(self.config.max_sessions));
        let budget = crate::budget::Budget::process();
        // A listener at its cap under churn would say so once per accept.
        let mut said = crate::budget::Quiet::default();
        loop {
            if permits.available_permits() == 0 {
                crate::budget::reached("max_sessions");
                said.then(|| tracing::warn!(listener = %self.config.name, max_sessions = self.config.max_sessions,
                    "the listener holds max_sessions sessions; new clients wait in the backlog"));
            }
            let permit = tokio::select! {
                _ = pause.cancelled() => return socket,
                _ = stop.cancelled() => {
                    self.stop_accepting();
                    return socket;
                }
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return socket,
                },
            };
            if budget.sessions_full() {
                crate::budget::reached("process_max_sessions");
                said.then(|| tracing::warn!(listener = %self.config.name, max_sessions = budget.max_sessions(),
                    "the process holds [limits] max_sessions sessions; new clients wait in the backlog"));
                while budget.sessions_full() {
                    tokio::select! {
                        _ = pause.cancelled() => return socket,
                        _ = stop.cancelled() => {
                            self.stop_accepting();
                            return socket;
                        }
                        _ = tokio::time::sleep(crate::budget::RECHECK) => {}
                    }
                }
            }
            let accepted = tokio::select! {
                _ = pause.cancelled() => return socket,
                _ = stop.cancelled() => {
                    self.stop_accepting();
                    return socket;
                }
                accepted = socket.accept() => accepted,
            };
            let (client, client_addr) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if let Some(pause) = accept_error_pause(&e) {
                        tracing::warn!(listener = %self.config.name, error = %e,
                            "cannot accept connections; pausing {}ms", pause.as_millis());
                        tokio::time::sleep(pause).await;
                    }
                    continue;
                }
            };
            self.metrics.sessions_total.increment(1);
            let active = ActiveSession::new(self.clone());
            let context = session::Context {
                span: session::span(&self, client_addr),
                listener: self.clone(),
                client_addr,
                close: close_sessions.clone(),
            };
            let listener = self.clone();
            tracker.spawn(async move {
                // Boxed: a TLS handshake's state is not kept for the session's life.
                if let Some(client) = Box::pin(listener.secure(client, &context.span)).await {
                    session::serve(context, client).await;
                }
                drop(active);
                drop(permit);
            });
        }
    }
}

/// A listening socket on `addr`, with SO_REUSEADDR so that a restart binds at once.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Out of file descriptors or memory: accepting again at once would spin. Errors about one
/// connection (it was reset before we took it) need no pause.
fn accept_error_pause(error: &io::Error) -> Option<Duration> {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    match error.raw_os_error() {
        Some(EMFILE | ENFILE | ENOBUFS | ENOMEM) => Some(Duration::from_millis(100)),
        _ => None,
    }
}

pub fn describe(config: &ListenerConfig) -> String {
    format!(
        "listener {} on {} ({}{}) -> cluster {}, endpoint {} (at most {} sessions)",
        config.name,
        config.bind,
        config.protocol(),
        match &config.tls {
            Some(tls) if tls.client_ca_file.is_some() => " over TLS, client certificates required",
            Some(_) => " over TLS",
            None => "",
        },
        config.cluster,
        config.endpoint(),
        config.max_sessions
    )
}
