//! `scripts/bench --profile SCENARIO`: where a proxy's CPU goes under one scenario's load.
//!
//! While the scenario runs against each proxy (HAProxy, tether), `perf stat` counts the proxy's
//! system calls (by kind) and context switches, and `perf record` samples its stacks.
//! Afterwards the samples become flame graphs (inferno) and tables of the functions that cost
//! most, written with the per-message counts, side by side, to reports/profile-SCENARIO.md and
//! reports/profile-SCENARIO-TARGET.svg.

use crate::proc::CpuMeter;
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// The system calls counted one by one; the rest are in the total.
const SYSCALLS: [&str; 9] = [
    "read",
    "recvfrom",
    "readv",
    "write",
    "writev",
    "sendto",
    "sendmsg",
    "epoll_wait",
    "futex",
];
/// Samples per second: enough for a 30 s run to show functions of 1% reliably.
const FREQUENCY: &str = "999";

/// CPU used by a proxy over a stretch of work; with `--profile`, also what perf saw.
pub struct Meter {
    cpu: CpuMeter,
    profiler: Option<Profiler>,
}

/// What the meters of a profiling run saw: counts, and each target's samples.
static SEEN: Mutex<Vec<(Counts, PathBuf)>> = Mutex::new(Vec::new());

impl Meter {
    pub fn start(target: &str, pid: Option<u32>, profile: bool) -> Meter {
        let profiler = match pid.filter(|_| profile) {
            Some(pid) => match Profiler::start(target, pid) {
                Ok(profiler) => Some(profiler),
                Err(e) => {
                    eprintln!("profile: {e:#}");
                    None
                }
            },
            None => None,
        };
        Meter {
            cpu: CpuMeter::start(pid),
            profiler,
        }
    }

    /// The CPU seconds used; a profiler's counts (per `units`, the messages) are kept for
    /// [`write`].
    pub fn finish(self, units: u64) -> Option<f64> {
        let cpu = self.cpu.seconds();
        if let Some(profiler) = self.profiler {
            match profiler.stop(units, cpu.unwrap_or(f64::NAN)) {
                Ok(seen) => SEEN.lock().expect("not poisoned").push(seen),
                Err(e) => eprintln!("profile: {e:#}"),
            }
        }
        cpu
    }
}

/// What one proxy did under the load, per message (or per unit the scenario counts).
pub struct Counts {
    pub target: String,
    pub units: u64,
    pub cpu_seconds: f64,
    pub events: BTreeMap<String, u64>,
}

pub struct Profiler {
    target: String,
    stat: Child,
    stat_out: PathBuf,
    record: (Child, PathBuf),
}

fn perf() -> Command {
    let mut command = Command::new("perf");
    command.stdout(Stdio::null()).stderr(Stdio::null());
    command
}

impl Profiler {
    /// Starts counting the process's system calls and sampling its stacks.
    fn start(target: &str, pid: u32) -> anyhow::Result<Profiler> {
        let dir = std::env::temp_dir();
        let stat_out = dir.join(format!("tether-bench-perf-stat-{target}.txt"));
        let mut events = vec![
            "raw_syscalls:sys_enter".to_string(),
            "context-switches".into(),
        ];
        events.extend(SYSCALLS.iter().map(|s| format!("syscalls:sys_enter_{s}")));
        let stat = perf()
            .args(["stat", "-x", ",", "-e", &events.join(","), "-o"])
            .arg(&stat_out)
            .args(["-p", &pid.to_string()])
            .spawn()
            .context("start perf stat (Debian package linux-perf)")?;
        let data = dir.join(format!("tether-bench-perf-{target}.data"));
        let record = perf()
            .args([
                "record",
                "-F",
                FREQUENCY,
                "--call-graph",
                "dwarf,16384",
                "-o",
            ])
            .arg(&data)
            .args(["-p", &pid.to_string()])
            .spawn()
            .context("start perf record")?;
        // perf attaches after it starts; the load must not begin before.
        std::thread::sleep(std::time::Duration::from_millis(500));
        Ok(Profiler {
            target: target.to_string(),
            stat,
            stat_out,
            record: (record, data),
        })
    }

    /// Stops perf; returns the counts and the samples' file.
    fn stop(self, units: u64, cpu_seconds: f64) -> anyhow::Result<(Counts, PathBuf)> {
        let (record, data) = self.record;
        interrupt(record)?;
        interrupt(self.stat)?;
        let text = std::fs::read_to_string(&self.stat_out).context("read perf stat's output")?;
        let mut events = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let fields: Vec<&str> = line.split(',').collect();
            if let (Some(count), Some(event)) = (fields.first(), fields.get(2)) {
                let name = event
                    .trim_start_matches("syscalls:sys_enter_")
                    .replace("raw_syscalls:sys_enter", "syscalls");
                events.insert(name, count.parse().unwrap_or(0));
            }
        }
        let counts = Counts {
            target: self.target,
            units,
            cpu_seconds,
            events,
        };
        Ok((counts, data))
    }
}

fn interrupt(mut child: Child) -> anyhow::Result<()> {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait()?;
    if !status.success() && status.code() != Some(130) && status.code().is_some() {
        bail!("perf ended with {status}");
    }
    Ok(())
}

/// Writes reports/profile-SCENARIO.md (counts per message and the costliest functions, side
/// by side) and a flame graph per proxy, reports/profile-SCENARIO-TARGET.svg.
pub fn write(out: &Path, scenario: &str, command: &str) -> anyhow::Result<()> {
    let seen = std::mem::take(&mut *SEEN.lock().expect("not poisoned"));
    if seen.is_empty() {
        bail!("nothing was profiled: is {scenario} a scenario that meters a proxy?");
    }
    let counts: Vec<&Counts> = seen.iter().map(|(c, _)| c).collect();
    let mut md = format!(
        "# Profile: scenario {scenario}\n\nWritten by `{command}`: the scenario's load, with \
         `perf stat` counting each proxy's system calls and `perf record` sampling its stacks \
         ({FREQUENCY} Hz, DWARF call graphs; the sampling itself costs each proxy some CPU). Per \
         message: divided by the messages the consumers received. 2 shared cores: compare the \
         proxies within the run, not across runs.\n\n"
    );
    let mut names: Vec<&String> = counts.iter().flat_map(|c| c.events.keys()).collect();
    names.sort();
    names.dedup();
    md.push_str("| per message | ");
    md.push_str(
        &counts
            .iter()
            .map(|c| c.target.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
    );
    md.push_str(" |\n|---|");
    md.push_str(&"---:|".repeat(counts.len()));
    md.push('\n');
    let row = |md: &mut String, label: &str, value: &dyn Fn(&Counts) -> f64| {
        let cells: Vec<String> = counts.iter().map(|c| format!("{:.3}", value(c))).collect();
        let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
    };
    row(&mut md, "CPU µs", &|c| {
        c.cpu_seconds * 1e6 / c.units.max(1) as f64
    });
    for name in names {
        row(&mut md, name, &|c| {
            c.events.get(name).copied().unwrap_or(0) as f64 / c.units.max(1) as f64
        });
    }
    for (counts, samples) in &seen {
        let target = &counts.target;
        let (top, svg) = flame_graph(samples, &format!("{target}, scenario {scenario}"))?;
        let file = format!("profile-{scenario}-{target}.svg");
        std::fs::write(out.join(&file), svg)?;
        let _ = write!(
            md,
            "\n## {target}\n\nFlame graph: [{file}]({file}) (open it in a browser: it is \
             searchable and zoomable). Where the samples were (own time, top 25):\n\n\
             | share | function |\n|---:|---|\n"
        );
        for (share, name) in top.iter().take(25) {
            let _ = writeln!(
                md,
                "| {:.1}% | `{}` |",
                share * 100.0,
                name.replace('|', "\\|")
            );
        }
    }
    std::fs::write(out.join(format!("profile-{scenario}.md")), md)?;
    Ok(())
}

/// Folds the samples' stacks (inferno) and draws them; also the functions by own samples.
/// The hottest frames (share of samples, name) and the SVG.
type FlameGraph = (Vec<(f64, String)>, Vec<u8>);

fn flame_graph(samples: &Path, title: &str) -> anyhow::Result<FlameGraph> {
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(samples)
        .stderr(Stdio::null())
        .output()
        .context("perf script")?;
    if script.stdout.is_empty() {
        bail!("perf recorded no samples (is perf_event_paranoid too strict?)");
    }
    let mut folded = Vec::new();
    use inferno::collapse::Collapse;
    inferno::collapse::perf::Folder::default()
        .collapse(BufReader::new(&script.stdout[..]), &mut folded)
        .context("fold the stacks")?;
    let mut own: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0u64;
    for line in String::from_utf8_lossy(&folded).lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let count: u64 = count.parse().unwrap_or(0);
        let leaf = stack.rsplit(';').next().unwrap_or(stack);
        *own.entry(leaf.to_string()).or_default() += count;
        total += count;
    }
    let mut top: Vec<(f64, String)> = own
        .into_iter()
        .map(|(name, count)| (count as f64 / total.max(1) as f64, name))
        .collect();
    top.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    let mut svg = Vec::new();
    inferno::flamegraph::from_reader(&mut options, BufReader::new(&folded[..]), &mut svg)
        .context("draw the flame graph")?;
    Ok((top, svg))
}
