//! Real client programs (pika and stomp.py in Python, the stomp gem in Ruby) run as child
//! processes from tests/clients/.

use super::REPO;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

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
    stdout: BufReader<ChildStdout>,
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
        stdout,
        script: name.to_string(),
    }
}

impl Running {
    /// Waits for the next line the script prints (e.g. "ready").
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
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

    /// Tells the script to finish (closes its stdin) and returns its JSON summary.
    pub fn finish(mut self) -> serde_json::Value {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let mut rest = String::new();
        for line in (&mut self.stdout).lines().map_while(Result::ok) {
            rest = line;
        }
        let _ = self.child.wait();
        serde_json::from_str(&rest)
            .unwrap_or_else(|_| panic!("{} printed no JSON summary: {rest:?}", self.script))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
