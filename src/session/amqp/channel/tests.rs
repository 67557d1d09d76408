use super::*;

const PATIENCE: Duration = Duration::from_secs(30);

fn confirm(
    channel: &mut Channel,
    tag: u64,
    multiple: bool,
    ack_: bool,
) -> (Vec<ClientConfirm>, Vec<Publish>) {
    channel.upstream_confirm(ack(tag, multiple), ack_, Instant::now(), PATIENCE)
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
fn tether_turns_confirms_on_for_the_first_publish_only() {
    let mut channel = Channel::new(1);
    assert!(channel.record_publish(publish()));
    assert!(!channel.record_publish(publish()));
    let (confirms, refused) = confirm(&mut channel, 2, true, true);
    assert!(confirms.is_empty(), "the client did not ask for confirms");
    assert!(refused.is_empty());
    assert_eq!(channel.unconfirmed_count(), 0);
}

#[test]
fn confirms_keep_the_clients_numbering_across_a_failover() {
    let mut channel = Channel::new(1);
    channel.client_selected_confirms();
    for _ in 0..5 {
        channel.record_publish(publish());
    }
    // The node confirms 1 and 2, then dies.
    let (confirms, _) = confirm(&mut channel, 2, true, true);
    assert_eq!(
        confirms,
        [ClientConfirm {
            ack: true,
            seq: 2,
            multiple: true
        }]
    );
    channel.failover();
    channel.renumber_for_replay();
    let seqs: Vec<(u64, Option<u64>)> = channel
        .unconfirmed
        .iter()
        .map(|p| (p.upstream_seq, p.client_seq))
        .collect();
    assert_eq!(seqs, [(1, Some(3)), (2, Some(4)), (3, Some(5))]);
    // A new publish continues both numberings.
    channel.record_publish(publish());
    assert_eq!(
        channel
            .unconfirmed
            .back()
            .map(|p| (p.upstream_seq, p.client_seq)),
        Some((4, Some(6)))
    );
    // The new node acks its 1..3 at once: the client hears of 3..5 at once.
    let (confirms, _) = confirm(&mut channel, 3, true, true);
    assert_eq!(
        confirms,
        [ClientConfirm {
            ack: true,
            seq: 5,
            multiple: true
        }]
    );
    // A refusal is not passed on: the publish is sent again after a pause.
    let (confirms, given_up) = confirm(&mut channel, 4, false, false);
    assert!(confirms.is_empty() && given_up.is_empty());
    assert_eq!(channel.unconfirmed_count(), 1);
}

#[test]
fn a_multiple_confirm_is_split_when_the_client_still_waits_below_it() {
    let mut channel = Channel::new(1);
    channel.client_selected_confirms();
    for _ in 0..4 {
        channel.record_publish(publish());
    }
    // Confirms arrive out of order: 3 alone, then "up to 4" (covering 1, 2, 4).
    let (confirms, _) = confirm(&mut channel, 3, false, true);
    assert_eq!(
        confirms,
        [ClientConfirm {
            ack: true,
            seq: 3,
            multiple: false
        }]
    );
    let (confirms, _) = confirm(&mut channel, 4, true, true);
    assert_eq!(
        confirms,
        [ClientConfirm {
            ack: true,
            seq: 4,
            multiple: true
        }]
    );
    assert_eq!(channel.unconfirmed_count(), 0);
}

#[test]
fn publishes_before_confirm_select_have_no_client_number() {
    let mut channel = Channel::new(1);
    channel.record_publish(publish());
    channel.client_selected_confirms();
    channel.record_publish(publish());
    let (confirms, _) = confirm(&mut channel, 2, true, true);
    assert_eq!(
        confirms,
        [ClientConfirm {
            ack: true,
            seq: 1,
            multiple: false
        }]
    );
}

#[test]
fn delivery_tags_only_grow_and_stale_acks_are_recognised() {
    let mut channel = Channel::new(1);
    assert_eq!(channel.client_tag(1), 1);
    assert_eq!(channel.client_tag(2), 2);
    assert!(!channel.tags_shifted());
    assert_eq!(channel.upstream_ack(ack(2, false)), Some(ack(2, false)));
    channel.failover();
    assert_eq!(
        channel.client_tag(1),
        3,
        "the new node's first delivery follows the old ones"
    );
    assert_eq!(channel.upstream_ack(ack(3, false)), Some(ack(1, false)));
    assert_eq!(channel.upstream_ack(ack(2, false)), None, "stale");
    assert_eq!(
        channel.upstream_ack(ack(2, true)),
        None,
        "stale, even multiple"
    );
    assert_eq!(
        channel.upstream_ack(ack(4, true)),
        Some(ack(2, true)),
        "multiple is clipped at the epoch boundary"
    );
    assert_eq!(channel.upstream_ack(ack(0, true)), Some(ack(0, true)));
    channel.failover();
    assert_eq!(channel.client_tag(1), 4);
}

#[test]
fn transactions_send_nothing_before_commit_and_commit_once_confirmed() {
    let mut channel = Channel::new(1);
    assert!(
        channel.select_tx(),
        "tether turns confirms on for a tx channel"
    );
    assert!(!channel.record_publish(publish()));
    channel.record_publish(publish());
    assert_eq!(channel.unconfirmed_count(), 2);
    assert!(
        channel.unconfirmed.is_empty(),
        "nothing is sent before the commit"
    );
    channel.rollback();
    assert_eq!(channel.unconfirmed_count(), 0);

    channel.record_publish(publish());
    channel.record_publish(publish());
    let sent = channel.commit();
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
    channel.select_tx();
    channel.record_publish(publish());
    channel.record_publish(publish());
    channel.commit();
    confirm(&mut channel, 1, false, true);
    channel.failover();
    channel.renumber_for_replay();
    assert_eq!(
        channel.unconfirmed.len(),
        1,
        "the unconfirmed one is sent again"
    );
    confirm(&mut channel, 1, false, true);
    assert!(channel.commit_confirmed());
}

#[test]
fn refused_publishes_are_sent_again_then_given_up() {
    let mut channel = Channel::new(1);
    channel.client_selected_confirms();
    channel.record_publish(publish());
    channel.record_publish(publish());
    let start = Instant::now();
    let (confirms, given_up) = channel.upstream_confirm(ack(1, false), false, start, PATIENCE);
    assert!(confirms.is_empty() && given_up.is_empty());
    // Publish 2 is acked meanwhile: the client hears of it alone, 1 is still pending.
    let (confirms, _) = channel.upstream_confirm(ack(2, false), true, start, PATIENCE);
    assert_eq!(
        confirms,
        [ClientConfirm {
            ack: true,
            seq: 2,
            multiple: false
        }]
    );
    let due = channel.next_retry().expect("a retry is scheduled");
    assert!(channel.due_retries(start).is_empty(), "not yet due");
    let resent = channel.due_retries(due);
    assert_eq!(resent.len(), 1);
    assert_eq!(
        channel
            .unconfirmed
            .back()
            .map(|p| (p.upstream_seq, p.client_seq)),
        Some((3, Some(1)))
    );
    // Refused again long after the first refusal: given up, and the client is told.
    let later = start + PATIENCE;
    let (confirms, given_up) = channel.upstream_confirm(ack(3, false), false, later, PATIENCE);
    assert_eq!(
        confirms,
        [ClientConfirm {
            ack: false,
            seq: 1,
            multiple: false
        }]
    );
    assert_eq!(given_up.len(), 1);
    assert_eq!(channel.unconfirmed_count(), 0);
}

#[test]
fn refused_publishes_waiting_for_a_retry_go_with_a_failover_in_order() {
    let mut channel = Channel::new(1);
    channel.client_selected_confirms();
    for _ in 0..3 {
        channel.record_publish(publish());
    }
    channel.upstream_confirm(ack(1, false), false, Instant::now(), PATIENCE);
    channel.failover();
    channel.renumber_for_replay();
    let order: Vec<Option<u64>> = channel.unconfirmed.iter().map(|p| p.client_seq).collect();
    assert_eq!(order, [Some(1), Some(2), Some(3)]);
    assert!(channel.retrying.is_empty());
}

#[test]
fn outstanding_deliveries_follow_acks_in_and_out_of_order() {
    let mut channel = Channel::new(1);
    for tag in 1..=5 {
        channel.client_tag(tag);
    }
    assert_eq!(channel.outstanding_deliveries(), 5);
    channel.settle(2, false);
    channel.settle(1, false);
    assert_eq!(channel.outstanding_deliveries(), 3);
    channel.settle(4, false);
    assert_eq!(channel.outstanding_deliveries(), 2);
    channel.settle(4, true);
    assert_eq!(channel.outstanding_deliveries(), 1, "multiple settles 3");
    channel.client_tag(6);
    channel.delivered_settled(6);
    assert_eq!(
        channel.outstanding_deliveries(),
        1,
        "a no-ack delivery is settled"
    );
    channel.settle(0, true);
    assert_eq!(
        channel.outstanding_deliveries(),
        0,
        "multiple with tag 0 settles all"
    );
    channel.client_tag(7);
    channel.failover();
    assert_eq!(
        channel.outstanding_deliveries(),
        0,
        "a failed node's deliveries are not waited for"
    );
    channel.client_tag(1);
    assert_eq!(
        channel.outstanding_deliveries(),
        1,
        "the new node's tag 1 is 8"
    );
}

#[test]
fn refused_for_counts_from_the_first_refusal_across_retries() {
    let mut channel = Channel::new(1);
    channel.client_selected_confirms();
    channel.record_publish(publish());
    let start = Instant::now();
    assert_eq!(
        channel.refused_for(start),
        Duration::ZERO,
        "nothing refused yet"
    );
    channel.upstream_confirm(ack(1, false), false, start, PATIENCE);
    let due = channel.next_retry().expect("a retry is scheduled");
    channel.due_retries(due);
    let later = due + Duration::from_millis(300);
    channel.upstream_confirm(ack(2, false), false, later, PATIENCE);
    assert_eq!(channel.refused_for(later), later - start);
    // Confirmed at last: nothing is refused any more.
    let due = channel.next_retry().expect("a retry is scheduled");
    channel.due_retries(due);
    channel.upstream_confirm(ack(3, false), true, due, PATIENCE);
    assert_eq!(channel.refused_for(due), Duration::ZERO);
}
