use super::*;
use bytes::Bytes;

fn decode_all(codec: &mut StompCodec, src: &mut BytesMut) -> Result<Vec<Incoming>, StompError> {
    let mut items = Vec::new();
    while let Some(item) = codec.decode(src)? {
        items.push(item);
    }
    Ok(items)
}

/// Decodes `wire` fed whole to a fresh codec; everything must be consumed.
fn decode(version: Version, wire: &[u8]) -> Result<Vec<Incoming>, StompError> {
    let mut codec = StompCodec::new(version);
    let mut src = BytesMut::from(wire);
    let items = decode_all(&mut codec, &mut src)?;
    assert!(codec.is_idle(), "unfinished frame in {wire:?}");
    assert!(src.is_empty(), "left over: {src:?}");
    Ok(items)
}

/// The single frame in `wire`.
fn decode_one(version: Version, wire: &[u8]) -> Frame {
    match decode(version, wire).map(|mut items| (items.len(), items.pop())) {
        Ok((1, Some(Incoming::Frame(frame)))) => frame,
        other => panic!("expected one frame from {wire:?}, got {other:?}"),
    }
}

fn decode_error(version: Version, wire: &[u8]) -> String {
    let mut codec = StompCodec::new(version);
    let mut src = BytesMut::from(wire);
    match decode_all(&mut codec, &mut src) {
        Err(error) => error.to_string(),
        Ok(items) => panic!("expected an error from {wire:?}, got {items:?}"),
    }
}

fn encode(version: Version, frame: &Frame) -> Result<Vec<u8>, StompError> {
    let mut dst = BytesMut::new();
    StompCodec::new(version).encode(frame, &mut dst)?;
    Ok(dst.to_vec())
}

fn headers(frame: &Frame) -> Vec<(&str, &str)> {
    frame.headers.iter().collect()
}

fn small_limits() -> Limits {
    Limits {
        max_frame_size: 64,
        max_headers: 2,
        max_header_line: 10,
    }
}

// Decoding: frame shape

#[test]
fn decodes_a_frame() {
    let frame = decode_one(
        Version::V1_2,
        b"SEND\ndestination:/queue/a\nreceipt:7\n\nhello\0",
    );
    assert_eq!(frame.command, Command::Send);
    assert_eq!(
        headers(&frame),
        [("destination", "/queue/a"), ("receipt", "7")]
    );
    assert_eq!(frame.body, Bytes::from_static(b"hello"));
}

#[test]
fn decodes_a_frame_without_headers_or_body() {
    let frame = decode_one(Version::V1_0, b"DISCONNECT\n\n\0");
    assert_eq!(frame, Frame::new(Command::Disconnect));
}

#[test]
fn decodes_frames_back_to_back() {
    let items = decode(
        Version::V1_1,
        b"BEGIN\ntransaction:t\n\n\0COMMIT\ntransaction:t\n\n\0",
    )
    .unwrap();
    let commands: Vec<_> = items
        .iter()
        .map(|item| match item {
            Incoming::Frame(frame) => Some(frame.command),
            Incoming::Heartbeat => None,
        })
        .collect();
    assert_eq!(commands, [Some(Command::Begin), Some(Command::Commit)]);
}

#[test]
fn body_without_content_length_ends_at_the_first_nul() {
    let items = decode(Version::V1_2, b"SEND\n\nab\0cd\0\n")
        .err()
        .map(|e| e.to_string());
    // The first NUL ends the body, so "cd\0" is read as the next command line.
    assert_eq!(items.as_deref(), Some("unknown command cd\\x00"));
    let frame = decode_one(Version::V1_2, b"SEND\n\nab\0");
    assert_eq!(&frame.body[..], b"ab");
}

#[test]
fn content_length_body_may_hold_nuls() {
    let frame = decode_one(Version::V1_2, b"SEND\ncontent-length:5\n\na\0b\0c\0");
    assert_eq!(&frame.body[..], b"a\0b\0c");
    assert_eq!(frame.content_length().ok(), Some(Some(5)));
}

#[test]
fn content_length_body_must_be_followed_by_nul() {
    assert_eq!(
        decode_error(Version::V1_2, b"SEND\ncontent-length:2\n\nabc\0"),
        "frame body is not followed by NUL"
    );
}

#[test]
fn content_length_must_be_a_number() {
    assert_eq!(
        decode_error(Version::V1_2, b"SEND\ncontent-length:two\n\nab\0"),
        "content-length is not a number"
    );
}

#[test]
fn first_content_length_decides() {
    let frame = decode_one(
        Version::V1_2,
        b"SEND\ncontent-length:1\ncontent-length:9\n\n\0\0",
    );
    assert_eq!(&frame.body[..], b"\0");
}

#[test]
fn accepts_crlf_in_every_version() {
    for version in Version::ALL {
        let items = decode(version, b"SEND\r\ndestination:/q\r\n\r\nhi\0\r\n").unwrap();
        let expected = Frame::new(Command::Send)
            .with_header("destination", "/q")
            .with_body("hi");
        assert_eq!(
            items,
            [Incoming::Frame(expected), Incoming::Heartbeat],
            "{version}"
        );
    }
}

#[test]
fn end_of_lines_between_frames_are_heartbeats() {
    let items = decode(Version::V1_2, b"\n\r\nACK\nid:1\n\n\0\n\n").unwrap();
    let ack = Frame::new(Command::Ack).with_header("id", "1");
    assert_eq!(
        items,
        [
            Incoming::Heartbeat,
            Incoming::Heartbeat,
            Incoming::Frame(ack),
            Incoming::Heartbeat,
            Incoming::Heartbeat,
        ]
    );
}

#[test]
fn crlf_split_across_reads() {
    let mut codec = StompCodec::new(Version::V1_2);
    let mut src = BytesMut::from(&b"\r"[..]);
    assert_eq!(codec.decode(&mut src).unwrap(), None);
    src.extend_from_slice(b"\nSEND\r");
    assert_eq!(codec.decode(&mut src).unwrap(), Some(Incoming::Heartbeat));
    assert_eq!(codec.decode(&mut src).unwrap(), None);
    src.extend_from_slice(b"\nk:v\r");
    assert_eq!(codec.decode(&mut src).unwrap(), None);
    src.extend_from_slice(b"\n\r");
    assert_eq!(codec.decode(&mut src).unwrap(), None);
    src.extend_from_slice(b"\n\0");
    let frame = Frame::new(Command::Send).with_header("k", "v");
    assert_eq!(
        codec.decode(&mut src).unwrap(),
        Some(Incoming::Frame(frame))
    );
    assert!(src.is_empty());
}

#[test]
fn every_prefix_is_incomplete_not_an_error() {
    let wire = b"\r\nMESSAGE\r\nsubscription:s\\c1\ncontent-length:3\r\n\r\n\0\0\0\0";
    for end in 0..wire.len() {
        let mut codec = StompCodec::new(Version::V1_2);
        let mut src = BytesMut::from(&wire[..end]);
        let items = decode_all(&mut codec, &mut src);
        assert!(items.is_ok(), "prefix {:?}: {items:?}", &wire[..end]);
    }
}

// Decoding: headers and escaping

#[test]
fn v1_2_unescapes_four_sequences() {
    let frame = decode_one(Version::V1_2, b"MESSAGE\nk\\cey:a\\nb\\\\c\\rd\n\n\0");
    assert_eq!(headers(&frame), [("k:ey", "a\nb\\c\rd")]);
}

#[test]
fn v1_1_unescapes_three_and_refuses_cr() {
    let frame = decode_one(Version::V1_1, b"MESSAGE\nk\\cey:a\\nb\\\\c\n\n\0");
    assert_eq!(headers(&frame), [("k:ey", "a\nb\\c")]);
    assert_eq!(
        decode_error(Version::V1_1, b"MESSAGE\nk:a\\rb\n\n\0"),
        "invalid escape sequence \\r in header"
    );
}

#[test]
fn v1_0_takes_headers_raw() {
    let frame = decode_one(Version::V1_0, b"SEND\n key\\c : a:b\\n\\t \n\n\0");
    assert_eq!(headers(&frame), [(" key\\c ", " a:b\\n\\t ")]);
}

#[test]
fn invalid_escapes_are_errors() {
    for version in [Version::V1_1, Version::V1_2] {
        assert_eq!(
            decode_error(version, b"SEND\nk:a\\tb\n\n\0"),
            "invalid escape sequence \\t in header"
        );
        assert_eq!(
            decode_error(version, b"SEND\nk:ab\\\n\n\0"),
            "header ends with a lone backslash"
        );
    }
}

#[test]
fn handshake_frames_are_not_unescaped() {
    for command in ["CONNECT", "STOMP", "CONNECTED"] {
        let wire = format!("{command}\nlogin:a\\nb\\tc\npasscode:x:y\n\n\0");
        let frame = decode_one(Version::V1_2, wire.as_bytes());
        assert_eq!(
            headers(&frame),
            [("login", "a\\nb\\tc"), ("passcode", "x:y")]
        );
    }
}

#[test]
fn first_colon_splits_name_and_value() {
    let frame = decode_one(
        Version::V1_2,
        b"SEND\nk:a:b\n:empty name\nempty value:\n\n\0",
    );
    assert_eq!(
        headers(&frame),
        [("k", "a:b"), ("", "empty name"), ("empty value", "")]
    );
}

#[test]
fn repeated_headers_are_kept_and_first_wins() {
    let frame = decode_one(Version::V1_2, b"MESSAGE\nfoo:1\nfoo:2\n\n\0");
    assert_eq!(frame.header("foo"), Some("1"));
    assert_eq!(frame.headers.len(), 2);
}

#[test]
fn header_line_needs_a_colon() {
    assert_eq!(
        decode_error(Version::V1_2, b"SEND\nnocolon\n\n\0"),
        "header line without a colon"
    );
}

#[test]
fn header_bytes_must_be_utf8() {
    assert_eq!(
        decode_error(Version::V1_0, b"SEND\nk:\xc3\x28\n\n\0"),
        "header is not valid UTF-8"
    );
}

#[test]
fn body_bytes_need_not_be_utf8() {
    let frame = decode_one(Version::V1_2, b"SEND\n\n\xff\xfe\0");
    assert_eq!(&frame.body[..], b"\xff\xfe");
}

// Decoding: commands

#[test]
fn unknown_command_is_an_error() {
    assert_eq!(
        decode_error(Version::V1_2, b"FOO\n\n\0"),
        "unknown command FOO"
    );
    assert_eq!(
        decode_error(Version::V1_2, b"send\n\n\0"),
        "unknown command send"
    );
    assert_eq!(
        decode_error(Version::V1_2, b"SEND \n\n\0"),
        "unknown command SEND "
    );
}

#[test]
fn garbage_is_refused_before_its_line_ends() {
    assert_eq!(
        decode_error(Version::V1_2, b"GET / HTTP/1.1"),
        "unknown command GET / HTTP/1.1"
    );
    assert_eq!(
        decode_error(Version::V1_2, b"AMQP\0\0\x09\x01"),
        "unknown command AMQP\\x00\\x00\\t\\x01"
    );
    assert_eq!(
        decode_error(Version::V1_2, b"\r\r"),
        "unknown command \\r\\r"
    );
}

// Decoding: limits

#[test]
fn long_header_line_is_refused_before_it_ends() {
    let mut codec = StompCodec::with_limits(Version::V1_2, small_limits());
    let mut src = BytesMut::from(&b"SEND\nk:12345678\r"[..]);
    assert_eq!(
        codec.decode(&mut src).unwrap(),
        None,
        "10 bytes and a CR is still fine"
    );
    src.extend_from_slice(b"0");
    assert_eq!(
        codec
            .decode(&mut src)
            .err()
            .map(|e| e.to_string())
            .as_deref(),
        Some("header line longer than 10 bytes")
    );
}

#[test]
fn long_complete_header_line_is_refused() {
    let mut codec = StompCodec::with_limits(Version::V1_2, small_limits());
    let mut src = BytesMut::from(&b"SEND\nk:12345678\r\n\n\0"[..]);
    assert!(matches!(decode_all(&mut codec, &mut src), Ok(items) if items.len() == 1));
    let mut src = BytesMut::from(&b"SEND\nk:123456789\n\n\0"[..]);
    assert!(matches!(
        decode_all(&mut codec, &mut src),
        Err(StompError::HeaderLineTooLong(10))
    ));
}

#[test]
fn too_many_headers_are_refused_at_the_first_extra_line() {
    let mut codec = StompCodec::with_limits(Version::V1_2, small_limits());
    let mut src = BytesMut::from(&b"SEND\na:1\nb:2\nc:3\n"[..]);
    assert_eq!(
        decode_all(&mut codec, &mut src)
            .err()
            .map(|e| e.to_string())
            .as_deref(),
        Some("more than 2 headers")
    );
}

#[test]
fn content_length_is_checked_before_buffering() {
    let limits = Limits {
        max_frame_size: 64,
        ..Limits::default()
    };
    let mut codec = StompCodec::with_limits(Version::V1_2, limits);
    let mut src = BytesMut::from(&b"SEND\ncontent-length:99\n\n"[..]);
    assert!(matches!(
        decode_all(&mut codec, &mut src),
        Err(StompError::FrameTooLarge(64))
    ));
    assert!(src.capacity() < 99);

    let huge = b"SEND\ncontent-length:99999999999999999999999999\n\n";
    assert_eq!(
        decode_error(Version::V1_2, huge),
        "frame larger than 16777216 bytes"
    );
}

#[test]
fn content_length_reserves_the_whole_body() {
    let mut codec = StompCodec::new(Version::V1_2);
    let mut src = BytesMut::from(&b"SEND\ncontent-length:100000\n\nabc"[..]);
    assert_eq!(codec.decode(&mut src).unwrap(), None);
    assert!(src.capacity() >= 100_001);
}

#[test]
fn body_without_nul_is_refused_once_past_the_limit() {
    let mut codec = StompCodec::with_limits(Version::V1_2, small_limits());
    // "SEND\n\n" is 6 bytes; 57 body bytes and the NUL to come make 64.
    let mut src = BytesMut::from(&b"SEND\n\n"[..]);
    src.extend_from_slice(&[b'x'; 57]);
    assert_eq!(codec.decode(&mut src).unwrap(), None);
    src.extend_from_slice(b"x");
    assert!(matches!(
        codec.decode(&mut src),
        Err(StompError::FrameTooLarge(64))
    ));
}

#[test]
fn frame_of_exactly_the_limit_is_accepted() {
    let limits = small_limits();
    let mut wire = b"SEND\n\n".to_vec();
    wire.extend_from_slice(&[b'x'; 57]);
    wire.push(0);
    assert_eq!(wire.len(), limits.max_frame_size);
    let mut codec = StompCodec::with_limits(Version::V1_2, limits);
    let items = decode_all(&mut codec, &mut BytesMut::from(&wire[..])).unwrap();
    assert_eq!(items.len(), 1);

    wire.insert(6, b'x');
    let mut codec = StompCodec::with_limits(Version::V1_2, limits);
    let result = decode_all(&mut codec, &mut BytesMut::from(&wire[..]));
    assert!(matches!(result, Err(StompError::FrameTooLarge(64))));

    let mut wire = b"SEND\ncontent-length:50\n\n".to_vec();
    wire.extend_from_slice(&[0; 51]);
    assert_eq!(wire.len(), 75);
    let limits = Limits {
        max_frame_size: 75,
        ..Limits::default()
    };
    let mut codec = StompCodec::with_limits(Version::V1_2, limits);
    let items = decode_all(&mut codec, &mut BytesMut::from(&wire[..])).unwrap();
    assert_eq!(items.len(), 1);
}

#[test]
fn head_counts_against_the_frame_limit() {
    let limits = Limits {
        max_frame_size: 20,
        max_headers: 100,
        max_header_line: 100,
    };
    let mut codec = StompCodec::with_limits(Version::V1_2, limits);
    let mut src = BytesMut::from(&b"SEND\na:1\nb:2\nc:3\nd:12345"[..]);
    assert!(matches!(
        decode_all(&mut codec, &mut src),
        Err(StompError::FrameTooLarge(20))
    ));
}

#[test]
fn a_body_arriving_in_pieces_is_searched_once() {
    let mut codec = StompCodec::new(Version::V1_2);
    let mut src = BytesMut::from(&b"SEND\n\n"[..]);
    assert_eq!(codec.decode(&mut src).unwrap(), None);
    for read in 1..=100 {
        src.extend_from_slice(&[b'x'; 1000]);
        assert_eq!(codec.decode(&mut src).unwrap(), None);
        assert_eq!(
            codec.scanned,
            read * 1000,
            "the next search starts where this one ended"
        );
    }
    src.extend_from_slice(b"\0");
    let Some(Incoming::Frame(frame)) = codec.decode(&mut src).unwrap() else {
        panic!("expected a frame");
    };
    assert_eq!(frame.body.len(), 100_000);
    assert_eq!(codec.scanned, 0);
}

#[test]
fn a_header_line_arriving_in_pieces_is_searched_once() {
    let mut codec = StompCodec::new(Version::V1_2);
    let mut src = BytesMut::from(&b"SEND\nk:"[..]);
    assert_eq!(codec.decode(&mut src).unwrap(), None);
    assert_eq!(codec.scanned, 2);
    src.extend_from_slice(b"vvv");
    assert_eq!(codec.decode(&mut src).unwrap(), None);
    assert_eq!(codec.scanned, 5);
}

// Decoding: end of stream

#[test]
fn end_of_stream_between_frames_is_clean() {
    let mut codec = StompCodec::new(Version::V1_2);
    let mut src = BytesMut::from(&b"SEND\n\n\0\r"[..]);
    assert!(matches!(
        codec.decode_eof(&mut src),
        Ok(Some(Incoming::Frame(_)))
    ));
    assert_eq!(codec.decode_eof(&mut src).unwrap(), None);
    assert_eq!(codec.decode_eof(&mut BytesMut::new()).unwrap(), None);
}

#[test]
fn end_of_stream_inside_a_frame_is_an_error() {
    for wire in [
        &b"SEN"[..],
        b"SEND\n",
        b"SEND\nk:v\n\n",
        b"SEND\ncontent-length:3\n\nab",
    ] {
        let mut codec = StompCodec::new(Version::V1_2);
        let mut src = BytesMut::from(wire);
        assert!(
            matches!(codec.decode_eof(&mut src), Err(StompError::Truncated)),
            "{wire:?}"
        );
    }
}

// Encoding

#[test]
fn encodes_headers_in_order_with_lf() {
    let frame = Frame::new(Command::Send)
        .with_header("destination", "/q")
        .with_header("receipt", "r1")
        .with_body("hi");
    assert_eq!(
        encode(Version::V1_2, &frame).unwrap(),
        b"SEND\ndestination:/q\nreceipt:r1\n\nhi\0"
    );
}

#[test]
fn keeps_repeated_headers() {
    let mut frame = Frame::new(Command::Message);
    frame.headers.append("foo", "1");
    frame.headers.append("foo", "2");
    assert_eq!(
        encode(Version::V1_1, &frame).unwrap(),
        b"MESSAGE\nfoo:1\nfoo:2\n\n\0"
    );
}

#[test]
fn escapes_per_version() {
    let frame = Frame::new(Command::Message).with_header("a:b", "x\ny\\z:\rw");
    assert_eq!(
        encode(Version::V1_2, &frame).unwrap(),
        b"MESSAGE\na\\cb:x\\ny\\\\z\\c\\rw\n\n\0"
    );
    assert_eq!(
        encode(Version::V1_1, &frame).unwrap(),
        b"MESSAGE\na\\cb:x\\ny\\\\z\\c\rw\n\n\0"
    );
    let plain = Frame::new(Command::Message).with_header("a", "b:c\\d");
    assert_eq!(
        encode(Version::V1_0, &plain).unwrap(),
        b"MESSAGE\na:b:c\\d\n\n\0"
    );
}

#[test]
fn handshake_frames_are_not_escaped() {
    let frame = Frame::new(Command::Connected).with_header("server", "x:1\\y");
    assert_eq!(
        encode(Version::V1_2, &frame).unwrap(),
        b"CONNECTED\nserver:x:1\\y\n\n\0"
    );
}

#[test]
fn refuses_headers_the_peer_cannot_read_and_writes_nothing() {
    let frame = Frame::new(Command::Message).with_header("note", "two\nlines");
    let mut codec = StompCodec::new(Version::V1_0);
    let mut dst = BytesMut::from(&b"earlier"[..]);
    let error = codec.encode(&frame, &mut dst).err().map(|e| e.to_string());
    assert_eq!(
        error.as_deref(),
        Some("cannot send header \"note\" to a STOMP 1.0 peer: a line feed cannot be escaped")
    );
    assert_eq!(&dst[..], b"earlier");
    let connect = Frame::new(Command::Connect).with_header("login", "a\nb");
    assert!(encode(Version::V1_2, &connect).is_err());
}

#[test]
fn adds_content_length_only_when_the_body_holds_a_nul() {
    let text = Frame::new(Command::Send).with_body("text");
    assert_eq!(encode(Version::V1_2, &text).unwrap(), b"SEND\n\ntext\0");
    let binary = Frame::new(Command::Send)
        .with_header("k", "v")
        .with_body(&b"a\0b"[..]);
    assert_eq!(
        encode(Version::V1_2, &binary).unwrap(),
        b"SEND\nk:v\ncontent-length:3\n\na\0b\0"
    );
}

#[test]
fn keeps_a_matching_content_length_and_fixes_a_wrong_one_in_place() {
    let right = Frame::new(Command::Send)
        .with_header("content-length", "004")
        .with_body("abcd");
    assert_eq!(
        encode(Version::V1_2, &right).unwrap(),
        b"SEND\ncontent-length:004\n\nabcd\0"
    );
    let mut wrong = Frame::new(Command::Send)
        .with_header("content-length", "9")
        .with_header("k", "v")
        .with_body("ab");
    wrong.headers.append("content-length", "7");
    assert_eq!(
        encode(Version::V1_2, &wrong).unwrap(),
        b"SEND\ncontent-length:2\nk:v\ncontent-length:7\n\nab\0"
    );
}

#[test]
fn encodes_heartbeat_as_one_line_feed() {
    let mut dst = BytesMut::new();
    StompCodec::new(Version::V1_2)
        .encode(Heartbeat, &mut dst)
        .unwrap();
    assert_eq!(&dst[..], b"\n");
}

#[test]
fn error_frame_encodes_for_1_0() {
    let frame = Frame::error("bad\nframe", "detail");
    assert_eq!(
        encode(Version::V1_0, &frame).unwrap(),
        b"ERROR\nmessage:bad frame\ncontent-type:text/plain\n\ndetail\0"
    );
}

// Across versions, as the proxy uses it

#[test]
fn reescapes_for_the_other_leg() {
    let client = decode_one(Version::V1_2, b"SEND\ndestination:/q\nnote:a\\cb\\nc\n\n\0");
    assert_eq!(client.header("note"), Some("a:b\nc"));
    assert_eq!(
        encode(Version::V1_1, &client).unwrap(),
        b"SEND\ndestination:/q\nnote:a\\cb\\nc\n\n\0"
    );
    assert!(matches!(
        encode(Version::V1_0, &client),
        Err(StompError::Unencodable {
            version: Version::V1_0,
            ..
        })
    ));
}

#[test]
fn set_version_applies_to_the_next_frame() {
    let mut codec = StompCodec::new(Version::V1_0);
    let mut src = BytesMut::from(&b"CONNECTED\nversion:1.2\n\n\0MESSAGE\nk:a\\cb\n\n\0"[..]);
    let Some(Incoming::Frame(connected)) = codec.decode(&mut src).unwrap() else {
        panic!("expected CONNECTED");
    };
    let version = connected.header("version").and_then(|v| v.parse().ok());
    codec.set_version(version.unwrap());
    assert_eq!(codec.version(), Version::V1_2);
    let Some(Incoming::Frame(message)) = codec.decode(&mut src).unwrap() else {
        panic!("expected MESSAGE");
    };
    assert_eq!(message.header("k"), Some("a:b"));
}
