use super::*;
use crate::proto::amqp::FrameType;
use amq_protocol::protocol::basic;
use bytes::Bytes;

fn method(channel: u16, class: AMQPClass) -> Frame {
    method_frame(channel, &class)
}

fn open(channel: u16) -> Frame {
    method(
        channel,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
}

fn closing(channel: u16) -> Frame {
    close(channel)
}

fn qos(channel: u16) -> Frame {
    method(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            global: false,
        })),
    )
}

fn body(channel: u16) -> Frame {
    Frame::new(FrameType::Body, channel, Bytes::from_static(b"x"))
}

/// Sends a frame from `member`; the node channel it went out on, if it did.
fn send(table: &mut Table, member: MemberId, mut frame: Frame) -> Option<u16> {
    match table.outbound(member, &mut frame) {
        Outbound::Send => Some(frame.channel),
        Outbound::Drop => None,
        Outbound::NoChannel => panic!("no channel left"),
    }
}

/// Receives a frame from the node on `node`; who got it, on which of their channels.
fn receive(table: &mut Table, mut frame: Frame) -> Option<(MemberId, u16)> {
    match table.inbound(&mut frame) {
        Route::Member(member) => Some((member, frame.channel)),
        Route::Drop => None,
    }
}

fn which(frames: &[Frame]) -> Vec<(u16, &'static str)> {
    frames
        .iter()
        .map(|f| {
            let name = f.class_method().and_then(id::name).unwrap_or("?");
            (f.channel, name)
        })
        .collect()
}

#[test]
fn sessions_with_the_same_channel_numbers_get_their_own_node_channels() {
    let mut table = Table::new(2047);
    table.join(1);
    table.join(2);
    let a = send(&mut table, 1, open(1)).unwrap();
    let b = send(&mut table, 2, open(1)).unwrap();
    assert_ne!(a, b);
    assert_eq!(send(&mut table, 1, qos(1)), Some(a));
    assert_eq!(send(&mut table, 2, body(1)), Some(b));
    assert_eq!(receive(&mut table, body(a)), Some((1, 1)));
    assert_eq!(receive(&mut table, body(b)), Some((2, 1)));
    assert_eq!(table.load(), 2);
}

#[test]
fn a_session_with_no_channel_counts_as_one() {
    let mut table = Table::new(2047);
    table.join(1);
    table.join(2);
    send(&mut table, 1, open(1));
    send(&mut table, 1, open(2));
    assert_eq!(table.load(), 3);
}

#[test]
fn frames_on_channels_the_node_does_not_have_go_nowhere() {
    let mut table = Table::new(2047);
    table.join(1);
    assert_eq!(send(&mut table, 1, qos(3)), None, "never opened");
    assert_eq!(send(&mut table, 1, Frame::heartbeat()), None, "channel 0");
    assert_eq!(send(&mut table, 9, open(1)), None, "not a member");
    assert_eq!(receive(&mut table, body(77)), None, "a free node channel");
    assert_eq!(receive(&mut table, body(5000)), None, "beyond channel_max");
}

#[test]
fn a_channel_the_session_closes_is_free_only_after_the_nodes_close_ok() {
    let mut table = Table::new(2047);
    table.join(1);
    table.join(2);
    let a = send(&mut table, 1, open(1)).unwrap();
    assert_eq!(send(&mut table, 1, closing(1)), Some(a));
    // The node still delivers until it has the close; the session gets it.
    assert_eq!(receive(&mut table, body(a)), Some((1, 1)));
    let b = send(&mut table, 2, open(1)).unwrap();
    assert_ne!(a, b, "not handed out while closing");
    assert_eq!(receive(&mut table, close_ok(a)), Some((1, 1)));
    assert_eq!(table.load(), 2);
    // The number is free again; what comes on it now goes nowhere.
    assert_eq!(receive(&mut table, body(a)), None);
    let again = send(&mut table, 1, open(1)).unwrap();
    assert_ne!(
        again, a,
        "a number just given back is the last to be taken again"
    );
}

#[test]
fn a_channel_the_node_closes_is_free_after_the_sessions_close_ok() {
    let mut table = Table::new(2047);
    table.join(1);
    let a = send(&mut table, 1, open(1)).unwrap();
    assert_eq!(receive(&mut table, closing(a)), Some((1, 1)));
    assert_eq!(send(&mut table, 1, close_ok(1)), Some(a));
    assert_eq!(receive(&mut table, body(a)), None, "free again");
    assert_eq!(
        send(&mut table, 1, qos(1)),
        None,
        "closed for the session too"
    );
}

#[test]
fn a_session_that_leaves_has_its_channels_closed_and_its_queues_deleted() {
    let mut table = Table::new(2047);
    table.join(1);
    let a = send(&mut table, 1, open(1)).unwrap();
    let b = send(&mut table, 1, open(2)).unwrap();
    let c = send(&mut table, 1, open(3)).unwrap();
    send(&mut table, 1, closing(2)); // its own close, under way
    receive(&mut table, closing(c)); // the node's close, unanswered
    table.leave(1, &["amq.gen-1".to_owned()]);
    let sent = which(&table.to_node);
    assert!(sent.contains(&(a, "channel.close")), "{sent:?}");
    assert!(
        !sent.contains(&(b, "channel.close")),
        "closing already: {sent:?}"
    );
    assert!(sent.contains(&(c, "channel.close-ok")), "{sent:?}");
    let own = sent
        .iter()
        .find(|(_, name)| *name == "channel.open")
        .map(|(n, _)| *n)
        .expect("a channel of tether's own");
    assert_eq!(
        sent.iter()
            .filter(|(n, _)| *n == own)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>(),
        ["channel.open", "queue.delete", "channel.close"]
    );
    table.to_node.clear();
    assert_eq!(table.load(), 0);
    // What the node still sends on them goes nowhere; their close-oks free them.
    assert_eq!(receive(&mut table, body(a)), None);
    receive(&mut table, closing(a));
    assert_eq!(
        which(&table.to_node),
        [(a, "channel.close-ok")],
        "both closed"
    );
    receive(&mut table, close_ok(a));
    receive(&mut table, close_ok(b));
    receive(&mut table, close_ok(own));
    table.join(2);
    let mut taken = Vec::new();
    for local in 1..=2047 {
        taken.push(send(&mut table, 2, open(local)).unwrap());
    }
    for n in [a, b, c, own] {
        assert!(taken.contains(&n), "{n} free again");
    }
}

#[test]
fn a_session_moved_off_gets_what_was_delivered_until_its_channels_are_closed() {
    let mut table = Table::new(2047);
    table.join(1);
    let a = send(&mut table, 1, open(1)).unwrap();
    let b = send(&mut table, 1, open(2)).unwrap();
    table.unshare(1, "slow");
    let mut sent = which(&table.to_node);
    sent.sort();
    let mut expected = vec![(a, "channel.close"), (b, "channel.close")];
    expected.sort();
    assert_eq!(sent, expected);
    table.to_node.clear();
    assert_eq!(
        send(&mut table, 1, qos(1)),
        None,
        "its frames go nowhere now"
    );
    assert_eq!(
        receive(&mut table, body(a)),
        Some((1, 1)),
        "a delivery in flight"
    );
    assert_eq!(
        receive(&mut table, close_ok(a)),
        None,
        "tether's close-ok is its own"
    );
    assert!(table.unshared.is_empty(), "one channel to go");
    receive(&mut table, closing(b));
    assert_eq!(which(&table.to_node), [(b, "channel.close-ok")]);
    assert_eq!(receive(&mut table, close_ok(b)), None);
    assert_eq!(table.unshared, [(1, "slow")]);
    assert_eq!(table.load(), 0);
}

#[test]
fn a_session_moved_off_with_no_channel_is_done_at_once() {
    let mut table = Table::new(2047);
    table.join(1);
    table.unshare(1, "slow");
    assert_eq!(table.unshared, [(1, "slow")]);
    assert!(table.to_node.is_empty());
}

#[test]
fn a_full_table_says_so() {
    let mut table = Table::new(2);
    table.join(1);
    send(&mut table, 1, open(1)).unwrap();
    send(&mut table, 1, open(2)).unwrap();
    let mut third = open(3);
    assert_eq!(table.outbound(1, &mut third), Outbound::NoChannel);
}

#[test]
fn a_session_moved_off_still_has_its_queues_deleted_when_it_lets_go() {
    let mut table = Table::new(2047);
    table.join(1);
    table.unshare(1, "slow");
    assert_eq!(table.unshared, [(1, "slow")]);
    table.leave(1, &["exclusive-q".to_owned()]);
    let sent: Vec<&str> = which(&table.to_node).into_iter().map(|(_, n)| n).collect();
    assert_eq!(sent, ["channel.open", "queue.delete", "channel.close"]);
}

#[test]
fn the_load_is_recounted_only_when_a_session_or_channel_came_or_went() {
    let mut table = Table::new(2047);
    table.join(1);
    assert_eq!(table.load_changed(), Some(1));
    let a = send(&mut table, 1, open(1)).unwrap();
    send(&mut table, 1, open(2));
    assert_eq!(table.load_changed(), Some(2));
    send(&mut table, 1, qos(1));
    receive(&mut table, body(a));
    assert_eq!(table.load_changed(), None, "traffic changes nothing");
    send(&mut table, 1, closing(1));
    receive(&mut table, close_ok(a));
    assert_eq!(table.load_changed(), Some(1));
}
