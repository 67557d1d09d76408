//! The foundation against the real bundled RabbitMQ cluster: node choice, passive and active
//! health, every node down, balancing, metrics. Tests run one at a time (they break shared
//! nodes) and each leaves the cluster healthy for the next.

mod support;

use libtest_mimic::Failed;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::config::{TetherConfig, lab_nodes};
use support::lab::{Lab, ports};
use support::suite::Suite;
use support::tether::Tether;
use support::{clients, wait_for};

const NODES: [&str; 3] = ["r1", "r2", "r3"];

/// A tether in front of the lab's RabbitMQ cluster with one tcp listener on AMQP.
struct Front {
    tether: Tether,
    listener: u16,
}

fn front(balance: &str, health: &str) -> Front {
    let nodes = lab_nodes(&ports::RABBIT, &["amqp", "stomp"]);
    let mut config = TetherConfig::new().cluster(
        "lab",
        &format!("balance = \"{balance}\"\nhealth = {health}\n{nodes}"),
    );
    let listener = config.listener("amqp-tcp", "tcp", "lab", r#"endpoint = "amqp""#);
    Front {
        tether: config.start(),
        listener,
    }
}

impl Front {
    fn node_up(&self, node: &str) -> f64 {
        self.tether
            .metric("tether_node_up", &[("cluster", "lab"), ("node", node)])
    }

    fn wait_node_up(&self, node: &str, up: bool, why_bound: Duration) {
        let want = if up { 1.0 } else { 0.0 };
        wait_for(
            &format!("tether_node_up{{node={node}}} == {want}"),
            why_bound,
            || (self.node_up(node) == want).then_some(()),
        );
    }

    fn sessions(&self) -> Vec<(String, u64)> {
        self.tether.sessions_per_node("lab")
    }

    fn hold(&self, count: usize) -> clients::Running {
        let mut clients = clients::spawn(
            "hold_connections.py",
            &[
                format!("--port={}", self.listener),
                format!("--count={count}"),
            ],
        );
        assert_eq!(clients.line(), "ready");
        clients
    }
}

fn sessions_on(sessions: &[(String, u64)], node: &str) -> u64 {
    sessions
        .iter()
        .find(|(n, _)| n == node)
        .map(|(_, s)| *s)
        .unwrap_or(0)
}

/// The health checks bring a node back within rise × interval plus a backed-off probe
/// interval (5 s at most by default); a minute covers a loaded two-core machine.
const RETURN_BOUND: Duration = Duration::from_secs(60);

fn pika_through_the_tcp_listener() -> Result<(), Failed> {
    let front = front("random", r#"{ interval = "500ms", timeout = "500ms" }"#);
    let summary = clients::run(
        "pika_roundtrip.py",
        &[
            format!("--port={}", front.listener),
            "--queue=foundation-roundtrip".into(),
            "--count=200".into(),
        ],
    );
    assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["confirmed"], 200, "{summary}");
    assert_eq!(summary["received"], 200, "{summary}");
    let metrics = front.tether.metrics();
    assert!(
        support::prom::value(
            &metrics,
            "tether_bytes_total",
            &[("direction", "from_client")]
        ) > 0.0
    );
    assert!(support::prom::value(&metrics, "tether_sessions_total", &[]) >= 1.0);
    Ok(())
}

fn killed_node_is_skipped_after_one_failed_connect_and_returns(lab: &Lab) -> Result<(), Failed> {
    // Long active-check intervals, so that the sessions' own failed connect is what finds the
    // dead node.
    let front = front(
        "least-connections",
        r#"{ interval = "3s", timeout = "1s", rise = 1, fall = 3, max_backoff = "5s" }"#,
    );
    let _heal = lab.heal(&["r2"]);
    lab.kill("r2");
    let first = front.hold(12);
    let sessions = front.sessions();
    let failures = front.tether.metric(
        "tether_connect_failures_total",
        &[("node", "r2"), ("reason", "refused")],
    );
    assert!(
        failures <= 1.0,
        "r2 was tried {failures} times after it refused once"
    );
    assert_eq!(sessions_on(&sessions, "r2"), 0, "{sessions:?}");
    assert_eq!(front.node_up("r2"), 0.0);

    lab.start("r2");
    front.wait_node_up("r2", true, RETURN_BOUND);
    let second = front.hold(6);
    let sessions = front.sessions();
    assert!(
        sessions_on(&sessions, "r2") >= 1,
        "r2 is back but got no session: {sessions:?}"
    );
    let counts: Vec<u64> = sessions.iter().map(|(_, s)| *s).collect();
    let spread = counts.iter().max().unwrap() - counts.iter().min().unwrap();
    assert!(spread <= 1, "least-connections left {sessions:?}");

    for clients in [first, second] {
        let summary = clients.finish();
        assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");
        assert_eq!(summary["closed_by_peer"], 0, "{summary}");
    }
    Ok(())
}

fn hung_node_is_found_by_protocol_checks(lab: &Lab) -> Result<(), Failed> {
    let front = front(
        "random",
        r#"{ interval = "500ms", timeout = "500ms", rise = 2, fall = 2 }"#,
    );
    let _heal = lab.heal(&["r3"]);
    lab.pause("r3");
    // The kernel still accepts TCP connections for the stopped broker: a TCP check would pass.
    let raw = TcpStream::connect_timeout(
        &ports::address("r3", "amqp").parse().unwrap(),
        Duration::from_secs(5),
    );
    assert!(raw.is_ok(), "a paused node still accepts TCP connections");
    // fall × (interval + timeout) is 2 s; the bound covers a loaded machine.
    front.wait_node_up("r3", false, Duration::from_secs(30));
    let timeouts = front.tether.metric(
        "tether_health_checks_total",
        &[("node", "r3"), ("result", "timeout")],
    );
    assert!(timeouts >= 2.0, "found by {timeouts} timed-out checks");

    let clients = front.hold(9);
    assert_eq!(
        sessions_on(&front.sessions(), "r3"),
        0,
        "a hung node got sessions"
    );
    let summary = clients.finish();
    assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");

    lab.resume("r3");
    front.wait_node_up("r3", true, RETURN_BOUND);
    Ok(())
}

fn every_node_down_closes_new_clients_promptly(lab: &Lab) -> Result<(), Failed> {
    let front = front(
        "random",
        r#"{ interval = "500ms", timeout = "500ms", rise = 2, fall = 2 }"#,
    );
    let heal = lab.heal(&NODES);
    for node in NODES {
        lab.stop(node);
    }
    // Stopped apps refuse connections; the checks see it within a second or two.
    for node in NODES {
        front.wait_node_up(node, false, Duration::from_secs(30));
    }
    let mut client = TcpStream::connect(("127.0.0.1", front.listener)).expect("tether accepts");
    // With no live node tether closes at once; ten seconds only guard against a hang.
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let _ = client.write_all(b"AMQP\x00\x00\x09\x01");
    let mut buf = [0u8; 16];
    match client.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => return Err(format!("got {n} bytes from a cluster that is down").into()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(format!("the client was left hanging: {e}").into()),
    }
    let (status, _) = support::http_get(front.tether.admin, "/healthz")?;
    assert_eq!(status, 200, "tether keeps running");

    drop(heal);
    for node in NODES {
        front.wait_node_up(node, true, RETURN_BOUND);
    }
    let summary = clients::run(
        "pika_roundtrip.py",
        &[
            format!("--port={}", front.listener),
            "--queue=foundation-after-outage".into(),
            "--count=50".into(),
        ],
    );
    assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["received"], 50, "{summary}");
    Ok(())
}

fn random_spreads_new_sessions() -> Result<(), Failed> {
    let front = front("random", r#"{ interval = "1s", timeout = "1s" }"#);
    for _ in 0..300 {
        // Each session reaches a broker: it answers the protocol header with connection.start.
        let mut client = TcpStream::connect(("127.0.0.1", front.listener))?;
        client.set_read_timeout(Some(Duration::from_secs(10)))?;
        client.write_all(b"AMQP\x00\x00\x09\x01")?;
        let mut frame_header = [0u8; 7];
        client.read_exact(&mut frame_header)?;
        assert_eq!(frame_header[0], 1, "a method frame");
    }
    let metrics = front.tether.metrics();
    let per_node: Vec<f64> = NODES
        .iter()
        .map(|n| support::prom::value(&metrics, "tether_upstream_connects_total", &[("node", n)]))
        .collect();
    assert_eq!(per_node.iter().sum::<f64>(), 300.0, "{per_node:?}");
    for (node, count) in NODES.iter().zip(&per_node) {
        assert!(
            *count > 60.0,
            "{node} got {count} of 300 sessions: {per_node:?}"
        );
    }
    Ok(())
}

fn least_connections_keeps_long_sessions_even() -> Result<(), Failed> {
    let front = front(
        "least-connections",
        r#"{ interval = "1s", timeout = "1s" }"#,
    );
    let clients = front.hold(31);
    let sessions = front.sessions();
    let counts: Vec<u64> = sessions.iter().map(|(_, s)| *s).collect();
    assert_eq!(counts.iter().sum::<u64>(), 31, "{sessions:?}");
    let spread = counts.iter().max().unwrap() - counts.iter().min().unwrap();
    assert!(spread <= 1, "{sessions:?}");
    let summary = clients.finish();
    assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");
    Ok(())
}

fn metrics_pass_promtool() -> Result<(), Failed> {
    let front = front("random", r#"{ interval = "500ms", timeout = "500ms" }"#);
    let summary = clients::run(
        "pika_roundtrip.py",
        &[
            format!("--port={}", front.listener),
            "--queue=foundation-promtool".into(),
            "--count=10".into(),
        ],
    );
    assert_eq!(summary["received"], 10, "{summary}");
    let metrics = front.tether.metrics();
    for name in [
        "tether_node_up",
        "tether_sessions",
        "tether_sessions_total",
        "tether_upstream_sessions",
        "tether_health_checks_total",
        "tether_bytes_total",
    ] {
        assert!(
            support::prom::series(&metrics, name).next().is_some(),
            "{name} missing from /metrics"
        );
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool (Debian package prometheus) is needed: {e}"))?;
    promtool
        .stdin
        .take()
        .expect("piped")
        .write_all(metrics.as_bytes())?;
    let output = promtool.wait_with_output()?;
    let said = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "promtool check metrics:\n{said}");
    assert!(said.trim().is_empty(), "promtool check metrics:\n{said}");
    Ok(())
}

/// `[limits] max_sessions` bounds the sessions of every listener together: with 3 allowed and
/// 3 open over two listeners, a fourth client is not accepted (its connection waits in the
/// backlog, nothing reaches a node) until one of the three leaves (#15).
fn the_process_session_cap_holds_every_listener() -> Result<(), Failed> {
    let nodes = lab_nodes(&["r1"], &["amqp"]);
    let mut config = TetherConfig::new().cluster("lab", &nodes);
    let a = config.listener("a", "tcp", "lab", "endpoint = \"amqp\"");
    let b = config.listener("b", "tcp", "lab", "endpoint = \"amqp\"");
    let tether = config.raw("[limits]\nmax_sessions = 3").start();
    // A session is open once the node's connection.start comes back through it.
    let open = |port: u16| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .write_all(b"AMQP\x00\x00\x09\x01")
            .expect("protocol header");
        stream
    };
    let started = |stream: &mut TcpStream, wait: Duration| {
        stream.set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        matches!(stream.read(&mut byte), Ok(1))
    };
    // Generous: a node's answer through a session takes milliseconds.
    let mut held: Vec<TcpStream> = [a, a, b].into_iter().map(open).collect();
    for stream in &mut held {
        assert!(
            started(stream, Duration::from_secs(10)),
            "a session below the cap did not start"
        );
    }
    let mut fourth = open(b);
    // Two seconds in which an accepted session would have answered hundreds of times over.
    assert!(
        !started(&mut fourth, Duration::from_secs(2)),
        "a fourth session started past [limits] max_sessions = 3"
    );
    let sessions = tether.metric("tether_sessions", &[]);
    let reached = tether.metric(
        "tether_limits_reached_total",
        &[("limit", "process_max_sessions")],
    );
    assert_eq!(sessions, 3.0, "sessions open over both listeners");
    assert!(reached >= 1.0, "the cap was not counted: {reached}");
    drop(held.remove(0));
    assert!(
        started(&mut fourth, Duration::from_secs(10)),
        "the fourth session did not start once one of the three left"
    );
    Ok(())
}

fn main() {
    Suite::new(&["rabbit"])
        .plain(
            "pika_through_the_tcp_listener",
            pika_through_the_tcp_listener,
        )
        .with_lab(
            "killed_node_is_skipped_after_one_failed_connect_and_returns",
            killed_node_is_skipped_after_one_failed_connect_and_returns,
        )
        .with_lab(
            "hung_node_is_found_by_protocol_checks",
            hung_node_is_found_by_protocol_checks,
        )
        .with_lab(
            "every_node_down_closes_new_clients_promptly",
            every_node_down_closes_new_clients_promptly,
        )
        .plain("random_spreads_new_sessions", random_spreads_new_sessions)
        .plain(
            "least_connections_keeps_long_sessions_even",
            least_connections_keeps_long_sessions_even,
        )
        .plain("metrics_pass_promtool", metrics_pass_promtool)
        .plain(
            "the_process_session_cap_holds_every_listener",
            the_process_session_cap_holds_every_listener,
        )
        .run()
}
