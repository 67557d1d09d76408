//! `tether status`: asks a running tether's admin listener for `/status` and renders it for a
//! person at a terminal, the way `haproxy show stat` does: listeners, then each cluster's nodes
//! with the health of every endpoint, then the last failover.
//!
//! The report is read leniently (every field has a default, unknown fields are ignored) so that
//! one version of the command can show what another version of tether serves.

pub mod model;

use crate::address::Address;
use crate::http::{self, HttpError};
pub use model::{ClusterStatus, EndpointStatus, LastFailover, ListenerStatus, NodeStatus, Status};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where `tether status` looks when given neither `--admin` nor a config file.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9464";

/// The admin listener answers from memory; a slower answer means something is wrong.
/// For the whole request: connect, send, read the last byte.
const TIMEOUT: Duration = Duration::from_secs(10);
/// `/status` of even a large deployment is a few hundred kilobytes.
const MAX_RESPONSE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot resolve the admin address {address}: {source}")]
    Resolve { address: String, source: io::Error },
    #[error(
        "cannot reach tether's admin listener at {address}: {source}; is tether running, with [admin] listen = \"{address}\"?"
    )]
    Unreachable { address: String, source: io::Error },
    #[error("reading {path} from {address}: {source}")]
    Read {
        address: String,
        path: String,
        source: HttpError,
    },
    #[error("{address} did not answer {path} with HTTP 200: {status_line}")]
    Http {
        address: String,
        path: String,
        status_line: String,
    },
    #[error("{address} answered /status with something other than tether's JSON: {source}")]
    NotStatus {
        address: String,
        source: serde_json::Error,
    },
}

/// The address to reach an admin listener configured to listen on `listen`: a wildcard bind
/// (`0.0.0.0`, `[::]`) is reached on loopback.
pub fn admin_target(listen: SocketAddr) -> String {
    let mut target = listen;
    if target.ip().is_unspecified() {
        target.set_ip(if listen.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    target.to_string()
}

/// `GET /status` from the admin listener at `address` (`host:port`); the response body.
pub fn fetch(address: &str) -> Result<String, StatusError> {
    let (code, status_line, body) = call(address, "GET", "/status")?;
    if code != 200 {
        return Err(StatusError::Http {
            address: address.to_string(),
            path: "/status".into(),
            status_line,
        });
    }
    Ok(body)
}

/// `POST /reload` to the admin listener at `address`: `Ok` with tether's account of what
/// changed, `Err` with why it changed nothing (or why it could not be asked).
pub fn reload(address: &str) -> Result<Result<String, String>, StatusError> {
    let (code, status_line, body) = call(address, "POST", "/reload")?;
    match code {
        200 => Ok(Ok(body)),
        422 => Ok(Err(body)),
        _ => Err(StatusError::Http {
            address: address.to_string(),
            path: "/reload".into(),
            status_line,
        }),
    }
}

/// `POST /drain` (`on`) or `POST /undrain` of `node` to the admin listener at `address`: `Ok`
/// with tether's answer, `Err` with why it refused (an unknown node, say).
pub fn drain(
    address: &str,
    node: &str,
    cluster: Option<&str>,
    on: bool,
) -> Result<Result<String, String>, StatusError> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("node", node);
    if let Some(cluster) = cluster {
        query.append_pair("cluster", cluster);
    }
    let verb = if on { "/drain" } else { "/undrain" };
    let path = format!("{verb}?{}", query.finish());
    let (code, status_line, body) = call(address, "POST", &path)?;
    match code {
        200 => Ok(Ok(body)),
        400 | 404 => Ok(Err(body)),
        _ => Err(StatusError::Http {
            address: address.to_string(),
            path,
            status_line,
        }),
    }
}

/// Polls `/status` until no client session of any listener (in front of `cluster`, when
/// given) is on `node`, or `limit` passes; prints the count as it changes.
pub fn wait_drained(
    address: &str,
    node: &str,
    cluster: Option<&str>,
    limit: Duration,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let mut last = None;
    loop {
        let report = fetch(address)
            .and_then(|body| parse(address, &body))
            .map_err(|e| e.to_string())?;
        // Client sessions, as each listener counts them: a pooled or shared node connection
        // that no client uses any more is not waited for (it closes when the node stops).
        let sessions: usize = (report.listeners.iter())
            .filter(|l| cluster.is_none_or(|name| l.cluster == name))
            .filter_map(|l| l.nodes.get(node))
            .map(|share| share.sessions)
            .sum();
        if sessions == 0 {
            return Ok(());
        }
        if last != Some(sessions) {
            println!("{node}: {sessions} sessions still on it");
            last = Some(sessions);
        }
        if started.elapsed() >= limit {
            return Err(format!(
                "{node} still holds {sessions} sessions after {}; `tether status` shows them, \
                 and tether's log says why they did not move",
                humantime::format_duration(limit)
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One request to the admin listener: the status code, status line and body.
fn call(address: &str, method: &str, path: &str) -> Result<(u16, String, String), StatusError> {
    let target: Address = address.parse().map_err(|e: String| StatusError::Resolve {
        address: address.to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let request = http::Request {
        method,
        address: &target,
        path,
        authorization: None,
    };
    let limits = http::Limits {
        timeout: TIMEOUT,
        max_body: MAX_RESPONSE,
    };
    let response = http::request_blocking(&request, &limits).map_err(|e| match e {
        HttpError::Resolve { source, .. } => StatusError::Resolve {
            address: address.to_string(),
            source,
        },
        HttpError::Connect { source, .. } => StatusError::Unreachable {
            address: address.to_string(),
            source,
        },
        other => StatusError::Read {
            address: address.to_string(),
            path: path.to_string(),
            source: other,
        },
    })?;
    let status_line = format!("HTTP/1.1 {} {}", response.status, response.reason);
    Ok((response.status, status_line, response.text()))
}

/// Reads a `/status` body.
pub fn parse(address: &str, body: &str) -> Result<Status, StatusError> {
    serde_json::from_str(body).map_err(|source| StatusError::NotStatus {
        address: address.to_string(),
        source,
    })
}

/// Sessions shown one per line, at most; the rest are counted.
const LOCALITY_ROWS: usize = 50;

/// A listener's sessions that locality places: how many are local, and the first
/// [`LOCALITY_ROWS`] with their queues and leaders.
fn render_locality(out: &mut String, l: &model::ListenerStatus) {
    let local = l.locality.iter().filter(|c| c.local).count();
    let _ = writeln!(
        out,
        "\nlistener {}: {local} of {} sessions on their queues' leader",
        l.name,
        l.locality.len()
    );
    let mut table = Table::new(&["NODE", "ROLE", "VHOST", "QUEUES (LEADER)", "LOCAL"]);
    for c in l.locality.iter().take(LOCALITY_ROWS) {
        let queues: Vec<String> = (c.queues.iter())
            .map(|q| format!("{} ({})", q.name, or_dash(&q.leader)))
            .collect();
        table.row(vec![
            or_dash(&c.node).to_string(),
            if c.consumes { "consumer" } else { "publisher" }.to_string(),
            c.vhost.clone(),
            if queues.is_empty() {
                "-".to_string()
            } else {
                queues.join(", ")
            },
            if c.local { "yes" } else { "no" }.to_string(),
        ]);
    }
    out.push_str(&table.render());
    if l.locality.len() > LOCALITY_ROWS {
        let _ = writeln!(out, "... and {} more", l.locality.len() - LOCALITY_ROWS);
    }
}

/// The report as text: a header line, the listeners, a table of nodes per cluster, the last
/// failover. `now` dates the "ago" of the last failover.
pub fn render(report: &Status, address: &str, now: SystemTime) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tether {} at {address}, up {}",
        or_dash(&report.version),
        compact_duration(report.uptime_seconds)
    );

    out.push('\n');
    let mut listeners = Table::new(&[
        "LISTENER", "BIND", "PROTOCOL", "CLUSTER", "ENDPOINT", "SESSIONS", "POOLED", "SHARED",
    ]);
    for l in &report.listeners {
        listeners.row(vec![
            l.name.clone(),
            l.bind.clone(),
            l.protocol.clone(),
            l.cluster.clone(),
            l.endpoint.clone(),
            l.sessions.to_string(),
            match &l.pooled {
                Some(idle) => idle.values().sum::<usize>().to_string(),
                None => "-".to_owned(),
            },
            match &l.shared {
                Some(shared) => shared
                    .values()
                    .map(|s| s.connections)
                    .sum::<usize>()
                    .to_string(),
                None => "-".to_owned(),
            },
        ]);
    }
    if report.listeners.is_empty() {
        out.push_str("no listeners\n");
    } else {
        out.push_str(&listeners.render());
    }
    for l in report.listeners.iter().filter(|l| !l.locality.is_empty()) {
        render_locality(&mut out, l);
    }

    for cluster in &report.clusters {
        out.push('\n');
        let _ = writeln!(
            out,
            "cluster {}: {} of {} nodes up, balance {}{}, sources {}",
            cluster.name,
            cluster.nodes_up,
            cluster.nodes.len(),
            or_dash(&cluster.balance),
            if cluster.tls { ", over TLS" } else { "" },
            list_or_dash(&cluster.sources)
        );
        if cluster.nodes.is_empty() {
            out.push_str("  no nodes (discovery has found none yet)\n");
            continue;
        }
        let mut nodes = Table::new(&[
            "NODE", "STATE", "SESSIONS", "SOURCES", "ENDPOINT", "ADDRESS", "CHECK", "HEALTH",
            "SINCE", "FOR", "REASON",
        ]);
        for node in &cluster.nodes {
            let mut first = true;
            let node_columns = |first: bool| {
                if first {
                    vec![
                        node.name.clone(),
                        match (node.up, node.drained) {
                            (false, false) => "DOWN",
                            (false, true) => "DOWN, drained",
                            (true, false) => "up",
                            (true, true) => "drained",
                        }
                        .to_string(),
                        node.sessions.to_string(),
                        list_or_dash(&node.sources),
                    ]
                } else {
                    vec![String::new(); 4]
                }
            };
            for (name, endpoint) in &node.endpoints {
                let mut row = node_columns(first);
                first = false;
                row.push(name.clone());
                row.push(endpoint.address.clone());
                if endpoint.checked {
                    row.extend([
                        or_dash(&endpoint.check).to_string(),
                        match (endpoint.up, &endpoint.suspect) {
                            (false, _) => "DOWN",
                            (true, Some(_)) => "suspect",
                            (true, None) => "up",
                        }
                        .to_string(),
                        utc_timestamp(endpoint.since_unix),
                        compact_duration(endpoint.for_seconds),
                        match (endpoint.up, &endpoint.suspect) {
                            (true, Some(why)) => format!("checking now: {why}"),
                            _ => endpoint.reason.clone(),
                        },
                    ]);
                } else {
                    row.extend([
                        "-".to_string(),
                        "unchecked".to_string(),
                        "-".to_string(),
                        "-".to_string(),
                        "no listener uses this endpoint".to_string(),
                    ]);
                }
                nodes.row(row);
            }
            if first {
                let mut row = node_columns(true);
                row.extend(["-".to_string(), "no endpoints".to_string()]);
                nodes.row(row);
            }
        }
        out.push_str(&nodes.render());
    }

    out.push('\n');
    match &report.last_failover {
        None => out.push_str("last failover: none since tether started\n"),
        Some(f) => {
            let ago = now
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
                - f.at_unix;
            let _ = writeln!(
                out,
                "last failover: {} ({} ago), listener {}: {} -> {}, reason {}, took {:.3}s",
                utc_timestamp(f.at_unix),
                compact_duration(ago),
                f.listener,
                f.from,
                f.to,
                f.reason,
                f.seconds
            );
        }
    }
    out
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded, so
/// a long reason does not push trailing blanks.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str]) -> Table {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 < row.len() {
                    let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
                } else {
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(",")
    }
}

/// `45s`, `12m05s`, `3h12m`, `2d03h`: wide enough to compare at a glance, short enough for a
/// table.
pub fn compact_duration(seconds: f64) -> String {
    let total = if seconds.is_finite() && seconds > 0.0 {
        seconds as u64
    } else {
        0
    };
    let (days, hours, minutes, secs) = (
        total / 86_400,
        total / 3_600 % 24,
        total / 60 % 60,
        total % 60,
    );
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{secs:02}s")
    } else {
        format!("{secs}s")
    }
}

/// A Unix time as `2024-05-01T14:03:12Z` (UTC: the report may come from another host, and
/// tether carries no time-zone database).
pub fn utc_timestamp(unix: f64) -> String {
    if !unix.is_finite() || unix <= 0.0 {
        return "-".to_string();
    }
    let seconds = unix as i64;
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "version": "0.1.0",
      "uptime_seconds": 11655.2,
      "listeners": [
        {"name": "amqp", "bind": "127.0.0.1:5672", "protocol": "amqp", "cluster": "lab",
         "endpoint": "amqp", "sessions": 12, "pooled": {"r1": 2, "r2": 1},
         "shared": {"r1": {"connections": 2, "channels": 300}, "r2": {"connections": 1}}},
        {"name": "tcp", "bind": "127.0.0.1:5700", "protocol": "tcp", "cluster": "lab",
         "endpoint": "amqp", "sessions": 0}
      ],
      "clusters": [
        {"name": "lab", "balance": "random", "sources": ["static"], "nodes_up": 1,
         "future_field": true,
         "nodes": [
           {"name": "r1", "up": true, "sessions": 12, "sources": ["static"],
            "endpoints": {
              "amqp": {"address": "127.0.0.1:5681", "checked": true, "check": "amqp", "up": true,
                       "since_unix": 1714572192.5, "for_seconds": 754.0,
                       "reason": "2 consecutive amqp checks passed",
                       "suspect": "session failover (closed)"},
              "stomp": {"address": "127.0.0.1:61681", "checked": false, "check": "stomp",
                        "up": true, "since_unix": 1714572000.0, "for_seconds": 900.0,
                        "reason": "new node"}}},
           {"name": "r2", "up": false, "sessions": 0, "sources": ["static"],
            "endpoints": {
              "amqp": {"address": "127.0.0.1:5682", "checked": true, "check": "amqp",
                       "up": false, "since_unix": 1714572800.0, "for_seconds": 146.0,
                       "reason": "connect failed (refused): Connection refused (os error 111)"}}}
         ]}
      ],
      "last_failover": {"at_unix": 1714572800.2, "listener": "amqp", "from": "r2", "to": "r1",
                        "reason": "closed", "seconds": 0.1424}
    }"#;

    #[test]
    fn renders_each_consuming_session_with_its_queues_leaders() {
        let body = r#"{"listeners": [{"name": "amqp", "locality": [
            {"node": "r1", "vhost": "/", "consumes": true, "queues": [{"name": "q1", "leader": "r1"}],
             "local": true},
            {"node": "r2", "vhost": "/", "queues": [{"name": "q2", "leader": "r3"},
                                                    {"name": "q3", "leader": ""}], "local": false}
        ]}]}"#;
        let report = parse("127.0.0.1:9464", body).expect("parses");
        let text = render(&report, "127.0.0.1:9464", UNIX_EPOCH);
        assert!(
            text.contains("listener amqp: 1 of 2 sessions on their queues' leader"),
            "\n{text}"
        );
        assert!(text.contains("r1    consumer   /      q1 (r1)"), "\n{text}");
        assert!(text.contains("r2    publisher"), "\n{text}");
        assert!(text.contains("q2 (r3), q3 (-)"), "\n{text}");
        assert!(text.contains(" no\n"), "\n{text}");
    }

    #[test]
    fn renders_listeners_nodes_endpoints_and_the_last_failover() {
        let report = parse("127.0.0.1:9464", SAMPLE).expect("sample parses");
        let now = UNIX_EPOCH + Duration::from_secs_f64(1714572800.2 + 133.0);
        let text = render(&report, "127.0.0.1:9464", now);
        let expected = "\
tether 0.1.0 at 127.0.0.1:9464, up 3h14m

LISTENER  BIND            PROTOCOL  CLUSTER  ENDPOINT  SESSIONS  POOLED  SHARED
amqp      127.0.0.1:5672  amqp      lab      amqp      12        3       3
tcp       127.0.0.1:5700  tcp       lab      amqp      0         -       -

cluster lab: 1 of 2 nodes up, balance random, sources static
NODE  STATE  SESSIONS  SOURCES  ENDPOINT  ADDRESS          CHECK  HEALTH     SINCE                 FOR     REASON
r1    up     12        static   amqp      127.0.0.1:5681   amqp   suspect    2024-05-01T14:03:12Z  12m34s  checking now: session failover (closed)
                                stomp     127.0.0.1:61681  -      unchecked  -                     -       no listener uses this endpoint
r2    DOWN   0         static   amqp      127.0.0.1:5682   amqp   DOWN       2024-05-01T14:13:20Z  2m26s   connect failed (refused): Connection refused (os error 111)

last failover: 2024-05-01T14:13:20Z (2m13s ago), listener amqp: r2 -> r1, reason closed, took 0.142s
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn an_old_or_partial_report_still_renders() {
        let report = parse("a:1", r#"{"clusters": [{"name": "c"}]}"#).expect("lenient");
        let text = render(&report, "a:1", SystemTime::now());
        assert!(text.contains("no listeners"), "{text}");
        assert!(text.contains("cluster c: 0 of 0 nodes up"), "{text}");
        assert!(text.contains("no nodes"), "{text}");
        assert!(text.contains("last failover: none"), "{text}");
    }

    #[test]
    fn a_drained_node_says_so() {
        let mut report = parse("a:1", SAMPLE).expect("sample parses");
        let node = &mut report.clusters[0].nodes[0];
        node.drained = true;
        let name = node.name.clone();
        let text = render(&report, "a:1", SystemTime::now());
        let line = text
            .lines()
            .find(|l| l.starts_with(&name))
            .expect("the node's row");
        assert!(line.contains("drained"), "{line}");
    }

    #[test]
    fn what_is_not_json_is_named() {
        let error = parse("a:1", "<html>").expect_err("not JSON");
        assert!(
            error.to_string().contains("other than tether's JSON"),
            "{error}"
        );
    }

    #[test]
    fn durations_and_timestamps() {
        assert_eq!(compact_duration(0.4), "0s");
        assert_eq!(compact_duration(-3.0), "0s");
        assert_eq!(compact_duration(59.9), "59s");
        assert_eq!(compact_duration(725.0), "12m05s");
        assert_eq!(compact_duration(3.0 * 3600.0 + 125.0), "3h02m");
        assert_eq!(compact_duration(2.0 * 86_400.0 + 3.0 * 3600.0), "2d03h");
        assert_eq!(utc_timestamp(0.0), "-");
        assert_eq!(utc_timestamp(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_714_572_192.9), "2024-05-01T14:03:12Z");
        assert_eq!(utc_timestamp(4_107_542_399.0), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn a_wildcard_admin_bind_is_reached_on_loopback() {
        assert_eq!(
            admin_target("0.0.0.0:9464".parse().unwrap()),
            "127.0.0.1:9464"
        );
        assert_eq!(admin_target("[::]:9464".parse().unwrap()), "[::1]:9464");
        assert_eq!(
            admin_target("10.1.2.3:9464".parse().unwrap()),
            "10.1.2.3:9464"
        );
    }

    #[test]
    fn a_closed_port_is_unreachable_with_a_hint() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let error = fetch(&address).expect_err("nothing listens there");
        assert!(matches!(error, StatusError::Unreachable { .. }), "{error}");
        assert!(error.to_string().starts_with(&format!(
            "cannot reach tether's admin listener at {address}: "
        )));
    }
}
