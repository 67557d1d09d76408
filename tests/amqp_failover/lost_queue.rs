//! A queue the cluster loses under a session that declared it: tether declares it again and
//! the consumer carries on, as RabbitMQ loses a transient queue when its node dies or is
//! taken for dead (a node paused past `net_ticktime`: Celery's pidbox queue in the client
//! matrix). The trial deletes the queue from outside, which is how the node tells the session
//! either way: it cancels the consumer.

use super::support::clients;
use super::support::front::Front;
use super::support::lab::{Lab, ports};
use super::support::wait_for;
use libtest_mimic::Failed;
use serde_json::Value;
use std::time::Duration;

const QUEUE: &str = "amqp-lost-queue";

fn inspect() -> Value {
    clients::run(
        "declare_queue.py",
        &[
            format!("--port={}", ports::of("r1", "amqp")),
            format!("--queue={QUEUE}"),
            "--inspect".into(),
        ],
    )
}

pub fn a_queue_the_cluster_loses_is_declared_again(_lab: &Lab) -> Result<(), Failed> {
    let front = Front::start("amqp", "lab", &ports::RABBIT, "");
    let port = format!("--port={}", front.port);
    let queue = format!("--queue={QUEUE}");
    let mut consumer = clients::spawn(
        "pika_consumer.py",
        &[port.clone(), queue.clone(), "--own-queue".into()],
    );
    assert_eq!(consumer.line(), "ready");
    let lost = || {
        front
            .tether
            .metric("tether_failovers_total", &[("reason", "queue_lost")])
    };
    let mut sent = 0;
    for round in 0..2 {
        // Empty and consumed: what the deletion loses is the queue, not messages.
        clients::delete_queue(QUEUE);
        // The node cancels the consumer at once and tether sets the session up again within a
        // second; a minute covers a loaded machine.
        wait_for(
            "tether to declare the queue again",
            Duration::from_secs(60),
            || {
                let queue = inspect();
                (lost() > f64::from(round) && queue["consumers"] == 1).then_some(())
            },
        );
        let published = clients::run(
            "pika_publisher.py",
            &[
                port.clone(),
                queue.clone(),
                "--confirms".into(),
                "--count=200".into(),
                "--rate=400".into(),
                format!("--tag=round{round}"),
            ],
        );
        assert_eq!(published["errors"], Value::Array(vec![]), "{published}");
        assert_eq!(published["confirmed"], 200, "{published}");
        sent += 200;
    }
    let consumed = consumer.finish_expecting(&[("round0", 200), ("round1", 200)]);
    eprintln!("consumer: {consumed}");
    assert_eq!(consumed["errors"], Value::Array(vec![]), "{consumed}");
    assert_eq!(consumed["received"], sent, "{consumed}");
    assert_eq!(consumed["unflagged_duplicates"], 0, "{consumed}");
    assert_eq!(lost(), 2.0, "one set-up per loss");
    assert_eq!(
        front.failovers(),
        2.0,
        "no other failover: the node was left, not failed"
    );
    Ok(())
}
