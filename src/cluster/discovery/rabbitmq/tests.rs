use super::*;
use crate::cluster::discovery::SourceEvent;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// `/api/nodes` and `/api/overview` of the bundled lab (trimmed), with r3 stopped.
const LAB_NODES: &str = include_str!("testdata/nodes.json");
const LAB_OVERVIEW: &str = include_str!("testdata/overview.json");

fn ip(text: &str) -> Address {
    Address::Ip(text.parse().unwrap())
}

fn spec(name: &str, endpoints: &[(&str, Address)]) -> NodeSpec {
    NodeSpec {
        name: name.to_string(),
        endpoints: endpoints
            .iter()
            .map(|(e, a)| (e.to_string(), a.clone()))
            .collect(),
    }
}

/// Resolves only `localhost`, as /etc/hosts does, so the tests need no DNS.
async fn fake_lookup(host: &str) -> Option<IpAddr> {
    (host == "localhost").then(|| "127.0.0.1".parse().unwrap())
}

async fn specs_from(nodes: &str, overview: &str) -> Vec<NodeSpec> {
    let nodes: Vec<ApiNode> = serde_json::from_str(nodes).unwrap();
    let overview: Overview = serde_json::from_str(overview).unwrap();
    resolve(plan(&nodes, &overview.listeners, false), fake_lookup).await
}

fn listeners_json(listeners: &[(&str, &str, &str, u16)]) -> String {
    let listeners: Vec<serde_json::Value> = listeners
        .iter()
        .map(|(node, protocol, ip, port)| {
            serde_json::json!({
                "node": node, "protocol": protocol, "ip_address": ip, "port": port,
                "socket_opts": {"backlog": 128, "nodelay": true}
            })
        })
        .collect();
    serde_json::json!({ "management_version": "3.10.8", "listeners": listeners }).to_string()
}

#[tokio::test]
async fn with_tls_the_tls_listeners_are_the_endpoints() {
    let nodes: Vec<ApiNode> =
        serde_json::from_str(r#"[{"name":"r1@localhost","running":true}]"#).unwrap();
    let overview: Overview = serde_json::from_str(&listeners_json(&[
        ("r1@localhost", "amqp", "127.0.0.1", 5681),
        ("r1@localhost", "amqp/ssl", "127.0.0.1", 5691),
        ("r1@localhost", "stomp", "127.0.0.1", 61681),
        ("r1@localhost", "stomp/ssl", "127.0.0.1", 61691),
        ("r1@localhost", "https", "127.0.0.1", 15691),
    ]))
    .unwrap();
    let over_tls = resolve(plan(&nodes, &overview.listeners, true), fake_lookup).await;
    assert_eq!(
        over_tls,
        vec![spec(
            "r1@localhost",
            &[
                ("amqp", ip("127.0.0.1:5691")),
                ("https", ip("127.0.0.1:15691")),
                ("stomp", ip("127.0.0.1:61691")),
            ]
        )]
    );
    let plain = resolve(plan(&nodes, &overview.listeners, false), fake_lookup).await;
    assert_eq!(plain[0].endpoints["amqp"], ip("127.0.0.1:5681"));
    assert_eq!(plain[0].endpoints["amqps"], ip("127.0.0.1:5691"));
}

#[tokio::test]
async fn lab_json_gives_the_running_nodes_and_their_client_endpoints() {
    let specs = specs_from(LAB_NODES, LAB_OVERVIEW).await;
    // r3 is listed but not running: it is left out. Clustering ports are no endpoints; the
    // management listener says `::` but is bound to 127.0.0.1 (socket_opts.ip).
    assert_eq!(
        specs,
        vec![
            spec(
                "r1@localhost",
                &[
                    ("amqp", ip("127.0.0.1:5681")),
                    ("http", ip("127.0.0.1:15681")),
                    ("stomp", ip("127.0.0.1:61681")),
                ]
            ),
            spec(
                "r2@localhost",
                &[
                    ("amqp", ip("127.0.0.1:5682")),
                    ("http", ip("127.0.0.1:15682")),
                    ("stomp", ip("127.0.0.1:61682")),
                ]
            ),
        ]
    );
}

#[tokio::test]
async fn wildcard_listeners_take_the_node_host_and_specific_ones_their_own() {
    let nodes = r#"[
        {"name":"rabbit@localhost","running":true,"type":"disc"},
        {"name":"rabbit@10.1.2.3","running":true},
        {"name":"rabbit@gone.example","running":true}
    ]"#;
    let overview = listeners_json(&[
        ("rabbit@localhost", "amqp", "::", 5672),
        ("rabbit@localhost", "amqp/ssl", "0.0.0.0", 5671),
        ("rabbit@localhost", "stomp", "10.0.0.5", 61613),
        ("rabbit@localhost", "stomp/ssl", "::1", 61614),
        ("rabbit@10.1.2.3", "amqp", "::", 5672),
        ("rabbit@gone.example", "amqp", "::", 5672),
    ]);
    let specs = specs_from(nodes, &overview).await;
    assert_eq!(
        specs,
        vec![
            spec("rabbit@10.1.2.3", &[("amqp", ip("10.1.2.3:5672"))]),
            // A host that does not resolve stays a name, resolved again at connect time.
            spec(
                "rabbit@gone.example",
                &[("amqp", "gone.example:5672".parse().unwrap())]
            ),
            spec(
                "rabbit@localhost",
                &[
                    ("amqp", ip("127.0.0.1:5672")),
                    ("amqps", ip("127.0.0.1:5671")),
                    ("stomp", ip("10.0.0.5:61613")),
                    ("stomps", ip("[::1]:61614")),
                ]
            ),
        ]
    );
}

#[tokio::test]
async fn the_system_resolver_turns_localhost_into_ipv4() {
    assert_eq!(
        lookup_ipv4_first("localhost").await,
        Some("127.0.0.1".parse().unwrap())
    );
}

#[tokio::test]
async fn protocols_map_to_endpoint_names_and_unknown_ones_are_skipped() {
    let nodes = r#"[{"name":"r@localhost","running":true}]"#;
    let overview = listeners_json(&[
        ("r@localhost", "amqp", "127.0.0.1", 1),
        ("r@localhost", "amqp/ssl", "127.0.0.1", 2),
        ("r@localhost", "stomp", "127.0.0.1", 3),
        ("r@localhost", "stomp/ssl", "127.0.0.1", 4),
        ("r@localhost", "mqtt", "127.0.0.1", 5),
        ("r@localhost", "http", "127.0.0.1", 6),
        ("r@localhost", "clustering", "127.0.0.1", 7),
        ("r@localhost", "http/web-stomp", "127.0.0.1", 8),
        ("r@localhost", "mqtt/ssl", "127.0.0.1", 9),
        // A second amqp listener: the first reported wins.
        ("r@localhost", "amqp", "127.0.0.1", 10),
        // A listener of a node /api/nodes does not list is nobody's.
        ("other@localhost", "amqp", "127.0.0.1", 11),
    ]);
    let specs = specs_from(nodes, &overview).await;
    let endpoints: Vec<(String, u16)> = specs[0]
        .endpoints
        .iter()
        .map(|(e, a)| (e.clone(), a.port()))
        .collect();
    let expected = [
        ("amqp", 1),
        ("amqps", 2),
        ("http", 6),
        ("mqtt", 5),
        ("stomp", 3),
        ("stomps", 4),
    ];
    assert_eq!(
        endpoints,
        expected.map(|(e, p)| (e.to_string(), p)).to_vec()
    );
    assert_eq!(specs.len(), 1);
}

#[tokio::test]
async fn missing_and_unknown_fields_are_tolerated() {
    // A node without `running` is not known to run; one with no listeners is still starting.
    let nodes = r#"[{"name":"a@localhost"},{"name":"b@localhost","running":true,"new":1},
                    {"name":"c@localhost","running":true}]"#;
    let overview = r#"{"listeners":[{"node":"b@localhost","protocol":"amqp","port":5672,
                        "socket_opts":[]},{"node":"a@localhost","protocol":"amqp","port":5673}]}"#;
    let specs = specs_from(nodes, overview).await;
    assert_eq!(
        specs,
        vec![spec("b@localhost", &[("amqp", ip("127.0.0.1:5672"))])]
    );
}

/// An in-process management API: answers every request with what `answer` returns for its
/// path and `Authorization` header, and counts the requests.
struct FakeManagement {
    url: String,
    port: u16,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

type Answer = Arc<dyn Fn(&str, &str) -> Vec<u8> + Send + Sync>;

impl FakeManagement {
    async fn start(answer: Answer) -> FakeManagement {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let answer = answer.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let request = String::from_utf8_lossy(&request).to_string();
                    let path = request.split(' ').nth(1).unwrap_or_default();
                    let auth = request
                        .lines()
                        .find_map(|l| l.strip_prefix("Authorization: "))
                        .unwrap_or_default();
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.write_all(&answer(path, auth)).await;
                });
            }
        });
        FakeManagement {
            url: format!("http://127.0.0.1:{port}"),
            port,
            requests,
            task,
        }
    }

    /// Serves a node set: /api/nodes chunked (as cowboy may), /api/overview with a length.
    async fn serving(nodes: Arc<Mutex<(String, String)>>) -> FakeManagement {
        FakeManagement::start(Arc::new(move |path, _| {
            let (nodes, overview) = nodes.lock().unwrap().clone();
            if path == NODES_PATH {
                chunked(&nodes)
            } else if path == OVERVIEW_PATH {
                ok(&overview)
            } else {
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec()
            }
        }))
        .await
    }

    /// Closes the port: connections are refused from now on.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/json\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn chunked(body: &str) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for piece in body.as_bytes().chunks(7) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn config(url: &str, password: &str, interval: Duration) -> RabbitMqDiscovery {
    RabbitMqDiscovery {
        url: url.to_string(),
        username: "guest".to_string(),
        password: Secret::new(password),
        interval,
    }
}

/// A free port nothing listens on: connections to it are refused.
async fn refusing_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn node_set(nodes: &[(&str, bool)], listeners: &[(&str, &str, &str, u16)]) -> (String, String) {
    let nodes: Vec<serde_json::Value> = nodes
        .iter()
        .map(|(name, running)| serde_json::json!({"name": name, "running": running}))
        .collect();
    (
        serde_json::Value::from(nodes).to_string(),
        listeners_json(listeners),
    )
}

#[tokio::test]
async fn a_401_says_the_credentials_were_refused_and_hides_the_password() {
    let server = FakeManagement::start(Arc::new(|_, auth| {
        assert_eq!(auth, "Basic Z3Vlc3Q6czNjcjN0", "guest:s3cr3t");
        let body = r#"{"error":"not_authorized","reason":"Login failed"}"#;
        format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: {}\r\nwww-authenticate: Basic realm=\"RabbitMQ Management\"\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }))
    .await;
    let mut management = Management::new(
        &config(&server.url, "s3cr3t", REQUEST_TIMEOUT),
        Default::default(),
    )
    .unwrap();
    let error = management.poll().await.unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "{}: GET /api/nodes?columns=name,running: 401 Unauthorized: the management API refused user \"guest\" and its password (Login failed)",
            server.url
        )
    );
    assert!(!error.contains("s3cr3t"));
    server.stop().await;
}

#[tokio::test]
async fn other_error_answers_carry_status_and_body() {
    let server = FakeManagement::start(Arc::new(|_, _| {
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 8\r\n\r\nrestart!".to_vec()
    }))
    .await;
    let mut management = Management::new(
        &config(&server.url, "guest", REQUEST_TIMEOUT),
        Default::default(),
    )
    .unwrap();
    let error = management.poll().await.unwrap_err().to_string();
    assert!(
        error.ends_with("HTTP 503 Service Unavailable (restart!)"),
        "{error}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_response_over_the_cap_is_refused() {
    let server = FakeManagement::start(Arc::new(|_, _| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n[",
            MAX_RESPONSE + 1
        )
        .into_bytes()
    }))
    .await;
    let mut management = Management::new(
        &config(&server.url, "guest", REQUEST_TIMEOUT),
        Default::default(),
    )
    .unwrap();
    let error = management.poll().await.unwrap_err().to_string();
    assert!(
        error.ends_with(&format!(
            "response body larger than the {MAX_RESPONSE} bytes allowed"
        )),
        "{error}"
    );
    server.stop().await;
}

#[tokio::test]
async fn json_that_does_not_fit_is_an_error_not_a_panic() {
    let server = FakeManagement::start(Arc::new(|_, _| ok(r#"{"not":"a list"}"#))).await;
    let mut management = Management::new(
        &config(&server.url, "guest", REQUEST_TIMEOUT),
        Default::default(),
    )
    .unwrap();
    let error = management.poll().await.unwrap_err().to_string();
    assert!(error.contains("unexpected JSON"), "{error}");
    server.stop().await;
}

#[tokio::test]
async fn the_next_url_is_tried_when_the_first_refuses_and_remembered() {
    let nodes = Arc::new(Mutex::new(node_set(
        &[("r1@localhost", true)],
        &[("r1@localhost", "amqp", "127.0.0.1", 5681)],
    )));
    let live = FakeManagement::serving(nodes).await;
    let dead = refusing_url().await;
    let mut management =
        Management::new(&config(&dead, "guest", REQUEST_TIMEOUT), Default::default()).unwrap();
    management.urls.push(ManagementUrl {
        address: ip(&format!("127.0.0.1:{}", live.port)),
    });

    let specs = management.poll().await.unwrap();
    assert_eq!(
        specs,
        vec![spec("r1@localhost", &[("amqp", ip("127.0.0.1:5681"))])]
    );
    assert_eq!(management.current().to_string(), live.url);
    // The next poll starts at the one that answered: two requests, no refused connect first.
    management.poll().await.unwrap();
    assert_eq!(live.requests.load(Ordering::SeqCst), 4);
    assert_eq!(management.current().to_string(), live.url);
    live.stop().await;
}

#[tokio::test]
async fn every_url_failing_names_each_one() {
    let first = refusing_url().await;
    let mut management = Management::new(
        &config(&first, "guest", REQUEST_TIMEOUT),
        Default::default(),
    )
    .unwrap();
    let second = refusing_url().await;
    management.urls.push(ManagementUrl {
        address: ip(second.trim_start_matches("http://")),
    });
    let error = management.poll().await.unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("{first}: GET /api/nodes")) && error.contains(&second),
        "{error}"
    );
}

#[test]
fn urls_keep_their_path_prefix_and_learned_ones_are_capped() {
    let mut management = Management::new(
        &config("http://rabbit-a:15672/rabbitmq/", "guest", REQUEST_TIMEOUT),
        Default::default(),
    )
    .unwrap();
    assert_eq!(
        management.current().to_string(),
        "http://rabbit-a:15672/rabbitmq"
    );
    for port in 1..=(MAX_URLS as u16 + 5) {
        management.learn(&[spec("r", &[("http", ip(&format!("10.0.0.1:{port}")))])]);
    }
    assert_eq!(management.urls.len(), MAX_URLS);
    assert_eq!(management.urls[0].address.to_string(), "rabbit-a:15672");
    assert_eq!(
        management.urls.last().unwrap().address.to_string(),
        format!("10.0.0.1:{}", MAX_URLS + 5)
    );
    let mut over_tls = Management::new(
        &config("https://rabbit-a:15671", "guest", REQUEST_TIMEOUT),
        Default::default(),
    )
    .unwrap();
    assert_eq!(over_tls.current().to_string(), "https://rabbit-a:15671");
    over_tls.learn(&[spec(
        "r",
        &[
            ("http", ip("10.0.0.2:15672")),
            ("https", ip("10.0.0.2:15671")),
        ],
    )]);
    assert_eq!(
        over_tls.urls.last().unwrap().address.to_string(),
        "10.0.0.2:15671",
        "over https://, the nodes' https listeners are learned"
    );
    for bad in ["ftp://h:1", "http://h", "rabbit:15672"] {
        assert!(
            Management::new(&config(bad, "", REQUEST_TIMEOUT), Default::default()).is_err(),
            "{bad}"
        );
    }
}

fn channel() -> (UpdateSender, mpsc::UnboundedReceiver<SourceEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (UpdateSender(tx), rx)
}

async fn next_reset(
    events: &mut mpsc::UnboundedReceiver<SourceEvent>,
    source: &str,
) -> Vec<NodeSpec> {
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an update within 10 s")
        .expect("the source is running");
    match event {
        SourceEvent::Update {
            source: from,
            update: Update::Reset(nodes),
        } => {
            assert_eq!(from, source);
            nodes
        }
        other => panic!("expected a Reset, got {other:?}"),
    }
}

#[tokio::test]
async fn run_survives_the_seed_and_follows_the_learned_node_after_a_refresh() {
    // r2's management API, and r1's (the seed) that advertises both.
    let both_running = node_set(
        &[("r1@localhost", true), ("r2@localhost", true)],
        &[
            ("r1@localhost", "amqp", "127.0.0.1", 5681),
            ("r2@localhost", "amqp", "127.0.0.1", 5682),
        ],
    );
    let r2_nodes = Arc::new(Mutex::new(both_running.clone()));
    let r2 = FakeManagement::serving(r2_nodes.clone()).await;
    let nodes = both_running.0;
    let overview = listeners_json(&[
        ("r1@localhost", "amqp", "127.0.0.1", 5681),
        ("r2@localhost", "amqp", "127.0.0.1", 5682),
        ("r2@localhost", "http", "::", r2.port),
    ]);
    let r1 = FakeManagement::serving(Arc::new(Mutex::new((nodes, overview)))).await;

    let (updates, mut events) = channel();
    let refresh = Arc::new(Notify::new());
    let cancel = CancellationToken::new();
    let config = config(&r1.url, "guest", Duration::from_secs(3600));
    let source = source_id(&config);
    assert_eq!(source, format!("rabbitmq:{}", r1.url));
    let task = tokio::spawn(run(
        config,
        Default::default(),
        updates,
        refresh.clone(),
        Arc::default(),
        cancel.clone(),
    ));

    let first = next_reset(&mut events, &source).await;
    assert_eq!(
        first.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["r1@localhost", "r2@localhost"]
    );

    // r1 dies: its management API with it. The cluster notices and asks for a re-read.
    r1.stop().await;
    *r2_nodes.lock().unwrap() = node_set(
        &[("r1@localhost", false), ("r2@localhost", true)],
        &[("r2@localhost", "amqp", "127.0.0.1", 5682)],
    );
    refresh.notify_one();
    let second = next_reset(&mut events, &source).await;
    assert_eq!(
        second,
        vec![spec("r2@localhost", &[("amqp", ip("127.0.0.1:5682"))])]
    );

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run ends when cancelled")
        .unwrap();
    r2.stop().await;
}

#[tokio::test]
async fn run_reports_a_failed_first_poll_once_then_the_nodes_when_they_answer() {
    let answering = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let nodes = node_set(
        &[("r1@localhost", true)],
        &[("r1@localhost", "amqp", "127.0.0.1", 5681)],
    );
    let flag = answering.clone();
    let server = FakeManagement::start(Arc::new(move |path, _| {
        if !flag.load(Ordering::SeqCst) {
            return b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec();
        }
        ok(if path == NODES_PATH {
            &nodes.0
        } else {
            &nodes.1
        })
    }))
    .await;

    let (updates, mut events) = channel();
    let refresh = Arc::new(Notify::new());
    let cancel = CancellationToken::new();
    let config = config(&server.url, "guest", Duration::from_millis(50));
    let source = source_id(&config);
    tokio::spawn(run(
        config,
        Default::default(),
        updates,
        refresh,
        Arc::default(),
        cancel.clone(),
    ));

    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&event, SourceEvent::FirstLookupFailed { source: s } if *s == source),
        "{event:?}"
    );
    // Several more failed polls report nothing more.
    while server.requests.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    answering.store(true, Ordering::SeqCst);
    let nodes = next_reset(&mut events, &source).await;
    assert_eq!(nodes.len(), 1);

    // Unchanged answers are not sent again.
    let seen = server.requests.load(Ordering::SeqCst);
    while server.requests.load(Ordering::SeqCst) < seen + 6 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(events.try_recv().is_err());
    cancel.cancel();
    server.stop().await;
}

#[tokio::test]
async fn run_stops_at_cancel_while_a_request_hangs() {
    // Accepted by the kernel, never answered: the request waits out its timeout unless
    // cancelled.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (updates, _events) = channel();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(
        config(&url, "guest", Duration::from_secs(1)),
        Default::default(),
        updates,
        Arc::new(Notify::new()),
        Arc::default(),
        cancel.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("run ends well before the request timeout")
        .unwrap();
    drop(listener);
}

#[test]
fn run_can_be_spawned() {
    fn assert_send<T: Send + 'static>(_: &T) {}
    let (updates, _events) = channel();
    let future = run(
        config("http://127.0.0.1:1", "guest", Duration::from_secs(1)),
        Default::default(),
        updates,
        Arc::new(Notify::new()),
        Arc::default(),
        CancellationToken::new(),
    );
    assert_send(&future);
}
