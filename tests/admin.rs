//! The admin listener's own limits (#15): it serves a scraper and an operator, so a slow or
//! hostile client of it, or a web page, must not hold it or act through it. No broker needed.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::tether::Tether;
use support::{free_port, http_get, wait_for};

/// tether's admin::MAX_CONNECTIONS.
const MAX_CONNECTIONS: usize = 64;

fn start() -> Tether {
    let admin = free_port();
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
[[clusters]]
name = "c"
nodes = [{{ name = "n", amqp = "127.0.0.1:1" }}]
[[listeners]]
name = "amqp"
bind = "127.0.0.1:{listen}"
protocol = "amqp"
cluster = "c"
"#,
        listen = free_port()
    );
    Tether::start(&config, SocketAddr::from(([127, 0, 0, 1], admin)))
}

/// Reads until the peer closes; what it said. The bound covers a loaded machine.
fn read_to_close(stream: &mut TcpStream, bound: Duration) -> String {
    stream.set_read_timeout(Some(bound)).unwrap();
    let mut said = Vec::new();
    let _ = stream.read_to_end(&mut said);
    String::from_utf8_lossy(&said).into_owned()
}

#[test]
fn a_request_from_a_web_page_is_refused() {
    let tether = start();
    let mut stream = TcpStream::connect(tether.admin).unwrap();
    stream
        .write_all(
            b"POST /reload HTTP/1.1\r\nHost: localhost\r\nOrigin: http://example.com\r\n\
              Content-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let said = read_to_close(&mut stream, Duration::from_secs(30));
    assert!(said.starts_with("HTTP/1.1 403"), "{said}");
    assert!(said.contains("refused"), "{said}");
    // Without an Origin (curl, `tether reload`, Prometheus) it answers.
    let (status, _) = http_get(tether.admin, "/healthz").unwrap();
    assert_eq!(status, 200);
}

#[test]
fn a_client_that_never_finishes_its_headers_is_closed() {
    let tether = start();
    let mut stream = TcpStream::connect(tether.admin).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let began = Instant::now();
    // The header timeout is 10 s; 60 s covers a loaded machine. A listener with no timeout
    // holds the connection until the read below gives up, and the test fails.
    let said = read_to_close(&mut stream, Duration::from_secs(60));
    let waited = began.elapsed();
    assert!(
        waited < Duration::from_secs(59),
        "still open after {waited:?}"
    );
    assert!(!said.contains("200 OK"), "{said}");
}

#[test]
fn connections_past_the_limit_are_closed_at_once_and_the_rest_are_served() {
    let tether = start();
    let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(tether.admin).unwrap())
        .collect();
    // Each held one is answered: they are being served.
    for mut stream in held.iter().take(3) {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = [0u8; 12];
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200");
    }
    let mut extra = TcpStream::connect(tether.admin).unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    // Closed as soon as it is accepted; the bound covers a loaded machine (the held ones are
    // closed by the header timeout after 10 s, which would let this one in).
    let said = read_to_close(&mut extra, Duration::from_secs(5));
    assert!(said.is_empty(), "one past the limit was served: {said}");
    drop(held);
    // Served again once tether has seen the others close; the bound covers a loaded machine.
    wait_for(
        "the admin listener to serve again",
        Duration::from_secs(30),
        || {
            http_get(tether.admin, "/healthz")
                .ok()
                .filter(|(s, _)| *s == 200)
        },
    );
}

/// One POST to the admin listener; the status line and body.
fn post(tether: &Tether, path: &str) -> String {
    let mut stream = TcpStream::connect(tether.admin).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    read_to_close(&mut stream, Duration::from_secs(30))
}

#[test]
fn drain_names_what_is_wrong_and_marks_the_node_in_status_and_metrics() {
    let tether = start();
    let bad = [
        ("/drain", "400", "give the node"),
        ("/drain?nod=n", "400", "unknown parameter"),
        ("/drain?node=x", "404", "no cluster has a node \"x\" (c: n)"),
        ("/drain?node=n&cluster=d", "404", "no cluster \"d\""),
    ];
    for (path, status, says) in bad {
        let said = post(&tether, path);
        assert!(
            said.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {said}"
        );
        assert!(said.contains(says), "{path}: {said}");
    }
    let (status, _) = http_get(tether.admin, "/drain?node=n").unwrap();
    assert_eq!(status, 405, "a GET drains nothing");
    let drained = |tether: &Tether| tether.metric("tether_node_drained", &[("node", "n")]);
    assert_eq!(drained(&tether), 0.0);

    let said = post(&tether, "/drain?node=n");
    assert!(
        said.starts_with("HTTP/1.1 200") && said.contains("n (cluster c): drained"),
        "{said}"
    );
    assert_eq!(drained(&tether), 1.0);
    let node = tether.status()["clusters"][0]["nodes"][0].clone();
    assert_eq!(node["drained"], true, "{node}");
    // The command line says the same, through `tether status`.
    let (_, shown) = tether.cli(&["status"]);
    assert!(shown.contains("drained"), "{shown}");

    let said = post(&tether, "/undrain?node=n&cluster=c");
    assert!(said.contains("takes sessions again"), "{said}");
    assert_eq!(drained(&tether), 0.0);
    assert!(
        tether.status()["clusters"][0]["nodes"][0]
            .get("drained")
            .is_none()
    );
}
