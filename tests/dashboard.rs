//! The Grafana dashboard in `dashboards/tether.json` shows data: a real Prometheus scrapes a
//! tether that carries pika traffic to the bundled RabbitMQ cluster through one kill -9
//! failover, and every query of every panel must return a series. A metric the dashboard
//! names that tether does not export fails the test, unless `dashboards/pending-metrics.json`
//! lists it (metrics still being added; they are checked as soon as tether exports them). A
//! metric tether exports that no panel shows fails it too. `/metrics` must pass
//! `promtool check metrics`.

mod support;

use libtest_mimic::Failed;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::front::Front;
use support::lab::{Lab, ports};
use support::suite::Suite;
use support::{REPO, clients, free_port, http_get, wait_for};

const CLUSTER: &str = "lab";
/// `Front::start` names the listener after its protocol.
const LISTENER: &str = "amqp";

fn dashboard() -> Value {
    let path = format!("{REPO}/dashboards/tether.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn pending_metrics() -> BTreeSet<String> {
    let path = format!("{REPO}/dashboards/pending-metrics.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One query of one panel.
struct Query {
    panel: String,
    expr: String,
}

/// Every panel query, rows' nested panels included.
fn queries(dashboard: &Value) -> Vec<Query> {
    fn walk(panels: &Value, out: &mut Vec<Query>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(Query {
                        panel: title.to_string(),
                        expr: expr.to_string(),
                    });
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The `tether_*` metric names a PromQL expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (start, _) in expr.match_indices("tether_") {
        if expr[..start].ends_with(ident) {
            continue;
        }
        let end = expr[start..]
            .find(|c| !ident(c))
            .map_or(expr.len(), |i| start + i);
        names.insert(expr[start..end].to_string());
    }
    names
}

/// Grafana's variables as a test run fills them in: `cluster` and `listener` as the "All"
/// regex or as the real names, the interval variables as fixed windows (scrapes are 1 s apart,
/// so a minute holds plenty of samples).
fn substitute(expr: &str, cluster: &str, listener: &str) -> String {
    let mut expr = expr.to_string();
    for (name, value) in [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__range", "10m"),
        ("cluster", cluster),
        ("listener", listener),
    ] {
        expr = expr
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    expr
}

/// The names of the samples in a Prometheus text exposition (`x_bucket`, not `x`, for a
/// histogram), and the families its `# TYPE` lines declare.
fn exported(metrics: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            if let Some(name) = declared.split_whitespace().next() {
                families.insert(name.to_string());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    (samples, families)
}

/// Structure Grafana needs to import the dashboard with a data source of the user's choosing.
fn dashboard_is_well_formed() -> Result<(), Failed> {
    let dashboard = dashboard();
    let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
    assert!(schema >= 38, "schemaVersion {schema}");
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no templating variable {name}"))
    };
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    for (name, metric) in [
        ("cluster", "tether_node_up"),
        ("listener", "tether_sessions"),
    ] {
        let v = variable(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(
            v["definition"],
            format!("label_values({metric}, {name})"),
            "{name}"
        );
        assert_eq!(v["includeAll"], true, "{name}");
        assert_eq!(v["allValue"], ".*", "{name}");
    }

    let mut ids = BTreeSet::new();
    let mut panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    for panel in &panels {
        let id = panel["id"].as_u64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} twice");
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "{panel}: gridPos.{key}");
        }
    }
    panels.retain(|p| p["type"] != "row");
    assert!(panels.len() >= 15, "{} panels", panels.len());
    for panel in &panels {
        let title = &panel["title"];
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: panels use the data source variable"
        );
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no queries");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            assert!(target["expr"].is_string(), "{title}: a target without expr");
        }
    }

    let named: BTreeSet<String> = queries(&dashboard)
        .iter()
        .flat_map(|q| metric_names(&q.expr))
        .collect();
    for pending in pending_metrics() {
        assert!(
            named.contains(&pending),
            "pending-metrics.json lists {pending}, which no panel uses"
        );
    }
    for wanted in [
        "tether_node_up",
        "tether_endpoint_up",
        "tether_upstream_sessions",
        "tether_sessions",
        "tether_sessions_total",
        "tether_failovers_total",
        "tether_failover_duration_seconds_bucket",
        "tether_replayed_total",
        "tether_unconfirmed",
        "tether_stale_acks_dropped_total",
        "tether_topology_updates_total",
        "tether_rebalance_moves_total",
        "tether_drain_moves_total",
        "tether_node_drained",
        "tether_locality_moves_total",
        "tether_locality_sessions",
        "tether_bytes_total",
        "tether_connect_failures_total",
        "tether_health_checks_total",
    ] {
        assert!(named.contains(wanted), "no panel shows {wanted}");
    }
    Ok(())
}

/// A Prometheus server scraping tether's `/metrics` every second, killed when dropped.
struct Prometheus {
    child: Child,
    address: SocketAddr,
    _config: tempfile::NamedTempFile,
    _storage: tempfile::TempDir,
    log: tempfile::NamedTempFile,
}

impl Prometheus {
    fn start(tether_admin: SocketAddr) -> Prometheus {
        let mut config = tempfile::NamedTempFile::new().expect("temp config");
        write!(
            config,
            r#"
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: tether
    static_configs:
      - targets: ["{tether_admin}"]
"#
        )
        .expect("write prometheus config");
        let storage = tempfile::tempdir().expect("temp tsdb");
        let log = tempfile::NamedTempFile::new().expect("temp log");
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.path().display()))
            .arg(format!("--storage.tsdb.path={}", storage.path().display()))
            .arg(format!("--web.listen-address={address}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log handle"))
            .stderr(log.reopen().expect("log handle"))
            .spawn()
            .unwrap_or_else(|e| panic!("prometheus (Debian package prometheus) is needed: {e}"));
        let mut prometheus = Prometheus {
            child,
            address,
            _config: config,
            _storage: storage,
            log,
        };
        // Prometheus replays an empty TSDB in well under a second; the bound covers a loaded
        // two-core machine.
        wait_for("Prometheus to be ready", Duration::from_secs(60), || {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!(
                    "prometheus exited at startup ({status}):\n{}",
                    prometheus.log_text()
                );
            }
            http_get(prometheus.address, "/-/ready")
                .ok()
                .filter(|(status, _)| *status == 200)
        });
        prometheus
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// An instant query; the result vector, or what Prometheus said was wrong.
    fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let (status, body) = http_get(
            self.address,
            &format!("/api/v1/query?query={}", percent_encode(promql)),
        )
        .map_err(|e| format!("GET /api/v1/query: {e}"))?;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}, not JSON ({e})"))?;
        if answer["status"] != "success" {
            return Err(format!("HTTP {status}: {}", answer["error"]));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The values of `label` on the series of `metric`, as Grafana's `label_values()` asks.
    fn label_values(&self, metric: &str, label: &str) -> Vec<String> {
        let (_, body) = http_get(
            self.address,
            &format!(
                "/api/v1/label/{label}/values?match[]={}",
                percent_encode(metric)
            ),
        )
        .expect("GET label values");
        let answer: Value = serde_json::from_str(&body).expect("label values are JSON");
        answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log_text());
        }
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn promtool_check_metrics(metrics: &str) -> Result<(), Failed> {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool (Debian package prometheus) is needed: {e}"))?;
    promtool
        .stdin
        .take()
        .expect("piped")
        .write_all(metrics.as_bytes())?;
    let output = promtool.wait_with_output()?;
    let said = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || !said.trim().is_empty() {
        return Err(format!("promtool check metrics:\n{said}").into());
    }
    Ok(())
}

/// pika traffic through an amqp listener, one node killed under it and started again.
fn traffic_with_one_failover(front: &Front, lab: &Lab) -> String {
    let queue = "dashboard";
    clients::declare_queue(queue);
    let port = format!("--port={}", front.port);
    let mut consumer = clients::spawn(
        "pika_consumer.py",
        &[
            port.clone(),
            format!("--queue={queue}"),
            "--prefetch=50".into(),
            "--idle=5".into(),
        ],
    );
    assert_eq!(consumer.line(), "ready");
    let mut publisher = clients::spawn(
        "pika_publisher.py",
        &[
            port,
            format!("--queue={queue}"),
            "--confirms".into(),
            "--rate=50".into(),
            "--tag=dash".into(),
        ],
    );
    assert_eq!(publisher.line(), "ready");
    // Traffic before the fault, so that the rates have something to show.
    std::thread::sleep(Duration::from_secs(2));

    let busy = front.busy_nodes();
    let node = busy.first().expect("a session is on some node").clone();
    let failovers = front.failovers();
    {
        let _heal = lab.heal(&[node.as_str()]);
        lab.kill(&node);
        front.wait_moved_off(&node);
        assert!(
            front.failovers() > failovers,
            "killing {node} moved no session"
        );
        lab.start(&node);
    }
    // The health checks bring the node back within a few seconds of its start (rise × interval
    // plus a backed-off probe); a minute covers a loaded machine. The lab is left healthy.
    wait_for(&format!("{node} up again"), Duration::from_secs(60), || {
        let up = front.tether.metric(
            "tether_node_up",
            &[("cluster", CLUSTER), ("node", node.as_str())],
        );
        (up == 1.0).then_some(())
    });
    // Traffic on the new node after the failover.
    std::thread::sleep(Duration::from_secs(2));

    let published = publisher.finish();
    let consumed = consumer.finish();
    eprintln!("publisher: {published}\nconsumer: {consumed}");
    for summary in [&published, &consumed] {
        assert_eq!(summary["errors"], Value::Array(vec![]), "{summary}");
    }
    let sent = published["sent"].as_u64().unwrap_or(0);
    assert!(sent > 0, "{published}");
    assert_eq!(published["confirmed"], sent, "{published}");
    assert_eq!(
        consumed["per_tag"]["dash"], sent,
        "publishes lost: {consumed}"
    );
    clients::delete_queue(queue);
    node
}

/// `/status` and `tether status` report the failover.
fn status_shows_the_failover(front: &Front, killed: &str) -> Result<(), Failed> {
    let status = front.tether.status();
    let last = &status["last_failover"];
    assert_eq!(last["listener"], LISTENER, "{status}");
    // The kill's failover, or, when the killed node led the quorum queue, the set-up again
    // that can follow it on the next node while a new leader is elected (it nacks meanwhile).
    let from = last["from"].as_str().unwrap_or_default();
    match last["reason"].as_str() {
        Some("nacked") => assert_ne!(from, killed, "{status}"),
        _ => assert_eq!(from, killed, "{status}"),
    }
    assert!(last["to"].is_string() && last["to"] != killed, "{status}");
    assert!(
        last["seconds"].as_f64().is_some_and(|s| s > 0.0),
        "{status}"
    );
    assert!(
        last["at_unix"].as_f64().is_some_and(|s| s > 0.0),
        "{status}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["status", "--admin", &front.tether.admin.to_string()])
        .output()?;
    let table = String::from_utf8_lossy(&output.stdout);
    eprintln!("tether status:\n{table}");
    assert!(output.status.success(), "{table}");
    let line = format!(
        "listener {LISTENER}: {from} -> {}, reason {}, took ",
        last["to"].as_str().unwrap_or_default(),
        last["reason"].as_str().unwrap_or_default()
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("last failover: ") && l.contains(&line)),
        "no {line:?} in\n{table}"
    );
    Ok(())
}

fn every_panel_query_returns_data(lab: &Lab) -> Result<(), Failed> {
    let dashboard = dashboard();
    let pending = pending_metrics();
    let front = Front::start("amqp", CLUSTER, &ports::RABBIT, "");
    let prometheus = Prometheus::start(front.tether.admin);
    // The first scrape is due within a second of startup.
    wait_for(
        "Prometheus to scrape tether",
        Duration::from_secs(30),
        || {
            prometheus
                .query("up{job=\"tether\"} == 1")
                .ok()
                .filter(|r| !r.is_empty())
        },
    );

    let killed = traffic_with_one_failover(&front, lab);
    status_shows_the_failover(&front, &killed)?;

    // The failover's series appear with the next scrape; rates want a few samples after it.
    wait_for(
        "Prometheus to hold a few scrapes since the failover",
        Duration::from_secs(30),
        || {
            prometheus
                .query("count_over_time(tether_failovers_total[1m]) >= 3")
                .ok()
                .filter(|r| !r.is_empty())
        },
    );

    let metrics = front.tether.metrics();
    promtool_check_metrics(&metrics)?;
    let (samples, families) = exported(&metrics);

    let mut problems = Vec::new();
    let mut skipped = BTreeSet::new();
    let queries = queries(&dashboard);
    let mut named = BTreeSet::new();
    for query in &queries {
        let names = metric_names(&query.expr);
        named.extend(names.iter().cloned());
        let missing: Vec<&String> = names.iter().filter(|n| !samples.contains(*n)).collect();
        if !missing.is_empty() {
            let (waiting, unknown): (Vec<&String>, Vec<&String>) =
                missing.into_iter().partition(|n| pending.contains(*n));
            if !unknown.is_empty() {
                problems.push(format!(
                    "{}: tether does not export {unknown:?}: {}",
                    query.panel, query.expr
                ));
            }
            skipped.extend(waiting.into_iter().cloned());
            continue;
        }
        for (cluster, listener) in [(".*", ".*"), (CLUSTER, LISTENER)] {
            let promql = substitute(&query.expr, cluster, listener);
            match prometheus.query(&promql) {
                Ok(result) if result.is_empty() => {
                    problems.push(format!("{}: no data: {promql}", query.panel));
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("{}: {e}: {promql}", query.panel)),
            }
        }
    }
    for pending in &pending {
        if samples.contains(pending) {
            eprintln!(
                "{pending} is exported now and was checked: remove it from dashboards/pending-metrics.json"
            );
        }
    }
    eprintln!(
        "{} panel queries run; skipped until tether exports them: {skipped:?}",
        queries.len()
    );

    // Every family tether exports is on the dashboard (a histogram through its series).
    for family in &families {
        let shown = named.iter().any(|n| {
            n == family
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| *n == format!("{family}{suffix}"))
        });
        if !shown {
            problems.push(format!("no panel shows {family}, which tether exports"));
        }
    }

    // The variables' label_values() queries find this tether's cluster and listener.
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(definition) = variable["definition"].as_str() else {
            continue;
        };
        let Some(args) = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
        else {
            continue;
        };
        let (metric, label) = args.split_once(',').expect("label_values(metric, label)");
        let (metric, label) = (metric.trim(), label.trim());
        let values = prometheus.label_values(metric, label);
        let want = if label == "cluster" {
            CLUSTER
        } else {
            LISTENER
        };
        if !values.iter().any(|v| v == want) {
            problems.push(format!(
                "variable {}: {definition} gives {values:?}, not {want}",
                variable["name"]
            ));
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n").into())
    }
}

fn main() {
    Suite::new(&["rabbit"])
        .plain("dashboard_is_well_formed", dashboard_is_well_formed)
        .with_lab(
            "every_panel_query_returns_data",
            every_panel_query_returns_data,
        )
        .run()
}
