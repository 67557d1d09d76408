//! The `tether` command: `run`, `check`, `status`, `reload`, `drain`, `undrain`, `--version`.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tether::config::Config;

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "Keeps AMQP and STOMP sessions alive across broker node failures."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the listeners of a config file until SIGTERM or SIGINT; SIGHUP reloads the file.
    Run {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Log line format.
        #[arg(long, value_enum, default_value_t = LogFormat::Human, env = "TETHER_LOG_FORMAT")]
        log_format: LogFormat,
        /// Take over from the tether running with this config: its listening sockets and its
        /// sessions move to this process, no client connection is closed, and it exits.
        #[arg(long)]
        takeover: bool,
    },
    /// Validate a config file and print what it would run.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show a running tether's listeners, nodes, endpoint health and last failover.
    Status {
        #[command(flatten)]
        admin: AdminAddress,
        /// Print /status as tether serves it (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Make a running tether re-read its config file (as SIGHUP does) and print what changed;
    /// exits 1 if the new file was rejected (the running configuration stays).
    Reload {
        #[command(flatten)]
        admin: AdminAddress,
    },
    /// Drain a node: a running tether sends it no new sessions and moves its sessions to other
    /// nodes at their next safe point (planned moves, not failovers). Run it before stopping or
    /// upgrading the node; `undrain` when it is back.
    Drain {
        #[command(flatten)]
        target: DrainTarget,
        /// Wait until no session of this tether is on the node, printing how many are left;
        /// exits 1 if some are still there after --timeout.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Undrain a node: it takes new sessions again (rebalancing, if on, moves some back).
    Undrain {
        #[command(flatten)]
        target: DrainTarget,
    },
}

#[derive(clap::Args)]
struct DrainTarget {
    /// The node's name, as `tether status` shows it.
    node: String,
    /// The node's cluster, when more than one cluster has a node of that name.
    #[arg(long)]
    cluster: Option<String>,
    #[command(flatten)]
    admin: AdminAddress,
}

/// Where a running tether's admin listener is, for the commands that ask it.
#[derive(clap::Args)]
struct AdminAddress {
    /// The running tether's admin listener (host:port).
    #[arg(long, value_name = "ADDR", default_value = tether::status::DEFAULT_ADMIN)]
    admin: String,
    /// Take the admin listener's address from this config file instead.
    #[arg(short, long, value_name = "FILE", conflicts_with = "admin")]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Exit code for a config file that cannot be used.
const BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run {
            config,
            log_format,
            takeover,
        } => run(&config, log_format, takeover),
        Command::Status { admin, json } => status(&admin, json),
        Command::Reload { admin } => reload(&admin),
        Command::Drain {
            target,
            wait,
            timeout,
        } => drain(&target, true, wait.then_some(timeout)),
        Command::Undrain { target } => drain(&target, false, None),
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("tether: {}: {e}", path.display());
        ExitCode::from(BAD_CONFIG)
    })
}

fn check(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // The certificates and keys are read as a start would read them.
    let tls = match tether::tls::Material::load(&config) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("tether: {}: {e}", path.display());
            return ExitCode::from(BAD_CONFIG);
        }
    };
    println!("{}: ok", path.display());
    for warning in tls.warnings() {
        println!("warning: {warning}");
    }
    print!("{}", tether::config::describe(&config));
    ExitCode::SUCCESS
}

/// The admin listener to ask: `--admin`, or the one a config file names.
fn admin_address(address: &AdminAddress) -> Result<String, ExitCode> {
    let Some(path) = address.config.as_deref() else {
        return Ok(address.admin.clone());
    };
    let config = load(path)?;
    let Some(admin) = config.admin else {
        eprintln!(
            "tether: {}: no [admin] section, so tether has no admin listener to ask",
            path.display()
        );
        return Err(ExitCode::from(BAD_CONFIG));
    };
    Ok(tether::status::admin_target(admin.listen))
}

fn reload(admin: &AdminAddress) -> ExitCode {
    let address = match admin_address(admin) {
        Ok(address) => address,
        Err(code) => return code,
    };
    match tether::status::reload(&address) {
        Ok(Ok(changes)) => {
            print!("{changes}");
            ExitCode::SUCCESS
        }
        Ok(Err(problem)) => {
            eprint!("tether: {problem}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tether: {e}");
            ExitCode::FAILURE
        }
    }
}

fn drain(target: &DrainTarget, on: bool, wait: Option<std::time::Duration>) -> ExitCode {
    let address = match admin_address(&target.admin) {
        Ok(address) => address,
        Err(code) => return code,
    };
    let cluster = target.cluster.as_deref();
    match tether::status::drain(&address, &target.node, cluster, on) {
        Ok(Ok(answer)) => print!("{answer}"),
        Ok(Err(problem)) => {
            eprint!("tether: {problem}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("tether: {e}");
            return ExitCode::FAILURE;
        }
    }
    let Some(limit) = wait else {
        return ExitCode::SUCCESS;
    };
    match tether::status::wait_drained(&address, &target.node, cluster, limit) {
        Ok(()) => {
            println!("{}: no session left on it", target.node);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tether: {e}");
            ExitCode::FAILURE
        }
    }
}

fn status(admin: &AdminAddress, json: bool) -> ExitCode {
    let address = match admin_address(admin) {
        Ok(address) => address,
        Err(code) => return code,
    };
    let report = tether::status::fetch(&address).and_then(|body| {
        let report = tether::status::parse(&address, &body)?;
        Ok((body, report))
    });
    match report {
        Ok((body, _)) if json => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((_, report)) => {
            print!(
                "{}",
                tether::status::render(&report, &address, std::time::SystemTime::now())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tether: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One thread runs everything (no wake-ups across threads: the least CPU per message, measured
/// in reports/bench.md); more spread sessions over cores.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    builder.enable_all().build()
}

fn run(path: &Path, log_format: LogFormat, takeover: bool) -> ExitCode {
    init_logging(log_format);
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    raise_open_file_limit();
    let runtime = match runtime(config.threads) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tether: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tether::server::run(config, path.to_path_buf(), takeover)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tether: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Every session holds two sockets; the default soft limit of 1024 would cap tether at ~500.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
}
