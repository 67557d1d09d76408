//! DNS discovery against a small in-process DNS server: a name with several A records becomes
//! several nodes, and changing the records changes the node set of a running tether.

mod support;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::tether::Tether;
use support::{free_port, wait_for};

type Table<T> = Arc<Mutex<BTreeMap<String, Vec<T>>>>;

/// Answers A and SRV questions from a table the test can change, with a 1 s TTL.
struct DnsServer {
    addr: SocketAddr,
    a: Table<Ipv4Addr>,
    srv: Table<(String, u16)>,
}

impl DnsServer {
    fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let a: Table<Ipv4Addr> = Default::default();
        let srv: Table<(String, u16)> = Default::default();
        let (a_table, srv_table) = (a.clone(), srv.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut response = Message::response(query.metadata.id, query.metadata.op_code);
                response.metadata.message_type = MessageType::Response;
                response.metadata.recursion_available = true;
                response.metadata.authoritative = true;
                let mut found = false;
                for question in &query.queries {
                    response.add_query(question.clone());
                    let name = question.name().to_ascii().to_lowercase();
                    match question.query_type() {
                        RecordType::A => {
                            if let Some(ips) = a_table.lock().unwrap().get(&name) {
                                found = true;
                                for ip in ips.iter().copied() {
                                    response.add_answer(Record::from_rdata(
                                        question.name().clone(),
                                        1,
                                        RData::A(A(ip)),
                                    ));
                                }
                            }
                        }
                        RecordType::SRV => {
                            if let Some(targets) = srv_table.lock().unwrap().get(&name) {
                                found = true;
                                for (target, port) in targets {
                                    let target = Name::from_ascii(target).unwrap();
                                    response.add_answer(Record::from_rdata(
                                        question.name().clone(),
                                        1,
                                        RData::SRV(SRV::new(0, 0, *port, target)),
                                    ));
                                }
                            }
                        }
                        // Known names have no AAAA records: an empty answer.
                        _ => found |= a_table.lock().unwrap().contains_key(&name),
                    }
                }
                if !found {
                    response.metadata.response_code = ResponseCode::NXDomain;
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, peer);
                }
            }
        });
        DnsServer { addr, a, srv }
    }

    fn set_a(&self, name: &str, ips: &[[u8; 4]]) {
        self.a.lock().unwrap().insert(
            name.to_string(),
            ips.iter().map(|o| Ipv4Addr::from(*o)).collect(),
        );
    }

    fn set_srv(&self, name: &str, targets: &[(&str, u16)]) {
        self.srv.lock().unwrap().insert(
            name.to_string(),
            targets.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
        );
    }
}

/// A server that answers every connection with its own address, so a test sees which node a
/// session reached.
fn whoami_server(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = writeln!(stream, "{addr}");
        }
    });
}

fn reached(listener: SocketAddr) -> String {
    let mut stream = TcpStream::connect(listener).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.trim().to_string()
}

fn node_names(tether: &Tether, cluster: &str) -> Vec<String> {
    tether
        .sessions_per_node(cluster)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

#[test]
fn a_records_become_nodes_and_follow_record_changes() {
    let dns = DnsServer::start();
    let port = free_port();
    for last in 1..=4u8 {
        whoami_server(SocketAddr::from(([127, 0, 0, last], port)));
    }
    dns.set_a(
        "brokers.test.",
        &[[127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3]],
    );
    let (listen, admin) = (free_port(), free_port());
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
[dns]
nameservers = ["{dns}"]
[[clusters]]
name = "named"
balance = "round-robin"
hosts = ["brokers.test."]
ports = {{ whoami = {port} }}
health = {{ interval = "200ms", timeout = "500ms", rise = 1, fall = 1 }}
[[listeners]]
name = "whoami"
bind = "127.0.0.1:{listen}"
protocol = "tcp"
cluster = "named"
endpoint = "whoami"
"#,
        dns = dns.addr
    );
    let tether = Tether::start(&config, SocketAddr::from(([127, 0, 0, 1], admin)));
    let listener = SocketAddr::from(([127, 0, 0, 1], listen));

    // Startup waits for the first resolution, so the three nodes are there at once.
    let mut names = node_names(&tether, "named");
    names.sort();
    assert_eq!(
        names,
        [
            "brokers.test/127.0.0.1",
            "brokers.test/127.0.0.2",
            "brokers.test/127.0.0.3"
        ]
    );
    let mut seen: Vec<String> = (0..6).map(|_| reached(listener)).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        3,
        "round-robin reaches every resolved address: {seen:?}"
    );

    dns.set_a("brokers.test.", &[[127, 0, 0, 1], [127, 0, 0, 4]]);
    // The records' TTL is 1 s; re-resolution follows within a few seconds even when loaded.
    wait_for(
        "the node set to follow the new records",
        Duration::from_secs(30),
        || {
            let mut names = node_names(&tether, "named");
            names.sort();
            (names == ["brokers.test/127.0.0.1", "brokers.test/127.0.0.4"]).then_some(())
        },
    );
    let mut seen: Vec<String> = (0..6).map(|_| reached(listener)).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [format!("127.0.0.1:{port}"), format!("127.0.0.4:{port}")],
        "sessions go only to addresses in the current records"
    );

    assert_eq!(tether.terminate(), Some(0));
}

#[test]
fn srv_targets_become_nodes_with_the_record_port() {
    let dns = DnsServer::start();
    let (port_a, port_b) = (free_port(), free_port());
    whoami_server(SocketAddr::from(([127, 0, 0, 1], port_a)));
    whoami_server(SocketAddr::from(([127, 0, 0, 2], port_b)));
    dns.set_a("a.brokers.test.", &[[127, 0, 0, 1]]);
    dns.set_a("b.brokers.test.", &[[127, 0, 0, 2]]);
    dns.set_srv(
        "_whoami._tcp.brokers.test.",
        &[("a.brokers.test.", port_a), ("b.brokers.test.", port_b)],
    );
    let (listen, admin) = (free_port(), free_port());
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
[dns]
nameservers = ["{dns}"]
[[clusters]]
name = "srv"
balance = "round-robin"
dns_srv = "_whoami._tcp.brokers.test."
[[listeners]]
name = "whoami"
bind = "127.0.0.1:{listen}"
protocol = "tcp"
cluster = "srv"
endpoint = "whoami"
"#,
        dns = dns.addr
    );
    let tether = Tether::start(&config, SocketAddr::from(([127, 0, 0, 1], admin)));
    let mut names = node_names(&tether, "srv");
    names.sort();
    assert_eq!(
        names,
        ["a.brokers.test/127.0.0.1", "b.brokers.test/127.0.0.2"]
    );
    let listener = SocketAddr::from(([127, 0, 0, 1], listen));
    let mut seen: Vec<String> = (0..4).map(|_| reached(listener)).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [format!("127.0.0.1:{port_a}"), format!("127.0.0.2:{port_b}")]
    );

    dns.set_srv("_whoami._tcp.brokers.test.", &[("b.brokers.test.", port_b)]);
    // TTL 1 s; see above.
    wait_for(
        "the SRV change to remove node a",
        Duration::from_secs(30),
        || (node_names(&tether, "srv") == ["b.brokers.test/127.0.0.2"]).then_some(()),
    );
    assert_eq!(tether.terminate(), Some(0));
}
