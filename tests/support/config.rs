//! tether configurations for tests: the preamble every test needs (a quick shutdown, an admin
//! listener on a free port), clusters of lab nodes whose addresses come from the lab's port
//! table, and listeners on free ports.

use super::free_port;
use super::lab::ports;
use super::tether::Tether;
use std::net::SocketAddr;

pub struct TetherConfig {
    pub admin: u16,
    text: String,
}

/// `nodes = [...]` for lab nodes with the given endpoints, e.g.
/// `lab_nodes(&["r1", "r2"], &["amqp", "stomp"])`.
pub fn lab_nodes(nodes: &[&str], endpoints: &[&str]) -> String {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|node| {
            let endpoints: Vec<String> = endpoints
                .iter()
                .map(|e| format!(r#"{e} = "{}""#, ports::address(node, e)))
                .collect();
            format!(r#"{{ name = "{node}", {} }}"#, endpoints.join(", "))
        })
        .collect();
    format!("nodes = [{}]", nodes.join(", "))
}

impl TetherConfig {
    /// `shutdown_grace = "1s"` and an admin listener on a free port.
    pub fn new() -> TetherConfig {
        TetherConfig::with_admin(free_port())
    }

    /// The same, with the admin listener on `admin` (a reload keeps it).
    pub fn with_admin(admin: u16) -> TetherConfig {
        TetherConfig {
            admin,
            text: format!("shutdown_grace = \"1s\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
        }
    }

    /// A `[[clusters]]` table: `name` and the TOML lines in `keys` (nodes, health, ...).
    pub fn cluster(mut self, name: &str, keys: &str) -> TetherConfig {
        self.text += &format!("[[clusters]]\nname = \"{name}\"\n{}\n", keys.trim());
        self
    }

    /// A `[[listeners]]` table on a free port, which is returned; `keys` adds lines.
    pub fn listener(&mut self, name: &str, protocol: &str, cluster: &str, keys: &str) -> u16 {
        let port = free_port();
        self.listener_on(port, name, protocol, cluster, keys);
        port
    }

    /// A `[[listeners]]` table on `port`.
    pub fn listener_on(
        &mut self,
        port: u16,
        name: &str,
        protocol: &str,
        cluster: &str,
        keys: &str,
    ) {
        self.text += &format!(
            "[[listeners]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\nprotocol = \"{protocol}\"\ncluster = \"{cluster}\"\n{}\n",
            keys.trim()
        );
    }

    /// Appends TOML as it is (a table of its own, say).
    pub fn raw(mut self, text: &str) -> TetherConfig {
        self.text += text;
        self.text += "\n";
        self
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin))
    }

    /// Starts tether with this configuration.
    pub fn start(self) -> Tether {
        Tether::start(&self.text, self.admin_addr())
    }

    /// The same, logging at `filter` (`TETHER_LOG`).
    pub fn start_logged(self, filter: &str) -> Tether {
        Tether::start_logged(&self.text, self.admin_addr(), filter)
    }
}
