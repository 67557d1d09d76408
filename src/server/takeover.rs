//! Both ends of a takeover (see [`crate::takeover`]): the running process hands its listening
//! sockets and its sessions over ([`Running::hand_over`]); a process started with
//! `--takeover` takes them ([`Taking`]).

use super::Running;
use crate::metrics::names;
use crate::takeover::channel::{self, Receiver, Sender};
use crate::takeover::{ADMIN, FORMAT, FORMATS_READ, Handed, Message, port};
use anyhow::{Context as _, bail};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long the old process waits for the new one's hello, and for it to be ready once it has
/// the listening sockets (it started its clusters before it connected).
const HELLO_WAIT: Duration = Duration::from_secs(10);
const READY_WAIT: Duration = Duration::from_secs(30);
/// How long the old process waits past the grace for answers to offers it made.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How often the old process looks whether it still holds a session.
const EMPTY_CHECK: Duration = Duration::from_millis(100);

/// Listening sockets a new process got from the old one, by listener name.
#[derive(Default)]
pub(super) struct Inherited {
    pub sockets: BTreeMap<String, std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
    /// The nodes the old process had drained, by cluster.
    pub drained: BTreeMap<String, BTreeSet<String>>,
}

/// New processes asking to take over, one at a time: a second one while a takeover runs is
/// refused.
pub(super) struct Takeovers {
    connections: mpsc::Receiver<UnixStream>,
    busy: Arc<AtomicBool>,
}

impl Takeovers {
    /// The next new process; the caller says [`Takeovers::done`] when it is through with it.
    pub async fn next(&mut self) -> Option<UnixStream> {
        self.connections.recv().await
    }

    /// The takeover failed: the next one may come.
    pub fn done(&self) {
        self.busy.store(false, Ordering::Release);
    }
}

/// Listens for takeovers on `path`. `replace`: the socket file is this process's now even
/// though the process it took over from still listens on its old one.
pub(super) fn listen(path: &Path, replace: bool) -> Option<Takeovers> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        tracing::warn!(path = %path.display(), error = %e, "takeover: cannot create the socket's directory; takeovers are off");
        return None;
    }
    if path.exists() {
        let in_use = std::os::unix::net::UnixStream::connect(path).is_ok();
        if in_use && !replace {
            tracing::warn!(path = %path.display(),
                "takeover: another tether listens on this socket; takeovers of this one are off (set [takeover] socket)");
            return None;
        }
        let _ = std::fs::remove_file(path);
    }
    let socket = match UnixListener::bind(path) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "takeover: cannot listen; takeovers are off");
            return None;
        }
    };
    // Sessions cross with their clients' credentials: only this user may connect.
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %path.display(), error = %e, "takeover: cannot restrict the socket; takeovers are off");
            return None;
        }
    }
    let (connections, receiver) = mpsc::channel(1);
    let busy = Arc::new(AtomicBool::new(false));
    let taken = busy.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else {
                tokio::time::sleep(EMPTY_CHECK).await;
                continue;
            };
            if taken.swap(true, Ordering::AcqRel) {
                tokio::spawn(refuse(stream, "a takeover is already under way"));
            } else if connections.send(stream).await.is_err() {
                return;
            }
        }
    });
    Some(Takeovers {
        connections: receiver,
        busy,
    })
}

async fn refuse(stream: UnixStream, reason: &str) {
    let (mut sender, mut receiver) = channel::split(stream);
    // Its hello first: a refusal sent before it is read would break its write, not answer it.
    let _ = tokio::time::timeout(HELLO_WAIT, receiver.recv()).await;
    let refused = Message::Refused {
        reason: reason.to_owned(),
    };
    let _ = sender.send(&refused, &[]).await;
}

/// Messages as the reading task passes them on.
type Inbox = mpsc::Receiver<io::Result<Option<(Message, Vec<OwnedFd>)>>>;

/// Reads messages on a task of its own (reading is not cancel-safe), for a `select!` loop.
fn reader(mut receiver: Receiver) -> Inbox {
    let (messages, inbox) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let message = receiver.recv().await;
            let last = !matches!(message, Ok(Some(_)));
            if messages.send(message).await.is_err() || last {
                return;
            }
        }
    });
    inbox
}

/// How a takeover from this process ended.
enum Outcome {
    /// Every session was offered (or the grace ran out): the new process runs the rest.
    Done,
    Failed(String),
}

impl Running {
    /// Every session this process holds (on listeners that serve or drain).
    fn sessions_held(&self) -> usize {
        let serving = self
            .listeners
            .values()
            .map(|s| s.listener.active_sessions());
        // A takeover under way paused the listeners: their sessions are still here.
        let paused = self.paused.values().map(|l| l.active_sessions());
        let draining = self.draining.iter().map(|l| l.active_sessions());
        serving.chain(paused).chain(draining).sum()
    }

    /// A new process asks to take over. Returns `true` when it has: this process then closes
    /// what it still holds and exits. On `false` everything here carries on as before.
    pub(super) async fn hand_over(&mut self, stream: UnixStream) -> bool {
        let started = Instant::now();
        let (mut sender, receiver) = channel::split(stream);
        let mut inbox = reader(receiver);
        let (formats, version, pid) = match tokio::time::timeout(HELLO_WAIT, inbox.recv()).await {
            Ok(Some(Ok(Some((
                Message::Hello {
                    formats,
                    version,
                    pid,
                },
                _,
            ))))) => (formats, version, pid),
            _ => {
                tracing::warn!("takeover: the new process did not say hello; ignored");
                return false;
            }
        };
        tracing::info!(pid, %version, "takeover: a new process asks to take over");
        if !(formats[0]..=formats[1]).contains(&FORMAT) {
            let reason = format!(
                "this tether ({VERSION}) writes hand-over format {FORMAT}; the new process reads formats {} to {}",
                formats[0], formats[1]
            );
            tracing::warn!(%reason, "takeover refused; carrying on");
            let _ = sender.send(&Message::Refused { reason }, &[]).await;
            return false;
        }
        if let Err(e) = self.send_listeners(&mut sender).await {
            tracing::warn!(error = %e, "takeover: cannot hand the listening sockets over; carrying on");
            return false;
        }
        match tokio::time::timeout(READY_WAIT, inbox.recv()).await {
            Ok(Some(Ok(Some((Message::Ready, _))))) => {}
            _ => {
                tracing::warn!("takeover: the new process did not get ready; carrying on");
                return false;
            }
        }
        // The new process accepts on the same sockets now.
        let paused = self.pause_listeners().await;
        let (outcome, handed) = self.offer_sessions(&mut sender, &mut inbox).await;
        let took = started.elapsed();
        match outcome {
            Outcome::Done => {
                let left = self.sessions_held() as u64;
                let counts: BTreeMap<String, u64> = (handed.iter())
                    .map(|(h, n)| (h.label().to_owned(), *n))
                    .collect();
                let done = Message::Done {
                    handed: counts.clone(),
                    left,
                };
                let _ = sender.send(&done, &[]).await;
                tracing::info!(pid, handed = ?counts, left, seconds = took.as_secs_f64(),
                    "takeover done: the new process serves; this one exits");
                true
            }
            Outcome::Failed(why) => {
                tracing::warn!(%why, handed = ?handed, seconds = took.as_secs_f64(),
                    "takeover failed; this process serves on with the sessions it still holds");
                for (name, socket) in paused {
                    if let Some(listener) = self.paused.remove(&name) {
                        self.serve(listener, socket);
                    }
                }
                false
            }
        }
    }

    async fn send_listeners(&self, sender: &mut Sender) -> io::Result<()> {
        let mut names = Vec::new();
        let mut fds = Vec::new();
        for (name, serving) in &self.listeners {
            names.push(name.clone());
            fds.push(serving.fd.try_clone()?);
        }
        if let Some(admin) = &self.admin_fd {
            names.push(ADMIN.to_owned());
            fds.push(admin.try_clone()?);
        }
        let drained = (self.clusters.iter())
            .map(|(name, cluster)| (name.clone(), cluster.drained_nodes()))
            .filter(|(_, nodes)| !nodes.is_empty())
            .collect();
        let listeners = Message::Listeners {
            format: FORMAT,
            version: VERSION.to_owned(),
            names,
            drained,
        };
        sender.send(&listeners, &fds).await
    }

    /// Stops accepting on every listener without draining it; returns the sockets, to serve
    /// again if the takeover fails.
    async fn pause_listeners(&mut self) -> Vec<(String, tokio::net::TcpListener)> {
        let mut paused = Vec::new();
        for (name, serving) in std::mem::take(&mut self.listeners) {
            serving.pause.cancel();
            match serving.task.await {
                Ok(socket) => paused.push((name.clone(), socket)),
                Err(e) => tracing::warn!(listener = %name, error = %e, "listener task failed"),
            }
            self.paused.insert(name, serving.listener);
        }
        paused
    }

    /// Asks every session to hand itself over and passes their offers on, until none is left
    /// here or the grace is over (offers already made are answered first).
    async fn offer_sessions(
        &mut self,
        sender: &mut Sender,
        inbox: &mut Inbox,
    ) -> (Outcome, BTreeMap<Handed, u64>) {
        let mut offers = port().open();
        let deadline = Instant::now() + self.config.takeover.grace;
        let mut pending: HashMap<u64, (oneshot::Sender<bool>, Handed)> = HashMap::new();
        let mut handed: BTreeMap<Handed, u64> = BTreeMap::new();
        let mut next_id = 0u64;
        let mut closing = false;
        let outcome = loop {
            tokio::select! {
                Some(offer) = offers.recv() => {
                    if closing {
                        let _ = offer.taken.send(false);
                        continue;
                    }
                    next_id += 1;
                    let session = Message::Session {
                        id: next_id,
                        listener: offer.listener,
                        handed: offer.handed,
                        image: offer.image,
                    };
                    if let Err(e) = sender.send(&session, &offer.fds).await {
                        let _ = offer.taken.send(false);
                        break Outcome::Failed(format!("cannot send a session: {e}"));
                    }
                    pending.insert(next_id, (offer.taken, offer.handed));
                }
                message = inbox.recv() => match message {
                    Some(Ok(Some((Message::Taken { id }, _)))) => {
                        if let Some((taken, how)) = pending.remove(&id) {
                            let _ = taken.send(true);
                            *handed.entry(how).or_default() += 1;
                        }
                    }
                    Some(Ok(Some((Message::NotTaken { id, reason }, _)))) => {
                        tracing::info!(%reason, "takeover: the new process did not take a session; it stays here");
                        if let Some((taken, _)) = pending.remove(&id) {
                            let _ = taken.send(false);
                        }
                    }
                    Some(Ok(Some((other, _)))) => {
                        break Outcome::Failed(format!("unexpected message: {other:?}"));
                    }
                    Some(Err(e)) => break Outcome::Failed(e.to_string()),
                    _ => break Outcome::Failed("the new process went away".into()),
                },
                _ = tokio::time::sleep(EMPTY_CHECK) => {
                    if pending.is_empty() && (closing || self.sessions_held() == 0) {
                        break Outcome::Done;
                    }
                }
                _ = tokio::time::sleep_until(deadline), if !closing => {
                    // Offers made are still answered; no new ones are taken.
                    closing = true;
                    port().close();
                }
                _ = tokio::time::sleep_until(deadline + ANSWER_WAIT) => {
                    break Outcome::Failed("the new process stopped answering".into());
                }
            }
        };
        port().close();
        // Sessions whose offer is unanswered carry on here (the new process never runs a
        // session it did not answer for).
        for (_, (taken, _)) in pending {
            let _ = taken.send(false);
        }
        (outcome, handed)
    }

    /// Runs a session the process this one took over from handed over.
    fn adopt(
        &self,
        listener: &str,
        image: serde_json::Value,
        fds: Vec<OwnedFd>,
    ) -> Result<(), String> {
        let serving =
            (self.listeners.get(listener)).ok_or_else(|| format!("no listener {listener} here"))?;
        serving
            .listener
            .adopt(image, fds, &self.close_sessions, &self.sessions)
    }
}

/// The new process's side: it has connected and holds the listening sockets.
pub(super) struct Taking {
    sender: Sender,
    inbox: Inbox,
    started: Instant,
}

impl Taking {
    /// Connects to the running process and gets its listening sockets. An error means no
    /// takeover happened and the running process serves on.
    pub(super) async fn begin(path: &Path) -> anyhow::Result<(Taking, Inherited)> {
        let started = Instant::now();
        let stream = UnixStream::connect(path).await.with_context(|| {
            format!(
                "takeover: no tether to take over from on {}",
                path.display()
            )
        })?;
        let (mut sender, receiver) = channel::split(stream);
        let mut inbox = reader(receiver);
        let hello = Message::Hello {
            formats: FORMATS_READ,
            version: VERSION.to_owned(),
            pid: std::process::id(),
        };
        sender
            .send(&hello, &[])
            .await
            .context("takeover: cannot say hello")?;
        let (names, fds, drained) = match tokio::time::timeout(READY_WAIT, inbox.recv()).await {
            Ok(Some(Ok(Some((
                Message::Listeners {
                    names,
                    version,
                    drained,
                    ..
                },
                fds,
            ))))) => {
                tracing::info!(old_version = %version, listeners = names.len(), "takeover: got the listening sockets");
                (names, fds, drained)
            }
            Ok(Some(Ok(Some((Message::Refused { reason }, _))))) => {
                bail!("takeover refused by the running tether: {reason}")
            }
            Ok(Some(Err(e))) => bail!("takeover: {e}"),
            Err(_) => bail!("takeover: the running tether did not answer"),
            _ => bail!("takeover: the running tether closed the conversation"),
        };
        if names.len() != fds.len() {
            bail!(
                "takeover: {} sockets came for {} listeners",
                fds.len(),
                names.len()
            );
        }
        let mut inherited = Inherited {
            drained,
            ..Inherited::default()
        };
        for (name, fd) in names.into_iter().zip(fds) {
            let socket = std::net::TcpListener::from(fd);
            socket.set_nonblocking(true)?;
            match name.as_str() {
                ADMIN => inherited.admin = Some(socket),
                _ => {
                    inherited.sockets.insert(name, socket);
                }
            }
        }
        let taking = Taking {
            sender,
            inbox,
            started,
        };
        Ok((taking, inherited))
    }

    /// Says ready, then runs each session the old process hands over, until it is done.
    pub(super) async fn run(mut self, running: &Running) {
        if let Err(e) = self.sender.send(&Message::Ready, &[]).await {
            tracing::warn!(error = %e, "takeover: the old process went away before any session came");
            return;
        }
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut left = None;
        let stall_after = stall_after();
        while let Some(message) = self.inbox.recv().await {
            if stall_after.is_some_and(|n| counts.values().sum::<u64>() >= n) {
                tracing::warn!("takeover: stalling, as TETHER_TAKEOVER_STALL_AFTER asks");
                std::future::pending::<()>().await;
            }
            let (id, listener, handed, image, fds) = match message {
                Ok(Some((
                    Message::Session {
                        id,
                        listener,
                        handed,
                        image,
                    },
                    fds,
                ))) => (id, listener, handed, image, fds),
                Ok(Some((Message::Done { left: l, .. }, _))) => {
                    left = Some(l);
                    break;
                }
                Ok(Some((other, _))) => {
                    tracing::warn!(?other, "takeover: unexpected message; ignored");
                    continue;
                }
                Ok(None) | Err(_) => break,
            };
            tracing::trace!(%listener, %image, "takeover: a session's image");
            let outcome = match running.adopt(&listener, image, fds) {
                Ok(()) => handed.label(),
                Err(reason) => {
                    tracing::warn!(%listener, %reason, "takeover: a session was not taken; it stays with the old process");
                    let _ = self
                        .sender
                        .send(&Message::NotTaken { id, reason }, &[])
                        .await;
                    "not_taken"
                }
            };
            *counts.entry(outcome).or_default() += 1;
            metrics::counter!(names::TAKEOVER_SESSIONS_TOTAL, "outcome" => outcome).increment(1);
            if outcome != "not_taken" {
                let _ = self.sender.send(&Message::Taken { id }, &[]).await;
            }
        }
        let took = self.started.elapsed();
        metrics::gauge!(names::TAKEOVER_DURATION_SECONDS).set(took.as_secs_f64());
        match left {
            Some(left) => tracing::info!(sessions = ?counts, left_with_old = left,
                seconds = took.as_secs_f64(), "takeover done"),
            None => tracing::warn!(sessions = ?counts, seconds = took.as_secs_f64(),
                "takeover: the old process went away before it was done; serving what came"),
        }
    }
}

/// The takeover metrics start at zero, so that a dashboard shows "none yet" rather than nothing.
pub(super) fn register_metrics() {
    for outcome in [
        Handed::BothLegs.label(),
        Handed::ClientLeg.label(),
        "not_taken",
    ] {
        metrics::counter!(names::TAKEOVER_SESSIONS_TOTAL, "outcome" => outcome).increment(0);
    }
    metrics::gauge!(names::TAKEOVER_DURATION_SECONDS).set(0.0);
}

/// For fault-injection tests: the new process stops answering once it has taken this many
/// sessions (`TETHER_TAKEOVER_STALL_AFTER`), as if it hung halfway; the test then kills it.
fn stall_after() -> Option<u64> {
    std::env::var("TETHER_TAKEOVER_STALL_AFTER")
        .ok()
        .and_then(|n| n.parse().ok())
}

/// The binary this process was started from, as its path was then: after an upgrade replaced
/// the file, the path names the new binary (`/proc/self/exe` would name the deleted old one).
pub fn remember_executable() {
    let _ = EXECUTABLE.set(std::env::current_exe().ok());
}

static EXECUTABLE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// SIGUSR2: starts the binary on disk again with this process's arguments and `--takeover`
/// (`tether run -c CONFIG --takeover`), as a child, so that it runs in this service's cgroup
/// (systemd then follows it as the main process: see [`crate::takeover::notify_ready`]). Its
/// failure is logged.
pub(super) fn start_successor() {
    let Some(Some(executable)) = EXECUTABLE.get() else {
        tracing::warn!(
            "takeover: this process does not know its binary's path; start `tether run --takeover` yourself"
        );
        return;
    };
    let mut arguments: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if !arguments.iter().any(|a| a == "--takeover") {
        arguments.push("--takeover".into());
    }
    let mut command = tokio::process::Command::new(executable);
    command.args(arguments);
    match command.spawn() {
        Ok(mut child) => {
            tracing::info!(binary = %executable.display(), pid = child.id(), "takeover: started a new process");
            tokio::spawn(async move {
                if let Ok(status) = child.wait().await
                    && !status.success()
                {
                    tracing::warn!(%status, "takeover: the new process failed; see its log lines");
                }
            });
        }
        Err(e) => {
            tracing::warn!(binary = %executable.display(), error = %e, "takeover: cannot start a new process")
        }
    }
}
