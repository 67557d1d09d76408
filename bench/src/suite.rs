//! The side-by-side run: every scenario against a direct connection, HAProxy and tether, in one
//! run on one machine, written to reports/.

use crate::failover::{self, Fault};
use crate::lab::Lab;
use crate::proc::rss_bytes;
use crate::profile::Meter;
use crate::report::Report;
use crate::stats::Outcome;
use crate::{amqp, held, idle_amqp, locality, stomp, tcp};
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tether_lab::ports;

pub struct Settings {
    pub quick: bool,
    pub repo: PathBuf,
    pub out: PathBuf,
    /// Scenario keys or prefixes to run; all when empty.
    pub only: Vec<String>,
    /// The report's name when `only` is set.
    pub name: String,
    /// The scenario to profile (and run alone, through the proxies only).
    pub profile: Option<String>,
}

impl Settings {
    fn runs(&self, scenario: &str) -> bool {
        if let Some(profiled) = &self.profile {
            return scenario == profiled;
        }
        self.only.is_empty() || self.only.iter().any(|o| scenario.starts_with(o.as_str()))
    }

    /// Whether a scenario runs against this target: a profile needs a proxy process.
    fn against(&self, target: Option<u32>) -> bool {
        self.profile.is_none() || target.is_some()
    }

    fn meter(&self, target: &str, pid: Option<u32>) -> Meter {
        Meter::start(target, pid, self.profile.is_some())
    }
}

/// Where each target listens, and the process to measure (none for a direct connection).
#[derive(Clone)]
struct Target {
    name: &'static str,
    amqp_one: String,
    amqp_cluster: Option<String>,
    /// The same, with TLS to the broker: the client's own (direct), or the proxy's.
    amqp_one_tls: String,
    amqp_cluster_tls: Option<String>,
    stomp_one: SocketAddr,
    tcp_sink: SocketAddr,
    pid: Option<u32>,
}

const SINK: &str = "127.0.0.1:5699";
/// HAProxy's stats socket, from which a reloaded HAProxy takes the listening sockets
/// (conf/bench/haproxy.cfg).
const HAPROXY_SOCKET: &str = "/tmp/tether-bench-haproxy.sock";

/// Child processes killed when dropped, also on error.
struct Proxies(Vec<Child>);

impl Drop for Proxies {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn amqp_url(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

/// A proxy's config from conf/bench with the lab's TLS directory in place of the default
/// one, written to the temporary directory.
fn render(settings: &Settings, file: &str) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(settings.repo.join("conf/bench").join(file))
        .with_context(|| format!("read conf/bench/{file}"))?;
    let text = text.replace("/tmp/tether-lab", &tether_lab::dir().display().to_string());
    let path = std::env::temp_dir().join(format!("tether-bench-{file}"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The address in an `amqp://user:pass@host:port/vhost` URL.
fn address_of(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.rsplit('@').next().unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or(rest);
    host_port
        .parse()
        .with_context(|| format!("no address in {url}"))
}

/// Where tether (conf/bench/tether.toml) listens once it is up.
const TETHER_LISTENS: [&str; 10] = [
    "127.0.0.1:5705",
    "127.0.0.1:5707",
    "127.0.0.1:61696",
    "127.0.0.1:9470",
    "127.0.0.1:5695",
    "127.0.0.1:5698",
    "127.0.0.1:5703",
    "127.0.0.1:5704",
    "127.0.0.1:61695",
    "127.0.0.1:5697",
];

/// Where HAProxy (conf/bench/haproxy.cfg) listens once it is up.
const HAPROXY_LISTENS: [&str; 4] = [
    "127.0.0.1:5690",
    "127.0.0.1:5693",
    "127.0.0.1:61690",
    "127.0.0.1:5692",
];

const HAPROXY_LISTENS_WITHOUT_TLS: [&str; 3] =
    [HAPROXY_LISTENS[0], HAPROXY_LISTENS[2], HAPROXY_LISTENS[3]];

fn start_haproxy(settings: &Settings) -> anyhow::Result<Child> {
    spawn_haproxy(render(settings, "haproxy.cfg")?)
}

/// HAProxy without its TLS listeners, for f: holding 9,500 connections, HAProxy 2.6's
/// watchdog killed it (twice) inside an OpenSSL health check of a TLS server. f measures
/// idle sessions, which no check is part of.
fn start_haproxy_without_tls(settings: &Settings) -> anyhow::Result<Child> {
    let path = render(settings, "haproxy.cfg")?;
    let text = std::fs::read_to_string(&path)?;
    let kept: Vec<&str> = text
        .split("\nlisten ")
        .enumerate()
        .filter(|(i, block)| {
            *i == 0
                || !block
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .ends_with("_tls")
        })
        .map(|(_, block)| block)
        .collect();
    let path = path.with_file_name("tether-bench-haproxy-without-tls.cfg");
    std::fs::write(&path, kept.join("\nlisten ") + "\n")?;
    spawn_haproxy(path)
}

fn spawn_haproxy(config: PathBuf) -> anyhow::Result<Child> {
    Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(config)
        .stdout(Stdio::null())
        .spawn()
        .context("start haproxy (Debian package haproxy)")
}

fn start_tether(settings: &Settings) -> anyhow::Result<Child> {
    Command::new(settings.repo.join("target/release/tether"))
        .args(["run", "-c"])
        .arg(render(settings, "tether.toml")?)
        .env("TETHER_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .context("start target/release/tether (cargo build --release)")
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("a literal address")
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    raise_descriptor_limit();
    let lab = Lab;
    lab.run(&["up", "rabbit"])?;
    tcp::sink(addr(SINK)).await.context("start the TCP sink")?;
    let mut proxies = Proxies(Vec::new());
    let haproxy = start_haproxy(&settings)?;
    let mut haproxy_pid = haproxy.id();
    proxies.0.push(haproxy);
    let tether = start_tether(&settings)?;
    let mut tether_pid = tether.id();
    proxies.0.push(tether);
    wait_listening(&HAPROXY_LISTENS).await?;
    wait_listening(&TETHER_LISTENS).await?;

    let mut targets = [
        Target {
            name: "direct",
            amqp_one: amqp_url(ports::of("r1", "amqp")),
            amqp_cluster: None,
            amqp_one_tls: format!(
                "amqps://guest:guest@127.0.0.1:{}/%2f",
                ports::of("r1", "amqps")
            ),
            amqp_cluster_tls: None,
            stomp_one: addr(&ports::address("r1", "stomp")),
            tcp_sink: addr(SINK),
            pid: None,
        },
        Target {
            name: "haproxy",
            amqp_one: amqp_url(5690),
            amqp_cluster: Some(amqp_url(5691)),
            amqp_one_tls: amqp_url(5693),
            amqp_cluster_tls: Some(amqp_url(5694)),
            stomp_one: addr("127.0.0.1:61690"),
            tcp_sink: addr("127.0.0.1:5692"),
            pid: Some(haproxy_pid),
        },
        Target {
            name: "tether",
            amqp_one: amqp_url(5695),
            amqp_cluster: Some(amqp_url(5696)),
            amqp_one_tls: amqp_url(5698),
            amqp_cluster_tls: Some(amqp_url(5702)),
            stomp_one: addr("127.0.0.1:61695"),
            tcp_sink: addr("127.0.0.1:5697"),
            pid: Some(tether_pid),
        },
    ];
    let quick = settings.quick;
    let mut report = Report::default();
    let started = Instant::now();

    // f first, while the proxies are fresh: idle memory, then idle sessions.
    // Each idle session costs two descriptors in this process (client and sink) and two in
    // the proxy; where the hard limit is lower than 10,000 sessions need, take what fits.
    let wanted = if quick { 2_000 } else { 10_000 };
    let sessions = wanted.min(descriptor_budget() / 2);
    if sessions < wanted {
        eprintln!(
            "f: {sessions} idle sessions instead of {wanted}: the open-file limit allows no more"
        );
    }
    if settings.runs("f_memory") {
        // A fresh process of each proxy for each kind of session: sessions opened after
        // others closed would take the memory the allocator (or HAProxy's pools) kept, and
        // look nearly free.
        for kind in [Idle::Amqp, Idle::Stomp, Idle::Tcp] {
            stop(proxies.0.remove(0));
            proxies.0.insert(0, start_haproxy_without_tls(&settings)?);
            wait_listening(&HAPROXY_LISTENS_WITHOUT_TLS).await?;
            targets[1].pid = Some(proxies.0[0].id());
            memory(&mut report, &targets[1], sessions, &[kind]).await?;
        }
        for kind in [Idle::Amqp, Idle::Stomp, Idle::Tcp] {
            // The old one first: the new one binds the same ports.
            stop(proxies.0.remove(1));
            proxies.0.insert(1, start_tether(&settings)?);
            wait_listening(&TETHER_LISTENS).await?;
            tether_pid = proxies.0[1].id();
            targets[2].pid = Some(tether_pid);
            // tether's idle listeners ask the node for 10 s heart-beats (conf/bench/tether.toml
            // says why).
            let idle = Target {
                amqp_one: amqp_url(5705),
                stomp_one: addr("127.0.0.1:61696"),
                ..targets[2].clone()
            };
            memory(&mut report, &idle, sessions, &[kind]).await?;
        }
        // The other scenarios want HAProxy's TLS listeners back.
        stop(proxies.0.remove(0));
        proxies.0.insert(0, start_haproxy(&settings)?);
        wait_listening(&HAPROXY_LISTENS).await?;
        haproxy_pid = proxies.0[0].id();
        targets[1].pid = Some(haproxy_pid);
    }
    let seconds = if quick { 6 } else { 30 };
    for (scenario, tls) in [("a_amqp_confirms", false), ("a_tls_amqp_confirms", true)] {
        for target in targets
            .iter()
            .filter(|t| settings.runs(scenario) && settings.against(t.pid))
        {
            let url = if tls {
                &target.amqp_one_tls
            } else {
                &target.amqp_one
            };
            eprintln!("{scenario}, {}", target.name);
            amqp::prepare(url, "bench-a", false).await?;
            let meter = settings.meter(target.name, target.pid);
            let outcome = amqp::run(&amqp::Load {
                url: url.clone(),
                queue: "bench-a".into(),
                publishers: 8,
                consumers: 8,
                size: 1024,
                confirms: true,
                rate: None,
                duration: Duration::from_secs(seconds),
                window: 64,
            })
            .await?;
            record_messaging(&mut report, scenario, target, &outcome, meter);
        }
    }
    for target in targets
        .iter()
        .filter(|t| settings.runs("b_stomp_receipts") && settings.against(t.pid))
    {
        eprintln!("b: STOMP receipts, {}", target.name);
        let meter = settings.meter(target.name, target.pid);
        let outcome = stomp::run(&stomp::Load {
            addr: target.stomp_one,
            destination: "/queue/bench-b".into(),
            publishers: 8,
            consumers: 8,
            size: 1024,
            receipts: true,
            duration: Duration::from_secs(seconds),
            window: 64,
        })
        .await?;
        record_messaging(&mut report, "b_stomp_receipts", target, &outcome, meter);
    }
    // c: tether without its pool (a listener with max_idle = 0) and with it.
    let c_targets = [
        ("direct", targets[0].amqp_one.clone(), None),
        ("haproxy", targets[1].amqp_one.clone(), Some(haproxy_pid)),
        ("tether", amqp_url(5703), Some(tether_pid)),
        (
            "tether_pooled",
            targets[2].amqp_one.clone(),
            Some(tether_pid),
        ),
        // The ceiling: no connect at all.
        ("direct_held", targets[0].amqp_one.clone(), None),
    ];
    for (name, url, pid) in c_targets
        .iter()
        .filter(|(_, _, pid)| settings.runs("c_connect_per_message") && settings.against(*pid))
    {
        eprintln!("c: connect per message, {name}");
        amqp::prepare(url, "bench-c", false).await?;
        let meter = settings.meter(name, *pid);
        let duration = Duration::from_secs(seconds / 2);
        let outcome = if *name == "direct_held" {
            amqp::publish_per_message_held(url, "bench-c", 4, duration).await?
        } else {
            amqp::connect_per_message(url, "bench-c", 4, duration).await?
        };
        let scenario = "c_connect_per_message";
        report.set(scenario, name, "msg_per_s", outcome.msg_per_s());
        report.set(scenario, name, "p50_ms", outcome.p50_ms());
        report.set(scenario, name, "p99_ms", outcome.p99_ms());
        report.set(scenario, name, "client_errors", outcome.errors as f64);
        if let Some(cpu) = meter.finish(outcome.published) {
            report.set(
                scenario,
                name,
                "cpu_s_per_million",
                cpu / outcome.published.max(1) as f64 * 1e6,
            );
        }
    }
    for (scenario, streams) in [("d_tcp_bulk", 4), ("d_tcp_bulk_64", 64)] {
        for target in targets
            .iter()
            .filter(|t| settings.runs(scenario) && settings.against(t.pid))
        {
            eprintln!("{scenario}, {}", target.name);
            let meter = settings.meter(target.name, target.pid);
            let (bytes, seconds) = tcp::bulk(
                target.tcp_sink,
                streams,
                Duration::from_secs(if quick { 4 } else { 10 }),
            )
            .await?;
            let gb = bytes as f64 / 1e9;
            report.set(scenario, target.name, "gb_per_s", gb / seconds);
            // Per MB: the profile's counts are per unit.
            if let Some(cpu) = meter.finish((bytes / 1_000_000).max(1)) {
                report.set(scenario, target.name, "cpu_s_per_gb", cpu / gb);
            }
        }
    }
    for (scenario, quorum) in [("j_locality", true), ("j_locality_classic", false)] {
        if !settings.runs(scenario) {
            continue;
        }
        // Consumers at random (HAProxy's round-robin, tether's random) and with locality on.
        let j_targets = [
            ("haproxy", amqp_url(5691), Some(haproxy_pid)),
            ("tether", amqp_url(5696), Some(tether_pid)),
            ("tether_local", amqp_url(5707), Some(tether_pid)),
        ];
        for (name, url, _) in j_targets.iter().filter(|t| settings.against(t.2)) {
            eprintln!("j: queue locality, {name}");
            locality::prepare(quorum).await?;
            let measured = locality::run(&lab, url, Duration::from_secs(seconds)).await?;
            let set = |report: &mut Report, metric: &str, value: f64| {
                report.set(scenario, name, metric, value)
            };
            set(&mut report, "msg_per_s", measured.msg_per_s);
            set(&mut report, "client_errors", measured.errors as f64);
            let (local, all) = measured.local_consumers;
            set(&mut report, "local_consumers", local as f64);
            set(&mut report, "consumers", all as f64);
            set(
                &mut report,
                "lost",
                measured.confirmed.saturating_sub(measured.received) as f64,
            );
            let per_million = 1e6 / measured.received.max(1) as f64;
            set(
                &mut report,
                "broker_cpu_s_per_million",
                measured.broker_cpu_s * per_million,
            );
            set(
                &mut report,
                "internode_kb_per_msg",
                measured.internode_bytes / 1e3 / measured.received.max(1) as f64,
            );
        }
    }
    for (scenario, rate) in [("i_fixed_rate_1k", 1_000.0), ("i_fixed_rate_5k", 5_000.0)] {
        let mut direct = None;
        for target in targets
            .iter()
            .filter(|t| settings.runs(scenario) && settings.against(t.pid))
        {
            eprintln!("{scenario}, {}", target.name);
            amqp::prepare(&target.amqp_one, "bench-i", false).await?;
            let meter = settings.meter(target.name, target.pid);
            let outcome = amqp::run(&amqp::Load {
                url: target.amqp_one.clone(),
                queue: "bench-i".into(),
                publishers: 4,
                consumers: 4,
                size: 1024,
                confirms: true,
                rate: Some(rate / 4.0),
                duration: Duration::from_secs(seconds),
                window: 64,
            })
            .await?;
            let p999 = outcome.p999_ms();
            record_messaging(&mut report, scenario, target, &outcome, meter);
            report.set(scenario, target.name, "p999_ms", p999);
            let latency = [outcome.p50_ms(), outcome.p99_ms(), p999];
            match direct {
                None if target.pid.is_none() => direct = Some(latency),
                None => {}
                Some(direct) => {
                    for (metric, (ours, theirs)) in
                        ["added_p50_ms", "added_p99_ms", "added_p999_ms"]
                            .into_iter()
                            .zip(latency.into_iter().zip(direct))
                    {
                        report.set(scenario, target.name, metric, ours - theirs);
                    }
                }
            }
        }
    }
    let cycles = if quick { 1 } else { 10 };
    for (scenario, fault, tls) in [
        ("e_failover_kill", Fault::Kill, false),
        ("e_failover_sigstop", Fault::Stop, false),
        ("e_tls_failover_kill", Fault::Kill, true),
    ] {
        for target in targets.iter().filter(|_| settings.runs(scenario)) {
            let cluster = if tls {
                &target.amqp_cluster_tls
            } else {
                &target.amqp_cluster
            };
            let Some(url) = cluster else {
                continue;
            };
            eprintln!("e: {} x{cycles}, {}", fault.name(), target.name);
            let stall = failover::run(url, "bench-e", &lab, fault, cycles, 200.0).await?;
            for (gaps, suffix) in [(&stall.gaps, ""), (&stall.off_leader_gaps, "_off_leader")] {
                let mut gaps = gaps.clone();
                gaps.sort_by(f64::total_cmp);
                report.set(
                    scenario,
                    target.name,
                    &format!("max_gap{suffix}_s"),
                    gaps.last().copied().unwrap_or(f64::NAN),
                );
                report.set(
                    scenario,
                    target.name,
                    &format!("median_gap{suffix}_s"),
                    median(&gaps),
                );
            }
            report.set(scenario, target.name, "client_errors", stall.errors as f64);
            report.set(scenario, target.name, "lost", stall.lost as f64);
            report.set(scenario, target.name, "confirmed", stall.confirmed as f64);
            report.set(
                scenario,
                target.name,
                "queue_leader_hits",
                stall.leader_hits as f64,
            );
        }
    }
    for (count, scenario) in [(1_000, "g_held_1k"), (10_000, "g_held_10k")] {
        if !settings.runs(scenario) {
            continue;
        }
        let broker = tether_lab::script(&["pid", "r1"])
            .map_err(anyhow::Error::msg)?
            .trim()
            .parse::<u32>()
            .context("r1's pid")?;
        // Least broker memory first: the VM keeps what it frees for a while (see held.rs).
        // HAProxy takes two descriptors per connection, and its maxconn (conf/bench) fits
        // the open-file limit here.
        let g_targets = [
            (
                "tether_multiplexed",
                addr("127.0.0.1:5704"),
                Some(tether_pid),
                usize::MAX,
            ),
            ("haproxy", addr("127.0.0.1:5690"), Some(haproxy_pid), 9_000),
            (
                "direct",
                addr(&ports::address("r1", "amqp")),
                None,
                usize::MAX,
            ),
        ];
        for (name, at, pid, cap) in g_targets {
            let clients = count.min(cap).min(descriptor_budget());
            eprintln!("g: {clients} held connections, {name}");
            let held = held::hold(at, clients, broker, pid).await?;
            report.set(scenario, name, "clients", held.clients as f64);
            report.set(
                scenario,
                name,
                "broker_connections",
                held.broker_connections,
            );
            report.set(scenario, name, "broker_rss_mb", held.broker_rss_mb);
            report.set(
                scenario,
                name,
                "broker_connection_memory_mb",
                held.broker_connection_memory_mb,
            );
            if let Some(proxy) = held.proxy_rss_mb {
                report.set(scenario, name, "proxy_rss_mb", proxy);
            }
        }
    }
    if settings.runs("h_restart") {
        // Last: the proxies' processes change (earlier scenarios measure them by pid).
        let haproxy_config = render(&settings, "haproxy.cfg")?;
        let tether_config = render(&settings, "tether.toml")?;
        let tether_binary = settings.repo.join("target/release/tether");
        let (mut haproxy_now, mut tether_now) = (haproxy_pid, tether_pid);
        let restart_cycles = if quick { 1 } else { 10 };
        for target in targets.iter().filter(|t| t.pid.is_some()) {
            let Some(url) = &target.amqp_cluster else {
                continue;
            };
            eprintln!("h: restart x{restart_cycles}, {}", target.name);
            let proxies = &mut proxies;
            let restart = || -> anyhow::Result<u32> {
                let (old, child) = match target.name {
                    // HAProxy's seamless reload: the new process takes the listening sockets
                    // from the old one's stats socket; the old one serves what it holds until
                    // `hard-stop-after`, then cuts it.
                    "haproxy" => (
                        haproxy_now,
                        Command::new("haproxy")
                            .args(["-db", "-f"])
                            .arg(&haproxy_config)
                            .args(["-x", HAPROXY_SOCKET, "-sf", &haproxy_now.to_string()])
                            .stdout(Stdio::null())
                            .spawn()
                            .context("reload haproxy")?,
                    ),
                    _ => (
                        tether_now,
                        Command::new(&tether_binary)
                            .args(["run", "--takeover", "-c"])
                            .arg(&tether_config)
                            .env("TETHER_LOG", "warn")
                            .stderr(Stdio::null())
                            .spawn()
                            .context("start tether --takeover")?,
                    ),
                };
                match target.name {
                    "haproxy" => haproxy_now = child.id(),
                    _ => tether_now = child.id(),
                }
                proxies.0.push(child);
                Ok(old)
            };
            let stall = failover::restarts(url, "bench-h", restart, restart_cycles, 200.0).await?;
            let mut gaps = stall.gaps.clone();
            gaps.sort_by(f64::total_cmp);
            let scenario = "h_restart";
            report.set(
                scenario,
                target.name,
                "max_gap_s",
                gaps.last().copied().unwrap_or(f64::NAN),
            );
            report.set(scenario, target.name, "median_gap_s", median(&gaps));
            report.set(scenario, target.name, "client_errors", stall.errors as f64);
            report.set(scenario, target.name, "lost", stall.lost as f64);
            report.set(scenario, target.name, "confirmed", stall.confirmed as f64);
            report.set(scenario, target.name, "restarts", restart_cycles as f64);
        }
    }
    eprintln!("done in {:.0}s", started.elapsed().as_secs_f64());
    drop(proxies);
    if let Some(scenario) = &settings.profile {
        let command = format!("scripts/bench --profile {scenario}");
        crate::profile::write(&settings.out, scenario, &command)?;
        println!("wrote {}/profile-{scenario}.md", settings.out.display());
        return Ok(());
    }
    write(&report, &settings)
}

fn record_messaging(
    report: &mut Report,
    scenario: &str,
    target: &Target,
    outcome: &Outcome,
    meter: Meter,
) {
    report.set(scenario, target.name, "msg_per_s", outcome.msg_per_s());
    report.set(scenario, target.name, "p50_ms", outcome.p50_ms());
    report.set(scenario, target.name, "p99_ms", outcome.p99_ms());
    report.set(
        scenario,
        target.name,
        "client_errors",
        outcome.errors as f64,
    );
    report.set(
        scenario,
        target.name,
        "lost",
        outcome.confirmed.saturating_sub(outcome.received) as f64,
    );
    if let Some(cpu) = meter.finish(outcome.received) {
        report.set(
            scenario,
            target.name,
            "cpu_s_per_million",
            cpu / outcome.received.max(1) as f64 * 1e6,
        );
    }
    if let Some(rss) = target.pid.and_then(rss_bytes) {
        report.set(scenario, target.name, "rss_mb", rss as f64 / 1e6);
    }
}

/// f holds 10,000 idle sessions: two descriptors each here, two in each proxy (which
/// inherit this limit). As root the hard limit can be raised as well; otherwise take the
/// soft limit up to the hard one.
fn raise_descriptor_limit() {
    const WANTED: u64 = 200_000;
    if rlimit::setrlimit(rlimit::Resource::NOFILE, WANTED, WANTED).is_err() {
        let _ = rlimit::increase_nofile_limit(u64::MAX);
    }
}

/// Descriptors this process may open, less a margin for everything else it holds.
fn descriptor_budget() -> usize {
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    (soft as usize).saturating_sub(1_000)
}

#[derive(Clone, Copy)]
enum Idle {
    Amqp,
    Stomp,
    Tcp,
}

/// Idle memory, and what each idle session of these kinds adds, one kind after another.
async fn memory(
    report: &mut Report,
    target: &Target,
    sessions: usize,
    kinds: &[Idle],
) -> anyhow::Result<()> {
    let Some(pid) = target.pid else { return Ok(()) };
    let mut idle = rss_bytes(pid).unwrap_or(0);
    if matches!(kinds.first(), Some(Idle::Amqp)) {
        report.set("f_memory", target.name, "rss_idle_mb", idle as f64 / 1e6);
        report.set("f_memory", target.name, "idle_sessions", sessions as f64);
    }
    for kind in kinds {
        let (name, kib) = match kind {
            Idle::Amqp => {
                eprintln!("f: {sessions} idle AMQP sessions, {}", target.name);
                let held = idle_amqp::hold_idle(address_of(&target.amqp_one)?, sessions).await?;
                let kib = settled_kib_per_session(pid, idle, sessions).await;
                drop(held);
                ("amqp_session_kib", kib)
            }
            Idle::Stomp => {
                eprintln!("f: {sessions} idle STOMP sessions, {}", target.name);
                let held = stomp::hold_idle(target.stomp_one, sessions).await?;
                let kib = settled_kib_per_session(pid, idle, sessions).await;
                drop(held);
                ("stomp_session_kib", kib)
            }
            Idle::Tcp => {
                eprintln!("f: {sessions} idle tcp sessions, {}", target.name);
                let held = tcp::hold_idle(target.tcp_sink, sessions).await?;
                let kib = settled_kib_per_session(pid, idle, sessions).await;
                drop(held);
                ("tcp_session_kib", kib)
            }
        };
        report.set("f_memory", target.name, name, kib);
        settle_broker().await;
        idle = rss_bytes(pid).unwrap_or(0);
    }
    Ok(())
}

/// Waits (2 s, and up to 2 minutes) until RabbitMQ has let go of the connections just closed:
/// thousands closed at once keep it busy, and the next kind's connects would time out.
async fn settle_broker() {
    let began = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let open = tokio::task::spawn_blocking(|| Lab.connections())
            .await
            .ok()
            .flatten();
        if open.is_none_or(|n| n < 100.0) || began.elapsed() > Duration::from_secs(120) {
            return;
        }
    }
}

/// What each of `sessions` adds to the process's RSS over `before`, in KiB, once it settles.
async fn settled_kib_per_session(pid: u32, before: u64, sessions: usize) -> f64 {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = rss_bytes(pid).unwrap_or(0);
    now.saturating_sub(before) as f64 / 1024.0 / sessions as f64
}

async fn wait_listening(addrs: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in addrs {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("nothing listens on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

fn write(report: &Report, settings: &Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.out)?;
    let partial = format!("bench-{}", settings.name);
    let name = if !settings.only.is_empty() {
        partial.as_str()
    } else if settings.quick {
        "bench-quick"
    } else {
        "bench"
    };
    let title = if settings.quick {
        "tether benchmark (quick run)"
    } else {
        "tether benchmark"
    };
    let markdown = report.markdown(title);
    let charts = report.charts(&settings.out, name)?;
    let mut markdown = markdown;
    for chart in &charts {
        let file = std::path::Path::new(chart)
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        markdown.push_str(&format!("\n![{file}]({file})\n"));
    }
    std::fs::write(settings.out.join(format!("{name}.md")), &markdown)?;
    std::fs::write(
        settings.out.join(format!("{name}.json")),
        serde_json::to_string_pretty(report)? + "\n",
    )?;
    println!("{markdown}");
    Ok(())
}

/// The median of sorted `values` (the mean of the middle two for an even count).
fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
