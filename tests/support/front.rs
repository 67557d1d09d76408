//! A tether with one protocol-aware listener in front of some of the lab's nodes, and what the
//! failover tests ask of it.

use super::config::{TetherConfig, lab_nodes};
use super::lab::Lab;
use super::tether::Tether;
use super::wait_for;
use std::time::Duration;

/// Quick checks, so that a test's faults are found in about a second.
const HEALTH: &str = r#"health = { interval = "500ms", timeout = "1s", rise = 2, fall = 2 }"#;
/// Rolling restarts take a while on two cores, and a session may wait that long for a node.
const FAILOVER_TIMEOUT: &str = r#"failover_timeout = "90s""#;

pub struct Front {
    pub tether: Tether,
    pub port: u16,
    pub cluster: &'static str,
}

impl Front {
    /// tether with a `protocol` listener in front of the lab's `nodes`, on their `protocol`
    /// endpoints. `extra` adds listener keys; `failover_timeout` defaults to 90 s, as rolling
    /// restarts take a while on two cores and a session may wait that long.
    pub fn start(protocol: &str, cluster: &'static str, nodes: &[&str], extra: &str) -> Front {
        Front::start_with(protocol, cluster, nodes, "", extra, "")
    }

    /// The same, with process-wide tables too (`[limits]`, say).
    pub fn start_with_tables(
        protocol: &str,
        cluster: &'static str,
        nodes: &[&str],
        extra: &str,
        tables: &str,
    ) -> Front {
        Front::start_with(protocol, cluster, nodes, "", extra, tables)
    }

    /// The same, with tether reaching the nodes over TLS: their `amqps`/`stomps` endpoints,
    /// verified against the lab CA.
    pub fn start_over_tls(
        protocol: &str,
        cluster: &'static str,
        nodes: &[&str],
        extra: &str,
    ) -> Front {
        let tls = format!(
            "tls = {{ ca_file = {:?} }}",
            super::lab::tls_file("ca.pem").display().to_string()
        );
        let endpoint = format!("{protocol}s");
        Front::start_with(
            &endpoint,
            cluster,
            nodes,
            &tls,
            &format!("endpoint = \"{endpoint}\"\n{extra}"),
            "",
        )
    }

    /// `endpoint` names the nodes' endpoint and, without its TLS `s`, the listener's protocol.
    fn start_with(
        endpoint: &str,
        cluster: &'static str,
        nodes: &[&str],
        cluster_keys: &str,
        extra: &str,
        tables: &str,
    ) -> Front {
        let protocol = endpoint.trim_end_matches('s');
        let extra = if extra.contains("failover_timeout") {
            extra.to_string()
        } else {
            format!("{FAILOVER_TIMEOUT}\n{extra}")
        };
        let mut config = TetherConfig::new().cluster(
            cluster,
            &format!(
                "{HEALTH}\n{cluster_keys}\n{}",
                lab_nodes(nodes, &[endpoint])
            ),
        );
        let port = config.listener(protocol, protocol, cluster, &extra);
        let config = config.raw(tables);
        Front {
            tether: config.start(),
            port,
            cluster,
        }
    }

    /// tether with a listener for each of `protocols` ("amqp", "stomp") in front of the lab's
    /// `nodes`; the front's `port` is the first listener's, and the ports of all are returned
    /// in the same order.
    pub fn start_listeners(
        cluster: &'static str,
        nodes: &[&str],
        protocols: &[&str],
    ) -> (Front, Vec<u16>) {
        let mut config = TetherConfig::new().cluster(
            cluster,
            &format!("{HEALTH}\n{}", lab_nodes(nodes, protocols)),
        );
        let ports: Vec<u16> = protocols
            .iter()
            .map(|p| config.listener(p, p, cluster, FAILOVER_TIMEOUT))
            .collect();
        let front = Front {
            tether: config.start(),
            port: ports[0],
            cluster,
        };
        (front, ports)
    }

    /// Every connection to a node went through a TLS handshake, and none failed one: prints
    /// how many handshakes were resumed.
    pub fn assert_over_tls(&self) {
        let full = self
            .tether
            .metric("tether_tls_handshakes_total", &[("kind", "full")]);
        let resumed = (self.tether).metric("tether_tls_handshakes_total", &[("kind", "resumed")]);
        let connects = self.tether.metric("tether_upstream_connects_total", &[]);
        let failed = (self.tether).metric("tether_connect_failures_total", &[("reason", "tls")]);
        eprintln!("TLS handshakes: {full} full, {resumed} resumed; {connects} connects");
        assert!(
            connects > 0.0 && full + resumed == connects,
            "a connect skipped TLS"
        );
        assert_eq!(failed, 0.0, "a TLS handshake with a lab node failed");
    }

    /// Nodes that hold at least one of tether's sessions.
    pub fn busy_nodes(&self) -> Vec<String> {
        self.tether
            .sessions_per_node(self.cluster)
            .into_iter()
            .filter(|(_, sessions)| *sessions > 0)
            .map(|(name, _)| name)
            .collect()
    }

    pub fn sessions_on(&self, node: &str) -> u64 {
        self.tether
            .sessions_per_node(self.cluster)
            .into_iter()
            .find(|(name, _)| name == node)
            .map_or(0, |(_, sessions)| sessions)
    }

    pub fn failovers(&self) -> f64 {
        self.tether.metric("tether_failovers_total", &[])
    }

    /// Waits until tether counts `total` failovers in all.
    pub fn wait_failovers(&self, total: f64) {
        // A failover takes a fraction of a second; a minute covers a loaded machine.
        wait_for(
            &format!("{total} failovers"),
            Duration::from_secs(60),
            || (self.failovers() >= total).then_some(()),
        );
    }

    /// Waits until no session is on `node` any more: they all failed over.
    pub fn wait_moved_off(&self, node: &str) {
        // Detection takes about 1.25 s (a hung node: no answer to tether's question), a failover a
        // fraction of a second; a minute covers a loaded machine.
        wait_for(
            &format!("sessions to leave {node}"),
            Duration::from_secs(60),
            || (self.sessions_on(node) == 0).then_some(()),
        );
    }

    /// Breaks each node that serves a session in turn, waits for its sessions to move, and
    /// brings it back before the next: every session fails over at least once, and quorum
    /// queues keep their majority throughout.
    pub fn break_each_busy_node(&self, lab: &Lab, break_node: fn(&Lab, &str)) {
        self.break_each_busy_node_for(lab, break_node, Duration::ZERO);
    }

    /// The same, keeping each node broken for at least `hold` (a hang of a known length).
    pub fn break_each_busy_node_for(&self, lab: &Lab, break_node: fn(&Lab, &str), hold: Duration) {
        let busy = self.busy_nodes();
        assert!(!busy.is_empty(), "no session is on any node");
        let _heal = lab.heal(&busy.iter().map(String::as_str).collect::<Vec<_>>());
        for node in &busy {
            let before = self.failovers();
            break_node(lab, node);
            let broken = std::time::Instant::now();
            self.wait_moved_off(node);
            eprintln!(
                "{node}: its sessions moved off in {:.1} s",
                broken.elapsed().as_secs_f64()
            );
            assert!(self.failovers() > before);
            std::thread::sleep(hold.saturating_sub(broken.elapsed()));
            lab.start(node);
        }
    }

    /// Stops and starts every node in `nodes` in turn, under traffic.
    pub fn rolling_restart(&self, lab: &Lab, nodes: &[&str]) {
        let _heal = lab.heal(nodes);
        for node in nodes {
            let sessions = self.sessions_on(node);
            lab.stop(node);
            if sessions > 0 {
                self.wait_moved_off(node);
            }
            lab.start(node);
        }
    }
}
