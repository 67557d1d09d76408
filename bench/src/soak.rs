//! `tether-bench soak`: many AMQP sessions held for a long time, with churn (short sessions
//! that connect, publish one message and leave) and light traffic, while tether's resident
//! memory, descriptors, tasks and sessions are sampled every minute (#15). Flat means no leak.
//! Run by `scripts/soak`, outside CI. The clients are bare AMQP sockets (see `idle_amqp`): a
//! library client per session would cost this process more than tether.

use crate::idle_amqp::{expect, frame_on, method, open, short_string};
use anyhow::Context;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Soak {
    /// tether's AMQP listener.
    pub target: SocketAddr,
    /// tether's admin listener (for `tether_tasks` and `tether_process_sessions`).
    pub admin: SocketAddr,
    pub pid: u32,
    pub sessions: usize,
    /// Short sessions started per second.
    pub churn: u32,
    pub minutes: u64,
    /// Each held session publishes one message this often.
    pub every: Duration,
    pub out: PathBuf,
}

const QUEUE: &str = "tether-soak";
const BODY: &[u8] = &[b's'; 64];

#[derive(Default)]
struct Counts {
    held_open: AtomicU64,
    held_failed: AtomicU64,
    held_lost: AtomicU64,
    published: AtomicU64,
    churned: AtomicU64,
    churn_failed: AtomicU64,
    received: AtomicU64,
}

struct Sample {
    minute: u64,
    rss_mib: f64,
    fds: usize,
    threads: u64,
    tasks: f64,
    sessions: f64,
    counts: [u64; 7],
}

pub async fn run(soak: Soak) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let counts = Arc::new(Counts::default());
    declare_and_consume(soak.target, counts.clone()).await?;
    // Held sessions open at the churn's pace (a fleet starting), then each publishes now and
    // then; one that breaks is counted and opened again.
    let opener = {
        let counts = counts.clone();
        let (target, sessions, every, churn) = (soak.target, soak.sessions, soak.every, soak.churn);
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_secs(1) / churn.max(1));
            for n in 0..sessions {
                pace.tick().await;
                tokio::spawn(hold(target, every, n, counts.clone()));
            }
        })
    };
    let churner = {
        let counts = counts.clone();
        let (target, churn) = (soak.target, soak.churn);
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_secs(1) / churn.max(1));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                pace.tick().await;
                let counts = counts.clone();
                tokio::spawn(async move {
                    let outcome = tokio::time::timeout(Duration::from_secs(30), once(target)).await;
                    match outcome {
                        Ok(Ok(())) => counts.churned.fetch_add(1, Ordering::Relaxed),
                        _ => counts.churn_failed.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
        })
    };
    let started = Instant::now();
    let mut samples = Vec::new();
    for minute in 0..=soak.minutes {
        let due = started + Duration::from_secs(60 * minute);
        tokio::time::sleep_until(due.into()).await;
        let sample = sample(&soak, minute, &counts).await;
        println!(
            "minute {:>3}: rss {:.1} MiB, fds {}, threads {}, tasks {}, sessions {}, counts {:?}",
            sample.minute,
            sample.rss_mib,
            sample.fds,
            sample.threads,
            sample.tasks,
            sample.sessions,
            sample.counts
        );
        samples.push(sample);
    }
    opener.abort();
    churner.abort();
    let report = render(&soak, &samples);
    std::fs::write(&soak.out, report).with_context(|| format!("{}", soak.out.display()))?;
    println!("wrote {}", soak.out.display());
    Ok(())
}

/// One long-lived session: publishes a message every `every` (spread by its number) and
/// reads whatever comes (nothing, without heart-beats).
async fn hold(target: SocketAddr, every: Duration, n: usize, counts: Arc<Counts>) {
    let offset = every.mul_f64((n % 1000) as f64 / 1000.0);
    loop {
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(30), session(target)).await
        else {
            counts.held_failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        counts.held_open.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(offset).await;
        let mut tick = tokio::time::interval(every);
        let mut sink = [0u8; 512];
        let broke = loop {
            tokio::select! {
                _ = tick.tick() => {
                    if stream.write_all(&publish()).await.is_err() {
                        break true;
                    }
                    counts.published.fetch_add(1, Ordering::Relaxed);
                }
                read = stream.read(&mut sink) => {
                    if matches!(read, Ok(0) | Err(_)) {
                        break true;
                    }
                }
            }
        };
        if broke {
            counts.held_lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A short session: log in, publish one message, close cleanly, wait for tether to close.
async fn once(target: SocketAddr) -> anyhow::Result<()> {
    let mut stream = session(target).await?;
    stream.write_all(&publish()).await?;
    let mut close = method(10, 50);
    close.extend_from_slice(&200u16.to_be_bytes());
    short_string(&mut close, "bye");
    close.extend_from_slice(&[0, 0, 0, 0]);
    stream.write_all(&frame_on(1, 0, &close)).await?;
    expect(&mut stream, (10, 51)).await?;
    // tether closes first, so the TIME_WAIT is its and this side's port is free at once.
    let mut sink = [0u8; 64];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

/// A connection logged in, with channel 1 open.
async fn session(target: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut stream = open(target).await?;
    let mut channel_open = method(20, 10);
    short_string(&mut channel_open, "");
    stream.write_all(&frame_on(1, 1, &channel_open)).await?;
    expect(&mut stream, (20, 11)).await?;
    Ok(stream)
}

/// basic.publish of a 64-byte message to the soak queue, with its header and body.
fn publish() -> Vec<u8> {
    let mut publish = method(60, 40);
    publish.extend_from_slice(&0u16.to_be_bytes());
    short_string(&mut publish, "");
    short_string(&mut publish, QUEUE);
    publish.push(0);
    let mut header = Vec::with_capacity(14);
    header.extend_from_slice(&60u16.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&(BODY.len() as u64).to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    [
        frame_on(1, 1, &publish),
        frame_on(2, 1, &header),
        frame_on(3, 1, BODY),
    ]
    .concat()
}

/// Declares the soak queue (at most 100,000 messages, the oldest dropped) and consumes it
/// without acks, counting deliveries.
async fn declare_and_consume(target: SocketAddr, counts: Arc<Counts>) -> anyhow::Result<()> {
    let mut stream = session(target).await.context("the consumer's session")?;
    let mut declare = method(50, 10);
    declare.extend_from_slice(&0u16.to_be_bytes());
    short_string(&mut declare, QUEUE);
    declare.push(0);
    let mut table = Vec::new();
    short_string(&mut table, "x-max-length");
    table.push(b'l');
    table.extend_from_slice(&100_000i64.to_be_bytes());
    declare.extend_from_slice(&(table.len() as u32).to_be_bytes());
    declare.extend_from_slice(&table);
    stream.write_all(&frame_on(1, 1, &declare)).await?;
    expect(&mut stream, (50, 11))
        .await
        .context("queue.declare")?;
    let mut consume = method(60, 20);
    consume.extend_from_slice(&0u16.to_be_bytes());
    short_string(&mut consume, QUEUE);
    short_string(&mut consume, "");
    consume.push(0b10); // no-ack
    consume.extend_from_slice(&0u32.to_be_bytes());
    stream.write_all(&frame_on(1, 1, &consume)).await?;
    expect(&mut stream, (60, 21))
        .await
        .context("basic.consume")?;
    tokio::spawn(async move {
        loop {
            let mut header = [0u8; 7];
            if stream.read_exact(&mut header).await.is_err() {
                eprintln!("the soak consumer's session ended");
                return;
            }
            let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
            let mut payload = vec![0u8; size + 1];
            if stream.read_exact(&mut payload).await.is_err() {
                return;
            }
            if header[0] == 1 && size >= 4 && payload[..4] == [0, 60, 0, 60] {
                counts.received.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok(())
}

async fn sample(soak: &Soak, minute: u64, counts: &Counts) -> Sample {
    let pid = soak.pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or("");
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let admin = soak.admin;
    let metrics = tokio::task::spawn_blocking(move || admin_metrics(admin))
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let gauge = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
        line.and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Sample {
        minute,
        rss_mib: crate::proc::rss_bytes(pid).unwrap_or(0) as f64 / (1 << 20) as f64,
        fds,
        threads: field("Threads:"),
        tasks: gauge("tether_tasks"),
        sessions: gauge("tether_process_sessions"),
        counts: [
            load(&counts.held_open),
            load(&counts.held_failed),
            load(&counts.held_lost),
            load(&counts.published),
            load(&counts.churned),
            load(&counts.churn_failed),
            load(&counts.received),
        ],
    }
}

fn admin_metrics(admin: SocketAddr) -> Option<String> {
    let address = tether::address::Address::Ip(admin);
    let request = tether::http::Request {
        method: "GET",
        address: &address,
        path: "/metrics",
        authorization: None,
    };
    let limits = tether::http::Limits {
        timeout: Duration::from_secs(10),
        max_body: 16 << 20,
    };
    let response = tether::http::request_blocking(&request, &limits).ok()?;
    (response.status == 200).then(|| response.text())
}

fn render(soak: &Soak, samples: &[Sample]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Soak: {} held AMQP sessions, {} short sessions a second, {} minutes\n",
        soak.sessions, soak.churn, soak.minutes
    );
    let _ = writeln!(
        out,
        "Written by `scripts/soak` (`tether-bench soak`). Each held session publishes a 64-byte \
         message every {} s; each short session logs in, opens a channel, publishes one message \
         and closes. One consumer reads the queue. tether sampled once a minute from /proc and \
         its /metrics.\n",
        soak.every.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| minute | RSS MiB | fds | threads | tasks | sessions | held opened | held failed to open | held broken | published by held | short sessions done | short sessions failed | received |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in samples {
        let c = s.counts;
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.minute,
            s.rss_mib,
            s.fds,
            s.threads,
            s.tasks,
            s.sessions,
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            c[6]
        );
    }
    // Drift after the held sessions are all open (the first minutes ramp up).
    let settled: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.counts[0] >= soak.sessions as u64)
        .collect();
    if let (Some(first), Some(last)) = (settled.first(), settled.last()) {
        let _ = writeln!(
            out,
            "\nFrom minute {} (every held session open) to minute {}: RSS {:.1} -> {:.1} MiB \
             ({:+.1}), descriptors {} -> {}, tasks {} -> {}.",
            first.minute,
            last.minute,
            first.rss_mib,
            last.rss_mib,
            last.rss_mib - first.rss_mib,
            first.fds,
            last.fds,
            first.tasks,
            last.tasks
        );
    }
    out
}
