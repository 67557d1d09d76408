//! Multiplexing (`pool = { multiplex = true }`) against the bundled RabbitMQ cluster, with pika:
//! a thousand held client connections cost the cluster a handful of connections (counted by the
//! management API) and survive a kill -9 of the node in use with no error and no message lost;
//! a client that stops reading is moved off the shared connection instead of holding back the
//! others' publishes; a wrong password is refused; an exclusive queue dies with its client; a
//! hung node's shared connections are found out by their own questions and left.

mod support;

use libtest_mimic::Failed;
use serde_json::Value;
use std::time::{Duration, Instant};
use support::clients;
use support::front::Front;
use support::lab::{Lab, ports};
use support::prom;
use support::suite::Suite;
use support::wait_for;

const MULTIPLEX: &str = "pool = { multiplex = true }";

fn front() -> Front {
    Front::start("amqp", "lab", &ports::RABBIT, MULTIPLEX)
}

fn no_errors(summary: &Value) {
    assert_eq!(
        summary["errors"],
        Value::Array(vec![]),
        "a client saw an error: {summary}"
    );
}

/// The same, with tether's log (its last lines) in the failure message.
fn no_errors_logged(front: &Front, summary: &Value) {
    if summary["errors"] != Value::Array(vec![]) {
        let log = front.tether.log_text();
        let tail: Vec<&str> = log.lines().rev().take(150).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        eprintln!("tether's log, last lines:\n{}", tail.join("\n"));
    }
    no_errors(summary);
}

/// Shared node connections per node, from tether's metrics.
fn shared_connections(front: &Front) -> Vec<(String, f64)> {
    let metrics = front.tether.metrics();
    prom::series(&metrics, "tether_pool_shared_connections")
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn shared_total(front: &Front) -> f64 {
    shared_connections(front).iter().map(|(_, v)| v).sum()
}

fn shared_clients_on(front: &Front, node: &str) -> f64 {
    let metrics = front.tether.metrics();
    prom::series(&metrics, "tether_pool_shared_clients")
        .filter(|(labels, _)| labels.contains(&format!("node=\"{node}\"")))
        .map(|(_, v)| v)
        .sum()
}

/// The cluster's client connections as the management API lists them.
fn broker_connections() -> Value {
    clients::run("broker_connections.py", &[])
}

fn consumer(front: &Front, queue: &str) -> clients::Running {
    let mut consumer = clients::spawn(
        "pika_consumer.py",
        &[
            format!("--port={}", front.port),
            format!("--queue={queue}"),
            "--idle=3".into(),
        ],
    );
    assert_eq!(consumer.line(), "ready");
    consumer
}

/// 1,000 pika connections held open through tether use at most 8 broker connections (the
/// management API's count, with a consumer and a publisher sharing them too). The node with
/// the most shared connections is killed with kill -9 while the publisher runs: afterwards every
/// held connection publishes one more message and has it confirmed, and the consumer gets every
/// confirmed message.
fn a_thousand_held_connections_share_a_few_and_survive_a_node_kill(
    lab: &Lab,
) -> Result<(), Failed> {
    let queue = "mux-held";
    clients::declare_queue(queue);
    let front = front();
    let port = format!("--port={}", front.port);
    let consumer = consumer(&front, queue);
    let started = Instant::now();
    let mut held = clients::spawn(
        "pika_held.py",
        &[
            port.clone(),
            "--count=1000".into(),
            format!("--queue={queue}"),
        ],
    );
    assert_eq!(held.line(), "ready");
    eprintln!("1000 connections opened in {:?}", started.elapsed());
    let mut publisher = clients::spawn(
        "pika_publisher.py",
        &[
            port,
            format!("--queue={queue}"),
            "--confirms".into(),
            "--rate=50".into(),
        ],
    );
    assert_eq!(publisher.line(), "ready");

    // The management API's list lags the broker by its stats interval (5 s): 30 s is plenty.
    let mut listed = Value::Null;
    wait_for(
        "the management API to list tether's connections",
        Duration::from_secs(30),
        || {
            listed = broker_connections();
            let count = listed["connections"].as_i64().unwrap_or(-1);
            (count > 0 && count as f64 == shared_total(&front)).then_some(())
        },
    );
    let before = shared_connections(&front);
    eprintln!("before the kill: broker lists {listed}; tether shares {before:?}");
    assert!(
        listed["connections"].as_i64().unwrap_or(i64::MAX) <= 8,
        "1002 client connections use {} broker connections",
        listed["connections"]
    );

    let victim = before
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .and_then(|(labels, _)| {
            ports::RABBIT
                .iter()
                .find(|n| labels.contains(&format!("node=\"{n}\"")))
                .copied()
        })
        .expect("a node holds shared connections");
    let heal = lab.heal(&[victim]);
    let clients_on_victim = shared_clients_on(&front, victim);
    lab.kill(victim);
    // Every session on the victim fails over: 60 s, as a thousand replays queue up on 2 cores.
    wait_for(
        &format!("the {clients_on_victim} sessions to leave {victim}"),
        Duration::from_secs(60),
        || (shared_clients_on(&front, victim) == 0.0).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(2));
    held.send("publish");
    let round: Value = serde_json::from_str(&held.line()).expect("a JSON line per round");
    let published = publisher.finish();
    let holding = held.finish();
    let consumed = consumer.finish();
    let after = broker_connections();
    eprintln!(
        "killed {victim} ({clients_on_victim} sessions on it)\nheld, after the kill: {round}\n\
         held: {holding}\npublisher: {published}\nconsumer: {consumed}\nbroker after: {after}"
    );
    no_errors_logged(&front, &round);
    no_errors_logged(&front, &holding);
    no_errors_logged(&front, &published);
    no_errors(&consumed);
    assert_eq!(holding["opened"], 1000);
    assert_eq!(round["confirmed"], 1000, "{round}");
    assert_eq!(holding["closed"], 1000);
    let confirmed = published["confirmed"].as_u64().unwrap_or(0);
    assert!(confirmed > 0);
    assert_eq!(consumed["per_tag"]["p"], confirmed, "lost: {consumed}");
    assert_eq!(consumed["per_tag"]["heldr1"], 1000, "lost: {consumed}");
    eprintln!(
        "counted: published {} confirmed {} (+1000 held) received {} duplicates {} lost 0 \
         client errors 0",
        published["sent"], confirmed, consumed["received"], consumed["duplicates"]
    );
    drop(heal); // the queue is deleted through r1, which may be the victim
    clients::delete_queue(queue);
    Ok(())
}

/// SIGSTOP of the node with the most shared clients while a publisher, a consumer and 50 held
/// clients share its connections: each shared connection asks the node (see
/// `session::liveness`), finds it hung and fails its sessions over; once the node is resumed,
/// every held client publishes once more with a confirm, and nothing is lost.
fn a_hung_node_is_left_by_its_shared_connections(lab: &Lab) -> Result<(), Failed> {
    let queue = "mux-hung";
    clients::declare_queue(queue);
    let front = front();
    let port = format!("--port={}", front.port);
    let consumer = consumer(&front, queue);
    let mut held = clients::spawn(
        "pika_held.py",
        &[
            port.clone(),
            "--count=50".into(),
            format!("--queue={queue}"),
        ],
    );
    assert_eq!(held.line(), "ready");
    let mut publisher = clients::spawn(
        "pika_publisher.py",
        &[
            port,
            format!("--queue={queue}"),
            "--confirms".into(),
            "--rate=50".into(),
        ],
    );
    assert_eq!(publisher.line(), "ready");
    std::thread::sleep(Duration::from_secs(1));
    let victim = ports::RABBIT
        .into_iter()
        .max_by(|a, b| shared_clients_on(&front, a).total_cmp(&shared_clients_on(&front, b)))
        .expect("three nodes");
    let clients_on_victim = shared_clients_on(&front, victim);
    assert!(clients_on_victim > 0.0, "no shared client on any node");
    let heartbeat_failovers = |front: &Front| {
        front
            .tether
            .metric("tether_failovers_total", &[("reason", "heartbeat")])
    };
    let before = heartbeat_failovers(&front);
    {
        let _heal = lab.heal(&[victim]);
        lab.pause(victim);
        // Found within about a second and a quarter, then replayed elsewhere; 30 s covers two
        // busy cores and stays under net_ticktime's partition.
        wait_for(
            &format!("the {clients_on_victim} sessions to leave {victim}"),
            Duration::from_secs(30),
            || (shared_clients_on(&front, victim) == 0.0).then_some(()),
        );
        lab.resume(victim);
    }
    let found_hung = heartbeat_failovers(&front) - before;
    std::thread::sleep(Duration::from_secs(2));
    held.send("publish");
    let round: Value = serde_json::from_str(&held.line()).expect("a JSON line per round");
    let published = publisher.finish();
    let holding = held.finish();
    let consumed = consumer.finish();
    eprintln!(
        "paused {victim} ({clients_on_victim} sessions on it); sessions failed over for the \
         node's silence: {found_hung}\nheld, after: {round}\nheld: {holding}\npublisher: \
         {published}\nconsumer: {consumed}"
    );
    no_errors_logged(&front, &round);
    no_errors_logged(&front, &holding);
    no_errors_logged(&front, &published);
    no_errors(&consumed);
    assert_eq!(round["confirmed"], 50, "{round}");
    let confirmed = published["confirmed"].as_u64().unwrap_or(0);
    assert!(confirmed > 0);
    assert_eq!(consumed["per_tag"]["p"], confirmed, "lost: {consumed}");
    assert_eq!(consumed["per_tag"]["heldr1"], 50, "lost: {consumed}");
    assert!(
        found_hung >= clients_on_victim,
        "{found_hung} heartbeat failovers for {clients_on_victim} sessions on {victim}"
    );
    clients::delete_queue(queue);
    Ok(())
}

/// A pika consumer with no prefetch limit stops reading its socket while 32 MB are delivered
/// to it through the connection it shares with two publishers. The confirmed publishes of the
/// one beside it go on at their pace (timed against a run before the stall, and printed); the
/// stalled client is moved onto a connection of its own, and once it reads again it gets
/// every message.
fn a_slow_consumer_does_not_hold_back_the_others(_lab: &Lab) -> Result<(), Failed> {
    let (slow_queue, fast_queue) = ("mux-slow", "mux-fast");
    clients::declare_queue(slow_queue);
    clients::declare_queue(fast_queue);
    let front = front();
    let port = format!("--port={}", front.port);
    let publish = |tag: &str| {
        let args = [
            port.clone(),
            format!("--queue={fast_queue}"),
            "--confirms".into(),
            "--count=1000".into(),
            "--rate=1000".into(),
            format!("--tag={tag}"),
        ];
        // Bounded, so that a stalled publisher fails the test instead of hanging it: 1,000
        // confirmed publishes take a few seconds on two busy cores, not 60.
        let (done, wait) = std::sync::mpsc::channel();
        let started = Instant::now();
        std::thread::spawn(move || {
            let _ = done.send(clients::run("pika_publisher.py", &args));
        });
        let summary = wait
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the {tag} publisher stalled for 60 s"));
        (summary, started.elapsed())
    };
    let (alone, alone_took) = publish("alone");
    no_errors(&alone);

    let mut slow = clients::spawn(
        "pika_slow_consumer.py",
        &[port.clone(), format!("--queue={slow_queue}")],
    );
    assert_eq!(slow.line(), "ready");
    // The fill and the publisher run together: the publisher's confirms come back on the
    // connection that carries the flood to the stalled consumer.
    let mut fill = clients::spawn(
        "pika_publisher.py",
        &[
            port.clone(),
            format!("--queue={slow_queue}"),
            "--count=4000".into(),
            "--size=8192".into(),
            "--rate=100000".into(),
            "--tag=fill".into(),
        ],
    );
    assert_eq!(fill.line(), "ready");
    let (beside, beside_took) = publish("beside");
    let unshared = || {
        front.tether.metric(
            "tether_pool_unshared_total",
            &[("listener", "amqp"), ("reason", "slow")],
        )
    };
    let unshared_by_then = unshared();
    let fill = fill.finish();
    no_errors(&fill);
    no_errors(&beside);
    // 32 MB reach tether at the broker's pace: a minute is ample on two cores.
    wait_for(
        "the stalled client to be moved off its shared connection",
        Duration::from_secs(60),
        || (unshared() >= 1.0).then_some(()),
    );
    slow.send("read");
    let consumed = slow.finish();
    eprintln!(
        "publisher alone: {alone} in {alone_took:?}\nbeside a stalled consumer: {beside} in \
         {beside_took:?} ({:.2}x; the stalled client moved off by then: {unshared_by_then})\n\
         fill: {fill}\nstalled consumer, once it read: {consumed}\nunshared {}",
        beside_took.as_secs_f64() / alone_took.as_secs_f64(),
        unshared()
    );
    no_errors_logged(&front, &consumed);
    assert_eq!(beside["confirmed"], 1000);
    assert_eq!(consumed["received"], 4000, "lost: {consumed}");
    clients::delete_queue(slow_queue);
    clients::delete_queue(fast_queue);
    Ok(())
}

/// Clears a memory alarm when dropped, also when the test fails.
struct Alarm<'a>(&'a Lab, &'static str);

impl Drop for Alarm<'_> {
    fn drop(&mut self) {
        self.0.unalarm(self.1);
    }
}

/// A memory alarm blocks the cluster's publishers: three clients on one shared connection
/// publish and each hears connection.blocked; a client that connects meanwhile is not put on
/// the blocked connection (the broker reads nothing from it until it unblocks) and opens its
/// channel at once; the three hear connection.unblocked when the alarm clears.
fn connection_blocked_reaches_every_client(lab: &Lab) -> Result<(), Failed> {
    let queue = "mux-blocked";
    clients::declare_queue(queue);
    let front = front();
    let mut clients = clients::spawn(
        "pika_blocked.py",
        &[
            format!("--port={}", front.port),
            "--count=3".into(),
            format!("--queue={queue}"),
        ],
    );
    assert_eq!(clients.line(), "ready");
    let shared = shared_total(&front);
    let alarm = Alarm(lab, "r1");
    lab.alarm("r1");
    let mut step = |command: &str| -> Value {
        clients.send(command);
        serde_json::from_str(&clients.line()).expect("a JSON line per command")
    };
    let published = step("publish");
    let joined = step("join");
    let shared_while_blocked = shared_total(&front);
    drop(alarm);
    let unblocked = step("unblocked");
    let end = clients.finish();
    eprintln!(
        "shared connections {shared}, {shared_while_blocked} while blocked\nafter publishing: \
         {published}\nafter a join: {joined}\nafter the alarm cleared: {unblocked}\nat the end: \
         {end}"
    );
    for summary in [&published, &joined, &unblocked, &end] {
        no_errors_logged(&front, summary);
    }
    assert_eq!(shared, 1.0, "the three clients share one connection");
    assert_eq!(published["blocked"], 3);
    assert_eq!(joined["opened"], 4, "{joined}");
    assert_eq!(
        shared_while_blocked, 2.0,
        "the client that came during the alarm got a connection of its own to share"
    );
    assert_eq!(unblocked["unblocked"], 3);
    clients::delete_queue(queue);
    Ok(())
}

/// A wrong password meets the broker's refusal every time, also once a shared connection of
/// the same user exists; the right one shares it.
fn a_wrong_password_is_refused(_lab: &Lab) -> Result<(), Failed> {
    let front = front();
    let port = format!("--port={}", front.port);
    let mut held = clients::spawn(
        "pika_held.py",
        &[port.clone(), "--count=2".into(), "--queue=unused".into()],
    );
    assert_eq!(held.line(), "ready");
    let shared_before = shared_total(&front);
    let wrong = clients::run(
        "pika_per_request.py",
        &[
            port.clone(),
            "--expect-refused".into(),
            "--password=wrong".into(),
            "--count=3".into(),
        ],
    );
    let holding = held.finish();
    eprintln!("held: {holding}\nwrong password: {wrong}");
    no_errors(&holding);
    no_errors(&wrong);
    assert_eq!(shared_before, 1.0, "two connections of one user share one");
    assert_eq!(wrong["refused"], 3);
    for refusal in wrong["refusals"].as_array().into_iter().flatten() {
        assert!(
            refusal
                .as_str()
                .unwrap_or_default()
                .contains("ACCESS_REFUSED"),
            "not the broker's refusal: {refusal}"
        );
    }
    Ok(())
}

/// One client declares an exclusive queue on a shared connection and leaves; the next client
/// of the same user, on the same shared connection, does not find it.
fn an_exclusive_queue_does_not_outlive_its_client(_lab: &Lab) -> Result<(), Failed> {
    let front = front();
    let port = format!("--port={}", front.port);
    // Holds the shared connection open across both clients.
    let mut held = clients::spawn(
        "pika_held.py",
        &[port.clone(), "--count=1".into(), "--queue=unused".into()],
    );
    assert_eq!(held.line(), "ready");
    let name = format!("mux-exclusive-{}", std::process::id());
    let declared = clients::run(
        "pika_per_request.py",
        &[port.clone(), format!("--exclusive={name}")],
    );
    let looked = clients::run("pika_per_request.py", &[port, format!("--passive={name}")]);
    let shared = shared_total(&front);
    let holding = held.finish();
    eprintln!("declared: {declared}\nlooked: {looked}\nshared connections: {shared}");
    no_errors(&declared);
    no_errors(&looked);
    no_errors(&holding);
    assert_eq!(shared, 1.0, "all three clients shared one connection");
    assert_eq!(
        looked["exists"], false,
        "the first client's exclusive queue survived into the next client"
    );
    Ok(())
}

fn main() {
    Suite::new(&["rabbit"])
        .with_lab(
            "a_thousand_held_connections_share_a_few_and_survive_a_node_kill",
            a_thousand_held_connections_share_a_few_and_survive_a_node_kill,
        )
        .with_lab(
            "a_slow_consumer_does_not_hold_back_the_others",
            a_slow_consumer_does_not_hold_back_the_others,
        )
        .with_lab(
            "connection_blocked_reaches_every_client",
            connection_blocked_reaches_every_client,
        )
        .with_lab(
            "a_hung_node_is_left_by_its_shared_connections",
            a_hung_node_is_left_by_its_shared_connections,
        )
        .with_lab("a_wrong_password_is_refused", a_wrong_password_is_refused)
        .with_lab(
            "an_exclusive_queue_does_not_outlive_its_client",
            an_exclusive_queue_does_not_outlive_its_client,
        )
        .run()
}
