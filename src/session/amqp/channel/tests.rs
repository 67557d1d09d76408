use super::*;
use crate::proto::amqp::Frame;
use crate::session::amqp::confirms::ClientConfirm;
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(30);

fn confirm(
    channel: &mut Channel,
    tag: u64,
    multiple: bool,
    ack_: bool,
) -> (Vec<ClientConfirm>, Vec<Publish>) {
    channel
        .confirms
        .confirm(ack(tag, multiple), ack_, Instant::now(), PATIENCE)
}

fn publish() -> Publish {
    Publish::new(vec![Frame::body(1, Bytes::from_static(b"x"))])
}

fn ack(tag: u64, multiple: bool) -> Ack {
    Ack {
        delivery_tag: tag,
        multiple,
        requeue: false,
    }
}

#[test]
fn delivery_tags_only_grow_and_stale_acks_are_recognised() {
    let mut channel = Channel::new(1);
    assert_eq!(channel.tags.client_tag(1), 1);
    assert_eq!(channel.tags.client_tag(2), 2);
    assert!(!channel.tags.tags_shifted());
    assert_eq!(
        channel.tags.upstream_ack(ack(2, false)),
        Some(ack(2, false))
    );
    channel.failover();
    assert_eq!(
        channel.tags.client_tag(1),
        3,
        "the new node's first delivery follows the old ones"
    );
    assert_eq!(
        channel.tags.upstream_ack(ack(3, false)),
        Some(ack(1, false))
    );
    assert_eq!(channel.tags.upstream_ack(ack(2, false)), None, "stale");
    assert_eq!(
        channel.tags.upstream_ack(ack(2, true)),
        None,
        "stale, even multiple"
    );
    assert_eq!(
        channel.tags.upstream_ack(ack(4, true)),
        Some(ack(2, true)),
        "multiple is clipped at the epoch boundary"
    );
    assert_eq!(channel.tags.upstream_ack(ack(0, true)), Some(ack(0, true)));
    channel.failover();
    assert_eq!(channel.tags.client_tag(1), 4);
}

#[test]
fn transactions_send_nothing_before_commit_and_commit_once_confirmed() {
    let mut channel = Channel::new(1);
    assert!(
        channel.tx.select(&mut channel.confirms),
        "tether turns confirms on for a tx channel"
    );
    assert!(!channel.record_publish(publish()));
    channel.record_publish(publish());
    assert_eq!(channel.unconfirmed_count(), 2);
    assert!(
        channel.confirms.unconfirmed.is_empty(),
        "nothing is sent before the commit"
    );
    channel.tx.rollback();
    assert_eq!(channel.unconfirmed_count(), 0);

    channel.record_publish(publish());
    channel.record_publish(publish());
    let sent = channel.tx.commit(&mut channel.confirms).0;
    assert_eq!(sent.len(), 2);
    assert!(!channel.commit_confirmed());
    confirm(&mut channel, 1, false, true);
    assert!(
        !channel.commit_confirmed(),
        "one publish is not confirmed yet"
    );
    confirm(&mut channel, 2, false, true);
    assert!(channel.commit_confirmed());
    assert!(!channel.commit_confirmed(), "answered once");
}

#[test]
fn a_commit_interrupted_by_a_failover_completes_on_the_new_node() {
    let mut channel = Channel::new(1);
    channel.tx.select(&mut channel.confirms);
    channel.record_publish(publish());
    channel.record_publish(publish());
    channel.tx.commit(&mut channel.confirms);
    confirm(&mut channel, 1, false, true);
    channel.failover();
    channel.confirms.renumber_for_replay();
    assert_eq!(
        channel.confirms.unconfirmed.len(),
        1,
        "the unconfirmed one is sent again"
    );
    confirm(&mut channel, 1, false, true);
    assert!(channel.commit_confirmed());
}

#[test]
fn outstanding_deliveries_follow_acks_in_and_out_of_order() {
    let mut channel = Channel::new(1);
    for tag in 1..=5 {
        channel.tags.client_tag(tag);
    }
    assert_eq!(channel.tags.outstanding_deliveries(), 5);
    channel.tags.settle(2, false);
    channel.tags.settle(1, false);
    assert_eq!(channel.tags.outstanding_deliveries(), 3);
    channel.tags.settle(4, false);
    assert_eq!(channel.tags.outstanding_deliveries(), 2);
    channel.tags.settle(4, true);
    assert_eq!(
        channel.tags.outstanding_deliveries(),
        1,
        "multiple settles 3"
    );
    channel.tags.client_tag(6);
    channel.tags.delivered_settled(6);
    assert_eq!(
        channel.tags.outstanding_deliveries(),
        1,
        "a no-ack delivery is settled"
    );
    channel.tags.settle(0, true);
    assert_eq!(
        channel.tags.outstanding_deliveries(),
        0,
        "multiple with tag 0 settles all"
    );
    channel.tags.client_tag(7);
    channel.failover();
    assert_eq!(
        channel.tags.outstanding_deliveries(),
        0,
        "a failed node's deliveries are not waited for"
    );
    channel.tags.client_tag(1);
    assert_eq!(
        channel.tags.outstanding_deliveries(),
        1,
        "the new node's tag 1 is 8"
    );
}
