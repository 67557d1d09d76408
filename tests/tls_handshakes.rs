//! TLS handshakes between tether's [`Connector`] and [`Acceptor`] (or a plaintext peer) on
//! loopback, with certificates made here (see `support::pki`), one per way a handshake goes
//! wrong. No broker: `tests/tls.rs` proves the same against the lab's.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use support::pki::Pki;
use tether::address::Address;
use tether::config::{ListenerTlsConfig, UpstreamTlsConfig};
use tether::tls::{Acceptor, Connector, HandshakeFailure, Handshaken, SameAs, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn listener_tls(cert: PathBuf, key: PathBuf, client_ca: Option<PathBuf>) -> ListenerTlsConfig {
    ListenerTlsConfig {
        cert_file: cert,
        key_file: key,
        client_ca_file: client_ca,
    }
}

/// Serves TLS echo on loopback until dropped; the handshake outcomes go to the channel.
async fn echo_server(
    acceptor: Acceptor,
) -> (
    Address,
    tokio::sync::mpsc::UnboundedReceiver<Result<(), HandshakeFailure>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = Address::Ip(listener.local_addr().unwrap());
    let (outcomes, results) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let acceptor = Arc::new(acceptor);
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let outcomes = outcomes.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        let _ = outcomes.send(Ok(()));
                        let (mut read, mut write) = stream.into_split();
                        let mut buf = [0u8; 64];
                        while let Ok(n) = read.read(&mut buf).await {
                            if n == 0 || write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            let _ = write.flush().await;
                        }
                    }
                    Err(e) => {
                        let _ = outcomes.send(Err(e));
                    }
                }
            });
        }
    });
    (address, results)
}

async fn dial(connector: &Connector, address: &Address) -> Result<Handshaken, HandshakeFailure> {
    let Address::Ip(addr) = address else {
        unreachable!()
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector.connect(address, tcp).await
}

async fn echo(stream: Stream) -> std::io::Result<Vec<u8>> {
    let (mut read, mut write) = stream.into_split();
    write.write_all(b"ping").await?;
    assert!(write.unflushed(), "a TLS write owes a flush");
    write.flush().await?;
    assert!(!write.unflushed());
    let mut got = vec![0u8; 4];
    read.read_exact(&mut got).await?;
    Ok(got)
}

fn trusting(pki: &Pki) -> UpstreamTlsConfig {
    UpstreamTlsConfig {
        ca_file: Some(pki.ca()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_trusted_node_is_reached_and_the_second_connection_resumes() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("node", &["localhost", "127.0.0.1"], 3000);
    let (address, mut outcomes) =
        echo_server(Acceptor::load(&listener_tls(cert, key, None)).unwrap()).await;
    let connector = Connector::load(&trusting(&pki)).unwrap();
    let first = dial(&connector, &address).await.unwrap();
    assert!(!first.resumed);
    assert_eq!(echo(first.stream).await.unwrap(), b"ping");
    assert_eq!(outcomes.recv().await, Some(Ok(())));
    let second = dial(&connector, &address).await.unwrap();
    assert!(second.resumed, "one connector resumes its sessions");
    assert_eq!(echo(second.stream).await.unwrap(), b"ping");
}

#[tokio::test]
async fn each_certificate_fault_is_named() {
    let pki = Pki::new();
    let other = Pki::new();
    let (good, good_key) = pki.issue("good", &["127.0.0.1"], 3000);
    let (expired, expired_key) = pki.issue("expired", &["127.0.0.1"], 2001);
    let (stranger, stranger_key) = other.issue("stranger", &["127.0.0.1"], 3000);
    let connector = Connector::load(&trusting(&pki)).unwrap();
    let cases = [
        (stranger.clone(), stranger_key.clone(), None, "unknown_ca"),
        (expired, expired_key, None, "expired"),
        (
            good.clone(),
            good_key.clone(),
            Some("rabbit.internal"),
            "name_mismatch",
        ),
    ];
    for (cert, key, server_name, label) in cases {
        let (address, _outcomes) =
            echo_server(Acceptor::load(&listener_tls(cert, key, None)).unwrap()).await;
        let connector = match server_name {
            Some(name) => Connector::load(&UpstreamTlsConfig {
                server_name: Some(name.into()),
                ..trusting(&pki)
            })
            .unwrap(),
            None => Connector::load(&trusting(&pki)).unwrap(),
        };
        let failure = dial(&connector, &address).await.err().expect(label);
        assert_eq!(failure.label(), label, "{failure}");
    }
    // insecure takes the stranger's certificate.
    let (address, _outcomes) =
        echo_server(Acceptor::load(&listener_tls(stranger, stranger_key, None)).unwrap()).await;
    let insecure = Connector::load(&UpstreamTlsConfig {
        insecure: true,
        ..Default::default()
    })
    .unwrap();
    assert!(insecure.insecure());
    let reached = dial(&insecure, &address).await.unwrap();
    assert_eq!(echo(reached.stream).await.unwrap(), b"ping");
    drop(connector);
}

#[tokio::test]
async fn a_plaintext_broker_port_is_not_tls() {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = Address::Ip(listener.local_addr().unwrap());
    tokio::spawn(async move {
        // What RabbitMQ does with bytes that are not an AMQP header: its own header, then close.
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 8];
        let _ = tcp.read(&mut buf).await;
        let _ = tcp.write_all(b"AMQP\x00\x00\x09\x01").await;
    });
    let connector = Connector::load(&trusting(&pki)).unwrap();
    let failure = dial(&connector, &address).await.err().unwrap();
    assert_eq!(failure.label(), "not_tls", "{failure}");
}

#[tokio::test]
async fn a_listener_with_client_ca_requires_a_client_certificate() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("listener", &["127.0.0.1"], 3000);
    let (client_cert, client_key) = pki.issue("client", &["app"], 3000);
    let acceptor = Acceptor::load(&listener_tls(cert, key, Some(pki.ca()))).unwrap();
    let (address, mut outcomes) = echo_server(acceptor).await;

    let anonymous = Connector::load(&trusting(&pki)).unwrap();
    // In TLS 1.3 the client may finish its half before the server refuses it: the refusal
    // shows at the latest on the first read.
    if let Ok(reached) = dial(&anonymous, &address).await {
        assert!(echo(reached.stream).await.is_err());
    }
    let refused = outcomes.recv().await.unwrap().unwrap_err();
    assert!(refused.to_string().contains("TLS"), "{refused}");

    let authenticated = Connector::load(&UpstreamTlsConfig {
        cert_file: Some(client_cert),
        key_file: Some(client_key),
        ..trusting(&pki)
    })
    .unwrap();
    let reached = dial(&authenticated, &address).await.unwrap();
    assert_eq!(echo(reached.stream).await.unwrap(), b"ping");
    assert_eq!(outcomes.recv().await, Some(Ok(())));
}

#[test]
fn unreadable_files_are_named_and_rotation_is_noticed() {
    let pki = Pki::new();
    let missing = UpstreamTlsConfig {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..Default::default()
    };
    let error = Connector::load(&missing).err().unwrap().to_string();
    assert!(error.contains("/nonexistent/ca.pem"), "{error}");

    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let error = Connector::load(&UpstreamTlsConfig {
        ca_file: Some(garbage),
        ..Default::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(error.contains("no PEM certificate"), "{error}");

    let (cert, key) = pki.issue("listener", &["127.0.0.1"], 3000);
    let config = listener_tls(cert, key, None);
    let before = Acceptor::load(&config).unwrap();
    assert!(before.same_as(&Acceptor::load(&config).unwrap()));
    pki.issue("listener", &["127.0.0.1"], 3000); // rotated in place
    assert!(!before.same_as(&Acceptor::load(&config).unwrap()));
}
