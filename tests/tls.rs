//! TLS against the bundled RabbitMQ cluster's TLS listeners, with real clients (pika with
//! ssl_options) and a real TLS server (socat) presenting bad certificates: certificate faults
//! take only their node out and are named, a cluster that fails TLS everywhere gives the client
//! a readable error in bounded time, listeners serve TLS (with and without client
//! certificates), certificates rotate under traffic, and discovery reads the management API
//! over https. The failover suites run their faults over TLS too (`rabbitmq_tls_*`).

mod support;

use libtest_mimic::Failed;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::clients;
use support::config::{TetherConfig, lab_nodes};
use support::lab::{Lab, ports, tls_file};
use support::pki::{Pki, TlsFront};
use support::suite::Suite;
use support::tether::Tether;
use support::{free_port, wait_for};

const HEALTH: &str = r#"health = { interval = "500ms", timeout = "1s", rise = 2, fall = 2 }"#;

fn path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A pika publisher with confirms that sends `count` messages through `port`; `tls` adds its
/// TLS arguments.
fn publish(port: u16, queue: &str, count: u32, tls: &[String]) -> Value {
    let mut args = vec![
        format!("--port={port}"),
        format!("--queue={queue}"),
        "--confirms".into(),
        format!("--count={count}"),
        "--rate=500".into(),
    ];
    args.extend_from_slice(tls);
    clients::run("pika_publisher.py", &args)
}

fn trusting(ca: &Path) -> Vec<String> {
    vec![format!("--tls-ca={}", ca.display())]
}

fn all_confirmed(summary: &Value, count: u32) {
    assert_eq!(summary["errors"], Value::Array(vec![]), "{summary}");
    assert_eq!(summary["confirmed"], count, "{summary}");
}

/// The `amqps` endpoint of `node` in /status: whether it is up, and why.
fn endpoint_state(tether: &Tether, node: &str) -> Option<(bool, String)> {
    let status = tether.status();
    let nodes = status["clusters"][0]["nodes"].as_array()?.clone();
    let endpoint = nodes.iter().find(|n| n["name"] == node)?["endpoints"]["amqps"].clone();
    Some((
        endpoint["up"].as_bool()?,
        endpoint["reason"].as_str()?.to_string(),
    ))
}

/// Each certificate fault on r2 takes r2's endpoint down with the fault named, in /status and
/// the connect-failure metric, while sessions go on through r1.
fn certificate_faults_take_only_their_node_out(_: &Lab) -> Result<(), Failed> {
    let test_ca = Pki::new();
    let stranger = Pki::new();
    let trust = test_ca.bundle("trust.pem", &[&tls_file("ca.pem"), &test_ca.ca()]);
    let r2 = ports::address("r2", "amqp");
    // (label, what /status says, the certificate r2 presents: none for its plaintext port)
    type Case<'a> = (&'a str, &'a str, Option<(PathBuf, PathBuf)>);
    let cases: Vec<Case<'_>> = vec![
        (
            "unknown_ca",
            "unknown CA",
            Some(stranger.issue("stranger", &["localhost", "127.0.0.1"], 3000)),
        ),
        (
            "name_mismatch",
            "name mismatch",
            Some(test_ca.issue("other-name", &["rabbit.internal"], 3000)),
        ),
        (
            "expired",
            "expired",
            Some(test_ca.issue("expired", &["localhost", "127.0.0.1"], 2001)),
        ),
        ("plaintext", "not speaking TLS", None),
    ];
    clients::declare_queue("tls-faults");
    for (label, words, certificate) in cases {
        // r2's "TLS" port: socat with the bad certificate in front of r2, or r2's plain port.
        let (bad_port, _front) = match &certificate {
            Some((cert, key)) => {
                let port = free_port();
                (port, Some(TlsFront::start(port, cert, key, &r2)))
            }
            None => (ports::of("r2", "amqp"), None),
        };
        let mut config = TetherConfig::new().cluster(
            "lab",
            &format!(
                "{HEALTH}\ntls = {{ ca_file = {} }}\nnodes = [{{ name = \"r1\", amqps = \"{}\" }}, {{ name = \"r2\", amqps = \"127.0.0.1:{bad_port}\" }}]",
                path(&trust),
                ports::address("r1", "amqps"),
            ),
        );
        let port = config.listener("amqp", "amqp", "lab", "endpoint = \"amqps\"");
        let tether = config.start();
        // Two failed checks 500 ms apart take it down; a loaded machine may take longer.
        let (_, reason) = wait_for(
            &format!("r2 to be down for {label}"),
            Duration::from_secs(30),
            || endpoint_state(&tether, "r2").filter(|(up, _)| !up),
        );
        eprintln!("{label}: r2 down: {reason}");
        assert!(reason.contains(words), "{label}: {reason}");
        assert_eq!(endpoint_state(&tether, "r1").map(|s| s.0), Some(true));
        let summary = publish(port, "tls-faults", 200, &[]);
        eprintln!("{label}: {summary}");
        all_confirmed(&summary, 200);
        assert!(
            tether.metric("tether_tls_handshakes_total", &[]) > 0.0,
            "the session went over TLS"
        );
    }
    Ok(())
}

/// Every node fails TLS (tether trusts a CA that signed none of them): a client gets the
/// broker-style error that says so, once `failover_timeout` is over, not a hang.
fn a_cluster_failing_tls_everywhere_gives_a_clear_error(_: &Lab) -> Result<(), Failed> {
    let stranger = Pki::new();
    let mut config = TetherConfig::new().cluster(
        "lab",
        &format!(
            "{HEALTH}\ntls = {{ ca_file = {} }}\n{}",
            path(&stranger.ca()),
            lab_nodes(&ports::RABBIT, &["amqps"])
        ),
    );
    let port = config.listener(
        "amqp",
        "amqp",
        "lab",
        "endpoint = \"amqps\"\nfailover_timeout = \"3s\"",
    );
    let tether = config.start();
    let started = Instant::now();
    let summary = publish(port, "tls-nowhere", 1, &[]);
    let took = started.elapsed();
    eprintln!("after {took:?}: {summary}");
    let errors = summary["errors"].to_string();
    assert!(errors.contains("no broker node available"), "{errors}");
    assert!(
        errors.contains("unknown CA"),
        "the reason reaches the client: {errors}"
    );
    // failover_timeout is 3 s; the bound only catches a hang, on a loaded machine.
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert!(tether.metric("tether_connect_failures_total", &[("reason", "tls")]) > 0.0);
    Ok(())
}

/// A listener with TLS: pika with ssl_options through it, to plain-TCP nodes; a client
/// speaking plaintext to it is refused and counted.
fn listener_tls_serves_pika(_: &Lab) -> Result<(), Failed> {
    let mut config = TetherConfig::new().cluster(
        "lab",
        &format!("{HEALTH}\n{}", lab_nodes(&ports::RABBIT, &["amqp"])),
    );
    let port = config.listener(
        "amqps",
        "amqp",
        "lab",
        &format!(
            "tls = {{ cert_file = {}, key_file = {} }}",
            path(&tls_file("node.pem")),
            path(&tls_file("node.key"))
        ),
    );
    let tether = config.start();
    clients::declare_queue("tls-listener");
    let ca = tls_file("ca.pem");
    let mut consumer = clients::spawn(
        "pika_consumer.py",
        &[
            format!("--port={port}"),
            "--queue=tls-listener".into(),
            format!("--tls-ca={}", ca.display()),
            "--idle=3".into(),
        ],
    );
    assert_eq!(consumer.line(), "ready");
    let published = publish(port, "tls-listener", 500, &trusting(&ca));
    let consumed = consumer.finish();
    eprintln!("publisher: {published}\nconsumer: {consumed}");
    all_confirmed(&published, 500);
    assert_eq!(consumed["errors"], Value::Array(vec![]), "{consumed}");
    assert_eq!(consumed["per_tag"]["p"], 500, "{consumed}");
    let plaintext = publish(port, "tls-listener", 1, &[]);
    assert_ne!(plaintext["errors"], Value::Array(vec![]), "{plaintext}");
    wait_for(
        "the refused handshake to be counted",
        Duration::from_secs(30),
        || {
            let failed = tether.metric("tether_client_tls_handshakes_total", &[])
                - tether.metric("tether_client_tls_handshakes_total", &[("result", "ok")]);
            (failed >= 1.0).then_some(())
        },
    );
    assert!(tether.metric("tether_client_tls_handshakes_total", &[("result", "ok")]) >= 2.0);
    Ok(())
}

/// `client_ca_file`: a client without a certificate is refused, one with a certificate the
/// CA signed gets through.
fn listener_tls_requires_client_certificates(_: &Lab) -> Result<(), Failed> {
    let mut config = TetherConfig::new().cluster(
        "lab",
        &format!("{HEALTH}\n{}", lab_nodes(&ports::RABBIT, &["amqp"])),
    );
    let ca = tls_file("ca.pem");
    let port = config.listener(
        "amqps",
        "amqp",
        "lab",
        &format!(
            "tls = {{ cert_file = {}, key_file = {}, client_ca_file = {} }}",
            path(&tls_file("node.pem")),
            path(&tls_file("node.key")),
            path(&ca)
        ),
    );
    let _tether = config.start();
    clients::declare_queue("tls-mutual");
    let anonymous = publish(port, "tls-mutual", 1, &trusting(&ca));
    eprintln!("without a client certificate: {anonymous}");
    assert_ne!(anonymous["errors"], Value::Array(vec![]), "{anonymous}");
    let mut with_certificate = trusting(&ca);
    with_certificate.push(format!("--tls-cert={}", tls_file("client.pem").display()));
    with_certificate.push(format!("--tls-key={}", tls_file("client.key").display()));
    let authenticated = publish(port, "tls-mutual", 100, &with_certificate);
    all_confirmed(&authenticated, 100);
    Ok(())
}

/// The listener's certificate is replaced by one from another CA, the cluster's trusted CAs
/// gain one, and tether is reloaded, under traffic: the open sessions go on untouched, new
/// clients get the new certificate. A certificate file that does not parse fails the reload
/// and changes nothing.
fn certificates_rotate_under_traffic(_: &Lab) -> Result<(), Failed> {
    let (old_ca, new_ca) = (Pki::new(), Pki::new());
    let (cert, key) = old_ca.issue("listener", &["localhost", "127.0.0.1"], 3000);
    let upstream_trust = old_ca.bundle("upstream-trust.pem", &[&tls_file("ca.pem")]);
    let mut config = TetherConfig::new().cluster(
        "lab",
        &format!(
            "{HEALTH}\ntls = {{ ca_file = {} }}\n{}",
            path(&upstream_trust),
            lab_nodes(&ports::RABBIT, &["amqps"])
        ),
    );
    let port = config.listener(
        "amqps",
        "amqp",
        "lab",
        &format!(
            "endpoint = \"amqps\"\ntls = {{ cert_file = {}, key_file = {} }}",
            path(&cert),
            path(&key)
        ),
    );
    let tether = config.start();
    clients::declare_queue("tls-rotation");
    let mut consumer = clients::spawn(
        "pika_consumer.py",
        &[
            format!("--port={port}"),
            "--queue=tls-rotation".into(),
            format!("--tls-ca={}", old_ca.ca().display()),
            "--idle=3".into(),
        ],
    );
    assert_eq!(consumer.line(), "ready");
    let mut publisher = clients::spawn(
        "pika_publisher.py",
        &[
            format!("--port={port}"),
            "--queue=tls-rotation".into(),
            "--confirms".into(),
            "--rate=200".into(),
            "--tag=before".into(),
            format!("--tls-ca={}", old_ca.ca().display()),
        ],
    );
    assert_eq!(publisher.line(), "ready");
    std::thread::sleep(Duration::from_secs(2));

    // Rotate: the same files, a certificate from the new CA.
    let (next_cert, next_key) = new_ca.issue("next", &["localhost", "127.0.0.1"], 3000);
    std::fs::copy(&next_cert, &cert)?;
    std::fs::copy(&next_key, &key)?;
    old_ca.bundle("upstream-trust.pem", &[&tls_file("ca.pem"), &new_ca.ca()]);
    let (ok, said) = tether.reload_cli();
    eprintln!("reload: {said}");
    assert!(
        ok && said.contains("listener amqps: TLS certificates re-read"),
        "{said}"
    );
    assert!(said.contains("cluster lab: TLS re-read"), "{said}");
    let new_client = publish(port, "tls-rotation", 50, &trusting(&new_ca.ca()));
    all_confirmed(&new_client, 50);
    let old_trust = publish(port, "tls-rotation", 1, &trusting(&old_ca.ca()));
    assert_ne!(
        old_trust["errors"],
        Value::Array(vec![]),
        "a new client still got the old certificate: {old_trust}"
    );

    // A broken file: the reload fails, naming it, and the certificate in use stays.
    std::fs::write(&cert, "not a certificate\n")?;
    let (ok, said) = tether.reload_cli();
    eprintln!("reload with a broken file: {said}");
    assert!(!ok && said.contains("listeners[0].tls"), "{said}");
    let still = publish(port, "tls-rotation", 20, &trusting(&new_ca.ca()));
    all_confirmed(&still, 20);

    std::thread::sleep(Duration::from_secs(1));
    let published = publisher.finish();
    let consumed = consumer.finish();
    eprintln!("publisher across the rotation: {published}\nconsumer: {consumed}");
    all_confirmed(&published, published["sent"].as_u64().unwrap_or(0) as u32);
    assert_eq!(consumed["errors"], Value::Array(vec![]), "{consumed}");
    assert_eq!(
        consumed["per_tag"]["before"], published["sent"],
        "{consumed}"
    );
    assert_eq!(consumed["missing"]["before"], 0, "{consumed}");
    Ok(())
}

/// Discovery from the management API over https, with the cluster's trust: the nodes' TLS
/// listeners become their `amqp` endpoints, and sessions run over them.
fn discovery_over_https_finds_the_tls_listeners(_: &Lab) -> Result<(), Failed> {
    let mut config = TetherConfig::new().cluster(
        "lab",
        &format!(
            "{HEALTH}\ntls = {{ ca_file = {} }}\ndiscovery.rabbitmq = {{ url = \"https://{}\" }}",
            path(&tls_file("ca.pem")),
            ports::address("r1", "https")
        ),
    );
    let port = config.listener("amqp", "amqp", "lab", "");
    let tether = config.start();
    let amqp_ports = wait_for("three discovered nodes", Duration::from_secs(60), || {
        let status = tether.status();
        let ports: Vec<String> = status["clusters"][0]["nodes"]
            .as_array()?
            .iter()
            .filter_map(|n| n["endpoints"]["amqp"]["address"].as_str().map(String::from))
            .collect();
        (ports.len() == 3).then_some(ports)
    });
    for node in ports::RABBIT {
        assert!(
            amqp_ports.contains(&ports::address(node, "amqps")),
            "{node}'s TLS listener is its amqp endpoint: {amqp_ports:?}"
        );
    }
    clients::declare_queue("tls-discovery");
    all_confirmed(&publish(port, "tls-discovery", 100, &[]), 100);
    assert!(tether.metric("tether_tls_handshakes_total", &[]) >= 1.0);
    Ok(())
}

/// tether presents a client certificate to the brokers (which verify any they get): the lab's
/// is taken, one from a CA the brokers do not know is refused and named. A `tcp` listener
/// forwards over the same TLS.
fn upstream_client_certificates_are_presented(_: &Lab) -> Result<(), Failed> {
    let stranger = Pki::new();
    let (foreign_cert, foreign_key) = stranger.issue("tether", &["tether"], 3000);
    let cases = [
        (tls_file("client.pem"), tls_file("client.key"), true),
        (foreign_cert, foreign_key, false),
    ];
    clients::declare_queue("tls-mutual-upstream");
    for (cert, key, accepted) in cases {
        let mut config = TetherConfig::new().cluster(
            "lab",
            &format!(
                "{HEALTH}\ntls = {{ ca_file = {}, cert_file = {}, key_file = {} }}\n{}",
                path(&tls_file("ca.pem")),
                path(&cert),
                path(&key),
                lab_nodes(&["r1"], &["amqps"])
            ),
        );
        let port = config.listener("amqp", "amqp", "lab", "endpoint = \"amqps\"");
        let tcp_port = config.listener("tcp", "tcp", "lab", "endpoint = \"amqps\"");
        let tether = config.start();
        if accepted {
            all_confirmed(&publish(port, "tls-mutual-upstream", 100, &[]), 100);
            all_confirmed(&publish(tcp_port, "tls-mutual-upstream", 100, &[]), 100);
        } else {
            let (_, reason) = wait_for("r1 to refuse tether", Duration::from_secs(30), || {
                endpoint_state(&tether, "r1").filter(|(up, _)| !up)
            });
            eprintln!("a certificate r1 does not trust: {reason}");
            assert!(reason.contains("refused the handshake"), "{reason}");
        }
    }
    Ok(())
}

fn main() {
    Suite::new(&["rabbit"])
        .with_lab(
            "certificate_faults_take_only_their_node_out",
            certificate_faults_take_only_their_node_out,
        )
        .with_lab(
            "a_cluster_failing_tls_everywhere_gives_a_clear_error",
            a_cluster_failing_tls_everywhere_gives_a_clear_error,
        )
        .with_lab("listener_tls_serves_pika", listener_tls_serves_pika)
        .with_lab(
            "listener_tls_requires_client_certificates",
            listener_tls_requires_client_certificates,
        )
        .with_lab(
            "certificates_rotate_under_traffic",
            certificates_rotate_under_traffic,
        )
        .with_lab(
            "upstream_client_certificates_are_presented",
            upstream_client_certificates_are_presented,
        )
        .with_lab(
            "discovery_over_https_finds_the_tls_listeners",
            discovery_over_https_finds_the_tls_listeners,
        )
        .run()
}
