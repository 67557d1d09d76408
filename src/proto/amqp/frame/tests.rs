use super::*;
use crate::proto::amqp::FRAME_MIN_SIZE;

fn wire(type_octet: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![type_octet];
    bytes.extend_from_slice(&channel.to_be_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes.push(FRAME_END);
    bytes
}

fn decode_one(codec: &mut FrameCodec, bytes: &[u8]) -> Frame {
    let mut src = BytesMut::from(bytes);
    match codec.decode(&mut src) {
        Ok(Some(frame)) if src.is_empty() => frame,
        other => panic!("expected one frame from {bytes:?}, got {other:?} and {src:?} left"),
    }
}

fn decode_error(codec: &mut FrameCodec, bytes: &[u8]) -> FrameError {
    match codec.decode(&mut BytesMut::from(bytes)) {
        Err(error) => error,
        Ok(item) => panic!("expected an error from {bytes:?}, got {item:?}"),
    }
}

#[test]
fn decodes_each_frame_type() {
    let mut codec = FrameCodec::new(FRAME_MIN_SIZE);
    let method = [0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 7, 0];
    let cases = [
        (1, 5, &method[..], FrameType::Method),
        (
            2,
            5,
            &[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0][..],
            FrameType::Header,
        ),
        (3, 5, &b"abc"[..], FrameType::Body),
        (3, 65535, &b""[..], FrameType::Body),
        (8, 0, &b""[..], FrameType::Heartbeat),
    ];
    for (octet, channel, payload, kind) in cases {
        let frame = decode_one(&mut codec, &wire(octet, channel, payload));
        assert_eq!(
            frame,
            Frame::new(kind, channel, Bytes::copy_from_slice(payload))
        );
        assert_eq!(frame.wire_size(), payload.len() + 8);
    }
    assert_eq!(decode_one(&mut codec, &wire(8, 0, b"")), Frame::heartbeat());
}

#[test]
fn heartbeat_checks_are_left_to_the_session() {
    // The spec wants channel 0 and no payload; the session decides what to do otherwise.
    let frame = decode_one(&mut FrameCodec::new(FRAME_MIN_SIZE), &wire(8, 3, b"x"));
    assert_eq!(
        (frame.kind, frame.channel, &frame.payload[..]),
        (FrameType::Heartbeat, 3, &b"x"[..])
    );
}

#[test]
fn waits_for_the_whole_frame() {
    let mut codec = FrameCodec::new(FRAME_MIN_SIZE);
    let bytes = wire(3, 1, b"hello");
    for cut in 0..bytes.len() {
        let mut src = BytesMut::from(&bytes[..cut]);
        assert!(matches!(codec.decode(&mut src), Ok(None)), "cut at {cut}");
        assert_eq!(src.len(), cut, "nothing consumed at {cut}");
    }
}

#[test]
fn big_payloads_are_not_copied_and_small_ones_do_not_hold_the_read() {
    let mut codec = FrameCodec::new(1 << 20);
    let big = vec![b'x'; crate::proto::SHARE_FROM];
    let mut src = BytesMut::from(&[wire(3, 1, &big), wire(3, 1, b"second")].concat()[..]);
    let start = src.as_ptr() as usize;
    let first = codec.decode(&mut src).ok().flatten().expect("a frame");
    let second = codec.decode(&mut src).ok().flatten().expect("a frame");
    assert_eq!(first.payload.as_ptr() as usize, start + 7);
    let second_at = second.payload.as_ptr() as usize;
    assert!(
        second_at < start || second_at > start + 2 * big.len(),
        "copied out"
    );
    assert_eq!(&second.payload[..], b"second");
    assert!(src.is_empty());
}

#[test]
fn takes_a_frame_exactly_at_frame_max() {
    let mut codec = FrameCodec::new(64);
    let payload = [7u8; 56];
    let frame = decode_one(&mut codec, &wire(3, 1, &payload));
    assert_eq!(frame.wire_size(), 64);
}

#[test]
fn refuses_a_frame_over_frame_max_from_its_header() {
    let mut codec = FrameCodec::new(64);
    // Only the header has arrived: the size alone is enough to refuse it.
    let header = &wire(3, 1, &[0; 57])[..FRAME_HEADER_SIZE];
    let mut src = BytesMut::from(header);
    match codec.decode(&mut src) {
        Err(FrameError::TooLarge { size: 65, max: 64 }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(src.capacity() < 65, "reserved room for a refused frame");

    let huge = [3, 0, 1, 0xff, 0xff, 0xff, 0xff];
    let error = decode_error(&mut FrameCodec::new(131_072), &huge);
    assert_eq!(
        error.to_string(),
        "frame of 4294967303 bytes exceeds frame_max 131072"
    );
}

#[test]
fn reserves_room_once_the_size_is_accepted() {
    let mut codec = FrameCodec::new(1 << 20);
    let bytes = wire(3, 1, &[1; 100_000]);
    let mut src = BytesMut::from(&bytes[..FRAME_HEADER_SIZE]);
    assert!(matches!(codec.decode(&mut src), Ok(None)));
    assert!(src.capacity() >= bytes.len());
}

#[test]
fn zero_frame_max_means_no_limit() {
    let mut codec = FrameCodec::new(0);
    let frame = decode_one(&mut codec, &wire(3, 1, &[1; 10_000]));
    assert_eq!(frame.payload.len(), 10_000);
    let mut dst = BytesMut::new();
    assert!(codec.encode(&frame, &mut dst).is_ok());
}

#[test]
fn limit_can_change_between_frames() {
    let mut codec = FrameCodec::new(FRAME_MIN_SIZE);
    assert_eq!(codec.max_frame_size(), FRAME_MIN_SIZE);
    let bytes = wire(3, 1, &[0; 5000]);
    assert!(matches!(
        decode_error(&mut codec, &bytes),
        FrameError::TooLarge { .. }
    ));
    codec.set_max_frame_size(131_072);
    assert_eq!(codec.max_frame_size(), 131_072);
    decode_one(&mut codec, &bytes);
}

#[test]
fn refuses_a_bad_frame_end() {
    let mut bytes = wire(1, 1, &[0, 10, 0, 41]);
    *bytes.last_mut().unwrap() = 0xCD;
    let error = decode_error(&mut FrameCodec::new(FRAME_MIN_SIZE), &bytes);
    assert!(matches!(error, FrameError::BadFrameEnd(0xCD)));
    assert_eq!(error.to_string(), "frame end octet 0xcd instead of 0xce");
    assert_eq!(error.reply_code(), 501);
}

#[test]
fn refuses_an_unknown_type_at_its_first_byte() {
    let mut codec = FrameCodec::new(FRAME_MIN_SIZE);
    for octet in [0, 4, 9, b'A', b'G', 0xCE] {
        let error = decode_error(&mut codec, &[octet]);
        assert!(matches!(error, FrameError::UnknownType(o) if o == octet));
        assert_eq!(error.reply_code(), 501);
    }
    // A client that sends the protocol header again.
    let error = decode_error(&mut codec, b"AMQP\x00\x00\x09\x01");
    assert_eq!(error.to_string(), "unknown frame type 65");
}

#[test]
fn encodes_the_wire_format() {
    let mut codec = FrameCodec::new(FRAME_MIN_SIZE);
    let mut dst = BytesMut::new();
    let frame = Frame::body(0x0102, Bytes::from_static(b"xyz"));
    codec.encode(&frame, &mut dst).expect("fits");
    codec.encode(Frame::heartbeat(), &mut dst).expect("fits");
    assert_eq!(
        &dst[..],
        b"\x03\x01\x02\x00\x00\x00\x03xyz\xce\x08\x00\x00\x00\x00\x00\x00\xce"
    );
    assert_eq!(frame.wire_header(), *b"\x03\x01\x02\x00\x00\x00\x03");
}

#[test]
fn refuses_to_encode_a_frame_over_frame_max() {
    let mut codec = FrameCodec::new(64);
    let mut dst = BytesMut::new();
    let fits = Frame::body(1, Bytes::from(vec![0; 56]));
    assert!(codec.encode(&fits, &mut dst).is_ok());
    let over = Frame::body(1, Bytes::from(vec![0; 57]));
    dst.clear();
    assert!(matches!(
        codec.encode(&over, &mut dst),
        Err(FrameError::TooLarge { size: 65, max: 64 })
    ));
    assert!(dst.is_empty());
}

#[test]
fn class_method_only_for_method_frames() {
    let method = Frame::method(1, Bytes::from_static(&[0, 60, 0, 40, 0]));
    assert_eq!(method.class_method(), Some((60, 40)));
    assert_eq!(
        Frame::method(1, Bytes::from_static(&[0, 60, 0])).class_method(),
        None
    );
    let body = Frame::body(1, Bytes::from_static(&[0, 60, 0, 40]));
    assert_eq!(body.class_method(), None);
}

#[test]
fn frame_types_round_trip_their_octet() {
    for kind in FrameType::ALL {
        assert_eq!(FrameType::from_wire(kind.wire_value()), Some(kind));
    }
    let octets: Vec<u8> = FrameType::ALL.iter().map(|k| k.wire_value()).collect();
    assert_eq!(octets, [1, 2, 3, 8]);
    assert_eq!(FrameType::from_wire(0), None);
}

#[test]
fn io_errors_are_not_frame_errors() {
    let error = FrameError::from(io::Error::other("reset"));
    assert_eq!(error.reply_code(), 541);
}
