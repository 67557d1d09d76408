//! Active health checking of one node endpoint. State changes only after `rise` consecutive
//! successes or `fall` consecutive failures, except that a failed connect from a session takes
//! the endpoint down at once (passive detection, see [`super::connect`]). An endpoint that is
//! down is probed with jittered exponential backoff until it answers again.

use crate::backoff::{Backoff, jitter};
use crate::cluster::ejection::{Cause, count_ejection};
use crate::cluster::node::{Endpoint, Node};
use crate::cluster::probe;
use crate::config::HealthConfig;
use crate::metrics::names;
use crate::tls::{Connector, Swappable};
use metrics::Counter;
use std::sync::Arc;
use tokio::sync::watch;

/// Counts consecutive results and says when the endpoint's state should flip.
#[derive(Debug)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    successes: u32,
    failures: u32,
}

impl RiseFall {
    pub fn new(rise: u32, fall: u32) -> RiseFall {
        RiseFall {
            rise,
            fall,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one result; returns the new state when it should change from `up`.
    pub fn record(&mut self, up: bool, success: bool) -> Option<bool> {
        if success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (!up && self.successes >= self.rise).then_some(true)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (up && self.failures >= self.fall).then_some(false)
        }
    }

    pub fn reset(&mut self) {
        self.successes = 0;
        self.failures = 0;
    }
}

struct CheckCounters {
    success: Counter,
    failure: Counter,
    timeout: Counter,
}

impl CheckCounters {
    fn new(node: &Node) -> CheckCounters {
        let counter = |result: &'static str| {
            metrics::counter!(names::HEALTH_CHECKS_TOTAL,
                "cluster" => node.cluster.to_string(), "node" => node.name.clone(), "result" => result)
        };
        CheckCounters {
            success: counter("success"),
            failure: counter("failure"),
            timeout: counter("timeout"),
        }
    }
}

/// Checks one endpoint of `node` until the node is retired, with the settings `watch` holds
/// (a reload changes them in place).
pub async fn run(
    node: Arc<Node>,
    endpoint_name: String,
    mut watch: watch::Receiver<HealthConfig>,
    tls: Swappable<Connector>,
) {
    let Some(endpoint) = node.endpoints.get(&endpoint_name) else {
        return;
    };
    let counters = CheckCounters::new(&node);
    let mut settings = watch.borrow_and_update().clone();
    let mut rise_fall = RiseFall::new(settings.rise, settings.fall);
    let mut backoff = Backoff::new(settings.interval, settings.max_backoff);
    // Spread the first checks of many endpoints over one interval.
    let mut delay = settings.interval.mul_f64(rand::random_range(0.0..1.0));
    // Set when a session made the endpoint suspect: the next check, made at once, decides.
    let mut suspect_check = false;
    loop {
        tokio::select! {
            _ = node.retired.cancelled() => return,
            _ = endpoint.health.suspect.notified() => {
                suspect_check = true;
                delay = std::time::Duration::ZERO;
                continue;
            }
            _ = endpoint.health.passive_down.notified() => {
                // A session saw the endpoint fail: start counting towards its return afresh.
                rise_fall.reset();
                backoff.reset();
                delay = backoff.next_delay();
                continue;
            }
            changed = watch.changed() => {
                if changed.is_err() {
                    return; // the cluster is gone
                }
                settings = watch.borrow_and_update().clone();
                tracing::debug!(cluster = %node.cluster, node = %node.name,
                    endpoint = %endpoint.name, "health settings reloaded");
                // Results so far count towards the new rise/fall only from the next one on.
                rise_fall = RiseFall::new(settings.rise, settings.fall);
                backoff = Backoff::new(settings.interval, settings.max_backoff);
                delay = jitter(settings.interval);
                continue;
            }
            _ = tokio::time::sleep(delay) => {}
        }
        let connector = tls.load_full();
        let outcome = tokio::time::timeout(
            settings.timeout,
            probe::probe(endpoint.check, &endpoint.address, connector.as_deref()),
        )
        .await;
        let (success, detail) = match outcome {
            Ok(Ok(())) => {
                counters.success.increment(1);
                (true, String::new())
            }
            Ok(Err(e)) => {
                counters.failure.increment(1);
                (false, e.to_string())
            }
            Err(_) => {
                counters.timeout.increment(1);
                (
                    false,
                    format!(
                        "{} check got no answer within {}",
                        endpoint.check,
                        humantime::format_duration(settings.timeout)
                    ),
                )
            }
        };
        let up = endpoint.health.is_up();
        if suspect_check {
            suspect_check = false;
            if let Some(cause) = endpoint.health.clear_suspicion() {
                judge_suspect(&node, endpoint, &cause, success, &detail);
                if !success {
                    rise_fall.reset();
                    delay = backoff.next_delay();
                    continue;
                }
            }
        }
        if let Some(now_up) = rise_fall.record(up, success) {
            let reason = if now_up {
                format!(
                    "{} consecutive {} checks passed",
                    settings.rise, endpoint.check
                )
            } else {
                format!(
                    "{} consecutive checks failed, last: {detail}",
                    settings.fall
                )
            };
            if node.set_endpoint_health(endpoint, now_up, &reason) && !now_up {
                count_ejection(&node, Cause::HealthCheck);
            }
        }
        delay = if endpoint.health.is_up() || success {
            backoff.reset();
            jitter(settings.interval)
        } else {
            backoff.next_delay()
        };
    }
}

/// The check a suspect endpoint got at once: it stays in rotation if the check passed, and
/// goes down if it failed.
fn judge_suspect(node: &Node, endpoint: &Endpoint, cause: &str, passed: bool, detail: &str) {
    let result = if passed { "cleared" } else { "ejected" };
    metrics::counter!(names::SUSPECT_CHECKS_TOTAL,
        "cluster" => node.cluster.to_string(), "node" => node.name.clone(), "result" => result)
    .increment(1);
    if passed {
        tracing::info!(cluster = %node.cluster, node = %node.name, endpoint = %endpoint.name,
            %cause, "suspect endpoint passed its check; it stays in rotation");
        return;
    }
    let reason = format!("suspect ({cause}), then its check failed: {detail}");
    if node.set_endpoint_health(endpoint, false, &reason) {
        count_ejection(node, Cause::SuspectCheck);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_flips_only_after_rise_or_fall_in_a_row() {
        let mut rf = RiseFall::new(2, 3);
        assert_eq!(rf.record(true, false), None);
        assert_eq!(rf.record(true, false), None);
        assert_eq!(
            rf.record(true, true),
            None,
            "a success breaks the run of failures"
        );
        assert_eq!(rf.record(true, false), None);
        assert_eq!(rf.record(true, false), None);
        assert_eq!(rf.record(true, false), Some(false));
        assert_eq!(rf.record(false, true), None);
        assert_eq!(rf.record(false, false), None);
        assert_eq!(rf.record(false, true), None);
        assert_eq!(rf.record(false, true), Some(true));
    }
}
