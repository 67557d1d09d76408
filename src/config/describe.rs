//! What a configuration would run, in words, for `tether check`.

use super::{ClusterConfig, Config};
use std::fmt::Write;

pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    for listener in &config.listeners {
        let _ = writeln!(out, "{}", crate::listener::describe(listener));
    }
    for cluster in &config.clusters {
        describe_cluster(&mut out, cluster);
    }
    match &config.admin {
        Some(admin) => {
            let _ = writeln!(out, "admin on {} (/metrics /healthz /status)", admin.listen);
        }
        None => out.push_str("admin listener off\n"),
    }
    let _ = writeln!(
        out,
        "shutdown grace {}",
        humantime::format_duration(config.shutdown_grace)
    );
    out
}

fn describe_cluster(out: &mut String, cluster: &ClusterConfig) {
    let health = &cluster.health;
    let _ = writeln!(
        out,
        "cluster {}: balance {}; health every {} (timeout {}, rise {}, fall {}, backoff up to {}); connect timeout {}",
        cluster.name,
        cluster.balance,
        humantime::format_duration(health.interval),
        humantime::format_duration(health.timeout),
        health.rise,
        health.fall,
        humantime::format_duration(health.max_backoff),
        humantime::format_duration(cluster.connect_timeout),
    );
    if let Some(tls) = &cluster.tls {
        let trust = match (&tls.ca_file, tls.insecure) {
            (_, true) => "NOT verified (insecure)".to_string(),
            (Some(ca), false) => format!("verified against {}", ca.display()),
            (None, false) => "verified against the system's roots".to_string(),
        };
        let _ = writeln!(
            out,
            "  tls: every endpoint, health check and discovery over TLS; certificates {trust}{}{}",
            match &tls.server_name {
                Some(name) => format!(" as {name:?}"),
                None => String::new(),
            },
            match &tls.cert_file {
                Some(cert) => format!("; client certificate {}", cert.display()),
                None => String::new(),
            }
        );
    }
    for node in &cluster.nodes {
        let endpoints: Vec<String> = node
            .endpoints
            .iter()
            .map(|(name, address)| format!("{name}={address}"))
            .collect();
        let _ = writeln!(out, "  node {}: {}", node.name, endpoints.join(" "));
    }
    let ports: Vec<String> = cluster
        .ports
        .iter()
        .map(|(name, port)| format!("{name}={port}"))
        .collect();
    for host in &cluster.hosts {
        let _ = writeln!(
            out,
            "  nodes: every address of {host} (ports {}), re-resolved on TTL",
            ports.join(" ")
        );
    }
    if let Some(srv) = &cluster.dns_srv {
        let _ = writeln!(
            out,
            "  nodes: every target of SRV {srv}{}, re-resolved on TTL",
            if ports.is_empty() {
                String::new()
            } else {
                format!(" (other ports {})", ports.join(" "))
            }
        );
    }
    if let Some(rabbitmq) = &cluster.discovery.rabbitmq {
        let _ = writeln!(
            out,
            "  nodes: learned from RabbitMQ's management API at {} (user {}), every {} and after any node failure",
            rabbitmq.url,
            rabbitmq.username,
            humantime::format_duration(rabbitmq.interval)
        );
    }
    if let Some(activemq) = &cluster.discovery.activemq {
        let _ = writeln!(
            out,
            "  nodes: learned from ActiveMQ's ConnectionControl updates through {}{}",
            activemq.url,
            if activemq.endpoints.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} brokers with endpoints of their own)",
                    activemq.endpoints.len()
                )
            }
        );
    }
    if cluster.rebalance {
        let _ = writeln!(
            out,
            "  rebalance: on, at most one move every {}",
            humantime::format_duration(cluster.rebalance_pace)
        );
    }
    if cluster.locality {
        let _ = writeln!(
            out,
            "  locality: on, consumers follow their queue's leader, at most one move every {}",
            humantime::format_duration(cluster.rebalance_pace)
        );
    }
}
