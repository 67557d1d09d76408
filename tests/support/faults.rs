//! The named faults both protocols' failover suites run their traffic through: one table, so a
//! fault added here is proven for AMQP and STOMP alike.

use super::front::Front;
use super::lab::{Lab, ports};

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// kill -9 of each node that holds a session, one after another.
    Kill9,
    /// SIGSTOP: the node hangs; the kernel still accepts TCP.
    Sigstop,
    /// A network partition (nftables drops every packet to and from the node's client
    /// ports): its connections neither close nor answer, and new ones are never accepted; the
    /// node itself runs on, in its cluster.
    Partition,
    /// A graceful stop (`rabbitmqctl stop_app`: 320 CONNECTION_FORCED to every connection).
    GracefulStop,
    /// A crash inside a live broker: its channel processes die (AMQP 541 INTERNAL_ERROR,
    /// STOMP ERROR "AMQP channel died"); the node stays up.
    InternalError,
    /// Every node stopped and started in turn.
    RollingRestart,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::Kill9,
        Fault::Sigstop,
        Fault::Partition,
        Fault::GracefulStop,
        Fault::InternalError,
        Fault::RollingRestart,
    ];

    /// The faults the TLS variants of the failover suites run: a dead, a hung and a restarting
    /// node.
    pub const OVER_TLS: [Fault; 3] = [Fault::Kill9, Fault::Sigstop, Fault::RollingRestart];

    /// The trial's name, after the broker's: `rabbitmq_kill_9`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill_9",
            Fault::Sigstop => "sigstop",
            Fault::Partition => "partition",
            Fault::GracefulStop => "graceful_stop",
            Fault::InternalError => "internal_error",
            Fault::RollingRestart => "rolling_restart",
        }
    }

    /// Breaks the nodes under `front`'s sessions and brings them back; every session fails
    /// over at least once.
    pub fn apply(self, lab: &Lab, front: &Front) {
        match self {
            Fault::Kill9 => front.break_each_busy_node(lab, |lab, node| lab.kill(node)),
            Fault::Sigstop => front.break_each_busy_node(lab, |lab, node| lab.pause(node)),
            // `start` (after the sessions left, and by the heal guard) lifts the partition.
            Fault::Partition => front.break_each_busy_node(lab, |lab, node| lab.partition(node)),
            Fault::GracefulStop => front.break_each_busy_node(lab, |lab, node| lab.stop(node)),
            // The node stays healthy: its sessions fail over (each connection got a 541), and
            // may come back to it, as it passes the check it gets.
            Fault::InternalError => {
                for node in front.busy_nodes() {
                    let (before, sessions) = (front.failovers(), front.sessions_on(&node));
                    lab.crash_channels(&node);
                    front.wait_failovers(before + sessions as f64);
                }
            }
            Fault::RollingRestart => {
                front.rolling_restart(lab, &ports::RABBIT);
                assert!(
                    front.failovers() >= 1.0,
                    "a rolling restart moved no session"
                );
            }
        }
    }
}
