//! The AMQP question of [`crate::session::liveness`]: channel.open on the node's highest
//! channel (kept back from the client's `channel_max`), then channel.close once it is open.

use crate::proto::amqp::{Frame, FrameType, id, method};
use crate::session::liveness::Watch;
use amq_protocol::protocol::{AMQPClass, channel};
use std::time::Duration;
use tokio::time::Instant;

/// One node connection's questions.
#[derive(Debug)]
pub struct Liveness {
    watch: Watch,
    channel: u16,
}

impl Liveness {
    /// For a connection heart-beating every `every` (none: nothing to watch) whose node allows
    /// channels up to `channel_max` (a node with one channel has none to spare).
    pub fn new(every: Option<Duration>, channel_max: u16) -> Option<Liveness> {
        if channel_max == 1 {
            return None;
        }
        Some(Liveness {
            watch: Watch::new(every?),
            channel: channel(channel_max),
        })
    }

    /// See [`Watch::ask_at`].
    pub fn ask_at(&self, quiet_since: Instant) -> Option<Instant> {
        self.watch.ask_at(quiet_since)
    }

    /// See [`Watch::dead_at`].
    pub fn dead_at(&self, quiet_since: Instant) -> Instant {
        self.watch.dead_at(quiet_since)
    }

    /// Whether a question is out (see [`Watch::asking`]).
    pub fn asking(&self) -> bool {
        self.watch.asking()
    }

    /// The question: channel.open on the channel kept back.
    pub fn ask(&mut self) -> Frame {
        self.watch.asked();
        let open = AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}));
        Frame::method(self.channel, method::encode(&open))
    }

    /// Takes the node's frame if it answers a question: `Some(reply)` then (the close that
    /// follows an open-ok, or nothing), `None` for a frame of the session's.
    pub fn answer(&mut self, frame: &Frame) -> Option<Option<Frame>> {
        if frame.channel != self.channel || frame.kind != FrameType::Method {
            return None;
        }
        match frame.class_method()? {
            id::CHANNEL_OPEN_OK => {
                // Answered; the channel is closed again, and no new question goes out until
                // that is done.
                let close = AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                    reply_code: 200,
                    reply_text: "tether: liveness".into(),
                    class_id: 0,
                    method_id: 0,
                }));
                Some(Some(Frame::method(self.channel, method::encode(&close))))
            }
            id::CHANNEL_CLOSE_OK => {
                self.watch.answered();
                Some(None)
            }
            id::CHANNEL_CLOSE => {
                // The node refused the channel; the close was the answer.
                self.watch.answered();
                let ok = AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}));
                Some(Some(Frame::method(self.channel, method::encode(&ok))))
            }
            _ => None,
        }
    }
}

/// The channel kept back on a connection whose node allows channels up to `channel_max`.
pub fn channel(channel_max: u16) -> u16 {
    match channel_max {
        0 => u16::MAX,
        max => max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(class_method: AMQPClass) -> Frame {
        Frame::method(2047, method::encode(&class_method))
    }

    #[test]
    fn asks_once_and_closes_what_it_opened() {
        let mut liveness = Liveness::new(Some(Duration::from_secs(1)), 2047).unwrap();
        let t = Instant::now();
        assert_eq!(liveness.ask_at(t), Some(t + Duration::from_millis(600)));
        assert_eq!(liveness.dead_at(t), t + Duration::from_millis(1250));
        let open = liveness.ask();
        assert_eq!(open.channel, 2047);
        assert_eq!(open.class_method(), Some(id::CHANNEL_OPEN));
        assert_eq!(liveness.ask_at(t), None, "one question at a time");

        let open_ok = reply(AMQPClass::Channel(channel::AMQPMethod::OpenOk(
            channel::OpenOk {},
        )));
        let close = liveness.answer(&open_ok).unwrap().unwrap();
        assert_eq!(close.class_method(), Some(id::CHANNEL_CLOSE));
        assert_eq!(liveness.ask_at(t), None, "still closing");
        let close_ok = reply(AMQPClass::Channel(channel::AMQPMethod::CloseOk(
            channel::CloseOk {},
        )));
        assert_eq!(liveness.answer(&close_ok), Some(None));
        assert!(liveness.ask_at(t).is_some());
    }

    #[test]
    fn leaves_the_sessions_frames_alone() {
        let mut liveness = Liveness::new(Some(Duration::from_secs(1)), 2047).unwrap();
        liveness.ask();
        let theirs = Frame::method(
            1,
            method::encode(&AMQPClass::Channel(channel::AMQPMethod::OpenOk(
                channel::OpenOk {},
            ))),
        );
        assert_eq!(liveness.answer(&theirs), None);
        assert_eq!(liveness.answer(&Frame::heartbeat()), None);
    }

    #[test]
    fn a_refused_channel_is_an_answer_too() {
        let mut liveness = Liveness::new(Some(Duration::from_secs(1)), 2047).unwrap();
        liveness.ask();
        let refused = reply(AMQPClass::Channel(channel::AMQPMethod::Close(
            channel::Close {
                reply_code: 504,
                reply_text: "CHANNEL_ERROR".into(),
                class_id: 20,
                method_id: 10,
            },
        )));
        let ok = liveness.answer(&refused).unwrap().unwrap();
        assert_eq!(ok.class_method(), Some(id::CHANNEL_CLOSE_OK));
        assert!(liveness.ask_at(Instant::now()).is_some());
    }

    #[test]
    fn nothing_to_watch_without_heart_beats() {
        assert!(Liveness::new(None, 2047).is_none());
        assert!(Liveness::new(Some(Duration::from_secs(1)), 1).is_none());
        assert_eq!(channel(0), u16::MAX);
    }
}
