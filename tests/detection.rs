//! Failure detection against the bundled RabbitMQ cluster, with pika under load: a broker that
//! closes one connection (`close_connection`) or all of them at once makes its node suspect,
//! not down, and the sessions carry on with no error and nothing lost; a graceful stop of a
//! node still takes it out of rotation at once. STOMP senders whose node is killed while it
//! leads their quorum queue have their replay refused by the next node during the leader
//! election, and no live node is taken out for it.

mod support;

use libtest_mimic::Failed;
use serde_json::Value;
use std::time::{Duration, Instant};
use support::clients;
use support::config::{TetherConfig, lab_nodes};
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
    endpoint_up_of(front, node, "amqp")
}

fn endpoint_up_of(front: &Front, node: &str, endpoint: &str) -> f64 {
    front.tether.metric(
        "tether_endpoint_up",
        &[("node", node), ("endpoint", endpoint)],
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

/// Every endpoint marked down while every node works again: every node hung (SIGSTOP) long
/// enough for the health checks to take each out, then resumed, with a `rise` that keeps the
/// marks down for a while. New clients connect at once (panic mode: every node is tried
/// rather than none), and what they publish is confirmed and delivered.
fn panic_mode_connects_while_every_mark_is_stale(lab: &Lab) -> Result<(), Failed> {
    let queue = "detect-panic";
    clients::declare_queue(queue);
    // rise = 20 checks 500 ms apart: the marks stay down for 10 s after the nodes answer again.
    let health = r#"health = { interval = "500ms", timeout = "500ms", rise = 20, fall = 2 }"#;
    let nodes = lab_nodes(&ports::RABBIT, &["amqp"]);
    let mut config = TetherConfig::new().cluster("lab", &format!("{health}\n{nodes}"));
    let port = config.listener("amqp", "amqp", "lab", "pool = { max_idle = 0 }");
    let front = Front {
        tether: config.start(),
        port,
        cluster: "lab",
    };
    let all_down = |front: &Front| ports::RABBIT.iter().all(|n| endpoint_up(front, n) == 0.0);
    // Held to the end: its `start` of each node waits for the node to be well, which can take
    // longer than the marks stay down; the nodes are resumed by hand first.
    let heal = lab.heal(&ports::RABBIT);
    for node in ports::RABBIT {
        lab.pause(node);
    }
    // Two failed checks, 500 ms apart with 500 ms timeouts, per node; the pauses stay well
    // under the lab's net_ticktime (15 s), so the cluster does not partition.
    wait_for("every endpoint down", Duration::from_secs(8), || {
        all_down(&front).then_some(())
    });
    for node in ports::RABBIT {
        lab.resume(node);
    }
    let panics_before = front.tether.metric("tether_panic_connects_total", &[]);
    let fresh = clients::run(
        "pika_per_request.py",
        &[
            format!("--port={}", front.port),
            format!("--queue={queue}"),
            "--count=5".into(),
            "--tag=panic".into(),
        ],
    );
    let still_down = all_down(&front);
    let panics = front.tether.metric("tether_panic_connects_total", &[]) - panics_before;
    let mut consumer = clients::spawn(
        "pika_consumer.py",
        &[
            format!("--port={}", front.port),
            format!("--queue={queue}"),
            "--idle=2".into(),
        ],
    );
    assert_eq!(consumer.line(), "ready");
    let consumed = consumer.finish();
    eprintln!(
        "every endpoint still down after the clients: {still_down}; panic-mode connects: \
         {panics}\nnew clients: {fresh}\nconsumer: {consumed}"
    );
    no_errors(&fresh);
    no_errors(&consumed);
    assert_eq!(fresh["confirmed"], 5, "{fresh}");
    assert_eq!(consumed["per_tag"]["panic"], 5, "lost: {consumed}");
    drop(heal);
    assert!(panics >= 5.0, "{panics} panic-mode connects for 5 clients");
    assert!(
        still_down,
        "the marks came back too soon to need panic mode"
    );
    clients::delete_queue(queue);
    Ok(())
}

/// Light traffic on live nodes (a publisher with confirms at 0.8 messages a second, a consumer,
/// three idle connections): the nodes go quiet between messages (RabbitMQ beats every half
/// second, but a second after its last bytes at worst), tether asks them whether they live,
/// and they answer at once: questions are asked, no session is failed over, nothing is lost.
fn quiet_sessions_on_live_nodes_stay_put(_lab: &Lab) -> Result<(), Failed> {
    let queue = "detect-quiet";
    clients::declare_queue(queue);
    let front = front();
    let port = format!("--port={}", front.port);
    let mut consumer = clients::spawn(
        "pika_consumer.py",
        &[port.clone(), format!("--queue={queue}"), "--idle=3".into()],
    );
    assert_eq!(consumer.line(), "ready");
    let mut publisher = clients::spawn(
        "pika_publisher.py",
        &[
            port.clone(),
            format!("--queue={queue}"),
            "--confirms".into(),
            "--rate=0.8".into(),
        ],
    );
    assert_eq!(publisher.line(), "ready");
    let mut held = clients::spawn("hold_connections.py", &[port, "--count=3".into()]);
    assert_eq!(held.line(), "ready");
    std::thread::sleep(Duration::from_secs(12));
    let holding = held.finish();
    let (published, consumed) = counted(publisher, consumer);
    let questions = front.tether.metric("tether_liveness_questions_total", &[]);
    let failovers = front.failovers();
    eprintln!(
        "questions asked: {questions}, failovers: {failovers}\nheld: {holding}\npublisher: \
         {published}\nconsumer: {consumed}"
    );
    no_errors(&holding);
    assert_eq!(holding["closed_by_peer"], 0, "{holding}");
    assert!(
        questions > 0.0,
        "no node was ever quiet long enough to be asked"
    );
    assert_eq!(failovers, 0.0, "a session on a live node was failed over");
    clients::delete_queue(queue);
    Ok(())
}

/// One round of the cascade trial: `sender` (stomp.py with receipts, connected, waiting for
/// its destination) is on `node`; its quorum queue is declared there, so `node` leads it; a
/// Ruby sender and a consumer join, and `node` is killed. Returns the stomp.py sender's
/// longest wait for a receipt and the samples that said another node's endpoint was down.
fn cascade_round(
    lab: &Lab,
    front: &Front,
    mut sender: clients::Running,
    node: &str,
    round: usize,
) -> (f64, usize) {
    let queue = format!("detect-cascade-{round}");
    // declare_queue.py declares through its own connection: the queue's leader is that
    // connection's node (RabbitMQ's client-local leader placement).
    clients::run(
        "declare_queue.py",
        &[
            format!("--port={}", ports::of(node, "amqp")),
            format!("--queue={queue}"),
        ],
    );
    let port = format!("--port={}", front.port);
    let dest = format!("--dest=/amq/queue/{queue}");
    let mut consumer = clients::spawn(
        "stomp_consumer.py",
        &[port.clone(), dest.clone(), "--idle=3".into()],
    );
    assert_eq!(consumer.line(), "ready");
    sender.send(&format!("/amq/queue/{queue}"));
    let mut ruby = clients::spawn(
        "stomp_producer.rb",
        &[
            port,
            dest,
            "--count=0".into(),
            "--rate=50".into(),
            "--tag=rb".into(),
        ],
    );
    assert_eq!(ruby.line(), "ready");
    std::thread::sleep(Duration::from_secs(2));
    let heal = lab.heal(&[node]);
    lab.kill(node);
    let others: Vec<&str> = ports::RABBIT.into_iter().filter(|n| *n != node).collect();
    // Long enough for the failovers, the refused replays and the leader election.
    let until = Instant::now() + Duration::from_secs(4);
    let mut downs = 0;
    while Instant::now() < until {
        downs += (others.iter())
            .filter(|n| endpoint_up_of(front, n, "stomp") == 0.0)
            .count();
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = sender.finish();
    let rb = ruby.finish();
    let received = consumer.finish();
    lab.start(node);
    drop(heal);
    eprintln!("round {round}, {node} killed\nstomp.py: {sent}\nruby: {rb}\nconsumer: {received}");
    no_errors(&sent);
    no_errors(&rb);
    no_errors(&received);
    assert_eq!(sent["disconnects"], 0, "{sent}");
    assert_eq!(
        sent["receipts"], sent["sent"],
        "a receipt is missing: {sent}"
    );
    assert_eq!(received["per_tag"]["p"], sent["sent"], "lost: {received}");
    assert_eq!(received["per_tag"]["rb"], rb["sent"], "lost: {received}");
    clients::delete_queue(&queue);
    (sent["max_stall_s"].as_f64().unwrap_or(f64::NAN), downs)
}

/// kill -9 of the node that holds a STOMP sender and leads its quorum queue, until each node
/// has been that node, with stomp.py (receipts) and Ruby's stomp gem sending. The replay
/// reaches the next node while the queue elects a leader; RabbitMQ 3.10's STOMP reader may
/// crash on the nack and close the connection: that node is tried again after a pause, and
/// no live node's endpoint goes down for it. 0 client errors, nothing lost.
fn killing_the_leader_under_stomp_senders_ejects_no_live_node(lab: &Lab) -> Result<(), Failed> {
    let front = Front::start("stomp", "lab", &ports::RABBIT, "pool = { max_idle = 0 }");
    let mut covered = std::collections::BTreeSet::new();
    let mut stalls = Vec::new();
    let mut downs = 0;
    // The sender lands where the balancer puts it: a few tries find each node.
    for round in 0..15 {
        if covered.len() == ports::RABBIT.len() {
            break;
        }
        // The last round's sessions are gone before the next sender's node is read.
        wait_for(
            "the last round's sessions to end",
            Duration::from_secs(30),
            || front.busy_nodes().is_empty().then_some(()),
        );
        let mut sender = clients::spawn(
            "stomp_producer.py",
            &[
                format!("--port={}", front.port),
                "--dest=-".into(),
                "--count=0".into(),
                "--rate=50".into(),
                "--receipts".into(),
                "--tag=p".into(),
            ],
        );
        assert_eq!(sender.line(), "ready");
        let node = wait_for("the sender's node", Duration::from_secs(10), || {
            front.busy_nodes().into_iter().next()
        });
        if !covered.insert(node.clone()) {
            sender.send("");
            sender.finish();
            continue;
        }
        let (stall, round_downs) = cascade_round(lab, &front, sender, &node, round);
        stalls.push((node, stall));
        downs += round_downs;
    }
    let refused = front
        .tether
        .metric("tether_failovers_total", &[("reason", "replay_refused")]);
    let logged: Vec<String> = (front.tether.log_text().lines())
        .filter(|l| l.contains("endpoint down"))
        .map(str::to_owned)
        .collect();
    eprintln!(
        "longest receipt waits by killed node: {stalls:?}\nreplays refused: {refused}\n\
         samples with a live node's endpoint down: {downs}\nendpoints down:\n{}",
        logged.join("\n")
    );
    assert_eq!(
        covered.len(),
        ports::RABBIT.len(),
        "not every node was killed"
    );
    assert_eq!(downs, 0, "a live node's stomp endpoint went down");
    Ok(())
}

/// A hung node (SIGSTOP) while another node is down already: ejecting it too would take out
/// more than `max_passive_ejection` of the cluster, so the sessions' heart-beat failovers only
/// make it suspect until its check fails, and for that moment it is still in rotation. The
/// failing-over sessions go to another node first, and a connect to the hung node (its kernel
/// still accepts) gives up after `upstream_handshake_timeout`: every session leaves while
/// the node is still hung, none waits for it to wake.
fn sessions_leave_a_hung_node_while_passive_ejections_are_capped(lab: &Lab) -> Result<(), Failed> {
    let front = front();
    let _heal = lab.heal(&["r1", "r3"]);
    lab.kill("r1");
    // Two failed checks at 500 ms, or a failed connect; 10 s is generous on two busy cores.
    wait_for("r1's endpoint down", Duration::from_secs(10), || {
        (endpoint_up(&front, "r1") == 0.0).then_some(())
    });
    let mut held = clients::spawn(
        "hold_connections.py",
        &[format!("--port={}", front.port), "--count=8".into()],
    );
    assert_eq!(held.line(), "ready");
    let on_r3 = front.sessions_on("r3");
    assert!(
        on_r3 > 0,
        "no session on r3 to fail over (8 sessions over r2 and r3)"
    );
    let capped_before = front
        .tether
        .metric("tether_passive_ejections_capped_total", &[]);
    lab.pause("r3");
    let paused = Instant::now();
    // Detection takes about 1.25 s and a failover a fraction of a second; a session that
    // tried the hung node gives up on it after 3 s. Without that it would wait for the node
    // to wake, which it does not until this wait is over: 60 s covers a loaded machine.
    wait_for(
        "every session to leave the hung r3",
        Duration::from_secs(60),
        || (front.sessions_on("r3") == 0).then_some(()),
    );
    let left_after = paused.elapsed();
    let capped = front
        .tether
        .metric("tether_passive_ejections_capped_total", &[])
        - capped_before;
    eprintln!(
        "{on_r3} sessions left the hung r3 in {:.1} s; passive ejections capped: {capped}",
        left_after.as_secs_f64()
    );
    assert!(
        capped >= 1.0,
        "r3 was ejected at once: the cap was not what this trial tries"
    );
    lab.start("r3");
    lab.start("r1");
    let held = held.finish();
    no_errors(&held);
    assert_eq!(held["closed_by_peer"], 0, "{held}");
    Ok(())
}

fn main() {
    Suite::new(&["rabbit"])
        .with_lab(
            "sessions_leave_a_hung_node_while_passive_ejections_are_capped",
            sessions_leave_a_hung_node_while_passive_ejections_are_capped,
        )
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
        .with_lab(
            "quiet_sessions_on_live_nodes_stay_put",
            quiet_sessions_on_live_nodes_stay_put,
        )
        .with_lab(
            "panic_mode_connects_while_every_mark_is_stale",
            panic_mode_connects_while_every_mark_is_stale,
        )
        .with_lab(
            "killing_the_leader_under_stomp_senders_ejects_no_live_node",
            killing_the_leader_under_stomp_senders_ejects_no_live_node,
        )
        .run()
}
