use super::*;
use bytes::Bytes;

const PATIENCE: Duration = Duration::from_secs(30);

fn confirm(
    kept: &mut Confirms,
    tag: u64,
    multiple: bool,
    ack_: bool,
) -> (Vec<ClientConfirm>, Vec<Publish>) {
    kept.confirm(ack(tag, multiple), ack_, Instant::now(), PATIENCE)
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
    let mut kept = Confirms::default();
    assert!(kept.record(publish()));
    assert!(!kept.record(publish()));
    let (confirms, refused) = confirm(&mut kept, 2, true, true);
    assert!(confirms.is_empty(), "the client did not ask for confirms");
    assert!(refused.is_empty());
    assert_eq!(kept.count(), 0);
}

#[test]
fn confirms_keep_the_clients_numbering_across_a_failover() {
    let mut kept = Confirms::default();
    kept.client_selected();
    for _ in 0..5 {
        kept.record(publish());
    }
    // The node confirms 1 and 2, then dies.
    let (confirms, _) = confirm(&mut kept, 2, true, true);
    assert_eq!(
        confirms,
        [ClientConfirm {
            ack: true,
            seq: 2,
            multiple: true
        }]
    );
    kept.failover();
    kept.renumber_for_replay();
    let seqs: Vec<(u64, Option<u64>)> = kept
        .unconfirmed
        .iter()
        .map(|p| (p.upstream_seq, p.client_seq))
        .collect();
    assert_eq!(seqs, [(1, Some(3)), (2, Some(4)), (3, Some(5))]);
    // A new publish continues both numberings.
    kept.record(publish());
    assert_eq!(
        kept.unconfirmed
            .back()
            .map(|p| (p.upstream_seq, p.client_seq)),
        Some((4, Some(6)))
    );
    // The new node acks its 1..3 at once: the client hears of 3..5 at once.
    let (confirms, _) = confirm(&mut kept, 3, true, true);
    assert_eq!(
        confirms,
        [ClientConfirm {
            ack: true,
            seq: 5,
            multiple: true
        }]
    );
    // A refusal is not passed on: the publish is sent again after a pause.
    let (confirms, given_up) = confirm(&mut kept, 4, false, false);
    assert!(confirms.is_empty() && given_up.is_empty());
    assert_eq!(kept.count(), 1);
}

#[test]
fn a_multiple_confirm_is_split_when_the_client_still_waits_below_it() {
    let mut kept = Confirms::default();
    kept.client_selected();
    for _ in 0..4 {
        kept.record(publish());
    }
    // Confirms arrive out of order: 3 alone, then "up to 4" (covering 1, 2, 4).
    let (confirms, _) = confirm(&mut kept, 3, false, true);
    assert_eq!(
        confirms,
        [ClientConfirm {
            ack: true,
            seq: 3,
            multiple: false
        }]
    );
    let (confirms, _) = confirm(&mut kept, 4, true, true);
    assert_eq!(
        confirms,
        [ClientConfirm {
            ack: true,
            seq: 4,
            multiple: true
        }]
    );
    assert_eq!(kept.count(), 0);
}

#[test]
fn publishes_before_confirm_select_have_no_client_number() {
    let mut kept = Confirms::default();
    kept.record(publish());
    kept.client_selected();
    kept.record(publish());
    let (confirms, _) = confirm(&mut kept, 2, true, true);
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
fn refused_publishes_are_sent_again_then_given_up() {
    let mut kept = Confirms::default();
    kept.client_selected();
    kept.record(publish());
    kept.record(publish());
    let start = Instant::now();
    let (confirms, given_up) = kept.confirm(ack(1, false), false, start, PATIENCE);
    assert!(confirms.is_empty() && given_up.is_empty());
    // Publish 2 is acked meanwhile: the client hears of it alone, 1 is still pending.
    let (confirms, _) = kept.confirm(ack(2, false), true, start, PATIENCE);
    assert_eq!(
        confirms,
        [ClientConfirm {
            ack: true,
            seq: 2,
            multiple: false
        }]
    );
    let due = kept.next_retry().expect("a retry is scheduled");
    assert!(kept.due_retries(start).is_empty(), "not yet due");
    let resent = kept.due_retries(due);
    assert_eq!(resent.len(), 1);
    assert_eq!(
        kept.unconfirmed
            .back()
            .map(|p| (p.upstream_seq, p.client_seq)),
        Some((3, Some(1)))
    );
    // Refused again long after the first refusal: given up, and the client is told.
    let later = start + PATIENCE;
    let (confirms, given_up) = kept.confirm(ack(3, false), false, later, PATIENCE);
    assert_eq!(
        confirms,
        [ClientConfirm {
            ack: false,
            seq: 1,
            multiple: false
        }]
    );
    assert_eq!(given_up.len(), 1);
    assert_eq!(kept.count(), 0);
}

#[test]
fn refused_publishes_waiting_for_a_retry_go_with_a_failover_in_order() {
    let mut kept = Confirms::default();
    kept.client_selected();
    for _ in 0..3 {
        kept.record(publish());
    }
    kept.confirm(ack(1, false), false, Instant::now(), PATIENCE);
    kept.failover();
    kept.renumber_for_replay();
    let order: Vec<Option<u64>> = kept.unconfirmed.iter().map(|p| p.client_seq).collect();
    assert_eq!(order, [Some(1), Some(2), Some(3)]);
    assert!(kept.retrying.is_empty());
}

#[test]
fn refused_for_counts_from_the_first_refusal_across_retries() {
    let mut kept = Confirms::default();
    kept.client_selected();
    kept.record(publish());
    let start = Instant::now();
    assert_eq!(
        kept.refused_for(start),
        Duration::ZERO,
        "nothing refused yet"
    );
    kept.confirm(ack(1, false), false, start, PATIENCE);
    let due = kept.next_retry().expect("a retry is scheduled");
    kept.due_retries(due);
    let later = due + Duration::from_millis(300);
    kept.confirm(ack(2, false), false, later, PATIENCE);
    assert_eq!(kept.refused_for(later), later - start);
    // Confirmed at last: nothing is refused any more.
    let due = kept.next_retry().expect("a retry is scheduled");
    kept.due_retries(due);
    kept.confirm(ack(3, false), true, due, PATIENCE);
    assert_eq!(kept.refused_for(due), Duration::ZERO);
}
