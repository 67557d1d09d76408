//! Properties of the STOMP codec that hold for any input: frames survive an encode→decode round
//! trip in every version, also when re-encoded for a leg of another version; how a stream is cut
//! into reads never changes what is decoded; and no input makes the decoder panic.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tether::proto::stomp::{
    Command, Frame, Headers, Heartbeat, Incoming, Limits, StompCodec, StompError, Version,
};
use tokio_util::codec::{Decoder, Encoder};

fn version() -> impl Strategy<Value = Version> {
    prop::sample::select(Version::ALL.to_vec())
}

fn command() -> impl Strategy<Value = Command> {
    prop::sample::select(Command::ALL.to_vec())
}

/// Short text leaning on the characters escaping is about.
fn text() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![':', '\n', '\r', '\\', ' ', '\0', 'c', 'n', 'r']);
    let c = prop_oneof![3 => special, 2 => any::<char>()];
    prop::collection::vec(c, 0..8).prop_map(|chars| chars.into_iter().collect())
}

fn body() -> impl Strategy<Value = Bytes> {
    let byte = prop_oneof![any::<u8>(), Just(0u8), Just(b'\n')];
    prop::collection::vec(byte, 0..40).prop_map(Bytes::from)
}

/// Whether a leg of `version` can carry these headers in a `command` frame: without escaping (1.0,
/// handshake frames) there is no way to send a line feed, a colon in a name, or a value ending in
/// CR; 1.1 cannot send that last one either.
fn encodable(version: Version, command: Command, name: &str, value: &str) -> bool {
    let raw = version == Version::V1_0 || !command.escapes_headers();
    let escapes_cr = !raw && version == Version::V1_2;
    name != "content-length"
        && !(raw && (name.contains('\n') || name.contains(':') || value.contains('\n')))
        && (escapes_cr || !value.ends_with('\r'))
}

/// An arbitrary frame that a `version` leg can carry.
fn frame_for(version: Version) -> impl Strategy<Value = Frame> {
    (
        command(),
        prop::collection::vec((text(), text()), 0..5),
        body(),
        any::<bool>(),
    )
        .prop_map(move |(command, headers, body, declare_length)| {
            let mut frame = Frame::new(command).with_body(body);
            for (name, value) in headers {
                if encodable(version, command, &name, &value) {
                    frame.headers.append(name, value);
                }
            }
            if declare_length {
                let length = frame.body.len().to_string();
                frame.headers.append("content-length", length);
            }
            frame
        })
}

/// What the peer decodes from `frame`: the encoder adds `content-length` to a body with a NUL.
fn as_received(frame: &Frame) -> Frame {
    let mut frame = frame.clone();
    if !frame.headers.contains("content-length") && frame.body.contains(&0) {
        let length = frame.body.len().to_string();
        frame.headers.append("content-length", length);
    }
    frame
}

fn encode(codec: &mut StompCodec, frame: &Frame) -> Vec<u8> {
    let mut dst = BytesMut::new();
    codec
        .encode(frame, &mut dst)
        .unwrap_or_else(|error| panic!("{frame:?} should encode: {error}"));
    dst.to_vec()
}

/// Feeds `wire` in the given reads and decodes everything; the stream must end between frames.
fn decode_in_reads(version: Version, wire: &[u8], cuts: &[usize]) -> Vec<Incoming> {
    let mut codec = StompCodec::new(version);
    let mut src = BytesMut::new();
    let mut items = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
        src.extend_from_slice(&wire[start..end]);
        start = end;
        while let Some(item) = codec.decode(&mut src).expect("valid stream") {
            items.push(item);
        }
    }
    assert!(
        codec.is_idle() && src.is_empty(),
        "stream ended inside a frame"
    );
    items
}

#[derive(Clone, Debug)]
enum Piece {
    Frame(Frame),
    /// A heart-beat written as `\n` (false) or `\r\n` (true).
    Heartbeat(bool),
}

fn stream() -> impl Strategy<Value = (Version, Vec<Piece>)> {
    version().prop_flat_map(|version| {
        let piece = prop_oneof![
            3 => frame_for(version).prop_map(Piece::Frame),
            1 => any::<bool>().prop_map(Piece::Heartbeat),
        ];
        (Just(version), prop::collection::vec(piece, 0..6))
    })
}

fn write_stream(version: Version, pieces: &[Piece]) -> (Vec<u8>, Vec<Incoming>) {
    let mut codec = StompCodec::new(version);
    let mut wire = BytesMut::new();
    let mut expected = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Frame(frame) => {
                codec.encode(frame, &mut wire).expect("encodable frame");
                expected.push(Incoming::Frame(as_received(frame)));
            }
            Piece::Heartbeat(crlf) => {
                if *crlf {
                    wire.extend_from_slice(b"\r");
                }
                codec.encode(Heartbeat, &mut wire).expect("heart-beat");
                expected.push(Incoming::Heartbeat);
            }
        }
    }
    (wire.to_vec(), expected)
}

/// Decodes until the decoder wants more or refuses the input; must not panic either way.
fn decode_garbage(codec: &mut StompCodec, src: &mut BytesMut) -> Result<(), StompError> {
    // Every item consumes at least one byte, so this ends.
    while codec.decode(src)?.is_some() {}
    Ok(())
}

proptest! {
    #[test]
    fn frames_survive_a_round_trip(
        (version, frame) in version().prop_flat_map(|v| (Just(v), frame_for(v)))
    ) {
        let mut codec = StompCodec::new(version);
        let mut src = BytesMut::from(&encode(&mut codec, &frame)[..]);
        let decoded = codec.decode(&mut src).expect("decodes");
        prop_assert_eq!(decoded, Some(Incoming::Frame(as_received(&frame))));
        prop_assert!(src.is_empty());
    }

    #[test]
    fn frames_survive_reencoding_for_another_version(
        (from, frame) in version().prop_flat_map(|v| (Just(v), frame_for(v))),
        to in version(),
    ) {
        let sent = as_received(&frame);
        let mut client = StompCodec::new(from);
        let mut src = BytesMut::from(&encode(&mut client, &frame)[..]);
        let Some(Incoming::Frame(decoded)) = client.decode(&mut src).expect("decodes") else {
            panic!("expected a frame");
        };
        prop_assert_eq!(&decoded, &sent);

        let mut node = StompCodec::new(to);
        let mut wire = BytesMut::new();
        match node.encode(&decoded, &mut wire) {
            Ok(()) => {
                let again = node.decode(&mut wire).expect("decodes");
                prop_assert_eq!(again, Some(Incoming::Frame(sent)));
            }
            Err(StompError::Unencodable { .. }) => {
                prop_assert!(wire.is_empty());
                let fits = sent
                    .headers
                    .iter()
                    .all(|(name, value)| encodable(to, sent.command, name, value));
                prop_assert!(!fits, "refused a frame that {} can carry", to);
            }
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
    }

    #[test]
    fn how_a_stream_is_cut_into_reads_changes_nothing((version, pieces) in stream()) {
        let (wire, expected) = write_stream(version, &pieces);
        let whole = decode_in_reads(version, &wire, &[]);
        prop_assert_eq!(&whole, &expected);
        for cut in 0..=wire.len() {
            prop_assert_eq!(&decode_in_reads(version, &wire, &[cut]), &expected, "cut at {}", cut);
        }
        let every_byte: Vec<usize> = (1..wire.len()).collect();
        prop_assert_eq!(&decode_in_reads(version, &wire, &every_byte), &expected);
    }

    #[test]
    fn garbage_never_panics(
        version in version(),
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        read in 1usize..64,
        small in any::<bool>(),
    ) {
        let limits = if small {
            Limits { max_frame_size: 96, max_headers: 3, max_header_line: 24 }
        } else {
            Limits::default()
        };
        let mut codec = StompCodec::with_limits(version, limits);
        let mut src = BytesMut::new();
        let mut result = Ok(());
        for chunk in bytes.chunks(read) {
            src.extend_from_slice(chunk);
            result = decode_garbage(&mut codec, &mut src);
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            let _ = codec.decode_eof(&mut src);
        }
    }

    /// Random bytes rarely get past the command line; pieces of real frames with random bytes
    /// in between reach the header, escape, content-length and body paths.
    #[test]
    fn near_miss_frames_never_panic(
        version in version(),
        pieces in prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec![
                    &b"SEND\n"[..], b"MESSAGE\r\n", b"CONNECT\n", b"k:v\n", b"\\", b"\\c", b"\\r",
                    b"\\t", b"content-length:", b"content-length:3\n", b"99999999999999999999",
                    b"\n", b"\r\n", b"\r", b"\0", b":", b"\xff", b"\xc3",
                ]).prop_map(|piece| piece.to_vec()),
                prop::collection::vec(any::<u8>(), 0..4),
            ],
            0..40,
        ),
        read in 1usize..16,
    ) {
        let bytes = pieces.concat();
        let limits = Limits { max_frame_size: 128, max_headers: 4, max_header_line: 32 };
        let mut codec = StompCodec::with_limits(version, limits);
        let mut src = BytesMut::new();
        for chunk in bytes.chunks(read) {
            src.extend_from_slice(chunk);
            if decode_garbage(&mut codec, &mut src).is_err() {
                return Ok(());
            }
        }
        let _ = codec.decode_eof(&mut src);
    }
}

#[test]
fn decoded_frame_equals_one_built_by_hand() {
    // `as_received` models the receiver by building frames; this pins that model to the wire.
    let mut codec = StompCodec::new(Version::V1_2);
    let mut src = BytesMut::from(&b"SEND\na:1\ncontent-length:1\n\n\0\0"[..]);
    let expected = Frame {
        command: Command::Send,
        headers: [("a", "1"), ("content-length", "1")]
            .into_iter()
            .collect::<Headers>(),
        body: Bytes::from_static(b"\0"),
    };
    assert_eq!(
        codec.decode(&mut src).ok().flatten(),
        Some(Incoming::Frame(expected))
    );
}
