//! tether-bench: load for AMQP 0-9-1, STOMP and opaque TCP, and the side-by-side benchmark of a
//! direct connection, HAProxy and tether that `scripts/bench` runs.
//!
//! # Layout
//!
//! - [`suite`]: the side-by-side run and its scenarios a-g.
//! - [`amqp`], [`stomp`], [`tcp`]: workloads.
//! - [`failover`]: the failover stall, with a careful application's reconnect loop.
//! - [`held`]: what held client connections cost the broker.
//! - [`report`]: markdown, JSON and PNG charts.
//! - [`profile`]: `--profile`: perf's counts and flame graphs for one scenario.
//! - [`stats`], [`proc`], [`lab`]: latency histograms, /proc readings, the broker lab.

#![forbid(unsafe_code)]

mod amqp;
mod failover;
mod held;
mod idle_amqp;
mod lab;
mod locality;
mod proc;
mod profile;
mod report;
mod soak;
mod stats;
mod stomp;
mod suite;
mod tcp;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "tether-bench",
    about = "Load generator and side-by-side benchmark for tether"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every scenario against a direct connection, HAProxy and tether, written to reports/.
    Suite {
        /// A short run (under five minutes): reports/bench-quick.*.
        #[arg(long)]
        quick: bool,
        /// The repository (for scripts/cluster, conf/bench and target/release/tether).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        #[arg(long, default_value = "reports")]
        out: PathBuf,
        /// Run only these scenarios (comma-separated keys, e.g. `a_tls_amqp_confirms`, or
        /// their prefixes: `a_tls,e_tls`); the report is then reports/bench-NAME.*.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// The report's name with `--only`.
        #[arg(long, default_value = "partial")]
        name: String,
        /// Profile one scenario (e.g. `a_amqp_confirms`): perf counts each proxy's system
        /// calls and samples its stacks; writes reports/profile-SCENARIO.md and flame graphs.
        #[arg(long)]
        profile: Option<String>,
    },
    /// AMQP publishers and consumers against any broker or proxy.
    Amqp {
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        url: String,
        #[arg(long, default_value = "tether-bench")]
        queue: String,
        #[arg(long, default_value_t = 8)]
        publishers: usize,
        #[arg(long, default_value_t = 8)]
        consumers: usize,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long)]
        no_confirms: bool,
        /// Messages per second per publisher; flat out when absent.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Held AMQP sessions with churn and light traffic for a long time, tether's memory,
    /// descriptors and tasks sampled every minute (scripts/soak).
    Soak {
        #[arg(long, default_value = "127.0.0.1:5672")]
        target: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: std::net::SocketAddr,
        /// tether's process id.
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Short sessions started per second.
        #[arg(long, default_value_t = 1_000)]
        churn: u32,
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Seconds between two publishes of one held session.
        #[arg(long, default_value_t = 10.0)]
        every: f64,
        #[arg(long, default_value = "reports/soak.md")]
        out: PathBuf,
    },
    /// STOMP publishers (with receipts) and consumers against any broker or proxy.
    Stomp {
        #[arg(long, default_value = "127.0.0.1:61613")]
        addr: std::net::SocketAddr,
        #[arg(long, default_value = "/queue/tether-bench")]
        destination: String,
        #[arg(long, default_value_t = 8)]
        publishers: usize,
        #[arg(long, default_value_t = 8)]
        consumers: usize,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    stats::epoch();
    match Cli::parse().command {
        Command::Suite {
            quick,
            repo,
            out,
            only,
            name,
            profile,
        } => {
            suite::run(suite::Settings {
                quick,
                repo,
                out,
                only,
                name,
                profile,
            })
            .await
        }
        Command::Amqp {
            url,
            queue,
            publishers,
            consumers,
            size,
            no_confirms,
            rate,
            seconds,
        } => {
            amqp::prepare(&url, &queue, false).await?;
            let outcome = amqp::run(&amqp::Load {
                url,
                queue,
                publishers,
                consumers,
                size,
                confirms: !no_confirms,
                rate,
                duration: Duration::from_secs(seconds),
                window: 64,
            })
            .await?;
            print_outcome(&outcome);
            Ok(())
        }
        Command::Soak {
            target,
            admin,
            pid,
            sessions,
            churn,
            minutes,
            every,
            out,
        } => {
            soak::run(soak::Soak {
                target,
                admin,
                pid,
                sessions,
                churn,
                minutes,
                every: Duration::from_secs_f64(every),
                out,
            })
            .await
        }
        Command::Stomp {
            addr,
            destination,
            publishers,
            consumers,
            size,
            seconds,
        } => {
            let outcome = stomp::run(&stomp::Load {
                addr,
                destination,
                publishers,
                consumers,
                size,
                receipts: true,
                duration: Duration::from_secs(seconds),
                window: 64,
            })
            .await?;
            print_outcome(&outcome);
            Ok(())
        }
    }
}

fn print_outcome(outcome: &stats::Outcome) {
    println!(
        "published {} confirmed {} received {} errors {} in {:.1}s: {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms",
        outcome.published,
        outcome.confirmed,
        outcome.received,
        outcome.errors,
        outcome.seconds,
        outcome.msg_per_s(),
        outcome.p50_ms(),
        outcome.p99_ms()
    );
}
