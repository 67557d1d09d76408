//! The bundled broker lab, as tether's integration tests and benchmarks drive it: the nodes'
//! ports ([`ports`], the one table, matching what `scripts/cluster` starts), and [`Lab`], a
//! guard that brings the lab up unless it already runs and stops it again only if it started
//! it. Nodes are broken and healed through `scripts/cluster` ([`Lab::kill`], [`Heal`], ...).

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Where every lab node listens, on 127.0.0.1. `scripts/cluster` computes the same numbers.
pub mod ports {
    /// The RabbitMQ nodes started by `scripts/cluster up rabbit` (`add` starts r4..r9).
    pub const RABBIT: [&str; 3] = ["r1", "r2", "r3"];
    /// The ActiveMQ brokers started by `scripts/cluster up activemq`.
    pub const ACTIVEMQ: [&str; 3] = ["b1", "b2", "b3"];

    /// The port of `endpoint` on lab node `node`: RabbitMQ `rN` has `amqp`, `stomp` and
    /// `management`, and over TLS `amqps`, `stomps` and `https`, and `dist` (Erlang distribution); ActiveMQ `bN` has `openwire`
    /// and `stomp`, and over TLS `ssl` (OpenWire) and `stomps`. Panics on anything else: a test naming a port the lab does not have is
    /// wrong.
    pub fn of(node: &str, endpoint: &str) -> u16 {
        let n: u16 = node[1..]
            .parse()
            .unwrap_or_else(|_| panic!("lab nodes are r1..r9 and b1..b3, not {node:?}"));
        match (&node[..1], endpoint) {
            ("r", "amqp") => 5680 + n,
            ("r", "stomp") => 61680 + n,
            ("r", "management") => 15680 + n,
            ("r", "amqps") => 5660 + n,
            ("r", "stomps") => 61660 + n,
            ("r", "https") => 15660 + n,
            ("r", "dist") => 25680 + n,
            ("b", "openwire") => 61715 + n,
            ("b", "stomp") => 61725 + n,
            ("b", "ssl") => 61735 + n,
            ("b", "stomps") => 61745 + n,
            _ => panic!("lab node {node} has no {endpoint} endpoint"),
        }
    }

    /// `127.0.0.1:PORT` of `endpoint` on `node`.
    pub fn address(node: &str, endpoint: &str) -> String {
        format!("127.0.0.1:{}", of(node, endpoint))
    }
}

/// Where `scripts/cluster` keeps the lab's state (`TETHER_LAB_DIR`, `/tmp/tether-lab` by
/// default).
pub fn dir() -> PathBuf {
    std::env::var_os("TETHER_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/tether-lab"))
}

/// A file of the lab's TLS material, made at lab start: `ca.pem` (the lab CA), `node.pem` and
/// `node.key` (every broker's), `client.pem` and `client.key` (a client certificate).
pub fn tls_file(name: &str) -> PathBuf {
    dir().join("tls").join(name)
}

/// The repository the lab's scripts live in.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lab/ is in the repository")
        .to_path_buf()
}

/// Runs `scripts/cluster ARGS`: its output, or why it failed.
pub fn script(args: &[&str]) -> Result<String, String> {
    let started = std::time::Instant::now();
    let output = Command::new(repo().join("scripts/cluster"))
        .args(args)
        .output()
        .map_err(|e| format!("cannot run scripts/cluster: {e}"))?;
    // What the suite's time goes to: node restarts dominate it.
    eprintln!(
        "lab: {} took {:.1} s",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "scripts/cluster {} failed:\n{text}",
            args.join(" ")
        ))
    }
}

/// Runs a lab command, panicking with its output on failure.
pub fn run(args: &[&str]) -> String {
    script(args).unwrap_or_else(|e| panic!("{e}"))
}

/// The lab while someone uses it: dropping it stops the clusters it started.
pub struct Lab {
    clusters: Vec<&'static str>,
    started_here: bool,
}

impl Lab {
    /// Brings up `clusters` ("rabbit", "activemq") unless they already run.
    pub fn up(clusters: &[&'static str]) -> Result<Lab, String> {
        let already = clusters.iter().all(|c| script(&["status", c]).is_ok());
        if !already {
            for cluster in clusters {
                script(&["up", cluster])?;
            }
        }
        Ok(Lab {
            clusters: clusters.to_vec(),
            started_here: !already,
        })
    }

    pub fn kill(&self, node: &str) {
        broken(node);
        run(&["kill", node]);
    }
    pub fn pause(&self, node: &str) {
        broken(node);
        run(&["pause", node]);
    }
    /// SIGCONT alone: a node paused past net_ticktime is partitioned from its peers until
    /// [`Lab::start`] heals it, so it still counts as broken.
    pub fn resume(&self, node: &str) {
        run(&["resume", node]);
    }
    /// A RabbitMQ user (administrator, all permissions on `/`) with `password`.
    pub fn user(&self, name: &str, password: &str) {
        run(&["user", name, password]);
    }
    /// Drops every packet to and from the node's client ports (nftables): its connections
    /// neither close nor answer. [`Lab::start`] (and so [`Lab::heal`]) lifts it.
    pub fn partition(&self, node: &str) {
        broken(node);
        run(&["partition", node]);
    }
    /// Crashes the node's AMQP channel processes: RabbitMQ closes those connections with 541
    /// INTERNAL_ERROR while the node itself stays up.
    pub fn crash_channels(&self, node: &str) {
        run(&["crash", node]);
    }
    /// Raises a memory alarm on the node: the cluster blocks its publishers
    /// (connection.blocked) until [`Lab::unalarm`].
    pub fn alarm(&self, node: &str) {
        run(&["alarm", node]);
    }
    pub fn unalarm(&self, node: &str) {
        run(&["unalarm", node]);
    }
    /// Makes `node` the leader of quorum queue `queue` (vhost `/`), as RabbitMQ's own
    /// rebalancing does: no node stops.
    pub fn lead(&self, queue: &str, node: &str) {
        run(&["leader", queue, node]);
    }
    pub fn stop(&self, node: &str) {
        broken(node);
        run(&["stop", node]);
    }
    pub fn start(&self, node: &str) {
        run(&["start", node]);
        broken_nodes().remove(node);
    }

    /// Brings `nodes` back when dropped, whatever state the caller left them in.
    pub fn heal(&self, nodes: &[&str]) -> Heal {
        Heal {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.started_here {
            for cluster in &self.clusters {
                if let Err(e) = script(&["down", cluster]) {
                    eprintln!("{e}");
                }
            }
        }
    }
}

/// The nodes broken through [`Lab`] and not started since, for [`Heal`].
static BROKEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn broken_nodes() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    // A test that panicked while holding it left the set as valid as before.
    BROKEN.lock().unwrap_or_else(|e| e.into_inner())
}

fn broken(node: &str) {
    broken_nodes().insert(node.to_string());
}

pub struct Heal {
    nodes: Vec<String>,
}

impl Drop for Heal {
    fn drop(&mut self) {
        // A node the test broke and brought back needs nothing more (a `start` of a running
        // node still costs seconds of checks); after a failure, every node is made sure of.
        let broken = broken_nodes().clone();
        let failed = std::thread::panicking();
        // Reverse order: RabbitMQ nodes stopped one after another want the last one back first.
        for node in self.nodes.iter().rev() {
            if !failed && !broken.contains(node) {
                continue;
            }
            if let Err(e) = script(&["start", node]) {
                eprintln!("could not heal {node}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ports;

    #[test]
    fn the_port_table_matches_scripts_cluster() {
        // scripts/cluster: rmq_ports() and amq_ports().
        let script = std::fs::read_to_string(super::repo().join("scripts/cluster")).unwrap();
        assert!(script.contains("$((5680+i)) $((61680+i)) $((15680+i))"));
        assert!(script.contains("$((61715+i)) $((61725+i))"));
        assert_eq!(ports::of("r1", "amqp"), 5681);
        assert_eq!(ports::of("r3", "stomp"), 61683);
        assert_eq!(ports::of("r2", "management"), 15682);
        assert_eq!(ports::of("b1", "openwire"), 61716);
        assert_eq!(ports::address("b3", "stomp"), "127.0.0.1:61728");
    }
}
