//! Failure detection against the bundled RabbitMQ cluster, with pika under load: a broker that
//! closes one connection (`close_connection`) or all of them at once makes its node suspect,
//! not down, and the sessions carry on with no error and nothing lost; a graceful stop of a
//! node still takes it out of rotation at once.

mod support;

use libtest_mimic::Failed;
use serde_json::Value;
use std::time::{Duration, Instant};
use support::clients;
use support::front::Front;
use support::lab::{Lab, ports};
use support::suite::Suite;
use support::wait_for;

fn front() -> Front {
    // Multiplexing off and no pool: each client session has node connections of its own.
    Front::start("amqp", "lab", &ports::RABBIT, "pool = { max_idle = 0 }")
}

fn no_errors(summary: &Value) {
    assert_eq!(
        summary["errors"],
        Value::Array(vec![]),
        "a client saw an error: {summary}"
    );
}

/// A confirming publisher and a consumer on `queue` through `front`.
fn traffic(front: &Front, queue: &str) -> (clients::Running, clients::Running) {
    let port = format!("--port={}", front.port);
    let mut consumer = clients::spawn(
        "pika_consumer.py",
        &[port.clone(), format!("--queue={queue}"), "--idle=3".into()],
    );
    assert_eq!(consumer.line(), "ready");
    let mut publisher = clients::spawn(
        "pika_publisher.py",
        &[
            port,
            format!("--queue={queue}"),
            "--confirms".into(),
            "--rate=100".into(),
        ],
    );
    assert_eq!(publisher.line(), "ready");
    (publisher, consumer)
}

/// Ends the traffic: every confirmed message arrived, and no client saw an error.
fn counted(publisher: clients::Running, consumer: clients::Running) -> (Value, Value) {
    let published = publisher.finish();
    let consumed = consumer.finish();
    no_errors(&published);
    no_errors(&consumed);
    let confirmed = published["confirmed"].as_u64().unwrap_or(0);
    assert!(confirmed > 0, "{published}");
    assert_eq!(consumed["per_tag"]["p"], confirmed, "lost: {consumed}");
    (published, consumed)
}

fn endpoint_up(front: &Front, node: &str) -> f64 {
    front.tether.metric(
        "tether_endpoint_up",
        &[("node", node), ("endpoint", "amqp")],
    )
}

/// Samples `node`'s `tether_endpoint_up` for `span`: how many samples said down.
fn downs_during(front: &Front, node: &str, span: Duration) -> usize {
    let until = Instant::now() + span;
    let mut downs = 0;
    while Instant::now() < until {
        if endpoint_up(front, node) == 0.0 {
            downs += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    downs
}

fn endpoint_down_logged(front: &Front, node: &str) -> bool {
    front
        .tether
        .log_text()
        .lines()
        .any(|l| l.contains("endpoint down") && l.contains(&format!("node={node}")))
}

/// `rabbitmqctl close_connection` (the management API's DELETE) of one upstream connection
/// under load: its session fails over with no client error, the node's endpoint never goes
/// down (a check at once clears it), and nothing is lost.
fn a_broker_closing_one_connection_does_not_eject_its_node(_lab: &Lab) -> Result<(), Failed> {
    let queue = "detect-close-one";
    clients::declare_queue(queue);
    let front = front();
    let (publisher, consumer) = traffic(&front, queue);
    std::thread::sleep(Duration::from_secs(1));
    let node = front.busy_nodes().into_iter().next().expect("a busy node");
    let failovers = front.failovers();
    let closed = clients::run(
        "close_connections.py",
        &[
            format!("--node={node}"),
            "--count=1".into(),
            "--at-least=1".into(),
        ],
    );
    no_errors(&closed);
    assert_eq!(
        closed["closed"].as_array().map_or(0, Vec::len),
        1,
        "{closed}"
    );
    // The session's failover and the check each take well under a second.
    let downs = downs_during(&front, &node, Duration::from_secs(3));
    let cleared = front.tether.metric(
        "tether_suspect_checks_total",
        &[("node", &node), ("result", "cleared")],
    );
    let (published, consumed) = counted(publisher, consumer);
    eprintln!(
        "closed {closed} on {node}\nfailovers {} -> {}, suspect checks cleared {cleared}, \
         samples down {downs}\npublisher: {published}\nconsumer: {consumed}",
        failovers,
        front.failovers()
    );
    assert!(
        front.failovers() > failovers,
        "the closed session failed over"
    );
    assert_eq!(downs, 0, "{node}'s endpoint went down");
    assert!(
        !endpoint_down_logged(&front, &node),
        "tether logged {node}'s endpoint down"
    );
    assert!(cleared >= 1.0, "no suspect check cleared {node}");
    clients::delete_queue(queue);
    Ok(())
}

/// Every upstream connection closed by the brokers at once (passive signals on every node):
/// every endpoint stays in rotation, the sessions carry on, and new clients connect.
fn closing_every_connection_at_once_leaves_the_cluster_usable(_lab: &Lab) -> Result<(), Failed> {
    let queue = "detect-close-all";
    clients::declare_queue(queue);
    let front = front();
    let (publisher, consumer) = traffic(&front, queue);
    let mut held = clients::spawn(
        "hold_connections.py",
        &[format!("--port={}", front.port), "--count=9".into()],
    );
    assert_eq!(held.line(), "ready");
    std::thread::sleep(Duration::from_secs(1));
    // The publisher, the consumer and the nine held sessions: eleven node connections.
    let closed = clients::run(
        "close_connections.py",
        &["--count=0".into(), "--at-least=11".into()],
    );
    no_errors(&closed);
    let count = closed["closed"].as_array().map_or(0, Vec::len);
    assert!(count >= 11, "closed only {count}: {closed}");
    let downs: usize = ports::RABBIT
        .iter()
        .map(|node| downs_during(&front, node, Duration::from_millis(700)))
        .sum();
    let fresh = clients::run(
        "pika_per_request.py",
        &[
            format!("--port={}", front.port),
            format!("--queue={queue}"),
            "--count=5".into(),
            "--tag=fresh".into(),
        ],
    );
    let holding = held.finish();
    let (published, consumed) = counted(publisher, consumer);
    eprintln!(
        "closed {count} connections\nsamples down {downs}\nnew clients: {fresh}\nheld: \
         {holding}\npublisher: {published}\nconsumer: {consumed}"
    );
    no_errors(&fresh);
    no_errors(&holding);
    assert_eq!(fresh["confirmed"], 5);
    assert_eq!(consumed["per_tag"]["fresh"], 5, "lost: {consumed}");
    assert_eq!(holding["closed_by_peer"], 0, "{holding}");
    assert_eq!(downs, 0, "an endpoint went down");
    clients::delete_queue(queue);
    Ok(())
}

/// A graceful stop (`rabbitmqctl stop_app`, which closes every connection with 320) of the node
/// holding sessions takes its endpoint down at once: its check is refused, no `fall` checks
/// in a row are waited for.
fn a_graceful_stop_still_ejects_the_node_at_once(lab: &Lab) -> Result<(), Failed> {
    let queue = "detect-stop";
    clients::declare_queue(queue);
    let front = front();
    let (publisher, consumer) = traffic(&front, queue);
    std::thread::sleep(Duration::from_secs(1));
    let node = front.busy_nodes().into_iter().next().expect("a busy node");
    let node_ref: &str = &node;
    let heal = lab.heal(&[node_ref]);
    lab.stop(node_ref);
    // stop_app returns once the node closed its listeners and connections; the check made at
    // the first 320 (or the failing-over sessions' connects) has taken it down by then, or
    // within a check's timeout (1 s). 10 s is generous on two busy cores.
    wait_for(
        &format!("{node}'s endpoint down"),
        Duration::from_secs(10),
        || (endpoint_up(&front, node_ref) == 0.0).then_some(()),
    );
    let by_cause = |cause: &str| {
        front.tether.metric(
            "tether_endpoint_ejections_total",
            &[("node", node_ref), ("cause", cause)],
        )
    };
    let (session, suspect, connect, health) = (
        by_cause("session"),
        by_cause("suspect_check"),
        by_cause("connect"),
        by_cause("health_check"),
    );
    lab.start(node_ref);
    drop(heal);
    let (published, consumed) = counted(publisher, consumer);
    eprintln!(
        "stopped {node}: ejections by a session's 320 shutdown {session}, suspect check \
         {suspect}, connect {connect}, health check {health}\npublisher: {published}\n\
         consumer: {consumed}"
    );
    assert!(
        session + suspect + connect >= 1.0 && health == 0.0,
        "{node} went down through {health} failed health checks in a row, not at once"
    );
    clients::delete_queue(queue);
    Ok(())
}

fn main() {
    Suite::new(&["rabbit"])
        .with_lab(
            "a_broker_closing_one_connection_does_not_eject_its_node",
            a_broker_closing_one_connection_does_not_eject_its_node,
        )
        .with_lab(
            "closing_every_connection_at_once_leaves_the_cluster_usable",
            closing_every_connection_at_once_leaves_the_cluster_usable,
        )
        .with_lab(
            "a_graceful_stop_still_ejects_the_node_at_once",
            a_graceful_stop_still_ejects_the_node_at_once,
        )
        .run()
}
