//! The command line: `check`, `--version`, and how `run` starts and stops.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;
use support::tether::Tether;
use support::{REPO, free_port, wait_for};

fn tether(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .current_dir(REPO)
        .output()
        .expect("run tether");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

#[test]
fn check_prints_what_would_run() {
    let (code, stdout, _) = tether(&["check", "-c", "conf/tether.toml"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("listener amqp-tcp on 127.0.0.1:5700 (tcp) -> cluster lab, endpoint amqp")
    );
    assert!(stdout.contains("node r2: amqp=127.0.0.1:5682 stomp=127.0.0.1:61682"));
    assert!(stdout.contains("admin on 127.0.0.1:9464"));
}

#[test]
fn check_rejects_an_unknown_key_naming_it() {
    let (code, stdout, stderr) = tether(&["check", "-c", "tests/config/invalid/unknown-key.toml"]);
    assert_eq!(code, Some(2));
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("clusters[0].health.fal: unknown field `fal`, expected one of"),
        "{stderr}"
    );
}

#[test]
fn check_warns_about_unverified_certificates_and_reads_tls_files() {
    let (code, stdout, _) = tether(&["check", "-c", "tests/config/valid/tls-insecure.toml"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains(
            "warning: cluster lab: tls.insecure = true: node certificates are NOT verified"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("certificates NOT verified (insecure) as \"rabbit.internal\""),
        "{stdout}"
    );

    let (code, stdout, stderr) =
        tether(&["check", "-c", "tests/config/invalid/tls-missing-file.toml"]);
    assert_eq!(code, Some(2), "{stdout}");
    assert!(
        stderr.contains("listeners[0].tls: cannot read /nonexistent/tether.pem"),
        "{stderr}"
    );
}

#[test]
fn check_names_a_missing_file() {
    let (code, _, stderr) = tether(&["check", "-c", "no/such.toml"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("cannot read no/such.toml"), "{stderr}");
}

#[test]
fn version_and_help() {
    let (code, stdout, _) = tether(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout.trim(),
        format!("tether {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, stdout, _) = tether(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("run") && stdout.contains("check"));
}

#[test]
fn run_fails_clearly_when_its_port_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = format!(
        r#"
[[clusters]]
name = "c"
nodes = [{{ name = "n", echo = "127.0.0.1:1" }}]
[[listeners]]
name = "busy"
bind = "127.0.0.1:{port}"
protocol = "tcp"
cluster = "c"
endpoint = "echo"
"#
    );
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(config.as_bytes()).unwrap();
    let (code, _, stderr) = tether(&["run", "-c", file.path().to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("listener busy: cannot bind 127.0.0.1:{port}")),
        "{stderr}"
    );
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

#[test]
fn sigterm_stops_accepting_and_lets_open_sessions_finish() {
    let upstream = echo_server();
    let (listen, admin) = (free_port(), free_port());
    let config = format!(
        r#"
shutdown_grace = "30s"
[admin]
listen = "127.0.0.1:{admin}"
[[clusters]]
name = "c"
nodes = [{{ name = "n", echo = "{upstream}" }}]
[[listeners]]
name = "echo"
bind = "127.0.0.1:{listen}"
protocol = "tcp"
cluster = "c"
endpoint = "echo"
"#
    );
    let tether = Tether::start(&config, SocketAddr::from(([127, 0, 0, 1], admin)));
    let listener = SocketAddr::from(([127, 0, 0, 1], listen));
    let mut session = TcpStream::connect(listener).unwrap();
    session
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut echo = [0u8; 5];
    session.write_all(b"hello").unwrap();
    session.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello");

    tether.signal("TERM");
    // Shutdown stops the listener at once; the bound covers a loaded machine.
    wait_for("the listener to close", Duration::from_secs(10), || {
        TcpStream::connect(listener).is_err().then_some(())
    });
    session.write_all(b"still").unwrap();
    session.read_exact(&mut echo).unwrap();
    assert_eq!(
        &echo, b"still",
        "an open session keeps working during the grace period"
    );
    drop(session);
    assert_eq!(tether.terminate(), Some(0));
}
