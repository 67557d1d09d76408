//! AMQP 0-9-1 sessions through tether survive their node: pika and lapin, with no reconnect
//! logic, against the bundled RabbitMQ cluster (quorum queues) under kill -9, SIGSTOP, graceful
//! stop (320 CONNECTION_FORCED), a crashed broker channel (541 INTERNAL_ERROR) and a rolling
//! restart. Every test counts what was published,
//! confirmed, received, duplicated and lost, and the errors the clients saw.

#[path = "amqp_failover/limits.rs"]
mod limits;
#[path = "amqp_failover/lost_queue.rs"]
mod lost_queue;
mod support;

use amq_protocol::protocol::{AMQPClass, basic, connection};
use futures_util::StreamExt;
use libtest_mimic::Failed;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::clients;
use support::faults::Fault;
use support::front::Front;
use support::lab::{Lab, ports};
use support::suite::Suite;
use tether::proto::amqp::{FRAME_END, Frame, FrameCodec, PROTOCOL_HEADER, method};
use tokio_util::codec::{Decoder, Encoder};

fn front(extra: &str) -> Front {
    Front::start("amqp", "lab", &ports::RABBIT, extra)
}

fn no_errors(summary: &Value) {
    assert_eq!(
        summary["errors"],
        Value::Array(vec![]),
        "a client saw an error: {summary}"
    );
}

/// Tests 1 and 2: a publisher with confirms, one without, a consumer with manual acks and
/// prefetch 50 on a quorum queue, and pub/sub through a server-named exclusive queue bound to a
/// fanout exchange, all through tether while `fault` breaks nodes.
fn traffic_through_faults(
    queue: &str,
    front: &Front,
    fault: impl FnOnce(&Front),
) -> Result<(), Failed> {
    clients::declare_queue(queue);
    let port = format!("--port={}", front.port);
    let q = format!("--queue={queue}");
    let fanout = format!("--fanout={queue}-fanout");
    // The publishers run flat out and the consumer may trail them by minutes on a busy
    // machine, and a fault's nodes may take minutes to come back: the consumers stop once
    // their queue has been quiet for 20 s, and only a hung run meets this limit (at the default
    // 300 s, one run ended with 2,366 confirmed messages still queued, another with the
    // subscriber stopped while the broadcaster, 392 s in, still sent).
    let mut consumer = clients::spawn(
        "pika_consumer.py",
        &[
            port.clone(),
            q.clone(),
            "--prefetch=50".into(),
            "--limit=900".into(),
        ],
    );
    assert_eq!(consumer.line(), "ready");
    let mut subscriber = clients::spawn(
        "pika_consumer.py",
        &[port.clone(), fanout.clone(), "--limit=900".into()],
    );
    assert_eq!(subscriber.line(), "ready");
    let mut confirmed = clients::spawn(
        "pika_publisher.py",
        &[
            port.clone(),
            q.clone(),
            "--confirms".into(),
            "--tag=confirmed".into(),
        ],
    );
    assert_eq!(confirmed.line(), "ready");
    let mut fire_and_forget = clients::spawn(
        "pika_publisher.py",
        &[port.clone(), q, "--tag=unconfirmed".into()],
    );
    assert_eq!(fire_and_forget.line(), "ready");
    let mut broadcaster = clients::spawn(
        "pika_publisher.py",
        &[
            port,
            "--queue=".into(),
            format!("--exchange={queue}-fanout"),
            "--confirms".into(),
            "--rate=50".into(),
            "--tag=broadcast".into(),
        ],
    );
    assert_eq!(broadcaster.line(), "ready");
    std::thread::sleep(Duration::from_secs(2));
    fault(front);
    // Traffic after the faults shows the sessions work on their new nodes.
    std::thread::sleep(Duration::from_secs(4));

    let confirmed = confirmed.finish();
    let unconfirmed = fire_and_forget.finish();
    let broadcast = broadcaster.finish();
    let sent = |summary: &Value| summary["sent"].as_u64().unwrap_or(0);
    let consumed = consumer.finish_expecting(&[
        ("confirmed", sent(&confirmed)),
        ("unconfirmed", sent(&unconfirmed)),
    ]);
    let subscribed = subscriber.finish_expecting(&[("broadcast", sent(&broadcast))]);
    let failovers = front.failovers();
    eprintln!(
        "publisher with confirms: {confirmed}\npublisher without: {unconfirmed}\nconsumer: {consumed}\n\
         fanout publisher: {broadcast}\nsubscriber: {subscribed}\nfailovers: {failovers}"
    );
    for summary in [&confirmed, &unconfirmed, &broadcast, &consumed, &subscribed] {
        no_errors(summary);
    }
    let sent_confirmed = confirmed["sent"].as_u64().unwrap_or(0);
    let sent_unconfirmed = unconfirmed["sent"].as_u64().unwrap_or(0);
    assert!(sent_confirmed > 0 && sent_unconfirmed > 0);
    assert_eq!(confirmed["confirmed"], sent_confirmed);
    assert_eq!(
        consumed["per_tag"]["confirmed"], sent_confirmed,
        "confirmed publishes lost: {consumed}"
    );
    assert_eq!(
        consumed["per_tag"]["unconfirmed"], sent_unconfirmed,
        "fire-and-forget publishes lost: {consumed}"
    );
    assert_eq!(
        consumed["tag_regressions"], 0,
        "delivery tags went backwards: {consumed}"
    );
    assert_eq!(subscribed["tag_regressions"], 0, "{subscribed}");
    // The subscriber's exclusive queue dies with its node; what the fanout routed to it
    // meanwhile is gone, inherently. What was published after its session moved arrives.
    let broadcast_sent = broadcast["sent"].as_u64().unwrap_or(0);
    assert_eq!(
        subscribed["highest"]["broadcast"],
        broadcast_sent - 1,
        "the subscriber receives again after the failover: {subscribed}"
    );
    assert!(failovers >= 1.0, "the fault moved no session");
    eprintln!(
        "counted: published {} confirmed {} received {} duplicates {} lost 0 client errors 0; \
         pub/sub missed {} of {} while its queue was gone",
        sent_confirmed + sent_unconfirmed,
        sent_confirmed,
        consumed["received"],
        consumed["duplicates"],
        subscribed["missing"]["broadcast"],
        broadcast_sent
    );
    clients::delete_queue(queue);
    Ok(())
}

/// Traffic through one fault of the table (see [`Fault`]).
fn through(lab: &Lab, fault: Fault) -> Result<(), Failed> {
    traffic_through_faults(&format!("amqp-{}", fault.name()), &front(""), |front| {
        fault.apply(lab, front)
    })
}

/// The same traffic with tether reaching the nodes over TLS (their AMQPS listeners).
fn through_tls(lab: &Lab, fault: Fault) -> Result<(), Failed> {
    let front = Front::start_over_tls("amqp", "lab", &ports::RABBIT, "");
    traffic_through_faults(&format!("amqp-tls-{}", fault.name()), &front, |front| {
        fault.apply(lab, front)
    })?;
    front.assert_over_tls();
    Ok(())
}

/// Test 3: RPC through a server-named reply queue keeps working after its node fails.
fn rpc_survives_failover(lab: &Lab) -> Result<(), Failed> {
    let front = front("");
    clients::declare_queue("amqp-rpc");
    let port = format!("--port={}", front.port);
    let mut server = clients::spawn(
        "pika_rpc.py",
        &[
            port.clone(),
            "--queue=amqp-rpc".into(),
            "--role=server".into(),
        ],
    );
    assert_eq!(server.line(), "ready");
    let mut client = clients::spawn(
        "pika_rpc.py",
        &[port, "--queue=amqp-rpc".into(), "--role=client".into()],
    );
    assert_eq!(client.line(), "ready");
    std::thread::sleep(Duration::from_secs(2));
    front.break_each_busy_node(lab, |lab, node| lab.kill(node));
    std::thread::sleep(Duration::from_secs(3));
    let called = client.finish();
    let served = server.finish();
    eprintln!("rpc client: {called}\nrpc server: {served}");
    no_errors(&called);
    no_errors(&served);
    assert!(called["replies"].as_u64().unwrap_or(0) > 20, "{called}");
    assert!(
        called["last_ok"].as_u64().unwrap_or(0) >= 20,
        "requests are answered again after the failover: {called}"
    );
    clients::delete_queue("amqp-rpc");
    Ok(())
}

/// Transactions at failover: an open transaction is replayed on the new node, an in-doubt
/// commit is committed there again: committed messages arrive at least once, none is lost.
fn transactions_survive_kill_9(lab: &Lab) -> Result<(), Failed> {
    let front = front("");
    clients::declare_queue("amqp-tx");
    let port = format!("--port={}", front.port);
    let mut consumer = clients::spawn(
        "pika_consumer.py",
        &[port.clone(), "--queue=amqp-tx".into()],
    );
    assert_eq!(consumer.line(), "ready");
    let mut producer = clients::spawn(
        "pika_publisher.py",
        &[
            port,
            "--queue=amqp-tx".into(),
            "--tx-batch=10".into(),
            "--rate=200".into(),
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
    no_errors(&produced);
    no_errors(&consumed);
    let committed = produced["committed"].as_u64().unwrap_or(0);
    assert!(committed > 0);
    assert_eq!(consumed["per_tag"]["tx"], committed, "{consumed}");
    assert_eq!(consumed["missing"]["tx"], 0, "{consumed}");
    clients::delete_queue("amqp-tx");
    Ok(())
}

/// lapin, a client no one here wrote in another language: a publisher with confirms and a
/// consumer with manual acks through kill -9 of their nodes.
fn lapin_survives_kill_9(lab: &Lab) -> Result<(), Failed> {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let front = front("");
    clients::declare_queue("amqp-lapin");
    let uri = format!("amqp://guest:guest@127.0.0.1:{}/%2f", front.port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (published, consumed) = runtime.block_on(async {
        let publisher = {
            let (uri, stop) = (uri.clone(), stop.clone());
            tokio::spawn(async move {
                let connection = Connection::connect(&uri, ConnectionProperties::default()).await?;
                let channel = connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let confirm = channel
                        .basic_publish(
                            "".into(),
                            "amqp-lapin".into(),
                            BasicPublishOptions::default(),
                            format!("lapin-{sent}").as_bytes(),
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await?
                        .await?;
                    if !confirm.is_ack() {
                        return Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                            lapin::ChannelState::Error,
                            "nack",
                        )));
                    }
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                connection.close(200, "done".into()).await?;
                Ok::<u64, lapin::Error>(sent)
            })
        };
        let consumer = {
            let (uri, stop) = (uri.clone(), stop.clone());
            tokio::spawn(async move {
                let connection = Connection::connect(&uri, ConnectionProperties::default()).await?;
                let channel = connection.create_channel().await?;
                channel.basic_qos(50, BasicQosOptions::default()).await?;
                let mut deliveries = channel
                    .basic_consume(
                        "amqp-lapin".into(),
                        "lapin-consumer".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                let mut seen = BTreeSet::new();
                let mut last_tag = 0;
                let mut regressions = 0;
                loop {
                    let next =
                        tokio::time::timeout(Duration::from_secs(15), deliveries.next()).await;
                    let delivery = match next {
                        Ok(Some(delivery)) => delivery?,
                        Ok(None) => break,
                        Err(_) if stop.load(Ordering::Relaxed) => break,
                        Err(_) => continue,
                    };
                    if delivery.delivery_tag <= last_tag {
                        regressions += 1;
                    }
                    last_tag = delivery.delivery_tag;
                    seen.insert(String::from_utf8_lossy(&delivery.data).to_string());
                    delivery.ack(BasicAckOptions::default()).await?;
                }
                connection.close(200, "done".into()).await?;
                Ok::<(BTreeSet<String>, u32), lapin::Error>((seen, regressions))
            })
        };
        (publisher, consumer)
    });
    std::thread::sleep(Duration::from_secs(2));
    front.break_each_busy_node(lab, |lab, node| lab.kill(node));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let sent = runtime
        .block_on(published)?
        .map_err(|e| format!("the lapin publisher saw an error: {e}"))?;
    let (seen, regressions) = runtime
        .block_on(consumed)?
        .map_err(|e| format!("the lapin consumer saw an error: {e}"))?;
    let missing: Vec<u64> = (0..sent)
        .filter(|n| !seen.contains(&format!("lapin-{n}")))
        .collect();
    eprintln!(
        "lapin: published and confirmed {sent}, received {} distinct, missing {missing:?}",
        seen.len()
    );
    assert!(sent > 0);
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert_eq!(regressions, 0, "delivery tags went backwards");
    clients::delete_queue("amqp-lapin");
    Ok(())
}

/// Errors the client caused are passed on exactly, and are not failovers.
fn client_errors_are_passed_on() -> Result<(), Failed> {
    let front = front("");
    let port = format!("--port={}", front.port);
    let not_found = clients::run("pika_errors.py", &[port.clone(), "--step=not-found".into()]);
    assert_eq!(not_found["outcome"], "channel closed", "{not_found}");
    assert_eq!(not_found["code"], 404, "{not_found}");
    assert_eq!(
        not_found["connection_ok"], true,
        "only the channel closes: {not_found}"
    );
    let bad_login = clients::run("pika_errors.py", &[port, "--step=bad-login".into()]);
    assert!(
        bad_login["outcome"] == "ProbableAccessDeniedError"
            || bad_login["outcome"] == "ProbableAuthenticationError"
            || bad_login["code"] == 403,
        "the broker's refusal reaches the client: {bad_login}"
    );
    assert_eq!(front.failovers(), 0.0);
    let up: Vec<(String, f64)> =
        support::prom::series(&front.tether.metrics(), "tether_node_up").collect();
    assert!(
        up.iter().all(|(_, v)| *v == 1.0),
        "no node was marked down: {up:?}"
    );
    Ok(())
}

/// Every node down past `failover_timeout`: connection.close 320 with a readable reason.
fn every_node_down_closes_with_320(lab: &Lab) -> Result<(), Failed> {
    let front = Front::start("amqp", "one", &["r3"], "failover_timeout = \"3s\"");
    let mut idle = clients::spawn(
        "pika_errors.py",
        &[format!("--port={}", front.port), "--step=idle".into()],
    );
    assert_eq!(idle.line(), "ready");
    let heal = lab.heal(&["r3"]);
    lab.pause("r3");
    let seen = idle.finish();
    drop(heal);
    eprintln!("idle client: {seen}");
    assert_eq!(seen["outcome"], "connection closed", "{seen}");
    assert_eq!(seen["code"], 320, "{seen}");
    let text = seen["text"].as_str().unwrap_or_default();
    assert!(text.contains("no broker node available"), "{text}");
    Ok(())
}

/// A hand-driven client, to send what no client library would.
struct RawClient {
    stream: TcpStream,
    codec: FrameCodec,
    buffer: bytes::BytesMut,
}

impl RawClient {
    /// Connects and completes the handshake as guest.
    fn open(port: u16) -> std::io::Result<RawClient> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.write_all(&PROTOCOL_HEADER)?;
        let mut client = RawClient {
            stream,
            codec: FrameCodec::new(131_072),
            buffer: bytes::BytesMut::new(),
        };
        client.expect((10, 10))?;
        let mut response = vec![0u8];
        response.extend_from_slice(b"guest\0guest");
        client.send_method(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: Default::default(),
                mechanism: "PLAIN".into(),
                response: String::from_utf8_lossy(&response).to_string().into(),
                locale: "en_US".into(),
            })),
        )?;
        client.expect((10, 30))?;
        client.send_method(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 100,
                frame_max: 131_072,
                heartbeat: 0,
            })),
        )?;
        client.send_method(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )?;
        client.expect((10, 41))?;
        Ok(client)
    }

    fn send_method(&mut self, channel: u16, method_: &AMQPClass) -> std::io::Result<()> {
        let mut out = bytes::BytesMut::new();
        self.codec
            .encode(&Frame::method(channel, method::encode(method_)), &mut out)
            .map_err(std::io::Error::other)?;
        self.stream.write_all(&out)
    }

    fn next_frame(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self
                .codec
                .decode(&mut self.buffer)
                .map_err(std::io::Error::other)?
            {
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(None);
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    fn expect(&mut self, id: (u16, u16)) -> std::io::Result<Frame> {
        loop {
            match self.next_frame()? {
                Some(frame) if frame.class_method() == Some(id) => return Ok(frame),
                Some(frame) if frame.kind == tether::proto::amqp::FrameType::Heartbeat => continue,
                other => {
                    return Err(std::io::Error::other(format!(
                        "expected {id:?}, got {other:?}"
                    )));
                }
            }
        }
    }

    /// The connection.close tether answered with: its reply code and text.
    fn closed_with(&mut self) -> std::io::Result<(u16, String)> {
        let frame = self.expect((10, 50))?;
        match method::decode(&frame.payload) {
            Ok(AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
                Ok((close.reply_code, close.reply_text.to_string()))
            }
            other => Err(std::io::Error::other(format!("{other:?}"))),
        }
    }
}

/// Test 4: malformed frames get the spec's connection errors; other sessions flow on.
fn malformed_frames_get_the_specs_errors() -> Result<(), Failed> {
    let front = front("frame_max = 8192");
    clients::declare_queue("amqp-malformed");
    let port = format!("--port={}", front.port);
    let mut consumer = clients::spawn(
        "pika_consumer.py",
        &[
            port.clone(),
            "--queue=amqp-malformed".into(),
            "--idle=10".into(),
        ],
    );
    assert_eq!(consumer.line(), "ready");
    let mut producer = clients::spawn(
        "pika_publisher.py",
        &[
            port,
            "--queue=amqp-malformed".into(),
            "--confirms".into(),
            "--tag=good".into(),
        ],
    );
    assert_eq!(producer.line(), "ready");

    // Not AMQP 0-9-1: the spec's answer is the header tether speaks, then close.
    let mut http = TcpStream::connect(("127.0.0.1", front.port))?;
    http.set_read_timeout(Some(Duration::from_secs(30)))?;
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut answer = Vec::new();
    http.read_to_end(&mut answer)?;
    assert_eq!(
        answer,
        PROTOCOL_HEADER,
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // A wrong frame-end octet.
    let mut client = RawClient::open(front.port)?;
    let mut frame = bytes::BytesMut::new();
    FrameCodec::new(131_072).encode(&Frame::heartbeat(), &mut frame)?;
    let last = frame.len() - 1;
    assert_eq!(frame[last], FRAME_END);
    frame[last] = 0x00;
    client.stream.write_all(&frame)?;
    assert_eq!(client.closed_with()?.0, 501, "FRAME_ERROR");

    // A frame larger than the negotiated frame_max (8192), announced before it is sent.
    let mut client = RawClient::open(front.port)?;
    let mut oversized = vec![3u8, 0, 1];
    oversized.extend_from_slice(&(1_000_000u32).to_be_bytes());
    client.stream.write_all(&oversized)?;
    assert_eq!(client.closed_with()?.0, 501, "FRAME_ERROR");

    // A method on a channel never opened.
    let mut client = RawClient::open(front.port)?;
    client.send_method(
        7,
        &AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    )?;
    assert_eq!(client.closed_with()?.0, 504, "CHANNEL_ERROR");

    // Garbage where a frame belongs.
    let mut client = RawClient::open(front.port)?;
    client.stream.write_all(&[0x42; 64])?;
    assert_eq!(client.closed_with()?.0, 501, "FRAME_ERROR");

    // Content without a method.
    let mut client = RawClient::open(front.port)?;
    let mut body = bytes::BytesMut::new();
    FrameCodec::new(131_072).encode(&Frame::body(1, bytes::Bytes::from_static(b"x")), &mut body)?;
    client.stream.write_all(&body)?;
    let (code, _) = client.closed_with()?;
    assert!(
        code == 505 || code == 504,
        "UNEXPECTED_FRAME or CHANNEL_ERROR, got {code}"
    );

    std::thread::sleep(Duration::from_secs(1));
    let produced = producer.finish();
    let consumed = consumer.finish();
    no_errors(&produced);
    no_errors(&consumed);
    let sent = produced["sent"].as_u64().unwrap_or(0);
    assert!(sent > 0);
    assert_eq!(
        consumed["per_tag"]["good"], sent,
        "the good sessions kept flowing: {consumed}"
    );
    clients::delete_queue("amqp-malformed");
    Ok(())
}

fn main() {
    Suite::new(&["rabbit"])
        .faults("rabbitmq", through)
        .faults_over_tls("rabbitmq", &Fault::OVER_TLS, through_tls)
        .plain(
            "malformed_frames_get_the_specs_errors",
            malformed_frames_get_the_specs_errors,
        )
        .plain("client_errors_are_passed_on", client_errors_are_passed_on)
        .with_lab(
            "every_node_down_for_a_minute_holds_publishers_in_bounded_memory",
            limits::every_node_down_for_a_minute_holds_publishers_in_bounded_memory,
        )
        .with_lab(
            "secrets_stay_out_of_logs_status_and_metrics",
            limits::secrets_stay_out_of_logs_status_and_metrics,
        )
        .with_lab(
            "a_queue_the_cluster_loses_is_declared_again",
            lost_queue::a_queue_the_cluster_loses_is_declared_again,
        )
        .with_lab("rpc_survives_failover", rpc_survives_failover)
        .with_lab("transactions_survive_kill_9", transactions_survive_kill_9)
        .with_lab("lapin_survives_kill_9", lapin_survives_kill_9)
        .with_lab(
            "every_node_down_closes_with_320",
            every_node_down_closes_with_320,
        )
        .run()
}
