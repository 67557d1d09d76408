//! When the cluster loses a queue that the session declared itself, declare it again.
//!
//! A transient queue lives on one node. When that node dies, or another node only believes it
//! died (a node paused past `net_ticktime`, which RabbitMQ takes for a partition, deletes the
//! transient queues it thinks lost, cluster-wide once the nodes reconnect), the queue is gone
//! while the session that declared it carries on elsewhere: the node cancels its consumer
//! (`basic.cancel`), or answers 404 NOT_FOUND naming it (the next `basic.consume`, a bind).
//! Celery's pidbox queue (auto-delete, declared by every worker) is the common case: in the
//! client matrix, a worker stopped for good on that 404 after a SIGSTOP.
//!
//! tether knows the declaration, so the session is set up again (on fresh channels, the way a
//! failover replays it), which declares the queue again and starts its consumers. The node is
//! left, not failed. A queue lost again and again (someone keeps deleting it) is left to the
//! client after [`MAX_HEALS`] set-ups in [`WINDOW`]: it then sees the cancel or the 404 as it
//! would without tether.

use std::time::{Duration, Instant};

/// The most set-ups for lost queues within [`WINDOW`].
pub const MAX_HEALS: u32 = 3;
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct LostQueues {
    /// When the current window began, and the set-ups in it.
    window: Option<(Instant, u32)>,
}

impl LostQueues {
    /// Whether the session may be set up again for a lost queue at `now`; counts it if so.
    pub fn heal(&mut self, now: Instant) -> bool {
        match &mut self.window {
            Some((start, count)) if now.duration_since(*start) < WINDOW => {
                if *count >= MAX_HEALS {
                    return false;
                }
                *count += 1;
            }
            _ => self.window = Some((now, 1)),
        }
        true
    }
}

/// The queue RabbitMQ names in a 404 reply ("NOT_FOUND - no queue 'NAME' in vhost '/'").
pub fn queue_not_found(reply_text: &str) -> Option<&str> {
    let rest = reply_text.split_once("no queue '")?.1;
    let (name, _) = rest.rsplit_once("' in vhost")?;
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heals_are_capped_within_a_window_and_allowed_again_after() {
        let mut lost = LostQueues::default();
        let start = Instant::now();
        for n in 0..MAX_HEALS {
            assert!(lost.heal(start + Duration::from_secs(n.into())));
        }
        assert!(!lost.heal(start + Duration::from_secs(10)), "over the cap");
        assert!(lost.heal(start + WINDOW), "a new window");
    }

    #[test]
    fn the_queue_is_read_from_rabbitmqs_404() {
        assert_eq!(
            queue_not_found("NOT_FOUND - no queue 'w1@host.celery.pidbox' in vhost '/'"),
            Some("w1@host.celery.pidbox")
        );
        assert_eq!(
            queue_not_found("NOT_FOUND - no queue 'it's' in vhost 'a'"),
            Some("it's")
        );
        assert_eq!(
            queue_not_found("NOT_FOUND - no exchange 'x' in vhost '/'"),
            None
        );
        assert_eq!(queue_not_found(""), None);
    }
}
