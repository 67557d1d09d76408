//! Nodes from an ActiveMQ network of brokers, as one of its brokers tells its failover clients.
//!
//! The source holds one OpenWire connection the way a failover client does. Its ConnectionInfo
//! says `manageable`, so the broker sends a ConnectionControl at once, and `faultTolerant`, so
//! it sends another whenever the network changes. A ConnectionControl's `connectedBrokers` is
//! the broker itself and the peers its bridges reach, in an order the broker rotates; the
//! source reports that set, plus the broker it is connected to, as a Reset each time it changes.
//!
//! When the connection breaks or the broker falls silent, that broker leaves the set at once
//! (its peers would say the same within milliseconds, but none is listening for us now), and
//! the source connects to the next broker it knows: the seed and every broker ever listed, in
//! turn, with jittered backoff. The rest of the set stays as it was until a broker says
//! otherwise.
//!
//! # Layout
//!
//! - [`run`]: the source's loop: connect, follow, drop the dead broker, move on.
//! - `Link`: one connection: TCP, WireFormatInfo, ConnectionInfo and the first
//!   ConnectionControl within [`HANDSHAKE_TIMEOUT`]; then KeepAliveInfo both ways.
//! - `NodeMapping`: an advertised broker to a [`NodeSpec`].
//! - `KnownBrokers`: the brokers to try, in turn.

use crate::address::Address;
use crate::backoff::Backoff;
use crate::cluster::connect::{DialError, dial};
use crate::cluster::discovery::UpdateSender;
use crate::cluster::node::NodeSpec;
use crate::cluster::topology::Update;
use crate::config::ActiveMqDiscovery;
use crate::proto::openwire::{
    self, Command, ConnectionControl, ConnectionInfo, Header, OpenWireCodec, OpenWireError,
    WireFormatInfo,
};
use crate::tls::{Connector, ReadHalf, Swappable, WriteHalf};
use bytes::BytesMut;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// Connect, both WireFormatInfos, ConnectionInfo and the first ConnectionControl must fit in
/// this. A SIGSTOPped broker's kernel still completes the TCP handshake, so the connect alone
/// proves nothing; a live broker answers all of it in milliseconds.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// The MaxInactivityDuration tether offers (ActiveMQ's default): the broker then sends a
/// KeepAliveInfo every third of it when it has nothing else to say.
const MAX_INACTIVITY: Duration = Duration::from_secs(30);
/// How often tether sends its own KeepAliveInfo at most, and the broker's period when the
/// negotiation leaves it none (it still answers a KeepAliveInfo that asks for a response).
const KEEPALIVE: Duration = Duration::from_secs(10);
/// However short a period the broker asks for, tether does not keep-alive more often.
const MIN_KEEPALIVE: Duration = Duration::from_millis(50);
/// A write that blocks this long means the broker stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// Brokers taken from one ConnectionControl, and brokers remembered to try: a real network
/// has a handful; this only stops a broker gone wrong from growing either without bound.
const MAX_BROKERS: usize = 256;
/// URL schemes of plain-TCP OpenWire connectors, followed when the cluster has no `tls`.
const PLAIN_SCHEMES: [&str; 4] = ["tcp", "nio", "auto", "auto+nio"];
/// URL schemes of TLS OpenWire connectors, the ones followed when the cluster has `tls`.
const TLS_SCHEMES: [&str; 4] = ["ssl", "nio+ssl", "auto+ssl", "auto+nio+ssl"];

/// Waits that tests shorten.
#[derive(Clone, Copy, Debug)]
struct Timings {
    handshake: Duration,
    retry_base: Duration,
    retry_max: Duration,
}

impl Default for Timings {
    fn default() -> Timings {
        Timings {
            handshake: HANDSHAKE_TIMEOUT,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
        }
    }
}

pub fn source_id(config: &ActiveMqDiscovery) -> String {
    format!("activemq:{}", config.url)
}

/// Follows the network `config.url` belongs to and reports its brokers, until cancelled.
/// `ports` gives the endpoints of brokers `config.endpoints` does not list, on the broker's
/// host.
///
/// With the cluster's `tls`, the brokers are reached over TLS and only their `ssl://`
/// connectors are followed.
pub async fn run(
    config: ActiveMqDiscovery,
    ports: BTreeMap<String, u16>,
    tls: Swappable<Connector>,
    updates: UpdateSender,
    cancel: CancellationToken,
) {
    run_with(config, ports, tls, updates, cancel, Timings::default()).await;
}

async fn run_with(
    config: ActiveMqDiscovery,
    ports: BTreeMap<String, u16>,
    tls: Swappable<Connector>,
    updates: UpdateSender,
    cancel: CancellationToken,
    timings: Timings,
) {
    let source = source_id(&config);
    let schemes = Schemes::of(tls.load().is_some());
    let Some(seed) = schemes.broker_address(&config.url) else {
        // Config validation rejects such a URL; this only keeps a bad one from looping.
        tracing::error!(%source, expected = %schemes.expected(),
            "not an OpenWire URL tether follows here: the source reports nothing");
        updates.report_failed(&source);
        cancel.cancelled().await;
        return;
    };
    let mut discovery = Discovery {
        mapping: NodeMapping::new(&config.endpoints, ports, schemes),
        schemes,
        tls,
        known: KnownBrokers::new(seed),
        source,
        updates,
        reported: None,
        failure_reported: false,
    };
    // Dropping the loop at cancellation drops whatever it awaits, the connection included.
    cancel.run_until_cancelled(discovery.run(timings)).await;
}

struct Discovery {
    source: String,
    /// The connectors followed: plain ones, or with `tls` the TLS ones.
    schemes: Schemes,
    tls: Swappable<Connector>,
    mapping: NodeMapping,
    known: KnownBrokers,
    updates: UpdateSender,
    /// The node set last reported, by name; `None` before the first.
    reported: Option<BTreeMap<String, NodeSpec>>,
    failure_reported: bool,
}

impl Discovery {
    async fn run(&mut self, timings: Timings) {
        let mut retry = Backoff::new(timings.retry_base, timings.retry_max);
        loop {
            let broker = self.known.next();
            let tls = self.tls.load_full();
            match Link::open(&broker, tls.as_deref(), timings.handshake).await {
                Ok((mut link, first)) => {
                    retry.reset();
                    tracing::info!(source = %self.source, %broker, "following the ActiveMQ network");
                    self.on_control(&broker, &first);
                    let lost = loop {
                        match link.next_control().await {
                            Ok(control) => self.on_control(&broker, &control),
                            Err(lost) => break lost,
                        }
                    };
                    tracing::warn!(
                        source = %self.source, %broker, reason = %lost,
                        "lost the ActiveMQ broker; dropping it and trying the next"
                    );
                    self.drop_broker(&broker);
                }
                Err(error) => {
                    tracing::warn!(
                        source = %self.source, %broker, reason = %error,
                        "cannot follow the ActiveMQ network through this broker"
                    );
                    if self.reported.is_none() && !self.failure_reported {
                        // Startup need not wait for a source that has nothing to say yet.
                        self.updates.report_failed(&self.source);
                        self.failure_reported = true;
                    }
                }
            }
            sleep(retry.next_delay()).await;
        }
    }

    fn on_control(&mut self, connected: &Address, control: &ConnectionControl) {
        tracing::debug!(
            source = %self.source, %connected,
            connected_brokers = ?control.connected_brokers,
            rebalance = control.rebalance_connection,
            reconnect_to = ?control.reconnect_to,
            "ConnectionControl"
        );
        let mut brokers = control
            .connected_brokers
            .as_deref()
            .map(|list| connected_brokers(list, self.schemes))
            .unwrap_or_default();
        // A broker whose connector does not update clients lists nobody, itself included.
        if !brokers.contains(connected) {
            brokers.push(connected.clone());
        }
        for broker in &brokers {
            self.known.learn(broker);
        }
        let reconnect_to = control
            .reconnect_to
            .as_deref()
            .map(str::trim)
            .filter(|url| !url.is_empty());
        if let Some(url) = reconnect_to.and_then(|url| self.schemes.broker_address(url)) {
            self.known.learn(&url);
        }
        let nodes = brokers
            .iter()
            .map(|broker| {
                let node = self.mapping.node(broker);
                (node.name.clone(), node)
            })
            .collect();
        self.report(nodes);
        if control.rebalance_connection || reconnect_to.is_some() {
            self.updates.hint_rebalance(&self.source);
        }
    }

    /// The broker we followed is gone: it leaves the set now, the others stay.
    fn drop_broker(&mut self, broker: &Address) {
        if let Some(reported) = &self.reported {
            let mut nodes = reported.clone();
            if nodes.remove(&node_name(broker)).is_some() {
                self.report(nodes);
            }
        }
    }

    fn report(&mut self, nodes: BTreeMap<String, NodeSpec>) {
        if self.reported.as_ref() == Some(&nodes) {
            return;
        }
        tracing::info!(
            source = %self.source,
            brokers = ?nodes.keys().collect::<Vec<_>>(),
            "ActiveMQ network brokers"
        );
        self.updates.send(
            &self.source,
            Update::Reset(nodes.values().cloned().collect()),
        );
        self.reported = Some(nodes);
    }
}

/// Which OpenWire connectors are followed: plain TCP ones, or with the cluster's `tls` the
/// TLS ones (a plain connector would fail the handshake, and following it would be a
/// downgrade).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schemes(&'static [&'static str]);

impl Schemes {
    pub fn of(tls: bool) -> Schemes {
        Schemes(if tls { &TLS_SCHEMES } else { &PLAIN_SCHEMES })
    }

    /// The address of an OpenWire URL such as `tcp://10.0.0.5:61616?wireFormat.x=y` with one
    /// of these schemes; `None` for anything else (WebSocket connectors, say).
    pub fn broker_address(self, url: &str) -> Option<Address> {
        let (scheme, rest) = url.trim().split_once("://")?;
        if !self.0.contains(&scheme.to_ascii_lowercase().as_str()) {
            return None;
        }
        rest.split(['?', '/']).next()?.parse().ok()
    }

    pub fn expected(self) -> String {
        self.0
            .iter()
            .map(|s| format!("{s}://"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Fuzzing: the brokers a `connectedBrokers` list names, for either kind of cluster.
pub(crate) fn fuzz_connected_brokers(list: &str) {
    for tls in [false, true] {
        let _ = connected_brokers(list, Schemes::of(tls));
    }
}

/// The brokers of a `connectedBrokers` list, in its order, each once, at most [`MAX_BROKERS`].
fn connected_brokers(list: &str, schemes: Schemes) -> Vec<Address> {
    let mut brokers: Vec<Address> = Vec::new();
    for url in list.split(',').map(str::trim).filter(|url| !url.is_empty()) {
        match schemes.broker_address(url) {
            Some(broker) if !brokers.contains(&broker) => brokers.push(broker),
            Some(_) => {}
            None => tracing::debug!(url, expected = %schemes.expected(),
                "skipping a broker connector of another kind"),
        }
        if brokers.len() == MAX_BROKERS {
            break;
        }
    }
    brokers
}

/// A broker's node name: the `host:port` it is advertised at.
fn node_name(broker: &Address) -> String {
    broker.to_string()
}

/// An advertised broker's endpoints: `openwire` where it is advertised, the others from the
/// source's endpoints table when it lists the broker, else the cluster's shared ports on the
/// broker's host.
#[derive(Debug)]
struct NodeMapping {
    endpoints: BTreeMap<Address, BTreeMap<String, Address>>,
    ports: BTreeMap<String, u16>,
}

impl NodeMapping {
    fn new(
        endpoints: &BTreeMap<String, BTreeMap<String, Address>>,
        ports: BTreeMap<String, u16>,
        schemes: Schemes,
    ) -> NodeMapping {
        // Keyed by address, so `tcp://h:1` in the table matches `tcp://h:1?x=y` advertised.
        let endpoints = endpoints
            .iter()
            .filter_map(|(url, endpoints)| Some((schemes.broker_address(url)?, endpoints.clone())))
            .collect();
        NodeMapping { endpoints, ports }
    }

    fn node(&self, broker: &Address) -> NodeSpec {
        let mut endpoints = match self.endpoints.get(broker) {
            Some(listed) => listed.clone(),
            None => self
                .ports
                .iter()
                .map(|(name, &port)| (name.clone(), with_port(broker, port)))
                .collect(),
        };
        endpoints.insert("openwire".into(), broker.clone());
        NodeSpec {
            name: node_name(broker),
            endpoints,
        }
    }
}

fn with_port(address: &Address, port: u16) -> Address {
    match address {
        Address::Ip(addr) => Address::Ip(std::net::SocketAddr::new(addr.ip(), port)),
        Address::Name { host, .. } => Address::Name {
            host: host.clone(),
            port,
        },
    }
}

/// The brokers to connect to, tried in turn: the seed, then each broker in the order it was
/// first listed. A broker once listed stays (it may come back), up to [`MAX_BROKERS`].
#[derive(Debug)]
struct KnownBrokers {
    brokers: Vec<Address>,
    /// The index of the broker tried last.
    last: Option<usize>,
}

impl KnownBrokers {
    fn new(seed: Address) -> KnownBrokers {
        KnownBrokers {
            brokers: vec![seed],
            last: None,
        }
    }

    fn learn(&mut self, broker: &Address) {
        if self.brokers.len() < MAX_BROKERS && !self.brokers.contains(broker) {
            self.brokers.push(broker.clone());
        }
    }

    /// The broker to try now. Each call moves on, so the broker that just failed is the last
    /// to be tried again.
    fn next(&mut self) -> Address {
        let index = self.last.map_or(0, |last| (last + 1) % self.brokers.len());
        self.last = Some(index);
        self.brokers[index].clone()
    }
}

/// Why a connection to a broker failed or ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("connect failed: {0}")]
    Connect(DialError),
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the broker closed the connection")]
    Closed,
    #[error("nothing from the broker for {0:?}")]
    Silent(Duration),
    #[error("no write to the broker finished within {WRITE_TIMEOUT:?}")]
    WriteTimeout,
    #[error("the broker sent command type {0} before its WireFormatInfo")]
    NoWireFormatInfo(u8),
    #[error("the broker settled on a wire format tether does not speak: {0}")]
    Unsupported(String),
    #[error("the broker refused the connection: {0}")]
    Refused(String),
    #[error(transparent)]
    Protocol(#[from] OpenWireError),
}

/// One OpenWire connection to a broker, past its handshake.
struct Link {
    frames: FramedRead<ReadHalf, OpenWireCodec>,
    writer: WriteHalf,
    out: BytesMut,
    next_command_id: i32,
    /// How often tether sends a KeepAliveInfo.
    keepalive: Duration,
    /// Three of the broker's keep-alive periods: a broker silent for this long is gone.
    silence: Duration,
    last_read: Instant,
    last_write: Instant,
}

impl Link {
    /// Connects and handshakes within `limit`, returning the broker's first ConnectionControl.
    async fn open(
        broker: &Address,
        tls: Option<&Connector>,
        limit: Duration,
    ) -> Result<(Link, ConnectionControl), LinkError> {
        timeout(limit, Link::handshake(broker, tls))
            .await
            .map_err(|_| LinkError::HandshakeTimeout(limit))?
    }

    async fn handshake(
        broker: &Address,
        tls: Option<&Connector>,
    ) -> Result<(Link, ConnectionControl), LinkError> {
        let stream = dial(broker, tls).await.map_err(LinkError::Connect)?.stream;
        // Commands are tiny and each one is worth sending at once.
        let _ = stream.tcp().set_nodelay(true);
        let (read, writer) = stream.into_split();
        let now = Instant::now();
        let mut link = Link {
            frames: FramedRead::new(read, OpenWireCodec::default()),
            writer,
            out: BytesMut::new(),
            next_command_id: 1,
            keepalive: KEEPALIVE,
            silence: 3 * KEEPALIVE,
            last_read: now,
            last_write: now,
        };

        let ours = WireFormatInfo::tether(openwire::DEFAULT_MAX_FRAME_SIZE, MAX_INACTIVITY);
        link.send(&Command::WireFormatInfo(ours.clone())).await?;
        let theirs = match link.read().await? {
            Command::WireFormatInfo(info) => info,
            other => return Err(LinkError::NoWireFormatInfo(other.kind())),
        };
        let negotiated = ours.negotiate(&theirs);
        if let Some(reason) = negotiated.unsupported() {
            return Err(LinkError::Unsupported(reason));
        }
        // The broker writes a KeepAliveInfo every third of the negotiated inactivity when it has
        // nothing else to send; with none negotiated it still answers ours.
        let broker_period = match negotiated.max_inactivity {
            Duration::ZERO => KEEPALIVE,
            inactivity => (inactivity / 3).max(MIN_KEEPALIVE),
        };
        link.keepalive = broker_period.min(KEEPALIVE);
        link.silence = 3 * broker_period;

        let info = connection_info(link.next_id());
        let info_id = info.header.command_id;
        link.send(&Command::ConnectionInfo(info)).await?;
        loop {
            match link.read().await? {
                Command::ConnectionControl(control) => return Ok((link, control)),
                Command::ExceptionResponse {
                    correlation_id,
                    exception,
                    ..
                } if correlation_id == info_id => {
                    let exception = exception.unwrap_or_default();
                    return Err(LinkError::Refused(format!(
                        "{}: {}",
                        exception.class.as_deref().unwrap_or("exception"),
                        exception.message.as_deref().unwrap_or("no message"),
                    )));
                }
                Command::KeepAliveInfo(header) => link.answer(header).await?,
                // The Response to ConnectionInfo, or something tether has no use for.
                _ => {}
            }
        }
    }

    /// The broker's next ConnectionControl, keeping the connection alive meanwhile. Any error
    /// ends the connection.
    async fn next_control(&mut self) -> Result<ConnectionControl, LinkError> {
        loop {
            let silent_at = self.last_read + self.silence;
            let keepalive_at = self.last_write + self.keepalive;
            tokio::select! {
                command = self.read() => match command? {
                    Command::ConnectionControl(control) => return Ok(control),
                    Command::KeepAliveInfo(header) => self.answer(header).await?,
                    Command::ExceptionResponse { exception, .. } => {
                        tracing::debug!(?exception, "ActiveMQ broker sent an ExceptionResponse");
                    }
                    _ => {}
                },
                _ = sleep_until(keepalive_at) => {
                    // Asking for a response makes the broker answer at tether's pace, whatever
                    // keep-alive it negotiated.
                    let header = Header { command_id: self.next_id(), response_required: true };
                    self.send(&Command::KeepAliveInfo(header)).await?;
                }
                _ = sleep_until(silent_at) => return Err(LinkError::Silent(self.silence)),
            }
        }
    }

    /// A KeepAliveInfo that asks for a response goes back without the ask, as ActiveMQ does.
    async fn answer(&mut self, keepalive: Header) -> Result<(), LinkError> {
        if keepalive.response_required {
            let header = Header {
                response_required: false,
                ..keepalive
            };
            self.send(&Command::KeepAliveInfo(header)).await?;
        }
        Ok(())
    }

    /// The next command from the broker. Cancel-safe.
    async fn read(&mut self) -> Result<Command, LinkError> {
        let command = self.frames.next().await.ok_or(LinkError::Closed)??;
        self.last_read = Instant::now();
        Ok(command)
    }

    async fn send(&mut self, command: &Command) -> Result<(), LinkError> {
        self.out.clear();
        command.encode(&mut self.out)?;
        let write = async {
            self.writer.write_all(&self.out).await?;
            self.writer.flush().await
        };
        timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| LinkError::WriteTimeout)?
            .map_err(OpenWireError::from)?;
        self.last_write = Instant::now();
        Ok(())
    }

    fn next_id(&mut self) -> i32 {
        let id = self.next_command_id;
        self.next_command_id = self.next_command_id.wrapping_add(1);
        id
    }
}

/// A ConnectionInfo that makes the broker send ConnectionControls, with ids of its own: a
/// broker silently closes the older of two connections that share an id.
fn connection_info(command_id: i32) -> ConnectionInfo {
    let unique = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
    ConnectionInfo {
        header: Header {
            command_id,
            response_required: true,
        },
        connection_id: Some(format!("ID:tether-discovery-{unique}:1")),
        client_id: Some(format!("tether-discovery-{unique}")),
        manageable: true,
        fault_tolerant: true,
        // The ConnectionControl a broker sends on accepting a connection echoes its rebalance
        // setting, which says nothing new; as a failover reconnect, tether gets it without, so
        // a rebalance hint only ever comes with a change in the network.
        failover_reconnect: true,
        ..ConnectionInfo::default()
    }
}

#[cfg(test)]
mod tests;
