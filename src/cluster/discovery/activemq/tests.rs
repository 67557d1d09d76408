use super::*;
use crate::cluster::discovery::SourceEvent;
use crate::proto::openwire::Property;
use std::collections::BTreeSet;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::codec::Encoder;

fn addr(text: &str) -> Address {
    text.parse().unwrap()
}

fn ports() -> BTreeMap<String, u16> {
    BTreeMap::from([("stomp".to_string(), 61613)])
}

fn spec(name: &str, endpoints: &[(&str, &str)]) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        endpoints: endpoints
            .iter()
            .map(|(endpoint, address)| (endpoint.to_string(), addr(address)))
            .collect(),
    }
}

fn broker_address(url: &str) -> Option<Address> {
    Schemes::of(false).broker_address(url)
}

#[test]
fn with_tls_only_tls_connectors_are_followed() {
    let tls = Schemes::of(true);
    assert_eq!(
        tls.broker_address("ssl://127.0.0.1:61727?transport.verifyHostName=false"),
        Some(addr("127.0.0.1:61727"))
    );
    assert_eq!(
        tls.broker_address("auto+nio+ssl://broker-b:61617"),
        Some(addr("broker-b:61617"))
    );
    assert_eq!(tls.broker_address("tcp://127.0.0.1:61717"), None);
    assert_eq!(
        connected_brokers("tcp://127.0.0.1:61716,ssl://127.0.0.1:61726", tls),
        vec![addr("127.0.0.1:61726")]
    );
}

#[test]
fn reads_the_address_of_plain_openwire_urls_only() {
    assert_eq!(
        broker_address("tcp://127.0.0.1:61717"),
        Some(addr("127.0.0.1:61717"))
    );
    assert_eq!(
        broker_address(" nio://broker-b:61616?wireFormat.maxFrameSize=1 "),
        Some(addr("broker-b:61616"))
    );
    assert_eq!(
        broker_address("tcp://[::1]:61616/"),
        Some(addr("[::1]:61616"))
    );
    for other in [
        "ssl://127.0.0.1:61617",
        "ws://127.0.0.1:61614",
        "127.0.0.1:61616",
        "tcp://127.0.0.1",
        "tcp://:61616",
        "",
    ] {
        assert_eq!(broker_address(other), None, "{other}");
    }
}

#[test]
fn a_connected_brokers_list_is_a_set_in_its_order() {
    let list = "tcp://127.0.0.1:61718, tcp://127.0.0.1:61716,,ssl://127.0.0.1:1,tcp://127.0.0.1:61718?x=y,garbage";
    assert_eq!(
        connected_brokers(list, Schemes::of(false)),
        vec![addr("127.0.0.1:61718"), addr("127.0.0.1:61716")]
    );
    let huge: Vec<String> = (1..=1000).map(|p| format!("tcp://10.0.0.1:{p}")).collect();
    assert_eq!(
        connected_brokers(&huge.join(","), Schemes::of(false)).len(),
        MAX_BROKERS
    );
}

#[test]
fn a_broker_gets_the_shared_ports_on_its_host() {
    let mapping = NodeMapping::new(&BTreeMap::new(), ports(), Schemes::of(false));
    assert_eq!(
        mapping.node(&addr("10.0.0.5:61616")),
        spec(
            "10.0.0.5:61616",
            &[("openwire", "10.0.0.5:61616"), ("stomp", "10.0.0.5:61613")]
        )
    );
    assert_eq!(
        mapping.node(&addr("broker-b:61616")),
        spec(
            "broker-b:61616",
            &[("openwire", "broker-b:61616"), ("stomp", "broker-b:61613")]
        )
    );
}

#[test]
fn a_broker_in_the_endpoints_table_gets_its_own_endpoints() {
    // Brokers sharing a host cannot share its ports: the table says where each one listens.
    let table = BTreeMap::from([(
        "tcp://127.0.0.1:61717?wireFormat.maxFrameSize=1".to_string(),
        BTreeMap::from([("stomp".to_string(), addr("127.0.0.1:61727"))]),
    )]);
    let mapping = NodeMapping::new(&table, ports(), Schemes::of(false));
    assert_eq!(
        mapping.node(&addr("127.0.0.1:61717")),
        spec(
            "127.0.0.1:61717",
            &[
                ("openwire", "127.0.0.1:61717"),
                ("stomp", "127.0.0.1:61727")
            ]
        )
    );
    // Others still follow the shared ports.
    assert_eq!(
        mapping.node(&addr("127.0.0.1:61718")).endpoints["stomp"],
        addr("127.0.0.1:61613")
    );
}

#[test]
fn known_brokers_are_tried_in_turn() {
    let mut known = KnownBrokers::new(addr("10.0.0.1:1"));
    assert_eq!(known.next(), addr("10.0.0.1:1"));
    assert_eq!(known.next(), addr("10.0.0.1:1"));
    known.learn(&addr("10.0.0.2:1"));
    known.learn(&addr("10.0.0.1:1"));
    known.learn(&addr("10.0.0.3:1"));
    let order: Vec<Address> = (0..4).map(|_| known.next()).collect();
    assert_eq!(
        order,
        ["10.0.0.2:1", "10.0.0.3:1", "10.0.0.1:1", "10.0.0.2:1"].map(addr)
    );
}

/// An in-process broker: it speaks first with a WireFormatInfo, as ActiveMQ does.
struct FakeBroker {
    listener: TcpListener,
    url: String,
}

impl FakeBroker {
    async fn bind() -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("tcp://{}", listener.local_addr().unwrap());
        FakeBroker { listener, url }
    }

    fn address(&self) -> Address {
        broker_address(&self.url).unwrap()
    }

    /// Accepts tether, sends a WireFormatInfo with `max_inactivity`, and returns the
    /// connection and the ConnectionInfo tether sent after its own WireFormatInfo.
    async fn accept(&self, max_inactivity: Duration) -> (FakeConnection, ConnectionInfo) {
        let (stream, _) = self.listener.accept().await.unwrap();
        let (read, writer) = stream.into_split();
        let mut conn = FakeConnection {
            frames: FramedRead::new(read, OpenWireCodec::default()),
            writer,
        };
        let mut info = WireFormatInfo::tether(1 << 20, max_inactivity);
        info.properties
            .insert("TightEncodingEnabled".into(), Property::Bool(true));
        info.properties
            .insert("CacheEnabled".into(), Property::Bool(true));
        conn.send(Command::WireFormatInfo(info)).await;
        let Command::WireFormatInfo(theirs) = conn.read().await else {
            panic!("tether did not send its WireFormatInfo first");
        };
        assert!(!theirs.flag("TightEncodingEnabled") && !theirs.flag("CacheEnabled"));
        let Command::ConnectionInfo(connection) = conn.read().await else {
            panic!("tether did not send ConnectionInfo");
        };
        (conn, connection)
    }
}

struct FakeConnection {
    frames: FramedRead<tokio::net::tcp::OwnedReadHalf, OpenWireCodec>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl FakeConnection {
    async fn send(&mut self, command: Command) {
        let mut out = BytesMut::new();
        OpenWireCodec::default().encode(&command, &mut out).unwrap();
        self.writer.write_all(&out).await.unwrap();
    }

    async fn read(&mut self) -> Command {
        timeout(Duration::from_secs(5), self.frames.next())
            .await
            .expect("tether sent nothing")
            .expect("tether closed the connection")
            .unwrap()
    }

    async fn control(&mut self, brokers: &[&str], rebalance: bool) {
        self.send(Command::ConnectionControl(ConnectionControl {
            fault_tolerant: true,
            connected_brokers: Some(brokers.join(",")),
            rebalance_connection: rebalance,
            ..ConnectionControl::default()
        }))
        .await;
    }
}

struct Harness {
    events: mpsc::UnboundedReceiver<SourceEvent>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(config: ActiveMqDiscovery, timings: Timings) -> Harness {
    let (tx, events) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_with(
        config,
        ports(),
        Default::default(),
        UpdateSender(tx),
        cancel.clone(),
        timings,
    ));
    Harness {
        events,
        cancel,
        task,
    }
}

fn fast() -> Timings {
    Timings {
        handshake: Duration::from_millis(300),
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
    }
}

impl Harness {
    async fn event(&mut self) -> SourceEvent {
        timeout(Duration::from_secs(5), self.events.recv())
            .await
            .expect("no event from the source")
            .expect("the source ended")
    }

    /// The names in the next event, which must be a Reset.
    async fn reset(&mut self) -> Vec<NodeSpec> {
        match self.event().await {
            SourceEvent::Update {
                update: Update::Reset(nodes),
                ..
            } => nodes,
            other => panic!("expected a Reset, got {other:?}"),
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        timeout(Duration::from_secs(1), self.task)
            .await
            .expect("the source did not stop when cancelled")
            .unwrap();
    }
}

/// The node names of a Reset, which are a set: the order follows the names.
fn names(nodes: &[NodeSpec]) -> BTreeSet<String> {
    nodes.iter().map(|n| n.name.clone()).collect()
}

fn set<const N: usize>(names: [&str; N]) -> BTreeSet<String> {
    names.into_iter().map(String::from).collect()
}

fn node<'a>(nodes: &'a [NodeSpec], name: &str) -> &'a NodeSpec {
    nodes.iter().find(|n| n.name == name).expect("no such node")
}

#[tokio::test]
async fn reports_the_network_and_moves_on_when_its_broker_drops() {
    let a = FakeBroker::bind().await;
    let b = FakeBroker::bind().await;
    let c = "tcp://broker-c.invalid:61616";
    let config = ActiveMqDiscovery {
        url: a.url.clone(),
        endpoints: BTreeMap::from([(
            a.url.clone(),
            BTreeMap::from([("stomp".to_string(), addr("127.0.0.1:1111"))]),
        )]),
    };
    let mut source = start(config, fast());
    let source_name = format!("activemq:{}", a.url);

    let (mut conn_a, info_a) = a.accept(Duration::from_secs(30)).await;
    assert!(info_a.manageable && info_a.fault_tolerant, "{info_a:?}");
    assert!(info_a.client_id.is_some());
    conn_a.control(&[&a.url, &b.url], false).await;
    let first = source.reset().await;
    let (a_name, b_name) = (a.address().to_string(), b.address().to_string());
    assert_eq!(names(&first), set([&a_name, &b_name]));
    assert_eq!(
        *node(&first, &a_name),
        spec(
            &a_name,
            &[("openwire", &a_name), ("stomp", "127.0.0.1:1111")]
        )
    );
    assert_eq!(
        *node(&first, &b_name),
        spec(
            &b_name,
            &[("openwire", &b_name), ("stomp", "127.0.0.1:61613")]
        )
    );

    // The broker rotates its list: the same set, so nothing to report. Then a third broker
    // joins, with a rebalance request.
    conn_a.control(&[&b.url, &a.url], false).await;
    conn_a.control(&[&b.url, c, &a.url], true).await;
    let second = source.reset().await;
    assert_eq!(
        names(&second),
        set([&a_name, &b_name, "broker-c.invalid:61616"])
    );
    assert_eq!(
        node(&second, "broker-c.invalid:61616").endpoints["stomp"],
        addr("broker-c.invalid:61613")
    );
    match source.event().await {
        SourceEvent::RebalanceHint { source } => assert_eq!(source, source_name),
        other => panic!("expected a rebalance hint, got {other:?}"),
    }

    // a dies: it leaves at once, and tether follows the network through b.
    drop(conn_a);
    assert_eq!(
        names(&source.reset().await),
        set([&b_name, "broker-c.invalid:61616"])
    );
    let (mut conn_b, info_b) = b.accept(Duration::from_secs(30)).await;
    assert_ne!(info_a.connection_id, info_b.connection_id);
    assert_ne!(info_a.client_id, info_b.client_id);
    conn_b.control(&[&b.url], false).await;
    assert_eq!(names(&source.reset().await), set([&b_name]));
    // It went to b straight away, not to the a it had just lost.
    assert!(
        timeout(Duration::from_millis(100), a.listener.accept())
            .await
            .is_err()
    );

    source.stop().await;
}

#[tokio::test]
async fn a_silent_broker_is_dropped_after_three_keepalive_periods() {
    let a = FakeBroker::bind().await;
    let b = FakeBroker::bind().await;
    let config = ActiveMqDiscovery {
        url: a.url.clone(),
        endpoints: BTreeMap::new(),
    };
    let mut source = start(config, fast());

    // A MaxInactivityDuration of 300 ms: the broker's keep-alive period is 100 ms.
    let (mut conn_a, _) = a.accept(Duration::from_millis(300)).await;
    conn_a.control(&[&a.url, &b.url], false).await;
    assert_eq!(source.reset().await.len(), 2);

    // A KeepAliveInfo that asks for a response gets one; tether's own ask for one.
    conn_a
        .send(Command::KeepAliveInfo(Header {
            command_id: 42,
            response_required: true,
        }))
        .await;
    let mut answered = false;
    let mut asked = 0;
    let silent_since = Instant::now();
    while !answered || asked < 2 {
        match conn_a.read().await {
            Command::KeepAliveInfo(Header {
                command_id: 42,
                response_required: false,
            }) => answered = true,
            Command::KeepAliveInfo(Header {
                response_required: true,
                ..
            }) => asked += 1,
            other => panic!("unexpected {other:?}"),
        }
    }

    // From here on a says nothing: tether gives up on it 300 ms after it last heard from it.
    let remaining = source.reset().await;
    let waited = silent_since.elapsed();
    assert_eq!(names(&remaining), set([&b.address().to_string()]));
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "dropped after {waited:?}"
    );
    let (mut conn_b, _) = b.accept(Duration::from_secs(30)).await;
    conn_b.control(&[&b.url, &a.url], false).await;
    assert_eq!(source.reset().await.len(), 2);
    drop(conn_a);
    source.stop().await;
}

#[tokio::test]
async fn a_broker_that_accepts_but_never_speaks_fails_the_first_lookup_once() {
    // What a SIGSTOPped broker looks like: its kernel accepts, nobody answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ActiveMqDiscovery {
        url: format!("tcp://{}", listener.local_addr().unwrap()),
        endpoints: BTreeMap::new(),
    };
    let started = Instant::now();
    let mut source = start(config, fast());
    let (_first, _) = listener.accept().await.unwrap();
    match source.event().await {
        SourceEvent::FirstLookupFailed { .. } => {}
        other => panic!("expected the first lookup to fail, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // It keeps trying, without saying so again.
    let (_second, _) = timeout(Duration::from_secs(2), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let (_third, _) = timeout(Duration::from_secs(2), listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert!(source.events.try_recv().is_err());
    source.stop().await;
}

#[tokio::test]
async fn a_broker_that_refuses_the_connection_is_left_for_the_next() {
    let a = FakeBroker::bind().await;
    let config = ActiveMqDiscovery {
        url: a.url.clone(),
        endpoints: BTreeMap::new(),
    };
    let mut source = start(config, fast());
    let (mut conn, info) = a.accept(Duration::from_secs(30)).await;
    conn.send(Command::ExceptionResponse {
        header: Header::default(),
        correlation_id: info.header.command_id,
        exception: Some(openwire::BrokerException {
            class: Some("java.lang.SecurityException".into()),
            message: Some("User name [null] or password is invalid.".into()),
        }),
    })
    .await;
    match source.event().await {
        SourceEvent::FirstLookupFailed { .. } => {}
        other => panic!("expected the first lookup to fail, got {other:?}"),
    }
    // The source let go of the connection and comes back.
    assert!(
        timeout(Duration::from_secs(1), conn.frames.next())
            .await
            .unwrap()
            .is_none()
    );
    let (mut conn, _) = a.accept(Duration::from_secs(30)).await;
    conn.control(&[&a.url], false).await;
    assert_eq!(
        names(&source.reset().await),
        set([&a.address().to_string()])
    );
    source.stop().await;
}

#[tokio::test]
async fn garbage_from_the_broker_ends_the_connection_not_the_source() {
    let a = FakeBroker::bind().await;
    let config = ActiveMqDiscovery {
        url: a.url.clone(),
        endpoints: BTreeMap::new(),
    };
    let mut source = start(config, fast());
    let (mut conn, _) = a.accept(Duration::from_secs(30)).await;
    conn.control(&[&a.url], false).await;
    assert_eq!(source.reset().await.len(), 1);
    // A frame announcing 2 GiB.
    conn.writer
        .write_all(&[0x7f, 0xff, 0xff, 0xff, 18])
        .await
        .unwrap();
    assert!(source.reset().await.is_empty());
    let (mut conn, _) = a.accept(Duration::from_secs(30)).await;
    conn.control(&[&a.url], false).await;
    assert_eq!(source.reset().await.len(), 1);
    source.stop().await;
}

/// Against the lab's ActiveMQ network (`scripts/lab up`): prints what the source reports for
/// `TETHER_LIVE_SECS` seconds (5 by default). Run with `cargo test --lib live_lab -- --ignored
/// --nocapture`, and kill or restart a broker meanwhile to watch it leave and come back.
#[tokio::test]
#[ignore = "needs the lab's ActiveMQ network on 127.0.0.1:61716-61718"]
async fn live_lab_network() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("tether=debug")
        .with_test_writer()
        .try_init();
    let endpoints = (0..3)
        .map(|i| {
            (
                format!("tcp://127.0.0.1:{}", 61716 + i),
                BTreeMap::from([(
                    "stomp".to_string(),
                    addr(&format!("127.0.0.1:{}", 61726 + i)),
                )]),
            )
        })
        .collect();
    let config = ActiveMqDiscovery {
        url: "tcp://127.0.0.1:61716".into(),
        endpoints,
    };
    let secs = std::env::var("TETHER_LIVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mut source = start(config, Timings::default());
    let first = source.reset().await;
    println!("first: {first:#?}");
    assert_eq!(
        names(&first),
        set(["127.0.0.1:61716", "127.0.0.1:61717", "127.0.0.1:61718"])
    );
    assert_eq!(
        node(&first, "127.0.0.1:61717").endpoints["stomp"],
        addr("127.0.0.1:61727")
    );
    let until = Instant::now() + Duration::from_secs(secs);
    while let Ok(Some(event)) = tokio::time::timeout_at(until, source.events.recv()).await {
        println!("{:?} {event:?}", Instant::now());
    }
    source.stop().await;
}
