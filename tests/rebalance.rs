//! Rebalancing on the real bundled RabbitMQ cluster, with clients that know nothing of it (pika,
//! and stomp.py for STOMP): four nodes, eight long-lived consumers and four producers through
//! one tether, one node down at the start. When the node comes up, tether moves sessions at safe
//! points until every node holds two consumer sessions and three in all; nothing is lost, no
//! client sees an error, and no move replays a publish (none happened with confirms
//! outstanding or in the middle of a publish).

mod support;

use libtest_mimic::Failed;
use std::collections::BTreeMap;
use std::time::Duration;
use support::config::{TetherConfig, lab_nodes};
use support::lab::{self, Lab, ports};
use support::suite::Suite;
use support::tally::Tally;
use support::tether::Tether;
use support::{clients, wait_for};

const QUEUE: &str = "rebalance-seed-002";

/// Removes the extra node r4 at the end, also when the test fails, so the next tests find the
/// three-node cluster they expect.
struct ExtraNode;

impl Drop for ExtraNode {
    fn drop(&mut self) {
        let _ = std::process::Command::new(format!("{}/scripts/cluster", support::REPO))
            .args(["remove", "r4"])
            .status();
    }
}

/// The cluster settings both rebalancing tests run with: moves paced fast, health checked fast.
const REBALANCING: &str = r#"balance = "least-connections"
rebalance = true
rebalance_pace = "300ms"
health = { interval = "300ms", timeout = "1s", rise = 2, fall = 2 }"#;

fn declare(queue: &str, delete: bool) {
    let mut args = vec![
        format!("--port={}", ports::of("r1", "amqp")),
        format!("--queue={queue}"),
    ];
    if delete {
        args.push("--delete".into());
    }
    let answer = clients::run("declare_queue.py", &args);
    assert_eq!(answer["ok"], true, "{answer}");
}

/// `node → (sessions, consuming)` of a listener, from `/status`.
fn shares_of(tether: &Tether, name: &str) -> BTreeMap<String, (u64, u64)> {
    let status = tether.status();
    let listener = status["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == name)
        .cloned()
        .unwrap_or_default();
    listener["nodes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(node, share)| {
            (
                node.clone(),
                (
                    share["sessions"].as_u64().unwrap_or(0),
                    share["consuming"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// Prints the count and asserts nothing was lost and no client saw an error; returns the
/// moves, the `replayed` kind's count and the failovers tether counted.
fn check(tally: &Tally, tether: &Tether, replayed: &str) -> (f64, f64, f64) {
    let lost = tally.lost();
    // `+ 0.0`: a metric with no series reads as -0.
    let moves = tether.metric("tether_rebalance_moves_total", &[("cluster", "lab")]) + 0.0;
    let replays = tether.metric("tether_replayed_total", &[("kind", replayed)]) + 0.0;
    let failovers = tether.metric("tether_failovers_total", &[]) + 0.0;
    eprintln!(
        "counted: sent {} received {} duplicates {} lost {} client errors {} moves {moves:.0} \
         replayed ({replayed}) {replays:.0} failovers {failovers:.0}",
        tally.sent.len(),
        tally.received.len(),
        tally.deliveries.saturating_sub(tally.received.len() as u64),
        lost.len(),
        tally.client_errors.len()
    );
    tally.assert_clean();
    (moves, replays, failovers)
}

fn shares(tether: &Tether) -> BTreeMap<String, (u64, u64)> {
    shares_of(tether, "amqp")
}

fn four_nodes_even_out_consumers_and_producers_when_the_fourth_returns(
    lab: &Lab,
) -> Result<(), Failed> {
    lab::run(&["add", "r4"]);
    let _extra = ExtraNode;
    // Declared with four members, so it keeps a majority whichever node is down.
    declare(QUEUE, false);
    lab.stop("r4");

    let mut config = TetherConfig::new().cluster(
        "lab",
        &format!(
            "{REBALANCING}\n{}",
            lab_nodes(&["r1", "r2", "r3", "r4"], &["amqp"])
        ),
    );
    let port = config.listener("amqp", "amqp", "lab", r#"failover_timeout = "90s""#);
    let tether = config.start();
    // Two failed checks at 300 ms; the bound covers a loaded machine.
    wait_for("r4 to be down", Duration::from_secs(30), || {
        (tether.metric("tether_node_up", &[("node", "r4")]) == 0.0).then_some(())
    });

    let consumers: Vec<clients::Running> = (0..8)
        .map(|_| {
            let mut consumer = clients::spawn(
                "pika_consumer.py",
                &[
                    format!("--port={port}"),
                    format!("--queue={QUEUE}"),
                    "--prefetch=10".into(),
                    "--idle=5".into(),
                    "--dump".into(),
                ],
            );
            assert_eq!(consumer.line(), "ready");
            consumer
        })
        .collect();
    let producers: Vec<clients::Running> = (0..4)
        .map(|i| {
            let mut producer = clients::spawn(
                "pika_publisher.py",
                &[
                    format!("--port={port}"),
                    format!("--queue={QUEUE}"),
                    "--confirms".into(),
                    "--rate=40".into(),
                    format!("--tag=p{i}"),
                ],
            );
            assert_eq!(producer.line(), "ready");
            producer
        })
        .collect();
    let before = shares(&tether);
    assert!(!before.contains_key("r4"), "r4 is down: {before:?}");
    eprintln!("before r4 returns: {before:?}");

    let returning = std::time::Instant::now();
    lab.start("r4");
    eprintln!("r4 ready after {:.1}s", returning.elapsed().as_secs_f64());
    // r4 passes two checks (600 ms), then each move waits for its safe point (cancel-oks,
    // confirms, the client's acks: well under a second each), paced 300 ms apart. The issue
    // asks for 30 s: the time taken is printed; the bound only leaves room for a loaded machine.
    let mut even_after = None;
    let started = returning;
    let settled = wait_for("an even spread", Duration::from_secs(90), || {
        let now = shares(&tether);
        let even = ["r1", "r2", "r3", "r4"]
            .iter()
            .all(|n| now.get(*n) == Some(&(3, 2)));
        if even && even_after.is_none() {
            even_after = Some(started.elapsed());
        }
        even.then_some(now)
    });
    eprintln!(
        "even {:.1}s after r4 was started: {settled:?}",
        even_after.unwrap_or_default().as_secs_f64()
    );
    // Traffic goes on across the moves for a while.
    std::thread::sleep(Duration::from_secs(3));

    let tally = Tally::of(producers, consumers, "p", "confirmed");
    let (moves, replayed_publishes, failovers) = check(&tally, &tether, "publish");
    assert!(
        moves >= 3.0,
        "r4 got its share by moves, not by new sessions: {moves}"
    );
    assert_eq!(failovers, 0.0, "a move is not a failover");
    assert_eq!(
        replayed_publishes, 0.0,
        "no move happened with a publish unconfirmed: none had to be sent again"
    );
    assert_eq!(tether.terminate(), Some(0));
    declare(QUEUE, true);
    Ok(())
}

/// The same over STOMP on three nodes, one stopped at the start: six `client-individual`
/// consumers and three producers with receipts through a `stomp` listener.
fn stomp_sessions_even_out_when_a_node_returns(lab: &Lab) -> Result<(), Failed> {
    const STOMP_QUEUE: &str = "rebalance-stomp";
    declare(STOMP_QUEUE, false);
    let _heal = lab.heal(&["r3"]);
    lab.stop("r3");
    let mut config = TetherConfig::new().cluster(
        "lab",
        &format!("{REBALANCING}\n{}", lab_nodes(&ports::RABBIT, &["stomp"])),
    );
    let port = config.listener("stomp", "stomp", "lab", r#"failover_timeout = "90s""#);
    let tether = config.start();
    wait_for("r3 to be down", Duration::from_secs(30), || {
        (tether.metric("tether_node_up", &[("node", "r3")]) == 0.0).then_some(())
    });
    let destination = format!("--dest=/amq/queue/{STOMP_QUEUE}");
    let consumers: Vec<clients::Running> = (0..6)
        .map(|_| {
            let mut consumer = clients::spawn(
                "stomp_consumer.py",
                &[
                    format!("--port={port}"),
                    destination.clone(),
                    "--idle=5".into(),
                    "--dump".into(),
                ],
            );
            assert_eq!(consumer.line(), "ready");
            consumer
        })
        .collect();
    let producers: Vec<clients::Running> = (0..3)
        .map(|i| {
            let mut producer = clients::spawn(
                "stomp_producer.py",
                &[
                    format!("--port={port}"),
                    destination.clone(),
                    "--count=0".into(),
                    "--rate=40".into(),
                    "--receipts".into(),
                    "--persistent".into(),
                    format!("--tag=s{i}"),
                ],
            );
            assert_eq!(producer.line(), "ready");
            producer
        })
        .collect();
    eprintln!("before r3 returns: {:?}", shares_of(&tether, "stomp"));
    let returning = std::time::Instant::now();
    lab.start("r3");
    // As in the AMQP test: the time taken is printed; the bound is for a loaded machine.
    let settled = wait_for("an even spread", Duration::from_secs(90), || {
        let now = shares_of(&tether, "stomp");
        ["r1", "r2", "r3"]
            .iter()
            .all(|n| now.get(*n) == Some(&(3, 2)))
            .then_some(now)
    });
    eprintln!(
        "even {:.1}s after r3 was started: {settled:?}",
        returning.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));

    let tally = Tally::of(producers, consumers, "s", "receipts");
    let (moves, replayed_sends, failovers) = check(&tally, &tether, "send");
    assert!(moves >= 2.0, "r3 got its share by moves: {moves}");
    assert_eq!(failovers, 0.0, "a move is not a failover");
    assert_eq!(
        replayed_sends, 0.0,
        "no move happened with a SEND unreceipted: none had to be sent again"
    );
    assert_eq!(tether.terminate(), Some(0));
    declare(STOMP_QUEUE, true);
    Ok(())
}

/// A rolling restart done the planned way: each node in turn is drained with `tether drain
/// NODE --wait` (every session moves off at a safe point), stopped, started and undrained, under
/// pika and stomp.py traffic with confirms and receipts through one tether. Rebalancing is off:
/// draining does not need it. No session fails over, nothing is lost, no client sees an error.
fn a_rolling_restart_with_drain_moves_sessions_and_fails_none_over(
    lab: &Lab,
) -> Result<(), Failed> {
    const DRAIN_QUEUE: &str = "drain-rolling";
    const DRAIN_STOMP_QUEUE: &str = "drain-rolling-stomp";
    declare(DRAIN_QUEUE, false);
    declare(DRAIN_STOMP_QUEUE, false);
    let _heal = lab.heal(&ports::RABBIT);
    let mut config = TetherConfig::new().cluster(
        "lab",
        &format!(
            "rebalance = false\nhealth = {{ interval = \"500ms\", timeout = \"1s\", rise = 2, fall = 2 }}\n{}",
            lab_nodes(&ports::RABBIT, &["amqp", "stomp"])
        ),
    );
    let amqp = config.listener("amqp", "amqp", "lab", r#"failover_timeout = "90s""#);
    let stomp = config.listener("stomp", "stomp", "lab", r#"failover_timeout = "90s""#);
    let tether = config.start();

    let (refused, said) = tether.cli(&["drain", "r9"]);
    assert!(!refused, "an unknown node is refused: {said}");
    assert!(
        said.contains("r1, r2, r3"),
        "the known nodes are named: {said}"
    );

    let consumers: Vec<clients::Running> = (0..4)
        .map(|_| {
            let args = [
                format!("--port={amqp}"),
                format!("--queue={DRAIN_QUEUE}"),
                "--prefetch=10".into(),
                "--idle=5".into(),
                "--dump".into(),
            ];
            clients::spawn("pika_consumer.py", &args)
        })
        .collect();
    let producers: Vec<clients::Running> = (0..3)
        .map(|i| {
            let args = [
                format!("--port={amqp}"),
                format!("--queue={DRAIN_QUEUE}"),
                "--confirms".into(),
                "--rate=40".into(),
                format!("--tag=p{i}"),
            ];
            clients::spawn("pika_publisher.py", &args)
        })
        .collect();
    let destination = format!("--dest=/amq/queue/{DRAIN_STOMP_QUEUE}");
    let stomp_consumers: Vec<clients::Running> = (0..2)
        .map(|_| {
            let args = [
                format!("--port={stomp}"),
                destination.clone(),
                "--idle=5".into(),
                // The whole rolling restart (three stops and starts) runs under it.
                "--limit=900".into(),
                "--dump".into(),
            ];
            clients::spawn("stomp_consumer.py", &args)
        })
        .collect();
    let stomp_producers: Vec<clients::Running> = (0..2)
        .map(|i| {
            let args = [
                format!("--port={stomp}"),
                destination.clone(),
                "--count=0".into(),
                "--rate=40".into(),
                "--receipts".into(),
                "--persistent".into(),
                format!("--tag=s{i}"),
            ];
            clients::spawn("stomp_producer.py", &args)
        })
        .collect();
    let mut everyone: Vec<clients::Running> = consumers;
    everyone.extend(producers);
    everyone.extend(stomp_consumers);
    everyone.extend(stomp_producers);
    for client in &mut everyone {
        assert_eq!(client.line(), "ready");
    }
    std::thread::sleep(Duration::from_secs(3));

    let drain_moves = || tether.metric("tether_drain_moves_total", &[("cluster", "lab")]) + 0.0;
    for node in ports::RABBIT {
        let (sessions, moves) = (
            tether
                .sessions_per_node("lab")
                .into_iter()
                .find(|(n, _)| n == node)
                .map_or(0, |(_, s)| s),
            drain_moves(),
        );
        eprintln!(
            "{node}: before the drain, amqp {:?}, stomp {:?}",
            shares_of(&tether, "amqp"),
            shares_of(&tether, "stomp")
        );
        let started = std::time::Instant::now();
        // `--timeout`: each session reaches its safe point within the move's 10 s deadline;
        // the rest is room for a loaded machine.
        let (drained, said) = tether.cli(&["drain", node, "--wait", "--timeout=90s"]);
        assert!(drained, "tether drain {node}: {said}");
        eprintln!(
            "{node}: {sessions} sessions moved off in {:.1} s ({} drain moves)",
            started.elapsed().as_secs_f64(),
            drain_moves() - moves
        );
        let status = tether.status().to_string();
        assert!(
            status.contains("\"drained\":true"),
            "/status shows the drain: {status}"
        );
        lab.stop(node);
        lab.start(node);
        let (undrained, said) = tether.cli(&["undrain", node]);
        assert!(undrained && said.contains("takes sessions again"), "{said}");
    }
    std::thread::sleep(Duration::from_secs(3));

    let stomp_clients = everyone.split_off(7);
    let mut amqp_clients = everyone;
    let amqp_producers = amqp_clients.split_off(4);
    let mut stomp_clients = stomp_clients;
    let stomp_producers = stomp_clients.split_off(2);
    let amqp_tally = Tally::of(amqp_producers, amqp_clients, "p", "confirmed");
    let (_, _, failovers) = check(&amqp_tally, &tether, "publish");
    let stomp_tally = Tally::of(stomp_producers, stomp_clients, "s", "receipts");
    check(&stomp_tally, &tether, "send");
    let moves = drain_moves();
    eprintln!("drain moves: {moves}, failovers: {failovers}");
    assert_eq!(
        failovers, 0.0,
        "every session left its node by a planned move"
    );
    assert!(
        moves >= 11.0,
        "each of the eleven sessions moved at least once: {moves}"
    );
    assert_eq!(tether.terminate(), Some(0));
    declare(DRAIN_QUEUE, true);
    declare(DRAIN_STOMP_QUEUE, true);
    Ok(())
}

fn main() {
    Suite::new(&["rabbit"])
        .with_lab(
            "a_rolling_restart_with_drain_moves_sessions_and_fails_none_over",
            a_rolling_restart_with_drain_moves_sessions_and_fails_none_over,
        )
        .with_lab(
            "four_nodes_even_out_consumers_and_producers_when_the_fourth_returns",
            four_nodes_even_out_consumers_and_producers_when_the_fourth_returns,
        )
        .with_lab(
            "stomp_sessions_even_out_when_a_node_returns",
            stomp_sessions_even_out_when_a_node_returns,
        )
        .run()
}
