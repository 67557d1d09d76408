//! The bundled broker lab (the `tether-lab` crate, shared with the tests), and which node
//! holds a connection (asked of RabbitMQ's management API).

use std::time::Duration;

#[derive(Clone, Copy)]
pub struct Lab;

impl Lab {
    pub fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        tether_lab::script(args).map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// The lab node that leads the quorum queue `queue`, if the management API says.
    pub fn queue_leader(&self, queue: &str) -> Option<String> {
        for port in tether_lab::ports::RABBIT.map(|n| tether_lab::ports::of(n, "management")) {
            let Ok(body) = http_get(port, &format!("/api/queues/%2f/{queue}")) else {
                continue;
            };
            let Ok(info) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            return info["leader"]
                .as_str()
                .and_then(|n| n.split('@').next())
                .map(str::to_owned);
        }
        None
    }

    /// The lab node (r1, r2, ...) that holds the connection named `name`, if any. Every
    /// node's management API is asked, and the newest such connection wins: a connection of a
    /// node that just failed can linger in the listings for a while.
    pub fn node_of_connection(&self, name: &str) -> Option<String> {
        let mut newest: Option<(u64, String)> = None;
        for port in tether_lab::ports::RABBIT.map(|n| tether_lab::ports::of(n, "management")) {
            let Ok(body) = http_get(port, "/api/connections") else {
                continue;
            };
            let Ok(serde_json::Value::Array(connections)) = serde_json::from_str(&body) else {
                continue;
            };
            for c in connections
                .iter()
                .filter(|c| c["client_properties"]["connection_name"].as_str() == Some(name))
            {
                let at = c["connected_at"].as_u64().unwrap_or(0);
                let Some(node) = c["node"].as_str().and_then(|n| n.split('@').next()) else {
                    continue;
                };
                if newest.as_ref().is_none_or(|(seen, _)| at > *seen) {
                    newest = Some((at, node.to_owned()));
                }
            }
        }
        newest.map(|(_, node)| node)
    }
}

impl Lab {
    /// Client connections in the whole cluster, as the management API counts them.
    pub fn connections(&self) -> Option<f64> {
        self.ask("/api/overview", |overview| {
            overview["object_totals"]["connections"].as_f64()
        })
    }

    /// Bytes RabbitMQ says `node`'s client connections hold: their reader, writer and channel
    /// processes and the rest of them.
    pub fn connection_memory(&self, node: &str) -> Option<u64> {
        self.ask(
            &format!("/api/nodes/{node}@localhost?memory=true"),
            |info| {
                let memory = &info["memory"];
                let parts = [
                    "connection_readers",
                    "connection_writers",
                    "connection_channels",
                    "connection_other",
                ];
                Some(parts.iter().filter_map(|p| memory[*p].as_u64()).sum())
            },
        )
    }

    /// Of the consumers of queues whose names start with `prefix`, how many run on the node
    /// that leads their queue (the management API's `/api/consumers` and `/api/queues`).
    pub fn local_consumers(&self, prefix: &str) -> Option<(usize, usize)> {
        let leaders = self.ask("/api/queues?columns=name,leader,node", |queues| {
            let queues = queues.as_array()?;
            Some(
                (queues.iter())
                    .filter_map(|q| {
                        let leader = q["leader"].as_str().or(q["node"].as_str())?;
                        Some((q["name"].as_str()?.to_owned(), leader.to_owned()))
                    })
                    .collect::<std::collections::HashMap<String, String>>(),
            )
        })?;
        self.ask("/api/consumers", |consumers| {
            let ours: Vec<(&str, &str)> = (consumers.as_array()?.iter())
                .filter_map(|c| {
                    let queue = c["queue"]["name"].as_str()?;
                    let node = c["channel_details"]["node"].as_str()?;
                    queue.starts_with(prefix).then_some((queue, node))
                })
                .collect();
            let local = (ours.iter())
                .filter(|(queue, node)| leaders.get(*queue).is_some_and(|l| l == node))
                .count();
            Some((local, ours.len()))
        })
    }

    /// The first node's management API that answers `path`, read by `read`.
    fn ask<T>(&self, path: &str, read: impl Fn(&serde_json::Value) -> Option<T>) -> Option<T> {
        for port in tether_lab::ports::RABBIT.map(|n| tether_lab::ports::of(n, "management")) {
            let Ok(body) = http_get(port, path) else {
                continue;
            };
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&body) {
                return read(&value);
            }
        }
        None
    }
}

/// GET on a management port as guest.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let address = tether::address::Address::Ip(([127, 0, 0, 1], port).into());
    let request = tether::http::Request {
        method: "GET",
        address: &address,
        path,
        authorization: Some("Basic Z3Vlc3Q6Z3Vlc3Q="),
    };
    let limits = tether::http::Limits {
        timeout: Duration::from_secs(5),
        max_body: 64 << 20,
    };
    let response =
        tether::http::request_blocking(&request, &limits).map_err(std::io::Error::other)?;
    if response.status != 200 {
        return Err(std::io::Error::other(format!("HTTP {}", response.status)));
    }
    Ok(response.text())
}
