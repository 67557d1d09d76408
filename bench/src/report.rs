//! The results: `{scenario: {target: {metric: value}}}` as JSON, a markdown table with the
//! ratios tether/direct and tether/HAProxy, and PNG charts.

use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

pub const TARGETS: [&str; 3] = ["direct", "haproxy", "tether"];
/// The table's rows: the targets, and where a scenario measures them (c), tether with its pool
/// and the ceiling (a connection held open), (g) tether with multiplexing, (j) tether with
/// queue locality.
const ROWS: [&str; 7] = [
    "direct",
    "haproxy",
    "tether",
    "tether_local",
    "tether_pooled",
    "tether_multiplexed",
    "direct_held",
];

#[derive(Default, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub scenarios: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
}

/// What each scenario is, for the table; in the order the table lists them.
pub const SCENARIOS: [(&str, &str); 17] = [
    (
        "a_amqp_confirms",
        "a. AMQP, confirms, 1 KiB, 8 publishers / 8 consumers, flat out",
    ),
    (
        "a_tls_amqp_confirms",
        "a over TLS: the same load, the broker reached over TLS (direct: the client's own TLS; \
         HAProxy: `ssl verify required`, name checked; tether: the cluster's `tls`). Clients \
         speak plain AMQP to the proxies",
    ),
    (
        "b_stomp_receipts",
        "b. STOMP, receipts, 1 KiB, 8 publishers / 8 consumers, flat out",
    ),
    (
        "c_connect_per_message",
        "c. AMQP connect, publish one with a confirm, close (connect per message), 4 clients; \
         p50/p99: from connect to the confirm. `tether`: a listener with `pool = { max_idle = 0 }`; \
         `tether_pooled`: the default pool; `direct_held`: \
         the ceiling, the same publish on a connection held open (no connect at all)",
    ),
    ("d_tcp_bulk", "d. opaque TCP, bulk bytes, 4 streams"),
    ("d_tcp_bulk_64", "d with 64 parallel streams"),
    (
        "i_fixed_rate_1k",
        "i. AMQP at a fixed rate: 1,000 msg/s (4 publishers at 250/s, confirms, 1 KiB, 4 \
         consumers), publish-to-deliver latency from an HDR histogram. `added_*_ms`: the \
         target's latency less the direct connection's, in the same run",
    ),
    (
        "i_fixed_rate_5k",
        "i. the same at 5,000 msg/s (4 publishers at 1,250/s)",
    ),
    (
        "e_failover_kill",
        "e. failover: kill -9 the node in use (restarted once confirms flow again, or after 30 s). \
         `queue_leader_hits`: faults that also took the quorum queue's leader; RabbitMQ 3.10 \
         then nacks every publish of a channel opened in the instant of the fault until that \
         node is back (tether sets such a session up again after 0.5 s of refusals)",
    ),
    (
        "e_tls_failover_kill",
        "e over TLS: kill -9 the node in use, the nodes reached over TLS (AMQPS)",
    ),
    (
        "e_failover_sigstop",
        "e. failover: SIGSTOP the node in use (resumed once confirms flow again, or after 30 s). \
         A hung quorum-queue leader takes no publish until the other nodes give up on it \
         (net_ticktime, 15 s in the lab): the faults that hit it stall every client that long",
    ),
    ("f_memory", "f. memory"),
    (
        "j_locality",
        "j. queue locality: 6 quorum queues led two by each node, 2 consumers each through the \
         proxy, publishers straight to each queue's leader at 250 msg/s each (confirms, 1 KiB). \
         `haproxy`: round-robin; `tether`: random, `locality` off; `tether_local`: `locality = \
         true`. `local_consumers`: of `consumers`, those on their queue's leader when measuring \
         started (the management API's view). `broker_cpu_s_per_million`: CPU of all three nodes per million messages; \
         `internode_kb_per_msg`: bytes over the inter-node (Erlang distribution) links, both \
         ways, per message (the kernel's count on those sockets)",
    ),
    (
        "j_locality_classic",
        "j with classic queues, each held by the node it was declared on",
    ),
    (
        "g_held_1k",
        "g. 1,000 AMQP client connections held open (a minimal client, a channel each) against one node: \
         what the broker pays. `broker_rss_mb`: growth of the node's beam.smp RSS (the VM keeps \
         freed memory a while: a row measured after another may reuse it; rows run \
         tether_multiplexed, haproxy, direct); `broker_connection_memory_mb`: RabbitMQ's own \
         count of what its connections hold; `broker_connections`: the management API's count; \
         `tether_multiplexed`: a listener with `pool = { multiplex = true }`",
    ),
    (
        "g_held_10k",
        "g with 10,000 client connections (fewer where the open-file limit allows no more: \
         `clients` says how many; HAProxy needs two descriptors per connection)",
    ),
    (
        "h_restart",
        "h. restart under load: the proxy itself restarted 10 times under scenario e's \
         publisher (confirms, 200/s, reconnecting on any error) and consumer. tether: `tether run \
         --takeover`; HAProxy: its seamless reload (`-x` with `expose-fd listeners`, `-sf`), whose \
         old process cuts what it still serves after `hard-stop-after 5s`. `max_gap_s`: the \
         longest publish stall around a restart; `client_errors`: errors the application saw \
         (each one a reconnect)",
    ),
];

impl Report {
    pub fn set(&mut self, scenario: &str, target: &str, metric: &str, value: f64) {
        self.scenarios
            .entry(scenario.to_owned())
            .or_default()
            .entry(target.to_owned())
            .or_default()
            .insert(metric.to_owned(), value);
    }

    pub fn markdown(&self, title: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# {title}\n");
        let _ = writeln!(
            out,
            "One run, side by side on one machine (2 cores): the brokers, the proxy under test and \
             the load generator share it, so absolute numbers are low; the ratios are what \
             carries over. `-` means not measured for that target (a direct connection has no \
             proxy) or not applicable.\n"
        );
        for (key, description) in SCENARIOS {
            let Some(targets) = self.scenarios.get(key) else {
                let _ = writeln!(out, "## {description}\n\nnot run in this report\n");
                continue;
            };
            let metrics: Vec<&String> = {
                let mut all: Vec<&String> = targets.values().flat_map(|m| m.keys()).collect();
                all.sort();
                all.dedup();
                all
            };
            let _ = writeln!(out, "## {description}\n");
            let _ = writeln!(
                out,
                "| target | {} |",
                metrics
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            let _ = writeln!(
                out,
                "|---|{}|",
                metrics.iter().map(|_| "---:").collect::<Vec<_>>().join("|")
            );
            for target in ROWS {
                let Some(values) = targets.get(target) else {
                    continue;
                };
                let cells: Vec<String> = metrics
                    .iter()
                    .map(|m| values.get(*m).map_or("-".into(), |v| format_value(*v)))
                    .collect();
                let _ = writeln!(out, "| {target} | {} |", cells.join(" | "));
            }
            let pairs = ["tether", "tether_pooled", "tether_multiplexed"]
                .into_iter()
                .flat_map(|t| ["direct", "haproxy"].map(|base| (t, base)))
                .chain([("tether_local", "tether"), ("tether_local", "haproxy")]);
            for (proxy, base) in pairs {
                let (Some(tether), Some(other)) = (targets.get(proxy), targets.get(base)) else {
                    continue;
                };
                let cells: Vec<String> = metrics
                    .iter()
                    .map(|m| match (tether.get(*m), other.get(*m)) {
                        (Some(t), Some(o)) if *o != 0.0 => format!("{:.2}", t / o),
                        _ => "-".into(),
                    })
                    .collect();
                if cells.iter().any(|c| c != "-") {
                    let _ = writeln!(out, "| {proxy} / {base} | {} |", cells.join(" | "));
                }
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(
            out,
            "Ratios: above 1 is better for rates (`*_per_s`, `gb_per_s`), below 1 is better for \
             times, CPU, memory, gaps, errors and losses ({}).",
            ["p99_ms", "cpu_s_per_million", "rss_mb", "max_gap_s"].join(", ")
        );
        out
    }

    /// Bar charts: throughput, latency, failover gaps.
    pub fn charts(&self, dir: &Path, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut written = Vec::new();
        let charts: [Chart; 3] = [
            (
                "throughput",
                "messages per second (more is better)",
                &[
                    ("a_amqp_confirms", "msg_per_s"),
                    ("b_stomp_receipts", "msg_per_s"),
                    ("c_connect_per_message", "msg_per_s"),
                ],
            ),
            (
                "latency",
                "p99 publish-to-deliver latency, ms (less is better)",
                &[
                    ("a_amqp_confirms", "p99_ms"),
                    ("b_stomp_receipts", "p99_ms"),
                ],
            ),
            (
                "failover",
                "longest publish gap, s (less is better)",
                &[
                    ("e_failover_kill", "max_gap_s"),
                    ("e_failover_sigstop", "max_gap_s"),
                ],
            ),
        ];
        for (name, title, series) in charts {
            let file = dir.join(format!("{prefix}-{name}.png"));
            if self.bar_chart(&file, title, series)? {
                written.push(file.display().to_string());
            }
        }
        Ok(written)
    }

    fn bar_chart(&self, file: &Path, title: &str, series: &[(&str, &str)]) -> anyhow::Result<bool> {
        let values: Vec<(String, [Option<f64>; 3])> = series
            .iter()
            .filter_map(|(scenario, metric)| {
                let targets = self.scenarios.get(*scenario)?;
                let row = TARGETS.map(|t| targets.get(t).and_then(|m| m.get(*metric)).copied());
                Some((
                    scenario.split('_').next().unwrap_or(scenario).to_owned()
                        + " "
                        + &scenario[2..],
                    row,
                ))
            })
            .collect();
        let max = values
            .iter()
            .flat_map(|(_, row)| row.iter().flatten())
            .copied()
            .fold(0.0f64, f64::max);
        if values.is_empty() || max <= 0.0 {
            return Ok(false);
        }
        let root = BitMapBackend::new(file, (900, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let groups = values.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..(groups as f64 * 4.0), 0.0..(max * 1.15))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_label_formatter(&|v| format_value(*v))
            .draw()?;
        let colors = [
            RGBColor(120, 120, 120),
            RGBColor(220, 120, 40),
            RGBColor(40, 110, 200),
        ];
        for (group, (label, row)) in values.iter().enumerate() {
            let base = group as f64 * 4.0 + 0.5;
            for (index, value) in row.iter().enumerate() {
                let Some(value) = value else { continue };
                let x = base + index as f64;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x, 0.0), (x + 0.9, *value)],
                    colors[index].filled(),
                )))?;
                chart.draw_series(std::iter::once(Text::new(
                    format_value(*value),
                    (x, *value + max * 0.02),
                    ("sans-serif", 13),
                )))?;
            }
            chart.draw_series(std::iter::once(Text::new(
                label.clone(),
                (base, -max * 0.06),
                ("sans-serif", 14),
            )))?;
        }
        for (index, target) in TARGETS.iter().enumerate() {
            let color = colors[index];
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, 0.0), (0.0, 0.0)],
                    color.filled(),
                )))?
                .label(*target)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()?;
        root.present()?;
        Ok(true)
    }
}

/// A chart: its file name, its title, and the (scenario, metric) pairs it shows.
type Chart<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "-".into()
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}
