use super::*;

fn send(body: &str) -> Frame {
    Frame::new(Command::Send)
        .with_header("destination", "/queue/a")
        .with_body(body.to_owned())
}

fn forwarded(action: ClientAction) -> Frame {
    match action {
        ClientAction::Forward(frame) => frame,
        other => panic!("expected Forward, got {other:?}"),
    }
}

fn receipt_of(frame: &Frame) -> String {
    frame
        .header("receipt")
        .expect("tether adds a receipt")
        .to_owned()
}

fn message(subscription: &str, ack: &str) -> Frame {
    Frame::new(Command::Message)
        .with_header("subscription", subscription)
        .with_header("message-id", format!("m-{ack}"))
        .with_header("ack", ack)
        .with_header("destination", "/queue/a")
}

fn ack(id: &str) -> Frame {
    Frame::new(Command::Ack).with_header("id", id)
}

#[test]
fn every_send_gets_a_receipt_of_tethers_and_the_clients_is_answered_once() {
    let mut log = ReplayLog::new(Version::V1_2);
    let plain = forwarded(log.client_frame(send("a"), true));
    let asked = forwarded(log.client_frame(send("b").with_header("receipt", "mine"), true));
    assert_ne!(receipt_of(&plain), receipt_of(&asked));
    assert!(
        receipt_of(&asked).starts_with("tether-"),
        "the client's id is replaced"
    );
    assert_eq!(log.unconfirmed(), 2);

    assert_eq!(
        log.upstream_receipt(&receipt_of(&plain)),
        ReceiptOutcome::Swallowed
    );
    assert_eq!(
        log.upstream_receipt(&receipt_of(&asked)),
        ReceiptOutcome::ToClient(ReplayLog::answer("mine".into()))
    );
    assert_eq!(log.unconfirmed(), 0);
    assert_eq!(log.unconfirmed_bytes(), 0);
    assert!(log.is_settled());
}

#[test]
fn failover_replays_subscriptions_then_unconfirmed_sends_in_order() {
    let mut log = ReplayLog::new(Version::V1_2);
    let sub = Frame::new(Command::Subscribe)
        .with_header("id", "s1")
        .with_header("destination", "/queue/a")
        .with_header("ack", "client-individual");
    assert_eq!(
        log.client_frame(sub.clone(), true),
        ClientAction::Forward(sub.clone())
    );
    let first = forwarded(log.client_frame(send("1"), true));
    let second = forwarded(log.client_frame(send("2").with_header("receipt", "r2"), true));
    log.upstream_receipt(&receipt_of(&first));

    log.failover();
    let replay = log.replay();
    assert_eq!((replay.subscriptions, replay.sends), (1, 1));
    assert_eq!(
        replay.frames[0], sub,
        "the same subscription id and headers"
    );
    assert_eq!(replay.frames[1].body, "2");
    assert_ne!(receipt_of(&replay.frames[1]), receipt_of(&second));
    // The receipt the failed node never sent is not honoured ...
    assert_eq!(
        log.upstream_receipt(&receipt_of(&second)),
        ReceiptOutcome::ToClient(ReplayLog::answer(receipt_of(&second)))
    );
    // ... the new node's is, and the client hears of "r2" exactly once.
    assert_eq!(
        log.upstream_receipt(&receipt_of(&replay.frames[1])),
        ReceiptOutcome::ToClient(ReplayLog::answer("r2".into()))
    );
    assert!(log.is_settled());
}

#[test]
fn acks_for_a_failed_nodes_deliveries_are_swallowed() {
    let mut log = ReplayLog::new(Version::V1_2);
    let sub = Frame::new(Command::Subscribe)
        .with_header("id", "s1")
        .with_header("destination", "/queue/a")
        .with_header("ack", "client-individual");
    log.client_frame(sub, true);
    log.upstream_message(&message("s1", "old-1"));
    log.upstream_message(&message("s1", "old-2"));
    assert_eq!(
        log.client_frame(ack("old-1"), true),
        ClientAction::Forward(ack("old-1"))
    );
    assert_eq!(log.unacked(), 1);

    log.failover();
    log.upstream_message(&message("s1", "new-1"));
    assert_eq!(log.client_frame(ack("old-2"), true), ClientAction::Dropped);
    assert_eq!(log.stale_acks(), 1);
    assert_eq!(
        log.client_frame(ack("new-1"), true),
        ClientAction::Forward(ack("new-1"))
    );
    assert_eq!(log.unacked(), 0);
}

#[test]
fn cumulative_acks_settle_every_earlier_delivery() {
    let mut log = ReplayLog::new(Version::V1_1);
    let sub = Frame::new(Command::Subscribe)
        .with_header("id", "s1")
        .with_header("destination", "/queue/a")
        .with_header("ack", "client");
    log.client_frame(sub, true);
    for n in 1..=3 {
        log.upstream_message(&message("s1", &n.to_string()));
    }
    assert_eq!(log.unacked(), 3);
    let ack_2 = Frame::new(Command::Ack)
        .with_header("message-id", "m-2")
        .with_header("subscription", "s1");
    assert!(matches!(
        log.client_frame(ack_2, true),
        ClientAction::Forward(_)
    ));
    assert_eq!(log.unacked(), 1, "m-1 and m-2 are settled, m-3 is not");
}

#[test]
fn auto_ack_deliveries_are_not_tracked() {
    let mut log = ReplayLog::new(Version::V1_2);
    let sub = Frame::new(Command::Subscribe)
        .with_header("id", "s1")
        .with_header("destination", "/queue/a");
    log.client_frame(sub, true);
    log.upstream_message(&message("s1", "x"));
    assert_eq!(log.unacked(), 0);
}

fn committed(action: ClientAction) -> (Vec<Frame>, Vec<Frame>) {
    match action {
        ClientAction::Committed { to_node, to_client } => (to_node, to_client),
        other => panic!("expected Committed, got {other:?}"),
    }
}

#[test]
fn transactions_stay_in_tether_until_commit_and_commit_is_answered_once_confirmed() {
    let mut log = ReplayLog::new(Version::V1_2);
    let begin = Frame::new(Command::Begin)
        .with_header("transaction", "t1")
        .with_header("receipt", "b");
    assert_eq!(
        log.client_frame(begin, true),
        ClientAction::Answer(ReplayLog::answer("b".into())),
        "tether runs the transaction: BEGIN goes nowhere"
    );
    assert_eq!(
        log.client_frame(send("in-tx").with_header("transaction", "t1"), true),
        ClientAction::Recorded
    );
    assert_eq!(log.unconfirmed(), 1);

    // A failover before the commit: nothing of the transaction is replayed, nothing is lost.
    log.failover();
    assert!(log.replay().frames.is_empty());

    let commit = Frame::new(Command::Commit)
        .with_header("transaction", "t1")
        .with_header("receipt", "c");
    let (to_node, to_client) = committed(log.client_frame(commit, true));
    assert!(to_client.is_empty(), "the commit waits for its SEND");
    assert_eq!(to_node.len(), 1);
    assert_eq!(to_node[0].command, Command::Send);
    assert_eq!(
        to_node[0].header("transaction"),
        None,
        "sent as an ordinary SEND"
    );
    // A failover during the commit: the SEND is replayed like any unconfirmed one.
    log.failover();
    let replay = log.replay();
    assert_eq!(replay.sends, 1);
    assert!(log.completed_commits().is_empty());
    assert_eq!(
        log.upstream_receipt(&receipt_of(&replay.frames[0])),
        ReceiptOutcome::Swallowed
    );
    assert_eq!(log.completed_commits(), [ReplayLog::answer("c".into())]);
    assert!(log.completed_commits().is_empty(), "answered once");
    assert_eq!(log.unconfirmed(), 0);
    assert!(log.is_settled());
}

#[test]
fn acks_in_a_transaction_are_sent_with_the_commit() {
    let mut log = ReplayLog::new(Version::V1_2);
    let sub = Frame::new(Command::Subscribe)
        .with_header("id", "s1")
        .with_header("destination", "/queue/a")
        .with_header("ack", "client-individual");
    log.client_frame(sub, true);
    log.upstream_message(&message("s1", "m1"));
    log.client_frame(
        Frame::new(Command::Begin).with_header("transaction", "t"),
        true,
    );
    let in_tx = ack("m1").with_header("transaction", "t");
    assert_eq!(log.client_frame(in_tx, true), ClientAction::Dropped);
    let (to_node, _) = committed(log.client_frame(
        Frame::new(Command::Commit).with_header("transaction", "t"),
        true,
    ));
    assert_eq!(to_node, [ack("m1")]);
}

#[test]
fn aborted_and_abandoned_transactions_are_forgotten() {
    let mut log = ReplayLog::new(Version::V1_2);
    for tx in ["t1", "t2"] {
        log.client_frame(
            Frame::new(Command::Begin).with_header("transaction", tx),
            true,
        );
        log.client_frame(send(tx).with_header("transaction", tx), true);
    }
    log.client_frame(
        Frame::new(Command::Abort).with_header("transaction", "t1"),
        true,
    );
    assert_eq!(log.unconfirmed(), 1);
    log.client_gone();
    assert_eq!(
        log.unconfirmed(),
        0,
        "the broker rolls back what the client left open"
    );
    log.failover();
    assert!(log.replay().frames.is_empty());
    assert!(log.is_settled());
}

#[test]
fn during_failover_frames_are_recorded_or_answered() {
    let mut log = ReplayLog::new(Version::V1_2);
    let sub = Frame::new(Command::Subscribe)
        .with_header("id", "s1")
        .with_header("destination", "/queue/a")
        .with_header("ack", "client-individual");
    log.client_frame(sub, true);
    log.upstream_message(&message("s1", "old"));
    log.failover();

    assert_eq!(
        log.client_frame(send("queued"), false),
        ClientAction::Recorded
    );
    assert_eq!(
        log.client_frame(ack("old").with_header("receipt", "r1"), false),
        ClientAction::Answer(ReplayLog::answer("r1".into()))
    );
    let unsubscribe = Frame::new(Command::Unsubscribe)
        .with_header("id", "s1")
        .with_header("receipt", "r2");
    assert_eq!(
        log.client_frame(unsubscribe, false),
        ClientAction::Answer(ReplayLog::answer("r2".into()))
    );
    let replay = log.replay();
    assert_eq!(replay.subscriptions, 0, "unsubscribed while failing over");
    assert_eq!(replay.sends, 1);
    assert_eq!(replay.frames[0].body, "queued");
}

#[test]
fn disconnect_waits_for_every_send_and_its_receipt_ends_the_session() {
    let mut log = ReplayLog::new(Version::V1_2);
    let sent = forwarded(log.client_frame(send("last words"), true));
    let disconnect = Frame::new(Command::Disconnect).with_header("receipt", "bye");
    assert_eq!(log.client_frame(disconnect, true), ClientAction::Recorded);
    assert_eq!(
        log.due_disconnect(true, false),
        None,
        "a SEND is not confirmed yet"
    );

    log.failover();
    let replay = log.replay();
    let commands: Vec<Command> = replay.frames.iter().map(|f| f.command).collect();
    assert_eq!(commands, [Command::Send]);
    assert_ne!(receipt_of(&replay.frames[0]), receipt_of(&sent));
    assert_eq!(
        log.upstream_receipt(&receipt_of(&replay.frames[0])),
        ReceiptOutcome::Swallowed
    );
    let Some(Disconnect::ToNode(disconnect)) = log.due_disconnect(true, false) else {
        panic!("everything is confirmed: the DISCONNECT goes to the node");
    };
    assert_eq!(log.due_disconnect(true, false), None, "sent once");
    assert_eq!(
        log.upstream_receipt(&receipt_of(&disconnect)),
        ReceiptOutcome::Disconnected(Some(ReplayLog::answer("bye".into())))
    );
    assert!(log.is_settled());
}

#[test]
fn a_planned_move_unsubscribes_auto_subscriptions_and_waits_for_receipts_and_acks() {
    let mut log = ReplayLog::new(Version::V1_2);
    let subscribe = |id: &str, ack: &str| {
        Frame::new(Command::Subscribe)
            .with_header("id", id)
            .with_header("destination", "/queue/a")
            .with_header("ack", ack)
    };
    log.client_frame(subscribe("auto", "auto"), true);
    log.client_frame(subscribe("acked", "client-individual"), true);
    let sent = forwarded(log.client_frame(send("a"), true));
    log.upstream_message(&message("acked", "1"));

    let unsubscribes = log.unsubscribe_for_move();
    assert_eq!(unsubscribes.len(), 1, "only the auto-ack subscription");
    assert_eq!(unsubscribes[0].header("id"), Some("auto"));
    assert!(
        !log.ready_to_move(),
        "a SEND and the UNSUBSCRIBE are unanswered"
    );
    assert_eq!(
        log.upstream_receipt(&receipt_of(&unsubscribes[0])),
        ReceiptOutcome::Swallowed
    );
    log.upstream_receipt(&receipt_of(&sent));
    assert!(log.ready_to_move());
    assert_eq!(log.unacked_here(), 1);
    log.client_frame(ack("1"), true);
    assert_eq!(log.unacked_here(), 0);

    log.upstream_message(&message("acked", "2"));
    log.failover();
    assert_eq!(
        log.unacked_here(),
        0,
        "the old node's deliveries are not waited for"
    );
    assert_eq!(
        log.replay().subscriptions,
        2,
        "both subscriptions go to the new node"
    );
}

#[test]
fn a_pooled_sessions_disconnect_is_answered_here_once_every_send_is_confirmed() {
    let mut log = ReplayLog::new(Version::V1_2);
    let sent = forwarded(log.client_frame(send("last words"), true));
    let disconnect = Frame::new(Command::Disconnect).with_header("receipt", "bye");
    assert_eq!(log.client_frame(disconnect, true), ClientAction::Recorded);
    assert_eq!(
        log.due_disconnect(true, true),
        None,
        "a SEND is not confirmed yet"
    );
    log.upstream_receipt(&receipt_of(&sent));
    assert_eq!(
        log.due_disconnect(true, true),
        Some(Disconnect::Answered(Some(ReplayLog::answer("bye".into()))))
    );
    assert_eq!(log.due_disconnect(true, true), None, "answered once");
    assert!(log.is_settled());
}

#[test]
fn leftovers_unsubscribe_everything_and_name_the_auto_ack_subscriptions() {
    let mut log = ReplayLog::new(Version::V1_2);
    let subscribe = |id: &str, ack: &str| {
        Frame::new(Command::Subscribe)
            .with_header("id", id)
            .with_header("destination", "/queue/a")
            .with_header("ack", ack)
    };
    forwarded(log.client_frame(subscribe("s1", "auto"), true));
    forwarded(log.client_frame(subscribe("s2", "client-individual"), true));
    let message = Frame::new(Command::Message)
        .with_header("subscription", "s2")
        .with_header("message-id", "m1")
        .with_header("ack", "a1");
    log.upstream_message(&message);
    let left = log.leftovers();
    let ids: Vec<&str> = left
        .unsubscribes
        .iter()
        .map(|f| {
            assert_eq!(f.command, Command::Unsubscribe);
            f.header("id").unwrap_or_default()
        })
        .collect();
    assert_eq!(ids, ["s1", "s2"]);
    assert_eq!(left.auto_ack, ["s1"]);
    assert_eq!(left.unacked, 1, "the client has not acked m1");
}

#[test]
fn subscriptions_and_open_transactions_are_capped() {
    let caps = Caps {
        subscriptions: 3,
        transactions: 2,
        ..Caps::default()
    };
    let mut log = ReplayLog::with_caps(Version::V1_2, caps);
    let subscribe = |id: &str| {
        Frame::new(Command::Subscribe)
            .with_header("id", id)
            .with_header("destination", "/queue/a")
    };
    for id in ["1", "2", "3"] {
        forwarded(log.client_frame(subscribe(id), true));
    }
    // The same subscription again replaces itself; a fourth is refused.
    forwarded(log.client_frame(subscribe("3"), true));
    let refused = log.client_frame(subscribe("4"), true);
    assert!(
        matches!(&refused, ClientAction::Refuse(m) if m.contains("max_subscriptions")),
        "{refused:?}"
    );
    assert_eq!(log.subscription_count(), 3);
    // After an UNSUBSCRIBE there is room again.
    log.client_frame(
        Frame::new(Command::Unsubscribe).with_header("id", "1"),
        true,
    );
    forwarded(log.client_frame(subscribe("4"), true));

    let begin = |name: &str| Frame::new(Command::Begin).with_header("transaction", name);
    for name in ["t1", "t2"] {
        assert!(matches!(
            log.client_frame(begin(name), true),
            ClientAction::Dropped
        ));
    }
    let refused = log.client_frame(begin("t3"), true);
    assert!(
        matches!(&refused, ClientAction::Refuse(m) if m.contains("max_transactions")),
        "{refused:?}"
    );
    // An aborted one makes room.
    log.client_frame(
        Frame::new(Command::Abort).with_header("transaction", "t1"),
        true,
    );
    assert!(matches!(
        log.client_frame(begin("t3"), true),
        ClientAction::Dropped
    ));
}

#[test]
fn what_open_transactions_hold_is_capped_acks_as_well_as_sends() {
    let caps = Caps {
        held: 50,
        ..Caps::default()
    };
    let mut log = ReplayLog::with_caps(Version::V1_2, caps);
    let in_tx = |frame: Frame, tx: &str| frame.with_header("transaction", tx);
    log.client_frame(in_tx(Frame::new(Command::Begin), "t1"), true);
    log.client_frame(in_tx(Frame::new(Command::Begin), "t2"), true);
    let send = Frame::new(Command::Send).with_header("destination", "/queue/a");
    assert!(matches!(
        log.client_frame(in_tx(send.clone(), "t1"), true),
        ClientAction::Recorded
    ));
    // The two transactions together: 1 SEND and 48 ACKs is 49, under the cap of 50.
    for n in 0..48 {
        let ack = Frame::new(Command::Ack).with_header("id", format!("m{n}"));
        let tx = if n % 2 == 0 { "t1" } else { "t2" };
        assert!(matches!(
            log.client_frame(in_tx(ack, tx), true),
            ClientAction::Dropped
        ));
    }
    let ack = Frame::new(Command::Ack).with_header("id", "m48");
    let refused = log.client_frame(in_tx(ack, "t2"), true);
    assert!(
        matches!(&refused, ClientAction::Refuse(m) if m.contains("max_unconfirmed = 50")),
        "{refused:?}"
    );
    // An ABORT lets go of what its transaction held.
    log.client_frame(in_tx(Frame::new(Command::Abort), "t2"), true);
    let ack = Frame::new(Command::Ack).with_header("id", "m49");
    assert!(matches!(
        log.client_frame(in_tx(ack, "t1"), true),
        ClientAction::Dropped
    ));
}

#[test]
fn queue_subscriptions_are_what_locality_places_and_a_topic_is_not() {
    let mut log = ReplayLog::new(Version::V1_2);
    assert_eq!(
        log.consumed(None),
        None,
        "no subscription, nothing consumed"
    );
    let before = log.subscription_signature();
    let subscribe = |id: &str, destination: &str| {
        Frame::new(Command::Subscribe)
            .with_header("id", id)
            .with_header("destination", destination)
    };
    log.client_frame(subscribe("s1", "/amq/queue/a"), true);
    log.client_frame(subscribe("s2", "/queue/b"), true);
    log.client_frame(subscribe("s3", "/queue/a"), true);
    assert_ne!(log.subscription_signature(), before);
    let consumed = log.consumed(Some("vh")).unwrap();
    assert_eq!(consumed.queues, ["a", "b"]);
    assert!(!consumed.other);
    assert_eq!(consumed.vhost_name(), "vh");
    // One subscription replaced by another of the same count still changes the signature.
    let before = log.subscription_signature();
    log.client_frame(subscribe("s3", "/topic/t"), true);
    assert_ne!(log.subscription_signature(), before);
    assert!(
        log.consumed(None).unwrap().other,
        "a topic is not one queue"
    );
}
