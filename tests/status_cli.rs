//! `tether status`: the table a person reads, the raw JSON, and a clear failure when no tether
//! answers. A tcp listener in front of a local echo server stands in for a broker.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;
use support::config::TetherConfig;
use support::tether::Tether;
use support::{free_port, wait_for};

fn tether(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .output()
        .expect("run tether");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

/// An upstream that echoes what it reads.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

struct Running {
    tether: Tether,
    config: tempfile::NamedTempFile,
    listen: u16,
    upstream: SocketAddr,
}

/// tether with one tcp listener "echo" in front of node "n1" (the echo server) and node "gone"
/// (a closed port, so it goes down).
fn start() -> Running {
    let upstream = echo_server();
    let gone = free_port();
    let mut config = TetherConfig::new().cluster(
        "local",
        &format!(
            "balance = \"least-connections\"\n\
             health = {{ interval = \"200ms\", timeout = \"500ms\", rise = 1, fall = 1 }}\n\
             nodes = [{{ name = \"n1\", echo = \"{upstream}\" }}, {{ name = \"gone\", echo = \"127.0.0.1:{gone}\" }}]"
        ),
    );
    let listen = config.listener("echo-front", "tcp", "local", r#"endpoint = "echo""#);
    let text = config.text().to_owned();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    Running {
        tether: config.start(),
        config: file,
        listen,
        upstream,
    }
}

#[test]
fn status_shows_listeners_and_nodes_as_a_table() {
    let running = start();
    // A TCP check of a closed port fails at once; fall = 1 at 200 ms takes "gone" down fast.
    wait_for("node gone to be down", Duration::from_secs(20), || {
        (running.tether.status()["clusters"][0]["nodes_up"] == 1).then_some(())
    });
    let mut session = TcpStream::connect(("127.0.0.1", running.listen)).unwrap();
    session
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut echo = [0u8; 2];
    session.write_all(b"hi").unwrap();
    session.read_exact(&mut echo).unwrap();

    let admin = running.tether.admin.to_string();
    let (code, stdout, stderr) = tether(&["status", "--admin", &admin]);
    assert_eq!(code, Some(0), "{stderr}");
    eprintln!("{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "tether {} at {admin}, up ",
            env!("CARGO_PKG_VERSION")
        )),
        "{stdout}"
    );
    let line = |start: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?} in\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line("LISTENER"),
        [
            "LISTENER", "BIND", "PROTOCOL", "CLUSTER", "ENDPOINT", "SESSIONS", "POOLED", "SHARED"
        ]
    );
    assert_eq!(
        line("echo-front"),
        [
            "echo-front",
            &format!("127.0.0.1:{}", running.listen),
            "tcp",
            "local",
            "echo",
            "1",
            "-",
            "-"
        ]
    );
    assert!(
        stdout
            .contains("cluster local: 1 of 2 nodes up, balance least-connections, sources static"),
        "{stdout}"
    );
    let upstream = running.upstream.to_string();
    let n1 = line("n1 ");
    assert_eq!(
        n1[..8],
        ["n1", "up", "1", "static", "echo", &upstream, "tcp", "up"],
        "{stdout}"
    );
    let gone = line("gone ");
    assert_eq!(gone[..3], ["gone", "DOWN", "0"], "{stdout}");
    assert_eq!(gone[7], "DOWN", "{stdout}");
    assert!(
        gone.join(" ").contains("refused"),
        "the reason says why: {stdout}"
    );
    assert!(
        stdout.contains("last failover: none since tether started"),
        "{stdout}"
    );

    // The admin address from the config file gives the same report.
    let config = running.config.path().to_str().unwrap();
    let (code, from_config, stderr) = tether(&["status", "-c", config]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(from_config.contains("echo-front"), "{from_config}");

    let (code, json, stderr) = tether(&["status", "--admin", &admin, "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(json["listeners"][0]["name"], "echo-front");
    assert_eq!(json["listeners"][0]["sessions"], 1);
    assert_eq!(json["clusters"][0]["name"], "local");
    assert!(json["last_failover"].is_null(), "{json}");
    drop(session);
}

#[test]
fn status_fails_clearly_when_no_tether_answers() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (code, stdout, stderr) = tether(&["status", "--admin", &address]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with(&format!(
            "tether: cannot reach tether's admin listener at {address}: "
        )),
        "{stderr}"
    );
    assert!(stderr.contains("is tether running"), "{stderr}");
    let (code, stdout, _) = tether(&["status", "--admin", &address, "--json"]);
    assert_eq!(code, Some(1));
    assert!(
        stdout.is_empty(),
        "--json prints nothing on failure: {stdout}"
    );
}

#[test]
fn status_needs_an_admin_section_in_the_config() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(
        br#"
[[clusters]]
name = "c"
nodes = [{ name = "n", echo = "127.0.0.1:1" }]
[[listeners]]
name = "l"
bind = "127.0.0.1:1"
protocol = "tcp"
cluster = "c"
endpoint = "echo"
"#,
    )
    .unwrap();
    let path = file.path().to_str().unwrap();
    let (code, _, stderr) = tether(&["status", "-c", path]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no [admin] section"), "{stderr}");
}
