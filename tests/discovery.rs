//! Learning the cluster from the brokers, against the real bundled clusters: one seed address
//! is enough. RabbitMQ through its management API (a node joining later gets sessions without a
//! restart); ActiveMQ through a broker's OpenWire ConnectionControl updates (a killed broker
//! leaves the live set at once, and returns when restarted).

mod support;

use libtest_mimic::Failed;
use std::time::Duration;
use support::config::{TetherConfig, lab_nodes};
use support::lab::{self, Lab, ports};
use support::suite::Suite;
use support::tether::Tether;
use support::{clients, wait_for};

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

/// A node of a cluster as `/status` shows it: name, `(endpoint, address)`s, up.
type SeenNode = (String, Vec<(String, String)>, bool);

/// The nodes of a cluster, from `/status`.
/// Health checks as fast as the lab allows, so that nodes count as up soon.
const HEALTH: &str = r#"health = { interval = "300ms", timeout = "1s", rise = 2, fall = 2 }"#;

fn nodes(tether: &Tether, cluster: &str) -> Vec<SeenNode> {
    let status = tether.status();
    let clusters = status["clusters"].as_array().cloned().unwrap_or_default();
    let Some(cluster) = clusters.iter().find(|c| c["name"] == cluster) else {
        return Vec::new();
    };
    cluster["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let endpoints = n["endpoints"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, e)| {
                    (
                        name.clone(),
                        e["address"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            (
                n["name"].as_str().unwrap_or_default().to_string(),
                endpoints,
                n["up"] == true,
            )
        })
        .collect()
}

fn endpoint(node: &SeenNode, name: &str) -> Option<String> {
    node.1
        .iter()
        .find(|(e, _)| e == name)
        .map(|(_, a)| a.clone())
}

fn rabbitmq_one_seed_finds_the_cluster_and_a_node_that_joins_later(_: &Lab) -> Result<(), Failed> {
    let management = format!("http://{}", ports::address("r1", "management"));
    let cluster = format!(
        "balance = \"least-connections\"\n{HEALTH}\n{}\n\
         discovery.rabbitmq = {{ url = \"{management}\", username = \"guest\", password = \"guest\", interval = \"1s\" }}",
        lab_nodes(&["r1"], &["amqp", "stomp"])
    );
    let mut config = TetherConfig::new().cluster("lab", &cluster);
    let amqp = config.listener("amqp", "amqp", "lab", "");
    let stomp = config.listener("stomp", "stomp", "lab", "");
    let tether = config.start();
    // The first poll answers within a second; health needs two checks more.
    let found = wait_for("three nodes, all up", Duration::from_secs(30), || {
        let found = nodes(&tether, "lab");
        (found.len() == 3 && found.iter().all(|n| n.2)).then_some(found)
    });
    for (i, node) in found.iter().enumerate() {
        let n = i + 1;
        assert_eq!(
            endpoint(node, "amqp").as_deref(),
            Some(ports::address(&format!("r{n}"), "amqp").as_str()),
            "{found:?}"
        );
        assert_eq!(
            endpoint(node, "stomp").as_deref(),
            Some(ports::address(&format!("r{n}"), "stomp").as_str()),
            "the STOMP ports are learned too: {found:?}"
        );
    }
    assert_eq!(found[0].0, "r1", "the seed keeps its name: {found:?}");
    assert_eq!(found[1].0, "r2@localhost");
    let sources = tether.status()["clusters"][0]["nodes"][1]["sources"].clone();
    assert_eq!(
        sources,
        serde_json::json!([format!("rabbitmq:{management}")]),
        "/status shows where a node came from"
    );
    assert!(
        tether.metric(
            "tether_topology_updates_total",
            &[("source", format!("rabbitmq:{management}").as_str())]
        ) >= 1.0
    );

    let held = hold(amqp, 6);
    lab::run(&["add", "r4"]);
    let _extra = ExtraNode;
    // The next poll (1 s) lists it; then two health checks.
    wait_for("r4 found and up", Duration::from_secs(60), || {
        nodes(&tether, "lab")
            .iter()
            .any(|n| n.0 == "r4@localhost" && n.2)
            .then_some(())
    });
    let more = hold(amqp, 2);
    let on_r4 = tether
        .sessions_per_node("lab")
        .into_iter()
        .find(|(n, _)| n == "r4@localhost")
        .map_or(0, |(_, s)| s);
    assert_eq!(
        on_r4, 2,
        "least-connections sends the new sessions to the new node, without a restart"
    );
    let stomp_ok = clients::run(
        "stomp_producer.py",
        &[
            format!("--port={stomp}"),
            "--dest=/queue/discovery".into(),
            "--count=10".into(),
            "--receipts".into(),
        ],
    );
    assert_eq!(
        (stomp_ok["sent"].as_u64(), stomp_ok["receipts"].as_u64()),
        (Some(10), Some(10)),
        "the learned STOMP endpoints serve: {stomp_ok}"
    );
    assert_eq!(stomp_ok["errors"], serde_json::json!([]), "{stomp_ok}");
    for sessions in [held, more] {
        let summary = sessions.finish();
        assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");
    }
    assert_eq!(tether.terminate(), Some(0));
    Ok(())
}

/// The broker tether reads updates from is b1 (the seed); b2 is killed and restarted.
fn activemq_one_seed_learns_the_network_and_follows_a_broker_dying(
    lab: &Lab,
) -> Result<(), Failed> {
    let (b1, b2, b3) = (
        ports::address("b1", "openwire"),
        ports::address("b2", "openwire"),
        ports::address("b3", "openwire"),
    );
    let cluster = format!(
        "# Health checks slower than usual, so that what is measured here is discovery's speed.\n\
         health = {{ interval = \"5s\", timeout = \"1s\", rise = 2, fall = 2 }}\n{}\n\
         discovery.activemq = {{ url = \"tcp://{b1}\", endpoints = {{ \"tcp://{b2}\" = {{ stomp = \"{}\" }}, \"tcp://{b3}\" = {{ stomp = \"{}\" }} }} }}",
        lab_nodes(&["b1"], &["stomp", "openwire"]),
        ports::address("b2", "stomp"),
        ports::address("b3", "stomp"),
    );
    let mut config = TetherConfig::new().cluster("amq", &cluster);
    let stomp = config.listener("stomp", "stomp", "amq", "");
    let tether = config.start();
    let names = |tether: &Tether| -> Vec<String> {
        nodes(tether, "amq").into_iter().map(|n| n.0).collect()
    };
    // The first ConnectionControl comes within a second of connecting.
    let found = wait_for("three brokers", Duration::from_secs(30), || {
        let found = nodes(&tether, "amq");
        (found.len() == 3).then_some(found)
    });
    assert_eq!(
        names(&tether),
        [b2.as_str(), b3.as_str(), "b1"],
        "{found:?}"
    );
    for node in &found {
        let port: u16 = endpoint(node, "openwire")
            .and_then(|a| a.rsplit(':').next().and_then(|p| p.parse().ok()))
            .expect("an openwire endpoint");
        assert_eq!(
            endpoint(node, "stomp"),
            Some(format!("127.0.0.1:{}", port + 10)),
            "the STOMP endpoint from the endpoints table: {found:?}"
        );
    }

    let _heal = lab.heal(&["b2"]);
    let killed = std::time::Instant::now();
    lab.kill("b2");
    // ActiveMQ drops a dead peer from connectedBrokers within tens of milliseconds; health
    // checks every 5 s could not have noticed this soon. The bound is for a loaded machine.
    wait_for("b2 to leave", Duration::from_secs(30), || {
        (!names(&tether).contains(&b2)).then_some(())
    });
    let left_after = killed.elapsed();
    eprintln!(
        "b2 left tether's node set {:.3}s after kill -9 (health checks every 5 s)",
        left_after.as_secs_f64()
    );
    assert_eq!(
        tether.metric("tether_endpoint_up", &[("node", b2.as_str())]),
        0.0,
        "a node that left is not up"
    );
    let sent = clients::run(
        "stomp_producer.py",
        &[
            format!("--port={stomp}"),
            "--dest=/queue/discovery".into(),
            "--count=20".into(),
            "--receipts".into(),
        ],
    );
    assert_eq!(sent["receipts"], 20, "the live brokers serve: {sent}");

    lab.start("b2");
    // Its peers' bridges re-dial every second; then the next ConnectionControl lists it.
    wait_for("b2 to return", Duration::from_secs(60), || {
        names(&tether).contains(&b2).then_some(())
    });
    assert!(
        tether.metric(
            "tether_topology_updates_total",
            &[("source", format!("activemq:tcp://{b1}").as_str())]
        ) >= 3.0,
        "found, b2 gone, b2 back"
    );
    assert_eq!(tether.terminate(), Some(0));
    Ok(())
}

fn hold(port: u16, count: usize) -> clients::Running {
    let mut sessions = clients::spawn(
        "hold_connections.py",
        &[format!("--port={port}"), format!("--count={count}")],
    );
    assert_eq!(sessions.line(), "ready");
    sessions
}

fn main() {
    Suite::new(&["rabbit", "activemq"])
        .with_lab(
            "rabbitmq_one_seed_finds_the_cluster_and_a_node_that_joins_later",
            rabbitmq_one_seed_finds_the_cluster_and_a_node_that_joins_later,
        )
        .with_lab(
            "activemq_one_seed_learns_the_network_and_follows_a_broker_dying",
            activemq_one_seed_learns_the_network_and_follows_a_broker_dying,
        )
        .run()
}
