//! STOMP sessions through tether survive their node: real clients with no reconnect logic
//! (stomp.py, Ruby's stomp gem) against the bundled RabbitMQ cluster and ActiveMQ network, under
//! kill -9, SIGSTOP, graceful stop, a crashed broker channel and a rolling restart. Every test counts what was sent,
//! received, duplicated and lost, and what errors the clients saw.

mod support;

use libtest_mimic::Failed;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::clients;
use support::faults::Fault;
use support::front::Front;
use support::lab::{Lab, ports};
use support::suite::Suite;

fn front(cluster: &'static str, nodes: &[&str], extra: &str) -> Front {
    Front::start("stomp", cluster, nodes, extra)
}

/// The traffic of tests 1 and 2: a stomp.py producer with receipts, a Ruby producer without,
/// and a stomp.py consumer acking each message individually, all through tether onto one
/// quorum queue. `fault` breaks nodes while it flows.
fn traffic_through_faults(
    queue: &str,
    front: &Front,
    fault: impl FnOnce(&Front),
) -> Result<(), Failed> {
    clients::declare_queue(queue);
    let destination = format!("/amq/queue/{queue}");
    let port = format!("--port={}", front.port);
    let dest = format!("--dest={destination}");
    let mut consumer = clients::spawn(
        "stomp_consumer.py",
        &[
            port.clone(),
            dest.clone(),
            "--ack=client-individual".into(),
            "--idle=30".into(),
        ],
    );
    assert_eq!(consumer.line(), "ready");
    let mut with_receipts = clients::spawn(
        "stomp_producer.py",
        &[
            port.clone(),
            dest.clone(),
            "--count=0".into(),
            "--rate=100".into(),
            "--receipts".into(),
            "--tag=receipted".into(),
        ],
    );
    assert_eq!(with_receipts.line(), "ready");
    let mut fire_and_forget = clients::spawn(
        "stomp_producer.rb",
        &[
            port,
            dest,
            "--count=0".into(),
            "--rate=100".into(),
            "--tag=unreceipted".into(),
        ],
    );
    assert_eq!(fire_and_forget.line(), "ready");
    // Let traffic flow before and after the faults.
    std::thread::sleep(Duration::from_secs(2));
    fault(front);
    std::thread::sleep(Duration::from_secs(3));

    let receipted = with_receipts.finish();
    let unreceipted = fire_and_forget.finish();
    let consumed = consumer.finish_expecting(&[
        ("receipted", receipted["sent"].as_u64().unwrap_or(0)),
        ("unreceipted", unreceipted["sent"].as_u64().unwrap_or(0)),
    ]);
    let failovers = front.failovers();
    eprintln!(
        "producer with receipts: {receipted}\nproducer without: {unreceipted}\nconsumer: {consumed}\nfailovers: {failovers}"
    );
    for summary in [&receipted, &unreceipted, &consumed] {
        assert_eq!(
            summary["errors"],
            Value::Array(vec![]),
            "a client saw an error: {summary}"
        );
    }
    for summary in [&receipted, &consumed] {
        assert_eq!(
            summary["disconnects"], 0,
            "a client was disconnected: {summary}"
        );
    }
    let sent_receipted = receipted["sent"].as_u64().unwrap_or(0);
    let sent_unreceipted = unreceipted["sent"].as_u64().unwrap_or(0);
    assert!(sent_receipted > 0 && sent_unreceipted > 0);
    assert_eq!(
        receipted["receipts"], sent_receipted,
        "every receipt came exactly once"
    );
    assert_eq!(
        consumed["per_tag"]["receipted"], sent_receipted,
        "every receipted message was received: {consumed}"
    );
    assert_eq!(
        consumed["per_tag"]["unreceipted"], sent_unreceipted,
        "every fire-and-forget message was received: {consumed}"
    );
    assert!(failovers >= 1.0, "the fault moved no session");
    eprintln!(
        "counted: sent {} received {} duplicates {} lost 0 client errors 0",
        sent_receipted + sent_unreceipted,
        consumed["received"],
        consumed["duplicates"]
    );
    clients::delete_queue(queue);
    Ok(())
}

/// Traffic through one fault of the table (see [`Fault`]).
fn through(lab: &Lab, fault: Fault) -> Result<(), Failed> {
    let front = front("lab", &ports::RABBIT, "");
    traffic_through_faults(&format!("stomp-{}", fault.name()), &front, |front| {
        fault.apply(lab, front)
    })
}

/// The same traffic with tether reaching the nodes over TLS (their STOMP TLS listeners).
fn through_tls(lab: &Lab, fault: Fault) -> Result<(), Failed> {
    let front = Front::start_over_tls("stomp", "lab", &ports::RABBIT, "");
    traffic_through_faults(&format!("stomp-tls-{}", fault.name()), &front, |front| {
        fault.apply(lab, front)
    })?;
    front.assert_over_tls();
    Ok(())
}

/// Transactions at failover: tether replays an open transaction (BEGIN and its SENDs) on the new
/// node, and a COMMIT the failed node had not confirmed is in doubt, so it is replayed too:
/// committed batches arrive at least once, none is lost, the client sees no error.
fn transactions_survive_kill_9(lab: &Lab) -> Result<(), Failed> {
    let front = front("lab", &ports::RABBIT, "");
    let queue = "stomp-tx";
    clients::declare_queue(queue);
    let port = format!("--port={}", front.port);
    let dest = format!("--dest=/amq/queue/{queue}");
    let mut consumer = clients::spawn(
        "stomp_consumer.py",
        &[
            port.clone(),
            dest.clone(),
            "--ack=client-individual".into(),
            "--idle=30".into(),
        ],
    );
    assert_eq!(consumer.line(), "ready");
    let mut producer = clients::spawn(
        "stomp_producer.py",
        &[
            port,
            dest,
            "--count=0".into(),
            "--rate=200".into(),
            "--tx-batch=10".into(),
            "--receipts".into(),
            "--tag=tx".into(),
        ],
    );
    assert_eq!(producer.line(), "ready");
    std::thread::sleep(Duration::from_secs(2));
    front.break_each_busy_node(lab, |lab, node| lab.kill(node));
    std::thread::sleep(Duration::from_secs(2));
    let produced = producer.finish();
    let consumed = consumer.finish();
    eprintln!("producer: {produced}\nconsumer: {consumed}");
    for summary in [&produced, &consumed] {
        assert_eq!(summary["errors"], Value::Array(vec![]), "{summary}");
        assert_eq!(summary["disconnects"], 0, "{summary}");
    }
    let committed = produced["committed"].as_u64().unwrap_or(0);
    assert!(committed > 0);
    let received = consumed["per_tag"]["tx"].as_u64().unwrap_or(0);
    // The last, partial batch is aborted by the producer: only committed ones arrive.
    assert_eq!(
        received, committed,
        "every committed message arrived, nothing else: {consumed}"
    );
    assert_eq!(consumed["gaps"]["tx"], Value::Array(vec![]), "{consumed}");
    clients::delete_queue(queue);
    Ok(())
}

/// Light traffic on live nodes (a producer with receipts at 0.8 messages a second, a
/// consumer): the nodes go quiet between messages, tether asks them whether they live (BEGIN
/// with a receipt, then ABORT), and they answer: no session is failed over, nothing is lost.
fn quiet_sessions_stay_put(front: &Front, dest: &str) -> Result<(), Failed> {
    let port = format!("--port={}", front.port);
    let dest = format!("--dest={dest}");
    let mut consumer = clients::spawn(
        "stomp_consumer.py",
        &[port.clone(), dest.clone(), "--idle=3".into()],
    );
    assert_eq!(consumer.line(), "ready");
    let mut producer = clients::spawn(
        "stomp_producer.py",
        &[
            port,
            dest,
            "--count=0".into(),
            "--rate=0.8".into(),
            "--receipts".into(),
        ],
    );
    assert_eq!(producer.line(), "ready");
    std::thread::sleep(Duration::from_secs(12));
    let sent = producer.finish();
    let received = consumer.finish();
    let failovers = front.failovers();
    let questions = front.tether.metric("tether_liveness_questions_total", &[]);
    eprintln!(
        "questions asked: {questions}, failovers: {failovers}\nproducer: {sent}\nconsumer: \
         {received}"
    );
    for summary in [&sent, &received] {
        assert_eq!(summary["errors"], Value::Array(vec![]), "{summary}");
    }
    assert_eq!(sent["receipts"], sent["sent"], "{sent}");
    assert_eq!(received["per_tag"]["p"], sent["sent"], "lost: {received}");
    assert_eq!(failovers, 0.0, "a session on a live node was failed over");
    Ok(())
}

fn rabbitmq_quiet_sessions_stay_put(_lab: &Lab) -> Result<(), Failed> {
    let queue = "stomp-quiet";
    clients::declare_queue(queue);
    quiet_sessions_stay_put(
        &front("lab", &ports::RABBIT, "pool = { max_idle = 0 }"),
        &format!("/amq/queue/{queue}"),
    )?;
    clients::delete_queue(queue);
    Ok(())
}

fn activemq_quiet_sessions_stay_put(_lab: &Lab) -> Result<(), Failed> {
    quiet_sessions_stay_put(
        &front("amq", &["b1", "b2"], "pool = { max_idle = 0 }"),
        "/queue/tether-quiet",
    )
}

/// Test 3: a fire-and-forget producer through tether onto one ActiveMQ broker, a consumer on
/// another broker of the network; kill -9 the producer's broker. What that broker had stored
/// reaches the consumer once it is back; nothing is lost.
fn activemq_producer_broker_killed(lab: &Lab) -> Result<(), Failed> {
    producer_broker_killed(lab, &front("amq", &["b1", "b2"], ""), "tether-amq-kill")
}

/// The same with tether reaching the brokers over TLS (their `stomp+ssl` connectors).
fn activemq_tls_producer_broker_killed(lab: &Lab) -> Result<(), Failed> {
    let front = Front::start_over_tls("stomp", "amq", &["b1", "b2"], "");
    producer_broker_killed(lab, &front, "tether-amq-tls-kill")?;
    front.assert_over_tls();
    Ok(())
}

fn producer_broker_killed(lab: &Lab, front: &Front, queue: &str) -> Result<(), Failed> {
    let destination = format!("--dest=/queue/{queue}");
    let mut consumer = clients::spawn(
        "stomp_consumer.py",
        &[
            format!("--port={}", ports::of("b3", "stomp")),
            destination.clone(),
            "--ack=client-individual".into(),
            "--idle=45".into(),
            // Straight to b3, not through tether: ActiveMQ heart-beats without slack, so give
            // stomp.py room rather than test ActiveMQ's timing.
            "--heartbeat=10000".into(),
        ],
    );
    assert_eq!(consumer.line(), "ready");
    // Network bridges forward only to brokers with consumers: give b3's consumer time to be
    // advertised before sending.
    std::thread::sleep(Duration::from_secs(3));
    let mut producer = clients::spawn(
        "stomp_producer.rb",
        &[
            format!("--port={}", front.port),
            destination,
            "--count=0".into(),
            "--rate=200".into(),
            "--persistent".into(),
            "--tag=amq".into(),
        ],
    );
    assert_eq!(producer.line(), "ready");
    std::thread::sleep(Duration::from_secs(2));
    let busy = front.busy_nodes();
    assert_eq!(busy.len(), 1, "one producer session: {busy:?}");
    let broker = busy[0].clone();
    {
        let _heal = lab.heal(&[&broker]);
        lab.kill(&broker);
        front.wait_moved_off(&broker);
        std::thread::sleep(Duration::from_secs(2));
    }
    let produced = producer.finish();
    let consumed = consumer.finish();
    eprintln!("producer: {produced}\nconsumer: {consumed}");
    assert_eq!(produced["errors"], Value::Array(vec![]), "{produced}");
    assert_eq!(consumed["errors"], Value::Array(vec![]), "{consumed}");
    let sent = produced["sent"].as_u64().unwrap_or(0);
    assert!(sent > 0);
    assert_eq!(
        consumed["per_tag"]["amq"], sent,
        "every message arrived: {consumed}"
    );
    assert!(front.failovers() >= 1.0);
    Ok(())
}

/// Test 4: malformed input gets an ERROR frame and a close; the other sessions keep flowing.
fn malformed_input_is_refused_without_harm() -> Result<(), Failed> {
    let front = front(
        "lab",
        &ports::RABBIT,
        "max_header_line = 1024\nmax_frame_size = 65536",
    );
    let queue = "stomp-malformed";
    clients::declare_queue(queue);
    let destination = format!("--dest=/amq/queue/{queue}");
    let port = format!("--port={}", front.port);
    let mut consumer = clients::spawn(
        "stomp_consumer.py",
        &[port.clone(), destination.clone(), "--idle=10".into()],
    );
    assert_eq!(consumer.line(), "ready");
    let mut producer = clients::spawn(
        "stomp_producer.py",
        &[
            port,
            destination,
            "--count=0".into(),
            "--rate=100".into(),
            "--receipts".into(),
            "--tag=good".into(),
        ],
    );
    assert_eq!(producer.line(), "ready");

    let connect = "CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0";
    let cases: [(&str, Vec<u8>, bool); 6] = [
        ("garbage", b"HELLO tether\n\n\0".to_vec(), false),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        (
            "an oversized header",
            [b"CONNECT\nx:".to_vec(), vec![b'a'; 4096]].concat(),
            false,
        ),
        (
            "a bad escape",
            b"SEND\ndestination:/queue/x\nbad:\\t\n\nbody\0".to_vec(),
            true,
        ),
        (
            "an oversized body",
            b"SEND\ndestination:/queue/x\ncontent-length:999999\n\n".to_vec(),
            true,
        ),
        ("a second CONNECT", connect.as_bytes().to_vec(), true),
    ];
    for (what, bytes, after_connect) in cases {
        let mut stream = TcpStream::connect(("127.0.0.1", front.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut seen = Vec::new();
        if after_connect {
            stream.write_all(connect.as_bytes())?;
            read_frame(&mut stream, &mut seen)?;
            assert!(seen.starts_with(b"CONNECTED"), "{what}: no CONNECTED");
            seen.clear();
        }
        stream.write_all(&bytes)?;
        // The ERROR comes at once; the read timeout only guards against a hang.
        stream.read_to_end(&mut seen)?;
        let text = String::from_utf8_lossy(&seen);
        assert!(
            text.starts_with("ERROR\n"),
            "{what}: expected an ERROR frame, got {text:?}"
        );
        assert!(
            text.contains("message:"),
            "{what}: the ERROR says why: {text:?}"
        );
    }
    // A client that sends half a frame and goes away harms no one either.
    let mut truncated = TcpStream::connect(("127.0.0.1", front.port))?;
    truncated.write_all(b"CONNECT\naccept-version:1.2\nhost")?;
    drop(truncated);

    std::thread::sleep(Duration::from_secs(1));
    let produced = producer.finish();
    let consumed = consumer.finish();
    assert_eq!(produced["errors"], Value::Array(vec![]), "{produced}");
    assert_eq!(consumed["errors"], Value::Array(vec![]), "{consumed}");
    let sent = produced["sent"].as_u64().unwrap_or(0);
    assert!(sent > 0);
    assert_eq!(
        consumed["per_tag"]["good"], sent,
        "the good session kept flowing: {consumed}"
    );
    let (status, _) = support::http_get(front.tether.admin, "/healthz")?;
    assert_eq!(status, 200);
    clients::delete_queue(queue);
    Ok(())
}

/// Every node down past `failover_timeout`: the client gets an ERROR frame that says so, then
/// the connection closes. A one-broker cluster whose broker hangs (SIGSTOP) is every node down.
fn every_node_down_ends_in_a_clear_error(lab: &Lab) -> Result<(), Failed> {
    let front = front("amq-one", &["b3"], "failover_timeout = \"3s\"");
    let mut stream = TcpStream::connect(("127.0.0.1", front.port))?;
    // Failure is found in ~3 s and given up on 3 s later; a minute only guards against a hang.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(b"CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\0")?;
    let mut seen = Vec::new();
    read_frame(&mut stream, &mut seen)?;
    assert!(
        seen.starts_with(b"CONNECTED"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    let _heal = lab.heal(&["b3"]);
    lab.pause("b3");
    seen.clear();
    stream.read_to_end(&mut seen)?;
    let text = String::from_utf8_lossy(&seen);
    let text = text.trim_start_matches('\n');
    assert!(text.starts_with("ERROR\n"), "{text:?}");
    assert!(text.contains("no broker node available"), "{text:?}");
    assert_eq!(front.failovers(), 1.0);
    Ok(())
}

/// Reads one frame (up to its NUL) into `seen`.
fn read_frame(stream: &mut TcpStream, seen: &mut Vec<u8>) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    while stream.read(&mut byte)? == 1 {
        if byte[0] == 0 {
            return Ok(());
        }
        seen.push(byte[0]);
    }
    Ok(())
}

/// A client-caused ERROR (unknown destination) reaches the client as the broker sent it, and
/// neither counts as a failover nor marks the node down.
fn client_errors_are_forwarded_not_failed_over() -> Result<(), Failed> {
    let front = front("lab", &ports::RABBIT, "");
    let mut stream = TcpStream::connect(("127.0.0.1", front.port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")?;
    let mut seen = Vec::new();
    read_frame(&mut stream, &mut seen)?;
    assert!(seen.starts_with(b"CONNECTED"));
    stream.write_all(b"SUBSCRIBE\nid:1\ndestination:/amq/queue/no-such-queue-here\n\n\0")?;
    seen.clear();
    stream.read_to_end(&mut seen)?;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("ERROR\n"), "{text:?}");
    assert!(
        text.contains("not_found") || text.contains("NOT_FOUND"),
        "{text:?}"
    );
    assert_eq!(front.failovers(), 0.0);
    let metrics = front.tether.metrics();
    let down: Vec<(String, f64)> = support::prom::series(&metrics, "tether_node_up")
        .filter(|(_, v)| *v != 1.0)
        .collect();
    assert!(down.is_empty(), "no node was marked down: {down:?}");

    // Bad credentials: the broker's refusal reaches the client, and it is not a failover.
    let mut stream = TcpStream::connect(("127.0.0.1", front.port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:wrong\n\n\0")?;
    let mut seen = Vec::new();
    stream.read_to_end(&mut seen)?;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("ERROR\n"), "{text:?}");
    assert_eq!(front.failovers(), 0.0);
    let nodes: BTreeSet<String> = support::prom::series(&front.tether.metrics(), "tether_node_up")
        .filter(|(_, v)| *v == 1.0)
        .map(|(labels, _)| labels)
        .collect();
    assert_eq!(nodes.len(), 3, "every node is still up: {nodes:?}");
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

/// A client that sends and never reads what comes back (here: BEGINs asking for receipts with
/// long ids) is no longer read once its answers pile up: tether's memory stays flat, and other
/// sessions carry on (#15: it grew by 184 MB for 192 MB sent).
fn a_client_that_never_reads_is_held_back() -> Result<(), Failed> {
    let front = front("lab", &ports::RABBIT, "");
    let pid = front.tether.pid();
    let mut client = TcpStream::connect(("127.0.0.1", front.port))?;
    client.write_all(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")?;
    let mut seen = Vec::new();
    read_frame(&mut client, &mut seen)?;
    assert!(
        seen.starts_with(b"CONNECTED"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    let before = rss_kib(pid);
    // Up to 150 MB of BEGINs of one transaction (each replaces the last, so no cap on open
    // transactions is reached), each answered by a RECEIPT of about 900 bytes; writing stops
    // when tether stops reading (a write that waits 10 s).
    client.set_write_timeout(Some(Duration::from_secs(10)))?;
    let pad = "r".repeat(900);
    let mut sent = 0usize;
    for n in 0..150_000 {
        let frame = format!("BEGIN\ntransaction:t\nreceipt:{pad}{n}\n\n\0");
        if client.write_all(frame.as_bytes()).is_err() {
            break;
        }
        sent += frame.len();
    }
    let grown_mb = rss_kib(pid).saturating_sub(before) as f64 / 1024.0;
    println!(
        "sent {:.1} MB without reading; tether's RSS grew {grown_mb:.1} MB",
        sent as f64 / 1e6
    );
    assert!(
        sent < 100_000_000,
        "tether read on: {sent} bytes taken from a client that reads nothing"
    );
    assert!(grown_mb < 32.0, "tether's RSS grew {grown_mb:.1} MB");
    // Held back, not refused: what waits for the client is its RECEIPTs.
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut seen = Vec::new();
    read_frame(&mut client, &mut seen)?;
    assert!(
        seen.starts_with(b"RECEIPT"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    // Another client of the same tether is served meanwhile.
    let mut other = TcpStream::connect(("127.0.0.1", front.port))?;
    other.set_read_timeout(Some(Duration::from_secs(30)))?;
    other.write_all(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")?;
    let mut seen = Vec::new();
    read_frame(&mut other, &mut seen)?;
    assert!(
        seen.starts_with(b"CONNECTED"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    Ok(())
}

/// ACKs in a transaction wait in tether for the COMMIT; a client that sends them without end
/// is refused once they reach `max_unconfirmed` (#15: 1,000,000 were kept, and tether's RSS
/// grew by 357 MB).
fn a_transaction_of_endless_acks_is_refused() -> Result<(), Failed> {
    let front = front("lab", &ports::RABBIT, "");
    let pid = front.tether.pid();
    let mut client = TcpStream::connect(("127.0.0.1", front.port))?;
    client.write_all(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")?;
    let mut seen = Vec::new();
    read_frame(&mut client, &mut seen)?;
    assert!(
        seen.starts_with(b"CONNECTED"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    let before = rss_kib(pid);
    client.write_all(b"BEGIN\ntransaction:t\n\n\0")?;
    // Writing stops when tether closes the connection (or stops reading: a write that waits
    // 10 s).
    client.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut acks = 0usize;
    for batch in 0..1_000 {
        let frames: String = (0..1_000)
            .map(|n| format!("ACK\nid:m-{batch}-{n}\ntransaction:t\n\n\0"))
            .collect();
        if client.write_all(frames.as_bytes()).is_err() {
            break;
        }
        acks += 1_000;
    }
    let grown_mb = rss_kib(pid).saturating_sub(before) as f64 / 1024.0;
    println!("wrote {acks} ACKs in one transaction; tether's RSS grew {grown_mb:.1} MB");
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut seen = Vec::new();
    read_frame(&mut client, &mut seen)?;
    let error = String::from_utf8_lossy(&seen);
    assert!(
        error.starts_with("ERROR") && error.contains("max_unconfirmed"),
        "{error}"
    );
    assert!(grown_mb < 32.0, "tether's RSS grew {grown_mb:.1} MB");
    // Another client of the same tether is served.
    let mut other = TcpStream::connect(("127.0.0.1", front.port))?;
    other.set_read_timeout(Some(Duration::from_secs(30)))?;
    other.write_all(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")?;
    let mut seen = Vec::new();
    read_frame(&mut other, &mut seen)?;
    assert!(
        seen.starts_with(b"CONNECTED"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    Ok(())
}

fn main() {
    Suite::new(&["rabbit", "activemq"])
        .faults("rabbitmq", through)
        .faults_over_tls("rabbitmq", &Fault::OVER_TLS, through_tls)
        .plain(
            "malformed_input_is_refused_without_harm",
            malformed_input_is_refused_without_harm,
        )
        .plain(
            "client_errors_are_forwarded_not_failed_over",
            client_errors_are_forwarded_not_failed_over,
        )
        .with_lab("rabbitmq_transactions_kill_9", transactions_survive_kill_9)
        .plain(
            "a_client_that_never_reads_is_held_back",
            a_client_that_never_reads_is_held_back,
        )
        .plain(
            "a_transaction_of_endless_acks_is_refused",
            a_transaction_of_endless_acks_is_refused,
        )
        .with_lab(
            "every_node_down_ends_in_a_clear_error",
            every_node_down_ends_in_a_clear_error,
        )
        .with_lab(
            "activemq_producer_broker_killed",
            activemq_producer_broker_killed,
        )
        .with_lab(
            "rabbitmq_quiet_sessions_stay_put",
            rabbitmq_quiet_sessions_stay_put,
        )
        .with_lab(
            "activemq_quiet_sessions_stay_put",
            activemq_quiet_sessions_stay_put,
        )
        .with_lab(
            "activemq_tls_producer_broker_killed",
            activemq_tls_producer_broker_killed,
        )
        .run()
}
