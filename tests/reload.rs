//! Reloading a running tether (SIGHUP and `tether reload`) in front of the real bundled
//! RabbitMQ cluster, with pika sessions through an `amqp` listener that must not notice: a node
//! added and one removed, a listener removed, a broken file rejected.

mod support;

use libtest_mimic::Failed;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use support::config::{TetherConfig, lab_nodes};
use support::lab::Lab;
use support::suite::Suite;
use support::tether::Tether;
use support::{clients, free_port, wait_for};

/// A tether config with `nodes` of the lab and an `amqp` listener per port in `listeners`.
fn config(admin: u16, balance: &str, nodes: &[&str], listeners: &[(&str, u16)]) -> String {
    let health = r#"health = { interval = "300ms", timeout = "1s", rise = 2, fall = 2 }"#;
    let nodes = lab_nodes(nodes, &["amqp"]);
    let mut config = TetherConfig::with_admin(admin).cluster(
        "lab",
        &format!("balance = \"{balance}\"\n{health}\n{nodes}"),
    );
    for (name, port) in listeners {
        config.listener_on(*port, name, "amqp", "lab", "");
    }
    config.text().to_owned()
}

fn sessions_on(tether: &Tether, node: &str) -> u64 {
    tether
        .sessions_per_node("lab")
        .into_iter()
        .find(|(name, _)| name == node)
        .map_or(0, |(_, sessions)| sessions)
}

fn node_names(tether: &Tether) -> Vec<String> {
    tether
        .sessions_per_node("lab")
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// Every held session publishes one message and gets it back; returns how many did.
fn ping(sessions: &mut clients::Running) -> (u64, serde_json::Value) {
    sessions.send("ping");
    let answer: serde_json::Value =
        serde_json::from_str(&sessions.line()).expect("pika_sessions answers a ping with JSON");
    (answer["ok"].as_u64().unwrap_or(0), answer["errors"].clone())
}

fn hold(port: u16, count: usize) -> clients::Running {
    let mut sessions = clients::spawn(
        "pika_sessions.py",
        &[format!("--port={port}"), format!("--count={count}")],
    );
    assert_eq!(sessions.line(), "ready");
    sessions
}

/// SIGHUP replaces r1 by r3: the sessions on r1 keep working there (drained, not moved); new
/// sessions go to r2 and r3 only.
fn sighup_adds_and_removes_nodes_without_dropping_a_session(_: &Lab) -> Result<(), Failed> {
    let (admin, port) = (free_port(), free_port());
    let tether = Tether::start(
        &config(admin, "least-connections", &["r1", "r2"], &[("amqp", port)]),
        SocketAddr::from(([127, 0, 0, 1], admin)),
    );
    // Health checks pass within a second; the bound covers a loaded machine.
    wait_for("r1 and r2 up", Duration::from_secs(30), || {
        (tether.metric("tether_node_up", &[("node", "r1")]) == 1.0
            && tether.metric("tether_node_up", &[("node", "r2")]) == 1.0)
            .then_some(())
    });
    let mut old = hold(port, 6);
    let on_r1 = sessions_on(&tether, "r1");
    assert_eq!(
        (on_r1, sessions_on(&tether, "r2")),
        (3, 3),
        "least-connections"
    );
    assert_eq!(ping(&mut old).0, 6);

    tether.rewrite_config(&config(
        admin,
        "least-connections",
        &["r2", "r3"],
        &[("amqp", port)],
    ));
    tether.signal("HUP");
    // The reload itself is immediate; r3 needs its `rise` checks (600 ms here).
    wait_for("r1 gone and r3 up", Duration::from_secs(30), || {
        (node_names(&tether) == ["r2", "r3"]
            && tether.metric("tether_node_up", &[("node", "r3")]) == 1.0)
            .then_some(())
    });
    let (ok, errors) = ping(&mut old);
    assert_eq!(ok, 6, "every open session still works: {errors}");
    assert_eq!(
        tether.metric("tether_upstream_sessions", &[("node", "r1")]),
        on_r1 as f64,
        "the sessions on the removed node stay there until they end"
    );

    let mut new = hold(port, 6);
    assert_eq!(ping(&mut new).0, 6);
    assert_eq!(
        tether.metric("tether_upstream_sessions", &[("node", "r1")]),
        on_r1 as f64,
        "no new session goes to the removed node"
    );
    let (r2, r3) = (sessions_on(&tether, "r2"), sessions_on(&tether, "r3"));
    assert_eq!(r2 + r3, 9, "3 old sessions on r2 and 6 new ones");
    assert!(
        r3 >= 4,
        "the new node takes the new sessions first: {r3} on r3"
    );

    let old = old.finish();
    let new = new.finish();
    for summary in [&old, &new] {
        assert_eq!(summary["opened"], 6);
        assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");
    }
    assert_eq!(tether.metric("tether_failovers_total", &[]), 0.0);
    let log = tether.log_text();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert_eq!(tether.terminate(), Some(0));
    Ok(())
}

/// A broken file is rejected (by SIGHUP and by `tether reload`, which says why and exits 1);
/// the running configuration keeps serving. A valid change is then applied and reported.
fn a_broken_file_is_rejected_and_the_old_config_keeps_serving(_: &Lab) -> Result<(), Failed> {
    let (admin, port) = (free_port(), free_port());
    let good = config(admin, "random", &["r1", "r2", "r3"], &[("amqp", port)]);
    let tether = Tether::start(&good, SocketAddr::from(([127, 0, 0, 1], admin)));
    let mut open = hold(port, 3);

    tether.rewrite_config(&good.replace("balance = \"random\"", "balanse = \"random\""));
    tether.signal("HUP");
    wait_for(
        "the SIGHUP reload to be refused",
        Duration::from_secs(30),
        || {
            tether
                .log_text()
                .contains("configuration not reloaded")
                .then_some(())
        },
    );
    let (reloaded, said) = tether.reload_cli();
    assert!(
        !reloaded,
        "tether reload must fail on a broken file: {said}"
    );
    assert!(
        said.contains("balanse") && said.contains("the running configuration stays"),
        "the message names the key at fault: {said}"
    );
    assert_eq!(tether.status()["clusters"][0]["balance"], "random");
    assert_eq!(node_names(&tether), ["r1", "r2", "r3"]);
    let (ok, errors) = ping(&mut open);
    assert_eq!(ok, 3, "{errors}");
    let fresh = hold(port, 2).finish();
    assert_eq!(fresh["opened"], 2, "new sessions are served: {fresh}");

    tether.rewrite_config(&good.replace("\"random\"", "\"round-robin\""));
    let (reloaded, said) = tether.reload_cli();
    assert!(reloaded, "{said}");
    assert!(said.contains("cluster lab: reconfigured"), "{said}");
    assert_eq!(tether.status()["clusters"][0]["balance"], "round-robin");
    let (ok, errors) = ping(&mut open);
    assert_eq!(ok, 3, "{errors}");
    let summary = open.finish();
    assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");
    assert_eq!(tether.terminate(), Some(0));
    Ok(())
}

/// A listener dropped from the file stops accepting, and its open sessions drain: they work
/// until their clients close them. A listener added binds at once.
fn a_removed_listener_drains_and_an_added_one_serves(_: &Lab) -> Result<(), Failed> {
    let (admin, kept, dropped, added) = (free_port(), free_port(), free_port(), free_port());
    let nodes = ["r1", "r2", "r3"];
    let tether = Tether::start(
        &config(
            admin,
            "random",
            &nodes,
            &[("kept", kept), ("dropped", dropped)],
        ),
        SocketAddr::from(([127, 0, 0, 1], admin)),
    );
    let mut on_kept = hold(kept, 2);
    let mut on_dropped = hold(dropped, 2);

    tether.rewrite_config(&config(
        admin,
        "random",
        &nodes,
        &[("kept", kept), ("added", added)],
    ));
    let (reloaded, said) = tether.reload_cli();
    assert!(reloaded, "{said}");
    assert!(
        said.contains("listener dropped: removed") && said.contains("listener added: added"),
        "{said}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", dropped)).is_err(),
        "the removed listener accepts no more connections"
    );
    let status = tether.status();
    let draining: Vec<_> = status["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["draining"] == true)
        .map(|l| (l["name"].clone(), l["sessions"].clone()))
        .collect();
    assert_eq!(
        draining,
        [(serde_json::json!("dropped"), serde_json::json!(2))],
        "/status shows the draining listener"
    );
    for sessions in [&mut on_kept, &mut on_dropped] {
        let (ok, errors) = ping(sessions);
        assert_eq!(ok, 2, "{errors}");
    }
    let fresh = hold(added, 2).finish();
    assert_eq!(fresh["opened"], 2, "the added listener serves: {fresh}");
    assert_eq!(fresh["errors"], serde_json::json!([]), "{fresh}");
    for sessions in [on_kept, on_dropped] {
        let summary = sessions.finish();
        assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");
    }
    assert_eq!(tether.terminate(), Some(0));
    Ok(())
}

fn main() {
    Suite::new(&["rabbit"])
        .with_lab(
            "sighup_adds_and_removes_nodes_without_dropping_a_session",
            sighup_adds_and_removes_nodes_without_dropping_a_session,
        )
        .with_lab(
            "a_broken_file_is_rejected_and_the_old_config_keeps_serving",
            a_broken_file_is_rejected_and_the_old_config_keeps_serving,
        )
        .with_lab(
            "a_removed_listener_drains_and_an_added_one_serves",
            a_removed_listener_drains_and_an_added_one_serves,
        )
        .run()
}
