//! The client matrix: the client libraries people run, each as its docs show it and with no
//! reconnect logic, through each fault, counted by the client program itself
//! (tests/clients/matrix/). All of a trial's clients run at once through one tether, each
//! with its own queue, so a fault is proven for every client in the time of one.
//!
//! Pass, for every client: no client-visible error, nothing confirmed (or receipted) lost,
//! every publish confirmed, and no duplicate without its redelivered flag beyond the
//! publishes tether sent again (the two ways at-least-once allows). Clients with a recovery
//! of their own (the Java client, bunny) must not have started one.

mod support;

use libtest_mimic::Failed;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::clients::{self, Running};
use support::front::Front;
use support::lab::{Lab, ports};
use support::suite::Suite;

/// A client of the matrix: its name in trial output, the protocol it speaks (the tether
/// listener it goes to: "amqp" or "stomp"), and how to run it.
struct Client {
    name: &'static str,
    protocol: &'static str,
    program: fn() -> Command,
}

const MATRIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/matrix");

fn in_matrix(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args).current_dir(MATRIX);
    command
}

/// The Java client compiled once per test run (javac against Debian's amqp-client.jar).
fn java() -> Command {
    static CLASSES: OnceLock<String> = OnceLock::new();
    let classes = CLASSES.get_or_init(|| {
        let out = format!("{}/matrix-java", env!("CARGO_TARGET_TMPDIR"));
        let status = Command::new("javac")
            .args(["-d", &out, "-cp", JAVA_CLASSPATH, "MatrixClient.java"])
            .current_dir(MATRIX)
            .status()
            .expect("run javac (scripts/install-deps installs a JDK)");
        assert!(status.success(), "javac MatrixClient.java failed");
        out
    });
    in_matrix(
        "java",
        &[
            "-cp",
            &format!("{classes}:{JAVA_CLASSPATH}"),
            "MatrixClient",
        ],
    )
}

/// Debian's librabbitmq-client-java and the slf4j it logs through (silenced).
const JAVA_CLASSPATH: &str =
    "/usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-nop.jar";

const AMQP_CLIENTS: [Client; 7] = [
    Client {
        name: "pika-blocking",
        protocol: "amqp",
        program: || in_matrix("python3", &["pika_blocking.py"]),
    },
    Client {
        name: "pika-select",
        protocol: "amqp",
        program: || in_matrix("python3", &["pika_select.py"]),
    },
    Client {
        name: "celery",
        protocol: "amqp",
        program: || in_matrix("python3", &["celery_client.py"]),
    },
    Client {
        name: "amqplib",
        protocol: "amqp",
        program: || in_matrix("node", &["amqplib_client.js"]),
    },
    Client {
        name: "php-amqplib",
        protocol: "amqp",
        program: || in_matrix("php", &["php_amqplib.php"]),
    },
    Client {
        name: "java",
        protocol: "amqp",
        program: java,
    },
    Client {
        name: "bunny",
        protocol: "amqp",
        program: || in_matrix("ruby", &["bunny_client.rb"]),
    },
];

const STOMP_CLIENTS: [Client; 2] = [
    Client {
        name: "stomp-py",
        protocol: "stomp",
        program: || in_matrix("python3", &["stomp_py.py"]),
    },
    Client {
        name: "stomp-gem",
        protocol: "stomp",
        program: || in_matrix("ruby", &["stomp_gem.rb"]),
    },
];

/// The faults every client goes through.
#[derive(Clone, Copy)]
enum Fault {
    /// kill -9 of each node that holds a session, one after another, each restarted after.
    Kill9,
    /// SIGSTOP of each node that holds a session for 20 s, then SIGCONT.
    Sigstop20s,
    /// A graceful stop of each node that holds a session, each started again after.
    GracefulStop,
    /// Every node stopped and started in turn.
    RollingRestart,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::Kill9,
        Fault::Sigstop20s,
        Fault::GracefulStop,
        Fault::RollingRestart,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill_9",
            Fault::Sigstop20s => "sigstop_20s",
            Fault::GracefulStop => "graceful_stop",
            Fault::RollingRestart => "rolling_restart",
        }
    }

    fn apply(self, lab: &Lab, front: &Front, nodes: &[&str]) {
        match self {
            Fault::Kill9 => front.break_each_busy_node(lab, |lab, node| lab.kill(node)),
            Fault::Sigstop20s => front.break_each_busy_node_for(
                lab,
                |lab, node| lab.pause(node),
                Duration::from_secs(20),
            ),
            Fault::GracefulStop => front.break_each_busy_node(lab, |lab, node| lab.stop(node)),
            Fault::RollingRestart => front.rolling_restart(lab, nodes),
        }
    }
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// Deletes the trial's queues however the trial ends.
struct Queues(Vec<String>);

impl Drop for Queues {
    fn drop(&mut self) {
        for queue in &self.0 {
            clients::delete_queue(queue);
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Broker {
    RabbitMq,
    ActiveMq,
}

/// A client's own queue in a fault's trial.
fn queue_of(client: &Client, fault: Fault) -> String {
    format!("matrix-{}-{}", client.name, fault.name())
}

/// Runs `clients` through `fault` against the lab's `broker` cluster, and checks each one's
/// counts.
fn through(lab: &Lab, fault: Fault, broker: Broker, clients: &[&Client]) -> Result<(), Failed> {
    let rabbit = broker == Broker::RabbitMq;
    let (cluster, nodes): (&'static str, &[&str]) = if rabbit {
        ("rabbit", &ports::RABBIT)
    } else {
        ("amq", &ports::ACTIVEMQ)
    };
    let mut protocols: Vec<&str> = clients.iter().map(|c| c.protocol).collect();
    protocols.sort();
    protocols.dedup();
    let (front, listener_ports) = Front::start_listeners(cluster, nodes, &protocols);
    let port_of = |p: &str| listener_ports[protocols.iter().position(|q| *q == p).unwrap()];
    let queues = Queues(if rabbit {
        clients.iter().map(|c| queue_of(c, fault)).collect()
    } else {
        Vec::new()
    });
    let mut running: Vec<(&Client, Running)> = Vec::new();
    for client in clients {
        let queue = queue_of(client, fault);
        let mut command = (client.program)();
        command.arg(format!("--port={}", port_of(client.protocol)));
        match (client.protocol, rabbit) {
            ("amqp", _) => {
                command.arg(format!("--queue={queue}"));
            }
            (_, true) => {
                // A quorum queue, as the AMQP clients declare theirs: it survives its node.
                clients::declare_queue(&queue);
                command.arg(format!("--destination=/amq/queue/{queue}"));
            }
            (_, false) => {
                // What an earlier run left in the broker's dead-letter queue is not this one's.
                activemq_dead_letters(&format!("/queue/{queue}"));
                command.arg(format!("--destination=/queue/{queue}"));
            }
        }
        command.arg("--rate=20");
        running.push((client, clients::spawn_command(command, client.name)));
    }
    for (client, program) in &mut running {
        let line = program.line();
        assert_eq!(line, "ready", "{} did not start", client.name);
    }
    // Traffic before the fault, so that every session has publishes and deliveries in flight.
    std::thread::sleep(Duration::from_secs(5));
    // Publishes (AMQP) and SENDs (STOMP) tether sent again after a failover.
    let republished = || {
        let metric = |kind| (front.tether).metric("tether_replayed_total", &[("kind", kind)]);
        metric("publish") + metric("send")
    };
    let replayed_before = republished();
    let broken = Instant::now();
    fault.apply(lab, &front, nodes);
    eprintln!("fault applied in {:.1} s", secs(broken));
    std::thread::sleep(Duration::from_secs(5));
    for (_, program) in &mut running {
        program.send("stop");
    }
    let mut summaries: Vec<(&Client, serde_json::Value)> = running
        .into_iter()
        .map(|(client, program)| (client, program.finish()))
        .collect();
    if !rabbit {
        for (client, summary) in &mut summaries {
            let destination = format!("/queue/{}", queue_of(client, fault));
            set_aside_dead_letters(summary, &activemq_dead_letters(&destination));
        }
    }
    let replayed = republished() - replayed_before;
    eprintln!(
        "failovers: {}, publishes sent again by tether: {replayed}",
        front.failovers()
    );
    let mut failures = Vec::new();
    for (client, summary) in &summaries {
        eprintln!("{}: {summary}", client.name);
        failures.extend(
            verdict(client.name, summary, replayed)
                .into_iter()
                .map(|f| format!("{}: {f}", client.name)),
        );
    }
    drop(queues);
    // Kept for passing trials too: what a flaky trial did when it passed is half its story.
    let log = format!(
        "{}/client_matrix-{}-{}.log",
        env!("CARGO_TARGET_TMPDIR"),
        cluster,
        fault.name()
    );
    let _ = std::fs::write(&log, front.tether.log_text());
    if failures.is_empty() {
        return Ok(());
    }
    Err(format!("{}\n(tether's log: {log})", failures.join("\n")).into())
}

/// Takes the messages ActiveMQ dead-lettered from `destination` out of `ActiveMQ.DLQ` on every
/// broker: their bodies, and the broker's reasons.
fn activemq_dead_letters(destination: &str) -> serde_json::Value {
    let stomp_ports: Vec<String> = ports::ACTIVEMQ
        .iter()
        .map(|node| ports::of(node, "stomp").to_string())
        .collect();
    clients::run(
        "activemq_dlq.py",
        &[
            format!("--ports={}", stomp_ports.join(",")),
            format!("--destination={destination}"),
        ],
    )
}

/// A receipted message that ActiveMQ moved to its dead-letter queue was not lost by tether or
/// the client: it is counted apart (`dead_lettered`, with the broker's reasons), and not as
/// lost. The network of brokers does this to a message it pages in twice (a copy sent back
/// over a bridge while the first is still in flight) after a broker hung; conf/lab/README.md.
fn set_aside_dead_letters(summary: &mut serde_json::Value, dead: &serde_json::Value) {
    let bodies: Vec<u64> = dead["bodies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b.as_str()?.parse().ok())
        .collect();
    let lost: Vec<u64> = summary["lost_first"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_u64())
        .collect();
    let (parked, still_lost): (Vec<u64>, Vec<u64>) =
        lost.into_iter().partition(|seq| bodies.contains(seq));
    if parked.is_empty() {
        return;
    }
    eprintln!(
        "{}: {} receipted messages dead-lettered by ActiveMQ ({}), not lost: {parked:?}",
        summary["client"],
        parked.len(),
        dead["causes"]
    );
    summary["lost"] = (summary["lost"].as_u64().unwrap_or(0) - parked.len() as u64).into();
    summary["lost_first"] = still_lost.into();
    summary["dead_lettered"] = parked.len().into();
}

/// What is wrong with one client's counts, if anything.
fn verdict(client: &str, summary: &serde_json::Value, replayed: f64) -> Vec<String> {
    let count = |key: &str| summary[key].as_u64().unwrap_or(0);
    let mut wrong = Vec::new();
    let errors = summary["errors"].as_array().cloned().unwrap_or_default();
    if !errors.is_empty() {
        wrong.push(format!(
            "client-visible errors: {}",
            serde_json::Value::from(errors)
        ));
    }
    if count("sent") == 0 {
        wrong.push("published nothing".into());
    }
    if count("lost") > 0 {
        let first: Vec<_> = summary["lost_first"]
            .as_array()
            .into_iter()
            .flatten()
            .take(10)
            .collect();
        wrong.push(format!(
            "lost {} confirmed messages, the first {first:?}",
            count("lost"),
        ));
    }
    if count("confirmed") != count("sent") {
        wrong.push(format!(
            "{} of {} publishes confirmed ({} nacked)",
            count("confirmed"),
            count("sent"),
            count("nacked")
        ));
    }
    // A duplicate without the redelivered flag is a publish sent twice, which tether does only
    // for publishes the failed node had not confirmed.
    let unflagged = count("duplicates") - count("duplicates_redelivered");
    if unflagged as f64 > replayed {
        wrong.push(format!(
            "{unflagged} duplicates without the redelivered flag, more than the {replayed} \
             publishes tether sent again"
        ));
    }
    if count("recoveries") > 0 {
        wrong.push(format!(
            "the client's own recovery ran {} times: tether's failover showed through",
            count("recoveries")
        ));
    }
    if client == "celery" && summary["inspect_ping"]["pong"] != true {
        wrong.push(format!(
            "`celery inspect ping` got no answer: {}",
            summary["inspect_ping"]
        ));
    }
    wrong
}

/// The Java client's own recovery when it does run: tether itself hangs (SIGSTOP) for 15 s,
/// past the heart-beat timeout the client computes from its 5 s heart-beats, so the client gives
/// up on its connection and recovers through tether once tether answers again. Publishing and
/// consuming carry on with nothing lost; the client publishes again what was unconfirmed, as its
/// docs ask of an application.
fn java_recovers_by_itself_through_tether(_lab: &Lab) -> Result<(), Failed> {
    let (front, listener_ports) = Front::start_listeners("rabbit", &ports::RABBIT, &["amqp"]);
    let queue = "matrix-java-own-recovery";
    let queues = Queues(vec![queue.to_string()]);
    let mut command = java();
    command.args([
        format!("--port={}", listener_ports[0]),
        format!("--queue={queue}"),
        "--rate=20".into(),
        "--expect-recovery".into(),
    ]);
    let mut program = clients::spawn_command(command, "java");
    assert_eq!(program.line(), "ready", "java did not start");
    std::thread::sleep(Duration::from_secs(5));
    front.tether.signal("STOP");
    std::thread::sleep(Duration::from_secs(15));
    front.tether.signal("CONT");
    // The client retries every 5 s (its default); 20 s leaves it room on a loaded machine.
    std::thread::sleep(Duration::from_secs(20));
    program.send("stop");
    let summary = program.finish();
    eprintln!("java: {summary}");
    drop(queues);
    let mut wrong = verdict("java", &summary, f64::INFINITY);
    // Its recovery was meant to run here; everything else stands.
    wrong.retain(|w| !w.contains("own recovery"));
    if summary["recoveries"].as_u64().unwrap_or(0) == 0 {
        wrong.push("the client never recovered: tether's hang did not reach it".into());
    }
    match wrong.is_empty() {
        true => Ok(()),
        false => Err(wrong.join("\n").into()),
    }
}

fn rabbitmq(lab: &Lab, fault: Fault) -> Result<(), Failed> {
    through(
        lab,
        fault,
        Broker::RabbitMq,
        &chosen(&[&AMQP_CLIENTS, &STOMP_CLIENTS]),
    )
}

fn activemq(lab: &Lab, fault: Fault) -> Result<(), Failed> {
    through(lab, fault, Broker::ActiveMq, &chosen(&[&STOMP_CLIENTS]))
}

/// The clients of `tables`, or of them those named in TETHER_MATRIX_CLIENTS (comma-separated,
/// e.g. `java,bunny`), to look into one client.
fn chosen(tables: &[&'static [Client]]) -> Vec<&'static Client> {
    let only = std::env::var("TETHER_MATRIX_CLIENTS").unwrap_or_default();
    let only: Vec<&str> = only.split(',').filter(|n| !n.is_empty()).collect();
    tables
        .iter()
        .flat_map(|table| table.iter())
        .filter(|client| only.is_empty() || only.contains(&client.name))
        .collect()
}

fn main() {
    let mut suite = Suite::new(&["rabbit", "activemq"]);
    for fault in Fault::ALL {
        suite = suite.with_lab_arg(&format!("rabbitmq_{}", fault.name()), fault, rabbitmq);
    }
    for fault in Fault::ALL {
        suite = suite.with_lab_arg(&format!("activemq_{}", fault.name()), fault, activemq);
    }
    suite
        .with_lab(
            "java_recovers_by_itself_through_tether",
            java_recovers_by_itself_through_tether,
        )
        .run()
}
