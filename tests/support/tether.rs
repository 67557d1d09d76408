//! A tether process run from the binary under test with a config written by the test.

use super::{http_get, prom, wait_for};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Tether {
    child: Child,
    pub admin: SocketAddr,
    config: tempfile::NamedTempFile,
    log: tempfile::NamedTempFile,
}

impl Tether {
    /// Starts `tether run` with `config` (which must have an `[admin]` on `admin`) and waits
    /// until its admin listener answers.
    pub fn start(config: &str, admin: SocketAddr) -> Tether {
        Tether::start_logged(config, admin, "info,tether=debug")
    }

    /// The same, logging at `filter` (`TETHER_LOG`).
    pub fn start_logged(config: &str, admin: SocketAddr, filter: &str) -> Tether {
        let mut file = tempfile::NamedTempFile::new().expect("temp config");
        file.write_all(config.as_bytes()).expect("write config");
        let log = tempfile::NamedTempFile::new().expect("temp log");
        let child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["run", "-c"])
            .arg(file.path())
            .env("TETHER_LOG", filter)
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log handle"))
            .spawn()
            .expect("start tether");
        let mut tether = Tether {
            child,
            admin,
            config: file,
            log,
        };
        // Startup is a few milliseconds; the bound covers a loaded machine.
        wait_for("tether's admin listener", Duration::from_secs(30), || {
            if let Ok(Some(status)) = tether.child.try_wait() {
                panic!(
                    "tether exited at startup ({status}):\n{}",
                    tether.log_text()
                );
            }
            http_get(admin, "/healthz").ok().filter(|(s, _)| *s == 200)
        });
        tether
    }

    /// `tether reload` against this tether: whether it reloaded, and what it said.
    pub fn reload_cli(&self) -> (bool, String) {
        self.cli(&["reload"])
    }

    /// A `tether` command (`reload`, `drain NODE`, ...) against this tether's admin listener:
    /// whether it succeeded, and what it printed.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(args)
            .args(["--admin", &self.admin.to_string()])
            .output()
            .unwrap_or_else(|e| panic!("run tether {args:?}: {e}"));
        let said = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), said)
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").expect("GET /metrics").1
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        prom::value(&self.metrics(), name, labels)
    }

    pub fn status(&self) -> serde_json::Value {
        let body = http_get(self.admin, "/status").expect("GET /status").1;
        serde_json::from_str(&body).expect("/status is JSON")
    }

    /// Sessions per node of `cluster`, from `/status`.
    pub fn sessions_per_node(&self, cluster: &str) -> Vec<(String, u64)> {
        let status = self.status();
        let clusters = status["clusters"].as_array().cloned().unwrap_or_default();
        let cluster = clusters
            .iter()
            .find(|c| c["name"] == cluster)
            .unwrap_or_else(|| panic!("no cluster {cluster} in /status"));
        cluster["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                (
                    n["name"].as_str().unwrap_or_default().to_string(),
                    n["sessions"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file tether was started with, which a reload reads again.
    pub fn config_path(&self) -> &std::path::Path {
        self.config.path()
    }

    /// Replaces the config file's contents (for a reload to pick up).
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(self.config.path(), text).expect("rewrite config");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Stops tether with SIGTERM and returns its exit code.
    pub fn terminate(mut self) -> Option<i32> {
        self.signal("TERM");
        // Shutdown waits at most the configured grace period (tests use short ones).
        let status = wait_for("tether to exit", Duration::from_secs(60), || {
            self.child.try_wait().ok().flatten()
        });
        status.code()
    }

    /// Waits up to `limit` for tether to exit by itself; its exit code.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<i32> {
        let status = wait_for("tether to exit", limit, || {
            self.child.try_wait().ok().flatten()
        });
        status.code()
    }

    /// Sends a signal by name ("TERM", "HUP", ...).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status();
    }
}

impl Drop for Tether {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            // The whole log goes to a file; the output keeps only its end, so that the panic's
            // message above it stays in sight of whoever reads the tail of a long CI run.
            let text = self.log_text();
            let path = format!(
                "{}/tether-{}.log",
                env!("CARGO_TARGET_TMPDIR"),
                self.child.id()
            );
            let _ = std::fs::write(&path, &text);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(12)..].join("\n");
            eprintln!("--- the end of tether's log (all of it: {path}) ---\n{tail}");
        }
    }
}
