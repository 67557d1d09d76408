//! Pooling against the bundled RabbitMQ cluster, with real connect-per-request clients (pika,
//! the seeds' `get_connection()` loop; Ruby's bunny): sessions are served warm connections, a
//! node killed mid-run costs no error and no message, a wrong password is refused through a
//! warm pool every time, and nothing of one client (its exclusive queue) survives into the
//! next client on the same pooled connection. Every test counts what was published, confirmed
//! and received, the pool's hits, and the errors the clients saw.

mod support;

use libtest_mimic::Failed;
use serde_json::Value;
use std::time::Duration;
use support::clients;
use support::front::Front;
use support::lab::{Lab, ports};
use support::prom;
use support::suite::Suite;
use support::wait_for;

fn front() -> Front {
    Front::start("amqp", "lab", &ports::RABBIT, "")
}

fn stomp_front() -> Front {
    Front::start("stomp", "lab", &ports::RABBIT, "")
}

/// The listener `Front::start` made: named after its protocol.
fn listener(front: &Front) -> &'static str {
    let config = std::fs::read_to_string(front.tether.config_path()).unwrap_or_default();
    if config.contains("protocol = \"stomp\"") {
        "stomp"
    } else {
        "amqp"
    }
}

fn per_request(front: &Front, args: &[&str]) -> Value {
    let mut all = vec![format!("--port={}", front.port)];
    all.extend(args.iter().map(|a| a.to_string()));
    clients::run("pika_per_request.py", &all)
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

fn takes(front: &Front, result: &str) -> f64 {
    front.tether.metric(
        "tether_pool_takes_total",
        &[("listener", listener(front)), ("result", result)],
    )
}

/// Idle pooled connections, per node.
fn idle(front: &Front) -> Vec<(String, f64)> {
    let metrics = front.tether.metrics();
    prom::series(&metrics, "tether_pool_idle")
        .filter(|(labels, _)| labels.contains(&format!("listener=\"{}\"", listener(front))))
        .collect()
}

fn idle_total(front: &Front) -> f64 {
    idle(front).iter().map(|(_, v)| v).sum()
}

fn upstream_connects(front: &Front) -> f64 {
    let metrics = front.tether.metrics();
    prom::series(&metrics, "tether_upstream_connects_total")
        .map(|(_, v)| v)
        .sum()
}

/// Waits until the pool holds `count` idle connections: a session's connection is cleaned and
/// parked in the background once its client is gone. 20 s: the cleaning is a few round trips,
/// on two shared cores.
fn wait_idle(front: &Front, count: f64) {
    wait_for(
        &format!("{count} idle pooled connections"),
        Duration::from_secs(20),
        || (idle_total(front) == count).then_some(()),
    );
}

/// A consumer of `queue` that counts what it gets (see pika_consumer.py).
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

/// pika and bunny publish one message per connection: most sessions get a warm connection, the
/// nodes see far fewer connects than the clients make, and every message arrives.
fn connect_per_request_reuses_warm_connections(_lab: &Lab) -> Result<(), Failed> {
    let queue = "pool-per-request";
    clients::declare_queue(queue);
    let front = front();
    let consumer = consumer(&front, queue);
    let pika = per_request(
        &front,
        &[&format!("--queue={queue}"), "--count=60", "--rate=40"],
    );
    let bunny = clients::run(
        "bunny_per_request.rb",
        &[
            front.port.to_string(),
            queue.into(),
            "40".into(),
            "bunny".into(),
        ],
    );
    let consumed = consumer.finish();
    let (hits, misses, connects) = (
        takes(&front, "hit"),
        takes(&front, "miss"),
        upstream_connects(&front),
    );
    eprintln!(
        "pika: {pika}\nbunny: {bunny}\nconsumer: {consumed}\npool hits {hits} misses {misses}, \
         node connects {connects}"
    );
    no_errors(&pika);
    no_errors(&bunny);
    no_errors(&consumed);
    assert_eq!(pika["confirmed"], 60);
    assert_eq!(bunny["confirmed"], 40);
    assert_eq!(consumed["per_tag"]["perreq"], 60, "lost: {consumed}");
    assert_eq!(consumed["per_tag"]["bunny"], 40, "lost: {consumed}");
    // Each client connects only once its previous connection closed, and that connection is
    // parked a few round trips later: most connects find it (the rest open a new one).
    assert!(
        hits >= 50.0,
        "only {hits} of 100 sessions got a warm connection"
    );
    assert!(
        connects <= 51.0,
        "{connects} node connections for 100 client connections (and one consumer)"
    );
    clients::delete_queue(queue);
    Ok(())
}

/// The node holding the pool's connections is killed while a pika client connects per message:
/// the client sees no error and every confirmed message arrives.
fn connect_per_request_through_a_node_kill(lab: &Lab) -> Result<(), Failed> {
    let queue = "pool-node-kill";
    clients::declare_queue(queue);
    let front = front();
    let consumer = consumer(&front, queue);
    let mut publisher = clients::spawn(
        "pika_per_request.py",
        &[
            format!("--port={}", front.port),
            format!("--queue={queue}"),
            "--rate=25".into(),
        ],
    );
    assert_eq!(publisher.line(), "ready");
    wait_for("a warm pool", Duration::from_secs(20), || {
        (idle_total(&front) > 0.0 && takes(&front, "hit") >= 5.0).then_some(())
    });
    let victim = idle(&front)
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .and_then(|(labels, _)| {
            ports::RABBIT
                .iter()
                .find(|n| labels.contains(&format!("node=\"{n}\"")))
                .copied()
        })
        .expect("a node holds idle pooled connections");
    let heal = lab.heal(&[victim]);
    let hits_before = takes(&front, "hit");
    lab.kill(victim);
    // Per-request traffic after the kill shows the pool serves from the other nodes.
    std::thread::sleep(Duration::from_secs(6));
    let published = publisher.finish();
    let consumed = consumer.finish();
    let hits_after = takes(&front, "hit");
    eprintln!(
        "killed {victim}\npublisher: {published}\nconsumer: {consumed}\nhits before the kill \
         {hits_before}, after {hits_after}"
    );
    no_errors_logged(&front, &published);
    no_errors(&consumed);
    let confirmed = published["confirmed"].as_u64().unwrap_or(0);
    assert!(confirmed > 0);
    assert_eq!(consumed["per_tag"]["perreq"], confirmed, "lost: {consumed}");
    assert!(
        hits_after > hits_before,
        "no session got a warm connection after the kill"
    );
    eprintln!(
        "counted: published {} confirmed {confirmed} received {} duplicates {} lost 0 client errors 0",
        published["sent"], consumed["received"], consumed["duplicates"]
    );
    drop(heal); // the queue is deleted through r1, which may be the victim
    clients::delete_queue(queue);
    Ok(())
}

/// A wrong password is refused by the broker (403 ACCESS_REFUSED, in answer to start-ok as a
/// broker refuses it), with the pool cold and with it warm for the same user, every time; the
/// right one is served warm after.
fn a_wrong_password_is_refused_through_a_warm_pool(_lab: &Lab) -> Result<(), Failed> {
    let queue = "pool-password";
    clients::declare_queue(queue);
    let front = front();
    let cold = per_request(
        &front,
        &["--expect-refused", "--password=wrong", "--count=2"],
    );
    let warm_up = per_request(&front, &[&format!("--queue={queue}"), "--count=3"]);
    no_errors(&warm_up);
    wait_idle(&front, 1.0);
    let hits_before = takes(&front, "hit");
    let warm = per_request(
        &front,
        &["--expect-refused", "--password=wrong", "--count=5"],
    );
    let hits_during = takes(&front, "hit");
    let right = per_request(&front, &[&format!("--queue={queue}"), "--count=2"]);
    eprintln!("cold: {cold}\nwarm: {warm}\nright password after: {right}");
    for summary in [&cold, &warm, &right] {
        no_errors(summary);
    }
    assert_eq!(cold["refused"], 2);
    assert_eq!(warm["refused"], 5);
    // The broker's refusal, at the moment a direct connection gets it (pika names the moment
    // in the exception's type), warm as cold.
    let first_cold = &cold["refusals"][0];
    assert!(
        first_cold
            .as_str()
            .unwrap_or_default()
            .contains("ACCESS_REFUSED"),
        "not the broker's refusal: {first_cold}"
    );
    for refusal in warm["refusals"].as_array().into_iter().flatten() {
        assert_eq!(
            refusal, first_cold,
            "refused differently through a warm pool"
        );
    }
    assert_eq!(
        hits_during, hits_before,
        "a wrong password got a warm connection"
    );
    assert!(
        takes(&front, "hit") > hits_during,
        "the right password was not served warm"
    );
    clients::delete_queue(queue);
    Ok(())
}

/// One client declares an exclusive queue and leaves; the next client, on the same pooled
/// connection, does not find it: cleaning deleted it.
fn an_exclusive_queue_does_not_outlive_its_client(_lab: &Lab) -> Result<(), Failed> {
    let front = front();
    let name = format!("pool-exclusive-{}", std::process::id());
    let declared = per_request(&front, &[&format!("--exclusive={name}")]);
    no_errors(&declared);
    wait_idle(&front, 1.0);
    let hits_before = takes(&front, "hit");
    let looked = per_request(&front, &[&format!("--passive={name}")]);
    eprintln!("declared: {declared}\nlooked: {looked}");
    no_errors(&looked);
    assert_eq!(
        takes(&front, "hit"),
        hits_before + 1.0,
        "the second client did not get the pooled connection"
    );
    assert_eq!(
        looked["exists"], false,
        "the first client's exclusive queue survived into the next client"
    );
    Ok(())
}

/// A session whose node is killed replays on a warm connection its login made on another node
/// (no connect, no login): the pool's hits grow with no new client, and nothing is lost.
fn a_failover_takes_a_warm_connection(lab: &Lab) -> Result<(), Failed> {
    let queue = "pool-warm-failover";
    clients::declare_queue(queue);
    let front = front();
    // Nine connections open at once land on every node; closed, they stay warm.
    let mut held = clients::spawn(
        "hold_connections.py",
        &[format!("--port={}", front.port), "--count=9".into()],
    );
    assert_eq!(held.line(), "ready");
    no_errors(&held.finish());
    wait_idle(&front, 9.0);
    let consumer = consumer(&front, queue);
    let mut publisher = clients::spawn(
        "pika_publisher.py",
        &[
            format!("--port={}", front.port),
            format!("--queue={queue}"),
            "--confirms".into(),
            "--rate=50".into(),
            "--tag=warm".into(),
        ],
    );
    assert_eq!(publisher.line(), "ready");
    std::thread::sleep(Duration::from_secs(1));
    let busy = front.busy_nodes();
    let victim = ports::RABBIT
        .iter()
        .copied()
        .find(|n| busy.iter().any(|b| b == n))
        .expect("the sessions run somewhere");
    let warm_elsewhere: f64 = idle(&front)
        .iter()
        .filter(|(labels, _)| !labels.contains(&format!("node=\"{victim}\"")))
        .map(|(_, v)| v)
        .sum();
    assert!(
        warm_elsewhere > 0.0,
        "no warm connection off {victim}: {:?}",
        idle(&front)
    );
    let heal = lab.heal(&[victim]);
    let hits_before = takes(&front, "hit");
    lab.kill(victim);
    wait_for("a failover", Duration::from_secs(30), || {
        (front.failovers() >= 1.0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let published = publisher.finish();
    let consumed = consumer.finish();
    let hits_after = takes(&front, "hit");
    eprintln!(
        "killed {victim}\npublisher: {published}\nconsumer: {consumed}\npool hits before the \
         kill {hits_before}, after {hits_after}; failovers {}",
        front.failovers()
    );
    no_errors_logged(&front, &published);
    no_errors(&consumed);
    assert_eq!(
        consumed["per_tag"]["warm"], published["confirmed"],
        "lost: {consumed}"
    );
    assert!(
        hits_after > hits_before,
        "the failover did not take a warm connection"
    );
    drop(heal); // the queue is deleted through r1, which may be the victim
    clients::delete_queue(queue);
    Ok(())
}

fn stomp_per_request(front: &Front, args: &[&str]) -> Value {
    let mut all = vec![format!("--port={}", front.port)];
    all.extend(args.iter().map(|a| a.to_string()));
    clients::run("stomp_per_request.py", &all)
}

/// The node with the most idle pooled connections.
fn busiest_pool_node(front: &Front) -> &'static str {
    idle(front)
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .and_then(|(labels, _)| {
            ports::RABBIT
                .iter()
                .find(|n| labels.contains(&format!("node=\"{n}\"")))
                .copied()
        })
        .expect("a node holds idle pooled connections")
}

/// stomp.py connects per message (SEND with a receipt, DISCONNECT) while the node holding the
/// pool's connections is killed: most sessions are served warm, the client sees no error, and
/// every receipted message arrives.
fn stomp_connect_per_request_through_a_node_kill(lab: &Lab) -> Result<(), Failed> {
    let front = stomp_front();
    // A quorum queue: it outlives the node that is killed (a classic one would stop taking
    // messages with its home node).
    let queue = "pool-stomp-kill";
    clients::delete_queue(queue); // one an earlier run left
    clients::declare_queue(queue);
    let dest = &format!("/amq/queue/{queue}");
    let mut consumer = clients::spawn(
        "stomp_consumer.py",
        &[
            format!("--port={}", front.port),
            format!("--dest={dest}"),
            "--idle=3".into(),
        ],
    );
    assert_eq!(consumer.line(), "ready");
    let mut sender = clients::spawn(
        "stomp_per_request.py",
        &[
            format!("--port={}", front.port),
            format!("--dest={dest}"),
            "--rate=25".into(),
        ],
    );
    assert_eq!(sender.line(), "ready");
    wait_for("a warm pool", Duration::from_secs(20), || {
        (idle_total(&front) > 0.0 && takes(&front, "hit") >= 5.0).then_some(())
    });
    let victim = busiest_pool_node(&front);
    let heal = lab.heal(&[victim]);
    let hits_before = takes(&front, "hit");
    lab.kill(victim);
    std::thread::sleep(Duration::from_secs(6));
    let sent = sender.finish();
    let consumed = consumer.finish();
    let (hits, misses) = (takes(&front, "hit"), takes(&front, "miss"));
    eprintln!(
        "killed {victim}\nsender: {sent}\nconsumer: {consumed}\nhits before the kill \
         {hits_before}, after {hits}; misses {misses}"
    );
    no_errors_logged(&front, &sent);
    no_errors(&consumed);
    let receipted = sent["receipted"].as_u64().unwrap_or(0);
    assert!(receipted > 0);
    assert_eq!(consumed["per_tag"]["perreq"], receipted, "lost: {consumed}");
    assert!(
        hits > hits_before,
        "no session got a warm connection after the kill"
    );
    assert!(
        hits >= receipted as f64 / 2.0,
        "only {hits} of {receipted} sessions got a warm connection"
    );
    eprintln!(
        "counted: sent {} receipted {receipted} received {} duplicates {} lost 0 client errors 0",
        sent["sent"], consumed["received"], consumed["duplicates"]
    );
    drop(heal); // the queue is deleted through r1, which may be the victim
    clients::delete_queue(queue);
    Ok(())
}

/// A wrong passcode gets the broker's ERROR, with the pool cold and warm, every time.
fn a_wrong_stomp_passcode_is_refused_through_a_warm_pool(_lab: &Lab) -> Result<(), Failed> {
    let front = stomp_front();
    let queue = "pool-stomp-passcode";
    clients::delete_queue(queue); // one an earlier run left
    clients::declare_queue(queue);
    let dest = &format!("/amq/queue/{queue}");
    let cold = stomp_per_request(
        &front,
        &["--expect-refused", "--passcode=wrong", "--count=2"],
    );
    let warm_up = stomp_per_request(&front, &[&format!("--dest={dest}"), "--count=3"]);
    no_errors(&warm_up);
    wait_idle(&front, 1.0);
    let hits_before = takes(&front, "hit");
    let warm = stomp_per_request(
        &front,
        &["--expect-refused", "--passcode=wrong", "--count=5"],
    );
    let hits_during = takes(&front, "hit");
    let right = stomp_per_request(
        &front,
        &[&format!("--dest={dest}"), "--count=2", "--tag=right"],
    );
    eprintln!("cold: {cold}\nwarm: {warm}\nright passcode after: {right}");
    for summary in [&cold, &warm, &right] {
        no_errors(summary);
    }
    assert_eq!(cold["refused"], 2);
    assert_eq!(warm["refused"], 5);
    assert_eq!(
        hits_during, hits_before,
        "a wrong passcode got a warm connection"
    );
    assert!(
        takes(&front, "hit") > hits_during,
        "the right passcode was not served warm"
    );
    // Drain what the sends left.
    let drained = clients::run(
        "stomp_consumer.py",
        &[
            format!("--port={}", front.port),
            format!("--dest={dest}"),
            "--expect=5".into(),
            "--idle=2".into(),
        ],
    );
    assert_eq!(drained["received"], 5, "{drained}");
    clients::delete_queue(queue);
    Ok(())
}

/// One client subscribes (auto ack) and leaves; messages sent to the queue afterwards are not
/// swallowed by its subscription on the idle pooled connection: the next client, on that same
/// connection, receives them all.
fn a_stomp_subscription_does_not_outlive_its_client(_lab: &Lab) -> Result<(), Failed> {
    let front = stomp_front();
    let queue = "pool-stomp-subscription";
    clients::declare_queue(queue);
    let dest = format!("/amq/queue/{queue}");
    let subscribed = stomp_per_request(&front, &[&format!("--subscribe={dest}")]);
    no_errors(&subscribed);
    wait_idle(&front, 1.0);
    // Straight to a node, past tether and its pool.
    let direct = clients::run(
        "stomp_producer.py",
        &[
            format!("--port={}", ports::of("r1", "stomp")),
            format!("--dest={dest}"),
            "--count=10".into(),
            "--receipts".into(),
            "--tag=direct".into(),
        ],
    );
    no_errors(&direct);
    // The idle connection is still pooled: nothing arrived on it to break it.
    assert_eq!(
        idle_total(&front),
        1.0,
        "the pooled connection got a frame while idle"
    );
    let hits_before = takes(&front, "hit");
    let consumed = clients::run(
        "stomp_consumer.py",
        &[
            format!("--port={}", front.port),
            format!("--dest={dest}"),
            "--expect=10".into(),
            "--idle=3".into(),
        ],
    );
    eprintln!("subscriber: {subscribed}\ndirect producer: {direct}\nconsumer: {consumed}");
    no_errors(&consumed);
    assert_eq!(
        takes(&front, "hit"),
        hits_before + 1.0,
        "the consumer did not get the pooled connection"
    );
    assert_eq!(
        consumed["per_tag"]["direct"], 10,
        "messages went to the first client's subscription: {consumed}"
    );
    clients::delete_queue(queue);
    Ok(())
}

fn main() {
    Suite::new(&["rabbit"])
        .with_lab(
            "connect_per_request_reuses_warm_connections",
            connect_per_request_reuses_warm_connections,
        )
        .with_lab(
            "connect_per_request_through_a_node_kill",
            connect_per_request_through_a_node_kill,
        )
        .with_lab(
            "a_wrong_password_is_refused_through_a_warm_pool",
            a_wrong_password_is_refused_through_a_warm_pool,
        )
        .with_lab(
            "an_exclusive_queue_does_not_outlive_its_client",
            an_exclusive_queue_does_not_outlive_its_client,
        )
        .with_lab(
            "a_failover_takes_a_warm_connection",
            a_failover_takes_a_warm_connection,
        )
        .with_lab(
            "stomp_connect_per_request_through_a_node_kill",
            stomp_connect_per_request_through_a_node_kill,
        )
        .with_lab(
            "a_wrong_stomp_passcode_is_refused_through_a_warm_pool",
            a_wrong_stomp_passcode_is_refused_through_a_warm_pool,
        )
        .with_lab(
            "a_stomp_subscription_does_not_outlive_its_client",
            a_stomp_subscription_does_not_outlive_its_client,
        )
        .run()
}
