//! Real client programs (pika and stomp.py in Python, the stomp gem in Ruby) run as child
//! processes from tests/clients/.

use super::REPO;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The interpreter for a client script, by its extension.
fn interpreter(script: &str) -> Command {
    let mut command = Command::new(if script.ends_with(".rb") {
        "ruby"
    } else {
        "python3"
    });
    command.arg(format!("{REPO}/tests/clients/{script}"));
    command
}

/// Runs a client script to completion and parses the JSON summary it prints last.
pub fn run(script: &str, args: &[String]) -> serde_json::Value {
    let output = interpreter(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|_| {
        panic!(
            "{script} printed no JSON summary (exit {:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status.code()
        )
    })
}

/// Declares the quorum queue `queue` on the lab's r1 (the failover tests' queues replicate
/// across the RabbitMQ nodes).
pub fn declare_queue(queue: &str) {
    declare_queue_py(queue, &[]);
}

/// Deletes the queue `queue` on the lab's r1.
pub fn delete_queue(queue: &str) {
    declare_queue_py(queue, &["--delete".into()]);
}

fn declare_queue_py(queue: &str, extra: &[String]) {
    let mut args = vec![
        format!("--port={}", super::lab::ports::of("r1", "amqp")),
        format!("--queue={queue}"),
    ];
    args.extend_from_slice(extra);
    run("declare_queue.py", &args);
}

/// A client script that keeps running while the test works: it prints a line when ready and
/// ends (printing its JSON summary) when its standard input closes.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Taken by `finish`, which reads the rest on a thread of its own.
    stdout: Option<BufReader<ChildStdout>>,
    script: String,
}

pub fn spawn(script: &str, args: &[String]) -> Running {
    let mut command = interpreter(script);
    command.args(args);
    spawn_command(command, script)
}

/// The same for a program that is not a script of tests/clients/ (a Java class, a Node
/// program), named `name` in failures.
pub fn spawn_command(mut command: Command, name: &str) -> Running {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let stdin = child.stdin.take();
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    Running {
        child,
        stdin,
        stdout: Some(stdout),
        script: name.to_string(),
    }
}

impl Running {
    /// Waits for the next line the script prints (e.g. "ready").
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        (self.stdout.as_mut().expect("stdout is read until finish"))
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{}: {e}", self.script));
        if line.is_empty() {
            panic!("{} ended early", self.script);
        }
        line.trim_end().to_string()
    }

    /// Writes one line to the script's standard input.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open until finish");
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: {e}", self.script));
    }

    /// Tells a consumer what was sent, as `(tag, count)` of each publisher, and then to
    /// finish: it stops once the last of each has arrived and its queue went quiet, not after
    /// its whole idle time (tests/clients/expectations.py).
    pub fn finish_expecting(mut self, sent: &[(&str, u64)]) -> serde_json::Value {
        for (tag, count) in sent {
            self.send(&format!("expect {tag} {count}"));
        }
        self.finish()
    }

    /// Tells the script to finish (closes its stdin) and returns its JSON summary: the last
    /// line it printed that is a JSON object (a library may print after it).
    pub fn finish(mut self) -> serde_json::Value {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        // Generous: a client drains its queue after the fault and closes; one that takes this
        // long is stuck, and the trial must say so rather than hang the suite.
        const FINISH_LIMIT: Duration = Duration::from_secs(300);
        let (lines, received) = std::sync::mpsc::channel();
        let stdout = self.stdout.take().expect("finish is called once");
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + FINISH_LIMIT;
        let mut printed: Vec<String> = Vec::new();
        let ended = loop {
            match received.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => printed.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break true,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break false,
            }
        };
        let tail = printed[printed.len().saturating_sub(5)..].join("\n");
        if !ended {
            let _ = self.child.kill();
            panic!(
                "{} did not finish within {FINISH_LIMIT:?} of being told to; the last it printed:\n{tail}",
                self.script
            );
        }
        let status = self.child.wait();
        (printed.iter().rev())
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(serde_json::Value::is_object)
            .unwrap_or_else(|| {
                panic!(
                    "{} printed no JSON summary ({status:?}); the last it printed:\n{tail}",
                    self.script
                )
            })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
