//! The bundled broker clusters, driven through `scripts/cluster`.
//!
//! A test binary calls [`Lab::up`] once; the lab is stopped when the returned guard drops, but
//! only if this binary started it (a suite runner may keep one lab up for several binaries).
//! Tests that break a node hold a [`Heal`] guard so the node is brought back even when the
//! test fails, leaving the lab healthy for the next test.

use super::REPO;
use std::process::Command;

pub struct Lab {
    clusters: Vec<&'static str>,
    started_here: bool,
}

fn script(args: &[&str]) -> Result<String, String> {
    let output = Command::new(format!("{REPO}/scripts/cluster"))
        .args(args)
        .output()
        .map_err(|e| format!("cannot run scripts/cluster: {e}"))?;
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

impl Lab {
    /// Brings up `clusters` ("rabbit", "activemq") unless they already run.
    pub fn up(clusters: &[&'static str]) -> Lab {
        let already = clusters.iter().all(|c| script(&["status", c]).is_ok());
        if !already {
            for cluster in clusters {
                run(&["up", cluster]);
            }
        }
        Lab {
            clusters: clusters.to_vec(),
            started_here: !already,
        }
    }

    pub fn kill(&self, node: &str) {
        run(&["kill", node]);
    }
    pub fn pause(&self, node: &str) {
        run(&["pause", node]);
    }
    pub fn resume(&self, node: &str) {
        run(&["resume", node]);
    }
    /// Crashes the node's AMQP channel processes: RabbitMQ closes those connections with 541
    /// INTERNAL_ERROR while the node itself stays up.
    pub fn crash_channels(&self, node: &str) {
        run(&["crash", node]);
    }
    pub fn stop(&self, node: &str) {
        run(&["stop", node]);
    }
    pub fn start(&self, node: &str) {
        run(&["start", node]);
    }

    /// Brings `nodes` back when dropped, whatever state the test left them in.
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

pub struct Heal {
    nodes: Vec<String>,
}

impl Drop for Heal {
    fn drop(&mut self) {
        // Reverse order: RabbitMQ nodes stopped one after another want the last one back first.
        for node in self.nodes.iter().rev() {
            if let Err(e) = script(&["start", node]) {
                eprintln!("could not heal {node}: {e}");
            }
        }
    }
}
