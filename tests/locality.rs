//! Queue locality on the real bundled RabbitMQ cluster (`locality = true`): six quorum queues
//! led two by each node, one pika consumer and one pika publisher (confirms) each through
//! tether, placed at random. tether learns the leaders from the management API and moves each
//! session to its queue's leader at a safe point (a publisher that sends only to its queue is
//! placed by it too); when a leader is transferred, its sessions follow. Nothing is lost, no
//! client sees an error, and a message seen twice carries the redelivered flag.

mod support;

use libtest_mimic::Failed;
use std::collections::BTreeSet;
use std::time::Duration;
use support::config::{TetherConfig, lab_nodes};
use support::lab::{Lab, ports};
use support::suite::Suite;
use support::tally::Tally;
use support::tether::Tether;
use support::{clients, wait_for};

const QUEUES: usize = 6;

fn queue(i: usize) -> String {
    format!("locality-{i}")
}

/// The lab node (`r2`) of a node as tether names it (`r2@localhost`, or `r1` for the seed).
fn lab_name(node: &str) -> &str {
    node.split('@').next().unwrap_or(node)
}

/// Declares quorum queue `name` through `node`: RabbitMQ makes the declaring node its leader.
fn declare_on(node: &str, name: &str, delete: bool) {
    let mut args = vec![
        format!("--port={}", ports::of(node, "amqp")),
        format!("--queue={name}"),
    ];
    if delete {
        args.push("--delete".into());
    }
    let answer = clients::run("declare_queue.py", &args);
    assert_eq!(answer["ok"], true, "{answer}");
}

/// One session as `/status` shows it under `locality`: a consumer, or a publisher that sends
/// only to its queue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Consumer {
    consumes: bool,
    node: String,
    queue: String,
    leader: String,
    local: bool,
}

fn consumers(tether: &Tether) -> Vec<Consumer> {
    sessions_of(tether, "amqp")
}

/// The sessions `/status` lists under `locality` for listener `name`.
fn sessions_of(tether: &Tether, name: &str) -> Vec<Consumer> {
    let status = tether.status();
    let listener = (status["listeners"].as_array().into_iter().flatten())
        .find(|l| l["name"] == name)
        .cloned()
        .unwrap_or_default();
    let mut found: Vec<Consumer> = (listener["locality"].as_array().into_iter().flatten())
        .map(|c| Consumer {
            consumes: c["consumes"] == true,
            node: c["node"].as_str().unwrap_or_default().to_string(),
            queue: c["queues"][0]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            leader: (c["queues"][0]["leader"].as_str())
                .unwrap_or_default()
                .to_string(),
            local: c["local"] == true,
        })
        .collect();
    found.sort();
    found
}

/// Every consumer and every publisher (each sends to its one queue through the default
/// exchange) on its queue's leader.
fn all_local(tether: &Tether) -> Option<Vec<Consumer>> {
    let now = consumers(tether);
    let placed = now.len() == 2 * QUEUES && now.iter().filter(|c| c.consumes).count() == QUEUES;
    (placed && now.iter().all(|c| c.local && c.node == c.leader)).then_some(now)
}

/// The lab cluster seeded with r1, its leaders read every second, moves paced fast.
fn cluster(endpoints: &[&str]) -> String {
    let management = format!("http://{}", ports::address("r1", "management"));
    format!(
        "balance = \"random\"\nlocality = true\nrebalance_pace = \"300ms\"\n\
         health = {{ interval = \"300ms\", timeout = \"1s\", rise = 2, fall = 2 }}\n{}\n\
         discovery.rabbitmq = {{ url = \"{management}\", username = \"guest\", password = \"guest\", interval = \"1s\" }}",
        lab_nodes(&["r1"], endpoints)
    )
}

fn consumers_follow_their_queues_leaders(lab: &Lab) -> Result<(), Failed> {
    // Two queues led by each node.
    for i in 0..QUEUES {
        declare_on(&format!("r{}", i % 3 + 1), &queue(i), false);
    }
    let mut config = TetherConfig::new().cluster("lab", &cluster(&["amqp"]));
    let port = config.listener("amqp", "amqp", "lab", r#"failover_timeout = "90s""#);
    let tether = config.start();
    // Discovery's first poll and two health checks; the bound is for a loaded machine.
    wait_for("three nodes up", Duration::from_secs(30), || {
        let up = tether.metric("tether_nodes", &[("cluster", "lab"), ("state", "up")]);
        (up == 3.0).then_some(())
    });

    let consumers_running: Vec<clients::Running> = (0..QUEUES)
        .map(|i| {
            let mut consumer = clients::spawn(
                "pika_consumer.py",
                &[
                    format!("--port={port}"),
                    format!("--queue={}", queue(i)),
                    "--prefetch=10".into(),
                    "--idle=5".into(),
                    "--dump".into(),
                ],
            );
            assert_eq!(consumer.line(), "ready");
            consumer
        })
        .collect();
    let producers: Vec<clients::Running> = (0..QUEUES)
        .map(|i| {
            let mut producer = clients::spawn(
                "pika_publisher.py",
                &[
                    format!("--port={port}"),
                    format!("--queue={}", queue(i)),
                    "--confirms".into(),
                    "--rate=20".into(),
                    format!("--tag=p{i}"),
                ],
            );
            assert_eq!(producer.line(), "ready");
            producer
        })
        .collect();
    eprintln!(
        "placed at random, some moved already: {:?}",
        consumers(&tether)
    );

    // Each remote consumer moves at its safe point, one per 300 ms pace; the bound is for a
    // loaded machine.
    let settled = wait_for(
        "every session on its queue's leader",
        Duration::from_secs(60),
        || all_local(&tether),
    );
    eprintln!("all local: {settled:?}");
    let leaders: BTreeSet<&str> = settled.iter().map(|c| c.leader.as_str()).collect();
    assert_eq!(
        leaders.len(),
        3,
        "leaders spread over three nodes: {settled:?}"
    );
    let local = tether.metric(
        "tether_locality_sessions",
        &[("listener", "amqp"), ("placement", "local")],
    );
    assert_eq!(local, QUEUES as f64, "the gauge agrees with /status");
    let first_moves = tether.metric("tether_locality_moves_total", &[("cluster", "lab")]) + 0.0;
    eprintln!("{first_moves} locality moves to get there");

    // Transfer the leader of queue 0 to the next node: its consumer follows, after the hold
    // that keeps a session from moving for locality twice within 10 s.
    let moved = settled
        .iter()
        .find(|c| c.queue == queue(0))
        .cloned()
        .expect("queue 0 has a consumer");
    let from = lab_name(&moved.leader).to_string();
    let to = if from == "r3" {
        "r1"
    } else {
        ["r2", "r3"][usize::from(from == "r2")]
    };
    lab.lead(&queue(0), to);
    let followed = wait_for(
        "its sessions to follow the leader",
        Duration::from_secs(60),
        || {
            all_local(&tether).filter(|now| {
                (now.iter().filter(|c| c.queue == queue(0))).all(|c| lab_name(&c.node) == to)
            })
        },
    );
    eprintln!("after the transfer to {to}: {followed:?}");
    // Traffic goes on for a while after the last move.
    std::thread::sleep(Duration::from_secs(2));

    let tally = Tally::of(producers, consumers_running, "p", "confirmed");
    let moves = tether.metric("tether_locality_moves_total", &[("cluster", "lab")]) + 0.0;
    let failovers = tether.metric("tether_failovers_total", &[]) + 0.0;
    eprintln!(
        "counted: sent {} received {} duplicates {} (unflagged {}) lost {} client errors {} \
         locality moves {moves} failovers {failovers}",
        tally.sent.len(),
        tally.received.len(),
        tally.deliveries.saturating_sub(tally.received.len() as u64),
        tally.unflagged_duplicates,
        tally.lost().len(),
        tally.client_errors.len()
    );
    tally.assert_clean();
    assert_eq!(
        tally.unflagged_duplicates, 0,
        "a message seen again carries the redelivered flag"
    );
    assert!(
        moves >= first_moves + 2.0,
        "the transfer was followed by two moves (consumer, publisher): {first_moves} then {moves}"
    );
    assert_eq!(failovers, 0.0, "locality moves are planned, not failovers");
    assert_eq!(tether.terminate(), Some(0));
    for i in 0..QUEUES {
        declare_on("r1", &queue(i), true);
    }
    Ok(())
}

/// The same for STOMP: stomp.py subscribers to `/amq/queue/NAME` (client-individual acks), one
/// per queue led by each node, with producers asking for receipts.
fn stomp_subscribers_move_to_their_queues_leaders(_: &Lab) -> Result<(), Failed> {
    let queues: Vec<String> = (0..3).map(|i| format!("locality-stomp-{i}")).collect();
    for (i, name) in queues.iter().enumerate() {
        declare_on(&format!("r{}", i + 1), name, false);
    }
    let mut config = TetherConfig::new().cluster("lab", &cluster(&["stomp"]));
    let port = config.listener("stomp", "stomp", "lab", r#"failover_timeout = "90s""#);
    let tether = config.start();
    wait_for("three nodes up", Duration::from_secs(30), || {
        let up = tether.metric("tether_nodes", &[("cluster", "lab"), ("state", "up")]);
        (up == 3.0).then_some(())
    });
    let subscribers: Vec<clients::Running> = (queues.iter())
        .map(|name| {
            let mut consumer = clients::spawn(
                "stomp_consumer.py",
                &[
                    format!("--port={port}"),
                    format!("--dest=/amq/queue/{name}"),
                    "--idle=5".into(),
                    "--dump".into(),
                ],
            );
            assert_eq!(consumer.line(), "ready");
            consumer
        })
        .collect();
    let producers: Vec<clients::Running> = (queues.iter().enumerate())
        .map(|(i, name)| {
            let mut producer = clients::spawn(
                "stomp_producer.py",
                &[
                    format!("--port={port}"),
                    format!("--dest=/amq/queue/{name}"),
                    "--count=0".into(),
                    "--rate=20".into(),
                    "--receipts".into(),
                    "--persistent".into(),
                    format!("--tag=s{i}"),
                ],
            );
            assert_eq!(producer.line(), "ready");
            producer
        })
        .collect();
    // As above: moves at safe points, paced; the bound is for a loaded machine.
    let settled = wait_for(
        "every subscriber on its queue's leader",
        Duration::from_secs(60),
        || {
            let now = sessions_of(&tether, "stomp");
            let leaders: BTreeSet<&str> = now.iter().map(|c| c.leader.as_str()).collect();
            (now.len() == queues.len() && leaders.len() == 3 && now.iter().all(|c| c.local))
                .then_some(now)
        },
    );
    eprintln!("all local: {settled:?}");
    std::thread::sleep(Duration::from_secs(2));
    let tally = Tally::of(producers, subscribers, "s", "receipts");
    let moves = tether.metric("tether_locality_moves_total", &[("cluster", "lab")]) + 0.0;
    let failovers = tether.metric("tether_failovers_total", &[]) + 0.0;
    eprintln!(
        "counted: sent {} received {} lost {} client errors {} locality moves {moves} failovers \
         {failovers}",
        tally.sent.len(),
        tally.received.len(),
        tally.lost().len(),
        tally.client_errors.len()
    );
    tally.assert_clean();
    assert_eq!(failovers, 0.0, "locality moves are planned, not failovers");
    assert_eq!(tether.terminate(), Some(0));
    for name in &queues {
        declare_on("r1", name, true);
    }
    Ok(())
}

fn main() {
    Suite::new(&["rabbit"])
        .with_lab(
            "consumers_follow_their_queues_leaders",
            consumers_follow_their_queues_leaders,
        )
        .with_lab(
            "stomp_subscribers_move_to_their_queues_leaders",
            stomp_subscribers_move_to_their_queues_leaders,
        )
        .run()
}
