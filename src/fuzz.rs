//! Entry points for fuzzing: each takes any bytes at all and must return without a panic,
//! whatever it makes of them. `tests/fuzz.rs` drives them with a mutation loop on stable Rust
//! (in the suite, and longer with `scripts/fuzz`); `fuzz/` has the same targets for
//! `cargo fuzz` (nightly).
//!
//! Each entry point reads what a peer or an operator controls, the way tether reads it, with
//! the caps tether runs with: what a client or node sends (AMQP, STOMP, OpenWire), what a
//! management API or broker answers (JSON, HTTP, ActiveMQ's broker lists), and a config file.

use crate::proto::{amqp, openwire, stomp};
use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

/// A fuzz target: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// The targets, by the name `scripts/fuzz` takes.
pub const TARGETS: [(&str, Target); 7] = [
    ("amqp", amqp_frames),
    ("stomp", stomp_frames),
    ("openwire", openwire_frames),
    ("config", config_file),
    ("management_json", management_json),
    ("http_response", http_response),
    ("broker_list", broker_list),
];

/// Frames from either leg of an AMQP session: every frame's method decoded in full and peeked
/// as the hot path peeks it, content headers read, frames written back.
pub fn amqp_frames(data: &[u8]) {
    let mut codec = amqp::FrameCodec::new(128 * 1024);
    let mut buffer = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buffer) {
        let payload = &frame.payload;
        match frame.kind {
            amqp::FrameType::Method => {
                if let Ok(method) = amqp::method::decode(payload) {
                    let _ = amqp::method::decode(&amqp::method::encode(&method));
                }
                let _ = amqp::method::peek_publish(payload);
                let _ = amqp::method::peek_deliver(payload);
                let _ = amqp::method::peek_get_ok(payload);
                let _ = amqp::method::peek_ack(payload);
            }
            amqp::FrameType::Header => {
                let _ = amqp::peek_header(payload);
                let _ = amqp::decode_properties(payload);
                let _ = amqp::reply_to(payload);
            }
            _ => {}
        }
        let mut out = BytesMut::new();
        let _ = codec.encode(&frame, &mut out);
    }
}

/// STOMP frames in the version the first byte picks, with tether's default caps; every frame
/// decoded is encoded again.
pub fn stomp_frames(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let version = match pick % 3 {
        0 => stomp::Version::V1_0,
        1 => stomp::Version::V1_1,
        _ => stomp::Version::V1_2,
    };
    let limits = stomp::Limits {
        max_frame_size: 64 * 1024,
        max_headers: 64,
        max_header_line: 8 * 1024,
    };
    let mut codec = stomp::StompCodec::with_limits(version, limits);
    let mut buffer = BytesMut::from(rest);
    while let Ok(Some(incoming)) = codec.decode(&mut buffer) {
        if let stomp::Incoming::Frame(frame) = incoming {
            let _ = frame.content_length();
            let mut out = BytesMut::new();
            let _ = codec.encode(&frame, &mut out);
        }
    }
}

/// OpenWire commands from an ActiveMQ broker (discovery reads them), each encoded again.
pub fn openwire_frames(data: &[u8]) {
    let mut codec = openwire::OpenWireCodec::new(64 * 1024);
    let mut buffer = BytesMut::from(data);
    while let Ok(Some(command)) = codec.decode(&mut buffer) {
        let mut out = BytesMut::new();
        let _ = command.encode(&mut out);
    }
}

/// A config file, parsed and validated as `tether check` does.
pub fn config_file(data: &[u8]) {
    let _ = crate::config::Config::parse(&String::from_utf8_lossy(data));
}

/// Management API answers, as RabbitMQ discovery reads them.
pub fn management_json(data: &[u8]) {
    crate::cluster::discovery::rabbitmq::fuzz_answers(data);
}

/// An HTTP response (management API, `tether status`), read under a 64 KiB body cap.
pub fn http_response(data: &[u8]) {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
    }
    RUNTIME.with(|runtime| {
        let _ = runtime.block_on(crate::http::read_response_from(data, 64 * 1024));
    });
}

/// An ActiveMQ `connectedBrokers` list.
pub fn broker_list(data: &[u8]) {
    crate::cluster::discovery::activemq::fuzz_connected_brokers(&String::from_utf8_lossy(data));
}
