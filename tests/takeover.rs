//! Takeover against the bundled RabbitMQ cluster, with real clients through all three kinds of
//! listener: a new tether process takes the listening sockets and every session over from the
//! running one, which exits; no client connection is closed, no client sees an error, nothing
//! is lost or delivered twice, and the broker keeps the same connections. A new process that
//! dies halfway leaves the rest with the old one; a second takeover while one runs, and one
//! from a build that cannot read the running one's state, are refused.

mod support;

use libtest_mimic::Failed;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::clients;
use support::config::{TetherConfig, lab_nodes};
use support::lab::{Lab, ports};
use support::suite::Suite;
use support::tether::Tether;
use support::wait_for;

/// A tether in front of the lab's RabbitMQ nodes with an AMQP, a STOMP and a tcp listener,
/// and its takeover socket in a directory of its own.
struct Setup {
    tether: Tether,
    amqp: u16,
    stomp: u16,
    tcp: u16,
    _dir: tempfile::TempDir,
}

fn setup(takeover_keys: &str) -> Setup {
    setup_with(takeover_keys, false, "")
}

/// `tls_to_nodes`: the node legs go over TLS (the nodes' `amqps` and `stomps` endpoints);
/// `amqp_keys`: more keys for the AMQP listener.
fn setup_with(takeover_keys: &str, tls_to_nodes: bool, amqp_keys: &str) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("takeover.sock");
    let health = r#"health = { interval = "500ms", timeout = "1s", rise = 2, fall = 2 }"#;
    let (endpoints, tls) = match tls_to_nodes {
        true => (
            ["amqps", "stomps"],
            format!(
                "tls = {{ ca_file = {:?} }}",
                support::lab::tls_file("ca.pem").display().to_string()
            ),
        ),
        false => (["amqp", "stomp"], String::new()),
    };
    let mut config = TetherConfig::new().cluster(
        "lab",
        &format!("{health}\n{tls}\n{}", lab_nodes(&ports::RABBIT, &endpoints)),
    );
    let session = "failover_timeout = \"90s\"";
    let endpoint = |e: &str| format!("{session}\nendpoint = \"{e}\"");
    let amqp_keys = format!("{}\n{amqp_keys}", endpoint(endpoints[0]));
    let amqp = config.listener("amqp", "amqp", "lab", &amqp_keys);
    let stomp = config.listener("stomp", "stomp", "lab", &endpoint(endpoints[1]));
    let tcp = config.listener(
        "tcp",
        "tcp",
        "lab",
        &format!("endpoint = \"{}\"", endpoints[0]),
    );
    let config = config.raw(&format!(
        "[takeover]\nsocket = {:?}\ngrace = \"20s\"\n{takeover_keys}",
        socket.display().to_string()
    ));
    Setup {
        tether: config.start(),
        amqp,
        stomp,
        tcp,
        _dir: dir,
    }
}

/// A process started with `--takeover`.
struct Successor {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Successor {
    fn start(config: &Path, env: &[(&str, &str)]) -> Successor {
        let log = tempfile::NamedTempFile::new().expect("temp log");
        let child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["run", "--takeover", "-c"])
            .arg(config)
            .env("TETHER_LOG", "info,tether=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log handle"))
            .spawn()
            .expect("start tether --takeover");
        Successor { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Waits until the log has a line with `text` (or the process exits: a panic with its log).
    fn wait_log(&mut self, text: &str) -> String {
        // A takeover of a few sessions takes a fraction of a second; a minute covers a loaded
        // machine and the old process's grace.
        wait_for(
            &format!("{text:?} in the log"),
            Duration::from_secs(60),
            || {
                let log = self.log_text();
                if let Some(line) = log.lines().find(|l| l.contains(text)) {
                    return Some(line.to_owned());
                }
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("tether --takeover exited ({status}):\n{log}");
                }
                None
            },
        )
    }

    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// Open file descriptors of a process.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// The sessions each takeover reported, from the new process's "takeover done" line.
fn takeover_done(successor: &mut Successor) -> String {
    successor.wait_log("takeover done")
}

/// Client connections on tether's listening ports: (listener port, client port).
fn client_connections(listeners: &[u16]) -> BTreeSet<(u16, u16)> {
    let output = Command::new("ss")
        .args(["-Htn", "state", "established"])
        .output()
        .expect("run ss");
    let text = String::from_utf8_lossy(&output.stdout);
    let port = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
    };
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, peer) = (port(fields.get(2)?)?, port(fields.get(3)?)?);
            listeners.contains(&local).then_some((local, peer))
        })
        .collect()
}

fn broker_connection_names() -> BTreeSet<String> {
    let listed = clients::run("broker_connections.py", &[]);
    no_errors(&listed);
    (listed["names"].as_array().into_iter().flatten())
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect()
}

fn no_errors(summary: &Value) {
    assert_eq!(
        summary["errors"],
        Value::Array(vec![]),
        "a client saw an error: {summary}"
    );
}

/// The load of the issue: a pika publisher with confirms and a pika consumer with manual acks,
/// a stomp.py producer with receipts and a stomp.py consumer, and a pika publisher through the
/// tcp listener (an open tcp session) whose messages the same pika consumer counts.
struct Load {
    consumer: clients::Running,
    publisher: clients::Running,
    tcp_publisher: Option<clients::Running>,
    stomp_consumer: clients::Running,
    stomp_producer: clients::Running,
    stomp_count: u64,
}

/// `tcp`: with the tcp session (whose node must stay up: a tcp session cannot fail over).
fn load(setup: &Setup, queue: &str, stomp_count: u64, tcp: bool) -> Load {
    let stomp_queue = format!("{queue}-stomp");
    clients::declare_queue(queue);
    clients::declare_queue(&stomp_queue);
    let amqp = format!("--port={}", setup.amqp);
    let mut consumer = clients::spawn(
        "pika_consumer.py",
        &[amqp.clone(), format!("--queue={queue}"), "--idle=3".into()],
    );
    assert_eq!(consumer.line(), "ready");
    let mut publisher = clients::spawn(
        "pika_publisher.py",
        &[
            amqp,
            format!("--queue={queue}"),
            "--confirms".into(),
            "--rate=100".into(),
        ],
    );
    assert_eq!(publisher.line(), "ready");
    let tcp_publisher = tcp.then(|| {
        let mut publisher = clients::spawn(
            "pika_publisher.py",
            &[
                format!("--port={}", setup.tcp),
                format!("--queue={queue}"),
                "--confirms".into(),
                "--rate=20".into(),
                "--tag=tcp".into(),
            ],
        );
        assert_eq!(publisher.line(), "ready");
        publisher
    });
    let stomp = format!("--port={}", setup.stomp);
    let dest = format!("--dest=/amq/queue/{stomp_queue}");
    let mut stomp_consumer = clients::spawn(
        "stomp_consumer.py",
        &[
            stomp.clone(),
            dest.clone(),
            format!("--expect={stomp_count}"),
            "--idle=5".into(),
        ],
    );
    assert_eq!(stomp_consumer.line(), "ready");
    let mut stomp_producer = clients::spawn(
        "stomp_producer.py",
        &[
            stomp,
            dest,
            format!("--count={stomp_count}"),
            "--rate=50".into(),
            "--receipts".into(),
        ],
    );
    assert_eq!(stomp_producer.line(), "ready");
    Load {
        consumer,
        publisher,
        tcp_publisher,
        stomp_consumer,
        stomp_producer,
        stomp_count,
    }
}

impl Load {
    /// Ends the load and checks the counts: no client error, every confirmed or receipted
    /// message received once, none twice. Returns the counts, for the log.
    fn counted(self) -> String {
        self.counted_with(false)
    }

    /// The same; `redelivered`: duplicates are allowed (a session replayed on a node gets
    /// again, marked redelivered, what it had not acked).
    fn counted_with(self, redelivered: bool) -> String {
        let published = self.publisher.finish();
        let tcp_published = (self.tcp_publisher.map(clients::Running::finish))
            .unwrap_or_else(|| serde_json::json!({"sent": 0, "confirmed": 0, "errors": []}));
        let sent = self.stomp_producer.finish();
        let consumed = self.consumer.finish();
        let stomp_consumed = self.stomp_consumer.finish();
        for summary in [
            &published,
            &tcp_published,
            &sent,
            &consumed,
            &stomp_consumed,
        ] {
            no_errors(summary);
        }
        let confirmed = published["confirmed"].as_u64().unwrap_or(0);
        let tcp_confirmed = tcp_published["confirmed"].as_u64().unwrap_or(0);
        assert!(confirmed > 0, "{published}");
        assert_eq!(published["sent"], confirmed, "unconfirmed: {published}");
        assert_eq!(consumed["per_tag"]["p"], confirmed, "AMQP lost: {consumed}");
        let tcp_received = consumed["per_tag"]["tcp"].as_u64().unwrap_or(0);
        assert_eq!(tcp_received, tcp_confirmed, "tcp lost: {consumed}");
        if !redelivered {
            assert_eq!(consumed["duplicates"], 0, "{consumed}");
            assert_eq!(stomp_consumed["duplicates"], 0, "{stomp_consumed}");
        }
        assert_eq!(consumed["tag_regressions"], 0, "{consumed}");
        assert_eq!(sent["receipts"], self.stomp_count, "{sent}");
        assert_eq!(sent["disconnects"], 0, "{sent}");
        assert_eq!(
            stomp_consumed["received"], self.stomp_count,
            "STOMP lost: {stomp_consumed}"
        );
        assert_eq!(stomp_consumed["disconnects"], 0, "{stomp_consumed}");
        format!(
            "AMQP published {} confirmed {confirmed}; tcp confirmed {tcp_confirmed}; \
             received {} ({} duplicates); STOMP sent {}, receipted {}, received {} ({} \
             duplicates); longest STOMP receipt wait {}s",
            published["sent"],
            consumed["received"],
            consumed["duplicates"],
            sent["sent"],
            sent["receipts"],
            stomp_consumed["received"],
            stomp_consumed["duplicates"],
            sent["max_stall_s"]
        )
    }
}

/// Ten takeovers in a row under load, each by a freshly started process.
fn ten_takeovers_under_load_close_no_connection(_lab: &Lab) -> Result<(), Failed> {
    let setup = setup("");
    let config = setup.tether.config_path().to_path_buf();
    let load = load(&setup, "takeover-ten", 1500, true);
    // Every session is set up (the consumers consume, the publishers publish) before the
    // connections are counted.
    std::thread::sleep(Duration::from_secs(2));
    let listeners = [setup.amqp, setup.stomp, setup.tcp];
    let clients_before = client_connections(&listeners);
    let broker_before = broker_connection_names();
    let fds_before = descriptors(setup.tether.pid());
    assert_eq!(
        clients_before.len(),
        5,
        "the five clients: {clients_before:?}"
    );
    let mut successors: Vec<Successor> = Vec::new();
    for round in 1..=10 {
        let mut successor = Successor::start(&config, &[]);
        let done = takeover_done(&mut successor);
        eprintln!("takeover {round}: {done}");
        assert!(
            done.contains(r#""both_legs": 5"#),
            "all five sessions crossed with both legs: {done}"
        );
        successors.push(successor);
        std::thread::sleep(Duration::from_secs(1));
    }
    let clients_after = client_connections(&listeners);
    let broker_after = broker_connection_names();
    let last = successors.last().expect("ten successors").child.id();
    let fds_after = descriptors(last);
    eprintln!("descriptors: {fds_before} in the first process, {fds_after} in the tenth successor");
    // The same sessions and listeners; a health check's connection may be open in either.
    assert!(
        fds_after <= fds_before + 2,
        "descriptors leaked across takeovers: {fds_before} before, {fds_after} after"
    );
    let counts = load.counted();
    eprintln!("{counts}");
    assert_eq!(
        clients_before, clients_after,
        "a client connection was closed or replaced"
    );
    let gone: Vec<&String> = broker_before.difference(&broker_after).collect();
    assert!(
        gone.is_empty(),
        "the broker lost connections it had before: {gone:?}"
    );
    // The first process and every successor but the last exited by themselves.
    drop(setup);
    for (i, successor) in successors.iter_mut().enumerate().take(9) {
        let status = successor.child.try_wait().ok().flatten();
        assert!(
            status.is_some_and(|s| s.success()),
            "takeover {} left its predecessor running or failed: {status:?}",
            i + 2
        );
    }
    Ok(())
}

/// Node legs over TLS cannot cross: the client sockets do, and the new process replays each
/// session on a node, as a failover does. Nothing is lost and no client sees an error; what
/// was not acked may come again, marked redelivered.
fn node_legs_over_tls_cross_by_replay(_lab: &Lab) -> Result<(), Failed> {
    let setup = setup_with("", true, "");
    let config = setup.tether.config_path().to_path_buf();
    let load = load(&setup, "takeover-tls", 600, false);
    std::thread::sleep(Duration::from_secs(2));
    let listeners = [setup.amqp, setup.stomp];
    let clients_before = client_connections(&listeners);
    let mut successors = Vec::new();
    for round in 1..=3 {
        let mut successor = Successor::start(&config, &[]);
        let done = takeover_done(&mut successor);
        eprintln!("takeover {round}: {done}");
        assert!(
            done.contains(r#""client_leg": 4"#),
            "all four sessions crossed by their client socket: {done}"
        );
        successors.push(successor);
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(client_connections(&listeners), clients_before);
    eprintln!("{}", load.counted_with(true));
    Ok(())
}

/// Sessions on shared (multiplexed) node connections cross with their client sockets and are
/// replayed onto shared connections of the new process; the STOMP sessions beside them cross
/// with both legs.
fn multiplexed_sessions_cross_onto_shared_connections(_lab: &Lab) -> Result<(), Failed> {
    let setup = setup_with("", false, "pool = { multiplex = true }");
    let config = setup.tether.config_path().to_path_buf();
    let load = load(&setup, "takeover-multiplex", 600, false);
    std::thread::sleep(Duration::from_secs(2));
    let listeners = [setup.amqp, setup.stomp];
    let clients_before = client_connections(&listeners);
    let mut successors = Vec::new();
    for round in 1..=2 {
        let mut successor = Successor::start(&config, &[]);
        let done = takeover_done(&mut successor);
        eprintln!("takeover {round}: {done}");
        assert!(
            done.contains(r#"sessions={"both_legs": 2, "client_leg": 2}"#),
            "STOMP with both legs, AMQP by replay: {done}"
        );
        successors.push(successor);
        std::thread::sleep(Duration::from_secs(2));
    }
    let shared = setup
        .tether
        .metric("tether_pool_shared_clients", &[("listener", "amqp")]);
    assert_eq!(
        shared, 2.0,
        "both AMQP sessions share node connections again"
    );
    assert_eq!(client_connections(&listeners), clients_before);
    eprintln!("{}", load.counted_with(true));
    Ok(())
}

/// A node killed while a takeover runs: the sessions on it fail over in whichever process
/// holds them, with no client error and nothing lost.
fn a_takeover_while_a_node_is_killed(lab: &Lab) -> Result<(), Failed> {
    let setup = setup("");
    let config = setup.tether.config_path().to_path_buf();
    // No tcp session: one on the killed node would be closed, as tcp sessions are.
    let load = load(&setup, "takeover-kill", 600, false);
    std::thread::sleep(Duration::from_secs(2));
    let busy = (setup.tether.sessions_per_node("lab").into_iter())
        .filter(|(_, sessions)| *sessions > 0)
        .map(|(name, _)| name)
        .next()
        .expect("a node with sessions");
    let _heal = lab.heal(&[busy.as_str()]);
    let mut successor = Successor::start(&config, &[]);
    lab.kill(&busy);
    let done = takeover_done(&mut successor);
    eprintln!("killed {busy} during the takeover: {done}");
    // The load runs on through the failovers.
    std::thread::sleep(Duration::from_secs(5));
    // The killed node's sessions fail over: what they had not acked comes again, redelivered.
    eprintln!("{}", load.counted_with(true));
    Ok(())
}

/// The new process takes some sessions and then hangs; it is killed. The old process keeps
/// every session it did not hand over, with no error for them, and accepts again.
fn killing_the_new_process_halfway_leaves_the_rest_with_the_old(_lab: &Lab) -> Result<(), Failed> {
    let setup = setup("");
    let config = setup.tether.config_path().to_path_buf();
    let port = format!("--port={}", setup.amqp);
    let mut held = clients::spawn("hold_connections.py", &[port.clone(), "--count=40".into()]);
    assert_eq!(held.line(), "ready");
    let fds_before = descriptors(setup.tether.pid());
    let taken = 15;
    let mut successor = Successor::start(
        &config,
        &[("TETHER_TAKEOVER_STALL_AFTER", &taken.to_string())],
    );
    successor.wait_log("stalling");
    successor.kill_9();
    // The old process learns that its peer is gone and accepts again.
    wait_for(
        "the old process to carry on",
        Duration::from_secs(30),
        || {
            let log = setup.tether.log_text();
            log.contains("takeover failed").then_some(())
        },
    );
    // The old process closed its descriptors of the sessions it handed over (a client and a
    // node socket each), and kept every other (a health check's connection may come or go).
    let fds_after = descriptors(setup.tether.pid());
    eprintln!("descriptors of the old process: {fds_before} before, {fds_after} after");
    assert!(
        fds_after.abs_diff(fds_before - 2 * taken) <= 2,
        "{fds_before} before, {fds_after} after handing {taken} sessions over"
    );
    let queue = "takeover-halfway";
    clients::declare_queue(queue);
    let roundtrip = clients::run(
        "pika_roundtrip.py",
        &[port, format!("--queue={queue}"), "--count=20".into()],
    );
    no_errors(&roundtrip);
    let held = held.finish();
    eprintln!("held: {held}; after the kill: {roundtrip}");
    no_errors(&held);
    assert_eq!(
        held["closed_by_peer"], taken,
        "exactly the sessions the killed process had taken are gone: {held}"
    );
    Ok(())
}

/// A second takeover while one runs is refused, and so is one from a build that cannot read
/// the running one's state, and a new process that fails before it is ready exits with the
/// reason; the running process serves on throughout.
fn a_second_takeover_and_an_unreadable_format_are_refused(_lab: &Lab) -> Result<(), Failed> {
    let setup = setup("");
    let config = setup.tether.config_path().to_path_buf();
    // Sessions to hand over, so that the first takeover is still running when it stalls.
    let mut held = clients::spawn(
        "hold_connections.py",
        &[format!("--port={}", setup.amqp), "--count=3".into()],
    );
    assert_eq!(held.line(), "ready");
    let mut first = Successor::start(&config, &[("TETHER_TAKEOVER_STALL_AFTER", "0")]);
    first.wait_log("stalling");
    let second = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["run", "--takeover", "-c"])
        .arg(&config)
        .output()
        .expect("run a second takeover");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second takeover ran: {said}");
    assert!(said.contains("already under way"), "{said}");
    first.kill_9();

    let socket = takeover_socket(&config);
    let refused = hello_with_formats(&socket, [tether::takeover::FORMAT + 1; 2]);
    assert!(refused.contains("writes hand-over format"), "{refused}");

    // A new process that fails before it is ready (its config adds a listener on a port that
    // is taken): it exits non-zero with the reason, and the old one serves on.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to take");
    let port = taken.local_addr().expect("its address").port();
    let text = std::fs::read_to_string(&config).expect("config");
    let broken = format!(
        "{text}\n[[listeners]]\nname = \"extra\"\nbind = \"127.0.0.1:{port}\"\nprotocol = \"amqp\"\ncluster = \"lab\"\n"
    );
    setup.tether.rewrite_config(&broken);
    let failed = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["run", "--takeover", "-c"])
        .arg(&config)
        .output()
        .expect("run a takeover that fails");
    setup.tether.rewrite_config(&text);
    let said = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{said}");
    assert!(said.contains("cannot bind"), "{said}");
    // The old process noticed and carries on (its log says so).
    wait_for(
        "the old process to carry on",
        Duration::from_secs(60),
        || {
            let log = setup.tether.log_text();
            log.contains("did not get ready; carrying on").then_some(())
        },
    );

    let queue = "takeover-refused";
    clients::declare_queue(queue);
    let roundtrip = clients::run(
        "pika_roundtrip.py",
        &[
            format!("--port={}", setup.amqp),
            format!("--queue={queue}"),
            "--count=10".into(),
        ],
    );
    no_errors(&roundtrip);
    let held = held.finish();
    no_errors(&held);
    assert_eq!(held["closed_by_peer"], 0, "{held}");
    Ok(())
}

/// SIGUSR2 makes the running tether start `tether run --takeover` from its binary, which takes
/// over (the sessions cross, a drained node stays drained) and the old process exits 0.
fn sigusr2_starts_a_successor_that_takes_over(_lab: &Lab) -> Result<(), Failed> {
    let mut setup = setup("");
    // A drained node stays drained in the new process.
    let (drained, said) = setup.tether.cli(&["drain", "r3"]);
    assert!(drained, "{said}");
    let mut held = clients::spawn(
        "hold_connections.py",
        &[format!("--port={}", setup.amqp), "--count=5".into()],
    );
    assert_eq!(held.line(), "ready");
    setup.tether.signal("USR2");
    let log = wait_for("the takeover", Duration::from_secs(60), || {
        let log = setup.tether.log_text();
        log.contains("takeover done sessions=").then_some(log)
    });
    let started = (log.lines())
        .find(|l| l.contains("takeover: started a new process"))
        .and_then(|l| l.split("pid=").nth(1))
        .and_then(|pid| pid.split_whitespace().next()?.parse::<u32>().ok())
        .expect("the successor's pid in the log");
    // Stopped at the end even if the test fails (it is no child of the test).
    let _successor = KillOnDrop(started);
    assert!(log.contains(r#"sessions={"both_legs": 5}"#), "{log}");
    let status = setup.tether.wait_exit(Duration::from_secs(30));
    assert_eq!(status, Some(0), "the old process exits 0 once taken over");
    // The admin listener crossed too: this is the new process answering.
    let nodes = setup.tether.status()["clusters"][0]["nodes"].clone();
    let r3 = (nodes.as_array().into_iter().flatten())
        .find(|n| n["name"] == "r3")
        .cloned()
        .unwrap_or_default();
    assert_eq!(r3["drained"], true, "r3 is still drained: {nodes}");
    let held = held.finish();
    no_errors(&held);
    assert_eq!(held["closed_by_peer"], 0, "{held}");
    Ok(())
}

/// A session whose client leg is TLS cannot cross: it stays with the old process until the
/// takeover's grace ends and is then closed (with AMQP's 320), as HAProxy's and Envoy's
/// restarts close theirs; a plain session beside it crosses.
fn a_tls_client_leg_stays_until_the_grace_then_closes(_lab: &Lab) -> Result<(), Failed> {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("takeover.sock");
    let mut config = TetherConfig::new().cluster("lab", &lab_nodes(&ports::RABBIT, &["amqp"]));
    let tls_port = config.listener(
        "amqps",
        "amqp",
        "lab",
        &format!(
            "tls = {{ cert_file = {:?}, key_file = {:?} }}",
            support::lab::tls_file("node.pem").display().to_string(),
            support::lab::tls_file("node.key").display().to_string()
        ),
    );
    let plain_port = config.listener("amqp", "amqp", "lab", "");
    let config = config.raw(&format!(
        "[takeover]\nsocket = {:?}\ngrace = \"3s\"\n",
        socket.display().to_string()
    ));
    let tether = config.start();
    let queue = "takeover-tls-client";
    clients::declare_queue(queue);
    let mut consumer = clients::spawn(
        "pika_consumer.py",
        &[
            format!("--port={tls_port}"),
            format!("--queue={queue}"),
            format!("--tls-ca={}", support::lab::tls_file("ca.pem").display()),
            "--idle=3".into(),
        ],
    );
    assert_eq!(consumer.line(), "ready");
    eprintln!(
        "TLS sessions: {}",
        tether.metric("tether_sessions", &[("listener", "amqps")])
    );
    let mut publisher = clients::spawn(
        "pika_publisher.py",
        &[
            format!("--port={plain_port}"),
            format!("--queue={queue}"),
            "--confirms".into(),
            "--rate=50".into(),
        ],
    );
    assert_eq!(publisher.line(), "ready");
    std::thread::sleep(Duration::from_secs(1));
    let mut successor = Successor::start(tether.config_path(), &[]);
    let done = takeover_done(&mut successor);
    eprintln!("{done}");
    assert!(
        done.contains(r#"sessions={"both_legs": 1} left_with_old=1"#),
        "the plain session crossed, the TLS one stayed: {done}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let published = publisher.finish();
    let consumed = consumer.finish();
    eprintln!("publisher: {published}\nconsumer: {consumed}");
    no_errors(&published);
    let errors = consumed["errors"].to_string();
    assert!(
        errors.contains("320") || errors.contains("shutting down"),
        "the TLS client's connection was closed at the end of the grace: {consumed}"
    );
    drop(tether);
    Ok(())
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .status();
    }
}

fn takeover_socket(config: &Path) -> PathBuf {
    let loaded = tether::config::Config::load(config).expect("config loads");
    loaded.takeover.socket_for(config)
}

/// Says hello as a build that reads only `formats` would; returns the refusal's reason.
fn hello_with_formats(socket: &Path, formats: [u32; 2]) -> String {
    use tether::takeover::{Message, channel};
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .expect("connect to the takeover socket");
        let (mut sender, mut receiver) = channel::split(stream);
        let hello = Message::Hello {
            formats,
            version: "test".into(),
            pid: std::process::id(),
        };
        sender.send(&hello, &[]).await.expect("hello");
        match receiver.recv().await {
            Ok(Some((Message::Refused { reason }, _))) => reason,
            other => panic!("not refused: {other:?}"),
        }
    })
}

fn main() {
    Suite::new(&["rabbit"])
        .with_lab(
            "ten_takeovers_under_load_close_no_connection",
            ten_takeovers_under_load_close_no_connection,
        )
        .with_lab(
            "node_legs_over_tls_cross_by_replay",
            node_legs_over_tls_cross_by_replay,
        )
        .with_lab(
            "multiplexed_sessions_cross_onto_shared_connections",
            multiplexed_sessions_cross_onto_shared_connections,
        )
        .with_lab(
            "a_takeover_while_a_node_is_killed",
            a_takeover_while_a_node_is_killed,
        )
        .with_lab(
            "killing_the_new_process_halfway_leaves_the_rest_with_the_old",
            killing_the_new_process_halfway_leaves_the_rest_with_the_old,
        )
        .with_lab(
            "a_second_takeover_and_an_unreadable_format_are_refused",
            a_second_takeover_and_an_unreadable_format_are_refused,
        )
        .with_lab(
            "sigusr2_starts_a_successor_that_takes_over",
            sigusr2_starts_a_successor_that_takes_over,
        )
        .with_lab(
            "a_tls_client_leg_stays_until_the_grace_then_closes",
            a_tls_client_leg_stays_until_the_grace_then_closes,
        )
        .run()
}
