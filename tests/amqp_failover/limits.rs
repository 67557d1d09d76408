//! Limits under load and what must never leak (#15): a cluster down for a minute under eight
//! publishers, and passwords kept out of logs, `/status` and `/metrics`.

use super::support::config::{TetherConfig, lab_nodes};
use super::support::{clients, lab::Lab, lab::ports};
use super::{front, no_errors};
use libtest_mimic::Failed;
use serde_json::Value;
use std::time::Duration;

/// The whole cluster down for a minute under eight publishers (no confirms, 1 KiB, 500/s each,
/// so that the broker's own memory is not what stops them): tether holds them (at `max_unconfirmed` each it stops reading them), its memory
/// stays within what those caps allow, and when the nodes return everything sent arrives
/// (#15).
pub fn every_node_down_for_a_minute_holds_publishers_in_bounded_memory(
    lab: &Lab,
) -> Result<(), Failed> {
    const PUBLISHERS: usize = 8;
    const HELD: usize = 2_000; // max_unconfirmed below
    let front = front("failover_timeout = \"300s\"\nmax_unconfirmed = 2000");
    clients::declare_queue("amqp-overload");
    let port = format!("--port={}", front.port);
    let mut consumer = clients::spawn(
        "pika_consumer.py",
        &[
            port.clone(),
            "--queue=amqp-overload".into(),
            "--limit=600".into(),
        ],
    );
    assert_eq!(consumer.line(), "ready");
    let mut publishers: Vec<_> = (0..PUBLISHERS)
        .map(|n| {
            let mut publisher = clients::spawn(
                "pika_publisher.py",
                &[
                    port.clone(),
                    "--queue=amqp-overload".into(),
                    // 500/s each until the outage: flat out would fill the lab brokers'
                    // memory (their 1 GB watermark) before it. During it, each publisher
                    // would hold 30,000 in a minute: far past what tether may keep.
                    "--rate=500".into(),
                    "--size=1024".into(),
                    format!("--tag=p{n}"),
                ],
            );
            assert_eq!(publisher.line(), "ready");
            publisher
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let pid = front.tether.pid();
    let before = rss_kib(pid);
    let mut highest = before;
    {
        let _heal = lab.heal(&ports::RABBIT);
        for node in ports::RABBIT {
            lab.stop(node);
        }
        let down = std::time::Instant::now();
        while down.elapsed() < Duration::from_secs(60) {
            highest = highest.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    std::thread::sleep(Duration::from_secs(5));
    let published: Vec<Value> = publishers.drain(..).map(|p| p.finish()).collect();
    let received = consumer.finish();
    let sent: u64 = published
        .iter()
        .map(|p| p["sent"].as_u64().unwrap_or(0))
        .sum();
    let grown_mb = highest.saturating_sub(before) as f64 / 1024.0;
    // What the caps allow: each publisher's HELD publishes of about 1 KiB, twice over for
    // what the allocator keeps; a tether that read on would hold a minute of
    // publishing.
    let bound_mb = (PUBLISHERS * HELD * 2) as f64 / 1024.0;
    eprintln!(
        "sent {sent}, received {received}; tether's RSS grew {grown_mb:.1} MB at most while \
         every node was down (bound {bound_mb:.0} MB)"
    );
    for publisher in &published {
        no_errors(publisher);
    }
    no_errors(&received);
    assert!(
        sent > (PUBLISHERS * HELD) as u64,
        "the publishers were held too early: {sent}"
    );
    assert_eq!(received["received"].as_u64(), Some(sent), "{received}");
    assert!(grown_mb < bound_mb, "tether's RSS grew {grown_mb:.1} MB");
    clients::delete_queue("amqp-overload");
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// No password or passcode reaches tether's logs (at trace level), `/status` or `/metrics`:
/// through client logins (AMQP and STOMP), pooled node connections, a failover, discovery
/// with the management API's credentials, and a reload (#15).
pub fn secrets_stay_out_of_logs_status_and_metrics(lab: &Lab) -> Result<(), Failed> {
    const USER: &str = "tether-secrets";
    const SECRET: &str = "Pw-7c1e5f0d9b42";
    lab.user(USER, SECRET);
    clients::declare_queue("amqp-secrets");
    let management = format!("http://{}", ports::address("r1", "management"));
    let cluster = format!(
        "health = {{ interval = \"500ms\", timeout = \"1s\", rise = 2, fall = 2 }}\n{}\n\
         discovery.rabbitmq = {{ url = \"{management}\", username = \"{USER}\", \
         password = \"{SECRET}\", interval = \"1s\" }}",
        lab_nodes(&["r1"], &["amqp", "stomp"])
    );
    let mut config = TetherConfig::new().cluster("lab", &cluster);
    let amqp = config.listener("amqp", "amqp", "lab", "failover_timeout = \"90s\"");
    let stomp = config.listener("stomp", "stomp", "lab", "");
    let tether = config.start_logged("trace");
    // Discovery finds the other two nodes (its first poll answers within a second).
    super::support::wait_for(
        "discovery to find three nodes",
        Duration::from_secs(30),
        || {
            let (_, status) = super::support::http_get(tether.admin, "/status").ok()?;
            status.contains("r3@localhost").then_some(())
        },
    );
    let publisher = clients::spawn(
        "pika_per_request.py",
        &[
            format!("--port={amqp}"),
            "--queue=amqp-secrets".into(),
            format!("--user={USER}"),
            format!("--password={SECRET}"),
            "--rate=20".into(),
        ],
    );
    // A STOMP login with the secret as its passcode (refused: the login is `guest`).
    let refused = clients::spawn(
        "stomp_per_request.py",
        &[
            format!("--port={stomp}"),
            format!("--passcode={SECRET}"),
            "--expect-refused".into(),
            "--count=3".into(),
        ],
    )
    .finish();
    std::thread::sleep(Duration::from_secs(2));
    {
        // A failover of whatever runs on r1 (pooled node connections among it).
        let _heal = lab.heal(&["r1"]);
        lab.kill("r1");
        std::thread::sleep(Duration::from_secs(2));
    }
    let (reloaded, said) = tether.reload_cli();
    assert!(reloaded, "{said}");
    let published = publisher.finish();
    eprintln!("published: {published}\nrefused: {refused}");
    no_errors(&published);
    assert!(
        published["confirmed"].as_u64().unwrap_or(0) > 20,
        "{published}"
    );
    let (_, status) = super::support::http_get(tether.admin, "/status")?;
    let (_, metrics) = super::support::http_get(tether.admin, "/metrics")?;
    let log = tether.log_text();
    assert!(log.len() > 100_000, "a trace log: {} bytes", log.len());
    for (name, text) in [
        ("the log", &log),
        ("/status", &status),
        ("/metrics", &metrics),
    ] {
        if let Some(at) = text.find(SECRET) {
            let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
            let line_end = text[at..].find('\n').map_or(text.len(), |n| at + n);
            panic!("{name} holds the password: {}", &text[line_start..line_end]);
        }
    }
    clients::delete_queue("amqp-secrets");
    Ok(())
}
